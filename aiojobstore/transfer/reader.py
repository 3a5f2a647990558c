"""The read-ahead reader, written once: a read stream over a backend's "bytes ``[start, end)`` of this version"
(:meth:`RangeSource.read <aiojobstore.transfer.download.RangeSource.read>`), with a few ranges fetched ahead in
the background. Every range read ahead holds its bytes of the store's :class:`MemoryBudget` until the reader has
consumed it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio

from ..streams import ChunkReader
from .budget import MemoryBudget
from .checksums import crc32c_async
from .plan import Part, byte_ranges
from .verify import integrity_error

#: A backend's ranged read: the bytes ``[start, end)`` of the version the read pinned, as pieces.
ReadRange = Callable[[int, int], Awaitable[list[bytes]]]


class _ReadAhead:
    """The ranges of one reader: fetched by a feeder at most ``depth`` ahead, consumed in order."""

    def __init__(self, read_range: ReadRange, ranges: list[Part], depth: int, budget: MemoryBudget) -> None:
        self.read_range = read_range
        self.ranges = ranges
        self.budget = budget
        self.results: dict[int, list[bytes]] = {}
        self.ready = {r.number: anyio.Event() for r in ranges}
        self.errors: list[BaseException] = []
        self.slots = anyio.Semaphore(depth)
        self.held: dict[int, int] = {}  # range number -> bytes of the budget it holds

    async def feed(self, group: anyio.abc.TaskGroup) -> None:
        for part in self.ranges:
            await self.slots.acquire()
            if self.errors:
                return
            await self.budget.acquire(part.length)  # read-ahead is buffered: it counts against max_memory
            self.held[part.number] = part.length
            group.start_soon(self._fetch, part)

    async def _fetch(self, part: Part) -> None:
        try:
            self.results[part.number] = await self.read_range(part.offset, part.end)
        except Exception as error:  # handed to the consumer, never to the task group
            self.errors.append(error)
        finally:
            self.ready[part.number].set()

    async def take(self, part: Part) -> list[bytes]:
        await self.ready[part.number].wait()
        if self.errors:
            raise self.errors[0]
        self.slots.release()
        return self.results.pop(part.number)

    def give_back(self, number: int) -> None:
        self.budget.release(self.held.pop(number, 0))

    def give_back_all(self) -> None:
        for number in list(self.held):  # ranges fetched (or being fetched) but never consumed
            self.give_back(number)


@asynccontextmanager
async def open_range_reader(read_range: ReadRange, start: int, end: int, *, range_size: int, depth: int,
                            budget: MemoryBudget, verify: Callable[[int], Awaitable[bool]] | None = None,
                            what: str = "the object") -> AsyncIterator[ChunkReader]:
    """A reader of bytes ``[start, end)``: ranges of ``range_size`` fetched with ``read_range``, at most ``depth``
    ahead. With ``verify``, the CRC32C of everything read is checked at the end (``verify(crc)`` False raises
    ``IntegrityError`` naming ``what``). A fetch's error is raised by the read that reaches its range; an error of
    the code using the reader reaches the caller as itself, never wrapped in an exception group."""
    ahead = _ReadAhead(read_range, byte_ranges(start, end, range_size), max(1, depth), budget)

    async def chunks() -> AsyncIterator[bytes]:
        value = 0
        for part in ahead.ranges:
            pieces = await ahead.take(part)
            if verify is not None:
                value = await crc32c_async(pieces, value)
            for piece in pieces:
                yield piece
            ahead.give_back(part.number)  # the reader asks for more: it is done with this range
        if verify is not None and not await verify(value):
            raise integrity_error(what)

    # Entered and left by hand (as PartWindow is), so that the body's error is not wrapped in an ExceptionGroup:
    # the fetches catch their own errors, so the group itself never raises one.
    group = anyio.create_task_group()
    await group.__aenter__()
    try:
        group.start_soon(ahead.feed, group)
        reader = ChunkReader(chunks(), size=end - start)
        try:
            yield reader
        finally:
            with anyio.CancelScope(shield=True):
                await reader.aclose()
    finally:
        group.cancel_scope.cancel()
        try:
            await group.__aexit__(None, None, None)
        finally:
            ahead.give_back_all()


__all__ = ["ReadRange", "open_range_reader"]
