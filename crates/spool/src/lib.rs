//! A bounded, crash-safe, on-disk sequence of numbered records that lets a reader resume after
//! its own restart or the writer's with nothing lost silently.
//!
//! The crate owns the segment files, their format, crash recovery, the size cap and the rules
//! for numbering. It is generic over what a record carries: each record is an [`Entry`] (a
//! number, a time and the caller's payload, any `T: `[`Payload`]), and what it cannot deliver
//! it reports as a [`Missing`] range with its [`Loss`] reason. It must not depend
//! on the telemetry model, the platform crate, tokio or gRPC: the agent's telemetry hub stores
//! its records here and turns missing ranges into the telemetry gaps it sends.
//!
//! # Layout
//!
//! One directory (created `0700`) of append-only segment files named by the sequence number of
//! their first record, zero-padded so names sort by number: `00000000000000000001.seg`. Files
//! with other names are ignored. Each segment is a header and a run of frames, each frame a
//! length, a CRC-32 and one record: its number, its time, a schema number and the payload's
//! bytes; see `format.rs` for the bytes.
//!
//! # Records that survive upgrades
//!
//! The spool stores a payload as the bytes its [`Payload`] impl encodes, with the schema number
//! the impl names, and hands both back to [`Payload::decode`]: the caller picks an encoding
//! that a later version of itself still reads (the agent stores the protobuf encoding of its
//! `TelemetryRecord`, whose fields are numbered, so a field added later reads as its default in
//! older records). [`Stored`] keeps the bytes as they are, for a reader that forwards them.
//! Segments of the first format (1), whose payloads were postcard-encoded with no schema number,
//! are still read: their payloads reach [`Payload::decode`] under [`SCHEMA_V1`], so the caller
//! keeps a decoder for them. The spool writes only the current format (2) and never appends to
//! a format 1 segment: after an upgrade the next record starts a new segment.
//!
//! # Invariants
//!
//! - Sequence numbers start at 1 and strictly increase, within a segment, across segments and
//!   across restarts: on open, the next number is one past the highest number ever handed out
//!   that the directory still shows (records, damaged frames at the tail, segment names).
//! - **Durable before visible.** [`Spool::read_after`] returns only records that have been
//!   fsync'd ([`SpoolStats::durable_seq`]); a caller that also hands out records live must do so
//!   under the same rule (the agent's hub does). A crash can therefore lose only records nobody
//!   has seen, and re-using their numbers after a restart cannot give a reader two different
//!   records under one number.
//! - fsync runs on append once the last fsync is `fsync_interval` old (less the writer's
//!   [`Spool::set_sync_slack`]), on [`Spool::flush`] and [`Spool::sync_now`], and on segment
//!   roll. A writer on a jittery schedule sets a slack of half its period, so that a sync due
//!   about now happens in this append and not one period later: with a 1 s interval, 1 s appends
//!   and a 500 ms slack every record is synced as it is written; appending more often makes
//!   records visible in bursts of one fsync interval unless the writer calls `sync_now`.
//! - Memory does not grow with the spool: per segment the spool keeps its counts, first and last
//!   record heads, and one index entry every [`INDEX_STRIDE`] records. Opening scans every
//!   segment once, one buffered chunk at a time.
//! - The spool never exceeds `max_bytes` (give or take one record): before a new segment is
//!   started, the oldest whole segments are deleted until the new one fits. Every number below
//!   the oldest remaining segment's name counts as evicted.
//! - On a full disk (`ENOSPC`, `EDQUOT`) an append deletes the oldest whole segments, never the
//!   one being written, and retries before it refuses a record: an `Evicted` range is better
//!   than silence. A refused record's number is not consumed.
//! - [`Spool::skip`] hands out a number without storing a record, for a caller that publishes
//!   a record the spool refused. Such numbers are reported as [`Loss::Unwritten`]; the next
//!   append that succeeds first records them in an empty marker file named
//!   `<first>-<last>.unwritten` (zero-padded like segment names), so they keep that reason and
//!   are never handed out again across a restart. Markers go with the segments evicted past
//!   them.
//!
//! # Missing ranges
//!
//! [`Spool::read_after`] never skips a number in silence. Where numbers are missing it returns
//! an [`Item::Missing`] for the inclusive range `first_seq..=last_seq`: [`Loss::Evicted`] for
//! numbers below the oldest segment, [`Loss::Corrupt`] for numbers inside the spool that no
//! valid record holds (damaged frames, unreadable segments), [`Loss::Unwritten`] for numbers
//! handed out by [`Spool::skip`]. A reader's cursor is the
//! [`Item::last_seq`] of the last item it took, so it moves past a missing range as past a
//! record (the agent's hub numbers the gap it sends for a range by its `last_seq` for this
//! reason). A missing range's times are those of the records on either side; the start of an
//! `Evicted` range is known only when this process did the eviction, and equals its end
//! otherwise.
//!
//! # Corruption
//!
//! A damaged frame is skipped and counted; reading resumes at the next frame that passes its
//! CRC. A bad tail of the newest segment (a write torn by a crash) is truncated on open; whole
//! frames in it that fail their CRC keep their numbers reserved, so those numbers are reported
//! as `Corrupt` rather than handed out again. A frame that passes its CRC but does not decode
//! (its fields, then its payload through [`Payload::decode`]), or whose number is not above the record before it (and at least its
//! segment's name), counts as damaged; reads apply the same rule as the open from the same
//! starting points, so such a frame never hides or reorders a record. A segment whose header is damaged, or that cannot be
//! read, is skipped; none of this stops [`Spool::open`].
//!
//! # Configuration (TOML, embedded in the agent config; the table name is the config's choice)
//!
//! ```toml
//! [telemetry.spool]
//! dir = "/var/lib/jex-agent/spool"   # required
//! max_bytes = 25165824               # default: 24 MiB, about 44 h of 10-core samples at 1 Hz
//! segment_bytes = 1048576            # default: 1 MiB
//! fsync_interval_ms = 1000           # default: 1 s
//! ```

#![forbid(unsafe_code)]

mod format;

pub use format::SCHEMA_V1;

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tracing::{debug, info, warn};

use self::format::{Event, FrameReader, Head};

/// Default `max_bytes`: 24 MiB.
///
/// Measured by the `spool` benchmark, a sample with P/E clusters and every memory class takes
/// 138 bytes on disk with its frame on a 2-core host, 154 on 10 cores and 182 on 24 cores
/// (about 2.3 bytes per extra core), so 24 h at 1 Hz is 11.9 to 15.7 MB, about 17.3 MB for a
/// 32-core host. 24 MiB holds a day of the largest of these plus the segment being written, with
/// about 30 % to spare; 16 MiB would leave no margin for 24 cores once a segment is kept free.
pub const DEFAULT_MAX_BYTES: u64 = 24 * 1024 * 1024;
/// Default `segment_bytes`: 1 MiB, about 1.9 h of samples at 1 Hz, so eviction drops at most
/// about 4 % of a full spool at a time.
pub const DEFAULT_SEGMENT_BYTES: u64 = 1024 * 1024;
/// Default `fsync_interval`: 1 s.
pub const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Smallest accepted `segment_bytes`.
pub const MIN_SEGMENT_BYTES: u64 = 4 * 1024;
/// Largest accepted `segment_bytes`.
pub const MAX_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest accepted `fsync_interval`: records become visible only once synced.
pub const MAX_FSYNC_INTERVAL: Duration = Duration::from_secs(60);
/// One index entry is kept per this many records of a segment.
pub const INDEX_STRIDE: u64 = 64;

