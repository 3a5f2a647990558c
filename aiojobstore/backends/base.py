"""The Backend protocol: the object-store primitives the job store is built on.

A backend stores immutable objects under ``/``-separated keys relative to its root (a directory, or a bucket and
prefix). It knows nothing about jobs. Every write is atomic: an object is visible whole or not at all, and a
write that fails or is cancelled leaves nothing behind — including a cancellation that lands while the commit is
in flight (see :mod:`aiojobstore.commit`: the commit runs to completion and is rolled back, or, under an anyio
cancel scope, the write returns normally and the cancellation comes at the next checkpoint). Conditional writes
(``if_absent``, ``if_match``) carry a per-call token, so a retry after a lost answer never reports a conflict
with its own write nor applies twice. Every object a backend writes records its CRC32C (metadata
``ajs-crc32c``), and whole reads verify it; with ``require_checksum`` an object without one is refused with
``IntegrityError`` (it was not written through aiojobstore). Backends raise :mod:`aiojobstore.errors` errors
only.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

from ..errors import EncryptionKeyError, InvalidKeyError, InvalidOptionError
from ..streams import AsyncReader, AsyncWriter
from ..transfer import ProgressCallback, TransferConfig, TransferLimits

#: Metadata keys the backends themselves set (user metadata must not use the ``ajs-`` prefix).
META_CRC32C = "ajs-crc32c"
META_KEY_SHA256 = "ajs-key-sha256"

_KEY_SEGMENT = re.compile(r"[^\x00-\x1f\\]+")
# Only keys that pass every check of validate_key, for the common case in one match.
_VALID_KEY = re.compile(r"(?!\.\.?(?:/|$))[^/\x00-\x1f\\]+(?:/(?!\.\.?(?:/|$))[^/\x00-\x1f\\]+)*")


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key; raise :class:`InvalidKeyError` otherwise.

    Safe means: non-empty ``/``-separated segments, none of them ``.`` or ``..``, no leading ``/``, no
    backslash or control character. Nothing that passes can name a path outside the store's root.
    """
    if isinstance(key, str) and _VALID_KEY.fullmatch(key):
        return key
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"an object key must be a non-empty string, not {key!r}")
    if key.startswith("/"):
        raise InvalidKeyError(f"object key {key!r} is absolute; keys are relative to the store")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKeyError(
                f"object key {key!r} has an empty, '.' or '..' segment; keys may not leave or skip levels of the store"
            )
        if not _KEY_SEGMENT.fullmatch(segment):
            raise InvalidKeyError(f"object key {key!r} contains a backslash or a control character")
    return key


