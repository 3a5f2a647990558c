"""The blocking facade: the job store's API for synchronous code, same names and arguments.

One event-loop thread per process runs the async code (an anyio blocking portal on a daemon thread, so it never
holds up interpreter shutdown). After ``fork()`` the child starts its own loop thread and its stores reopen
their backend on it. Calling the facade from a thread whose event loop is running raises at once instead of
deadlocking. Streams are ordinary buffered binary (or text) file objects.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import contextlib
import functools
import io
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ._sync_generated import GeneratedJobStoreMethods, GeneratedObjectStoreMethods
from .backends.base import ObjectInfo
from .errors import JobStoreError
from .inline import run_inline
from .jobstore import FileID, Job, JobStore
from .jobstore import open_store as _open_async_store
from .objects import ObjectStore
from .objects import copy as _async_copy
from .objects import open_object_store as _open_async_object_store

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .options import ObjectStoreOptions, StoreOptions

T = TypeVar("T")
F = TypeVar("F", bound="_Facade")

STREAM_BUFFER_SIZE = 1 << 20


class _LoopThread:
    """The process's event-loop thread; restarted in a forked child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = -1
        self._stopped_pid = -1
        self._thread: threading.Thread | None = None

    def portal(self) -> BlockingPortal:
        if self._stopped_pid == os.getpid():
            raise JobStoreError("aiojobstore.sync: the interpreter is shutting down; the blocking facade is closed")
        if self._portal is not None and self._pid == os.getpid():
            return self._portal
        with self._lock:
            if self._portal is None or self._pid != os.getpid():
                self._start()
        assert self._portal is not None
        return self._portal

    def _start(self) -> None:
        ready = threading.Event()
        box: dict[str, Any] = {}

        async def serve() -> None:
            async with BlockingPortal() as portal:
                box["portal"], box["loop"] = portal, asyncio.get_running_loop()
                ready.set()
                await portal.sleep_until_stopped()

        def run() -> None:
            try:
                anyio.run(serve)
            except BaseException as error:  # pragma: no cover - reported to the starter
                box["error"] = error
                ready.set()

        thread = threading.Thread(target=run, name="aiojobstore-loop", daemon=True)
        thread.start()
        ready.wait()
        if "error" in box:
            raise JobStoreError(f"could not start the aiojobstore event-loop thread: {box['error']!r}")
        self._thread, self._portal, self._loop = thread, box["portal"], box["loop"]
        self._pid = os.getpid()
        atexit.register(self._stop_at_exit, self._pid)

    def _stop_at_exit(self, pid: int) -> None:
        """Cancel what still runs on the loop (open streams abort, leaving nothing) while the loop thread is
        alive; afterwards every call fails at once instead of waiting for a thread that no longer runs."""
        if pid != os.getpid() or self._portal is None:
            return
        portal, self._stopped_pid = self._portal, pid
        # already stopped, or too slow: the daemon thread then dies with the process
        with contextlib.suppress(Exception):
            portal.start_task_soon(portal.stop, True).result(timeout=30)

    def call(self, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run ``func(*args)`` (a coroutine function) as a task on the loop and block until it is done.

        A lock handed from the loop back to the caller is ~4x cheaper than a concurrent.futures round trip.
        """
        self.portal()
        loop = self._loop
        assert loop is not None
        done_lock = threading.Lock()
        done_lock.acquire()
        box: list[asyncio.Task[T]] = []

        def start() -> None:
            task: asyncio.Task[T] = loop.create_task(func(*args))
            box.append(task)
            task.add_done_callback(lambda _task: done_lock.release())

        loop.call_soon_threadsafe(start)
        try:
            done_lock.acquire()
        except BaseException:  # KeyboardInterrupt: cancel the task, then wait for it to wind down
            loop.call_soon_threadsafe(lambda: box and box[0].cancel())
            done_lock.acquire()
            raise
        return box[0].result()

    def is_loop_thread(self) -> bool:
        return self._thread is threading.current_thread() and self._pid == os.getpid()


_LOOP = _LoopThread()


def _check_caller(name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = _LOOP.is_loop_thread()
    else:
        running = True
    if running:
        raise JobStoreError(
            f"aiojobstore.sync: {name}() was called from a thread whose event loop is running, where it would "
            f"block the loop (or deadlock). Use the async API instead (aiojobstore.open_store(...), then "
            f"'await store.{name}(...)'), or call the blocking facade from a worker thread (asyncio.to_thread)."
        )


def run(name: str, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """Run a coroutine function on the loop thread and wait for its result."""
    _check_caller(name)
    return _LOOP.call(func, *args)


@contextmanager
def _blocking_cm(name: str, cm_factory: Callable[[], AbstractAsyncContextManager[T]]) -> Iterator[T]:
    """Enter an async context manager on the loop thread, in one task from enter to exit."""
    _check_caller(name)
    portal = _LOOP.portal()

    async def make() -> AbstractAsyncContextManager[T]:
        return cm_factory()

    with portal.wrap_async_context_manager(portal.call(make)) as value:
        yield value


# ---------------------------------------------------------------------------------------------- file objects


class _RawReader(io.RawIOBase):
    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = run("read", self._reader.read, len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _RawWriter(io.RawIOBase):
    def __init__(self, writer: Any) -> None:
        self._writer = writer

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        written: int = run("write", self._writer.write, bytes(data))
        return written


def _reader_file(reader: Any, encoding: str | None, errors: str | None) -> io.IOBase:
    buffered = io.BufferedReader(_RawReader(reader), buffer_size=STREAM_BUFFER_SIZE)
    if encoding is None and errors is None:
        return buffered
    return io.TextIOWrapper(buffered, encoding=encoding or "utf-8", errors=errors)


def _writer_file(writer: Any, encoding: str | None, errors: str | None) -> io.IOBase:
    buffered = io.BufferedWriter(_RawWriter(writer), buffer_size=STREAM_BUFFER_SIZE)
    if encoding is None and errors is None:
        return buffered
    return io.TextIOWrapper(buffered, encoding=encoding or "utf-8", errors=errors, write_through=False)


@contextmanager
def _write_stream(name: str, cm_factory: Callable[[], AbstractAsyncContextManager[Any]], encoding: str | None,
                  errors: str | None, with_id: bool) -> Iterator[Any]:
    with _blocking_cm(name, cm_factory) as value:
        writer, file_id = value if with_id else (value, None)
        file = _writer_file(writer, encoding, errors)
        yield (file, file_id) if with_id else file
        file.flush()  # on an exception nothing is flushed: the async writer discards everything
    if file_id is not None:
        file_id.size = writer.bytes_written


@contextmanager
def _read_stream(name: str, cm_factory: Callable[[], AbstractAsyncContextManager[Any]]) -> Iterator[Any]:
    with _blocking_cm(name, cm_factory) as reader:
        yield reader


# ---------------------------------------------------------------------------------------------- the facade


#: Job-store methods that are small operations: on a backend that ``runs_inline`` (memory, local disk) the facade
#: runs them in the caller's thread (:mod:`aiojobstore.inline`) instead of handing them to the loop thread.
_SMALL_OPERATIONS = frozenset({
    "load_job", "update_job", "create_job", "delete_job", "job_exists", "set_root_job", "load_root_job",
    "create_root_job", "get_empty_file_store_id", "delete_file", "file_exists", "get_file_size", "stat_file",
    "shared_file_exists", "stat_shared_file", "delete_shared_file", "write_logs", "write_leader_pid",
    "read_leader_pid", "write_kill_flag", "read_kill_flag", "write_config",
})


def _call(owner: Any, name: str, func: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``func()`` (a coroutine function of ``owner.store``): inline for a small operation of a backend that
    runs inline, else on the loop thread."""
    if name in _SMALL_OPERATIONS and owner.store.backend.runs_inline:
        _check_caller(name)
        return run_inline(func)
    return run(name, func)


class _Facade:
    """What both blocking facades share: the context manager, close, and how a call reaches the async store."""

    _store: Any
    _pid: int

    def __enter__(self: F) -> F:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the store's connections."""
        if self._store is not None and self._pid == os.getpid():
            run("close", self._store.close)

    def _call(self, name: str, func: Callable[[], Coroutine[Any, Any, T]]) -> T:
        return _call(self, name, func)

    def _collect(self, name: str, func: Callable[[], AsyncIterator[T]]) -> builtins.list[T]:
        async def collect() -> builtins.list[T]:
            return [item async for item in func()]

        return _call(self, name, collect)


class SyncJobStore(_Facade, GeneratedJobStoreMethods):
    """A :class:`~aiojobstore.jobstore.JobStore` whose methods block. Same method names and arguments."""

    def __init__(self, locator: str | os.PathLike[str], options: dict[str, Any]) -> None:
        self._locator = locator
        self._options = options
        self._store: JobStore | None = None
        self._pid = -1
        self._batch = threading.local()
        self.store  # noqa: B018 - validates the locator and options now, as open_store does

    @property
    def store(self) -> JobStore:
        """The async store behind this facade (reopened on this process's loop after a fork)."""
        if self._store is None or self._pid != os.getpid():
            previous = self._store
            async def make() -> JobStore:
                return _open_async_store(self._locator, **self._options)

            store = run("open_store", make)
            if previous is not None:  # a forked child: same store, fresh connections
                store.config, store._ready = dict(previous.config), previous._ready
            self._store, self._pid = store, os.getpid()
        return self._store

    @property
    def config(self) -> dict[str, Any]:
        return self.store.config

    @property
    def locator(self) -> str:
        return self.store.locator

    def __repr__(self) -> str:
        return f"<SyncJobStore {self.locator}>"



    def assign_job_id(self, job: Job) -> str:
        """Give ``job`` a fresh ID (without writing it) and return the ID."""
        return self.store.assign_job_id(job)

    def create_job(self, job: Job) -> Job:
        """Write a new job (assigning an ID if it has none). Inside :meth:`batch` the write is deferred."""
        pending = getattr(self._batch, "jobs", None)
        if pending is not None:
            if job.id is None:
                self.store.assign_job_id(job)
            job.version = 1
            pending.append(job)
            return job
        return _call(self, "create_job", functools.partial(self.store.create_job, job))

    def create_root_job(self, job: Job) -> Job:
        """Create ``job`` and make it the root job."""
        return _call(self, "create_root_job", functools.partial(self.store.create_root_job, job))

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Defer :meth:`create_job` writes to the end of the block; if the block raises none are written."""
        if getattr(self._batch, "jobs", None) is not None:
            yield
            return
        pending: list[Job] = []
        self._batch.jobs = pending
        try:
            yield
        finally:
            self._batch.jobs = None

        async def write_all() -> None:
            async with self.store.batch():
                for job in pending:
                    await self.store.create_job(job)

        run("batch", write_all)

    def jobs(self) -> Iterator[Job]:
        """Every job in the store."""

        async def collect() -> list[Job]:
            return [job async for job in self.store.jobs()]

        return iter(run("jobs", collect))

    def write_file_stream(self, job_id: str | None = None, cleanup: bool = False, basename: str | None = None,
                          encoding: str | None = None, errors: str | None = None, *,
                          hints: Iterable[str] | None = None) -> contextlib_cm[tuple[Any, FileID]]:
        """Yield ``(file, file_id)``: a writable file object; the file exists once the block exits cleanly."""
        return _write_stream("write_file_stream",
                             lambda: self.store.write_file_stream(job_id, cleanup, basename, hints=hints),
                             encoding, errors, with_id=True)

    def update_file_stream(self, file_id: str, encoding: str | None = None,
                           errors: str | None = None) -> contextlib_cm[Any]:
        """Yield a writable file object that replaces the file's content when the block exits cleanly."""
        return _write_stream("update_file_stream", lambda: self.store.update_file_stream(file_id),
                             encoding, errors, with_id=False)

    def write_shared_file_stream(self, shared_file_name: str, encrypted: bool | None = None,
                                 encoding: str | None = None, errors: str | None = None) -> contextlib_cm[Any]:
        """Yield a writable file object for a shared file (replaced atomically on clean exit)."""
        return _write_stream("write_shared_file_stream",
                             lambda: self.store.write_shared_file_stream(shared_file_name, encrypted),
                             encoding, errors, with_id=False)

    @contextmanager
    def read_file_stream(self, file_id: str, encoding: str | None = None,
                         errors: str | None = None) -> Iterator[Any]:
        """Yield a readable file object over the file's content."""
        with _read_stream("read_file_stream", lambda: self.store.read_file_stream(file_id)) as reader:
            yield _reader_file(reader, encoding, errors)

    @contextmanager
    def read_shared_file_stream(self, shared_file_name: str, encoding: str | None = None,
                                errors: str | None = None) -> Iterator[Any]:
        """Yield a readable file object over a shared file."""
        with _read_stream("read_shared_file_stream",
                          lambda: self.store.read_shared_file_stream(shared_file_name)) as reader:
            yield _reader_file(reader, encoding, errors)


from contextlib import AbstractContextManager as contextlib_cm  # noqa: E402


def open_store(locator: str | os.PathLike[str], **options: Unpack[StoreOptions]) -> SyncJobStore:
    """Open a job store with the blocking API (same options as :func:`aiojobstore.open_store`)."""
    return SyncJobStore(locator, dict(options))


class SyncObjectStore(_Facade, GeneratedObjectStoreMethods):
    """An :class:`~aiojobstore.objects.ObjectStore` whose methods block: same names, arguments and errors;
    streams are ordinary file objects, :meth:`list` returns a list."""

    def __init__(self, url: str | os.PathLike[str], options: dict[str, Any]) -> None:
        self._url = url
        self._options = options
        self._store: ObjectStore | None = None
        self._pid = -1
        self.store  # noqa: B018 - validates the URL and options now, as open_object_store does

    @property
    def store(self) -> ObjectStore:
        """The async store behind this facade (reopened on this process's loop after a fork)."""
        if self._store is None or self._pid != os.getpid():
            async def make() -> ObjectStore:
                return _open_async_object_store(self._url, **self._options)

            self._store, self._pid = run("open_object_store", make), os.getpid()
        return self._store

    @property
    def url(self) -> str:
        return self.store.url

    def __repr__(self) -> str:
        return f"<SyncObjectStore {self._url}>"



    @contextmanager
    def open_reader(self, key: str, *, start: int = 0, end: int | None = None) -> Iterator[io.IOBase]:
        """Yield a readable binary file object over bytes ``[start, end)`` of an object."""
        with _read_stream("open_reader", lambda: self.store.open_reader(key, start=start, end=end)) as reader:
            yield _reader_file(reader, None, None)

    @contextmanager
    def open_writer(self, key: str, *, metadata: dict[str, str] | None = None,
                    mode: str = "overwrite") -> Iterator[io.IOBase]:
        """Yield a writable binary file object; the object appears when the block exits cleanly."""
        with _write_stream("open_writer", lambda: self.store.open_writer(key, metadata=metadata, mode=mode),  # type: ignore[arg-type]
                           None, None, with_id=False) as file:
            yield file


def open_object_store(url: str | os.PathLike[str], **options: Unpack[ObjectStoreOptions]) -> SyncObjectStore:
    """Open an object store with the blocking API (same options as :func:`aiojobstore.open_object_store`)."""
    return SyncObjectStore(url, dict(options))


def copy(src_url: str | os.PathLike[str], dst_url: str | os.PathLike[str],
         **options: Unpack[ObjectStoreOptions]) -> ObjectInfo:
    """Copy one object between two locations (see :func:`aiojobstore.copy`), blocking."""
    return run("copy", functools.partial(_async_copy, src_url, dst_url, **options))


__all__ = ["SyncJobStore", "SyncObjectStore", "copy", "open_object_store", "open_store"]
