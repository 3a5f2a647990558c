"""The S3 backend's hot small requests, sent without botocore.

A job store's everyday traffic is small: a job's JSON written, read, HEADed and deleted. Through aiobotocore
each such request costs about 2 ms of client CPU (operation-model serialisation, endpoint rules, event hooks,
user-agent assembly, response parsing), several times the server's own work on a loopback Ceph. This module
sends five operations itself, on :mod:`aiojobstore.leanhttp`'s kept-alive connections, signed here with AWS
Signature Version 4:

- ``PutObject`` with a ``bytes`` body, ``GetObject``, ``HeadObject`` and ``DeleteObject``;
- ``PutObject`` and ``UploadPart`` with the backend's slice bodies (a file range whose CRC32C is known, sent
  with ``sendfile`` on plain connections and checked for changes after it went out, see
  :class:`~aiojobstore.leanhttp.FileRange`; or a buffer, sent without a copy);
- with the parameters the backend uses: metadata, ``x-amz-checksum-crc32c``, SSE-C, ``If-Match`` /
  ``If-None-Match`` and ``Range``. A call with any other parameter is not accepted (:meth:`accepts`) and the
  backend sends it through botocore.

It takes the same parameters as botocore's client methods and answers with the same response dicts (``ETag``,
``ContentLength``, ``LastModified``, ``Metadata``, ``Body`` ...), and it raises botocore's ``ClientError`` for an
error answer (code and message parsed from S3's XML error body). The backend's retries and error translation
therefore treat both paths alike: a broken connection raises :class:`~aiojobstore.leanhttp.HttpConnectionError`
(a ``ConnectionError``), a silent one ``TimeoutError``, and both are retried like botocore's connection errors,
through the backend's lost-answer checks. Payloads are not signed (``UNSIGNED-PAYLOAD``, as for the backend's other
requests); their integrity is the CRC32C the backend sends and checks.

The bucket's URL (path-style or virtual-hosted, per the client's endpoint rules) and the signing region are taken
once from a URL presigned by the botocore client, so addressing follows botocore's decisions.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import hmac
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from ...leanhttp import Body, FileRange, HttpClient, Response

USER_AGENT = "aiojobstore-direct/1"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_SSE_PARAMS = ("SSECustomerAlgorithm", "SSECustomerKey")
_HEADER_PARAMS = {"IfMatch": "if-match", "IfNoneMatch": "if-none-match", "Range": "range",
                  "ChecksumCRC32C": "x-amz-checksum-crc32c"}
#: Parameters sent in the query string, with their names there.
_QUERY_PARAMS = {"PartNumber": "partNumber", "UploadId": "uploadId"}
#: Per operation: its HTTP method, its name in botocore's errors, and the parameters sent here.
_OPERATIONS: dict[str, tuple[str, str, frozenset[str]]] = {
    "put_object": ("PUT", "PutObject", frozenset({"Bucket", "Key", "Body", "ContentLength", "Metadata",
                                                  "ChecksumCRC32C", "IfMatch", "IfNoneMatch", *_SSE_PARAMS})),
    "upload_part": ("PUT", "UploadPart", frozenset({"Bucket", "Key", "Body", "ContentLength", "UploadId",
                                                    "PartNumber", "ChecksumCRC32C", *_SSE_PARAMS})),
    "get_object": ("GET", "GetObject", frozenset({"Bucket", "Key", "IfMatch", "Range", *_SSE_PARAMS})),
    "head_object": ("HEAD", "HeadObject", frozenset({"Bucket", "Key", "IfMatch", *_SSE_PARAMS})),
    "delete_object": ("DELETE", "DeleteObject", frozenset({"Bucket", "Key"})),
}
#: Operations :class:`S3DirectRequests` sends itself.
OPERATIONS = frozenset(_OPERATIONS)
_META_PREFIX = "x-amz-meta-"
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_ERROR_FIELD = re.compile(r"<(Code|Message)>(.*?)</\1>", re.DOTALL)
_MAX_ERROR_BODY = 64 * 1024


def sse_headers(sse_key: bytes) -> dict[str, str]:
    """The SSE-C request headers for ``sse_key`` (the key and its MD5, base64), as botocore sends them."""
    return {"x-amz-server-side-encryption-customer-algorithm": "AES256",
            "x-amz-server-side-encryption-customer-key": base64.b64encode(sse_key).decode(),
            "x-amz-server-side-encryption-customer-key-MD5": base64.b64encode(hashlib.md5(sse_key).digest()).decode()}


class SigV4:
    """AWS Signature Version 4 in the ``Authorization`` header.

    Every header given to :meth:`sign` is signed. The signing key is derived once per day (it depends only on the
    secret, the date, the region and the service)."""

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._key: tuple[str, str, bytes] | None = None  # (secret, day, key)

    def sign(self, method: str, host: str, path: str, headers: Mapping[str, str], *, access_key: str,
             secret_key: str, token: str | None = None, payload_hash: str = UNSIGNED_PAYLOAD,
             now: datetime.datetime | None = None, query: str = "") -> dict[str, str]:
        """``headers`` plus ``x-amz-date``, ``x-amz-content-sha256``, the session token if any, and
        ``Authorization``; ``path`` is the URL path exactly as sent (already percent-encoded), ``query`` the
        query string as sent, in canonical form (:func:`canonical_query`)."""
        stamp = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        signed = {name.lower(): " ".join(str(value).split()) for name, value in headers.items()}
        signed["host"] = host
        signed["x-amz-date"] = stamp
        signed["x-amz-content-sha256"] = payload_hash
        if token:
            signed["x-amz-security-token"] = token
        names = sorted(signed)
        signed_names = ";".join(names)
        canonical = "\n".join([method, path, query, "".join(f"{name}:{signed[name]}\n" for name in names),
                               signed_names, payload_hash])
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        string_to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(secret_key, day), string_to_sign.encode(), hashlib.sha256).hexdigest()
        del signed["host"]  # the HTTP client sends it from the URL
        signed["authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                                   f"SignedHeaders={signed_names}, Signature={signature}")
        return signed

    def _signing_key(self, secret_key: str, day: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == secret_key and cached[1] == day:
            return cached[2]
        key = hmac.new(f"AWS4{secret_key}".encode(), day.encode(), hashlib.sha256).digest()
        for part in (self.region, self.service, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self._key = (secret_key, day, key)
        return key


def canonical_query(params: Mapping[str, str]) -> str:
    """A query string in SigV4's canonical form: names sorted, names and values percent-encoded."""
    return "&".join(f"{quote(name, safe='-_.~')}={quote(value, safe='-_.~')}"
                    for name, value in sorted(params.items()))