def user_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The caller's part of an object's metadata: everything but the keys backends set (``ajs-*``)."""
    return {k: v for k, v in metadata.items() if not k.startswith("ajs-")}


def reject_unknown_options(backend: str, options: dict[str, Any], accepted: Iterable[str]) -> None:
    """Raise a clear :class:`JobStoreError` naming options a backend does not take."""
    if options:
        from ..transfer import TransferConfig

        raise InvalidOptionError(
            f"unknown option(s) for the {backend} backend: {', '.join(sorted(options))}. Accepted: "
            f"{', '.join(accepted)} and the transfer settings ({', '.join(TransferConfig.__dataclass_fields__)})"
        )


def key_fingerprint(key: bytes) -> str:
    """The SHA-256 of an encryption key, recorded with objects to recognise a wrong key on read."""
    return hashlib.sha256(key).hexdigest()


def check_sse_key(sse_key: bytes | str | None) -> bytes | None:
    """Normalise an SSE-C / CSEK key: 32 raw bytes (or a string of 32 bytes)."""
    if sse_key is None:
        return None
    if isinstance(sse_key, str):
        sse_key = sse_key.encode()
    if len(sse_key) != 32:
        raise EncryptionKeyError(f"an encryption key must be exactly 32 bytes (AES-256), not {len(sse_key)} bytes")
    return bytes(sse_key)


@dataclass
class ReclaimReport:
    """What :meth:`Backend.reclaim` removed: debris left by crashed writers (temp files, temporary parts,
    pending multipart uploads), each older than the grace period."""

    items: int = 0
    bytes: int = 0
    kinds: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, size: int = 0) -> None:
        self.items += 1
        self.bytes += max(0, size)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def merge(self, other: ReclaimReport) -> None:
        self.items += other.items
        self.bytes += other.bytes
        for kind, count in other.kinds.items():
            self.kinds[kind] = self.kinds.get(kind, 0) + count


@dataclass(frozen=True)
class CommonPrefix:
    """A "directory" of a delimited listing: ``key`` is the shared start of the keys below it, ending with the
    delimiter (``"run1/logs/"``)."""

    key: str


@dataclass(frozen=True)
class ObjectInfo:
    """What a backend knows about one object. ``etag`` is an opaque version token that changes on every
    write of the key; pass it as ``if_match`` for a conditional write."""

    key: str
    size: int
    etag: str | None = None
    mtime: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class Backend(ABC):
    """An object store rooted at one location. Create with keyword options; no I/O until a method is awaited.

    Encryption: writers take ``encrypted=True`` to encrypt with the backend's ``sse_key`` (SSE-C on S3, CSEK on
    GCS). Readers use the key whenever the object needs it and raise ``EncryptionKeyError`` when the key is missing
    or wrong. Backends that do not encrypt at rest (``memory:``, ``file:``) refuse an ``sse_key`` and
    ``encrypted=True`` with ``EncryptionKeyError`` rather than store plaintext that the caller believes encrypted.
    """

    #: The locator scheme this backend serves (``memory``, ``file``, ``s3``, ``gs``).
    scheme: str = ""

    #: Refuse (``IntegrityError``) an object that carries no ``ajs-crc32c``: set by the job store, whose every
    #: object is written through a backend; left ``False`` for foreign objects (import/export URLs).
    require_checksum: bool = False
    #: Whether ``encrypted=True`` encrypts the stored bytes (with the ``sse_key``).
    encrypts_at_rest: bool = True
    #: Whether small operations (``get_object``, ``put_bytes``, ``update_object``, ``stat``, ``delete``,
    #: ``delete_prefix``, ``list``) complete without waiting on an event loop when run inline
    #: (:mod:`aiojobstore.inline`): their blocking work goes through ``inline.to_thread``. The blocking facade
    #: then runs them in the caller's thread.
    runs_inline: bool = False

    def __init__(self, *, transfer: TransferConfig | None = None, sse_key: bytes | str | None = None) -> None:
        self.transfer = transfer or TransferConfig()
        self.limits = TransferLimits(self.transfer)
        if sse_key is not None and not self.encrypts_at_rest:
            raise EncryptionKeyError(self._no_encryption("an sse_key is refused"))
        self.sse_key = check_sse_key(sse_key)

    def _no_encryption(self, what: str) -> str:
        return (f"{self.scheme}: stores do not encrypt at rest, so {what} rather than keep plaintext you would "
                "believe encrypted: use an s3:// store (SSE-C) or a gs:// store (CSEK) with sse_key, or encrypt the "
                "filesystem")

    # ------------------------------------------------------------------ container

    @abstractmethod
    async def create(self) -> bool:
        """Create the container (directory, bucket) if missing; return whether this call created it."""

    @abstractmethod
    async def exists(self) -> bool:
        """Whether the container exists."""

    @abstractmethod
    async def destroy(self) -> None:
        """Delete every object under the root (and the container if this store owns it). Idempotent."""

    async def close(self) -> None:
        """Release connections and threads. The backend may not be used afterwards."""

    # ------------------------------------------------------------------ objects

    @abstractmethod
    def open_reader(self, key: str, *, start: int = 0,
                    end: int | None = None) -> AbstractAsyncContextManager[AsyncReader]:
        """Read bytes ``[start, end)`` of an object as a stream. Raises ``NoSuchFileError`` if it is missing."""

    @abstractmethod
    def open_writer(self, key: str, *, metadata: dict[str, str] | None = None, if_absent: bool = False,
                    encrypted: bool = False) -> AbstractAsyncContextManager[AsyncWriter]:
        """Write an object as a stream; it appears only when the block exits cleanly, and nothing is left
        when it raises or is cancelled. With ``if_absent`` the commit fails with
        ``ConcurrentModificationError`` if the key exists by then."""

    @abstractmethod
    async def get_object(self, key: str, *, start: int = 0, end: int | None = None) -> tuple[bytes, ObjectInfo]:
        """The bytes ``[start, end)`` of an object and its info. Raises ``NoSuchFileError``."""

    async def get_bytes(self, key: str, *, start: int = 0, end: int | None = None) -> bytes:
        """The bytes ``[start, end)`` of an object. Raises ``NoSuchFileError``."""
        data, _ = await self.get_object(key, start=start, end=end)
        return data

    @abstractmethod
    async def put_bytes(self, key: str, data: bytes, *, metadata: dict[str, str] | None = None,
                        if_absent: bool = False, if_match: str | None = None, encrypted: bool = False) -> ObjectInfo:
        """Store ``data`` atomically. ``if_absent``: fail if the key exists; ``if_match``: fail unless the
        stored object's etag is this one. Either failure raises ``ConcurrentModificationError``."""

    async def update_object(self, key: str, edit: Callable[[bytes], bytes], *,
                            metadata: dict[str, str] | None = None) -> ObjectInfo:
        """Replace an object with ``edit(current bytes)`` as one compare-and-swap. Raises ``NoSuchFileError`` if
        it is missing and ``ConcurrentModificationError`` if another writer replaced it in between; an
        exception from ``edit`` leaves the object as it was. ``edit`` may run in a worker thread. The object keeps
        its user metadata and its encryption unless ``metadata`` is given."""
        data, info = await self.get_object(key)
        keep = user_metadata(info.metadata) if metadata is None else metadata
        return await self.put_bytes(key, edit(data), metadata=keep, if_match=info.etag,
                                    encrypted=META_KEY_SHA256 in info.metadata)

    @abstractmethod
    async def upload_file(self, path: str | PathLike[str], key: str, *, metadata: dict[str, str] | None = None,
                          encrypted: bool = False, progress: ProgressCallback | None = None) -> ObjectInfo:
        """Store a local file (in parallel parts where the backend can)."""

    @abstractmethod
    async def download_file(self, key: str, path: str | PathLike[str], *,
                            progress: ProgressCallback | None = None) -> ObjectInfo:
        """Write an object to a local file atomically (in parallel ranges where the backend can)."""

    @abstractmethod
    async def stat(self, key: str) -> ObjectInfo | None:
        """The object's info, or ``None`` if there is no such object."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Delete an object; deleting a missing object is not an error."""

    async def delete_many(self, keys: Iterable[str]) -> None:
        """Delete several objects (missing ones are ignored)."""
        for key in keys:
            await self.delete(key)

    async def delete_prefix(self, prefix: str) -> None:
        """Delete every object whose key starts with ``prefix`` (nothing there is not an error)."""
        keys = [info.key async for info in self.list(prefix, metadata=False)]
        if keys:
            await self.delete_many(keys)

    @abstractmethod
    def list(self, prefix: str = "", *, metadata: bool = True) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in no promised order. With ``metadata=False`` the
        infos' metadata may be left empty, which spares a request per object on S3."""

    async def list_delimited(self, prefix: str = "", delimiter: str = "/") -> AsyncIterator[ObjectInfo | CommonPrefix]:
        """One level below ``prefix``, in key order: the objects whose key after ``prefix`` has no ``delimiter``,
        and a :class:`CommonPrefix` for each distinct longer run up to and including the next ``delimiter``.

        This default folds a flat :meth:`list` (holding the level's keys in memory); services with a delimited
        listing of their own override it."""
        if not delimiter:
            raise InvalidOptionError("a listing delimiter must be a non-empty string, such as '/'")
        entries: dict[str, ObjectInfo | CommonPrefix] = {}
        async for info in self.list(prefix, metadata=False):
            cut = info.key.find(delimiter, len(prefix))
            if cut < 0:
                entries[info.key] = info
            else:
                common = info.key[: cut + len(delimiter)]
                entries.setdefault(common, CommonPrefix(common))
        for name in sorted(entries):
            yield entries[name]

    @abstractmethod
    async def copy(self, src: str, dst: str, *, metadata: dict[str, str] | None = None) -> ObjectInfo:
        """Copy an object within this backend (server-side where possible); replaces ``dst`` atomically."""

    async def copy_from(self, source: Backend, src_key: str, dst_key: str) -> ObjectInfo | None:
        """Copy an object of another backend into this one server-side, or return ``None`` when this pair of
        backends cannot (the caller then streams the bytes)."""
        return None

    async def link_file(self, key: str, path: str | PathLike[str], *, executable: bool) -> ObjectInfo | None:
        """Place ``key`` at ``path`` without copying its bytes (a reflink, or a hard link) where this backend can,
        with the executable bit ``executable``; ``None`` where it cannot (the caller then copies)."""
        return None

    def local_path(self, key: str) -> str | None:
        """The local file that holds ``key``, for backends that keep objects as files (else ``None``)."""
        return None

    @abstractmethod
    async def presign(self, key: str, expires: int = 3600) -> str:
        """A URL from which the object can be read without this library for ``expires`` seconds."""

    async def reclaim(self, older_than: float = 3600.0) -> ReclaimReport:
        """Remove debris of writers that died (temp files, temporary parts, pending multipart uploads) under the
        root, if it is older than ``older_than`` seconds, so that live writers are never touched. Idempotent."""
        return ReclaimReport()

    # ------------------------------------------------------------------ helpers for subclasses

    def describe(self) -> str:
        """A short human-readable name of the location, for messages."""
        return f"{self.scheme}:"

    def encryption_metadata(self, encrypted: bool) -> dict[str, str]:
        """Metadata recording which key an object was written with (empty when not encrypted)."""
        if not encrypted:
            return {}
        if not self.encrypts_at_rest:
            raise EncryptionKeyError(self._no_encryption("encrypted=True is refused"))
        if self.sse_key is None:
            raise EncryptionKeyError(
                "encrypted=True needs an encryption key: open the store with sse_key=<32 bytes>"
            )
        return {META_KEY_SHA256: key_fingerprint(self.sse_key)}

    def check_encryption(self, key: str, metadata: dict[str, str]) -> None:
        """Raise ``EncryptionKeyError`` unless this backend holds the key an object was written with."""
        wanted = metadata.get(META_KEY_SHA256)
        if wanted is None:
            return
        if self.sse_key is None:
            raise EncryptionKeyError(f"{key!r} is encrypted: open the store with the sse_key it was written with")
        if key_fingerprint(self.sse_key) != wanted:
            raise EncryptionKeyError(f"{key!r} was encrypted with a different key than this store's sse_key")
