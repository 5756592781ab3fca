//! Erase certificates: the signed proof of an erase.
//!
//! This crate owns the certificate document, its canonical form, the [`Signer`] trait, the file
//! signer and the offline verifier, and [`clock`], the workspace's one read of the wall clock.
//! It is written to be used alone: a fleet controller or an auditor who only wants to check a
//! certificate depends on this crate and nothing else of the agent. So it must not depend on the
//! platform crate, an async runtime (tokio), the gRPC stack (tonic) or nix;
//! `scripts/check-architecture.sh` enforces that. Offline check of a certificate of either
//! version, showing what a version 2 certificate says per target:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use jex_attest::VerifiedDocument;
//!
//! let bundle = std::fs::read("erase-certificate.json")?;
//! let certificate = jex_attest::SignedCertificate::from_bundle_json(&bundle)?;
//! let fleet_ca_pem = std::fs::read("fleet-ca.pem")?;
//! let nonce = [0u8; 32]; // the nonce the controller sent with Terminate
//! match jex_attest::verify_any(&certificate, &fleet_ca_pem, Some(&nonce))? {
//!     VerifiedDocument::V2(doc) => {
//!         println!("{} on {}: {}", doc.operation_id, doc.host.host_id, doc.outcome);
//!         for target in &doc.targets {
//!             let s = &target.sanitization;
//!             println!("  {} ({}): {} / {}", target.name, target.kind, s.category, s.technique);
//!         }
//!         if let Some(device_erase) = &doc.device_erase {
//!             for line in &device_erase.evidence {
//!                 println!("  {} {}", if line.passed { "PASS" } else { "FAIL" }, line.check);
//!             }
//!         }
//!         println!("  signer born after the tenancy: {}", doc.signer.born_after_tenancy);
//!     }
//!     VerifiedDocument::V1(doc) => {
//!         println!("{} on {}: {} (v1)", doc.operation_id, doc.host.host_id, doc.outcome);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A certificate is a document serialised as canonical JSON (RFC 8785 style: sorted keys, no
//! insignificant whitespace; see [`canonical`] for the exact rules and the one deliberate
//! departure, fixed-precision floats), signed ECDSA P-256/SHA-256 by a [`Signer`] over a
//! domain-separated message, with the signer's certificate chain attached. Two versions:
//!
//! - **v1**, [`CertificateDocument`] (`jex.erase-certificate/v1`): one NIST method for the
//!   whole document, "Purge / Crypto Erase + Overwrite". Made by [`sign`], checked by
//!   [`verify()`] (v1 only) or [`verify_any`].
//! - **v2**, [`CertificateDocumentV2`] (`jex.erase-certificate/v2`, module [`document_v2`]):
//!   honest per target (each target's own NIST category, technique and basis), the device
//!   erase of an Apple Silicon Mac with its post-erase evidence, and a record of the signing
//!   key and whether it was born after the tenancy. Made by [`sign_v2`], checked by
//!   [`verify_any`], which dispatches on the document's `schema`.
//!
//! # Formats
//!
//! - Signed message: `b"jex-erase-certificate-v1\0" || document_json` ([`SIGNING_DOMAIN`]) for
//!   v1, `b"jex-erase-certificate-v2\0" || document_json` ([`SIGNING_DOMAIN_V2`]) for v2.
//!   The prefix keeps a signature made for a certificate from being valid for anything else
//!   the same key signs (TLS handshakes, other documents, the other version), and vice versa.
//! - Signature: ASN.1 DER ECDSA over P-256 with SHA-256 ([`SIGNATURE_ALGORITHM`]).
//! - [`SignedCertificate`]: the document bytes exactly as signed, the signature, the signer
//!   chain (leaf first, DER). On disk and for `jex-agent verify-erase` it is the bundle JSON of
//!   [`bundle`], the same for both versions.
//! - Hash chain: each document names the SHA-256 of the host's previous certificate's
//!   `document_json` ([`document_sha256`]), so certificates removed from or inserted into a
//!   host's history show up as a broken chain.
//!
//! # Threat model, in plain words
//!
//! The tenant had root on the host for the whole tenancy. Anything stored on the host during
//! that time, including the agent's own private key, could have been read, copied, or used
//! by the tenant. Whoever holds a copy of that key can sign a certificate saying "erased" for
//! a disk that never was, and it will verify. The controller's fresh nonce stops old
//! certificates from being replayed, and a controller that compares `finished_at` with its own
//! clock limits back-dating, but neither helps against a stolen key used live.
//!
//! So a certificate signed by the file key ([`FileSigner`]) proves what the agent reported,
//! not what a tenant with root could not have faked. That is why signing goes through the
//! [`Signer`] trait: a key that never leaves hardware (the Secure Enclave on Apple silicon,
//! which only does P-256, hence P-256 here; a TPM on Linux), or a key minted during a
//! post-tenancy maintenance boot that the tenant could not influence, can replace the file key
//! without changing the certificate format or the verifier. A v2 certificate says which key
//! signed ([`SignerRecord`]): on a device erase, the agent of the fresh OS, whose certificate
//! was issued after the Terminate, so no key the tenant could reach. Whatever the key, read-back
//! verification only sees what the disk's interface returns; the pattern key published in
//! the certificate lets anyone holding the disk re-check any block themselves.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod canonical;
pub mod clock;
pub mod consistency;
pub mod consistency_v2;
pub mod document;
pub mod document_v2;
pub mod file_signer;
mod not_before;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod verify;

