"""The main job (``aiojobstore demo`` / examples/pipeline.py) and examples/legacy_sync.py, on small sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from aiojobstore import demo
from aiojobstore.cli import main
from aiojobstore.sync import open_store

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_demo(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    code = main(["demo", "--json", "--no-progress", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else {}), err


def test_demo_on_the_default_file_store_verifies_and_cleans_up(capsys: pytest.CaptureFixture[str]) -> None:
    code, result, err = run_demo(capsys, "--total-size", "32MiB")
    assert code == 0, err
    assert result["verified"] is True
    assert result["jobs"] == 2 * demo.DEFAULT_SHARDS + 2
    assert result["files"] == 2 * demo.DEFAULT_SHARDS + 1
    assert result["bytes_written"] == 32 * MiB
    assert result["bytes_read"] == 32 * MiB
    assert result["logs_read"] == 2 * demo.DEFAULT_SHARDS + 1
    assert result["peak_rss_mib"] > 0
    assert result["store"].startswith("file:")
    assert result["kept"] is False
    assert not os.path.exists(result["store"][len("file:") :])


def test_demo_on_a_memory_store(capsys: pytest.CaptureFixture[str]) -> None:
    code, result, err = run_demo(capsys, "--total-size", "8MiB", "--shards", "3", "--store",
                                 f"memory:demo-{uuid.uuid4().hex}")
    assert code == 0, err
    assert result["jobs"] == 8
    # 4 MiB per stage does not divide into 3 shards evenly: every byte is still written once and read once
    assert result["bytes_written"] == result["bytes_read"] == 8 * MiB


def test_demo_keep_leaves_the_dag_and_files_in_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locator = f"file:{tmp_path}/kept"
    code, result, err = run_demo(capsys, "--total-size", "4MiB", "--shards", "2", "--store", locator, "--keep")
    assert code == 0, err
    assert result["kept"] is True
    with open_store(locator) as store:
        store.resume()
        root = store.load_root_job()
        assert root.data["state"] == "done"
        jobs = {job.name: job for job in store.jobs()}
        assert set(jobs) == {"pipeline", "generate-000", "generate-001", "transform-000", "transform-001", "merge"}
        assert all(job.data["state"] == "done" for job in jobs.values())
        assert jobs["transform-001"].data["needs"] == [jobs["generate-001"].id]
        for name in ("generate-000", "transform-001"):
            file_id = jobs[name].data["outputs"]["file_id"]
            assert store.get_file_size(file_id) == MiB
        with store.read_shared_file_stream("report.json", encoding="utf-8") as report:
            assert json.load(report)["bytes"] == 2 * MiB
        counts = store.summary()
        assert (counts["jobs"], counts["files"], counts["unread_logs"]) == (6, 4, 0)


def test_demo_fails_loudly_when_a_checksum_does_not_match(capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "INVERSE", demo.FORWARD)  # the merge stage can no longer undo the transform
    code, _, err = run_demo(capsys, "--total-size", "2MiB", "--shards", "2")
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith("aiojobstore: error: merge:")
    assert "expected" in lines[-1]


def test_pipeline_script_runs_the_demo(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(EXAMPLES / "pipeline.py"), "--total-size", "4MiB", "--shards", "4",
                             "--store", f"file:{tmp_path}/pipe"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "all checksums verified" in result.stdout
    assert "throughput" in result.stdout and "peak RSS" in result.stdout
    assert not (tmp_path / "pipe").exists()  # destroyed without --keep


@pytest.mark.parametrize("store", ["default", "memory"])
def test_legacy_sync_example(store: str, tmp_path: Path) -> None:
    argv = [sys.executable, str(EXAMPLES / "legacy_sync.py"), "--total-size", "6MiB", "--shards", "3"]
    if store == "memory":
        argv += ["--store", "memory:legacy"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "all checksums verified" in result.stdout
    assert "bytes_verified  3145728" in result.stdout
    assert "jobs            8" in result.stdout


async def test_run_demo_raises_the_integrity_error_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiojobstore.errors import IntegrityError

    monkeypatch.setattr(demo, "INVERSE", demo.FORWARD)
    with pytest.raises(IntegrityError, match=r"expected \d+ bytes"):
        await demo.run_demo(demo.DemoConfig(total_size=2 * MiB, shards=2, progress=False))
