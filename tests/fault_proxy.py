"""A loopback HTTP/1.1 proxy that injects faults between a client and a real server (S3 or the GCS emulator).

Random faults (``rate``): a 503 SlowDown, a 500 InternalError, a connection reset before forwarding, or (for GETs)
a reset halfway through the response body. Targeted faults (:class:`FaultRule`) match requests by method, path
and query and can also let the request through and lose its *answer* — the server applied the request, the
client never hears so (``lost-answer``: the connection is reset once the server has answered) — or hold a request
at the proxy, before or after the server applied it, until the test releases it (``hold-before``,
``hold-after``): the way to cancel a client at a precise await of a commit path. Every connection carries one
request (``Connection: close``). Requests whose User-Agent product is ``refuse_agent`` are answered
``403 SignatureDoesNotMatch``, as an endpoint that cannot verify them would.
"""

from __future__ import annotations

import collections
import contextlib
import random
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

FATES = ("503", "500", "reset", "cut", "lost-answer", "hold-before", "hold-after")


@dataclass
class FaultRule:
    """Inject ``fate`` into requests whose method is ``method`` (any if ``None``) and whose request target (path
    and query) matches the regular expression ``target`` (and, if given, for which ``when(head)`` is true), at
    most ``times`` times (``None``: always), each with probability ``rate``."""

    fate: str
    method: str | None = None
    target: str = ""
    times: int | None = 1
    rate: float = 1.0
    when: Callable[[bytes], bool] | None = None
    hits: int = 0
    #: Set by the proxy when a held request reached it (``hold-*``); set :attr:`release` to let it go on.
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.fate not in FATES:
            raise ValueError(f"unknown fate {self.fate!r}: one of {FATES}")

    def matches(self, method: str, target: str, head: bytes, rng: random.Random) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and method != self.method:
            return False
        if self.target and not re.search(self.target, target):
            return False
        if self.when is not None and not self.when(head):
            return False
        return rng.random() < self.rate


def _read_head(sock: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data


def _header(head: bytes, wanted: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == wanted:
            return value.strip()
    return None


def _content_length(head: bytes) -> int:
    value = _header(head, b"content-length")
    return int(value) if value else 0


def _user_agent(head: bytes) -> str:
    """The product name of a request's User-Agent (``aiojobstore-rangeget``, ``Botocore``, ...)."""
    value = _header(head, b"user-agent")
    return value.split(b"/", 1)[0].decode("latin-1") if value else ""


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _read_body(client: socket.socket, head_part: bytes, body: bytes) -> bytes | None:
    """The rest of a request body (Content-Length or chunked); ``None`` if the client went away."""
    if (_header(head_part, b"transfer-encoding") or b"").lower() == b"chunked":
        while not body.endswith(b"0\r\n\r\n"):
            chunk = client.recv(1 << 20)
            if not chunk:
                return None
            body += chunk
        return body
    remaining = _content_length(head_part) - len(body)
    while remaining > 0:
        chunk = client.recv(min(remaining, 1 << 20))
        if not chunk:
            return None
        remaining -= len(chunk)
        body += chunk
    return body


class FaultProxy:
    """See the module docstring. ``rules`` are tried in order before the random faults."""

    def __init__(self, upstream: str, *, rate: float = 0.2, seed: int = 7, rules: list[FaultRule] | None = None,
                 hold_timeout: float = 60.0) -> None:
        host_port = upstream.split("//", 1)[1].rstrip("/")
        host, _, port = host_port.partition(":")
        self.upstream = (host, int(port or 80))
        self.rate = rate
        self.rules: list[FaultRule] = list(rules or [])
        self.hold_timeout = hold_timeout
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: collections.Counter[str] = collections.Counter({"503": 0, "500": 0, "reset": 0, "cut": 0})
        self.requests = 0
        self.methods: collections.Counter[str] = collections.Counter()
        self.targets: list[tuple[str, str]] = []  # (method, path and query) of every request, in arrival order
        self.agents: collections.Counter[str] = collections.Counter()  # requests per User-Agent product name
        self.refuse_agent: str | None = None
        self.refused = 0
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.peak_in_flight: collections.Counter[str] = collections.Counter()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.endpoint_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped = True
        for rule in self.rules:
            rule.release.set()
        with contextlib.suppress(OSError):  # wakes the accept() blocked in the proxy's thread
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _fate(self, method: bytes, target: str, head: bytes) -> tuple[str, FaultRule | None]:
        with self.lock:
            self.requests += 1
            self.methods[method.decode()] += 1
            self.targets.append((method.decode(), target))
            for rule in self.rules:
                if rule.matches(method.decode(), target, head, self.random):
                    rule.hits += 1
                    self.injected[rule.fate] += 1
                    return rule.fate, rule
            if not self.rate or self.random.random() >= self.rate:
                return "pass", None
            fates = ["503", "500", "reset"] + (["cut", "cut"] if method == b"GET" else [])
            fate = self.random.choice(fates)
            self.injected[fate] += 1
            return fate, None

    def _serve(self, client: socket.socket) -> None:
        try:
            head = _read_head(client)
            if head is None:
                client.close()
                return
            head_part, _, body = head.partition(b"\r\n\r\n")
            method, target = head_part.split(b" ", 2)[:2]
            agent = _user_agent(head_part)
            with self.lock:
                self.agents[agent] += 1
                refused = agent == self.refuse_agent
                self.refused += refused
            fate, rule = ("403", None) if refused else self._fate(method, target.decode("latin-1"), head_part)
            with self._counted(method.decode()):
                self._relay(client, head_part, body, method, fate, rule)
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

    def _hold(self, rule: FaultRule | None) -> None:
        assert rule is not None
        rule.held.set()
        rule.release.wait(self.hold_timeout)

    def _relay(self, client: socket.socket, head_part: bytes, body: bytes, method: bytes, fate: str,
               rule: FaultRule | None) -> None:
        try:
            if b"\r\nexpect: 100-continue" in head_part.lower():
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                head_part = b"\r\n".join(line for line in head_part.split(b"\r\n")
                                          if not line.lower().startswith(b"expect:"))
            if fate == "reset" and _content_length(head_part) <= len(body):
                _reset(client)
                return
            full = _read_body(client, head_part, body)
            if full is None:
                client.close()
                return
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
            if fate == "hold-before":
                self._hold(rule)
            lines = [line for line in head_part.split(b"\r\n") if not line.lower().startswith(b"connection:")]
            request = b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + full
            with socket.create_connection(self.upstream) as upstream:
                upstream.sendall(request)
                if fate in ("lost-answer", "hold-after"):
                    answer = b""
                    while chunk := upstream.recv(1 << 20):  # the server has applied the request and answered
                        answer += chunk
                    if fate == "hold-after":
                        self._hold(rule)
                        client.sendall(answer)
                        client.close()
                    else:
                        _reset(client)
                    return
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
