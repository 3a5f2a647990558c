"""S3 backend on aiobotocore: AWS, MinIO, Ceph RGW and any S3-compatible endpoint.

How data moves:

- One aiobotocore client per backend, created lazily inside the running event loop on first use; its connection
  pool is sized to ``max_requests`` (the default pool of 10 would silently cap parallelism). botocore's own retries
  are off (one attempt): every request is retried here, per request, with :class:`RetryPolicy`.
- The hot small requests (PutObject with a ``bytes`` body up to 1 MiB, GetObject, HeadObject, DeleteObject)
  and the bodies of PutObject and UploadPart (file ranges and buffers) skip botocore:
  :mod:`aiojobstore.backends.s3.direct` sends them on :mod:`aiojobstore.leanhttp`'s raw connections, SigV4-signed,
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

Where things are:

* :mod:`.client` — state, the aiobotocore client and the direct requests, requests with retries, error
  translation, HEADs with the SSE-C retry;
* :mod:`.direct` — the direct small requests and part bodies, SigV4-signed on :mod:`aiojobstore.leanhttp`;
* :mod:`.conditional` — the conditions probe, condition headers, write tokens, commits and their roll-back
  (backups);
* :mod:`.upload` — PutObject, multipart uploads, ``upload_file``, write streams;
* :mod:`.read` — whole and ranged reads, read streams, downloads (the ranged receive);
* :mod:`.copy` — server-side copies and presigned URLs;
* :mod:`.container` — bucket, marker, destroy, reclaim, close, stat, deletes, listings;
* here — :class:`S3Backend`, which puts them together, and :func:`from_locator`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...transfer import TransferConfig
from ..base import META_CRC32C, Backend, ObjectInfo, reject_unknown_options, validate_key
from .client import CONDITIONAL_WRITES, S3Client
from .conditional import _BACKUP_PREFIX, MAX_COPY_OBJECT
from .container import CREATED_BUCKET_MARKER, S3Container
from .copy import S3Copies

if TYPE_CHECKING:
    from ...locator import Locator


class S3Backend(S3Copies, S3Container):
    """Objects in an S3 bucket under a key prefix (``s3://bucket/prefix`` or ``aws:REGION:BUCKET``)."""

    scheme = "s3"

    async def copy_from(self, source: Backend, src_key: str, dst_key: str) -> ObjectInfo | None:
        """Server-side copy from another S3 store on the same endpoint (any bucket); ``None`` when impossible
        (also for a source without a recorded CRC32C: the caller streams it, and the stream records one)."""
        if not isinstance(source, S3Backend) or source.endpoint_url != self.endpoint_url:
            return None
        validate_key(src_key)
        validate_key(dst_key)
        info, sse = await source._head_source(src_key)
        if sse and source.sse_key != self.sse_key:
            return None  # the destination could not re-encrypt with the source's key
        if META_CRC32C not in info.metadata:
            return None
        return await self._server_copy(source.bucket, source._full(src_key), info, sse, dst_key, None)


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
    GetObject, HeadObject and DeleteObject requests are sent by :mod:`aiojobstore.backends.s3.direct` (SigV4 on
    aiohttp) instead of botocore, which costs several times the client CPU per request (``False``: botocore)."""
    reject_unknown_options("S3", rest, ["sse_key", *_OPTION_NAMES])
    return S3Backend(locator.bucket, locator.prefix, transfer=transfer, sse_key=sse_key, endpoint_url=endpoint_url,
                     region_name=region_name or locator.region, aws_access_key_id=aws_access_key_id,
                     aws_secret_access_key=aws_secret_access_key, aws_session_token=aws_session_token,
                     profile_name=profile_name, conditional_writes=conditional_writes,
                     direct_receive=direct_receive, direct_requests=direct_requests)


__all__ = [
    "CONDITIONAL_WRITES",
    "CREATED_BUCKET_MARKER",
    "MAX_COPY_OBJECT",
    "_BACKUP_PREFIX",
    "S3Backend",
    "S3Client",
    "from_locator",
]
