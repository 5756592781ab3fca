//! The attest half of a device erase (`AttestErase`), run by the agent of the freshly erased OS:
//! it checks the prepare record the controller hands back (signed by an agent of the fleet CA
//! for this host, this operation and nonce), takes the host's storage inventory now, compares
//! the two with [`jex_reclaim::evaluate`] (one evidence line per check) and signs a version 2
//! certificate with its own key — a key whose certificate must be younger than the Terminate.
//! Every line passed: `ERASED`, and the operation becomes reclaimable. Any failed: `FAILED`,
//! signed too, the failed lines named as the certificate's exceptions.
//!
//! The operation is journaled like any other (same operation id as the Terminate's): its
//! `requested` record carries the prepare record, then `certified` (and `reclaimable`), so a
//! repeated `AttestErase` returns the same answer and a crash before `certified` runs the checks
//! again at the next start. An agent that has run any other operation refuses to attest: only
//! a freshly erased OS's agent may (see [`crate::EraseService::attest`]).

use jex_attest::{
    CertificateDocumentV2, DOCUMENT_SCHEMA_V2, DeviceEraseRecord, EvidenceLine, KEY_SOURCE_FILE,
    OUTCOME_ERASED, OUTCOME_FAILED, Sanitization, SignedCertificate, SignerRecord,
    TECHNIQUE_APPLE_EACS, TECHNIQUE_DEVICE_CRYPTO_ERASE, TargetRecordV2,
};
use jex_reclaim::{AttestationContext, Evidence, Platform, PrepareRecord, SignedPrepareRecord};
use tracing::{info, warn};

use crate::certify::rfc3339;
use crate::config::InternalSsdConfig;
use crate::error::EraseError;
use crate::record::{Outcome, RequestedRecord};
use crate::store::Shared;

/// The name of the one target of an attestation's certificate.
pub const INTERNAL_SSD_TARGET: &str = "internal-ssd";

/// What the controller sends with `AttestErase`, decoded by the gRPC edge.
#[derive(Clone, PartialEq, Eq)]
pub struct AttestCommand {
    /// The operation id of the Terminate that awaits its device erase.
    pub operation_id: String,
    /// The host the controller believes it is talking to.
    pub host_id: String,
    /// The Terminate's nonce.
    pub nonce: Vec<u8>,
    /// The prepare record WatchErase returned.
    pub prepare: SignedPrepareRecord,
}

impl std::fmt::Debug for AttestCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestCommand")
            .field("operation_id", &self.operation_id)
            .field("host_id", &self.host_id)
            .field("nonce_bytes", &self.nonce.len())
            .field("prepare_record_bytes", &self.prepare.record_json.len())
            .finish()
    }
}

/// The attestation's certificate and outcome for `requested` (an attestation operation).
pub(crate) fn attest(
    shared: &Shared,
    requested: &RequestedRecord,
    ssd: &InternalSsdConfig,
    now_unix_ms: u64,
) -> Result<(SignedCertificate, Outcome), EraseError> {
    let stored = requested
        .attest
        .as_ref()
        .ok_or_else(|| EraseError::Internal {
            detail: "an attestation without its prepare record".into(),
        })?;
    let prepare = stored.to_signed().ok_or_else(|| EraseError::Internal {
        detail: "the journaled prepare record's hex is damaged".into(),
    })?;
    let fleet_ca = read_fleet_ca(shared)?;
    let nonce = hex::decode(&requested.nonce_hex).map_err(|_| EraseError::Internal {
        detail: "the journaled nonce is not hex".into(),
    })?;
    let signer = shared.deps.signer.as_ref();
    let chain = signer.chain_der();
    let leaf = chain.first().ok_or_else(|| EraseError::DeviceErase {
        detail: "the agent's signer has no certificate".into(),
    })?;
    let verified = jex_reclaim::verify_prepare(
        &prepare,
        &fleet_ca,
        &requested.operation_id,
        &nonce,
        &requested.host_id,
    );
    let mut lines = vec![jex_reclaim::prepare_record_evidence(&verified)];
    // The tenancy began to end at the Terminate; without a record that verifies, at the
    // attestation's own start (the outcome is FAILED then anyway).
    let terminate_unix_ms = match &verified {
        Ok(record) => record.terminate_unix_ms,
        Err(_) => requested.started_unix_ms,
    };
    let started_at = rfc3339(terminate_unix_ms);
    let signer_record = SignerRecord::new(KEY_SOURCE_FILE, leaf, &started_at).map_err(|err| {
        EraseError::DeviceErase {
            detail: format!("reading the agent certificate's notBefore: {err}"),
        }
    })?;
    if let Ok(record) = &verified {
        let now = crate::device_erase::take_inventory(
            ssd,
            &shared.config.tools,
            &shared.deps.host,
            now_unix_ms,
        )?;
        lines.extend(jex_reclaim::evaluate(
            &record.inventory,
            &now,
            &AttestationContext {
                terminate_unix_ms,
                signer_not_before_unix_ms: unix_ms(&signer_record.certificate_not_before)?,
                allowed_accounts: ssd.allowed_accounts.clone(),
                platform: platform(),
            },
        ));
    }
    let passed = jex_reclaim::all_passed(&lines);
    let failed: Vec<String> = jex_reclaim::failed_checks(&lines)
        .into_iter()
        .map(str::to_owned)
        .collect();
    for line in &lines {
        if line.passed {
            info!(check = line.check.name(), detail = %line.detail, "attestation evidence passed");
        } else {
            warn!(check = line.check.name(), detail = %line.detail, "attestation evidence FAILED");
        }
    }
    let document = document(
        shared,
        requested,
        verified.as_ref().ok(),
        &prepare,
        &lines,
        signer_record,
        (passed, failed),
        (started_at, now_unix_ms),
    );
    let certificate =
        jex_attest::sign_v2(&document, signer).map_err(|source| EraseError::Sign { source })?;
    let outcome = if passed {
        Outcome::Erased
    } else {
        Outcome::Failed
    };
    Ok((certificate, outcome))
}

