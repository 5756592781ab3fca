//! The state machine of one erase operation: a [`State`] whose variants hold what each phase
//! knows, one [`Operation::apply`] that moves it by one journal [`Record`] or refuses with a
//! [`TransitionError`], and [`replay`], which rebuilds every operation from a journal.
//!
//! ```text
//! Requested -> TargetsPinned -> KeysSnapshotted -> KeysDestroyed -> Overwriting{target, offset}
//!   -> Verifying -> Certified{outcome, ..} -> Reclaimable        (only if the outcome is ERASED)
//! any state that has not ended -> Failed{phase, reason}          (terminal, never reclaimable)
//! ```
//!
//! The legal transitions, record by record (anything else is refused). A state and a record
//! are named by one [`Step`]: an accepted record leaves the operation at its own step.
//!
//! | at step | record | condition |
//! |---|---|---|
//! | `requested` | `targets_pinned` | one pinned target per requested target, same names, same order |
//! | `requested` of an attestation | `certified` | any outcome, `FAILED` included (the attestation's certificate) |
//! | `targets_pinned`, `keys_snapshot` | `keys_snapshot` | the next target in order; a target is never snapshotted twice |
//! | `keys_snapshot` | `keys_destroyed` | every target snapshotted, one destruction per target |
//! | `keys_destroyed` | `overwriting` | target 0, offset 0 |
//! | `overwriting` | `overwriting` | same target, offset not lower and within its size; or the next target at offset 0 once the current one is complete |
//! | `overwriting` | `verifying` | the last target is complete |
//! | `verifying` | `verifying` | (verification restarted after a crash) |
//! | `verifying` | `certified` | outcome `ERASED` or `ERASED_WITH_EXCEPTIONS` |
//! | `certified` (`ERASED`) | `reclaimable` | the operation has no device erase |
//! | `certified` (`ERASED`), or `requested` when there are no targets | `awaiting_device_erase` | the operation has a device erase (`[erase.internal_ssd]`) |
//! | any state that has not ended | `failed` | the record names the current [`Phase`] |
//!
//! Ended: `reclaimable`, `awaiting_device_erase`, `failed`, and `certified` with
//! `ERASED_WITH_EXCEPTIONS`. A record of
//! another operation, and a second `requested`, are always refused.
//!
//! # A refused record during replay
//!
//! The engine checks every transition before it journals the record, so a refused record in a
//! journal means the journal was damaged or edited by hand. [`replay`] then makes the operation
//! [`State::Failed`], with the refusal as its reason and no finish time: never reclaimable,
//! never resumed, and a new `Terminate` may start a fresh erase. Later records of that
//! operation are refused too (it has ended) and are logged, like the first one; nothing is
//! skipped silently. Records of an operation that was never requested are logged and left out.

use tracing::{error, warn};

use crate::keys::{KeyDestruction, KeyState};
use crate::record::{
    Outcome, Phase, PinnedTarget, Record, RequestedRecord, Step, StoredPrepareRecord,
};

/// One operation: the request, and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    /// The accepted request.
    pub requested: RequestedRecord,
    /// Where the operation is.
    pub state: State,
}

