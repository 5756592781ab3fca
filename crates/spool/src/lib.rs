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
//! # Source files
//!
//! `config` (settings and limits), `error`, `record` (what is stored and what a read returns),
//! `format` (the bytes of a segment), `segment` (what is kept in memory per segment file),
//! `open` (listing, scanning and recovery), `write` (append, skip, fsync pacing, roll and
//! eviction) and `read` (records after a number, with every missing range); this file holds the
//! [`Spool`] itself and its counters.
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

mod config;
mod error;
mod format;
mod open;
mod read;
mod record;
mod segment;
mod write;

pub use config::*;
pub use error::SpoolError;
pub use format::SCHEMA_V1;
pub use record::*;

use self::error::error_chain;
use self::format::{Event, FrameReader, Head};
use self::read::*;
use self::segment::*;

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
    pub(crate) config: SpoolConfig,
    /// Oldest first; the last one is the segment being appended to.
    pub(crate) segments: VecDeque<Segment>,
    pub(crate) active: Option<Active>,
    pub(crate) next_seq: u64,
    pub(crate) durable_seq: u64,
    pub(crate) last_time_unix_ms: Option<u64>,
    pub(crate) last_sync: Option<Instant>,
    pub(crate) total_bytes: u64,
    pub(crate) evicted_through: u64,
    pub(crate) evicted_last_time: Option<u64>,
    pub(crate) evicted_records: u64,
    pub(crate) sync_failures: u64,
    /// The last fsync failed (logged once per run of failures).
    pub(crate) sync_failing: bool,
    /// Successful fsyncs since open.
    pub(crate) syncs: u64,
    /// How much earlier than `fsync_interval` an append may sync.
    pub(crate) sync_slack: Duration,
    /// Ranges of numbers handed out by `skip` and recorded in marker files, oldest first.
    pub(crate) unwritten: Vec<(u64, u64)>,
    /// The range `skip` is handing out now, not yet recorded in a marker file.
    pub(crate) skipping: Option<(u64, u64)>,
    pub(crate) unwritten_records: u64,
    /// Opened by `open_or_detached` without a directory: create it before writing.
    pub(crate) dir_missing: bool,
    pub(crate) read_errors: AtomicU64,
    /// Reused encode buffer.
    pub(crate) frame: Vec<u8>,
    pub(crate) clock: Clock,
    /// The spool stores and returns `T`s; it holds none.
    pub(crate) payload: PhantomData<fn(T) -> T>,
}

#[cfg(test)]
mod tests;
