#!/usr/bin/env python3
"""S3 benchmark: aiojobstore's S3 backend against boto3 (s3transfer), aioboto3, s3fs and obstore, same run,
same server.

    python benchmarks/bench_s3.py [--server ceph | --endpoint-url URL --access-key K --secret-key S]
                                  [--repeats 3] [--size-scale 1.0 | --quick] [--peer-python PATH]
                                  [--clients aiojobstore,boto3,...] [--cases upload,download,...]

Without ``--server`` the endpoint defaults to MinIO on ``http://127.0.0.1:9000`` (``minioadmin``/``minioadmin``).
``--server ceph`` starts the project's throw-away Ceph RGW (``tests/servers/ceph_rgw.py``; needs root and
``tests/servers/install-ceph.sh``) and stops it at the end.

Cases (sizes times ``--size-scale``; ``--quick`` is 1/8: 128 MiB instead of 1 GiB):

- ``upload``: one 1 GiB file; ``download``: one 1 GiB object to a file;
- ``multi_up`` / ``multi_down``: 16 x 128 MiB files up, objects down, all 16 at once;
- ``stream``: 1 GiB of generated data of unknown length written as a stream;
- ``small``: 2000 x 4 KiB objects, each put then got, one after the other (ops/s counts puts and gets).

Clients, each at its defaults and "tuned" (50 MiB parts, 8 parts in flight, 128 connections, where the library
lets one set them; aiojobstore's defaults already are 50 MiB / 8, so it runs once):

- ``aiojobstore``: the public object-store API (``aiojobstore.open_object_store``): upload_file, download_file,
  open_writer, put/get;
- ``boto3``: upload_file / download_file / upload_fileobj (s3transfer); 16 at once via one TransferManager;
- ``aioboto3``: the same calls on the asyncio client, 16 at once with asyncio.gather;
- ``s3fs``: put_file / get_file / open("wb"), 16 at once with put/get of lists;
- ``obstore``: put (file path, iterator) / get streamed to a file; 16 at once with put_async/get_async.

Every (client, config, case) runs in its own subprocess, so its peak RSS is its own (``VmHWM`` of the child;
its ``ru_maxrss`` is recorded too but includes the parent's RSS at fork/exec on Linux); clients
are interleaved within each repeat (the order rotates between cases and repeats). Peers run with ``--peer-python`` (a
separate venv, so they cannot disturb the project's pinned aiobotocore):

    python3 -m venv /tmp/bench-peers-venv
    /tmp/bench-peers-venv/bin/pip install boto3 'aioboto3>=15' 's3fs>=2025.1' obstore matplotlib

A peer that cannot be imported there is skipped (and said so). Results: a table on stdout (median MB/s with
min-max, peak RSS MiB, ratio to the best peer), JSON in ``benchmarks/results/s3.json`` and a bar chart in
``benchmarks/results/s3.png`` (drawn with matplotlib from either interpreter). MB/s = 10^6 bytes per second.
Data files are os.urandom blocks generated once into a temp dir and deleted at the end.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 1 << 20
TUNED_PART = 50 * MiB
TUNED_CONCURRENCY = 8
TUNED_POOL = 128
CASES = ("upload", "download", "multi_up", "multi_down", "stream", "small")
CLIENTS = ("aiojobstore", "boto3", "aioboto3", "s3fs", "obstore")
PEERS = CLIENTS[1:]
BASELINE = "aiojobstore-baseline"  # the same worker on another checkout of the package (--baseline)
IMPORTS = {"boto3": "boto3", "aioboto3": "aioboto3", "s3fs": "s3fs", "obstore": "obstore"}

# ----------------------------------------------------------------------------------------------- workers
# Each worker runs as `python -c COMMON+WORKER <json args>` and prints one JSON line {"seconds", "rss_mib"}.
# Only the transfer itself is timed: imports, client creation and cleanup are not.

COMMON = r'''
import json, os, resource, sys, time
A = json.loads(sys.argv[1])
MiB = 1 << 20
CASE, TUNED, BUCKET, RUN = A["case"], A["config"] == "tuned", A["bucket"], A["run"]
MULTI_SRC = [os.path.join(A["data"], f"multi-{i}") for i in range(A["multi_n"])]
MULTI_DST = [os.path.join(A["out"], f"multi-{i}") for i in range(A["multi_n"])]
SMALL = os.urandom(4096)
POOL = os.urandom(64 * MiB) if CASE == "stream" else b""  # made before the clock starts

def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime

CPU_AT_START = [0.0]

def start():
    """Start the clock (wall and this process's CPU)."""
    CPU_AT_START[0] = cpu_seconds()
    return time.perf_counter()

def key(name):
    return f"{RUN}/{name}"

class Generated:
    """A["stream_size"] bytes of unknown length cycled from a 64 MiB random pool: iterate (1 MiB blocks) or read(n)."""
    def __init__(self):
        self.pool = POOL
        self.left = A["stream_size"]
        self.offset = 0
    def read(self, n=-1):
        n = self.left if n is None or n < 0 else min(n, self.left)
        out = []
        while n > 0:
            piece = self.pool[self.offset:self.offset + n]
            self.offset = (self.offset + len(piece)) % len(self.pool)
            self.left -= len(piece)
            n -= len(piece)
            out.append(piece)
        return out[0] if len(out) == 1 else b"".join(out)
    def __iter__(self):
        while self.left > 0:
            yield self.read(MiB)

def report(seconds):
    # Peak RSS of this process's own memory: VmHWM. ru_maxrss is also recorded, but on Linux it starts from the
    # parent's RSS at fork/exec (signal->maxrss is inherited), which would put a floor under every client.
    with open("/proc/self/status") as status:
        hwm = [int(line.split()[1]) for line in status if line.startswith("VmHWM:")]
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds() - CPU_AT_START[0],
                      "rss_mib": hwm[0] / 1024 if hwm else maxrss, "ru_maxrss_mib": maxrss}), flush=True)
