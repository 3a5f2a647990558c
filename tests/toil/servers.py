"""S3 and GCS servers on 127.0.0.1 for Toil's suites, started as subprocesses so that Toil's venv needs neither
moto nor boto3. Each fixture sets the environment variables that aiojobstore reads (and Toil passes to its
workers): ``AWS_ENDPOINT_URL`` and dummy credentials, or ``STORAGE_EMULATOR_HOST``."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ceph_cluster, free_port, server_process

ROOT = Path(__file__).resolve().parents[2]


def servers_python() -> str:
    """The interpreter that has moto and gcp-storage-emulator (the project's dev venv)."""
    for candidate in (os.environ.get("AIOJOBSTORE_SERVERS_PYTHON"), str(ROOT / ".venv/bin/python")):
        if candidate and os.path.exists(candidate):
            return candidate
    return sys.executable


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for the block (this process and the workers it starts), then restore them."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def moto_env() -> Iterator[str]:
    """moto's S3 server; sets AWS_ENDPOINT_URL and dummy credentials for this process and its workers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    os.environ["MOTO_ALLOW_NONEXISTENT_REGION"] = "true"
    command = [servers_python(), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with server_process("toil-moto", command, url), _environment(
            AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1"):
        yield url


@pytest.fixture(scope="session")
def gcs_env() -> Iterator[str]:
    """The gcp-storage-emulator (the project's launcher); sets STORAGE_EMULATOR_HOST."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [servers_python(), str(ROOT / "tests/servers/gcs_emulator.py"), "--host", "127.0.0.1",
               "--port", str(port)]
    with server_process("toil-gcs-emulator", command, url + "/"), _environment(STORAGE_EMULATOR_HOST=url):
        yield url


@pytest.fixture(scope="session")
def ceph_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Ceph's RADOS Gateway (tests/servers/ceph_rgw.py); skipped when Ceph is not installed."""
    with ceph_cluster(tmp_path_factory) as cluster, _environment(
            AWS_ENDPOINT_URL=cluster.endpoint_url, AWS_ACCESS_KEY_ID=cluster.access_key,
            AWS_SECRET_ACCESS_KEY=cluster.secret_key, AWS_DEFAULT_REGION="us-east-1"):
        yield cluster.endpoint_url
