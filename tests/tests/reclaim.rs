//! A device erase in two halves, end to end on Linux with real agent processes, real mTLS and
//! the real `cryptsetup`.
//!
//! - **Prepare**: an agent whose config declares the internal SSD (`[erase.internal_ssd]`,
//!   method `device-erase`) erases its own targets, records the host's storage inventory, signs
//!   it and stops in `AWAITING_DEVICE_ERASE`, never `RECLAIMABLE`. The "internal SSD" is a LUKS2
//!   image whose UUID stands for the internal volumes (the Linux inventory, a real
//!   implementation of the same trait the Mac's is), and the accounts come from an accounts
//!   file the test writes. The controller checks the prepare record with
//!   `jex_reclaim::verify_prepare`.
//! - **Device erase**, performed by the test as the simulation of Apple's EACS: the internal
//!   image's LUKS2 header destroyed and the image formatted again (a new UUID), the tenant's
//!   account gone, the agent's state and identity wiped and a new agent certificate issued.
//! - **Attest**: a fresh agent on the same config answers `AttestErase` with one evidence line
//!   per check and a v2 certificate: `RECLAIMABLE` when every line passes, `ERASE_FAILED`
//!   naming the failed lines otherwise. Each refusal is its own test.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use jex_e2e::*;
use jex_proto::v1 as pb;

const IMAGE_BYTES: u64 = 20 << 20;

fn cryptsetup() -> Result<PathBuf> {
    jex_agent::demo::find_cryptsetup()
        .context("cryptsetup is not installed: install cryptsetup-bin (scripts/test.sh does)")
}

fn nonce() -> Vec<u8> {
    (0..32).map(|_| rand::random::<u8>()).collect()
}

/// A host for the test: LUKS2 images for the tenant disk (an ordinary target) and the internal
/// SSD, and an accounts file with one tenant account.
struct Host {
    dir: tempfile::TempDir,
    tenant_uuid: String,
    internal_uuid: String,
}

