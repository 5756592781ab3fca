//! The client certificate a caller presents, as the agent reads it: `tls::peer_identity` (URI
//! SANs, subject, serial from the DER), `tls::host_id_from_uri`, and the role decision
//! `server::auth::authorize` against a fixed `[roles]` config. Nothing may panic, and a role is
//! only ever granted for a URI SAN the certificate holds that is listed for that role.
//!
//! (The TLS handshake verifies the chain before any of this runs; these parsers still see
//! whatever certificate a CA-issued client chose to present, and the agent's own certificate.)

#![no_main]

use jex_agent::config::RolesConfig;
use jex_agent::server::auth::{Refusal, Role, authorize};
use jex_agent::tls::{host_id_from_uri, peer_identity};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

const CONTROLLER: &str = "spiffe://fleet.example/controller";
const OBSERVER: &str = "spiffe://fleet.example/observer";
const TERMINATE: &str = "/jex.agent.v1.NodeAgent/Terminate";
const READ_ONLY: &str = "/jex.agent.v1.NodeAgent/GetHost";

fuzz_target!(|data: &[u8]| {
    let uris = match peer_identity(data) {
        Ok(identity) => {
            for uri in &identity.uris {
                if let Some(host) = host_id_from_uri(uri) {
                    assert!(!host.is_empty() && !host.contains('/'));
                    assert!(uri.ends_with(&format!("/host/{host}")));
                }
            }
            identity.uris
        }
        Err(_) => Vec::new(),
    };
    let roles = RolesConfig {
        controller: vec![CONTROLLER.to_owned()],
        observer: vec![OBSERVER.to_owned()],
    };
    let certs = [CertificateDer::from(data.to_vec())];
    for method in [TERMINATE, READ_ONLY] {
        match authorize(&roles, Some(&certs), method, "127.0.0.1:1") {
            Ok(peer) => {
                assert!(uris.contains(&peer.id), "granted for a URI SAN it holds");
                let listed = match peer.role {
                    Role::Controller => CONTROLLER,
                    Role::Observer => OBSERVER,
                };
                assert_eq!(peer.id, listed);
                assert!(method != TERMINATE || peer.role == Role::Controller);
            }
            Err(Refusal::NoRole { uris: refused }) => {
                assert_eq!(refused, uris);
                assert!(!uris.iter().any(|u| u == CONTROLLER || u == OBSERVER));
            }
            Err(Refusal::NotAllowed { role, .. }) => {
                assert_eq!(method, TERMINATE);
                assert_eq!(role, Role::Observer);
            }
            Err(Refusal::NoCertificate) => panic!("a certificate was given"),
            Err(Refusal::UnknownMethod) => panic!("both methods are in the table"),
        }
    }
});
