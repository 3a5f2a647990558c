"""Debris: temp files left by killed writers (no flock held) and the empty directories they kept alive."""

from __future__ import annotations

import fcntl
import os
import stat as stat_module
import time

import anyio

from ..base import ReclaimReport
from .files import DIR_FLAGS, READ_FLAGS, TMP_PREFIX, temp_age
from .locks import LOCK_DIR
from .paths import PathsBase


class Reclaiming(PathsBase):
    """``reclaim``."""

    async def reclaim(self, older_than: float = 3600.0) -> ReclaimReport:
        """Remove ``.ajs-tmp-*`` files under the root older than ``older_than`` seconds whose writer is gone (a live
        writer holds an ``flock`` on its temp file), and the empty directories they leave."""
        return await anyio.to_thread.run_sync(self._reclaim_blocking, older_than)

    def _reclaim_blocking(self, older_than: float) -> ReclaimReport:
        report = ReclaimReport()
        root = self._root(create=False)
        if root is None:
            return report
        top = os.open(".", DIR_FLAGS, dir_fd=root)
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
                    sub = os.open(name, DIR_FLAGS, dir_fd=fd)
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
            fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if not stat_module.S_ISREG(st.st_mode) or temp_age(name, st, now) < older_than:
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
