"""The ``aiojobstore`` command: copy, sync, list, show and delete objects and job-store files; manage job stores.

An argument names one of:

==================================  =========================================================================
``data.bin``, ``dir/``, ``-``       a local path (``-``: stdin or stdout); ``file:///path`` is one too
``s3://bucket/key``                 an object (also ``gs://bucket/key``, ``memory:NAME/KEY``); a key ending
                                    in ``/`` is a prefix: ``cp`` keeps the source's name under it
``https://host/path``               a web resource, as a source only
``LOCATOR::``                       a job store: ``cp`` into it writes a new file and prints its file ID
``LOCATOR::FILE_ID``                a file in it (``ls LOCATOR::`` lists them); ``LOCATOR::shared/NAME``, a
                                    shared file; ``LOCATOR::JOB_ID``, a job (``stat``, ``rm``)
==================================  =========================================================================

A LOCATOR is ``/path``, ``file:/path``, ``memory:NAME``, ``s3://bucket/prefix``, ``aws:REGION:BUCKET``,
``gs://bucket/prefix`` or ``google:PROJECT:BUCKET``. Errors print one line, ``aiojobstore: error: ...``, on
stderr and exit with status 1 (2 for bad usage, 130 on SIGINT, 143 on SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlparse

import anyio
from tqdm import tqdm

from . import __version__, units
from .backends.base import META_CRC32C, META_KEY_SHA256, CommonPrefix, ObjectInfo
from .errors import JobStoreError, JobStoreExistsError, NoSuchFileError, NoSuchJobError, NoSuchJobStoreError
from .jobstore import FileID, JobStore, open_store
from .layout import META_EXECUTABLE, check_shared_file_name
from .locator import parse_locator
from .objects import ObjectStore, open_object_store
from .objects import copy as copy_object
from .transfer import crc32c
from .units import human_duration, human_size

if TYPE_CHECKING:
    import aiohttp

PROG = "aiojobstore"
MiB = 1 << 20
PROGRESS_THRESHOLD = 4 * MiB
COPY_CHUNK = MiB  # stream copies report progress per chunk
COPY_PARALLEL = 8
CRC_CHUNK = 8 * MiB


class CLIError(Exception):
    """A user error the command reports as one line."""


# --------------------------------------------------------------------------------------------------- options

TRANSFER_OPTIONS = ("part_size", "max_concurrency", "max_requests", "max_memory", "max_attempts")
S3_OPTIONS = ("endpoint_url", "region_name", "profile_name")
GCS_OPTIONS = ("project", "service_file")
#: Which schemes use which option (``sse_key``: S3 and GCS; ``fsync``: file:; ``codec``: job stores).
_OPTION_SCHEMES = {**{name: ("s3",) for name in S3_OPTIONS}, **{name: ("gs",) for name in GCS_OPTIONS},
                   "sse_key": ("s3", "gs"), "fsync": ("file",)}
_FLAGS = {"sse_key": "--sse-key-file", "fsync": "--no-fsync"}


def parse_size(text: str) -> int:
    """Parse a byte count for an option (see :func:`aiojobstore.units.parse_size`)."""
    try:
        return units.parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_duration(text: str) -> float:
    """Parse a duration for an option (see :func:`aiojobstore.units.parse_duration`)."""
    try:
        return units.parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def store_options(args: argparse.Namespace) -> dict[str, Any]:
    """Every store option the flags give (only those given), as ``open_store`` keywords."""
    options: dict[str, Any] = {}
    for name in (*S3_OPTIONS, *GCS_OPTIONS, *TRANSFER_OPTIONS, "codec"):
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    if getattr(args, "no_fsync", False):
        options["fsync"] = False
    key_file = getattr(args, "sse_key_file", None)
    if key_file:
        with open(key_file, "rb") as handle:
            options["sse_key"] = handle.read().strip()
    return options


def options_for(args: argparse.Namespace, scheme: str, *, job_store: bool = False) -> dict[str, Any]:
    """The options one location of scheme ``scheme`` takes: the transfer settings and its backend's own."""
    return {name: value for name, value in store_options(args).items()
            if name in TRANSFER_OPTIONS or scheme in _OPTION_SCHEMES.get(name, ()) or (name == "codec" and job_store)}


def check_options_used(args: argparse.Namespace, schemes: set[str]) -> None:
    """Refuse a backend option that no location of the command uses (``--endpoint-url`` with no s3:// in sight)."""
    for name in store_options(args):
        wanted = _OPTION_SCHEMES.get(name)
        if wanted and not schemes.intersection(wanted):
            flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
            where = " or ".join(f"{s}://" if s != "file" else "file:" for s in wanted)
            raise CLIError(f"{flag} is for {where} locations, and the command names none")


# ------------------------------------------------------------------------------------------ what an argument is


@dataclass(frozen=True)
class StoreRef:
    """``LOCATOR::PATH``: the store, a file ID, ``shared/NAME``, a job ID, or (``ls``, ``cp -r``) a prefix."""

    locator: str
    path: str

    @property
    def shared_name(self) -> str | None:
        return self.path[len("shared/") :] if self.path.startswith("shared/") else None

    @property
    def is_shared_prefix(self) -> bool:
        return self.path == "shared" or self.path.startswith("shared/")

    @property
    def is_job(self) -> bool:
        return bool(self.path) and "/" not in self.path

    @property
    def scheme(self) -> str:
        return parse_locator(self.locator).scheme

    def __str__(self) -> str:
        return f"{self.locator}::{self.path}"


@dataclass(frozen=True)
class ObjectRef:
    """An object or prefix in an object store: ``s3://bucket/key``, ``gs://bucket/key``, ``memory:NAME/KEY``."""

    root: str  # the store: s3://bucket, gs://bucket, memory:NAME
    key: str  # a key, a prefix ending in '/', or '' for the whole bucket

    @property
    def scheme(self) -> str:
        return parse_locator(self.root).scheme

    @property
    def is_prefix(self) -> bool:
        return not self.key or self.key.endswith("/")

    @property
    def basename(self) -> str:
        return self.key.rstrip("/").rsplit("/", 1)[-1]

    def at(self, key: str) -> ObjectRef:
        return ObjectRef(self.root, key)

    @property
    def url(self) -> str:
        """The URL :func:`aiojobstore.copy` takes (keys percent-quoted where the URL is parsed)."""
        if self.root.startswith("memory:"):
            return f"{self.root}/{self.key}"
        return f"{self.root}/{quote(self.key, safe='/')}"

    def __str__(self) -> str:
        return f"{self.root}/{self.key}"


@dataclass(frozen=True)
class HttpRef:
    """An ``http(s)://`` URL (a source only)."""

    url: str

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class LocalRef:
    """A local path, or ``-`` for stdin/stdout."""

    path: str

    @property
    def is_std(self) -> bool:
        return self.path == "-"

    def __str__(self) -> str:
        return self.path


Ref = StoreRef | ObjectRef | HttpRef | LocalRef
#: Every endpoint but a job store's.
PlainRef = ObjectRef | HttpRef | LocalRef


def parse_ref(text: str) -> Ref:
    """Classify an argument: ``LOCATOR::PATH``, an object URL, an http(s) URL, or a local path."""
    if "::" in text:
        locator, _, path = text.partition("::")
        if not locator:
            raise CLIError(f"{text!r}: nothing before '::'; write LOCATOR::PATH, e.g. file:/scratch/run1::shared/x")
        parse_locator(locator)  # an unknown locator fails here, with the accepted forms
        return StoreRef(locator, path.lstrip("/"))
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme in ("s3", "gs", "gcs"):
        root = f"{'gs' if scheme == 'gcs' else scheme}://{parsed.netloc}"
        parse_locator(root)
        return ObjectRef(root, unquote(parsed.path.lstrip("/")))
    if scheme == "memory":
        name, _, key = text[len("memory:") :].partition("/")
        parse_locator(f"memory:{name}")
        return ObjectRef(f"memory:{name}", key)
    if scheme in ("http", "https"):
        return HttpRef(text)
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise CLIError(f"{text!r}: a file URL needs an absolute path, file:///path")
        path = unquote(parsed.path)
        return LocalRef(path + ("/" if text.endswith("/") and not path.endswith("/") else ""))
    return LocalRef(text)


def parse_store_arg(text: str) -> StoreRef:
    """A ``LOCATOR`` or ``LOCATOR::PATH`` argument."""
    if "::" not in text:
        parse_locator(text)
        return StoreRef(text, "")
    ref = parse_ref(text)
    assert isinstance(ref, StoreRef)
    return ref


