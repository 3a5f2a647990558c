"""The object-store layer (keys you choose) on every backend, async and blocking, and copy() between any two."""

from __future__ import annotations

import os
import uuid

import pytest

import aiojobstore
import aiojobstore.sync
from aiojobstore import ConcurrentModificationError, IfMatch, NoSuchFileError
from tests.conftest import PART_SIZE
from tests.support import StoreTarget

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def _open(target: StoreTarget, **overrides: object) -> aiojobstore.ObjectStore:
    return aiojobstore.open_object_store(target.locator, **{"part_size": PART_SIZE, **target.options, **overrides})


@pytest.fixture
async def objects(store_target: StoreTarget):
    store = _open(store_target)
    await store.create()
    try:
        yield store
    finally:
        await store.backend.destroy()
        await store.close()


async def test_put_get_ranges_stat_and_conditional_modes(objects):
    info = await objects.put("dir/a.txt", b"0123456789", metadata={"kind": "digits"})
    assert await objects.get("dir/a.txt") == b"0123456789"
    assert await objects.get("dir/a.txt", start=2, end=5) == b"234"
    stat = await objects.stat("dir/a.txt")
    assert stat is not None and stat.size == 10 and stat.metadata["kind"] == "digits"
    with pytest.raises(ConcurrentModificationError):
        await objects.put("dir/a.txt", b"again", mode="create")
    with pytest.raises(ConcurrentModificationError):
        await objects.put("dir/a.txt", b"stale", mode=IfMatch("not-the-etag"))
    await objects.put("dir/a.txt", b"new", mode=IfMatch(stat.etag or info.etag))
    assert await objects.get("dir/a.txt") == b"new"
    assert await objects.stat("dir/missing") is None
    with pytest.raises(NoSuchFileError):
        await objects.get("dir/missing")


async def test_upload_download_with_progress_and_list(objects, tmp_path):
    data = os.urandom(2 * PART_SIZE + 123)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    seen: list[tuple[int, int | None]] = []
    await objects.upload_file(source, "run1/big.bin", progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (len(data), len(data))
    for name in ("run1/x/1", "run1/x/2", "other/3"):
        await objects.put(name, name.encode())
    listed = sorted([info.key async for info in objects.list("run1/")])
    assert listed == ["run1/big.bin", "run1/x/1", "run1/x/2"]
    with_meta = [info async for info in objects.list("run1/x/", metadata=True)]
    assert len(with_meta) == 2
    down = tmp_path / "down.bin"
    done: list[int] = []
    await objects.download_file("run1/big.bin", down, progress=lambda n, _total: done.append(n))
    assert down.read_bytes() == data and done[-1] == len(data)


async def test_streams_are_atomic_and_create_only_on_request(objects):
    async with objects.open_writer("s/stream.bin") as writer:
        await writer.write(b"a" * PART_SIZE)
        await writer.write(b"b" * 10)
    async with objects.open_reader("s/stream.bin", start=PART_SIZE - 1) as reader:
        assert await reader.read() == b"a" + b"b" * 10
    with pytest.raises(RuntimeError, match="boom"):
        async with objects.open_writer("s/failed.bin") as writer:
            await writer.write(b"x" * (PART_SIZE + 1))
            raise RuntimeError("boom")
    assert await objects.stat("s/failed.bin") is None
    with pytest.raises(ConcurrentModificationError):
        async with objects.open_writer("s/stream.bin", mode="create") as writer:
            await writer.write(b"never")
    assert (await objects.stat("s/stream.bin")).size == PART_SIZE + 10


async def test_copy_delete_many_and_presign(objects):
    await objects.put("c/src", b"payload")
    await objects.copy("c/src", "c/dst")
    assert await objects.get("c/dst") == b"payload"
    url = await objects.presign("c/dst", 60)
    assert isinstance(url, str) and url
    await objects.delete_many(["c/src", "c/dst", "c/never-was"])
    await objects.delete("c/never-was")
    assert [info async for info in objects.list("c/")] == []


async def test_list_with_delimiter_gives_one_level_in_key_order(objects):
    for name in ("d/a", "d/b/1", "d/b/2", "d/c.txt", "d/z/deep/1", "other/x"):
        await objects.put(name, name.encode(), metadata={"name": name.replace("/", "-")})

    async def level(prefix: str, **options: object) -> list[tuple[str, str]]:
        return [(type(entry).__name__, entry.key) async for entry in objects.list_with_delimiter(prefix, **options)]

    assert await level("d/") == [("ObjectInfo", "d/a"), ("CommonPrefix", "d/b/"), ("ObjectInfo", "d/c.txt"),
                                 ("CommonPrefix", "d/z/")]
    assert await level("") == [("CommonPrefix", "d/"), ("CommonPrefix", "other/")]
    assert await level("d/b") == [("CommonPrefix", "d/b/")]
    assert await level("d/z/deep/") == [("ObjectInfo", "d/z/deep/1")]
    assert await level("nothing/") == []
    assert await level("d/", delimiter=".") == [("ObjectInfo", "d/a"), ("ObjectInfo", "d/b/1"), ("ObjectInfo", "d/b/2"),
                                                ("CommonPrefix", "d/c."), ("ObjectInfo", "d/z/deep/1")]
    with_meta = [entry async for entry in objects.list_with_delimiter("d/", metadata=True)
                 if isinstance(entry, aiojobstore.ObjectInfo)]
    assert [entry.metadata.get("name") for entry in with_meta] == ["d-a", "d-c.txt"]


async def test_copy_between_any_two_locations(store_target, tmp_path):
    """aiojobstore.copy: local file -> the backend -> another key of it -> memory -> a local file."""
    source = tmp_path / "in.bin"
    data = os.urandom(PART_SIZE + 7)
    source.write_bytes(data)
    store = _open(store_target)
    await store.create()
    try:
        base = store_target.locator.rstrip("/")
        if base.startswith("file:") or base.startswith("memory:"):
            first, second = f"{base}/a.bin", f"{base}/b.bin"
        else:
            first, second = f"{base}/copy/a.bin", f"{base}/copy/b.bin"
        options = {"part_size": PART_SIZE, **store_target.options}
        await aiojobstore.copy(source, first, **options)
        await aiojobstore.copy(first, second, **options)
        memory = f"memory:copy-{uuid.uuid4().hex}/c.bin"
        await aiojobstore.copy(second, memory, **options)
        out = tmp_path / "out.bin"
        await aiojobstore.copy(memory, out, **options)
        assert out.read_bytes() == data
    finally:
        await store.backend.destroy()
        await store.close()


def test_blocking_twin_has_the_same_names(tmp_path):
    with aiojobstore.sync.open_object_store(f"file:{tmp_path}/objs") as store:
        store.create()
        store.put("k/1", b"one")
        with store.open_writer("k/2") as f:
            f.write(b"two")
        assert store.get("k/1") == b"one"
        with store.open_reader("k/2") as f:
            assert f.read() == b"two"
        assert sorted(i.key for i in store.list("k/")) == ["k/1", "k/2"]
        assert [entry.key for entry in store.list_with_delimiter("")] == ["k/"]
        aiojobstore.sync.copy(f"file:{tmp_path}/objs/k/1", str(tmp_path / "one.txt"))
        assert (tmp_path / "one.txt").read_bytes() == b"one"
        store.delete_many(["k/1", "k/2"])
        assert store.list("k/") == []
