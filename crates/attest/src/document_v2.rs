//! The certificate-of-sanitization document, version 2: honest per target.
//!
//! Version 1 ([`super::CertificateDocument`]) states one NIST method for the whole document
//! ("Purge / Crypto Erase + Overwrite"), which holds for LUKS2 targets and nothing else. Version
//! 2 states, for each target, the NIST SP 800-88 category and technique that actually applies
//! and why ([`Sanitization`]):
//!
//! | target | category | technique |
//! |---|---|---|
//! | LUKS2 (keyslots destroyed, then overwritten and verified) | Purge | [`TECHNIQUE_CRYPTO_ERASE_OVERWRITE`] |
//! | a plain file; an external disk without Secure Enclave keys | Clear | [`TECHNIQUE_OVERWRITE`] |
//! | the internal SSD of an Apple Silicon Mac, erased by EACS | Purge | [`TECHNIQUE_APPLE_EACS`] |
//! | a Linux host's boot disk, erased outside the tenant's OS | Purge | [`TECHNIQUE_DEVICE_CRYPTO_ERASE`] |
//!
//! An overwrite of flash through its block interface does not reach spare blocks, so NIST
//! counts it as Clear, not Purge; a file's overwrite can miss blocks a copy-on-write file
//! system left behind. The internal SSD is not overwritten at all: Erase All Content and
//! Settings destroys the Secure Enclave keys of every internal volume (Purge by cryptographic
//! erase), and the [`DeviceEraseRecord`] carries the evidence, checked from the fresh OS after
//! the erase, that it happened.
//!
//! The document also names the key that signed it ([`SignerRecord`]): on a device erase the
//! signer is the agent of the fresh OS, whose certificate was issued after the Terminate was
//! accepted, so no key the tenant could have reached signed it.
//!
//! Everything else keeps its version 1 meaning and form: the same canonical JSON
//! ([`super::canonical`]), the same signature algorithm, the same bundle file; only the
//! signing domain differs ([`super::SIGNING_DOMAIN_V2`]), so a signature made for one version
//! never verifies as the other. The rules a document must satisfy are in
//! [`super::consistency_v2`].

use super::{HostIdentity, KeyDestruction, PatternRecord, VerificationRecord};

/// Schema identifier written into every version 2 document.
pub const DOCUMENT_SCHEMA_V2: &str = "jex.erase-certificate/v2";

/// NIST SP 800-88 category Purge.
pub const CATEGORY_PURGE: &str = "Purge";
/// NIST SP 800-88 category Clear.
pub const CATEGORY_CLEAR: &str = "Clear";

/// LUKS2: every keyslot destroyed (the key that encrypted the data is gone), then the whole
/// target overwritten and the overwrite verified. Purge.
pub const TECHNIQUE_CRYPTO_ERASE_OVERWRITE: &str = "Cryptographic Erase + Overwrite";
/// An overwrite through the block or file interface, verified by read-back: a plain file, or
/// an external disk without Secure Enclave keys. Clear.
pub const TECHNIQUE_OVERWRITE: &str = "Overwrite";
/// The internal SSD of an Apple Silicon Mac: Erase All Content and Settings destroyed the
/// Secure Enclave keys of every internal volume, shown by the post-erase evidence. Purge.
pub const TECHNIQUE_APPLE_EACS: &str =
    "Cryptographic Erase (Apple EACS: Secure Enclave keys destroyed)";
/// A Linux host's boot disk, erased outside the tenant's OS (its LUKS2 keys destroyed and the
/// disk re-provisioned by the fleet), shown by the post-erase evidence. Purge.
pub const TECHNIQUE_DEVICE_CRYPTO_ERASE: &str =
    "Cryptographic Erase (device erase outside the tenant's OS: LUKS2 keys destroyed)";

/// Every technique a version 2 document may name, with its category.
pub const TECHNIQUES: [(&str, &str); 4] = [
    (TECHNIQUE_CRYPTO_ERASE_OVERWRITE, CATEGORY_PURGE),
    (TECHNIQUE_OVERWRITE, CATEGORY_CLEAR),
    (TECHNIQUE_APPLE_EACS, CATEGORY_PURGE),
    (TECHNIQUE_DEVICE_CRYPTO_ERASE, CATEGORY_PURGE),
];

/// Whether `technique` is a device erase the agent did not perform itself (attested after it
/// from the fresh OS, never overwritten by the agent).
pub fn is_device_erase(technique: &str) -> bool {
    technique == TECHNIQUE_APPLE_EACS || technique == TECHNIQUE_DEVICE_CRYPTO_ERASE
}

/// The NIST category of `technique`, or `None` for a technique version 2 does not know.
pub fn category_of(technique: &str) -> Option<&'static str> {
    TECHNIQUES
        .iter()
        .find(|(t, _)| *t == technique)
        .map(|&(_, category)| category)
}

/// [`SignerRecord::key_source`] of a key read from a file on the host.
pub const KEY_SOURCE_FILE: &str = "file";

