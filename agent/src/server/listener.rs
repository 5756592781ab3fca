//! The accept loop and one task per connection: TCP accept, the caps, the TLS 1.3 handshake
//! with the current (reloadable) configuration, HTTP/2, and the deadlines.
//!
//! - Admission is shared ([`super::conn::Caps`]): every connection starts among the handshakes
//!   in progress, then moves to the verified share (a client certificate the fleet CA
//!   verified) or to the share without a certificate. The two shares before verification are
//!   small; when one is full, a newcomer evicts the oldest connection of the address holding
//!   the most there, which is closed at once. A connection over its address's cap, or a
//!   verified one over the verified share, is closed at once. So a crowd without certificates
//!   churns through its own shares and never takes a verified place. The loop accepts on a
//!   thread of its own, so the listen backlog drains however busy the connections are; it
//!   pauses only while [`super::conn::Caps::draining`] evicted connections are still closing.
//! - From TCP accept, a client has [`EdgeLimits::deadlines`]`.first_request` to finish the
//!   handshake and send its first request; a connection with no open stream is closed after the
//!   idle deadline; a connection whose call was refused for want of a certificate is closed once
//!   that answer is handed over. Closing is graceful (HTTP/2 GOAWAY, so a client retries on a new
//!   connection) and turns into a plain close when the client has not finished within a short
//!   grace.
//! - Every refusal goes to the rate-limited [`RefusalLog`]; nothing a client without a
//!   certificate can trigger is logged per connection above trace level (an authenticated
//!   client's idle close is a debug line).
//! - On shutdown the listener closes at once, each connection is closed the same graceful way,
//!   and [`serve`] returns when none is left.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::codegen::Bytes;

use super::conn::{
    CloseReason, ConnInfo, ConnState, Deadlines, Permit, Tracked, Tracker, Verdict, verdict,
};
use super::refusals::{Reason, RefusalLog, Source};
use crate::tls::{ServerTls, classify_handshake_error, handshake_refusal_reason};

/// How long a client has to finish after the agent started closing its connection gracefully
/// (GOAWAY) before the socket is simply closed; streams still open keep it longer.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The same for a connection that never sent a request: it has no stream to finish.
const CLOSE_GRACE_NO_REQUEST: Duration = Duration::from_secs(1);

/// Concurrent streams on one connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// The largest request header block (gRPC requests carry a few short headers).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Back-off after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Caps and deadlines of the network edge.
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    /// The deadlines of each connection.
    pub deadlines: Deadlines,
    /// HTTP/2 keepalive ping interval (a client that does not answer within the timeout is
    /// dropped).
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive ping timeout.
    pub keepalive_timeout: Duration,
}

/// Everything the connection tasks share.
#[derive(Debug)]
pub struct Edge {
    /// TLS configuration, reloadable.
    pub tls: Arc<ServerTls>,
    /// The connection caps.
    pub tracker: Arc<Tracker>,
    /// Refusals, rate-limited.
    pub refusals: Arc<RefusalLog>,
    /// Deadlines.
    pub limits: EdgeLimits,
    /// Finished calls by method and code.
    pub calls: Arc<super::calls::CallCounts>,
}

/// The gRPC routes with the agent's layers, as each connection calls them.
pub trait EdgeService:
    tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> EdgeService for S where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// The listen backlog asked for (the OS may cap it, e.g. at `somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the gRPC listener with [`LISTEN_BACKLOG`].
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

/// Accepts on `listener` until `stop` turns true, then waits for every connection to close.
///
/// Accepting runs on a thread and runtime of its own: it only accepts, counts the connection
/// against the caps, and either closes it at once or hands it to the current runtime. So
/// however busy the connection tasks are, the listen backlog is drained.
pub async fn serve<S: EdgeService>(
    listener: std::net::TcpListener,
    edge: Arc<Edge>,
    service: S,
    stop: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(edge.limits.keepalive_interval)
        .keep_alive_timeout(edge.limits.keepalive_timeout)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_BYTES);
    let builder = Arc::new(builder);
    let connections = tokio::runtime::Handle::current();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let accept = {
        let edge = edge.clone();
        let connections = connections.clone();
        let stop = stop.clone();
        move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(rt) => rt.block_on(accept_loop(
                    listener,
                    edge,
                    service,
                    builder,
                    connections,
                    stop,
                )),
                Err(e) => tracing::error!(error = %e, "cannot start the accept runtime"),
            }
            let _ = done_tx.send(());
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("jex-accept".to_owned())
        .spawn(accept)
    {
        tracing::error!(error = %e, "cannot start the accept thread");
        return;
    }
    let _ = done_rx.await;
    edge.tracker.drained().await;
}

