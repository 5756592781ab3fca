//! The erase state machine: journal records, replay, and the steps of an operation.
//!
//! State directory (created 0700):
//!
//! ```text
//! journal.log                   every Record, append-only, fsync'd (see crate::journal)
//! lock                          flock'd by the running agent
//! keys/<operation_id>.key       the pattern key, hex, 0600: secret until the certificate is
//!                               signed, needed to resume an overwrite; deleted when the
//!                               operation ends
//! certificates/<operation_id>.json   SignedCertificate as JSON, 0644, kept forever
//! ```
//!
//! Records of one operation, in order (each durable before the step it announces runs):
//!
//! | record | written | on resume |
//! |---|---|---|
//! | `requested` | by `terminate`, after the key file | pin the targets |
//! | `targets_pinned` | identities and media facts probed | compare identities |
//! | `keys_snapshot` (per target) | before `destroy()` | reuse it, never re-snapshot |
//! | `keys_destroyed` | every target's destruction verified | start or continue the overwrite |
//! | `overwriting {target, offset}` | before the first write of a target, then after each durable flush | continue from `offset` |
//! | `verifying` | before the first read-back | verify again, in full |
//! | `certified` | after the certificate file is durable | mark reclaimable if `ERASED` |
//! | `reclaimable` | last | nothing |
//! | `failed` | from any step | nothing: terminal, never reclaimable |

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::config::{EraseConfig, TargetConfig};
use super::keys::{KeyDestruction, KeyState};
use super::overwrite::{OverwriteSettings, overwrite_target};
use super::pattern::{PATTERN_ALGORITHM, Pattern, PatternKey};
use super::service::{EraseDeps, OperationView, Outcome, Phase, TargetView};
use super::verify::{SamplePlan, SampleSeed, SampleSettings, sample_plan, verify_target};
use super::{EraseError, error_chain};
use crate::journal::{self, Journal};
use jex_attest::{
    CertificateDocument, DOCUMENT_SCHEMA, PatternRecord, SignedCertificate, TargetRecord,
    VerificationRecord,
};
use jex_platform::blockdev::{
    Access, BlockDevError, DirectTarget, MediaInfo, SystemDevices, TargetIdentity, TargetIo,
    check_identity,
};

/// The journal file in the state directory.
pub const JOURNAL_FILE: &str = "journal.log";
/// The lock file in the state directory.
pub const LOCK_FILE: &str = "lock";
/// Directory of pattern key files.
pub const KEYS_DIR: &str = "keys";
/// Directory of signed certificates.
pub const CERTIFICATES_DIR: &str = "certificates";
/// Standards written into certificates.
pub const STANDARD: &str = "NIST SP 800-88 Rev. 2; IEEE 2883-2022";
/// NIST method type.
pub const METHOD_TYPE: &str = "Purge";
/// NIST method used.
pub const METHOD_USED: &str = "Crypto Erase + Overwrite";

/// One journal record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    /// `Terminate` accepted.
    Requested(RequestedRecord),
    /// Target identities probed and pinned.
    TargetsPinned {
        /// The operation.
        operation_id: String,
        /// One per target, in config order.
        targets: Vec<PinnedTarget>,
    },
    /// A target's key state, observed just before destruction.
    KeysSnapshot {
        /// The operation.
        operation_id: String,
        /// Target name.
        target: String,
        /// What the backend observed.
        state: KeyState,
    },
    /// Every target's keys destroyed and checked.
    KeysDestroyed {
        /// The operation.
        operation_id: String,
        /// One per target, in config order.
        destructions: Vec<KeyDestruction>,
    },
    /// Overwrite progress: `target` (index) is durable up to `offset`.
    Overwriting {
        /// The operation.
        operation_id: String,
        /// Target index in config order.
        target: u32,
        /// Bytes durable.
        offset: u64,
    },
    /// Verification (re)started.
    Verifying {
        /// The operation.
        operation_id: String,
    },
    /// The certificate is signed and stored.
    Certified {
        /// The operation.
        operation_id: String,
        /// `ERASED` or `ERASED_WITH_EXCEPTIONS`.
        outcome: Outcome,
        /// SHA-256 of the certificate's `document_json`.
        certificate_sha256: String,
        /// When verification finished.
        finished_unix_ms: u64,
    },
    /// The host may be reclaimed.
    Reclaimable {
        /// The operation.
        operation_id: String,
    },
    /// The operation failed; terminal.
    Failed {
        /// The operation.
        operation_id: String,
        /// The phase it failed in.
        phase: Phase,
        /// Why.
        reason: String,
        /// When.
        finished_unix_ms: u64,
    },
}

