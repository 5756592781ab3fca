//! The telemetry hub: the one sampler of the agent, the spool it writes, and every subscriber.
//!
//! # Threads
//!
//! The sampler runs on one dedicated thread (`jex-sampler`): the blocking `sample()` call and
//! the spool writes never run on a tokio worker. Subscribers read the spool through
//! `spawn_blocking`, one batch at a time, holding the spool's lock only for that batch.
//!
//! # Order of work
//!
//! On start, if the spool already holds records, the sampler appends one `AgentDown` gap from
//! the newest record's time to now, so the down time is explicit. Then, every interval, it
//! takes a sample (an error or a panic becomes a `SamplerError` gap), appends it to the spool,
//! and publishes every record the spool has made durable to the live channel (a tokio
//! `broadcast`). A record is published only once it is durable, exactly as the spool only
//! returns durable records, so a subscriber can never see a number that a crash could hand out
//! again.
//!
//! If the disk refuses a record (full: the spool first gives up its own oldest segments), the
//! record is published live anyway, with the number the spool hands out for it without storing
//! it ([`jex_spool::Spool::append_or_skip`]). This is the one exception to "durable before
//! visible": live subscribers keep getting every record while the disk is full. A subscriber
//! that resumes before such records (or falls behind and reads the spool) gets one `DiskFull`
//! gap covering their numbers instead (`missing_seqs`, numbered by the last of them, like
//! `Evicted`), also after a restart once the spool has written again. If the agent crashes
//! before the spool writes again, those numbers may be handed out again. "Accepts records
//! again" is logged only once a record has been written and synced. A record the spool refuses
//! for another reason (it does not encode, or is too large) is dropped, and the next record is
//! preceded by a `SamplerError` gap covering the lost period.
//!
//! # On time and durable first
//!
//! A record reaches live subscribers in the tick that samples it, within the time of one fsync,
//! and never before it is durable. Each tick appends its record and then syncs the spool when
//!
//! - anyone holds the live channel (a following subscriber, also one still replaying the spool):
//!   the hub syncs at once ([`jex_spool::Spool::sync_now`]) and publishes right after, so the
//!   record reaches every live subscriber a few milliseconds after it was sampled; or
//! - the spool's group-commit interval (`fsync_interval`) has passed, give or take half a tick:
//!   the hub sets the spool's sync slack to half the interval
//!   ([`jex_spool::Spool::set_sync_slack`]). Ticks jitter by some milliseconds; comparing the
//!   time since the last fsync with the interval exactly left the record of a tick that came a
//!   little early unsynced, and so unpublished, until the next tick: a third of the records
//!   reached subscribers one interval late at 1 Hz. With the slack, a sample interval at or
//!   above `fsync_interval` syncs every tick whether anyone listens or not.
//!
//! Publishing before the fsync would take the fsync off the path, but a power loss or a kernel
//! panic would then erase records that subscribers already hold (up to one `fsync_interval` of
//! them; a crash of the agent alone loses nothing written), and after the restart the spool
//! would hand their numbers out again for other records, so a controller would keep two
//! different records under one number. Durable first keeps that impossible, at the cost of one
//! fsync per tick while anyone follows live. The fsync rate stays bounded by the sample
//! interval: while someone follows, at most one per tick, that is 1/s at the default 1 s
//! interval and 10/s at the shortest (100 ms); with nobody following, at most one per tick and
//! one per `fsync_interval` less half a tick (about 1/s with the default 1 s). A segment roll
//! adds at most one (about every 2 h at 1 Hz). [`SpoolStats::syncs`] counts them; the stop is
//! logged with the count (`syncs`).
//!
//! # Subscribers
//!
//! A [`Subscription`] is a stream of batches of records numbered after a cursor. It first
//! replays the spool from the cursor, then follows the live channel. A subscriber that falls
//! behind the channel (`Lagged`), or sees a hole in the live numbers, goes back to reading the
//! spool from its cursor, so it loses nothing; the channel never waits for anyone, so a slow or
//! stuck subscriber cannot hold back the sampler or another subscriber. Each batch continues
//! exactly where the previous one ended: the numbers a subscription covers are consecutive,
//! each once. A record covers its own `seq`, except the gap the hub makes from a range the spool
//! reports missing ([`jex_spool::Missing`]: `Corrupt`, `Evicted`): it covers its whole
//! `missing_seqs` range and carries the last of them as its `seq` (and the time of the record
//! after the range as its time), so the `seq`s yielded can step by more than one.
//!
//! # Shutdown
//!
//! [`Hub::shutdown`] stops the sampler after its current tick, flushes the spool, publishes the
//! last records and closes the live channel; following subscribers then get the records the
//! channel still holds, catch up from the spool and end. A following subscription ends only
//! this way, so its end means the hub stopped; the server ends such a stream with
//! `UNAVAILABLE` there, after the last record sampled. Dropping the [`Hub`] also stops the
//! sampler (without waiting for it).
//!
//! # Time
//!
//! The sampler thread keeps its own schedule with a monotonic clock and stamps records with the
//! wall clock. The tests start it with neither: they hand it a clock and drive each tick
//! themselves from tokio's paused time, so no test depends on how fast the machine is.