def _scheme_of(ref: Ref) -> str:
    if isinstance(ref, (StoreRef, ObjectRef)):
        return ref.scheme
    return "http" if isinstance(ref, HttpRef) else "file"


# ----------------------------------------------------------------------------------------------- the stores


@asynccontextmanager
async def opened(locator: str, args: argparse.Namespace, *, create: bool = False) -> AsyncIterator[JobStore]:
    """An existing job store (``resume``), or a new one with ``create``; closed at exit."""
    store = open_store(locator, **options_for(args, parse_locator(locator).scheme, job_store=True))
    async with store:
        try:
            await store.resume()
        except NoSuchJobStoreError:
            if not create:
                raise CLIError(
                    f"no job store at {locator!r}: create one with '{PROG} init {locator}' (or 'cp --create')"
                ) from None
            await store.initialize()
        yield store


class Stores:
    """The object stores and job stores a command opened, one per bucket or locator, closed together."""

    def __init__(self, args: argparse.Namespace, stack: AsyncExitStack) -> None:
        self.args = args
        self.stack = stack
        self._objects: dict[str, ObjectStore] = {}
        self._jobs: dict[str, JobStore] = {}

    async def objects(self, root: str) -> ObjectStore:
        if root not in self._objects:
            store = open_object_store(root, **options_for(self.args, parse_locator(root).scheme))
            self._objects[root] = await self.stack.enter_async_context(store)
        return self._objects[root]

    async def local(self, directory: str) -> ObjectStore:
        """An object store on a local directory (for atomic stream writes into it)."""
        return await self.objects("file:" + os.path.abspath(directory))

    async def job_store(self, locator: str, *, create: bool = False) -> JobStore:
        if locator not in self._jobs:
            self._jobs[locator] = await self.stack.enter_async_context(opened(locator, self.args, create=create))
        return self._jobs[locator]


# ------------------------------------------------------------------------------------------------ progress


class Progress:
    """One tqdm bar over any number of transfers (shown when asked, or on a terminal for big copies), and the
    lines a command prints while it runs (above the bar, never glued to it)."""

    def __init__(self, total: int | None, args: argparse.Namespace, desc: str) -> None:
        mode = getattr(args, "progress", None)
        self.quiet = bool(getattr(args, "quiet", False))
        show = mode if mode is not None else (not self.quiet and sys.stderr.isatty()
                                              and (total or 0) >= PROGRESS_THRESHOLD)
        self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not show,
                        file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.1)

    def callback(self) -> Callable[[int, int | None], None]:
        """A progress callback (cumulative bytes) for one transfer."""
        last = 0

        def report(done: int, total: int | None) -> None:
            nonlocal last
            self.bar.update(done - last)
            last = done

        return report

    def add(self, n: int) -> None:
        self.bar.update(n)

    def result(self, text: str) -> None:
        """Print a result (a file ID): always, on its own line."""
        if self.bar.disable:
            print(text, flush=True)
        else:
            self.bar.write(text, file=sys.stdout)
            sys.stdout.flush()

    def say(self, text: str) -> None:
        """Print what was done (``upload: a to s3://b/a``), unless ``--quiet``."""
        if not self.quiet:
            self.result(text)

    def close(self) -> None:
        self.bar.close()


@asynccontextmanager
async def progress_bar(total: int | None, args: argparse.Namespace, desc: str) -> AsyncIterator[Progress]:
    progress = Progress(total, args, desc)
    try:
        yield progress
    finally:
        progress.close()


def _say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------------------------- local files


def _size_of(path: str) -> int:
    if os.path.isdir(path):
        raise CLIError(f"{path!r} is a directory: use 'cp -r' to copy a directory")
    return os.stat(path).st_size


def _walk(root: str) -> list[tuple[str, str, int, float]]:
    """(path, relative path with '/', size, mtime) of every regular file under ``root``, sorted."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            if name.startswith((".ajs-", ".aiojobstore-")) or not os.path.isfile(path):
                continue
            st = os.stat(path)
            found.append((path, os.path.relpath(path, root).replace(os.sep, "/"), st.st_size, st.st_mtime))
    return found


def _local_target(path: str, basename: str) -> str:
    """Where a copy to ``path`` lands: inside it when it is a directory or ends in '/' (made if missing)."""
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        os.makedirs(path, exist_ok=True)
        return os.path.join(path, basename)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CLIError(f"cannot copy to {path!r}: the directory {parent!r} does not exist")
    return path


def _inside(root: str, relative: str) -> str:
    """``root/relative``, refusing a relative path that would leave ``root`` (a key with '..')."""
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise CLIError(f"refusing key part {relative!r}: it has an empty, '.' or '..' segment")
    return os.path.join(root, *parts)


def _file_crc32c(path: str) -> int:
    value = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CRC_CHUNK):
            value = crc32c(chunk, value)
    return value


async def _read_stdin(writer: Any, progress: Progress) -> int:
    total = 0
    while data := await anyio.to_thread.run_sync(sys.stdin.buffer.read, COPY_CHUNK):
        await writer.write(data)
        total += len(data)
        progress.add(len(data))
    return total


async def _drain(reader: Any, writer: Any, progress: Progress) -> int:
    """Copy a stream into an async writer, chunk by chunk."""
    total = 0
    while data := await reader.read(COPY_CHUNK):
        await writer.write(data)
        total += len(data)
        progress.add(len(data))
    return total


async def _to_stdout(reader: Any, progress: Progress) -> int:
    out = sys.stdout.buffer
    total = 0
    while data := await reader.read(COPY_CHUNK):
        await anyio.to_thread.run_sync(out.write, data)
        total += len(data)
        progress.add(len(data))
    await anyio.to_thread.run_sync(out.flush)
    return total


class _HttpReader:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.size: int | None = response.content_length

    async def read(self, n: int = -1) -> bytes:
        return await self.response.content.read(n)


@asynccontextmanager
async def open_http(url: str) -> AsyncIterator[_HttpReader]:
    """Stream an http(s) URL (redirects followed); 404 is ``NoSuchFileError``, other failures ``JobStoreError``."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=300)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
            if response.status == 404:
                raise NoSuchFileError(url, "the server answered 404")
            if response.status >= 400:
                raise JobStoreError(f"cannot read {url}: the server answered {response.status} {response.reason}")
            reader = _HttpReader(response)
            yield reader
    except aiohttp.ClientError as error:
        raise JobStoreError(f"cannot read {url}: {error or type(error).__name__}") from error


class _Sized:
    """A reader that checks it delivered the bytes its source announced."""

    def __init__(self, reader: _HttpReader, url: str) -> None:
        self.reader, self.url, self.received = reader, url, 0
        self.size = reader.size

    async def read(self, n: int = -1) -> bytes:
        data = await self.reader.read(n)
        self.received += len(data)
        if not data and self.size is not None and self.received != self.size:
            raise JobStoreError(f"cannot read {self.url}: the body ended after {self.received} of {self.size} bytes")
        return data


# ------------------------------------------------------------------------------------------------------- cp


def _key_for(dst: ObjectRef, name: str) -> ObjectRef:
    """``cp x s3://b/dir/`` writes ``dir/x``; ``cp x s3://b/dir/y`` writes ``dir/y``."""
    return dst.at(dst.key + name) if dst.is_prefix else dst


def _check_file_ref(ref: StoreRef) -> None:
    if not ref.path:
        raise CLIError(f"{ref}: name a file, LOCATOR::FILE_ID or LOCATOR::shared/NAME ('{PROG} ls' lists them)")
    if ref.is_job:
        raise CLIError(f"{ref}: {ref.path!r} is a job ID, not a file ID (file IDs contain '/')")


def _store_basename(ref: StoreRef) -> str:
    return ref.shared_name if ref.shared_name is not None else FileID(ref.path).basename


@asynccontextmanager
async def _store_reader(store: JobStore, ref: StoreRef) -> AsyncIterator[Any]:
    if ref.shared_name is not None:
        async with store.read_shared_file_stream(check_shared_file_name(ref.shared_name)) as reader:
            yield reader
    else:
        _check_file_ref(ref)
        async with store.read_file_stream(ref.path) as reader:
            yield reader


async def _store_size(store: JobStore, ref: StoreRef) -> int:
    if ref.shared_name is not None:
        return (await store.stat_shared_file(check_shared_file_name(ref.shared_name))).size
    _check_file_ref(ref)
    return (await store.stat_file(ref.path)).size


