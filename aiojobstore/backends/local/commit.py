"""Writing objects: stage a temp file next to the final name, commit it (metadata, fsync, rename or link under
its condition, directory fsync), and roll a commit back when its caller was cancelled meanwhile."""

from __future__ import annotations

import contextlib
import os
import stat as stat_module
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ...commit import commit_or_roll_back, run_uncancelled
from ...errors import ConcurrentModificationError, JobStoreError
from ...inline import inline_active
from ...streams import Buffer
from ...transfer import crc32c, crc32c_to_b64
from ..base import META_CRC32C, META_KEY_SHA256, ObjectInfo, user_metadata
from .files import NAME_MAX, create_temp, os_errors, temp_name, write_all
from .group import sync_durably
from .metadata import etag, write_metadata
from .paths import Chain
from .reading import Reading
from .threads import HOUSEKEEPING, WRITES, in_thread

T = TypeVar("T")

#: Optimistic attempts of an update (outside the key's lock) before it runs under the lock.
_OPTIMISTIC_UPDATES = 2


@dataclass
class Staged:
    """A temp file being written next to its final name (owned by exactly one party: see ``release``)."""

    chain: Chain
    name: str
    fd: int
    tmp: str
    where: str
    key: str | None
    crc: int = 0
    size: int = 0

    def write(self, data: Buffer) -> None:
        with os_errors(self.key, self.where):
            write_all(self.fd, data)
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
class Committed:
    """What a commit did, so that it can be rolled back (or its kept previous version dropped)."""

    info: ObjectInfo
    chain: Chain
    name: str
    inode: tuple[int, int]
    previous: str | None
    key: str | None


