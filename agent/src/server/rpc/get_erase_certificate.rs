//! `GetEraseCertificate`: the signed certificate of a finished erase operation.
//!
//! - Roles: controller and observer.
//! - Command: [`command`], the operation id (empty: the last operation), within its limit.
//! - Errors: [`grpc_error::from_erase`] (`NOT_FOUND` for an unknown operation,
//!   `FAILED_PRECONDITION` for one not certified); an erase service that could not be opened is
//!   `FAILED_PRECONDITION`.

use jex_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{ANY_ROLE, Method, peer_of, rpc_span};
use crate::server::fields::{self, FieldError};
use crate::server::{AgentService, convert, grpc_error};

/// The table entry.
pub const METHOD: Method = Method {
    path: "/jex.agent.v1.NodeAgent/GetEraseCertificate",
    roles: ANY_ROLE,
};

/// The operation whose certificate is asked for: `None` for the last one.
pub fn command(r: pb::GetEraseCertificateRequest) -> Result<Option<String>, FieldError> {
    fields::get_erase_certificate(&r)?;
    Ok((!r.operation_id.is_empty()).then_some(r.operation_id))
}

/// Answers the call.
pub(super) fn handle(
    svc: &AgentService,
    req: Request<pb::GetEraseCertificateRequest>,
) -> Result<Response<pb::GetEraseCertificateResponse>, Status> {
    let peer = peer_of(&req, "GetEraseCertificate")?;
    let id = command(req.into_inner()).map_err(|e| grpc_error::from_field(&e))?;
    let cert = rpc_span("GetEraseCertificate", &peer).in_scope(|| {
        svc.erase
            .service()?
            .certificate(id.as_deref())
            .map_err(|e| grpc_error::from_erase(&e))
    })?;
    Ok(Response::new(pb::GetEraseCertificateResponse {
        certificate: Some(convert::certificate(&cert)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_operation_id_means_the_last_one() {
        let req = |id: &str| pb::GetEraseCertificateRequest {
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
