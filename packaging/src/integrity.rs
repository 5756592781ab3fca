//! Integrity of a flat package without its signatures: what the TOC checksum covers, and that
//! every byte of the file is covered.
//!
//! Checks, each failure naming what failed ([`IntegrityError`]):
//!
//! 1. the TOC checksum is sha1 (header algorithm 1, 20 bytes), and sha1 of the compressed TOC
//!    equals the stored checksum;
//! 2. the declared heap regions (checksum, signatures, file data) tile the heap exactly: no gap,
//!    no overlap, nothing after the last region, so no byte of the file is outside the chain of
//!    trust;
//! 3. every file's archived bytes match `archived-checksum`, and its decoded bytes match
//!    `extracted-checksum` and `size` (zlib data is inflated no further than one byte past
//!    `size`).
//!
//! The signer runs these checks so that it never signs a damaged package, and the verifier runs
//! them around its signature checks. This module depends only on [`crate::xar`].

use std::io::Read;

use ring::digest;

use crate::xar::{self, XarArchive, XarError};

/// Why a package's contents do not match its table of contents.
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    /// The file is not a readable XAR archive.
    #[error("package is not a readable xar archive")]
    Archive(#[from] XarError),
    /// The TOC checksum is not the sha1 form this verifier checks.
    #[error("toc checksum: {0}")]
    ChecksumForm(String),
    /// The stored TOC checksum does not match the TOC.
    #[error("toc checksum mismatch: the table of contents or its checksum was modified")]
    TocChecksumMismatch,
    /// Heap regions overlap, leave gaps or leave trailing bytes.
    #[error("heap layout: {0}")]
    HeapLayout(String),
    /// A file's bytes do not match the TOC.
    #[error("file {path}: {what}")]
    File {
        /// Path inside the archive.
        path: String,
        /// What does not match.
        what: String,
    },
}

fn file_err(path: &str, what: impl Into<String>) -> IntegrityError {
    IntegrityError::File {
        path: path.to_owned(),
        what: what.into(),
    }
}

fn digest_for(style: &str) -> Option<&'static digest::Algorithm> {
    match style {
        "sha1" => Some(&digest::SHA1_FOR_LEGACY_USE_ONLY),
        "sha256" => Some(&digest::SHA256),
        "sha384" => Some(&digest::SHA384),
        "sha512" => Some(&digest::SHA512),
        _ => None,
    }
}

fn check_heap_layout(archive: &XarArchive<'_>) -> Result<(), IntegrityError> {
    let mut regions: Vec<(u64, u64, String)> = vec![(
        archive.checksum.1,
        archive.checksum.2,
        "toc checksum".to_owned(),
    )];
    for sig in &archive.signatures {
        regions.push((sig.offset, sig.size, format!("{:?} signature", sig.style)));
    }
    for entry in &archive.entries {
        if let Some(data) = &entry.data {
            regions.push((data.offset, data.length, entry.path.clone()));
        }
    }
    regions.sort();
    let mut end = 0u64;
    for (offset, len, name) in &regions {
        if *offset != end {
            return Err(IntegrityError::HeapLayout(format!(
                "{name} starts at heap offset {offset}, expected {end} (gap or overlap)"
            )));
        }
        end = offset
            .checked_add(*len)
            .ok_or_else(|| IntegrityError::HeapLayout(format!("{name} length overflows")))?;
    }
    let heap_len = (archive.bytes().len() - archive.heap_start) as u64;
    if end != heap_len {
        return Err(IntegrityError::HeapLayout(format!(
            "declared regions end at heap offset {end}, the heap is {heap_len} bytes"
        )));
    }
    Ok(())
}

fn check_file(archive: &XarArchive<'_>, entry: &xar::TocEntry) -> Result<u64, IntegrityError> {
    let Some(data) = &entry.data else {
        return Ok(0);
    };
    let path = entry.path.as_str();
    let archived = archive.archived_data(entry)?;
    let algorithm = digest_for(&data.archived.style).ok_or_else(|| {
        file_err(
            path,
            format!("unsupported checksum {}", data.archived.style),
        )
    })?;
    if hex::encode(digest::digest(algorithm, archived)) != data.archived.hex {
        return Err(file_err(
            path,
            "archived-checksum mismatch (file data modified)",
        ));
    }
    let extracted: std::borrow::Cow<'_, [u8]> = match data.encoding.as_str() {
        "application/octet-stream" => archived.into(),
        // XAR's "x-gzip" is a zlib stream without a gzip header.
        // Inflated at most one byte past the declared size, so that a small stream cannot
        // inflate into gigabytes before the size check.
        "application/x-gzip" => {
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(archived)
                .take(data.size.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|e| file_err(path, format!("cannot decode zlib data: {e}")))?;
            if out.len() as u64 > data.size {
                return Err(file_err(
                    path,
                    format!("zlib data inflates beyond the declared size {}", data.size),
                ));
            }
            out.into()
        }
        other => return Err(file_err(path, format!("unsupported encoding {other}"))),
    };
    if extracted.len() as u64 != data.size {
        return Err(file_err(
            path,
            format!(
                "extracted size {} is not the declared {}",
                extracted.len(),
                data.size
            ),
        ));
    }
    let algorithm = digest_for(&data.extracted.style).ok_or_else(|| {
        file_err(
            path,
            format!("unsupported checksum {}", data.extracted.style),
        )
    })?;
    if hex::encode(digest::digest(algorithm, &extracted)) != data.extracted.hex {
        return Err(file_err(path, "extracted-checksum mismatch"));
    }
    Ok(data.size)
}

