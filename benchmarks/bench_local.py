#!/usr/bin/env python3
"""Local-disk benchmark: aiojobstore's file: store vs shutil.copyfile and Toil's FileJobStore, side by side.

    python benchmarks/bench_local.py                      # 1 GiB file, 2000 jobs; Toil from /tmp/toil-venv
    python benchmarks/bench_local.py --size 64MiB --jobs 200 --toil-python none

* files: ``write_file`` + ``read_file`` of one ``--size`` file through the store (fsync on, the default, and
  ``fsync=False``) vs ``shutil.copyfile`` (with and without an fsync of the copy) and vs Toil's FileJobStore;
* jobs: create / update / load / delete ops/s, ours sequentially through the blocking facade and ``--concurrency``
  at a time through the async API, each with fsync on and off, vs Toil's FileJobStore (sequential: it has no
  concurrent API), and the bare durable write (temp file fsynced, renamed, directory fsynced) from
  ``--concurrency`` threads with no store around it: the ceiling the disk puts on durable job writes;
* the blocking facade's per-call overhead: a trivial call through ``aiojobstore.sync`` minus the same call awaited
  directly on the async store.

Toil runs in a subprocess with its own interpreter (``--toil-python``, e.g. a venv made with ``pip install toil``)
so that its dependencies never meet ours; without one its columns say "n/a". Every figure is the median of
``--repeat`` runs; the files live on the same filesystem (``--dir``) and the page cache is warm (no root to drop
it), so the file figures measure the copy path, not the disk. The table goes to stdout, the JSON to
``benchmarks/results/local.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import aiojobstore
from aiojobstore import Job
from aiojobstore.cli import parse_size
from aiojobstore.sync import open_store as open_sync_store

MiB = 1 << 20
DEFAULT_TOIL_PYTHON = "/tmp/toil-venv/bin/python"
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "local.json")
JOB_DATA = {"command": "align --sample 7", "requirements": {"cores": 1, "memory": 2 << 30}, "children": []}
OPS = ("create", "update", "load", "delete")

DURABILITY = {
    "aiojobstore (fsync)": "every write: temp file fsynced, renamed, directory fsynced (survives power loss)",
    "aiojobstore (no fsync)": "open_store(..., fsync=False): temp file + rename, atomic but not durable on crash",
    "read link=True": "read_file(..., link=True): a reflink (btrfs, XFS) or a hard link to the stored file (ext4), "
                      "not copied, not verified; executable files are copied on ext4",
    "shutil.copyfile": "no fsync, not atomic (a crash can leave a partial file)",
    "shutil.copyfile + fsync": "fsync of the copy, not atomic",
    "toil FileJobStore": "temp file + rename (atomic), no fsync (not durable on crash); read_file hard-links "
                         "the stored file when on the same filesystem (no bytes copied)",
}

# Toil's side, run by --toil-python. Prints one JSON object.
TOIL_SCRIPT = r"""
import json, os, sys, time
from toil.common import Config
from toil.jobStores.fileJobStore import FileJobStore
from toil.job import JobDescription

mode, root, arg, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = FileJobStore(os.path.join(root, "toil-store"))
store.initialize(Config())
out = {"toil_version": __import__("toil").version.version}
try:
    if mode == "file":
        t = time.perf_counter(); file_id = store.write_file(arg); out["write_s"] = time.perf_counter() - t
        target = os.path.join(root, "toil-read.out")
        t = time.perf_counter(); store.read_file(file_id, target); out["read_s"] = time.perf_counter() - t
        out["read_ok"] = os.path.getsize(target) == os.path.getsize(arg)
        out["read_hardlinked"] = os.stat(target).st_ino == os.stat(os.path.realpath(arg)).st_ino or \
            os.stat(target).st_nlink > 1
        os.remove(target)
        import shutil
        t = time.perf_counter()
        with store.read_file_stream(file_id) as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        out["read_stream_s"] = time.perf_counter() - t
        os.remove(target)
    else:
        jobs = []
        t = time.perf_counter()
        for i in range(n):
            job = JobDescription(requirements={"memory": 2 << 30, "cores": 1, "disk": 1 << 30, "preemptible": False},
                                 jobName="bench")
            store.assign_job_id(job)
            store.create_job(job)
            jobs.append(job)
        out["create"] = time.perf_counter() - t
        t = time.perf_counter()
        for job in jobs:
            store.update_job(job)
        out["update"] = time.perf_counter() - t
        t = time.perf_counter()
        for job in jobs:
            store.load_job(job.jobStoreID)
        out["load"] = time.perf_counter() - t
        t = time.perf_counter()
        for job in jobs:
            store.delete_job(job.jobStoreID)
        out["delete"] = time.perf_counter() - t
