//! Offline verification of a [`SignedCertificate`] against the fleet CA: what
//! `jex-agent verify-erase CERT --ca CA` and the controller run.
//!
//! [`verify`] checks a version 1 certificate, [`verify_any`] one of either version. For
//! [`verify_any`], the document's `schema` member (the one member read before the signature is
//! checked) picks the version: [`DOCUMENT_SCHEMA`] or [`DOCUMENT_SCHEMA_V2`]; any other or none
//! is [`VerifyError::UnknownSchema`]. Then both check, in this order, and fail on the first
//! problem:
//! 1. `signature_algorithm` is `ecdsa-p256-sha256` and a signer chain is present;
//! 2. the ECDSA P-256/SHA-256 signature over the version's domain and the document
//!    (`b"jex-erase-certificate-v1\0" || document_json`, or `-v2\0` for version 2)
//!    verifies with the leaf certificate's public key (checked first, so that nothing
//!    unauthenticated is interpreted; the key itself is trusted only after step 4). A
//!    signature that verifies over the other version's domain instead is
//!    [`VerifyError::SignedAsOtherSchema`] from [`verify_any`];
//! 3. `document_json` parses as a [`CertificateDocument`] or [`CertificateDocumentV2`]
//!    (unknown members refused);
//! 4. the signer chain (leaf, then intermediates) builds a path to one of the given CA
//!    certificates with `rustls-webpki` (ring algorithms: ECDSA P-256/P-384, Ed25519, RSA):
//!    signatures along the path, validity periods, CA basic constraints and name
//!    constraints. The leaf is the agent's TLS identity, so it is checked as a TLS server
//!    certificate (extended key usage `serverAuth` if the certificate lists extended key
//!    usages at all), or failing that as a TLS client certificate (`clientAuth`). Validity is
//!    judged at the document's `finished_at`, the moment the agent says it signed: a
//!    certificate stays verifiable after the agent's certificate expires or rotates, while a
//!    leaf that had already expired (or was not yet valid) at that moment is refused.
//!    Revocation is not checked (no CRL is given);
//! 5. `document_json` is exactly `canonical_json` of the parsed document;
//! 6. the document is internally consistent ([`CertificateDocument::check_consistency`],
//!    [`CertificateDocumentV2::check_consistency`]); for version 2, its
//!    `signer.certificate_not_before` is the leaf's `notBefore` ([`VerifyError::SignerRecord`]),
//!    so `signer.born_after_tenancy` is a fact about the certificate that signed, not a claim;
//! 7. the document's `host.host_id` is the leaf's identity: one of the leaf's URI SANs equals
//!    it or ends with `/<host_id>` (`spiffe://fleet.example/host/h-1` for host `h-1`), so one
//!    host's key cannot vouch for another host;
//! 8. with `expected_nonce`, the document carries exactly that controller nonce;
//! 9. `finished_at` is not more than [`MAX_CLOCK_SKEW`] in the verifier's future.
//!
//! What a valid result means, and does not: the holder of a key certified by the fleet CA for
//! this host signed this document, unchanged since. Whether that key could have been misused
//! is the threat model in the parent module.

use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;

use super::consistency::{DocumentError, parse_utc};
use super::not_before::{certificate_not_before, rfc3339};
use super::{
    CertificateDocument, CertificateDocumentV2, DOCUMENT_SCHEMA, DOCUMENT_SCHEMA_V2, HostIdentity,
    SIGNATURE_ALGORITHM, SIGNING_DOMAIN, SIGNING_DOMAIN_V2, SignedCertificate, SignerRecord,
    canonical_json, canonical_json_v2,
};

/// How far in the verifier's future `finished_at` may lie.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Signature algorithms accepted along the CA chain.
static CHAIN_ALGORITHMS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
];

/// Why a certificate was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Not an ECDSA P-256/SHA-256 certificate.
    #[error("signature algorithm is {found:?}, expected \"ecdsa-p256-sha256\"")]
    Algorithm {
        /// The algorithm found.
        found: String,
    },
    /// No signer certificate.
    #[error("the certificate carries no signer certificate chain")]
    EmptyChain,
    /// The CA file holds no usable certificate.
    #[error(
        "the CA file holds no certificate (expected PEM \"CERTIFICATE\" blocks or one DER certificate)"
    )]
    NoCaCertificate,
    /// The CA file's PEM is malformed.
    #[error("reading the CA certificates")]
    CaPem(#[source] rustls_pki_types::pem::Error),
    /// A CA certificate cannot serve as a trust anchor.
    #[error("the CA certificate cannot be used as a trust anchor")]
    CaCertificate(#[source] webpki::Error),
    /// The signer's certificate does not parse.
    #[error("the signer certificate is malformed")]
    SignerCertificate(#[source] webpki::Error),
    /// The document does not parse.
    #[error("the signed document is not a valid certificate document")]
    Document(#[source] serde_json::Error),
    /// The chain does not lead to the CA (or was not valid at signing time).
    #[error(
        "the signer certificate does not chain to the given CA at {at} (the document's finished_at)"
    )]
    Chain {
        /// The time the chain was judged at.
        at: String,
        /// Why (unknown issuer, expired, wrong usage, …).
        #[source]
        source: webpki::Error,
    },
    /// The signature is wrong.
    #[error("the signature does not verify with the signer certificate's key")]
    Signature(#[source] webpki::Error),
    /// The signed bytes are not the canonical form of the document.
    #[error("the signed document is not in canonical form")]
    NotCanonical,
    /// The document breaks a consistency rule.
    #[error("the signed document is inconsistent")]
    Inconsistent(#[source] DocumentError),
    /// The signer's certificate names another host.
    #[error("the document is for host {host_id:?} but the signer certificate identifies {uris:?}")]
    HostMismatch {
        /// The document's host id.
        host_id: String,
        /// The signer certificate's URI SANs.
        uris: Vec<String>,
    },
    /// The nonce is not the one the controller sent.
    #[error("the document's controller nonce {found} is not the expected one")]
    NonceMismatch {
        /// The nonce in the document, hex.
        found: String,
    },
    /// Signed in the future.
    #[error(
        "finished_at {finished_at} lies in the future (check the signer's or this machine's clock)"
    )]
    FromTheFuture {
        /// The document's finished_at.
        finished_at: String,
    },
    /// The document's `schema` is missing or not one this verifier knows ([`verify_any`]).
    #[error(
        "the document's schema is {}, which this verifier does not know (it knows {DOCUMENT_SCHEMA:?} and {DOCUMENT_SCHEMA_V2:?})",
        found.as_deref().map_or_else(|| "missing".to_owned(), |s| format!("{s:?}"))
    )]
    UnknownSchema {
        /// The schema found, if any.
        found: Option<String>,
    },
    /// The signature is over the other version's signing domain ([`verify_any`]): a signature
    /// is valid for one schema only.
    #[error(
        "the document says schema {schema:?} but was signed as a {signed_as:?} document (another signing domain)"
    )]
    SignedAsOtherSchema {
        /// The document's schema.
        schema: String,
        /// The schema whose signing domain the signature is over.
        signed_as: &'static str,
    },
    /// A version 2 document's signer record does not describe the certificate that signed.
    #[error(
        "signer.certificate_not_before is {claimed}, but the signer certificate's notBefore is {}",
        actual.as_deref().unwrap_or("unreadable")
    )]
    SignerRecord {
        /// The document's `signer.certificate_not_before`.
        claimed: String,
        /// The signer certificate's `notBefore`, RFC 3339, if readable.
        actual: Option<String>,
    },
}

