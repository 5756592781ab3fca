//! The state machine on its own: every transition, legal or not, over representative states of
//! a two-target operation; replay of damaged journals; and a property test that no sequence of
//! records, however damaged, makes an operation reclaimable without the full erase.
//! (Replay of real journals, and resuming from every prefix of one, is in `crate::tests`.)

use proptest::prelude::*;

use super::*;
use crate::config::{EraseConfig, TargetConfig, TargetKeys};
use crate::record::OperationSettings;
use jex_platform::blockdev::{MediaInfo, TargetIdentity, TargetKind};

const OP: &str = "0b7a5c1e-2d3f-4a5b-8c9d-0e1f2a3b4c5d";
const SIZES: [u64; 2] = [1 << 20, 512 << 10];

fn requested() -> RequestedRecord {
    RequestedRecord {
        operation_id: OP.into(),
        request_id: "req".into(),
        host_id: "host".into(),
        nonce_hex: "00".repeat(32),
        started_unix_ms: 1_700_000_000_000,
        pattern_key_sha256: "ab".repeat(32),
        previous_certificate_sha256: None,
        settings: OperationSettings::from_config(&EraseConfig::default()),
        targets: (0..SIZES.len())
            .map(|i| TargetConfig {
                name: format!("t{i}"),
                device: format!("/dev/t{i}").into(),
                keys: TargetKeys::Luks2 {
                    luks_uuid: "5b0c7a4e-1d2f-4e3a-9b8c-7d6e5f4a3b2c".into(),
                },
            })
            .collect(),
        device_erase: None,
        attest: None,
    }
}

fn pinned() -> Vec<PinnedTarget> {
    SIZES
        .iter()
        .enumerate()
        .map(|(i, size)| PinnedTarget {
            name: format!("t{i}"),
            identity: TargetIdentity {
                kind: TargetKind::File,
                dev: 1,
                ino: 100 + i as u64,
                rdev: 0,
                size_bytes: *size,
                serial: None,
            },
            io_align: 4096,
            media: MediaInfo {
                make: String::new(),
                model: "disk image".into(),
                serial: String::new(),
            },
            copy_on_write_fs: None,
        })
        .collect()
}

fn key_state() -> KeyState {
    KeyState {
        facts: [("keyslots".to_owned(), "1".to_owned())].into(),
    }
}

fn destruction() -> KeyDestruction {
    KeyDestruction {
        method: "fake".into(),
        tool: "fake 1.0".into(),
        evidence: Default::default(),
    }
}

// === Records ===

fn r_requested() -> Record {
    Record::Requested(requested())
}
fn r_pinned() -> Record {
    Record::TargetsPinned {
        operation_id: OP.into(),
        targets: pinned(),
    }
}
fn r_snapshot(target: &str) -> Record {
    Record::KeysSnapshot {
        operation_id: OP.into(),
        target: target.into(),
        state: key_state(),
    }
}
fn r_destroyed(count: usize) -> Record {
    Record::KeysDestroyed {
        operation_id: OP.into(),
        destructions: vec![destruction(); count],
    }
}
fn r_overwriting(target: u32, offset: u64) -> Record {
    Record::Overwriting {
        operation_id: OP.into(),
        target,
        offset,
    }
}
fn r_verifying() -> Record {
    Record::Verifying {
        operation_id: OP.into(),
    }
}
fn r_certified(outcome: Outcome) -> Record {
    Record::Certified {
        operation_id: OP.into(),
        outcome,
        certificate_sha256: "cd".repeat(32),
        finished_unix_ms: 1_700_000_100_000,
    }
}
fn r_reclaimable() -> Record {
    Record::Reclaimable {
        operation_id: OP.into(),
    }
}
fn r_awaiting() -> Record {
    Record::AwaitingDeviceErase {
        operation_id: OP.into(),
        prepare: StoredPrepareRecord {
            record_json: "{}".into(),
            signature_hex: "00".into(),
            signer_chain_der_hex: vec![],
            signature_algorithm: "ecdsa-p256-sha256".into(),
        },
        finished_unix_ms: 1_700_000_100_000,
    }
}
fn r_failed(phase: Phase) -> Record {
    Record::Failed {
        operation_id: OP.into(),
        phase,
        reason: "disk on fire".into(),
        finished_unix_ms: 1_700_000_200_000,
    }
}

