//! Wiring: the one place that builds every part of the agent from the configuration and
//! connects them. Nothing else constructs platform services, so tests can run a real agent
//! in-process ([`start`]) or as a process (`jex-agent run`).
//!
//! Before anything starts, [`preflight`] checks what the configuration names on this host (TLS
//! material, erase targets, the listen address); `jex-agent check-config` runs the same checks,
//! so both stop on the same problem with the same message and exit code ([`AppError::exit_kind`],
//! the one map from failures to [`ExitKind`]).
//!
//! Signals: SIGHUP reloads the TLS certificate and key (open streams keep running); SIGTERM
//! and SIGINT stop telemetry (its last record synced and sent on live streams), stop accepting,
//! end open streams (clients resume from their last `seq`) and exit within [`SHUTDOWN_GRACE`].
//! An erase in progress is not waited for: its journal resumes it at the next start.
//!
//! A first start on a full disk (`ENOSPC`, `EDQUOT`) does not exit: the spool starts detached
//! (telemetry live only, not durable) and, when the erase state directory cannot be created,
//! the erase service is unavailable ([`Erase::Unavailable`]): `GetHost` and the status socket
//! are served, erase calls are refused with the directory and the OS error, and a WARN line
//! says so.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use jex_erase::EraseError;
use jex_platform::blockdev::{BlockDevError, SystemDevices};

use crate::config::{Config, ConfigError, Place};
use crate::server::{AgentService, Erase, HostFacts, auth::AuthLayer, listener};
use crate::status::StatusError;
use crate::tls::{ServerTls, TlsError};

/// How long the agent drains on SIGTERM before it exits anyway. The launchd plist's
/// `ExitTimeOut` is larger than this.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// How often the TLS files are checked for replacement (besides SIGHUP).
pub const TLS_FILE_POLL: Duration = Duration::from_secs(5);

