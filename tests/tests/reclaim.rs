//! The prepare half of a device erase, end to end on Linux with the real `cryptsetup`: an agent
//! process whose config declares the internal SSD (`[erase.internal_ssd]`, method
//! `device-erase`) erases its own targets, records the host's storage inventory, signs it and
//! stops in `AWAITING_DEVICE_ERASE`, never `RECLAIMABLE`. The "internal SSD" here is a LUKS2
//! image whose UUID stands for the internal volumes (the Linux inventory), and the accounts
//! come from an accounts file the test writes. The controller checks the prepare record with
//! `jex_reclaim::verify_prepare` against the fleet CA, the operation id, its nonce and the host.

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
    let mut stream = c
        .watch_erase(pb::WatchEraseRequest {
            operation_id: op.operation_id.clone(),
        })
        .await?
        .into_inner();
    let mut last = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(120), stream.message()).await {
            Ok(message) => match message? {
                Some(m) => last = Some(m),
                None => break,
            },
            Err(_) => bail!(
                "WatchErase did not end within 120 s; last {last:?}; log:\n{}",
                agent.log()
            ),
        }
    }
    let last = last.context("no WatchErase message")?;
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
    let document = jex_attest::verify(
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