/// Where an operation is, with what it knows there.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Accepted; nothing probed yet.
    Requested,
    /// Target identities pinned.
    TargetsPinned {
        /// One per requested target, in order.
        pinned: Vec<PinnedTarget>,
    },
    /// Key states observed, before destruction, for a prefix of the targets.
    KeysSnapshotted {
        /// One per requested target, in order.
        pinned: Vec<PinnedTarget>,
        /// One per target snapshotted so far, in target order.
        snapshots: Vec<KeySnapshot>,
    },
    /// Every target's keys destroyed and checked.
    KeysDestroyed(Destroyed),
    /// Overwriting; `at` is durable.
    Overwriting {
        /// Targets and key destruction.
        destroyed: Destroyed,
        /// The last durable checkpoint.
        at: OverwriteCheckpoint,
    },
    /// Reading back, every target overwritten.
    Verifying(Destroyed),
    /// The certificate is signed and stored.
    Certified {
        /// Targets and key destruction.
        destroyed: Destroyed,
        /// The certificate.
        certification: Certification,
    },
    /// Done: the host can be reclaimed.
    Reclaimable {
        /// Targets and key destruction.
        destroyed: Destroyed,
        /// The certificate (always `ERASED`).
        certification: Certification,
    },
    /// This agent's half of a device erase is done: terminal here, never reclaimable on this
    /// agent (the agent of the fresh OS attests the device erase).
    AwaitingDeviceErase {
        /// Targets and key destruction, when the operation had targets of its own.
        destroyed: Option<Destroyed>,
        /// Their certificate (always `ERASED`), when it had targets.
        certification: Option<Certification>,
        /// The signed prepare record.
        prepare: StoredPrepareRecord,
        /// When it was signed.
        finished_unix_ms: u64,
    },
    /// Failed: terminal, never reclaimable.
    Failed {
        /// The state the operation failed in (never `Failed`).
        before: Box<State>,
        /// Why.
        failure: Failure,
    },
}

/// A target's key state, journaled before its destruction.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySnapshot {
    /// Target name.
    pub target: String,
    /// What the backend observed.
    pub state: KeyState,
}

/// What every state after key destruction knows: the pinned targets and the evidence that
/// their keys are gone.
#[derive(Debug, Clone, PartialEq)]
pub struct Destroyed {
    /// One per requested target, in order.
    pub pinned: Vec<PinnedTarget>,
    /// One per target, in order.
    pub destructions: Vec<KeyDestruction>,
}

/// An overwrite checkpoint: target number `target` is durable up to `offset`, every target
/// before it completely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct OverwriteCheckpoint {
    /// Target index, in config order.
    pub target: u32,
    /// Bytes of that target durable.
    pub offset: u64,
}

/// A signed, stored certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct Certification {
    /// `ERASED` or `ERASED_WITH_EXCEPTIONS`.
    pub outcome: Outcome,
    /// SHA-256 of the certificate's `document_json`, hex.
    pub certificate_sha256: String,
    /// When verification finished.
    pub finished_unix_ms: u64,
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// The phase it failed in.
    pub phase: Phase,
    /// Why, as journaled (or the refusal, for a damaged journal).
    pub reason: String,
    /// When; `None` when replay found the journal damaged (no time was journaled).
    pub finished_unix_ms: Option<u64>,
}