impl Host {
    fn new() -> Result<Self> {
        let cs = cryptsetup()?;
        let dir = tempfile::tempdir()?;
        let tenant_uuid =
            jex_agent::demo::make_luks_image(&dir.path().join("tenant.img"), IMAGE_BYTES, &cs)?;
        let internal_uuid =
            jex_agent::demo::make_luks_image(&dir.path().join("internal.img"), IMAGE_BYTES, &cs)?;
        std::fs::write(
            dir.path().join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\n\
             daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
             tenant:x:1000:1000:Tenant:/home/tenant:/bin/zsh\n",
        )?;
        Ok(Host {
            dir,
            tenant_uuid,
            internal_uuid,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `[erase]` tables: the tenant disk as a target when `with_target`, and the internal
    /// SSD.
    fn erase_toml(&self, with_target: bool) -> Result<String> {
        let cs = cryptsetup()?;
        let mut toml = if with_target {
            jex_agent::demo::erase_toml(&self.path("tenant.img"), &self.tenant_uuid, &cs)
        } else {
            format!("\n[erase.tools]\ncryptsetup = \"{}\"\n", cs.display())
        };
        toml.push_str(&format!(
            r#"
[erase.internal_ssd]
method = "device-erase"
inventory_devices = ["{internal}"]
allowed_accounts = ["root", "daemon"]
accounts_file = "{passwd}"
"#,
            internal = self.path("internal.img").display(),
            passwd = self.path("passwd").display(),
        ));
        Ok(toml)
    }
}

/// What the prepare half left: WatchErase's last message and the lifecycle right after.
struct Prepared {
    nonce: Vec<u8>,
    last: pb::WatchEraseResponse,
    lifecycle: i32,
}

async fn terminate_and_watch(pki: &TestPki, agent: &AgentProcess) -> Result<Prepared> {
    let nonce = nonce();
    let mut c = client(pki, agent, Some(&pki.controller())).await?;
    let op = c
        .terminate(pb::TerminateRequest {
            request_id: "req-reclaim".into(),
            host_id: HOST_ID.into(),
            nonce: nonce.clone(),
        })
        .await?
        .into_inner()
        .operation
        .context("Terminate answered no operation")?;
    let last = watch_to_end(&mut c, agent, &op.operation_id, Duration::from_secs(120)).await?;
    let lifecycle = c
        .get_host(pb::GetHostRequest {})
        .await?
        .into_inner()
        .host
        .context("GetHost answered no host")?
        .lifecycle_state;
    Ok(Prepared {
        nonce,
        last,
        lifecycle,
    })
}

/// The prepare record of `operation`, verified as a controller does.
fn verified_prepare(
    pki: &TestPki,
    operation: &pb::EraseOperation,
    nonce: &[u8],
) -> Result<jex_reclaim::PrepareRecord> {
    let signed = operation.prepare_record.clone().with_context(|| {
        format!("the operation at AWAITING_DEVICE_ERASE carries no prepare record: {operation:?}")
    })?;
    let signed = jex_agent::server::convert::prepare_record_from_proto(signed);
    Ok(jex_reclaim::verify_prepare(
        &signed,
        &std::fs::read(&pki.paths.ca_cert)?,
        &operation.operation_id,
        nonce,
        HOST_ID,
    )?)
}

fn volume_uuids(record: &jex_reclaim::PrepareRecord) -> Vec<String> {
    record
        .inventory
        .volumes
        .iter()
        .map(|v| v.uuid.clone())
        .collect()
}

#[tokio::test]
async fn with_an_internal_ssd_terminate_erases_its_targets_then_awaits_the_device_erase_with_a_signed_inventory()
-> Result<()> {
    let pki = TestPki::new()?;
    let host = Host::new()?;
    let agent_dir = host.path("agent");
    let opts = AgentOptions {
        extra_toml: host.erase_toml(true)?,
        ..Default::default()
    };
    let agent = start_agent(&pki, &agent_dir, &opts)?;
    let prepared = terminate_and_watch(&pki, &agent).await?;
    let operation = prepared
        .last
        .operation
        .clone()
        .context("last message has no operation")?;

    // Stopped here, never reclaimable: the device erase is due.
    ensure!(
        operation.phase == pb::ErasePhase::AwaitingDeviceErase as i32,
        "phase {:?}, expected AWAITING_DEVICE_ERASE; log:\n{}",
        pb::ErasePhase::try_from(operation.phase),
        agent.log()
    );
    ensure!(
        prepared.lifecycle == pb::LifecycleState::AwaitingDeviceErase as i32,
        "lifecycle {:?}",
        pb::LifecycleState::try_from(prepared.lifecycle)
    );
    ensure!(
        operation.outcome == pb::EraseOutcome::Unspecified as i32,
        "the outcome is the fresh OS's agent's to give: {operation:?}"
    );
    // The tenant disk was erased and certified here, as on any host.
    let certificate = prepared
        .last
        .certificate
        .clone()
        .context("the tenant disk's certificate is missing")?;
    let document = verify_v2(
        &jex_agent::server::convert::certificate_from_proto(certificate),
        &std::fs::read(&pki.paths.ca_cert)?,
        Some(&prepared.nonce),
    )?;
    ensure!(document.outcome == "ERASED", "{document:?}");
    ensure!(document.targets.len() == 1 && document.targets[0].name == "tenant-disk");

    // The prepare record: signed by this agent for this operation, nonce and host, with the
    // internal SSD's volume and every local login account.
    let record = verified_prepare(&pki, &operation, &prepared.nonce)?;
    ensure!(
        record.terminate_unix_ms == operation.started_time_unix_ms,
        "the record's terminate time {} is not the operation's start {}",
        record.terminate_unix_ms,
        operation.started_time_unix_ms
    );
    ensure!(
        volume_uuids(&record) == vec![host.internal_uuid.clone()],
        "inventory volumes {:?}, expected the internal SSD's {}",
        volume_uuids(&record),
        host.internal_uuid
    );
    ensure!(
        record.inventory.accounts == ["root", "tenant"],
        "accounts {:?}",
        record.inventory.accounts
    );
    // Another nonce, operation or host is refused.
    ensure!(verified_prepare(&pki, &operation, &nonce()).is_err());
    let mut other = operation.clone();
    other.operation_id = "00000000-0000-4000-8000-000000000000".into();
    ensure!(verified_prepare(&pki, &other, &prepared.nonce).is_err());

    // A restart replays the same state and the same record, byte for byte.
    agent.kill9()?;
    let agent = start_agent(&pki, &agent_dir, &opts)?;
    let mut c = client(&pki, &agent, Some(&pki.controller())).await?;
    let host_now = c
        .get_host(pb::GetHostRequest {})
        .await?
        .into_inner()
        .host
        .context("GetHost answered no host")?;
    ensure!(host_now.lifecycle_state == pb::LifecycleState::AwaitingDeviceErase as i32);
    ensure!(host_now.erase_operation_id == operation.operation_id);
    let mut stream = c
        .watch_erase(pb::WatchEraseRequest {
            operation_id: operation.operation_id.clone(),
        })
        .await?
        .into_inner();
    let replayed = stream
        .message()
        .await?
        .and_then(|m| m.operation)
        .context("no operation after the restart")?;
    ensure!(
        replayed.prepare_record == operation.prepare_record,
        "the prepare record changed across a restart"
    );
    Ok(())
}

#[tokio::test]
async fn an_internal_ssd_alone_awaits_the_device_erase_at_once() -> Result<()> {
    let pki = TestPki::new()?;
    let host = Host::new()?;
    let opts = AgentOptions {
        extra_toml: host.erase_toml(false)?,
        ..Default::default()
    };
    let agent = start_agent(&pki, &host.path("agent"), &opts)?;
    let prepared = terminate_and_watch(&pki, &agent).await?;
    let operation = prepared
        .last
        .operation
        .clone()
        .context("last message has no operation")?;
    ensure!(
        operation.phase == pb::ErasePhase::AwaitingDeviceErase as i32,
        "phase {:?}; log:\n{}",
        pb::ErasePhase::try_from(operation.phase),
        agent.log()
    );
    ensure!(
        prepared.last.certificate.is_none(),
        "nothing was overwritten here to certify"
    );
    ensure!(operation.targets.is_empty());
    let record = verified_prepare(&pki, &operation, &prepared.nonce)?;
    ensure!(volume_uuids(&record) == vec![host.internal_uuid.clone()]);
    Ok(())
}

#[tokio::test]
async fn an_inventory_that_cannot_be_taken_fails_the_operation_and_never_awaits() -> Result<()> {
    let pki = TestPki::new()?;
    let host = Host::new()?;
    // The "internal SSD" is not a LUKS2 device: cryptsetup luksUUID fails on it.
    std::fs::write(host.path("internal.img"), vec![0u8; 1 << 20])?;
    let opts = AgentOptions {
        extra_toml: host.erase_toml(false)?,
        ..Default::default()
    };
    let agent = start_agent(&pki, &host.path("agent"), &opts)?;
    let prepared = terminate_and_watch(&pki, &agent).await?;
    let operation = prepared
        .last
        .operation
        .context("last message has no operation")?;
    ensure!(
        operation.phase == pb::ErasePhase::Failed as i32
            && prepared.lifecycle == pb::LifecycleState::EraseFailed as i32,
        "expected FAILED and ERASE_FAILED: {operation:?}"
    );
    ensure!(
        operation.failure_reason.contains("storage inventory")
            && operation.failure_reason.contains("luksUUID"),
        "the reason should say which step and tool failed: {}",
        operation.failure_reason
    );
    ensure!(operation.prepare_record.is_none());
    Ok(())
}

/// The config is refused with a clear error when the internal SSD's paths are relative.
#[test]
fn check_config_refuses_a_relative_inventory_device() -> Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let opts = AgentOptions {
        extra_toml: "\n[erase.internal_ssd]\nmethod = \"device-erase\"\ninventory_devices = [\"disk.img\"]\n"
            .into(),
        ..Default::default()
    };
    let config = write_config(&pki, dir.path(), &opts)?;
    let out = output_within(
        std::process::Command::new(agent_bin()?)
            .args(["check-config", "--config"])
            .arg(&config),
        COMMAND_DEADLINE,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "check-config accepted it");
    ensure!(
        stderr.contains("erase.internal_ssd") && stderr.contains("absolute"),
        "the error should name the setting and say what to fix:\n{stderr}"
    );
    Ok(())
}

// === The attest half ===

/// What the device erase did, for the refusal tests to leave a step out.
#[derive(Clone, Copy)]
struct DeviceErase {
    /// The internal SSD's volumes replaced (a new LUKS2 header and UUID).
    reformat: bool,
    /// The tenant's account left behind.
    keep_tenant_account: bool,
    /// A new agent certificate, issued after the Terminate.
    new_key: bool,
}

const FULL_ERASE: DeviceErase = DeviceErase {
    reformat: true,
    keep_tenant_account: false,
    new_key: true,
};

/// The prepare half on the tenant's OS: the operation at AWAITING_DEVICE_ERASE and its nonce.
async fn prepare(
    pki: &TestPki,
    host: &Host,
    with_target: bool,
) -> Result<(pb::EraseOperation, Vec<u8>)> {
    let opts = AgentOptions {
        extra_toml: host.erase_toml(with_target)?,
        ..Default::default()
    };
    let agent = start_agent(pki, &host.path("agent"), &opts)?;
    let prepared = terminate_and_watch(pki, &agent).await?;
    let operation = prepared
        .last
        .operation
        .context("last message has no operation")?;
    ensure!(
        operation.phase == pb::ErasePhase::AwaitingDeviceErase as i32,
        "the prepare half did not end awaiting the device erase: {operation:?}; log:\n{}",
        agent.log()
    );
    agent.terminate()?;
    Ok((operation, prepared.nonce))
}

/// The device erase, as the controller's MDM (or a DFU restore) would leave the host: see the
/// module docs. Returns the internal SSD's UUID now.
fn device_erase(pki: &TestPki, host: &Host, how: DeviceErase) -> Result<String> {
    let mut uuid = host.internal_uuid.clone();
    if how.reformat {
        let cs = cryptsetup()?;
        let image = host.path("internal.img");
        let out = output_within(
            std::process::Command::new(&cs)
                .args(["luksErase", "--batch-mode"])
                .arg(&image),
            COMMAND_DEADLINE,
        )?;
        ensure!(
            out.status.success(),
            "luksErase: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        uuid = jex_agent::demo::make_luks_image(&image, IMAGE_BYTES, &cs)?;
        ensure!(uuid != host.internal_uuid, "the new volume kept its UUID");
    }
    let mut passwd = String::from(
        "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
    );
    if how.keep_tenant_account {
        passwd.push_str("tenant:x:1000:1000:Tenant:/home/tenant:/bin/zsh\n");
    }
    std::fs::write(host.path("passwd"), passwd)?;
    std::fs::remove_dir_all(host.path("agent"))?;
    if how.new_key {
        // X.509 times are whole seconds: one later than the Terminate's.
        std::thread::sleep(Duration::from_millis(1100));
        let issued = pki.ca.issue(&jex_agent::pki::LeafSpec {
            common_name: format!("jex-agent {HOST_ID}"),
            names: vec!["localhost".into(), "127.0.0.1".into()],
            uris: vec![format!("spiffe://{TRUST_DOMAIN}/host/{HOST_ID}")],
            server: true,
            not_before: time::Duration::ZERO,
            not_after: time::Duration::days(30),
        })?;
        jex_agent::pki::write_file(&pki.paths.agent_cert, issued.cert_pem.as_bytes(), 0o644)?;
        jex_agent::pki::write_file(&pki.paths.agent_key, issued.key_pem.as_bytes(), 0o600)?;
    }
    Ok(uuid)
}

async fn attest(
    pki: &TestPki,
    agent: &AgentProcess,
    request: pb::AttestEraseRequest,
) -> Result<pb::AttestEraseResponse, tonic::Status> {
    let mut c = client(pki, agent, Some(&pki.controller()))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    c.attest_erase(request)
        .await
        .map(tonic::Response::into_inner)
}

fn request(operation: &pb::EraseOperation, nonce: &[u8]) -> pb::AttestEraseRequest {
    pb::AttestEraseRequest {
        operation_id: operation.operation_id.clone(),
        host_id: HOST_ID.into(),
        nonce: nonce.to_vec(),
        prepare_record: operation.prepare_record.clone(),
    }
}

/// The fresh OS's agent, on the same config as the prepare half.
fn fresh_agent(pki: &TestPki, host: &Host, with_target: bool) -> Result<AgentProcess> {
    let opts = AgentOptions {
        extra_toml: host.erase_toml(with_target)?,
        ..Default::default()
    };
    start_agent(pki, &host.path("agent"), &opts)
}

/// The attestation's certificate, verified as v2 against the fleet CA and the nonce.
fn verified_v2(
    pki: &TestPki,
    response: &pb::AttestEraseResponse,
    nonce: &[u8],
) -> Result<jex_attest::CertificateDocumentV2> {
    let certificate = response
        .certificate
        .clone()
        .context("the attestation carries no certificate")?;
    let certificate = jex_agent::server::convert::certificate_from_proto(certificate);
    match jex_attest::verify_any(
        &certificate,
        &std::fs::read(&pki.paths.ca_cert)?,
        Some(nonce),
    )? {
        jex_attest::VerifiedDocument::V2(document) => Ok(document),
        other => bail!("expected a v2 certificate, got {other:?}"),
    }
}

/// The refusal of an attestation: certified FAILED, ERASE_FAILED, the failed `check` named in
/// the exceptions and as a failed line of the signed evidence.
async fn expect_failed(
    pki: &TestPki,
    agent: &AgentProcess,
    response: &pb::AttestEraseResponse,
    nonce: &[u8],
    check: &str,
) -> Result<()> {
    let operation = response.operation.clone().context("no operation")?;
    ensure!(
        operation.outcome == pb::EraseOutcome::Failed as i32
            && operation.phase != pb::ErasePhase::Reclaimable as i32,
        "expected a FAILED attestation: {operation:?}"
    );
    ensure!(
        operation.exceptions.iter().any(|e| e == check),
        "the exceptions {:?} do not name {check}",
        operation.exceptions
    );
    let document = verified_v2(pki, response, nonce)?;
    ensure!(document.outcome == "FAILED", "{document:?}");
    let evidence = document
        .device_erase
        .context("no device_erase record")?
        .evidence;
    ensure!(
        evidence.iter().any(|l| l.check == check && !l.passed),
        "no failed {check} line in {evidence:?}"
    );
    let mut c = client(pki, agent, Some(&pki.controller())).await?;
    let lifecycle = c
        .get_host(pb::GetHostRequest {})
        .await?
        .into_inner()
        .host
        .context("no host")?
        .lifecycle_state;
    ensure!(
        lifecycle == pb::LifecycleState::EraseFailed as i32,
        "lifecycle {:?}",
        pb::LifecycleState::try_from(lifecycle)
    );
    Ok(())
}

#[tokio::test]
async fn after_the_device_erase_the_fresh_agent_attests_it_and_the_host_becomes_reclaimable()
-> Result<()> {
    let pki = TestPki::new()?;
    let host = Host::new()?;
    let (operation, nonce) = prepare(&pki, &host, true).await?;
    let new_uuid = device_erase(&pki, &host, FULL_ERASE)?;
    let agent = fresh_agent(&pki, &host, true)?;
    let response = attest(&pki, &agent, request(&operation, &nonce)).await?;
    let attested = response.operation.clone().context("no operation")?;
    ensure!(
        attested.phase == pb::ErasePhase::Reclaimable as i32
            && attested.outcome == pb::EraseOutcome::Erased as i32,
        "expected RECLAIMABLE: {attested:?}; log:\n{}",
        agent.log()
    );
    ensure!(
        attested.operation_id == operation.operation_id,
        "one operation id across the halves"
    );
    let document = verified_v2(&pki, &response, &nonce)?;
    ensure!(document.outcome == "ERASED" && document.exceptions.is_empty());
    ensure!(
        document.request_id == "req-reclaim",
        "the attestation names the Terminate's request id, not {:?}",
        document.request_id
    );
    ensure!(document.signer.born_after_tenancy, "{:?}", document.signer);
    let device_erase = document.device_erase.clone().context("no device_erase")?;
    let prepare = jex_agent::server::convert::prepare_record_from_proto(
        operation
            .prepare_record
            .clone()
            .context("no prepare record")?,
    );
    ensure!(device_erase.prepare_record_sha256 == prepare.sha256_hex());
    let checks: Vec<&str> = device_erase
        .evidence
        .iter()
        .map(|l| l.check.as_str())
        .collect();
    for check in [
        "prepare_record_verifies",
        "same_host",
        "tenant_volumes_gone",
        "accounts_allowed",
        "signing_key_after_terminate",
    ] {
        ensure!(checks.contains(&check), "no {check} line in {checks:?}");
    }
    ensure!(
        device_erase.evidence.iter().all(|l| l.passed),
        "{device_erase:?}"
    );
    ensure!(
        document.targets.len() == 1
            && document.targets[0].sanitization.category == "Purge"
            && document.targets[0].overwrite.is_none(),
        "{:?}",
        document.targets
    );
    let mut c = client(&pki, &agent, Some(&pki.controller())).await?;
    let lifecycle = c
        .get_host(pb::GetHostRequest {})
        .await?
        .into_inner()
        .host
        .context("no host")?
        .lifecycle_state;
    ensure!(lifecycle == pb::LifecycleState::Reclaimable as i32);

    // The same request again: the same answer, certificate and all.
    let again = attest(&pki, &agent, request(&operation, &nonce)).await?;
    ensure!(
        again.certificate == response.certificate,
        "a repeated AttestErase signed again"
    );

    // Offline, as an auditor would: `verify-erase` on the bundle.
    let bundle = host.path("attestation.json");
    let certificate = jex_agent::server::convert::certificate_from_proto(
        response.certificate.clone().context("no certificate")?,
    );
    std::fs::write(&bundle, certificate.to_bundle_json())?;
    let out = output_within(
        std::process::Command::new(agent_bin()?)
            .arg("verify-erase")
            .arg(&bundle)
            .arg("--ca")
            .arg(&pki.paths.ca_cert)
            .args(["--nonce", &hex_of(&nonce)]),
        COMMAND_DEADLINE,
    )?;
    let shown = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "verify-erase refused it: {}{}",
        shown,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        shown.contains("tenant_volumes_gone"),
        "verify-erase shows no evidence:\n{shown}"
    );
    println!(
        "the attestation's certificate document:\n{}\n\nverify-erase of it (internal SSD now {new_uuid}):\n{shown}",
        String::from_utf8_lossy(&certificate.document_json)
    );

    // Restarted, the agent still says RECLAIMABLE and serves the same certificate.
    agent.terminate()?;
    let agent = fresh_agent(&pki, &host, true)?;
    let mut c = client(&pki, &agent, Some(&pki.controller())).await?;
    let stored = c
        .get_erase_certificate(pb::GetEraseCertificateRequest {
            operation_id: operation.operation_id.clone(),
        })
        .await?
        .into_inner()
        .certificate;
    ensure!(
        stored == response.certificate,
        "the stored certificate differs after a restart"
    );
    Ok(())
}

/// The two halves with the device erase done `how` in between, on a host with the internal SSD
/// alone: the fresh agent, the prepared operation and its nonce.
async fn prepared_and_erased(
    pki: &TestPki,
    host: &Host,
    how: DeviceErase,
) -> Result<(AgentProcess, pb::EraseOperation, Vec<u8>)> {
    let (operation, nonce) = prepare(pki, host, false).await?;
    device_erase(pki, host, how)?;
    let agent = fresh_agent(pki, host, false)?;
    Ok((agent, operation, nonce))
}

/// The two halves with the device erase done `how` and the right request: refused, naming
/// `check`.
async fn refused_after(how: DeviceErase, check: &str) -> Result<()> {
    let pki = TestPki::new()?;
    let host = Host::new()?;
    let (agent, operation, nonce) = prepared_and_erased(&pki, &host, how).await?;
    let response = attest(&pki, &agent, request(&operation, &nonce)).await?;
    expect_failed(&pki, &agent, &response, &nonce, check).await
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_skipped_device_erase_is_refused_its_volume_is_still_there() -> Result<()> {
    refused_after(
        DeviceErase {
            reformat: false,
            ..FULL_ERASE
        },
        "tenant_volumes_gone",
    )
    .await
}

#[tokio::test]
async fn a_tenant_account_left_behind_is_refused() -> Result<()> {
    refused_after(
        DeviceErase {
            keep_tenant_account: true,
            ..FULL_ERASE
        },
        "accounts_allowed",
    )
    .await
}

#[tokio::test]
async fn a_signing_key_older_than_the_terminate_is_refused() -> Result<()> {
    refused_after(
        DeviceErase {
            new_key: false,
            ..FULL_ERASE
        },
        "signing_key_after_terminate",
    )
    .await
}

#[tokio::test]
async fn the_wrong_nonce_is_refused() -> Result<()> {
    let pki = TestPki::new()?;
    let host = Host::new()?;
    let (agent, operation, _) = prepared_and_erased(&pki, &host, FULL_ERASE).await?;
    let other = nonce();
    let response = attest(&pki, &agent, request(&operation, &other)).await?;
    expect_failed(&pki, &agent, &response, &other, "prepare_record_verifies").await
}

#[tokio::test]
async fn the_prepare_record_of_another_operation_is_refused() -> Result<()> {
    let pki = TestPki::new()?;
    let host = Host::new()?;
    let (agent, operation, nonce) = prepared_and_erased(&pki, &host, FULL_ERASE).await?;
    let mut req = request(&operation, &nonce);
    req.operation_id = "6f1d2c3b-4a59-4e8d-9c7b-0a1b2c3d4e5f".into();
    let response = attest(&pki, &agent, req).await?;
    expect_failed(&pki, &agent, &response, &nonce, "prepare_record_verifies").await
}

#[tokio::test]
async fn a_tampered_prepare_record_is_refused() -> Result<()> {
    let pki = TestPki::new()?;
    let host = Host::new()?;
    let (agent, operation, nonce) = prepared_and_erased(&pki, &host, FULL_ERASE).await?;
    let mut req = request(&operation, &nonce);
    // The inventory edited to list the new volume as if it had been there all along.
    let record = req.prepare_record.as_mut().context("no prepare record")?;
    let json = String::from_utf8(record.record_json.clone())?;
    ensure!(json.contains(&host.internal_uuid));
    record.record_json = json
        .replace(&host.internal_uuid, "00000000-0000-4000-8000-000000000001")
        .into_bytes();
    let response = attest(&pki, &agent, req).await?;
    expect_failed(&pki, &agent, &response, &nonce, "prepare_record_verifies").await
}

#[tokio::test]
async fn the_wrong_host_is_refused_before_anything_is_recorded() -> Result<()> {
    let pki = TestPki::new()?;
    let host = Host::new()?;
    let (agent, operation, nonce) = prepared_and_erased(&pki, &host, FULL_ERASE).await?;
    let mut req = request(&operation, &nonce);
    req.host_id = "h-another".into();
    let err = attest(&pki, &agent, req)
        .await
        .expect_err("another host's attestation");
    ensure!(err.code() == tonic::Code::FailedPrecondition, "{err:?}");
    ensure!(err.message().contains("h-another"), "{err:?}");
    // Nothing was recorded: the right request still attests.
    let response = attest(&pki, &agent, request(&operation, &nonce)).await?;
    let attested = response.operation.context("no operation")?;
    ensure!(
        attested.phase == pb::ErasePhase::Reclaimable as i32,
        "{attested:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_replayed_attestation_is_refused_once_the_host_has_moved_on() -> Result<()> {
    let pki = TestPki::new()?;
    let host = Host::new()?;
    let (agent, operation, nonce) = prepared_and_erased(&pki, &host, FULL_ERASE).await?;
    let first = attest(&pki, &agent, request(&operation, &nonce)).await?;
    ensure!(
        first.operation.as_ref().map(|o| o.phase) == Some(pb::ErasePhase::Reclaimable as i32),
        "{first:?}"
    );
    // The next tenancy ends: a new Terminate on this agent.
    let next = terminate_and_watch(&pki, &agent).await?;
    ensure!(
        next.lifecycle == pb::LifecycleState::AwaitingDeviceErase as i32,
        "the next tenancy's Terminate: {:?}",
        next.last.operation
    );
    // The old attestation, replayed, must not say RECLAIMABLE again.
    let err = attest(&pki, &agent, request(&operation, &nonce))
        .await
        .expect_err("a replayed attestation");
    ensure!(err.code() == tonic::Code::FailedPrecondition, "{err:?}");
    // Nor is a tenant-OS agent's own operation ever attested by itself.
    let own = next.last.operation.context("no operation")?;
    let err = attest(&pki, &agent, request(&own, &next.nonce))
        .await
        .expect_err("an agent attesting its own device erase");
    ensure!(err.code() == tonic::Code::FailedPrecondition, "{err:?}");
    Ok(())
}
