//! The journal record schema: what the erase engine writes to `journal.log` (framing in
//! [`crate::journal`]), plus the public [`Phase`] and [`Outcome`] names the records carry.
//!
//! Each record is one JSON object tagged by `record`, e.g.
//!
//! ```text
//! {"record":"overwriting","operation_id":"5b0c…","target":0,"offset":268435456}
//! ```
//!
//! Records of one operation, in order (each durable before the step it announces runs; the
//! legal sequences are enforced by [`crate::state`]):
//!
//! | record | written | on resume |
//! |---|---|---|
//! | `requested` | by `terminate`, after the key file | pin the targets |
//! | `targets_pinned` | identities and media facts probed | compare identities |
//! | `keys_snapshot` (per target, in order) | before `destroy()` | reuse it, never re-snapshot |
//! | `keys_destroyed` | every target's destruction verified | start or continue the overwrite |
//! | `overwriting {target, offset}` | before the first write of a target, then after each durable flush | continue from `offset` |
//! | `verifying` | before the first read-back, again at every restart | verify again, in full |
//! | `certified` | after the certificate file is durable | mark reclaimable if `ERASED` |
//! | `reclaimable` | last | nothing |
//! | `failed` | from any step | nothing: terminal, never reclaimable |
//!
//! Field names and tags are a durable format: a journal written by one version is replayed by
//! the next. Add fields with `#[serde(default)]`; never rename.

use crate::config::{EraseConfig, InternalSsdConfig, TargetConfig};
use crate::keys::{KeyDestruction, KeyState};
use crate::names::named_enum;
use jex_platform::blockdev::{MediaInfo, TargetIdentity};

/// One journal record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "records are written one at a time and replayed once at start; a journal holds a few hundred"
)]
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
    /// This agent's half of a device erase is done: the storage inventory is recorded and
    /// signed, and the device erase is due. Ends the operation here (the agent of the fresh OS
    /// attests it); never followed by `reclaimable`.
    AwaitingDeviceErase {
        /// The operation.
        operation_id: String,
        /// The signed prepare record handed to the controller.
        prepare: StoredPrepareRecord,
        /// When it was signed.
        finished_unix_ms: u64,
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
            | Record::AwaitingDeviceErase { operation_id, .. }
            | Record::Failed { operation_id, .. } => operation_id,
        }
    }

    /// Which kind of record this is.
    pub fn kind(&self) -> Step {
        match self {
            Record::Requested(_) => Step::Requested,
            Record::TargetsPinned { .. } => Step::TargetsPinned,
            Record::KeysSnapshot { .. } => Step::KeysSnapshot,
            Record::KeysDestroyed { .. } => Step::KeysDestroyed,
            Record::Overwriting { .. } => Step::Overwriting,
            Record::Verifying { .. } => Step::Verifying,
            Record::Certified { .. } => Step::Certified,
            Record::Reclaimable { .. } => Step::Reclaimable,
            Record::AwaitingDeviceErase { .. } => Step::AwaitingDeviceErase,
            Record::Failed { .. } => Step::Failed,
        }
    }
}

named_enum! {
    /// The steps of an operation, in order, named as the journal's `record` tag: the kind of a
    /// [`Record`] without its data, and the step a [`crate::state::State`] is at (that of the
    /// record that brought it there). One enum for both, so no second table of names exists.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Step {
        /// [`Record::Requested`].
        Requested => "requested",
        /// [`Record::TargetsPinned`].
        TargetsPinned => "targets_pinned",
        /// [`Record::KeysSnapshot`].
        KeysSnapshot => "keys_snapshot",
        /// [`Record::KeysDestroyed`].
        KeysDestroyed => "keys_destroyed",
        /// [`Record::Overwriting`].
        Overwriting => "overwriting",
        /// [`Record::Verifying`].
        Verifying => "verifying",
        /// [`Record::Certified`].
        Certified => "certified",
        /// [`Record::Reclaimable`].
        Reclaimable => "reclaimable",
        /// [`Record::AwaitingDeviceErase`].
        AwaitingDeviceErase => "awaiting_device_erase",
        /// [`Record::Failed`].
        Failed => "failed",
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
    /// The internal SSD's device erase, as configured when accepted (absent from journals
    /// written before it existed: none).
    #[serde(default)]
    pub device_erase: Option<InternalSsdConfig>,
    /// Set for an attestation (`AttestErase` on the fresh OS's agent): the prepare record of
    /// the device erase it attests. Such an operation has no targets of its own and goes from
    /// `requested` straight to `certified` (absent from journals written before it existed).
    #[serde(default)]
    pub attest: Option<StoredPrepareRecord>,
}

