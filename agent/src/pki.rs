//! A development PKI for demos and tests: a fleet CA (ECDSA P-256) and the agent, controller
//! and observer certificates with the SANs the agent expects.
//!
//! Production fleets issue these from their own CA; the files and SANs are the same:
//! - agent: DNS `localhost`, IP `127.0.0.1` and `::1`, URI `spiffe://<td>/host/<host-id>`,
//!   serverAuth (its key also signs erase certificates);
//! - controller / observer: URI `spiffe://<td>/controller` / `spiffe://<td>/observer`, clientAuth.
//!
//! Private keys are written with mode 0600.
//!
//! Built only with the `dev` feature (`jex-agent pki dev`, the demo, the end-to-end tests) and
//! for this crate's unit tests: the shipped binary has no development PKI.

#![cfg(any(test, feature = "dev"))]

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use time::Duration;

/// Making or writing certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters.
    #[error("generating certificate {name}")]
    Generate {
        /// Which certificate.
        name: String,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// A CA's certificate and key do not go together.
    #[error("CA {name}: {what}")]
    Mismatch {
        /// Which CA.
        name: String,
        /// What is wrong.
        what: &'static str,
    },
    /// A file could not be written.
    #[error("writing {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A certificate and its key, PEM-encoded.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The PKCS#8 private key.
    pub key_pem: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"...")
            .finish()
    }
}

/// A certificate authority that can issue certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    key_pem: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// What kind of certificate to issue.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// Common name.
    pub common_name: String,
    /// DNS names and IP addresses (strings that parse as IPs become IP SANs).
    pub names: Vec<String>,
    /// URI SANs.
    pub uris: Vec<String>,
    /// serverAuth (agent) or clientAuth (controller, observer).
    pub server: bool,
    /// Validity start relative to now.
    pub not_before: Duration,
    /// Validity end relative to now.
    pub not_after: Duration,
}

impl LeafSpec {
    /// A client certificate valid from an hour ago for `days`.
    pub fn client(common_name: &str, uris: Vec<String>, days: i64) -> Self {
        Self {
            common_name: common_name.to_owned(),
            names: Vec::new(),
            uris,
            server: false,
            not_before: Duration::hours(-1),
            not_after: Duration::days(days),
        }
    }
}

impl DevCa {
    /// The parameters of a CA named `common_name` (its subject, key usages and key id method:
    /// what an issued certificate's issuer name and authority key id are made from).
    fn ca_params(common_name: &str) -> Result<CertificateParams, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(params)
    }

    /// A CA made by [`DevCa::generate`] with `common_name`, from its certificate and key PEM
    /// (as written by `pki dev` or `jex-sim`): it issues certificates that chain to that
    /// certificate.
    pub fn from_pem(common_name: &str, cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let gen_err = |source| PkiError::Generate {
            name: common_name.to_owned(),
            source,
        };
        let key = KeyPair::from_pem(key_pem).map_err(gen_err)?;
        // The certificate holds its public key's bytes verbatim (in its SubjectPublicKeyInfo).
        let cert_der = pem_certificate_der(cert_pem).ok_or(PkiError::Mismatch {
            name: common_name.to_owned(),
            what: "the certificate is not one PEM certificate",
        })?;
        let public = key.public_key_raw();
        if !cert_der.windows(public.len()).any(|w| w == public) {
            return Err(PkiError::Mismatch {
                name: common_name.to_owned(),
                what: "the key is not the certificate's",
            });
        }
        let params = Self::ca_params(common_name).map_err(gen_err)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert_pem.to_owned(),
            key_pem: zeroize::Zeroizing::new(key_pem.to_owned()),
        })
    }

    /// Makes a new self-signed CA.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let gen_err = |source| PkiError::Generate {
            name: common_name.to_owned(),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = Self::ca_params(common_name).map_err(gen_err)?;
        let now = jex_attest::clock::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let key_pem = zeroize::Zeroizing::new(key.serialize_pem());
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            key_pem,
        })
    }

    /// Issues a leaf certificate.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, PkiError> {
        let gen_err = |source| PkiError::Generate {
            name: spec.common_name.clone(),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let mut params = CertificateParams::new(spec.names.clone()).map_err(gen_err)?;
        params.distinguished_name = dn(&spec.common_name);
        for uri in &spec.uris {
            let ia5 = uri.as_str().try_into().map_err(gen_err)?;
            params.subject_alt_names.push(SanType::URI(ia5));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if spec.server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let now = jex_attest::clock::now_utc();
        params.not_before = now + spec.not_before;
        params.not_after = now + spec.not_after;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen_err)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        })
    }

    /// The CA's private key, PEM (kept only by `pki dev`, for issuing more later).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }
}

