//! The local socket's server: binds it (mode 0600, replacing a stale one) and answers each
//! connection on a thread and runtime of its own, at most a configured number at once; over
//! the cap a client is told the socket is busy, never reset.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::LocalSocketError;
use super::protocol::{Query, REQUEST_TIMEOUT, parse_request, read_request, request_error};
use crate::server::refusals::{Reason, RefusalLog, Source};

/// How long the answer may take to be written.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most bytes, and the longest time, spent dropping what a client sent beyond its request
/// (so that closing does not reset the connection before the client read the answer).
const DRAIN_BYTES: usize = 1 << 20;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers a query with a JSON document; called on a blocking thread.
pub type Responder = Arc<dyn Fn(Query) -> serde_json::Value + Send + Sync>;

/// The local socket served on its own thread; stopped (and its thread joined) by
/// [`LocalSocketServer::stop`], or stopped without waiting when dropped.
#[derive(Debug)]
pub struct LocalSocketServer {
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LocalSocketServer {
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

impl Drop for LocalSocketServer {
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
) -> Result<LocalSocketServer, LocalSocketError> {
    use std::os::unix::fs::PermissionsExt;
    let bind_err = |source| LocalSocketError::Bind {
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
        .map_err(LocalSocketError::Thread)?;
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
        .map_err(LocalSocketError::Thread)?;
    Ok(LocalSocketServer {
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
