//! Builds and starts every part of the agent on the current runtime, and stops them:
//! the network edge sized to the open-file limit, the telemetry hub, the erase service, the
//! gRPC services behind the role check, the `/metrics` listener, the local socket and the TLS
//! file watcher.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use super::exit::{AppError, tls_error};
use super::preflight::{create_private_dir, is_out_of_space};
use super::{SHUTDOWN_GRACE, TLS_FILE_POLL};
use crate::config::Config;
use crate::error_chain;
use crate::server::{AgentService, Erase, HostFacts, auth::AuthLayer, listener};
use crate::tls::ServerTls;

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

/// Opens the erase service: the agent's TLS key signs certificates; each target's backend is
/// built from its config. An unfinished operation in the journal resumes here.
fn open_erase(
    config: &Config,
    facts: &HostFacts,
    keys: Option<&Arc<jex_erase::KeyDestroyerFactory>>,
) -> Result<jex_erase::EraseService, AppError> {
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
        key_destroyer_factory: match keys {
            Some(keys) => {
                let keys = keys.clone();
                Box::new(move |target| keys(target))
            }
            None => jex_erase::production_factory(&config.erase),
        },
        fleet_ca: Some(config.tls.client_ca.clone()),
    };
    Ok(jex_erase::EraseService::open(config.erase.clone(), deps)?)
}

/// A running agent.
pub struct RunningAgent {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    hub: Arc<crate::telemetry::hub::Hub>,
    tls: Arc<ServerTls>,
    health: crate::health::Health,
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

    /// The address `/metrics` is served on, when enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The raised conditions.
    pub fn conditions(&self) -> Arc<[crate::health::Condition]> {
        self.health.conditions()
    }

    /// Re-reads the TLS files (what SIGHUP does).
    pub fn reload_tls(&self) -> Result<(), crate::tls::TlsError> {
        self.tls.reload()
    }

    /// Sets every `grpc.health.v1` status NOT_SERVING, stops telemetry (its last record synced
    /// and published, so live streams send it and end), then stops accepting, ends the other open streams and waits up to [`SHUTDOWN_GRACE`].
    pub async fn shutdown(self) {
        self.health.drain().await;
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
    let caps = Caps::shared(
        total,
        limits.max_connections_per_peer.get(),
        limits.max_handshakes.get(),
        limits.max_unverified.get(),
    );
    let deadlines = Deadlines {
        first_request: Duration::from_millis(limits.first_request_timeout_ms.get()),
        idle: Duration::from_millis(limits.idle_timeout_ms.get()),
    };
    tracing::info!(
        max_connections = caps.total,
        max_connections_per_peer = caps.per_peer,
        max_handshakes = caps.handshakes,
        max_unverified = caps.unverified,
        max_verified = caps.verified(),
        first_request_timeout_ms = deadlines.first_request.as_millis() as u64,
        idle_timeout_ms = deadlines.idle.as_millis() as u64,
        "connection limits"
    );
    listener::Edge {
        tls,
        tracker: Tracker::new(caps),
        refusals: Arc::new(crate::server::refusals::RefusalLog::default()),
        calls: Arc::new(crate::server::calls::CallCounts::default()),
        limits: listener::EdgeLimits {
            deadlines,
            keepalive_interval: KEEPALIVE_INTERVAL,
            keepalive_timeout: KEEPALIVE_TIMEOUT,
        },
    }
}

/// What a caller other than `jex-agent run` may put in place of the host's own parts (with
/// the `dev` feature only, so the shipped binary has none): the simulator (`jex-sim`) runs
/// many agents in one process, each with its own host description, synthetic telemetry and
/// fake erase keys, and everything else the agent's own.
#[cfg(feature = "dev")]
#[derive(Default)]
pub struct Seams {
    /// The host's description, instead of reading this machine's.
    pub host: Option<jex_platform::HostInfo>,
    /// The telemetry sampler, instead of this machine's counters.
    pub source: Option<Box<dyn crate::telemetry::SampleSource>>,
    /// The key destroyers of the erase targets, instead of the configured backends'.
    pub key_destroyer_factory: Option<Arc<jex_erase::KeyDestroyerFactory>>,
}

#[cfg(feature = "dev")]
impl std::fmt::Debug for Seams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seams")
            .field("host", &self.host.is_some())
            .field("source", &self.source.is_some())
            .field(
                "key_destroyer_factory",
                &self.key_destroyer_factory.is_some(),
            )
            .finish()
    }
}

