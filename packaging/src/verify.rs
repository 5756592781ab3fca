//! Verifies a signed flat package end to end: header, TOC checksum, heap layout, both
//! signatures, the certificate chain to a caller-given CA, and every file's checksums.
//!
//! Order of checks, each failure naming what failed ([`VerifyError`]):
//!
//! 1. the XAR header and TOC parse; the TOC checksum is sha1 (header algorithm 1, 20 bytes)
//!    ([`crate::integrity::check_toc`]);
//! 2. sha1 of the compressed TOC equals the stored checksum;
//! 3. the declared heap regions (checksum, signatures, file data) tile the heap exactly: no gap,
//!    no overlap, nothing after the last region, so no byte of the file is outside the chain of
//!    trust;
//! 4. the CMS `<x-signature>` verifies over the checksum ([`crate::cms::verify_detached`]);
//! 5. the RSA `<signature>` verifies with the same signer certificate, either as rcodesign writes
//!    it (PKCS#1 v1.5 SHA-256 over the checksum) or as classic xar/productsign does (PKCS#1 v1.5
//!    with a SHA-1 DigestInfo of the checksum, i.e. SHA-1 over the compressed TOC);
//! 6. the signer allows code signing (extendedKeyUsage codeSigning) and chains to one of the
//!    given CA certificates ([`crate::x509::verify_chain`], with `rustls-webpki`), and every
//!    certificate embedded in the package is on that path;
//! 7. every file's archived bytes match `archived-checksum`, and its decoded bytes match
//!    `extracted-checksum` and `size` ([`crate::integrity::check_files`]).

use ring::signature::{self, UnparsedPublicKey};

use crate::cms::{self, CmsError};
use crate::integrity::{self, IntegrityError};
use crate::x509::{self, Certificate, ChainError, X509Error};
use crate::xar::{SignatureStyle, XarArchive, XarError};

/// How the RSA `<signature>` was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaSignatureForm {
    /// PKCS#1 v1.5 SHA-256 over the 20-byte checksum (rcodesign, this tool).
    Sha256OverChecksum,
    /// PKCS#1 v1.5 with a SHA-1 DigestInfo of the checksum (classic xar, productsign).
    Sha1DigestInfo,
}

/// What a successful verification established.
#[derive(Debug, Clone)]
pub struct VerifiedPackage {
    /// Subjects on the trusted path, signer first, CA last.
    pub chain: Vec<String>,
    /// The CMS signingTime, unix seconds.
    pub signing_time: Option<u64>,
    /// Form of the RSA signature.
    pub rsa_form: RsaSignatureForm,
    /// Every file checked, with its extracted size.
    pub files: Vec<(String, u64)>,
    /// `identifier` and `version` of the component's PackageInfo, when present.
    pub package: Option<(String, String)>,
}

