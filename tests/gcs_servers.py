"""Pytest plugin: a gcp-storage-emulator on 127.0.0.1 for the session, and a fresh GCS store per test.

``gcs_emulator`` starts the emulator on a free port through ``tests/servers/gcs_emulator.py``, waits until it
answers and stops it at the end of the session. That launcher runs the emulator's own handlers and in-memory
storage, one request at a time as ``gcp-storage-emulator start`` does, but listens with a backlog of 1024 instead
of 5: with 5, a store's burst of up to 64 connections overflowed the queue and the dropped SYNs were resent only
after 1, 3, 7 ... seconds, which stalled tests for seconds to minutes. ``gcs_target`` gives each test a new bucket
(created here) and wipes the emulator's state afterwards (``GET /wipe``): the emulator rewrites its whole object
table on every write, so letting it grow would make the suite slow.
"""

from __future__ import annotations

import importlib.util
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import StoreTarget, free_port, server_process

LAUNCHER = Path(__file__).with_name("servers") / "gcs_emulator.py"


def _emulator_command(port: int) -> list[str] | None:
    if importlib.util.find_spec("gcp_storage_emulator") is None:
        return None
    return [sys.executable, str(LAUNCHER), "--host", "127.0.0.1", "--port", str(port)]


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> bytes:
    """A blocking HTTP request to the emulator (test set-up only)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """The URL of a running gcp-storage-emulator (``STORAGE_EMULATOR_HOST``)."""
    port = free_port()
    command = _emulator_command(port)
    if command is None:
        pytest.skip("gcp-storage-emulator is not installed (pip install gcp-storage-emulator)")
    url = f"http://127.0.0.1:{port}"
    with server_process("gcp-storage-emulator", command, url + "/", timeout=30, any_status=False):
        yield url


def create_bucket(emulator: str, bucket: str) -> None:
    http("POST", f"{emulator}/storage/v1/b?project=test", f'{{"name": "{bucket}"}}'.encode(),
         {"Content-Type": "application/json"})


@pytest.fixture
def gcs_target(gcs_emulator: str) -> Iterator[StoreTarget]:
    """A fresh, empty GCS location (a new bucket on the emulator) and the options that reach it."""
    bucket = f"ajs-test-{uuid.uuid4().hex[:12]}"
    create_bucket(gcs_emulator, bucket)
    yield StoreTarget(f"gs://{bucket}/store", {"emulator_host": gcs_emulator})
    http("GET", f"{gcs_emulator}/wipe")
