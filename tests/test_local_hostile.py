"""The local backend under hostile input: planted symbolic links and FIFOs, over-long names, a full device,
damaged bytes and metadata, crash debris, and cancellation right after an operation starts."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import pytest

import aiojobstore
from aiojobstore import IntegrityError, InvalidKeyError, JobStoreError, NoSuchFileError
from aiojobstore.backends.local import TMP_PREFIX, XATTR_NAME, LocalBackend
from aiojobstore.errors import StorageFullError
from aiojobstore.transfer import TransferConfig

SECRET = b"SECRET, outside the store"


@pytest.fixture
async def backend(tmp_path):
    local = LocalBackend(tmp_path / "root")
    await local.create()
    yield local
    await local.close()


def snapshot(directory: Path) -> dict[str, bytes | str]:
    """Every entry under ``directory`` (links not followed) with its content or link target."""
    found: dict[str, bytes | str] = {}
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        if path.is_symlink():
            found[name] = "-> " + os.readlink(path)
        elif path.is_file():
            found[name] = path.read_bytes()
        else:
            found[name] = "dir"
    return found


def temp_files(*directories: Path) -> list[str]:
    return [os.path.join(d, name) for top in directories for d, _, names in os.walk(top)
            for name in names if name.startswith(TMP_PREFIX)]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def refuses_every_use(backend: LocalBackend, key: str, tmp_path: Path) -> None:
    """Every operation on ``key``, whose way leads through a planted link: reads find nothing, writes are
    refused, deletes and reclaim pass by."""
    with pytest.raises(NoSuchFileError):
        await backend.get_bytes(key)
    with pytest.raises(NoSuchFileError):
        await backend.get_object(key, start=0, end=3)
    with pytest.raises(NoSuchFileError):
        async with backend.open_reader(key):
            pass
    assert await backend.stat(key) is None
    assert key not in [info.key async for info in backend.list("")]
    assert key not in [info.key async for info in backend.list(key)]
    with pytest.raises(NoSuchFileError):
        await backend.download_file(key, tmp_path / "downloaded")
    assert not (tmp_path / "downloaded").exists()
    with pytest.raises(NoSuchFileError):
        await backend.copy(key, "copied")
    assert await backend.stat("copied") is None
    with pytest.raises(NoSuchFileError):
        await backend.update_object(key, lambda data: data + b"!")
    with pytest.raises(InvalidKeyError, match="symbolic link"):
        backend.local_path(key)
    with pytest.raises(InvalidKeyError, match="symbolic link"):
        await backend.presign(key)
    with pytest.raises(InvalidKeyError, match="symbolic link"):
        await backend.put_bytes(key, b"overwritten")
    with pytest.raises(InvalidKeyError, match="symbolic link"):
        await backend.put_bytes(key, b"overwritten", if_absent=True)
    with pytest.raises(InvalidKeyError, match="symbolic link"):
        async with backend.open_writer(key) as writer:
            await writer.write(b"overwritten")
    (tmp_path / "upload").write_bytes(b"overwritten")
    with pytest.raises(InvalidKeyError, match="symbolic link"):
        await backend.upload_file(tmp_path / "upload", key)
    await backend.delete(key)
    await backend.delete_many([key])
    await backend.delete_prefix(key)
    if "/" in key:
        await backend.delete_prefix(key.rsplit("/", 1)[0] + "/")
    await backend.reclaim(older_than=0)
    assert not temp_files(backend.root)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A directory next to the store with a sentinel file, and an old temp file reclaim must not reach."""
    directory = tmp_path / "outside"
    (directory / "u").mkdir(parents=True)
    (directory / "secret").write_bytes(SECRET)
    (directory / "u" / "secret").write_bytes(SECRET)
    (directory / f"{TMP_PREFIX}new-1-000000000000").write_bytes(b"not ours to reclaim")
    return directory


async def test_an_object_replaced_by_a_symlink_is_never_followed(backend, tmp_path, outside):
    await backend.put_bytes("other", b"inside")
    await backend.put_bytes("k", b"mine")
    before = snapshot(outside)
    os.unlink(os.path.join(backend.root, "k"))
    os.symlink(outside / "secret", os.path.join(backend.root, "k"))
    await refuses_every_use(backend, "k", tmp_path)
    assert snapshot(outside) == before
    assert await backend.get_bytes("other") == b"inside"


@pytest.mark.parametrize(("link", "rest"), [("shared", "secret"), ("files/c/ab/job1", "u/secret"),
                                            ("files/n/ab", "u/secret")],
                         ids=["shared-dir", "cleanup-dir", "shard-dir"])
