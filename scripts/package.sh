#!/usr/bin/env bash
# Builds the macOS package of jex-agent: the arm64 Mach-O, code-signed, inside a signed,
# reproducible .pkg; then checks both with tools that did not make them
# (scripts/check-macos-package.sh). The output directory also gets mdm/, the configuration
# profiles and declarations a fleet's MDM server installs with the package (mdm/README.md), and
# SHA256SUMS of everything.
#
#   scripts/package.sh                       # signed with a development PKI (not for production)
#   scripts/package.sh --codesign-cert app.pem --codesign-key app.key --codesign-chain chain.pem \
#                      --installer-cert inst.pem --installer-key inst.key --installer-chain chain.pem \
#                      --ca root.pem --version 1.2.3
#
# Options (all optional):
#   --version V           package version (default: the workspace version in Cargo.toml)
#   --out DIR             output directory (default: target/package)
#   --binary PATH         package this Mach-O instead of building it (for instance one built on
#                         a Mac with `cargo build --release -p jex-agent`)
#   --codesign MODE       identity (default): sign the binary with a certificate and key
#                         (Developer ID Application style: hardened runtime, identifier
#                         com.jexcloud.agent, no timestamp); adhoc: ad-hoc signature with the
#                         same identifier and flags; linker: keep the linker's ad-hoc signature
#   --codesign-cert/--codesign-key/--codesign-chain PEM   the code-signing identity
#   --timestamp-url URL   RFC 3161 time-stamp server for the code signature (notarization needs
#                         one, e.g. http://timestamp.apple.com/ts01; the binary is then no longer
#                         byte-reproducible). Default: none
#   --installer-cert/--installer-key/--installer-chain PEM the package-signing identity (RSA)
#   --ca PEM              the root the signatures must chain to (checked after signing)
#   --dev-pki DIR         where the development PKI is kept when no identity is given
#                         (default: target/package/dev-pki; made with openssl on first use)
#
# SOURCE_DATE_EPOCH (default: the time of the HEAD commit) is the timestamp of every file in the
# package and the signing time of both signatures, so that the same inputs give the same bytes;
# the script rebuilds the package a second time and fails if the bytes differ. Notarization
# needs Apple's service and is not done here (see the README).
#
# Tools: scripts/macos.sh's toolchain on Linux; rcodesign (apple-codesign, pinned) is installed
# with `cargo install` on first use, outside the clone (scripts/tools.sh:
# ~/.cache/jex-agent/tools/rcodesign-<version>, or $JEX_TOOLS_DIR); openssl for the development
# PKI.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# shellcheck source=scripts/tools.sh
. scripts/tools.sh
RCODESIGN_VERSION=0.29.0
RCODESIGN_ROOT=$(tool_dir rcodesign "$RCODESIGN_VERSION")
RCODESIGN=$RCODESIGN_ROOT/bin/rcodesign
IDENTIFIER=com.jexcloud.agent

die() { echo "package.sh: $*" >&2; exit 1; }

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml)
out=$ROOT/target/package
binary=
codesign=identity
cs_cert='' cs_key='' cs_chain=''
in_cert='' in_key='' in_chain=''
ca=''
dev_pki=$ROOT/target/package/dev-pki
timestamp_url=none
while (($#)); do
  [ $# -ge 2 ] || die "$1 needs a value"
  case "$1" in
    --version) version=$2 ;;
    --out) out=$2 ;;
    --binary) binary=$2 ;;
    --codesign) codesign=$2 ;;
    --codesign-cert) cs_cert=$2 ;;
    --codesign-key) cs_key=$2 ;;
    --codesign-chain) cs_chain=$2 ;;
    --installer-cert) in_cert=$2 ;;
    --installer-key) in_key=$2 ;;
    --installer-chain) in_chain=$2 ;;
    --ca) ca=$2 ;;
    --dev-pki) dev_pki=$2 ;;
    --timestamp-url) timestamp_url=$2 ;;
    *) die "unknown option $1 (see the header of scripts/package.sh)" ;;
  esac
  shift 2
done
case "$codesign" in identity | adhoc | linker) ;; *) die "--codesign is identity, adhoc or linker" ;; esac
[ -n "$version" ] || die "no version in Cargo.toml's [workspace.package]: pass --version"
abspath() { [ -z "$1" ] || { [ -e "$1" ] || die "$1 does not exist"; readlink -f "$1"; }; }
binary=$(abspath "$binary")
cs_cert=$(abspath "$cs_cert") cs_key=$(abspath "$cs_key") cs_chain=$(abspath "$cs_chain")
in_cert=$(abspath "$in_cert") in_key=$(abspath "$in_key") in_chain=$(abspath "$in_chain")
ca=$(abspath "$ca")
mkdir -p "$out"
out=$(readlink -f "$out")

