"""Local-disk backend: one file per object under a root directory.

**Nothing under the root is followed out of it.** Every operation resolves a key through one routine
(:meth:`LocalBackend._walk`): from a directory descriptor of the root it opens each segment with
``O_NOFOLLOW | O_DIRECTORY`` relative to its parent, creates missing directories with ``mkdir(dir_fd=...)``,
and opens, renames, links and unlinks final names relative to the directory it reached. A symbolic link planted
anywhere (the object, a directory on the way, ``shared/``, a job's cleanup directory) is "no such object" for
reads, listings and deletes, and refused with :class:`InvalidKeyError` for writes; it is never written through,
and nothing outside the root is ever read, written or removed. :meth:`local_path` checks the same way.

**Atomic writes.** A write goes to a temporary file (``.ajs-tmp-new-<time>-<random>``, flocked while its writer
lives) in the destination directory; its metadata, with the CRC32C of its bytes (``ajs-crc32c``), goes in one
extended attribute of that file; then it is fsynced and renamed (or, for ``if_absent``, linked) into place and
the directory is fsynced. A reader sees the old object or the new one, never a part. Conditional replaces
(``if_match``) and :meth:`update_object` hold an ``flock`` on a striped lock file while they compare and rename,
which makes check-and-replace atomic across threads and processes.

**Cancellation.** A write that raises, for an error or a cancellation at any await, leaves the store as it was:
no object, no temp file, no directory it made, no file descriptor. Blocking work that opens descriptors runs in
worker threads whose results are always collected (:func:`~aiojobstore.commit.commit_or_roll_back`), so a
cancelled caller cannot drop them. A cancellation by ``task.cancel()`` (also ``asyncio.timeout``) that lands while
the commit is in flight rolls the commit back: a new object is unlinked, a replaced one restored from the hard
link (``.ajs-tmp-old-...``) kept until the commit returns; under an anyio cancel scope the write completes and
returns, and the cancellation comes at the next checkpoint. A cancelled delete may have taken effect (deletes are
idempotent).

**Durability** (``fsync=True``, the default): the file is fsynced before the rename, the directory after it, and
every directory a write creates is fsynced into its parent.

**Integrity.** Whole reads (``get_object``/``get_bytes`` without a range, ``open_reader`` read to the end,
``download_file``, ``copy``) verify the recorded CRC32C and raise :class:`IntegrityError` naming the key on a
mismatch. A ranged read, or a stream read stopped before its end, is not verified. With ``require_checksum`` an
object without a recorded checksum is refused. The store therefore needs a filesystem with user extended
attributes (ext4, xfs, btrfs, tmpfs on Linux >= 6.6).

**Debris.** A killed writer leaves at most ``.ajs-tmp-*`` files (hidden from listings); :meth:`reclaim` removes
those older than a grace period whose writer is gone (no flock), and the empty directories they kept alive.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import functools
import io
import json
import logging
import os
import re
import secrets
import shutil
import stat as stat_module
import threading
import time
import weakref
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ..commit import commit_or_roll_back, run_uncancelled
from ..errors import (
    ConcurrentModificationError,
    IntegrityError,
    InvalidKeyError,
    JobStoreError,
    NoSuchFileError,
    StorageFullError,
)
from ..inline import inline_active, to_thread
from ..streams import AsyncReader, AsyncWriter, Buffer, ChunkReader
from ..transfer import (
    Part,
    Progress,
    ProgressCallback,
    TransferConfig,
    combine_part_crcs,
    crc32c,
    crc32c_from_b64,
    crc32c_to_b64,
    plan_parts,
    run_parts,
    unlink_quietly,
)
from .base import (
    META_CRC32C,
    META_KEY_SHA256,
    Backend,
    ObjectInfo,
    ReclaimReport,
    reject_unknown_options,
    user_metadata,
    validate_key,
)

if TYPE_CHECKING:
    from ..locator import Locator

log = logging.getLogger("aiojobstore.local")

T = TypeVar("T")

RESERVED_PREFIX = ".ajs-"
TMP_PREFIX = ".ajs-tmp-"
LOCK_DIR = ".ajs-locks"
LOCK_STRIPES = 64
XATTR_NAME = "user.aiojobstore.meta"
STREAM_BUFFER = 4 << 20
NAME_MAX = 255

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted as an object must not hang the reader (it has no effect on regular files)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: ``ioctl(dst, FICLONE, src)``: share the source's extents, copy-on-write (btrfs, XFS; not ext4, not tmpfs).
_FICLONE = 0x40049409
_NO_REFLINK = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EBADF})
_UMASK = os.umask(0o022)
os.umask(_UMASK)
#: Walks of a key's directories before giving up on concurrent deletes removing them under the walk.
_WALK_ATTEMPTS = 5
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: ``.ajs-tmp-<kind>-<creation time, ns, hex>-<random>``: the time tells reclaim how old a temp file is even when
#: it is a hard link to an old object (the previous version kept for a roll-back).
_TEMP_NAME = re.compile(r"\.ajs-tmp-(?:new|old)-([0-9a-f]{1,16})-[0-9a-f]{12}")
_FULL = (errno.ENOSPC, errno.EDQUOT)


# ------------------------------------------------------------------------------------------ blocking helpers


def _temp_name(kind: str = "new") -> str:
    return f"{TMP_PREFIX}{kind}-{time.time_ns():x}-{secrets.token_hex(6)}"


def _temp_age(name: str, st: os.stat_result, now: float) -> float:
    """Seconds since a temp file was created or last written, whichever is later."""
    match = _TEMP_NAME.fullmatch(name)
    born = int(match.group(1), 16) / 1e9 if match else 0.0
    return now - max(born, st.st_mtime)


def _create_temp(dir_fd: int) -> tuple[int, str]:
    """A new temp file in ``dir_fd``, flocked so that :meth:`LocalBackend.reclaim` knows its writer is alive."""
    name = _temp_name()
    fd = os.open(name, _TEMP_FLAGS, 0o644, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise
    return fd, name


def _etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _read_metadata(fd: int, key: str) -> dict[str, str]:
    """The metadata recorded in an object's extended attribute; :class:`IntegrityError` if it is not ours."""
    try:
        raw = os.getxattr(fd, XATTR_NAME)
    except OSError as error:
        if error.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    try:
        metadata = json.loads(raw)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        metadata = None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise IntegrityError(
            f"the metadata of {key!r} (extended attribute {XATTR_NAME}) is not a JSON object of strings: the file "
            "was damaged or not written by aiojobstore; delete it or restore it from a backup"
        )
    return metadata


