"""The S3 client layer: the backend's state, the aiobotocore client (created lazily in the running loop) and the
direct requests of :mod:`.direct`, one request under the store's limit with retries (:class:`RetryPolicy`), the
translation of S3 errors into :mod:`aiojobstore.errors`, and HEADs with the SSE-C retry.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

import anyio

from ...errors import (
    BackendUnavailableError,
    ConcurrentModificationError,
    EncryptionKeyError,
    JobStoreError,
    NoSuchFileError,
    TransferError,
)
from ...rangeget import RangeGetter
from ...transfer import RetryPolicy, TransferConfig, with_retries
from ..base import META_KEY_SHA256, Backend, ObjectInfo
from .direct import S3DirectRequests, bucket_url_from_presigned

log = logging.getLogger("aiojobstore.s3")

T = TypeVar("T")

CONDITIONAL_WRITES = ("require", "unsafe-fallback")

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


class S3Client(Backend):
    """State, the aiobotocore client and the direct requests, one request with retries and its error translation."""

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
        """Set up :class:`~aiojobstore.backends.s3.direct.S3DirectRequests` for this store's bucket, unless
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

    async def _head_source(self, key: str) -> tuple[ObjectInfo, dict[str, Any]]:
        """:meth:`_head` of a copy's source, which must exist (``NoSuchFileError``)."""
        head = await self._head(key)
        if head is None:
            raise NoSuchFileError(key)
        return head

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

    async def _abort(self, full_key: str, upload_id: str) -> None:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(NoSuchFileError):
                await self._request("abort_multipart_upload", key=full_key, Bucket=self.bucket, Key=full_key,
                                    UploadId=upload_id)

    async def _delete_quietly(self, key: str) -> None:
        with contextlib.suppress(NoSuchFileError):
            await self._request("delete_object", key=key, Bucket=self.bucket, Key=self._full(key))


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
