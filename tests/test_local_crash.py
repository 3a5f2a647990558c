"""The local backend when its writer dies: SIGKILL at random moments, checked by a fresh process; and the order of
the syscalls that make a commit durable (file fsync, rename, directory fsync, new directories fsynced)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

import aiojobstore

WORKTREE = str(Path(aiojobstore.__file__).resolve().parents[1])

#: The child: writes objects in a loop and journals (fsync'd) every commit it saw return.
WRITER = r"""
import json, os, random, sys
import anyio
from aiojobstore.backends.local import LocalBackend
from aiojobstore.transfer import crc32c

root, journal_path, scratch, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rng = random.Random(seed)
journal = os.open(journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def record(**entry):
    os.write(journal, (json.dumps(entry) + "\n").encode())
    os.fsync(journal)


def payload(header):
    size = rng.choice([0, 100, 5000, 70_000, 600_000, 3_000_000])
    return header.encode() + rng.randbytes(size)


async def main():
    backend = LocalBackend(root)
    await backend.create()
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        name = f"{seed}-{n}"
        kind = rng.choice(["put", "stream", "upload", "replace", "counter"])
        if kind == "put":
            data = payload(name)
            await backend.put_bytes(f"p/{name}", data)
            record(key=f"p/{name}", crc=crc32c(data), size=len(data))
        elif kind == "stream":
            data = payload(name)
            async with backend.open_writer(f"w/{name}") as writer:
                for start in range(0, len(data), 256 * 1024):
                    await writer.write(data[start : start + 256 * 1024])
            record(key=f"w/{name}", crc=crc32c(data), size=len(data))
        elif kind == "upload":
            data = payload(name)
            source = os.path.join(scratch, "upload")
            with open(source, "wb") as f:
                f.write(data)
            await backend.upload_file(source, f"u/{name}")
            record(key=f"u/{name}", crc=crc32c(data), size=len(data))
        elif kind == "replace":
            key = f"r/{rng.randrange(4)}"
            version = time_version()
            data = payload(f"{version:020d}:")
            await backend.put_bytes(key, data)
            record(key=key, version=version, crc=crc32c(data), size=len(data))
        else:
            written = []

            def increment(data):
                written.append(int(data or b"0") + 1)
                return str(written[-1]).encode()

            if await backend.stat("counter") is None:
                await backend.put_bytes("counter", b"0", if_absent=True)
            await backend.update_object("counter", increment)
            record(key="counter", value=written[-1])


def time_version():
    import time
    return time.time_ns()


anyio.run(main)
"""

#: A fresh process: every journaled commit present and intact, every object readable, then reclaim.
CHECKER = r"""
import json, os, sys
import anyio
from aiojobstore.backends.local import LocalBackend, TMP_PREFIX
from aiojobstore.transfer import crc32c

root, journal_path = sys.argv[1], sys.argv[2]


def debris():
    return sum(name.startswith(TMP_PREFIX) for _, _, names in os.walk(root) for name in names)


async def main():
    entries = []
    with open(journal_path, "rb") as f:
        for line in f:
            try:
                entries.append(json.loads(line))
            except ValueError:
                pass  # a line the kill cut short: its commit was not seen to return
    backend = LocalBackend(root)
    backend.require_checksum = True  # every object here was written by aiojobstore
    errors = []
    latest = {}
    for entry in entries:
        key = entry["key"]
        if key.startswith("r/") or key == "counter":
            latest[key] = entry
            continue
        data = await backend.get_bytes(key)  # verifies the recorded CRC32C
        if (len(data), crc32c(data)) != (entry["size"], entry["crc"]):
            errors.append(f"{key}: not the bytes whose commit returned")
    for key, entry in latest.items():
        data = await backend.get_bytes(key)
        if key == "counter":
            if int(data) not in (entry["value"], entry["value"] + 1):
                errors.append(f"counter is {int(data)}, last journaled {entry['value']}")
            continue
        version = int(data[:20])
        if version < entry["version"]:
            errors.append(f"{key}: version {version} is older than the last commit seen ({entry['version']})")
        elif version == entry["version"] and (len(data), crc32c(data)) != (entry["size"], entry["crc"]):
            errors.append(f"{key}: torn")
    listed = 0
    async for info in backend.list(""):
        listed += 1
        try:
            await backend.get_bytes(info.key)
        except Exception as error:
            errors.append(f"{info.key}: {error!r}")
    before = debris()
    report = await backend.reclaim(older_than=0)
    print(json.dumps({"commits": len(entries), "listed": listed, "errors": errors, "debris": before,
                      "reclaimed": report.items, "kinds": report.kinds, "left": debris(),
                      "dirs_left_empty": sum(1 for d, subdirs, names in os.walk(root) if not subdirs and not names
                                             and os.path.basename(d) != ".ajs-locks")}))


anyio.run(main)
"""


def _child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": WORKTREE + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_writers_killed_at_random_moments_never_lose_or_tear_a_returned_commit(tmp_path):
    root, journal, scratch = tmp_path / "root", tmp_path / "journal", tmp_path / "scratch"
    scratch.mkdir()
    rng = random.Random(2215)
    kills = 0
    deadline = time.monotonic() + 45
    for round_ in range(50):
        if round_ >= 30 and time.monotonic() > deadline:
            break
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(journal), str(scratch), str(round_)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_child_env(), cwd=WORKTREE)
        assert child.stdout is not None
        if child.stdout.readline() != b"ready\n":
            child.kill()
            pytest.fail(f"the writer did not start: {child.communicate()[1].decode()}")
        time.sleep(rng.uniform(0.01, 0.5))
        child.send_signal(signal.SIGKILL)
        _, stderr = child.communicate()
        assert child.returncode == -signal.SIGKILL, stderr.decode()  # it was busy writing, not failed
        kills += 1
    checked = subprocess.run([sys.executable, "-c", CHECKER, str(root), str(journal)], capture_output=True,
                             env=_child_env(), cwd=WORKTREE, timeout=120)
    assert checked.returncode == 0, checked.stderr.decode()
    report = json.loads(checked.stdout)
    print(f"\n{kills} kills, {report['commits']} journaled commits checked, {report['listed']} objects read back, "
          f"{report['debris']} temp files of killed writers, reclaimed {report['kinds']}")
    assert report["errors"] == []
    assert report["commits"] > 0
    assert report["left"] == 0 and report["reclaimed"] >= report["debris"]
    assert report["dirs_left_empty"] == 0


# ------------------------------------------------------------------------------------------------ durability

DURABLE = r"""
import sys
import anyio
from aiojobstore.backends.local import LocalBackend


async def main():
    backend = LocalBackend(sys.argv[1])
    await backend.put_bytes("p/a/obj", b"put")
    async with backend.open_writer("w/a/obj") as writer:
        await writer.write(b"stream")
    await backend.upload_file(sys.argv[2], "u/a/obj")
    await backend.put_bytes("p/a/obj", b"replaced")
    await backend.put_bytes("x/a/obj", b"created only", if_absent=True)
    await backend.close()


anyio.run(main)
"""

_CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
_FD = re.compile(r"-?\d+<([^>]*)>")


Call = tuple[str, list[str], list[str]]


def _trace(lines: list[str]) -> dict[str, list[Call]]:
    """Successful calls per thread, in order: the name, the paths of the descriptor arguments, the names."""
    pending: dict[str, str] = {}
    calls: dict[str, list[Call]] = defaultdict(list)
    for line in lines:
        pid = line.split(None, 1)[0] if line[:1].isdigit() else ""
        if line.rstrip().endswith("<unfinished ...>"):
            pending[pid] = line.rstrip()[: -len("<unfinished ...>")].rstrip()
            continue
        resumed = re.match(r"^(\d+)\s+<\.\.\. \w+ resumed>(.*)$", line)
        if resumed:
            line = pending.pop(resumed.group(1), "") + resumed.group(2)
        match = _CALL.match(line)
        if match is None or match.group(4).startswith("-"):
            continue
        calls[match.group(1)].append((match.group(2), _FD.findall(match.group(3)),
                                      re.findall(r'"([^"]*)"', match.group(3))))
    return calls


def test_commits_fsync_the_file_before_the_rename_the_directory_after_and_new_directories(tmp_path):
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "src").write_bytes(b"uploaded")
    out = tmp_path / "trace"
    result = subprocess.run([strace, "-f", "-y", "-qq", "-o", str(out), "-e",
                             "trace=fsync,fdatasync,rename,renameat,renameat2,mkdir,mkdirat,link,linkat",
                             sys.executable, "-c", DURABLE, str(root), str(tmp_path / "src")],
                            capture_output=True, env=_child_env(), cwd=WORKTREE, timeout=120)
    if result.returncode != 0 and b"ptrace" in result.stderr:
        pytest.skip(f"strace cannot trace here: {result.stderr.decode()[:200]}")
    assert result.returncode == 0, result.stderr.decode()
    calls = _trace(out.read_text().splitlines())
    prefix = str(root) + "/"
    made, placed = [], []
    for thread_calls in calls.values():
        for index, (name, fds, names) in enumerate(thread_calls):
            later = [fds for call, fds, _ in thread_calls[index + 1 :] if call == "fsync"]
            earlier = [fds for call, fds, _ in thread_calls[:index] if call == "fsync"]
            if name == "mkdirat" and fds and fds[0].startswith(str(root)):
                made.append(f"{fds[0]}/{names[0]}"[len(prefix) :])
                assert [fds[0]] in later, f"the new directory {names[0]!r} was not fsynced into {fds[0]}"
            if name in ("renameat", "renameat2", "linkat") and len(fds) == 2 and len(names) == 2:
                directory, (temp, final) = fds[0], names
                if not temp.startswith(".ajs-tmp-new-") or not directory.startswith(prefix):
                    continue
                placed.append(f"{directory}/{final}"[len(prefix) :])
                assert [f"{directory}/{temp}"] in earlier, f"{final} was renamed before its data was fsynced"
                assert [directory] in later, f"{directory} was not fsynced after {final} was placed in it"
    assert sorted(made) == sorted(["p", "p/a", "w", "w/a", "u", "u/a", "x", "x/a"])
    assert sorted(placed) == sorted(["p/a/obj", "w/a/obj", "u/a/obj", "p/a/obj", "x/a/obj"])