/// Reloads the TLS configuration when its files change on disk, so a certificate manager that
/// rewrites them needs no signal. A failed reload (e.g. the certificate written before its key)
/// keeps the previous configuration and is retried at the next change.
fn watch_tls_files(
    tls: Arc<ServerTls>,
    files: crate::config::TlsConfig,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut last = crate::tls::files_stamp(&files);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TLS_FILE_POLL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let now = crate::tls::files_stamp(&files);
            if now == last {
                continue;
            }
            last = now;
            match tls.reload() {
                Ok(()) => tracing::info!("TLS files changed on disk: certificate and key reloaded"),
                Err(e) => tracing::warn!(
                    error = %error_chain(&e),
                    "TLS files changed on disk but do not load; keeping the previous certificate"
                ),
            }
        }
    });
}

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
    /// The listen address cannot be bound.
    #[error("{place}: key `server.listen`: cannot listen on {addr}")]
    Listen {
        /// Where the key is written (or its table, when left to the default).
        place: Place,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent already runs and holds the listen address.
    #[error(
        "{place}: key `server.listen`: {addr} is held by the running agent (pid {pid}): stop it first"
    )]
    AgentRunning {
        /// Where the key is written.
        place: Place,
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
        source: StatusError,
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
    Status(#[from] StatusError),
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
                StatusError::Bind { source, .. } | StatusError::Connect { source, .. } => {
                    denied_or(source, ExitKind::IoError)
                }
                StatusError::Read { .. } => ExitKind::IoError,
                StatusError::Thread(_) => ExitKind::OsError,
                // The agent and this command do not understand each other.
                StatusError::Refused { .. } | StatusError::Parse { .. } => ExitKind::Software,
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
fn denied_or(source: &std::io::Error, otherwise: ExitKind) -> ExitKind {
    if source.kind() == ErrorKind::PermissionDenied {
        ExitKind::NoPermission
    } else {
        otherwise
    }
}

/// A TLS error, placed at the configuration key of the file at fault.
fn tls_error(config: &Config, source: TlsError) -> AppError {
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

/// The mount points whose devices are the system's own. A target on one of them (or on a disk
/// under one) is a configuration error. A target refused only because a filesystem on it is
/// mounted now (the tenant's, during the tenancy) is a state, not a configuration error: the
/// erase refuses it until it is unmounted, and `check-config` warns about it.
const SYSTEM_MOUNT_POINTS: [&str; 3] = ["/", "/boot", "/boot/efi"];

/// The erase's rails, limited to the system's own filesystems.
fn system_disk_rails() -> SystemDevices {
    let system: Vec<(u64, String)> = SYSTEM_MOUNT_POINTS
        .iter()
        .filter_map(|mount_point| {
            let meta = std::fs::metadata(mount_point).ok()?;
            Some((
                meta.dev(),
                format!("it holds the system filesystem mounted at {mount_point}"),
            ))
        })
        .collect();
    SystemDevices::from_parts(&system, &[])
}

/// Checks every erase target against this host: it exists, it is not the system's disk (only
/// `stat`ed: such a device is never opened), it is a file or device the erase can open, and no
/// two targets name the same one through different paths. Devices are opened read-only.
pub fn check_targets(config: &Config) -> Result<(), AppError> {
    let system = system_disk_rails();
    for (index, target) in config.erase.targets.iter().enumerate() {
        let key = format!("erase.targets[{index}].device");
        let refuse = |problem| AppError::Target {
            place: config.source.place(&key),
            key: key.clone(),
            problem: Box::new(problem),
        };
        let path = &target.device;
        if let Err(source) = std::fs::metadata(path) {
            return Err(refuse(if source.kind() == ErrorKind::NotFound {
                TargetProblem::Missing { path: path.clone() }
            } else {
                TargetProblem::Unusable(BlockDevError::Stat {
                    path: path.clone(),
                    source,
                })
            }));
        }
        match system.refusal_for_path(path) {
            Ok(None) => {}
            Ok(Some(reason)) => {
                return Err(refuse(TargetProblem::System {
                    path: path.clone(),
                    reason,
                }));
            }
            Err(e) => return Err(refuse(TargetProblem::Unusable(e))),
        }
        jex_platform::blockdev::probe(path).map_err(|e| refuse(TargetProblem::Unusable(e)))?;
    }
    config
        .erase
        .check_distinct_targets(|path| jex_platform::blockdev::probe(path).ok())
        .map_err(|e| {
            let also = e.other_setting().map(|s| s.to_string());
            AppError::Config(config.source.invalid(
                &e.setting().to_string(),
                also.as_deref(),
                e.to_string(),
            ))
        })
}

/// Who holds the listen address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenCheck {
    /// Nobody: the agent can bind it.
    Free,
    /// The running agent, which answered on its status socket with this address.
    HeldByAgent {
        /// Its process id.
        pid: u32,
    },
}

/// Binds the listen address and lets it go. When it is in use, asks the status socket whether
/// the agent itself holds it (possible as root only; otherwise it reads as another process).
fn check_listen(config: &Config) -> Result<ListenCheck, AppError> {
    let addr = config.server.listen;
    match std::net::TcpListener::bind(addr) {
        Ok(listener) => {
            drop(listener);
            Ok(ListenCheck::Free)
        }
        Err(source) => {
            if source.kind() == ErrorKind::AddrInUse
                && let Ok(snapshot) = crate::status::query_blocking(&config.server.status_socket)
                && snapshot.listen.parse::<SocketAddr>().ok() == Some(addr)
            {
                return Ok(ListenCheck::HeldByAgent { pid: snapshot.pid });
            }
            Err(AppError::Listen {
                place: config.source.place("server.listen"),
                addr,
                source,
            })
        }
    }
}

/// What [`preflight`] found that does not stop `check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    /// The host id in the agent certificate.
    pub host_id: String,
    /// Who holds the listen address.
    pub listen: ListenCheck,
}

/// The checks that stop `run` before anything starts, in this order: the TLS material loads
/// (certificate chain, key with mode 0600, client CA, host id in the certificate); every erase
/// target passes [`check_targets`]; the listen address can be bound. `check-config` runs the
/// same checks, so each failure is the one `run` would stop on, with the same exit code. A
/// listen address held by the running agent itself is not a failure here: `run` refuses it,
/// `check-config` reports it.
pub fn preflight(config: &Config) -> Result<Preflight, AppError> {
    crate::tls::server_config(&config.tls).map_err(|e| tls_error(config, e))?;
    let host_id =
        crate::tls::host_id_from_cert(&config.tls.cert).map_err(|e| tls_error(config, e))?;
    check_targets(config)?;
    let listen = check_listen(config)?;
    Ok(Preflight { host_id, listen })
}

fn create_private_dir(path: &Path) -> Result<(), AppError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| AppError::StateDir {
        path: path.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// Whether `e` comes from a full file system (`ENOSPC`, `EDQUOT`) anywhere in its chain.
fn is_out_of_space(e: &AppError) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// Builds each target's key-destruction backend from its config (absolute tool paths).
pub fn key_destroyer_factory(erase: &jex_erase::EraseConfig) -> jex_erase::KeyDestroyerFactory {
    use jex_erase::keys::{KeyDestroyer, apfs::ApfsVolume, luks2::Luks2};
    use jex_erase::{EraseError, TargetConfig, TargetKeys};
    let tools = erase.tools.clone();
    let factory = move |t: &TargetConfig| -> Result<Box<dyn KeyDestroyer>, EraseError> {
        let keys_err = |source| EraseError::Keys {
            target: t.name.clone(),
            source,
        };
        Ok(match &t.keys {
            TargetKeys::Luks2 { luks_uuid } => Box::new(
                Luks2::new(
                    t.name.clone(),
                    t.device.clone(),
                    luks_uuid,
                    tools.cryptsetup.clone(),
                )
                .map_err(keys_err)?,
            ),
            TargetKeys::ApfsVolume { apfs_volume_uuid } => Box::new(
                ApfsVolume::new(t.name.clone(), apfs_volume_uuid, tools.diskutil.clone())
                    .map_err(keys_err)?,
            ),
        })
    };
    Box::new(factory)
}

/// The erase plan as the JSON document `jex-agent erase-plan` renders.
pub fn plan_json(plan: &[jex_erase::PlannedTarget]) -> serde_json::Value {
    serde_json::json!({ "targets": plan.iter().map(|t| serde_json::json!({
        "name": t.name, "backend": t.backend, "device": t.device, "size_bytes": t.size_bytes,
        "identity": t.identity, "ready": t.ready,
        "checks": t.checks.iter().map(|c| serde_json::json!({"check": c.check, "passed": c.passed, "detail": c.detail})).collect::<Vec<_>>(),
    })).collect::<Vec<_>>() })
}

/// Opens the erase service: the agent's TLS key signs certificates; each target's backend is
/// built from its config. An unfinished operation in the journal resumes here.
fn open_erase(config: &Config, facts: &HostFacts) -> Result<jex_erase::EraseService, AppError> {
    use jex_erase::EraseDeps;
    let signer = jex_attest::FileSigner::load(&config.tls.key, &config.tls.cert)?;
    let host = jex_attest::HostIdentity {
        host_id: facts.host_id.clone(),
        hardware_uuid: facts.hardware_uuid.clone(),
        serial_number: facts.serial_number.clone(),
        model: facts.model.clone(),
        os: format!("{} {}", facts.os_name, facts.os_version),
        agent_version: crate::AGENT_VERSION.to_owned(),
    };
    let deps = EraseDeps {
        signer: Arc::new(signer),
        host,
        key_destroyer_factory: key_destroyer_factory(&config.erase),
    };
    Ok(jex_erase::EraseService::open(config.erase.clone(), deps)?)
}

/// Answers `jex-agent status` and `jex-agent erase-plan` on the local socket.
fn status_responder(
    facts: &HostFacts,
    listen: SocketAddr,
    config: &Config,
    hub: Arc<crate::telemetry::hub::Hub>,
    erase: crate::server::Erase,
    streams: Arc<crate::server::Streams>,
    connections: Arc<crate::server::conn::Tracker>,
) -> crate::status::Responder {
    use crate::status::{
        ConnectionStatus, EraseStatus, Query, StatusSnapshot, StreamStatus, TelemetryStatus,
    };
    let host_id = facts.host_id.clone();
    let started = std::time::Instant::now();
    let interval_ms = config.telemetry.interval_ms;
    Arc::new(move |query| match (query, &erase) {
        (Query::Plan, Erase::Ready(erase)) => match erase.plan() {
            Ok(plan) => plan_json(&plan),
            Err(e) => serde_json::json!({ "error": error_chain(&e) }),
        },
        (Query::Plan, Erase::Unavailable(reason)) => {
            serde_json::json!({ "error": format!("erase unavailable: {reason}") })
        }
        (Query::Status, erase) => {
            let stats = hub.stats();
            let (lifecycle, erase_unavailable) = match erase {
                Erase::Ready(erase) => (erase.lifecycle(), None),
                Erase::Unavailable(reason) => {
                    (jex_erase::Lifecycle::Serving, Some(reason.to_string()))
                }
            };
            let lifecycle = crate::server::convert::lifecycle_state(lifecycle);
            let ready = match erase {
                Erase::Ready(erase) => Some(erase),
                Erase::Unavailable(_) => None,
            };
            let erase_view = ready.and_then(|erase| erase.watch(None).ok()).map(|rx| {
                let op = rx.borrow().clone();
                EraseStatus {
                    operation_id: op.operation_id,
                    phase: op.phase.as_str().to_owned(),
                    outcome: op.outcome.map(|o| o.as_str().to_owned()),
                    bytes_done: op.bytes_done,
                    bytes_total: op.bytes_total,
                    rate_bytes_per_second: op.rate_bytes_per_second,
                    eta_seconds: op.eta_seconds,
                    failure_reason: op.failure_reason,
                }
            });
            let snap = StatusSnapshot {
                agent_version: crate::AGENT_VERSION.to_owned(),
                pid: std::process::id(),
                host_id: host_id.clone(),
                listen: listen.to_string(),
                lifecycle: lifecycle
                    .as_str_name()
                    .trim_start_matches("LIFECYCLE_STATE_")
                    .to_owned(),
                uptime_secs: started.elapsed().as_secs(),
                streams: streams
                    .list()
                    .into_iter()
                    .map(|s| StreamStatus {
                        peer: s.peer.id,
                        role: s.peer.role.as_str().to_owned(),
                        addr: s.peer.addr,
                        open_secs: s.opened.elapsed().as_secs(),
                        last_seq_sent: s.last_seq_sent,
                    })
                    .collect(),
                connections: ConnectionStatus {
                    open: connections.open(),
                    max: connections.caps().total,
                    max_per_peer: connections.caps().per_peer,
                },
                telemetry: TelemetryStatus {
                    interval_ms,
                    last_seq: stats.last_seq.unwrap_or(0),
                    last_sample_unix_ms: stats.last_sample_time_unix_ms.unwrap_or(0),
                    spool_first_seq: stats.spool.first_seq.unwrap_or(0),
                    spool_records: stats.spool.records,
                    spool_bytes: stats.spool.bytes,
                    corrupt_records: stats.spool.corrupt_records,
                    evicted_records: stats.spool.evicted_records,
                    not_durable: stats.spool.not_durable,
                },
                erase: erase_view,
                erase_unavailable,
            };
            serde_json::to_value(&snap).unwrap_or_default()
        }
    })
}

/// A running agent.
pub struct RunningAgent {
    local_addr: SocketAddr,
    hub: Arc<crate::telemetry::hub::Hub>,
    tls: Arc<ServerTls>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RunningAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningAgent")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl RunningAgent {
    /// The address the gRPC listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Re-reads the TLS files (what SIGHUP does).
    pub fn reload_tls(&self) -> Result<(), crate::tls::TlsError> {
        self.tls.reload()
    }

    /// Stops telemetry (its last record synced and published, so live streams send it and end),
    /// then stops accepting, ends the other open streams and waits up to [`SHUTDOWN_GRACE`].
    pub async fn shutdown(self) {
        if let Err(e) = self.hub.shutdown().await {
            tracing::error!(error = %error_chain(&e), "telemetry did not stop cleanly");
        }
        let _ = self.shutdown.send(true);
        let mut server = self.server;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
            .await
            .is_err()
        {
            tracing::warn!(
                grace_secs = SHUTDOWN_GRACE.as_secs(),
                "drain took too long; stopping anyway"
            );
            server.abort();
        }
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How often the server pings a client over HTTP/2, and how long it waits for the answer.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Raises the open-file limit and sizes the network edge to it: the total connection cap keeps
/// [`FD_RESERVE`](crate::server::conn::FD_RESERVE) descriptors for everything else.
fn edge(config: &Config, tls: Arc<ServerTls>) -> listener::Edge {
    use crate::server::conn::{Caps, Deadlines, Tracker, connection_budget};
    let nofile = match jex_platform::limits::raise_nofile() {
        Ok(raised) => {
            let l = raised.limit;
            if let Some(e) = raised.refused {
                tracing::warn!(soft = l.soft, hard = l.hard, error = %e, "could not raise the open-file limit");
            } else {
                tracing::info!(
                    before = l.before,
                    soft = l.soft,
                    hard = l.hard,
                    "open-file limit"
                );
            }
            l.soft
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the open-file limit; assuming 256");
            256
        }
    };
    let limits = &config.server.limits;
    let configured = limits.max_connections.get();
    let total = connection_budget(configured, nofile);
    if total < configured {
        tracing::warn!(
            configured,
            max_connections = total,
            open_file_limit = nofile,
            "server.limits.max_connections lowered to leave room under the open-file limit"
        );
    }
    let caps = Caps {
        total,
        per_peer: limits.max_connections_per_peer.get().min(total),
    };
    let deadlines = Deadlines {
        first_request: Duration::from_millis(limits.first_request_timeout_ms.get()),
        idle: Duration::from_millis(limits.idle_timeout_ms.get()),
    };
    tracing::info!(
        max_connections = caps.total,
        max_connections_per_peer = caps.per_peer,
        first_request_timeout_ms = deadlines.first_request.as_millis() as u64,
        idle_timeout_ms = deadlines.idle.as_millis() as u64,
        "connection limits"
    );
    listener::Edge {
        tls,
        tracker: Tracker::new(caps),
        refusals: Arc::new(crate::server::refusals::RefusalLog::default()),
        limits: listener::EdgeLimits {
            deadlines,
            keepalive_interval: KEEPALIVE_INTERVAL,
            keepalive_timeout: KEEPALIVE_TIMEOUT,
        },
    }
}

/// Builds and starts every part of the agent on the current runtime.
pub async fn start(config: Config) -> Result<RunningAgent, AppError> {
    let tls = Arc::new(ServerTls::load(&config.tls).map_err(|e| tls_error(&config, e))?);
    let host_id =
        crate::tls::host_id_from_cert(&config.tls.cert).map_err(|e| tls_error(&config, e))?;
    let host = jex_platform::host_info()?;
    let facts = HostFacts {
        host_id: host_id.clone(),
        hardware_uuid: host.hardware_uuid.clone().unwrap_or_default(),
        serial_number: host.serial_number.clone().unwrap_or_default(),
        model: host.model.clone().unwrap_or_default(),
        chip: host.chip.clone().unwrap_or_default(),
        logical_cpus: host.logical_cpus,
        performance_cores: host.performance_cores,
        efficiency_cores: host.efficiency_cores,
        memory_bytes: host.memory_bytes,
        os_name: host.os_name.clone(),
        os_version: host.os_version.clone().unwrap_or_default(),
        agent_start_unix_ms: now_unix_ms(),
        telemetry_interval_ms: config.telemetry.interval_ms as u32,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // On a full disk, the spool and the erase service below each degrade on their own.
    match create_private_dir(&config.state_dir) {
        Err(e) if is_out_of_space(&e) => tracing::warn!(
            state_dir = %config.state_dir.display(),
            error = %error_chain(&e),
            "state directory cannot be created (disk full)"
        ),
        other => other?,
    }
    // A first start on a full disk still serves GetHost and the status socket: telemetry then
    // goes live only, not durable, until the spool directory can be created.
    let (spool, report, detached) = jex_spool::Spool::open_or_detached(config.spool_config())?;
    if let Some(err) = &detached {
        tracing::warn!(
            error = %jex_platform::error_chain(err),
            "telemetry is not durable: the spool directory cannot be created (disk full); records are sent live only until there is room"
        );
    }
    tracing::info!(
        records = report.records,
        last_seq = report.last_seq,
        corrupt_records = report.corrupt_records,
        torn_tail_bytes = report.torn_tail_bytes,
        unreadable_segments = report.unreadable_segments,
        "telemetry spool opened"
    );
    if report.corrupt_records > 0 || report.unreadable_segments > 0 {
        tracing::warn!(
            corrupt_records = report.corrupt_records,
            unreadable_segments = report.unreadable_segments,
            "telemetry spool had corrupt records: skipped, counted, and reported to controllers as a CORRUPT gap"
        );
    }
    let source = crate::telemetry::sampler::platform_source(host.cpu_kinds.clone())?;
    let hub = Arc::new(crate::telemetry::hub::Hub::start(
        source,
        spool,
        crate::telemetry::hub::HubConfig::new(Duration::from_millis(config.telemetry.interval_ms)),
    )?);
    let erase = match open_erase(&config, &facts) {
        Ok(erase) => {
            tracing::info!(lifecycle = ?erase.lifecycle(), operation_id = ?erase.current_operation_id(), targets = config.erase.targets.len(), "erase service ready");
            Erase::Ready(Arc::new(erase))
        }
        // A first start on a full disk: nothing was ever journaled (opening an existing journal
        // writes nothing), so the agent serves everything else and refuses erase calls.
        Err(e) if is_out_of_space(&e) => {
            let state_dir = config.erase.state_dir.display();
            let error = match &e {
                AppError::Erase(inner) => error_chain(inner),
                other => error_chain(other),
            };
            tracing::warn!(
                state_dir = %state_dir,
                error = %error,
                "erase unavailable: the erase state directory cannot be created (disk full); Terminate is refused until the agent restarts with room"
            );
            Erase::Unavailable(format!("erase state directory {state_dir}: {error}").into())
        }
        Err(e) => return Err(e),
    };

    let listen_error = |source| AppError::Listen {
        place: config.source.place("server.listen"),
        addr: config.server.listen,
        source,
    };
    let listener = listener::bind(config.server.listen).map_err(listen_error)?;
    let local_addr = listener.local_addr().map_err(listen_error)?;

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<jex_proto::v1::node_agent_server::NodeAgentServer<AgentService>>()
        .await;
    let max_request = crate::server::fields::MAX_REQUEST_BYTES;
    // Reflection in both versions (grpcurl before 1.8.8 speaks only v1alpha), each listing both.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(jex_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection_v1 = reflection()
        .build_v1()?
        .max_decoding_message_size(max_request);
    let reflection_v1alpha = reflection()
        .build_v1alpha()?
        .max_decoding_message_size(max_request);
    let streams = Arc::new(crate::server::Streams::default());
    let edge = Arc::new(edge(&config, tls.clone()));
    let status_server = crate::status::serve(
        &config.server.status_socket,
        status_responder(
            &facts,
            local_addr,
            &config,
            hub.clone(),
            erase.clone(),
            streams.clone(),
            edge.tracker.clone(),
        ),
        config.server.limits.status_max_connections.get() as usize,
    )?;
    let service = AgentService::new(facts, hub.clone(), erase, streams, shutdown_rx.clone());

    watch_tls_files(tls.clone(), config.tls.clone(), shutdown_rx.clone());
    tokio::spawn(edge.refusals.clone().run(shutdown_rx.clone()));
    let routes = tonic::service::Routes::new(health.max_decoding_message_size(max_request))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service.into_server())
        .prepare();
    let routes = tower::Layer::layer(
        &AuthLayer::new(config.roles.clone(), edge.refusals.clone()),
        routes,
    );
    let stop = shutdown_rx.clone();
    let server = tokio::spawn(
        async move {
            listener::serve(listener, edge, routes, stop).await;
            tokio::task::spawn_blocking(move || status_server.stop());
        }
        .instrument(tracing::info_span!("server")),
    );
    tracing::info!(addr = %local_addr, host_id = %host_id, version = crate::AGENT_VERSION, "agent serving");
    Ok(RunningAgent {
        local_addr,
        hub,
        tls,
        shutdown: shutdown_tx,
        server,
    })
}

/// `jex-agent run`: configuration, logs, [`preflight`], runtime, signals; returns the process
/// exit code ([`AppError::exit_kind`] when it cannot start).
pub fn run(config_path: &Path) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => return refused_before_logging(&e.into()),
    };
    let targets = crate::logging::LogTargets {
        level: config.logging.level.clone(),
        file: Some((
            config.logging.dir.clone(),
            config.logging.max_file_bytes,
            config.logging.max_files,
        )),
    };
    // Declared before the runtime, so dropped after it: the last lines are written out.
    let _log = match crate::logging::init(&targets) {
        Ok(guard) => guard,
        Err(e) => return refused_before_logging(&e.into()),
    };
    let checked = preflight(&config).and_then(|found| match found.listen {
        ListenCheck::Free => Ok(()),
        ListenCheck::HeldByAgent { pid } => Err(AppError::AgentRunning {
            place: config.source.place("server.listen"),
            addr: config.server.listen,
            pid,
        }),
    });
    if let Err(e) = checked {
        return refused(&e);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .thread_name("jex-agent")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return refused(&AppError::Runtime(e)),
    };
    runtime.block_on(async move {
        let agent = match start(config).await {
            Ok(a) => a,
            Err(e) => return refused(&e),
        };
        wait_for_signals(&agent).await;
        tracing::info!("stopping");
        agent.shutdown().await;
        tracing::info!("stopped");
        ExitKind::Ok.into()
    })
}

/// Prints why the agent cannot start when there is no log yet, and returns its exit code.
fn refused_before_logging(e: &AppError) -> ExitCode {
    eprintln!("jex-agent: {}", error_chain(e));
    e.exit_kind().into()
}

/// Logs why the agent cannot start (the JSON log, and stderr for launchd's log file), and
/// returns its exit code.
fn refused(e: &AppError) -> ExitCode {
    let exit = e.exit_kind();
    tracing::error!(error = %error_chain(e), exit_code = exit as u8, "agent failed to start");
    exit.into()
}

async fn wait_for_signals(agent: &RunningAgent) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => match agent.reload_tls() {
                Ok(()) => tracing::info!("TLS certificate and key reloaded"),
                Err(e) => tracing::error!(error = %error_chain(&e), "TLS reload failed; keeping the previous certificate"),
            },
        }
    }
}

