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

use crate::telemetry::wire::StoredBody;
use crate::telemetry::{Gap, GapReason, Record, RecordBody, SampleSource};
use jex_platform::error_chain;
use jex_spool::{Entry, Item, Loss, Missing, Spool, SpoolError, SpoolStats};

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
    spool: Mutex<Spool<StoredBody>>,
    /// Taken (closed) when the sampler stops.
    live: Mutex<Option<broadcast::Sender<Record>>>,
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
        spool: Spool<StoredBody>,
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
        spool: Spool<StoredBody>,
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
        spool: Spool<StoredBody>,
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
        self.open_subscription(after_seq, max_batch, true)
    }

    /// Like [`Hub::subscribe`], but the stream ends once it has caught up with the spool.
    pub fn subscribe_history(&self, after_seq: u64, max_batch: usize) -> Subscription {
        self.open_subscription(after_seq, max_batch, false)
    }

    fn open_subscription(&self, after_seq: u64, max_batch: usize, follow: bool) -> Subscription {
        // Join the live channel before reading the spool, so no record falls between the two.
        let live = if follow {
            lock(&self.shared.live)
                .as_ref()
                .map(broadcast::Sender::subscribe)
        } else {
            None
        };
        let state = Follower {
            shared: Arc::clone(&self.shared),
            live,
            cursor: after_seq,
            max_batch: max_batch.max(1),
            replaying: true,
            checked_cursor: false,
            done: false,
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

// === impl Sampler ===

/// Runs one tick on a sampler started by [`Hub::start_driven`].
#[cfg(test)]
struct Ticker {
    commands: mpsc::Sender<Command>,
}

#[cfg(test)]
impl Ticker {
    /// Takes one sample on the sampler thread and waits until it is spooled and published;
    /// false once the sampler has stopped.
    fn tick(&self) -> bool {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        self.commands.send(Command::Tick(done_tx)).is_ok() && done_rx.recv().is_ok()
    }
}

/// The state of the sampler thread.
struct Sampler {
    source: Box<dyn SampleSource>,
    shared: Arc<Shared>,
    clock: WallClock,
    /// Appended but not yet durable, oldest first.
    pending: VecDeque<Record>,
    max_pending: usize,
    /// When the current run of sampler errors began (for logging once per run).
    failing_since: Option<u64>,
    /// Start of a period whose samples the spool could not take.
    unspooled_since: Option<u64>,
    /// The first number published live only, and when, in the current run of disk failures.
    not_durable_since: Option<(u64, u64)>,
}

impl Sampler {
    fn run(mut self, commands: mpsc::Receiver<Command>, pace: Pace) -> Result<(), SpoolError> {
        self.record_agent_down();
        let mut next = Instant::now();
        loop {
            let command = match pace {
                Pace::Timer(interval) => {
                    next = next_tick(next, interval, Instant::now());
                    match commands.recv_timeout(next.saturating_duration_since(Instant::now())) {
                        Err(RecvTimeoutError::Timeout) => {
                            self.tick();
                            continue;
                        }
                        Ok(command) => Some(command),
                        Err(RecvTimeoutError::Disconnected) => None,
                    }
                }
                #[cfg(test)]
                Pace::Driven => commands.recv().ok(),
            };
            match command {
                None | Some(Command::Stop) => break,
                #[cfg(test)]
                Some(Command::Tick(done)) => {
                    self.tick();
                    let _ = done.send(());
                }
                #[cfg(test)]
                Some(Command::Ping(done)) => {
                    let _ = done.send(());
                }
            }
        }
        self.finish()
    }

    /// Makes the time the agent was down explicit.
    fn record_agent_down(&mut self) {
        let now = (self.clock)();
        let shared = Arc::clone(&self.shared);
        let mut spool = lock(&shared.spool);
        let Some(last_time) = spool.last_time_unix_ms() else {
            return;
        };
        let gap = Gap {
            reason: GapReason::AgentDown,
            missing_seqs: None,
            start_time_unix_ms: last_time,
            end_time_unix_ms: now.max(last_time),
        };
        match self.store(&mut spool, now, RecordBody::Gap(gap)) {
            Ok(seq) => {
                info!(
                    seq,
                    down_ms = now.saturating_sub(last_time),
                    "Recorded the time the agent was down."
                );
                if let Err(err) = spool.flush() {
                    warn!(error = %error_chain(&err), "Cannot sync the spool; records stay unpublished until a sync succeeds.");
                }
            }
            Err(err) => {
                warn!(error = %error_chain(&err), "Cannot record the time the agent was down.");
                self.unspooled_since = Some(last_time);
            }
        }
        self.publish(spool, false);
    }

    fn tick(&mut self) {
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| self.source.sample()));
        let now = (self.clock)();
        let shared = Arc::clone(&self.shared);
        let followed = lock(&shared.live)
            .as_ref()
            .is_some_and(|live| live.receiver_count() > 0);
        let mut spool = lock(&shared.spool);
        let window_start = spool.last_time_unix_ms().unwrap_or(now);
        let body = match outcome {
            Ok(Ok(sample)) => {
                if let Some(since) = self.failing_since.take() {
                    info!(failing_ms = now.saturating_sub(since), "Sampler recovered.");
                }
                let mut status = lock(&self.shared.status);
                status.samples += 1;
                status.last_sample_time_unix_ms = Some(now);
                RecordBody::Sample(sample)
            }
            Ok(Err(err)) => {
                if self.failing_since.is_none() {
                    warn!(error = %err, "Sampler failed; recording a gap each interval until it recovers.");
                }
                self.note_sampler_error(now);
                sampler_gap(window_start, now)
            }
            Err(_) => {
                error!("Sampler panicked; recording a gap.");
                self.note_sampler_error(now);
                sampler_gap(window_start, now)
            }
        };
        if let Some(since) = self.unspooled_since {
            // Samples the spool refused: say so before the next record.
            match self.store(&mut spool, now, sampler_gap(since, now)) {
                Ok(seq) => {
                    info!(
                        seq,
                        lost_ms = now.saturating_sub(since),
                        "Recorded the period whose records the spool refused as a gap."
                    );
                    self.unspooled_since = None;
                }
                Err(_) => {
                    self.publish(spool, followed);
                    return;
                }
            }
        }
        if let Err(err) = self.store(&mut spool, now, body)
            && self.unspooled_since.is_none()
        {
            warn!(error = %error_chain(&err), "The spool refused a telemetry record; it is lost and reported as a gap before the next record.");
            self.unspooled_since = Some(window_start);
        }
        self.publish(spool, followed);
    }

    /// Appends a record to the spool and queues it for publishing, also when the disk refuses
    /// it (see the module docs); returns its number, or the error when the spool refused the
    /// record itself (it is then dropped).
    fn store(
        &mut self,
        spool: &mut Spool<StoredBody>,
        now: u64,
        body: RecordBody,
    ) -> Result<u64, SpoolError> {
        let appended = match spool.append_or_skip(now, StoredBody(body)) {
            Ok(appended) => appended,
            Err(err) => {
                lock(&self.shared.status).spool_errors += 1;
                return Err(err);
            }
        };
        let seq = appended.entry.seq;
        match appended.skipped {
            Some(err) => {
                lock(&self.shared.status).spool_errors += 1;
                if self.not_durable_since.is_none() {
                    warn!(
                        error = %error_chain(&err),
                        seq,
                        "Cannot store telemetry records in the spool; publishing them live only until it accepts records again. Subscribers resuming before them get a DISK_FULL gap."
                    );
                    self.not_durable_since = Some((seq, now));
                }
            }
            None => {
                if let Some((first_seq, since)) = self.not_durable_since {
                    // Written; it counts as accepted once it is synced too.
                    match spool.flush() {
                        Ok(()) => {
                            info!(
                                seq,
                                not_durable_first_seq = first_seq,
                                not_durable_last_seq = seq - 1,
                                not_durable_ms = now.saturating_sub(since),
                                "Spool accepts records again; the records published live only are reported as a DISK_FULL gap."
                            );
                            self.not_durable_since = None;
                        }
                        Err(err) => {
                            debug!(error = %error_chain(&err), "Spool wrote a record but cannot sync it yet.");
                        }
                    }
                }
            }
        }
        self.pending.push_back(record_of(appended.entry));
        Ok(seq)
    }

    fn note_sampler_error(&mut self, now: u64) {
        self.failing_since.get_or_insert(now);
        lock(&self.shared.status).sampler_errors += 1;
    }

    /// Syncs the spool first when `sync` says so and a pending record is not durable yet (see
    /// the module docs), then sends every durable pending record to the live channel and
    /// refreshes the status.
    fn publish(&mut self, mut spool: MutexGuard<'_, Spool<StoredBody>>, sync: bool) {
        if sync
            && self
                .pending
                .back()
                .is_some_and(|record| record.seq > spool.durable_seq())
        {
            // A failure is logged by the spool; the records wait for a sync that succeeds.
            spool.sync_now();
        }
        let durable = spool.durable_seq();
        let stats = spool.stats();
        drop(spool);
        // Status first: it never shows less than what a subscriber may already hold.
        {
            let mut status = lock(&self.shared.status);
            if durable > 0 {
                status.last_seq = Some(durable);
            }
            status.spool = stats;
        }
        let live = lock(&self.shared.live);
        while self
            .pending
            .front()
            .is_some_and(|record| record.seq <= durable)
        {
            let Some(record) = self.pending.pop_front() else {
                break;
            };
            if let Some(sender) = live.as_ref() {
                // An error only means nobody is listening right now.
                let _ = sender.send(record);
            }
        }
        drop(live);
        // Records that wait too long for a sync are not kept here: followers that miss them
        // see a hole in the live numbers and read them from the spool once durable.
        while self.pending.len() > self.max_pending {
            self.pending.pop_front();
        }
    }

    fn finish(mut self) -> Result<(), SpoolError> {
        let shared = Arc::clone(&self.shared);
        let mut spool = lock(&shared.spool);
        let flushed = spool.flush();
        self.publish(spool, false);
        // Report the stop before the outcome is sent, so `shutdown` returns to a stopped hub.
        mark_stopped(&shared);
        flushed
    }
}