/// A record that is not a legal transition from the operation's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("operation {operation_id}: record {record} cannot follow {state}: {refusal}")]
pub struct TransitionError {
    /// The operation whose state was asked to change.
    pub operation_id: String,
    /// The step its state is at.
    pub state: Step,
    /// The step of the record refused.
    pub record: Step,
    /// Why.
    pub refusal: Refusal,
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The record does not follow this state in any journal.
    #[error("no such transition")]
    NoSuchTransition,
    /// The operation has ended.
    #[error("the operation has ended")]
    Ended,
    /// The record names another operation.
    #[error("the record belongs to operation {0}")]
    OtherOperation(String),
    /// The pinned targets are not the requested ones.
    #[error("pinned targets {pinned:?} are not the requested targets {requested:?}")]
    PinnedTargets {
        /// Names requested, in order.
        requested: Vec<String>,
        /// Names pinned, in order.
        pinned: Vec<String>,
    },
    /// A key snapshot that is not the next target's.
    #[error("key snapshot of target {got:?} where the next target is {expected:?}")]
    SnapshotOrder {
        /// The next target without a snapshot (`None`: every target has one).
        expected: Option<String>,
        /// The snapshot's target.
        got: String,
    },
    /// Key destruction journaled before every target was snapshotted.
    #[error("keys destroyed with {snapshots} of {targets} targets snapshotted")]
    SnapshotsMissing {
        /// Snapshots journaled.
        snapshots: usize,
        /// Targets.
        targets: usize,
    },
    /// Not one destruction per target.
    #[error("{destructions} key destructions for {targets} targets")]
    Destructions {
        /// Destructions in the record.
        destructions: usize,
        /// Targets.
        targets: usize,
    },
    /// The overwrite must start at target 0, offset 0.
    #[error("the overwrite starts at target {target} offset {offset}, not at target 0 offset 0")]
    OverwriteStart {
        /// Target in the record.
        target: u32,
        /// Offset in the record.
        offset: u64,
    },
    /// A checkpoint on a target that does not exist.
    #[error("checkpoint on target {target} of {targets}")]
    NoSuchTarget {
        /// Target in the record.
        target: u32,
        /// Targets.
        targets: usize,
    },
    /// A checkpoint past the end of its target.
    #[error("checkpoint at offset {offset} past the end of target {target} ({size} bytes)")]
    PastTheEnd {
        /// Target.
        target: u32,
        /// Offset in the record.
        offset: u64,
        /// The target's pinned size.
        size: u64,
    },
    /// A checkpoint that goes back, or skips over what was not written.
    #[error(
        "checkpoint at target {target} offset {offset} does not follow target {from_target} offset {from_offset} of {size} bytes"
    )]
    CheckpointOrder {
        /// Target in the record.
        target: u32,
        /// Offset in the record.
        offset: u64,
        /// The current checkpoint's target.
        from_target: u32,
        /// The current checkpoint's offset.
        from_offset: u64,
        /// The current target's pinned size.
        size: u64,
    },
    /// Verification journaled before the last target was overwritten completely.
    #[error(
        "verification starts with target {target} durable up to {offset} of {size} bytes and {targets} targets"
    )]
    OverwriteIncomplete {
        /// The current checkpoint's target.
        target: u32,
        /// The current checkpoint's offset.
        offset: u64,
        /// That target's pinned size.
        size: u64,
        /// Targets.
        targets: usize,
    },
    /// A certificate cannot say `FAILED`.
    #[error("a certificate with outcome {0}")]
    CertifiedOutcome(&'static str),
    /// Only an `ERASED` certificate makes the host reclaimable.
    #[error("the certificate's outcome is {0}, not ERASED")]
    NotErased(&'static str),
    /// `reclaimable` for an operation whose internal SSD awaits its device erase.
    #[error("the internal SSD's device erase is due: this agent never marks the host reclaimable")]
    DeviceEraseDue,
    /// `awaiting_device_erase` for an operation that has no device erase.
    #[error("the operation has no device erase to await")]
    NoDeviceErase,
    /// The failure names another phase than the operation's.
    #[error("the failure is journaled in phase {journaled} but the operation is in phase {actual}")]
    FailedPhase {
        /// Phase in the record.
        journaled: Phase,
        /// The operation's phase.
        actual: Phase,
    },
}

impl State {
    /// The step the operation is at: that of the record that brought it here.
    pub fn kind(&self) -> Step {
        match self {
            State::Requested => Step::Requested,
            State::TargetsPinned { .. } => Step::TargetsPinned,
            State::KeysSnapshotted { .. } => Step::KeysSnapshot,
            State::KeysDestroyed(_) => Step::KeysDestroyed,
            State::Overwriting { .. } => Step::Overwriting,
            State::Verifying(_) => Step::Verifying,
            State::Certified { .. } => Step::Certified,
            State::Reclaimable { .. } => Step::Reclaimable,
            State::AwaitingDeviceErase { .. } => Step::AwaitingDeviceErase,
            State::Failed { .. } => Step::Failed,
        }
    }

    /// The phase reported to the controller: the steps before key destruction are all
    /// `Requested`.
    pub fn phase(&self) -> Phase {
        match self {
            State::Requested | State::TargetsPinned { .. } | State::KeysSnapshotted { .. } => {
                Phase::Requested
            }
            State::KeysDestroyed(_) => Phase::KeysDestroyed,
            State::Overwriting { .. } => Phase::Overwriting,
            State::Verifying(_) => Phase::Verifying,
            State::Certified { .. } => Phase::Certified,
            State::Reclaimable { .. } => Phase::Reclaimable,
            State::AwaitingDeviceErase { .. } => Phase::AwaitingDeviceErase,
            State::Failed { .. } => Phase::Failed,
        }
    }

    /// No more work will be done: reclaimable, failed, or certified with exceptions.
    pub fn has_ended(&self) -> bool {
        match self {
            State::Reclaimable { .. }
            | State::AwaitingDeviceErase { .. }
            | State::Failed { .. } => true,
            State::Certified { certification, .. } => certification.outcome != Outcome::Erased,
            _ => false,
        }
    }

    /// The pinned targets, once pinned (also after a failure).
    pub fn pinned(&self) -> Option<&[PinnedTarget]> {
        match self {
            State::Requested => None,
            State::TargetsPinned { pinned } | State::KeysSnapshotted { pinned, .. } => Some(pinned),
            State::KeysDestroyed(destroyed)
            | State::Verifying(destroyed)
            | State::Overwriting { destroyed, .. }
            | State::Certified { destroyed, .. }
            | State::Reclaimable { destroyed, .. } => Some(&destroyed.pinned),
            State::AwaitingDeviceErase { destroyed, .. } => {
                destroyed.as_ref().map(|d| d.pinned.as_slice())
            }
            State::Failed { before, .. } => before.pinned(),
        }
    }

    /// The key snapshot of `target`, between the first snapshot and key destruction.
    pub fn key_snapshot(&self, target: &str) -> Option<&KeyState> {
        match self {
            State::KeysSnapshotted { snapshots, .. } => snapshots
                .iter()
                .find(|s| s.target == target)
                .map(|s| &s.state),
            _ => None,
        }
    }

    /// Targets and key destruction, once every key is destroyed (not after a failure: a
    /// failed operation is never resumed).
    pub fn destroyed(&self) -> Option<&Destroyed> {
        match self {
            State::KeysDestroyed(destroyed)
            | State::Verifying(destroyed)
            | State::Overwriting { destroyed, .. }
            | State::Certified { destroyed, .. }
            | State::Reclaimable { destroyed, .. } => Some(destroyed),
            State::AwaitingDeviceErase { destroyed, .. } => destroyed.as_ref(),
            _ => None,
        }
    }

    /// The last overwrite checkpoint, while overwriting (or when the operation failed
    /// overwriting).
    pub fn overwrite_checkpoint(&self) -> Option<OverwriteCheckpoint> {
        match self {
            State::Overwriting { at, .. } => Some(*at),
            State::Failed { before, .. } => before.overwrite_checkpoint(),
            _ => None,
        }
    }

    /// The certificate, once certified (also when the operation failed after that).
    pub fn certification(&self) -> Option<&Certification> {
        match self {
            State::Certified { certification, .. } | State::Reclaimable { certification, .. } => {
                Some(certification)
            }
            State::AwaitingDeviceErase { certification, .. } => certification.as_ref(),
            State::Failed { before, .. } => before.certification(),
            _ => None,
        }
    }

    /// Why the operation failed.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            State::Failed { failure, .. } => Some(failure),
            _ => None,
        }
    }

    /// The signed prepare record, once this agent's half of a device erase is done.
    pub fn prepare_record(&self) -> Option<&StoredPrepareRecord> {
        match self {
            State::AwaitingDeviceErase { prepare, .. } => Some(prepare),
            _ => None,
        }
    }

    /// `ERASED`/`ERASED_WITH_EXCEPTIONS` once certified, `FAILED` once failed; none while a
    /// device erase is awaited (the fresh OS's agent decides).
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            State::Failed { .. } => Some(Outcome::Failed),
            State::AwaitingDeviceErase { .. } => None,
            other => other.certification().map(|c| c.outcome),
        }
    }
}