/// Builds and starts every part of the agent on the current runtime.
pub async fn start(config: Config) -> Result<RunningAgent, AppError> {
    start_parts(config, None, None, None).await
}

/// [`start`] with some parts put in place of the host's own; see [`Seams`].
#[cfg(feature = "dev")]
pub async fn start_with(config: Config, seams: Seams) -> Result<RunningAgent, AppError> {
    start_parts(
        config,
        seams.host,
        seams.source,
        seams.key_destroyer_factory,
    )
    .await
}

async fn start_parts(
    config: Config,
    host: Option<jex_platform::HostInfo>,
    source: Option<Box<dyn crate::telemetry::SampleSource>>,
    keys: Option<Arc<jex_erase::KeyDestroyerFactory>>,
) -> Result<RunningAgent, AppError> {
    let tls = Arc::new(ServerTls::load(&config.tls).map_err(|e| tls_error(&config, e))?);
    let host_id =
        crate::tls::host_id_from_cert(&config.tls.cert).map_err(|e| tls_error(&config, e))?;
    let host = match host {
        Some(host) => host,
        None => jex_platform::host_info()?,
    };
    let facts = HostFacts {
        host_id: host_id.clone(),
        hardware_uuid: host.hardware_uuid.clone().unwrap_or_default(),
        serial_number: host.serial_number.clone().unwrap_or_default(),
        model: host.model.clone().unwrap_or_default(),
        chip: host.chip.clone().unwrap_or_default(),
        logical_cpus: host.logical_cpus,
        super_cores: host.super_cores,
        performance_cores: host.performance_cores,
        efficiency_cores: host.efficiency_cores,
        memory_bytes: host.memory_bytes,
        os_name: host.os_name.clone(),
        os_version: host.os_version.clone().unwrap_or_default(),
        agent_start_unix_ms: jex_attest::clock::now_unix_ms(),
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
    let source = match source {
        Some(source) => source,
        None => crate::telemetry::sampler::platform_source(host.cpu_kinds.clone())?,
    };
    let hub = Arc::new(crate::telemetry::hub::Hub::start(
        source,
        spool,
        crate::telemetry::hub::HubConfig::new(Duration::from_millis(config.telemetry.interval_ms)),
    )?);
    let erase = match open_erase(&config, &facts, keys.as_ref()) {
        Ok(erase) => {
            tracing::info!(lifecycle = ?erase.lifecycle(), operation_id = ?erase.current_operation_id(), targets = config.erase.targets.len(), "erase service ready");
            Erase::ready(Arc::new(erase))
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
                "erase unavailable: the erase state directory cannot be created (disk full); Terminate is refused until it opens (retried every 5 s)"
            );
            Erase::unavailable(format!("erase state directory {state_dir}: {error}").into())
        }
        Err(e) => return Err(e),
    };

    let listen_error = |source| AppError::Listen {
        place: config.source.place("server.listen"),
        key: "server.listen",
        addr: config.server.listen,
        source,
    };
    let listener = listener::bind(config.server.listen).map_err(listen_error)?;
    let local_addr = listener.local_addr().map_err(listen_error)?;
    // Taken at start like the gRPC address: an address in use stops the agent with the same
    // kind of error and exit code, rather than running without the metrics it was told to serve.
    let metrics_listener = if config.metrics.enabled {
        let metrics_error = |source| AppError::Listen {
            place: config.source.place("metrics.listen"),
            key: "metrics.listen",
            addr: config.metrics.listen,
            source,
        };
        let l = crate::metrics::serve::bind(config.metrics.listen).map_err(metrics_error)?;
        let addr = l.local_addr().map_err(metrics_error)?;
        Some((l, addr))
    } else {
        None
    };
    let metrics_addr = metrics_listener.as_ref().map(|(_, addr)| *addr);

    let (health_reporter, health_server) = tonic_health::server::health_reporter();
    let health = crate::health::Monitor::start(
        crate::health::Sources {
            hub: hub.clone(),
            erase: erase.clone(),
            tls: tls.clone(),
        },
        crate::health::Settings::from(&config.health),
        health_reporter,
        shutdown_rx.clone(),
    )
    .await;
    if erase.unavailable_reason().is_some() {
        retry_erase(&config, &facts, keys, &erase, shutdown_rx.clone());
    }
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
    let status_server = crate::local_socket::serve(
        &config.server.status_socket,
        crate::local_socket::view::responder(
            &facts,
            crate::local_socket::view::Bound {
                grpc: local_addr,
                metrics: metrics_addr,
            },
            &config,
            crate::local_socket::view::Parts {
                hub: hub.clone(),
                erase: erase.clone(),
                streams: streams.clone(),
                connections: edge.tracker.clone(),
                health: health.clone(),
            },
        ),
        config.server.limits.status_max_connections.get() as usize,
    )?;
    let start_unix_ms = facts.agent_start_unix_ms;
    let service = AgentService::new(
        facts,
        hub.clone(),
        erase.clone(),
        streams.clone(),
        health.clone(),
        shutdown_rx.clone(),
    );
    match metrics_listener {
        Some((metrics_listener, addr)) => {
            let refusals = Arc::new(crate::server::refusals::RefusalLog::for_listener("metrics"));
            let sources = crate::metrics::collect::Sources {
                start_unix_ms,
                hub: hub.clone(),
                erase,
                streams,
                tracker: edge.tracker.clone(),
                refusals: vec![edge.refusals.clone(), refusals.clone()],
                calls: edge.calls.clone(),
                tls: tls.clone(),
                health: health.clone(),
            };
            let endpoint = Arc::new(crate::metrics::serve::Endpoint {
                sources: Arc::new(sources),
                tls: config.metrics.tls.then(|| tls.clone()),
                roles: Arc::new(config.roles.clone()),
                refusals: refusals.clone(),
            });
            tokio::spawn(refusals.run(shutdown_rx.clone()));
            tokio::spawn(
                crate::metrics::serve::serve(metrics_listener, endpoint, shutdown_rx.clone())
                    .instrument(tracing::info_span!("metrics")),
            );
            tracing::info!(addr = %addr, tls = config.metrics.tls, "metrics serving");
        }
        None => tracing::info!("metrics endpoint disabled ([metrics] enabled = false)"),
    }

    watch_tls_files(tls.clone(), config.tls.clone(), shutdown_rx.clone());
    tokio::spawn(edge.refusals.clone().run(shutdown_rx.clone()));
    let routes = tonic::service::Routes::new(health_server.max_decoding_message_size(max_request))
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
        metrics_addr,
        hub,
        tls,
        health,
        shutdown: shutdown_tx,
        server,
    })
}