/// The legal journal of a whole operation, in order.
fn full_journal() -> Vec<Record> {
    vec![
        r_requested(),
        r_pinned(),
        r_snapshot("t0"),
        r_snapshot("t1"),
        r_destroyed(2),
        r_overwriting(0, 0),
        r_overwriting(0, 256 << 10),
        r_overwriting(0, SIZES[0]),
        r_overwriting(1, 0),
        r_overwriting(1, SIZES[1]),
        r_verifying(),
        r_certified(Outcome::Erased),
        r_reclaimable(),
    ]
}

/// The operation after applying `records` (after the `requested` one), each of which must be
/// legal.
fn op_after(records: &[Record]) -> Operation {
    let mut op = Operation::new(requested());
    for record in records {
        op.apply(record).unwrap();
    }
    op
}

/// Representative states, named, with the records that lead there.
fn states() -> Vec<(&'static str, Operation)> {
    let journal = full_journal();
    let at = |n: usize| op_after(&journal[1..n]);
    let mut exceptions = at(11);
    exceptions
        .apply(&r_certified(Outcome::ErasedWithExceptions))
        .unwrap();
    let mut failed = at(6);
    failed.apply(&r_failed(Phase::Overwriting)).unwrap();
    vec![
        ("requested", at(1)),
        ("targets pinned", at(2)),
        ("one key snapshot of two", at(3)),
        ("both key snapshots", at(4)),
        ("keys destroyed", at(5)),
        ("overwrite started", at(6)),
        ("first target overwritten", at(8)),
        ("every target overwritten", at(10)),
        ("verifying", at(11)),
        ("certified ERASED", at(12)),
        ("certified with exceptions", exceptions),
        ("reclaimable", at(13)),
        ("failed", failed),
    ]
}

/// The record of `kind` most likely to follow `op`'s state.
fn natural_record(op: &Operation, kind: Step) -> Record {
    match kind {
        Step::Requested => r_requested(),
        Step::TargetsPinned => r_pinned(),
        Step::KeysSnapshot => {
            let done = match &op.state {
                State::KeysSnapshotted { snapshots, .. } => snapshots.len(),
                _ => 0,
            };
            r_snapshot(&format!("t{}", done.min(SIZES.len() - 1)))
        }
        Step::KeysDestroyed => r_destroyed(SIZES.len()),
        Step::Overwriting => match op.state.overwrite_checkpoint() {
            Some(at) if at.offset < SIZES[at.target as usize] => {
                r_overwriting(at.target, SIZES[at.target as usize])
            }
            Some(at) if (at.target as usize) + 1 < SIZES.len() => r_overwriting(at.target + 1, 0),
            Some(at) => r_overwriting(at.target, at.offset),
            None => r_overwriting(0, 0),
        },
        Step::Verifying => r_verifying(),
        Step::Certified => r_certified(Outcome::Erased),
        Step::Reclaimable => r_reclaimable(),
        Step::AwaitingDeviceErase => r_awaiting(),
        Step::Failed => r_failed(op.phase()),
    }
}

/// Whether a record of step `kind` may follow the state called `state` (a legal record leaves
/// the operation at its own step). Everything else is refused.
fn legal(state: &str, kind: Step) -> bool {
    matches!(
        (state, kind),
        (
            "requested"
                | "targets pinned"
                | "one key snapshot of two"
                | "both key snapshots"
                | "keys destroyed"
                | "overwrite started"
                | "first target overwritten"
                | "every target overwritten"
                | "verifying"
                | "certified ERASED",
            Step::Failed,
        ) | ("requested", Step::TargetsPinned)
            | (
                "targets pinned" | "one key snapshot of two",
                Step::KeysSnapshot
            )
            | ("both key snapshots", Step::KeysDestroyed)
            | (
                "keys destroyed"
                    | "overwrite started"
                    | "first target overwritten"
                    | "every target overwritten",
                Step::Overwriting,
            )
            | ("every target overwritten" | "verifying", Step::Verifying)
            | ("verifying", Step::Certified)
            | ("certified ERASED", Step::Reclaimable)
    )
}

