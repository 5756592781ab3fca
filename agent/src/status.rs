//! The local status socket: `jex-agent status`, run as root on the host, reads the running
//! agent's state through a Unix domain socket (mode 0600, so root only) — no network and no
//! certificates needed.
//!
//! Protocol: the client connects and sends one request line,
//!
//! ```text
//! request = ("status" / "plan") (LF / end of input)
//! ```
//!
//! and the agent answers with one JSON document followed by a newline ([`StatusSnapshot`], or
//! the erase plan: what a `Terminate` would destroy, computed without touching anything) and
//! closes the connection. Anything else — another word, an empty request, a line longer than
//! [`MAX_REQUEST_BYTES`], no request within [`REQUEST_TIMEOUT`], or more than the connection
//! cap at once — gets `{"request_error": "<what is wrong>"}`, never a reset: what the client
//! sent beyond the line is read and dropped before the socket is closed.
//!
//! The socket is served on a thread and runtime of its own, with its own connection cap, so
//! that nothing on the network side can starve it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::server::refusals::{Reason, RefusalLog, Source};

/// The longest request line (without its LF).
pub const MAX_REQUEST_BYTES: usize = 64;

/// How long a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the answer may take to be written.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most bytes, and the longest time, spent dropping what a client sent beyond its request
/// (so that closing does not reset the connection before the client read the answer).
const DRAIN_BYTES: usize = 1 << 20;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The key of an error answer.
pub const REQUEST_ERROR: &str = "request_error";

/// The agent's state, as `jex-agent status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StatusSnapshot {
    /// Agent version.
    pub agent_version: String,
    /// Process id.
    pub pid: u32,
    /// Host id from the agent certificate.
    pub host_id: String,
    /// gRPC listen address.
    pub listen: String,
    /// Lifecycle state (`SERVING`, `ERASING`, `RECLAIMABLE`, `ERASE_FAILED`).
    pub lifecycle: String,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// Open telemetry streams.
    pub streams: Vec<StreamStatus>,
    /// Network connections held and their caps.
    #[serde(default)]
    pub connections: ConnectionStatus,
    /// Telemetry sampler and spool.
    pub telemetry: TelemetryStatus,
    /// The current or last erase operation.
    pub erase: Option<EraseStatus>,
    /// Why the erase service is unavailable (a first start on a full disk could not create its
    /// state directory), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erase_unavailable: Option<String>,
}

/// Network connections (counted from TCP accept).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ConnectionStatus {
    /// Held now.
    pub open: u32,
    /// The total cap.
    pub max: u32,
    /// The cap per client IP address.
    pub max_per_peer: u32,
}

/// One open telemetry stream.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StreamStatus {
    /// The caller's URI SAN.
    pub peer: String,
    /// Its role.
    pub role: String,
    /// Its TCP address.
    pub addr: String,
    /// Seconds the stream has been open.
    pub open_secs: u64,
    /// The last seq sent to it.
    pub last_seq_sent: u64,
}

/// Sampler and spool state.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TelemetryStatus {
    /// Sampling interval.
    pub interval_ms: u64,
    /// The last record's seq.
    pub last_seq: u64,
    /// The last sample's time (Unix ms), 0 if none yet.
    pub last_sample_unix_ms: u64,
    /// The oldest seq still in the spool.
    pub spool_first_seq: u64,
    /// Records in the spool.
    pub spool_records: u64,
    /// Spool bytes on disk.
    pub spool_bytes: u64,
    /// Corrupt records skipped since start.
    pub corrupt_records: u64,
    /// Records evicted by the size cap since start.
    pub evicted_records: u64,
    /// The spool cannot store records (disk full): they are sent live only.
    #[serde(default)]
    pub not_durable: bool,
}

