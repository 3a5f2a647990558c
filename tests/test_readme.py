"""The README's code examples run as written (endpoints and names swapped for the test servers')."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python_block_after(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no python example under {heading!r}"
    return match.group(1)


def test_object_store_example_runs_against_moto(moto_server, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = _python_block_after("Object store")
    bucket = f"readme-{uuid.uuid4().hex[:12]}"
    code = (code.replace("http://127.0.0.1:9000", moto_server.endpoint_url)
                .replace('"minioadmin"', '"testing"').replace("my-bucket", bucket))
    assert moto_server.endpoint_url in code and bucket in code
    (tmp_path / "results" / "sub").mkdir(parents=True)
    (tmp_path / "results" / "table.csv").write_text("a,b\n1,2\n")
    (tmp_path / "results" / "sub" / "more.bin").write_bytes(b"\0" * 1000)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "table.csv").read_text() == "a,b\n1,2\n"


def test_job_store_examples_run_on_a_file_store(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "run1"
    async_code = _python_block_after("Job store, async").replace("/scratch/run1", str(store))
    exec(compile(async_code, "README.md", "exec"), {"__name__": "__readme__"})
    (tmp_path / "input.fastq").write_bytes(b"@r1\nACGT\n+\n!!!!\n")
    monkeypatch.chdir(tmp_path)
    blocking = _python_block_after("Job store, blocking").replace("/scratch/run1", str(store))
    exec(compile(blocking, "README.md", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "copy.fastq").read_bytes() == (tmp_path / "input.fastq").read_bytes()