impl Operation {
    /// A new operation, just requested.
    pub fn new(requested: RequestedRecord) -> Self {
        Operation {
            requested,
            state: State::Requested,
        }
    }

    /// The operation id.
    pub fn id(&self) -> &str {
        &self.requested.operation_id
    }

    /// The phase reported to the controller.
    pub fn phase(&self) -> Phase {
        self.state.phase()
    }

    /// No more work will be done.
    pub fn has_ended(&self) -> bool {
        self.state.has_ended()
    }

    /// How it ended (or `ERASED` once certified and not yet reclaimable).
    pub fn outcome(&self) -> Option<Outcome> {
        self.state.outcome()
    }

    /// Applies `record`: the operation moves to the next state, or stays unchanged and the
    /// record is refused. See the module documentation for the transitions.
    pub fn apply(&mut self, record: &Record) -> Result<(), TransitionError> {
        self.state = self.next_state(record)?;
        Ok(())
    }

    /// The state `record` leads to, without changing anything: the engine checks a record
    /// with this before journaling it.
    pub fn next_state(&self, record: &Record) -> Result<State, TransitionError> {
        let refuse = |refusal| TransitionError {
            operation_id: self.id().to_owned(),
            state: self.state.kind(),
            record: record.kind(),
            refusal,
        };
        if record.operation_id() != self.id() {
            return Err(refuse(Refusal::OtherOperation(
                record.operation_id().to_owned(),
            )));
        }
        let size = |pinned: &[PinnedTarget], target: u32| {
            pinned
                .get(target as usize)
                .map(|p| p.identity.size_bytes)
                .unwrap_or(0)
        };
        match (&self.state, record) {
            // An attestation: certified at once, whatever the outcome (a failed attestation is
            // signed too), with no targets of its own.
            (
                State::Requested,
                Record::Certified {
                    outcome,
                    certificate_sha256,
                    finished_unix_ms,
                    ..
                },
            ) if self.requested.attest.is_some() => Ok(State::Certified {
                destroyed: Destroyed {
                    pinned: Vec::new(),
                    destructions: Vec::new(),
                },
                certification: Certification {
                    outcome: *outcome,
                    certificate_sha256: certificate_sha256.clone(),
                    finished_unix_ms: *finished_unix_ms,
                },
            }),
            (State::Requested, r)
                if self.requested.attest.is_some() && !matches!(r, Record::Failed { .. }) =>
            {
                Err(refuse(Refusal::NoSuchTransition))
            }
            (State::Requested, Record::TargetsPinned { targets, .. }) => {
                let requested: Vec<&str> = self
                    .requested
                    .targets
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect();
                let pinned: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
                if requested != pinned {
                    return Err(refuse(Refusal::PinnedTargets {
                        requested: requested.iter().map(|s| (*s).to_owned()).collect(),
                        pinned: pinned.iter().map(|s| (*s).to_owned()).collect(),
                    }));
                }
                Ok(State::TargetsPinned {
                    pinned: targets.clone(),
                })
            }
            (
                State::TargetsPinned { pinned } | State::KeysSnapshotted { pinned, .. },
                Record::KeysSnapshot { target, state, .. },
            ) => {
                let mut snapshots = match &self.state {
                    State::KeysSnapshotted { snapshots, .. } => snapshots.clone(),
                    _ => Vec::new(),
                };
                let expected = pinned.get(snapshots.len()).map(|p| p.name.clone());
                if expected.as_deref() != Some(target.as_str()) {
                    return Err(refuse(Refusal::SnapshotOrder {
                        expected,
                        got: target.clone(),
                    }));
                }
                snapshots.push(KeySnapshot {
                    target: target.clone(),
                    state: state.clone(),
                });
                Ok(State::KeysSnapshotted {
                    pinned: pinned.clone(),
                    snapshots,
                })
            }
            (
                State::KeysSnapshotted { pinned, snapshots },
                Record::KeysDestroyed { destructions, .. },
            ) => {
                if snapshots.len() != pinned.len() {
                    return Err(refuse(Refusal::SnapshotsMissing {
                        snapshots: snapshots.len(),
                        targets: pinned.len(),
                    }));
                }
                if destructions.len() != pinned.len() {
                    return Err(refuse(Refusal::Destructions {
                        destructions: destructions.len(),
                        targets: pinned.len(),
                    }));
                }
                Ok(State::KeysDestroyed(Destroyed {
                    pinned: pinned.clone(),
                    destructions: destructions.clone(),
                }))
            }
            (State::KeysDestroyed(destroyed), Record::Overwriting { target, offset, .. }) => {
                if (*target, *offset) != (0, 0) {
                    return Err(refuse(Refusal::OverwriteStart {
                        target: *target,
                        offset: *offset,
                    }));
                }
                Ok(State::Overwriting {
                    destroyed: destroyed.clone(),
                    at: OverwriteCheckpoint {
                        target: 0,
                        offset: 0,
                    },
                })
            }
            (State::Overwriting { destroyed, at }, Record::Overwriting { target, offset, .. }) => {
                let pinned = &destroyed.pinned;
                if *target as usize >= pinned.len() {
                    return Err(refuse(Refusal::NoSuchTarget {
                        target: *target,
                        targets: pinned.len(),
                    }));
                }
                let target_size = size(pinned, *target);
                if *offset > target_size {
                    return Err(refuse(Refusal::PastTheEnd {
                        target: *target,
                        offset: *offset,
                        size: target_size,
                    }));
                }
                let current_size = size(pinned, at.target);
                let follows = if *target == at.target {
                    *offset >= at.offset
                } else {
                    *target == at.target + 1 && *offset == 0 && at.offset == current_size
                };
                if !follows {
                    return Err(refuse(Refusal::CheckpointOrder {
                        target: *target,
                        offset: *offset,
                        from_target: at.target,
                        from_offset: at.offset,
                        size: current_size,
                    }));
                }
                Ok(State::Overwriting {
                    destroyed: destroyed.clone(),
                    at: OverwriteCheckpoint {
                        target: *target,
                        offset: *offset,
                    },
                })
            }
            (State::Overwriting { destroyed, at }, Record::Verifying { .. }) => {
                let targets = destroyed.pinned.len();
                let current_size = size(&destroyed.pinned, at.target);
                if at.target as usize + 1 != targets || at.offset != current_size {
                    return Err(refuse(Refusal::OverwriteIncomplete {
                        target: at.target,
                        offset: at.offset,
                        size: current_size,
                        targets,
                    }));
                }
                Ok(State::Verifying(destroyed.clone()))
            }
            (State::Verifying(destroyed), Record::Verifying { .. }) => {
                Ok(State::Verifying(destroyed.clone()))
            }
            (
                State::Verifying(destroyed),
                Record::Certified {
                    outcome,
                    certificate_sha256,
                    finished_unix_ms,
                    ..
                },
            ) => {
                if *outcome == Outcome::Failed {
                    return Err(refuse(Refusal::CertifiedOutcome(outcome.as_str())));
                }
                Ok(State::Certified {
                    destroyed: destroyed.clone(),
                    certification: Certification {
                        outcome: *outcome,
                        certificate_sha256: certificate_sha256.clone(),
                        finished_unix_ms: *finished_unix_ms,
                    },
                })
            }
            (
                State::Certified {
                    destroyed,
                    certification,
                },
                Record::Reclaimable { .. },
            ) => {
                if self.requested.device_erase.is_some() {
                    return Err(refuse(Refusal::DeviceEraseDue));
                }
                if certification.outcome != Outcome::Erased {
                    return Err(refuse(Refusal::NotErased(certification.outcome.as_str())));
                }
                Ok(State::Reclaimable {
                    destroyed: destroyed.clone(),
                    certification: certification.clone(),
                })
            }
            (
                State::Requested | State::Certified { .. },
                Record::AwaitingDeviceErase {
                    prepare,
                    finished_unix_ms,
                    ..
                },
            ) => {
                if self.requested.device_erase.is_none() {
                    return Err(refuse(Refusal::NoDeviceErase));
                }
                let (destroyed, certification) = match &self.state {
                    State::Certified {
                        destroyed,
                        certification,
                    } => {
                        if certification.outcome != Outcome::Erased {
                            return Err(refuse(Refusal::NotErased(certification.outcome.as_str())));
                        }
                        (Some(destroyed.clone()), Some(certification.clone()))
                    }
                    _ if self.requested.targets.is_empty() => (None, None),
                    _ => return Err(refuse(Refusal::NoSuchTransition)),
                };
                Ok(State::AwaitingDeviceErase {
                    destroyed,
                    certification,
                    prepare: prepare.clone(),
                    finished_unix_ms: *finished_unix_ms,
                })
            }
            (
                before,
                Record::Failed {
                    phase,
                    reason,
                    finished_unix_ms,
                    ..
                },
            ) if !before.has_ended() => {
                if *phase != before.phase() {
                    return Err(refuse(Refusal::FailedPhase {
                        journaled: *phase,
                        actual: before.phase(),
                    }));
                }
                Ok(State::Failed {
                    before: Box::new(before.clone()),
                    failure: Failure {
                        phase: *phase,
                        reason: reason.clone(),
                        finished_unix_ms: Some(*finished_unix_ms),
                    },
                })
            }
            (state, _) if state.has_ended() => Err(refuse(Refusal::Ended)),
            _ => Err(refuse(Refusal::NoSuchTransition)),
        }
    }