/// Spool settings, embeddable in the agent's TOML config (unknown keys are rejected).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the segment files; created `0700` if missing.
    pub dir: PathBuf,
    /// Cap on the bytes of all segments; the oldest whole segments are deleted to stay below.
    /// At least twice `segment_bytes`.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Size at which a new segment is started, between [`MIN_SEGMENT_BYTES`] and
    /// [`MAX_SEGMENT_BYTES`].
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Longest time a written record waits for its fsync (TOML key `fsync_interval_ms`, in
    /// milliseconds); at most [`MAX_FSYNC_INTERVAL`]. Zero syncs every record.
    #[serde(
        rename = "fsync_interval_ms",
        default = "default_fsync_interval",
        serialize_with = "serialize_ms",
        deserialize_with = "deserialize_ms"
    )]
    pub fsync_interval: Duration,
}

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}

fn default_segment_bytes() -> u64 {
    DEFAULT_SEGMENT_BYTES
}

fn default_fsync_interval() -> Duration {
    DEFAULT_FSYNC_INTERVAL
}

fn serialize_ms<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
}

fn deserialize_ms<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

impl SpoolConfig {
    /// The default settings for a spool in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            fsync_interval: DEFAULT_FSYNC_INTERVAL,
        }
    }

    /// Checks the limits documented on each field.
    pub fn validate(&self) -> Result<(), SpoolError> {
        let invalid =
            |field: &'static str, reason: String| Err(SpoolError::InvalidConfig { field, reason });
        if self.dir.as_os_str().is_empty() {
            return invalid("dir", "set it to the spool directory".into());
        }
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return invalid(
                "segment_bytes",
                format!(
                    "{} is outside {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}",
                    self.segment_bytes
                ),
            );
        }
        if self.max_bytes < 2 * self.segment_bytes {
            return invalid(
                "max_bytes",
                format!(
                    "{} is below twice segment_bytes ({}); raise it or lower segment_bytes",
                    self.max_bytes,
                    2 * self.segment_bytes
                ),
            );
        }
        if self.fsync_interval > MAX_FSYNC_INTERVAL {
            return invalid(
                "fsync_interval_ms",
                format!(
                    "{} ms is above {} ms; records are published only once synced",
                    self.fsync_interval.as_millis(),
                    MAX_FSYNC_INTERVAL.as_millis()
                ),
            );
        }
        Ok(())
    }
}

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

/// What a record carries, as the spool stores it: bytes in an encoding the type names by a
/// schema number (see the module docs on upgrades).
pub trait Payload: Sized {
    /// The schema number stored with the bytes [`Payload::encode`] writes (any number but
    /// [`SCHEMA_V1`], which stands for the payloads of format 1 segments).
    fn schema(&self) -> u16;

    /// Appends the payload's bytes to `out`. The record's number and time are given for an
    /// encoding that carries them too.
    fn encode(&self, seq: u64, time_unix_ms: u64, out: &mut Vec<u8>) -> Result<(), PayloadError>;

    /// Decodes bytes stored under `schema` for record `seq` of time `time_unix_ms`. An error
    /// makes the frame count as damaged: its number is reported in a `Corrupt` range.
    fn decode(schema: u16, seq: u64, time_unix_ms: u64, bytes: &[u8])
    -> Result<Self, PayloadError>;
}

/// A payload could not be encoded or decoded: what was wrong, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

/// A payload kept as stored: its schema number and bytes, for a reader that forwards records
/// without decoding them (and for tests of the format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// How `bytes` are encoded ([`SCHEMA_V1`] for a format 1 segment's postcard payload).
    pub schema: u16,
    /// The payload's bytes.
    pub bytes: Vec<u8>,
}

impl Payload for Stored {
    fn schema(&self) -> u16 {
        self.schema
    }

    fn encode(&self, _: u64, _: u64, out: &mut Vec<u8>) -> Result<(), PayloadError> {
        out.extend_from_slice(&self.bytes);
        Ok(())
    }

    fn decode(schema: u16, _: u64, _: u64, bytes: &[u8]) -> Result<Self, PayloadError> {
        Ok(Stored {
            schema,
            bytes: bytes.to_vec(),
        })
    }
}

/// One record as the spool stores it: its number, its time and the caller's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<T> {
    /// The record's number, handed out by [`Spool::append`].
    pub seq: u64,
    /// The time the caller gave it, in milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// What the caller stored.
    pub payload: T,
}

/// What [`Spool::append_or_skip`] did with a record.
#[derive(Debug)]
pub struct Appended<T> {
    /// The record with its number.
    pub entry: Entry<T>,
    /// Why it was not stored, if it was only numbered ([`Loss::Unwritten`] for readers).
    pub skipped: Option<SpoolError>,
}

/// Why the spool cannot deliver a range of numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Deleted by the size cap.
    Evicted,
    /// Inside the spool, but no valid record holds them (damaged or unreadable).
    Corrupt,
    /// Handed out by [`Spool::skip`] without being stored (the disk was full): the caller
    /// published them without durability, and they cannot be replayed.
    Unwritten,
}

/// An inclusive range of numbers the spool cannot deliver, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missing {
    /// The first missing number.
    pub first_seq: u64,
    /// The last missing number: the reader's next cursor.
    pub last_seq: u64,
    /// Why they are missing.
    pub reason: Loss,
    /// The time of the record before the range (see the module docs for `Evicted`).
    pub start_time_unix_ms: u64,
    /// The time of the record after the range, or of the one before when none follows.
    pub end_time_unix_ms: u64,
}

/// What [`Spool::read_after`] returns for each run of numbers: a record, or a missing range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item<T> {
    /// A record.
    Entry(Entry<T>),
    /// Numbers no record is delivered for.
    Missing(Missing),
}

impl<T> Item<T> {
    /// The first number the item covers.
    pub fn first_seq(&self) -> u64 {
        match self {
            Item::Entry(entry) => entry.seq,
            Item::Missing(missing) => missing.first_seq,
        }
    }

    /// The last number the item covers: where the next read continues.
    pub fn last_seq(&self) -> u64 {
        match self {
            Item::Entry(entry) => entry.seq,
            Item::Missing(missing) => missing.last_seq,
        }
    }
}

/// What [`Spool::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Segment files kept.
    pub segments: usize,
    /// Valid records in them.
    pub records: u64,
    /// The oldest valid record's number.
    pub first_seq: Option<u64>,
    /// The highest number handed out so far; the next record gets one more.
    pub last_seq: Option<u64>,
    /// The time of the newest valid record.
    pub last_time_unix_ms: Option<u64>,
    /// Numbers inside the spool that no valid record holds.
    pub corrupt_records: u64,
    /// Damaged byte ranges skipped inside segments (a torn tail is counted apart).
    pub corrupt_regions: u64,
    /// Bytes cut from the end of the newest segment.
    pub torn_tail_bytes: u64,
    /// Segments whose header is damaged or that could not be read.
    pub unreadable_segments: usize,
    /// Files in the directory that are not segments (left alone).
    pub ignored_files: usize,
    /// Records deleted at open to get under `max_bytes`.
    pub evicted_records: u64,
}