/// Erase progress.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct EraseStatus {
    /// Operation id.
    pub operation_id: String,
    /// Phase.
    pub phase: String,
    /// Outcome, when finished.
    pub outcome: Option<String>,
    /// Bytes done in the phase.
    pub bytes_done: u64,
    /// Bytes in the phase.
    pub bytes_total: u64,
    /// Bytes per second.
    pub rate_bytes_per_second: f64,
    /// Seconds left.
    pub eta_seconds: u64,
    /// Why it failed.
    pub failure_reason: Option<String>,
}

/// What a client asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// The status snapshot.
    Status,
    /// The erase plan.
    Plan,
}

impl Query {
    fn as_line(self) -> &'static [u8] {
        match self {
            Query::Status => b"status\n",
            Query::Plan => b"plan\n",
        }
    }
}

/// What was read of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A whole line (ended by LF, or by the end of input), without its LF.
    Complete(Vec<u8>),
    /// More than [`MAX_REQUEST_BYTES`] without an LF.
    TooLong,
}

/// Parses a request line: exactly `status` or `plan`.
pub fn parse_request(line: &Line) -> Result<Query, String> {
    const HELP: &str = "send `status` or `plan` and a newline";
    match line {
        Line::TooLong => Err(format!(
            "request longer than {MAX_REQUEST_BYTES} bytes: {HELP}"
        )),
        Line::Complete(l) if l.as_slice() == b"status" => Ok(Query::Status),
        Line::Complete(l) if l.as_slice() == b"plan" => Ok(Query::Plan),
        Line::Complete(l) if l.is_empty() => Err(format!("empty request: {HELP}")),
        Line::Complete(l) => Err(format!(
            "unknown request {:?}: {HELP}",
            String::from_utf8_lossy(l)
        )),
    }
}

/// Reads one request line, at most [`MAX_REQUEST_BYTES`] (+ LF) bytes.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Line> {
    let mut buf = Vec::with_capacity(MAX_REQUEST_BYTES + 1);
    let mut chunk = [0u8; MAX_REQUEST_BYTES + 1];
    loop {
        let room = MAX_REQUEST_BYTES + 1 - buf.len();
        let n = r.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Ok(Line::Complete(buf));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(lf) = buf.iter().position(|b| *b == b'\n') {
            buf.truncate(lf);
            return Ok(Line::Complete(buf));
        }
        if buf.len() > MAX_REQUEST_BYTES {
            return Ok(Line::TooLong);
        }
    }
}

fn request_error(message: &str) -> serde_json::Value {
    serde_json::json!({ REQUEST_ERROR: message })
}

/// Answers a query with a JSON document; called on a blocking thread.
pub type Responder = Arc<dyn Fn(Query) -> serde_json::Value + Send + Sync>;

