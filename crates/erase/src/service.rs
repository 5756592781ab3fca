//! [`EraseService`]: the erase API the gRPC edge calls.
//!
//! `open` replays the journal and resumes an unfinished operation on a dedicated thread;
//! `terminate` journals a new operation and starts it on its own thread, returning at once;
//! `watch` follows an operation's progress; `certificate` returns a signed certificate, also
//! after restarts; `plan` shows what would be erased and whether the safety checks pass.
//!
//! Calls that touch the disk (`open`, `terminate`, `plan`) block briefly (an fsync, a `stat`);
//! from async code call them inside `spawn_blocking`. The erase itself never runs on the
//! caller's thread. Every log line of an operation, from `terminate` to the certificate, is
//! inside one `erase_operation` span carrying `operation_id`.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tracing::{info, info_span, warn};

use super::config::{EraseConfig, TargetConfig};
use super::engine::{
    self, Core, DirectOpener, IoOpener, OperationState, Record, Shared, StateDirs,
};
use super::keys::KeyDestroyer;
use super::{EraseError, MIN_NONCE_LEN, error_chain};
use crate::journal::Journal;
use jex_attest::{HostIdentity, SignedCertificate, Signer};
use jex_platform::blockdev::{Access, SystemDevices};

/// Builds the key destroyer of a configured target.
pub type KeyDestroyerFactory =
    Box<dyn Fn(&TargetConfig) -> Result<Box<dyn KeyDestroyer>, EraseError> + Send + Sync>;

/// What the erase service needs from the rest of the agent.
pub struct EraseDeps {
    /// Signs certificates.
    pub signer: Arc<dyn Signer>,
    /// This host, as written into certificates; `host_id` is compared with `Terminate`'s.
    pub host: HostIdentity,
    /// Builds the key-destruction backend of a target (real `luks2`/`apfs-volume` backends in
    /// the agent, fakes in tests).
    pub key_destroyer_factory: KeyDestroyerFactory,
}

/// Where the host is between two tenancies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// No erase requested (or none ever ran).
    Serving,
    /// An erase operation is running.
    Erasing,
    /// Erased, verified and certified: the host can be given to another tenant.
    Reclaimable,
    /// The last erase failed or had exceptions: the host must not be given to another tenant.
    EraseFailed,
}

/// The erase state machine's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Accepted and journaled.
    Requested,
    /// Every key destroyed and checked.
    KeysDestroyed,
    /// Overwriting.
    Overwriting,
    /// Reading back.
    Verifying,
    /// Certificate signed.
    Certified,
    /// Done: the host can be reclaimed.
    Reclaimable,
    /// Failed; see the reason.
    Failed,
}

impl Phase {
    /// Lowercase name, as in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Requested => "requested",
            Phase::KeysDestroyed => "keys_destroyed",
            Phase::Overwriting => "overwriting",
            Phase::Verifying => "verifying",
            Phase::Certified => "certified",
            Phase::Reclaimable => "reclaimable",
            Phase::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// Keys destroyed, overwritten, verified: the host is reclaimable.
    Erased,
    /// Erased with exceptions (listed); the host is not reclaimable.
    ErasedWithExceptions,
    /// Failed; the host is not reclaimable.
    Failed,
}

impl Outcome {
    /// The certificate spelling: `ERASED`, `ERASED_WITH_EXCEPTIONS`, `FAILED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Erased => "ERASED",
            Outcome::ErasedWithExceptions => "ERASED_WITH_EXCEPTIONS",
            Outcome::Failed => "FAILED",
        }
    }
}

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

/// An operation's state, as reported to the controller.
#[derive(Debug, Clone, PartialEq)]
pub struct OperationView {
    /// Operation id (UUID).
    pub operation_id: String,
    /// The request that started it.
    pub request_id: String,
    /// Current phase.
    pub phase: Phase,
    /// Set when the operation ended (or is certified).
    pub outcome: Option<Outcome>,
    /// Bytes to overwrite or verify in the current phase, over all targets.
    pub bytes_total: u64,
    /// Bytes done in the current phase.
    pub bytes_done: u64,
    /// Current rate in the phase.
    pub rate_bytes_per_second: f64,
    /// Estimated seconds left in the phase; 0 when unknown or done.
    pub eta_seconds: u64,
    /// When it was accepted.
    pub started_unix_ms: u64,
    /// When it finished (certified or failed).
    pub finished_unix_ms: Option<u64>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// Machine-readable reasons for `ERASED_WITH_EXCEPTIONS`.
    pub exceptions: Vec<String>,
    /// Per-target state.
    pub targets: Vec<TargetView>,
    /// The signed certificate, once certified.
    pub certificate: Option<SignedCertificate>,
}

