"""Toil's file-store suite (``toil/test/src/fileStoreTest.py``) with its job store on aiojobstore.toil: real Toil
workflows (single-machine batch system, ``_toil_worker`` subprocesses that re-open the store through the startup
hook), with ``NonCachingFileStore`` and ``CachingFileStore``, on ``aiojobstore:file:`` and on S3 (moto).

Toil's quick set runs (its tests not marked ``slow``) plus the slow caching tests listed in ``SLOW_KEPT``, the
ones about accounting under eviction and failed workers; the other slow tests, and ``LONG_WAITS``, are deselected
to fit CI's budget. ``AIOJOBSTORE_TOIL_FULL=1`` runs everything.
"""

from __future__ import annotations

import os
import uuid

import pytest
from toil.test.src import fileStoreTest as toil_tests

#: Slow tests of Toil's caching file store that run anyway.
SLOW_KEPT = frozenset({
    "testCacheEvictionPartialEvict",
    "testCacheEvictionTotalEvict",
    "testCacheEvictionFailCase",
    "testControlledFailedWorkerRetry",
    "testReturnFileSizesWithBadWorker",
    "testMultipleJobsReadSameCacheHitGlobalFile",
    "testMultipleJobsReadSameCacheMissGlobalFile",
})

#: Quick tests that mostly wait: testSimultaneousReadsUncachedStream sleeps 120 s in each of 30 readers (a test of
#: the caching file store's SQLite locking; the job store sees one small file read), 4-7 minutes on 2 cores.
LONG_WAITS = frozenset({"testSimultaneousReadsUncachedStream"})
FULL = os.environ.get("AIOJOBSTORE_TOIL_FULL") == "1"


class _OnAioFile:
    def _getTestJobStore(self) -> str:
        return "aiojobstore:file:" + self._getTestJobStorePath()

    def _testValidityOfCacheEvictTest(self, options) -> None:
        # Toil's version stats os.path.dirname(options.jobStore), which is not a path for an aiojobstore: locator
        path = options.jobStore[len("aiojobstore:file:"):]
        if os.stat(options.workDir).st_dev == os.stat(os.path.dirname(path)).st_dev:
            self.skipTest("Job store and working directory are on the same filesystem.")


class _OnAioS3:
    def _getTestJobStore(self) -> str:
        return f"aiojobstore:s3://cache-tests-{uuid.uuid4().hex[:20]}/run"

    def _testValidityOfCacheEvictTest(self, options) -> None:
        return None  # a remote store: caching is never free


class TestNonCachingOnAioFile(_OnAioFile, toil_tests.hidden.AbstractNonCachingFileStoreTest):
    pass


@pytest.mark.timeout(1000)
class TestCachingOnAioFile(_OnAioFile, toil_tests.hidden.AbstractCachingFileStoreTest):
    pass


@pytest.mark.usefixtures("moto_env")
class TestNonCachingOnAioS3(_OnAioS3, toil_tests.hidden.AbstractNonCachingFileStoreTest):
    pass


@pytest.mark.timeout(1000)
@pytest.mark.usefixtures("moto_env")
class TestCachingOnAioS3(_OnAioS3, toil_tests.hidden.AbstractCachingFileStoreTest):
    pass


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:  # pragma: no cover
    """(Called from conftest.py.) Deselect the slow file-store tests that are not in ``SLOW_KEPT``."""
    keep, drop = [], []
    for item in items:
        mine = item.module is not None and item.module.__name__ == __name__
        slow = item.get_closest_marker("slow") is not None
        dropped = mine and not FULL and ((slow and item.name not in SLOW_KEPT) or item.name in LONG_WAITS)
        (drop if dropped else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
