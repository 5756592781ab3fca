//! `jex-agent demo`: the main job end to end on one machine, with no set-up.
//!
//! In a temporary directory: a development PKI, a real agent (the same `app::start` as
//! `jex-agent run`) on a loopback port, and a real controller client over mTLS. It shows the
//! host, a live view of telemetry, disconnects, resumes from the last `seq` and checks that
//! nothing was lost, then erases a LUKS2 image and checks the signed certificate. The agent
//! logs as `jex-agent run` does ([`crate::logging`]): JSON lines in `<dir>/logs/agent.log`,
//! warnings and errors on stderr.
//!
//! Built only with the `dev` feature (`cargo run --features dev -- demo`, `scripts/demo.sh`) and
//! for this crate's unit tests: the shipped binary has no demo.

#![cfg(any(test, feature = "dev"))]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use jex_proto::v1 as pb;

use crate::app::ExitKind;
use crate::config::Config;
use crate::ctl;
use crate::error_chain;

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

/// The `cryptsetup` binary on this machine (Debian: `/usr/sbin` or `/sbin`).
pub fn find_cryptsetup() -> Option<PathBuf> {
    [
        "/usr/sbin/cryptsetup",
        "/sbin/cryptsetup",
        "/usr/bin/cryptsetup",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Makes a LUKS2 disk image of `size` bytes at `path` with a random passphrase that is thrown
/// away (the point is to destroy the key); returns its LUKS UUID.
pub fn make_luks_image(path: &Path, size: u64, cryptsetup: &Path) -> Result<String, DemoError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| DemoError::Step {
        step: "disk image",
        detail: format!("{}: {e}", path.display()),
    };
    std::fs::File::create(path)
        .and_then(|f| f.set_len(size))
        .map_err(io)?;
    let key_path = path.with_extension("passphrase");
    {
        use std::io::Write;
        let mut passphrase = zeroize::Zeroizing::new([0u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut passphrase[..])
            .map_err(|_| DemoError::Step {
                step: "disk image",
                detail: "no system randomness".into(),
            })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(io)?;
        f.write_all(&passphrase[..]).map_err(io)?;
    }
    let run = |args: &[&std::ffi::OsStr]| -> Result<String, DemoError> {
        let out = std::process::Command::new(cryptsetup)
            .args(args)
            .output()
            .map_err(|e| DemoError::Step {
                step: "cryptsetup",
                detail: format!("running {}: {e}", cryptsetup.display()),
            })?;
        if !out.status.success() {
            return Err(DemoError::Step {
                step: "cryptsetup",
                detail: format!(
                    "{:?} failed: {}",
                    args,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let result = (|| {
        run(&luks_format_args(&key_path, path))?;
        run(&["luksUUID".as_ref(), path.as_os_str()])
    })();
    let _ = std::fs::remove_file(&key_path);
    result
}

/// `cryptsetup` arguments that format `device` as LUKS2 with the passphrase in `key_file`,
/// with a fast key derivation (1,000 PBKDF2 iterations: a demo or test volume, never a
/// tenant's).
pub fn luks_format_args<'a>(key_file: &'a Path, device: &'a Path) -> Vec<&'a std::ffi::OsStr> {
    let mut args: Vec<&std::ffi::OsStr> = [
        "luksFormat",
        "--type",
        "luks2",
        "--batch-mode",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
    ]
    .iter()
    .map(std::ffi::OsStr::new)
    .collect();
    args.extend([key_file.as_os_str(), device.as_os_str()]);
    args
}

/// The `[erase]` configuration for one LUKS2 image target.
pub fn erase_toml(image: &Path, luks_uuid: &str, cryptsetup: &Path) -> String {
    format!(
        r#"
[erase.tools]
cryptsetup = "{cs}"

[[erase.targets]]
name = "tenant-disk"
backend = "luks2"
device = "{image}"
luks_uuid = "{luks_uuid}"
"#,
        cs = cryptsetup.display(),
        image = image.display(),
    )
}

/// Writes the demo's agent configuration.
pub fn demo_config(dir: &Path, pki: &crate::pki::DevPkiPaths, interval_ms: u64) -> String {
    format!(
        r#"state_dir = "{dir}/state"

[server]
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
dir = "{dir}/state/spool"
# Records reach subscribers once they are on disk: sync at the sampling cadence.
fsync_interval_ms = {interval_ms}

[logging]
dir = "{dir}/logs"

[metrics]
# Any free port (the default, 127.0.0.1:9469, is one per host); the bound address is logged
# (`metrics serving`) and shown by `jex-agent status`.
listen = "127.0.0.1:0"
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
    let kept = keep.is_some();
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
            if !kept {
                println!(
                    "(a temporary directory, removed now: run with --keep DIR to keep the PKI, logs, image and certificate)"
                );
            }
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

    println!("== 2. the tenant's disk: a 256 MiB LUKS2 image (real cryptsetup luksFormat)");
    let cryptsetup = find_cryptsetup().ok_or(DemoError::Step {
        step: "cryptsetup",
        detail: "not found in /usr/sbin, /sbin or /usr/bin: install cryptsetup-bin (scripts/demo.sh does)".into(),
    })?;
    let image = dir.join("tenant-disk.img");
    let luks_uuid = make_luks_image(&image, 256 << 20, &cryptsetup)?;
    println!("   {} LUKS UUID {luks_uuid}", image.display());

    println!("== 3. agent: TLS 1.3, client certificates required, 500 ms sampling");
    let config_path = dir.join("agent.toml");
    let mut text = demo_config(dir, &pki, 500);
    text.push_str(&erase_toml(&image, &luks_uuid, &cryptsetup));
    std::fs::write(&config_path, text).map_err(step("writing config"))?;
    let config = Config::load(&config_path).map_err(step("config"))?;
    // The daemon's logging, on the demo's directory: declared before the agent, so dropped after
    // it, when the last lines are written out.
    let _log = crate::logging::init(&crate::logging::LogTargets {
        level: config.logging.level.clone(),
        file: Some((
            config.logging.dir.clone(),
            config.logging.max_file_bytes,
            config.logging.max_files,
        )),
    })
    .map_err(step("logging"))?;
    let log_file = config.logging.dir.join(crate::logging::LOG_FILE);
    let socket = config.server.status_socket.clone();
    let agent = crate::app::start(config)
        .await
        .map_err(step("starting the agent"))?;
    let addr = agent.local_addr();
    println!(
        "   listening on https://{addr} (logs: {})",
        log_file.display()
    );

    let conn = ctl::Connection {
        agent: format!("https://{addr}"),
        ca: pki.ca_cert.clone(),
        cert: pki.controller_cert.clone(),
        key: pki.controller_key.clone(),
        server_name: Some("localhost".to_owned()),
    };
    println!("== 4. controller connects over mTLS: GetHost");
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

    println!("== 5. live telemetry for {seconds} s");
    let last = follow(&mut client, 0, Duration::from_secs(seconds), true).await?;
    println!("   disconnected after seq {last}; waiting 2 s while the agent keeps sampling");
    drop(client);
    tokio::time::sleep(Duration::from_secs(2)).await;

    println!("== 6. reconnect and resume with after_seq={last}");
    let mut client = ctl::connect(&conn).await.map_err(step("reconnecting"))?;
    let resumed = follow(&mut client, last, Duration::from_millis(1500), false).await?;
    println!(
        "   resumed seqs {}..={resumed}: contiguous, nothing lost",
        last + 1
    );

    erase_part(
        dir,
        &conn,
        &mut client,
        &host.host_id,
        &pki,
        &socket,
        &image,
        &cryptsetup,
    )
    .await?;

    agent.shutdown().await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn erase_part(
    dir: &Path,
    conn: &ctl::Connection,
    client: &mut jex_proto::v1::node_agent_client::NodeAgentClient<tonic::transport::Channel>,
    host_id: &str,
    pki: &crate::pki::DevPkiPaths,
    socket: &Path,
    image: &Path,
    cryptsetup: &Path,
) -> Result<(), DemoError> {
    println!(
        "== 7. erase plan: what a Terminate would destroy (asked through the local status socket)"
    );
    let plan = crate::local_socket::ask(socket, crate::local_socket::Query::Plan)
        .await
        .map_err(step("erase plan"))?;
    for line in crate::local_socket::render::render_plan(&plan).lines() {
        println!("   {line}");
    }

    println!("== 8. the tenancy ends: Terminate (controller role, fresh 32-byte nonce)");
    let mut nonce = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).map_err(|_| {
        DemoError::Step {
            step: "nonce",
            detail: "no system randomness".into(),
        }
    })?;
    let request_id = uuid::Uuid::new_v4().to_string();
    let op = client
        .terminate(pb::TerminateRequest {
            request_id: request_id.clone(),
            host_id: host_id.to_owned(),
            nonce: nonce.to_vec(),
        })
        .await
        .map_err(|s| DemoError::Step {
            step: "Terminate",
            detail: s.to_string(),
        })?
        .into_inner()
        .operation
        .unwrap_or_default();
    println!(
        "   operation {} accepted (request {request_id})",
        op.operation_id
    );

    let mut watch = client
        .watch_erase(pb::WatchEraseRequest {
            operation_id: op.operation_id.clone(),
        })
        .await
        .map_err(|s| DemoError::Step {
            step: "WatchErase",
            detail: s.to_string(),
        })?
        .into_inner();
    let mut last_phase = -1;
    let mut certificate = None;
    let mut outcome = pb::EraseOutcome::Unspecified;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut last_line = String::new();
    while let Some(msg) = watch.message().await.map_err(|s| DemoError::Step {
        step: "WatchErase",
        detail: s.to_string(),
    })? {
        let Some(op) = msg.operation else { continue };
        let phase = pb::ErasePhase::try_from(op.phase)
            .map_or("?", |p| p.as_str_name().trim_start_matches("ERASE_PHASE_"));
        let line = crate::local_socket::render::progress_line(
            phase,
            op.bytes_done,
            op.bytes_total,
            op.rate_bytes_per_second,
        );
        if op.phase != last_phase {
            if last_phase >= 0 && !tty {
                println!("   {last_line}");
            } else if last_phase >= 0 {
                println!();
            }
            last_phase = op.phase;
        }
        if tty {
            print!("\r   {line}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
        last_line = line;
        if msg.certificate.is_some() {
            certificate = msg.certificate;
        }
        outcome = pb::EraseOutcome::try_from(op.outcome).unwrap_or_default();
        let terminal = matches!(
            pb::ErasePhase::try_from(op.phase),
            Ok(pb::ErasePhase::Reclaimable | pb::ErasePhase::Failed)
        ) || (op.phase == pb::ErasePhase::Certified as i32
            && op.outcome != pb::EraseOutcome::Erased as i32);
        if terminal {
            if tty {
                println!();
            } else {
                println!("   {last_line}");
            }
            if !op.failure_reason.is_empty() {
                return Err(DemoError::Step {
                    step: "erase",
                    detail: op.failure_reason,
                });
            }
            break;
        }
    }
    if outcome != pb::EraseOutcome::Erased {
        return Err(DemoError::Step {
            step: "erase",
            detail: format!("outcome {}", outcome.as_str_name()),
        });
    }

    println!("== 9. the signed certificate, checked offline like `jex-agent verify-erase --nonce`");
    let cert =
        crate::server::convert::certificate_from_proto(certificate.ok_or(DemoError::Step {
            step: "certificate",
            detail: "the last WatchErase message had none".into(),
        })?);
    let cert_path = dir.join("erase-certificate.json");
    std::fs::write(&cert_path, cert.to_bundle_json()).map_err(step("writing the certificate"))?;
    let ca = std::fs::read(&pki.ca_cert).map_err(step("reading the CA"))?;
    let verified =
        jex_attest::verify_any(&cert, &ca, Some(&nonce)).map_err(step("verify-erase"))?;
    for line in verified.summary(true).lines() {
        println!("   {line}");
    }
    let jex_attest::VerifiedDocument::V2(doc) = verified else {
        return Err(DemoError::Step {
            step: "verify-erase",
            detail: "the agent signed a version 1 certificate; this version signs version 2".into(),
        });
    };
    for t in &doc.targets {
        let Some(destruction) = &t.key_destruction else {
            continue;
        };
        let ev = &destruction.evidence;
        println!(
            "   key destruction evidence: keyslots {} -> {}, keyslot area changed: {}",
            ev.get("keyslots_before").map_or("?", String::as_str),
            ev.get("keyslots_after").map_or("?", String::as_str),
            ev.get("keyslot_area_changed").map_or("?", String::as_str)
        );
    }
    let is_luks = std::process::Command::new(cryptsetup)
        .arg("isLuks")
        .arg(image)
        .status()
        .map_err(step("cryptsetup isLuks"))?;
    println!(
        "   cryptsetup isLuks {}: {}",
        image.display(),
        if is_luks.success() {
            "still LUKS (unexpected)"
        } else {
            "no LUKS header left: the image holds pattern bytes only"
        }
    );
    println!(
        "   saved {}; check it again with:\n     jex-agent verify-erase {} --ca {} --nonce {}",
        cert_path.display(),
        cert_path.display(),
        pki.ca_cert.display(),
        hex::encode(nonce)
    );

    println!("== 10. GetHost after the erase");
    let mut client = ctl::connect(conn).await.map_err(step("reconnecting"))?;
    let host = ctl::host(&mut client).await.map_err(step("GetHost"))?;
    let state = pb::LifecycleState::try_from(host.lifecycle_state).map_or("?", |s| s.as_str_name());
    println!("   host {} is {state}", host.host_id);
    if host.lifecycle_state != pb::LifecycleState::Reclaimable as i32 {
        return Err(DemoError::Step {
            step: "GetHost",
            detail: format!("expected RECLAIMABLE, got {state}"),
        });
    }
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