#[test]
fn every_state_and_record_kind_is_a_legal_transition_or_refused_with_both_named() {
    let mut legal_count = 0;
    let mut refused_count = 0;
    for (name, op) in states() {
        for kind in Step::ALL {
            let record = natural_record(&op, kind);
            let mut next = op.clone();
            match (legal(name, kind), next.apply(&record)) {
                (true, Ok(())) => {
                    assert_eq!(next.state.kind(), kind, "{name} + {kind}");
                    legal_count += 1;
                }
                (false, Err(err)) => {
                    assert_eq!(
                        next, op,
                        "{name} + {kind}: a refused record changed the state"
                    );
                    assert_eq!(err.state, op.state.kind(), "{name} + {kind}");
                    assert_eq!(err.record, kind, "{name} + {kind}");
                    assert_eq!(err.operation_id, OP);
                    let message = err.to_string();
                    assert!(
                        message.contains(op.state.kind().as_str())
                            && message.contains(kind.as_str()),
                        "{message}"
                    );
                    refused_count += 1;
                }
                (true, Err(err)) => panic!("{name} + {kind} refused: {err}"),
                (false, Ok(())) => panic!("{name} + {kind} accepted: now {:?}", next.state.kind()),
            }
        }
    }
    assert_eq!(legal_count, 22);
    assert_eq!(legal_count + refused_count, 13 * Step::ALL.len());
}

#[test]
fn the_full_journal_walks_every_phase_in_order() {
    let journal = full_journal();
    let mut op = Operation::new(requested());
    let mut phases = vec![op.phase()];
    for record in &journal[1..] {
        op.apply(record).unwrap();
        phases.push(op.phase());
    }
    phases.dedup();
    assert_eq!(
        phases,
        [
            Phase::Requested,
            Phase::KeysDestroyed,
            Phase::Overwriting,
            Phase::Verifying,
            Phase::Certified,
            Phase::Reclaimable
        ]
    );
    assert!(op.has_ended());
    assert_eq!(op.outcome(), Some(Outcome::Erased));
    assert_eq!(op.state.pinned().unwrap(), pinned());
    assert_eq!(
        op.state.certification().unwrap().certificate_sha256,
        "cd".repeat(32)
    );
}

fn refusal(before: &[Record], record: Record) -> Refusal {
    let mut op = op_after(before);
    let unchanged = op.clone();
    let err = op.apply(&record).unwrap_err();
    assert_eq!(op, unchanged);
    err.refusal
}

#[test]
fn a_reclaimable_without_an_erased_certificate_is_refused() {
    let journal = full_journal();
    let verifying = &journal[1..11];
    assert_eq!(
        refusal(verifying, r_reclaimable()),
        Refusal::NoSuchTransition
    );
    let mut exceptions = verifying.to_vec();
    exceptions.push(r_certified(Outcome::ErasedWithExceptions));
    assert_eq!(
        refusal(&exceptions, r_reclaimable()),
        Refusal::NotErased(jex_attest::OUTCOME_ERASED_WITH_EXCEPTIONS)
    );
    assert_eq!(
        refusal(verifying, r_certified(Outcome::Failed)),
        Refusal::CertifiedOutcome(jex_attest::OUTCOME_FAILED)
    );
    let mut failed = verifying.to_vec();
    failed.push(r_failed(Phase::Verifying));
    assert_eq!(refusal(&failed, r_reclaimable()), Refusal::Ended);
}

