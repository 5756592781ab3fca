#!/usr/bin/env bash
# Cross-builds the workspace for Apple Silicon Macs (aarch64-apple-darwin) on Debian 12 x86_64,
# with no Apple SDK. On a Mac, plain `cargo build --release -p jex-agent` does the same job.
#
#   scripts/macos.sh tools     # install the pinned toolchain (once; cached outside the clone)
#   scripts/macos.sh check     # cargo check, whole workspace, all targets
#   scripts/macos.sh clippy    # cargo clippy, whole workspace, all targets, -D warnings
#   scripts/macos.sh build     # release build and link of the jex-agent binary; prints its path
#   scripts/macos.sh env       # prints the environment, for running cargo by hand: eval "$(...)"
#   scripts/macos.sh min-os    # prints the package's minimum macOS (installs nothing)
#
# Every command installs the tools first when they are missing (Debian packages need root) and
# fails when it cannot: nothing is skipped. The build goes to target/macos, away from the host
# build's fingerprints.
#
# The toolchain:
# - Rust: Debian's rustc-web/cargo-web/rust-web-clippy and its std source (rust-web-src), any
#   1.x release from the workspace's rust-version (Cargo.toml) on: today bookworm-security carries
#   1.96. The newest such version apt offers is installed, the four packages at the same version;
#   when none is offered the script says which versions are and stops. No prebuilt std for the
#   Mac exists in Debian, so std is compiled from that source with -Zbuild-std; RUSTC_BOOTSTRAP=1
#   allows the -Z flag on this stable compiler. The compiler must be the exact version of the
#   source (checked), which is why rustup's toolchain is not used here. The Debian binaries are
#   put first on PATH only inside this script.
# - C compiler (ring, tracing-oslog) and linker: zig, from PyPI's `ziglang`, driven by
#   `cargo-zigbuild`, both pinned, in a virtualenv outside the clone (scripts/tools.sh:
#   ~/.cache/jex-agent/tools/macos-zig-<versions>, or $JEX_TOOLS_DIR). zig ships the macOS libc
#   headers and libSystem's link stubs (.tbd), but no frameworks: test binaries that pull
#   CoreFoundation (jex-packaging's and the end-to-end tests, through apple-bom -> chrono ->
#   iana-time-zone) are checked and linted here, not linked.
# - zig's headers lack <os/log.h> and <os/activity.h>, which tracing-oslog's C shim includes;
#   minimal declarations of what the shim uses are written to target/tools/macos/sdk-include.
#   The functions themselves live in libSystem (libsystem_trace).
# - rustc warns at link time that `xcrun` is missing (it looks for an SDK to hand the linker);
#   zig links against its own libSystem stubs, so that warning is expected here.
# - MACOSX_DEPLOYMENT_TARGET is the package's minimum macOS (MIN_MACOS_VERSION in
#   packaging/src/layout.rs, the value the Distribution's allowed-os-versions uses), so the
#   binary's LC_BUILD_VERSION minos matches what the installer allows (zig's default is newer).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TARGET=aarch64-apple-darwin
# rustc-web, cargo-web, rust-web-src, rust-web-clippy: any 1.x from RUST_DEBIAN_MIN (default: the
# workspace's rust-version) on.
RUST_DEBIAN_PACKAGES=(rustc-web cargo-web rust-web-src rust-web-clippy)
ZIGLANG_VERSION=0.17.1              # PyPI ziglang
CARGO_ZIGBUILD_VERSION=0.24.1       # PyPI cargo-zigbuild
# shellcheck source=scripts/tools.sh
. scripts/tools.sh
ZIG_VENV=$(tool_dir macos-zig "$ZIGLANG_VERSION-cargo-zigbuild-$CARGO_ZIGBUILD_VERSION")
# What this script generates (the SDK header stand-ins, the PATH prefix) stays in the clone.
TOOLS=$ROOT/target/tools/macos
MAC_TARGET_DIR=${MAC_TARGET_DIR:-$ROOT/target/macos}
AGENT_PACKAGE=${AGENT_PACKAGE:-jex-agent}
AGENT_BIN=jex-agent
JOBS=${JOBS:-$(nproc)}

