//! The prepare record: what the prepare half (Terminate, in the tenant's OS) hands the
//! controller, and the attest half (AttestErase, in the fresh OS) gets back and checks.
//!
//! It binds the operation id, the controller's nonce, the host and the time the Terminate was
//! accepted to the storage [`Inventory`] taken then, signed by the agent's key in the tenant's
//! OS. That key lived where a root tenant could reach it, so the record is **informative, not
//! proof**: it tells the attest half which volumes to look for, and a forged record can at most
//! hide volumes from that comparison (which the checks of the inventory now, such as
//! `no_extra_volumes` and the creation time of the Data volume, do not rely on).
//!
//! # Format
//!
//! - [`PrepareRecord`] as canonical JSON ([`jex_attest::canonical::canonical_json_value`]:
//!   sorted keys, no whitespace), with `format` = [`PREPARE_RECORD_FORMAT`];
//! - signed ECDSA P-256/SHA-256 (ASN.1 DER) by a [`jex_attest::Signer`] over
//!   `b"jex-prepare-record-v1\0" || record_json` ([`PREPARE_SIGNING_DOMAIN`]). The prefix
//!   differs from the erase certificate's (`jex-erase-certificate-v1\0`), so a signature over a
//!   certificate is never a valid prepare record and the other way round, even for the same key
//!   and bytes;
//! - carried as [`SignedPrepareRecord`]: the exact bytes signed, the signature, the signer chain
//!   (leaf first, DER) and the algorithm name. [`SignedPrepareRecord::sha256_hex`] is the
//!   digest a certificate of the attest half names.
//!
//! # Verification
//!
//! [`verify_prepare`] checks, in this order, failing on the first problem with its own
//! [`PrepareVerifyError`] variant: the algorithm; the signer chain is present and its leaf
//! parses; the signature over the domain-separated message (before anything signed is
//! interpreted); the JSON parses as a record (unknown members refused) of this format; the
//! bytes are canonical; the chain leads to the fleet CA at the record's `created_unix_ms`
//! (as a TLS server or client certificate, exactly as for certificates); the record is for the
//! expected host, its inventory is of that host and the signer's certificate names that host;
//! the operation id and the nonce are the expected ones; the record was not made in the future.

use serde::{Deserialize, Serialize};

use jex_attest::{AttestError, ChainError, SignerChain, VerifyError};

use crate::inventory::Inventory;
use crate::rules::{Check, Evidence};

/// The `format` of every prepare record.
pub const PREPARE_RECORD_FORMAT: &str = "jex-prepare-record-v1";

/// The domain-separation prefix of the signed message of a prepare record.
pub const PREPARE_SIGNING_DOMAIN: &[u8] = b"jex-prepare-record-v1\0";

/// How far in the verifier's future `created_unix_ms` may lie (the certificate's bound).
pub const MAX_CLOCK_SKEW_MS: u64 = 300_000;

/// The prepare half's record. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareRecord {
    /// Always [`PREPARE_RECORD_FORMAT`].
    pub format: String,
    /// The erase operation id shared by both halves.
    pub operation_id: String,
    /// The controller's idempotency key of the Terminate, so that the attestation's
    /// certificate names it too (empty when not given).
    #[serde(default)]
    pub request_id: String,
    /// The host (the fleet's id, as in the agent's certificate).
    pub host_id: String,
    /// The controller's nonce of the Terminate, lowercase hex.
    pub nonce_hex: String,
    /// When the Terminate was accepted, Unix milliseconds.
    pub terminate_unix_ms: u64,
    /// The storage inventory taken by the prepare half.
    pub inventory: Inventory,
    /// When this record was made and signed, Unix milliseconds.
    pub created_unix_ms: u64,
}