# Not exported: the C build scripts (cc-rs) rebuild when SOURCE_DATE_EPOCH changes, and the
# binary must stay the one `scripts/macos.sh build` made; it reaches the tools as arguments.
epoch=${SOURCE_DATE_EPOCH:-}
if [ -z "$epoch" ]; then
  epoch=$(git log -1 --format=%ct 2>/dev/null) || die "not a git checkout: set SOURCE_DATE_EPOCH"
fi
signing_time=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

# A throwaway PKI shaped like Apple's: a root, an intermediate, a "Developer ID Application"
# leaf for code and a "Developer ID Installer" leaf for the package, RSA-2048, with Apple's
# marker extensions (1.2.840.113635.100.6.1.13 / .14) and the team id as OU. The installer's
# marker is not critical here: `jex-packaging verify` checks chains with webpki, which refuses
# any critical extension it does not know, so a fleet-CA installer certificate must not carry one.
make_dev_pki() {
  local d=$1
  [ -f "$d/complete" ] && return 0
  echo "== development PKI in $d (not for production)" >&2
  rm -rf "$d"
  mkdir -p "$d"
  (
    cd "$d"
    cat >ext.cnf <<'EOF'
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[application]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = critical,codeSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
1.2.840.113635.100.6.1.13 = critical,DER:0500
[installer]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = critical,codeSigning
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
1.2.840.113635.100.6.1.14 = DER:0500
EOF
    openssl genrsa -out root.key 2048 2>/dev/null
    openssl req -x509 -new -key root.key -sha256 -days 3650 -subj "/O=JexCloud Dev/CN=JexCloud Dev Root CA" \
      -config ext.cnf -extensions ca -out root.pem
    local name issuer subject ext serial
    while read -r name issuer ext serial subject; do
      openssl genrsa -out "$name.key" 2048 2>/dev/null
      openssl req -new -key "$name.key" -subj "$subject" -out "$name.csr"
      openssl x509 -req -in "$name.csr" -CA "$issuer.pem" -CAkey "$issuer.key" -set_serial "$serial" \
        -sha256 -days 3650 -extfile ext.cnf -extensions "$ext" -out "$name.pem" 2>/dev/null
    done <<'EOF'
inter root ca 2 /O=JexCloud Dev/CN=JexCloud Dev Developer ID CA
application inter application 3 /UID=JEXDEVTEAM/CN=Developer ID Application: JexCloud Dev (JEXDEVTEAM)/OU=JEXDEVTEAM/O=JexCloud Dev/C=US
installer inter installer 4 /UID=JEXDEVTEAM/CN=Developer ID Installer: JexCloud Dev (JEXDEVTEAM)/OU=JEXDEVTEAM/O=JexCloud Dev/C=US
EOF
    cat inter.pem root.pem >chain.pem
    chmod 600 ./*.key
    rm -f ./*.csr
    touch complete
  )
}

if [ "$codesign" = identity ] && [ -z "$cs_cert$cs_key" ] || [ -z "$in_cert$in_key" ]; then
  make_dev_pki "$dev_pki"
  if [ "$codesign" = identity ] && [ -z "$cs_cert$cs_key" ]; then
    cs_cert=$dev_pki/application.pem cs_key=$dev_pki/application.key cs_chain=$dev_pki/chain.pem
  fi
  if [ -z "$in_cert$in_key" ]; then
    in_cert=$dev_pki/installer.pem in_key=$dev_pki/installer.key in_chain=$dev_pki/chain.pem
  fi
  [ -n "$ca" ] || ca=$dev_pki/root.pem
fi
[ "$codesign" != identity ] || { [ -n "$cs_cert" ] && [ -n "$cs_key" ]; } || die "--codesign-cert and --codesign-key go together"
if [ -z "$in_cert" ] || [ -z "$in_key" ] || [ -z "$in_chain" ]; then
  die "--installer-cert, --installer-key and --installer-chain go together"
fi
[ -n "$ca" ] || die "--ca is needed to check the signatures"

# 1. The Mach-O.
if [ -z "$binary" ]; then
  binary=$(scripts/macos.sh build)
fi

# 2. rcodesign, pinned, outside the workspace's dependency graph.
rcodesign_ok() { [ "$("$1/bin/rcodesign" --version 2>/dev/null)" = "apple-codesign $RCODESIGN_VERSION" ]; }
rcodesign_install() {
  echo "== cargo install apple-codesign $RCODESIGN_VERSION (rcodesign) into $1" >&2
  cargo install --locked --no-default-features --root "$1" apple-codesign --version "$RCODESIGN_VERSION" >&2
}
[ "$codesign" = linker ] || tool_install "$RCODESIGN_ROOT" rcodesign_ok rcodesign_install >&2

# The team identifier is the code-signing certificate's OU, as in Apple's Developer ID
# certificates; codesign records it in the CodeDirectory, rcodesign only when told.
team=''
if [ "$codesign" = identity ]; then
  team=$(openssl x509 -in "$cs_cert" -noout -subject -nameopt multiline |
    sed -n 's/^ *organizationalUnitName *= *//p' | head -n1)
fi

# 3. The packaging tool, built for this host.
cargo build -q --locked -p jex-packaging
packaging=${CARGO_TARGET_DIR:-$ROOT/target}/debug/jex-packaging

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Signs the binary ($1) into $2.
codesign_binary() {
  case "$codesign" in
    linker) cp "$1" "$2" ;;
    adhoc)
      "$RCODESIGN" sign --binary-identifier "$IDENTIFIER" --code-signature-flags runtime "$1" "$2" >&2 ;;
    identity)
      local pem=(--pem-file "$cs_key" --pem-file "$cs_cert")
      [ -z "$cs_chain" ] || pem+=(--pem-file "$cs_chain")
      [ -z "$team" ] || pem+=(--team-name "$team")
      "$RCODESIGN" sign "${pem[@]}" --binary-identifier "$IDENTIFIER" --code-signature-flags runtime \
        --timestamp-url "$timestamp_url" --signing-time "$signing_time" "$1" "$2" >&2 ;;
  esac
}

