#!/usr/bin/env bash
# Checks the Mac binary and the package with tools that did not make them: LLVM's Mach-O reader
# (llvm-objdump, llvm-otool), libarchive's bsdtar, GNU cpio, openssl, and two small readers in
# Python's standard library (scripts/check_macho.py, scripts/check_pkg.py).
#
#   scripts/check-macos-package.sh --pkg PKG --binary BIN --ca ROOT.pem \
#       [--signature identity|adhoc] [--identifier ID] [--team TEAMID] [--runtime]
#   scripts/check-macos-package.sh --binary BIN [--signature adhoc]     # the binary alone
#
# The binary: arm64 executable, one LC_UUID (dyld on macOS 15 refuses a Mach-O without one),
# LC_BUILD_VERSION platform macOS with minos = the package's minimum macOS
# (packaging/src/layout.rs), linked libraries limited to the list below, a code signature with a
# SHA-256 CodeDirectory whose hashes match the file (and, for an identity signature, whose CMS
# signature verifies with openssl up to ROOT.pem). The package: TOC checksum, file checksums, both
# signatures checked by openssl up to ROOT.pem, the Distribution's minimum macOS, and a payload
# whose only Mach-O is, byte for byte, BIN.
#
# Linked libraries allowed besides /usr/lib/libSystem.B.dylib:
# - /usr/lib/libiconv.2.dylib: the libc crate declares iconv_open/iconv/iconv_close for Apple
#   targets with #[link(name = "iconv")], so every Rust program that depends on libc records it,
#   natively built ones too. No symbol is imported from it.
# - /usr/lib/libcharset.1.dylib: libiconv re-exports it; zig's linker records re-exported
#   libraries as direct dependencies (Apple's ld does not). No symbol is imported from it.
# Both are part of every macOS's dyld shared cache.
set -euo pipefail
cd "$(dirname "$0")/.."

ALLOWED_DYLIBS=(/usr/lib/libiconv.2.dylib /usr/lib/libcharset.1.dylib)
AGENT_PAYLOAD_PATH="Library/Application Support/JexCloud/bin/jex-agent"
LLVM=/usr/lib/llvm-14/bin

die() { echo "check-macos-package.sh: $*" >&2; exit 1; }

pkg='' binary='' ca='' signature=any identifier='' team='' runtime=''
while (($#)); do
  case "$1" in
    --pkg) pkg=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --ca) ca=$2; shift 2 ;;
    --signature) signature=$2; shift 2 ;;
    --identifier) identifier=$2; shift 2 ;;
    --team) team=$2; shift 2 ;;
    --runtime) runtime=1; shift ;;
    *) die "unknown option $1" ;;
  esac
done
[ -f "$binary" ] || die "--binary names no file"
[ -z "$pkg" ] || [ -f "$pkg" ] || die "--pkg names no file"
if [ -n "$pkg" ] || [ "$signature" = identity ]; then
  [ -f "$ca" ] || die "--ca (the root the signatures chain to) is needed"
fi