use std::collections::VecDeque;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, Stream, StreamExt};
use jex_attest::clock::now_unix_ms;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, oneshot};
use tracing::{debug, error, info, warn};

use crate::telemetry::wire::WireRecord;
use crate::telemetry::{Gap, GapReason, Record, RecordBody, SampleSource};
use jex_platform::error_chain;
use jex_spool::{Item, Loss, Missing, Spool, SpoolError, SpoolStats};

/// Default capacity of the live channel, in records: about 4 minutes at 1 Hz, a few tens of KB.
/// A subscriber further behind reads the spool instead.
pub const DEFAULT_LIVE_CAPACITY: usize = 256;

/// Hub settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Time between samples; above zero.
    pub interval: Duration,
    /// Records kept in the live channel for subscribers that are slightly behind.
    pub live_capacity: usize,
}

impl HubConfig {
    /// Settings with the given interval and the default live capacity.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            live_capacity: DEFAULT_LIVE_CAPACITY,
        }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

/// A hub operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The interval is zero.
    #[error("telemetry interval must be above zero")]
    InvalidInterval,
    /// The sampler thread could not be started.
    #[error("starting the telemetry sampler thread")]
    SpawnSampler {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading the spool failed.
    #[error("reading the telemetry spool after seq {after_seq}")]
    ReadSpool {
        /// The subscriber's cursor.
        after_seq: u64,
        /// The cause.
        #[source]
        source: SpoolError,
    },
    /// The blocking task that reads the spool failed.
    #[error("running the telemetry spool read task")]
    ReadTask {
        /// The cause.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The cursor is beyond every number this agent has handed out.
    #[error(
        "cursor {after_seq} is ahead of this agent's last telemetry record {last_seq}; \
         its spool was reset or this is another host: resume from 0"
    )]
    CursorAhead {
        /// The subscriber's cursor.
        after_seq: u64,
        /// The highest number this agent has handed out (0: none).
        last_seq: u64,
    },
    /// The final flush at shutdown failed.
    #[error("flushing the telemetry spool at shutdown")]
    Flush {
        /// The cause.
        #[source]
        source: SpoolError,
    },
    /// The sampler thread ended without reporting (it panicked; the panic is in the log).
    #[error("the telemetry sampler thread ended unexpectedly")]
    SamplerLost,
}

/// What an SRE status view shows about telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubStats {
    /// The sampler thread is running.
    pub running: bool,
    /// Time between samples.
    pub interval: Duration,
    /// The highest number visible to subscribers (durable in the spool).
    pub last_seq: Option<u64>,
    /// When the last successful sample was taken.
    pub last_sample_time_unix_ms: Option<u64>,
    /// Successful samples since start.
    pub samples: u64,
    /// Failed samples since start (each became a `SamplerError` gap).
    pub sampler_errors: u64,
    /// Records the spool could not take since start.
    pub spool_errors: u64,
    /// Open subscriptions.
    pub subscribers: usize,
    /// The spool's counters as of the last tick.
    pub spool: SpoolStats,
}

/// The one sampler of the agent and its subscribers; see the module docs.
pub struct Hub {
    shared: Arc<Shared>,
    control: Mutex<Option<Control>>,
}

/// How the hub stops its sampler thread and learns the outcome.
struct Control {
    commands: mpsc::Sender<Command>,
    done: oneshot::Receiver<Result<(), SpoolError>>,
}

