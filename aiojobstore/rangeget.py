"""A lean HTTP/1.1 receiver for the ranged GETs of large downloads.

aiohttp hands a response body over as a new ``bytes`` object per socket read, copied once more by its parser,
with Python work for every piece: on a 2-core machine that is ~0.7 s of CPU per GiB, and a download that
shares the machine with its server is bound by it. Here the socket is read with ``recv_into`` straight into
the page-aligned buffers a :class:`~aiojobstore.transfer.DownloadRange` lends, and those are written to disk
from where they are (with ``O_DIRECT`` where the target allows it): ~0.3 s of CPU per GiB, measured on Ceph
RGW.

It does only the plain case: one GET with the headers it is given (signed by the caller, e.g. a presigned
URL), answered with ``206 Partial Content``, a ``Content-Length`` and a ``Content-Range`` that match the range,
no transfer or content encoding. Anything else raises :class:`RangeRefused` with the status and the start of
the body, and the caller falls back to its regular client, which knows how to retry and translate errors.
A connection that breaks raises ``OSError`` (or ``TimeoutError``) and the caller resumes from
:attr:`DownloadRange.position <aiojobstore.transfer.DownloadRange.position>`. Connections are kept alive and
reused per host; TLS goes through asyncio's SSL transport, which also reads into the buffers it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Callable, Mapping
from typing import Protocol
from urllib.parse import urlsplit

import anyio

from .errors import TransferError

USER_AGENT = "aiojobstore-rangeget/1"
#: Longest response head accepted; S3 heads are well under 2 KiB.
MAX_HEAD = 64 * 1024
#: Most of an error body kept for the message.
MAX_ERROR_BODY = 4 * 1024

_CONTENT_RANGE = re.compile(rb"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


class RangeRefused(TransferError):
    """The server answered something other than the plain ``206`` this receiver handles."""

    def __init__(self, message: str, *, status: int = 0, body: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class RangeBroken(TransferError):
    """The connection failed or went silent; the bytes handed over so far are good."""


class BufferedRange(Protocol):
    """What :meth:`RangeGetter.get` fills: :class:`aiojobstore.transfer.DownloadRange`."""

    def buffers(self, count: int = ..., size: int = ...) -> list[memoryview]: ...

    async def write_buffer(self, offset: int, view: memoryview) -> None: ...


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection. Reads the response head into a scratch buffer, then body bytes straight into the
    view set by :meth:`fill`; reading pauses whenever no view is waiting to be filled."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        # a memoryview, never the bytearray itself: asyncio's SSL transport reads on into ``buffer[offset:]``,
        # which for a bytearray is a copy, and those bytes would be lost (seen on CPython 3.11)
        self._scratch = memoryview(bytearray(16 * 1024))
        self._head = bytearray()
        self._leftover = b""  # body bytes that arrived with the head
        self._in_body = False
        self._view: memoryview | None = None
        self._filled = 0
        self._reading_into_view = False
        self._event: anyio.Event | None = None
        self.error: BaseException | None = None
        self.reusable = True

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        view = self._view
        self._reading_into_view = view is not None and self._filled < len(view)
        return view[self._filled:] if self._reading_into_view else self._scratch  # type: ignore[index]

    def buffer_updated(self, nbytes: int) -> None:
        if self._reading_into_view:
            assert self._view is not None
            self._filled += nbytes
            if self._filled == len(self._view):
                self._pause()
            return
        if self._in_body:  # between two views (a transport that reads on after a pause): keep the bytes in order
            self._leftover += self._scratch[:nbytes]
            return
        self._head += self._scratch[:nbytes]
        end = self._head.find(b"\r\n\r\n")
        if end >= 0:
            self._leftover = bytes(self._head[end + 4:])
            del self._head[end + 4:]
            self._in_body = True
            self._pause()
        elif len(self._head) > MAX_HEAD:
            self._fail(RangeRefused(f"response head longer than {MAX_HEAD} bytes"))

    def eof_received(self) -> bool:
        self._fail(ConnectionResetError("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("the connection was closed"))

    # -- driven by RangeGetter

    def _pause(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()
        if self._event is not None:
            self._event.set()

    def _fail(self, error: BaseException) -> None:
        self.reusable = False
        if self.error is None:
            self.error = error
        if self._event is not None:
            self._event.set()

    def start(self, request: bytes) -> None:
        """Send ``request`` and read its response from a clean state."""
        assert self.transport is not None
        self._head.clear()
        self._leftover = b""
        self._in_body = False
        self._view = None
        self._filled = 0
        self.transport.write(request)
        self.transport.resume_reading()

    async def head(self, timeout: float) -> bytes:
        """The response head (status line and headers), once it has arrived."""
        await self._wait(lambda: self._in_body, timeout)
        return bytes(self._head)

    def fill(self, view: memoryview) -> None:
        """Start filling ``view`` with body bytes (those that came with the head first)."""
        assert self.transport is not None and self._in_body
        taken = min(len(self._leftover), len(view))
        view[:taken] = self._leftover[:taken]
        self._leftover = self._leftover[taken:]
        self._view, self._filled = view, taken
        if taken < len(view):
            self.transport.resume_reading()

    async def filled(self, timeout: float) -> memoryview:
        """The view given to :meth:`fill`, once it is full."""
        view = self._view
        assert view is not None
        await self._wait(lambda: self._filled == len(view), timeout)
        self._view = None
        return view

    def forget_view(self) -> None:
        """Drop the view being filled (its buffer goes back to its owner); reading stays paused."""
        self._view = None
        self._filled = 0

    def leftover(self) -> int:
        return len(self._leftover)

    async def _wait(self, done: Callable[[], bool], timeout: float) -> None:
        while not done():
            if self.error is not None:
                raise self.error
            self._event = anyio.Event()
            try:
                with anyio.fail_after(timeout):
                    await self._event.wait()
            except TimeoutError:
                self.reusable = False
                raise TimeoutError(f"no data from the server for {timeout:g} s") from None
            finally:
                self._event = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class RangeGetter:
    """Sends ranged GETs over kept-alive connections, at most ``max_idle`` idle ones per host, and receives
    the bodies into the buffers of a :class:`BufferedRange`. Bound to the event loop it first runs in."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, max_idle: int = 16,
                 connect_timeout: float = 20.0, read_timeout: float = 120.0) -> None:
        self.ssl_context = ssl_context
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._default_ssl: ssl.SSLContext | None = None

    async def get(self, url: str, headers: Mapping[str, str], start: int, end: int, into: BufferedRange) -> None:
        """GET bytes ``[start, end)`` of ``url`` (``headers`` must include the ``Range``) and hand them to
        ``into.write_buffer`` in order, in buffers of its own."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RangeRefused(f"cannot GET {parts.scheme}: URLs")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        where = (parts.scheme, parts.hostname, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", f"User-Agent: {USER_AGENT}",
                 "Accept-Encoding: identity"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

        try:
            connection, head = await self._send(where, request)
        except OSError as error:  # TimeoutError included
            raise RangeBroken(f"GET {parts.hostname}:{port}: {error or type(error).__name__}") from error
        clean = False
        try:
            await self._check_head(head, start, end, connection)
            await self._receive(connection, start, end, into)
            clean = True
        finally:
            if clean and connection.reusable:
                self._keep(where, connection)
            else:
                connection.close()

    async def _send(self, where: tuple[str, str, int], request: bytes) -> tuple[_Connection, bytes]:
        """Send ``request`` on an idle connection (once more on a new one if the server had closed it) or a new
        one; return the connection and the response head."""
        while True:
            connection = self._take_idle(where)
            reused = connection is not None
            if connection is None:
                connection = await self._connect(where)
            try:
                connection.start(request)
                return connection, await connection.head(self.read_timeout)
            except OSError:
                connection.close()
                if not reused:
                    raise
            except BaseException:
                connection.close()
                raise

    async def _connect(self, where: tuple[str, str, int]) -> _Connection:
        scheme, host, port = where
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            if self.ssl_context is None and self._default_ssl is None:
                self._default_ssl = ssl.create_default_context()
            context = self.ssl_context or self._default_ssl
        with anyio.fail_after(self.connect_timeout):
            _transport, connection = await loop.create_connection(_Connection, host, port, ssl=context)
        return connection

    async def _check_head(self, head: bytes, start: int, end: int, connection: _Connection) -> None:
        """Raise :class:`RangeRefused` unless ``head`` is a plain 206 for ``[start, end)``; the refusal carries
        the status and (up to :data:`MAX_ERROR_BODY` bytes) the body."""
        status_line, _, header_block = head.partition(b"\r\n")
        version, _, rest = status_line.partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or not code.isdigit():
            raise RangeRefused(f"not an HTTP/1.x response: {status_line[:100]!r}")
        status = int(code)
        headers: dict[bytes, bytes] = {}
        for line in header_block.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        if version == b"HTTP/1.0" or headers.get(b"connection", b"").lower() == b"close":
            connection.reusable = False
        length = headers.get(b"content-length", b"")
        if status != 206:
            connection.reusable = False
            body = b""
            if length.isdigit() and 0 < int(length) <= MAX_ERROR_BODY:
                with contextlib.suppress(OSError):  # the status says enough; the body only adds detail
                    connection.fill(memoryview(bytearray(int(length))))
                    body = bytes(await connection.filled(min(self.read_timeout, 10.0)))
            raise RangeRefused(f"HTTP {status} {rest[4:].decode('latin-1', 'replace')}", status=status, body=body)
        if b"transfer-encoding" in headers or headers.get(b"content-encoding", b"identity").lower() != b"identity":
            raise RangeRefused("the response body is encoded (transfer or content encoding)", status=status)
        match = _CONTENT_RANGE.match(headers.get(b"content-range", b""))
        if (not length.isdigit() or int(length) != end - start or match is None
                or (int(match.group(1)), int(match.group(2)) + 1) != (start, end)):
            raise RangeRefused(f"the response is not bytes {start}-{end - 1}: Content-Length {length!r}, "
                               f"Content-Range {headers.get(b'content-range')!r}", status=status)

    async def _receive(self, connection: _Connection, start: int, end: int, into: BufferedRange) -> None:
        """The body into two alternating buffers: one fills from the socket while the other is written."""
        views = into.buffers(2)
        try:
            position = start
            which = 0
            connection.fill(views[which][: min(len(views[which]), end - position)])
            while position < end:
                try:
                    view = await connection.filled(self.read_timeout)
                except OSError as error:
                    raise RangeBroken(f"after {position - start} of {end - start} bytes: "
                                      f"{error or type(error).__name__}") from error
                following = position + len(view)
                if following < end:
                    which ^= 1
                    connection.fill(views[which][: min(len(views[which]), end - following)])
                await into.write_buffer(position, view)
                position = following
            if connection.leftover():
                connection.reusable = False  # more bytes than the Content-Length: do not trust what follows
        finally:
            connection.forget_view()
            for view in views:
                view.release()

    def _take_idle(self, where: tuple[str, str, int]) -> _Connection | None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new loop (a fork, a new portal): the old connections are not ours
            self._idle.clear()
            self._loop = loop
        idle = self._idle.get(where)
        while idle:
            connection = idle.pop()
            if connection.error is None and connection.transport is not None and not connection.transport.is_closing():
                return connection
        return None

    def _keep(self, where: tuple[str, str, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(where, [])
        if len(idle) < self.max_idle:
            idle.append(connection)
        else:
            connection.close()

    def close(self) -> None:
        """Close every idle connection."""
        for idle in self._idle.values():
            for connection in idle:
                with contextlib.suppress(Exception):
                    connection.close()
        self._idle.clear()