/// Verifies the version 1 certificate `cert` against the CA certificate(s) in `ca_pem_or_der`
/// (PEM, possibly several, or one DER certificate) and, if given, the controller nonce;
/// returns the verified document. See the module documentation for exactly what is checked.
/// A version 2 certificate fails here (its signature is over another domain): use
/// [`verify_any`] for both.
pub fn verify(
    cert: &SignedCertificate,
    ca_pem_or_der: &[u8],
    expected_nonce: Option<&[u8]>,
) -> Result<CertificateDocument, VerifyError> {
    let chain = envelope(cert)?;
    verify_as::<CertificateDocument>(cert, &chain, ca_pem_or_der, expected_nonce)
}

/// A verified document of either version.
#[derive(Debug, Clone, PartialEq)]
pub enum VerifiedDocument {
    /// A `jex.erase-certificate/v1` document.
    V1(CertificateDocument),
    /// A `jex.erase-certificate/v2` document.
    V2(CertificateDocumentV2),
}

impl VerifiedDocument {
    /// The document's schema.
    pub fn schema(&self) -> &str {
        match self {
            Self::V1(d) => &d.schema,
            Self::V2(d) => &d.schema,
        }
    }

    /// The erase operation id.
    pub fn operation_id(&self) -> &str {
        match self {
            Self::V1(d) => &d.operation_id,
            Self::V2(d) => &d.operation_id,
        }
    }

    /// The host that was erased.
    pub fn host(&self) -> &HostIdentity {
        match self {
            Self::V1(d) => &d.host,
            Self::V2(d) => &d.host,
        }
    }

    /// `ERASED`, `ERASED_WITH_EXCEPTIONS` or `FAILED`.
    pub fn outcome(&self) -> &str {
        match self {
            Self::V1(d) => &d.outcome,
            Self::V2(d) => &d.outcome,
        }
    }

    /// A person-readable account of what the certificate proves ([`crate::summary`] or
    /// [`crate::summary_v2`]).
    pub fn summary(&self, nonce_checked: bool) -> String {
        match self {
            Self::V1(d) => crate::summary(d, nonce_checked),
            Self::V2(d) => crate::summary_v2(d, nonce_checked),
        }
    }
}

/// Verifies a certificate of either version, like [`verify`] does version 1: the document's
/// `schema` member picks the version (an unknown or missing one is
/// [`VerifyError::UnknownSchema`]), then every check of the module documentation runs with
/// that version's signing domain, document type and consistency rules; a version 2 document
/// also has its signer record checked against the certificate that signed
/// ([`VerifyError::SignerRecord`]). A signature made over the other version's domain is
/// [`VerifyError::SignedAsOtherSchema`].
pub fn verify_any(
    cert: &SignedCertificate,
    ca_pem_or_der: &[u8],
    expected_nonce: Option<&[u8]>,
) -> Result<VerifiedDocument, VerifyError> {
    let chain = envelope(cert)?;
    // Only the schema member is read before the signature is checked, to pick the domain the
    // signature must be over; everything else waits for the signature.
    #[derive(serde::Deserialize)]
    struct Schema {
        schema: Option<String>,
    }
    let schema = serde_json::from_slice::<Schema>(&cert.document_json)
        .map_err(VerifyError::Document)?
        .schema;
    let other_domain = |domain: &[u8], other_schema: &'static str, found: &str| {
        let message = crate::domain_message(domain, &cert.document_json);
        chain
            .verify_signature(&message, &cert.signature)
            .is_ok()
            .then(|| VerifyError::SignedAsOtherSchema {
                schema: found.to_owned(),
                signed_as: other_schema,
            })
    };
    match schema.as_deref() {
        Some(DOCUMENT_SCHEMA) => {
            verify_as::<CertificateDocument>(cert, &chain, ca_pem_or_der, expected_nonce)
                .map(VerifiedDocument::V1)
                .map_err(|err| match err {
                    VerifyError::Signature(_) => {
                        other_domain(SIGNING_DOMAIN_V2, DOCUMENT_SCHEMA_V2, DOCUMENT_SCHEMA)
                            .unwrap_or(err)
                    }
                    err => err,
                })
        }
        Some(DOCUMENT_SCHEMA_V2) => {
            verify_as::<CertificateDocumentV2>(cert, &chain, ca_pem_or_der, expected_nonce)
                .map(VerifiedDocument::V2)
                .map_err(|err| match err {
                    VerifyError::Signature(_) => {
                        other_domain(SIGNING_DOMAIN, DOCUMENT_SCHEMA, DOCUMENT_SCHEMA_V2)
                            .unwrap_or(err)
                    }
                    err => err,
                })
        }
        _ => Err(VerifyError::UnknownSchema { found: schema }),
    }
}

/// Step 1: the algorithm and the signer chain.
fn envelope(cert: &SignedCertificate) -> Result<SignerChain<'_>, VerifyError> {
    if cert.signature_algorithm != SIGNATURE_ALGORITHM {
        return Err(VerifyError::Algorithm {
            found: cert.signature_algorithm.clone(),
        });
    }
    SignerChain::new(&cert.signer_chain_der)
}

/// A document type the verifier knows: its signing domain, canonical form and rules.
trait SignedDocument: serde::de::DeserializeOwned {
    const DOMAIN: &'static [u8];
    fn canonical(&self) -> Vec<u8>;
    fn check(&self) -> Result<(), DocumentError>;
    fn finished_at(&self) -> &str;
    fn host_id(&self) -> &str;
    fn nonce_hex(&self) -> &str;
    /// Checks that need the signer's certificate (beyond path, signature and host).
    fn check_signer(&self, _leaf_der: &[u8]) -> Result<(), VerifyError> {
        Ok(())
    }
}

impl SignedDocument for CertificateDocument {
    const DOMAIN: &'static [u8] = SIGNING_DOMAIN;
    fn canonical(&self) -> Vec<u8> {
        canonical_json(self)
    }
    fn check(&self) -> Result<(), DocumentError> {
        self.check_consistency()
    }
    fn finished_at(&self) -> &str {
        &self.finished_at
    }
    fn host_id(&self) -> &str {
        &self.host.host_id
    }
    fn nonce_hex(&self) -> &str {
        &self.controller_nonce_hex
    }
}

