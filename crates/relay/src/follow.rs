//! Following one host: connect over mTLS, check the host id, read the cursor from JetStream,
//! stream the telemetry after it, and hand each stream message to the sinks; then reconnect
//! with jittered exponential backoff, for as long as the host is in the list.
//!
//! Per stream message (a batch of records): remote_write first (retried while the receiver is
//! unavailable, so the stream waits; a refusal is logged and counted), then one JetStream
//! publish per record, whose acks are awaited in order in a window of `max_in_flight`: while
//! the window is full the relay does not read the host's stream, so memory per host is
//! bounded by the window and one stream message. An ack that says duplicate is a record
//! JetStream already stored: counted, not an error.
//!
//! Exactly once and gap-free: the cursor is the last stored message of the host's subject, and
//! every message id is `<host_id>:<seq>`, so a resend after a crash is dropped by JetStream.
//! Acks are taken in order and the last seq of an unbroken run of acks is remembered across
//! reconnects; if JetStream stored a later seq while an earlier one failed (possible when the
//! NATS connection drops mid-window), the next session resumes from the unbroken run, the
//! missing records are stored then and the others are acknowledged as duplicates (the hole
//! is filled, and that host's stream order differs from seq order there: logged as a WARN).
//!
//! `OUT_OF_RANGE` from the agent (the cursor is past its last seq: its spool is a new life):
//! an ERROR, a reset marker on the subject (`Jex-Reset: spool-lost`, `Jex-Epoch: n+1`), and
//! the records from seq 1 in the new epoch (message ids `<host_id>:e<n>:<seq>`).

use std::collections::VecDeque;
use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use jex_proto::v1 as pb;
use jex_proto::v1::node_agent_client::NodeAgentClient;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::backoff::Backoff;
use crate::config::{FollowConfig, HostEntry, TlsFiles};
use crate::layout::Cursor;
use crate::metrics::Metrics;
use crate::sink::{Ack, Sink, SinkError, SinkFactory, Store, StoreError, Stored};

/// What every follower shares.
pub struct Shared<S> {
    /// The exactly-once store (JetStream).
    pub store: Arc<S>,
    /// The further sinks (remote_write), one opened per host.
    pub sinks: Vec<Arc<dyn SinkFactory>>,
    /// The relay's metrics.
    pub metrics: Arc<Metrics>,
    /// The relay's client identity.
    pub tls: TlsFiles,
    /// Backoff and batch settings.
    pub follow: FollowConfig,
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The TLS handshake or the certificate check failed.
    #[error("TLS to {addr}: {message}")]
    Tls {
        /// The agent's URL.
        addr: String,
        /// What failed.
        message: String,
    },
    /// The agent could not be reached or ended the stream.
    #[error("agent at {addr} unavailable: {message}")]
    Unavailable {
        /// The agent's URL.
        addr: String,
        /// What happened.
        message: String,
    },
    /// The agent is not the configured host.
    #[error(
        "host id mismatch: the configuration says {configured:?} for {addr}, the agent's certificate says {reported:?}; nothing is published for either until the host list or the agent is fixed"
    )]
    HostIdMismatch {
        /// The configured id.
        configured: String,
        /// The agent's.
        reported: String,
        /// The agent's URL.
        addr: String,
    },
    /// The agent refused or broke the stream.
    #[error("telemetry stream from {addr}: {code:?}: {message}")]
    Stream {
        /// The agent's URL.
        addr: String,
        /// The gRPC code.
        code: tonic::Code,
        /// The agent's message.
        message: String,
    },
    /// The store (JetStream) failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file of `[tls]` could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The host was removed from the list or the relay is stopping.
    #[error("stopped")]
    Stopped,
}

impl SessionError {
    /// The reason label of `jex_relay_connect_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SessionError::Tls { .. } | SessionError::Read { .. } => "tls",
            SessionError::Unavailable { .. } => "unavailable",
            SessionError::HostIdMismatch { .. } => "host_id_mismatch",
            SessionError::Stream { .. } => "stream",
            SessionError::Store(_) => "jetstream",
            SessionError::Stopped => "other",
        }
    }
}

/// The whole message of an error and its causes.
fn chain(e: &dyn std::error::Error) -> String {
    jex_agent::error_chain(e)
}

fn looks_like_tls(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    ["certificate", "tls", "handshake", "unknownissuer", "alert"]
        .iter()
        .any(|w| t.contains(w))
}