def bucket_url_from_presigned(url: str, probe_key: str) -> tuple[str, str]:
    """(the bucket's base URL, ending in ``/``; the signing region) from a SigV4 URL presigned for a GET of
    ``probe_key``; ``ValueError`` when the URL has another shape."""
    parts = urlsplit(url)
    encoded_key = quote(probe_key, safe="/~")
    if not parts.path.endswith("/" + encoded_key):
        raise ValueError(f"presigned URL {parts.scheme}://{parts.netloc}{parts.path} does not end with the key")
    credential = parse_qs(parts.query).get("X-Amz-Credential", [""])[0].split("/")
    if len(credential) != 5 or credential[3] != "s3":
        raise ValueError("the presigned URL is not signed with SigV4 for s3")
    base = f"{parts.scheme}://{parts.netloc}{parts.path[: len(parts.path) - len(encoded_key)]}"
    return base, credential[2]


class DirectBody:
    """A GET response's body in the shape the backend reads from botocore's ``StreamingBody``: ``read(n)`` and
    ``close()``, which hands a fully read connection back to the pool (and closes one that is not)."""

    def __init__(self, response: Response) -> None:
        self.response = response

    async def read(self, n: int = -1) -> bytes:
        return await self.response.read(n)

    def close(self) -> None:
        self.response.release()


def _body(body: Any, length: int | None) -> Body | None:
    """The request body :mod:`~aiojobstore.leanhttp` sends for a ``Body`` parameter: a ``bytes``-like one as
    it is; one of the backend's slice bodies (``path``, ``offset``, ``length``, ``expected_crc`` or ``buffer``)
    as a :class:`~aiojobstore.leanhttp.FileRange` or a view of its buffer; ``None`` for anything else."""
    if isinstance(body, bytes | bytearray | memoryview):
        return body
    size = getattr(body, "length", None)
    if not isinstance(size, int) or (length is not None and length != size):
        return None
    buffer = getattr(body, "buffer", None)
    if buffer is not None:
        return memoryview(buffer).cast("B")[:size]
    path, crc = getattr(body, "path", None), getattr(body, "expected_crc", None)
    if isinstance(path, str) and isinstance(crc, int):
        return FileRange(path, int(getattr(body, "offset", 0)), size, crc)
    return None


