"""A lean HTTP/1.1 client on raw asyncio protocols: kept-alive connections per host, response bodies read from
the socket straight into buffers the caller gives, and request bodies sent without a copy.

aiohttp does a lot of Python work per request and per received piece (a new ``bytes`` per socket read, copied
once more by its parser). This client is what :mod:`aiojobstore.rangeget` (ranged GETs into page-aligned
download buffers) and :mod:`aiojobstore.backends.s3.direct` (the S3 backend's small requests and part uploads)
send their requests with; it does only what they need:

- one request at a time per connection, its head (and a small body) written in one piece; a response head of at
  most :data:`MAX_HEAD` bytes, then a body of ``Content-Length`` bytes (or chunked, read whole), which
  :meth:`Response.fill` / :meth:`Response.filled` receive into a caller's buffer and :meth:`Response.read`
  returns as ``bytes``; no content decoding (requests say ``Accept-Encoding: identity``), no redirects;
- request bodies: ``bytes``, a buffer, or a :class:`FileRange`. On a plain TCP connection a large buffer or a
  file range goes out from one worker thread (``send`` of the buffer, ``sendfile`` of the file: the bytes go from
  the page cache to the socket without passing through Python), so the event loop neither copies nor blocks;
  on TLS (asyncio's SSL transport) they are written in slices with flow control, file slices read in a thread;
- a file range is checked after it was sent: the file's size and change times must not have moved, and the
  CRC32C of the range (read again from the page cache) must be the one the caller computed before, else
  :class:`BodyChanged` is raised (the answer is not trusted: the caller must not keep what it stored);
- a connection that breaks, or answers something that is not HTTP/1.x, raises :class:`HttpConnectionError`
  (a ``ConnectionError``); one that goes silent for ``read_timeout`` raises ``TimeoutError``. A ``GET`` or
  ``HEAD`` whose kept-alive connection turns out to have been closed by the server before any byte of the answer
  arrived is sent once more on a new connection; any other failure is the caller's to retry (it knows whether
  the request may be repeated). A connection goes back to the pool only after its response was read whole;
  a server's ``Connection: close`` (or HTTP/1.0) is honoured.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio

from .errors import TransferError
from .transfer import MiB, crc32c, file_range_crc32c

#: Longest response head accepted; S3 heads are well under 2 KiB.
MAX_HEAD = 64 * 1024
#: Bodies up to this size are written together with the request head, by the event loop.
INLINE_BODY = 256 * 1024
#: Bytes per slice of a body written through the transport (TLS), and per ``send``/``sendfile`` call.
SLICE = MiB
#: Body bytes read ahead while nobody waits for them; reading pauses beyond (flow control).
READ_AHEAD = 64 * 1024


class HttpConnectionError(ConnectionError):
    """The connection broke, or the server answered something that is not an HTTP/1.x response."""


class BodyChanged(TransferError):
    """A :class:`FileRange` changed while it was being sent (never retried: the file must be sent again)."""


@dataclass(frozen=True)
class FileRange:
    """``length`` bytes of the file at ``path`` from ``offset``, whose CRC32C is ``crc`` (computed before)."""

    path: str
    offset: int
    length: int
    crc: int


Body = bytes | bytearray | memoryview | FileRange
#: Awaited with the number of body bytes that went out since the last call.
SentCallback = Callable[[int], Awaitable[None]]


class _Connection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection. Reads the response head into a scratch buffer, then body bytes straight into the
    view set by :meth:`fill` (or, without one, into :attr:`_leftover` for :meth:`read_some`, up to
    :data:`READ_AHEAD` bytes); reading pauses when a view is full (until the next :meth:`fill`) or the read-ahead
    is, so that a small response that comes with its head costs no pause and resume of the socket's reading (two
    system calls). An idle connection reads on, so that it notices at once when the server closes it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        # a memoryview, never the bytearray itself: asyncio's SSL transport reads on into ``buffer[offset:]``,
        # which for a bytearray is a copy, and those bytes would be lost (seen on CPython 3.11)
        self._scratch = memoryview(bytearray(16 * 1024))
        self._head = bytearray()
        self._leftover = bytearray()  # body bytes received but not handed over yet
        self._in_body = False
        self._view: memoryview | None = None
        self._filled = 0
        self._reading_into_view = False
        self._waiter: asyncio.Future[bool] | None = None
        self._writable: asyncio.Event | None = None
        self.on_head: Callable[[], None] | None = None
        self.received = 0  # bytes of the current response received (head included)
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
        self.received += nbytes
        if self._reading_into_view:
            assert self._view is not None
            self._filled += nbytes
            if self._filled == len(self._view):
                self._pause()
            return
        if self._in_body:  # no view waiting: keep the bytes in order for the next view or read_some
            self._leftover += self._scratch[:nbytes]
            self._notify()
            if len(self._leftover) >= READ_AHEAD:
                self._pause()
            return
        self._head += self._scratch[:nbytes]
        end = self._head.find(b"\r\n\r\n")
        if end >= 0:
            self._leftover = self._head[end + 4:]
            del self._head[end + 4:]
            self._in_body = True
            if self.on_head is not None:
                self.on_head()
            self._notify()
            if len(self._leftover) >= READ_AHEAD:
                self._pause()
        elif len(self._head) > MAX_HEAD:
            self._fail(HttpConnectionError(f"response head longer than {MAX_HEAD} bytes"))

    def eof_received(self) -> bool:
        self._fail(HttpConnectionError("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or HttpConnectionError("the connection was closed"))
        if self._writable is not None:
            self._writable.set()

    def pause_writing(self) -> None:
        self._writable = asyncio.Event()

    def resume_writing(self) -> None:
        if self._writable is not None:
            self._writable.set()
            self._writable = None

    # -- driven by the client

    def _pause(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()
        self._notify()

    def _notify(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _fail(self, error: BaseException) -> None:
        self.reusable = False
        if self.error is None:
            self.error = error
        if self.on_head is not None:
            self.on_head()
        self._notify()

    def begin(self) -> None:
        """Reset for the next request and start reading its response."""
        assert self.transport is not None
        self._head.clear()
        self._leftover = bytearray()
        self._in_body = False
        self._view = None
        self._filled = 0
        self.received = 0
        self.transport.resume_reading()

    async def drain(self, timeout: float) -> None:
        """Wait until the transport takes more bytes (its buffer is below the high-water mark)."""
        while self._writable is not None:
            if self.error is not None:
                raise self.error
            with anyio.fail_after(timeout):
                await self._writable.wait()
        if self.error is not None:
            raise self.error

    async def head(self, timeout: float) -> bytes:
        """The response head (status line and headers), once it has arrived."""
        await self._wait(lambda: self._in_body, timeout)
        return bytes(self._head)

    def fill(self, view: memoryview) -> None:
        """Start filling ``view`` with body bytes (those already received first)."""
        assert self.transport is not None and self._in_body
        taken = min(len(self._leftover), len(view))
        view[:taken] = self._leftover[:taken]
        del self._leftover[:taken]
        self._view, self._filled = view, taken
        if taken < len(view) or len(self._leftover) < READ_AHEAD:
            self.transport.resume_reading()

    async def filled(self, timeout: float) -> memoryview:
        """The view given to :meth:`fill`, once it is full."""
        view = self._view
        assert view is not None
        await self._wait(lambda: self._filled == len(view), timeout)
        self._view = None
        return view

    async def read_some(self, timeout: float) -> bytearray:
        """Body bytes received so far, waiting for some when there are none."""
        assert self.transport is not None and self._in_body and self._view is None
        if not self._leftover:
            self.transport.resume_reading()
            await self._wait(lambda: bool(self._leftover), timeout)
        data, self._leftover = self._leftover, bytearray()
        self.transport.resume_reading()
        return data

    def forget_view(self) -> None:
        """Drop the view being filled (its buffer goes back to its owner); reading stays paused."""
        self._view = None
        self._filled = 0

    def leftover(self) -> int:
        return len(self._leftover)

    def idle(self) -> None:
        """Read on while idle: a close (or stray bytes) from the server makes the connection unusable."""
        assert self.transport is not None
        self.transport.resume_reading()

    async def _wait(self, done: Callable[[], bool], timeout: float) -> None:
        """Until ``done()``: a future the callbacks complete, with a timer (cheaper than an event and a cancel
        scope per wait, which a small request would pay three times)."""
        while not done():
            if self.error is not None:
                raise self.error
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _expire, waiter)
            try:
                arrived = await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not arrived:
                self.reusable = False
                raise TimeoutError(f"no data from the server for {timeout:g} s")

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def parse_head(head: bytes) -> tuple[int, str, dict[str, str], bool]:
    """(status, reason, headers with lower-case names, whether the server keeps the connection) of a response
    head; :class:`HttpConnectionError` if it is not HTTP/1.x."""
    status_line, _, header_block = head.partition(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or not code.isdigit():
        raise HttpConnectionError(f"not an HTTP/1.x response: {status_line[:100]!r}")
    headers: dict[str, str] = {}
    for line in header_block.decode("latin-1").split("\r\n"):
        name, colon, value = line.partition(":")
        if colon:
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
    keep = version != b"HTTP/1.0" and headers.get("connection", "").lower() != "close"
    return int(code), rest[4:].decode("latin-1", "replace"), headers, keep


class Response:
    """A response's status, reason and headers (names in lower case); its body is read with :meth:`read`, or
    received into buffers with :meth:`fill` / :meth:`filled`. :meth:`release` hands the connection back to the
    pool when the body was read whole, and closes it otherwise."""

    def __init__(self, client: HttpClient, where: tuple[str, str, int], connection: _Connection, method: str,
                 head: bytes) -> None:
        self._client = client
        self._where = where
        self._connection: _Connection | None = connection
        self.status, self.reason, self.headers, keep = parse_head(head)
        if not keep:
            connection.reusable = False
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length", "")
        if method == "HEAD" or self.status in (204, 304) or 100 <= self.status < 200:
            self.length: int | None = 0
        elif self.chunked:
            self.length = None
        elif length.isdigit():
            self.length = int(length)
        else:
            self.length = None  # delimited by the connection's end
            connection.reusable = False
        self.remaining = self.length
        self._timeout = client.read_timeout

    @property
    def connection(self) -> _Connection:
        if self._connection is None:
            raise HttpConnectionError("the response was released")
        return self._connection

    def fill(self, view: memoryview) -> None:
        """Start receiving the next ``len(view)`` body bytes into ``view`` (a plain ``Content-Length`` body)."""
        assert self.remaining is not None and len(view) <= self.remaining
        self.connection.fill(view)

    async def filled(self) -> memoryview:
        """The view given to :meth:`fill`, once full."""
        view = await self.connection.filled(self._timeout)
        assert self.remaining is not None
        self.remaining -= len(view)
        return view

    async def read(self, n: int = -1) -> bytes:
        """The next ``n`` body bytes (fewer at the end; ``b""`` after it), or all the rest when ``n < 0``."""
        if self.chunked:
            return await self._read_chunked(n)
        connection = self.connection
        if self.remaining is None:  # delimited by the connection's end: read whole at the first call
            pieces: list[bytes] = []
            with contextlib.suppress(HttpConnectionError):
                while True:
                    pieces.append(bytes(await connection.read_some(self._timeout)))
            self.remaining = 0
            return b"".join(pieces)
        want = self.remaining if n < 0 else min(n, self.remaining)
        if want == 0:
            return b""
        buffer = bytearray(want)
        connection.fill(memoryview(buffer))
        await self.filled()
        return bytes(buffer)

    async def _read_chunked(self, n: int) -> bytes:
        """A chunked body is read whole at the first call (S3 sends only small error bodies chunked)."""
        if self.remaining == 0:
            return b""
        connection = self.connection
        data = bytearray()
        out = bytearray()
        while True:
            while b"\r\n" not in data:
                data += await connection.read_some(self._timeout)
            line, _, rest = bytes(data).partition(b"\r\n")
            size = int(line.split(b";")[0].strip() or b"0", 16)
            data = bytearray(rest)
            while len(data) < size + 2:
                data += await connection.read_some(self._timeout)
            if size == 0:
                break
            out += data[:size]
            del data[: size + 2]
        # trailers: none expected; whatever follows the last chunk's CRLF must be the end of the message
        if data[:2] != b"\r\n" or len(data) > 2:
            connection.reusable = False
        self.remaining = 0
        self.chunked = False
        return bytes(out)

    def release(self) -> None:
        """Back to the pool when the body was read whole and the connection may be reused; else closed."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        connection.forget_view()
        if self.remaining == 0 and connection.reusable and not connection.leftover():
            connection.idle()
            self._client._keep(self._where, connection)
        else:
            connection.close()

    def close(self) -> None:
        """Close the connection (the body is not wanted)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class HttpClient:
    """Sends requests over kept-alive connections, at most ``max_idle`` idle ones per host (see the module
    docstring). Bound to the event loop it first runs in: in a new loop, the old connections are dropped."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, max_idle: int = 16,
                 connect_timeout: float = 20.0, read_timeout: float = 120.0,
                 user_agent: str = "aiojobstore-leanhttp/1") -> None:
        self.ssl_context = ssl_context
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.user_agent = user_agent
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._origins: dict[tuple[str, str], tuple[str, str, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._default_ssl: ssl.SSLContext | None = None

    async def request(self, method: str, url: str, headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
                      body: Body | None = None, *, on_sent: SentCallback | None = None) -> Response:
        """Send ``method url`` with ``headers`` (``Host``, ``User-Agent``, ``Accept-Encoding`` and
        ``Content-Length`` are added) and ``body``; return the response once its head has arrived. ``on_sent(n)``
        is awaited as each slice of a large body goes out (``n`` bytes more)."""
        scheme, _, rest = url.partition("://")
        netloc, slash, target = rest.partition("/")
        where = self._origins.get((scheme, netloc))
        if where is None:
            parts = urlsplit(f"{scheme}://{netloc}")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"cannot send to {parts.scheme}: URLs")
            where = self._origins[scheme, netloc] = (
                parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        target = slash + target if slash else "/" + target
        lines = [f"{method} {target} HTTP/1.1", f"Host: {netloc}", f"User-Agent: {self.user_agent}",
                 "Accept-Encoding: identity"]
        items = headers.items() if isinstance(headers, Mapping) else headers
        lines += [f"{name}: {value}" for name, value in items]
        if body is not None:
            lines.append(f"Content-Length: {body.length if isinstance(body, FileRange) else len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        safe = method in ("GET", "HEAD")
        while True:
            connection = self._take_idle(where)
            reused = connection is not None
            if connection is None:
                connection = await self._connect(where)
            try:
                response_head = await self._exchange(connection, head, body, on_sent)
                return Response(self, where, connection, method, response_head)
            except OSError:  # TimeoutError and HttpConnectionError included
                connection.close()
                if not (reused and safe and connection.received == 0):
                    raise
            except BaseException:
                connection.close()
                raise

    async def _exchange(self, connection: _Connection, head: bytes, body: Body | None,
                        on_sent: SentCallback | None = None) -> bytes:
        """Send the request and return the response head."""
        connection.begin()
        transport = connection.transport
        assert transport is not None
        size = 0 if body is None else body.length if isinstance(body, FileRange) else len(body)
        if body is None or (size <= INLINE_BODY and not isinstance(body, FileRange)):
            transport.write(head + bytes(body) if body else head)
        elif transport.get_extra_info("sslcontext") is None and transport.get_write_buffer_size() == 0:
            await self._send_raw(connection, head, body, on_sent)
        else:
            transport.write(head)
            await self._write_sliced(connection, body, on_sent)
        return await connection.head(self.read_timeout)

    async def _send_raw(self, connection: _Connection, head: bytes, body: Body,
                        on_sent: SentCallback | None = None) -> None:
        """Head and body from one worker thread, straight on the socket (see :func:`_send_on_socket`); stops
        early when the server answers (or the connection fails) before the body is out."""
        sock = connection.transport.get_extra_info("socket") if connection.transport else None
        if sock is None:
            raise HttpConnectionError("the connection has no socket")
        stop = threading.Event()
        connection.on_head = stop.set
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        # the thread's own descriptor of the socket: the transport closes its own when the connection is lost,
        # and the number must not be reused under the thread's feet
        fd = os.dup(sock.fileno())
        out = _SentCounter(loop) if on_sent is not None else None

        def run() -> None:
            result: bool | BaseException
            try:
                result = _send_on_socket(fd, head, body, stop, self.read_timeout, out)
            except BaseException as error:  # handed to the loop
                result = error
            finally:
                os.close(fd)
            loop.call_soon_threadsafe(_settle, done, result)

        thread = threading.Thread(target=run, name="aiojobstore-leanhttp-send", daemon=True)
        try:
            thread.start()
            try:
                complete = await (asyncio.shield(done) if out is None or on_sent is None
                                  else out.report_until(done, on_sent))
            except BaseException:
                stop.set()  # the socket stays open until the thread has let go of it
                with anyio.CancelScope(shield=True):
                    with contextlib.suppress(BaseException):
                        await done
                connection.reusable = False
                raise
        finally:
            connection.on_head = None
        if not complete:
            connection.reusable = False  # answered (or broken) before the whole body was sent

    async def _write_sliced(self, connection: _Connection, body: Body, on_sent: SentCallback | None = None) -> None:
        """The body through the transport in :data:`SLICE` pieces, with flow control (TLS)."""
        transport = connection.transport
        assert transport is not None
        if not isinstance(body, FileRange):
            view = memoryview(body).cast("B")
            for start in range(0, len(view), SLICE):
                await connection.drain(self.read_timeout)
                piece = view[start : start + SLICE]
                transport.write(piece)
                if on_sent is not None:
                    await on_sent(len(piece))
            return
        before = await anyio.to_thread.run_sync(_file_state, body.path)
        fd = await anyio.to_thread.run_sync(os.open, body.path, os.O_RDONLY)
        try:
            value = 0
            done = 0
            last = b""
            while done < body.length:
                want = min(SLICE, body.length - done)
                data, value = await anyio.to_thread.run_sync(_read_slice, body, fd, want, done, value)
                done += len(data)
                if done == body.length:
                    data, last = data[:-1], data[-1:]
                await connection.drain(self.read_timeout)
                transport.write(data)
                if on_sent is not None and data:
                    await on_sent(len(data))
        finally:
            os.close(fd)
        try:
            await anyio.to_thread.run_sync(_check_range, body, before, value)
        except BodyChanged:
            connection.reusable = False
            raise
        transport.write(last)

    async def _connect(self, where: tuple[str, str, int]) -> _Connection:
        scheme, host, port = where
        loop = asyncio.get_running_loop()
        context = None
        if scheme == "https":
            if self.ssl_context is None and self._default_ssl is None:
                self._default_ssl = ssl.create_default_context()
            context = self.ssl_context or self._default_ssl
        try:
            with anyio.fail_after(self.connect_timeout):
                _transport, connection = await loop.create_connection(_Connection, host, port, ssl=context)
        except TimeoutError:
            raise TimeoutError(f"connecting to {host}:{port} took longer than {self.connect_timeout:g} s") from None
        return connection

    def _take_idle(self, where: tuple[str, str, int]) -> _Connection | None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new loop (a fork, a new portal): the old connections are not ours
            self._idle.clear()
            self._loop = loop
        idle = self._idle.get(where)
        while idle:
            connection = idle.pop()
            if connection.error is None and connection.transport is not None and \
                    not connection.transport.is_closing() and not connection.leftover():
                return connection
            connection.close()
        return None

    def _keep(self, where: tuple[str, str, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(where, [])
        if len(idle) < self.max_idle and asyncio.get_running_loop() is self._loop:
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


def _settle(future: asyncio.Future[bool], result: bool | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _read_slice(body: FileRange, fd: int, want: int, done: int, value: int) -> tuple[bytes, int]:
    """``want`` bytes of ``body`` from ``done`` on, and the CRC32C continued over them (in a worker thread)."""
    data = os.pread(fd, want, body.offset + done)
    if not data:
        raise BodyChanged(f"{body.path} shrank while it was being uploaded")
    return data, crc32c(data, value)


def _file_state(path: str) -> tuple[int, int, int, int]:
    """What a write to the file changes: its size, modification and change times, and inode."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


class _SentCounter:
    """Bytes of a body the sending thread has put on the socket, reported to the loop as they go."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.total = 0
        self.wake = asyncio.Event()

    def add(self, n: int) -> None:
        """In the sending thread: ``n`` more bytes are out."""
        self.total += n
        self.loop.call_soon_threadsafe(self.wake.set)

    async def _woken(self) -> bool:
        return await self.wake.wait()

    async def report_until(self, done: asyncio.Future[bool], on_sent: SentCallback) -> bool:
        """Await ``on_sent`` with each increase until the thread is ``done``; its result. A cancellation leaves
        ``done`` running (the caller waits for the thread)."""
        reported = 0
        while True:
            waiter: asyncio.Future[bool] = asyncio.ensure_future(self._woken())
            try:
                await asyncio.wait((done, waiter), return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            self.wake.clear()
            if self.total > reported:
                step, reported = self.total - reported, self.total
                await on_sent(step)
            if done.done():
                return done.result()


def _send_on_socket(fd: int, head: bytes, body: Body, stop: threading.Event, timeout: float,
                    out: _SentCounter | None = None) -> bool:
    """Blocking, in a worker thread: ``head`` and ``body`` on the non-blocking socket ``fd`` (``sendfile`` for a
    :class:`FileRange`); whether all of it went out. Stops early, quietly, once ``stop`` is set (the server
    answered, or the request is given up) or the connection fails (its answer, if any, tells why). A file
    range's last byte is held back until the range is checked (:func:`_check_range`), so that a server cannot
    complete a request whose body changed while it was sent."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)

    def writable() -> bool:
        waited = 0.0
        while not stop.is_set():
            if poller.poll(100):
                return True
            waited += 0.1
            if waited >= timeout:
                raise TimeoutError(f"the server took no data for {timeout:g} s")
        return False

    def send_all(view: memoryview, counted: bool = True) -> bool:
        done = 0
        while done < len(view):
            try:
                sent = os.write(fd, view[done : done + SLICE])
            except BlockingIOError:
                if not writable():
                    return False
                continue
            done += sent
            if out is not None and counted:
                out.add(sent)
        return True

    def send_file(source: int, offset: int, length: int) -> bool:
        done = 0
        while done < length:
            try:
                sent = os.sendfile(fd, source, offset + done, min(chunk, length - done))
            except BlockingIOError:
                if not writable():
                    return False
                continue
            if sent == 0:
                raise BodyChanged(f"{body.path if isinstance(body, FileRange) else fd} shrank while it was "
                                  "being uploaded")
            done += sent
            if out is not None:
                out.add(sent)
        return True

    chunk = SLICE if out is not None else 16 * SLICE  # progress per slice, when someone watches
    try:
        if not send_all(memoryview(head), counted=False):
            return False
        if not isinstance(body, FileRange):
            return send_all(memoryview(body).cast("B"))
        if body.length == 0:
            return True
        before = _file_state(body.path)
        source = os.open(body.path, os.O_RDONLY)
        try:
            if not send_file(source, body.offset, body.length - 1):
                return False
            _check_range(body, before, file_range_crc32c(body.path, body.offset, body.length))
            return send_file(source, body.offset + body.length - 1, 1)
        finally:
            os.close(source)
    except (BrokenPipeError, ConnectionResetError):
        return False


def _check_range(body: FileRange, before: tuple[int, int, int, int], crc: int) -> None:
    """:class:`BodyChanged` unless the file is as it was (``before``) and the range's CRC32C is ``body.crc``."""
    if crc != body.crc or _file_state(body.path) != before:
        raise BodyChanged(f"{body.path} changed while it was being uploaded; upload it again")
