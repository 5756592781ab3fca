#!/usr/bin/env bash
# The main job on built-in defaults: a development PKI, a real agent and a real controller client
# over mTLS on loopback, a LUKS2 disk image erased for real, all in a temporary directory.
# Installs cryptsetup (Debian's cryptsetup-bin) first when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cryptsetup >/dev/null 2>&1 && [ ! -x /usr/sbin/cryptsetup ] && [ ! -x /sbin/cryptsetup ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "cryptsetup is missing: install cryptsetup-bin (or run as root to let this script do it)" >&2
    exit 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cryptsetup-bin >/dev/null
fi
exec cargo run --release -q -p jex-agent -- demo "$@"