impl SignedDocument for CertificateDocumentV2 {
    const DOMAIN: &'static [u8] = SIGNING_DOMAIN_V2;
    fn canonical(&self) -> Vec<u8> {
        canonical_json_v2(self)
    }
    fn check(&self) -> Result<(), DocumentError> {
        self.check_consistency()
    }
    fn finished_at(&self) -> &str {
        &self.finished_at
    }
    fn host_id(&self) -> &str {
        &self.host.host_id
    }
    fn nonce_hex(&self) -> &str {
        &self.controller_nonce_hex
    }
    fn check_signer(&self, leaf_der: &[u8]) -> Result<(), VerifyError> {
        if signer_record_matches(&self.signer, leaf_der) {
            return Ok(());
        }
        Err(VerifyError::SignerRecord {
            claimed: self.signer.certificate_not_before.clone(),
            actual: certificate_not_before(leaf_der).map(rfc3339),
        })
    }
}

/// Whether `record.certificate_not_before` is the `notBefore` of the certificate `leaf_der`.
pub(crate) fn signer_record_matches(record: &SignerRecord, leaf_der: &[u8]) -> bool {
    let claimed = parse_utc(
        "signer.certificate_not_before",
        &record.certificate_not_before,
    );
    match (claimed, certificate_not_before(leaf_der)) {
        (Ok(claimed), Some(actual)) => claimed == actual,
        _ => false,
    }
}

/// Steps 2 to 9 of the module documentation for document type `D`.
fn verify_as<D: SignedDocument>(
    cert: &SignedCertificate,
    chain: &SignerChain<'_>,
    ca_pem_or_der: &[u8],
    expected_nonce: Option<&[u8]>,
) -> Result<D, VerifyError> {
    // 2. The signature, with the (not yet trusted) leaf's key: checked first so that nothing
    // unauthenticated is interpreted beyond this point. Trust in the key comes from step 4.
    chain.verify_signature(
        &crate::domain_message(D::DOMAIN, &cert.document_json),
        &cert.signature,
    )?;

    // 3. The document.
    let doc: D = serde_json::from_slice(&cert.document_json).map_err(VerifyError::Document)?;

    // 4. Chain, judged at the signing time the document claims.
    let signed_at =
        parse_utc("finished_at", doc.finished_at()).map_err(VerifyError::Inconsistent)?;
    chain
        .verify_path(ca_pem_or_der, unix_time(signed_at))
        .map_err(|err| match err {
            ChainError::Ca(err) => err,
            ChainError::Path(source) => VerifyError::Chain {
                at: doc.finished_at().to_owned(),
                source,
            },
        })?;

    // 5.–6. Canonical form and consistency (for version 2, with the signer record).
    if doc.canonical() != cert.document_json {
        return Err(VerifyError::NotCanonical);
    }
    doc.check().map_err(VerifyError::Inconsistent)?;
    doc.check_signer(&chain.leaf)?;

    // 7. The signer is this host.
    let host_id = doc.host_id();
    if !chain.identifies_host(host_id)? {
        return Err(VerifyError::HostMismatch {
            host_id: host_id.to_owned(),
            uris: chain.uri_names()?,
        });
    }

    // 8. Freshness against the controller's nonce.
    if let Some(expected) = expected_nonce
        && doc.nonce_hex() != hex::encode(expected)
    {
        return Err(VerifyError::NonceMismatch {
            found: doc.nonce_hex().to_owned(),
        });
    }

    // 9. Not from the future.
    let skew = time::Duration::try_from(MAX_CLOCK_SKEW).unwrap_or(time::Duration::ZERO);
    if signed_at > crate::clock::now_utc() + skew {
        return Err(VerifyError::FromTheFuture {
            finished_at: doc.finished_at().to_owned(),
        });
    }
    Ok(doc)
}

/// A signer chain as carried next to a signature (leaf first, then intermediates, DER), for
/// checking any document the fleet signs this way: [`verify`] uses it for certificates, and
/// other signed records (the prepare record of a two-halves reclaim) use it with their own
/// signing domain.
///
/// It only borrows the DER; each check parses the leaf again (cheap next to a signature check).
/// The checks are those of [`verify`]'s steps 2, 4 and 7, with the same algorithms and usages.
#[derive(Debug, Clone)]
pub struct SignerChain<'a> {
    leaf: CertificateDer<'a>,
    intermediates: Vec<CertificateDer<'a>>,
}

/// Why a signer chain does not lead to the CA: the CA input itself is unusable, or no valid
/// path exists at the given time.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The CA certificates cannot be read or used as trust anchors (one of
    /// [`VerifyError::NoCaCertificate`], [`VerifyError::CaPem`], [`VerifyError::CaCertificate`]).
    #[error(transparent)]
    Ca(VerifyError),
    /// No path from the leaf to a CA certificate was valid at the time given (unknown issuer,
    /// expired, wrong usage, …).
    #[error("the signer certificate does not chain to the given CA")]
    Path(#[source] webpki::Error),
}

impl<'a> SignerChain<'a> {
    /// The chain `chain_der` (leaf first). Fails with [`VerifyError::EmptyChain`] when it is
    /// empty and [`VerifyError::SignerCertificate`] when the leaf does not parse.
    pub fn new(chain_der: &'a [Vec<u8>]) -> Result<Self, VerifyError> {
        let (leaf, intermediates) = chain_der.split_first().ok_or(VerifyError::EmptyChain)?;
        let chain = Self {
            leaf: CertificateDer::from(leaf.as_slice()),
            intermediates: intermediates
                .iter()
                .map(|c| CertificateDer::from(c.as_slice()))
                .collect(),
        };
        chain.end_entity()?;
        Ok(chain)
    }

