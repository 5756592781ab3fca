//! X.509 certificates for package signing: parsing (RustCrypto `x509-cert`), signature checks
//! (`ring`) and the certificate chain check (`rustls-webpki`, with `ring`).
//!
//! [`verify_chain`] accepts a signing certificate when:
//!
//! - it allows code signing: its extendedKeyUsage lists id-kp-codeSigning (1.3.6.1.5.5.7.3.3),
//!   checked here on the certificate itself so that the error says what to fix;
//! - `rustls-webpki` builds a path from it through the certificates embedded in the package to
//!   one of the CA certificates the caller passes: each certificate is signed by the next one's
//!   key, every issuer is a CA (`basicConstraints cA=TRUE`, path length constraints honoured),
//!   the signing certificate is not a CA, every certificate is valid at the verification time,
//!   an issuer that has an extendedKeyUsage lists codeSigning too, and no certificate has a
//!   critical extension webpki does not know; at most 6 intermediates;
//! - the CA certificate at the end of that path is itself a CA and valid at that time (webpki
//!   takes a trust anchor's validity on faith; this check keeps expired CA files out).
//!
//! Intermediates come from the package; anchors only from the caller: trust is pinned to the CA
//! the caller passes. Certificate signatures are checked with webpki's algorithms (RSA PKCS#1
//! v1.5 2048 to 8192 bits with SHA-256/384/512, RSA-PSS, ECDSA P-256/P-384, Ed25519): a
//! certificate signed with SHA-1 is refused. Key usage bits and Apple's Developer ID extensions
//! are not interpreted; Apple-issued installer certificates list Apple's own extendedKeyUsage
//! values instead of codeSigning, so this check is for packages signed under the fleet's CA.

use const_oid::ObjectIdentifier;
use der::Decode;
use ring::signature;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

// OIDs are parsed at compile time (`new_unwrap` in a const): a typo fails the build.
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const SHA1_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.5");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
/// id-kp-codeSigning, the extended key usage a package signing certificate must list. A static,
/// not a const: webpki takes its encoded bytes as `&'static [u8]`.
static ID_KP_CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");
/// SHA-1 digest algorithm.
pub const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
/// SHA-256 digest algorithm.
pub const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// SHA-384 digest algorithm.
pub const ID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
/// SHA-512 digest algorithm.
pub const ID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

