"""Pytest plugin: real S3 servers on 127.0.0.1 for the tests (started and stopped here, nothing mocked).

- ``moto_server``: moto's S3 server (``ThreadedMotoServer``) on a free port, once per session.
- ``s3_target``: a fresh, not yet created bucket on it, as a ``StoreTarget`` (joins the contract suite).
- ``ceph_rgw``: Ceph's RADOS Gateway (``tests/servers/ceph_rgw.py``), once per session; tests that use it are
  skipped with the reason when Ceph is not installed (``tests/servers/install-ceph.sh``).
- ``FaultProxy``: a loopback HTTP proxy that answers 500/503 SlowDown or resets the connection on a fraction of
  the requests (before forwarding them, or in the middle of a GET's response body).
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.servers.ceph_rgw import CephRGW, ceph_available
from tests.support import StoreTarget, free_port

MOTO_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


@dataclass
class S3Server:
    """Where a test S3 server listens and how to log in."""

    name: str
    endpoint_url: str
    aws_access_key_id: str
    aws_secret_access_key: str
    region_name: str = "us-east-1"

    def options(self, **extra: object) -> dict[str, object]:
        return {"endpoint_url": self.endpoint_url, "aws_access_key_id": self.aws_access_key_id,
                "aws_secret_access_key": self.aws_secret_access_key, "region_name": self.region_name, **extra}

    def target(self, **extra: object) -> StoreTarget:
        """A fresh bucket (not created yet: ``initialize`` creates it) with a prefix."""
        return StoreTarget(f"s3://ajs-{uuid.uuid4().hex[:16]}/store", self.options(**extra))


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("MOTO_ALLOW_NONEXISTENT_REGION", "true")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server("moto", f"http://127.0.0.1:{port}", "testing", "testing")
    finally:
        server.stop()


@pytest.fixture
def s3_target(moto_server: S3Server) -> StoreTarget:
    """A fresh S3 location on moto; small parts so multipart paths run with little data."""
    return moto_server.target()


@pytest.fixture(scope="session")
def ceph_rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    reason = ceph_available()
    if reason:
        pytest.skip(f"Ceph RGW tests skipped: {reason}")
    cluster = CephRGW(tmp_path_factory.mktemp("ceph"))
    try:
        cluster.start()
    except Exception:
        cluster.stop(keep=True)
        raise
    try:
        yield S3Server("ceph", cluster.endpoint_url, cluster.access_key, cluster.secret_key)
    finally:
        cluster.stop()


# --------------------------------------------------------------------------------------------- fault injection


def _read_head(sock: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _user_agent(head: bytes) -> str:
    """The product name of a request's User-Agent (``aiojobstore-rangeget``, ``Botocore``, ...)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"user-agent":
            return value.strip().split(b"/", 1)[0].decode("latin-1")
    return ""


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class FaultProxy:
    """A loopback HTTP/1.1 proxy in front of ``upstream`` that injects failures into ``rate`` of the requests:
    a 503 SlowDown, a 500 InternalError, a connection reset before forwarding, or (for GETs) a reset halfway
    through the response body. Every connection carries one request (``Connection: close``). Requests whose
    User-Agent product is ``refuse_agent`` are answered ``403 SignatureDoesNotMatch``, as an endpoint that cannot
    verify them would."""

    def __init__(self, upstream: str, *, rate: float = 0.2, seed: int = 7) -> None:
        host_port = upstream.split("//", 1)[1].rstrip("/")
        host, _, port = host_port.partition(":")
        self.upstream = (host, int(port or 80))
        self.rate = rate
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: dict[str, int] = {"503": 0, "500": 0, "reset": 0, "cut": 0}
        self.requests = 0
        self.methods: collections.Counter[str] = collections.Counter()
        self.agents: collections.Counter[str] = collections.Counter()  # requests per User-Agent product name
        self.refuse_agent: str | None = None
        self.refused = 0
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.peak_in_flight: collections.Counter[str] = collections.Counter()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.endpoint_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped = True
        self.sock.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _fate(self, method: bytes) -> str:
        with self.lock:
            self.requests += 1
            self.methods[method.decode()] += 1
            if self.random.random() >= self.rate:
                return "pass"
            fates = ["503", "500", "reset"] + (["cut", "cut"] if method == b"GET" else [])
            fate = self.random.choice(fates)
            self.injected[fate] += 1
            return fate

    def _serve(self, client: socket.socket) -> None:
        try:
            head = _read_head(client)
            if head is None:
                client.close()
                return
            head_part, _, body = head.partition(b"\r\n\r\n")
            method = head_part.split(b" ", 1)[0]
            agent = _user_agent(head_part)
            with self.lock:
                self.agents[agent] += 1
                refused = agent == self.refuse_agent
                self.refused += refused
            fate = "403" if refused else self._fate(method)
            with self._counted(method.decode()):
                self._relay(client, head_part, body, method, fate)
        except OSError:
            client.close()

    @contextlib.contextmanager
    def _counted(self, method: str) -> Iterator[None]:
        with self.lock:
            self.in_flight[method] += 1
            self.peak_in_flight[method] = max(self.peak_in_flight[method], self.in_flight[method])
        try:
            yield
        finally:
            with self.lock:
                self.in_flight[method] -= 1

    def _relay(self, client: socket.socket, head_part: bytes, body: bytes, method: bytes, fate: str) -> None:
        try:
            remaining = _content_length(head_part) - len(body)
            if b"\r\nexpect: 100-continue" in head_part.lower():
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                head_part = b"\r\n".join(line for line in head_part.split(b"\r\n")
                                          if not line.lower().startswith(b"expect:"))
            if fate == "reset" and remaining <= 0:
                _reset(client)
                return
            while remaining > 0:
                chunk = client.recv(min(remaining, 1 << 20))
                if not chunk:
                    client.close()
                    return
                remaining -= len(chunk)
                body += chunk if fate == "pass" or fate == "cut" else b""
            if fate == "reset":  # the whole request was sent; the connection dies before any response
                _reset(client)
                return
            if fate in ("503", "500", "403"):
                code, reason, err = {"503": ("503", "Slow Down", "SlowDown"),
                                     "500": ("500", "Internal Server Error", "InternalError"),
                                     "403": ("403", "Forbidden", "SignatureDoesNotMatch")}[fate]
                payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{err}</Code>'
                           f"<Message>injected by FaultProxy</Message></Error>").encode()
                client.sendall(f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\n"
                               f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                               + (payload if method != b"HEAD" else b""))
                client.close()
                return
            lines = [line for line in head_part.split(b"\r\n") if not line.lower().startswith(b"connection:")]
            request = b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body
            with socket.create_connection(self.upstream) as upstream:
                upstream.sendall(request)
                relayed = 0
                while True:
                    chunk = upstream.recv(1 << 20)
                    if not chunk:
                        break
                    if fate == "cut" and relayed + len(chunk) > 64 * 1024:
                        client.sendall(chunk[: max(0, 64 * 1024 - relayed)])
                        _reset(client)
                        return
                    client.sendall(chunk)
                    relayed += len(chunk)
            client.close()
        except OSError:
            client.close()
