//! The steps of an operation, run (or resumed) on a worker thread: pin the targets, destroy
//! their keys, overwrite, verify, certify, mark reclaimable. Each step journals its record
//! through [`Shared::record`] before the next runs; where a resumed operation starts is read
//! from its [`State`].

use std::sync::Arc;
use std::time::Instant;

use tracing::{error, info, warn};

use crate::certify::{self, Verification};
use crate::error::EraseError;
use crate::keys::KeyDestruction;
use crate::layout::{read_key_file, write_key_file};
use crate::overwrite::{OverwriteSettings, buffer_bytes, overwrite_target};
use crate::pattern::{Pattern, PatternKey};
use crate::pipeline::Parallelism;
use crate::progress::{OperationView, done_before};
use crate::record::{OperationSettings, Outcome, Phase, PinnedTarget, Record, RequestedRecord};
use crate::state::{Destroyed, Operation, State};
use crate::store::{Core, Shared};
use crate::verify::{
    ReadSettings, SamplePlan, SampleSeed, SampleSettings, sample_plan, verify_target,
};
use jex_platform::blockdev::{Access, BlockDevError, check_identity};
use jex_platform::error_chain;

pub(crate) use jex_attest::clock::now_unix_ms;

/// Creates a new operation: key file, then the durable `requested` record.
pub(crate) fn new_operation(
    shared: &Shared,
    core: &mut Core,
    request_id: &str,
    host_id: &str,
    nonce: &[u8],
) -> Result<OperationView, EraseError> {
    let operation_id = uuid::Uuid::new_v4().to_string();
    let key = PatternKey::generate(&ring::rand::SystemRandom::new())?;
    let key_path = shared.dirs.key_file(&operation_id);
    write_key_file(&key_path, &key)?;
    let previous = core.ops.iter().rev().find_map(|t| {
        t.op.state
            .certification()
            .map(|c| c.certificate_sha256.clone())
    });
    let requested = RequestedRecord {
        operation_id,
        request_id: request_id.to_owned(),
        host_id: host_id.to_owned(),
        nonce_hex: hex::encode(nonce),
        started_unix_ms: now_unix_ms(),
        pattern_key_sha256: key.commitment(),
        previous_certificate_sha256: previous,
        settings: OperationSettings::from_config(&shared.config),
        targets: shared.config.targets.clone(),
        device_erase: shared.config.internal_ssd.clone(),
        attest: None,
    };
    shared.create(core, requested).inspect_err(|_| {
        // Nothing refers to the key yet; a leftover file would be removed on the next start.
        let _ = std::fs::remove_file(&key_path);
    })
}

/// Runs (or resumes) an operation to its end on the calling thread, inside `span`.
pub(crate) fn run_operation(
    shared: &Arc<Shared>,
    operation_id: &str,
    resumed: bool,
    span: &tracing::Span,
) {
    let _entered = span.enter();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_steps(shared, operation_id, resumed)
    }));
    let err = match result {
        Ok(Ok(())) => return,
        Ok(Err(err)) => err,
        Err(_) => EraseError::Internal {
            detail: "the erase worker panicked".into(),
        },
    };
    fail(shared, operation_id, &err);
}

/// Journals the failure of an operation (terminal) and removes its key file.
pub(crate) fn fail(shared: &Shared, operation_id: &str, err: &EraseError) {
    let reason = error_chain(err);
    let phase = shared
        .operation(operation_id)
        .map(|op| op.phase())
        .unwrap_or(Phase::Requested);
    error!(phase = %phase, error = %reason, "erase operation failed");
    let record = Record::Failed {
        operation_id: operation_id.to_owned(),
        phase,
        reason,
        finished_unix_ms: now_unix_ms(),
    };
    if let Err(journal_err) = shared.record(record.clone()) {
        // Not durable: show the failure now; after a restart the operation resumes from its
        // last durable state.
        error!(error = %error_chain(&journal_err), "journaling the failure failed");
        if !shared.apply_unjournaled(&record) {
            error!("the failure is not a transition of the operation's state");
        }
        return;
    }
    shared.dirs.remove_key_file(operation_id);
}