/// A signed prepare record as the journal keeps it: the canonical JSON as text (it is UTF-8),
/// the signature and chain in hex.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredPrepareRecord {
    /// The record's canonical JSON, exactly as signed.
    pub record_json: String,
    /// The signature, hex.
    pub signature_hex: String,
    /// The signer's chain, leaf first, DER in hex.
    pub signer_chain_der_hex: Vec<String>,
    /// `ecdsa-p256-sha256`.
    pub signature_algorithm: String,
}

impl StoredPrepareRecord {
    /// The journal form of `signed`.
    pub fn from_signed(signed: &jex_reclaim::SignedPrepareRecord) -> Self {
        StoredPrepareRecord {
            record_json: String::from_utf8_lossy(&signed.record_json).into_owned(),
            signature_hex: hex::encode(&signed.signature),
            signer_chain_der_hex: signed.signer_chain_der.iter().map(hex::encode).collect(),
            signature_algorithm: signed.signature_algorithm.clone(),
        }
    }

    /// Back to the signed record; `None` when the journal's hex is damaged.
    pub fn to_signed(&self) -> Option<jex_reclaim::SignedPrepareRecord> {
        Some(jex_reclaim::SignedPrepareRecord {
            record_json: self.record_json.as_bytes().to_vec(),
            signature: hex::decode(&self.signature_hex).ok()?,
            signer_chain_der: self
                .signer_chain_der_hex
                .iter()
                .map(|der| hex::decode(der).ok())
                .collect::<Option<Vec<_>>>()?,
            signature_algorithm: self.signature_algorithm.clone(),
        })
    }
}

/// Settings snapshotted into the journal so that a resume uses the same ones.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OperationSettings {
    /// Overwrite write size.
    pub chunk_bytes: u64,
    /// Overwrite checkpoint distance.
    pub checkpoint_bytes: u64,
    /// I/Os in flight (absent from journals written before it existed: 1, as they ran).
    #[serde(default = "serial")]
    pub queue_depth: u32,
    /// Pattern threads; 0 = one per core.
    #[serde(default)]
    pub cpu_threads: u32,
    /// Verification strata.
    pub verify_strata: u64,
    /// Verification locations per stratum.
    pub verify_locations_per_stratum: u32,
    /// Verification coverage, percent.
    pub verify_coverage_percent: Option<f64>,
    /// Verification block size.
    pub verify_block_bytes: u64,
}

fn serial() -> u32 {
    1
}

