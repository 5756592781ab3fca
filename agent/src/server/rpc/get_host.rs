//! `GetHost`: the host's identity, hardware, versions, lifecycle state and raised conditions
//! ([`crate::health`]).
//!
//! - Roles: controller and observer.
//! - Command: none (the request has no field).
//! - Errors: none; the lifecycle comes from the erase service ([`super::super::Erase`]), which
//!   reports `SERVING` when the erase service is unavailable.

use jex_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{ANY_ROLE, Method, peer_of, rpc_span};
use crate::server::{AgentService, convert};

/// The table entry.
pub const METHOD: Method = Method {
    path: "/jex.agent.v1.NodeAgent/GetHost",
    roles: ANY_ROLE,
};

/// Answers the call.
pub(super) async fn handle(
    svc: &AgentService,
    req: Request<pb::GetHostRequest>,
) -> Result<Response<pb::GetHostResponse>, Status> {
    let peer = peer_of(&req, "GetHost")?;
    async {
        let (lifecycle, operation_id) = svc.erase.lifecycle();
        let conditions = svc.health.conditions();
        let host = convert::host(&svc.facts, lifecycle, operation_id, &conditions);
        tracing::debug!("host served");
        Ok(Response::new(pb::GetHostResponse { host: Some(host) }))
    }
    .instrument(rpc_span("GetHost", &peer))
    .await
}
