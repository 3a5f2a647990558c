#!/usr/bin/env python3
"""GCS benchmark: aiojobstore's GCS backend against gcsfs, in the same run, on the same server.

    python benchmarks/bench_gcs.py [--size-mib 256] [--small 500] [--repeat 3] [--emulator-host URL]
                                   [--peer-python /tmp/gcsfs-venv/bin/python]

Without ``--emulator-host`` a gcp-storage-emulator (in memory, through the tests' launcher
``tests/servers/gcs_emulator.py``) is started on a free loopback port and stopped at the end. Each library
runs every case in its own subprocess, so peak RSS (``VmHWM``) is that library's alone; the emulator is wiped
between cases. gcsfs may need an aiohttp that conflicts with the project
venv: install it into its own venv and pass that interpreter with ``--peer-python`` (the default is
``/tmp/gcsfs-venv/bin/python`` when it exists).

Cases: upload a ``--size-mib`` file, download it, ``--small`` x 4 KiB put+get; plus, for aiojobstore only,
composed parallel parts versus one sequential chunked resumable upload (the choice the backend makes).

THE FIGURES MEASURE THE EMULATOR, NOT GCS: gcp-storage-emulator is a single-threaded Python server that
holds every object in memory and copies it on compose, sharing the machine's cores with the client. Use them to
compare clients with each other on this machine, never as GCS throughput.

Results: a table on stdout and JSON in ``benchmarks/results/gcs.json``. MB/s = 10^6 bytes per second.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
MiB = 1 << 20

# ----------------------------------------------------------------------------------------------- workers
# Each worker is run as `python -c WORKER <json args>` and prints one JSON line: {"seconds": .., "rss_mib": ..}.

OURS_WORKER = r'''
import json, os, sys, time, anyio
from aiojobstore.locator import open_backend
from aiojobstore.transfer import TransferConfig
args = json.loads(sys.argv[1])

async def main():
    transfer = TransferConfig(part_size=args["part_size"], max_concurrency=args["concurrency"])
    backend = open_backend(f"gs://{args['bucket']}/bench", transfer=transfer, emulator_host=args["host"])
    case = args["case"]
    try:
        started = time.perf_counter()
        if case == "upload":
            await backend.upload_file(args["path"], "big")
        elif case == "download":
            await backend.download_file("big", args["path"])
        elif case == "small":
            data = os.urandom(4096)
            for i in range(args["small"]):
                await backend.put_bytes(f"small/{i}", data)
                assert await backend.get_bytes(f"small/{i}") == data
        elif case == "resumable":
            await resumable_upload(backend, args["path"], args["part_size"])
        seconds = time.perf_counter() - started
    finally:
        await backend.close()
    rss = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
    print(json.dumps({"seconds": seconds, "rss_mib": rss}))

async def resumable_upload(backend, path, chunk):
    """One chunked resumable upload session: the chunks must go in order, one request at a time."""
    from urllib.parse import quote
    session = backend._session_now()
    size = os.path.getsize(path)
    url = f"{backend.api_root}/upload/storage/v1/b/{quote(backend.bucket, safe='')}/o"
    async with session.post(url, params={"uploadType": "resumable", "name": "bench/resumable"},
                            json={"contentType": "application/octet-stream"}) as response:
        location = response.headers["Location"]
    with open(path, "rb") as handle:
        offset = 0
        while offset < size:
            data = await anyio.to_thread.run_sync(handle.read, chunk)
            last = offset + len(data) >= size
            headers = {"Content-Range": f"bytes {offset}-{offset + len(data) - 1}/{size if last else '*'}"}
            async with session.put(location, data=data, headers=headers) as response:
                assert response.status in ((200, 201) if last else (308,)), response.status
            offset += len(data)

anyio.run(main)
'''

GCSFS_WORKER = r'''
import json, os, sys, time
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # else each bucket costs a 60 s gRPC probe
import gcsfs
args = json.loads(sys.argv[1])
fs = gcsfs.GCSFileSystem(endpoint_url=args["host"], token="anon", project="test")
case = args["case"]
base = f"{args['bucket']}/bench"
started = time.perf_counter()
if case == "upload":
    fs.put_file(args["path"], f"{base}/big")
elif case == "download":
    fs.get_file(f"{base}/big", args["path"])
elif case == "small":
    data = os.urandom(4096)
    for i in range(args["small"]):
        fs.pipe_file(f"{base}/small/{i}", data)
        assert fs.cat_file(f"{base}/small/{i}") == data
seconds = time.perf_counter() - started
rss = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
print(json.dumps({"seconds": seconds, "rss_mib": rss}))
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def start_emulator() -> tuple[subprocess.Popen, str]:
    """The tests' launcher (``tests/servers/gcs_emulator.py``): the emulator with a listen backlog deep enough for
    a store's bursts of connections, which stock ``gcp-storage-emulator start`` (backlog 5) stalls on."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, str(HERE.parent / "tests" / "servers" / "gcs_emulator.py"),
                                "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            http("GET", url + "/")
            return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("gcp-storage-emulator did not start")


