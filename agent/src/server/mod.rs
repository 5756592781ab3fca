//! The gRPC edge: the `jex.agent.v1.NodeAgent` service, `grpc.health.v1`, server reflection,
//! the role check in front of all of them, and the TLS accept loop.
//!
//! Proto types stop here: handlers check every request field against its limit (`fields`),
//! decode a request into a domain command, call the domain (`telemetry`, `erase`), and convert
//! the answer back (`convert`). Every domain error becomes a gRPC status in one place
//! (`status`). One span per RPC carries the peer identity.
//!
//! What a client can hold is bounded in `listener` and `conn` (connection caps, first-request
//! and idle deadlines, closing after a refusal); refusals are logged, rate-limited, through
//! `refusals`. Server streams ended by the agent's shutdown end with `UNAVAILABLE`, so a client
//! knows to reconnect rather than take the end as complete. A live telemetry stream is ended by
//! the telemetry hub stopping, not by the shutdown signal: the agent stops the hub first, which
//! syncs and publishes the last record it sampled, and the stream sends every record up to that
//! one before its `UNAVAILABLE`. Cutting it at the signal instead lost the records published
//! (or still to be published) around it until the client resumed.

pub mod auth;
pub mod conn;
pub mod convert;
pub mod fields;
pub mod listener;
pub mod refusals;
pub mod schema;
pub mod status;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use futures::StreamExt;
use jex_proto::v1 as pb;
use jex_proto::v1::node_agent_server::{NodeAgent, NodeAgentServer};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::Instrument;

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

/// The erase service, or why the agent serves without it.
#[derive(Clone)]
pub enum Erase {
    /// Opened.
    Ready(Arc<EraseService>),
    /// A first start on a full disk could not create the erase state directory. The reason
    /// names the directory and the OS error; the erase calls are refused with it
    /// ([`status::erase_unavailable`]) until the agent restarts with room, and the host is
    /// reported serving with no operation (none could have been journaled).
    Unavailable(Arc<str>),
}

impl Erase {
    /// The service, or the refusal of an erase call.
    fn service(&self) -> Result<&Arc<EraseService>, Status> {
        match self {
            Erase::Ready(service) => Ok(service),
            Erase::Unavailable(reason) => Err(status::erase_unavailable(reason)),
        }
    }

    /// The host's lifecycle and current operation, for `GetHost`: both from the one snapshot
    /// WatchErase's messages come from, so never older than a message already sent.
    fn lifecycle(&self) -> (jex_erase::Lifecycle, Option<String>) {
        match self {
            Erase::Ready(service) => {
                let host = service.host_state();
                (host.lifecycle, host.operation_id)
            }
            Erase::Unavailable(_) => (jex_erase::Lifecycle::Serving, None),
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
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            facts: Arc::new(facts),
            hub,
            erase,
            streams,
            shutdown,
        }
    }

    /// The tonic server for this service; requests over [`fields::MAX_REQUEST_BYTES`] are
    /// refused.
    pub fn into_server(self) -> NodeAgentServer<Self> {
        NodeAgentServer::new(self).max_decoding_message_size(fields::MAX_REQUEST_BYTES)
    }
}

fn peer_of<T>(req: &Request<T>) -> Peer {
    // The auth layer inserts the peer before any handler runs; a missing one cannot happen.
    req.extensions().get::<Peer>().cloned().unwrap_or(Peer {
        id: "unknown".to_owned(),
        role: Role::Observer,
        addr: "unknown".to_owned(),
    })
}

