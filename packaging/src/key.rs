//! The RSA private key that signs a package: PEM loading (PKCS#8 or PKCS#1) and PKCS#1 v1.5
//! SHA-256 signatures with `ring`.
//!
//! Both signatures of a package (the RSA `<signature>` and the CMS SignedData) are made with this
//! key. The key bytes are never printed: `Debug` shows nothing, and the PEM is decoded into a
//! buffer that is zeroized when dropped. This module depends on no other module of the crate.

use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// A key that cannot be read or cannot sign.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file holds no usable RSA private key.
    #[error(
        "read rsa private key from {what}: {reason} (expected PEM PKCS#8 \"PRIVATE KEY\" or PKCS#1 \"RSA PRIVATE KEY\", 2048 bits or more)"
    )]
    Read {
        /// Which file.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// RSA signing failed.
    #[error("rsa signing failed")]
    Sign,
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
    pub fn from_pem(pem: &[u8], what: &str) -> Result<Self, KeyError> {
        let key_err = |reason: String| KeyError::Read {
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
    pub fn sign_pkcs1_sha256(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut signature = vec![0u8; self.signature_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut signature,
            )
            .map_err(|_| KeyError::Sign)?;
        Ok(signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::x509::tests::TestPki;

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
