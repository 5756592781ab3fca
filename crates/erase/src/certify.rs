//! Certificate assembly: the [`CertificateDocument`] of a verified erase, from the request,
//! the pinned targets, the key destruction evidence, the pattern and what verification read.
//! Signing and storing it are steps of the engine (`steps`).

use jex_attest::{
    CertificateDocument, DOCUMENT_SCHEMA, HostIdentity, PatternRecord, TargetRecord,
    VerificationRecord,
};

use crate::pattern::{PATTERN_ALGORITHM, Pattern};
use crate::record::{Outcome, RequestedRecord};
use crate::state::Destroyed;
use crate::verify::SamplePlan;

/// The version of the erase tool, as named in certificates (`jex-agent <version>`).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Standards written into certificates.
pub const STANDARD: &str = "NIST SP 800-88 Rev. 2; IEEE 2883-2022";
/// NIST method type.
pub const METHOD_TYPE: &str = "Purge";
/// NIST method used.
pub const METHOD_USED: &str = "Crypto Erase + Overwrite";

/// What verification read, for the certificate.
#[derive(Debug, Clone)]
pub struct Verification {
    /// One plan per target, in order, each read back in full without a mismatch.
    pub plans: Vec<SamplePlan>,
    /// Whether the operation was resumed after a restart.
    pub resumed: bool,
}

/// The certificate document of a verified erase, and its outcome: `ERASED`, or
/// `ERASED_WITH_EXCEPTIONS` when a file target lives on a copy-on-write filesystem.
pub fn document(
    host: &HostIdentity,
    requested: &RequestedRecord,
    destroyed: &Destroyed,
    pattern: &Pattern,
    verification: &Verification,
    finished_unix_ms: u64,
) -> (CertificateDocument, Outcome) {
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
    let targets: Vec<TargetRecord> = requested
        .targets
        .iter()
        .zip(pinned)
        .zip(&destroyed.destructions)
        .zip(&verification.plans)
        .map(|(((target, pin), destruction), plan)| TargetRecord {
            name: target.name.clone(),
            backend: target.backend().as_str().to_owned(),
            media_make: pin.media.make.clone(),
            media_model: pin.media.model.clone(),
            media_serial: pin.media.serial.clone(),
            media_type: pin.identity.kind.media_type().to_owned(),
            device: target.device.display().to_string(),
            identity: format!("{}; {}", target.pin(), pin.identity.fingerprint()),
            size_bytes: pin.identity.size_bytes,
            key_destruction: destruction.clone(),
            overwrite_passes: 1,
            verified_blocks: plan.blocks,
            mismatched_blocks: 0,
        })
        .collect();
    let total_bytes: u64 = pinned.iter().map(|p| p.identity.size_bytes).sum();
    let sampled_bytes: u64 = verification.plans.iter().map(|p| p.bytes).sum();
    let all_full = verification.plans.iter().all(|p| p.full);
    let settings = &requested.settings;
    let document = CertificateDocument {
        schema: DOCUMENT_SCHEMA.to_owned(),
        operation_id: requested.operation_id.clone(),
        request_id: requested.request_id.clone(),
        host: host.clone(),
        controller_nonce_hex: requested.nonce_hex.clone(),
        standard: STANDARD.to_owned(),
        method_type: METHOD_TYPE.to_owned(),
        method_used: METHOD_USED.to_owned(),
        tool: format!("jex-agent {AGENT_VERSION}"),
        targets,
        verification: VerificationRecord {
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
        },
        pattern: PatternRecord {
            algorithm: PATTERN_ALGORITHM.to_owned(),
            key_hex: pattern.key().reveal_hex().to_string(),
        },
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