/// What the sampler thread is told. It also stops when every sender is gone.
enum Command {
    /// Stop after the current tick.
    Stop,
    /// Take one sample now, then reply.
    #[cfg(test)]
    Tick(mpsc::SyncSender<()>),
    /// Reply once everything sent before, and the start-up work, is done.
    #[cfg(test)]
    Ping(mpsc::SyncSender<()>),
}

/// What starts each tick of the sampler thread.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// Its own monotonic clock, every interval.
    Timer(Duration),
    /// [`Command::Tick`] only.
    #[cfg(test)]
    Driven,
}

/// The wall clock records are stamped with, in milliseconds since the Unix epoch.
type WallClock = Box<dyn Fn() -> u64 + Send>;

/// What the sampler thread and the subscriptions share.
struct Shared {
    spool: Mutex<Spool<WireRecord>>,
    /// Taken (closed) when the sampler stops.
    live: Mutex<Option<broadcast::Sender<WireRecord>>>,
    status: Mutex<Status>,
    subscribers: AtomicUsize,
    interval: Duration,
}

/// The sampler's counters, updated after every tick.
#[derive(Debug, Clone, Default)]
struct Status {
    running: bool,
    last_seq: Option<u64>,
    last_sample_time_unix_ms: Option<u64>,
    samples: u64,
    sampler_errors: u64,
    spool_errors: u64,
    spool: SpoolStats,
    /// The last successful sample and when it was taken (Unix ms), for `/metrics`.
    latest: Option<(u64, Arc<crate::telemetry::Sample>)>,
}