#[allow(clippy::too_many_arguments)]
fn document(
    shared: &Shared,
    requested: &RequestedRecord,
    record: Option<&PrepareRecord>,
    prepare: &SignedPrepareRecord,
    lines: &[Evidence],
    signer: SignerRecord,
    (passed, failed): (bool, Vec<String>),
    (started_at, finished_unix_ms): (String, u64),
) -> CertificateDocumentV2 {
    let (technique, method, basis) = match platform() {
        Platform::Mac => (
            TECHNIQUE_APPLE_EACS,
            "Apple Erase All Content and Settings (MDM EraseDevice) or a DFU restore, started by the controller",
            "EACS destroys the Secure Enclave keys of every internal volume: NIST SP 800-88 Purge by cryptographic erase",
        ),
        Platform::Linux => (
            TECHNIQUE_DEVICE_CRYPTO_ERASE,
            "the boot disk's LUKS2 keys destroyed and the disk re-provisioned outside the tenant's OS, started by the controller",
            "every LUKS2 volume of the boot disk was replaced (new UUIDs): the keys that encrypted the tenant's data are gone, NIST SP 800-88 Purge by cryptographic erase",
        ),
    };
    let size_bytes = record.map_or(0, |r| {
        r.inventory
            .volumes
            .iter()
            .filter_map(|v| v.size_bytes)
            .sum()
    });
    CertificateDocumentV2 {
        schema: DOCUMENT_SCHEMA_V2.to_owned(),
        operation_id: requested.operation_id.clone(),
        // The Terminate's key when the record verifies and names it; else the attestation's.
        request_id: record
            .map(|r| r.request_id.clone())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| requested.request_id.clone()),
        host: shared.deps.host.clone(),
        controller_nonce_hex: requested.nonce_hex.clone(),
        standard: "NIST SP 800-88 Rev. 2".to_owned(),
        tool: format!("jex-agent {}", crate::certify::AGENT_VERSION),
        targets: vec![TargetRecordV2 {
            name: INTERNAL_SSD_TARGET.to_owned(),
            kind: "internal-ssd".to_owned(),
            media_make: String::new(),
            media_model: String::new(),
            media_serial: shared.deps.host.serial_number.clone(),
            media_type: "internal SSD".to_owned(),
            device: "internal SSD".to_owned(),
            identity: format!("prepare-record-sha256:{}", prepare.sha256_hex()),
            size_bytes,
            // `of` knows every technique constant above.
            sanitization: Sanitization::of(technique, basis).unwrap_or(Sanitization {
                category: jex_attest::CATEGORY_PURGE.to_owned(),
                technique: technique.to_owned(),
                basis: basis.to_owned(),
            }),
            key_destruction: None,
            overwrite: None,
        }],
        verification: None,
        pattern: None,
        device_erase: Some(DeviceEraseRecord {
            method: method.to_owned(),
            prepare_record_sha256: prepare.sha256_hex(),
            evidence: lines
                .iter()
                .map(|l| EvidenceLine {
                    check: l.check.name().to_owned(),
                    passed: l.passed,
                    detail: l.detail.clone(),
                })
                .collect(),
        }),
        signer,
        outcome: if passed {
            OUTCOME_ERASED
        } else {
            OUTCOME_FAILED
        }
        .to_owned(),
        exceptions: failed,
        started_at,
        finished_at: rfc3339(finished_unix_ms),
        previous_certificate_sha256: requested.previous_certificate_sha256.clone(),
    }
}

fn platform() -> Platform {
    match jex_platform::OS {
        jex_platform::Os::MacOs => Platform::Mac,
        jex_platform::Os::Linux | jex_platform::Os::Other => Platform::Linux,
    }
}

fn read_fleet_ca(shared: &Shared) -> Result<Vec<u8>, EraseError> {
    let path = shared
        .deps
        .fleet_ca
        .as_ref()
        .ok_or_else(|| EraseError::DeviceErase {
            detail:
                "no fleet CA was given to the erase service, so no prepare record can be checked"
                    .into(),
        })?;
    std::fs::read(path).map_err(|err| EraseError::DeviceErase {
        detail: format!("reading the fleet CA {}: {err}", path.display()),
    })
}

/// Unix milliseconds of an RFC 3339 time.
fn unix_ms(rfc3339: &str) -> Result<u64, EraseError> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map_err(|err| EraseError::Internal {
            detail: format!("the signer's notBefore {rfc3339:?}: {err}"),
        })?;
    Ok(u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
}
