"""Helpers shared by the test modules."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


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
