"""The ``aiojobstore`` command: copy files in and out of job stores, list, inspect, delete, destroy, run the demo.

Where a command takes a file in a store, it is written ``LOCATOR::PATH``:

================================  ===========================================================================
``file:/scratch/run1::``          the store itself: ``cp`` into it writes a new file and prints its file ID
``file:/scratch/run1::FILE_ID``   a file (IDs look like ``n/3f/3f0c…/data.bin``; ``ls`` lists them)
``file:/scratch/run1::shared/N``  the shared file named ``N``
``file:/scratch/run1::JOB_ID``    a job (for ``stat`` and ``rm``)
================================  ===========================================================================

Any locator works on the left of ``::`` (``/path``, ``file:/path``, ``memory:NAME``, ``s3://bucket/prefix``,
``aws:REGION:BUCKET``, ``gs://bucket/prefix``, ``google:PROJECT:BUCKET``). Without ``::`` an argument is a local
path (``-`` is stdin or stdout), or an object URL: ``s3://bucket/key``, ``gs://bucket/key``, ``file:///path`` and,
as a source only, ``http(s)://...``. URLs are copied into a store with ``import_file`` and out of it with
``export_file``; between a URL and a local path the bytes move directly.

Errors print one line, ``aiojobstore: error: ...``, to stderr and exit with status 1 (2 for bad usage).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import stat as stat_module
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import anyio
from tqdm import tqdm

from . import __version__, units
from .backends.base import META_KEY_SHA256, Backend, ObjectInfo
from .errors import (
    JobStoreError,
    NoSuchFileError,
    NoSuchJobError,
    NoSuchJobStoreError,
)
from .jobstore import FileID, JobStore, open_store
from .layout import META_EXECUTABLE, check_shared_file_name
from .locator import open_backend, parse_locator
from .transfer import TransferConfig
from .units import human_duration, human_size

PROG = "aiojobstore"
MiB = 1 << 20
PROGRESS_THRESHOLD = 4 * MiB
COPY_CHUNK = 4 * MiB
COPY_PARALLEL = 8
_URL = re.compile(r"^(s3|gs|file|https?)://", re.I)


class CLIError(Exception):
    """A user error the command reports as one line."""


# --------------------------------------------------------------------------------------------------- parsing


def parse_size(text: str) -> int:
    """Parse a byte count for an option (see :func:`aiojobstore.units.parse_size`)."""
    try:
        return units.parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


@dataclass(frozen=True)
class StoreRef:
    """``LOCATOR::PATH``: the store, a file ID, ``shared/NAME``, a job ID, or (``ls``, ``cp -r``) a prefix."""

    locator: str
    path: str

    @property
    def shared_name(self) -> str | None:
        return self.path[len("shared/") :] if self.path.startswith("shared/") else None

    @property
    def is_job(self) -> bool:
        return bool(self.path) and "/" not in self.path

    def __str__(self) -> str:
        return f"{self.locator}::{self.path}"


@dataclass(frozen=True)
class UrlRef:
    """An object URL outside any store: ``s3://``, ``gs://``, ``file://``, ``http(s)://``."""

    url: str

    @property
    def scheme(self) -> str:
        return urlparse(self.url).scheme.lower()

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class LocalRef:
    """A local path, or ``-`` for stdin/stdout."""

    path: str

    def __str__(self) -> str:
        return self.path


Ref = StoreRef | UrlRef | LocalRef


def parse_ref(text: str) -> Ref:
    """Classify a ``cp`` argument: ``LOCATOR::PATH``, an object URL, or a local path."""
    if "::" in text:
        locator, _, path = text.partition("::")
        if not locator:
            raise CLIError(f"{text!r}: nothing before '::'; write LOCATOR::PATH, e.g. file:/scratch/run1::shared/x")
        parse_locator(locator)  # an unknown locator fails here, with the accepted forms
        return StoreRef(locator, path.lstrip("/"))
    if _URL.match(text):
        return UrlRef(text)
    return LocalRef(text)