impl OperationView {
    /// No more work will be done: reclaimable, failed, or certified with exceptions.
    pub fn is_terminal(&self) -> bool {
        match self.phase {
            Phase::Failed | Phase::Reclaimable => true,
            Phase::Certified => self.outcome != Some(Outcome::Erased),
            _ => false,
        }
    }

    pub(crate) fn placeholder(operation_id: &str) -> Self {
        OperationView {
            operation_id: operation_id.to_owned(),
            request_id: String::new(),
            phase: Phase::Requested,
            outcome: None,
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
        }
    }
}

/// One target within an operation.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetView {
    /// Name from config.
    pub name: String,
    /// Key backend.
    pub backend: String,
    /// Size in bytes (0 until pinned).
    pub size_bytes: u64,
    /// The target's phase.
    pub phase: Phase,
    /// Bytes done in that phase.
    pub bytes_done: u64,
}

/// One configured target as `jex-agent erase-plan` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTarget {
    /// Name.
    pub name: String,
    /// Key backend.
    pub backend: String,
    /// What would be overwritten.
    pub device: PathBuf,
    /// Size, when it could be read.
    pub size_bytes: Option<u64>,
    /// The identity that would be pinned, when it could be read.
    pub identity: Option<String>,
    /// Each check and its result.
    pub checks: Vec<PlanCheck>,
    /// Every check passed.
    pub ready: bool,
}

/// One safety check of a planned target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanCheck {
    /// What is checked.
    pub check: String,
    /// Whether it passed.
    pub passed: bool,
    /// Details, or what to fix.
    pub detail: String,
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

