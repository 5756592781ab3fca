//! [`FileSigner`]: the default [`Signer`], an ECDSA P-256 key read from a PKCS#8 PEM file (the
//! agent's identity key, as written by rcgen: `-----BEGIN PRIVATE KEY-----`) with its
//! certificate chain from a PEM file (leaf first, then intermediates).
//!
//! Key hygiene:
//! - the key file must be a regular file not readable or writable by group or others (mode
//!   `0600` or stricter); otherwise loading fails and says to `chmod 600` it;
//! - the file's bytes, the base64 text and the decoded PKCS#8 DER live only in zeroizing
//!   buffers, wiped as soon as ring has parsed the key (the buffers are sized up front so no
//!   reallocation leaves a stray copy behind). ring then holds the private scalar in memory
//!   for the signer's lifetime; ring does not wipe it on drop;
//! - `Debug` prints `key: "..."`, never key material; nothing here logs.
//!
//! Loading also proves that the key belongs to the chain's first certificate (a probe message
//! is signed and verified against that certificate), so a mismatched pair fails at start-up
//! instead of producing unverifiable certificates.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use zeroize::Zeroizing;

use super::{AttestError, Signer};

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// Signs with a P-256 key loaded from a file. See the module documentation.
pub struct FileSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    chain: Vec<Vec<u8>>,
    key_path: PathBuf,
}

impl fmt::Debug for FileSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSigner")
            .field("key", &"...")
            .field("key_path", &self.key_path)
            .field("chain_certificates", &self.chain.len())
            .finish()
    }
}

impl FileSigner {
    /// Loads the PKCS#8 P-256 key at `key_pem_path` and the PEM chain (leaf first) at
    /// `chain_pem_path`, checking the key file's mode and that the key matches the leaf.
    pub fn load(key_pem_path: &Path, chain_pem_path: &Path) -> Result<Self, AttestError> {
        let pkcs8 = read_pkcs8(key_pem_path)?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng).map_err(
            |e| AttestError::KeyRejected {
                path: key_pem_path.display().to_string(),
                reason: e.to_string(),
            },
        )?;
        drop(pkcs8);

        let chain = read_chain(chain_pem_path)?;
        let signer = Self {
            key,
            rng,
            chain,
            key_path: key_pem_path.to_owned(),
        };
        signer.check_key_matches_leaf(chain_pem_path)?;
        Ok(signer)
    }

    /// The public key, as an uncompressed SEC1 point.
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    fn check_key_matches_leaf(&self, chain_path: &Path) -> Result<(), AttestError> {
        const PROBE: &[u8] = b"jex-file-signer-key-check-v1\0";
        let mismatch = || AttestError::KeyCertificateMismatch {
            key_path: self.key_path.display().to_string(),
            chain_path: chain_path.display().to_string(),
        };
        let leaf_der = CertificateDer::from(self.chain[0].as_slice());
        let leaf = webpki::EndEntityCert::try_from(&leaf_der).map_err(|source| {
            AttestError::SignerCertificate {
                path: chain_path.display().to_string(),
                source,
            }
        })?;
        let probe = self.sign(PROBE)?;
        leaf.verify_signature(webpki::ring::ECDSA_P256_SHA256, PROBE, &probe)
            .map_err(|_| mismatch())
    }
}

impl Signer for FileSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AttestError> {
        let sig = self
            .key
            .sign(&self.rng, message)
            .map_err(|_| AttestError::Signing {
                reason: "ring could not produce an ECDSA signature (random source failed)".into(),
            })?;
        Ok(sig.as_ref().to_vec())
    }

    fn chain_der(&self) -> Vec<Vec<u8>> {
        self.chain.clone()
    }
}

/// Reads the key file (checking its type and mode) and decodes its PKCS#8 DER, keeping every
/// copy of the secret in zeroizing buffers.
fn read_pkcs8(path: &Path) -> Result<Zeroizing<Vec<u8>>, AttestError> {
    let shown = || path.display().to_string();
    let io_err = |source| AttestError::KeyRead {
        path: shown(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    // Metadata of the opened file, not of the path: no window for a swap in between.
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(AttestError::KeyFormat {
            path: shown(),
            reason: "not a regular file",
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(AttestError::KeyPermissions {
            path: shown(),
            mode,
        });
    }
    // Room for the whole file plus one byte, so read_to_end never reallocates (a reallocation
    // would leave an unwiped copy of the key in freed memory).
    let capacity = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
    let mut text = Zeroizing::new(Vec::with_capacity(capacity));
    file.read_to_end(&mut text).map_err(io_err)?;
    decode_pkcs8_pem(&text).map_err(|reason| AttestError::KeyFormat {
        path: shown(),
        reason,
    })
}

/// Decodes the first `PRIVATE KEY` PEM block of `text` into zeroizing DER.
fn decode_pkcs8_pem(text: &[u8]) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    let find = |needle: &str, from: usize| {
        text.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .map(|p| p + from)
    };
    let Some(begin) = find(PEM_BEGIN, 0) else {
        if find("-----BEGIN EC PRIVATE KEY-----", 0).is_some() {
            return Err("it is a SEC1 \"EC PRIVATE KEY\": convert it with \
                        `openssl pkcs8 -topk8 -nocrypt`");
        }
        if find("-----BEGIN ENCRYPTED PRIVATE KEY-----", 0).is_some() {
            return Err("encrypted keys are not supported");
        }
        return Err("no \"-----BEGIN PRIVATE KEY-----\" block");
    };
    let body_start = begin + PEM_BEGIN.len();
    let end = find(PEM_END, body_start).ok_or("the PRIVATE KEY block is not terminated")?;
    let body = &text[body_start..end];

    let mut b64 = Zeroizing::new(Vec::with_capacity(body.len()));
    b64.extend(body.iter().copied().filter(|b| !b.is_ascii_whitespace()));
    let engine = &base64::engine::general_purpose::STANDARD;
    let mut der = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(b64.len())]);
    let len = engine
        .decode_slice(b64.as_slice(), der.as_mut_slice())
        .map_err(|_| "the PRIVATE KEY block is not valid base64")?;
    der.truncate(len);
    Ok(der)
}