class Commits(Reading):
    """Staging, commits and their roll-backs."""

    def _stage(self, key: str, segments: Sequence[str]) -> Staged:
        """Create the temp file for ``key`` in its directory (made as needed, never through a link)."""
        where = self._where(key)
        with os_errors(key, where):
            for _ in range(3):
                chain = self._walk(segments[:-1], key, create=True)
                assert chain is not None
                try:
                    self._check_name(chain.fd, segments[-1], key)
                    fd, tmp = create_temp(chain.fd)
                except FileNotFoundError:  # the directory was just removed by a concurrent delete: walk again
                    chain.close()
                    continue
                except BaseException:
                    chain.remove_dirs(only_created=True)
                    chain.close()
                    raise
                return Staged(chain, segments[-1], fd, tmp, where, key)
        raise JobStoreError(f"could not create a temporary file for {key!r}: its directory kept being removed")

    @staticmethod
    def _stage_local(path: str) -> Staged:
        """Create a temp file next to a local destination ``path`` (outside the store: links are the user's)."""
        path = os.path.abspath(path)
        directory, name = os.path.split(path)
        with os_errors(None, path):
            if len(os.fsencode(name)) > NAME_MAX:
                raise JobStoreError(f"the file name of {path!r} is longer than {NAME_MAX} bytes")
            os.makedirs(directory, exist_ok=True)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                if os.path.isdir(path):
                    raise JobStoreError(f"cannot write to {path!r}: it is a directory")
                fd, tmp = create_temp(dir_fd)
            except BaseException:
                os.close(dir_fd)
                raise
        return Staged(Chain(dir_fd, owned=True), name, fd, tmp, path, None)

    def _commit(self, staged: Staged, metadata: dict[str, str] | None, if_absent: bool = False,
                if_match: str | None = None) -> Committed:
        """Make a staged temp file the object: its metadata and CRC32C, fsync, then link or rename it into place
        under the condition, and fsync the directory. Owns ``staged``: on an error nothing is left."""
        key, d, name = staged.key, staged.chain.fd, staged.name
        placed: list[str | None] = []  # [previous] once the object is in place
        st: os.stat_result | None = None
        try:
            with os_errors(key, staged.where):
                if metadata is not None:
                    write_metadata(staged.fd, {**metadata, META_CRC32C: crc32c_to_b64(staged.crc)})
                if self.fsync:
                    sync_durably(staged.fd)
                st = os.fstat(staged.fd)
                self._place(staged, if_absent, if_match, placed)
                if self.fsync:
                    sync_durably(d, directory=True)
        except BaseException:
            try:
                if placed:  # the directory fsync failed: undo, the write raises
                    assert st is not None, "an object is placed only after its fstat"
                    self._undo(d, name, (st.st_dev, st.st_ino), placed[0])
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(staged.tmp, dir_fd=d)
                    staged.chain.remove_dirs(only_created=True)
            finally:
                os.close(staged.fd)
                staged.chain.close()
            raise
        os.close(staged.fd)  # after the rename: the flock covered the temp name until it was gone
        info = ObjectInfo(key or staged.where, st.st_size, etag(st), st.st_mtime,
                          {**metadata, META_CRC32C: crc32c_to_b64(staged.crc)} if metadata is not None else {})
        return Committed(info, staged.chain, name, (st.st_dev, st.st_ino), placed[0], key)

    def _place(self, staged: Staged, if_absent: bool, if_match: str | None, placed: list[str | None]) -> None:
        """Link (``if_absent``) or rename the temp file to its name, under its condition; once it is in place,
        append to ``placed`` the temp name of the replaced version kept for a roll-back (or None)."""
        key, d, name = staged.key, staged.chain.fd, staged.name
        if if_absent:
            try:
                os.link(staged.tmp, name, src_dir_fd=d, dst_dir_fd=d, follow_symlinks=False)
            except FileExistsError:
                self._check_name(d, name, key or name)
                raise ConcurrentModificationError(f"{key!r} already exists") from None
            placed.append(None)
            with contextlib.suppress(OSError):  # else left as debris for reclaim
                os.unlink(staged.tmp, dir_fd=d)
            return
        with self._locked(key) if if_match is not None and key is not None else contextlib.nullcontext():
            if if_match is not None:
                try:
                    current = os.stat(name, dir_fd=d, follow_symlinks=False)
                except FileNotFoundError:
                    raise ConcurrentModificationError(f"{key!r} was deleted since it was read") from None
                if not stat_module.S_ISREG(current.st_mode) or etag(current) != if_match:
                    raise ConcurrentModificationError(f"{key!r} changed since it was read")
            previous = None if inline_active() else self._keep_previous(d, name)
            try:
                os.rename(staged.tmp, name, src_dir_fd=d, dst_dir_fd=d)
            except BaseException:
                if previous is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(previous, dir_fd=d)
                raise
            placed.append(previous)

    @staticmethod
    def _keep_previous(dir_fd: int, name: str) -> str | None:
        """Hard-link the version about to be replaced under a temp name, for a roll-back; None if there is none.
        (Not done inline, under the blocking facade: nothing can cancel a caller that is not on an event loop.)"""
        previous = temp_name("old")
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

    def _roll_back(self, committed: Committed) -> None:
        """Undo a commit whose caller was cancelled meanwhile (only if the object is still the one it wrote)."""
        try:
            with self._locked(committed.key) if committed.key is not None else contextlib.nullcontext():
                d = committed.chain.fd
                ours = self._undo(d, committed.name, committed.inode, committed.previous)
                if ours and committed.previous is None:
                    committed.chain.remove_dirs(only_created=True)
                if self.fsync:
                    sync_durably(d, directory=True)
        finally:
            committed.chain.close()

    @staticmethod
    def _drop_previous(committed: Committed) -> None:
        try:
            if committed.previous is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(committed.previous, dir_fd=committed.chain.fd)
        finally:
            committed.chain.close()

    def _put_blocking(self, key: str, segments: Sequence[str], data: Buffer, metadata: dict[str, str],
                      if_absent: bool, if_match: str | None) -> Committed:
        staged = self._stage(key, segments)
        try:
            staged.write(data)
        except BaseException:
            staged.release()
            raise
        return self._commit(staged, metadata, if_absent, if_match)

    def _update_blocking(self, key: str, segments: Sequence[str], edit: Callable[[bytes], bytes],
                         metadata: dict[str, str] | None) -> Committed:
        """Read, edit and replace ``key`` as one compare-and-swap.

        Optimistically first: the read, the edit, the temp file and its fsync happen outside the key's lock, which
        is held only to check that the version read is still the one in place and to rename over it, so concurrent
        durable updates do not wait for each other's fsyncs. When another writer replaced the object in between,
        ``edit`` runs again on the new version; after ``_OPTIMISTIC_UPDATES`` such losses the whole update runs
        under the lock, which always succeeds."""
        for _ in range(_OPTIMISTIC_UPDATES):
            data, info = self._read_blocking(key, segments)
            edited = edit(data)  # outside the try: an error of edit's own propagates, whatever its class
            try:
                return self._put_blocking(key, segments, edited, self._kept_metadata(info, metadata), False,
                                          info.etag)
            except ConcurrentModificationError:
                continue  # replaced (or deleted: the next read says so) since it was read
        with self._locked(key):
            data, info = self._read_blocking(key, segments)
            return self._put_blocking(key, segments, edit(data), self._kept_metadata(info, metadata), False, None)

    @staticmethod
    def _kept_metadata(info: ObjectInfo, metadata: dict[str, str] | None) -> dict[str, str]:
        """The metadata an updated object keeps: its user metadata (or ``metadata``) and its encryption."""
        keep = user_metadata(info.metadata) if metadata is None else user_metadata(metadata)
        if META_KEY_SHA256 in info.metadata:
            keep[META_KEY_SHA256] = info.metadata[META_KEY_SHA256]
        return keep

    async def _acquire(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func`` (which opens descriptors) in a worker thread; whatever cancellation arrives, its result is
        either returned to the caller, who then owns it, or released."""
        return await commit_or_roll_back(lambda: in_thread(func, *args),
                                         lambda resource: in_thread(resource.release))  # type: ignore[attr-defined]

    @staticmethod
    async def _release(release: Callable[[], None]) -> None:
        """Release what a worker thread opened (``release`` of it), to completion whatever cancellation arrives."""
        await run_uncancelled(lambda: in_thread(release))

    async def _run_commit(self, func: Callable[..., Committed], *args: Any) -> ObjectInfo:
        """Run a blocking commit to completion; roll it back if ``task.cancel()`` hit the caller meanwhile."""
        if self.fsync:  # fsyncs overlap best on many threads
            def commit() -> Awaitable[Committed]:
                return in_thread(func, *args)
        else:
            def commit() -> Awaitable[Committed]:
                return WRITES.run(func, *args)
        committed = await commit_or_roll_back(commit, lambda done: in_thread(self._roll_back, done))
        if committed.previous is None:
            committed.chain.close()  # directory descriptors only: no I/O
        else:
            HOUSEKEEPING.submit(self._drop_previous, committed)
        return committed.info
