//! What can go wrong on either side of the local socket.

use std::path::PathBuf;

/// The status socket failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalSocketError {
    /// Binding the socket failed.
    #[error("binding status socket {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error("connecting to status socket {path} (is the agent running, and are you root?)")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The answer was not a status document.
    #[error("reading status from {path}")]
    Read {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent refused the request.
    #[error("the agent at {path} refused the request: {message}")]
    Refused {
        /// The socket path.
        path: PathBuf,
        /// What it said.
        message: String,
    },
    /// The status thread could not start.
    #[error("starting the status socket thread")]
    Thread(#[source] std::io::Error),
    /// The answer did not parse.
    #[error("status from {path} is not valid JSON")]
    Parse {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl LocalSocketError {
    /// No agent runs: the socket is missing, or nothing listens on it. What `erase-plan` plans
    /// offline for; any other failure means an agent may be there.
    pub fn no_agent(&self) -> bool {
        matches!(self, LocalSocketError::Connect { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused))
    }

    /// The socket (or its directory) exists but this user may not open it: it is root-only.
    pub fn not_permitted(&self) -> bool {
        matches!(self, LocalSocketError::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied)
    }
}