async def test_a_directory_replaced_by_a_symlink_is_never_followed(backend, tmp_path, outside, link, rest):
    await backend.put_bytes(f"{link}/other/kept", b"inside")
    before = snapshot(outside)
    real = Path(backend.root, link)
    for child in real.iterdir():  # the store's files move away; the link stands where their directory was
        child.rename(tmp_path / child.name)
    real.rmdir()
    real.symlink_to(outside, target_is_directory=True)
    await refuses_every_use(backend, f"{link}/{rest}", tmp_path)
    with pytest.raises(InvalidKeyError, match="symbolic link"):
        await backend.put_bytes(f"{link}/brand-new", b"escaped?")
    assert [info.key async for info in backend.list(link + "/")] == []
    await backend.delete_prefix("")
    assert snapshot(outside) == before
    assert real.is_symlink()


async def test_delete_job_never_deletes_through_a_symlinked_cleanup_directory(tmp_path, outside):
    async with aiojobstore.open_store(f"file:{tmp_path}/store") as store:
        await store.initialize()
        job = await store.create_job(aiojobstore.Job(name="j"))
        (tmp_path / "data").write_bytes(b"job data")
        file_id = await store.write_file(tmp_path / "data", job_id=job.id, cleanup=True)
        job_dir = Path(store.backend.local_path("files/" + file_id)).parents[1]
        for child in job_dir.iterdir():  # the job's own files: moved out, mirrored by the outside directory
            (outside / child.name).mkdir()
            (outside / child.name / "data").write_bytes(SECRET)
            for grandchild in child.iterdir():
                grandchild.unlink()
            child.rmdir()
        job_dir.rmdir()
        job_dir.symlink_to(outside, target_is_directory=True)
        before = snapshot(outside)
        assert not await store.file_exists(file_id)
        await store.delete_job(job.id)
        assert not await store.job_exists(job.id)
        assert snapshot(outside) == before


async def test_a_fifo_planted_as_an_object_reads_as_missing_without_hanging(backend):
    os.mkfifo(os.path.join(backend.root, "fifo"))
    with anyio.fail_after(10):
        with pytest.raises(NoSuchFileError):
            await backend.get_bytes("fifo")
        assert await backend.stat("fifo") is None
        assert [info.key async for info in backend.list("")] == []


@pytest.mark.parametrize("key", ["a/" + "x" * 256, "é" * 128, "deep/" + "n" * 300 + "/file"])
async def test_names_longer_than_the_filesystem_allows_are_invalid_keys(backend, tmp_path, key):
    with pytest.raises(InvalidKeyError, match="255 bytes") as raised:
        await backend.put_bytes(key, b"x")
    assert key in str(raised.value)
    with pytest.raises(InvalidKeyError):
        async with backend.open_writer(key):
            pass
    (tmp_path / "src").write_bytes(b"x")
    with pytest.raises(InvalidKeyError):
        await backend.upload_file(tmp_path / "src", key)
    with pytest.raises(InvalidKeyError):
        await backend.get_bytes(key)
    with pytest.raises(InvalidKeyError):
        await backend.stat(key)
    assert os.listdir(backend.root) == []


async def test_a_name_of_exactly_255_bytes_is_stored(backend):
    key = "d/" + "é" * 127 + "x"
    await backend.put_bytes(key, b"fits")
    assert await backend.get_bytes(key) == b"fits"


