//! End-to-end tests of the erase engine: real files, real direct I/O, the test signer and the
//! fake key destroyer of [`crate::testing`] (the real backends are tested with their own
//! module), and an I/O wrapper that injects faults.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::deps::{DirectOpener, IoOpener};
use crate::journal::Journal;
use crate::keys::KeyState;
use crate::layout::{JOURNAL_FILE, write_key_file};
use crate::pattern::{Pattern, PatternKey};
use crate::record::{OperationSettings, PinnedTarget, Record, RequestedRecord, Step};
use crate::state::replay;
use crate::store::RecordHook;
use crate::testing::{
    BusyCores, DestroyHook, FakeKeys, fake_destruction, load_test_signer, write_test_signer,
};
use crate::*;
use jex_attest::{CertificateDocumentV2, HostIdentity, SignedCertificate};
use jex_platform::blockdev::{
    Access, BlockDevError, DirectTarget, MediaInfo, TargetIdentity, TargetIo,
};

const UUID: &str = "5b0c7a4e-1d2f-4e3a-9b8c-7d6e5f4a3b2c";
const HOST: &str = "host-test-1";
const TENANT_BYTE: u8 = 0xa5;

/// Checks the certificate with the certificate verifier against the test fleet CA and returns
/// its document.
fn verified_document(h: &Harness, certificate: &SignedCertificate) -> CertificateDocumentV2 {
    match jex_attest::verify_any(certificate, h.ca_pem.as_bytes(), None)
        .expect("certificate verifies")
    {
        jex_attest::VerifiedDocument::V2(document) => document,
        other => panic!("a version 2 certificate expected: {other:?}"),
    }
}

/// The pattern key a certificate reveals.
fn key_of(document: &CertificateDocumentV2) -> String {
    document
        .pattern_key_hex()
        .expect("an overwrite's certificate reveals its pattern key")
        .to_owned()
}

fn host() -> HostIdentity {
    HostIdentity {
        host_id: HOST.to_owned(),
        hardware_uuid: "00000000-0000-4000-8000-000000000001".to_owned(),
        serial_number: "C02TEST0001".to_owned(),
        model: "Mac14,3".to_owned(),
        os: "Linux test".to_owned(),
        agent_version: crate::AGENT_VERSION.to_owned(),
    }
}

// === Fault-injecting I/O ===

#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    /// Writes at or past this offset fail with EIO.
    WriteFailsAt(u64),
    /// Reads covering this offset fail with EIO.
    ReadFailsAt(u64),
    /// Before the first verification read, one byte at this offset is flipped on disk.
    AlterBeforeVerify(u64),
    /// After this many writes, the file is truncated to this length.
    TruncateAfterWrites(usize, u64),
    /// The target reports living on a copy-on-write filesystem.
    CopyOnWrite,
}

#[derive(Clone, Default)]
struct IoLog(Arc<Mutex<Vec<(char, u64)>>>);

struct FaultyOpener {
    fault: Fault,
    log: IoLog,
    writes: Arc<AtomicUsize>,
    altered: Arc<AtomicBool>,
}

impl FaultyOpener {
    fn new(fault: Fault) -> Self {
        FaultyOpener {
            fault,
            log: IoLog::default(),
            writes: Arc::new(AtomicUsize::new(0)),
            altered: Arc::new(AtomicBool::new(false)),
        }
    }
}

struct FaultyIo {
    inner: DirectTarget,
    fault: Fault,
    log: IoLog,
    writes: Arc<AtomicUsize>,
    altered: Arc<AtomicBool>,
}

impl IoOpener for FaultyOpener {
    fn open(
        &self,
        _index: usize,
        path: &Path,
        access: Access,
    ) -> Result<Box<dyn TargetIo>, BlockDevError> {
        Ok(Box::new(FaultyIo {
            inner: DirectTarget::open(path, access)?,
            fault: self.fault,
            log: self.log.clone(),
            writes: Arc::clone(&self.writes),
            altered: Arc::clone(&self.altered),
        }))
    }
}

fn eio() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EIO)
}

impl TargetIo for FaultyIo {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn io_align(&self) -> u64 {
        self.inner.io_align()
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.log.0.lock().unwrap().push(('w', offset));
        if let Fault::WriteFailsAt(at) = self.fault
            && offset + buf.len() as u64 > at
        {
            return Err(eio());
        }
        self.inner.write_at(offset, buf)?;
        let count = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if let Fault::TruncateAfterWrites(after, len) = self.fault
            && count == after
        {
            // Under the log's lock, with a marker: every write logged after the marker was
            // issued after the truncation could be seen.
            let mut log = self.log.0.lock().unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .open(self.inner.path())
                .unwrap()
                .set_len(len)
                .unwrap();
            log.push(('t', len));
        }
        Ok(())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.log.0.lock().unwrap().push(('r', offset));
        match self.fault {
            Fault::ReadFailsAt(at) if offset <= at && at < offset + buf.len() as u64 => {
                return Err(eio());
            }
            Fault::AlterBeforeVerify(at) if !self.altered.swap(true, Ordering::SeqCst) => {
                flip_byte(self.inner.path(), at);
            }
            _ => {}
        }
        self.inner.read_at(offset, buf)
    }
    fn flush_durable(&self) -> std::io::Result<()> {
        self.inner.flush_durable()
    }
    fn open_identity(&self) -> Result<TargetIdentity, BlockDevError> {
        self.inner.open_identity()
    }
    fn path_identity(&self) -> Result<TargetIdentity, BlockDevError> {
        self.inner.path_identity()
    }
    fn media_info(&self) -> MediaInfo {
        self.inner.media_info()
    }
    fn copy_on_write_fs(&self) -> Option<String> {
        match self.fault {
            Fault::CopyOnWrite => Some("btrfs".into()),
            _ => self.inner.copy_on_write_fs(),
        }
    }
}

fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0xff;
    file.write_all_at(&byte, offset).unwrap();
    file.sync_all().unwrap();
}

// === Harness ===

struct Harness {
    dir: tempfile::TempDir,
    images: Vec<PathBuf>,
    keys: FakeKeys,
    /// The test signer's files.
    signer_dir: PathBuf,
    /// The test signer's CA, PEM.
    ca_pem: String,
}

