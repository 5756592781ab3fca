//! POSIX.1 "odc" cpio archives, as used for a flat package's `Payload` and `Scripts`.
//!
//! Each member is a 76-byte ASCII header of octal fields, the NUL-terminated name, then the data,
//! with no padding:
//!
//! ```text
//! magic "070707" | dev 6 | ino 6 | mode 6 | uid 6 | gid 6 | nlink 6 | rdev 6 | mtime 11 |
//! namesize 6 (with the NUL) | filesize 11 | name\0 | data
//! ```
//!
//! The archive ends with a member named `TRAILER!!!`. Names are relative (`.`, `./Library`, ...)
//! exactly as `pkgbuild` writes them. The writer is deterministic: `dev` is 0, inodes are numbered
//! in order from 1, and owners and mtimes come from the [`Entry`] values, never from the build
//! machine. [`gzip`] compresses with a zero gzip mtime and no file name, so the same input gives
//! the same bytes.

use std::io::{Read, Write};

/// Largest value of a 6-digit octal field.
const MAX_OCTAL_6: u64 = 0o777_777;
/// Largest value of an 11-digit octal field.
const MAX_OCTAL_11: u64 = 0o777_7777_7777;
const MAGIC: &[u8; 6] = b"070707";
const HEADER_LEN: usize = 76;
const TRAILER: &str = "TRAILER!!!";
/// File type bits of `st_mode`.
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;

/// What an [`Entry`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file and its content.
    File(Vec<u8>),
    /// A directory.
    Directory,
}

/// One member of an archived tree (also one path of a Bom).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path: `.` for the root, otherwise `./a/b`.
    pub path: String,
    /// File (with content) or directory.
    pub kind: EntryKind,
    /// Permission bits (`0o7777` at most).
    pub perm: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u32,
}

impl Entry {
    /// `st_mode`: file type bits and permission bits.
    pub fn st_mode(&self) -> u32 {
        let kind = match self.kind {
            EntryKind::File(_) => S_IFREG,
            EntryKind::Directory => S_IFDIR,
        };
        kind | (self.perm & 0o7777)
    }

    /// File content; empty for a directory.
    pub fn data(&self) -> &[u8] {
        match &self.kind {
            EntryKind::File(data) => data,
            EntryKind::Directory => &[],
        }
    }
}

/// An archive that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// A header field does not fit the odc format.
    #[error("write cpio member {path}: {field} {value} does not fit an odc field")]
    FieldTooLarge {
        /// Member name.
        path: String,
        /// Header field.
        field: &'static str,
        /// Value that overflowed.
        value: u64,
    },
    /// The archive is truncated or has a malformed header.
    #[error("read cpio archive at byte {offset}: {what}")]
    Malformed {
        /// Offset of the problem.
        offset: usize,
        /// What is wrong.
        what: String,
    },
    /// A member has a type other than regular file or directory.
    #[error("read cpio member {path}: mode {mode:#o} is neither a regular file nor a directory")]
    UnsupportedType {
        /// Member name.
        path: String,
        /// Its `st_mode`.
        mode: u32,
    },
    /// gzip compression or decompression failed.
    #[error("gzip the cpio archive")]
    Gzip(#[source] std::io::Error),
}

fn octal(
    out: &mut Vec<u8>,
    path: &str,
    field: &'static str,
    value: u64,
    width: usize,
) -> Result<(), CpioError> {
    let max = if width == 6 {
        MAX_OCTAL_6
    } else {
        MAX_OCTAL_11
    };
    if value > max {
        return Err(CpioError::FieldTooLarge {
            path: path.to_owned(),
            field,
            value,
        });
    }
    out.extend_from_slice(format!("{value:0width$o}").as_bytes());
    Ok(())
}

/// The header fields of one member.
struct Member<'a> {
    ino: u64,
    path: &'a str,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    mtime: u32,
    data: &'a [u8],
}

fn write_member(out: &mut Vec<u8>, member: &Member<'_>) -> Result<(), CpioError> {
    let Member {
        ino,
        path,
        mode,
        uid,
        gid,
        nlink,
        mtime,
        data,
    } = *member;
    out.extend_from_slice(MAGIC);
    octal(out, path, "dev", 0, 6)?;
    octal(out, path, "ino", ino, 6)?;
    octal(out, path, "mode", mode.into(), 6)?;
    octal(out, path, "uid", uid.into(), 6)?;
    octal(out, path, "gid", gid.into(), 6)?;
    octal(out, path, "nlink", nlink, 6)?;
    octal(out, path, "rdev", 0, 6)?;
    octal(out, path, "mtime", mtime.into(), 11)?;
    octal(out, path, "namesize", path.len() as u64 + 1, 6)?;
    octal(out, path, "filesize", data.len() as u64, 11)?;
    out.extend_from_slice(path.as_bytes());
    out.push(0);
    out.extend_from_slice(data);
    Ok(())
}

/// Writes `entries`, in the given order, as an odc archive with its trailer.
pub fn write_odc(entries: &[Entry]) -> Result<Vec<u8>, CpioError> {
    let mut out = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let nlink = match entry.kind {
            EntryKind::File(_) => 1,
            EntryKind::Directory => 2,
        };
        write_member(
            &mut out,
            &Member {
                ino: index as u64 + 1,
                path: &entry.path,
                mode: entry.st_mode(),
                uid: entry.uid,
                gid: entry.gid,
                nlink,
                mtime: entry.mtime,
                data: entry.data(),
            },
        )?;
    }
    let trailer = Member {
        ino: 0,
        path: TRAILER,
        mode: 0,
        uid: 0,
        gid: 0,
        nlink: 1,
        mtime: 0,
        data: &[],
    };
    write_member(&mut out, &trailer)?;
    Ok(out)
}