/// Why a package failed verification.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file is not a readable XAR archive.
    #[error("package is not a readable xar archive")]
    Archive(#[from] XarError),
    /// The TOC checksum, the heap layout or a file's checksums do not match.
    #[error(transparent)]
    Integrity(#[from] IntegrityError),
    /// A signature element is missing.
    #[error("package is not signed: no {0} in the table of contents")]
    NotSigned(&'static str),
    /// The CMS signature is invalid.
    #[error("cms signature invalid")]
    Cms(#[source] CmsError),
    /// The RSA signature's certificate is not the CMS signer.
    #[error("rsa signature: its first certificate is not the cms signer")]
    SignerMismatch,
    /// The RSA signature does not verify.
    #[error("rsa signature invalid: it does not verify over the toc checksum with the signer key")]
    RsaSignatureInvalid,
    /// A certificate embedded in the TOC cannot be read.
    #[error("certificate in the table of contents")]
    Certificate(#[source] X509Error),
    /// The signer does not chain to the given CA.
    #[error("certificate chain not trusted")]
    Chain(#[source] ChainError),
    /// A certificate embedded in the package is not on the trusted path.
    #[error("embedded certificate {0} is not on the verified chain (modified or foreign)")]
    ForeignCertificate(String),
}

fn parse_certs(ders: &[Vec<u8>], what: &str) -> Result<Vec<Certificate>, VerifyError> {
    ders.iter()
        .enumerate()
        .map(|(i, der)| {
            Certificate::from_der(der, &format!("{what} #{}", i + 1))
                .map_err(VerifyError::Certificate)
        })
        .collect()
}

fn package_identity(archive: &XarArchive<'_>) -> Option<(String, String)> {
    let entry = archive
        .entries
        .iter()
        .find(|e| e.path.ends_with("/PackageInfo") && e.data.is_some())?;
    let data = archive.archived_data(entry).ok()?;
    let text = std::str::from_utf8(data).ok()?;
    let doc = roxmltree::Document::parse(text).ok()?;
    let root = doc.root_element();
    Some((
        root.attribute("identifier")?.to_owned(),
        root.attribute("version")?.to_owned(),
    ))
}

/// Verifies the signed package `pkg` against the CA certificates `anchors` at time `now` (unix
/// seconds). See the module docs for the checks.
pub fn verify_package(
    pkg: &[u8],
    anchors: &[Certificate],
    now: u64,
) -> Result<VerifiedPackage, VerifyError> {
    let archive = XarArchive::parse(pkg)?;
    let checksum = integrity::check_toc(&archive)?;
    let cms_sig = archive
        .signature(SignatureStyle::Cms)
        .ok_or(VerifyError::NotSigned("<x-signature style=\"CMS\">"))?;
    let rsa_sig = archive
        .signature(SignatureStyle::Rsa)
        .ok_or(VerifyError::NotSigned("<signature style=\"RSA\">"))?;
    let cms_bytes = archive.heap(cms_sig.offset, cms_sig.size, "cms signature")?;
    let verified = cms::verify_detached(cms_bytes, checksum).map_err(VerifyError::Cms)?;
    let signer = verified.signer.clone();

    let rsa_certs = parse_certs(&rsa_sig.certificates, "rsa signature certificate")?;
    if rsa_certs.first() != Some(&signer) {
        return Err(VerifyError::SignerMismatch);
    }
    let rsa_bytes = archive.heap(rsa_sig.offset, rsa_sig.size, "rsa signature")?;
    let rsa_key = signer.rsa_public_key().map_err(VerifyError::Certificate)?;
    let rsa_form = if UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, rsa_key)
        .verify(checksum, rsa_bytes)
        .is_ok()
    {
        RsaSignatureForm::Sha256OverChecksum
    } else if UnparsedPublicKey::new(
        &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        rsa_key,
    )
    .verify(archive.compressed_toc(), rsa_bytes)
    .is_ok()
    {
        RsaSignatureForm::Sha1DigestInfo
    } else {
        return Err(VerifyError::RsaSignatureInvalid);
    };

    let cms_toc_certs = parse_certs(&cms_sig.certificates, "cms signature certificate")?;
    let mut embedded: Vec<Certificate> = verified.certificates.clone();
    for cert in rsa_certs.into_iter().chain(cms_toc_certs) {
        if !embedded.contains(&cert) {
            embedded.push(cert);
        }
    }
    let path = x509::verify_chain(&signer, &embedded, anchors, now).map_err(VerifyError::Chain)?;
    if let Some(foreign) = embedded.iter().find(|c| !path.contains(c)) {
        return Err(VerifyError::ForeignCertificate(foreign.subject()));
    }

    let files = integrity::check_files(&archive)?;
    Ok(VerifiedPackage {
        chain: path.iter().map(Certificate::subject).collect(),
        signing_time: verified.signing_time,
        rsa_form,
        files,
        package: package_identity(&archive),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{self, tests::inputs};
    use crate::sign::{SigningIdentity, sign_package};
    use crate::x509::tests::TestPki;
    use crate::xar::{self, XarFile};

    const SIGNING_TIME: u64 = 1_760_000_000;

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

    struct Fixture {
        pki: TestPki,
        signed: Vec<u8>,
    }

    impl Fixture {
        fn new() -> Self {
            let pki = TestPki::new();
            let identity = SigningIdentity::from_pem(
                &pki.read("signer.pem"),
                &pki.read("signer.key"),
                &pki.read("inter.pem"),
            )
            .expect("identity");
            let unsigned = build::build_package(&inputs()).expect("build");
            let signed = sign_package(&unsigned, &identity, SIGNING_TIME).expect("sign");
            Self { pki, signed }
        }

        fn anchors(&self) -> Vec<Certificate> {
            vec![self.pki.cert("root.pem")]
        }

        fn verify(&self, bytes: &[u8]) -> Result<VerifiedPackage, VerifyError> {
            verify_package(bytes, &self.anchors(), now())
        }
    }

    #[test]
    fn signed_package_verifies_with_the_root_ca() {
        let f = Fixture::new();
        let report = f.verify(&f.signed).expect("verifies");
        assert_eq!(report.chain.len(), 3);
        assert!(report.chain[0].contains("Test Installer Signer"));
        assert!(report.chain[2].contains("Test Root CA"));
        assert_eq!(report.rsa_form, RsaSignatureForm::Sha256OverChecksum);
        assert_eq!(report.signing_time, Some(SIGNING_TIME));
        assert_eq!(
            report.package,
            Some(("com.jexcloud.agent".to_owned(), "1.2.3".to_owned()))
        );
        let names: Vec<&str> = report.files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            names,
            [
                "Distribution",
                "jex-agent.pkg/PackageInfo",
                "jex-agent.pkg/Bom",
                "jex-agent.pkg/Payload",
                "jex-agent.pkg/Scripts"
            ]
        );
    }

    #[test]
    fn signing_is_deterministic_and_keeps_the_files() {
        let f = Fixture::new();
        let identity = SigningIdentity::from_pem(
            &f.pki.read("signer.pem"),
            &f.pki.read("signer.key"),
            &f.pki.read("inter.pem"),
        )
        .expect("identity");
        let unsigned = build::build_package(&inputs()).expect("build");
        assert_eq!(
            sign_package(&unsigned, &identity, SIGNING_TIME).expect("again"),
            f.signed
        );
        // Re-signing a signed package replaces its signatures.
        assert_eq!(
            sign_package(&f.signed, &identity, SIGNING_TIME).expect("re-sign"),
            f.signed
        );
        let files = |bytes: &[u8]| {
            XarArchive::parse(bytes)
                .expect("parse")
                .to_files()
                .expect("files")
        };
        assert_eq!(files(&unsigned), files(&f.signed));
    }

    #[test]
    fn unsigned_package_is_rejected_as_not_signed() {
        let f = Fixture::new();
        let unsigned = build::build_package(&inputs()).expect("build");
        let err = f.verify(&unsigned).expect_err("unsigned");
        assert!(matches!(err, VerifyError::NotSigned(_)), "{err}");
    }

    #[test]
    fn another_ca_or_an_expired_chain_is_rejected() {
        let f = Fixture::new();
        let other = Certificate::from_pem_bundle(
            &std::fs::read(f.pki.other_root()).expect("read"),
            "other",
        )
        .expect("pem");
        let err = verify_package(&f.signed, &other, now()).expect_err("other ca");
        assert!(matches!(err, VerifyError::Chain(_)), "{err}");
        let err =
            verify_package(&f.signed, &f.anchors(), now() + 400 * 86_400).expect_err("expired");
        assert!(
            matches!(err, VerifyError::Chain(ChainError::NotValidNow { .. })),
            "{err}"
        );
    }

    #[test]
    fn a_package_signed_without_the_code_signing_usage_is_rejected() {
        let f = Fixture::new();
        f.pki
            .issue("plain", "inter", "/CN=Test Plain Signer", "leaf_no_eku", 30);
        let identity = SigningIdentity::from_pem(
            &f.pki.read("plain.pem"),
            &f.pki.read("plain.key"),
            &f.pki.read("inter.pem"),
        )
        .expect("identity");
        let unsigned = build::build_package(&inputs()).expect("build");
        let signed = sign_package(&unsigned, &identity, SIGNING_TIME).expect("sign");
        let err = f.verify(&signed).expect_err("no codeSigning");
        assert!(
            matches!(
                err,
                VerifyError::Chain(ChainError::NotForCodeSigning { .. })
            ),
            "{err}"
        );
    }

    /// Every region of the signed file, by name and byte range.
    fn regions(bytes: &[u8]) -> Vec<(String, std::ops::Range<usize>)> {
        let archive = XarArchive::parse(bytes).expect("parse");
        let heap = archive.heap_start;
        let mut out = vec![
            ("header".to_owned(), 0..xar::HEADER_SIZE),
            ("toc".to_owned(), archive.toc_range.clone()),
            ("toc checksum".to_owned(), heap..heap + 20),
        ];
        for sig in &archive.signatures {
            let start = heap + sig.offset as usize;
            out.push((
                format!("{:?} signature", sig.style),
                start..start + sig.size as usize,
            ));
        }
        for entry in &archive.entries {
            if let Some(d) = &entry.data {
                let start = heap + d.offset as usize;
                out.push((entry.path.clone(), start..start + d.length as usize));
            }
        }
        out
    }

    #[test]
    fn a_changed_byte_anywhere_is_rejected() {
        let f = Fixture::new();
        let all = regions(&f.signed);
        let covered: usize = all.iter().map(|(_, r)| r.len()).sum();
        assert_eq!(covered, f.signed.len(), "regions cover the whole file");
        for (name, range) in all {
            // Every byte of small regions; 64 evenly spread positions (ends included) of large.
            let len = range.len();
            let samples: Vec<usize> = if len <= 64 {
                range.clone().collect()
            } else {
                (0..64).map(|i| range.start + i * (len - 1) / 63).collect()
            };
            for position in samples {
                let mut changed = f.signed.clone();
                changed[position] ^= 0x20;
                let result = f.verify(&changed);
                assert!(
                    result.is_err(),
                    "byte {position} of {name} ({range:?}) changed and the package still verified"
                );
            }
        }
    }

    #[test]
    fn resealed_toc_with_old_signatures_is_rejected() {
        // An attacker changes the payload, updates the TOC checksums and keeps the signatures.
        let f = Fixture::new();
        let archive = XarArchive::parse(&f.signed).expect("parse");
        let mut files: Vec<XarFile> = archive.to_files().expect("files");
        let xar::XarKind::Directory(children) = &mut files[1].kind else {
            panic!("second entry is the component directory");
        };
        let payload = children
            .iter_mut()
            .find(|f| f.name == "Payload")
            .expect("payload");
        let xar::XarKind::File(data) = &mut payload.kind else {
            panic!("payload is a file");
        };
        data[40] ^= 0xff;
        let slots: Vec<xar::SignatureSlot> = archive
            .signatures
            .iter()
            .map(|s| xar::SignatureSlot {
                style: s.style,
                size: s.size as usize,
                certificates: s.certificates.clone(),
            })
            .collect();
        let mut sealed = xar::layout(&files, "2025-01-01T00:00:00", &slots).expect("layout");
        for (index, sig) in archive.signatures.iter().enumerate() {
            let old = archive.heap(sig.offset, sig.size, "sig").expect("sig");
            sealed.fill_slot(index, old).expect("fill");
        }
        let forged = sealed.into_bytes();
        let err = f.verify(&forged).expect_err("forged");
        assert!(
            matches!(err, VerifyError::Cms(CmsError::MessageDigestMismatch)),
            "{err}"
        );
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let f = Fixture::new();
        let mut longer = f.signed.clone();
        longer.extend_from_slice(b"extra");
        let err = f.verify(&longer).expect_err("trailing");
        assert!(
            matches!(err, VerifyError::Integrity(IntegrityError::HeapLayout(_))),
            "{err}"
        );
    }
}
