"""Local-disk backend: one file per object under a root directory.

Writes go to a temporary file in the destination directory, are fsynced (unless ``fsync=False``) and renamed
into place, then the directory is fsynced: a reader sees the old file or the new one, never a part, and a crash
leaves at most a ``.ajs-tmp-*`` file behind. Metadata lives in one extended attribute of the file, written to
the temporary file before the rename, so data and metadata appear together. Conditional replaces
(``if_match``) hold an ``flock`` on a striped lock file while they compare and rename, which makes the
check-and-replace atomic across threads and processes; create-only writes use ``link``, which fails if the name
exists. Large copies use ``copy_file_range`` in worker threads, a part per thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat as stat_module
import threading
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from os import PathLike
from pathlib import Path
from typing import Any

import anyio

from ..errors import ConcurrentModificationError, InvalidKeyError, JobStoreError, NoSuchFileError
from ..locator import Locator
from ..streams import AsyncReader, AsyncWriter, Buffer, ChunkReader
from ..transfer import Part, Progress, ProgressCallback, TransferConfig, plan_parts, run_parts, unlink_quietly
from .base import Backend, ObjectInfo, reject_unknown_options, validate_key

RESERVED_PREFIX = ".ajs-"
TMP_PREFIX = ".ajs-tmp-"
LOCK_DIR = ".ajs-locks"
LOCK_STRIPES = 64
XATTR_NAME = "user.aiojobstore.meta"
STREAM_BUFFER = 4 << 20


# ------------------------------------------------------------------------------------------ blocking helpers


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _read_metadata(path: str | int) -> dict[str, str]:
    try:  # listing first: a failed getxattr costs a Python exception, and most objects (jobs) have no metadata
        if XATTR_NAME not in os.listxattr(path):
            return {}
        raw = os.getxattr(path, XATTR_NAME)
    except OSError as error:
        if error.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return json.loads(raw)


def _write_metadata(fd: int, metadata: dict[str, str]) -> None:
    if not metadata:
        return
    try:
        os.setxattr(fd, XATTR_NAME, json.dumps(metadata, separators=(",", ":")).encode())
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise JobStoreError(
                "this filesystem does not support user extended attributes, which the local backend needs for "
                "object metadata; put the store on ext4, xfs, btrfs or tmpfs (Linux >= 6.6)"
            ) from error
        raise


def _info(key: str, path: str, st: os.stat_result | None = None) -> ObjectInfo:
    st = st or os.stat(path)
    return ObjectInfo(key, st.st_size, _etag(st), st.st_mtime, _read_metadata(path))


def _mkstemp(directory: str, name: str) -> tuple[int, str]:
    """Create a temp file next to ``name``, creating the directory as needed."""
    for _ in range(3):
        tmp = os.path.join(directory, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name[:60]}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), tmp
        except FileNotFoundError:  # a new directory, or one removed by a concurrent delete: make it
            os.makedirs(directory, exist_ok=True)
    raise JobStoreError(f"could not create a temporary file in {directory}")


def _copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(src_fd, dst_fd, length - done, offset + done, offset + done)
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            data = os.pread(src_fd, min(length - done, 8 << 20), offset + done)
            n = os.pwrite(dst_fd, data, offset + done) if data else 0
        if n == 0:
            raise JobStoreError(f"source shrank during the copy (expected {length} bytes at offset {offset})")
        done += n


def atomic_write_bytes(path: str | PathLike[str], data: bytes, *, fsync: bool = True) -> None:
    """Replace a local file with ``data`` atomically (temp file + rename). Blocking."""
    path = os.path.abspath(path)
    fd, tmp = _mkstemp(os.path.dirname(path), os.path.basename(path))
    try:
        with os.fdopen(fd, "wb", closefd=True) as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise


class _SmallOpRunner:
    """Runs small blocking filesystem operations (a stat, a read of a job, an unlink) on a few dedicated threads
    that each take a batch of queued operations per wake-up, so that 64 concurrent job loads cost a handful of
    thread hand-offs instead of 64. Restarted after ``fork``.

    With ``shield`` (for writes), a started operation always finishes and a cancelled caller sees the
    cancellation once it has, like ``anyio.to_thread.run_sync``; without it (for reads), a cancelled caller
    returns at once and the result is dropped."""

    def __init__(self, name: str, threads: int, *, batch: int, shield: bool) -> None:
        self._name = name
        self._batch = batch
        self._threads = threads
        self._shield = shield
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._ready = threading.Condition()
        self._pid = -1

    def _start(self) -> None:
        self._queue.clear()
        self._ready = threading.Condition()
        for n in range(self._threads):
            threading.Thread(target=self._work, name=f"aiojobstore-{self._name}-{n}", daemon=True).start()
        self._pid = os.getpid()

    async def run(self, func: Callable[..., Any], *args: Any) -> Any:
        if self._pid != os.getpid():
            self._start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._ready:
            self._queue.append((loop, future, func, args))
            self._ready.notify()
        if not self._shield:
            return await future
        with anyio.CancelScope(shield=True):
            return await future

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
                if self._queue:
                    self._ready.notify()
            done: dict[Any, list[tuple[Any, bool, Any]]] = {}
            for loop, future, func, args in batch:
                try:
                    outcome = (future, True, func(*args))
                except BaseException as error:
                    outcome = (future, False, error)
                done.setdefault(loop, []).append(outcome)
            for loop, outcomes in done.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                    loop.call_soon_threadsafe(_deliver, outcomes)


def _deliver(outcomes: list[tuple[Any, bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


# One reader thread: each extra thread waking for a few microseconds of work contends for the GIL with the event
# loop (measured, 64 concurrent job loads: 1 thread ~37k/s, 2 threads ~30k/s). Writers wait on the journal, so
# several of them overlap.
_READS = _SmallOpRunner("read", 1, batch=64, shield=False)
_WRITES = _SmallOpRunner("write", 2, batch=8, shield=True)


class LocalBackend(Backend):
    """Objects as files under ``root``; see the module docstring for the atomicity guarantees."""

    scheme = "file"
    encrypts_at_rest = False

    def __init__(self, root: str | PathLike[str], *, fsync: bool = True, **options: Any) -> None:
        super().__init__(**options)
        self.root = os.path.abspath(root)
        self.fsync = fsync

    def describe(self) -> str:
        return f"file:{self.root}"

    # ----------------------------------------------------------------- paths

    def path_of(self, key: str) -> str:
        """The file that holds ``key``; refuses anything that could leave the root."""
        validate_key(key)  # relative, no '.' or '..' segment: the path cannot leave the root
        if RESERVED_PREFIX in key and any(segment.startswith(RESERVED_PREFIX) for segment in key.split("/")):
            raise InvalidKeyError(f"object key {key!r} uses the reserved prefix {RESERVED_PREFIX!r}")
        return os.path.join(self.root, key)

    def _lock_path(self, key: str) -> str:
        return os.path.join(self.root, LOCK_DIR, str(zlib.crc32(key.encode()) % LOCK_STRIPES))

    # ----------------------------------------------------------------- commit (blocking)

    def _commit(self, key: str, path: str, tmp: str, fd: int, metadata: dict[str, str], if_absent: bool,
                if_match: str | None) -> ObjectInfo:
        """Finish a temp file (metadata, fsync, close) and move it to ``path`` under the given condition."""
        try:
            try:
                _write_metadata(fd, metadata)
                if self.fsync:
                    os.fsync(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            if if_absent:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise ConcurrentModificationError(f"{key!r} already exists") from None
                os.unlink(tmp)
            elif if_match is not None:
                self._replace_if_match(key, tmp, path, if_match)
            else:
                os.replace(tmp, path)
            if self.fsync:
                _fsync_dir(os.path.dirname(path))
        except BaseException:
            unlink_quietly(tmp)
            raise
        return ObjectInfo(key, st.st_size, _etag(st), st.st_mtime, dict(metadata))

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        """Hold the exclusive ``flock`` that serialises conditional replaces of ``key`` (across processes)."""
        lock_path = self._lock_path(key)
        try:
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(lock_path), exist_ok=True)
            lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(lock_fd)  # releases the flock

    def _replace_if_match(self, key: str, tmp: str, path: str, if_match: str) -> None:
        with self._locked(key):
            try:
                current = os.stat(path)
            except FileNotFoundError:
                raise ConcurrentModificationError(f"{key!r} was deleted since it was read") from None
            if _etag(current) != if_match:
                raise ConcurrentModificationError(f"{key!r} changed since it was read")
            os.replace(tmp, path)

    def _read_blocking(self, key: str, path: str, start: int = 0, end: int | None = None,
                       with_info: bool = True) -> tuple[bytes, ObjectInfo | dict[str, str]]:
        """The bytes ``[start, end)`` of ``key`` and its info (or, without ``with_info``, just its metadata)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._missing(key) from None
        try:
            st = os.fstat(fd)
            if not stat_module.S_ISREG(st.st_mode):
                raise self._missing(key)
            metadata = _read_metadata(fd)
            stop = st.st_size if end is None else min(end, st.st_size)
            data = os.pread(fd, max(0, stop - start), start) if stop > start else b""
        finally:
            os.close(fd)
        if not with_info:
            return data, metadata
        return data, ObjectInfo(key, st.st_size, _etag(st), st.st_mtime, metadata)

    def _update_blocking(self, key: str, edit: Callable[[bytes], bytes], metadata: dict[str, str]) -> ObjectInfo:
        """Read, edit and replace ``key`` under its lock, so no conditional writer can slip in between."""
        path = self.path_of(key)
        with self._locked(key):
            data, metadata = self._read_blocking(key, path, with_info=False)
            self.check_encryption(key, metadata)  # type: ignore[arg-type]
            return self._put_blocking(key, edit(data), metadata, False, None)

    def _put_blocking(self, key: str, data: Buffer, metadata: dict[str, str], if_absent: bool,
                      if_match: str | None) -> ObjectInfo:
        path = self.path_of(key)
        fd, tmp = _mkstemp(os.path.dirname(path), os.path.basename(path))
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            os.close(fd)
            unlink_quietly(tmp)
            raise
        return self._commit(key, path, tmp, fd, metadata, if_absent, if_match)

    def _missing(self, key: str) -> NoSuchFileError:
        return NoSuchFileError(key)

    # ----------------------------------------------------------------- container

    async def create(self) -> bool:
        def make() -> bool:
            created = not os.path.isdir(self.root)
            os.makedirs(self.root, exist_ok=True)
            return created

        return await anyio.to_thread.run_sync(make)

    async def exists(self) -> bool:
        return await anyio.to_thread.run_sync(os.path.isdir, self.root)

    async def destroy(self) -> None:
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(self.root, ignore_errors=True))

    # ----------------------------------------------------------------- objects

    @asynccontextmanager
    async def open_reader(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[AsyncReader]:
        path = self.path_of(key)

        def open_file() -> tuple[int, ObjectInfo]:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                raise self._missing(key) from None
            st = os.fstat(fd)
            if not stat_module.S_ISREG(st.st_mode):
                os.close(fd)
                raise self._missing(key)
            info = ObjectInfo(key, st.st_size, _etag(st), st.st_mtime, _read_metadata(fd))
            return fd, info

        fd, info = await anyio.to_thread.run_sync(open_file)
        try:
            self.check_encryption(key, info.metadata)
        except BaseException:
            os.close(fd)
            raise
        stop = info.size if end is None else min(end, info.size)
        position = min(start, stop)

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal position
            while position < stop:
                data = await anyio.to_thread.run_sync(os.pread, fd, min(STREAM_BUFFER, stop - position), position)
                if not data:
                    return
                position += len(data)
                yield data

        closed = False

        async def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                os.close(fd)

        reader = ChunkReader(chunks(), size=stop - position, close=close)
        try:
            yield reader
        finally:
            with anyio.CancelScope(shield=True):
                await reader.aclose()

    @asynccontextmanager
    async def open_writer(self, key: str, *, metadata: dict[str, str] | None = None, if_absent: bool = False,
                          encrypted: bool = False) -> AsyncIterator[AsyncWriter]:
        meta = {**(metadata or {}), **self.encryption_metadata(encrypted)}
        path = self.path_of(key)
        fd, tmp = await anyio.to_thread.run_sync(_mkstemp, os.path.dirname(path), os.path.basename(path))
        writer = _LocalWriter(fd)
        committed = False
        try:
            yield writer
            await writer.flush()
            committed = True  # _commit owns fd and tmp from here on, success or not
            await anyio.to_thread.run_sync(self._commit, key, path, tmp, fd, meta, if_absent, None)
        finally:
            if not committed:
                os.close(fd)
                unlink_quietly(tmp)

    async def get_object(self, key: str, *, start: int = 0, end: int | None = None) -> tuple[bytes, ObjectInfo]:
        data, info = await _READS.run(self._read_blocking, key, self.path_of(key), start, end)
        self.check_encryption(key, info.metadata)
        return data, info

    async def get_bytes(self, key: str, *, start: int = 0, end: int | None = None) -> bytes:
        data, metadata = await _READS.run(self._read_blocking, key, self.path_of(key), start, end, False)
        self.check_encryption(key, metadata)
        return data

    async def _run_write(self, func: Callable[..., ObjectInfo], *args: Any) -> ObjectInfo:
        if self.fsync:  # fsyncs overlap best on many threads
            return await anyio.to_thread.run_sync(func, *args)
        return await _WRITES.run(func, *args)

    async def put_bytes(self, key: str, data: bytes, *, metadata: dict[str, str] | None = None,
                        if_absent: bool = False, if_match: str | None = None, encrypted: bool = False) -> ObjectInfo:
        meta = {**(metadata or {}), **self.encryption_metadata(encrypted)}
        return await self._run_write(self._put_blocking, key, data, meta, if_absent, if_match)

    async def update_object(self, key: str, edit: Callable[[bytes], bytes], *,
                            metadata: dict[str, str] | None = None) -> ObjectInfo:
        return await self._run_write(self._update_blocking, key, edit, dict(metadata or {}))

    async def _kernel_copy(self, src_path: str, dst_path: str, *, metadata: Callable[[int], dict[str, str]],
                           progress: ProgressCallback | None, key: str) -> ObjectInfo:
        """Copy ``src_path`` into a temp file next to ``dst_path`` in parallel parts, then commit it."""
        try:
            src_fd = await anyio.to_thread.run_sync(os.open, src_path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NoSuchFileError(key, f"{src_path} does not exist") from None
        try:
            size = os.fstat(src_fd).st_size
            meta = metadata(src_fd)
            fd, tmp = await anyio.to_thread.run_sync(_mkstemp, os.path.dirname(dst_path),
                                                     os.path.basename(dst_path))
            committed = False
            try:
                reporter = Progress(progress, size)

                async def copy_part(part: Part) -> None:
                    await anyio.to_thread.run_sync(_copy_range, src_fd, fd, part.offset, part.length)
                    await reporter.advance(part.length)

                parts = plan_parts(size, self.transfer.part_size, max_parts=self.transfer.max_parts,
                                   min_part_size=self.transfer.min_part_size)
                await run_parts(parts, copy_part, max_concurrency=self.transfer.max_concurrency)
                committed = True
                return await anyio.to_thread.run_sync(self._commit, key, dst_path, tmp, fd, meta, False, None)
            finally:
                if not committed:
                    os.close(fd)
                    unlink_quietly(tmp)
        finally:
            os.close(src_fd)

    async def upload_file(self, path: str | PathLike[str], key: str, *, metadata: dict[str, str] | None = None,
                          encrypted: bool = False, progress: ProgressCallback | None = None) -> ObjectInfo:
        meta = {**(metadata or {}), **self.encryption_metadata(encrypted)}
        return await self._kernel_copy(os.fspath(path), self.path_of(key), metadata=lambda _fd: meta,
                                       progress=progress, key=key)

    async def download_file(self, key: str, path: str | PathLike[str], *,
                            progress: ProgressCallback | None = None) -> ObjectInfo:
        src = self.path_of(key)
        info = await self.stat(key)
        if info is None:
            raise self._missing(key)
        self.check_encryption(key, info.metadata)
        await self._kernel_copy(src, os.path.abspath(path), metadata=lambda _fd: {}, progress=progress, key=key)
        return info

    async def stat(self, key: str) -> ObjectInfo | None:
        path = self.path_of(key)

        def stat() -> ObjectInfo | None:
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                return None
            if not stat_module.S_ISREG(st.st_mode):
                return None
            return _info(key, path, st)

        return await _READS.run(stat)

    def _delete_blocking(self, keys: list[str]) -> None:
        for key in keys:
            path = self.path_of(key)
            try:
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except IsADirectoryError:
                continue
            # remove directories this left empty, up to the root (a concurrent writer recreates its own)
            directory = os.path.dirname(path)
            while directory != self.root and directory.startswith(self.root):
                try:
                    os.rmdir(directory)
                except OSError:
                    break
                directory = os.path.dirname(directory)

    async def delete(self, key: str) -> None:
        await _WRITES.run(self._delete_blocking, [key])

    def _delete_prefix_blocking(self, prefix: str) -> None:
        self._delete_blocking([info.key for info in self._scan(prefix, with_metadata=False)])

    async def delete_prefix(self, prefix: str) -> None:
        await _WRITES.run(self._delete_prefix_blocking, prefix)

    async def delete_many(self, keys: Any) -> None:
        keys = list(keys)
        for start in range(0, len(keys), 256):
            await anyio.to_thread.run_sync(self._delete_blocking, keys[start : start + 256])

    def _scan(self, prefix: str, *, with_metadata: bool = True) -> list[ObjectInfo]:
        base_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = os.path.join(self.root, *base_key.split("/")) if base_key else self.root
        found: list[ObjectInfo] = []
        stack = [(base, base_key)]
        while stack:
            directory, dir_key = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.name.startswith(RESERVED_PREFIX):
                    continue
                key = f"{dir_key}/{entry.name}" if dir_key else entry.name
                if entry.is_dir(follow_symlinks=False):
                    if key.startswith(prefix) or prefix.startswith(key + "/"):
                        stack.append((entry.path, key))
                elif key.startswith(prefix) and entry.is_file(follow_symlinks=False):
                    try:
                        st = entry.stat(follow_symlinks=False)
                        found.append(_info(key, entry.path, st) if with_metadata else
                                     ObjectInfo(key, st.st_size, _etag(st), st.st_mtime))
                    except FileNotFoundError:
                        continue
        return found

    async def list(self, prefix: str = "", *, metadata: bool = True) -> AsyncIterator[ObjectInfo]:
        for info in await anyio.to_thread.run_sync(lambda: self._scan(prefix, with_metadata=metadata)):
            yield info

    async def copy(self, src: str, dst: str, *, metadata: dict[str, str] | None = None) -> ObjectInfo:
        src_path = self.path_of(src)
        return await self._kernel_copy(src_path, self.path_of(dst),
                                       metadata=lambda fd: {**_read_metadata(fd), **(metadata or {})},
                                       progress=None, key=src)

    async def presign(self, key: str, expires: int = 3600) -> str:
        return Path(self.path_of(key)).as_uri()

    def local_path(self, key: str) -> str:
        """The file that holds ``key`` (for symlinks and kernel copies by callers on the same machine)."""
        return self.path_of(key)


class _LocalWriter:
    """Buffers small writes and hands ~4 MiB blocks to a worker thread."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self.bytes_written = 0

    async def write(self, data: Buffer) -> int:
        n = len(data)
        if not n:
            return 0
        if not self._buffer and n >= STREAM_BUFFER:
            await anyio.to_thread.run_sync(_write_all, self._fd, data)
        else:
            self._buffer += data
            if len(self._buffer) >= STREAM_BUFFER:
                await self.flush()
        self.bytes_written += n
        return n

    async def flush(self) -> None:
        if self._buffer:
            block, self._buffer = self._buffer, bytearray()
            await anyio.to_thread.run_sync(_write_all, self._fd, block)


def _write_all(fd: int, data: Buffer) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def from_locator(locator: Locator, *, transfer: TransferConfig | None = None, fsync: bool = True,
                 sse_key: bytes | str | None = None, **rest: Any) -> LocalBackend:
    reject_unknown_options("local (file:)", rest, ["fsync", "sse_key"])
    return LocalBackend(locator.path, transfer=transfer, fsync=fsync, sse_key=sse_key)


__all__ = ["LocalBackend", "atomic_write_bytes", "from_locator"]