pub use bundle::{BUNDLE_FORMAT, BundleError};
pub use canonical::{canonical_json, canonical_json_v2};
pub use consistency::{
    DocumentError, MIN_NONCE_BYTES, OUTCOME_ERASED, OUTCOME_ERASED_WITH_EXCEPTIONS, OUTCOME_FAILED,
};
pub use document::*;
pub use document_v2::*;
pub use file_signer::FileSigner;
pub use verify::{ChainError, SignerChain, VerifiedDocument, VerifyError, verify, verify_any};

/// The domain-separation prefix of every signed version 1 document ([`CertificateDocument`]).
pub const SIGNING_DOMAIN: &[u8] = b"jex-erase-certificate-v1\0";

/// The domain-separation prefix of every signed version 2 document ([`CertificateDocumentV2`]).
/// It differs from [`SIGNING_DOMAIN`], so a signature made for one version never verifies as
/// the other, even over the same bytes with the same key.
pub const SIGNING_DOMAIN_V2: &[u8] = b"jex-erase-certificate-v2\0";

/// The only signature algorithm: ECDSA P-256 with SHA-256, ASN.1 DER signatures.
pub const SIGNATURE_ALGORITHM: &str = "ecdsa-p256-sha256";

/// Signs erase certificates. The file-key signer is the default; a hardware-bound signer
/// (Secure Enclave, TPM) or a key minted in a post-tenancy maintenance boot can replace it.
pub trait Signer: Send + Sync + std::fmt::Debug {
    /// Signs `message` (already domain-separated by the caller), returning an ASN.1 DER
    /// ECDSA P-256 SHA-256 signature.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AttestError>;
    /// The signer's certificate chain, leaf first, DER.
    fn chain_der(&self) -> Vec<Vec<u8>>;
}

/// A certificate and its signature, as sent on the wire and stored on disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedCertificate {
    /// The canonical JSON document: exactly the bytes that were signed (after the domain prefix).
    pub document_json: Vec<u8>,
    /// ASN.1 DER ECDSA signature.
    pub signature: Vec<u8>,
    /// Signer chain, leaf first, DER.
    pub signer_chain_der: Vec<Vec<u8>>,
    /// `ecdsa-p256-sha256`.
    pub signature_algorithm: String,
}