# Tools: installed when missing (Debian, as root), never skipped.
missing=()
[ -x "$LLVM/llvm-objdump" ] && [ -x "$LLVM/llvm-otool" ] || missing+=(llvm-14)
command -v bsdtar >/dev/null || missing+=(libarchive-tools)
command -v cpio >/dev/null || missing+=(cpio)
command -v openssl >/dev/null || missing+=(openssl)
if ((${#missing[@]})); then
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}: run as root or install them first"
  echo "== apt: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

min_os=$(scripts/macos.sh min-os)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL  $*"; exit 1; }
# Apple marks its certificate-type extensions critical (1.2.840.113635.100.6.1.13 Developer ID
# Application, .14 Developer ID Installer, ...); openssl knows none of them and would refuse
# every Developer ID chain, so unknown critical extensions are ignored in the chain checks.
OPENSSL_CHAIN=(-CAfile "$ca" -purpose any -ignore_critical)
ok() { echo "ok    $*"; }

echo "== binary: $binary (LLVM $("$LLVM/llvm-objdump" --version | sed -n 's/.*LLVM version //p'))"
"$LLVM/llvm-objdump" --macho --private-headers "$binary" >"$work/headers.txt"
sed -n '1,/^Load command 0$/p' "$work/headers.txt" | sed '$d'
awk '/^Mach header/{getline; getline; print}' "$work/headers.txt" | grep -Eq '^ *MH_MAGIC_64 +ARM64 +[A-Z0-9_]+ +0x[0-9a-f]+ +EXECUTE ' ||
  fail "llvm-objdump: not a 64-bit arm64 executable"
ok "llvm-objdump: MH_MAGIC_64 ARM64 EXECUTE"
grep -A7 'cmd LC_BUILD_VERSION' "$work/headers.txt" | sed 's/^/      /'
platform=$(awk '/cmd LC_BUILD_VERSION/{f=1} f&&/^ *platform /{print $2; exit}' "$work/headers.txt")
minos=$(awk '/cmd LC_BUILD_VERSION/{f=1} f&&/^ *minos /{print $2; exit}' "$work/headers.txt")
[ "$platform" = macos ] || fail "llvm-objdump: LC_BUILD_VERSION platform is '$platform', not macos"
[ "$minos" = "$min_os" ] || fail "llvm-objdump: minos $minos is not the package minimum $min_os"
ok "llvm-objdump: LC_BUILD_VERSION platform macos, minos $minos = package minimum (packaging/src/layout.rs)"
grep -A3 'cmd LC_CODE_SIGNATURE' "$work/headers.txt" | sed 's/^/      /'
grep -q 'cmd LC_CODE_SIGNATURE' "$work/headers.txt" || fail "llvm-objdump: no LC_CODE_SIGNATURE"
ok "llvm-objdump: LC_CODE_SIGNATURE present"
"$LLVM/llvm-otool" -L "$binary" | tee "$work/libs.txt" | sed 's/^/      /'
grep -q '^[[:space:]]*/usr/lib/libSystem.B.dylib ' "$work/libs.txt" || fail "llvm-otool: libSystem not linked"
while read -r lib _; do
  [ "$lib" = /usr/lib/libSystem.B.dylib ] && continue
  printf '%s\n' "${ALLOWED_DYLIBS[@]}" | grep -qxF "$lib" || fail "llvm-otool: unexpected library $lib"
done < <(tail -n +2 "$work/libs.txt")
ok "llvm-otool: libSystem, and nothing beyond ${ALLOWED_DYLIBS[*]}"
"$LLVM/llvm-nm" -m -u "$binary" | sed -n 's/.*(from \(.*\))$/\1/p' | sort | uniq -c |
  awk '{print "      " $1 " undefined symbols from " $2}'
if "$LLVM/llvm-nm" -m -u "$binary" | grep -v '(from libSystem)$' | grep -q .; then
  fail "llvm-nm: symbols imported from a library other than libSystem"
fi
ok "llvm-nm: every imported symbol comes from libSystem"

echo "== code signature (scripts/check_macho.py)"
macho=(python3 scripts/check_macho.py "$binary" --min-os "$min_os" --signature "$signature")
for lib in "${ALLOWED_DYLIBS[@]}"; do macho+=(--allow-dylib "$lib"); done
[ -z "$identifier" ] || macho+=(--identifier "$identifier")
[ -z "$team" ] || macho+=(--team "$team")
[ -z "$runtime" ] || macho+=(--runtime)
"${macho[@]}" --cms-out "$work/code-cms.der" --cd-out "$work/code-cd.bin" || fail "check_macho.py"
# The checker must notice a changed byte (here in the middle of __TEXT).
cp "$binary" "$work/tampered"
python3 - "$work/tampered" <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(0x8000); b = f.read(1); f.seek(0x8000); f.write(bytes([b[0] ^ 0xFF]))
EOF
if python3 scripts/check_macho.py "$work/tampered" --min-os "$min_os" >"$work/tampered.txt"; then
  fail "check_macho.py accepted a binary with a changed byte"
fi
ok "check_macho.py refuses the same binary with one byte changed ($(grep -c '^FAIL' "$work/tampered.txt") failed check)"
if [ "$signature" = identity ]; then
  openssl cms -verify -binary -inform DER -in "$work/code-cms.der" -content "$work/code-cd.bin" \
    "${OPENSSL_CHAIN[@]}" -out /dev/null 2>"$work/cms.txt" || { cat "$work/cms.txt"; fail "openssl: code signature CMS"; }
  ok "openssl cms -verify: the CMS signature signs the CodeDirectory and chains to $(openssl x509 -in "$ca" -noout -subject)"
  openssl pkcs7 -inform DER -in "$work/code-cms.der" -print_certs -noout | sed -n 's/^subject=/      signer chain: /p'
  printf 'x' >>"$work/code-cd.bin"
  if openssl cms -verify -binary -inform DER -in "$work/code-cms.der" -content "$work/code-cd.bin" \
    "${OPENSSL_CHAIN[@]}" -out /dev/null 2>/dev/null; then
    fail "openssl accepted the code signature over a different CodeDirectory"
  fi
  ok "openssl cms -verify refuses a different CodeDirectory"
fi

if [ -z "$pkg" ]; then
  echo "all checks passed"
  exit 0
fi

echo "== package: $pkg"
python3 scripts/check_pkg.py "$pkg" --min-os "$min_os" --out "$work/pkg" || fail "check_pkg.py"
p=$work/pkg
openssl cms -verify -binary -inform DER -in "$p/cms.der" -content "$p/checksum.bin" \
  "${OPENSSL_CHAIN[@]}" -out /dev/null 2>"$work/cms.txt" || { cat "$work/cms.txt"; fail "openssl: package CMS signature"; }
ok "openssl cms -verify: the package's CMS signature signs the TOC checksum and chains to the CA"
openssl x509 -in "$p/rsa-signer.pem" -pubkey -noout >"$p/rsa-pub.pem"
openssl verify "${OPENSSL_CHAIN[@]}" -untrusted "$p/cms-chain.pem" "$p/rsa-signer.pem" >/dev/null ||
  fail "openssl verify: the RSA signature's certificate does not chain to the CA"
openssl dgst -sha256 -verify "$p/rsa-pub.pem" -signature "$p/rsa.sig" "$p/checksum.bin" >/dev/null ||
  fail "openssl dgst: the package's RSA signature"
ok "openssl dgst -verify: the RSA signature signs the TOC checksum; its certificate chains to the CA"

mkdir "$work/xar" "$work/payload"
bsdtar -xf "$pkg" -C "$work/xar"
cmp -s "$work/xar/jex-agent.pkg/Payload" "$p/Payload" || fail "bsdtar and check_pkg.py read different Payloads"
cmp -s "$work/xar/Distribution" "$p/Distribution" || fail "bsdtar and check_pkg.py read different Distributions"
ok "bsdtar extracts the same Distribution and Payload"
(cd "$work/payload" && gzip -dc "$work/xar/jex-agent.pkg/Payload" | cpio -idm --quiet)
(cd "$work/payload" && find . -type f -printf '      %m %s %p\n' | sort -k3)
want=$(sha256sum <"$binary" | cut -d' ' -f1)
got=$(sha256sum <"$work/payload/$AGENT_PAYLOAD_PATH" | cut -d' ' -f1)
[ "$want" = "$got" ] || fail "the payload's jex-agent ($got) is not the binary ($want)"
ok "cpio: /$AGENT_PAYLOAD_PATH is the binary, sha256 $got"
machos=$(cd "$work/payload" && find . -type f -exec sh -c \
  'for f; do case "$(od -An -tx1 -N4 "$f" | tr -d " ")" in cffaedfe|cafebabe) echo "$f";; esac; done' sh {} +)
[ "$machos" = "./$AGENT_PAYLOAD_PATH" ] || fail "Mach-O files in the payload: $machos"
ok "the payload holds exactly one Mach-O, that binary"
echo "all checks passed"