/// A snapshot of the spool's state, for status views.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SpoolStats {
    /// The oldest retained valid record's number.
    pub first_seq: Option<u64>,
    /// The highest number handed out.
    pub last_seq: Option<u64>,
    /// Records up to this number are synced and visible to readers.
    pub durable_seq: u64,
    /// The newest record's time.
    pub last_time_unix_ms: Option<u64>,
    /// Valid records retained.
    pub records: u64,
    /// Bytes of all segments.
    pub bytes: u64,
    /// The configured cap.
    pub max_bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// Numbers inside the retained range that no valid record holds.
    pub corrupt_records: u64,
    /// Records deleted by the size cap or to free disk space since open (including at open).
    pub evicted_records: u64,
    /// Numbers handed out by [`Spool::skip`] since open (never stored).
    pub unwritten_records: u64,
    /// The last append failed and numbers are being skipped: records are not durable.
    pub not_durable: bool,
    /// Every number up to this one has been evicted (0: none).
    pub evicted_through_seq: u64,
    /// fsync calls that failed since open.
    pub sync_failures: u64,
    /// Syncs of written records that succeeded since open (each one fsync of the segment being
    /// written, plus one of its directory after a new segment).
    pub syncs: u64,
    /// Segment reads that failed since open (their records were reported as `Corrupt`).
    pub read_errors: u64,
}

/// One index entry: where a record's frame starts.
#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    seq: u64,
    offset: u64,
}

/// What the spool remembers about one segment file.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// The number in the file name.
    base_seq: u64,
    bytes: u64,
    records: u64,
    first: Option<Head>,
    last: Option<Head>,
    /// The segment's format (see `format.rs`); records are appended only to the current one.
    version: u32,
    /// The lowest number a record of this segment may carry: its name, or one past the last
    /// record of the segments before it when that is higher. A frame below it, or not above the
    /// record before it, is out of place and read as damage, on open and on every read alike.
    floor: u64,
    /// An entry for record 0, INDEX_STRIDE, 2 * INDEX_STRIDE, ... of the segment.
    index: Vec<IndexEntry>,
    /// The header is valid and the whole file was read on open.
    readable: bool,
}

impl Segment {
    fn new(path: PathBuf, base_seq: u64, bytes: u64) -> Self {
        Self {
            path,
            base_seq,
            bytes,
            records: 0,
            first: None,
            last: None,
            version: format::FORMAT_VERSION,
            floor: base_seq,
            index: Vec::new(),
            readable: true,
        }
    }

    fn push_record(&mut self, head: Head, offset: u64) {
        if self.records.is_multiple_of(INDEX_STRIDE) {
            self.index.push(IndexEntry {
                seq: head.seq,
                offset,
            });
        }
        self.records += 1;
        self.first.get_or_insert(head);
        self.last = Some(head);
    }

    /// Where to start reading for the first record numbered `seq` or more, and the lowest
    /// number a record there may carry (see [`accept_frame`]).
    fn start_for(&self, seq: u64) -> (u64, u64) {
        let after = self.index.partition_point(|entry| entry.seq <= seq);
        match after.checked_sub(1) {
            Some(i) => (self.index[i].offset, self.index[i].seq),
            None => (format::SEGMENT_HEADER_LEN, self.floor),
        }
    }
}

/// The result of scanning one segment on open.
struct Scan {
    segment: Segment,
    corrupt_regions: u64,
    /// A damaged region that runs to the end of the file.
    tail: Option<Tail>,
    /// Bytes that are neither the header nor a valid frame.
    has_garbage: bool,
}

#[derive(Debug, Clone, Copy)]
struct Tail {
    /// Offset just past the last valid frame (or the header).
    valid_end: u64,
    bytes: u64,
    /// Whole frames with bad CRCs in the tail: numbers that were handed out.
    whole_frames: u64,
}

/// The segment being appended to.
#[derive(Debug)]
struct Active {
    file: File,
    /// The new segment's directory entry has not been synced yet.
    dir_unsynced: bool,
    /// A failed write left bytes that could not be cut: append to a new segment.
    broken: bool,
}

/// The monotonic clock that paces fsyncs.
struct Clock(Box<dyn Fn() -> Instant + Send>);

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// A bounded on-disk spool of numbered records carrying payloads of type `T`; see the module
/// docs.
///
/// Not internally synchronised: share it behind a mutex. Reads take `&self` and open their own
/// file handles, so a reader never disturbs the writer's position.
#[derive(Debug)]
pub struct Spool<T> {
    config: SpoolConfig,
    /// Oldest first; the last one is the segment being appended to.
    segments: VecDeque<Segment>,
    active: Option<Active>,
    next_seq: u64,
    durable_seq: u64,
    last_time_unix_ms: Option<u64>,
    last_sync: Option<Instant>,
    total_bytes: u64,
    evicted_through: u64,
    evicted_last_time: Option<u64>,
    evicted_records: u64,
    sync_failures: u64,
    /// The last fsync failed (logged once per run of failures).
    sync_failing: bool,
    /// Successful fsyncs since open.
    syncs: u64,
    /// How much earlier than `fsync_interval` an append may sync.
    sync_slack: Duration,
    /// Ranges of numbers handed out by `skip` and recorded in marker files, oldest first.
    unwritten: Vec<(u64, u64)>,
    /// The range `skip` is handing out now, not yet recorded in a marker file.
    skipping: Option<(u64, u64)>,
    unwritten_records: u64,
    /// Opened by `open_or_detached` without a directory: create it before writing.
    dir_missing: bool,
    read_errors: AtomicU64,
    /// Reused encode buffer.
    frame: Vec<u8>,
    clock: Clock,
    /// The spool stores and returns `T`s; it holds none.
    payload: PhantomData<fn(T) -> T>,
}