/// Certificate problems.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The key file could not be read.
    #[error("reading signing key {path}")]
    KeyRead {
        /// The key file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file is readable or writable by group or others.
    #[error(
        "signing key {path} has mode {mode:04o} and is accessible to group or others: run `chmod 600 {path}`"
    )]
    KeyPermissions {
        /// The key file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is not a PEM PKCS#8 key.
    #[error("signing key {path} is not a PEM \"PRIVATE KEY\" (PKCS#8): {reason}")]
    KeyFormat {
        /// The key file.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// ring refused the key (not ECDSA P-256, malformed PKCS#8).
    #[error("signing key {path} is not a usable ECDSA P-256 PKCS#8 key: {reason}")]
    KeyRejected {
        /// The key file.
        path: String,
        /// ring's reason.
        reason: String,
    },
    /// The chain file could not be read or parsed.
    #[error("reading the signer certificate chain {path}")]
    ChainRead {
        /// The chain file.
        path: String,
        /// The cause.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The chain file holds no certificate.
    #[error("signer certificate chain {path} holds no certificate")]
    EmptyChain {
        /// The chain file.
        path: String,
    },
    /// The first certificate of the chain is malformed.
    #[error("the first certificate in {path} is malformed")]
    SignerCertificate {
        /// The chain file (or `signer` for a chain handed over by a [`Signer`]).
        path: String,
        /// The parse failure.
        #[source]
        source: webpki::Error,
    },
    /// The key does not belong to the chain's first certificate.
    #[error("signing key {key_path} does not belong to the first certificate in {chain_path}")]
    KeyCertificateMismatch {
        /// The key file.
        key_path: String,
        /// The chain file.
        chain_path: String,
    },
    /// The signer could not sign.
    #[error("signing failed: {reason}")]
    Signing {
        /// What the signer reported.
        reason: String,
    },
    /// The signer has no certificate chain.
    #[error("the signer provides no certificate chain")]
    NoSignerChain,
    /// The document breaks a consistency rule; nothing was signed.
    #[error("refusing to sign an inconsistent certificate document")]
    InvalidDocument(#[from] DocumentError),
    /// The signature the signer produced does not verify with its own certificate.
    #[error("the signer's signature does not verify with its own certificate")]
    SelfCheck(#[source] webpki::Error),
    /// A version 2 document's `signer.certificate_not_before` is not the signer certificate's.
    #[error(
        "the document says the signer certificate was issued at {claimed}, but the signer's certificate says {}",
        actual.as_deref().unwrap_or("nothing readable")
    )]
    SignerRecordMismatch {
        /// The document's `signer.certificate_not_before`.
        claimed: String,
        /// The signer certificate's `notBefore`, RFC 3339, if readable.
        actual: Option<String>,
    },
}

/// The message a signer signs for a version 1 `document_json`: [`SIGNING_DOMAIN`] then the
/// document.
pub fn signed_message(document_json: &[u8]) -> Vec<u8> {
    domain_message(SIGNING_DOMAIN, document_json)
}

/// The message a signer signs for a version 2 `document_json`: [`SIGNING_DOMAIN_V2`] then the
/// document.
pub fn signed_message_v2(document_json: &[u8]) -> Vec<u8> {
    domain_message(SIGNING_DOMAIN_V2, document_json)
}

fn domain_message(domain: &[u8], document_json: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + document_json.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(document_json);
    message
}

/// Signs `doc` with `signer`: checks the document's consistency, serialises it canonically,
/// signs the domain-separated message ([`SIGNING_DOMAIN`]) and checks the signature against
/// the signer's own leaf certificate before returning it.
pub fn sign(
    doc: &CertificateDocument,
    signer: &dyn Signer,
) -> Result<SignedCertificate, AttestError> {
    doc.check_consistency()?;
    sign_bytes(
        canonical_json(doc),
        SIGNING_DOMAIN,
        signer.chain_der(),
        signer,
    )
}

/// Signs the version 2 `doc` with `signer`, exactly like [`sign`] but over [`SIGNING_DOMAIN_V2`].
/// Before signing it also checks that `doc.signer.certificate_not_before` is the `notBefore`
/// of the signer's leaf certificate ([`SignerRecord::new`] makes such a record), since the
/// verifier refuses a document whose signer record is not its signer's.
pub fn sign_v2(
    doc: &CertificateDocumentV2,
    signer: &dyn Signer,
) -> Result<SignedCertificate, AttestError> {
    doc.check_consistency()?;
    let chain = signer.chain_der();
    let leaf = chain.first().ok_or(AttestError::NoSignerChain)?;
    if !verify::signer_record_matches(&doc.signer, leaf) {
        return Err(AttestError::SignerRecordMismatch {
            claimed: doc.signer.certificate_not_before.clone(),
            actual: not_before::certificate_not_before(leaf).map(not_before::rfc3339),
        });
    }
    sign_bytes(canonical_json_v2(doc), SIGNING_DOMAIN_V2, chain, signer)
}

fn sign_bytes(
    document_json: Vec<u8>,
    domain: &[u8],
    chain: Vec<Vec<u8>>,
    signer: &dyn Signer,
) -> Result<SignedCertificate, AttestError> {
    let message = domain_message(domain, &document_json);
    let signature = signer.sign(&message)?;
    let leaf_der = rustls_pki_types::CertificateDer::from(
        chain.first().ok_or(AttestError::NoSignerChain)?.as_slice(),
    );
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).map_err(|source| {
        AttestError::SignerCertificate {
            path: "signer".to_owned(),
            source,
        }
    })?;
    leaf.verify_signature(webpki::ring::ECDSA_P256_SHA256, &message, &signature)
        .map_err(AttestError::SelfCheck)?;
    Ok(SignedCertificate {
        document_json,
        signature,
        signer_chain_der: chain,
        signature_algorithm: SIGNATURE_ALGORITHM.to_owned(),
    })
}

/// SHA-256 (lowercase hex) of `cert.document_json`: the value the next certificate of the same
/// host records as `previous_certificate_sha256`.
pub fn document_sha256(cert: &SignedCertificate) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &cert.document_json,
    ))
}