fn rpc_span(rpc: &'static str, peer: &Peer) -> tracing::Span {
    tracing::info_span!("rpc", rpc, peer = %peer.id, role = peer.role.as_str(), addr = %peer.addr)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Default and largest batch of telemetry records per response.
const DEFAULT_BATCH: usize = 256;
const MAX_BATCH: usize = 4096;

#[tonic::async_trait]
impl NodeAgent for AgentService {
    async fn get_host(
        &self,
        req: Request<pb::GetHostRequest>,
    ) -> Result<Response<pb::GetHostResponse>, Status> {
        let peer = peer_of(&req);
        async {
            let (lifecycle, operation_id) = self.erase.lifecycle();
            let host = convert::host(&self.facts, lifecycle, operation_id);
            tracing::debug!("host served");
            Ok(Response::new(pb::GetHostResponse { host: Some(host) }))
        }
        .instrument(rpc_span("GetHost", &peer))
        .await
    }

    type StreamTelemetryStream = BoxStream<pb::StreamTelemetryResponse>;

    async fn stream_telemetry(
        &self,
        req: Request<pb::StreamTelemetryRequest>,
    ) -> Result<Response<Self::StreamTelemetryStream>, Status> {
        let peer = peer_of(&req);
        let span = rpc_span("StreamTelemetry", &peer);
        let r = req.into_inner();
        let batch = match r.max_batch_records {
            0 => DEFAULT_BATCH,
            n => (n as usize).min(MAX_BATCH),
        };
        span.in_scope(|| {
            tracing::info!(
                after_seq = r.after_seq,
                batch,
                history_only = r.history_only,
                "telemetry stream opened"
            )
        });
        let records = if r.history_only {
            self.hub.subscribe_history(r.after_seq, batch)
        } else {
            self.hub.subscribe(r.after_seq, batch)
        };
        let mut shutdown = self.shutdown.clone();
        let stream_span = span.clone();
        let guard = self.streams.register(peer.clone(), r.after_seq);
        let batches = records.map(move |item| match item {
            Ok(batch) => {
                if let Some(last) = batch.last() {
                    guard.sent(last.seq);
                }
                Ok(pb::StreamTelemetryResponse {
                    records: batch.iter().map(convert::record).collect(),
                })
            }
            Err(e) => {
                let status = status::from_hub(&e);
                stream_span.in_scope(
                    || tracing::warn!(error = %e, "telemetry stream ended with an error"),
                );
                Err(status)
            }
        });
        let stopped = || {
            Status::unavailable(
                "the agent is stopping: reconnect and resume after the last seq received",
            )
        };
        let out: Self::StreamTelemetryStream = if r.history_only {
            Box::pin(until_shutdown(
                batches,
                async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                },
                stopped,
            ))
        } else {
            // A following subscription ends only when the hub stops, after the last record.
            Box::pin(then_unavailable(batches, stopped))
        };
        Ok(Response::new(out))
    }

    async fn terminate(
        &self,
        req: Request<pb::TerminateRequest>,
    ) -> Result<Response<pb::TerminateResponse>, Status> {
        let peer = peer_of(&req);
        let span = rpc_span("Terminate", &peer);
        let r = req.into_inner();
        if let Err(e) = fields::terminate(&r) {
            return Err(status::from_field(&e));
        }
        let cmd = convert::terminate_command(r);
        let request_id = cmd.request_id.clone();
        let erase = span.in_scope(|| self.erase.service().cloned())?;
        async move {
            // Journaling the request fsyncs: keep it off the runtime's workers.
            let span = tracing::Span::current();
            let result = tokio::task::spawn_blocking(move || span.in_scope(|| erase.terminate(cmd)))
                .await
                .map_err(|e| Status::internal(format!("terminate task failed: {e}")))?;
            match result {
                Ok(op) => {
                    tracing::info!(request_id = %request_id, operation_id = %op.operation_id, "terminate accepted");
                    Ok(Response::new(pb::TerminateResponse { operation: Some(convert::operation(&op)) }))
                }
                Err(e) => Err(status::from_erase(&e)),
            }
        }
        .instrument(span)
        .await
    }

    type WatchEraseStream = BoxStream<pb::WatchEraseResponse>;

    async fn watch_erase(
        &self,
        req: Request<pb::WatchEraseRequest>,
    ) -> Result<Response<Self::WatchEraseStream>, Status> {
        let peer = peer_of(&req);
        let span = rpc_span("WatchErase", &peer);
        let r = req.into_inner();
        fields::watch_erase(&r).map_err(|e| status::from_field(&e))?;
        let id = (!r.operation_id.is_empty()).then_some(r.operation_id);
        let rx = span.in_scope(|| {
            self.erase
                .service()?
                .watch(id.as_deref())
                .map_err(|e| status::from_erase(&e))
        })?;
        let mut shutdown = self.shutdown.clone();
        // The current state at once, then every change, until the operation ends.
        let updates = rx;
        // Every state until (and including) the terminal one, then the end of the stream.
        let until_terminal =
            futures::stream::unfold((updates, false), |(mut updates, done)| async move {
                if done {
                    return None;
                }
                let op = updates.next_view().await?;
                let end = op.is_terminal();
                Some((op, (updates, end)))
            });
        let out = until_shutdown(
            until_terminal.map(Ok::<_, Status>),
            async move {
                let _ = shutdown.wait_for(|s| *s).await;
            },
            || {
                Status::unavailable(
                    "the agent is stopping: watch again once it is back (the erase resumes from its journal)",
                )
            },
        )
        .map(|item| {
            item.map(|op| pb::WatchEraseResponse {
                operation: Some(convert::operation(&op)),
                certificate: op.certificate.as_ref().map(convert::certificate),
            })
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn get_erase_certificate(
        &self,
        req: Request<pb::GetEraseCertificateRequest>,
    ) -> Result<Response<pb::GetEraseCertificateResponse>, Status> {
        let peer = peer_of(&req);
        let r = req.into_inner();
        fields::get_erase_certificate(&r).map_err(|e| status::from_field(&e))?;
        let id = (!r.operation_id.is_empty()).then_some(r.operation_id);
        let cert = rpc_span("GetEraseCertificate", &peer).in_scope(|| {
            self.erase
                .service()?
                .certificate(id.as_deref())
                .map_err(|e| status::from_erase(&e))
        })?;
        Ok(Response::new(pb::GetEraseCertificateResponse {
            certificate: Some(convert::certificate(&cert)),
        }))
    }
}

/// `inner`, then, unless it ended with an error, the error `stopped()` makes (`UNAVAILABLE`): for
/// a stream whose own end means the agent is stopping (a following telemetry subscription), so
/// a client does not mistake the end for a complete answer.
fn then_unavailable<S, T>(
    inner: S,
    stopped: impl FnOnce() -> Status + Send + 'static,
) -> impl Stream<Item = Result<T, Status>> + Send + 'static
where
    S: Stream<Item = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    use std::sync::atomic::{AtomicBool, Ordering};
    let failed = Arc::new(AtomicBool::new(false));
    let seen = failed.clone();
    inner
        .inspect(move |item| {
            if item.is_err() {
                seen.store(true, Ordering::SeqCst);
            }
        })
        .map(Some)
        .chain(futures::stream::once(async move {
            (!failed.load(Ordering::SeqCst)).then(|| Err(stopped()))
        }))
        .filter_map(futures::future::ready)
}

/// A stream that ends when `stop` completes (agent shutdown), whatever the inner stream does;
/// ended that way, its last item is the error `stopped()` makes (`UNAVAILABLE`), so a client
/// does not mistake the end for a complete answer.
fn until_shutdown<S, T>(
    inner: S,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    stopped: impl FnOnce() -> Status + Send + 'static,
) -> impl Stream<Item = Result<T, Status>> + Send + 'static
where
    S: Stream<Item = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    use std::sync::atomic::{AtomicBool, Ordering};
    let fired = Arc::new(AtomicBool::new(false));
    let flag = fired.clone();
    let stop = async move {
        stop.await;
        flag.store(true, Ordering::SeqCst);
    };
    inner
        .take_until(Box::pin(stop))
        .map(Some)
        .chain(futures::stream::once(async move {
            fired.load(Ordering::SeqCst).then(|| Err(stopped()))
        }))
        .filter_map(futures::future::ready)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected error"
)]
mod tests {
    use super::*;
    use tonic::Code;

    async fn codes(items: Vec<Result<u32, Status>>) -> Vec<Result<u32, Code>> {
        then_unavailable(futures::stream::iter(items), || {
            Status::unavailable("stopping")
        })
        .map(|item| item.map_err(|status| status.code()))
        .collect()
        .await
    }

    #[tokio::test]
    async fn a_stream_that_ends_by_itself_ends_with_unavailable_after_its_items() {
        assert_eq!(
            codes(vec![Ok(1), Ok(2)]).await,
            [Ok(1), Ok(2), Err(Code::Unavailable)]
        );
        assert_eq!(codes(Vec::new()).await, [Err(Code::Unavailable)]);
    }

    #[tokio::test]
    async fn a_stream_that_ends_with_an_error_keeps_that_error_as_its_end() {
        let items = vec![Ok(1), Err(Status::out_of_range("cursor ahead"))];
        assert_eq!(codes(items).await, [Ok(1), Err(Code::OutOfRange)]);
    }
}
