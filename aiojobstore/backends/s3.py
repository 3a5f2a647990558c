"""S3 backend on aiobotocore: AWS, MinIO, Ceph RGW and any S3-compatible endpoint.

How data moves:

- One aiobotocore client per backend, created lazily inside the running event loop on first use; its connection
  pool is sized to ``max_requests`` (the default pool of 10 would silently cap parallelism). botocore's own retries
  are off (one attempt): every request is retried here, per request, with :class:`RetryPolicy`.
- The hot small requests (PutObject with a ``bytes`` body up to 1 MiB, GetObject, HeadObject, DeleteObject)
  and the bodies of PutObject and UploadPart (file ranges and buffers) skip botocore:
  :mod:`aiojobstore.backends.s3direct` sends them on :mod:`aiojobstore.leanhttp`'s raw connections, SigV4-signed,
  with the same parameters and response dicts (``direct_requests``). Its error
  answers are botocore ``ClientError``s, so retries and translation are the same. One that may be the direct
  request's own fault (a 403, a bad signature, a redirect) is repeated through botocore, and if botocore's gets
  through, the store sends everything through botocore from then on.
- Request bodies that go through botocore are never handed to aiohttp as one big ``bytes``: a part is an async
  iterable of ~1 MiB slices (``os.pread`` in a worker thread for files, memoryview slices for buffered stream
  parts), sent with an explicit Content-Length. That keeps a part in flight at about one slice of memory and is
  several times faster than one large ``bytes`` body. Payload signing is off (``UNSIGNED-PAYLOAD``): CRC32C gives
  integrity without SHA-256ing every byte on plain-http endpoints.
- Uploads of a file first compute the CRC32C of every part in worker threads (a pass over the page cache, at about 9
  GB/s on this project's VM; the store's checksum threads serve uploads in arrival order), so that each part is sent
  with ``x-amz-checksum-crc32c`` (checked by servers that support flexible checksums, ignored by older ones such as
  Ceph 16) and the whole-object CRC32C, combined arithmetically from the parts, can be put in the object's metadata
  (``ajs-crc32c``) at CreateMultipartUpload. On a plain connection a part goes from the page cache to the socket
  with ``sendfile``, and its last byte is held back until the range has been hashed again and the file's size and
  change times are found unmoved (:class:`~aiojobstore.leanhttp.FileRange`); on TLS (and through botocore) the
  slices sent are hashed again while they go out. Either way a file that changed between the passes fails the
  upload instead of storing bytes that do not match their checksum.
- Write streams of unknown length cannot know their checksum when CreateMultipartUpload needs the metadata.
  A stream that stays below one part becomes a single PutObject carrying the checksum. A longer stream is
  completed first and then copied onto itself server-side with the checksum added to its metadata
  (CopyObject with ``MetadataDirective=REPLACE``, UploadPartCopy above 5 GiB): no byte goes through the client
  again, every reader can verify the stream like any other object, and the object's content is the same before
  and after the copy, so the write stays atomic. The alternative of a sidecar checksum object was rejected: it
  can disagree with its object after a crash.
- A whole-object ``get_object`` is one GET: its response headers carry the size, ETag and metadata a HEAD
  would give. Ranged reads, read streams and downloads HEAD the object first (size, etag, metadata, whether it
  needs the SSE-C key), then GET ranges pinned to that etag with ``If-Match``. A dropped connection resumes
  from the byte offset reached, pinned to the ETag of the first response. Received pieces go to their
  destination as aiohttp hands them over (no copy here). Downloads write into a
  :class:`~aiojobstore.transfer.DownloadTarget` (``O_DIRECT`` where allowed, fsynced, renamed), and downloads
  running at once share the window (:class:`~aiojobstore.transfer.TransferShare`). Their ranged GETs go
  through :mod:`aiojobstore.rangeget` (``direct_receive``): each is presigned with SigV4, so the range, the
  ``If-Match`` and the SSE-C key are signed headers and nothing secret is in the URL, and its body is read from
  the socket straight into the buffers that are then written to disk. A refused answer (anything but a plain
  206) is repeated through aiohttp, which retries or translates it; one that says the receiver's request does
  not suit the endpoint (403, 400, ...) also turns the receiver off for the store. A broken connection resumes
  through aiohttp from the last whole buffer written. Endpoints reached through a proxy always use aiohttp.
  Whole-object reads verify the CRC32C; a mismatch is retried once (``get_object``, ``download_file``) and
  then raises ``IntegrityError``.

Conditional writes: ``if_absent`` sends ``If-None-Match: *`` and ``if_match`` sends ``If-Match: <etag>`` on
PutObject (and CompleteMultipartUpload). Before its first write a backend probes, on a key of its own
(``.aiojobstore-conditional-probe-<token>``, which no other process writes or deletes, so no answer can be
another writer's doing), that the server refuses a second create and a wrong ETag, and in which form it wants the
ETag (Ceph RGW 16 compares it without quotes). moto 5.2 and Ceph RGW 16 honour both on PutObject (moto not
atomically under concurrency). A server that ignores them is refused with ``ConditionalWritesUnsupportedError``
at the first conditional write, unless the store is opened with the option ``conditional_writes="unsafe-fallback"``
(default ``"require"``), which accepts a HEAD check right before the write: racy, updates from several processes
can be lost. Ceph RGW 16 ignores ``If-None-Match`` on CompleteMultipartUpload, so an ``if_absent`` write stream of
more than one part is checked with a HEAD right before its completion (the job store never writes one).

Retries and write tokens: every object is written with a fresh per-call token in its metadata
(``ajs-write-token``, :func:`aiojobstore.commit.new_write_token`), on the direct and the botocore path alike. A
conditional PutObject or CompleteMultipartUpload (or the checksum-recording copy) that is refused (412, 409, no
such upload) HEADs the object: if it carries the call's token, an earlier attempt whose answer was lost was applied
and the write succeeded; it is never reported as a conflict with itself nor applied twice. (Every refusal is
checked, since aiohttp itself repeats an idempotent request whose connection closed.) The one case a token cannot
tell: another writer replaced the object between the lost answer and the retry; the write is then reported as a
conflict although it was applied. A multipart upload lists the key's pending uploads before its
CreateMultipartUpload; a create retried after a lost answer lists them again and aborts the new ones other than
its own (ListMultipartUploads shows no metadata, and moto's ``Initiated`` dates are fixed, so uploads are told
apart by ID).

Commits and cancellation: each write's commit (the PutObject, CompleteMultipartUpload and the CRC-recording
copy, CopyObject) runs to completion in a task of its own (:func:`aiojobstore.commit.commit_or_roll_back`). A
caller cancelled by ``task.cancel()`` or ``asyncio.timeout`` meanwhile gets the store back as it was, and the
cancellation: an object the write created is deleted, an object it replaced is put back, in both cases only if
the key still holds this call's write (its token; S3 has no conditional delete, so that check and the delete are
two requests). Under an anyio cancel scope the write returns normally and the cancellation comes at the next
checkpoint. To put a replaced object back, a write keeps it: an unconditional put is sent with
``If-None-Match: *`` first, so a create costs one request; when the key exists, the object is HEADed and, up to
8 MiB, read into memory (not counted in ``max_memory``; else copied server-side to ``.aiojobstore-backup/<token>``,
deleted after the commit),
and replaced with ``If-Match`` on that version, so what would be put back is exactly what was replaced. A
replacing put thus costs 4 small requests instead of 1 (6 above 8 MiB); ``update_object`` has the previous version
in hand and costs none extra; a multipart upload or a copy HEADs its key once before completing. An object
that cannot be kept (above 5 GiB, or SSE-C on a server that cannot copy it, or encrypted with another key) is
replaced without a way back, and that is logged. ``reclaim`` aborts pending multipart uploads and deletes
backups and probes older than its grace period.

Integrity: every object written carries ``ajs-crc32c``: single puts, multipart uploads (combined from the parts),
streams (recorded by the copy onto itself) and copies (a source without one is streamed through the client,
which records it). Ceph RGW 16 cannot copy SSE-C objects (probed once, on a key of the backend's own), so there
an encrypted write stream longer than one part is spooled to a local temp file and uploaded from it with its
checksum known at CreateMultipartUpload (disk I/O for the size of the stream). With ``require_checksum`` (set by
the job store) reads of an object without ``ajs-crc32c`` raise ``IntegrityError``: it was not written by
aiojobstore.

SSE-C: writers with ``encrypted=True`` send the backend's 32-byte key and record its SHA-256 (``ajs-key-sha256``);
readers try without a key and retry with it when the server says the object is encrypted (HEAD 400). A missing or
wrong key raises ``EncryptionKeyError``; servers that do not enforce SSE-C (moto) are still covered by the
recorded fingerprint.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import ipaddress
import logging
import os
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from os import PathLike
from typing import TYPE_CHECKING, Any, TypeVar, overload
from urllib.parse import parse_qs, urlsplit

import anyio

from ..commit import META_WRITE_TOKEN, commit_or_roll_back, new_write_token, run_uncancelled
from ..errors import (
    BackendUnavailableError,
    ConcurrentModificationError,
    ConditionalWritesUnsupportedError,
    EncryptionKeyError,
    IntegrityError,
    InvalidOptionError,
    JobStoreError,
    NoSuchFileError,
    TransferError,
)
from ..rangeget import RangeGetter, RangeRefused
from ..streams import AsyncReader, AsyncWriter, Buffer
from ..transfer import (
    CHECKSUM_THREADS,
    DownloadRange,
    MiB,
    Part,
    PartProgress,
    PartWindow,
    Progress,
    ProgressCallback,
    RetryPolicy,
    TransferConfig,
    TransferShare,
    choose_part_size,
    clamp_range,
    combine_part_crcs,
    crc32c,
    crc32c_async,
    crc32c_from_b64,
    crc32c_to_b64,
    download_ranges,
    iter_buffer_slices,
    plan_parts,
    run_parts,
    unlink_quietly,
    with_retries,
)
from ..transfer.download import RangeSource, Receive
from ..transfer.reader import open_range_reader
from ..transfer.verify import ReplacedWhileReading, verify_and_retry
from ..transfer.writer import open_part_writer
from .base import (
    META_CRC32C,
    META_KEY_SHA256,
    Backend,
    CommonPrefix,
    ObjectInfo,
    ReclaimReport,
    reject_unknown_options,
    user_metadata,
    validate_key,
)
from .s3direct import S3DirectRequests, bucket_url_from_presigned, sse_headers

if TYPE_CHECKING:
    from ..locator import Locator

if sys.version_info < (3, 11):  # pragma: no cover
    pass

log = logging.getLogger("aiojobstore.s3")
T = TypeVar("T")
#: A multipart upload's part body: made anew for each attempt, reporting its slices to the progress given.
PartBody = Callable[[Part, PartProgress | None], Any]

#: Marker object under the prefix: present when this store created the bucket (so ``destroy`` may remove it).
CREATED_BUCKET_MARKER = ".aiojobstore-created-bucket"
#: Keys of the conditional-write probes: one per probing backend (a fresh token follows), never shared.
_PROBE_PREFIX = ".aiojobstore-conditional-probe-"
#: Temporary copies of objects being replaced, kept until the replacing commit is over (see ``_capture``).
_BACKUP_PREFIX = ".aiojobstore-backup/"
#: Reserved keys under the prefix, never listed: the marker, the probes (and the single probe key of versions
#: before 0.2, which processes shared), the backups.
_RESERVED_PREFIXES = (CREATED_BUCKET_MARKER, ".aiojobstore-conditional-probe", _BACKUP_PREFIX)
#: Previous versions up to this size are kept in memory by a replacing write (else copied server-side).
_KEEP_IN_MEMORY = 8 * MiB
#: Rounds of "create, else capture and replace" an unconditional put tries against other writers.
_MAX_OVERWRITE_TRIES = 8
CONDITIONAL_WRITES = ("require", "unsafe-fallback")
MAX_COPY_OBJECT = 5 * 1024 * MiB
_READ_RANGE = 8 * MiB
_READ_AHEAD = 4
_RETRYABLE_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestLimitExceeded", "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable",
    "503", "500", "502", "504", "BadGateway", "GatewayTimeout", "OperationAborted",
}


class _ChangedWhileReading(TransferError):
    """A local file changed between the checksum pass and the upload (never retried)."""


def _error_code(error: BaseException | None) -> str:
    """The S3 error code of ``error``'s answer: ``""`` without one (or for None, such as a missing ``__cause__``)."""
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _http_status(error: BaseException | None) -> int:
    """The HTTP status of ``error``'s S3 answer: 0 without one (or for None, such as a missing ``__cause__``)."""
    response = getattr(error, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _is_retryable(error: BaseException) -> bool:
    """Throttling, 5xx, timeouts and connection problems; never 4xx input errors."""
    if isinstance(error, _ChangedWhileReading | JobStoreError):
        return False
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )

    if isinstance(error, ClientError):
        return _error_code(error) in _RETRYABLE_CODES or _http_status(error) >= 500
    if isinstance(error, EndpointConnectionError | ConnectionClosedError | ReadTimeoutError | ConnectTimeoutError
                  | ResponseStreamingError | IncompleteReadError):
        return True
    import aiohttp

    return isinstance(error, aiohttp.ClientError | TimeoutError | ConnectionError)


