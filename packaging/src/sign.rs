//! Signs a flat package the way `productsign` and `rcodesign` do.
//!
//! The unsigned archive is rewritten with two signature slots declared in its TOC, ahead of the
//! file data (so every file's heap offset moves by the two slot sizes):
//!
//! 1. `<signature style="RSA">` at heap offset 20: RSASSA-PKCS1-v1_5 with SHA-256 over the
//!    20-byte TOC checksum, as rcodesign/apple-xar write it. (Classic xar/productsign signs a
//!    SHA-1 DigestInfo of the checksum instead; ring cannot make SHA-1 signatures, and macOS
//!    accepts rcodesign-signed packages in production. The verifier accepts both forms.)
//! 2. `<x-signature style="CMS">` right after it: a detached CMS SignedData whose
//!    messageDigest is SHA-256 of the TOC checksum ([`crate::cms`]).
//!
//! Both elements carry the certificate chain (signer first, then `--chain` in file order) in
//! `KeyInfo/X509Data`. Since the signatures cannot sign a TOC that contains them, their sizes are
//! fixed first (the RSA modulus length; the CMS length of a trial signature, which does not depend
//! on the content), then the TOC and its checksum are computed, then the slots are filled.
//! The input's TOC checksum and file checksums are checked first: a damaged package is never
//! signed. Signing is deterministic for a given key, certificates, input and signing time.

use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::cms::{self, CmsError};
use crate::x509::{Certificate, X509Error};
use crate::xar::{self, SignatureSlot, SignatureStyle, XarArchive, XarError};

