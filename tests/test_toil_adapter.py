"""Quick checks of aiojobstore.toil (skipped when Toil is not importable; ``.ci/toil`` runs them in Toil's venv):
the startup hook maps the locator in a fresh interpreter, a minimal workflow runs in real ``_toil_worker``
processes, Toil's commands take the locator, and the adapter's documented differences hold."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("toil")

from toil.common import Toil
from toil.job import Job, JobDescription
from toil.jobStores.abstractJobStore import (
    ConcurrentFileModificationException,
    JobStoreExistsException,
    NoSuchFileException,
    NoSuchJobException,
    NoSuchJobStoreException,
)

from aiojobstore.toil import AioJobStore

BIN = os.path.dirname(sys.executable)


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}


def _python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=_env(), cwd=cwd, timeout=300)


def _new_store(tmp_path: Path, **options: object) -> AioJobStore:
    from toil.common import Config

    store = AioJobStore(f"file:{tmp_path}/store", **options)
    store.initialize(Config())
    return store


def _description(store: AioJobStore, name: str = "job") -> JobDescription:
    job = JobDescription(requirements={"memory": 1, "disk": 1, "cores": 1, "preemptible": False}, jobName=name)
    store.assign_job_id(job)
    return job


def test_hook_maps_the_locator_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """What a ``_toil_worker`` does: import toil.common (nothing of aiojobstore imported yet) and open the store."""
    result = _python(f"""
        import sys
        assert "aiojobstore.toil" not in sys.modules and "toil" not in sys.modules
        from toil.common import Toil
        store = Toil.getJobStore("aiojobstore:file:{tmp_path}/s")
        print(type(store).__module__, type(store).__name__, store.locator)
        print(Toil.canonical_locator("aiojobstore:file:rel"))
        """, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first == f"aiojobstore.toil AioJobStore file:{tmp_path}/s"
    assert second == f"aiojobstore:file:{tmp_path}/rel"


def test_hook_leaves_toils_own_stores_alone(tmp_path: Path) -> None:
    result = _python(f"""
        from toil.common import Toil
        print(type(Toil.getJobStore("file:{tmp_path}/s")).__name__)
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "FileJobStore"


