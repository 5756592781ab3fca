//! An append-only, fsync'd write-ahead log of typed records.
//!
//! The erase engine writes every state transition here before acting on it: after
//! [`Journal::append`] returns, the record survives a crash or power loss.
//!
//! File format (all integers little-endian):
//!
//! ```text
//! "JEXWAL1\n"                                  8-byte magic
//! { u32 payload_len | u32 crc32(payload) | payload }*   one frame per record
//! ```
//!
//! `payload` is the record as JSON (`serde_json`), `1..=MAX_RECORD_BYTES` bytes, CRC-32 (IEEE)
//! checksummed. A crash while appending leaves a torn last frame (short, checksum mismatch, or
//! zero-filled): it is ignored, and truncated away when the journal is next opened for writing.
//! A bad frame followed by valid data is corruption and is reported, never skipped.
//!
//! Durability: each append is followed by `fdatasync` (`F_FULLFSYNC` on macOS, through
//! `File::sync_data`); creating the file also syncs its directory, so the file itself survives.
//! The file is created with mode 0600.
//!
//! With the `test-util` feature, a [`WriteFault`] can make appends fail as on a full disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The 8-byte magic at the start of every journal file.
pub const MAGIC: &[u8; 8] = b"JEXWAL1\n";

/// The largest record accepted, in bytes of JSON.
pub const MAX_RECORD_BYTES: usize = 16 << 20;

const FRAME_HEADER: usize = 8;

