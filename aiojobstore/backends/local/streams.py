"""Streams: readers that verify a whole read before its last bytes, writers that buffer ~4 MiB blocks."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from ...commit import run_uncancelled
from ...errors import IntegrityError
from ...streams import AsyncReader, AsyncWriter, Buffer, ChunkReader
from .commit import Commits, Staged
from .files import STREAM_BUFFER
from .metadata import verify
from .threads import in_thread


class _LocalWriter:
    """Buffers small writes and hands ~4 MiB blocks to a worker thread (checksummed there); a block handed over
    is always finished before the writer's temp file can be closed, whatever cancellation arrives."""

    def __init__(self, staged: Staged) -> None:
        self._staged = staged
        self._buffer = bytearray()
        self.bytes_written = 0

    async def write(self, data: Buffer) -> int:
        n = len(data)
        if not n:
            return 0
        if not self._buffer and n >= STREAM_BUFFER:
            await self._write(data)
        else:
            self._buffer += data
            if len(self._buffer) >= STREAM_BUFFER:
                await self.flush()
        self.bytes_written += n
        return n

    async def flush(self) -> None:
        if self._buffer:
            block, self._buffer = self._buffer, bytearray()
            await self._write(block)

    async def _write(self, block: Buffer) -> None:
        await run_uncancelled(lambda: in_thread(self._staged.write, block))


class Streams(Commits):
    """``open_reader`` and ``open_writer``."""

    @asynccontextmanager
    async def open_reader(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[AsyncReader]:
        segments = self._segments(key)
        source = await self._acquire(self._open_object, key, segments)
        try:
            expected = self._expected_crc(key, source.metadata)
            size = source.st.st_size
            stop = size if end is None else min(end, size)
            position = min(max(start, 0), stop)
            crc: int | None = 0 if position == 0 and stop == size and expected is not None else None

            async def chunks() -> AsyncIterator[bytes]:
                nonlocal position, crc
                while position < stop:
                    n = min(STREAM_BUFFER, stop - position)
                    data, crc = await run_uncancelled(functools.partial(in_thread, source.read, n, position, crc))
                    if not data:
                        raise IntegrityError(f"{key!r} is shorter than when it was opened")
                    position += len(data)
                    if position == stop and crc is not None:
                        verify(key, expected, crc)  # before the last bytes are handed out
                    yield data

            stream = chunks()
            reader = ChunkReader(stream, size=stop - position)
            try:
                yield reader
            finally:
                with anyio.CancelScope(shield=True):
                    await reader.aclose()
        finally:
            await self._release(source.release)

    @asynccontextmanager
    async def open_writer(self, key: str, *, metadata: dict[str, str] | None = None, if_absent: bool = False,
                          encrypted: bool = False) -> AsyncIterator[AsyncWriter]:
        meta = {**(metadata or {}), **self.encryption_metadata(encrypted)}
        segments = self._segments(key)
        staged = await self._acquire(self._stage, key, segments)
        writer = _LocalWriter(staged)
        committing = False
        try:
            yield writer
            await writer.flush()
            committing = True  # commit_or_roll_back always runs the commit, which owns staged from here on
            await self._run_commit(self._commit, staged, meta, if_absent, None)
        finally:
            if not committing:
                await self._release(staged.release)