'''

AIOJOBSTORE = r'''
import anyio
import aiojobstore

async def main():
    options = dict(part_size="50MiB", max_concurrency=8) if TUNED else {}
    store = aiojobstore.open_object_store(f"s3://{BUCKET}", endpoint_url=A["endpoint"], region_name="us-east-1",
                                          aws_access_key_id=A["access"], aws_secret_access_key=A["secret"], **options)
    async with store:
        await store.exists()  # connects, like the peers' head_bucket
        started = start()
        if CASE == "upload":
            await store.upload_file(A["big"], key("big"))
        elif CASE == "download":
            await store.download_file(A["seed_big"], A["big_out"])
        elif CASE == "multi_up":
            async with anyio.create_task_group() as tg:
                for i, src in enumerate(MULTI_SRC):
                    tg.start_soon(store.upload_file, src, key(f"multi-{i}"))
        elif CASE == "multi_down":
            async with anyio.create_task_group() as tg:
                for i, dst in enumerate(MULTI_DST):
                    tg.start_soon(store.download_file, A["seed_multi"][i], dst)
        elif CASE == "stream":
            async with store.open_writer(key("stream")) as writer:
                for block in Generated():
                    await writer.write(block)
        elif CASE == "small":
            for i in range(A["small_n"]):
                await store.put(key(f"small/{i}"), SMALL)
                assert await store.get(key(f"small/{i}")) == SMALL
        seconds = time.perf_counter() - started
    report(seconds)

anyio.run(main)
'''

BOTO3 = r'''
import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from s3transfer.manager import TransferManager

extra = dict(max_pool_connections=128, request_checksum_calculation="when_required",
             response_checksum_validation="when_required") if TUNED else {}
s3 = boto3.client("s3", endpoint_url=A["endpoint"], aws_access_key_id=A["access"], region_name="us-east-1",
                  aws_secret_access_key=A["secret"], config=Config(s3={"addressing_style": "path"}, **extra))
cfg = TransferConfig(multipart_threshold=50 * MiB, multipart_chunksize=50 * MiB, max_concurrency=8) if TUNED \
    else TransferConfig()
s3.head_bucket(Bucket=BUCKET)
started = start()
if CASE == "upload":
    s3.upload_file(A["big"], BUCKET, key("big"), Config=cfg)
elif CASE == "download":
    s3.download_file(BUCKET, A["seed_big"], A["big_out"], Config=cfg)
elif CASE in ("multi_up", "multi_down"):
    with TransferManager(s3, cfg) as manager:
        if CASE == "multi_up":
            futures = [manager.upload(src, BUCKET, key(f"multi-{i}")) for i, src in enumerate(MULTI_SRC)]
        else:
            futures = [manager.download(BUCKET, A["seed_multi"][i], dst) for i, dst in enumerate(MULTI_DST)]
        for future in futures:
            future.result()
elif CASE == "stream":
    s3.upload_fileobj(Generated(), BUCKET, key("stream"), Config=cfg)