def parse_store_arg(text: str) -> StoreRef:
    """A ``LOCATOR`` or ``LOCATOR::PATH`` argument."""
    ref = parse_ref(text) if "::" in text else StoreRef(text, "")
    if not isinstance(ref, StoreRef):  # pragma: no cover - parse_ref returns StoreRef for '::'
        raise CLIError(f"{text!r} is not a job store locator")
    parse_locator(ref.locator)
    return ref


def store_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``open_store`` keyword options the store flags ask for (only those given)."""
    options: dict[str, Any] = {}
    for name in ("endpoint_url", "region_name", "profile_name", "project", "service_file", "part_size",
                 "max_concurrency", "max_requests", "max_memory", "max_attempts", "codec"):
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


def url_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options for a backend opened on a bare ``s3://`` / ``gs://`` URL (no fsync, codec: not store options)."""
    options = store_options(args)
    options.pop("codec", None)
    options.pop("fsync", None)
    return options


# ----------------------------------------------------------------------------------------------- the store


def open_with_options(locator: str, args: argparse.Namespace) -> JobStore:
    """``open_store`` with the store flags (an option the backend does not take raises JobStoreError)."""
    return open_store(locator, **store_options(args))


@asynccontextmanager
async def opened(locator: str, args: argparse.Namespace, *, create: bool = False) -> AsyncIterator[JobStore]:
    """An existing store (``resume``), or a new one with ``create``; closed at exit."""
    store = open_with_options(locator, args)
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


