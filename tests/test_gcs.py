"""GCS-specific promises, on a real gcp-storage-emulator started by tests/gcs_servers.py.

The contract suite (tests/test_contract.py) covers the behaviour every backend shares; these tests cover what
only GCS has: composed uploads, temporary parts, CRC32C checks against what GCS reports, generation preconditions
(with the emulator fallback), CSEK, server-side copies, and — through tests/fault_proxy.py's FaultProxy — retries
after lost answers and cancellation at each await of each commit path. The emulator ignores preconditions, so
atomicity itself is only tested against real GCS (a test that skips without credentials).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from aiojobstore.backends.base import META_CRC32C, CommonPrefix, ObjectInfo, user_metadata
from aiojobstore.backends.gcs import GCSBackend
from aiojobstore.backends.memory import MemoryBackend
from aiojobstore.errors import (
    ConcurrentModificationError,
    EncryptionKeyError,
    IntegrityError,
    InvalidKeyError,
    JobStoreError,
    NoSuchFileError,
    TransferError,
)
from aiojobstore.locator import open_backend
from aiojobstore.transfer import MiB, TransferConfig, crc32c, crc32c_from_b64
from tests.fault_proxy import FaultProxy, FaultRule
from tests.gcs_servers import create_bucket, http
from tests.support import StoreTarget, free_port

PART = 64 * 1024
SMALL_PARTS = {"part_size": PART, "min_part_size": 1, "max_concurrency": 4}
KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def make_backend(target: StoreTarget, **options: object) -> GCSBackend:
    config = {k: options.pop(k) for k in list(options) if k in TransferConfig.__dataclass_fields__}
    backend = open_backend(target.locator, transfer=TransferConfig(**{**SMALL_PARTS, **config}),
                           **{**target.options, **options})
    assert isinstance(backend, GCSBackend)
    return backend


@pytest.fixture
async def gcs(gcs_target: StoreTarget) -> AsyncIterator[GCSBackend]:
    backend = make_backend(gcs_target)
    await backend.create()
    try:
        yield backend
    finally:
        await backend.close()


def raw_names(backend: GCSBackend) -> list[str]:
    """Every object name in the backend's bucket, straight from the emulator."""
    url = f"{backend.api_root}/storage/v1/b/{backend.bucket}/o"
    return sorted(item["name"] for item in json.loads(http("GET", url)).get("items") or [])


def raw_upload(backend: GCSBackend, key: str, data: bytes, metadata: dict[str, str]) -> None:
    """Replace an object's bytes behind the store's back, keeping the metadata the store recorded."""
    boundary = "xx" + uuid.uuid4().hex
    resource = json.dumps({"name": backend.root + key, "metadata": metadata})
    body = (f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{resource}\r\n--{boundary}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    http("POST", f"{backend.api_root}/upload/storage/v1/b/{backend.bucket}/o?uploadType=multipart", body,
         {"Content-Type": f"multipart/related; boundary={boundary}"})


def only_user_objects(backend: GCSBackend) -> list[str]:
    return [n for n in raw_names(backend) if not n.endswith(".ajs-container")]


# ----------------------------------------------------------------------------------------- composed uploads


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART, PART + 1, 3 * PART + 7])
async def test_upload_file_round_trips_md5_exact_at_part_boundaries(gcs: GCSBackend, tmp_path: Path,
                                                                     size: int) -> None:
    data = os.urandom(size)
    src = tmp_path / "src"
    src.write_bytes(data)
    info = await gcs.upload_file(src, "f", metadata={"who": "me"})
    assert info.size == size
    await gcs.download_file("f", tmp_path / "dst")
    assert md5((tmp_path / "dst").read_bytes()) == md5(data)
    assert md5(await gcs.get_bytes("f")) == md5(data)
    stat = await gcs.stat("f")
    assert stat is not None and stat.metadata["who"] == "me"
    assert only_user_objects(gcs) == [gcs.root + "f"]  # no temporary parts left


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART, PART + 1, 3 * PART + 7])
async def test_write_stream_round_trips_md5_exact_at_part_boundaries(gcs: GCSBackend, size: int) -> None:
    data = os.urandom(size)
    async with gcs.open_writer("s", metadata={"a": "b"}) as writer:
        for offset in range(0, size, 10_000):
            await writer.write(data[offset:offset + 10_000])
    assert writer.bytes_written == size
    assert md5(await gcs.get_bytes("s")) == md5(data)
    async with gcs.open_reader("s") as reader:
        assert md5(await reader.read()) == md5(data)
    assert (await gcs.stat("s")).metadata["a"] == "b"
    assert only_user_objects(gcs) == [gcs.root + "s"]


async def test_more_than_32_parts_compose_as_a_tree(gcs: GCSBackend, tmp_path: Path) -> None:
    data = os.urandom(70 * PART + 123)  # 71 parts: 3 intermediate composes, then one final compose
    src = tmp_path / "src"
    src.write_bytes(data)
    await gcs.upload_file(src, "tree")
    async with gcs.open_writer("tree-stream") as writer:
        await writer.write(data)
    for key in ("tree", "tree-stream"):
        assert md5(await gcs.get_bytes(key)) == md5(data)
        assert META_CRC32C in (await gcs.stat(key)).metadata
    await gcs.download_file("tree", tmp_path / "dst")
    assert md5((tmp_path / "dst").read_bytes()) == md5(data)
    assert only_user_objects(gcs) == sorted([gcs.root + "tree", gcs.root + "tree-stream"])