async fn accept_loop<S: EdgeService>(
    listener: std::net::TcpListener,
    edge: Arc<Edge>,
    service: S,
    builder: Arc<auto::Builder<TokioExecutor>>,
    connections: tokio::runtime::Handle,
    mut stop: watch::Receiver<bool>,
) {
    let Some(listener) = into_async(listener, "gRPC") else {
        return;
    };
    loop {
        // While as many evicted connections are still closing as may be, accept nothing: the
        // kernel's backlog holds the newcomers, and the sockets held stay within the total.
        tokio::select! {
            _ = stopped(&mut stop) => break,
            () = edge.tracker.room() => {}
        }
        let (tcp, addr) = tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    edge.refusals.refused(Source::Listener, Reason::AcceptFailed, || e.to_string());
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let permit = match edge.tracker.admit(addr.ip()) {
            Ok(p) => p,
            Err(reason) => {
                drop(tcp);
                let caps = edge.tracker.caps();
                edge.refusals.refused(Source::Peer(addr.ip()), reason, || {
                    format!(
                        "{} connections without a verified certificate from this address held",
                        caps.per_peer
                    )
                });
                continue;
            }
        };
        // Off this thread's reactor, onto the connections' runtime.
        let Ok(tcp) = tcp.into_std() else {
            continue;
        };
        let (edge, service, builder, stop) =
            (edge.clone(), service.clone(), builder.clone(), stop.clone());
        connections.spawn(async move {
            if let Ok(tcp) = TcpStream::from_std(tcp) {
                connection(tcp, addr, permit, edge, service, builder, stop).await;
            }
        });
    }
    // Stop accepting at once: new clients are refused by the kernel instead of waiting.
    drop(listener);
}

async fn connection<S: EdgeService>(
    tcp: TcpStream,
    addr: SocketAddr,
    permit: Permit,
    edge: Arc<Edge>,
    service: S,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut stop: watch::Receiver<bool>,
) {
    let accepted = Instant::now();
    let peer = Source::Peer(addr.ip());
    let deadlines = edge.limits.deadlines;
    let _ = tcp.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(edge.tls.current());
    let handshake =
        tokio::time::timeout_at(accepted + deadlines.first_request, acceptor.accept(tcp));
    let tls = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let reason = Reason::of_handshake(classify_handshake_error(&e));
                edge.refusals.refused(peer, reason, || {
                    format!("{addr}: {}", handshake_refusal_reason(&e))
                });
                return;
            }
            Err(_) => {
                edge.refusals.refused(peer, Reason::NoRequest, || {
                    format!(
                        "{addr}: TLS handshake not finished within {} ms",
                        deadlines.first_request.as_millis()
                    )
                });
                return;
            }
        },
        () = permit.evicted() => {
            note_eviction(&edge, peer, addr, Reason::EvictedHandshake);
            return;
        }
        _ = stopped(&mut stop) => return,
    };
    let peer_certs = tls.get_ref().1.peer_certificates().map(|certs| {
        Arc::new(
            certs
                .iter()
                .map(|c| c.clone().into_owned())
                .collect::<Vec<_>>(),
        )
    });
    // A certificate here is one the fleet CA verified (the handshake refuses any other).
    let verified = peer_certs.is_some();
    let placed = if verified {
        permit.verified()
    } else {
        permit.unverified()
    };
    if let Err(reason) = placed {
        note_eviction(&edge, peer, addr, reason);
        return;
    }
    let state = ConnState::new(accepted);
    let info = ConnInfo {
        remote: addr,
        peer_certs,
        state: state.clone(),
    };
    let svc = hyper_util::service::TowerToHyperService::new(PerConnection {
        inner: service,
        info,
        calls: edge.calls.clone(),
    });
    let conn = builder.serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    // Once closing: the instant after which the socket is closed when no stream is open.
    let mut closing: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let wake = match closing {
            None => {
                let decided = if is_stopping(&stop) {
                    None
                } else {
                    match verdict(&state.activity(), now, deadlines) {
                        Verdict::Keep(until) => Some(until),
                        Verdict::Close(reason) => {
                            note_close(&edge, peer, addr, reason, deadlines);
                            closing = Some(
                                now + match reason {
                                    CloseReason::NoRequest => CLOSE_GRACE_NO_REQUEST,
                                    CloseReason::Idle | CloseReason::Refused => CLOSE_GRACE,
                                },
                            );
                            None
                        }
                    }
                };
                match decided {
                    Some(until) => until,
                    None => {
                        closing.get_or_insert(now + CLOSE_GRACE);
                        conn.as_mut().graceful_shutdown();
                        continue;
                    }
                }
            }
            Some(hard) => {
                if now >= hard {
                    if state.activity().open_streams == 0 {
                        tracing::trace!(peer = %addr, "connection closed after the grace");
                        break;
                    }
                    None
                } else {
                    Some(hard)
                }
            }
        };
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let stopping = closing.is_none();
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::trace!(peer = %addr, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = state.changed() => {}
            _ = sleep => {}
            _ = stopped(&mut stop), if stopping => {}
            // Only a connection without a certificate can be evicted (a newer one took its
            // place): it is closed at once.
            () = permit.evicted(), if !verified => {
                note_eviction(&edge, peer, addr, Reason::EvictedUnverified);
                break;
            }
        }
    }
}