impl Record {
    /// The operation a record belongs to.
    pub fn operation_id(&self) -> &str {
        match self {
            Record::Requested(r) => &r.operation_id,
            Record::TargetsPinned { operation_id, .. }
            | Record::KeysSnapshot { operation_id, .. }
            | Record::KeysDestroyed { operation_id, .. }
            | Record::Overwriting { operation_id, .. }
            | Record::Verifying { operation_id }
            | Record::Certified { operation_id, .. }
            | Record::Reclaimable { operation_id }
            | Record::Failed { operation_id, .. } => operation_id,
        }
    }
}

/// The accepted request, with everything needed to run or resume it even if the config changes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RequestedRecord {
    /// New UUID.
    pub operation_id: String,
    /// The controller's idempotency key.
    pub request_id: String,
    /// The host id the controller named (equal to this host's).
    pub host_id: String,
    /// The controller's nonce, hex.
    pub nonce_hex: String,
    /// When accepted.
    pub started_unix_ms: u64,
    /// SHA-256 of the pattern key (the key itself is in the key file).
    pub pattern_key_sha256: String,
    /// SHA-256 of this host's previous certificate, for the chain.
    pub previous_certificate_sha256: Option<String>,
    /// I/O and verification settings in force.
    pub settings: OperationSettings,
    /// The targets, as configured when accepted.
    pub targets: Vec<TargetConfig>,
}

/// Settings snapshotted into the journal so that a resume uses the same ones.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OperationSettings {
    /// Overwrite write size.
    pub chunk_bytes: u64,
    /// Overwrite checkpoint distance.
    pub checkpoint_bytes: u64,
    /// Verification strata.
    pub verify_strata: u64,
    /// Verification locations per stratum.
    pub verify_locations_per_stratum: u32,
    /// Verification coverage, percent.
    pub verify_coverage_percent: Option<f64>,
    /// Verification block size.
    pub verify_block_bytes: u64,
}

impl OperationSettings {
    fn from_config(config: &EraseConfig) -> Self {
        OperationSettings {
            chunk_bytes: config.chunk_bytes,
            checkpoint_bytes: config.checkpoint_bytes,
            verify_strata: config.verify_strata,
            verify_locations_per_stratum: config.verify_locations_per_stratum,
            verify_coverage_percent: config.verify_coverage_percent,
            verify_block_bytes: config.verify_block_bytes,
        }
    }

    fn sample(&self) -> SampleSettings {
        SampleSettings {
            strata: self.verify_strata,
            locations_per_stratum: self.verify_locations_per_stratum,
            coverage_percent: self.verify_coverage_percent,
            block_bytes: self.verify_block_bytes,
        }
    }
}

/// A target's identity and facts, pinned when the operation starts.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PinnedTarget {
    /// Target name.
    pub name: String,
    /// Identity re-checked before every destructive step.
    pub identity: TargetIdentity,
    /// Direct-I/O alignment.
    pub io_align: u64,
    /// Media facts for the certificate.
    pub media: MediaInfo,
    /// Set when a file target lives on a copy-on-write filesystem (named here): the overwrite
    /// then may not reach the blocks that held the old data.
    pub copy_on_write_fs: Option<String>,
}

/// An operation as rebuilt from its records.
#[derive(Debug, Clone)]
pub(crate) struct OperationState {
    pub(crate) requested: RequestedRecord,
    pub(crate) pinned: Option<Vec<PinnedTarget>>,
    pub(crate) key_snapshots: BTreeMap<String, KeyState>,
    pub(crate) destructions: Option<Vec<KeyDestruction>>,
    pub(crate) overwrite: Option<(u32, u64)>,
    pub(crate) verifying: bool,
    pub(crate) certified: Option<(Outcome, String, u64)>,
    pub(crate) reclaimable: bool,
    pub(crate) failed: Option<(Phase, String, u64)>,
}