impl PrepareRecord {
    /// A record of `inventory` (normalised) for `operation_id` on `host_id` with the
    /// controller's `nonce`.
    pub fn new(
        operation_id: impl Into<String>,
        host_id: impl Into<String>,
        nonce: &[u8],
        terminate_unix_ms: u64,
        inventory: Inventory,
        created_unix_ms: u64,
    ) -> Self {
        Self {
            format: PREPARE_RECORD_FORMAT.to_owned(),
            operation_id: operation_id.into(),
            request_id: String::new(),
            host_id: host_id.into(),
            nonce_hex: hex::encode(nonce),
            terminate_unix_ms,
            inventory: inventory.normalized(),
            created_unix_ms,
        }
    }

    /// The record, naming the Terminate's `request_id`.
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = request_id.into();
        self
    }

    /// The canonical JSON bytes of the record, as signed.
    pub fn canonical_json(&self) -> Vec<u8> {
        // Converting to a `Value` cannot fail: the record has only string-keyed structs,
        // strings, integers, booleans, options and vectors; serde_json fails only on
        // non-string map keys or a failing custom `Serialize`, of which there are none.
        #[allow(clippy::expect_used)]
        let value = serde_json::to_value(self).expect("a prepare record always converts to JSON");
        jex_attest::canonical::canonical_json_value(&value)
    }
}

/// A prepare record and its signature, as handed to the controller and back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPrepareRecord {
    /// The canonical JSON of the record: exactly the bytes signed after the domain prefix.
    pub record_json: Vec<u8>,
    /// ASN.1 DER ECDSA P-256/SHA-256 signature over [`signed_message`] of `record_json`.
    pub signature: Vec<u8>,
    /// The signer's certificate chain, leaf first, DER.
    pub signer_chain_der: Vec<Vec<u8>>,
    /// `ecdsa-p256-sha256`.
    pub signature_algorithm: String,
}

impl SignedPrepareRecord {
    /// SHA-256 (lowercase hex) of `record_json`: how a certificate of the attest half names
    /// the prepare record it relied on.
    pub fn sha256_hex(&self) -> String {
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &self.record_json,
        ))
    }
}

/// The message signed for `record_json`: [`PREPARE_SIGNING_DOMAIN`] then the record.
pub fn signed_message(record_json: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(PREPARE_SIGNING_DOMAIN.len() + record_json.len());
    message.extend_from_slice(PREPARE_SIGNING_DOMAIN);
    message.extend_from_slice(record_json);
    message
}

/// Why a prepare record could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum PrepareSignError {
    /// The record's `format` is not [`PREPARE_RECORD_FORMAT`].
    #[error(
        "refusing to sign a prepare record of format {found:?}: build it with PrepareRecord::new"
    )]
    Format {
        /// The format found.
        found: String,
    },
    /// The signer failed.
    #[error("signing the prepare record")]
    Signer(#[source] AttestError),
    /// The signer has no usable certificate chain.
    #[error("the signer's certificate chain is unusable for a prepare record")]
    SignerChain(#[source] VerifyError),
    /// The signature does not verify with the signer's own certificate.
    #[error(
        "the signer's prepare record signature fails its self-check: check that the key belongs to the chain's first certificate"
    )]
    SelfCheck(#[source] VerifyError),
}

/// Signs `record` with `signer` (normalising its inventory first): canonical JSON, the
/// domain-separated message, and a check of the signature against the signer's own leaf
/// certificate before returning it.
pub fn sign_prepare(
    record: &PrepareRecord,
    signer: &dyn jex_attest::Signer,
) -> Result<SignedPrepareRecord, PrepareSignError> {
    if record.format != PREPARE_RECORD_FORMAT {
        return Err(PrepareSignError::Format {
            found: record.format.clone(),
        });
    }
    let mut record = record.clone();
    record.inventory = record.inventory.normalized();
    let record_json = record.canonical_json();
    let message = signed_message(&record_json);
    let signature = signer.sign(&message).map_err(PrepareSignError::Signer)?;
    let signer_chain_der = signer.chain_der();
    SignerChain::new(&signer_chain_der)
        .map_err(PrepareSignError::SignerChain)?
        .verify_signature(&message, &signature)
        .map_err(PrepareSignError::SelfCheck)?;
    Ok(SignedPrepareRecord {
        record_json,
        signature,
        signer_chain_der,
        signature_algorithm: jex_attest::SIGNATURE_ALGORITHM.to_owned(),
    })
}

