//! `WatchErase`: an erase operation's state at once, then every change, until it ends; the
//! last message carries the outcome and the signed certificate.
//!
//! - Roles: controller and observer.
//! - Command: [`command`], the operation id (empty: the current or last operation), within its
//!   limit.
//! - Errors: [`grpc_error::from_erase`]; an erase service that could not be opened is
//!   `FAILED_PRECONDITION`; a stream ended by the agent's shutdown ends with `UNAVAILABLE`.

use futures::StreamExt;
use jex_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{ANY_ROLE, BoxStream, Method, peer_of, rpc_span, until_shutdown};
use crate::server::fields::{self, FieldError};
use crate::server::{AgentService, convert, grpc_error};

/// The table entry.
pub const METHOD: Method = Method {
    path: "/jex.agent.v1.NodeAgent/WatchErase",
    roles: ANY_ROLE,
};

/// The operation to watch: `None` for the current or last one.
pub fn command(r: pb::WatchEraseRequest) -> Result<Option<String>, FieldError> {
    fields::watch_erase(&r)?;
    Ok((!r.operation_id.is_empty()).then_some(r.operation_id))
}

/// Opens the stream.
pub(super) fn handle(
    svc: &AgentService,
    req: Request<pb::WatchEraseRequest>,
) -> Result<Response<BoxStream<pb::WatchEraseResponse>>, Status> {
    let peer = peer_of(&req, "WatchErase")?;
    let span = rpc_span("WatchErase", &peer);
    let id = command(req.into_inner()).map_err(|e| grpc_error::from_field(&e))?;
    let rx = span.in_scope(|| {
        svc.erase
            .service()?
            .watch(id.as_deref())
            .map_err(|e| grpc_error::from_erase(&e))
    })?;
    let mut shutdown = svc.shutdown.clone();
    // The current state at once, then every change, until the operation ends.
    let updates = rx;
    // Every state until (and including) the terminal one, then the end of the stream.
    let until_terminal =
        futures::stream::unfold((updates, false), |(mut updates, done)| async move {
            if done {
                return None;
            }
            let op = updates.next_view().await?;
            let end = op.is_terminal();
            Some((op, (updates, end)))
        });
    let out = until_shutdown(
        until_terminal.map(Ok::<_, Status>),
        async move {
            let _ = shutdown.wait_for(|s| *s).await;
        },
        || {
            Status::unavailable(
                "the agent is stopping: watch again once it is back (the erase resumes from its journal)",
            )
        },
    )
    .map(|item| {
        item.map(|op| pb::WatchEraseResponse {
            operation: Some(convert::operation(&op)),
            certificate: op.certificate.as_ref().map(convert::certificate),
        })
    });
    Ok(Response::new(Box::pin(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_operation_id_means_the_current_one() {
        let req = |id: &str| pb::WatchEraseRequest {
            operation_id: id.to_owned(),
        };
        assert_eq!(command(req("")), Ok(None));
        assert_eq!(command(req("op-1")), Ok(Some("op-1".to_owned())));
        let long = "o".repeat(fields::MAX_OPERATION_ID_BYTES + 1);
        assert_eq!(
            command(req(&long)).expect_err("refused").field,
            "operation_id"
        );
    }
}
