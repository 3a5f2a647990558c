"""The threads that run the local backend's blocking work: batched runners for small operations (job loads,
stats, deletes, commits without fsync) and ``to_thread`` for the rest."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from ...inline import inline_active, to_thread

log = logging.getLogger("aiojobstore.local")

T = TypeVar("T")


class SmallOpRunner:
    """Runs small blocking filesystem operations (a stat, a read of a job, an unlink) on a few dedicated threads
    that each take a batch of queued operations per wake-up, so that 64 concurrent job loads cost a handful of
    thread hand-offs instead of 64. Restarted after ``fork``.

    A cancelled caller returns at once and the result is dropped: operations run here must own what they open
    (writes go through :func:`commit_or_roll_back`, whose commit task is never cancelled, so none is dropped).
    ``submit`` queues work nobody waits for; ``run`` of a no-op on a one-thread runner waits for all of it."""

    def __init__(self, name: str, threads: int, *, batch: int) -> None:
        self._name = name
        self._batch = batch
        self._threads = threads
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._ready = threading.Condition()
        self._pid = -1

    def _start(self) -> None:
        self._queue.clear()
        self._ready = threading.Condition()
        for n in range(self._threads):
            threading.Thread(target=self._work, name=f"aiojobstore-{self._name}-{n}", daemon=True).start()
        self._pid = os.getpid()

    def _put(self, item: tuple[Any, ...]) -> None:
        if self._pid != os.getpid():
            self._start()
        with self._ready:
            self._queue.append(item)
            self._ready.notify()

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        if inline_active():
            return func(*args)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put((loop, future, func, args))
        return await future

    def submit(self, func: Callable[..., Any], *args: Any) -> None:
        self._put((None, None, func, args))

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                batch = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
                if self._queue:
                    self._ready.notify()
            done: dict[Any, list[tuple[Any, bool, Any]]] = {}
            for loop, future, func, args in batch:
                try:
                    outcome = (future, True, func(*args))
                except BaseException as error:
                    if loop is None:
                        log.warning("background clean-up failed: %r", error)
                        continue
                    outcome = (future, False, error)
                if loop is not None:
                    done.setdefault(loop, []).append(outcome)
            for loop, outcomes in done.items():
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                    loop.call_soon_threadsafe(_deliver, outcomes)


def _deliver(outcomes: list[tuple[Any, bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


# One reader thread: each extra thread waking for a few microseconds of work contends for the GIL with the event
# loop (measured, 64 concurrent job loads: 1 thread ~37k/s, 2 threads ~30k/s). Writers wait on the journal, so
# several of them overlap.
READS = SmallOpRunner("read", 1, batch=64)
WRITES = SmallOpRunner("write", 2, batch=8)
#: Drops the previous versions kept for roll-backs once their commits returned (one thread: FIFO).
HOUSEKEEPING = SmallOpRunner("housekeeping", 1, batch=64)


async def in_thread(func: Callable[..., T], *args: Any) -> T:
    return await to_thread(func, *args)