fn read_octal(bytes: &[u8], offset: usize, width: usize) -> Result<u64, CpioError> {
    let field = bytes
        .get(offset..offset + width)
        .ok_or_else(|| CpioError::Malformed {
            offset,
            what: "truncated header".to_owned(),
        })?;
    let text = std::str::from_utf8(field).ok();
    text.and_then(|t| u64::from_str_radix(t, 8).ok())
        .ok_or_else(|| CpioError::Malformed {
            offset,
            what: format!("field {:?} is not octal", String::from_utf8_lossy(field)),
        })
}

/// Reads an odc archive written by [`write_odc`] (or any odc archive of files and directories).
pub fn read_odc(bytes: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let mut entries = Vec::new();
    let mut at = 0;
    loop {
        if bytes.get(at..at + 6) != Some(MAGIC.as_slice()) {
            return Err(CpioError::Malformed {
                offset: at,
                what: "missing 070707 magic (archive truncated?)".to_owned(),
            });
        }
        let field = |index: usize, width: usize| read_octal(bytes, at + index, width);
        let mode = field(18, 6)? as u32;
        let uid = field(24, 6)? as u32;
        let gid = field(30, 6)? as u32;
        let mtime = field(48, 11)? as u32;
        let namesize = field(59, 6)? as usize;
        let filesize = field(65, 11)? as usize;
        let name_at = at + HEADER_LEN;
        let data_at = name_at + namesize;
        let end = data_at + filesize;
        if namesize == 0 || end > bytes.len() {
            return Err(CpioError::Malformed {
                offset: at,
                what: "member runs past the end of the archive".to_owned(),
            });
        }
        let name_bytes = &bytes[name_at..data_at - 1];
        let path = String::from_utf8(name_bytes.to_vec()).map_err(|_| CpioError::Malformed {
            offset: name_at,
            what: "member name is not UTF-8".to_owned(),
        })?;
        if path == TRAILER {
            return Ok(entries);
        }
        let kind = match mode & S_IFMT {
            S_IFREG => EntryKind::File(bytes[data_at..end].to_vec()),
            S_IFDIR => EntryKind::Directory,
            _ => return Err(CpioError::UnsupportedType { path, mode }),
        };
        entries.push(Entry {
            path,
            kind,
            perm: mode & 0o7777,
            uid,
            gid,
            mtime,
        });
        at = end;
    }
}

/// gzip-compresses `data` deterministically (gzip mtime 0, no name, default level).
pub fn gzip(data: &[u8]) -> Result<Vec<u8>, CpioError> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).map_err(CpioError::Gzip)?;
    encoder.finish().map_err(CpioError::Gzip)
}

/// Decompresses a gzip stream.
pub fn gunzip(data: &[u8]) -> Result<Vec<u8>, CpioError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .map_err(CpioError::Gzip)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        vec![
            Entry {
                path: ".".to_owned(),
                kind: EntryKind::Directory,
                perm: 0o755,
                uid: 0,
                gid: 0,
                mtime: 1_700_000_000,
            },
            Entry {
                path: "./bin".to_owned(),
                kind: EntryKind::Directory,
                perm: 0o755,
                uid: 0,
                gid: 80,
                mtime: 1_700_000_000,
            },
            Entry {
                path: "./bin/tool".to_owned(),
                kind: EntryKind::File(b"#!/bin/sh\necho hi\n".to_vec()),
                perm: 0o755,
                uid: 0,
                gid: 0,
                mtime: 1_700_000_000,
            },
            Entry {
                path: "./empty".to_owned(),
                kind: EntryKind::File(Vec::new()),
                perm: 0o600,
                uid: 501,
                gid: 20,
                mtime: 1,
            },
        ]
    }

    #[test]
    fn round_trips_files_and_directories() {
        let archive = write_odc(&sample()).expect("write");
        assert_eq!(read_odc(&archive).expect("read"), sample());
        assert!(archive.ends_with(b"TRAILER!!!\0"));
    }

    #[test]
    fn gnu_cpio_lists_and_extracts_what_we_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = write_odc(&sample()).expect("write");
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, &archive).expect("write archive");
        let out = std::process::Command::new("cpio")
            .args(["-i", "-d", "--quiet", "-F"])
            .arg(&path)
            .current_dir(dir.path())
            .output()
            .expect("cpio must be installed to run this test (apt-get install cpio)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tool = std::fs::read(dir.path().join("bin/tool")).expect("extracted");
        assert_eq!(tool, b"#!/bin/sh\necho hi\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("bin/tool"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn gzip_output_is_deterministic_and_round_trips() {
        let data = write_odc(&sample()).expect("write");
        let a = gzip(&data).expect("gzip");
        let b = gzip(&data).expect("gzip");
        assert_eq!(a, b);
        assert_eq!(&a[4..8], &[0, 0, 0, 0], "gzip mtime is zero");
        assert_eq!(gunzip(&a).expect("gunzip"), data);
    }

    #[test]
    fn rejects_truncated_archives_and_oversized_fields() {
        let archive = write_odc(&sample()).expect("write");
        let err = read_odc(&archive[..archive.len() - 20]).expect_err("truncated");
        assert!(matches!(err, CpioError::Malformed { .. }), "{err}");
        let mut big = sample();
        big[0].uid = 0o1_000_000;
        let err = write_odc(&big).expect_err("uid too large");
        assert!(err.to_string().contains("uid"), "{err}");
    }
}