pub use crate::error_chain;

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A valid configuration in a temporary directory (a development PKI, loopback port 0),
    /// with `extra` appended.
    struct Setup {
        dir: tempfile::TempDir,
        pki: crate::pki::DevPkiPaths,
    }

    impl Setup {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let (pki, _) =
                crate::pki::write_dev_pki(&dir.path().join("pki"), "fleet.example", "h-1").unwrap();
            Setup { dir, pki }
        }

        fn text(&self) -> String {
            crate::demo::demo_config(self.dir.path(), &self.pki, 1000)
        }

        fn config(&self, text: &str) -> Config {
            Config::parse(&self.dir.path().join("agent.toml"), text).expect("valid")
        }

        fn target(&self, name: &str, device: &Path) -> String {
            format!(
                "\n[[erase.targets]]\nname = \"{name}\"\nbackend = \"luks2\"\ndevice = \"{}\"\nluks_uuid = \"9f5d0c8e-3a1b-4c2d-8e7f-0a1b2c3d4e5f\"\n",
                device.display()
            )
        }
    }

    /// The line of `needle` in `text`, 1-based.
    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).expect(needle) + 1
    }

    #[test]
    fn a_valid_configuration_passes_and_names_its_host() {
        let s = Setup::new();
        let image = s.dir.path().join("tenant.img");
        std::fs::write(&image, vec![0u8; 1 << 16]).unwrap();
        let found = preflight(&s.config(&(s.text() + &s.target("a", &image)))).unwrap();
        assert_eq!(found.host_id, "h-1");
        assert_eq!(found.listen, ListenCheck::Free);
    }

    #[test]
    fn tls_errors_name_the_file_the_line_and_the_key() {
        let s = Setup::new();
        let text = s.text();
        std::fs::remove_file(&s.pki.agent_key).unwrap();
        let err = preflight(&s.config(&text)).unwrap_err();
        assert_eq!(err.exit_kind(), ExitKind::Usage);
        let message = error_chain(&err);
        assert!(
            message.starts_with(&format!(
                "{}:{}: key `tls.key`: reading {}",
                s.dir.path().join("agent.toml").display(),
                line_of(&text, "key = "),
                s.pki.agent_key.display()
            )),
            "{message}"
        );

        let s = Setup::new();
        std::fs::write(&s.pki.ca_cert, "not a certificate").unwrap();
        let err = preflight(&s.config(&s.text())).unwrap_err();
        assert!(
            error_chain(&err).contains("key `tls.client_ca`: "),
            "{err:?}"
        );

        let s = Setup::new();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&s.pki.agent_key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = preflight(&s.config(&s.text())).unwrap_err();
        assert!(error_chain(&err).contains("key `tls.key`: "), "{err:?}");
        assert_eq!(err.exit_kind(), ExitKind::Usage);
    }

    #[test]
    fn erase_targets_are_checked_on_the_host() {
        let s = Setup::new();
        let image = s.dir.path().join("tenant.img");
        std::fs::write(&image, vec![0u8; 1 << 16]).unwrap();

        // Missing.
        let text = s.text() + &s.target("a", &image) + &s.target("b", &s.dir.path().join("nope"));
        let err = check_targets(&s.config(&text)).unwrap_err();
        assert_eq!(err.exit_kind(), ExitKind::Usage);
        let message = error_chain(&err);
        assert!(
            message.ends_with(&format!(
                ":{}: key `erase.targets[1].device`: {} does not exist",
                line_of(&text, "/nope\""),
                s.dir.path().join("nope").display()
            )),
            "{message}"
        );

        // Not a file or a device.
        let text = s.text() + &s.target("a", s.dir.path());
        let err = check_targets(&s.config(&text)).unwrap_err();
        assert_eq!(err.exit_kind(), ExitKind::Usage);
        assert!(
            error_chain(&err).contains("is neither a regular file nor a block device"),
            "{err:?}"
        );

        // The same file through a symlink: both keys and both lines.
        let link = s.dir.path().join("by-id");
        std::os::unix::fs::symlink(&image, &link).unwrap();
        let text = s.text() + &s.target("a", &image) + &s.target("b", &link);
        let err = check_targets(&s.config(&text)).unwrap_err();
        assert_eq!(err.exit_kind(), ExitKind::Usage);
        let message = error_chain(&err);
        assert!(
            message.contains(&format!(
                ":{}: key `erase.targets[1].device`: ",
                line_of(&text, "/by-id\"")
            )) && message.ends_with(&format!(
                "(`erase.targets[0].device` is at line {})",
                line_of(&text, "/tenant.img\"")
            )),
            "{message}"
        );
    }

    #[test]
    fn a_listen_address_in_use_names_its_key_and_exits_69() {
        let s = Setup::new();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let text = s
            .text()
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\""));
        let err = preflight(&s.config(&text)).unwrap_err();
        assert_eq!(err.exit_kind(), ExitKind::Unavailable);
        let message = error_chain(&err);
        assert!(
            message.contains(&format!(
                ":{}: key `server.listen`: cannot listen on {addr}: ",
                line_of(&text, "listen = ")
            )),
            "{message}"
        );
        drop(taken);
        assert_eq!(
            preflight(&s.config(&text)).unwrap().listen,
            ListenCheck::Free
        );
    }

    #[test]
    fn each_failure_has_its_exit_code() {
        use std::io::Error;
        let place = Place {
            path: PathBuf::from("/etc/jex-agent/agent.toml"),
            line: 3,
        };
        let io = |kind: ErrorKind| Error::from(kind);
        let read = |kind| {
            AppError::Config(ConfigError::Read {
                path: PathBuf::from("/etc/jex-agent/agent.toml"),
                source: io(kind),
            })
        };
        let tls = |kind| AppError::Tls {
            place: place.clone(),
            key: "tls.key",
            source: Box::new(TlsError::Read {
                path: PathBuf::from("/k"),
                source: io(kind),
            }),
        };
        let listen = |kind| AppError::Listen {
            place: place.clone(),
            addr: "127.0.0.1:7443".parse().unwrap(),
            source: io(kind),
        };
        let target = |problem| AppError::Target {
            place: place.clone(),
            key: "erase.targets[0].device".into(),
            problem: Box::new(problem),
        };
        let cases = [
            (read(ErrorKind::NotFound), ExitKind::Usage),
            (read(ErrorKind::PermissionDenied), ExitKind::NoPermission),
            (tls(ErrorKind::NotFound), ExitKind::Usage),
            (tls(ErrorKind::PermissionDenied), ExitKind::NoPermission),
            (
                target(TargetProblem::Missing { path: "/x".into() }),
                ExitKind::Usage,
            ),
            (
                target(TargetProblem::System {
                    path: "/x".into(),
                    reason: "it holds /".into(),
                }),
                ExitKind::Usage,
            ),
            (
                target(TargetProblem::Unusable(BlockDevError::Open {
                    path: "/x".into(),
                    source: io(ErrorKind::PermissionDenied),
                })),
                ExitKind::NoPermission,
            ),
            (listen(ErrorKind::AddrInUse), ExitKind::Unavailable),
            (listen(ErrorKind::PermissionDenied), ExitKind::NoPermission),
            (listen(ErrorKind::AddrNotAvailable), ExitKind::Usage),
            (
                AppError::AgentRunning {
                    place: place.clone(),
                    addr: "127.0.0.1:7443".parse().unwrap(),
                    pid: 1,
                },
                ExitKind::Unavailable,
            ),
            (
                AppError::NeedsRoot {
                    command: "erase-plan",
                },
                ExitKind::NoPermission,
            ),
            (
                AppError::Erase(EraseError::Locked { path: "/l".into() }),
                ExitKind::Unavailable,
            ),
            (AppError::Runtime(io(ErrorKind::Other)), ExitKind::OsError),
        ];
        for (err, kind) in cases {
            assert_eq!(err.exit_kind(), kind, "{err:?}");
        }
        assert_eq!(
            [0, 1, 64, 69, 70, 71, 74, 77],
            [
                ExitKind::Ok,
                ExitKind::Failure,
                ExitKind::Usage,
                ExitKind::Unavailable,
                ExitKind::Software,
                ExitKind::OsError,
                ExitKind::IoError,
                ExitKind::NoPermission
            ]
            .map(|k| k as u8)
        );
    }
}