def _is_ip_or_localhost(url: str | None) -> bool:
    if not url:
        return False
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _SliceBody:
    """A request body over a file range or a buffer: an async iterable of slices, each file slice read with
    ``os.pread`` in a worker thread (and hashed there). ``read`` exists only so botocore accepts it as a blob."""

    def __init__(self, *, length: int, path: str | None = None, offset: int = 0, buffer: Buffer | None = None,
                 slice_size: int = MiB, expected_crc: int | None = None,
                 progress: PartProgress | None = None) -> None:
        self.length = length
        self.progress = progress
        self.path = path
        self.offset = offset
        self.buffer = buffer
        self.slice_size = slice_size
        self.expected_crc = expected_crc

    def read(self, n: int = -1) -> bytes:  # pragma: no cover - never called by aiohttp for async iterables
        raise TypeError("_SliceBody is sent as an async iterable")

    def __len__(self) -> int:
        return self.length

    async def __aiter__(self) -> AsyncIterator[bytes | memoryview]:
        if self.progress is not None:
            await self.progress.restart()  # a new attempt: what an earlier one reported is taken back
        if self.buffer is not None:
            async for piece in iter_buffer_slices(memoryview(self.buffer)[: self.length], self.slice_size):
                yield piece
                await self._sent(len(piece))
            return
        assert self.path is not None
        fd = await anyio.to_thread.run_sync(os.open, self.path, os.O_RDONLY)
        try:
            value = 0
            done = 0
            while done < self.length:
                want = min(self.slice_size, self.length - done)
                data, value = await anyio.to_thread.run_sync(self._read_slice, fd, want, self.offset + done, value)
                done += len(data)
                yield data
                await self._sent(len(data))
            if self.expected_crc is not None and value != self.expected_crc:
                raise _ChangedWhileReading(f"{self.path} changed while it was being uploaded; upload it again")
        finally:
            os.close(fd)

    async def _sent(self, n: int) -> None:
        if self.progress is not None:
            await self.progress.advance(n)

    def _read_slice(self, fd: int, want: int, offset: int, value: int) -> tuple[bytes, int]:
        data = os.pread(fd, want, offset)
        if not data:
            raise _ChangedWhileReading(f"{self.path} shrank while it was being uploaded")
        return data, crc32c(data, value)


