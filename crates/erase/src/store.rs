//! The engine's store: the journal and the operations rebuilt from it, under one lock, and the
//! channels the engine publishes to after every change.
//!
//! Locking: [`Shared`]'s core lock is held while a record is checked, journaled (an fsync) and
//! applied, so that the journal and the in-memory state never disagree. Only writers take it:
//! the worker thread of an operation and `terminate`. Read-only queries read the published
//! [`Snapshot`] (every operation's view and the lifecycle, [`crate::progress`]) and never wait
//! for it.

use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::config::{EraseConfig, TargetConfig};
use crate::deps::{EraseDeps, IoOpener};
use crate::error::EraseError;
use crate::journal::Journal;
use crate::layout::StateDirs;
use crate::progress::{Live, OperationView, Snapshot};
use crate::record::{Record, RequestedRecord};
use crate::state::Operation;
use jex_attest::SignedCertificate;
use jex_platform::blockdev::{Access, BlockDevError, TargetIo};

/// Called with each record just before it is journaled, with the core lock held (tests use it
/// to hold the engine inside a journal write).
pub(crate) type RecordHook = Arc<dyn Fn(&Record) + Send + Sync>;

/// An operation and its live progress.
pub(crate) struct Tracked {
    pub(crate) op: Operation,
    pub(crate) live: Live,
}

/// The journal and every operation, under the core lock.
pub(crate) struct Core {
    pub(crate) journal: Journal<Record>,
    /// In the order they were requested.
    pub(crate) ops: Vec<Tracked>,
}

impl Core {
    /// Operation `operation_id`.
    pub(crate) fn find(&self, operation_id: &str) -> Option<&Tracked> {
        self.ops.iter().find(|t| t.op.id() == operation_id)
    }

    fn find_mut(&mut self, operation_id: &str) -> Option<&mut Tracked> {
        self.ops.iter_mut().find(|t| t.op.id() == operation_id)
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            operations: self.ops.iter().map(|t| t.live.entry(&t.op)).collect(),
        }
    }
}

/// Everything the worker threads and the service share.
pub(crate) struct Shared {
    pub(crate) config: EraseConfig,
    pub(crate) deps: EraseDeps,
    pub(crate) io: Arc<dyn IoOpener>,
    pub(crate) dirs: StateDirs,
    core: Mutex<Core>,
    snapshot: watch::Sender<Snapshot>,
    before_append: Option<RecordHook>,
    _lock: nix::fcntl::Flock<File>,
}

impl Shared {
    /// The store over `core`, whose state directory lock is `lock`; publishes the first
    /// snapshot.
    pub(crate) fn new(
        config: EraseConfig,
        deps: EraseDeps,
        io: Arc<dyn IoOpener>,
        dirs: StateDirs,
        core: Core,
        lock: nix::fcntl::Flock<File>,
        before_append: Option<RecordHook>,
    ) -> Self {
        let (snapshot, _) = watch::channel(core.snapshot());
        Shared {
            config,
            deps,
            io,
            dirs,
            core: Mutex::new(core),
            snapshot,
            before_append,
            _lock: lock,
        }
    }

    /// Takes the core lock (writers only).
    pub(crate) fn lock_core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock leaves the journal itself consistent (each append is
        // all-or-nothing on disk, and a record is applied only after it is durable), so the
        // state is still usable.
        self.core
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether another thread holds the core lock (tests).
    #[cfg(test)]
    pub(crate) fn core_is_locked(&self) -> bool {
        matches!(
            self.core.try_lock(),
            Err(std::sync::TryLockError::WouldBlock)
        )
    }

    /// The latest snapshot; never waits for the core lock.
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// A receiver of the snapshots, holding the latest one.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.subscribe()
    }

    /// Publishes every operation's view and the lifecycle as one value (with the core lock
    /// held, so snapshots are published in the order of the changes they show).
    fn publish_snapshot(&self, core: &Core) {
        self.snapshot.send_replace(core.snapshot());
    }

    /// Journals the `requested` record of a new operation and starts tracking it.
    pub(crate) fn create(
        &self,
        core: &mut Core,
        requested: RequestedRecord,
    ) -> Result<OperationView, EraseError> {
        let record = Record::Requested(requested.clone());
        if let Some(hook) = &self.before_append {
            hook(&record);
        }
        core.journal.append(&record)?;
        let op = Operation::new(requested);
        let live = Live::new(&op, None);
        let view = live.view(&op);
        core.ops.push(Tracked { op, live });
        self.publish_snapshot(core);
        Ok(view)
    }

    /// Checks that `record` is a legal transition of its operation, journals it durably, then
    /// applies it and publishes the new view and snapshot. A refused record is not journaled.
    pub(crate) fn record(&self, record: Record) -> Result<(), EraseError> {
        let mut guard = self.lock_core();
        let core = &mut *guard;
        let tracked = core
            .find(record.operation_id())
            .ok_or_else(|| EraseError::NotFound {
                operation_id: record.operation_id().to_owned(),
            })?;
        let next = tracked.op.next_state(&record)?;
        if let Some(hook) = &self.before_append {
            hook(&record);
        }
        core.journal.append(&record)?;
        if let Some(tracked) = core.find_mut(record.operation_id()) {
            tracked.op.state = next;
            tracked.live.publish(&tracked.op);
        }
        // The new view and the lifecycle it implies reach readers together.
        self.publish_snapshot(core);
        Ok(())
    }

    /// Applies `record` without journaling it (a failure that could not be journaled is still
    /// shown until the next restart); returns whether it was a legal transition.
    pub(crate) fn apply_unjournaled(&self, record: &Record) -> bool {
        let mut guard = self.lock_core();
        let core = &mut *guard;
        let Some(tracked) = core.find_mut(record.operation_id()) else {
            return false;
        };
        let applied = tracked.op.apply(record).is_ok();
        tracked.live.publish(&tracked.op);
        self.publish_snapshot(core);
        applied
    }

    /// A copy of operation `operation_id`.
    pub(crate) fn operation(&self, operation_id: &str) -> Result<Operation, EraseError> {
        self.lock_core()
            .find(operation_id)
            .map(|t| t.op.clone())
            .ok_or_else(|| EraseError::NotFound {
                operation_id: operation_id.to_owned(),
            })
    }

    /// Starts a progress phase with `total` bytes, of which `target_done` (per target) are
    /// already done.
    pub(crate) fn start_progress(&self, operation_id: &str, total: u64, target_done: Vec<u64>) {
        let mut core = self.lock_core();
        if let Some(t) = core.find_mut(operation_id) {
            t.live.start(&t.op, total, target_done);
            self.publish_snapshot(&core);
        }
    }

    /// Records that target `index` has `done` bytes done in the current phase.
    pub(crate) fn progress(&self, operation_id: &str, index: usize, done: u64) {
        let mut core = self.lock_core();
        if let Some(t) = core.find_mut(operation_id)
            && t.live.advance(&t.op, index, done)
        {
            self.publish_snapshot(&core);
        }
    }

    /// Keeps the signed certificate of an operation for its views.
    pub(crate) fn set_certificate(&self, operation_id: &str, certificate: SignedCertificate) {
        if let Some(t) = self.lock_core().find_mut(operation_id) {
            t.live.set_certificate(certificate);
        }
    }

    /// Opens target `index`, mapping errors to the target.
    pub(crate) fn open_target(
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
