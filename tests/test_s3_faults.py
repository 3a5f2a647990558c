"""S3 under lost answers, cancellation mid-commit and servers that ignore conditions, on real servers (moto always,
Ceph RGW when installed) reached through :class:`tests.fault_proxy.FaultProxy`.

- A *lost answer* is a request the server applied whose answer never reached the client (the proxy resets the
  connection after the server answered): the client retries, and the store must end exactly as if the answer
  had arrived (counts exact, no false conflict, nothing pending, nothing orphaned).
- *Cancellation mid-commit*: the commit's request is held at the proxy (before or after the server applied it),
  the caller is cancelled (``task.cancel()``, ``asyncio.timeout``, an anyio cancel scope), then the request is
  released. With ``task.cancel()`` and ``asyncio.timeout`` the write raises and the store is as before; under an
  anyio cancel scope the write returns normally and took effect. Either way no upload is left pending.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import aiojobstore
from aiojobstore.backends.base import META_CRC32C
from aiojobstore.backends.s3 import _BACKUP_PREFIX, S3Backend
from aiojobstore.commit import META_WRITE_TOKEN
from aiojobstore.errors import ConcurrentModificationError, ConditionalWritesUnsupportedError
from aiojobstore.locator import open_backend
from aiojobstore.transfer import MiB, TransferConfig, crc32c, crc32c_to_b64
from tests.fault_proxy import FaultProxy, FaultRule
from tests.s3_servers import S3Server

PART = 5 * MiB
FAST_RETRIES = {"max_attempts": 6, "backoff_base": 0.01, "backoff_max": 0.05}


@pytest.fixture(params=["moto", pytest.param("ceph", marks=pytest.mark.ceph)])
def server(request: pytest.FixtureRequest) -> S3Server:
    return request.getfixturevalue("moto_server" if request.param == "moto" else "ceph_rgw")


def make_backend(server: S3Server, endpoint_url: str, locator: str | None = None, **options: object) -> S3Backend:
    fields = TransferConfig.__dataclass_fields__
    transfer = TransferConfig(**{"part_size": PART, **FAST_RETRIES,
                                 **{k: options.pop(k) for k in list(options) if k in fields}})
    backend = open_backend(locator or f"s3://ajs-{uuid.uuid4().hex[:16]}/store", transfer=transfer,
                           **server.options(endpoint_url=endpoint_url, **options))
    assert isinstance(backend, S3Backend)
    return backend


@asynccontextmanager
async def proxied_store(server: S3Server, *rules: FaultRule, proxy_class: type[FaultProxy] = FaultProxy,
                        **options: object) -> AsyncIterator[tuple[S3Backend, FaultProxy]]:
    """A created store reaching ``server`` through a proxy with ``rules`` (no random faults); destroyed after."""
    with proxy_class(server.endpoint_url, rate=0, rules=list(rules)) as proxy:
        store = make_backend(server, proxy.endpoint_url, **options)
        try:
            await store.create()
            await store._conditions_honoured()  # the probe's requests are not the ones the rules aim at
            yield store, proxy
        finally:
            with anyio.CancelScope(shield=True):
                for rule in proxy.rules:
                    rule.release.set()
                proxy.rules.clear()
                await store.destroy()
                await store.close()


def header(name: str) -> Callable[[bytes], bool]:
    """A rule condition: the request carries header ``name``."""
    wanted = name.lower().encode() + b":"
    return lambda head: any(line.lower().startswith(wanted) for line in head.split(b"\r\n"))


def without(name: str) -> Callable[[bytes], bool]:
    has = header(name)
    return lambda head: not has(head)


async def every_key(store: S3Backend) -> list[str]:
    """Every key under the store's prefix, the reserved ones (backups, probes) included."""
    return sorted([k[len(store.root):] async for k in store._list_keys(store.root)])


async def assert_clean(store: S3Backend, expected: list[str]) -> None:
    """Exactly ``expected`` is stored (no backup, no probe, no orphan) and no upload is pending."""
    assert await store.pending_uploads() == []
    keys = [k for k in await every_key(store) if k != ".aiojobstore-created-bucket"]
    assert keys == sorted(expected), keys


# Request shapes (method, target regex, header condition) of each kind of S3 request.
PUT_OBJECT = ("PUT", r"/store/[^?]*$")
CREATE_UPLOAD = ("POST", r"\?uploads")
UPLOAD_PART = ("PUT", r"partNumber=2&|partNumber=2$|uploadId=.*partNumber=2")
COMPLETE_UPLOAD = ("POST", r"uploadId=")
DELETE_OBJECTS = ("POST", r"\?delete")


