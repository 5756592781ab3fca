//! Detached CMS SignedData (RFC 5652) over the XAR TOC checksum: the `<x-signature style="CMS">`.
//!
//! Structure written (DER):
//!
//! ```text
//! ContentInfo { id-signedData, SignedData {
//!   version 1, digestAlgorithms { sha256 },
//!   encapContentInfo { id-data }            -- detached: the content is the TOC checksum
//!   certificates { signer, chain... },
//!   signerInfos { SignerInfo {
//!     version 1, sid issuerAndSerialNumber(signer), digestAlgorithm sha256,
//!     signedAttrs { contentType id-data, signingTime, messageDigest sha256(content) },
//!     signatureAlgorithm rsaEncryption (NULL), signature RSASSA-PKCS1-v1_5-SHA256(DER(signedAttrs))
//! } } } }
//! ```
//!
//! The encoding has a fixed length for a given key and certificate set (the signature length is
//! the modulus length, digests and UTCTime have fixed sizes), which lets the signer reserve the
//! heap slot before the checksum it signs exists. [`verify_detached`] accepts exactly one signer,
//! requires the input to be canonical DER (so that no byte of the structure can change without
//! detection), checks the content type, the message digest and the signature, and returns the
//! signer certificate and the embedded certificates for the chain check.

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use const_oid::ObjectIdentifier;
use der::asn1::{OctetString, SetOfVec, UtcTime};
use der::{Any, Decode, Encode};
use ring::digest;
use spki::AlgorithmIdentifierOwned;
use x509_cert::attr::Attribute;

use crate::key::{KeyError, RsaSigningKey};
use crate::x509::{self, Certificate, X509Error};

// OIDs are parsed at compile time (`new_unwrap` in a const): a typo fails the build.
const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
const ID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
const ID_MESSAGE_DIGEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
const ID_SIGNING_TIME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.5");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// A CMS signature that cannot be made or does not verify.
#[derive(Debug, thiserror::Error)]
pub enum CmsError {
    /// DER encoding failed while building the signature.
    #[error("encode cms {what}")]
    Encode {
        /// What was encoded.
        what: &'static str,
        /// Encoder error.
        #[source]
        source: der::Error,
    },
    /// The bytes are not a DER CMS ContentInfo.
    #[error("cms signature is not a der ContentInfo")]
    Decode(#[source] der::Error),
    /// The bytes decode but are not in canonical DER form.
    #[error("cms signature is not canonical der (bytes changed or not produced by a der encoder)")]
    NonCanonical,
    /// A field has a value this verifier does not accept.
    #[error("cms signature: {0}")]
    Unexpected(String),
    /// A required signed attribute is missing or malformed.
    #[error("cms signature: signed attribute {0} missing or malformed")]
    Attribute(&'static str),
    /// The messageDigest attribute does not match the content.
    #[error("cms signature: message digest does not match the toc checksum")]
    MessageDigestMismatch,
    /// The signature over the signed attributes does not verify, or the signer is unusable.
    #[error("cms signature")]
    Signature(#[source] X509Error),
    /// Signing the attributes failed.
    #[error("cms signature: sign the signed attributes")]
    Sign(#[source] KeyError),
}

fn encode_err(what: &'static str) -> impl FnOnce(der::Error) -> CmsError {
    move |source| CmsError::Encode { what, source }
}

fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute, CmsError> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value]).map_err(encode_err("attribute value"))?,
    })
}

