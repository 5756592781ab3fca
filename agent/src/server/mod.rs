//! The gRPC edge: the `jex.agent.v1.NodeAgent` service, `grpc.health.v1`, server reflection,
//! the role check in front of all of them, and the TLS accept loop.
//!
//! Proto types stop here. Each RPC has a file of its own under `rpc` (its roles, its request
//! checked against the field limits of `fields` and turned into a domain command, its handler,
//! its error map); answers are converted back in `convert`, and the domain errors shared by
//! several RPCs become gRPC statuses in `status`. One span per RPC carries the peer identity.
//!
//! `auth` is an allow-list: one table of roles per method, built from the `rpc` files plus the
//! health and reflection methods; a method not in it is refused for everyone.
//!
//! What a client can hold is bounded in `listener` and `conn` (admission in separate shares
//! for handshakes, connections without a client certificate and verified ones; first-request
//! and idle deadlines; closing after a refusal); refusals are logged, rate-limited, through
//! `refusals`; finished calls are counted by method and code in `calls`. Server streams ended
//! by the agent's shutdown end with `UNAVAILABLE`, so a client knows to reconnect rather than take the end as complete. A live telemetry stream is ended by
//! the telemetry hub stopping, not by the shutdown signal: the agent stops the hub first, which
//! syncs and publishes the last record it sampled, and the stream sends every record up to that
//! one before its `UNAVAILABLE`. Cutting it at the signal instead lost the records published
//! (or still to be published) around it until the client resumed.

pub mod auth;
pub(crate) mod calls;
pub(crate) mod conn;
pub mod convert;
pub(crate) mod fields;
pub(crate) mod grpc_error;
pub(crate) mod listener;
pub(crate) mod refusals;
pub(crate) mod rpc;
pub(crate) mod schema;

use std::sync::Arc;

use jex_proto::stored::node_agent_server::NodeAgentServer;
use tokio::sync::watch;
use tonic::Status;

use crate::telemetry::hub::Hub;
use jex_erase::EraseService;

pub use auth::{Peer, Role};

/// What `GetHost` reports that does not change while the agent runs.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// From the agent's certificate.
    pub host_id: String,
    /// Hardware UUID.
    pub hardware_uuid: String,
    /// Serial number.
    pub serial_number: String,
    /// Model identifier.
    pub model: String,
    /// CPU brand.
    pub chip: String,
    /// Logical CPUs.
    pub logical_cpus: u32,
    /// Super cores (not counted in `performance_cores`).
    pub super_cores: u32,
    /// Performance cores.
    pub performance_cores: u32,
    /// Efficiency cores.
    pub efficiency_cores: u32,
    /// Physical memory.
    pub memory_bytes: u64,
    /// OS name.
    pub os_name: String,
    /// OS version.
    pub os_version: String,
    /// Agent start (Unix ms).
    pub agent_start_unix_ms: u64,
    /// Sampling interval.
    pub telemetry_interval_ms: u32,
}

/// The telemetry streams open right now, for `jex-agent status`.
#[derive(Debug, Default)]
pub struct Streams {
    next_id: std::sync::atomic::AtomicU64,
    open: std::sync::Mutex<std::collections::BTreeMap<u64, OpenStream>>,
}

/// One open telemetry stream.
#[derive(Debug, Clone)]
pub struct OpenStream {
    /// The caller.
    pub peer: Peer,
    /// When it opened.
    pub opened: std::time::Instant,
    /// The last seq sent.
    pub last_seq_sent: u64,
}

impl Streams {
    /// A snapshot of the open streams.
    pub fn list(&self) -> Vec<OpenStream> {
        self.open
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn register(self: &Arc<Self>, peer: Peer, after_seq: u64) -> StreamGuard {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut m) = self.open.lock() {
            m.insert(
                id,
                OpenStream {
                    peer,
                    opened: std::time::Instant::now(),
                    last_seq_sent: after_seq,
                },
            );
        }
        StreamGuard {
            streams: self.clone(),
            id,
        }
    }
}

/// Removes its stream from the registry when the stream is dropped (client gone or shutdown).
struct StreamGuard {
    streams: Arc<Streams>,
    id: u64,
}

