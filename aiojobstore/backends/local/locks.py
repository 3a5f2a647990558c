"""Striped locks that serialise conditional replaces of a key across threads and processes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import zlib
from collections.abc import Iterator

from .paths import PathsBase

LOCK_DIR = ".ajs-locks"
LOCK_STRIPES = 64


class Locking(PathsBase):
    """The per-key lock of conditional replaces and read-modify-write updates."""

    def _lock_path(self, key: str) -> str:
        return str(zlib.crc32(key.encode()) % LOCK_STRIPES)

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        """Hold the exclusive lock that serialises conditional replaces of ``key``: a thread lock of the stripe
        within this process (an ``flock`` does not exclude holders of the same open file), then the stripe file's
        ``flock`` across processes. Stripe files stay open (one per stripe, dropped after a fork, reopened when
        the store was destroyed and made again): two opens fewer per conditional write."""
        stripe = self._lock_path(key)
        with self._stripe_lock(stripe):
            lock_fd = self._stripe_fd(stripe, key)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_fd, fcntl.LOCK_UN)

    def _stripe_lock(self, stripe: str) -> threading.Lock:
        lock = self._stripe_locks.get(stripe)
        if lock is None:
            with self._root_lock:
                lock = self._stripe_locks.setdefault(stripe, threading.Lock())
        return lock

    def _stripe_fd(self, stripe: str, key: str) -> int:
        """The open stripe file (called holding the stripe's thread lock); reopened if it was unlinked."""
        fd = self._stripe_fds.get(stripe, -1)
        if fd >= 0 and os.fstat(fd).st_nlink > 0:
            return fd
        if fd >= 0:
            os.close(fd)
        chain = self._walk([LOCK_DIR], key, create=True)
        assert chain is not None
        try:
            fd = os.open(stripe, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=chain.fd)
        finally:
            chain.close()
        self._stripe_fds[stripe] = fd
        return fd
