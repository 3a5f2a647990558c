# pyright: reportMissingImports=false
# (Toil is an optional extra: the type checkers run where it is not installed)
"""Toil on aiojobstore: an ``AbstractJobStore`` for the locators ``aiojobstore:<locator>``.

Install ``aiojobstore[toil]`` and run a workflow with ``--jobStore aiojobstore:s3://bucket/run`` (or
``aiojobstore:file:/scratch/run``, ``aiojobstore:gs://bucket/run``). Toil's job stores are not pluggable, so the
package ships a startup hook (``aiojobstore-toil.pth`` + ``aiojobstore_toil_hook``) that teaches
``Toil.getJobStore`` the prefix in every process that imports ``toil.common``: the leader, each ``_toil_worker``,
``toil status``/``clean``/``kill``/``debug-job``. Importing this module installs the same patch.

The adapter runs on the blocking facade (:mod:`aiojobstore.sync`); jobs are Toil's ``JobDescription`` objects,
stored whole with the ``pickle`` codec. What differs from Toil's own stores is spelled out here:

* **Stale updates.** Toil's ``update_job`` is last-writer-wins; aiojobstore's refuses a copy older than the
  stored job. The adapter remembers the version of every job it created, loaded or updated, and applies the
  policy ``stale_updates``: ``"overwrite"`` (the default, Toil's semantics) replaces the stored job whatever its
  version, in one compare-and-swap on the stored record (no reload of the job, no retry loop in the adapter), and
  counts the overwrites it made in :attr:`AioJobStore.stale_overwrites`; ``"refuse"`` raises Toil's
  ``ConcurrentFileModificationException`` when the stored job is newer than the copy being written (or when this
  process never saw the job). Choose it with ``AIOJOBSTORE_TOIL_STALE_UPDATES``.
* **Encryption.** ``--sseKey FILE`` (32 bytes) encrypts files and shared files with SSE-C on S3 and a
  customer-supplied key on GCS; the config itself (``config.pickle``) stays in the clear so that a worker can
  read the key's path from it. ``file:`` and ``memory:`` refuse a key.
* **Options** come from the environment, which Toil passes on to its workers (:meth:`AioJobStore.get_env`):
  ``AWS_ENDPOINT_URL``, ``AWS_DEFAULT_REGION``, ``STORAGE_EMULATOR_HOST``, ``AIOJOBSTORE_TOIL_PART_SIZE``
  (bytes), ``AIOJOBSTORE_TOIL_MAX_CONCURRENCY``, ``AIOJOBSTORE_TOIL_STALE_UPDATES``, ``AIOJOBSTORE_TOIL_FSYNC=0``
  (``file:`` without fsync, as Toil's FileJobStore), ``AIOJOBSTORE_TOIL_LINK_READS=0`` (copy reads on ``file:``
  instead of hard-linking them, as Toil's FileJobStore does); credentials from the usual variables and files.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import stat
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlparse

from toil.fileStores import FileID as ToilFileID
from toil.jobStores.abstractJobStore import (
    AbstractJobStore,
    ConcurrentFileModificationException,
    JobStoreExistsException,
    NoSuchFileException,
    NoSuchJobException,
    NoSuchJobStoreException,
)

from . import errors
from . import sync as _sync
from .jobstore import Job
from .sync import SyncJobStore

log = logging.getLogger("aiojobstore.toil")

#: The locator prefix: ``aiojobstore:<aiojobstore locator>``.
PREFIX = "aiojobstore"
#: ``stale_updates`` policies.
STALE_POLICIES = ("overwrite", "refuse")
ENV_STALE_UPDATES = "AIOJOBSTORE_TOIL_STALE_UPDATES"
ENV_PART_SIZE = "AIOJOBSTORE_TOIL_PART_SIZE"
ENV_MAX_CONCURRENCY = "AIOJOBSTORE_TOIL_MAX_CONCURRENCY"
ENV_FSYNC = "AIOJOBSTORE_TOIL_FSYNC"
ENV_LINK_READS = "AIOJOBSTORE_TOIL_LINK_READS"
#: Variables a worker needs to reach the same store (no secrets: credentials come from the worker's environment).
_PASSED_ON = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION", "STORAGE_EMULATOR_HOST",
              ENV_STALE_UPDATES, ENV_PART_SIZE, ENV_MAX_CONCURRENCY, ENV_FSYNC, ENV_LINK_READS)
# Toil's reserved hint components (HintedJobStore._BANNED_HINTS) and its hint sanitation.
_BANNED_HINTS = frozenset({".", "..", "files", "deleted"})
_NOT_HINT = re.compile(r"[^A-Za-z0-9_.-]")
_JOB_NAME = re.compile(r"[^A-Za-z0-9_]")
_URL_SCHEMES = ("file", "s3", "gs")


def _toil_hints(hints: list[str] | None) -> list[str] | None:
    """The hints with Toil's reserved components (``files``, ``deleted``, ``.``, ``..``) dropped."""
    if not hints:
        return None
    kept = [hint for hint in hints if _NOT_HINT.sub("", str(hint))[:40] not in _BANNED_HINTS]
    return kept or None


