"""S3-specific promises, on real servers started by tests/s3_servers.py: moto always, Ceph RGW when installed.

The contract suite covers what every backend shares; these tests cover multipart planning and cleanup, integrity
checks against bytes changed behind the store's back, SSE-C, conditional writes, retries through a faulty network,
server-side copies and the bucket lifecycle.
"""

from __future__ import annotations

import os
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

import aiojobstore.backends.s3.conditional as s3_conditional
import aiojobstore.backends.s3.copy as s3_copy
from aiojobstore.backends.base import META_CRC32C
from aiojobstore.backends.s3 import CREATED_BUCKET_MARKER, S3Backend
from aiojobstore.errors import (
    ConcurrentModificationError,
    EncryptionKeyError,
    IntegrityError,
    JobStoreError,
    NoSuchFileError,
)
from aiojobstore.locator import open_backend
from aiojobstore.transfer import MiB, TransferConfig, crc32c, crc32c_to_b64, plan_parts
from tests.s3_servers import FaultProxy, S3Server

PART = 5 * MiB
KEY = bytes(range(32))


@pytest.fixture(params=["moto", pytest.param("ceph", marks=pytest.mark.ceph)])
def server(request: pytest.FixtureRequest) -> S3Server:
    return request.getfixturevalue("moto_server" if request.param == "moto" else "ceph_rgw")


def make_backend(server: S3Server, locator: str | None = None, **options: object) -> S3Backend:
    transfer = TransferConfig(**{"part_size": PART, **{k: options.pop(k) for k in list(options)
                                                       if k in TransferConfig.__dataclass_fields__}})
    locator = locator or f"s3://ajs-{uuid.uuid4().hex[:16]}/store"
    backend = open_backend(locator, transfer=transfer, **server.options(**options))
    assert isinstance(backend, S3Backend)
    return backend


@pytest.fixture
async def backend(server: S3Server) -> AsyncIterator[S3Backend]:
    store = make_backend(server, sse_key=KEY)
    assert await store.create()
    try:
        yield store
    finally:
        await store.destroy()
        await store.close()


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


async def raw_head(backend: S3Backend, key: str, **extra: object) -> dict:
    client = await backend.client()
    return await client.head_object(Bucket=backend.bucket, Key=backend._full(key), **extra)


# ------------------------------------------------------------------------------------------------- planning


def test_default_part_size_gives_three_parts_for_120_mib() -> None:
    parts = plan_parts(120 * MiB)
    assert [p.length for p in parts] == [50 * MiB, 50 * MiB, 20 * MiB]


def test_planning_never_exceeds_10000_parts() -> None:
    size = 5 * 2**40  # the S3 maximum object size
    parts = plan_parts(size)
    assert len(parts) <= 10_000
    assert sum(p.length for p in parts) == size
    assert parts[0].length % MiB == 0 and parts[0].length > 50 * MiB


async def test_120_mib_file_becomes_a_three_part_object(server: S3Server, tmp_path: Path) -> None:
    store = make_backend(server, part_size=50 * MiB)
    await store.create()
    try:
        data = random_file(tmp_path / "big", 120 * MiB)
        info = await store.upload_file(tmp_path / "big", "big")
        assert info.etag is not None and info.etag.strip('"').endswith("-3")
        assert info.metadata[META_CRC32C] == crc32c_to_b64(crc32c(data))
        await store.download_file("big", tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == data
    finally:
        await store.destroy()
        await store.close()


# ------------------------------------------------------------------------------------------ uploads, streams


async def test_upload_file_multipart_round_trips_bytes_and_metadata(backend: S3Backend, tmp_path: Path) -> None:
    data = random_file(tmp_path / "src", 3 * PART + 12345)
    seen: list[int] = []
    info = await backend.upload_file(tmp_path / "src", "dir/obj", metadata={"colour": "blue"},
                                     progress=lambda done, total: seen.append(done))
    assert seen[-1] == len(data)
    # reported as slices go out, not per part (the socket may take several slices before the loop reports)
    assert len(seen) > 4 and any(done % PART for done in seen[:-1])
    assert seen == sorted(seen)
    stat = await backend.stat("dir/obj")
    assert stat is not None and stat.size == len(data) and stat.etag == info.etag
    assert stat.metadata["colour"] == "blue"
    assert stat.metadata[META_CRC32C] == crc32c_to_b64(crc32c(data))
    assert (await backend.get_bytes("dir/obj", start=PART - 10, end=PART + 10)) == data[PART - 10 : PART + 10]
    async with backend.open_reader("dir/obj") as reader:
        assert await reader.read() == data
    await backend.download_file("dir/obj", tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == data
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".part")]