class S3Backend(Backend):
    """Objects in an S3 bucket under a key prefix (``s3://bucket/prefix`` or ``aws:REGION:BUCKET``)."""

    scheme = "s3"

    def __init__(self, bucket: str, prefix: str = "", *, transfer: TransferConfig | None = None,
                 sse_key: bytes | str | None = None, endpoint_url: str | None = None, region_name: str | None = None,
                 aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
                 aws_session_token: str | None = None, profile_name: str | None = None,
                 conditional_writes: str = "require", direct_receive: bool = True,
                 direct_requests: bool = True) -> None:
        super().__init__(transfer=transfer, sse_key=sse_key)
        if conditional_writes not in CONDITIONAL_WRITES:
            raise JobStoreError(f"conditional_writes must be one of {', '.join(CONDITIONAL_WRITES)}, not "
                                f"{conditional_writes!r}")
        self.conditional_writes = conditional_writes
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root = f"{self.prefix}/" if self.prefix else ""
        self.endpoint_url = (endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                             or os.environ.get("AWS_ENDPOINT_URL") or None)
        self.region_name = (region_name or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                            or None)
        self.profile_name = profile_name or os.environ.get("AWS_PROFILE") or None
        self._credentials = {"aws_access_key_id": aws_access_key_id,
                             "aws_secret_access_key": aws_secret_access_key,
                             "aws_session_token": aws_session_token}
        self.retry_policy = RetryPolicy.from_config(self.transfer)
        self._client: Any = None
        self._client_cm: Any = None
        self._client_lock: anyio.Lock | None = None
        self._conditional_ok: bool | None = None
        self._conditional_refusal: str | None = None
        self._probe_lock: anyio.Lock | None = None
        self._sse_copy_ok: bool | None = None
        self._range_getter: RangeGetter | None = None
        self._range_getter_ok = direct_receive
        self._direct: S3DirectRequests | None = None
        self._direct_ok = direct_requests
        self._ca_bundle: str | bool = True
        self._send_checksums = True
        self._if_match_bare = False

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    # ------------------------------------------------------------------ client and requests

    async def client(self) -> Any:
        """The aiobotocore client, created on first use inside the running loop."""
        if self._client is not None:
            return self._client
        if self._client_lock is None:
            self._client_lock = anyio.Lock()
        async with self._client_lock:
            if self._client is None:
                try:
                    from aiobotocore.config import AioConfig
                    from aiobotocore.session import AioSession
                except ImportError as error:  # pragma: no cover
                    raise BackendUnavailableError(f"the S3 backend needs aiobotocore ({error})") from error
                config = AioConfig(
                    max_pool_connections=max(self.transfer.max_requests, 10),
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    s3={"addressing_style": "path" if _is_ip_or_localhost(self.endpoint_url) else "auto",
                        "payload_signing_enabled": False},
                    signature_version="s3v4",  # presigned URLs too: they sign headers instead of carrying them
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    connect_timeout=20,
                    read_timeout=120,
                )
                try:
                    session = AioSession(profile=self.profile_name)
                    self._ca_bundle = session.get_config_variable("ca_bundle") or True
                    cm = session.create_client(
                        "s3", endpoint_url=self.endpoint_url, region_name=self.region_name or "us-east-1",
                        config=config, **{k: v for k, v in self._credentials.items() if v is not None})
                    self._client = await cm.__aenter__()
                except Exception as error:
                    raise BackendUnavailableError(f"cannot create an S3 client for {self.describe()}: {error}. "
                                                  "Check endpoint_url, region_name, profile and credentials") from error
                self._client_cm = cm
                await self._start_direct_requests(self._client)
        return self._client

    async def _start_direct_requests(self, client: Any) -> None:
        """Set up :class:`~aiojobstore.backends.s3direct.S3DirectRequests` for this store's bucket, unless
        ``direct_requests`` is off, the endpoint is reached through a proxy, requests are not signed, or botocore
        addresses the bucket in a way the direct requests cannot follow."""
        if not self._direct_ok:
            return
        endpoint = client.meta.endpoint_url
        credentials = client._get_credentials()  # botocore's own object: refreshed as botocore refreshes it
        try:
            if _behind_proxy(endpoint):
                raise ValueError(f"{endpoint} is reached through a proxy")
            if credentials is None:
                raise ValueError("requests are not signed (no credentials)")
            url = await client.generate_presigned_url("get_object", Params={"Bucket": self.bucket,
                                                                            "Key": _DIRECT_PROBE_KEY}, ExpiresIn=60)
            base_url, region = bucket_url_from_presigned(url, _DIRECT_PROBE_KEY)
        except Exception as reason:  # an optimisation that cannot be set up: botocore does the work
            log.info("S3 %s: small requests go through botocore: %s", self.describe(), reason)
            self._direct_ok = False
            return
        context = None
        if base_url.startswith("https:"):
            context = await anyio.to_thread.run_sync(_ssl_context, self._ca_bundle)
        self._direct = S3DirectRequests(bucket=self.bucket, base_url=base_url, region=region,
                                        credentials=credentials.get_frozen_credentials, ssl_context=context,
                                        max_connections=max(self.transfer.max_requests, 10))

    async def close(self) -> None:
        getter, self._range_getter = self._range_getter, None
        if getter is not None:
            getter.close()
        direct, self._direct = self._direct, None
        if direct is not None:
            with anyio.CancelScope(shield=True):
                await direct.close()
        cm, self._client_cm, self._client = self._client_cm, None, None
        if cm is not None:
            with anyio.CancelScope(shield=True):
                await cm.__aexit__(None, None, None)

    def _full(self, key: str) -> str:
        return self.root + key

    def _sse(self, encrypted: bool) -> dict[str, Any]:
        if not encrypted:
            return {}
        assert self.sse_key is not None
        return {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": self.sse_key}

    async def _request(self, operation: str, *, key: str = "", what: str = "", tries: list[int] | None = None,
                       **params: Any) -> dict[str, Any]:
        """One S3 call under the store's request limit, retried per :class:`RetryPolicy`, errors translated.
        ``tries``, when given, counts the attempts sent (``tries[0]``): more than one means an earlier attempt may
        have been applied without its answer reaching us."""
        client = await self.client()
        method = getattr(client, operation)
        direct = self._direct if self._direct is not None and self._direct.accepts(operation, params) else None

        async def once() -> dict[str, Any]:
            if tries is not None:
                tries[0] += 1
            async with self.limits.requests:
                if direct is not None and self._direct_ok:
                    try:
                        return await direct.call(operation, params)
                    except Exception as error:
                        if not _maybe_misfit(error):
                            raise
                        refusal = _error_code(error) or _http_status(error)
                    # An answer botocore might not get: repeat it there; if botocore succeeds, stop sending
                    # direct requests (this endpoint wants something they do not do).
                    response: dict[str, Any] = await method(**params)
                    log.warning("S3 %s: %s answered the direct request with %s but botocore's with success; "
                                "small requests go through botocore from now on", self.describe(), operation,
                                refusal)
                    self._direct_ok = False
                    return response
                answer: dict[str, Any] = await method(**params)
                return answer

        try:
            return await with_retries(once, policy=self.retry_policy, is_retryable=_is_retryable,
                                       what=f"S3 {operation} {what or key}")
        except Exception as error:
            raise self._translate(error, key, operation, encrypted="SSECustomerKey" in params,
                                  conditional="IfMatch" in params) from error

    def _translate(self, error: BaseException, key: str, operation: str, *, encrypted: bool = False,
                   conditional: bool = False) -> BaseException:
        if isinstance(error, JobStoreError):
            return error
        code, status = _error_code(error), _http_status(error)
        where = f"{operation} on {key!r} in {self.describe()}" if key else f"{operation} on {self.describe()}"
        if code == "NoSuchBucket":
            return NoSuchFileError(key or self.bucket, f"bucket {self.bucket!r} does not exist (initialize the store)")
        if (code in ("NoSuchKey", "NotFound", "404") or status == 404) and not conditional:
            return NoSuchFileError(key)
        if conditional and (code in ("NoSuchKey", "NotFound", "404") or status == 404):
            return ConcurrentModificationError(f"{key!r} no longer exists (it was deleted since it was read)")
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "412") or (status in (409, 412) and \
                operation in ("put_object", "complete_multipart_upload")):
            return ConcurrentModificationError(f"{key!r} changed (or was created) by someone else since it was read")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                    "ExpiredToken") and not encrypted:
            return BackendUnavailableError(f"{where} was refused ({code}): check the credentials and permissions")
        if encrypted and status in (400, 403):
            return EncryptionKeyError(f"{key!r} could not be read with this store's sse_key (HTTP {status} {code}): "
                                      "it was encrypted with a different key")
        if status == 400 and "encrypt" in str(error).lower():
            return EncryptionKeyError(f"{key!r} is encrypted (SSE-C): open the store with the sse_key it was written "
                                      "with")
        if _is_retryable(error):
            return TransferError(f"{where} failed after retrying: {error}")
        return TransferError(f"{where} failed: {error}")

    # ------------------------------------------------------------------ container

    async def create(self) -> bool:
        if await self._bucket_exists():
            return False
        params: dict[str, Any] = {"Bucket": self.bucket}
        region = self.region_name or "us-east-1"
        if region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            await self._request("create_bucket", what=self.bucket, **params)
        except TransferError as error:
            if _error_code(error.__cause__) in ("BucketAlreadyOwnedByYou",):
                return False
            if _error_code(error.__cause__) == "BucketAlreadyExists":
                raise BackendUnavailableError(f"bucket {self.bucket!r} belongs to someone else: choose another "
                                              "name") from error
            raise
        await self._request("put_object", key=CREATED_BUCKET_MARKER, Bucket=self.bucket,
                            Key=self._full(CREATED_BUCKET_MARKER), Body=b"")
        return True

    async def _bucket_exists(self) -> bool:
        try:
            await self._request("head_bucket", what=self.bucket, Bucket=self.bucket)
        except NoSuchFileError:
            return False
        return True

    async def exists(self) -> bool:
        return await self._bucket_exists()

    async def destroy(self) -> None:
        if not await self._bucket_exists():
            return
        created = await self._head_raw(CREATED_BUCKET_MARKER) is not None
        await self._abort_uploads()
        batch: list[str] = []
        marker = self._full(CREATED_BUCKET_MARKER)
        async for full_key in self._list_keys(self.root):
            if full_key == marker:
                continue
            batch.append(full_key)
            if len(batch) == 1000:
                await self._delete_batch(batch)
                batch = []
        if batch:
            await self._delete_batch(batch)
        if created:
            await self._delete_batch([marker])
            try:
                with contextlib.suppress(NoSuchFileError):  # already gone
                    await self._request("delete_bucket", what=self.bucket, Bucket=self.bucket)
            except TransferError as error:
                if _error_code(error.__cause__) != "BucketNotEmpty":
                    raise

    async def _abort_uploads(self, prefix: str | None = None) -> None:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.root if prefix is None else prefix}
        while True:
            try:
                page = await self._request("list_multipart_uploads", what="uploads", **params)
            except NoSuchFileError:
                return
            for upload in page.get("Uploads", []):
                await self._abort(upload["Key"], upload["UploadId"])
            if not page.get("IsTruncated"):
                return
            params["KeyMarker"] = page.get("NextKeyMarker")
            params["UploadIdMarker"] = page.get("NextUploadIdMarker")

    async def reclaim(self, older_than: float = 3600.0) -> ReclaimReport:
        """Abort the multipart uploads under the prefix initiated more than ``older_than`` seconds ago (by the
        server's clock) and delete the backups and conditional-write probes that old: what writers that died
        left. Live writers' uploads are younger than any sensible grace period."""
        report = ReclaimReport()
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.root}
        now = time.time()
        try:
            while True:
                page = await self._request("list_multipart_uploads", what="uploads", **params)
                now = _server_time(page)
                for upload in page.get("Uploads", []):
                    initiated = upload.get("Initiated")
                    if initiated is not None and initiated.timestamp() < now - older_than:
                        await self._abort(upload["Key"], upload["UploadId"])
                        report.add("multipart-upload")
                if not page.get("IsTruncated"):
                    break
                params["KeyMarker"] = page.get("NextKeyMarker")
                params["UploadIdMarker"] = page.get("NextUploadIdMarker")
            for prefix, kind in ((_BACKUP_PREFIX, "backup"), (_PROBE_PREFIX, "conditional-probe")):
                async for entry in self._list_raw(self.root + prefix):
                    modified = entry.get("LastModified")
                    if modified is not None and modified.timestamp() < now - older_than:
                        await self._delete_batch([entry["Key"]])
                        report.add(kind, int(entry.get("Size", 0)))
        except NoSuchFileError:  # no bucket: nothing to reclaim
            return report
        return report

    async def pending_uploads(self, prefix: str = "") -> list[str]:
        """Keys (relative to the root) of multipart uploads still pending under ``prefix``."""
        page = await self._request("list_multipart_uploads", what="uploads", Bucket=self.bucket,
                                   Prefix=self.root + prefix)
        return [u["Key"][len(self.root):] for u in page.get("Uploads", [])]

    async def _abort(self, full_key: str, upload_id: str) -> None:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(NoSuchFileError):
                await self._request("abort_multipart_upload", key=full_key, Bucket=self.bucket, Key=full_key,
                                    UploadId=upload_id)

    async def _delete_batch(self, full_keys: list[str]) -> None:
        result = await self._request("delete_objects", what=f"{len(full_keys)} objects", Bucket=self.bucket,
                                     Delete={"Objects": [{"Key": k} for k in full_keys], "Quiet": True})
        errors = [e for e in result.get("Errors", []) if e.get("Code") != "NoSuchKey"]
        if errors:
            raise TransferError(f"could not delete {len(errors)} objects from {self.describe()}: {errors[:3]}")

    async def _list_keys(self, full_prefix: str) -> AsyncIterator[str]:
        async for entry in self._list_raw(full_prefix):
            yield entry["Key"]

    async def _list_raw(self, full_prefix: str) -> AsyncIterator[dict[str, Any]]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full_prefix}
        while True:
            page = await self._request("list_objects_v2", what=f"list {full_prefix!r}", **params)
            for entry in page.get("Contents", []):
                yield entry
            if not page.get("IsTruncated"):
                return
            params["ContinuationToken"] = page["NextContinuationToken"]

    # ------------------------------------------------------------------ metadata

    def _info(self, key: str, response: dict[str, Any], size: int | None = None) -> ObjectInfo:
        modified = response.get("LastModified")
        return ObjectInfo(
            key=key,
            size=response.get("ContentLength", 0) if size is None else size,
            etag=response.get("ETag"),
            mtime=modified.timestamp() if modified is not None else None,
            metadata=dict(response.get("Metadata", {})),
        )

    async def _head_raw(self, key: str, sse: dict[str, Any] | None = None) -> dict[str, Any] | None:
        try:
            return await self._request("head_object", key=key, Bucket=self.bucket, Key=self._full(key), **(sse or {}))
        except NoSuchFileError:
            return None

    async def _head(self, key: str) -> tuple[ObjectInfo, dict[str, Any]] | None:
        """HEAD an object; returns its info and the SSE-C parameters its reads need (None when missing)."""
        response, sse = await self._with_sse_retry(key, lambda sse: self._head_raw(key, sse))
        if response is None:
            return None
        info = self._info(key, response)
        self.check_encryption(key, info.metadata)
        if not sse and info.metadata.get(META_KEY_SHA256) and response.get("SSECustomerAlgorithm"):
            sse = self._sse(True)  # pragma: no cover - a server that answers HEAD without the key
        return info, sse

    async def stat(self, key: str) -> ObjectInfo | None:
        validate_key(key)
        try:
            head = await self._head(key)
        except EncryptionKeyError:
            head = None
            response = None
            with contextlib.suppress(JobStoreError):
                response = await self._head_raw(key, self._sse(True)) if self.sse_key else None
            if response is not None:
                return self._info(key, response)
            raise
        return None if head is None else head[0]

    async def delete(self, key: str) -> None:
        validate_key(key)
        with contextlib.suppress(NoSuchFileError):
            await self._request("delete_object", key=key, Bucket=self.bucket, Key=self._full(key))

    async def delete_many(self, keys: Iterable[str]) -> None:
        full = [self._full(validate_key(k)) for k in keys]
        for start in range(0, len(full), 1000):
            try:
                await self._delete_batch(full[start : start + 1000])
            except NoSuchFileError:
                return

    async def list(self, prefix: str = "", *, metadata: bool = True) -> AsyncIterator[ObjectInfo]:
        """Every object under ``prefix``; with ``metadata`` (one HEAD per object, in parallel per page) its
        user metadata too, which ListObjectsV2 does not return."""
        page: list[dict[str, Any]] = []
        try:
            async for entry in self._list_raw(self.root + prefix):
                key = entry["Key"][len(self.root):]
                if key.startswith(_RESERVED_PREFIXES):
                    continue
                if not metadata:
                    yield self._listed_info(key, entry)
                    continue
                page.append(entry)
                if len(page) == 200:
                    for info in await self._with_metadata(page):
                        yield info
                    page = []
        except NoSuchFileError:
            return
        for info in await self._with_metadata(page):
            yield info

    async def list_delimited(self, prefix: str = "", delimiter: str = "/") -> AsyncIterator[ObjectInfo | CommonPrefix]:
        """One level below ``prefix`` with ListObjectsV2's ``Delimiter``, in key order: the objects directly under
        it (without user metadata) and a :class:`CommonPrefix` per deeper level; the store's reserved keys are
        hidden."""
        if not delimiter:
            raise InvalidOptionError("a listing delimiter must be a non-empty string, such as '/'")
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.root + prefix, "Delimiter": delimiter}
        try:
            while True:
                page = await self._request("list_objects_v2", what=f"list {prefix!r}", **params)
                for entry in _page_entries(page, len(self.root)):
                    if not entry.key.startswith(_RESERVED_PREFIXES):
                        yield entry
                if not page.get("IsTruncated"):
                    return
                params["ContinuationToken"] = page["NextContinuationToken"]
        except NoSuchFileError:
            return

    @staticmethod
    def _listed_info(key: str, entry: dict[str, Any]) -> ObjectInfo:
        modified = entry.get("LastModified")
        return ObjectInfo(key, entry.get("Size", 0), entry.get("ETag"), modified.timestamp() if modified else None)

    async def _with_metadata(self, entries: builtins.list[dict[str, Any]]) -> builtins.list[ObjectInfo]:
        async def one(part: Part) -> ObjectInfo | None:
            entry = entries[part.number - 1]
            key = entry["Key"][len(self.root):]
            try:
                head = await self._head(key)
            except EncryptionKeyError:
                head = None
            return head[0] if head is not None else self._listed_info(key, entry)

        parts = [Part(i + 1, 0, 0) for i in range(len(entries))]
        infos = await run_parts(parts, one, max_concurrency=16)
        return [i for i in infos if i is not None]

    # ------------------------------------------------------------------ conditional writes

    async def _conditions_honoured(self, *, required: bool = False) -> bool:
        """Whether the server honours If-None-Match / If-Match on PutObject, probed once per backend before the
        first write (so the If-Match form is known before any conditional request is built: Ceph RGW 16
        compares it without the quotes S3 returns). ``required``: a conditional write is about to rely on it, so a
        server that ignores conditions raises :class:`ConditionalWritesUnsupportedError` unless the store was
        opened with ``conditional_writes="unsafe-fallback"``."""
        if self._conditional_ok is None:
            if self._probe_lock is None:
                self._probe_lock = anyio.Lock()
            async with self._probe_lock:
                if self._conditional_ok is None:
                    self._conditional_refusal = await self._probe_conditions()
                    self._conditional_ok = self._conditional_refusal is None
        if not self._conditional_ok and required and self.conditional_writes != "unsafe-fallback":
            raise ConditionalWritesUnsupportedError(
                f"the S3 server behind {self.describe()} {self._conditional_refusal}, so updates from several "
                "processes could be lost. Use a server that honours If-None-Match/If-Match on PutObject, or open "
                "the store with conditional_writes='unsafe-fallback' to accept a racy HEAD-then-PUT check instead")
        return self._conditional_ok

    async def _probe_conditions(self) -> str | None:
        """Probe conditional PutObject on a key of this call's own (``_PROBE_PREFIX`` + a fresh token), which no
        other process writes or deletes, so no answer can be caused by another writer. Returns ``None`` when both
        conditions are honoured, else what the server does wrong."""
        probe_key = _PROBE_PREFIX + new_write_token()
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(probe_key), "Body": b""}

        async def put(**condition: str) -> str | None:
            """The refusal of a conditional put: None (accepted), "412", or the error."""
            request: dict[str, Any] = {**params, **condition}
            try:
                await self._request("put_object", key=probe_key, **request)
            except ConcurrentModificationError:
                return "412"
            except TransferError as error:
                return f"{_error_code(error.__cause__) or error}"
            return None

        try:
            etag = (await self._request("put_object", key=probe_key, **params)).get("ETag") or ""
            refused = await put(IfNoneMatch="*")
            if refused is None:
                return "ignores If-None-Match: * on PutObject (a create of an existing key succeeded)"
            if refused != "412":
                return f"rejects If-None-Match: * on PutObject ({refused})"
            for form in (_quoted(etag), _bare(etag)):
                if await put(IfMatch=form) is None:
                    self._if_match_bare = form != _quoted(etag)
                    break
            else:
                return "refuses If-Match with the object's own ETag on PutObject"
            wrong = '"00000000000000000000000000000000"'
            if await put(IfMatch=_bare(wrong) if self._if_match_bare else wrong) is None:
                return "ignores If-Match on PutObject (a write with a wrong ETag succeeded)"
            return None
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(JobStoreError):
                await self._request("delete_object", key=probe_key, Bucket=self.bucket, Key=self._full(probe_key))

    async def _copies_sse_c(self) -> bool:
        """Whether the server copies SSE-C objects server-side (Ceph RGW 16 does not), probed once on a key of
        this backend's own."""
        if self._sse_copy_ok is None:
            probe = _PROBE_PREFIX + new_write_token()
            sse = self._sse(True)
            full = self._full(probe)
            try:
                await self._request("put_object", key=probe, Bucket=self.bucket, Key=full, Body=b"", **sse)
                try:
                    await self._request("copy_object", key=probe, Bucket=self.bucket, Key=full,
                                        CopySource={"Bucket": self.bucket, "Key": full}, MetadataDirective="REPLACE",
                                        Metadata={"probe": "1"}, CopySourceSSECustomerAlgorithm="AES256",
                                        CopySourceSSECustomerKey=sse["SSECustomerKey"], **sse)
                    self._sse_copy_ok = True
                except TransferError as error:
                    if _error_code(error.__cause__) != "NotImplemented":
                        raise
                    self._sse_copy_ok = False
            finally:
                with anyio.CancelScope(shield=True), contextlib.suppress(JobStoreError):
                    await self._delete_quietly(probe)
        return self._sse_copy_ok

    async def _check_condition(self, key: str, if_absent: bool, if_match: str | None) -> None:
        """The fallback for servers that ignore conditional headers: check right before writing."""
        if not if_absent and if_match is None:
            return
        response = await self._head_raw_any(key)
        if if_absent and response is not None:
            raise ConcurrentModificationError(f"{key!r} already exists")
        if if_match is not None and (response is None or _bare(response.get("ETag")) != _bare(if_match)):
            raise ConcurrentModificationError(f"{key!r} changed since it was read")

    async def _head_raw_any(self, key: str) -> dict[str, Any] | None:
        try:
            return await self._head_raw(key)
        except JobStoreError:
            if self.sse_key is None:
                return {"ETag": None}
            return await self._head_raw(key, self._sse(True))

    def _condition_params(self, if_absent: bool, if_match: str | None) -> dict[str, str]:
        """The condition headers, in the form the server compares (call :meth:`_conditions_honoured` first)."""
        assert self._conditional_ok is not None, "the If-Match form is learned by _conditions_honoured()"
        params: dict[str, str] = {}
        if if_absent:
            params["IfNoneMatch"] = "*"
        if if_match is not None:
            params["IfMatch"] = _bare(if_match) if self._if_match_bare else _quoted(if_match)
        return params

    async def _own_write(self, key: str, meta: dict[str, str], encrypted: bool) -> ObjectInfo | None:
        """The stored object's info if it is the one this call wrote (its write token is ``meta``'s): a retried
        request whose first attempt was applied though its answer was lost."""
        token = meta.get(META_WRITE_TOKEN)
        if token is None:
            return None
        try:
            response = await self._head_raw(key, self._sse(encrypted))
        except JobStoreError:
            return None
        if response is None or response.get("Metadata", {}).get(META_WRITE_TOKEN) != token:
            return None
        return self._info(key, response)

    # ------------------------------------------------------------------ commits and their roll-back

    async def _capture(self, key: str, *, if_match: str | None = None) -> _Previous:
        """What a write of ``key`` is about to replace, kept so that a commit the caller's cancellation
        interrupts can be undone: nothing (the key is absent), the bytes and metadata (up to
        :data:`_KEEP_IN_MEMORY`), or a server-side copy under :data:`_BACKUP_PREFIX`. With ``if_match``, a stored
        object of another ETag raises ``ConcurrentModificationError`` (the write's own condition would fail)."""
        head = await self._head_for_capture(key)
        if head is None:
            if if_match is not None:
                raise ConcurrentModificationError(f"{key!r} no longer exists (it was deleted since it was read)")
            return _Previous(existed=False)
        response, sse = head
        etag = response.get("ETag")
        token = response.get("Metadata", {}).get(META_WRITE_TOKEN)
        if if_match is not None and _bare(etag) != _bare(if_match):
            raise ConcurrentModificationError(f"{key!r} changed (or was created) by someone else since it was read")
        size = int(response.get("ContentLength", 0))
        if size <= _KEEP_IN_MEMORY:
            try:
                data, info = await self._get_whole(key)
            except (ReplacedWhileReading, NoSuchFileError):
                data, info = b"", None
            except EncryptionKeyError:  # written with another key: replaceable, not restorable
                return _Previous(existed=True, etag=etag, restorable=False)
            if info is None or (if_match is not None and _bare(info.etag) != _bare(if_match)):
                raise ConcurrentModificationError(f"{key!r} changed (or was deleted) while this write read it")
            return _Previous(existed=True, etag=info.etag, data=data, metadata=info.metadata, encrypted=bool(sse),
                             token=info.metadata.get(META_WRITE_TOKEN))
        if size <= MAX_COPY_OBJECT:
            backup = _BACKUP_PREFIX + new_write_token()
            copy_sse = {"CopySourceSSECustomerAlgorithm": "AES256",
                        "CopySourceSSECustomerKey": sse["SSECustomerKey"]} if sse else {}
            try:
                await self._request("copy_object", key=backup, Bucket=self.bucket, Key=self._full(backup),
                                    CopySource={"Bucket": self.bucket, "Key": self._full(key)},
                                    CopySourceIfMatch=etag, MetadataDirective="COPY", **sse, **copy_sse)
                return _Previous(existed=True, etag=etag, backup_key=backup, encrypted=bool(sse), token=token)
            except ConcurrentModificationError:
                raise
            except JobStoreError as error:  # Ceph RGW 16 cannot copy SSE-C objects server-side
                log.warning("S3 %s: cannot back %r up before replacing it (%s); a cancellation while it is "
                            "replaced cannot restore it", self.describe(), key, error)
        return _Previous(existed=True, etag=etag, encrypted=bool(sse), restorable=False, token=token)

    async def _head_for_capture(self, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The raw HEAD of ``key`` and the SSE-C parameters its reads need (``None`` when missing)."""
        try:
            response, sse = await self._with_sse_retry(key, lambda sse: self._head_raw(key, sse))
        except EncryptionKeyError:
            return {"ETag": None, "ContentLength": MAX_COPY_OBJECT + 1}, {}  # not ours to read: not restorable
        return None if response is None else (response, sse)

    async def _commit(self, key: str, commit: Callable[[], Awaitable[tuple[ObjectInfo, _Previous]]]) -> ObjectInfo:
        """Run ``commit`` (which returns what it wrote and what it replaced) to completion whatever cancellation
        arrives (:func:`~aiojobstore.commit.commit_or_roll_back`); a caller cancelled by ``task.cancel()``
        meanwhile gets the previous state back. The backup a commit took is deleted either way."""
        async def roll_back(result: tuple[ObjectInfo, _Previous]) -> None:
            await self._roll_back(key, *result)

        info, previous = await commit_or_roll_back(commit, roll_back)
        if previous.backup_key:
            await run_uncancelled(lambda: self._delete_quietly(previous.backup_key or ""))
        return info

    async def _roll_back(self, key: str, written: ObjectInfo, previous: _Previous) -> None:
        """Undo a committed write of ``key`` if the stored object is still the one it wrote (its token):
        delete it, or put back the version it replaced."""
        try:
            if await self._own_write(key, written.metadata, META_KEY_SHA256 in written.metadata) is None:
                log.warning("S3 %s: %r was replaced by another writer before a cancelled write could be rolled "
                            "back; the newer object stays", self.describe(), key)
                return
            if not previous.existed:
                await self._delete_quietly(key)
            elif previous.data is not None:
                assert previous.metadata is not None
                await self._conditions_honoured()
                params = {"Bucket": self.bucket, "Key": self._full(key), "Body": previous.data,
                          "ContentLength": len(previous.data), "Metadata": previous.metadata,
                          **self._sse(previous.encrypted)}
                if self._conditional_ok:
                    params.update(self._condition_params(False, written.etag))
                await self._request("put_object", key=key, **params)
            elif previous.backup_key:
                sse = self._sse(previous.encrypted)
                copy_sse = {"CopySourceSSECustomerAlgorithm": "AES256",
                            "CopySourceSSECustomerKey": sse["SSECustomerKey"]} if sse else {}
                await self._request("copy_object", key=key, Bucket=self.bucket, Key=self._full(key),
                                    CopySource={"Bucket": self.bucket, "Key": self._full(previous.backup_key)},
                                    MetadataDirective="COPY", **sse, **copy_sse)
            else:
                log.warning("S3 %s: a cancelled write replaced %r, whose previous version could not be kept; it "
                            "stays replaced", self.describe(), key)
        except ConcurrentModificationError:
            log.warning("S3 %s: %r changed during the roll-back of a cancelled write; the newer object stays",
                        self.describe(), key)
        finally:
            if previous.backup_key:
                await self._delete_quietly(previous.backup_key)

    async def _delete_quietly(self, key: str) -> None:
        with contextlib.suppress(NoSuchFileError):
            await self._request("delete_object", key=key, Bucket=self.bucket, Key=self._full(key))

    # ------------------------------------------------------------------ writes

    def _write_metadata(self, metadata: dict[str, str] | None, encrypted: bool, crc: int | None) -> dict[str, str]:
        """The metadata an object is written with: the caller's, the key fingerprint, the CRC32C and a fresh
        write token (which makes the write recognisable as this call's own)."""
        meta = {**user_metadata(metadata or {}), **self.encryption_metadata(encrypted),
                META_WRITE_TOKEN: new_write_token()}
        if crc is not None:
            meta[META_CRC32C] = crc32c_to_b64(crc)
        return meta

    def _checksum_param(self, crc: int) -> dict[str, str]:
        return {"ChecksumCRC32C": crc32c_to_b64(crc)} if self._send_checksums else {}

    async def _send_put(self, key: str, body: Callable[[], Any], length: int, crc: int, meta: dict[str, str],
                        encrypted: bool, condition: dict[str, str], *, check_own: bool = True) -> ObjectInfo:
        """One PutObject, retried. The one place (for botocore's requests and the direct ones alike) where a
        conditional put whose retry is refused (412/409) checks whether the refusal is of its own first attempt,
        applied though its answer was lost: then the object carries this call's token and the put succeeded."""
        tries = [0]
        try:
            response = await self._put_with_checksum_fallback(
                key, lambda: {"Bucket": self.bucket, "Key": self._full(key), "Body": body(), "ContentLength": length,
                              "Metadata": meta, **self._checksum_param(crc), **self._sse(encrypted), **condition},
                tries=tries)
        except ConcurrentModificationError:
            # Retries happen below this counter too (aiohttp repeats an idempotent request whose connection
            # closed), so every refusal is checked, unless the caller checks the object itself (check_own).
            own = await self._own_write(key, meta, encrypted) if check_own or tries[0] > 1 else None
            if own is None:
                raise
            return own
        return ObjectInfo(key, length, _quoted(response.get("ETag")), time.time(), meta)

    async def _put_object(self, key: str, body: Any, length: int, crc: int, meta: dict[str, str], *,
                          encrypted: bool, if_absent: bool = False, if_match: str | None = None,
                          previous: _Previous | None = None) -> ObjectInfo:
        """Store one object with one PutObject, committed with :meth:`_commit`. Unconditional puts are sent with
        ``If-None-Match: *`` first (a create, the common case, costs one request); an existing object is then
        captured (:meth:`_capture`) and replaced with ``If-Match`` on its ETag, so that what a roll-back puts
        back is exactly what was replaced. ``previous``: the replaced version, already in hand (update_object)."""
        honoured = await self._conditions_honoured(required=if_absent or if_match is not None)
        body_factory = body if callable(body) else (lambda: body)

        async def send(condition: dict[str, str], check_own: bool = True) -> ObjectInfo:
            return await self._send_put(key, body_factory, length, crc, meta, encrypted, condition,
                                        check_own=check_own)

        async def replace(prev: _Previous, condition: dict[str, str]) -> tuple[ObjectInfo, _Previous]:
            try:
                return await send(condition), prev
            except BaseException:
                if prev.backup_key:
                    await run_uncancelled(lambda: self._delete_quietly(prev.backup_key or ""))
                raise

        async def commit() -> tuple[ObjectInfo, _Previous]:
            if if_absent:
                if not honoured:
                    await self._check_condition(key, True, None)
                return await send(self._condition_params(True, None) if honoured else {}), _Previous(existed=False)
            if if_match is not None:
                prev = previous or await self._capture(key, if_match=if_match)
                if not honoured:
                    await self._check_condition(key, False, if_match)
                return await replace(prev, self._condition_params(False, if_match) if honoured else {})
            if not honoured:
                return await replace(await self._capture(key), {})
            for _ in range(_MAX_OVERWRITE_TRIES):
                with contextlib.suppress(ConcurrentModificationError):  # the key exists: replace it
                    return await send(self._condition_params(True, None), False), _Previous(existed=False)
                try:
                    prev = await self._capture(key)
                except ConcurrentModificationError:
                    continue  # replaced or deleted while it was read: start again
                if not prev.existed:
                    continue  # deleted meanwhile: create it again
                if prev.token == meta[META_WRITE_TOKEN]:  # the create was applied, its answer lost
                    if prev.backup_key:
                        await self._delete_quietly(prev.backup_key)
                    return ObjectInfo(key, length, _quoted(prev.etag), time.time(), meta), _Previous(existed=False)
                with contextlib.suppress(ConcurrentModificationError):  # replaced meanwhile: once more
                    return await replace(prev, self._condition_params(False, prev.etag))
            raise ConcurrentModificationError(f"{key!r} kept being replaced by other writers while this write tried "
                                              f"to replace it ({_MAX_OVERWRITE_TRIES} tries)")

        return await self._commit(key, commit)

    async def _put_with_checksum_fallback(self, key: str, params: Callable[[], dict[str, Any]],
                                          operation: str = "put_object",
                                          tries: builtins.list[int] | None = None) -> dict[str, Any]:
        try:
            return await self._request(operation, key=key, tries=tries, **params())
        except TransferError as error:
            code = _error_code(error.__cause__)
            if self._send_checksums and code in ("InvalidArgument", "NotImplemented", "InvalidRequest") and \
                    "checksum" in str(error.__cause__).lower():
                self._send_checksums = False  # the server rejects flexible checksums: rely on ajs-crc32c alone
                return await self._request(operation, key=key, tries=tries, **params())
            raise

    def _put_body(self, data: bytes) -> Any:
        return data if len(data) <= MiB else (
            lambda: _SliceBody(length=len(data), buffer=data, slice_size=self.transfer.io_slice_size))

    async def put_bytes(self, key: str, data: bytes, *, metadata: dict[str, str] | None = None,
                        if_absent: bool = False, if_match: str | None = None, encrypted: bool = False) -> ObjectInfo:
        validate_key(key)
        data = bytes(data)
        crc = await crc32c_async(data)
        meta = self._write_metadata(metadata, encrypted, crc)
        return await self._put_object(key, self._put_body(data), len(data), crc, meta, encrypted=encrypted,
                                      if_absent=if_absent, if_match=if_match)

    async def update_object(self, key: str, edit: Callable[[bytes], bytes], *,
                            metadata: dict[str, str] | None = None) -> ObjectInfo:
        """A compare-and-swap on ``If-Match``: the object read, edited and written back only if it is still the
        version read; its user metadata and encryption are kept unless ``metadata`` is given. The version read
        is the one a cancelled commit puts back. A retry after a lost answer recognises its own write."""
        validate_key(key)
        data, info = await self.get_object(key)
        encrypted = META_KEY_SHA256 in info.metadata
        new = await anyio.to_thread.run_sync(edit, data) if len(data) > 256 * 1024 else edit(data)
        new = bytes(new)
        crc = await crc32c_async(new)
        meta = self._write_metadata(user_metadata(info.metadata) if metadata is None else metadata, encrypted, crc)
        previous = _Previous(existed=True, etag=info.etag, data=data, metadata=info.metadata, encrypted=encrypted)
        return await self._put_object(key, self._put_body(new), len(new), crc, meta, encrypted=encrypted,
                                      if_match=info.etag or "", previous=previous)

    async def upload_file(self, path: str | PathLike[str], key: str, *, metadata: dict[str, str] | None = None,
                          encrypted: bool = False, progress: ProgressCallback | None = None) -> ObjectInfo:
        validate_key(key)
        path = os.fspath(path)
        self.encryption_metadata(encrypted)
        with self.limits.uploads.joined() as share:  # before any await, so uploads started together count each other
            return await self._upload_file(path, key, metadata, encrypted, Progress(progress), share)

    async def _upload_file(self, path: str, key: str, metadata: dict[str, str] | None, encrypted: bool,
                           report: Progress, share: TransferShare) -> ObjectInfo:
        size = (await anyio.Path(path).stat()).st_size
        report.total = size
        cfg = self.transfer
        part_size = choose_part_size(size, cfg.part_size, max_parts=cfg.max_parts, min_part_size=cfg.min_part_size)
        if size <= part_size:
            crc = await self.limits.file_crc32c(path, 0, size)
            progress = PartProgress(report)
            info = await self._put_object(
                key, lambda: _SliceBody(length=size, path=path, slice_size=cfg.io_slice_size, expected_crc=crc,
                                        progress=progress),
                size, crc, self._write_metadata(metadata, encrypted, crc), encrypted=encrypted)
            await progress.finish(size)
            return info
        parts = plan_parts(size, part_size, max_parts=cfg.max_parts, min_part_size=cfg.min_part_size)

        async def part_crc(part: Part) -> int:
            return await self.limits.file_crc32c(path, part.offset, part.length)

        crcs = await run_parts(parts, part_crc, max_concurrency=CHECKSUM_THREADS)
        whole = combine_part_crcs(zip(crcs, (p.length for p in parts), strict=True))
        meta = self._write_metadata(metadata, encrypted, whole)

        def body(part: Part, progress: PartProgress | None) -> _SliceBody:
            return _SliceBody(length=part.length, path=path, offset=part.offset, slice_size=cfg.io_slice_size,
                              expected_crc=crcs[part.number - 1], progress=progress)

        return await self._multipart(key, parts, body, crcs, meta, encrypted=encrypted, report=report,
                                     share=share.window)

    async def _multipart(self, key: str, parts: builtins.list[Part], body: PartBody,
                         crcs: builtins.list[int], meta: dict[str, str], *, encrypted: bool,
                         report: Progress | None = None, share: Callable[[], int] | None = None) -> ObjectInfo:
        """Upload ``parts`` as one multipart upload (at most ``share()`` in flight, when given); abort it on any
        failure or cancellation."""
        upload = _MultipartUpload(self, key, meta, encrypted)
        try:
            await upload.start()
            async with PartWindow(self.transfer.max_concurrency, share=share) as window:
                for part in parts:
                    await window.submit(upload.send_part, part, body, crcs[part.number - 1], report)
            return await upload.complete(sum(p.length for p in parts))
        except BaseException:
            await upload.abort()
            raise

    @asynccontextmanager
    async def open_writer(self, key: str, *, metadata: dict[str, str] | None = None, if_absent: bool = False,
                          encrypted: bool = False) -> AsyncIterator[AsyncWriter]:
        validate_key(key)
        self.encryption_metadata(encrypted)
        target = _S3StreamTarget(self, key, metadata, if_absent, encrypted)
        async with open_part_writer(target, budget=self.limits.memory, part_size=target.part_size,
                                    max_concurrency=self.transfer.max_concurrency) as writer:
            yield writer

    # ------------------------------------------------------------------ copies

    async def copy(self, src: str, dst: str, *, metadata: dict[str, str] | None = None) -> ObjectInfo:
        validate_key(src)
        validate_key(dst)
        head = await self._head(src)
        if head is None:
            raise NoSuchFileError(src)
        info, sse = head
        return await self._server_copy(self.bucket, self._full(src), info, sse, dst, metadata)

    async def copy_from(self, source: Backend, src_key: str, dst_key: str) -> ObjectInfo | None:
        """Server-side copy from another S3 store on the same endpoint (any bucket); ``None`` when impossible
        (also for a source without a recorded CRC32C: the caller streams it, and the stream records one)."""
        if not isinstance(source, S3Backend) or source.endpoint_url != self.endpoint_url:
            return None
        validate_key(src_key)
        validate_key(dst_key)
        head = await source._head(src_key)
        if head is None:
            raise NoSuchFileError(src_key)
        info, sse = head
        if sse and source.sse_key != self.sse_key:
            return None  # the destination could not re-encrypt with the source's key
        if META_CRC32C not in info.metadata:
            return None
        return await self._server_copy(source.bucket, source._full(src_key), info, sse, dst_key, None)

    async def _server_copy(self, src_bucket: str, src_full: str, info: ObjectInfo, src_sse: dict[str, Any],
                           dst: str, metadata: dict[str, str] | None) -> ObjectInfo:
        """Copy server-side (CopyObject, or UploadPartCopy above 5 GiB) with a fresh write token, committed with
        :meth:`_commit`. A source without a recorded CRC32C, or one the server cannot copy (SSE-C on Ceph RGW
        16), is streamed through this client instead, which records the checksum."""
        encrypted = bool(src_sse)
        meta = {**info.metadata, **user_metadata(metadata or {}), META_WRITE_TOKEN: new_write_token()}
        if META_CRC32C not in meta and src_bucket == self.bucket:
            return await self._stream_copy(src_full[len(self.root):], dst, meta)
        source = {"Bucket": src_bucket, "Key": src_full}
        copy_sse = {"CopySourceSSECustomerAlgorithm": "AES256",
                    "CopySourceSSECustomerKey": src_sse["SSECustomerKey"]} if src_sse else {}
        pin: dict[str, Any] = {"CopySourceIfMatch": info.etag} if info.etag else {}
        if info.size <= MAX_COPY_OBJECT:
            async def commit() -> tuple[ObjectInfo, _Previous]:
                previous = await self._capture(dst)
                try:
                    response = await self._request(
                        "copy_object", key=dst, Bucket=self.bucket, Key=self._full(dst), CopySource=source,
                        MetadataDirective="REPLACE", Metadata=meta, **self._sse(encrypted), **copy_sse, **pin)
                except BaseException:
                    if previous.backup_key:
                        await self._delete_quietly(previous.backup_key)
                    raise
                etag = response.get("CopyObjectResult", {}).get("ETag")
                return ObjectInfo(dst, info.size, _quoted(etag), time.time(), meta), previous

            try:
                return await self._commit(dst, commit)
            except TransferError as error:
                if not (encrypted and _error_code(error.__cause__) == "NotImplemented") or src_bucket != self.bucket:
                    raise
                # Ceph RGW 16 cannot copy SSE-C objects server-side: stream the bytes through this client.
                return await self._stream_copy(src_full[len(self.root):], dst, meta)
        upload = _MultipartUpload(self, dst, meta, encrypted)
        parts = plan_parts(info.size, max(self.transfer.part_size, 512 * MiB), max_parts=self.transfer.max_parts)
        try:
            await upload.start()

            async def one(part: Part) -> None:
                response = await self._request(
                    "upload_part_copy", key=dst, Bucket=self.bucket, Key=self._full(dst), UploadId=upload.upload_id,
                    PartNumber=part.number, CopySource=source, CopySourceRange=f"bytes={part.offset}-{part.end - 1}",
                    **pin, **self._sse(encrypted), **copy_sse)
                upload.etags[part.number] = response["CopyPartResult"]["ETag"]

            await run_parts(parts, one, max_concurrency=self.transfer.max_concurrency)
            return await upload.complete(info.size, checksums=False)
        except BaseException:
            await upload.abort()
            raise

    async def _record_crc(self, info: ObjectInfo, crc: int, upload: _MultipartUpload) -> ObjectInfo:
        """Record a completed stream's whole-object CRC32C: a server-side copy onto itself, pinned to the ETag it
        was completed with, with the checksum added to its metadata (same write token). A retry refused after a
        lost answer finds its own copy (token and checksum). On a server that cannot copy SSE-C objects (Ceph RGW
        16) an encrypted stream keeps no whole-object checksum: that is logged, and readers requiring one refuse
        it (see the module docstring)."""
        key = upload.key
        meta = {**upload.meta, META_CRC32C: crc32c_to_b64(crc)}
        sse = self._sse(upload.encrypted)
        copy_sse = {"CopySourceSSECustomerAlgorithm": "AES256",
                    "CopySourceSSECustomerKey": sse["SSECustomerKey"]} if sse else {}
        tries = [0]
        try:
            response = await self._request(
                "copy_object", key=key, tries=tries, Bucket=self.bucket, Key=self._full(key),
                CopySource={"Bucket": self.bucket, "Key": self._full(key)}, MetadataDirective="REPLACE",
                Metadata=meta, **({"CopySourceIfMatch": info.etag} if info.etag else {}), **sse, **copy_sse)
        except ConcurrentModificationError:
            own = await self._own_write(key, meta, upload.encrypted)
            if own is None or own.metadata.get(META_CRC32C) != meta[META_CRC32C]:
                raise
            return own
        except TransferError as error:
            if not (upload.encrypted and _error_code(error.__cause__) == "NotImplemented"):
                raise
            log.warning("S3 %s: the server cannot copy SSE-C objects, so the encrypted stream %r keeps no "
                        "whole-object CRC32C", self.describe(), key)
            return info
        etag = response.get("CopyObjectResult", {}).get("ETag")
        return ObjectInfo(key, info.size, _quoted(etag), time.time(), meta)

    async def _stream_copy(self, src: str, dst: str, meta: dict[str, str]) -> ObjectInfo:
        async with self.open_reader(src) as reader, self.open_writer(dst, metadata=user_metadata(meta),
                                                                     encrypted=META_KEY_SHA256 in meta) as writer:
            async for chunk in reader:
                await writer.write(chunk)
        info = await self.stat(dst)
        assert info is not None
        return info

    async def presign(self, key: str, expires: int = 3600) -> str:
        validate_key(key)
        if not 1 <= expires <= _MAX_PRESIGN_EXPIRES:
            raise JobStoreError(f"an S3 presigned URL (SigV4) lasts 1 s to 7 days ({_MAX_PRESIGN_EXPIRES} s), not "
                                f"{expires} s; ask for an expiry in that range")
        client = await self.client()
        url: str = await client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._full(key)}, ExpiresIn=int(expires))
        return url

    # ------------------------------------------------------------------ reads

    def _source(self, key: str, etag: str | None, sse: dict[str, Any], *,
                first_response: dict[str, Any] | None = None, receive: Receive | None = None) -> RangeSource:
        """Ranged GETs of ``key`` pinned to ``etag`` (``If-Match``), for the engine's reader, download and reads.
        ``first_response`` is a GET already sent for the first range (its body is read first)."""
        first = [first_response]

        @asynccontextmanager
        async def open_range(start: int, end: int) -> AsyncIterator[Callable[[int], Awaitable[bytes]]]:
            response, first[0] = first[0], None
            if response is None:
                params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key),
                                          "Range": f"bytes={start}-{end - 1}", **sse}
                if etag:
                    params["IfMatch"] = etag
                client = await self.client()
                async with self.limits.requests:
                    response = await client.get_object(**params)
            body = response["Body"]
            try:
                yield _chunk_reader(body)
            finally:
                body.close()

        def translate(error: BaseException) -> BaseException:
            translated = self._translate(error, key, "get_object", encrypted=bool(sse))
            if isinstance(translated, ConcurrentModificationError):
                return ReplacedWhileReading(f"{key!r} was replaced while it was being read; read it again")
            return translated

        return RangeSource(open_range, self.retry_policy, _is_retryable, translate, what=f"S3 GET {key}",
                           receive=receive)

    async def _with_sse_retry(self, key: str,
                              call: Callable[[dict[str, Any]], Awaitable[T]]) -> tuple[T, dict[str, Any]]:
        """``call(sse)`` without the SSE-C key, then with it when the server says the object is encrypted
        (HTTP 400); returns the result and the SSE-C parameters that worked."""
        try:
            return await call({}), {}
        except (EncryptionKeyError, TransferError) as error:
            if _http_status(error.__cause__) != 400:
                raise
            if self.sse_key is None:
                raise EncryptionKeyError(f"{key!r} is encrypted (SSE-C): open the store with the sse_key it was "
                                         "written with") from None
            sse = self._sse(True)
            return await call(sse), sse

    async def _get_whole(self, key: str) -> tuple[bytes, ObjectInfo]:
        """One GET for the whole object (its headers give the info a HEAD would); a dropped connection
        resumes from the offset reached, pinned to the ETag of the first response."""

        async def get(sse: dict[str, Any]) -> dict[str, Any]:
            return await self._request("get_object", key=key, Bucket=self.bucket, Key=self._full(key), **sse)

        response, sse = await self._with_sse_retry(key, get)
        info = self._info(key, response)
        try:
            self.check_encryption(key, info.metadata)
        except EncryptionKeyError:
            response["Body"].close()
            raise
        pieces = await self._source(key, info.etag, sse, first_response=response).read(0, info.size)
        if info.size == 0:
            response["Body"].close()
        return b"".join(pieces), info

    async def get_object(self, key: str, *, start: int = 0, end: int | None = None) -> tuple[bytes, ObjectInfo]:
        validate_key(key)
        whole = start == 0 and end is None

        async def attempt() -> tuple[bool, tuple[bytes, ObjectInfo]]:
            if whole:
                data, info = await self._get_whole(key)
            else:
                info, sse = await self._head_existing(key)
                lo, hi = clamp_range(start, end, info.size)
                data = b"".join(await self._source(key, info.etag, sse).read(lo, hi))
                if (lo, hi) != (0, info.size):
                    return True, (data, info)
            self._require_recorded(key, info)
            return await self._crc_ok(info, await crc32c_async(data), len(data)), (data, info)

        return await verify_and_retry(attempt, what=repr(key))

    async def _head_existing(self, key: str) -> tuple[ObjectInfo, dict[str, Any]]:
        """HEAD an object a read needs (``NoSuchFileError`` when missing, ``IntegrityError`` when it carries no
        recorded checksum and the store requires one); its info and the SSE-C parameters its reads need."""
        head = await self._head(key)
        if head is None:
            raise NoSuchFileError(key)
        self._require_recorded(key, head[0])
        return head

    def _require_recorded(self, key: str, info: ObjectInfo) -> None:
        """With ``require_checksum``: refuse an object without the CRC32C every aiojobstore write records."""
        if self.require_checksum and META_CRC32C not in info.metadata:
            raise IntegrityError(
                f"{key!r} in {self.describe()} carries no aiojobstore checksum (metadata {META_CRC32C}): it was not "
                "written by aiojobstore (replaced by a plain PUT from another tool?). To read it anyway, open the "
                "location with aiojobstore.open_backend(), whose reads do not require the checksum, or import it "
                "by its s3:// URL")

    async def _crc_ok(self, info: ObjectInfo, crc: int, size: int) -> bool:
        if size != info.size:
            return False
        recorded = info.metadata.get(META_CRC32C)
        return recorded is None or crc32c_from_b64(recorded) == crc

    @asynccontextmanager
    async def open_reader(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[AsyncReader]:
        validate_key(key)
        info, sse = await self._head_existing(key)
        lo, hi = clamp_range(start, end, info.size)

        async def verify(crc: int) -> bool:
            return await self._crc_ok(info, crc, hi - lo)

        async with open_range_reader(self._source(key, info.etag, sse).read, lo, hi,
                                     range_size=min(self.transfer.part_size, _READ_RANGE), depth=_READ_AHEAD,
                                     budget=self.limits.memory, verify=verify if (lo, hi) == (0, info.size) else None,
                                     what=repr(key)) as reader:
            yield reader

    async def download_file(self, key: str, path: str | PathLike[str], *,
                            progress: ProgressCallback | None = None) -> ObjectInfo:
        validate_key(key)
        target = os.path.abspath(os.fspath(path))
        with self.limits.downloads.joined() as share:
            async def attempt() -> tuple[bool, ObjectInfo]:
                info, sse = await self._head_existing(key)
                return await self._download_once(key, info, sse, target, progress, share), info

            return await verify_and_retry(attempt, what=repr(key))

    async def _download_once(self, key: str, info: ObjectInfo, sse: dict[str, Any], target: str,
                             progress: ProgressCallback | None, share: TransferShare) -> bool:
        """Ranged GETs (sized and windowed by the store's ``share``) written at their offsets into a temp file
        beside ``target``, renamed onto it when the CRC32C matches; returns whether it did."""
        cfg = self.transfer
        part_size = choose_part_size(info.size, cfg.part_size, max_parts=cfg.max_parts,
                                     min_part_size=cfg.min_part_size)
        source = self._source(key, info.etag, sse, receive=self._receiver(key, info.etag, sse))

        async def verify(crc: int) -> bool:
            return await self._crc_ok(info, crc, info.size)

        return await download_ranges(target, info.size, source.fill, config=cfg, part_size=part_size, share=share,
                                     report=Progress(progress, info.size), verify=verify)

    def _receiver(self, key: str, etag: str | None, sse: dict[str, Any]) -> Receive:
        """The fast receive path of a download's ranges (:mod:`aiojobstore.rangeget`): off for the store once
        the endpoint refuses it in a way that says the receiver's request does not suit it."""
        async def receive(rng: DownloadRange, end: int) -> bool:
            if not self._range_getter_ok:
                return False
            try:
                await self._receive_range(key, rng, end, etag, sse)
            except RangeRefused as refused:
                if refused.status in _RECEIVER_MISFITS:
                    self._range_getter_ok = False
                    log.warning("S3 GET of %s through aiojobstore.rangeget refused (%s); this store uses aiohttp "
                                "from now on", key, refused)
                return False  # aiohttp repeats it (retrying or translating its error)
            return True

        return receive

    async def _receive_range(self, key: str, rng: DownloadRange, end: int, etag: str | None,
                             sse: dict[str, Any]) -> None:
        """GET ``[rng.position, end)`` with :class:`~aiojobstore.rangeget.RangeGetter` on a presigned URL (SigV4,
        so the range, the ETag condition and the SSE-C key travel as signed headers, never in the URL)."""
        start = rng.position
        if end <= start:
            return
        getter = await self._getter_for()
        headers = {"Range": f"bytes={start}-{end - 1}"}
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key), "Range": headers["Range"], **sse}
        if etag:
            params["IfMatch"] = headers["If-Match"] = etag
        if sse:
            headers.update(sse_headers(sse["SSECustomerKey"]))
        client = await self.client()
        url = await client.generate_presigned_url("get_object", Params=params, ExpiresIn=_RANGE_URL_EXPIRES)
        signed = set(parse_qs(urlsplit(url).query).get("X-Amz-SignedHeaders", [""])[0].split(";"))
        unsent = signed - {"host"} - {name.lower() for name in headers}
        if "range" not in signed or unsent:
            raise RangeRefused(f"the presigned URL signs {sorted(unsent) or 'no range'}, which the receiver cannot "
                               "send as signed", status=_UNSIGNABLE)
        async with self.limits.requests:
            await getter.get(url, headers, start, end, rng)

    async def _getter_for(self) -> RangeGetter:
        """The store's :class:`RangeGetter`; refused when the endpoint is reached through a proxy."""
        client = await self.client()
        endpoint = client.meta.endpoint_url
        if _behind_proxy(endpoint):
            raise RangeRefused(f"{endpoint} is reached through a proxy", status=_UNSIGNABLE)
        if self._range_getter is None:
            context = None
            if endpoint.startswith("https:"):
                context = await anyio.to_thread.run_sync(_ssl_context, self._ca_bundle)
            self._range_getter = RangeGetter(ssl_context=context, max_idle=max(16, self.transfer.max_concurrency),
                                             connect_timeout=20, read_timeout=120)
        return self._range_getter


