//! The local socket end to end in one process: grammar, permissions, the blocking client,
//! refusals and the busy answer.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::render::render_report;
use super::*;

fn responder(s: AgentReport) -> Responder {
    Arc::new(move |q| match q {
        Query::Status => serde_json::to_value(&s).expect("json"),
        Query::Plan => serde_json::json!([{"name": "t0"}]),
    })
}

fn snapshot() -> AgentReport {
    AgentReport {
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
    let unavailable = AgentReport {
        erase_unavailable: Some(reason.into()),
        ..snapshot()
    };
    let shown = render_report(&unavailable, 0);
    assert!(
        shown.contains(&format!("erase:      UNAVAILABLE: {reason}")),
        "{shown}"
    );
    assert!(render_report(&snapshot(), 0).contains("erase:      none requested"));
    // An answer of an agent without the field still reads, and none is sent when unset.
    let json = serde_json::to_value(snapshot()).expect("json");
    assert!(json.get("erase_unavailable").is_none(), "{json}");
    let read: AgentReport = serde_json::from_value(json).expect("read back");
    assert_eq!(read.erase_unavailable, None);
}

#[test]
fn conditions_are_listed_with_their_age_and_read_from_older_answers_as_none() {
    use crate::health::{Condition, ConditionKind};
    let report = AgentReport {
        conditions: vec![Condition {
            kind: ConditionKind::SpoolNotDurable,
            since_unix_ms: 1_000,
            message: "telemetry records cannot be stored".into(),
        }],
        ..snapshot()
    };
    let shown = render_report(&report, 1_000 + 125_000);
    assert!(
        shown.contains("health:     1 condition(s) raised\n  - SPOOL_NOT_DURABLE for 2m5s: telemetry records cannot be stored\n"),
        "{shown}"
    );
    assert!(render_report(&snapshot(), 0).contains("health:     OK (no condition raised)"));
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["conditions"][0]["kind"], "SPOOL_NOT_DURABLE");
    let mut old = serde_json::to_value(snapshot()).expect("json");
    old.as_object_mut().expect("object").remove("conditions");
    let read: AgentReport = serde_json::from_value(old).expect("read back");
    assert!(read.conditions.is_empty());
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
    assert!(render_report(&got, 0).contains("state:      SERVING"));
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
    let server = serve(&path, responder(snapshot()), 4).expect("serve again over a stale socket");
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
    let denied = LocalSocketError::Connect {
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