async def test_write_stream_uploads_parts_and_records_checksum(backend: S3Backend) -> None:
    data = os.urandom(2 * PART + 777)
    async with backend.open_writer("stream", metadata={"k": "v"}) as writer:
        for offset in range(0, len(data), 300_001):
            await writer.write(data[offset : offset + 300_001])
    assert backend.limits.memory.in_use == 0
    got, info = await backend.get_object("stream")
    assert got == data
    assert info.metadata["k"] == "v" and info.metadata[META_CRC32C] == crc32c_to_b64(crc32c(data))
    assert await backend.pending_uploads() == []


async def test_failed_write_stream_leaves_no_pending_upload_and_no_object(backend: S3Backend) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with backend.open_writer("doomed") as writer:
            for _ in range(3):
                await writer.write(os.urandom(PART))
            raise RuntimeError("boom")
    assert await backend.pending_uploads() == []
    assert await backend.stat("doomed") is None
    assert backend.limits.memory.in_use == 0


async def test_cancelled_write_stream_leaves_nothing(backend: S3Backend) -> None:
    started = anyio.Event()

    async def writer_task() -> None:
        async with backend.open_writer("cancelled") as writer:
            for _ in range(3):
                await writer.write(os.urandom(PART))
            started.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as task_group:
        task_group.start_soon(writer_task)
        await started.wait()
        task_group.cancel_scope.cancel()
    assert await backend.pending_uploads() == []
    assert await backend.stat("cancelled") is None


# ----------------------------------------------------------------------------------------------- integrity


async def test_object_changed_behind_the_stores_back_raises_integrity_error(backend: S3Backend,
                                                                            tmp_path: Path) -> None:
    data = os.urandom(PART + 100)
    info = await backend.put_bytes("victim", data, metadata={"a": "b"})
    forged = bytearray(data)
    forged[1000] ^= 0xFF
    client = await backend.client()
    await client.put_object(Bucket=backend.bucket, Key=backend._full("victim"), Body=bytes(forged),
                            Metadata=info.metadata)
    with pytest.raises(IntegrityError):
        await backend.get_bytes("victim")
    with pytest.raises(IntegrityError):
        await backend.download_file("victim", tmp_path / "out")
    assert not (tmp_path / "out").exists() and os.listdir(tmp_path) == []
    with pytest.raises(IntegrityError):
        async with backend.open_reader("victim") as reader:
            await reader.read()
    assert await backend.get_bytes("victim", start=0, end=10) == bytes(forged[:10])  # ranges are not checked


# ----------------------------------------------------------------------------------------------- SSE-C


async def test_sse_c_round_trip_and_key_errors(server: S3Server, backend: S3Backend, tmp_path: Path) -> None:
    data = os.urandom(2 * PART + 5)
    path = tmp_path / "secret"
    path.write_bytes(data)
    await backend.upload_file(path, "enc/file", encrypted=True)
    await backend.put_bytes("enc/small", b"tiny secret", encrypted=True)
    async with backend.open_writer("enc/stream", encrypted=True) as writer:
        await writer.write(data)
    assert await backend.get_bytes("enc/file") == data
    assert await backend.get_bytes("enc/stream") == data
    assert await backend.get_bytes("enc/small") == b"tiny secret"
    copied = await backend.copy("enc/file", "enc/copy")
    assert copied.size == len(data) and await backend.get_bytes("enc/copy") == data
    for key in ("enc/file", "enc/stream", "enc/copy"):  # even where SSE-C objects cannot be copied (Ceph RGW 16)
        assert (await backend.stat(key)).metadata[META_CRC32C] == crc32c_to_b64(crc32c(data))
    if server.name == "ceph":  # the server itself refuses to serve it without the key
        client = await backend.client()
        with pytest.raises(Exception, match=r"Customer provided keys|400"):
            await client.get_object(Bucket=backend.bucket, Key=backend._full("enc/small"))
    for other_key in (None, b"w" * 32):
        other = make_backend(server, backend.describe(), sse_key=other_key)
        try:
            with pytest.raises(EncryptionKeyError, match="key"):
                await other.get_bytes("enc/small")
            with pytest.raises(EncryptionKeyError):
                await other.download_file("enc/file", tmp_path / "nope")
        finally:
            await other.close()
    with pytest.raises(EncryptionKeyError, match="sse_key"):
        await make_backend(server, backend.describe()).put_bytes("x", b"y", encrypted=True)


