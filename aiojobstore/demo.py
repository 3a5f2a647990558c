"""The main job: a small async workflow-engine run over a job store (``aiojobstore demo``, examples/pipeline.py).

The run is a DAG recorded in the store: a root job, ``shards`` *generate* jobs that each write a large file of
generated data, ``shards`` *transform* jobs that each read one generated file back, check its CRC32C against the
one its producer recorded, and write a transformed copy (every byte rotated by one), and one *merge* job that
reads every transformed file back and checks it twice: against its own CRC32C and, after undoing the rotation,
against the CRC32C of the original generated data. Jobs hand results to each other only through the store
(``update_job`` / ``load_job``); each job logs through ``write_logs`` and the root reads the logs at the end.

Half the files go through ``write_file_stream`` and half through ``write_file`` (via a local scratch file);
transform jobs read with ``read_file_stream`` and the merge job with ``read_file``. All jobs of a stage run at
once on one event loop; data generation, checksums and scratch-file I/O run in worker threads. At the end the
child jobs are deleted (their ``cleanup=True`` files go with them) and the store is destroyed, unless ``keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
from tqdm import tqdm

from .errors import IntegrityError, JobStoreError
from .jobstore import FileID, Job, JobStore, open_store
from .transfer import crc32c

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_TOTAL_SIZE = 2 * GiB
DEFAULT_SHARDS = 16
DEFAULT_CHUNK_SIZE = 4 * MiB
DEFAULT_PARALLEL = 8

#: The transform stage's byte mapping (b -> b + 1 mod 256) and its inverse, for the merge stage's check.
FORWARD = bytes((i + 1) % 256 for i in range(256))
INVERSE = bytes((i - 1) % 256 for i in range(256))


@dataclass
class DemoConfig:
    """What the demo runs. ``store=None`` means a fresh ``file:`` store in a temporary directory."""

    store: str | None = None
    total_size: int = DEFAULT_TOTAL_SIZE
    shards: int = DEFAULT_SHARDS
    chunk_size: int = DEFAULT_CHUNK_SIZE
    parallel: int = DEFAULT_PARALLEL
    seed: int = 0
    keep: bool = False
    progress: bool | None = None  # None: a progress bar when stderr is a terminal
    store_options: dict[str, Any] = field(default_factory=dict)

    def shard_sizes(self) -> list[int]:
        """Bytes per generated shard: half the total over ``shards`` (the transforms write the other half)."""
        half = self.total_size // 2
        base, extra = divmod(half, self.shards)
        return [base + (1 if i < extra else 0) for i in range(self.shards)]


@dataclass
class DemoResult:
    """What the run did and how fast."""

    store: str
    kept: bool
    jobs: int
    files: int
    bytes_written: int
    bytes_read: int
    elapsed: float
    peak_rss_mib: float
    logs_read: int
    verified: bool
    stages: dict[str, float]

    @property
    def throughput_mb_s(self) -> float:
        """Store bytes written plus read per second, in MB/s (10^6 bytes)."""
        return (self.bytes_written + self.bytes_read) / self.elapsed / 1e6 if self.elapsed else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "throughput_mb_s": round(self.throughput_mb_s, 1)}


# ------------------------------------------------------------------------------------ work done in threads


def _base_block(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _chunk(base: bytes, shard: int, index: int, length: int) -> bytearray:
    """Chunk ``index`` of shard ``shard``: the run's random base block rotated by an offset that depends on both
    (memcpy speed, deterministic, different for every chunk), in one allocation."""
    view = memoryview(base)
    offset = (shard * 1_000_003 + index * 2_654_435_761) % len(base)
    out = bytearray(length)
    filled = 0
    while filled < length:
        piece = view[offset : offset + length - filled]
        out[filled : filled + len(piece)] = piece
        filled += len(piece)
        offset = 0
    return out


def _chunks(size: int, chunk_size: int) -> list[int]:
    return [min(chunk_size, size - offset) for offset in range(0, size, chunk_size)]


def _generate_chunk(base: bytes, shard: int, index: int, length: int, crc: int) -> tuple[bytearray, int]:
    data = _chunk(base, shard, index, length)
    return data, crc32c(data, crc)


def _generate_to_file(path: str, base: bytes, shard: int, size: int, chunk_size: int) -> int:
    """Write a generated shard to a local file; return its CRC32C."""
    crc = 0
    with open(path, "wb") as out:
        for index, length in enumerate(_chunks(size, chunk_size)):
            data = _chunk(base, shard, index, length)
            crc = crc32c(data, crc)
            out.write(data)
    return crc


def _transform_chunk(data: bytes, crc_in: int, crc_out: int) -> tuple[bytes, int, int]:
    out = data.translate(FORWARD)
    return out, crc32c(data, crc_in), crc32c(out, crc_out)


def _verify_file(path: str, chunk_size: int) -> tuple[int, int, int]:
    """Size, CRC32C, and CRC32C after undoing the transform, of a local file."""
    size = crc = crc_original = 0
    with open(path, "rb") as source:
        while data := source.read(chunk_size):
            size += len(data)
            crc = crc32c(data, crc)
            crc_original = crc32c(data.translate(INVERSE), crc_original)
    return size, crc, crc_original


def _write_scratch(handle: Any, data: bytes) -> None:
    handle.write(data)


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MiB if sys.platform == "darwin" else peak / 1024


# ------------------------------------------------------------------------------------------------ the engine


class _Meter:
    """Counts store bytes and drives the progress bar (touched only from the event loop)."""

    def __init__(self, total: int, enabled: bool | None) -> None:
        self.written = 0
        self.read = 0
        self.jobs_done = 0
        self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="demo",
                        disable=(not enabled) if enabled is not None else None, file=sys.stderr, leave=False)

    def add(self, n: int, *, written: bool) -> None:
        if written:
            self.written += n
        else:
            self.read += n
        self.bar.update(n)

    def callback(self, *, written: bool) -> Callable[[int, int | None], None]:
        """A transfer progress callback (cumulative bytes done) that feeds this meter."""
        last = 0

        def report(done: int, total: int | None) -> None:
            nonlocal last
            self.add(done - last, written=written)
            last = done

        return report

    def job_done(self, stage: str) -> None:
        self.jobs_done += 1
        self.bar.set_postfix_str(f"{stage} done, {self.jobs_done} jobs", refresh=False)

    def close(self) -> None:
        self.bar.close()


class _Pipeline:
    def __init__(self, store: JobStore, config: DemoConfig, scratch: str, meter: _Meter) -> None:
        self.store = store
        self.config = config
        self.scratch = scratch
        self.meter = meter
        self.done: dict[str, anyio.Event] = {}
        self.stage_seconds: dict[str, float] = {}
        self.files_written = 0
        self.slots = anyio.Semaphore(config.parallel)
        self.base: bytes | None = None
        self.base_lock = anyio.Lock()

    # --------------------------------------------------------------------------- bookkeeping in the store

    async def start_job(self, job_id: str) -> Job:
        job = await self.store.load_job(job_id)
        job.data["state"] = "running"
        await self.store.update_job(job)
        return job

    async def finish_job(self, job: Job, outputs: dict[str, Any], message: str) -> None:
        job.data["state"] = "done"
        job.data["outputs"] = outputs
        await self.store.update_job(job)
        await self.store.write_logs(f"{job.name}: {message}")
        self.meter.job_done(job.data["stage"])

    async def outputs_of(self, job_id: str) -> dict[str, Any]:
        job = await self.store.load_job(job_id)
        if job.data.get("state") != "done":
            raise JobStoreError(f"job {job.name} ({job_id}) was expected to be done but is {job.data.get('state')}")
        outputs: dict[str, Any] = job.data["outputs"]
        return outputs

    async def base_block(self) -> bytes:
        """The run's random block that generated data is cut from (made once, in a thread)."""
        async with self.base_lock:
            if self.base is None:
                self.base = await anyio.to_thread.run_sync(_base_block, self.config.seed, self.config.chunk_size)
        return self.base

    def scratch_path(self, job: Job, name: str) -> str:
        directory = os.path.join(self.scratch, job.id or "job")
        os.makedirs(directory, exist_ok=True)
        return os.path.join(directory, name)

    # ---------------------------------------------------------------------------------------------- stages

    async def generate(self, job: Job) -> None:
        shard, size = job.data["shard"], job.data["size"]
        name = f"shard-{shard:03d}.raw"
        chunk_size = self.config.chunk_size
        base = await self.base_block()
        if shard % 2 == 0:  # streamed straight into the store
            crc = 0
            async with self.store.write_file_stream(job.id, cleanup=True, basename=name) as (writer, file_id):
                for index, length in enumerate(_chunks(size, chunk_size)):
                    data, crc = await anyio.to_thread.run_sync(_generate_chunk, base, shard, index, length, crc)
                    await writer.write(data)
                    self.meter.add(length, written=True)
            via = "write_file_stream"
        else:  # generated into a local file, then write_file
            path = self.scratch_path(job, name)
            crc = await anyio.to_thread.run_sync(_generate_to_file, path, base, shard, size, chunk_size)
            file_id = await self.store.write_file(path, job.id, cleanup=True,
                                                  progress=self.meter.callback(written=True))
            await anyio.to_thread.run_sync(os.remove, path)
            via = "write_file"
        self.files_written += 1
        await self.finish_job(job, {"file_id": str(file_id), "size": size, "crc32c": crc},
                              f"wrote {size} bytes via {via}, crc32c={crc:08x}")

    async def transform(self, job: Job) -> None:
        shard = job.data["shard"]
        source = await self.outputs_of(job.data["needs"][0])
        name = f"shard-{shard:03d}.rot"
        chunk_size = self.config.chunk_size
        crc_in = crc_out = size = 0
        file_id: FileID | None = None  # from the stream (even shards) or from the scratch file (odd ones)
        path: str | None = None  # the scratch file (odd shards)
        async with self.store.read_file_stream(source["file_id"]) as reader:
            if shard % 2 == 0:
                async with self.store.write_file_stream(job.id, cleanup=True, basename=name) as (writer, file_id):
                    while data := await reader.read(chunk_size):
                        self.meter.add(len(data), written=False)
                        out, crc_in, crc_out = await anyio.to_thread.run_sync(_transform_chunk, data, crc_in, crc_out)
                        await writer.write(out)
                        self.meter.add(len(out), written=True)
                        size += len(out)
                via = "write_file_stream"
            else:
                path = self.scratch_path(job, name)
                handle = await anyio.to_thread.run_sync(open, path, "wb")
                try:
                    while data := await reader.read(chunk_size):
                        self.meter.add(len(data), written=False)
                        out, crc_in, crc_out = await anyio.to_thread.run_sync(_transform_chunk, data, crc_in, crc_out)
                        await anyio.to_thread.run_sync(_write_scratch, handle, out)
                        size += len(out)
                finally:
                    await anyio.to_thread.run_sync(handle.close)
                via = "write_file"
        if size != source["size"] or crc_in != source["crc32c"]:
            raise IntegrityError(
                f"{job.name}: read back {size} bytes with crc32c {crc_in:08x} from {source['file_id']}, but its "
                f"producer wrote {source['size']} bytes with crc32c {source['crc32c']:08x}"
            )
        if path is not None:
            file_id = await self.store.write_file(path, job.id, cleanup=True,
                                                  progress=self.meter.callback(written=True))
            await anyio.to_thread.run_sync(os.remove, path)
        assert file_id is not None, "each branch writes the output file"
        self.files_written += 1
        await self.finish_job(
            job, {"file_id": str(file_id), "size": size, "crc32c": crc_out, "source_crc32c": crc_in},
            f"read {size} bytes via read_file_stream (crc32c ok), wrote them rotated via {via}",
        )

    async def merge(self, job: Job) -> None:
        limiter = anyio.Semaphore(self.config.parallel)
        checked: list[dict[str, Any]] = []

        async def check(transform_id: str) -> None:
            async with limiter:
                output = await self.outputs_of(transform_id)
                file_id = FileID(output["file_id"])
                path = self.scratch_path(job, f"{file_id.split('/')[-2]}-{file_id.basename}")
                await self.store.read_file(file_id, path, progress=self.meter.callback(written=False))
                size, crc, crc_original = await anyio.to_thread.run_sync(_verify_file, path, self.config.chunk_size)
                await anyio.to_thread.run_sync(os.remove, path)
                if (size, crc, crc_original) != (output["size"], output["crc32c"], output["source_crc32c"]):
                    raise IntegrityError(
                        f"{job.name}: {file_id} read back as {size} bytes, crc32c {crc:08x} (original "
                        f"{crc_original:08x}); expected {output['size']} bytes, crc32c {output['crc32c']:08x} "
                        f"(original {output['source_crc32c']:08x})"
                    )
                checked.append({"file_id": str(file_id), "size": size, "crc32c": f"{crc:08x}"})

        async with anyio.create_task_group() as tasks:
            for transform_id in job.data["needs"]:
                tasks.start_soon(check, transform_id)
        total = sum(item["size"] for item in checked)
        report = {"shards": len(checked), "bytes": total, "files": sorted(checked, key=lambda i: i["file_id"])}
        async with self.store.write_shared_file_stream("report.json", encoding="utf-8") as out:
            await out.write(json.dumps(report, indent=1))
        self.files_written += 1
        await self.finish_job(job, {"bytes_verified": total, "shards": len(checked)},
                              f"read {len(checked)} files ({total} bytes) via read_file, all checksums ok")

    # ---------------------------------------------------------------------------------------------- driver

    async def create_dag(self) -> Job:
        """Record the root job and the DAG of child jobs in the store."""
        sizes = self.config.shard_sizes()
        root = await self.store.create_root_job(Job("pipeline", {
            "state": "running", "total_size": self.config.total_size, "shards": self.config.shards,
        }))
        children: list[str] = []
        async with self.store.batch():
            transform_ids = []
            for shard, size in enumerate(sizes):
                generate = await self.store.create_job(Job(f"generate-{shard:03d}", {
                    "stage": "generate", "shard": shard, "size": size, "needs": [], "state": "pending"}))
                transform = await self.store.create_job(Job(f"transform-{shard:03d}", {
                    "stage": "transform", "shard": shard, "needs": [generate.id], "state": "pending"}))
                children += [generate.id, transform.id]  # type: ignore[list-item]
                transform_ids.append(transform.id)
            merge = await self.store.create_job(Job("merge", {
                "stage": "merge", "needs": transform_ids, "state": "pending"}))
            children.append(merge.id)  # type: ignore[arg-type]
        root.data["children"] = children
        await self.store.update_job(root)
        return root

    async def run_job(self, job: Job) -> None:
        for need in job.data["needs"]:
            await self.done[need].wait()
        async with self.slots:
            started = time.perf_counter()
            job = await self.start_job(job.id)  # type: ignore[arg-type]
            stage = job.data["stage"]
            await getattr(self, stage)(job)
            elapsed = time.perf_counter() - started
        self.stage_seconds[stage] = max(self.stage_seconds.get(stage, 0.0), elapsed)
        self.done[job.id].set()  # type: ignore[index]

    async def run(self) -> tuple[int, int]:
        """Run the DAG as the store describes it; return (jobs run, logs read)."""
        root = await self.create_dag()
        children = {job.id: job async for job in self.store.jobs() if job.id is not None
                    and job.id in root.data["children"]}
        if len(children) != len(root.data["children"]):
            raise JobStoreError(f"the store lists {len(children)} of the {len(root.data['children'])} jobs written")
        self.done = {job_id: anyio.Event() for job_id in children}
        async with anyio.create_task_group() as tasks:
            for job in children.values():
                tasks.start_soon(self.run_job, job)
        messages: list[bytes] = []
        logs_read = await self.store.read_logs(messages.append)
        root = await self.store.load_root_job()
        root.data["state"] = "done"
        await self.store.update_job(root)
        return len(children) + 1, logs_read


