//! The one place that builds TLS configurations.
//!
//! Server: TLS 1.3 only, ALPN `h2`, client certificates verified against the fleet CA. A
//! client that presents no certificate completes the handshake but every RPC is refused with
//! `UNAUTHENTICATED` (so it gets a gRPC status that says what to fix instead of a bare transport
//! error); a certificate that does not chain to the fleet CA, or is expired, fails the handshake.
//! There is no way to turn verification off.
//!
//! The live server configuration sits behind an [`ArcSwap`]: [`ServerTls::reload`] re-reads the
//! files (on SIGHUP) and swaps it; each new connection takes the current one, open connections
//! and their streams keep theirs.
//!
//! The `/metrics` endpoint (with `[metrics] tls = true`) uses the same configuration with ALPN
//! `http/1.1` instead of `h2` ([`ServerTls::current_http1`]), swapped with it; the `notAfter`
//! of the agent's certificate and of the fleet CA ([`Expiry`]) are read at each load, for its
//! certificate-expiry gauges.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::TlsConfig;

/// TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file held no usable item.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: String,
    },
    /// A private key file is readable by group or others.
    #[error(
        "{path}: private key is readable by group or others (mode {mode:o}): run `chmod 600 {path}`"
    )]
    KeyPermissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// rustls refused the material.
    #[error("building the TLS configuration from {path}")]
    Rustls {
        /// The file at fault.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::Error,
    },
    /// The client CA could not be used to verify clients.
    #[error("using {path} as the client CA")]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The agent certificate has no host identity.
    #[error(
        "{path}: the agent certificate has no URI SAN of the form spiffe://<trust-domain>/host/<host-id>: \
         issue it with one (see `jex-agent pki dev`)"
    )]
    NoHostId {
        /// The certificate file.
        path: PathBuf,
    },
    /// A certificate could not be parsed.
    #[error("{path}: certificate is not valid X.509: {detail}")]
    X509 {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        detail: String,
    },
}

/// Reads a whole file, naming it on error.
fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut buf))
        .map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })?;
    Ok(buf)
}

/// Loads every certificate of a PEM file, in order.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("bad PEM certificate: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE block found: expected a PEM certificate chain".to_owned(),
        });
    }
    Ok(certs)
}

/// Loads a PEM private key, refusing one that group or others can read.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_key_mode(path)?;
    let pem = zeroize::Zeroizing::new(read(path)?);
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Pem {
        path: path.to_owned(),
        what: "no PRIVATE KEY block found: expected a PEM PKCS#8 private key".to_owned(),
    })
}

fn check_key_mode(path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server configuration from the configured files.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs(&tls.cert)?;
    let key = load_key(&tls.key)?;
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&tls.client_ca)? {
        roots.add(ca).map_err(|source| TlsError::Rustls {
            path: tls.client_ca.clone(),
            source,
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        // A missing certificate is refused per RPC with UNAUTHENTICATED (see server::auth).
        .allow_unauthenticated()
        .build()
        .map_err(|source| TlsError::Verifier {
            path: tls.client_ca.clone(),
            source,
        })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            path: tls.cert.clone(),
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rustls {
            path: tls.key.clone(),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The same configuration for an HTTP/1.1 server (the `/metrics` endpoint): ALPN `http/1.1`.
fn http1_config(config: &ServerConfig) -> Arc<ServerConfig> {
    let mut http1 = config.clone();
    http1.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(http1)
}

/// When the loaded certificates stop being valid, in seconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expiry {
    /// `notAfter` of the agent's own certificate (the leaf).
    pub cert_not_after: i64,
    /// The earliest `notAfter` of the fleet CA file's certificates.
    pub ca_not_after: i64,
}

/// The `notAfter` of a DER certificate, in seconds since the Unix epoch.
pub fn not_after(der: &[u8]) -> Result<i64, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    Ok(cert.validity().not_after.timestamp())
}

/// The [`Expiry`] of the configured files.
fn expiry(files: &TlsConfig) -> Result<Expiry, TlsError> {
    let x509 = |path: &Path, detail| TlsError::X509 {
        path: path.to_owned(),
        detail,
    };
    let chain = load_certs(&files.cert)?;
    let cert_not_after = not_after(&chain[0]).map_err(|d| x509(&files.cert, d))?;
    let mut ca_not_after = i64::MAX;
    for ca in load_certs(&files.client_ca)? {
        ca_not_after = ca_not_after.min(not_after(&ca).map_err(|d| x509(&files.client_ca, d))?);
    }
    Ok(Expiry {
        cert_not_after,
        ca_not_after,
    })
}

/// What one load of the files gives.
#[derive(Debug)]
struct Loaded {
    grpc: Arc<ServerConfig>,
    http1: Arc<ServerConfig>,
    expiry: Expiry,
}

fn load_all(files: &TlsConfig) -> Result<Loaded, TlsError> {
    let grpc = server_config(files)?;
    Ok(Loaded {
        http1: http1_config(&grpc),
        expiry: expiry(files)?,
        grpc,
    })
}

/// The live, reloadable server TLS configuration.
#[derive(Debug)]
pub struct ServerTls {
    files: TlsConfig,
    current: ArcSwap<Loaded>,
}

impl ServerTls {
    /// Loads the configuration for the first time.
    pub fn load(files: &TlsConfig) -> Result<Self, TlsError> {
        Ok(Self {
            files: files.clone(),
            current: ArcSwap::from_pointee(load_all(files)?),
        })
    }

    /// The configuration new gRPC connections use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load().grpc.clone()
    }

    /// The configuration new `/metrics` connections use: the same, for HTTP/1.1.
    pub fn current_http1(&self) -> Arc<ServerConfig> {
        self.current.load().http1.clone()
    }

    /// When the loaded agent certificate and fleet CA expire.
    pub fn expiry(&self) -> Expiry {
        self.current.load().expiry
    }

    /// Re-reads the files and swaps the configuration; on error the old one stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load_all(&self.files)?;
        self.current.store(Arc::new(fresh));
        Ok(())
    }
}

