"""Async byte streams: the reader/writer protocols every backend returns, and text-mode wrappers."""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, runtime_checkable

Buffer = bytes | bytearray | memoryview


@runtime_checkable
class AsyncReader(Protocol):
    """A readable byte stream; ``read()`` with no argument returns the rest, ``b""`` means end of stream."""

    size: int | None

    async def read(self, n: int = -1) -> bytes: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...


@runtime_checkable
class AsyncWriter(Protocol):
    """A writable byte stream; what it wrote becomes visible only when its context exits cleanly."""

    bytes_written: int

    async def write(self, data: Buffer) -> int: ...


class _Buffered:
    """A reader that buffers what its ``_fill`` fetches (one chunk per call; False at the end)."""

    _fill: Callable[[], Awaitable[bool]]  # each subclass's own: fetch one chunk, False at the end

    async def _fill_while(self, wanted: Callable[[], bool]) -> None:
        """Fetch chunks while ``wanted()`` holds and the source has more."""
        while wanted():
            if not await self._fill():
                return


class ChunkReader(_Buffered):
    """An :class:`AsyncReader` over an async iterator of chunks, with ``read(n)`` of any size.

    ``close`` is called once, when the reader is closed (by its owner) or the chunks run out.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        size: int | None = None,
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._chunks = chunks
        self.size = size
        self._close = close
        self._buffer = bytearray()
        self._view_offset = 0
        self._eof = False
        self.bytes_read = 0

    async def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._eof = True
            return False
        if self._view_offset:
            del self._buffer[: self._view_offset]
            self._view_offset = 0
        self._buffer += chunk
        return True

    def _take(self, n: int) -> bytes:
        start = self._view_offset
        out = bytes(self._buffer[start : start + n])
        self._view_offset += len(out)
        if self._view_offset == len(self._buffer):
            self._buffer.clear()
            self._view_offset = 0
        self.bytes_read += len(out)
        return out

    def _buffered(self) -> int:
        return len(self._buffer) - self._view_offset

    async def read(self, n: int = -1) -> bytes:
        """Return up to ``n`` bytes (all that is left when ``n < 0``); fewer only at the end of the stream."""
        if n is None or n < 0:
            await self._fill_while(lambda: True)
            return self._take(self._buffered())
        await self._fill_while(lambda: self._buffered() < n)
        return self._take(min(n, self._buffered()))

    async def read1(self, n: int = -1) -> bytes:
        """Return at most ``n`` bytes with at most one fetch from the source."""
        if not self._buffered():
            await self._fill()
        available = self._buffered()
        return self._take(available if n is None or n < 0 else min(n, available))

    async def readline(self) -> bytes:
        """Return one line including its ``\\n`` (or the rest of the stream)."""
        while True:
            index = self._buffer.find(b"\n", self._view_offset)
            if index >= 0:
                return self._take(index + 1 - self._view_offset)
            if not await self._fill():
                return self._take(self._buffered())

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.read1()
            if not chunk:
                return
            yield chunk

    async def aclose(self) -> None:
        """Release the source; further reads return ``b""``."""
        self._eof = True
        self._buffer.clear()
        self._view_offset = 0
        close, self._close = self._close, None
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()
        if close is not None:
            await close()


class TextReader(_Buffered):
    """Decodes an :class:`AsyncReader` incrementally; ``read(n)`` counts characters."""

    def __init__(self, raw: AsyncReader, encoding: str | None = None, errors: str | None = None) -> None:
        self.raw = raw
        self.encoding = encoding or "utf-8"
        self.errors = errors or "strict"
        self._decoder = codecs.getincrementaldecoder(self.encoding)(self.errors)
        self._pending = ""
        self._eof = False

    async def _fill(self) -> bool:
        if self._eof:
            return False
        chunk = await self.raw.read(1 << 16)
        if not chunk:
            self._eof = True
            self._pending += self._decoder.decode(b"", final=True)
            return False
        self._pending += self._decoder.decode(chunk)
        return True

    async def read(self, n: int = -1) -> str:
        """Return up to ``n`` characters (everything left when ``n < 0``)."""
        if n is None or n < 0:
            await self._fill_while(lambda: True)
            out, self._pending = self._pending, ""
            return out
        await self._fill_while(lambda: len(self._pending) < n)
        out, self._pending = self._pending[:n], self._pending[n:]
        return out

    async def readline(self) -> str:
        """Return one line including its newline (or the rest of the stream)."""
        await self._fill_while(lambda: "\n" not in self._pending)
        index = self._pending.find("\n")
        cut = len(self._pending) if index < 0 else index + 1
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        while line := await self.readline():
            yield line


class TextWriter:
    """Encodes ``str`` onto an :class:`AsyncWriter`."""

    def __init__(self, raw: AsyncWriter, encoding: str | None = None, errors: str | None = None) -> None:
        self.raw = raw
        self.encoding = encoding or "utf-8"
        self.errors = errors or "strict"
        self._encoder = codecs.getincrementalencoder(self.encoding)(self.errors)

    @property
    def bytes_written(self) -> int:
        return self.raw.bytes_written

    async def write(self, text: str) -> int:
        """Write ``text``; returns the number of characters written."""
        if not isinstance(text, str):
            raise TypeError(f"a text-mode stream takes str, not {type(text).__name__}; open it without encoding")
        data = self._encoder.encode(text)
        if data:
            await self.raw.write(data)
        return len(text)

    async def flush_encoder(self) -> None:
        """Write what the encoder still holds (called when the stream is committed)."""
        tail = self._encoder.encode("", final=True)
        if tail:
            await self.raw.write(tail)