    fn end_entity(&self) -> Result<webpki::EndEntityCert<'_>, VerifyError> {
        webpki::EndEntityCert::try_from(&self.leaf).map_err(VerifyError::SignerCertificate)
    }

    /// Checks the ECDSA P-256/SHA-256 (ASN.1 DER) `signature` over `message` (already
    /// domain-separated by the caller) with the leaf's public key. This says nothing about
    /// whether the key is trusted: that is [`SignerChain::verify_path`].
    pub fn verify_signature(&self, message: &[u8], signature: &[u8]) -> Result<(), VerifyError> {
        self.end_entity()?
            .verify_signature(webpki::ring::ECDSA_P256_SHA256, message, signature)
            .map_err(VerifyError::Signature)
    }

    /// Checks that the chain builds a path to one of the CA certificates in `ca_pem_or_der`
    /// (PEM, possibly several, or one DER certificate) that is valid at `at`: as a TLS server
    /// certificate, or failing only for its extended key usage, as a TLS client certificate.
    pub fn verify_path(&self, ca_pem_or_der: &[u8], at: UnixTime) -> Result<(), ChainError> {
        let leaf = self.end_entity().map_err(ChainError::Ca)?;
        let ca_certs = read_ca(ca_pem_or_der).map_err(ChainError::Ca)?;
        let anchors = ca_certs
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).map_err(VerifyError::CaCertificate))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ChainError::Ca)?;
        let chain_for = |usage| {
            leaf.verify_for_usage(
                CHAIN_ALGORITHMS,
                &anchors,
                &self.intermediates,
                at,
                usage,
                None,
                None,
            )
            .map(drop)
        };
        chain_for(webpki::KeyUsage::server_auth())
            .or_else(|err| match err {
                // Only a missing serverAuth usage earns a second try as a client certificate.
                #[allow(deprecated)]
                webpki::Error::RequiredEkuNotFound
                | webpki::Error::RequiredEkuNotFoundContext(_) => {
                    chain_for(webpki::KeyUsage::client_auth())
                }
                other => Err(other),
            })
            .map_err(ChainError::Path)
    }

    /// The leaf's URI subject alternative names.
    pub fn uri_names(&self) -> Result<Vec<String>, VerifyError> {
        Ok(self
            .end_entity()?
            .valid_uri_names()
            .map(str::to_owned)
            .collect())
    }

    /// Whether the leaf identifies host `host_id`: one of its URI SANs equals it or ends with
    /// `/<host_id>` (`spiffe://fleet.example/host/h-1` for host `h-1`). An empty id never matches.
    pub fn identifies_host(&self, host_id: &str) -> Result<bool, VerifyError> {
        let names_host = |uri: &String| {
            !host_id.is_empty()
                && (uri == host_id
                    || uri
                        .strip_suffix(host_id)
                        .is_some_and(|prefix| prefix.ends_with('/')))
        };
        Ok(self.uri_names()?.iter().any(names_host))
    }
}

/// Seconds since the Unix epoch as the time to judge a chain at ([`SignerChain::verify_path`]).
pub fn unix_time_from_secs(secs: u64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(secs))
}