/// Why a prepare record was not accepted. Each message says what to check or fix.
#[derive(Debug, thiserror::Error)]
pub enum PrepareVerifyError {
    /// Not an ECDSA P-256/SHA-256 signature.
    #[error(
        "the prepare record's signature algorithm is {found:?}, expected \"ecdsa-p256-sha256\""
    )]
    Algorithm {
        /// The algorithm found.
        found: String,
    },
    /// No signer chain, or its first certificate does not parse.
    #[error(
        "the prepare record's signer certificate chain is missing or malformed: send the record exactly as WatchErase returned it"
    )]
    SignerChain(#[source] VerifyError),
    /// The signature does not verify over the prepare record's domain and bytes.
    #[error(
        "the prepare record was changed after signing, or is not a prepare record (a certificate's signature is not one)"
    )]
    Signature(#[source] VerifyError),
    /// The bytes are not a prepare record.
    #[error(
        "the signed bytes are not a prepare record of this version: send record_json as WatchErase returned it"
    )]
    Malformed(#[source] serde_json::Error),
    /// Another format.
    #[error("the prepare record's format is {found:?}, expected \"jex-prepare-record-v1\"")]
    Format {
        /// The format found.
        found: String,
    },
    /// The signed bytes are not the canonical JSON of the record.
    #[error("the prepare record is not in canonical form: send the signed bytes unchanged")]
    NotCanonical,
    /// The fleet CA input is unusable.
    #[error("the fleet CA certificates cannot be used: check the CA file")]
    FleetCa(#[source] VerifyError),
    /// The signer does not chain to the fleet CA at the record's creation time.
    #[error(
        "the prepare record's signer is not trusted at the record's creation time {created_unix_ms} ms: it was signed by a key of another CA, or with a certificate not valid then"
    )]
    Chain {
        /// The time the chain was judged at.
        created_unix_ms: u64,
        /// Why.
        #[source]
        source: ChainError,
    },
    /// The record is for another host than expected.
    #[error(
        "the prepare record is for host {found:?}, not {expected:?}: send the record of this host"
    )]
    HostMismatch {
        /// The host expected.
        expected: String,
        /// The host in the record.
        found: String,
    },
    /// The record's inventory names another host than the record.
    #[error(
        "the prepare record is for host {record:?} but its inventory is of host {inventory:?}: the prepare half must record its own host's inventory"
    )]
    InventoryHostMismatch {
        /// The record's host.
        record: String,
        /// The inventory's host.
        inventory: String,
    },
    /// The signer's certificate does not name the record's host.
    #[error(
        "the prepare record is for host {host_id:?} but its signer certificate identifies {uris:?}: one host's key cannot vouch for another"
    )]
    SignerNotHost {
        /// The record's host.
        host_id: String,
        /// The signer certificate's URI SANs.
        uris: Vec<String>,
    },
    /// Another operation.
    #[error(
        "the prepare record is of operation {found:?}, not {expected:?}: send the record of this operation"
    )]
    OperationMismatch {
        /// The operation expected.
        expected: String,
        /// The operation in the record.
        found: String,
    },
    /// Another nonce.
    #[error(
        "the prepare record carries nonce {found}, not the one sent with this operation's Terminate: send the same nonce to both halves"
    )]
    NonceMismatch {
        /// The record's nonce, hex.
        found: String,
    },
    /// Made in the future.
    #[error(
        "the prepare record was made at {created_unix_ms} ms, in the future: check the signer's and this machine's clocks"
    )]
    FromTheFuture {
        /// The record's creation time.
        created_unix_ms: u64,
    },
}

