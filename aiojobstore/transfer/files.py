"""Local files: ranges read and written with ``pread``/``pwrite``, and :class:`DownloadTarget`, the temp file a
download writes into (``O_DIRECT`` where allowed) and renames onto its target."""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio

from ..errors import TransferError
from .config import IO_SLICE_SIZE, MiB


def read_file_range(path: str | os.PathLike[str], offset: int, length: int) -> bytes:
    """``length`` bytes of a file from ``offset`` (blocking; call it in a thread)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    if len(data) != length:
        raise TransferError(f"{path} shrank while it was being read (expected {length} bytes at {offset})")
    return data


async def iter_file_slices(path: str | os.PathLike[str], offset: int, length: int,
                           slice_size: int = IO_SLICE_SIZE) -> AsyncIterator[bytes]:
    """The bytes of a file range as slices of ``slice_size``, each read with ``os.pread`` in a worker thread."""
    fd = await anyio.to_thread.run_sync(os.open, path, os.O_RDONLY)
    try:
        done = 0
        while done < length:
            want = min(slice_size, length - done)
            data = await anyio.to_thread.run_sync(os.pread, fd, want, offset + done)
            if not data:
                raise TransferError(f"{path} shrank while it was being read (expected {length} bytes at {offset})")
            done += len(data)
            yield data
    finally:
        os.close(fd)


async def iter_buffer_slices(buffer: Any, slice_size: int = IO_SLICE_SIZE) -> AsyncIterator[memoryview]:
    """A buffer as memoryview slices of ``slice_size`` (no copy): aiohttp sends many moderate slices several
    times faster than one large ``bytes`` body."""
    view = memoryview(buffer).cast("B")
    for start in range(0, len(view), slice_size):
        yield view[start : start + slice_size]


def preallocate(fd: int, size: int, path: str = "") -> None:
    """Give a download's temp file its full size up front (blocking). ``posix_fallocate`` reserves the blocks,
    so a full disk fails here, before any byte is fetched, and the parts' writes land in allocated extents
    (measured: ~5-10% faster downloads than into a sparse file); filesystems without it get ``ftruncate``."""
    if size > 0 and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise TransferError(f"not enough disk space for {size} bytes at {path or 'the download target'}: "
                                    "free some space or download elsewhere") from None
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
    os.ftruncate(fd, size)


def unlink_quietly(path: str | os.PathLike[str]) -> None:
    """Remove a file if it is there (temp-file cleanup)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_file_range(fd: int, offset: int, chunks: Sequence[bytes | memoryview]) -> int:
    """Write ``chunks`` to ``fd`` at ``offset`` with ``pwrite`` (blocking; call it in a thread)."""
    done = 0
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            written = os.pwrite(fd, view, offset + done)
            done += written
            view = view[written:]
    return done


#: Alignment of O_DIRECT writes (file offset, length and memory): a page, which every Linux block device accepts.
DIRECT_IO_ALIGN = 4096


class DownloadTarget:
    """The temp file a download writes beside ``target``: ranges go in at their offsets from worker threads,
    then :meth:`commit` fsyncs it and renames it onto ``target``, or :meth:`discard` removes it. Every method
    blocks; call them in a worker thread.

    With ``direct_io``, each range is written with ``O_DIRECT`` from a reused page-aligned staging buffer, so
    the bytes skip the page cache: a large download does not fill the cache (and a container's memory limit)
    with dirty pages, and the fsync before the rename finds nothing left to flush. Measured on this project's
    2-core VM: 2.5-3.1 GB/s with almost no system CPU, against 0.4-0.7 GB/s and 1.6-2.5 s of system CPU per GiB
    through the page cache. Filesystems that refuse ``O_DIRECT`` (tmpfs, some FUSE) and ranges that do not
    start on a page boundary are written through the page cache as before.
    """

    def __init__(self, target: str, size: int, *, direct_io: bool = False, stage_size: int = MiB) -> None:
        self.target = target
        self.fd, self.temp = _create_beside(target)
        self.direct_fd = -1
        self._direct_refused = False
        self.stage_size = max(DIRECT_IO_ALIGN, stage_size - stage_size % DIRECT_IO_ALIGN)
        self._free_stages: dict[int, list[mmap.mmap]] = {}
        self._lock = threading.Lock()
        try:
            preallocate(self.fd, size, target)
            if direct_io and hasattr(os, "O_DIRECT"):
                with contextlib.suppress(OSError):
                    self.direct_fd = os.open(self.temp, os.O_WRONLY | os.O_DIRECT)
        except BaseException:
            self.discard()
            raise

    @property
    def direct(self) -> bool:
        """Whether ranges are still written with ``O_DIRECT``."""
        return self.direct_fd >= 0 and not self._direct_refused

    def range_writer(self, offset: int) -> RangeWriter:
        """A writer for the range starting at ``offset``, fed in order."""
        return RangeWriter(self, offset)

    def commit(self) -> None:
        """Flush the file to disk, rename it onto the target and flush the directory (so the rename itself
        survives a crash)."""
        os.fsync(self.fd)
        os.replace(self.temp, self.target)
        self.temp = ""
        self._close()
        directory = os.open(os.path.dirname(self.target) or ".", os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def discard(self) -> None:
        """Close and remove the temp file (a no-op after :meth:`commit`)."""
        self._close()
        if self.temp:
            unlink_quietly(self.temp)
            self.temp = ""

    def _close(self) -> None:
        for fd in (self.fd, self.direct_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self.direct_fd = -1
        with self._lock:
            for stages in self._free_stages.values():
                for stage in stages:
                    with contextlib.suppress(BufferError):  # a view still held: freed with the view
                        stage.close()
            self._free_stages.clear()

    def take_buffer(self, size: int = 0) -> mmap.mmap:
        """A page-aligned buffer of ``size`` bytes (a multiple of the page; default the staging size), reused
        from ranges that have finished. Give it back with :meth:`give_buffer`."""
        size = size or self.stage_size
        with self._lock:
            stages = self._free_stages.get(size)
            if stages:
                return stages.pop()
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)  # anonymous memory is page-aligned

    def give_buffer(self, stage: mmap.mmap) -> None:
        with self._lock:
            if self.fd >= 0:
                self._free_stages.setdefault(len(stage), []).append(stage)
                return
        stage.close()

    def _write_direct(self, view: memoryview, offset: int) -> bool:
        """Write page-aligned ``view`` at ``offset`` with O_DIRECT; False if the filesystem refused it, in which
        case it went through the page cache, as every later write of this file will."""
        written = 0
        if self.direct:
            try:
                written = os.pwrite(self.direct_fd, view, offset)
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
                self._direct_refused = True  # the fd stays open: other threads may be using it
        if written < len(view):  # refused, or a short write that would leave the rest unaligned
            write_file_range(self.fd, offset + written, [view[written:]])
        return self.direct


def _create_beside(target: str) -> tuple[int, str]:
    """A new, uniquely named hidden file in ``target``'s directory (made if missing, as every backend does), with
    the mode a plain ``open(target, "w")`` would give (0666 less the umask; ``mkstemp`` would make it 0600)."""
    directory, name = os.path.split(target)
    if directory:
        os.makedirs(directory, exist_ok=True)
    while True:
        temp = os.path.join(directory or ".", f".{name}.{os.urandom(6).hex()}.part")
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), temp
        except FileExistsError:
            continue