@contextlib.contextmanager
def _toil_errors(file_id: str | None = None, job_id: str | None = None) -> Iterator[None]:
    """Raise Toil's exception classes for aiojobstore's."""
    try:
        yield
    except errors.NoSuchJobError as error:
        raise NoSuchJobException(job_id or error.job_id) from error
    except errors.NoSuchFileError as error:
        raise NoSuchFileException(file_id or error.file_id) from error
    except errors.InvalidKeyError as error:
        if file_id is None:
            raise
        raise NoSuchFileException(file_id, None, str(error)) from error
    except errors.ConcurrentModificationError as error:
        raise ConcurrentFileModificationException(file_id or job_id or "?") from error


class AioJobStore(AbstractJobStore):  # type: ignore[misc]  # Toil is not installed where mypy runs
    """A Toil job store on aiojobstore (``file:``, ``s3://``, ``gs://``, ``memory:`` locators).

    ``locator`` is the part after ``aiojobstore:``. ``stale_updates`` is ``"overwrite"`` (Toil's last-writer-wins,
    the default) or ``"refuse"`` (see the module's docstring); ``None`` reads ``AIOJOBSTORE_TOIL_STALE_UPDATES``.
    Other keyword options go to :func:`aiojobstore.sync.open_store` (``endpoint_url``, ``part_size``, ...).
    """

    def __init__(self, locator: str, *, stale_updates: str | None = None, **options: Any) -> None:
        super().__init__(locator)
        policy = stale_updates or os.environ.get(ENV_STALE_UPDATES) or "overwrite"
        if policy not in STALE_POLICIES:
            raise ValueError(f"stale_updates={policy!r}: use one of {', '.join(STALE_POLICIES)} "
                             f"(or set {ENV_STALE_UPDATES})")
        self.stale_updates = policy
        #: How many updates replaced a stored job newer than the copy written (``stale_updates="overwrite"``).
        self.stale_overwrites = 0
        for name, variable in (("part_size", ENV_PART_SIZE), ("max_concurrency", ENV_MAX_CONCURRENCY)):
            if name not in options and os.environ.get(variable):
                options[name] = int(os.environ[variable])
        if "fsync" not in options and os.environ.get(ENV_FSYNC) in ("0", "false", "no"):
            options["fsync"] = False
        #: Hard-link ``read_file`` results on ``file:`` as Toil's FileJobStore does (``AIOJOBSTORE_TOIL_LINK_READS=0``
        #: copies instead).
        self.link_reads = os.environ.get(ENV_LINK_READS, "1") not in ("0", "false", "no")
        self._options = {"codec": "pickle", **options}
        self._store: SyncJobStore = _sync.open_store(locator, **self._options)
        self._versions: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<AioJobStore {PREFIX}:{self.locator}>"

    # ------------------------------------------------------------------------------------------ lifecycle

    def initialize(self, config: Any) -> None:
        key = self._sse_key(config)
        if key is not None:
            self._reopen(sse_key=key)
        try:
            self._store.initialize()
        except errors.JobStoreExistsError:
            raise JobStoreExistsException(self.locator, PREFIX) from None
        super().initialize(config)

    def resume(self) -> None:
        try:
            self._store.resume()
        except errors.NoSuchJobStoreError:
            raise NoSuchJobStoreException(self.locator, PREFIX) from None
        with _toil_errors():
            super().resume()
        key = self._sse_key(self.config)
        if key is not None:
            self._reopen(sse_key=key)
            self._store.resume()

    def _sse_key(self, config: Any) -> bytes | None:
        path = getattr(config, "sseKey", None)
        if not path:
            return None
        with open(path, "rb") as file:
            key = file.read()
        if len(key) != 32:
            raise ValueError(f"the SSE key in {path} is {len(key)} bytes long; it must be exactly 32 bytes")
        return key

    def _reopen(self, **options: Any) -> None:
        self._store.close()
        self._options.update(options)
        self._store = _sync.open_store(self.locator, **self._options)

    def destroy(self) -> None:
        self._store.destroy()
        self._versions.clear()

    def get_env(self) -> dict[str, str]:
        return {name: os.environ[name] for name in _PASSED_ON if name in os.environ}

    def default_caching(self) -> bool:
        # Toil's caching file store is worth its cost when reads are remote; on file: it is not (as Toil's own
        # FileJobStore says).
        return not self.locator.startswith(("file:", "/", "memory:")) and "://" in self.locator

    # ------------------------------------------------------------------------------------------------ jobs

    def assign_job_id(self, job_description: Any) -> None:
        name = _JOB_NAME.sub("", str(getattr(job_description, "jobName", "") or ""))[:40]
        unique = uuid.uuid4().hex
        job_description.jobStoreID = f"{name}-{unique}" if name else unique

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with self._store.batch():
            yield

    def create_job(self, job_description: Any) -> Any:
        job_description.pre_update_hook()
        job_id = str(job_description.jobStoreID)
        with _toil_errors(job_id=job_id):
            self._store.create_job(Job(name=job_description.jobName or "", data=job_description, id=job_id))
        self._versions[job_id] = 1
        return job_description

    def job_exists(self, job_id: str) -> bool:
        return bool(self._store.job_exists(str(job_id)))

    def load_job(self, job_id: str) -> Any:
        with _toil_errors(job_id=job_id):
            job = self._store.load_job(str(job_id))
        self._versions[str(job_id)] = job.version
        description = job.data
        description.assignConfig(self.config)
        return description

    def update_job(self, job_description: Any) -> None:
        job_description.pre_update_hook()
        job_id = str(job_description.jobStoreID)
        known = self._versions.get(job_id)
        if self.stale_updates == "refuse" and known is None:
            raise ConcurrentFileModificationException(job_id)  # never seen here: nothing to compare with
        record = Job(name=job_description.jobName or "", data=job_description, id=job_id, version=known or 0)
        with _toil_errors(job_id=job_id):
            # "overwrite" (Toil's last writer wins) is still one compare-and-swap, bumping the stored version
            self._store.update_job(record, overwrite=self.stale_updates == "overwrite")
        if record.stale_overwritten:
            self.stale_overwrites += 1
            log.debug("update_job(%s): overwrote a version newer than the version %s this process had",
                      job_id, known)
        self._versions[job_id] = record.version

    def delete_job(self, job_id: str) -> None:
        with contextlib.suppress(errors.NoSuchJobError):
            self._store.delete_job(str(job_id))
        self._versions.pop(str(job_id), None)

    def jobs(self) -> Iterator[Any]:
        for job in self._store.jobs():
            self._versions[str(job.id)] = job.version
            job.data.assignConfig(self.config)
            yield job.data

    # ----------------------------------------------------------------------------------------------- files

    @staticmethod
    def _cleanup(job_id: str | None, cleanup: bool) -> tuple[str | None, bool]:
        # Toil: "cleanup=True without a job ID does nothing"
        return (str(job_id) if job_id is not None else None), bool(cleanup and job_id is not None)

    def write_file(self, local_path: str, job_id: str | None = None, cleanup: bool = False,
                   hints: list[str] | None = None) -> str:
        job_id, cleanup = self._cleanup(job_id, cleanup)
        with _toil_errors(file_id=local_path):
            return str(self._store.write_file(local_path, job_id, cleanup, hints=_toil_hints(hints)))

    @contextlib.contextmanager
    def write_file_stream(self, job_id: str | None = None, cleanup: bool = False, hints: list[str] | None = None,
                          basename: str | None = None, encoding: str | None = None,
                          errors: str | None = None) -> Iterator[tuple[Any, str]]:
        job_id, cleanup = self._cleanup(job_id, cleanup)
        with self._store.write_file_stream(job_id, cleanup, basename, encoding, errors,
                                           hints=_toil_hints(hints)) as (file, file_id):
            yield file, str(file_id)

    def get_empty_file_store_id(self, job_id: str | None = None, cleanup: bool = False, basename: str | None = None,
                                hints: list[str] | None = None) -> str:
        job_id, cleanup = self._cleanup(job_id, cleanup)
        return str(self._store.get_empty_file_store_id(job_id, cleanup, basename, hints=_toil_hints(hints)))

    def read_file(self, file_id: str, local_path: str, symlink: bool = False) -> None:
        executable = bool(getattr(file_id, "executable", False))
        with _toil_errors(file_id=file_id):
            if self.link_reads and not symlink:
                # Toil's FileJobStore hard-links reads on the same file system (the reader promises not to modify
                # the file): read_file(link=True) does so on file: (or reflinks), and copies elsewhere
                self._store.read_file(str(file_id), local_path, link=True)
            else:
                # a symbolic link would show the stored file's mode: an executable file is always copied
                self._store.read_file(str(file_id), local_path, symlink=symlink and not executable)
        if executable:
            mode = os.stat(local_path).st_mode
            os.chmod(local_path, mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    @contextlib.contextmanager
    def read_file_stream(self, file_id: str, encoding: str | None = None,
                         errors: str | None = None) -> Iterator[Any]:
        with _toil_errors(file_id=file_id), self._store.read_file_stream(str(file_id), encoding, errors) as file:
            yield file

    def delete_file(self, file_id: str) -> None:
        with contextlib.suppress(errors.InvalidKeyError):
            self._store.delete_file(str(file_id))

    def file_exists(self, file_id: str) -> bool:
        try:
            return bool(self._store.file_exists(str(file_id)))
        except errors.InvalidKeyError:
            return False

    def get_file_size(self, file_id: str) -> int:
        try:
            return int(self._store.get_file_size(str(file_id)))
        except (errors.NoSuchFileError, errors.InvalidKeyError):
            return 0

    def update_file(self, file_id: str, local_path: str) -> None:
        with _toil_errors(file_id=file_id):
            self._store.update_file(str(file_id), local_path)

    @contextlib.contextmanager
    def update_file_stream(self, file_id: str, encoding: str | None = None,
                           errors: str | None = None) -> Iterator[Any]:
        with _toil_errors(file_id=file_id), self._store.update_file_stream(str(file_id), encoding, errors) as file:
            yield file

    def get_public_url(self, file_name: str) -> str:
        with _toil_errors(file_id=file_name):
            return str(self._store.get_public_url(str(file_name)))

    def get_shared_public_url(self, shared_file_name: str) -> str:
        with _toil_errors(file_id=shared_file_name):
            return str(self._store.get_shared_public_url(shared_file_name))

    # ---------------------------------------------------------------------------------------- shared files

    @contextlib.contextmanager
    def write_shared_file_stream(self, shared_file_name: str, encrypted: bool | None = None,
                                 encoding: str | None = None, errors: str | None = None) -> Iterator[Any]:
        self._requireValidSharedFileName(shared_file_name)
        if encrypted and self._options.get("sse_key") is None:
            encrypted = None  # Toil asks for encryption "if the store has a key"; without --sseKey it has none
        with self._store.write_shared_file_stream(shared_file_name, encrypted, encoding, errors) as file:
            yield file

    @contextlib.contextmanager
    def read_shared_file_stream(self, shared_file_name: str, encoding: str | None = None,
                                errors: str | None = None) -> Iterator[Any]:
        self._requireValidSharedFileName(shared_file_name)
        with _toil_errors(file_id=shared_file_name), \
                self._store.read_shared_file_stream(shared_file_name, encoding, errors) as file:
            yield file

    # ------------------------------------------------------------------------------------------------ logs

    def write_logs(self, msg: str) -> None:
        self._store.write_logs(msg)

    def read_logs(self, callback: Callable[..., Any], read_all: bool = False) -> int:
        return int(self._store.read_logs(lambda data: callback(io.BytesIO(data)), read_all))

    # ------------------------------------------------------------------------------------ import / export

    def import_file(self, src_uri: str, shared_file_name: str | None = None, hardlink: bool = False,
                    symlink: bool = True) -> ToilFileID | None:
        scheme = urlparse(src_uri).scheme.lower()
        if scheme not in (*_URL_SCHEMES, "http", "https"):
            return super().import_file(src_uri, shared_file_name, hardlink, symlink)
        if shared_file_name is not None:
            self._requireValidSharedFileName(shared_file_name)
        try:
            file_id = self._store.import_file(src_uri, shared_file_name)
        except errors.NoSuchFileError as error:
            raise FileNotFoundError(f"cannot import {src_uri}: {error}") from error
        if file_id is None:
            return None
        return ToilFileID(str(file_id), file_id.size, file_id.executable)

    def export_file(self, file_id: Any, dst_uri: str) -> None:
        from toil.common import Toil

        dst_uri = Toil.normalize_uri(dst_uri)
        if urlparse(dst_uri).scheme.lower() not in _URL_SCHEMES:
            super().export_file(file_id, dst_uri)
            return
        with _toil_errors(file_id=file_id):
            self._store.export_file(str(file_id), dst_uri)
        if getattr(file_id, "executable", False) and dst_uri.startswith("file:"):
            path = urlparse(dst_uri).path
            os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def install() -> None:
    """Teach Toil the ``aiojobstore:`` prefix now (the startup hook does it when ``toil.common`` is imported)."""
    import toil.common

    from aiojobstore_toil_hook import patch_toil_common

    patch_toil_common(toil.common)


install()

__all__ = ["PREFIX", "STALE_POLICIES", "AioJobStore", "install"]