class _Progress:
    """One tqdm bar over any number of transfers; shown when asked, or on a terminal for big copies."""

    def __init__(self, total: int | None, mode: bool | None, desc: str) -> None:
        show = mode if mode is not None else (sys.stderr.isatty() and (total or 0) >= PROGRESS_THRESHOLD)
        self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not show,
                        file=sys.stderr, leave=False, dynamic_ncols=True)

    def callback(self) -> Callable[[int, int | None], None]:
        """A transfer progress callback (cumulative bytes) for one transfer."""
        last = 0

        def report(done: int, total: int | None) -> None:
            nonlocal last
            self.bar.update(done - last)
            last = done

        return report

    def add(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _url_backend(url: str, args: argparse.Namespace) -> tuple[Backend, str]:
    """The backend and key of an ``s3://bucket/key`` or ``gs://bucket/key`` URL."""
    parsed = urlparse(url)
    key = unquote(parsed.path.lstrip("/"))
    if not key or key.endswith("/"):
        raise CLIError(f"{url!r} names a bucket or a folder, not an object")
    options = url_options(args)
    transfer = TransferConfig.from_options(options)
    return open_backend(parse_locator(f"{parsed.scheme.lower()}://{parsed.netloc}"), transfer=transfer,
                        **options), key


def _file_url_path(url: str) -> str:
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise CLIError(f"{url!r}: a file URL needs an absolute path, file:///path")
    return unquote(parsed.path)


# ---------------------------------------------------------------------------------------------- local files


def _is_dir(path: str) -> bool:
    return os.path.isdir(path)


def _size_of(path: str) -> int:
    st = os.stat(path)
    if stat_module.S_ISDIR(st.st_mode):
        raise CLIError(f"{path!r} is a directory: use 'cp -r' to copy a directory")
    return st.st_size


def _walk(root: str) -> list[tuple[str, str, int]]:
    """(path, relative path, size) of every regular file under ``root``, sorted."""
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                found.append((path, os.path.relpath(path, root), os.path.getsize(path)))
    return found


def _local_target(path: str, basename: str) -> str:
    """Where a copy to ``path`` lands: inside it when it is a directory (or ends in '/')."""
    if path.endswith(os.sep) or os.path.isdir(path):
        os.makedirs(path, exist_ok=True)
        return os.path.join(path, basename)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CLIError(f"cannot copy to {path!r}: the directory {parent!r} does not exist")
    return path


async def _stream_to_local(reader: Any, path: str, progress: _Progress) -> int:
    """Write a store stream to ``path`` atomically (temp file + rename) or to stdout for ``-``."""
    if path == "-":
        out = sys.stdout.buffer
        total = 0
        while data := await reader.read(COPY_CHUNK):
            await anyio.to_thread.run_sync(out.write, data)
            total += len(data)
            progress.add(len(data))
        await anyio.to_thread.run_sync(out.flush)
        return total
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = await anyio.to_thread.run_sync(lambda: tempfile.mkstemp(prefix=".aiojobstore-", dir=directory))
    total = 0
    try:
        handle = os.fdopen(fd, "wb")
        try:
            while data := await reader.read(COPY_CHUNK):
                await anyio.to_thread.run_sync(handle.write, data)
                total += len(data)
                progress.add(len(data))
        finally:
            await anyio.to_thread.run_sync(handle.close)
        await anyio.to_thread.run_sync(os.replace, tmp, path)
    except BaseException:
        await anyio.to_thread.run_sync(lambda: os.path.exists(tmp) and os.remove(tmp))
        raise
    return total


async def _stream_from_local(path: str, writer: Any, progress: _Progress) -> int:
    """Copy a local file (or stdin for ``-``) into an async writer."""
    handle = sys.stdin.buffer if path == "-" else await anyio.to_thread.run_sync(open, path, "rb")
    total = 0
    try:
        while data := await anyio.to_thread.run_sync(handle.read, COPY_CHUNK):
            await writer.write(data)
            total += len(data)
            progress.add(len(data))
    finally:
        if path != "-":
            await anyio.to_thread.run_sync(handle.close)
    return total


# ------------------------------------------------------------------------------------------------------- cp


def _say(text: str) -> None:
    print(text, flush=True)


async def _copy_local_to_store(src: str, dst: StoreRef, store: JobStore, args: argparse.Namespace,
                               progress: _Progress) -> str:
    """Copy one local file into ``dst``; return what was written (a file ID, or shared/NAME)."""
    name = dst.shared_name
    if name is not None:
        async with store.write_shared_file_stream(check_shared_file_name(name)) as writer:
            await _stream_from_local(src, writer, progress)
        return f"shared/{name}"
    if dst.path:
        if dst.is_job:
            raise CLIError(f"{dst}: a job ID is not a file; copy to {dst.locator}:: to write a new file")
        await store.update_file(dst.path, src, progress=progress.callback())
        return dst.path
    if src == "-":
        async with store.write_file_stream(args.job_id, cleanup=args.cleanup, basename=args.name or "stdin"
                                           ) as (writer, file_id):
            await _stream_from_local(src, writer, progress)
        return str(file_id)
    if args.name:
        async with store.write_file_stream(args.job_id, cleanup=args.cleanup, basename=args.name) as (writer, fid):
            await _stream_from_local(src, writer, progress)
        return str(fid)
    return str(await store.write_file(src, args.job_id, cleanup=args.cleanup, progress=progress.callback()))


async def _copy_store_to_local(src: StoreRef, dst: str, store: JobStore, progress: _Progress) -> str:
    """Copy one file (or shared file) out of a store to ``dst``; return the local path written."""
    name = src.shared_name
    if name is not None:
        target = dst if dst == "-" else await anyio.to_thread.run_sync(_local_target, dst, name)
        async with store.read_shared_file_stream(check_shared_file_name(name)) as reader:
            await _stream_to_local(reader, target, progress)
        return target
    _check_file_ref(src)
    if dst == "-":
        async with store.read_file_stream(src.path) as reader:
            await _stream_to_local(reader, "-", progress)
        return "-"
    target = await anyio.to_thread.run_sync(_local_target, dst, FileID(src.path).basename)
    await store.read_file(src.path, target, progress=progress.callback())
    return target


def _check_file_ref(ref: StoreRef) -> None:
    if not ref.path:
        raise CLIError(f"{ref}: name a file, LOCATOR::FILE_ID or LOCATOR::shared/NAME ('{PROG} ls' lists them)")
    if ref.is_job:
        raise CLIError(f"{ref}: {ref.path!r} is a job ID, not a file ID (file IDs contain '/')")


async def _source_size(ref: Ref, store: JobStore | None, args: argparse.Namespace) -> int | None:
    if isinstance(ref, LocalRef):
        return None if ref.path == "-" else await anyio.to_thread.run_sync(_size_of, ref.path)
    if isinstance(ref, StoreRef) and store is not None:
        if ref.shared_name is not None:
            return (await store.stat_shared_file(ref.shared_name)).size
        _check_file_ref(ref)
        return await store.get_file_size(ref.path)
    return None


async def _copy_one(src: Ref, dst: Ref, args: argparse.Namespace, stack: AsyncExitStack) -> None:
    """Copy one file between any two kinds of endpoint; prints what it wrote into a store."""
    if isinstance(src, LocalRef) and src.path != "-":
        await anyio.to_thread.run_sync(_size_of, src.path)  # a missing source fails before any store is opened
    src_store = await stack.enter_async_context(opened(src.locator, args)) if isinstance(src, StoreRef) else None
    dst_store: JobStore | None = None
    if isinstance(dst, StoreRef):
        if isinstance(src, StoreRef) and src.locator == dst.locator:
            dst_store = src_store
        else:
            dst_store = await stack.enter_async_context(opened(dst.locator, args, create=args.create))
    size = await _source_size(src, src_store, args)
    progress = _Progress(size, args.progress, "cp")
    stack.callback(progress.close)

    if isinstance(src, LocalRef) and isinstance(dst, StoreRef):
        assert dst_store is not None
        _say(await _copy_local_to_store(src.path, dst, dst_store, args, progress))
    elif isinstance(src, StoreRef) and isinstance(dst, LocalRef):
        assert src_store is not None
        await _copy_store_to_local(src, dst.path, src_store, progress)
    elif isinstance(src, UrlRef) and isinstance(dst, StoreRef):
        assert dst_store is not None
        if dst.path and dst.shared_name is None:
            raise CLIError(f"{dst}: an import writes a new file; copy to {dst.locator}:: or "
                           f"{dst.locator}::shared/NAME")
        file_id = await dst_store.import_file(src.url, shared_file_name=dst.shared_name)
        _say(dst.path if file_id is None else str(file_id))
    elif isinstance(src, StoreRef) and isinstance(dst, UrlRef):
        assert src_store is not None
        if src.shared_name is not None:
            raise CLIError("export_file copies files, not shared files: copy the shared file to a local path first")
        _check_file_ref(src)
        if dst.scheme in ("http", "https"):
            raise CLIError("http(s):// URLs can only be copied from, not to")
        await src_store.export_file(src.path, dst.url)
    elif isinstance(src, StoreRef) and isinstance(dst, StoreRef):
        assert src_store is not None and dst_store is not None
        await _copy_store_to_store(src, dst, src_store, dst_store, args, progress)
    elif isinstance(src, UrlRef) and isinstance(dst, LocalRef):
        await _copy_url_local(src.url, dst.path, args, progress, download=True)
    elif isinstance(src, LocalRef) and isinstance(dst, UrlRef):
        await _copy_url_local(dst.url, src.path, args, progress, download=False)
    else:
        raise CLIError(f"neither {src} nor {dst} is in a job store: write one of them as LOCATOR::PATH "
                       "(plain files are for cp(1); URL to URL goes through a store or a local file)")


async def _copy_store_to_store(src: StoreRef, dst: StoreRef, src_store: JobStore, dst_store: JobStore,
                               args: argparse.Namespace, progress: _Progress) -> None:
    if src.shared_name is not None:
        source_cm = src_store.read_shared_file_stream(check_shared_file_name(src.shared_name))
        basename = src.shared_name
    else:
        _check_file_ref(src)
        source_cm = src_store.read_file_stream(src.path)
        basename = FileID(src.path).basename
    async with source_cm as reader:
        if dst.shared_name is not None:
            target_cm: Any = dst_store.write_shared_file_stream(check_shared_file_name(dst.shared_name))
        elif dst.path:
            _check_file_ref(dst)
            target_cm = dst_store.update_file_stream(dst.path)
        else:
            target_cm = dst_store.write_file_stream(args.job_id, cleanup=args.cleanup, basename=args.name or basename)
        async with target_cm as target:
            writer, file_id = target if isinstance(target, tuple) else (target, None)
            while data := await reader.read(COPY_CHUNK):
                await writer.write(data)
                progress.add(len(data))
    _say(str(file_id) if file_id is not None else dst.path)


async def _copy_url_local(url: str, local: str, args: argparse.Namespace, progress: _Progress, *,
                          download: bool) -> None:
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        raise CLIError("http(s):// URLs can only be imported into a store: copy to LOCATOR:: or LOCATOR::shared/NAME")
    if local == "-":
        raise CLIError("'-' (stdin/stdout) works only with a store: LOCATOR::PATH")
    if scheme == "file":
        path = _file_url_path(url)
        source, target = (path, local) if download else (local, path)
        await anyio.to_thread.run_sync(_size_of, source)
        target = await anyio.to_thread.run_sync(_local_target, target, os.path.basename(source))
        await anyio.to_thread.run_sync(_copy_local_file, source, target)
        return
    backend, key = _url_backend(url, args)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(backend.close)
        if download:
            target = await anyio.to_thread.run_sync(_local_target, local, key.rsplit("/", 1)[-1])
            await backend.download_file(key, target, progress=progress.callback())
        else:
            await anyio.to_thread.run_sync(_size_of, local)
            await backend.upload_file(local, key, progress=progress.callback())


def _copy_local_file(source: str, target: str) -> None:
    import shutil

    shutil.copyfile(source, target)


async def _copy_recursive(src: Ref, dst: Ref, args: argparse.Namespace, stack: AsyncExitStack) -> None:
    """``cp -r``: a local directory into a store (one new file per file), or a store's files into a directory."""
    if isinstance(src, LocalRef) and isinstance(dst, StoreRef):
        if not await anyio.to_thread.run_sync(_is_dir, src.path):
            raise CLIError(f"{src.path!r} is not a directory")
        if dst.path:
            raise CLIError(f"{dst}: 'cp -r' into a store writes new files; copy to {dst.locator}::")
        store = await stack.enter_async_context(opened(dst.locator, args, create=args.create))
        files = await anyio.to_thread.run_sync(_walk, src.path)
        progress = _Progress(sum(size for _, _, size in files), args.progress, "cp -r")
        stack.callback(progress.close)
        results: dict[str, str] = {}

        async def one(path: str, relative: str) -> None:
            file_id = await store.write_file(path, args.job_id, cleanup=args.cleanup, progress=progress.callback())
            results[relative] = str(file_id)

        await _bounded(COPY_PARALLEL, [(lambda p=p, r=r: one(p, r)) for p, r, _ in files])
        for _, relative, _ in files:
            _say(f"{results[relative]}\t{relative}")
        return
    if isinstance(src, StoreRef) and isinstance(dst, LocalRef):
        if dst.path == "-":
            raise CLIError("'cp -r' needs a destination directory, not '-'")
        store = await stack.enter_async_context(opened(src.locator, args))
        shared = src.path == "shared" or src.path.startswith("shared/")
        if shared:
            infos = [info async for info in store.list_shared_files(src.path[len("shared/") :])]
        else:
            infos = [info async for info in store.list_files(src.path)]
        if not infos:
            raise CLIError(f"nothing in {src.locator} matches {src.path or '(all files)'!r}")
        progress = _Progress(sum(info.size for info in infos), args.progress, "cp -r")
        stack.callback(progress.close)

        async def fetch(info: ObjectInfo) -> None:
            relative = info.key
            target = os.path.join(dst.path, *relative.split("/"))
            await anyio.to_thread.run_sync(lambda: os.makedirs(os.path.dirname(target), exist_ok=True))
            if shared:
                async with store.read_shared_file_stream(relative) as reader:
                    await _stream_to_local(reader, target, progress)
            else:
                await store.read_file(relative, target, progress=progress.callback())

        await _bounded(COPY_PARALLEL, [(lambda i=info: fetch(i)) for info in infos])
        _say(f"copied {len(infos)} files to {dst.path}")
        return
    raise CLIError("'cp -r' copies a local directory into a store (DIR LOCATOR::) or a store's files into a "
                   "local directory (LOCATOR::[PREFIX] DIR)")


async def _bounded(limit: int, actions: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Run the actions with at most ``limit`` at a time; the first error cancels the rest."""
    semaphore = anyio.Semaphore(limit)

    async def run(action: Callable[[], Awaitable[None]]) -> None:
        async with semaphore:
            await action()

    async with anyio.create_task_group() as tasks:
        for action in actions:
            tasks.start_soon(run, action)


async def cmd_cp(args: argparse.Namespace) -> int:
    """Copy a file (or with -r a directory) between local paths, stores and URLs."""
    src, dst = parse_ref(args.src), parse_ref(args.dst)
    if args.cleanup and not args.job_id:
        raise CLIError("--cleanup needs --job-id: the file is deleted with that job")
    async with AsyncExitStack() as stack:
        if args.recursive:
            await _copy_recursive(src, dst, args, stack)
        else:
            if isinstance(src, LocalRef) and src.path != "-" and await anyio.to_thread.run_sync(_is_dir, src.path):
                raise CLIError(f"{src.path!r} is a directory: use 'cp -r'")
            await _copy_one(src, dst, args, stack)
    return 0


# -------------------------------------------------------------------------------------- ls / stat / rm


async def cmd_ls(args: argparse.Namespace) -> int:
    """List a store's jobs, files and shared files (files filtered by LOCATOR::PREFIX)."""
    ref = parse_store_arg(args.store)
    show_all = not (args.jobs or args.files or args.shared)
    size = human_size if args.human else str
    async with opened(ref.locator, args) as store:
        if show_all or args.jobs:
            jobs = sorted([job async for job in store.jobs()], key=lambda j: (j.name, j.id or ""))
            try:
                root_id = (await store.load_root_job()).id
            except NoSuchJobError:
                root_id = None
            _say(f"jobs ({len(jobs)}):")
            for job in jobs:
                mark = "  (root)" if job.id == root_id else ""
                _say(f"  {job.id}  v{job.version}  {job.name}{mark}")
        if show_all or args.files:
            prefix = "" if ref.path.startswith("shared") else ref.path
            files = sorted([info async for info in store.list_files(prefix)], key=lambda i: i.key)
            total = sum(info.size for info in files)
            _say(f"files ({len(files)}, {size(total)} bytes):" if not args.human else
                 f"files ({len(files)}, {size(total)}):")
            width = max((len(size(info.size)) for info in files), default=1)
            for info in files:
                _say(f"  {size(info.size):>{width}}  {info.key}")
        if show_all or args.shared:
            shared = sorted([info async for info in store.list_shared_files()], key=lambda i: i.key)
            _say(f"shared ({len(shared)}):")
            width = max((len(size(info.size)) for info in shared), default=1)
            for info in shared:
                _say(f"  {size(info.size):>{width}}  shared/{info.key}")
    return 0


def _format_time(mtime: float | None) -> str:
    return "-" if mtime is None else time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(mtime))


async def cmd_stat(args: argparse.Namespace) -> int:
    """Show a file's, shared file's or job's details."""
    ref = parse_store_arg(args.target)
    if not ref.path:
        raise CLIError(f"{args.target}: name a file ID, shared/NAME or job ID after '::' ('{PROG} ls' lists them)")
    async with opened(ref.locator, args) as store:
        details: dict[str, Any]
        if ref.is_job:
            job = await store.load_job(ref.path)
            details = {"type": "job", **job.to_dict()}
        else:
            if ref.shared_name is not None:
                info = await store.stat_shared_file(ref.shared_name)
                details = {"type": "shared file", "name": ref.shared_name}
            else:
                info = await store.stat_file(ref.path)
                file_id = FileID(ref.path)
                parts = ref.path.split("/")
                details = {"type": "file", "id": ref.path, "basename": file_id.basename,
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
            shown = json.dumps(value) if name == "data" else value
            _say(f"{name:<{width}}  {shown}")
    return 0


async def cmd_rm(args: argparse.Namespace) -> int:
    """Delete files, shared files or jobs (a job's cleanup files go with it)."""
    refs = [parse_store_arg(target) for target in args.targets]
    async with AsyncExitStack() as stack:
        stores: dict[str, JobStore] = {}
        for ref in refs:
            if not ref.path:
                raise CLIError(f"{ref.locator}:: names the whole store; use '{PROG} destroy {ref.locator}'")
            if ref.locator not in stores:
                stores[ref.locator] = await stack.enter_async_context(opened(ref.locator, args))
            store = stores[ref.locator]
            if ref.is_job:
                if not await store.job_exists(ref.path) and not args.force:
                    raise NoSuchJobError(ref.path)
                await store.delete_job(ref.path)
            elif ref.shared_name is not None:
                if not await store.shared_file_exists(ref.shared_name) and not args.force:
                    raise NoSuchFileError(ref.path)
                await store.delete_shared_file(ref.shared_name)
            else:
                if not await store.file_exists(ref.path) and not args.force:
                    raise NoSuchFileError(ref.path)
                await store.delete_file(ref.path)
            _say(f"removed {ref.path}")
    return 0


# ------------------------------------------------------------------------------ status / init / destroy


async def cmd_status(args: argparse.Namespace) -> int:
    """Show counts of jobs, files, bytes and unread logs, the root job and the leader's bookkeeping."""
    ref = parse_store_arg(args.store)
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


def parse_duration(text: str) -> float:
    """Parse a duration for an option (see :func:`aiojobstore.units.parse_duration`)."""
    try:
        return units.parse_duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


async def cmd_init(args: argparse.Namespace) -> int:
    """Create an empty job store."""
    ref = parse_store_arg(args.store)
    async with open_with_options(ref.locator, args) as store:
        await store.initialize()
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
    store = open_with_options(ref.locator, args)
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

    await open_with_options(args.store or "file:" + tempfile.gettempdir(), args).close()  # check the options
    result = await demo.run_demo(demo.config_from_args(args, store_options(args)))
    _say(json.dumps(result.to_dict(), indent=2) if args.json else demo.format_summary(result))
    return 0


# --------------------------------------------------------------------------------------------- the parser


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("store options (anything not given comes from the environment)")
    group.add_argument("--endpoint-url", metavar="URL", help="S3 endpoint, e.g. http://127.0.0.1:9000 for MinIO")
    group.add_argument("--region-name", metavar="REGION", help="S3 region")
    group.add_argument("--profile-name", metavar="PROFILE", help="AWS profile")
    group.add_argument("--project", help="GCS project")
    group.add_argument("--service-file", metavar="PATH", help="GCS service-account JSON")
    group.add_argument("--sse-key-file", metavar="PATH", help="file holding a 32-byte encryption key (SSE-C/CSEK)")
    group.add_argument("--part-size", type=parse_size, metavar="SIZE", help="bytes per part (default 50MiB)")
    group.add_argument("--max-concurrency", type=int, metavar="N", help="parts in flight per transfer (default 8)")
    group.add_argument("--max-requests", type=int, metavar="N", help="requests in flight per store (default 64)")
    group.add_argument("--max-memory", type=parse_size, metavar="SIZE", help="bytes buffered per store (1GiB)")
    group.add_argument("--max-attempts", type=int, metavar="N", help="tries per request (default 5)")
    group.add_argument("--no-fsync", action="store_true", help="file: stores: do not fsync (faster, not durable)")
    group.add_argument("--codec", choices=("json", "pickle"), help="job codec of a new store (default json)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``aiojobstore`` command."""
    common = argparse.ArgumentParser(add_help=False)
    _add_store_options(common)
    parser = argparse.ArgumentParser(
        prog=PROG, description="Copy files in and out of aiojobstore job stores, inspect and destroy them.",
        epilog="A file in a store is LOCATOR::FILE_ID or LOCATOR::shared/NAME (LOCATOR:: alone is the store); "
               "e.g. aiojobstore cp data.bin file:/scratch/run1:: prints the new file's ID.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    cp = commands.add_parser("cp", parents=[common], help="copy files between local paths, stores and URLs",
                             description="Copy SRC to DST. Either is a local path ('-': stdin/stdout), "
                                         "LOCATOR::PATH, or an s3://, gs://, file:// (or source-only http(s)://) "
                                         "URL. Writing into LOCATOR:: prints the new file ID.")
    cp.add_argument("src")
    cp.add_argument("dst")
    cp.add_argument("-r", "--recursive", action="store_true",
                    help="DIR LOCATOR:: writes every file under DIR (prints 'FILE_ID<TAB>PATH'); "
                         "LOCATOR::[PREFIX] DIR copies every file whose ID starts with PREFIX "
                         "(LOCATOR::shared/ for shared files) into DIR")
    cp.add_argument("--create", action="store_true", help="initialize the destination store if it does not exist")
    cp.add_argument("--job-id", help="the job a new file belongs to")
    cp.add_argument("--cleanup", action="store_true", help="delete the new file with its job (needs --job-id)")
    cp.add_argument("--name", help="basename of the new file (default: the source's)")
    bar = cp.add_mutually_exclusive_group()
    bar.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="always show a progress bar (default: on a terminal, for copies over 4 MiB)")
    bar.add_argument("-q", "--no-progress", dest="progress", action="store_false", help="never show one")
    cp.set_defaults(handler=cmd_cp)

    ls = commands.add_parser("ls", parents=[common], help="list jobs, files and shared files",
                             description="List a store's jobs, files (with sizes) and shared files. "
                                         "LOCATOR::PREFIX lists only files whose ID starts with PREFIX.")
    ls.add_argument("store", metavar="LOCATOR[::PREFIX]")
    ls.add_argument("--jobs", action="store_true", help="only jobs")
    ls.add_argument("--files", action="store_true", help="only files")
    ls.add_argument("--shared", action="store_true", help="only shared files")
    ls.add_argument("-H", "--human", action="store_true", help="sizes in KiB/MiB/GiB")
    ls.set_defaults(handler=cmd_ls)

    st = commands.add_parser("stat", parents=[common], help="details of a file, shared file or job")
    st.add_argument("target", metavar="LOCATOR::ID", help="a file ID, shared/NAME or job ID")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(handler=cmd_stat)

    rm = commands.add_parser("rm", parents=[common], help="delete files, shared files or jobs",
                             description="Delete files, shared files or jobs; deleting a job deletes its "
                                         "cleanup files.")
    rm.add_argument("targets", nargs="+", metavar="LOCATOR::ID")
    rm.add_argument("-f", "--force", action="store_true", help="no error for something already gone")
    rm.set_defaults(handler=cmd_rm)

    status = commands.add_parser("status", parents=[common], help="jobs, files, bytes and unread logs of a store")
    status.add_argument("store", metavar="LOCATOR")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=cmd_status)

    clean = commands.add_parser("clean", parents=[common], help="reclaim debris of crashed writers",
                                description="Remove what writers that died left in a store: temp files (file:), "
                                            "temporary parts (GCS), pending multipart uploads (S3) and stale log "
                                            "claims, if older than --older-than, so live writers are never "
                                            "touched. Jobs are kept.")
    clean.add_argument("store", metavar="LOCATOR")
    clean.add_argument("--older-than", type=parse_duration, default=3600.0, metavar="AGE",
                       help="only debris older than this (seconds, or 30m, 2h, 1d; default 1h)")
    clean.add_argument("--json", action="store_true", help="print JSON")
    clean.set_defaults(handler=cmd_clean)

    init = commands.add_parser("init", parents=[common], help="create an empty job store")
    init.add_argument("store", metavar="LOCATOR")
    init.set_defaults(handler=cmd_init)

    destroy = commands.add_parser("destroy", parents=[common], help="delete a job store and everything in it",
                                  description="Delete a job store and everything in it. Asks first unless "
                                              "--yes; with no answer on stdin it refuses.")
    destroy.add_argument("store", metavar="LOCATOR")
    destroy.add_argument("-y", "--yes", action="store_true", help="do not ask")
    destroy.add_argument("--force", action="store_true",
                         help="also delete a location that exists but holds no job store")
    destroy.set_defaults(handler=cmd_destroy)

    from . import demo

    demo_parser = commands.add_parser("demo", parents=[common], help="run the demo workflow (2 GiB by default)",
                                      description=(demo.__doc__ or "").split("\n\n")[0])
    demo.add_arguments(demo_parser, parse_size)
    demo_parser.set_defaults(handler=cmd_demo)
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

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
        return await handler(args)
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


__all__ = ["CLIError", "LocalRef", "StoreRef", "UrlRef", "build_parser", "main", "parse_ref", "parse_size"]


if __name__ == "__main__":
    sys.exit(main())