die() { echo "macos.sh: $*" >&2; exit 1; }

min_macos() {
  local v
  v=$(sed -n 's/^pub const MIN_MACOS_VERSION: &str = "\([0-9][0-9.]*\)";$/\1/p' packaging/src/layout.rs)
  [ -n "$v" ] || die "MIN_MACOS_VERSION not found in packaging/src/layout.rs"
  echo "$v"
}

# The workspace's rust-version, the oldest Rust it builds with.
rust_version() {
  local v
  v=$(sed -n '/^\[workspace.package\]/,/^\[/s/^rust-version = "\([0-9][0-9.]*\)"$/\1/p' Cargo.toml)
  [ -n "$v" ] || die "rust-version not found in [workspace.package] of Cargo.toml"
  echo "$v"
}

# rust_fits DEBIAN_VERSION: whether a Debian version (e.g. 1.96.0+dfsg1-1~deb12u2) of the Rust
# packages is in the range this build takes: 1.x, x.y at least RUST_DEBIAN_MIN.
rust_fits() {
  local upstream=${1#*:} min=$RUST_DEBIAN_MIN
  upstream=${upstream%%[+~-]*}
  [[ $upstream =~ ^1\.[0-9]+(\.[0-9]+)?$ ]] || return 1
  [ "$(printf '%s\n%s\n' "$min" "$upstream" | sort -V | head -n1)" = "$min" ]
}

# The newest version offered by apt for every Rust package, in the range; empty when none.
rust_candidate() {
  local p versions common=''
  for p in "${RUST_DEBIAN_PACKAGES[@]}"; do
    versions=$(apt-cache madison "$p" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | sort -u)
    if [ -z "$common" ]; then
      common=$versions
    else
      common=$(comm -12 <(echo "$common") <(echo "$versions"))
    fi
  done
  local v best=''
  while IFS= read -r v; do
    [ -n "$v" ] && rust_fits "$v" && best=$v
  done < <(echo "$common" | sort -V)
  echo "$best"
}

install_debian_rust() {
  RUST_DEBIAN_MIN=${RUST_DEBIAN_MIN:-$(rust_version)}
  local p installed version='' ok=1
  for p in "${RUST_DEBIAN_PACKAGES[@]}"; do
    installed=$(dpkg-query -W -f='${Status} ${Version}' "$p" 2>/dev/null || true)
    case "$installed" in
      "install ok installed "*) ;;
      *) ok=0; continue ;;
    esac
    installed=${installed#install ok installed }
    rust_fits "$installed" || ok=0
    # The four must be one release: the compiler and its std source above all.
    [ -z "$version" ] || [ "$version" = "$installed" ] || ok=0
    version=$installed
  done
  ((ok)) && return 0
  [ "$(id -u)" -eq 0 ] ||
    die "Debian's Rust (${RUST_DEBIAN_PACKAGES[*]}, one version, 1.x >= $RUST_DEBIAN_MIN) is missing or mixed: run as root or install them first"
  apt-get update -qq
  version=$(rust_candidate)
  if [ -z "$version" ]; then
    local offered
    offered=$(apt-cache madison rustc-web 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); gsub(/^ +| +$/, "", $3); print "  " $2 " (" $3 ")"}')
    die "no version of ${RUST_DEBIAN_PACKAGES[*]} in the apt sources is 1.x >= $RUST_DEBIAN_MIN (RUST_DEBIAN_MIN, by default the workspace's rust-version) for all four; apt offers rustc-web:
