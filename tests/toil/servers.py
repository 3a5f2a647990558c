"""S3 and GCS servers on 127.0.0.1 for Toil's suites, started as subprocesses so that Toil's venv needs neither
moto nor boto3. Each fixture sets the environment variables that aiojobstore reads (and Toil passes to its
workers): ``AWS_ENDPOINT_URL`` and dummy credentials, or ``STORAGE_EMULATOR_HOST``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]


def servers_python() -> str:
    """The interpreter that has moto and gcp-storage-emulator (the project's dev venv)."""
    for candidate in (os.environ.get("AIOJOBSTORE_SERVERS_PYTHON"), str(ROOT / ".venv/bin/python")):
        if candidate and os.path.exists(candidate):
            return candidate
    return sys.executable


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _serve(name: str, command: list[str], url: str) -> subprocess.Popen[bytes]:
    log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"toil-{name}-{os.getpid()}.log"), "wb")  # noqa: SIM115
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not _answers(url):
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode}; see {log.name}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{name} did not answer on {url} within 60 s; see {log.name}")
        time.sleep(0.2)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def moto_env() -> Iterator[str]:
    """moto's S3 server; sets AWS_ENDPOINT_URL and dummy credentials for this process and its workers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    os.environ["MOTO_ALLOW_NONEXISTENT_REGION"] = "true"
    process = _serve("moto", [servers_python(), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], url)
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        yield url
    finally:
        _restore(saved)
        _stop(process)


@pytest.fixture(scope="session")
def gcs_env() -> Iterator[str]:
    """The gcp-storage-emulator (the project's launcher); sets STORAGE_EMULATOR_HOST."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    launcher = ROOT / "tests/servers/gcs_emulator.py"
    process = _serve("gcs-emulator", [servers_python(), str(launcher), "--host", "127.0.0.1", "--port", str(port)],
                     url + "/")
    saved = {"STORAGE_EMULATOR_HOST": os.environ.get("STORAGE_EMULATOR_HOST")}
    os.environ["STORAGE_EMULATOR_HOST"] = url
    try:
        yield url
    finally:
        _restore(saved)
        _stop(process)


@pytest.fixture(scope="session")
def ceph_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Ceph's RADOS Gateway (tests/servers/ceph_rgw.py); skipped when Ceph is not installed."""
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
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=cluster.endpoint_url, AWS_ACCESS_KEY_ID=cluster.access_key,
                      AWS_SECRET_ACCESS_KEY=cluster.secret_key, AWS_DEFAULT_REGION="us-east-1")
    try:
        yield cluster.endpoint_url
    finally:
        _restore(saved)
        cluster.stop()


def _restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
