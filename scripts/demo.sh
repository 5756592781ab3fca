#!/usr/bin/env bash
# The main job on built-in defaults: a development PKI, a real agent and a real controller client
# over mTLS on loopback, a LUKS2 disk image erased for real, all in a temporary directory.
# Installs cryptsetup (Debian's cryptsetup-bin) first when it is missing.
#
#   scripts/demo.sh [--seconds N] [--keep DIR]
#
# `--keep DIR` keeps the PKI, the agent's log (DIR/logs/agent.log), the image and the signed
# certificate. The demo is built with the `dev` feature (the shipped binary has no demo), in the
# release profile (the erase's AES pattern is slow unoptimised). scripts/test.sh runs this script
# and checks the log.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cryptsetup >/dev/null 2>&1 && [ ! -x /usr/sbin/cryptsetup ] && [ ! -x /sbin/cryptsetup ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "cryptsetup is missing: install cryptsetup-bin (or run as root to let this script do it)" >&2
    exit 1
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cryptsetup-bin >/dev/null
fi
exec cargo run --release -q -p jex-agent --features dev -- demo "$@"
