"""An object's metadata (with the CRC32C of its bytes) in one extended attribute of its file, and its ETag."""

from __future__ import annotations

import errno
import json
import os

from ...errors import IntegrityError, JobStoreError
from ...transfer import crc32c_to_b64

XATTR_NAME = "user.aiojobstore.meta"


def etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def read_metadata(fd: int, key: str) -> dict[str, str]:
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


def write_metadata(fd: int, metadata: dict[str, str]) -> None:
    try:
        os.setxattr(fd, XATTR_NAME, json.dumps(metadata, separators=(",", ":")).encode())
    except OSError as error:
        if error.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise JobStoreError(
                "this filesystem does not support user extended attributes, which the local backend needs for "
                "object metadata and checksums; put the store on ext4, xfs, btrfs or tmpfs (Linux >= 6.6)"
            ) from error
        raise


def verify(key: str, expected: int | None, crc: int) -> None:
    """Raise :class:`IntegrityError` when the CRC32C ``crc`` of what was read is not the one recorded."""
    if expected is not None and crc != expected:
        raise IntegrityError(f"{key!r} is damaged: its bytes do not match the CRC32C recorded when it was written "
                             f"({crc32c_to_b64(crc)} read, {crc32c_to_b64(expected)} recorded); restore it from "
                             "a backup or delete it")
