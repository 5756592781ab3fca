//! Lateness of live telemetry over the real wire: a real agent process samples every 1 s, then
//! every 100 ms, with the spool's default fsync interval (1 s); 1, then 100 controllers each
//! follow a live stream on their own mTLS connection. For every record a subscriber receives,
//! lateness is its receive time (wall clock) less its sample time (the record's
//! `time_unix_ms`, stamped right after sampling, in whole milliseconds, so a figure can read up
//! to 1 ms high). Records that a subscriber got while catching up on the spool before it was
//! live are not counted.
//!
//! Per case it prints the records, the lateness p50/p99/max, the records later than one
//! interval, and the agent's fsyncs (from the count it logs when it stops) per second of its
//! life.
//!
//! Run: `cargo bench -p jex-e2e --bench lateness`; each case runs 60 s, or the seconds given in
//! `LATENESS_SECS` (or as the first numeric argument), e.g.
//! `LATENESS_SECS=10 cargo bench -p jex-e2e --bench lateness`.

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use jex_e2e::*;
use tokio::sync::Barrier;

/// Sampling intervals and subscriber counts measured.
const INTERVALS_MS: [u64; 2] = [1000, 100];
const SUBSCRIBERS: [usize; 2] = [1, 100];
/// The spool's default fsync interval.
const FSYNC_INTERVAL_MS: u64 = 1000;

fn now_unix_ms() -> f64 {
    jex_attest::clock::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// What one subscriber saw while live: (seq, lateness in ms) per record.
type Seen = Vec<(u64, f64)>;

/// When the measured run starts (wall clock, ms) and ends.
type Window = Arc<std::sync::OnceLock<(f64, Instant)>>;

/// Follows a live stream; once every subscriber is live (the barrier `ready`, passed twice: the
/// window is set between), counts the records sampled in the window, checking the numbers are
/// consecutive.
async fn follow(
    pki: Arc<TestPki>,
    agent: Arc<AgentProcess>,
    ready: Arc<Barrier>,
    window: Window,
) -> Result<Seen> {
    let mut stream = open_telemetry(&pki, &agent, 0, 0).await?;
    // The first batch is what the spool already held: caught up, live from here on.
    let first = stream
        .message()
        .await?
        .context("the stream ended before its first batch")?;
    let mut last = first.records.last().map_or(0, |r| r.seq);
    ready.wait().await;
    ready.wait().await;
    let (go, end) = *window.get().context("no window")?;
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let Ok(message) = tokio::time::timeout(left, stream.message()).await else {
            return Ok(seen);
        };
        let batch = message?.context("the stream ended")?;
        let received = now_unix_ms();
        for r in batch.records {
            if r.seq != last + 1 {
                bail!("after seq {last}: got {}", r.seq);
            }
            last = r.seq;
            if r.time_unix_ms as f64 >= go {
                seen.push((r.seq, received - r.time_unix_ms as f64));
            }
        }
    }
}

/// The `syncs` field of the agent's "Telemetry sampler stopped." log line.
fn logged_syncs(log: &str) -> Option<u64> {
    log.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = v.get("fields")?;
        (fields.get("message")?.as_str()? == "Telemetry sampler stopped.").then_some(())?;
        fields.get("syncs")?.as_u64()
    })
}

/// The value at quantile `q` of sorted `values`.
fn quantile(values: &[f64], q: f64) -> f64 {
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

async fn case(
    pki: &Arc<TestPki>,
    interval_ms: u64,
    subscribers: usize,
    run: Duration,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let agent = Arc::new(start_agent(
        pki,
        dir.path(),
        &AgentOptions {
            interval_ms,
            fsync_interval_ms: Some(FSYNC_INTERVAL_MS),
            extra_toml: format!(
                "\n[server.limits]\nmax_connections_per_peer = {}\n",
                subscribers + 8
            ),
            ..Default::default()
        },
    )?);
    let ready = Arc::new(Barrier::new(subscribers + 1));
    let window: Window = Arc::default();
    let tasks: Vec<_> = (0..subscribers)
        .map(|_| {
            tokio::spawn(follow(
                pki.clone(),
                agent.clone(),
                ready.clone(),
                window.clone(),
            ))
        })
        .collect();
    // Connecting 100 subscribers takes a moment: the run starts once they are all live.
    ready.wait().await;
    let live_at = Instant::now();
    let _ = window.set((now_unix_ms(), live_at + run));
    ready.wait().await;
    let mut lateness = Vec::new();
    let mut records = usize::MAX;
    for task in tasks {
        let seen = task.await??;
        records = records.min(seen.len());
        lateness.extend(seen.into_iter().map(|(_, ms)| ms));
    }
    let measured = live_at.elapsed();
    let agent = Arc::into_inner(agent).context("a subscriber still holds the agent")?;
    let log_dir = agent.dir.clone();
    let (code, _) = tokio::task::spawn_blocking(move || agent.terminate()).await??;
    let lived = started.elapsed();
    if code != Some(0) {
        bail!("the agent exited with {code:?}");
    }
    let log = std::fs::read_to_string(log_dir.join("logs").join("agent.log"))?;
    let syncs = logged_syncs(&log).context("no `Telemetry sampler stopped.` line with syncs")?;

    if lateness.is_empty() {
        bail!("no records in {measured:?}");
    }
    lateness.sort_by(f64::total_cmp);
    let late = lateness
        .iter()
        .filter(|&&ms| ms > interval_ms as f64)
        .count();
    println!(
        "interval {interval_ms:>4} ms, {subscribers:>3} subscriber(s), {:.0} s: {records} records \
         each ({} deliveries); lateness p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {late} later \
         than one interval; fsync {syncs} in {:.1} s of agent life ({:.2}/s)",
        measured.as_secs_f64(),
        lateness.len(),
        quantile(&lateness, 0.50),
        quantile(&lateness, 0.99),
        lateness[lateness.len() - 1],
        lived.as_secs_f64(),
        syncs as f64 / lived.as_secs_f64(),
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; a number among the arguments is the seconds per case.
    let secs = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<u64>().ok())
        .or_else(|| std::env::var("LATENESS_SECS").ok()?.parse().ok())
        .unwrap_or(60);
    let pki = Arc::new(TestPki::new()?);
    println!("live telemetry lateness, {secs} s per case, fsync_interval_ms = {FSYNC_INTERVAL_MS}");
    for interval_ms in INTERVALS_MS {
        for subscribers in SUBSCRIBERS {
            case(&pki, interval_ms, subscribers, Duration::from_secs(secs)).await?;
        }
    }
    Ok(())
}