${offered:-  nothing}
Add Debian's bookworm-security (or a newer suite) to the apt sources, or set RUST_DEBIAN_MIN to accept an older one."
  fi
  echo "== apt: ${RUST_DEBIAN_PACKAGES[*]} $version" >&2
  local args=()
  for p in "${RUST_DEBIAN_PACKAGES[@]}"; do args+=("$p=$version"); done
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --allow-downgrades "${args[@]}" >/dev/null
}

zig_ok() {
  [ -x "$1/bin/python3" ] &&
    [ "$("$1/bin/python3" -m ziglang version 2>/dev/null)" = "$ZIGLANG_VERSION" ] &&
    [ "$("$1/bin/cargo-zigbuild" --version 2>/dev/null)" = "cargo-zigbuild $CARGO_ZIGBUILD_VERSION" ]
}
zig_install() {
  echo "== pip: ziglang $ZIGLANG_VERSION, cargo-zigbuild $CARGO_ZIGBUILD_VERSION into $1" >&2
  python3 -m venv "$1" &&
    "$1/bin/python3" -m pip install -q --disable-pip-version-check --no-cache-dir \
      "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION" >&2
}
install_zig() {
  zig_ok "$ZIG_VENV" && return 0
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    [ "$(id -u)" -eq 0 ] || die "python3 cannot make a virtualenv: install python3-venv or run as root"
    echo "== apt: python3-venv" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  tool_install "$ZIG_VENV" zig_ok zig_install || die "installing zig and cargo-zigbuild into $ZIG_VENV failed"
}

# Writes stdin to $1 only when the content differs, so that nothing rebuilds needlessly.
write_if_changed() {
  local tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mkdir -p "$(dirname "$1")"; mv "$tmp" "$1"; fi
}

write_sdk_headers() {
  write_if_changed "$TOOLS/sdk-include/os/log.h" <<'EOF'
/* jex-agent cross build: the subset of the macOS SDK's <os/log.h> that tracing-oslog's C shim
 * uses. zig's darwin headers do not have this file; the symbols are in libSystem. */
#ifndef JEX_CROSS_OS_LOG_H
#define JEX_CROSS_OS_LOG_H
#include <os/base.h>
#include <stdbool.h>
#include <stdint.h>
typedef struct os_log_s *os_log_t;
typedef uint8_t os_log_type_t;
#define OS_LOG_TYPE_DEFAULT ((os_log_type_t)0x00)
#define OS_LOG_TYPE_INFO    ((os_log_type_t)0x01)
#define OS_LOG_TYPE_DEBUG   ((os_log_type_t)0x02)
#define OS_LOG_TYPE_ERROR   ((os_log_type_t)0x10)
#define OS_LOG_TYPE_FAULT   ((os_log_type_t)0x11)
extern struct os_log_s _os_log_default;
#define OS_LOG_DEFAULT (&_os_log_default)
extern void *__dso_handle;
os_log_t os_log_create(const char *subsystem, const char *category);
bool os_log_type_enabled(os_log_t oslog, os_log_type_t type);
void _os_log_impl(void *dso, os_log_t log, os_log_type_t type, const char *format,
                  uint8_t *buf, uint32_t size);
/* As in the SDK: the format string goes to __TEXT,__oslogstring and the arguments are packed
 * by the compiler's os_log builtins. */
#define os_log_with_type(log, type, format, ...) __extension__({                            \
    os_log_t _jex_log = (log);                                                             \
    os_log_type_t _jex_type = (type);                                                      \
    if (os_log_type_enabled(_jex_log, _jex_type)) {                                        \
        __attribute__((section("__TEXT,__oslogstring,cstring_literals")))                  \
        static const char _jex_fmt[] = format;                                             \
        uint8_t _jex_buf[__builtin_os_log_format_buffer_size(format, ##__VA_ARGS__)];      \
        _os_log_impl(&__dso_handle, _jex_log, _jex_type, _jex_fmt,                         \
                     (uint8_t *)__builtin_os_log_format(_jex_buf, format, ##__VA_ARGS__),  \
                     (uint32_t)sizeof(_jex_buf));                                          \
    }                                                                                      \
})
#endif
EOF
  write_if_changed "$TOOLS/sdk-include/os/activity.h" <<'EOF'
/* jex-agent cross build: tracing-oslog's shim includes <os/activity.h> but uses nothing from it
 * (the Rust side declares the activity functions itself). */
#ifndef JEX_CROSS_OS_ACTIVITY_H
#define JEX_CROSS_OS_ACTIVITY_H
#include <os/base.h>
#endif
EOF
}

install_tools() {
  install_debian_rust
  local release src
  release=$(/usr/bin/rustc -vV | sed -n 's/^release: //p')
  src=$(readlink -f /usr/lib/rustlib/src/rust)
  if [ "$(basename "$src")" != "rustc-$release" ] || [ ! -d "$src/library/std" ]; then
    die "the std source $src is not that of /usr/bin/rustc $release"
  fi
  if [ ! -x /usr/bin/cargo-clippy ] || [ ! -x /usr/bin/clippy-driver ]; then
    die "rust-web-clippy is not installed"
  fi
  install_zig
  mkdir -p "$TOOLS/bin"
  local b
  for b in cargo rustc rustdoc cargo-clippy clippy-driver; do
    ln -sfn "/usr/bin/$b" "$TOOLS/bin/$b"
  done
  write_sdk_headers
}

setup_env() {
  export PATH="$TOOLS/bin:$ZIG_VENV/bin:$PATH"
  export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
  # A toolchain override or a compiler wrapper (sccache...) from the caller is for the host build.
  unset RUSTUP_TOOLCHAIN RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER
  export CARGO_TARGET_DIR=$MAC_TARGET_DIR
  export CFLAGS_aarch64_apple_darwin="-I$TOOLS/sdk-include"
  MACOSX_DEPLOYMENT_TARGET=$(min_macos)
  export MACOSX_DEPLOYMENT_TARGET
}

cmd=${1:-}
[ $# -le 1 ] || die "one command at a time"
case "$cmd" in
  tools | check | clippy | build | env) ;;
  min-os) min_macos; exit 0 ;;
  *) die "usage: scripts/macos.sh tools|check|clippy|build|env|min-os" ;;