async def _object_size(stores: Stores, ref: ObjectRef) -> int:
    if ref.is_prefix:
        raise CLIError(f"{ref} is a prefix, not an object: use 'cp -r' to copy everything under it")
    info = await (await stores.objects(ref.root)).stat(ref.key)
    if info is None:
        raise NoSuchFileError(str(ref), "no such object")
    return info.size


async def _source_size(src: Ref, stores: Stores) -> int | None:
    if isinstance(src, LocalRef):
        return None if src.is_std else await anyio.to_thread.run_sync(_size_of, src.path)
    if isinstance(src, ObjectRef):
        return await _object_size(stores, src)
    if isinstance(src, StoreRef):
        return await _store_size(await stores.job_store(src.locator), src)
    return None


def _source_name(src: Ref) -> str:
    if isinstance(src, LocalRef):
        return "stdin" if src.is_std else os.path.basename(src.path.rstrip("/"))
    if isinstance(src, ObjectRef):
        return src.basename
    if isinstance(src, StoreRef):
        return _store_basename(src)
    return unquote(urlparse(src.url).path).rsplit("/", 1)[-1] or "index.html"


async def _into_store(src: Ref, dst: StoreRef, store: JobStore, stores: Stores, progress: Progress,
                      args: argparse.Namespace) -> str:
    """Copy ``src`` into a job store; return what was written (a file ID, or ``shared/NAME``)."""
    name = dst.shared_name
    if dst.path and name is None:
        if dst.is_job:
            raise CLIError(f"{dst}: a job ID is not a file; copy to {dst.locator}:: to write a new file")
        if isinstance(src, LocalRef) and not src.is_std:
            await store.update_file(dst.path, src.path, progress=progress.callback())
            return dst.path
    if isinstance(src, HttpRef) or (isinstance(src, ObjectRef) and src.scheme in ("s3", "gs")
                                    and src.scheme == dst.scheme):  # the store's own service: server-side
        if dst.path and name is None:
            raise CLIError(f"{dst}: an import writes a new file; copy to {dst.locator}:: or "
                           f"{dst.locator}::shared/NAME")
        file_id = await store.import_file(src.url, shared_file_name=None if name is None
                                          else check_shared_file_name(name))
        return dst.path if file_id is None else str(file_id)
    if isinstance(src, LocalRef) and not src.is_std and name is None and not args.name:
        return str(await store.write_file(src.path, args.job_id, cleanup=args.cleanup, progress=progress.callback()))

    @asynccontextmanager
    async def source() -> AsyncIterator[Any]:
        if isinstance(src, LocalRef):
            if src.is_std:
                yield None
            else:
                local = await stores.local(os.path.dirname(os.path.abspath(src.path)))
                async with local.open_reader(os.path.basename(src.path)) as reader:
                    yield reader
        elif isinstance(src, ObjectRef):
            async with (await stores.objects(src.root)).open_reader(src.key) as reader:
                yield reader
        elif isinstance(src, StoreRef):
            async with _store_reader(await stores.job_store(src.locator), src) as reader:
                yield reader
        else:  # pragma: no cover - http is imported above
            raise AssertionError(src)

    async with source() as reader:
        async def feed(writer: Any) -> None:
            await (_read_stdin(writer, progress) if reader is None else _drain(reader, writer, progress))

        if name is not None:
            async with store.write_shared_file_stream(check_shared_file_name(name)) as writer:
                await feed(writer)
            return dst.path
        if dst.path:
            async with store.update_file_stream(dst.path) as writer:
                await feed(writer)
            return dst.path
        async with store.write_file_stream(args.job_id, cleanup=args.cleanup,
                                           basename=args.name or _source_name(src)) as (writer, file_id):
            await feed(writer)
        return str(file_id)


async def _out_of_store(src: StoreRef, dst: Ref, store: JobStore, stores: Stores, progress: Progress) -> str | None:
    """Copy a job-store file out to a local path, stdout or an object; return the ``download:`` line, if any."""
    if isinstance(dst, HttpRef):
        raise CLIError("http(s):// URLs can only be copied from, not to")
    if isinstance(dst, LocalRef):
        if dst.is_std:
            async with _store_reader(store, src) as reader:
                await _to_stdout(reader, progress)
            return None
        target = await anyio.to_thread.run_sync(_local_target, dst.path, _store_basename(src))
        if src.shared_name is None:
            _check_file_ref(src)
            await store.read_file(src.path, target, progress=progress.callback())
        else:
            local = await stores.local(os.path.dirname(os.path.abspath(target)))
            async with _store_reader(store, src) as reader, local.open_writer(os.path.basename(target)) as writer:
                await _drain(reader, writer, progress)
        return f"download: {src} to {target}"
    assert isinstance(dst, ObjectRef)
    target_ref = _key_for(dst, _store_basename(src))
    if src.shared_name is None and dst.scheme == src.scheme:
        _check_file_ref(src)
        await store.export_file(src.path, target_ref.url)  # server-side on one service
    else:
        objects = await stores.objects(target_ref.root)
        metadata: dict[str, str] = {}
        if src.shared_name is None:
            _check_file_ref(src)
            if (await store.stat_file(src.path)).metadata.get(META_EXECUTABLE) == "1":
                metadata[META_EXECUTABLE] = "1"
        async with _store_reader(store, src) as reader, objects.open_writer(target_ref.key,
                                                                            metadata=metadata) as writer:
            await _drain(reader, writer, progress)
    return f"copy: {src} to {target_ref}"


async def _copy_objects(src: PlainRef, dst: PlainRef, stores: Stores, progress: Progress,
                        size: int | None) -> str | None:
    """Copy between local paths, stdin/stdout, http(s) sources and object URLs; return the line to print."""
    shown = f" ({human_size(size)})" if size is not None else ""
    if isinstance(dst, HttpRef):
        raise CLIError("http(s):// URLs can only be copied from, not to")
    if (isinstance(src, LocalRef) and src.is_std) or isinstance(src, HttpRef):
        name = _source_name(src)
        if isinstance(dst, LocalRef) and dst.is_std and isinstance(src, LocalRef):
            raise CLIError("'cp - -' copies nothing anywhere: name a file or URL on one side")

        @asynccontextmanager
        async def target() -> AsyncIterator[tuple[Any, str]]:
            if isinstance(dst, ObjectRef):
                if dst.is_prefix and isinstance(src, LocalRef):
                    raise CLIError(f"{dst} is a prefix: name the key to write stdin to, e.g. {dst.root}/{dst.key}x")
                ref = _key_for(dst, name)
                async with (await stores.objects(ref.root)).open_writer(ref.key) as writer:
                    yield writer, str(ref)
            elif dst.is_std:
                yield None, "-"
            else:
                path = await anyio.to_thread.run_sync(_local_target, dst.path, name)
                local = await stores.local(os.path.dirname(os.path.abspath(path)))
                async with local.open_writer(os.path.basename(path)) as writer:
                    yield writer, path

        if isinstance(src, HttpRef):
            async with open_http(src.url) as raw:
                progress.bar.reset(total=raw.size)
                sized = _Sized(raw, src.url)
                async with target() as (writer, where):
                    total = await (_to_stdout(sized, progress) if writer is None
                                   else _drain(sized, writer, progress))
            return None if where == "-" else f"download: {src} to {where} ({human_size(total)})"
        async with target() as (writer, where):
            total = await _read_stdin(writer, progress)
        return f"{'upload' if isinstance(dst, ObjectRef) else 'copy'}: - to {where} ({human_size(total)})"
    if isinstance(dst, LocalRef) and dst.is_std:
        if isinstance(src, LocalRef):
            raise CLIError(f"'cp {src.path} -': use cat(1) for a local file")
        assert isinstance(src, ObjectRef)
        async with (await stores.objects(src.root)).open_reader(src.key) as reader:
            await _to_stdout(reader, progress)
        return None
    if isinstance(src, LocalRef) and isinstance(dst, ObjectRef):
        ref = _key_for(dst, _source_name(src))
        await (await stores.objects(ref.root)).upload_file(src.path, ref.key, progress=progress.callback())
        return f"upload: {src} to {ref}{shown}"
    if isinstance(src, ObjectRef) and isinstance(dst, LocalRef):
        path = await anyio.to_thread.run_sync(_local_target, dst.path, src.basename)
        await (await stores.objects(src.root)).download_file(src.key, path, progress=progress.callback())
        return f"download: {src} to {path}{shown}"
    if isinstance(src, ObjectRef) and isinstance(dst, ObjectRef):
        ref = _key_for(dst, src.basename)
        await _object_to_object(src, ref, stores, progress)
        return f"copy: {src} to {ref}{shown}"
    assert isinstance(src, LocalRef) and isinstance(dst, LocalRef)
    path = await anyio.to_thread.run_sync(_local_target, dst.path, os.path.basename(src.path))
    args = stores.args
    await copy_object(src.path, path, progress=progress.callback(), source_options=options_for(args, "file"),
                      dest_options=options_for(args, "file"))
    return f"copy: {src} to {path}{shown}"


