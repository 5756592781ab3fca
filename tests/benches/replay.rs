//! Replay of a day of spooled telemetry over the real wire: 86,400 samples (24 h at 1 Hz, a
//! 10-core sample each) are written to a spool, a real agent process is started on it, and a
//! controller streams the whole history over mTLS (`history_only`), timed from the request to
//! the last record.
//!
//! Run: `cargo bench -p jex-e2e --bench replay`.

use std::time::Instant;

use anyhow::Result;
use jex_agent::telemetry::wire::WireRecord;
use jex_agent::telemetry::{CpuSample, MemorySample, RecordBody, Sample};
use jex_e2e::*;
use jex_proto::v1 as pb;
use jex_spool::{Spool, SpoolConfig};

const DAY: u64 = 86_400;

fn sample(i: u64) -> Sample {
    Sample {
        window_ms: 1000,
        cpu: CpuSample {
            busy_bp: (i % 10_000) as u32,
            user_bp: 1000,
            system_bp: 300,
            core_busy_bp: (0..10).map(|c| ((i + c * 977) % 10_000) as u32).collect(),
            online_cpus: 10,
            ..CpuSample::default()
        },
        memory: MemorySample {
            formula_version: 1,
            total_bytes: 32 << 30,
            used_bytes: (20 << 30) + i * 4096,
            available_bytes: (12 << 30) - i * 4096,
            ..MemorySample::default()
        },
        ..Sample::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let spool_dir = dir.path().join("state").join("spool");
    {
        let (mut spool, _) = Spool::open(SpoolConfig::new(&spool_dir))?;
        let start = 1_795_000_000_000u64;
        for i in 0..DAY {
            let time = start + i * 1000;
            let record = WireRecord::next_in(&spool, time, RecordBody::Sample(sample(i)));
            spool.append(time, record)?;
        }
        spool.flush()?;
    }
    // The default spool cap (24 MiB) holds this day (about 13 MB).
    let agent = start_agent(
        &pki,
        dir.path(),
        &AgentOptions {
            interval_ms: 1000,
            ..Default::default()
        },
    )?;
    let mut c = client(&pki, &agent, Some(&pki.controller())).await?;
    for batch in [256u32, 4096] {
        let t = Instant::now();
        let mut s = c
            .stream_telemetry(pb::StreamTelemetryRequest {
                after_seq: 0,
                max_batch_records: batch,
                history_only: true,
            })
            .await?
            .into_inner();
        let (mut n, mut bytes) = (0u64, 0usize);
        while let Some(b) = s.message().await? {
            n += b.records.len() as u64;
            bytes += prost::Message::encoded_len(&b);
        }
        let el = t.elapsed();
        println!(
            "replay over mTLS gRPC, batches of {batch:>4}: {n} records in {:.0} ms ({:.1} µs/record, {:.1} MB on the wire)",
            el.as_secs_f64() * 1000.0,
            el.as_secs_f64() * 1e6 / n as f64,
            bytes as f64 / 1e6
        );
        assert!(n >= DAY, "the whole day was replayed ({n})");
    }
    Ok(())
}