def test_interpreter_without_toil_does_not_import_aiojobstore() -> None:
    result = _python("""
        import sys
        print(sorted(m for m in sys.modules if m.startswith(("aiojobstore", "toil", "anyio"))))
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("['aiojobstore_toil_hook']", "[]")


WORKFLOW = """
    import sys
    from toil.common import Toil
    from toil.job import Job

    def write(job, size):
        with job.fileStore.writeGlobalFileStream() as (out, file_id):
            out.write(b"x" * size)
        return file_id

    def read(job, file_id, size):
        with open(job.fileStore.readGlobalFile(file_id), "rb") as f:
            assert f.read() == b"x" * size
        return size

    def root(job, size):
        file_id = job.addChildJobFn(write, size).rv()
        return job.addFollowOnJobFn(read, file_id, size).rv()

    if __name__ == "__main__":
        options = Job.Runner.getDefaultOptions(sys.argv[1])
        options.clean = sys.argv[2]
        options.caching = sys.argv[3] == "caching"
        options.logLevel = "WARNING"
        options.retryCount = 0
        with Toil(options) as toil:
            print("RESULT", toil.start(Job.wrapJobFn(root, 3 << 20)))
"""


@pytest.mark.parametrize("caching", ["caching", "noncaching"])
def test_minimal_workflow_runs_in_toil_workers(tmp_path: Path, caching: str) -> None:
    script = tmp_path / "workflow.py"
    script.write_text(textwrap.dedent(WORKFLOW))
    locator = f"aiojobstore:file:{tmp_path}/store"
    result = subprocess.run([sys.executable, str(script), locator, "always", caching], capture_output=True,
                            text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"RESULT {3 << 20}" in result.stdout
    assert not (tmp_path / "store").exists()  # --clean=always went through the adapter's destroy()


def test_toil_status_and_clean_take_the_locator(tmp_path: Path) -> None:
    script = tmp_path / "workflow.py"
    script.write_text(textwrap.dedent(WORKFLOW))
    locator = f"aiojobstore:file:{tmp_path}/store"
    run = subprocess.run([sys.executable, str(script), locator, "never", "noncaching"], capture_output=True,
                         text=True, env=_env(), cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    status = subprocess.run([os.path.join(BIN, "toil"), "status", locator], capture_output=True, text=True,
                            env=_env(), timeout=120)
    assert status.returncode == 0, status.stderr[-3000:]
    assert "completed successfully" in status.stdout  # the same words as on Toil's FileJobStore
    clean = subprocess.run([os.path.join(BIN, "toil"), "clean", locator], capture_output=True, text=True,
                           env=_env(), timeout=120)
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert not (tmp_path / "store").exists()


def test_lifecycle_errors_are_toils(tmp_path: Path) -> None:
    from toil.common import Config

    with pytest.raises(NoSuchJobStoreException, match="aiojobstore:file:"):
        AioJobStore(f"file:{tmp_path}/store").resume()
    _new_store(tmp_path)
    with pytest.raises(JobStoreExistsException):
        AioJobStore(f"file:{tmp_path}/store").initialize(Config())


def test_toils_lenient_file_calls(tmp_path: Path) -> None:
    store = _new_store(tmp_path)
    assert store.file_exists("bogus") is False
    assert store.get_file_size("bogus") == 0
    local = tmp_path / "f.txt"
    local.write_bytes(b"12345")
    file_id = store.write_file(str(local), cleanup=True)  # no job: cleanup is a no-op
    assert type(file_id) is str
    assert store.get_file_size(file_id) == 5
    store.delete_file(file_id)
    assert store.get_file_size(file_id) == 0
    with pytest.raises(NoSuchFileException):
        store.read_file(file_id, str(tmp_path / "out"))
    with pytest.raises(NoSuchJobException):
        store.load_job("nonexistent")
    store.delete_job("nonexistent")  # idempotent


def test_read_logs_passes_a_binary_file(tmp_path: Path) -> None:
    store = _new_store(tmp_path)
    store.write_logs('{"a": 1}')
    seen: list[bytes] = []
    assert store.read_logs(lambda f: seen.append(f.read())) == 1
    assert seen == [b'{"a": 1}']


def test_imported_executable_keeps_its_bit(tmp_path: Path) -> None:
    from toil.fileStores import FileID

    store = _new_store(tmp_path)
    source = tmp_path / "tool.sh"
    source.write_text("#!/bin/sh\n")
    source.chmod(0o755)
    file_id = store.import_file(f"file://{source}")
    assert isinstance(file_id, FileID) and file_id.executable and file_id.size == 10
    store.read_file(file_id, str(tmp_path / "copy"), symlink=True)
    assert os.access(tmp_path / "copy", os.X_OK) and not os.path.islink(tmp_path / "copy")
    store.export_file(file_id, str(tmp_path / "exported"))
    assert os.access(tmp_path / "exported", os.X_OK)


def test_stale_update_overwrites_by_default(tmp_path: Path) -> None:
    leader = _new_store(tmp_path)
    job = _description(leader)
    leader.create_job(job)
    worker = AioJobStore(f"file:{tmp_path}/store")
    worker.resume()
    newer = worker.load_job(job.jobStoreID)
    newer.filesToDelete = ["a"]
    worker.update_job(newer)
    job.filesToDelete = ["b"]
    leader.update_job(job)  # stale copy: Toil's last-writer-wins
    assert leader.stale_overwrites == 1
    assert worker.load_job(job.jobStoreID).filesToDelete == ["b"]


def test_stale_update_refused_on_request(tmp_path: Path) -> None:
    leader = _new_store(tmp_path, stale_updates="refuse")
    job = _description(leader)
    leader.create_job(job)
    worker = AioJobStore(f"file:{tmp_path}/store", stale_updates="refuse")
    worker.resume()
    worker.update_job(worker.load_job(job.jobStoreID))
    with pytest.raises(ConcurrentFileModificationException):
        leader.update_job(job)
    leader.load_job(job.jobStoreID)
    leader.update_job(job)  # after a reload the update goes through


def test_unknown_stale_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stale_updates"):
        AioJobStore(f"file:{tmp_path}/store", stale_updates="merge")


def test_jobs_are_stored_whole_and_get_the_config(tmp_path: Path) -> None:
    store = _new_store(tmp_path)
    job = _description(store, "align")
    store.create_job(job)
    loaded = store.load_job(job.jobStoreID)
    assert loaded is not job and type(loaded) is JobDescription and loaded.jobName == "align"
    assert loaded._config is store.config
    assert job.jobStoreID.startswith("align-")
    assert [j.jobStoreID for j in store.jobs()] == [job.jobStoreID]


def test_toil_class_is_patched_in_this_process() -> None:
    assert getattr(Toil, "_aiojobstore_patched", False)
    assert Job  # imported for the workflow's module


def test_example_workflow_runs_on_both_file_stores(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "toil_workflow.py"
    result = subprocess.run([sys.executable, str(example), "--jobStore", f"aiojobstore:file:{tmp_path}/run",
                             "--size-mib", "4", "--width", "2"], capture_output=True, text=True, env=_env(),
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CachingFileStore" in result.stdout and "NonCachingFileStore" in result.stdout
    assert result.stdout.count("2 parts of 4 MiB verified") == 2


FAILING = """
    import sys, time
    from toil.common import Toil
    from toil.job import Job

    def fail(job):
        raise RuntimeError("planned failure")

    def sleep(job):
        time.sleep(120)

    if __name__ == "__main__":
        options = Job.Runner.getDefaultOptions(sys.argv[1])
        options.clean = "never"
        options.logLevel = "WARNING"
        options.retryCount = 0
        with Toil(options) as toil:
            toil.start(Job.wrapJobFn(fail if sys.argv[2] == "fail" else sleep))
"""


def test_toil_debug_job_and_kill_take_the_locator(tmp_path: Path) -> None:
    import time

    script = tmp_path / "failing.py"
    script.write_text(textwrap.dedent(FAILING))
    locator = f"aiojobstore:file:{tmp_path}/failed"
    run = subprocess.run([sys.executable, str(script), locator, "fail"], capture_output=True, text=True,
                         env=_env(), cwd=tmp_path, timeout=300)
    assert run.returncode != 0 and "planned failure" in run.stdout + run.stderr
    debug = subprocess.run([os.path.join(BIN, "toil"), "debug-job", locator, "fail", "--printJobInfo"],
                           capture_output=True, text=True, env=_env(), timeout=120)
    assert debug.returncode == 0, debug.stderr[-3000:]
    assert "Job: 'fail'" in debug.stdout

    locator = f"aiojobstore:file:{tmp_path}/sleeping"
    leader = subprocess.Popen([sys.executable, str(script), locator, "sleep"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env=_env(), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        store = AioJobStore(f"file:{tmp_path}/sleeping")
        while True:
            try:
                store.resume()
                store.read_leader_pid()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        kill = subprocess.run([os.path.join(BIN, "toil"), "kill", locator], capture_output=True, text=True,
                              env=_env(), timeout=120)
        assert kill.returncode == 0, kill.stderr[-3000:]
        assert leader.wait(timeout=120) != 0  # the leader was killed before its two-minute job finished
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait()
