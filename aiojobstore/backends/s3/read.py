"""Reads: whole-object GETs and ranged GETs pinned to the ETag with ``If-Match`` (resumed after a dropped
connection), CRC32C verification with one retry, read streams, and downloads whose ranges are received by
:mod:`aiojobstore.rangeget` where it suits the endpoint.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from os import PathLike
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio

from ...errors import ConcurrentModificationError, EncryptionKeyError, IntegrityError, NoSuchFileError
from ...rangeget import RangeGetter, RangeRefused
from ...streams import AsyncReader
from ...transfer import (
    DownloadRange,
    MiB,
    Progress,
    ProgressCallback,
    TransferShare,
    choose_part_size,
    clamp_range,
    crc32c_async,
    crc32c_from_b64,
    download_ranges,
)
from ...transfer.download import RangeSource, Receive
from ...transfer.reader import open_range_reader
from ...transfer.verify import ReplacedWhileReading, verify_and_retry
from ..base import META_CRC32C, ObjectInfo, validate_key
from .client import S3Client, _behind_proxy, _is_retryable, _ssl_context, log
from .direct import sse_headers

_READ_RANGE = 8 * MiB

_READ_AHEAD = 4

#: Lifetime of the presigned URL of one ranged GET: it is sent at once, so this only bounds clock skew.
_RANGE_URL_EXPIRES = 900

#: A refusal with this status: the request could not be signed as the receiver sends it.
_UNSIGNABLE = -1

#: Refusals that say the receiver's request does not suit this endpoint (its signature, its protocol), so the
#: store stops using it; anything else (a 412, 404, 5xx) is the server's answer to a good request.
_RECEIVER_MISFITS = {_UNSIGNABLE, 0, 400, 401, 403, 405, 411, 501, 505}


class S3Reads(S3Client):
    """Ranged reads pinned to an ETag, whole-object reads verified and retried, read streams, downloads."""

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