impl OperationSettings {
    /// The settings of `config`, as a new operation journals them.
    pub fn from_config(config: &EraseConfig) -> Self {
        OperationSettings {
            chunk_bytes: config.chunk_bytes,
            checkpoint_bytes: config.checkpoint_bytes,
            queue_depth: config.queue_depth,
            cpu_threads: config.cpu_threads,
            verify_strata: config.verify_strata,
            verify_locations_per_stratum: config.verify_locations_per_stratum,
            verify_coverage_percent: config.verify_coverage_percent,
            verify_block_bytes: config.verify_block_bytes,
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

named_enum! {
    /// The erase state machine's phases, as reported to the controller and journaled in
    /// [`Record::Failed`] (by these names). [`crate::state::State`] refines `Requested` into the
    /// steps before key destruction.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Phase: serde {
        /// Accepted and journaled.
        Requested => "requested",
        /// Every key destroyed and checked.
        KeysDestroyed => "keys_destroyed",
        /// Overwriting.
        Overwriting => "overwriting",
        /// Reading back.
        Verifying => "verifying",
        /// Certificate signed.
        Certified => "certified",
        /// Done: the host can be reclaimed.
        Reclaimable => "reclaimable",
        /// Failed; see the reason.
        Failed => "failed",
        /// This agent's half of a device erase is done; the device erase is due.
        AwaitingDeviceErase => "awaiting_device_erase",
    }
}

named_enum! {
    /// How an operation ended, by the certificate's spelling ([`jex_attest::OUTCOME_ERASED`],
    /// [`jex_attest::OUTCOME_ERASED_WITH_EXCEPTIONS`], [`jex_attest::OUTCOME_FAILED`]), which
    /// is also the journal's.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Outcome: serde {
        /// Keys destroyed, overwritten, verified: the host is reclaimable.
        Erased => jex_attest::OUTCOME_ERASED,
        /// Erased with exceptions (listed); the host is not reclaimable.
        ErasedWithExceptions => jex_attest::OUTCOME_ERASED_WITH_EXCEPTIONS,
        /// Failed; the host is not reclaimable.
        Failed => jex_attest::OUTCOME_FAILED,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The serde spelling (what the journal and certificates hold) is the one `as_str` gives,
    /// and for outcomes the one the certificate verifier accepts.
    #[test]
    fn outcome_spellings_are_the_certificate_constants() {
        let expected = [
            (Outcome::Erased, jex_attest::OUTCOME_ERASED),
            (
                Outcome::ErasedWithExceptions,
                jex_attest::OUTCOME_ERASED_WITH_EXCEPTIONS,
            ),
            (Outcome::Failed, jex_attest::OUTCOME_FAILED),
        ];
        assert_eq!(expected.len(), Outcome::ALL.len());
        for (outcome, constant) in expected {
            assert_eq!(
                serde_json::to_value(outcome).unwrap(),
                serde_json::Value::String(constant.to_owned()),
                "{outcome:?}"
            );
            let back: Outcome = serde_json::from_value(constant.into()).unwrap();
            assert_eq!(back, outcome);
        }
    }

    #[test]
    fn phase_names_in_logs_are_the_journal_spelling() {
        for phase in Phase::ALL {
            assert_eq!(
                serde_json::to_value(phase).unwrap(),
                serde_json::Value::String(phase.to_string()),
            );
        }
        let failed = Record::Failed {
            operation_id: "op".into(),
            phase: Phase::KeysDestroyed,
            reason: "r".into(),
            finished_unix_ms: 1,
        };
        let json = serde_json::to_value(&failed).unwrap();
        assert_eq!(json["phase"], "keys_destroyed");
    }

    #[test]
    fn record_kinds_display_as_the_journal_tag() {
        let samples = [
            Record::Requested(RequestedRecord {
                operation_id: "op".into(),
                request_id: "req".into(),
                host_id: "h".into(),
                nonce_hex: String::new(),
                started_unix_ms: 0,
                pattern_key_sha256: String::new(),
                previous_certificate_sha256: None,
                settings: OperationSettings::from_config(&EraseConfig::default()),
                targets: vec![],
                device_erase: None,
                attest: None,
            }),
            Record::TargetsPinned {
                operation_id: "op".into(),
                targets: vec![],
            },
            Record::KeysSnapshot {
                operation_id: "op".into(),
                target: "t".into(),
                state: KeyState {
                    facts: Default::default(),
                },
            },
            Record::KeysDestroyed {
                operation_id: "op".into(),
                destructions: vec![],
            },
            Record::Overwriting {
                operation_id: "op".into(),
                target: 0,
                offset: 0,
            },
            Record::Verifying {
                operation_id: "op".into(),
            },
            Record::Certified {
                operation_id: "op".into(),
                outcome: Outcome::Erased,
                certificate_sha256: String::new(),
                finished_unix_ms: 0,
            },
            Record::Reclaimable {
                operation_id: "op".into(),
            },
            Record::AwaitingDeviceErase {
                operation_id: "op".into(),
                prepare: StoredPrepareRecord {
                    record_json: "{}".into(),
                    signature_hex: "00".into(),
                    signer_chain_der_hex: vec!["01".into()],
                    signature_algorithm: "ecdsa-p256-sha256".into(),
                },
                finished_unix_ms: 0,
            },
            Record::Failed {
                operation_id: "op".into(),
                phase: Phase::Requested,
                reason: String::new(),
                finished_unix_ms: 0,
            },
        ];
        let kinds: Vec<Step> = samples.iter().map(Record::kind).collect();
        assert_eq!(kinds, Step::ALL);
        for record in &samples {
            let json = serde_json::to_value(record).unwrap();
            assert_eq!(json["record"], record.kind().to_string(), "{record:?}");
            assert_eq!(record.operation_id(), "op");
            let back: Record = serde_json::from_value(json).unwrap();
            assert_eq!(&back, record);
        }
    }
}
