"""Google Cloud Storage backend: the JSON API over one aiohttp session per store.

Locators: ``gs://bucket/prefix`` and ``google:PROJECT:BUCKET``. Credentials come from ``service_file``,
``GOOGLE_APPLICATION_CREDENTIALS`` or the default chain (through gcloud-aio-auth's ``Token``); with
``STORAGE_EMULATOR_HOST`` (or ``emulator_host=``) requests go to the emulator without credentials.

How data moves
--------------
* Objects up to one part (``transfer.part_size``) go up as one multipart (metadata + media) upload carrying their
  CRC32C, which GCS checks on arrival.
* Larger files and write streams go up as **temporary part objects** (``<root>.ajs-tmp/<id>/<n>``) uploaded in a
  sliding window (:class:`~aiojobstore.transfer.PartWindow`) and joined with ``compose`` (at most 32 sources per
  call; a tree of intermediate composes beyond that). The final compose carries the user metadata and our
  whole-object CRC32C (``ajs-crc32c``, combined arithmetically from the parts' CRCs), and the CRC32C GCS computes
  for the composite is checked against it. Part objects and intermediates are deleted whatever happens: by the
  commit itself after a successful compose, else to the end despite any cancellation (``run_uncancelled``).

  Parts are plain media uploads (no metadata, so no multipart framing) whose CRC32C as stored by GCS is checked
  against ours.

  Why compose and not chunked resumable uploads: a resumable session accepts its chunks strictly in order, one
  request at a time, so it can never use more than one connection; composed parts can use ``max_concurrency``,
  which is what matters on real GCS, where one stream is limited by its round trip (the reason ``gcloud storage``
  and ``gsutil`` offer parallel composite uploads). We could not measure real GCS here. On the emulator the
  choice loses: ``python benchmarks/bench_gcs.py --size-mib 256 --small 500 --repeat 3`` (2 cores, loopback,
  16 MiB parts, 8 in flight, medians) gave composed parts 43 MB/s against 77 MB/s for one sequential chunked
  resumable upload of the same file, because the emulator is single-threaded (parallel parts gain nothing) and
  its ``compose`` concatenates the sources with repeated ``bytes +=``. gcsfs (resumable) reached 81 MB/s at a
  peak RSS of 257 MiB against our 83 MiB. Those figures measure the emulator, not GCS.
* ``download_file`` fetches byte ranges of one pinned generation in parallel, ``os.pwrite``-ing them (in worker
  threads) into a temporary file next to the target, checks the CRC32C and renames it into place.
  ``open_reader`` reads ahead a few ranges at a time and resumes a broken range from the byte it reached.

Integrity: every object this backend makes visible records its CRC32C in ``ajs-crc32c`` (simple and streamed
uploads, composed objects, copies; a copy of a foreign object gets the CRC32C GCS reports for it). Every
whole-object read is checked against the CRC32C GCS reports and against ``ajs-crc32c``; a mismatch is retried once,
then raises :class:`IntegrityError`. With ``require_checksum`` (set by the job store) every read of an object
without ``ajs-crc32c`` raises :class:`IntegrityError`: it was not written through aiojobstore.

Concurrency control: ``if_absent`` sends ``ifGenerationMatch=0`` and ``if_match`` sends
``ifGenerationMatch=<generation>`` (``ObjectInfo.etag`` is the generation). Every conditional write also stores a
per-call token (``ajs-write-token``); when a retry of it gets 412 — the first attempt was applied and its answer
lost — :meth:`GCSBackend._request` reads the object again and, if it carries the call's token, reports the call's
own write instead of a conflict (one place, the retry wrapper, for uploads, composes and the marker). The
gcp-storage-emulator ignores preconditions, so against an emulator each attempt of a conditional request checks
the generation itself and answers 412 (and conditional writes are serialised per key within the process by an
asyncio lock): correct for one process on the emulator, and the real precondition is always sent too.

Cancellation and failure (see :mod:`aiojobstore.commit`): uploading parts, intermediate composes and backups are
staging; a failure or a cancellation there deletes what was staged (``run_uncancelled``). The one request that
makes an object visible — the simple upload, the final compose, the rewrite of a copy — is the commit and runs
under ``commit_or_roll_back``: after ``task.cancel()`` (or ``asyncio.timeout``) it completes and is rolled back,
conditionally on ``ifGenerationMatch`` of the generation it created, so a later writer's object is never
touched: a created key is deleted; ``update_object`` re-uploads the previous bytes it read; any other overwrite
restores a **backup**: before overwriting an existing key, the backend copies it server-side (a rewrite) to
``<root>.ajs-tmp/<id>/backup``. Cost: every write that is not create-only first reads the key's metadata (one
GET); overwriting an existing key also costs the rewrite and a delete of the backup, which runs in the background
once the write returned (``close()`` waits for it), so that a write that returned has nothing left to await and an
anyio cancel scope sees it return normally. The composed commit deletes the temporary parts itself, for the same
reason. Caveats: the restored version is a new generation with the old bytes and metadata; a writer that slipped
in between the backup and an unconditional overwrite is overwritten by the restore; an object encrypted with a
key this store lacks cannot be backed up (a roll-back then keeps the new object, and logs it). A part upload that
is still in the network when its writer cleans up can be applied afterwards: such debris (and what killed writers
leave) is what :meth:`GCSBackend.reclaim` deletes once it is older than its grace period.

Memory: write streams hold at most ``max_concurrency + 1`` parts of the store's ``max_memory``; read streams hold
each range they read ahead of the same budget until the reader has moved past it.

Encryption: ``encrypted=True`` writes send a customer-supplied key (``x-goog-encryption-*``); reads send it when
the object needs it. The emulator ignores these headers (it stores plaintext), so the backend also records the
key's SHA-256 (``ajs-key-sha256``) and checks it before reading: a missing or wrong key raises
:class:`EncryptionKeyError` on the emulator and on GCS alike.

Emulator notes (gcp-storage-emulator 2026.7): no preconditions, no CSEK, no signed URLs (``presign`` returns the
emulator's direct media URL there), ``rewrite`` ignores the destination metadata in the request body (we patch it
afterwards there), ``compose`` needs a destination resource with ``contentType``, suffix ranges are not supported
(we always send explicit ranges).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from os import PathLike
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
import anyio

from ..commit import META_WRITE_TOKEN, commit_or_roll_back, new_write_token, run_uncancelled
from ..errors import (
    BackendUnavailableError,
    ConcurrentModificationError,
    EncryptionKeyError,
    IntegrityError,
    JobStoreError,
    NoSuchFileError,
    TransferError,
)
from ..streams import AsyncReader, AsyncWriter, Buffer, ChunkReader
from ..transfer import (
    MiB,
    Part,
    PartBuffer,
    PartBuffers,
    PartWindow,
    Progress,
    ProgressCallback,
    RangeSink,
    RetryPolicy,
    TransferConfig,
    TransferShare,
    byte_ranges,
    clamp_range,
    combine_part_crcs,
    crc32c_async,
    crc32c_from_b64,
    crc32c_to_b64,
    download_ranges,
    iter_buffer_slices,
    iter_file_slices,
    plan_parts,
    run_parts,
    with_retries,
)
from .base import META_CRC32C, META_KEY_SHA256, Backend, ObjectInfo, ReclaimReport, user_metadata, validate_key

if TYPE_CHECKING:
    from ..locator import Locator

log = logging.getLogger("aiojobstore.gcs")

GCS_API_ROOT = "https://storage.googleapis.com"
SCOPES = ["https://www.googleapis.com/auth/devstorage.full_control"]
MAX_COMPOSE_SOURCES = 32
TMP_DIR = ".ajs-tmp/"
CONTAINER_MARKER = ".ajs-container"
CONTENT_TYPE = "application/octet-stream"
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_READ_AHEAD_CHUNK = 8 * MiB
_READ_AHEAD_DEPTH = 3
_WRITE_SLICE = 4 * MiB

# Per-key locks for the emulator fallback of preconditions: (loop, endpoint, bucket, object) -> lock.
_KEY_LOCKS: weakref.WeakValueDictionary[tuple[int, str, str, str], asyncio.Lock] = weakref.WeakValueDictionary()


class _RetryableStatus(Exception):
    """An HTTP status worth retrying (429, 5xx)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status = status


