"""Helpers shared by the test modules."""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.servers.ceph_rgw import CephRGW


@dataclass
class StoreTarget:
    """A fresh, empty store location and the ``open_store`` options that reach it."""

    locator: str
    options: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str, *, any_status: bool = True) -> bool:
    """Whether an HTTP server answers at ``url`` (with ``any_status=False``: answers 200)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return any_status or response.status == 200
    except urllib.error.HTTPError:
        return any_status
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def server_process(name: str, command: list[str], url: str, *, timeout: float = 60,
                   any_status: bool = True) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (a server on 127.0.0.1) until the block ends; fail the test if it exits or doesn't answer
    at ``url`` within ``timeout`` seconds. Its output goes to a log file named in the failure."""
    log_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"{name}-{os.getpid()}-{free_port()}.log")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            while not answers(url, any_status=any_status):
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with {process.returncode}; see {log_path}")
                if time.monotonic() > deadline:
                    pytest.fail(f"{name} did not answer on {url} within {timeout:.0f} s; see {log_path}")
                time.sleep(0.1)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephRGW]:
    """A throw-away Ceph RGW (tests/servers/ceph_rgw.py) for the block; skips the test with the reason when Ceph is
    not installed, and keeps the cluster's files for a look when it fails to start."""
    from tests.servers.ceph_rgw import CephRGW, ceph_available

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
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def serving(server: socketserver.TCPServer, tls: ssl.SSLContext | None = None,
            on_exit: Callable[[], None] | None = None) -> Iterator[str]:
    """Run ``server`` (TLS with ``tls``) in a thread; yield its base URL; ``on_exit`` (to let held handlers go)
    before it is shut down."""
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        if on_exit is not None:
            on_exit()
        server.shutdown()
        server.server_close()
