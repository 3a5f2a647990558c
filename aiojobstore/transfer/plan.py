"""Planning parts (:func:`plan_parts`, :func:`byte_ranges`) and running them in a sliding window
(:class:`PartWindow`, :func:`run_parts`)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import anyio

from .config import DEFAULT_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, MiB

T = TypeVar("T")


@dataclass(frozen=True)
class Part:
    """One part of a transfer: 1-based ``number``, byte ``offset`` and ``length``."""

    number: int
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def choose_part_size(size: int, part_size: int, *, max_parts: int = MAX_PARTS,
                     min_part_size: int = MIN_PART_SIZE) -> int:
    """The part size to use for ``size`` bytes: ``part_size``, at least ``min_part_size``, grown (to a whole
    MiB) until ``size`` fits in ``max_parts`` parts."""
    chosen = max(part_size, min_part_size)
    if size > chosen * max_parts:
        chosen = math.ceil(size / max_parts / MiB) * MiB
    return chosen


def plan_parts(size: int, part_size: int = DEFAULT_PART_SIZE, *, max_parts: int = MAX_PARTS,
               min_part_size: int = MIN_PART_SIZE) -> list[Part]:
    """Split ``size`` bytes into parts; an empty object is one empty part."""
    if size < 0:
        raise ValueError(f"size must be >= 0, not {size}")
    chosen = choose_part_size(size, part_size, max_parts=max_parts, min_part_size=min_part_size)
    if size == 0:
        return [Part(1, 0, 0)]
    return [Part(i + 1, offset, min(chosen, size - offset)) for i, offset in enumerate(range(0, size, chosen))]


def byte_ranges(start: int, end: int, part_size: int) -> list[Part]:
    """Split the byte range ``[start, end)`` into ranges of ``part_size`` (for parallel ranged reads)."""
    return [Part(i + 1, off, min(part_size, end - off)) for i, off in enumerate(range(start, end, part_size))]


def clamp_range(start: int, end: int | None, size: int) -> tuple[int, int]:
    """The byte range ``[start, end)`` cut to an object of ``size`` bytes (``end=None``: to the end)."""
    lo = min(max(start, 0), size)
    hi = size if end is None else min(max(end, lo), size)
    return lo, hi


class PartWindow:
    """Runs part jobs in the background with at most ``max_concurrency`` in flight: a sliding window, so the
    next job starts the moment one finishes. ``submit`` waits for a free slot (that is the backpressure).

    The first job that fails cancels the jobs still running; ``submit`` and the exit of the ``async with``
    then raise that error. Leaving the block with an exception (or being cancelled) cancels every job. The
    host task itself is never cancelled by a failing job.
    """

    def __init__(self, max_concurrency: int, *, share: Callable[[], int] | None = None) -> None:
        self.max_concurrency = max_concurrency
        self.error: BaseException | None = None
        self._task_group: Any = None
        self._slots = anyio.Semaphore(max_concurrency)
        self._scopes: set[anyio.CancelScope] = set()
        self._share = share
        self._in_flight = 0
        self._job_done = anyio.Event()

    async def __aenter__(self) -> PartWindow:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        return self

    def _cancel_all(self) -> None:
        for scope in list(self._scopes):
            scope.cancel()

    async def submit(self, job: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start ``job(*args)`` as soon as a slot is free."""
        self.raise_if_failed()
        await self._slots.acquire()
        try:
            while self._share is not None and self._in_flight >= self._share() and self.error is None:
                self._job_done = anyio.Event()
                await self._job_done.wait()
        except BaseException:
            self._slots.release()
            raise
        if self.error is not None:
            self._slots.release()
            self.raise_if_failed()
        self._in_flight += 1
        scope = anyio.CancelScope()
        self._scopes.add(scope)
        self._task_group.start_soon(self._run, scope, job, args)

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error

    async def _run(self, scope: anyio.CancelScope, job: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        try:
            with scope:
                await job(*args)
        except Exception as error:
            if self.error is None:
                self.error = error
                self._cancel_all()
        finally:
            self._scopes.discard(scope)
            self._in_flight -= 1
            self._job_done.set()
            self._slots.release()

    async def wait(self) -> None:
        """Wait for every job submitted so far; raise the first failure."""
        for _ in range(self.max_concurrency):
            await self._slots.acquire()
        for _ in range(self.max_concurrency):
            self._slots.release()
        self.raise_if_failed()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc_type is not None:
            self._cancel_all()
        try:
            await self._task_group.__aexit__(None, None, None)
        finally:
            self._task_group = None
        if exc_type is None:
            self.raise_if_failed()
        return False


async def run_parts(parts: Iterable[Part], job: Callable[[Part], Awaitable[T]], *, max_concurrency: int,
                    share: Callable[[], int] | None = None) -> list[T]:
    """Run ``job`` over ``parts`` in a sliding window; results in part order. The first failure cancels the rest
    and is raised. ``share()``, when given, narrows the window further each time a part is about to start."""
    parts = list(parts)
    results: dict[int, T] = {}

    async def one(part: Part) -> None:
        results[part.number] = await job(part)

    async with PartWindow(max_concurrency, share=share) as window:
        for part in parts:
            await window.submit(one, part)
    return [results[p.number] for p in parts]
