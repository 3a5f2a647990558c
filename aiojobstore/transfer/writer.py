"""The part-buffered atomic write stream, written once: the caller's bytes are cut into parts
(:class:`PartBuffers`, counted against the store's memory budget), full parts are sent in the background (a
:class:`PartWindow`) while the caller writes, and the object appears only when the block exits cleanly.

A backend supplies a :class:`PartTarget`: the service primitives of one stream write. Conditions (create-only,
if-match) and encryption are the target's: the engine passes nothing through but bytes and checksums.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Generic, Protocol, TypeVar

import anyio

from ..streams import Buffer
from .budget import MemoryBudget, PartBuffer, PartBuffers
from .checksums import combine_part_crcs, crc32c_async
from .plan import PartWindow

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class PartTarget(Protocol[R_co]):
    """The service side of one stream write. Either :meth:`put_whole` (a stream that never filled a part) or
    :meth:`start`, :meth:`send_part` for each part (concurrently, in any order; every part but the last is
    ``part_size`` bytes) and :meth:`complete`; :meth:`abort` after a failure or cancellation once started."""

    async def put_whole(self, data: bytes, crc: int) -> R_co:
        """Store the whole stream as one object (the commit)."""
        ...

    async def start(self) -> None:
        """Before the first part (a multipart upload's create)."""
        ...

    async def send_part(self, number: int, data: memoryview, crc: int) -> None:
        """Send part ``number`` (1-based) with its CRC32C; ``data`` is valid until this returns."""
        ...

    async def complete(self, size: int, crc: int) -> R_co:
        """Join the parts sent into the object (the commit); ``crc`` is the whole stream's CRC32C."""
        ...

    async def abort(self) -> None:
        """Discard what was started and sent (must not raise)."""
        ...


class PartWriter(Generic[R]):
    """The stream :func:`open_part_writer` hands out."""

    def __init__(self, target: PartTarget[R], window: PartWindow, budget: MemoryBudget, part_size: int,
                 keep: int) -> None:
        self.target = target
        self.window = window
        self.parts = PartBuffers(budget, part_size, keep=keep)
        self.bytes_written = 0
        self.started = False
        self._crcs: dict[int, tuple[int, int]] = {}
        self._next_part = 1
        self._closed = False

    async def write(self, data: Buffer) -> int:
        if self._closed:
            raise ValueError("write to a closed writer")
        n = await self.parts.write(data, self._hand_off)
        self.bytes_written += n
        return n

    async def _hand_off(self, part: PartBuffer) -> None:
        try:
            if not self.started:
                self.started = True
                await self.target.start()
            number = self._next_part
            self._next_part += 1
            await self.window.submit(self._send, number, part)
        except BaseException:
            part.done(reuse=False)
            raise

    async def _send(self, number: int, part: PartBuffer) -> None:
        sent = False
        try:
            crc = await crc32c_async(part.view)
            self._crcs[number] = (crc, part.length)
            await self.target.send_part(number, part.view, crc)
            sent = True
        finally:
            part.done(reuse=sent)

    async def send_last_part(self) -> None:
        """On a clean exit: hand the buffered tail to the window, if parts were sent."""
        self._closed = True
        if self.started:
            tail = self.parts.take_current()
            if tail is not None:
                await self._hand_off(tail)

    async def commit(self) -> R:
        """After every part was sent: one object of the tail, else the parts joined."""
        if not self.started:
            tail = self.parts.take_current()
            data = bytes(tail.view) if tail is not None else b""
            if tail is not None:
                tail.done(reuse=False)
            return await self.target.put_whole(data, await crc32c_async(data))
        whole = combine_part_crcs(self._crcs[n] for n in sorted(self._crcs))
        return await self.target.complete(self.bytes_written, whole)


@asynccontextmanager
async def open_part_writer(target: PartTarget[Any], *, budget: MemoryBudget, part_size: int,
                           max_concurrency: int) -> AsyncIterator[PartWriter[Any]]:
    """A write stream over ``target`` with parts of ``part_size`` bytes, at most ``max_concurrency`` in flight
    (and ``max_concurrency + 1`` buffers held). The commit runs when the block exits cleanly; an error or a
    cancellation (in the block, a part or the commit) aborts what the target started, after the window has
    cancelled and awaited its parts, and is raised as itself."""
    writer: PartWriter[Any] | None = None
    try:
        async with PartWindow(max_concurrency) as window:
            writer = PartWriter(target, window, budget, part_size, keep=max_concurrency + 1)
            yield writer
            await writer.send_last_part()
            await window.wait()
        await writer.commit()
    except BaseException:
        if writer is not None:
            writer._closed = True
            if writer.started:
                with anyio.CancelScope(shield=True):
                    await target.abort()
        raise
    finally:
        if writer is not None:
            writer.parts.close()


__all__ = ["PartTarget", "PartWriter", "open_part_writer"]
