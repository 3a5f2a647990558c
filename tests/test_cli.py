"""The ``aiojobstore`` command: copies round-trip bytes exactly, listings show what is there, errors are one line."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from aiojobstore import Job
from aiojobstore.cli import main, parse_size
from aiojobstore.sync import open_store

MiB = 1 << 20


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the command in-process; return (exit status, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def make_store(tmp_path: Path) -> str:
    locator = f"file:{tmp_path}/store"
    with open_store(locator) as store:
        store.initialize()
    return locator


def test_parse_size_units() -> None:
    assert parse_size("1048576") == MiB
    assert parse_size("64MiB") == 64 * MiB
    assert parse_size("64M") == 64 * MiB
    assert parse_size("2GiB") == 2 << 30
    assert parse_size("500MB") == 500_000_000
    with pytest.raises(Exception, match="invalid size"):
        parse_size("lots")


def test_cp_into_and_out_of_file_store_round_trips_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = os.urandom(3 * MiB + 17)
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    locator = make_store(tmp_path)

    code, out, err = run(capsys, "cp", str(source), f"{locator}::")
    assert code == 0, err
    file_id = out.strip()
    assert file_id.endswith("/data.bin")

    code, _, err = run(capsys, "cp", f"{locator}::{file_id}", str(tmp_path / "back.bin"))
    assert code == 0, err
    assert (tmp_path / "back.bin").read_bytes() == data

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _, err = run(capsys, "cp", f"{locator}::{file_id}", str(out_dir))
    assert code == 0, err
    assert (out_dir / "data.bin").read_bytes() == data


def test_cp_overwrites_an_existing_file_id_and_keeps_the_executable_bit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locator = make_store(tmp_path)
    script = tmp_path / "tool.sh"
    script.write_bytes(b"#!/bin/sh\necho one\n")
    script.chmod(0o755)
    _, out, _ = run(capsys, "cp", str(script), f"{locator}::")
    file_id = out.strip()
    script.write_bytes(b"#!/bin/sh\necho two\n")
    assert run(capsys, "cp", str(script), f"{locator}::{file_id}")[0] == 0
    target = tmp_path / "tool.out"
    assert run(capsys, "cp", f"{locator}::{file_id}", str(target))[0] == 0
    assert target.read_bytes() == b"#!/bin/sh\necho two\n"
    assert os.access(target, os.X_OK)
    code, out, _ = run(capsys, "stat", "--json", f"{locator}::{file_id}")
    assert code == 0
    assert json.loads(out)["executable"] is True


def test_cp_shared_file_and_stdin_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    locator = make_store(tmp_path)
    payload = b"shared payload\n" * 1000
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(payload)))
    code, out, err = run(capsys, "cp", "-", f"{locator}::shared/config.txt")
    assert code == 0, err
    assert out.strip() == "shared/config.txt"
    target = tmp_path / "config.txt"
    assert run(capsys, "cp", f"{locator}::shared/config.txt", str(target))[0] == 0
    assert target.read_bytes() == payload
    with open_store(locator) as store:
        store.resume()
        with store.read_shared_file_stream("config.txt") as reader:
            assert reader.read() == payload


def test_cp_into_a_missing_store_needs_create(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "a.txt"
    source.write_bytes(b"abc")
    locator = f"file:{tmp_path}/new-store"
    code, out, err = run(capsys, "cp", str(source), f"{locator}::")
    assert code == 1
    assert out == ""
    assert err.startswith("aiojobstore: error: no job store at")
    assert "init" in err
    assert not (tmp_path / "new-store").exists()
    code, out, err = run(capsys, "cp", "--create", str(source), f"{locator}::")
    assert code == 0, err
    assert out.strip().endswith("/a.txt")


def test_recursive_cp_of_a_directory_round_trips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "tree"
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(MiB + 3), "sub/deeper/c": b"", "sub/d.txt": b"delta"}
    for relative, content in files.items():
        (tree / relative).parent.mkdir(parents=True, exist_ok=True)
        (tree / relative).write_bytes(content)
    locator = make_store(tmp_path)

    code, out, _ = run(capsys, "cp", str(tree), f"{locator}::")
    assert code == 1  # a directory without -r

    code, out, err = run(capsys, "cp", "-r", str(tree), f"{locator}::")
    assert code == 0, err
    mapping = dict(line.split("\t")[::-1] for line in out.strip().splitlines())
    assert set(mapping) == set(files)

    out_dir = tmp_path / "copy"
    code, out, err = run(capsys, "cp", "-r", f"{locator}::", str(out_dir))
    assert code == 0, err
    for relative, content in files.items():
        assert (out_dir / mapping[relative]).read_bytes() == content


def test_ls_stat_and_status_show_jobs_files_and_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locator = make_store(tmp_path)
    with open_store(locator) as store:
        store.resume()
        root = store.create_root_job(Job("root-job", {"k": 1}))
        worker = store.create_job(Job("worker-job", {"k": 2}))
        with store.write_file_stream(worker.id, cleanup=True, basename="out.dat") as (f, file_id):
            f.write(b"x" * 12345)
        with store.write_shared_file_stream("notes") as f:
            f.write(b"hello")
        store.write_logs("one")
        store.write_logs("two")

    code, out, err = run(capsys, "ls", locator)
    assert code == 0, err
    assert "jobs (2):" in out
    assert f"{root.id}  v1  root-job  (root)" in out
    assert "worker-job" in out
    assert "files (1, 12345 bytes):" in out
    assert re.search(rf"12345  \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d  {re.escape(file_id)}\n", out)
    assert "shared (1):" in out and "shared/notes" in out

    code, out, _ = run(capsys, "ls", "--files", f"{locator}::n/")  # a prefix no file has
    assert code == 0
    assert "files (0, 0 bytes):" in out and "jobs" not in out

    code, out, _ = run(capsys, "stat", f"{locator}::{file_id}")
    assert code == 0
    assert "size" in out and "12345" in out
    assert f"cleanup_job  {worker.id}" in out

    code, out, _ = run(capsys, "stat", "--json", f"{locator}::{worker.id}")
    assert code == 0
    details = json.loads(out)
    assert details["name"] == "worker-job"
    assert details["data"] == {"k": 2}

    code, out, _ = run(capsys, "status", "--json", locator)
    assert code == 0
    status = json.loads(out)
    assert (status["jobs"], status["files"], status["file_bytes"]) == (2, 1, 12345)
    assert (status["shared_files"], status["unread_logs"]) == (1, 2)
    assert status["root_job"].startswith(root.id)

    code, out, _ = run(capsys, "status", locator)
    assert code == 0
    assert "unread logs   2" in out


def test_rm_deletes_files_shared_files_and_jobs_with_their_cleanup_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locator = make_store(tmp_path)
    with open_store(locator) as store:
        store.resume()
        job = store.create_job(Job("j"))
        with store.write_file_stream(job.id, cleanup=True) as (f, cleanup_id):
            f.write(b"c")
        with store.write_file_stream() as (f, plain_id):
            f.write(b"p")
        with store.write_shared_file_stream("s") as f:
            f.write(b"s")

    assert run(capsys, "rm", f"{locator}::{plain_id}", f"{locator}::shared/s")[0] == 0
    code, _, err = run(capsys, "rm", f"{locator}::{plain_id}")
    assert code == 1
    assert err.startswith("aiojobstore: error: no file")
    assert run(capsys, "rm", "-f", f"{locator}::{plain_id}")[0] == 0
    assert run(capsys, "rm", f"{locator}::{job.id}")[0] == 0

    with open_store(locator) as store:
        store.resume()
        assert not store.file_exists(plain_id)
        assert not store.shared_file_exists("s")
        assert not store.job_exists(job.id)
        assert not store.file_exists(cleanup_id)
    code, _, err = run(capsys, "stat", f"{locator}::{plain_id}")
    assert code == 1 and "no file" in err


def test_destroy_without_yes_refuses_when_stdin_gives_no_answer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    locator = make_store(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = run(capsys, "destroy", locator)
    assert code == 1
    assert "not destroying" in err and "--yes" in err
    assert (tmp_path / "store" / "config.json").exists()

    monkeypatch.setattr(sys, "stdin", io.StringIO("no\n"))
    assert run(capsys, "destroy", locator)[0] == 1
    assert (tmp_path / "store").exists()

    monkeypatch.setattr(sys, "stdin", io.StringIO("yes\n"))
    code, out, _ = run(capsys, "destroy", locator)
    assert code == 0
    assert "destroyed" in out
    assert not (tmp_path / "store").exists()


def test_destroy_with_yes_and_refusal_on_a_directory_that_is_not_a_store(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locator = make_store(tmp_path)
    assert run(capsys, "destroy", "--yes", locator)[0] == 0
    assert not (tmp_path / "store").exists()

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    code, _, err = run(capsys, "destroy", "--yes", str(precious))
    assert code == 1
    assert "holds no job store" in err
    assert (precious / "thesis.tex").exists()


def test_cp_to_a_memory_store_within_one_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locator = f"memory:cli-{uuid.uuid4().hex}"
    source = tmp_path / "m.bin"
    source.write_bytes(os.urandom(100_000))
    code, out, _ = run(capsys, "cp", "--create", str(source), f"{locator}::")
    assert code == 0
    back = tmp_path / "m.out"
    assert run(capsys, "cp", f"{locator}::{out.strip()}", str(back))[0] == 0
    assert back.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("argv, message", [
    (["ls", "bogus://x"], "invalid job store locator 'bogus://x'"),
    (["cp", "/nonexistent/file.bin", "memory:x::"], "No such file or directory"),
    (["stat", "memory:never-made::n/00/x/y"], "no job store at 'memory:never-made'"),
    (["init", "/tmp/x", "--endpoint-url", "http://127.0.0.1:9"], "--endpoint-url is for s3:// locations"),
    (["cp", "-r", "memory:x::", "-"], "needs a destination directory"),
])
def test_errors_are_one_line_without_traceback(argv: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "aiojobstore.cli", *argv], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aiojobstore: error: ")
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("aiojobstore")
    if not script.exists():
        pytest.skip("the aiojobstore console script is not installed next to this interpreter")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("aiojobstore ")


def test_cp_imports_and_exports_file_urls_and_copies_between_stores(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = os.urandom(MiB + 5)
    source = tmp_path / "in.bin"
    source.write_bytes(data)
    locator = make_store(tmp_path)
    code, out, err = run(capsys, "cp", source.as_uri(), f"{locator}::")
    assert code == 0, err
    file_id = out.strip()
    exported = tmp_path / "exported.bin"
    assert run(capsys, "cp", f"{locator}::{file_id}", exported.as_uri())[0] == 0
    assert exported.read_bytes() == data

    other = f"memory:cli-{uuid.uuid4().hex}"
    code, out, err = run(capsys, "cp", "--create", f"{locator}::{file_id}", f"{other}::")
    assert code == 0, err
    copied_id = out.strip()
    assert copied_id != file_id and copied_id.endswith("/in.bin")
    back = tmp_path / "back.bin"
    assert run(capsys, "cp", f"{other}::{copied_id}", str(back))[0] == 0
    assert back.read_bytes() == data


def _debris(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".ajs-tmp")]


@pytest.mark.parametrize("sig, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_during_cp_leaves_no_temp_file(tmp_path: Path, sig: str, status: int) -> None:
    """SIGTERM (what timeout, kill, docker stop and batch schedulers send) is handled like SIGINT: the write in
    flight is cancelled and rolled back, nothing is left in the store."""
    import signal
    import time

    locator = make_store(tmp_path)
    child = subprocess.Popen([sys.executable, "-m", "aiojobstore.cli", "cp", "-", f"{locator}::"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdin is not None
    try:
        deadline = time.monotonic() + 60
        while not _debris(tmp_path / "store"):  # the write stream's temp file: the copy is under way
            child.stdin.write(b"x" * MiB)
            child.stdin.flush()
            assert time.monotonic() < deadline, "the copy never started writing"
        child.send_signal(getattr(signal, sig))
        child.wait(timeout=60)  # stdin stays open: the copy can only end by the signal, never by an EOF
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == status, err
    assert _debris(tmp_path / "store") == []
    with open_store(locator) as store:
        store.resume()
        assert store.summary()["files"] == 0


def test_clean_reports_what_it_reclaimed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locator = make_store(tmp_path)
    claims = tmp_path / "store" / "logs" / "claims"
    claims.mkdir(parents=True)
    (claims / "00000000000000000001-dead").write_bytes(b'{"expires": 0}')  # a dead reader's, its log gone
    code, out, err = run(capsys, "clean", locator, "--older-than", "1h")
    assert code == 0, err
    assert out.startswith("reclaimed 0 items") and "older than 1h" in out
    code, out, err = run(capsys, "clean", locator, "--older-than", "0", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["kinds"] == {"log-claim": 1} and report["items"] == 1
    assert not claims.exists() or list(claims.iterdir()) == []
