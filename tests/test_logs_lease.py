"""Logs at least once: a reader SIGKILLed inside its callback does not lose the log (file: store, real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import anyio
import pytest

from aiojobstore import open_store

READER = textwrap.dedent("""
    import asyncio, pathlib, sys
    import aiojobstore

    async def main(locator, marker):
        async with aiojobstore.open_store(locator) as store:
            await store.resume()

            async def stuck(data):
                pathlib.Path(marker).write_bytes(data)
                await asyncio.sleep(3600)  # killed here, inside the callback

            await store.read_logs(stuck, lease=float(sys.argv[3]))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")


def _killed_reader(locator: str, marker: str, lease: float) -> None:
    child = subprocess.Popen([sys.executable, "-c", READER, locator, marker, str(lease)])
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(marker):
            assert child.poll() is None, "the reader died before its callback ran"
            assert time.monotonic() < deadline, "the reader never reached its callback"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


@pytest.mark.parametrize("lease", [1.0])
async def test_log_of_a_reader_killed_in_its_callback_is_delivered_again(tmp_path, lease):
    locator = f"file:{tmp_path}/store"
    async with open_store(locator) as store:
        await store.initialize()
        await store.write_logs("precious")
        _killed_reader(locator, str(tmp_path / "marker"), lease)
        assert (tmp_path / "marker").read_bytes() == b"precious"
        seen: list[bytes] = []
        # the dead reader's lease has not run out yet: nobody may take the log over
        assert await store.read_logs(seen.append) == 0
        await anyio.sleep(lease + 0.2)
        assert await store.read_logs(seen.append) == 1 and seen == [b"precious"]
        assert await store.read_logs(seen.append) == 0  # and never again once delivered
        assert (await store.summary())["unread_logs"] == 0


async def test_log_whose_callback_fails_stays_unread_and_unclaimed(tmp_path):
    async with open_store(f"file:{tmp_path}/store") as store:
        await store.initialize()
        await store.write_logs("retry me")

        def failing(_data: bytes) -> None:
            raise RuntimeError("callback failed")

        with pytest.raises(RuntimeError, match="callback failed"):
            await store.read_logs(failing)
        assert [i.key async for i in store.backend.list("logs/claims/")] == []
        seen: list[bytes] = []
        assert await store.read_logs(seen.append) == 1 and seen == [b"retry me"]


async def test_a_long_callback_keeps_its_claim(tmp_path):
    """The lease is renewed while the callback runs, so a second reader skips the log the whole time."""
    async with open_store(f"file:{tmp_path}/store") as store, open_store(f"file:{tmp_path}/store") as other:
        await store.initialize()
        await other.resume()
        await store.write_logs("slow")
        second: list[int] = []

        async def slow(_data: bytes) -> None:
            for _ in range(4):  # 4 s in all, longer than the lease: only its renewals (every 1 s) keep the claim
                await anyio.sleep(1.0)
                second.append(await other.read_logs(lambda _d: None))

        assert await store.read_logs(slow, lease=3.0) == 1
        assert second == [0, 0, 0, 0]
