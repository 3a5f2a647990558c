"""Pytest plugin: real S3 servers on 127.0.0.1 for the tests (started and stopped here, nothing mocked).

- ``moto_server``: moto's S3 server (``ThreadedMotoServer``) on a free port, once per session.
- ``s3_target``: a fresh, not yet created bucket on it, as a ``StoreTarget`` (joins the contract suite).
- ``ceph_rgw``: Ceph's RADOS Gateway (``tests/servers/ceph_rgw.py``), once per session; tests that use it are
  skipped with the reason when Ceph is not installed (``tests/servers/install-ceph.sh``).
- ``ceph_target``: a fresh bucket on it, as a ``StoreTarget`` (joins the contract suite as ``ceph``).
- ``FaultProxy`` (from ``tests/fault_proxy.py``): a loopback HTTP proxy that injects faults, lost answers and
  held requests.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.fault_proxy import FaultProxy, FaultRule
from tests.support import StoreTarget, ceph_cluster, free_port

__all__ = ["FaultProxy", "FaultRule", "S3Server"]

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


@pytest.fixture
def ceph_target(ceph_rgw: S3Server) -> StoreTarget:
    """A fresh S3 location on Ceph RGW (the contract suite's ``ceph`` backend: a server that enforces
    conditional writes atomically, where moto does not); skipped with the reason when Ceph is not installed."""
    return ceph_rgw.target()


@pytest.fixture(scope="session")
def ceph_rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with ceph_cluster(tmp_path_factory) as cluster:
        yield S3Server("ceph", cluster.endpoint_url, cluster.access_key, cluster.secret_key)
