//! [`EraseService`]: the erase API the gRPC edge calls.
//!
//! `open` replays the journal and resumes an unfinished operation on a dedicated thread;
//! `terminate` journals a new operation and starts it on its own thread, returning at once;
//! `watch` follows an operation's progress; `certificate` returns a signed certificate, also
//! after restarts; `plan` shows what would be erased and whether the safety checks pass.
//!
//! Calls that write (`open`, `terminate`) block briefly (an fsync, a `stat`), and `plan` probes
//! devices: from async code call them inside `spawn_blocking`. The read-only calls
//! (`lifecycle`, `host_state`, `current_operation_id`, `watch`, `certificate`) read the one
//! snapshot the engine publishes after every change (every operation's view and the lifecycle
//! together) and never wait for the engine's lock, which is held across
//! journal writes; `certificate` may read a small certificate file. The erase itself never runs
//! on the caller's thread. Every log line of an operation, from `terminate` to the
//! certificate, is inside one `erase_operation` span carrying `operation_id`.

use std::sync::Arc;

use tracing::{info, info_span, warn};

use crate::attest::AttestCommand;
use crate::config::EraseConfig;
use crate::deps::{DirectOpener, EraseDeps, IoOpener};
use crate::error::EraseError;
use crate::journal::Journal;
use crate::layout::StateDirs;
use crate::plan::{PlannedTarget, plan_targets};
use crate::progress::{HostEraseState, Lifecycle, Live, OperationView, OperationWatch};
use crate::record::{OperationSettings, Phase, Record, RequestedRecord, StoredPrepareRecord};
use crate::state::replay;
use crate::steps::{self, now_unix_ms};
use crate::store::{Core, RecordHook, Shared, Tracked};
use jex_attest::MIN_NONCE_BYTES;
use jex_attest::SignedCertificate;
use jex_platform::error_chain;

/// A `Terminate` request, decoded by the gRPC edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminateCommand {
    /// Idempotency key.
    pub request_id: String,
    /// The host the controller believes it is talking to.
    pub host_id: String,
    /// Fresh controller nonce, at least 32 bytes.
    pub nonce: Vec<u8>,
}

/// The erase service. Cheap to share behind an `Arc`.
pub struct EraseService {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EraseService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EraseService")
            .field("state_dir", &self.shared.dirs.root)
            .finish_non_exhaustive()
    }
}

impl EraseService {
    /// Opens the state directory (creating it 0700), replays the journal and resumes any
    /// unfinished operation in the background.
    pub fn open(config: EraseConfig, deps: EraseDeps) -> Result<Self, EraseError> {
        Self::open_with(config, deps, Arc::new(DirectOpener), None)
    }

    /// [`Self::open`] with another way to open targets and a hook called before each journal
    /// append (tests).
    pub(crate) fn open_with(
        config: EraseConfig,
        deps: EraseDeps,
        io: Arc<dyn IoOpener>,
        before_append: Option<RecordHook>,
    ) -> Result<Self, EraseError> {
        config.validate()?;
        let dirs = StateDirs {
            root: config.state_dir.clone(),
        };
        dirs.create()?;
        let lock = dirs.lock_exclusive()?;
        let (journal, records) = Journal::<Record>::open(&dirs.journal())?;
        let ops = replay(&records).operations;
        let tracked: Vec<Tracked> = ops
            .into_iter()
            .map(|op| {
                let certificate = if op.state.certification().is_some() {
                    match dirs.load_certificate(op.id()) {
                        Ok(certificate) => Some(certificate),
                        Err(err) => {
                            warn!(operation_id = %op.id(), error = %error_chain(&err), "stored certificate unreadable");
                            None
                        }
                    }
                } else {
                    None
                };
                let live = Live::new(&op, certificate);
                Tracked { op, live }
            })
            .collect();
        let unfinished: Vec<String> = tracked
            .iter()
            .filter(|t| !t.op.has_ended())
            .map(|t| t.op.id().to_owned())
            .collect();
        dirs.remove_orphan_keys(&unfinished);
        let core = Core {
            journal,
            ops: tracked,
        };
        let shared = Arc::new(Shared::new(
            config,
            deps,
            io,
            dirs,
            core,
            lock,
            before_append,
        ));
        if !unfinished.is_empty() {
            let worker = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("erase-resume".into())
                .spawn(move || {
                    for id in unfinished {
                        let span = info_span!("erase_operation", operation_id = %id);
                        steps::run_operation(&worker, &id, true, &span);
                    }
                })
                .map_err(|source| EraseError::State {
                    operation: "starting the erase worker thread for",
                    path: shared.dirs.root.clone(),
                    source,
                })?;
        }
        Ok(EraseService { shared })
    }

