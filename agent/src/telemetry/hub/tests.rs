#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected error"
)]

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
fn open_spool(config: SpoolConfig, clock: &TestClock) -> Spool<WireRecord> {
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
    spool: Spool<WireRecord>,
    config: HubConfig,
    clock: &TestClock,
) -> Running {
    let interval = config.interval;
    let wall = clock.clone();
    let (hub, ticker) =
        Hub::start_driven(source, spool, config, Box::new(move || wall.unix_ms())).unwrap();
    let ticks = tokio::spawn(async move {
        let mut due = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
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
        .map(|batch| decoded(batch.unwrap()))
}

/// A batch as the telemetry model; each record's number is checked against its encoding.
fn decoded(batch: Vec<WireRecord>) -> Vec<Record> {
    batch
        .iter()
        .map(|wire| {
            let record = wire.record().unwrap();
            assert_eq!(
                (record.seq, record.time_unix_ms),
                (wire.seq(), wire.time_unix_ms())
            );
            record
        })
        .collect()
}

/// Appends a record of `body` to `spool` directly, as an earlier agent did.
fn append(spool: &mut Spool<WireRecord>, time_unix_ms: u64, body: RecordBody) -> Record {
    let wire = WireRecord::next_in(spool, time_unix_ms, body);
    spool
        .append(time_unix_ms, wire)
        .unwrap()
        .payload
        .record()
        .unwrap()
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
        append(&mut spool, 1_000 + i, RecordBody::Sample(Sample::default()));
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
            append(&mut spool, 1_000 + u64::from(i), RecordBody::Sample(sample))
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
        assert_eq!(record_of_item(item).record().unwrap(), want);
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
                let Some(Some(Ok(batch))) =
                    sub.next().now_or_never().map(|b| b.map(|b| b.map(decoded)))
                else {
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
