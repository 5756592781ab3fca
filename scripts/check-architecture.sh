#!/usr/bin/env bash
# Checks that the crate graph is the architecture the README describes, so that it cannot drift:
#
#   jex-agent (cli -> app -> server) -> jex-erase -> jex-attest
#                                    -> jex-spool
#                                    -> jex-platform -> jex-telemetry
#   jex-sim -> jex-agent (feature dev: app::start_with, the development PKI)
#   jex-relay (controller side) -> jex-agent (telemetry wire form, /metrics families), jex-proto
#
# - jex-attest (certificates) builds without tokio, tonic or nix: controllers and auditors use it
#   alone to check an erase certificate;
# - jex-reclaim (the inventory, prepare record and evidence rules of a two-halves reclaim) builds
#   on jex-attest alone, without the agent, the platform crate, tokio, tonic or nix;
# - jex-telemetry (the model) and jex-spool (generic records) know no OS, runtime or gRPC;
# - the shipped jex-agent (no features) does not reach rcgen: the development PKI and the seams of
#   `app::start_with` come only with its `dev` feature, which jex-sim and the end-to-end tests turn
#   on for themselves;
# - jex-sim and jex-relay meet only at the agent's proto and the relay's TOML host list: neither
#   depends on the other;
# - jex-relay (the controller-side relay) reaches no packaging tool, and its NATS, gRPC and HTTP
#   clients stay on rustls with ring: no aws-lc-rs, no OpenSSL;
# - `unsafe` and `cfg(target_os)` appear only in crates/platform;
# - every crate root (library and binary targets) of every member but jex-platform says
#   `#![forbid(unsafe_code)]`, so that no inner `allow` can undo the workspace's `deny`;
# - every member takes its dependencies from the workspace's one list (fuzz/ is its own workspace,
#   as cargo-fuzz wants, and is not a member).
#
#   scripts/check-architecture.sh [ROOT]
#
# ROOT is the workspace to check (a git work tree; default: this repository). Prints one line per
# violation and exits 1 when there is any, 0 otherwise; 2 when it cannot run at all (no cargo,
# ROOT not a cargo workspace). scripts/tests/check-architecture.sh feeds it broken copies of the
# repository to show that every rule fails when it should.
set -euo pipefail
ROOT=${1:-"$(dirname "$0")/.."}
cd "$ROOT" || { echo "architecture: cannot enter $ROOT" >&2; exit 2; }
[ -f Cargo.toml ] || { echo "architecture: $PWD has no Cargo.toml" >&2; exit 2; }
command -v cargo >/dev/null 2>&1 || { echo "architecture: cargo is not installed" >&2; exit 2; }
command -v python3 >/dev/null 2>&1 || { echo "architecture: python3 is not installed" >&2; exit 2; }

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
  deps=$(closure "$crate" || true)
  if [ -z "$deps" ]; then
    fail "cargo tree found nothing for $crate (is Cargo.lock up to date? try cargo tree --locked -p $crate)"
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
forbid jex-reclaim jex-platform jex-spool jex-erase jex-agent tokio tonic nix
forbid jex-agent rcgen
forbid jex-sim jex-relay
forbid jex-relay jex-packaging aws-lc-rs aws-lc-sys openssl-sys native-tls

# `unsafe` (code, not comments) and cfg(target_os) only in the platform crate. Every loop below
# reads from a process substitution, so that `fail` counts in this shell.
rust_files() { git ls-files '*.rs' | grep -v '^crates/platform/' || true; }
while IFS= read -r hit; do
  fail "unsafe outside crates/platform: $hit"
done < <(rust_files | xargs -r grep -nE '(^|[^_[:alnum:]"])unsafe([[:space:]]*\{|[[:space:]]+(fn|impl|extern|trait))' | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true)
while IFS= read -r hit; do
  fail "cfg(target_os) outside crates/platform: $hit"
done < <(rust_files | xargs -r grep -nE 'cfg!?\((not\()?(any\()?target_os' | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true)

# Every crate root but the platform crate's forbids unsafe code. The roots are the library and
# binary targets cargo itself finds (src/lib.rs, src/main.rs, src/bin/*, [[bin]] paths).
roots=$(cargo metadata --locked --no-deps --format-version 1 2>/dev/null |
  python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
root = os.path.realpath(meta["workspace_root"])
for p in meta["packages"]:
    if p["name"] == "jex-platform":
        continue
    for t in p["targets"]:
        if set(t["kind"]) & {"lib", "rlib", "bin", "proc-macro"}:
            print(os.path.relpath(os.path.realpath(t["src_path"]), root))
' || true)
if [ -z "$roots" ]; then
  fail "cargo metadata found no crate roots (is Cargo.lock up to date? try cargo metadata --locked)"
fi
while IFS= read -r crate_root; do
  [ -n "$crate_root" ] || continue
  if ! grep -qE '^#!\[forbid\(([^)]*[[:space:],])?unsafe_code([[:space:],][^)]*)?\)\]' "$crate_root"; then
    fail "crate root without #![forbid(unsafe_code)]: $crate_root"
  fi
done <<<"$roots"

# One dependency list: in members, every dependency says `workspace = true`, both as a line of a
# `[...dependencies]` table and as a `[...dependencies.NAME]` table of its own.
while IFS= read -r line; do
  fail "dependency not from the workspace list: $line"
done < <(git ls-files '*Cargo.toml' | grep -vx 'Cargo.toml' | grep -v '^fuzz/' |
  while IFS= read -r manifest; do
    awk -v file="$manifest" '
      function close_table() {
        if (table != "" && !workspace) print file ": " table " (no workspace = true)"
        table = ""
      }
      /^[[:space:]]*\[/ {
        close_table()
        deps = ($0 ~ /dependencies\][[:space:]]*$/)
        if ($0 ~ /dependencies\.[^]]+\][[:space:]]*$/) { table = $0; workspace = 0 }
        next
      }
      table != "" && /^[[:space:]]*workspace[[:space:]]*=[[:space:]]*true/ { workspace = 1 }
      deps && /^[A-Za-z0-9_-]+[[:space:]]*=/ && $0 !~ /workspace[[:space:]]*=[[:space:]]*true/ {
        print file ": " $0
      }
      END { close_table() }' "$manifest"
  done)

if ((failures)); then
  echo "architecture: $failures violation(s)" >&2
  exit 1
fi
echo "architecture: crate graph, unsafe, forbid(unsafe_code), cfg(target_os) and the dependency list are as documented"