/// The deadline of the tick after the one due at `prev`. A slow sample or a suspended host can
/// leave it already past at `now`: the ticks that are past are skipped, and the next sample's
/// window covers the whole time, so nothing is lost.
fn next_tick(prev: Instant, interval: Duration, now: Instant) -> Instant {
    let next = prev + interval;
    if next >= now {
        return next;
    }
    let missed = (now - next).as_nanos() / interval.as_nanos() + 1;
    debug!(
        missed = missed as u64,
        "Sampler fell behind; skipped ticks."
    );
    next + interval * u32::try_from(missed).unwrap_or(u32::MAX)
}

/// A spooled record as subscribers get it.
fn record_of(entry: Entry<StoredBody>) -> Record {
    Record {
        seq: entry.seq,
        time_unix_ms: entry.time_unix_ms,
        body: entry.payload.0,
    }
}

/// What subscribers get for a spool item: the record, or for numbers the spool cannot deliver
/// a gap numbered by the last of them and stamped with the end of the missing range.
fn record_of_item(item: Item<StoredBody>) -> Record {
    match item {
        Item::Entry(entry) => record_of(entry),
        Item::Missing(Missing {
            first_seq,
            last_seq,
            reason,
            start_time_unix_ms,
            end_time_unix_ms,
        }) => Record {
            seq: last_seq,
            time_unix_ms: end_time_unix_ms,
            body: RecordBody::Gap(Gap {
                reason: match reason {
                    Loss::Evicted => GapReason::Evicted,
                    Loss::Corrupt => GapReason::Corrupt,
                    Loss::Unwritten => GapReason::DiskFull,
                },
                missing_seqs: Some((first_seq, last_seq)),
                start_time_unix_ms,
                end_time_unix_ms,
            }),
        },
    }
}

