#!/usr/bin/env python3
"""Shows that scripts/check_macho.py refuses what macOS refuses, on Mach-O files built here.

Each test writes a small arm64 executable byte by byte: a Mach-O header, LC_BUILD_VERSION
(macOS, minos 13.0), LC_UUID, LC_LOAD_DYLIB of libSystem, LC_CODE_SIGNATURE, a few pages of
code, and an ad-hoc embedded signature (a SuperBlob with an empty requirements blob and one or
two CodeDirectories whose page and special-slot hashes are computed over the file). The checker
runs on it as CI runs it on the real binary (a separate process, exit status and report), and
each test asserts the exact list of failed checks:

- the correct file passes, with a SHA-256 CodeDirectory alone or with SHA-1 next to it;
- no LC_UUID fails, and so do two (dyld on macOS 15 and later refuses a Mach-O without one);
- a signature whose only CodeDirectory hashes with SHA-1 fails (no CS_HASHTYPE_SHA256);
- one byte changed after signing fails (the hashes really are recomputed over these files).

Needs python3 alone; no root, no network.

    python3 scripts/tests/check_macho.py
"""

import hashlib
import os
import struct
import subprocess
import sys
import tempfile
import unittest

CHECKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "check_macho.py")
MIN_OS = "13.0"
PAGE_LOG = 12
CODE_LIMIT = 3 * (1 << PAGE_LOG) + 0x100  # three full pages and a partial one
UUID = bytes.fromhex("6E3A1F0C9B2D4E7A8C1D2F3A4B5C6D7E")
LIBSYSTEM = b"/usr/lib/libSystem.B.dylib\0"
IDENTIFIER = b"com.jexcloud.agent\0"
HASH_TYPES = {"sha1": (1, 20), "sha256": (2, 32)}
CS_ADHOC = 0x2
CSSLOT_REQUIREMENTS = 2
CSSLOT_ALTERNATE_CODEDIRECTORIES = 0x1000
N_SPECIAL = 2  # slot 1 (Info.plist, absent: zeros) and slot 2 (requirements)
CD_HEADER = 88  # CodeDirectory version 0x20400, through execSegFlags
REQUIREMENTS = struct.pack(">3I", 0xFADE0C01, 12, 0)  # an empty requirements set


def load_commands(n_uuids, sig_off, sig_size):
    dylib_size = 24 + (len(LIBSYSTEM) + 7) // 8 * 8
    cmds = [
        struct.pack("<6I", 0x32, 24, 1, 0x000D0000, 0x000F0000, 0),  # LC_BUILD_VERSION
        *[struct.pack("<2I", 0x1B, 24) + UUID for _ in range(n_uuids)],  # LC_UUID
        struct.pack("<6I", 0x0C, dylib_size, 24, 2, 0x05276403, 0x00010000)  # LC_LOAD_DYLIB
        + LIBSYSTEM.ljust(dylib_size - 24, b"\0"),
        struct.pack("<4I", 0x1D, 16, sig_off, sig_size),  # LC_CODE_SIGNATURE
    ]
    body = b"".join(cmds)
    # MH_MAGIC_64, CPU_TYPE_ARM64, CPU_SUBTYPE_ARM64_ALL, MH_EXECUTE, ncmds, sizeofcmds, MH_PIE
    header = struct.pack("<8I", 0xFEEDFACF, 0x0100000C, 0, 2, len(cmds), len(body), 0x200000, 0)
    return header + body


