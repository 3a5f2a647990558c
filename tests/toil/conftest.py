"""Toil's own test suites, run against aiojobstore.toil (the shims in this folder). ``.ci/toil`` runs them in a
venv of their own (Toil's pins must not move the project's) with ``pytest -p toil.test.conftest tests/toil``.

They are collected only when ``AIOJOBSTORE_TOIL_SUITES=1`` (``.ci/toil`` sets it) and Toil is importable: the
project's main suite skips this folder. The servers run as subprocesses of ``AIOJOBSTORE_SERVERS_PYTHON`` (the
project's dev venv, which has moto and gcp-storage-emulator): the Toil venv has no boto3, so that Toil's
``@needs_aws_s3`` tests (which would probe AWS) skip, and no AWSJobStore import/export tests are generated.
Every server listens on 127.0.0.1; the AWS credentials are dummies.
"""

from __future__ import annotations

import importlib.util
import os

from tests.toil.servers import ceph_env, gcs_env, moto_env  # noqa: F401 - fixtures

if os.environ.get("AIOJOBSTORE_TOIL_SUITES") != "1" or importlib.util.find_spec("toil") is None:
    collect_ignore_glob = ["test_*.py"]


def pytest_collection_modifyitems(config, items):
    """Only Toil's quick file-store set and the slow caching tests of ``SLOW_KEPT`` run (see
    test_toil_filestore.py)."""
    import sys

    module = sys.modules.get("tests.toil.test_toil_filestore")
    if module is not None:
        module.pytest_collection_modifyitems(config, items)
