"""The job store: jobs, files, shared files, logs and workflow bookkeeping on any backend.

Method names follow Toil's ``AbstractJobStore``. The job store speaks only the Backend protocol; every backend
keeps the same promises:

* every write is atomic: a reader sees the old content or the new, never a part, and a write that raises (or
  is cancelled) leaves the store as it was;
* ``update_job`` is optimistic: it raises :class:`ConcurrentModificationError` when the stored job is newer
  than the one being written, and the check and the write are one atomic step (a conditional write);
  ``write_config`` likewise refuses to overwrite a config written by someone else since it was read;
* deletes are idempotent.

The object layout (which key holds what) is defined in :mod:`aiojobstore.layout`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import json
import logging
import os
import pickle
import stat as stat_module
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, overload
from urllib.parse import unquote, urlparse

import anyio

from .backends.base import Backend, ObjectInfo, ReclaimReport, validate_key
from .commit import run_uncancelled
from .errors import (
    ConcurrentModificationError,
    CorruptRecordError,
    EncryptionKeyError,
    IntegrityError,
    InvalidKeyError,
    InvalidLocatorError,
    JobStoreError,
    JobStoreExistsError,
    NoSuchFileError,
    NoSuchJobError,
    NoSuchJobStoreError,
)
from .layout import (
    CONFIG_KEY,
    FILES,
    HINT_SLOTS,
    JOBS,
    KILL_FLAG_KEY,
    LEADER_PID_KEY,
    LOG_ARCHIVE,
    LOG_CLAIMS,
    LOG_INBOX,
    META_EXECUTABLE,
    ROOT_JOB_KEY,
    SHARED,
    STORE_FORMAT,
    check_basename,
    check_job_id,
    file_id_of,
    file_key,
    hint_path,
    job_key,
    shard,
    shared_key,
)
from .locator import open_backend, parse_locator
from .objects import transfer_object
from .streams import AsyncReader, AsyncWriter, TextReader, TextWriter
from .transfer import ProgressCallback, TransferConfig

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import StoreOptions

#: Age in seconds past which :meth:`JobStore.clean` takes what dead writers left for debris.
DEFAULT_DEBRIS_AGE = 3600.0
#: Seconds a reader's claim on a log lasts without renewal (see :meth:`JobStore.read_logs`).
DEFAULT_LOG_LEASE = 60.0

_CONCURRENT_LOADS = 64
_COPY_CHUNK = 1 << 20
_MAX_REDIRECTS = 10
#: Seconds an http(s) import may go without receiving a byte (the ``http_idle_timeout`` store option).
DEFAULT_HTTP_IDLE_TIMEOUT = 300.0
_JSON_DECODER = json.JSONDecoder()

log = logging.getLogger("aiojobstore.jobstore")


# ------------------------------------------------------------------------------------------------ value types


@dataclass
class Job:
    """A job record. ``data`` is anything the store's codec can encode (JSON by default); ``id`` is given by
    the store on creation; ``version`` counts the writes and guards against lost updates."""

    name: str = ""
    data: Any = None
    id: str | None = None
    version: int = 0
    #: Set by ``update_job(..., overwrite=True)``: whether it replaced a version newer than this copy's.
    stale_overwritten: bool = field(default=False, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "version": self.version, "data": self.data}


class FileID(str):
    """A file's ID: a ``str`` that ends with the file's basename, carrying ``size`` and ``executable``."""

    size: int
    executable: bool

    def __new__(cls, value: str, size: int = 0, executable: bool = False) -> FileID:
        self = super().__new__(cls, value)
        self.size = size
        self.executable = executable
        return self

    @property
    def basename(self) -> str:
        return self.rsplit("/", 1)[-1]

    def __reduce__(self) -> tuple[Any, ...]:
        return (FileID, (str(self), self.size, self.executable))


class Codec:
    """Turns jobs into bytes and back: ``json`` (default) or ``pickle``. A store's codec is fixed when it is
    created and recorded in its config; records are always decoded with it, never guessed from their bytes, so a
    pickle planted in a JSON store is refused instead of run."""

    def __init__(self, name: str = "json") -> None:
        if name not in ("json", "pickle"):
            raise JobStoreError(f"unknown codec {name!r}: use 'json' (default) or 'pickle'")
        self.name = name

    def encode(self, job: Job) -> bytes:
        if self.name == "pickle":
            return pickle.dumps(job.to_dict(), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            return json.dumps(job.to_dict(), separators=(",", ":")).encode()
        except (TypeError, ValueError) as error:
            raise JobStoreError(
                f"job {job.name!r} has data the JSON codec cannot encode ({error}); keep job data to JSON types "
                "or open the store with codec='pickle'"
            ) from error

    def decode(self, data: bytes, key: str = "<job>") -> Job:
        """The job in ``data``; :class:`CorruptRecordError` naming ``key`` if it is not a job record of this
        codec (truncated, malformed, deeply nested, wrongly shaped, or another codec's bytes)."""
        try:
            if self.name == "pickle":
                record = pickle.loads(data)
            else:
                if data[:1] == b"\x80":
                    raise ValueError("the record is a pickle, and this store's codec is JSON: it was not written "
                                     "by this store and is not unpickled")
                record = _JSON_DECODER.decode(data.decode())
        except CorruptRecordError:
            raise
        except (RecursionError, MemoryError) as error:
            raise CorruptRecordError(key, f"nested too deeply to decode ({type(error).__name__})") from None
        except Exception as error:  # every decoder error: JSON, Unicode, pickle's many
            raise CorruptRecordError(key, f"{type(error).__name__}: {error}") from None
        if not isinstance(record, dict):
            raise CorruptRecordError(key, f"a job record is a mapping, not {type(record).__name__}")
        name, job_id, version = record.get("name"), record.get("id"), record.get("version")
        if not isinstance(name, str) or not isinstance(job_id, str) or type(version) is not int or "data" not in record:
            raise CorruptRecordError(key, "a job record has a string name and id, an integer version and data")
        return Job(name=name, data=record["data"], id=job_id, version=version)


def _decode_config(raw: bytes) -> dict[str, Any]:
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise CorruptRecordError(CONFIG_KEY, f"{type(error).__name__}: {error}") from None
    if not isinstance(config, dict):
        raise CorruptRecordError(CONFIG_KEY, f"the config is a JSON object, not {type(config).__name__}")
    return config


def _is_executable(path: str) -> bool:
    return bool(os.stat(path).st_mode & stat_module.S_IXUSR)


def _set_executable(path: str, executable: bool) -> None:
    mode = os.stat(path).st_mode
    if executable:
        os.chmod(path, mode | stat_module.S_IXUSR | stat_module.S_IXGRP | stat_module.S_IXOTH)
    elif mode & stat_module.S_IXUSR:
        os.chmod(path, mode & ~(stat_module.S_IXUSR | stat_module.S_IXGRP | stat_module.S_IXOTH))


def _file_id_from(key: str, info: ObjectInfo) -> FileID:
    return FileID(file_id_of(key), info.size, info.metadata.get(META_EXECUTABLE) == "1")


@dataclass
class CleanReport:
    """What :meth:`JobStore.clean` removed: the IDs of deleted jobs and the debris reclaimed."""

    jobs_deleted: list[str] = field(default_factory=list)
    debris: ReclaimReport = field(default_factory=ReclaimReport)


class _StaleJobError(ConcurrentModificationError):
    """The stored job has another version than the copy being updated."""


@dataclass
class _Batch:
    jobs: list[Job] = field(default_factory=list)


_current_batch: contextvars.ContextVar[tuple[int, _Batch] | None] = contextvars.ContextVar(
    "aiojobstore_batch", default=None
)


# --------------------------------------------------------------------------------------------------- job store


class JobStore:
    """A job store on one backend. Create it with :func:`open_store`; no I/O happens until a method is awaited.

    Use it as ``async with store:`` (or call :meth:`close`) so connections are released, and call
    :meth:`initialize` (new store) or :meth:`resume` (existing store) before anything else.
    """

    def __init__(self, backend: Backend, *, locator: str = "", codec: str | None = None,
                 backend_options: dict[str, Any] | None = None, public_url_expires: int = 3600,
                 require_checksums: bool = True, http_idle_timeout: float = DEFAULT_HTTP_IDLE_TIMEOUT) -> None:
        self.backend = backend
        self.locator = locator or backend.describe()
        self._codec_asked = codec
        self.codec = Codec(codec or "json")
        # every object of a job store is written through a backend, so one without the store's checksum was
        # planted or replaced behind its back
        backend.require_checksum = require_checksums
        self.config: dict[str, Any] = {}
        self._config_etag: str | None = None
        self.public_url_expires = public_url_expires
        self.http_idle_timeout = http_idle_timeout
        self._backend_options = backend_options or {}
        self._ready = False
        self._url_backends: dict[tuple[str, str], Backend] = {}
        self._hint_slots: dict[str, int] = {}  # the highest slot this object claimed, per hint path

    def __repr__(self) -> str:
        return f"<JobStore {self.locator}>"

    async def __aenter__(self) -> JobStore:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Release the backend's connections (and those of backends opened for import/export URLs)."""
        with anyio.CancelScope(shield=True):
            for backend in self._url_backends.values():
                await backend.close()
            self._url_backends.clear()
            await self.backend.close()

    # ------------------------------------------------------------------------------------------- lifecycle

    def _require_ready(self) -> None:
        if not self._ready:
            raise JobStoreError(f"the job store {self.locator} is not open: call initialize() or resume() first")

    async def initialize(self, config: dict[str, Any] | None = None) -> None:
        """Create the store (and its directory or bucket). Raises :class:`JobStoreExistsError` if it exists."""
        await self.backend.create()
        self.config = {**(config or {}), "aiojobstore_format": STORE_FORMAT, "codec": self.codec.name}
        try:
            info = await self.backend.put_bytes(CONFIG_KEY, json.dumps(self.config).encode(), if_absent=True)
        except ConcurrentModificationError:
            raise JobStoreExistsError(self.locator) from None
        self._config_etag = info.etag
        self._ready = True

    async def resume(self) -> None:
        """Open an existing store. Raises :class:`NoSuchJobStoreError` if it was never initialized."""
        if not await self.backend.exists():
            raise NoSuchJobStoreError(self.locator)
        try:
            raw, info = await self.backend.get_object(CONFIG_KEY)
        except NoSuchFileError:
            raise NoSuchJobStoreError(self.locator, "the location exists but holds no job store") from None
        config = _decode_config(raw)
        stored = config.get("codec", "json")
        if stored not in ("json", "pickle"):
            raise CorruptRecordError(CONFIG_KEY, f"unknown codec {stored!r}")
        if stored == "pickle" and self._codec_asked != "pickle":
            raise JobStoreError(
                f"the job store {self.locator} was created with codec='pickle': reading its jobs unpickles them, "
                "which runs code from the store. Open it with codec='pickle' if you trust everyone who can write "
                "to it")
        if self._codec_asked is not None and self._codec_asked != stored:
            raise JobStoreError(f"the job store {self.locator} was created with codec={stored!r}, not "
                                f"{self._codec_asked!r}: open it with codec={stored!r}")
        self.config = config
        self._config_etag = info.etag
        self.codec = Codec(stored)
        self._ready = True

    async def location_exists(self) -> bool:
        """Whether the location (directory, bucket) exists, whether or not it holds an initialized store."""
        return await self.backend.exists()

    async def write_config(self) -> None:
        """Persist :attr:`config` (changed by the caller) atomically. Raises :class:`ConcurrentModificationError`
        when another process wrote the config since this object read it (the stored config is kept)."""
        self._require_ready()
        try:
            info = await self.backend.put_bytes(CONFIG_KEY, json.dumps(self.config).encode(),
                                                if_match=self._config_etag)
        except (ConcurrentModificationError, NoSuchFileError):
            raise ConcurrentModificationError(
                f"the config of {self.locator} was changed (or deleted) by someone else since this store read it: call "
                "resume() to read the current config, then apply your change again") from None
        self._config_etag = info.etag

    async def destroy(self) -> None:
        """Delete the store and everything in it. Idempotent; works on a damaged or never-created store."""
        await self.backend.destroy()
        self._ready = False

    # ------------------------------------------------------------------------------------------------ jobs

    def assign_job_id(self, job: Job) -> str:
        """Give ``job`` a fresh ID (without writing it) and return the ID."""
        job.id = uuid.uuid4().hex
        return job.id

    async def create_job(self, job: Job) -> Job:
        """Write a new job (assigning an ID if it has none). Inside :meth:`batch` the write is deferred."""
        self._require_ready()
        if job.id is None:
            self.assign_job_id(job)
        check_job_id(job.id)  # type: ignore[arg-type]
        job.version = 1
        batch = _current_batch.get()
        if batch is not None and batch[0] == id(self):
            batch[1].jobs.append(job)
            return job
        await self._write_new_job(job)
        return job

    async def _write_new_job(self, job: Job) -> None:
        try:
            await self.backend.put_bytes(job_key(job.id), self.codec.encode(job), if_absent=True)  # type: ignore
        except ConcurrentModificationError:
            raise ConcurrentModificationError(f"a job with ID {job.id!r} already exists") from None

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Defer :meth:`create_job` writes to the end of the block, then write them concurrently. If the block
        raises, none of its jobs are written."""
        self._require_ready()
        outer = _current_batch.get()
        if outer is not None and outer[0] == id(self):
            yield  # nested: the outer batch writes
            return
        pending = _Batch()
        token = _current_batch.set((id(self), pending))
        try:
            yield
        finally:
            _current_batch.reset(token)
        await self._for_each(pending.jobs, self._write_new_job)

    async def _for_each(self, items: list[Any], action: Callable[[Any], Awaitable[Any]]) -> None:
        """Run ``action`` over ``items`` with at most ``_CONCURRENT_LOADS`` at a time; first error is raised."""
        limiter = anyio.Semaphore(_CONCURRENT_LOADS)
        errors: list[BaseException] = []

        async def one(item: Any) -> None:
            async with limiter:
                if errors:
                    return
                try:
                    await action(item)
                except Exception as error:
                    errors.append(error)

        async with anyio.create_task_group() as tasks:
            for item in items:
                tasks.start_soon(one, item)
        if errors:
            raise errors[0]

    async def load_job(self, job_id: str) -> Job:
        """Read a job. Raises :class:`NoSuchJobError`."""
        self._require_ready()
        key = job_key(check_job_id(job_id))
        try:
            raw = await self.backend.get_bytes(key)
        except NoSuchFileError:
            raise NoSuchJobError(job_id) from None
        return self._decode_job(raw, key, job_id)

    def _decode_job(self, raw: bytes, key: str, job_id: str | None = None) -> Job:
        job = self.codec.decode(raw, key)
        if job.id != (job_id or key.rsplit("/", 1)[-1]):
            raise CorruptRecordError(key, f"the record says it is job {job.id!r}")
        return job

    async def update_job(self, job: Job, *, overwrite: bool = False) -> None:
        """Replace a job atomically and bump ``job.version``. Raises :class:`ConcurrentModificationError` when
        the stored job is newer than ``job`` (someone else updated it since it was loaded) and
        :class:`NoSuchJobError` when it was deleted.

        With ``overwrite=True`` the write wins whatever version is stored (last writer wins, as in Toil): it is
        still one compare-and-swap on the record, so it never interleaves with another writer's update, and the
        stored version is bumped past the one it replaced, so other holders' stale copies are still refused.
        ``job.stale_overwritten`` tells afterwards whether it replaced a version newer than ``job.version``."""
        self._require_ready()
        key = job_key(check_job_id(job.id or ""))
        new = Job(job.name, job.data, job.id, job.version + 1)
        encoded = self.codec.encode(new)  # here, not in edit(): the caller may change job.data meanwhile
        replaced: list[int] = []

        def edit(raw: bytes) -> bytes:  # may run more than once (a backend retrying its compare-and-swap)
            replaced.clear()
            stored = self._decode_job(raw, key, job.id)
            if stored.version == job.version:
                return encoded
            if not overwrite:
                raise _StaleJobError(
                    f"job {job.id!r} is at version {stored.version} in the store but this copy is version "
                    f"{job.version}: load_job() it again and reapply the change"
                )
            replaced.append(stored.version)
            return self.codec.encode(Job(new.name, new.data, new.id, stored.version + 1))

        try:
            await self.backend.update_object(key, edit)
        except NoSuchFileError:
            raise NoSuchJobError(job.id or "") from None
        except _StaleJobError:
            raise
        except ConcurrentModificationError:
            raise ConcurrentModificationError(
                f"job {job.id!r} was changed by another writer during this update: load_job() it again"
            ) from None
        job.stale_overwritten = bool(replaced) and replaced[-1] > job.version
        job.version = replaced[-1] + 1 if replaced else new.version

    async def delete_job(self, job_id: str) -> None:
        """Delete a job and the files written for it with ``cleanup=True``. Idempotent."""
        self._require_ready()
        check_job_id(job_id)
        await self.backend.delete_prefix(f"{FILES}c/{shard(job_id)}/{job_id}/")
        await self.backend.delete(job_key(job_id))

    async def job_exists(self, job_id: str) -> bool:
        """Whether a job with this ID is in the store."""
        self._require_ready()
        try:
            check_job_id(job_id)
        except NoSuchJobError:
            return False
        return await self.backend.stat(job_key(job_id)) is not None

    async def jobs(self) -> AsyncIterator[Job]:
        """Every job in the store (loaded concurrently, yielded in no particular order). A record that cannot be
        read as a job (corrupt, planted, failing its checksum) is skipped with a warning naming its key."""
        self._require_ready()
        keys = [info.key async for info in self.backend.list(JOBS, metadata=False)]
        for start in range(0, len(keys), _CONCURRENT_LOADS):
            loaded: list[Job] = []

            async def load(key: str, out: list[Job] = loaded) -> None:
                try:
                    out.append(self._decode_job(await self.backend.get_bytes(key), key))
                except NoSuchFileError:  # deleted while listing
                    return
                except (CorruptRecordError, IntegrityError, InvalidKeyError) as error:
                    log.warning("jobs(): skipping %s: %s", key, error)

            await self._for_each(keys[start : start + _CONCURRENT_LOADS], load)
            for job in loaded:
                yield job

    async def set_root_job(self, job_id: str) -> None:
        """Record which job is the workflow's root."""
        self._require_ready()
        await self.backend.put_bytes(ROOT_JOB_KEY, check_job_id(job_id).encode())

    async def load_root_job(self) -> Job:
        """Load the root job. Raises :class:`NoSuchJobError` if none is set or it was deleted."""
        self._require_ready()
        try:
            job_id = (await self.backend.get_bytes(ROOT_JOB_KEY)).decode()
        except NoSuchFileError:
            raise NoSuchJobError("<root job>") from None
        return await self.load_job(job_id)

    async def create_root_job(self, job: Job) -> Job:
        """Create ``job`` and make it the root job."""
        job = await self.create_job(job)
        await self.set_root_job(job.id)  # type: ignore[arg-type]
        return job

    # ----------------------------------------------------------------------------------------------- files

    async def _new_file_key(self, job_id: str | None, cleanup: bool, basename: str,
                            hints: Iterable[str] | None = None) -> str:
        """A fresh key for a new file. With ``hints`` (and no cleanup), the ID is human-findable:
        ``h/<number of hints>/<hint>/.../<slot>/<basename>``, the slot the lowest free number claimed for these
        hints (create-only, so distinct across processes and nodes, and never reused after a delete)."""
        check_basename(basename)
        if cleanup:
            if job_id is None:
                raise JobStoreError("cleanup=True needs the job_id of the job whose deletion removes the file")
            check_job_id(job_id)
            return f"{FILES}c/{shard(job_id)}/{job_id}/{uuid.uuid4().hex}/{basename}"
        path = hint_path(hints)
        if path:
            count = path.count("/") + 1
            slot = await self._claim_hint_slot(f"{count}/{path}")
            return f"{FILES}h/{count}/{path}/{slot}/{basename}"
        unique = uuid.uuid4().hex
        return f"{FILES}n/{unique[:2]}/{unique}/{basename}"

    async def _claim_hint_slot(self, hints: str) -> int:
        """Claim a free slot number under ``hint-slots/<hints>/`` with a create-only marker (kept after the file is
        deleted, so a slot is never reused). Probes the slot after the last one this store object claimed, then
        ever further (1, 2, 4, ... past it) until one is free: a fresh process's n-th file with the same hints
        costs O(log n) requests, the next ones one each."""
        async def claim(slot: int) -> bool:
            try:
                await self.backend.put_bytes(f"{HINT_SLOTS}{hints}/{slot}", b"", if_absent=True)
                return True
            except ConcurrentModificationError:
                return False

        known_taken = self._hint_slots.get(hints, -1)
        step, low = 1, known_taken + 1
        while not await claim(low):
            known_taken = low
            low = known_taken + step
            step *= 2
        self._hint_slots[hints] = max(self._hint_slots.get(hints, -1), low)
        return low

    async def write_file(self, local_path: str | os.PathLike[str], job_id: str | None = None,
                         cleanup: bool = False, *, hints: Iterable[str] | None = None,
                         progress: ProgressCallback | None = None) -> FileID:
        """Copy a local file into the store; the ID ends with its basename and keeps its executable bit. With
        ``hints`` (words such as workflow and task names) the ID contains them, for people to find the file."""
        self._require_ready()
        local_path = os.fspath(local_path)
        key = await self._new_file_key(job_id, cleanup, os.path.basename(local_path) or "file", hints)
        try:
            executable = await anyio.to_thread.run_sync(_is_executable, local_path)
        except FileNotFoundError:
            raise NoSuchFileError(local_path, "the local file to write does not exist") from None
        metadata = {META_EXECUTABLE: "1"} if executable else {}
        info = await self.backend.upload_file(local_path, key, metadata=metadata, progress=progress)
        return FileID(file_id_of(key), info.size, executable)

    @asynccontextmanager
    async def _writer(self, key: str, *, encoding: str | None, errors: str | None,
                      metadata: dict[str, str] | None = None, encrypted: bool = False) -> AsyncIterator[Any]:
        async with self.backend.open_writer(key, metadata=metadata, encrypted=encrypted) as raw:
            if encoding is None and errors is None:
                yield raw
            else:
                text = TextWriter(raw, encoding, errors)
                yield text
                await text.flush_encoder()

    @overload
    def write_file_stream(self, job_id: str | None = None, cleanup: bool = False, basename: str | None = None,
                          encoding: None = None, errors: None = None, *, hints: Iterable[str] | None = None
                          ) -> AbstractAsyncContextManager[tuple[AsyncWriter, FileID]]: ...
    @overload
    def write_file_stream(self, job_id: str | None = None, cleanup: bool = False, basename: str | None = None,
                          *, encoding: str, errors: str | None = None, hints: Iterable[str] | None = None
                          ) -> AbstractAsyncContextManager[tuple[TextWriter, FileID]]: ...
    @overload
    def write_file_stream(self, job_id: str | None, cleanup: bool, basename: str | None, encoding: str,
                          errors: str | None = None, *, hints: Iterable[str] | None = None
                          ) -> AbstractAsyncContextManager[tuple[TextWriter, FileID]]: ...
    @overload
    def write_file_stream(self, job_id: str | None = None, cleanup: bool = False, basename: str | None = None,
                          encoding: str | None = None, errors: str | None = None, *,
                          hints: Iterable[str] | None = None
                          ) -> AbstractAsyncContextManager[tuple[AsyncWriter | TextWriter, FileID]]: ...
    def write_file_stream(self, job_id: str | None = None, cleanup: bool = False, basename: str | None = None,
                          encoding: str | None = None, errors: str | None = None, *,
                          hints: Iterable[str] | None = None
                          ) -> AbstractAsyncContextManager[tuple[AsyncWriter | TextWriter, FileID]]:
        """``async with`` it for ``(writer, file_id)`` of a new file (a text writer when ``encoding`` is given);
        the file exists once the block exits cleanly, and not at all if the block raises or is cancelled.
        ``file_id.size`` is set when the block exits. With ``hints`` the ID contains them (see write_file)."""
        return self._write_file_stream(job_id, cleanup, basename, encoding, errors, hints=hints)

    @asynccontextmanager
    async def _write_file_stream(self, job_id: str | None = None, cleanup: bool = False, basename: str | None = None,
                                encoding: str | None = None, errors: str | None = None, *,
                                hints: Iterable[str] | None = None
                                ) -> AsyncIterator[tuple[AsyncWriter | TextWriter, FileID]]:
        """Yield ``(writer, file_id)`` for a new file; it exists once the block exits cleanly, and not at all
        if the block raises or is cancelled. ``file_id.size`` is set when the block exits."""
        self._require_ready()
        key = await self._new_file_key(job_id, cleanup, basename or "stream", hints)
        file_id = FileID(file_id_of(key))
        async with self._writer(key, encoding=encoding, errors=errors) as writer:
            yield writer, file_id
        file_id.size = writer.bytes_written

    async def get_empty_file_store_id(self, job_id: str | None = None, cleanup: bool = False,
                                      basename: str | None = None, *,
                                      hints: Iterable[str] | None = None) -> FileID:
        """Create an empty file and return its ID (for a file to be written later with update_file*)."""
        self._require_ready()
        key = await self._new_file_key(job_id, cleanup, basename or "empty", hints)
        await self.backend.put_bytes(key, b"")
        return FileID(file_id_of(key), 0)

    async def _existing_file(self, file_id: str) -> tuple[str, ObjectInfo]:
        key = file_key(file_id)
        info = await self.backend.stat(key)
        if info is None:
            raise NoSuchFileError(file_id)
        return key, info

    async def update_file(self, file_id: str, local_path: str | os.PathLike[str], *,
                          progress: ProgressCallback | None = None) -> None:
        """Replace a file's content with a local file, atomically. Raises :class:`NoSuchFileError`."""
        self._require_ready()
        key, _ = await self._existing_file(file_id)
        executable = await anyio.to_thread.run_sync(_is_executable, os.fspath(local_path))
        info = await self.backend.upload_file(local_path, key, metadata={META_EXECUTABLE: "1"} if executable else {},
                                              progress=progress)
        if isinstance(file_id, FileID):
            file_id.size, file_id.executable = info.size, executable

    @overload
    def update_file_stream(self, file_id: str, encoding: None = None,
                           errors: None = None) -> AbstractAsyncContextManager[AsyncWriter]: ...
    @overload
    def update_file_stream(self, file_id: str, encoding: str, errors: str | None = None
    ) -> AbstractAsyncContextManager[TextWriter]: ...
    @overload
    def update_file_stream(self, file_id: str, encoding: str | None = None,
                           errors: str | None = None) -> AbstractAsyncContextManager[AsyncWriter | TextWriter]: ...
    def update_file_stream(self, file_id: str, encoding: str | None = None,
                           errors: str | None = None) -> AbstractAsyncContextManager[AsyncWriter | TextWriter]:
        """``async with`` it for a writer that replaces a file's content when the block exits cleanly; if the
        block raises, the old content stays. Raises :class:`NoSuchFileError`."""
        return self._update_file_stream(file_id, encoding, errors)

    @asynccontextmanager
    async def _update_file_stream(self, file_id: str, encoding: str | None = None,
                                 errors: str | None = None) -> AsyncIterator[AsyncWriter | TextWriter]:
        """Yield a writer that replaces a file's content when the block exits cleanly; if the block raises,
        the old content stays. Raises :class:`NoSuchFileError`."""
        self._require_ready()
        key, info = await self._existing_file(file_id)
        keep = {META_EXECUTABLE: "1"} if info.metadata.get(META_EXECUTABLE) == "1" else {}
        async with self._writer(key, encoding=encoding, errors=errors, metadata=keep) as writer:
            yield writer
        if isinstance(file_id, FileID):
            file_id.size = writer.bytes_written

    async def read_file(self, file_id: str, local_path: str | os.PathLike[str], symlink: bool = False, *,
                        link: bool = False, progress: ProgressCallback | None = None) -> None:
        """Copy a file out of the store to ``local_path`` (atomically), restoring its executable bit.

        By default ``local_path`` is a private copy (verified against the file's CRC32C). With ``link=True`` the
        caller promises not to modify it, and a ``file:`` store hands back the stored file itself where it can —
        a reflink (copy-on-write: btrfs, XFS), else a hard link when the file is not executable — which costs no
        copy and is not verified; elsewhere it copies. With ``symlink=True`` a ``file:`` store may instead make
        ``local_path`` a symbolic link to its copy (not for executable files, whose bit a link cannot carry)."""
        self._require_ready()
        key = file_key(file_id)
        local_path = os.fspath(local_path)
        if link:
            info = await self.backend.stat(key)
            if info is None:
                raise NoSuchFileError(file_id)
            if await self.backend.link_file(key, local_path, executable=info.metadata.get(META_EXECUTABLE) == "1"):
                return
        source = self.backend.local_path(key)
        if symlink and source is not None:
            info = await self.backend.stat(key)
            if info is None:
                raise NoSuchFileError(file_id)
            # a link shows the stored file's mode, which is not executable: an executable file is copied instead
            if info.metadata.get(META_EXECUTABLE) != "1":
                try:
                    await anyio.to_thread.run_sync(os.symlink, source, local_path)
                    return
                except OSError:
                    pass  # e.g. the destination exists: fall back to a copy
        try:
            info = await self.backend.download_file(key, local_path, progress=progress)
        except NoSuchFileError:
            raise NoSuchFileError(file_id) from None
        await anyio.to_thread.run_sync(_set_executable, local_path, info.metadata.get(META_EXECUTABLE) == "1")

    @overload
    def read_file_stream(self, file_id: str, encoding: None = None, errors: None = None
    ) -> AbstractAsyncContextManager[AsyncReader]: ...
    @overload
    def read_file_stream(self, file_id: str, encoding: str, errors: str | None = None
    ) -> AbstractAsyncContextManager[TextReader]: ...
    @overload
    def read_file_stream(self, file_id: str, encoding: str | None = None,
                         errors: str | None = None) -> AbstractAsyncContextManager[AsyncReader | TextReader]: ...
    def read_file_stream(self, file_id: str, encoding: str | None = None,
                         errors: str | None = None) -> AbstractAsyncContextManager[AsyncReader | TextReader]:
        """``async with`` it for a reader over a file's content (text when ``encoding`` is given). Read to its
        end, the content is verified against its CRC32C; a stream stopped early is not. Raises
        :class:`NoSuchFileError`."""
        return self._read_file_stream(file_id, encoding, errors)

    @asynccontextmanager
    async def _read_file_stream(self, file_id: str, encoding: str | None = None,
                               errors: str | None = None) -> AsyncIterator[AsyncReader | TextReader]:
        """Yield a reader over a file's content (text when ``encoding`` is given). Raises NoSuchFileError."""
        self._require_ready()
        async with self._reader(file_key(file_id), file_id, encoding, errors) as reader:
            yield reader

    @asynccontextmanager
    async def _reader(self, key: str, name: str, encoding: str | None,
                      errors: str | None) -> AsyncIterator[AsyncReader | TextReader]:
        try:
            async with self.backend.open_reader(key) as raw:
                yield raw if encoding is None and errors is None else TextReader(raw, encoding, errors)
        except NoSuchFileError as error:
            if error.file_id != key:
                raise
            raise NoSuchFileError(name) from None

    async def delete_file(self, file_id: str) -> None:
        """Delete a file. Idempotent."""
        self._require_ready()
        await self.backend.delete(file_key(file_id))

    async def file_exists(self, file_id: str) -> bool:
        """Whether the file is in the store."""
        self._require_ready()
        return await self.backend.stat(file_key(file_id)) is not None

    async def get_file_size(self, file_id: str) -> int:
        """The file's size in bytes. Raises :class:`NoSuchFileError`."""
        self._require_ready()
        _, info = await self._existing_file(file_id)
        return info.size

    async def stat_file(self, file_id: str) -> ObjectInfo:
        """A file's size, modification time, etag and metadata (``key`` is the file ID). Raises
        :class:`NoSuchFileError`."""
        self._require_ready()
        key, info = await self._existing_file(file_id)
        return replace(info, key=file_id_of(key))

    async def list_files(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every file whose ID starts with ``prefix``, in no promised order (``key`` is the file ID)."""
        self._require_ready()
        async for info in self.backend.list(FILES + prefix, metadata=False):
            yield replace(info, key=file_id_of(info.key))

    # ---------------------------------------------------------------------------------------- shared files

    async def stat_shared_file(self, shared_file_name: str) -> ObjectInfo:
        """A shared file's info (``key`` is its name). Raises :class:`NoSuchFileError`."""
        self._require_ready()
        info = await self.backend.stat(shared_key(shared_file_name))
        if info is None:
            raise NoSuchFileError(shared_file_name)
        return replace(info, key=shared_file_name)

    async def list_shared_files(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every shared file whose name starts with ``prefix`` (``key`` is the name)."""
        self._require_ready()
        async for info in self.backend.list(SHARED + prefix, metadata=False):
            yield replace(info, key=info.key[len(SHARED) :])

    async def delete_shared_file(self, shared_file_name: str) -> None:
        """Delete a shared file. Idempotent."""
        self._require_ready()
        await self.backend.delete(shared_key(shared_file_name))


    @overload
    def write_shared_file_stream(self, shared_file_name: str, encrypted: bool | None = None, encoding: None = None,
                                 errors: None = None) -> AbstractAsyncContextManager[AsyncWriter]: ...
    @overload
    def write_shared_file_stream(self, shared_file_name: str, encrypted: bool | None = None, *, encoding: str,
                                 errors: str | None = None) -> AbstractAsyncContextManager[TextWriter]: ...
    @overload
    def write_shared_file_stream(self, shared_file_name: str, encrypted: bool | None, encoding: str,
                                 errors: str | None = None) -> AbstractAsyncContextManager[TextWriter]: ...
    @overload
    def write_shared_file_stream(self, shared_file_name: str, encrypted: bool | None = None,
                                 encoding: str | None = None,
                                 errors: str | None = None
                                 ) -> AbstractAsyncContextManager[AsyncWriter | TextWriter]: ...
    def write_shared_file_stream(self, shared_file_name: str, encrypted: bool | None = None,
                                 encoding: str | None = None,
                                 errors: str | None = None) -> AbstractAsyncContextManager[AsyncWriter | TextWriter]:
        """``async with`` it for a writer of a shared file (replaced atomically on clean exit). ``encrypted=None``
        encrypts when the store has a key; ``True`` requires one (:class:`EncryptionKeyError` otherwise)."""
        return self._write_shared_file_stream(shared_file_name, encrypted, encoding, errors)

    @asynccontextmanager
    async def _write_shared_file_stream(self, shared_file_name: str, encrypted: bool | None = None,
                                       encoding: str | None = None, errors: str | None = None
                                       ) -> AsyncIterator[AsyncWriter | TextWriter]:
        """Yield a writer for a shared file (replaced atomically on clean exit). ``encrypted=None`` encrypts
        when the store has a key; ``True`` requires one (:class:`EncryptionKeyError` otherwise)."""
        self._require_ready()
        key = shared_key(shared_file_name)
        encrypt = self.backend.sse_key is not None if encrypted is None else encrypted
        async with self._writer(key, encoding=encoding, errors=errors, encrypted=encrypt) as writer:
            yield writer

    @overload
    def read_shared_file_stream(self, shared_file_name: str, encoding: None = None,
                                errors: None = None) -> AbstractAsyncContextManager[AsyncReader]: ...
    @overload
    def read_shared_file_stream(self, shared_file_name: str, encoding: str,
                                errors: str | None = None) -> AbstractAsyncContextManager[TextReader]: ...
    @overload
    def read_shared_file_stream(self, shared_file_name: str, encoding: str | None = None,
                                errors: str | None = None) -> AbstractAsyncContextManager[AsyncReader | TextReader]: ...
    def read_shared_file_stream(self, shared_file_name: str, encoding: str | None = None,
                                errors: str | None = None) -> AbstractAsyncContextManager[AsyncReader | TextReader]:
        """``async with`` it for a reader over a shared file. Raises :class:`NoSuchFileError`, or
        :class:`EncryptionKeyError` when it is encrypted and the store's key is missing or wrong."""
        return self._read_shared_file_stream(shared_file_name, encoding, errors)

    @asynccontextmanager
    async def _read_shared_file_stream(self, shared_file_name: str, encoding: str | None = None,
                                      errors: str | None = None) -> AsyncIterator[AsyncReader | TextReader]:
        """Yield a reader over a shared file. Raises :class:`NoSuchFileError`, or :class:`EncryptionKeyError`
        when it is encrypted and the store's key is missing or wrong."""
        self._require_ready()
        key = shared_key(shared_file_name)
        async with self._reader(key, shared_file_name, encoding, errors) as reader:
            yield reader

    async def shared_file_exists(self, shared_file_name: str) -> bool:
        """Whether a shared file of this name exists (no key needed for an encrypted one, on every backend)."""
        self._require_ready()
        try:
            return await self.backend.stat(shared_key(shared_file_name)) is not None
        except EncryptionKeyError:  # S3 answers a HEAD without the SSE-C key with 400: it exists
            return True

    # ------------------------------------------------------------------------------------------------ logs

    async def write_logs(self, msg: str | bytes) -> None:
        """Store a log message for the leader to read once with :meth:`read_logs`."""
        self._require_ready()
        data = msg.encode() if isinstance(msg, str) else bytes(msg)
        await self.backend.put_bytes(f"{LOG_INBOX}{time.time_ns():020d}-{uuid.uuid4().hex}", data, if_absent=True)

    async def read_logs(self, callback: Callable[[bytes], Any], read_all: bool = False, *,
                        lease: float = DEFAULT_LOG_LEASE) -> int:
        """Call ``callback`` (function or coroutine function) with each unread log's bytes, oldest first, and
        mark them read; with ``read_all`` also the logs read before. Returns how many were passed on.

        Delivery is at least once, and exactly once to readers that finish: a reader claims a log before its
        callback runs, with a lease of ``lease`` seconds that it renews while the callback runs; other readers skip
        a claimed log. A log whose callback raises (or is cancelled) is released and stays unread; a log whose
        reader died (SIGKILL, power loss) is delivered again once the lease has run out. Leases compare wall
        clocks, so readers on several nodes need clocks within a fraction of ``lease`` of each other."""
        self._require_ready()
        count = 0
        if read_all:
            archived = sorted([info.key async for info in self.backend.list(LOG_ARCHIVE, metadata=False)],
                              key=lambda k: k.rsplit("/", 1)[-1])
            for key in archived:
                try:
                    data = await self.backend.get_bytes(key)
                except NoSuchFileError:
                    continue
                await _call(callback, data)
                count += 1
        inbox = sorted([info.key async for info in self.backend.list(LOG_INBOX, metadata=False)])
        for key in inbox:
            if await self._deliver_log(key, callback, lease):
                count += 1
        return count

    async def _deliver_log(self, key: str, callback: Callable[[bytes], Any], lease: float) -> bool:
        """Claim, deliver and archive one inbox log; ``False`` if another reader has it (or had it)."""
        name = key.rsplit("/", 1)[-1]
        claim = _LogClaim(self.backend, f"{LOG_CLAIMS}{name}", lease)
        taken_over = await claim.take()
        if taken_over is None:
            return False
        archive_key = f"{LOG_ARCHIVE}{name[:14]}/{name}"
        try:
            if taken_over and await self.backend.stat(archive_key) is not None:
                # a reader delivered it and died before clearing the inbox: finish its bookkeeping only
                await self.backend.delete(key)
                return False
            try:
                data = await self.backend.get_bytes(key)
            except NoSuchFileError:
                return False  # another reader finished it between our listing and our claim
            await claim.while_renewed(_call, callback, data)
            await self.backend.put_bytes(archive_key, data)
            await self.backend.delete(key)
        finally:
            await run_uncancelled(claim.release)
        return True

    # ------------------------------------------------------------------------------------------- bookkeeping

    async def write_leader_pid(self) -> None:
        """Record this process's PID as the leader's."""
        self._require_ready()
        await self.backend.put_bytes(LEADER_PID_KEY, str(os.getpid()).encode())

    async def read_leader_pid(self) -> int:
        """The leader's PID. Raises :class:`NoSuchFileError` if none was written."""
        self._require_ready()
        return int(await self.backend.get_bytes(LEADER_PID_KEY))

    async def write_kill_flag(self, kill: bool = False) -> None:
        """Write the kill flag (``kill=True`` asks every worker to stop)."""
        self._require_ready()
        await self.backend.put_bytes(KILL_FLAG_KEY, b"YES" if kill else b"NO")

    async def read_kill_flag(self) -> bool:
        """Whether the kill flag is set (``False`` when none was written)."""
        self._require_ready()
        try:
            return await self.backend.get_bytes(KILL_FLAG_KEY) == b"YES"
        except NoSuchFileError:
            return False

    # ------------------------------------------------------------------------------------ import / export

    @staticmethod
    def _local_url_path(url: str) -> str | None:
        """The local path of a ``file://`` URL (or a bare absolute path), else ``None``."""
        parsed = urlparse(url)
        scheme = parsed.scheme.lower()
        if scheme != "file" and not (scheme == "" and url.startswith("/")):
            return None
        path = os.path.abspath(unquote(parsed.path))
        if not os.path.basename(path) or parsed.path.endswith("/"):
            raise InvalidLocatorError(f"{url!r} names a directory; import/export takes a file URL")
        return path

    def _url_backend(self, url: str) -> tuple[Backend, str]:
        """The backend and key for an ``s3://`` or ``gs://`` import/export URL."""
        parsed = urlparse(url)
        scheme = parsed.scheme.lower()
        if scheme in ("s3", "gs"):
            key = unquote(parsed.path.lstrip("/"))
            if not key:
                raise InvalidLocatorError(f"{url!r} names a bucket, not an object")
            validate_key(key)
            cache_key = (scheme, parsed.netloc)
            if cache_key not in self._url_backends:
                # a URL on the store's own kind of backend shares its endpoint, credentials and transfer
                # settings; another kind keeps its defaults (an S3 part size must not come from a GCS store)
                own = self.backend.scheme == scheme
                options = {**self._backend_options, "transfer": self.backend.transfer} if own else {}
                self._url_backends[cache_key] = open_backend(parse_locator(f"{scheme}://{parsed.netloc}"), **options)
            return self._url_backends[cache_key], key
        raise InvalidLocatorError(
            f"cannot import from or export to {url!r}: use a file://, s3:// or gs:// URL (http(s):// for imports)"
        )

    async def import_file(self, src_url: str, shared_file_name: str | None = None) -> FileID | None:
        """Copy the object at ``src_url`` (file://, s3://, gs://, http(s)://) into the store. Returns its
        FileID, or ``None`` when it was stored as the shared file ``shared_file_name``."""
        self._require_ready()
        if shared_file_name is not None:
            key = shared_key(shared_file_name)
        else:
            key = await self._new_file_key(None, False, check_basename(
                unquote(urlparse(src_url).path).rsplit("/", 1)[-1] or "imported"))
        scheme = urlparse(src_url).scheme.lower()
        local = self._local_url_path(src_url)
        if scheme in ("http", "https"):
            info = await self._import_http(src_url, key)
            executable = False
        elif local is not None:  # the user's own path: links in it are followed, as users expect
            try:
                executable = await anyio.to_thread.run_sync(_is_executable, local)
            except (FileNotFoundError, NotADirectoryError):
                raise NoSuchFileError(src_url, "nothing to import at that URL") from None
            info = await self.backend.upload_file(local, key, metadata={META_EXECUTABLE: "1"} if executable else {})
        else:
            source, src_key = self._url_backend(src_url)
            src_info = await source.stat(src_key)
            if src_info is None:
                raise NoSuchFileError(src_url, "nothing to import at that URL")
            executable = src_info.metadata.get(META_EXECUTABLE) == "1"
            info = await transfer_object(source, src_key, self.backend, key,
                                         metadata={META_EXECUTABLE: "1"} if executable else {})
        if shared_file_name is not None:
            return None
        return FileID(file_id_of(key), info.size, executable)

    async def _import_http(self, url: str, key: str) -> ObjectInfo:
        """Stream an http(s) URL into ``key``. No total time limit: a download that keeps receiving runs as long
        as it needs; one that receives nothing for ``http_idle_timeout`` seconds fails. Redirects are followed only
        to http(s) URLs; a body shorter than its ``Content-Length`` is an error. Every failure is a
        :class:`JobStoreError` naming the URL, and leaves nothing in the store."""
        import aiohttp
        from yarl import URL

        idle = self.http_idle_timeout
        timeout = aiohttp.ClientTimeout(total=None, connect=idle, sock_connect=idle, sock_read=idle)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                target = url
                for _ in range(_MAX_REDIRECTS + 1):
                    async with session.get(target, allow_redirects=False) as response:
                        if response.status in (301, 302, 303, 307, 308) and "Location" in response.headers:
                            target = str(response.url.join(URL(response.headers["Location"])))
                            if urlparse(target).scheme.lower() not in ("http", "https"):
                                raise JobStoreError(f"cannot import {url}: it redirects to {target!r}, which is not "
                                                    "an http(s) URL")
                            continue
                        return await self._receive_http(url, key, response)
                raise JobStoreError(f"cannot import {url}: more than {_MAX_REDIRECTS} redirects")
        except JobStoreError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
            detail = str(error) or type(error).__name__
            if isinstance(error, TimeoutError):
                detail = f"nothing received for {idle:g} s (http_idle_timeout)"
            raise JobStoreError(f"cannot import {url}: {detail}") from error

    async def _receive_http(self, url: str, key: str, response: Any) -> ObjectInfo:
        if response.status == 404:
            raise NoSuchFileError(url, "the server answered 404")
        if response.status >= 400:
            raise JobStoreError(f"cannot import {url}: the server answered {response.status} {response.reason}")
        expected = response.content_length
        received = 0
        async with self.backend.open_writer(key) as writer:
            async for chunk in response.content.iter_chunked(_COPY_CHUNK):
                await writer.write(chunk)
                received += len(chunk)
            if expected is not None and received != expected:
                raise JobStoreError(f"cannot import {url}: the body ended after {received} of the {expected} bytes "
                                    "its Content-Length announced")
        info = await self.backend.stat(key)
        if info is None:
            raise NoSuchFileError(key, "the imported object vanished right after it was written")
        return info

    async def export_file(self, file_id: str, dst_url: str) -> None:
        """Copy a file out of the store to ``dst_url`` (file://, s3://, gs://); same-backend copies are
        server-side, others stream. The executable bit is kept."""
        self._require_ready()
        key, info = await self._existing_file(file_id)
        executable = info.metadata.get(META_EXECUTABLE) == "1"
        target = self._local_url_path(dst_url)
        if target is not None:  # the user's own path, created as needed
            await anyio.to_thread.run_sync(functools.partial(os.makedirs, os.path.dirname(target), exist_ok=True))
            await self.backend.download_file(key, target)
            await anyio.to_thread.run_sync(_set_executable, target, executable)
            return
        dest, dst_key = self._url_backend(dst_url)
        await transfer_object(self.backend, key, dest, dst_key, metadata={META_EXECUTABLE: "1"} if executable else {})

    async def get_public_url(self, file_id: str) -> str:
        """A URL from which the file can be read without this library (presigned where the backend needs it)."""
        self._require_ready()
        key, _ = await self._existing_file(file_id)
        return await self.backend.presign(key, self.public_url_expires)

    async def get_shared_public_url(self, shared_file_name: str) -> str:
        """A URL from which the shared file can be read without this library."""
        self._require_ready()
        key = shared_key(shared_file_name)
        if await self.backend.stat(key) is None:
            raise NoSuchFileError(shared_file_name)
        return await self.backend.presign(key, self.public_url_expires)

    # ---------------------------------------------------------------------------------------------- clean

    async def clean(self, successors: Callable[[Job], Iterable[str]] | None = None, *,
                    older_than: float = DEFAULT_DEBRIS_AGE) -> CleanReport:
        """Tidy the store after crashes (Toil's ``clean``). With ``successors`` (a function giving the IDs of the
        jobs a job leads to), every job not reachable from the root job is deleted with its cleanup files; without
        it, or when no root job is set, no job is deleted. Then debris of writers that died is reclaimed, if older
        than ``older_than`` seconds (default an hour, so that live writers are never touched): temp files on
        ``file:``, temporary parts on GCS, pending multipart uploads on S3, and log claims whose log is gone.
        Returns what was removed. Safe to run while the workflow runs only without ``successors``."""
        self._require_ready()
        report = CleanReport()
        if successors is not None:
            report.jobs_deleted = await self._delete_unreachable_jobs(successors)
        report.debris = await self.backend.reclaim(older_than)
        inbox = {info.key.rsplit("/", 1)[-1] async for info in self.backend.list(LOG_INBOX, metadata=False)}
        cutoff = time.time() - older_than
        async for info in self.backend.list(LOG_CLAIMS, metadata=False):
            if info.key.rsplit("/", 1)[-1] not in inbox and (info.mtime or 0) <= cutoff:
                await self.backend.delete(info.key)
                report.debris.add("log-claim", info.size)
        return report

    async def _delete_unreachable_jobs(self, successors: Callable[[Job], Iterable[str]]) -> list[str]:
        try:
            root = await self.load_root_job()
        except NoSuchJobError:
            log.warning("clean(): no root job is set, so no job is deleted")
            return []
        reachable = {root.id}
        frontier = [root]
        while frontier:
            found: list[Job] = []
            for job in frontier:
                for job_id in successors(job):
                    if job_id in reachable:
                        continue
                    reachable.add(job_id)
                    try:
                        found.append(await self.load_job(job_id))
                    except (NoSuchJobError, CorruptRecordError, IntegrityError):
                        continue
            frontier = found
        unreachable = [info.key.rsplit("/", 1)[-1] async for info in self.backend.list(JOBS, metadata=False)
                       if info.key.rsplit("/", 1)[-1] not in reachable]
        await self._for_each(unreachable, self.delete_job)
        return unreachable

    # ----------------------------------------------------------------------------------------- statistics

    async def summary(self) -> dict[str, int]:
        """Counts for ``aiojobstore status``: jobs, files, file bytes, shared files, unread logs."""
        self._require_ready()
        counts = {"jobs": 0, "files": 0, "file_bytes": 0, "shared_files": 0, "unread_logs": 0}
        async for info in self.backend.list("", metadata=False):
            top = info.key.split("/", 1)[0]
            if top == "jobs":
                counts["jobs"] += 1
            elif top == "files":
                counts["files"] += 1
                counts["file_bytes"] += info.size
            elif top == "shared":
                counts["shared_files"] += 1
            elif info.key.startswith("logs/inbox/"):
                counts["unread_logs"] += 1
        return counts


class _LogClaim:
    """A reader's claim on one log: an object holding its lease's expiry, created only if absent, taken over
    (conditionally on the stale claim's etag) only once expired, renewed conditionally on its own etag."""

    def __init__(self, backend: Backend, key: str, lease: float) -> None:
        self.backend = backend
        self.key = key
        self.lease = lease
        self.etag: str | None = None

    def _body(self) -> bytes:
        return json.dumps({"expires": time.time() + self.lease, "pid": os.getpid()}).encode()

    async def take(self) -> bool | None:
        """``False``: claimed afresh; ``True``: taken over from a dead reader; ``None``: someone else holds it."""
        with contextlib.suppress(ConcurrentModificationError):  # held, or held by a reader that died
            self.etag = (await self.backend.put_bytes(self.key, self._body(), if_absent=True)).etag
            return False
        try:
            raw, info = await self.backend.get_object(self.key)
        except NoSuchFileError:
            return None  # released just now: its log was delivered or is being retried; the next read sees it
        except IntegrityError:  # an unreadable claim is no claim: taken over on the etag it is stored with
            found = await self.backend.stat(self.key)
            if found is None:
                return None  # released just now, as above
            info, expires = found, 0.0
        else:
            try:
                expires = json.loads(raw)["expires"]
            except (ValueError, KeyError, TypeError):
                expires = 0.0  # an unreadable claim is no claim
        if not isinstance(expires, (int, float)) or expires > time.time():
            return None
        try:
            self.etag = (await self.backend.put_bytes(self.key, self._body(), if_match=info.etag)).etag
        except (ConcurrentModificationError, NoSuchFileError):
            return None
        return True

    async def keep_renewed(self) -> None:
        """Renew the lease every third of its length until cancelled (or until another reader took it over)."""
        while True:
            await anyio.sleep(self.lease / 3)
            try:
                self.etag = (await self.backend.put_bytes(self.key, self._body(), if_match=self.etag)).etag
            except (ConcurrentModificationError, NoSuchFileError):
                log.warning("read_logs: the claim %s expired while its callback ran; the log may be delivered "
                            "again (raise the lease)", self.key)
                return
            except JobStoreError as error:  # a failed renewal is retried at the next one; the callback goes on
                log.warning("read_logs: could not renew the claim %s: %s", self.key, error)

    async def while_renewed(self, func: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``await func(*args)`` while the lease is kept renewed; its error is raised as it is."""
        outcome: list[Any] = []

        async def run(scope: anyio.CancelScope) -> None:
            try:
                outcome.append((True, await func(*args)))
            except Exception as error:
                outcome.append((False, error))
            finally:
                scope.cancel()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self.keep_renewed)
            tasks.start_soon(run, tasks.cancel_scope)
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    async def release(self) -> None:
        await self.backend.delete(self.key)


async def _call(callback: Callable[[bytes], Any], data: bytes) -> Any:
    result = callback(data)
    if inspect.isawaitable(result):
        return await result
    return result


# --------------------------------------------------------------------------------------------- entry point

_STORE_OPTIONS = ("codec", "public_url_expires", "require_checksums", "http_idle_timeout")


def open_store(locator: str | os.PathLike[str], **options: Unpack[StoreOptions]) -> JobStore:
    """Open the job store a locator names (no I/O yet): ``await store.initialize()`` or ``resume()`` next.

    Options: transfer settings (``part_size``, ``max_concurrency``, ``max_requests``, ``max_memory``,
    ``max_attempts``, ...), ``codec`` ('json', the default for a new store, or 'pickle'; a store created with
    'pickle' opens only with ``codec='pickle'``), ``require_checksums`` (default ``True``: an object without the
    store's CRC32C is refused with ``IntegrityError``), ``http_idle_timeout`` (seconds an http(s) import may
    receive nothing; default 300), ``sse_key`` (32 bytes; S3 and GCS), ``public_url_expires``,
    ``fsync`` (local), and the backend's own (``endpoint_url``, ``region_name``, credentials, ``project``...).
    """
    parsed = parse_locator(locator)
    rest: dict[str, Any] = dict(options)
    transfer = rest.pop("transfer", None) or TransferConfig.from_options(rest)
    store_options = {k: rest.pop(k) for k in _STORE_OPTIONS if k in rest}
    backend = open_backend(parsed, transfer=transfer, **rest)
    return JobStore(backend, locator=parsed.text, backend_options=rest, **store_options)