def _first_error(error: BaseException) -> BaseException:
    """The first error inside (nested) task-group exception groups, so that callers see e.g. the
    IntegrityError itself."""
    while isinstance(getattr(error, "exceptions", None), tuple) and error.exceptions:  # type: ignore[attr-defined]
        error = error.exceptions[0]  # type: ignore[attr-defined]
    return error


async def run_demo(config: DemoConfig) -> DemoResult:
    """Run the demo pipeline and return its figures. Raises :class:`IntegrityError` if any check fails."""
    if config.shards < 1:
        raise JobStoreError("the demo needs at least one shard")
    if config.parallel < 1:
        raise JobStoreError("--parallel must be at least 1")
    if config.chunk_size < 1:
        raise JobStoreError("the demo's chunk size must be at least one byte")
    if config.total_size < 2 * config.shards:
        raise JobStoreError(f"--total-size must be at least 2 bytes per shard ({2 * config.shards} bytes)")
    workdir = await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="aiojobstore-demo-"))
    locator = config.store or "file:" + os.path.join(workdir, "store")
    scratch = os.path.join(workdir, "scratch")
    await anyio.to_thread.run_sync(os.makedirs, scratch)
    meter = _Meter(2 * 2 * (config.total_size // 2), config.progress)
    store = open_store(locator, **config.store_options)
    destroyed = False
    try:
        async with store:
            await store.initialize({"created_by": "aiojobstore demo"})
            try:
                started = time.perf_counter()
                pipeline = _Pipeline(store, config, scratch, meter)
                try:
                    jobs, logs_read = await pipeline.run()
                except Exception as error:
                    raise _first_error(error) from error
                elapsed = time.perf_counter() - started
            finally:
                meter.close()
            if not config.keep:
                root = await store.load_root_job()
                first = await store.load_job(root.data["children"][0])
                for child in root.data["children"]:
                    await store.delete_job(child)
                if await store.file_exists(first.data["outputs"]["file_id"]):
                    raise JobStoreError("a cleanup file survived the deletion of its job")
                await store.destroy()
                destroyed = True
    finally:
        if not config.keep:
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(workdir, ignore_errors=True))
    return DemoResult(
        store=locator, kept=not destroyed, jobs=jobs, files=pipeline.files_written,
        bytes_written=meter.written, bytes_read=meter.read, elapsed=elapsed, peak_rss_mib=peak_rss_mib(),
        logs_read=logs_read, verified=True, stages={k: round(v, 2) for k, v in pipeline.stage_seconds.items()},
    )


def format_summary(result: DemoResult) -> str:
    """The human-readable summary printed at the end of a run."""
    def size(n: int) -> str:
        return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"

    stages = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in result.stages.items())
    return "\n".join([
        "aiojobstore demo: all checksums verified",
        f"  store       {result.store}" + ("" if result.kept else " (destroyed)"),
        f"  jobs        {result.jobs} (root, generate, transform, merge)",
        f"  files       {result.files} written (incl. the shared report.json)",
        f"  written     {size(result.bytes_written)}",
        f"  read        {size(result.bytes_read)}",
        f"  elapsed     {result.elapsed:.1f} s (slowest job per stage: {stages})",
        f"  throughput  {result.throughput_mb_s:.0f} MB/s (store bytes written + read, per second)",
        f"  peak RSS    {result.peak_rss_mib:.0f} MiB",
        f"  logs        {result.logs_read} messages read back",
    ])