async def test_write_stream_memory_stays_bounded(gcs_target: StoreTarget) -> None:
    backend = make_backend(gcs_target, max_memory=4 * PART, max_concurrency=2)
    try:
        await backend.create()
        data = os.urandom(20 * PART)
        async with backend.open_writer("bounded") as writer:
            for offset in range(0, len(data), PART // 3):
                await writer.write(data[offset:offset + PART // 3])
        assert backend.limits.memory.peak <= 4 * PART
        assert backend.limits.memory.in_use == 0
        assert await backend.get_bytes("bounded") == data
    finally:
        await backend.close()


# ------------------------------------------------------------------------------------ nothing left behind


async def test_failed_write_stream_leaves_no_object_and_no_temporary_parts(gcs: GCSBackend) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with gcs.open_writer("broken") as writer:
            await writer.write(os.urandom(5 * PART + 10))
            raise RuntimeError("boom")
    assert await gcs.stat("broken") is None
    assert only_user_objects(gcs) == []
    assert gcs.limits.memory.in_use == 0


async def test_cancelled_write_stream_leaves_no_object_and_no_temporary_parts(gcs: GCSBackend) -> None:
    written = anyio.Event()

    async def write_forever() -> None:
        async with gcs.open_writer("cancelled") as writer:
            for _ in range(6):
                await writer.write(os.urandom(PART))
            written.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as group:
        group.start_soon(write_forever)
        await written.wait()
        group.cancel_scope.cancel()
    assert await gcs.stat("cancelled") is None
    assert only_user_objects(gcs) == []


async def test_write_stream_cancelled_while_parts_upload_leaves_nothing(gcs: GCSBackend) -> None:
    with anyio.move_on_after(0.05):
        async with gcs.open_writer("racing") as writer:
            for _ in range(200):
                await writer.write(os.urandom(PART))
    assert await gcs.stat("racing") is None
    assert only_user_objects(gcs) == []


@pytest.mark.parametrize("size", [PART - 3, 3 * PART + 5])  # one simple upload; four composed parts
async def test_upload_progress_moves_per_slice_sent(gcs_target: StoreTarget, tmp_path: Path, size: int) -> None:
    backend = make_backend(gcs_target, io_slice_size=PART // 8)
    try:
        src = tmp_path / "src"
        src.write_bytes(os.urandom(size))
        seen: list[int] = []
        await backend.upload_file(src, "sliced", progress=lambda done, total: seen.append(done))
        assert seen[-1] == size
        assert len(seen) >= size // (PART // 8)  # a report per slice, not one per part
        assert all(0 < done <= size for done in seen)
        assert await backend.get_bytes("sliced") == src.read_bytes()
    finally:
        await backend.close()


async def test_failed_upload_file_leaves_no_temporary_parts(gcs: GCSBackend, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(6 * PART))

    calls = 0

    async def progress(done: int, total: int | None) -> None:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise RuntimeError("progress callback failed")

    with pytest.raises(RuntimeError, match="progress callback failed"):
        await gcs.upload_file(src, "half", progress=progress)
    assert await gcs.stat("half") is None
    assert only_user_objects(gcs) == []


def count_calls(backend: GCSBackend, method: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the calls of one of ``backend``'s methods (which still runs): ``calls``, ``in_flight``, ``peak``."""
    counts = {"calls": 0, "in_flight": 0, "peak": 0}
    real = getattr(backend, method)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        counts["calls"] += 1
        counts["in_flight"] += 1
        counts["peak"] = max(counts["peak"], counts["in_flight"])
        try:
            return await real(*args, **kwargs)
        finally:
            counts["in_flight"] -= 1

    monkeypatch.setattr(backend, method, counted)
    return counts


async def test_uploads_started_together_share_the_window(gcs: GCSBackend, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    data = os.urandom(3 * PART)
    src.write_bytes(data)
    parts = count_calls(gcs, "_upload_part", monkeypatch)
    await gcs.upload_file(src, "alone")
    alone, parts["peak"] = parts["peak"], 0
    async with anyio.create_task_group() as tasks:
        for i in range(4):
            tasks.start_soon(gcs.upload_file, src, f"together-{i}")
        await anyio.lowlevel.checkpoint()  # each upload has run up to its first await
        joined = gcs.limits.uploads.transfers
    assert alone == 3  # alone, an upload sends all three parts at once
    assert joined == 4  # each counts itself before its first await, so the others see it when they plan
    assert parts["peak"] <= 4  # a window of 4 // 4 = 1 part each, where twelve could be in flight
    for name in ["alone", *(f"together-{i}" for i in range(4))]:
        assert await gcs.get_bytes(name) == data


async def test_downloads_started_together_share_the_window_with_one_get_each(
        gcs: GCSBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(3 * MiB)  # downloads use ranges of at least 1 MiB: three here
    await gcs.put_bytes("obj", data)
    ranges = count_calls(gcs, "_fetch_range", monkeypatch)
    await gcs.download_file("obj", tmp_path / "alone")
    alone, ranges["calls"] = ranges["calls"], 0
    async with anyio.create_task_group() as tasks:
        for i in range(4):
            tasks.start_soon(gcs.download_file, "obj", tmp_path / f"together-{i}")
        await anyio.lowlevel.checkpoint()  # each download has run up to its first await (the stat)
        joined = gcs.limits.downloads.transfers
    assert alone == 3  # alone, a download takes the whole window: one ranged GET per MiB
    assert joined == 4
    assert ranges["calls"] == 4  # four at once share the window of 4: one stream, so one GET, per download
    for name in ["alone", *(f"together-{i}" for i in range(4))]:
        assert (tmp_path / name).read_bytes() == data


# ---------------------------------------------------------------------------------------------- integrity


async def test_corruption_behind_the_stores_back_is_caught(gcs: GCSBackend, tmp_path: Path) -> None:
    data = os.urandom(4 * PART)
    async with gcs.open_writer("victim") as writer:
        await writer.write(data)
    info = await gcs.stat("victim")
    corrupt = bytearray(data)
    corrupt[1000] ^= 0xFF
    raw_upload(gcs, "victim", bytes(corrupt), info.metadata)  # GCS's own CRC now matches the corrupt bytes
    with pytest.raises(IntegrityError):
        await gcs.get_bytes("victim")
    with pytest.raises(IntegrityError):
        await gcs.download_file("victim", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p for p in tmp_path.iterdir()] == []  # no temporary download file either
    with pytest.raises(IntegrityError):
        async with gcs.open_reader("victim") as reader:
            await reader.read()
    assert await gcs.get_bytes("victim", start=0, end=10) == bytes(corrupt[:10])  # partial reads cannot tell


async def test_reads_racing_overwrites_get_one_whole_version(gcs: GCSBackend) -> None:
    versions = [bytes([i]) * (2 * PART) for i in range(6)]
    await gcs.put_bytes("hot", versions[0])
    seen: list[bytes] = []

    async def writer() -> None:
        for version in versions[1:]:
            await gcs.put_bytes("hot", version)

    async def reader() -> None:
        for _ in range(10):
            seen.append(await gcs.get_bytes("hot"))

    async with anyio.create_task_group() as group:
        group.start_soon(writer)
        group.start_soon(reader)
        group.start_soon(reader)
    assert all(data in versions for data in seen)


# --------------------------------------------------------------------------------------------- preconditions


async def test_if_absent_lets_exactly_one_concurrent_writer_win(gcs: GCSBackend) -> None:
    results: list[str] = []

    async def attempt(i: int) -> None:
        try:
            await gcs.put_bytes("once", f"writer {i}".encode(), if_absent=True)
            results.append("won")
        except ConcurrentModificationError:
            results.append("lost")

    async with anyio.create_task_group() as group:
        for i in range(8):
            group.start_soon(attempt, i)
    assert sorted(results) == ["lost"] * 7 + ["won"]


async def test_if_match_rejects_a_stale_generation(gcs: GCSBackend) -> None:
    first = await gcs.put_bytes("job", b"v1")
    second = await gcs.put_bytes("job", b"v2", if_match=first.etag)
    assert second.etag != first.etag
    with pytest.raises(ConcurrentModificationError):
        await gcs.put_bytes("job", b"v3", if_match=first.etag)
    with pytest.raises(ConcurrentModificationError):
        await gcs.put_bytes("missing", b"x", if_match=first.etag)
    assert await gcs.get_bytes("job") == b"v2"


async def test_write_stream_if_absent_fails_when_the_key_exists(gcs: GCSBackend) -> None:
    await gcs.put_bytes("taken", b"first")
    with pytest.raises(ConcurrentModificationError):
        async with gcs.open_writer("taken", if_absent=True) as writer:
            await writer.write(os.urandom(3 * PART))
    assert await gcs.get_bytes("taken") == b"first"
    assert only_user_objects(gcs) == [gcs.root + "taken"]


@pytest.mark.skipif(not (os.environ.get("GOOGLE_APPLICATION_CREDENTIALS") and os.environ.get("AJS_GCS_TEST_BUCKET")),
                    reason="real GCS preconditions need GOOGLE_APPLICATION_CREDENTIALS and AJS_GCS_TEST_BUCKET "
                           "(an existing bucket the credentials may write to); the emulator ignores preconditions")
async def test_real_gcs_generation_preconditions() -> None:
    locator = f"gs://{os.environ['AJS_GCS_TEST_BUCKET']}/aiojobstore-test-{uuid.uuid4().hex[:8]}"
    backend = open_backend(locator, emulator_host=None)
    assert isinstance(backend, GCSBackend)
    backend.emulated = False  # make sure the real precondition, not the fallback, is what is tested
    backend.api_root = "https://storage.googleapis.com"
    try:
        first = await backend.put_bytes("x", b"1", if_absent=True)
        with pytest.raises(ConcurrentModificationError):
            await backend.put_bytes("x", b"2", if_absent=True)
        second = await backend.put_bytes("x", b"3", if_match=first.etag)
        with pytest.raises(ConcurrentModificationError):
            await backend.put_bytes("x", b"4", if_match=first.etag)
        assert await backend.get_bytes("x") == b"3" and second.etag != first.etag
    finally:
        await backend.destroy()
        await backend.close()


# ----------------------------------------------------------------------------------------------- encryption


async def test_encrypted_objects_need_the_right_key(gcs_target: StoreTarget) -> None:
    writer_store = make_backend(gcs_target, sse_key=KEY)
    no_key = make_backend(gcs_target)
    wrong_key = make_backend(gcs_target, sse_key=OTHER_KEY)
    try:
        await writer_store.create()
        await writer_store.put_bytes("secret", b"s3cr3t", encrypted=True)
        async with writer_store.open_writer("secret-big", encrypted=True) as writer:
            await writer.write(os.urandom(3 * PART))
        assert await writer_store.get_bytes("secret") == b"s3cr3t"
        for key in ("secret", "secret-big"):
            for other in (no_key, wrong_key):
                with pytest.raises(EncryptionKeyError):
                    await other.get_bytes(key)
                with pytest.raises(EncryptionKeyError):
                    async with other.open_reader(key) as reader:
                        await reader.read()
        with pytest.raises(EncryptionKeyError):
            await no_key.put_bytes("x", b"1", encrypted=True)
    finally:
        for backend in (writer_store, no_key, wrong_key):
            await backend.close()


# ------------------------------------------------------------------------------------------ reads and copies


async def test_reader_reads_ahead_and_starts_at_any_offset(gcs_target: StoreTarget) -> None:
    backend = make_backend(gcs_target, part_size=1 << 20)  # read-ahead chunks of 1 MiB
    try:
        await backend.create()
        data = os.urandom(5 * (1 << 20) + 17)
        await backend.put_bytes("r", data)
        for start, end in ((0, None), (1, None), ((1 << 20) + 5, 3 * (1 << 20)), (len(data), None), (7, 7)):
            async with backend.open_reader("r", start=start, end=end) as reader:
                assert await reader.read() == data[start:end]
        async with backend.open_reader("r") as reader:  # a reader closed early cancels its read-ahead
            assert await reader.read(10) == data[:10]
    finally:
        await backend.close()


async def test_missing_objects_raise_no_such_file(gcs: GCSBackend, tmp_path: Path) -> None:
    with pytest.raises(NoSuchFileError):
        await gcs.get_bytes("nope")
    with pytest.raises(NoSuchFileError):
        await gcs.download_file("nope", tmp_path / "x")
    with pytest.raises(NoSuchFileError):
        async with gcs.open_reader("nope"):
            pass
    with pytest.raises(NoSuchFileError):
        await gcs.copy("nope", "dst")
    assert await gcs.stat("nope") is None
    await gcs.delete("nope")


async def test_copy_is_server_side_and_merges_metadata(gcs: GCSBackend) -> None:
    await gcs.put_bytes("src", b"payload", metadata={"a": "1", "b": "2"})
    copied = await gcs.copy("src", "dst", metadata={"b": "3"})
    assert user_metadata(copied.metadata) == {"a": "1", "b": "3"}
    assert await gcs.get_bytes("dst") == b"payload"
    stored = (await gcs.stat("dst")).metadata
    assert user_metadata(stored) == {"a": "1", "b": "3"}
    assert stored[META_CRC32C] == (await gcs.stat("src")).metadata[META_CRC32C]  # the copy carries the checksum
    plain = await gcs.copy("src", "dst2")
    assert user_metadata(plain.metadata) == {"a": "1", "b": "2"}


async def test_copy_from_another_gcs_store_is_server_side(gcs: GCSBackend, gcs_emulator: str) -> None:
    other_bucket = f"ajs-other-{uuid.uuid4().hex[:8]}"
    create_bucket(gcs_emulator, other_bucket)
    source = open_backend(f"gs://{other_bucket}/elsewhere", emulator_host=gcs_emulator)
    try:
        await source.put_bytes("in", b"across buckets", metadata={"m": "v"})
        info = await gcs.copy_from(source, "in", "out")
        assert info is not None and user_metadata(info.metadata) == {"m": "v"} and META_CRC32C in info.metadata
        assert await gcs.get_bytes("out") == b"across buckets"
        assert await gcs.copy_from(MemoryBackend("gcs-copy-from-test"), "in", "out2") is None
    finally:
        await source.close()


async def test_presign_on_the_emulator_gives_a_readable_url(gcs: GCSBackend) -> None:
    await gcs.put_bytes("shared", b"public bytes")
    url = await gcs.presign("shared")
    assert await anyio.to_thread.run_sync(lambda: urllib.request.urlopen(url, timeout=10).read()) == b"public bytes"


async def test_presign_without_a_private_key_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "user.json"
    creds.write_text(json.dumps({"type": "authorized_user", "client_id": "x", "client_secret": "y",
                                 "refresh_token": "z"}))
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    backend = open_backend("gs://some-bucket/p", service_file=str(creds))
    try:
        with pytest.raises(JobStoreError, match="private key"):
            await backend.presign("k")
    finally:
        await backend.close()


# -------------------------------------------------------------------------------------------- the container


async def test_destroy_deletes_a_bucket_the_store_created_and_is_idempotent(gcs_emulator: str) -> None:
    bucket = f"ajs-own-{uuid.uuid4().hex[:8]}"
    backend = open_backend(f"gs://{bucket}", emulator_host=gcs_emulator)
    try:
        assert not await backend.exists()
        assert await backend.create() is True
        assert await backend.create() is False
        assert await backend.exists()
        await backend.put_bytes("a/b", b"1")
        await backend.destroy()
        assert not await backend.exists()
        buckets = json.loads(http("GET", f"{gcs_emulator}/storage/v1/b?project=test")).get("items") or []
        assert bucket not in [b["name"] for b in buckets]
        await backend.destroy()
    finally:
        await backend.close()


async def test_destroy_keeps_a_bucket_it_did_not_create_and_other_prefixes(gcs: GCSBackend,
                                                                          gcs_emulator: str) -> None:
    neighbour = open_backend(f"gs://{gcs.bucket}/neighbour", emulator_host=gcs_emulator)
    try:
        await neighbour.put_bytes("keep", b"1")
        await gcs.put_bytes("go", b"1")
        await gcs.destroy()
        assert not await gcs.exists()
        assert await neighbour.get_bytes("keep") == b"1"
        assert raw_names(gcs) == ["neighbour/keep"]
        await gcs.destroy()
    finally:
        await neighbour.close()


async def test_list_hides_internal_objects(gcs: GCSBackend) -> None:
    await gcs.put_bytes("x/1", b"1")
    await gcs.put_bytes("x/2", b"2")
    await gcs.put_bytes("y", b"3")
    assert sorted(i.key for i in [i async for i in gcs.list()]) == ["x/1", "x/2", "y"]
    assert sorted(i.key for i in [i async for i in gcs.list("x/")]) == ["x/1", "x/2"]


async def test_delimited_listing_gives_one_level_in_key_order_without_internal_objects(gcs: GCSBackend) -> None:
    for key in ("a", "b/c", "b/d", "b/e/f", "c/x", "z", "b.q", "ba", "d-1-x", "d-2"):
        await gcs.put_bytes(key, key.encode())
    await gcs.put_bytes(".ajs-tmp/debris/p000001", b"part")  # what a writer leaves: the backend's own

    async def level(prefix: str, delimiter: str = "/") -> list[str]:
        entries = [e async for e in gcs.list_delimited(prefix, delimiter)]
        return [f"<{e.key}>" if isinstance(e, CommonPrefix) else e.key for e in entries]  # <prefix>

    assert await level("") == ["a", "b.q", "<b/>", "ba", "<c/>", "d-1-x", "d-2", "z"]
    assert await level("b/") == ["b/c", "b/d", "<b/e/>"]
    assert await level("b") == ["b.q", "<b/>", "ba"]
    assert await level("d-", "-") == ["<d-1->", "d-2"]
    assert await level("nothing/") == []
    objects = [e async for e in gcs.list_delimited("b/") if isinstance(e, ObjectInfo)]
    assert objects[0] == await gcs.stat("b/c") and objects[0].size == 3
    with pytest.raises(InvalidKeyError):
        [e async for e in gcs.list_delimited("b/", "")]


async def test_constructor_does_no_io_and_unreachable_endpoint_is_a_transfer_error() -> None:
    port = free_port()
    backend = open_backend("gs://nobody-home/p", emulator_host=f"127.0.0.1:{port}", max_attempts=2,
                           backoff_base=0.01)
    try:
        with pytest.raises(TransferError, match="reachable"):
            await backend.put_bytes("k", b"1")
    finally:
        await backend.close()


def test_encryption_headers_are_customer_supplied_key_headers(gcs_target: StoreTarget) -> None:
    backend = make_backend(gcs_target, sse_key=KEY)
    headers = backend._key_headers(True)
    assert headers["x-goog-encryption-algorithm"] == "AES256"
    assert base64.b64decode(headers["x-goog-encryption-key"]) == KEY
    assert base64.b64decode(headers["x-goog-encryption-key-sha256"]) == hashlib.sha256(KEY).digest()
    assert urllib.parse.quote("a/b", safe="") in backend._object_url("a/b")


# ------------------------------------------------------------------------------- import / export across stores


async def test_import_export_round_trips_file_gs_s3_gs_file(gcs_target: StoreTarget, gcs_emulator: str,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          request: pytest.FixtureRequest) -> None:
    import aiojobstore

    try:
        s3_target: StoreTarget = request.getfixturevalue("s3_target")
    except pytest.FixtureLookupError:
        pytest.skip("the S3 test plugin (tests.s3_servers) is not registered in tests/conftest.py")

    # URL backends other than the store's own get their endpoints from the standard environment.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_target.options["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_target.options["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_target.options["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_target.options["region_name"])
    s3_store = aiojobstore.open_store(s3_target.locator, **s3_target.options)
    # 5 MiB parts: the S3 URL backend shares the store's transfer settings, and S3 parts may not be smaller.
    store = aiojobstore.open_store(gcs_target.locator, part_size=5 << 20, **gcs_target.options)
    other_bucket = f"ajs-export-{uuid.uuid4().hex[:8]}"
    create_bucket(gcs_emulator, other_bucket)
    try:
        await s3_store.initialize()  # creates the S3 bucket the gs store exports into
        await store.initialize()
        s3_bucket = s3_target.locator.split("/")[2]
        data = os.urandom((11 << 20) + 3)
        src = tmp_path / "input.bin"
        src.write_bytes(data)
        file_id = await store.import_file(src.as_uri())                      # file -> gs (composed upload)
        await store.export_file(file_id, f"s3://{s3_bucket}/exported/input.bin")  # gs -> s3 (streamed)
        back = await store.import_file(f"s3://{s3_bucket}/exported/input.bin")    # s3 -> gs (streamed)
        await store.export_file(back, f"gs://{other_bucket}/copy.bin")      # gs -> gs (server-side rewrite)
        again = await store.import_file(f"gs://{other_bucket}/copy.bin")
        await store.export_file(again, (tmp_path / "output.bin").as_uri())  # gs -> file (ranged download)
        assert md5((tmp_path / "output.bin").read_bytes()) == md5(data)
    finally:
        await store.destroy()
        await store.close()
        await s3_store.destroy()
        await s3_store.close()


# ------------------------------------------------------------------ lost answers, cancelled commits (FaultProxy)
#
# The emulator ignores preconditions, so whether GCS's ifGenerationMatch makes a write atomic cannot be tested here
# (test_real_gcs_generation_preconditions does, and skips without credentials). What can be tested on the emulator
# is idempotency and clean-up: a FaultProxy between the backend and the emulator loses the answer of a request the
# emulator applied, or holds a request before or after the emulator applied it while the caller is cancelled.
# (On the emulator the backend checks preconditions itself before each attempt, so a retry after a lost answer
# meets a 412 there exactly as it would on GCS.)

TMP = ".ajs-tmp/"


def tmp_objects(emulator: str, backend: GCSBackend) -> list[str]:
    """The names under the store's ``.ajs-tmp/``, straight from the emulator (not through any proxy)."""
    query = urllib.parse.urlencode({"prefix": backend.root + TMP})
    listing = json.loads(http("GET", f"{emulator}/storage/v1/b/{backend.bucket}/o?{query}"))
    return sorted(item["name"] for item in listing.get("items") or [])


@contextlib.asynccontextmanager
async def behind_proxy(target: StoreTarget, emulator: str, **options: object
                       ) -> AsyncIterator[tuple[FaultProxy, GCSBackend]]:
    """A created store whose requests go through a FaultProxy (no random faults: rules only) to the emulator."""
    with FaultProxy(emulator, rate=0.0) as proxy:
        backend = make_backend(StoreTarget(target.locator, {"emulator_host": proxy.endpoint_url}), **options)
        try:
            await backend.create()
            yield proxy, backend
        finally:
            await backend.close()


def arm(proxy: FaultProxy, *rules: FaultRule) -> None:
    """Start injecting ``rules``; the requests counted by :func:`seen` start here too."""
    with proxy.lock:
        proxy.targets.clear()
        proxy.rules.extend(rules)


def seen(proxy: FaultProxy, method: str, pattern: str) -> int:
    """How many requests of ``method`` whose target matches ``pattern`` reached the proxy since :func:`arm`."""
    return sum(1 for m, t in proxy.targets if m == method and re.search(pattern, t))


SIMPLE_CREATE = r"uploadType=multipart&ifGenerationMatch=0$"
SIMPLE_IF_MATCH = r"uploadType=multipart&ifGenerationMatch=[1-9]"
SIMPLE_PLAIN = r"uploadType=multipart$"
PART_UPLOAD = r"uploadType=media&name="
BACKUP_REWRITE = r"/rewriteTo/b/[^/]+/o/store%2F\.ajs-tmp%2F"


def compose_of(key: str) -> str:
    return rf"/o/store%2F{re.escape(key)}/compose"


def rewrite_onto(key: str) -> str:
    return rf"/rewriteTo/b/[^/]+/o/store%2F{re.escape(key)}\?"


async def test_lost_answer_of_a_create_only_upload_is_the_calls_own_write(gcs_target: StoreTarget,
                                                                           gcs_emulator: str) -> None:
    async with behind_proxy(gcs_target, gcs_emulator) as (proxy, backend):
        rule = FaultRule("lost-answer", method="POST", target=SIMPLE_CREATE)
        arm(proxy, rule)
        info = await backend.put_bytes("once", b"mine", if_absent=True)  # no ConcurrentModificationError
        assert rule.hits == 1
        assert seen(proxy, "POST", SIMPLE_CREATE) == 1  # applied once: the retry found the object was its own
        assert await backend.get_bytes("once") == b"mine"
        assert (await backend.stat("once")).etag == info.etag
        with pytest.raises(ConcurrentModificationError):  # a second call is another writer
            await backend.put_bytes("once", b"other", if_absent=True)


async def test_lost_answer_of_a_compare_and_swap_applies_it_once(gcs_target: StoreTarget, gcs_emulator: str) -> None:
    async with behind_proxy(gcs_target, gcs_emulator) as (proxy, backend):
        await backend.put_bytes("counter", b"0", metadata={"kind": "counter"}, encrypted=False)
        rule = FaultRule("lost-answer", method="POST", target=SIMPLE_IF_MATCH)
        arm(proxy, rule)
        info = await backend.update_object("counter", lambda raw: str(int(raw) + 1).encode())
        assert rule.hits == 1
        assert seen(proxy, "POST", SIMPLE_IF_MATCH) == 1
        assert await backend.get_bytes("counter") == b"1"  # not 2, and no conflict with itself
        stat = await backend.stat("counter")
        assert stat.etag == info.etag and user_metadata(stat.metadata) == {"kind": "counter"}


@pytest.mark.parametrize("if_absent", [True, False])
async def test_lost_answers_of_a_composed_write_leave_one_object_and_no_parts(gcs_target: StoreTarget,
                                                                              gcs_emulator: str,
                                                                              if_absent: bool) -> None:
    data = os.urandom(3 * PART + 7)
    async with behind_proxy(gcs_target, gcs_emulator) as (proxy, backend):
        rules = [FaultRule("lost-answer", method="POST", target=PART_UPLOAD),
                 FaultRule("lost-answer", method="POST", target=compose_of("big")),
                 FaultRule("lost-answer", method="DELETE", target=r"store%2F\.ajs-tmp%2F")]
        arm(proxy, *rules)
        async with backend.open_writer("big", if_absent=if_absent) as writer:
            await writer.write(data)
        assert [rule.hits for rule in rules] == [1, 1, 1]
        assert seen(proxy, "POST", PART_UPLOAD) == 4 + 1  # four parts, one of them sent again
        # Create-only: the compose was applied once (the retry recognised its token); otherwise sent again.
        assert seen(proxy, "POST", compose_of("big")) == (1 if if_absent else 2)
        assert await backend.get_bytes("big") == data
    assert tmp_objects(gcs_emulator, backend) == []


async def test_lost_answers_of_copies_and_deletes_are_retried_cleanly(gcs_target: StoreTarget,
                                                                      gcs_emulator: str) -> None:
    async with behind_proxy(gcs_target, gcs_emulator) as (proxy, backend):
        await backend.put_bytes("src", b"source bytes", metadata={"m": "1"})
        await backend.put_bytes("dst", b"old bytes")
        rules = [FaultRule("lost-answer", method="POST", target=BACKUP_REWRITE),
                 FaultRule("lost-answer", method="POST", target=rewrite_onto("dst")),
                 FaultRule("lost-answer", method="DELETE", target=r"/o/store%2Fsrc$")]
        arm(proxy, *rules)
        info = await backend.copy("src", "dst")
        await backend.delete("src")
        assert [rule.hits for rule in rules] == [1, 1, 1]
        assert seen(proxy, "POST", rewrite_onto("dst")) == 2
        assert user_metadata(info.metadata) == {"m": "1"}
        assert await backend.get_bytes("dst") == b"source bytes"
        assert await backend.stat("src") is None
    assert tmp_objects(gcs_emulator, backend) == []  # the backup of the old "dst" is gone (close() waited)


OLD = b"old version " * 1000
NEW = os.urandom(3 * PART + 11)
SOURCE = os.urandom(2 * PART + 5)


async def _setup_existing(backend: GCSBackend) -> None:
    await backend.put_bytes("k", OLD, metadata={"v": "old"})


async def _setup_copy(backend: GCSBackend) -> None:
    await _setup_existing(backend)
    await backend.put_bytes("src", SOURCE, metadata={"v": "src"})


async def _put_new(backend: GCSBackend, tmp: Path) -> None:
    await backend.put_bytes("k", NEW, if_absent=True)


async def _put_over(backend: GCSBackend, tmp: Path) -> None:
    await backend.put_bytes("k", NEW, metadata={"v": "new"})


async def _update(backend: GCSBackend, tmp: Path) -> None:
    await backend.update_object("k", lambda old: NEW)


async def _stream_new(backend: GCSBackend, tmp: Path) -> None:
    async with backend.open_writer("k", metadata={"v": "new"}) as writer:
        await writer.write(NEW)


async def _file_over(backend: GCSBackend, tmp: Path) -> None:
    (tmp / "new").write_bytes(NEW)
    await backend.upload_file(tmp / "new", "k", metadata={"v": "new"})


async def _copy_over(backend: GCSBackend, tmp: Path) -> None:
    await backend.copy("src", "k")


#: (name, set-up, the write, the request to hold, whether that request is the commit, bytes once it took effect)
COMMIT_PATHS = [
    ("put-new", None, _put_new, SIMPLE_CREATE, True, NEW),
    ("put-over", _setup_existing, _put_over, SIMPLE_PLAIN, True, NEW),
    ("put-over-backup", _setup_existing, _put_over, BACKUP_REWRITE, False, NEW),
    ("update", _setup_existing, _update, SIMPLE_IF_MATCH, True, NEW),
    ("stream-new", None, _stream_new, compose_of("k"), True, NEW),
    ("stream-new-part", None, _stream_new, PART_UPLOAD, False, NEW),
    ("file-over", _setup_existing, _file_over, compose_of("k"), True, NEW),
    ("file-over-backup", _setup_existing, _file_over, BACKUP_REWRITE, False, NEW),
    ("copy-over", _setup_copy, _copy_over, rewrite_onto("k"), True, SOURCE),
]
CASES = [pytest.param(setup, write, target, fate, mode, commit, effect, id=f"{name}-{fate}-{mode}")
         for name, setup, write, target, commit, effect in COMMIT_PATHS
         for fate in (("hold-before", "hold-after") if commit else ("hold-after",))
         for mode in ("task.cancel", "asyncio.timeout", "anyio-scope")]


async def _pump() -> None:
    """Let the event loop deliver a cancellation that was just requested."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.parametrize(("setup", "write", "target", "fate", "mode", "commit", "effect"), CASES)
async def test_a_write_cancelled_at_each_await_leaves_the_store_as_before(
        gcs_target: StoreTarget, gcs_emulator: str, tmp_path: Path, setup: Any, write: Any, target: str, fate: str,
        mode: str, commit: bool, effect: bytes) -> None:
    """Cancel the writer while one request of its commit path is held at the proxy (before or after the emulator
    applied it), then release it. ``task.cancel()`` and ``asyncio.timeout``: the write raises and the store is as
    before (a commit that had run is rolled back). An anyio cancel scope: a held *commit* runs to the end and the
    write returns normally, having taken effect; a held staging request is cancelled and nothing is left.
    Either way no temporary part or backup is left under ``.ajs-tmp/``."""
    async with behind_proxy(gcs_target, gcs_emulator) as (proxy, backend):
        if setup is not None:
            await setup(backend)
        before = await backend.stat("k")
        rule = FaultRule(fate, method="POST", target=target)
        arm(proxy, rule)
        returned = False
        timeouts: list[asyncio.Timeout] = []
        scope = anyio.CancelScope()

        async def call() -> None:
            nonlocal returned
            if mode == "asyncio.timeout":
                async with asyncio.timeout(None) as timeout:
                    timeouts.append(timeout)
                    await write(backend, tmp_path)
            elif mode == "anyio-scope":
                with scope:
                    await write(backend, tmp_path)
                    returned = True
                return
            else:
                await write(backend, tmp_path)
            returned = True

        task = asyncio.ensure_future(call())
        assert await anyio.to_thread.run_sync(rule.held.wait, 30), "the request never reached the proxy"
        if mode == "task.cancel":
            task.cancel()
        elif mode == "asyncio.timeout":
            timeouts[0].reschedule(asyncio.get_running_loop().time())
        else:
            scope.cancel()
        await _pump()
        rule.release.set()
        if mode == "task.cancel":
            with pytest.raises(asyncio.CancelledError):
                await task
        elif mode == "asyncio.timeout":
            with pytest.raises(TimeoutError):
                await task
        else:
            await task
        assert rule.hits == 1
        after = await backend.stat("k")
        if mode == "anyio-scope" and commit:
            assert returned, "under an anyio scope a started commit completes and the write returns"
            assert await backend.get_bytes("k") == effect
        else:
            assert not returned
            if before is None:
                assert after is None
            else:
                assert after is not None and await backend.get_bytes("k") == OLD
                assert user_metadata(after.metadata) == user_metadata(before.metadata)
        assert backend.limits.memory.in_use == 0
    assert tmp_objects(gcs_emulator, backend) == []  # after close(), which waits for background deletions


MEDIA_GET = r"alt=media"


async def test_a_cut_body_resumes_from_the_byte_reached_in_every_read(gcs_target: StoreTarget, gcs_emulator: str,
                                                                    tmp_path: Path) -> None:
    async with behind_proxy(gcs_target, gcs_emulator) as (proxy, backend):
        data = os.urandom(3 * MiB)
        await backend.put_bytes("cut", data)

        async def stream() -> bytes:
            async with backend.open_reader("cut") as reader:
                return await reader.read()

        async def download() -> bytes:
            await backend.download_file("cut", tmp_path / "cut")
            return (tmp_path / "cut").read_bytes()

        for read, gets in ((lambda: backend.get_bytes("cut"), 1), (stream, 3), (download, 3)):  # ranges of 1 MiB
            rule = FaultRule("cut", method="GET", target=MEDIA_GET)  # after 64 KiB of the first GET's answer
            arm(proxy, rule)
            assert await read() == data
            assert rule.hits == 1
            assert seen(proxy, "GET", MEDIA_GET) == gets + 1  # the cut GET was sent again, and only it
        assert backend.limits.memory.in_use == 0


async def test_an_object_replaced_while_it_is_read_is_read_in_its_new_generation(
        gcs_target: StoreTarget, gcs_emulator: str, caplog: pytest.LogCaptureFixture) -> None:
    async with behind_proxy(gcs_target, gcs_emulator) as (proxy, backend):
        await backend.put_bytes("moving", b"old" * 1000)
        rule = FaultRule("hold-before", method="GET", target=MEDIA_GET)
        arm(proxy, rule)
        task = asyncio.ensure_future(backend.get_object("moving"))
        assert await anyio.to_thread.run_sync(rule.held.wait, 30)
        new = await backend.put_bytes("moving", b"new" * 2000)  # a POST: not held
        rule.release.set()
        data, info = await task
        assert data == b"new" * 2000
        assert info.etag == new.etag
        assert "mismatch" not in caplog.text  # a replacement, not a checksum failure


async def test_a_part_upload_applied_after_its_writer_was_cancelled_is_reclaimed(gcs_target: StoreTarget,
                                                                                 gcs_emulator: str) -> None:
    """A request the network still carries when its writer is cancelled may be applied after the writer cleaned
    up (here: held *before* the emulator, released after the clean-up). No client can prevent that; such a part is
    what ``reclaim`` removes."""
    async with behind_proxy(gcs_target, gcs_emulator) as (proxy, backend):
        rule = FaultRule("hold-before", method="POST", target=PART_UPLOAD)
        arm(proxy, rule)

        async def stream() -> None:
            async with backend.open_writer("late") as writer:
                await writer.write(os.urandom(2 * PART + 1))

        task = asyncio.ensure_future(stream())
        assert await anyio.to_thread.run_sync(rule.held.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert tmp_objects(gcs_emulator, backend) == []  # the writer's clean-up ran
        rule.release.set()
        for _ in range(200):  # the proxy now forwards the held part
            if tmp_objects(gcs_emulator, backend):
                break
            await anyio.sleep(0.05)
        assert len(tmp_objects(gcs_emulator, backend)) == 1
        report = await backend.reclaim(older_than=0)
        assert report.items == 1 and report.kinds == {"temporary-part": 1} and report.bytes > 0
        assert await backend.stat("late") is None
    assert tmp_objects(gcs_emulator, backend) == []


# ------------------------------------------------------------------------------------- reclaim, integrity, memory


async def test_reclaim_removes_old_debris_and_keeps_fresh(gcs: GCSBackend, gcs_emulator: str) -> None:
    def plant(name: str, data: bytes) -> None:
        http("POST", f"{gcs_emulator}/upload/storage/v1/b/{gcs.bucket}/o?uploadType=media&name="
             + urllib.parse.quote(gcs.root + TMP + name, safe=""), data, {"Content-Type": "application/octet-stream"})

    plant("dead-upload/p000001", b"x" * 100)
    plant("dead-overwrite/backup", b"y" * 10)
    await anyio.sleep(1.2)
    plant("live-upload/p000001", b"z" * 7)
    await gcs.put_bytes("user-object", b"kept")
    created = {}
    for name in tmp_objects(gcs_emulator, gcs):
        resource = json.loads(http("GET", f"{gcs_emulator}/storage/v1/b/{gcs.bucket}/o/"
                                   + urllib.parse.quote(name, safe="")))
        created[name.rsplit(TMP, 1)[1]] = datetime.fromisoformat(resource["timeCreated"].replace("Z", "+00:00"))
    # A grace period half-way between the old debris and the fresh part.
    midpoint = created["dead-upload/p000001"] + (created["live-upload/p000001"] - created["dead-upload/p000001"]) / 2
    report = await gcs.reclaim(older_than=time.time() - midpoint.timestamp())
    assert report.items == 2 and report.bytes == 110
    assert report.kinds == {"temporary-part": 1, "backup": 1}
    assert tmp_objects(gcs_emulator, gcs) == [gcs.root + TMP + "live-upload/p000001"]
    assert await gcs.get_bytes("user-object") == b"kept"
    assert (await gcs.reclaim(older_than=3600)).items == 0


async def test_every_write_path_records_its_crc32c(gcs: GCSBackend, tmp_path: Path, gcs_emulator: str) -> None:
    small, big = b"small object", os.urandom(3 * PART + 1)
    (tmp_path / "small").write_bytes(small)
    (tmp_path / "big").write_bytes(big)
    await gcs.put_bytes("put", small)
    async with gcs.open_writer("stream-small") as writer:
        await writer.write(small)
    async with gcs.open_writer("stream-big") as writer:
        await writer.write(big)
    await gcs.upload_file(tmp_path / "small", "file-small")
    await gcs.upload_file(tmp_path / "big", "file-big")
    await gcs.copy("file-big", "copy")
    await gcs.update_object("put", lambda old: old + b"!")
    other_bucket = f"ajs-foreign-{uuid.uuid4().hex[:8]}"
    create_bucket(gcs_emulator, other_bucket)
    http("POST", f"{gcs_emulator}/upload/storage/v1/b/{other_bucket}/o?uploadType=media&name=foreign", big,
         {"Content-Type": "application/octet-stream"})  # a plain upload: no ajs-crc32c
    foreign = open_backend(f"gs://{other_bucket}", emulator_host=gcs_emulator)
    try:
        await gcs.copy_from(foreign, "foreign", "imported")
    finally:
        await foreign.close()
    expected = {"put": small + b"!", "stream-small": small, "stream-big": big, "file-small": small, "file-big": big,
                "copy": big, "imported": big}
    for key, data in expected.items():
        recorded = (await gcs.stat(key)).metadata.get(META_CRC32C)
        assert recorded is not None and crc32c_from_b64(recorded) == crc32c(data), key


async def test_require_checksum_refuses_an_object_replaced_by_a_plain_upload(gcs: GCSBackend,
                                                                             tmp_path: Path) -> None:
    await gcs.put_bytes("victim", b"written by the store")
    gcs.require_checksum = True
    assert await gcs.get_bytes("victim") == b"written by the store"
    url = (f"{gcs.api_root}/upload/storage/v1/b/{gcs.bucket}/o?uploadType=media&name="
           + urllib.parse.quote(gcs.root + "victim", safe=""))
    http("POST", url, b"replaced behind its back", {"Content-Type": "application/octet-stream"})
    for read in (lambda: gcs.get_bytes("victim"), lambda: gcs.get_object("victim"),
                 lambda: gcs.get_bytes("victim", start=0, end=3),
                 lambda: gcs.download_file("victim", tmp_path / "out")):
        with pytest.raises(IntegrityError, match=r"not written by aiojobstore.*To read it anyway"):
            await read()
    with pytest.raises(IntegrityError, match="not written by aiojobstore"):
        async with gcs.open_reader("victim") as reader:
            await reader.read()
    assert not (tmp_path / "out").exists()
    gcs.require_checksum = False  # what the message says: a backend that does not require checksums reads it
    assert await gcs.get_bytes("victim") == b"replaced behind its back"


async def test_reader_read_ahead_holds_the_store_memory_budget(gcs_target: StoreTarget,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    backend = make_backend(gcs_target, part_size=MiB, max_memory=2 * MiB, max_concurrency=4)  # read-ahead depth 3
    try:
        await backend.create()
        data = os.urandom(6 * MiB)
        await backend.put_bytes("big", data)
        ranges = count_calls(backend, "_fetch_range", monkeypatch)
        async with backend.open_reader("big") as reader:
            assert await reader.read() == data
        assert ranges["calls"] == 6
        assert backend.limits.memory.peak == 2 * MiB  # it did hold the budget, and never more than the budget
        assert ranges["peak"] <= 2  # so two ranges in flight, not three
        assert backend.limits.memory.in_use == 0
        async with backend.open_reader("big") as reader:  # closed early: what it held is given back
            assert await reader.read(10) == data[:10]
        assert backend.limits.memory.in_use == 0
    finally:
        await backend.close()