/// A certificate problem.
#[derive(Debug, thiserror::Error)]
pub enum X509Error {
    /// The bytes are not a DER X.509 certificate.
    #[error("parse certificate {what}")]
    Parse {
        /// Which certificate.
        what: String,
        /// Decoder error.
        #[source]
        source: der::Error,
    },
    /// A PEM file holds no certificate or a malformed one.
    #[error("read pem certificates from {what}: {reason}")]
    Pem {
        /// Which file.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The public key or signature algorithm is not one this tool verifies.
    #[error("certificate {subject}: unsupported {what} {oid}")]
    Unsupported {
        /// Subject of the certificate.
        subject: String,
        /// Key or signature algorithm.
        what: &'static str,
        /// Its OID.
        oid: ObjectIdentifier,
    },
    /// A signature did not verify with the certificate's key.
    #[error("signature by {subject} does not verify ({what})")]
    BadSignature {
        /// Subject of the signer.
        subject: String,
        /// What was signed.
        what: String,
    },
}

/// A signing certificate that does not chain to a trust anchor, or may not sign packages.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The signing certificate's extendedKeyUsage is missing or does not list codeSigning.
    #[error(
        "the signing certificate {subject} does not allow code signing (extendedKeyUsage lacks codeSigning): issue it with extendedKeyUsage = codeSigning"
    )]
    NotForCodeSigning {
        /// Subject of the signing certificate.
        subject: String,
    },
    /// An intermediate CA restricts its extendedKeyUsage to purposes other than code signing.
    #[error(
        "intermediate CA {subject} does not allow code signing (its extendedKeyUsage lacks codeSigning): use a CA without extendedKeyUsage or one that lists codeSigning"
    )]
    IssuerNotForCodeSigning {
        /// Subject of the intermediate.
        subject: String,
    },
    /// A certificate on the path is outside its validity period.
    #[error(
        "certificate {subject} is not valid at {now} (valid {not_before}..{not_after}, unix seconds)"
    )]
    NotValidNow {
        /// Subject.
        subject: String,
        /// Verification time.
        now: u64,
        /// Start of validity.
        not_before: u64,
        /// End of validity.
        not_after: u64,
    },
    /// An issuer on the path is not a CA.
    #[error("certificate {subject} issues certificates but is not a CA (basicConstraints)")]
    NotCa {
        /// Subject.
        subject: String,
    },
    /// The signing certificate is a CA certificate.
    #[error(
        "the signing certificate {subject} is a CA (basicConstraints cA=TRUE): sign with a leaf certificate issued by the CA"
    )]
    SignerIsCa {
        /// Subject of the signing certificate.
        subject: String,
    },
    /// No certificate given (package or anchors) issued this one.
    #[error(
        "no trusted issuer for certificate {subject} (issuer {issuer}): pass the CA that signed it"
    )]
    NoIssuer {
        /// Subject.
        subject: String,
        /// Its issuer name.
        issuer: String,
    },
    /// A certificate with the issuer's name is there, but its key did not sign this one.
    #[error(
        "certificate {subject} is not signed by the key of the CA named {issuer} (a CA with that name but another key was given, or a certificate was modified): pass the CA that signed it"
    )]
    WrongIssuerKey {
        /// Subject.
        subject: String,
        /// Its issuer name.
        issuer: String,
    },
    /// A certificate is signed with an algorithm the chain check does not accept.
    #[error(
        "a certificate on the chain is signed with an algorithm that is not accepted ({reason}): use RSA (2048 bits or more) or ECDSA P-256/P-384 with SHA-256 or stronger"
    )]
    UnsupportedAlgorithm {
        /// What webpki reported.
        reason: String,
    },
    /// A caller-given CA certificate cannot serve as a trust anchor.
    #[error("ca certificate {subject} cannot be used as a trust anchor: {reason}")]
    Anchor {
        /// Subject of the CA certificate.
        subject: String,
        /// What webpki reported.
        reason: String,
    },
    /// Path building gave up: too many intermediates or too many candidates.
    #[error(
        "certificate chain is too long or too costly to build ({reason}): at most 6 intermediates"
    )]
    TooLong {
        /// What webpki reported.
        reason: String,
    },
    /// Any other reason webpki refuses the chain (a malformed certificate, an unknown critical
    /// extension, ...).
    #[error("certificate chain rejected: {reason}")]
    Rejected {
        /// What webpki reported.
        reason: String,
    },
}

/// A parsed certificate with its original DER.
#[derive(Clone)]
pub struct Certificate {
    der: Vec<u8>,
    parsed: x509_cert::Certificate,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject())
            .finish()
    }
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

