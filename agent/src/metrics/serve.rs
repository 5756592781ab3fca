//! The `/metrics` listener: HTTP/1.1, one request per connection, bounded like the gRPC edge.
//!
//! - At most [`MAX_CONNECTIONS`] connections at once; one more is closed at accept (counted
//!   as `over_total_cap`).
//! - The request head must arrive within [`HEADER_TIMEOUT`] of accept (the TLS handshake
//!   included, with `tls = true`), and the whole exchange, answer written, must be over within
//!   [`REQUEST_DEADLINE`]; a client too slow for either (a slow-loris sending its request a
//!   byte at a time, or one that does not read its answer) is disconnected and counted as
//!   `no_request`.
//! - A request head is at most [`MAX_REQUEST_BYTES`] bytes and [`MAX_HEADERS`] headers
//!   (`431` beyond); its body is never read. The connection closes after one answer
//!   (`Connection: close`), so every connection is bounded by the deadline above and a
//!   scraper opens one per scrape.
//! - `GET` and `HEAD` of `/metrics` (any query string) are answered `200`, in the format the
//!   `Accept` header asks for; another method on `/metrics` gets `405` with `Allow`, another
//!   path `404`.
//! - With `tls = true`: the agent's TLS material with ALPN `http/1.1`, client certificates
//!   verified against the fleet CA in the handshake (a certificate from another CA, or an
//!   expired one, fails it); a client without a certificate, or whose certificate holds no role,
//!   gets `403` saying what to fix. The observer and controller roles may scrape.
//!
//! Refusals go to the listener's own rate-limited [`RefusalLog`] (`listener = "metrics"`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

use super::collect::Sources;
use super::encode::{encode, negotiate};
use crate::config::RolesConfig;
use crate::server::auth::{Refusal, identify};
use crate::server::refusals::{Reason, RefusalLog, Source};
use crate::tls::{ServerTls, classify_handshake_error, handshake_refusal_reason};

/// Connections held at once.
pub const MAX_CONNECTIONS: usize = 8;

/// From accept to the whole request head (TLS handshake included).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// From accept to the answer written.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// The largest request head (the smallest read buffer hyper accepts).
pub const MAX_REQUEST_BYTES: usize = 8192;

/// The most request headers.
pub const MAX_HEADERS: usize = 32;

/// The path served.
pub const PATH: &str = "/metrics";

/// What the connection tasks share.
pub(crate) struct Endpoint {
    /// What the families are read from.
    pub sources: Arc<Sources>,
    /// `Some` with `tls = true`.
    pub tls: Option<Arc<ServerTls>>,
    /// Who holds which role.
    pub roles: Arc<RolesConfig>,
    /// This listener's refusals.
    pub refusals: Arc<RefusalLog>,
}

/// Binds the metrics address.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)?.into_std()
}

/// Accepts until `stop` turns true. Connections still open then finish within their deadline.
pub(crate) async fn serve(
    listener: std::net::TcpListener,
    endpoint: Arc<Endpoint>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(listener) = crate::server::listener::into_async(listener, "metrics") else {
        return;
    };
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(false)
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BYTES)
        .max_headers(MAX_HEADERS);
    let builder = Arc::new(builder);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, addr) = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    endpoint.refusals.refused(Source::Listener, Reason::AcceptFailed, || e.to_string());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(tcp);
            endpoint
                .refusals
                .refused(Source::Peer(addr.ip()), Reason::OverTotalCap, || {
                    format!("{addr}: {MAX_CONNECTIONS} metrics connections held")
                });
            continue;
        };
        let (endpoint, builder) = (endpoint.clone(), builder.clone());
        tokio::spawn(async move {
            connection(tcp, addr, &endpoint, &builder).await;
            drop(permit);
        });
    }
}

/// Completes when the agent stops (or its stop signal is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Who may read the metrics on a connection.
#[derive(Clone)]
enum Access {
    /// Plain HTTP on loopback, or a certificate that holds a role.
    Granted,
    /// The certificate (or its absence) holds no role.
    Refused(Arc<Refusal>),
}

async fn connection(
    tcp: TcpStream,
    addr: SocketAddr,
    endpoint: &Arc<Endpoint>,
    builder: &auto::Builder<TokioExecutor>,
) {
    let peer = Source::Peer(addr.ip());
    let answered = Arc::new(AtomicBool::new(false));
    let work = async {
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &endpoint.tls else {
            return serve_http(
                TokioIo::new(tcp),
                Access::Granted,
                endpoint,
                builder,
                &answered,
            )
            .await;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current_http1());
        let stream = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let reason = Reason::of_handshake(classify_handshake_error(&e));
                endpoint.refusals.refused(peer, reason, || {
                    format!("{addr}: {}", handshake_refusal_reason(&e))
                });
                return Ok(());
            }
            Err(_) => {
                endpoint.refusals.refused(peer, Reason::NoRequest, || {
                    format!(
                        "{addr}: TLS handshake not finished within {} ms",
                        HEADER_TIMEOUT.as_millis()
                    )
                });
                return Ok(());
            }
        };
        let certs = stream.get_ref().1.peer_certificates().map(|c| c.to_vec());
        let access = match identify(&endpoint.roles, certs.as_deref()) {
            Ok(_) => Access::Granted,
            Err(refusal) => {
                endpoint.refusals.refused(peer, refusal.reason(), || {
                    let detail = refusal.detail();
                    let sep = if detail.is_empty() { "" } else { ": " };
                    format!("{addr} asked for {PATH}{sep}{detail}")
                });
                Access::Refused(Arc::new(refusal))
            }
        };
        serve_http(TokioIo::new(stream), access, endpoint, builder, &answered).await
    };
    match tokio::time::timeout(REQUEST_DEADLINE, work).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            if !answered.load(Ordering::Relaxed) {
                endpoint.refusals.refused(peer, Reason::NoRequest, || {
                    format!("{addr}: no complete request: {e}")
                });
            } else {
                tracing::trace!(peer = %addr, error = %e, "metrics connection ended with an error");
            }
        }
        Err(_) => endpoint.refusals.refused(peer, Reason::NoRequest, || {
            format!(
                "{addr}: request not over within {} ms of connecting",
                REQUEST_DEADLINE.as_millis()
            )
        }),
    }
}

