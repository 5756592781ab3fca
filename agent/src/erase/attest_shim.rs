//! Certificate signing as the erase engine needs it, until `attest` provides it.
//!
//! MERGE(attest): delete this file and `mod attest_shim;` in `erase/mod.rs`, and in
//! `erase/engine.rs` replace
//! - `attest_shim::sign(&document, signer)` with `attest::sign(&document, signer)`
//!   (map its `AttestError` with `EraseError::Sign { source }` as here);
//! - `attest_shim::document_sha256(&certificate)` with `attest::document_sha256(&certificate)`.
//!
//! Same contract as `attest::sign`: the message is `b"jex-erase-certificate-v1\0" ||
//! document_json`, where `document_json` is the canonical JSON of the document (object keys
//! sorted, no insignificant whitespace), and the signature is the signer's ECDSA P-256 SHA-256.

use crate::attest::{AttestError, CertificateDocument, SignedCertificate, Signer};

/// Domain separation prefix of the signed message.
pub(crate) const CERTIFICATE_DOMAIN: &[u8] = b"jex-erase-certificate-v1\0";

/// The signature algorithm name stored with certificates.
pub(crate) const SIGNATURE_ALGORITHM: &str = "ecdsa-p256-sha256";

/// Errors of the shim: the signer's own, or an encoding failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ShimError {
    /// The signer failed.
    #[error("signer failed")]
    Sign(#[source] AttestError),
    /// The document could not be encoded.
    #[error("encoding the certificate document")]
    Encode(#[source] serde_json::Error),
}

/// Canonical JSON: `serde_json::Value` objects are `BTreeMap`s (no `preserve_order` feature in
/// this workspace), so keys come out sorted, and `to_vec` writes no whitespace.
fn canonical_json(document: &CertificateDocument) -> Result<Vec<u8>, ShimError> {
    let value = serde_json::to_value(document).map_err(ShimError::Encode)?;
    serde_json::to_vec(&value).map_err(ShimError::Encode)
}

/// Signs `document` with `signer`.
pub(crate) fn sign(
    document: &CertificateDocument,
    signer: &dyn Signer,
) -> Result<SignedCertificate, ShimError> {
    let document_json = canonical_json(document)?;
    let mut message = Vec::with_capacity(CERTIFICATE_DOMAIN.len() + document_json.len());
    message.extend_from_slice(CERTIFICATE_DOMAIN);
    message.extend_from_slice(&document_json);
    let signature = signer.sign(&message).map_err(ShimError::Sign)?;
    Ok(SignedCertificate {
        document_json,
        signature,
        signer_chain_der: signer.chain_der(),
        signature_algorithm: SIGNATURE_ALGORITHM.to_owned(),
    })
}

/// SHA-256 (lowercase hex) of a certificate's `document_json`.
pub(crate) fn document_sha256(certificate: &SignedCertificate) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        &certificate.document_json,
    ))
}
