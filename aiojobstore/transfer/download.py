"""Ranged reads, written once: :class:`RangeSource` GETs a byte range of one pinned version and resumes a broken
body from the byte it reached; :func:`download_ranges` downloads into a local file with parallel ranged GETs,
each feeding a :class:`DownloadRange` in order.

A backend supplies the service primitive, ``open(start, end)``: send a GET of bytes ``[start, end)`` of the
version it pinned (an ETag, a generation) and yield ``read(limit)``, which returns the next piece of the body as
received (``b""`` at its end); plus its retry test and error translation. Optionally ``receive(rng, end)``, a
faster path that fills a :class:`DownloadRange` itself (:mod:`aiojobstore.rangeget`).
"""

from __future__ import annotations

import functools
import logging
import mmap
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import anyio

from ..errors import TransferError
from ..rangeget import RangeBroken
from .budget import TransferShare
from .checksums import combine_part_crcs, crc32c
from .config import MiB, TransferConfig
from .files import DownloadTarget
from .plan import Part, byte_ranges, run_parts
from .progress import Progress
from .retry import RetryPolicy, with_retries

log = logging.getLogger("aiojobstore.transfer")

RangeSink = Callable[[int, list[bytes]], Awaitable[None]]

#: Bytes per buffer a receiver fills straight from the socket (:meth:`DownloadRange.buffers`). Two per range in
#: flight: one is written to disk while the other fills. Measured on Ceph RGW, 1 GiB in 8 ranges: 1 MiB buffers
#: 753-933 MB/s (median 832), 4 MiB 847-941 (median 869).
RECEIVE_BUFFER_SIZE = 4 * MiB


class DownloadRange:
    """One range of a :func:`download_ranges` download, fed in order in either of two ways: pieces as a client
    received them (``await rng(offset, pieces)``, a :data:`RangeSink`; copied through a staging buffer), or
    buffers this range lends (:meth:`buffers`) filled by the caller and handed back with :meth:`write_buffer`,
    written from where they are. Each write and its CRC32C take one thread hop; :attr:`position` is where the
    next byte goes, which is where a broken GET resumes."""

    def __init__(self, file: DownloadTarget, part: Part, report: Progress) -> None:
        self.part = part
        self.position = part.offset
        self.crc = 0
        self._file = file
        self._writer = file.range_writer(part.offset)
        self._report = report
        self._lent: list[mmap.mmap] = []

    async def __call__(self, offset: int, pieces: list[bytes]) -> None:
        def work() -> int:
            self._writer.write(offset, pieces)
            return crc32c(pieces, self.crc)

        await self._advance(offset, work, sum(map(len, pieces)))

    def buffers(self, count: int = 2, size: int = RECEIVE_BUFFER_SIZE) -> list[memoryview]:
        """``count`` page-aligned buffers of ``size`` bytes, this range's until it closes. Release the views
        before then."""
        lent = [self._file.take_buffer(size) for _ in range(count)]
        self._lent.extend(lent)
        return [memoryview(buffer) for buffer in lent]

    async def write_buffer(self, offset: int, view: memoryview) -> None:
        """Write ``view`` (a prefix of one of :meth:`buffers`) at ``offset``; the buffer is free again on return."""
        def work() -> int:
            self._writer.write_buffer(offset, view)
            return crc32c(view, self.crc)

        await self._advance(offset, work, len(view))

    async def _advance(self, offset: int, work: Callable[[], int], length: int) -> None:
        self.crc = await anyio.to_thread.run_sync(work)
        self.position = offset + length
        await self._report.advance(length)

    def close(self) -> None:
        """Write what is still staged and give the buffers back (blocking)."""
        self._writer.close()
        for buffer in self._lent:
            self._file.give_buffer(buffer)
        self._lent.clear()