/// A cheap fingerprint of the TLS files (inode, size, modification time of each), to notice that
/// an operator or a certificate manager replaced them.
pub fn files_stamp(files: &TlsConfig) -> Vec<Option<(u64, u64, std::time::SystemTime)>> {
    use std::os::unix::fs::MetadataExt;
    [&files.cert, &files.key, &files.client_ca]
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.ino(), m.len(), m.modified().ok()?)))
        })
        .collect()
}

/// What the agent knows of a peer from its verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The URI SANs of the leaf certificate.
    pub uris: Vec<String>,
    /// The subject, for logs.
    pub subject: String,
    /// The serial number (hex), for logs.
    pub serial: String,
}

/// Reads the identity of a DER certificate.
pub fn peer_identity(der: &[u8]) -> Result<PeerIdentity, String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                uris.push((*uri).to_owned());
            }
        }
    }
    Ok(PeerIdentity {
        uris,
        subject: cert.subject().to_string(),
        serial: cert.raw_serial_as_string(),
    })
}

/// The host id named by the agent's own certificate: the last segment of its
/// `spiffe://<trust-domain>/host/<host-id>` URI SAN.
pub fn host_id_from_cert(path: &Path) -> Result<String, TlsError> {
    let chain = load_certs(path)?;
    let id = peer_identity(&chain[0]).map_err(|detail| TlsError::X509 {
        path: path.to_owned(),
        detail,
    })?;
    id.uris
        .iter()
        .find_map(|u| host_id_from_uri(u))
        .ok_or_else(|| TlsError::NoHostId {
            path: path.to_owned(),
        })
}

/// `spiffe://td/host/<id>` → `<id>`.
pub fn host_id_from_uri(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (_, path) = rest.split_once('/')?;
    let id = path.strip_prefix("host/")?;
    (!id.is_empty() && !id.contains('/')).then(|| id.to_owned())
}

/// What was wrong with a client certificate the handshake refused: one kind per cause, so that
/// each is counted (and its first occurrence from a peer logged) on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CertificateProblem {
    /// Past its `notAfter`.
    Expired,
    /// Before its `notBefore`.
    NotYetValid,
    /// Not issued by the fleet CA (another CA, or self-signed).
    UnknownIssuer,
    /// Not issued for client authentication (extended key usage).
    WrongUsage,
    /// Its signature does not verify.
    BadSignature,
    /// Revoked, or its revocation status could not be established.
    Revoked,
    /// The client sent no certificate where one was required.
    Missing,
    /// Anything else (bad encoding, an unsupported critical extension or algorithm, …).
    Other,
}

impl CertificateProblem {
    /// Every kind, in order.
    pub const ALL: [CertificateProblem; 8] = [
        CertificateProblem::Expired,
        CertificateProblem::NotYetValid,
        CertificateProblem::UnknownIssuer,
        CertificateProblem::WrongUsage,
        CertificateProblem::BadSignature,
        CertificateProblem::Revoked,
        CertificateProblem::Missing,
        CertificateProblem::Other,
    ];

