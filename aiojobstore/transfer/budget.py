"""Store-wide limits: bytes held in memory (:class:`MemoryBudget`, :class:`PartBuffers`), requests in flight and
the share of parallel streams each transfer gets (:class:`TransferShare`, :class:`TransferLimits`)."""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio

from .checksums import file_range_crc32c
from .config import CHECKSUM_THREADS, TransferConfig


class MemoryBudget:
    """Bytes that may be buffered at once, store-wide, handed out first come, first served. A request larger than
    the whole budget is let through alone, so a part bigger than the budget slows things down instead of
    deadlocking. Every buffer a stream holds counts, pooled ones included, so the store's buffers never exceed
    the limit (plus one oversized request) however many streams are open."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self._waiters: collections.deque[tuple[int, anyio.Event]] = collections.deque()

    @property
    def contended(self) -> bool:
        """Whether someone is waiting for budget (holders should give back what they could keep)."""
        return bool(self._waiters)

    def _fits(self, n: int) -> bool:
        return not self.in_use or self.in_use + n <= self.limit

    async def acquire(self, n: int) -> None:
        if not self._waiters and self._fits(n):
            self.in_use += n
            self.peak = max(self.peak, self.in_use)
            return
        entry = (n, anyio.Event())
        self._waiters.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry[1].is_set():  # granted as we were cancelled: hand it on
                self.release(n)
            else:
                self._waiters.remove(entry)
                self._grant()
            raise

    def release(self, n: int) -> None:
        self.in_use -= n
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            n, event = self._waiters.popleft()
            self.in_use += n
            self.peak = max(self.peak, self.in_use)
            event.set()


class PartBuffer:
    """One part of a write stream: a part-sized buffer, filled to ``length``, holding ``part_size`` bytes of
    the store's memory budget until :meth:`done`."""

    __slots__ = ("_owner", "data", "length")

    def __init__(self, owner: PartBuffers, data: bytearray) -> None:
        self.data: bytearray | None = data
        self.length = 0
        self._owner = owner

    @property
    def view(self) -> memoryview:
        assert self.data is not None, "a part buffer is used after done()"
        return memoryview(self.data)[: self.length]

    def done(self, *, reuse: bool) -> None:
        """Give back the buffer. ``reuse=True`` only once nothing refers to the bytes any more (the upload
        succeeded): the buffer may then serve a later part of the same stream without faulting in fresh pages."""
        if self.data is not None:
            self._owner._give_back(self.data if reuse else None)
            self.data = None


class PartBuffers:
    """Cuts a written stream into parts of ``part_size`` bytes for background uploads: one copy per byte into
    a buffer that holds a reservation of the store-wide :class:`MemoryBudget` for as long as it exists (in use or
    pooled for reuse), so writers wait (backpressure) rather than buffer more than the budget allows. A stream
    keeps at most ``keep`` idle buffers, and none while other streams wait for budget."""

    def __init__(self, budget: MemoryBudget, part_size: int, *, keep: int) -> None:
        self.budget = budget
        self.part_size = part_size
        self.current: PartBuffer | None = None
        self._free: list[bytearray] = []
        self._keep = keep
        self._closed = False

    async def write(self, data: Any, hand_off: Callable[[PartBuffer], Awaitable[None]]) -> int:
        """Append ``data``; every part that fills up goes to ``hand_off``, which owns it from then on."""
        view = memoryview(data).cast("B")
        n = len(view)
        while view:
            part = self.current
            if part is None:
                part = self.current = PartBuffer(self, await self._take_buffer())
            assert part.data is not None
            take = min(len(view), self.part_size - part.length)
            part.data[part.length : part.length + take] = view[:take]
            part.length += take
            view = view[take:]
            if part.length == self.part_size:
                self.current = None
                await hand_off(part)
        return n

    async def _take_buffer(self) -> bytearray:
        if self._free:
            return self._free.pop()  # its reservation is still held
        await self.budget.acquire(self.part_size)
        return bytearray(self.part_size)

    def take_current(self) -> PartBuffer | None:
        """The partly filled part, if any (the tail of the stream); the caller owns it from then on."""
        part, self.current = self.current, None
        return part

    def close(self) -> None:
        """Drop the unfinished part and the pool (parts handed off are released by their owners)."""
        self._closed = True
        if self.current is not None:
            self.current.done(reuse=False)
            self.current = None
        while self._free:
            self._free.pop()
            self.budget.release(self.part_size)

    def _give_back(self, data: bytearray | None) -> None:
        if data is not None and not self._closed and len(self._free) < self._keep and not self.budget.contended:
            self._free.append(data)
        else:
            self.budget.release(self.part_size)


class TransferShare:
    """Shares a store's parallel streams among the transfers of one direction running at once. Each may have
    ``max_concurrency // transfers`` parts or ranges in flight (at least one), re-read whenever it starts one,
    so the store as a whole keeps at least ``max_concurrency`` streams busy but not many times that: the
    server does less work per byte with fewer streams. A download's ranges also grow as its share shrinks, so
    that sixteen downloads at once get one 400 MiB range each, and a 128 MiB object is one GET instead of
    three. Measured on Ceph RGW, 16 x 128 MiB at once: downloads with one GET per file 747-869 MB/s, three
    GETs per file one at a time 644-741, three streams per file 597-747; uploads with one or two parts in
    flight per file 370-449 MB/s, three 349-405."""

    def __init__(self, max_concurrency: int) -> None:
        self.max_concurrency = max_concurrency
        self.transfers = 0

    def window(self) -> int:
        """Parts or ranges one transfer may have in flight now."""
        return max(1, self.max_concurrency // max(1, self.transfers))

    def range_size(self, part_size: int) -> int:
        """Bytes per ranged GET for a download starting now: ``part_size`` times the streams it gives up."""
        return part_size * -(-self.max_concurrency // self.window())

    @contextlib.contextmanager
    def joined(self) -> Iterator[TransferShare]:
        """Count one more transfer while the block runs."""
        self.transfers += 1
        try:
            yield self
        finally:
            self.transfers -= 1


class TransferLimits:
    """Store-wide caps: requests in flight and bytes held in memory, shared by every transfer of one store, and
    the share of parallel streams each upload and each download gets."""

    def __init__(self, config: TransferConfig) -> None:
        self.requests = anyio.CapacityLimiter(config.max_requests)
        self.memory = MemoryBudget(config.max_memory)
        self.downloads = TransferShare(config.max_concurrency)
        self.uploads = TransferShare(config.max_concurrency)
        self.file_checksums = anyio.CapacityLimiter(CHECKSUM_THREADS)

    async def file_crc32c(self, path: str | os.PathLike[str], offset: int, length: int) -> int:
        """CRC32C of a range of a local file, read and hashed in a worker thread. Threads are shared first come,
        first served by the whole store (:data:`CHECKSUM_THREADS`), so that uploads started together finish their
        checksum pre-passes one after the other and start sending one after the other, instead of all hashing at
        once and all sending only when the last of them has finished hashing."""
        return await anyio.to_thread.run_sync(file_range_crc32c, path, offset, length, limiter=self.file_checksums)
