//! What the local socket answers, from the running agent's parts: the [`AgentReport`] that
//! `jex-agent status` shows and the erase plan that `jex-agent erase-plan` shows.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{AgentReport, ConnectionsReport, EraseReport, Query, StreamReport, TelemetryReport};
use crate::config::Config;
use crate::error_chain;
use crate::server::{EraseSlot, HostFacts};

/// The erase plan as the JSON document `jex-agent erase-plan` renders.
pub fn plan_json(plan: &[jex_erase::PlannedTarget]) -> serde_json::Value {
    serde_json::json!({ "targets": plan.iter().map(|t| serde_json::json!({
        "name": t.name, "backend": t.backend, "device": t.device, "size_bytes": t.size_bytes,
        "identity": t.identity, "ready": t.ready,
        "checks": t.checks.iter().map(|c| serde_json::json!({"check": c.check, "passed": c.passed, "detail": c.detail})).collect::<Vec<_>>(),
    })).collect::<Vec<_>>() })
}

/// The addresses the agent's listeners are bound to (the ports chosen by the OS for port 0).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound {
    /// gRPC.
    pub grpc: SocketAddr,
    /// `/metrics`, when enabled.
    pub metrics: Option<SocketAddr>,
}

/// The running agent's parts a status is read from.
pub(crate) struct Parts {
    /// Telemetry.
    pub hub: Arc<crate::telemetry::hub::Hub>,
    /// The erase slot.
    pub erase: crate::server::Erase,
    /// Open telemetry streams.
    pub streams: Arc<crate::server::Streams>,
    /// gRPC connections.
    pub connections: Arc<crate::server::conn::Tracker>,
    /// The raised conditions.
    pub health: crate::health::Health,
}

/// Answers `jex-agent status` and `jex-agent erase-plan` on the local socket.
pub(crate) fn responder(
    facts: &HostFacts,
    bound: Bound,
    config: &Config,
    parts: Parts,
) -> super::Responder {
    let Parts {
        hub,
        erase,
        streams,
        connections,
        health,
    } = parts;
    let host_id = facts.host_id.clone();
    let started = std::time::Instant::now();
    let interval_ms = config.telemetry.interval_ms;
    let metrics_tls = config.metrics.tls;
    Arc::new(move |query| match (query, &*erase.current()) {
        (Query::Plan, EraseSlot::Ready(erase)) => match erase.plan() {
            Ok(plan) => plan_json(&plan),
            Err(e) => serde_json::json!({ "error": error_chain(&e) }),
        },
        (Query::Plan, EraseSlot::Unavailable(reason)) => {
            serde_json::json!({ "error": format!("erase unavailable: {reason}") })
        }
        (Query::Status, erase) => {
            let stats = hub.stats();
            let (lifecycle, erase_unavailable) = match erase {
                EraseSlot::Ready(erase) => (erase.lifecycle(), None),
                EraseSlot::Unavailable(reason) => {
                    (jex_erase::Lifecycle::Serving, Some(reason.to_string()))
                }
            };
            let lifecycle = crate::server::convert::lifecycle_state(lifecycle);
            let ready = match erase {
                EraseSlot::Ready(erase) => Some(erase),
                EraseSlot::Unavailable(_) => None,
            };
            let erase_view = ready.and_then(|erase| erase.watch(None).ok()).map(|rx| {
                let op = rx.borrow().clone();
                EraseReport {
                    operation_id: op.operation_id,
                    phase: op.phase.as_str().to_owned(),
                    outcome: op.outcome.map(|o| o.as_str().to_owned()),
                    bytes_done: op.bytes_done,
                    bytes_total: op.bytes_total,
                    rate_bytes_per_second: op.rate_bytes_per_second,
                    eta_seconds: op.eta_seconds,
                    failure_reason: op.failure_reason,
                }
            });
            let snap = AgentReport {
                agent_version: crate::AGENT_VERSION.to_owned(),
                agent_build: crate::LONG_VERSION.to_owned(),
                pid: std::process::id(),
                host_id: host_id.clone(),
                listen: bound.grpc.to_string(),
                metrics_listen: bound.metrics.map(|a| a.to_string()),
                metrics_tls,
                lifecycle: lifecycle
                    .as_str_name()
                    .trim_start_matches("LIFECYCLE_STATE_")
                    .to_owned(),
                uptime_secs: started.elapsed().as_secs(),
                streams: streams
                    .list()
                    .into_iter()
                    .map(|s| StreamReport {
                        peer: s.peer.id,
                        role: s.peer.role.as_str().to_owned(),
                        addr: s.peer.addr,
                        open_secs: s.opened.elapsed().as_secs(),
                        last_seq_sent: s.last_seq_sent,
                    })
                    .collect(),
                connections: ConnectionsReport {
                    open: connections.open(),
                    max: connections.caps().total,
                    max_per_peer: connections.caps().per_peer,
                },
                telemetry: TelemetryReport {
                    interval_ms,
                    last_seq: stats.last_seq.unwrap_or(0),
                    last_sample_unix_ms: stats.last_sample_time_unix_ms.unwrap_or(0),
                    spool_first_seq: stats.spool.first_seq.unwrap_or(0),
                    spool_records: stats.spool.records,
                    spool_bytes: stats.spool.bytes,
                    corrupt_records: stats.spool.corrupt_records,
                    evicted_records: stats.spool.evicted_records,
                    not_durable: stats.spool.not_durable,
                },
                erase: erase_view,
                erase_unavailable,
                conditions: health.conditions().to_vec(),
            };
            serde_json::to_value(&snap).unwrap_or_default()
        }
    })
}
