"""Group commit: the fsyncs of concurrent writers of one process, shared.

A writer that needs a file or a directory durable calls :func:`sync_durably`, which returns only once an fsync of
that descriptor (or of the same directory) *started after the call* has completed. The first caller that finds no
batch in flight becomes the leader: it takes every request queued so far, runs them (one fsync per distinct
directory, however many writers renamed into it; each file's own fsync), marks them done and wakes their
writers; requests that arrive meanwhile queue for the next batch, which one of their writers leads. A lone
caller (the blocking facade's inline calls, which run one at a time) leads its own batch of one: no thread hop,
no wait. Each request carries its own outcome: an fsync error reaches exactly the writers that fsync covered.
"""

from __future__ import annotations

import errno
import os
import threading


class _Request:
    __slots__ = ("directory", "done", "error", "fd", "synced")

    def __init__(self, fd: int, directory: bool) -> None:
        self.fd = fd
        self.directory = directory
        self.done = False  # the batch that held this request has finished
        self.synced = False  # an fsync covering it completed
        self.error: OSError | None = None


class _GroupSync:
    """The queue of pending fsyncs and the batch in flight (one per process, reset after ``fork``)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._finished = threading.Condition(threading.Lock())
        self._pending: list[_Request] = []
        self._syncing = False

    def sync(self, fd: int, *, directory: bool) -> None:
        request = _Request(fd, directory)
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
        if request.directory and len(batch) > 1:
            try:
                st = os.fstat(request.fd)
            except OSError as error:
                request.error = error
                continue
            directories.setdefault((st.st_dev, st.st_ino), []).append(request)
        else:
            _fsync([request])
    for requests in directories.values():
        _fsync(requests)


def _fsync(requests: list[_Request]) -> None:
    """One fsync (of the first descriptor) for ``requests``, which all name the same file or directory."""
    try:
        os.fsync(requests[0].fd)
    except OSError as error:
        for request in requests:
            request.error = error
        return
    for request in requests:
        request.synced = True


_GROUP = _GroupSync()
os.register_at_fork(after_in_child=_GROUP._reset)


def sync_durably(fd: int, *, directory: bool = False) -> None:
    """Return once ``fd`` (a file, or with ``directory`` a directory) is durable, sharing the fsync with every
    concurrent writer of the same directory and the batch with every concurrent writer of the process. Raises the
    ``OSError`` of the fsync that covered it."""
    _GROUP.sync(fd, directory=directory)
