//! Crash safety of the erase engine: a child process runs an erase on real disk images with
//! real direct I/O and is killed with SIGKILL at randomised points (after a chosen journal record
//! appears, plus a random delay, or at a random time), then restarted on the same state
//! directory, until the erase finishes. Meanwhile the parent reads the journal and checks that
//! the state machine is never violated: nothing is reclaimable before a complete overwrite was
//! verified and certified, and nothing fails. Every trial must end `ERASED` with a certificate
//! whose signature verifies and images that hold exactly the certified pattern.
//!
//! The child is this test binary re-executed with `--ignored --exact crash_child_runs_erase`.

#![allow(clippy::unwrap_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use jex_attest::{HostIdentity, SignedCertificate};
use jex_erase::journal::Journal;
use jex_erase::layout::JOURNAL_FILE;
use jex_erase::pattern::{Pattern, PatternKey};
use jex_erase::record::{Record, Step};
use jex_erase::testing::{FakeKeys, load_test_signer, test_signer_ca, write_test_signer};
use jex_erase::{
    EraseConfig, EraseDeps, EraseService, Outcome, Phase, TargetConfig, TargetKeys,
    TerminateCommand,
};

const CHILD_ENV: &str = "JEX_ERASE_CRASH_DIR";
const CHILD_TEST: &str = "crash_child_runs_erase";
const HOST: &str = "crash-host";
const REQUEST: &str = "crash-request";
const UUID: &str = "0d7c6b5a-4e3f-4a2b-9c1d-0e9f8a7b6c5d";
const TRIALS: usize = 24;
const IMAGE_SIZES: [u64; 2] = [2 << 20, 1 << 20];
const TENANT_BYTE: u8 = 0x3c;

// === Shared by parent and child ===

fn image_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("tenant{index}.img"))
}

fn config(dir: &Path) -> EraseConfig {
    EraseConfig {
        state_dir: dir.join("state"),
        chunk_bytes: 64 * 1024,
        checkpoint_bytes: 128 * 1024,
        // Several writes in flight, completing out of order, whenever a kill lands.
        queue_depth: 4,
        verify_block_bytes: 64 * 1024,
        targets: (0..IMAGE_SIZES.len())
            .map(|i| TargetConfig {
                name: format!("tenant{i}"),
                device: image_path(dir, i),
                keys: TargetKeys::Luks2 {
                    luks_uuid: UUID.to_owned(),
                },
            })
            .collect(),
        ..EraseConfig::default()
    }
}

fn host() -> HostIdentity {
    HostIdentity {
        host_id: HOST.to_owned(),
        hardware_uuid: "00000000-0000-4000-8000-00000000c0de".to_owned(),
        serial_number: "CRASHTEST01".to_owned(),
        model: "Mac15,12".to_owned(),
        os: "Linux test".to_owned(),
        agent_version: jex_erase::AGENT_VERSION.to_owned(),
    }
}

fn nonce() -> Vec<u8> {
    (100u8..140).collect()
}

// === Child ===