class S3DirectRequests:
    """Sends :data:`OPERATIONS` on one bucket with :class:`~aiojobstore.leanhttp.HttpClient`, signed by
    :class:`SigV4` (see the module docstring).

    ``credentials()`` returns botocore's frozen credentials (``access_key``, ``secret_key``, ``token``), refreshed
    as botocore refreshes them."""

    def __init__(self, *, bucket: str, base_url: str, region: str,
                 credentials: Callable[[], Awaitable[Any]], ssl_context: ssl.SSLContext | None = None,
                 max_connections: int = 64, connect_timeout: float = 20, read_timeout: float = 120) -> None:
        self.bucket = bucket
        self.base_url = base_url
        parts = urlsplit(base_url)
        self._host = parts.netloc
        self._scheme_host = f"{parts.scheme}://{parts.netloc}"
        self._base_path = parts.path
        self._signer = SigV4(region)
        self._credentials = credentials
        self._http = HttpClient(ssl_context=ssl_context, max_idle=max_connections, connect_timeout=connect_timeout,
                                read_timeout=read_timeout, user_agent=USER_AGENT)

    def accepts(self, operation: str, params: Mapping[str, Any]) -> bool:
        """Whether :meth:`call` sends this call itself (else botocore must)."""
        known = _OPERATIONS.get(operation)
        if known is None or params.get("Bucket") != self.bucket or not params.keys() <= known[2]:
            return False
        if "Body" in params and _body(params["Body"], params.get("ContentLength")) is None:
            return False
        metadata = params.get("Metadata") or {}
        return all(_PRINTABLE_ASCII.fullmatch(f"{name}{value}") for name, value in metadata.items())

    async def call(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Send one call :meth:`accepts`; a non-2xx answer raises botocore's ``ClientError``."""
        from botocore.exceptions import ClientError

        path = self._base_path + quote(params["Key"], safe="/~")
        query = canonical_query({_QUERY_PARAMS[name]: str(value) for name, value in params.items()
                                 if name in _QUERY_PARAMS})
        headers: dict[str, str] = {_HEADER_PARAMS[name]: str(value) for name, value in params.items()
                                   if name in _HEADER_PARAMS}
        if params.get("SSECustomerKey") is not None:
            headers.update(sse_headers(params["SSECustomerKey"]))
        for name, value in (params.get("Metadata") or {}).items():
            headers[_META_PREFIX + name.lower()] = value
        method, operation_name, _ = _OPERATIONS[operation]
        body = _body(params["Body"], params.get("ContentLength")) if "Body" in params else None
        if body is None and method == "PUT":
            body = b""
        credentials = await self._credentials()
        signed = self._signer.sign(method, self._host, path, headers, access_key=credentials.access_key,
                                   secret_key=credentials.secret_key, token=credentials.token, query=query)
        url = self._scheme_host + path + (f"?{query}" if query else "")
        progress = getattr(params.get("Body"), "progress", None)  # a slice body's share of a transfer's progress
        if progress is not None and progress.report.callback is None:
            progress = None  # nobody watches: the body goes out in large sendfile calls, unreported
        if progress is not None:
            await progress.restart()  # a new attempt: what an earlier one reported is taken back
        response = await self._http.request(method, url, signed, body,
                                            on_sent=None if progress is None else progress.advance)
        streaming = False
        try:
            if response.status >= 300:
                text = b"" if method == "HEAD" else await response.read(_MAX_ERROR_BODY)
                raise ClientError(_error_response(response, text), operation_name)
            result = _response_fields(response)
            if method == "GET":
                result["Body"] = DirectBody(response)
                streaming = True
            else:
                await response.read()  # an empty body, or one nobody needs: read so the connection is kept
            return result
        finally:
            if not streaming:
                response.release()

    async def close(self) -> None:
        self._http.close()


def _response_fields(response: Response) -> dict[str, Any]:
    """The fields of botocore's response dict that the headers give."""
    headers = response.headers
    result: dict[str, Any] = {
        "ResponseMetadata": {"HTTPStatusCode": response.status, "HTTPHeaders": dict(headers)},
        "Metadata": {name[len(_META_PREFIX):]: value for name, value in headers.items()
                     if name.startswith(_META_PREFIX)},
    }
    if "etag" in headers:
        result["ETag"] = headers["etag"]
    if "content-length" in headers:
        result["ContentLength"] = int(headers["content-length"])
    if "content-range" in headers:
        result["ContentRange"] = headers["content-range"]
    if "last-modified" in headers:
        with contextlib.suppress(TypeError, ValueError):  # an unparsable date is left out, as if not sent
            result["LastModified"] = parsedate_to_datetime(headers["last-modified"])
    algorithm = headers.get("x-amz-server-side-encryption-customer-algorithm")
    if algorithm:
        result["SSECustomerAlgorithm"] = algorithm
    if "x-amz-checksum-crc32c" in headers:
        result["ChecksumCRC32C"] = headers["x-amz-checksum-crc32c"]
    return result


def _error_response(response: Response, body: bytes) -> dict[str, Any]:
    """botocore's error dict for an error answer: code and message from S3's XML body, else the status."""
    fields = dict(_ERROR_FIELD.findall(body.decode("utf-8", "replace")))
    return {"Error": {"Code": fields.get("Code") or str(response.status),
                      "Message": fields.get("Message") or response.reason or ""},
            "ResponseMetadata": {"HTTPStatusCode": response.status, "HTTPHeaders": dict(response.headers)}}
