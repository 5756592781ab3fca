//! Exit codes (sysexits(3)) and the one exhaustive map from every failure of `run`,
//! `check-config`, `erase-plan` and `status` to its code.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use jex_erase::EraseError;
use jex_platform::blockdev::BlockDevError;

use crate::config::{Config, ConfigError, Place};
use crate::local_socket::LocalSocketError;
use crate::tls::TlsError;

/// Exit codes (sysexits(3)): the one table of every command, documented in the README.
///
/// launchd relaunches the agent after any exit (`KeepAlive`), so for `run` the code says why it
/// stopped (`launchctl print` shows it as the last exit code); the package's postinstall reads
/// the code of `check-config`. 78 (`EX_CONFIG`) is left to launchd itself, which reports it when
/// it cannot spawn the job at all (a missing working directory, an unwritable log path), so that
/// an agent refusing its configuration (64) is never mistaken for a job launchd could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// 0: done; for `run`, stopped on SIGTERM or SIGINT.
    Ok = 0,
    /// 1: a command failed at run time (a `ctl` call, a certificate that does not verify).
    Failure = 1,
    /// 64 (`EX_USAGE`): a bad command line, or a configuration the agent refuses: TOML and
    /// validation errors, TLS material that does not load, an erase target that is missing,
    /// not a file or device, the system's own disk, or the same as another.
    Usage = 64,
    /// 69 (`EX_UNAVAILABLE`): what the agent needs is held by another process (the listen
    /// address; the state directory, by another agent), or no agent answers (`status`).
    Unavailable = 69,
    /// 70 (`EX_SOFTWARE`): an internal error; report it.
    Software = 70,
    /// 71 (`EX_OSERR`): the OS refused what the agent needs to run (threads, host facts,
    /// counters).
    OsError = 71,
    /// 74 (`EX_IOERR`): a file or device could not be used (state directory, spool, erase
    /// journal, log directory, status socket, an erase target that cannot be read).
    IoError = 74,
    /// 77 (`EX_NOPERM`): this user may not do it: `erase-plan` and `status` (the status socket
    /// is root-only), `check-config` of files only root can read.
    NoPermission = 77,
}

impl From<ExitKind> for ExitCode {
    fn from(k: ExitKind) -> Self {
        ExitCode::from(k as u8)
    }
}