/// One signed version 2 erase certificate's content.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateDocumentV2 {
    /// Always [`DOCUMENT_SCHEMA_V2`].
    pub schema: String,
    /// The erase operation id (UUID), shared by both halves of a device erase.
    pub operation_id: String,
    /// The controller's idempotency key of the Terminate.
    pub request_id: String,
    /// The host that was erased.
    pub host: HostIdentity,
    /// The controller's nonce, lowercase hex (the Terminate's, on both halves).
    pub controller_nonce_hex: String,
    /// Standards followed, e.g. `NIST SP 800-88 Rev. 2; IEEE 2883-2022`.
    pub standard: String,
    /// The tool and its version, e.g. `jex-agent 0.1.0`.
    pub tool: String,
    /// Every target erased, in config order, each with its own category and technique.
    pub targets: Vec<TargetRecordV2>,
    /// How the overwrites were verified; absent when no target was overwritten.
    pub verification: Option<VerificationRecord>,
    /// The overwrite pattern, its key revealed; absent when no target was overwritten.
    pub pattern: Option<PatternRecord>,
    /// The device erase and the evidence checked after it; absent when the agent erased
    /// every target itself.
    pub device_erase: Option<DeviceEraseRecord>,
    /// Which key signed this document.
    pub signer: SignerRecord,
    /// `ERASED`, `ERASED_WITH_EXCEPTIONS` or `FAILED`.
    pub outcome: String,
    /// Machine-readable reasons when the outcome is not `ERASED`.
    pub exceptions: Vec<String>,
    /// RFC 3339 UTC time the operation (the Terminate) was accepted.
    pub started_at: String,
    /// RFC 3339 UTC time the last check finished (the overwrite's verification, or the
    /// post-erase evidence).
    pub finished_at: String,
    /// SHA-256 (hex) of the previous certificate's `document_json` on this host, if any.
    pub previous_certificate_sha256: Option<String>,
}

impl CertificateDocumentV2 {
    /// The revealed pattern key (lowercase hex), when a target was overwritten.
    pub fn pattern_key_hex(&self) -> Option<&str> {
        self.pattern.as_ref().map(|p| p.key_hex.as_str())
    }
}

/// One erased target (a NIST "media" entry) with the sanitization that applies to it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRecordV2 {
    /// Name from config.
    pub name: String,
    /// What the target is: `luks2`, `file`, `block-device`, `apfs-volume`, `external-disk`,
    /// `internal-ssd`.
    pub kind: String,
    /// Media manufacturer, empty when unknown (e.g. a disk image).
    pub media_make: String,
    /// Media model, or `disk image`.
    pub media_model: String,
    /// Media serial number, empty when unknown.
    pub media_serial: String,
    /// Media type: `file`, `block device`, `internal SSD`.
    pub media_type: String,
    /// The path of the target (a file, a device node, `disk0` for an internal SSD).
    pub device: String,
    /// The stable identity checked before every destructive step (e.g. `luks-uuid:…`).
    pub identity: String,
    /// Size of the target in bytes.
    pub size_bytes: u64,
    /// NIST category, technique and why they hold.
    pub sanitization: Sanitization,
    /// How the keys were destroyed by the agent, with evidence (a LUKS2 target); absent when
    /// the agent destroyed no key itself.
    pub key_destruction: Option<KeyDestruction>,
    /// The overwrite of this target and its read-back; absent when it was not overwritten
    /// (a device-erase target).
    pub overwrite: Option<OverwriteRecord>,
}

/// The NIST SP 800-88 sanitization that applies to one target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sanitization {
    /// [`CATEGORY_PURGE`] or [`CATEGORY_CLEAR`].
    pub category: String,
    /// One of [`TECHNIQUES`].
    pub technique: String,
    /// Why the category holds for this target, in one sentence.
    pub basis: String,
}

impl Sanitization {
    /// The sanitization of `technique` (its category from [`category_of`]), or `None` for an
    /// unknown technique.
    pub fn of(technique: &str, basis: impl Into<String>) -> Option<Self> {
        Some(Self {
            category: category_of(technique)?.to_owned(),
            technique: technique.to_owned(),
            basis: basis.into(),
        })
    }
}

/// The overwrite of one target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverwriteRecord {
    /// Overwrite passes (1).
    pub passes: u32,
    /// Bytes overwritten.
    pub bytes: u64,
    /// Sampled blocks read back on this target.
    pub verified_blocks: u64,
    /// Mismatching blocks found on this target.
    pub mismatched_blocks: u64,
}

/// A device erase the agent did not perform itself (Apple EACS through MDM `EraseDevice`, or a
/// DFU restore), and the evidence the agent of the fresh OS checked afterwards.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEraseRecord {
    /// E.g. `Apple Erase All Content and Settings via MDM EraseDevice, or DFU restore`.
    pub method: String,
    /// SHA-256 (lowercase hex) of the signed prepare record's bytes: the inventory taken
    /// before the erase that the evidence compares with.
    pub prepare_record_sha256: String,
    /// One line per check, in the order they were made.
    pub evidence: Vec<EvidenceLine>,
}

/// One post-erase check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceLine {
    /// The check's stable name, e.g. `tenant_volumes_gone`.
    pub check: String,
    /// Whether it passed.
    pub passed: bool,
    /// What was seen.
    pub detail: String,
}

/// The key that signed the document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerRecord {
    /// Where the key lives: [`KEY_SOURCE_FILE`] for a key file on the host.
    pub key_source: String,
    /// The signer certificate's `notBefore`, RFC 3339 UTC. The verifier checks it against the
    /// certificate that signed.
    pub certificate_not_before: String,
    /// Whether the signer certificate was issued after the Terminate was accepted
    /// (`certificate_not_before` > `started_at`): then no key the tenant could reach signed.
    pub born_after_tenancy: bool,
}

impl SignerRecord {
    /// The record of the signer whose leaf certificate is `leaf_der`, for a document whose
    /// operation was accepted at `started_at` (RFC 3339 UTC).
    pub fn new(
        key_source: impl Into<String>,
        leaf_der: &[u8],
        started_at: &str,
    ) -> Result<Self, super::DocumentError> {
        let not_before = super::not_before::certificate_not_before(leaf_der)
            .ok_or(super::DocumentError::SignerCertificateTime)?;
        let started = super::consistency::parse_utc("started_at", started_at)?;
        Ok(Self {
            key_source: key_source.into(),
            certificate_not_before: super::not_before::rfc3339(not_before),
            born_after_tenancy: not_before > started,
        })
    }
}
