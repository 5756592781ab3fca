#!/usr/bin/env python3
"""Independent check of the jex-agent Mach-O and of its code signature (Python standard library).

Reads the file itself, without any of the tools that built or signed it:

- header: 64-bit arm64 executable (thin, not universal);
- LC_UUID: exactly one. dyld on macOS 15 and later refuses to launch a Mach-O without one
  ("missing LC_UUID load command");
- LC_BUILD_VERSION: platform macOS, minos equal to --min-os;
- linked libraries (LC_LOAD_DYLIB and friends): libSystem is required, anything not listed with
  --allow-dylib fails;
- LC_CODE_SIGNATURE: the SuperBlob and its CodeDirectory are parsed, and every page hash of the
  CodeDirectory is recomputed over the file, as is every special-slot hash over the blob it
  stands for (requirements, entitlements). Apple Silicon refuses to run code whose hashes do not
  match, so a stale signature (a file changed after signing) fails here. One CodeDirectory must
  hash with SHA-256 (hashType 2, CS_HASHTYPE_SHA256): a signature whose only CodeDirectory uses
  SHA-1 fails (codesign adds a SHA-1 CodeDirectory only next to a SHA-256 one, for systems older
  than the package's minimum macOS);
- --signature adhoc: the CodeDirectory has the ad-hoc flag and there is no CMS signature;
  --signature identity: no ad-hoc flag and a non-empty CMS blob (written with --cms-out, with
  the CodeDirectory it signs with --cd-out, for `openssl cms -verify`);
- --runtime: the hardened-runtime flag; --identifier: the signing identifier; --team: the
  team identifier.

Exit status 0 when every check passes, 1 otherwise; findings go to stdout.
"""

import argparse
import hashlib
import struct
import sys

MH_MAGIC_64 = 0xFEEDFACF
FAT_MAGIC = 0xCAFEBABE
CPU_TYPE_ARM64 = 0x0100000C
MH_EXECUTE = 2
LC_REQ_DYLD = 0x80000000
LC_CODE_SIGNATURE = 0x1D
LC_UUID = 0x1B
LC_BUILD_VERSION = 0x32
LC_VERSION_MIN_MACOSX = 0x24
DYLIB_COMMANDS = {
    0x0C: "LC_LOAD_DYLIB",
    0x18 | LC_REQ_DYLD: "LC_LOAD_WEAK_DYLIB",
    0x1F | LC_REQ_DYLD: "LC_REEXPORT_DYLIB",
    0x20: "LC_LAZY_LOAD_DYLIB",
    0x23 | LC_REQ_DYLD: "LC_LOAD_UPWARD_DYLIB",
}
PLATFORM_MACOS = 1
TOOLS = {1: "clang", 2: "swift", 3: "ld", 4: "lld", 5: "zig"}

CSMAGIC_EMBEDDED_SIGNATURE = 0xFADE0CC0
CSMAGIC_CODEDIRECTORY = 0xFADE0C02
CSMAGIC_REQUIREMENTS = 0xFADE0C01
CSMAGIC_BLOBWRAPPER = 0xFADE0B01
CSSLOT_CODEDIRECTORY = 0
CSSLOT_REQUIREMENTS = 2
CSSLOT_ENTITLEMENTS = 5
CSSLOT_DER_ENTITLEMENTS = 7
CSSLOT_ALTERNATE_CODEDIRECTORIES = 0x1000
CSSLOT_SIGNATURESLOT = 0x10000
CS_ADHOC = 0x2
CS_RUNTIME = 0x10000
CS_LINKER_SIGNED = 0x20000
CS_HASHTYPE_SHA256 = 2
HASHES = {1: ("sha1", 20), 2: ("sha256", 32), 3: ("sha256", 20), 4: ("sha384", 48)}


def version(v):
    """Decodes a packed xxxx.yy.zz version."""
    major, minor, patch = v >> 16, (v >> 8) & 0xFF, v & 0xFF
    return f"{major}.{minor}" + (f".{patch}" if patch else "")