fn read_chain(path: &Path) -> Result<Vec<Vec<u8>>, AttestError> {
    let shown = || path.display().to_string();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| AttestError::ChainRead {
            path: shown(),
            source,
        })?;
    if certs.is_empty() {
        return Err(AttestError::EmptyChain { path: shown() });
    }
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::testing::{TestCa, write_signer_files};

    #[test]
    fn loads_an_rcgen_key_and_signs_verifiably_with_the_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let leaf = ca.leaf();
        let (key, chain) = write_signer_files(dir.path(), &leaf, &[]);
        let signer = FileSigner::load(&key, &chain).unwrap();
        assert_eq!(signer.chain_der(), vec![leaf.cert_der.clone()]);

        let sig = signer.sign(b"message").unwrap();
        let der = CertificateDer::from(leaf.cert_der.as_slice());
        let cert = webpki::EndEntityCert::try_from(&der).unwrap();
        cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, b"message", &sig)
            .unwrap();
        assert!(
            cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, b"messagE", &sig)
                .is_err()
        );
    }

    #[test]
    fn keeps_the_whole_chain_leaf_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = TestCa::new("root");
        let mid = root.intermediate("intermediate");
        let leaf = mid.leaf();
        let (key, chain) = write_signer_files(dir.path(), &leaf, &[&mid]);
        let signer = FileSigner::load(&key, &chain).unwrap();
        assert_eq!(signer.chain_der(), vec![leaf.cert_der, mid.cert_der]);
    }

    #[test]
    fn refuses_a_key_readable_by_group_or_others_and_says_to_chmod_600() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = TestCa::new("ca").leaf();
        let (key, chain) = write_signer_files(dir.path(), &leaf, &[]);
        for mode in [0o640, 0o604, 0o644, 0o660] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            let err = FileSigner::load(&key, &chain).unwrap_err();
            assert!(
                matches!(err, AttestError::KeyPermissions { mode: m, .. } if m == mode),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("chmod 600 {}", key.display())),
                "{msg}"
            );
        }
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
        FileSigner::load(&key, &chain).unwrap();
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = TestCa::new("ca").leaf();
        let (key, chain) = write_signer_files(dir.path(), &leaf, &[]);
        let signer = FileSigner::load(&key, &chain).unwrap();
        let shown = format!("{signer:?} {signer:#?}");
        assert!(shown.contains(r#"key: "...""#), "{shown}");
        let der = decode_pkcs8_pem(leaf.key_pem.as_bytes()).unwrap();
        // No fragment of the PKCS#8 (in hex or as the PEM body) appears.
        let pem_body: String = leaf
            .key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!shown.contains(&pem_body[10..30]), "{shown}");
        assert!(!shown.contains(&hex::encode(&der[36..52])), "{shown}");
    }

    #[test]
    fn refuses_a_key_that_does_not_match_the_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("ca");
        let (key, _) = write_signer_files(dir.path(), &ca.leaf(), &[]);
        let other = dir.path().join("other.pem");
        fs::write(&other, ca.leaf().cert_pem).unwrap();
        let err = FileSigner::load(&key, &other).unwrap_err();
        assert!(
            matches!(err, AttestError::KeyCertificateMismatch { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn explains_sec1_encrypted_and_garbage_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = TestCa::new("ca").leaf();
        let (_, chain) = write_signer_files(dir.path(), &leaf, &[]);
        let key = dir.path().join("bad.key");
        for (text, expected) in [
            (
                "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
                "openssl pkcs8 -topk8",
            ),
            (
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n",
                "encrypted keys are not supported",
            ),
            ("hello", "no \"-----BEGIN PRIVATE KEY-----\" block"),
            (
                "-----BEGIN PRIVATE KEY-----\nAA!A\n-----END PRIVATE KEY-----\n",
                "not valid base64",
            ),
            ("-----BEGIN PRIVATE KEY-----\nAAAA\n", "not terminated"),
        ] {
            fs::write(&key, text).unwrap();
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
            let err = FileSigner::load(&key, &chain).unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
        // Well-formed PEM but not an ECDSA P-256 PKCS#8 key.
        fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(matches!(
            FileSigner::load(&key, &chain).unwrap_err(),
            AttestError::KeyRejected { .. }
        ));
    }

    #[test]
    fn reports_missing_files_and_empty_chains() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = TestCa::new("ca").leaf();
        let (key, chain) = write_signer_files(dir.path(), &leaf, &[]);
        assert!(matches!(
            FileSigner::load(&dir.path().join("missing.key"), &chain).unwrap_err(),
            AttestError::KeyRead { .. }
        ));
        assert!(matches!(
            FileSigner::load(&key, &dir.path().join("missing.pem")).unwrap_err(),
            AttestError::ChainRead { .. }
        ));
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "").unwrap();
        assert!(matches!(
            FileSigner::load(&key, &empty).unwrap_err(),
            AttestError::EmptyChain { .. }
        ));
        assert!(matches!(
            FileSigner::load(dir.path(), &chain).unwrap_err(),
            AttestError::KeyFormat {
                reason: "not a regular file",
                ..
            }
        ));
    }
}
