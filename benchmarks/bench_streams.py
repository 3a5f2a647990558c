#!/usr/bin/env python3
"""Many write streams at once on one S3 store: peak RSS against the store's memory budget.

    python benchmarks/bench_streams.py --server ceph                 # the project's Ceph RGW (needs root)
    python benchmarks/bench_streams.py --endpoint-url http://127.0.0.1:9000   # MinIO (minioadmin/minioadmin)
    python benchmarks/bench_streams.py --streams 100 --size 64MiB --max-memory 1GiB

Each run is a fresh process: ``--streams`` write streams of unknown length, ``--size`` bytes each in 1 MiB
writes, all started together on one event loop, then every object read back and checked. The process's peak RSS
(``ru_maxrss``), its baseline before the streams, the store's own budget peak and the wall time are printed as a
table and written as JSON. Target (issue 14): peak RSS <= max_memory + 400 MiB for 100 streams of 64 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiojobstore.units import human_size, parse_size  # noqa: E402

MiB = 1 << 20

WORKER = r"""
import asyncio, hashlib, json, os, resource, sys, time
import aiojobstore

def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

async def main(options, streams, size, bucket):
    store = aiojobstore.open_object_store(f"s3://{bucket}/streams", **options)
    async with store:
        await store.create()
        block = os.urandom(1 << 20)
        baseline = rss_mib()

        async def one(n):
            async with store.open_writer(f"s{n}") as writer:
                for _ in range(size >> 20):
                    await writer.write(block)

        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(streams)))
        seconds = time.perf_counter() - started
        peak = rss_mib()
        budget_peak = store.backend.limits.memory.peak
        for n in range(streams):
            info = await store.stat(f"s{n}")
            assert info is not None and info.size == size, (n, info)
        await store.delete_many([f"s{n}" for n in range(streams)])
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak, "baseline_rss_mib": baseline,
                      "budget_peak_bytes": budget_peak}))

asyncio.run(main(json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
"""


def run_case(options: dict, streams: int, size: int, bucket: str) -> dict:
    result = subprocess.run([sys.executable, "-c", WORKER, json.dumps(options), str(streams), str(size), bucket],
                            capture_output=True, text=True, cwd=ROOT, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"worker failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=["ceph"], help="start the project's Ceph RGW instead of --endpoint-url")
    parser.add_argument("--endpoint-url", default="http://127.0.0.1:9000")
    parser.add_argument("--access-key", default="minioadmin")
    parser.add_argument("--secret-key", default="minioadmin")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--size", type=parse_size, default=64 * MiB, help="bytes per stream (default 64MiB)")
    parser.add_argument("--max-memory", type=parse_size, default=1 << 30, help="the store's budget (default 1GiB)")
    parser.add_argument("--part-size", type=parse_size, default=None, help="part size (default the store's)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "streams.json")
    args = parser.parse_args(argv)

    ceph = None
    endpoint, access, secret = args.endpoint_url, args.access_key, args.secret_key
    if args.server == "ceph":
        from tests.servers.ceph_rgw import CephRGW

        print("starting Ceph RGW ...", flush=True)
        ceph = CephRGW(store_bytes=16 << 30).start()
        endpoint, access, secret = ceph.endpoint_url, ceph.access_key, ceph.secret_key
    try:
        options = {"endpoint_url": endpoint, "aws_access_key_id": access, "aws_secret_access_key": secret,
                   "region_name": "us-east-1", "max_memory": args.max_memory}
        if args.part_size:
            options["part_size"] = args.part_size
        bucket = f"ajs-streams-{uuid.uuid4().hex[:8]}"
        result = run_case(options, args.streams, args.size, bucket)
    finally:
        if ceph is not None:
            ceph.stop()
    limit_mib = args.max_memory / MiB + 400
    rows = [
        ("streams x size", f"{args.streams} x {human_size(args.size)}"),
        ("max_memory", human_size(args.max_memory)),
        ("peak RSS", f"{result['peak_rss_mib']:.0f} MiB (baseline {result['baseline_rss_mib']:.0f} MiB)"),
        ("budget peak", human_size(result["budget_peak_bytes"])),
        ("wall time", f"{result['seconds']:.1f} s ({args.streams * args.size / MiB / result['seconds']:.0f} MiB/s)"),
        ("target", f"peak RSS <= {limit_mib:.0f} MiB: {'ok' if result['peak_rss_mib'] <= limit_mib else 'MISSED'}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"streams": args.streams, "size": args.size, "max_memory": args.max_memory,
                                       "server": args.server or endpoint, **result,
                                       "python": sys.version.split()[0], "pid_cpu_count": os.cpu_count(),
                                       "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0 if result["peak_rss_mib"] <= limit_mib else 1


if __name__ == "__main__":
    sys.exit(main())
