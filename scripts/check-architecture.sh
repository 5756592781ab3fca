#!/usr/bin/env bash
# Checks that the crate graph is the architecture the README describes, so that it cannot drift:
#
#   jex-agent (cli -> app -> server) -> jex-erase -> jex-attest
#                                    -> jex-spool
#                                    -> jex-platform -> jex-telemetry
#
# - jex-attest (certificates) builds without tokio, tonic or nix: controllers and auditors use it
#   alone to check an erase certificate;
# - jex-telemetry (the model) and jex-spool (generic records) know no OS, runtime or gRPC;
# - `unsafe` and `cfg(target_os)` appear only in crates/platform;
# - every member takes its dependencies from the workspace's one list (fuzz/ is its own workspace,
#   as cargo-fuzz wants, and is not a member).
#
# Run from anywhere; exits non-zero with a line per broken rule.
set -euo pipefail
cd "$(dirname "$0")/.."

failures=0
fail() {
  echo "architecture: $*" >&2
  failures=$((failures + 1))
}

# The normal (non-dev, non-build) dependency closure of a crate, one crate name per line.
closure() {
  cargo tree --locked -p "$1" -e normal --prefix none --format '{p}' 2>/dev/null |
    awk '{print $1}' | sort -u
}

forbid() { # crate, then the crates it must not reach
  local crate=$1
  shift
  local deps
  deps=$(closure "$crate")
  if [ -z "$deps" ]; then
    fail "cargo tree found nothing for $crate"
    return
  fi
  for banned in "$@"; do
    if grep -qx "$banned" <<<"$deps"; then
      fail "$crate depends on $banned (directly or not): $(cargo tree --locked -p "$crate" -e normal -i "$banned" --depth 2 2>/dev/null | tr '\n' ' ')"
    fi
  done
}

forbid jex-telemetry jex-platform jex-spool jex-attest jex-erase jex-agent tokio tonic nix libc
forbid jex-attest jex-platform jex-spool jex-erase jex-agent tokio tonic nix
forbid jex-spool jex-telemetry jex-platform jex-attest jex-erase jex-agent tokio tonic
forbid jex-platform jex-spool jex-attest jex-erase jex-agent tokio tonic
forbid jex-erase jex-spool jex-agent tonic jex-proto

# `unsafe` (code, not comments) and cfg(target_os) only in the platform crate.
rust_files() { git ls-files '*.rs' | grep -v '^crates/platform/'; }
while IFS= read -r hit; do
  fail "unsafe outside crates/platform: $hit"
done < <(rust_files | xargs grep -nE '(^|[^_[:alnum:]"])unsafe([[:space:]]*\{|[[:space:]]+(fn|impl|extern|trait))' | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true)
while IFS= read -r hit; do
  fail "cfg(target_os) outside crates/platform: $hit"
done < <(rust_files | xargs grep -nE 'cfg!?\((not\()?(any\()?target_os' | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true)

# One dependency list: in members, every dependency line says `workspace = true`.
while IFS= read -r manifest; do
  awk -v file="$manifest" '
    /^\[/ { deps = ($0 ~ /dependencies\]$/) ; next }
    deps && /^[A-Za-z0-9_-]+[[:space:]]*=/ && $0 !~ /workspace[[:space:]]*=[[:space:]]*true/ {
      print file ": " $0
    }' "$manifest"
done < <(git ls-files '*Cargo.toml' | grep -vx 'Cargo.toml' | grep -v '^fuzz/') | while IFS= read -r line; do
  echo "architecture: dependency not from the workspace list: $line" >&2
  echo x
done | grep -q x && failures=$((failures + 1))

if ((failures)); then
  echo "architecture: $failures rule(s) broken" >&2
  exit 1
fi
echo "architecture: crate graph, unsafe, cfg(target_os) and the dependency list are as documented"