def _page_entries(page: dict[str, Any], root: int) -> builtins.list[ObjectInfo | CommonPrefix]:
    """The objects and common prefixes of one delimited ListObjectsV2 page, keys relative to the root (cut
    ``root`` characters), merged in the service's key order (UTF-8 bytes)."""
    objects = [S3Backend._listed_info(e["Key"][root:], e) for e in page.get("Contents", [])]
    prefixes = [CommonPrefix(p["Prefix"][root:]) for p in page.get("CommonPrefixes", [])]
    return sorted([*objects, *prefixes], key=lambda entry: entry.key.encode("utf-8", "surrogatepass"))


def _behind_proxy(endpoint: str) -> bool:
    """Whether the environment (``HTTP(S)_PROXY``, ``NO_PROXY``) sends requests to ``endpoint`` through a proxy,
    as botocore decides it."""
    from botocore.utils import get_environ_proxies

    return bool(get_environ_proxies(endpoint).get(urlsplit(endpoint).scheme))


def _ssl_context(ca_bundle: str | bool) -> ssl.SSLContext:
    """The TLS settings aiobotocore's client uses: verification against ``ca_bundle`` (``AWS_CA_BUNDLE``, or
    botocore's bundle when True); ``False`` verifies nothing."""
    from botocore.httpsession import get_cert_path

    context = ssl.create_default_context()
    if ca_bundle is False:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(get_cert_path(ca_bundle))
    return context