def _write_metadata(fd: int, metadata: dict[str, str]) -> None:
    try:
        os.setxattr(fd, XATTR_NAME, json.dumps(metadata, separators=(",", ":")).encode())
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise JobStoreError(
                "this filesystem does not support user extended attributes, which the local backend needs for "
                "object metadata and checksums; put the store on ext4, xfs, btrfs or tmpfs (Linux >= 6.6)"
            ) from error
        raise


def _write_all(fd: int, data: Buffer) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> int:
    """Copy ``length`` bytes at ``offset`` (kernel copy where possible); return the CRC32C of what landed."""
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
    crc = 0
    done = 0
    while done < length:  # read back what was written (from the page cache): the checksum covers the copy
        data = os.pread(dst_fd, min(length - done, STREAM_BUFFER), offset + done)
        if not data:
            raise JobStoreError(f"the copy is shorter than expected ({length} bytes at offset {offset})")
        crc = crc32c(data, crc)
        done += len(data)
    return crc


@contextlib.contextmanager
def _os_errors(key: str | None, where: str) -> Iterator[None]:
    """Turn a full device and an over-long name into the hierarchy's errors (``key`` None: a local path)."""
    try:
        yield
    except JobStoreError:
        raise
    except OSError as error:
        if error.errno in _FULL:
            raise StorageFullError(where, error.strerror or "") from error
        if error.errno == errno.ENAMETOOLONG:
            if key is None:
                raise JobStoreError(f"the path {where!r} is too long for the filesystem") from error
            raise InvalidKeyError(f"object key {key!r} is too long for the filesystem under the store") from error
        raise


