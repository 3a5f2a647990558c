"""commit_or_roll_back: a commit in flight is never torn, under every way of cancelling the caller."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from aiojobstore.commit import commit_or_roll_back, run_uncancelled
from aiojobstore.inline import run_inline


class _Commit:
    """A commit that waits for ``release`` and records whether it finished and whether it was rolled back."""

    def __init__(self, *, fail: bool = False) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.fail = fail
        self.finished = False
        self.rolled_back: list[str] = []

    async def commit(self) -> str:
        self.started.set()
        await self.release.wait()
        if self.fail:
            raise OSError("the commit failed")
        self.finished = True
        return "v2"

    async def roll_back(self, result: str) -> None:
        self.rolled_back.append(result)


async def test_task_cancel_during_commit_finishes_it_then_rolls_back():
    c = _Commit()
    task = asyncio.ensure_future(commit_or_roll_back(c.commit, c.roll_back))
    await c.started.wait()
    task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done()  # the commit still runs: the cancellation waits for it
    c.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert c.finished and c.rolled_back == ["v2"]


async def test_asyncio_timeout_during_commit_rolls_back_and_raises_timeout():
    c = _Commit()

    async def release_later() -> None:
        await c.started.wait()
        await asyncio.sleep(0.05)
        c.release.set()

    releaser = asyncio.ensure_future(release_later())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await commit_or_roll_back(c.commit, c.roll_back)
    await releaser
    assert c.finished and c.rolled_back == ["v2"]


async def test_anyio_scope_lets_the_commit_return_and_cancels_at_the_next_checkpoint():
    c = _Commit()
    results: list[str] = []

    async def release_later() -> None:
        await c.started.wait()
        await asyncio.sleep(0.05)
        c.release.set()

    releaser = asyncio.ensure_future(release_later())
    with anyio.move_on_after(0.01) as scope:
        results.append(await commit_or_roll_back(c.commit, c.roll_back))
        await anyio.sleep(1)  # the next checkpoint: cancelled here
        results.append("not reached")
    await releaser
    assert scope.cancelled_caught and results == ["v2"] and c.rolled_back == []


async def test_a_commit_that_fails_after_a_cancellation_raises_the_cancellation():
    c = _Commit(fail=True)

    async def release_later() -> None:
        await c.started.wait()
        await asyncio.sleep(0.05)
        c.release.set()

    releaser = asyncio.ensure_future(release_later())
    with pytest.raises(TimeoutError):  # asyncio.timeout still recognises its own cancellation
        async with asyncio.timeout(0.01):
            await commit_or_roll_back(c.commit, c.roll_back)
    await releaser
    assert not c.finished and c.rolled_back == []


async def test_a_failing_commit_raises_its_error_and_rolls_nothing_back():
    c = _Commit(fail=True)
    c.release.set()
    with pytest.raises(OSError, match="the commit failed"):
        await commit_or_roll_back(c.commit, c.roll_back)
    assert c.rolled_back == []


async def test_run_uncancelled_finishes_its_work_before_the_cancellation():
    done: list[bool] = []
    gate = asyncio.Event()

    async def clean_up() -> None:
        await gate.wait()
        done.append(True)

    task = asyncio.ensure_future(run_uncancelled(clean_up))
    await asyncio.sleep(0.01)
    task.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert done == [True]


def test_inline_mode_runs_the_commit_directly():
    async def commit() -> str:
        return "inline"

    async def roll_back(_result: str) -> None:
        raise AssertionError("no roll-back inline")

    assert run_inline(lambda: commit_or_roll_back(commit, roll_back)) == "inline"