/// Signs `content` (detached) with `key`, naming `signer` and embedding `signer` and `chain`.
/// `signing_time` is unix seconds (before 2050, encoded as UTCTime).
pub fn sign_detached(
    content: &[u8],
    signer: &Certificate,
    chain: &[Certificate],
    key: &RsaSigningKey,
    signing_time: u64,
) -> Result<Vec<u8>, CmsError> {
    let sha256 = AlgorithmIdentifierOwned {
        oid: x509::ID_SHA256,
        parameters: None,
    };
    let message_digest = digest::digest(&digest::SHA256, content);
    let time = UtcTime::from_unix_duration(std::time::Duration::from_secs(signing_time))
        .map_err(encode_err("signing time (must be 1970..2049)"))?;
    let signed_attrs = SetOfVec::try_from(vec![
        attribute(
            ID_CONTENT_TYPE,
            Any::encode_from(&ID_DATA).map_err(encode_err("content type"))?,
        )?,
        attribute(
            ID_SIGNING_TIME,
            Any::encode_from(&time).map_err(encode_err("signing time"))?,
        )?,
        attribute(
            ID_MESSAGE_DIGEST,
            Any::encode_from(
                &OctetString::new(message_digest.as_ref()).map_err(encode_err("digest"))?,
            )
            .map_err(encode_err("message digest"))?,
        )?,
    ])
    .map_err(encode_err("signed attributes"))?;
    let to_sign = signed_attrs
        .to_der()
        .map_err(encode_err("signed attributes"))?;
    let signature = key.sign_pkcs1_sha256(&to_sign).map_err(CmsError::Sign)?;

    let tbs = &signer.parsed().tbs_certificate;
    let signer_info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: tbs.issuer.clone(),
            serial_number: tbs.serial_number.clone(),
        }),
        digest_alg: sha256.clone(),
        signed_attrs: Some(signed_attrs),
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
        signature: OctetString::new(signature).map_err(encode_err("signature"))?,
        unsigned_attrs: None,
    };
    let certificates = std::iter::once(signer)
        .chain(chain.iter())
        .map(|c| CertificateChoices::Certificate(c.parsed().clone()))
        .collect::<Vec<_>>();
    let signed_data = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![sha256])
            .map_err(encode_err("digest algorithms"))?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: ID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet(
            SetOfVec::try_from(certificates).map_err(encode_err("certificates"))?,
        )),
        crls: None,
        signer_infos: SignerInfos(
            SetOfVec::try_from(vec![signer_info]).map_err(encode_err("signer infos"))?,
        ),
    };
    ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&signed_data).map_err(encode_err("signed data"))?,
    }
    .to_der()
    .map_err(encode_err("content info"))
}

/// What a verified CMS signature says.
#[derive(Debug, Clone)]
pub struct VerifiedCms {
    /// The certificate whose key made the signature.
    pub signer: Certificate,
    /// Every certificate embedded in the SignedData (signer included).
    pub certificates: Vec<Certificate>,
    /// The signingTime attribute, unix seconds, if present.
    pub signing_time: Option<u64>,
}

fn single_value<'a>(
    attrs: &'a [Attribute],
    oid: ObjectIdentifier,
    name: &'static str,
) -> Result<&'a Any, CmsError> {
    let mut matching = attrs.iter().filter(|a| a.oid == oid);
    match (matching.next(), matching.next()) {
        (Some(attr), None) if attr.values.len() == 1 => {
            attr.values.get(0).ok_or(CmsError::Attribute(name))
        }
        _ => Err(CmsError::Attribute(name)),
    }
}

fn digest_algorithm(oid: ObjectIdentifier) -> Result<&'static digest::Algorithm, CmsError> {
    match oid {
        x509::ID_SHA1 => Ok(&digest::SHA1_FOR_LEGACY_USE_ONLY),
        x509::ID_SHA256 => Ok(&digest::SHA256),
        x509::ID_SHA384 => Ok(&digest::SHA384),
        x509::ID_SHA512 => Ok(&digest::SHA512),
        other => Err(CmsError::Unexpected(format!(
            "unsupported digest algorithm {other}"
        ))),
    }
}