/// Logs (rate-limited) why a connection was closed for want of room in its share.
fn note_eviction(edge: &Edge, peer: Source, addr: SocketAddr, reason: Reason) {
    let caps = edge.tracker.caps();
    edge.refusals.refused(peer, reason, || match reason {
        Reason::EvictedHandshake => format!(
            "{addr}: closed in its TLS handshake, {} handshakes in progress",
            caps.handshakes
        ),
        Reason::OverVerifiedCap => format!(
            "{addr}: {} connections with a verified certificate held",
            caps.verified()
        ),
        Reason::OverPeerCap => format!(
            "{addr}: {} connections with a verified certificate from this address held",
            caps.per_peer
        ),
        _ => format!(
            "{addr}: closed, {} connections without a client certificate held",
            caps.unverified
        ),
    });
}

/// Completes when the agent stops (or its stop signal is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// True once the agent stops (or its stop signal is gone).
fn is_stopping(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

fn note_close(
    edge: &Edge,
    peer: Source,
    addr: SocketAddr,
    reason: CloseReason,
    deadlines: Deadlines,
) {
    match reason {
        CloseReason::NoRequest => edge.refusals.refused(peer, Reason::NoRequest, || {
            format!(
                "{addr}: no request within {} ms of connecting",
                deadlines.first_request.as_millis()
            )
        }),
        CloseReason::Idle => tracing::debug!(
            peer = %addr,
            idle_ms = deadlines.idle.as_millis() as u64,
            "closing an idle connection"
        ),
        CloseReason::Refused => {
            tracing::trace!(peer = %addr, "closing a connection whose call was refused")
        }
    }
}

/// The routes as one connection calls them: each request carries the connection's
/// [`ConnInfo`] (and tonic's `TcpConnectInfo`), counts as an open stream until its response
/// body is dropped, gets its codec error status remapped, and is counted by method and code.
#[derive(Clone)]
struct PerConnection<S> {
    inner: S,
    info: ConnInfo,
    calls: Arc<super::calls::CallCounts>,
}

impl<S, B> tower::Service<http::Request<B>> for PerConnection<S>
where
    S: EdgeService,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let mut req = req.map(tonic::body::Body::new);
        let stream = self.info.state.stream_opened();
        req.extensions_mut().insert(self.info.clone());
        req.extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(self.info.remote),
            });
        // Take the service that was driven to readiness, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let mut call = super::calls::Pending::new(
            self.calls.clone(),
            super::calls::CallCounts::method_index(req.uri().path()),
        );
        Box::pin(async move {
            let response = inner.call(req).await?;
            let (mut parts, body) = response.into_parts();
            super::grpc_error::remap_codec_status(&mut parts.headers);
            // An answer without a body carries its status in the headers.
            let call = match super::calls::status_of(&parts.headers) {
                Some(code) => {
                    call.finish(code);
                    None
                }
                None => Some(call),
            };
            Ok(http::Response::from_parts(
                parts,
                tonic::body::Body::new(Tracked::new(body, stream, call)),
            ))
        })
    }
}

/// The tokio listener of a bound std one, or `None` (logged as an error naming `what`) when it
/// cannot be made non-blocking or registered with the runtime.
pub(crate) fn into_async(listener: std::net::TcpListener, what: &str) -> Option<TcpListener> {
    match listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
    {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(error = %e, listener = what, "a listener is unusable");
            None
        }
    }
}
