//! `jex-agent demo`: the main job end to end on one machine, with no set-up.
//!
//! In a temporary directory: a development PKI, a real agent (the same `app::start` as
//! `jex-agent run`) on a loopback port, and a real controller client over mTLS. It shows the
//! host, a live view of telemetry, disconnects, resumes from the last `seq` and checks that
//! nothing was lost.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use jex_proto::v1 as pb;

use crate::app::{ExitKind, error_chain};
use crate::config::Config;
use crate::ctl;

const TRUST_DOMAIN: &str = "fleet.example";
const HOST_ID: &str = "h-demo";

/// Demo failures, each naming the step.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A step failed.
    #[error("{step}: {detail}")]
    Step {
        /// Which step.
        step: &'static str,
        /// What happened.
        detail: String,
    },
}

fn step<E: std::error::Error>(name: &'static str) -> impl FnOnce(E) -> DemoError {
    move |e| DemoError::Step {
        step: name,
        detail: error_chain(&e),
    }
}

/// Writes the demo's agent configuration.
pub fn demo_config(dir: &Path, pki: &crate::pki::DevPkiPaths, interval_ms: u64) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
status_socket = "{dir}/agent.sock"

[tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"

[roles]
controller = ["spiffe://{TRUST_DOMAIN}/controller"]
observer = ["spiffe://{TRUST_DOMAIN}/observer"]

[telemetry]
interval_ms = {interval_ms}

[telemetry.spool]
dir = "{dir}/spool"
# Records reach subscribers once they are on disk: sync at the sampling cadence.
fsync_interval_ms = {interval_ms}

[logging]
dir = "{dir}/logs"
"#,
        dir = dir.display(),
        cert = pki.agent_cert.display(),
        key = pki.agent_key.display(),
        ca = pki.ca_cert.display(),
    )
}

/// Runs the demo; returns the exit code.
pub async fn run(seconds: u64, keep: Option<PathBuf>) -> ExitCode {
    let tmp;
    let dir = match keep {
        Some(d) => d,
        None => match tempfile::Builder::new().prefix("jex-demo-").tempdir() {
            Ok(t) => {
                tmp = t;
                tmp.path().to_owned()
            }
            Err(e) => {
                eprintln!("demo: creating a temporary directory: {e}");
                return ExitKind::Failure.into();
            }
        },
    };
    match run_in(&dir, seconds).await {
        Ok(()) => {
            println!(
                "\ndemo finished: everything above ran for real on loopback in {}",
                dir.display()
            );
            ExitKind::Ok.into()
        }
        Err(e) => {
            eprintln!("demo FAILED: {e}");
            ExitKind::Failure.into()
        }
    }
}

async fn run_in(dir: &Path, seconds: u64) -> Result<(), DemoError> {
    println!("== 1. development PKI (fleet CA, agent, controller, observer; ECDSA P-256)");
    let (pki, _ca) =
        crate::pki::write_dev_pki(&dir.join("pki"), TRUST_DOMAIN, HOST_ID).map_err(step("pki"))?;
    println!(
        "   {}",
        pki.ca_cert
            .parent()
            .map_or_else(String::new, |p| p.display().to_string())
    );

    println!("== 2. agent: TLS 1.3, client certificates required, 500 ms sampling");
    let config_path = dir.join("agent.toml");
    std::fs::write(&config_path, demo_config(dir, &pki, 500)).map_err(step("writing config"))?;
    let config = Config::load(&config_path).map_err(step("config"))?;
    let agent = crate::app::start(config)
        .await
        .map_err(step("starting the agent"))?;
    let addr = agent.local_addr();
    println!(
        "   listening on https://{addr} (logs: {}/logs/agent.log)",
        dir.display()
    );

    let conn = ctl::Connection {
        agent: format!("https://{addr}"),
        ca: pki.ca_cert.clone(),
        cert: pki.controller_cert.clone(),
        key: pki.controller_key.clone(),
        server_name: Some("localhost".to_owned()),
    };
    println!("== 3. controller connects over mTLS: GetHost");
    let mut client = ctl::connect(&conn).await.map_err(step("connecting"))?;
    let host = ctl::host(&mut client).await.map_err(step("GetHost"))?;
    let state = pb::LifecycleState::try_from(host.lifecycle_state).map_or("?", |s| s.as_str_name());
    println!(
        "   host_id={} chip={:?} cpus={} memory={} MiB os={} {} agent={} state={state}",
        host.host_id,
        host.chip,
        host.logical_cpus,
        host.memory_bytes >> 20,
        host.os_name,
        host.os_version,
        host.agent_version
    );

    println!("== 4. live telemetry for {seconds} s");
    let last = follow(&mut client, 0, Duration::from_secs(seconds), true).await?;
    println!("   disconnected after seq {last}; waiting 2 s while the agent keeps sampling");
    drop(client);
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!("== 5. reconnect and resume with after_seq={last}");
    let mut client = ctl::connect(&conn).await.map_err(step("reconnecting"))?;
    let resumed = follow(&mut client, last, Duration::from_millis(1500), false).await?;
    println!(
        "   resumed seqs {}..={resumed}: contiguous, nothing lost",
        last + 1
    );

    agent.shutdown().await;
    Ok(())
}

/// Follows the stream after `after_seq` for `dur`, checking the sequence is contiguous;
/// returns the last seq seen.
async fn follow(
    client: &mut jex_proto::v1::node_agent_client::NodeAgentClient<tonic::transport::Channel>,
    after_seq: u64,
    dur: Duration,
    print: bool,
) -> Result<u64, DemoError> {
    let req = pb::StreamTelemetryRequest {
        after_seq,
        max_batch_records: 0,
        history_only: false,
    };
    let mut stream = client
        .stream_telemetry(req)
        .await
        .map_err(|s| DemoError::Step {
            step: "StreamTelemetry",
            detail: s.to_string(),
        })?
        .into_inner();
    let mut expected = after_seq + 1;
    let deadline = tokio::time::Instant::now() + dur;
    let mut seen = 0;
    loop {
        let msg = match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => break,
            Ok(m) => m.map_err(|s| DemoError::Step {
                step: "StreamTelemetry",
                detail: s.to_string(),
            })?,
        };
        let Some(batch) = msg else { break };
        for r in &batch.records {
            if r.seq != expected {
                return Err(DemoError::Step {
                    step: "resume",
                    detail: format!("expected seq {expected}, got {}", r.seq),
                });
            }
            expected += 1;
            seen += 1;
            if print {
                println!("   {}", ctl::format_record(r));
            }
        }
    }
    if seen == 0 {
        return Err(DemoError::Step {
            step: "telemetry",
            detail: "no records received".to_owned(),
        });
    }
    Ok(expected - 1)
}
