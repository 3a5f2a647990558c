"""Helpers shared by the test modules."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StoreTarget:
    """A fresh, empty store location and the ``open_store`` options that reach it."""

    locator: str
    options: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
