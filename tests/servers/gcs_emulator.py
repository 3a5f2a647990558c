"""Serve gcp-storage-emulator (its own routes, handlers and in-memory storage) on a listen backlog deep enough for
a store's bursts of connections.

    python tests/servers/gcs_emulator.py --port PORT [--host 127.0.0.1]

``gcp-storage-emulator start`` serves with a plain ``http.server.HTTPServer``: one request at a time, answered as
HTTP/1.0 (so every connection carries one request and is closed), on a socket opened with ``listen(5)``. A store
opens up to ``max_requests`` (64) connections at once; once more than five wait to be accepted, the kernel drops
the client's SYNs and the client resends them only after 1, 3, 7, 15 ... seconds, so a burst of small requests
stalls for seconds, or minutes once a connect times out and is retried. This server differs only in the backlog:
requests are still handled one at a time, which the emulator's storage needs (it has no locking).
"""

from __future__ import annotations

import argparse
import logging
from functools import partial
from http.server import HTTPServer

from gcp_storage_emulator.server import RequestHandler
from gcp_storage_emulator.storage import Storage

#: Connections waiting to be accepted (the kernel caps it at ``net.core.somaxconn``).
BACKLOG = 1024


class DeepBacklogHTTPServer(HTTPServer):
    """``HTTPServer`` listening with a backlog of :data:`BACKLOG` instead of five."""

    request_queue_size = BACKLOG


def main(argv: list[str] | None = None) -> None:
    """Serve until the process is terminated."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # handler failures only, like "start -q" but keeping errors
    storage = Storage(use_memory_fs=True)
    with DeepBacklogHTTPServer((args.host, args.port), partial(RequestHandler, storage)) as httpd:
        httpd.serve_forever()


if __name__ == "__main__":
    main()
