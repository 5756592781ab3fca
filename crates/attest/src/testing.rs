//! Test support for certificates: a consistent sample document and a small P-256 PKI made with
//! rcgen (fleet CA, optional intermediate, agent leaf certificates with a SPIFFE URI SAN),
//! written to files the way an installed agent finds them (key 0600, chain PEM leaf first).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failure here is a failed test

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use time::OffsetDateTime;

use super::{
    CATEGORY_PURGE, CertificateDocument, CertificateDocumentV2, DOCUMENT_SCHEMA,
    DOCUMENT_SCHEMA_V2, DeviceEraseRecord, EvidenceLine, HostIdentity, KEY_SOURCE_FILE,
    KeyDestruction, OverwriteRecord, PatternRecord, Sanitization, SignerRecord,
    TECHNIQUE_APPLE_EACS, TECHNIQUE_CRYPTO_ERASE_OVERWRITE, TECHNIQUE_OVERWRITE, TargetRecord,
    TargetRecordV2, VerificationRecord,
};

/// The SPIFFE id of the sample host.
pub const HOST_SPIFFE_ID: &str = "spiffe://fleet.example/host/h-1";

/// The sample document's controller nonce (32 bytes).
pub const NONCE: [u8; 32] = *b"controller-nonce-0123456789abcde";