async def download_ranges(target: str, size: int, fetch: Callable[[Part, DownloadRange], Awaitable[None]], *,
                          config: TransferConfig, part_size: int, share: TransferShare, report: Progress,
                          verify: Callable[[int], Awaitable[bool]]) -> bool:
    """Download ``size`` bytes into a :class:`DownloadTarget` beside ``target`` with parallel ranged GETs, sized
    and windowed by ``share``. ``fetch(part, rng)`` GETs one range and feeds its :class:`DownloadRange` in
    order. The file is renamed onto ``target`` when ``verify(crc32c_of_everything)`` accepts it; returns
    whether it was."""
    file = await anyio.to_thread.run_sync(functools.partial(
        DownloadTarget, target, size, direct_io=config.direct_io and size >= part_size))
    try:
        ranges = byte_ranges(0, size, share.range_size(part_size))

        async def one(part: Part) -> int:
            rng = DownloadRange(file, part, report)
            try:
                await fetch(part, rng)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(rng.close)
            return rng.crc

        crcs = await run_parts(ranges, one, max_concurrency=config.max_concurrency, share=share.window)
        if not await verify(combine_part_crcs(zip(crcs, (r.length for r in ranges), strict=True))):
            await report.rewind(report.done)
            return False
        await anyio.to_thread.run_sync(file.commit)
        return True
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(file.discard)


#: ``read(limit)``: the next piece of a response body as received (``b""`` at its end).
ReadPiece = Callable[[int], Awaitable[bytes]]
#: A backend's ranged GET: opens a GET of bytes ``[start, end)`` of the pinned version, yields its :data:`ReadPiece`.
OpenRange = Callable[[int, int], AbstractAsyncContextManager[ReadPiece]]
#: A backend's fast receive path: fills ``rng`` up to ``end``; False when it is off (the GET then goes through
#: :meth:`RangeSource.stream`); raises ``RangeBroken`` to resume from ``rng.position`` there.
Receive = Callable[[DownloadRange, int], Awaitable[bool]]

#: Bytes received per thread hop of a download (a pwrite and a CRC32C of the pieces as received).
WRITE_GROUP = 4 * MiB


class BodyEnded(TransferError):
    """A response body ended before its range did: retried, from the byte reached."""


@dataclass
class RangeSource:
    """Ranged reads of one pinned version of one object, over the backend's :data:`OpenRange`. ``is_retryable``
    and ``translate`` are the backend's (``translate`` turns an error into the ``aiojobstore.errors`` error to
    raise); ``what`` names the object in log lines."""

    open: OpenRange
    policy: RetryPolicy
    is_retryable: Callable[[BaseException], bool]
    translate: Callable[[BaseException], BaseException]
    what: str = "GET"
    receive: Receive | None = None

    def _retryable(self, error: BaseException) -> bool:
        return isinstance(error, BodyEnded) or self.is_retryable(error)

    async def stream(self, start: int, end: int, sink: RangeSink, *, group: int) -> None:
        """Feed bytes ``[start, end)`` to ``sink(offset, pieces)`` in groups of about ``group`` bytes (the pieces
        as received, never copied here); a broken body resumes at the offset reached, retried per the policy."""
        if end <= start:
            return
        position = start

        async def once() -> None:
            nonlocal position
            async with self.open(position, end) as read:
                pieces: list[bytes] = []
                held = 0
                while position + held < end:
                    want = end - position - held
                    chunk = await read(min(group, want))
                    if not chunk:
                        raise BodyEnded(f"{self.what}: the body ended at byte {position + held} of {end}")
                    if len(chunk) > want:
                        chunk = chunk[:want]
                    pieces.append(chunk)
                    held += len(chunk)
                    if held >= group:
                        await sink(position, pieces)
                        position += held
                        pieces, held = [], 0
                if pieces:
                    await sink(position, pieces)
                    position += held

        try:
            await with_retries(once, policy=self.policy, is_retryable=self._retryable,
                               what=f"{self.what} [{start}, {end})")
        except Exception as error:
            raise self.translate(error) from error

    async def read(self, start: int, end: int) -> list[bytes]:
        """Bytes ``[start, end)`` as the pieces received."""
        pieces: list[bytes] = []

        async def collect(_offset: int, data: list[bytes]) -> None:
            pieces.extend(data)

        await self.stream(start, end, collect, group=max(end - start, 1))
        return pieces

    async def fill(self, part: Part, rng: DownloadRange) -> None:
        """Fill one range of a download: through ``receive`` when the backend has it on, resuming a broken one
        (or repeating a refused one) through :meth:`stream`."""
        if self.receive is not None:
            try:
                if await self.receive(rng, part.end):
                    return
            except RangeBroken as broken:
                log.debug("%s broke at byte %d (%s); resuming", self.what, rng.position, broken)
        await self.stream(rng.position, part.end, rng, group=WRITE_GROUP)
