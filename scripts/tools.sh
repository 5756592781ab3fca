# shellcheck shell=bash
# Sourced by the scripts that install pinned tools (test.sh, fuzz.sh, macos.sh, package.sh): where
# the tools go, and how runs and clones share them.
#
# Every tool lives outside the clone, in one directory per tool and version:
#
#   ${JEX_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/jex-agent/tools}/<tool>-<version>
#
# so a second clone on the same machine (or a `cargo clean`) reuses what the first installed,
# and a new pin installs beside the old one instead of over it. Installs take an exclusive lock
# (<dir>.lock, flock) so that two runs at once install a tool once; an install that fails leaves
# no directory behind. Remove the directory to force a reinstall.

JEX_TOOLS_DIR=${JEX_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/jex-agent/tools}

# tool_dir NAME VERSION: the directory of that tool at that version.
tool_dir() { printf '%s/%s-%s\n' "$JEX_TOOLS_DIR" "$1" "$2"; }

# tool_install DIR CHECK INSTALL: unless `CHECK DIR` succeeds, runs `INSTALL DIR` (DIR does not
# exist then) and checks again, under the lock of DIR. CHECK and INSTALL are function names.
tool_install() {
  local dir=$1 check=$2 install=$3
  mkdir -p "$JEX_TOOLS_DIR" || { echo "tools: cannot create $JEX_TOOLS_DIR (set JEX_TOOLS_DIR)" >&2; return 1; }
  command -v flock >/dev/null 2>&1 || { echo "tools: flock is missing (Debian: util-linux)" >&2; return 1; }
  (
    flock 9
    "$check" "$dir" && exit 0
    rm -rf "$dir"
    if ! "$install" "$dir"; then
      rm -rf "$dir"
      echo "tools: installing $dir failed" >&2
      exit 1
    fi
    if ! "$check" "$dir"; then
      echo "tools: $dir was installed but does not pass its check" >&2
      exit 1
    fi
  ) 9>"$dir.lock"
}