impl OperationState {
    fn new(requested: RequestedRecord) -> Self {
        OperationState {
            requested,
            pinned: None,
            key_snapshots: BTreeMap::new(),
            destructions: None,
            overwrite: None,
            verifying: false,
            certified: None,
            reclaimable: false,
            failed: None,
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.requested.operation_id
    }

    /// The state-machine phase.
    pub(crate) fn phase(&self) -> Phase {
        if self.failed.is_some() {
            Phase::Failed
        } else if self.reclaimable {
            Phase::Reclaimable
        } else if self.certified.is_some() {
            Phase::Certified
        } else if self.verifying {
            Phase::Verifying
        } else if self.overwrite.is_some() {
            Phase::Overwriting
        } else if self.destructions.is_some() {
            Phase::KeysDestroyed
        } else {
            Phase::Requested
        }
    }

    /// No more work will be done on this operation.
    pub(crate) fn is_terminal(&self) -> bool {
        match self.phase() {
            Phase::Failed | Phase::Reclaimable => true,
            Phase::Certified => self.outcome() != Some(Outcome::Erased),
            _ => false,
        }
    }

    pub(crate) fn outcome(&self) -> Option<Outcome> {
        if self.failed.is_some() {
            Some(Outcome::Failed)
        } else {
            self.certified.as_ref().map(|(outcome, _, _)| *outcome)
        }
    }

    /// Applies a record of this operation. Records that make no sense in the current state
    /// (which only a damaged or hand-edited journal contains) are ignored with a warning.
    fn apply(&mut self, record: &Record) {
        if self.failed.is_some() {
            warn!(operation_id = %self.id(), "journal record after failure ignored");
            return;
        }
        match record {
            Record::Requested(_) => {
                warn!(operation_id = %self.id(), "duplicate requested record ignored")
            }
            Record::TargetsPinned { targets, .. } => self.pinned = Some(targets.clone()),
            Record::KeysSnapshot { target, state, .. } => {
                self.key_snapshots.insert(target.clone(), state.clone());
            }
            Record::KeysDestroyed { destructions, .. } => {
                self.destructions = Some(destructions.clone())
            }
            Record::Overwriting { target, offset, .. } => self.overwrite = Some((*target, *offset)),
            Record::Verifying { .. } => self.verifying = true,
            Record::Certified {
                outcome,
                certificate_sha256,
                finished_unix_ms,
                ..
            } => self.certified = Some((*outcome, certificate_sha256.clone(), *finished_unix_ms)),
            Record::Reclaimable { .. } => {
                if self.certified.as_ref().map(|c| c.0) == Some(Outcome::Erased) {
                    self.reclaimable = true;
                } else {
                    warn!(operation_id = %self.id(), "reclaimable record without an ERASED certificate ignored");
                }
            }
            Record::Failed {
                phase,
                reason,
                finished_unix_ms,
                ..
            } => self.failed = Some((*phase, reason.clone(), *finished_unix_ms)),
        }
    }
}

/// Rebuilds every operation, in the order they were requested.
pub(crate) fn replay(records: &[Record]) -> Vec<OperationState> {
    let mut ops: Vec<OperationState> = Vec::new();
    for record in records {
        if let Record::Requested(requested) = record
            && ops.iter().all(|op| op.id() != requested.operation_id)
        {
            ops.push(OperationState::new(requested.clone()));
            continue;
        }
        match ops.iter_mut().find(|op| op.id() == record.operation_id()) {
            Some(op) => op.apply(record),
            None => warn!(
                operation_id = %record.operation_id(),
                "journal record of an unknown operation ignored"
            ),
        }
    }
    ops
}

/// Opens targets for the engine. The real one opens [`DirectTarget`]s; tests wrap it to inject
/// I/O faults. Not exposed outside the crate.
pub(crate) trait IoOpener: Send + Sync {
    /// Opens target number `index` at `path`.
    fn open(
        &self,
        index: usize,
        path: &Path,
        access: Access,
    ) -> Result<Box<dyn TargetIo>, BlockDevError>;
}

/// Direct I/O on the real path.
pub(crate) struct DirectOpener;

impl IoOpener for DirectOpener {
    fn open(
        &self,
        _index: usize,
        path: &Path,
        access: Access,
    ) -> Result<Box<dyn TargetIo>, BlockDevError> {
        Ok(Box::new(DirectTarget::open(path, access)?))
    }
}

/// Live progress of a running phase, and the published view.
pub(crate) struct Live {
    pub(crate) sender: watch::Sender<OperationView>,
    pub(crate) bytes_total: u64,
    pub(crate) bytes_done: u64,
    pub(crate) target_done: Vec<u64>,
    pub(crate) phase_started: Instant,
    pub(crate) phase_start_bytes: u64,
    pub(crate) last_publish: Instant,
    pub(crate) certificate: Option<SignedCertificate>,
}

/// Journal plus in-memory state, under one lock (journal first, then the views).
pub(crate) struct Core {
    pub(crate) journal: Journal<Record>,
    pub(crate) ops: Vec<OperationState>,
    pub(crate) live: BTreeMap<String, Live>,
}

/// Paths of the state directory.
#[derive(Debug, Clone)]
pub(crate) struct StateDirs {
    pub(crate) root: PathBuf,
}

impl StateDirs {
    pub(crate) fn journal(&self) -> PathBuf {
        self.root.join(JOURNAL_FILE)
    }
    pub(crate) fn lock(&self) -> PathBuf {
        self.root.join(LOCK_FILE)
    }
    pub(crate) fn keys(&self) -> PathBuf {
        self.root.join(KEYS_DIR)
    }
    pub(crate) fn key_file(&self, operation_id: &str) -> PathBuf {
        self.keys().join(format!("{operation_id}.key"))
    }
    pub(crate) fn certificates(&self) -> PathBuf {
        self.root.join(CERTIFICATES_DIR)
    }
    pub(crate) fn certificate_file(&self, operation_id: &str) -> PathBuf {
        self.certificates().join(format!("{operation_id}.json"))
    }
}

/// Everything the worker threads and the service share.
pub(crate) struct Shared {
    pub(crate) config: EraseConfig,
    pub(crate) deps: EraseDeps,
    pub(crate) io: Arc<dyn IoOpener>,
    pub(crate) dirs: StateDirs,
    pub(crate) core: Mutex<Core>,
    pub(crate) _lock: nix::fcntl::Flock<File>,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rfc3339(unix_ms: u64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Writes a new pattern key file (0600, created exclusively) and syncs it and its directory.
pub(crate) fn write_key_file(path: &Path, key: &PatternKey) -> Result<(), EraseError> {
    let state = |operation, source| EraseError::State {
        operation,
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| state("creating the pattern key file", e))?;
    file.write_all(key.reveal_hex().as_bytes())
        .map_err(|e| state("writing the pattern key file", e))?;
    file.sync_all()
        .map_err(|e| state("syncing the pattern key file", e))?;
    journal::sync_parent_dir(path).map_err(|e| state("syncing the directory of", e))
}

fn read_key_file(path: &Path, commitment: &str) -> Result<PatternKey, EraseError> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
        EraseError::State {
            operation: "reading the pattern key file",
            path: path.to_path_buf(),
            source,
        }
    })?);
    let key = PatternKey::from_hex(&text).map_err(|_| EraseError::PatternKeyMismatch {
        path: path.to_path_buf(),
    })?;
    if key.commitment() != commitment {
        return Err(EraseError::PatternKeyMismatch {
            path: path.to_path_buf(),
        });
    }
    Ok(key)
}

