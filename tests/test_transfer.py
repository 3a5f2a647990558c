"""The transfer engine: part planning, the sliding window, retries, progress, checksums."""

from __future__ import annotations

import collections
import itertools
import os
import random
import threading

import anyio
import anyio.lowlevel
import crc32c as reference_crc32c
import pytest

from aiojobstore.errors import TransferError
from aiojobstore.transfer import (
    DownloadTarget,
    MemoryBudget,
    MiB,
    Part,
    PartBuffer,
    PartBuffers,
    PartWindow,
    Progress,
    RetryPolicy,
    TransferConfig,
    TransferLimits,
    TransferShare,
    combine_part_crcs,
    crc32c_combine,
    file_range_crc32c,
    plan_parts,
    preallocate,
    run_parts,
    with_retries,
)


def test_plan_parts_covers_every_byte_once():
    for size in (0, 1, 5 * MiB - 1, 5 * MiB, 5 * MiB + 1, int(12.3 * MiB)):
        parts = plan_parts(size, 5 * MiB)
        assert sum(p.length for p in parts) == size
        assert all(a.end == b.offset for a, b in itertools.pairwise(parts))
        assert [p.number for p in parts] == list(range(1, len(parts) + 1))


def test_default_part_size_gives_three_parts_for_120_mib():
    parts = plan_parts(120 * MiB)
    assert [p.length for p in parts] == [50 * MiB, 50 * MiB, 20 * MiB]


def test_part_size_grows_past_ten_thousand_parts_and_never_shrinks_below_minimum():
    size = 10_000 * 50 * MiB + 1
    parts = plan_parts(size)
    assert len(parts) <= 10_000 and parts[0].length > 50 * MiB and parts[0].length % MiB == 0
    assert plan_parts(100 * MiB, part_size=1024)[0].length == 5 * MiB


def test_crc32c_combine_matches_whole_crc():
    data = os.urandom(300_000)
    pieces = [data[:1], data[1:100_000], data[100_000:]]
    combined = combine_part_crcs((reference_crc32c.crc32c(p), len(p)) for p in pieces)
    assert combined == reference_crc32c.crc32c(data)
    assert crc32c_combine(123, 0, 0) == 123


def test_file_range_crc32c(tmp_path):
    data = os.urandom(1_000_000)
    (tmp_path / "f").write_bytes(data)
    assert file_range_crc32c(tmp_path / "f", 1000, 500_000, slice_size=4096) == reference_crc32c.crc32c(
        data[1000:501_000])


async def test_file_checksums_are_served_in_arrival_order_store_wide(tmp_path):
    """The store's checksum threads go first come, first served: a big file hashed first finishes first even
    when smaller ones queue behind it (in parallel threads the smallest would finish first)."""
    limits = TransferLimits(TransferConfig())
    limits.file_checksums.total_tokens = 1
    sizes = [16 * MiB, 4 * MiB, MiB, 1000]
    for i, size in enumerate(sizes):
        (tmp_path / f"f{i}").write_bytes(os.urandom(size))
    finished: list[int] = []

    async def hash_file(i: int) -> None:
        value = await limits.file_crc32c(tmp_path / f"f{i}", 0, sizes[i])
        assert value == reference_crc32c.crc32c((tmp_path / f"f{i}").read_bytes())
        finished.append(i)

    async with anyio.create_task_group() as tg:
        for i in range(len(sizes)):
            tg.start_soon(hash_file, i)
            await anyio.lowlevel.checkpoint()  # each call queues before the next one starts
    assert finished == [0, 1, 2, 3]


async def test_sliding_window_keeps_max_concurrency_in_flight_and_starts_next_at_once():
    in_flight = 0
    peak = 0
    started: list[int] = []
    release = {n: anyio.Event() for n in range(1, 11)}

    async def job(part: Part) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        started.append(part.number)
        await release[part.number].wait()
        in_flight -= 1
        return part.number * 10

    async def releaser() -> None:
        await wait_until(lambda: len(started) == 3)
        release[2].set()  # not the first: a wave would wait for part 1
        await wait_until(lambda: len(started) == 4)
        assert started[-1] == 4
        for n in range(1, 11):
            release[n].set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(releaser)
        results = await run_parts([Part(n, 0, 1) for n in range(1, 11)], job, max_concurrency=3)
    assert peak == 3
    assert results == [n * 10 for n in range(1, 11)]