impl<T: Payload> Spool<T> {
    /// Opens (creating if needed) the spool in `config.dir`, recovering from crashes and
    /// corruption as the module docs describe.
    ///
    /// Fails only on invalid settings, or when the directory cannot be created or listed.
    pub fn open(config: SpoolConfig) -> Result<(Spool<T>, OpenReport), SpoolError> {
        config.validate()?;
        create_dir(&config.dir)?;
        let (listing, markers, ignored_files) = list_segments(&config.dir)?;
        let mut report = OpenReport {
            ignored_files,
            ..OpenReport::default()
        };

        let mut segments = VecDeque::with_capacity(listing.len());
        let mut last_valid: Option<Head> = None;
        let mut next_seq = 1u64;
        let mut last_tail = None;
        let count = listing.len();
        for (i, (base_seq, path)) in listing.into_iter().enumerate() {
            let scan = scan_segment::<T>(path, base_seq, last_valid.map(|head| head.seq));
            let segment = scan.segment;
            report.corrupt_regions += scan.corrupt_regions;
            if !segment.readable {
                report.unreadable_segments += 1;
            }
            if let Some(last) = segment.last {
                last_valid = Some(last);
                next_seq = next_seq.max(last.seq + 1);
            }
            // A segment is created just before its first record is written: its name is a
            // number that may have been handed out if anything past the header was written.
            let floor = if segment.records == 0 && scan.has_garbage {
                base_seq + 1
            } else {
                base_seq
            };
            next_seq = next_seq.max(floor);
            if i + 1 == count {
                last_tail = scan.tail;
            } else if scan.tail.is_some() {
                report.corrupt_regions += 1;
            }
            segments.push_back(segment);
        }

        let mut spool = Spool {
            segments,
            next_seq,
            last_time_unix_ms: last_valid.map(|head| head.time_unix_ms),
            ..Spool::empty(config)
        };

        if let Some(tail) = &last_tail {
            report.torn_tail_bytes = tail.bytes;
            // Numbers of whole frames in the tail were handed out: never reuse them.
            if let Some(segment) = spool.segments.back() {
                let first_in_tail = segment.last.map_or(segment.base_seq, |head| head.seq + 1);
                spool.next_seq = spool.next_seq.max(first_in_tail + tail.whole_frames);
            }
        }
        // A marker is written before the record after its range: its numbers were handed out.
        if let Some(last) = markers.iter().map(|(_, last, _)| *last).max() {
            spool.next_seq = spool.next_seq.max(last + 1);
        }
        spool.reopen_active(last_tail.map(|tail| tail.valid_end));

        spool.total_bytes = spool.segments.iter().map(|segment| segment.bytes).sum();
        spool.durable_seq = spool.next_seq - 1;
        spool.evicted_through = spool.segments.front().map_or(spool.durable_seq, |segment| {
            segment.base_seq.saturating_sub(1)
        });
        spool.unwritten = merge_ranges(markers.iter().map(|(first, last, _)| (*first, *last)));
        spool.marker_paths_at_open(markers);
        // Unwritten numbers just below the oldest segment are not evicted ones.
        while let Some(&(first, _)) = spool
            .unwritten
            .iter()
            .find(|&&(_, last)| last == spool.evicted_through)
        {
            spool.evicted_through = first - 1;
        }
        report.corrupt_records = spool.missing_records();

        while spool.total_bytes > spool.config.max_bytes && spool.segments.len() > 1 {
            if !spool.evict_oldest("to stay under max_bytes") {
                break;
            }
        }
        spool.drop_evicted_markers();

        report.segments = spool.segments.len();
        report.records = spool.segments.iter().map(|segment| segment.records).sum();
        report.first_seq = spool.first_seq();
        report.last_seq = spool.last_seq();
        report.last_time_unix_ms = spool.last_time_unix_ms;
        report.evicted_records = spool.evicted_records;

        let dir = spool.config.dir.display();
        if report.corrupt_records > 0
            || report.corrupt_regions > 0
            || report.torn_tail_bytes > 0
            || report.unreadable_segments > 0
        {
            warn!(
                dir = %dir,
                corrupt_records = report.corrupt_records,
                corrupt_regions = report.corrupt_regions,
                torn_tail_bytes = report.torn_tail_bytes,
                unreadable_segments = report.unreadable_segments,
                "Spool opened with damage; lost records will be reported as missing ranges."
            );
        }
        info!(
            dir = %dir,
            segments = report.segments,
            records = report.records,
            first_seq = ?report.first_seq,
            last_seq = ?report.last_seq,
            bytes = spool.total_bytes,
            "Spool opened."
        );
        Ok((spool, report))
    }

    /// Like [`Spool::open`], but when the directory cannot be created for lack of space (a
    /// first start on a full disk), returns an empty spool and the error instead of failing:
    /// every append then first tries to create the directory and fails with a storage error
    /// ([`Spool::append_or_skip`] skips it) until there is room again.
    pub fn open_or_detached(
        config: SpoolConfig,
    ) -> Result<(Spool<T>, OpenReport, Option<SpoolError>), SpoolError> {
        match Spool::open(config.clone()) {
            Ok((spool, report)) => Ok((spool, report, None)),
            Err(err @ SpoolError::CreateDir { .. }) if err.is_out_of_space() => {
                warn!(dir = %config.dir.display(), error = %error_chain(&err), "Cannot create the spool directory; telemetry is not durable until there is room.");
                let mut spool = Spool::empty(config);
                spool.dir_missing = true;
                Ok((spool, OpenReport::default(), Some(err)))
            }
            Err(err) => Err(err),
        }
    }

    fn empty(config: SpoolConfig) -> Spool<T> {
        Spool {
            config,
            segments: VecDeque::new(),
            active: None,
            next_seq: 1,
            durable_seq: 0,
            last_time_unix_ms: None,
            last_sync: None,
            total_bytes: 0,
            evicted_through: 0,
            evicted_last_time: None,
            evicted_records: 0,
            sync_failures: 0,
            sync_failing: false,
            syncs: 0,
            sync_slack: Duration::ZERO,
            unwritten: Vec::new(),
            skipping: None,
            unwritten_records: 0,
            dir_missing: false,
            read_errors: AtomicU64::new(0),
            frame: Vec::new(),
            clock: Clock(Box::new(Instant::now)),
            payload: PhantomData,
        }
    }

    /// Creates the directory if a full disk kept [`Spool::open_or_detached`] from it.
    fn ensure_dir(&mut self) -> Result<(), SpoolError> {
        if self.dir_missing {
            create_dir(&self.config.dir)?;
            info!(dir = %self.config.dir.display(), "Created the spool directory.");
            self.dir_missing = false;
        }
        Ok(())
    }

    /// Truncates the newest segment's damaged tail and opens it for appending, when it is
    /// sound; otherwise the next append starts a new segment.
    fn reopen_active(&mut self, truncate_to: Option<u64>) {
        let Some(segment) = self.segments.back_mut() else {
            return;
        };
        if !segment.readable {
            return;
        }
        // Never appended to after an upgrade (its tail is still cut): the next record starts a
        // segment of the current format.
        let current = segment.version == format::FORMAT_VERSION;
        let opened = OpenOptions::new()
            .append(true)
            .open(&segment.path)
            .and_then(|file| {
                if let Some(len) = truncate_to {
                    file.set_len(len)?;
                    segment.bytes = len;
                }
                // Records found on open become visible at once, so make them durable first.
                file.sync_all()?;
                Ok(file)
            });
        match opened {
            Ok(_) if !current => {}
            Ok(file) => {
                self.active = Some(Active {
                    file,
                    dir_unsynced: false,
                    broken: false,
                });
            }
            Err(err) => {
                warn!(
                    segment = %segment.path.display(),
                    error = %err,
                    "Cannot reopen the newest spool segment; appending to a new one."
                );
                // Never append after bytes that may still hold a damaged tail.
                segment.readable = false;
            }
        }
    }

    /// Replaces the monotonic clock that paces fsyncs ([`Instant::now`] by default), so that a
    /// test can control when `fsync_interval` has passed.
    pub fn set_clock(&mut self, now: impl Fn() -> Instant + Send + 'static) {
        self.clock = Clock(Box::new(now));
    }

    /// Lets an append sync when the last fsync is `fsync_interval - slack` old rather than
    /// `fsync_interval` (default: no slack).
    ///
    /// For a writer that appends every `period` on a schedule that jitters: with a slack of
    /// `period / 2`, the append nearest to the moment a sync is due makes it, where without slack
    /// an append that comes a millisecond early leaves its records unsynced for a whole period.
    /// Syncs then come at most once per `fsync_interval - slack`.
    pub fn set_sync_slack(&mut self, slack: Duration) {
        self.sync_slack = slack;
    }

