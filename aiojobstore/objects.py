"""The object-store layer: objects at keys you choose, on ``file:``, ``memory:``, S3 or GCS, with the job store's
transfer engine (parallel parts, bounded memory, CRC32C checks, atomic writes) and none of its layout.

>>> store = aiojobstore.open_object_store("s3://bucket/prefix", endpoint_url="http://127.0.0.1:9000")
>>> async with store:
...     await store.upload_file("results/x.bin", "run1/x.bin")
...     async for info in store.list("run1/"):
...         print(info.key, info.size)

Keys are ``/``-separated and relative to the store's root (a directory, or a bucket and prefix). Every write is
atomic: a reader sees the old object or the new, never a part, and a write that raises leaves the store as it was
(see :mod:`aiojobstore.commit`). :func:`copy` moves one object between any two locations.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlparse

from .backends.base import Backend, CommonPrefix, ObjectInfo
from .errors import InvalidLocatorError, InvalidOptionError, NoSuchFileError
from .locator import Locator, open_backend, parse_locator
from .streams import AsyncReader, AsyncWriter
from .transfer import ProgressCallback, TransferConfig

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import ObjectStoreOptions

_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class IfMatch:
    """A write that succeeds only if the stored object still has this ``etag`` (from :meth:`ObjectStore.stat`)."""

    etag: str


#: How a write treats an existing object: ``"overwrite"`` (default), ``"create"`` (fail with
#: ``ConcurrentModificationError`` if the key exists) or :class:`IfMatch` (fail unless it is that version).
PutMode = Literal["overwrite", "create"] | IfMatch


def _conditions(mode: PutMode) -> dict[str, Any]:
    if mode == "overwrite":
        return {}
    if mode == "create":
        return {"if_absent": True}
    if isinstance(mode, IfMatch):
        return {"if_match": mode.etag}
    raise InvalidOptionError(f"unknown write mode {mode!r}: use 'overwrite', 'create' or IfMatch(etag)")


class ObjectStore:
    """Objects under one root. Create with :func:`open_object_store`; no I/O happens until a method is awaited.
    Use it as ``async with store:`` (or call :meth:`close`) so connections are released."""

    def __init__(self, backend: Backend, *, url: str = "") -> None:
        self.backend = backend
        self.url = url or backend.describe()

    def __repr__(self) -> str:
        return f"<ObjectStore {self.url}>"

    async def __aenter__(self) -> ObjectStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Release connections and threads."""
        await self.backend.close()

    # ------------------------------------------------------------------------------------------- container

    async def create(self) -> bool:
        """Create the directory or bucket if it is missing; return whether this call created it."""
        return await self.backend.create()

    async def exists(self) -> bool:
        """Whether the directory or bucket exists."""
        return await self.backend.exists()

    # --------------------------------------------------------------------------------------------- objects

    async def put(self, key: str, data: bytes, *, metadata: dict[str, str] | None = None,
                  mode: PutMode = "overwrite") -> ObjectInfo:
        """Store ``data`` at ``key`` atomically. ``mode``: see :data:`PutMode` (``ConcurrentModificationError``
        when its condition fails, ``InvalidKeyError`` for a key this store cannot hold)."""
        return await self.backend.put_bytes(key, bytes(data), metadata=metadata, **_conditions(mode))

    async def get(self, key: str, *, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of an object (the whole object by default; a whole read is verified against its
        CRC32C where it has one). Raises ``NoSuchFileError``."""
        return await self.backend.get_bytes(key, start=start, end=end)

    async def upload_file(self, path: str | os.PathLike[str], key: str, *, metadata: dict[str, str] | None = None,
                          progress: ProgressCallback | None = None) -> ObjectInfo:
        """Store a local file at ``key`` (in parallel parts where the backend can); ``progress(done, total)`` is
        called as bytes go out. Replaces ``key`` atomically."""
        return await self.backend.upload_file(path, key, metadata=metadata, progress=progress)

    async def download_file(self, key: str, path: str | os.PathLike[str], *,
                            progress: ProgressCallback | None = None) -> ObjectInfo:
        """Write an object to a local file atomically (a temp file renamed into place, verified first). Raises
        ``NoSuchFileError``; on any error ``path`` is left as it was."""
        return await self.backend.download_file(key, path, progress=progress)

    def open_reader(self, key: str, *, start: int = 0,
                    end: int | None = None) -> AbstractAsyncContextManager[AsyncReader]:
        """Read bytes ``[start, end)`` as a stream (``await reader.read(n)``, ``async for chunk in reader``). A
        stream read to its end is verified; one stopped early, or a range, is not."""
        return self.backend.open_reader(key, start=start, end=end)

    def open_writer(self, key: str, *, metadata: dict[str, str] | None = None,
                    mode: Literal["overwrite", "create"] = "overwrite") -> AbstractAsyncContextManager[AsyncWriter]:
        """Write an object as a stream: it appears only when the block exits cleanly (``mode="create"``: and only
        if the key is still free then), and nothing is left when the block raises or is cancelled."""
        return self.backend.open_writer(key, metadata=metadata, if_absent=mode == "create")

    async def stat(self, key: str) -> ObjectInfo | None:
        """Size, etag, modification time and metadata of an object, or ``None`` if there is none."""
        return await self.backend.stat(key)

    async def list(self, prefix: str = "", *, metadata: bool = False) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in no promised order. ``metadata=True`` also fetches each
        object's metadata (a request per object on S3)."""
        async for info in self.backend.list(prefix, metadata=metadata):
            yield info

    async def list_with_delimiter(self, prefix: str = "", *, delimiter: str = "/",
                                  metadata: bool = False) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        """One level of the store below ``prefix``, in key order (``aws s3 ls`` without ``--recursive``): the objects
        whose key after ``prefix`` has no ``delimiter``, and a :class:`CommonPrefix` (``key`` ends with the
        delimiter) for each deeper group. S3 and GCS list natively, one page at a time. ``metadata=True`` also
        fetches each object's metadata (a request per object on S3)."""
        async for entry in self.backend.list_delimited(prefix, delimiter):
            if metadata and isinstance(entry, ObjectInfo):
                entry = await self.backend.stat(entry.key) or entry
            yield entry

    async def delete(self, key: str) -> None:
        """Delete an object; a missing one is not an error."""
        await self.backend.delete(key)

    async def delete_many(self, keys: Iterable[str]) -> None:
        """Delete several objects (batched where the service allows; missing ones are ignored)."""
        await self.backend.delete_many(list(keys))

    async def copy(self, src: str, dst: str, *, metadata: dict[str, str] | None = None) -> ObjectInfo:
        """Copy an object within this store, server-side where the service can; replaces ``dst`` atomically."""
        return await self.backend.copy(src, dst, metadata=metadata)

    async def presign(self, key: str, expires: int = 3600) -> str:
        """A URL that reads the object without this library for ``expires`` seconds (``file://`` on ``file:``)."""
        return await self.backend.presign(key, expires)


def open_object_store(url: str | os.PathLike[str], **options: Unpack[ObjectStoreOptions]) -> ObjectStore:
    """Open the object store at ``url`` (no I/O yet): ``s3://bucket/prefix``, ``gs://bucket/prefix``,
    ``file:/dir`` (or a plain path), ``memory:NAME``.

    Options are those of :func:`aiojobstore.open_store` that concern objects: the transfer settings
    (``part_size``, ``max_concurrency``, ``max_memory``, ... — sizes as ints or strings like ``"50MiB"``),
    ``sse_key``, and the backend's own (``endpoint_url``, credentials, ``project``, ``fsync``, ...).
    """
    parsed = parse_locator(url)
    rest: dict[str, Any] = dict(options)
    transfer = rest.pop("transfer", None) or TransferConfig.from_options(rest)
    return ObjectStore(open_backend(parsed, transfer=transfer, **rest), url=parsed.text)


def split_object_url(url: str | os.PathLike[str]) -> tuple[Locator, str]:
    """The store and key an object URL names: ``s3://bucket/a/b`` -> (``s3://bucket``, ``a/b``); a local path or
    ``file:`` URL -> (its directory, its name); ``memory:NAME/KEY``."""
    text = os.fspath(url)
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme in ("s3", "gs", "gcs"):
        key = unquote(parsed.path.lstrip("/"))
        if not key or key.endswith("/"):
            raise InvalidLocatorError(f"{text!r} names a bucket or a prefix, not an object")
        return parse_locator(f"{scheme}://{parsed.netloc}"), key
    if scheme == "memory":
        name, _, key = text[len("memory:") :].partition("/")
        if not key:
            raise InvalidLocatorError(f"{text!r} names a memory store, not an object: write memory:NAME/KEY")
        return parse_locator(f"memory:{name}"), key
    if scheme in ("file", "") or len(scheme) == 1:
        path = os.path.abspath(unquote(parsed.path) if scheme == "file" else os.path.expanduser(text))
        directory, name = os.path.split(path)
        if not name or text.endswith("/"):
            raise InvalidLocatorError(f"{text!r} names a directory, not a file")
        return parse_locator("file:" + directory), name
    raise InvalidLocatorError(f"{text!r} is not an object URL: use s3://bucket/key, gs://bucket/key, a local path "
                              "or file:///path, or memory:NAME/KEY")


async def transfer_object(source: Backend, src_key: str, dest: Backend, dst_key: str, *,
                          metadata: dict[str, str] | None = None,
                          progress: ProgressCallback | None = None) -> ObjectInfo:
    """Copy one object between two backends the cheapest way they allow: a server-side copy within one backend
    or between two of the same service, a parallel upload of a local file, a parallel download into a local
    file, else a stream (no temp file). ``metadata`` replaces the destination's user metadata."""
    if source is dest:
        return await dest.copy(src_key, dst_key, metadata=metadata)
    local = source.local_path(src_key)
    if local is not None:
        try:
            return await dest.upload_file(local, dst_key, metadata=metadata, progress=progress)
        except NoSuchFileError:
            raise NoSuchFileError(src_key, "the source does not exist") from None
    target = dest.local_path(dst_key)
    if target is not None and not metadata:
        return await source.download_file(src_key, target, progress=progress)
    copied = await dest.copy_from(source, src_key, dst_key)
    if copied is not None:
        return copied
    async with source.open_reader(src_key) as reader, dest.open_writer(dst_key, metadata=metadata) as writer:
        while chunk := await reader.read(_COPY_CHUNK):
            await writer.write(chunk)
    info = await dest.stat(dst_key)
    if info is None:
        raise NoSuchFileError(dst_key, "the copy vanished right after it was written")
    return info


_LOCAL_OPTIONS = frozenset({"fsync"})


def _end_options(locator: Locator, options: dict[str, Any]) -> dict[str, Any]:
    """The options one end of a copy takes: all of them for a service, the transfer settings (and ``fsync``)
    for a local directory or a memory store."""
    if locator.scheme in ("s3", "gs"):
        return options
    return {k: v for k, v in options.items() if k in _LOCAL_OPTIONS or k in TransferConfig.__dataclass_fields__}


async def copy(src_url: str | os.PathLike[str], dst_url: str | os.PathLike[str], *,
               progress: ProgressCallback | None = None, source_options: dict[str, Any] | None = None,
               dest_options: dict[str, Any] | None = None, **options: Unpack[ObjectStoreOptions]) -> ObjectInfo:
    """Copy one object from ``src_url`` to ``dst_url`` — any two of ``s3://bucket/key``, ``gs://bucket/key``, a
    local path (or ``file:///path``) and ``memory:NAME/KEY`` — server-side where the services allow, else
    streamed without a temp file. ``options`` (as for :func:`open_object_store`) go to both ends, a local or
    memory end taking only the transfer settings; ``source_options`` / ``dest_options`` replace them for one end
    (an S3-to-GCS copy names each service's credentials there)."""
    src_locator, src_key = split_object_url(src_url)
    dst_locator, dst_key = split_object_url(dst_url)
    shared: dict[str, Any] = dict(options)
    source = open_object_store(src_locator.text, **(source_options if source_options is not None
                                                      else _end_options(src_locator, shared)))
    try:
        same_place = (src_locator.scheme, src_locator.bucket, src_locator.path, src_locator.name) == (
            dst_locator.scheme, dst_locator.bucket, dst_locator.path, dst_locator.name)
        dest = source if same_place and dest_options is None else open_object_store(
            dst_locator.text, **(dest_options if dest_options is not None else _end_options(dst_locator, shared)))
        try:
            return await transfer_object(source.backend, src_key, dest.backend, dst_key, progress=progress)
        finally:
            if dest is not source:
                await dest.close()
    finally:
        await source.close()


__all__ = ["IfMatch", "ObjectStore", "PutMode", "copy", "open_object_store", "split_object_url",
           "transfer_object"]
