//! What watchers and read-only queries see, published by the engine after every change: one
//! [`Snapshot`] in one `watch` channel, holding every operation's [`OperationView`] (phase,
//! outcome, byte counts and rate of the running phase, per-target state, the certificate once
//! signed) and the host's [`Lifecycle`] derived from the same views.
//!
//! The snapshot is an immutable value replaced whole. Read-only queries (`GetHost`,
//! `WatchErase` through an [`OperationWatch`], `GetEraseCertificate`) read it without ever
//! taking the engine's lock, which is held across journal writes (an fsync). Because the views
//! and the lifecycle are one value, nothing read after a watcher's last view (the lifecycle,
//! the current operation) can be older than that view.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::EraseError;
use crate::record::{Outcome, Phase, StoredPrepareRecord};
use crate::state::{Operation, State};
use jex_attest::SignedCertificate;

/// Publishing progress more often than this is pointless for watchers.
pub(crate) const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

crate::names::named_enum! {
    /// Where the host is between two tenancies.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Lifecycle {
        /// No erase requested (or none ever ran).
        Serving => "serving",
        /// An erase operation is running.
        Erasing => "erasing",
        /// Erased, verified and certified: the host can be given to another tenant.
        Reclaimable => "reclaimable",
        /// The last erase failed or had exceptions: the host must not be given to another
        /// tenant.
        EraseFailed => "erase_failed",
        /// This agent erased what it can and recorded the host's storage: the device erase is
        /// due (then the fresh OS's agent attests it).
        AwaitingDeviceErase => "awaiting_device_erase",
    }
}

impl Lifecycle {
    /// The lifecycle a host is in when `phase`/`outcome` describe its last operation.
    pub fn of(phase: Phase, outcome: Option<Outcome>) -> Self {
        match phase {
            Phase::Reclaimable => Lifecycle::Reclaimable,
            Phase::AwaitingDeviceErase => Lifecycle::AwaitingDeviceErase,
            Phase::Failed => Lifecycle::EraseFailed,
            Phase::Certified if outcome != Some(Outcome::Erased) => Lifecycle::EraseFailed,
            _ => Lifecycle::Erasing,
        }
    }
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
    /// When it finished (certified or failed); `None` while running, and for an operation
    /// failed because its journal was found damaged.
    pub finished_unix_ms: Option<u64>,
    /// Why it failed.
    pub failure_reason: Option<String>,
    /// Machine-readable reasons for `ERASED_WITH_EXCEPTIONS`.
    pub exceptions: Vec<String>,
    /// Per-target state.
    pub targets: Vec<TargetView>,
    /// The signed certificate, once certified.
    pub certificate: Option<SignedCertificate>,
    /// The signed prepare record, once the device erase is awaited.
    pub prepare_record: Option<jex_reclaim::SignedPrepareRecord>,
}

impl OperationView {
    /// No more work will be done here: reclaimable, failed, awaiting the device erase, or
    /// certified with exceptions.
    pub fn is_terminal(&self) -> bool {
        match self.phase {
            Phase::Failed | Phase::Reclaimable | Phase::AwaitingDeviceErase => true,
            Phase::Certified => self.outcome != Some(Outcome::Erased),
            _ => false,
        }
    }

    fn placeholder(operation_id: &str) -> Self {
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
            prepare_record: None,
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

/// Every operation, as read-only queries see it: the one value the engine publishes.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// In the order they were requested.
    pub operations: Vec<SnapshotEntry>,
}

/// One operation in a [`Snapshot`].
#[derive(Debug, Clone)]
pub struct SnapshotEntry {
    /// Operation id.
    pub operation_id: String,
    /// Whether a certificate was signed and stored (also when the operation failed after).
    pub certified: bool,
    view: Arc<OperationView>,
}

impl SnapshotEntry {
    /// The operation's view in this snapshot.
    pub fn view(&self) -> &OperationView {
        &self.view
    }

    /// Its phase (the view's).
    pub fn phase(&self) -> Phase {
        self.view.phase
    }

    /// Its outcome, once certified or failed (the view's).
    pub fn outcome(&self) -> Option<Outcome> {
        self.view.outcome
    }
}

impl Snapshot {
    /// Where the host is, from its last operation's view.
    pub fn lifecycle(&self) -> Lifecycle {
        match self.operations.last() {
            None => Lifecycle::Serving,
            Some(op) => Lifecycle::of(op.phase(), op.outcome()),
        }
    }

    /// What `GetHost` shows: the lifecycle and the current or last operation's id, from this
    /// one snapshot.
    pub fn host_state(&self) -> HostEraseState {
        HostEraseState {
            lifecycle: self.lifecycle(),
            operation_id: self.current().map(|op| op.operation_id.clone()),
        }
    }

    fn find(&self, operation_id: &str) -> Option<&SnapshotEntry> {
        self.operations
            .iter()
            .find(|op| op.operation_id == operation_id)
    }

    /// The current or last operation.
    pub fn current(&self) -> Option<&SnapshotEntry> {
        self.operations.last()
    }