/// The status socket failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Binding the socket failed.
    #[error("binding status socket {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Connecting failed.
    #[error("connecting to status socket {path} (is the agent running, and are you root?)")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The answer was not a status document.
    #[error("reading status from {path}")]
    Read {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent refused the request.
    #[error("the agent at {path} refused the request: {message}")]
    Refused {
        /// The socket path.
        path: PathBuf,
        /// What it said.
        message: String,
    },
    /// The status thread could not start.
    #[error("starting the status socket thread")]
    Thread(#[source] std::io::Error),
    /// The answer did not parse.
    #[error("status from {path} is not valid JSON")]
    Parse {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

impl StatusError {
    /// No agent runs: the socket is missing, or nothing listens on it. What `erase-plan` plans
    /// offline for; any other failure means an agent may be there.
    pub fn no_agent(&self) -> bool {
        matches!(self, StatusError::Connect { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused))
    }

    /// The socket (or its directory) exists but this user may not open it: it is root-only.
    pub fn not_permitted(&self) -> bool {
        matches!(self, StatusError::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied)
    }
}

/// The status socket served on its own thread; stopped (and its thread joined) by
/// [`StatusServer::stop`], or stopped without waiting when dropped.
#[derive(Debug)]
pub struct StatusServer {
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatusServer {
    /// Stops serving and waits for the thread.
    pub fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
    }
}

/// Binds the socket (replacing a stale one, mode 0600) and answers queries, at most
/// `max_connections` at once, on a thread of its own until stopped.
pub fn serve(
    path: &Path,
    respond: Responder,
    max_connections: usize,
) -> Result<StatusServer, StatusError> {
    use std::os::unix::fs::PermissionsExt;
    let bind_err = |source| StatusError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(bind_err)?;
    }
    // A socket file left by a crashed agent would make bind fail.
    if std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(max_connections.max(1))
        .thread_name("jex-status")
        .build()
        .map_err(StatusError::Thread)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shown = path.display().to_string();
    let thread = std::thread::Builder::new()
        .name("jex-status".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::UnixListener::from_std(listener) {
                    Ok(l) => accept_loop(l, respond, max_connections, shown, stop_rx).await,
                    Err(e) => tracing::error!(error = %e, "status socket unusable"),
                }
            });
        })
        .map_err(StatusError::Thread)?;
    Ok(StatusServer {
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    respond: Responder,
    max_connections: usize,
    path: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let refusals = Arc::new(RefusalLog::default());
    tokio::spawn(refusals.clone().run(stop.clone()));
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
    loop {
        let conn = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => conn,
                Err(e) => {
                    refusals.refused(Source::Listener, Reason::AcceptFailed, || {
                        format!("status socket {path}: {e}")
                    });
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refusals.refused(Source::Listener, Reason::OverTotalCap, || {
                format!("status socket {path}: {max_connections} requests in progress")
            });
            let busy = request_error(&format!(
                "busy: {max_connections} status requests in progress, try again"
            ));
            let _ = conn.try_write(format!("{busy}\n").as_bytes());
            // Drop what already arrived, so closing does not reset the client before it reads.
            let mut sink = [0u8; 4096];
            for _ in 0..16 {
                if !matches!(conn.try_read(&mut sink), Ok(n) if n > 0) {
                    break;
                }
            }
            continue;
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            answer(conn, respond).await;
            drop(slot);
        });
    }
}

async fn answer(mut conn: tokio::net::UnixStream, respond: Responder) {
    let value = match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut conn)).await {
        Err(_) => request_error(&format!(
            "no request within {} s: send `status` or `plan` and a newline",
            REQUEST_TIMEOUT.as_secs()
        )),
        Ok(Err(_)) => return,
        Ok(Ok(line)) => match parse_request(&line) {
            Ok(query) => match tokio::task::spawn_blocking(move || respond(query)).await {
                Ok(v) => v,
                Err(_) => return,
            },
            Err(message) => request_error(&message),
        },
    };
    let Ok(mut json) = serde_json::to_vec(&value) else {
        return;
    };
    json.push(b'\n');
    if tokio::time::timeout(WRITE_TIMEOUT, conn.write_all(&json))
        .await
        .is_err()
    {
        return;
    }
    let _ = conn.shutdown().await;
    // Read and drop the rest of what the client sent, so closing does not reset the
    // connection before it read the answer.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < DRAIN_BYTES {
            match conn.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Reads one snapshot from the socket.