#[test]
fn records_with_impossible_contents_are_refused() {
    let journal = full_journal();
    let mut wrong_targets = pinned();
    wrong_targets.swap(0, 1);
    assert!(matches!(
        refusal(
            &[],
            Record::TargetsPinned {
                operation_id: OP.into(),
                targets: wrong_targets
            }
        ),
        Refusal::PinnedTargets { .. }
    ));
    assert!(matches!(
        refusal(
            &[],
            Record::TargetsPinned {
                operation_id: OP.into(),
                targets: pinned()[..1].to_vec()
            }
        ),
        Refusal::PinnedTargets { .. }
    ));
    // Snapshots: in target order, never twice.
    assert_eq!(
        refusal(&journal[1..2], r_snapshot("t1")),
        Refusal::SnapshotOrder {
            expected: Some("t0".into()),
            got: "t1".into()
        }
    );
    assert_eq!(
        refusal(&journal[1..3], r_snapshot("t0")),
        Refusal::SnapshotOrder {
            expected: Some("t1".into()),
            got: "t0".into()
        }
    );
    assert_eq!(
        refusal(&journal[1..4], r_snapshot("t1")),
        Refusal::SnapshotOrder {
            expected: None,
            got: "t1".into()
        }
    );
    assert_eq!(
        refusal(&journal[1..3], r_destroyed(2)),
        Refusal::SnapshotsMissing {
            snapshots: 1,
            targets: 2
        }
    );
    assert_eq!(
        refusal(&journal[1..4], r_destroyed(1)),
        Refusal::Destructions {
            destructions: 1,
            targets: 2
        }
    );
    // The overwrite starts at the beginning, never goes back, never skips, stays in bounds.
    let destroyed = &journal[1..5];
    assert!(matches!(
        refusal(destroyed, r_overwriting(0, 4096)),
        Refusal::OverwriteStart {
            target: 0,
            offset: 4096
        }
    ));
    assert!(matches!(
        refusal(destroyed, r_overwriting(1, 0)),
        Refusal::OverwriteStart {
            target: 1,
            offset: 0
        }
    ));
    let halfway = &journal[1..7];
    assert!(matches!(
        refusal(halfway, r_overwriting(0, 4096)),
        Refusal::CheckpointOrder { .. }
    ));
    assert!(matches!(
        refusal(halfway, r_overwriting(1, 0)),
        Refusal::CheckpointOrder { .. }
    ));
    assert!(matches!(
        refusal(halfway, r_overwriting(0, SIZES[0] + 1)),
        Refusal::PastTheEnd { target: 0, .. }
    ));
    assert!(matches!(
        refusal(halfway, r_overwriting(2, 0)),
        Refusal::NoSuchTarget {
            target: 2,
            targets: 2
        }
    ));
    let second = &journal[1..9];
    assert!(matches!(
        refusal(second, r_overwriting(0, SIZES[0])),
        Refusal::CheckpointOrder { .. }
    ));
    assert!(matches!(
        refusal(halfway, r_verifying()),
        Refusal::OverwriteIncomplete { .. }
    ));
    assert!(matches!(
        refusal(&journal[1..9], r_verifying()),
        Refusal::OverwriteIncomplete { .. }
    ));
    assert!(matches!(
        refusal(destroyed, r_verifying()),
        Refusal::NoSuchTransition
    ));
    // A failure names the phase it happened in.
    assert_eq!(
        refusal(halfway, r_failed(Phase::Verifying)),
        Refusal::FailedPhase {
            journaled: Phase::Verifying,
            actual: Phase::Overwriting
        }
    );
    // Records of another operation never change this one.
    let mut other = r_verifying();
    if let Record::Verifying { operation_id } = &mut other {
        *operation_id = "another".into();
    }
    assert_eq!(
        refusal(&journal[1..11], other),
        Refusal::OtherOperation("another".into())
    );
}

#[test]
fn a_failure_keeps_what_was_known_and_ends_the_operation() {
    let journal = full_journal();
    let mut op = op_after(&journal[1..3]);
    op.apply(&r_failed(Phase::Requested)).unwrap();
    assert!(op.has_ended());
    assert_eq!(op.phase(), Phase::Failed);
    assert_eq!(op.outcome(), Some(Outcome::Failed));
    assert_eq!(op.state.pinned().unwrap(), pinned());
    assert_eq!(op.state.destroyed(), None);
    let failure = op.state.failure().unwrap();
    assert_eq!(failure.phase, Phase::Requested);
    assert_eq!(failure.reason, "disk on fire");
    assert_eq!(failure.finished_unix_ms, Some(1_700_000_200_000));

    // Failing after an ERASED certificate (the `reclaimable` record could not be written):
    // the certificate stays available, the host is not reclaimable.
    let mut op = op_after(&journal[1..12]);
    op.apply(&r_failed(Phase::Certified)).unwrap();
    assert_eq!(op.outcome(), Some(Outcome::Failed));
    assert!(op.state.certification().is_some());
    assert_eq!(
        op.apply(&r_reclaimable()).unwrap_err().refusal,
        Refusal::Ended
    );
}

