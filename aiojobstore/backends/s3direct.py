"""The S3 backend's hot small requests, sent without botocore.

A job store's everyday traffic is small: a job's JSON written, read, HEADed and deleted. Through aiobotocore
each such request costs about 2 ms of client CPU (operation-model serialisation, endpoint rules, event hooks,
user-agent assembly, response parsing), several times the server's own work on a loopback Ceph. This module
sends four operations itself, on aiohttp, signed here with AWS Signature Version 4:

- ``PutObject`` with a ``bytes`` body, ``GetObject``, ``HeadObject`` and ``DeleteObject``;
- with the parameters the backend uses: metadata, ``x-amz-checksum-crc32c``, SSE-C, ``If-Match`` /
  ``If-None-Match`` and ``Range``. A call with any other parameter returns ``None`` and the backend sends it
  through botocore.

It takes the same parameters as botocore's client methods and answers with the same response dicts (``ETag``,
``ContentLength``, ``LastModified``, ``Metadata``, ``Body`` ...), and it raises botocore's ``ClientError`` for an
error answer (code and message parsed from S3's XML error body). The backend's retries and error translation
therefore treat both paths alike. Payloads are not signed (``UNSIGNED-PAYLOAD``, as for the backend's other
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
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

if TYPE_CHECKING:
    import aiohttp

USER_AGENT = "aiojobstore-direct/1"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_SSE_PARAMS = ("SSECustomerAlgorithm", "SSECustomerKey")
_HEADER_PARAMS = {"IfMatch": "if-match", "IfNoneMatch": "if-none-match", "Range": "range",
                  "ChecksumCRC32C": "x-amz-checksum-crc32c"}
#: Per operation: its HTTP method, its name in botocore's errors, and the parameters sent here.
_OPERATIONS: dict[str, tuple[str, str, frozenset[str]]] = {
    "put_object": ("PUT", "PutObject", frozenset({"Bucket", "Key", "Body", "ContentLength", "Metadata",
                                                  "ChecksumCRC32C", "IfMatch", "IfNoneMatch", *_SSE_PARAMS})),
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
    """AWS Signature Version 4 in the ``Authorization`` header, for requests without a query string.

    Every header given to :meth:`sign` is signed. The signing key is derived once per day (it depends only on the
    secret, the date, the region and the service)."""

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._key: tuple[str, str, bytes] | None = None  # (secret, day, key)

    def sign(self, method: str, host: str, path: str, headers: Mapping[str, str], *, access_key: str,
             secret_key: str, token: str | None = None, payload_hash: str = UNSIGNED_PAYLOAD,
             now: datetime.datetime | None = None) -> dict[str, str]:
        """``headers`` plus ``x-amz-date``, ``x-amz-content-sha256``, the session token if any, and
        ``Authorization``; ``path`` is the URL path exactly as sent (already percent-encoded)."""
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
        canonical = "\n".join([method, path, "", "".join(f"{name}:{signed[name]}\n" for name in names),
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
    """A GET response's body in the shape the backend reads from botocore's ``StreamingBody``: ``read(n)``,
    ``raw_stream.content`` (aiohttp's stream, for piece-by-piece reads) and ``close()``, which hands a fully read
    connection back to the pool (and closes one that is not)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.raw_stream = response

    async def read(self, n: int = -1) -> bytes:
        return await self.raw_stream.content.read(n)

    def close(self) -> None:
        self.raw_stream.release()


class S3DirectRequests:
    """Sends :data:`OPERATIONS` on one bucket with aiohttp, signed by :class:`SigV4` (see the module docstring).

    ``credentials()`` returns botocore's frozen credentials (``access_key``, ``secret_key``, ``token``), refreshed
    as botocore refreshes them."""

    def __init__(self, *, bucket: str, base_url: str, region: str,
                 credentials: Callable[[], Awaitable[Any]], ssl_context: Any = None, max_connections: int = 64,
                 connect_timeout: float = 20, read_timeout: float = 120) -> None:
        import aiohttp

        self.bucket = bucket
        self.base_url = base_url
        parts = urlsplit(base_url)
        self._host = parts.netloc
        self._scheme_host = f"{parts.scheme}://{parts.netloc}"
        self._base_path = parts.path
        self._signer = SigV4(region)
        self._credentials = credentials
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, ssl=ssl_context if ssl_context is not None else True),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout),
            auto_decompress=False, skip_auto_headers=("Content-Type", "Accept-Encoding"),
            headers={"User-Agent": USER_AGENT})

    def accepts(self, operation: str, params: Mapping[str, Any]) -> bool:
        """Whether :meth:`call` sends this call itself (else botocore must)."""
        known = _OPERATIONS.get(operation)
        if known is None or params.get("Bucket") != self.bucket or not params.keys() <= known[2]:
            return False
        body = params.get("Body", b"")
        if not isinstance(body, bytes | bytearray | memoryview):
            return False
        metadata = params.get("Metadata") or {}
        return all(_PRINTABLE_ASCII.fullmatch(f"{name}{value}") for name, value in metadata.items())

    async def call(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Send one call :meth:`accepts`; a non-2xx answer raises botocore's ``ClientError``."""
        import yarl
        from botocore.exceptions import ClientError

        path = self._base_path + quote(params["Key"], safe="/~")
        headers: dict[str, str] = {_HEADER_PARAMS[name]: str(value) for name, value in params.items()
                                   if name in _HEADER_PARAMS}
        if params.get("SSECustomerKey") is not None:
            headers.update(sse_headers(params["SSECustomerKey"]))
        for name, value in (params.get("Metadata") or {}).items():
            headers[_META_PREFIX + name.lower()] = value
        body = params.get("Body")
        method, operation_name, _ = _OPERATIONS[operation]
        credentials = await self._credentials()
        signed = self._signer.sign(method, self._host, path, headers, access_key=credentials.access_key,
                                   secret_key=credentials.secret_key, token=credentials.token)
        response = await self._session.request(method, yarl.URL(self._scheme_host + path, encoded=True),
                                               headers=signed, data=bytes(body) if body is not None else None,
                                               allow_redirects=False)
        streaming = False
        try:
            if response.status >= 300:
                text = b"" if method == "HEAD" else await response.content.read(_MAX_ERROR_BODY)
                raise ClientError(_error_response(response, text), operation_name)
            result = _response_fields(response)
            if method == "GET":
                result["Body"] = DirectBody(response)
                streaming = True
            return result
        finally:
            if not streaming:
                response.release()

    async def close(self) -> None:
        await self._session.close()


def _response_fields(response: Any) -> dict[str, Any]:
    """The fields of botocore's response dict that the headers give."""
    headers = response.headers
    result: dict[str, Any] = {
        "ResponseMetadata": {"HTTPStatusCode": response.status,
                             "HTTPHeaders": {name.lower(): value for name, value in headers.items()}},
        "Metadata": {name[len(_META_PREFIX):].lower(): value for name, value in headers.items()
                     if name.lower().startswith(_META_PREFIX)},
    }
    if "ETag" in headers:
        result["ETag"] = headers["ETag"]
    if "Content-Length" in headers:
        result["ContentLength"] = int(headers["Content-Length"])
    if "Content-Range" in headers:
        result["ContentRange"] = headers["Content-Range"]
    if "Last-Modified" in headers:
        with contextlib.suppress(TypeError, ValueError):  # an unparsable date is left out, as if not sent
            result["LastModified"] = parsedate_to_datetime(headers["Last-Modified"])
    algorithm = headers.get("x-amz-server-side-encryption-customer-algorithm")
    if algorithm:
        result["SSECustomerAlgorithm"] = algorithm
    return result


def _error_response(response: Any, body: bytes) -> dict[str, Any]:
    """botocore's error dict for an error answer: code and message from S3's XML body, else the status."""
    fields = dict(_ERROR_FIELD.findall(body.decode("utf-8", "replace")))
    return {"Error": {"Code": fields.get("Code") or str(response.status),
                      "Message": fields.get("Message") or response.reason or ""},
            "ResponseMetadata": {"HTTPStatusCode": response.status,
                                 "HTTPHeaders": {name.lower(): value for name, value in response.headers.items()}}}