/// Publishing more often than this is pointless for watchers.
const PUBLISH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

impl Shared {
    pub(crate) fn lock_core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock leaves the journal itself consistent (each append is
        // all-or-nothing on disk), so the state is still usable.
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Journals `record` durably, then applies it and publishes the new view.
    pub(crate) fn record(&self, record: Record) -> Result<(), EraseError> {
        let mut core = self.lock_core();
        core.journal.append(&record)?;
        let id = record.operation_id().to_owned();
        if let Some(op) = core.ops.iter_mut().find(|op| op.id() == id) {
            op.apply(&record);
        }
        publish(&mut core, &id);
        Ok(())
    }

    fn snapshot(&self, operation_id: &str) -> Result<OperationState, EraseError> {
        self.lock_core()
            .ops
            .iter()
            .find(|op| op.id() == operation_id)
            .cloned()
            .ok_or_else(|| EraseError::NotFound {
                operation_id: operation_id.to_owned(),
            })
    }

    /// Starts a progress phase with `total` bytes, of which `done` (and per target
    /// `target_done`) are already done.
    fn start_progress(&self, operation_id: &str, total: u64, target_done: Vec<u64>) {
        let mut core = self.lock_core();
        if let Some(live) = core.live.get_mut(operation_id) {
            let done = target_done.iter().sum();
            live.bytes_total = total;
            live.bytes_done = done;
            live.target_done = target_done;
            live.phase_started = Instant::now();
            live.phase_start_bytes = done;
        }
        publish(&mut core, operation_id);
    }

    /// Records that target `index` has `done` bytes done in the current phase.
    fn progress(&self, operation_id: &str, index: usize, done: u64) {
        let mut core = self.lock_core();
        let Some(live) = core.live.get_mut(operation_id) else {
            return;
        };
        if let Some(slot) = live.target_done.get_mut(index) {
            *slot = done;
        }
        live.bytes_done = live.target_done.iter().sum();
        let finished = live.bytes_done >= live.bytes_total;
        if finished || live.last_publish.elapsed() >= PUBLISH_INTERVAL {
            publish(&mut core, operation_id);
        }
    }

    fn set_certificate(&self, operation_id: &str, certificate: SignedCertificate) {
        let mut core = self.lock_core();
        if let Some(live) = core.live.get_mut(operation_id) {
            live.certificate = Some(certificate);
        }
    }

    fn open_target(
        &self,
        index: usize,
        target: &TargetConfig,
        access: Access,
    ) -> Result<Box<dyn TargetIo>, EraseError> {
        self.io
            .open(index, &target.device, access)
            .map_err(|source| match source {
                BlockDevError::IdentityChanged { .. } => EraseError::Identity {
                    target: target.name.clone(),
                    source,
                },
                source => EraseError::Target {
                    target: target.name.clone(),
                    source,
                },
            })
    }
}

/// Builds the view of operation `operation_id` and sends it to watchers.
pub(crate) fn publish(core: &mut Core, operation_id: &str) {
    let Some(op) = core.ops.iter().find(|op| op.id() == operation_id) else {
        return;
    };
    let Some(live) = core.live.get_mut(operation_id) else {
        return;
    };
    let view = build_view(op, live);
    live.last_publish = Instant::now();
    live.sender.send_replace(view);
}

/// The view of an operation from its state and live progress.
pub(crate) fn build_view(op: &OperationState, live: &Live) -> OperationView {
    let phase = op.phase();
    let running = !op.is_terminal() && phase != Phase::Certified;
    let elapsed = live.phase_started.elapsed().as_secs_f64();
    let moved = live.bytes_done.saturating_sub(live.phase_start_bytes);
    let rate = if running && elapsed > 0.0 && moved > 0 {
        moved as f64 / elapsed
    } else {
        0.0
    };
    let eta = if rate > 0.0 {
        (live.bytes_total.saturating_sub(live.bytes_done) as f64 / rate).ceil() as u64
    } else {
        0
    };
    let current_target = op.overwrite.map(|(t, _)| t as usize);
    let targets = op
        .requested
        .targets
        .iter()
        .enumerate()
        .map(|(index, target)| {
            let size = op
                .pinned
                .as_ref()
                .and_then(|p| p.get(index))
                .map(|p| p.identity.size_bytes)
                .unwrap_or(0);
            let target_phase = match phase {
                Phase::Overwriting if current_target.is_some_and(|c| index > c) => {
                    Phase::KeysDestroyed
                }
                other => other,
            };
            TargetView {
                name: target.name.clone(),
                backend: target.backend.as_str().to_owned(),
                size_bytes: size,
                phase: target_phase,
                bytes_done: live.target_done.get(index).copied().unwrap_or(0),
            }
        })
        .collect();
    OperationView {
        operation_id: op.id().to_owned(),
        request_id: op.requested.request_id.clone(),
        phase,
        outcome: op.outcome(),
        bytes_total: live.bytes_total,
        bytes_done: live.bytes_done,
        rate_bytes_per_second: rate,
        eta_seconds: eta,
        started_unix_ms: op.requested.started_unix_ms,
        finished_unix_ms: op
            .failed
            .as_ref()
            .map(|f| f.2)
            .or(op.certified.as_ref().map(|c| c.2)),
        failure_reason: op.failed.as_ref().map(|f| f.1.clone()),
        exceptions: certificate_exceptions(live.certificate.as_ref()),
        targets,
        certificate: live.certificate.clone(),
    }
}

fn certificate_exceptions(certificate: Option<&SignedCertificate>) -> Vec<String> {
    certificate
        .and_then(|c| serde_json::from_slice::<CertificateDocument>(&c.document_json).ok())
        .map(|d| d.exceptions)
        .unwrap_or_default()
}

/// Builds the [`Live`] state of an operation loaded from the journal.
pub(crate) fn live_for(op: &OperationState, certificate: Option<SignedCertificate>) -> Live {
    let sizes: Vec<u64> = op
        .pinned
        .as_ref()
        .map(|p| p.iter().map(|t| t.identity.size_bytes).collect())
        .unwrap_or_else(|| vec![0; op.requested.targets.len()]);
    let target_done: Vec<u64> = match op.overwrite {
        Some((current, offset)) if !op.verifying => sizes
            .iter()
            .enumerate()
            .map(|(i, size)| match (i as u32).cmp(&current) {
                std::cmp::Ordering::Less => *size,
                std::cmp::Ordering::Equal => offset,
                std::cmp::Ordering::Greater => 0,
            })
            .collect(),
        _ => vec![0; sizes.len()],
    };
    let bytes_total = if op.overwrite.is_some() && !op.verifying {
        sizes.iter().sum()
    } else {
        0
    };
    let done = target_done.iter().sum();
    let placeholder = OperationView::placeholder(op.id());
    let (sender, _) = watch::channel(placeholder);
    let now = Instant::now();
    Live {
        sender,
        bytes_total,
        bytes_done: done,
        target_done,
        phase_started: now,
        phase_start_bytes: done,
        last_publish: now,
        certificate,
    }
}

/// Creates a new operation: key file, then the durable `requested` record.
pub(crate) fn new_operation(
    shared: &Shared,
    core: &mut Core,
    request_id: &str,
    host_id: &str,
    nonce: &[u8],
) -> Result<String, EraseError> {
    let operation_id = uuid::Uuid::new_v4().to_string();
    let key = PatternKey::generate(&ring::rand::SystemRandom::new())?;
    let key_path = shared.dirs.key_file(&operation_id);
    write_key_file(&key_path, &key)?;
    let previous = core
        .ops
        .iter()
        .rev()
        .find_map(|op| op.certified.as_ref().map(|c| c.1.clone()));
    let requested = RequestedRecord {
        operation_id: operation_id.clone(),
        request_id: request_id.to_owned(),
        host_id: host_id.to_owned(),
        nonce_hex: hex::encode(nonce),
        started_unix_ms: now_unix_ms(),
        pattern_key_sha256: key.commitment(),
        previous_certificate_sha256: previous,
        settings: OperationSettings::from_config(&shared.config),
        targets: shared.config.targets.clone(),
    };
    let record = Record::Requested(requested.clone());
    if let Err(err) = core.journal.append(&record) {
        // Nothing refers to the key yet; a leftover file would be removed on the next start.
        let _ = std::fs::remove_file(&key_path);
        return Err(err.into());
    }
    let op = OperationState::new(requested);
    let live = live_for(&op, None);
    core.ops.push(op);
    core.live.insert(operation_id.clone(), live);
    publish(core, &operation_id);
    Ok(operation_id)
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

fn fail(shared: &Shared, operation_id: &str, err: &EraseError) {
    let reason = error_chain(err);
    let phase = shared
        .snapshot(operation_id)
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
        let mut core = shared.lock_core();
        if let Some(op) = core.ops.iter_mut().find(|op| op.id() == operation_id) {
            op.apply(&record);
        }
        publish(&mut core, operation_id);
        return;
    }
    remove_key_file(shared, operation_id);
}

fn remove_key_file(shared: &Shared, operation_id: &str) {
    let path = shared.dirs.key_file(operation_id);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            // Best effort: the key is public (certified) or useless (failed) by now.
            let _ = journal::sync_parent_dir(&path);
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            warn!(path = %path.display(), error = %err, "removing the pattern key file failed")
        }
    }
}

