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
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

use jex_attest::{AttestError, CertificateDocument, HostIdentity, SignedCertificate, Signer};
use jex_erase::engine::{JOURNAL_FILE, Record};
use jex_erase::journal::Journal;
use jex_erase::keys::{KeyDestroyer, KeyDestruction, KeyError, KeyState};
use jex_erase::pattern::{Pattern, PatternKey};
use jex_erase::{
    Backend, EraseConfig, EraseDeps, EraseService, Outcome, Phase, TargetConfig, TerminateCommand,
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
        verify_block_bytes: 64 * 1024,
        targets: (0..IMAGE_SIZES.len())
            .map(|i| TargetConfig {
                name: format!("tenant{i}"),
                backend: Backend::Luks2,
                device: image_path(dir, i),
                luks_uuid: Some(UUID.to_owned()),
                apfs_volume_uuid: None,
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

/// A P-256 signing key shared by every run of a trial (as the agent's identity key would be).
struct FileSigner {
    key: EcdsaKeyPair,
    chain: Vec<Vec<u8>>,
    rng: SystemRandom,
}

impl std::fmt::Debug for FileSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileSigner(...)")
    }
}

impl FileSigner {
    fn create(dir: &Path) {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec![HOST.to_owned()])
            .unwrap()
            .self_signed(&key_pair)
            .unwrap();
        std::fs::write(dir.join("signer.pk8"), key_pair.serialize_der()).unwrap();
        std::fs::write(dir.join("signer.der"), cert.der()).unwrap();
    }

    fn load(dir: &Path) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = std::fs::read(dir.join("signer.pk8")).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng).unwrap();
        FileSigner {
            key,
            chain: vec![std::fs::read(dir.join("signer.der")).unwrap()],
            rng,
        }
    }
}

impl Signer for FileSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AttestError> {
        let signature = self
            .key
            .sign(&self.rng, message)
            .expect("ring ECDSA P-256 signing");
        Ok(signature.as_ref().to_vec())
    }

    fn chain_der(&self) -> Vec<Vec<u8>> {
        self.chain.clone()
    }
}

/// Key destruction whose effect survives the process, like a real `luksErase`: `destroy`
/// leaves a marker file, idempotently; it takes a few milliseconds so kills can land inside.
#[derive(Debug)]
struct MarkerKeys {
    marker: PathBuf,
    calls: PathBuf,
}

impl MarkerKeys {
    fn log(&self, call: &str) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.calls)
            .unwrap();
        writeln!(file, "{call}").unwrap();
    }
}

impl KeyDestroyer for MarkerKeys {
    fn backend(&self) -> &'static str {
        "luks2"
    }
    fn check_identity(&self) -> Result<(), KeyError> {
        Ok(())
    }
    fn snapshot(&self) -> Result<KeyState, KeyError> {
        Ok(KeyState {
            facts: [("keyslots".to_owned(), "1".to_owned())].into(),
        })
    }
    fn destroy(&self) -> Result<(), KeyError> {
        self.log("destroy");
        std::thread::sleep(Duration::from_millis(15));
        std::fs::write(&self.marker, b"destroyed").unwrap();
        Ok(())
    }
    fn verify_destroyed(&self, before: &KeyState) -> Result<KeyDestruction, KeyError> {
        if !self.marker.exists() {
            return Err(KeyError::NotDestroyed {
                target: "marker".into(),
                detail: "marker missing".into(),
            });
        }
        Ok(KeyDestruction {
            method: "marker".into(),
            tool: "test".into(),
            evidence: [(
                "keyslots_before".to_owned(),
                before.facts["keyslots"].clone(),
            )]
            .into(),
        })
    }
}

// === Child ===

