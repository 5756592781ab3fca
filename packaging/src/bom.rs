//! Writer of Apple "BOMStore" bills of materials (the `Bom` of a component package).
//!
//! Installer records the Bom as the package receipt (`pkgutil --files`, `lsbom`). All integers
//! are big-endian. The file is a 512-byte header area, then the blocks, then the variables and
//! the block index:
//!
//! ```text
//! header   "BOMStore" | u32 version 1 | u32 blocks (non-null) | u32 index offset | u32 index len
//!          | u32 vars offset | u32 vars len
//! block 1  BomInfo  { u32 1, u32 paths, u32 0 }
//! block 2  Paths tree { "tree", u32 1, u32 leaf block 3, u32 block size 4096, u32 paths, u8 0 }
//! block 3  leaf { u16 is-leaf 1, u16 count, u32 next 0, u32 prev 0, (u32 PathInfo1, u32 File)* }
//!          sorted by (parent id, name): parents come before their children
//! block 4  HLIndex tree -> block 5 empty leaf (4096)
//! block 6  VIndex { u32 1, u32 tree 7, u32 0, u8 0 } -> block 7 tree (128) -> block 8 empty leaf
//! block 9  Size64 tree (128) -> block 10 empty leaf
//! then per path, three blocks:
//!   PathInfo2 { u8 type (1 file, 2 dir), u8 1, u16 arch 3, u16 st_mode, u32 uid, u32 gid,
//!               u32 mtime, u32 size, u8 1, u32 POSIX cksum (0 for dirs), u32 link name len 0
//!               [files: u32 0] }
//!   File      { u32 parent id (0 for ".", 1 for top-level entries), name\0 }
//!   PathInfo1 { u32 path id, u32 PathInfo2 block }
//! vars     u32 5, then (u32 block, u8 name len, name) for BomInfo Paths HLIndex VIndex Size64
//! index    u32 count (with the null block 0), (u32 offset, u32 len)*, u32 0 (empty free list)
//! ```
//!
//! Limits, checked: one leaf holds at most [`MAX_PATHS`] paths, and only regular files and
//! directories are described (no symlinks, hard links or devices). Both suit the agent payload.

use crate::cpio::{Entry, EntryKind};

/// Paths one 4096-byte leaf block holds: (4096 - 12) / 8.
pub const MAX_PATHS: usize = 510;
const PATHS_BLOCK_SIZE: u32 = 4096;
const SMALL_BLOCK_SIZE: u32 = 128;
const HEADER_AREA: usize = 512;

/// A tree that cannot be described by this writer.
#[derive(Debug, thiserror::Error)]
pub enum BomError {
    /// More paths than one leaf block holds.
    #[error("write bom: {count} paths exceed the {MAX_PATHS} one leaf block holds")]
    TooManyPaths {
        /// Number of paths given.
        count: usize,
    },
    /// The tree does not start with `.` or a path comes before its parent directory.
    #[error("write bom path {path}: {what}")]
    BadPath {
        /// The offending path.
        path: String,
        /// What is wrong.
        what: &'static str,
    },
    /// A value does not fit the 32-bit (or 16-bit) field that holds it.
    #[error("write bom path {path}: {field} does not fit its field")]
    FieldTooLarge {
        /// The offending path.
        path: String,
        /// The field.
        field: &'static str,
    },
}

/// POSIX `cksum(1)` CRC: CRC-32 (poly 0x04C11DB7, MSB first) over the data, then over the length
/// in as few bytes as needed (least significant first), inverted.
pub fn posix_cksum(data: &[u8]) -> u32 {
    fn step(crc: u32, byte: u8) -> u32 {
        let mut c = crc ^ (u32::from(byte) << 24);
        for _ in 0..8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04C1_1DB7
            } else {
                c << 1
            };
        }
        c
    }
    let mut crc = data.iter().fold(0u32, |crc, &b| step(crc, b));
    let mut len = data.len() as u64;
    while len > 0 {
        crc = step(crc, (len & 0xff) as u8);
        len >>= 8;
    }
    !crc
}

fn be32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn tree_block(leaf: u32, block_size: u32, paths: u32) -> Vec<u8> {
    let mut b = b"tree".to_vec();
    be32(&mut b, 1);
    be32(&mut b, leaf);
    be32(&mut b, block_size);
    be32(&mut b, paths);
    b.push(0);
    b
}

fn leaf_block(entries: &[(u32, u32)], block_size: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(block_size as usize);
    b.extend_from_slice(&1u16.to_be_bytes());
    // Callers keep the count within MAX_PATHS, which fits u16.
    b.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    be32(&mut b, 0);
    be32(&mut b, 0);
    for &(info, file) in entries {
        be32(&mut b, info);
        be32(&mut b, file);
    }
    b.resize(block_size as usize, 0);
    b
}