pub async fn query(path: &Path) -> Result<StatusSnapshot, StatusError> {
    let value = ask(path, Query::Status).await?;
    serde_json::from_value(value).map_err(|source| StatusError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Parses an answer of the socket; an error answer is [`StatusError::Refused`].
fn decode_answer(path: &Path, buf: &[u8]) -> Result<serde_json::Value, StatusError> {
    let value: serde_json::Value =
        serde_json::from_slice(buf).map_err(|source| StatusError::Parse {
            path: path.to_owned(),
            source,
        })?;
    if let Some(message) = value.get(REQUEST_ERROR).and_then(|m| m.as_str()) {
        return Err(StatusError::Refused {
            path: path.to_owned(),
            message: message.to_owned(),
        });
    }
    Ok(value)
}

/// How long [`query_blocking`] waits for the answer.
const BLOCKING_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads one snapshot without an async runtime (for the checks before the agent starts), within
/// a few seconds.
pub fn query_blocking(path: &Path) -> Result<StatusSnapshot, StatusError> {
    use std::io::{Read, Write};
    let mut conn =
        std::os::unix::net::UnixStream::connect(path).map_err(|source| StatusError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let read_err = |source| StatusError::Read {
        path: path.to_owned(),
        source,
    };
    conn.set_read_timeout(Some(BLOCKING_QUERY_TIMEOUT))
        .and_then(|()| conn.set_write_timeout(Some(BLOCKING_QUERY_TIMEOUT)))
        .map_err(read_err)?;
    conn.write_all(Query::Status.as_line()).map_err(read_err)?;
    conn.shutdown(std::net::Shutdown::Write).map_err(read_err)?;
    let mut buf = Vec::new();
    conn.read_to_end(&mut buf).map_err(read_err)?;
    let value = decode_answer(path, &buf)?;
    serde_json::from_value(value).map_err(|source| StatusError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Sends a query and reads the JSON answer; an error answer is [`StatusError::Refused`].
pub async fn ask(path: &Path, query: Query) -> Result<serde_json::Value, StatusError> {
    let mut conn = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| StatusError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let read_err = |source| StatusError::Read {
        path: path.to_owned(),
        source,
    };
    conn.write_all(query.as_line()).await.map_err(read_err)?;
    conn.shutdown().await.map_err(read_err)?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut buf))
        .await
        .map_err(|_| {
            read_err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer within 30 s",
            ))
        })?
        .map_err(read_err)?;
    let value = decode_answer(path, &buf)?;
    Ok(value)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Renders a snapshot for a person.
pub fn render(s: &StatusSnapshot, now_unix_ms: u64) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "jex-agent {} (pid {}) host {}",
        s.agent_version, s.pid, s.host_id
    );
    let _ = writeln!(o, "state:      {}", s.lifecycle);
    let _ = writeln!(
        o,
        "uptime:     {}s, listening on {}",
        s.uptime_secs, s.listen
    );
    let t = &s.telemetry;
    let age = if t.last_sample_unix_ms == 0 {
        "no sample yet".to_owned()
    } else {
        format!(
            "{:.1}s ago",
            now_unix_ms.saturating_sub(t.last_sample_unix_ms) as f64 / 1000.0
        )
    };
    let _ = writeln!(
        o,
        "telemetry:  every {} ms, last seq {} ({age})",
        t.interval_ms, t.last_seq
    );
    let _ = writeln!(
        o,
        "spool:      {} records (seq {}..={}), {}, corrupt skipped {}, evicted {}",
        t.spool_records,
        t.spool_first_seq,
        t.last_seq,
        bytes(t.spool_bytes),
        t.corrupt_records,
        t.evicted_records
    );
    if t.not_durable {
        let _ = writeln!(
            o,
            "            NOT DURABLE: the spool cannot store records (disk full); they are sent live only"
        );
    }
    let c = &s.connections;
    let _ = writeln!(
        o,
        "conns:      {} open (cap {}, {} per peer)",
        c.open, c.max, c.max_per_peer
    );
    let _ = writeln!(o, "streams:    {}", s.streams.len());
    for st in &s.streams {
        let _ = writeln!(
            o,
            "  - {} ({}) from {}, open {}s, last seq sent {}",
            st.peer, st.role, st.addr, st.open_secs, st.last_seq_sent
        );
    }
    match &s.erase {
        None if s.erase_unavailable.is_some() => {
            let reason = s.erase_unavailable.as_deref().unwrap_or_default();
            let _ = writeln!(o, "erase:      UNAVAILABLE: {reason}");
        }
        None => {
            let _ = writeln!(o, "erase:      none requested");
        }
        Some(e) => {
            let pct = if e.bytes_total > 0 {
                e.bytes_done as f64 * 100.0 / e.bytes_total as f64
            } else {
                0.0
            };
            let _ = writeln!(
                o,
                "erase:      {} phase {} {}/{} ({pct:.1}%) at {}/s, eta {}s{}{}",
                e.operation_id,
                e.phase,
                bytes(e.bytes_done),
                bytes(e.bytes_total),
                bytes(e.rate_bytes_per_second as u64),
                e.eta_seconds,
                e.outcome
                    .as_ref()
                    .map(|x| format!(", outcome {x}"))
                    .unwrap_or_default(),
                e.failure_reason
                    .as_ref()
                    .map(|x| format!(", FAILED: {x}"))
                    .unwrap_or_default(),
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn responder(s: StatusSnapshot) -> Responder {
        Arc::new(move |q| match q {
            Query::Status => serde_json::to_value(&s).expect("json"),
            Query::Plan => serde_json::json!([{"name": "t0"}]),
        })
    }

    fn snapshot() -> StatusSnapshot {
        StatusSnapshot {
            host_id: "h-1".into(),
            lifecycle: "SERVING".into(),
            ..Default::default()
        }
    }

    /// Sends raw bytes (then half-closes, unless `hold`), and reads the whole answer.
    async fn raw(path: &Path, bytes: Vec<u8>, hold: bool) -> serde_json::Value {
        let conn = tokio::net::UnixStream::connect(path)
            .await
            .expect("connect");
        let (mut rd, mut wr) = conn.into_split();
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&bytes).await;
            if hold {
                tokio::time::sleep(REQUEST_TIMEOUT * 2).await;
            }
            let _ = wr.shutdown().await;
        });
        let mut buf = Vec::new();
        rd.read_to_end(&mut buf)
            .await
            .expect("the answer, not a reset");
        writer.abort();
        assert!(buf.ends_with(b"\n"), "{}", String::from_utf8_lossy(&buf));
        serde_json::from_slice(&buf).expect("json")
    }

    fn refused(v: &serde_json::Value) -> &str {
        v[REQUEST_ERROR].as_str().unwrap_or_default()
    }

    #[test]
    fn the_grammar_is_exactly_status_or_plan() {
        let line = |s: &str| Line::Complete(s.as_bytes().to_vec());
        assert_eq!(parse_request(&line("status")), Ok(Query::Status));
        assert_eq!(parse_request(&line("plan")), Ok(Query::Plan));
        for bad in ["", "STATUS", "status ", "plan\r", "statusx", "stat"] {
            assert!(parse_request(&line(bad)).is_err(), "{bad:?} accepted");
        }
        assert!(
            parse_request(&Line::TooLong)
                .expect_err("too long")
                .contains("longer than 64 bytes")
        );
    }

    #[test]
    fn an_unavailable_erase_service_is_shown_with_its_reason_and_kept_off_older_answers() {
        let reason = "erase state directory /s/erase: No space left on device (os error 28)";
        let unavailable = StatusSnapshot {
            erase_unavailable: Some(reason.into()),
            ..snapshot()
        };
        let shown = render(&unavailable, 0);
        assert!(
            shown.contains(&format!("erase:      UNAVAILABLE: {reason}")),
            "{shown}"
        );
        assert!(render(&snapshot(), 0).contains("erase:      none requested"));
        // An answer of an agent without the field still reads, and none is sent when unset.
        let json = serde_json::to_value(snapshot()).expect("json");
        assert!(json.get("erase_unavailable").is_none(), "{json}");
        let read: StatusSnapshot = serde_json::from_value(json).expect("read back");
        assert_eq!(read.erase_unavailable, None);
    }

    #[tokio::test]
    async fn serves_a_snapshot_on_a_root_only_socket() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let server = serve(&path, responder(snapshot()), 4).expect("serve");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let got = query(&path).await.expect("query");
        assert_eq!(got.host_id, "h-1");
        assert!(render(&got, 0).contains("state:      SERVING"));
        assert_eq!(
            ask(&path, Query::Plan).await.expect("plan")[0]["name"],
            "t0"
        );
        // A request ended by the end of input instead of a newline is the same request.
        assert_eq!(
            raw(&path, b"status".to_vec(), false).await["host_id"],
            "h-1"
        );
        tokio::task::spawn_blocking(move || server.stop())
            .await
            .expect("stopped");
        // A stale socket file from a crashed agent does not stop the next one.
        let server =
            serve(&path, responder(snapshot()), 4).expect("serve again over a stale socket");
        assert_eq!(query(&path).await.expect("query").host_id, "h-1");
        drop(server);
    }

    #[tokio::test]
    async fn the_blocking_client_reads_the_snapshot_and_tells_no_agent_from_no_permission() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let server = serve(&path, responder(snapshot()), 4).expect("serve");
        let at = path.clone();
        let got = tokio::task::spawn_blocking(move || query_blocking(&at))
            .await
            .expect("joined")
            .expect("query");
        assert_eq!(got.host_id, "h-1");
        tokio::task::spawn_blocking(move || server.stop())
            .await
            .expect("stopped");
        // Stopped (the socket is gone or nobody listens on it), and never started.
        for gone in [path.clone(), dir.path().join("never.sock")] {
            let err = query(&gone).await.expect_err("no agent");
            assert!(err.no_agent() && !err.not_permitted(), "{err:?}");
            let err = query_blocking(&gone).expect_err("no agent");
            assert!(err.no_agent(), "{err:?}");
        }
        // A root-only socket seen by another user.
        let denied = StatusError::Connect {
            path,
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert!(denied.not_permitted() && !denied.no_agent());
    }

    #[tokio::test]
    async fn anything_but_the_grammar_gets_an_error_answer_never_a_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let _server = serve(&path, responder(snapshot()), 4).expect("serve");
        let v = raw(&path, b"STATUS\n".to_vec(), false).await;
        assert!(refused(&v).contains("unknown request \"STATUS\""), "{v}");
        assert!(v.get("host_id").is_none(), "no status for a bad request");
        let v = raw(&path, Vec::new(), false).await;
        assert!(refused(&v).starts_with("empty request"), "{v}");
        // A megabyte without a newline: an error answer, read to the end by the client.
        let v = raw(&path, vec![b'x'; 1 << 20], false).await;
        assert!(refused(&v).contains("longer than 64 bytes"), "{v}");
        // A long line with a newline too, and a request followed by more lines.
        let v = raw(&path, [vec![b'y'; 100], b"\n".to_vec()].concat(), false).await;
        assert!(refused(&v).contains("longer than 64 bytes"), "{v}");
        let v = raw(&path, b"status\nplan\nstatus\n".repeat(1000), false).await;
        assert_eq!(v["host_id"], "h-1");
        // Silence: an error answer once the request deadline passes.
        let v = raw(&path, Vec::new(), true).await;
        assert!(refused(&v).starts_with("no request within 2 s"), "{v}");
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_told_the_socket_is_busy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let _server = serve(&path, responder(snapshot()), 2).expect("serve");
        // Two silent clients hold both places (until the request deadline).
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(
                tokio::net::UnixStream::connect(&path)
                    .await
                    .expect("connect"),
            );
        }
        // A third client (sending nothing, so that the refusal leaves no unread request
        // behind) is told the socket is busy, once the server's thread has accepted the two.
        let mut busy = None;
        for _ in 0..50 {
            let v = raw(&path, Vec::new(), false).await;
            if refused(&v).starts_with("busy") {
                busy = Some(v);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let v = busy.expect("a third connection is refused while two are held");
        assert!(
            refused(&v).starts_with("busy: 2 status requests in progress"),
            "{v}"
        );
        drop(held);
        // Once they are gone, requests are answered again.
        let mut answered = false;
        for _ in 0..300 {
            if query(&path).await.is_ok() {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(answered, "the places were given back");
    }
}