class _HTTPStatusError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:500]}")
        self.status = status
        self.text = text


class _ShortRead(Exception):
    """A body ended before the bytes it promised; retried from where it stopped."""


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, (_RetryableStatus, _ShortRead, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                              asyncio.TimeoutError, ConnectionError))


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _emulator_host_from_env() -> str | None:
    return os.environ.get("STORAGE_EMULATOR_HOST") or None


def _normalise_host(host: str) -> str:
    host = host.rstrip("/")
    return host if "://" in host else f"http://{host}"


@dataclass
class _Undo:
    """How to roll back one write: restore ``previous`` (bytes, metadata, encrypted: update_object has them in
    hand), else restore the ``backup`` copy made under ``.ajs-tmp/`` before the write, else (the key did not
    exist) delete what the write created. ``restorable`` is false when an existing object could not be backed up."""

    previous: tuple[bytes, dict[str, str], bool] | None = None
    backup: str | None = None
    backup_encrypted: bool = False
    restorable: bool = True


class _GCSWriter:
    """The stream handed out by ``open_writer``: buffers one part, uploads full parts in the background as
    temporary objects (composed at the end). Part buffers come from :class:`PartBuffers`, so a writer holds at
    most ``max_concurrency + 1`` parts of the store's memory budget."""

    def __init__(self, backend: GCSBackend, window: PartWindow, upload_id: str, encrypted: bool) -> None:
        self.backend = backend
        self.window = window
        self.upload_id = upload_id
        self.encrypted = encrypted
        self.buffers = PartBuffers(backend.limits.memory, max(1, backend.transfer.part_size),
                                   keep=backend.transfer.max_concurrency + 1)
        self.bytes_written = 0
        self.part_names: list[str] = []
        self.uploaded: dict[str, tuple[str, int, int]] = {}

    async def write(self, data: Buffer) -> int:
        n = await self.buffers.write(data, self._hand_off)
        self.bytes_written += n
        return n

    async def flush_tail(self) -> None:
        """Hand the partly filled last buffer to a background upload as the last part."""
        tail = self.buffers.take_current()
        if tail is not None:
            await self._hand_off(tail)

    def take_tail(self) -> bytes:
        """The buffered bytes of a stream that never filled a part (its only content)."""
        tail = self.buffers.take_current()
        if tail is None:
            return b""
        data = bytes(tail.view)
        tail.done(reuse=False)
        return data

    async def _hand_off(self, part: PartBuffer) -> None:
        name = self.backend._tmp_name(self.upload_id, f"p{len(self.part_names) + 1:06d}")
        self.part_names.append(name)

        async def upload() -> None:
            sent = False
            try:
                crc = await crc32c_async(part.view)
                await self.backend._upload_part(name, part.view, crc=crc, encrypted=self.encrypted)
                self.uploaded[name] = (name, crc, part.length)
                sent = True
            finally:
                part.done(reuse=sent)

        try:
            await self.window.submit(upload)
        except BaseException:
            part.done(reuse=False)
            raise

    def parts(self) -> list[tuple[str, int, int]]:
        return [self.uploaded[name] for name in self.part_names]

    def release(self) -> None:
        self.buffers.close()