/// A person-readable account of what a verified certificate proves.
pub fn summary(doc: &CertificateDocument, nonce_checked: bool) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "certificate verifies: signature, chain to the fleet CA, internal consistency{}",
        if nonce_checked {
            ", controller nonce"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "  outcome:      {}", doc.outcome);
    let _ = writeln!(
        o,
        "  host:         {} (hardware {}, serial {:?})",
        doc.host.host_id, doc.host.hardware_uuid, doc.host.serial_number
    );
    let _ = writeln!(
        o,
        "  operation:    {} (request {})",
        doc.operation_id, doc.request_id
    );
    let _ = writeln!(
        o,
        "  method:       {} / {} ({})",
        doc.method_type, doc.method_used, doc.standard
    );
    for t in &doc.targets {
        let _ = writeln!(
            o,
            "  target {:?}: {} {} bytes, keys: {}, verified blocks {} mismatched {}",
            t.name,
            t.media_type,
            t.size_bytes,
            t.key_destruction.method,
            t.verified_blocks,
            t.mismatched_blocks
        );
    }
    let v = &doc.verification;
    let _ = writeln!(
        o,
        "  verification: {} strata x {} + first/last, {} blocks of {} B, {:.3}% coverage, {} mismatched",
        v.strata,
        v.locations_per_stratum,
        v.sampled_blocks,
        v.block_size,
        v.coverage_percent,
        v.mismatched_blocks
    );
    let _ = writeln!(
        o,
        "  time:         {} .. {}",
        doc.started_at, doc.finished_at
    );
    if !doc.exceptions.is_empty() {
        let _ = writeln!(o, "  exceptions:   {}", doc.exceptions.join(", "));
    }
    o
}

/// A person-readable account of what a verified version 2 certificate proves: per target its
/// NIST category and technique and why, the key that signed, and for a device erase every
/// evidence line.
pub fn summary_v2(doc: &CertificateDocumentV2, nonce_checked: bool) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "certificate verifies: signature, chain to the fleet CA, internal consistency, signer record{}",
        if nonce_checked {
            ", controller nonce"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "  schema:       {}", doc.schema);
    let _ = writeln!(o, "  outcome:      {}", doc.outcome);
    let _ = writeln!(
        o,
        "  host:         {} (hardware {}, serial {:?})",
        doc.host.host_id, doc.host.hardware_uuid, doc.host.serial_number
    );
    let _ = writeln!(
        o,
        "  operation:    {} (request {})",
        doc.operation_id, doc.request_id
    );
    let _ = writeln!(o, "  standard:     {}", doc.standard);
    let s = &doc.signer;
    let _ = writeln!(
        o,
        "  signer:       key source {}, certificate issued {}, {}",
        s.key_source,
        s.certificate_not_before,
        if s.born_after_tenancy {
            "after the Terminate was accepted (born after the tenancy)"
        } else {
            "before the Terminate was accepted (a key of the tenancy)"
        }
    );
    for t in &doc.targets {
        let _ = writeln!(
            o,
            "  target {:?}: {} {}, {} bytes: {} / {}",
            t.name,
            t.kind,
            t.device,
            t.size_bytes,
            t.sanitization.category,
            t.sanitization.technique
        );
        let _ = writeln!(o, "    basis:      {}", t.sanitization.basis);
        if let Some(kd) = &t.key_destruction {
            let _ = writeln!(o, "    keys:       {} ({})", kd.method, kd.tool);
        }
        if let Some(w) = &t.overwrite {
            let _ = writeln!(
                o,
                "    overwrite:  {} pass(es), {} bytes, verified blocks {} mismatched {}",
                w.passes, w.bytes, w.verified_blocks, w.mismatched_blocks
            );
        }
    }
    if let Some(v) = &doc.verification {
        let _ = writeln!(
            o,
            "  verification: {} strata x {} + first/last, {} blocks of {} B, {:.3}% coverage, {} mismatched",
            v.strata,
            v.locations_per_stratum,
            v.sampled_blocks,
            v.block_size,
            v.coverage_percent,
            v.mismatched_blocks
        );
    }
    if let Some(de) = &doc.device_erase {
        let _ = writeln!(o, "  device erase: {}", de.method);
        let _ = writeln!(o, "    prepare record sha256: {}", de.prepare_record_sha256);
        for line in &de.evidence {
            let _ = writeln!(
                o,
                "    {} {}: {}",
                if line.passed { "PASS" } else { "FAIL" },
                line.check,
                line.detail
            );
        }
    }
    let _ = writeln!(
        o,
        "  time:         {} .. {}",
        doc.started_at, doc.finished_at
    );
    if !doc.exceptions.is_empty() {
        let _ = writeln!(o, "  exceptions:   {}", doc.exceptions.join(", "));
    }
    o
}