    /// Where the host is between tenancies, from the last operation.
    pub fn lifecycle(&self) -> Lifecycle {
        self.shared.snapshot().lifecycle()
    }

    /// The lifecycle and the current or last operation, read from one snapshot (what `GetHost`
    /// shows): never older than a view an [`OperationWatch`] yielded before the call.
    pub fn host_state(&self) -> HostEraseState {
        self.shared.snapshot().host_state()
    }

    /// The id of the current or last operation.
    pub fn current_operation_id(&self) -> Option<String> {
        self.shared
            .snapshot()
            .current()
            .map(|op| op.operation_id.clone())
    }

    /// Starts erasing every configured target, or returns the operation already started for
    /// the same `request_id`. Returns at once; follow the operation with [`Self::watch`].
    pub fn terminate(&self, cmd: TerminateCommand) -> Result<OperationView, EraseError> {
        if cmd.request_id.trim().is_empty() {
            return Err(EraseError::EmptyRequestId);
        }
        self.check_host_and_nonce(&cmd.host_id, &cmd.nonce)?;
        let mut core = self.shared.lock_core();
        if let Some(t) = core
            .ops
            .iter()
            .find(|t| t.op.requested.request_id == cmd.request_id)
        {
            return Ok(t.live.view(&t.op));
        }
        if let Some(running) = core.ops.iter().find(|t| !t.op.has_ended()) {
            return Err(EraseError::AlreadyRunning {
                operation_id: running.op.id().to_owned(),
            });
        }
        if self.shared.config.targets.is_empty() && self.shared.config.internal_ssd.is_none() {
            return Err(EraseError::NoTargets);
        }
        let view = steps::new_operation(
            &self.shared,
            &mut core,
            &cmd.request_id,
            &cmd.host_id,
            &cmd.nonce,
        )?;
        drop(core);
        let id = view.operation_id.clone();
        let span = info_span!("erase_operation", operation_id = %id);
        span.in_scope(|| {
            info!(
                request_id = %cmd.request_id,
                targets = self.shared.config.targets.len(),
                "erase operation requested"
            )
        });
        let worker = Arc::clone(&self.shared);
        let worker_id = id.clone();
        let spawned = std::thread::Builder::new()
            .name("erase".into())
            .spawn(move || steps::run_operation(&worker, &worker_id, false, &span));
        if let Err(source) = spawned {
            let err = EraseError::State {
                operation: "starting the erase worker thread for",
                path: self.shared.dirs.root.clone(),
                source,
            };
            // The operation is journaled: record why it cannot run.
            let record = Record::Failed {
                operation_id: id,
                phase: Phase::Requested,
                reason: error_chain(&err),
                finished_unix_ms: now_unix_ms(),
            };
            self.shared.record(record)?;
            return Err(err);
        }
        Ok(view)
    }

