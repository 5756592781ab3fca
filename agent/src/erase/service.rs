//! placeholder until the erase engine lands: same public shape.

use crate::attest::SignedCertificate;

/// Errors.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    /// Host mismatch.
    #[error("host mismatch: expected {expected}, got {got}")]
    HostMismatch { expected: String, got: String },
    /// Nonce.
    #[error("nonce too short: {len}")]
    NonceTooShort { len: usize },
    /// Request id.
    #[error("empty request id")]
    EmptyRequestId,
    /// No targets.
    #[error("no targets")]
    NoTargets,
    /// Running.
    #[error("already running {operation_id}")]
    AlreadyRunning { operation_id: String },
    /// Not found.
    #[error("not found {operation_id}")]
    NotFound { operation_id: String },
    /// Not certified.
    #[error("not certified {operation_id}")]
    NotCertified { operation_id: String, phase: Phase },
}

/// Lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Serving,
    Erasing,
    Reclaimable,
    EraseFailed,
}
/// Phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Requested,
    KeysDestroyed,
    Overwriting,
    Verifying,
    Certified,
    Reclaimable,
    Failed,
}
/// Outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Erased,
    ErasedWithExceptions,
    Failed,
}
/// Command.
#[derive(Debug, Clone)]
pub struct TerminateCommand {
    pub request_id: String,
    pub host_id: String,
    pub nonce: Vec<u8>,
}
/// Target view.
#[derive(Debug, Clone)]
pub struct TargetView {
    pub name: String,
    pub backend: String,
    pub size_bytes: u64,
    pub phase: Phase,
    pub bytes_done: u64,
}
/// View.
#[derive(Debug, Clone)]
pub struct OperationView {
    pub operation_id: String,
    pub request_id: String,
    pub phase: Phase,
    pub outcome: Option<Outcome>,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub rate_bytes_per_second: f64,
    pub eta_seconds: u64,
    pub started_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
    pub failure_reason: Option<String>,
    pub exceptions: Vec<String>,
    pub targets: Vec<TargetView>,
    pub certificate: Option<SignedCertificate>,
}
/// Service.
#[derive(Debug, Clone, Default)]
pub struct EraseService;
impl EraseService {
    /// Lifecycle.
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle::Serving
    }
    /// Current op.
    pub fn current_operation_id(&self) -> Option<String> {
        None
    }
    /// Terminate.
    pub fn terminate(&self, _c: TerminateCommand) -> Result<OperationView, EraseError> {
        Err(EraseError::NoTargets)
    }
    /// Watch.
    pub fn watch(
        &self,
        id: Option<&str>,
    ) -> Result<tokio::sync::watch::Receiver<OperationView>, EraseError> {
        Err(EraseError::NotFound {
            operation_id: id.unwrap_or("").into(),
        })
    }
    /// Certificate.
    pub fn certificate(&self, id: Option<&str>) -> Result<SignedCertificate, EraseError> {
        Err(EraseError::NotFound {
            operation_id: id.unwrap_or("").into(),
        })
    }
}