impl Harness {
    fn new(sizes: &[u64]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let images = sizes
            .iter()
            .enumerate()
            .map(|(i, size)| {
                let path = dir.path().join(format!("tenant{i}.img"));
                write_tenant_image(&path, *size);
                path
            })
            .collect();
        let signer_dir = dir.path().join("signer");
        std::fs::create_dir(&signer_dir).unwrap();
        let ca_pem = write_test_signer(&signer_dir, HOST);
        Harness {
            dir,
            images,
            keys: FakeKeys::new(),
            signer_dir,
            ca_pem,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn config(&self) -> EraseConfig {
        EraseConfig {
            state_dir: self.state_dir(),
            chunk_bytes: 64 * 1024,
            checkpoint_bytes: 256 * 1024,
            verify_block_bytes: 64 * 1024,
            targets: self
                .images
                .iter()
                .enumerate()
                .map(|(i, path)| TargetConfig {
                    name: format!("tenant{i}"),
                    device: path.clone(),
                    keys: TargetKeys::Luks2 {
                        luks_uuid: UUID.to_owned(),
                    },
                })
                .collect(),
            ..EraseConfig::default()
        }
    }

    fn deps(&self, on_destroy: Option<DestroyHook>) -> EraseDeps {
        let keys = match on_destroy {
            Some(hook) => self.keys.clone().on_destroy(hook),
            None => self.keys.clone(),
        };
        EraseDeps {
            signer: Arc::new(load_test_signer(&self.signer_dir)),
            host: host(),
            key_destroyer_factory: keys.factory(),
            fleet_ca: None,
        }
    }

    fn open(
        &self,
        config: EraseConfig,
        io: Arc<dyn IoOpener>,
        on_destroy: Option<DestroyHook>,
    ) -> EraseService {
        self.open_hooked(config, io, on_destroy, None)
    }

    fn open_hooked(
        &self,
        config: EraseConfig,
        io: Arc<dyn IoOpener>,
        on_destroy: Option<DestroyHook>,
        before_append: Option<RecordHook>,
    ) -> EraseService {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let deps = self.deps(on_destroy.clone());
            match EraseService::open_with(
                config.clone(),
                deps,
                Arc::clone(&io),
                before_append.clone(),
            ) {
                // The previous service's worker may still be releasing the state lock.
                Err(EraseError::Locked { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                other => return other.unwrap(),
            }
        }
    }

    fn service(&self) -> EraseService {
        self.open(self.config(), Arc::new(DirectOpener), None)
    }

    fn records(&self) -> Vec<Record> {
        Journal::<Record>::read(&self.state_dir().join(JOURNAL_FILE))
            .unwrap()
            .records
    }
}

fn write_tenant_image(path: &Path, size: u64) {
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![TENANT_BYTE; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        file.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    file.sync_all().unwrap();
}

fn terminate_cmd(request_id: &str) -> TerminateCommand {
    TerminateCommand {
        request_id: request_id.to_owned(),
        host_id: HOST.to_owned(),
        nonce: (0u8..32).collect(),
    }
}

fn is_finished(view: &OperationView) -> bool {
    matches!(view.phase, Phase::Reclaimable | Phase::Failed)
        || (view.phase == Phase::Certified && view.outcome != Some(Outcome::Erased))
}

fn wait_finished(service: &EraseService, operation_id: &str) -> OperationView {
    let rx = service.watch(Some(operation_id)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = rx.borrow().clone();
        if is_finished(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "operation did not finish: {view:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn assert_matches_pattern(path: &Path, key_hex: &str) {
    let data = std::fs::read(path).unwrap();
    let pattern = Pattern::new(PatternKey::from_hex(key_hex).unwrap());
    let mut expected = vec![0u8; data.len()];
    pattern.fill(0, &mut expected);
    if let Some(at) = data.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!("{} differs from the pattern at byte {at}", path.display());
    }
}

fn assert_failed_not_reclaimable(h: &Harness, service: &EraseService, view: &OperationView) {
    assert_eq!(view.phase, Phase::Failed, "{view:?}");
    assert_eq!(view.outcome, Some(Outcome::Failed));
    assert!(view.certificate.is_none());
    assert_eq!(service.lifecycle(), Lifecycle::EraseFailed);
    assert!(matches!(
        service.certificate(None),
        Err(EraseError::NotCertified {
            phase: Phase::Failed,
            ..
        })
    ));
    let records = h.records();
    assert!(
        !records
            .iter()
            .any(|r| matches!(r, Record::Reclaimable { .. } | Record::Certified { .. })),
        "a failed operation was certified or made reclaimable: {records:?}"
    );
    assert!(matches!(records.last(), Some(Record::Failed { .. })));
    // The pattern key of a failed operation is not left behind.
    let keys: Vec<_> = std::fs::read_dir(h.state_dir().join("keys"))
        .unwrap()
        .collect();
    assert!(keys.is_empty());
}

// === Tests ===

#[test]
fn terminate_erases_verifies_certifies_and_makes_the_host_reclaimable() {
    let h = Harness::new(&[4 << 20, 2 << 20]);
    let service = h.service();
    assert_eq!(service.lifecycle(), Lifecycle::Serving);
    assert_eq!(service.current_operation_id(), None);

    let started = service.terminate(terminate_cmd("req-1")).unwrap();
    assert_eq!(started.request_id, "req-1");
    assert!(!is_finished(&started));
    let view = wait_finished(&service, &started.operation_id);

    assert_eq!(view.phase, Phase::Reclaimable, "{view:?}");
    assert_eq!(view.outcome, Some(Outcome::Erased));
    assert_eq!(view.failure_reason, None);
    assert_eq!(service.lifecycle(), Lifecycle::Reclaimable);
    assert_eq!(
        service.current_operation_id(),
        Some(started.operation_id.clone())
    );
    assert_eq!(view.targets.len(), 2);
    assert_eq!(view.targets[0].size_bytes, 4 << 20);
    assert!(view.targets.iter().all(|t| t.phase == Phase::Reclaimable));

    let certificate = service.certificate(None).unwrap();
    assert_eq!(view.certificate.as_ref(), Some(&certificate));
    let document = verified_document(&h, &certificate);
    assert_eq!(document.schema, jex_attest::DOCUMENT_SCHEMA_V2);
    assert_eq!(document.operation_id, started.operation_id);
    assert_eq!(document.request_id, "req-1");
    assert_eq!(document.host, host());
    assert_eq!(
        document.controller_nonce_hex,
        hex::encode((0u8..32).collect::<Vec<_>>())
    );
    assert_eq!(document.outcome, jex_attest::OUTCOME_ERASED);
    assert!(document.exceptions.is_empty());
    assert_eq!(document.previous_certificate_sha256, None);
    assert!(document.device_erase.is_none());
    let verification = document.verification.as_ref().unwrap();
    assert!(!verification.resumed);
    assert_eq!(verification.mismatched_blocks, 0);
    // 96 blocks of 64 KiB in all: small targets are verified in full.
    assert_eq!(verification.sampled_blocks, 96);
    assert!((verification.coverage_percent - 100.0).abs() < 1e-9);
    for (record, image) in document.targets.iter().zip(&h.images) {
        assert_eq!(record.device, image.display().to_string());
        assert_eq!(record.kind, "luks2");
        assert_eq!(record.media_type, "file");
        // LUKS2: the keys are gone, then the overwrite: Purge, stated per target.
        assert_eq!(record.sanitization.category, "Purge");
        assert_eq!(
            record.sanitization.technique,
            jex_attest::TECHNIQUE_CRYPTO_ERASE_OVERWRITE
        );
        assert_eq!(
            record.key_destruction.as_ref().unwrap().method,
            "fake luksErase"
        );
        assert!(
            record
                .identity
                .starts_with(&format!("luks-uuid:{UUID}; file:dev="))
        );
        assert_eq!(record.size_bytes, std::fs::metadata(image).unwrap().len());
        assert_eq!(record.overwrite.as_ref().unwrap().passes, 1);
    }
    assert!(document.started_at <= document.finished_at);

    // Every byte of every target is the pattern whose key the certificate reveals.
    for image in &h.images {
        assert_matches_pattern(image, &key_of(&document));
    }

    // Keys were destroyed first, per target, in protocol order.
    assert_eq!(
        h.keys.calls(),
        [
            "tenant0:check_identity",
            "tenant0:snapshot",
            "tenant0:destroy",
            "tenant0:verify_destroyed",
            "tenant1:check_identity",
            "tenant1:snapshot",
            "tenant1:destroy",
            "tenant1:verify_destroyed"
        ]
    );

    // The journal follows the state machine, ending reclaimable.
    let kinds: Vec<&str> = h
        .records()
        .iter()
        .map(|r| match r {
            Record::Requested(_) => "requested",
            Record::TargetsPinned { .. } => "pinned",
            Record::KeysSnapshot { .. } => "snapshot",
            Record::KeysDestroyed { .. } => "keys_destroyed",
            Record::Overwriting { .. } => "overwriting",
            Record::Verifying { .. } => "verifying",
            Record::Certified { .. } => "certified",
            Record::Reclaimable { .. } => "reclaimable",
            Record::AwaitingDeviceErase { .. } => "awaiting_device_erase",
            Record::Failed { .. } => "failed",
        })
        .collect();
    let mut dedup = kinds.clone();
    dedup.dedup();
    assert_eq!(
        dedup,
        [
            "requested",
            "pinned",
            "snapshot",
            "keys_destroyed",
            "overwriting",
            "verifying",
            "certified",
            "reclaimable"
        ]
    );
    // Each target: its start, then checkpoints at growing offsets up to its end. Writes
    // complete out of order, so a checkpoint may cover more than one 256 KiB segment (the
    // prefix jumped), but never more than a segment plus the window writers may run ahead.
    let config = h.config();
    let window =
        (config.checkpoint_bytes / config.chunk_bytes).max(2 * u64::from(config.queue_depth));
    let most = config.checkpoint_bytes + window * config.chunk_bytes;
    for (target, size) in [(0u32, 4u64 << 20), (1, 2 << 20)] {
        let offsets: Vec<u64> = h
            .records()
            .iter()
            .filter_map(|r| match r {
                Record::Overwriting {
                    target: t, offset, ..
                } if *t == target => Some(*offset),
                _ => None,
            })
            .collect();
        assert_eq!(offsets.first(), Some(&0), "target {target}: {offsets:?}");
        assert_eq!(offsets.last(), Some(&size), "target {target}: {offsets:?}");
        assert!(
            offsets
                .windows(2)
                .all(|w| w[0] < w[1] && w[1] - w[0] <= most),
            "target {target}: {offsets:?}"
        );
    }

    // The key file is gone; the certificate file is world-readable; the state dir is private.
    let state = h.state_dir();
    assert_eq!(std::fs::read_dir(state.join("keys")).unwrap().count(), 0);
    let cert_path = state.join(format!("certificates/{}.json", started.operation_id));
    assert_eq!(
        std::fs::metadata(&cert_path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // After a restart: same lifecycle, same certificate, and the same request is idempotent.
    drop(service);
    let service = h.service();
    assert_eq!(service.lifecycle(), Lifecycle::Reclaimable);
    assert_eq!(
        service.certificate(Some(&started.operation_id)).unwrap(),
        certificate
    );
    let again = service.terminate(terminate_cmd("req-1")).unwrap();
    assert_eq!(again.operation_id, started.operation_id);
    assert_eq!(again.phase, Phase::Reclaimable);
    assert_eq!(h.keys.calls().len(), 8, "no key destruction repeated");
}

#[test]
fn the_next_certificate_chains_to_the_previous_one() {
    let h = Harness::new(&[1 << 20]);
    let service = h.service();
    let first = service.terminate(terminate_cmd("req-a")).unwrap();
    wait_finished(&service, &first.operation_id);
    let first_cert = service.certificate(Some(&first.operation_id)).unwrap();
    // A new tenancy ended: a new request starts a new operation.
    let second = service.terminate(terminate_cmd("req-b")).unwrap();
    assert_ne!(second.operation_id, first.operation_id);
    let view = wait_finished(&service, &second.operation_id);
    assert_eq!(view.phase, Phase::Reclaimable);
    let document = verified_document(&h, &service.certificate(None).unwrap());
    let first_hash = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &first_cert.document_json,
    ));
    assert_eq!(document.previous_certificate_sha256, Some(first_hash));
    assert_ne!(
        key_of(&document),
        key_of(&verified_document(&h, &first_cert)),
        "every operation gets a fresh pattern key"
    );
}

#[test]
fn terminate_refuses_bad_requests_and_is_idempotent_while_running() {
    let h = Harness::new(&[1 << 20]);
    let service = h.service();
    let mut cmd = terminate_cmd("req-1");
    cmd.host_id = "other-host".into();
    assert!(matches!(
        service.terminate(cmd),
        Err(EraseError::HostMismatch { expected, got }) if expected == HOST && got == "other-host"
    ));
    let mut cmd = terminate_cmd("req-1");
    cmd.nonce = vec![1; 31];
    assert!(matches!(
        service.terminate(cmd),
        Err(EraseError::NonceTooShort { len: 31 })
    ));
    assert!(matches!(
        service.terminate(terminate_cmd(" ")),
        Err(EraseError::EmptyRequestId)
    ));
    assert!(matches!(
        service.watch(None),
        Err(EraseError::NotFound { .. })
    ));
    assert!(matches!(
        service.certificate(None),
        Err(EraseError::NotFound { .. })
    ));
    assert_eq!(service.lifecycle(), Lifecycle::Serving);
    drop(service);

    // Hold key destruction until released, to observe a running operation.
    let release = Arc::new(AtomicBool::new(false));
    let gate = Arc::clone(&release);
    let hook: DestroyHook = Arc::new(move || {
        while !gate.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let service = h.open(h.config(), Arc::new(DirectOpener), Some(hook));
    let first = service.terminate(terminate_cmd("req-1")).unwrap();
    assert_eq!(service.lifecycle(), Lifecycle::Erasing);
    let same = service.terminate(terminate_cmd("req-1")).unwrap();
    assert_eq!(same.operation_id, first.operation_id);
    assert!(matches!(
        service.terminate(terminate_cmd("req-2")),
        Err(EraseError::AlreadyRunning { operation_id }) if operation_id == first.operation_id
    ));
    assert!(matches!(
        service.certificate(Some(&first.operation_id)),
        Err(EraseError::NotCertified { .. })
    ));
    release.store(true, Ordering::SeqCst);
    assert_eq!(
        wait_finished(&service, &first.operation_id).phase,
        Phase::Reclaimable
    );
    drop(service);

    let mut empty = h.config();
    empty.targets.clear();
    empty.state_dir = h.dir.path().join("empty-state");
    let service = h.open(empty, Arc::new(DirectOpener), None);
    assert!(matches!(
        service.terminate(terminate_cmd("req-9")),
        Err(EraseError::NoTargets)
    ));
}

#[test]
fn a_second_service_on_the_same_state_dir_is_refused() {
    let h = Harness::new(&[64 * 1024]);
    let _service = h.service();
    assert!(matches!(
        EraseService::open(h.config(), h.deps(None)),
        Err(EraseError::Locked { .. })
    ));
}

fn run_with_fault(fault: Fault) -> (Harness, EraseService, OperationView) {
    let h = Harness::new(&[2 << 20]);
    let service = h.open(h.config(), Arc::new(FaultyOpener::new(fault)), None);
    let started = service.terminate(terminate_cmd("req-fault")).unwrap();
    let view = wait_finished(&service, &started.operation_id);
    (h, service, view)
}

#[test]
fn a_failing_write_fails_the_erase_with_its_offset() {
    let (h, service, view) = run_with_fault(Fault::WriteFailsAt(1 << 20));
    assert_failed_not_reclaimable(&h, &service, &view);
    let reason = view.failure_reason.as_deref().unwrap();
    assert!(
        reason.contains("writing") && reason.contains(&format!("offset {}", 1 << 20)),
        "{reason}"
    );
}

#[test]
fn a_failing_read_fails_verification() {
    let (h, service, view) = run_with_fault(Fault::ReadFailsAt(1_500_000));
    assert_failed_not_reclaimable(&h, &service, &view);
    let reason = view.failure_reason.as_deref().unwrap();
    assert!(reason.contains("reading back"), "{reason}");
    assert!(
        h.records()
            .iter()
            .any(|r| matches!(r, Record::Verifying { .. }))
    );
}

#[test]
fn a_block_altered_after_its_overwrite_fails_verification_at_that_offset() {
    let offset = (1 << 20) + 12_345;
    let (h, service, view) = run_with_fault(Fault::AlterBeforeVerify(offset));
    assert_failed_not_reclaimable(&h, &service, &view);
    let reason = view.failure_reason.as_deref().unwrap();
    assert!(
        reason.contains(&format!("differs from the pattern at byte offset {offset}")),
        "{reason}"
    );
}

#[test]
fn a_target_truncated_mid_overwrite_is_refused() {
    let h = Harness::new(&[2 << 20]);
    let opener = Arc::new(FaultyOpener::new(Fault::TruncateAfterWrites(5, 1 << 20)));
    let log = opener.log.clone();
    // Four writes in flight, none started more than the window (8 chunks) beyond the completed
    // prefix: the ones issued after the truncation all land below its new end (64 KiB chunks,
    // 1 MiB), which the last assertion relies on.
    let config = EraseConfig {
        queue_depth: 4,
        ..h.config()
    };
    let depth = config.queue_depth as usize;
    let service = h.open(config, opener, None);
    let started = service.terminate(terminate_cmd("req-fault")).unwrap();
    let view = wait_finished(&service, &started.operation_id);
    assert_failed_not_reclaimable(&h, &service, &view);
    let reason = view.failure_reason.as_deref().unwrap();
    assert!(
        reason.contains("identity changed") && reason.contains("size=1048576"),
        "{reason}"
    );
    // No write starts once the truncation can be seen: each writer checks the target before
    // each write, so after the truncation only writers that had already passed that check
    // issue one more write each, at most queue_depth - 1 (the truncating writer checks next).
    // (Counted from the truncation itself, not from the fifth write: the other writers go on
    // while the fifth write's thread truncates, the more so on a loaded machine.)
    let log = log.0.lock().unwrap().clone();
    let truncated_at = log
        .iter()
        .position(|(k, _)| *k == 't')
        .expect("the target was truncated");
    let writes_after = log[truncated_at..]
        .iter()
        .filter(|(k, _)| *k == 'w')
        .count();
    assert!(
        writes_after < depth,
        "{writes_after} writes issued after the truncation: {log:?}"
    );
    assert!(
        log[..truncated_at]
            .iter()
            .filter(|(k, _)| *k == 'w')
            .count()
            >= 5
    );
    // Jobs are taken in order, so those writes all land below the truncated end.
    assert_eq!(std::fs::metadata(&h.images[0]).unwrap().len(), 1 << 20);
}

#[test]
fn a_file_on_a_copy_on_write_filesystem_is_certified_with_exceptions_and_not_reclaimable() {
    let (h, service, view) = run_with_fault(Fault::CopyOnWrite);
    assert_eq!(view.phase, Phase::Certified, "{view:?}");
    assert_eq!(view.outcome, Some(Outcome::ErasedWithExceptions));
    assert_eq!(
        view.exceptions,
        ["overwrite-not-in-place:tenant0: file on a copy-on-write filesystem (btrfs)"]
    );
    assert_eq!(service.lifecycle(), Lifecycle::EraseFailed);
    let document = verified_document(&h, &service.certificate(None).unwrap());
    assert_eq!(document.outcome, jex_attest::OUTCOME_ERASED_WITH_EXCEPTIONS);
    assert_eq!(document.exceptions, view.exceptions);
    assert!(
        !h.records()
            .iter()
            .any(|r| matches!(r, Record::Reclaimable { .. }))
    );
    // The overwrite and verification still ran in full.
    assert_matches_pattern(&h.images[0], &key_of(&document));
    // A new request may run once this one is over.
    let next = service.terminate(terminate_cmd("req-retry")).unwrap();
    assert_ne!(next.operation_id, view.operation_id);
}

#[test]
fn a_target_replaced_between_steps_is_refused_and_left_untouched() {
    let h = Harness::new(&[1 << 20]);
    let image = h.images[0].clone();
    let replacement = h.dir.path().join("replacement.img");
    write_tenant_image(&replacement, 1 << 20);
    let original_ino = std::fs::metadata(&image).unwrap().ino();
    // While the keys are destroyed, another file (new inode) takes the target's path.
    let (from, to) = (replacement.clone(), image.clone());
    let hook: DestroyHook = Arc::new(move || std::fs::rename(&from, &to).unwrap());
    let service = h.open(h.config(), Arc::new(DirectOpener), Some(hook));
    let started = service.terminate(terminate_cmd("req-swap")).unwrap();
    let view = wait_finished(&service, &started.operation_id);
    assert_failed_not_reclaimable(&h, &service, &view);
    let reason = view.failure_reason.as_deref().unwrap();
    assert!(
        reason.contains("identity changed") && reason.contains(&format!("ino={original_ino}")),
        "{reason}"
    );
    assert_ne!(std::fs::metadata(&image).unwrap().ino(), original_ino);
    assert!(
        std::fs::read(&image)
            .unwrap()
            .iter()
            .all(|b| *b == TENANT_BYTE)
    );
}

#[test]
fn the_root_device_is_refused_before_any_key_is_destroyed() {
    let h = Harness::new(&[]);
    let node = h.dir.path().join("rootdisk");
    jex_platform::blockdev::make_block_device_node(&node, std::fs::metadata("/").unwrap().dev())
        .unwrap();
    let mut config = h.config();
    config.targets = vec![TargetConfig {
        name: "root".into(),
        device: node.clone(),
        keys: TargetKeys::Luks2 {
            luks_uuid: UUID.to_owned(),
        },
    }];
    let service = h.open(config, Arc::new(DirectOpener), None);

    let plan = service.plan().unwrap();
    assert_eq!(plan.len(), 1);
    assert!(!plan[0].ready);
    let refused = plan[0]
        .checks
        .iter()
        .find(|c| c.check == "not a system or mounted device")
        .expect("system-device check ran");
    assert!(
        !refused.passed && refused.detail.contains("mounted at /"),
        "{refused:?}"
    );

    let started = service.terminate(terminate_cmd("req-root")).unwrap();
    let view = wait_finished(&service, &started.operation_id);
    assert_failed_not_reclaimable(&h, &service, &view);
    let reason = view.failure_reason.as_deref().unwrap();
    assert!(
        reason.contains("refused") && reason.contains("mounted at /"),
        "{reason}"
    );
    assert!(
        h.keys.calls().iter().all(|e| !e.ends_with(":destroy")),
        "keys destroyed on a refused target: {:?}",
        h.keys.calls()
    );
}

#[test]
fn plan_reports_size_identity_and_passing_checks_without_writing() {
    let h = Harness::new(&[1 << 20]);
    let service = h.service();
    let before = std::fs::read(&h.images[0]).unwrap();
    let plan = service.plan().unwrap();
    assert_eq!(plan[0].name, "tenant0");
    assert_eq!(plan[0].backend, "luks2");
    assert_eq!(plan[0].size_bytes, Some(1 << 20));
    assert!(plan[0].identity.as_deref().unwrap().contains("file:dev="));
    assert!(plan[0].ready, "{:?}", plan[0].checks);
    assert_eq!(std::fs::read(&h.images[0]).unwrap(), before);
    assert_eq!(h.keys.calls(), ["tenant0:check_identity"]);
}

/// Writes the journal of an operation interrupted at `last`, as a crash would leave it.
fn interrupted_operation(h: &Harness, key: &PatternKey, last: &[Record]) -> String {
    let config = h.config();
    let operation_id = "7f0c1d2e-3b4a-4c5d-8e9f-0a1b2c3d4e5f".to_owned();
    std::fs::create_dir_all(h.state_dir().join("keys")).unwrap();
    write_key_file(&h.state_dir().join(format!("keys/{operation_id}.key")), key).unwrap();
    let target = DirectTarget::open(&h.images[0], Access::Read).unwrap();
    let requested = RequestedRecord {
        operation_id: operation_id.clone(),
        request_id: "req-crash".into(),
        host_id: HOST.into(),
        nonce_hex: hex::encode([9u8; 32]),
        started_unix_ms: 1_700_000_000_000,
        pattern_key_sha256: key.commitment(),
        previous_certificate_sha256: None,
        settings: OperationSettings {
            chunk_bytes: config.chunk_bytes,
            checkpoint_bytes: config.checkpoint_bytes,
            queue_depth: config.queue_depth,
            cpu_threads: config.cpu_threads,
            verify_strata: config.verify_strata,
            verify_locations_per_stratum: config.verify_locations_per_stratum,
            verify_coverage_percent: None,
            verify_block_bytes: config.verify_block_bytes,
        },
        targets: config.targets.clone(),
        device_erase: None,
        attest: None,
    };
    let (mut journal, _) = Journal::<Record>::open(&h.state_dir().join(JOURNAL_FILE)).unwrap();
    journal.append(&Record::Requested(requested)).unwrap();
    journal
        .append(&Record::TargetsPinned {
            operation_id: operation_id.clone(),
            targets: vec![PinnedTarget {
                name: "tenant0".into(),
                identity: target.identity().clone(),
                io_align: target.io_align(),
                media: target.media_info(),
                copy_on_write_fs: None,
            }],
        })
        .unwrap();
    journal
        .append(&Record::KeysSnapshot {
            operation_id: operation_id.clone(),
            target: "tenant0".into(),
            state: KeyState {
                facts: [("keyslots".to_owned(), "1".to_owned())].into(),
            },
        })
        .unwrap();
    for record in last {
        let mut record = record.clone();
        set_operation_id(&mut record, &operation_id);
        journal.append(&record).unwrap();
    }
    operation_id
}

fn set_operation_id(record: &mut Record, id: &str) {
    match record {
        Record::KeysDestroyed { operation_id, .. }
        | Record::Overwriting { operation_id, .. }
        | Record::Verifying { operation_id } => *operation_id = id.to_owned(),
        other => panic!("unexpected record {other:?}"),
    }
}

#[test]
fn resuming_mid_overwrite_redoes_at_most_one_checkpoint() {
    let h = Harness::new(&[2 << 20]);
    let key = PatternKey::from_bytes([3u8; 32]);
    // The first 768 KiB were written and the checkpoint at 512 KiB was journaled.
    let pattern = Pattern::new(key.clone());
    {
        let io = DirectTarget::open(&h.images[0], Access::ReadWrite).unwrap();
        let mut buf = jex_platform::blockdev::AlignedBuf::new(768 * 1024);
        pattern.fill(0, &mut buf);
        io.write_at(0, &buf).unwrap();
        io.flush_durable().unwrap();
    }
    let id = interrupted_operation(
        &h,
        &key,
        &[
            Record::KeysDestroyed {
                operation_id: String::new(),
                destructions: vec![fake_destruction("1")],
            },
            Record::Overwriting {
                operation_id: String::new(),
                target: 0,
                offset: 0,
            },
            Record::Overwriting {
                operation_id: String::new(),
                target: 0,
                offset: 512 * 1024,
            },
        ],
    );
    let opener = Arc::new(FaultyOpener::new(Fault::None));
    let log = opener.log.clone();
    let service = h.open(h.config(), opener, None);
    let view = wait_finished(&service, &id);
    assert_eq!(view.phase, Phase::Reclaimable, "{view:?}");
    let writes: Vec<u64> = log
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(kind, _)| *kind == 'w')
        .map(|(_, offset)| *offset)
        .collect();
    // Writes complete out of order, but none is below the checkpoint.
    assert_eq!(
        writes.iter().min(),
        Some(&(512 * 1024)),
        "resumed at the checkpoint"
    );
    assert_eq!(writes.len(), (2 << 20) / (64 * 1024) - 8);
    assert!(
        h.keys.calls().is_empty(),
        "keys already destroyed: not touched again"
    );
    let document = verified_document(&h, &service.certificate(Some(&id)).unwrap());
    assert!(document.verification.as_ref().unwrap().resumed);
    assert_eq!(key_of(&document), hex::encode([3u8; 32]));
    assert_matches_pattern(&h.images[0], &key_of(&document));
}

#[test]
fn resuming_during_verification_verifies_again_from_scratch() {
    let h = Harness::new(&[1 << 20]);
    let key = PatternKey::from_bytes([4u8; 32]);
    {
        let io = DirectTarget::open(&h.images[0], Access::ReadWrite).unwrap();
        let mut buf = jex_platform::blockdev::AlignedBuf::new(1 << 20);
        Pattern::new(key.clone()).fill(0, &mut buf);
        io.write_at(0, &buf).unwrap();
        io.flush_durable().unwrap();
    }
    let id = interrupted_operation(
        &h,
        &key,
        &[
            Record::KeysDestroyed {
                operation_id: String::new(),
                destructions: vec![fake_destruction("1")],
            },
            Record::Overwriting {
                operation_id: String::new(),
                target: 0,
                offset: 0,
            },
            Record::Overwriting {
                operation_id: String::new(),
                target: 0,
                offset: 1 << 20,
            },
            Record::Verifying {
                operation_id: String::new(),
            },
        ],
    );
    let opener = Arc::new(FaultyOpener::new(Fault::None));
    let log = opener.log.clone();
    let service = h.open(h.config(), opener, None);
    let view = wait_finished(&service, &id);
    assert_eq!(view.phase, Phase::Reclaimable, "{view:?}");
    let ops = log.0.lock().unwrap().clone();
    assert!(
        ops.iter().all(|(kind, _)| *kind == 'r'),
        "nothing rewritten"
    );
    let read: u64 = ops.len() as u64;
    assert!(read >= 1, "verification ran");
    let verifying = h
        .records()
        .iter()
        .filter(|r| matches!(r, Record::Verifying { .. }))
        .count();
    assert_eq!(verifying, 2, "verification restarted and journaled again");
    let document = verified_document(&h, &service.certificate(Some(&id)).unwrap());
    assert!(document.verification.as_ref().unwrap().resumed);
    assert_eq!(document.verification.as_ref().unwrap().sampled_blocks, 16);
}

#[test]
fn a_resumed_operation_with_a_wrong_key_file_fails_instead_of_writing_another_pattern() {
    let h = Harness::new(&[256 * 1024]);
    let key = PatternKey::from_bytes([5u8; 32]);
    let id = interrupted_operation(&h, &key, &[]);
    // Another key in the key file: the journaled commitment does not match.
    let path = h.state_dir().join(format!("keys/{id}.key"));
    std::fs::write(&path, hex::encode([6u8; 32])).unwrap();
    let service = h.service();
    let view = wait_finished(&service, &id);
    assert_eq!(view.phase, Phase::Failed);
    assert!(
        view.failure_reason
            .as_deref()
            .unwrap()
            .contains("does not match the journaled commitment")
    );
    assert!(
        std::fs::read(&h.images[0])
            .unwrap()
            .iter()
            .all(|b| *b == TENANT_BYTE)
    );
}

/// A loop device over an image, detached on drop.
struct LoopDevice(PathBuf);

impl LoopDevice {
    fn attach(image: &Path) -> Self {
        let out = std::process::Command::new("/usr/sbin/losetup")
            .args(["--find", "--show"])
            .arg(image)
            .output()
            .expect("running /usr/sbin/losetup (util-linux) to attach a loop device");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDevice(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("/usr/sbin/losetup")
            .arg("--detach")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_loop_block_device_is_erased_through_the_block_device_path() {
    let h = Harness::new(&[]);
    let image = h.dir.path().join("backing.img");
    write_tenant_image(&image, 3 << 20);
    let device = LoopDevice::attach(&image);

    let target = DirectTarget::open(&device.0, Access::Read).unwrap();
    assert_eq!(
        target.identity().kind,
        jex_platform::blockdev::TargetKind::Device
    );
    assert_eq!(target.size(), 3 << 20, "BLKGETSIZE64");
    assert!(target.io_align() >= 512, "BLKSSZGET");
    drop(target);

    let mut config = h.config();
    config.targets = vec![TargetConfig {
        name: "loop".into(),
        device: device.0.clone(),
        keys: TargetKeys::Luks2 {
            luks_uuid: UUID.to_owned(),
        },
    }];
    let service = h.open(config, Arc::new(DirectOpener), None);
    assert!(service.plan().unwrap()[0].ready);
    let started = service.terminate(terminate_cmd("req-loop")).unwrap();
    let view = wait_finished(&service, &started.operation_id);
    assert_eq!(view.phase, Phase::Reclaimable, "{view:?}");
    let document = verified_document(&h, &service.certificate(None).unwrap());
    let record = &document.targets[0];
    assert_eq!(record.media_type, "block device");
    assert!(
        record.identity.contains("device:rdev=7:"),
        "{}",
        record.identity
    );
    assert_eq!(record.size_bytes, 3 << 20);
    // Through the device and in the backing file: every byte is the pattern.
    assert_matches_pattern(&device.0, &key_of(&document));
    assert_matches_pattern(&image, &key_of(&document));
}

// === The state machine on real journals ===

#[test]
fn every_prefix_of_a_real_journal_replays_to_its_state_and_resumes_to_reclaimable() {
    let h = Harness::new(&[512 << 10, 256 << 10]);
    // One write at a time, so that the journal has exactly one checkpoint per segment; the
    // replay below does not depend on how the writes ran.
    let serial = EraseConfig {
        queue_depth: 1,
        ..h.config()
    };
    let service = h.open(serial, Arc::new(DirectOpener), None);
    let started = service.terminate(terminate_cmd("req-prefix")).unwrap();
    assert_eq!(
        wait_finished(&service, &started.operation_id).phase,
        Phase::Reclaimable
    );
    let original = service.certificate(None).unwrap();
    drop(service);
    let id = started.operation_id;
    let key_hex = key_of(&verified_document(&h, &original));
    let key = PatternKey::from_hex(&key_hex).unwrap();
    let journal = h.records();
    let kinds: Vec<Step> = journal.iter().map(Record::kind).collect();
    // 512 KiB and 256 KiB with a checkpoint every 256 KiB: 5 overwrite records.
    assert_eq!(kinds.len(), 13, "{kinds:?}");
    assert!(replay(&[]).operations.is_empty());

    for len in 1..=journal.len() {
        let prefix = &journal[..len];
        let last = &prefix[len - 1];
        // Replay gives the state the last record implies, with its data.
        let replayed = replay(prefix);
        assert!(replayed.refused.is_empty(), "prefix {len}: {replayed:?}");
        let op = &replayed.operations[0];
        // A journal ending with a record leaves the operation at that record's step.
        assert_eq!(op.state.kind(), last.kind(), "prefix {len}");
        if let Record::Overwriting { target, offset, .. } = last {
            let at = op.state.overwrite_checkpoint().unwrap();
            assert_eq!((at.target, at.offset), (*target, *offset), "prefix {len}");
        }
        let snapshots = prefix
            .iter()
            .filter(|r| r.kind() == Step::KeysSnapshot)
            .count();

        // A state directory holding just this prefix, as a crash would leave it.
        let mut config = h.config();
        config.state_dir = h.dir.path().join(format!("resume-{len}"));
        let dirs = crate::layout::StateDirs {
            root: config.state_dir.clone(),
        };
        dirs.create().unwrap();
        let (mut prefix_journal, _) = Journal::<Record>::open(&dirs.journal()).unwrap();
        for record in prefix {
            prefix_journal.append(record).unwrap();
        }
        drop(prefix_journal);
        if !op.has_ended() {
            write_key_file(&dirs.key_file(&id), &key).unwrap();
        }
        if op.state.certification().is_some() {
            dirs.store_certificate(&id, &original).unwrap();
        }

        let calls_before = h.keys.calls().len();
        let service = h.open(config, Arc::new(DirectOpener), None);
        let view = wait_finished(&service, &id);
        assert_eq!(view.phase, Phase::Reclaimable, "prefix {len}: {view:?}");
        assert_eq!(service.lifecycle(), Lifecycle::Reclaimable);
        let certificate = service.certificate(None).unwrap();
        drop(service);

        // The resumed journal continues the prefix legally, to the end.
        let resumed = Journal::<Record>::read(&dirs.journal()).unwrap().records;
        assert_eq!(&resumed[..len], prefix, "prefix {len}");
        let replayed = replay(&resumed);
        assert!(replayed.refused.is_empty(), "prefix {len}: {replayed:?}");
        assert_eq!(replayed.operations[0].state.kind(), Step::Reclaimable);
        let next = resumed.get(len).map(Record::kind);
        let expected_next = match last {
            Record::Requested(_) => Some(Step::TargetsPinned),
            Record::TargetsPinned { .. } => Some(Step::KeysSnapshot),
            Record::KeysSnapshot { .. } if snapshots < 2 => Some(Step::KeysSnapshot),
            Record::KeysSnapshot { .. } => Some(Step::KeysDestroyed),
            Record::KeysDestroyed { .. } => Some(Step::Overwriting),
            // The last checkpoint of the last target: verification starts.
            Record::Overwriting { target, offset, .. } if (*target, *offset) == (1, 256 << 10) => {
                Some(Step::Verifying)
            }
            Record::Overwriting { .. } => Some(Step::Overwriting),
            // Verification restarts from scratch.
            Record::Verifying { .. } => Some(Step::Verifying),
            Record::Certified { .. } => Some(Step::Reclaimable),
            Record::Reclaimable { .. }
            | Record::AwaitingDeviceErase { .. }
            | Record::Failed { .. } => None,
        };
        assert_eq!(next, expected_next, "prefix {len}: {resumed:?}");

        // Keys: snapshots already journaled are never taken again.
        let calls = h.keys.calls()[calls_before..].to_vec();
        let snapshot_calls = calls.iter().filter(|c| c.ends_with(":snapshot")).count();
        let destroyed = prefix.iter().any(|r| r.kind() == Step::KeysDestroyed);
        let expected_snapshots = if destroyed { 0 } else { 2 - snapshots };
        assert_eq!(
            snapshot_calls, expected_snapshots,
            "prefix {len}: {calls:?}"
        );

        // The certificate verifies, with the same pattern, now written over every image.
        let document = verified_document(&h, &certificate);
        assert_eq!(key_of(&document), key_hex, "prefix {len}");
        assert_eq!(document.operation_id, id);
        if last.kind() >= Step::Certified {
            assert_eq!(
                certificate, original,
                "prefix {len}: the stored certificate"
            );
        } else {
            assert!(
                document.verification.as_ref().unwrap().resumed,
                "prefix {len}"
            );
        }
        for image in &h.images {
            assert_matches_pattern(image, &key_hex);
        }
    }
}

#[test]
fn a_damaged_journal_fails_its_operation_and_a_new_terminate_erases_again() {
    let h = Harness::new(&[256 << 10]);
    let key = PatternKey::from_bytes([7u8; 32]);
    // Hand-edited: the overwrite starts while key destruction was never journaled.
    let id = interrupted_operation(
        &h,
        &key,
        &[Record::Overwriting {
            operation_id: String::new(),
            target: 0,
            offset: 0,
        }],
    );
    let service = h.service();
    assert_eq!(service.lifecycle(), Lifecycle::EraseFailed);
    let view = service.watch(Some(&id)).unwrap().borrow().clone();
    assert_eq!(view.phase, Phase::Failed);
    assert_eq!(view.outcome, Some(Outcome::Failed));
    assert_eq!(view.finished_unix_ms, None);
    let reason = view.failure_reason.unwrap();
    assert!(
        reason.contains("damaged")
            && reason.contains("record 3")
            && reason.contains("cannot follow keys_snapshot"),
        "{reason}"
    );
    assert!(matches!(
        service.certificate(Some(&id)),
        Err(EraseError::NotCertified {
            phase: Phase::Failed,
            ..
        })
    ));
    // Never resumed: no key touched, no byte written, the key file removed.
    assert!(h.keys.calls().is_empty());
    assert!(
        std::fs::read(&h.images[0])
            .unwrap()
            .iter()
            .all(|b| *b == TENANT_BYTE)
    );
    assert_eq!(
        std::fs::read_dir(h.state_dir().join("keys"))
            .unwrap()
            .count(),
        0
    );
    // The controller can start over.
    let next = service.terminate(terminate_cmd("req-again")).unwrap();
    assert_eq!(
        wait_finished(&service, &next.operation_id).phase,
        Phase::Reclaimable
    );
}

// === A full disk under the journal ===

/// A write fault that fails appends of records whose JSON holds `needle` with `ENOSPC`: once,
/// or (`stays_full`) from the first such record on.
fn disk_full_at(needle: &'static str, stays_full: bool) -> crate::journal::WriteFault {
    let full = AtomicBool::new(false);
    let fired = AtomicBool::new(false);
    Arc::new(move |payload: &[u8]| {
        let hit = payload
            .windows(needle.len())
            .any(|w| w == needle.as_bytes());
        if hit && !fired.swap(true, Ordering::SeqCst) {
            full.store(true, Ordering::SeqCst);
            return Some(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        (stays_full && full.load(Ordering::SeqCst))
            .then(|| std::io::Error::from_raw_os_error(libc::ENOSPC))
    })
}

#[test]
fn a_journal_append_hitting_a_full_disk_fails_the_operation_with_the_os_error() {
    let h = Harness::new(&[512 << 10]);
    let service = h.service();
    // The last record before `reclaimable`: the certificate is signed and stored by then.
    service.set_journal_write_fault(Some(disk_full_at("\"record\":\"certified\"", false)));
    let started = service.terminate(terminate_cmd("req-enospc")).unwrap();
    let view = wait_finished(&service, &started.operation_id);
    let reason = view.failure_reason.clone().unwrap_or_default();
    assert!(reason.contains("No space left on device"), "{reason}");
    assert!(reason.contains(JOURNAL_FILE), "{reason}");
    assert_failed_not_reclaimable(&h, &service, &view);
    let Some(Record::Failed { reason, .. }) = h.records().pop() else {
        panic!("the failure is journaled");
    };
    assert!(reason.contains("No space left on device"), "{reason}");

    // After a restart the operation is still failed: nothing resumes it to reclaimable.
    drop(service);
    let service = h.service();
    let view = service
        .watch(Some(&started.operation_id))
        .unwrap()
        .borrow()
        .clone();
    assert_failed_not_reclaimable(&h, &service, &view);
}

#[test]
fn a_disk_that_stays_full_fails_the_operation_without_journaling_the_failure() {
    let h = Harness::new(&[512 << 10]);
    let service = h.service();
    service.set_journal_write_fault(Some(disk_full_at("\"record\":\"keys_destroyed\"", true)));
    let started = service
        .terminate(terminate_cmd("req-enospc-stays"))
        .unwrap();
    let view = wait_finished(&service, &started.operation_id);
    assert_eq!(view.phase, Phase::Failed, "{view:?}");
    assert_eq!(service.lifecycle(), Lifecycle::EraseFailed);
    let reason = view.failure_reason.clone().unwrap_or_default();
    assert!(reason.contains("No space left on device"), "{reason}");
    // The failure could not be journaled either: the journal ends before the keys were
    // recorded destroyed, and holds nothing past it.
    let records = h.records();
    assert!(
        records.iter().all(|r| matches!(
            r.kind(),
            Step::Requested | Step::TargetsPinned | Step::KeysSnapshot
        )),
        "{records:?}"
    );
}

// === The pattern key file's lifetime ===

#[test]
fn the_pattern_key_file_lives_until_the_certificate_and_is_gone_before_reclaimable() {
    let h = Harness::new(&[512 << 10]);
    let keys_dir = h.state_dir().join(crate::layout::KEYS_DIR);
    // Before each journal append: the record and how many key files the state holds.
    let seen: Arc<Mutex<Vec<(Step, usize)>>> = Arc::default();
    let hook: RecordHook = {
        let (seen, keys_dir) = (Arc::clone(&seen), keys_dir.clone());
        Arc::new(move |record: &Record| {
            let files = std::fs::read_dir(&keys_dir).unwrap().count();
            seen.lock().unwrap().push((record.kind(), files));
        })
    };
    let service = h.open_hooked(h.config(), Arc::new(DirectOpener), None, Some(hook));
    let started = service.terminate(terminate_cmd("req-key-file")).unwrap();
    let view = wait_finished(&service, &started.operation_id);
    assert_eq!(view.phase, Phase::Reclaimable, "{view:?}");
    // Whoever sees `reclaimable` finds no key left, even if the process exits at once.
    assert_eq!(std::fs::read_dir(&keys_dir).unwrap().count(), 0);
    let seen = seen.lock().unwrap().clone();
    let (last, before) = seen.split_last().unwrap();
    // Up to `certified` the key is on disk (a resumed overwrite or verification needs it)...
    assert!(
        before.iter().all(|(_, files)| *files == 1),
        "key file missing before the certificate: {seen:?}"
    );
    assert_eq!(before.last().map(|(kind, _)| *kind), Some(Step::Certified));
    // ...and it is removed before `reclaimable` is journaled, not after.
    assert_eq!(*last, (Step::Reclaimable, 0), "{seen:?}");
}

// === Read-only queries never wait for the engine's lock ===

#[test]
fn read_only_queries_answer_while_the_engine_holds_its_lock_across_a_journal_write() {
    let h = Harness::new(&[512 << 10]);
    // The journal writes of `keys_destroyed` and of `reclaimable` block, inside the engine's
    // lock, until the test releases them.
    let (inside_tx, inside_rx) = std::sync::mpsc::channel::<Step>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let hook: RecordHook = Arc::new(move |record: &Record| {
        if matches!(record.kind(), Step::KeysDestroyed | Step::Reclaimable) {
            inside_tx.send(record.kind()).unwrap();
            release_rx.lock().unwrap().recv().unwrap();
        }
    });
    let service = Arc::new(h.open_hooked(h.config(), Arc::new(DirectOpener), None, Some(hook)));
    let started = service.terminate(terminate_cmd("req-lock")).unwrap();
    let id = started.operation_id.clone();
    let hang_guard = Duration::from_secs(60);

    // Queries from another thread, as the gRPC edge makes them from tokio's workers.
    let query = |service: &Arc<EraseService>| {
        let service = Arc::clone(service);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let held = service.engine_lock_is_held();
            let answers = (
                service.lifecycle(),
                service.current_operation_id(),
                service.watch(None).map(|rx| rx.borrow().clone()),
                service.certificate(None),
            );
            tx.send((held, answers)).unwrap();
        });
        rx.recv_timeout(hang_guard)
            .expect("read-only queries waited for the engine's lock")
    };

    let blocked = inside_rx.recv_timeout(hang_guard).unwrap();
    assert_eq!(blocked, Step::KeysDestroyed);
    let (held, (lifecycle, current, view, certificate)) = query(&service);
    assert!(held, "the engine holds its lock inside the journal write");
    assert!(service.engine_lock_is_held());
    assert_eq!(lifecycle, Lifecycle::Erasing);
    assert_eq!(current.as_deref(), Some(id.as_str()));
    let view = view.unwrap();
    assert_eq!(view.operation_id, id);
    assert_eq!(view.phase, Phase::Requested);
    assert!(matches!(
        certificate,
        Err(EraseError::NotCertified {
            phase: Phase::Requested,
            ..
        })
    ));
    release_tx.send(()).unwrap();

    let blocked = inside_rx.recv_timeout(hang_guard).unwrap();
    assert_eq!(blocked, Step::Reclaimable);
    let (held, (lifecycle, current, view, certificate)) = query(&service);
    assert!(held, "the engine holds its lock inside the journal write");
    assert_eq!(
        lifecycle,
        Lifecycle::Erasing,
        "certified, not yet reclaimable"
    );
    assert_eq!(current.as_deref(), Some(id.as_str()));
    let view = view.unwrap();
    assert_eq!(view.phase, Phase::Certified);
    assert_eq!(view.outcome, Some(Outcome::Erased));
    let certificate = certificate.unwrap();
    assert_eq!(view.certificate.as_ref(), Some(&certificate));
    verified_document(&h, &certificate);
    release_tx.send(()).unwrap();

    assert_eq!(wait_finished(&service, &id).phase, Phase::Reclaimable);
    assert_eq!(service.lifecycle(), Lifecycle::Reclaimable);
}

// === Module dependencies ===

/// The erase modules, bottom first, as `lib.rs` lists them: each may use only those before it.
const MODULE_ORDER: [&str; 23] = [
    "names",
    "config",
    "pattern",
    "journal",
    "keys",
    "record",
    "state",
    "error",
    "rails",
    "pipeline",
    "overwrite",
    "verify",
    "layout",
    "deps",
    "progress",
    "store",
    "certify",
    "device_erase",
    "attest",
    "steps",
    "plan",
    "service",
    "testing",
];

/// The first path segment after every `crate::` in `source`, comments left out.
fn crate_paths(source: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    for line in source.lines() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    found.push(ident(item.trim()));
                }
            } else {
                found.push(ident(rest));
            }
        }
    }
    found.retain(|s| !s.is_empty());
    found
}

fn module_sources(module: &str) -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.join(format!("{module}.rs"))];
    let mut dirs = vec![src.join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
        .into_iter()
        .filter(|f| f.exists())
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            (f, text)
        })
        .collect()
}

#[test]
fn module_dependencies_point_one_way() {
    let mut checked = 0;
    for (rank, module) in MODULE_ORDER.iter().enumerate() {
        let sources = module_sources(module);
        assert!(!sources.is_empty(), "module {module} has no source");
        for (file, text) in sources {
            checked += 1;
            for used in crate_paths(&text) {
                assert!(
                    used == *module || MODULE_ORDER[..rank].contains(&used.as_str()),
                    "{} uses crate::{used}, which is not a module below {module}",
                    file.display()
                );
            }
            // A top-level module reaches others by `crate::` only (its `super` is the root).
            if file.parent().is_some_and(|p| p.ends_with("src")) {
                assert!(
                    !text.lines().any(|l| l.starts_with("use super::")),
                    "{} imports through the crate root",
                    file.display()
                );
            }
        }
    }
    assert!(checked >= MODULE_ORDER.len());
    // Every module of the crate is in the order.
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| {
            l.trim_start_matches("pub ")
                .strip_prefix("mod ")
                .and_then(|m| m.strip_suffix(';'))
        })
        .filter(|m| *m != "tests")
        .collect();
    let mut expected = MODULE_ORDER.to_vec();
    expected.sort_unstable();
    assert_eq!(declared, expected);
}

// === One view of an erase ===

#[test]
fn once_a_watcher_sees_the_end_of_an_operation_every_query_agrees_under_cpu_contention() {
    // Each round: a refused Terminate, an accepted one whose overwrite fails (every other
    // round) or succeeds, a watcher that reads the operation's views as fast as it can and,
    // the moment one is terminal, asks the lifecycle and current operation as GetHost does.
    const ROUNDS: usize = 120;
    let h = Harness::new(&[256 << 10]);
    let failing = h.open(
        h.config(),
        Arc::new(FaultyOpener::new(Fault::WriteFailsAt(0))),
        None,
    );
    let _busy = BusyCores::start();
    let mut contradictions = Vec::new();
    let mut ends = std::collections::BTreeMap::<String, usize>::new();
    let mut service = failing;
    for round in 0..ROUNDS {
        if round % 2 == 1 {
            // Alternate between a service whose writes fail and one whose erase succeeds.
            drop(service);
            let io: Arc<dyn IoOpener> = if round % 4 == 1 {
                Arc::new(DirectOpener)
            } else {
                Arc::new(FaultyOpener::new(Fault::WriteFailsAt(0)))
            };
            service = h.open(h.config(), io, None);
        }
        let mut refused = terminate_cmd(&format!("req-{round}"));
        refused.host_id = "another-host".into();
        assert!(matches!(
            service.terminate(refused),
            Err(EraseError::HostMismatch { .. })
        ));
        let started = service
            .terminate(terminate_cmd(&format!("req-{round}")))
            .unwrap();
        let rx = service.watch(Some(&started.operation_id)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let last = loop {
            let view = rx.borrow().clone();
            if is_finished(&view) {
                // What GetHost reads, right after WatchErase's last message.
                let host = service.host_state();
                break (view, host.lifecycle, host.operation_id);
            }
            assert!(
                Instant::now() < deadline,
                "round {round} did not finish: {view:?}"
            );
            std::hint::spin_loop();
        };
        let (view, lifecycle, current) = last;
        *ends.entry(view.phase.as_str().to_owned()).or_default() += 1;
        let expected = Lifecycle::of(view.phase, view.outcome);
        if lifecycle != expected || current.as_deref() != Some(view.operation_id.as_str()) {
            contradictions.push(format!(
                "round {round}: watcher saw {:?}/{:?}, then lifecycle {lifecycle:?}, operation {current:?}",
                view.phase, view.outcome
            ));
        }
    }
    assert!(
        contradictions.is_empty(),
        "{} of {ROUNDS} rounds contradicted the watcher's last message: {contradictions:#?}",
        contradictions.len()
    );
    // Both kinds of end were exercised.
    assert!(ends.get("failed").copied().unwrap_or(0) > 0, "{ends:?}");
    assert!(
        ends.get("reclaimable").copied().unwrap_or(0) > 0,
        "{ends:?}"
    );
}
