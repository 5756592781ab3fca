#!/usr/bin/env bash
# Shows that scripts/check-architecture.sh fails when it should: it is run on copies of this
# repository (its tracked and unignored files, in a temporary git repository) that break each
# rule, one at a time and several at once, and must exit 1 with one line per violation; on an
# unbroken copy it must exit 0. Needs git, cargo (offline: the copies use the dependencies
# already in Cargo.lock) and python3; no root.
#
#   scripts/tests/check-architecture.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
CHECK=$REPO/scripts/check-architecture.sh
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

failed=0
cases=0

# fresh NAME: a new copy of the repository, printed as its path.
fresh() {
  local dir=$WORK/$1
  mkdir -p "$dir"
  git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
    xargs -0 cp --parents -t "$dir"
  git -C "$dir" init -q
  git -C "$dir" add -A
  echo "$dir"
}

# add_after DIR FILE HEADER TEXT: inserts TEXT on the line after the line HEADER of FILE.
add_after() {
  python3 - "$1/$2" "$3" "$4" <<'PY'
import sys
path, header, text = sys.argv[1:]
lines = open(path).read().split("\n")
i = lines.index(header)
lines[i + 1:i + 1] = text.split("\n")
open(path, "w").write("\n".join(lines))
PY
}

# The breakages, one rule each.
# jex-reclaim: nothing whose rule forbids tokio depends on it, so this is one violation.
break_graph() { add_after "$1" crates/reclaim/Cargo.toml '[dependencies]' 'tokio = { workspace = true }'; }
# jex-relay: the packaging tools are no part of the controller side.
break_relay() { add_after "$1" crates/relay/Cargo.toml '[dependencies]' 'jex-packaging = { workspace = true }'; }
break_unsafe() { printf '\n/// Broken on purpose.\npub unsafe fn broken() {}\n' >>"$1/crates/telemetry/src/lib.rs"; }
break_cfg() { printf '\n/// Broken on purpose.\n#[cfg(target_os = "linux")]\npub fn broken() {}\n' >>"$1/crates/spool/src/lib.rs"; }
break_forbid() { sed -i '/^#!\[forbid(unsafe_code)\]$/d' "$1/crates/attest/src/lib.rs"; }
break_dep_line() { add_after "$1" proto/Cargo.toml '[dependencies]' 'hex = "0.4"'; }
break_dep_line2() { add_after "$1" crates/telemetry/Cargo.toml '[dependencies]' 'hex = "0.4"'; }
# jex-agent with its development feature on by default: the shipped binary would carry rcgen.
break_dev() { sed -i 's/^dev = \["dep:rcgen"\]$/default = ["dev"]\ndev = ["dep:rcgen"]/' "$1/agent/Cargo.toml"; }
break_dep_table() { printf '\n[dev-dependencies.hex]\nversion = "0.4"\n' >>"$1/crates/telemetry/Cargo.toml"; }

# What each breakage must make the check say.
declare -A said=(
  [graph]='jex-reclaim depends on tokio'
  [relay]='jex-relay depends on jex-packaging'
  [unsafe]='unsafe outside crates/platform: crates/telemetry/src/lib.rs'
  [cfg]='cfg(target_os) outside crates/platform: crates/spool/src/lib.rs'
  [forbid]='crate root without #![forbid(unsafe_code)]: crates/attest/src/lib.rs'
  [dev]='jex-agent depends on rcgen'
  [dep_line]='dependency not from the workspace list: proto/Cargo.toml: hex = "0.4"'
  [dep_line2]='dependency not from the workspace list: crates/telemetry/Cargo.toml: hex = "0.4"'
  [dep_table]='dependency not from the workspace list: crates/telemetry/Cargo.toml: [dev-dependencies.hex] (no workspace = true)'
)

# case NAME BREAKAGE...: a fresh copy with every named breakage must fail with exactly one line
# per breakage and the count; with none it must pass.
case_() {
  local name=$1 dir out rc=0 b violations
  shift
  cases=$((cases + 1))
  dir=$(fresh "$name")
  for b in "$@"; do "break_$b" "$dir"; done
  # Manifests that gained a dependency need the lock file to follow (offline: it is one already
  # in the lock), as `cargo build` would; the check itself runs cargo with --locked.
  (cd "$dir" && cargo update --workspace --offline --quiet) || {
    echo "FAIL $name: cargo update --workspace --offline failed on the broken copy" >&2
    failed=$((failed + 1))
    return
  }
  out=$(bash "$CHECK" "$dir" 2>&1) || rc=$?
  violations=$(grep -c '^architecture: ' <<<"$out" || true)
  local problems=()
  if (($# == 0)); then
    [ "$rc" -eq 0 ] || problems+=("exit $rc, expected 0")
    grep -q 'are as documented$' <<<"$out" || problems+=("no success line")
  else
    [ "$rc" -eq 1 ] || problems+=("exit $rc, expected 1")
    # One line per violation, plus the summary line.
    [ "$violations" -eq $(($# + 1)) ] || problems+=("$((violations - 1)) violation line(s), expected $#")
    grep -qxF "architecture: $# violation(s)" <<<"$out" || problems+=("no summary 'architecture: $# violation(s)'")
    for b in "$@"; do
      grep -qF "architecture: ${said[$b]}" <<<"$out" || problems+=("nothing says '${said[$b]}'")
    done
  fi
  if ((${#problems[@]})); then
    failed=$((failed + 1))
    echo "FAIL $name (${*:-no breakage}):" >&2
    printf '  %s\n' "${problems[@]}" >&2
    printf '  | %s\n' "${out//$'\n'/$'\n'  | }" >&2
  else
    echo "ok   $name: exit $rc${1:+, $# violation(s) reported}"
  fi
  rm -rf "$dir"
}

case_ clean
for b in graph relay unsafe cfg forbid dev dep_line dep_table; do
  case_ "$b" "$b"
done
# Two manifests at once (the pipeline that used to swallow this exited 0).
case_ two_manifests dep_line dep_line2
case_ everything graph unsafe cfg forbid dev dep_line dep_line2 dep_table

if ((failed)); then
  echo "check-architecture: $failed of $cases case(s) failed" >&2
  exit 1
fi
echo "check-architecture: all $cases cases behave"