    /// The kind of a certificate error from the verifier (webpki, through rustls).
    pub fn of(e: &rustls::CertificateError) -> Self {
        use rustls::CertificateError as C;
        match e {
            C::Expired | C::ExpiredContext { .. } => CertificateProblem::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => CertificateProblem::NotYetValid,
            C::UnknownIssuer => CertificateProblem::UnknownIssuer,
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => CertificateProblem::WrongUsage,
            C::BadSignature => CertificateProblem::BadSignature,
            C::Revoked
            | C::UnknownRevocationStatus
            | C::ExpiredRevocationList
            | C::ExpiredRevocationListContext { .. } => CertificateProblem::Revoked,
            _ => CertificateProblem::Other,
        }
    }
}

/// The kind of a failed handshake, for counting refusals: one kind per cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Plaintext or garbage on the TLS port.
    NotTls,
    /// The client's certificate was refused, and why.
    Certificate(CertificateProblem),
    /// The client does not offer TLS 1.3.
    TlsVersion,
    /// The client shares no cipher suite, key exchange group, signature scheme or application
    /// protocol (`h2`) with the agent.
    Incompatible,
    /// Anything else (the client went away mid-handshake, …).
    Other,
}

fn rustls_error(err: &std::io::Error) -> Option<&rustls::Error> {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
}

/// Classifies a failed handshake by the rustls error it ended with.
pub fn classify_handshake_error(err: &std::io::Error) -> HandshakeFailure {
    use rustls::PeerIncompatible as P;
    match rustls_error(err) {
        Some(rustls::Error::InvalidCertificate(c)) => {
            HandshakeFailure::Certificate(CertificateProblem::of(c))
        }
        Some(rustls::Error::NoCertificatesPresented) => {
            HandshakeFailure::Certificate(CertificateProblem::Missing)
        }
        Some(rustls::Error::InvalidMessage(_)) => HandshakeFailure::NotTls,
        Some(rustls::Error::PeerIncompatible(
            P::SupportedVersionsExtensionRequired
            | P::Tls12NotOffered
            | P::Tls12NotOfferedOrEnabled
            | P::ServerDoesNotSupportTls12Or13
            | P::ServerTlsVersionIsDisabledByOurConfig
            | P::Tls13RequiredForQuic,
        )) => HandshakeFailure::TlsVersion,
        Some(rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol) => {
            HandshakeFailure::Incompatible
        }
        _ => HandshakeFailure::Other,
    }
}

/// A short reason for a refused handshake, as a sentence, safe to log (no key material is ever
/// in it).
pub fn handshake_refusal_reason(err: &std::io::Error) -> String {
    match rustls_error(err) {
        Some(rustls::Error::InvalidCertificate(c)) => {
            format!(
                "client certificate refused: {}",
                certificate_refusal(c, jex_attest::clock::now_unix_secs())
            )
        }
        Some(rustls::Error::InvalidMessage(_)) => {
            "not a TLS client (plaintext or garbage on the TLS port)".to_owned()
        }
        Some(rustls::Error::PeerIncompatible(p)) => {
            format!("client is incompatible (TLS 1.3 required): {p:?}")
        }
        Some(other) => other.to_string(),
        None if err.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the client closed the connection during the handshake".to_owned()
        }
        None => err.to_string(),
    }
}

/// A Unix time as RFC 3339 (UTC), or the raw seconds when out of range.
fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} s after the Unix epoch"))
}

