//! Spool benchmark: on-disk size of realistic samples, append cost, open (scan) time, and the
//! time to replay 24 h of 1 Hz samples (86,400 records) the way a resuming subscriber does.
//!
//! The records are the agent's telemetry record bodies (`jex-telemetry` is a dev-dependency
//! only), postcard-encoded under schema 1 (the agent itself stores their protobuf encoding,
//! which the spool cannot depend on; its size is close, see BENCHMARKS.md).
//!
//! Run with `cargo bench -p jex-spool --bench spool`. Each timing is the median of several
//! runs on a spool in a temporary directory (page cache warm, as after a controller restart).

#![allow(clippy::expect_used)] // benchmark setup: a failure aborts the run

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use jex_spool::{Item, Payload, PayloadError, Spool, SpoolConfig};
use jex_telemetry::{
    ClusterBusy, CoreKind, CpuSample, LoadAverage, MemoryPressure, MemorySample, PressureLevel,
    RecordBody, Sample, SwapSample,
};

/// A telemetry body, postcard-encoded.
struct Body(RecordBody);

impl Payload for Body {
    fn schema(&self) -> u16 {
        1
    }
    fn encode(&self, _: u64, _: u64, out: &mut Vec<u8>) -> Result<(), PayloadError> {
        let bytes = postcard::to_allocvec(&self.0).map_err(|e| PayloadError(e.to_string()))?;
        out.extend_from_slice(&bytes);
        Ok(())
    }
    fn decode(_: u16, _: u64, _: u64, bytes: &[u8]) -> Result<Self, PayloadError> {
        postcard::from_bytes(bytes)
            .map(Body)
            .map_err(|e| PayloadError(e.to_string()))
    }
}

const DAY: u64 = 86_400;
const T0: u64 = 1_760_000_000_000;
const RUNS: usize = 7;

/// A sample as an Apple Silicon host with `cores` logical CPUs sends it, values varying per `i`.
fn sample(cores: u64, i: u64) -> Sample {
    let e_cores = cores.min(4);
    Sample {
        window_ms: 1000,
        cpu: CpuSample {
            busy_bp: (i * 37 % 10_000) as u32,
            user_bp: (i * 23 % 6000) as u32,
            system_bp: (i * 11 % 3000) as u32,
            iowait_bp: 0,
            core_busy_bp: (0..cores)
                .map(|c| ((i + c) * 331 % 10_000) as u32)
                .collect(),
            clusters: vec![
                ClusterBusy {
                    kind: CoreKind::Efficiency,
                    busy_bp: (i * 7 % 10_000) as u32,
                    cpus: e_cores as u32,
                },
                ClusterBusy {
                    kind: CoreKind::Performance,
                    busy_bp: (i * 13 % 10_000) as u32,
                    cpus: (cores - e_cores) as u32,
                },
            ],
            online_cpus: cores as u32,
        },
        load: LoadAverage {
            one: 2.31 + (i % 100) as f64 / 100.0,
            five: 1.97,
            fifteen: 1.52,
        },
        memory: MemorySample {
            formula_version: 1,
            total_bytes: 64 << 30,
            used_bytes: (38 << 30) + i * 16384,
            available_bytes: (26 << 30) - i * 16384,
            free_bytes: (3 << 30) + i * 4096,
            active_bytes: (19 << 30) + i * 8192,
            inactive_bytes: 17 << 30,
            wired_bytes: (5 << 30) + i * 16384,
            compressed_bytes: (2 << 30) + i * 16384,
            purgeable_bytes: 213 << 20,
            speculative_bytes: 157 << 20,
            ..MemorySample::default()
        },
        swap: SwapSample {
            total_bytes: 4 << 30,
            used_bytes: (1 << 30) + i * 16384,
        },
        pressure: MemoryPressure {
            level: Some(PressureLevel::Normal),
            psi: None,
        },
    }
}

