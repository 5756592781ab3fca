//! What can go wrong opening, writing or reading the spool, and the error chain its logs use.

use super::*;

/// A spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A setting is out of range.
    #[error("invalid spool setting `{field}`: {reason}")]
    InvalidConfig {
        /// The TOML key.
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The spool directory could not be created or secured.
    #[error("creating spool directory {path}; check that the parent exists and is writable")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The spool directory could not be listed.
    #[error("listing spool directory {path}")]
    ListDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A new segment file could not be created.
    #[error("creating spool segment {path}; check free space and permissions")]
    CreateSegment {
        /// The segment file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A record could not be written to its segment.
    #[error("writing record {seq} to spool segment {path}; check free space")]
    Write {
        /// The record's number (not consumed).
        seq: u64,
        /// The segment file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A segment could not be fsync'd.
    #[error("syncing spool segment {path} to disk")]
    Sync {
        /// The segment file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A record could not be encoded.
    #[error("encoding record {seq} for the spool")]
    Encode {
        /// The record's number (not consumed).
        seq: u64,
        /// The cause.
        #[source]
        source: PayloadError,
    },
    /// The file that records a range of unwritten numbers could not be created.
    #[error("recording unwritten numbers {first_seq}..={last_seq} in {path}; check free space")]
    MarkUnwritten {
        /// The first unwritten number.
        first_seq: u64,
        /// The last unwritten number.
        last_seq: u64,
        /// The marker file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A record is larger than a frame may be.
    #[error("record {seq} encodes to {bytes} bytes, above the spool's limit of {max}")]
    RecordTooLarge {
        /// The record's number (not consumed).
        seq: u64,
        /// Its encoded size.
        bytes: usize,
        /// The limit.
        max: u32,
    },
}

impl SpoolError {
    /// The disk refused the record: creating a segment or marker, or writing, failed. Only the
    /// record's storage failed; another record may well be stored later.
    pub fn is_storage(&self) -> bool {
        matches!(
            self,
            SpoolError::CreateDir { .. }
                | SpoolError::CreateSegment { .. }
                | SpoolError::Write { .. }
                | SpoolError::MarkUnwritten { .. }
        )
    }

    /// The file system is out of space (or quota): `ENOSPC`, `EDQUOT`.
    pub fn is_out_of_space(&self) -> bool {
        let source = match self {
            SpoolError::CreateDir { source, .. }
            | SpoolError::CreateSegment { source, .. }
            | SpoolError::Write { source, .. }
            | SpoolError::Sync { source, .. }
            | SpoolError::MarkUnwritten { source, .. } => source,
            _ => return false,
        };
        matches!(
            source.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
    }
}

/// An error and its causes, `: `-separated, so a log line carries the OS error too.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