def lost(method: str, target: str, when: Callable[[bytes], bool] | None = None) -> FaultRule:
    return FaultRule(fate="lost-answer", method=method, target=target, when=when)


# ---------------------------------------------------------------------------------------------- lost answers


@pytest.mark.parametrize("condition", ["none", "if_absent", "if_match"])
async def test_lost_answer_of_a_put_is_applied_once_and_reported_as_success(server: S3Server,
                                                                            condition: str) -> None:
    async with proxied_store(server) as (store, proxy):
        first = await store.put_bytes("obj", b"v1") if condition == "if_match" else None
        proxy.rules.append(lost(*PUT_OBJECT))
        if condition == "if_absent":
            info = await store.put_bytes("obj", b"v2", if_absent=True)
        elif condition == "if_match":
            assert first is not None
            info = await store.put_bytes("obj", b"v2", if_match=first.etag)
        else:
            info = await store.put_bytes("obj", b"v2")
        assert proxy.injected["lost-answer"] == 1
        got, stored = await store.get_object("obj")
        assert got == b"v2" and stored.metadata[META_WRITE_TOKEN] == info.metadata[META_WRITE_TOKEN]
        await assert_clean(store, ["obj"])


async def test_update_object_keeps_metadata_and_encryption_through_a_lost_answer(server: S3Server) -> None:
    async with proxied_store(server, sse_key=bytes(range(32))) as (store, proxy):
        await store.put_bytes("obj", b"1", metadata={"colour": "blue"}, encrypted=True)
        proxy.rules.append(lost("PUT", r"/store/obj$", header("if-match")))
        info = await store.update_object("obj", lambda b: b + b"2")
        assert proxy.injected["lost-answer"] == 1
        got, stored = await store.get_object("obj")
        assert got == b"12" and stored.metadata["colour"] == "blue" and "ajs-key-sha256" in stored.metadata
        assert stored.metadata[META_CRC32C] == crc32c_to_b64(crc32c(b"12")) and stored.etag == info.etag
        await assert_clean(store, ["obj"])


async def test_lost_answers_keep_job_counts_exact(server: S3Server) -> None:
    """create_job and update_job whose answers are lost: no "already exists", no double increment."""
    with FaultProxy(server.endpoint_url, rate=0) as proxy:
        target = server.target(endpoint_url=proxy.endpoint_url)
        store = aiojobstore.open_store(target.locator, part_size=PART, **FAST_RETRIES, **target.options)
        await store.initialize()
        try:
            proxy.rules.append(FaultRule(fate="lost-answer", method="PUT", target=r"/jobs/", times=None,
                                         rate=0.5, when=header("if-none-match")))
            jobs = [await store.create_job(aiojobstore.Job(name=f"j{i}", data={"n": 0})) for i in range(6)]
            proxy.rules[:] = [FaultRule(fate="lost-answer", method="PUT", target=r"/jobs/", times=None, rate=0.5,
                                        when=header("if-match"))]
            for _ in range(4):
                for job in jobs:
                    job.data = {"n": job.data["n"] + 1}
                    await store.update_job(job)
            assert proxy.injected["lost-answer"] >= 5, proxy.injected
            proxy.rules.clear()
            for job in jobs:
                stored = await store.load_job(job.id)
                assert stored.data == {"n": 4} and stored.version == 5
        finally:
            proxy.rules.clear()
            await store.destroy()
            await store.close()


@pytest.mark.parametrize("request_kind", ["create", "part", "complete"])
async def test_lost_answer_in_a_multipart_upload(server: S3Server, tmp_path: Path, request_kind: str) -> None:
    data = os.urandom(3 * PART + 17)
    (tmp_path / "src").write_bytes(data)
    shape = {"create": CREATE_UPLOAD, "part": UPLOAD_PART, "complete": COMPLETE_UPLOAD}[request_kind]
    async with proxied_store(server, lost(*shape)) as (store, proxy):
        info = await store.upload_file(tmp_path / "src", "big")
        assert proxy.injected["lost-answer"] == 1
        got, stored = await store.get_object("big")
        assert got == data and stored.metadata[META_CRC32C] == crc32c_to_b64(crc32c(data))
        assert stored.metadata[META_WRITE_TOKEN] == info.metadata[META_WRITE_TOKEN]
        await assert_clean(store, ["big"])