def code_directory(code, algo):
    hash_type, hash_size = HASH_TYPES[algo]
    digest = lambda b: hashlib.new(algo, b).digest()  # noqa: E731
    n_code = -(-len(code) // (1 << PAGE_LOG))
    ident_off = CD_HEADER
    hash_off = ident_off + len(IDENTIFIER) + N_SPECIAL * hash_size
    length = hash_off + n_code * hash_size
    # Special slots are stored from the highest down to slot 1, just before hashOffset.
    special = digest(REQUIREMENTS) + bytes(hash_size)
    pages = b"".join(digest(code[i << PAGE_LOG : (i + 1) << PAGE_LOG]) for i in range(n_code))
    header = struct.pack(
        ">9I4B",
        0xFADE0C02, length, 0x20400, CS_ADHOC, hash_off, ident_off, N_SPECIAL, n_code, len(code),
        hash_size, hash_type, 0, PAGE_LOG,
    )
    # spare2, scatterOffset, teamOffset, spare3, codeLimit64, execSegBase, execSegLimit,
    # execSegFlags (CS_EXECSEG_MAIN_BINARY)
    header += struct.pack(">4I4Q", 0, 0, 0, 0, 0, 0, CODE_LIMIT, 1)
    assert len(header) == CD_HEADER
    return header + IDENTIFIER + special + pages


def super_blob(code, algos):
    blobs = [(0, code_directory(code, algos[0])), (CSSLOT_REQUIREMENTS, REQUIREMENTS)]
    blobs += [(CSSLOT_ALTERNATE_CODEDIRECTORIES + i, code_directory(code, a)) for i, a in enumerate(algos[1:])]
    offset = 12 + 8 * len(blobs)
    index, payload = b"", b""
    for slot, blob in blobs:
        index += struct.pack(">2I", slot, offset + len(payload))
        payload += blob
    return struct.pack(">3I", 0xFADE0CC0, offset + len(payload), len(blobs)) + index + payload


def macho(n_uuids=1, algos=("sha256",)):
    """An arm64 executable signed ad hoc with one CodeDirectory per hash algorithm in `algos`."""

    def code(sig_size):
        head = load_commands(n_uuids, CODE_LIMIT, sig_size)
        filler = bytes((i * 7 + 3) & 0xFF for i in range(CODE_LIMIT - len(head)))
        return head + filler

    # The signature's size is written in LC_CODE_SIGNATURE, which is hashed: size it first
    # (hash values do not change sizes), then sign the final bytes.
    size = len(super_blob(code(0), algos))
    signed = code(size)
    return signed + super_blob(signed, algos)


class CheckMachoTest(unittest.TestCase):
    def check(self, data):
        """Runs the checker on `data`; returns (exit status, the FAIL lines, the whole report)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "jex-agent")
            with open(path, "wb") as f:
                f.write(data)
            out = subprocess.run(
                [sys.executable, CHECKER, path, "--min-os", MIN_OS],
                capture_output=True,
                text=True,
                check=False,
            )
        self.assertEqual(out.stderr, "", out.stderr)
        fails = [line[6:] for line in out.stdout.splitlines() if line.startswith("FAIL  ")]
        return out.returncode, fails, out.stdout

    def assert_passes(self, data):
        status, fails, report = self.check(data)
        self.assertEqual((status, fails), (0, []), report)
        self.assertIn("all checks passed", report)
        return report

    def assert_fails_only(self, data, *words):
        """Exit status 1 and exactly one failed check, whose text holds every one of `words`."""
        status, fails, report = self.check(data)
        self.assertEqual(status, 1, report)
        self.assertEqual(len(fails), 1, report)
        for word in words:
            self.assertIn(word, fails[0], report)
        self.assertIn("1 check(s) failed", report)

    def test_a_correct_binary_passes(self):
        report = self.assert_passes(macho())
        self.assertIn("ok    one LC_UUID (6E3A1F0C-9B2D-4E7A-8C1D-2F3A4B5C6D7E)", report)
        self.assertIn("ok    a SHA-256 CodeDirectory (CS_HASHTYPE_SHA256)", report)

    def test_sha1_next_to_a_sha256_code_directory_passes(self):
        report = self.assert_passes(macho(algos=("sha1", "sha256")))
        self.assertIn("sha1/160 (hashType 1), sha256/256 (hashType 2)", report)

    def test_missing_lc_uuid_fails(self):
        self.assert_fails_only(macho(n_uuids=0), "no LC_UUID", "macOS 15")

    def test_two_lc_uuids_fail(self):
        self.assert_fails_only(macho(n_uuids=2), "one LC_UUID (2 found)")

    def test_sha1_only_signature_fails(self):
        self.assert_fails_only(macho(algos=("sha1",)), "no SHA-256 CodeDirectory", "CS_HASHTYPE_SHA256", "sha1")

    def test_two_sha1_code_directories_fail(self):
        self.assert_fails_only(macho(algos=("sha1", "sha1")), "no SHA-256 CodeDirectory")

    def test_a_byte_changed_after_signing_fails(self):
        data = bytearray(macho())
        data[2 << PAGE_LOG] ^= 0xFF
        self.assert_fails_only(bytes(data), "page hashes match the file", "mismatch at pages [2]")


if __name__ == "__main__":
    unittest.main(verbosity=2)
