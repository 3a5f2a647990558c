"""Sizes and durations as people write them: ``64MiB``, ``1.5GB``, ``30m``."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*$", re.I)
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.I)


def parse_size(text: str | int) -> int:
    """Bytes from ``1048576``, ``64MiB``, ``64M`` (= MiB), ``1.5GB`` (decimal) or ``2GiB``; an int is returned
    as it is. Raises ``ValueError`` saying what is accepted."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE.match(text) if isinstance(text, str) else None
    if not isinstance(text, str) or not match:
        raise ValueError(f"invalid size {text!r}: use bytes or a unit, e.g. 64MiB, 2GiB, 500MB")
    number, unit, binary = match.groups()
    decimal = bool(unit) and not binary and text.strip().lower().endswith("b")
    base = 1000 if decimal else 1024
    return int(float(number) * base ** _UNITS[unit.lower()])


def human_size(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def parse_duration(text: str | float) -> float:
    """Seconds from ``90``, ``90s``, ``30m``, ``2h`` or ``1d``; a number is returned as it is."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"invalid duration {text!r}: use seconds or a number with s, m, h or d")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2).lower()]


def human_duration(seconds: float) -> str:
    """``3600`` -> ``1h``, ``90`` -> ``90s``."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


__all__ = ["human_duration", "human_size", "parse_duration", "parse_size"]
