"""Blocking file helpers of the local backend: names and creation of temp files, whole writes, kernel copies,
and the translation of a full device or an over-long name into the error hierarchy."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import time
from collections.abc import Iterator
from os import PathLike

from ...errors import InvalidKeyError, JobStoreError, StorageFullError
from ...streams import Buffer
from ...transfer import crc32c, unlink_quietly

RESERVED_PREFIX = ".ajs-"
TMP_PREFIX = ".ajs-tmp-"
STREAM_BUFFER = 4 << 20
NAME_MAX = 255

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted as an object must not hang the reader (it has no effect on regular files)
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TEMP_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: ``.ajs-tmp-<kind>-<creation time, ns, hex>-<random>``: the time tells reclaim how old a temp file is even when
#: it is a hard link to an old object (the previous version kept for a roll-back).
_TEMP_NAME = re.compile(r"\.ajs-tmp-(?:new|old)-([0-9a-f]{1,16})-[0-9a-f]{12}")
_FULL = (errno.ENOSPC, errno.EDQUOT)


def temp_name(kind: str = "new") -> str:
    return f"{TMP_PREFIX}{kind}-{time.time_ns():x}-{secrets.token_hex(6)}"


def temp_age(name: str, st: os.stat_result, now: float) -> float:
    """Seconds since a temp file was created or last written, whichever is later."""
    match = _TEMP_NAME.fullmatch(name)
    born = int(match.group(1), 16) / 1e9 if match else 0.0
    return now - max(born, st.st_mtime)


def create_temp(dir_fd: int) -> tuple[int, str]:
    """A new temp file in ``dir_fd``, flocked so that :meth:`LocalBackend.reclaim` knows its writer is alive."""
    name = temp_name()
    fd = os.open(name, _TEMP_FLAGS, 0o644, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise
    return fd, name


def write_all(fd: int, data: Buffer) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> int:
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
def os_errors(key: str | None, where: str) -> Iterator[None]:
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
    tmp = os.path.join(directory, temp_name())
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