elif CASE == "small":
    for i in range(A["small_n"]):
        s3.put_object(Bucket=BUCKET, Key=key(f"small/{i}"), Body=SMALL)
        assert s3.get_object(Bucket=BUCKET, Key=key(f"small/{i}"))["Body"].read() == SMALL
report(time.perf_counter() - started)
'''

AIOBOTO3 = r'''
import asyncio
import aioboto3
from aiobotocore.config import AioConfig
from boto3.s3.transfer import TransferConfig

async def main():
    extra = dict(max_pool_connections=128, request_checksum_calculation="when_required",
                 response_checksum_validation="when_required") if TUNED else {}
    cfg = TransferConfig(multipart_threshold=50 * MiB, multipart_chunksize=50 * MiB, max_concurrency=8) if TUNED \
        else TransferConfig()
    session = aioboto3.Session()
    async with session.client("s3", endpoint_url=A["endpoint"], aws_access_key_id=A["access"],
                              aws_secret_access_key=A["secret"], region_name="us-east-1",
                              config=AioConfig(s3={"addressing_style": "path"}, **extra)) as s3:
        await s3.head_bucket(Bucket=BUCKET)
        started = start()
        if CASE == "upload":
            await s3.upload_file(A["big"], BUCKET, key("big"), Config=cfg)
        elif CASE == "download":
            await s3.download_file(BUCKET, A["seed_big"], A["big_out"], Config=cfg)
        elif CASE == "multi_up":
            await asyncio.gather(*(s3.upload_file(src, BUCKET, key(f"multi-{i}"), Config=cfg)
                                   for i, src in enumerate(MULTI_SRC)))
        elif CASE == "multi_down":
            await asyncio.gather(*(s3.download_file(BUCKET, A["seed_multi"][i], dst, Config=cfg)
                                   for i, dst in enumerate(MULTI_DST)))
        elif CASE == "stream":
            await s3.upload_fileobj(Generated(), BUCKET, key("stream"), Config=cfg)
        elif CASE == "small":
            for i in range(A["small_n"]):
                await s3.put_object(Bucket=BUCKET, Key=key(f"small/{i}"), Body=SMALL)
                response = await s3.get_object(Bucket=BUCKET, Key=key(f"small/{i}"))
                async with response["Body"] as body:
                    assert await body.read() == SMALL
        seconds = time.perf_counter() - started
    report(seconds)

asyncio.run(main())
'''

S3FS = r'''
import s3fs
options = dict(default_block_size=50 * MiB, max_concurrency=8,
               config_kwargs={"max_pool_connections": 128}) if TUNED else {}
fs = s3fs.S3FileSystem(key=A["access"], secret=A["secret"], endpoint_url=A["endpoint"],
                       client_kwargs={"region_name": "us-east-1"}, **options)
fs.ls(BUCKET)
started = start()
if CASE == "upload":
    fs.put_file(A["big"], f"{BUCKET}/{key('big')}")
elif CASE == "download":
    fs.get_file(f"{BUCKET}/{A['seed_big']}", A["big_out"])
elif CASE == "multi_up":
    fs.put(MULTI_SRC, [f"{BUCKET}/{key(f'multi-{i}')}" for i in range(len(MULTI_SRC))])
elif CASE == "multi_down":
    fs.get([f"{BUCKET}/{k}" for k in A["seed_multi"]], MULTI_DST)
elif CASE == "stream":
    with fs.open(f"{BUCKET}/{key('stream')}", "wb") as handle:
        for block in Generated():
            handle.write(block)
elif CASE == "small":
    for i in range(A["small_n"]):
        fs.pipe_file(f"{BUCKET}/{key(f'small/{i}')}", SMALL)
        assert fs.cat_file(f"{BUCKET}/{key(f'small/{i}')}") == SMALL
report(time.perf_counter() - started)
'''

OBSTORE = r'''
import asyncio
from pathlib import Path
import obstore
from obstore.store import S3Store

store = S3Store(BUCKET, endpoint=A["endpoint"], access_key_id=A["access"], secret_access_key=A["secret"],
                region="us-east-1", virtual_hosted_style_request=False,
                client_options={"allow_http": True, **({"pool_max_idle_per_host": "128"} if TUNED else {})})
put_options = dict(chunk_size=50 * MiB, max_concurrency=8) if TUNED else {}
CHUNK = 8 * MiB

def get_to_file(k, path):
    result = obstore.get(store, k)
    with open(path, "wb") as handle:
        for chunk in result.stream(min_chunk_size=CHUNK):
            handle.write(chunk)

