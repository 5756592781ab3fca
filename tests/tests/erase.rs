//! The erase on Terminate, end to end: a real agent process, a real controller client over mTLS,
//! LUKS2 disk images made by the real `cryptsetup`, the certificate checked offline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use jex_e2e::*;
use jex_erase::testing::BusyCores;
use jex_proto::v1 as pb;
use tonic::Code;

/// A test agent with one LUKS2 image target.
struct Setup {
    pki: TestPki,
    dir: tempfile::TempDir,
    image: PathBuf,
    luks_uuid: String,
    opts: AgentOptions,
}

fn cryptsetup() -> Result<PathBuf> {
    jex_agent::demo::find_cryptsetup()
        .context("cryptsetup is not installed: install cryptsetup-bin (scripts/test.sh does)")
}

fn setup(image_mib: u64) -> Result<Setup> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("tenant.img");
    let cs = cryptsetup()?;
    let luks_uuid = jex_agent::demo::make_luks_image(&image, image_mib << 20, &cs)?;
    let mut extra = String::from("\n[erase]\nchunk_bytes = 1048576\ncheckpoint_bytes = 2097152\n");
    extra.push_str(&jex_agent::demo::erase_toml(&image, &luks_uuid, &cs));
    let opts = AgentOptions {
        interval_ms: 100,
        extra_toml: extra,
        ..Default::default()
    };
    Ok(Setup {
        pki,
        dir,
        image,
        luks_uuid,
        opts,
    })
}

impl Setup {
    fn start(&self) -> Result<AgentProcess> {
        start_agent(&self.pki, &self.dir.path().join("agent"), &self.opts)
    }
}

fn nonce() -> Vec<u8> {
    (0..32).map(|_| rand::random::<u8>()).collect()
}

async fn terminate(
    pki: &TestPki,
    agent: &AgentProcess,
    request_id: &str,
    host_id: &str,
    nonce: &[u8],
) -> Result<Result<pb::EraseOperation, tonic::Status>> {
    let mut c = client(pki, agent, Some(&pki.controller())).await?;
    Ok(c.terminate(pb::TerminateRequest {
        request_id: request_id.into(),
        host_id: host_id.into(),
        nonce: nonce.to_vec(),
    })
    .await
    .map(|r| r.into_inner().operation.unwrap_or_default()))
}

/// Follows WatchErase to its end; returns every message.
async fn watch_to_end(
    pki: &TestPki,
    agent: &AgentProcess,
    operation_id: &str,
) -> Result<Vec<pb::WatchEraseResponse>> {
    let mut c = client(pki, agent, Some(&pki.observer())).await?;
    let mut s = c
        .watch_erase(pb::WatchEraseRequest {
            operation_id: operation_id.into(),
        })
        .await?
        .into_inner();
    let mut all = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(120), s.message()).await {
            Ok(m) => match m? {
                Some(m) => all.push(m),
                None => return Ok(all),
            },
            Err(_) => {
                let log = agent.log();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                bail!(
                    "WatchErase did not end within 120 s; last message {:?}; agent log tail:\n{}",
                    all.last(),
                    tail.join("\n")
                );
            }
        }
    }
}

fn last_op(msgs: &[pb::WatchEraseResponse]) -> Result<pb::EraseOperation> {
    msgs.last()
        .and_then(|m| m.operation.clone())
        .context("no WatchErase message")
}

async fn host(pki: &TestPki, agent: &AgentProcess) -> Result<pb::Host> {
    let mut c = client(pki, agent, Some(&pki.observer())).await?;
    Ok(c.get_host(pb::GetHostRequest {})
        .await?
        .into_inner()
        .host
        .unwrap_or_default())
}

fn is_luks(image: &Path) -> Result<bool> {
    Ok(output_within(
        std::process::Command::new(cryptsetup()?)
            .arg("isLuks")
            .arg(image),
        COMMAND_DEADLINE,
    )?
    .status
    .success())
}

