//! `AttestErase`: the last half of a device erase, on the agent of the freshly erased OS.
//!
//! - Roles: the controller only.
//! - Command: [`command`], the field limits first (`INVALID_ARGUMENT` naming the field), then an
//!   [`AttestCommand`]; the erase service checks the host id, the nonce's minimum and the
//!   operation id's form. A missing prepare record is not refused here: it becomes a failed
//!   `prepare_record_verifies` line, like any record that does not verify.
//! - Errors: [`grpc_error::from_erase`]; an agent that has run another operation is
//!   `FAILED_PRECONDITION` (only a freshly erased OS's agent attests).
//! - Answer: the operation (reclaimable, or certified `FAILED` with the failed lines as its
//!   exceptions) and the signed v2 certificate, whichever the outcome.

use jex_erase::AttestCommand;
use jex_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use super::{CONTROLLER_ONLY, Method, peer_of, rpc_span};
use crate::server::fields::{self, FieldError};
use crate::server::{AgentService, convert, grpc_error};

/// The table entry.
pub const METHOD: Method = Method {
    path: "/jex.agent.v1.NodeAgent/AttestErase",
    roles: CONTROLLER_ONLY,
};

/// The request as a domain command, once every field is within its limit.
pub fn command(r: pb::AttestEraseRequest) -> Result<AttestCommand, FieldError> {
    fields::attest_erase(&r)?;
    Ok(AttestCommand {
        operation_id: r.operation_id,
        host_id: r.host_id,
        nonce: r.nonce,
        prepare: convert::prepare_record_from_proto(r.prepare_record.unwrap_or_default()),
    })
}

/// Attests the device erase (or returns the attestation this operation id already has).
pub(super) async fn handle(
    svc: &AgentService,
    req: Request<pb::AttestEraseRequest>,
) -> Result<Response<pb::AttestEraseResponse>, Status> {
    let peer = peer_of(&req, "AttestErase")?;
    let span = rpc_span("AttestErase", &peer);
    let cmd = command(req.into_inner()).map_err(|e| grpc_error::from_field(&e))?;
    let erase = span.in_scope(|| svc.erase.service())?;
    async move {
        // Tool runs, a signature and fsyncs: off the runtime's workers.
        let span = tracing::Span::current();
        let result = tokio::task::spawn_blocking(move || span.in_scope(|| erase.attest(cmd)))
            .await
            .map_err(|e| grpc_error::internal(&e))?;
        match result {
            Ok(op) => {
                tracing::info!(
                    operation_id = %op.operation_id,
                    phase = %op.phase,
                    outcome = op.outcome.map_or("none", |o| o.as_str()),
                    "attestation answered"
                );
                Ok(Response::new(pb::AttestEraseResponse {
                    certificate: op.certificate.as_ref().map(convert::certificate),
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
        let ok = pb::AttestEraseRequest {
            operation_id: "0b7a5c1e-2d3f-4a5b-8c9d-0e1f2a3b4c5d".into(),
            host_id: "h1".into(),
            nonce: vec![7; 32],
            prepare_record: Some(pb::PrepareRecord {
                record_json: b"{}".to_vec(),
                signature: vec![1; 70],
                signer_chain_der: vec![vec![2; 600]],
                signature_algorithm: "ecdsa-p256-sha256".into(),
            }),
        };
        let cmd = command(ok.clone()).expect("within limits");
        assert_eq!(cmd.prepare.record_json, b"{}");
        let refused = |edit: fn(&mut pb::AttestEraseRequest)| {
            let mut r = ok.clone();
            edit(&mut r);
            command(r).expect_err("refused").field
        };
        assert_eq!(refused(|r| r.operation_id = "x".repeat(65)), "operation_id");
        assert_eq!(
            refused(|r| {
                if let Some(p) = r.prepare_record.as_mut() {
                    p.record_json = vec![b' '; fields::MAX_PREPARE_JSON_BYTES + 1];
                }
            }),
            "prepare_record.record_json"
        );
        assert_eq!(
            refused(|r| {
                if let Some(p) = r.prepare_record.as_mut() {
                    p.signer_chain_der = vec![vec![0; 10]; 5];
                }
            }),
            "prepare_record.signer_chain_der"
        );
        // No record at all is the service's to judge, as a failed evidence line.
        let none = pb::AttestEraseRequest {
            prepare_record: None,
            ..ok
        };
        assert!(
            command(none)
                .expect("accepted")
                .prepare
                .record_json
                .is_empty()
        );
    }
}