async def _object_to_object(src: ObjectRef, dst: ObjectRef, stores: Stores, progress: Progress) -> None:
    """Within one bucket: the store's server-side copy; else :func:`aiojobstore.copy` (server-side when the
    services allow)."""
    if src.root == dst.root:
        await (await stores.objects(src.root)).copy(src.key, dst.key)
        return
    args = stores.args
    await copy_object(src.url, dst.url, progress=progress.callback(), source_options=options_for(args, src.scheme),
                      dest_options=options_for(args, dst.scheme))


async def _copy_one(src: Ref, dst: Ref, args: argparse.Namespace, stores: Stores) -> None:
    """Copy one file between any two kinds of endpoint."""
    if isinstance(src, LocalRef) and not src.is_std:
        await anyio.to_thread.run_sync(_size_of, src.path)  # a missing source fails before any store is opened
    if isinstance(dst, StoreRef):
        store = await stores.job_store(dst.locator, create=args.create)
        size = await _source_size(src, stores)
        async with progress_bar(size, args, "cp") as progress:
            written = await _into_store(src, dst, store, stores, progress, args)
        _say(written)  # the bar is gone: the ID on its own line
        return
    size = await _source_size(src, stores)
    async with progress_bar(size, args, "cp") as progress:
        if isinstance(src, StoreRef):
            line = await _out_of_store(src, dst, await stores.job_store(src.locator), stores, progress)
            if line and size is not None:
                line += f" ({human_size(size)})"
        else:
            line = await _copy_objects(src, dst, stores, progress, size)
    if line and not args.quiet:
        _say(line)