def add_arguments(parser: argparse.ArgumentParser, parse_size: Callable[[str], int]) -> None:
    """Add the demo's options to ``parser`` (``parse_size`` turns '64MiB' into bytes)."""
    parser.add_argument("--store", metavar="LOCATOR",
                        help="job store to create and use (default: file: under a fresh temporary directory)")
    parser.add_argument("--total-size", "--size", type=parse_size, default=DEFAULT_TOTAL_SIZE, metavar="SIZE",
                        help="bytes of intermediate files to write in all, e.g. 64MiB (default: 2GiB)")
    parser.add_argument("--shards", type=int, default=DEFAULT_SHARDS,
                        help=f"generate/transform job pairs (default: {DEFAULT_SHARDS})")
    parser.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL,
                        help=f"jobs running at once, each moving its own file (default: {DEFAULT_PARALLEL})")
    parser.add_argument("--chunk-size", type=parse_size, default=DEFAULT_CHUNK_SIZE, metavar="SIZE",
                        help="bytes per stream read/write (default: 4MiB)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data (default: 0)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the store, its jobs and files (and the temporary directory) for inspection")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument("--progress", dest="progress", action="store_true", default=None,
                          help="always show the progress bar (default: only on a terminal)")
    progress.add_argument("--no-progress", dest="progress", action="store_false", help="never show it")


def config_from_args(args: argparse.Namespace, store_options: dict[str, Any]) -> DemoConfig:
    """The :class:`DemoConfig` that parsed demo arguments describe."""
    return DemoConfig(store=args.store, total_size=args.total_size, shards=args.shards, chunk_size=args.chunk_size,
                      parallel=args.parallel, seed=args.seed, keep=args.keep, progress=args.progress,
                      store_options=store_options)


__all__ = ["DemoConfig", "DemoResult", "add_arguments", "config_from_args", "format_summary", "run_demo"]