fn read_ca(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, VerifyError> {
    let is_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    let certs = if is_pem {
        CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(VerifyError::CaPem)?
    } else if bytes.is_empty() {
        Vec::new()
    } else {
        vec![CertificateDer::from(bytes.to_vec())]
    };
    if certs.is_empty() {
        return Err(VerifyError::NoCaCertificate);
    }
    Ok(certs)
}

/// Seconds since the epoch as webpki wants them; times before 1970 clamp to the epoch (and
/// then fail validity checks, as they should).
fn unix_time(t: OffsetDateTime) -> UnixTime {
    let secs = u64::try_from(t.unix_timestamp()).unwrap_or(0);
    UnixTime::since_unix_epoch(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;

    use rcgen::ExtendedKeyUsagePurpose;

    use super::*;
    use crate::testing::{NONCE, TestCa, TestLeaf, sample_document, write_signer_files};
    use crate::{AttestError, FileSigner, Signer, document_sha256, sign, signed_message};

    fn signer_for(dir: &Path, leaf: &TestLeaf, intermediates: &[&TestCa]) -> FileSigner {
        let (key, chain) = write_signer_files(dir, leaf, intermediates);
        FileSigner::load(&key, &chain).unwrap()
    }

    /// A fleet CA and a certificate signed for the sample document by an agent of host h-1.
    fn signed() -> (TestCa, SignedCertificate) {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let signer = signer_for(dir.path(), &ca.leaf(), &[]);
        let cert = sign(&sample_document(), &signer).unwrap();
        (ca, cert)
    }

    /// Signs arbitrary bytes as if they were a document (bypassing `sign`'s checks).
    fn raw_signed(signer: &FileSigner, document_json: Vec<u8>) -> SignedCertificate {
        SignedCertificate {
            signature: signer.sign(&signed_message(&document_json)).unwrap(),
            document_json,
            signer_chain_der: signer.chain_der(),
            signature_algorithm: SIGNATURE_ALGORITHM.into(),
        }
    }

    #[test]
    fn a_signed_certificate_verifies_against_the_fleet_ca() {
        let (ca, cert) = signed();
        assert_eq!(cert.signature_algorithm, "ecdsa-p256-sha256");
        assert_eq!(cert.document_json, canonical_json(&sample_document()));
        let doc = verify(&cert, ca.cert_pem.as_bytes(), Some(&NONCE)).unwrap();
        assert_eq!(doc, sample_document());
        // DER CA and no nonce work too.
        verify(&cert, &ca.cert_der, None).unwrap();
    }

    #[test]
    fn the_signature_covers_the_domain_separated_message() {
        let (_, cert) = signed();
        let leaf_der = CertificateDer::from(cert.signer_chain_der[0].as_slice());
        let leaf = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
        let mut expected = b"jex-erase-certificate-v1\0".to_vec();
        expected.extend_from_slice(&cert.document_json);
        leaf.verify_signature(webpki::ring::ECDSA_P256_SHA256, &expected, &cert.signature)
            .unwrap();
        // Not the bare document.
        assert!(
            leaf.verify_signature(
                webpki::ring::ECDSA_P256_SHA256,
                &cert.document_json,
                &cert.signature
            )
            .is_err()
        );
    }

    #[test]
    fn verifies_through_an_intermediate_ca() {
        let dir = tempfile::tempdir().unwrap();
        let root = TestCa::new("fleet root");
        let mid = root.intermediate("fleet issuing CA");
        let signer = signer_for(dir.path(), &mid.leaf(), &[&mid]);
        let cert = sign(&sample_document(), &signer).unwrap();
        assert_eq!(cert.signer_chain_der.len(), 2);
        verify(&cert, root.cert_pem.as_bytes(), Some(&NONCE)).unwrap();
        // Without the intermediate the path cannot be built.
        let mut short = cert.clone();
        short.signer_chain_der.truncate(1);
        assert!(matches!(
            verify(&short, root.cert_pem.as_bytes(), None).unwrap_err(),
            VerifyError::Chain {
                source: webpki::Error::UnknownIssuer,
                ..
            }
        ));
    }

    #[test]
    fn a_certificate_from_another_ca_is_refused() {
        let (_, cert) = signed();
        let other = TestCa::new("some other CA");
        match verify(&cert, other.cert_pem.as_bytes(), Some(&NONCE)).unwrap_err() {
            VerifyError::Chain { source, at } => {
                assert_eq!(source, webpki::Error::UnknownIssuer);
                assert_eq!(at, sample_document().finished_at);
            }
            other => panic!("expected Chain, got {other:?}"),
        }
    }

    #[test]
    fn a_ca_bundle_with_several_certificates_is_accepted() {
        let (ca, cert) = signed();
        let bundle = format!("{}{}", TestCa::new("unrelated").cert_pem, ca.cert_pem);
        verify(&cert, bundle.as_bytes(), None).unwrap();
        assert!(matches!(
            verify(&cert, b"", None).unwrap_err(),
            VerifyError::NoCaCertificate
        ));
        assert!(matches!(
            verify(
                &cert,
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                None
            )
            .unwrap_err(),
            VerifyError::NoCaCertificate
        ));
        assert!(matches!(
            verify(&cert, b"\x30\x03\x02\x01\x00", None).unwrap_err(),
            VerifyError::CaCertificate(_)
        ));
    }

    #[test]
    fn a_leaf_expired_when_the_document_was_signed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let expired = ca.leaf_until(
            "spiffe://fleet.example/host/h-1",
            rcgen::date_time_ymd(2021, 1, 1),
        );
        let signer = signer_for(dir.path(), &expired, &[]);
        // Signing does not judge validity (the signer's clock is not trusted); verifying does.
        let cert = sign(&sample_document(), &signer).unwrap();
        assert!(matches!(
            verify(&cert, ca.cert_pem.as_bytes(), Some(&NONCE)).unwrap_err(),
            VerifyError::Chain {
                source: webpki::Error::CertExpired { .. },
                ..
            }
        ));
    }

    #[test]
    fn a_certificate_signed_while_the_leaf_was_valid_stays_verifiable_after_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        // Valid in mid-2025 (when the sample document was signed), expired since.
        let leaf = ca.leaf_until(
            "spiffe://fleet.example/host/h-1",
            rcgen::date_time_ymd(2025, 12, 31),
        );
        let cert = sign(&sample_document(), &signer_for(dir.path(), &leaf, &[])).unwrap();
        verify(&cert, ca.cert_pem.as_bytes(), Some(&NONCE)).unwrap();
    }

    #[test]
    fn the_leaf_must_be_usable_for_tls_server_or_client_auth() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let until = rcgen::date_time_ymd(2100, 1, 1);
        let id = "spiffe://fleet.example/host/h-1";
        for (ekus, ok) in [
            (vec![], true),
            (vec![ExtendedKeyUsagePurpose::ServerAuth], true),
            (vec![ExtendedKeyUsagePurpose::ClientAuth], true),
            (vec![ExtendedKeyUsagePurpose::CodeSigning], false),
        ] {
            let leaf = ca.leaf_with(id, until, ekus.clone());
            let cert = sign(&sample_document(), &signer_for(dir.path(), &leaf, &[])).unwrap();
            let result = verify(&cert, ca.cert_pem.as_bytes(), None);
            assert_eq!(result.is_ok(), ok, "{ekus:?}: {result:?}");
        }
    }

    #[test]
    fn flipping_any_bit_pattern_in_document_or_signature_fails() {
        let (ca, cert) = signed();
        let ca = ca.cert_pem.as_bytes();
        verify(&cert, ca, Some(&NONCE)).unwrap();
        for mask in [0x01u8, 0x80] {
            for i in 0..cert.document_json.len() {
                let mut bad = cert.clone();
                bad.document_json[i] ^= mask;
                assert!(
                    verify(&bad, ca, Some(&NONCE)).is_err(),
                    "document byte {i} ^ {mask:#x} accepted"
                );
            }
            for i in 0..cert.signature.len() {
                let mut bad = cert.clone();
                bad.signature[i] ^= mask;
                assert!(
                    verify(&bad, ca, Some(&NONCE)).is_err(),
                    "signature byte {i} ^ {mask:#x} accepted"
                );
            }
        }
    }

    #[test]
    fn flipping_any_byte_of_the_signer_certificate_fails() {
        let (ca, cert) = signed();
        let ca = ca.cert_pem.as_bytes();
        for i in 0..cert.signer_chain_der[0].len() {
            let mut bad = cert.clone();
            bad.signer_chain_der[0][i] ^= 0x01;
            assert!(verify(&bad, ca, None).is_err(), "leaf byte {i} accepted");
        }
    }

    #[test]
    fn flipping_any_byte_of_the_bundle_file_fails() {
        let (ca, cert) = signed();
        let ca = ca.cert_pem.as_bytes();
        let bundle = cert.to_bundle_json();
        let reread = SignedCertificate::from_bundle_json(&bundle).unwrap();
        assert_eq!(reread, cert);
        verify(&reread, ca, Some(&NONCE)).unwrap();
        for i in 0..bundle.len() {
            let mut bad = bundle.clone();
            bad[i] ^= 0x01;
            let accepted = SignedCertificate::from_bundle_json(&bad)
                .ok()
                .and_then(|c| verify(&c, ca, Some(&NONCE)).ok());
            assert!(
                accepted.is_none(),
                "bundle byte {i} ({:?}) accepted",
                bundle[i] as char
            );
        }
    }

    #[test]
    fn truncated_or_extended_documents_fail() {
        let (ca, cert) = signed();
        let ca = ca.cert_pem.as_bytes();
        let mut longer = cert.clone();
        longer.document_json.push(b' ');
        assert!(verify(&longer, ca, None).is_err());
        let mut shorter = cert.clone();
        shorter.document_json.pop();
        assert!(verify(&shorter, ca, None).is_err());
        let mut no_sig = cert.clone();
        no_sig.signature.clear();
        assert!(matches!(
            verify(&no_sig, ca, None).unwrap_err(),
            VerifyError::Signature(_)
        ));
    }

    #[test]
    fn a_different_nonce_is_refused() {
        let (ca, cert) = signed();
        let mut other = NONCE;
        other[0] ^= 1;
        match verify(&cert, ca.cert_pem.as_bytes(), Some(&other)).unwrap_err() {
            VerifyError::NonceMismatch { found } => assert_eq!(found, hex::encode(NONCE)),
            e => panic!("expected NonceMismatch, got {e:?}"),
        }
    }

    #[test]
    fn a_key_of_another_host_cannot_vouch_for_this_host() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let until = rcgen::date_time_ymd(2100, 1, 1);
        for uri in [
            "spiffe://fleet.example/host/h-2",
            "spiffe://fleet.example/host/xh-1",
            "spiffe://fleet.example/controller",
        ] {
            let leaf = ca.leaf_until(uri, until);
            let cert = sign(&sample_document(), &signer_for(dir.path(), &leaf, &[])).unwrap();
            match verify(&cert, ca.cert_pem.as_bytes(), None).unwrap_err() {
                VerifyError::HostMismatch { host_id, uris } => {
                    assert_eq!(host_id, "h-1");
                    assert_eq!(uris, vec![uri.to_owned()]);
                }
                e => panic!("expected HostMismatch for {uri}, got {e:?}"),
            }
        }
        // The whole SPIFFE id as host id is accepted too.
        let mut doc = sample_document();
        doc.host.host_id = "spiffe://fleet.example/host/h-1".into();
        let cert = sign(&doc, &signer_for(dir.path(), &ca.leaf(), &[])).unwrap();
        verify(&cert, ca.cert_pem.as_bytes(), None).unwrap();
    }

    #[test]
    fn a_document_from_the_future_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let signer = signer_for(dir.path(), &ca.leaf(), &[]);
        let mut doc = sample_document();
        doc.finished_at = "2099-01-01T00:00:00Z".into();
        let cert = sign(&doc, &signer).unwrap();
        assert!(matches!(
            verify(&cert, ca.cert_pem.as_bytes(), None).unwrap_err(),
            VerifyError::FromTheFuture { .. }
        ));
    }

    #[test]
    fn a_signed_but_non_canonical_document_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let signer = signer_for(dir.path(), &ca.leaf(), &[]);
        let pretty = serde_json::to_vec_pretty(&sample_document()).unwrap();
        let cert = raw_signed(&signer, pretty);
        assert!(matches!(
            verify(&cert, ca.cert_pem.as_bytes(), None).unwrap_err(),
            VerifyError::NotCanonical
        ));
    }

    #[test]
    fn a_signed_but_inconsistent_document_is_refused_and_sign_refuses_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let signer = signer_for(dir.path(), &ca.leaf(), &[]);
        let mut doc = sample_document();
        doc.exceptions.push("hpa-present".into());
        assert!(matches!(
            sign(&doc, &signer).unwrap_err(),
            AttestError::InvalidDocument(DocumentError::ErasedWithExceptions { count: 1 })
        ));
        let cert = raw_signed(&signer, canonical_json(&doc));
        assert!(matches!(
            verify(&cert, ca.cert_pem.as_bytes(), None).unwrap_err(),
            VerifyError::Inconsistent(DocumentError::ErasedWithExceptions { .. })
        ));
        let mut unknown_member = canonical_json(&sample_document());
        unknown_member.pop();
        unknown_member.extend_from_slice(br#","zz":1}"#);
        assert!(matches!(
            verify(
                &raw_signed(&signer, unknown_member),
                ca.cert_pem.as_bytes(),
                None
            )
            .unwrap_err(),
            VerifyError::Document(_)
        ));
    }

    #[test]
    fn wrong_algorithm_names_and_missing_chains_are_refused() {
        let (ca, cert) = signed();
        let mut alg = cert.clone();
        alg.signature_algorithm = "ecdsa-p384-sha384".into();
        assert!(matches!(
            verify(&alg, ca.cert_pem.as_bytes(), None).unwrap_err(),
            VerifyError::Algorithm { .. }
        ));
        let mut chain = cert.clone();
        chain.signer_chain_der.clear();
        assert!(matches!(
            verify(&chain, ca.cert_pem.as_bytes(), None).unwrap_err(),
            VerifyError::EmptyChain
        ));
    }

    /// A signer whose key does not belong to the chain it presents.
    #[derive(Debug)]
    struct Mismatched {
        key: FileSigner,
        chain: Vec<Vec<u8>>,
    }

    impl Signer for Mismatched {
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AttestError> {
            self.key.sign(message)
        }
        fn chain_der(&self) -> Vec<Vec<u8>> {
            self.chain.clone()
        }
    }

    #[test]
    fn sign_checks_the_signature_against_the_signers_own_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let other_dir = tempfile::tempdir().unwrap();
        let bad = Mismatched {
            key: signer_for(dir.path(), &ca.leaf(), &[]),
            chain: vec![ca.leaf().cert_der],
        };
        assert!(matches!(
            sign(&sample_document(), &bad).unwrap_err(),
            AttestError::SelfCheck(_)
        ));
        let empty = Mismatched {
            key: signer_for(other_dir.path(), &ca.leaf(), &[]),
            chain: vec![],
        };
        assert!(matches!(
            sign(&sample_document(), &empty).unwrap_err(),
            AttestError::NoSignerChain
        ));
    }

    #[test]
    fn certificates_chain_by_document_hash() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let signer = signer_for(dir.path(), &ca.leaf(), &[]);
        let first = sign(&sample_document(), &signer).unwrap();
        let hash = document_sha256(&first);
        assert_eq!(
            hash,
            hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                &first.document_json
            ))
        );

        let mut next = sample_document();
        next.operation_id = "0b8e7c2a-3f7d-4e51-9a1b-7c6d5e4f3a21".into();
        next.previous_certificate_sha256 = Some(hash.clone());
        let second = sign(&next, &signer).unwrap();
        let verified = verify(&second, ca.cert_pem.as_bytes(), None).unwrap();
        assert_eq!(verified.previous_certificate_sha256, Some(hash));
        assert_ne!(document_sha256(&second), document_sha256(&first));
    }

    #[test]
    fn a_bundle_file_round_trips_through_disk_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert) = signed();
        let path = dir.path().join("erase-certificate.json");
        fs::write(&path, cert.to_bundle_json()).unwrap();
        let read = SignedCertificate::from_bundle_json(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            verify(&read, ca.cert_pem.as_bytes(), Some(&NONCE)).unwrap(),
            sample_document()
        );
    }
}

