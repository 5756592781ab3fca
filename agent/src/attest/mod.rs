//! Erase certificates: the signed proof of an erase.
//!
//! A certificate is a [`CertificateDocument`] serialised as canonical JSON (RFC 8785 style:
//! sorted keys, no insignificant whitespace), signed ECDSA P-256/SHA-256 by a [`Signer`] over a
//! domain-separated message, with the signer's certificate chain attached. `verify` checks it
//! offline against the fleet CA.

pub mod document;

pub use crate::erase::keys::KeyDestruction;
pub use document::*;

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
    /// Placeholder until the module is implemented.
    #[error("not implemented")]
    Unimplemented,
}
