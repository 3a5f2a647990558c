"""http(s) imports: no total time limit for a progressing download, an idle timeout, safe redirects, short bodies
refused, every failure a JobStoreError naming the URL — against a real loopback HTTP server."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from aiojobstore import JobStoreError, NoSuchFileError, open_store
from tests.support import free_port


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/trickle":  # 25 chunks, one every 0.2 s: 5 s in all, never idle for long
            self.send_response(200)
            self.send_header("Content-Length", str(25 * 1000))
            self.end_headers()
            for _ in range(25):
                self.wfile.write(b"t" * 1000)
                self.wfile.flush()
                time.sleep(0.2)
        elif self.path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "2000")
            self.end_headers()
            self.wfile.write(b"s" * 1000)
            self.wfile.flush()
            time.sleep(3)
        elif self.path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 400)
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/to-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/to-trickle":
            self.send_response(307)
            self.send_header("Location", "/ok")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/ok":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


async def _store(tmp_path, **options):
    store = open_store(f"file:{tmp_path}/store", **options)
    await store.initialize()
    return store


async def _no_files(store) -> bool:
    return (await store.summary())["files"] == 0


async def test_a_progressing_download_outlasts_the_idle_timeout(tmp_path, web):
    """5 s of download with a 2 s idle timeout: only inactivity counts (a total limit would have cut it)."""
    async with await _store(tmp_path, http_idle_timeout=2.0) as store:
        file_id = await store.import_file(f"{web}/trickle")
        assert await store.get_file_size(file_id) == 25_000


async def test_a_stalled_download_fails_after_the_idle_timeout_naming_the_url(tmp_path, web):
    async with await _store(tmp_path, http_idle_timeout=0.5) as store:
        with pytest.raises(JobStoreError, match=r"/stall.*http_idle_timeout"):
            await store.import_file(f"{web}/stall")
        assert await _no_files(store)


async def test_a_body_shorter_than_its_content_length_is_refused(tmp_path, web):
    async with await _store(tmp_path) as store:
        with pytest.raises(JobStoreError, match="/short"):
            await store.import_file(f"{web}/short")
        assert await _no_files(store)


async def test_redirects_only_to_http(tmp_path, web):
    async with await _store(tmp_path) as store:
        with pytest.raises(JobStoreError, match="not an http"):
            await store.import_file(f"{web}/to-file")
        file_id = await store.import_file(f"{web}/to-trickle")
        async with store.read_file_stream(file_id) as reader:
            assert await reader.read() == b"ok"


async def test_unreachable_and_missing_urls_give_hierarchy_errors(tmp_path, web):
    async with await _store(tmp_path, http_idle_timeout=2.0) as store:
        with pytest.raises(NoSuchFileError):
            await store.import_file(f"{web}/missing")
        dead = f"http://127.0.0.1:{free_port()}/x"
        with pytest.raises(JobStoreError, match=r"127\.0\.0\.1"):
            await store.import_file(dead)
        assert await _no_files(store)
