//! Certificate assembly: the version 2 [`CertificateDocumentV2`] of a verified erase, from the
//! request, the pinned targets, the key destruction evidence, the pattern and what
//! verification read. Each target states the NIST SP 800-88 category and technique that
//! actually applies to it ([`sanitization`]); signing and storing the document are steps of the
//! engine (`steps`).

use jex_attest::{
    CertificateDocumentV2, DOCUMENT_SCHEMA_V2, HostIdentity, OverwriteRecord, PatternRecord,
    Sanitization, SignerRecord, TECHNIQUE_CRYPTO_ERASE_OVERWRITE, TECHNIQUE_OVERWRITE,
    TargetRecordV2, VerificationRecord,
};

use crate::config::Backend;
use crate::pattern::{PATTERN_ALGORITHM, Pattern};
use crate::record::{Outcome, RequestedRecord};
use crate::state::Destroyed;
use crate::verify::SamplePlan;

/// The version of the erase tool, as named in certificates (`jex-agent <version>`).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Standards written into certificates.
pub const STANDARD: &str = "NIST SP 800-88 Rev. 2; IEEE 2883-2022";

/// What verification read, for the certificate.
#[derive(Debug, Clone)]
pub struct Verification {
    /// One plan per target, in order, each read back in full without a mismatch.
    pub plans: Vec<SamplePlan>,
    /// Whether the operation was resumed after a restart.
    pub resumed: bool,
}

/// The NIST SP 800-88 category and technique that hold for a target of `backend`, and why.
///
/// - `luks2`: every keyslot destroyed and checked, so the volume key that encrypted the data is
///   gone (Purge by cryptographic erase), then the whole target overwritten and verified.
/// - `apfs-volume`: the volume deleted, then its disk overwritten through its block interface
///   and verified. The volume's keys are not shown destroyed (an external disk holds no Secure
///   Enclave keys, and the volume may not have been encrypted), and an overwrite of flash does
///   not reach spare blocks: Clear, not Purge. The internal SSD is a device erase instead.
pub fn sanitization(backend: Backend) -> Sanitization {
    let (technique, basis) = match backend {
        Backend::Luks2 => (
            TECHNIQUE_CRYPTO_ERASE_OVERWRITE,
            "every LUKS2 keyslot destroyed and checked (the volume key is gone), then the whole target overwritten with the pattern and read back",
        ),
        Backend::ApfsVolume => (
            TECHNIQUE_OVERWRITE,
            "the APFS volume deleted and its disk overwritten through the block interface and read back; no key destruction is shown and an overwrite of flash does not reach spare blocks: NIST SP 800-88 Clear",
        ),
    };
    // Both are techniques version 2 knows; `of` only fails on an unknown one.
    Sanitization::of(technique, basis).unwrap_or_else(|| Sanitization {
        category: jex_attest::CATEGORY_CLEAR.to_owned(),
        technique: technique.to_owned(),
        basis: basis.to_owned(),
    })
}

/// The certificate document of a verified erase, and its outcome: `ERASED`, or
/// `ERASED_WITH_EXCEPTIONS` when a file target lives on a copy-on-write filesystem. `signer`
/// is the signing key's record (its certificate's `notBefore` against the Terminate).
pub fn document(
    host: &HostIdentity,
    requested: &RequestedRecord,
    destroyed: &Destroyed,
    pattern: &Pattern,
    verification: &Verification,
    signer: SignerRecord,
    finished_unix_ms: u64,
) -> (CertificateDocumentV2, Outcome) {
    let pinned = &destroyed.pinned;
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
    let targets: Vec<TargetRecordV2> = requested
        .targets
        .iter()
        .zip(pinned)
        .zip(&destroyed.destructions)
        .zip(&verification.plans)
        .map(|(((target, pin), destruction), plan)| TargetRecordV2 {
            name: target.name.clone(),
            kind: target.backend().as_str().to_owned(),
            media_make: pin.media.make.clone(),
            media_model: pin.media.model.clone(),
            media_serial: pin.media.serial.clone(),
            media_type: pin.identity.kind.media_type().to_owned(),
            device: target.device.display().to_string(),
            identity: format!("{}; {}", target.pin(), pin.identity.fingerprint()),
            size_bytes: pin.identity.size_bytes,
            sanitization: sanitization(target.backend()),
            key_destruction: Some(destruction.clone()),
            overwrite: Some(OverwriteRecord {
                passes: 1,
                bytes: pin.identity.size_bytes,
                verified_blocks: plan.blocks,
                mismatched_blocks: 0,
            }),
        })
        .collect();
    let total_bytes: u64 = pinned.iter().map(|p| p.identity.size_bytes).sum();
    let sampled_bytes: u64 = verification.plans.iter().map(|p| p.bytes).sum();
    let all_full = verification.plans.iter().all(|p| p.full);
    let settings = &requested.settings;
    let document = CertificateDocumentV2 {
        schema: DOCUMENT_SCHEMA_V2.to_owned(),
        operation_id: requested.operation_id.clone(),
        request_id: requested.request_id.clone(),
        host: host.clone(),
        controller_nonce_hex: requested.nonce_hex.clone(),
        standard: STANDARD.to_owned(),
        tool: format!("jex-agent {AGENT_VERSION}"),
        targets,
        verification: Some(VerificationRecord {
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
        }),
        pattern: Some(PatternRecord {
            algorithm: PATTERN_ALGORITHM.to_owned(),
            key_hex: pattern.key().reveal_hex().to_string(),
        }),
        device_erase: None,
        signer,
        outcome: outcome.as_str().to_owned(),
        exceptions,
        started_at: rfc3339(requested.started_unix_ms),
        finished_at: rfc3339(finished_unix_ms),
        previous_certificate_sha256: requested.previous_certificate_sha256.clone(),
    };
    (document, outcome)
}

/// RFC 3339 UTC time of a Unix time in milliseconds (empty if out of range).
pub(crate) fn rfc3339(unix_ms: u64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
