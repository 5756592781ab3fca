//! The checks that stop `run` before anything starts, shared with `jex-agent check-config`:
//! the TLS material, every erase target against this host (never the system's own disk), and
//! the listen addresses (gRPC and metrics).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use jex_platform::blockdev::{BlockDevError, SystemDevices};

use super::exit::{AppError, TargetProblem, tls_error};
use crate::config::Config;

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

/// Binds the gRPC listen address and lets it go. When it is in use, asks the status socket
/// whether the agent itself holds it (possible as root only; otherwise it reads as another
/// process).
pub(crate) fn check_listen(config: &Config) -> Result<ListenCheck, AppError> {
    check_address(config, "server.listen", config.server.listen, |report| {
        Some(report.listen.clone())
    })
}

/// The same for the metrics address, when the endpoint is enabled (`None` when it is not).
pub(crate) fn check_metrics_listen(config: &Config) -> Result<Option<ListenCheck>, AppError> {
    if !config.metrics.enabled {
        return Ok(None);
    }
    check_address(config, "metrics.listen", config.metrics.listen, |report| {
        report.metrics_listen.clone()
    })
    .map(Some)
}

/// Binds `addr` and lets it go; when it is in use, asks the status socket whether the running
/// agent holds it (`held` reads the address from its report).
fn check_address(
    config: &Config,
    key: &'static str,
    addr: SocketAddr,
    held: impl Fn(&crate::local_socket::AgentReport) -> Option<String>,
) -> Result<ListenCheck, AppError> {
    match std::net::TcpListener::bind(addr) {
        Ok(listener) => {
            drop(listener);
            Ok(ListenCheck::Free)
        }
        Err(source) => {
            if source.kind() == ErrorKind::AddrInUse
                && let Ok(snapshot) =
                    crate::local_socket::query_blocking(&config.server.status_socket)
                && held(&snapshot).and_then(|a| a.parse::<SocketAddr>().ok()) == Some(addr)
            {
                return Ok(ListenCheck::HeldByAgent { pid: snapshot.pid });
            }
            Err(AppError::Listen {
                place: config.source.place(key),
                key,
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
    /// Who holds the metrics address; `None` when the endpoint is disabled.
    pub metrics_listen: Option<ListenCheck>,
}

/// The checks that stop `run` before anything starts, in this order: the TLS material loads
/// (certificate chain, key with mode 0600, client CA, host id in the certificate); every erase
/// target passes [`check_targets`]; the listen address can be bound, then the metrics address
/// (when enabled). `check-config` runs the same checks, so each failure is the one `run` would
/// stop on, with the same exit code. An address held by the running agent itself is not a
/// failure here: `run` refuses it, `check-config` reports it.
pub fn preflight(config: &Config) -> Result<Preflight, AppError> {
    crate::tls::server_config(&config.tls).map_err(|e| tls_error(config, e))?;
    let host_id =
        crate::tls::host_id_from_cert(&config.tls.cert).map_err(|e| tls_error(config, e))?;
    check_targets(config)?;
    let listen = check_listen(config)?;
    let metrics_listen = check_metrics_listen(config)?;
    Ok(Preflight {
        host_id,
        listen,
        metrics_listen,
    })
}

pub(crate) fn create_private_dir(path: &Path) -> Result<(), AppError> {
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
pub(crate) fn is_out_of_space(e: &AppError) -> bool {
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