fn run_steps(shared: &Arc<Shared>, operation_id: &str, resumed: bool) -> Result<(), EraseError> {
    let op = shared.snapshot(operation_id)?;
    if op.is_terminal() {
        return Ok(());
    }
    if resumed {
        info!(phase = %op.phase(), "resuming erase operation");
    }
    let outcome = match &op.certified {
        Some((outcome, _, _)) => *outcome,
        None => {
            let requested = &op.requested;
            let key = read_key_file(
                &shared.dirs.key_file(operation_id),
                &requested.pattern_key_sha256,
            )?;
            let pattern = Pattern::new(key);
            let pinned = match &op.pinned {
                Some(pinned) => pinned.clone(),
                None => {
                    let pinned = pin_targets(shared, requested)?;
                    shared.record(Record::TargetsPinned {
                        operation_id: operation_id.to_owned(),
                        targets: pinned.clone(),
                    })?;
                    pinned
                }
            };
            let destructions = match &op.destructions {
                Some(destructions) => destructions.clone(),
                None => destroy_keys(shared, &op, &pinned)?,
            };
            if !op.verifying {
                overwrite_all(shared, &op, &pinned, &pattern)?;
            }
            let verification = verify_all(shared, &op, &pinned, &pattern, resumed)?;
            certify(shared, &op, &pinned, &destructions, &pattern, verification)?
        }
    };
    if outcome == Outcome::Erased {
        shared.record(Record::Reclaimable {
            operation_id: operation_id.to_owned(),
        })?;
        info!("host reclaimable");
    } else {
        warn!(
            outcome = outcome.as_str(),
            "erase certified with exceptions: host not reclaimable"
        );
    }
    remove_key_file(shared, operation_id);
    Ok(())
}