async def wait_until(condition) -> None:
    with anyio.fail_after(10):
        while not condition():
            await anyio.sleep(0.001)


async def test_first_failure_cancels_running_parts_and_is_raised():
    cancelled: list[int] = []

    async def job(part: Part) -> None:
        if part.number == 2:
            raise ValueError("part 2 broke")
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.append(part.number)
            raise

    with anyio.fail_after(10), pytest.raises(ValueError, match="part 2"):
        await run_parts([Part(n, 0, 1) for n in range(1, 6)], job, max_concurrency=3)
    assert cancelled and 2 not in cancelled


async def test_window_host_exception_cancels_jobs():
    cancelled = anyio.Event()

    async def job() -> None:
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    with pytest.raises(KeyError):
        async with PartWindow(2) as window:
            await window.submit(job)
            await anyio.lowlevel.checkpoint()
            raise KeyError("host failed")
    assert cancelled.is_set()


async def test_retries_retryable_errors_with_backoff_and_not_others():
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    policy = RetryPolicy(max_attempts=4, backoff_base=0.5, backoff_max=1.0, sleep=fake_sleep)
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionResetError("reset")
        return "ok"

    assert await with_retries(flaky, policy=policy, is_retryable=lambda e: isinstance(e, OSError)) == "ok"
    assert attempts == 3 and len(sleeps) == 2 and all(0 <= s <= 1.0 for s in sleeps)

    async def bad_input() -> None:
        raise ValueError("your fault")

    with pytest.raises(ValueError):
        await with_retries(bad_input, policy=policy, is_retryable=lambda e: isinstance(e, OSError))
    assert len(sleeps) == 2

    async def always_down() -> None:
        raise ConnectionResetError("down")

    with pytest.raises(ConnectionResetError):
        await with_retries(always_down, policy=policy, is_retryable=lambda e: True)
    assert len(sleeps) == 2 + 3


async def test_progress_calls_sync_and_async_callbacks():
    seen: list[tuple[int, int | None]] = []

    async def async_callback(done: int, total: int | None) -> None:
        seen.append((done, total))

    progress = Progress(async_callback, 10)
    await progress.advance(4)
    await progress.advance(6)
    sync_seen: list[int] = []
    await Progress(lambda done, total: sync_seen.append(done), None).advance(3)
    assert seen == [(4, 10), (10, 10)] and sync_seen == [3]


# ------------------------------------------------------------------------------------------------ part buffers


async def test_part_buffers_cut_a_stream_into_parts_and_reuse_released_buffers():
    budget = MemoryBudget(100)
    buffers = PartBuffers(budget, 10, keep=2)
    handed: list[bytes] = []
    seen_ids: list[int] = []

    async def hand_off(part: PartBuffer) -> None:
        handed.append(bytes(part.view))
        seen_ids.append(id(part.data))
        part.done(reuse=True)

    assert await buffers.write(b"0123456789abcdefghijklmnopqrstu", hand_off) == 31
    assert handed == [b"0123456789", b"abcdefghij", b"klmnopqrst"]
    assert len(set(seen_ids)) == 1  # each released buffer served the next part
    tail = buffers.take_current()
    assert tail is not None and bytes(tail.view) == b"u"
    assert budget.in_use == 10  # only the tail still holds its reservation
    tail.done(reuse=False)
    buffers.close()
    assert budget.in_use == 0


async def test_part_buffers_wait_for_the_memory_budget():
    budget = MemoryBudget(20)
    buffers = PartBuffers(budget, 10, keep=1)
    held: list[PartBuffer] = []

    async def hand_off(part: PartBuffer) -> None:
        held.append(part)  # an upload still running: the reservation stays taken

    await buffers.write(b"x" * 20, hand_off)
    assert budget.in_use == 20
    written: list[int] = []

    async def write_more() -> None:
        written.append(await buffers.write(b"y", hand_off))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(write_more)
        await anyio.wait_all_tasks_blocked()
        assert written == []  # a third buffer does not fit until one is released
        held.pop().done(reuse=True)
    assert written == [1] and budget.in_use == 20
    buffers.close()
    held.pop().done(reuse=False)
    assert budget.in_use == 0