async def get_to_file_async(k, path):
    result = await obstore.get_async(store, k)
    with open(path, "wb") as handle:
        async for chunk in result.stream(min_chunk_size=CHUNK):
            handle.write(chunk)

async def multi():
    if CASE == "multi_up":
        await asyncio.gather(*(obstore.put_async(store, key(f"multi-{i}"), Path(src), **put_options)
                               for i, src in enumerate(MULTI_SRC)))
    else:
        await asyncio.gather(*(get_to_file_async(A["seed_multi"][i], dst) for i, dst in enumerate(MULTI_DST)))

obstore.list(store, prefix="none/").collect()
started = start()
if CASE == "upload":
    obstore.put(store, key("big"), Path(A["big"]), **put_options)
elif CASE == "download":
    get_to_file(A["seed_big"], A["big_out"])
elif CASE in ("multi_up", "multi_down"):
    asyncio.run(multi())
elif CASE == "stream":
    obstore.put(store, key("stream"), iter(Generated()), **put_options)
elif CASE == "small":
    for i in range(A["small_n"]):
        obstore.put(store, key(f"small/{i}"), SMALL)
        assert obstore.get(store, key(f"small/{i}")).bytes() == SMALL
report(time.perf_counter() - started)
'''

WORKERS = {"aiojobstore": AIOJOBSTORE, BASELINE: AIOJOBSTORE, "boto3": BOTO3, "aioboto3": AIOBOTO3, "s3fs": S3FS,
           "obstore": OBSTORE}

CHART = r'''
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
data = json.load(open(sys.argv[1]))
cases = [c for c in data["cases"] if any(r["case"] == c and r.get("median") for r in data["results"])]
fig, axes = plt.subplots(len(cases), 1, figsize=(9, 2.0 + 0.38 * len(data["configs"]) * len(cases)), squeeze=False)
for ax, case in zip(axes[:, 0], cases):
    rows = sorted((r for r in data["results"] if r["case"] == case and r.get("median")),
                  key=lambda r: data["configs"].index(f'{r["client"]}/{r["config"]}'))  # the order they ran in
    labels = [f'{r["client"]} ({r["config"]})' for r in rows]
    med = [r["median"] for r in rows]
    lo = [r["median"] - r["min"] for r in rows]
    hi = [r["max"] - r["median"] for r in rows]
    colors = ["tab:red" if r["client"] == "aiojobstore" else "tab:blue" if r["config"] == "tuned" else "tab:gray"
              for r in rows]
    ax.barh(labels, med, xerr=[lo, hi], color=colors, capsize=3)
    ax.invert_yaxis()
    unit = "ops/s" if case == "small" else "MB/s"
    ax.set_title(f'{data["case_titles"][case]} ({unit}, median, min-max)', fontsize=10)
    ax.tick_params(labelsize=8)
    for y, (value, r) in enumerate(zip(med, rows)):
        ax.text(r["max"], y, f'  {value:.0f}  ({r["rss_mib"]:.0f} MiB)', va="center", fontsize=7)
    ax.set_xlim(0, max(r["max"] for r in rows) * 1.22)
