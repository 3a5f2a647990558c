"""The bucket and the store's keys as a whole: create (with the created-bucket marker), exists, destroy, reclaim,
close; stat, deletes and listings (the reserved keys are never listed).
"""

from __future__ import annotations

import builtins
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from email.utils import parsedate_to_datetime
from typing import Any

import anyio

from ...errors import (
    BackendUnavailableError,
    EncryptionKeyError,
    InvalidOptionError,
    JobStoreError,
    NoSuchFileError,
    TransferError,
)
from ...transfer import Part, run_parts
from ..base import CommonPrefix, ObjectInfo, ReclaimReport, validate_key
from .client import S3Client, _error_code
from .conditional import _BACKUP_PREFIX, _PROBE_PREFIX

#: Marker object under the prefix: present when this store created the bucket (so ``destroy`` may remove it).
CREATED_BUCKET_MARKER = ".aiojobstore-created-bucket"

#: Reserved keys under the prefix, never listed: the marker, the probes (and the single probe key of versions
#: before 0.2, which processes shared), the backups.
_RESERVED_PREFIXES = (CREATED_BUCKET_MARKER, ".aiojobstore-conditional-probe", _BACKUP_PREFIX)


class S3Container(S3Client):
    """The bucket (create, exists, destroy), reclaim, close, and the metadata operations and listings."""

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


def _page_entries(page: dict[str, Any], root: int) -> builtins.list[ObjectInfo | CommonPrefix]:
    """The objects and common prefixes of one delimited ListObjectsV2 page, keys relative to the root (cut
    ``root`` characters), merged in the service's key order (UTF-8 bytes)."""
    objects = [S3Container._listed_info(e["Key"][root:], e) for e in page.get("Contents", [])]
    prefixes = [CommonPrefix(p["Prefix"][root:]) for p in page.get("CommonPrefixes", [])]
    return sorted([*objects, *prefixes], key=lambda entry: entry.key.encode("utf-8", "surrogatepass"))


def _server_time(response: dict[str, Any]) -> float:
    """The server's clock when it answered (its ``Date`` header), else this machine's."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    with contextlib.suppress(TypeError, ValueError):
        return parsedate_to_datetime(date).timestamp()
    return time.time()
