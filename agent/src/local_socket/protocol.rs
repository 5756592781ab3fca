//! The protocol of the local socket. The client connects and sends one request line,
//!
//! ```text
//! request = ("status" / "plan") (LF / end of input)
//! ```
//!
//! and the agent answers with one JSON document followed by a newline ([`AgentReport`], or
//! the erase plan: what a `Terminate` would destroy, computed without touching anything) and
//! closes the connection. Anything else — another word, an empty request, a line longer than
//! [`MAX_REQUEST_BYTES`], no request within [`REQUEST_TIMEOUT`], or more than the connection
//! cap at once — gets `{"request_error": "<what is wrong>"}`, never a reset: what the client
//! sent beyond the line is read and dropped before the socket is closed.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest request line (without its LF).
pub const MAX_REQUEST_BYTES: usize = 64;

/// How long a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The key of an error answer.
pub const REQUEST_ERROR: &str = "request_error";

/// The agent's state, as `jex-agent status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct AgentReport {
    /// Agent version.
    pub agent_version: String,
    /// How the agent was built (`jex-agent --version` after the name).
    #[serde(default)]
    pub agent_build: String,
    /// Process id.
    pub pid: u32,
    /// Host id from the agent certificate.
    pub host_id: String,
    /// gRPC listen address.
    pub listen: String,
    /// The address `/metrics` is served on (the bound one: the port chosen by the OS for port
    /// 0), `None` when the endpoint is disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
    /// Whether `/metrics` is served over HTTPS with client certificates.
    #[serde(default)]
    pub metrics_tls: bool,
    /// Lifecycle state (`SERVING`, `ERASING`, `RECLAIMABLE`, `ERASE_FAILED`).
    pub lifecycle: String,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
    /// Open telemetry streams.
    pub streams: Vec<StreamReport>,
    /// Network connections held and their caps.
    #[serde(default)]
    pub connections: ConnectionsReport,
    /// Telemetry sampler and spool.
    pub telemetry: TelemetryReport,
    /// The current or last erase operation.
    pub erase: Option<EraseReport>,
    /// Why the erase service is unavailable (a first start on a full disk could not create its
    /// state directory), if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erase_unavailable: Option<String>,
    /// What is degraded now (the conditions `GetHost` reports), empty when all is well.
    #[serde(default)]
    pub conditions: Vec<crate::health::Condition>,
}

/// Network connections (counted from TCP accept).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ConnectionsReport {
    /// Held now.
    pub open: u32,
    /// The total cap.
    pub max: u32,
    /// The cap per client IP address.
    pub max_per_peer: u32,
}

/// One open telemetry stream.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct StreamReport {
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
pub struct TelemetryReport {
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
pub struct EraseReport {
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
    pub(crate) fn as_line(self) -> &'static [u8] {
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

pub(crate) fn request_error(message: &str) -> serde_json::Value {
    serde_json::json!({ REQUEST_ERROR: message })
}
