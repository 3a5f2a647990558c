"""The blocking facade: same API, real file objects, safe in a running loop, after fork and at exit."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from aiojobstore import ConcurrentModificationError, Job, JobStoreError, NoSuchFileError
from aiojobstore.sync import open_store


@pytest.fixture
def sync_store(tmp_path):
    with open_store(f"file:{tmp_path}/store", part_size=5 * 2**20) as store:
        store.initialize()
        yield store
        store.destroy()


def test_copyfileobj_works_both_ways(sync_store, tmp_path):
    data = os.urandom(3 * 2**20 + 17)
    with sync_store.write_file_stream(basename="blob") as (f, file_id):
        assert isinstance(f, io.BufferedIOBase)
        shutil.copyfileobj(io.BytesIO(data), f)
    assert file_id.size == len(data) and sync_store.get_file_size(file_id) == len(data)
    out = io.BytesIO()
    with sync_store.read_file_stream(file_id) as f:
        shutil.copyfileobj(f, out)
    assert out.getvalue() == data
    with sync_store.read_file_stream(file_id) as f:
        buffer = bytearray(1000)
        assert f.readinto(buffer) == 1000 and bytes(buffer) == data[:1000]
        assert f.read(10) == data[1000:1010]


def test_text_streams_iterate_lines(sync_store):
    with sync_store.write_shared_file_stream("notes.txt", encoding="utf-8") as f:
        f.write("one ✓\ntwo\nthree\n")
    with sync_store.read_shared_file_stream("notes.txt", encoding="utf-8") as f:
        assert list(f) == ["one ✓\n", "two\n", "three\n"]


def test_jobs_batch_and_stale_update(sync_store):
    with sync_store.batch():
        created = [sync_store.create_job(Job(name=f"j{i}")) for i in range(20)]
        assert not sync_store.job_exists(created[0].id)
    assert len(list(sync_store.jobs())) == 20
    first, second = sync_store.load_job(created[0].id), sync_store.load_job(created[0].id)
    sync_store.update_job(first)
    with pytest.raises(ConcurrentModificationError):
        sync_store.update_job(second)


def test_write_stream_that_raises_leaves_nothing(sync_store):
    captured = {}
    with pytest.raises(KeyError), sync_store.write_file_stream() as (f, file_id):
        captured["id"] = file_id
        f.write(b"partial" * 100000)
        raise KeyError("boom")
    assert not sync_store.file_exists(captured["id"])
    with pytest.raises(NoSuchFileError):
        sync_store.get_file_size(captured["id"])


def test_sync_facade_inside_running_loop_raises(sync_store):
    async def misuse() -> None:
        sync_store.job_exists("abc")

    with pytest.raises(JobStoreError, match="async API"):
        asyncio.run(misuse())


def test_sync_facade_works_in_forked_child(sync_store):
    job = sync_store.create_job(Job(name="parent"))
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            loaded = sync_store.load_job(job.id)
            child_job = sync_store.create_job(Job(name="from-child"))
            os.write(write_end, f"{loaded.name} {child_job.id}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    message = os.read(read_end, 1000).decode()
    os.waitpid(pid, 0)
    name, child_job_id = message.split()
    assert name == "parent"
    assert sync_store.load_job(child_job_id).name == "from-child"


def test_interpreter_exits_with_open_store_and_stream(tmp_path):
    script = textwrap.dedent(f"""
        from aiojobstore.sync import open_store
        store = open_store("file:{tmp_path}/s")
        store.initialize()
        stream = store.write_file_stream()
        f, file_id = stream.__enter__()
        f.write(b"never committed")
        print("done")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"


def test_small_operations_on_memory_run_in_the_callers_thread():
    """With the loop thread blocked, small facade calls on a backend that runs inline still complete: they never
    went through the loop. (Were they handed over, the watchdog would have to unblock the loop.)"""
    import threading

    from aiojobstore.sync import _LOOP

    with open_store("memory:inline-test") as store:
        store.initialize()
        job = store.create_job(Job(name="j", data=1))
        loop_blocked, release = threading.Event(), threading.Event()
        watchdog_fired: list[bool] = []

        async def block_loop() -> None:
            loop_blocked.set()
            release.wait()  # blocks the loop thread itself

        def watchdog() -> None:
            if not release.wait(20):
                watchdog_fired.append(True)
                release.set()

        threading.Thread(target=watchdog, daemon=True).start()
        _LOOP.portal().start_task_soon(block_loop)
        assert loop_blocked.wait(10)
        try:
            loaded = store.load_job(job.id)
            loaded.data = 2
            store.update_job(loaded)
            assert store.load_job(job.id).data == 2 and store.job_exists(job.id)
            store.write_logs("inline")
        finally:
            release.set()
        assert not watchdog_fired
        assert store.read_logs(lambda data: None) == 1  # through the loop again, once it is free


def test_small_operations_on_file_run_inline_with_the_same_results(tmp_path):
    """file: runs small operations inline too; the results and errors are those of the async API."""
    from aiojobstore import NoSuchJobError

    with open_store(f"file:{tmp_path}/store") as store:
        store.initialize()
        job = store.create_job(Job(name="j", data={"n": 1}))
        stale = store.load_job(job.id)
        job.data["n"] = 2
        store.update_job(job)
        with pytest.raises(ConcurrentModificationError):
            store.update_job(stale)
        store.delete_job(job.id)
        with pytest.raises(NoSuchJobError):
            store.load_job(job.id)
        assert not store.job_exists(job.id)


def test_the_generated_facade_is_up_to_date_with_the_async_source():
    """tools/gen_sync.py writes the facade's methods from JobStore and ObjectStore; a change to either without
    rerunning it fails here."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "tools" / "gen_sync.py"), "--check"], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_every_public_async_method_has_a_blocking_twin_with_the_same_parameters():
    import inspect

    from aiojobstore import JobStore, ObjectStore
    from aiojobstore.sync import SyncJobStore, SyncObjectStore

    for async_cls, sync_cls in ((JobStore, SyncJobStore), (ObjectStore, SyncObjectStore)):
        for name, member in inspect.getmembers(async_cls):
            if name.startswith("_") or not callable(member):
                continue
            assert hasattr(sync_cls, name), f"{sync_cls.__name__} lacks {name}"
            if name in ("batch",):
                continue
            async_params = list(inspect.signature(member).parameters)
            sync_params = list(inspect.signature(getattr(sync_cls, name)).parameters)
            assert async_params == sync_params, (name, async_params, sync_params)