fn pin_targets(
    shared: &Shared,
    requested: &RequestedRecord,
) -> Result<Vec<PinnedTarget>, EraseError> {
    let system = SystemDevices::probe().map_err(|source| EraseError::Target {
        target: "(mount table)".into(),
        source,
    })?;
    let mut pinned = Vec::with_capacity(requested.targets.len());
    for (index, target) in requested.targets.iter().enumerate() {
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
    op: &OperationState,
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
        if destroyer.backend() != target.backend.as_str() {
            return Err(EraseError::BackendMismatch {
                target: target.name.clone(),
                expected: target.backend.as_str().to_owned(),
                got: destroyer.backend().to_owned(),
            });
        }
        let evidence = match op.key_snapshots.get(&target.name) {
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
    op: &OperationState,
    pinned: &[PinnedTarget],
    pattern: &Pattern,
) -> Result<(), EraseError> {
    let operation_id = op.id();
    let sizes: Vec<u64> = pinned.iter().map(|p| p.identity.size_bytes).collect();
    let (first, mut start) = match op.overwrite {
        Some((target, offset)) => (target as usize, offset),
        None => {
            shared.record(Record::Overwriting {
                operation_id: operation_id.to_owned(),
                target: 0,
                offset: 0,
            })?;
            (0, 0)
        }
    };
    let done: Vec<u64> = sizes
        .iter()
        .enumerate()
        .map(|(i, size)| match i.cmp(&first) {
            std::cmp::Ordering::Less => *size,
            std::cmp::Ordering::Equal => start,
            std::cmp::Ordering::Greater => 0,
        })
        .collect();
    shared.start_progress(operation_id, sizes.iter().sum(), done);
    let settings = OverwriteSettings {
        chunk_bytes: op.requested.settings.chunk_bytes,
        checkpoint_bytes: op.requested.settings.checkpoint_bytes,
    };
    for index in first..pinned.len() {
        let target = &op.requested.targets[index];
        if index > first {
            shared.record(Record::Overwriting {
                operation_id: operation_id.to_owned(),
                target: index as u32,
                offset: 0,
            })?;
            start = 0;
        }
        let mut io = shared.open_target(index, target, Access::ReadWrite)?;
        info!(target = %target.name, offset = start, bytes = sizes[index], "overwriting target");
        let started = Instant::now();
        overwrite_target(
            &target.name,
            io.as_mut(),
            &pinned[index].identity,
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
        info!(target = %target.name, bytes = sizes[index] - start, elapsed_ms, "target overwritten");
    }
    Ok(())
}

/// What verification found, for the certificate.
struct Verification {
    plans: Vec<SamplePlan>,
    resumed: bool,
}

fn verify_all(
    shared: &Shared,
    op: &OperationState,
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
    let settings = op.requested.settings.sample();
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
    for (index, plan) in plans.iter().enumerate() {
        let target = &op.requested.targets[index];
        let mut io = shared.open_target(index, target, Access::Read)?;
        let started = Instant::now();
        let report = verify_target(
            &target.name,
            io.as_mut(),
            &pinned[index].identity,
            pattern,
            plan,
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

fn certify(
    shared: &Shared,
    op: &OperationState,
    pinned: &[PinnedTarget],
    destructions: &[KeyDestruction],
    pattern: &Pattern,
    verification: Verification,
) -> Result<Outcome, EraseError> {
    let operation_id = op.id();
    let requested = &op.requested;
    let finished_unix_ms = now_unix_ms();
    let exceptions: Vec<String> = pinned
        .iter()
        .filter_map(|p| {
            p.copy_on_write_fs.as_ref().map(|fs| {
                format!(
                    "overwrite-not-in-place:{}: file on a copy-on-write filesystem ({fs})",
                    p.name
                )
            })
        })
        .collect();
    let outcome = if exceptions.is_empty() {
        Outcome::Erased
    } else {
        Outcome::ErasedWithExceptions
    };
    let targets: Vec<TargetRecord> = requested
        .targets
        .iter()
        .zip(pinned)
        .zip(destructions)
        .zip(&verification.plans)
        .map(|(((target, pin), destruction), plan)| TargetRecord {
            name: target.name.clone(),
            backend: target.backend.as_str().to_owned(),
            media_make: pin.media.make.clone(),
            media_model: pin.media.model.clone(),
            media_serial: pin.media.serial.clone(),
            media_type: pin.identity.kind.media_type().to_owned(),
            device: target.device.display().to_string(),
            identity: format!("{}; {}", target.pin(), pin.identity.fingerprint()),
            size_bytes: pin.identity.size_bytes,
            key_destruction: destruction.clone(),
            overwrite_passes: 1,
            verified_blocks: plan.blocks,
            mismatched_blocks: 0,
        })
        .collect();
    let total_bytes: u64 = pinned.iter().map(|p| p.identity.size_bytes).sum();
    let sampled_bytes: u64 = verification.plans.iter().map(|p| p.bytes).sum();
    let all_full = verification.plans.iter().all(|p| p.full);
    let settings = &requested.settings;
    let document = CertificateDocument {
        schema: DOCUMENT_SCHEMA.to_owned(),
        operation_id: operation_id.to_owned(),
        request_id: requested.request_id.clone(),
        host: shared.deps.host.clone(),
        controller_nonce_hex: requested.nonce_hex.clone(),
        standard: STANDARD.to_owned(),
        method_type: METHOD_TYPE.to_owned(),
        method_used: METHOD_USED.to_owned(),
        tool: format!("jex-agent {}", crate::AGENT_VERSION),
        targets,
        verification: VerificationRecord {
            method: if all_full {
                "full read-back (direct I/O) compared with the regenerated pattern".to_owned()
            } else {
                "sampled read-back (direct I/O) at nonce-derived locations compared with the regenerated pattern".to_owned()
            },
            strata: settings.verify_strata,
            locations_per_stratum: settings.verify_locations_per_stratum,
            block_size: settings.verify_block_bytes,
            sampled_blocks: verification.plans.iter().map(|p| p.blocks).sum(),
            coverage_percent: if total_bytes == 0 {
                0.0
            } else {
                sampled_bytes as f64 * 100.0 / total_bytes as f64
            },
            mismatched_blocks: 0,
            resumed: verification.resumed,
        },
        pattern: PatternRecord {
            algorithm: PATTERN_ALGORITHM.to_owned(),
            key_hex: pattern.key().reveal_hex().to_string(),
        },
        outcome: outcome.as_str().to_owned(),
        exceptions,
        started_at: rfc3339(requested.started_unix_ms),
        finished_at: rfc3339(finished_unix_ms),
        previous_certificate_sha256: requested.previous_certificate_sha256.clone(),
    };
    let cert_path = shared.dirs.certificate_file(operation_id);
    let certificate = jex_attest::sign(&document, shared.deps.signer.as_ref())
        .map_err(|source| EraseError::Sign { source })?;
    drop(document);
    // The bundle format is what `jex-agent verify-erase` reads: the file in the state directory
    // can be checked as it is.
    let bytes = certificate.to_bundle_json();
    journal::write_file_atomic(&cert_path, &bytes, 0o644).map_err(|source| EraseError::State {
        operation: "writing the certificate",
        path: cert_path.clone(),
        source,
    })?;
    let certificate_sha256 = jex_attest::document_sha256(&certificate);
    shared.set_certificate(operation_id, certificate);
    shared.record(Record::Certified {
        operation_id: operation_id.to_owned(),
        outcome,
        certificate_sha256: certificate_sha256.clone(),
        finished_unix_ms,
    })?;
    info!(outcome = outcome.as_str(), certificate_sha256 = %certificate_sha256, "erase certified");
    Ok(outcome)
}

/// Reads a stored certificate.
pub(crate) fn load_certificate(path: &Path) -> Result<SignedCertificate, EraseError> {
    let bytes = std::fs::read(path).map_err(|source| EraseError::State {
        operation: "reading the certificate",
        path: path.to_path_buf(),
        source,
    })?;
    SignedCertificate::from_bundle_json(&bytes).map_err(|err| EraseError::CertificateFormat {
        path: path.to_path_buf(),
        detail: crate::error_chain(&err),
    })
}