    /// Appends a record with the next sequence number and returns it.
    ///
    /// The record is written at once and synced when the last fsync is `fsync_interval` old
    /// (less the slack of [`Spool::set_sync_slack`]);
    /// it becomes visible to [`Spool::read_after`] once synced. On error nothing is written and
    /// the number is not consumed. A failed fsync is not an error here: it is logged, counted,
    /// and retried on the next append or [`Spool::flush`].
    pub fn append(&mut self, time_unix_ms: u64, payload: T) -> Result<Entry<T>, SpoolError> {
        let record = Entry {
            seq: self.next_seq,
            time_unix_ms,
            payload,
        };
        self.store(&record)?;
        Ok(record)
    }

    /// Like [`Spool::append`], but a record the disk refuses (an I/O error creating, writing or
    /// marking, see [`SpoolError::is_storage`]) gets its number all the same, as
    /// [`Spool::skip`] hands it out, so the caller can still publish it; the error is returned
    /// beside the record. Other errors (encoding, size) refuse the record as `append` does.
    pub fn append_or_skip(
        &mut self,
        time_unix_ms: u64,
        payload: T,
    ) -> Result<Appended<T>, SpoolError> {
        let record = Entry {
            seq: self.next_seq,
            time_unix_ms,
            payload,
        };
        match self.store(&record) {
            Ok(()) => Ok(Appended {
                entry: record,
                skipped: None,
            }),
            Err(err) if err.is_storage() => Ok(Appended {
                entry: self.skip(record.time_unix_ms, record.payload),
                skipped: Some(err),
            }),
            Err(err) => Err(err),
        }
    }

    /// Writes `record` (numbered `next_seq`), evicting on a full disk, and syncs when due.
    fn store(&mut self, record: &Entry<T>) -> Result<(), SpoolError> {
        let mut frame = std::mem::take(&mut self.frame);
        let written = loop {
            let result = self
                .ensure_dir()
                .and_then(|()| self.mark_unwritten())
                .and_then(|()| self.write_frame(record, &mut frame));
            match result {
                // Give up the oldest records rather than refuse this one (never the segment
                // being written): an `Evicted` range is better than silence.
                Err(err)
                    if err.is_out_of_space()
                        && self.segments.len() > 1
                        && self.evict_oldest("to free disk space") => {}
                result => break result,
            }
        };
        self.frame = frame;
        written?;
        if self.sync_due() {
            self.sync_logged();
        }
        Ok(())
    }

    /// Syncs every written record now, as an append does when a sync is due: for a writer that
    /// publishes its records as soon as they are durable and cannot wait for the interval.
    /// Returns whether every written record is durable. A failed fsync is not an error here:
    /// it is logged (once per run of failures), counted, and retried on the next append or
    /// sync.
    pub fn sync_now(&mut self) -> bool {
        self.sync_logged();
        self.durable_seq + 1 >= self.next_seq
    }

    /// Syncs, logging a failure once per run of failures and the recovery after one.
    fn sync_logged(&mut self) {
        let seq = self.next_seq.saturating_sub(1);
        match self.sync() {
            Ok(()) if self.sync_failing => {
                self.sync_failing = false;
                info!(seq, "Spool fsync works again.");
            }
            Ok(()) => {}
            Err(err) if !self.sync_failing => {
                self.sync_failing = true;
                warn!(error = %error_chain(&err), seq, "Spool fsync failed; records stay unpublished until a retry succeeds.");
            }
            Err(_) => {}
        }
    }

    fn write_frame(&mut self, record: &Entry<T>, frame: &mut Vec<u8>) -> Result<(), SpoolError> {
        let seq = record.seq;
        let time = record.time_unix_ms;
        let payload = &record.payload;
        let payload_len = format::encode_frame(seq, time, payload.schema(), frame, |out| {
            payload.encode(seq, time, out)
        })
        .map_err(|source| SpoolError::Encode { seq, source })?;
        if payload_len > format::MAX_PAYLOAD_LEN as usize {
            return Err(SpoolError::RecordTooLarge {
                seq,
                bytes: payload_len,
                max: format::MAX_PAYLOAD_LEN,
            });
        }
        let frame_len = frame.len() as u64;
        let fits = match (&self.active, self.segments.back()) {
            (Some(active), Some(segment)) if !active.broken => {
                segment.records == 0 || segment.bytes + frame_len <= self.config.segment_bytes
            }
            _ => false,
        };
        if !fits {
            self.roll()?;
        }
        let (Some(active), Some(segment)) = (self.active.as_mut(), self.segments.back_mut()) else {
            // roll() either fails or leaves an active segment at the back.
            return Err(SpoolError::CreateSegment {
                path: self.config.dir.clone(),
                source: io::Error::other("no active segment after roll"),
            });
        };
        let offset = segment.bytes;
        if let Err(source) = active.file.write_all(frame) {
            // Cut a partial frame so the segment stays a clean run of frames; if even that
            // fails, move on to a new segment (the partial frame is skipped as corrupt on read;
            // the records before it are still synced when the segment is closed).
            if active.file.set_len(offset).is_err() {
                active.broken = true;
            }
            return Err(SpoolError::Write {
                seq,
                path: segment.path.clone(),
                source,
            });
        }
        segment.push_record(
            Head {
                seq,
                time_unix_ms: record.time_unix_ms,
            },
            offset,
        );
        segment.bytes += frame_len;
        self.total_bytes += frame_len;
        self.next_seq += 1;
        self.last_time_unix_ms = Some(record.time_unix_ms);
        Ok(())
    }

    /// Closes the current segment (synced) and starts a new one named by the next number,
    /// evicting the oldest segments first so that the new one fits under `max_bytes`.
    fn roll(&mut self) -> Result<(), SpoolError> {
        // An older segment must never lose records that a newer one kept: sync before moving on.
        if self.active.is_some() {
            self.sync()?;
        }
        self.active = None;
        while self.total_bytes + self.config.segment_bytes > self.config.max_bytes
            && self.segments.len() > 1
        {
            if !self.evict_oldest("to stay under max_bytes") {
                break;
            }
        }
        let base_seq = self.next_seq;
        // A header-only segment left by a crash right after a roll may carry this very name.
        if self
            .segments
            .back()
            .is_some_and(|segment| segment.base_seq == base_seq && segment.records == 0)
            && let Some(stale) = self.segments.pop_back()
        {
            self.total_bytes -= stale.bytes;
            if let Err(err) = fs::remove_file(&stale.path) {
                warn!(segment = %stale.path.display(), error = %err, "Cannot remove an empty spool segment.");
            }
        }
        let path = self.config.dir.join(segment_file_name(base_seq));
        let create = || -> io::Result<File> {
            let mut file = OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(&format::segment_header())?;
            Ok(file)
        };
        let file = match create() {
            Ok(file) => file,
            Err(source) => {
                if source.kind() != io::ErrorKind::AlreadyExists {
                    let _ = fs::remove_file(&path);
                }
                return Err(SpoolError::CreateSegment { path, source });
            }
        };
        debug!(segment = %path.display(), "Started spool segment.");
        self.segments
            .push_back(Segment::new(path, base_seq, format::SEGMENT_HEADER_LEN));
        self.total_bytes += format::SEGMENT_HEADER_LEN;
        self.active = Some(Active {
            file,
            dir_unsynced: true,
            broken: false,
        });
        Ok(())
    }

