"""Listing and deleting: descending real directories only, hiding the store's reserved entries."""

from __future__ import annotations

import contextlib
import functools
import os
import stat as stat_module
from collections.abc import AsyncIterator, Iterable

from ...commit import run_uncancelled
from ..base import ObjectInfo
from .files import DIR_FLAGS, READ_FLAGS, RESERVED_PREFIX
from .locks import Locking
from .metadata import etag, read_metadata
from .paths import Blocked
from .threads import WRITES, in_thread


class Listing(Locking):
    """``list``, ``delete`` and its variants."""

    def _delete_blocking(self, keys: Iterable[str]) -> None:
        by_directory: dict[tuple[str, ...], list[str]] = {}
        for key in keys:
            segments = self._segments(key)
            by_directory.setdefault(tuple(segments[:-1]), []).append(segments[-1])
        for directories, names in by_directory.items():
            try:
                chain = self._walk(directories, names[0], create=False)
            except Blocked:
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
        await run_uncancelled(lambda: WRITES.run(self._delete_blocking, [key]))

    async def delete_prefix(self, prefix: str) -> None:
        def delete_prefix() -> None:
            self._delete_blocking([info.key for info in self._scan(prefix, with_metadata=False)])

        await run_uncancelled(lambda: WRITES.run(delete_prefix))

    async def delete_many(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for key in keys:
            self._segments(key)
        for start in range(0, len(keys), 256):
            batch = keys[start : start + 256]
            await run_uncancelled(functools.partial(in_thread, self._delete_blocking, batch))

    def _scan(self, prefix: str, *, with_metadata: bool = True) -> list[ObjectInfo]:
        """Every object under ``prefix``, found by descending real directories only (links are skipped)."""
        base_key = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        try:
            chain = self._walk(base_key.split("/") if base_key else [], prefix, create=False)
        except Blocked:
            return []
        if chain is None:
            return []
        found: list[ObjectInfo] = []
        try:
            top = os.open(".", DIR_FLAGS, dir_fd=chain.fd)  # our own descriptor: scandir moves its offset
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
                        sub = os.open(name, DIR_FLAGS, dir_fd=fd)
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
                        found.append(ObjectInfo(key, st.st_size, etag(st), st.st_mtime))
                    continue
                try:
                    file_fd = os.open(name, READ_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                try:
                    st = os.fstat(file_fd)
                    if stat_module.S_ISREG(st.st_mode):
                        found.append(ObjectInfo(key, st.st_size, etag(st), st.st_mtime, read_metadata(file_fd, key)))
                finally:
                    os.close(file_fd)

    async def list(self, prefix: str = "", *, metadata: bool = True) -> AsyncIterator[ObjectInfo]:
        for info in await in_thread(lambda: self._scan(prefix, with_metadata=metadata)):
            yield info