    /// Makes the operation failed because replay refused one of its records.
    fn fail_damaged(&mut self, index: usize, err: &TransitionError) {
        let phase = self.phase();
        let before = std::mem::replace(&mut self.state, State::Requested);
        self.state = State::Failed {
            before: Box::new(before),
            failure: Failure {
                phase,
                reason: format!(
                    "the erase journal is damaged: record {index} refused: {err}; \
                     this operation is failed and the host is not reclaimable"
                ),
                finished_unix_ms: None,
            },
        };
    }
}

/// A record [`replay`] refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// The record's position in the journal, from 0.
    pub index: usize,
    /// Why; `None` for a record of an operation that was never requested.
    pub error: Option<TransitionError>,
}

/// Every operation rebuilt from a journal, and the records refused on the way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replayed {
    /// The operations, in the order they were requested.
    pub operations: Vec<Operation>,
    /// Records refused (empty for a journal the engine wrote).
    pub refused: Vec<Refused>,
}

/// Rebuilds every operation from `records`, in the order they were requested. A refused
/// record fails its operation (see the module documentation); it is logged and listed in
/// [`Replayed::refused`].
pub fn replay(records: &[Record]) -> Replayed {
    let mut replayed = Replayed::default();
    for (index, record) in records.iter().enumerate() {
        if let Record::Requested(requested) = record
            && replayed
                .operations
                .iter()
                .all(|op| op.id() != requested.operation_id)
        {
            replayed.operations.push(Operation::new(requested.clone()));
            continue;
        }
        let Some(op) = replayed
            .operations
            .iter_mut()
            .find(|op| op.id() == record.operation_id())
        else {
            error!(
                operation_id = %record.operation_id(),
                record = %record.kind(),
                index,
                "journal record of an operation that was never requested left out"
            );
            replayed.refused.push(Refused { index, error: None });
            continue;
        };
        if let Err(err) = op.apply(record) {
            if matches!(op.state, State::Failed { .. }) {
                warn!(index, error = %err, "journal record after the operation ended refused");
            } else {
                error!(index, error = %err, "journal record refused: the operation is failed");
                op.fail_damaged(index, &err);
            }
            replayed.refused.push(Refused {
                index,
                error: Some(err),
            });
        }
    }
    replayed
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