# ---------------------------------------------------------------------------------------- conditional writes


async def test_conditional_puts_refuse_lost_races(backend: S3Backend) -> None:
    first = await backend.put_bytes("job", b"v1", if_absent=True)
    with pytest.raises(ConcurrentModificationError):
        await backend.put_bytes("job", b"again", if_absent=True)
    second = await backend.put_bytes("job", b"v2", if_match=first.etag)
    with pytest.raises(ConcurrentModificationError):
        await backend.put_bytes("job", b"stale", if_match=first.etag)
    assert await backend.get_bytes("job") == b"v2"
    assert (await backend.stat("job")).etag == second.etag
    with pytest.raises(ConcurrentModificationError):
        await backend.put_bytes("missing", b"x", if_match=first.etag)


async def test_if_absent_multipart_stream_refused_when_key_exists(backend: S3Backend) -> None:
    await backend.put_bytes("taken", b"first")
    with pytest.raises(ConcurrentModificationError):
        async with backend.open_writer("taken", if_absent=True) as writer:
            await writer.write(os.urandom(PART + 1))
    assert await backend.get_bytes("taken") == b"first"
    assert await backend.pending_uploads() == []


async def test_stale_update_job_is_refused(server: S3Server) -> None:
    import aiojobstore

    target = server.target()
    store = aiojobstore.open_store(target.locator, part_size=PART, **target.options)
    await store.initialize()
    try:
        job = await store.create_job(aiojobstore.Job(name="a", data={"n": 1}))
        fresh = await store.load_job(job.id)
        fresh.data = {"n": 2}
        await store.update_job(fresh)
        job.data = {"n": 3}
        with pytest.raises(ConcurrentModificationError):
            await store.update_job(job)
        assert (await store.load_job(job.id)).data == {"n": 2}
    finally:
        await store.destroy()
        await store.close()


# ------------------------------------------------------------------------------------------- fault injection


@asynccontextmanager
async def store_behind_proxy(server: S3Server, *, rate: float = 0,
                             **options: object) -> AsyncIterator[tuple[S3Backend, FaultProxy]]:
    """A created store that reaches ``server`` through a :class:`FaultProxy` failing ``rate`` of the requests;
    destroyed (with the faults off) on the way out."""
    with FaultProxy(server.endpoint_url, rate=rate) as proxy:
        store = make_backend(server, endpoint_url=proxy.endpoint_url, **options)
        try:
            await store.create()
            yield store, proxy
        finally:
            with anyio.CancelScope(shield=True):
                proxy.rate = 0
                await store.destroy()
                await store.close()


async def test_faulty_network_keeps_every_byte_intact(server: S3Server, tmp_path: Path) -> None:
    data = random_file(tmp_path / "src", 3 * PART + 999)
    async with store_behind_proxy(server, rate=0.25, max_attempts=10, backoff_base=0.01,
                                  backoff_max=0.1) as (store, proxy):
        await store.upload_file(tmp_path / "src", "up")
        async with store.open_writer("stream") as writer:
            await writer.write(data)
        for i in range(10):
            await store.put_bytes(f"small/{i}", data[i * 100 : i * 100 + 100])
        await store.download_file("up", tmp_path / "down")
        assert (tmp_path / "down").read_bytes() == data
        assert await store.get_bytes("stream") == data
        async with store.open_reader("up") as reader:
            assert await reader.read() == data
        for i in range(10):
            assert await store.get_bytes(f"small/{i}") == data[i * 100 : i * 100 + 100]
        assert await store.pending_uploads() == []
        assert store._range_getter_ok  # 5xx answers and broken connections do not turn the receiver off
        assert store._direct_ok  # ...nor direct requests
    assert sum(proxy.injected.values()) >= 5, proxy.injected
    assert proxy.injected["cut"] >= 1, proxy.injected
    assert proxy.agents["aiojobstore-rangeget"] >= 1 and proxy.agents["aiojobstore-direct"] >= 20


