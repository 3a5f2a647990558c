"""What only the local backend does: files on disk, xattr metadata, flock'd conditional writes, key safety."""

from __future__ import annotations

import multiprocessing
import os

import anyio
import pytest

from aiojobstore import ConcurrentModificationError, InvalidKeyError, NoSuchFileError
from aiojobstore.backends.base import META_CRC32C, user_metadata
from aiojobstore.backends.local import LocalBackend
from aiojobstore.transfer import crc32c, crc32c_to_b64


@pytest.fixture
async def backend(tmp_path):
    local = LocalBackend(tmp_path / "root")
    await local.create()
    yield local
    await local.close()


@pytest.mark.parametrize("key", ["../outside", "a/../../outside", "/etc/passwd", "a//b", "./a", "a\\..\\b",
                                 ".ajs-tmp-x", "a/.ajs-locks/0", "", "a/..", "a/.", "a/", "name\n", "a\n/b"])
async def test_keys_that_could_escape_or_clash_are_refused(backend, tmp_path, key):
    with pytest.raises(InvalidKeyError):
        await backend.put_bytes(key, b"x")
    with pytest.raises(InvalidKeyError):
        await backend.get_bytes(key)
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize("key", ["...", ".hidden", "a/..b/c", "é/ü", "x" * 200])
async def test_unusual_but_safe_keys_are_stored_inside_the_root(backend, key):
    await backend.put_bytes(key, b"kept")
    assert await backend.get_bytes(key) == b"kept"
    assert backend.path_of(key).startswith(backend.root + os.sep)


async def test_metadata_and_data_are_committed_together(backend):
    info = await backend.put_bytes("a/b/c", b"data", metadata={"executable": "1", "note": "ü"})
    stat = await backend.stat("a/b/c")
    assert user_metadata(stat.metadata) == {"executable": "1", "note": "ü"} and stat.etag == info.etag
    assert stat.size == 4 and stat.metadata[META_CRC32C] == crc32c_to_b64(crc32c(b"data"))
    listed = [i async for i in backend.list("a/")]
    assert [i.key for i in listed] == ["a/b/c"] and listed[0].metadata["note"] == "ü"


async def test_if_match_refuses_stale_etag_and_if_absent_refuses_existing(backend):
    first = await backend.put_bytes("k", b"1")
    second = await backend.put_bytes("k", b"2", if_match=first.etag)
    with pytest.raises(ConcurrentModificationError):
        await backend.put_bytes("k", b"3", if_match=first.etag)
    with pytest.raises(ConcurrentModificationError):
        await backend.put_bytes("k", b"4", if_absent=True)
    assert await backend.get_bytes("k") == b"2" and second.etag != first.etag
    with pytest.raises(ConcurrentModificationError):
        await backend.put_bytes("gone", b"x", if_match=first.etag)
    assert not [name for name in os.listdir(backend.root) if name.startswith(".ajs-tmp-")]


def _race_update(root: str, etag: str, value: bytes, results) -> None:
    async def main() -> None:
        local = LocalBackend(root)
        try:
            await local.put_bytes("job", value, if_match=etag)
            results.put("won")
        except ConcurrentModificationError:
            results.put("lost")

    anyio.run(main)


async def test_conditional_replace_is_atomic_across_processes(backend):
    base = await backend.put_bytes("job", b"v0")
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_race_update, args=(backend.root, base.etag, f"v{i}".encode(), results))
               for i in range(1, 7)]
    for worker in workers:
        worker.start()
    for worker in workers:
        await anyio.to_thread.run_sync(worker.join, 60)
    outcomes = sorted(results.get(timeout=10) for _ in workers)
    assert outcomes == ["lost"] * 5 + ["won"]


async def test_delete_removes_empty_directories_but_not_the_root(backend):
    await backend.put_bytes("x/y/z", b"1")
    await backend.delete("x/y/z")
    assert os.listdir(backend.root) == [] or os.listdir(backend.root) == [".ajs-locks"]
    await backend.delete("x/y/z")
    with pytest.raises(NoSuchFileError):
        await backend.get_bytes("x/y/z")


async def test_upload_and_download_use_parallel_parts(tmp_path):
    local = LocalBackend(tmp_path / "r", transfer=None)
    await local.create()
    data = os.urandom(12 * 2**20 + 3)
    (tmp_path / "in").write_bytes(data)
    progress: list[int] = []
    from aiojobstore.transfer import TransferConfig

    local = LocalBackend(tmp_path / "r", transfer=TransferConfig(part_size=5 * 2**20))
    info = await local.upload_file(tmp_path / "in", "big", progress=lambda done, total: progress.append(done))
    assert info.size == len(data) and progress[-1] == len(data) and len(progress) == 3
    await local.download_file("big", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data


async def test_store_files_are_spread_over_subdirectories(tmp_path):
    from aiojobstore import open_store

    async with open_store(f"file:{tmp_path}/s") as store:
        await store.initialize()
        for _ in range(300):
            await store.get_empty_file_store_id()
    shard_root = tmp_path / "s" / "files" / "n"
    assert len(os.listdir(shard_root)) > 100
    assert max(len(os.listdir(shard_root / d)) for d in os.listdir(shard_root)) < 20


async def test_a_store_destroyed_and_made_again_by_another_backend_is_followed(tmp_path):
    first, second = LocalBackend(tmp_path / "r"), LocalBackend(tmp_path / "r")
    await first.put_bytes("a/b", b"old")
    await second.destroy()
    assert await first.stat("a/b") is None
    await second.create()
    await first.put_bytes("a/c", b"new")
    assert await second.get_bytes("a/c") == b"new"
    await first.close()
    await second.close()


async def test_a_forked_child_can_use_the_backend_of_its_parent(backend):
    await backend.put_bytes("parent", b"p")
    pid = os.fork()
    if pid == 0:  # the child: a fresh event loop; the root descriptor inherited is replaced at fork
        code = 1
        try:
            async def child() -> None:
                await backend.put_bytes("child", await backend.get_bytes("parent") + b"c")

            anyio.run(child)
            code = 0
        finally:
            os._exit(code)
    _, status = await anyio.to_thread.run_sync(os.waitpid, pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert await backend.get_bytes("child") == b"pc"


def _overwrite_start(path: str, data: bytes) -> None:
    with open(path, "r+b") as planted:
        planted.write(data)


async def test_a_corrupt_log_claim_is_taken_over(backend):
    from aiojobstore.jobstore import _LogClaim

    key = "logs/claims/00000000000000000001-dead"
    await backend.put_bytes(key, b'{"expires": 0}')
    _overwrite_start(os.path.join(backend.root, *key.split("/")), b"[")  # its recorded CRC32C no longer matches
    claim = _LogClaim(backend, key, lease=60)
    assert await claim.take() is True
    assert claim.etag == (await backend.stat(key)).etag