/// Journal failures. Each names the journal file.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Creating, opening, reading, writing or syncing the file failed.
    #[error("{operation} journal {path}")]
    Io {
        /// What was being done (`opening`, `appending to`, ...).
        operation: &'static str,
        /// The journal file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file does not start with [`MAGIC`].
    #[error("journal {path} is not a jex-agent journal (bad magic): move it aside")]
    BadMagic {
        /// The journal file.
        path: PathBuf,
    },
    /// A damaged frame is followed by more data: not a torn append.
    #[error("journal {path} is corrupt at byte {offset}: restore it or move it aside")]
    Corrupt {
        /// The journal file.
        path: PathBuf,
        /// Byte offset of the damaged frame.
        offset: u64,
    },
    /// A frame with a valid checksum holds a record this version cannot read.
    #[error("journal {path}: decoding the record at byte {offset}")]
    Decode {
        /// The journal file.
        path: PathBuf,
        /// Byte offset of the frame.
        offset: u64,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A record could not be encoded.
    #[error("journal {path}: encoding a record")]
    Encode {
        /// The journal file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A record exceeds [`MAX_RECORD_BYTES`].
    #[error("journal {path}: record of {len} bytes exceeds the limit of {MAX_RECORD_BYTES}")]
    TooLarge {
        /// The journal file.
        path: PathBuf,
        /// The record's size.
        len: usize,
    },
}

/// A write fault injected into a journal's appends (tests; feature `test-util`): called with
/// each record's JSON payload before its frame is written. When it returns an error, the append
/// writes the first half of the frame, as a short write on a full disk does, and fails with
/// that error.
#[cfg(any(test, feature = "test-util"))]
pub type WriteFault = std::sync::Arc<dyn Fn(&[u8]) -> Option<io::Error> + Send + Sync>;

/// An open journal, positioned for appending records of type `T`.
pub struct Journal<T> {
    file: File,
    path: PathBuf,
    len: u64,
    #[cfg(any(test, feature = "test-util"))]
    write_fault: Option<WriteFault>,
    _record: PhantomData<fn(T) -> T>,
}

impl<T> std::fmt::Debug for Journal<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// What was read from a journal file.
#[derive(Debug)]
pub struct Replay<T> {
    /// Every intact record, in append order.
    pub records: Vec<T>,
    /// Bytes of intact data (magic plus intact frames).
    pub valid_len: u64,
    /// Bytes of a torn last frame that were ignored.
    pub torn_bytes: u64,
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// Opens (creating if needed) the journal at `path`, returning it with every intact record.
    /// A torn last frame is truncated away (and the truncation synced).
    pub fn open(path: &Path) -> Result<(Self, Vec<T>), JournalError> {
        let io_err = |operation, source| JournalError::Io {
            operation,
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| io_err("opening", e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io_err("reading", e))?;
        let replay = if bytes.is_empty() {
            None
        } else {
            Some(decode(path, &bytes)?)
        };
        let Some(replay) = replay.filter(|r| r.valid_len >= MAGIC.len() as u64) else {
            // New file, or a crash tore the magic while creating it.
            file.set_len(0).map_err(|e| io_err("creating", e))?;
            file.seek(SeekFrom::Start(0))
                .map_err(|e| io_err("creating", e))?;
            file.write_all(MAGIC).map_err(|e| io_err("creating", e))?;
            file.sync_all().map_err(|e| io_err("syncing", e))?;
            sync_parent_dir(path).map_err(|e| io_err("syncing the directory of", e))?;
            let journal = Journal {
                file,
                path: path.to_path_buf(),
                len: MAGIC.len() as u64,
                #[cfg(any(test, feature = "test-util"))]
                write_fault: None,
                _record: PhantomData,
            };
            return Ok((journal, Vec::new()));
        };
        if replay.torn_bytes > 0 {
            file.set_len(replay.valid_len)
                .map_err(|e| io_err("truncating the torn tail of", e))?;
            file.sync_all().map_err(|e| io_err("syncing", e))?;
        }
        file.seek(SeekFrom::Start(replay.valid_len))
            .map_err(|e| io_err("seeking in", e))?;
        let journal = Journal {
            file,
            path: path.to_path_buf(),
            len: replay.valid_len,
            #[cfg(any(test, feature = "test-util"))]
            write_fault: None,
            _record: PhantomData,
        };
        Ok((journal, replay.records))
    }

    /// Reads the journal at `path` without modifying it (for observers and tools): a torn last
    /// frame is ignored.
    pub fn read(path: &Path) -> Result<Replay<T>, JournalError> {
        let bytes = std::fs::read(path).map_err(|source| JournalError::Io {
            operation: "reading",
            path: path.to_path_buf(),
            source,
        })?;
        if bytes.is_empty() {
            return Ok(Replay {
                records: Vec::new(),
                valid_len: 0,
                torn_bytes: 0,
            });
        }
        decode(path, &bytes)
    }

    /// Appends `record` and makes it durable before returning.
    pub fn append(&mut self, record: &T) -> Result<(), JournalError> {
        let payload = serde_json::to_vec(record).map_err(|source| JournalError::Encode {
            path: self.path.clone(),
            source,
        })?;
        if payload.len() > MAX_RECORD_BYTES {
            return Err(JournalError::TooLarge {
                path: self.path.clone(),
                len: payload.len(),
            });
        }
        // MAX_RECORD_BYTES < u32::MAX, checked just above.
        let len = payload.len() as u32;
        let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        let io_err = |source| JournalError::Io {
            operation: "appending to",
            path: self.path.clone(),
            source,
        };
        // Write at the known end: after a failed append, the next one overwrites the partial frame.
        self.file.seek(SeekFrom::Start(self.len)).map_err(io_err)?;
        #[cfg(any(test, feature = "test-util"))]
        if let Some(err) = self.write_fault.as_ref().and_then(|fault| fault(&payload)) {
            self.file
                .write_all(&frame[..frame.len() / 2])
                .map_err(io_err)?;
            return Err(io_err(err));
        }
        self.file.write_all(&frame).map_err(io_err)?;
        self.file.sync_data().map_err(io_err)?;
        self.len += frame.len() as u64;
        Ok(())
    }

    /// The journal file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes later appends consult `fault` (see [`WriteFault`]); `None` removes it.
    #[cfg(any(test, feature = "test-util"))]
    pub fn set_write_fault(&mut self, fault: Option<WriteFault>) {
        self.write_fault = fault;
    }
}

fn decode<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<Replay<T>, JournalError> {
    if bytes.len() < MAGIC.len() {
        // A crash while creating the file: the magic itself is torn.
        if MAGIC.starts_with(bytes) {
            return Ok(Replay {
                records: Vec::new(),
                valid_len: 0,
                torn_bytes: bytes.len() as u64,
            });
        }
        return Err(JournalError::BadMagic {
            path: path.to_path_buf(),
        });
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(JournalError::BadMagic {
            path: path.to_path_buf(),
        });
    }
    let mut records = Vec::new();
    let mut offset = MAGIC.len();
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        match frame_at(rest) {
            Some(payload) => {
                let record =
                    serde_json::from_slice(payload).map_err(|source| JournalError::Decode {
                        path: path.to_path_buf(),
                        offset: offset as u64,
                        source,
                    })?;
                records.push(record);
                offset += FRAME_HEADER + payload.len();
            }
            None => {
                if is_torn_tail(rest) {
                    return Ok(Replay {
                        records,
                        valid_len: offset as u64,
                        torn_bytes: rest.len() as u64,
                    });
                }
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    offset: offset as u64,
                });
            }
        }
    }
    Ok(Replay {
        records,
        valid_len: offset as u64,
        torn_bytes: 0,
    })
}

