"""Group commit on file:: concurrent durable writes share their fsyncs, and no writer returns before an fsync that
covers its own file and its own rename has completed."""

from __future__ import annotations

import os
import stat
import threading
import time

import anyio
import pytest

from aiojobstore.backends.local import LocalBackend

WRITERS = 32


class FsyncRecorder:
    """Wraps os.fsync: records each completed fsync (files by inode; directories with the (name, inode) entries
    they held when the fsync started). The first directory fsync waits until every writer has staged its write
    (written its temp file), so that the others queue behind it."""

    def __init__(self, real, directory: str, expected: int) -> None:
        self.real, self.directory, self.expected = real, directory, expected
        self.lock = threading.Lock()
        self.files: set[tuple[int, int]] = set()
        self.covered: set[tuple[str, int]] = set()
        self.directory_fsyncs = 0
        self.first = True

    def _entries(self) -> set[tuple[str, int]]:
        with os.scandir(self.directory) as it:
            return {(entry.name, entry.inode()) for entry in it if not entry.name.startswith(".ajs-")}

    def _staged(self) -> int:
        """Writers that have staged (a temp file) or placed (an object) their write."""
        with os.scandir(self.directory) as it:
            return sum(1 for entry in it if not entry.name.startswith(".ajs-tmp-old-"))

    def __call__(self, fd: int) -> None:
        st = os.fstat(fd)
        is_dir = stat.S_ISDIR(st.st_mode)
        target = is_dir and os.path.samestat(st, os.stat(self.directory))
        if target:
            with self.lock:
                first, self.first = self.first, False
            deadline = time.monotonic() + 60
            while first and self._staged() < self.expected and time.monotonic() < deadline:
                time.sleep(0.01)
            entries = self._entries()  # what this fsync covers: the entries present when it starts
        self.real(fd)
        with self.lock:
            if target:
                self.directory_fsyncs += 1
                self.covered |= entries
            elif not is_dir:
                self.files.add((st.st_dev, st.st_ino))


@pytest.mark.parametrize("writers", [WRITERS])
def test_concurrent_durable_writes_share_directory_fsyncs_and_return_only_when_covered(tmp_path, monkeypatch,
                                                                                       writers):
    root = tmp_path / "root"
    backend = LocalBackend(root)
    directory = root / "jobs"
    recorder = FsyncRecorder(os.fsync, str(directory), writers)
    unsynced: list[str] = []

    async def main() -> None:
        await backend.put_bytes("jobs/seed", b"seed")  # makes the directory before the recorder watches it
        await anyio.to_thread.run_sync(os.unlink, directory / "seed")
        monkeypatch.setattr(os, "fsync", recorder)

        async def write(n: int) -> None:
            await backend.put_bytes(f"jobs/j{n}", b"job %d" % n)
            st = os.stat(directory / f"j{n}")
            with recorder.lock:  # checked the moment the call returned
                if (st.st_dev, st.st_ino) not in recorder.files or (f"j{n}", st.st_ino) not in recorder.covered:
                    unsynced.append(f"j{n}")

        async with anyio.create_task_group() as group:
            for n in range(writers):
                group.start_soon(write, n)
        monkeypatch.undo()
        await backend.close()

    anyio.run(main)
    assert not unsynced, f"returned before its own file and rename were fsynced: {unsynced}"
    assert len(recorder.files) == writers
    assert recorder.directory_fsyncs < writers, "every write fsynced the directory on its own"
    assert recorder.directory_fsyncs <= writers // 4


def test_a_write_whose_fsync_fails_raises_and_the_others_succeed(tmp_path, monkeypatch):
    """Each request of a batch carries its own outcome: an error of one file's fsync reaches that writer only."""
    import errno

    root = tmp_path / "root"
    backend = LocalBackend(root)
    real = os.fsync

    def failing(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode) and b'"bad"' in os.getxattr(fd, "user.aiojobstore.meta"):
            raise OSError(errno.EIO, "injected")
        real(fd)

    outcomes: dict[int, str] = {}

    async def main() -> None:
        monkeypatch.setattr(os, "fsync", failing)

        async def write(n: int) -> None:
            try:
                await backend.put_bytes(f"d/o{n}", b"x", metadata={"kind": "bad" if n == 3 else "good"})
                outcomes[n] = "ok"
            except OSError as error:
                outcomes[n] = error.strerror or ""

        async with anyio.create_task_group() as group:
            for n in range(8):
                group.start_soon(write, n)
        monkeypatch.undo()
        await backend.close()

    anyio.run(main)
    assert outcomes[3] == "injected"
    assert all(outcomes[n] == "ok" for n in range(8) if n != 3)
    assert not (root / "d" / "o3").exists()
    assert all((root / "d" / f"o{n}").read_bytes() == b"x" for n in range(8) if n != 3)