def test_preallocate_gives_the_file_its_size(tmp_path):
    path = tmp_path / "download.part"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        preallocate(fd, 3 * MiB, str(path))
        assert os.fstat(fd).st_size == 3 * MiB
        os.pwrite(fd, b"tail", 3 * MiB - 4)
        assert os.pread(fd, 8, 3 * MiB - 8) == b"\0\0\0\0tail"
        preallocate(fd, 0, str(path))  # an empty object: an empty file
        assert os.fstat(fd).st_size == 0
    finally:
        os.close(fd)


def _accepts_direct_io(directory) -> bool:
    if not hasattr(os, "O_DIRECT"):
        return False
    probe = os.path.join(directory, ".probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644))
        return True
    except OSError:
        return False
    finally:
        if os.path.exists(probe):
            os.unlink(probe)


def _write_ranges(file: DownloadTarget, data: bytes, bounds: list[int], seed: int) -> None:
    """Feed every range of ``data`` to its own writer, in pieces of random sizes, from one thread per range."""

    def one(lo: int, hi: int, rng: random.Random) -> None:
        writer = file.range_writer(lo)
        position = lo
        while position < hi:
            pieces = []
            at = position
            for _ in range(rng.randint(1, 5)):
                n = min(rng.randint(1, 300_000), hi - at)
                if n <= 0:
                    break
                pieces.append(data[at : at + n])
                at += n
            writer.write(position, pieces)
            position = at
        writer.close()

    threads = [threading.Thread(target=one, args=(lo, hi, random.Random(seed + lo)))
               for lo, hi in itertools.pairwise(bounds)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize("direct_io", [True, False])
def test_download_target_writes_ranges_fed_in_any_pieces_and_renames_on_commit(tmp_path, direct_io):
    size = 3 * MiB + 12345
    data = os.urandom(size)
    target = tmp_path / "out"
    target.write_bytes(b"the old file")
    file = DownloadTarget(str(target), size, direct_io=direct_io, stage_size=64 * 1024)
    assert file.direct == (direct_io and _accepts_direct_io(tmp_path))
    # page-aligned ranges (O_DIRECT), one ending mid-page, one starting mid-page (page cache), the file's tail
    _write_ranges(file, data, [0, MiB, MiB + 4096, 2 * MiB + 100, size], seed=3)
    assert target.read_bytes() == b"the old file"  # nothing is visible before the commit
    file.commit()
    assert target.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # what a plain open() gives, not mkstemp's 0600


def test_download_target_falls_back_to_the_page_cache_where_o_direct_is_refused(tmp_path):
    shm = "/dev/shm"
    if not os.path.isdir(shm) or _accepts_direct_io(shm):
        pytest.skip("needs a filesystem that refuses O_DIRECT (tmpfs before Linux 6.6); /dev/shm accepts it here")
    target = os.path.join(shm, f"aiojobstore-test-{os.getpid()}")
    data = os.urandom(MiB + 777)
    file = DownloadTarget(target, len(data), direct_io=True)
    try:
        assert not file.direct
        _write_ranges(file, data, [0, 512 * 1024, len(data)], seed=5)
        file.commit()
        with open(target, "rb") as handle:
            assert handle.read() == data
    finally:
        file.discard()
        if os.path.exists(target):
            os.unlink(target)


def test_download_target_discard_leaves_the_target_alone_and_writes_must_follow_on(tmp_path):
    target = tmp_path / "out"
    target.write_bytes(b"keep me")
    file = DownloadTarget(str(target), 2 * MiB, direct_io=True)
    writer = file.range_writer(0)
    writer.write(0, [b"x" * 10_000])
    with pytest.raises(TransferError, match="does not follow"):
        writer.write(20_000, [b"y"])
    writer.close()
    file.discard()
    file.discard()  # idempotent
    assert target.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_download_share_splits_the_window_and_lengthens_ranges_as_downloads_join():
    share = TransferShare(8)
    with share.joined():
        assert share.window() == 8
        assert share.range_size(50) == 50
        with share.joined(), share.joined(), share.joined():
            assert share.window() == 2
            assert share.range_size(50) == 200
            with share.joined(), share.joined(), share.joined(), share.joined(), share.joined():
                assert share.window() == 1
                assert share.range_size(50) == 400
    assert share.transfers == 0
    assert share.window() == 8


async def test_window_share_narrows_and_widens_the_parts_in_flight():
    in_flight = 0
    peaks: list[int] = []
    allowed = 1

    async def job(part: Part) -> int:
        nonlocal in_flight
        in_flight += 1
        peaks.append(in_flight)
        await anyio.sleep(0.005)
        in_flight -= 1
        return part.number

    async def widen() -> None:
        nonlocal allowed
        await wait_until(lambda: len(peaks) >= 4)
        allowed = 3

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(widen)
        results = await run_parts([Part(n, 0, 1) for n in range(1, 21)], job, max_concurrency=8,
                                  share=lambda: allowed)
    assert results == list(range(1, 21))
    assert max(peaks[:4]) == 1  # one at a time while the share was 1
    assert max(peaks) == 3  # never more than the share, though the window allows 8


async def test_pooled_part_buffers_keep_their_reservation_and_give_it_up_to_waiters():
    budget = MemoryBudget(10)
    first, second = PartBuffers(budget, 10, keep=2), PartBuffers(budget, 10, keep=2)

    async def recycle(part: PartBuffer) -> None:
        part.done(reuse=True)

    await first.write(b"x" * 20, recycle)  # two parts, the second in the first's recycled buffer, now pooled
    assert first.current is None and budget.in_use == 10  # the pooled buffer still counts: the stream holds it
    got: list[int] = []

    async def other_stream() -> None:
        got.append(await second.write(b"y" * 10, recycle))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(other_stream)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        first.close()  # gives up its pool
    assert got == [10] and budget.in_use == 10  # second's recycled part, pooled
    second.close()
    assert budget.in_use == 0 and budget.peak <= 10


async def test_many_more_streams_than_the_budget_holds_parts_for_all_finish():
    """40 streams of 2.5 parts each on a budget of 3 parts: every stream waits at times, none deadlocks, and the
    buffers in existence never exceed the budget."""
    budget = MemoryBudget(30)
    uploaded: list[bytes] = []

    async def stream(n: int) -> None:
        buffers = PartBuffers(budget, 10, keep=1)

        async def upload(part: PartBuffer) -> None:
            async def send() -> None:
                await anyio.sleep(0.001)
                uploaded.append(bytes(part.view))
                part.done(reuse=True)

            tasks.start_soon(send)

        for _ in range(25):
            await buffers.write(bytes([n]), upload)
        tail = buffers.take_current()
        assert tail is not None
        uploaded.append(bytes(tail.view))
        tail.done(reuse=False)
        buffers.close()

    with anyio.fail_after(60):  # a deadlock guard, not a timing assertion
        async with anyio.create_task_group() as tasks:
            for n in range(40):
                tasks.start_soon(stream, n)
    per_stream = collections.Counter(byte for piece in uploaded for byte in piece)
    assert per_stream == {n: 25 for n in range(40)}
    assert budget.peak <= 30 and budget.in_use == 0


async def test_verify_and_retry_retries_a_mismatch_once_then_raises_integrity_error():
    from aiojobstore.errors import IntegrityError
    from aiojobstore.transfer.verify import ReplacedWhileReading, verify_and_retry

    answers = iter([(False, 1), (True, 2)])

    async def flaky() -> tuple[bool, int]:
        return next(answers)

    assert await verify_and_retry(flaky, what="'x'") == 2

    async def corrupt() -> tuple[bool, int]:
        return False, 0

    with pytest.raises(IntegrityError, match="'x'"):
        await verify_and_retry(corrupt, what="'x'")

    replaced = iter([ReplacedWhileReading("new version"), (False, 0), ReplacedWhileReading("again"), (True, 3)])

    async def changing() -> tuple[bool, int]:
        answer = next(replaced)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await verify_and_retry(changing, what="'x'") == 3  # replacements are not mismatches


async def test_part_progress_takes_back_a_failed_attempt_and_keeps_a_callback_error():
    from aiojobstore.transfer import PartProgress

    seen: list[int] = []
    report = Progress(lambda done, _total: seen.append(done), 10)
    part = PartProgress(report)
    await part.advance(4)
    await part.restart()  # the attempt failed: its slices are taken back
    await part.advance(6)
    await part.finish(10)
    assert seen == [4, 0, 6, 10]

    def failing(done: int, _total: int | None) -> None:
        raise RuntimeError("callback failed")

    part = PartProgress(Progress(failing, 10))
    await part.advance(5)  # called from inside an HTTP client: the error is kept, not raised there
    with pytest.raises(RuntimeError, match="callback failed"):
        await part.finish(10)