#[test]
#[ignore = "child process of sigkill_at_random_points_always_ends_erased_never_reclaimable_early"]
fn crash_child_runs_erase() {
    let dir = PathBuf::from(
        std::env::var(CHILD_ENV).expect("run by the sigkill test, which sets JEX_ERASE_CRASH_DIR"),
    );
    // Key destruction survives the process, like a real `luksErase`, and takes a few
    // milliseconds so that kills can land inside it.
    let keys = FakeKeys::new()
        .persist_in(&dir)
        .on_destroy(Arc::new(|| std::thread::sleep(Duration::from_millis(15))));
    let deps = EraseDeps {
        signer: Arc::new(load_test_signer(&dir)),
        host: host(),
        key_destroyer_factory: keys.factory(),
        fleet_ca: None,
    };
    let service = EraseService::open(config(&dir), deps).unwrap();
    let existing = service.current_operation_id();
    let view = service
        .terminate(TerminateCommand {
            request_id: REQUEST.to_owned(),
            host_id: HOST.to_owned(),
            nonce: nonce(),
        })
        .unwrap();
    if let Some(existing) = existing {
        assert_eq!(existing, view.operation_id, "same request, same operation");
    }
    let rx = service.watch(Some(&view.operation_id)).unwrap();
    loop {
        let view = rx.borrow().clone();
        match view.phase {
            Phase::Reclaimable => return,
            Phase::Failed => panic!("erase failed: {:?}", view.failure_reason),
            Phase::Certified if view.outcome != Some(Outcome::Erased) => {
                panic!("erase certified with exceptions: {:?}", view.exceptions)
            }
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

// === Parent ===

/// Where to kill the child.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// After the n-th journal record (1-based) is durable, plus a delay.
    AfterRecords(usize, Duration),
    /// A delay after the child was started.
    AfterStart(Duration),
}

fn rank(record: &Record) -> usize {
    Step::ALL
        .iter()
        .position(|kind| *kind == record.kind())
        .unwrap_or(usize::MAX)
}

/// Checks the safety invariants on a journal prefix.
fn check_invariants(records: &[Record]) -> Result<(), String> {
    // The engine's own state machine accepts every record.
    let replayed = jex_erase::state::replay(records);
    if let Some(refused) = replayed.refused.first() {
        return Err(format!("the state machine refused record {refused:?}"));
    }
    let mut stage = 0;
    let mut overwrite: Option<(u32, u64)> = None;
    let mut verified_after_full_overwrite = false;
    let mut certified_erased = false;
    for (i, record) in records.iter().enumerate() {
        let r = rank(record);
        if r < stage {
            return Err(format!(
                "record {i} ({}) goes back in the state machine",
                record.kind()
            ));
        }
        stage = r;
        match record {
            Record::Requested(requested) if i != 0 => {
                return Err(format!(
                    "second operation requested: {}",
                    requested.operation_id
                ));
            }
            Record::KeysSnapshot { .. }
                if records[..i].iter().filter(|r| rank(r) == 2).count() >= IMAGE_SIZES.len() =>
            {
                return Err("a key snapshot was taken twice".into());
            }
            Record::Overwriting { target, offset, .. } => {
                let now = (*target, *offset);
                if overwrite.is_some_and(|before| now < before) {
                    return Err(format!("overwrite went back from {overwrite:?} to {now:?}"));
                }
                if *offset > IMAGE_SIZES[*target as usize] {
                    return Err(format!("checkpoint past the end: {now:?}"));
                }
                overwrite = Some(now);
            }
            Record::Verifying { .. } => {
                let last = IMAGE_SIZES.len() as u32 - 1;
                if overwrite != Some((last, IMAGE_SIZES[last as usize])) {
                    return Err(format!(
                        "verifying before the overwrite completed: {overwrite:?}"
                    ));
                }
                verified_after_full_overwrite = true;
            }
            Record::Certified { outcome, .. } => {
                if !verified_after_full_overwrite {
                    return Err("certified without verification".into());
                }
                certified_erased = *outcome == Outcome::Erased;
            }
            Record::Reclaimable { .. } if !certified_erased => {
                return Err("reclaimable without an ERASED certificate".into());
            }
            Record::Failed { reason, .. } => return Err(format!("operation failed: {reason}")),
            _ => {}
        }
    }
    Ok(())
}

/// After a kill: every byte below the last journaled checkpoint holds the pattern (so a
/// checkpoint never covered a write still in flight or lost), for every target before it too.
/// Checked while the pattern key is still on disk (until the certificate is signed).
fn check_checkpointed_prefix(dir: &Path, records: &[Record]) -> Result<usize, String> {
    let Some(Record::Requested(requested)) = records.first() else {
        return Ok(0);
    };
    let Some((target, offset)) = records.iter().rev().find_map(|r| match r {
        Record::Overwriting { target, offset, .. } => Some((*target as usize, *offset)),
        _ => None,
    }) else {
        return Ok(0);
    };
    let key_file = dir
        .join("state/keys")
        .join(format!("{}.key", requested.operation_id));
    let Ok(key_hex) = std::fs::read_to_string(&key_file) else {
        return Ok(0);
    };
    let pattern = Pattern::new(PatternKey::from_hex(&key_hex).map_err(|e| e.to_string())?);
    let mut checked = 0;
    for (index, size) in IMAGE_SIZES.iter().enumerate().take(target + 1) {
        let end = if index < target { *size } else { offset } as usize;
        let data = std::fs::read(image_path(dir, index)).map_err(|e| e.to_string())?;
        let mut expected = vec![0u8; end];
        pattern.fill(0, &mut expected);
        if let Some(at) = data[..end].iter().zip(&expected).position(|(a, b)| a != b) {
            return Err(format!(
                "tenant{index}: byte {at} below the checkpoint {end} is not the pattern"
            ));
        }
        checked += end;
    }
    Ok(checked)
}

fn read_journal(dir: &Path) -> Vec<Record> {
    let path = dir.join("state").join(JOURNAL_FILE);
    if !path.exists() {
        return Vec::new();
    }
    Journal::<Record>::read(&path).unwrap().records
}

fn spawn_child(dir: &Path, run: usize) -> Child {
    let log = std::fs::File::create(dir.join(format!("child-{run}.log"))).unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            CHILD_TEST,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn sigkill(child: &mut Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// What one child run did.
struct Run {
    killed_after: Option<&'static str>,
    records_at_kill: usize,
    /// Bytes found holding the pattern below the last checkpoint after the kill.
    prefix_checked: usize,
}

/// Runs the child until it exits or `kill` triggers, checking invariants on the journal all
/// along. Returns whether it was killed and in which phase.
fn run_child(dir: &Path, run: usize, kill: Option<KillPoint>) -> Run {
    let mut child = spawn_child(dir, run);
    let started = Instant::now();
    let mut trigger: Option<Instant> = None;
    let deadline = started + Duration::from_secs(120);
    loop {
        let records = read_journal(dir);
        if let Err(violation) = check_invariants(&records) {
            sigkill(&mut child);
            let _ = child.wait();
            panic!("invariant violated in {}: {violation}", dir.display());
        }
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.join(format!("child-{run}.log"))).unwrap();
            assert!(
                status.success(),
                "child run {run} failed ({status:?}):\n{log}"
            );
            return Run {
                killed_after: None,
                records_at_kill: records.len(),
                prefix_checked: 0,
            };
        }
        match kill {
            Some(KillPoint::AfterRecords(count, delay))
                if trigger.is_none() && records.len() >= count =>
            {
                trigger = Some(Instant::now() + delay);
            }
            Some(KillPoint::AfterStart(delay)) if trigger.is_none() => {
                trigger = Some(started + delay);
            }
            _ => {}
        }
        if trigger.is_some_and(|t| Instant::now() >= t) {
            sigkill(&mut child);
            let status = child.wait().unwrap();
            if status.signal().is_none() {
                // It finished just before the signal.
                assert!(status.success(), "child run {run} failed: {status:?}");
                return Run {
                    killed_after: None,
                    records_at_kill: records.len(),
                    prefix_checked: 0,
                };
            }
            let records = read_journal(dir);
            let prefix_checked = match check_checkpointed_prefix(dir, &records) {
                Ok(bytes) => bytes,
                Err(violation) => {
                    panic!(
                        "after the kill of run {run} in {}: {violation}",
                        dir.display()
                    )
                }
            };
            return Run {
                killed_after: Some(
                    records
                        .last()
                        .map(|r| r.kind().as_str())
                        .unwrap_or("nothing"),
                ),
                records_at_kill: records.len(),
                prefix_checked,
            };
        }
        assert!(Instant::now() < deadline, "child run {run} hangs");
        std::thread::sleep(Duration::from_micros(300));
    }
}

#[test]
fn sigkill_at_random_points_always_ends_erased_never_reclaimable_early() {
    let seed: u64 = std::env::var("JEX_ERASE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("erase crash test seed {seed} (set JEX_ERASE_CRASH_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut killed_in: std::collections::BTreeMap<&'static str, usize> = Default::default();
    let mut total_kills = 0;
    let mut prefix_checks = 0;
    for trial in 0..TRIALS {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for (i, size) in IMAGE_SIZES.iter().enumerate() {
            std::fs::write(image_path(dir, i), vec![TENANT_BYTE; *size as usize]).unwrap();
        }
        write_test_signer(dir, HOST);

        let kills = 1 + trial % 3;
        let mut run = 0;
        let mut resumed_expected = false;
        let mut finished = false;
        for _ in 0..kills {
            // Mostly after a journal record (every phase), sometimes at a random time.
            let point = if rng.random_bool(0.8) {
                let records = read_journal(dir).len();
                // Half the kills follow the record at once, to land between two steps.
                let delay = if rng.random_bool(0.5) {
                    0
                } else {
                    rng.random_range(0..4000)
                };
                KillPoint::AfterRecords(
                    records + rng.random_range(1..=12),
                    Duration::from_micros(delay),
                )
            } else {
                KillPoint::AfterStart(Duration::from_millis(rng.random_range(0..1500)))
            };
            let outcome = run_child(dir, run, Some(point));
            run += 1;
            match outcome.killed_after {
                Some(kind) => {
                    total_kills += 1;
                    prefix_checks += usize::from(outcome.prefix_checked > 0);
                    *killed_in.entry(kind).or_default() += 1;
                    // A run killed once its certificate is signed ("certified" or later) has
                    // nothing left to verify: the certificate it signed says how it got there.
                    resumed_expected |=
                        outcome.records_at_kill > 0 && !matches!(kind, "certified" | "reclaimable");
                }
                None => {
                    finished = true;
                    break;
                }
            }
        }
        if !finished {
            let outcome = run_child(dir, run, None);
            assert!(outcome.killed_after.is_none());
        }

        // The trial ended: reclaimable, certified, verified, and the images are the pattern.
        let records = read_journal(dir);
        check_invariants(&records).unwrap();
        let Some(Record::Requested(requested)) = records.first() else {
            panic!("no operation in {}", dir.display());
        };
        assert!(
            matches!(records.last(), Some(Record::Reclaimable { .. })),
            "{records:?}"
        );
        let cert_path = dir
            .join("state/certificates")
            .join(format!("{}.json", requested.operation_id));
        let certificate =
            SignedCertificate::from_bundle_json(&std::fs::read(&cert_path).unwrap()).unwrap();
        let document = match jex_attest::verify_any(
            &certificate,
            test_signer_ca(dir).as_bytes(),
            Some(&nonce()),
        )
        .expect("certificate verifies against the test fleet CA")
        {
            jex_attest::VerifiedDocument::V2(document) => document,
            other => panic!("a version 2 certificate expected: {other:?}"),
        };
        let verification = document
            .verification
            .clone()
            .expect("an overwrite's verification");
        assert_eq!(document.outcome, Outcome::Erased.as_str());
        assert_eq!(document.operation_id, requested.operation_id);
        assert_eq!(document.request_id, REQUEST);
        assert_eq!(document.controller_nonce_hex, hex::encode(nonce()));
        assert_eq!(verification.mismatched_blocks, 0);
        if resumed_expected {
            assert!(verification.resumed, "trial {trial}: resume not recorded");
        }
        let pattern = Pattern::new(
            PatternKey::from_hex(document.pattern_key_hex().expect("the pattern key")).unwrap(),
        );
        for (i, size) in IMAGE_SIZES.iter().enumerate() {
            let data = std::fs::read(image_path(dir, i)).unwrap();
            assert_eq!(data.len() as u64, *size);
            let mut expected = vec![0u8; data.len()];
            pattern.fill(0, &mut expected);
            if let Some(at) = data.iter().zip(&expected).position(|(a, b)| a != b) {
                panic!("trial {trial}: tenant{i} differs from the pattern at byte {at}");
            }
        }
        assert_eq!(
            std::fs::read_dir(dir.join("state/keys")).unwrap().count(),
            0,
            "pattern key left behind"
        );
    }
    eprintln!(
        "{total_kills} kills over {TRIALS} trials, by last durable record: {killed_in:?}; \
         {prefix_checks} kills checked the overwritten prefix"
    );
    assert!(
        prefix_checks > 0,
        "no kill landed during the overwrite: {killed_in:?}"
    );
    assert!(total_kills >= TRIALS, "too few kills landed: {killed_in:?}");
}