fn config(dir: &Path, fsync_interval: Duration) -> SpoolConfig {
    SpoolConfig {
        fsync_interval,
        ..SpoolConfig::new(dir.join("spool"))
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn per(total: Duration, n: u64) -> String {
    format!("{:.2} µs", total.as_secs_f64() * 1e6 / n as f64)
}

/// Fills a spool with a day of samples; returns the append time and the spool.
fn fill(dir: &Path, cores: u64) -> (Duration, Spool<Body>) {
    let (mut spool, _) = Spool::open(config(dir, Duration::from_secs(1))).expect("open spool");
    let bodies: Vec<Body> = (0..DAY)
        .map(|i| Body(RecordBody::Sample(sample(cores, i))))
        .collect();
    let started = Instant::now();
    for (i, body) in bodies.into_iter().enumerate() {
        spool
            .append(T0 + i as u64 * 1000, body)
            .expect("append record");
    }
    spool.flush().expect("flush spool");
    (started.elapsed(), spool)
}

/// Reads everything after 0 in batches; returns the records read.
fn replay(spool: &Spool<Body>, batch: usize) -> u64 {
    let mut cursor = 0;
    let mut count = 0;
    loop {
        let records: Vec<Item<Body>> = spool.read_after(cursor, batch).expect("read spool");
        let Some(last) = records.last() else {
            return count;
        };
        cursor = last.last_seq();
        count += records.len() as u64;
        black_box(&records);
    }
}

fn main() {
    println!("spool benchmark: {DAY} records (24 h at 1 Hz), median of {RUNS} runs");
    for cores in [2u64, 10, 24] {
        let body = postcard::to_allocvec(&RecordBody::Sample(sample(cores, DAY / 2)))
            .expect("encode")
            .len();
        // Frame header 12 B, then seq (3 B at this number), time (6 B) and schema (1 B) varints.
        println!(
            "  {cores:>2}-core sample: postcard body {body} B, frame {} B",
            body + 12 + 3 + 6 + 1
        );
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let (append_time, spool) = fill(tmp.path(), 10);
    let stats = spool.stats();
    assert_eq!(
        stats.records, DAY,
        "the default cap must hold a day of 10-core samples"
    );
    println!(
        "10-core day on disk: {} B in {} segments = {:.1} B/record (cap {} B, {:.0} % used)",
        stats.bytes,
        stats.segments,
        stats.bytes as f64 / DAY as f64,
        stats.max_bytes,
        stats.bytes as f64 * 100.0 / stats.max_bytes as f64
    );
    println!(
        "append (fsync at most once per 1 s): {} per record ({:.0} ms for the day)",
        per(append_time, DAY),
        append_time.as_secs_f64() * 1e3
    );

    for batch in [100usize, 500, 2000] {
        let times: Vec<Duration> = (0..RUNS)
            .map(|_| {
                let started = Instant::now();
                let read = replay(&spool, batch);
                let elapsed = started.elapsed();
                assert_eq!(read, DAY);
                elapsed
            })
            .collect();
        let m = median(times);
        println!(
            "replay {DAY} records, batches of {batch:>4}: {:.1} ms ({} per record)",
            m.as_secs_f64() * 1e3,
            per(m, DAY)
        );
    }

    let resume: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            black_box(spool.read_after(DAY - 60, 500).expect("read"));
            started.elapsed()
        })
        .collect();
    println!(
        "resume near the end (last 60 records): {:.1} µs",
        median(resume).as_secs_f64() * 1e6
    );

    let cfg = spool.config().clone();
    drop(spool);
    let opens: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            let (reopened, report) = Spool::<Body>::open(cfg.clone()).expect("reopen");
            let elapsed = started.elapsed();
            assert_eq!(report.records, DAY);
            drop(reopened);
            elapsed
        })
        .collect();
    println!(
        "open (scan and index {DAY} records): {:.1} ms",
        median(opens).as_secs_f64() * 1e3
    );

    let synced_n = 500u64;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut synced, _) = Spool::open(config(dir.path(), Duration::ZERO)).expect("open");
    let started = Instant::now();
    for i in 0..synced_n {
        synced
            .append(T0 + i * 1000, Body(RecordBody::Sample(sample(10, i))))
            .expect("append");
    }
    println!(
        "append with an fsync per record (this machine's disk): {} per record",
        per(started.elapsed(), synced_n)
    );
}
