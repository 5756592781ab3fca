//! Offline verification of a [`SignedCertificate`] against the fleet CA: what
//! `jex-agent verify-erase CERT --ca CA` and the controller run.
//!
//! [`verify`] checks, in this order, and fails on the first problem:
//! 1. `signature_algorithm` is `ecdsa-p256-sha256` and a signer chain is present;
//! 2. the ECDSA P-256/SHA-256 signature over `b"jex-erase-certificate-v1\0" || document_json`
//!    verifies with the leaf certificate's public key (checked first, so that nothing
//!    unauthenticated is interpreted; the key itself is trusted only after step 4);
//! 3. `document_json` parses as a [`CertificateDocument`] (unknown members refused);
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
//! 6. the document is internally consistent ([`CertificateDocument::check_consistency`]);
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
use super::{
    CertificateDocument, SIGNATURE_ALGORITHM, SignedCertificate, canonical_json, signed_message,
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
}

/// Verifies `cert` against the CA certificate(s) in `ca_pem_or_der` (PEM, possibly several, or
/// one DER certificate) and, if given, the controller nonce; returns the verified document.
/// See the module documentation for exactly what is checked.
pub fn verify(
    cert: &SignedCertificate,
    ca_pem_or_der: &[u8],
    expected_nonce: Option<&[u8]>,
) -> Result<CertificateDocument, VerifyError> {
    if cert.signature_algorithm != SIGNATURE_ALGORITHM {
        return Err(VerifyError::Algorithm {
            found: cert.signature_algorithm.clone(),
        });
    }
    let chain = SignerChain::new(&cert.signer_chain_der)?;

    // 2. The signature, with the (not yet trusted) leaf's key: checked first so that nothing
    // unauthenticated is interpreted beyond this point. Trust in the key comes from step 4.
    chain.verify_signature(&signed_message(&cert.document_json), &cert.signature)?;

    // 3. The document.
    let doc: CertificateDocument =
        serde_json::from_slice(&cert.document_json).map_err(VerifyError::Document)?;

    // 4. Chain, judged at the signing time the document claims.
    let signed_at =
        parse_utc("finished_at", &doc.finished_at).map_err(VerifyError::Inconsistent)?;
    chain
        .verify_path(ca_pem_or_der, unix_time(signed_at))
        .map_err(|err| match err {
            ChainError::Ca(err) => err,
            ChainError::Path(source) => VerifyError::Chain {
                at: doc.finished_at.clone(),
                source,
            },
        })?;

    // 5.–6. Canonical form and consistency.
    if canonical_json(&doc) != cert.document_json {
        return Err(VerifyError::NotCanonical);
    }
    doc.check_consistency().map_err(VerifyError::Inconsistent)?;

    // 7. The signer is this host.
    let host_id = &doc.host.host_id;
    if !chain.identifies_host(host_id)? {
        return Err(VerifyError::HostMismatch {
            host_id: host_id.clone(),
            uris: chain.uri_names()?,
        });
    }

    // 8. Freshness against the controller's nonce.
    if let Some(expected) = expected_nonce
        && doc.controller_nonce_hex != hex::encode(expected)
    {
        return Err(VerifyError::NonceMismatch {
            found: doc.controller_nonce_hex.clone(),
        });
    }

    // 9. Not from the future.
    let skew = time::Duration::try_from(MAX_CLOCK_SKEW).unwrap_or(time::Duration::ZERO);
    if signed_at > crate::clock::now_utc() + skew {
        return Err(VerifyError::FromTheFuture {
            finished_at: doc.finished_at.clone(),
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
    use crate::{AttestError, FileSigner, Signer, document_sha256, sign};

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