/// The payload of an intact frame at the start of `rest`.
fn frame_at(rest: &[u8]) -> Option<&[u8]> {
    let header = rest.get(..FRAME_HEADER)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_RECORD_BYTES {
        return None;
    }
    let payload = rest.get(FRAME_HEADER..FRAME_HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some(payload)
}

/// A damaged frame is a torn append when no intact frame follows it anywhere (appends are
/// sequential, so only the last frame can be torn). Searching every later offset, rather than
/// trusting the damaged frame's length field, keeps a corrupted length in the middle of the file
/// from being mistaken for a torn tail and truncated away with the records after it.
fn is_torn_tail(rest: &[u8]) -> bool {
    // Payloads are JSON objects: only offsets followed by `{` can start a frame.
    !(1..rest.len())
        .any(|p| rest.get(p + FRAME_HEADER) == Some(&b'{') && frame_at(&rest[p..]).is_some())
}

/// Syncs the directory holding `path`, so a newly created or renamed entry survives a crash.
pub fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Writes `bytes` to `path` atomically and durably: a temporary file in the same directory
/// (created with `mode`), synced, renamed over `path`, then the directory synced.
pub fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    // Explicit mode, whatever the process umask.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_parent_dir(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Rec {
        n: u32,
        text: String,
    }

    fn rec(n: u32) -> Rec {
        Rec {
            n,
            text: format!("record {n}"),
        }
    }

    #[test]
    fn records_survive_reopen_in_order_and_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let (mut journal, records) = Journal::<Rec>::open(&path).unwrap();
        assert!(records.is_empty());
        for n in 0..5 {
            journal.append(&rec(n)).unwrap();
        }
        drop(journal);
        let (_, records) = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(records, (0..5).map(rec).collect::<Vec<_>>());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_torn_last_frame_at_every_cut_point_is_ignored_and_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let (mut journal, _) = Journal::<Rec>::open(&path).unwrap();
        journal.append(&rec(1)).unwrap();
        journal.append(&rec(2)).unwrap();
        let two_len = std::fs::metadata(&path).unwrap().len();
        journal.append(&rec(3)).unwrap();
        drop(journal);
        let full = std::fs::read(&path).unwrap();
        for cut in two_len as usize..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let observed = Journal::<Rec>::read(&path).unwrap();
            assert_eq!(observed.records, vec![rec(1), rec(2)], "cut at {cut}");
            let (mut journal, records) = Journal::<Rec>::open(&path).unwrap();
            assert_eq!(records, vec![rec(1), rec(2)], "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), two_len);
            journal.append(&rec(4)).unwrap();
            drop(journal);
            let (_, records) = Journal::<Rec>::open(&path).unwrap();
            assert_eq!(records, vec![rec(1), rec(2), rec(4)], "cut at {cut}");
        }
    }

    #[test]
    fn zero_filled_tail_after_a_crash_is_torn_not_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let (mut journal, _) = Journal::<Rec>::open(&path).unwrap();
        journal.append(&rec(1)).unwrap();
        drop(journal);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&path, &bytes).unwrap();
        let (_, records) = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(records, vec![rec(1)]);
    }

    #[test]
    fn a_flipped_bit_before_valid_frames_is_reported_as_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let (mut journal, _) = Journal::<Rec>::open(&path).unwrap();
        for n in 0..3 {
            journal.append(&rec(n)).unwrap();
        }
        drop(journal);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[MAGIC.len() + FRAME_HEADER + 3] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = Journal::<Rec>::open(&path).unwrap_err();
        assert!(
            matches!(err, JournalError::Corrupt { offset, .. } if offset == MAGIC.len() as u64),
            "{err}"
        );
    }

    #[test]
    fn a_torn_magic_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        std::fs::write(&path, &MAGIC[..3]).unwrap();
        let (mut journal, records) = Journal::<Rec>::open(&path).unwrap();
        assert!(records.is_empty());
        journal.append(&rec(9)).unwrap();
        drop(journal);
        assert_eq!(Journal::<Rec>::read(&path).unwrap().records, vec![rec(9)]);
    }

    #[test]
    fn a_corrupted_length_field_in_the_middle_is_corruption_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let (mut journal, _) = Journal::<Rec>::open(&path).unwrap();
        for n in 0..3 {
            journal.append(&rec(n)).unwrap();
        }
        drop(journal);
        let mut bytes = std::fs::read(&path).unwrap();
        // The first frame now claims to run past the end of the file.
        bytes[MAGIC.len() + 3] = 0x7f;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Journal::<Rec>::open(&path),
            Err(JournalError::Corrupt { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing truncated");
    }

    #[test]
    fn an_append_that_hits_a_full_disk_fails_and_the_next_one_overwrites_its_short_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let (mut journal, _) = Journal::<Rec>::open(&path).unwrap();
        journal.append(&rec(1)).unwrap();
        let full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = full.clone();
        journal.set_write_fault(Some(std::sync::Arc::new(move |_: &[u8]| {
            flag.load(std::sync::atomic::Ordering::SeqCst)
                .then(|| io::Error::from_raw_os_error(libc::ENOSPC))
        })));
        let err = journal.append(&rec(2)).unwrap_err();
        let JournalError::Io { source, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(source.kind(), io::ErrorKind::StorageFull);
        assert!(jex_platform::error_chain(&err).contains("No space left on device"));
        // The short write is on disk, and read as a torn tail.
        assert_eq!(Journal::<Rec>::read(&path).unwrap().records, vec![rec(1)]);
        assert!(Journal::<Rec>::read(&path).unwrap().torn_bytes > 0);
        full.store(false, std::sync::atomic::Ordering::SeqCst);
        journal.append(&rec(3)).unwrap();
        drop(journal);
        let (_, records) = Journal::<Rec>::open(&path).unwrap();
        assert_eq!(records, vec![rec(1), rec(3)]);
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        std::fs::write(&path, b"{\"not\": \"a journal\"}").unwrap();
        assert!(matches!(
            Journal::<Rec>::open(&path),
            Err(JournalError::BadMagic { .. })
        ));
    }

    #[test]
    fn atomic_write_replaces_content_with_the_requested_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.json");
        write_file_atomic(&path, b"one", 0o644).unwrap();
        write_file_atomic(&path, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        assert!(!dir.path().join("cert.json.tmp").exists());
    }
}
