//! [`EraseError`]: every failure of the erase crate, refused requests first, then failures of
//! the state directory and of a running operation (whose message becomes the operation's
//! `failure_reason`).

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::journal::JournalError;
use crate::keys::KeyError;
use crate::pattern::PatternError;
use crate::record::Phase;
use crate::state::TransitionError;
use jex_attest::AttestError;
use jex_attest::MIN_NONCE_BYTES;
use jex_platform::blockdev::BlockDevError;

/// Erase failures: refused requests (first group) and failures of a running operation, whose
/// message becomes the operation's `failure_reason`.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    // --- Refused requests ---
    /// `Terminate` named another host.
    #[error(
        "terminate names host {got:?} but this host is {expected:?}: check the controller's inventory"
    )]
    HostMismatch {
        /// This host's id.
        expected: String,
        /// The id in the request.
        got: String,
    },
    /// The controller's nonce is too short.
    #[error("nonce is {len} bytes: send a fresh random nonce of at least {MIN_NONCE_BYTES} bytes")]
    NonceTooShort {
        /// The length received.
        len: usize,
    },
    /// No idempotency key.
    #[error("request_id is empty: send a unique idempotency key with every terminate")]
    EmptyRequestId,
    /// Nothing to erase.
    #[error(
        "no erase targets are configured: add [[erase.targets]] or [erase.internal_ssd] to the agent config"
    )]
    NoTargets,
    /// Another operation is running.
    #[error("erase operation {operation_id} is still running: wait for it or retry its request_id")]
    AlreadyRunning {
        /// The running operation.
        operation_id: String,
    },
    /// No such operation.
    #[error("no erase operation {operation_id:?} on this host (an empty id: none has run yet)")]
    NotFound {
        /// The id asked for (empty: the current one).
        operation_id: String,
    },
    /// The operation has no certificate (yet).
    #[error("erase operation {operation_id} has no certificate: it is {phase}")]
    NotCertified {
        /// The operation.
        operation_id: String,
        /// Where it is.
        phase: Phase,
    },
    /// The configuration is invalid.
    #[error("invalid erase configuration")]
    Config(#[from] ConfigError),

    // --- State directory and journal ---
    /// The state directory or a file in it could not be used.
    #[error("{operation} {path}")]
    State {
        /// What was being done.
        operation: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the state directory.
    #[error("erase state directory {path} is locked by another jex-agent process: stop it first")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The journal failed.
    #[error("erase journal")]
    Journal(#[from] JournalError),
    /// A step tried to journal a record that is not a legal transition (a bug: nothing was
    /// written).
    #[error("erase state machine")]
    Transition(#[from] TransitionError),
    /// The stored pattern key does not match the journaled commitment or is malformed.
    #[error("pattern key file {path} does not match the journaled commitment")]
    PatternKeyMismatch {
        /// The key file.
        path: PathBuf,
    },
    /// A pattern key could not be generated or decoded.
    #[error("pattern key")]
    Pattern(#[from] PatternError),

    // --- Failures of a running operation ---
    /// A target could not be opened or probed.
    #[error("target {target}")]
    Target {
        /// Target name.
        target: String,
        /// The cause.
        #[source]
        source: BlockDevError,
    },
    /// A target is not the one pinned when the operation started.
    #[error("target {target} refused")]
    Identity {
        /// Target name.
        target: String,
        /// The cause.
        #[source]
        source: BlockDevError,
    },
    /// Key destruction failed or could not be checked.
    #[error("destroying the keys of target {target}")]
    Keys {
        /// Target name.
        target: String,
        /// The cause.
        #[source]
        source: KeyError,
    },
    /// The key backend built for a target is not the configured one.
    #[error("target {target}: configured backend {expected} but the key destroyer is {got}")]
    BackendMismatch {
        /// Target name.
        target: String,
        /// Configured backend.
        expected: String,
        /// The destroyer's backend.
        got: String,
    },
    /// A key backend could not be built for a target.
    #[error("target {target}: key backend {backend} unavailable: {detail}")]
    BackendUnavailable {
        /// Target name.
        target: String,
        /// Backend.
        backend: String,
        /// What is missing.
        detail: String,
    },
    /// A write failed.
    #[error("target {target}: writing {path} at offset {offset}")]
    Write {
        /// Target name.
        target: String,
        /// The path.
        path: PathBuf,
        /// Byte offset.
        offset: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A durable flush failed.
    #[error("target {target}: flushing {path} to stable storage at offset {offset}")]
    Flush {
        /// Target name.
        target: String,
        /// The path.
        path: PathBuf,
        /// Bytes written when the flush failed.
        offset: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A verification read failed.
    #[error("target {target}: reading back {path} at offset {offset}")]
    Read {
        /// Target name.
        target: String,
        /// The path.
        path: PathBuf,
        /// Byte offset.
        offset: u64,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Read-back differs from the pattern.
    #[error(
        "target {target}: verification failed: {path} differs from the pattern at byte offset {offset}"
    )]
    Mismatch {
        /// Target name.
        target: String,
        /// The path.
        path: PathBuf,
        /// First mismatching byte.
        offset: u64,
    },
    /// Signing the certificate failed.
    #[error("signing the erase certificate")]
    Sign {
        /// The cause.
        #[source]
        source: AttestError,
    },
    /// A certificate could not be encoded or decoded.
    #[error("erase certificate {path}: {detail}")]
    CertificateFormat {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// `AttestErase` named an operation id that is not a UUID.
    #[error("operation id {operation_id:?} is not a UUID: send the id WatchErase returned")]
    BadOperationId {
        /// What was sent.
        operation_id: String,
    },
    /// `AttestErase` on an agent that has run another operation: only the agent of a freshly
    /// erased OS attests.
    #[error(
        "this agent has run {operations} erase operation(s) already: a device erase is attested only by the agent of the freshly erased OS, before any other operation"
    )]
    NotFresh {
        /// Operations in this agent's journal.
        operations: usize,
    },
    /// The system-device rails could not be read (on macOS: the APFS map from `diskutil`), so no
    /// target is opened.
    #[error("reading the system-device rails: {detail}")]
    Rails {
        /// What failed.
        detail: String,
    },
    /// The prepare half of a device erase could not record or sign the host's storage.
    #[error("preparing the device erase: {detail}")]
    DeviceErase {
        /// What failed, and what to do.
        detail: String,
    },
    /// A bug or an unexpected condition (a worker thread stopped).
    #[error("internal error: {detail}")]
    Internal {
        /// What happened.
        detail: String,
    },
}
