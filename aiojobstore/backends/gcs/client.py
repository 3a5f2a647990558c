"""The GCS JSON API client layer: one aiohttp session per store, credentials, object names and URLs, requests
with retries, and the translation of HTTP errors into :mod:`aiojobstore.errors`.

Credentials come from ``service_file``, ``GOOGLE_APPLICATION_CREDENTIALS`` or the default chain (through
gcloud-aio-auth's ``Token``); with ``STORAGE_EMULATOR_HOST`` (or ``emulator_host=``) requests go to the emulator
without credentials.

Lost answers: every conditional write stores a per-call token (``ajs-write-token``); when a retry of it gets 412 —
the first attempt was applied and its answer lost — :meth:`GCSClient._request` reads the object again and, if it
carries the call's token, reports the call's own write instead of a conflict (one place, the retry wrapper, for
uploads, composes and the marker). The gcp-storage-emulator ignores preconditions, so against an emulator each
attempt of a conditional request checks the generation itself and answers 412 (see
:mod:`~aiojobstore.backends.gcs.conditional` for the per-key lock that makes that check safe in one process).

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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from ...commit import META_WRITE_TOKEN
from ...errors import (
    BackendUnavailableError,
    ConcurrentModificationError,
    EncryptionKeyError,
    IntegrityError,
    JobStoreError,
    NoSuchFileError,
    TransferError,
)
from ...transfer import Part, RetryPolicy, run_parts, with_retries
from ..base import META_CRC32C, META_KEY_SHA256, Backend, ObjectInfo, validate_key

log = logging.getLogger("aiojobstore.gcs")

GCS_API_ROOT = "https://storage.googleapis.com"
SCOPES = ["https://www.googleapis.com/auth/devstorage.full_control"]
TMP_DIR = ".ajs-tmp/"
CONTAINER_MARKER = ".ajs-container"
CONTENT_TYPE = "application/octet-stream"
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_EMULATED_412 = "conditionNotMet (checked by aiojobstore: the emulator ignores preconditions)"


class RetryableStatus(Exception):
    """An HTTP status worth retrying (429, 5xx)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status = status


class HTTPStatusError(Exception):
    """An HTTP status that is an answer (translated by :meth:`GCSClient._error`)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:500]}")
        self.status = status
        self.text = text


def is_retryable(error: BaseException) -> bool:
    """Whether a request that failed with ``error`` is worth sending again."""
    return isinstance(error, (RetryableStatus, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError,
                              asyncio.TimeoutError, ConnectionError))


def parse_time(text: str | None) -> float | None:
    """An RFC 3339 time of the JSON API as a POSIX timestamp (``None`` if absent or unreadable)."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def emulator_host_from_env() -> str | None:
    return os.environ.get("STORAGE_EMULATOR_HOST") or None


def normalise_host(host: str) -> str:
    host = host.rstrip("/")
    return host if "://" in host else f"http://{host}"


