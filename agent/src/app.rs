//! Wiring: the one place that builds every part of the agent from the configuration and
//! connects them. Nothing else constructs platform services, so tests can run a real agent
//! in-process ([`start`]) or as a process (`jex-agent run`).
//!
//! Signals: SIGHUP reloads the TLS certificate and key (open streams keep running); SIGTERM
//! and SIGINT stop accepting, end open streams (clients resume from their last `seq`) and exit
//! within [`SHUTDOWN_GRACE`]. An erase in progress is not waited for: its journal resumes it at
//! the next start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use crate::config::Config;
use crate::server::{AgentService, HostFacts, auth::AuthLayer, listener};
use crate::tls::ServerTls;

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

/// Exit codes (sysexits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Clean stop.
    Ok = 0,
    /// Runtime failure.
    Failure = 1,
    /// Bad command line or configuration (EX_USAGE).
    Usage = 64,
}

impl From<ExitKind> for ExitCode {
    fn from(k: ExitKind) -> Self {
        ExitCode::from(k as u8)
    }
}

/// The agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Host facts.
    #[error("reading host facts")]
    Platform(#[from] jex_platform::PlatformError),
    /// The listen address.
    #[error("listening on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The reflection service.
    #[error("building the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The erase service.
    #[error("opening the erase service")]
    Erase(#[from] jex_erase::EraseError),
    /// The erase certificate signer.
    #[error("loading the erase certificate signer")]
    Signer(#[from] jex_attest::AttestError),
    /// The local status socket.
    #[error(transparent)]
    Status(#[from] crate::status::StatusError),
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

/// Builds each target's key-destruction backend from its config (absolute tool paths).
pub fn key_destroyer_factory(erase: &jex_erase::EraseConfig) -> jex_erase::KeyDestroyerFactory {
    use jex_erase::keys::{KeyDestroyer, apfs::ApfsVolume, luks2::Luks2};
    use jex_erase::{Backend, EraseError, TargetConfig};
    let tools = erase.tools.clone();
    let factory = move |t: &TargetConfig| -> Result<Box<dyn KeyDestroyer>, EraseError> {
        let keys_err = |source| EraseError::Keys {
            target: t.name.clone(),
            source,
        };
        let pin = |v: &Option<String>| v.clone().unwrap_or_default();
        Ok(match t.backend {
            Backend::Luks2 => Box::new(
                Luks2::new(
                    t.name.clone(),
                    t.device.clone(),
                    &pin(&t.luks_uuid),
                    tools.cryptsetup.clone(),
                )
                .map_err(keys_err)?,
            ),
            Backend::ApfsVolume => Box::new(
                ApfsVolume::new(
                    t.name.clone(),
                    &pin(&t.apfs_volume_uuid),
                    tools.diskutil.clone(),
                )
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
    erase: Arc<jex_erase::EraseService>,
    streams: Arc<crate::server::Streams>,
    connections: Arc<crate::server::conn::Tracker>,
) -> crate::status::Responder {
    use crate::status::{
        ConnectionStatus, EraseStatus, Query, StatusSnapshot, StreamStatus, TelemetryStatus,
    };
    let host_id = facts.host_id.clone();
    let started = std::time::Instant::now();
    let interval_ms = config.telemetry.interval_ms;
    Arc::new(move |query| match query {
        Query::Plan => match erase.plan() {
            Ok(plan) => plan_json(&plan),
            Err(e) => serde_json::json!({ "error": error_chain(&e) }),
        },
        Query::Status => {
            let stats = hub.stats();
            let lifecycle = crate::server::convert::lifecycle_state(erase.lifecycle());
            let erase_view = erase.watch(None).ok().map(|rx| {
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

    /// Stops accepting, ends open streams and waits up to [`SHUTDOWN_GRACE`].
    pub async fn shutdown(self) {
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
        if let Err(e) = self.hub.shutdown().await {
            tracing::error!(error = %error_chain(&e), "telemetry did not stop cleanly");
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
    let tls = Arc::new(ServerTls::load(&config.tls)?);
    let host_id = crate::tls::host_id_from_cert(&config.tls.cert)?;
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
    create_private_dir(&config.state_dir)?;
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
    let erase = Arc::new(open_erase(&config, &facts)?);
    tracing::info!(lifecycle = ?erase.lifecycle(), operation_id = ?erase.current_operation_id(), targets = config.erase.targets.len(), "erase service ready");

    let listener = listener::bind(config.server.listen).map_err(|source| AppError::Listen {
        addr: config.server.listen,
        source,
    })?;
    let local_addr = listener.local_addr().map_err(|source| AppError::Listen {
        addr: config.server.listen,
        source,
    })?;

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

/// `jex-agent run`: logs, runtime, signals; returns the process exit code.
pub fn run(config_path: &Path) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("jex-agent: {e}");
            return ExitKind::Usage.into();
        }
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
        Err(e) => {
            eprintln!("jex-agent: {}", error_chain(&e));
            return ExitKind::Failure.into();
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .thread_name("jex-agent")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitKind::Failure.into();
        }
    };
    runtime.block_on(async move {
        let agent = match start(config).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %error_chain(&e), "agent failed to start");
                return ExitKind::Failure.into();
            }
        };
        wait_for_signals(&agent).await;
        tracing::info!("stopping");
        agent.shutdown().await;
        tracing::info!("stopped");
        ExitKind::Ok.into()
    })
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