fn verify_cli(cert: &Path, ca: &Path, nonce: &[u8]) -> Result<std::process::Output> {
    output_within(
        std::process::Command::new(agent_bin()?)
            .args(["verify-erase"])
            .arg(cert)
            .arg("--ca")
            .arg(ca)
            .args(["--nonce", &hex(nonce)]),
        COMMAND_DEADLINE,
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn terminate_destroys_the_keys_overwrites_verifies_and_certifies() -> Result<()> {
    let s = setup(20)?;
    let agent = s.start()?;
    assert!(is_luks(&s.image)?);
    assert_eq!(
        host(&s.pki, &agent).await?.lifecycle_state,
        pb::LifecycleState::Serving as i32
    );

    // Telemetry keeps streaming while the erase runs.
    let mut telemetry = open_telemetry(&s.pki, &agent, 0, 0).await?;
    let telemetry_task = tokio::spawn(async move {
        let mut times = Vec::new();
        while let Ok(Ok(Some(b))) =
            tokio::time::timeout(Duration::from_secs(30), telemetry.message()).await
        {
            times.extend(b.records.iter().map(|r| r.time_unix_ms));
        }
        times
    });

    let nonce = nonce();
    let op = terminate(&s.pki, &agent, "req-1", HOST_ID, &nonce).await??;
    assert!(!op.operation_id.is_empty());
    // Idempotent by request_id.
    let again = terminate(&s.pki, &agent, "req-1", HOST_ID, &nonce).await??;
    assert_eq!(again.operation_id, op.operation_id);

    let msgs = watch_to_end(&s.pki, &agent, &op.operation_id).await?;
    let last = last_op(&msgs)?;
    assert_eq!(last.phase, pb::ErasePhase::Reclaimable as i32, "{last:?}");
    assert_eq!(last.outcome, pb::EraseOutcome::Erased as i32);
    let phases: Vec<i32> = msgs
        .iter()
        .filter_map(|m| m.operation.as_ref().map(|o| o.phase))
        .collect();
    assert!(
        phases.windows(2).all(|w| w[0] <= w[1]),
        "phases only move forward: {phases:?}"
    );
    assert!(
        phases.contains(&(pb::ErasePhase::Overwriting as i32))
            || phases.contains(&(pb::ErasePhase::Verifying as i32))
    );

    // The certificate: on the last message and from GetEraseCertificate, identical, verifiable.
    let wire = msgs
        .last()
        .and_then(|m| m.certificate.clone())
        .context("last message carries the certificate")?;
    let mut c = client(&s.pki, &agent, Some(&s.pki.observer())).await?;
    let fetched = c
        .get_erase_certificate(pb::GetEraseCertificateRequest {
            operation_id: op.operation_id.clone(),
        })
        .await?
        .into_inner()
        .certificate
        .context("certificate")?;
    assert_eq!(wire, fetched);
    let cert = jex_agent::server::convert::certificate_from_proto(wire);
    let ca = std::fs::read(&s.pki.paths.ca_cert)?;
    let doc = verify_v2(&cert, &ca, Some(&nonce))?;
    assert_eq!(doc.outcome, "ERASED");
    assert_eq!(doc.host.host_id, HOST_ID);
    assert_eq!(doc.controller_nonce_hex, hex(&nonce));
    assert_eq!(doc.targets.len(), 1);
    let t = &doc.targets[0];
    assert_eq!(
        t.identity.split(';').next(),
        Some(format!("luks-uuid:{}", s.luks_uuid).as_str())
    );
    let evidence = &t
        .key_destruction
        .as_ref()
        .context("no key destruction")?
        .evidence;
    assert_eq!(
        evidence.get("keyslots_before").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        evidence.get("keyslots_after").map(String::as_str),
        Some("0")
    );
    assert_eq!(
        t.overwrite
            .as_ref()
            .context("no overwrite")?
            .mismatched_blocks,
        0
    );
    assert_eq!(t.sanitization.category, "Purge");
    assert!(
        jex_attest::verify_any(&cert, &ca, Some(&[0u8; 32])).is_err(),
        "another nonce is refused"
    );

    // The disk: no LUKS header; every byte is the pattern revealed in the certificate.
    assert!(!is_luks(&s.image)?);
    let key =
        jex_erase::pattern::PatternKey::from_hex(doc.pattern_key_hex().context("no pattern")?)?;
    let bytes = std::fs::read(&s.image)?;
    let pattern = jex_erase::pattern::Pattern::new(key);
    let mut expected = vec![0u8; bytes.len()];
    pattern.fill(0, &mut expected);
    assert!(bytes == expected, "the image holds exactly the pattern");

    // The CLI check, and a changed byte makes it fail.
    let cert_path = s.dir.path().join("cert.json");
    std::fs::write(&cert_path, cert.to_bundle_json())?;
    let ok = verify_cli(&cert_path, &s.pki.paths.ca_cert, &nonce)?;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("outcome:      ERASED"));
    let mut tampered = cert.clone();
    let pos = tampered.document_json.len() / 2;
    tampered.document_json[pos] ^= 1;
    std::fs::write(&cert_path, tampered.to_bundle_json())?;
    let bad = verify_cli(&cert_path, &s.pki.paths.ca_cert, &nonce)?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does NOT verify"));

    assert_eq!(
        host(&s.pki, &agent).await?.lifecycle_state,
        pb::LifecycleState::Reclaimable as i32
    );
    let times = {
        drop(c);
        let (code, _) = tokio::task::spawn_blocking(move || agent.terminate()).await??;
        assert_eq!(code, Some(0));
        telemetry_task.await?
    };
    let during = times
        .iter()
        .filter(|t| **t >= last.started_time_unix_ms && **t <= last.finished_time_unix_ms)
        .count();
    assert!(
        during >= 1,
        "telemetry records were produced during the erase ({during})"
    );
    Ok(())
}

#[tokio::test]
async fn terminate_refuses_bad_requests_with_the_right_codes() -> Result<()> {
    let s = setup(20)?;
    let agent = s.start()?;
    let st = terminate(&s.pki, &agent, "r", "h-other", &nonce())
        .await?
        .expect_err("wrong host");
    assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
    assert!(
        st.message().contains("h-other") && st.message().contains(HOST_ID),
        "{}",
        st.message()
    );
    let st = terminate(&s.pki, &agent, "r", HOST_ID, &[1u8; 31])
        .await?
        .expect_err("short nonce");
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    let st = terminate(&s.pki, &agent, "", HOST_ID, &nonce())
        .await?
        .expect_err("no request id");
    assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
    let mut c = client(&s.pki, &agent, Some(&s.pki.observer())).await?;
    let st = c
        .get_erase_certificate(pb::GetEraseCertificateRequest {
            operation_id: "nope".into(),
        })
        .await
        .expect_err("unknown operation");
    assert_eq!(st.code(), Code::NotFound, "{st:?}");
    // Nothing was touched.
    assert!(is_luks(&s.image)?);
    assert_eq!(
        host(&s.pki, &agent).await?.lifecycle_state,
        pb::LifecycleState::Serving as i32
    );
    Ok(())
}

#[tokio::test]
async fn a_replaced_disk_is_refused_and_the_host_is_never_reclaimable() -> Result<()> {
    let s = setup(20)?;
    let agent = s.start()?;
    // Another LUKS volume now sits where the pinned one was.
    let other = s.dir.path().join("other.img");
    jex_agent::demo::make_luks_image(&other, 20 << 20, &cryptsetup()?)?;
    std::fs::rename(&other, &s.image)?;
    let result = terminate(&s.pki, &agent, "r-1", HOST_ID, &nonce()).await?;
    let final_state = match result {
        Ok(op) => {
            let last = last_op(&watch_to_end(&s.pki, &agent, &op.operation_id).await?)?;
            assert_eq!(last.phase, pb::ErasePhase::Failed as i32, "{last:?}");
            assert_eq!(last.outcome, pb::EraseOutcome::Failed as i32);
            assert!(!last.failure_reason.is_empty());
            host(&s.pki, &agent).await?.lifecycle_state
        }
        Err(st) => {
            assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
            host(&s.pki, &agent).await?.lifecycle_state
        }
    };
    assert_ne!(final_state, pb::LifecycleState::Reclaimable as i32);
    assert!(is_luks(&s.image)?, "the replacement disk was not touched");
    Ok(())
}

/// The records of the agent's erase journal (`<agent dir>/state/erase/journal.log`).
fn journal_kinds(s: &Setup) -> Result<Vec<jex_erase::record::Step>> {
    let path = s
        .dir
        .path()
        .join("agent/state/erase")
        .join(jex_erase::layout::JOURNAL_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let replay = jex_erase::journal::Journal::<jex_erase::record::Record>::read(&path)?;
    Ok(replay.records.iter().map(|r| r.kind()).collect())
}

#[tokio::test]
async fn kill_9_during_the_erase_resumes_from_the_journal_after_restart() -> Result<()> {
    use jex_erase::record::Step;
    let mut s = setup(32)?;
    // A slow overwrite (one 64 KiB write in flight, a journaled checkpoint every 256 KiB: 128
    // fsyncs over 32 MiB), so that the phase the kill is aimed at lasts.
    s.opts.extra_toml = s.opts.extra_toml.replace(
        "chunk_bytes = 1048576\ncheckpoint_bytes = 2097152\n",
        "chunk_bytes = 65536\ncheckpoint_bytes = 262144\nqueue_depth = 1\n",
    );
    ensure!(
        s.opts.extra_toml.contains("queue_depth = 1"),
        "the setup's [erase] sizes changed: {}",
        s.opts.extra_toml
    );
    let agent = s.start()?;
    let nonce = nonce();
    let op = terminate(&s.pki, &agent, "r-kill", HOST_ID, &nonce).await??;
    // The chosen phase: the overwrite, with its first checkpoint journaled. Watched in the
    // journal itself (WatchErase coalesces states), then the agent is stopped (SIGSTOP) so it
    // cannot move on while the journal is read again, and killed there.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if journal_kinds(&s)?.contains(&Step::Overwriting) {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no overwrite checkpoint journaled within 60 s: {:?}",
            journal_kinds(&s)?
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    agent.signal(nix::sys::signal::Signal::SIGSTOP)?;
    // The signal is delivered asynchronously: read the journal once the process is stopped.
    let stat = format!("/proc/{}/stat", agent.pid());
    while !std::fs::read_to_string(&stat)?
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('T'))
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "the agent did not stop on SIGSTOP"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let at_kill = journal_kinds(&s)?;
    tokio::task::spawn_blocking(move || agent.kill9()).await??;
    ensure!(
        at_kill.last() == Some(&Step::Overwriting),
        "the kill was to land in the overwrite, but the journal had reached {:?}: {at_kill:?}",
        at_kill.last()
    );

    let agent = s.start()?;
    let h = host(&s.pki, &agent).await?;
    assert_ne!(
        h.lifecycle_state,
        pb::LifecycleState::Serving as i32,
        "the journal remembers the erase"
    );
    assert_eq!(h.erase_operation_id, op.operation_id);
    let last = last_op(&watch_to_end(&s.pki, &agent, &op.operation_id).await?)?;
    assert_eq!(last.phase, pb::ErasePhase::Reclaimable as i32, "{last:?}");
    let mut c = client(&s.pki, &agent, Some(&s.pki.observer())).await?;
    let cert = c
        .get_erase_certificate(pb::GetEraseCertificateRequest {
            operation_id: String::new(),
        })
        .await?
        .into_inner()
        .certificate
        .context("certificate")?;
    let doc = verify_v2(
        &jex_agent::server::convert::certificate_from_proto(cert),
        &std::fs::read(&s.pki.paths.ca_cert)?,
        Some(&nonce),
    )?;
    assert!(
        doc.verification.as_ref().is_some_and(|v| v.resumed),
        "the certificate says the operation resumed"
    );
    assert_eq!(doc.outcome, "ERASED");
    assert!(!is_luks(&s.image)?);
    agent.wait_for_log(
        &["host reclaimable", &op.operation_id],
        Duration::from_secs(5),
    )?;
    Ok(())
}

#[tokio::test]
async fn status_socket_shows_state_streams_and_erase_outcome() -> Result<()> {
    let s = setup(20)?;
    let agent = s.start()?;
    let mut stream = open_telemetry(&s.pki, &agent, 0, 0).await?;
    let _ = stream.message().await?;
    let socket = agent.dir.join("agent.sock");
    let out = output_within(
        std::process::Command::new(agent_bin()?)
            .args(["status", "--socket"])
            .arg(&socket),
        COMMAND_DEADLINE,
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("state:      SERVING"), "{text}");
    assert!(
        text.contains("spiffe://fleet.example/controller (controller)"),
        "{text}"
    );
    assert!(text.contains("erase:      none requested"), "{text}");

    let plan = output_within(
        std::process::Command::new(agent_bin()?)
            .args(["erase-plan", "--socket"])
            .arg(&socket),
        COMMAND_DEADLINE,
    )?;
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan_text.contains("WOULD BE DESTROYED") && plan_text.contains(&s.luks_uuid),
        "{plan_text}"
    );
    assert!(is_luks(&s.image)?, "planning touched nothing");

    let op = terminate(&s.pki, &agent, "r-s", HOST_ID, &nonce()).await??;
    watch_to_end(&s.pki, &agent, &op.operation_id).await?;
    let out = output_within(
        std::process::Command::new(agent_bin()?)
            .args(["status", "--socket"])
            .arg(&socket),
        COMMAND_DEADLINE,
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("state:      RECLAIMABLE"), "{text}");
    assert!(
        text.contains(&op.operation_id) && text.contains("outcome ERASED"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn the_ctl_command_line_terminates_watches_and_saves_a_certificate_that_verifies()
-> Result<()> {
    let s = setup(20)?;
    let agent = s.start()?;
    let bin = agent_bin()?;
    let ctl = |args: &[&str]| -> Result<std::process::Output> {
        output_within(
            std::process::Command::new(&bin)
                .args([
                    "ctl",
                    "--agent",
                    &format!("https://{}", agent.addr),
                    "--server-name",
                    "localhost",
                    "--ca",
                ])
                .arg(&s.pki.paths.ca_cert)
                .arg("--cert")
                .arg(&s.pki.paths.controller_cert)
                .arg("--key")
                .arg(&s.pki.paths.controller_key)
                .args(args),
            COMMAND_DEADLINE,
        )
    };
    let out = ctl(&["terminate", "--host-id", "h-wrong"])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FailedPrecondition"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = ctl(&["terminate", "--host-id", HOST_ID])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let nonce = text
        .split("nonce=")
        .nth(1)
        .context("nonce printed")?
        .trim()
        .to_owned();
    let out = ctl(&["watch"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .is_some_and(|l| l.contains("RECLAIMABLE"))
    );
    let cert = s.dir.path().join("from-ctl.json");
    let out = ctl(&["certificate", "--out", cert.to_str().context("utf-8 path")?])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nonce_bytes: Vec<u8> = (0..nonce.len() / 2)
        .map(|i| u8::from_str_radix(&nonce[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()?;
    let ok = verify_cli(&cert, &s.pki.paths.ca_cert, &nonce_bytes)?;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    Ok(())
}

#[test]
fn erase_plan_without_a_running_agent_plans_from_the_config_and_touches_nothing() -> Result<()> {
    let s = setup(20)?;
    let agent_dir = s.dir.path().join("agent");
    let config = write_config(&s.pki, &agent_dir, &s.opts)?;
    let before = std::fs::read(&s.image)?;
    let out = output_within(
        std::process::Command::new(agent_bin()?)
            .args(["erase-plan", "--socket"])
            .arg(agent_dir.join("agent.sock"))
            .arg("--config")
            .arg(&config),
        COMMAND_DEADLINE,
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("no agent answered") && text.contains("WOULD BE DESTROYED"),
        "{text}"
    );
    assert!(text.contains(&s.luks_uuid), "{text}");
    assert_eq!(
        std::fs::read(&s.image)?,
        before,
        "planning changed no byte of the target"
    );
    assert!(
        !agent_dir
            .join("state")
            .join("erase")
            .join("journal.log")
            .exists(),
        "no journal was created"
    );

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_host_right_after_watch_erase_ends_never_contradicts_it_under_cpu_contention()
-> Result<()> {
    // The first erase makes the host reclaimable; every later one fails at once (the disk no
    // longer holds the pinned LUKS volume). Each round: a refused Terminate, an accepted one,
    // WatchErase to its last message, then GetHost at once on the same connection.
    const ROUNDS: usize = 60;
    let s = setup(8)?;
    let agent = s.start()?;
    let mut c = client(&s.pki, &agent, Some(&s.pki.controller())).await?;
    let _busy = BusyCores::start();
    let mut contradictions = Vec::new();
    let mut ends = std::collections::BTreeMap::<i32, usize>::new();
    for round in 0..ROUNDS {
        let request_id = format!("req-{round}");
        let refused = c
            .terminate(pb::TerminateRequest {
                request_id: request_id.clone(),
                host_id: "another-host".into(),
                nonce: nonce(),
            })
            .await
            .expect_err("another host's Terminate is refused");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        let op = c
            .terminate(pb::TerminateRequest {
                request_id,
                host_id: HOST_ID.into(),
                nonce: nonce(),
            })
            .await?
            .into_inner()
            .operation
            .context("Terminate answered no operation")?;
        let mut stream = c
            .watch_erase(pb::WatchEraseRequest {
                operation_id: op.operation_id.clone(),
            })
            .await?
            .into_inner();
        let mut last = None;
        while let Some(m) = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .context("WatchErase did not end within 60 s")??
        {
            last = m.operation;
        }
        let host = c
            .get_host(pb::GetHostRequest {})
            .await?
            .into_inner()
            .host
            .context("GetHost answered no host")?;
        let last = last.context("no WatchErase message")?;
        *ends.entry(last.phase).or_default() += 1;
        let expected = if last.phase == pb::ErasePhase::Reclaimable as i32 {
            pb::LifecycleState::Reclaimable
        } else {
            pb::LifecycleState::EraseFailed
        };
        if host.lifecycle_state != expected as i32 || host.erase_operation_id != last.operation_id {
            contradictions.push(format!(
                "round {round}: WatchErase ended in phase {} outcome {}, then GetHost said {} for {}",
                last.phase, last.outcome, host.lifecycle_state, host.erase_operation_id
            ));
        }
    }
    assert!(
        contradictions.is_empty(),
        "{} of {ROUNDS} rounds: {contradictions:#?}",
        contradictions.len()
    );
    assert_eq!(
        ends.get(&(pb::ErasePhase::Reclaimable as i32)),
        Some(&1),
        "{ends:?}"
    );
    assert_eq!(
        ends.get(&(pb::ErasePhase::Failed as i32)),
        Some(&(ROUNDS - 1)),
        "{ends:?}"
    );
    Ok(())
}

#[test]
fn every_phase_and_outcome_reaches_the_wire_under_its_own_name() {
    // The Rust names (one table per enum, `as_str`) and the proto names (prost's
    // `as_str_name`) describe one position: each maps to the proto value of the same name, and
    // every proto value but UNSPECIFIED is reached.
    use jex_erase::{OperationView, Outcome, Phase};
    let view = |phase: Phase, outcome: Option<Outcome>| OperationView {
        operation_id: "op".into(),
        request_id: "req".into(),
        phase,
        outcome,
        bytes_total: 0,
        bytes_done: 0,
        rate_bytes_per_second: 0.0,
        eta_seconds: 0,
        started_unix_ms: 0,
        finished_unix_ms: None,
        failure_reason: None,
        exceptions: Vec::new(),
        targets: Vec::new(),
        certificate: None,
        prepare_record: None,
    };
    let mut phases = std::collections::BTreeSet::new();
    for phase in Phase::ALL {
        let wire = jex_agent::server::convert::operation(&view(phase, None));
        let name = pb::ErasePhase::try_from(wire.phase)
            .expect("a proto phase")
            .as_str_name();
        assert_eq!(
            name,
            format!("ERASE_PHASE_{}", phase.as_str().to_ascii_uppercase())
        );
        phases.insert(name);
    }
    let mut outcomes = std::collections::BTreeSet::new();
    for outcome in Outcome::ALL {
        let wire = jex_agent::server::convert::operation(&view(Phase::Failed, Some(outcome)));
        let name = pb::EraseOutcome::try_from(wire.outcome)
            .expect("a proto outcome")
            .as_str_name();
        assert_eq!(name, format!("ERASE_OUTCOME_{}", outcome.as_str()));
        outcomes.insert(name);
    }
    let all_phases = (1..)
        .map_while(|n| pb::ErasePhase::try_from(n).ok())
        .map(|p| p.as_str_name())
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(phases, all_phases);
    let all_outcomes = (1..)
        .map_while(|n| pb::EraseOutcome::try_from(n).ok())
        .map(|o| o.as_str_name())
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(outcomes, all_outcomes);
}