finally:
    store.destroy()
print(json.dumps(out))
"""

# Toil's FileJobStore and ours in ONE process, by --toil-python with this project and its venv appended to the
# path, in alternating rounds over the same filesystem: both pay the same kernel state, which on a VM's disk
# drifts 2-5x over minutes and dominates comparisons between separate runs. Prints one JSON object.
TOIL_AB_SCRIPT = r"""
import json, os, sys, time
root, project, site, n, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sys.path += [project, site]
from toil.common import Config
from toil.jobStores.fileJobStore import FileJobStore
from toil.job import JobDescription
from aiojobstore import Job
from aiojobstore.sync import open_store

data = json.loads(sys.argv[6])
toil = FileJobStore(os.path.join(root, "ab-toil"))
toil.initialize(Config())
times = {"toil": {op: [] for op in ("create", "update", "load", "delete")}}
times["aiojobstore"] = {op: [] for op in times["toil"]}

def timed(kind, op, action, items):
    started = time.perf_counter()
    for item in items:
        action(item)
    times[kind][op].append(time.perf_counter() - started)

def toil_job():
    job = JobDescription(requirements={"memory": 2 << 30, "cores": 1, "disk": 1 << 30, "preemptible": False},
                         jobName="bench")
    toil.assign_job_id(job)
    return job

try:
    with open_store("file:" + os.path.join(root, "ab-ajs"), fsync=False) as ours:
        ours.initialize()
        for round_number in range(rounds):
            def toil_create():
                started = time.perf_counter()
                made = [toil_job() for _ in range(n)]  # assigning an ID makes the job's directory: part of a create
                for job in made:
                    toil.create_job(job)
                times["toil"]["create"].append(time.perf_counter() - started)
                return made

            def ours_create():
                started = time.perf_counter()
                made = [ours.create_job(Job("bench", dict(data))) for _ in range(n)]
                times["aiojobstore"]["create"].append(time.perf_counter() - started)
                return made

            toil_first = round_number % 2 == 0  # who goes first alternates: each pays the other's writeback
            if toil_first:
                tjobs, jobs = toil_create(), ours_create()
            else:
                jobs, tjobs = ours_create(), toil_create()
            steps = [("update", toil.update_job, tjobs, ours.update_job, jobs),
                     ("load", toil.load_job, [j.jobStoreID for j in tjobs], ours.load_job, [j.id for j in jobs]),
                     ("delete", toil.delete_job, [j.jobStoreID for j in tjobs], ours.delete_job, [j.id for j in jobs])]
            for op, toil_action, toil_items, ours_action, ours_items in steps:
                pair = [("toil", toil_action, toil_items), ("aiojobstore", ours_action, ours_items)]
                for kind, action, items in pair if toil_first else pair[::-1]:
                    timed(kind, op, action, items)
        ours.destroy()
finally:
    toil.destroy()
print(json.dumps(times))
"""


def run_toil_ab(toil_python: str, workdir: str, n: int, rounds: int) -> dict[str, dict[str, list[float]]] | None:
    """Seconds per round and operation for Toil's store and ours side by side in one process (TOIL_AB_SCRIPT)."""
    import site

    project = os.path.dirname(os.path.abspath(aiojobstore.__path__[0]))
    return run_script(toil_python, "side-by-side", TOIL_AB_SCRIPT, workdir, project, site.getsitepackages()[0],
                      str(n), str(rounds), json.dumps(JOB_DATA))