# Builds and signs the package around the signed binary $1 into directory $2.
package() {
  local bin=$1 dir=$2
  mkdir -p "$dir"
  "$packaging" build --binary "$bin" --version "$version" --config-example launchd/agent.toml.example \
    --source-date-epoch "$epoch" --out "$dir/jex-agent-$version-unsigned.pkg"
  "$packaging" sign --pkg "$dir/jex-agent-$version-unsigned.pkg" --cert "$in_cert" --key "$in_key" \
    --chain "$in_chain" --signing-time "$epoch" --out "$dir/jex-agent-$version.pkg"
}

echo "== code signature ($codesign) of $binary" >&2
codesign_binary "$binary" "$work/jex-agent"
echo "== package $version (timestamps and signing time $signing_time)" >&2
package "$work/jex-agent" "$work/pkg"
"$packaging" verify --pkg "$work/pkg/jex-agent-$version.pkg" --ca "$ca"

echo "== reproducibility: the same inputs again" >&2
codesign_binary "$binary" "$work/jex-agent.again"
package "$work/jex-agent.again" "$work/again" 2>/dev/null
if [ "$timestamp_url" = none ]; then
  cmp "$work/jex-agent" "$work/jex-agent.again" || die "signing the binary twice gave different bytes"
fi
cmp "$work/pkg/jex-agent-$version.pkg" "$work/again/jex-agent-$version.pkg" || die "building the package twice gave different bytes"

cp "$work/jex-agent" "$out/jex-agent"
cp "$work/pkg/jex-agent-$version.pkg" "$out/"
rm -rf "$out/mdm"
cp -R mdm "$out/mdm"
(
  cd "$out"
  mapfile -t mdm_files < <(find mdm -type f | LC_ALL=C sort)
  sha256sum jex-agent "jex-agent-$version.pkg" "${mdm_files[@]}" >SHA256SUMS
)

check=(scripts/check-macos-package.sh --pkg "$out/jex-agent-$version.pkg" --binary "$out/jex-agent" --ca "$ca")
case "$codesign" in
  identity)
    check+=(--signature identity --identifier "$IDENTIFIER" --runtime)
    [ -z "$team" ] || check+=(--team "$team") ;;
  adhoc) check+=(--signature adhoc --identifier "$IDENTIFIER" --runtime) ;;
  linker) check+=(--signature adhoc) ;;
esac
"${check[@]}"

echo "== done" >&2
cat "$out/SHA256SUMS"
