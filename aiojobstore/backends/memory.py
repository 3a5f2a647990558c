"""In-process backend: objects in a dict, shared by name within the process (``memory:NAME``).

Every object records its CRC32C (``ajs-crc32c``), verified on whole reads like the other backends'. Memory does
not encrypt: an ``sse_key`` and ``encrypted=True`` are refused."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from os import PathLike
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import ConcurrentModificationError, IntegrityError, NoSuchFileError
from ..streams import AsyncReader, AsyncWriter, Buffer, ChunkReader
from ..transfer import Progress, ProgressCallback, TransferConfig, crc32c, crc32c_from_b64, crc32c_to_b64
from .base import META_CRC32C, Backend, ObjectInfo, reject_unknown_options, user_metadata, validate_key

if TYPE_CHECKING:
    from ..locator import Locator

_READ_CHUNK = 1 << 20


@dataclass
class _Container:
    objects: dict[str, tuple[bytes, ObjectInfo]] = field(default_factory=dict)
    exists: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


_CONTAINERS: dict[str, _Container] = {}
_CONTAINERS_LOCK = threading.Lock()
_ETAGS = itertools.count(1)


def _container(name: str) -> _Container:
    with _CONTAINERS_LOCK:
        return _CONTAINERS.setdefault(name, _Container())


class _MemoryWriter:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.bytes_written = 0

    async def write(self, data: Buffer) -> int:
        chunk = bytes(data)
        self.chunks.append(chunk)
        self.bytes_written += len(chunk)
        return len(chunk)


class MemoryBackend(Backend):
    """Objects held in this process's memory. Every store opened on the same name sees the same objects."""

    scheme = "memory"
    encrypts_at_rest = False
    runs_inline = True

    def __init__(self, name: str = "default", **options: Any) -> None:
        super().__init__(**options)
        self.name = name
        self._box = _container(name)

    def describe(self) -> str:
        return f"memory:{self.name}"

    async def create(self) -> bool:
        with self._box.lock:
            created = not self._box.exists
            self._box.exists = True
        return created

    async def exists(self) -> bool:
        return self._box.exists

    async def destroy(self) -> None:
        with self._box.lock:
            self._box.objects.clear()
            self._box.exists = False

    def _lookup(self, key: str) -> tuple[bytes, ObjectInfo]:
        validate_key(key)
        try:
            data, info = self._box.objects[key]
        except KeyError:
            raise NoSuchFileError(key) from None
        self.check_encryption(key, info.metadata)
        recorded = info.metadata.get(META_CRC32C)
        if recorded is None:
            if self.require_checksum:
                raise IntegrityError(f"{key!r} carries no CRC32C, so it was not written by aiojobstore; open the "
                                     "store with require_checksums=False to read it unverified")
        elif crc32c_from_b64(recorded) != crc32c(data):
            raise IntegrityError(f"{key!r} does not match the CRC32C recorded when it was written")
        return data, info

    def _commit(self, key: str, data: bytes, metadata: dict[str, str] | None, if_absent: bool,
                if_match: str | None, encrypted: bool) -> ObjectInfo:
        validate_key(key)
        meta = {**user_metadata(metadata or {}), **self.encryption_metadata(encrypted),
                META_CRC32C: crc32c_to_b64(crc32c(data))}
        with self._box.lock:
            current = self._box.objects.get(key)
            if if_absent and current is not None:
                raise ConcurrentModificationError(f"{key!r} already exists")
            if if_match is not None and (current is None or current[1].etag != if_match):
                raise ConcurrentModificationError(f"{key!r} changed since it was read")
            info = ObjectInfo(key, len(data), f"m{next(_ETAGS)}", time.time(), meta)
            self._box.objects[key] = (data, info)
        return info

    @asynccontextmanager
    async def open_reader(self, key: str, *, start: int = 0, end: int | None = None) -> AsyncIterator[AsyncReader]:
        data, _ = self._lookup(key)
        view = memoryview(data)[start:end]

        async def chunks() -> AsyncIterator[bytes]:
            for offset in range(0, len(view), _READ_CHUNK):
                await anyio.lowlevel.checkpoint()
                yield bytes(view[offset : offset + _READ_CHUNK])

        reader = ChunkReader(chunks(), size=len(view))
        try:
            yield reader
        finally:
            await reader.aclose()

    @asynccontextmanager
    async def open_writer(self, key: str, *, metadata: dict[str, str] | None = None, if_absent: bool = False,
                          encrypted: bool = False) -> AsyncIterator[AsyncWriter]:
        validate_key(key)
        self.encryption_metadata(encrypted)  # fail before any data is written
        writer = _MemoryWriter()
        yield writer
        self._commit(key, b"".join(writer.chunks), metadata, if_absent, None, encrypted)

    async def get_object(self, key: str, *, start: int = 0, end: int | None = None) -> tuple[bytes, ObjectInfo]:
        data, info = self._lookup(key)
        return data[start:end], info

    async def put_bytes(self, key: str, data: bytes, *, metadata: dict[str, str] | None = None,
                        if_absent: bool = False, if_match: str | None = None, encrypted: bool = False) -> ObjectInfo:
        return self._commit(key, bytes(data), metadata, if_absent, if_match, encrypted)

    async def upload_file(self, path: str | PathLike[str], key: str, *, metadata: dict[str, str] | None = None,
                          encrypted: bool = False, progress: ProgressCallback | None = None) -> ObjectInfo:
        data = await anyio.Path(path).read_bytes()
        info = self._commit(key, data, metadata, False, None, encrypted)
        await Progress(progress, len(data)).advance(len(data))
        return info

    async def download_file(self, key: str, path: str | PathLike[str], *,
                            progress: ProgressCallback | None = None) -> ObjectInfo:
        from .local import atomic_write_bytes

        data, info = self._lookup(key)
        await anyio.to_thread.run_sync(atomic_write_bytes, path, data)
        await Progress(progress, len(data)).advance(len(data))
        return info

    async def stat(self, key: str) -> ObjectInfo | None:
        validate_key(key)
        entry = self._box.objects.get(key)
        return None if entry is None else entry[1]

    async def delete(self, key: str) -> None:
        validate_key(key)
        with self._box.lock:
            self._box.objects.pop(key, None)

    async def list(self, prefix: str = "", *, metadata: bool = True) -> AsyncIterator[ObjectInfo]:
        with self._box.lock:
            infos = [info for k, (_, info) in self._box.objects.items() if k.startswith(prefix)]
        for info in infos:
            yield info

    async def copy(self, src: str, dst: str, *, metadata: dict[str, str] | None = None) -> ObjectInfo:
        data, info = self._lookup(src)
        return self._commit(dst, data, {**info.metadata, **(metadata or {})}, False, None, False)

    async def presign(self, key: str, expires: int = 3600) -> str:
        validate_key(key)
        return f"memory:{self.name}/{key}"


def from_locator(locator: Locator, *, transfer: TransferConfig | None = None, sse_key: bytes | str | None = None,
                 **rest: Any) -> MemoryBackend:
    reject_unknown_options("memory", rest, ["sse_key"])
    return MemoryBackend(locator.name, transfer=transfer, sse_key=sse_key)