/// Why `run`, `check-config`, `erase-plan` or `status` failed. Errors about what the
/// configuration names carry its [`Place`] and key, so that they read like configuration errors:
/// `agent.toml:7: key `tls.key`: reading /…/agent.key: No such file or directory`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS material named by the configuration does not load.
    #[error("{place}: key `{key}`")]
    Tls {
        /// Where the key is written.
        place: Place,
        /// `tls.cert`, `tls.key` or `tls.client_ca`.
        key: &'static str,
        /// The cause.
        #[source]
        source: Box<TlsError>,
    },
    /// An erase target named by the configuration cannot be erased on this host.
    #[error("{place}: key `{key}`")]
    Target {
        /// Where the key is written.
        place: Place,
        /// `erase.targets[N].device`.
        key: String,
        /// What is wrong with it.
        #[source]
        problem: Box<TargetProblem>,
    },
    /// A listen address cannot be bound.
    #[error("{place}: key `{key}`: cannot listen on {addr}")]
    Listen {
        /// Where the key is written (or its table, when left to the default).
        place: Place,
        /// `server.listen` or `metrics.listen`.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent already runs and holds a listen address.
    #[error("{place}: key `{key}`: {addr} is held by the running agent (pid {pid}): stop it first")]
    AgentRunning {
        /// Where the key is written.
        place: Place,
        /// `server.listen` or `metrics.listen`.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The running agent's process id.
        pid: u32,
    },
    /// The command needs the root-only status socket.
    #[error("{command} needs root (the agent's status socket is root-only): run it with sudo")]
    NeedsRoot {
        /// `erase-plan` or `status`.
        command: &'static str,
    },
    /// No agent answers on the status socket.
    #[error("no agent is running: nothing answers on {}", socket.display())]
    NoAgent {
        /// The socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: LocalSocketError,
    },
    /// The log file.
    #[error("starting the log")]
    Logging(#[from] crate::logging::LoggingError),
    /// The async runtime.
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    /// Host facts.
    #[error("reading host facts")]
    Platform(#[from] jex_platform::PlatformError),
    /// The reflection service.
    #[error("building the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The erase service.
    #[error("opening the erase service")]
    Erase(#[from] EraseError),
    /// The erase certificate signer.
    #[error("loading the erase certificate signer")]
    Signer(#[from] jex_attest::AttestError),
    /// The local status socket.
    #[error(transparent)]
    Status(#[from] LocalSocketError),
    /// The telemetry spool.
    #[error("opening the telemetry spool")]
    Spool(#[from] jex_spool::SpoolError),
    /// The sampler.
    #[error("starting the telemetry sampler")]
    Sampler(#[from] crate::telemetry::SampleError),
    /// The hub.
    #[error("starting telemetry")]
    Hub(#[from] crate::telemetry::hub::HubError),
    /// A state directory.
    #[error("creating state directory {path}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What is wrong with an erase target, found on the host.
#[derive(Debug, thiserror::Error)]
pub enum TargetProblem {
    /// Nothing at the path (a dangling symlink included).
    #[error("{} does not exist", path.display())]
    Missing {
        /// The configured path.
        path: PathBuf,
    },
    /// The path names the system's own disk (the device of `/`, `/boot` or `/boot/efi`, or a
    /// disk under one of them).
    #[error("{} is refused: {reason}; the erase never touches the system's disk", path.display())]
    System {
        /// The configured path.
        path: PathBuf,
        /// Which system filesystem it holds.
        reason: String,
    },
    /// The path cannot be used as a target (not a file or device, unreadable).
    #[error(transparent)]
    Unusable(BlockDevError),
}

impl AppError {
    /// The exit code of this failure: the one map from errors to [`ExitKind`].
    pub fn exit_kind(&self) -> ExitKind {
        match self {
            // --- The configuration and what it names: fix agent.toml (64), unless this user
            // may not read it (77). ---
            AppError::Config(ConfigError::Read { source, .. }) => {
                denied_or(source, ExitKind::Usage)
            }
            AppError::Config(ConfigError::Parse { .. } | ConfigError::Invalid { .. }) => {
                ExitKind::Usage
            }
            AppError::Tls { source, .. } => match source.as_ref() {
                TlsError::Read { source, .. } => denied_or(source, ExitKind::Usage),
                TlsError::Pem { .. }
                | TlsError::KeyPermissions { .. }
                | TlsError::Rustls { .. }
                | TlsError::Verifier { .. }
                | TlsError::NoHostId { .. }
                | TlsError::X509 { .. } => ExitKind::Usage,
            },
            AppError::Target { problem, .. } => match problem.as_ref() {
                TargetProblem::Missing { .. } | TargetProblem::System { .. } => ExitKind::Usage,
                TargetProblem::Unusable(e) => match e {
                    BlockDevError::Unsupported { .. }
                    | BlockDevError::BadSize { .. }
                    | BlockDevError::SystemDevice { .. } => ExitKind::Usage,
                    BlockDevError::Open { source, .. } | BlockDevError::Stat { source, .. } => {
                        denied_or(source, ExitKind::IoError)
                    }
                    BlockDevError::NotPermitted { .. } => ExitKind::NoPermission,
                    BlockDevError::Busy { .. } => ExitKind::Unavailable,
                    BlockDevError::Geometry { .. }
                    | BlockDevError::MountTable { .. }
                    | BlockDevError::IdentityChanged { .. } => ExitKind::IoError,
                },
            },
            // The signer loads the same files as TLS, which were checked first.
            AppError::Signer(_) => ExitKind::Usage,
            AppError::Erase(EraseError::Config(_)) => ExitKind::Usage,
            // --- Held by another process, or nobody there (69). ---
            AppError::AgentRunning { .. } | AppError::NoAgent { .. } => ExitKind::Unavailable,
            AppError::Erase(EraseError::Locked { .. }) => ExitKind::Unavailable,
            AppError::Listen { source, .. } => match source.kind() {
                ErrorKind::AddrInUse => ExitKind::Unavailable,
                ErrorKind::PermissionDenied => ExitKind::NoPermission,
                // Not an address of this host: the configuration is wrong for it.
                ErrorKind::AddrNotAvailable => ExitKind::Usage,
                _ => ExitKind::OsError,
            },
            // --- Root only (77). ---
            AppError::NeedsRoot { .. } => ExitKind::NoPermission,
            // --- Files the agent keeps (74): everything opening the erase service can meet
            // besides the two above is its state on disk (directories, lock, journal, keys). ---
            AppError::Erase(_) | AppError::Spool(_) | AppError::Logging(_) => ExitKind::IoError,
            AppError::StateDir { source, .. } => denied_or(source, ExitKind::IoError),
            AppError::Status(e) => match e {
                LocalSocketError::Bind { source, .. }
                | LocalSocketError::Connect { source, .. } => denied_or(source, ExitKind::IoError),
                LocalSocketError::Read { .. } => ExitKind::IoError,
                LocalSocketError::Thread(_) => ExitKind::OsError,
                // The agent and this command do not understand each other.
                LocalSocketError::Refused { .. } | LocalSocketError::Parse { .. } => {
                    ExitKind::Software
                }
            },
            // --- The OS (71). ---
            AppError::Runtime(_)
            | AppError::Platform(_)
            | AppError::Sampler(_)
            | AppError::Hub(_) => ExitKind::OsError,
            // --- A bug (70). ---
            AppError::Reflection(_) => ExitKind::Software,
        }
    }
}

/// 77 when the OS said "permission denied", else `otherwise`.
pub(crate) fn denied_or(source: &std::io::Error, otherwise: ExitKind) -> ExitKind {
    if source.kind() == ErrorKind::PermissionDenied {
        ExitKind::NoPermission
    } else {
        otherwise
    }
}

/// A TLS error, placed at the configuration key of the file at fault.
pub(crate) fn tls_error(config: &Config, source: TlsError) -> AppError {
    let tls = &config.tls;
    let key = match &source {
        TlsError::KeyPermissions { .. } => "tls.key",
        TlsError::Verifier { .. } => "tls.client_ca",
        TlsError::NoHostId { .. } | TlsError::X509 { .. } => "tls.cert",
        TlsError::Read { path, .. }
        | TlsError::Pem { path, .. }
        | TlsError::Rustls { path, .. } => {
            if *path == tls.key {
                "tls.key"
            } else if *path == tls.client_ca {
                "tls.client_ca"
            } else {
                "tls.cert"
            }
        }
    };
    AppError::Tls {
        place: config.source.place(key),
        key,
        source: Box::new(source),
    }
}
