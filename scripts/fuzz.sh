#!/usr/bin/env bash
# Fuzzes the parsers of untrusted input with cargo-fuzz (libFuzzer, AddressSanitizer). The
# targets live in fuzz/ (its own cargo workspace); each has a seed corpus in fuzz/corpus/<target>/.
#
#   scripts/fuzz.sh ci                       every target for a short bounded time; fails on a crash
#   scripts/fuzz.sh long [SECONDS] [TARGET...]  long runs (default 600 s each, every target)
#   scripts/fuzz.sh seeds [TARGET...]        regenerates fuzz/fixtures/ and fuzz/corpus/ (commit both),
#                                            of every target or of the named ones
#
# Only the stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it take cargo-fuzz's unstable
# flags. cargo-fuzz is installed, pinned, when missing, outside the clone (scripts/tools.sh:
# ~/.cache/jex-agent/tools/cargo-fuzz-<version>, or $JEX_TOOLS_DIR). Builds go to
# target/fuzz/; inputs a run finds go to target/fuzz-corpus/<target>/ (the committed seeds are
# only read), crashes to fuzz/artifacts/<target>/ (not committed). A crash fails the run and
# prints the input's path: reproduce with `scripts/fuzz.sh repro TARGET FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/tools.sh
. scripts/tools.sh
CARGO_FUZZ_VERSION=0.13.2
TOOLS=$(tool_dir cargo-fuzz "$CARGO_FUZZ_VERSION")
TARGETS=(cert_bundle pkg_verify darwin_parsers diskutil_parsers client_san
  spool_segments erase_journal agent_config status_request)
# Per-target budget in ci mode: 9 targets x 20 s (3 minutes of fuzzing) on 2 cores, plus the
# build.
CI_SECONDS=${FUZZ_CI_SECONDS:-20}

export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$PWD/target/fuzz"

cargo_fuzz_ok() { [ "$("$1/bin/cargo-fuzz" --version 2>/dev/null)" = "cargo-fuzz $CARGO_FUZZ_VERSION" ]; }
cargo_fuzz_install() {
  echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION into $1"
  # Its own target dir: not the fuzz build's, and not kept.
  CARGO_TARGET_DIR="$1.build" cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION" --root "$1"
  local rc=$?
  rm -rf "$1.build"
  return "$rc"
}
tool_install "$TOOLS" cargo_fuzz_ok cargo_fuzz_install
cargo_fuzz() { "$TOOLS/bin/cargo-fuzz" fuzz "$@"; }

build() {
  echo "== cargo fuzz build (address sanitizer, release with debug assertions)"
  (cd fuzz && cargo_fuzz build --target-dir "$CARGO_TARGET_DIR")
}

# run TARGET SECONDS: fuzzes TARGET from its committed seeds plus what earlier runs found.
run() {
  local target=$1 seconds=$2
  local found="target/fuzz-corpus/$target"
  mkdir -p "$found" "fuzz/artifacts/$target"
  echo "== $target: ${seconds}s"
  # -rss_limit_mb bounds memory per input (2 cores and 24 GiB are shared); -timeout flags an
  # input that takes more than 10 s as a hang. The whole output goes to target/fuzz-TARGET.log.
  local log="target/fuzz-$target.log" rc=0
  (cd fuzz && cargo_fuzz run --target-dir "$CARGO_TARGET_DIR" "$target" \
    "../$found" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1) \
    >"$log" 2>&1 || rc=$?
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
  echo "corpus: $(find "$found" -type f | wc -l) found + $(find "fuzz/corpus/$target" -type f | wc -l) seeds"
  if [ "$rc" -ne 0 ]; then
    tail -n 60 "$log" >&2
    echo "fuzz target $target failed (exit $rc): see $log and fuzz/artifacts/$target/" >&2
    return 1
  fi
}

mode=${1:-}
case "$mode" in
  ci)
    build
    failed=()
    for target in "${TARGETS[@]}"; do
      run "$target" "$CI_SECONDS" || failed+=("$target")
    done
    if ((${#failed[@]})); then
      echo "fuzz: crashes in ${failed[*]}" >&2
      exit 1
    fi
    echo "fuzz: ${#TARGETS[@]} targets, ${CI_SECONDS}s each, no crash"
    ;;
  long)
    shift
    seconds=600
    if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then
      seconds=$1
      shift
    fi
    targets=("$@")
    ((${#targets[@]})) || targets=("${TARGETS[@]}")
    build
    for target in "${targets[@]}"; do
      run "$target" "$seconds"
    done
    ;;
  repro)
    [ $# -eq 3 ] || { echo "usage: $0 repro TARGET FILE" >&2; exit 2; }
    input=$(realpath "$3")
    (cd fuzz && cargo_fuzz run --target-dir "$CARGO_TARGET_DIR" "$2" "$input")
    ;;
  seeds)
    # A plain (uninstrumented) build of the generator, with the features the targets never use.
    unset RUSTC_BOOTSTRAP
    shift
    cargo run --locked --manifest-path fuzz/Cargo.toml --features seeds --bin seeds -- "$@"
    ;;
  *)
    echo "usage: $0 ci | long [SECONDS] [TARGET...] | repro TARGET FILE | seeds [TARGET...]" >&2
    exit 2
    ;;
esac
