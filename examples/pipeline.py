#!/usr/bin/env python3
"""The main job: an async workflow run over a job store, with 2 GiB of intermediate files by default.

A DAG of jobs (generate -> transform -> merge) is recorded in the store; every stage writes large files that
the next stage reads back and verifies by checksum, with many transfers in flight on one event loop, a progress
bar, and a summary (jobs, files, bytes, throughput, peak RSS) at the end. The pipeline itself lives in
``aiojobstore/demo.py``; this script is ``aiojobstore demo`` under another name and takes the same options:

    python examples/pipeline.py                          # 2 GiB on a fresh file: store in a temp dir
    python examples/pipeline.py --total-size 64MiB       # smaller
    python examples/pipeline.py --store s3://bucket/run1 --endpoint-url http://127.0.0.1:9000
    python examples/pipeline.py --help
"""

import sys

from aiojobstore.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