impl StreamGuard {
    fn sent(&self, seq: u64) {
        if let Ok(mut m) = self.streams.open.lock()
            && let Some(s) = m.get_mut(&self.id)
        {
            s.last_seq_sent = seq;
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.streams.open.lock() {
            m.remove(&self.id);
        }
    }
}

/// The erase service, or why the agent serves without it for now: one slot shared by the gRPC
/// service, the status socket, `/metrics` and the health monitor, so that a service opened
/// later ([`Erase::install`]) is seen by all of them at once.
#[derive(Clone)]
pub struct Erase {
    slot: Arc<arc_swap::ArcSwap<EraseSlot>>,
}

/// What the erase slot holds.
#[derive(Clone)]
pub enum EraseSlot {
    /// Opened.
    Ready(Arc<EraseService>),
    /// The erase state directory could not be created (a first start on a full disk). The
    /// reason names the directory and the OS error; the erase calls are refused with it
    /// (`grpc_error::erase_unavailable`) and the host is reported serving with no operation
    /// (none could have been journaled). The agent retries the open until it succeeds
    /// (`app::start`), and the `ERASE_UNAVAILABLE` condition is raised meanwhile.
    Unavailable(Arc<str>),
}

impl Erase {
    /// A slot holding an opened service.
    pub fn ready(service: Arc<EraseService>) -> Self {
        Self::with(EraseSlot::Ready(service))
    }

    /// A slot without a service, for `reason`.
    pub fn unavailable(reason: Arc<str>) -> Self {
        Self::with(EraseSlot::Unavailable(reason))
    }

    fn with(slot: EraseSlot) -> Self {
        Self {
            slot: Arc::new(arc_swap::ArcSwap::from_pointee(slot)),
        }
    }

    /// Puts an opened service in the slot: from now on every reader sees it.
    pub fn install(&self, service: Arc<EraseService>) {
        self.slot.store(Arc::new(EraseSlot::Ready(service)));
    }

    /// What the slot holds now.
    pub fn current(&self) -> Arc<EraseSlot> {
        self.slot.load_full()
    }

    /// Why the erase is unavailable, `None` when it is ready.
    pub fn unavailable_reason(&self) -> Option<Arc<str>> {
        match &*self.current() {
            EraseSlot::Ready(_) => None,
            EraseSlot::Unavailable(reason) => Some(reason.clone()),
        }
    }

    /// The service, or the refusal of an erase call.
    fn service(&self) -> Result<Arc<EraseService>, Status> {
        match &*self.current() {
            EraseSlot::Ready(service) => Ok(service.clone()),
            EraseSlot::Unavailable(reason) => Err(grpc_error::erase_unavailable(reason)),
        }
    }

    /// The host's lifecycle and current operation, for `GetHost`: both from the one snapshot
    /// WatchErase's messages come from, so never older than a message already sent.
    fn lifecycle(&self) -> (jex_erase::Lifecycle, Option<String>) {
        match &*self.current() {
            EraseSlot::Ready(service) => {
                let host = service.host_state();
                (host.lifecycle, host.operation_id)
            }
            EraseSlot::Unavailable(_) => (jex_erase::Lifecycle::Serving, None),
        }
    }
}

/// The `NodeAgent` implementation.
#[derive(Clone)]
pub struct AgentService {
    facts: Arc<HostFacts>,
    hub: Arc<Hub>,
    erase: Erase,
    streams: Arc<Streams>,
    health: crate::health::Health,
    shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for AgentService {
    // Hub holds threads and channels; the host id is what identifies a service in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentService")
            .field("host_id", &self.facts.host_id)
            .finish_non_exhaustive()
    }
}

impl AgentService {
    /// Builds the service; `shutdown` turning true ends open streams.
    pub fn new(
        facts: HostFacts,
        hub: Arc<Hub>,
        erase: Erase,
        streams: Arc<Streams>,
        health: crate::health::Health,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            facts: Arc::new(facts),
            hub,
            erase,
            streams,
            health,
            shutdown,
        }
    }

    /// The tonic server for this service; requests over `fields::MAX_REQUEST_BYTES` are
    /// refused.
    pub fn into_server(self) -> NodeAgentServer<Self> {
        NodeAgentServer::new(self).max_decoding_message_size(fields::MAX_REQUEST_BYTES)
    }
}