async def test_uploading_a_directory_is_a_clear_error(backend, tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(JobStoreError, match="is a directory"):
        await backend.upload_file(tmp_path / "folder", "k")
    with pytest.raises(NoSuchFileError):
        await backend.upload_file(tmp_path / "missing", "k")
    assert os.listdir(backend.root) == []


# ------------------------------------------------------------------------------------------------ full device


@pytest.fixture
def small_fs(tmp_path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root and mount rights; skipped otherwise)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        pytest.skip(f"cannot mount a small tmpfs to fill up ({error})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False, capture_output=True, timeout=30)


def everything_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


async def test_a_full_device_raises_storage_full_and_leaves_nothing(small_fs, tmp_path):
    local = LocalBackend(small_fs / "root")
    await local.create()
    big = os.urandom(3 * 2**20)
    with pytest.raises(StorageFullError) as raised:
        await local.put_bytes("a/b/big", big)
    assert "a/b/big" in raised.value.path
    with pytest.raises(StorageFullError):
        async with local.open_writer("w/big") as writer:
            for start in range(0, len(big), 2**20):
                await writer.write(big[start : start + 2**20])
    (tmp_path / "big").write_bytes(big)
    with pytest.raises(StorageFullError):
        await local.upload_file(tmp_path / "big", "u/big")
    assert [p for p in everything_under(small_fs / "root") if not p.startswith(".ajs-locks")] == []

    store = LocalBackend(tmp_path / "store")
    await store.put_bytes("big", big)
    (small_fs / "dest").mkdir()
    with pytest.raises(StorageFullError) as raised:
        await store.download_file("big", small_fs / "dest" / "big")
    assert raised.value.path.endswith("big")
    assert os.listdir(small_fs / "dest") == []
    await local.put_bytes("a/b/small", b"there is room again")  # nothing partial kept the space
    assert await local.get_bytes("a/b/small") == b"there is room again"
    await local.close()
    await store.close()


# ------------------------------------------------------------------------------------------------ integrity


def flip_byte(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


async def test_a_flipped_byte_is_an_integrity_error_on_every_whole_read(tmp_path):
    local = LocalBackend(tmp_path / "root", transfer=TransferConfig(part_size=5 * 2**20))
    data = os.urandom(6 * 2**20 + 5)
    await local.put_bytes("obj", data)
    flip_byte(local.path_of("obj"), 5 * 2**20 + 7)  # in the second copy part and the second stream block
    with pytest.raises(IntegrityError, match="'obj' is damaged"):
        await local.get_bytes("obj")
    with pytest.raises(IntegrityError, match="'obj'"):
        await local.get_object("obj")
    with pytest.raises(IntegrityError, match="'obj'"):
        async with local.open_reader("obj") as reader:
            await reader.read()
    with pytest.raises(IntegrityError):
        async with local.open_reader("obj") as reader:
            async for _ in reader:
                pass
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "out").write_bytes(b"before")
    with pytest.raises(IntegrityError, match="'obj'"):
        await local.download_file("obj", tmp_path / "dest" / "out")
    assert os.listdir(tmp_path / "dest") == ["out"] and (tmp_path / "dest" / "out").read_bytes() == b"before"
    with pytest.raises(IntegrityError, match="'obj'"):
        await local.copy("obj", "copy")
    assert await local.stat("copy") is None
    with pytest.raises(IntegrityError):
        await local.update_object("obj", lambda old: old + b"!")
    # ranges are not verified (documented): the bytes before the flip still read
    assert await local.get_bytes("obj", start=0, end=100) == data[:100]
    assert not temp_files(Path(local.root), tmp_path / "dest")
    await local.close()


async def test_an_object_without_checksum_is_refused_when_one_is_required(backend, tmp_path):
    Path(backend.root, "foreign").write_bytes(b"not written by aiojobstore")
    assert await backend.get_bytes("foreign") == b"not written by aiojobstore"
    backend.require_checksum = True
    with pytest.raises(IntegrityError, match="no checksum"):
        await backend.get_bytes("foreign")
    with pytest.raises(IntegrityError, match="no checksum"):
        await backend.get_bytes("foreign", start=1, end=3)
    with pytest.raises(IntegrityError):
        async with backend.open_reader("foreign"):
            pass
    with pytest.raises(IntegrityError):
        await backend.download_file("foreign", tmp_path / "out")
    with pytest.raises(IntegrityError):
        await backend.copy("foreign", "copy")
    await backend.put_bytes("ours", b"written here")
    assert await backend.get_bytes("ours") == b"written here"


@pytest.mark.parametrize("junk", [b"\xff{not json", b"[1, 2]", b'{"a": 1}', b'{"ajs-crc32c": "!!"}'])
async def test_junk_metadata_is_an_integrity_error_naming_the_key(backend, junk):
    await backend.put_bytes("victim", b"data")
    os.setxattr(backend.path_of("victim"), XATTR_NAME, junk)
    with pytest.raises(IntegrityError, match="'victim'"):
        await backend.get_bytes("victim")
    if junk != b'{"ajs-crc32c": "!!"}':  # a metadata object of strings: stat and list still describe it
        with pytest.raises(IntegrityError, match="'victim'"):
            await backend.stat("victim")
        with pytest.raises(IntegrityError, match="'victim'"):
            [info async for info in backend.list("")]
    assert [info.key async for info in backend.list("", metadata=False)] == ["victim"]
    await backend.delete("victim")
    assert await backend.stat("victim") is None


# ------------------------------------------------------------------------------------------------ debris


async def test_reclaim_removes_dead_writers_old_temp_files_and_spares_live_and_fresh_ones(backend):
    root = Path(backend.root)
    hour_ago = time.time() - 3600
    old_name = f"{TMP_PREFIX}new-{int(hour_ago * 1e9):x}-{'a' * 12}"
    crashed = root / "files" / "n" / "ab" / "dead-writer"
    crashed.mkdir(parents=True)
    (crashed / old_name).write_bytes(b"x" * 1000)
    legacy = root / "files" / f"{TMP_PREFIX}0123456789ab-somefile"  # the naming of earlier versions
    legacy.write_bytes(b"y" * 10)
    for path in (crashed / old_name, legacy):
        os.utime(path, (hour_ago, hour_ago))
    fresh = root / "files" / f"{TMP_PREFIX}new-{time.time_ns():x}-{'b' * 12}"
    fresh.write_bytes(b"z")
    await backend.put_bytes("files/n/ab/live/obj", b"committed")

    async with backend.open_writer("files/n/ab/live/obj2") as writer:
        await writer.write(b"in progress")
        report = await backend.reclaim(older_than=600)
        assert report.kinds == {"temp-file": 2, "empty-directory": 1} and report.bytes == 1010
        assert not crashed.exists() and not legacy.exists() and fresh.exists()
        assert len(temp_files(root / "files" / "n" / "ab" / "live")) == 1
        report = await backend.reclaim(older_than=0)  # the fresh one goes; the live writer's flock keeps its own
        assert report.kinds == {"temp-file": 1} and not fresh.exists()
        assert len(temp_files(root / "files" / "n" / "ab" / "live")) == 1
    assert await backend.get_bytes("files/n/ab/live/obj2") == b"in progress"
    assert await backend.get_bytes("files/n/ab/live/obj") == b"committed"
    assert not temp_files(root)
    assert (await backend.reclaim(older_than=0)).items == 0


# ------------------------------------------------------------------------------------------------ cancellation


async def _cancelled(how: str, operation: Callable[[], Awaitable[None]], delay: float) -> bool:
    """Run ``operation`` and cancel it ``delay`` seconds after it started; return whether it returned."""
    returned = False

    async def body() -> None:
        nonlocal returned
        await operation()
        returned = True

    if how == "task.cancel":
        task = asyncio.ensure_future(body())
        await asyncio.sleep(delay)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    elif how == "asyncio.timeout":
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await body()
    else:
        with anyio.move_on_after(delay):
            await body()
    return returned


async def _operate(operation: str, backend: LocalBackend, key: str, new: bytes, src: Path, out: Path) -> None:
    if operation == "open_writer":
        async with backend.open_writer(key) as writer:
            for start in range(0, len(new), 7000):
                await writer.write(new[start : start + 7000])
    elif operation == "put_bytes":
        await backend.put_bytes(key, new)
    elif operation == "upload_file":
        await backend.upload_file(src, key)
    elif operation == "download_file":
        await backend.download_file("obj", out)
    elif operation == "open_reader":
        async with backend.open_reader("obj") as reader:
            while await reader.read(1000):
                pass
    else:
        await backend.update_object("counter", lambda data: str(int(data) + 1).encode())


CANCELLERS = ["task.cancel", "asyncio.timeout", "anyio.move_on_after"]
ROUNDS = 16


@pytest.mark.parametrize("operation", ["open_writer", "put_bytes", "upload_file", "download_file", "update_object",
                                       "open_reader"])
async def test_cancelled_right_after_start_leaves_all_or_nothing_and_no_descriptor(tmp_path, operation):
    root = tmp_path / "root"
    backends = [LocalBackend(root), LocalBackend(root, fsync=False)]  # to_thread and the small-op runner
    dest = tmp_path / "dest"
    dest.mkdir()
    await backends[0].put_bytes("obj", b"first")
    await backends[0].put_bytes("counter", b"0")
    rng = random.Random(1507)
    outcomes = {True: 0, False: 0}
    for backend in backends:
        await backend.close()
    baseline = open_fds()
    for round_ in range(ROUNDS):
        for how in CANCELLERS:
            backend = backends[round_ % 2]
            new = f"{round_}-{how}-".encode() * rng.randint(1, 3000)
            key = "obj" if round_ % 3 else f"n/{round_}{how}/obj"  # replace one, or make a new one with its dirs
            before = await backend.stat(key) and await backend.get_bytes(key)
            counter = int(await backend.get_bytes("counter"))
            (tmp_path / "src").write_bytes(new)
            (dest / "out").write_bytes(b"before")

            run = functools.partial(_operate, operation, backend, key, new, tmp_path / "src", dest / "out")
            returned = await _cancelled(how, run, rng.uniform(0, 0.003))
            outcomes[returned] += 1
            await backend.close()  # waits for background clean-up, closes the root descriptor
            assert open_fds() == baseline, (operation, how, returned)
            assert temp_files(root, dest) == [], (operation, how, returned)
            if operation == "download_file":
                expected = await backend.get_bytes("obj") if returned else b"before"
                assert (dest / "out").read_bytes() == expected, (how, returned)
            elif operation == "open_reader":
                pass  # nothing to change: only the descriptors and temp files above
            elif operation == "update_object":
                assert int(await backend.get_bytes("counter")) == counter + returned, (how, returned)
            elif returned:
                assert await backend.get_bytes(key) == new, (operation, how)
            elif before:
                assert await backend.get_bytes(key) == before, (operation, how)
            else:
                assert await backend.stat(key) is None, (operation, how)
                assert not (root / "n" / f"{round_}{how}").exists(), "a cancelled write left its directory"
            await backend.close()
    print(f"{operation}: {outcomes[True]} returned, {outcomes[False]} cancelled")
