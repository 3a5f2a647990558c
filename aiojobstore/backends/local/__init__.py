"""Local-disk backend: one file per object under a root directory.

The package by concern: ``paths`` (the root and the symlink-safe walk of keys), ``locks`` (striped locks of
conditional replaces), ``metadata`` (the extended attribute with the CRC32C), ``reading``, ``commit`` (staging,
commit, roll-back), ``streams``, ``copies`` (kernel copies in parts), ``links`` (link reads), ``listing`` (lists and
deletes), ``reclaim`` (debris), ``group`` (group commit of fsyncs), ``threads`` (the small-operation runners) and
``files`` (blocking helpers).

**Nothing under the root is followed out of it.** Every operation resolves a key through one routine
(``paths.PathsBase._walk``): from a directory descriptor of the root it opens each segment with
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
every directory a write creates is fsynced into its parent. Concurrent writers of one process share these
fsyncs (group commit, ``group``): one directory fsync covers every rename into it made before it started, and
file fsyncs run concurrently, each in its writer's thread; a write still returns only once the fsyncs covering its
own file and rename have completed.

**Integrity.** Whole reads (``get_object``/``get_bytes`` without a range, ``open_reader`` read to the end,
``download_file``, ``copy``) verify the recorded CRC32C and raise :class:`IntegrityError` naming the key on a
mismatch. A ranged read, or a stream read stopped before its end, is not verified. With ``require_checksum`` an
object without a recorded checksum is refused. The store therefore needs a filesystem with user extended
attributes (ext4, xfs, btrfs, tmpfs on Linux >= 6.6).

**Debris.** A killed writer leaves at most ``.ajs-tmp-*`` files (hidden from listings); :meth:`reclaim` removes
those older than a grace period whose writer is gone (no flock), and the empty directories they kept alive.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ...transfer import TransferConfig
from ..base import ObjectInfo, reject_unknown_options
from .copies import Copies
from .files import TMP_PREFIX, atomic_write_bytes
from .links import Links
from .listing import Listing
from .metadata import XATTR_NAME
from .reclaim import Reclaiming
from .threads import HOUSEKEEPING, READS

if TYPE_CHECKING:
    from ...locator import Locator


class LocalBackend(Copies, Links, Listing, Reclaiming):
    """Objects as files under ``root``; see the module docstring for the guarantees."""

    scheme = "file"
    encrypts_at_rest = False
    runs_inline = True

    def describe(self) -> str:
        return f"file:{self.root}"

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
        await HOUSEKEEPING.run(lambda: None)
        with self._root_lock:
            self._drop_root_fds()

    async def get_object(self, key: str, *, start: int = 0, end: int | None = None) -> tuple[bytes, ObjectInfo]:
        return await READS.run(self._read_blocking, key, self._segments(key), start, end)

    async def get_bytes(self, key: str, *, start: int = 0, end: int | None = None) -> bytes:
        data, _ = await READS.run(self._read_blocking, key, self._segments(key), start, end)
        return data

    async def put_bytes(self, key: str, data: bytes, *, metadata: dict[str, str] | None = None,
                        if_absent: bool = False, if_match: str | None = None, encrypted: bool = False) -> ObjectInfo:
        meta = {**(metadata or {}), **self.encryption_metadata(encrypted)}
        return await self._run_commit(self._put_blocking, key, self._segments(key), data, meta, if_absent, if_match)

    async def update_object(self, key: str, edit: Callable[[bytes], bytes], *,
                            metadata: dict[str, str] | None = None) -> ObjectInfo:
        """As :meth:`Backend.update_object`, but it never raises ``ConcurrentModificationError``: when another
        writer (thread or process) replaced the object in between, ``edit`` runs again on the new version, and
        after two such losses the update runs under the key's lock. ``edit`` may therefore run more than once."""
        return await self._run_commit(self._update_blocking, key, self._segments(key), edit, metadata)

    async def stat(self, key: str) -> ObjectInfo | None:
        return await READS.run(self._stat_blocking, key, self._segments(key))

    async def presign(self, key: str, expires: int = 3600) -> str:
        return Path(await anyio.to_thread.run_sync(self.local_path, key)).as_uri()


def from_locator(locator: Locator, *, transfer: TransferConfig | None = None, fsync: bool = True,
                 sse_key: bytes | str | None = None, **rest: Any) -> LocalBackend:
    reject_unknown_options("local (file:)", rest, ["fsync", "sse_key"])
    return LocalBackend(locator.path, transfer=transfer, fsync=fsync, sse_key=sse_key)


__all__ = ["TMP_PREFIX", "XATTR_NAME", "LocalBackend", "atomic_write_bytes", "from_locator"]