/// Checks the TOC checksum form and value and the heap layout; returns the stored checksum (the
/// bytes a signature signs).
pub fn check_toc<'a>(archive: &XarArchive<'a>) -> Result<&'a [u8], IntegrityError> {
    if archive.checksum_algorithm != xar::CHECKSUM_SHA1
        || archive.checksum.0 != "sha1"
        || archive.checksum.2 != xar::SHA1_LEN as u64
    {
        return Err(IntegrityError::ChecksumForm(format!(
            "header algorithm {} with <checksum style={:?} size={}>, expected sha1 (1) of 20 bytes",
            archive.checksum_algorithm, archive.checksum.0, archive.checksum.2
        )));
    }
    let toc_digest = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, archive.compressed_toc());
    let checksum = archive.stored_checksum()?;
    if checksum != toc_digest.as_ref() {
        return Err(IntegrityError::TocChecksumMismatch);
    }
    check_heap_layout(archive)?;
    Ok(checksum)
}

/// Checks every file's checksums and sizes; returns each file's path and size.
pub fn check_files(archive: &XarArchive<'_>) -> Result<Vec<(String, u64)>, IntegrityError> {
    let mut files = Vec::new();
    for entry in &archive.entries {
        let size = check_file(archive, entry)?;
        if !entry.is_directory {
            files.push((entry.path.clone(), size));
        }
    }
    Ok(files)
}

/// Checks everything but the signatures: TOC checksum, heap layout and every file's checksums.
pub fn check_archive(archive: &XarArchive<'_>) -> Result<(), IntegrityError> {
    check_toc(archive)?;
    check_files(archive)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::xar::{XarFile, XarKind, layout};

    fn sha1_hex(data: &[u8]) -> String {
        hex::encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, data))
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(data).expect("compress");
        z.finish().expect("compress")
    }

    /// An archive of one file `Payload` whose archived bytes are `stored`, declared as
    /// `application/x-gzip` data of `size` bytes with the extracted checksum of `extracted`
    /// (the writer stores files as octet streams: its TOC is rewritten).
    fn gzip_archive(stored: &[u8], size: u64, extracted: &[u8]) -> Vec<u8> {
        let files = [XarFile {
            name: "Payload".to_owned(),
            kind: XarKind::File(stored.to_vec()),
            perm: 0o644,
            uid: 0,
            gid: 0,
        }];
        let bytes = layout(&files, "t", &[]).expect("layout").into_bytes();
        let archive = XarArchive::parse(&bytes).expect("parse");
        let stored_hex = sha1_hex(stored);
        let edits = [
            (
                "<encoding style=\"application/octet-stream\"/>".to_owned(),
                "<encoding style=\"application/x-gzip\"/>".to_owned(),
            ),
            (
                format!("<size>{}</size>", stored.len()),
                format!("<size>{size}</size>"),
            ),
            (
                format!("<extracted-checksum style=\"sha1\">{stored_hex}</extracted-checksum>"),
                format!(
                    "<extracted-checksum style=\"sha1\">{}</extracted-checksum>",
                    sha1_hex(extracted)
                ),
            ),
        ];
        let mut toc = archive.toc_xml.clone();
        for (from, to) in edits {
            assert_eq!(toc.matches(&from).count(), 1, "{from} in {toc}");
            toc = toc.replace(&from, &to);
        }
        let compressed = zlib(toc.as_bytes());
        let mut out = bytes[..archive.toc_range.start].to_vec();
        out[8..16].copy_from_slice(&(compressed.len() as u64).to_be_bytes());
        out[16..24].copy_from_slice(&(toc.len() as u64).to_be_bytes());
        out.extend_from_slice(&compressed);
        out.extend_from_slice(&bytes[archive.heap_start..]);
        out
    }

    #[test]
    fn zlib_file_data_of_its_declared_size_is_checked() {
        let content = b"#!/bin/sh\nexit 0\n".repeat(100);
        let bytes = gzip_archive(&zlib(&content), content.len() as u64, &content);
        let archive = XarArchive::parse(&bytes).expect("parse");
        let files = check_files(&archive).expect("a well-formed gzip file");
        assert_eq!(files, vec![("Payload".to_owned(), content.len() as u64)]);
    }

    #[test]
    fn zlib_file_data_that_inflates_beyond_its_declared_size_is_refused() {
        // 64 MiB of zeros in about 64 KiB, declared as 1 KiB.
        let bomb = zlib(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 128 << 10, "{}", bomb.len());
        let bytes = gzip_archive(&bomb, 1024, &[0u8; 1024]);
        let archive = XarArchive::parse(&bytes).expect("parse");
        match check_files(&archive) {
            Err(IntegrityError::File { path, what }) => {
                assert_eq!(path, "Payload");
                assert_eq!(what, "zlib data inflates beyond the declared size 1024");
            }
            other => panic!("expected the bomb refused, got {other:?}"),
        }
    }

    #[test]
    fn zlib_file_data_shorter_than_declared_is_refused() {
        let content = vec![7u8; 4000];
        let bytes = gzip_archive(&zlib(&content), 5000, &content);
        let archive = XarArchive::parse(&bytes).expect("parse");
        match check_files(&archive) {
            Err(IntegrityError::File { what, .. }) => {
                assert_eq!(what, "extracted size 4000 is not the declared 5000");
            }
            other => panic!("expected a size mismatch, got {other:?}"),
        }
    }
}
