//! Health that tells the truth, caused for real on a real agent process: a certificate near
//! its `notAfter` and its renewal, log lines the log file's full disk does not take (a tmpfs
//! mounted as root), and the drain on SIGTERM seen by `grpc.health.v1` `Watch`. Each condition
//! is watched appearing and clearing in `GetHost`, `jex-agent status` and `/metrics`. The spool
//! and erase conditions are in `fulldisk.rs`, the clock step in `clock_step.rs`.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use jex_agent::pki::LeafSpec;
use jex_e2e::*;
use tonic_health::pb::health_check_response::ServingStatus;

/// How long a condition may take to appear or clear (checks run every second).
const CONDITION_WAIT: Duration = Duration::from_secs(30);

/// The `jex_agent_condition` sample for `kind` in a scrape.
fn condition_gauge(text: &str, kind: &str) -> Result<u8> {
    let series = format!("jex_agent_condition{{condition=\"{kind}\"}} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&series))
        .with_context(|| format!("no {series} in:\n{text}"))?;
    Ok(line[series.len()..].trim().parse()?)
}

/// Issues the agent a new certificate valid for `days` from now, and makes it reload.
fn renew_agent_cert(pki: &TestPki, agent: Option<&AgentProcess>, days: i64) -> Result<()> {
    let fresh = pki.ca.issue(&LeafSpec {
        common_name: format!("jex-agent {HOST_ID}"),
        names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
        uris: vec![format!("spiffe://{TRUST_DOMAIN}/host/{HOST_ID}")],
        server: true,
        not_before: time::Duration::hours(-1),
        not_after: time::Duration::days(days),
    })?;
    jex_agent::pki::write_file(&pki.paths.agent_cert, fresh.cert_pem.as_bytes(), 0o644)?;
    jex_agent::pki::write_file(&pki.paths.agent_key, fresh.key_pem.as_bytes(), 0o600)?;
    if let Some(agent) = agent {
        agent.signal(nix::sys::signal::Signal::SIGHUP)?;
    }
    Ok(())
}

#[tokio::test]
async fn a_certificate_near_its_not_after_is_reported_until_it_is_renewed() -> Result<()> {
    let pki = TestPki::new()?;
    renew_agent_cert(&pki, None, 3)?;
    let tmp = tempfile::tempdir()?;
    let agent = start_agent(&pki, tmp.path(), &AgentOptions::default())?;
    let mut c = client(&pki, &agent, Some(&pki.observer())).await?;

    // Raised from the first check, before any connection.
    let now = host_conditions(&mut c).await?;
    let [(kind, since, message)] = &now[..] else {
        bail!("expected one condition: {now:?}");
    };
    ensure!(kind == "CERTIFICATE_EXPIRES_SOON", "{now:?}");
    ensure!(*since > 0, "{now:?}");
    ensure!(
        message.starts_with("the agent certificate expires at ")
            && (message.contains(", in 3 d 0 h: renew it")
                || message.contains(", in 2 d 23 h: renew it"))
            && !message.contains("fleet CA"),
        "{message}"
    );
    let status = agent.status_cli()?;
    ensure!(
        status.contains("health:     1 condition(s) raised")
            && status.contains("  - CERTIFICATE_EXPIRES_SOON for "),
        "{status}"
    );
    let metrics = agent.metrics_addr.context("metrics are on by default")?;
    ensure!(condition_gauge(&scrape_plain(metrics).await?, "CERTIFICATE_EXPIRES_SOON")? == 1);
    agent.wait_for_log(
        &["condition raised", "CERTIFICATE_EXPIRES_SOON", "\"WARN\""],
        Duration::from_secs(10),
    )?;

    // Renewed for a year: cleared everywhere.
    renew_agent_cert(&pki, Some(&agent), 365)?;
    wait_conditions(&mut c, CONDITION_WAIT, "the renewal clears it", |c| {
        c.is_empty()
    })
    .await?;
    let status = agent.status_cli()?;
    ensure!(
        status.contains("health:     OK (no condition raised)"),
        "{status}"
    );
    ensure!(condition_gauge(&scrape_plain(metrics).await?, "CERTIFICATE_EXPIRES_SOON")? == 0);
    agent.wait_for_log(
        &["condition cleared", "CERTIFICATE_EXPIRES_SOON"],
        Duration::from_secs(10),
    )?;
    Ok(())
}

#[tokio::test]
async fn log_lines_lost_on_a_full_disk_are_reported_then_cleared_after_the_hold() -> Result<()> {
    let pki = TestPki::new()?;
    let tmp = tempfile::tempdir()?;
    let logs = SmallFs::mount(&tmp.path().join("logs"), 512 * 1024)?;
    let agent = start_agent(&pki, tmp.path(), &short_hold())?;
    let mut c = client(&pki, &agent, Some(&pki.observer())).await?;
    ensure!(host_conditions(&mut c).await?.is_empty());

    logs.fill()?;
    // Every GetHost logs a line at debug (the test agents log jex_agent at debug).
    let raised = {
        let mut raised = None;
        for _ in 0..600 {
            let now = host_conditions(&mut c).await?;
            if has_condition(&now, "LOG_LINES_DROPPED") {
                raised = Some(now);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        raised.context("LOG_LINES_DROPPED never raised while the log disk was full")?
    };
    let (_, _, message) = raised
        .iter()
        .find(|(k, _, _)| k == "LOG_LINES_DROPPED")
        .context("raised")?;
    ensure!(
        message.contains(" log lines dropped, the last at "),
        "{message}"
    );
    let status = agent.status_cli()?;
    ensure!(status.contains("  - LOG_LINES_DROPPED for "), "{status}");
    let metrics = agent.metrics_addr.context("metrics are on by default")?;
    let text = scrape_plain(metrics).await?;
    ensure!(condition_gauge(&text, "LOG_LINES_DROPPED")? == 1);
    ensure!(
        text.lines()
            .find(|l| l.starts_with("jex_agent_log_lines_dropped_total "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > 0),
        "{text}"
    );

    // Room again: no more drops, and the hold runs out.
    logs.free()?;
    wait_conditions(&mut c, CONDITION_WAIT, "the hold ends", |c| {
        !has_condition(c, "LOG_LINES_DROPPED")
    })
    .await?;
    // The gap is in the file once it takes lines again.
    let log = agent.wait_for_log(&["log lines dropped"], Duration::from_secs(10))?;
    ensure!(log.contains("\"dropped\":"), "{log}");
    Ok(())
}

#[tokio::test]
async fn every_service_goes_not_serving_on_drain_and_watch_sends_it() -> Result<()> {
    let pki = TestPki::new()?;
    let tmp = tempfile::tempdir()?;
    let agent = start_agent(&pki, tmp.path(), &AgentOptions::default())?;
    let ch = channel(&pki, &agent, &pki.observer()).await?;
    let services = [
        "",
        "jex.agent.v1.NodeAgent",
        "jex.agent.v1.NodeAgent/telemetry",
        "jex.agent.v1.NodeAgent/erase",
    ];
    let mut watches = Vec::new();
    for service in services {
        ensure!(
            health_check(ch.clone(), service).await? == "SERVING",
            "{service:?}"
        );
        let mut stream = tonic_health::pb::health_client::HealthClient::new(ch.clone())
            .watch(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?
            .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await??
            .context("Watch ended at once")?;
        ensure!(first.status == ServingStatus::Serving as i32, "{service:?}");
        watches.push((service, stream));
    }
    let unknown = tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "jex.agent.v1.NodeAgent/unknown".into(),
        })
        .await
        .err()
        .context("an unknown service answered")?;
    ensure!(unknown.code() == tonic::Code::NotFound, "{unknown:?}");

    agent.signal(nix::sys::signal::Signal::SIGTERM)?;
    for (service, mut stream) in watches {
        let next = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await?
            .with_context(|| format!("{service:?}: the stream failed before NOT_SERVING"))?
            .with_context(|| format!("{service:?}: the stream ended before NOT_SERVING"))?;
        ensure!(
            next.status == ServingStatus::NotServing as i32,
            "{service:?}: {next:?}"
        );
    }
    Ok(())
}