fig.suptitle(f'aiojobstore S3 benchmark on {data["server"]} ({data["date"]})', fontsize=11)
fig.tight_layout(rect=(0, 0, 1, 0.985))
fig.savefig(sys.argv[2], dpi=110)
'''


# ----------------------------------------------------------------------------------------------- helpers

def run_worker(python: str, client: str, args: dict, timeout: float, baseline: str | None = None) -> dict:
    code = COMMON + WORKERS[client]
    env = dict(os.environ)
    if client == BASELINE and baseline:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [baseline, env.get("PYTHONPATH")]))
    try:
        result = subprocess.run([python, "-c", code, json.dumps(args)], capture_output=True, text=True,
                                timeout=timeout, cwd=tempfile.gettempdir(), env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    try:
        reported = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        reported = None
    if reported is not None:  # with a nonzero exit: timed and reported, then died on the way out; marked
        return {**reported, "exit": result.returncode} if result.returncode else reported
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return {"error": (lines[-1] if lines else f"exit {result.returncode}, no result")[:300],
            "stderr": result.stderr[-3000:]}


def peer_available(python: str, client: str) -> str | None:
    """None when ``client`` imports under ``python``, else why not."""
    if not os.path.exists(python):
        return f"{python} does not exist"
    result = subprocess.run([python, "-c", f"import {IMPORTS[client]}"], capture_output=True, text=True)
    return None if result.returncode == 0 else result.stderr.strip().splitlines()[-1]


def write_random(path: Path, size: int) -> None:
    block = 8 * MiB
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            handle.write(os.urandom(min(block, left)))
            left -= block
        handle.flush()
        os.fsync(handle.fileno())  # no writeback of GiBs of fresh data during the first measurements


class Server:
    """The endpoint: a given one, or the project's Ceph RGW started here."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.ceph = None
        self.endpoint, self.access, self.secret = args.endpoint_url, args.access_key, args.secret_key
        self.name = args.endpoint_url
        if args.server == "ceph":
            sys.path.insert(0, str(ROOT))
            from tests.servers.ceph_rgw import CephRGW

            print("starting Ceph RGW (tests/servers/ceph_rgw.py) ...", flush=True)
            started = time.monotonic()
            self.ceph = CephRGW(store_bytes=args.ceph_store_gib << 30).start()
            print(f"  up in {time.monotonic() - started:.0f} s at {self.ceph.endpoint_url}", flush=True)
            self.endpoint, self.access, self.secret = self.ceph.endpoint_url, self.ceph.access_key, self.ceph.secret_key
            self.name = "Ceph RGW 16 (memstore, loopback)"

    def collect_garbage(self) -> None:
        """Deleted multipart tails stay in RGW until its garbage collector runs: run it now."""
        if self.ceph is not None:
            try:
                self.ceph._run("radosgw-admin", "gc", "process", "--include-all", timeout=300)
            except Exception as error:
                print(f"  (radosgw-admin gc process failed: {error})", flush=True)

    def stop(self) -> None:
        if self.ceph is not None:
            self.ceph.stop()


async def _s3_admin(server: Server, bucket: str, action: str, seeds: dict | None = None) -> None:
    """Bucket creation, seeding of the download sources (with aiojobstore, so their CRC32C is there to check)
    and deleting everything under ``run/``: done by the parent process, untimed."""
    from aiojobstore.locator import open_backend

    backend = open_backend(f"s3://{bucket}", endpoint_url=server.endpoint, region_name="us-east-1",
                           aws_access_key_id=server.access, aws_secret_access_key=server.secret)
    try:
        client = await backend.client()
        if action == "create":
            try:
                await client.create_bucket(Bucket=bucket)
            except Exception as error:
                if "BucketAlreadyOwnedByYou" not in str(error):
                    raise
        elif action == "seed":
            assert seeds is not None
            for path, key in seeds.items():
                await backend.upload_file(path, key)
        elif action == "clean":
            keys = [info.key async for info in backend.list("run/")]
            if keys:
                await backend.delete_many(keys)
            for upload in await backend.pending_uploads("run/"):
                print(f"  (pending upload left: {upload})", flush=True)
            await backend._abort_uploads("run/")
        elif action == "destroy":
            keys = [info.key async for info in backend.list("")]
            if keys:
                await backend.delete_many(keys)
            await backend._abort_uploads("")
            await client.delete_bucket(Bucket=bucket)
    finally:
        await backend.close()


def s3_admin(server: Server, bucket: str, action: str, seeds: dict | None = None) -> None:
    import anyio

    anyio.run(lambda: _s3_admin(server, bucket, action, seeds))


def summarize(samples: list[dict], work: float) -> dict:
    ok = [s for s in samples if "seconds" in s]
    if not ok:
        return {"error": samples[-1].get("error") if samples else "not run"}
    rates = [work / s["seconds"] for s in ok]
    cpu = [s["cpu_seconds"] for s in ok if "cpu_seconds" in s]
    return {"cpu_seconds": statistics.median(cpu) if cpu else None,
            "median": statistics.median(rates), "min": min(rates), "max": max(rates),
            "rss_mib": statistics.median(s["rss_mib"] for s in ok), "rss_max_mib": max(s["rss_mib"] for s in ok),
            "seconds": [s["seconds"] for s in ok], "n": len(ok),
            "errors": [s["error"] for s in samples if "error" in s],
            "exits_after_report": [s["exit"] for s in ok if "exit" in s]}


def fmt_size(n: int) -> str:
    return f"{n // (1 << 30)} GiB" if n % (1 << 30) == 0 else f"{n / MiB:g} MiB"


# ----------------------------------------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=["ceph"], help="start this server instead of using --endpoint-url")
    parser.add_argument("--endpoint-url", default="http://127.0.0.1:9000")
    parser.add_argument("--access-key", default="minioadmin")
    parser.add_argument("--secret-key", default="minioadmin")
    parser.add_argument("--bucket", default=None, help="bucket (created; default: a fresh aiojobstore-bench-*)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size-scale", type=float, default=1.0, help="multiply every size and count by this")
    parser.add_argument("--quick", action="store_true", help="same as --size-scale 0.125 (128 MiB for 1 GiB)")
    parser.add_argument("--peer-python", default="/tmp/bench-peers-venv/bin/python")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--baseline", metavar="DIR", help="also run aiojobstore from this checkout (e.g. a git "
                        "worktree of an older commit) as client aiojobstore-baseline, for a before/after table")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--configs", default="tuned,default")
    parser.add_argument("--ceph-store-gib", type=int, default=12, help="memstore size of the started Ceph OSD")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per worker")
    parser.add_argument("--output", default=str(HERE / "results" / "s3"), help="path prefix for .json and .png")
    args = parser.parse_args()
    scale = 0.125 if args.quick else args.size_scale

    def scaled(n: int) -> int:
        return max(MiB, int(n * scale) // MiB * MiB)

    big, multi_size, multi_n = scaled(1 << 30), scaled(128 * MiB), 16
    stream_size, small_n = scaled(1 << 30), max(50, int(2000 * scale))
    work = {"upload": big, "download": big, "multi_up": multi_size * multi_n, "multi_down": multi_size * multi_n,
            "stream": stream_size, "small": 2 * small_n}
    multi = f"{multi_n} x {fmt_size(multi_size)}"
    titles = {"upload": f"upload {fmt_size(big)} file", "download": f"download {fmt_size(big)}",
              "multi_up": f"{multi} up", "multi_down": f"{multi} down",
              "stream": f"stream-write {fmt_size(stream_size)}", "small": f"{small_n} x 4 KiB put+get"}
    cases = [c for c in args.cases.split(",") if c]
    configs = [c for c in args.configs.split(",") if c]
    clients = []
    for client in [c for c in args.clients.split(",") if c]:
        if client in PEERS:
            reason = peer_available(args.peer_python, client)
            if reason:
                print(f"SKIPPED {client}: not importable with {args.peer_python} ({reason})")
                continue
        clients.append(client)
    if args.baseline:
        clients.insert(1, BASELINE)
    runs = []  # (client, config): aiojobstore's defaults are the tuned values, so it runs once
    for client in clients:
        for config in configs:
            runs.append((client, "default" if client.startswith("aiojobstore") else config))
    runs = list(dict.fromkeys(runs))

    python = {c: (sys.executable if c.startswith("aiojobstore") else args.peer_python) for c in clients}
    server = Server(args)
    bucket = args.bucket or f"aiojobstore-bench-{os.getpid()}"
    data = Path(tempfile.mkdtemp(prefix="aiojobstore-bench-s3-"))
    samples: dict[tuple[str, str, str], list[dict]] = {}
    started = time.monotonic()
    try:
        print(f"generating data in {data} ...", flush=True)
        big_path = data / "big"
        need_big = {"upload"} & set(cases)
        if need_big or "download" in cases:
            write_random(big_path, big)
        if {"multi_up", "multi_down"} & set(cases):
            for i in range(multi_n):
                write_random(data / f"multi-{i}", multi_size)
        s3_admin(server, bucket, "create")
        seeds = {}
        if "download" in cases:
            seeds[str(big_path)] = "seed/big"
        if "multi_down" in cases:
            seeds.update({str(data / f"multi-{i}"): f"seed/multi-{i}" for i in range(multi_n)})
        s3_admin(server, bucket, "seed", seeds)
        # A freshly started server is slow to take its first GiBs (Ceph's memstore OSD allocates as it goes: on
        # this VM the first 16 x 128 MiB upload after a start ran at 230-330 MB/s, later ones at 400+, for every
        # client), which would fall on whichever client happens to run first. Warm it up, untimed, with as many
        # bytes as the largest case moves, then delete them.
        warm = [p for p in [big_path, *(data / f"multi-{i}" for i in range(multi_n))] if p.exists()]
        if warm:
            print(f"warming the server up (untimed): {len(warm)} files, {sum(p.stat().st_size for p in warm) >> 20}"
                  " MiB ...", flush=True)
            s3_admin(server, bucket, "seed", {str(p): f"run/warmup/{p.name}" for p in warm})
            s3_admin(server, bucket, "clean")
        server.collect_garbage()
        print(f"{len(runs)} client configurations x {len(cases)} cases x {args.repeats} repeats on {server.name}",
              flush=True)
        for repeat in range(args.repeats):
            for case_index, case in enumerate(cases):
                shift = (repeat + case_index) % len(runs)  # each client takes every position in turn
                order = runs[shift:] + runs[:shift]
                for client, config in order:
                    out = Path(tempfile.mkdtemp(prefix="out-", dir=data))
                    worker_args = {
                        "case": case, "config": config, "bucket": bucket, "endpoint": server.endpoint,
                        "access": server.access, "secret": server.secret, "run": f"run/{client}-{config}-{case}",
                        "data": str(data), "out": str(out), "big": str(big_path), "big_out": str(out / "big"),
                        "seed_big": "seed/big", "seed_multi": [f"seed/multi-{i}" for i in range(multi_n)],
                        "multi_n": multi_n, "stream_size": stream_size, "small_n": small_n,
                    }
                    result = run_worker(python[client], client, worker_args, args.timeout, args.baseline)
                    samples.setdefault((client, config, case), []).append(result)
                    shutil.rmtree(out, ignore_errors=True)
                    # Downloads that leave their bytes unsynced in the page cache (every peer) would otherwise be
                    # written back to disk while the next client runs, and slow down whichever writes to disk then
                    # (aiojobstore writes with O_DIRECT and fsyncs): finish all writeback here, untimed.
                    os.sync()
                    if "error" in result:
                        shown = f"FAILED: {result['error']}"
                    else:
                        unit = "ops/s" if case == "small" else "MB/s"
                        rate = work[case] / result["seconds"] / (1 if case == "small" else 1e6)
                        shown = (f"{rate:8.1f} {unit}  {result['rss_mib']:6.0f} MiB  ({result['seconds']:.1f} s, "
                                 f"CPU {result.get('cpu_seconds', float('nan')):.2f} s)")
                        if "exit" in result:
                            shown += f"  (then exited {result['exit']})"
                    print(f"  [{repeat + 1}/{args.repeats}] {titles[case]:<22} {client:<20} {config:<7} {shown}",
                          flush=True)
                    if case != "download" and case != "multi_down":
                        s3_admin(server, bucket, "clean")
                        if case != "small":
                            server.collect_garbage()
    finally:
        try:
            s3_admin(server, bucket, "destroy")
        except Exception as error:
            print(f"(could not delete bucket {bucket}: {error})")
        server.stop()
        shutil.rmtree(data, ignore_errors=True)

    results = []
    for (client, config, case), runs_ in samples.items():
        summary = summarize(runs_, work[case] / (1 if case == "small" else 1e6))
        cpu = summary.get("cpu_seconds")
        if cpu is not None:  # client CPU per unit of work: s per GiB moved, or µs per request
            summary["cpu"] = cpu / work[case] * 1e6 if case == "small" else cpu / (work[case] / (1 << 30))
        results.append({"client": client, "config": config, "case": case, **summary})
    best_peer = {}
    for case in cases:
        peer_rates = [r["median"] for r in results if r["case"] == case and not r["client"].startswith("aiojobstore")
                      and "median" in r]
        best_peer[case] = max(peer_rates) if peer_rates else None
    for r in results:
        if "median" in r and best_peer.get(r["case"]):
            r["ratio_to_best_peer"] = r["median"] / best_peer[r["case"]]
    baseline_rates = {r["case"]: r["median"] for r in results if r["client"] == BASELINE and "median" in r}
    for r in results:
        if r["client"] == "aiojobstore" and "median" in r and baseline_rates.get(r["case"]):
            r["ratio_to_baseline"] = r["median"] / baseline_rates[r["case"]]

    lines = print_table(results, cases, titles, runs)
    verdicts = check_targets(results, best_peer, cases)
    print()
    for line in verdicts:
        print(line)
    elapsed = time.monotonic() - started
    print(f"\n{len(runs)} configurations, {args.repeats} repeats, {elapsed / 60:.1f} min")
    document = {
        "server": server.name, "endpoint": server.endpoint, "date": datetime.date.today().isoformat(),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "repeats": args.repeats, "scale": scale,
        "baseline": args.baseline,
        "units": {"small": "ops/s (puts + gets)", "other": "MB/s (10^6 bytes/s)",
                  "cpu": "client CPU (user + system, all threads): s per GiB; for small, µs per request"},
        "tuned": {"part_size_mib": 50, "in_flight": 8, "pool": 128},
        "cases": cases, "case_titles": titles, "configs": [f"{c}/{k}" for c, k in runs], "best_peer": best_peer,
        "results": results, "table": lines, "targets": verdicts, "elapsed_s": elapsed,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(document, indent=1) + "\n")
    print(f"wrote {output.with_suffix('.json')}")
    draw_chart(output, args.peer_python)
    return 0


def print_table(results: list[dict], cases: list[str], titles: dict, runs: list) -> list[str]:
    lines = []
    header = (f"{'case':<24} {'client':<30} {'median':>9} {'min-max':>13} {'RSS MiB':>8} {'CPU':>7} "
              f"{'x best peer':>11}")
    lines += ["", "CPU: the client's CPU seconds per GiB moved (small: µs per request)", header, "-" * len(header)]
    for case in cases:
        unit = "ops/s" if case == "small" else "MB/s"
        rows = [r for r in results if r["case"] == case]
        rows.sort(key=lambda r: runs.index((r["client"], r["config"])))
        for r in rows:
            name = f"{r['client']} ({r['config']})"
            if "median" not in r:
                lines.append(f"{titles[case]:<24} {name:<30} FAILED: {r.get('error')}"[:160])
                continue
            ratio = f"{r['ratio_to_best_peer']:.2f}x" if "ratio_to_best_peer" in r else "-"
            if "ratio_to_baseline" in r:
                ratio += f" ({r['ratio_to_baseline']:.2f}x baseline)"
            cpu = f"{r['cpu']:7.2f}" if r.get("cpu") is not None else "      -"
            lines.append(f"{titles[case]:<24} {name:<30} {r['median']:9.1f} {r['min']:6.0f}-{r['max']:<6.0f} "
                         f"{r['rss_mib']:8.0f} {cpu} {ratio:>11}  {unit}")
        lines.append("")
    for line in lines:
        print(line)
    return lines


def check_targets(results: list[dict], best_peer: dict, cases: list[str]) -> list[str]:
    """The targets of issues 3 and 18 (meaningful on Ceph RGW at full size)."""
    ours = {r["case"]: r for r in results if r["client"] == "aiojobstore" and "median" in r}
    out = ["targets (issues 3 and 18):"]
    for case, need in (("upload", 1.0), ("download", 1.0), ("multi_up", 1.2), ("multi_down", 1.2), ("stream", 1.0)):
        if case in ours and best_peer.get(case):
            ratio = ours[case]["median"] / best_peer[case]
            out.append(f"  {case:<11} {ratio:5.2f}x best peer (need >= {need}x): {'ok' if ratio >= need else 'MISSED'}")
    s3fs = [r["median"] for r in results if r["case"] == "stream" and r["client"] == "s3fs" and "median" in r]
    if "stream" in ours and s3fs:
        ratio = ours["stream"]["median"] / max(s3fs)
        out.append(f"  stream      {ratio:5.2f}x best s3fs (need >= 2x): {'ok' if ratio >= 2 else 'MISSED'}")
    if "small" in ours and best_peer.get("small"):
        ratio = ours["small"]["median"] / best_peer["small"]
        verdict = "ok" if ratio >= 1.2 else "MISSED"
        out.append(f"  small       {ratio:5.2f}x best peer (need >= 1.2x, issue 18): {verdict}")
    for case in ("upload", "download"):
        if case in ours and ours[case].get("cpu") is not None:
            cpu = ours[case]["cpu"]
            out.append(f"  {case:<11} {cpu:5.2f} client CPU s/GiB (need <= 1.0, issue 18): "
                       f"{'ok' if cpu <= 1.0 else 'MISSED'}")
    if "upload" in ours:
        rss = ours["upload"]["rss_max_mib"]
        out.append(f"  upload peak RSS {rss:.0f} MiB (need <= 550): {'ok' if rss <= 550 else 'MISSED'}")
    return out


def draw_chart(output: Path, peer_python: str) -> None:
    png = output.with_suffix(".png")
    for python in (sys.executable, peer_python):
        if not os.path.exists(python):
            continue
        result = subprocess.run([python, "-c", CHART, str(output.with_suffix(".json")), str(png)],
                                capture_output=True, text=True)
        if result.returncode == 0:
            print(f"wrote {png}")
            return
    print(f"no chart: matplotlib not importable ({result.stderr.strip().splitlines()[-1:]})")


if __name__ == "__main__":
    sys.exit(main())
