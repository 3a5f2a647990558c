"""Toil on its own job stores versus Toil on aiojobstore, side by side in one run: examples/toil_workflow.py (a
fan-out/fan-in DAG over large files) with Toil's single-machine batch system and real ``_toil_worker``
processes, with the caching and the non-caching file store.

    python benchmarks/bench_toil.py                         # file: only: FileJobStore vs aiojobstore:file:
    eval "$(/work/shared/servers/ceph-rgw-start.sh)"        # an S3 server (or any: --endpoint-url ...)
    python benchmarks/bench_toil.py --s3 --endpoint-url "$AWS_ENDPOINT_URL" --ceph-asok DIR/run/client.rgw.a.asok

Needs a venv with ``toil[aws]==9.6.*`` (boto3, for Toil's AWSJobStore) and this project. Toil's AWSJobStore takes
no endpoint option, but it builds its clients with plain boto3, which reads ``AWS_ENDPOINT_URL``: that is how it
is pointed at a loopback server here. Every number is for a whole workflow (leader start to job-store deletion):
wall time; peak RSS of the leader and of the largest worker (``ru_maxrss`` written at exit by the probe in
benchmarks/toil_probe/); bytes read and written by all processes (``rchar``/``wchar``, local I/O plus pipes); on
S3 the bytes and requests the server saw (Ceph RGW's ``perf dump`` counters, when ``--ceph-asok`` is given).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "toil_workflow.py"
PROBE = Path(__file__).resolve().with_name("toil_probe")


def rgw_counters(asok: str | None) -> dict[str, int]:
    if not asok:
        return {}
    out = subprocess.run(["ceph", "--admin-daemon", asok, "perf", "dump"], capture_output=True, text=True,
                         check=True).stdout
    rgw = json.loads(out)["rgw"]
    return {k: int(rgw.get(k, 0)) for k in ("req", "get", "get_b", "put", "put_b")}


def run_case(locator: str, caching: bool, args: argparse.Namespace, env: dict[str, str]) -> dict[str, object]:
    record = tempfile.NamedTemporaryFile(prefix="toil-bench-", suffix=".jsonl", delete=False)  # noqa: SIM115
    record.close()
    os.unlink(record.name)
    case_env = {**env, "TOIL_BENCH_RECORD": record.name,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(PROBE), env.get("PYTHONPATH")]))}
    before = rgw_counters(args.ceph_asok)
    command = [sys.executable, str(EXAMPLE), "--jobStore", locator, "--caching", "true" if caching else "false",
               "--size-mib", str(args.size_mib), "--width", str(args.width), "--max-cores", str(args.max_cores)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=case_env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}")
    after = rgw_counters(args.ceph_asok)
    entries = [json.loads(line) for line in Path(record.name).read_text().splitlines()]
    os.unlink(record.name)
    leader = [e for e in entries if e["argv0"] == EXAMPLE.name]
    workers = [e for e in entries if e["argv0"] == "_toil_worker"]
    result = {
        "seconds": seconds,
        "leader_rss_mib": max(e["maxrss_kib"] for e in leader) / 1024 if leader else None,
        "worker_rss_mib": max(e["maxrss_kib"] for e in workers) / 1024 if workers else None,
        "workers": len(workers),
        "read_mib": sum(e["rchar"] for e in entries) / 2**20,
        "written_mib": sum(e["wchar"] for e in entries) / 2**20,
    }
    if before:
        result.update({f"server_{k}": after[k] - before[k] for k in before})
        result["server_get_mib"] = result.pop("server_get_b") / 2**20
        result["server_put_mib"] = result.pop("server_put_b") / 2**20
    return result


def median_of(runs: list[dict[str, object]]) -> dict[str, object]:
    keys = runs[0].keys()
    return {k: statistics.median([r[k] for r in runs]) if isinstance(runs[0][k], (int, float)) else runs[0][k]
            for k in keys}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--max-cores", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (the median is reported)")
    parser.add_argument("--s3", action="store_true", help="also Toil's AWSJobStore vs aiojobstore:s3://")
    parser.add_argument("--no-file", action="store_true", help="skip the file: cases")
    parser.add_argument("--endpoint-url", default=os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"))
    parser.add_argument("--access-key", default=os.environ.get("AWS_ACCESS_KEY_ID", "minioadmin"))
    parser.add_argument("--secret-key", default=os.environ.get("AWS_SECRET_ACCESS_KEY", "minioadmin"))
    parser.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    parser.add_argument("--ceph-asok", help="RGW admin socket, for the server's byte and request counters; also "
                        "turns on the Ceph RGW 16 compatibility shim for Toil's AWSJobStore (toil_probe/)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "toil.json"))
    args = parser.parse_args(argv)

    scratch = tempfile.mkdtemp(prefix="toil-bench-")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "TOIL_SKIP_ONLINE": "true"}
    cases: list[tuple[str, str, str]] = []  # (backend, store, locator base)
    if not args.no_file:
        cases += [("file", "toil FileJobStore", f"file:{scratch}/fjs"),
                  ("file", "aiojobstore:file:", f"aiojobstore:file:{scratch}/ajs")]
    if args.s3:
        if args.ceph_asok:
            env["TOIL_BENCH_CEPH_COMPAT"] = "1"
        env.update(AWS_ENDPOINT_URL=args.endpoint_url, AWS_ACCESS_KEY_ID=args.access_key,
                   AWS_SECRET_ACCESS_KEY=args.secret_key, AWS_DEFAULT_REGION=args.region)
        cases += [("s3", "toil AWSJobStore", f"aws:{args.region}:tb{uuid.uuid4().hex[:10]}"),
                  ("s3", "aiojobstore:s3://", f"aiojobstore:s3://tb{uuid.uuid4().hex[:10]}/run")]
    results = []
    try:
        for caching in (True, False):
            for backend, store, base in cases:
                runs = []
                for attempt in range(args.repeat):
                    locator = f"{base}{attempt}"
                    print(f"running {store} caching={caching} ({locator}) ...", file=sys.stderr, flush=True)
                    runs.append(run_case(locator, caching, args, env))
                results.append({"backend": backend, "store": store, "caching": caching, **median_of(runs)})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    columns = [("backend", "{}"), ("store", "{}"), ("caching", "{}"), ("seconds", "{:.1f}"),
               ("leader_rss_mib", "{:.0f}"), ("worker_rss_mib", "{:.0f}"), ("read_mib", "{:.0f}"),
               ("written_mib", "{:.0f}"), ("server_get_mib", "{:.0f}"), ("server_put_mib", "{:.0f}"),
               ("server_req", "{}")]
    print("| " + " | ".join(name for name, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for row in results:
        print("| " + " | ".join(fmt.format(row[name]) if row.get(name) is not None else "-"
                                for name, fmt in columns) + " |")
    for caching in (True, False):
        for backend in ("file", "s3"):
            pair = [r for r in results if r["backend"] == backend and r["caching"] == caching]
            if len(pair) == 2:
                print(f"{backend} caching={caching}: aiojobstore is {pair[0]['seconds'] / pair[1]['seconds']:.2f}x "
                      f"as fast as Toil's store")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "workflow": {"size_mib": args.size_mib, "width": args.width, "max_cores": args.max_cores,
                     "repeat": args.repeat},
        "endpoint_url": args.endpoint_url if args.s3 else None,
        "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