async def test_downloads_are_received_by_rangeget_also_encrypted(server: S3Server, tmp_path: Path) -> None:
    data = random_file(tmp_path / "src", 2 * PART + 4097)  # 3 ranges, the last one not a whole page
    async with store_behind_proxy(server, sse_key=KEY) as (store, proxy):
        await store.upload_file(tmp_path / "src", "plain")
        await store.upload_file(tmp_path / "src", "secret", encrypted=True)
        before = proxy.methods["GET"]
        await store.download_file("plain", tmp_path / "plain")
        await store.download_file("secret", tmp_path / "secret")
        gets = proxy.methods["GET"] - before
        assert store._range_getter_ok  # nothing made the store give up on the receiver
    assert gets == 6 and proxy.agents["aiojobstore-rangeget"] == 6  # every ranged GET, the SSE-C ones too
    assert (tmp_path / "plain").read_bytes() == data and (tmp_path / "secret").read_bytes() == data


async def test_direct_receive_off_downloads_through_aiohttp(server: S3Server, tmp_path: Path) -> None:
    data = random_file(tmp_path / "src", 2 * PART + 1)
    async with store_behind_proxy(server, direct_receive=False) as (store, proxy):
        await store.upload_file(tmp_path / "src", "obj")
        await store.download_file("obj", tmp_path / "down")
    assert proxy.methods["GET"] >= 3 and proxy.agents["aiojobstore-rangeget"] == 0
    assert (tmp_path / "down").read_bytes() == data