    /// Operation `operation_id`, or the current one when `None` or empty.
    pub fn resolve(&self, operation_id: Option<&str>) -> Result<&SnapshotEntry, EraseError> {
        match operation_id.filter(|id| !id.is_empty()) {
            Some(id) => self
                .operations
                .iter()
                .find(|op| op.operation_id == id)
                .ok_or_else(|| EraseError::NotFound {
                    operation_id: id.to_owned(),
                }),
            None => self.current().ok_or_else(|| EraseError::NotFound {
                operation_id: String::new(),
            }),
        }
    }
}

/// The host's erase state as `GetHost` shows it, read from one [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEraseState {
    /// Where the host is between tenancies.
    pub lifecycle: Lifecycle,
    /// The current or last operation.
    pub operation_id: Option<String>,
}

/// Follows one operation through the published snapshots: each view it yields, and anything
/// read from the service after it, comes from a snapshot at least as new.
#[derive(Debug, Clone)]
pub struct OperationWatch {
    operation_id: String,
    snapshots: watch::Receiver<Snapshot>,
    yielded: Option<Arc<OperationView>>,
}

/// The latest view of a watched operation (see [`OperationWatch::borrow`]).
#[derive(Debug)]
pub struct ViewRef(Arc<OperationView>);

impl std::ops::Deref for ViewRef {
    type Target = OperationView;

    fn deref(&self) -> &OperationView {
        &self.0
    }
}

impl OperationWatch {
    /// A watch of `operation_id` over `snapshots`; the caller checked that the operation is in
    /// the latest snapshot (operations are never removed from later ones).
    pub(crate) fn new(operation_id: String, snapshots: watch::Receiver<Snapshot>) -> Self {
        OperationWatch {
            operation_id,
            snapshots,
            yielded: None,
        }
    }

    /// The watched operation's id.
    pub fn operation_id(&self) -> &str {
        &self.operation_id
    }

    fn latest(snapshot: &Snapshot, operation_id: &str) -> Option<Arc<OperationView>> {
        snapshot
            .find(operation_id)
            .map(|entry| Arc::clone(&entry.view))
    }

    /// The operation's view in the latest snapshot.
    pub fn borrow(&self) -> ViewRef {
        let snapshot = self.snapshots.borrow();
        let view = Self::latest(&snapshot, &self.operation_id)
            .unwrap_or_else(|| Arc::new(OperationView::placeholder(&self.operation_id)));
        ViewRef(view)
    }

    /// The latest view on the first call, then each changed view as it is published (views
    /// published in between are skipped, as a `watch` channel does); `None` once the service
    /// is gone.
    pub async fn next_view(&mut self) -> Option<OperationView> {
        loop {
            let current = Self::latest(&self.snapshots.borrow_and_update(), &self.operation_id)?;
            let changed = self
                .yielded
                .as_ref()
                .is_none_or(|before| !Arc::ptr_eq(before, &current));
            if changed {
                self.yielded = Some(Arc::clone(&current));
                return Some(OperationView::clone(&current));
            }
            self.snapshots.changed().await.ok()?;
        }
    }
}

/// Live progress of an operation's running phase, and its latest published view.
pub(crate) struct Live {
    published: Arc<OperationView>,
    bytes_total: u64,
    bytes_done: u64,
    target_done: Vec<u64>,
    phase_started: Instant,
    phase_start_bytes: u64,
    last_publish: Instant,
    certificate: Option<SignedCertificate>,
}

impl Live {
    /// The live state of an operation just created or loaded from the journal, with its
    /// stored certificate if it has one.
    pub(crate) fn new(op: &Operation, certificate: Option<SignedCertificate>) -> Self {
        let sizes: Vec<u64> = match op.state.pinned() {
            Some(pinned) => pinned.iter().map(|t| t.identity.size_bytes).collect(),
            None => vec![0; op.requested.targets.len()],
        };
        // Only an interrupted overwrite has bytes already done.
        let (bytes_total, target_done) = match op.state.overwrite_checkpoint() {
            Some(at) => (
                sizes.iter().sum(),
                done_before(&sizes, at.target, at.offset),
            ),
            None => (0, vec![0; sizes.len()]),
        };
        let done = target_done.iter().sum();
        let now = Instant::now();
        let mut live = Live {
            published: Arc::new(OperationView::placeholder(op.id())),
            bytes_total,
            bytes_done: done,
            target_done,
            phase_started: now,
            phase_start_bytes: done,
            last_publish: now,
            certificate,
        };
        live.publish(op);
        live
    }

    /// Starts a progress phase with `total` bytes, of which `target_done` (per target) are
    /// already done.
    pub(crate) fn start(&mut self, op: &Operation, total: u64, target_done: Vec<u64>) {
        let done = target_done.iter().sum();
        self.bytes_total = total;
        self.bytes_done = done;
        self.target_done = target_done;
        self.phase_started = Instant::now();
        self.phase_start_bytes = done;
        self.publish(op);
    }

