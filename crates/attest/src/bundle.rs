//! The bundle file: a [`SignedCertificate`] as one JSON object, the form stored on disk, handed
//! to auditors and read by `jex-agent verify-erase CERT --ca CA`.
//!
//! ```json
//! {"format":"jex-erase-certificate-bundle/v1",
//!  "signature_algorithm":"ecdsa-p256-sha256",
//!  "document":"eyJjb250cm9sbGVyX25vbmNlX2hleCI6…",
//!  "signature":"MEUCIQD…",
//!  "signer_chain":["MIIB…","MIIB…"]}
//! ```
//! (written on one line, members in this order, no whitespace)
//!
//! - `format`: always [`BUNDLE_FORMAT`];
//! - `signature_algorithm`: `ecdsa-p256-sha256`;
//! - `document`: standard base64 (RFC 4648 §4, padded) of `document_json`, the canonical JSON
//!   document exactly as signed. Base64 keeps those bytes intact through any JSON tooling;
//!   decode it to read the document;
//! - `signature`: base64 of the ASN.1 DER ECDSA signature over
//!   `b"jex-erase-certificate-v1\0" || document_json` (`-v2\0` for a version 2 document: the
//!   bundle is the same for both, the document's `schema` says which);
//! - `signer_chain`: base64 DER certificates, the signer's first, then intermediates (the
//!   fleet CA itself is not included: the verifier brings its own).
//!
//! Reading is strict: unknown or duplicate members, another `format`, non-canonical base64
//! (wrong padding, non-zero trailing bits) are all errors, so no two different files decode
//! to the same certificate unnoticed.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::SignedCertificate;

/// The `format` member of every bundle.
pub const BUNDLE_FORMAT: &str = "jex-erase-certificate-bundle/v1";

/// A bundle file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not JSON of the bundle's shape.
    #[error(
        "not an erase-certificate bundle (JSON object with format, signature_algorithm, document, signature, signer_chain)"
    )]
    Json(#[source] serde_json::Error),
    /// Another format or version.
    #[error("bundle format is {found:?}, expected {BUNDLE_FORMAT:?}")]
    Format {
        /// The format found.
        found: String,
    },
    /// A base64 member does not decode.
    #[error("bundle member {field} is not valid base64")]
    Base64 {
        /// The member.
        field: &'static str,
        /// The decoding failure.
        #[source]
        source: base64::DecodeError,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Bundle {
    format: String,
    signature_algorithm: String,
    document: String,
    signature: String,
    signer_chain: Vec<String>,
}

impl SignedCertificate {
    /// The bundle JSON (see the module documentation), without a trailing newline.
    pub fn to_bundle_json(&self) -> Vec<u8> {
        let bundle = Bundle {
            format: BUNDLE_FORMAT.to_owned(),
            signature_algorithm: self.signature_algorithm.clone(),
            document: STANDARD.encode(&self.document_json),
            signature: STANDARD.encode(&self.signature),
            signer_chain: self
                .signer_chain_der
                .iter()
                .map(|c| STANDARD.encode(c))
                .collect(),
        };
        // A struct of strings always serialises.
        #[allow(clippy::expect_used)]
        serde_json::to_vec(&bundle).expect("a bundle of strings always serialises")
    }

    /// Reads a bundle (see the module documentation). Only decodes: call
    /// [`super::verify()`] on the result before trusting anything in it.
    pub fn from_bundle_json(bytes: &[u8]) -> Result<Self, BundleError> {
        let bundle: Bundle = serde_json::from_slice(bytes).map_err(BundleError::Json)?;
        if bundle.format != BUNDLE_FORMAT {
            return Err(BundleError::Format {
                found: bundle.format,
            });
        }
        let decode = |field, text: &str| {
            STANDARD
                .decode(text)
                .map_err(|source| BundleError::Base64 { field, source })
        };
        Ok(Self {
            document_json: decode("document", &bundle.document)?,
            signature: decode("signature", &bundle.signature)?,
            signer_chain_der: bundle
                .signer_chain
                .iter()
                .map(|c| decode("signer_chain", c))
                .collect::<Result<_, _>>()?,
            signature_algorithm: bundle.signature_algorithm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> SignedCertificate {
        SignedCertificate {
            document_json: br#"{"a":1}"#.to_vec(),
            signature: vec![0x30, 0x45, 0x02, 0xff],
            signer_chain_der: vec![vec![1, 2, 3], vec![4, 5]],
            signature_algorithm: "ecdsa-p256-sha256".into(),
        }
    }

    #[test]
    fn writes_the_documented_layout_and_reads_it_back() {
        let json = cert().to_bundle_json();
        assert_eq!(
            String::from_utf8(json.clone()).unwrap(),
            r#"{"format":"jex-erase-certificate-bundle/v1","signature_algorithm":"ecdsa-p256-sha256","document":"eyJhIjoxfQ==","signature":"MEUC/w==","signer_chain":["AQID","BAU="]}"#
        );
        assert_eq!(SignedCertificate::from_bundle_json(&json).unwrap(), cert());
    }

    #[test]
    fn rejects_other_formats_unknown_members_and_sloppy_base64() {
        let good = String::from_utf8(cert().to_bundle_json()).unwrap();
        for (bad, what) in [
            (good.replace("/v1", "/v2"), "format"),
            (
                good.replace(r#""signer_chain""#, r#""extra":1,"signer_chain""#),
                "unknown member",
            ),
            (
                good.replace(r#""signature":"MEUC/w==","#, ""),
                "missing member",
            ),
            (good.replace("BAU=", "BAV="), "non-zero trailing bits"),
            (
                good.replace("eyJhIjoxfQ==", "eyJhIjoxfQ"),
                "missing padding",
            ),
            (
                good.replace(
                    r#""format""#,
                    r#""format":"jex-erase-certificate-bundle/v1","format""#,
                ),
                "duplicate member",
            ),
        ] {
            assert!(
                SignedCertificate::from_bundle_json(bad.as_bytes()).is_err(),
                "{what} accepted: {bad}"
            );
        }
    }
}
