"""A Toil workflow on aiojobstore: fan-out and fan-in over large intermediate files.

    python examples/toil_workflow.py                              # aiojobstore:file: in a temp dir
    python examples/toil_workflow.py --jobStore aiojobstore:s3://bucket/run --width 4 --size-mib 64
    python examples/toil_workflow.py --jobStore file:/tmp/run     # Toil's own FileJobStore, for comparison

The DAG: ``make_input`` writes one file of ``--size-mib`` MiB; ``width`` ``transform`` jobs each read it through
Toil's file store and write their own transformed copy; ``combine`` reads every copy back, checks each against
the input's digest and writes a summary. It runs once with Toil's ``CachingFileStore`` and once with its
``NonCachingFileStore`` (``--caching both``, the default), on Toil's single-machine batch system: every job runs in
a real ``_toil_worker`` subprocess, which re-opens the job store from its ``aiojobstore:`` locator through the
startup hook that ``pip install aiojobstore[toil]`` installs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tempfile
import time

from toil.common import Toil
from toil.job import Job

CHUNK = 1 << 20


def _shift(amount: int) -> bytes:
    return bytes((x + amount) % 256 for x in range(256))


def make_input(job: Job, size_mib: int, seed: int) -> tuple[str, str]:
    """Write ``size_mib`` MiB of pseudo-random bytes to the file store; return (file ID, sha256)."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    block = rng.randbytes(CHUNK)
    with job.fileStore.writeGlobalFileStream() as (out, file_id):
        for i in range(size_mib):
            chunk = block[i % 251:] + block[: i % 251]  # cheap, but every MiB differs
            digest.update(chunk)
            out.write(chunk)
    job.log(f"make_input: {size_mib} MiB, sha256 {digest.hexdigest()[:12]}")
    return file_id, digest.hexdigest()


def transform(job: Job, source: tuple[str, str], index: int) -> tuple[str, int]:
    """Read the input from the file store (a local copy, possibly cached), shift every byte by ``index + 1`` and
    write the result back as a new file; return (file ID, index)."""
    file_id, _ = source
    local = job.fileStore.readGlobalFile(file_id)
    table = _shift(index + 1)
    out_path = os.path.join(job.fileStore.getLocalTempDir(), f"part-{index}.bin")
    with open(local, "rb") as src, open(out_path, "wb") as dst:
        while chunk := src.read(CHUNK):
            dst.write(chunk.translate(table))
    return job.fileStore.writeGlobalFile(out_path), index


def combine(job: Job, source: tuple[str, str], parts: list[tuple[str, int]]) -> dict[str, object]:
    """Read every part back (as a stream), undo its shift, check it against the input's digest; write a summary."""
    _, expected = source
    checked = 0
    for part_id, index in parts:
        table = _shift(-(index + 1))
        digest = hashlib.sha256()
        with job.fileStore.readGlobalFileStream(part_id) as stream:
            while chunk := stream.read(CHUNK):
                digest.update(chunk.translate(table))
        if digest.hexdigest() != expected:
            raise RuntimeError(f"part {index} ({part_id}) does not match the input")
        checked += 1
        job.fileStore.deleteGlobalFile(part_id)
    summary = f"{checked} parts verified against sha256 {expected}\n".encode()
    with job.fileStore.writeGlobalFileStream() as (out, summary_id):
        out.write(summary)
    return {"parts": checked, "sha256": expected, "summary": summary_id}


def fan_out(job: Job, source: tuple[str, str], width: int) -> object:
    """Children: one transform per part; follow-on: combine, fed with the children's promises."""
    parts = [job.addChildJobFn(transform, source, i, disk="1G").rv() for i in range(width)]
    return job.addFollowOnJobFn(combine, source, parts, disk="1G").rv()


def pipeline(job: Job, size_mib: int, width: int, seed: int) -> object:
    """Child: make_input; follow-on: the fan-out (whose result, the combine's, is the workflow's)."""
    source = job.addChildJobFn(make_input, size_mib, seed, disk="1G").rv()
    return job.addFollowOnJobFn(fan_out, source, width).rv()


def build(size_mib: int, width: int, seed: int = 7) -> Job:
    """The workflow's root job."""
    return Job.wrapJobFn(pipeline, size_mib, width, seed)


def run(locator: str, *, caching: bool, size_mib: int, width: int, max_cores: int = 2,
        work_dir: str | None = None, log_level: str = "WARNING") -> dict[str, object]:
    """Run the workflow once on ``locator`` with the caching or non-caching file store; return its result and
    wall time. The job store is deleted afterwards."""
    options = Job.Runner.getDefaultOptions(locator)
    options.batchSystem = "single_machine"
    options.caching = caching
    options.maxCores = max_cores
    options.clean = "always"
    options.logLevel = log_level
    options.retryCount = 0
    if work_dir:
        options.workDir = work_dir
    root = build(size_mib, width)
    started = time.perf_counter()
    with Toil(options) as toil:
        result = toil.start(root)
    result = toil_result(result)
    return {**result, "seconds": time.perf_counter() - started, "caching": caching, "locator": locator}


def toil_result(result: object) -> dict[str, object]:
    return dict(result) if isinstance(result, dict) else {"result": result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobStore", help="a Toil locator (default: aiojobstore:file: in a new temp dir)")
    parser.add_argument("--width", type=int, default=4, help="transform jobs (default 4)")
    parser.add_argument("--size-mib", type=int, default=64, help="size of the input and of every part (MiB)")
    parser.add_argument("--caching", choices=("both", "true", "false"), default="both")
    parser.add_argument("--max-cores", type=int, default=2)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    scratch = None
    base = args.jobStore
    if base is None:
        scratch = tempfile.mkdtemp(prefix="toil-aiojobstore-")
        base = f"aiojobstore:file:{scratch}/run"
    modes = {"both": (True, False), "true": (True,), "false": (False,)}[args.caching]
    for caching in modes:
        locator = f"{base}-{'caching' if caching else 'noncaching'}"
        outcome = run(locator, caching=caching, size_mib=args.size_mib, width=args.width,
                      max_cores=args.max_cores, log_level=args.log_level)
        store = "CachingFileStore" if caching else "NonCachingFileStore"
        print(f"{store:20} {locator}: {outcome['parts']} parts of {args.size_mib} MiB verified "
              f"in {outcome['seconds']:.1f} s")
    if scratch is not None and not os.listdir(scratch):
        os.rmdir(scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