def atomic_write_bytes(path: str | PathLike[str], data: bytes, *, fsync: bool = True) -> None:
    """Replace a local file with ``data`` atomically (temp file + rename). Blocking."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, _temp_name())
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise


class _Blocked(Exception):
    """A symbolic link (or a file) stands where directory number ``depth`` of a key should be."""

    def __init__(self, depth: int, link: bool) -> None:
        super().__init__(depth)
        self.depth = depth
        self.link = link


class _Chain:
    """Open directory descriptors from the top (the root's, borrowed unless ``owned``) down to one directory,
    the names between them, and which of those directories this call created."""

    __slots__ = ("created", "fds", "names", "owned")

    def __init__(self, top: int, *, owned: bool = False) -> None:
        self.fds = [top]
        self.names: list[str] = []
        self.created: list[bool] = []
        self.owned = owned

    @property
    def fd(self) -> int:
        return self.fds[-1]

    def add(self, name: str, fd: int, created: bool) -> None:
        self.fds.append(fd)
        self.names.append(name)
        self.created.append(created)

    def remove_dirs(self, *, only_created: bool) -> None:
        """Remove the directories of the chain that are empty, deepest first (only those this call made)."""
        for index in range(len(self.names) - 1, -1, -1):
            if only_created and not self.created[index]:
                return
            try:
                os.rmdir(self.names[index], dir_fd=self.fds[index])
            except OSError:
                return

    def close(self) -> None:
        """Close the owned descriptors (idempotent)."""
        fds = self.fds if self.owned else self.fds[1:]
        self.fds = [] if self.owned else self.fds[:1]
        for fd in fds:
            os.close(fd)


@dataclass
class _Staged:
    """A temp file being written next to its final name (owned by exactly one party: see ``release``)."""

    chain: _Chain
    name: str
    fd: int
    tmp: str
    where: str
    key: str | None
    crc: int = 0
    size: int = 0

    def write(self, data: Buffer) -> None:
        with _os_errors(self.key, self.where):
            _write_all(self.fd, data)
        self.crc = crc32c(data, self.crc)
        self.size += len(data)

    def release(self) -> None:
        """Discard the temp file and the directories made for it."""
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp, dir_fd=self.chain.fd)
        finally:
            os.close(self.fd)
            self.chain.remove_dirs(only_created=True)
            self.chain.close()


@dataclass
class _Committed:
    """What a commit did, so that it can be rolled back (or its kept previous version dropped)."""

    info: ObjectInfo
    chain: _Chain
    name: str
    inode: tuple[int, int]
    previous: str | None
    key: str | None


@dataclass
class _Source:
    """An object (or local file) open for reading."""

    fd: int
    st: os.stat_result
    metadata: dict[str, str]

    def read(self, n: int, offset: int, crc: int | None) -> tuple[bytes, int | None]:
        data = os.pread(self.fd, n, offset)
        return data, None if crc is None else crc32c(data, crc)

    def release(self) -> None:
        os.close(self.fd)


class _NotRegular(JobStoreError):
    """An upload's source is a device or a FIFO: it is read as a stream, not copied in parts."""


@dataclass
class _Copy:
    """A copy in progress: its source and the staged destination."""

    source: _Source
    staged: _Staged
    expected: int | None  # the CRC32C recorded with the source
    label: str  # the source, for messages

    def copy_range(self, offset: int, length: int) -> int:
        """Copy one part; the CRC32C of what landed."""
        with _os_errors(self.staged.key, self.staged.where):
            return _copy_range(self.source.fd, self.staged.fd, offset, length)

    def release(self) -> None:
        try:
            self.staged.release()
        finally:
            self.source.release()


class _SmallOpRunner:
    """Runs small blocking filesystem operations (a stat, a read of a job, an unlink) on a few dedicated threads
    that each take a batch of queued operations per wake-up, so that 64 concurrent job loads cost a handful of
    thread hand-offs instead of 64. Restarted after ``fork``.

    A cancelled caller returns at once and the result is dropped: operations run here must own what they open
    (writes go through :func:`commit_or_roll_back`, whose commit task is never cancelled, so none is dropped).
    ``submit`` queues work nobody waits for; ``run`` of a no-op on a one-thread runner waits for all of it."""

    def __init__(self, name: str, threads: int, *, batch: int) -> None:
        self._name = name
        self._batch = batch
        self._threads = threads
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._ready = threading.Condition()
        self._pid = -1

    def _start(self) -> None:
        self._queue.clear()
        self._ready = threading.Condition()
        for n in range(self._threads):
            threading.Thread(target=self._work, name=f"aiojobstore-{self._name}-{n}", daemon=True).start()
        self._pid = os.getpid()

    def _put(self, item: tuple[Any, ...]) -> None:
        if self._pid != os.getpid():
            self._start()
        with self._ready:
            self._queue.append(item)
            self._ready.notify()

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        if inline_active():
            return func(*args)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put((loop, future, func, args))
        return await future

    def submit(self, func: Callable[..., Any], *args: Any) -> None:
        self._put((None, None, func, args))

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
                    if loop is None:
                        log.warning("background clean-up failed: %r", error)
                        continue
                    outcome = (future, False, error)
                if loop is not None:
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
_READS = _SmallOpRunner("read", 1, batch=64)
_WRITES = _SmallOpRunner("write", 2, batch=8)
#: Drops the previous versions kept for roll-backs once their commits returned (one thread: FIFO).
_HOUSEKEEPING = _SmallOpRunner("housekeeping", 1, batch=64)

_LIVE: weakref.WeakSet[LocalBackend] = weakref.WeakSet()


def _forget_root_fds() -> None:
    """In a forked child (one thread): close the root descriptors inherited from the parent; reopened on use."""
    for backend in list(_LIVE):
        backend._root_lock = threading.Lock()
        backend._drop_root_fds()


os.register_at_fork(after_in_child=_forget_root_fds)


async def _in_thread(func: Callable[..., T], *args: Any) -> T:
    return await to_thread(func, *args)


class LocalBackend(Backend):
    """Objects as files under ``root``; see the module docstring for the guarantees."""

    scheme = "file"
    encrypts_at_rest = False
    runs_inline = True

    def __init__(self, root: str | PathLike[str], *, fsync: bool = True, **options: Any) -> None:
        super().__init__(**options)
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self._root_fd = -1
        self._retired: list[int] = []  # root descriptors replaced while other threads may still use them
        self._root_lock = threading.Lock()
        self._stripe_locks: dict[str, threading.Lock] = {}
        self._stripe_fds: dict[str, int] = {}
        _LIVE.add(self)

    def describe(self) -> str:
        return f"file:{self.root}"

    # ----------------------------------------------------------------- paths

    def _segments(self, key: str) -> list[str]:
        """The directory names and file name of ``key``; refuses anything that could leave the root or clash."""
        validate_key(key)  # relative, no '.' or '..' segment
        segments = key.split("/")
        if RESERVED_PREFIX in key and any(segment.startswith(RESERVED_PREFIX) for segment in segments):
            raise InvalidKeyError(f"object key {key!r} uses the reserved prefix {RESERVED_PREFIX!r}")
        if len(key) > NAME_MAX // 4:  # a shorter key cannot have a segment over NAME_MAX bytes
            for segment in segments:
                try:
                    size = len(os.fsencode(segment))
                except UnicodeError:
                    raise InvalidKeyError(f"object key {key!r} cannot be encoded as a file name") from None
                if size > NAME_MAX:
                    raise InvalidKeyError(f"object key {key!r} has a segment of {size} bytes; the local backend "
                                          f"stores each segment as a file name, at most {NAME_MAX} bytes")
        return segments

    def path_of(self, key: str) -> str:
        """The path of the file that holds ``key`` (computed only: see :meth:`local_path` for a checked one)."""
        return os.path.join(self.root, *self._segments(key))

    def _where(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _root(self, *, create: bool) -> int | None:
        """The root's directory descriptor, opened once per process (None when the root does not exist)."""
        fd = self._root_fd
        if fd >= 0:
            return fd
        with self._root_lock:
            if self._root_fd < 0:
                try:
                    self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except FileNotFoundError:
                    if not create:
                        return None
                    os.makedirs(self.root, exist_ok=True)
                    self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            return self._root_fd

    def _root_replaced(self) -> bool:
        """Whether the cached root was removed (the store destroyed and made again); if so, forget it."""
        with self._root_lock:
            fd = self._root_fd
            if fd < 0:
                return True
            try:
                current = os.stat(self.root)
            except FileNotFoundError:
                current = None
            cached = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (cached.st_dev, cached.st_ino):
                return False
            self._retired.append(fd)  # another thread may be using it: closed by close()
            self._root_fd = -1
            return True

    def _drop_root_fds(self) -> None:
        fds = [*self._retired, self._root_fd, *self._stripe_fds.values()]
        self._retired, self._root_fd, self._stripe_fds = [], -1, {}
        self._stripe_locks = {}
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _walk(self, names: Sequence[str], key: str, *, create: bool) -> _Chain | None:
        """Open the directories ``names`` below the root one by one, never through a symbolic link.

        With ``create``, missing directories are made (each fsynced into its parent when ``fsync``) and a link or
        a file in the way raises :class:`InvalidKeyError`. Without it, a missing directory gives None and a link
        or file in the way raises :class:`_Blocked`. The caller closes the chain."""
        for attempt in range(_WALK_ATTEMPTS):
            root = self._root(create=create)
            if root is None:
                return None
            chain = _Chain(root)
            try:
                for name in names:
                    fd, created = self._enter(chain, name, create=create)
                    if fd < 0:
                        chain.close()
                        return None
                    chain.add(name, fd, created)
                return chain
            except FileNotFoundError:
                chain.close()
                last = attempt == _WALK_ATTEMPTS - 1
                if not chain.names and not last and self._root_replaced():
                    continue  # the store was destroyed and made again: walk from the new root
                if chain.names and create and not last:
                    continue  # a concurrent delete removed a directory on the way as it emptied: walk again
                if create:
                    raise
                return None
            except _Blocked as blocked:
                chain.close()
                if not create:
                    raise
                raise self._refused(key, names[: blocked.depth + 1], blocked.link) from None
            except BaseException:
                chain.close()
                raise
        return None

    def _enter(self, chain: _Chain, name: str, *, create: bool) -> tuple[int, bool]:
        """Open (or make and open) the directory ``name`` in the chain's last one: ``(fd, created)``, fd -1 when
        it is missing and not to be made. FileNotFoundError when the parent itself was removed."""
        parent = chain.fd
        created = False
        for _ in range(2):
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=parent), created
            except FileNotFoundError:
                if not create:
                    if not chain.names:
                        raise  # _walk checks whether the root is stale
                    return -1, False
            except OSError as error:
                if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                try:
                    link = stat_module.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
                except OSError:
                    link = False
                raise _Blocked(len(chain.names), link) from None
            try:
                os.mkdir(name, 0o777, dir_fd=parent)
                created = True
            except FileExistsError:
                continue
            if self.fsync:
                os.fsync(parent)  # the new directory's entry is durable before anything is put in it
        raise FileNotFoundError(errno.ENOENT, "directory removed while it was entered", name)

    @staticmethod
    def _refused(key: str, path: Sequence[str], link: bool) -> InvalidKeyError:
        where = "/".join(path)
        if link:
            return InvalidKeyError(f"cannot use {key!r}: {where!r} under the store is a symbolic link, and the store "
                                   "never follows links out of its root; remove the link")
        return InvalidKeyError(f"cannot write {key!r}: {where!r} under the store is an object (or another file), "
                               "not a directory")

    def _check_name(self, dir_fd: int, name: str, key: str) -> None:
        """Refuse to write over a symbolic link or a directory standing at an object's name."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat_module.S_ISLNK(st.st_mode):
            raise InvalidKeyError(f"cannot write {key!r}: a symbolic link stands at its name under the store, and "
                                  "the store never writes through links; remove the link")
        if not stat_module.S_ISREG(st.st_mode):
            raise InvalidKeyError(f"cannot write {key!r}: a directory (or special file) stands at its name")

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

    # ----------------------------------------------------------------- reading (blocking)

    def _open_object(self, key: str, segments: Sequence[str]) -> _Source:
        """Open ``key`` for reading (never through a link): raises NoSuchFileError when it is not a real file."""
        try:
            chain = self._walk(segments[:-1], key, create=False)
        except _Blocked:
            chain = None
        if chain is None:
            raise NoSuchFileError(key)
        try:
            fd = os.open(segments[-1], _READ_FLAGS, dir_fd=chain.fd)
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO):
                raise NoSuchFileError(key) from None
            raise
        finally:
            chain.close()
        try:
            st = os.fstat(fd)
            if not stat_module.S_ISREG(st.st_mode):
                raise NoSuchFileError(key)
            metadata = _read_metadata(fd, key)
        except BaseException:
            os.close(fd)
            raise
        return _Source(fd, st, metadata)

    def _expected_crc(self, key: str, metadata: dict[str, str]) -> int | None:
        """Check that ``key`` may be read here (its encryption key, a checksum if one is required); return the
        CRC32C recorded with it."""
        self.check_encryption(key, metadata)
        recorded = metadata.get(META_CRC32C)
        if recorded is None:
            if self.require_checksum:
                raise IntegrityError(f"{key!r} carries no checksum ({META_CRC32C}): it was not written through "
                                     "aiojobstore, so the store refuses it; delete it or write it again")
            return None
        try:
            return crc32c_from_b64(recorded)
        except ValueError:
            raise IntegrityError(f"the checksum recorded with {key!r} ({recorded!r}) is malformed: the file was "
                                 "damaged or not written by aiojobstore") from None

    @staticmethod
    def _verify(key: str, expected: int | None, crc: int) -> None:
        if expected is not None and crc != expected:
            raise IntegrityError(f"{key!r} is damaged: its bytes do not match the CRC32C recorded when it was written "
                                 f"({crc32c_to_b64(crc)} read, {crc32c_to_b64(expected)} recorded); restore it from "
                                 "a backup or delete it")

    def _read_blocking(self, key: str, segments: Sequence[str], start: int = 0,
                       end: int | None = None) -> tuple[bytes, ObjectInfo]:
        """The bytes ``[start, end)`` of ``key`` and its info; a whole read is verified against its checksum."""
        source = self._open_object(key, segments)
        try:
            st = source.st
            expected = self._expected_crc(key, source.metadata)
            stop = st.st_size if end is None else min(end, st.st_size)
            data = os.pread(source.fd, max(0, stop - start), start) if stop > start else b""
        finally:
            source.release()
        if start <= 0 and stop == st.st_size:
            if len(data) != st.st_size:
                raise IntegrityError(f"{key!r} changed size while it was read")
            self._verify(key, expected, crc32c(data))
        return data, ObjectInfo(key, st.st_size, _etag(st), st.st_mtime, source.metadata)

    def _stat_blocking(self, key: str, segments: Sequence[str]) -> ObjectInfo | None:
        try:
            source = self._open_object(key, segments)
        except NoSuchFileError:
            return None
        source.release()
        st = source.st
        return ObjectInfo(key, st.st_size, _etag(st), st.st_mtime, source.metadata)

    # ----------------------------------------------------------------- writing (blocking)

    def _stage(self, key: str, segments: Sequence[str]) -> _Staged:
        """Create the temp file for ``key`` in its directory (made as needed, never through a link)."""
        where = self._where(key)
        with _os_errors(key, where):
            for _ in range(3):
                chain = self._walk(segments[:-1], key, create=True)
                assert chain is not None
                try:
                    self._check_name(chain.fd, segments[-1], key)
                    fd, tmp = _create_temp(chain.fd)
                except FileNotFoundError:  # the directory was just removed by a concurrent delete: walk again
                    chain.close()
                    continue
                except BaseException:
                    chain.remove_dirs(only_created=True)
                    chain.close()
                    raise
                return _Staged(chain, segments[-1], fd, tmp, where, key)
        raise JobStoreError(f"could not create a temporary file for {key!r}: its directory kept being removed")

    @staticmethod
    def _stage_local(path: str) -> _Staged:
        """Create a temp file next to a local destination ``path`` (outside the store: links are the user's)."""
        path = os.path.abspath(path)
        directory, name = os.path.split(path)
        with _os_errors(None, path):
            if len(os.fsencode(name)) > NAME_MAX:
                raise JobStoreError(f"the file name of {path!r} is longer than {NAME_MAX} bytes")
            os.makedirs(directory, exist_ok=True)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                if os.path.isdir(path):
                    raise JobStoreError(f"cannot write to {path!r}: it is a directory")
                fd, tmp = _create_temp(dir_fd)
            except BaseException:
                os.close(dir_fd)
                raise
        return _Staged(_Chain(dir_fd, owned=True), name, fd, tmp, path, None)

    def _commit(self, staged: _Staged, metadata: dict[str, str] | None, if_absent: bool = False,
                if_match: str | None = None) -> _Committed:
        """Make a staged temp file the object: its metadata and CRC32C, fsync, then link or rename it into place
        under the condition, and fsync the directory. Owns ``staged``: on an error nothing is left."""
        key, d, name = staged.key, staged.chain.fd, staged.name
        previous: str | None = None
        placed = False
        st: os.stat_result | None = None
        try:
            with _os_errors(key, staged.where):
                if metadata is not None:
                    _write_metadata(staged.fd, {**metadata, META_CRC32C: crc32c_to_b64(staged.crc)})
                if self.fsync:
                    os.fsync(staged.fd)
                st = os.fstat(staged.fd)
                if if_absent:
                    try:
                        os.link(staged.tmp, name, src_dir_fd=d, dst_dir_fd=d, follow_symlinks=False)
                    except FileExistsError:
                        self._check_name(d, name, key or name)
                        raise ConcurrentModificationError(f"{key!r} already exists") from None
                    placed = True
                    with contextlib.suppress(OSError):  # else left as debris for reclaim
                        os.unlink(staged.tmp, dir_fd=d)
                elif if_match is not None:
                    assert key is not None
                    with self._locked(key):
                        try:
                            current = os.stat(name, dir_fd=d, follow_symlinks=False)
                        except FileNotFoundError:
                            raise ConcurrentModificationError(f"{key!r} was deleted since it was read") from None
                        if not stat_module.S_ISREG(current.st_mode) or _etag(current) != if_match:
                            raise ConcurrentModificationError(f"{key!r} changed since it was read")
                        previous = None if inline_active() else self._keep_previous(d, name)
                        os.rename(staged.tmp, name, src_dir_fd=d, dst_dir_fd=d)
                        placed = True
                else:
                    previous = None if inline_active() else self._keep_previous(d, name)
                    os.rename(staged.tmp, name, src_dir_fd=d, dst_dir_fd=d)
                    placed = True
                if self.fsync:
                    os.fsync(d)
        except BaseException:
            try:
                if placed:  # the directory fsync failed: undo, the write raises
                    assert st is not None, "an object is placed only after its fstat"
                    self._undo(d, name, (st.st_dev, st.st_ino), previous)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(staged.tmp, dir_fd=d)
                    if previous is not None:
                        with contextlib.suppress(OSError):
                            os.unlink(previous, dir_fd=d)
                    staged.chain.remove_dirs(only_created=True)
            finally:
                os.close(staged.fd)
                staged.chain.close()
            raise
        os.close(staged.fd)  # after the rename: the flock covered the temp name until it was gone
        info = ObjectInfo(key or staged.where, st.st_size, _etag(st), st.st_mtime,
                          {**metadata, META_CRC32C: crc32c_to_b64(staged.crc)} if metadata is not None else {})
        return _Committed(info, staged.chain, name, (st.st_dev, st.st_ino), previous, key)

    @staticmethod
    def _keep_previous(dir_fd: int, name: str) -> str | None:
        """Hard-link the version about to be replaced under a temp name, for a roll-back; None if there is none.
        (Not done inline, under the blocking facade: nothing can cancel a caller that is not on an event loop.)"""
        previous = _temp_name("old")
        try:
            os.link(name, previous, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        return previous

    @staticmethod
    def _undo(dir_fd: int, name: str, inode: tuple[int, int], previous: str | None) -> bool:
        """Put back the version ``previous`` (or remove the new object) if ``name`` is still the one we wrote."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            ours = (st.st_dev, st.st_ino) == inode
        except FileNotFoundError:
            ours = False
        if ours and previous is not None:
            os.rename(previous, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        elif ours:
            os.unlink(name, dir_fd=dir_fd)
        elif previous is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(previous, dir_fd=dir_fd)
        return ours

    def _roll_back(self, committed: _Committed) -> None:
        """Undo a commit whose caller was cancelled meanwhile (only if the object is still the one it wrote)."""
        try:
            with self._locked(committed.key) if committed.key is not None else contextlib.nullcontext():
                d = committed.chain.fd
                ours = self._undo(d, committed.name, committed.inode, committed.previous)
                if ours and committed.previous is None:
                    committed.chain.remove_dirs(only_created=True)
                if self.fsync:
                    os.fsync(d)
        finally:
            committed.chain.close()

    @staticmethod
    def _drop_previous(committed: _Committed) -> None:
        try:
            if committed.previous is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(committed.previous, dir_fd=committed.chain.fd)
        finally:
            committed.chain.close()

    def _put_blocking(self, key: str, segments: Sequence[str], data: Buffer, metadata: dict[str, str],
                      if_absent: bool, if_match: str | None) -> _Committed:
        staged = self._stage(key, segments)
        try:
            staged.write(data)
        except BaseException:
            staged.release()
            raise
        return self._commit(staged, metadata, if_absent, if_match)

    def _update_blocking(self, key: str, segments: Sequence[str], edit: Callable[[bytes], bytes],
                         metadata: dict[str, str] | None) -> _Committed:
        """Read, edit and replace ``key`` under its lock, so no conditional writer can slip in between."""
        with self._locked(key):
            data, info = self._read_blocking(key, segments)
            keep = user_metadata(info.metadata) if metadata is None else user_metadata(metadata)
            if META_KEY_SHA256 in info.metadata:
                keep[META_KEY_SHA256] = info.metadata[META_KEY_SHA256]
            return self._put_blocking(key, segments, edit(data), keep, False, None)

    # ----------------------------------------------------------------- owning what worker threads open

    async def _acquire(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func`` (which opens descriptors) in a worker thread; whatever cancellation arrives, its result is
        either returned to the caller, who then owns it, or released."""
        return await commit_or_roll_back(lambda: _in_thread(func, *args),
                                         lambda resource: _in_thread(resource.release))  # type: ignore[attr-defined]

    @staticmethod
    async def _release(resource: _Staged | _Source | _Copy) -> None:
        await run_uncancelled(lambda: _in_thread(resource.release))

    async def _run_commit(self, func: Callable[..., _Committed], *args: Any) -> ObjectInfo:
        """Run a blocking commit to completion; roll it back if ``task.cancel()`` hit the caller meanwhile."""
        if self.fsync:  # fsyncs overlap best on many threads
            def commit() -> Awaitable[_Committed]:
                return _in_thread(func, *args)
        else:
            def commit() -> Awaitable[_Committed]:
                return _WRITES.run(func, *args)
        committed = await commit_or_roll_back(commit, lambda done: _in_thread(self._roll_back, done))
        if committed.previous is None:
            committed.chain.close()  # directory descriptors only: no I/O
        else:
            _HOUSEKEEPING.submit(self._drop_previous, committed)
        return committed.info

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
        self._root_replaced()

    async def close(self) -> None:
        """Wait for clean-ups still running in the background and close the root's descriptor."""
        await _HOUSEKEEPING.run(lambda: None)
        with self._root_lock:
            self._drop_root_fds()

    # ----------------------------------------------------------------- objects

    @asynccontextmanager
    async def open_reader(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[AsyncReader]:
        segments = self._segments(key)
        source = await self._acquire(self._open_object, key, segments)
        try:
            expected = self._expected_crc(key, source.metadata)
            size = source.st.st_size
            stop = size if end is None else min(end, size)
            position = min(max(start, 0), stop)
            crc: int | None = 0 if position == 0 and stop == size and expected is not None else None

            async def chunks() -> AsyncIterator[bytes]:
                nonlocal position, crc
                while position < stop:
                    n = min(STREAM_BUFFER, stop - position)
                    data, crc = await run_uncancelled(functools.partial(_in_thread, source.read, n, position, crc))
                    if not data:
                        raise IntegrityError(f"{key!r} is shorter than when it was opened")
                    position += len(data)
                    if position == stop and crc is not None:
                        self._verify(key, expected, crc)  # before the last bytes are handed out
                    yield data

            stream = chunks()
            reader = ChunkReader(stream, size=stop - position)
            try:
                yield reader
            finally:
                with anyio.CancelScope(shield=True):
                    await reader.aclose()
        finally:
            await self._release(source)

    @asynccontextmanager
    async def open_writer(self, key: str, *, metadata: dict[str, str] | None = None, if_absent: bool = False,
                          encrypted: bool = False) -> AsyncIterator[AsyncWriter]:
        meta = {**(metadata or {}), **self.encryption_metadata(encrypted)}
        segments = self._segments(key)
        staged = await self._acquire(self._stage, key, segments)
        writer = _LocalWriter(staged)
        committing = False
        try:
            yield writer
            await writer.flush()
            committing = True  # commit_or_roll_back always runs the commit, which owns staged from here on
            await self._run_commit(self._commit, staged, meta, if_absent, None)
        finally:
            if not committing:
                await self._release(staged)

    async def get_object(self, key: str, *, start: int = 0, end: int | None = None) -> tuple[bytes, ObjectInfo]:
        return await _READS.run(self._read_blocking, key, self._segments(key), start, end)

    async def get_bytes(self, key: str, *, start: int = 0, end: int | None = None) -> bytes:
        data, _ = await _READS.run(self._read_blocking, key, self._segments(key), start, end)
        return data

    async def put_bytes(self, key: str, data: bytes, *, metadata: dict[str, str] | None = None,
                        if_absent: bool = False, if_match: str | None = None, encrypted: bool = False) -> ObjectInfo:
        meta = {**(metadata or {}), **self.encryption_metadata(encrypted)}
        return await self._run_commit(self._put_blocking, key, self._segments(key), data, meta, if_absent, if_match)

    async def update_object(self, key: str, edit: Callable[[bytes], bytes], *,
                            metadata: dict[str, str] | None = None) -> ObjectInfo:
        return await self._run_commit(self._update_blocking, key, self._segments(key), edit, metadata)

    async def _kernel_copy(self, prepare: Callable[..., _Copy], *args: Any, metadata: dict[str, str] | None,
                           progress: ProgressCallback | None) -> ObjectInfo:
        """Copy a source into a staged temp file in parallel parts (checksummed as written), verify it against
        the source's recorded CRC32C, then commit it."""
        job = await self._acquire(prepare, *args)
        committing = False
        try:
            size = job.source.st.st_size
            reporter = Progress(progress, size)

            async def copy_part(part: Part) -> tuple[int, int]:
                crc = await run_uncancelled(lambda: _in_thread(job.copy_range, part.offset, part.length))
                await reporter.advance(part.length)
                return crc, part.length

            parts = plan_parts(size, self.transfer.part_size, max_parts=self.transfer.max_parts,
                               min_part_size=self.transfer.min_part_size)
            crcs = await run_parts(parts, copy_part, max_concurrency=self.transfer.max_concurrency)
            committing = True  # the commit owns job from here on
            return await self._run_commit(self._finish_copy, job, combine_part_crcs(crcs), metadata)
        finally:
            if not committing:
                await self._release(job)

    def _finish_copy(self, job: _Copy, crc: int, metadata: dict[str, str] | None) -> _Committed:
        try:
            with _os_errors(job.staged.key, job.staged.where):
                if os.fstat(job.staged.fd).st_size != job.source.st.st_size:
                    raise IntegrityError(f"the copy of {job.label!r} came out at the wrong size")
            self._verify(job.label, job.expected, crc)
        except BaseException:
            job.release()
            raise
        job.source.release()
        job.staged.crc, job.staged.size = crc, job.source.st.st_size
        return self._commit(job.staged, metadata)

    def _prepare_upload(self, path: str, key: str, segments: Sequence[str]) -> _Copy:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise NoSuchFileError(path, "the local file to upload does not exist") from None
        try:
            st = os.fstat(fd)
            if stat_module.S_ISDIR(st.st_mode):
                raise JobStoreError(f"cannot upload {path!r}: it is a directory, not a file")
            if not stat_module.S_ISREG(st.st_mode):
                raise _NotRegular(path)
        except BaseException:
            os.close(fd)
            raise
        return self._with_destination(_Source(fd, st, {}), None, path, lambda: self._stage(key, segments))

    def _prepare_object_copy(self, key: str, segments: Sequence[str], stage: Callable[[], _Staged]) -> _Copy:
        source = self._open_object(key, segments)
        try:
            expected = self._expected_crc(key, source.metadata)
        except BaseException:
            source.release()
            raise
        return self._with_destination(source, expected, key, stage)

    @staticmethod
    def _with_destination(source: _Source, expected: int | None, label: str, stage: Callable[[], _Staged]) -> _Copy:
        try:
            return _Copy(source, stage(), expected, label)
        except BaseException:
            source.release()
            raise

    async def upload_file(self, path: str | PathLike[str], key: str, *, metadata: dict[str, str] | None = None,
                          encrypted: bool = False, progress: ProgressCallback | None = None) -> ObjectInfo:
        """Store a local file (parts copied in parallel, in the kernel). A source that is not a regular file — a
        character device such as ``/dev/null``, a FIFO — is read to its end as a stream instead."""
        meta = {**(metadata or {}), **self.encryption_metadata(encrypted)}
        try:
            return await self._kernel_copy(self._prepare_upload, os.fspath(path), key, self._segments(key),
                                           metadata=meta, progress=progress)
        except _NotRegular:
            return await self._upload_stream(os.fspath(path), key, metadata, encrypted, progress)

    async def _upload_stream(self, path: str, key: str, metadata: dict[str, str] | None, encrypted: bool,
                             progress: ProgressCallback | None) -> ObjectInfo:
        """Read a source that cannot be copied in parts (a device, a FIFO) to its end into ``key``."""
        reporter = Progress(progress, None)
        async with self.open_writer(key, metadata=metadata, encrypted=encrypted) as writer:
            source = await _in_thread(io.FileIO, path, "r")
            try:
                while chunk := await _in_thread(source.read, STREAM_BUFFER):
                    await writer.write(chunk)
                    await reporter.advance(len(chunk))
            finally:
                await run_uncancelled(functools.partial(_in_thread, source.close))
        info = await self.stat(key)
        if info is None:
            raise NoSuchFileError(key, "the upload vanished right after it was written")
        return info

    async def download_file(self, key: str, path: str | PathLike[str], *,
                            progress: ProgressCallback | None = None) -> ObjectInfo:
        segments = self._segments(key)
        target = os.path.abspath(path)
        info: list[ObjectInfo] = []

        def prepare() -> _Copy:
            job = self._prepare_object_copy(key, segments, lambda: self._stage_local(target))
            st = job.source.st
            info.append(ObjectInfo(key, st.st_size, _etag(st), st.st_mtime, job.source.metadata))
            return job

        await self._kernel_copy(prepare, metadata=None, progress=progress)
        return info[0]

    async def link_file(self, key: str, path: str | PathLike[str], *, executable: bool) -> ObjectInfo | None:
        """Place ``key`` at ``path`` without copying bytes: a reflink (a private copy-on-write copy, where the
        filesystem has them: btrfs, XFS) with ``executable`` applied, else a hard link to the stored file when
        it is not executable (its mode is the stored file's). ``None`` when neither is possible (another
        filesystem, ext4 and an executable file): copy instead. Atomic like every write; unverified (no byte is
        read). A hard-linked file must not be modified: the store never changes a stored file in place (updates
        replace it), so the link keeps the content it was read with."""
        return await _in_thread(self._link_blocking, key, self._segments(key), os.path.abspath(path), executable)

    def _link_blocking(self, key: str, segments: Sequence[str], path: str, executable: bool) -> ObjectInfo | None:
        source = self._open_object(key, segments)
        try:
            if self.require_checksum and self._expected_crc(key, source.metadata) is None:
                raise IntegrityError(f"{key!r} carries no CRC32C: it was not written by aiojobstore")
            staged = self._stage_local(path)
            placed = False
            try:
                d = staged.chain.fd
                with _os_errors(key, path):
                    try:
                        fcntl.ioctl(staged.fd, _FICLONE, source.fd)
                        os.fchmod(staged.fd, (0o777 if executable else 0o666) & ~_UMASK)
                        if self.fsync:
                            os.fsync(staged.fd)
                    except OSError as error:
                        if error.errno not in _NO_REFLINK or executable:
                            if error.errno in _NO_REFLINK:
                                return None
                            raise
                        os.unlink(staged.tmp, dir_fd=d)
                        try:
                            os.link(f"/proc/self/fd/{source.fd}", staged.tmp, dst_dir_fd=d, follow_symlinks=True)
                        except OSError as link_error:
                            if link_error.errno in (errno.EXDEV, errno.EPERM, errno.ENOENT, errno.EMLINK):
                                return None
                            raise
                    os.rename(staged.tmp, staged.name, src_dir_fd=d, dst_dir_fd=d)
                    placed = True
                    with contextlib.suppress(FileNotFoundError):  # left by a rename onto a link of the same file
                        os.unlink(staged.tmp, dir_fd=d)
                    if self.fsync:
                        os.fsync(d)
            finally:
                if not placed:
                    staged.release()
                else:
                    os.close(staged.fd)
                    staged.chain.close()
            st = source.st
            return ObjectInfo(key, st.st_size, _etag(st), st.st_mtime, source.metadata)
        finally:
            source.release()

    async def copy(self, src: str, dst: str, *, metadata: dict[str, str] | None = None) -> ObjectInfo:
        src_segments, dst_segments = self._segments(src), self._segments(dst)
        kept: dict[str, str] = {}

        def prepare() -> _Copy:
            job = self._prepare_object_copy(src, src_segments, lambda: self._stage(dst, dst_segments))
            kept.update(user_metadata(job.source.metadata))
            if META_KEY_SHA256 in job.source.metadata:
                kept[META_KEY_SHA256] = job.source.metadata[META_KEY_SHA256]
            kept.update(metadata or {})
            return job

        return await self._kernel_copy(prepare, metadata=kept, progress=None)

    async def stat(self, key: str) -> ObjectInfo | None:
        return await _READS.run(self._stat_blocking, key, self._segments(key))

    def _delete_blocking(self, keys: Iterable[str]) -> None:
        by_directory: dict[tuple[str, ...], list[str]] = {}
        for key in keys:
            segments = self._segments(key)
            by_directory.setdefault(tuple(segments[:-1]), []).append(segments[-1])
        for directories, names in by_directory.items():
            try:
                chain = self._walk(directories, names[0], create=False)
            except _Blocked:
                continue  # a link in the way: nothing of the store is behind it
            if chain is None:
                continue
            try:
                for name in names:
                    try:
                        st = os.stat(name, dir_fd=chain.fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat_module.S_ISREG(st.st_mode):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(name, dir_fd=chain.fd)
                # remove directories this left empty, up to the root (a concurrent writer recreates its own)
                chain.remove_dirs(only_created=False)
            finally:
                chain.close()

    async def delete(self, key: str) -> None:
        self._segments(key)
        await run_uncancelled(lambda: _WRITES.run(self._delete_blocking, [key]))

    async def delete_prefix(self, prefix: str) -> None:
        def delete_prefix() -> None:
            self._delete_blocking([info.key for info in self._scan(prefix, with_metadata=False)])

        await run_uncancelled(lambda: _WRITES.run(delete_prefix))

    async def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for key in keys:
            self._segments(key)
        for start in range(0, len(keys), 256):
            batch = keys[start : start + 256]
            await run_uncancelled(functools.partial(_in_thread, self._delete_blocking, batch))

    def _scan(self, prefix: str, *, with_metadata: bool = True) -> list[ObjectInfo]:
        """Every object under ``prefix``, found by descending real directories only (links are skipped)."""
        base_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        try:
            chain = self._walk(base_key.split("/") if base_key else [], prefix, create=False)
        except _Blocked:
            return []
        if chain is None:
            return []
        found: list[ObjectInfo] = []
        try:
            top = os.open(".", _DIR_FLAGS, dir_fd=chain.fd)  # our own descriptor: scandir moves its offset
        finally:
            chain.close()
        try:
            self._scan_dir(top, base_key, prefix, with_metadata, found)
        finally:
            os.close(top)
        return found

    def _scan_dir(self, fd: int, dir_key: str, prefix: str, with_metadata: bool, found: list[ObjectInfo]) -> None:
        with os.scandir(fd) as it:
            entries = list(it)
        for entry in entries:
            name = entry.name
            if name.startswith(RESERVED_PREFIX):
                continue
            key = f"{dir_key}/{name}" if dir_key else name
            if entry.is_dir(follow_symlinks=False):
                if key.startswith(prefix) or prefix.startswith(key + "/"):
                    try:
                        sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    except OSError:  # removed meanwhile, or swapped for a link
                        continue
                    try:
                        self._scan_dir(sub, key, prefix, with_metadata, found)
                    finally:
                        os.close(sub)
            elif key.startswith(prefix) and entry.is_file(follow_symlinks=False):
                if not with_metadata:
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat_module.S_ISREG(st.st_mode):
                        found.append(ObjectInfo(key, st.st_size, _etag(st), st.st_mtime))
                    continue
                try:
                    file_fd = os.open(name, _READ_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                try:
                    st = os.fstat(file_fd)
                    if stat_module.S_ISREG(st.st_mode):
                        found.append(ObjectInfo(key, st.st_size, _etag(st), st.st_mtime, _read_metadata(file_fd, key)))
                finally:
                    os.close(file_fd)

    async def list(self, prefix: str = "", *, metadata: bool = True) -> AsyncIterator[ObjectInfo]:
        for info in await _in_thread(lambda: self._scan(prefix, with_metadata=metadata)):
            yield info

    async def presign(self, key: str, expires: int = 3600) -> str:
        return Path(await anyio.to_thread.run_sync(self.local_path, key)).as_uri()

    def local_path(self, key: str) -> str:
        """The file that holds ``key``, for symlinks and kernel copies by callers on the same machine. Raises
        :class:`InvalidKeyError` when a symbolic link stands anywhere on its way under the root (a few metadata
        lookups on cached directories)."""
        segments = self._segments(key)
        try:
            chain = self._walk(segments[:-1], key, create=False)
        except _Blocked as blocked:
            raise self._refused(key, segments[: blocked.depth + 1], blocked.link) from None
        if chain is not None:
            try:
                with contextlib.suppress(FileNotFoundError):
                    if stat_module.S_ISLNK(os.stat(segments[-1], dir_fd=chain.fd, follow_symlinks=False).st_mode):
                        raise self._refused(key, segments, True)
            finally:
                chain.close()
        return os.path.join(self.root, *segments)

    # ----------------------------------------------------------------- debris

    async def reclaim(self, older_than: float = 3600.0) -> ReclaimReport:
        """Remove ``.ajs-tmp-*`` files under the root older than ``older_than`` seconds whose writer is gone (a live
        writer holds an ``flock`` on its temp file), and the empty directories they leave."""
        return await anyio.to_thread.run_sync(self._reclaim_blocking, older_than)

    def _reclaim_blocking(self, older_than: float) -> ReclaimReport:
        report = ReclaimReport()
        root = self._root(create=False)
        if root is None:
            return report
        top = os.open(".", _DIR_FLAGS, dir_fd=root)
        try:
            self._reclaim_dir(top, time.time(), older_than, report, top_level=True)
        finally:
            os.close(top)
        return report

    def _reclaim_dir(self, fd: int, now: float, older_than: float, report: ReclaimReport, *,
                     top_level: bool = False) -> tuple[bool, bool]:
        """Reclaim debris below ``fd``; return whether the directory is now empty and whether debris went."""
        with os.scandir(fd) as it:
            entries = list(it)
        left = len(entries)
        reclaimed = False
        for entry in entries:
            name = entry.name
            if entry.is_dir(follow_symlinks=False):
                if top_level and name == LOCK_DIR:
                    continue
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                try:
                    empty, emptied = self._reclaim_dir(sub, now, older_than, report)
                    age = now - os.fstat(sub).st_mtime
                finally:
                    os.close(sub)
                reclaimed = reclaimed or emptied
                if empty and (emptied or age >= older_than):
                    try:
                        os.rmdir(name, dir_fd=fd)
                    except OSError:
                        continue
                    report.add("empty-directory")
                    left -= 1
            elif (name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False)
                  and self._reclaim_temp(fd, name, now, older_than, report)):
                left -= 1
                reclaimed = True
        return left == 0, reclaimed

    @staticmethod
    def _reclaim_temp(dir_fd: int, name: str, now: float, older_than: float, report: ReclaimReport) -> bool:
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if not stat_module.S_ISREG(st.st_mode) or _temp_age(name, st, now) < older_than:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its writer is alive
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                return False
            report.add("temp-file", st.st_size)
            return True
        finally:
            os.close(fd)


class _LocalWriter:
    """Buffers small writes and hands ~4 MiB blocks to a worker thread (checksummed there); a block handed over
    is always finished before the writer's temp file can be closed, whatever cancellation arrives."""

    def __init__(self, staged: _Staged) -> None:
        self._staged = staged
        self._buffer = bytearray()
        self.bytes_written = 0

    async def write(self, data: Buffer) -> int:
        n = len(data)
        if not n:
            return 0
        if not self._buffer and n >= STREAM_BUFFER:
            await self._write(data)
        else:
            self._buffer += data
            if len(self._buffer) >= STREAM_BUFFER:
                await self.flush()
        self.bytes_written += n
        return n

    async def flush(self) -> None:
        if self._buffer:
            block, self._buffer = self._buffer, bytearray()
            await self._write(block)

    async def _write(self, block: Buffer) -> None:
        await run_uncancelled(lambda: _in_thread(self._staged.write, block))


def from_locator(locator: Locator, *, transfer: TransferConfig | None = None, fsync: bool = True,
                 sse_key: bytes | str | None = None, **rest: Any) -> LocalBackend:
    reject_unknown_options("local (file:)", rest, ["fsync", "sse_key"])
    return LocalBackend(locator.path, transfer=transfer, fsync=fsync, sse_key=sse_key)


__all__ = ["LocalBackend", "atomic_write_bytes", "from_locator"]
