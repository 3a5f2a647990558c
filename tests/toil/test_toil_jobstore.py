"""Toil's own job-store suite (``toil/test/jobStores/jobStoreTest.py``, ``AbstractJobStoreTest.Test``) on
aiojobstore.toil, on ``file:``, S3 (moto; Ceph RGW) and GCS (the emulator).

The module is imported, not its class names, so that pytest does not also collect Toil's ``FileJobStoreTest``.
The import/export tests that Toil generates against its ``FileJobStoreTest`` reuse that class's ``file://``
helpers; those against AWS and Google are not generated (no boto3, no Google project here).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from toil.test.jobStores import jobStoreTest as toil_tests

from aiojobstore import sync
from aiojobstore.toil import AioJobStore


class _AioJobStoreTest(toil_tests.AbstractJobStoreTest.Test):
    """What every backend shares: the store under test, the file:// helpers of Toil's FileJobStoreTest."""

    __test__ = False

    def _locator(self) -> str:
        raise NotImplementedError

    def _createJobStore(self) -> AioJobStore:
        return AioJobStore(self._locator())

    def _corruptJobStore(self) -> None:
        store = self.jobstore_initialized._store.store
        sync.run("corrupt", store.backend.delete, "config.json")

    _prepareTestFile = toil_tests.FileJobStoreTest._prepareTestFile
    _hashTestFile = toil_tests.FileJobStoreTest._hashTestFile
    _createExternalStore = toil_tests.FileJobStoreTest._createExternalStore
    _cleanUpExternalStore = toil_tests.FileJobStoreTest._cleanUpExternalStore


class TestFileAioJobStore(_AioJobStoreTest):
    __test__ = True

    def _locator(self) -> str:
        return f"file:{tempfile.gettempdir()}/{self.namePrefix}"

    def _corruptJobStore(self) -> None:
        shutil.rmtree(f"{tempfile.gettempdir()}/{self.namePrefix}")


@pytest.mark.usefixtures("moto_env")
class TestMotoAioJobStore(_AioJobStoreTest):
    __test__ = True

    def _locator(self) -> str:
        return f"s3://{self.namePrefix[:63]}/run"


@pytest.mark.ceph
@pytest.mark.usefixtures("ceph_env")
class TestCephAioJobStore(_AioJobStoreTest):
    __test__ = os.environ.get("AIOJOBSTORE_TOIL_CEPH", "1") == "1"

    def _locator(self) -> str:
        return f"s3://{self.namePrefix[:63]}/run"


@pytest.mark.usefixtures("gcs_env")
class TestGcsAioJobStore(_AioJobStoreTest):
    __test__ = True

    def _locator(self) -> str:
        return f"gs://{self.namePrefix[:63]}/run"