/// The DER of the first PEM certificate of `pem`.
fn pem_certificate_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "JexCloud development");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// The files `pki dev` writes.
#[derive(Debug, Clone)]
pub struct DevPkiPaths {
    /// Fleet CA certificate.
    pub ca_cert: PathBuf,
    /// Agent certificate and key.
    pub agent_cert: PathBuf,
    /// Agent key.
    pub agent_key: PathBuf,
    /// Controller certificate.
    pub controller_cert: PathBuf,
    /// Controller key.
    pub controller_key: PathBuf,
    /// Observer certificate.
    pub observer_cert: PathBuf,
    /// Observer key.
    pub observer_key: PathBuf,
}

impl DevPkiPaths {
    /// The file names under `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            agent_cert: dir.join("agent.pem"),
            agent_key: dir.join("agent.key"),
            controller_cert: dir.join("controller.pem"),
            controller_key: dir.join("controller.key"),
            observer_cert: dir.join("observer.pem"),
            observer_key: dir.join("observer.key"),
        }
    }
}

/// The controller URI for a trust domain.
pub fn controller_uri(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/controller")
}

/// The observer URI for a trust domain.
pub fn observer_uri(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/observer")
}

/// Writes a development PKI into `dir` (created 0700 if missing) and returns the paths and
/// the CA (for tests that issue more certificates).
pub fn write_dev_pki(
    dir: &Path,
    trust_domain: &str,
    host_id: &str,
) -> Result<(DevPkiPaths, DevCa), PkiError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::Write {
            path: dir.to_owned(),
            source,
        })?;
    let paths = DevPkiPaths::in_dir(dir);
    let ca = DevCa::generate(&format!("{trust_domain} fleet CA (development)"))?;
    let agent = ca.issue(&LeafSpec {
        common_name: format!("jex-agent {host_id}"),
        names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
        uris: vec![format!("spiffe://{trust_domain}/host/{host_id}")],
        server: true,
        not_before: Duration::hours(-1),
        not_after: Duration::days(365),
    })?;
    let controller = ca.issue(&LeafSpec::client(
        "controller",
        vec![controller_uri(trust_domain)],
        365,
    ))?;
    let observer = ca.issue(&LeafSpec::client(
        "observer",
        vec![observer_uri(trust_domain)],
        365,
    ))?;
    write_file(&paths.ca_cert, ca.cert_pem.as_bytes(), 0o644)?;
    write_file(&dir.join("ca.key"), ca.key_pem().as_bytes(), 0o600)?;
    write_file(&paths.agent_cert, agent.cert_pem.as_bytes(), 0o644)?;
    write_file(&paths.agent_key, agent.key_pem.as_bytes(), 0o600)?;
    write_file(
        &paths.controller_cert,
        controller.cert_pem.as_bytes(),
        0o644,
    )?;
    write_file(&paths.controller_key, controller.key_pem.as_bytes(), 0o600)?;
    write_file(&paths.observer_cert, observer.cert_pem.as_bytes(), 0o644)?;
    write_file(&paths.observer_key, observer.key_pem.as_bytes(), 0o600)?;
    Ok((paths, ca))
}

/// Writes a file with the given mode from creation (never briefly world-readable), replacing it.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let werr = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(werr)?;
    f.write_all(bytes).map_err(werr)?;
    f.sync_all().map_err(werr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_pki_has_the_expected_sans_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (paths, _) = write_dev_pki(dir.path(), "fleet.example", "h-1").expect("pki");
        assert_eq!(
            crate::tls::host_id_from_cert(&paths.agent_cert).expect("host id"),
            "h-1"
        );
        let ctl = crate::tls::load_certs(&paths.controller_cert).expect("controller cert");
        let id = crate::tls::peer_identity(&ctl[0]).expect("parse");
        assert_eq!(
            id.uris,
            vec!["spiffe://fleet.example/controller".to_owned()]
        );
        let mode = std::fs::metadata(&paths.agent_key)
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        crate::tls::load_key(&paths.agent_key).expect("key loads");
    }

    #[test]
    fn a_ca_loaded_from_its_pem_issues_certificates_that_chain_to_it() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let ca = DevCa::generate("loaded CA").expect("ca");
        let again = DevCa::from_pem("loaded CA", &ca.cert_pem, ca.key_pem()).expect("loads");
        let leaf = again
            .issue(&LeafSpec {
                common_name: "leaf".into(),
                names: vec!["localhost".into()],
                uris: Vec::new(),
                server: true,
                not_before: Duration::hours(-1),
                not_after: Duration::days(1),
            })
            .expect("issue");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("ca der"))
            .expect("root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let leaf_der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("leaf der");
        verifier
            .verify_server_cert(
                &leaf_der,
                &[],
                &ServerName::try_from("localhost").expect("name"),
                &[],
                UnixTime::now(),
            )
            .expect("the leaf chains to the original CA certificate");
        // Another CA's key with this certificate is refused.
        let other = DevCa::generate("loaded CA").expect("other");
        let e = DevCa::from_pem("loaded CA", &ca.cert_pem, other.key_pem()).unwrap_err();
        assert!(
            e.to_string().contains("the key is not the certificate's"),
            "{e}"
        );
    }
}