    /// Deletes the oldest segment; returns false (and logs) if it cannot be deleted.
    fn evict_oldest(&mut self, why: &str) -> bool {
        let Some(oldest) = self.segments.front() else {
            return false;
        };
        match fs::remove_file(&oldest.path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                warn!(segment = %oldest.path.display(), error = %err, "Cannot evict the oldest spool segment; the spool may exceed max_bytes.");
                return false;
            }
        }
        let Some(oldest) = self.segments.pop_front() else {
            return false;
        };
        self.total_bytes -= oldest.bytes;
        self.evicted_records += oldest.records;
        let below_next = self
            .segments
            .front()
            .map_or(self.next_seq - 1, |next| next.base_seq.saturating_sub(1));
        let last = oldest.last.map_or(0, |head| head.seq);
        self.evicted_through = self.evicted_through.max(below_next).max(last);
        if let Some(head) = oldest.last {
            self.evicted_last_time = Some(head.time_unix_ms);
        }
        info!(
            segment = %oldest.path.display(),
            records = oldest.records,
            evicted_through_seq = self.evicted_through,
            "Evicted the oldest spool segment {why}."
        );
        self.drop_evicted_markers();
        true
    }

    /// Deletes stale marker files found on open that an already-known range covers.
    fn marker_paths_at_open(&mut self, markers: Vec<(u64, u64, PathBuf)>) {
        for (first, last, path) in markers {
            let kept = self.unwritten.contains(&(first, last));
            if !kept && let Err(err) = fs::remove_file(&path) {
                debug!(file = %path.display(), error = %err, "Cannot remove a merged unwritten-range marker.");
            }
        }
        for &(first, last) in &self.unwritten {
            let path = self.config.dir.join(marker_file_name(first, last));
            if !path.exists() {
                // Merged from several markers: record the union, then the parts are gone.
                let _ = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&path);
            }
        }
    }

    /// Forgets (and deletes the markers of) unwritten ranges wholly evicted.
    fn drop_evicted_markers(&mut self) {
        let through = self.evicted_through;
        let dir = self.config.dir.clone();
        self.unwritten.retain(|&(first, last)| {
            if last > through {
                return true;
            }
            let path = dir.join(marker_file_name(first, last));
            if let Err(err) = fs::remove_file(&path)
                && err.kind() != io::ErrorKind::NotFound
            {
                warn!(file = %path.display(), error = %err, "Cannot remove an evicted unwritten-range marker.");
            }
            false
        });
    }

    /// Hands out the next number without storing anything, for a record the caller could not
    /// [`Spool::append`] (typically because the disk is full) and publishes anyway.
    ///
    /// The number counts as visible at once if every record before it is durable (the spool
    /// tries a sync first), else with the next successful sync. Readers get it inside an
    /// [`Item::Missing`] range with [`Loss::Unwritten`]. The next successful append first
    /// records the range in a marker file (an empty file named
    /// `<first>-<last>.unwritten`), so it is still reported as `Unwritten`, and its numbers
    /// are not handed out again, after a restart. A crash before that may hand its numbers out
    /// again; a reader whose cursor is past them then gets a cursor-ahead error or, once the
    /// numbers are reached again, new records under numbers it saw live.
    pub fn skip(&mut self, time_unix_ms: u64, payload: T) -> Entry<T> {
        if self.durable_seq + 1 < self.next_seq {
            match self.sync() {
                Ok(()) => self.sync_failing = false,
                Err(err) if !self.sync_failing => {
                    self.sync_failing = true;
                    warn!(error = %error_chain(&err), "Spool fsync failed; records stay unpublished until a retry succeeds.");
                }
                Err(_) => {}
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unwritten_records += 1;
        self.skipping = match (self.skipping, self.unwritten.last()) {
            (Some((first, _)), _) => Some((first, seq)),
            // The marker was made but the record after it failed: continue that run.
            (None, Some(&(first, last))) if last + 1 == seq => Some((first, seq)),
            (None, _) => Some((seq, seq)),
        };
        self.last_time_unix_ms = Some(time_unix_ms);
        if self.durable_seq + 1 == seq {
            self.durable_seq = seq;
        }
        Entry {
            seq,
            time_unix_ms,
            payload,
        }
    }

    /// Records the range being skipped in a marker file, before the record after it is
    /// written.
    fn mark_unwritten(&mut self) -> Result<(), SpoolError> {
        let Some((first_seq, last_seq)) = self.skipping else {
            return Ok(());
        };
        let path = self.config.dir.join(marker_file_name(first_seq, last_seq));
        let made = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|_| File::open(&self.config.dir))
            .and_then(|dir| nix::unistd::fsync(&dir).map_err(io::Error::from));
        if let Err(source) = made {
            let _ = fs::remove_file(&path);
            return Err(SpoolError::MarkUnwritten {
                first_seq,
                last_seq,
                path,
                source,
            });
        }
        // A shorter marker of the same run, made before a write that then failed.
        if let Some(&(first, last)) = self.unwritten.last()
            && first == first_seq
        {
            let _ = fs::remove_file(self.config.dir.join(marker_file_name(first, last)));
            self.unwritten.pop();
        }
        self.unwritten.push((first_seq, last_seq));
        self.skipping = None;
        Ok(())
    }

    fn sync_due(&self) -> bool {
        self.durable_seq + 1 < self.next_seq
            && self.last_sync.is_none_or(|at| {
                (self.clock.0)().saturating_duration_since(at) + self.sync_slack
                    >= self.config.fsync_interval
            })
    }

    /// Syncs the segment being written (and its directory entry when new).
    fn sync(&mut self) -> Result<(), SpoolError> {
        if self.durable_seq + 1 >= self.next_seq {
            return Ok(());
        }
        self.last_sync = Some((self.clock.0)());
        if let (Some(active), Some(segment)) = (self.active.as_mut(), self.segments.back()) {
            if let Err(source) = active.file.sync_data() {
                self.sync_failures += 1;
                return Err(SpoolError::Sync {
                    path: segment.path.clone(),
                    source,
                });
            }
            if active.dir_unsynced {
                let synced = File::open(&self.config.dir)
                    .and_then(|dir| nix::unistd::fsync(&dir).map_err(io::Error::from));
                if let Err(source) = synced {
                    self.sync_failures += 1;
                    return Err(SpoolError::Sync {
                        path: self.config.dir.clone(),
                        source,
                    });
                }
                active.dir_unsynced = false;
            }
            self.syncs += 1;
        }
        self.durable_seq = self.next_seq - 1;
        Ok(())
    }

    /// Syncs every written record now, making it visible to readers.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        self.sync()
    }

    /// Up to `max_records` items covering the numbers above `after_seq`, in order: records, and
    /// [`Item::Missing`] where numbers are missing (see the module docs). Returns an empty batch
    /// once the reader has caught up with the durable records. `max_records` of 0 counts as 1.
    ///
    /// A segment that cannot be read is logged and its records reported as a `Corrupt` range,
    /// so a reader always makes progress; the error case is reserved for future use and today
    /// never happens.
    pub fn read_after(
        &self,
        after_seq: u64,
        max_records: usize,
    ) -> Result<Vec<Item<T>>, SpoolError> {
        let end = self.durable_seq;
        let Some(first_wanted) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        if first_wanted > end {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new(first_wanted, end, max_records.max(1));
        batch.unwritten = self.unwritten_ranges().collect();

        if batch.expected <= self.evicted_through {
            let last = self.evicted_through.min(end);
            let next_time = self
                .segments
                .iter()
                .find_map(|segment| segment.first)
                .map(|head| head.time_unix_ms);
            let end_time = next_time.or(self.evicted_last_time).unwrap_or(0);
            let start_time = self.evicted_last_time.unwrap_or(end_time);
            batch.push_missing(Loss::Evicted, last, start_time, end_time);
        }

        let start = self
            .segments
            .partition_point(|segment| segment.base_seq <= batch.expected)
            .saturating_sub(1);
        for segment in self.segments.iter().skip(start) {
            if batch.is_done() {
                break;
            }
            match segment.last {
                Some(last) if last.seq >= batch.expected => {}
                _ => continue,
            }
            if let Err(err) = read_segment(segment, &mut batch) {
                self.read_errors.fetch_add(1, Ordering::Relaxed);
                warn!(
                    segment = %segment.path.display(),
                    error = %err,
                    "Cannot read spool segment; its records are reported as a corrupt range."
                );
            }
        }
        if !batch.is_full() && batch.expected <= end {
            let time = batch.prev_time.unwrap_or(0);
            batch.push_missing(Loss::Corrupt, end, time, time);
        }
        Ok(batch.items)
    }

    /// Numbers between the evicted ones and the next one that no retained record holds and
    /// that were not skipped.
    fn missing_records(&self) -> u64 {
        let retained: u64 = self.segments.iter().map(|segment| segment.records).sum();
        let unwritten: u64 = self
            .unwritten_ranges()
            .map(|(first, last)| last - first.max(self.evicted_through + 1) + 1)
            .sum();
        self.next_seq
            .saturating_sub(self.evicted_through + 1)
            .saturating_sub(retained)
            .saturating_sub(unwritten)
    }

    /// Every range of unwritten numbers above the evicted ones, oldest first.
    fn unwritten_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.unwritten
            .iter()
            .copied()
            .chain(self.skipping)
            .filter(|&(_, last)| last > self.evicted_through)
    }

    /// The highest number handed out, if any.
    pub fn last_seq(&self) -> Option<u64> {
        (self.next_seq > 1).then(|| self.next_seq - 1)
    }

    /// Records up to this number are synced and visible to readers.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// The oldest retained valid record's number.
    pub fn first_seq(&self) -> Option<u64> {
        self.segments
            .iter()
            .find_map(|segment| segment.first)
            .map(|head| head.seq)
    }

    /// The newest record's time, if the spool holds any record.
    pub fn last_time_unix_ms(&self) -> Option<u64> {
        self.last_time_unix_ms
    }

    /// The settings the spool was opened with.
    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// A snapshot of the spool's counters.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            first_seq: self.first_seq(),
            last_seq: self.last_seq(),
            durable_seq: self.durable_seq,
            last_time_unix_ms: self.last_time_unix_ms,
            records: self.segments.iter().map(|segment| segment.records).sum(),
            bytes: self.total_bytes,
            max_bytes: self.config.max_bytes,
            segments: self.segments.len(),
            corrupt_records: self.missing_records(),
            evicted_records: self.evicted_records,
            evicted_through_seq: self.evicted_through,
            unwritten_records: self.unwritten_records,
            not_durable: self.skipping.is_some(),
            sync_failures: self.sync_failures,
            syncs: self.syncs,
            read_errors: self.read_errors.load(Ordering::Relaxed),
        }
    }
}