def run_script(python: str, what: str, script: str, *args: str) -> Any:
    """The JSON object printed last by ``script`` run with ``python`` (after a settle); None if it failed."""
    settle()
    result = subprocess.run([python, "-c", script, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"  {what} run failed: {tail}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def median(values: list[float]) -> float:
    return statistics.median(values)


def make_source(path: str, size: int) -> None:
    """A file of ``size`` random bytes (not timed)."""
    with open(path, "wb") as out:
        left = size
        while left:
            block = os.urandom(min(8 * MiB, left))
            out.write(block)
            left -= len(block)


def settle() -> None:
    """Flush dirty pages left by the previous measurement so its writeback does not slow the next one."""
    os.sync()
    time.sleep(0.5)


def drop(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


# ------------------------------------------------------------------------------------------------------ files


def bench_copyfile(source: str, workdir: str, fsync: bool) -> float:
    target = os.path.join(workdir, "copy.out")
    settle()
    started = time.perf_counter()
    shutil.copyfile(source, target)
    if fsync:
        fd = os.open(target, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    elapsed = time.perf_counter() - started
    drop(target)
    return elapsed


async def bench_store_file(source: str, workdir: str, fsync: bool, link: bool = False) -> tuple[float, float]:
    """Seconds for write_file and for read_file of ``source`` through a fresh file: store (``link``: read_file
    with ``link=True``, a reflink or hard link where the filesystem allows)."""
    root = os.path.join(workdir, "ajs-store")
    target = os.path.join(workdir, "ajs-read.out")
    async with aiojobstore.open_store("file:" + root, fsync=fsync) as store:
        await store.initialize()
        try:
            await settle_async()
            started = time.perf_counter()
            file_id = await store.write_file(source)
            write_s = time.perf_counter() - started
            await settle_async()
            started = time.perf_counter()
            await store.read_file(file_id, target, link=link)
            read_s = time.perf_counter() - started
            if os.path.getsize(target) != os.path.getsize(source):
                raise SystemExit("read_file returned the wrong size")
        finally:
            drop(target)
            await store.destroy()
    return write_s, read_s


async def settle_async() -> None:
    await asyncio.to_thread(settle)


def run_toil(toil_python: str | None, mode: str, workdir: str, arg: str, n: int) -> dict[str, Any] | None:
    if not toil_python:
        return None
    return run_script(toil_python, f"toil {mode}", TOIL_SCRIPT, mode, workdir, arg, str(n))


# ------------------------------------------------------------------------------------------------------- jobs


def bench_jobs_sync(workdir: str, n: int, fsync: bool) -> dict[str, float]:
    """Seconds per operation kind for ``n`` jobs, one at a time through the blocking facade."""
    times: dict[str, float] = {}
    settle()
    with open_sync_store("file:" + os.path.join(workdir, "ajs-jobs"), fsync=fsync) as store:
        store.initialize()
        try:
            started = time.perf_counter()
            jobs = [store.create_job(Job("bench", dict(JOB_DATA))) for _ in range(n)]
            times["create"] = time.perf_counter() - started
            started = time.perf_counter()
            for job in jobs:
                job.data["state"] = "running"
                store.update_job(job)
            times["update"] = time.perf_counter() - started
            started = time.perf_counter()
            for job in jobs:
                store.load_job(job.id)
            times["load"] = time.perf_counter() - started
            started = time.perf_counter()
            for job in jobs:
                store.delete_job(job.id)
            times["delete"] = time.perf_counter() - started
        finally:
            store.destroy()
    return times


async def bench_jobs_async(workdir: str, n: int, fsync: bool, concurrency: int) -> dict[str, float]:
    """Seconds per operation kind for ``n`` jobs, ``concurrency`` at a time through the async API."""
    times: dict[str, float] = {}
    settle()

    async def each(items: list[Any], action: Callable[[Any], Any]) -> list[Any]:
        """``action`` over ``items`` by a pool of ``concurrency`` worker tasks, as a workflow engine's
        dispatcher would run them (a semaphore over one task per item costs ~17 us per item in asyncio itself)."""
        results: list[Any] = [None] * len(items)
        queue = iter(enumerate(items))

        async def worker() -> None:
            for index, item in queue:
                results[index] = await action(item)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return results

    async with aiojobstore.open_store("file:" + os.path.join(workdir, "ajs-ajobs"), fsync=fsync) as store:
        await store.initialize()
        try:
            started = time.perf_counter()
            jobs = await each([Job("bench", dict(JOB_DATA)) for _ in range(n)], store.create_job)
            times["create"] = time.perf_counter() - started

            async def update(job: Job) -> None:
                job.data["state"] = "running"
                await store.update_job(job)

            started = time.perf_counter()
            await each(jobs, update)
            times["update"] = time.perf_counter() - started
            started = time.perf_counter()
            await each([job.id for job in jobs], store.load_job)
            times["load"] = time.perf_counter() - started
            started = time.perf_counter()
            await each([job.id for job in jobs], store.delete_job)
            times["delete"] = time.perf_counter() - started
        finally:
            await store.destroy()
    return times


def bench_bare_durable(workdir: str, n: int, threads: int) -> dict[str, float]:
    """Seconds for ``n`` bare durable writes of a small record, ``threads`` at a time, with no store around them:
    temp file written and fsynced, renamed to a new name (create) or over the old one (update), directory fsynced;
    the jobs spread over 256 directories as the store's are. The ceiling that this disk puts on durable job
    writes, whatever the code around them."""
    from concurrent.futures import ThreadPoolExecutor

    root = os.path.join(workdir, "bare-durable")
    directories = [os.path.join(root, f"{i:02x}") for i in range(256)]
    for directory in directories:
        os.makedirs(directory)
    dir_fds = [os.open(directory, os.O_RDONLY | os.O_DIRECTORY) for directory in directories]
    record = json.dumps(JOB_DATA).encode()

    def write(index: int) -> None:
        dir_fd = dir_fds[index % 256]
        tmp = f".tmp-{index}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
        try:
            os.write(fd, record)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, f"job-{index}", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)

    times: dict[str, float] = {}
    settle()
    try:
        with ThreadPoolExecutor(threads) as pool:
            for op in ("create", "update"):
                started = time.perf_counter()
                list(pool.map(write, range(n)))
                times[op] = time.perf_counter() - started
    finally:
        for fd in dir_fds:
            os.close(fd)
        shutil.rmtree(root, ignore_errors=True)
    return times


# ----------------------------------------------------------------------------------------- facade overhead


def bench_overhead(locator: str, calls: int) -> dict[str, float]:
    """Microseconds per read_kill_flag(): through the sync facade, awaited directly, and the difference."""
    with open_sync_store(locator) as store:
        store.initialize()
        store.write_kill_flag(False)
        for _ in range(200):
            store.read_kill_flag()
        started = time.perf_counter()
        for _ in range(calls):
            store.read_kill_flag()
        sync_us = (time.perf_counter() - started) / calls * 1e6
        store.destroy()

    async def direct() -> float:
        async with aiojobstore.open_store(locator) as astore:
            await astore.initialize()
            await astore.write_kill_flag(False)
            for _ in range(200):
                await astore.read_kill_flag()
            started = time.perf_counter()
            for _ in range(calls):
                await astore.read_kill_flag()
            elapsed = (time.perf_counter() - started) / calls * 1e6
            await astore.destroy()
            return elapsed

    async_us = asyncio.run(direct())
    return {"sync_us": sync_us, "async_us": async_us, "overhead_us": sync_us - async_us}


# ------------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="file size, e.g. 64MiB (default 1GiB)")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per job benchmark (default 2000)")
    parser.add_argument("--concurrency", type=int, default=64, help="async operations in flight (default 64)")
    parser.add_argument("--calls", type=int, default=20000, help="calls for the facade overhead (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported")
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir under $TMPDIR)")
    parser.add_argument("--toil-python", default=DEFAULT_TOIL_PYTHON,
                        help=f"python of a venv with toil installed (default {DEFAULT_TOIL_PYTHON}; 'none' skips)")
    parser.add_argument("--output", default=RESULTS, help="JSON results file")
    parser.add_argument("--cases", type=lambda text: set(text.split(",")),
                        default={"files", "jobs", "side-by-side", "overhead"},
                        help="comma-separated subset of files,jobs,side-by-side,overhead (default: all)")
    args = parser.parse_args(argv)

    toil_python: str | None = args.toil_python
    if toil_python in ("", "none") or not (toil_python and os.path.exists(toil_python)):
        if toil_python not in ("", "none"):
            print(f"toil: no interpreter at {toil_python}; skipping Toil's columns "
                  "(python -m venv /tmp/toil-venv && /tmp/toil-venv/bin/pip install toil)")
        toil_python = None
    elif subprocess.run([toil_python, "-c", "import toil.jobStores.fileJobStore"], capture_output=True).returncode:
        print(f"toil: {toil_python} cannot import toil; skipping Toil's columns")
        toil_python = None

    workdir = tempfile.mkdtemp(prefix="bench-local-", dir=args.dir)
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "params": {"size": args.size, "jobs": args.jobs, "concurrency": args.concurrency, "repeat": args.repeat,
                   "calls": args.calls},
        "durability": DURABILITY,
        "load_average_at_start": os.getloadavg(),
    }
    print(f"load average at start: {os.getloadavg()[0]:.1f} (other work on the machine skews every figure)")
    try:
        # ------------------------------------------------------------ files
        if "files" in args.cases:
            source = os.path.join(workdir, "source.bin")
            make_source(source, args.size)
            mb = args.size / 1e6
            print(f"files: {args.size / MiB:.0f} MiB, median of {args.repeat} (MB/s)", flush=True)
            files: dict[str, dict[str, float | None]] = {}
            for fsync in (False, True):
                label = "shutil.copyfile + fsync" if fsync else "shutil.copyfile"
                seconds = median([bench_copyfile(source, workdir, fsync) for _ in range(args.repeat)])
                files[label] = {"write_mb_s": mb / seconds, "read_mb_s": mb / seconds}
            for fsync, link in ((True, False), (False, False), (True, True), (False, True)):
                label = ("aiojobstore (fsync)" if fsync else "aiojobstore (no fsync)") + (", read link=True" if link
                                                                                      else "")
                runs = [asyncio.run(bench_store_file(source, workdir, fsync, link)) for _ in range(args.repeat)]
                files[label] = {"write_mb_s": mb / median([w for w, _ in runs]),
                                "read_mb_s": mb / median([r for _, r in runs])}
            toil_runs = [run_toil(toil_python, "file", workdir, source, 0) for _ in range(args.repeat)]
            if all(toil_runs):
                linked = all(r["read_hardlinked"] for r in toil_runs)  # type: ignore[index]
                files["toil FileJobStore" + (" (read=hard link)" if linked else "")] = {
                    "write_mb_s": mb / median([r["write_s"] for r in toil_runs]),  # type: ignore[index]
                    "read_mb_s": mb / median([r["read_s"] for r in toil_runs])}  # type: ignore[index]
                files["toil read_file_stream+copyfileobj"] = {
                    "write_mb_s": None, "read_mb_s": mb / median([r["read_stream_s"] for r in toil_runs])}  # type: ignore
                results["toil_version"] = toil_runs[0]["toil_version"]  # type: ignore[index]
            else:
                files["toil FileJobStore"] = {"write_mb_s": None, "read_mb_s": None}
            drop(source)
            baseline = files["shutil.copyfile"]["write_mb_s"] or 1.0
            for row in files.values():
                for kind in ("write", "read"):
                    value = row[f"{kind}_mb_s"]
                    row[f"{kind}_vs_copyfile"] = None if value is None else value / baseline
            results["files"] = files
            print(f"  {'':36} {'write MB/s':>11} {'read MB/s':>10} {'write/copyfile':>15} {'read/copyfile':>14}")
            def cell(value: float | None, width: int, fmt: str, suffix: str = "") -> str:
                return f"{'n/a':>{width + len(suffix)}}" if value is None else f"{value:>{width}{fmt}}{suffix}"

            for label, row in files.items():
                print(f"  {label:36} {cell(row['write_mb_s'], 11, '.0f')} {cell(row['read_mb_s'], 10, '.0f')} "
                      f"{cell(row['write_vs_copyfile'], 14, '.2f', 'x')} "
                      f"{cell(row['read_vs_copyfile'], 13, '.2f', 'x')}")

        # ------------------------------------------------------------- jobs
        if "jobs" in args.cases:
            print(f"\njobs: {args.jobs} per operation, median of {args.repeat} (ops/s)", flush=True)
            jobs: dict[str, dict[str, float | None]] = {}

            def rate(runs: list[dict[str, float]]) -> dict[str, float | None]:
                return {op: args.jobs / median([run[op] for run in runs]) if op in runs[0] else None for op in OPS}

            cases: dict[str, Callable[[], dict[str, float] | None]] = {}
            for fsync in (True, False):
                tag = "fsync" if fsync else "no fsync"
                cases[f"aiojobstore sync facade, sequential ({tag})"] = (
                    lambda fsync=fsync: bench_jobs_sync(workdir, args.jobs, fsync))
                cases[f"aiojobstore async, {args.concurrency} at a time ({tag})"] = (
                    lambda fsync=fsync: asyncio.run(bench_jobs_async(workdir, args.jobs, fsync, args.concurrency)))
            bare_label = f"bare durable write, {args.concurrency} threads (fsync)"
            cases[bare_label] = lambda: bench_bare_durable(workdir, args.jobs, args.concurrency)
            toil_label = "toil FileJobStore, sequential (no fsync)"
            cases[toil_label] = lambda: run_toil(toil_python, "jobs", workdir, "-", args.jobs)
            job_runs: dict[str, list[dict[str, float] | None]] = {label: [] for label in cases}
            labels = list(cases)
            for repeat in range(args.repeat):  # interleaved, in rotated order: the filesystem's state drifts
                for label in labels[repeat % len(labels):] + labels[: repeat % len(labels)]:
                    job_runs[label].append(cases[label]())
            for label, runs in job_runs.items():
                jobs[label] = rate(runs) if all(runs) else dict.fromkeys(OPS)  # type: ignore[arg-type]
            results["jobs"] = jobs
            print(f"  {'':52} " + " ".join(f"{op:>8}" for op in OPS))
            for label, row in jobs.items():
                print(f"  {label:52} " + " ".join(f"{row[op]:>8.0f}" if row[op] is not None else f"{'n/a':>8}"
                                                   for op in OPS))
            toil_row = jobs[toil_label]
            if toil_row["create"] is not None:
                ours = jobs[f"aiojobstore async, {args.concurrency} at a time (fsync)"]
                ours_nofsync = jobs[f"aiojobstore async, {args.concurrency} at a time (no fsync)"]
                results["async_vs_toil"] = {
                    op: {"fsync": ours[op] / toil_row[op], "no_fsync": ours_nofsync[op] / toil_row[op]}  # type: ignore
                    for op in OPS}
                print("  async/toil (fsync | no fsync): " + ", ".join(
                    f"{op} {v['fsync']:.2f}x | {v['no_fsync']:.2f}x" for op, v in results["async_vs_toil"].items()))

        # ------------------------------------------------------ side by side
        if "side-by-side" in args.cases and toil_python:
            rounds = max(3, args.repeat)
            print(f"\nside by side in one process, no fsync: {args.jobs} jobs per round, {rounds} alternating rounds, "
                  "median (ops/s)", flush=True)
            ab = run_toil_ab(toil_python, workdir, args.jobs, rounds)
            if ab is not None:
                side: dict[str, dict[str, float]] = {
                    kind: {op: args.jobs / median(ab[kind][op]) for op in OPS} for kind in ("aiojobstore", "toil")}
                side["ratio"] = {op: side["aiojobstore"][op] / side["toil"][op] for op in OPS}
                results["side_by_side"] = side
                results["side_by_side_seconds_per_round"] = ab
                print(f"  {'':32} " + " ".join(f"{op:>8}" for op in OPS))
                for label, key, fmt in (("aiojobstore sync facade", "aiojobstore", ".0f"),
                                        ("toil FileJobStore", "toil", ".0f"), ("ratio", "ratio", ".2f")):
                    print(f"  {label:32} " + " ".join(f"{side[key][op]:>8{fmt}}" for op in OPS))

        # --------------------------------------------------------- overhead
        if "overhead" in args.cases:
            print(f"\nsync facade per-call overhead: read_kill_flag(), {args.calls} calls (us per call)", flush=True)
            overhead = {
                "memory:": bench_overhead("memory:bench-overhead", args.calls),
                "file:": bench_overhead("file:" + os.path.join(workdir, "ajs-overhead"), args.calls // 4),
            }
            results["sync_overhead"] = overhead
            for label, row in overhead.items():
                print(f"  {label:8} sync {row['sync_us']:7.1f}   async {row['async_us']:7.1f}   "
                      f"overhead {row['overhead_us']:6.1f} (target <= 20)")

        print("\ndurability:")
        for label, text in DURABILITY.items():
            print(f"  {label:26} {text}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    results["load_average_at_end"] = os.getloadavg()
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as out:
        json.dump(results, out, indent=2)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