async def test_lost_answer_of_the_checksum_copy_of_a_stream(server: S3Server) -> None:
    data = os.urandom(2 * PART + 3)
    async with proxied_store(server, lost("PUT", r"/store/stream$", header("x-amz-copy-source"))) as (store, proxy):
        async with store.open_writer("stream") as writer:
            await writer.write(data)
        assert proxy.injected["lost-answer"] == 1
        got, stored = await store.get_object("stream")
        assert got == data and stored.metadata[META_CRC32C] == crc32c_to_b64(crc32c(data))
        await assert_clean(store, ["stream"])


async def test_lost_answer_of_a_copy_and_of_a_batch_delete(server: S3Server) -> None:
    async with proxied_store(server) as (store, proxy):
        await store.put_bytes("src", b"payload", metadata={"m": "1"})
        proxy.rules.append(lost("PUT", r"/store/dst$", header("x-amz-copy-source")))
        copied = await store.copy("src", "dst")
        got, stored = await store.get_object("dst")
        assert got == b"payload" and stored.metadata["m"] == "1" and META_CRC32C in stored.metadata
        assert stored.metadata[META_WRITE_TOKEN] == copied.metadata[META_WRITE_TOKEN]
        await assert_clean(store, ["dst", "src"])
        for i in range(5):
            await store.put_bytes(f"many/{i}", b"x")
        proxy.rules.append(lost(*DELETE_OBJECTS))
        await store.delete_many([f"many/{i}" for i in range(5)])
        assert proxy.injected["lost-answer"] == 2
        await assert_clean(store, ["dst", "src"])


# -------------------------------------------------------------------------------------- cancellation mid-commit


async def until(flag: Callable[[], bool]) -> None:
    with anyio.fail_after(30):
        while not flag():
            await anyio.sleep(0.005)


async def cancel_while_held(how: str, write: Callable[[], Awaitable[object]], rule: FaultRule) -> bool:
    """Run ``write`` and cancel it ``how`` while ``rule`` holds its request at the proxy, then release the
    request. Returns whether the write returned normally (it must raise for task.cancel/asyncio.timeout)."""
    returned = False

    async def release_soon() -> None:
        await asyncio.sleep(0.05)
        rule.release.set()

    if how == "task.cancel":
        task = asyncio.ensure_future(write())
        await until(rule.held.is_set)
        task.cancel()
        await release_soon()
        with pytest.raises(asyncio.CancelledError):
            await task
    elif how == "asyncio.timeout":
        async def timed() -> None:
            async with asyncio.timeout(None) as deadline:
                fire = asyncio.ensure_future(until(rule.held.is_set))
                fire.add_done_callback(lambda _: deadline.reschedule(asyncio.get_running_loop().time()))
                await write()

        releaser = asyncio.ensure_future(until(rule.held.is_set))
        releaser.add_done_callback(lambda _: asyncio.ensure_future(release_soon()))
        with pytest.raises(TimeoutError):
            await timed()
    else:
        async with anyio.create_task_group() as tasks:
            with anyio.CancelScope() as scope:
                async def cancel_then_release() -> None:
                    await until(rule.held.is_set)
                    scope.cancel()
                    await release_soon()

                tasks.start_soon(cancel_then_release)
                await write()
                returned = True
                await anyio.lowlevel.checkpoint()
    await until(lambda: rule.release.is_set())
    return returned


