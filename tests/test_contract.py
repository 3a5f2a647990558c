"""The job-store contract: every promise checked on every backend (see BACKENDS in conftest.py).

Each test uses two store objects on one location where it matters: ``store`` initialized it, ``other``
resumed it, so what one writes the other must see.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from aiojobstore import (
    ConcurrentModificationError,
    EncryptionKeyError,
    FileID,
    InvalidKeyError,
    Job,
    JobStore,
    JobStoreError,
    JobStoreExistsError,
    NoSuchFileError,
    NoSuchJobError,
    NoSuchJobStoreError,
)
from tests.conftest import PART_SIZE, open_target

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def pattern(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(f"{seed}".encode()).digest() * 2048  # 64 KiB of non-repeating-looking bytes
    return (block * (size // len(block) + 1))[:size]


# ------------------------------------------------------------------------------------------------ lifecycle


async def test_initialize_twice_raises_exists(store_target, store):
    second = open_target(store_target)
    with pytest.raises(JobStoreExistsError, match="resume"):
        await second.initialize()
    await second.close()


async def test_resume_of_missing_store_raises(store_target):
    job_store = open_target(store_target)
    with pytest.raises(NoSuchJobStoreError, match="initialize"):
        await job_store.resume()
    await job_store.close()


async def test_destroy_is_idempotent_and_works_on_never_created_store(store_target):
    job_store = open_target(store_target)
    await job_store.destroy()
    await job_store.initialize()
    await job_store.write_logs("x")
    await job_store.destroy()
    await job_store.destroy()
    with pytest.raises(NoSuchJobStoreError):
        await job_store.resume()
    await job_store.close()


async def test_config_is_persisted(store, other):
    assert other.config["purpose"] == "tests"
    store.config["extra"] = 7
    await store.write_config()
    third = open_target_like(store)
    await third.resume()
    assert third.config["extra"] == 7
    await third.close()


async def test_write_config_refuses_to_overwrite_a_newer_config(store, other):
    other.config["writer"] = "other"
    await other.write_config()
    store.config["writer"] = "store"
    with pytest.raises(ConcurrentModificationError, match="resume"):
        await store.write_config()
    third = open_target_like(store)
    await third.resume()
    assert third.config["writer"] == "other"
    await store.resume()
    store.config["writer"] = "store"
    await store.write_config()
    await third.resume()
    assert third.config["writer"] == "store"
    await third.close()


def open_target_like(job_store: JobStore) -> JobStore:
    from aiojobstore import open_store

    return open_store(job_store.locator, **job_store._backend_options)


async def test_methods_before_initialize_raise_clear_error(store_target):
    job_store = open_target(store_target)
    with pytest.raises(JobStoreError, match="initialize"):
        await job_store.load_job("abc")
    await job_store.close()


# ----------------------------------------------------------------------------------------------------- jobs


async def test_job_round_trip_between_store_objects(store, other):
    job = await store.create_job(Job(name="align", data={"sample": 7, "files": ["a", "b"]}))
    assert job.id and job.version == 1
    loaded = await other.load_job(job.id)
    assert loaded == job
    assert await other.job_exists(job.id)


async def test_update_job_bumps_version_and_is_seen_by_others(store, other):
    job = await store.create_job(Job(name="j", data=[1]))
    job.data.append(2)
    await store.update_job(job)
    assert job.version == 2
    assert (await other.load_job(job.id)).data == [1, 2]


async def test_stale_update_is_refused(store, other):
    job = await store.create_job(Job(name="j", data=0))
    mine, theirs = await store.load_job(job.id), await other.load_job(job.id)
    theirs.data = "theirs"
    await other.update_job(theirs)
    mine.data = "mine"
    with pytest.raises(ConcurrentModificationError, match="load_job"):
        await store.update_job(mine)
    assert (await store.load_job(job.id)).data == "theirs"


async def test_concurrent_updates_exactly_one_wins(store, other):
    job = await store.create_job(Job(name="j", data=0))
    copies = [await (store if i % 2 else other).load_job(job.id) for i in range(8)]
    outcomes: list[str] = []

    async def update(index: int, copy: Job) -> None:
        copy.data = index
        try:
            await (store if index % 2 else other).update_job(copy)
            outcomes.append("won")
        except ConcurrentModificationError:
            outcomes.append("lost")

    async with anyio.create_task_group() as tasks:
        for index, copy in enumerate(copies):
            tasks.start_soon(update, index, copy)
    assert outcomes.count("won") == 1
    assert (await store.load_job(job.id)).version == 2


async def test_missing_job_errors(store):
    with pytest.raises(NoSuchJobError):
        await store.load_job("0123456789abcdef0123456789abcdef")
    ghost = Job(name="ghost", id="0123456789abcdef0123456789abcdef", version=1)
    with pytest.raises(NoSuchJobError):
        await store.update_job(ghost)
    with pytest.raises(NoSuchJobError):
        await store.load_job("../../etc/passwd")
    assert not await store.job_exists("../x")
    await store.delete_job("0123456789abcdef0123456789abcdef")  # idempotent


async def test_create_job_with_existing_id_is_refused(store):
    job = await store.create_job(Job(name="a"))
    with pytest.raises(ConcurrentModificationError):
        await store.create_job(Job(name="b", id=job.id))
    assert (await store.load_job(job.id)).name == "a"


async def test_batch_of_100_jobs_is_written_at_exit(store, other):
    async with store.batch():
        jobs = [await store.create_job(Job(name=f"job{i}", data=i)) for i in range(100)]
        assert not await other.job_exists(jobs[0].id)
    names = sorted([job.name async for job in other.jobs()])
    assert names == sorted(f"job{i}" for i in range(100))


async def test_batch_that_raises_writes_nothing(store):
    with pytest.raises(RuntimeError):
        async with store.batch():
            await store.create_job(Job(name="never"))
            raise RuntimeError("boom")
    assert [job async for job in store.jobs()] == []


async def test_root_job(store, other):
    root = await store.create_root_job(Job(name="root"))
    assert (await other.load_root_job()).id == root.id
    with pytest.raises(NoSuchJobError):
        await open_empty_root(store)


async def open_empty_root(job_store: JobStore) -> Job:
    await job_store.delete_job((await job_store.load_root_job()).id)
    return await job_store.load_root_job()


@pytest.mark.parametrize("count", [1, 10, 20])
async def test_delete_job_removes_its_cleanup_files(store, other, count):
    job = await store.create_job(Job(name="owner"))
    keep = await store.create_job(Job(name="keeper"))
    cleanup = []
    for i in range(count):
        async with store.write_file_stream(job.id, cleanup=True, basename=f"f{i}") as (writer, file_id):
            await writer.write(b"x" * i)
        cleanup.append(file_id)
    async with store.write_file_stream(job.id, cleanup=False) as (writer, kept_file):
        await writer.write(b"stays")
    async with store.write_file_stream(keep.id, cleanup=True) as (writer, other_job_file):
        await writer.write(b"stays too")
    await other.delete_job(job.id)
    assert not await store.job_exists(job.id)
    for file_id in cleanup:
        assert not await store.file_exists(file_id)
    assert await store.file_exists(kept_file)
    assert await store.file_exists(other_job_file)
    await other.delete_job(job.id)  # idempotent


# ---------------------------------------------------------------------------- backend primitives under jobs


async def test_update_object_never_loses_an_increment(store, other):
    await store.backend.put_bytes("counter", b"0")

    async def increment(backend) -> None:
        while True:
            try:
                await backend.update_object("counter", lambda raw: str(int(raw) + 1).encode())
                return
            except ConcurrentModificationError:
                await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tasks:
        for index in range(12):
            tasks.start_soon(increment, (store if index % 2 else other).backend)
    assert await other.backend.get_bytes("counter") == b"12"


async def test_update_object_whose_edit_raises_keeps_the_object(store):
    await store.backend.put_bytes("record", b"old")

    def refuse(raw: bytes) -> bytes:
        raise ValueError(f"refusing {raw!r}")

    with pytest.raises(ValueError, match="refusing b'old'"):
        await store.backend.update_object("record", refuse)
    assert await store.backend.get_bytes("record") == b"old"
    with pytest.raises(NoSuchFileError):
        await store.backend.update_object("no-such-record", lambda raw: raw)
    assert await store.backend.stat("no-such-record") is None


async def test_list_without_metadata_lists_the_same_keys_and_sizes(store, other):
    await store.backend.put_bytes("l/a", b"12", metadata={"note": "x"})
    await store.backend.put_bytes("l/b/c", b"345")
    full = sorted([(i.key, i.size) async for i in other.backend.list("l/")])
    bare = sorted([(i.key, i.size) async for i in other.backend.list("l/", metadata=False)])
    assert full == bare == [("l/a", 2), ("l/b/c", 3)]
    assert [i.metadata.get("note") async for i in other.backend.list("l/a")] == ["x"]


async def test_delete_prefix_deletes_only_under_the_prefix(store, other):
    for key in ["d/job1/a", "d/job1/sub/b", "d/job10/c", "d/job1x", "e/job1/d"]:
        await store.backend.put_bytes(key, key.encode())
    await other.backend.delete_prefix("d/job1/")
    left = sorted([info.key async for info in store.backend.list("")])
    assert [key for key in left if key.startswith(("d/", "e/"))] == ["d/job10/c", "d/job1x", "e/job1/d"]
    await other.backend.delete_prefix("d/job1/")  # nothing left there: not an error


# ---------------------------------------------------------------------------------------------------- files


SIZES = [0, 1, PART_SIZE - 1, PART_SIZE, PART_SIZE + 1, int(2.3 * PART_SIZE)]


@pytest.mark.parametrize("size", SIZES)
async def test_write_file_and_read_file_round_trip(store, other, tmp_path, size):
    data = pattern(size, size)
    src = tmp_path / "input.bin"
    src.write_bytes(data)
    file_id = await store.write_file(src)
    assert isinstance(file_id, FileID) and file_id.endswith("/input.bin") and file_id.size == size
    assert await other.get_file_size(file_id) == size
    dst = tmp_path / "out" / "copy.bin"
    dst.parent.mkdir()
    await other.read_file(file_id, dst)
    assert md5(dst.read_bytes()) == md5(data)


@pytest.mark.parametrize("size", SIZES)
async def test_write_stream_and_read_stream_round_trip(store, other, size):
    data = pattern(size, size + 1)
    async with store.write_file_stream(basename="s.bin") as (writer, file_id):
        for offset in range(0, size, 777_777):  # odd-sized writes across part boundaries
            await writer.write(data[offset : offset + 777_777])
    assert file_id.size == size
    async with other.read_file_stream(file_id) as reader:
        chunks = [chunk async for chunk in reader]
    assert md5(b"".join(chunks)) == md5(data)
    async with other.read_file_stream(file_id) as reader:
        head = await reader.read(1000)
        rest = await reader.read()
    assert head + rest == data


async def test_executable_bit_survives_round_trip(store, other, tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    plain = tmp_path / "data.txt"
    plain.write_text("data")
    exe_id = await store.write_file(script)
    plain_id = await store.write_file(plain)
    assert exe_id.executable and not plain_id.executable
    await other.read_file(str(exe_id), tmp_path / "run-copy.sh")  # a plain str ID works too
    await other.read_file(str(plain_id), tmp_path / "data-copy.txt")
    assert os.access(tmp_path / "run-copy.sh", os.X_OK)
    assert not os.access(tmp_path / "data-copy.txt", os.X_OK)


async def test_failed_write_stream_leaves_nothing(store, tmp_path):
    before = await all_keys(store)
    captured = {}
    with pytest.raises(RuntimeError, match="halfway"):
        async with store.write_file_stream() as (writer, file_id):
            captured["id"] = file_id
            await writer.write(pattern(PART_SIZE * 2 + 100))
            raise RuntimeError("halfway")
    assert not await store.file_exists(captured["id"])
    assert await all_keys(store) == before
    assert_no_temp_files(store)


async def test_cancelled_write_stream_leaves_nothing(store):
    before = await all_keys(store)
    captured = {}
    with anyio.move_on_after(30) as scope:
        async with store.write_file_stream() as (writer, file_id):
            captured["id"] = file_id
            await writer.write(pattern(PART_SIZE + 10))
            scope.cancel()
            await anyio.sleep(5)
            await writer.write(b"never")
    assert scope.cancelled_caught
    assert not await store.file_exists(captured["id"])
    assert await all_keys(store) == before
    assert_no_temp_files(store)


async def test_update_stream_that_raises_keeps_old_content(store, other):
    async with store.write_file_stream() as (writer, file_id):
        await writer.write(b"old content")
    with pytest.raises(ValueError):
        async with other.update_file_stream(file_id) as writer:
            await writer.write(pattern(PART_SIZE + 5))
            raise ValueError("stop")
    async with store.read_file_stream(file_id) as reader:
        assert await reader.read() == b"old content"
    assert_no_temp_files(store)


async def test_update_file_and_update_stream_replace_content(store, other, tmp_path):
    file_id = await store.get_empty_file_store_id(basename="later.txt")
    assert await other.get_file_size(file_id) == 0 and file_id.endswith("later.txt")
    async with other.update_file_stream(file_id) as writer:
        await writer.write(b"second")
    async with store.read_file_stream(file_id) as reader:
        assert await reader.read() == b"second"
    src = tmp_path / "third"
    src.write_bytes(b"third!")
    await store.update_file(file_id, src)
    assert await other.get_file_size(file_id) == 6


async def test_partial_read_then_exit_does_not_hang(store):
    async with store.write_file_stream() as (writer, file_id):
        await writer.write(pattern(3 * PART_SIZE))
    with anyio.fail_after(60):
        for _ in range(3):
            async with store.read_file_stream(file_id) as reader:
                assert len(await reader.read(10)) == 10


async def test_text_mode_streams(store, other):
    text = "naïve café ✓\nsecond line\n" * 1000
    async with store.write_file_stream(encoding="utf-8") as (writer, file_id):
        await writer.write(text)
    async with other.read_file_stream(file_id, encoding="utf-8") as reader:
        first = await reader.readline()
        rest = await reader.read()
    assert first == "naïve café ✓\n" and first + rest == text
    with pytest.raises(TypeError, match="str"):
        async with store.write_file_stream(encoding="utf-8") as (writer, _):
            await writer.write(b"bytes")


async def test_missing_file_errors(store, tmp_path):
    async with store.write_file_stream() as (writer, file_id):
        await writer.write(b"x")
    await store.delete_file(file_id)
    await store.delete_file(file_id)  # idempotent
    assert not await store.file_exists(file_id)
    with pytest.raises(NoSuchFileError):
        await store.get_file_size(file_id)
    with pytest.raises(NoSuchFileError):
        await store.read_file(file_id, tmp_path / "x")
    with pytest.raises(NoSuchFileError):
        async with store.read_file_stream(file_id):
            pass
    with pytest.raises(NoSuchFileError):
        async with store.update_file_stream(file_id):
            pass
    with pytest.raises(NoSuchFileError):
        await store.write_file(tmp_path / "does-not-exist")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("bad_id", [
    "../../../etc/passwd", "/etc/passwd", "n/../../config.json", "n/ab/../../../x", "c/..", "", "n//x",
    "n/00/" + "0" * 32 + "/..", "shared/x", "n\\..\\x", "n/00/zz/file",
])
async def test_path_traversal_in_file_id_is_refused(store, tmp_path, bad_id):
    for call in (store.file_exists(bad_id), store.get_file_size(bad_id), store.delete_file(bad_id),
                 store.read_file(bad_id, tmp_path / "out")):
        with pytest.raises(InvalidKeyError, match="file ID"):
            await call
    with pytest.raises(InvalidKeyError):
        async with store.read_file_stream(bad_id):
            pass
    assert (await store.summary())["files"] == 0  # the store still works and nothing was touched
    assert not (tmp_path / "out").exists()


async def test_fifty_concurrent_transfers_on_one_loop_are_intact(store, other, tmp_path):
    payloads = {i: pattern(200_000 + i * 50_003, i) for i in range(50)}
    ids: dict[int, FileID] = {}

    async def put(i: int) -> None:
        if i % 2:
            async with store.write_file_stream(basename=f"p{i}") as (writer, file_id):
                for offset in range(0, len(payloads[i]), 65536):
                    await writer.write(payloads[i][offset : offset + 65536])
        else:
            path = tmp_path / f"in{i}"
            await anyio.Path(path).write_bytes(payloads[i])
            file_id = await store.write_file(path)
        ids[i] = file_id

    async def get(i: int) -> None:
        if i % 2:
            async with other.read_file_stream(ids[i]) as reader:
                assert md5(await reader.read()) == md5(payloads[i])
        else:
            path = tmp_path / f"out{i}"
            await other.read_file(ids[i], path)
            assert md5(await anyio.Path(path).read_bytes()) == md5(payloads[i])

    for action in (put, get):
        async with anyio.create_task_group() as tasks:
            for i in payloads:
                tasks.start_soon(action, i)
    assert len(set(ids.values())) == 50


# --------------------------------------------------------------------------------------------- shared files


async def test_shared_file_round_trip_and_replace(store, other):
    async with store.write_shared_file_stream("config.yaml") as writer:
        await writer.write(b"v1")
    async with other.write_shared_file_stream("config.yaml", encoding="utf-8") as writer:
        await writer.write("v2 ✓")
    async with store.read_shared_file_stream("config.yaml", encoding="utf-8") as reader:
        assert await reader.read() == "v2 ✓"
    assert await other.shared_file_exists("config.yaml")


@pytest.mark.parametrize("name", ["../escape", "a/b", "", "spaces here", "..", "bad\x00name"])
async def test_bad_shared_file_name_is_refused(store, name):
    with pytest.raises(InvalidKeyError, match="shared file name"):
        async with store.write_shared_file_stream(name) as writer:
            await writer.write(b"x")
    with pytest.raises(InvalidKeyError, match="shared file name"):
        async with store.read_shared_file_stream(name):
            pass


async def test_missing_shared_file_raises(store):
    with pytest.raises(NoSuchFileError, match="nope"):
        async with store.read_shared_file_stream("nope"):
            pass


async def test_encrypted_shared_file_needs_the_right_key(store_target):
    if store_target.locator.startswith(("memory:", "file:")):
        with pytest.raises(EncryptionKeyError, match="do not encrypt at rest"):
            open_target(store_target, sse_key=KEY)
        return
    keyed = open_target(store_target, sse_key=KEY)
    await keyed.initialize()
    try:
        async with keyed.write_shared_file_stream("secret", encrypted=True) as writer:
            await writer.write(b"top secret")
        async with keyed.read_shared_file_stream("secret") as reader:
            assert await reader.read() == b"top secret"
        for wrong in (None, OTHER_KEY):
            reader_store = open_target(store_target, **({"sse_key": wrong} if wrong else {}))
            await reader_store.resume()
            with pytest.raises(EncryptionKeyError, match="key"):
                async with reader_store.read_shared_file_stream("secret") as reader:
                    await reader.read()
            await reader_store.close()
    finally:
        await keyed.destroy()
        await keyed.close()


async def test_encryption_without_a_key_is_refused(store):
    with pytest.raises(EncryptionKeyError, match=r"sse_key|do not encrypt"):
        async with store.write_shared_file_stream("secret", encrypted=True) as writer:
            await writer.write(b"x")
    assert not await store.shared_file_exists("secret")


# ----------------------------------------------------------------------------------------------------- logs


async def test_logs_are_read_once_unless_read_all(store, other):
    for i in range(3):
        await store.write_logs(f"message {i}")
    await store.write_logs(b"bytes message")
    seen: list[bytes] = []
    assert await other.read_logs(seen.append) == 4
    assert seen[:3] == [b"message 0", b"message 1", b"message 2"] and seen[3] == b"bytes message"
    assert await other.read_logs(seen.append) == 0
    received: list[bytes] = []

    async def async_callback(message: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        received.append(message)

    assert await store.read_logs(async_callback, read_all=True) == 4
    assert sorted(received) == sorted(seen)


async def test_log_whose_callback_raises_stays_unread(store):
    await store.write_logs("important")

    def failing(_message: bytes) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        await store.read_logs(failing)
    seen: list[bytes] = []
    assert await store.read_logs(seen.append) == 1 and seen == [b"important"]


# ------------------------------------------------------------------------------------ import / export, URLs


async def test_import_and_export_file_urls(store, other, tmp_path):
    data = pattern(PART_SIZE + 123, 5)
    src = tmp_path / "source.dat"
    src.write_bytes(data)
    src.chmod(0o755)
    file_id = await store.import_file(src.as_uri())
    assert file_id.endswith("/source.dat") and file_id.size == len(data) and file_id.executable
    dst = tmp_path / "exported.dat"
    await other.export_file(file_id, dst.as_uri())
    assert md5(dst.read_bytes()) == md5(data) and os.access(dst, os.X_OK)
    assert await store.import_file(src.as_uri(), shared_file_name="imported") is None
    async with other.read_shared_file_stream("imported") as reader:
        assert md5(await reader.read()) == md5(data)


async def test_import_of_missing_url_raises(store, tmp_path):
    with pytest.raises(NoSuchFileError):
        await store.import_file((tmp_path / "absent").as_uri())
    with pytest.raises(JobStoreError, match="file://"):
        await store.import_file("ftp://example.invalid/x")


async def test_import_from_http(store, tmp_path):
    data = pattern(300_000, 9)
    (tmp_path / "served.bin").write_bytes(data)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        file_id = await store.import_file(f"{base}/served.bin")
        async with store.read_file_stream(file_id) as reader:
            assert await reader.read() == data
        with pytest.raises(NoSuchFileError):
            await store.import_file(f"{base}/missing.bin")
    finally:
        server.shutdown()


async def test_public_urls(store, tmp_path):
    async with store.write_file_stream(basename="pub.txt") as (writer, file_id):
        await writer.write(b"public")
    async with store.write_shared_file_stream("shared.txt") as writer:
        await writer.write(b"shared")
    url = await store.get_public_url(file_id)
    shared_url = await store.get_shared_public_url("shared.txt")
    assert url.endswith("pub.txt") or "pub.txt" in url
    assert "shared.txt" in shared_url
    if url.startswith("file:"):
        assert Path(url[len("file://") :]).read_bytes() == b"public"
    with pytest.raises(NoSuchFileError):
        await store.get_shared_public_url("absent")


# ------------------------------------------------------------------------------------------------ bookkeeping


async def test_leader_pid_and_kill_flag(store, other):
    assert not await other.read_kill_flag()
    await store.write_leader_pid()
    assert await other.read_leader_pid() == os.getpid()
    await store.write_kill_flag()
    assert not await other.read_kill_flag()
    await store.write_kill_flag(kill=True)
    assert await other.read_kill_flag()


async def test_summary_counts(store):
    await store.create_job(Job(name="a"))
    async with store.write_file_stream() as (writer, _):
        await writer.write(b"12345")
    await store.write_logs("unread")
    summary = await store.summary()
    assert summary["jobs"] == 1 and summary["files"] == 1 and summary["file_bytes"] == 5
    assert summary["unread_logs"] == 1


# ---------------------------------------------------------------------------------------------------- helpers


async def all_keys(job_store: JobStore) -> set[str]:
    return {info.key async for info in job_store.backend.list("")}


def assert_no_temp_files(job_store: JobStore) -> None:
    root = getattr(job_store.backend, "root", None)
    if root is None:
        return
    leftovers = [name for _, _, names in os.walk(root) for name in names if name.startswith(".ajs-tmp-")]
    assert leftovers == []


# ---------------------------------------------------------------------------------------------- hinted IDs


async def test_hinted_file_ids_carry_the_hints_and_are_never_reused(store, other, tmp_path):
    source = tmp_path / "file.txt"
    source.write_bytes(b"Hello!\n")
    first = await store.write_file(source, hints=["lions", "tigers", "bears"])
    second = await other.write_file(source, hints=["lions", "tigers", "bears"])  # another process, same hints
    assert first != second and all(word in first for word in ("lions", "tigers", "bears"))
    assert sum(a != b for a, b in zip(first, second, strict=False)) + abs(len(first) - len(second)) < 3  # close
    await store.delete_file(first)
    third = await store.write_file(source, hints=["lions", "tigers", "bears"])
    assert third not in (first, second) and await store.file_exists(third) and await other.file_exists(second)
    odd = await store.write_file(source, hints=["", "..", "/", "wha/les", "x" * 500, "a" * 39])
    assert "/../" not in odd and "whales" in odd and len(odd) < 200
    a0 = await store.write_file(source, hints=["a", "0"])
    a = await store.write_file(source, hints=["a"])
    assert len({a0, a, first, second, third, odd}) == 6
    for file_id in (a0, a, odd, third):
        async with other.read_file_stream(file_id) as reader:
            assert await reader.read() == b"Hello!\n"
    async with store.write_file_stream(hints=["stream"], basename="s.bin") as (writer, stream_id):
        await writer.write(b"s")
    assert "stream" in stream_id and await other.get_file_size(stream_id) == 1


async def test_read_file_with_link_gives_the_content_and_the_executable_bit(store, tmp_path):
    """link=True: no copy where the backend can (a reflink or hard link on file:), a copy elsewhere; either way the
    content and the executable bit are right, and an update of the stored file leaves the read one as it was."""
    plain, tool = tmp_path / "plain.txt", tmp_path / "tool.sh"
    plain.write_bytes(b"plain")
    tool.write_bytes(b"#!/bin/sh\n")
    tool.chmod(0o755)
    plain_id, tool_id = await store.write_file(plain), await store.write_file(tool)
    out_plain, out_tool = tmp_path / "a" / "plain.txt", tmp_path / "a" / "tool.sh"
    await store.read_file(plain_id, out_plain, link=True)
    await store.read_file(tool_id, out_tool, link=True)
    assert out_plain.read_bytes() == b"plain" and out_tool.read_bytes() == b"#!/bin/sh\n"
    assert os.stat(out_tool).st_mode & 0o100 and not os.stat(out_plain).st_mode & 0o100
    replacement = tmp_path / "new.txt"
    replacement.write_bytes(b"changed")
    await store.update_file(plain_id, replacement)
    assert out_plain.read_bytes() == b"plain"
    await store.read_file(plain_id, out_plain, link=True)  # replaces the earlier read atomically
    assert out_plain.read_bytes() == b"changed"


async def test_shared_file_exists_without_the_key_is_true_for_an_encrypted_file(store_target):
    """Existence needs no key, on every backend that encrypts (file: and memory: refuse keys altogether)."""
    if store_target.locator.startswith(("memory:", "file:")):
        pytest.skip("file: and memory: do not encrypt at rest (they refuse an sse_key)")
    keyed = open_target(store_target, sse_key=KEY)
    await keyed.initialize()
    try:
        async with keyed.write_shared_file_stream("secret", encrypted=True) as writer:
            await writer.write(b"top secret")
        keyless = open_target(store_target)
        await keyless.resume()
        assert await keyless.shared_file_exists("secret")
        assert not await keyless.shared_file_exists("other")
        await keyless.close()
    finally:
        await keyed.destroy()
        await keyed.close()


async def test_update_job_overwrite_wins_over_a_newer_version_and_bumps_past_it(store, other):
    """Toil's last-writer-wins, kept safe: the overwrite is one compare-and-swap and leaves the stored version past
    the one it replaced, so a third holder's stale copy is still refused."""
    job = await store.create_job(Job(name="j", data="v1"))
    mine, theirs, third = await store.load_job(job.id), await other.load_job(job.id), await other.load_job(job.id)
    theirs.data = "theirs"
    await other.update_job(theirs)
    mine.data = "mine"
    with pytest.raises(ConcurrentModificationError):
        await store.update_job(mine)
    await store.update_job(mine, overwrite=True)
    assert mine.stale_overwritten and mine.version == 3
    stored = await other.load_job(job.id)
    assert stored.data == "mine" and stored.version == 3
    third.data = "third"
    with pytest.raises(ConcurrentModificationError):
        await other.update_job(third)
    fresh = await store.load_job(job.id)
    await store.update_job(fresh, overwrite=True)
    assert not fresh.stale_overwritten and fresh.version == 4


async def test_write_file_of_dev_null_stores_an_empty_file(store):
    """A character device is read as a stream (Toil's testZeroLengthFiles writes /dev/null)."""
    file_id = await store.write_file("/dev/null")
    assert await store.get_file_size(file_id) == 0
    async with store.read_file_stream(file_id) as reader:
        assert await reader.read() == b""