def _chunk_reader(body: Any) -> Callable[[int], Awaitable[bytes]]:
    """``read(limit)`` returning the next piece of ``body`` as received. On aiohttp that is the buffered piece
    itself (``StreamReader.readchunk``), never a join of several (a copy of every byte, 7% of a download's
    profile); elsewhere ``body.read(limit)``. A response body never holds more than its Content-Length, so a
    piece cannot run past the requested range."""
    content = getattr(getattr(body, "raw_stream", None), "content", None)
    if content is None or not hasattr(content, "readchunk"):
        body_read: Callable[[int], Awaitable[bytes]] = body.read
        return body_read

    async def read(_limit: int) -> bytes:
        while True:
            piece: tuple[bytes, bool] = await content.readchunk()
            data, at_chunk_end = piece
            if data or not at_chunk_end:  # (b"", True) only marks the end of a chunked-encoding chunk
                return data

    return read


#: Longest a SigV4 presigned URL may last (AWS refuses longer ones when they are used).
_MAX_PRESIGN_EXPIRES = 7 * 24 * 3600
#: Lifetime of the presigned URL of one ranged GET: it is sent at once, so this only bounds clock skew.
_RANGE_URL_EXPIRES = 900
#: A refusal with this status: the request could not be signed as the receiver sends it.
_UNSIGNABLE = -1
#: Refusals that say the receiver's request does not suit this endpoint (its signature, its protocol), so the
#: store stops using it; anything else (a 412, 404, 5xx) is the server's answer to a good request.
#: Key (never written) of the URL presigned once to learn how botocore addresses the bucket.
_DIRECT_PROBE_KEY = "aiojobstore-address-probe"
#: Error codes of a direct request that botocore's request may not get (signing, addressing, redirects).
_DIRECT_MISFIT_CODES = {"SignatureDoesNotMatch", "AuthorizationHeaderMalformed", "PermanentRedirect",
                        "TemporaryRedirect", "MissingContentLength", "XAmzContentSHA256Mismatch", "NotImplemented",
                        "IllegalLocationConstraintException"}
