//! The sampler thread: one sample per tick (or per test tick), appended to the spool, synced
//! when someone follows live or the group-commit interval is due, and published to the live
//! channel once durable; the `AgentDown` gap at start and the `SamplerError` and `DiskFull`
//! handling described on the hub.

use super::*;

/// Runs one tick on a sampler started by [`Hub::start_driven`].
#[cfg(test)]
pub(super) struct Ticker {
    pub(super) commands: mpsc::Sender<Command>,
}

#[cfg(test)]
impl Ticker {
    /// Takes one sample on the sampler thread and waits until it is spooled and published;
    /// false once the sampler has stopped.
    pub(super) fn tick(&self) -> bool {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        self.commands.send(Command::Tick(done_tx)).is_ok() && done_rx.recv().is_ok()
    }
}

/// The state of the sampler thread.
pub(super) struct Sampler {
    pub(super) source: Box<dyn SampleSource>,
    pub(super) shared: Arc<Shared>,
    pub(super) clock: WallClock,
    /// Appended but not yet durable, oldest first.
    pub(super) pending: VecDeque<WireRecord>,
    pub(super) max_pending: usize,
    /// When the current run of sampler errors began (for logging once per run).
    pub(super) failing_since: Option<u64>,
    /// Start of a period whose samples the spool could not take.
    pub(super) unspooled_since: Option<u64>,
    /// The first number published live only, and when, in the current run of disk failures.
    pub(super) not_durable_since: Option<(u64, u64)>,
}

impl Sampler {
    pub(super) fn run(
        mut self,
        commands: mpsc::Receiver<Command>,
        pace: Pace,
    ) -> Result<(), SpoolError> {
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
    pub(super) fn record_agent_down(&mut self) {
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

    pub(super) fn tick(&mut self) {
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
                status.latest = Some((now, Arc::new(sample.clone())));
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
    pub(super) fn store(
        &mut self,
        spool: &mut Spool<WireRecord>,
        now: u64,
        body: RecordBody,
    ) -> Result<u64, SpoolError> {
        let record = WireRecord::next_in(spool, now, body);
        let appended = match spool.append_or_skip(now, record) {
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
        self.pending.push_back(appended.entry.payload);
        Ok(seq)
    }

    pub(super) fn note_sampler_error(&mut self, now: u64) {
        self.failing_since.get_or_insert(now);
        lock(&self.shared.status).sampler_errors += 1;
    }

    /// Syncs the spool first when `sync` says so and a pending record is not durable yet (see
    /// the module docs), then sends every durable pending record to the live channel and
    /// refreshes the status.
    pub(super) fn publish(&mut self, mut spool: MutexGuard<'_, Spool<WireRecord>>, sync: bool) {
        if sync
            && self
                .pending
                .back()
                .is_some_and(|record| record.seq() > spool.durable_seq())
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
            .is_some_and(|record| record.seq() <= durable)
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

    pub(super) fn finish(mut self) -> Result<(), SpoolError> {
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
pub(super) fn next_tick(prev: Instant, interval: Duration, now: Instant) -> Instant {
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

/// What subscribers get for a spool item: the record as stored, or for numbers the spool cannot
/// deliver a gap numbered by the last of them and stamped with the end of the missing range.
pub(super) fn record_of_item(item: Item<WireRecord>) -> WireRecord {
    match item {
        Item::Entry(entry) => entry.payload,
        Item::Missing(Missing {
            first_seq,
            last_seq,
            reason,
            start_time_unix_ms,
            end_time_unix_ms,
        }) => WireRecord::new(&Record {
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
        }),
    }
}

pub(super) fn sampler_gap(start_time_unix_ms: u64, end_time_unix_ms: u64) -> RecordBody {
    RecordBody::Gap(Gap {
        reason: GapReason::SamplerError,
        missing_seqs: None,
        start_time_unix_ms,
        end_time_unix_ms: end_time_unix_ms.max(start_time_unix_ms),
    })
}