/// The output of one `read_after` call under construction.
struct Batch<T> {
    items: Vec<Item<T>>,
    /// The next number the reader wants.
    expected: u64,
    /// The last visible number.
    end: u64,
    max: usize,
    /// The time of the record just before `expected`, once seen.
    prev_time: Option<u64>,
    /// Ranges of numbers the spool skipped: reported as `Unwritten`, not `Corrupt`.
    unwritten: Vec<(u64, u64)>,
}

impl<T> Batch<T> {
    fn new(expected: u64, end: u64, max: usize) -> Self {
        Self {
            items: Vec::with_capacity(max.min(1024)),
            expected,
            end,
            max,
            prev_time: None,
            unwritten: Vec::new(),
        }
    }

    fn is_full(&self) -> bool {
        self.items.len() >= self.max
    }

    fn is_done(&self) -> bool {
        self.is_full() || self.expected > self.end
    }

    /// Missing ranges for numbers `expected..=last`: a `Corrupt` range is split where numbers
    /// in it were skipped (`Unwritten`). Stops early when the batch fills up.
    fn push_missing(&mut self, reason: Loss, last: u64, start_time: u64, end_time: u64) {
        if reason != Loss::Corrupt {
            return self.push_range(reason, last, start_time, end_time);
        }
        while self.expected <= last && !self.is_full() {
            let at = self.expected;
            let inside = self
                .unwritten
                .iter()
                .find(|&&(first, end)| first <= at && at <= end);
            if let Some(&(_, end)) = inside {
                self.push_range(Loss::Unwritten, end.min(last), start_time, end_time);
            } else {
                let next = self
                    .unwritten
                    .iter()
                    .map(|&(first, _)| first)
                    .filter(|&first| first > at && first <= last)
                    .min();
                self.push_range(
                    Loss::Corrupt,
                    next.map_or(last, |first| first - 1),
                    start_time,
                    end_time,
                );
            }
        }
    }

    fn push_range(&mut self, reason: Loss, last: u64, start_time: u64, end_time: u64) {
        self.items.push(Item::Missing(Missing {
            first_seq: self.expected,
            last_seq: last,
            reason,
            start_time_unix_ms: start_time,
            end_time_unix_ms: end_time,
        }));
        self.expected = last + 1;
    }

    fn push(&mut self, entry: Entry<T>) {
        self.expected = entry.seq + 1;
        self.prev_time = Some(entry.time_unix_ms);
        self.items.push(Item::Entry(entry));
    }
}

/// The record a frame that passed its CRC holds, if the spool accepts it: its fields decode
/// (for a segment of format `version`), its number is at least `floor` (the segment's floor,
/// then one past the record accepted before it), and its payload decodes. Opening and reading
/// apply this one rule from the same starting points, so a frame rejected on open can never
/// hide or reorder records on a later read.
fn accept_frame<T: Payload>(version: u32, payload: &[u8], floor: u64) -> Option<Entry<T>> {
    let fields = format::decode_fields(version, payload)?;
    let Head { seq, time_unix_ms } = fields.head;
    if seq < floor {
        return None;
    }
    let payload = T::decode(fields.schema, seq, time_unix_ms, fields.body).ok()?;
    Some(Entry {
        seq,
        time_unix_ms,
        payload,
    })
}