/// A consistent `ERASED` document for host `h-1` with two targets, finished in 2025.
pub fn sample_document() -> CertificateDocument {
    let target = |name: &str, backend: &str, verified: u64, method: &str| TargetRecord {
        name: name.into(),
        backend: backend.into(),
        media_make: String::new(),
        media_model: "disk image".into(),
        media_serial: String::new(),
        media_type: "file".into(),
        device: format!("/var/lib/jex-agent/{name}.img"),
        identity: "luks-uuid:111374da-f7d5-40df-9097-26f7f1ed2a29".into(),
        size_bytes: 64 << 20,
        key_destruction: KeyDestruction {
            method: method.into(),
            tool: "cryptsetup 2.6.1".into(),
            evidence: [("keyslots_before", "1"), ("keyslots_after", "0")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        },
        overwrite_passes: 1,
        verified_blocks: verified,
        mismatched_blocks: 0,
    };
    CertificateDocument {
        schema: DOCUMENT_SCHEMA.into(),
        operation_id: "6f1c0f1e-8a8e-4c55-9b0e-3f0b7d5f2a10".into(),
        request_id: "req-42".into(),
        host: HostIdentity {
            host_id: "h-1".into(),
            hardware_uuid: "00008103-000A1D2E3F40001E".into(),
            serial_number: "C02XK0AAJGH5".into(),
            model: "Macmini9,1".into(),
            os: "macOS 15.1".into(),
            agent_version: "0.1.0".into(),
        },
        controller_nonce_hex: hex::encode(NONCE),
        standard: "NIST SP 800-88 Rev. 2; IEEE 2883-2022".into(),
        method_type: "Purge".into(),
        method_used: "Crypto Erase + Overwrite".into(),
        tool: "jex-agent 0.1.0".into(),
        targets: vec![
            target("tenant-disk", "luks2", 2002, "cryptsetup luksErase"),
            target("scratch", "luks2", 1002, "cryptsetup luksErase"),
        ],
        verification: VerificationRecord {
            method: "sampled read-back (direct I/O) compared with regenerated pattern".into(),
            strata: 1000,
            locations_per_stratum: 2,
            block_size: 1 << 20,
            sampled_blocks: 3004,
            coverage_percent: 12.3456,
            mismatched_blocks: 0,
            resumed: false,
        },
        pattern: PatternRecord {
            algorithm: "AES-256-CTR keystream, 128-bit big-endian counter = byte offset / 16"
                .into(),
            key_hex: "5c".repeat(32),
        },
        outcome: "ERASED".into(),
        exceptions: vec![],
        started_at: "2025-06-01T10:00:00Z".into(),
        finished_at: "2025-06-01T10:14:27.5Z".into(),
        previous_certificate_sha256: None,
    }
}

/// When the signer certificate of [`sample_document_v2_device_erase`] was issued: after that
/// document's Terminate (`started_at`, 2025-06-01T10:00:00Z) and before its `finished_at`.
pub const SIGNER_BORN_AFTER_TENANCY: OffsetDateTime =
    time::macros::datetime!(2025-06-01 11:00:00 UTC);

/// The `notBefore` of every [`TestCa::leaf`] certificate, RFC 3339.
pub const LEAF_NOT_BEFORE: &str = "2020-01-01T00:00:00Z";

fn sample_host() -> HostIdentity {
    HostIdentity {
        host_id: "h-1".into(),
        hardware_uuid: "00008103-000A1D2E3F40001E".into(),
        serial_number: "C02XK0AAJGH5".into(),
        model: "Macmini9,1".into(),
        os: "macOS 15.1".into(),
        agent_version: "0.1.0".into(),
    }
}

fn overwritten_target(
    name: &str,
    kind: &str,
    technique: &str,
    basis: &str,
    verified_blocks: u64,
) -> TargetRecordV2 {
    TargetRecordV2 {
        name: name.into(),
        kind: kind.into(),
        media_make: String::new(),
        media_model: "disk image".into(),
        media_serial: String::new(),
        media_type: "file".into(),
        device: format!("/var/lib/jex-agent/{name}.img"),
        identity: format!("path:/var/lib/jex-agent/{name}.img"),
        size_bytes: 64 << 20,
        sanitization: Sanitization::of(technique, basis).unwrap(),
        key_destruction: None,
        overwrite: Some(OverwriteRecord {
            passes: 1,
            bytes: 64 << 20,
            verified_blocks,
            mismatched_blocks: 0,
        }),
    }
}

fn sample_verification(sampled_blocks: u64) -> VerificationRecord {
    VerificationRecord {
        method: "sampled read-back (direct I/O) compared with regenerated pattern".into(),
        strata: 1000,
        locations_per_stratum: 2,
        block_size: 1 << 20,
        sampled_blocks,
        coverage_percent: 12.3456,
        mismatched_blocks: 0,
        resumed: false,
    }
}

fn sample_pattern() -> PatternRecord {
    PatternRecord {
        algorithm: "AES-256-CTR keystream, 128-bit big-endian counter = byte offset / 16".into(),
        key_hex: "5c".repeat(32),
    }
}

/// A consistent version 2 `ERASED` document of a single-phase erase on host `h-1`: a LUKS2
/// target (Purge, cryptographic erase + overwrite) and a plain file (Clear, overwrite), signed
/// by the host's file key ([`TestCa::leaf`], issued long before the tenancy ended).
pub fn sample_document_v2() -> CertificateDocumentV2 {
    let mut luks = overwritten_target(
        "tenant-disk",
        "luks2",
        TECHNIQUE_CRYPTO_ERASE_OVERWRITE,
        "every LUKS2 keyslot was destroyed, so the data's key is gone; the whole volume was then overwritten and sampled back",
        2002,
    );
    luks.identity = "luks-uuid:111374da-f7d5-40df-9097-26f7f1ed2a29".into();
    luks.key_destruction = Some(KeyDestruction {
        method: "cryptsetup luksErase".into(),
        tool: "cryptsetup 2.6.1".into(),
        evidence: [("keyslots_before", "1"), ("keyslots_after", "0")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    });
    let file = overwritten_target(
        "scratch",
        "file",
        TECHNIQUE_OVERWRITE,
        "an overwrite through the file interface is NIST Clear; a copy-on-write file system may keep earlier blocks elsewhere",
        1002,
    );
    CertificateDocumentV2 {
        schema: DOCUMENT_SCHEMA_V2.into(),
        operation_id: "6f1c0f1e-8a8e-4c55-9b0e-3f0b7d5f2a10".into(),
        request_id: "req-42".into(),
        host: sample_host(),
        controller_nonce_hex: hex::encode(NONCE),
        standard: "NIST SP 800-88 Rev. 2; IEEE 2883-2022".into(),
        tool: "jex-agent 0.1.0".into(),
        targets: vec![luks, file],
        verification: Some(sample_verification(3004)),
        pattern: Some(sample_pattern()),
        device_erase: None,
        signer: SignerRecord {
            key_source: KEY_SOURCE_FILE.into(),
            certificate_not_before: LEAF_NOT_BEFORE.into(),
            born_after_tenancy: false,
        },
        outcome: "ERASED".into(),
        exceptions: vec![],
        started_at: "2025-06-01T10:00:00Z".into(),
        finished_at: "2025-06-01T10:14:27.5Z".into(),
        previous_certificate_sha256: None,
    }
}

/// A consistent version 2 `ERASED` document of a two-halves erase of an Apple Silicon Mac:
/// the internal SSD (Purge, Apple EACS, with every evidence line passed) and an external disk
/// without Secure Enclave keys (Clear, overwrite), signed by a key born after the tenancy
/// ([`TestCa::leaf_after_tenancy`]).
pub fn sample_document_v2_device_erase() -> CertificateDocumentV2 {
    let mut external = overwritten_target(
        "archive",
        "external-disk",
        TECHNIQUE_OVERWRITE,
        "an overwrite of flash through its block interface does not reach spare blocks: NIST SP 800-88 counts it as Clear",
        2002,
    );
    external.device = "/dev/rdisk4".into();
    external.identity = "disk-serial:S5GXNF0R123456".into();
    let ssd = TargetRecordV2 {
        name: "internal".into(),
        kind: "internal-ssd".into(),
        media_make: "Apple".into(),
        media_model: "APPLE SSD AP0512Q".into(),
        media_serial: "0ba0174a2a9c1234".into(),
        media_type: "internal SSD".into(),
        device: "disk0".into(),
        identity: "hardware-uuid:00008103-000A1D2E3F40001E".into(),
        size_bytes: 500_277_792_768,
        sanitization: Sanitization {
            category: CATEGORY_PURGE.into(),
            technique: TECHNIQUE_APPLE_EACS.into(),
            basis: "Erase All Content and Settings destroyed the Secure Enclave keys of every internal volume (NIST Purge by cryptographic erase), shown by the post-erase evidence".into(),
        },
        key_destruction: None,
        overwrite: None,
    };
    let line = |check: &str, detail: &str| EvidenceLine {
        check: check.into(),
        passed: true,
        detail: detail.into(),
    };
    let mut doc = sample_document_v2();
    doc.targets = vec![ssd, external];
    doc.verification = Some(sample_verification(2002));
    doc.device_erase = Some(DeviceEraseRecord {
        method: "Apple Erase All Content and Settings via MDM EraseDevice, or DFU restore".into(),
        prepare_record_sha256: "a1".repeat(32),
        evidence: vec![
            line(
                "prepare_record_verifies",
                "signed by an agent certificate of the fleet CA for host h-1",
            ),
            line(
                "same_host",
                "hardware UUID and serial number are the prepare record's",
            ),
            line(
                "tenant_volumes_gone",
                "none of 3 tenant volumes of the prepare inventory is present",
            ),
            line(
                "data_volume_new",
                "Data volume 5E1A… is not in the prepare inventory",
            ),
            line(
                "signing_key_after_terminate",
                "signer notBefore 2025-06-01T11:00:00Z is after the terminate",
            ),
        ],
    });
    doc.signer = SignerRecord {
        key_source: KEY_SOURCE_FILE.into(),
        certificate_not_before: "2025-06-01T11:00:00Z".into(),
        born_after_tenancy: true,
    };
    doc.finished_at = "2025-06-01T11:30:00Z".into();
    doc
}

/// A certificate authority that can issue intermediates and agent certificates.
pub struct TestCa {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA certificate, DER.
    pub cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// An issued agent certificate and its key.
pub struct TestLeaf {
    /// PKCS#8 P-256 key, PEM (`BEGIN PRIVATE KEY`).
    pub key_pem: String,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

impl TestCa {
    /// A self-signed P-256 CA.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let params = ca_params(name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let params = ca_params(name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An agent certificate (server + client auth) with URI SAN `spiffe_id`, valid from
    /// 2020 until `not_after`.
    pub fn leaf_until(&self, spiffe_id: &str, not_after: OffsetDateTime) -> TestLeaf {
        self.leaf_with(
            spiffe_id,
            not_after,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// An agent certificate with URI SAN `spiffe_id`, valid from 2020 ([`LEAF_NOT_BEFORE`])
    /// until `not_after`, listing extended key usages `ekus` (none: no extension).
    pub fn leaf_with(
        &self,
        spiffe_id: &str,
        not_after: OffsetDateTime,
        ekus: Vec<ExtendedKeyUsagePurpose>,
    ) -> TestLeaf {
        self.issue(spiffe_id, rcgen::date_time_ymd(2020, 1, 1), not_after, ekus)
    }

    /// An agent certificate (server + client auth) with URI SAN `spiffe_id`, valid from
    /// `not_before` until `not_after`.
    pub fn leaf_born(
        &self,
        spiffe_id: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> TestLeaf {
        self.issue(
            spiffe_id,
            not_before,
            not_after,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// An agent certificate for [`HOST_SPIFFE_ID`] issued at [`SIGNER_BORN_AFTER_TENANCY`],
    /// valid until 2100: the fresh OS's key of [`sample_document_v2_device_erase`].
    pub fn leaf_after_tenancy(&self) -> TestLeaf {
        self.leaf_born(
            HOST_SPIFFE_ID,
            SIGNER_BORN_AFTER_TENANCY,
            rcgen::date_time_ymd(2100, 1, 1),
        )
    }

    fn issue(
        &self,
        spiffe_id: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
        ekus: Vec<ExtendedKeyUsagePurpose>,
    ) -> TestLeaf {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "jex-agent");
        p.subject_alt_names
            .push(SanType::URI(spiffe_id.try_into().unwrap()));
        p.extended_key_usages = ekus;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = not_before;
        p.not_after = not_after;
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        TestLeaf {
            key_pem: key.serialize_pem(),
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
        }
    }

    /// An agent certificate for [`HOST_SPIFFE_ID`] valid until 2100.
    pub fn leaf(&self) -> TestLeaf {
        self.leaf_until(HOST_SPIFFE_ID, rcgen::date_time_ymd(2100, 1, 1))
    }
}

/// Writes `leaf`'s key (mode 0600) and a chain file (`leaf` then `intermediates`) into `dir`,
/// returning their paths.
pub fn write_signer_files(
    dir: &Path,
    leaf: &TestLeaf,
    intermediates: &[&TestCa],
) -> (PathBuf, PathBuf) {
    let key = dir.join("agent.key");
    fs::write(&key, &leaf.key_pem).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let chain = dir.join("agent-chain.pem");
    let mut pem = leaf.cert_pem.clone();
    for ca in intermediates {
        pem.push_str(&ca.cert_pem);
    }
    fs::write(&chain, pem).unwrap();
    (key, chain)
}
