//! The relay's follower (`jex_relay::follow`) through its store and sink traits, following a
//! simulated host (the real agent code: its spool, its stream, real mTLS on loopback):
//!
//! - a store that loses one ack in the middle of a window, after the records behind it were
//!   stored (what a NATS connection dropped mid-window can do): the next session resends from
//!   the unbroken run of acks, the hole is filled, the rest are duplicates, and every seq is
//!   stored exactly once;
//! - a sink that is unavailable, then refuses one batch: the host's stream waits while it is
//!   unavailable (nothing is skipped), the refused batch is counted and still stored, and every
//!   other record reaches the sink once, in order.
//!
//! The fleet tests (`tests/fleet.rs`) drive the same follower with the real JetStream; these two
//! cases need a store and a sink that fail on cue, which a real server does not offer.

#![allow(clippy::unwrap_used)] // a poisoned lock in a test store is a failed test

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use jex_proto::v1 as pb;
use jex_relay::config::{FollowConfig, HostEntry, TlsFiles};
use jex_relay::follow::{self, Shared};
use jex_relay::layout::Cursor;
use jex_relay::metrics::Metrics;
use jex_relay::sink::{
    Ack, BoxFuture, Sink, SinkError, SinkFactory, Store, StoreError, Stored, Written,
};
use tokio::sync::watch;

/// What the in-memory store holds and how it fails.
#[derive(Default)]
struct Mem {
    /// (seq, epoch) in store order.
    log: Vec<(u64, u64)>,
    /// The ack of this seq fails once, and the record is not stored.
    fail_seq: Option<u64>,
    duplicates: u64,
}

/// An exactly-once store in memory (one host), deduplicating by (epoch, seq) as JetStream does
/// by message id.
#[derive(Default)]
struct MemStore(Mutex<Mem>);

impl MemStore {
    fn seqs(&self) -> Vec<u64> {
        self.0.lock().unwrap().log.iter().map(|(s, _)| *s).collect()
    }
}

impl Store for MemStore {
    fn name(&self) -> &'static str {
        "jetstream"
    }

    fn max_in_flight(&self) -> usize {
        64
    }

    fn ensure(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn lost(&self) {}

    fn cursor<'a>(&'a self, _host_id: &'a str) -> BoxFuture<'a, Result<Cursor, StoreError>> {
        let last = self.0.lock().unwrap().log.last().copied();
        Box::pin(
            async move { Ok(last.map_or(Cursor::default(), |(seq, epoch)| Cursor { seq, epoch })) },
        )
    }

    fn publish<'a>(
        &'a self,
        _host_id: &'a str,
        epoch: u64,
        record: &'a pb::TelemetryRecord,
    ) -> BoxFuture<'a, Result<Ack, StoreError>> {
        let mut mem = self.0.lock().unwrap();
        let seq = record.seq;
        let result: Result<Stored, String> = if mem.fail_seq == Some(seq) {
            mem.fail_seq = None;
            Err(format!("seq {seq}: connection lost before the ack"))
        } else if mem.log.contains(&(seq, epoch)) {
            mem.duplicates += 1;
            Ok(Stored { duplicate: true })
        } else {
            mem.log.push((seq, epoch));
            Ok(Stored { duplicate: false })
        };
        let ack: Ack = Box::pin(async move { result });
        Box::pin(async move { Ok(ack) })
    }

    fn publish_reset<'a>(
        &'a self,
        _host_id: &'a str,
        epoch: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.lock().unwrap().log.push((0, epoch));
        Box::pin(async { Ok(()) })
    }
}

/// What the scripted sink saw and answers.
#[derive(Default)]
struct SinkScript {
    /// Answers for the next calls, in order (then `Ok`).
    answers: Vec<Option<SinkError>>,
    /// Batches offered (each a list of seqs), whatever the answer.
    offered: Vec<Vec<u64>>,
    /// Seqs taken.
    taken: Vec<u64>,
}

struct ScriptedSink(Arc<Mutex<SinkScript>>);

impl Sink for ScriptedSink {
    fn name(&self) -> &'static str {
        // The relay's metrics know two sink names; this one stands where remote_write does.
        "remote_write"
    }

    fn write<'a>(
        &'a mut self,
        _host_id: &'a str,
        records: &'a [pb::TelemetryRecord],
    ) -> BoxFuture<'a, Result<Written, SinkError>> {
        let mut s = self.0.lock().unwrap();
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        s.offered.push(seqs.clone());
        let answer = if s.answers.is_empty() {
            None
        } else {
            s.answers.remove(0)
        };
        let result = match answer {
            Some(e) => Err(e),
            None => {
                s.taken.extend(&seqs);
                Ok(Written {
                    records: seqs.len() as u64,
                    skipped: 0,
                })
            }
        };
        Box::pin(async move { result })
    }
}

struct ScriptedFactory(Arc<Mutex<SinkScript>>);

impl SinkFactory for ScriptedFactory {
    fn open(&self, _host_id: &str) -> Box<dyn Sink> {
        Box::new(ScriptedSink(self.0.clone()))
    }
}

/// One simulated host at 10 Hz, and the follower's shared parts for it.
async fn one_host(dir: &std::path::Path, ip: [u8; 4]) -> Result<(jex_sim::Fleet, HostEntry)> {
    let mut config = jex_sim::FleetConfig::new(dir.join("sim"), 1);
    config.base_ip = std::net::Ipv4Addr::from(ip);
    config.port = 0;
    config.interval_ms = 100;
    let fleet = jex_sim::Fleet::start(config).await?;
    let id = fleet.host_ids().remove(0);
    let addr = fleet.addr(&id).await?;
    Ok((
        fleet,
        HostEntry {
            host_id: id,
            addr: format!("https://{addr}"),
            server_name: Some("localhost".into()),
        },
    ))
}

