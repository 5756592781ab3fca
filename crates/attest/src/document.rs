//! The certificate-of-sanitization document (NIST SP 800-88 Appendix G fields, plus host
//! identity, the controller's nonce, the pattern key and the hash chain to the previous
//! certificate). Serialised as canonical JSON by [`super::canonical_json`] before signing.

use std::collections::BTreeMap;

/// Schema identifier written into every document.
pub const DOCUMENT_SCHEMA: &str = "jex.erase-certificate/v1";

/// One signed erase certificate's content.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateDocument {
    /// Always [`DOCUMENT_SCHEMA`].
    pub schema: String,
    /// The erase operation id (UUID).
    pub operation_id: String,
    /// The controller's idempotency key.
    pub request_id: String,
    /// The host that was erased.
    pub host: HostIdentity,
    /// The controller's nonce, lowercase hex.
    pub controller_nonce_hex: String,
    /// Standards followed, e.g. `NIST SP 800-88 Rev. 2; IEEE 2883-2022`.
    pub standard: String,
    /// NIST method type: `Purge`.
    pub method_type: String,
    /// NIST method used: `Crypto Erase + Overwrite`.
    pub method_used: String,
    /// The tool and its version, e.g. `jex-agent 0.1.0`.
    pub tool: String,
    /// Every target erased, in config order.
    pub targets: Vec<TargetRecord>,
    /// How the overwrite was verified.
    pub verification: VerificationRecord,
    /// The pattern, with its key revealed so that anyone holding the media can re-check it.
    pub pattern: PatternRecord,
    /// `ERASED`, `ERASED_WITH_EXCEPTIONS` or `FAILED`.
    pub outcome: String,
    /// Machine-readable reasons when the outcome is not `ERASED`.
    pub exceptions: Vec<String>,
    /// RFC 3339 UTC time the operation was accepted.
    pub started_at: String,
    /// RFC 3339 UTC time verification finished.
    pub finished_at: String,
    /// SHA-256 (hex) of the previous certificate's `document_json` on this host, if any.
    pub previous_certificate_sha256: Option<String>,
}

/// The host, as known to the agent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostIdentity {
    /// From the agent's certificate.
    pub host_id: String,
    /// Hardware UUID.
    pub hardware_uuid: String,
    /// Serial number.
    pub serial_number: String,
    /// Model identifier.
    pub model: String,
    /// OS name and version.
    pub os: String,
    /// Agent version.
    pub agent_version: String,
}

/// One erased target (a NIST "media" entry).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRecord {
    /// Name from config.
    pub name: String,
    /// Backend (`luks2`, `apfs-volume`).
    pub backend: String,
    /// Media manufacturer, empty when unknown (e.g. a disk image).
    pub media_make: String,
    /// Media model, or `disk image`.
    pub media_model: String,
    /// Media serial number, empty when unknown.
    pub media_serial: String,
    /// Media type: `file`, `block device`, `apfs volume`.
    pub media_type: String,
    /// The path overwritten.
    pub device: String,
    /// The stable identity checked before every destructive step (e.g. `luks-uuid:…`).
    pub identity: String,
    /// Bytes overwritten.
    pub size_bytes: u64,
    /// How the keys were destroyed, with evidence.
    pub key_destruction: KeyDestruction,
    /// Overwrite passes (1).
    pub overwrite_passes: u32,
    /// Sampled blocks read back on this target.
    pub verified_blocks: u64,
    /// Mismatching blocks found on this target.
    pub mismatched_blocks: u64,
}

/// How verification was done.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerificationRecord {
    /// E.g. `sampled read-back (direct I/O) compared with regenerated pattern`.
    pub method: String,
    /// Number of strata.
    pub strata: u64,
    /// Random locations per stratum.
    pub locations_per_stratum: u32,
    /// Verification block size in bytes.
    pub block_size: u64,
    /// Blocks read back over all targets (including first and last).
    pub sampled_blocks: u64,
    /// Share of all bytes read back, percent.
    pub coverage_percent: f64,
    /// Mismatching blocks over all targets.
    pub mismatched_blocks: u64,
    /// True if the operation resumed after a crash (verification then always runs in full).
    pub resumed: bool,
}

/// The overwrite pattern.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternRecord {
    /// E.g. `AES-256-CTR keystream, 128-bit big-endian counter = byte offset / 16`.
    pub algorithm: String,
    /// The 256-bit pattern key, lowercase hex: revealed only after verification.
    pub key_hex: String,
}

/// Proof that the keys are gone, for the certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyDestruction {
    /// The method, e.g. `cryptsetup luksErase` or `diskutil apfs deleteVolume`.
    pub method: String,
    /// The tool and its version, e.g. `cryptsetup 2.6.1`.
    pub tool: String,
    /// Before/after facts that show the destruction, e.g. `keyslots_before = "1"`,
    /// `keyslots_after = "0"`, `keyslot_area_changed = "true"`.
    pub evidence: BTreeMap<String, String>,
}
