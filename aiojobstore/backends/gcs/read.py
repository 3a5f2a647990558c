"""Reads: ranged GETs of one pinned generation, whole reads, the read-ahead stream and parallel downloads.

* ``download_file`` fetches byte ranges of one pinned generation in parallel, ``os.pwrite``-ing them (in worker
  threads) into a temporary file next to the target, checks the CRC32C and renames it into place.
* ``open_reader`` reads ahead a few ranges at a time and resumes a broken range from the byte it reached. Each
  range read ahead holds its bytes of the store's memory budget until the reader has moved past it.

GCS supplies the ranged GET of a pinned generation (:meth:`GCSReads._source`, a
:class:`~aiojobstore.transfer.download.RangeSource`); the engine's reader (:mod:`aiojobstore.transfer.reader`),
downloads and verify-and-retry (:mod:`aiojobstore.transfer.verify`) do the rest.

Integrity: every whole-object read is checked against the CRC32C GCS reports and against ``ajs-crc32c``; a
mismatch is retried once, then raises :class:`IntegrityError`. With ``require_checksum`` (set by the job store)
every read of an object without ``ajs-crc32c`` raises :class:`IntegrityError`: it was not written through
aiojobstore. An object replaced while it is read is read again in its new version.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from os import PathLike
from typing import Any

import aiohttp

from ...errors import JobStoreError, NoSuchFileError, TransferError
from ...streams import AsyncReader
from ...transfer import (
    DownloadRange,
    MiB,
    Part,
    Progress,
    ProgressCallback,
    RangeSink,
    TransferShare,
    clamp_range,
    crc32c_async,
    crc32c_from_b64,
    download_ranges,
)
from ...transfer.download import WRITE_GROUP, RangeSource, ReadPiece
from ...transfer.reader import open_range_reader
from ...transfer.verify import ReplacedWhileReading, verify_and_retry
from ..base import META_CRC32C, ObjectInfo
from .client import RETRY_STATUS, GCSClient, HTTPStatusError, RetryableStatus, is_retryable

_READ_AHEAD_CHUNK = 8 * MiB
_READ_AHEAD_DEPTH = 3


class GCSReads(GCSClient):
    """Every read of object bytes."""

    def _read_headers(self, resource: dict[str, Any]) -> dict[str, str]:
        return self._key_headers(True) if self._is_encrypted(resource) and self.sse_key is not None else {}

    def _source(self, name: str, resource: dict[str, Any]) -> RangeSource:
        """Ranged GETs of one pinned generation of ``name``, for the engine's reader, downloads and reads. A 404
        of the generation means it was replaced (or deleted) while it was read: ``ReplacedWhileReading``, and a
        read through :func:`verify_and_retry` stats the object again."""
        params = {"alt": "media", "generation": str(resource["generation"])}
        headers_base = self._read_headers(resource)
        session = self._session_now()
        key = self._key_of(name)

        @asynccontextmanager
        async def open_range(start: int, end: int) -> AsyncIterator[ReadPiece]:
            headers = {**(await self._auth_headers()), **headers_base, "Range": f"bytes={start}-{end - 1}"}
            async with self.limits.requests, session.get(self._object_url(name), params=params,
                                                         headers=headers) as response:
                if response.status not in (200, 206):
                    text = await response.text()
                    if response.status in RETRY_STATUS:
                        raise RetryableStatus(response.status, text)
                    raise HTTPStatusError(response.status, text)
                yield _piece_reader(response)

        def translate(error: BaseException) -> BaseException:
            if isinstance(error, HTTPStatusError):
                if error.status == 404 and "bucket does not exist" not in error.text.lower():
                    return ReplacedWhileReading(f"{key!r}: generation {params['generation']} was replaced while "
                                                "it was being read; read it again")
                return self._error(error.status, error.text, f"read {key}", key)
            if isinstance(error, JobStoreError):
                return error
            return TransferError(f"reading {key!r} failed after retries: {error!r}")

        return RangeSource(open_range, self.retry_policy, is_retryable, translate, what=f"GCS GET {name}")

    async def _fetch_range(self, name: str, resource: dict[str, Any], start: int, end: int,
                           sink: RangeSink | None = None) -> list[bytes]:
        """The ranged read of one generation: bytes ``[start, end)`` (a broken body resumes from the byte it
        reached). With ``sink``, the pieces go to ``sink(offset, pieces)`` in groups of about 4 MiB instead of
        being returned. ``ReplacedWhileReading`` when the generation was replaced, ``NoSuchFileError`` when the
        object was deleted."""
        source = self._source(name, resource)
        try:
            if sink is None:
                return await source.read(start, end)
            await source.stream(start, end, sink, group=WRITE_GROUP)
            return []
        except ReplacedWhileReading:
            if await self._resource(name) is None:  # not replaced but deleted
                raise NoSuchFileError(self._key_of(name)) from None
            raise

    def _expected_crcs(self, resource: dict[str, Any]) -> list[int]:
        expected = []
        if resource.get("crc32c"):
            expected.append(crc32c_from_b64(resource["crc32c"]))
        ours = (resource.get("metadata") or {}).get(META_CRC32C)
        if ours:
            expected.append(crc32c_from_b64(ours))
        return expected

    async def _crc_matches(self, name: str, resource: dict[str, Any], crc: int) -> bool:
        """Whether ``crc`` is the CRC32C recorded for ``resource``. A mismatch because the object was replaced
        meanwhile (a server that ignores the pinned generation, as the emulator does) raises
        ``ReplacedWhileReading``: it is read again, not counted as an integrity failure."""
        if all(crc == want for want in self._expected_crcs(resource)):
            return True
        fresh = await self._resource(name)
        if fresh is not None and str(fresh.get("generation")) != str(resource.get("generation")):
            raise ReplacedWhileReading(f"{self._key_of(name)!r} was replaced while it was being read; read it again")
        return False

    async def _stat_for_read(self, key: str) -> tuple[str, dict[str, Any]]:
        name = self._name(key)
        resource = await self._resource(name)
        if resource is None:
            raise NoSuchFileError(key)
        self._check_readable(key, resource)
        return name, resource

    async def get_object(self, key: str, *, start: int = 0, end: int | None = None) -> tuple[bytes, ObjectInfo]:
        async def attempt() -> tuple[bool, tuple[bytes, ObjectInfo]]:
            name, resource = await self._stat_for_read(key)
            size = int(resource.get("size") or 0)
            lo, hi = clamp_range(start, end, size)
            data = b"".join(await self._fetch_range(name, resource, lo, hi)) if hi > lo else b""
            whole = (lo, hi) == (0, size)
            matched = not whole or await self._crc_matches(name, resource, await crc32c_async(data))
            return matched, (data, self._info(resource))

        return await verify_and_retry(attempt, what=repr(key))

    @asynccontextmanager
    async def open_reader(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[AsyncReader]:
        name, resource = await self._stat_for_read(key)
        size = int(resource.get("size") or 0)
        lo, hi = clamp_range(start, end, size)

        async def read_range(first: int, last: int) -> list[bytes]:
            return await self._fetch_range(name, resource, first, last)

        async def verify(crc: int) -> bool:
            return await self._crc_matches(name, resource, crc)

        async with open_range_reader(read_range, lo, hi,
                                     range_size=max(MiB, min(self.transfer.part_size, _READ_AHEAD_CHUNK)),
                                     depth=min(_READ_AHEAD_DEPTH, self.transfer.max_concurrency),
                                     budget=self.limits.memory, verify=verify if (lo, hi) == (0, size) else None,
                                     what=repr(key)) as reader:
            yield reader

    async def download_file(self, key: str, path: str | PathLike[str], *,
                            progress: ProgressCallback | None = None) -> ObjectInfo:
        target = os.path.abspath(os.fspath(path))
        # Joined before any await, so that downloads started together count each other.
        with self.limits.downloads.joined() as share:
            async def attempt() -> tuple[bool, ObjectInfo]:
                name, resource = await self._stat_for_read(key)
                return await self._download_once(name, resource, target, progress, share), self._info(resource)

            return await verify_and_retry(attempt, what=repr(key))

    async def _download_once(self, name: str, resource: dict[str, Any], target: str,
                             progress: ProgressCallback | None, share: TransferShare) -> bool:
        """Fetch one generation with parallel ranged GETs (sized and windowed by the store's ``share``) into a
        temp file beside ``target``, renamed onto it when its CRC32C matches; returns whether it did. Progress is
        reported per slice received, from zero for each attempt."""
        size = int(resource.get("size") or 0)

        async def fetch(part: Part, rng: DownloadRange) -> None:
            await self._fetch_range(name, resource, rng.position, part.end, rng)

        async def verify(crc: int) -> bool:
            return await self._crc_matches(name, resource, crc)

        return await download_ranges(target, size, fetch, config=self.transfer,
                                     part_size=max(MiB, self.transfer.part_size), share=share,
                                     report=Progress(progress, size), verify=verify)


def _piece_reader(response: aiohttp.ClientResponse) -> ReadPiece:
    """``read(limit)`` over a response body: the data buffered so far, as received (``b""`` at its end)."""
    async def read(_limit: int) -> bytes:
        return await response.content.readany()

    return read