esac

install_tools
setup_env
common=(--locked -j"$JOBS" --target "$TARGET" "-Zbuild-std=std,panic_abort")
if [ "$cmd" != build ]; then
  echo "== $(cargo --version), $(rustc --version), zig $(python3 -m ziglang version), $(cargo-zigbuild --version)" >&2
  echo "== target $TARGET, MACOSX_DEPLOYMENT_TARGET=$MACOSX_DEPLOYMENT_TARGET, CARGO_TARGET_DIR=$CARGO_TARGET_DIR" >&2
fi

case "$cmd" in
  tools) ;;
  env)
    # For running other cargo commands by hand: eval "$(scripts/macos.sh env)"
    for v in PATH RUSTC RUSTDOC RUSTC_BOOTSTRAP CARGO_TARGET_DIR CFLAGS_aarch64_apple_darwin MACOSX_DEPLOYMENT_TARGET; do
      printf 'export %s=%q\n' "$v" "${!v}"
    done
    ;;
  check)
    cargo-zigbuild check "${common[@]}" --keep-going --workspace --all-targets
    ;;
  clippy)
    cargo-zigbuild clippy "${common[@]}" --keep-going --workspace --all-targets -- -D warnings
    ;;
  build)
    # Progress to stderr; stdout is only the binary's path, for scripts/package.sh.
    cargo-zigbuild zigbuild "${common[@]}" --release -p "$AGENT_PACKAGE" --bin "$AGENT_BIN" >&2
    bin=$CARGO_TARGET_DIR/$TARGET/release/$AGENT_BIN
    [ -f "$bin" ] || die "$bin was not produced"
    echo "$bin"
    ;;
esac
