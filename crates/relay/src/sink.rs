//! The two kinds of destination a follower hands a host's records to, as traits, so that the
//! follower's logic (cursor, window, acks, epochs, retries) is written once for any of them:
//!
//! - a [`Store`]: the one destination that holds every record exactly once and in order, and
//!   whose last stored message of a host is that host's resume cursor. The relay's is JetStream
//!   ([`crate::jetstream::Bus`]). Its acks are awaited in a bounded window per host.
//! - a [`Sink`]: any number of further destinations, each written a whole stream message (a
//!   batch of one host's records) before the store gets it. The relay's is Prometheus
//!   remote_write ([`crate::remote_write::RemoteWrite`]). One is opened per followed host (it
//!   may keep a connection), and the follower retries it with backoff while it is unavailable
//!   (the host's stream waits) and counts and logs a refusal (not retried: the store still gets
//!   the records).
//!
//! A destination's name is its label in the relay's metrics ([`crate::metrics::SINKS`]).
//! Both traits return boxed futures: a follower holds its sinks as trait objects, and the box
//! per call is small beside the network round trip it waits for.

use std::future::Future;
use std::pin::Pin;

use jex_proto::v1 as pb;

use crate::layout::{self, Cursor};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The store's answer for one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The store already held this record (a resend): counted, not an error.
    pub duplicate: bool,
}

/// A record's ack, awaited in the follower's window.
pub type Ack = BoxFuture<'static, Result<Stored, String>>;

/// The store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not connected (the client reconnects by itself).
    #[error("NATS at {url} is not connected")]
    Disconnected {
        /// The server.
        url: String,
    },
    /// The stream could not be created or updated.
    #[error("creating or updating stream {stream}: {message}")]
    Stream {
        /// The stream.
        stream: String,
        /// The server's or the client's answer.
        message: String,
    },
    /// The cursor could not be read.
    #[error("reading the last message of {subject}: {message}")]
    Cursor {
        /// The subject.
        subject: String,
        /// What happened.
        message: String,
    },
    /// The last message is not one of the relay's.
    #[error(transparent)]
    Layout(#[from] layout::CursorError),
    /// A publish was not sent or not acknowledged.
    #[error("publishing {what} on {subject}: {message}")]
    Publish {
        /// The subject.
        subject: String,
        /// Which message.
        what: String,
        /// What happened.
        message: String,
    },
}

/// The exactly-once store and resume cursor (see the module documentation).
pub trait Store: Send + Sync + 'static {
    /// The label in the relay's metrics.
    fn name(&self) -> &'static str;

    /// Unacknowledged records allowed per host.
    fn max_in_flight(&self) -> usize;

    /// Makes the store ready to take records (once; again after [`Store::lost`]).
    fn ensure(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// A publish failed: check the store again before the next session.
    fn lost(&self);

    /// The resume cursor of `host_id`: its last stored message (none: seq 0, epoch 0).
    fn cursor<'a>(&'a self, host_id: &'a str) -> BoxFuture<'a, Result<Cursor, StoreError>>;

    /// Sends one record of `epoch`; the returned [`Ack`] resolves when the store has it.
    fn publish<'a>(
        &'a self,
        host_id: &'a str,
        epoch: u64,
        record: &'a pb::TelemetryRecord,
    ) -> BoxFuture<'a, Result<Ack, StoreError>>;

    /// Stores the reset marker that opens `epoch` (the agent's spool is a new life), and waits
    /// for its ack.
    fn publish_reset<'a>(
        &'a self,
        host_id: &'a str,
        epoch: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// A sink did not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Unavailable (no connection, a timeout, a server error): retried with backoff while the
    /// host's stream waits.
    #[error("{message}")]
    Retry {
        /// What happened.
        message: String,
    },
    /// Refused: sending the same records again would not help. Counted under `reason` and
    /// logged; the store still gets the records.
    #[error("{message}")]
    Refused {
        /// The label of `jex_relay_publish_errors_total{reason}`.
        reason: &'static str,
        /// What the receiver said.
        message: String,
    },
}

/// What a sink did with a batch it took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Records written.
    pub records: u64,
    /// Records it cannot represent (logged by the sink, counted as `bad_record`).
    pub skipped: u64,
}

/// A further destination of one host's records (see the module documentation).
pub trait Sink: Send + 'static {
    /// The label in the relay's metrics.
    fn name(&self) -> &'static str;

    /// Writes one batch of `host_id`'s records, in seq order.
    fn write<'a>(
        &'a mut self,
        host_id: &'a str,
        records: &'a [pb::TelemetryRecord],
    ) -> BoxFuture<'a, Result<Written, SinkError>>;
}

/// Opens a [`Sink`] per followed host.
pub trait SinkFactory: Send + Sync + 'static {
    /// The sink for `host_id`.
    fn open(&self, host_id: &str) -> Box<dyn Sink>;
}