/// A signature algorithm ring can verify, chosen from OIDs.
#[derive(Debug, Clone, Copy)]
pub struct VerifyAlgorithm(&'static dyn signature::VerificationAlgorithm);

impl Certificate {
    /// Parses one DER certificate; `what` names it in errors.
    pub fn from_der(der: &[u8], what: &str) -> Result<Self, X509Error> {
        let parsed = x509_cert::Certificate::from_der(der).map_err(|source| X509Error::Parse {
            what: what.to_owned(),
            source,
        })?;
        Ok(Self {
            der: der.to_vec(),
            parsed,
        })
    }

    /// Parses every `CERTIFICATE` block of a PEM file (at least one); `what` names it in errors.
    pub fn from_pem_bundle(pem: &[u8], what: &str) -> Result<Vec<Self>, X509Error> {
        let ders = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| X509Error::Pem {
                what: what.to_owned(),
                reason: e.to_string(),
            })?;
        if ders.is_empty() {
            return Err(X509Error::Pem {
                what: what.to_owned(),
                reason: "no BEGIN CERTIFICATE block".to_owned(),
            });
        }
        ders.iter()
            .enumerate()
            .map(|(i, der)| Self::from_der(der, &format!("{what} #{}", i + 1)))
            .collect()
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The parsed certificate.
    pub fn parsed(&self) -> &x509_cert::Certificate {
        &self.parsed
    }

    /// Subject distinguished name (RFC 4514 form).
    pub fn subject(&self) -> String {
        self.parsed.tbs_certificate.subject.to_string()
    }

    /// Issuer distinguished name (RFC 4514 form).
    pub fn issuer(&self) -> String {
        self.parsed.tbs_certificate.issuer.to_string()
    }

    /// Validity period in unix seconds: (not before, not after).
    pub fn validity(&self) -> (u64, u64) {
        let v = &self.parsed.tbs_certificate.validity;
        (
            v.not_before.to_unix_duration().as_secs(),
            v.not_after.to_unix_duration().as_secs(),
        )
    }

    /// Whether `basicConstraints` marks the certificate as a CA.
    pub fn is_ca(&self) -> bool {
        self.parsed
            .tbs_certificate
            .extensions
            .iter()
            .flatten()
            .filter(|e| e.extn_id == BASIC_CONSTRAINTS)
            .filter_map(|e| {
                x509_cert::ext::pkix::BasicConstraints::from_der(e.extn_value.as_bytes()).ok()
            })
            .any(|bc| bc.ca)
    }

    fn spki_key_bytes(&self) -> Result<&[u8], X509Error> {
        self.parsed
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| X509Error::Unsupported {
                subject: self.subject(),
                what: "public key bit string with unused bits",
                oid: RSA_ENCRYPTION,
            })
    }

    /// The RSA public key (PKCS#1 `RSAPublicKey` DER) when the certificate holds one.
    pub fn rsa_public_key(&self) -> Result<&[u8], X509Error> {
        let spki = &self.parsed.tbs_certificate.subject_public_key_info;
        if spki.algorithm.oid != RSA_ENCRYPTION {
            return Err(X509Error::Unsupported {
                subject: self.subject(),
                what: "key algorithm (expected RSA)",
                oid: spki.algorithm.oid,
            });
        }
        self.spki_key_bytes()
    }

    /// The ring algorithm that verifies a signature of `signature_oid` made by this certificate's
    /// key. `rsaEncryption` is accepted as a signature OID with `digest` (CMS style).
    pub fn verify_algorithm(
        &self,
        signature_oid: ObjectIdentifier,
        digest: Option<ObjectIdentifier>,
    ) -> Result<VerifyAlgorithm, X509Error> {
        let spki = &self.parsed.tbs_certificate.subject_public_key_info;
        let unsupported = |what, oid| X509Error::Unsupported {
            subject: self.subject(),
            what,
            oid,
        };
        let algorithm: &'static dyn signature::VerificationAlgorithm =
            if spki.algorithm.oid == RSA_ENCRYPTION {
                let by_digest = match (signature_oid, digest) {
                    (SHA1_WITH_RSA, _) | (RSA_ENCRYPTION, Some(ID_SHA1)) => ID_SHA1,
                    (SHA256_WITH_RSA, _) | (RSA_ENCRYPTION, Some(ID_SHA256)) => ID_SHA256,
                    (SHA384_WITH_RSA, _) | (RSA_ENCRYPTION, Some(ID_SHA384)) => ID_SHA384,
                    (SHA512_WITH_RSA, _) | (RSA_ENCRYPTION, Some(ID_SHA512)) => ID_SHA512,
                    (oid, _) => return Err(unsupported("signature algorithm", oid)),
                };
                match by_digest {
                    ID_SHA1 => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                    ID_SHA256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    ID_SHA384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    _ => &signature::RSA_PKCS1_2048_8192_SHA512,
                }
            } else if spki.algorithm.oid == EC_PUBLIC_KEY {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                    .ok_or_else(|| unsupported("EC key without named curve", EC_PUBLIC_KEY))?;
                match (curve, signature_oid) {
                    (SECP256R1, ECDSA_WITH_SHA256) => &signature::ECDSA_P256_SHA256_ASN1,
                    (SECP256R1, ECDSA_WITH_SHA384) => &signature::ECDSA_P256_SHA384_ASN1,
                    (SECP384R1, ECDSA_WITH_SHA256) => &signature::ECDSA_P384_SHA256_ASN1,
                    (SECP384R1, ECDSA_WITH_SHA384) => &signature::ECDSA_P384_SHA384_ASN1,
                    (SECP256R1 | SECP384R1, oid) => {
                        return Err(unsupported("signature algorithm", oid));
                    }
                    (curve, _) => return Err(unsupported("EC curve", curve)),
                }
            } else {
                return Err(unsupported("key algorithm", spki.algorithm.oid));
            };
        Ok(VerifyAlgorithm(algorithm))
    }

    /// Verifies `signature` over `message` with this certificate's key.
    pub fn verify(
        &self,
        algorithm: VerifyAlgorithm,
        message: &[u8],
        signature_bytes: &[u8],
        what: &str,
    ) -> Result<(), X509Error> {
        signature::UnparsedPublicKey::new(algorithm.0, self.spki_key_bytes()?)
            .verify(message, signature_bytes)
            .map_err(|_| X509Error::BadSignature {
                subject: self.subject(),
                what: what.to_owned(),
            })
    }

    /// Whether the extendedKeyUsage extension lists id-kp-codeSigning (false when there is no
    /// such extension or it does not decode).
    pub fn allows_code_signing(&self) -> bool {
        self.parsed
            .tbs_certificate
            .extensions
            .iter()
            .flatten()
            .filter(|e| e.extn_id == EXT_KEY_USAGE)
            .filter_map(|e| {
                x509_cert::ext::pkix::ExtendedKeyUsage::from_der(e.extn_value.as_bytes()).ok()
            })
            .any(|eku| eku.0.contains(&ID_KP_CODE_SIGNING))
    }

    /// Whether an extendedKeyUsage extension is present and lacks id-kp-codeSigning.
    fn excludes_code_signing(&self) -> bool {
        let has_eku = self
            .parsed
            .tbs_certificate
            .extensions
            .iter()
            .flatten()
            .any(|e| e.extn_id == EXT_KEY_USAGE);
        has_eku && !self.allows_code_signing()
    }

    fn not_valid_at(&self, now: u64) -> Option<ChainError> {
        let (not_before, not_after) = self.validity();
        (now < not_before || now > not_after).then(|| ChainError::NotValidNow {
            subject: self.subject(),
            now,
            not_before,
            not_after,
        })
    }
}

