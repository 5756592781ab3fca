//! Every domain error that reaches a caller becomes a gRPC status here, in one exhaustive
//! match per error type (no catch-all arm: a new variant must be mapped on purpose). Internal
//! failures send a generic message with a correlation id; the full chain goes to the log.

use tonic::Status;

use crate::telemetry::hub::HubError;
use jex_erase::EraseError;

/// Logs the full error chain under a fresh correlation id and returns a generic status.
fn internal(err: &dyn std::error::Error) -> Status {
    let id = uuid::Uuid::new_v4();
    let chain = crate::error_chain(err);
    tracing::error!(correlation_id = %id, error = %chain, "internal error");
    Status::internal(format!(
        "internal error (correlation id {id}); the agent log has the details"
    ))
}

/// The status for an erase error.
pub fn from_erase(e: &EraseError) -> Status {
    match e {
        // The caller sent something unusable: fix the request.
        EraseError::NonceTooShort { .. } | EraseError::EmptyRequestId => {
            Status::invalid_argument(e.to_string())
        }
        // The request is fine but the host is not in a state to accept it.
        EraseError::HostMismatch { .. }
        | EraseError::NoTargets
        | EraseError::AlreadyRunning { .. }
        | EraseError::NotCertified { .. } => Status::failed_precondition(e.to_string()),
        // Unknown operation.
        EraseError::NotFound { .. } => Status::not_found(e.to_string()),
        // The agent's own state, targets or tools failed: the operator acts on the log.
        EraseError::Config(_)
        | EraseError::State { .. }
        | EraseError::Locked { .. }
        | EraseError::Journal(_)
        | EraseError::Transition(_)
        | EraseError::PatternKeyMismatch { .. }
        | EraseError::Pattern(_)
        | EraseError::Target { .. }
        | EraseError::Identity { .. }
        | EraseError::Keys { .. }
        | EraseError::BackendMismatch { .. }
        | EraseError::BackendUnavailable { .. }
        | EraseError::Write { .. }
        | EraseError::Flush { .. }
        | EraseError::Read { .. }
        | EraseError::Mismatch { .. }
        | EraseError::Sign { .. }
        | EraseError::CertificateFormat { .. }
        | EraseError::Internal { .. } => internal(e),
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
        | HubError::ReadTask { .. } => internal(e),
    }
}
