"""Google Cloud Storage backend: the JSON API over one aiohttp session per store.

Locators: ``gs://bucket/prefix`` and ``google:PROJECT:BUCKET``.

Where things are:

* :mod:`.client` — state, credentials, names and URLs, requests with retries, error translation, the
  recognition of a lost answer by its write token, emulator notes;
* :mod:`.upload` — the one-request upload, temporary part uploads;
* :mod:`.compose` — joining parts with ``compose`` (and why parts are composed, not sent as a resumable upload),
  and the write stream's service side (:class:`GCSStreamTarget`, a ``PartTarget`` of the transfer engine);
* :mod:`.copy` — server-side copies (``rewriteTo``) and signed URLs;
* :mod:`.conditional` — generations as preconditions, the commit of every write and its roll-back (backups);
* :mod:`.read` — ranged reads of a pinned generation, verify-and-retry, the read-ahead stream, downloads;
* :mod:`.container` — bucket, store marker, destroy, reclaim, close;
* here — :class:`GCSBackend`, which puts them together into the :class:`~aiojobstore.backends.base.Backend`
  operations, and :func:`from_locator`.

Integrity: every object this backend makes visible records its CRC32C in ``ajs-crc32c`` (simple and streamed
uploads, composed objects, copies; a copy of a foreign object gets the CRC32C GCS reports for it), and every
whole-object read checks it (:mod:`.read`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from os import PathLike
from typing import TYPE_CHECKING, Any

import anyio

from ...errors import InvalidKeyError, NoSuchFileError
from ...streams import AsyncWriter
from ...transfer import (
    Part,
    PartProgress,
    Progress,
    ProgressCallback,
    RetryPolicy,
    TransferConfig,
    TransferShare,
    plan_parts,
    run_parts,
)
from ...transfer.writer import open_part_writer
from ..base import META_KEY_SHA256, Backend, CommonPrefix, ObjectInfo, reject_unknown_options, user_metadata
from .client import GCS_API_ROOT, emulator_host_from_env, normalise_host
from .compose import GCSCompose, GCSStreamTarget
from .container import GCSContainer
from .read import GCSReads

if TYPE_CHECKING:
    from ...locator import Locator


class GCSBackend(GCSCompose, GCSReads, GCSContainer):
    """Objects in a GCS bucket under a prefix. No I/O until a method is awaited."""

    scheme = "gs"

    def __init__(self, bucket: str, prefix: str = "", *, transfer: TransferConfig | None = None,
                 sse_key: bytes | str | None = None, project: str | None = None, service_file: str | None = None,
                 emulator_host: str | None = None, request_timeout: float = 300.0) -> None:
        super().__init__(transfer=transfer, sse_key=sse_key)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root = f"{self.prefix}/" if self.prefix else ""
        emulator_host = emulator_host or emulator_host_from_env()
        self.emulated = emulator_host is not None
        self.api_root = normalise_host(emulator_host) if emulator_host else GCS_API_ROOT
        self.project = project
        self.service_file = service_file or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") or None
        self.request_timeout = request_timeout
        self.retry_policy = RetryPolicy.from_config(self.transfer)
        self._session = None
        self._token = None
        self._storage = None
        self._closed = False
        self._background = set()

    # ------------------------------------------------------------------ writes

    async def put_bytes(self, key: str, data: bytes, *, metadata: dict[str, str] | None = None,
                        if_absent: bool = False, if_match: str | None = None, encrypted: bool = False) -> ObjectInfo:
        return self._info(await self._put(key, data, metadata=metadata, if_absent=if_absent, if_match=if_match,
                                          encrypted=encrypted))

    async def update_object(self, key: str, edit: Callable[[bytes], bytes], *,
                            metadata: dict[str, str] | None = None) -> ObjectInfo:
        """As :meth:`Backend.update_object` (keeps the user metadata and the encryption); the previous bytes are
        in hand, so a roll-back re-uploads them instead of backing the object up first."""
        data, info = await self.get_object(key)
        encrypted = META_KEY_SHA256 in info.metadata
        kept = user_metadata(info.metadata)
        previous = (data, {**kept, **self.encryption_metadata(encrypted)}, encrypted)
        resource = await self._put(key, edit(data), metadata=kept if metadata is None else metadata,
                                   if_match=info.etag, encrypted=encrypted, previous=previous)
        return self._info(resource)

    @asynccontextmanager
    async def open_writer(self, key: str, *, metadata: dict[str, str] | None = None, if_absent: bool = False,
                          encrypted: bool = False) -> AsyncIterator[AsyncWriter]:
        self.encryption_metadata(encrypted)  # fail before any data is written
        target = GCSStreamTarget(self, key, metadata, if_absent=if_absent, encrypted=encrypted)
        async with open_part_writer(target, budget=self.limits.memory, part_size=max(1, self.transfer.part_size),
                                    max_concurrency=self.transfer.max_concurrency) as writer:
            yield writer

    async def upload_file(self, path: str | PathLike[str], key: str, *, metadata: dict[str, str] | None = None,
                          encrypted: bool = False, progress: ProgressCallback | None = None) -> ObjectInfo:
        self.encryption_metadata(encrypted)  # fail before anything is read
        with self.limits.uploads.joined() as share:  # before any await, so uploads started together count each other
            try:
                size = (await anyio.Path(path).stat()).st_size
            except FileNotFoundError:
                raise NoSuchFileError(os.fspath(path), "the local file to upload does not exist") from None
            report = Progress(progress, size)
            parts = plan_parts(size, self.transfer.part_size, max_parts=self.transfer.max_parts,
                               min_part_size=self.transfer.min_part_size)
            if len(parts) == 1:
                return await self._upload_file_simple(path, key, size, metadata, encrypted, report)
            return await self._upload_file_parts(path, key, parts, metadata, encrypted, report, share)

    async def _upload_file_simple(self, path: str | PathLike[str], key: str, size: int,
                                  metadata: dict[str, str] | None, encrypted: bool, report: Progress) -> ObjectInfo:
        """A file of one part: one multipart upload streamed from the file, as the commit."""
        name = self._name(key)
        meta = {**(metadata or {}), **self.encryption_metadata(encrypted)}
        crc = await self.limits.file_crc32c(path, 0, size)

        progress = PartProgress(report)

        async def write(params: dict[str, str], token: str | None) -> dict[str, Any]:
            return await self._upload_simple(name, None, crc=crc, metadata=meta, encrypted=encrypted, key=key,
                                             file_range=(path, 0, size), params=params, write_token=token,
                                             progress=progress)

        async def after(resource: dict[str, Any]) -> None:
            await progress.finish(size)  # in the commit: a callback that failed (per slice) undoes the write

        return self._info(await self._commit(key, name, write, after=after))

    async def _upload_file_parts(self, path: str | PathLike[str], key: str, parts: list[Part],
                                 metadata: dict[str, str] | None, encrypted: bool, report: Progress,
                                 share: TransferShare) -> ObjectInfo:
        """A larger file: temporary parts in a sliding window (sized by the store's upload ``share``), composed."""
        upload_id = uuid.uuid4().hex
        names = [self._tmp_name(upload_id, f"p{p.number:06d}") for p in parts]
        created = list(names)
        committed = False
        try:
            async def one(part: Part) -> tuple[str, int, int]:
                crc = await self.limits.file_crc32c(path, part.offset, part.length)
                await self._upload_part(names[part.number - 1], None, crc=crc, encrypted=encrypted,
                                        file_range=(path, part.offset, part.length), progress=PartProgress(report))
                return names[part.number - 1], crc, part.length

            uploaded = await run_parts(parts, one, max_concurrency=self.transfer.max_concurrency, share=share.window)
            info = await self._commit_composed(key, self._name(key), uploaded, upload_id, created,
                                               metadata=metadata, encrypted=encrypted, if_absent=False)
            committed = True  # the commit deleted the temporary parts itself
        finally:
            if not committed:
                await self._cleanup(upload_id, created)
        return info

    # ------------------------------------------------------------------ metadata operations

    async def stat(self, key: str) -> ObjectInfo | None:
        resource = await self._resource(self._name(key))
        return None if resource is None else self._info(resource)

    async def delete(self, key: str) -> None:
        name = self._name(key)
        await self._request("DELETE", self._object_url(name), what=f"delete {key}", ok=(200, 204), missing_ok=True)

    async def delete_many(self, keys: Iterable[str]) -> None:
        await self._delete_names([self._name(key) for key in keys])

    async def list(self, prefix: str = "", *, metadata: bool = True) -> AsyncIterator[ObjectInfo]:
        internal = self._internal_prefixes()
        async for resource in self._list_resources(self.root + prefix):
            if resource["name"].startswith(internal):
                continue
            yield self._info(resource)

    async def list_delimited(self, prefix: str = "", delimiter: str = "/") -> AsyncIterator[ObjectInfo | CommonPrefix]:
        """One level of the listing under ``prefix``, in key order: the objects whose key after ``prefix`` has no
        ``delimiter``, and a :class:`CommonPrefix` (ending with the delimiter) for each group of deeper keys.
        GCS groups them itself (the JSON API's ``delimiter`` and ``prefixes``); the backend's own objects
        (``.ajs-tmp/``, ``.ajs-container``) are left out. Raises ``InvalidKeyError`` for an empty delimiter."""
        if not delimiter:
            raise InvalidKeyError("list_delimited needs a non-empty delimiter (use list() for a flat listing)")
        internal = self._internal_prefixes()
        last_prefix: str | None = None
        params = {"prefix": self.root + prefix, "delimiter": delimiter}
        async for page in self._list_pages(params, f"list {self.root + prefix} by {delimiter!r}"):
            for entry in _merge_page(page):
                if isinstance(entry, str):
                    if entry.startswith(internal) or entry == last_prefix:
                        continue
                    last_prefix = entry  # a prefix that a page boundary splits is reported once
                    yield CommonPrefix(self._key_of(entry))
                elif not entry["name"].startswith(internal):
                    yield self._info(entry)

    # ------------------------------------------------------------------ copies

    async def _commit_rewrite(self, source: GCSBackend, src_key: str, src_name: str, resource: dict[str, Any],
                              dst_key: str, metadata: dict[str, str] | None) -> ObjectInfo:
        """A server-side copy of ``resource`` (from ``source``) onto ``dst_key`` as the commit (see :meth:`_commit`)."""
        dst_name = self._name(dst_key)
        encrypted = source._is_encrypted(resource)
        merged = self._copy_metadata(resource, metadata)

        async def write(params: dict[str, str], token: str | None) -> dict[str, Any]:
            return await self._rewrite(source.bucket, src_name, dst_name,
                                       source_headers=source._key_headers(encrypted, source=True),
                                       dest_headers=self._key_headers(encrypted), metadata=merged, key=src_key,
                                       params={"sourceGeneration": str(resource["generation"]), **params})

        return self._info(await self._commit(dst_key, dst_name, write))

    async def copy(self, src: str, dst: str, *, metadata: dict[str, str] | None = None) -> ObjectInfo:
        src_name, resource = await self._stat_for_read(src)
        return await self._commit_rewrite(self, src, src_name, resource, dst, metadata)

    async def copy_from(self, source: Backend, src_key: str, dst_key: str) -> ObjectInfo | None:
        """Server-side copy from another GCS store on the same endpoint; ``None`` when that is not possible
        (another kind of backend, another endpoint, or an object encrypted with a key this store lacks)."""
        if not isinstance(source, GCSBackend) or source.api_root != self.api_root:
            return None
        src_name, resource = await source._stat_for_read(src_key)
        if source._is_encrypted(resource) and source.sse_key != self.sse_key:
            return None
        return await self._commit_rewrite(source, src_key, src_name, resource, dst_key, None)


def _merge_page(page: dict[str, Any]) -> list[dict[str, Any] | str]:
    """A listing page's objects (resources) and common prefixes (names), merged into name order."""
    entries: list[dict[str, Any] | str] = [*(page.get("items") or []), *(page.get("prefixes") or [])]
    return sorted(entries, key=lambda entry: entry if isinstance(entry, str) else entry["name"])


def from_locator(locator: Locator, *, transfer: TransferConfig | None = None, sse_key: bytes | str | None = None,
                 project: str | None = None, service_file: str | None = None, emulator_host: str | None = None,
                 **rest: Any) -> GCSBackend:
    """Build a :class:`GCSBackend` from a parsed ``gs://`` / ``google:`` locator (no I/O)."""
    if transfer is None:
        transfer = TransferConfig.from_options(rest)
    request_timeout = rest.pop("request_timeout", 300.0)
    reject_unknown_options("GCS", rest, ["sse_key", "project", "service_file", "emulator_host", "request_timeout"])
    return GCSBackend(locator.bucket, locator.prefix, transfer=transfer, sse_key=sse_key,
                      project=project or locator.project, service_file=service_file, emulator_host=emulator_host,
                      request_timeout=request_timeout)


__all__ = ["GCSBackend", "from_locator"]
