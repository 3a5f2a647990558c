"""Uploads: the one-request multipart upload and temporary part objects.

* Objects up to one part (``transfer.part_size``) go up as one multipart (metadata + media) upload carrying their
  CRC32C, which GCS checks on arrival.
* Larger files and write streams go up as **temporary part objects** (``<root>.ajs-tmp/<id>/<n>``) uploaded in a
  sliding window (:class:`~aiojobstore.transfer.PartWindow`; for streams the engine's
  :func:`~aiojobstore.transfer.writer.open_part_writer` over
  :class:`~aiojobstore.backends.gcs.compose.GCSStreamTarget`) and joined with ``compose``
  (:mod:`~aiojobstore.backends.gcs.compose`). Parts are plain media uploads (no metadata, so no multipart framing)
  whose CRC32C as stored by GCS is checked against ours.

Memory: write streams hold at most ``max_concurrency + 1`` parts of the store's ``max_memory`` (the engine's
part buffers).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from os import PathLike
from typing import TYPE_CHECKING, Any

from ...commit import META_WRITE_TOKEN
from ...errors import IntegrityError
from ...streams import Buffer
from ...transfer import (
    PartProgress,
    crc32c_from_b64,
    crc32c_to_b64,
    iter_buffer_slices,
    iter_file_slices,
)
from ..base import META_CRC32C
from .client import CONTENT_TYPE, GCSClient, log

if TYPE_CHECKING:
    FileRange = tuple[str | PathLike[str], int, int]


class GCSUploads(GCSClient):
    """The upload requests."""

    async def _upload_simple(self, name: str, data: bytes | None, *, crc: int, metadata: dict[str, str] | None,
                             encrypted: bool, params: dict[str, str] | None = None, key: str | None = None,
                             file_range: FileRange | None = None, progress: PartProgress | None = None,
                             write_token: str | None = None) -> dict[str, Any]:
        """One multipart (metadata + media) upload; the body is ``data`` or streamed from ``file_range``, whose
        slices are reported to ``progress`` as they go out (the caller calls its ``finish``). The object records
        its CRC32C in ``ajs-crc32c`` (and ``write_token``, if given, in ``ajs-write-token``)."""
        metadata = {**(metadata or {}), META_CRC32C: crc32c_to_b64(crc)}
        if write_token is not None:
            metadata[META_WRITE_TOKEN] = write_token
        resource: dict[str, Any] = {"name": name, "contentType": CONTENT_TYPE, "crc32c": crc32c_to_b64(crc),
                                    "metadata": metadata}
        boundary = "ajs" + uuid.uuid4().hex
        head = (f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json.dumps(resource)}\r\n"
                f"--{boundary}\r\nContent-Type: {CONTENT_TYPE}\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        length = len(data) if data is not None else file_range[2]  # type: ignore[index]
        headers = {"Content-Type": f"multipart/related; boundary={boundary}",
                   "Content-Length": str(len(head) + length + len(tail)), **self._key_headers(encrypted)}

        def body() -> Any:
            if data is not None:
                return head + data + tail

            async def stream() -> AsyncIterator[bytes | memoryview]:
                yield head
                path, offset, size = file_range  # type: ignore[misc]
                async for piece in _reported(iter_file_slices(path, offset, size, self.transfer.io_slice_size),
                                             progress):
                    yield piece
                yield tail

            return stream()

        query = {"uploadType": "multipart", **(params or {})}
        _, resource_out, _ = await self._request("POST", self._upload_url(), what=f"upload {name}", key=key or name,
                                                 params=query, headers=headers, body=body, target=name,
                                                 write_token=write_token)
        return resource_out or {}

    async def _upload_part(self, name: str, data: Buffer | None, *, crc: int, encrypted: bool,
                           file_range: FileRange | None = None, progress: PartProgress | None = None) -> None:
        """Upload one temporary part as a plain media upload (no metadata, so no multipart framing); the CRC32C
        GCS reports must match ours, else the part is sent once more, then ``IntegrityError``. Its slices are
        reported to ``progress`` as they go out (an attempt sent again takes back what the last one reported)."""
        length = len(data) if data is not None else file_range[2]  # type: ignore[index]
        headers = {"Content-Type": CONTENT_TYPE, "Content-Length": str(length),
                   "x-goog-hash": f"crc32c={crc32c_to_b64(crc)}", **self._key_headers(encrypted)}

        def body() -> Any:
            if data is not None:
                return _reported(iter_buffer_slices(data, self.transfer.io_slice_size), progress)
            path, offset, size = file_range  # type: ignore[misc]
            return _reported(iter_file_slices(path, offset, size, self.transfer.io_slice_size), progress)

        for attempt in (1, 2):
            _, resource, _ = await self._request("POST", self._upload_url(), what=f"upload part {name}",
                                                 params={"uploadType": "media", "name": name}, headers=headers,
                                                 body=body)
            reported = (resource or {}).get("crc32c")
            if not reported or crc32c_from_b64(reported) == crc:
                break
            if attempt == 2:
                raise IntegrityError(f"part {name}: GCS stored bytes whose CRC32C differs from what was sent (twice)")
            log.warning("CRC32C mismatch on part %s; sending it again", name)
        if progress is not None:
            await progress.finish(length)


async def _reported(slices: AsyncIterator[bytes] | AsyncIterator[memoryview],
                    progress: PartProgress | None) -> AsyncIterator[bytes | memoryview]:
    """A request body's ``slices``, each reported to ``progress`` once the client has taken it; a new attempt
    (a new body) first takes back what an earlier one reported."""
    if progress is not None:
        await progress.restart()
    async for piece in slices:
        yield piece
        if progress is not None:
            await progress.advance(len(piece))