#[test]
fn replay_rebuilds_each_operation_and_refuses_nothing_in_a_clean_journal() {
    let mut journal = full_journal();
    let mut second = requested();
    second.operation_id = "second".into();
    journal.push(Record::Requested(second));
    journal.push(Record::TargetsPinned {
        operation_id: "second".into(),
        targets: pinned(),
    });
    let replayed = replay(&journal);
    assert!(replayed.refused.is_empty(), "{:?}", replayed.refused);
    let kinds: Vec<Step> = replayed
        .operations
        .iter()
        .map(|op| op.state.kind())
        .collect();
    assert_eq!(kinds, [Step::Reclaimable, Step::TargetsPinned]);
}

#[test]
fn replay_fails_an_operation_at_its_first_refused_record_and_never_makes_it_reclaimable() {
    let journal = full_journal();
    // A hand-edited journal: the overwrite of target 0 is cut short, the rest is kept.
    let mut damaged = journal[..7].to_vec();
    damaged.extend_from_slice(&journal[8..]);
    let replayed = replay(&damaged);
    let op = &replayed.operations[0];
    assert_eq!(op.phase(), Phase::Failed);
    assert!(op.has_ended());
    let failure = op.state.failure().unwrap();
    assert_eq!(failure.phase, Phase::Overwriting);
    assert_eq!(failure.finished_unix_ms, None);
    assert!(
        failure.reason.contains("damaged")
            && failure.reason.contains("record 7")
            && failure.reason.contains("overwriting"),
        "{}",
        failure.reason
    );
    // The refused record and every later one of the operation are listed.
    let indexes: Vec<usize> = replayed.refused.iter().map(|r| r.index).collect();
    assert_eq!(indexes, (7..damaged.len()).collect::<Vec<_>>());
    assert!(replayed.refused.iter().all(|r| r.error.is_some()));
    assert_eq!(op.state.pinned().unwrap(), pinned());

    // A record of an operation never requested is left out, and listed.
    let mut orphan = journal.clone();
    orphan.insert(
        3,
        Record::Verifying {
            operation_id: "never-requested".into(),
        },
    );
    let replayed = replay(&orphan);
    assert_eq!(replayed.operations.len(), 1);
    assert_eq!(replayed.operations[0].phase(), Phase::Reclaimable);
    assert_eq!(
        replayed.refused,
        [Refused {
            index: 3,
            error: None
        }]
    );
}

// === Property: no journal makes an operation reclaimable without the whole erase ===

/// Records an operation's journal may hold, legal or not.
fn any_record() -> impl Strategy<Value = Record> {
    prop_oneof![
        Just(r_requested()),
        Just(r_pinned()),
        Just(r_snapshot("t0")),
        Just(r_snapshot("t1")),
        Just(r_destroyed(2)),
        Just(r_destroyed(1)),
        (
            0u32..3,
            prop_oneof![Just(0u64), Just(256 << 10), Just(SIZES[1]), Just(SIZES[0])]
        )
            .prop_map(|(t, o)| r_overwriting(t, o)),
        Just(r_verifying()),
        Just(r_certified(Outcome::Erased)),
        Just(r_certified(Outcome::ErasedWithExceptions)),
        Just(r_reclaimable()),
        prop::sample::select(Phase::ALL.to_vec()).prop_map(r_failed),
    ]
}