/// How often an unavailable erase service is opened again.
const ERASE_RETRY: Duration = Duration::from_secs(5);

/// Opens the erase service again every [`ERASE_RETRY`] until it opens (the disk has room
/// again), then puts it in the slot, which clears `ERASE_UNAVAILABLE` and lets `Terminate` in.
fn retry_erase(
    config: &Config,
    facts: &HostFacts,
    keys: Option<Arc<jex_erase::KeyDestroyerFactory>>,
    erase: &Erase,
    mut stop: watch::Receiver<bool>,
) {
    let (config, facts, erase) = (config.clone(), facts.clone(), erase.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(ERASE_RETRY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let (c, f, k) = (config.clone(), facts.clone(), keys.clone());
            let opened = tokio::task::spawn_blocking(move || open_erase(&c, &f, k.as_ref())).await;
            match opened {
                Ok(Ok(service)) => {
                    tracing::info!(
                        lifecycle = ?service.lifecycle(),
                        targets = config.erase.targets.len(),
                        "erase service ready: its state directory could be created at last"
                    );
                    erase.install(Arc::new(service));
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %error_chain(&e), "erase service still unavailable")
                }
                Err(e) => {
                    tracing::error!(error = %e, "opening the erase service panicked; not retrying");
                    return;
                }
            }
        }
    });
}
