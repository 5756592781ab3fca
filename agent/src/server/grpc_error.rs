//! The erase errors, which three RPCs share, become gRPC statuses here, in one exhaustive match
//! (no catch-all arm: a new variant must be mapped on purpose); an RPC's own errors are mapped
//! in its file under `rpc`. Internal failures ([`internal`]: any error of the agent's own,
//! a task that failed to run included) send a fixed message with a correlation id; the full
//! chain goes to the log, never to the caller.
//!
//! Two more maps live here: a request field over its limit ([`from_field`]), and the codes of
//! tonic's own decode errors, which do not follow the convention this API uses
//! ([`remap_codec_status`]): a request that is not valid protobuf is the caller's error,
//! `INVALID_ARGUMENT` (tonic says `INTERNAL`), and a message over the size limit is
//! `RESOURCE_EXHAUSTED` (tonic says `OUT_OF_RANGE`).

use tonic::Status;

use super::fields::FieldError;
use jex_erase::EraseError;

/// Logs the full error chain under a fresh correlation id and returns a generic status.
pub fn internal(err: &dyn std::error::Error) -> Status {
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
        EraseError::NonceTooShort { .. }
        | EraseError::EmptyRequestId
        | EraseError::BadOperationId { .. } => Status::invalid_argument(e.to_string()),
        // The request is fine but the host is not in a state to accept it.
        EraseError::HostMismatch { .. }
        | EraseError::NoTargets
        | EraseError::AlreadyRunning { .. }
        | EraseError::NotFresh { .. }
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
        | EraseError::DeviceErase { .. }
        | EraseError::Rails { .. }
        | EraseError::Internal { .. } => internal(e),
    }
}

/// The status for an erase call while the erase service is unavailable (it could not be opened
/// at start, see [`super::EraseSlot::Unavailable`]): the host cannot accept it until the
/// retried open succeeds (the disk has room again).
pub fn erase_unavailable(reason: &str) -> Status {
    Status::failed_precondition(format!(
        "erase unavailable: {reason}; free space and restart the agent"
    ))
}

/// The status for a request field over its limit: `INVALID_ARGUMENT`, naming the field and the
/// limit, quoting at most a short prefix of the value.
pub fn from_field(e: &FieldError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// The message prefix of prost's decode errors, as tonic-prost sends them (`INTERNAL`).
const UNDECODABLE: &str = "failed to decode Protobuf message";
/// The message prefix of tonic's size-limit error (`OUT_OF_RANGE`).
const TOO_LARGE: &str = "Error, decoded message length too large";

/// Rewrites the `grpc-status` of tonic's codec errors in response headers or trailers: an
/// undecodable request becomes `INVALID_ARGUMENT`, an oversize one `RESOURCE_EXHAUSTED`. Every
/// other status is left alone (the agent's own `OUT_OF_RANGE` for a cursor ahead of the spool
/// has another message).
pub fn remap_codec_status(headers: &mut http::HeaderMap) {
    // Cheap test first: most responses carry no status in their headers.
    let Some(code) = headers.get("grpc-status").map(|v| v.as_bytes()) else {
        return;
    };
    let internal = (tonic::Code::Internal as i32).to_string();
    let out_of_range = (tonic::Code::OutOfRange as i32).to_string();
    if code != internal.as_bytes() && code != out_of_range.as_bytes() {
        return;
    }
    // The message is percent-encoded on the wire; tonic decodes it.
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let remapped = match status.code() {
        tonic::Code::Internal if status.message().starts_with(UNDECODABLE) => {
            tonic::Code::InvalidArgument
        }
        tonic::Code::OutOfRange if status.message().starts_with(TOO_LARGE) => {
            tonic::Code::ResourceExhausted
        }
        _ => return,
    };
    headers.insert("grpc-status", http::HeaderValue::from(remapped as i32));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The headers tonic sends for `Status::new(code, message)`, remapped, read back.
    fn status_of(code: tonic::Code, message: &str) -> (tonic::Code, String) {
        let mut h = Status::new(code, message)
            .into_http::<()>()
            .into_parts()
            .0
            .headers;
        remap_codec_status(&mut h);
        let s = Status::from_header_map(&h).unwrap_or_else(|| Status::ok(""));
        (s.code(), s.message().to_owned())
    }

    #[test]
    fn codec_errors_get_the_conventional_codes_and_keep_their_message() {
        let m = "failed to decode Protobuf message: TerminateRequest.nonce: invalid wire type";
        assert_eq!(
            status_of(tonic::Code::Internal, m),
            (tonic::Code::InvalidArgument, m.to_owned())
        );
        let m = "Error, decoded message length too large: found 3145734 bytes, the limit is: 65536 bytes";
        assert_eq!(
            status_of(tonic::Code::OutOfRange, m),
            (tonic::Code::ResourceExhausted, m.to_owned())
        );
    }

    #[test]
    fn an_internal_error_reaches_the_caller_as_a_fixed_message() {
        let e = std::io::Error::other("task 42 panicked at src/secret/path.rs: key=abc");
        let s = internal(&e);
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(
            s.message().starts_with("internal error (correlation id "),
            "{s:?}"
        );
        assert!(!s.message().contains("panicked"), "{s:?}");
        assert!(!s.message().contains("secret"), "{s:?}");
    }

    #[test]
    fn other_statuses_are_left_alone() {
        for (code, m) in [
            (tonic::Code::OutOfRange, "after_seq 9 is ahead of the spool"),
            (tonic::Code::Internal, "internal error (correlation id x)"),
            (tonic::Code::Ok, ""),
        ] {
            assert_eq!(status_of(code, m), (code, m.to_owned()));
        }
        let mut none = http::HeaderMap::new();
        remap_codec_status(&mut none);
        assert!(none.is_empty());
    }
}