/// Independently of the state machine: the records up to the first `reclaimable` hold the
/// whole erase, in order.
fn whole_erase_before_reclaimable(records: &[Record]) -> bool {
    let Some(end) = records
        .iter()
        .position(|r| matches!(r, Record::Reclaimable { .. }))
    else {
        return false;
    };
    let before = &records[..end];
    let position = |f: &dyn Fn(&Record) -> bool| before.iter().position(f);
    let destroyed = position(
        &|r| matches!(r, Record::KeysDestroyed { destructions, .. } if destructions.len() == 2),
    );
    let complete = position(
        &|r| matches!(r, Record::Overwriting { target: 1, offset, .. } if *offset == SIZES[1]),
    );
    let first_complete = position(
        &|r| matches!(r, Record::Overwriting { target: 0, offset, .. } if *offset == SIZES[0]),
    );
    let verifying = before
        .iter()
        .rposition(|r| matches!(r, Record::Verifying { .. }));
    let certified = before.iter().rposition(|r| {
        matches!(
            r,
            Record::Certified {
                outcome: Outcome::Erased,
                ..
            }
        )
    });
    let failed = before.iter().any(|r| matches!(r, Record::Failed { .. }));
    match (destroyed, first_complete, complete, verifying, certified) {
        (Some(d), Some(f), Some(c), Some(v), Some(e)) => {
            d < f && f < c && c < v && v < e && !failed
        }
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_journal_is_reclaimable_without_the_whole_erase(
        tail in prop::collection::vec(any_record(), 0..24),
        legal_prefix in 0usize..13,
    ) {
        // A legal prefix makes deep states likely; the tail is arbitrary.
        let mut records = full_journal()[..=legal_prefix].to_vec();
        records.extend(tail);
        let replayed = replay(&records);
        prop_assert_eq!(replayed.operations.len(), 1);
        let op = &replayed.operations[0];
        if op.phase() == Phase::Reclaimable {
            prop_assert!(replayed.refused.is_empty());
            prop_assert!(whole_erase_before_reclaimable(&records), "{:?}", records);
        }
        if !replayed.refused.is_empty() {
            prop_assert_eq!(op.phase(), Phase::Failed);
        }
    }
}

fn device_erase() -> crate::config::InternalSsdConfig {
    crate::config::InternalSsdConfig {
        method: crate::config::InternalSsdMethod::DeviceErase,
        inventory_devices: vec!["/dev/internal".into()],
        allowed_accounts: vec!["root".into()],
        accounts_file: "/etc/passwd".into(),
    }
}

/// An operation whose internal SSD awaits a device erase, after `records` (the full journal
/// up to `certified` ERASED, by default).
fn with_device_erase(targets: bool) -> Operation {
    let mut requested = requested();
    requested.device_erase = Some(device_erase());
    if !targets {
        requested.targets.clear();
    }
    Operation::new(requested)
}

#[test]
fn with_a_device_erase_a_certified_operation_awaits_it_and_is_never_reclaimable_here() {
    let journal = full_journal();
    let mut op = with_device_erase(true);
    for record in &journal[1..12] {
        op.apply(record).unwrap();
    }
    assert_eq!(op.phase(), Phase::Certified);
    let err = op.next_state(&r_reclaimable()).unwrap_err();
    assert_eq!(err.refusal, Refusal::DeviceEraseDue);
    assert!(
        err.to_string().contains("never marks the host reclaimable"),
        "{err}"
    );

    op.apply(&r_awaiting()).unwrap();
    assert_eq!(op.phase(), Phase::AwaitingDeviceErase);
    assert_eq!(op.state.kind(), Step::AwaitingDeviceErase);
    assert!(op.has_ended());
    assert_eq!(
        op.outcome(),
        None,
        "the fresh OS's agent decides the outcome"
    );
    assert!(
        op.state.certification().is_some(),
        "its targets' certificate is kept"
    );
    assert!(op.state.prepare_record().is_some());
    // Ended here: nothing follows, not even a failure.
    for record in [
        r_reclaimable(),
        r_failed(Phase::AwaitingDeviceErase),
        r_awaiting(),
    ] {
        assert_eq!(op.next_state(&record).unwrap_err().refusal, Refusal::Ended);
    }
}

#[test]
fn a_device_erase_with_no_targets_awaits_it_straight_after_the_request() {
    let mut op = with_device_erase(false);
    op.apply(&r_awaiting()).unwrap();
    assert_eq!(op.phase(), Phase::AwaitingDeviceErase);
    assert!(op.state.certification().is_none() && op.state.pinned().is_none());
    // With targets, the request alone is not enough: they are erased first.
    let with_targets = with_device_erase(true);
    assert_eq!(
        with_targets.next_state(&r_awaiting()).unwrap_err().refusal,
        Refusal::NoSuchTransition
    );
}

#[test]
fn without_a_device_erase_nothing_awaits_one() {
    let journal = full_journal();
    let certified = op_after(&journal[1..12]);
    assert_eq!(
        certified.next_state(&r_awaiting()).unwrap_err().refusal,
        Refusal::NoDeviceErase
    );
    let mut exceptions = with_device_erase(true);
    for record in &journal[1..11] {
        exceptions.apply(record).unwrap();
    }
    exceptions
        .apply(&r_certified(Outcome::ErasedWithExceptions))
        .unwrap();
    assert_eq!(
        exceptions.next_state(&r_awaiting()).unwrap_err().refusal,
        Refusal::NotErased("ERASED_WITH_EXCEPTIONS"),
        "erased with exceptions: no device erase is prepared"
    );
}
