"""Verify-and-retry, written once: a read (or a sent part) whose checksum does not match is tried once more, and a
second mismatch raises ``IntegrityError``; a read that finds its pinned version replaced reads the new one."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..errors import IntegrityError, TransferError

log = logging.getLogger("aiojobstore.transfer")

T = TypeVar("T")

#: Times a read starts again because the object was replaced while it was read, before giving up.
MAX_REREADS = 8


class ReplacedWhileReading(TransferError):
    """The version a read was pinned to (an ETag, a generation) was replaced while it was read: read the new one.
    Not an integrity failure."""


def integrity_error(what: str) -> IntegrityError:
    """The error of an object (or part) whose bytes did not match their recorded CRC32C/size twice."""
    return IntegrityError(f"{what} does not match its recorded CRC32C/size after a retry: the stored object is "
                          "corrupt or was changed outside the store")


async def verify_and_retry(attempt: Callable[[], Awaitable[tuple[bool, T]]], *, what: str,
                           max_rereads: int = MAX_REREADS) -> T:
    """Run ``attempt()``, which returns ``(checksum matched, result)``, until a result matches: a mismatch is
    tried once more and the second raises ``IntegrityError`` naming ``what``; :class:`ReplacedWhileReading` starts
    the read again (not a mismatch), at most ``max_rereads`` times, then ``TransferError``."""
    mismatches = 0
    for _ in range(max_rereads):
        try:
            matched, result = await attempt()
        except ReplacedWhileReading:
            continue
        if matched:
            return result
        mismatches += 1
        if mismatches == 2:
            raise integrity_error(what)
        log.warning("CRC32C mismatch on %s; trying once more", what)
    raise TransferError(f"{what} kept being replaced while it was read ({max_rereads} tries); read it again")


__all__ = ["MAX_REREADS", "ReplacedWhileReading", "integrity_error", "verify_and_retry"]
