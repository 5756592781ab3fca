#!/usr/bin/env python3
"""Independent reader of the jex-agent flat package (XAR), Python standard library only.

Walks the chain of trust from the signatures to the bytes, without jex-packaging's code:

- the XAR header and the zlib TOC; the TOC checksum (sha1 of the compressed TOC) matches the
  one stored at the start of the heap;
- every file's archived-checksum matches its heap bytes (the signatures cover only the TOC, so
  this is what ties them to the Payload);
- the Distribution allows arm64 only and names --min-os as the oldest macOS;
- with --out DIR: writes what openssl needs to check the two signatures independently
  (checksum.bin, rsa.sig, cms.der, and the certificates from the TOC: rsa-signer.pem,
  cms-chain.pem), and the Distribution, PackageInfo and Payload members.

Exit status 0 when every check passes, 1 otherwise.
"""

import argparse
import base64
import hashlib
import os
import struct
import sys
import xml.etree.ElementTree as ET
import zlib

DSIG = "{http://www.w3.org/2000/09/xmldsig#}"


def normalize(v):
    parts = [int(p) for p in v.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pkg")
    p.add_argument("--min-os", required=True)
    p.add_argument("--out", help="directory for the extracted members and signature material")
    args = p.parse_args()
    data = open(args.pkg, "rb").read()
    failures = []

    def check(cond, what):
        print(("ok    " if cond else "FAIL  ") + what)
        if not cond:
            failures.append(what)
        return cond

    magic, hsize, ver, toc_len, toc_raw_len, algo = struct.unpack_from(">4sHHQQI", data, 0)
    if not check(magic == b"xar!", f"XAR header (version {ver}, header {hsize} bytes)"):
        return 1
    toc_z = data[hsize : hsize + toc_len]
    toc_xml = zlib.decompress(toc_z)
    check(len(toc_xml) == toc_raw_len, f"TOC inflates to its declared {toc_raw_len} bytes")
    heap = data[hsize + toc_len :]
    toc = ET.fromstring(toc_xml).find("toc")
    ck = toc.find("checksum")
    check(algo == 1 and ck.get("style") == "sha1", "TOC checksum is sha1")
    ck_off, ck_size = int(ck.findtext("offset")), int(ck.findtext("size"))
    stored = heap[ck_off : ck_off + ck_size]
    check(hashlib.sha1(toc_z).digest() == stored, "stored TOC checksum = sha1 of the compressed TOC")

    files = {}

    def walk(el, prefix):
        for f in el.findall("file"):
            name = prefix + f.findtext("name")
            d = f.find("data")
            if d is not None:
                files[name] = d
            walk(f, name + "/")

    walk(toc, "")
    members = {}
    for name, d in sorted(files.items()):
        off, length = int(d.findtext("offset")), int(d.findtext("length"))
        raw = heap[off : off + length]
        enc = d.find("encoding").get("style")
        ac = d.find("archived-checksum")
        got = hashlib.new(ac.get("style"), raw).hexdigest()
        check(got == ac.text.strip() and len(raw) == length,
              f"{name}: {length} bytes, archived {ac.get('style')} matches ({enc})")
        if enc == "application/x-gzip":
            raw = zlib.decompress(raw, 47)
        elif enc != "application/octet-stream":
            check(False, f"{name}: unknown encoding {enc}")
        members[name] = raw

    sigs = {}
    for tag in ("signature", "x-signature"):
        for s in toc.findall(tag):
            off, size = int(s.findtext("offset")), int(s.findtext("size"))
            certs = [base64.b64decode("".join(c.text.split())) for c in s.iter(DSIG + "X509Certificate")]
            sigs[s.get("style")] = (heap[off : off + size], certs)
            print(f"      <{tag} style={s.get('style')!r}>: {size} bytes, {len(certs)} certificate(s)")
    check("RSA" in sigs and "CMS" in sigs, "RSA and CMS signatures present")

    dist = ET.fromstring(members["Distribution"])
    opts = dist.find("options")
    check(opts is not None and opts.get("hostArchitectures") == "arm64", "Distribution: hostArchitectures arm64")
    mins = [o.get("min") for o in dist.iter("os-version")]
    check(len(mins) == 1 and normalize(mins[0]) == normalize(args.min_os),
          f"Distribution: allowed-os-versions min {mins} is the package minimum {args.min_os}")
    info = ET.fromstring(members["jex-agent.pkg/PackageInfo"])
    print(f"      PackageInfo: identifier {info.get('identifier')} version {info.get('version')} "
          f"install-location {info.get('install-location')}")

    if args.out:
        os.makedirs(args.out, exist_ok=True)

        def write(name, content):
            with open(os.path.join(args.out, name), "wb") as f:
                f.write(content)

        def pem(ders):
            return b"".join(
                b"-----BEGIN CERTIFICATE-----\n"
                + b"\n".join(base64.encodebytes(d).split())
                + b"\n-----END CERTIFICATE-----\n"
                for d in ders
            )

        write("checksum.bin", stored)
        if "RSA" in sigs:
            write("rsa.sig", sigs["RSA"][0])
            write("rsa-signer.pem", pem(sigs["RSA"][1][:1]))
        if "CMS" in sigs:
            write("cms.der", sigs["CMS"][0])
            write("cms-chain.pem", pem(sigs["CMS"][1]))
        write("Distribution", members["Distribution"])
        write("PackageInfo", members["jex-agent.pkg/PackageInfo"])
        write("Payload", members["jex-agent.pkg/Payload"])

    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