HOW = ["task.cancel", "asyncio.timeout", "anyio-scope"]
HOLDS = ["hold-before", "hold-after"]


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("fate", HOLDS)
@pytest.mark.parametrize("path", ["create", "overwrite", "overwrite-capture", "update_object"])
async def test_cancel_during_a_small_put_commit(server: S3Server, how: str, fate: str, path: str) -> None:
    async with proxied_store(server) as (store, proxy):
        if path != "create":
            await store.put_bytes("obj", b"old", metadata={"keep": "me"})
        # The committing request (the create's If-None-Match put, the replacing If-Match put), or the read of the
        # version an overwrite replaces, an earlier await of the same commit.
        if path == "overwrite-capture":
            rule = FaultRule(fate=fate, method="GET", target=r"/store/obj$")
        else:
            rule = FaultRule(fate=fate, method="PUT", target=r"/store/obj$",
                             when=header("if-none-match") if path == "create" else header("if-match"))
        proxy.rules.append(rule)
        if path == "update_object":
            returned = await cancel_while_held(how, lambda: store.update_object("obj", lambda b: b + b"+1"), rule)
        else:
            returned = await cancel_while_held(how, lambda: store.put_bytes("obj", b"new"), rule)
        assert rule.hits == 1
        if how == "anyio-scope":
            assert returned
            assert await store.get_bytes("obj") == (b"old+1" if path == "update_object" else b"new")
        elif path == "create":
            assert await store.stat("obj") is None
        else:
            got, info = await store.get_object("obj")
            assert got == b"old" and info.metadata["keep"] == "me"
        await assert_clean(store, [] if path == "create" and how != "anyio-scope" else ["obj"])


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("path", ["create-upload", "capture-head", "complete", "complete-overwrite",
                                  "stream-checksum-copy"])
async def test_cancel_during_a_multipart_commit(server: S3Server, tmp_path: Path, how: str, path: str) -> None:
    data = os.urandom(2 * PART + 5)
    (tmp_path / "src").write_bytes(data)
    shapes = {"create-upload": (*CREATE_UPLOAD, None), "capture-head": ("HEAD", r"/store/big$", None),
              "complete": (*COMPLETE_UPLOAD, None),
              "complete-overwrite": (*COMPLETE_UPLOAD, None),
              "stream-checksum-copy": ("PUT", r"/store/big$", header("x-amz-copy-source"))}
    method, target, when = shapes[path]
    async with proxied_store(server) as (store, proxy):
        if path == "complete-overwrite":
            await store.put_bytes("big", b"old")
        rule = FaultRule(fate="hold-after", method=method, target=target, when=when)
        proxy.rules.append(rule)

        async def write() -> object:
            if path == "stream-checksum-copy":
                async with store.open_writer("big") as writer:
                    await writer.write(data)
                return None
            return await store.upload_file(tmp_path / "src", "big")

        returned = await cancel_while_held(how, write, rule)
        if how == "anyio-scope" and path != "create-upload":
            assert returned and await store.get_bytes("big") == data
            await assert_clean(store, ["big"])
        elif path == "complete-overwrite":
            assert await store.get_bytes("big") == b"old"
            await assert_clean(store, ["big"])
        elif how == "anyio-scope":  # cancelled at the first checkpoint after the create: nothing stays
            await assert_clean(store, ["big"] if returned else [])
        else:
            assert await store.stat("big") is None
            await assert_clean(store, [])


async def test_cancelled_overwrite_of_a_large_object_is_restored_from_its_backup(server: S3Server) -> None:
    """Above 8 MiB the replaced version is kept as a server-side copy (a backup key), not in memory."""
    old = os.urandom(9 * MiB)
    async with proxied_store(server) as (store, proxy):
        await store.put_bytes("obj", old, metadata={"keep": "me"})
        rule = FaultRule(fate="hold-after", method="PUT", target=r"/store/obj$", when=header("if-match"))
        proxy.rules.append(rule)
        await cancel_while_held("task.cancel", lambda: store.put_bytes("obj", b"new"), rule)
        assert any(re.search(re.escape(_BACKUP_PREFIX), target) for _, target in proxy.targets)
        got, info = await store.get_object("obj")
        assert got == old and info.metadata["keep"] == "me"
        await assert_clean(store, ["obj"])
        await store.put_bytes("obj", b"new")  # not cancelled: replaced, and the backup is gone
        assert await store.get_bytes("obj") == b"new"
        await assert_clean(store, ["obj"])


async def test_every_write_survives_a_quarter_of_all_answers_lost(server: S3Server, tmp_path: Path) -> None:
    """Lost answers on any request, at random: every write returns once, counts are exact, nothing is left."""
    data = os.urandom(2 * PART + 99)
    (tmp_path / "src").write_bytes(data)
    async with proxied_store(server, max_attempts=12) as (store, proxy):
        proxy.rules.append(FaultRule(fate="lost-answer", times=None, rate=0.25))
        await store.upload_file(tmp_path / "src", "up")
        async with store.open_writer("stream") as writer:
            await writer.write(data)
        await store.put_bytes("counter", b"0", if_absent=True)
        for _ in range(8):
            await store.update_object("counter", lambda b: str(int(b) + 1).encode())
        counted = await store.get_bytes("counter")
        await store.put_bytes("counter", b"replaced")  # an overwrite
        await store.copy("up", "copied")
        proxy.rules.clear()
        assert proxy.injected["lost-answer"] >= 5, proxy.injected
        assert counted == b"8"
        assert await store.get_bytes("counter") == b"replaced"
        for key in ("up", "stream", "copied"):
            got, info = await store.get_object(key)
            assert got == data and info.metadata[META_CRC32C] == crc32c_to_b64(crc32c(data))
        await assert_clean(store, ["copied", "counter", "stream", "up"])