fn run_steps(shared: &Arc<Shared>, operation_id: &str, resumed: bool) -> Result<(), EraseError> {
    let op = shared.operation(operation_id)?;
    if op.has_ended() {
        return Ok(());
    }
    if resumed {
        info!(phase = %op.phase(), state = %op.state.kind(), "resuming erase operation");
    }
    let outcome = match op.state.certification() {
        Some(certification) => certification.outcome,
        None if op.requested.attest.is_some() => attest(shared, &op)?,
        // A device erase with no targets of its own: nothing to overwrite or certify here.
        None if op.requested.targets.is_empty() && op.requested.device_erase.is_some() => {
            Outcome::Erased
        }
        None => {
            let requested = &op.requested;
            let key = read_key_file(
                &shared.dirs.key_file(operation_id),
                &requested.pattern_key_sha256,
            )?;
            let pattern = Pattern::new(key);
            let pinned = match op.state.pinned() {
                Some(pinned) => pinned.to_vec(),
                None => {
                    let pinned = pin_targets(shared, requested)?;
                    shared.record(Record::TargetsPinned {
                        operation_id: operation_id.to_owned(),
                        targets: pinned.clone(),
                    })?;
                    pinned
                }
            };
            let destroyed = match op.state.destroyed() {
                Some(destroyed) => destroyed.clone(),
                None => Destroyed {
                    destructions: destroy_keys(shared, &op, &pinned)?,
                    pinned,
                },
            };
            if !matches!(op.state, State::Verifying(_)) {
                overwrite_all(shared, &op, &destroyed.pinned, &pattern)?;
            }
            let verification = verify_all(shared, &op, &destroyed.pinned, &pattern, resumed)?;
            certify(shared, &op, &destroyed, &pattern, &verification)?
        }
    };
    // The certificate is durable and journaled: the key is public and nothing needs it any
    // more. It goes before the host is marked reclaimable, so that whoever sees `reclaimable`
    // (the controller, or a process exiting right after) never finds it left on disk.
    shared.dirs.remove_key_file(operation_id);
    if outcome != Outcome::Erased {
        warn!(
            outcome = outcome.as_str(),
            "erase certified with exceptions: host not reclaimable"
        );
        return Ok(());
    }
    if let Some(ssd) = &op.requested.device_erase {
        // Never reclaimable here: the device erase is due, attested by the fresh OS's agent.
        let record = crate::device_erase::prepare(
            &op.requested,
            ssd,
            &shared.config.tools,
            &shared.deps.host,
            shared.deps.signer.as_ref(),
            now_unix_ms(),
        )?;
        shared.record(record)?;
        info!("storage inventory signed: awaiting the device erase");
        return Ok(());
    }
    shared.record(Record::Reclaimable {
        operation_id: operation_id.to_owned(),
    })?;
    info!("host reclaimable");
    Ok(())
}

/// Runs an attestation ([`crate::attest`]): the certificate stored, then `certified`.
fn attest(shared: &Shared, op: &Operation) -> Result<Outcome, EraseError> {
    let ssd = shared
        .config
        .internal_ssd
        .as_ref()
        .ok_or_else(|| EraseError::DeviceErase {
            detail: "this agent's config declares no [erase.internal_ssd]: it has no device erase to attest".into(),
        })?;
    let finished_unix_ms = now_unix_ms();
    let (certificate, outcome) =
        crate::attest::attest(shared, &op.requested, ssd, finished_unix_ms)?;
    store_certified(shared, op.id(), certificate, outcome, finished_unix_ms)?;
    info!(outcome = outcome.as_str(), "device erase attested");
    Ok(outcome)
}

fn pin_targets(
    shared: &Shared,
    requested: &RequestedRecord,
) -> Result<Vec<PinnedTarget>, EraseError> {
    let (system, apfs) = crate::rails::system_devices_and_map(&shared.config.tools.diskutil)?;
    let mut pinned = Vec::with_capacity(requested.targets.len());
    for (index, target) in requested.targets.iter().enumerate() {
        if let Some(Err(found)) = crate::rails::check_target_container(apfs.as_ref(), target) {
            return Err(EraseError::Keys {
                target: target.name.clone(),
                source: crate::keys::KeyError::IdentityMismatch {
                    target: target.name.clone(),
                    expected: format!("its APFS volume on the disk of {}", target.device.display()),
                    found,
                },
            });
        }
        let refused = |reason| EraseError::Identity {
            target: target.name.clone(),
            source: BlockDevError::SystemDevice {
                path: target.device.clone(),
                reason,
            },
        };
        // Refused devices are never opened.
        let refusal =
            system
                .refusal_for_path(&target.device)
                .map_err(|source| EraseError::Target {
                    target: target.name.clone(),
                    source,
                })?;
        if let Some(reason) = refusal {
            return Err(refused(reason));
        }
        let io = shared.open_target(index, target, Access::Read)?;
        let identity = io.open_identity().map_err(|source| EraseError::Target {
            target: target.name.clone(),
            source,
        })?;
        // Again on what was opened, in case the path changed in between.
        if let Some(reason) = system.refusal(&target.device, &identity) {
            return Err(refused(reason));
        }
        info!(
            target = %target.name,
            device = %target.device.display(),
            identity = %identity.fingerprint(),
            "target pinned"
        );
        pinned.push(PinnedTarget {
            name: target.name.clone(),
            io_align: io.io_align(),
            media: io.media_info(),
            copy_on_write_fs: io.copy_on_write_fs(),
            identity,
        });
    }
    Ok(pinned)
}

