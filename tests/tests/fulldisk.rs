//! The agent with its state directory on a small, full file system (a tmpfs with `size=` and
//! `nr_inodes=`, mounted as root; a mount that fails fails the test): a first start still
//! serves (without the erase service when its state directory cannot be created), and live
//! telemetry goes on while the disk is full, with the records that could not be stored
//! reported to resuming subscribers as one DISK_FULL gap.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use jex_e2e::*;
use jex_proto::v1 as pb;
use pb::telemetry_record::Body;

/// Polls the status CLI until `pred` holds for its output (bounded, not a timing assertion).
fn wait_status(agent: &AgentProcess, pred: impl Fn(&str) -> bool) -> Result<String> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let out = agent.status_cli()?;
        if pred(&out) {
            return Ok(out);
        }
        if Instant::now() > end {
            bail!("status never matched:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const NOT_DURABLE: &str = "NOT DURABLE";

/// The spool directory cannot be created; the erase service's state directories were made by
/// an earlier run, so the erase service opens (the next test starts without them).
#[tokio::test]
async fn a_start_on_a_full_disk_without_a_spool_serves_get_host_and_says_it_is_not_durable()
-> Result<()> {
    let pki = TestPki::new()?;
    let tmp = tempfile::tempdir()?;
    let small = SmallFs::mount(&tmp.path().join("state"), 256 * 1024)?;
    let earlier = start_agent(&pki, tmp.path(), &AgentOptions::default())?;
    earlier.terminate()?;
    std::fs::remove_dir_all(tmp.path().join("state/spool"))?;
    small.fill()?;
    let agent = start_agent(&pki, tmp.path(), &AgentOptions::default())?;

    let mut c = client(&pki, &agent, Some(&pki.controller())).await?;
    let host = c.get_host(pb::GetHostRequest {}).await?.into_inner().host;
    ensure!(host.is_some_and(|h| !h.host_id.is_empty()), "no host");
    let log = agent.wait_for_log(&["telemetry is not durable"], Duration::from_secs(10))?;
    ensure!(log.contains("No space left on device"), "{log}");
    wait_status(&agent, |out| out.contains(NOT_DURABLE))?;

    // Records still go live, every number: those sent before this subscriber came arrive as
    // a DISK_FULL gap (they cannot be replayed), then samples as they are taken.
    let mut stream = open_telemetry(&pki, &agent, 0, 0).await?;
    let (mut covered, mut samples) = (0, 0);
    while samples < 5 {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await??
            .context("stream ended")?;
        for r in batch.records {
            let first = match &r.body {
                Some(Body::Gap(g)) if g.reason == pb::GapReason::DiskFull as i32 => {
                    g.first_missing_seq
                }
                Some(Body::Sample(_)) => {
                    samples += 1;
                    r.seq
                }
                _ => bail!("unexpected {r:?}"),
            };
            ensure!(first == covered + 1, "expected {}, got {r:?}", covered + 1);
            covered = r.seq;
        }
    }
    Ok(())
}

/// A first start on a full disk that has never held any state: neither the spool nor the erase
/// state directory can be created. The agent still starts: GetHost and the status socket are
/// served, telemetry is not durable, and the erase service is unavailable: Terminate is refused
/// with FAILED_PRECONDITION naming the erase state directory and the OS error, and a WARN line
/// says so. Both are conditions (`SPOOL_NOT_DURABLE`, `ERASE_UNAVAILABLE`) with their health
/// sub-services NOT_SERVING, until the disk has room again: then both clear, and `Watch` says so.
#[tokio::test]
async fn a_first_start_on_a_full_disk_serves_without_the_erase_and_refuses_terminate() -> Result<()>
{
    let pki = TestPki::new()?;
    let tmp = tempfile::tempdir()?;
    let small = SmallFs::mount(&tmp.path().join("state"), 256 * 1024)?;
    small.fill()?;
    let agent = start_agent(&pki, tmp.path(), &AgentOptions::default())?;
    let erase_dir = tmp.path().join("state/erase").display().to_string();

    let mut c = client(&pki, &agent, Some(&pki.controller())).await?;
    let host = c
        .get_host(pb::GetHostRequest {})
        .await?
        .into_inner()
        .host
        .context("no host")?;
    ensure!(!host.host_id.is_empty(), "{host:?}");
    ensure!(
        host.lifecycle_state == pb::LifecycleState::Serving as i32,
        "{host:?}"
    );
    let warn = agent.wait_for_log(
        &["erase unavailable", "\"WARN\"", &erase_dir],
        Duration::from_secs(10),
    )?;
    ensure!(warn.contains("No space left on device"), "{warn}");
    let status = wait_status(&agent, |out| {
        out.contains("erase:      UNAVAILABLE") && out.contains(NOT_DURABLE)
    })?;
    ensure!(
        status.contains(&erase_dir) && status.contains("No space left on device"),
        "{status}"
    );

    let refused = c
        .terminate(pb::TerminateRequest {
            request_id: "full-disk".into(),
            host_id: host.host_id.clone(),
            nonce: vec![7; 32],
        })
        .await
        .err()
        .context("Terminate accepted without an erase service")?;
    ensure!(
        refused.code() == tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let message = refused.message();
    ensure!(
        message.contains("erase unavailable")
            && message.contains(&erase_dir)
            && message.contains("No space left on device"),
        "{message}"
    );
    let watch = c
        .watch_erase(pb::WatchEraseRequest::default())
        .await
        .err()
        .context("WatchErase served without an erase service")?;
    ensure!(watch.code() == tonic::Code::FailedPrecondition, "{watch:?}");

    // Live telemetry still flows.
    let mut stream = open_telemetry(&pki, &agent, 0, 0).await?;
    let batch = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await??
        .context("stream ended")?;
    ensure!(!batch.records.is_empty(), "{batch:?}");

    // Both degradations are conditions, and the sub-services say so; the host serves.
    let raised = wait_conditions(&mut c, Duration::from_secs(30), "both raised", |c| {
        has_condition(c, "SPOOL_NOT_DURABLE") && has_condition(c, "ERASE_UNAVAILABLE")
    })
    .await?;
    ensure!(
        raised
            .iter()
            .any(|(k, _, m)| k == "ERASE_UNAVAILABLE" && m.contains(&erase_dir)),
        "{raised:?}"
    );
    let ch = channel(&pki, &agent, &pki.observer()).await?;
    for (service, expected) in [
        ("", "SERVING"),
        ("jex.agent.v1.NodeAgent", "SERVING"),
        ("jex.agent.v1.NodeAgent/telemetry", "NOT_SERVING"),
        ("jex.agent.v1.NodeAgent/erase", "NOT_SERVING"),
    ] {
        let got = health_check(ch.clone(), service).await?;
        ensure!(got == expected, "{service:?}: {got}");
    }
    let mut erase_watch = tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .watch(tonic_health::pb::HealthCheckRequest {
            service: "jex.agent.v1.NodeAgent/erase".into(),
        })
        .await?
        .into_inner();
    let first = erase_watch.message().await?.context("Watch ended")?;
    ensure!(first.status == 2, "NOT_SERVING first: {first:?}");
    let status = agent.status_cli()?;
    ensure!(
        status.contains("  - SPOOL_NOT_DURABLE for ")
            && status.contains("  - ERASE_UNAVAILABLE for "),
        "{status}"
    );

    // Room again: the spool stores records, the erase service opens, and both clear.
    small.free()?;
    wait_conditions(&mut c, Duration::from_secs(60), "both cleared", |c| {
        c.is_empty()
    })
    .await?;
    let next = tokio::time::timeout(Duration::from_secs(10), erase_watch.message())
        .await??
        .context("Watch ended")?;
    ensure!(next.status == 1, "SERVING after the erase opened: {next:?}");
    for service in [
        "jex.agent.v1.NodeAgent/telemetry",
        "jex.agent.v1.NodeAgent/erase",
    ] {
        let got = health_check(ch.clone(), service).await?;
        ensure!(got == "SERVING", "{service:?}: {got}");
    }
    let status = wait_status(&agent, |out| !out.contains("UNAVAILABLE"))?;
    ensure!(status.contains("erase:      none requested"), "{status}");
    agent.wait_for_log(
        &["erase service ready: its state directory"],
        Duration::from_secs(10),
    )?;
    Ok(())
}

#[tokio::test]
async fn a_full_disk_keeps_live_records_flowing_and_a_resume_gets_one_disk_full_gap() -> Result<()>
{
    let pki = TestPki::new()?;
    let tmp = tempfile::tempdir()?;
    let small = SmallFs::mount(&tmp.path().join("state"), 256 * 1024)?;
    let agent = start_agent(&pki, tmp.path(), &AgentOptions::default())?;
    let mut stream = open_telemetry(&pki, &agent, 0, 0).await?;
    let mut live: Vec<pb::TelemetryRecord> = Vec::new();
    let take = |batch: pb::StreamTelemetryResponse, live: &mut Vec<pb::TelemetryRecord>| {
        for r in batch.records {
            let expected = live.last().map_or(1, |l| l.seq + 1);
            assert_eq!(r.seq, expected, "a live hole or duplicate");
            live.push(r);
        }
    };
    while live.len() < 5 {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await??
            .context("stream ended")?;
        take(batch, &mut live);
    }
    small.fill()?;
    wait_status(&agent, |out| out.contains(NOT_DURABLE))?;
    let seen_full = live.len();
    while live.len() < seen_full + 10 {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await??
            .context("stream ended")?;
        take(batch, &mut live);
    }
    small.free()?;
    let status = wait_status(&agent, |out| !out.contains(NOT_DURABLE))?;
    // Read live up to the last number the status shows, past every record sent live only.
    let last_seq: u64 = status
        .lines()
        .find_map(|l| l.split("last seq ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .context("no last seq in the status")?
        .parse()?;
    while live.last().map_or(0, |r| r.seq) < last_seq {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await??
            .context("stream ended")?;
        take(batch, &mut live);
    }
    let log = agent.log();
    ensure!(log.contains("No space left on device"), "{log}");
    ensure!(log.contains("Spool accepts records again"), "{log}");
    let newest = live.last().map_or(0, |r| r.seq);
    ensure!(
        live.iter().all(|r| matches!(r.body, Some(Body::Sample(_)))),
        "a live gap"
    );

    // A subscriber resuming from the start: one DISK_FULL gap, covering only numbers that
    // went live as samples, and every number once.
    let mut resume = open_telemetry(&pki, &agent, 0, 0).await?;
    let mut covered = 0;
    let mut disk_full = Vec::new();
    while covered < newest {
        let batch = tokio::time::timeout(Duration::from_secs(10), resume.message())
            .await??
            .context("stream ended")?;
        for r in batch.records {
            let first = match &r.body {
                Some(Body::Gap(g)) if g.last_missing_seq != 0 => g.first_missing_seq,
                _ => r.seq,
            };
            ensure!(first == covered + 1, "expected {}, got {r:?}", covered + 1);
            covered = r.seq;
            if let Some(Body::Gap(g)) = &r.body
                && g.reason == pb::GapReason::DiskFull as i32
            {
                disk_full.push(*g);
            }
        }
    }
    let [gap] = disk_full[..] else {
        bail!("DISK_FULL gaps: {disk_full:?}");
    };
    ensure!(
        gap.first_missing_seq > 5 && gap.last_missing_seq <= newest,
        "{gap:?}"
    );
    Ok(())
}
