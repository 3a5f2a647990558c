"""Group commit: the directory fsyncs of concurrent writers of one process, shared; file fsyncs, concurrent.

A writer that needs a file or a directory durable calls :func:`sync_durably`, which returns only once an fsync of
that descriptor (or of the same directory) *started after the call* has completed.

- A file is fsynced by its own writer, in the writer's thread. Concurrent fsyncs of different files overlap in
  the kernel, which shares one journal commit among them (measured on ext4, 64 files: ~9k fsyncs/s from
  concurrent threads against ~3.5k/s one after another in a single thread).
- Directories are grouped by inode into a fixed number of stripes. In each stripe the first caller that finds no
  batch in flight becomes the leader: it takes every request queued so far, runs one fsync per distinct
  directory however many writers renamed into it, marks them done and wakes their writers; requests that arrive
  meanwhile queue for the next batch, which one of their writers leads. Different stripes sync in parallel. A
  lone caller (the blocking facade's inline calls, which run one at a time) leads its own batch of one: no thread
  hop, no wait.

Each request carries its own outcome: an fsync error reaches exactly the writers that fsync covered.
"""

from __future__ import annotations

import errno
import os
import threading

#: Directory stripes: directories of different stripes are fsynced in parallel, those of one stripe in batches.
_STRIPES = 64


class _Request:
    __slots__ = ("directory", "done", "error", "fd", "synced")

    def __init__(self, fd: int, directory: tuple[int, int]) -> None:
        self.fd = fd
        self.directory = directory  # (st_dev, st_ino)
        self.done = False  # the batch that held this request has finished
        self.synced = False  # an fsync covering it completed
        self.error: OSError | None = None


class _GroupSync:
    """The queue of pending directory fsyncs of one stripe and the batch in flight (reset after ``fork``)."""

    def __init__(self) -> None:
        self._finished = threading.Condition(threading.Lock())
        self._pending: list[_Request] = []
        self._syncing = False

    def sync(self, request: _Request) -> None:
        finished = self._finished
        with finished:
            self._pending.append(request)
            while not request.done:
                if self._syncing:
                    finished.wait()
                else:
                    self._lead(finished)
        if request.error is not None:
            raise request.error
        if not request.synced:
            raise OSError(errno.EIO, "the fsync that was to make this write durable was interrupted")

    def _lead(self, finished: threading.Condition) -> None:
        """Run every queued request as one batch (called holding the lock, which is released meanwhile)."""
        batch, self._pending = self._pending, []
        self._syncing = True
        finished.release()
        try:
            _run_batch(batch)
        finally:
            finished.acquire()
            self._syncing = False
            for request in batch:
                request.done = True
            finished.notify_all()


def _run_batch(batch: list[_Request]) -> None:
    directories: dict[tuple[int, int], list[_Request]] = {}
    for request in batch:
        directories.setdefault(request.directory, []).append(request)
    for requests in directories.values():
        try:
            os.fsync(requests[0].fd)
        except OSError as error:
            for request in requests:
                request.error = error
            continue
        for request in requests:
            request.synced = True


_GROUPS: list[_GroupSync] = []


def _reset() -> None:
    _GROUPS[:] = [_GroupSync() for _ in range(_STRIPES)]


_reset()
os.register_at_fork(after_in_child=_reset)


def sync_durably(fd: int, *, directory: bool = False) -> None:
    """Return once ``fd`` (a file, or with ``directory`` a directory) is durable: a file by its own fsync, a
    directory by an fsync shared with every concurrent writer into the same directory. Raises the ``OSError`` of
    the fsync that covered it."""
    if not directory:
        os.fsync(fd)
        return
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    _GROUPS[hash(key) % _STRIPES].sync(_Request(fd, key))
