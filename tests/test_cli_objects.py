"""The ``aiojobstore`` command on object URLs (a real S3 server, moto, on 127.0.0.1) and the new users' fixes."""

from __future__ import annotations

import base64
import http.server
import io
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiojobstore import Job
from aiojobstore.cli import main
from aiojobstore.sync import open_object_store, open_store
from aiojobstore.transfer import crc32c, crc32c_to_b64
from tests.s3_servers import S3Server

MiB = 1 << 20
PARTS = ["--part-size", "5MiB"]  # multipart transfers on little data


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def s3(moto_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[str]]]:
    """A fresh bucket on moto, and the flags that reach it (credentials come from the environment)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_server.aws_access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_server.aws_secret_access_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", moto_server.region_name)
    bucket = f"ajs-cli-{uuid.uuid4().hex[:12]}"
    with open_object_store(f"s3://{bucket}", **moto_server.options()) as store:
        store.create()
    yield f"s3://{bucket}", ["--endpoint-url", moto_server.endpoint_url]


def objects(moto_server: S3Server, bucket_url: str) -> dict[str, bytes]:
    with open_object_store(bucket_url, **moto_server.options()) as store:
        return {info.key: store.get(info.key) for info in store.list("")}


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for relative, content in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)


# -------------------------------------------------------------------------------------------------------- cp


def test_cp_to_a_named_key_and_into_a_prefix_and_back(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      s3: tuple[str, list[str]], moto_server: S3Server) -> None:
    bucket, flags = s3
    flags = [*flags, *PARTS]
    data = os.urandom(12 * MiB + 7)  # three parts of 5 MiB
    (tmp_path / "a.bin").write_bytes(data)

    code, out, err = run(capsys, "cp", str(tmp_path / "a.bin"), f"{bucket}/dir/x.bin", *flags)
    assert code == 0, err
    assert out == f"upload: {tmp_path / 'a.bin'} to {bucket}/dir/x.bin (12.0 MiB)\n"
    code, out, err = run(capsys, "cp", str(tmp_path / "a.bin"), f"{bucket}/dir/", *flags)
    assert code == 0, err
    assert objects(moto_server, bucket) == {"dir/x.bin": data, "dir/a.bin": data}

    code, out, err = run(capsys, "cp", f"{bucket}/dir/x.bin", str(tmp_path / "back.bin"), *flags)
    assert code == 0, err
    assert out == f"download: {bucket}/dir/x.bin to {tmp_path / 'back.bin'} (12.0 MiB)\n"
    assert (tmp_path / "back.bin").read_bytes() == data
    (tmp_path / "into").mkdir()
    assert run(capsys, "cp", "-q", f"{bucket}/dir/x.bin", str(tmp_path / "into"), *flags)[1] == ""
    assert (tmp_path / "into" / "x.bin").read_bytes() == data


def test_cp_between_objects_in_one_bucket_and_across_buckets(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], s3: tuple[str, list[str]], moto_server: S3Server) -> None:
    bucket, flags = s3
    flags = [*flags, *PARTS]
    with open_object_store(bucket, **moto_server.options()) as store:
        store.put("src/k", b"payload")
    assert run(capsys, "cp", f"{bucket}/src/k", f"{bucket}/dst/", *flags)[0] == 0
    other = f"s3://ajs-cli-{uuid.uuid4().hex[:12]}"
    with open_object_store(other, **moto_server.options()) as store:
        store.create()
    code, out, err = run(capsys, "cp", f"{bucket}/src/k", f"{other}/copied", *flags)
    assert code == 0, err
    assert out.startswith(f"copy: {bucket}/src/k to {other}/copied")
    assert objects(moto_server, bucket)["dst/k"] == b"payload"
    assert objects(moto_server, other) == {"copied": b"payload"}
    memory = f"memory:cli-{uuid.uuid4().hex}"
    assert run(capsys, "cp", f"{bucket}/src/k", f"{memory}/m/k", *flags)[0] == 0
    assert run(capsys, "cp", f"{memory}/m/k", str(tmp_path / "m"))[0] == 0
    assert (tmp_path / "m").read_bytes() == b"payload"


def test_cp_recursive_keeps_the_relative_tree_both_ways(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], s3: tuple[str, list[str]], moto_server: S3Server) -> None:
    bucket, flags = s3
    flags = [*flags, *PARTS]
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(6 * MiB), "sub/deeper/c": b"", "sub/d.txt": b"delta"}
    write_tree(tmp_path / "tree", files)
    code, out, err = run(capsys, "cp", "-r", str(tmp_path / "tree"), f"{bucket}/prefix/", *flags)
    assert code == 0, err
    assert len(out.splitlines()) == len(files) and all(line.startswith("upload: ") for line in out.splitlines())
    assert objects(moto_server, bucket) == {f"prefix/{k}": v for k, v in files.items()}

    code, _, err = run(capsys, "cp", "-r", f"{bucket}/prefix", str(tmp_path / "down"), *flags)
    assert code == 0, err
    assert tree(tmp_path / "down") == files

    code, _, err = run(capsys, "cp", "-r", f"{bucket}/prefix/sub/", f"{bucket}/again/", *flags)
    assert code == 0, err
    assert {k: v for k, v in objects(moto_server, bucket).items() if k.startswith("again/")} == {
        f"again/{k[4:]}": v for k, v in files.items() if k.startswith("sub/")}


def test_cp_stdin_to_an_object_and_an_object_to_stdout(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], s3: tuple[str, list[str]], moto_server: S3Server,
        monkeypatch: pytest.MonkeyPatch) -> None:
    bucket, flags = s3
    flags = [*flags, *PARTS]
    payload = os.urandom(7 * MiB)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(payload)))
    code, _, err = run(capsys, "cp", "-", f"{bucket}/streamed", *flags)
    assert code == 0, err
    assert objects(moto_server, bucket) == {"streamed": payload}
    assert run(capsys, "cp", "-", f"{bucket}/dir/", *flags)[0] == 1  # stdin needs a key, not a prefix

    result = subprocess.run([sys.executable, "-m", "aiojobstore.cli", "cat", f"{bucket}/streamed", *flags],
                            capture_output=True, timeout=120, env=os.environ)
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload
    result = subprocess.run([sys.executable, "-m", "aiojobstore.cli", "cp", f"{bucket}/streamed", "-", *flags],
                            capture_output=True, timeout=120, env=os.environ)
    assert result.returncode == 0 and result.stdout == payload


def test_cp_between_a_job_store_and_objects(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           s3: tuple[str, list[str]], moto_server: S3Server) -> None:
    bucket, flags = s3
    flags = [*flags, *PARTS]
    locator = f"file:{tmp_path}/store"
    data = os.urandom(MiB + 1)
    with open_object_store(bucket, **moto_server.options()) as store:
        store.put("in/data.bin", data)
    code, out, err = run(capsys, "cp", "--create", f"{bucket}/in/data.bin", f"{locator}::", *flags)
    assert code == 0, err
    file_id = out.strip()
    assert file_id.endswith("/data.bin")
    code, out, err = run(capsys, "cp", f"{locator}::{file_id}", f"{bucket}/out/", *flags)
    assert code == 0, err
    assert objects(moto_server, bucket)["out/data.bin"] == data
    code, out, err = run(capsys, "cp", f"{bucket}/in/data.bin", f"{locator}::shared/blob", *flags)
    assert code == 0 and out == "shared/blob\n", err
    code, out, err = run(capsys, "cp", f"{locator}::shared/blob", f"{bucket}/out/blob", *flags)
    assert code == 0, err
    assert objects(moto_server, bucket)["out/blob"] == data


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "web"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Files(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_cp_from_http_to_a_local_file_an_object_and_stdout(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], s3: tuple[str, list[str]], moto_server: S3Server,
        web: tuple[str, Path]) -> None:
    bucket, flags = s3
    flags = [*flags, *PARTS]
    url, root = web
    data = os.urandom(3 * MiB)
    (root / "page.bin").write_bytes(data)
    code, out, err = run(capsys, "cp", f"{url}/page.bin", str(tmp_path) + "/")
    assert code == 0, err
    assert (tmp_path / "page.bin").read_bytes() == data
    assert out == f"download: {url}/page.bin to {tmp_path / 'page.bin'} (3.0 MiB)\n"
    assert run(capsys, "cp", f"{url}/page.bin", f"{bucket}/web/", *flags)[0] == 0
    assert objects(moto_server, bucket) == {"web/page.bin": data}
    code, _, err = run(capsys, "cp", f"{url}/missing.bin", str(tmp_path / "x"))
    assert code == 1 and "404" in err and not (tmp_path / "x").exists()
    code, _, err = run(capsys, "cp", str(tmp_path / "page.bin"), f"{url}/up")
    assert code == 1 and "only be copied from" in err


def test_cp_between_local_paths_and_file_urls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a").write_bytes(b"local bytes")
    assert run(capsys, "cp", str(tmp_path / "a"), (tmp_path / "b").as_uri())[0] == 0
    assert (tmp_path / "b").read_bytes() == b"local bytes"


# ------------------------------------------------------------------------------------------------------ sync


def test_sync_copies_only_what_changed_by_size_then_checksum(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], s3: tuple[str, list[str]], moto_server: S3Server) -> None:
    bucket, flags = s3
    flags = [*flags, *PARTS]
    local = tmp_path / "local"
    write_tree(local, {"a": b"aaaa", "sub/b": b"bbbb", "sub/c": os.urandom(6 * MiB)})
    code, out, err = run(capsys, "sync", str(local), f"{bucket}/p/", *flags)
    assert code == 0, err
    assert sorted(out.splitlines()) == sorted(f"upload: {local / r} to {bucket}/p/{r}" for r in ("a", "sub/b", "sub/c"))
    assert run(capsys, "sync", str(local), f"{bucket}/p/", *flags)[1] == ""  # nothing changed

    (local / "sub" / "b").write_bytes(b"BBBB")  # same size, other bytes: found by checksum
    os.utime(local / "sub" / "b", (1, 1))  # and older, so size + mtime would miss it
    os.utime(local / "a", None)  # touched, same bytes: the checksum says no copy
    (local / "new").write_bytes(b"n")
    code, out, err = run(capsys, "sync", str(local), f"{bucket}/p", *flags)
    assert code == 0, err
    assert sorted(out.splitlines()) == [f"upload: {local / 'new'} to {bucket}/p/new",
                                        f"upload: {local / 'sub/b'} to {bucket}/p/sub/b"]
    assert objects(moto_server, bucket)["p/sub/b"] == b"BBBB"

    (local / "a").unlink()
    code, out, err = run(capsys, "sync", "--delete", "--dryrun", str(local), f"{bucket}/p/", *flags)
    assert code == 0, err
    assert out == f"(dryrun) delete: {bucket}/p/a\n"
    assert "p/a" in objects(moto_server, bucket)
    code, out, err = run(capsys, "sync", "--delete", str(local), f"{bucket}/p/", *flags)
    assert out == f"delete: {bucket}/p/a\n"
    assert set(objects(moto_server, bucket)) == {"p/new", "p/sub/b", "p/sub/c"}


def test_sync_down_and_between_prefixes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       s3: tuple[str, list[str]], moto_server: S3Server) -> None:
    bucket, flags = s3
    flags = [*flags, *PARTS]
    with open_object_store(bucket, **moto_server.options()) as store:
        store.put("p/a", b"one")
        store.put("p/d/b", b"two")
    down = tmp_path / "down"
    code, out, err = run(capsys, "sync", f"{bucket}/p/", str(down), *flags)
    assert code == 0, err
    assert tree(down) == {"a": b"one", "d/b": b"two"}
    assert run(capsys, "sync", f"{bucket}/p/", str(down), *flags)[1] == ""
    (down / "stray").write_bytes(b"x")
    (down / "a").write_bytes(b"ONE")  # same size, other bytes, newer: the checksum finds it
    code, out, err = run(capsys, "sync", "--delete", f"{bucket}/p/", str(down), *flags)
    assert code == 0, err
    assert tree(down) == {"a": b"one", "d/b": b"two"}
    assert sorted(out.splitlines()) == [f"delete: {down / 'stray'}", f"download: {bucket}/p/a to {down / 'a'}"]

    code, out, err = run(capsys, "sync", f"{bucket}/p/", f"{bucket}/q/", *flags)
    assert code == 0, err
    assert len(out.splitlines()) == 2
    assert run(capsys, "sync", f"{bucket}/p/", f"{bucket}/q/", *flags)[1] == ""
    assert {k: v for k, v in objects(moto_server, bucket).items() if k.startswith("q/")} == {
        "q/a": b"one", "q/d/b": b"two"}


def test_sync_falls_back_to_size_and_mtime_for_an_object_without_checksum(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], s3: tuple[str, list[str]], moto_server: S3Server) -> None:
    import boto3

    bucket, flags = s3
    flags = [*flags, *PARTS]
    client = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.put_object(Bucket=bucket[5:], Key="p/f", Body=b"remote")  # no ajs-crc32c: not written by aiojobstore
    local = tmp_path / "local"
    write_tree(local, {"f": b"LOCAL!"})
    os.utime(local / "f", (time.time() - 3600,) * 2)  # older than the object
    assert run(capsys, "sync", str(local), f"{bucket}/p/", *flags)[1] == ""
    assert objects(moto_server, bucket)["p/f"] == b"remote"
    os.utime(local / "f", (time.time() + 3600,) * 2)  # newer
    code, out, err = run(capsys, "sync", str(local), f"{bucket}/p/", *flags)
    assert code == 0 and out == f"upload: {local / 'f'} to {bucket}/p/f\n", err
    assert objects(moto_server, bucket)["p/f"] == b"LOCAL!"


def test_objects_written_by_the_store_carry_the_crc32c_sync_compares(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], s3: tuple[str, list[str]], moto_server: S3Server) -> None:
    bucket, flags = s3
    flags = [*flags, *PARTS]
    data = os.urandom(11 * MiB)
    (tmp_path / "x").write_bytes(data)
    assert run(capsys, "cp", str(tmp_path / "x"), f"{bucket}/x", *flags)[0] == 0
    with open_object_store(bucket, **moto_server.options()) as store:
        info = store.stat("x")
    assert info is not None and info.metadata["ajs-crc32c"] == crc32c_to_b64(crc32c(data))
    assert base64.b64decode(info.metadata["ajs-crc32c"]) == crc32c(data).to_bytes(4, "big")


# ------------------------------------------------------------------------------------------------ rm, ls, cat


def test_rm_an_object_and_a_prefix(capsys: pytest.CaptureFixture[str], s3: tuple[str, list[str]],
                                   moto_server: S3Server) -> None:
    bucket, flags = s3
    with open_object_store(bucket, **moto_server.options()) as store:
        for key in ("a", "d/b", "d/e/c", "dx"):
            store.put(key, b"x")
    code, out, _ = run(capsys, "rm", f"{bucket}/a", *flags)
    assert code == 0 and out == f"removed {bucket}/a\n"
    code, out, err = run(capsys, "rm", f"{bucket}/a", *flags)
    assert code == 1 and "no such object" in err
    assert run(capsys, "rm", "-f", f"{bucket}/a", *flags)[:2] == (0, "")
    assert run(capsys, "rm", f"{bucket}/d/", *flags)[0] == 1  # a prefix needs -r
    code, out, _ = run(capsys, "rm", "-r", f"{bucket}/d", *flags)
    assert code == 0 and out.splitlines() == [f"removed {bucket}/d/b", f"removed {bucket}/d/e/c"]
    assert set(objects(moto_server, bucket)) == {"dx"}


def test_ls_groups_by_folder_unless_recursive(capsys: pytest.CaptureFixture[str], s3: tuple[str, list[str]],
                                              moto_server: S3Server) -> None:
    bucket, flags = s3
    with open_object_store(bucket, **moto_server.options()) as store:
        store.put("p/top.txt", b"12345")
        store.put("p/sub/a", b"1")
        store.put("p/sub/deep/b", b"22")
        store.put("q", b"")
    code, out, err = run(capsys, "ls", f"{bucket}/p/", *flags)
    assert code == 0, err
    lines = out.splitlines()
    assert re.fullmatch(r" {19} PRE sub/", lines[0])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d +5 top\.txt", lines[1])
    assert len(lines) == 2
    code, out, _ = run(capsys, "ls", "--recursive", "--summarize", f"{bucket}/p/", *flags)
    assert [line.split()[-1] for line in out.splitlines()[:3]] == ["p/sub/a", "p/sub/deep/b", "p/top.txt"]
    assert "Total Objects: 3" in out
    code, out, _ = run(capsys, "ls", bucket, *flags)
    assert out.split() == ["PRE", "p/", *out.split()[2:]] and out.strip().endswith(" q")
    assert run(capsys, "ls", f"{bucket}/nothing/", *flags)[0] == 1


def test_ls_prefix_filters_what_it_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locator = f"file:{tmp_path}/store"
    with open_store(locator) as store:
        store.initialize()
        job = store.create_job(Job("j"))
        with store.write_file_stream(job.id, cleanup=True, basename="c.dat") as (f, cleanup_id):
            f.write(b"c")
        with store.write_file_stream(basename="n.dat") as (f, plain_id):
            f.write(b"n")
        for name in ("alpha", "beta"):
            with store.write_shared_file_stream(name) as f:
                f.write(b"s")
    code, out, _ = run(capsys, "ls", f"{locator}::shared/")
    assert code == 0
    assert "shared (2):" in out and "files" not in out and "jobs" not in out
    code, out, _ = run(capsys, "ls", f"{locator}::shared/al")
    assert "shared (1):" in out and "shared/alpha" in out and "beta" not in out
    code, out, _ = run(capsys, "ls", f"{locator}::n/")
    assert "files (1, 1 bytes):" in out and plain_id in out and cleanup_id not in out
    assert "shared" not in out and "jobs" not in out


def test_cat_writes_a_job_store_file_to_stdout(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    locator = f"file:{tmp_path}/store"
    with open_store(locator) as store:
        store.initialize()
        with store.write_file_stream() as (f, file_id):
            f.write(b"job-store bytes\n")
    assert main(["cat", f"{locator}::{file_id}"]) == 0
    assert capfdbinary.readouterr().out == b"job-store bytes\n"
    assert main(["cat", f"{locator}::shared/none"]) == 1


# ------------------------------------------------------------------------------------------ what users hit


def test_upload_bar_is_closed_and_the_file_id_is_on_its_own_line(tmp_path: Path) -> None:
    locator = f"file:{tmp_path}/store"
    (tmp_path / "big.bin").write_bytes(os.urandom(20 * MiB))
    result = subprocess.run([sys.executable, "-m", "aiojobstore.cli", "cp", "--create", "--progress",
                             "--part-size", "5MiB", str(tmp_path / "big.bin"), f"{locator}::"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert result.returncode == 0, result.stdout
    text = result.stdout.decode()
    assert "%|" in text  # the bar was drawn
    last = text.rsplit("\r", 1)[-1]  # what is left on the terminal's last line
    assert re.fullmatch(r"\s*n/[0-9a-f]{2}/[0-9a-f]{32}/big\.bin\n", last), repr(text[-300:])
    assert not re.search(r"%\|[^\r\n]*n/[0-9a-f]{2}/", text)  # never glued to the bar


def test_init_refuses_a_memory_store_and_speaks_cli_for_an_existing_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "init", "memory:gone")
    assert code == 1 and out == ""
    assert "lives only inside one process" in err
    locator = f"file:{tmp_path}/store"
    assert run(capsys, "init", locator)[0] == 0
    code, _, err = run(capsys, "init", locator)
    assert code == 1
    assert f"already exists at {locator}; use it, or 'aiojobstore destroy {locator}' it first" in err
    assert "resume" not in err


def test_rm_force_of_a_missing_id_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locator = f"file:{tmp_path}/store"
    with open_store(locator) as store:
        store.initialize()
        with store.write_file_stream() as (f, file_id):
            f.write(b"x")
    assert run(capsys, "rm", f"{locator}::{file_id}") == (0, f"removed {file_id}\n", "")
    assert run(capsys, "rm", "-f", f"{locator}::{file_id}", f"{locator}::shared/none", f"{locator}::nojob") == (
        0, "", "")


def _help(command: str) -> str:
    result = subprocess.run([sys.executable, "-m", "aiojobstore.cli", command, "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    return result.stdout


def test_help_shows_only_the_options_a_command_uses() -> None:
    cp = _help("cp")
    for group in ("transfer options", "S3 options", "GCS options", "S3 and GCS encryption", "local options"):
        assert group in cp
    for flag in ("--part-size", "--max-attempts", "--endpoint-url", "--service-file", "--sse-key-file",
                 "--no-fsync", "--codec"):
        assert flag in cp
    status = _help("status")
    assert "--endpoint-url" in status and "--project" in status
    for flag in ("transfer options", "--part-size", "--max-memory", "--no-fsync", "--codec", "--sse-key-file"):
        assert flag not in status
    assert "--part-size" not in _help("rm") and "--codec" in _help("init") and "--dryrun" in _help("sync")
    demo = _help("demo")
    assert "--total-size" in demo and "--part-size" in demo and "--endpoint-url" in demo


def test_unknown_option_prints_the_subcommand_usage() -> None:
    result = subprocess.run([sys.executable, "-m", "aiojobstore.cli", "status", "/tmp/x", "--part-size", "5MiB"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: aiojobstore status ")
    assert "aiojobstore status: error: unrecognized arguments: --part-size 5MiB" in result.stderr


def test_an_option_for_a_service_the_command_does_not_touch_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a").write_bytes(b"a")
    code, _, err = run(capsys, "cp", str(tmp_path / "a"), "memory:x/a", "--project", "p")
    assert code == 1 and "--project is for gs:// locations" in err


def test_the_command_uses_only_the_public_api() -> None:
    source = (Path(__file__).parent.parent / "aiojobstore" / "cli.py").read_text()
    assert not re.search(r"\.backend\b", source)  # no store.backend
    for private in ("open_backend", "backends.s3", "backends.gcs", "backends.local", '"files/', '"jobs/'):
        assert private not in source, private


def test_gcs_urls_and_a_copy_from_s3_to_gcs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           s3: tuple[str, list[str]], moto_server: S3Server, gcs_emulator: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.gcs_servers import create_bucket, http

    bucket, flags = s3
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    gs = f"gs://ajs-cli-{uuid.uuid4().hex[:12]}"
    create_bucket(gcs_emulator, gs[5:])
    try:
        data = os.urandom(2 * MiB + 3)
        (tmp_path / "g.bin").write_bytes(data)
        assert run(capsys, "cp", str(tmp_path / "g.bin"), f"{gs}/in/")[0] == 0
        assert run(capsys, "cp", f"{gs}/in/g.bin", str(tmp_path / "back"))[0] == 0
        assert (tmp_path / "back").read_bytes() == data
        with open_object_store(bucket, **moto_server.options()) as store:
            store.put("from-s3", b"crossing services")
        code, out, err = run(capsys, "cp", f"{bucket}/from-s3", f"{gs}/to-gcs", *flags)  # --endpoint-url: S3 only
        assert code == 0, err
        code, out, err = run(capsys, "cat", f"{gs}/to-gcs")
        assert out == "crossing services"
        write_tree(tmp_path / "tree", {"a": b"a", "b/c": b"bc"})
        assert len(run(capsys, "sync", str(tmp_path / "tree"), f"{gs}/t/")[1].splitlines()) == 2
        (tmp_path / "tree" / "a").touch()
        assert run(capsys, "sync", str(tmp_path / "tree"), f"{gs}/t/")[1] == ""  # the checksums match
        code, out, _ = run(capsys, "ls", f"{gs}/")
        assert code == 0 and {line.split()[-1] for line in out.splitlines()} == {"in/", "t/", "to-gcs"}
    finally:
        http("GET", f"{gcs_emulator}/wipe")


def test_a_job_store_on_s3_is_listed_with_colons_and_its_objects_without(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], s3: tuple[str, list[str]]) -> None:
    bucket, flags = s3
    locator = f"{bucket}/js"
    assert run(capsys, "init", locator, *flags)[0] == 0
    (tmp_path / "f.txt").write_bytes(b"in a job store on S3")
    code, out, err = run(capsys, "cp", str(tmp_path / "f.txt"), f"{locator}::", *flags)
    assert code == 0, err
    file_id = out.strip()
    code, out, _ = run(capsys, "ls", f"{locator}::", *flags)
    assert code == 0 and "files (1, 20 bytes):" in out and file_id in out
    code, out, _ = run(capsys, "ls", f"{bucket}/", *flags)
    assert out.split() == ["PRE", "js/"]
    code, out, _ = run(capsys, "cat", f"{locator}::{file_id}", *flags)
    assert out == "in a job store on S3"
