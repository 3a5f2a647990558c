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
A connection that breaks raises :class:`RangeBroken` and the caller resumes from
:attr:`DownloadRange.position <aiojobstore.transfer.DownloadRange.position>`. Connections (kept alive and
reused per host; TLS through asyncio's SSL transport, which also reads into the buffers it is given) are
:mod:`aiojobstore.leanhttp`'s.
"""

from __future__ import annotations

import contextlib
import re
import ssl
from collections.abc import Mapping
from typing import Protocol

from .errors import TransferError
from .leanhttp import HttpClient, Response

USER_AGENT = "aiojobstore-rangeget/1"
#: Most of an error body kept for the message.
MAX_ERROR_BODY = 4 * 1024

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


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


class RangeGetter:
    """Sends ranged GETs over kept-alive connections (:class:`~aiojobstore.leanhttp.HttpClient`, at most
    ``max_idle`` idle ones per host) and receives the bodies into the buffers of a :class:`BufferedRange`.
    Bound to the event loop it first runs in."""

    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, max_idle: int = 16,
                 connect_timeout: float = 20.0, read_timeout: float = 120.0) -> None:
        self.http = HttpClient(ssl_context=ssl_context, max_idle=max_idle, connect_timeout=connect_timeout,
                               read_timeout=read_timeout, user_agent=USER_AGENT)

    async def get(self, url: str, headers: Mapping[str, str], start: int, end: int, into: BufferedRange) -> None:
        """GET bytes ``[start, end)`` of ``url`` (``headers`` must include the ``Range``) and hand them to
        ``into.write_buffer`` in order, in buffers of its own."""
        try:
            response = await self.http.request("GET", url, headers)
        except OSError as error:  # TimeoutError included
            raise RangeBroken(f"GET {url.partition('?')[0]}: {error or type(error).__name__}") from error
        except ValueError as error:
            raise RangeRefused(str(error)) from None
        try:
            await self._check(response, start, end)
            await self._receive(response, start, end, into)
        finally:
            response.release()  # kept when read whole, else closed

    async def _check(self, response: Response, start: int, end: int) -> None:
        """Raise :class:`RangeRefused` unless ``response`` is a plain 206 for ``[start, end)``; the refusal
        carries the status and (up to :data:`MAX_ERROR_BODY` bytes) the body."""
        headers = response.headers
        if response.status != 206:
            body = b""
            if response.length is not None and 0 < response.length <= MAX_ERROR_BODY:
                with contextlib.suppress(OSError):  # the status says enough; the body only adds detail
                    body = await response.read()
            response.close()
            raise RangeRefused(f"HTTP {response.status} {response.reason}", status=response.status, body=body)
        if response.chunked or headers.get("content-encoding", "identity").lower() != "identity":
            raise RangeRefused("the response body is encoded (transfer or content encoding)", status=206)
        match = _CONTENT_RANGE.match(headers.get("content-range", ""))
        if (response.length != end - start or match is None
                or (int(match.group(1)), int(match.group(2)) + 1) != (start, end)):
            raise RangeRefused(f"the response is not bytes {start}-{end - 1}: Content-Length "
                               f"{headers.get('content-length')!r}, Content-Range {headers.get('content-range')!r}",
                               status=206)

    async def _receive(self, response: Response, start: int, end: int, into: BufferedRange) -> None:
        """The body into two alternating buffers: one fills from the socket while the other is written."""
        views = into.buffers(2)
        try:
            position = start
            which = 0
            response.fill(views[which][: min(len(views[which]), end - position)])
            while position < end:
                try:
                    view = await response.filled()
                except OSError as error:
                    raise RangeBroken(f"after {position - start} of {end - start} bytes: "
                                      f"{error or type(error).__name__}") from error
                following = position + len(view)
                if following < end:
                    which ^= 1
                    response.fill(views[which][: min(len(views[which]), end - following)])
                await into.write_buffer(position, view)
                position = following
        finally:
            response.connection.forget_view()
            for view in views:
                view.release()

    def close(self) -> None:
        """Close every idle connection."""
        self.http.close()