async def test_behind_an_http_proxy_downloads_leave_rangeget_aside(moto_server: S3Server, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    data = random_file(tmp_path / "src", 2 * PART + 1)
    with FaultProxy(moto_server.endpoint_url, rate=0) as proxy:
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, proxy.endpoint_url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        store = make_backend(moto_server)
        try:
            await store.create()
            await store.upload_file(tmp_path / "src", "obj")
            await store.download_file("obj", tmp_path / "down")
            assert proxy.methods["GET"] >= 3  # the downloads went through the proxy...
            assert proxy.agents["aiojobstore-rangeget"] == 0  # ...and not by the receiver, which has no proxy support
            assert not store._range_getter_ok
            assert proxy.agents["aiojobstore-direct"] == 0 and not store._direct_ok  # nor by direct requests
        finally:
            await store.destroy()
            await store.close()
    assert (tmp_path / "down").read_bytes() == data


# Keys whose path encoding and signing must agree with the server's: spaces, reserved and non-ASCII characters.
AWKWARD_KEYS = ["plain", "with space/and+plus", "tilde~ and (parens) & amp=eq;semi", "percent%20kept", "ünïcødé/日本",
                "quote'\"double", "star*at@hash#bang!", "comma,colon:dollar$"]


async def test_small_requests_go_direct_and_are_signed_for_any_key(server: S3Server) -> None:
    async with store_behind_proxy(server, sse_key=KEY) as (store, proxy):
        before_direct, before_all = proxy.agents["aiojobstore-direct"], proxy.requests
        for key in AWKWARD_KEYS:
            await store.put_bytes(key, key.encode(), metadata={"origin": "test"})
            info = await store.stat(key)
            assert info is not None and info.size == len(key.encode()) and info.metadata["origin"] == "test"
            assert await store.get_bytes(key) == key.encode()
        listed = {info.key async for info in store.list(metadata=False)}  # botocore's listing: same names
        assert listed == set(AWKWARD_KEYS)
        await store.put_bytes("secret", b"sealed", encrypted=True)
        assert await store.get_bytes("secret") == b"sealed"
        for key in AWKWARD_KEYS:
            await store.delete(key)
            assert await store.stat(key) is None
        with pytest.raises(NoSuchFileError):
            await store.get_bytes("plain")
        sent = proxy.requests - before_all
        direct = proxy.agents["aiojobstore-direct"] - before_direct
        assert store._direct_ok  # no answer made the store give up on direct requests (a bad signature would)
    # put, stat, get per key; delete and stat per key; the encrypted put and its get (plus the keyless first try
    # where the server enforces SSE-C); the missing get. Every one of them direct, all but the listing.
    assert direct == sent - 1 and sent >= 5 * len(AWKWARD_KEYS) + 4, (direct, sent, proxy.agents)


async def test_part_uploads_go_direct_from_files_and_stream_buffers(server: S3Server, tmp_path: Path) -> None:
    data = random_file(tmp_path / "src", 3 * PART + 999)
    async with store_behind_proxy(server) as (store, proxy):
        await store.upload_file(tmp_path / "src", "file")  # sendfile of each part's range
        async with store.open_writer("stream") as writer:  # each part sent from its buffer
            for start in range(0, len(data), MiB):
                await writer.write(data[start : start + MiB])
        await store.upload_file(tmp_path / "src", "file-again")
        assert await store.get_bytes("file") == await store.get_bytes("stream") == data
        await store.download_file("file-again", tmp_path / "down")
        parts = [target for method, target in proxy.targets if method == "PUT" and "partNumber=" in target]
        assert len(parts) == 3 * 4 and store._direct_ok
    assert proxy.agents["aiojobstore-direct"] >= len(parts)
    assert (tmp_path / "down").read_bytes() == data


async def test_direct_requests_off_sends_everything_through_botocore(server: S3Server) -> None:
    async with store_behind_proxy(server, direct_requests=False) as (store, proxy):
        await store.put_bytes("a", b"1")
        assert await store.get_bytes("a") == b"1"
        assert await store.stat("a") is not None
        await store.delete("a")
    assert proxy.agents["aiojobstore-direct"] == 0 and proxy.requests >= 4


async def test_an_endpoint_refusing_direct_requests_gets_them_from_botocore(
        server: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    async with store_behind_proxy(server) as (store, proxy):
        proxy.refuse_agent = "aiojobstore-direct"
        await store.put_bytes("a", b"one")  # refused (403 SignatureDoesNotMatch), repeated through botocore
        assert await store.get_bytes("a") == b"one"
        await store.put_bytes("b", b"two")
        assert await store.get_bytes("b") == b"two"
        assert not store._direct_ok
    assert proxy.refused == 1  # one refusal, then botocore only
    assert "small requests go through botocore" in caplog.text


async def test_downloads_at_once_share_the_window_with_one_get_each(server: S3Server, tmp_path: Path) -> None:
    data = random_file(tmp_path / "src", 3 * PART)
    async with store_behind_proxy(server, max_concurrency=4) as (store, proxy):
        await store.upload_file(tmp_path / "src", "obj")
        before = proxy.methods["GET"]
        await store.download_file("obj", tmp_path / "alone")
        alone = proxy.methods["GET"] - before
        before = proxy.methods["GET"]
        async with anyio.create_task_group() as tasks:
            for i in range(4):
                tasks.start_soon(store.download_file, "obj", tmp_path / f"together-{i}")
        together = proxy.methods["GET"] - before
    assert alone == 3  # alone, a download takes the whole window: one ranged GET per part
    assert together == 4  # four at once share the window of 4: one stream, so one GET, per download
    for name in ["alone", *(f"together-{i}" for i in range(4))]:
        assert (tmp_path / name).read_bytes() == data


async def test_uploads_at_once_share_the_window(server: S3Server, tmp_path: Path) -> None:
    data = random_file(tmp_path / "src", 3 * PART)
    async with store_behind_proxy(server, max_concurrency=4) as (store, proxy):
        await store.put_bytes("warm-up", b"x")  # the store's conditions probe (its own PUTs) happens here
        proxy.peak_in_flight.clear()
        await store.upload_file(tmp_path / "src", "alone")
        alone = proxy.peak_in_flight["PUT"]
        proxy.peak_in_flight.clear()
        async with anyio.create_task_group() as tasks:
            for i in range(4):
                tasks.start_soon(store.upload_file, tmp_path / "src", f"together-{i}")
        together = proxy.peak_in_flight["PUT"]
        for name in ["alone", *(f"together-{i}" for i in range(4))]:
            assert await store.get_bytes(name) == data
    assert alone == 3  # alone, an upload sends all three parts at once
    # Four at once share the window of 4: one part each in flight, where all twelve could be. The proxy counts a
    # part until its thread has relayed the response, so the next part of the same upload may overlap it.
    assert together <= 2 * 4


async def test_input_errors_are_not_retried(backend: S3Backend) -> None:
    with pytest.raises(NoSuchFileError):
        await backend.get_bytes("never/written")
    assert await backend.stat("never/written") is None
    await backend.delete("never/written")


# -------------------------------------------------------------------------------------------------- copies


async def test_copy_replaces_metadata_and_copy_from_crosses_buckets(server: S3Server, backend: S3Backend,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(PART + 3)
    await backend.put_bytes("src", data, metadata={"a": "1"})
    info = await backend.copy("src", "dst", metadata={"b": "2"})
    stat = await backend.stat("dst")
    assert stat.metadata["a"] == "1" and stat.metadata["b"] == "2" and stat.etag == info.etag
    for module in (s3_copy, s3_conditional):  # take the UploadPartCopy path with little data
        monkeypatch.setattr(module, "MAX_COPY_OBJECT", MiB)
    await backend.copy("src", "dst-multipart")
    assert await backend.get_bytes("dst-multipart") == data
    other = make_backend(server)
    try:
        await other.create()
        assert await other.copy_from(backend, "src", "copied") is not None
        assert await other.get_bytes("copied") == data
        from aiojobstore.backends.memory import MemoryBackend

        assert await other.copy_from(MemoryBackend(f"x{uuid.uuid4().hex}"), "src", "copied") is None
    finally:
        await other.destroy()
        await other.close()


async def test_presigned_url_serves_the_object(backend: S3Backend) -> None:
    await backend.put_bytes("public", b"hello world")
    url = await backend.presign("public", expires=60)

    def fetch() -> bytes:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read()

    assert await anyio.to_thread.run_sync(fetch) == b"hello world"


async def test_presigned_urls_last_at_most_seven_days(backend: S3Backend) -> None:
    assert "X-Amz-Expires=604800" in await backend.presign("k", expires=7 * 24 * 3600)
    for expires in (0, 7 * 24 * 3600 + 1):
        with pytest.raises(JobStoreError, match="7 days"):
            await backend.presign("k", expires=expires)


# ------------------------------------------------------------------------------------------ bucket lifecycle


async def test_destroy_removes_only_what_the_store_owns(server: S3Server) -> None:
    owner = make_backend(server)
    assert await owner.create() is True
    assert await owner.create() is False
    for i in range(5):
        await owner.put_bytes(f"k/{i}", b"x")
    neighbour = make_backend(server, f"s3://{owner.bucket}/other")
    assert await neighbour.create() is False
    await neighbour.put_bytes("keep", b"y")
    client = await owner.client()
    await client.create_multipart_upload(Bucket=owner.bucket, Key=owner._full("pending"))
    assert CREATED_BUCKET_MARKER not in [i.key async for i in owner.list()]

    await neighbour.destroy()  # did not create the bucket: empties its prefix only
    assert await neighbour.exists()
    await owner.destroy()  # created it: empties the prefix, aborts uploads, removes the now empty bucket
    assert not await owner.exists()
    await owner.destroy()  # idempotent
    await owner.close()
    await neighbour.close()


async def test_destroy_keeps_a_bucket_that_is_not_empty(server: S3Server) -> None:
    owner = make_backend(server)
    await owner.create()
    stranger = make_backend(server, f"s3://{owner.bucket}/stranger")
    await stranger.put_bytes("file", b"z")
    await owner.destroy()
    assert await owner.exists()
    assert await stranger.get_bytes("file") == b"z"
    await stranger.destroy()
    client = await owner.client()
    await client.delete_bucket(Bucket=owner.bucket)
    await owner.close()
    await stranger.close()


# -------------------------------------------------------------------------------------------------- options


def test_unknown_options_are_rejected_with_the_accepted_ones() -> None:
    with pytest.raises(JobStoreError, match="endpoint_url"):
        open_backend("s3://some-bucket/p", endpoit_url="http://127.0.0.1:1")


async def test_client_is_lazy_and_pooled_to_the_request_limit(moto_server: S3Server) -> None:
    store = make_backend(moto_server, max_requests=96)
    assert store._client is None  # no I/O and no client before first use
    client = await store.client()
    assert client.meta.config.max_pool_connections == 96
    assert client.meta.config.s3["addressing_style"] == "path"
    await store.close()
    assert store._client is None


async def test_list_delimited_lists_one_level_in_key_order_and_hides_reserved_keys(backend: S3Backend) -> None:
    from aiojobstore.backends.base import Backend, CommonPrefix, ObjectInfo

    for key in ("a/1", "a/2", "a/deep/3", "b", "c/x", "a/b/4"):
        await backend.put_bytes(key, key.encode())
    top = [entry async for entry in backend.list_delimited()]
    assert [e.key for e in top] == ["a/", "b", "c/"]  # the created-bucket marker is hidden
    assert top[0] == CommonPrefix("a/") and top[2] == CommonPrefix("c/")
    level = [entry async for entry in backend.list_delimited("a/")]
    assert [(type(e).__name__, e.key) for e in level] == [
        ("ObjectInfo", "a/1"), ("ObjectInfo", "a/2"), ("CommonPrefix", "a/b/"), ("CommonPrefix", "a/deep/")]
    assert isinstance(level[0], ObjectInfo) and level[0].size == 3
    folded = [entry async for entry in Backend.list_delimited(backend, "a/")]
    assert [e.key for e in folded] == [e.key for e in level]  # the native listing agrees with the generic fold
    assert [entry async for entry in backend.list_delimited("nothing/")] == []