def run_worker(python: str, code: str, args: dict) -> dict:
    result = subprocess.run([python, "-c", code, json.dumps(args)], capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"worker failed ({args['case']}):\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--part-mib", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--emulator-host", default=None)
    default_peer = "/tmp/gcsfs-venv/bin/python" if os.path.exists("/tmp/gcsfs-venv/bin/python") else sys.executable
    parser.add_argument("--peer-python", default=default_peer, help="an interpreter that can import gcsfs")
    parser.add_argument("--output", default=str(HERE / "results" / "gcs.json"))
    options = parser.parse_args()

    process = None
    host = options.emulator_host
    if host is None:
        process, host = start_emulator()
    workdir = Path(tempfile.mkdtemp(prefix="bench-gcs-"))
    source = workdir / "source.bin"
    with open(source, "wb") as handle:
        block = os.urandom(MiB)
        for _ in range(options.size_mib):
            handle.write(block)
    size = options.size_mib * MiB
    libraries = {"aiojobstore": (sys.executable, OURS_WORKER), "gcsfs": (options.peer_python, GCSFS_WORKER)}
    results: dict[str, dict[str, list[dict]]] = {name: {} for name in libraries}
    results["aiojobstore"]["resumable"] = []
    try:
        for _ in range(options.repeat):
            for name, (python, code) in libraries.items():
                bucket = f"bench-{name}-{os.getpid()}".lower()
                http("GET", host + "/wipe")
                http("POST", f"{host}/storage/v1/b?project=test", json.dumps({"name": bucket}).encode())
                common = {"host": host, "bucket": bucket, "part_size": options.part_mib * MiB,
                          "concurrency": options.concurrency, "small": options.small}
                for case, path in (("upload", source), ("download", workdir / f"down-{name}.bin"), ("small", None)):
                    if case == "small":
                        http("GET", host + "/wipe")
                        http("POST", f"{host}/storage/v1/b?project=test", json.dumps({"name": bucket}).encode())
                    figures = run_worker(python, code, {**common, "case": case, "path": str(path)})
                    results[name].setdefault(case, []).append(figures)
                    print(f"  {name:12} {case:9} {figures['seconds']:8.2f}s  rss {figures['rss_mib']:7.1f} MiB",
                          flush=True)
                if name == "aiojobstore":
                    http("GET", host + "/wipe")
                    http("POST", f"{host}/storage/v1/b?project=test", json.dumps({"name": bucket}).encode())
                    figures = run_worker(python, code, {**common, "case": "resumable", "path": str(source)})
                    results[name]["resumable"].append(figures)
                    print(f"  {name:12} resumable {figures['seconds']:8.2f}s  rss {figures['rss_mib']:7.1f} MiB",
                          flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if process is not None:
            process.terminate()
            process.wait(timeout=10)

    def summary(runs: list[dict], nbytes: int | None) -> dict:
        seconds = statistics.median(r["seconds"] for r in runs)
        out = {"median_seconds": round(seconds, 3), "peak_rss_mib": round(max(r["rss_mib"] for r in runs), 1),
               "runs": runs}
        if nbytes:
            out["MBps"] = round(nbytes / seconds / 1e6, 1)
        else:
            out["ops_per_s"] = round(2 * options.small / seconds, 1)
        return out

    table = {name: {case: summary(runs, None if case == "small" else size) for case, runs in cases.items()}
             for name, cases in results.items()}
    print("\nGCS on gcp-storage-emulator (loopback) -- these figures measure the EMULATOR, not GCS")
    print(f"{options.size_mib} MiB file, {options.part_mib} MiB parts, {options.concurrency} in flight, "
          f"{options.small} x 4 KiB put+get, median of {options.repeat}\n")
    print("| case | aiojobstore | gcsfs |")
    print("|---|---|---|")
    for case, label in (("upload", "upload file, MB/s (peak RSS MiB)"), ("download", "download file, MB/s (RSS)"),
                        ("small", "4 KiB put+get, ops/s")):
        cells = []
        for name in libraries:
            entry = table[name][case]
            cells.append(f"{entry['ops_per_s']}" if case == "small" else f"{entry['MBps']} ({entry['peak_rss_mib']})")
        print(f"| {label} | {' | '.join(cells)} |")
    ours = table["aiojobstore"]
    print(f"\ncomposed parallel parts {ours['upload']['MBps']} MB/s vs sequential chunked resumable "
          f"{ours['resumable']['MBps']} MB/s (aiojobstore, same part size)")
    Path(options.output).parent.mkdir(parents=True, exist_ok=True)
    document = {"note": "gcp-storage-emulator on loopback: figures measure the emulator, not GCS",
                "size_mib": options.size_mib, "part_mib": options.part_mib, "concurrency": options.concurrency,
                "small": options.small, "repeat": options.repeat, "peer_python": options.peer_python,
                "results": table,
                "compose_vs_resumable": {"compose_MBps": ours["upload"]["MBps"],
                                         "resumable_MBps": ours["resumable"]["MBps"]}}
    Path(options.output).write_text(json.dumps(document, indent=1))
    print(f"JSON written to {options.output}")


if __name__ == "__main__":
    main()
