//! `Terminate`: starts the verified erase, idempotent by `request_id`.
//!
//! - Roles: the controller only.
//! - Command: [`command`], the field limits first (`INVALID_ARGUMENT` naming the field), then a
//!   [`TerminateCommand`]; the erase service checks the host id and the nonce's minimum.
//! - Errors: [`grpc_error::from_erase`] (the one map of erase errors, shared with the other erase
//!   calls); an erase service that could not be opened is `FAILED_PRECONDITION`; a task that
//!   failed to run is `INTERNAL` with a fixed message and a correlation id, its error logged.

use jex_erase::TerminateCommand;
use jex_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{CONTROLLER_ONLY, Method, peer_of, rpc_span};
use crate::server::fields::{self, FieldError};
use crate::server::{AgentService, convert, grpc_error};

/// The table entry.
pub const METHOD: Method = Method {
    path: "/jex.agent.v1.NodeAgent/Terminate",
    roles: CONTROLLER_ONLY,
};

/// The request as a domain command, once every field is within its limit.
pub fn command(r: pb::TerminateRequest) -> Result<TerminateCommand, FieldError> {
    fields::terminate(&r)?;
    Ok(TerminateCommand {
        request_id: r.request_id,
        host_id: r.host_id,
        nonce: r.nonce,
    })
}

/// Starts the erase (or finds the one this request already started).
pub(super) async fn handle(
    svc: &AgentService,
    req: Request<pb::TerminateRequest>,
) -> Result<Response<pb::TerminateResponse>, Status> {
    let peer = peer_of(&req, "Terminate")?;
    let span = rpc_span("Terminate", &peer);
    let cmd = command(req.into_inner()).map_err(|e| grpc_error::from_field(&e))?;
    let request_id = cmd.request_id.clone();
    let erase = span.in_scope(|| svc.erase.service())?;
    async move {
        // Journaling the request fsyncs: keep it off the runtime's workers.
        let span = tracing::Span::current();
        let result = tokio::task::spawn_blocking(move || span.in_scope(|| erase.terminate(cmd)))
            .await
            .map_err(|e| grpc_error::internal(&e))?;
        match result {
            Ok(op) => {
                tracing::info!(request_id = %request_id, operation_id = %op.operation_id, "terminate accepted");
                Ok(Response::new(pb::TerminateResponse {
                    operation: Some(convert::operation(&op)),
                }))
            }
            Err(e) => Err(grpc_error::from_erase(&e)),
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_over_its_limit_is_refused_before_the_domain_sees_it() {
        let ok = pb::TerminateRequest {
            request_id: "r1".into(),
            host_id: "h1".into(),
            nonce: vec![7; 32],
        };
        let cmd = command(ok.clone()).expect("within limits");
        assert_eq!(
            (
                cmd.request_id.as_str(),
                cmd.host_id.as_str(),
                cmd.nonce.len()
            ),
            ("r1", "h1", 32)
        );
        let long = pb::TerminateRequest {
            host_id: "h".repeat(fields::MAX_ID_BYTES + 1),
            ..ok
        };
        assert_eq!(command(long).expect_err("refused").field, "host_id");
    }
}
