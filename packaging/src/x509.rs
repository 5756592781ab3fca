//! X.509 certificates for package signing: parsing (RustCrypto `x509-cert`), signature checks and
//! chain building (`ring`).
//!
//! Chain rule used by [`verify_chain`]: starting at the leaf, each certificate must be issued by
//! the next one (issuer name equals the next subject, and the next certificate's key verifies the
//! signature), every issuer must be a CA (`basicConstraints cA=TRUE`), every certificate on the
//! path (anchor included) must be valid at the verification time, and the path must end at one
//! of the given trust anchors. Intermediates come from the package; anchors only from the caller.
//! Key usage and Apple's Developer ID extensions are not interpreted: trust is pinned to the CA
//! the caller passes.

use const_oid::ObjectIdentifier;
use der::{Decode, Encode};
use ring::signature;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

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
/// SHA-1 digest algorithm.
pub const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
/// SHA-256 digest algorithm.
pub const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// SHA-384 digest algorithm.
pub const ID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
/// SHA-512 digest algorithm.
pub const ID_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.3");

/// Longest chain accepted, leaf and anchor included.
const MAX_CHAIN_LEN: usize = 8;

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
    /// Re-encoding a parsed structure failed.
    #[error("encode {what}")]
    Encode {
        /// What was encoded.
        what: &'static str,
        /// Encoder error.
        #[source]
        source: der::Error,
    },
}

/// A chain that does not lead to a trust anchor.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
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
    /// The path is longer than the limit.
    #[error("certificate chain is longer than {MAX_CHAIN_LEN}")]
    TooLong,
    /// A certificate could not be checked.
    #[error(transparent)]
    Certificate(#[from] X509Error),
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

    /// Checks that `issuer`'s key signed this certificate.
    pub fn verify_issued_by(&self, issuer: &Certificate) -> Result<(), X509Error> {
        let tbs = self
            .parsed
            .tbs_certificate
            .to_der()
            .map_err(|source| X509Error::Encode {
                what: "tbsCertificate",
                source,
            })?;
        let signature_bytes =
            self.parsed
                .signature
                .as_bytes()
                .ok_or_else(|| X509Error::BadSignature {
                    subject: issuer.subject(),
                    what: format!("certificate {}", self.subject()),
                })?;
        let algorithm = issuer.verify_algorithm(self.parsed.signature_algorithm.oid, None)?;
        issuer.verify(
            algorithm,
            &tbs,
            signature_bytes,
            &format!("certificate {}", self.subject()),
        )
    }

    fn check_valid_at(&self, now: u64) -> Result<(), ChainError> {
        let (not_before, not_after) = self.validity();
        if now < not_before || now > not_after {
            return Err(ChainError::NotValidNow {
                subject: self.subject(),
                now,
                not_before,
                not_after,
            });
        }
        Ok(())
    }
}