#[cfg(test)]
mod any_tests {
    use std::path::Path;

    use super::*;
    use crate::testing::{
        NONCE, TestCa, TestLeaf, sample_document, sample_document_v2,
        sample_document_v2_device_erase, write_signer_files,
    };
    use crate::{
        AttestError, FileSigner, Signer, sign, sign_v2, signed_message, signed_message_v2,
        summary_v2,
    };

    fn signer_for(dir: &Path, leaf: &TestLeaf) -> FileSigner {
        let (key, chain) = write_signer_files(dir, leaf, &[]);
        FileSigner::load(&key, &chain).unwrap()
    }

    /// A fleet CA and the device-erase sample signed by the fresh OS's key.
    fn signed_device_erase() -> (TestCa, SignedCertificate) {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let signer = signer_for(dir.path(), &ca.leaf_after_tenancy());
        let cert = sign_v2(&sample_document_v2_device_erase(), &signer).unwrap();
        (ca, cert)
    }

    /// Signs arbitrary bytes with the message function `message` (bypassing the sign checks).
    fn raw_signed(
        signer: &FileSigner,
        document_json: Vec<u8>,
        message: fn(&[u8]) -> Vec<u8>,
    ) -> SignedCertificate {
        SignedCertificate {
            signature: signer.sign(&message(&document_json)).unwrap(),
            document_json,
            signer_chain_der: signer.chain_der(),
            signature_algorithm: SIGNATURE_ALGORITHM.into(),
        }
    }

