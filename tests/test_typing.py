"""The typed surface: a type checker catches a misspelt option and sees bytes streams as bytes (mypy, as CI runs
it on the package)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SNIPPET = textwrap.dedent("""
    import aiojobstore
    from aiojobstore.sync import open_store as open_sync_store

    async def main() -> None:
        store = aiojobstore.open_store("memory:x", part_sise=1)
        good = aiojobstore.open_object_store("s3://b/p", part_size="50MiB", conditional_writes="require")
        async with store.write_file_stream() as (writer, file_id):
            await writer.write(b"bytes are fine")
        async with store.read_file_stream(file_id) as reader:
            data: bytes = await reader.read()
        async with store.read_file_stream(file_id, encoding="utf-8") as text:
            line: str = await text.read()
        job = open_sync_store("memory:y").load_job("abc")
        reveal_type(job)
        reveal_type(good)
""")


@pytest.mark.skipif(shutil.which("mypy", path=str(Path(sys.executable).parent)) is None, reason="mypy not installed")
def test_mypy_catches_a_misspelt_option_and_types_streams(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    mypy = str(Path(sys.executable).parent / "mypy")
    done = subprocess.run([mypy, "--no-incremental", "--ignore-missing-imports", "--follow-imports=silent",
                           str(snippet)], capture_output=True, text=True, cwd=ROOT)
    out = done.stdout
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "part_sise" in errors[0], out
    assert 'Revealed type is "aiojobstore.jobstore.Job"' in out, out
    assert 'Revealed type is "aiojobstore.objects.ObjectStore"' in out, out
