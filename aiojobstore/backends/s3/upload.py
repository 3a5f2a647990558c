"""Uploads: PutObject (bodies as async iterables of slices), multipart uploads of files and of write streams, and
the checksum a stream records by a copy onto itself.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from os import PathLike
from typing import Any

import anyio

from ...commit import META_WRITE_TOKEN, commit_or_roll_back, new_write_token, run_uncancelled
from ...errors import ConcurrentModificationError, JobStoreError, NoSuchFileError, TransferError
from ...streams import AsyncWriter, Buffer
from ...transfer import (
    CHECKSUM_THREADS,
    MiB,
    Part,
    PartProgress,
    PartWindow,
    Progress,
    ProgressCallback,
    TransferShare,
    choose_part_size,
    combine_part_crcs,
    crc32c,
    crc32c_async,
    crc32c_to_b64,
    iter_buffer_slices,
    plan_parts,
    run_parts,
    unlink_quietly,
)
from ...transfer.writer import open_part_writer
from ..base import META_CRC32C, META_KEY_SHA256, ObjectInfo, user_metadata, validate_key
from .client import _ChangedWhileReading, _error_code, _quoted, log
from .conditional import S3Conditional, _Previous

#: A multipart upload's part body: made anew for each attempt, reporting its slices to the progress given.
PartBody = Callable[[Part, PartProgress | None], Any]

#: Rounds of "create, else capture and replace" an unconditional put tries against other writers.
_MAX_OVERWRITE_TRIES = 8


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


class S3Uploads(S3Conditional):
    """PutObject, multipart uploads, file uploads and write streams."""

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


class _MultipartUpload:
    """One multipart upload: start, parts (with retries), complete (optionally conditional), abort.

    The upload carries the object's metadata, with this call's write token, from CreateMultipartUpload on. A
    create whose answer was lost is retried; the uploads an earlier attempt created meanwhile are found with
    ListMultipartUploads (pending on the key now, not before the create) and aborted. The create runs to completion
    whatever cancellation arrives, and what it created is aborted if the caller was cancelled."""

    def __init__(self, backend: S3Uploads, key: str, meta: dict[str, str], encrypted: bool, *,
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

    def __init__(self, backend: S3Uploads, key: str, metadata: dict[str, str] | None, if_absent: bool,
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