    /// Attests a device erase (`AttestErase`, on the agent of the freshly erased OS): checks
    /// the prepare record and the host now ([`crate::attest`]), signs the attestation's
    /// certificate and returns the operation, `reclaimable` or certified `FAILED`. The same
    /// operation id again returns the same operation. Refused when the host id is not this
    /// host's, the nonce is short, this config declares no internal SSD, or this agent has run
    /// any other operation (an attestation is only taken by a freshly erased OS's agent: a
    /// replay to an agent that served a tenancy since is refused). Runs on the calling thread
    /// (a few tool runs and one signature): call it inside `spawn_blocking`.
    pub fn attest(&self, cmd: AttestCommand) -> Result<OperationView, EraseError> {
        self.check_host_and_nonce(&cmd.host_id, &cmd.nonce)?;
        let operation_id = uuid::Uuid::parse_str(&cmd.operation_id)
            .map_err(|_| EraseError::BadOperationId {
                operation_id: cmd.operation_id.clone(),
            })?
            .hyphenated()
            .to_string();
        if self.shared.config.internal_ssd.is_none() {
            return Err(EraseError::DeviceErase {
                detail: "this agent's config declares no [erase.internal_ssd]: it has no device erase to attest".into(),
            });
        }
        let mut core = self.shared.lock_core();
        if let Some((index, t)) = core
            .ops
            .iter()
            .enumerate()
            .find(|(_, t)| t.op.id() == operation_id)
        {
            // The same attestation again, while it is this agent's latest operation: its
            // answer. After another operation (a new tenancy ended), a replay is refused.
            if t.op.requested.attest.is_none() || index + 1 != core.ops.len() {
                return Err(EraseError::NotFresh {
                    operations: core.ops.len(),
                });
            }
            // Done, or running (another call's, or resumed at start): never run twice.
            return Ok(t.live.view(&t.op));
        }
        if !core.ops.is_empty() {
            return Err(EraseError::NotFresh {
                operations: core.ops.len(),
            });
        }
        let requested = RequestedRecord {
            operation_id: operation_id.clone(),
            request_id: "attest".to_owned(),
            host_id: cmd.host_id.clone(),
            nonce_hex: hex::encode(&cmd.nonce),
            started_unix_ms: now_unix_ms(),
            pattern_key_sha256: String::new(),
            previous_certificate_sha256: None,
            settings: OperationSettings::from_config(&self.shared.config),
            targets: Vec::new(),
            device_erase: None,
            attest: Some(StoredPrepareRecord::from_signed(&cmd.prepare)),
        };
        self.shared.create(&mut core, requested)?;
        drop(core);
        let span = info_span!("erase_operation", operation_id = %operation_id);
        span.in_scope(|| info!("device erase attestation requested"));
        steps::run_operation(&self.shared, &operation_id, false, &span);
        let snapshot = self.shared.snapshot();
        Ok(snapshot.resolve(Some(&operation_id))?.view().clone())
    }

    /// Follows an operation (`None`: the current or last one) through the published snapshots;
    /// the last change of a finished operation carries its outcome and certificate.
    pub fn watch(&self, operation_id: Option<&str>) -> Result<OperationWatch, EraseError> {
        let snapshots = self.shared.subscribe();
        let operation_id = snapshots
            .borrow()
            .resolve(operation_id)?
            .operation_id
            .clone();
        Ok(OperationWatch::new(operation_id, snapshots))
    }

    /// The signed certificate of an operation (`None`: the current or last one).
    pub fn certificate(&self, operation_id: Option<&str>) -> Result<SignedCertificate, EraseError> {
        let snapshot = self.shared.snapshot();
        let op = snapshot.resolve(operation_id)?;
        if !op.certified {
            return Err(EraseError::NotCertified {
                operation_id: op.operation_id.clone(),
                phase: op.phase(),
            });
        }
        match &op.view().certificate {
            Some(certificate) => Ok(certificate.clone()),
            // Unreadable when the service opened: try the file again.
            None => self.shared.dirs.load_certificate(&op.operation_id),
        }
    }

    /// A request for this host (else `HostMismatch`), with a nonce of at least
    /// [`MIN_NONCE_BYTES`] (else `NonceTooShort`).
    fn check_host_and_nonce(&self, host_id: &str, nonce: &[u8]) -> Result<(), EraseError> {
        let ours = &self.shared.deps.host.host_id;
        if host_id != ours {
            return Err(EraseError::HostMismatch {
                expected: ours.clone(),
                got: host_id.to_owned(),
            });
        }
        if nonce.len() < MIN_NONCE_BYTES {
            return Err(EraseError::NonceTooShort { len: nonce.len() });
        }
        Ok(())
    }

    /// Whether the engine's lock is held right now (tests).
    #[cfg(test)]
    pub(crate) fn engine_lock_is_held(&self) -> bool {
        self.shared.core_is_locked()
    }

    /// Makes the journal's later appends consult `fault` (tests).
    #[cfg(test)]
    pub(crate) fn set_journal_write_fault(&self, fault: Option<crate::journal::WriteFault>) {
        self.shared.lock_core().journal.set_write_fault(fault);
    }

    /// What `terminate` would erase, with each target's identity and safety checks. Writes
    /// nothing: devices are opened read-only.
    pub fn plan(&self) -> Result<Vec<PlannedTarget>, EraseError> {
        plan_targets(
            &self.shared.config,
            self.shared.io.as_ref(),
            &self.shared.deps.key_destroyer_factory,
        )
    }
}