/// Checks that `leaf` may sign packages and chains through `intermediates` to one of `anchors`
/// at time `now` (unix seconds); see the module docs for the rules. Returns the path, leaf
/// first, anchor last.
pub fn verify_chain(
    leaf: &Certificate,
    intermediates: &[Certificate],
    anchors: &[Certificate],
    now: u64,
) -> Result<Vec<Certificate>, ChainError> {
    if !leaf.allows_code_signing() {
        return Err(ChainError::NotForCodeSigning {
            subject: leaf.subject(),
        });
    }
    let anchor_ders: Vec<CertificateDer<'_>> = anchors
        .iter()
        .map(|a| CertificateDer::from(a.der()))
        .collect();
    let trust_anchors = anchor_ders
        .iter()
        .zip(anchors)
        .map(|(der, anchor)| {
            webpki::anchor_from_trusted_cert(der).map_err(|e| ChainError::Anchor {
                subject: anchor.subject(),
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let intermediate_ders: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|c| CertificateDer::from(c.der()))
        .collect();
    let leaf_der = CertificateDer::from(leaf.der());
    let end_entity =
        webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| ChainError::Rejected {
            reason: format!("signing certificate {}: {e}", leaf.subject()),
        })?;
    // The leaf's codeSigning was required above. `KeyUsage::required` would also demand the
    // extension on every intermediate (webpki applies the rule to each certificate on the path),
    // and CA certificates usually have none; `required_if_present` still refuses an
    // intermediate restricted to other purposes.
    let usage = webpki::KeyUsage::required_if_present(ID_KP_CODE_SIGNING.as_bytes());
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now));
    let verified = end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &trust_anchors,
            &intermediate_ders,
            time,
            usage,
            None,
            None,
        )
        .map_err(|e| explain(&e, leaf, intermediates, now))?;

    let mut path = vec![leaf.clone()];
    for cert in verified.intermediate_certificates() {
        let der = cert.der();
        let found = intermediates
            .iter()
            .find(|c| c.der() == der.as_ref())
            .ok_or_else(|| ChainError::Rejected {
                reason: "path holds a certificate that was not given".to_owned(),
            })?;
        path.push(found.clone());
    }
    let anchor = trust_anchors
        .iter()
        .position(|t| std::ptr::eq(t, verified.anchor()))
        .and_then(|index| anchors.get(index))
        .ok_or_else(|| ChainError::Rejected {
            reason: "path ends at an anchor that was not given".to_owned(),
        })?;
    if !anchor.is_ca() {
        return Err(ChainError::NotCa {
            subject: anchor.subject(),
        });
    }
    if let Some(err) = anchor.not_valid_at(now) {
        return Err(err);
    }
    path.push(anchor.clone());
    Ok(path)
}