fn sampler_gap(start_time_unix_ms: u64, end_time_unix_ms: u64) -> RecordBody {
    RecordBody::Gap(Gap {
        reason: GapReason::SamplerError,
        missing_seqs: None,
        start_time_unix_ms,
        end_time_unix_ms: end_time_unix_ms.max(start_time_unix_ms),
    })
}

// === impl Subscription ===

/// A stream of record batches; see [`Hub::subscribe`].
pub struct Subscription {
    inner: BoxStream<'static, Result<Vec<Record>, HubError>>,
}

impl Stream for Subscription {
    type Item = Result<Vec<Record>, HubError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

/// Counts a subscription for as long as it exists.
struct SubscriberCount(Arc<Shared>);

impl SubscriberCount {
    fn new(shared: Arc<Shared>) -> Self {
        shared.subscribers.fetch_add(1, Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for SubscriberCount {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The state of one subscription.
struct Follower {
    shared: Arc<Shared>,
    /// `None` for history-only subscriptions and once the hub has stopped.
    live: Option<broadcast::Receiver<Record>>,
    /// The last number yielded (or the starting cursor).
    cursor: u64,
    max_batch: usize,
    /// Reading the spool rather than the live channel.
    replaying: bool,
    checked_cursor: bool,
    done: bool,
    _count: SubscriberCount,
}

type Step = Option<(Result<Vec<Record>, HubError>, Follower)>;

impl Follower {
    async fn step(mut self) -> Step {
        loop {
            if self.done {
                return None;
            }
            if self.replaying {
                match self.read_spool().await {
                    Ok(batch) => {
                        if let Some(last) = batch.last() {
                            self.cursor = last.seq;
                            return Some((Ok(batch), self));
                        }
                        // Caught up: follow the live channel, or end when there is none.
                        self.live.as_ref()?;
                        self.replaying = false;
                    }
                    Err(err) => {
                        self.done = true;
                        return Some((Err(err), self));
                    }
                }
            } else if let Some(batch) = self.read_live().await {
                return Some((Ok(batch), self));
            }
        }
    }

    /// One batch from the spool, off the runtime's workers.
    async fn read_spool(&mut self) -> Result<Vec<Record>, HubError> {
        let shared = Arc::clone(&self.shared);
        let (after_seq, max_batch, check) = (self.cursor, self.max_batch, !self.checked_cursor);
        let read = tokio::task::spawn_blocking(move || {
            let spool = lock(&shared.spool);
            let last_seq = spool.last_seq().unwrap_or(0);
            if check && after_seq > last_seq {
                return Err(HubError::CursorAhead {
                    after_seq,
                    last_seq,
                });
            }
            spool
                .read_after(after_seq, max_batch)
                .map(|items| items.into_iter().map(record_of_item).collect())
                .map_err(|source| HubError::ReadSpool { after_seq, source })
        })
        .await;
        self.checked_cursor = true;
        read.map_err(|source| HubError::ReadTask { source })?
    }

    /// The next live batch, or `None` after switching back to the spool.
    async fn read_live(&mut self) -> Option<Vec<Record>> {
        let Some(live) = self.live.as_mut() else {
            self.replaying = true;
            return None;
        };
        let first = match live.recv().await {
            Ok(record) => record,
            Err(RecvError::Lagged(missed)) => {
                debug!(
                    missed,
                    cursor = self.cursor,
                    "Subscriber fell behind the live channel; reading the spool."
                );
                self.replaying = true;
                return None;
            }
            Err(RecvError::Closed) => {
                // The hub stopped: catch up from the spool, then end.
                self.live = None;
                self.replaying = true;
                return None;
            }
        };
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(record) = next.take() {
            if record.seq <= self.cursor {
                // Already read from the spool.
            } else if record.seq == self.cursor + 1 {
                self.cursor = record.seq;
                batch.push(record);
                if batch.len() >= self.max_batch {
                    break;
                }
            } else {
                // A hole: the missing records are in the spool.
                self.replaying = true;
                break;
            }
            match live.try_recv() {
                Ok(record) => next = Some(record),
                Err(TryRecvError::Lagged(_)) => self.replaying = true,
                Err(TryRecvError::Empty | TryRecvError::Closed) => {}
            }
        }
        (!batch.is_empty()).then_some(batch)
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected error"
)]
mod tests {
    //! Every test runs on tokio's paused clock: the sampler ticks only when the test runtime's
    //! time reaches its next deadline, and each tick runs to completion before anything else on
    //! the runtime goes on, so outcomes do not depend on the machine's speed. Waiting for
    //! something that never comes makes the clock jump to `PATIENCE` and fails the test at once.

    use std::path::Path;
    use std::sync::atomic::AtomicU64;

    use futures::FutureExt as _;
    use tokio::runtime::Handle;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::telemetry::{Sample, SampleError};
    use jex_spool::SpoolConfig;

    /// Bounds every wait (in paused time) so a broken hub fails the test instead of hanging it.
    const PATIENCE: Duration = Duration::from_secs(60);
    /// The wall-clock time at the start of each test.
    const T0: u64 = 1_760_000_000_000;

    /// Tokio's clock, paused in these tests, readable from the sampler thread too.
    #[derive(Clone)]
    struct TestClock {
        handle: Handle,
        start: tokio::time::Instant,
    }

    impl TestClock {
        fn new() -> Self {
            Self {
                handle: Handle::current(),
                start: tokio::time::Instant::now(),
            }
        }

        fn now(&self) -> tokio::time::Instant {
            let _runtime = self.handle.enter();
            tokio::time::Instant::now()
        }

        /// The wall-clock time records get: [`T0`] when the clock was made.
        fn unix_ms(&self) -> u64 {
            T0 + u64::try_from((self.now() - self.start).as_millis()).unwrap()
        }
    }

    /// Call `n` (from 1) returns a sample whose `window_ms` is `n`, or an error when `n` is a
    /// multiple of `fail_every`.
    struct Scripted {
        calls: Arc<AtomicU64>,
        fail_every: u64,
    }

    impl SampleSource for Scripted {
        fn sample(&mut self) -> Result<Sample, SampleError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n.is_multiple_of(self.fail_every) {
                return Err(SampleError {
                    what: "scripted counters".into(),
                    source: io::Error::other("scripted failure"),
                });
            }
            Ok(Sample {
                window_ms: n as u32,
                ..Sample::default()
            })
        }
    }

    fn scripted(fail_every: u64) -> (Box<dyn SampleSource>, Arc<AtomicU64>) {
        let calls = Arc::new(AtomicU64::new(0));
        let source = Scripted {
            calls: Arc::clone(&calls),
            fail_every,
        };
        (Box::new(source), calls)
    }

    fn spool_config(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            fsync_interval: Duration::ZERO,
            segment_bytes: 4096,
            ..SpoolConfig::new(dir.join("spool"))
        }
    }

    /// Opens the spool with its fsync pacing on `clock`.
    fn open_spool(config: SpoolConfig, clock: &TestClock) -> Spool<StoredBody> {
        let (mut spool, _) = Spool::open(config).unwrap();
        let clock = clock.clone();
        spool.set_clock(move || clock.now().into_std());
        spool
    }

    /// A hub whose sampler takes a sample each `interval` of the test's clock.
    struct Running {
        hub: Hub,
        ticks: JoinHandle<()>,
    }

    impl Running {
        /// Stops the ticks, then the hub.
        async fn shutdown(&self) {
            self.ticks.abort();
            self.hub.shutdown().await.unwrap();
        }
    }

    fn start_with(
        source: Box<dyn SampleSource>,
        spool: Spool<StoredBody>,
        config: HubConfig,
        clock: &TestClock,
    ) -> Running {
        let interval = config.interval;
        let wall = clock.clone();
        let (hub, ticker) =
            Hub::start_driven(source, spool, config, Box::new(move || wall.unix_ms())).unwrap();
        let ticks = tokio::spawn(async move {
            let mut due =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                due.tick().await;
                if !ticker.tick() {
                    break;
                }
            }
        });
        Running { hub, ticks }
    }

    /// A hub over a fresh spool in `dir` with a scripted source.
    fn start(
        dir: &Path,
        fail_every: u64,
        config: HubConfig,
        clock: &TestClock,
    ) -> (Running, Arc<AtomicU64>) {
        let spool = open_spool(spool_config(dir), clock);
        let (source, calls) = scripted(fail_every);
        (start_with(source, spool, config, clock), calls)
    }

    fn fast() -> HubConfig {
        HubConfig::new(Duration::from_millis(5))
    }

    async fn wait_for_seq(hub: &Hub, seq: u64) {
        tokio::time::timeout(PATIENCE, async {
            while hub.stats().last_seq.unwrap_or(0) < seq {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap();
    }

    async fn next_batch(sub: &mut Subscription) -> Option<Vec<Record>> {
        tokio::time::timeout(PATIENCE, sub.next())
            .await
            .unwrap()
            .map(|batch| batch.unwrap())
    }

    /// Reads a subscription until it ends.
    async fn drain(mut sub: Subscription) -> Vec<Record> {
        let mut out = Vec::new();
        while let Some(batch) = next_batch(&mut sub).await {
            out.extend(batch);
        }
        out
    }

    /// Appends the batch to `all`, checking it continues exactly after `cursor`.
    fn take(batch: Vec<Record>, cursor: &mut u64, all: &mut Vec<Record>) {
        for record in batch {
            assert_eq!(record.seq, *cursor + 1, "hole or duplicate after {cursor}");
            *cursor = record.seq;
            all.push(record);
        }
    }

    fn gap(record: &Record) -> Option<Gap> {
        match &record.body {
            RecordBody::Gap(gap) => Some(*gap),
            RecordBody::Sample(_) => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fifty_disconnect_resume_cycles_give_every_record_once_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let (running, calls) = start(tmp.path(), 13, fast(), &clock);
        let hub = &running.hub;
        let mut cursor = 0;
        let mut all = Vec::new();
        for cycle in 0..50u64 {
            let mut sub = hub.subscribe(cursor, 1 + (cycle % 7) as usize);
            for _ in 0..1 + cycle % 3 {
                let batch = next_batch(&mut sub).await.unwrap();
                take(batch, &mut cursor, &mut all);
            }
            drop(sub);
            if cycle % 4 == 0 {
                // Stay away long enough for records to pile up in the spool.
                let target = cursor + 10;
                wait_for_seq(hub, target).await;
            }
        }
        running.shutdown().await;
        let rest = drain(hub.subscribe_history(cursor, 64)).await;
        take(rest, &mut cursor, &mut all);

        assert_eq!(Some(cursor), hub.stats().spool.last_seq);
        // A fresh spool: record n is the n-th call to the source.
        assert_eq!(calls.load(Ordering::SeqCst), cursor);
        for record in &all {
            match &record.body {
                RecordBody::Sample(sample) => {
                    assert_eq!(u64::from(sample.window_ms), record.seq);
                    assert_ne!(record.seq % 13, 0);
                }
                RecordBody::Gap(gap) => {
                    assert_eq!(gap.reason, GapReason::SamplerError);
                    assert_eq!(record.seq % 13, 0);
                    assert_eq!(gap.missing_seqs, None);
                }
            }
        }
        let stats = hub.stats();
        assert!(!stats.running);
        assert_eq!(stats.subscribers, 0);
        assert_eq!(stats.sampler_errors, cursor / 13);
        assert_eq!(stats.samples, cursor - cursor / 13);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restart_continues_the_numbers_after_an_agent_down_gap() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let (running, _) = start(tmp.path(), u64::MAX, fast(), &clock);
        wait_for_seq(&running.hub, 20).await;
        running.shutdown().await;
        let stopped_at = clock.unix_ms();
        let before = drain(running.hub.subscribe_history(0, 100)).await;
        drop(running);
        let last_before = before.last().unwrap().clone();
        assert!(before.iter().all(|r| gap(r).is_none()));

        tokio::time::advance(Duration::from_millis(30)).await;
        let (running, _) = start(tmp.path(), u64::MAX, fast(), &clock);
        wait_for_seq(&running.hub, last_before.seq + 5).await;
        running.shutdown().await;
        let all = drain(running.hub.subscribe_history(0, 100)).await;

        let mut cursor = 0;
        take(all.clone(), &mut cursor, &mut Vec::new());
        assert_eq!(all[..before.len()], before[..]);
        let down = &all[before.len()];
        assert_eq!(down.seq, last_before.seq + 1);
        assert_eq!(down.time_unix_ms, stopped_at + 30);
        assert_eq!(
            gap(down),
            Some(Gap {
                reason: GapReason::AgentDown,
                missing_seqs: None,
                start_time_unix_ms: last_before.time_unix_ms,
                end_time_unix_ms: stopped_at + 30,
            })
        );
        assert!(all[before.len() + 1..].iter().all(|r| gap(r).is_none()));
        // The second run's samples start again at call 1 of a new source.
        match &all[before.len() + 1].body {
            RecordBody::Sample(sample) => assert_eq!(sample.window_ms, 1),
            RecordBody::Gap(_) => unreachable!(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscriber_that_never_polls_holds_back_neither_the_sampler_nor_others() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let config = HubConfig {
            interval: Duration::from_millis(2),
            live_capacity: 4,
        };
        let (running, _) = start(tmp.path(), u64::MAX, config, &clock);
        let hub = &running.hub;
        let stalled = hub.subscribe(0, 16);
        let mut active = hub.subscribe(0, 16);
        assert_eq!(hub.stats().subscribers, 2);

        // The sampler runs fifty times past the stalled subscriber's channel capacity.
        let (mut cursor, mut seen) = (0, Vec::new());
        while cursor < 200 {
            let batch = next_batch(&mut active).await.unwrap();
            take(batch, &mut cursor, &mut seen);
            if cursor > 50 && cursor < 60 {
                // Fall far behind the live channel on purpose, then carry on.
                wait_for_seq(hub, cursor + 40).await;
            }
        }

        let (mut stalled_cursor, mut stalled_seen) = (0, Vec::new());
        let mut stalled = stalled;
        while stalled_cursor < 200 {
            let batch = next_batch(&mut stalled).await.unwrap();
            take(batch, &mut stalled_cursor, &mut stalled_seen);
        }
        assert_eq!(stalled_seen[..200], seen[..200]);
        drop(stalled);
        drop(active);
        assert_eq!(hub.stats().subscribers, 0);
        running.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_flushes_and_ends_following_subscribers_after_the_last_record() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let (running, _) = start(tmp.path(), u64::MAX, fast(), &clock);
        let hub = &running.hub;
        let follower = hub.subscribe(0, 8);
        wait_for_seq(hub, 10).await;
        running.shutdown().await;
        hub.shutdown().await.unwrap();
        let stats = hub.stats();
        assert!(!stats.running);
        let got = drain(follower).await;
        let mut cursor = 0;
        take(got, &mut cursor, &mut Vec::new());
        assert_eq!(Some(cursor), stats.spool.last_seq);
        assert_eq!(stats.last_seq, stats.spool.last_seq);
        assert_eq!(stats.spool.durable_seq, cursor);
        // A subscription opened after shutdown replays and ends.
        assert_eq!(drain(hub.subscribe(cursor - 3, 8)).await.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn history_only_ends_when_caught_up_and_a_cursor_ahead_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let mut spool = open_spool(spool_config(tmp.path()), &clock);
        for i in 0..100 {
            spool
                .append(1_000 + i, StoredBody(RecordBody::Sample(Sample::default())))
                .unwrap();
        }
        let (source, calls) = scripted(u64::MAX);
        let config = HubConfig::new(Duration::from_secs(3600));
        let running = start_with(source, spool, config, &clock);
        let hub = &running.hub;
        // The start-up gap is durable before the hub is handed out.
        assert_eq!(hub.stats().last_seq, Some(101));
        let history = drain(hub.subscribe_history(0, 30)).await;
        assert_eq!(history.len(), 101);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(
            gap(&history[100]),
            Some(Gap {
                reason: GapReason::AgentDown,
                missing_seqs: None,
                start_time_unix_ms: 1_099,
                end_time_unix_ms: T0,
            })
        );

        let mut ahead = hub.subscribe(500, 10);
        match tokio::time::timeout(PATIENCE, ahead.next()).await.unwrap() {
            Some(Err(HubError::CursorAhead {
                after_seq: 500,
                last_seq: 101,
            })) => {}
            other => panic!("expected CursorAhead, got {other:?}"),
        }
        assert!(next_batch(&mut ahead).await.is_none());
        running.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn numbers_the_spool_evicted_reach_subscribers_as_one_evicted_gap() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let config = SpoolConfig {
            max_bytes: 8192,
            // Synced at segment rolls and by the hub's start-up flush: the clock stands still
            // while the spool is filled.
            fsync_interval: Duration::from_secs(1),
            ..spool_config(tmp.path())
        };
        let mut spool = open_spool(config, &clock);
        let appended: Vec<Record> = (0..500)
            .map(|i| {
                let sample = Sample {
                    window_ms: i,
                    ..Sample::default()
                };
                let entry = spool
                    .append(1_000 + u64::from(i), StoredBody(RecordBody::Sample(sample)))
                    .unwrap();
                record_of(entry)
            })
            .collect();
        let running = start_with(scripted(u64::MAX).0, spool, HubConfig::default(), &clock);
        // The start-up gap may have made the spool evict once more.
        let first_kept = running.hub.stats().spool.first_seq.unwrap();
        assert!(first_kept > 2, "the cap evicted records");

        let history = drain(running.hub.subscribe_history(0, 1000)).await;
        let kept = (first_kept - 1) as usize;
        let evicted_gap = Record {
            seq: first_kept - 1,
            time_unix_ms: appended[kept].time_unix_ms,
            body: RecordBody::Gap(Gap {
                reason: GapReason::Evicted,
                missing_seqs: Some((1, first_kept - 1)),
                start_time_unix_ms: appended[kept - 1].time_unix_ms,
                end_time_unix_ms: appended[kept].time_unix_ms,
            }),
        };
        assert_eq!(history[0], evicted_gap);
        assert_eq!(history[1..501 - kept], appended[kept..]);
        assert_eq!(
            gap(&history[501 - kept]).unwrap().reason,
            GapReason::AgentDown
        );
        running.shutdown().await;
    }

    #[test]
    fn a_missing_range_becomes_a_gap_numbered_by_its_last_seq() {
        for (loss, reason) in [
            (Loss::Evicted, GapReason::Evicted),
            (Loss::Corrupt, GapReason::Corrupt),
        ] {
            let item = Item::Missing(Missing {
                first_seq: 7,
                last_seq: 9,
                reason: loss,
                start_time_unix_ms: 6_000,
                end_time_unix_ms: 10_000,
            });
            let want = Record {
                seq: 9,
                time_unix_ms: 10_000,
                body: RecordBody::Gap(Gap {
                    reason,
                    missing_seqs: Some((7, 9)),
                    start_time_unix_ms: 6_000,
                    end_time_unix_ms: 10_000,
                }),
            };
            assert_eq!(record_of_item(item), want);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_the_spool_refuses_becomes_an_explicit_gap() {
        /// Call 3 returns a sample too large for a spool frame.
        struct Oversized(u32);
        impl SampleSource for Oversized {
            fn sample(&mut self) -> Result<Sample, SampleError> {
                self.0 += 1;
                let mut sample = Sample {
                    window_ms: self.0,
                    ..Sample::default()
                };
                if self.0 == 3 {
                    sample.cpu.core_busy_bp = vec![9999; 40_000];
                }
                Ok(sample)
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let spool = open_spool(spool_config(tmp.path()), &clock);
        let running = start_with(Box::new(Oversized(0)), spool, fast(), &clock);
        wait_for_seq(&running.hub, 5).await;
        running.shutdown().await;
        let all = drain(running.hub.subscribe_history(0, 100)).await;
        let windows: Vec<Option<u32>> = all
            .iter()
            .map(|record| match &record.body {
                RecordBody::Sample(sample) => Some(sample.window_ms),
                RecordBody::Gap(_) => None,
            })
            .collect();
        assert_eq!(windows[..5], [Some(1), Some(2), None, Some(4), Some(5)]);
        let lost = gap(&all[2]).unwrap();
        assert_eq!(lost.reason, GapReason::SamplerError);
        assert_eq!(lost.start_time_unix_ms, all[1].time_unix_ms);
        assert_eq!(lost.end_time_unix_ms, all[2].time_unix_ms);
        assert_eq!(running.hub.stats().spool_errors, 1);
    }

    /// Tick lengths around `interval`: up to 45 % early or late, half of them early, in a fixed
    /// pseudo-random order.
    fn jittered(interval: Duration, ticks: usize) -> Vec<Duration> {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..ticks)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                // -45 % ..= +45 % of the interval, in whole percent.
                let percent = i64::try_from((state >> 33) % 91).unwrap() - 45;
                let base = i64::try_from(interval.as_millis()).unwrap();
                Duration::from_millis(u64::try_from(base + base * percent / 100).unwrap())
            })
            .collect()
    }

    /// A hub over a fresh spool with `fsync_interval`, ticked only by the test.
    fn start_ticked(
        dir: &Path,
        interval: Duration,
        fsync_interval: Duration,
        clock: &TestClock,
    ) -> (Hub, Ticker) {
        let spool_config = SpoolConfig {
            fsync_interval,
            // No segment roll (which syncs too) within these tests.
            segment_bytes: 1 << 20,
            ..spool_config(dir)
        };
        let spool = open_spool(spool_config, clock);
        let (source, _) = scripted(u64::MAX);
        let wall = clock.clone();
        Hub::start_driven(
            source,
            spool,
            HubConfig::new(interval),
            Box::new(move || wall.unix_ms()),
        )
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_reaches_live_subscribers_durable_in_the_tick_that_samples_it() {
        let second = Duration::from_secs(1);
        let tenth = Duration::from_millis(100);
        // The sampling cadence equal to the fsync interval (where a tick that came a little
        // early used to leave its record for the next tick), and faster than it.
        for (interval, fsync_interval) in [(second, second), (tenth, tenth), (tenth, second)] {
            let tmp = tempfile::tempdir().unwrap();
            let clock = TestClock::new();
            let (hub, ticker) = start_ticked(tmp.path(), interval, fsync_interval, &clock);
            let mut subs: Vec<Subscription> = (0..3).map(|_| hub.subscribe(0, 100)).collect();
            tokio::time::advance(interval).await;
            assert!(ticker.tick());
            for sub in &mut subs {
                let mut cursor = 0;
                take(next_batch(sub).await.unwrap(), &mut cursor, &mut Vec::new());
                assert_eq!(cursor, 1);
                // Caught up: now waiting on the live channel.
                let idle = tokio::time::timeout(Duration::from_millis(1), sub.next()).await;
                assert!(idle.is_err(), "{interval:?}: nothing more yet");
            }
            for (tick, length) in jittered(interval, 60).into_iter().enumerate() {
                let seq = tick as u64 + 2;
                tokio::time::advance(length).await;
                assert!(ticker.tick());
                // The tick has returned and no time has passed since: every subscriber already
                // holds the record, stamped now, and the spool holds it durably.
                let sampled_at = clock.unix_ms();
                let durable = hub.stats().spool.durable_seq;
                for sub in &mut subs {
                    let Some(Some(Ok(batch))) = sub.next().now_or_never() else {
                        panic!(
                            "{interval:?}/{fsync_interval:?}: record {seq} is not out after its tick ({length:?})"
                        );
                    };
                    let [record] = &batch[..] else {
                        panic!("one record per tick: {batch:?}");
                    };
                    assert_eq!(record.seq, seq);
                    assert_eq!(record.time_unix_ms, sampled_at);
                    assert!(
                        durable >= seq,
                        "record {seq} published before durable ({durable})"
                    );
                }
                let from_disk = drain(hub.subscribe_history(seq - 1, 10)).await;
                assert_eq!(from_disk.iter().map(|r| r.seq).collect::<Vec<_>>(), [seq]);
            }
            // One fsync per tick while subscribers follow (one more for the start).
            assert!(hub.stats().spool.syncs <= 62, "{:?}", hub.stats().spool);
            drop(subs);
            hub.shutdown().await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_nobody_following_a_tick_as_long_as_the_fsync_interval_syncs_every_record() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let second = Duration::from_secs(1);
        let (hub, ticker) = start_ticked(tmp.path(), second, second, &clock);
        for (tick, length) in jittered(second, 60).into_iter().enumerate() {
            tokio::time::advance(length).await;
            assert!(ticker.tick());
            let seq = tick as u64 + 1;
            let stats = hub.stats();
            assert_eq!(stats.spool.durable_seq, seq, "after a tick of {length:?}");
            assert_eq!(stats.last_seq, Some(seq));
        }
        assert_eq!(hub.stats().spool.syncs, 60);
        hub.shutdown().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn with_nobody_following_records_become_durable_once_per_fsync_interval() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let interval = Duration::from_millis(100);
        let (hub, ticker) = start_ticked(tmp.path(), interval, Duration::from_secs(1), &clock);
        let lengths = jittered(interval, 200);
        // The first record of a fresh spool is synced at once.
        tokio::time::advance(interval).await;
        assert!(ticker.tick());
        assert_eq!(hub.stats().spool.durable_seq, 1);
        let mut last_sync_at = clock.now();
        let mut durable = 1;
        let mut syncs = hub.stats().spool.syncs;
        for (tick, length) in lengths.iter().enumerate() {
            tokio::time::advance(*length).await;
            assert!(ticker.tick());
            let stats = hub.stats().spool;
            let since_sync = clock.now() - last_sync_at;
            if stats.syncs > syncs {
                // A sync covers every record written so far, and comes no sooner than the
                // interval less half a tick.
                assert_eq!(stats.durable_seq, tick as u64 + 2);
                assert!(since_sync >= Duration::from_millis(950), "{since_sync:?}");
                (last_sync_at, syncs) = (clock.now(), stats.syncs);
            } else {
                // No record waits longer than the interval plus one tick for its sync.
                assert!(since_sync < Duration::from_millis(1_145), "{since_sync:?}");
                assert_eq!(stats.durable_seq, durable);
            }
            durable = stats.durable_seq;
            // Readers only ever see durable records.
            let seen = drain(hub.subscribe_history(0, 1000)).await;
            assert_eq!(seen.last().map_or(0, |r| r.seq), durable);
        }
        // About 20 s of ticks: about 20 fsyncs, not 200.
        let elapsed = lengths.iter().sum::<Duration>();
        let syncs = hub.stats().spool.syncs;
        let bound = elapsed.as_millis() / 950 + 1;
        assert!(u128::from(syncs) <= bound, "{syncs} syncs in {elapsed:?}");
        assert!(syncs >= 15, "{syncs} syncs in {elapsed:?}");
        hub.shutdown().await.unwrap();
    }

    #[test]
    fn a_zero_interval_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (spool, _) = Spool::open(spool_config(tmp.path())).unwrap();
        let (source, _) = scripted(u64::MAX);
        let err = Hub::start(source, spool, HubConfig::new(Duration::ZERO)).err();
        assert!(matches!(err, Some(HubError::InvalidInterval)), "{err:?}");
    }

    #[test]
    fn a_late_sampler_skips_the_ticks_already_past() {
        let t = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(next_tick(t, second, t), t + second);
        assert_eq!(next_tick(t, second, t + second), t + second);
        let just_late = t + second + Duration::from_millis(1);
        assert_eq!(next_tick(t, second, just_late), t + 2 * second);
        let suspended = t + Duration::from_millis(3500);
        assert_eq!(next_tick(t, second, suspended), t + 4 * second);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_sampler_becomes_gaps_and_sampling_goes_on() {
        struct Panicky(u64);
        impl SampleSource for Panicky {
            fn sample(&mut self) -> Result<Sample, SampleError> {
                self.0 += 1;
                assert!(
                    self.0.is_multiple_of(2),
                    "scripted panic on call {}",
                    self.0
                );
                Ok(Sample::default())
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let spool = open_spool(spool_config(tmp.path()), &clock);
        let running = start_with(Box::new(Panicky(0)), spool, fast(), &clock);
        wait_for_seq(&running.hub, 10).await;
        running.shutdown().await;
        let all = drain(running.hub.subscribe_history(0, 100)).await;
        for record in &all {
            let is_gap = gap(record).is_some_and(|g| g.reason == GapReason::SamplerError);
            assert_eq!(is_gap, record.seq % 2 == 1, "record {}", record.seq);
        }
        let gaps = all.iter().filter(|record| gap(record).is_some()).count() as u64;
        let stats = running.hub.stats();
        assert_eq!(stats.sampler_errors, gaps);
        assert_eq!(stats.samples, all.len() as u64 - gaps);
    }

    /// A tmpfs of a fixed size mounted on a temporary directory, unmounted on drop. The tests
    /// run as root; a mount that fails fails the test.
    struct SmallFs {
        dir: tempfile::TempDir,
    }

    impl SmallFs {
        fn mount(bytes: u64) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700")])
                .arg("tmpfs")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "mounting a tmpfs (needs root): {status}");
            Self { dir }
        }

        /// Writes a filler file until the file system is full.
        fn fill(&self) {
            use std::io::Write as _;
            let mut file = std::fs::File::create(self.dir.path().join("filler")).unwrap();
            let block = vec![0xa5u8; 4096];
            while let Ok(written) = file.write(&block) {
                if written == 0 {
                    break;
                }
            }
        }

        fn free(&self) {
            std::fs::remove_file(self.dir.path().join("filler")).unwrap();
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.dir.path())
                .status();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn on_a_full_disk_every_record_goes_live_and_a_resume_gets_one_disk_full_gap() {
        let small = SmallFs::mount(64 * 1024);
        let clock = TestClock::new();
        let spool = open_spool(spool_config(small.dir.path()), &clock);
        let (source, _) = scripted(u64::MAX);
        let running = start_with(source, spool, fast(), &clock);
        let mut sub = running.hub.subscribe(0, 1000);
        let (mut cursor, mut live) = (0, Vec::new());
        while cursor < 5 {
            take(next_batch(&mut sub).await.unwrap(), &mut cursor, &mut live);
        }
        small.fill();
        // The spool gives up its oldest segments, then refuses records: they still go live,
        // every number, as samples.
        while running.hub.stats().spool_errors < 10 {
            take(next_batch(&mut sub).await.unwrap(), &mut cursor, &mut live);
        }
        assert!(running.hub.stats().spool.not_durable);
        small.free();
        while running.hub.stats().spool.not_durable {
            take(next_batch(&mut sub).await.unwrap(), &mut cursor, &mut live);
        }
        let refused = running.hub.stats().spool_errors;
        let newest = cursor;
        running.shutdown().await;
        assert!(live.iter().all(|record| gap(record).is_none()));

        // A subscriber resuming from the start gets every number once: what the spool still
        // holds, and one DISK_FULL gap for exactly the records that were only published live.
        let history = drain(running.hub.subscribe_history(0, 1000)).await;
        let mut expected = 1;
        let mut disk_full = Vec::new();
        for record in &history {
            let (first, last) = gap(record)
                .and_then(|gap| gap.missing_seqs)
                .unwrap_or((record.seq, record.seq));
            assert_eq!((first, last.max(first)), (expected, record.seq));
            expected = record.seq + 1;
            if let Some(found) = gap(record).filter(|gap| gap.reason == GapReason::DiskFull) {
                disk_full.push(found);
            }
        }
        assert!(expected > newest);
        let [only] = disk_full[..] else {
            panic!("DISK_FULL gaps: {disk_full:?}");
        };
        let (first, last) = only.missing_seqs.unwrap();
        assert_eq!(last - first + 1, refused);
        // Those numbers were live samples, and the gap spans their times.
        let skipped = &live[usize::try_from(first - 1).unwrap()..usize::try_from(last).unwrap()];
        assert_eq!(skipped.first().unwrap().seq, first);
        assert_eq!(skipped.last().unwrap().seq, last);
        assert!(only.start_time_unix_ms <= skipped[0].time_unix_ms);
        assert!(only.end_time_unix_ms >= skipped.last().unwrap().time_unix_ms);

        // A subscriber that saw some of them live resumes with the rest of the range.
        let resumed = drain(running.hub.subscribe_history(first + 1, 1)).await;
        let rest = gap(&resumed[0]).unwrap();
        assert_eq!(
            (rest.reason, rest.missing_seqs),
            (GapReason::DiskFull, Some((first + 2, last)))
        );
        assert_eq!(resumed[1].seq, last + 1);
    }
}