    #[test]
    fn a_v2_certificate_round_trips_through_the_bundle_and_verifies() {
        let (ca, cert) = signed_device_erase();
        assert_eq!(
            cert.document_json,
            canonical_json_v2(&sample_document_v2_device_erase())
        );
        let bundle = cert.to_bundle_json();
        let read = SignedCertificate::from_bundle_json(&bundle).unwrap();
        let verified = verify_any(&read, ca.cert_pem.as_bytes(), Some(&NONCE)).unwrap();
        assert_eq!(
            verified,
            VerifiedDocument::V2(sample_document_v2_device_erase())
        );
        assert_eq!(verified.schema(), "jex.erase-certificate/v2");
        assert_eq!(verified.host().host_id, "h-1");
        assert_eq!(verified.outcome(), "ERASED");
        // The parsed document re-serialises to the signed bytes.
        let VerifiedDocument::V2(doc) = verified else {
            panic!("not v2")
        };
        assert_eq!(canonical_json_v2(&doc), cert.document_json);
    }

    #[test]
    fn a_single_phase_v2_certificate_signed_by_the_tenancy_key_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let cert = sign_v2(&sample_document_v2(), &signer_for(dir.path(), &ca.leaf())).unwrap();
        assert_eq!(
            verify_any(&cert, &ca.cert_der, None).unwrap(),
            VerifiedDocument::V2(sample_document_v2())
        );
    }

    #[test]
    fn v1_certificates_verify_through_verify_any_as_v1() {
        let dir = tempfile::tempdir().unwrap();
        let root = TestCa::new("fleet root");
        let mid = root.intermediate("fleet issuing CA");
        let (key, chain) = write_signer_files(dir.path(), &mid.leaf(), &[&mid]);
        let signer = FileSigner::load(&key, &chain).unwrap();
        let cert = sign(&sample_document(), &signer).unwrap();
        let verified = verify_any(&cert, root.cert_pem.as_bytes(), Some(&NONCE)).unwrap();
        assert_eq!(verified, VerifiedDocument::V1(sample_document()));
        assert_eq!(verified.operation_id(), sample_document().operation_id);
        assert_eq!(
            verified.summary(true),
            crate::summary(&sample_document(), true)
        );
        // And what verify() refuses, verify_any refuses the same way.
        let mut other = NONCE;
        other[0] ^= 1;
        assert!(matches!(
            verify_any(&cert, root.cert_pem.as_bytes(), Some(&other)).unwrap_err(),
            VerifyError::NonceMismatch { .. }
        ));
    }

    #[test]
    fn verify_refuses_a_v2_certificate() {
        let (ca, cert) = signed_device_erase();
        assert!(matches!(
            verify(&cert, ca.cert_pem.as_bytes(), None).unwrap_err(),
            VerifyError::Signature(_)
        ));
    }

    #[test]
    fn a_signature_is_valid_for_one_schema_only() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = TestCa::new("fleet CA");
        let signer = signer_for(dir.path(), &fleet.leaf());
        let ca = fleet.cert_pem.as_bytes();

        // A v2 document signed over the v1 domain.
        let v2_as_v1 = raw_signed(
            &signer,
            canonical_json_v2(&sample_document_v2()),
            signed_message,
        );
        match verify_any(&v2_as_v1, ca, None).unwrap_err() {
            VerifyError::SignedAsOtherSchema { schema, signed_as } => {
                assert_eq!(schema, "jex.erase-certificate/v2");
                assert_eq!(signed_as, "jex.erase-certificate/v1");
            }
            e => panic!("{e:?}"),
        }
        // A v1 document signed over the v2 domain.
        let v1_as_v2 = raw_signed(
            &signer,
            canonical_json(&sample_document()),
            signed_message_v2,
        );
        match verify_any(&v1_as_v2, ca, None).unwrap_err() {
            VerifyError::SignedAsOtherSchema { schema, signed_as } => {
                assert_eq!(schema, "jex.erase-certificate/v1");
                assert_eq!(signed_as, "jex.erase-certificate/v2");
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            verify(&v1_as_v2, ca, None).unwrap_err(),
            VerifyError::Signature(_)
        ));
        // The same documents over their own domains verify.
        verify_any(
            &raw_signed(
                &signer,
                canonical_json_v2(&sample_document_v2()),
                signed_message_v2,
            ),
            ca,
            None,
        )
        .unwrap();
        verify_any(
            &raw_signed(&signer, canonical_json(&sample_document()), signed_message),
            ca,
            None,
        )
        .unwrap();
    }

    #[test]
    fn a_signature_over_neither_domain_is_a_signature_error() {
        let (ca, mut cert) = signed_device_erase();
        cert.signature = signed_device_erase().1.signature;
        assert!(matches!(
            verify_any(&cert, ca.cert_pem.as_bytes(), None).unwrap_err(),
            VerifyError::Signature(_)
        ));
    }

    #[test]
    fn flipping_any_bit_of_a_v2_document_or_signature_fails() {
        let (ca, cert) = signed_device_erase();
        let ca = ca.cert_pem.as_bytes();
        for mask in [0x01u8, 0x80] {
            for i in 0..cert.document_json.len() {
                let mut bad = cert.clone();
                bad.document_json[i] ^= mask;
                assert!(
                    verify_any(&bad, ca, Some(&NONCE)).is_err(),
                    "document byte {i} ^ {mask:#x} accepted"
                );
            }
            for i in 0..cert.signature.len() {
                let mut bad = cert.clone();
                bad.signature[i] ^= mask;
                assert!(
                    verify_any(&bad, ca, Some(&NONCE)).is_err(),
                    "signature byte {i} ^ {mask:#x} accepted"
                );
            }
        }
        let mut longer = cert.clone();
        longer.document_json.push(b' ');
        assert!(verify_any(&longer, ca, None).is_err());
    }

    #[test]
    fn an_unknown_or_missing_schema_is_its_own_error() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let signer = signer_for(dir.path(), &ca.leaf());
        let ca = ca.cert_pem.as_bytes();
        let v3 = String::from_utf8(canonical_json_v2(&sample_document_v2()))
            .unwrap()
            .replace("jex.erase-certificate/v2", "jex.erase-certificate/v3");
        let cert = raw_signed(&signer, v3.into_bytes(), signed_message_v2);
        let err = verify_any(&cert, ca, None).unwrap_err();
        match &err {
            VerifyError::UnknownSchema { found } => {
                assert_eq!(found.as_deref(), Some("jex.erase-certificate/v3"));
            }
            e => panic!("{e:?}"),
        }
        assert!(
            err.to_string()
                .contains("\"jex.erase-certificate/v3\", which this verifier does not know"),
            "{err}"
        );
        let cert = raw_signed(&signer, br#"{"outcome":"ERASED"}"#.to_vec(), signed_message);
        let err = verify_any(&cert, ca, None).unwrap_err();
        assert!(
            matches!(err, VerifyError::UnknownSchema { found: None }),
            "{err:?}"
        );
        assert!(err.to_string().contains("schema is missing"), "{err}");
        let cert = raw_signed(&signer, b"not json".to_vec(), signed_message);
        assert!(matches!(
            verify_any(&cert, ca, None).unwrap_err(),
            VerifyError::Document(_)
        ));
    }

    #[test]
    fn a_signed_but_inconsistent_or_unknown_member_v2_document_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = TestCa::new("fleet CA");
        let signer = signer_for(dir.path(), &fleet.leaf_after_tenancy());
        let ca = fleet.cert_pem.as_bytes();
        let mut doc = sample_document_v2_device_erase();
        doc.device_erase.as_mut().unwrap().evidence[0].passed = false;
        assert!(matches!(
            sign_v2(&doc, &signer).unwrap_err(),
            AttestError::InvalidDocument(DocumentError::FailedEvidence { .. })
        ));
        let cert = raw_signed(&signer, canonical_json_v2(&doc), signed_message_v2);
        assert!(matches!(
            verify_any(&cert, ca, None).unwrap_err(),
            VerifyError::Inconsistent(DocumentError::FailedEvidence { .. })
        ));
        let mut extra = canonical_json_v2(&sample_document_v2_device_erase());
        extra.pop();
        extra.extend_from_slice(br#","zz":1}"#);
        assert!(matches!(
            verify_any(&raw_signed(&signer, extra, signed_message_v2), ca, None).unwrap_err(),
            VerifyError::Document(_)
        ));
        // `KeyDestruction` (shared with v1 and the erase journal) lets unknown members through
        // parsing; they cannot survive the canonical form.
        let inner = String::from_utf8(canonical_json_v2(&sample_document_v2()))
            .unwrap()
            .replace(r#""evidence":{"#, r#""aa":1,"evidence":{"#);
        let old_dir = tempfile::tempdir().unwrap();
        let old_key = signer_for(old_dir.path(), &fleet.leaf());
        let cert = raw_signed(&old_key, inner.into_bytes(), signed_message_v2);
        assert!(matches!(
            verify_any(&cert, ca, None).unwrap_err(),
            VerifyError::NotCanonical
        ));
        let pretty = serde_json::to_vec_pretty(&sample_document_v2_device_erase()).unwrap();
        assert!(matches!(
            verify_any(&raw_signed(&signer, pretty, signed_message_v2), ca, None).unwrap_err(),
            VerifyError::NotCanonical
        ));
    }

    #[test]
    fn the_signer_record_must_describe_the_certificate_that_signed() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        // The device-erase document claims a key born 2025-06-01T11:00:00Z; the tenancy's key
        // was issued in 2020.
        let old_key = signer_for(dir.path(), &ca.leaf());
        match sign_v2(&sample_document_v2_device_erase(), &old_key).unwrap_err() {
            AttestError::SignerRecordMismatch { claimed, actual } => {
                assert_eq!(claimed, "2025-06-01T11:00:00Z");
                assert_eq!(actual.as_deref(), Some("2020-01-01T00:00:00Z"));
            }
            e => panic!("{e:?}"),
        }
        let forged = raw_signed(
            &old_key,
            canonical_json_v2(&sample_document_v2_device_erase()),
            signed_message_v2,
        );
        match verify_any(&forged, ca.cert_pem.as_bytes(), Some(&NONCE)).unwrap_err() {
            VerifyError::SignerRecord { claimed, actual } => {
                assert_eq!(claimed, "2025-06-01T11:00:00Z");
                assert_eq!(actual.as_deref(), Some("2020-01-01T00:00:00Z"));
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_signer_record_made_from_the_certificate_is_accepted() {
        let ca = TestCa::new("fleet CA");
        let fresh = ca.leaf_after_tenancy();
        let record =
            crate::SignerRecord::new("file", &fresh.cert_der, "2025-06-01T10:00:00Z").unwrap();
        assert_eq!(record, sample_document_v2_device_erase().signer);
        let old =
            crate::SignerRecord::new("file", &ca.leaf().cert_der, "2025-06-01T10:00:00Z").unwrap();
        assert_eq!(old, sample_document_v2().signer);
        assert!(matches!(
            crate::SignerRecord::new("file", b"\x30\x00", "2025-06-01T10:00:00Z").unwrap_err(),
            DocumentError::SignerCertificateTime
        ));
    }

    #[test]
    fn a_v2_certificate_of_another_host_or_nonce_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let other_host = ca.leaf_born(
            "spiffe://fleet.example/host/h-2",
            crate::testing::SIGNER_BORN_AFTER_TENANCY,
            rcgen::date_time_ymd(2100, 1, 1),
        );
        let cert = sign_v2(
            &sample_document_v2_device_erase(),
            &signer_for(dir.path(), &other_host),
        )
        .unwrap();
        assert!(matches!(
            verify_any(&cert, ca.cert_pem.as_bytes(), None).unwrap_err(),
            VerifyError::HostMismatch { .. }
        ));
        let (ca, cert) = signed_device_erase();
        let mut other = NONCE;
        other[31] ^= 1;
        assert!(matches!(
            verify_any(&cert, ca.cert_pem.as_bytes(), Some(&other)).unwrap_err(),
            VerifyError::NonceMismatch { .. }
        ));
        assert!(matches!(
            verify_any(&cert, TestCa::new("other").cert_pem.as_bytes(), None).unwrap_err(),
            VerifyError::Chain { .. }
        ));
    }

    #[test]
    fn the_v2_summary_shows_each_target_the_signer_and_every_evidence_line() {
        let mut doc = sample_document_v2_device_erase();
        doc.outcome = crate::OUTCOME_FAILED.into();
        doc.exceptions.push("data-volume-kept".into());
        doc.device_erase.as_mut().unwrap().evidence[3].passed = false;
        let text = summary_v2(&doc, true);
        for expected in [
            "certificate verifies: signature, chain to the fleet CA, internal consistency, signer record, controller nonce",
            "  schema:       jex.erase-certificate/v2",
            "  target \"internal\": internal-ssd disk0, 500277792768 bytes: Purge / Cryptographic Erase (Apple EACS: Secure Enclave keys destroyed)",
            "  target \"archive\": external-disk /dev/rdisk4, 67108864 bytes: Clear / Overwrite",
            "    overwrite:  1 pass(es), 67108864 bytes, verified blocks 2002 mismatched 0",
            "  signer:       key source file, certificate issued 2025-06-01T11:00:00Z, after the Terminate was accepted (born after the tenancy)",
            "  device erase: Apple Erase All Content and Settings via MDM EraseDevice, or DFU restore",
            "    PASS prepare_record_verifies: signed by an agent certificate of the fleet CA for host h-1",
            "    FAIL data_volume_new: ",
            "  exceptions:   data-volume-kept",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert_eq!(
            text.matches("    PASS ").count() + text.matches("    FAIL ").count(),
            5
        );
        let single = summary_v2(&sample_document_v2(), false);
        assert!(single.contains("before the Terminate was accepted (a key of the tenancy)"));
        assert!(single.contains("    keys:       cryptsetup luksErase (cryptsetup 2.6.1)"));
        assert!(!single.contains("device erase"));
    }
}