/// Verifies `signed` against the fleet CA certificate(s) `fleet_ca_pem` (PEM, possibly several,
/// or one DER certificate) and the expected operation, nonce and host; returns the record.
/// See the module documentation for the order of the checks.
pub fn verify_prepare(
    signed: &SignedPrepareRecord,
    fleet_ca_pem: &[u8],
    expected_operation_id: &str,
    expected_nonce: &[u8],
    expected_host_id: &str,
) -> Result<PrepareRecord, PrepareVerifyError> {
    use PrepareVerifyError as E;
    if signed.signature_algorithm != jex_attest::SIGNATURE_ALGORITHM {
        return Err(E::Algorithm {
            found: signed.signature_algorithm.clone(),
        });
    }
    let chain = SignerChain::new(&signed.signer_chain_der).map_err(E::SignerChain)?;
    chain
        .verify_signature(&signed_message(&signed.record_json), &signed.signature)
        .map_err(E::Signature)?;

    let record: PrepareRecord =
        serde_json::from_slice(&signed.record_json).map_err(E::Malformed)?;
    if record.format != PREPARE_RECORD_FORMAT {
        return Err(E::Format {
            found: record.format,
        });
    }
    if record.canonical_json() != signed.record_json {
        return Err(E::NotCanonical);
    }

    let at = jex_attest::verify::unix_time_from_secs(record.created_unix_ms / 1000);
    chain
        .verify_path(fleet_ca_pem, at)
        .map_err(|err| match err {
            ChainError::Ca(err) => E::FleetCa(err),
            path => E::Chain {
                created_unix_ms: record.created_unix_ms,
                source: path,
            },
        })?;

    if record.host_id != expected_host_id {
        return Err(E::HostMismatch {
            expected: expected_host_id.to_owned(),
            found: record.host_id,
        });
    }
    if record.inventory.host.host_id != record.host_id {
        return Err(E::InventoryHostMismatch {
            record: record.host_id,
            inventory: record.inventory.host.host_id,
        });
    }
    if !chain
        .identifies_host(&record.host_id)
        .map_err(E::SignerChain)?
    {
        return Err(E::SignerNotHost {
            uris: chain.uri_names().map_err(E::SignerChain)?,
            host_id: record.host_id,
        });
    }
    if record.operation_id != expected_operation_id {
        return Err(E::OperationMismatch {
            expected: expected_operation_id.to_owned(),
            found: record.operation_id,
        });
    }
    if record.nonce_hex != hex::encode(expected_nonce) {
        return Err(E::NonceMismatch {
            found: record.nonce_hex,
        });
    }
    if record.created_unix_ms > jex_attest::clock::now_unix_ms().saturating_add(MAX_CLOCK_SKEW_MS) {
        return Err(E::FromTheFuture {
            created_unix_ms: record.created_unix_ms,
        });
    }
    Ok(record)
}

