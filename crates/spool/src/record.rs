//! What the spool stores and hands back: the [`Payload`] trait, the numbered [`Entry`], and the
//! [`Item`]s a read returns ([`Missing`] ranges with their [`Loss`] reason).

use super::*;

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