#[test]
#[ignore = "child process of sigkill_at_random_points_always_ends_erased_never_reclaimable_early"]
fn crash_child_runs_erase() {
    let dir = PathBuf::from(
        std::env::var(CHILD_ENV).expect("run by the sigkill test, which sets JEX_ERASE_CRASH_DIR"),
    );
    let key_dir = dir.clone();
    let deps = EraseDeps {
        signer: Arc::new(FileSigner::load(&dir)),
        host: host(),
        key_destroyer_factory: Box::new(move |target: &TargetConfig| {
            Ok(Box::new(MarkerKeys {
                marker: key_dir.join(format!("{}.keys-destroyed", target.name)),
                calls: key_dir.join("key-calls.log"),
            }) as Box<dyn KeyDestroyer>)
        }),
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

fn record_kind(record: &Record) -> &'static str {
    match record {
        Record::Requested(_) => "requested",
        Record::TargetsPinned { .. } => "targets_pinned",
        Record::KeysSnapshot { .. } => "keys_snapshot",
        Record::KeysDestroyed { .. } => "keys_destroyed",
        Record::Overwriting { .. } => "overwriting",
        Record::Verifying { .. } => "verifying",
        Record::Certified { .. } => "certified",
        Record::Reclaimable { .. } => "reclaimable",
        Record::Failed { .. } => "failed",
    }
}

fn rank(record: &Record) -> u8 {
    match record {
        Record::Requested(_) => 0,
        Record::TargetsPinned { .. } => 1,
        Record::KeysSnapshot { .. } => 2,
        Record::KeysDestroyed { .. } => 3,
        Record::Overwriting { .. } => 4,
        Record::Verifying { .. } => 5,
        Record::Certified { .. } => 6,
        Record::Reclaimable { .. } => 7,
        Record::Failed { .. } => 8,
    }
}

/// Checks the safety invariants on a journal prefix.
fn check_invariants(records: &[Record]) -> Result<(), String> {
    let mut stage = 0u8;
    let mut overwrite: Option<(u32, u64)> = None;
    let mut verified_after_full_overwrite = false;
    let mut certified_erased = false;
    for (i, record) in records.iter().enumerate() {
        let r = rank(record);
        if r < stage {
            return Err(format!(
                "record {i} ({}) goes back in the state machine",
                record_kind(record)
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
                };
            }
            let records = read_journal(dir);
            return Run {
                killed_after: Some(records.last().map(record_kind).unwrap_or("nothing")),
                records_at_kill: records.len(),
            };
        }
        assert!(Instant::now() < deadline, "child run {run} hangs");
        std::thread::sleep(Duration::from_micros(300));
    }
}

fn verify_signature(certificate: &SignedCertificate, signer_der: &[u8]) -> CertificateDocument {
    assert_eq!(certificate.signer_chain_der, vec![signer_der.to_vec()]);
    let (_, leaf) = x509_parser::parse_x509_certificate(signer_der).unwrap();
    let mut message = b"jex-erase-certificate-v1\0".to_vec();
    message.extend_from_slice(&certificate.document_json);
    ring::signature::UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        leaf.public_key().subject_public_key.data.as_ref(),
    )
    .verify(&message, &certificate.signature)
    .expect("certificate signature verifies");
    serde_json::from_slice(&certificate.document_json).unwrap()
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
    for trial in 0..TRIALS {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for (i, size) in IMAGE_SIZES.iter().enumerate() {
            std::fs::write(image_path(dir, i), vec![TENANT_BYTE; *size as usize]).unwrap();
        }
        FileSigner::create(dir);

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
        let document = verify_signature(
            &certificate,
            &std::fs::read(dir.join("signer.der")).unwrap(),
        );
        assert_eq!(document.outcome, "ERASED");
        assert_eq!(document.operation_id, requested.operation_id);
        assert_eq!(document.request_id, REQUEST);
        assert_eq!(document.controller_nonce_hex, hex::encode(nonce()));
        assert_eq!(document.verification.mismatched_blocks, 0);
        if resumed_expected {
            assert!(
                document.verification.resumed,
                "trial {trial}: resume not recorded"
            );
        }
        let pattern = Pattern::new(PatternKey::from_hex(&document.pattern.key_hex).unwrap());
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
    eprintln!("{total_kills} kills over {TRIALS} trials, by last durable record: {killed_in:?}");
    assert!(total_kills >= TRIALS, "too few kills landed: {killed_in:?}");
}