/// Why a client certificate was refused, as a sentence; `now` (Unix seconds) stands in for the
/// verification time when the error does not carry it.
pub fn certificate_refusal(e: &rustls::CertificateError, now: u64) -> String {
    use rustls::CertificateError as C;
    match e {
        C::ExpiredContext { time, not_after } => format!(
            "certificate expired at {}, now {}",
            rfc3339(not_after.as_secs()),
            rfc3339(time.as_secs())
        ),
        C::Expired => format!("certificate expired, now {}", rfc3339(now)),
        C::NotValidYetContext { time, not_before } => format!(
            "certificate not valid before {}, now {}",
            rfc3339(not_before.as_secs()),
            rfc3339(time.as_secs())
        ),
        C::NotValidYet => format!("certificate not valid yet, now {}", rfc3339(now)),
        C::UnknownIssuer => "certificate not issued by the fleet CA (unknown issuer)".to_owned(),
        C::BadSignature => "certificate signature does not verify".to_owned(),
        C::BadEncoding => "certificate is not valid DER".to_owned(),
        C::Revoked => "certificate revoked".to_owned(),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "certificate not issued for client authentication".to_owned()
        }
        C::UnhandledCriticalExtension => {
            "certificate has an unsupported critical extension".to_owned()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_id_comes_from_the_spiffe_host_uri() {
        assert_eq!(
            host_id_from_uri("spiffe://fleet.example/host/h-0042").as_deref(),
            Some("h-0042")
        );
        assert_eq!(host_id_from_uri("spiffe://fleet.example/controller"), None);
        assert_eq!(host_id_from_uri("spiffe://fleet.example/host/"), None);
        assert_eq!(host_id_from_uri("https://fleet.example/host/h1"), None);
    }

    #[test]
    fn an_expired_certificate_is_a_sentence_with_both_times() {
        use rustls::pki_types::UnixTime;
        let e = rustls::CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_767_225_600)),
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_764_547_200)),
        };
        assert_eq!(
            certificate_refusal(&e, 0),
            "certificate expired at 2025-12-01T00:00:00Z, now 2026-01-01T00:00:00Z"
        );
        let e = rustls::CertificateError::NotValidYetContext {
            time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_764_547_200)),
            not_before: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_767_225_600)),
        };
        assert_eq!(
            certificate_refusal(&e, 0),
            "certificate not valid before 2026-01-01T00:00:00Z, now 2025-12-01T00:00:00Z"
        );
        assert_eq!(
            certificate_refusal(&rustls::CertificateError::Expired, 0),
            "certificate expired, now 1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn handshake_failures_are_classified_and_told_in_words() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let unknown = io(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert_eq!(
            classify_handshake_error(&unknown),
            HandshakeFailure::Certificate(CertificateProblem::UnknownIssuer)
        );
        assert_eq!(
            handshake_refusal_reason(&unknown),
            "client certificate refused: certificate not issued by the fleet CA (unknown issuer)"
        );
        let garbage = io(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        assert_eq!(classify_handshake_error(&garbage), HandshakeFailure::NotTls);
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(classify_handshake_error(&eof), HandshakeFailure::Other);
        assert_eq!(
            handshake_refusal_reason(&eof),
            "the client closed the connection during the handshake"
        );
    }

    #[test]
    fn each_cause_of_a_refused_handshake_is_a_kind_of_its_own() {
        use rustls::CertificateError as C;
        use rustls::pki_types::UnixTime;
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1));
        let cert = |c: C| classify_handshake_error(&io(rustls::Error::InvalidCertificate(c)));
        let kind = HandshakeFailure::Certificate;
        assert_eq!(cert(C::Expired), kind(CertificateProblem::Expired));
        assert_eq!(
            cert(C::ExpiredContext {
                time: at,
                not_after: at
            }),
            kind(CertificateProblem::Expired)
        );
        assert_eq!(
            cert(C::NotValidYetContext {
                time: at,
                not_before: at
            }),
            kind(CertificateProblem::NotYetValid)
        );
        assert_eq!(
            cert(C::UnknownIssuer),
            kind(CertificateProblem::UnknownIssuer)
        );
        assert_eq!(
            cert(C::InvalidPurpose),
            kind(CertificateProblem::WrongUsage)
        );
        assert_eq!(
            cert(C::BadSignature),
            kind(CertificateProblem::BadSignature)
        );
        assert_eq!(cert(C::Revoked), kind(CertificateProblem::Revoked));
        assert_eq!(cert(C::BadEncoding), kind(CertificateProblem::Other));
        assert_eq!(
            classify_handshake_error(&io(rustls::Error::NoCertificatesPresented)),
            kind(CertificateProblem::Missing)
        );
        assert_eq!(
            classify_handshake_error(&io(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::SupportedVersionsExtensionRequired
            ))),
            HandshakeFailure::TlsVersion
        );
        assert_eq!(
            classify_handshake_error(&io(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::NoCipherSuitesInCommon
            ))),
            HandshakeFailure::Incompatible
        );
        assert_eq!(
            classify_handshake_error(&io(rustls::Error::NoApplicationProtocol)),
            HandshakeFailure::Incompatible
        );
    }

    #[test]
    fn key_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.pem");
        std::fs::write(&path, "x").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load_key(&path).expect_err("0644 key refused").to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