fn create_private_dir(path: &std::path::Path, mode: u32) -> Result<(), EraseError> {
    let state = |operation, source| EraseError::State {
        operation,
        path: path.to_path_buf(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| state("creating the state directory", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| state("setting the permissions of", e))
}

impl EraseService {
    /// Opens the state directory (creating it 0700), replays the journal and resumes any
    /// unfinished operation in the background.
    pub fn open(config: EraseConfig, deps: EraseDeps) -> Result<Self, EraseError> {
        Self::open_with_io(config, deps, Arc::new(DirectOpener))
    }

    pub(crate) fn open_with_io(
        config: EraseConfig,
        deps: EraseDeps,
        io: Arc<dyn IoOpener>,
    ) -> Result<Self, EraseError> {
        config.validate()?;
        let dirs = StateDirs {
            root: config.state_dir.clone(),
        };
        create_private_dir(&dirs.root, 0o700)?;
        create_private_dir(&dirs.keys(), 0o700)?;
        create_private_dir(&dirs.certificates(), 0o755)?;
        let lock_path = dirs.lock();
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|source| EraseError::State {
                operation: "opening the lock file",
                path: lock_path.clone(),
                source,
            })?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| EraseError::Locked {
                path: lock_path.clone(),
            })?;
        let (journal, records) = Journal::<Record>::open(&dirs.journal())?;
        let ops = engine::replay(&records);
        let mut live = BTreeMap::new();
        for op in &ops {
            let certificate = if op.certified.is_some() {
                match engine::load_certificate(&dirs.certificate_file(op.id())) {
                    Ok(certificate) => Some(certificate),
                    Err(err) => {
                        warn!(operation_id = %op.id(), error = %error_chain(&err), "stored certificate unreadable");
                        None
                    }
                }
            } else {
                None
            };
            live.insert(op.id().to_owned(), engine::live_for(op, certificate));
        }
        let unfinished: Vec<String> = ops
            .iter()
            .filter(|op| !op.is_terminal())
            .map(|op| op.id().to_owned())
            .collect();
        remove_orphan_keys(&dirs, &unfinished);
        let mut core = Core { journal, ops, live };
        let ids: Vec<String> = core.ops.iter().map(|op| op.id().to_owned()).collect();
        for id in &ids {
            engine::publish(&mut core, id);
        }
        let shared = Arc::new(Shared {
            config,
            deps,
            io,
            dirs,
            core: Mutex::new(core),
            _lock: lock,
        });
        if !unfinished.is_empty() {
            let worker = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("erase-resume".into())
                .spawn(move || {
                    for id in unfinished {
                        let span = info_span!("erase_operation", operation_id = %id);
                        engine::run_operation(&worker, &id, true, &span);
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
        let core = self.shared.lock_core();
        match core.ops.last() {
            None => Lifecycle::Serving,
            Some(op) => lifecycle_of(op),
        }
    }

    /// The id of the current or last operation.
    pub fn current_operation_id(&self) -> Option<String> {
        self.shared
            .lock_core()
            .ops
            .last()
            .map(|op| op.id().to_owned())
    }

    /// Starts erasing every configured target, or returns the operation already started for
    /// the same `request_id`. Returns at once; follow the operation with [`Self::watch`].
    pub fn terminate(&self, cmd: TerminateCommand) -> Result<OperationView, EraseError> {
        if cmd.request_id.trim().is_empty() {
            return Err(EraseError::EmptyRequestId);
        }
        let host_id = &self.shared.deps.host.host_id;
        if &cmd.host_id != host_id {
            return Err(EraseError::HostMismatch {
                expected: host_id.clone(),
                got: cmd.host_id,
            });
        }
        if cmd.nonce.len() < MIN_NONCE_LEN {
            return Err(EraseError::NonceTooShort {
                len: cmd.nonce.len(),
            });
        }
        let mut core = self.shared.lock_core();
        if let Some(op) = core
            .ops
            .iter()
            .find(|op| op.requested.request_id == cmd.request_id)
        {
            let id = op.id().to_owned();
            return view_of(&core, &id);
        }
        if let Some(running) = core.ops.iter().find(|op| !op.is_terminal()) {
            return Err(EraseError::AlreadyRunning {
                operation_id: running.id().to_owned(),
            });
        }
        if self.shared.config.targets.is_empty() {
            return Err(EraseError::NoTargets);
        }
        let id = engine::new_operation(
            &self.shared,
            &mut core,
            &cmd.request_id,
            &cmd.host_id,
            &cmd.nonce,
        )?;
        let view = view_of(&core, &id)?;
        drop(core);
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
            .spawn(move || engine::run_operation(&worker, &worker_id, false, &span));
        if let Err(source) = spawned {
            let err = EraseError::State {
                operation: "starting the erase worker thread for",
                path: self.shared.dirs.root.clone(),
                source,
            };
            // The operation is journaled: record why it cannot run.
            let record = Record::Failed {
                operation_id: id.clone(),
                phase: Phase::Requested,
                reason: error_chain(&err),
                finished_unix_ms: engine::now_unix_ms(),
            };
            self.shared.record(record)?;
            return Err(err);
        }
        Ok(view)
    }

    /// Follows an operation (`None`: the current or last one). The receiver always holds the
    /// latest view; the last change of a finished operation carries its outcome and certificate.
    pub fn watch(
        &self,
        operation_id: Option<&str>,
    ) -> Result<watch::Receiver<OperationView>, EraseError> {
        let core = self.shared.lock_core();
        let id = resolve(&core, operation_id)?;
        core.live
            .get(&id)
            .map(|live| live.sender.subscribe())
            .ok_or(EraseError::NotFound { operation_id: id })
    }

    /// The signed certificate of an operation (`None`: the current or last one).
    pub fn certificate(&self, operation_id: Option<&str>) -> Result<SignedCertificate, EraseError> {
        let core = self.shared.lock_core();
        let id = resolve(&core, operation_id)?;
        let op = core
            .ops
            .iter()
            .find(|op| op.id() == id)
            .ok_or_else(|| EraseError::NotFound {
                operation_id: id.clone(),
            })?;
        if op.certified.is_none() {
            return Err(EraseError::NotCertified {
                operation_id: id,
                phase: op.phase(),
            });
        }
        if let Some(certificate) = core.live.get(&id).and_then(|l| l.certificate.clone()) {
            return Ok(certificate);
        }
        engine::load_certificate(&self.shared.dirs.certificate_file(&id))
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

/// What a `Terminate` would destroy under `config`, computed without a running service and
/// without the journal (for `jex-agent erase-plan` when no agent runs). Touches nothing: devices
/// are opened read-only, key backends only check identity.
pub fn plan_offline(
    config: &EraseConfig,
    key_destroyer_factory: &KeyDestroyerFactory,
) -> Result<Vec<PlannedTarget>, EraseError> {
    config.validate()?;
    plan_targets(config, &DirectOpener, key_destroyer_factory)
}

fn plan_targets(
    config: &EraseConfig,
    io: &dyn IoOpener,
    factory: &KeyDestroyerFactory,
) -> Result<Vec<PlannedTarget>, EraseError> {
    let system = SystemDevices::probe().map_err(|source| EraseError::Target {
        target: "(mount table)".into(),
        source,
    })?;
    let mut planned = Vec::with_capacity(config.targets.len());
    for (index, target) in config.targets.iter().enumerate() {
        planned.push(plan_target(io, factory, index, target, &system));
    }
    Ok(planned)
}

fn plan_target(
    io: &dyn IoOpener,
    factory: &KeyDestroyerFactory,
    index: usize,
    target: &TargetConfig,
    system: &SystemDevices,
) -> PlannedTarget {
    let mut checks = Vec::new();
    let mut check = |name: &str, result: Result<String, String>| {
        let passed = result.is_ok();
        checks.push(PlanCheck {
            check: name.to_owned(),
            passed,
            detail: result.unwrap_or_else(|e| e),
        });
        passed
    };
    let refusal = system
        .refusal_for_path(&target.device)
        .map_err(|e| error_chain(&e));
    let refused = !matches!(refusal, Ok(None));
    check(
        "not a system or mounted device",
        match refusal {
            Ok(None) => Ok("not the root, boot or a mounted device".into()),
            Ok(Some(reason)) => Err(reason),
            Err(err) => Err(err),
        },
    );
    if refused {
        // Never opened, not even read-only.
        return PlannedTarget {
            name: target.name.clone(),
            backend: target.backend.as_str().to_owned(),
            device: target.device.clone(),
            size_bytes: None,
            identity: None,
            checks,
            ready: false,
        };
    }
    let opened = io.open(index, &target.device, Access::Read);
    let (size, identity) = match &opened {
        Ok(io) => match io.open_identity() {
            Ok(identity) => (Some(identity.size_bytes), Some(identity)),
            Err(_) => (Some(io.size()), None),
        },
        Err(_) => (None, None),
    };
    check(
        "direct I/O",
        opened
            .as_ref()
            .map(|io| format!("opened with direct I/O, alignment {} bytes", io.io_align()))
            .map_err(|e| error_chain(e)),
    );
    if let Ok(io) = &opened
        && let Some(fs) = io.copy_on_write_fs()
    {
        check(
            "overwrite in place",
            Err(format!(
                "file on a copy-on-write filesystem ({fs}): the certificate would be ERASED_WITH_EXCEPTIONS"
            )),
        );
    }
    let keys = (factory)(target).and_then(|destroyer| {
        destroyer
            .check_identity()
            .map(|()| format!("{} pinned: {}", destroyer.backend(), target.pin()))
            .map_err(|source| EraseError::Keys {
                target: target.name.clone(),
                source,
            })
    });
    check("key backend identity", keys.map_err(|e| error_chain(&e)));
    let ready = checks.iter().all(|c| c.passed);
    PlannedTarget {
        name: target.name.clone(),
        backend: target.backend.as_str().to_owned(),
        device: target.device.clone(),
        size_bytes: size,
        identity: identity.map(|i| format!("{}; {}", target.pin(), i.fingerprint())),
        checks,
        ready,
    }
}

fn lifecycle_of(op: &OperationState) -> Lifecycle {
    match op.phase() {
        Phase::Reclaimable => Lifecycle::Reclaimable,
        Phase::Failed => Lifecycle::EraseFailed,
        Phase::Certified if op.outcome() != Some(Outcome::Erased) => Lifecycle::EraseFailed,
        _ => Lifecycle::Erasing,
    }
}

fn resolve(core: &Core, operation_id: Option<&str>) -> Result<String, EraseError> {
    match operation_id.filter(|id| !id.is_empty()) {
        Some(id) => core
            .ops
            .iter()
            .find(|op| op.id() == id)
            .map(|op| op.id().to_owned())
            .ok_or_else(|| EraseError::NotFound {
                operation_id: id.to_owned(),
            }),
        None => core
            .ops
            .last()
            .map(|op| op.id().to_owned())
            .ok_or_else(|| EraseError::NotFound {
                operation_id: String::new(),
            }),
    }
}

fn view_of(core: &Core, operation_id: &str) -> Result<OperationView, EraseError> {
    let op = core.ops.iter().find(|op| op.id() == operation_id);
    let live = core.live.get(operation_id);
    match (op, live) {
        (Some(op), Some(live)) => Ok(engine::build_view(op, live)),
        _ => Err(EraseError::NotFound {
            operation_id: operation_id.to_owned(),
        }),
    }
}

/// Removes key files of operations that are not running: their keys are either public (in a
/// certificate) or belong to a request that was never journaled.
fn remove_orphan_keys(dirs: &StateDirs, unfinished: &[String]) {
    let Ok(entries) = std::fs::read_dir(dirs.keys()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let keep = path
            .file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|stem| unfinished.iter().any(|id| id == stem));
        if !keep && let Err(err) = std::fs::remove_file(&path) {
            warn!(path = %path.display(), error = %err, "removing a stale pattern key file failed");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn outcome_and_phase_spellings_match_the_certificate_and_logs() {
        assert_eq!(Outcome::Erased.as_str(), "ERASED");
        assert_eq!(
            serde_json::to_string(&Outcome::ErasedWithExceptions).unwrap(),
            "\"ERASED_WITH_EXCEPTIONS\""
        );
        assert_eq!(Phase::KeysDestroyed.to_string(), "keys_destroyed");
        assert_eq!(
            serde_json::to_string(&Phase::KeysDestroyed).unwrap(),
            "\"keys_destroyed\""
        );
    }
}
