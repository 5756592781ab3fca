//! The relay's TLS client settings, for both of its TLS peers: the agents (mTLS with the
//! observer certificate, ALPN `h2`) and an `https://` remote_write receiver (its CA, a client
//! certificate when the receiver asks for one, ALPN `http/1.1`).
//!
//! Either way: TLS 1.3 only, rustls on ring, the configured CA file as the only root (no system
//! roots), and no setting that turns the certificate check off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file was read but is not what it should be.
    #[error("{}: {message}", path.display())]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        path: path.to_owned(),
        source,
    })
}

fn bad(path: &Path, message: impl Into<String>) -> TlsFileError {
    TlsFileError::Bad {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// A client configuration trusting only the certificates of `ca`, presenting `identity`
/// (certificate chain file, key file) when given, and offering `alpn`.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    alpn: &[u8],
) -> Result<Arc<rustls::ClientConfig>, TlsFileError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(ca)?) {
        let cert = cert.map_err(|e| bad(ca, format!("not a PEM certificate: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(ca, format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad(ca, "no certificate in the file"));
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| bad(ca, e.to_string()))?
    .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(&read(cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(cert, format!("not a PEM certificate: {e}")))?;
            if chain.is_empty() {
                return Err(bad(cert, "no certificate in the file"));
            }
            let key_pem = zeroize::Zeroizing::new(read(key)?);
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|_| bad(key, "not a PEM private key"))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| bad(cert, format!("certificate and key do not go together: {e}")))?
        }
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}