/// Verifies a detached CMS SignedData over `content` (see the module docs for what is checked).
pub fn verify_detached(der_bytes: &[u8], content: &[u8]) -> Result<VerifiedCms, CmsError> {
    let unexpected = |what: &str| CmsError::Unexpected(what.to_owned());
    let info = ContentInfo::from_der(der_bytes).map_err(CmsError::Decode)?;
    if info.to_der().map_err(CmsError::Decode)? != der_bytes {
        return Err(CmsError::NonCanonical);
    }
    if info.content_type != ID_SIGNED_DATA {
        return Err(CmsError::Unexpected(format!(
            "content type {} is not signedData",
            info.content_type
        )));
    }
    let signed: SignedData = info.content.decode_as().map_err(CmsError::Decode)?;
    if signed.version != CmsVersion::V1 {
        return Err(unexpected("SignedData version is not 1"));
    }
    if signed.encap_content_info.econtent_type != ID_DATA
        || signed.encap_content_info.econtent.is_some()
    {
        return Err(unexpected("content is not detached id-data"));
    }
    if signed.crls.is_some() {
        return Err(unexpected("unexpected revocation information"));
    }
    let mut certificates = Vec::new();
    for (index, choice) in signed
        .certificates
        .iter()
        .flat_map(|s| s.0.iter())
        .enumerate()
    {
        let CertificateChoices::Certificate(cert) = choice else {
            return Err(unexpected(
                "embedded certificate is not an X.509 certificate",
            ));
        };
        let der = cert.to_der().map_err(CmsError::Decode)?;
        certificates.push(
            Certificate::from_der(&der, &format!("cms certificate #{}", index + 1))
                .map_err(CmsError::Signature)?,
        );
    }
    let signer_info = match signed.signer_infos.0.as_slice() {
        [one] => one,
        other => {
            return Err(CmsError::Unexpected(format!(
                "{} signers, expected exactly one",
                other.len()
            )));
        }
    };
    if signer_info.version != CmsVersion::V1 {
        return Err(unexpected("SignerInfo version is not 1"));
    }
    let SignerIdentifier::IssuerAndSerialNumber(sid) = &signer_info.sid else {
        return Err(unexpected(
            "signer is not identified by issuer and serial number",
        ));
    };
    let signer = certificates
        .iter()
        .find(|c| {
            let tbs = &c.parsed().tbs_certificate;
            tbs.issuer == sid.issuer && tbs.serial_number == sid.serial_number
        })
        .cloned()
        .ok_or_else(|| unexpected("signer certificate is not embedded"))?;
    if !signed
        .digest_algorithms
        .iter()
        .any(|a| a.oid == signer_info.digest_alg.oid)
    {
        return Err(unexpected(
            "signer digest algorithm not listed in digestAlgorithms",
        ));
    }
    if signer_info
        .digest_alg
        .parameters
        .as_ref()
        .is_some_and(|p| *p != Any::null())
    {
        return Err(unexpected("digest algorithm has parameters"));
    }
    let algorithm = digest_algorithm(signer_info.digest_alg.oid)?;
    let attrs = signer_info
        .signed_attrs
        .as_ref()
        .ok_or(CmsError::Attribute("signedAttrs"))?;
    let content_type: ObjectIdentifier =
        single_value(attrs.as_slice(), ID_CONTENT_TYPE, "contentType")?
            .decode_as()
            .map_err(|_| CmsError::Attribute("contentType"))?;
    if content_type != ID_DATA {
        return Err(unexpected("contentType attribute is not id-data"));
    }
    let declared: OctetString = single_value(attrs.as_slice(), ID_MESSAGE_DIGEST, "messageDigest")?
        .decode_as()
        .map_err(|_| CmsError::Attribute("messageDigest"))?;
    if declared.as_bytes() != digest::digest(algorithm, content).as_ref() {
        return Err(CmsError::MessageDigestMismatch);
    }
    let signing_time = match attrs.iter().find(|a| a.oid == ID_SIGNING_TIME) {
        Some(_) => {
            // Time is a CHOICE (UTCTime or GeneralizedTime): decode it from the value's TLV.
            let value = single_value(attrs.as_slice(), ID_SIGNING_TIME, "signingTime")?
                .to_der()
                .map_err(|_| CmsError::Attribute("signingTime"))?;
            let time = x509_cert::time::Time::from_der(&value)
                .map_err(|_| CmsError::Attribute("signingTime"))?;
            Some(time.to_unix_duration().as_secs())
        }
        None => None,
    };
    if signer_info
        .signature_algorithm
        .parameters
        .as_ref()
        .is_some_and(|p| *p != Any::null())
    {
        return Err(unexpected("signature algorithm has parameters"));
    }
    let verify_with = signer
        .verify_algorithm(
            signer_info.signature_algorithm.oid,
            Some(signer_info.digest_alg.oid),
        )
        .map_err(CmsError::Signature)?;
    let signed_bytes = attrs.to_der().map_err(CmsError::Decode)?;
    signer
        .verify(
            verify_with,
            &signed_bytes,
            signer_info.signature.as_bytes(),
            "cms signed attributes",
        )
        .map_err(CmsError::Signature)?;
    Ok(VerifiedCms {
        signer,
        certificates,
        signing_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::tests::TestPki;

    fn key(pki: &TestPki) -> RsaSigningKey {
        RsaSigningKey::from_pem(&pki.read("signer.key"), "signer.key").expect("key")
    }

    #[test]
    fn signature_verifies_and_reports_signer_and_time() {
        let pki = TestPki::new();
        let signer = pki.cert("signer.pem");
        let chain = [pki.cert("inter.pem"), pki.cert("root.pem")];
        let content = [0x5au8; 20];
        let der =
            sign_detached(&content, &signer, &chain, &key(&pki), 1_750_000_000).expect("sign");
        let verified = verify_detached(&der, &content).expect("verify");
        assert_eq!(verified.signer, signer);
        assert_eq!(verified.certificates.len(), 3);
        assert_eq!(verified.signing_time, Some(1_750_000_000));
    }

    #[test]
    fn length_does_not_depend_on_the_content() {
        let pki = TestPki::new();
        let signer = pki.cert("signer.pem");
        let k = key(&pki);
        let a = sign_detached(&[0u8; 20], &signer, &[], &k, 1_750_000_000).expect("a");
        let b = sign_detached(&[0xffu8; 20], &signer, &[], &k, 1_999_999_999).expect("b");
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn rejects_other_content_and_every_sampled_byte_change() {
        let pki = TestPki::new();
        let signer = pki.cert("signer.pem");
        let content = [7u8; 20];
        let der = sign_detached(
            &content,
            &signer,
            &[pki.cert("inter.pem")],
            &key(&pki),
            1_750_000_000,
        )
        .expect("sign");
        let err = verify_detached(&der, &[8u8; 20]).expect_err("other content");
        assert!(matches!(err, CmsError::MessageDigestMismatch), "{err}");
        let inter = pki.cert("inter.pem");
        for position in (0..der.len()).step_by(7) {
            let mut changed = der.clone();
            changed[position] ^= 0x01;
            // A change inside an embedded certificate can leave the signature valid; the
            // certificates returned then differ from the real ones, which the package's chain
            // check rejects. Any other change must fail here.
            if let Ok(verified) = verify_detached(&changed, &content) {
                let unchanged = verified
                    .certificates
                    .iter()
                    .all(|c| *c == signer || *c == inter);
                assert!(
                    !unchanged,
                    "byte {position} changed and everything still verified"
                );
            }
        }
    }

    #[test]
    fn openssl_cms_verify_accepts_the_signature() {
        let pki = TestPki::new();
        let signer = pki.cert("signer.pem");
        let content = [0x42u8; 20];
        let der = sign_detached(
            &content,
            &signer,
            &[pki.cert("inter.pem")],
            &key(&pki),
            1_750_000_000,
        )
        .expect("sign");
        let dir = pki.dir.path();
        std::fs::write(dir.join("sig.der"), &der).expect("sig");
        std::fs::write(dir.join("content.bin"), content).expect("content");
        std::fs::write(dir.join("other.bin"), [0x43u8; 20]).expect("other");
        let run = |content_file: &str| {
            std::process::Command::new("openssl")
                .args([
                    "cms",
                    "-verify",
                    "-binary",
                    "-inform",
                    "DER",
                    "-in",
                    "sig.der",
                    "-content",
                    content_file,
                    "-CAfile",
                    "root.pem",
                    "-purpose",
                    "any",
                    "-out",
                    "/dev/null",
                ])
                .current_dir(dir)
                .output()
                .expect("openssl must be installed to run this test")
        };
        let ok = run("content.bin");
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let bad = run("other.bin");
        assert!(!bad.status.success(), "openssl accepted other content");
    }
}
