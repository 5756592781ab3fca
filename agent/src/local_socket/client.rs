//! The local socket's client: what `jex-agent status`, `erase-plan` and the checks before a
//! start use to ask a running agent.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::LocalSocketError;
use super::protocol::{AgentReport, Query, REQUEST_ERROR};

/// Reads one snapshot from the socket.
pub async fn query(path: &Path) -> Result<AgentReport, LocalSocketError> {
    let value = ask(path, Query::Status).await?;
    serde_json::from_value(value).map_err(|source| LocalSocketError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Parses an answer of the socket; an error answer is [`LocalSocketError::Refused`].
fn decode_answer(path: &Path, buf: &[u8]) -> Result<serde_json::Value, LocalSocketError> {
    let value: serde_json::Value =
        serde_json::from_slice(buf).map_err(|source| LocalSocketError::Parse {
            path: path.to_owned(),
            source,
        })?;
    if let Some(message) = value.get(REQUEST_ERROR).and_then(|m| m.as_str()) {
        return Err(LocalSocketError::Refused {
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
pub fn query_blocking(path: &Path) -> Result<AgentReport, LocalSocketError> {
    use std::io::{Read, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
        LocalSocketError::Connect {
            path: path.to_owned(),
            source,
        }
    })?;
    let read_err = |source| LocalSocketError::Read {
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
    serde_json::from_value(value).map_err(|source| LocalSocketError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Sends a query and reads the JSON answer; an error answer is [`LocalSocketError::Refused`].
pub async fn ask(path: &Path, query: Query) -> Result<serde_json::Value, LocalSocketError> {
    let mut conn = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| LocalSocketError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let read_err = |source| LocalSocketError::Read {
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