fn destroy_keys(
    shared: &Shared,
    op: &Operation,
    pinned: &[PinnedTarget],
) -> Result<Vec<KeyDestruction>, EraseError> {
    let operation_id = op.id();
    let mut destructions = Vec::with_capacity(pinned.len());
    for (index, (target, pin)) in op.requested.targets.iter().zip(pinned).enumerate() {
        let keys_err = |source| EraseError::Keys {
            target: target.name.clone(),
            source,
        };
        // The device must still be the pinned one before anything destructive happens.
        let io = shared.open_target(index, target, Access::Read)?;
        check_identity(io.as_ref(), &pin.identity).map_err(|source| EraseError::Identity {
            target: target.name.clone(),
            source,
        })?;
        drop(io);
        let destroyer = (shared.deps.key_destroyer_factory)(target)?;
        if destroyer.backend() != target.backend().as_str() {
            return Err(EraseError::BackendMismatch {
                target: target.name.clone(),
                expected: target.backend().as_str().to_owned(),
                got: destroyer.backend().to_owned(),
            });
        }
        let evidence = match op.state.key_snapshot(&target.name) {
            None => {
                destroyer.check_identity().map_err(keys_err)?;
                let before = destroyer.snapshot().map_err(keys_err)?;
                shared.record(Record::KeysSnapshot {
                    operation_id: operation_id.to_owned(),
                    target: target.name.clone(),
                    state: before.clone(),
                })?;
                destroyer.destroy().map_err(keys_err)?;
                destroyer.verify_destroyed(&before).map_err(keys_err)?
            }
            Some(before) => {
                // Resumed after the snapshot: destroy() may already have run. Destroy again only
                // if the backend still sees the pinned volume; if it does not, the keys must
                // already be gone, which verify_destroyed checks.
                match destroyer.check_identity() {
                    Ok(()) => destroyer.destroy().map_err(keys_err)?,
                    Err(err) => warn!(
                        target = %target.name,
                        error = %error_chain(&err),
                        "key backend no longer sees the pinned volume; checking that its keys are gone"
                    ),
                }
                destroyer.verify_destroyed(before).map_err(keys_err)?
            }
        };
        info!(target = %target.name, method = %evidence.method, "keys destroyed");
        destructions.push(evidence);
    }
    shared.record(Record::KeysDestroyed {
        operation_id: operation_id.to_owned(),
        destructions: destructions.clone(),
    })?;
    Ok(destructions)
}

fn overwrite_all(
    shared: &Shared,
    op: &Operation,
    pinned: &[PinnedTarget],
    pattern: &Pattern,
) -> Result<(), EraseError> {
    let operation_id = op.id();
    let sizes: Vec<u64> = pinned.iter().map(|p| p.identity.size_bytes).collect();
    let (first, mut start) = match op.state.overwrite_checkpoint() {
        Some(at) => (at.target as usize, at.offset),
        None => {
            shared.record(Record::Overwriting {
                operation_id: operation_id.to_owned(),
                target: 0,
                offset: 0,
            })?;
            (0, 0)
        }
    };
    shared.start_progress(
        operation_id,
        sizes.iter().sum(),
        done_before(&sizes, first as u32, start),
    );
    let settings = OverwriteSettings {
        chunk_bytes: op.requested.settings.chunk_bytes,
        checkpoint_bytes: op.requested.settings.checkpoint_bytes,
        parallelism: parallelism(&op.requested.settings),
    };
    for (index, (target, pin)) in op.requested.targets.iter().zip(pinned).enumerate() {
        if index < first {
            continue;
        }
        if index > first {
            shared.record(Record::Overwriting {
                operation_id: operation_id.to_owned(),
                target: index as u32,
                offset: 0,
            })?;
            start = 0;
        }
        let size = pin.identity.size_bytes;
        // macOS: an APFS container left on the disk would make the open fail with EBUSY.
        crate::rails::detach_for_overwrite(&shared.config.tools.diskutil, &target.device)?;
        let io = shared.open_target(index, target, Access::ReadWrite)?;
        info!(
            target = %target.name,
            offset = start,
            bytes = size,
            queue_depth = settings.parallelism.queue_depth,
            cpu_threads = settings.parallelism.cpu_threads,
            buffer_bytes = buffer_bytes(&settings),
            "overwriting target"
        );
        let started = Instant::now();
        overwrite_target(
            &target.name,
            io.as_ref(),
            &pin.identity,
            pattern,
            start,
            &settings,
            &mut |done| shared.progress(operation_id, index, done),
            &mut |offset| {
                shared.record(Record::Overwriting {
                    operation_id: operation_id.to_owned(),
                    target: index as u32,
                    offset,
                })
            },
        )?;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        info!(target = %target.name, bytes = size - start, elapsed_ms, "target overwritten");
    }
    Ok(())
}

