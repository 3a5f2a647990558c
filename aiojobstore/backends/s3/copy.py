"""Copies: server-side (CopyObject, UploadPartCopy above 5 GiB) with a fresh write token as one commit, a stream
through the client for a source without a recorded CRC32C, and presigned URLs.
"""

from __future__ import annotations

import time
from typing import Any

from ...commit import META_WRITE_TOKEN, new_write_token
from ...errors import JobStoreError, TransferError
from ...transfer import MiB, Part, plan_parts, run_parts
from ..base import META_CRC32C, META_KEY_SHA256, ObjectInfo, user_metadata, validate_key
from .client import _error_code, _quoted
from .conditional import MAX_COPY_OBJECT, _Previous
from .upload import S3Uploads, _MultipartUpload

#: Longest a SigV4 presigned URL may last (AWS refuses longer ones when they are used).
_MAX_PRESIGN_EXPIRES = 7 * 24 * 3600


class S3Copies(S3Uploads):
    """Server-side copies (CopyObject, UploadPartCopy) and presigned URLs."""

    async def copy(self, src: str, dst: str, *, metadata: dict[str, str] | None = None) -> ObjectInfo:
        validate_key(src)
        validate_key(dst)
        info, sse = await self._head_source(src)
        return await self._server_copy(self.bucket, self._full(src), info, sse, dst, metadata)

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