fn parent_and_name(path: &str) -> Option<(&str, &str)> {
    path.rsplit_once('/')
}

/// Writes the Bom describing `entries` (the payload tree, `.` first, parents before children).
pub fn write_bom(entries: &[Entry]) -> Result<Vec<u8>, BomError> {
    if entries.len() > MAX_PATHS {
        return Err(BomError::TooManyPaths {
            count: entries.len(),
        });
    }
    let mut ids: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    // Block 0 is the null block.
    let mut blocks: Vec<Vec<u8>> = vec![Vec::new()];
    let reserved_first_path_block = 11;
    blocks.resize(reserved_first_path_block, Vec::new());
    // (parent id, name, PathInfo1 block, File block)
    let mut leaf: Vec<(u32, Vec<u8>, u32, u32)> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let path = entry.path.as_str();
        let (parent_id, name) = if index == 0 {
            if path != "." {
                return Err(BomError::BadPath {
                    path: path.to_owned(),
                    what: "the first path must be \".\"",
                });
            }
            (0, ".")
        } else {
            let (parent, name) = parent_and_name(path)
                .filter(|(_, name)| !name.is_empty())
                .ok_or(BomError::BadPath {
                    path: path.to_owned(),
                    what: "must be ./relative without a trailing slash",
                })?;
            let parent_id = *ids.get(parent).ok_or(BomError::BadPath {
                path: path.to_owned(),
                what: "its parent directory must come earlier",
            })?;
            (parent_id, name)
        };
        if ids.contains_key(path) {
            return Err(BomError::BadPath {
                path: path.to_owned(),
                what: "listed twice",
            });
        }
        let id = index as u32 + 1;
        ids.insert(path, id);

        let too_large = |field| BomError::FieldTooLarge {
            path: path.to_owned(),
            field,
        };
        let (kind, size, cksum) = match &entry.kind {
            EntryKind::File(data) => (
                1u8,
                u32::try_from(data.len()).map_err(|_| too_large("size"))?,
                posix_cksum(data),
            ),
            EntryKind::Directory => (2u8, 0, 0),
        };
        let mode = u16::try_from(entry.st_mode()).map_err(|_| too_large("mode"))?;
        let mut info2 = vec![kind, 1];
        info2.extend_from_slice(&3u16.to_be_bytes());
        info2.extend_from_slice(&mode.to_be_bytes());
        be32(&mut info2, entry.uid);
        be32(&mut info2, entry.gid);
        be32(&mut info2, entry.mtime);
        be32(&mut info2, size);
        info2.push(1);
        be32(&mut info2, cksum);
        be32(&mut info2, 0);
        if kind == 1 {
            be32(&mut info2, 0);
        }
        let info2_block = blocks.len() as u32;
        blocks.push(info2);

        let mut file = Vec::new();
        be32(&mut file, parent_id);
        file.extend_from_slice(name.as_bytes());
        file.push(0);
        let file_block = blocks.len() as u32;
        blocks.push(file);

        let mut info1 = Vec::new();
        be32(&mut info1, id);
        be32(&mut info1, info2_block);
        let info1_block = blocks.len() as u32;
        blocks.push(info1);

        leaf.push((parent_id, name.as_bytes().to_vec(), info1_block, file_block));
    }
    leaf.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let leaf_entries: Vec<(u32, u32)> = leaf.iter().map(|l| (l.2, l.3)).collect();
    let paths = entries.len() as u32;

    let mut info = Vec::new();
    be32(&mut info, 1);
    be32(&mut info, paths);
    be32(&mut info, 0);
    blocks[1] = info;
    blocks[2] = tree_block(3, PATHS_BLOCK_SIZE, paths);
    blocks[3] = leaf_block(&leaf_entries, PATHS_BLOCK_SIZE);
    blocks[4] = tree_block(5, PATHS_BLOCK_SIZE, 0);
    blocks[5] = leaf_block(&[], PATHS_BLOCK_SIZE);
    let mut vindex = Vec::new();
    be32(&mut vindex, 1);
    be32(&mut vindex, 7);
    be32(&mut vindex, 0);
    vindex.push(0);
    blocks[6] = vindex;
    blocks[7] = tree_block(8, SMALL_BLOCK_SIZE, 0);
    blocks[8] = leaf_block(&[], SMALL_BLOCK_SIZE);
    blocks[9] = tree_block(10, SMALL_BLOCK_SIZE, 0);
    blocks[10] = leaf_block(&[], SMALL_BLOCK_SIZE);

    let mut out = vec![0u8; HEADER_AREA];
    let mut pointers = Vec::with_capacity(blocks.len());
    for (index, block) in blocks.iter().enumerate() {
        if index == 0 {
            pointers.push((0u32, 0u32));
            continue;
        }
        pointers.push((out.len() as u32, block.len() as u32));
        out.extend_from_slice(block);
    }

    let vars_offset = out.len();
    be32(&mut out, 5);
    for (block, name) in [
        (1u32, "BomInfo"),
        (2, "Paths"),
        (4, "HLIndex"),
        (6, "VIndex"),
        (9, "Size64"),
    ] {
        be32(&mut out, block);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    }
    let vars_len = out.len() - vars_offset;

    let index_offset = out.len();
    be32(&mut out, pointers.len() as u32);
    for (offset, len) in &pointers {
        be32(&mut out, *offset);
        be32(&mut out, *len);
    }
    be32(&mut out, 0);
    let index_len = out.len() - index_offset;

    let mut header = b"BOMStore".to_vec();
    be32(&mut header, 1);
    be32(&mut header, blocks.len() as u32 - 1);
    be32(&mut header, index_offset as u32);
    be32(&mut header, index_len as u32);
    be32(&mut header, vars_offset as u32);
    be32(&mut header, vars_len as u32);
    out[..header.len()].copy_from_slice(&header);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(path: &str, gid: u32) -> Entry {
        Entry {
            path: path.to_owned(),
            kind: EntryKind::Directory,
            perm: 0o755,
            uid: 0,
            gid,
            mtime: 1_700_000_000,
        }
    }

    fn file(path: &str, perm: u32, data: &[u8]) -> Entry {
        Entry {
            path: path.to_owned(),
            kind: EntryKind::File(data.to_vec()),
            perm,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
        }
    }

    fn tree() -> Vec<Entry> {
        vec![
            dir(".", 0),
            dir("./Library", 0),
            dir("./Library/Application Support", 80),
            dir("./Library/Application Support/Vendor", 0),
            file(
                "./Library/Application Support/Vendor/tool",
                0o755,
                b"binary",
            ),
            dir("./Library/LaunchDaemons", 0),
            file("./Library/LaunchDaemons/x.plist", 0o644, b"<plist/>"),
            dir("./private", 0),
        ]
    }

    #[test]
    fn posix_cksum_matches_the_cksum_tool() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, data) in [
            ("empty", Vec::new()),
            ("short", b"hello world\n".to_vec()),
            (
                "long",
                (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect(),
            ),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, &data).expect("write");
            let out = std::process::Command::new("cksum")
                .arg(&path)
                .output()
                .expect("cksum (coreutils) must be installed to run this test");
            let text = String::from_utf8_lossy(&out.stdout);
            let expected: u32 = text
                .split_whitespace()
                .next()
                .expect("cksum output")
                .parse()
                .expect("number");
            assert_eq!(posix_cksum(&data), expected, "{name}");
        }
    }

    #[test]
    fn apple_bom_reads_every_path_with_its_metadata() {
        let entries = tree();
        let bytes = write_bom(&entries).expect("write");
        let bom = apple_bom::ParsedBom::parse(&bytes).expect("apple-bom parses our bom");
        let paths = bom.paths().expect("paths");
        let mut seen: Vec<(String, u16, u32, u32, u32, u32)> = paths
            .iter()
            .map(|p| {
                (
                    p.path().to_owned(),
                    p.file_mode(),
                    p.user_id(),
                    p.group_id(),
                    p.size() as u32,
                    p.crc32().unwrap_or(0),
                )
            })
            .collect();
        seen.sort();
        let mut expected: Vec<(String, u16, u32, u32, u32, u32)> = entries
            .iter()
            .map(|e| {
                (
                    e.path.clone(),
                    e.st_mode() as u16,
                    e.uid,
                    e.gid,
                    e.data().len() as u32,
                    match e.kind {
                        EntryKind::File(ref d) => posix_cksum(d),
                        EntryKind::Directory => 0,
                    },
                )
            })
            .collect();
        expected.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn identical_trees_give_identical_boms() {
        assert_eq!(
            write_bom(&tree()).expect("a"),
            write_bom(&tree()).expect("b")
        );
    }

    #[test]
    fn rejects_orphans_duplicates_and_oversized_trees() {
        let mut orphan = tree();
        orphan.push(file("./nowhere/x", 0o644, b""));
        assert!(matches!(write_bom(&orphan), Err(BomError::BadPath { .. })));
        let mut duplicate = tree();
        duplicate.push(dir("./private", 0));
        assert!(matches!(
            write_bom(&duplicate),
            Err(BomError::BadPath { .. })
        ));
        let mut big = vec![dir(".", 0)];
        big.extend((0..MAX_PATHS).map(|i| file(&format!("./f{i}"), 0o644, b"")));
        assert!(matches!(
            write_bom(&big),
            Err(BomError::TooManyPaths { .. })
        ));
    }
}
