//! The local status socket: `jex-agent status`, run as root on the host, reads the running
//! agent's state through a Unix domain socket (mode 0600, so root only) — no network and no
//! certificates needed.
//!
//! Protocol: the client connects and sends one line, `status` or `plan`; the agent answers with
//! one JSON document followed by a newline ([`StatusSnapshot`], or the erase plan: what a
//! `Terminate` would destroy, computed without touching anything) and closes the connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    /// Telemetry sampler and spool.
    pub telemetry: TelemetryStatus,
    /// The current or last erase operation.
    pub erase: Option<EraseStatus>,
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

/// Binds the socket (replacing a stale one, mode 0600) and answers queries until aborted.
pub fn serve(path: &Path, respond: Responder) -> Result<tokio::task::JoinHandle<()>, StatusError> {
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
    let listener = tokio::net::UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let respond = respond.clone();
            tokio::spawn(async move {
                let mut line = [0u8; 16];
                let read = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut line)).await;
                let query = match read {
                    Ok(Ok(n)) if line[..n].starts_with(b"plan") => Query::Plan,
                    _ => Query::Status,
                };
                let Ok(value) = tokio::task::spawn_blocking(move || respond(query)).await else {
                    return;
                };
                if let Ok(mut json) = serde_json::to_vec(&value) {
                    json.push(b'\n');
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), conn.write_all(&json)).await;
                }
            });
        }
    });
    Ok(task)
}

/// Reads one snapshot from the socket.
pub async fn query(path: &Path) -> Result<StatusSnapshot, StatusError> {
    let value = ask(path, Query::Status).await?;
    serde_json::from_value(value).map_err(|source| StatusError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Sends a query and reads the JSON answer.
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
    serde_json::from_slice(&buf).map_err(|source| StatusError::Parse {
        path: path.to_owned(),
        source,
    })
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
    let _ = writeln!(o, "streams:    {}", s.streams.len());
    for st in &s.streams {
        let _ = writeln!(
            o,
            "  - {} ({}) from {}, open {}s, last seq sent {}",
            st.peer, st.role, st.addr, st.open_secs, st.last_seq_sent
        );
    }
    match &s.erase {
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

    #[tokio::test]
    async fn serves_a_snapshot_on_a_root_only_socket() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.sock");
        let snap = StatusSnapshot {
            host_id: "h-1".into(),
            lifecycle: "SERVING".into(),
            ..Default::default()
        };
        let s2 = snap.clone();
        let responder = move |s: StatusSnapshot| -> Responder {
            Arc::new(move |q| match q {
                Query::Status => serde_json::to_value(&s).expect("json"),
                Query::Plan => serde_json::json!([{"name": "t0"}]),
            })
        };
        let task = serve(&path, responder(s2)).expect("serve");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let got = query(&path).await.expect("query");
        assert_eq!(got.host_id, "h-1");
        assert!(render(&got, 0).contains("state:      SERVING"));
        assert_eq!(
            ask(&path, Query::Plan).await.expect("plan")[0]["name"],
            "t0"
        );
        task.abort();
        // A stale socket file from a crashed agent does not stop the next one.
        let _ = task.await;
        let task = serve(&path, responder(snap)).expect("serve again over a stale socket");
        assert_eq!(query(&path).await.expect("query").host_id, "h-1");
        task.abort();
    }
}