fn from_status(addr: &str, s: tonic::Status) -> SessionError {
    let text = format!(
        "{}: {}",
        s.message(),
        s.source().map(chain).unwrap_or_default()
    );
    if looks_like_tls(&text) {
        SessionError::Tls {
            addr: addr.to_owned(),
            message: text,
        }
    } else if s.code() == tonic::Code::Unavailable {
        SessionError::Unavailable {
            addr: addr.to_owned(),
            message: text,
        }
    } else {
        SessionError::Stream {
            addr: addr.to_owned(),
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

/// The client TLS configuration ([`crate::tls::client_config`]): TLS 1.3 only, the fleet CA as
/// the only root, the relay's observer certificate, ALPN `h2`.
fn client_config(tls: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, SessionError> {
    crate::tls::client_config(&tls.ca, Some((&tls.cert, &tls.key)), b"h2").map_err(|e| match e {
        crate::tls::TlsFileError::Read { path, source } => SessionError::Read { path, source },
        bad @ crate::tls::TlsFileError::Bad { .. } => SessionError::Tls {
            addr: String::new(),
            message: bad.to_string(),
        },
    })
}

/// TCP to the agent, then TLS with [`client_config`]; tonic speaks HTTP/2 over it.
#[derive(Clone)]
struct Connector {
    config: Arc<rustls::ClientConfig>,
    authority: String,
    name: rustls::pki_types::ServerName<'static>,
}

type Io = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tonic::codegen::Service<http::Uri> for Connector {
    type Response = Io;
    type Error = std::io::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Io, std::io::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(&this.authority).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(this.config)
                .connect(this.name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

async fn connect(
    host: &HostEntry,
    tls: &TlsFiles,
) -> Result<NodeAgentClient<Channel>, SessionError> {
    let config = client_config(tls).map_err(|e| match e {
        SessionError::Tls { message, .. } => SessionError::Tls {
            addr: host.addr.clone(),
            message,
        },
        other => other,
    })?;
    let bad_url = |why: &str| SessionError::Unavailable {
        addr: host.addr.clone(),
        message: format!("bad URL: {why}"),
    };
    let uri: http::Uri = host.addr.parse().map_err(|_| bad_url("does not parse"))?;
    let authority = uri.authority().ok_or_else(|| bad_url("no host"))?;
    let port = authority.port_u16().unwrap_or(443);
    let url_host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = host.server_name.as_deref().unwrap_or(url_host).to_owned();
    let name =
        rustls::pki_types::ServerName::try_from(name.clone()).map_err(|_| SessionError::Tls {
            addr: host.addr.clone(),
            message: format!(
                "{name:?} is not a DNS name or an IP address to check the certificate against"
            ),
        })?;
    let connector = Connector {
        config,
        authority: format!("{}:{port}", authority.host()),
        name,
    };
    let transport = |e: tonic::transport::Error| {
        let message = chain(&e);
        if looks_like_tls(&message) {
            SessionError::Tls {
                addr: host.addr.clone(),
                message,
            }
        } else {
            SessionError::Unavailable {
                addr: host.addr.clone(),
                message,
            }
        }
    };
    // The scheme tonic sees is `http`: TLS is the connector's own (TLS 1.3 only), not tonic's.
    let channel = Endpoint::from_shared(format!("http://{}:{port}", authority.host()))
        .map_err(|e| bad_url(&e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_with_connector(connector)
        .await
        .map_err(transport)?;
    Ok(NodeAgentClient::new(channel))
}

/// What a follower keeps across sessions.
struct HostState {
    /// The end of the unbroken run of acks (the cursor at the start of a session).
    acked: Option<Cursor>,
    /// The host's further sinks.
    sinks: Vec<Box<dyn Sink>>,
}

/// One publish awaiting its ack.
struct InFlight {
    seq: u64,
    time_ms: u64,
    gap: bool,
    ack: Ack,
}

/// Follows `host` until `stop` turns true.
pub async fn follow<S: Store>(
    host: HostEntry,
    shared: Arc<Shared<S>>,
    mut stop: watch::Receiver<bool>,
) {
    let id = host.host_id.clone();
    shared.metrics.add_host(&id);
    let mut backoff = Backoff::new(shared.follow.backoff_min, shared.follow.backoff_max);
    let mut state = HostState {
        acked: None,
        sinks: shared.sinks.iter().map(|f| f.open(&id)).collect(),
    };
    tracing::info!(host_id = %id, addr = %host.addr, "following host");
    loop {
        if *stop.borrow() {
            break;
        }
        let result = session(&host, &shared, &mut state, &mut backoff, &mut stop).await;
        shared.metrics.set_connected(&id, false);
        let e = match result {
            Ok(()) | Err(SessionError::Stopped) => break,
            Err(e) => e,
        };
        let reason = e.reason();
        shared.metrics.connect_error(reason);
        let delay = backoff.next_delay();
        let retry_in_ms = delay.as_millis() as u64;
        match &e {
            SessionError::HostIdMismatch {
                configured,
                reported,
                ..
            } => tracing::error!(
                host_id = %id, configured = %configured, reported = %reported, addr = %host.addr,
                reason, retry_in_ms, "{}", chain(&e)
            ),
            SessionError::Tls { .. } | SessionError::Read { .. } => tracing::error!(
                host_id = %id, addr = %host.addr, reason, retry_in_ms,
                "TLS connection to the agent failed: {}", chain(&e)
            ),
            _ => tracing::warn!(
                host_id = %id, addr = %host.addr, reason, retry_in_ms,
                "host session ended: {}", chain(&e)
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => break,
        }
    }
    shared.metrics.remove_host(&id);
    tracing::info!(host_id = %id, "stopped following host");
}

async fn session<S: Store>(
    host: &HostEntry,
    shared: &Shared<S>,
    state: &mut HostState,
    backoff: &mut Backoff,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let id = host.host_id.as_str();
    let addr = host.addr.as_str();
    let mut client = connect(host, &shared.tls).await?;
    let reported = client
        .get_host(pb::GetHostRequest {})
        .await
        .map_err(|s| from_status(addr, s))?
        .into_inner()
        .host
        .unwrap_or_default()
        .host_id;
    if reported != id {
        return Err(SessionError::HostIdMismatch {
            configured: id.to_owned(),
            reported,
            addr: addr.to_owned(),
        });
    }
    let store = &*shared.store;
    store.ensure().await?;
    let stored = store.cursor(id).await?;
    let mut cursor = resume_point(stored, state.acked);
    if cursor != stored {
        tracing::warn!(
            host_id = %id, acked = cursor.seq, stored = stored.seq,
            "JetStream holds seqs past a failed publish: resending from the last unbroken ack (the missing ones land after later ones; the others are duplicates)"
        );
    }
    let request = |after_seq| pb::StreamTelemetryRequest {
        after_seq,
        max_batch_records: shared.follow.max_batch_records,
        history_only: false,
    };
    let mut stream = match client.stream_telemetry(request(cursor.seq)).await {
        Ok(s) => s.into_inner(),
        Err(s) if s.code() == tonic::Code::OutOfRange => {
            cursor = new_epoch(id, shared, cursor, s.message()).await?;
            client
                .stream_telemetry(request(0))
                .await
                .map_err(|s| from_status(addr, s))?
                .into_inner()
        }
        Err(s) => return Err(from_status(addr, s)),
    };
    state.acked = Some(cursor);
    shared.metrics.set_connected(id, true);
    backoff.reset();
    tracing::info!(host_id = %id, after_seq = cursor.seq, epoch = cursor.epoch, "telemetry stream open");

    let window = store.max_in_flight();
    let mut pending: VecDeque<InFlight> = VecDeque::with_capacity(window.min(1024));
    let mut last_seen = cursor.seq;
    let result = loop {
        tokio::select! {
            _ = stop.changed() => break Err(SessionError::Stopped),
            r = async {
                match pending.front_mut() {
                    Some(p) => p.ack.as_mut().await,
                    None => std::future::pending().await,
                }
            }, if !pending.is_empty() => {
                if let Err(e) = on_ack(id, shared, state, cursor.epoch, &mut pending, r) {
                    break Err(e);
                }
            }
            m = stream.message(), if pending.len() < window => {
                let batch = match m {
                    Ok(Some(b)) => b,
                    Ok(None) => break Err(SessionError::Unavailable {
                        addr: addr.to_owned(),
                        message: "the agent ended the stream".into(),
                    }),
                    // The agent says OUT_OF_RANGE as the stream's first item (before any record):
                    // the same new life as at the open.
                    Err(s) if s.code() == tonic::Code::OutOfRange && last_seen == cursor.seq && pending.is_empty() => {
                        cursor = match new_epoch(id, shared, cursor, s.message()).await {
                            Ok(c) => c,
                            Err(e) => break Err(e),
                        };
                        state.acked = Some(cursor);
                        last_seen = 0;
                        stream = match client.stream_telemetry(request(0)).await {
                            Ok(s) => s.into_inner(),
                            Err(s) => break Err(from_status(addr, s)),
                        };
                        continue;
                    }
                    Err(s) => break Err(from_status(addr, s)),
                };
                if let Err(e) = on_batch(host, shared, state, cursor.epoch, &mut pending, &mut last_seen, batch.records, stop).await {
                    break Err(e);
                }
            }
        }
    };
    // Take the acks still due (they are stored or not; either way the cursor says so next time).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Some(front) = pending.front_mut() {
        match tokio::time::timeout_at(deadline, front.ack.as_mut()).await {
            Ok(r) => {
                if on_ack(id, shared, state, cursor.epoch, &mut pending, r).is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    result
}

/// Where to resume: after the last stored message (`stored`), unless this process saw an ack fail
/// before a seq JetStream holds (`acked`, the end of the unbroken run of acks, is behind `stored`
/// in the same epoch): then after `acked`, so that the record that failed is sent again.
pub fn resume_point(stored: Cursor, acked: Option<Cursor>) -> Cursor {
    match acked {
        Some(a) if a.epoch == stored.epoch && a.seq < stored.seq => a,
        _ => stored,
    }
}

/// The agent's spool is a new life: an ERROR, the reset marker of the next epoch, and the
/// cursor to follow it from (seq 0 in that epoch).
async fn new_epoch<S: Store>(
    id: &str,
    shared: &Shared<S>,
    cursor: Cursor,
    agent: &str,
) -> Result<Cursor, SessionError> {
    let epoch = cursor.epoch + 1;
    tracing::error!(
        host_id = %id, after_seq = cursor.seq, old_epoch = cursor.epoch, epoch, agent = %agent,
        "the agent's spool is a new life (OUT_OF_RANGE past the stored cursor): publishing a reset marker (Jex-Reset: spool-lost) and following from seq 1 in a new epoch"
    );
    shared.metrics.connect_error("out_of_range");
    shared.store.publish_reset(id, epoch).await?;
    shared.metrics.reset();
    Ok(Cursor { seq: 0, epoch })
}

fn on_ack<S: Store>(
    id: &str,
    shared: &Shared<S>,
    state: &mut HostState,
    epoch: u64,
    pending: &mut VecDeque<InFlight>,
    r: Result<Stored, String>,
) -> Result<(), SessionError> {
    let Some(done) = pending.pop_front() else {
        return Ok(());
    };
    match r {
        Ok(ack) => {
            shared
                .metrics
                .acked(id, done.seq, done.time_ms, ack.duplicate, done.gap);
            state.acked = Some(Cursor {
                seq: done.seq,
                epoch,
            });
            Ok(())
        }
        Err(e) => {
            let n = 1 + pending.len() as u64;
            shared.metrics.publish_error(shared.store.name(), "ack", n);
            shared.store.lost();
            // The rest of the window is abandoned: the next session resumes from the cursor.
            pending.clear();
            tracing::error!(
                host_id = %id, seq = done.seq, abandoned = n,
                "JetStream did not acknowledge a publish: {e}; resuming from the stored cursor"
            );
            Err(SessionError::Store(StoreError::Publish {
                subject: crate::layout::subject(id),
                what: format!("seq {}", done.seq),
                message: e,
            }))
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn on_batch<S: Store>(
    host: &HostEntry,
    shared: &Shared<S>,
    state: &mut HostState,
    epoch: u64,
    pending: &mut VecDeque<InFlight>,
    last_seen: &mut u64,
    records: Vec<pb::TelemetryRecord>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let id = host.host_id.as_str();
    let records: Vec<pb::TelemetryRecord> = records
        .into_iter()
        .filter(|r| {
            if r.seq <= *last_seen {
                tracing::debug!(host_id = %id, seq = r.seq, "record at or before the cursor skipped");
                return false;
            }
            if r.seq != *last_seen + 1 && !matches!(r.body, Some(pb::telemetry_record::Body::Gap(_))) {
                tracing::warn!(host_id = %id, expected = *last_seen + 1, seq = r.seq, "the agent's seq jumped without a gap record");
            }
            *last_seen = r.seq;
            true
        })
        .collect();
    if records.is_empty() {
        return Ok(());
    }
    for sink in &mut state.sinks {
        write_sink(id, shared, sink.as_mut(), &records, stop).await?;
    }
    let window = shared.store.max_in_flight();
    for record in &records {
        while pending.len() >= window {
            let r = match pending.front_mut() {
                Some(p) => p.ack.as_mut().await,
                None => break,
            };
            on_ack(id, shared, state, epoch, pending, r)?;
        }
        let gap = matches!(record.body, Some(pb::telemetry_record::Body::Gap(_)));
        let ack = match shared.store.publish(id, epoch, record).await {
            Ok(a) => a,
            Err(e) => {
                shared.metrics.publish_error(shared.store.name(), "send", 1);
                shared.store.lost();
                return Err(e.into());
            }
        };
        pending.push_back(InFlight {
            seq: record.seq,
            time_ms: record.time_unix_ms,
            gap,
            ack,
        });
    }
    Ok(())
}

/// Writes one batch to one sink: retried with backoff while it is unavailable (the host's
/// stream waits), counted and logged when refused (not retried: the store still gets it).
async fn write_sink<S: Store>(
    id: &str,
    shared: &Shared<S>,
    sink: &mut dyn Sink,
    records: &[pb::TelemetryRecord],
    stop: &mut watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let name = sink.name();
    let mut backoff = Backoff::new(shared.follow.backoff_min, shared.follow.backoff_max);
    loop {
        match sink.write(id, records).await {
            Ok(written) => {
                shared.metrics.sink_written(name, written.records);
                if written.skipped > 0 {
                    shared
                        .metrics
                        .publish_error(name, "bad_record", written.skipped);
                }
                return Ok(());
            }
            Err(SinkError::Refused { reason, message }) => {
                shared
                    .metrics
                    .publish_error(name, reason, records.len() as u64);
                tracing::error!(
                    host_id = %id,
                    sink = name,
                    records = records.len(),
                    first_seq = records.first().map_or(0, |r| r.seq),
                    last_seq = records.last().map_or(0, |r| r.seq),
                    reason,
                    "{name} refused these records (not retried; JetStream still gets them): {message}"
                );
                return Ok(());
            }
            Err(SinkError::Retry { message }) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    host_id = %id, sink = name, records = records.len(), retry_in_ms = delay.as_millis() as u64,
                    "{name} unavailable, the host's stream waits: {message}"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return Err(SessionError::Stopped),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_that_do_not_load_say_which_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = |n: &str| dir.path().join(n);
        std::fs::write(path("ca.pem"), "not a certificate\n").unwrap();
        std::fs::write(path("cert.pem"), "").unwrap();
        std::fs::write(path("key.pem"), "").unwrap();
        let files = TlsFiles {
            cert: path("cert.pem"),
            key: path("key.pem"),
            ca: path("ca.pem"),
        };
        let e = client_config(&files).unwrap_err();
        assert_eq!(e.reason(), "tls");
        assert!(
            e.to_string().contains("ca.pem: no certificate in the file"),
            "{e}"
        );
        let missing = TlsFiles {
            ca: path("absent.pem"),
            ..files
        };
        let e = client_config(&missing).unwrap_err();
        assert!(matches!(e, SessionError::Read { .. }), "{e}");
        assert!(e.to_string().contains("absent.pem"), "{e}");
    }

    #[test]
    fn a_failed_ack_before_a_stored_seq_resumes_from_the_unbroken_run() {
        let c = |seq, epoch| Cursor { seq, epoch };
        // First session of this process: the store's cursor.
        assert_eq!(resume_point(c(40, 0), None), c(40, 0));
        // Everything acked up to the stored end (or beyond: a crash lost nothing).
        assert_eq!(resume_point(c(40, 0), Some(c(40, 0))), c(40, 0));
        assert_eq!(resume_point(c(40, 0), Some(c(45, 0))), c(40, 0));
        // Seq 31 failed but 32..=40 were stored: resend from 31.
        assert_eq!(resume_point(c(40, 0), Some(c(30, 0))), c(30, 0));
        // Another epoch since (a reset marker): the store wins.
        assert_eq!(resume_point(c(0, 1), Some(c(30, 0))), c(0, 1));
        assert_eq!(resume_point(c(5, 2), Some(c(3, 1))), c(5, 2));
    }

    #[test]
    fn tls_words_in_an_error_make_it_a_tls_error() {
        assert!(looks_like_tls("invalid peer certificate: UnknownIssuer"));
        assert!(looks_like_tls("received fatal alert: CertificateRequired"));
        assert!(!looks_like_tls("Connection refused (os error 111)"));
    }
}