/// The I/O parallelism of `settings`, `cpu_threads = 0` resolved to the cores present.
fn parallelism(settings: &OperationSettings) -> Parallelism {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    Parallelism {
        queue_depth: settings.queue_depth.max(1) as usize,
        cpu_threads: match settings.cpu_threads {
            0 => cores,
            n => n as usize,
        },
    }
}

fn sample_settings(settings: &OperationSettings) -> SampleSettings {
    SampleSettings {
        strata: settings.verify_strata,
        locations_per_stratum: settings.verify_locations_per_stratum,
        coverage_percent: settings.verify_coverage_percent,
        block_bytes: settings.verify_block_bytes,
    }
}

fn verify_all(
    shared: &Shared,
    op: &Operation,
    pinned: &[PinnedTarget],
    pattern: &Pattern,
    resumed: bool,
) -> Result<Verification, EraseError> {
    let operation_id = op.id();
    // Journaled at every (re)start: verification always runs from scratch, in full.
    shared.record(Record::Verifying {
        operation_id: operation_id.to_owned(),
    })?;
    let nonce = hex::decode(&op.requested.nonce_hex).map_err(|_| EraseError::Internal {
        detail: "journaled nonce is not hex".into(),
    })?;
    let seed = SampleSeed::new(&nonce, operation_id);
    let settings = sample_settings(&op.requested.settings);
    let read_settings = ReadSettings {
        read_bytes: op.requested.settings.chunk_bytes,
        parallelism: parallelism(&op.requested.settings),
    };
    let plans: Vec<SamplePlan> = pinned
        .iter()
        .enumerate()
        .map(|(index, pin)| {
            sample_plan(
                &seed,
                index as u32,
                pin.identity.size_bytes,
                pin.io_align,
                &settings,
            )
        })
        .collect();
    shared.start_progress(
        operation_id,
        plans.iter().map(|p| p.bytes).sum(),
        vec![0; plans.len()],
    );
    for (index, ((target, pin), plan)) in op
        .requested
        .targets
        .iter()
        .zip(pinned)
        .zip(&plans)
        .enumerate()
    {
        let io = shared.open_target(index, target, Access::Read)?;
        let started = Instant::now();
        let report = verify_target(
            &target.name,
            io.as_ref(),
            &pin.identity,
            pattern,
            plan,
            &read_settings,
            &mut |done| shared.progress(operation_id, index, done),
        )?;
        info!(
            target = %target.name,
            bytes = report.bytes,
            blocks = plan.blocks,
            full = plan.full,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "target verified"
        );
    }
    Ok(Verification { plans, resumed })
}

/// Signs the certificate, stores it durably, then journals `certified`.
fn certify(
    shared: &Shared,
    op: &Operation,
    destroyed: &Destroyed,
    pattern: &Pattern,
    verification: &Verification,
) -> Result<Outcome, EraseError> {
    let operation_id = op.id();
    let finished_unix_ms = now_unix_ms();
    let signer = shared.deps.signer.as_ref();
    let chain = signer.chain_der();
    let leaf = chain.first().ok_or_else(|| EraseError::Internal {
        detail: "the agent's signer has no certificate".into(),
    })?;
    let signer_record = jex_attest::SignerRecord::new(
        jex_attest::KEY_SOURCE_FILE,
        leaf,
        &certify::rfc3339(op.requested.started_unix_ms),
    )
    .map_err(|err| EraseError::Internal {
        detail: format!("reading the agent certificate's notBefore: {err}"),
    })?;
    let (document, outcome) = certify::document(
        &shared.deps.host,
        &op.requested,
        destroyed,
        pattern,
        verification,
        signer_record,
        finished_unix_ms,
    );
    let certificate =
        jex_attest::sign_v2(&document, signer).map_err(|source| EraseError::Sign { source })?;
    drop(document);
    store_certified(shared, operation_id, certificate, outcome, finished_unix_ms)?;
    info!(outcome = outcome.as_str(), "erase certified");
    Ok(outcome)
}

/// Stores a signed certificate durably, shows it, then journals `certified`: the record never
/// names a certificate that is not on disk.
fn store_certified(
    shared: &Shared,
    operation_id: &str,
    certificate: jex_attest::SignedCertificate,
    outcome: Outcome,
    finished_unix_ms: u64,
) -> Result<(), EraseError> {
    shared.dirs.store_certificate(operation_id, &certificate)?;
    let certificate_sha256 = jex_attest::document_sha256(&certificate);
    shared.set_certificate(operation_id, certificate);
    shared.record(Record::Certified {
        operation_id: operation_id.to_owned(),
        outcome,
        certificate_sha256: certificate_sha256.clone(),
        finished_unix_ms,
    })?;
    info!(certificate_sha256 = %certificate_sha256, "certificate stored and journaled");
    Ok(())
}
