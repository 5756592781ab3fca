//! An erase-certificate bundle from anywhere, read and checked the way
//! `jex-agent verify-erase CERT --ca CA` does (`SignedCertificate::from_bundle_json`, then
//! `jex_attest::verify_any`, versions 1 and 2, against a fixed fleet CA). Nothing may panic.
//!
//! Input that decodes as a bundle is verified as it is, against the fleet CA of the seed bundle
//! (`fixtures/erase-ca.pem`). Any other input is taken as the `document_json` a bundle would
//! carry: it is signed here by an agent key that a CA made in this process certified (the agent's
//! own `pki` code, host `h-1`, valid 20 years either side of now) and verified against that CA, so
//! that the checks after the signature (the document, the chain at `finished_at`, canonical
//! form, consistency, host, nonce, clock), which a random bundle never reaches, see arbitrary
//! documents too; it is signed twice, over each version's signing domain. No private key is
//! stored in the repository.
//!
//! Properties: a decoded bundle re-encodes to a bundle that decodes to the same certificate; a
//! verified document is exactly the signed bytes in canonical form.

#![no_main]

use std::sync::OnceLock;

use jex_agent::pki::{self, DevCa, LeafSpec};
use jex_attest::{
    BundleError, FileSigner, SignedCertificate, Signer, VerifiedDocument, canonical_json,
    canonical_json_v2, verify_any,
};
use libfuzzer_sys::fuzz_target;
use time::Duration;

const CA_PEM: &[u8] = include_bytes!("../fixtures/erase-ca.pem");
/// The host of the seed document (`jex_attest::testing::sample_document`).
const HOST_URI: &str = "spiffe://fleet.example/host/h-1";
/// The controller nonce of the seed document (`jex_attest::testing::NONCE`).
const NONCE: &[u8; 32] = b"controller-nonce-0123456789abcde";

/// An agent signer and its CA, made once per process; the signer is loaded through the agent's
/// own loader (which reads files, the key with mode 0600).
struct Pki {
    signer: FileSigner,
    ca_pem: String,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let ca = DevCa::generate("fuzz fleet CA").expect("CA");
        let leaf = ca
            .issue(&LeafSpec {
                common_name: "jex-agent h-1".to_owned(),
                names: Vec::new(),
                uris: vec![HOST_URI.to_owned()],
                server: true,
                not_before: Duration::days(-20 * 365),
                not_after: Duration::days(20 * 365),
            })
            .expect("agent certificate");
        let dir = std::env::temp_dir().join(format!("jex-fuzz-signer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (key, chain) = (dir.join("agent.key"), dir.join("agent.pem"));
        pki::write_file(&key, leaf.key_pem.as_bytes(), 0o600).expect("write key");
        pki::write_file(&chain, leaf.cert_pem.as_bytes(), 0o644).expect("write certificate");
        let signer = FileSigner::load(&key, &chain).expect("the agent key loads");
        let _ = std::fs::remove_dir_all(&dir);
        Pki {
            signer,
            ca_pem: ca.cert_pem,
        }
    })
}

fn check(cert: &SignedCertificate, ca_pem: &[u8]) {
    let _ = verify_any(cert, ca_pem, None);
    if let Ok(doc) = verify_any(cert, ca_pem, Some(NONCE)) {
        let canonical = match &doc {
            VerifiedDocument::V1(doc) => canonical_json(doc),
            VerifiedDocument::V2(doc) => canonical_json_v2(doc),
        };
        assert_eq!(
            canonical, cert.document_json,
            "a verified document is its signed bytes"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    match SignedCertificate::from_bundle_json(data) {
        Ok(cert) => {
            let again = SignedCertificate::from_bundle_json(&cert.to_bundle_json())
                .expect("a bundle this crate wrote reads back");
            assert_eq!(again, cert, "bundle round trip");
            check(&cert, CA_PEM);
        }
        Err(BundleError::Json(_)) => {
            let pki = pki();
            for message in [
                jex_attest::signed_message(data),
                jex_attest::signed_message_v2(data),
            ] {
                let signature = pki.signer.sign(&message).expect("signing");
                let cert = SignedCertificate {
                    document_json: data.to_vec(),
                    signature,
                    signer_chain_der: pki.signer.chain_der(),
                    signature_algorithm: jex_attest::SIGNATURE_ALGORITHM.to_owned(),
                };
                check(&cert, pki.ca_pem.as_bytes());
            }
        }
        Err(_) => {}
    }
});
