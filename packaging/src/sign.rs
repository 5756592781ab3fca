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

use crate::cms::{self, CmsError};
use crate::integrity::{self, IntegrityError};
use crate::key::{KeyError, RsaSigningKey};
use crate::x509::{Certificate, X509Error};
use crate::xar::{self, SignatureSlot, SignatureStyle, XarArchive, XarError};

/// A package that cannot be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key cannot be read, or signing with it failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The key does not belong to the signing certificate.
    #[error("signing key does not match the public key of certificate {subject}")]
    KeyMismatch {
        /// Subject of the certificate.
        subject: String,
    },
    /// A certificate could not be read.
    #[error(transparent)]
    Certificate(#[from] X509Error),
    /// The input is not a package this tool can re-sign, or the output could not be laid out.
    #[error("sign package")]
    Archive(#[from] XarError),
    /// The input package is damaged (checksums do not match its contents).
    #[error("sign package: the input package is damaged; rebuild it")]
    Damaged(#[source] IntegrityError),
    /// The input has no creation time to preserve.
    #[error("sign package: the table of contents has no <creation-time>")]
    NoCreationTime,
    /// The CMS signature could not be made.
    #[error("sign package: cms signature")]
    Cms(#[from] CmsError),
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
    integrity::check_archive(&archive).map_err(SignError::Damaged)?;
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
}