_DIRECT_MISFIT_STATUSES = {301, 302, 307, 403, 405, 411, 501, 505}


def _maybe_misfit(error: BaseException) -> bool:
    """Whether a direct request's error answer may be the direct request's own fault (a HEAD's 403 has no body
    to tell a bad signature from a denied permission)."""
    return _error_code(error) in _DIRECT_MISFIT_CODES or _http_status(error) in _DIRECT_MISFIT_STATUSES


_RECEIVER_MISFITS = {_UNSIGNABLE, 0, 400, 401, 403, 405, 411, 501, 505}

def _server_time(response: dict[str, Any]) -> float:
    """The server's clock when it answered (its ``Date`` header), else this machine's."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    with contextlib.suppress(TypeError, ValueError):
        return parsedate_to_datetime(date).timestamp()
    return time.time()


@overload
def _bare(etag: str) -> str: ...
@overload
def _bare(etag: str | None) -> str | None: ...
def _bare(etag: str | None) -> str | None:
    return None if etag is None else etag.strip('"')


@overload
def _quoted(etag: str) -> str: ...
@overload
def _quoted(etag: str | None) -> str | None: ...
def _quoted(etag: str | None) -> str | None:
    """ETags as HEAD returns them (Ceph RGW leaves the quotes off some responses)."""
    return etag if not etag or etag.startswith('"') else f'"{etag}"'


@dataclass
class _Previous:
    """What a commit replaced, kept to put it back if the caller is cancelled during the commit: nothing
    (``existed`` False), its bytes and metadata, or a server-side copy at ``backup_key``."""

    existed: bool
    etag: str | None = None
    data: bytes | None = None
    metadata: dict[str, str] | None = None
    encrypted: bool = False
    backup_key: str | None = None
    restorable: bool = True
    token: str | None = None


class _MultipartUpload:
    """One multipart upload: start, parts (with retries), complete (optionally conditional), abort.

    The upload carries the object's metadata, with this call's write token, from CreateMultipartUpload on. A
    create whose answer was lost is retried; the uploads an earlier attempt created meanwhile are found with
    ListMultipartUploads (pending on the key now, not before the create) and aborted. The create runs to completion
    whatever cancellation arrives, and what it created is aborted if the caller was cancelled."""

    def __init__(self, backend: S3Backend, key: str, meta: dict[str, str], encrypted: bool, *,
                 if_absent: bool = False) -> None:
        self.backend = backend
        self.key = key
        self.full = backend._full(key)
        self.meta = meta
        self.encrypted = encrypted
        self.if_absent = if_absent
        self.upload_id: str | None = None
        self.etags: dict[int, str] = {}
        self.checksums: dict[int, str] = {}

    async def start(self) -> None:
        b = self.backend
        await b._conditions_honoured(required=self.if_absent)  # a first write probes before its parts go out
        tries = [0]
        before = await self._uploads()  # to tell this call's uploads from those already pending

        async def create() -> dict[str, Any]:
            return await b._request("create_multipart_upload", key=self.key, tries=tries, Bucket=b.bucket,
                                    Key=self.full, Metadata=self.meta, **b._sse(self.encrypted),
                                    **({"ChecksumAlgorithm": "CRC32C"} if b._send_checksums else {}))

        async def abort_created(response: dict[str, Any]) -> None:
            await b._abort(self.full, response["UploadId"])

        try:
            response = await commit_or_roll_back(create, abort_created)
        except BaseException:
            if tries[0] > 1:
                await run_uncancelled(lambda: self._abort_strays(before, None))
            raise
        self.upload_id = response["UploadId"]
        if tries[0] > 1:
            await run_uncancelled(lambda: self._abort_strays(before, self.upload_id))

    async def _uploads(self) -> set[str] | None:
        """The IDs of the uploads pending on this key (``None`` if they cannot be listed)."""
        b = self.backend
        try:
            page = await b._request("list_multipart_uploads", what="uploads", Bucket=b.bucket, Prefix=self.full)
        except JobStoreError:
            return None
        return {u["UploadId"] for u in page.get("Uploads", []) if u["Key"] == self.full}

    async def _abort_strays(self, before: set[str] | None, keep: str | None) -> None:
        """Abort the uploads of this key created during this call other than ``keep``: those of create
        attempts whose answers were lost. (A concurrent writer of the very same key starting an upload meanwhile
        would lose its upload too, and its write would fail: never data loss, and rare.)"""
        now = await self._uploads()
        if before is None or now is None:
            return
        for upload_id in now - before - {keep}:
            await self.backend._abort(self.full, upload_id)

    async def send_part(self, part: Part, body: PartBody, crc: int, report: Progress | None) -> None:
        """UploadPart, retried; progress reported per slice sent (a retried attempt takes its slices back)."""
        b = self.backend
        progress = PartProgress(report) if report is not None else None

        def params() -> dict[str, Any]:
            return {"Bucket": b.bucket, "Key": self.full, "UploadId": self.upload_id, "PartNumber": part.number,
                    "Body": body(part, progress), "ContentLength": part.length, **b._checksum_param(crc),
                    **b._sse(self.encrypted)}

        response = await b._put_with_checksum_fallback(self.key, params, "upload_part")
        self.etags[part.number] = response["ETag"]
        if b._send_checksums:
            self.checksums[part.number] = crc32c_to_b64(crc)
        if progress is not None:
            await progress.finish(part.length)

    async def complete(self, size: int, *, checksums: bool = True,
                       then: Callable[[ObjectInfo], Awaitable[ObjectInfo]] | None = None) -> ObjectInfo:
        """Commit the upload (and ``then``, a step that finishes the object, such as recording its checksum) with
        :meth:`S3Backend._commit`: what the key held before is captured first, so that a caller cancelled during
        the commit gets it back; a ``then`` that fails rolls the completed upload back."""
        b = self.backend
        await b._conditions_honoured(required=self.if_absent)

        async def commit() -> tuple[ObjectInfo, _Previous]:
            previous = _Previous(existed=False) if self.if_absent else await b._capture(self.key)
            try:
                info = await self._complete(size, checksums)
            except BaseException:
                if previous.backup_key:
                    await b._delete_quietly(previous.backup_key)
                raise
            if then is not None:
                try:
                    info = await then(info)
                except BaseException:
                    await b._roll_back(self.key, info, previous)
                    raise
            return info, previous

        return await b._commit(self.key, commit)

    async def _complete(self, size: int, checksums: bool) -> ObjectInfo:
        b = self.backend
        conditional: dict[str, str] = {}
        if self.if_absent:
            # Ceph RGW 16 ignores If-None-Match on CompleteMultipartUpload: check first as well.
            await b._check_condition(self.key, True, None)
            if b._conditional_ok:
                conditional = {"IfNoneMatch": "*"}
        parts = []
        for number in sorted(self.etags):
            entry = {"PartNumber": number, "ETag": self.etags[number]}
            if checksums and number in self.checksums and b._send_checksums:
                entry["ChecksumCRC32C"] = self.checksums[number]
            parts.append(entry)
        tries = [0]

        async def send(condition: dict[str, str]) -> None:
            await b._request("complete_multipart_upload", key=self.key, tries=tries, Bucket=b.bucket, Key=self.full,
                             UploadId=self.upload_id, MultipartUpload={"Parts": parts}, **b._sse(self.encrypted),
                             **condition)

        try:
            try:
                await send(conditional)
            except TransferError as error:
                if not conditional or _error_code(error.__cause__) not in ("NotImplemented", "InvalidArgument"):
                    raise
                await b._check_condition(self.key, True, None)
                await send({})
        except (ConcurrentModificationError, NoSuchFileError):
            # A retry refused (412) or finding no upload (completed by the attempt whose answer was lost): the
            # object is this call's if it carries this call's token.
            own = await b._own_write(self.key, self.meta, self.encrypted)
            if own is None:
                raise
            self.upload_id = None
            return ObjectInfo(self.key, size, _quoted(own.etag), own.mtime, self.meta)
        self.upload_id = None
        # CompleteMultipartUpload's ETag is empty on Ceph RGW: HEAD for the real one.
        head = await b._head_raw(self.key, b._sse(self.encrypted))
        etag = head.get("ETag") if head else None
        return ObjectInfo(self.key, size, etag, time.time(), self.meta)

    async def abort(self) -> None:
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            with contextlib.suppress(JobStoreError):
                await run_uncancelled(lambda: self.backend._abort(self.full, upload_id))


class _S3StreamTarget:
    """The service side of an S3 write stream (:class:`~aiojobstore.transfer.writer.PartTarget`): one PutObject
    for a stream shorter than a part, else a multipart upload completed and then copied onto itself with the
    whole-object checksum recorded, as one commit (a cancellation during it rolls both back).

    An encrypted stream longer than one part, on a server that cannot copy SSE-C objects (Ceph RGW 16), could
    not have its checksum recorded after completion; it is spooled to a temp file instead (each part at its
    offset) and uploaded from it like ``upload_file``, with the checksum at CreateMultipartUpload (local disk
    I/O for the size of the stream)."""

    def __init__(self, backend: S3Backend, key: str, metadata: dict[str, str] | None, if_absent: bool,
                 encrypted: bool) -> None:
        self.backend = backend
        self.key = key
        self.metadata = metadata
        self.if_absent = if_absent
        self.encrypted = encrypted
        self.part_size = max(backend.transfer.part_size, backend.transfer.min_part_size)
        self.upload: _MultipartUpload | None = None
        self.spool: tuple[int, str] | None = None  # (fd, path) of the temp file, when spooling

    async def put_whole(self, data: bytes, crc: int) -> ObjectInfo:
        b = self.backend
        meta = b._write_metadata(self.metadata, self.encrypted, crc)
        return await b._put_object(self.key, b._put_body(data), len(data), crc, meta, encrypted=self.encrypted,
                                   if_absent=self.if_absent)

    async def start(self) -> None:
        b = self.backend
        if self.encrypted and not await b._copies_sse_c():
            self.spool = await anyio.to_thread.run_sync(functools.partial(
                tempfile.mkstemp, prefix="aiojobstore-s3-stream-"))
            return
        self.upload = _MultipartUpload(b, self.key, b._write_metadata(self.metadata, self.encrypted, None),
                                       self.encrypted, if_absent=self.if_absent)
        await self.upload.start()

    async def send_part(self, number: int, data: memoryview, crc: int) -> None:
        if self.spool is not None:
            await anyio.to_thread.run_sync(_write_all, self.spool[0], data, (number - 1) * self.part_size)
            return
        assert self.upload is not None
        slice_size = self.backend.transfer.io_slice_size
        await self.upload.send_part(Part(number, 0, len(data)),
                                    lambda p, _progress: _SliceBody(length=p.length, buffer=data,
                                                                    slice_size=slice_size), crc, None)

    async def complete(self, size: int, crc: int) -> ObjectInfo:
        b = self.backend
        if self.spool is not None:
            try:
                fd, path = self.spool
                await anyio.to_thread.run_sync(os.fsync, fd)
                if self.if_absent:
                    await b._conditions_honoured(required=True)
                    await b._check_condition(self.key, True, None)
                with b.limits.uploads.joined() as share:
                    return await b._upload_file(path, self.key, self.metadata, True, Progress(None), share)
            finally:
                await self._discard_spool()
        upload = self.upload
        assert upload is not None
        return await upload.complete(size, then=lambda info: b._record_crc(info, crc, upload))

    async def abort(self) -> None:
        if self.upload is not None:
            await self.upload.abort()
        await self._discard_spool()

    async def _discard_spool(self) -> None:
        spool, self.spool = self.spool, None
        if spool is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove_spool, *spool)


def _remove_spool(fd: int, path: str) -> None:
    os.close(fd)
    unlink_quietly(path)


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


_OPTION_NAMES = ("endpoint_url", "region_name", "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
                 "profile_name", "conditional_writes", "direct_receive", "direct_requests")


def from_locator(locator: Locator, *, transfer: TransferConfig | None = None, sse_key: bytes | str | None = None,
                 endpoint_url: str | None = None, region_name: str | None = None,
                 aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
                 aws_session_token: str | None = None, profile_name: str | None = None,
                 conditional_writes: str = "require", direct_receive: bool = True, direct_requests: bool = True,
                 **rest: Any) -> S3Backend:
    """The S3 backend for an ``s3://bucket/prefix`` or ``aws:REGION:BUCKET`` locator (no I/O). ``direct_receive``:
    downloads' ranged GETs are received by :mod:`aiojobstore.rangeget` straight into page-aligned buffers where the
    endpoint is reached without a proxy (``False``: always aiohttp). ``direct_requests``: small PutObject,
    GetObject, HeadObject and DeleteObject requests are sent by :mod:`aiojobstore.backends.s3direct` (SigV4 on
    aiohttp) instead of botocore, which costs several times the client CPU per request (``False``: botocore)."""
    reject_unknown_options("S3", rest, ["sse_key", *_OPTION_NAMES])
    return S3Backend(locator.bucket, locator.prefix, transfer=transfer, sse_key=sse_key, endpoint_url=endpoint_url,
                     region_name=region_name or locator.region, aws_access_key_id=aws_access_key_id,
                     aws_secret_access_key=aws_secret_access_key, aws_session_token=aws_session_token,
                     profile_name=profile_name, conditional_writes=conditional_writes,
                     direct_receive=direct_receive, direct_requests=direct_requests)