    /// Records that target `index` has `done` bytes done in the current phase; updates the
    /// view at most every [`PUBLISH_INTERVAL`], and at the end of the phase. Returns whether it
    /// did (the caller then publishes a snapshot).
    pub(crate) fn advance(&mut self, op: &Operation, index: usize, done: u64) -> bool {
        if let Some(slot) = self.target_done.get_mut(index) {
            *slot = done;
        }
        self.bytes_done = self.target_done.iter().sum();
        let finished = self.bytes_done >= self.bytes_total;
        let due = finished || self.last_publish.elapsed() >= PUBLISH_INTERVAL;
        if due {
            self.publish(op);
        }
        due
    }

    /// Keeps the signed certificate for the views (published with the next change).
    pub(crate) fn set_certificate(&mut self, certificate: SignedCertificate) {
        self.certificate = Some(certificate);
    }

    /// Makes the current view of `op` the one the next snapshot carries.
    pub(crate) fn publish(&mut self, op: &Operation) {
        self.published = Arc::new(self.view(op));
        self.last_publish = Instant::now();
    }

    /// The snapshot entry of `op`: its last published view.
    pub(crate) fn entry(&self, op: &Operation) -> SnapshotEntry {
        SnapshotEntry {
            operation_id: op.id().to_owned(),
            certified: op.state.certification().is_some(),
            view: Arc::clone(&self.published),
        }
    }

    /// The view of `op` with this live progress.
    pub(crate) fn view(&self, op: &Operation) -> OperationView {
        let phase = op.phase();
        let running = !op.has_ended() && phase != Phase::Certified;
        let elapsed = self.phase_started.elapsed().as_secs_f64();
        let moved = self.bytes_done.saturating_sub(self.phase_start_bytes);
        let rate = if running && elapsed > 0.0 && moved > 0 {
            moved as f64 / elapsed
        } else {
            0.0
        };
        let eta = if rate > 0.0 {
            (self.bytes_total.saturating_sub(self.bytes_done) as f64 / rate).ceil() as u64
        } else {
            0
        };
        let current_target = op.state.overwrite_checkpoint().map(|at| at.target as usize);
        let pinned = op.state.pinned();
        let targets = op
            .requested
            .targets
            .iter()
            .enumerate()
            .map(|(index, target)| {
                let size = pinned
                    .and_then(|p| p.get(index))
                    .map(|p| p.identity.size_bytes)
                    .unwrap_or(0);
                // Targets after the one being overwritten still wait, keys destroyed.
                let target_phase = match phase {
                    Phase::Overwriting if current_target.is_some_and(|c| index > c) => {
                        Phase::KeysDestroyed
                    }
                    other => other,
                };
                TargetView {
                    name: target.name.clone(),
                    backend: target.backend().as_str().to_owned(),
                    size_bytes: size,
                    phase: target_phase,
                    bytes_done: self.target_done.get(index).copied().unwrap_or(0),
                }
            })
            .collect();
        let failure = op.state.failure();
        // Signed and stored just before `certified` is journaled: shown only once it is, so an
        // operation that failed on that journal write (a full disk) shows no certificate.
        let certificate = self
            .certificate
            .as_ref()
            .filter(|_| op.state.certification().is_some());
        OperationView {
            operation_id: op.id().to_owned(),
            request_id: op.requested.request_id.clone(),
            phase,
            outcome: op.outcome(),
            bytes_total: self.bytes_total,
            bytes_done: self.bytes_done,
            rate_bytes_per_second: rate,
            eta_seconds: eta,
            started_unix_ms: op.requested.started_unix_ms,
            finished_unix_ms: match &op.state {
                State::Failed { failure, .. } => failure.finished_unix_ms,
                State::AwaitingDeviceErase {
                    finished_unix_ms, ..
                } => Some(*finished_unix_ms),
                state => state.certification().map(|c| c.finished_unix_ms),
            },
            failure_reason: failure.map(|f| f.reason.clone()),
            exceptions: certificate_exceptions(certificate),
            targets,
            certificate: certificate.cloned(),
            prepare_record: op
                .state
                .prepare_record()
                .and_then(StoredPrepareRecord::to_signed),
        }
    }
}

/// Bytes done per target when target `current` is durable up to `offset`: every target before
/// it in full, none after it.
pub(crate) fn done_before(sizes: &[u64], current: u32, offset: u64) -> Vec<u64> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, size)| match (i as u64).cmp(&u64::from(current)) {
            std::cmp::Ordering::Less => *size,
            std::cmp::Ordering::Equal => offset,
            std::cmp::Ordering::Greater => 0,
        })
        .collect()
}

/// The `exceptions` of a certificate's document, whichever its version (both have the field).
fn certificate_exceptions(certificate: Option<&SignedCertificate>) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Exceptions {
        exceptions: Vec<String>,
    }
    certificate
        .and_then(|c| serde_json::from_slice::<Exceptions>(&c.document_json).ok())
        .map(|d| d.exceptions)
        .unwrap_or_default()
}
