"""Reading objects: open one (never through a link), check what its metadata demands, read and verify it."""

from __future__ import annotations

import errno
import os
import stat as stat_module
from collections.abc import Sequence
from dataclasses import dataclass

from ...errors import IntegrityError, NoSuchFileError
from ...transfer import crc32c, crc32c_from_b64
from ..base import META_CRC32C, ObjectInfo
from .files import READ_FLAGS
from .locks import Locking
from .metadata import etag, read_metadata, verify
from .paths import Blocked


@dataclass
class Source:
    """An object (or local file) open for reading."""

    fd: int
    st: os.stat_result
    metadata: dict[str, str]

    def read(self, n: int, offset: int, crc: int | None) -> tuple[bytes, int | None]:
        data = os.pread(self.fd, n, offset)
        return data, None if crc is None else crc32c(data, crc)

    def release(self) -> None:
        os.close(self.fd)


class Reading(Locking):
    """Blocking reads of objects."""

    def _open_object(self, key: str, segments: Sequence[str]) -> Source:
        """Open ``key`` for reading (never through a link): raises NoSuchFileError when it is not a real file."""
        try:
            chain = self._walk(segments[:-1], key, create=False)
        except Blocked:
            chain = None
        if chain is None:
            raise NoSuchFileError(key)
        try:
            fd = os.open(segments[-1], READ_FLAGS, dir_fd=chain.fd)
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
            metadata = read_metadata(fd, key)
        except BaseException:
            os.close(fd)
            raise
        return Source(fd, st, metadata)

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
            verify(key, expected, crc32c(data))
        return data, ObjectInfo(key, st.st_size, etag(st), st.st_mtime, source.metadata)

    def _stat_blocking(self, key: str, segments: Sequence[str]) -> ObjectInfo | None:
        try:
            source = self._open_object(key, segments)
        except NoSuchFileError:
            return None
        source.release()
        st = source.st
        return ObjectInfo(key, st.st_size, etag(st), st.st_mtime, source.metadata)