async def test_cancel_while_creating_an_upload_whose_answer_is_lost(server: S3Server, tmp_path: Path) -> None:
    """A cancelled create whose first attempt's answer was lost: both uploads are aborted."""
    (tmp_path / "src").write_bytes(os.urandom(2 * PART))
    async with proxied_store(server, lost(*CREATE_UPLOAD)) as (store, proxy):
        hold = FaultRule(fate="hold-after", method="POST", target=r"\?uploads")
        proxy.rules.append(hold)
        await cancel_while_held("task.cancel", lambda: store.upload_file(tmp_path / "src", "big"), hold)
        assert proxy.injected["lost-answer"] == 1
        await assert_clean(store, [])


# ---------------------------------------------------------------------------------- conditions and their probe


async def test_first_conditional_write_of_a_fresh_store_object_succeeds(server: S3Server) -> None:
    """The If-Match form (Ceph RGW 16 wants the ETag without quotes) is learned before the first conditional
    request is built, so a fresh backend's first write, an If-Match one, is not refused."""
    writer = make_backend(server, server.endpoint_url)
    await writer.create()
    try:
        info = await writer.put_bytes("obj", b"v1")
        fresh = make_backend(server, server.endpoint_url, writer.describe())
        try:
            assert fresh._conditional_ok is None
            await fresh.put_bytes("obj", b"v2", if_match=info.etag)
            assert await fresh.get_bytes("obj") == b"v2"
        finally:
            await fresh.close()
        target = server.target()
        first = aiojobstore.open_store(target.locator, **target.options)
        await first.initialize()
        try:
            job = await first.create_job(aiojobstore.Job(name="j", data={"n": 0}))
            worker = aiojobstore.open_store(target.locator, **target.options)
            await worker.resume()
            try:
                loaded = await worker.load_job(job.id)
                loaded.data = {"n": 1}
                await worker.update_job(loaded)  # a fresh store object's first conditional write
            finally:
                await worker.close()
            assert (await first.load_job(job.id)).data == {"n": 1}
        finally:
            await first.destroy()
            await first.close()
    finally:
        await writer.destroy()
        await writer.close()


async def test_backends_probing_at_once_all_find_conditions_honoured(server: S3Server) -> None:
    """Sixteen backends opening one store at once probe on keys of their own: none can disturb another's probe
    (with one shared probe key, a delete by one let another's If-None-Match succeed), and no probe is left."""
    first = make_backend(server, server.endpoint_url)
    await first.create()
    backends = [make_backend(server, server.endpoint_url, first.describe()) for _ in range(16)]
    try:
        results: list[bool] = []

        async def probe(backend: S3Backend) -> None:
            results.append(await backend._conditions_honoured(required=True))

        async with anyio.create_task_group() as tasks:
            for backend in backends:
                tasks.start_soon(probe, backend)
        assert results == [True] * 16
        assert await every_key(first) == [".aiojobstore-created-bucket"]
    finally:
        for backend in backends:
            await backend.close()
        await first.destroy()
        await first.close()


class ConditionStrippingProxy(FaultProxy):
    """A server that ignores conditional writes: the proxy drops If-None-Match and If-Match from every request.
    (The headers are signed, so only a server that does not check signatures, moto, accepts the requests.)"""

    def _relay(self, client, head_part: bytes, body: bytes, method: bytes, fate: str, rule) -> None:  # type: ignore[override]
        head_part = re.sub(rb"\r\nif-(none-)?match:[^\r]*", b"", head_part, flags=re.IGNORECASE)
        super()._relay(client, head_part, body, method, fate, rule)