class RangeWriter:
    """Writes one range of a :class:`DownloadTarget` in order: through a staging buffer with ``O_DIRECT`` when
    the target allows it and the range starts on a page boundary, else with plain ``pwrite``."""

    def __init__(self, target: DownloadTarget, offset: int) -> None:
        self.target = target
        self.position = offset  # file offset of the staged bytes' first byte
        self.staged = 0
        self._stage: mmap.mmap | None = None
        self._direct = target.direct and offset % DIRECT_IO_ALIGN == 0

    def write(self, offset: int, pieces: Sequence[bytes | memoryview]) -> None:
        """Write ``pieces`` at ``offset``, which must be where the previous write ended."""
        if offset != self.position + self.staged:
            raise TransferError(f"range write at {offset} does not follow the previous one "
                                f"(expected {self.position + self.staged}); this is a bug in aiojobstore")
        if self._direct:
            pieces = self._stage_pieces(pieces)
        if pieces:
            self.position += write_file_range(self.target.fd, self.position, pieces)

    def write_buffer(self, offset: int, view: memoryview) -> None:
        """Write ``view`` at ``offset`` (where the previous write ended) straight from the caller's buffer: with
        ``O_DIRECT`` for its whole pages when ``view`` is page-aligned (a prefix of :meth:`DownloadTarget.
        take_buffer`), and the range allows it; a partial last page, or everything otherwise, through the page
        cache."""
        if offset != self.position + self.staged:
            raise TransferError(f"range write at {offset} does not follow the previous one "
                                f"(expected {self.position + self.staged}); this is a bug in aiojobstore")
        if self.staged:  # earlier pieces went through the staging buffer: keep the order simple
            self.write(offset, [view])
            return
        whole = len(view) - len(view) % DIRECT_IO_ALIGN if self._direct else 0
        if whole:
            self._direct = self.target._write_direct(view[:whole], self.position)
            self.position += whole
        if whole < len(view):
            self.position += write_file_range(self.target.fd, self.position, [view[whole:]])
            self._direct = False  # the range no longer continues on a page boundary

    def _stage_pieces(self, pieces: Sequence[bytes | memoryview]) -> Sequence[bytes | memoryview]:
        """Copy ``pieces`` into the staging buffer, writing each full one; return what is left if the
        filesystem refused O_DIRECT on the way."""
        if self._stage is None:
            self._stage = self.target.take_buffer()
        stage = self._stage
        capacity = len(stage)
        for index, piece in enumerate(pieces):
            source = memoryview(piece).cast("B")
            while source:
                take = min(len(source), capacity - self.staged)
                stage[self.staged : self.staged + take] = source[:take]
                self.staged += take
                source = source[take:]
                if self.staged == capacity:
                    self._flush()
                    if not self._direct:
                        return [source, *pieces[index + 1 :]]
        self._flush()
        return []

    def _flush(self) -> None:
        """Write the staged whole pages and keep a partial page's bytes staged (all of them through the page
        cache once O_DIRECT has been refused)."""
        assert self._stage is not None
        whole = self.staged - self.staged % DIRECT_IO_ALIGN
        with memoryview(self._stage) as view:
            if whole:
                self._direct = self.target._write_direct(view[:whole], self.position)
                self.position += whole
                self.staged -= whole
                view[: self.staged] = view[whole : whole + self.staged]
        if not self._direct:
            self._write_staged_through_cache()

    def _write_staged_through_cache(self) -> None:
        assert self._stage is not None
        if self.staged:
            with memoryview(self._stage) as view:
                self.position += write_file_range(self.target.fd, self.position, [view[: self.staged]])
            self.staged = 0

    def close(self) -> None:
        """Write what is still staged (the range's last partial page) and give the buffer back."""
        if self._stage is None:
            return
        self._write_staged_through_cache()
        stage, self._stage = self._stage, None
        self.target.give_buffer(stage)