class GCSBackend(Backend):
    """Objects in a GCS bucket under a prefix. No I/O until a method is awaited."""

    scheme = "gs"

    def __init__(self, bucket: str, prefix: str = "", *, transfer: TransferConfig | None = None,
                 sse_key: bytes | str | None = None, project: str | None = None, service_file: str | None = None,
                 emulator_host: str | None = None, request_timeout: float = 300.0) -> None:
        super().__init__(transfer=transfer, sse_key=sse_key)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root = f"{self.prefix}/" if self.prefix else ""
        emulator_host = emulator_host or _emulator_host_from_env()
        self.emulated = emulator_host is not None
        self.api_root = _normalise_host(emulator_host) if emulator_host else GCS_API_ROOT
        self.project = project
        self.service_file = service_file or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None
        self.request_timeout = request_timeout
        self.retry_policy = RetryPolicy.from_config(self.transfer)
        self._session: aiohttp.ClientSession | None = None
        self._token: Any = None
        self._storage: Any = None
        self._closed = False
        self._background: set[asyncio.Future[None]] = set()

    # ------------------------------------------------------------------ plumbing

    def describe(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"

    def _name(self, key: str) -> str:
        return self.root + validate_key(key)

    def _tmp_name(self, upload_id: str, leaf: str) -> str:
        return f"{self.root}{TMP_DIR}{upload_id}/{leaf}"

    def _object_url(self, name: str) -> str:
        return f"{self.api_root}/storage/v1/b/{quote(self.bucket, safe='')}/o/{quote(name, safe='')}"

    def _session_now(self) -> aiohttp.ClientSession:
        if self._closed:
            raise JobStoreError(f"the store at {self.describe()} has been closed; open a new one")
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.transfer.max_requests)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=self.request_timeout)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def _auth_headers(self) -> dict[str, str]:
        if self.emulated:
            return {}
        token = self._ensure_token()
        try:
            value = await token.get()
        except Exception as error:
            raise BackendUnavailableError(
                f"cannot get a Google access token ({error}); check GOOGLE_APPLICATION_CREDENTIALS"
            ) from error
        return {"Authorization": f"Bearer {value}"}

    def _ensure_token(self) -> Any:
        """gcloud-aio-auth's Token for our credentials (reads the credentials file; no network)."""
        if self._token is None:
            try:
                from gcloud.aio.auth import Token

                # gcloud-aio's annotation names requests.Session (its REST build's), but the aio build takes aiohttp's
                self._token = Token(service_file=self.service_file, session=self._session_now(),  # type: ignore[arg-type]
                                    scopes=SCOPES)
            except Exception as error:  # a missing or unreadable credentials file
                raise BackendUnavailableError(
                    f"cannot load Google credentials ({error}); set GOOGLE_APPLICATION_CREDENTIALS to a service "
                    "account file, pass service_file=, or set STORAGE_EMULATOR_HOST for an emulator"
                ) from error
        return self._token

    def _key_headers(self, encrypted: bool, *, source: bool = False) -> dict[str, str]:
        if not encrypted:
            return {}
        if self.sse_key is None:
            raise EncryptionKeyError("encrypted=True needs an encryption key: open the store with sse_key=<32 bytes>")
        lead = "x-goog-copy-source-encryption-" if source else "x-goog-encryption-"
        return {
            lead + "algorithm": "AES256",
            lead + "key": base64.b64encode(self.sse_key).decode(),
            lead + "key-sha256": base64.b64encode(hashlib.sha256(self.sse_key).digest()).decode(),
        }

    def _error(self, status: int, text: str, what: str, key: str | None) -> JobStoreError:
        lowered = text.lower()
        if status == 404 and key is not None and "bucket does not exist" not in lowered:
            return NoSuchFileError(key)
        if status == 404:
            return JobStoreError(f"{what}: bucket {self.bucket!r} does not exist; call create() / initialize() "
                                 f"first ({text[:200]})")
        if status == 412:
            return ConcurrentModificationError(f"{key!r} changed since it was read (precondition failed)")
        if status in (400, 403) and ("encrypt" in lowered or "customer" in lowered):
            return EncryptionKeyError(f"{key!r}: {text[:300]}; open the store with the sse_key it was written with")
        if status in (401, 403):
            return BackendUnavailableError(f"{what}: access denied ({text[:300]}); check the credentials "
                                           "(GOOGLE_APPLICATION_CREDENTIALS) and their permissions on the bucket")
        return TransferError(f"{what} failed: HTTP {status}: {text[:500]}")

    async def _request(self, method: str, url: str, *, what: str, key: str | None = None,
                       params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                       json_body: Any = None, body: Callable[[], Any] | None = None,
                       ok: Iterable[int] = (200,), missing_ok: bool = False, target: str | None = None,
                       write_token: str | None = None) -> tuple[int, Any, Mapping[str, str]]:
        """Send one request with retries; returns ``(status, parsed JSON or None, response headers)``.

        ``body`` is a factory giving a fresh request body per attempt. A 404 with ``missing_ok`` returns
        ``(404, None, headers)``.

        ``target`` names the object a conditional request (``ifGenerationMatch`` in ``params``) is about. On an
        emulator, which ignores preconditions, each attempt checks the precondition against the object first and
        answers 412 itself. ``write_token`` is the per-call token a conditional write stores in the object's
        metadata (``ajs-write-token``): when a *retry* gets 412, the first attempt may have been applied with its
        answer lost, so the object is read again and, if it carries this call's token, that is the call's own
        write and its resource is returned as the answer — never a conflict with itself, never applied twice.
        """
        ok = tuple(ok)
        session = self._session_now()
        precondition = (params or {}).get("ifGenerationMatch") if target is not None else None
        attempts = 0

        async def attempt() -> tuple[int, Any, Mapping[str, str]]:
            nonlocal attempts
            attempts += 1
            response_headers: Mapping[str, str]
            if precondition is not None and target is not None and self.emulated and \
                    not await self._generation_is(target, precondition):
                status, text, response_headers = 412, "conditionNotMet (checked by aiojobstore: the emulator " \
                                                      "ignores preconditions)", {}
            else:
                all_headers = {**(await self._auth_headers()), **(headers or {})}
                data = body() if body is not None else None
                async with self.limits.requests, session.request(method, url, params=params, headers=all_headers,
                                                                  json=json_body, data=data) as response:
                    text = await response.text()
                    status, response_headers = response.status, response.headers
                    if status in ok:
                        parsed = json.loads(text) if text and "json" in response.headers.get("Content-Type", "") \
                            else None
                        return status, parsed, response_headers
            if status == 412 and write_token is not None and attempts > 1:
                mine = await self._resource(target) if target is not None else None
                if mine is not None and (mine.get("metadata") or {}).get(META_WRITE_TOKEN) == write_token:
                    log.info("%s: the retry found the call's own write (its answer was lost)", what)
                    return 200, mine, response_headers
            if status == 404 and missing_ok:
                return 404, None, response_headers
            if status in _RETRY_STATUS:
                raise _RetryableStatus(status, text)
            raise _HTTPStatusError(status, text)

        try:
            return await with_retries(attempt, policy=self.retry_policy, is_retryable=_is_retryable, what=what)
        except _HTTPStatusError as error:
            raise self._error(error.status, error.text, what, key) from None
        except _RetryableStatus as error:
            raise TransferError(f"{what} failed after retries: {error}") from error
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as error:
            raise TransferError(f"{what} failed after retries ({error!r}); is {self.api_root} reachable?") from error

    async def _generation_is(self, name: str, generation: str) -> bool:
        """Whether ``name``'s current generation is ``generation`` (``"0"``: the object does not exist)."""
        current = await self._resource(name)
        return (current is None and generation == "0") or (
            current is not None and str(current.get("generation")) == generation)

    # ------------------------------------------------------------------ object resources

    async def _resource(self, name: str) -> dict[str, Any] | None:
        resource: dict[str, Any] | None
        _, resource, _ = await self._request("GET", self._object_url(name), what=f"stat {name}", key=name,
                                             missing_ok=True)
        return resource

    def _info(self, resource: dict[str, Any]) -> ObjectInfo:
        name = resource["name"]
        key = name[len(self.root):] if name.startswith(self.root) else name
        return ObjectInfo(key, int(resource.get("size") or 0), str(resource.get("generation")),
                          _parse_time(resource.get("updated")), dict(resource.get("metadata") or {}))

    def _is_encrypted(self, resource: dict[str, Any]) -> bool:
        return bool(resource.get("customerEncryption")) or META_KEY_SHA256 in (resource.get("metadata") or {})

    def _check_readable(self, key: str, resource: dict[str, Any]) -> None:
        """Raise unless this store may read the object: ``IntegrityError`` when ``require_checksum`` is set and it
        has no ``ajs-crc32c`` (it was not written through aiojobstore), ``EncryptionKeyError`` for a missing or
        wrong key."""
        if self.require_checksum and META_CRC32C not in (resource.get("metadata") or {}):
            raise IntegrityError(
                f"{key!r} has no {META_CRC32C} checksum: it was not written by aiojobstore (something replaced it "
                "behind the store's back, e.g. with a plain upload). To read it anyway, use a backend that does not "
                "require checksums: aiojobstore.locator.open_backend() on the store's gs:// location (its "
                "require_checksum is False), then check the bytes yourself")
        self._check_read_key(key, resource)

    def _check_read_key(self, key: str, resource: dict[str, Any]) -> None:
        self.check_encryption(key, resource.get("metadata") or {})
        enc = resource.get("customerEncryption")
        if enc and enc.get("keySha256"):
            if self.sse_key is None:
                raise EncryptionKeyError(f"{key!r} is encrypted: open the store with the sse_key it was written with")
            if base64.b64encode(hashlib.sha256(self.sse_key).digest()).decode() != enc["keySha256"]:
                raise EncryptionKeyError(f"{key!r} was encrypted with a different key than this store's sse_key")

    def _key_lock(self, name: str) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        ident = (id(loop), self.api_root, self.bucket, name)
        lock = _KEY_LOCKS.get(ident)
        if lock is None:
            lock = asyncio.Lock()
            _KEY_LOCKS[ident] = lock
        return lock

    @asynccontextmanager
    async def _conditional(self, name: str, if_absent: bool, if_match: str | None) -> AsyncIterator[dict[str, str]]:
        """Yield the precondition query parameters; on an emulator also hold the key's lock (each attempt of the
        write then checks the precondition itself, see :meth:`_request`)."""
        params: dict[str, str] = {}
        if if_absent:
            params["ifGenerationMatch"] = "0"
        elif if_match is not None:
            params["ifGenerationMatch"] = str(if_match)
        if not params or not self.emulated:
            yield params
            return
        async with self._key_lock(name):
            yield params

    # ------------------------------------------------------------------ uploads

    def _upload_url(self) -> str:
        return f"{self.api_root}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o"

    async def _upload_simple(self, name: str, data: bytes | None, *, crc: int, metadata: dict[str, str] | None,
                             encrypted: bool, params: dict[str, str] | None = None, key: str | None = None,
                             file_range: tuple[str | PathLike[str], int, int] | None = None,
                             progress: Progress | None = None, write_token: str | None = None) -> dict[str, Any]:
        """One multipart (metadata + media) upload; the body is ``data`` or streamed from ``file_range``. The
        object records its CRC32C in ``ajs-crc32c`` (and ``write_token``, if given, in ``ajs-write-token``)."""
        metadata = {**(metadata or {}), META_CRC32C: crc32c_to_b64(crc)}
        if write_token is not None:
            metadata[META_WRITE_TOKEN] = write_token
        resource: dict[str, Any] = {"name": name, "contentType": CONTENT_TYPE, "crc32c": crc32c_to_b64(crc),
                                    "metadata": metadata}
        boundary = "ajs" + uuid.uuid4().hex
        head = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json.dumps(resource)}\r\n"
                f"--{boundary}\r\nContent-Type: {CONTENT_TYPE}\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        length = len(data) if data is not None else file_range[2]  # type: ignore[index]
        headers = {"Content-Type": f"multipart/related; boundary={boundary}",
                   "Content-Length": str(len(head) + length + len(tail)), **self._key_headers(encrypted)}

        def body() -> Any:
            if data is not None:
                return head + data + tail

            async def stream() -> AsyncIterator[bytes]:
                yield head
                path, offset, size = file_range  # type: ignore[misc]
                async for piece in iter_file_slices(path, offset, size, self.transfer.io_slice_size):
                    yield piece
                yield tail

            return stream()

        query = {"uploadType": "multipart", **(params or {})}
        _, resource_out, _ = await self._request("POST", self._upload_url(), what=f"upload {name}", key=key or name,
                                                 params=query, headers=headers, body=body, target=name,
                                                 write_token=write_token)
        if progress is not None:  # reported per finished part: a retried part never counts twice
            await progress.advance(length)
        return resource_out or {}

    async def _upload_part(self, name: str, data: Buffer | None, *, crc: int, encrypted: bool,
                           file_range: tuple[str | PathLike[str], int, int] | None = None,
                           progress: Progress | None = None) -> None:
        """Upload one temporary part as a plain media upload (no metadata, so no multipart framing); the CRC32C
        GCS reports must match ours, else the part is sent once more, then ``IntegrityError``."""
        length = len(data) if data is not None else file_range[2]  # type: ignore[index]
        headers = {"Content-Type": CONTENT_TYPE, "Content-Length": str(length),
                   "x-goog-hash": f"crc32c={crc32c_to_b64(crc)}", **self._key_headers(encrypted)}

        def body() -> Any:
            if data is not None:
                return iter_buffer_slices(data, self.transfer.io_slice_size)
            path, offset, size = file_range  # type: ignore[misc]
            return iter_file_slices(path, offset, size, self.transfer.io_slice_size)

        for attempt in (1, 2):
            _, resource, _ = await self._request("POST", self._upload_url(), what=f"upload part {name}",
                                                 params={"uploadType": "media", "name": name}, headers=headers,
                                                 body=body)
            reported = (resource or {}).get("crc32c")
            if not reported or crc32c_from_b64(reported) == crc:
                break
            if attempt == 2:
                raise IntegrityError(f"part {name}: GCS stored bytes whose CRC32C differs from what was sent (twice)")
            log.warning("CRC32C mismatch on part %s; sending it again", name)
        if progress is not None:
            await progress.advance(length)

    async def _compose(self, name: str, sources: list[str], *, metadata: dict[str, str] | None, encrypted: bool,
                       params: dict[str, str] | None = None, key: str | None = None,
                       write_token: str | None = None) -> dict[str, Any]:
        destination: dict[str, Any] = {"contentType": CONTENT_TYPE}
        if metadata or write_token:
            destination["metadata"] = {**(metadata or {}), **({META_WRITE_TOKEN: write_token} if write_token else {})}
        body = {"kind": "storage#composeRequest", "destination": destination,
                "sourceObjects": [{"name": source} for source in sources]}
        _, resource, _ = await self._request("POST", self._object_url(name) + "/compose", what=f"compose {name}",
                                             key=key or name, params=params, json_body=body,
                                             headers=self._key_headers(encrypted), target=name,
                                             write_token=write_token)
        return resource or {}

    async def _compose_intermediates(self, sources: list[str], upload_id: str, created: list[str], *,
                                     encrypted: bool) -> list[str]:
        """Compose groups of 32 sources into intermediate temporary objects until at most 32 are left (what the
        final compose takes); returns those."""
        level = 0
        while len(sources) > MAX_COMPOSE_SOURCES:
            level += 1
            groups = [sources[i:i + MAX_COMPOSE_SOURCES] for i in range(0, len(sources), MAX_COMPOSE_SOURCES)]
            names = [self._tmp_name(upload_id, f"c{level:02d}-{i:06d}") for i in range(len(groups))]
            created.extend(names)

            async def one(part: Part, groups: list[list[str]] = groups, names: list[str] = names) -> None:
                await self._compose(names[part.number - 1], groups[part.number - 1], metadata=None,
                                    encrypted=encrypted)

            await run_parts([Part(i + 1, 0, 0) for i in range(len(groups))], one,
                             max_concurrency=self.transfer.max_concurrency)
            sources = names
        return sources

    async def _delete_names(self, names: Iterable[str]) -> None:
        names = list(names)
        if not names:
            return

        async def one(part: Part) -> None:
            await self._request("DELETE", self._object_url(names[part.number - 1]), what="delete",
                                ok=(200, 204), missing_ok=True)

        await run_parts([Part(i + 1, 0, 0) for i in range(len(names))], one,
                         max_concurrency=max(self.transfer.max_concurrency, 8))

    async def _cleanup(self, upload_id: str, names: Iterable[str]) -> None:
        """Delete the temporary objects of one upload (and whatever else is under its ``.ajs-tmp/<id>/``), to
        the end whatever cancellation arrives (re-raised afterwards); never raises anything else."""
        names = list(names)

        async def delete_all() -> None:
            try:
                await self._delete_names(names)
                leftovers = [r["name"] async for r in self._list_resources(self._tmp_name(upload_id, ""))]
                await self._delete_names(leftovers)
            except Exception as error:  # cleanup must not hide the original error
                log.warning("could not delete the temporary objects of upload %s: %r", upload_id, error)

        await run_uncancelled(delete_all)

    async def _commit_composed(self, key: str, name: str, parts: list[tuple[str, int, int]], upload_id: str,
                               created: list[str], *, metadata: dict[str, str] | None, encrypted: bool,
                               if_absent: bool) -> ObjectInfo:
        """Join uploaded temporary parts into ``key``: intermediates (staging), then the final compose as the
        commit, whose CRC32C is checked and after which the commit deletes the temporary objects itself (so a
        write that returned has no clean-up left to await)."""
        whole_crc = combine_part_crcs((crc, length) for _, crc, length in parts)
        meta = {**(metadata or {}), **self.encryption_metadata(encrypted), META_CRC32C: crc32c_to_b64(whole_crc)}
        sources = await self._compose_intermediates([p[0] for p in parts], upload_id, created, encrypted=encrypted)

        async def write(params: dict[str, str], token: str | None) -> dict[str, Any]:
            return await self._compose(name, sources, metadata=meta, encrypted=encrypted, params=params, key=key,
                                       write_token=token)

        def verify(resource: dict[str, Any]) -> str | None:
            reported = resource.get("crc32c")
            if reported and crc32c_from_b64(reported) != whole_crc:
                return (f"{key!r}: the composed object's CRC32C does not match the bytes sent; it was not kept, "
                        "write it again")
            return None

        async def after(resource: dict[str, Any]) -> None:
            await self._cleanup(upload_id, [*(p[0] for p in parts), *created])

        resource = await self._commit(key, name, write, if_absent=if_absent, verify=verify, after=after)
        return self._info(resource)

    # ------------------------------------------------------------------ commits

    async def _commit(self, key: str, name: str,
                      write: Callable[[dict[str, str], str | None], Awaitable[dict[str, Any]]], *,
                      if_absent: bool = False, if_match: str | None = None,
                      previous: tuple[bytes, dict[str, str], bool] | None = None,
                      verify: Callable[[dict[str, Any]], str | None] | None = None,
                      after: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> dict[str, Any]:
        """Make ``name`` visible with ``write(params, token)`` (the one request that does it: an upload, the final
        compose, a rewrite) under the store's cancellation contract; returns the new object's resource.

        Conditional writes get the precondition ``params`` and a fresh write token. The commit runs to completion
        in its own task (:func:`~aiojobstore.commit.commit_or_roll_back`); ``verify(resource)`` (a message: the
        result is bad) and ``after(resource)`` run inside it, so an error there undoes the write too. When the
        caller was cancelled with ``task.cancel()`` meanwhile, the write is rolled back (:meth:`_roll_back`):
        deleted if it created the key, else the previous version restored, each conditional on the object still
        being the one this call wrote. To restore, ``previous`` (bytes, metadata, encrypted) is used when the
        caller has them (``update_object``); otherwise an existing object is first copied server-side to a backup
        under ``.ajs-tmp/`` (:meth:`_back_up`), deleted again after the write (in the background once the write
        succeeded, so that a write that returns has nothing left to await).
        """
        undo = _Undo(previous=previous)
        backup_name: str | None = None
        try:
            if previous is None and not if_absent:
                backup_name = self._tmp_name(uuid.uuid4().hex, "backup")
                undo = await self._back_up(key, name, backup_name, generation=if_match)
            async with self._conditional(name, if_absent, if_match) as params:
                token = new_write_token() if params else None

                async def commit() -> dict[str, Any]:
                    resource = await write(params, token)
                    try:
                        problem = verify(resource) if verify is not None else None
                        if problem is not None:
                            raise IntegrityError(problem)
                        if after is not None:
                            await after(resource)
                    except BaseException:
                        await self._roll_back(key, name, resource, undo)
                        raise
                    return resource

                async def roll_back(resource: dict[str, Any]) -> None:
                    await self._roll_back(key, name, resource, undo)

                resource = await commit_or_roll_back(commit, roll_back)
        except BaseException:
            if backup_name is not None:
                await run_uncancelled(lambda: self._delete_quietly([backup_name]))
            raise
        if undo.backup is not None:
            backup = undo.backup
            self._in_background(lambda: self._delete_quietly([backup]))
        return resource

    async def _back_up(self, key: str, name: str, backup_name: str, *, generation: str | None) -> _Undo:
        """Before an overwrite of ``name``: copy its current version server-side (a rewrite, which GCS does
        without moving the bytes through us) to ``backup_name``, what a roll-back restores. Nothing to copy when
        the key does not exist. With ``generation`` (``if_match``), ``ConcurrentModificationError`` unless that
        generation is the current one (the write would fail anyway). An object encrypted with a key this store
        lacks cannot be copied: the write then goes ahead without a way back (logged if it has to roll back)."""
        current = await self._resource(name)
        if generation is not None and (current is None or str(current.get("generation")) != str(generation)):
            raise ConcurrentModificationError(f"{key!r} changed since it was read (precondition failed)")
        if current is None:
            return _Undo()
        encrypted = self._is_encrypted(current)
        try:
            self._check_read_key(key, current)
        except EncryptionKeyError:
            return _Undo(restorable=False)
        await self._rewrite(self.bucket, name, backup_name, source_headers=self._key_headers(encrypted, source=True),
                            dest_headers=self._key_headers(encrypted), metadata=None, key=key,
                            params={"sourceGeneration": str(current["generation"])})
        return _Undo(backup=backup_name, backup_encrypted=encrypted)

    async def _roll_back(self, key: str, name: str, created: dict[str, Any], undo: _Undo) -> None:
        """Undo a write that made generation ``created`` of ``name``: restore the previous version or delete the
        object, conditionally (``ifGenerationMatch`` of ``created``), so another writer's later object is never
        touched."""
        only_ours = {"ifGenerationMatch": str(created.get("generation"))}
        try:
            if undo.previous is not None:
                data, metadata, encrypted = undo.previous
                await self._upload_simple(name, data, crc=await crc32c_async(data), metadata=metadata,
                                          encrypted=encrypted, params=only_ours, key=key,
                                          write_token=new_write_token())
            elif undo.backup is not None:
                await self._rewrite(self.bucket, undo.backup, name,
                                    source_headers=self._key_headers(undo.backup_encrypted, source=True),
                                    dest_headers=self._key_headers(undo.backup_encrypted), metadata=None, key=key,
                                    params=only_ours)
            elif undo.restorable:
                await self._request("DELETE", self._object_url(name), what=f"roll back {key}", key=key,
                                    params=only_ours, ok=(200, 204), missing_ok=True, target=name)
            else:
                log.warning("%s was overwritten by a write that was then cancelled, but its previous version "
                            "(encrypted with a key this store lacks) could not be backed up: the new one stays", key)
        except ConcurrentModificationError:
            log.info("not rolling back %s: another writer has replaced it since", key)

    async def _delete_quietly(self, names: list[str]) -> None:
        try:
            await self._delete_names(names)
        except Exception as error:
            log.warning("could not delete %s (reclaim() removes it later): %r", ", ".join(names), error)

    def _in_background(self, make: Callable[[], Awaitable[None]]) -> None:
        """Run ``make()`` in a task of its own that the caller does not wait for; :meth:`close` waits for it."""
        task = asyncio.ensure_future(make())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ container

    async def create(self) -> bool:
        """Create the bucket if it is missing and mark the location as a store; True if this call created it."""
        bucket_url = f"{self.api_root}/storage/v1/b/{quote(self.bucket, safe='')}"
        status, _, _ = await self._request("GET", bucket_url, what=f"get bucket {self.bucket}", missing_ok=True)
        bucket_created = False
        if status == 404:
            project = self.project or ("test" if self.emulated else None)
            if project is None:
                project = await self._ensure_token().get_project()
            if not project:
                raise JobStoreError(f"cannot create bucket {self.bucket!r} without a project: use the locator "
                                    f"google:PROJECT:{self.bucket} or pass project=")
            status, _, _ = await self._request("POST", f"{self.api_root}/storage/v1/b", what="create bucket",
                                               params={"project": project}, json_body={"name": self.bucket},
                                               ok=(200, 409))
            bucket_created = status == 200
        marker = self.root + CONTAINER_MARKER
        if await self._resource(marker) is not None:
            return False
        try:
            await self._upload_simple(marker, b"", crc=0, metadata={"ajs-bucket-created": str(bucket_created)},
                                      encrypted=False, params={"ifGenerationMatch": "0"},
                                      write_token=new_write_token())
        except ConcurrentModificationError:
            return False
        return True

    async def exists(self) -> bool:
        """Whether this location has been created (its marker object is present)."""
        try:
            return await self._resource(self.root + CONTAINER_MARKER) is not None
        except JobStoreError as error:
            if "does not exist" in str(error):
                return False
            raise

    async def destroy(self) -> None:
        """Delete everything under the prefix (temporary parts included); delete the bucket too if this store
        created it and it is empty now. Idempotent."""
        marker = self.root + CONTAINER_MARKER
        try:
            status, _, _ = await self._request("GET", f"{self.api_root}/storage/v1/b/{quote(self.bucket, safe='')}",
                                               what="get bucket", missing_ok=True)
            if status == 404:
                return
            resource = await self._resource(marker)
            owned = resource is not None and (resource.get("metadata") or {}).get("ajs-bucket-created") == "True"
        except NoSuchFileError:
            return
        names = [r["name"] async for r in self._list_resources(self.root) if r["name"] != marker]
        await self._delete_names(names)
        await self._delete_names([marker])
        if owned:
            remaining = [r async for r in self._list_resources("")]
            if not remaining:
                await self._request("DELETE", f"{self.api_root}/storage/v1/b/{quote(self.bucket, safe='')}",
                                    what="delete bucket", ok=(200, 204, 409), missing_ok=True)

    async def reclaim(self, older_than: float = 3600.0) -> ReclaimReport:
        """Delete what writers that died left under ``<prefix>/.ajs-tmp/`` (temporary parts, intermediate
        composes, backups of overwritten objects), each only if it was created more than ``older_than`` seconds
        ago, so that live writers are not touched, and conditionally on its generation."""
        report = ReclaimReport()
        cutoff = time.time() - older_than
        async for resource in self._list_resources(self.root + TMP_DIR):
            created = _parse_time(resource.get("timeCreated"))
            if created is None or created > cutoff:
                continue
            name = resource["name"]
            try:
                status, _, _ = await self._request(
                    "DELETE", self._object_url(name), what=f"reclaim {name}", key=name, ok=(200, 204),
                    missing_ok=True, params={"ifGenerationMatch": str(resource.get("generation"))}, target=name)
            except ConcurrentModificationError:  # written again since it was listed: not debris
                continue
            if status != 404:
                report.add("backup" if name.endswith("/backup") else "temporary-part", int(resource.get("size") or 0))
        return report

    async def close(self) -> None:
        if self._background:  # deletions of backups that writes which returned left to the background
            await run_uncancelled(lambda: asyncio.gather(*self._background, return_exceptions=True))
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # ------------------------------------------------------------------ reads

    def _read_headers(self, resource: dict[str, Any]) -> dict[str, str]:
        return self._key_headers(True) if self._is_encrypted(resource) and self.sse_key is not None else {}

    async def _fetch_range(self, name: str, resource: dict[str, Any], start: int, end: int,
                           sink: RangeSink | None = None) -> list[bytes]:
        """GET bytes ``[start, end)`` of one generation; a broken body resumes from the byte it reached.
        With ``sink``, chunks go to ``sink(offset, chunks)`` in groups of about 4 MiB instead of being returned."""
        got: list[bytes] = []
        position = [start]
        params = {"alt": "media", "generation": str(resource["generation"])}
        headers_base = self._read_headers(resource)
        session = self._session_now()
        key = name[len(self.root):]

        async def attempt() -> None:
            if position[0] >= end:
                return
            headers = {**(await self._auth_headers()), **headers_base,
                       "Range": f"bytes={position[0]}-{end - 1}"}
            async with self.limits.requests, session.get(self._object_url(name), params=params,
                                                         headers=headers) as response:
                if response.status not in (200, 206):
                    text = await response.text()
                    if response.status in _RETRY_STATUS:
                        raise _RetryableStatus(response.status, text)
                    raise _HTTPStatusError(response.status, text)
                pending: list[bytes] = []
                pending_size = 0
                pending_at = position[0]
                async for chunk in response.content.iter_chunked(MiB):
                    chunk = chunk[: end - position[0] - pending_size]
                    if not chunk:
                        break
                    if sink is None:
                        got.append(chunk)
                        position[0] += len(chunk)
                        continue
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= _WRITE_SLICE:
                        await sink(pending_at, pending)
                        position[0] += pending_size
                        pending, pending_size, pending_at = [], 0, position[0]
                if pending:
                    assert sink is not None, "chunks are only kept back for a sink"
                    await sink(pending_at, pending)
                    position[0] += pending_size
                if position[0] < end:
                    raise _ShortRead(f"{name}: body ended at byte {position[0]} of {end}")

        try:
            await with_retries(attempt, policy=self.retry_policy, is_retryable=_is_retryable, what=f"read {name}")
        except _HTTPStatusError as error:
            raise self._error(error.status, error.text, f"read {key}", key) from None
        except (_RetryableStatus, _ShortRead, aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as error:
            raise TransferError(f"reading {key!r} failed after retries: {error!r}") from error
        return got

    def _expected_crcs(self, resource: dict[str, Any]) -> list[int]:
        expected = []
        if resource.get("crc32c"):
            expected.append(crc32c_from_b64(resource["crc32c"]))
        ours = (resource.get("metadata") or {}).get(META_CRC32C)
        if ours:
            expected.append(crc32c_from_b64(ours))
        return expected

    async def _stat_for_read(self, key: str) -> tuple[str, dict[str, Any]]:
        name = self._name(key)
        resource = await self._resource(name)
        if resource is None:
            raise NoSuchFileError(key)
        self._check_readable(key, resource)
        return name, resource

    async def _after_bad_read(self, key: str, name: str, resource: dict[str, Any], tries: list[int],
                              mismatch: bool) -> dict[str, Any]:
        """Decide what to read next after a read that failed its checksum (``mismatch``) or found its pinned
        generation gone: the new generation if the object was replaced meanwhile (not an integrity failure),
        else the same one once more; ``IntegrityError`` on the second mismatch of one generation."""
        fresh = await self._resource(name)
        if fresh is None:
            raise NoSuchFileError(key)
        if str(fresh.get("generation")) != str(resource.get("generation")) and tries[1] < 5:
            tries[1] += 1  # replaced while we read it: read the new version
            self._check_readable(key, fresh)
            return fresh
        if not mismatch:
            raise NoSuchFileError(key)
        tries[0] += 1
        if tries[0] >= 2:
            raise IntegrityError(f"{key!r}: the bytes read do not match the CRC32C recorded for the object (read "
                                 "twice); it is corrupt in the store")
        log.warning("CRC32C mismatch reading %s; retrying once", name)
        return resource

    async def get_object(self, key: str, *, start: int = 0, end: int | None = None) -> tuple[bytes, ObjectInfo]:
        name, resource = await self._stat_for_read(key)
        tries = [0, 0]  # checksum mismatches, replacements seen
        while True:
            size = int(resource.get("size") or 0)
            lo, hi = clamp_range(start, end, size)
            try:
                data = b"".join(await self._fetch_range(name, resource, lo, hi)) if hi > lo else b""
            except NoSuchFileError:  # the generation we pinned is gone
                resource = await self._after_bad_read(key, name, resource, tries, mismatch=False)
                continue
            if not (lo == 0 and hi == size):
                return data, self._info(resource)
            crc = await crc32c_async(data)
            if all(crc == want for want in self._expected_crcs(resource)):
                return data, self._info(resource)
            resource = await self._after_bad_read(key, name, resource, tries, mismatch=True)

    @asynccontextmanager
    async def open_reader(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[AsyncReader]:
        name, resource = await self._stat_for_read(key)
        size = int(resource.get("size") or 0)
        lo, hi = clamp_range(start, end, size)
        whole = lo == 0 and hi == size
        chunk = max(MiB, min(self.transfer.part_size, _READ_AHEAD_CHUNK))
        ranges = byte_ranges(lo, hi, chunk)
        depth = max(1, min(_READ_AHEAD_DEPTH, self.transfer.max_concurrency))
        results: dict[int, bytes] = {}
        events = {r.number: anyio.Event() for r in ranges}
        errors: list[BaseException] = []
        slots = anyio.Semaphore(depth)
        budget = self.limits.memory
        held: dict[int, int] = {}  # bytes of the store's memory budget held per range read ahead

        def give_back(number: int) -> None:
            budget.release(held.pop(number, 0))

        # The task group is entered and left by hand (as PartWindow does) so that an error raised by the code
        # using the reader reaches it as itself, not wrapped in an ExceptionGroup.
        group = anyio.create_task_group()
        await group.__aenter__()
        try:
            async def fetch(part: Part) -> None:
                try:
                    results[part.number] = b"".join(await self._fetch_range(name, resource, part.offset, part.end))
                except Exception as error:
                    errors.append(error)
                finally:
                    events[part.number].set()

            async def feeder() -> None:
                for part in ranges:
                    await slots.acquire()
                    if errors:
                        return
                    await budget.acquire(part.length)  # a range read ahead holds its bytes of the budget
                    held[part.number] = part.length
                    group.start_soon(fetch, part)

            group.start_soon(feeder)

            async def chunks() -> AsyncIterator[bytes]:
                running = 0
                for part in ranges:
                    await events[part.number].wait()
                    if errors:
                        raise errors[0]
                    data = results.pop(part.number)
                    slots.release()
                    if whole:
                        running = await crc32c_async(data, running)
                    yield data
                    give_back(part.number)  # the reader asks for more: it is done with this range
                if whole and not all(running == want for want in self._expected_crcs(resource)):
                    raise IntegrityError(f"{key!r}: the bytes read do not match the CRC32C recorded for the object; "
                                         "it is corrupt in the store")

            reader = ChunkReader(chunks(), size=hi - lo)
            try:
                yield reader
            finally:
                with anyio.CancelScope(shield=True):
                    await reader.aclose()
        finally:
            group.cancel_scope.cancel()
            try:
                await group.__aexit__(None, None, None)
            finally:
                for number in list(held):
                    give_back(number)

    async def download_file(self, key: str, path: str | PathLike[str], *,
                            progress: ProgressCallback | None = None) -> ObjectInfo:
        target = os.path.abspath(os.fspath(path))
        # Joined before any await, so that downloads started together count each other.
        with self.limits.downloads.joined() as share:
            name, resource = await self._stat_for_read(key)
            report = Progress(progress, int(resource.get("size") or 0))
            tries = [0, 0]  # checksum mismatches, replacements seen
            while True:
                try:
                    if await self._download_once(name, resource, target, report, share):
                        return self._info(resource)
                    mismatch = True
                except NoSuchFileError:  # the generation we pinned is gone
                    await report.rewind(report.done)
                    mismatch = False
                resource = await self._after_bad_read(key, name, resource, tries, mismatch=mismatch)

    async def _download_once(self, name: str, resource: dict[str, Any], target: str, report: Progress,
                             share: TransferShare) -> bool:
        """Fetch one generation with parallel ranged GETs (sized and windowed by the store's ``share``) into a
        temp file beside ``target``, renamed onto it when its CRC32C matches; returns whether it did."""
        size = int(resource.get("size") or 0)
        report.total = size

        async def fetch(part: Part, sink: RangeSink) -> None:
            await self._fetch_range(name, resource, part.offset, part.end, sink)

        async def verify(crc: int) -> bool:
            return all(crc == want for want in self._expected_crcs(resource))

        return await download_ranges(target, size, fetch, config=self.transfer,
                                     part_size=max(MiB, self.transfer.part_size), share=share, report=report,
                                     verify=verify)

    # ------------------------------------------------------------------ writes

    async def put_bytes(self, key: str, data: bytes, *, metadata: dict[str, str] | None = None,
                        if_absent: bool = False, if_match: str | None = None, encrypted: bool = False) -> ObjectInfo:
        return self._info(await self._put(key, data, metadata=metadata, if_absent=if_absent, if_match=if_match,
                                          encrypted=encrypted))

    async def _put(self, key: str, data: bytes, *, metadata: dict[str, str] | None, if_absent: bool = False,
                   if_match: str | None = None, encrypted: bool = False,
                   previous: tuple[bytes, dict[str, str], bool] | None = None) -> dict[str, Any]:
        """One simple upload of ``data`` as the commit (see :meth:`_commit`)."""
        name = self._name(key)
        data = bytes(data)
        meta = {**(metadata or {}), **self.encryption_metadata(encrypted)}
        crc = await crc32c_async(data)

        async def write(params: dict[str, str], token: str | None) -> dict[str, Any]:
            return await self._upload_simple(name, data, crc=crc, metadata=meta, encrypted=encrypted, params=params,
                                             key=key, write_token=token)

        return await self._commit(key, name, write, if_absent=if_absent, if_match=if_match, previous=previous)

    async def update_object(self, key: str, edit: Callable[[bytes], bytes], *,
                            metadata: dict[str, str] | None = None) -> ObjectInfo:
        """As :meth:`Backend.update_object` (keeps the user metadata and the encryption); the previous bytes are
        in hand, so a roll-back re-uploads them instead of backing the object up first."""
        data, info = await self.get_object(key)
        encrypted = META_KEY_SHA256 in info.metadata
        kept = user_metadata(info.metadata)
        previous = (data, {**kept, **self.encryption_metadata(encrypted)}, encrypted)
        resource = await self._put(key, edit(data), metadata=kept if metadata is None else metadata,
                                   if_match=info.etag, encrypted=encrypted, previous=previous)
        return self._info(resource)

    @asynccontextmanager
    async def open_writer(self, key: str, *, metadata: dict[str, str] | None = None, if_absent: bool = False,
                          encrypted: bool = False) -> AsyncIterator[AsyncWriter]:
        name = self._name(key)
        self.encryption_metadata(encrypted)  # fail before any data is written
        upload_id = uuid.uuid4().hex
        writer: _GCSWriter | None = None
        created: list[str] = []  # intermediate composes
        committed = False
        try:
            async with PartWindow(self.transfer.max_concurrency) as window:
                writer = _GCSWriter(self, window, upload_id, encrypted)
                yield writer
                if writer.part_names:
                    await writer.flush_tail()  # the last part of a composed object
            if not writer.part_names:
                data = writer.take_tail()
                writer.release()
                await self._put(key, data, metadata=metadata, if_absent=if_absent, encrypted=encrypted)
                return
            await self._commit_composed(key, name, writer.parts(), upload_id, created, metadata=metadata,
                                        encrypted=encrypted, if_absent=if_absent)
            committed = True  # the commit deleted the temporary parts itself
        finally:
            if writer is not None:
                writer.release()
                if writer.part_names and not committed:
                    await self._cleanup(upload_id, [*writer.part_names, *created])

    async def upload_file(self, path: str | PathLike[str], key: str, *, metadata: dict[str, str] | None = None,
                          encrypted: bool = False, progress: ProgressCallback | None = None) -> ObjectInfo:
        name = self._name(key)
        meta = {**(metadata or {}), **self.encryption_metadata(encrypted)}
        with self.limits.uploads.joined() as share:  # before any await, so uploads started together count each other
            try:
                size = (await anyio.Path(path).stat()).st_size
            except FileNotFoundError:
                raise NoSuchFileError(os.fspath(path), "the local file to upload does not exist") from None
            report = Progress(progress, size)
            parts = plan_parts(size, self.transfer.part_size, max_parts=self.transfer.max_parts,
                               min_part_size=self.transfer.min_part_size)
            if len(parts) == 1:
                crc = await self.limits.file_crc32c(path, 0, size)

                async def write(params: dict[str, str], token: str | None) -> dict[str, Any]:
                    return await self._upload_simple(name, None, crc=crc, metadata=meta, encrypted=encrypted,
                                                     key=key, file_range=(path, 0, size), params=params,
                                                     write_token=token)

                async def after(resource: dict[str, Any]) -> None:
                    await report.advance(size)  # in the commit: a failing callback undoes the write

                return self._info(await self._commit(key, name, write, after=after))
            upload_id = uuid.uuid4().hex
            names = [self._tmp_name(upload_id, f"p{p.number:06d}") for p in parts]
            created = list(names)
            committed = False
            try:
                async def one(part: Part) -> tuple[str, int, int]:
                    crc = await self.limits.file_crc32c(path, part.offset, part.length)
                    await self._upload_part(names[part.number - 1], None, crc=crc, encrypted=encrypted,
                                            file_range=(path, part.offset, part.length), progress=report)
                    return names[part.number - 1], crc, part.length

                uploaded = await run_parts(parts, one, max_concurrency=self.transfer.max_concurrency,
                                           share=share.window)
                info = await self._commit_composed(key, name, uploaded, upload_id, created, metadata=metadata,
                                                   encrypted=encrypted, if_absent=False)
                committed = True  # the commit deleted the temporary parts itself
            finally:
                if not committed:
                    await self._cleanup(upload_id, created)
            return info

    # ------------------------------------------------------------------ metadata operations

    async def stat(self, key: str) -> ObjectInfo | None:
        resource = await self._resource(self._name(key))
        return None if resource is None else self._info(resource)

    async def delete(self, key: str) -> None:
        name = self._name(key)
        await self._request("DELETE", self._object_url(name), what=f"delete {key}", ok=(200, 204), missing_ok=True)

    async def delete_many(self, keys: Iterable[str]) -> None:
        await self._delete_names([self._name(key) for key in keys])

    async def _list_resources(self, full_prefix: str) -> AsyncIterator[dict[str, Any]]:
        url = f"{self.api_root}/storage/v1/b/{quote(self.bucket, safe='')}/o"
        token: str | None = None
        while True:
            params = {"prefix": full_prefix, "maxResults": "1000"}
            if token:
                params["pageToken"] = token
            status, page, _ = await self._request("GET", url, what=f"list {full_prefix}", params=params,
                                                  missing_ok=True)
            if status == 404 or not page:
                return
            for item in page.get("items") or []:
                yield item
            token = page.get("nextPageToken")
            if not token:
                return

    async def list(self, prefix: str = "", *, metadata: bool = True) -> AsyncIterator[ObjectInfo]:
        internal = (self.root + TMP_DIR, self.root + CONTAINER_MARKER)
        async for resource in self._list_resources(self.root + prefix):
            if resource["name"].startswith(internal):
                continue
            yield self._info(resource)

    async def _rewrite(self, src_bucket: str, src_name: str, dst_name: str, *, source_headers: dict[str, str],
                       dest_headers: dict[str, str], metadata: dict[str, str] | None, key: str,
                       params: dict[str, str] | None = None) -> dict[str, Any]:
        """A server-side copy; ``metadata`` (if given) replaces the destination's, else the source's is kept.
        ``params`` may carry ``sourceGeneration`` and a destination ``ifGenerationMatch``."""
        url = (f"{self.api_root}/storage/v1/b/{quote(src_bucket, safe='')}/o/{quote(src_name, safe='')}"
               f"/rewriteTo/b/{quote(self.bucket, safe='')}/o/{quote(dst_name, safe='')}")
        body = {"contentType": CONTENT_TYPE, "metadata": metadata} if metadata is not None else None
        query = dict(params or {})
        resource: dict[str, Any]
        while True:
            _, result, _ = await self._request("POST", url, what=f"copy to {dst_name}", key=key, params=query,
                                               json_body=body, headers={**source_headers, **dest_headers},
                                               target=dst_name)
            if result.get("done"):
                resource = result["resource"]
                break
            query = {**(params or {}), "rewriteToken": result["rewriteToken"]}
        if metadata is not None and self.emulated and (resource.get("metadata") or {}) != metadata:
            # The emulator ignores the destination resource of a rewrite: set the metadata afterwards.
            patch = {"metadata": {**{k: None for k in resource.get("metadata") or {}}, **metadata}}
            _, resource, _ = await self._request("PATCH", self._object_url(dst_name), what=f"patch {dst_name}",
                                                 key=key, json_body=patch)
            resource["metadata"] = {k: v for k, v in (resource.get("metadata") or {}).items() if v is not None}
        return resource

    def _copy_metadata(self, source: dict[str, Any], metadata: dict[str, str] | None) -> dict[str, str]:
        """The metadata of a copy of ``source``: its own, updated with ``metadata``, with an ``ajs-crc32c`` (the
        CRC32C GCS reports for the source when the source has none: a foreign object gets one on import)."""
        merged = {**(source.get("metadata") or {}), **(metadata or {})}
        merged.pop(META_WRITE_TOKEN, None)
        if META_CRC32C not in merged and source.get("crc32c"):
            merged[META_CRC32C] = source["crc32c"]
        return merged

    async def _commit_rewrite(self, source: GCSBackend, src_key: str, src_name: str, resource: dict[str, Any],
                              dst_key: str, metadata: dict[str, str] | None) -> ObjectInfo:
        """A server-side copy of ``resource`` (from ``source``) onto ``dst_key`` as the commit (see :meth:`_commit`)."""
        dst_name = self._name(dst_key)
        encrypted = source._is_encrypted(resource)
        merged = self._copy_metadata(resource, metadata)

        async def write(params: dict[str, str], token: str | None) -> dict[str, Any]:
            return await self._rewrite(source.bucket, src_name, dst_name,
                                       source_headers=source._key_headers(encrypted, source=True),
                                       dest_headers=self._key_headers(encrypted), metadata=merged, key=src_key,
                                       params={"sourceGeneration": str(resource["generation"]), **params})

        return self._info(await self._commit(dst_key, dst_name, write))

    async def copy(self, src: str, dst: str, *, metadata: dict[str, str] | None = None) -> ObjectInfo:
        src_name, resource = await self._stat_for_read(src)
        return await self._commit_rewrite(self, src, src_name, resource, dst, metadata)

    async def copy_from(self, source: Backend, src_key: str, dst_key: str) -> ObjectInfo | None:
        """Server-side copy from another GCS store on the same endpoint; ``None`` when that is not possible
        (another kind of backend, another endpoint, or an object encrypted with a key this store lacks)."""
        if not isinstance(source, GCSBackend) or source.api_root != self.api_root:
            return None
        src_name, resource = await source._stat_for_read(src_key)
        if source._is_encrypted(resource) and source.sse_key != self.sse_key:
            return None
        return await self._commit_rewrite(source, src_key, src_name, resource, dst_key, None)

    async def presign(self, key: str, expires: int = 3600) -> str:
        """A V4 signed URL (needs a service-account key); on an emulator its direct media URL."""
        name = self._name(key)
        if self.emulated:
            return f"{self.api_root}/download/storage/v1/b/{quote(self.bucket, safe='')}/o/{quote(name, safe='')}" \
                   "?alt=media"
        if not (self._ensure_token().service_data or {}).get("private_key"):
            raise JobStoreError(
                "cannot sign a URL: the Google credentials in use have no private key (signing needs a service "
                "account key file in GOOGLE_APPLICATION_CREDENTIALS or service_file=)"
            )
        from gcloud.aio.storage import Bucket, Storage
        from gcloud.aio.storage.blob import Blob

        if self._storage is None:
            # gcloud-aio's annotation names requests.Session (its REST build's), but the aio build takes aiohttp's
            self._storage = Storage(session=self._session_now(), token=self._token)  # type: ignore[arg-type]
        blob = Blob(Bucket(self._storage, self.bucket), name, {"size": 0})
        return await blob.get_signed_url(min(int(expires), 604800), token=self._token)


def from_locator(locator: Locator, *, transfer: TransferConfig | None = None, sse_key: bytes | str | None = None,
                 project: str | None = None, service_file: str | None = None, emulator_host: str | None = None,
                 **rest: Any) -> GCSBackend:
    """Build a :class:`GCSBackend` from a parsed ``gs://`` / ``google:`` locator (no I/O)."""
    if transfer is None:
        transfer = TransferConfig.from_options(rest)
    request_timeout = rest.pop("request_timeout", 300.0)
    if rest:
        raise JobStoreError(f"unknown options for a GCS store: {', '.join(sorted(rest))}; accepted: transfer settings, "
                            "sse_key, project, service_file, emulator_host, request_timeout")
    return GCSBackend(locator.bucket, locator.prefix, transfer=transfer, sse_key=sse_key,
                      project=project or locator.project, service_file=service_file, emulator_host=emulator_host,
                      request_timeout=request_timeout)


__all__ = ["GCSBackend", "from_locator"]
