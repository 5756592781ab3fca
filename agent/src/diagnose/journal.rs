//! The erase journal's summary: what each operation is, where it got to and how it ended,
//! from a whitelist of record fields.
//!
//! Every field written here is named below; a record is never serialized whole. Left out on
//! purpose: the controller's nonce (`nonce_hex`), the pattern key's commitment
//! (`pattern_key_sha256`), key snapshots and key-destruction evidence, the signed prepare record
//! of a device erase (its JSON holds the nonce), and the pinned media facts (serial numbers).

use serde::Serialize;

use jex_erase::record::{Record, Step};

/// One operation of the journal, as the bundle shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OperationSummary {
    /// The operation id.
    pub operation_id: String,
    /// The controller's idempotency key.
    pub request_id: Option<String>,
    /// The host id the controller named.
    pub host_id: Option<String>,
    /// `erase`, or `attest` for the second half of a device erase.
    pub kind: &'static str,
    /// When the Terminate was accepted.
    pub started_unix_ms: Option<u64>,
    /// The same, RFC 3339 UTC.
    pub started_at: Option<String>,
    /// The targets as configured then: name, backend, device path.
    pub targets: Vec<TargetSummary>,
    /// Whether the internal SSD's device erase is part of it.
    pub device_erase: bool,
    /// The step of the last record (`overwriting`, `certified`, `failed`, …).
    pub last_step: String,
    /// Records of this operation in the journal.
    pub records: u64,
    /// Targets whose key state was snapshotted before destruction, by name.
    pub keys_snapshotted: Vec<String>,
    /// Every target's keys destroyed and checked.
    pub keys_destroyed: bool,
    /// Overwrite progress: the last durable offset of each target reached.
    pub overwrite: Vec<OverwriteProgress>,
    /// Times the read-back (re)started.
    pub verifications_started: u64,
    /// `ERASED`, `ERASED_WITH_EXCEPTIONS` or `FAILED`, once known.
    pub outcome: Option<String>,
    /// When it ended.
    pub finished_unix_ms: Option<u64>,
    /// The same, RFC 3339 UTC.
    pub finished_at: Option<String>,
    /// Where and why it failed.
    pub failure: Option<FailureSummary>,
    /// The host was marked reclaimable.
    pub reclaimable: bool,
    /// This agent's half of a device erase is done; the device erase is due.
    pub awaiting_device_erase: bool,
}

/// A target of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetSummary {
    /// Its name.
    pub name: String,
    /// `luks2` or `apfs-volume`.
    pub backend: String,
    /// The device or image path.
    pub device: String,
}

/// How far the overwrite of one target got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverwriteProgress {
    /// Target index in config order.
    pub target: u32,
    /// Its name, when the request names it.
    pub name: Option<String>,
    /// Bytes durable.
    pub offset: u64,
}

/// A failed operation's phase and reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureSummary {
    /// The phase it failed in.
    pub phase: String,
    /// Why.
    pub reason: String,
}