type ConnError = Box<dyn std::error::Error + Send + Sync>;

async fn serve_http<I>(
    io: TokioIo<I>,
    access: Access,
    endpoint: &Arc<Endpoint>,
    builder: &auto::Builder<TokioExecutor>,
    answered: &Arc<AtomicBool>,
) -> Result<(), ConnError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handler = Handler {
        sources: endpoint.sources.clone(),
        access,
        answered: answered.clone(),
    };
    builder
        .serve_connection(io, hyper_util::service::TowerToHyperService::new(handler))
        .await
}

/// Answers the requests of one connection.
#[derive(Clone)]
struct Handler {
    sources: Arc<Sources>,
    access: Access,
    answered: Arc<AtomicBool>,
}

fn text(status: http::StatusCode, body: &str) -> http::Response<String> {
    let mut response = http::Response::new(format!("{body}\n"));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The answer to a request, before the families are read: `Err` with the finished answer for
/// anything but a scrape, `Ok` with the format for a scrape.
fn route<B>(
    access: &Access,
    req: &http::Request<B>,
) -> Result<super::Format, Box<http::Response<String>>> {
    if let Access::Refused(refusal) = access {
        let why = match refusal.as_ref() {
            Refusal::NoCertificate => {
                "no client certificate: connect with a certificate issued by the fleet CA"
                    .to_owned()
            }
            other => format!(
                "client certificate holds no role on this agent ({}): use an observer or controller identity listed in its [roles] config",
                other.detail()
            ),
        };
        return Err(Box::new(text(http::StatusCode::FORBIDDEN, &why)));
    }
    if req.uri().path() != PATH {
        return Err(Box::new(text(
            http::StatusCode::NOT_FOUND,
            "not found: this listener serves /metrics only",
        )));
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        let mut response = text(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET or HEAD",
        );
        response.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return Err(Box::new(response));
    }
    let accept = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    Ok(negotiate(accept))
}

impl<B> tower::Service<http::Request<B>> for Handler {
    type Response = http::Response<String>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.answered.store(true, Ordering::Relaxed);
        let routed = route(&self.access, &req);
        let head = req.method() == http::Method::HEAD;
        let sources = self.sources.clone();
        Box::pin(async move {
            let format = match routed {
                Ok(format) => format,
                Err(response) => return Ok(*response),
            };
            // Reading the parts takes locks and reads /proc: off the runtime's threads.
            let body =
                tokio::task::spawn_blocking(move || encode(&sources.families(), format)).await;
            let Ok(body) = body else {
                return Ok(text(
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error: the metrics could not be read; the agent log has the details",
                ));
            };
            let length = body.len();
            let mut response = http::Response::new(if head { String::new() } else { body });
            let headers = response.headers_mut();
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(format.content_type()),
            );
            headers.insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from(length),
            );
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: http::Method, path: &str, accept: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::builder().method(method).uri(path);
        if let Some(a) = accept {
            b = b.header(http::header::ACCEPT, a);
        }
        b.body(()).unwrap_or_default()
    }

    #[test]
    fn only_get_and_head_of_metrics_are_scrapes() {
        let open = Access::Granted;
        assert_eq!(
            route(&open, &request(http::Method::GET, "/metrics", None)).ok(),
            Some(super::super::Format::Prometheus)
        );
        assert_eq!(
            route(
                &open,
                &request(
                    http::Method::HEAD,
                    "/metrics?x=1",
                    Some("application/openmetrics-text; version=1.0.0")
                )
            )
            .ok(),
            Some(super::super::Format::OpenMetrics)
        );
        let status = |r: Result<_, Box<http::Response<String>>>| r.err().map(|r| r.status());
        assert_eq!(
            status(route(&open, &request(http::Method::GET, "/", None))),
            Some(http::StatusCode::NOT_FOUND)
        );
        assert_eq!(
            status(route(
                &open,
                &request(http::Method::GET, "/metrics/x", None)
            )),
            Some(http::StatusCode::NOT_FOUND)
        );
        let post = route(&open, &request(http::Method::POST, "/metrics", None));
        let post = post
            .err()
            .map(|r| (r.status(), r.headers().get("allow").cloned()));
        assert_eq!(
            post,
            Some((
                http::StatusCode::METHOD_NOT_ALLOWED,
                Some(http::HeaderValue::from_static("GET, HEAD"))
            ))
        );
        let refused = Access::Refused(Arc::new(Refusal::NoCertificate));
        let answer = route(&refused, &request(http::Method::GET, "/metrics", None)).err();
        assert_eq!(
            answer.as_ref().map(|r| r.status()),
            Some(http::StatusCode::FORBIDDEN)
        );
        assert!(
            answer
                .map(|r| r.into_body())
                .unwrap_or_default()
                .contains("no client certificate")
        );
    }
}