/// The `prepare_record_verifies` evidence line for the outcome of [`verify_prepare`]: the
/// attest half writes it first, before the lines of [`crate::rules::evaluate`].
pub fn prepare_record_evidence(result: &Result<PrepareRecord, PrepareVerifyError>) -> Evidence {
    match result {
        Ok(record) => Evidence {
            check: Check::PrepareRecordVerifies,
            passed: true,
            detail: format!(
                "signed by an agent certificate of the fleet CA for host {}, operation {}, with this operation's nonce",
                record.host_id, record.operation_id
            ),
        },
        Err(err) => {
            let mut detail = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(cause) = source {
                detail.push_str(": ");
                detail.push_str(&cause.to_string());
                source = cause.source();
            }
            Evidence {
                check: Check::PrepareRecordVerifies,
                passed: false,
                detail,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use jex_attest::testing::{TestCa, TestLeaf, write_signer_files};
    use jex_attest::{FileSigner, Signer};

    use super::*;
    use crate::inventory::{HostIdentity, Volume, VolumeRole};

    const OPERATION: &str = "6f1c0f1e-8a8e-4c55-9b0e-3f0b7d5f2a10";
    const NONCE: [u8; 32] = *b"controller-nonce-0123456789abcde";
    const TERMINATE: u64 = 1_765_000_000_000;

    fn signer(dir: &Path, leaf: &TestLeaf) -> FileSigner {
        let (key, chain) = write_signer_files(dir, leaf, &[]);
        FileSigner::load(&key, &chain).unwrap()
    }

    fn record() -> PrepareRecord {
        let mut data = Volume::new(
            "7A1B0E2C-5D1F-4C59-9A0B-0D6E5C3F1A22",
            "Macintosh HD - Data",
            VolumeRole::Data,
        );
        data.encrypted = true;
        data.internal = true;
        let mut inventory = Inventory::new(
            HostIdentity {
                host_id: "h-1".into(),
                hardware_uuid: "4C4C4544-0042-3510-8048-B4C04F4A4E32".into(),
                serial_number: "C02XK0AAJGH5".into(),
            },
            TERMINATE + 10,
            vec![Volume::new("FFFF", "System", VolumeRole::System), data],
            vec!["tenant".into(), "admin".into()],
        );
        inventory.sip_enabled = Some(true);
        PrepareRecord::new(
            OPERATION,
            "h-1",
            &NONCE,
            TERMINATE,
            inventory,
            TERMINATE + 20,
        )
    }

    /// The fleet CA and a record signed by host h-1's agent.
    fn signed() -> (TestCa, SignedPrepareRecord) {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let signed = sign_prepare(&record(), &signer(dir.path(), &ca.leaf())).unwrap();
        (ca, signed)
    }

    fn verify(
        signed: &SignedPrepareRecord,
        ca: &TestCa,
    ) -> Result<PrepareRecord, PrepareVerifyError> {
        verify_prepare(signed, ca.cert_pem.as_bytes(), OPERATION, &NONCE, "h-1")
    }

    /// Signs arbitrary bytes as a prepare record (bypassing `sign_prepare`).
    fn raw_signed(signer: &FileSigner, record_json: Vec<u8>) -> SignedPrepareRecord {
        SignedPrepareRecord {
            signature: signer.sign(&signed_message(&record_json)).unwrap(),
            record_json,
            signer_chain_der: signer.chain_der(),
            signature_algorithm: "ecdsa-p256-sha256".into(),
        }
    }

    #[test]
    fn a_signed_record_round_trips_and_is_canonical_json() {
        let (ca, signed) = signed();
        let text = std::str::from_utf8(&signed.record_json).unwrap();
        assert!(
            text.starts_with(r#"{"created_unix_ms":1765000000020,"format":"jex-prepare-record-v1","host_id":"h-1","inventory":{"accounts":["admin","tenant"],"#),
            "{text}"
        );
        assert!(!text.contains('\n'));
        assert_eq!(verify(&signed, &ca).unwrap(), record());
        // DER CA works too.
        verify_prepare(&signed, &ca.cert_der, OPERATION, &NONCE, "h-1").unwrap();
        // The digest is SHA-256 of the signed bytes.
        assert_eq!(
            signed.sha256_hex(),
            hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                &signed.record_json
            ))
        );
        assert_eq!(signed.sha256_hex().len(), 64);
        // And the evidence line says so.
        let line = prepare_record_evidence(&verify(&signed, &ca));
        assert!(line.passed);
        assert_eq!(
            line.detail,
            format!(
                "signed by an agent certificate of the fleet CA for host h-1, operation {OPERATION}, with this operation's nonce"
            )
        );
    }

    #[test]
    fn the_terminates_request_id_is_signed_with_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let named = record().with_request_id("req-42");
        let with_id = sign_prepare(&named, &signer(dir.path(), &ca.leaf())).unwrap();
        let text = std::str::from_utf8(&with_id.record_json).unwrap();
        assert!(text.contains(r#""request_id":"req-42""#), "{text}");
        assert_eq!(verify(&with_id, &ca).unwrap().request_id, "req-42");
        // A record that names none reads back with none.
        let (ca, plain) = signed();
        assert_eq!(verify(&plain, &ca).unwrap().request_id, "");
    }

    #[test]
    fn signing_normalises_the_inventory() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let mut unsorted = record();
        unsorted.inventory.volumes.reverse();
        unsorted.inventory.accounts.reverse();
        let a = sign_prepare(&unsorted, &signer(dir.path(), &ca.leaf())).unwrap();
        let (_, b) = signed();
        assert_eq!(a.record_json, b.record_json);
        let mut wrong = record();
        wrong.format = "jex-prepare-record-v0".into();
        assert!(matches!(
            sign_prepare(&wrong, &signer(dir.path(), &ca.leaf())).unwrap_err(),
            PrepareSignError::Format { .. }
        ));
    }

    #[test]
    fn tampered_json_fails_whatever_byte_changes() {
        let (ca, signed) = signed();
        for i in 0..signed.record_json.len() {
            let mut bad = signed.clone();
            bad.record_json[i] ^= 0x01;
            assert!(
                matches!(
                    verify(&bad, &ca).unwrap_err(),
                    PrepareVerifyError::Signature(_)
                ),
                "byte {i}"
            );
        }
        let mut longer = signed.clone();
        longer.record_json.push(b' ');
        let err = verify(&longer, &ca).unwrap_err();
        assert!(matches!(err, PrepareVerifyError::Signature(_)));
        assert!(
            err.to_string().contains("was changed after signing"),
            "{err}"
        );
    }

    #[test]
    fn another_operation_nonce_or_host_fails_with_its_own_error() {
        let (ca, signed) = signed();
        let pem = ca.cert_pem.as_bytes();
        match verify_prepare(&signed, pem, "other-op", &NONCE, "h-1").unwrap_err() {
            PrepareVerifyError::OperationMismatch { expected, found } => {
                assert_eq!((expected.as_str(), found.as_str()), ("other-op", OPERATION));
            }
            e => panic!("expected OperationMismatch, got {e:?}"),
        }
        let mut nonce = NONCE;
        nonce[31] ^= 1;
        match verify_prepare(&signed, pem, OPERATION, &nonce, "h-1").unwrap_err() {
            PrepareVerifyError::NonceMismatch { found } => assert_eq!(found, hex::encode(NONCE)),
            e => panic!("expected NonceMismatch, got {e:?}"),
        }
        let err = verify_prepare(&signed, pem, OPERATION, &NONCE, "h-2").unwrap_err();
        match &err {
            PrepareVerifyError::HostMismatch { expected, found } => {
                assert_eq!((expected.as_str(), found.as_str()), ("h-2", "h-1"));
            }
            e => panic!("expected HostMismatch, got {e:?}"),
        }
        assert_eq!(
            err.to_string(),
            r#"the prepare record is for host "h-1", not "h-2": send the record of this host"#
        );
        let line = prepare_record_evidence(&Err(err));
        assert!(!line.passed);
        assert_eq!(line.check.name(), "prepare_record_verifies");
    }

    #[test]
    fn a_record_signed_under_another_ca_fails() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = TestCa::new("fleet CA");
        let other = TestCa::new("some other CA");
        let signed = sign_prepare(&record(), &signer(dir.path(), &other.leaf())).unwrap();
        let err = verify(&signed, &fleet).unwrap_err();
        assert!(
            matches!(
                err,
                PrepareVerifyError::Chain {
                    created_unix_ms: 1_765_000_000_020,
                    source: ChainError::Path(_)
                }
            ),
            "{err:?}"
        );
        // With its own CA it verifies: only the CA was wrong.
        verify(&signed, &other).unwrap();
        assert!(matches!(
            verify_prepare(&signed, b"", OPERATION, &NONCE, "h-1").unwrap_err(),
            PrepareVerifyError::FleetCa(VerifyError::NoCaCertificate)
        ));
    }

    #[test]
    fn another_hosts_key_cannot_sign_this_hosts_record() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let leaf = ca.leaf_until(
            "spiffe://fleet.example/host/h-2",
            rcgen::date_time_ymd(2100, 1, 1),
        );
        let signed = sign_prepare(&record(), &signer(dir.path(), &leaf)).unwrap();
        match verify(&signed, &ca).unwrap_err() {
            PrepareVerifyError::SignerNotHost { host_id, uris } => {
                assert_eq!(host_id, "h-1");
                assert_eq!(uris, ["spiffe://fleet.example/host/h-2"]);
            }
            e => panic!("expected SignerNotHost, got {e:?}"),
        }
    }

    #[test]
    fn an_erase_certificate_signature_is_not_a_prepare_record_and_the_other_way_round() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let s = signer(dir.path(), &ca.leaf());
        let json = record().canonical_json();
        // The same bytes signed in the certificate's domain.
        let as_certificate = SignedPrepareRecord {
            signature: s.sign(&jex_attest::signed_message(&json)).unwrap(),
            record_json: json.clone(),
            signer_chain_der: s.chain_der(),
            signature_algorithm: "ecdsa-p256-sha256".into(),
        };
        assert!(matches!(
            verify(&as_certificate, &ca).unwrap_err(),
            PrepareVerifyError::Signature(_)
        ));
        // A prepare record's signature does not make a certificate.
        let good = sign_prepare(&record(), &s).unwrap();
        let certificate = jex_attest::SignedCertificate {
            document_json: good.record_json.clone(),
            signature: good.signature.clone(),
            signer_chain_der: good.signer_chain_der.clone(),
            signature_algorithm: good.signature_algorithm.clone(),
        };
        assert!(matches!(
            jex_attest::verify(&certificate, ca.cert_pem.as_bytes(), None).unwrap_err(),
            VerifyError::Signature(_)
        ));
        assert_ne!(PREPARE_SIGNING_DOMAIN, jex_attest::SIGNING_DOMAIN);
    }

    #[test]
    fn signed_but_malformed_non_canonical_or_inconsistent_records_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let s = signer(dir.path(), &ca.leaf());

        let pretty = serde_json::to_vec_pretty(&record()).unwrap();
        assert!(matches!(
            verify(&raw_signed(&s, pretty), &ca).unwrap_err(),
            PrepareVerifyError::NotCanonical
        ));

        let mut unknown = record().canonical_json();
        unknown.pop();
        unknown.extend_from_slice(br#","zz":1}"#);
        assert!(matches!(
            verify(&raw_signed(&s, unknown), &ca).unwrap_err(),
            PrepareVerifyError::Malformed(_)
        ));

        let mut other_format = record();
        other_format.format = "jex-prepare-record-v2".into();
        assert!(matches!(
            verify(&raw_signed(&s, other_format.canonical_json()), &ca).unwrap_err(),
            PrepareVerifyError::Format { found } if found == "jex-prepare-record-v2"
        ));

        let mut other_inventory = record();
        other_inventory.inventory.host.host_id = "h-2".into();
        assert!(matches!(
            verify(&raw_signed(&s, other_inventory.canonical_json()), &ca).unwrap_err(),
            PrepareVerifyError::InventoryHostMismatch { .. }
        ));

        let mut future = record();
        future.created_unix_ms = 4_070_908_800_000; // 2099
        assert!(matches!(
            verify(&raw_signed(&s, future.canonical_json()), &ca).unwrap_err(),
            PrepareVerifyError::FromTheFuture { .. }
        ));
    }

    #[test]
    fn wrong_algorithm_and_missing_chain_are_refused() {
        let (ca, signed) = signed();
        let mut alg = signed.clone();
        alg.signature_algorithm = "ecdsa-p384-sha384".into();
        assert!(matches!(
            verify(&alg, &ca).unwrap_err(),
            PrepareVerifyError::Algorithm { .. }
        ));
        let mut chain = signed.clone();
        chain.signer_chain_der.clear();
        assert!(matches!(
            verify(&chain, &ca).unwrap_err(),
            PrepareVerifyError::SignerChain(VerifyError::EmptyChain)
        ));
    }
}
