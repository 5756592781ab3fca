//! The `jex.agent.v1.NodeAgent` service, one file per RPC.
//!
//! Each file holds everything about its RPC: its [`Method`] entry (the full method path and the
//! roles allowed to call it), the conversion of its request into a typed domain command (the
//! field limits of [`super::fields`] checked first), the handler, and how its errors become
//! gRPC statuses. The auth layer builds its table of roles per method from these entries
//! ([`super::auth::METHODS`]); a method without an entry is refused for everyone, so an RPC
//! added here without one cannot be reached.
//!
//! The [`NodeAgent`] implementation below only hands each call to its file. Two helpers end the
//! server streams: [`then_unavailable`] and [`until_shutdown`].

pub mod attest_erase;
pub mod get_erase_certificate;
pub mod get_host;
pub mod stream_telemetry;
pub mod terminate;
pub mod watch_erase;

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use jex_proto::stored::node_agent_server::NodeAgent;
use jex_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::AgentService;
use super::auth::{Peer, Role};

/// One method of a service the agent serves, and who may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// The full gRPC path, `/<package>.<Service>/<Method>`.
    pub path: &'static str,
    /// The roles allowed to call it; never empty.
    pub roles: &'static [Role],
}

/// Every role: read-only calls.
pub const ANY_ROLE: &[Role] = &[Role::Controller, Role::Observer];

/// The controller only: calls that change the host.
pub const CONTROLLER_ONLY: &[Role] = &[Role::Controller];

/// The `NodeAgent` methods, as the table of roles takes them.
pub const NODE_AGENT: [Method; 6] = [
    get_host::METHOD,
    stream_telemetry::METHOD,
    terminate::METHOD,
    watch_erase::METHOD,
    get_erase_certificate::METHOD,
    attest_erase::METHOD,
];

/// The caller the auth layer put in the request. The layer runs before every handler, so a
/// missing peer is the agent's own fault: it is logged and answered `INTERNAL`, never given a
/// role.
fn peer_of<T>(req: &Request<T>, rpc: &'static str) -> Result<Peer, Status> {
    req.extensions().get::<Peer>().cloned().ok_or_else(|| {
        tracing::error!(
            rpc,
            "a call reached its handler without an authenticated peer"
        );
        Status::internal(
            "internal error: the caller could not be identified; the agent log has the details",
        )
    })
}

fn rpc_span(rpc: &'static str, peer: &Peer) -> tracing::Span {
    tracing::info_span!("rpc", rpc, peer = %peer.id, role = peer.role.as_str(), addr = %peer.addr)
}

/// A server stream as the handlers return it.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl NodeAgent for AgentService {
    async fn get_host(
        &self,
        req: Request<pb::GetHostRequest>,
    ) -> Result<Response<pb::GetHostResponse>, Status> {
        get_host::handle(self, req).await
    }

    type StreamTelemetryStream = BoxStream<jex_proto::stored::StoredBatch>;

    async fn stream_telemetry(
        &self,
        req: Request<pb::StreamTelemetryRequest>,
    ) -> Result<Response<Self::StreamTelemetryStream>, Status> {
        stream_telemetry::handle(self, req)
    }

    async fn terminate(
        &self,
        req: Request<pb::TerminateRequest>,
    ) -> Result<Response<pb::TerminateResponse>, Status> {
        terminate::handle(self, req).await
    }

    type WatchEraseStream = BoxStream<pb::WatchEraseResponse>;

    async fn watch_erase(
        &self,
        req: Request<pb::WatchEraseRequest>,
    ) -> Result<Response<Self::WatchEraseStream>, Status> {
        watch_erase::handle(self, req)
    }

    async fn get_erase_certificate(
        &self,
        req: Request<pb::GetEraseCertificateRequest>,
    ) -> Result<Response<pb::GetEraseCertificateResponse>, Status> {
        get_erase_certificate::handle(self, req)
    }

    async fn attest_erase(
        &self,
        req: Request<pb::AttestEraseRequest>,
    ) -> Result<Response<pb::AttestEraseResponse>, Status> {
        attest_erase::handle(self, req).await
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

    #[test]
    fn a_call_without_a_peer_is_internal_and_says_nothing_of_why() {
        let req = Request::new(pb::GetHostRequest {});
        let status = peer_of(&req, "GetHost").expect_err("no peer");
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("observer"), "{status:?}");
    }
}
