"""Fixtures shared by every test module: the store targets the contract suite runs on."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

import aiojobstore
from tests.support import StoreTarget

#: Backends the contract suite runs on; a backend joins by adding its name here and its plugin module below,
#: which provides a fixture named ``<name>_target`` returning a fresh StoreTarget.
BACKENDS = ["memory", "local", "gcs", "s3", "ceph"]
pytest_plugins: list[str] = ["tests.gcs_servers", "tests.s3_servers"]

PART_SIZE = 5 * 2**20


@pytest.fixture(params=BACKENDS)
def store_target(request: pytest.FixtureRequest, tmp_path) -> StoreTarget:
    """A fresh, empty location on each backend in turn."""
    if request.param == "memory":
        return StoreTarget(f"memory:test-{uuid.uuid4().hex}")
    if request.param == "local":
        return StoreTarget(f"file:{tmp_path}/store")
    return request.getfixturevalue(f"{request.param}_target")


def open_target(target: StoreTarget, **overrides) -> aiojobstore.JobStore:
    """Open a store on ``target`` with small parts so that multipart paths run on small data."""
    return aiojobstore.open_store(target.locator, **{"part_size": PART_SIZE, **target.options, **overrides})


@pytest.fixture
async def store(store_target: StoreTarget) -> AsyncIterator[aiojobstore.JobStore]:
    """A freshly initialized store; destroyed afterwards."""
    job_store = open_target(store_target)
    await job_store.initialize({"purpose": "tests"})
    try:
        yield job_store
    finally:
        await job_store.destroy()
        await job_store.close()


@pytest.fixture
async def other(store_target: StoreTarget, store: aiojobstore.JobStore) -> AsyncIterator[aiojobstore.JobStore]:
    """A second store object on the same location, opened with resume()."""
    job_store = open_target(store_target)
    await job_store.resume()
    try:
        yield job_store
    finally:
        await job_store.close()
