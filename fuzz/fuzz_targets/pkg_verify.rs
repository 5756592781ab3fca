//! A `.pkg` from anywhere through the package reader and verifier of `jex-packaging`: the XAR
//! header and TOC parser, the integrity checks, the embedded certificates and CMS signatures,
//! the re-sign tree rebuild, and `verify_package` against a fixed CA. Nothing may panic.
//!
//! Input starting with the `xar!` magic is taken as a whole package. Any other input is taken
//! as a TOC (XML) and a heap, split at the first NUL byte: the target wraps them in a valid
//! header with the TOC zlib-compressed and, when the TOC declares a sha1 checksum inside the
//! heap, writes the right checksum there. So mutations of the TOC XML reach the TOC walker, the
//! heap layout, signature and file checks, which a mutated compressed TOC never does.
//!
//! Property: a package whose integrity checks pass and whose tree can be rebuilt for re-signing
//! lays out again (as `sign_package` does) into an intact package with the same entries and
//! data.

#![no_main]

use std::io::Write;
use std::sync::OnceLock;

use jex_packaging::x509::Certificate;
use jex_packaging::xar::{self, XarArchive};
use jex_packaging::{cms, integrity, verify};
use libfuzzer_sys::fuzz_target;

const CA_PEM: &[u8] = include_bytes!("../fixtures/pkg-ca.pem");

fn anchors() -> &'static [Certificate] {
    static ANCHORS: OnceLock<Vec<Certificate>> = OnceLock::new();
    ANCHORS.get_or_init(|| Certificate::from_pem_bundle(CA_PEM, "fixture CA").expect("CA"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Header + zlib(TOC) + heap, with the declared sha1 TOC checksum filled in when it fits.
fn wrap(toc_xml: &[u8], heap: &[u8]) -> Option<Vec<u8>> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(toc_xml).ok()?;
    let toc = z.finish().ok()?;
    let mut pkg = Vec::with_capacity(xar::HEADER_SIZE + toc.len() + heap.len());
    pkg.extend_from_slice(b"xar!");
    pkg.extend_from_slice(&(xar::HEADER_SIZE as u16).to_be_bytes());
    pkg.extend_from_slice(&1u16.to_be_bytes());
    pkg.extend_from_slice(&(toc.len() as u64).to_be_bytes());
    pkg.extend_from_slice(&(toc_xml.len() as u64).to_be_bytes());
    pkg.extend_from_slice(&xar::CHECKSUM_SHA1.to_be_bytes());
    pkg.extend_from_slice(&toc);
    pkg.extend_from_slice(heap);
    let place = XarArchive::parse(&pkg).ok().and_then(|a| {
        let (_, offset, size) = a.checksum;
        let start = usize::try_from(offset).ok()?.checked_add(a.heap_start)?;
        (size == xar::SHA1_LEN as u64 && start + xar::SHA1_LEN <= pkg.len()).then_some(start)
    });
    if let Some(start) = place {
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &toc);
        pkg[start..start + xar::SHA1_LEN].copy_from_slice(digest.as_ref());
    }
    Some(pkg)
}

/// (path, directory, permission bits, uid, gid, archived bytes) of every entry, sorted. The
/// writer keeps the permission bits of a mode (`& 0o7777`), not file-type bits.
type Shape<'a> = Vec<(String, bool, u32, u32, u32, Option<&'a [u8]>)>;

fn shape<'a>(archive: &XarArchive<'a>) -> Shape<'a> {
    let mut entries: Shape<'a> = archive
        .entries
        .iter()
        .map(|e| {
            let data = e.data.as_ref().map(|_| {
                archive
                    .archived_data(e)
                    .expect("checked archives hold their data")
            });
            (
                e.path.clone(),
                e.is_directory,
                e.perm & 0o7777,
                e.uid,
                e.gid,
                data,
            )
        })
        .collect();
    entries.sort();
    entries
}

fn check(pkg: &[u8]) {
    let _ = verify::verify_package(pkg, anchors(), now());
    let Ok(archive) = XarArchive::parse(pkg) else {
        return;
    };
    for sig in &archive.signatures {
        for der in &sig.certificates {
            let _ = Certificate::from_der(der, "fuzz");
        }
        if let (Ok(bytes), Ok(checksum)) = (
            archive.heap(sig.offset, sig.size, "signature"),
            archive.stored_checksum(),
        ) {
            let _ = cms::verify_detached(bytes, checksum);
        }
    }
    let _ = integrity::check_files(&archive);
    if integrity::check_archive(&archive).is_err() {
        return;
    }
    let (Ok(files), Some(created)) = (archive.to_files(), archive.creation_time.as_deref()) else {
        return;
    };
    let laid = xar::layout(&files, created, &[])
        .expect("a rebuilt tree lays out")
        .into_bytes();
    let again = XarArchive::parse(&laid).expect("a laid-out package parses");
    integrity::check_archive(&again).expect("a laid-out package is intact");
    assert_eq!(shape(&again), shape(&archive), "re-sign keeps every entry");
}

fuzz_target!(|data: &[u8]| {
    if data.starts_with(b"xar!") {
        check(data);
    } else {
        let (toc, heap) = match data.iter().position(|b| *b == 0) {
            Some(nul) => (&data[..nul], &data[nul + 1..]),
            None => (data, &[][..]),
        };
        if let Some(pkg) = wrap(toc, heap) {
            check(&pkg);
        }
    }
});