/// Locks a mutex, recovering the data if a panic poisoned it: every critical section here
/// leaves the data consistent between statements, and the spool recovers on reopen anyway.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    /// Starts the sampler thread over `spool`, taking a sample every `config.interval`.
    ///
    /// Needs no runtime itself; subscriptions must be polled inside a tokio runtime.
    pub fn start(
        source: Box<dyn SampleSource>,
        spool: Spool<WireRecord>,
        config: HubConfig,
    ) -> Result<Hub, HubError> {
        let pace = Pace::Timer(config.interval);
        Self::launch(source, spool, config, pace, Box::new(now_unix_ms))
    }

    /// Starts the sampler thread with the wall clock `clock` and no timer: it takes a sample
    /// only when the returned [`Ticker`] says so. Returns once the start-up work (the
    /// `AgentDown` gap) is done.
    #[cfg(test)]
    fn start_driven(
        source: Box<dyn SampleSource>,
        spool: Spool<WireRecord>,
        config: HubConfig,
        clock: WallClock,
    ) -> Result<(Hub, Ticker), HubError> {
        let hub = Self::launch(source, spool, config, Pace::Driven, clock)?;
        let ticker = Ticker {
            commands: lock(&hub.control)
                .as_ref()
                .map(|control| control.commands.clone())
                .ok_or(HubError::SamplerLost)?,
        };
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if ticker.commands.send(Command::Ping(done_tx)).is_err() || done_rx.recv().is_err() {
            return Err(HubError::SamplerLost);
        }
        Ok((hub, ticker))
    }

    fn launch(
        source: Box<dyn SampleSource>,
        spool: Spool<WireRecord>,
        config: HubConfig,
        pace: Pace,
        clock: WallClock,
    ) -> Result<Hub, HubError> {
        if config.interval.is_zero() {
            return Err(HubError::InvalidInterval);
        }
        let capacity = config.live_capacity.max(1);
        let (live, _) = broadcast::channel(capacity);
        let mut spool = spool;
        // A tick that comes a little early still makes the sync that is due about now.
        spool.set_sync_slack(config.interval / 2);
        let status = Status {
            running: true,
            last_seq: (spool.durable_seq() > 0).then_some(spool.durable_seq()),
            spool: spool.stats(),
            ..Status::default()
        };
        let shared = Arc::new(Shared {
            spool: Mutex::new(spool),
            live: Mutex::new(Some(live)),
            status: Mutex::new(status),
            subscribers: AtomicUsize::new(0),
            interval: config.interval,
        });
        let (commands_tx, commands_rx) = mpsc::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let sampler = Sampler {
            source,
            shared: Arc::clone(&shared),
            clock,
            pending: VecDeque::new(),
            max_pending: capacity,
            failing_since: None,
            unspooled_since: None,
            not_durable_since: None,
        };
        thread::Builder::new()
            .name("jex-sampler".into())
            .spawn(move || {
                let _running = RunningGuard(Arc::clone(&sampler.shared));
                let result = sampler.run(commands_rx, pace);
                // The hub may be gone already; then nobody waits for the outcome.
                let _ = done_tx.send(result);
            })
            .map_err(|source| HubError::SpawnSampler { source })?;
        info!(
            interval_ms = config.interval.as_millis() as u64,
            "Telemetry sampler started."
        );
        Ok(Hub {
            shared,
            control: Mutex::new(Some(Control {
                commands: commands_tx,
                done: done_rx,
            })),
        })
    }

    /// Streams records numbered after `after_seq` in batches of at most `max_batch`: the spool
    /// first, then live records as they come, until the hub shuts down.
    ///
    /// The first item is [`HubError::CursorAhead`] if `after_seq` is beyond every number this
    /// agent has handed out. A stream ends after yielding an error.
    pub fn subscribe(&self, after_seq: u64, max_batch: usize) -> Subscription {
        self.open_subscription(after_seq, max_batch, Follow::Live)
    }

    /// Like [`Hub::subscribe`], but the stream ends once it has caught up with the spool.
    pub fn subscribe_history(&self, after_seq: u64, max_batch: usize) -> Subscription {
        self.open_subscription(after_seq, max_batch, Follow::HistoryOnly)
    }

    fn open_subscription(&self, after_seq: u64, max_batch: usize, follow: Follow) -> Subscription {
        // Join the live channel before reading the spool, so no record falls between the two.
        let live = match follow {
            Follow::Live => lock(&self.shared.live)
                .as_ref()
                .map(broadcast::Sender::subscribe),
            Follow::HistoryOnly => None,
        };
        let state = Follower {
            shared: Arc::clone(&self.shared),
            live,
            cursor: after_seq,
            max_batch: max_batch.max(1),
            source: Source::FirstRead,
            _count: SubscriberCount::new(Arc::clone(&self.shared)),
        };
        Subscription {
            inner: futures::stream::unfold(state, Follower::step).boxed(),
        }
    }

    /// The counters an SRE status view shows.
    pub fn stats(&self) -> HubStats {
        let status = lock(&self.shared.status).clone();
        HubStats {
            running: status.running,
            interval: self.shared.interval,
            last_seq: status.last_seq,
            last_sample_time_unix_ms: status.last_sample_time_unix_ms,
            samples: status.samples,
            sampler_errors: status.sampler_errors,
            spool_errors: status.spool_errors,
            subscribers: self.shared.subscribers.load(Ordering::Relaxed),
            spool: status.spool,
        }
    }

    /// The last successful sample and when it was taken (Unix ms): the figures the stream
    /// carries, for the host families of `/metrics`. `None` before the first.
    pub fn latest_sample(&self) -> Option<(u64, Arc<crate::telemetry::Sample>)> {
        lock(&self.shared.status).latest.clone()
    }

    /// Stops the sampler after its current tick, flushes the spool and closes the live
    /// channel. Calling it again returns `Ok` at once.
    pub async fn shutdown(&self) -> Result<(), HubError> {
        let Some(Control { commands, done }) = lock(&self.control).take() else {
            return Ok(());
        };
        // Wakes the sampler out of its wait. It fails only if the sampler has ended already,
        // which `done` reports.
        let _ = commands.send(Command::Stop);
        drop(commands);
        match done.await {
            Ok(Ok(())) => {
                let stats = self.stats();
                info!(
                    last_seq = stats.last_seq.unwrap_or(0),
                    samples = stats.samples,
                    syncs = stats.spool.syncs,
                    "Telemetry sampler stopped."
                );
                Ok(())
            }
            Ok(Err(source)) => Err(HubError::Flush { source }),
            Err(_) => Err(HubError::SamplerLost),
        }
    }
}

/// What a subscription does once it has caught up with the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// Follow the live channel until the hub stops.
    Live,
    /// End.
    HistoryOnly,
}

/// Marks the hub as not running when the sampler thread ends, however it ends.
struct RunningGuard(Arc<Shared>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        // Also when the sampler panicked, so followers end instead of waiting forever.
        mark_stopped(&self.0);
    }
}

/// Closes the live channel (following subscribers catch up from the spool and end) and marks
/// the hub as not running.
fn mark_stopped(shared: &Shared) {
    lock(&shared.live).take();
    lock(&shared.status).running = false;
}

mod sampling;
mod subscription;

use self::sampling::*;
pub use self::subscription::Subscription;
use self::subscription::*;

#[cfg(test)]
mod tests;