class GCSClient(Backend):
    """The transport of :class:`~aiojobstore.backends.gcs.GCSBackend`: its state and its requests. The other
    modules of this package add the operations built on it."""

    bucket: str
    prefix: str
    root: str
    emulated: bool
    api_root: str
    project: str | None
    service_file: str | None
    request_timeout: float
    retry_policy: RetryPolicy
    _session: aiohttp.ClientSession | None
    _token: Any
    _storage: Any
    _closed: bool
    _background: set[asyncio.Future[None]]

    def describe(self) -> str:
        return f"gs://{self.bucket}/{self.prefix}" if self.prefix else f"gs://{self.bucket}"

    # ------------------------------------------------------------------ names and URLs

    def _name(self, key: str) -> str:
        return self.root + validate_key(key)

    def _tmp_name(self, upload_id: str, leaf: str) -> str:
        return f"{self.root}{TMP_DIR}{upload_id}/{leaf}"

    def _internal_prefixes(self) -> tuple[str, str]:
        """Names under the root that are the backend's own (temporary objects, the container marker)."""
        return self.root + TMP_DIR, self.root + CONTAINER_MARKER

    def _bucket_url(self) -> str:
        return f"{self.api_root}/storage/v1/b/{quote(self.bucket, safe='')}"

    def _object_url(self, name: str) -> str:
        return f"{self._bucket_url()}/o/{quote(name, safe='')}"

    def _upload_url(self) -> str:
        return f"{self.api_root}/upload/storage/v1/b/{quote(self.bucket, safe='')}/o"

    # ------------------------------------------------------------------ session and credentials

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

    # ------------------------------------------------------------------ requests

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
                status, text, parsed, response_headers = 412, _EMULATED_412, None, {}
            else:
                status, text, parsed, response_headers = await self._send(
                    session, method, url, params=params, headers=headers, json_body=json_body, body=body, ok=ok)
            if status in ok:
                return status, parsed, response_headers
            if status == 412 and write_token is not None and attempts > 1 and target is not None:
                mine = await self._own_write(target, write_token, what)
                if mine is not None:
                    return 200, mine, response_headers
            if status == 404 and missing_ok:
                return 404, None, response_headers
            if status in RETRY_STATUS:
                raise RetryableStatus(status, text)
            raise HTTPStatusError(status, text)

        try:
            return await with_retries(attempt, policy=self.retry_policy, is_retryable=is_retryable, what=what)
        except HTTPStatusError as error:
            raise self._error(error.status, error.text, what, key) from None
        except RetryableStatus as error:
            raise TransferError(f"{what} failed after retries: {error}") from error
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as error:
            raise TransferError(f"{what} failed after retries ({error!r}); is {self.api_root} reachable?") from error

    async def _send(self, session: aiohttp.ClientSession, method: str, url: str, *, params: dict[str, str] | None,
                    headers: dict[str, str] | None, json_body: Any, body: Callable[[], Any] | None,
                    ok: tuple[int, ...]) -> tuple[int, str, Any, Mapping[str, str]]:
        """One attempt: ``(status, body text, parsed JSON of an ``ok`` answer or None, response headers)``."""
        all_headers = {**(await self._auth_headers()), **(headers or {})}
        data = body() if body is not None else None
        async with self.limits.requests, session.request(method, url, params=params, headers=all_headers,
                                                          json=json_body, data=data) as response:
            text = await response.text()
            parsed = None
            if response.status in ok and text and "json" in response.headers.get("Content-Type", ""):
                parsed = json.loads(text)
            return response.status, text, parsed, response.headers

    async def _own_write(self, name: str, write_token: str, what: str) -> dict[str, Any] | None:
        """The resource of ``name`` if it carries ``write_token`` (this call's write, whose answer was lost)."""
        mine = await self._resource(name)
        if mine is not None and (mine.get("metadata") or {}).get(META_WRITE_TOKEN) == write_token:
            log.info("%s: the retry found the call's own write (its answer was lost)", what)
            return mine
        return None

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

    def _key_of(self, name: str) -> str:
        return name[len(self.root):] if name.startswith(self.root) else name

    def _info(self, resource: dict[str, Any]) -> ObjectInfo:
        return ObjectInfo(self._key_of(resource["name"]), int(resource.get("size") or 0),
                          str(resource.get("generation")), parse_time(resource.get("updated")),
                          dict(resource.get("metadata") or {}))

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

    async def _list_pages(self, params: dict[str, str], what: str) -> AsyncIterator[dict[str, Any]]:
        """The pages of an object listing with ``params`` (``prefix``, maybe ``delimiter``), following page
        tokens; nothing when the bucket does not exist."""
        url = f"{self._bucket_url()}/o"
        token: str | None = None
        while True:
            query = {**params, "maxResults": "1000", **({"pageToken": token} if token else {})}
            status, page, _ = await self._request("GET", url, what=what, params=query, missing_ok=True)
            if status == 404 or not page:
                return
            yield page
            token = page.get("nextPageToken")
            if not token:
                return

    async def _list_resources(self, full_prefix: str) -> AsyncIterator[dict[str, Any]]:
        async for page in self._list_pages({"prefix": full_prefix}, f"list {full_prefix}"):
            for item in page.get("items") or []:
                yield item

    # ------------------------------------------------------------------ deletions

    async def _delete_names(self, names: Iterable[str]) -> None:
        names = list(names)
        if not names:
            return

        async def one(part: Part) -> None:
            await self._request("DELETE", self._object_url(names[part.number - 1]), what="delete",
                                ok=(200, 204), missing_ok=True)

        await run_parts([Part(i + 1, 0, 0) for i in range(len(names))], one,
                         max_concurrency=max(self.transfer.max_concurrency, 8))

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
