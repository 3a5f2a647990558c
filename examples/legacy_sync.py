#!/usr/bin/env python3
"""The demo workflow for synchronous code: the same DAG, smaller, through the blocking facade.

``aiojobstore.sync.open_store`` gives the job store's API with plain blocking methods, and its streams are
ordinary file objects, so legacy code keeps using ``shutil.copyfileobj`` both ways. Generate jobs run on a
thread pool (the facade is safe to call from many threads); transform jobs read each generated file back with
``copyfileobj``, check its SHA-256 and write a transformed copy; the merge job reads every copy with
``read_file`` and checks it against the original's hash.

    python examples/legacy_sync.py                       # 64 MiB on a fresh file: store in a temp dir
    python examples/legacy_sync.py --total-size 256MiB --store /scratch/legacy-run --keep
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from aiojobstore import Job
from aiojobstore.cli import parse_size
from aiojobstore.errors import IntegrityError, JobStoreError
from aiojobstore.sync import SyncJobStore, open_store

MiB = 1 << 20
COPY_BUFFER = MiB
FORWARD = bytes((i + 1) % 256 for i in range(256))
INVERSE = bytes((i - 1) % 256 for i in range(256))


def generate_local(path: str, size: int, seed: int) -> str:
    """Write ``size`` bytes of seeded pseudo-random data to ``path``; return their SHA-256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left:
            block = rng.randbytes(min(COPY_BUFFER, left))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


def generate(store: SyncJobStore, job_id: str, scratch: str) -> None:
    """Generate job: a local file copied into the store with copyfileobj through write_file_stream."""
    job = store.load_job(job_id)
    shard, size = job.data["shard"], job.data["size"]
    path = os.path.join(scratch, f"gen-{shard}.raw")
    sha = generate_local(path, size, seed=shard)
    with open(path, "rb") as source, store.write_file_stream(job_id, cleanup=True,
                                                               basename=f"shard-{shard}.raw") as (target, file_id):
        shutil.copyfileobj(source, target, COPY_BUFFER)
    os.remove(path)
    job.data.update(state="done", file_id=str(file_id), sha256=sha)
    store.update_job(job)
    store.write_logs(f"{job.name}: wrote {size} bytes")


def transform(store: SyncJobStore, job_id: str, scratch: str) -> None:
    """Transform job: read the generated file out with copyfileobj, verify, write a transformed copy."""
    job = store.load_job(job_id)
    source = store.load_job(job.data["needs"])
    local = os.path.join(scratch, f"in-{job.data['shard']}.raw")
    with store.read_file_stream(source.data["file_id"]) as reader, open(local, "wb") as out:
        shutil.copyfileobj(reader, out, COPY_BUFFER)
    digest = hashlib.sha256()
    transformed = os.path.join(scratch, f"shard-{job.data['shard']}.rot")
    with open(local, "rb") as data, open(transformed, "wb") as out:
        while block := data.read(COPY_BUFFER):
            digest.update(block)
            out.write(block.translate(FORWARD))
    if digest.hexdigest() != source.data["sha256"]:
        raise IntegrityError(f"{job.name}: {source.data['file_id']} does not match its producer's SHA-256")
    file_id = store.write_file(transformed, job_id, cleanup=True)
    os.remove(local)
    os.remove(transformed)
    job.data.update(state="done", file_id=str(file_id), source_sha256=source.data["sha256"])
    store.update_job(job)
    store.write_logs(f"{job.name}: transformed {file_id.size} bytes")


def merge(store: SyncJobStore, job_id: str, scratch: str) -> int:
    """Merge job: read every transformed file with read_file, undo the transform, check the original hash."""
    job = store.load_job(job_id)
    total = 0
    for transform_id in job.data["needs"]:
        done = store.load_job(transform_id)
        local = os.path.join(scratch, "merge.rot")
        store.read_file(done.data["file_id"], local)
        digest = hashlib.sha256()
        with open(local, "rb") as data:
            while block := data.read(COPY_BUFFER):
                digest.update(block.translate(INVERSE))
                total += len(block)
        os.remove(local)
        if digest.hexdigest() != done.data["source_sha256"]:
            raise IntegrityError(f"{job.name}: {done.data['file_id']} does not undo to the generated data")
    with store.write_shared_file_stream("report.txt", encoding="utf-8") as report:
        report.write(f"verified {len(job.data['needs'])} shards, {total} bytes\n")
    job.data.update(state="done", bytes_verified=total)
    store.update_job(job)
    store.write_logs(f"{job.name}: verified {total} bytes")
    return total


def run(locator: str | None, total_size: int, shards: int, keep: bool) -> dict[str, object]:
    """Run the workflow; return its figures."""
    workdir = tempfile.mkdtemp(prefix="aiojobstore-legacy-")
    scratch = os.path.join(workdir, "scratch")
    os.makedirs(scratch)
    locator = locator or "file:" + os.path.join(workdir, "store")
    started = time.perf_counter()
    try:
        with open_store(locator) as store:
            store.initialize()
            store.create_root_job(Job("legacy-pipeline", {"shards": shards}))
            size = total_size // 2 // shards
            generate_ids, transform_ids = [], []
            with store.batch():
                for shard in range(shards):
                    gen = store.create_job(Job(f"generate-{shard}", {"shard": shard, "size": size}))
                    tra = store.create_job(Job(f"transform-{shard}", {"shard": shard, "needs": gen.id}))
                    generate_ids.append(gen.id)
                    transform_ids.append(tra.id)
                merge_job = store.create_job(Job("merge", {"needs": transform_ids}))
            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(lambda job_id: generate(store, job_id, scratch), generate_ids))
            for job_id in transform_ids:
                transform(store, job_id, scratch)
            verified = merge(store, merge_job.id, scratch)
            logs: list[bytes] = []
            store.read_logs(logs.append)
            counts = store.summary()
            if not keep:
                store.destroy()
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return {"store": locator, "jobs": counts["jobs"], "files": counts["files"], "bytes_verified": verified,
            "logs": len(logs), "seconds": round(time.perf_counter() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    """Parse options, run, print a summary; errors print one line and return 1."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", metavar="LOCATOR", help="job store to create (default: file: in a temp dir)")
    parser.add_argument("--total-size", type=parse_size, default=64 * MiB, metavar="SIZE",
                        help="bytes of intermediate files (default: 64MiB)")
    parser.add_argument("--shards", type=int, default=4, help="generate/transform pairs (default: 4)")
    parser.add_argument("--keep", action="store_true", help="keep the store and the temporary directory")
    args = parser.parse_args(argv)
    if args.shards < 1 or args.total_size < 2 * args.shards:
        parser.error("need at least one shard and 2 bytes per shard")
    try:
        result = run(args.store, args.total_size, args.shards, args.keep)
    except (JobStoreError, OSError) as error:
        print(f"legacy_sync: error: {error}", file=sys.stderr)
        return 1
    print("legacy_sync: all checksums verified")
    for name, value in result.items():
        print(f"  {name:<15} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
