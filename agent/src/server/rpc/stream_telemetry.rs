//! `StreamTelemetry`: spooled history after a cursor, then (unless `history_only`) live
//! records, in batches; gaps are explicit records.
//!
//! - Roles: controller and observer.
//! - Command: [`Subscription`] (cursor, batch size clamped to [`MAX_BATCH`], history only or
//!   following); no field can be refused.
//! - Errors: [`from_hub`]. A history stream ended by the agent's shutdown, and a following one
//!   ended by the hub stopping, end with `UNAVAILABLE`, never `OK`.

use futures::StreamExt;
use jex_proto::stored::StoredBatch;
use jex_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{ANY_ROLE, BoxStream, Method, peer_of, rpc_span, then_unavailable, until_shutdown};
use crate::server::{AgentService, grpc_error};
use crate::telemetry::hub::HubError;
use crate::telemetry::wire::WireRecord;

/// The table entry.
pub const METHOD: Method = Method {
    path: "/jex.agent.v1.NodeAgent/StreamTelemetry",
    roles: ANY_ROLE,
};

/// Default and largest batch of telemetry records per response.
pub const DEFAULT_BATCH: usize = 256;
/// The largest batch a caller can ask for; more is clamped to it.
pub const MAX_BATCH: usize = 4096;

/// The request, as the hub takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// Records after this seq.
    pub after_seq: u64,
    /// Records per response.
    pub batch: usize,
    /// History only, or history then live.
    pub history_only: bool,
}

/// The request as a [`Subscription`]: a zero batch is the default, a large one is clamped.
pub fn command(r: &pb::StreamTelemetryRequest) -> Subscription {
    let batch = match r.max_batch_records {
        0 => DEFAULT_BATCH,
        n => (n as usize).min(MAX_BATCH),
    };
    Subscription {
        after_seq: r.after_seq,
        batch,
        history_only: r.history_only,
    }
}

/// The status for a telemetry stream error.
pub fn from_hub(e: &HubError) -> Status {
    match e {
        // The controller's cursor is from another life of this host's spool: it must restart.
        HubError::CursorAhead { .. } => Status::out_of_range(e.to_string()),
        // The agent is stopping or its sampler died: try again later.
        HubError::SamplerLost | HubError::Flush { .. } => Status::unavailable(e.to_string()),
        // Our own failures.
        HubError::InvalidInterval
        | HubError::SpawnSampler { .. }
        | HubError::ReadSpool { .. }
        | HubError::ReadTask { .. } => grpc_error::internal(e),
    }
}

/// Opens the stream.
pub(super) fn handle(
    svc: &AgentService,
    req: Request<pb::StreamTelemetryRequest>,
) -> Result<Response<BoxStream<StoredBatch>>, Status> {
    let peer = peer_of(&req, "StreamTelemetry")?;
    let span = rpc_span("StreamTelemetry", &peer);
    let sub = command(req.get_ref());
    span.in_scope(|| {
        tracing::info!(
            after_seq = sub.after_seq,
            batch = sub.batch,
            history_only = sub.history_only,
            "telemetry stream opened"
        )
    });
    let records = if sub.history_only {
        svc.hub.subscribe_history(sub.after_seq, sub.batch)
    } else {
        svc.hub.subscribe(sub.after_seq, sub.batch)
    };
    let mut shutdown = svc.shutdown.clone();
    let stream_span = span.clone();
    let guard = svc.streams.register(peer, sub.after_seq);
    let batches = records.map(move |item| match item {
        Ok(batch) => {
            if let Some(last) = batch.last() {
                guard.sent(last.seq());
            }
            // The records as encoded when they were made (and stored): sent, not re-encoded.
            Ok(StoredBatch {
                records: batch.into_iter().map(WireRecord::into_bytes).collect(),
            })
        }
        Err(e) => {
            let status = from_hub(&e);
            stream_span
                .in_scope(|| tracing::warn!(error = %e, "telemetry stream ended with an error"));
            Err(status)
        }
    });
    let stopped = || {
        Status::unavailable(
            "the agent is stopping: reconnect and resume after the last seq received",
        )
    };
    let out: BoxStream<StoredBatch> = if sub.history_only {
        Box::pin(until_shutdown(
            batches,
            async move {
                let _ = shutdown.wait_for(|s| *s).await;
            },
            stopped,
        ))
    } else {
        // A following subscription ends only when the hub stops, after the last record.
        Box::pin(then_unavailable(batches, stopped))
    };
    Ok(Response::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_is_defaulted_and_clamped_never_refused() {
        let req = |max_batch_records| pb::StreamTelemetryRequest {
            after_seq: 7,
            max_batch_records,
            history_only: true,
        };
        assert_eq!(command(&req(0)).batch, DEFAULT_BATCH);
        assert_eq!(command(&req(10)).batch, 10);
        assert_eq!(command(&req(u32::MAX)).batch, MAX_BATCH);
        assert_eq!(command(&req(1)).after_seq, 7);
        assert!(command(&req(1)).history_only);
    }
}