async def test_a_server_ignoring_conditions_is_refused_unless_opted_in(moto_server: S3Server) -> None:
    async with proxied_store(moto_server, proxy_class=ConditionStrippingProxy) as (store, _proxy):
        with pytest.raises(ConditionalWritesUnsupportedError, match=r"ignores If-None-Match.*unsafe-fallback"):
            await store.put_bytes("job", b"v1", if_absent=True)
        with pytest.raises(ConditionalWritesUnsupportedError):
            await store.put_bytes("job", b"v1", if_match='"abc"')
        await store.put_bytes("plain", b"unconditional writes still work")
        assert await store.get_bytes("plain") == b"unconditional writes still work"
        assert await store.stat("job") is None
    async with proxied_store(moto_server, proxy_class=ConditionStrippingProxy,
                             conditional_writes="unsafe-fallback") as (store, _proxy):
        first = await store.put_bytes("job", b"v1", if_absent=True)
        with pytest.raises(ConcurrentModificationError):  # the racy HEAD check still sees a plain conflict
            await store.put_bytes("job", b"v2", if_absent=True)
        await store.update_object("job", lambda b: b + b"+1")
        with pytest.raises(ConcurrentModificationError):
            await store.put_bytes("job", b"stale", if_match=first.etag)
        assert await store.get_bytes("job") == b"v1+1"
        assert store._conditional_ok is False


async def test_the_job_store_refuses_such_a_server_at_initialize(moto_server: S3Server) -> None:
    with ConditionStrippingProxy(moto_server.endpoint_url, rate=0) as proxy:
        target = moto_server.target(endpoint_url=proxy.endpoint_url)
        store = aiojobstore.open_store(target.locator, **target.options)
        try:
            with pytest.raises(ConditionalWritesUnsupportedError, match="conditional_writes='unsafe-fallback'"):
                await store.initialize()
        finally:
            await store.destroy()
            await store.close()


def test_conditional_writes_option_is_checked() -> None:
    with pytest.raises(aiojobstore.JobStoreError, match="unsafe-fallback"):
        open_backend("s3://some-bucket/p", conditional_writes="sometimes")
    opted_in = open_backend("s3://some-bucket/p", conditional_writes="unsafe-fallback")
    assert opted_in.conditional_writes == "unsafe-fallback"


# ------------------------------------------------------------------------------------------ integrity, reclaim


async def test_an_object_replaced_by_a_plain_put_is_refused_when_checksums_are_required(
        server: S3Server, tmp_path: Path) -> None:
    async with proxied_store(server) as (store, _proxy):
        await store.put_bytes("obj", b"mine")
        client = await store.client()
        await client.put_object(Bucket=store.bucket, Key=store._full("obj"), Body=b"foreign")
        assert await store.get_bytes("obj") == b"foreign"  # a plain backend reads foreign objects
        store.require_checksum = True
        for read in (lambda: store.get_bytes("obj"), lambda: store.get_bytes("obj", start=1),
                     lambda: store.download_file("obj", tmp_path / "out")):
            with pytest.raises(aiojobstore.IntegrityError, match=r"not written by aiojobstore.*open_backend"):
                await read()
        with pytest.raises(aiojobstore.IntegrityError):
            async with store.open_reader("obj") as reader:
                await reader.read()
        await store.put_bytes("again", b"ours")
        assert await store.get_bytes("again") == b"ours"


async def test_read_ahead_counts_against_max_memory(server: S3Server) -> None:
    data = os.urandom(3 * PART)
    async with proxied_store(server, max_memory=PART) as (store, _proxy):
        await store.put_bytes("obj", data)
        async with store.open_reader("obj") as reader:
            first = await reader.read(1)
            assert store.limits.memory.in_use > 0
            assert first + await reader.read() == data
            assert store.limits.memory.peak <= PART + 8 * MiB  # one range beyond a full budget, never four
        assert store.limits.memory.in_use == 0


async def test_reclaim_aborts_old_uploads_and_deletes_old_backups(server: S3Server) -> None:
    async with proxied_store(server) as (store, _proxy):
        client = await store.client()
        await client.create_multipart_upload(Bucket=store.bucket, Key=store._full("abandoned"))
        await client.put_object(Bucket=store.bucket, Key=store._full(_BACKUP_PREFIX + "left"), Body=b"x")
        if server.name != "moto":  # moto dates every upload 2010-11-10
            assert (await store.reclaim(older_than=3600)).items == 0  # too young: a live writer's
            assert await store.pending_uploads() == ["abandoned"]
        report = await store.reclaim(older_than=-60)
        assert report.kinds == {"multipart-upload": 1, "backup": 1}
        await assert_clean(store, [])