/// Reads one segment's records into `batch`, from the index entry before `batch.expected`.
fn read_segment<T: Payload>(segment: &Segment, batch: &mut Batch<T>) -> io::Result<()> {
    let (offset, mut floor) = segment.start_for(batch.expected);
    let mut file = File::open(&segment.path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = FrameReader::new(file, offset);
    while !batch.is_done() {
        let Some(event) = reader.next_event()? else {
            break;
        };
        let Event::Frame { payload, .. } = event else {
            continue;
        };
        let Some(record) = accept_frame::<T>(segment.version, payload, floor) else {
            continue;
        };
        floor = record.seq + 1;
        if record.seq < batch.expected {
            batch.prev_time = Some(record.time_unix_ms);
            continue;
        }
        if record.seq > batch.end {
            break;
        }
        if record.seq > batch.expected {
            let start_time = batch.prev_time.unwrap_or(record.time_unix_ms);
            batch.push_missing(
                Loss::Corrupt,
                record.seq - 1,
                start_time,
                record.time_unix_ms,
            );
            if batch.is_full() {
                break;
            }
        }
        batch.push(record);
    }
    Ok(())
}

/// Creates the spool directory `0700`, or tightens an existing one to `0700`.
fn create_dir(dir: &Path) -> Result<(), SpoolError> {
    let wrap = |source| SpoolError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(wrap)?;
    let mode = fs::metadata(dir).map_err(wrap)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(wrap)?;
        info!(dir = %dir.display(), old_mode = format!("{:o}", mode & 0o777), "Restricted the spool directory to 0700.");
    }
    Ok(())
}

/// The file name of the segment whose first record is `base_seq`.
fn segment_file_name(base_seq: u64) -> String {
    format!("{base_seq:020}.seg")
}

/// The first number of a segment file name, or `None` for other files.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The file name of the marker for the unwritten numbers `first..=last`.
fn marker_file_name(first: u64, last: u64) -> String {
    format!("{first:020}-{last:020}.unwritten")
}

/// The range of an unwritten-range marker file name, or `None` for other files.
fn parse_marker_name(name: &str) -> Option<(u64, u64)> {
    let (first, last) = name.strip_suffix(".unwritten")?.split_once('-')?;
    let number = |digits: &str| {
        (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    };
    let (first, last) = (number(first)?, number(last)?);
    (first >= 1 && first <= last).then_some((first, last))
}

/// Sorted, overlapping or adjacent ranges merged.
fn merge_ranges(ranges: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = ranges.collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match merged.last_mut() {
            Some(prev) if first <= prev.1 + 1 => prev.1 = prev.1.max(last),
            _ => merged.push((first, last)),
        }
    }
    merged
}

/// An unwritten-range marker found on open: its range and file.
type Marker = (u64, u64, PathBuf);

/// What [`list_segments`] finds: segments (number and file) sorted by number, markers, and the
/// count of other entries.
type Listing = (Vec<(u64, PathBuf)>, Vec<Marker>, usize);

/// The segment files in `dir`, sorted by number, the unwritten-range markers, and the count of
/// other entries.
fn list_segments(dir: &Path) -> Result<Listing, SpoolError> {
    let wrap = |source| SpoolError::ListDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut segments = Vec::new();
    let mut markers = Vec::new();
    let mut ignored = 0;
    for entry in fs::read_dir(dir).map_err(wrap)? {
        let entry = entry.map_err(wrap)?;
        let name = entry.file_name();
        let parsed = name.to_str().and_then(parse_segment_name);
        let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
        let marker = name.to_str().and_then(parse_marker_name);
        match (parsed, marker) {
            (Some(base_seq), _) if is_file => segments.push((base_seq, entry.path())),
            (_, Some((first, last))) if is_file => markers.push((first, last, entry.path())),
            _ => {
                ignored += 1;
                debug!(file = %entry.path().display(), "Ignoring a file that is not a spool segment.");
            }
        }
    }
    segments.sort_unstable_by_key(|(base_seq, _)| *base_seq);
    Ok((segments, markers, ignored))
}

/// Scans one segment: validates every frame ([`accept_frame`]), builds the sparse index, finds
/// damage.
///
/// `prev_seq` is the last valid number of the previous segments; records at or below it, or
/// below the segment's own name, are out of place and skipped as corrupt.
fn scan_segment<T: Payload>(path: PathBuf, base_seq: u64, prev_seq: Option<u64>) -> Scan {
    let bytes = fs::metadata(&path).map(|meta| meta.len()).unwrap_or(0);
    let mut scan = Scan {
        segment: Segment::new(path, base_seq, bytes),
        corrupt_regions: 0,
        tail: None,
        has_garbage: false,
    };
    let mut file = match File::open(&scan.segment.path) {
        Ok(file) => file,
        Err(err) => {
            warn!(segment = %scan.segment.path.display(), error = %err, "Cannot open spool segment; skipping it.");
            scan.segment.readable = false;
            scan.has_garbage = bytes > 0;
            return scan;
        }
    };
    let mut header = [0u8; format::SEGMENT_HEADER_LEN as usize];
    let version = file
        .read_exact(&mut header)
        .ok()
        .and_then(|()| format::header_version(&header));
    let Some(version) = version else {
        if bytes > 0 {
            warn!(segment = %scan.segment.path.display(), bytes, "Spool segment has no valid header; skipping it.");
        }
        scan.segment.readable = false;
        scan.has_garbage = bytes > 0;
        return scan;
    };
    scan.segment.version = version;
    let mut floor = prev_seq.map_or(base_seq, |prev| (prev + 1).max(base_seq));
    scan.segment.floor = floor;
    let mut reader = FrameReader::new(file, format::SEGMENT_HEADER_LEN);
    let mut valid_end = format::SEGMENT_HEADER_LEN;
    // Damage seen since the last valid frame: if nothing valid follows, it is the tail.
    let mut pending_regions = 0u64;
    let mut pending_whole_frames = 0u64;
    loop {
        let event = match reader.next_event() {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(err) => {
                warn!(segment = %scan.segment.path.display(), error = %err, "Error reading spool segment; keeping the records read so far.");
                scan.segment.readable = false;
                scan.has_garbage = true;
                break;
            }
        };
        match event {
            Event::Frame {
                offset,
                frame_len,
                payload,
            } => {
                let head = accept_frame::<T>(version, payload, floor).map(|record| Head {
                    seq: record.seq,
                    time_unix_ms: record.time_unix_ms,
                });
                match head {
                    Some(head) => {
                        scan.segment.push_record(head, offset);
                        floor = head.seq + 1;
                        valid_end = offset + frame_len;
                        scan.corrupt_regions += pending_regions;
                        pending_regions = 0;
                        pending_whole_frames = 0;
                    }
                    None => {
                        // Passes its CRC but does not decode or is out of place.
                        debug!(segment = %scan.segment.path.display(), offset, "Rejected a spool frame.");
                        scan.has_garbage = true;
                        pending_regions += 1;
                        pending_whole_frames += 1;
                    }
                }
            }
            Event::Corrupt {
                offset,
                len,
                whole_frames,
                ..
            } => {
                debug!(segment = %scan.segment.path.display(), offset, len, "Damaged bytes in spool segment.");
                scan.has_garbage = true;
                pending_regions += 1;
                pending_whole_frames += whole_frames;
            }
        }
    }
    if pending_regions > 0 {
        if scan.segment.readable {
            scan.tail = Some(Tail {
                valid_end,
                bytes: bytes.saturating_sub(valid_end),
                whole_frames: pending_whole_frames,
            });
        } else {
            scan.corrupt_regions += pending_regions;
        }
    }
    scan
}

/// An error and its causes, `: `-separated, so a log line carries the OS error too.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