fn shared<S: Store>(
    fleet: &jex_sim::Fleet,
    store: Arc<S>,
    sinks: Vec<Arc<dyn SinkFactory>>,
) -> Arc<Shared<S>> {
    let pki = fleet.pki();
    Arc::new(Shared {
        store,
        sinks,
        metrics: Arc::new(Metrics::default()),
        tls: TlsFiles {
            cert: pki.observer_cert.clone(),
            key: pki.observer_key.clone(),
            ca: pki.ca.clone(),
        },
        follow: FollowConfig {
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            max_batch_records: 0,
        },
    })
}

/// Waits until `done` holds, for at most `secs`.
async fn until(secs: u64, what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "not within {secs} s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Follows `host` into `store` until it holds `records`, stops the follower and the fleet, and
/// returns the stored seqs (checked: every seq from 1 to the last, once each).
async fn follow_until(
    fleet: jex_sim::Fleet,
    host: HostEntry,
    shared: &Arc<Shared<MemStore>>,
    store: &MemStore,
    records: usize,
) -> Result<Vec<u64>> {
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(follow::follow(host, shared.clone(), rx));
    until(20, &format!("{records} records stored"), || {
        store.seqs().len() >= records
    })
    .await?;
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .context("the follower did not stop")??;
    fleet.shutdown().await;
    let seqs = store.seqs();
    once_each(&seqs)?;
    Ok(seqs)
}

/// Every seq from 1 to the last, once each.
fn once_each(seqs: &[u64]) -> Result<()> {
    let set: BTreeSet<u64> = seqs.iter().copied().collect();
    ensure!(set.len() == seqs.len(), "a seq stored twice: {seqs:?}");
    let last = set.last().copied().unwrap_or(0);
    ensure!(
        set == (1..=last).collect::<BTreeSet<u64>>(),
        "a seq missing: {seqs:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_mid_window_is_resent_and_its_hole_filled_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (fleet, host) = one_host(dir.path(), [127, 0, 9, 1]).await?;
    // Two seconds of history, so that the first stream message is a batch of about 20 records,
    // all published before the first ack is taken.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let store = Arc::new(MemStore::default());
    store.0.lock().unwrap().fail_seq = Some(5);
    let shared = shared(&fleet, store.clone(), Vec::new());
    let seqs = follow_until(fleet, host, &shared, &store, 40).await?;
    let pos = |s: u64| seqs.iter().position(|x| *x == s).unwrap_or(usize::MAX);
    // Seq 5 landed after the later seqs of its window: the hole was filled by the resend.
    ensure!(pos(5) > pos(6), "seq 5 not resent after 6: {seqs:?}");
    let duplicates = store.0.lock().unwrap().duplicates;
    ensure!(
        duplicates >= 1 && duplicates == (pos(5) as u64 - 4),
        "the seqs between the hole and the cursor are acknowledged as duplicates: {duplicates}, order {seqs:?}"
    );
    // The seqs whose acks were abandoned with the failed one were stored then, and are
    // acknowledged as duplicates now: the count of new records is the rest.
    ensure!(
        shared.metrics.published("jetstream") == seqs.len() as u64 - duplicates,
        "stored {} ({duplicates} acknowledged as duplicates) but counted {} new",
        seqs.len(),
        shared.metrics.published("jetstream")
    );
    ensure!(shared.metrics.publish_errors("jetstream", "ack") >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_sink_holds_the_stream_and_a_refusal_is_counted_not_lost() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (fleet, host) = one_host(dir.path(), [127, 0, 9, 2]).await?;
    let store = Arc::new(MemStore::default());
    let script = Arc::new(Mutex::new(SinkScript {
        answers: vec![
            Some(SinkError::Retry {
                message: "receiver down".into(),
            }),
            Some(SinkError::Retry {
                message: "receiver down".into(),
            }),
            Some(SinkError::Retry {
                message: "receiver down".into(),
            }),
            None,
            Some(SinkError::Refused {
                reason: "http_400",
                message: "out of bounds".into(),
            }),
        ],
        ..SinkScript::default()
    }));
    let factory: Arc<dyn SinkFactory> = Arc::new(ScriptedFactory(script.clone()));
    let shared = shared(&fleet, store.clone(), vec![factory]);
    let seqs = follow_until(fleet, host, &shared, &store, 30).await?;
    let s = script.lock().unwrap();
    // While unavailable, the same batch was offered again and nothing went on to the store.
    ensure!(
        s.offered[0] == s.offered[1]
            && s.offered[1] == s.offered[2]
            && s.offered[2] == s.offered[3],
        "the unavailable sink was not offered the same batch until it took it: {:?}",
        s.offered
    );
    let refused = s.offered[4].clone();
    ensure!(!refused.is_empty());
    // Everything but the refused batch reached the sink, once and in order; the store has all.
    let expected: Vec<u64> = seqs
        .iter()
        .copied()
        .filter(|q| !refused.contains(q))
        .take(s.taken.len())
        .collect();
    ensure!(
        s.taken == expected,
        "sink took {:?}, expected {expected:?} (refused {refused:?})",
        s.taken
    );
    ensure!(
        refused.iter().all(|q| seqs.contains(q)),
        "a refused record was not stored"
    );
    ensure!(
        shared.metrics.publish_errors("remote_write", "http_400") == refused.len() as u64,
        "refused records counted {} of {}",
        shared.metrics.publish_errors("remote_write", "http_400"),
        refused.len()
    );
    ensure!(shared.metrics.published("remote_write") == s.taken.len() as u64);
    Ok(())
}
