"""aiojobstore.rangeget against a real HTTP/1.1 server on loopback (plain and TLS), written into real
DownloadTargets: the plain case, kept-alive connections, and every answer it must refuse or survive."""

from __future__ import annotations

import contextlib
import http.server
import itertools
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from aiojobstore.rangeget import USER_AGENT, RangeBroken, RangeGetter, RangeRefused
from aiojobstore.transfer import DownloadRange, DownloadTarget, MiB, Part, Progress, crc32c
from tests.support import serving

BLOB = os.urandom(9 * MiB + 123)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves BLOB at /blob; other paths misbehave in the way their name says."""

    protocol_version = "HTTP/1.1"
    server: _BlobServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.client_address[1], self.path, self.headers.get("User-Agent")))
        first, last = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
        body = BLOB[first : last + 1]
        mode = self.path.strip("/")
        if mode == "missing":
            payload = b"<Error><Code>NoSuchKey</Code></Error>"
            self.send_response(404)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if mode == "whole":  # ignores the Range header
            self.send_response(200)
            self.send_header("Content-Length", str(len(BLOB)))
            self.end_headers()
            self.wfile.write(BLOB)
            return
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first + (mode == 'shifted')}-{last}/{len(BLOB)}")
        if mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "cut":  # half the body, then the connection drops
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "stall":  # the head, then silence
            self.wfile.flush()
            self.server.release.wait(10)
            self.close_connection = True
            return
        self.wfile.write(body)
        if mode == "forget":  # closes the kept-alive connection afterwards without saying so
            self.close_connection = True


class _BlobServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[int, str, str | None]] = []
        self.release = threading.Event()


@contextlib.contextmanager
def blob_server(tls: ssl.SSLContext | None = None) -> Iterator[tuple[_BlobServer, str]]:
    server = _BlobServer()
    with serving(server, tls, on_exit=server.release.set) as url:
        yield server, url


@contextlib.contextmanager
def target(tmp_path: Path) -> Iterator[DownloadTarget]:
    file = DownloadTarget(str(tmp_path / "out"), len(BLOB), direct_io=True)
    try:
        yield file
    finally:
        file.discard()


async def get(getter: RangeGetter, url: str, file: DownloadTarget, start: int, end: int) -> DownloadRange:
    """One range through ``getter`` into ``file``; the range is closed (its buffers given back) either way."""
    rng = DownloadRange(file, Part(0, start, end - start), Progress(None))
    try:
        await getter.get(url, {"Range": f"bytes={start}-{end - 1}"}, start, end, rng)
    finally:
        rng.close()
    return rng


async def test_ranges_arrive_whole_and_in_order_over_one_kept_alive_connection(tmp_path: Path) -> None:
    getter = RangeGetter()
    bounds = [0, 4 * MiB, 4 * MiB + 1, 9 * MiB, len(BLOB)]  # whole buffers, a 1-byte range, unaligned starts
    with blob_server() as (server, url), target(tmp_path) as file:
        crcs = [(await get(getter, url + "/blob", file, a, b)).crc for a, b in itertools.pairwise(bounds)]
        file.commit()
        getter.close()
    assert (tmp_path / "out").read_bytes() == BLOB
    assert crcs == [crc32c(BLOB[a:b]) for a, b in itertools.pairwise(bounds)]
    assert len({port for port, _, _ in server.requests}) == 1  # one connection, kept alive
    assert {agent for _, _, agent in server.requests} == {USER_AGENT}


async def test_a_connection_the_server_dropped_while_idle_is_replaced(tmp_path: Path) -> None:
    getter = RangeGetter()
    with blob_server() as (server, url), target(tmp_path) as file:
        await get(getter, url + "/forget", file, 0, MiB)
        await anyio.sleep(0.05)  # let the server's close arrive
        await get(getter, url + "/forget", file, MiB, 2 * MiB)
        getter.close()
    assert len(server.requests) == 2 and len({port for port, _, _ in server.requests}) == 2


async def test_a_connection_reused_many_times_carries_ranges_from_several_tasks(tmp_path: Path) -> None:
    getter = RangeGetter(max_idle=2)
    with blob_server() as (server, url), target(tmp_path) as file:
        bounds = [0, 3 * MiB, 6 * MiB, len(BLOB)]
        for _round in range(3):
            async with anyio.create_task_group() as tasks:
                for start, end in itertools.pairwise(bounds):
                    tasks.start_soon(get, getter, url + "/blob", file, start, end)
        getter.close()
        file.commit()
    assert (tmp_path / "out").read_bytes() == BLOB
    assert len(server.requests) == 9
    assert len({port for port, _, _ in server.requests}) <= 3 + 2 * 1  # at most 2 idle kept, so few new ones


@pytest.mark.parametrize(("mode", "message"), [
    ("missing", "HTTP 404"),
    ("whole", "HTTP 200"),
    ("chunked", "encoded"),
    ("shifted", "not bytes"),
])
async def test_answers_other_than_a_plain_206_are_refused_and_not_kept(tmp_path: Path, mode: str,
                                                                       message: str) -> None:
    getter = RangeGetter()
    with blob_server() as (server, url), target(tmp_path) as file:
        with pytest.raises(RangeRefused, match=message) as refused:
            await get(getter, url + "/" + mode, file, 0, MiB)
        await get(getter, url + "/blob", file, 0, MiB)  # the refused connection is not reused
        getter.close()
    assert len({port for port, _, _ in server.requests}) == 2
    if mode == "missing":
        assert refused.value.status == 404 and b"NoSuchKey" in refused.value.body


async def test_a_dropped_connection_keeps_the_whole_buffers_received(tmp_path: Path) -> None:
    getter = RangeGetter()
    with blob_server() as (_server, url), target(tmp_path) as file:
        rng = DownloadRange(file, Part(0, 0, len(BLOB)), Progress(None))
        try:
            with pytest.raises(RangeBroken, match="after"):
                await getter.get(url + "/cut", {"Range": f"bytes=0-{len(BLOB) - 1}"}, 0, len(BLOB), rng)
        finally:
            rng.close()
        assert rng.position == 4 * MiB  # half the body is ~4.5 MiB: one whole 4 MiB buffer was written
        assert rng.crc == crc32c(BLOB[: rng.position])
        assert Path(file.temp).read_bytes()[: rng.position] == BLOB[: rng.position]
        getter.close()


async def test_a_silent_server_times_out(tmp_path: Path) -> None:
    getter = RangeGetter(read_timeout=0.3)
    with blob_server() as (_server, url), target(tmp_path) as file:
        started = time.monotonic()
        with pytest.raises(RangeBroken, match="no data from the server"):
            await get(getter, url + "/stall", file, 0, MiB)
        assert time.monotonic() - started < 9  # gave up on its own, not when the server let go
        getter.close()


async def test_a_cancelled_get_closes_its_connection(tmp_path: Path) -> None:
    getter = RangeGetter()
    with blob_server() as (server, url), target(tmp_path) as file:
        with anyio.move_on_after(0.3) as scope:
            await get(getter, url + "/stall", file, 0, MiB)
        assert scope.cancelled_caught
        assert not any(getter.http._idle.values())
        await get(getter, url + "/blob", file, 0, MiB)
        getter.close()
    assert len({port for port, _, _ in server.requests}) == 2


async def test_tls(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    with blob_server(server_context) as (_server, url), target(tmp_path) as file:
        with pytest.raises(RangeBroken, match="CERTIFICATE_VERIFY_FAILED"):  # not trusted by default
            await get(RangeGetter(), url + "/blob", file, 0, MiB)
        getter = RangeGetter(ssl_context=client_context)
        await get(getter, url + "/blob", file, 0, 5 * MiB)
        await get(getter, url + "/blob", file, 5 * MiB, len(BLOB))
        getter.close()
        file.commit()
    assert (tmp_path / "out").read_bytes() == BLOB
