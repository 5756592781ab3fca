//! Replay of a day of spooled telemetry over the real wire: 86,400 samples (24 h at 1 Hz, a
//! 10-core sample each) are written to a spool, a real agent process is started on it, and a
//! controller streams the whole history over mTLS (`history_only`), timed from the request to
//! the last record.
//!
//! Run: `cargo bench -p jex-e2e --bench replay`.

use std::time::Instant;

use anyhow::Result;
use jex_e2e::*;
use jex_proto::v1 as pb;

const DAY: u64 = DAY_SECS;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let spool_dir = dir.path().join("state").join("spool");
    write_spool(&spool_dir, 1_795_000_000_000u64, DAY)?;
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