/// A package that cannot be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key file holds no usable RSA private key.
    #[error(
        "read rsa private key from {what}: {reason} (expected PEM PKCS#8 \"PRIVATE KEY\" or PKCS#1 \"RSA PRIVATE KEY\", 2048 bits or more)"
    )]
    Key {
        /// Which file.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The key does not belong to the signing certificate.
    #[error("signing key does not match the public key of certificate {subject}")]
    KeyMismatch {
        /// Subject of the certificate.
        subject: String,
    },
    /// A certificate could not be read.
    #[error(transparent)]
    Certificate(#[from] X509Error),
    /// RSA signing failed.
    #[error("rsa signing failed")]
    Rsa,
    /// The input is not a package this tool can re-sign, or the output could not be laid out.
    #[error("sign package")]
    Archive(#[from] XarError),
    /// The input package is damaged (checksums do not match its contents).
    #[error("sign package: the input package is damaged; rebuild it")]
    Damaged(#[source] Box<crate::verify::VerifyError>),
    /// The input has no creation time to preserve.
    #[error("sign package: the table of contents has no <creation-time>")]
    NoCreationTime,
    /// The CMS signature could not be made.
    #[error("sign package: cms signature")]
    Cms(#[from] CmsError),
}

/// An RSA private key usable for PKCS#1 v1.5 SHA-256 signatures. Its `Debug` shows nothing.
pub struct RsaSigningKey {
    key: RsaKeyPair,
}

impl std::fmt::Debug for RsaSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaSigningKey(...)")
    }
}

impl RsaSigningKey {
    /// Reads a PEM RSA private key (PKCS#8 or PKCS#1); `what` names the file in errors.
    pub fn from_pem(pem: &[u8], what: &str) -> Result<Self, SignError> {
        let key_err = |reason: String| SignError::Key {
            what: what.to_owned(),
            reason,
        };
        // PrivateKeyDer zeroizes its buffer when dropped.
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| key_err(e.to_string()))?;
        let key = match &der {
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => return Err(key_err("not an RSA key".to_owned())),
        }
        .map_err(|e| key_err(e.to_string()))?;
        Ok(Self { key })
    }

    /// The public key as PKCS#1 `RSAPublicKey` DER.
    pub fn public_key_der(&self) -> &[u8] {
        self.key.public().as_ref()
    }

    /// Length of a signature (the modulus length) in bytes.
    pub fn signature_len(&self) -> usize {
        self.key.public().modulus_len()
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `message`.
    pub fn sign_pkcs1_sha256(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let mut signature = vec![0u8; self.signature_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut signature,
            )
            .map_err(|_| SignError::Rsa)?;
        Ok(signature)
    }
}

/// The signer: key, certificate and the chain embedded after it.
#[derive(Debug)]
pub struct SigningIdentity {
    key: RsaSigningKey,
    certificate: Certificate,
    chain: Vec<Certificate>,
}

impl SigningIdentity {
    /// Builds an identity from PEM files' contents; fails if the key is not the certificate's.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], chain_pem: &[u8]) -> Result<Self, SignError> {
        let certificate = Certificate::from_pem_bundle(cert_pem, "signing certificate")?.remove(0);
        let chain = Certificate::from_pem_bundle(chain_pem, "certificate chain")?;
        let key = RsaSigningKey::from_pem(key_pem, "signing key")?;
        Self::new(key, certificate, chain)
    }

    /// Builds an identity; fails if `key` is not the key of `certificate`.
    pub fn new(
        key: RsaSigningKey,
        certificate: Certificate,
        chain: Vec<Certificate>,
    ) -> Result<Self, SignError> {
        if certificate.rsa_public_key()? != key.public_key_der() {
            return Err(SignError::KeyMismatch {
                subject: certificate.subject(),
            });
        }
        Ok(Self {
            key,
            certificate,
            chain,
        })
    }

    /// The signing certificate.
    pub fn certificate(&self) -> &Certificate {
        &self.certificate
    }

    fn certificates_der(&self) -> Vec<Vec<u8>> {
        std::iter::once(&self.certificate)
            .chain(self.chain.iter().filter(|c| **c != self.certificate))
            .map(|c| c.der().to_vec())
            .collect()
    }
}

/// Signs the flat package `pkg` (signed or not) with `identity`; `signing_time` is the CMS
/// signingTime in unix seconds. Returns the signed package.
pub fn sign_package(
    pkg: &[u8],
    identity: &SigningIdentity,
    signing_time: u64,
) -> Result<Vec<u8>, SignError> {
    let archive = XarArchive::parse(pkg)?;
    crate::verify::check_integrity(&archive).map_err(|e| SignError::Damaged(Box::new(e)))?;
    let files = archive.to_files()?;
    let creation_time = archive
        .creation_time
        .clone()
        .ok_or(SignError::NoCreationTime)?;
    let chain: Vec<Certificate> = identity
        .chain
        .iter()
        .filter(|c| **c != identity.certificate)
        .cloned()
        .collect();
    let trial = cms::sign_detached(
        &[0u8; xar::SHA1_LEN],
        &identity.certificate,
        &chain,
        &identity.key,
        signing_time,
    )?;
    let certificates = identity.certificates_der();
    let slots = [
        SignatureSlot {
            style: SignatureStyle::Rsa,
            size: identity.key.signature_len(),
            certificates: certificates.clone(),
        },
        SignatureSlot {
            style: SignatureStyle::Cms,
            size: trial.len(),
            certificates,
        },
    ];
    let mut sealed = xar::layout(&files, &creation_time, &slots)?;
    let checksum = *sealed.checksum();
    let rsa = identity.key.sign_pkcs1_sha256(&checksum)?;
    let cms = cms::sign_detached(
        &checksum,
        &identity.certificate,
        &chain,
        &identity.key,
        signing_time,
    )?;
    sealed.fill_slot(0, &rsa)?;
    sealed.fill_slot(1, &cms)?;
    Ok(sealed.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::tests::TestPki;

    #[test]
    fn key_must_match_the_certificate() {
        let pki = TestPki::new();
        let err = SigningIdentity::from_pem(
            &pki.read("signer.pem"),
            &pki.read("inter.key"),
            &pki.read("inter.pem"),
        )
        .expect_err("mismatched key");
        assert!(matches!(err, SignError::KeyMismatch { .. }), "{err}");
        SigningIdentity::from_pem(
            &pki.read("signer.pem"),
            &pki.read("signer.key"),
            &pki.read("inter.pem"),
        )
        .expect("matching key");
    }

    #[test]
    fn pkcs1_and_pkcs8_keys_load_and_debug_hides_them() {
        let pki = TestPki::new();
        // openssl genrsa (OpenSSL 3) writes PKCS#8; convert to PKCS#1 as well.
        let out = std::process::Command::new("openssl")
            .args([
                "rsa",
                "-in",
                "signer.key",
                "-traditional",
                "-out",
                "signer.pkcs1.key",
            ])
            .current_dir(pki.dir.path())
            .output()
            .expect("openssl must be installed to run this test");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pkcs1 = pki.read("signer.pkcs1.key");
        assert!(String::from_utf8_lossy(&pkcs1).contains("BEGIN RSA PRIVATE KEY"));
        let a = RsaSigningKey::from_pem(&pki.read("signer.key"), "pkcs8").expect("pkcs8");
        let b = RsaSigningKey::from_pem(&pkcs1, "pkcs1").expect("pkcs1");
        assert_eq!(a.public_key_der(), b.public_key_der());
        assert_eq!(a.signature_len(), 256);
        assert_eq!(format!("{a:?}"), "RsaSigningKey(...)");
        let err = RsaSigningKey::from_pem(b"junk", "junk.key").expect_err("junk");
        assert!(err.to_string().contains("junk.key"), "{err}");
    }

    #[test]
    fn refuses_to_sign_a_damaged_package() {
        let pki = TestPki::new();
        let identity = SigningIdentity::from_pem(
            &pki.read("signer.pem"),
            &pki.read("signer.key"),
            &pki.read("inter.pem"),
        )
        .expect("identity");
        let mut pkg = crate::build::build_package(&crate::build::tests::inputs()).expect("build");
        let last = pkg.len() - 1;
        pkg[last] ^= 1;
        let err = sign_package(&pkg, &identity, 1_760_000_000).expect_err("damaged");
        assert!(matches!(err, SignError::Damaged(_)), "{err}");
    }

    #[test]
    fn rsa_signature_verifies_with_openssl_dgst() {
        let pki = TestPki::new();
        let key = RsaSigningKey::from_pem(&pki.read("signer.key"), "signer.key").expect("key");
        let message = [9u8; 20];
        let d = pki.dir.path();
        std::fs::write(d.join("msg.bin"), message).expect("msg");
        std::fs::write(
            d.join("sig.bin"),
            key.sign_pkcs1_sha256(&message).expect("sign"),
        )
        .expect("sig");
        let pubkey = std::process::Command::new("openssl")
            .args([
                "x509",
                "-in",
                "signer.pem",
                "-pubkey",
                "-noout",
                "-out",
                "pub.pem",
            ])
            .current_dir(d)
            .output()
            .expect("openssl");
        assert!(pubkey.status.success());
        let out = std::process::Command::new("openssl")
            .args([
                "dgst",
                "-sha256",
                "-verify",
                "pub.pem",
                "-signature",
                "sig.bin",
                "msg.bin",
            ])
            .current_dir(d)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
