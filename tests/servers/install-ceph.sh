#!/usr/bin/env bash
# Install the Debian packages the Ceph RADOS Gateway test server needs (mon, osd, radosgw, tools).
# Idempotent and quick when they are already there (one dpkg query, no network). Needs root and apt.
#   tests/servers/install-ceph.sh        # exit 0 when the binaries are installed afterwards
set -euo pipefail
pkgs=(ceph-mon ceph-osd radosgw ceph-common python3-rados)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "[install-ceph] already installed: ${pkgs[*]}" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "[install-ceph] no apt-get here: install ${missing[*]} by other means" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo -n"
echo "[install-ceph] installing ${missing[*]} (apt)" >&2
timeout 300 $SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
echo "[install-ceph] done" >&2