/// Builds and checks the path from `leaf` through `intermediates` to one of `anchors` at time
/// `now` (unix seconds). Returns the path, leaf first, anchor last.
pub fn verify_chain(
    leaf: &Certificate,
    intermediates: &[Certificate],
    anchors: &[Certificate],
    now: u64,
) -> Result<Vec<Certificate>, ChainError> {
    let mut path = vec![leaf.clone()];
    leaf.check_valid_at(now)?;
    loop {
        if path.len() >= MAX_CHAIN_LEN {
            return Err(ChainError::TooLong);
        }
        let current = path.last().cloned().ok_or(ChainError::TooLong)?;
        let issued_by = |candidate: &&Certificate| {
            candidate.parsed.tbs_certificate.subject == current.parsed.tbs_certificate.issuer
                && current.verify_issued_by(candidate).is_ok()
        };
        if let Some(anchor) = anchors.iter().find(issued_by) {
            if !anchor.is_ca() {
                return Err(ChainError::NotCa {
                    subject: anchor.subject(),
                });
            }
            anchor.check_valid_at(now)?;
            path.push(anchor.clone());
            return Ok(path);
        }
        let next = intermediates
            .iter()
            .filter(|c| !path.contains(c))
            .find(issued_by)
            .ok_or_else(|| ChainError::NoIssuer {
                subject: current.subject(),
                issuer: current.issuer(),
            })?;
        if !next.is_ca() {
            return Err(ChainError::NotCa {
                subject: next.subject(),
            });
        }
        next.check_valid_at(now)?;
        path.push(next.clone());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A throwaway RSA-2048 PKI made with the `openssl` CLI: root CA, intermediate CA, signer.
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

    const EXTENSIONS: &str = "\
[ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
subjectKeyIdentifier = hash\n\
[leaf]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
extendedKeyUsage = codeSigning\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n";

    impl TestPki {
        /// Root "Test Root CA", intermediate "Test Installer CA", leaf "Test Installer Signer",
        /// all valid for 30 days from now.
        pub(crate) fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let d = dir.path();
            std::fs::write(d.join("ext.cnf"), EXTENSIONS).expect("ext");
            openssl(d, &["genrsa", "-out", "root.key", "2048"]);
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-key",
                    "root.key",
                    "-sha256",
                    "-days",
                    "30",
                    "-subj",
                    "/O=JexCloud Test/CN=Test Root CA",
                    "-config",
                    "ext.cnf",
                    "-extensions",
                    "ca",
                    "-out",
                    "root.pem",
                ],
            );
            for (name, issuer, subject, ext) in [
                (
                    "inter",
                    "root",
                    "/O=JexCloud Test/CN=Test Installer CA",
                    "ca",
                ),
                (
                    "signer",
                    "inter",
                    "/O=JexCloud Test/CN=Test Installer Signer",
                    "leaf",
                ),
            ] {
                openssl(d, &["genrsa", "-out", &format!("{name}.key"), "2048"]);
                openssl(
                    d,
                    &[
                        "req",
                        "-new",
                        "-key",
                        &format!("{name}.key"),
                        "-subj",
                        subject,
                        "-out",
                        &format!("{name}.csr"),
                    ],
                );
                openssl(
                    d,
                    &[
                        "x509",
                        "-req",
                        "-in",
                        &format!("{name}.csr"),
                        "-CA",
                        &format!("{issuer}.pem"),
                        "-CAkey",
                        &format!("{issuer}.key"),
                        "-set_serial",
                        if name == "inter" { "2" } else { "3" },
                        "-sha256",
                        "-days",
                        "30",
                        "-extfile",
                        "ext.cnf",
                        "-extensions",
                        ext,
                        "-out",
                        &format!("{name}.pem"),
                    ],
                );
            }
            Self { dir }
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

        /// A certificate issued by the (non-CA) leaf: `rogue.pem`.
        pub(crate) fn issue_from_leaf(&self) -> Certificate {
            let d = self.dir.path();
            openssl(d, &["genrsa", "-out", "rogue.key", "2048"]);
            openssl(
                d,
                &[
                    "req",
                    "-new",
                    "-key",
                    "rogue.key",
                    "-subj",
                    "/CN=Rogue",
                    "-out",
                    "rogue.csr",
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    "rogue.csr",
                    "-CA",
                    "signer.pem",
                    "-CAkey",
                    "signer.key",
                    "-set_serial",
                    "9",
                    "-sha256",
                    "-days",
                    "30",
                    "-extfile",
                    "ext.cnf",
                    "-extensions",
                    "leaf",
                    "-out",
                    "rogue.pem",
                ],
            );
            self.cert("rogue.pem")
        }

        /// A second, unrelated root CA.
        pub(crate) fn other_root(&self) -> PathBuf {
            let d = self.dir.path();
            openssl(d, &["genrsa", "-out", "other.key", "2048"]);
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-key",
                    "other.key",
                    "-sha256",
                    "-days",
                    "30",
                    "-subj",
                    "/O=JexCloud Test/CN=Test Root CA",
                    "-config",
                    "ext.cnf",
                    "-extensions",
                    "ca",
                    "-out",
                    "other.pem",
                ],
            );
            d.join("other.pem")
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    #[test]
    fn chain_through_an_intermediate_reaches_the_root() {
        let pki = TestPki::new();
        let leaf = pki.cert("signer.pem");
        let path = verify_chain(
            &leaf,
            &[pki.cert("inter.pem")],
            &[pki.cert("root.pem")],
            now(),
        )
        .expect("chain verifies");
        let subjects: Vec<String> = path.iter().map(Certificate::subject).collect();
        assert_eq!(
            subjects,
            [
                "CN=Test Installer Signer,O=JexCloud Test",
                "CN=Test Installer CA,O=JexCloud Test",
                "CN=Test Root CA,O=JexCloud Test",
            ]
        );
    }

    #[test]
    fn chain_fails_without_the_intermediate_or_with_another_root() {
        let pki = TestPki::new();
        let leaf = pki.cert("signer.pem");
        let err = verify_chain(&leaf, &[], &[pki.cert("root.pem")], now()).expect_err("no inter");
        assert!(matches!(err, ChainError::NoIssuer { .. }), "{err}");
        let other =
            Certificate::from_pem_bundle(&std::fs::read(pki.other_root()).expect("read"), "other")
                .expect("pem")
                .remove(0);
        // Same subject name as the real root, different key: the signature check rejects it.
        let err =
            verify_chain(&leaf, &[pki.cert("inter.pem")], &[other], now()).expect_err("wrong root");
        assert!(err.to_string().contains("Test Installer CA"), "{err}");
    }

    #[test]
    fn chain_fails_outside_the_validity_period_and_for_a_non_ca_issuer() {
        let pki = TestPki::new();
        let leaf = pki.cert("signer.pem");
        let later = now() + 365 * 86_400;
        let err = verify_chain(
            &leaf,
            &[pki.cert("inter.pem")],
            &[pki.cert("root.pem")],
            later,
        )
        .expect_err("expired");
        assert!(matches!(err, ChainError::NotValidNow { .. }), "{err}");
        // A certificate issued by the leaf: the leaf is on the path as an issuer but is no CA.
        let rogue = pki.issue_from_leaf();
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