async def _bounded(limit: int, actions: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Run the actions with at most ``limit`` at a time; the first error cancels the rest."""
    semaphore = anyio.Semaphore(limit)

    async def run(action: Callable[[], Awaitable[None]]) -> None:
        async with semaphore:
            await action()

    async with anyio.create_task_group() as tasks:
        for action in actions:
            tasks.start_soon(run, action)


def _prefix_of(ref: ObjectRef) -> str:
    """The listing prefix of a ``-r`` source or destination: ``dir`` and ``dir/`` are both ``dir/``."""
    key = ref.key.rstrip("/")
    return key + "/" if key else ""


async def _list_tree(stores: Stores, ref: ObjectRef) -> list[tuple[str, ObjectInfo]]:
    """(relative key, info) of every object under ``ref`` as a directory, sorted; folder markers skipped."""
    prefix = _prefix_of(ref)
    found = [(info.key[len(prefix) :], info) async for info in (await stores.objects(ref.root)).list(prefix)]
    return sorted((rel, info) for rel, info in found if rel and not rel.endswith("/"))


async def _copy_recursive(src: Ref, dst: Ref, args: argparse.Namespace, stores: Stores) -> None:
    """``cp -r``: a tree between a local directory, an object prefix and a job store."""
    if isinstance(src, LocalRef) and isinstance(dst, StoreRef):
        await _tree_into_store(src, dst, args, stores)
    elif isinstance(src, StoreRef) and isinstance(dst, LocalRef):
        await _tree_out_of_store(src, dst, args, stores)
    elif isinstance(src, LocalRef) and isinstance(dst, ObjectRef):
        if src.is_std or not await anyio.to_thread.run_sync(os.path.isdir, src.path):
            raise CLIError(f"{src.path!r} is not a directory")
        files = await anyio.to_thread.run_sync(_walk, src.path)
        objects = await stores.objects(dst.root)
        prefix = _prefix_of(dst)
        async with progress_bar(sum(f[2] for f in files), args, "cp -r") as progress:
            async def upload(path: str, relative: str) -> None:
                await objects.upload_file(path, prefix + relative, progress=progress.callback())
                progress.say(f"upload: {path} to {dst.at(prefix + relative)}")

            await _bounded(COPY_PARALLEL, [functools.partial(upload, p, r) for p, r, _, _ in files])
    elif isinstance(src, ObjectRef) and isinstance(dst, LocalRef):
        if dst.is_std:
            raise CLIError("'cp -r' needs a destination directory, not '-'")
        tree = await _list_tree(stores, src)
        if not tree:
            raise CLIError(f"nothing under {src}")
        objects = await stores.objects(src.root)
        async with progress_bar(sum(info.size for _, info in tree), args, "cp -r") as progress:
            async def download(relative: str, info: ObjectInfo) -> None:
                target = _inside(dst.path, relative)
                await anyio.to_thread.run_sync(lambda: os.makedirs(os.path.dirname(target) or ".", exist_ok=True))
                await objects.download_file(info.key, target, progress=progress.callback())
                progress.say(f"download: {src.at(info.key)} to {target}")

            await _bounded(COPY_PARALLEL, [functools.partial(download, r, i) for r, i in tree])
    elif isinstance(src, ObjectRef) and isinstance(dst, ObjectRef):
        tree = await _list_tree(stores, src)
        if not tree:
            raise CLIError(f"nothing under {src}")
        prefix = _prefix_of(dst)
        async with progress_bar(sum(info.size for _, info in tree), args, "cp -r") as progress:
            async def copy(relative: str, info: ObjectInfo) -> None:
                await _object_to_object(src.at(info.key), dst.at(prefix + relative), stores, progress)
                progress.say(f"copy: {src.at(info.key)} to {dst.at(prefix + relative)}")

            await _bounded(COPY_PARALLEL, [functools.partial(copy, r, i) for r, i in tree])
    else:
        raise CLIError("'cp -r' copies a tree between a local directory and an object prefix (DIR s3://b/p/), "
                       "between two prefixes, or into or out of a job store (DIR LOCATOR::, LOCATOR::[PREFIX] DIR)")


async def _tree_into_store(src: LocalRef, dst: StoreRef, args: argparse.Namespace, stores: Stores) -> None:
    if src.is_std or not await anyio.to_thread.run_sync(os.path.isdir, src.path):
        raise CLIError(f"{src.path!r} is not a directory")
    if dst.path:
        raise CLIError(f"{dst}: 'cp -r' into a store writes new files; copy to {dst.locator}::")
    store = await stores.job_store(dst.locator, create=args.create)
    files = await anyio.to_thread.run_sync(_walk, src.path)
    results: dict[str, str] = {}
    async with progress_bar(sum(f[2] for f in files), args, "cp -r") as progress:
        async def one(path: str, relative: str) -> None:
            file_id = await store.write_file(path, args.job_id, cleanup=args.cleanup, progress=progress.callback())
            results[relative] = str(file_id)

        await _bounded(COPY_PARALLEL, [functools.partial(one, p, r) for p, r, _, _ in files])
    for _, relative, _, _ in files:
        _say(f"{results[relative]}\t{relative}")


async def _tree_out_of_store(src: StoreRef, dst: LocalRef, args: argparse.Namespace, stores: Stores) -> None:
    if dst.is_std:
        raise CLIError("'cp -r' needs a destination directory, not '-'")
    store = await stores.job_store(src.locator)
    shared = src.is_shared_prefix
    if shared:
        infos = [info async for info in store.list_shared_files(src.path[len("shared/") :])]
    else:
        infos = [info async for info in store.list_files(src.path)]
    if not infos:
        raise CLIError(f"nothing in {src.locator} matches {src.path or '(all files)'!r}")
    async with progress_bar(sum(info.size for info in infos), args, "cp -r") as progress:
        async def fetch(info: ObjectInfo) -> None:
            target = _inside(dst.path, info.key)
            directory = os.path.dirname(target)
            await anyio.to_thread.run_sync(lambda: os.makedirs(directory, exist_ok=True))
            if shared:
                local = await stores.local(directory)
                async with store.read_shared_file_stream(info.key) as reader, \
                        local.open_writer(os.path.basename(target)) as writer:
                    await _drain(reader, writer, progress)
            else:
                await store.read_file(info.key, target, progress=progress.callback())

        await _bounded(COPY_PARALLEL, [functools.partial(fetch, info) for info in infos])
    if not args.quiet:
        _say(f"copied {len(infos)} files to {dst.path}")


async def cmd_cp(args: argparse.Namespace) -> int:
    """Copy a file (or with -r a tree) between local paths, object URLs and job stores."""
    src, dst = parse_ref(args.src), parse_ref(args.dst)
    if args.cleanup and not args.job_id:
        raise CLIError("--cleanup needs --job-id: the file is deleted with that job")
    check_options_used(args, {_scheme_of(src), _scheme_of(dst)})
    async with AsyncExitStack() as stack:
        stores = Stores(args, stack)
        if args.recursive:
            await _copy_recursive(src, dst, args, stores)
        else:
            if isinstance(src, LocalRef) and not src.is_std and await anyio.to_thread.run_sync(os.path.isdir,
                                                                                                 src.path):
                raise CLIError(f"{src.path!r} is a directory: use 'cp -r'")
            await _copy_one(src, dst, args, stores)
    return 0


# ----------------------------------------------------------------------------------------------------- sync


@dataclass
class _Entry:
    """One file or object on a side of a sync."""

    size: int
    mtime: float | None
    path: str  # a local path, or the object key


class _Side:
    """A local directory or an object prefix, as a sync sees it: its entries and their checksums."""

    def __init__(self, ref: LocalRef | ObjectRef, stores: Stores) -> None:
        self.ref = ref
        self.stores = stores
        self.prefix = _prefix_of(ref) if isinstance(ref, ObjectRef) else ""

    @property
    def local(self) -> bool:
        return isinstance(self.ref, LocalRef)

    def name(self, entry: _Entry) -> str:
        return entry.path if self.local else str(self.ref.at(entry.path))  # type: ignore[union-attr]

    async def entries(self) -> dict[str, _Entry]:
        if isinstance(self.ref, LocalRef):
            if not await anyio.to_thread.run_sync(os.path.isdir, self.ref.path):
                return {}
            files = await anyio.to_thread.run_sync(_walk, self.ref.path)
            return {rel: _Entry(size, mtime, path) for path, rel, size, mtime in files}
        return {rel: _Entry(info.size, info.mtime, info.key) for rel, info in await _list_tree(self.stores, self.ref)}

    async def checksum(self, entry: _Entry) -> int | None:
        """The CRC32C of an entry: computed for a local file, the recorded ``ajs-crc32c`` of an object."""
        if isinstance(self.ref, LocalRef):
            return await anyio.to_thread.run_sync(_file_crc32c, entry.path)
        info = await (await self.stores.objects(self.ref.root)).stat(entry.path)
        text = info.metadata.get(META_CRC32C) if info is not None else None
        return int.from_bytes(base64.b64decode(text), "big") if text else None

    def target(self, relative: str) -> str:
        """Where ``relative`` goes on this side: a local path, or a key."""
        return _inside(self.ref.path, relative) if isinstance(self.ref, LocalRef) else self.prefix + relative


async def _changed(src: _Side, source: _Entry, dst: _Side, dest: _Entry | None) -> str | None:
    """Why ``source`` must be copied over ``dest`` (None: it need not): by size, then checksum, else mtime."""
    if dest is None:
        return "new"
    if source.size != dest.size:
        return "size"
    source_crc, dest_crc = await src.checksum(source), await dst.checksum(dest)
    if source_crc is not None and dest_crc is not None:
        return "checksum" if source_crc != dest_crc else None
    if source.mtime is not None and dest.mtime is not None and source.mtime > dest.mtime:
        return "newer"
    return None


async def cmd_sync(args: argparse.Namespace) -> int:
    """Copy what changed from SRC to DST (local directory or object prefix on either side)."""
    src_ref, dst_ref = parse_ref(args.src), parse_ref(args.dst)
    for ref in (src_ref, dst_ref):
        if (isinstance(ref, LocalRef) and ref.is_std) or not isinstance(ref, (LocalRef, ObjectRef)):
            raise CLIError(f"sync works between a local directory and an object prefix, or two prefixes; not {ref}")
    if isinstance(src_ref, LocalRef) and isinstance(dst_ref, LocalRef):
        raise CLIError("sync needs an object prefix on at least one side (for two directories, use rsync)")
    check_options_used(args, {_scheme_of(src_ref), _scheme_of(dst_ref)})
    if isinstance(src_ref, LocalRef) and not await anyio.to_thread.run_sync(os.path.isdir, src_ref.path):
        raise CLIError(f"{src_ref.path!r} is not a directory")
    async with AsyncExitStack() as stack:
        stores = Stores(args, stack)
        src, dst = _Side(src_ref, stores), _Side(dst_ref, stores)  # type: ignore[arg-type]
        source, dest = await src.entries(), await dst.entries()
        plan: list[tuple[str, _Entry]] = []
        limit = anyio.Semaphore(COPY_PARALLEL)

        async def compare(relative: str, entry: _Entry) -> None:
            async with limit:
                if await _changed(src, entry, dst, dest.get(relative)):
                    plan.append((relative, entry))

        async with anyio.create_task_group() as tasks:
            for relative, entry in source.items():
                tasks.start_soon(compare, relative, entry)
        plan.sort()
        doomed = sorted(set(dest) - set(source)) if args.delete else []
        verb = ("upload" if src.local else "download" if dst.local else "copy")
        mark = "(dryrun) " if args.dryrun else ""
        async with progress_bar(0 if args.dryrun else sum(e.size for _, e in plan), args, "sync") as progress:
            async def transfer(relative: str, entry: _Entry) -> None:
                target = dst.target(relative)
                shown = target if dst.local else str(dst.ref.at(target))  # type: ignore[union-attr]
                if not args.dryrun:
                    if src.local:
                        objects = await stores.objects(dst.ref.root)  # type: ignore[union-attr]
                        await objects.upload_file(entry.path, target, progress=progress.callback())
                    elif dst.local:
                        await anyio.to_thread.run_sync(
                            lambda: os.makedirs(os.path.dirname(target) or ".", exist_ok=True))
                        objects = await stores.objects(src.ref.root)  # type: ignore[union-attr]
                        await objects.download_file(entry.path, target, progress=progress.callback())
                    else:
                        await _object_to_object(src.ref.at(entry.path), dst.ref.at(target),  # type: ignore
                                                stores, progress)
                progress.say(f"{mark}{verb}: {src.name(entry)} to {shown}")

            await _bounded(COPY_PARALLEL, [functools.partial(transfer, r, e) for r, e in plan])
            if doomed and not args.dryrun:
                if dst.local:
                    for relative in doomed:
                        await anyio.to_thread.run_sync(os.remove, dest[relative].path)
                else:
                    objects = await stores.objects(dst.ref.root)  # type: ignore[union-attr]
                    await objects.delete_many(dest[relative].path for relative in doomed)
            for relative in doomed:
                progress.say(f"{mark}delete: {dst.name(dest[relative])}")
    return 0


# -------------------------------------------------------------------------------------- ls / stat / rm / cat


def _format_time(mtime: float | None) -> str:
    return "-" if mtime is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime))


async def _ls_objects(ref: ObjectRef, args: argparse.Namespace, stores: Stores) -> None:
    """``aws s3 ls`` style: ``DATE TIME SIZE NAME``; without --recursive, ``PRE dir/`` for each next level."""
    size = human_size if args.human else str
    objects = await stores.objects(ref.root)
    # s3://b/dir/ lists inside dir/; s3://b/di lists what starts with "di" in the bucket's root folder
    base = ref.key[: ref.key.rfind("/") + 1]
    folders: list[str] = []
    rows: list[ObjectInfo] = []
    if args.recursive:
        rows = [info async for info in objects.list(ref.key)]
    else:  # one level, listed by the service (S3's and GCS's delimiter), not the whole tree below
        async for entry in objects.list_with_delimiter(ref.key):
            if isinstance(entry, CommonPrefix):
                folders.append(entry.key[len(base) :])
            else:
                rows.append(entry)
    if not rows and not folders and ref.key:
        raise NoSuchFileError(str(ref), "no object or prefix there")
    width = max([3, *(len(size(info.size)) for info in rows)])
    for folder in folders:
        _say(f"{'':19} {'PRE':>{width}} {folder}")
    for info in sorted(rows, key=lambda i: i.key):
        name = info.key if args.recursive else info.key[len(base) :]
        _say(f"{_format_time(info.mtime):<19} {size(info.size):>{width}} {name}")
    if args.summarize:
        _say(f"\nTotal Objects: {len(rows)}\n   Total Size: {size(sum(info.size for info in rows))}")


async def _ls_store(ref: StoreRef, args: argparse.Namespace, stores: Stores) -> None:
    """Jobs, files and shared files; ``LOCATOR::PREFIX`` filters what it names."""
    size = human_size if args.human else str
    store = await stores.job_store(ref.locator)
    chosen = args.jobs or args.files or args.shared
    if ref.is_shared_prefix:
        show_jobs, show_files, show_shared = args.jobs, args.files, True
        if show_files and not args.shared:
            raise CLIError(f"{ref}: a shared/ prefix names shared files; drop --files")
    elif ref.path:
        show_jobs, show_files, show_shared = args.jobs, not chosen or args.files, args.shared
    else:
        show_jobs, show_files, show_shared = (not chosen or args.jobs), (not chosen or args.files), \
            (not chosen or args.shared)
    file_prefix = "" if ref.is_shared_prefix else ref.path
    shared_prefix = ref.path[len("shared/") :] if ref.is_shared_prefix else ""

    if show_jobs:
        jobs = sorted([job async for job in store.jobs() if (job.id or "").startswith(file_prefix)],
                      key=lambda j: (j.name, j.id or ""))
        try:
            root_id = (await store.load_root_job()).id
        except NoSuchJobError:
            root_id = None
        _say(f"jobs ({len(jobs)}):")
        for job in jobs:
            mark = "  (root)" if job.id == root_id else ""
            _say(f"  {job.id}  v{job.version}  {job.name}{mark}")

    def rows(infos: list[ObjectInfo], lead: str) -> None:
        width = max((len(size(info.size)) for info in infos), default=1)
        for info in infos:
            _say(f"  {size(info.size):>{width}}  {_format_time(info.mtime)}  {lead}{info.key}")

    if show_files:
        files = sorted([info async for info in store.list_files(file_prefix)], key=lambda i: i.key)
        total = sum(info.size for info in files)
        _say(f"files ({len(files)}, {human_size(total)}):" if args.human else f"files ({len(files)}, {total} bytes):")
        rows(files, "")
    if show_shared:
        shared = sorted([info async for info in store.list_shared_files(shared_prefix)], key=lambda i: i.key)
        _say(f"shared ({len(shared)}):")
        rows(shared, "shared/")


async def cmd_ls(args: argparse.Namespace) -> int:
    """List objects under a prefix, or a job store's jobs, files and shared files."""
    ref = parse_ref(args.target)
    if isinstance(ref, LocalRef):  # a path or file: URL without '::' is a job store (ls(1) lists directories)
        parse_locator(args.target)
        ref = StoreRef(args.target, "")
    if isinstance(ref, HttpRef):
        raise CLIError("cannot list an http(s):// URL")
    check_options_used(args, {_scheme_of(ref)})
    async with AsyncExitStack() as stack:
        stores = Stores(args, stack)
        if isinstance(ref, ObjectRef):
            if args.jobs or args.files or args.shared:
                raise CLIError("--jobs, --files and --shared are for job stores (LOCATOR::PREFIX)")
            await _ls_objects(ref, args, stores)
        else:
            if args.recursive or args.summarize:
                raise CLIError("--recursive and --summarize are for object URLs (s3://bucket/prefix/)")
            await _ls_store(ref, args, stores)
    return 0


async def cmd_cat(args: argparse.Namespace) -> int:
    """Write an object, a job-store file or an http(s) resource to stdout."""
    ref = parse_ref(args.target)
    check_options_used(args, {_scheme_of(ref)})
    async with AsyncExitStack() as stack:
        stores = Stores(args, stack)
        progress = await stack.enter_async_context(progress_bar(None, args, "cat"))
        if isinstance(ref, StoreRef):
            async with _store_reader(await stores.job_store(ref.locator), ref) as reader:
                await _to_stdout(reader, progress)
        elif isinstance(ref, ObjectRef):
            if ref.is_prefix:
                raise CLIError(f"{ref} is a prefix, not an object")
            async with (await stores.objects(ref.root)).open_reader(ref.key) as reader:
                await _to_stdout(reader, progress)
        elif isinstance(ref, HttpRef):
            async with open_http(ref.url) as reader:
                await _to_stdout(_Sized(reader, ref.url), progress)
        else:
            if ref.is_std:
                raise CLIError("'cat -': nothing to do")
            local = await stores.local(os.path.dirname(os.path.abspath(ref.path)))
            async with local.open_reader(os.path.basename(ref.path)) as reader:
                await _to_stdout(reader, progress)
    return 0


async def cmd_stat(args: argparse.Namespace) -> int:
    """Show a file's, shared file's, job's or object's details."""
    ref = parse_ref(args.target)
    details: dict[str, Any]
    if isinstance(ref, ObjectRef):
        check_options_used(args, {ref.scheme})
        async with AsyncExitStack() as stack:
            stores = Stores(args, stack)
            info = await (await stores.objects(ref.root)).stat(ref.key)
        if info is None:
            raise NoSuchFileError(str(ref), "no such object")
        details = {"type": "object", "url": str(ref), "size": info.size, "modified": _format_time(info.mtime),
                   "etag": info.etag, "crc32c": info.metadata.get(META_CRC32C),
                   "metadata": {k: v for k, v in info.metadata.items() if k != META_CRC32C}}
    else:
        if not isinstance(ref, StoreRef) or not ref.path:
            raise CLIError(f"{args.target}: name LOCATOR::FILE_ID, LOCATOR::shared/NAME, LOCATOR::JOB_ID or an "
                           "object URL")
        check_options_used(args, {ref.scheme})
        async with opened(ref.locator, args) as store:
            if ref.is_job:
                job = await store.load_job(ref.path)
                details = {"type": "job", **job.to_dict()}
            else:
                if ref.shared_name is not None:
                    info = await store.stat_shared_file(ref.shared_name)
                    details = {"type": "shared file", "name": ref.shared_name}
                else:
                    info = await store.stat_file(ref.path)
                    parts = ref.path.split("/")
                    details = {"type": "file", "id": ref.path, "basename": FileID(ref.path).basename,
                               "cleanup_job": parts[2] if parts[0] == "c" else None}
                details.update({
                    "size": info.size, "executable": info.metadata.get(META_EXECUTABLE) == "1",
                    "modified": _format_time(info.mtime), "etag": info.etag,
                    "encrypted": META_KEY_SHA256 in info.metadata,
                })
    if args.json:
        _say(json.dumps(details, indent=2, default=str))
    else:
        width = max(len(k) for k in details)
        for name, value in details.items():
            shown = json.dumps(value) if name in ("data", "metadata") else value
            _say(f"{name:<{width}}  {shown}")
    return 0


async def _rm_store(ref: StoreRef, store: JobStore, force: bool) -> bool:
    """Delete a job, shared file or file; return whether it was there (a missing one raises, unless ``force``)."""
    if not ref.path:
        raise CLIError(f"{ref.locator}:: names the whole store; use '{PROG} destroy {ref.locator}'")
    if ref.is_job:
        if not await store.job_exists(ref.path):
            return _missing(NoSuchJobError(ref.path), force)
        await store.delete_job(ref.path)
    elif ref.shared_name is not None:
        if not await store.shared_file_exists(ref.shared_name):
            return _missing(NoSuchFileError(ref.path), force)
        await store.delete_shared_file(ref.shared_name)
    else:
        if not await store.file_exists(ref.path):
            return _missing(NoSuchFileError(ref.path), force)
        await store.delete_file(ref.path)
    return True


def _missing(error: Exception, force: bool) -> bool:
    if force:
        return False
    raise error


async def cmd_rm(args: argparse.Namespace) -> int:
    """Delete objects, prefixes (-r), job-store files, shared files or jobs (a job's cleanup files go with it)."""
    refs = [parse_ref(target) for target in args.targets]
    for ref in refs:
        if not isinstance(ref, (StoreRef, ObjectRef)):
            raise CLIError(f"rm deletes objects (s3://bucket/key) and job-store entries (LOCATOR::ID), not {ref}")
    check_options_used(args, {_scheme_of(ref) for ref in refs})
    async with AsyncExitStack() as stack:
        stores = Stores(args, stack)
        for ref in refs:
            if isinstance(ref, StoreRef):
                if args.recursive:
                    raise CLIError(f"{ref}: 'rm -r' deletes object prefixes; name job-store entries one by one")
                if await _rm_store(ref, await stores.job_store(ref.locator), args.force):
                    _say(f"removed {ref.path}")
                continue
            assert isinstance(ref, ObjectRef)
            objects = await stores.objects(ref.root)
            if args.recursive:
                keys = [info.key async for info in objects.list(_prefix_of(ref))]
                if not keys and not args.force:
                    raise NoSuchFileError(str(ref), "nothing under that prefix")
                await objects.delete_many(keys)
                for key in sorted(keys):
                    _say(f"removed {ref.at(key)}")
                continue
            if ref.is_prefix:
                raise CLIError(f"{ref} is a prefix: 'rm -r {ref}' deletes everything under it")
            if await objects.stat(ref.key) is None:
                if args.force:
                    continue
                raise NoSuchFileError(str(ref), "no such object")
            await objects.delete(ref.key)
            _say(f"removed {ref}")
    return 0


# ------------------------------------------------------------------------------ status / init / destroy


async def cmd_status(args: argparse.Namespace) -> int:
    """Show counts of jobs, files, bytes and unread logs, the root job and the leader's bookkeeping."""
    ref = parse_store_arg(args.store)
    check_options_used(args, {ref.scheme})
    async with opened(ref.locator, args) as store:
        summary: dict[str, Any] = dict(await store.summary())
        try:
            root = await store.load_root_job()
            summary["root_job"] = f"{root.id} ({root.name})"
        except NoSuchJobError:
            summary["root_job"] = None
        try:
            summary["leader_pid"] = await store.read_leader_pid()
        except NoSuchFileError:
            summary["leader_pid"] = None
        summary["kill_flag"] = await store.read_kill_flag()
    if args.json:
        _say(json.dumps({"store": ref.locator, **summary}, indent=2))
        return 0
    _say(f"store         {ref.locator}")
    _say(f"jobs          {summary['jobs']}")
    _say(f"files         {summary['files']}")
    _say(f"file bytes    {summary['file_bytes']} ({human_size(summary['file_bytes'])})")
    _say(f"shared files  {summary['shared_files']}")
    _say(f"unread logs   {summary['unread_logs']}")
    _say(f"root job      {summary['root_job'] or '-'}")
    _say(f"leader pid    {summary['leader_pid'] or '-'}")
    _say(f"kill flag     {'set' if summary['kill_flag'] else 'not set'}")
    return 0


async def cmd_clean(args: argparse.Namespace) -> int:
    """Reclaim what dead writers left (temp files, temporary parts, pending uploads, stale log claims)."""
    ref = parse_store_arg(args.store)
    if ref.path:
        raise CLIError(f"clean takes a store locator, not {args.store!r}")
    check_options_used(args, {ref.scheme})
    async with opened(ref.locator, args) as store:
        report = await store.clean(older_than=args.older_than)
    debris = report.debris
    if args.json:
        _say(json.dumps({"store": ref.locator, "items": debris.items, "bytes": debris.bytes,
                         "kinds": debris.kinds}, indent=2))
        return 0
    kinds = ", ".join(f"{count} {kind}{'s' if count != 1 else ''}" for kind, count in sorted(debris.kinds.items()))
    _say(f"reclaimed {debris.items} item{'s' if debris.items != 1 else ''} ({human_size(debris.bytes)})"
         + (f": {kinds}" if kinds else "") + f" older than {human_duration(args.older_than)} in {ref.locator}")
    return 0


async def cmd_init(args: argparse.Namespace) -> int:
    """Create an empty job store."""
    ref = parse_store_arg(args.store)
    if ref.path:
        raise CLIError(f"init takes a store locator, not {args.store!r}")
    if ref.scheme == "memory":
        raise CLIError(f"{ref.locator}: a memory: store lives only inside one process, so it would vanish as this "
                       "command exits; use a directory (file:/path) or a bucket")
    check_options_used(args, {ref.scheme})
    store = open_store(ref.locator, **options_for(args, ref.scheme, job_store=True))
    async with store:
        try:
            await store.initialize()
        except JobStoreExistsError:
            raise CLIError(f"a job store already exists at {ref.locator}; use it, or "
                           f"'{PROG} destroy {ref.locator}' it first") from None
    _say(f"initialized {ref.locator}")
    return 0


def _confirm(prompt: str) -> bool:
    """Ask on stderr, read one line of stdin; no stdin (closed, or at its end) is a no."""
    if sys.stdin is None or sys.stdin.closed:
        return False
    print(prompt, end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line:
        print(file=sys.stderr)
        return False
    return line.strip().lower() in ("y", "yes")


async def cmd_destroy(args: argparse.Namespace) -> int:
    """Delete a job store and everything in it, after confirmation (or --yes)."""
    ref = parse_store_arg(args.store)
    if ref.path:
        raise CLIError(f"destroy takes a store locator, not {args.store!r}")
    check_options_used(args, {ref.scheme})
    store = open_store(ref.locator, **options_for(args, ref.scheme, job_store=True))
    async with store:
        if not await store.location_exists():
            _say(f"nothing to destroy: no job store at {ref.locator}")
            return 0
        try:
            await store.resume()
        except NoSuchJobStoreError:
            if not args.force:
                raise CLIError(f"{ref.locator} exists but holds no job store; refusing to delete it "
                               "(pass --force to delete it anyway)") from None
            what = f"everything at {ref.locator} (it holds no job store)"
        else:
            counts = await store.summary()
            what = (f"the job store at {ref.locator} with {counts['jobs']} jobs, {counts['files']} files "
                    f"({human_size(counts['file_bytes'])}) and {counts['shared_files']} shared files")
        if not args.yes:
            answer = await anyio.to_thread.run_sync(
                _confirm, f"{PROG}: destroy {what}? This cannot be undone. [y/N] ")
            if not answer:
                raise CLIError(f"not destroying {ref.locator}: not confirmed (pass --yes to skip the question)")
        await store.destroy()
    _say(f"destroyed {ref.locator}")
    return 0


# ------------------------------------------------------------------------------------------------- demo


async def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo pipeline (see :mod:`aiojobstore.demo`)."""
    from . import demo

    await open_store(args.store or "file:" + tempfile.gettempdir(), **store_options(args)).close()  # check them
    result = await demo.run_demo(demo.config_from_args(args, store_options(args)))
    _say(json.dumps(result.to_dict(), indent=2) if args.json else demo.format_summary(result))
    return 0


# --------------------------------------------------------------------------------------------- the parser


def _add_transfer_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("transfer options")
    group.add_argument("--part-size", type=parse_size, metavar="SIZE", help="bytes per part (default 50MiB)")
    group.add_argument("--max-concurrency", type=int, metavar="N", help="parts in flight per transfer (default 8)")
    group.add_argument("--max-requests", type=int, metavar="N", help="requests in flight per store (default 64)")
    group.add_argument("--max-memory", type=parse_size, metavar="SIZE", help="bytes buffered per store (1GiB)")
    group.add_argument("--max-attempts", type=int, metavar="N", help="tries per request (default 5)")


def _add_s3_options(parser: argparse.ArgumentParser, *, encryption: bool) -> None:
    group = parser.add_argument_group("S3 options (credentials come from the environment)")
    group.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint, e.g. http://127.0.0.1:9000 for MinIO")
    group.add_argument("--region-name", metavar="REGION", help="S3 region")
    group.add_argument("--profile-name", metavar="PROFILE", help="AWS profile")
    gcs = parser.add_argument_group("GCS options")
    gcs.add_argument("--project", help="GCS project")
    gcs.add_argument("--service-file", metavar="PATH", help="GCS service-account JSON")
    if encryption:
        key = parser.add_argument_group("S3 and GCS encryption")
        key.add_argument("--sse-key-file", metavar="PATH", help="file holding a 32-byte key (SSE-C / CSEK)")


def _add_local_options(parser: argparse.ArgumentParser, *, codec: bool = False) -> None:
    group = parser.add_argument_group("local options")
    group.add_argument("--no-fsync", action="store_true", help="file: do not fsync (faster, not durable)")
    if codec:
        store = parser.add_argument_group("new job store options")
        store.add_argument("--codec", choices=("json", "pickle"), help="job codec of a new store (default json)")


def _add_progress_options(parser: argparse.ArgumentParser) -> None:
    bar = parser.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always show a progress bar (default: on a terminal, for copies over 4 MiB)")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show one")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bar, no 'upload:'/'download:' lines (file IDs are still printed)")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose unknown-option errors name the subcommand's usage."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # type: ignore[override]
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            sub = getattr(parsed, "subparser", None) or self
            sub.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``aiojobstore`` command."""
    parser = _Parser(
        prog=PROG, description="Copy, sync, list and delete objects and job-store files; create and destroy "
                               "job stores.",
        epilog="Objects: s3://bucket/key, gs://bucket/key, memory:NAME/KEY (a key ending in '/' is a prefix). "
               "Job-store files: LOCATOR::FILE_ID, LOCATOR::shared/NAME; LOCATOR:: alone is the store.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], Awaitable[int]], help: str,
                description: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".")
        sub.set_defaults(handler=handler, subparser=sub)
        return sub

    cp = command("cp", cmd_cp, "copy files, objects and job-store files",
                 "Copy SRC to DST: local paths ('-': stdin/stdout), object URLs (s3://, gs://, memory:, file://; "
                 "http(s):// as a source) and job-store files (LOCATOR::PATH). DST ending in '/' keeps SRC's name. "
                 "Copying into LOCATOR:: prints the new file ID.")
    cp.add_argument("src")
    cp.add_argument("dst")
    cp.add_argument("-r", "--recursive", action="store_true",
                    help="copy a tree: DIR to a prefix or back, prefix to prefix, DIR into LOCATOR:: "
                         "(prints 'FILE_ID<TAB>PATH'), LOCATOR::[PREFIX] to DIR")
    cp.add_argument("--create", action="store_true", help="initialize the destination job store if missing")
    cp.add_argument("--job-id", help="the job a new job-store file belongs to")
    cp.add_argument("--cleanup", action="store_true", help="delete the new file with its job (needs --job-id)")
    cp.add_argument("--name", help="basename of the new job-store file (default: the source's)")
    _add_progress_options(cp)
    _add_transfer_options(cp)
    _add_s3_options(cp, encryption=True)
    _add_local_options(cp, codec=True)

    sync = command("sync", cmd_sync, "copy what changed between a directory and a prefix, or two prefixes",
                   "Copy the files of SRC that DST lacks or holds in another version (by size, then CRC32C; "
                   "by modification time when an object has no checksum). SRC and DST are local directories or "
                   "object prefixes.")
    sync.add_argument("src")
    sync.add_argument("dst")
    sync.add_argument("--delete", action="store_true", help="delete what DST has and SRC has not")
    sync.add_argument("--dryrun", action="store_true", help="print what would be done, do nothing")
    _add_progress_options(sync)
    _add_transfer_options(sync)
    _add_s3_options(sync, encryption=True)

    ls = command("ls", cmd_ls, "list objects, or a job store's jobs, files and shared files",
                 "List objects under a URL (s3://bucket/prefix/; 'PRE dir/' for each folder unless --recursive), "
                 "or a job store: LOCATOR lists everything, LOCATOR::PREFIX the files whose ID starts with PREFIX, "
                 "LOCATOR::shared/PREFIX the shared files. A job store on S3 is s3://bucket/prefix:: here.")
    ls.add_argument("target", metavar="URL|LOCATOR[::PREFIX]")
    ls.add_argument("-r", "--recursive", action="store_true", help="objects: every key, not grouped by folder")
    ls.add_argument("--summarize", action="store_true", help="objects: print the count and total size")
    ls.add_argument("--jobs", action="store_true", help="job store: jobs (filtered by a PREFIX)")
    ls.add_argument("--files", action="store_true", help="job store: files")
    ls.add_argument("--shared", action="store_true", help="job store: shared files")
    ls.add_argument("-H", "--human", action="store_true", help="sizes in KiB/MiB/GiB")
    _add_s3_options(ls, encryption=False)

    cat = command("cat", cmd_cat, "write an object or a job-store file to stdout")
    cat.add_argument("target", metavar="URL|LOCATOR::ID")
    _add_transfer_options(cat)
    _add_s3_options(cat, encryption=True)

    st = command("stat", cmd_stat, "details of an object, file, shared file or job")
    st.add_argument("target", metavar="URL|LOCATOR::ID", help="an object URL, or a file ID, shared/NAME or job ID")
    st.add_argument("--json", action="store_true", help="print JSON")
    _add_s3_options(st, encryption=False)

    rm = command("rm", cmd_rm, "delete objects, prefixes, files, shared files or jobs",
                 "Delete objects (-r: everything under a prefix) or job-store files, shared files and jobs "
                 "(a job's cleanup files go with it).")
    rm.add_argument("targets", nargs="+", metavar="URL|LOCATOR::ID")
    rm.add_argument("-r", "--recursive", action="store_true", help="delete every object under the prefix")
    rm.add_argument("-f", "--force", action="store_true", help="ignore what is already gone")
    _add_s3_options(rm, encryption=False)

    status = command("status", cmd_status, "jobs, files, bytes and unread logs of a job store")
    status.add_argument("store", metavar="LOCATOR")
    status.add_argument("--json", action="store_true", help="print JSON")
    _add_s3_options(status, encryption=False)

    clean = command("clean", cmd_clean, "reclaim debris of crashed writers",
                    "Remove what dead writers left in a job store (temp files, temporary parts, pending multipart "
                    "uploads, stale log claims) older than --older-than, so live writers are never touched.")
    clean.add_argument("store", metavar="LOCATOR")
    clean.add_argument("--older-than", type=parse_duration, default=3600.0, metavar="AGE",
                       help="only debris older than this (seconds, or 30m, 2h, 1d; default 1h)")
    clean.add_argument("--json", action="store_true", help="print JSON")
    _add_s3_options(clean, encryption=False)

    init = command("init", cmd_init, "create an empty job store")
    init.add_argument("store", metavar="LOCATOR")
    _add_s3_options(init, encryption=False)
    _add_local_options(init, codec=True)

    destroy = command("destroy", cmd_destroy, "delete a job store and everything in it",
                      "Delete a job store and everything in it. Asks first unless --yes; with no answer on stdin "
                      "it refuses.")
    destroy.add_argument("store", metavar="LOCATOR")
    destroy.add_argument("-y", "--yes", action="store_true", help="do not ask")
    destroy.add_argument("--force", action="store_true", help="also delete a location that holds no job store")
    _add_s3_options(destroy, encryption=False)

    from . import demo

    demo_parser = command("demo", cmd_demo, "run the demo workflow (2 GiB by default)",
                          (demo.__doc__ or "").split("\n\n")[0])
    demo.add_arguments(demo_parser, parse_size)
    _add_transfer_options(demo_parser)
    _add_s3_options(demo_parser, encryption=True)
    _add_local_options(demo_parser, codec=True)
    return parser


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and not isinstance(error, JobStoreError) and error.strerror:
        where = f": {error.filename!r}" if error.filename else ""
        text = f"{error.strerror}{where}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


_USER_ERRORS = (CLIError, JobStoreError, OSError, ValueError, argparse.ArgumentTypeError)


def _leaves(error: BaseException) -> list[BaseException]:
    """The errors inside (nested) exception groups, as raised by task groups; ``[error]`` for a plain error."""
    inner = getattr(error, "exceptions", None)
    if not isinstance(inner, tuple):
        return [error]
    return [leaf for sub in inner for leaf in _leaves(sub)]


class _Terminated(Exception):
    """SIGTERM arrived: the command was cancelled like on SIGINT, and exits 143."""


async def _run_until_terminated(handler: Callable[[argparse.Namespace], Awaitable[int]],
                                args: argparse.Namespace) -> int:
    """Run ``handler``; SIGTERM (what ``timeout``, ``kill``, ``docker stop`` and batch schedulers send) cancels it
    as SIGINT does, so every write in flight is rolled back and leaves nothing behind."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    terminated = False

    def on_sigterm() -> None:
        nonlocal terminated
        terminated = True
        if task is not None:
            task.cancel()

    if threading.current_thread() is not threading.main_thread() or sys.platform == "win32":
        return await handler(args)  # signal handlers can only be set from the main thread, and not on Windows
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        return await handler(args)
    except asyncio.CancelledError:
        if terminated:
            raise _Terminated from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``aiojobstore`` command; return its exit status (0 ok, 1 error, 2 usage, 130 interrupted,
    143 terminated)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_run_until_terminated(args.handler, args))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"{PROG}: terminated", file=sys.stderr)
        return 143
    except BaseException as error:
        leaves = _leaves(error)
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        if all(isinstance(leaf, BrokenPipeError) for leaf in leaves):
            return 1
        user_errors = [leaf for leaf in leaves if isinstance(leaf, _USER_ERRORS)]
        if not user_errors or len(user_errors) != len(leaves):
            raise  # a bug: keep the traceback
        more = f" (and {len(leaves) - 1} more errors)" if len(leaves) > 1 else ""
        print(f"{PROG}: error: {_one_line(user_errors[0])}{more}", file=sys.stderr)
        return 1


__all__ = ["CLIError", "HttpRef", "LocalRef", "ObjectRef", "StoreRef", "build_parser", "main", "parse_ref",
           "parse_size"]


if __name__ == "__main__":
    sys.exit(main())
