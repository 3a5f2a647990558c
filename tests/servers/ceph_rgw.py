"""Start and stop a throw-away single-node Ceph (1 mon, 1 OSD on memstore, no mgr) with a RADOS Gateway (S3) on
127.0.0.1, for the S3 compatibility tests.

    python -m tests.servers.ceph_rgw start [DIR]   # prints export lines (AWS_ENDPOINT_URL ...)
    python -m tests.servers.ceph_rgw stop [DIR]

From Python: ``cluster = CephRGW(directory); cluster.start(); ...; cluster.stop()``. Everything lives in the
directory; only the processes whose pid files are there are ever signalled. Ceph's binaries come from Debian's
packages (``tests/servers/install-ceph.sh``); :func:`ceph_available` says whether they are installed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ACCESS_KEY = "AIOJOBSTORETESTKEY01"
SECRET_KEY = "aiojobstore-test-secret-0000000000000000"
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph-authtool", "monmaptool", "ceph")
RGW_POOLS = (".rgw.root", "default.rgw.control", "default.rgw.meta", "default.rgw.log",
             "default.rgw.buckets.index", "default.rgw.buckets.data", "default.rgw.buckets.non-ec")
DAEMONS = ("client.rgw.a", "osd.0", "mon.a")  # stop order


def ceph_available() -> str | None:
    """``None`` when Ceph can be started here, else the reason it cannot."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"Ceph binaries missing ({', '.join(missing)}): run tests/servers/install-ceph.sh (Debian, as root)"
    if os.geteuid() != 0:
        return "the Ceph test cluster must run as root"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class CephRGW:
    """One throw-away cluster in ``directory`` (created; deleted by :meth:`stop`)."""

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, rgw_port: int | None = None,
                 mon_port: int | None = None, store_bytes: int = 8 << 30) -> None:
        self.dir = Path(directory or tempfile.mkdtemp(prefix="aiojobstore-ceph-"))
        self.rgw_port = rgw_port or _free_port()
        self.mon_port = mon_port or _free_port()
        self.store_bytes = store_bytes
        self.endpoint_url = f"http://127.0.0.1:{self.rgw_port}"
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.conf = self.dir / "ceph.conf"

    # ------------------------------------------------------------------ helpers

    def _env(self) -> dict[str, str]:
        return {**os.environ, "CEPH_CONF": str(self.conf)}

    def _run(self, *args: str, timeout: float = 60) -> str:
        result = subprocess.run(args, env=self._env(), capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}"
                               f"\nlogs in {self.dir / 'log'}")
        return result.stdout

    def _pid(self, name: str) -> int | None:
        try:
            return int((self.dir / "run" / f"{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _alive(self, name: str) -> bool:
        pid = self._pid(name)
        if pid is None:
            return False
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        return "\nState:\tZ" not in status

    def _http_ok(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint_url + "/", timeout=2).close()
        except OSError:
            return False
        return True

    def _wait(self, check, what: str, timeout: float, daemon: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if daemon is not None and not self._alive(daemon):
                raise RuntimeError(f"{daemon} died while waiting for {what}; see {self.dir / 'log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout:.0f} s; see {self.dir / 'log'}")
            time.sleep(0.3)

    def _write_config(self, fsid: str) -> None:
        d = self.dir
        self.conf.write_text(f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{self.mon_port}
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
keyring = {d}/keyring
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
pid file = {d}/run/$name.pid
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
auth allow insecure global id reclaim = false
[mon]
mon data = {d}/mon.$id
# one monitor: commit map changes at once instead of batching them for a second
paxos propose interval = 0.05
[osd]
osd data = {d}/osd.$id
# test data lives in the OSD's memory: fast start, nothing left on disk
osd objectstore = memstore
memstore device bytes = {self.store_bytes}
[client.rgw.a]
rgw data = {d}/rgw.a
# without tcp_nodelay small requests wait ~40 ms each (Nagle + delayed ACK)
rgw frontends = beast endpoint=127.0.0.1:{self.rgw_port} tcp_nodelay=1
# SSE-C over plain http (RGW otherwise refuses customer keys without TLS)
rgw crypt require ssl = false
""")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> CephRGW:
        """Start mon, OSD and radosgw and create the S3 user. Raises RuntimeError with the log directory."""
        reason = ceph_available()
        if reason:
            raise RuntimeError(reason)
        for sub in ("run", "log", "mon.a", "osd.0", "rgw.a"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        self._write_config(fsid)
        keyring = str(self.dir / "keyring")
        self._run("ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
        for name, caps in (
            ("client.admin", ["mon", "allow *", "osd", "allow *", "mgr", "allow *"]),
            ("osd.0", ["mon", "allow profile osd", "osd", "allow *", "mgr", "allow profile osd"]),
            ("client.rgw.a", ["mon", "allow rw", "osd", "allow rwx", "mgr", "allow rw"]),
        ):
            args = ["ceph-authtool", keyring, "--gen-key", "-n", name]
            for i in range(0, len(caps), 2):
                args += ["--cap", caps[i], caps[i + 1]]
            self._run(*args)
        monmap = str(self.dir / "monmap")
        self._run("monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]", "--fsid", fsid, monmap)
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", keyring)
        self._run("ceph-mon", "-i", "a")
        osd_uuid = str(uuid.uuid4())
        osd_id = self._run("ceph", "osd", "new", osd_uuid).strip()
        if osd_id != "0":
            raise RuntimeError(f"unexpected OSD id {osd_id!r}")
        self._run("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid, timeout=120)
        self._run("ceph-osd", "-i", "0")
        self._wait(lambda: "osd.0 up" in self._run("ceph", "osd", "dump", timeout=20), "osd.0", 90, "osd.0")
        self._create_pools()
        self._run("radosgw", "-n", "client.rgw.a")
        self._wait(self._http_ok, "radosgw", 90, "client.rgw.a")
        self._run("radosgw-admin", "user", "create", "--uid=aiojobstore", "--display-name=aiojobstore",
                  f"--access-key={self.access_key}", f"--secret-key={self.secret_key}")
        return self

    def _create_pools(self) -> None:
        """RGW's pools in one librados session (radosgw would create them one by one, ~2 s each)."""
        commands = []
        for pool in RGW_POOLS:
            commands.append({"prefix": "osd pool create", "pool": pool, "pg_num": 8, "pgp_num": 8})
            commands.append({"prefix": "osd pool application enable", "pool": pool, "app": "rgw"})
        script = (
            "import json, sys, rados\n"
            "cluster = rados.Rados(conffile=sys.argv[1]); cluster.connect(timeout=30)\n"
            "for cmd in json.loads(sys.argv[2]):\n"
            "    rc, out, err = cluster.mon_command(json.dumps(cmd), b'', timeout=30)\n"
            "    if rc != 0: sys.exit(f'{cmd}: {err}')\n"
            "cluster.shutdown()\n"
        )
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        try:
            self._run(python, "-c", script, str(self.conf), json.dumps(commands), timeout=120)
        except RuntimeError:  # no python3-rados: the CLI does the same, one process per command
            for cmd in commands:
                if cmd["prefix"] == "osd pool create":
                    self._run("ceph", "osd", "pool", "create", cmd["pool"], "8", "8")
                else:
                    self._run("ceph", "osd", "pool", "application", "enable", cmd["pool"], "rgw")

    def stop(self, *, keep: bool = False) -> None:
        """Stop the daemons this cluster started (by their pid files only) and delete the directory."""
        for name in DAEMONS:
            pid = self._pid(name)
            if pid is None:
                continue
            if self._alive(name):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    cmdline = b""
                if b"ceph-" in cmdline or b"radosgw" in cmdline:
                    os.kill(pid, signal.SIGTERM)
                    deadline = time.monotonic() + 10
                    while self._alive(name) and time.monotonic() < deadline:
                        time.sleep(0.2)
                    if self._alive(name):
                        os.kill(pid, signal.SIGKILL)
            (self.dir / "run" / f"{name}.pid").unlink(missing_ok=True)
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def exports(self) -> str:
        return (f"export AWS_ENDPOINT_URL={self.endpoint_url} AWS_ACCESS_KEY_ID={self.access_key} "
                f"AWS_SECRET_ACCESS_KEY={self.secret_key} AWS_DEFAULT_REGION=us-east-1")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("start", "stop"):
        print(__doc__, file=sys.stderr)
        return 2
    directory = argv[2] if len(argv) > 2 else "/tmp/aiojobstore-ceph-tests"
    port_file = Path(directory) / "rgw.port"
    if argv[1] == "start":
        port = int(os.environ.get("RGW_PORT", "7480"))
        cluster = CephRGW(directory, rgw_port=port)
        cluster.start()
        port_file.write_text(str(port))
        print(cluster.exports())
        return 0
    port = int(port_file.read_text()) if port_file.exists() else 7480
    CephRGW(directory, rgw_port=port).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
