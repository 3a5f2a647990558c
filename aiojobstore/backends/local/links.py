"""Link reads: a stored object placed at a local path without copying its bytes (reflink, else hard link)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Sequence
from os import PathLike

from ...errors import IntegrityError
from ..base import ObjectInfo
from .commit import Commits
from .files import os_errors
from .group import sync_durably
from .metadata import etag
from .threads import in_thread

#: ``ioctl(dst, FICLONE, src)``: share the source's extents, copy-on-write (btrfs, XFS; not ext4, not tmpfs).
_FICLONE = 0x40049409
_NO_REFLINK = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EBADF})
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class Links(Commits):
    """``link_file``."""

    async def link_file(self, key: str, path: str | PathLike[str], *, executable: bool) -> ObjectInfo | None:
        """Place ``key`` at ``path`` without copying bytes: a reflink (a private copy-on-write copy, where the
        filesystem has them: btrfs, XFS) with ``executable`` applied, else a hard link to the stored file when
        it is not executable (its mode is the stored file's). ``None`` when neither is possible (another
        filesystem, ext4 and an executable file): copy instead. Atomic like every write; unverified (no byte is
        read). A hard-linked file must not be modified: the store never changes a stored file in place (updates
        replace it), so the link keeps the content it was read with."""
        return await in_thread(self._link_blocking, key, self._segments(key), os.path.abspath(path), executable)

    def _link_blocking(self, key: str, segments: Sequence[str], path: str, executable: bool) -> ObjectInfo | None:
        source = self._open_object(key, segments)
        try:
            if self.require_checksum and self._expected_crc(key, source.metadata) is None:
                raise IntegrityError(f"{key!r} carries no CRC32C: it was not written by aiojobstore")
            staged = self._stage_local(path)
            placed = False
            try:
                d = staged.chain.fd
                with os_errors(key, path):
                    try:
                        fcntl.ioctl(staged.fd, _FICLONE, source.fd)
                        os.fchmod(staged.fd, (0o777 if executable else 0o666) & ~_UMASK)
                        if self.fsync:
                            sync_durably(staged.fd)
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
                        sync_durably(d, directory=True)
            finally:
                if not placed:
                    staged.release()
                else:
                    os.close(staged.fd)
                    staged.chain.close()
            st = source.st
            return ObjectInfo(key, st.st_size, etag(st), st.st_mtime, source.metadata)
        finally:
            source.release()