def normalize(v):
    """`13` and `13.0` and `13.0.0` compare equal."""
    parts = [int(p) for p in v.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


class Report:
    def __init__(self):
        self.failures = []

    def ok(self, what):
        print(f"ok    {what}")

    def fail(self, what):
        print(f"FAIL  {what}")
        self.failures.append(what)

    def check(self, cond, what):
        (self.ok if cond else self.fail)(what)
        return cond


def parse_load_commands(data, r):
    magic, cputype, _cpusub, filetype, ncmds, sizeofcmds, flags, _ = struct.unpack_from("<8I", data, 0)
    if struct.unpack_from(">I", data, 0)[0] == FAT_MAGIC:
        r.fail("universal (fat) file: a thin arm64 executable is expected")
        return None
    if not r.check(magic == MH_MAGIC_64, f"64-bit Mach-O (magic {magic:#x})"):
        return None
    r.check(cputype == CPU_TYPE_ARM64, f"cputype arm64 ({cputype:#x})")
    r.check(filetype == MH_EXECUTE, f"filetype MH_EXECUTE ({filetype})")
    r.check(flags & 0x200000 != 0, "position independent (MH_PIE)")
    cmds = []
    off = 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<2I", data, off)
        cmds.append((cmd, off, size))
        off += size
    r.check(off == 32 + sizeofcmds, f"{ncmds} load commands, {sizeofcmds} bytes")
    return cmds


def check_uuid(data, cmds, r):
    uuids = [(off, size) for cmd, off, size in cmds if cmd == LC_UUID]
    if not uuids:
        r.fail("no LC_UUID load command: dyld on macOS 15 and later refuses to launch this binary")
        return
    if len(uuids) != 1:
        r.fail(f"one LC_UUID ({len(uuids)} found)")
        return
    off, size = uuids[0]
    if size != 24:
        r.fail(f"LC_UUID of 24 bytes ({size})")
        return
    raw = data[off + 8 : off + 24].hex().upper()
    r.ok(f"one LC_UUID ({raw[:8]}-{raw[8:12]}-{raw[12:16]}-{raw[16:20]}-{raw[20:]})")


def check_build_version(data, cmds, args, r):
    builds = [(off, size) for cmd, off, size in cmds if cmd == LC_BUILD_VERSION]
    if not r.check(len(builds) == 1, "one LC_BUILD_VERSION"):
        return
    off, _ = builds[0]
    platform, minos, sdk, ntools = struct.unpack_from("<4I", data, off + 8)
    tools = []
    for i in range(ntools):
        tool, tver = struct.unpack_from("<2I", data, off + 24 + 8 * i)
        tools.append(f"{TOOLS.get(tool, tool)} {version(tver)}")
    print(f"      LC_BUILD_VERSION platform {platform} minos {version(minos)} sdk {version(sdk)} tools [{', '.join(tools)}]")
    r.check(platform == PLATFORM_MACOS, f"platform macOS ({platform})")
    r.check(
        normalize(version(minos)) == normalize(args.min_os),
        f"minos {version(minos)} is the package minimum {args.min_os}",
    )
    r.check(
        not any(cmd == LC_VERSION_MIN_MACOSX for cmd, _, _ in cmds),
        "no legacy LC_VERSION_MIN_MACOSX",
    )


def check_dylibs(data, cmds, args, r):
    libs = []
    for cmd, off, size in cmds:
        if cmd in DYLIB_COMMANDS:
            name_off = struct.unpack_from("<I", data, off + 8)[0]
            raw = data[off + name_off : off + size]
            libs.append((DYLIB_COMMANDS[cmd], raw.split(b"\0", 1)[0].decode()))
    for kind, name in libs:
        print(f"      {kind} {name}")
    names = [n for _, n in libs]
    r.check("/usr/lib/libSystem.B.dylib" in names, "links /usr/lib/libSystem.B.dylib")
    allowed = {"/usr/lib/libSystem.B.dylib", *args.allow_dylib}
    extra = [n for n in names if n not in allowed]
    r.check(not extra, "no other library than " + ", ".join(sorted(allowed)) + (f" (found {extra})" if extra else ""))


def blob(sig, off):
    magic, length = struct.unpack_from(">2I", sig, off)
    return magic, sig[off : off + length]


def check_signature(data, cmds, args, r):
    sigs = [(off, size) for cmd, off, size in cmds if cmd == LC_CODE_SIGNATURE]
    if not r.check(len(sigs) == 1, "one LC_CODE_SIGNATURE"):
        return
    dataoff, datasize = struct.unpack_from("<2I", data, sigs[0][0] + 8)
    r.check(dataoff + datasize <= len(data), f"signature at {dataoff}, {datasize} bytes, inside the file")
    r.check(len(data) - (dataoff + datasize) < 16, "the signature is at the end of the file")
    sig = data[dataoff : dataoff + datasize]
    magic, length, count = struct.unpack_from(">3I", sig, 0)
    if not r.check(magic == CSMAGIC_EMBEDDED_SIGNATURE, f"embedded signature SuperBlob ({magic:#x})"):
        return
    slots = {}
    for i in range(count):
        stype, soff = struct.unpack_from(">2I", sig, 12 + 8 * i)
        slots[stype] = blob(sig, soff)
    print("      SuperBlob slots: " + ", ".join(f"{t:#x}" for t in sorted(slots)))
    if not r.check(CSSLOT_CODEDIRECTORY in slots, "a CodeDirectory"):
        return
    cds = [slots[CSSLOT_CODEDIRECTORY]] + [
        slots[t] for t in sorted(slots) if CSSLOT_ALTERNATE_CODEDIRECTORIES <= t < CSSLOT_ALTERNATE_CODEDIRECTORIES + 5
    ]
    first_flags = None
    hash_types = []
    for n, (cmagic, cd) in enumerate(cds):
        if not r.check(cmagic == CSMAGIC_CODEDIRECTORY, f"CodeDirectory {n} magic ({cmagic:#x})"):
            return
        (_, _, cversion, flags, hash_off, ident_off, n_special, n_code, code_limit, hash_size,
         hash_type, _platform, page_log) = struct.unpack_from(">9I4B", cd, 0)
        ident = cd[ident_off:].split(b"\0", 1)[0].decode()
        team = None
        if cversion >= 0x20200:
            team_off = struct.unpack_from(">I", cd, 48)[0]
            if team_off:
                team = cd[team_off:].split(b"\0", 1)[0].decode()
        if cversion >= 0x20300:
            code_limit64 = struct.unpack_from(">Q", cd, 56)[0]
            if code_limit64:
                code_limit = code_limit64
        names = [name for bit, name in ((CS_ADHOC, "adhoc"), (CS_RUNTIME, "runtime"), (CS_LINKER_SIGNED, "linker-signed")) if flags & bit]
        algo, size = HASHES.get(hash_type, (None, None))
        print(
            f"      CodeDirectory {n}: version {cversion:#x} flags {flags:#x} ({','.join(names) or 'none'}) "
            f"identifier {ident!r} team {team!r} hash {algo} page {1 << page_log if page_log else 0} "
            f"code slots {n_code} special slots {n_special} codeLimit {code_limit}"
        )
        if not r.check(algo is not None and size == hash_size, f"known hash type {hash_type}"):
            return
        hash_types.append(hash_type)
        r.check(code_limit == dataoff, "codeLimit is the signature's offset: the whole file before it is hashed")
        page = 1 << page_log
        bad = []
        for i in range(n_code):
            chunk = data[i * page : min((i + 1) * page, code_limit)]
            want = cd[hash_off + i * hash_size : hash_off + (i + 1) * hash_size]
            if hashlib.new(algo, chunk).digest()[:hash_size] != want:
                bad.append(i)
        r.check(n_code == -(-code_limit // page), f"{n_code} code pages cover codeLimit")
        r.check(not bad, f"all {n_code} page hashes match the file" + (f" (mismatch at pages {bad[:5]}...)" if bad else ""))
        special_bad = []
        for slot in range(1, n_special + 1):
            want = cd[hash_off - slot * hash_size : hash_off - (slot - 1) * hash_size]
            if slot in slots:
                got = hashlib.new(algo, slots[slot][1]).digest()[:hash_size]
            else:
                got = bytes(hash_size)
            if got != want:
                special_bad.append(slot)
        r.check(not special_bad, f"special slot hashes match their blobs ({n_special} slots)" + (f" (mismatch {special_bad})" if special_bad else ""))
        if n == 0:
            first_flags = flags
            first_ident = ident
            first_team = team
            first_cd = cd
    found = ", ".join(f"{HASHES[t][0]}/{HASHES[t][1] * 8} (hashType {t})" for t in hash_types)
    if CS_HASHTYPE_SHA256 in hash_types:
        r.ok(f"a SHA-256 CodeDirectory (CS_HASHTYPE_SHA256); CodeDirectories: {found}")
    else:
        r.fail(f"no SHA-256 CodeDirectory (hashType 2, CS_HASHTYPE_SHA256), only {found}: SHA-1 alone is not accepted")
    if CSSLOT_REQUIREMENTS in slots:
        r.check(slots[CSSLOT_REQUIREMENTS][0] == CSMAGIC_REQUIREMENTS, "requirements blob magic")
    cms = slots.get(CSSLOT_SIGNATURESLOT)
    cms_der = cms[1][8:] if cms and cms[0] == CSMAGIC_BLOBWRAPPER else b""
    print(f"      CMS signature blob: {len(cms_der)} bytes")
    if args.signature == "adhoc":
        r.check(first_flags & CS_ADHOC != 0, "ad-hoc signature (CS_ADHOC)")
        r.check(not cms_der, "no CMS signature")
    elif args.signature == "identity":
        r.check(first_flags & CS_ADHOC == 0, "not ad-hoc")
        r.check(len(cms_der) > 0, "a CMS signature")
        if args.cms_out and cms_der:
            with open(args.cms_out, "wb") as f:
                f.write(cms_der)
        if args.cd_out:
            with open(args.cd_out, "wb") as f:
                f.write(first_cd)
    if args.runtime:
        r.check(first_flags & CS_RUNTIME != 0, "hardened runtime (CS_RUNTIME)")
    if args.identifier:
        r.check(first_ident == args.identifier, f"identifier {args.identifier!r}")
    if args.team:
        r.check(first_team == args.team, f"team identifier {args.team!r}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("binary")
    p.add_argument("--min-os", required=True, help="the package's minimum macOS, e.g. 13.0")
    p.add_argument("--allow-dylib", action="append", default=[], help="a library the binary may link besides libSystem")
    p.add_argument("--signature", choices=["adhoc", "identity", "any"], default="any")
    p.add_argument("--runtime", action="store_true", help="require the hardened runtime flag")
    p.add_argument("--identifier", help="required signing identifier")
    p.add_argument("--team", help="required team identifier")
    p.add_argument("--cms-out", help="write the CMS signature (DER) here")
    p.add_argument("--cd-out", help="write the CodeDirectory the CMS signs here")
    args = p.parse_args()
    with open(args.binary, "rb") as f:
        data = f.read()
    r = Report()
    print(f"      {args.binary}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
    cmds = parse_load_commands(data, r)
    if cmds is not None:
        check_uuid(data, cmds, r)
        check_build_version(data, cmds, args, r)
        check_dylibs(data, cmds, args, r)
        check_signature(data, cmds, args, r)
    if r.failures:
        print(f"{len(r.failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
