"""Reads: ranged GETs of one pinned generation, whole reads, the read-ahead stream and parallel downloads.

* ``download_file`` fetches byte ranges of one pinned generation in parallel, ``os.pwrite``-ing them (in worker
  threads) into a temporary file next to the target, checks the CRC32C and renames it into place.
* ``open_reader`` reads ahead a few ranges at a time and resumes a broken range from the byte it reached. Each
  range read ahead holds its bytes of the store's memory budget until the reader has moved past it.

Integrity: every whole-object read is checked against the CRC32C GCS reports and against ``ajs-crc32c``; a
mismatch is retried once, then raises :class:`IntegrityError`. With ``require_checksum`` (set by the job store)
every read of an object without ``ajs-crc32c`` raises :class:`IntegrityError`: it was not written through
aiojobstore. An object replaced while it is read is read again in its new version.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from os import PathLike
from typing import Any

import aiohttp
import anyio

from ...errors import IntegrityError, NoSuchFileError, TransferError
from ...streams import AsyncReader, ChunkReader
from ...transfer import (
    MemoryBudget,
    MiB,
    Part,
    Progress,
    ProgressCallback,
    RangeSink,
    TransferShare,
    byte_ranges,
    clamp_range,
    crc32c_async,
    crc32c_from_b64,
    download_ranges,
    with_retries,
)
from ..base import META_CRC32C, ObjectInfo
from .client import RETRY_STATUS, GCSClient, HTTPStatusError, RetryableStatus, ShortRead, is_retryable, log

_READ_AHEAD_CHUNK = 8 * MiB
_READ_AHEAD_DEPTH = 3
_WRITE_SLICE = 4 * MiB


class _ReadAhead:
    """Fetches ``ranges`` in order, at most ``depth`` ahead of the reader, each holding its bytes of ``budget``
    until the reader asks for the next one. The task group is entered and left by hand (as PartWindow does) so
    that an error raised by the code using the reader reaches it as itself, not wrapped in an ExceptionGroup."""

    def __init__(self, fetch: Callable[[Part], Awaitable[bytes]], ranges: list[Part], depth: int,
                 budget: MemoryBudget) -> None:
        self._fetch = fetch
        self._ranges = ranges
        self._results: dict[int, bytes] = {}
        self._events = {r.number: anyio.Event() for r in ranges}
        self._errors: list[BaseException] = []
        self._slots = anyio.Semaphore(depth)
        self._budget = budget
        self._held: dict[int, int] = {}
        self._group = anyio.create_task_group()

    async def __aenter__(self) -> _ReadAhead:
        await self._group.__aenter__()
        self._group.start_soon(self._feed)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._group.cancel_scope.cancel()
        try:
            await self._group.__aexit__(None, None, None)
        finally:
            for number in list(self._held):
                self._give_back(number)

    def _give_back(self, number: int) -> None:
        self._budget.release(self._held.pop(number, 0))

    async def _fetch_one(self, part: Part) -> None:
        try:
            self._results[part.number] = await self._fetch(part)
        except Exception as error:
            self._errors.append(error)
        finally:
            self._events[part.number].set()

    async def _feed(self) -> None:
        for part in self._ranges:
            await self._slots.acquire()
            if self._errors:
                return
            await self._budget.acquire(part.length)  # a range read ahead holds its bytes of the budget
            self._held[part.number] = part.length
            self._group.start_soon(self._fetch_one, part)

    async def chunks(self, check: Callable[[int], Awaitable[None]] | None = None) -> AsyncIterator[bytes]:
        """The ranges' bytes in order; ``check(crc32c of everything)`` at the end, when given."""
        running = 0
        for part in self._ranges:
            await self._events[part.number].wait()
            if self._errors:
                raise self._errors[0]
            data = self._results.pop(part.number)
            self._slots.release()
            if check is not None:
                running = await crc32c_async(data, running)
            yield data
            self._give_back(part.number)  # the reader asks for more: it is done with this range
        if check is not None:
            await check(running)


class GCSReads(GCSClient):
    """Every read of object bytes."""

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
        key = self._key_of(name)

        async def attempt() -> None:
            if position[0] >= end:
                return
            headers = {**(await self._auth_headers()), **headers_base, "Range": f"bytes={position[0]}-{end - 1}"}
            async with self.limits.requests, session.get(self._object_url(name), params=params,
                                                         headers=headers) as response:
                if response.status not in (200, 206):
                    text = await response.text()
                    if response.status in RETRY_STATUS:
                        raise RetryableStatus(response.status, text)
                    raise HTTPStatusError(response.status, text)
                await self._receive(response, name, position, end, got, sink)

        try:
            await with_retries(attempt, policy=self.retry_policy, is_retryable=is_retryable, what=f"read {name}")
        except HTTPStatusError as error:
            raise self._error(error.status, error.text, f"read {key}", key) from None
        except (RetryableStatus, ShortRead, aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as error:
            raise TransferError(f"reading {key!r} failed after retries: {error!r}") from error
        return got

    async def _receive(self, response: aiohttp.ClientResponse, name: str, position: list[int], end: int,
                       got: list[bytes], sink: RangeSink | None) -> None:
        """Take a ranged body up to ``end`` into ``got`` (or ``sink``), moving ``position[0]`` past every byte
        kept; :class:`ShortRead` if the body ends early."""
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
            raise ShortRead(f"{name}: body ended at byte {position[0]} of {end}")

    def _expected_crcs(self, resource: dict[str, Any]) -> list[int]:
        expected = []
        if resource.get("crc32c"):
            expected.append(crc32c_from_b64(resource["crc32c"]))
        ours = (resource.get("metadata") or {}).get(META_CRC32C)
        if ours:
            expected.append(crc32c_from_b64(ours))
        return expected

    def _crc_matches(self, resource: dict[str, Any], crc: int) -> bool:
        return all(crc == want for want in self._expected_crcs(resource))

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
            if not (lo == 0 and hi == size) or self._crc_matches(resource, await crc32c_async(data)):
                return data, self._info(resource)
            resource = await self._after_bad_read(key, name, resource, tries, mismatch=True)

    @asynccontextmanager
    async def open_reader(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[AsyncReader]:
        name, resource = await self._stat_for_read(key)
        size = int(resource.get("size") or 0)
        lo, hi = clamp_range(start, end, size)
        chunk = max(MiB, min(self.transfer.part_size, _READ_AHEAD_CHUNK))
        depth = max(1, min(_READ_AHEAD_DEPTH, self.transfer.max_concurrency))

        async def fetch(part: Part) -> bytes:
            return b"".join(await self._fetch_range(name, resource, part.offset, part.end))

        async def check(crc: int) -> None:
            if not self._crc_matches(resource, crc):
                raise IntegrityError(f"{key!r}: the bytes read do not match the CRC32C recorded for the object; "
                                     "it is corrupt in the store")

        async with _ReadAhead(fetch, byte_ranges(lo, hi, chunk), depth, self.limits.memory) as ahead:
            reader = ChunkReader(ahead.chunks(check if lo == 0 and hi == size else None), size=hi - lo)
            try:
                yield reader
            finally:
                with anyio.CancelScope(shield=True):
                    await reader.aclose()

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
            return self._crc_matches(resource, crc)

        return await download_ranges(target, size, fetch, config=self.transfer,
                                     part_size=max(MiB, self.transfer.part_size), share=share, report=report,
                                     verify=verify)