/// Milliseconds since the epoch as RFC 3339 UTC.
pub fn rfc3339_ms(ms: u64) -> Option<String> {
    let nanos = i128::from(ms).checked_mul(1_000_000)?;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Every operation of `records`, in the order they first appear.
pub fn summarize(records: &[Record]) -> Vec<OperationSummary> {
    let mut ops: Vec<OperationSummary> = Vec::new();
    for record in records {
        let id = record.operation_id();
        let index = match ops.iter().position(|o| o.operation_id == id) {
            Some(i) => i,
            None => {
                ops.push(OperationSummary {
                    operation_id: id.to_owned(),
                    kind: "erase",
                    ..Default::default()
                });
                ops.len() - 1
            }
        };
        let op = &mut ops[index];
        op.records += 1;
        op.last_step = record.kind().to_string();
        match record {
            Record::Requested(r) => {
                op.request_id = Some(r.request_id.clone());
                op.host_id = Some(r.host_id.clone());
                op.started_unix_ms = Some(r.started_unix_ms);
                op.started_at = rfc3339_ms(r.started_unix_ms);
                op.targets = r
                    .targets
                    .iter()
                    .map(|t| TargetSummary {
                        name: t.name.clone(),
                        backend: t.keys.backend().to_string(),
                        device: t.device.display().to_string(),
                    })
                    .collect();
                op.device_erase = r.device_erase.is_some();
                if r.attest.is_some() {
                    op.kind = "attest";
                }
            }
            Record::TargetsPinned { .. } => {}
            Record::KeysSnapshot { target, .. } => op.keys_snapshotted.push(target.clone()),
            Record::KeysDestroyed { .. } => op.keys_destroyed = true,
            Record::Overwriting { target, offset, .. } => {
                let name = op.targets.get(*target as usize).map(|t| t.name.clone());
                match op.overwrite.iter_mut().find(|p| p.target == *target) {
                    Some(p) => p.offset = *offset,
                    None => op.overwrite.push(OverwriteProgress {
                        target: *target,
                        name,
                        offset: *offset,
                    }),
                }
            }
            Record::Verifying { .. } => op.verifications_started += 1,
            Record::Certified {
                outcome,
                finished_unix_ms,
                ..
            } => {
                op.outcome = Some(outcome.to_string());
                op.finished_unix_ms = Some(*finished_unix_ms);
                op.finished_at = rfc3339_ms(*finished_unix_ms);
            }
            Record::Reclaimable { .. } => op.reclaimable = true,
            Record::AwaitingDeviceErase {
                finished_unix_ms, ..
            } => {
                op.awaiting_device_erase = true;
                op.finished_unix_ms = Some(*finished_unix_ms);
                op.finished_at = rfc3339_ms(*finished_unix_ms);
            }
            Record::Failed {
                phase,
                reason,
                finished_unix_ms,
                ..
            } => {
                op.outcome = Some(jex_erase::record::Outcome::Failed.to_string());
                op.failure = Some(FailureSummary {
                    phase: phase.to_string(),
                    reason: reason.clone(),
                });
                op.finished_unix_ms = Some(*finished_unix_ms);
                op.finished_at = rfc3339_ms(*finished_unix_ms);
            }
        }
    }
    ops
}

/// Whether `step` ends an operation (nothing follows it).
pub fn is_final(step: &str) -> bool {
    [Step::Reclaimable, Step::Failed, Step::AwaitingDeviceErase]
        .iter()
        .any(|s| s.as_str() == step)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use jex_erase::record::{
        OperationSettings, Outcome, Phase, RequestedRecord, StoredPrepareRecord,
    };
    use jex_erase::{EraseConfig, TargetConfig, TargetKeys};

    const NONCE_HEX: &str = "6e6f6e63652d6e6f6e63652d6e6f6e63652d6e6f6e63652d6e6f6e63652d3031";
    const KEY_SHA: &str = "aa11bb22cc33dd44ee55ff6600112233445566778899aabbccddeeff00112233";
    const PREPARE_SIG: &str = "3045022100deadbeefdeadbeefdeadbeef";

    fn journal() -> Vec<Record> {
        let op = |s: &str| s.to_owned();
        vec![
            Record::Requested(RequestedRecord {
                operation_id: op("op-1"),
                request_id: op("req-1"),
                host_id: op("h-1"),
                nonce_hex: NONCE_HEX.to_owned(),
                started_unix_ms: 1_700_000_000_000,
                pattern_key_sha256: KEY_SHA.to_owned(),
                previous_certificate_sha256: None,
                settings: OperationSettings::from_config(&EraseConfig::default()),
                targets: vec![TargetConfig {
                    name: op("tenant"),
                    device: "/dev/loop7".into(),
                    keys: TargetKeys::Luks2 {
                        luks_uuid: op("9f5d0c8e-3a1b-4c2d-8e7f-0a1b2c3d4e5f"),
                    },
                }],
                device_erase: None,
                attest: None,
            }),
            Record::KeysSnapshot {
                operation_id: op("op-1"),
                target: op("tenant"),
                state: jex_erase::keys::KeyState {
                    facts: [(op("keyslot_digest"), op("SECRET-FACT"))].into(),
                },
            },
            Record::KeysDestroyed {
                operation_id: op("op-1"),
                destructions: vec![],
            },
            Record::Overwriting {
                operation_id: op("op-1"),
                target: 0,
                offset: 0,
            },
            Record::Overwriting {
                operation_id: op("op-1"),
                target: 0,
                offset: 2 << 20,
            },
            Record::Verifying {
                operation_id: op("op-1"),
            },
            Record::Certified {
                operation_id: op("op-1"),
                outcome: Outcome::Erased,
                certificate_sha256: op("c0ffee"),
                finished_unix_ms: 1_700_000_060_000,
            },
            Record::Reclaimable {
                operation_id: op("op-1"),
            },
            Record::AwaitingDeviceErase {
                operation_id: op("op-2"),
                prepare: StoredPrepareRecord {
                    record_json: format!("{{\"nonce\":\"{NONCE_HEX}\"}}"),
                    signature_hex: PREPARE_SIG.to_owned(),
                    signer_chain_der_hex: vec![op("3082")],
                    signature_algorithm: op("ecdsa-p256-sha256"),
                },
                finished_unix_ms: 1_700_000_100_000,
            },
            Record::Failed {
                operation_id: op("op-3"),
                phase: Phase::Overwriting,
                reason: op("target replaced"),
                finished_unix_ms: 1_700_000_200_000,
            },
        ]
    }

    #[test]
    fn the_summary_keeps_ids_targets_steps_and_outcomes() {
        let ops = summarize(&journal());
        assert_eq!(ops.len(), 3);
        let first = &ops[0];
        assert_eq!(first.operation_id, "op-1");
        assert_eq!(first.request_id.as_deref(), Some("req-1"));
        assert_eq!(
            first.targets,
            vec![TargetSummary {
                name: "tenant".into(),
                backend: "luks2".into(),
                device: "/dev/loop7".into(),
            }]
        );
        assert_eq!(first.last_step, "reclaimable");
        assert!(is_final(&first.last_step));
        assert_eq!(first.records, 8);
        assert_eq!(first.keys_snapshotted, vec!["tenant"]);
        assert!(first.keys_destroyed && first.reclaimable);
        assert_eq!(
            first.overwrite,
            vec![OverwriteProgress {
                target: 0,
                name: Some("tenant".into()),
                offset: 2 << 20
            }]
        );
        assert_eq!(first.verifications_started, 1);
        assert_eq!(first.outcome.as_deref(), Some("ERASED"));
        assert_eq!(first.started_at.as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(first.finished_at.as_deref(), Some("2023-11-14T22:14:20Z"));
        assert!(ops[1].awaiting_device_erase);
        assert_eq!(
            ops[2].failure,
            Some(FailureSummary {
                phase: "overwriting".into(),
                reason: "target replaced".into()
            })
        );
        assert_eq!(ops[2].outcome.as_deref(), Some("FAILED"));
        assert!(!is_final("overwriting"));
    }

    #[test]
    fn the_summary_holds_no_nonce_pattern_commitment_key_facts_or_prepare_record() {
        let json = serde_json::to_string(&summarize(&journal())).unwrap();
        for secret in [
            NONCE_HEX,
            KEY_SHA,
            PREPARE_SIG,
            "SECRET-FACT",
            "keyslot_digest",
            "9f5d0c8e-3a1b-4c2d-8e7f-0a1b2c3d4e5f",
            "c0ffee",
            "nonce",
            "pattern",
        ] {
            assert!(!json.contains(secret), "{secret} in {json}");
        }
        // The same records serialized whole do hold them: the whitelist is what keeps them out.
        let whole = serde_json::to_string(&journal()).unwrap();
        assert!(
            whole.contains(NONCE_HEX) && whole.contains(KEY_SHA) && whole.contains(PREPARE_SIG)
        );
    }
}