/// The last certificate reached from `leaf` by following issuer names through
/// `intermediates`: where a failed path most likely stops. Used only to word errors.
fn last_reachable<'a>(leaf: &'a Certificate, intermediates: &'a [Certificate]) -> &'a Certificate {
    let mut current = leaf;
    for _ in 0..intermediates.len() {
        let issuer = &current.parsed.tbs_certificate.issuer;
        match intermediates
            .iter()
            .find(|c| c.parsed.tbs_certificate.subject == *issuer && *c != current)
        {
            Some(next) => current = next,
            None => break,
        }
    }
    current
}

/// Turns a webpki refusal into an error naming the certificate at fault and what to do.
fn explain(
    error: &webpki::Error,
    leaf: &Certificate,
    intermediates: &[Certificate],
    now: u64,
) -> ChainError {
    use webpki::Error as E;
    let reason = error.to_string();
    match error {
        E::CertExpired { .. } | E::CertNotValidYet { .. } | E::InvalidCertValidity => {
            std::iter::once(leaf)
                .chain(intermediates)
                .find_map(|c| c.not_valid_at(now))
                .unwrap_or(ChainError::Rejected { reason })
        }
        E::CaUsedAsEndEntity => ChainError::SignerIsCa {
            subject: leaf.subject(),
        },
        E::EndEntityUsedAsCa => intermediates
            .iter()
            .find(|c| {
                !c.is_ca()
                    && std::iter::once(leaf).chain(intermediates).any(|issued| {
                        issued.parsed.tbs_certificate.issuer == c.parsed.tbs_certificate.subject
                    })
            })
            .map(|c| ChainError::NotCa {
                subject: c.subject(),
            })
            .unwrap_or(ChainError::Rejected { reason }),
        E::RequiredEkuNotFoundContext(_) => intermediates
            .iter()
            .find(|c| c.excludes_code_signing())
            .map(|c| ChainError::IssuerNotForCodeSigning {
                subject: c.subject(),
            })
            .unwrap_or(ChainError::Rejected { reason }),
        E::UnknownIssuer => {
            let last = last_reachable(leaf, intermediates);
            ChainError::NoIssuer {
                subject: last.subject(),
                issuer: last.issuer(),
            }
        }
        E::InvalidSignatureForPublicKey => {
            let last = last_reachable(leaf, intermediates);
            ChainError::WrongIssuerKey {
                subject: last.subject(),
                issuer: last.issuer(),
            }
        }
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
        | E::SignatureAlgorithmMismatch => ChainError::UnsupportedAlgorithm { reason },
        E::MaximumPathDepthExceeded
        | E::MaximumPathBuildCallsExceeded
        | E::MaximumSignatureChecksExceeded => ChainError::TooLong { reason },
        _ => ChainError::Rejected { reason },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A throwaway RSA-2048 PKI made with the `openssl` CLI: root CA, intermediate CA, signer,
    /// and more certificates on demand.
    pub(crate) struct TestPki {
        pub dir: tempfile::TempDir,
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl must be installed to run this test (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Extension sections for `-extensions`: `ca` and `leaf` (codeSigning) are the normal
    /// ones; the others make certificates the chain check must refuse.
    const EXTENSIONS: &str = "\
[ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
subjectKeyIdentifier = hash\n\
[leaf]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
extendedKeyUsage = codeSigning\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n\
[leaf_no_eku]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n\
[leaf_server]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
extendedKeyUsage = serverAuth\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n\
[ca_server]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
extendedKeyUsage = serverAuth\nsubjectKeyIdentifier = hash\n\
[ca_code]\nbasicConstraints = critical,CA:TRUE\n\
keyUsage = critical,keyCertSign,cRLSign,digitalSignature\nextendedKeyUsage = codeSigning\n\
subjectKeyIdentifier = hash\n";

    impl TestPki {
        /// Root "Test Root CA", intermediate "Test Installer CA", leaf "Test Installer Signer"
        /// (extendedKeyUsage codeSigning), all valid for 30 days from now.
        pub(crate) fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("ext.cnf"), EXTENSIONS).expect("ext");
            let pki = Self { dir };
            pki.self_signed_ca("root", "/O=JexCloud Test/CN=Test Root CA", 30);
            pki.issue(
                "inter",
                "root",
                "/O=JexCloud Test/CN=Test Installer CA",
                "ca",
                30,
            );
            pki.issue(
                "signer",
                "inter",
                "/O=JexCloud Test/CN=Test Installer Signer",
                "leaf",
                30,
            );
            pki
        }

        /// Makes `<name>.key` and a self-signed CA `<name>.pem` valid for `days`.
        pub(crate) fn self_signed_ca(&self, name: &str, subject: &str, days: u32) -> Certificate {
            let d = self.dir.path();
            let key = format!("{name}.key");
            let pem = format!("{name}.pem");
            let days = days.to_string();
            openssl(d, &["genrsa", "-out", &key, "2048"]);
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-key",
                    &key,
                    "-sha256",
                    "-days",
                    &days,
                    "-subj",
                    subject,
                    "-config",
                    "ext.cnf",
                    "-extensions",
                    "ca",
                    "-out",
                    &pem,
                ],
            );
            self.cert(&pem)
        }

        /// Makes `<name>.key` and `<name>.pem`, issued by `<issuer>.pem` with the extension
        /// section `ext` of [`EXTENSIONS`], valid for `days` from now; the serial is random.
        pub(crate) fn issue(
            &self,
            name: &str,
            issuer: &str,
            subject: &str,
            ext: &str,
            days: u32,
        ) -> Certificate {
            let d = self.dir.path();
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let pem = format!("{name}.pem");
            let days = days.to_string();
            openssl(d, &["genrsa", "-out", &key, "2048"]);
            openssl(
                d,
                &["req", "-new", "-key", &key, "-subj", subject, "-out", &csr],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &format!("{issuer}.pem"),
                    "-CAkey",
                    &format!("{issuer}.key"),
                    "-sha256",
                    "-days",
                    &days,
                    "-extfile",
                    "ext.cnf",
                    "-extensions",
                    ext,
                    "-out",
                    &pem,
                ],
            );
            self.cert(&pem)
        }

        pub(crate) fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        pub(crate) fn read(&self, name: &str) -> Vec<u8> {
            std::fs::read(self.path(name)).expect("pki file")
        }

        pub(crate) fn cert(&self, name: &str) -> Certificate {
            Certificate::from_pem_bundle(&self.read(name), name)
                .expect("pem")
                .remove(0)
        }

        /// A second, unrelated root CA with the same name as the real one: `other.pem`.
        pub(crate) fn other_root(&self) -> PathBuf {
            self.self_signed_ca("other", "/O=JexCloud Test/CN=Test Root CA", 30);
            self.path("other.pem")
        }
    }

    #[allow(
        clippy::disallowed_methods,
        reason = "tests of a build tool outside the agent's crates"
    )]
    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    const DAY: u64 = 86_400;

    fn subjects(path: &[Certificate]) -> Vec<String> {
        path.iter().map(Certificate::subject).collect()
    }

    #[test]
    fn chain_through_an_intermediate_reaches_the_root() {
        let pki = TestPki::new();
        let leaf = pki.cert("signer.pem");
        let expected = [
            "CN=Test Installer Signer,O=JexCloud Test",
            "CN=Test Installer CA,O=JexCloud Test",
            "CN=Test Root CA,O=JexCloud Test",
        ];
        let path = verify_chain(
            &leaf,
            &[pki.cert("inter.pem")],
            &[pki.cert("root.pem")],
            now(),
        )
        .expect("chain verifies");
        assert_eq!(subjects(&path), expected);
        // The package may also embed the signer and the root (sign --chain with the root, as
        // CI does): the path is the same, the root once, at the end.
        let path = verify_chain(
            &leaf,
            &[leaf.clone(), pki.cert("root.pem"), pki.cert("inter.pem")],
            &[pki.cert("root.pem")],
            now(),
        )
        .expect("chain with the root embedded verifies");
        assert_eq!(subjects(&path), expected);
    }

    #[test]
    fn chain_fails_without_the_intermediate_or_with_another_root() {
        let pki = TestPki::new();
        let leaf = pki.cert("signer.pem");
        let err = verify_chain(&leaf, &[], &[pki.cert("root.pem")], now()).expect_err("no inter");
        match &err {
            ChainError::NoIssuer { subject, issuer } => {
                assert!(subject.contains("Test Installer Signer"), "{err}");
                assert!(issuer.contains("Test Installer CA"), "{err}");
            }
            other => panic!("expected NoIssuer, got {other}"),
        }
        let other =
            Certificate::from_pem_bundle(&std::fs::read(pki.other_root()).expect("read"), "other")
                .expect("pem")
                .remove(0);
        // Same subject name as the real root, different key: the signature check rejects it.
        let err = verify_chain(&leaf, &[pki.cert("inter.pem")], &[other], now())
            .expect_err("same-name root");
        assert!(
            matches!(err, ChainError::WrongIssuerKey { .. }),
            "expected WrongIssuerKey, got {err}"
        );
        assert!(err.to_string().contains("Test Installer CA"), "{err}");
        // A root with another name: nothing issued the intermediate.
        let unrelated = pki.self_signed_ca("unrelated", "/O=Elsewhere/CN=Unrelated Root CA", 30);
        let err = verify_chain(&leaf, &[pki.cert("inter.pem")], &[unrelated], now())
            .expect_err("unrelated root");
        match &err {
            ChainError::NoIssuer { subject, .. } => {
                assert!(subject.contains("Test Installer CA"), "{err}");
            }
            other => panic!("expected NoIssuer, got {other}"),
        }
    }

    #[test]
    fn a_signer_without_the_code_signing_usage_is_refused() {
        let pki = TestPki::new();
        let chain = [pki.cert("inter.pem")];
        let anchors = [pki.cert("root.pem")];
        for (name, ext) in [("plain", "leaf_no_eku"), ("server", "leaf_server")] {
            let leaf = pki.issue(name, "inter", &format!("/CN=Test {name}"), ext, 30);
            assert!(!leaf.allows_code_signing(), "{name}");
            let err = verify_chain(&leaf, &chain, &anchors, now()).expect_err(name);
            assert!(
                matches!(err, ChainError::NotForCodeSigning { .. }),
                "{name}: {err}"
            );
            assert!(
                err.to_string()
                    .contains("does not allow code signing (extendedKeyUsage lacks codeSigning)"),
                "{err}"
            );
        }
        assert!(pki.cert("signer.pem").allows_code_signing());
    }

    #[test]
    fn an_intermediate_restricted_to_other_usages_is_refused() {
        let pki = TestPki::new();
        let server_ca = pki.issue("server_ca", "root", "/CN=Test TLS CA", "ca_server", 30);
        let leaf = pki.issue("tls_signed", "server_ca", "/CN=Test Signer", "leaf", 30);
        let err = verify_chain(&leaf, &[server_ca], &[pki.cert("root.pem")], now())
            .expect_err("intermediate for serverAuth only");
        match &err {
            ChainError::IssuerNotForCodeSigning { subject } => {
                assert!(subject.contains("Test TLS CA"), "{err}");
            }
            other => panic!("expected IssuerNotForCodeSigning, got {other}"),
        }
    }

    #[test]
    fn an_expired_or_not_yet_valid_certificate_is_refused() {
        let pki = TestPki::new();
        let chain = [pki.cert("inter.pem")];
        let anchors = [pki.cert("root.pem")];
        // A signer valid for one day under CAs valid for 30: two days later only it expired.
        let short = pki.issue("short", "inter", "/CN=Test Short Signer", "leaf", 1);
        verify_chain(&short, &chain, &anchors, now()).expect("valid today");
        let err = verify_chain(&short, &chain, &anchors, now() + 2 * DAY).expect_err("expired");
        match &err {
            ChainError::NotValidNow { subject, .. } => {
                assert!(subject.contains("Short Signer"), "{err}");
            }
            other => panic!("expected NotValidNow, got {other}"),
        }
        // Before the certificates were made.
        let err =
            verify_chain(&short, &chain, &anchors, now() - 2 * DAY).expect_err("not yet valid");
        assert!(matches!(err, ChainError::NotValidNow { .. }), "{err}");
    }

    #[test]
    fn an_expired_ca_file_is_refused() {
        // webpki does not look at a trust anchor's validity; verify_chain does.
        let pki = TestPki::new();
        let root = pki.self_signed_ca("short_root", "/CN=Test Short Root CA", 1);
        let inter = pki.issue("short_inter", "short_root", "/CN=Test Long CA", "ca", 30);
        let leaf = pki.issue("long", "short_inter", "/CN=Test Long Signer", "leaf", 30);
        let chain = [inter];
        let anchors = [root];
        verify_chain(&leaf, &chain, &anchors, now()).expect("valid today");
        let err = verify_chain(&leaf, &chain, &anchors, now() + 2 * DAY).expect_err("expired root");
        match &err {
            ChainError::NotValidNow { subject, .. } => {
                assert!(subject.contains("Short Root"), "{err}");
            }
            other => panic!("expected NotValidNow, got {other}"),
        }
    }

    #[test]
    fn a_non_ca_issuer_or_a_ca_signer_is_refused() {
        let pki = TestPki::new();
        let leaf = pki.cert("signer.pem");
        // A certificate issued by the signer: the signer is on the path as an issuer but is no
        // CA.
        let rogue = pki.issue("rogue", "signer", "/CN=Rogue", "leaf", 30);
        let err = verify_chain(
            &rogue,
            &[leaf.clone(), pki.cert("inter.pem")],
            &[pki.cert("root.pem")],
            now(),
        )
        .expect_err("leaf cannot issue");
        match err {
            ChainError::NotCa { subject } => assert!(subject.contains("Signer"), "{subject}"),
            other => panic!("expected NotCa, got {other}"),
        }
        // A CA certificate, even one that lists codeSigning, does not sign packages itself.
        let ca_signer = pki.issue("ca_signer", "inter", "/CN=Test CA Signer", "ca_code", 30);
        let err = verify_chain(
            &ca_signer,
            &[pki.cert("inter.pem")],
            &[pki.cert("root.pem")],
            now(),
        )
        .expect_err("ca as signer");
        assert!(matches!(err, ChainError::SignerIsCa { .. }), "{err}");
        // The CA file must hold a CA: a leaf given as the anchor of a certificate it issued is
        // refused.
        let err = verify_chain(&rogue, &[], &[leaf], now()).expect_err("leaf as anchor");
        assert!(matches!(err, ChainError::NotCa { .. }), "{err}");
    }

    #[test]
    fn pem_bundle_reads_every_certificate_and_rejects_empty_files() {
        let pki = TestPki::new();
        let mut bundle = pki.read("inter.pem");
        bundle.extend(pki.read("root.pem"));
        let certs = Certificate::from_pem_bundle(&bundle, "bundle").expect("bundle");
        assert_eq!(certs.len(), 2);
        assert!(certs.iter().all(Certificate::is_ca));
        assert!(!pki.cert("signer.pem").is_ca());
        let err = Certificate::from_pem_bundle(b"not pem", "junk").expect_err("empty");
        assert!(err.to_string().contains("junk"), "{err}");
    }
}
