//! The verified cryptographic erase run on `Terminate`.
//!
//! An operation is a journaled state machine ([`record`] for the journal records, [`state`]
//! for the transitions and what replay does with a damaged journal):
//!
//! ```text
//! Requested -> TargetsPinned -> KeysSnapshotted -> KeysDestroyed -> Overwriting{target, offset}
//!   -> Verifying -> Certified{outcome} -> Reclaimable      (only with an ERASED certificate)
//!   \-> Failed{phase, reason}   (from any state that has not ended; never Reclaimable afterwards)
//! ```
//!
//! 1. keys first: every configured target's keys are destroyed through its [`keys`] backend
//!    and the destruction is checked (NIST SP 800-88 Purge by crypto erase);
//! 2. every target is overwritten with a seekable AES-256-CTR [`pattern`] by direct I/O
//!    ([`overwrite`]), with durable checkpoints;
//! 3. the overwrite is read back at locations derived from the controller's nonce ([`verify`]);
//! 4. a certificate is assembled ([`certify`]) and signed ([`jex_attest`]); only a verified,
//!    signed `ERASED` makes the host reclaimable.
//!
//! [`service::EraseService`] is the API the gRPC edge calls. Targets come only from
//! [`config::EraseConfig`], pinned by identity and re-checked before every destructive step; the
//! root/boot device and mounted devices are refused.
//!
//! # Layout
//!
//! - `names` (private): `named_enum!`, each named enum's spellings from one table.
//! - [`config`]: the `[erase]` settings and their validation.
//! - [`pattern`], [`journal`], [`keys`]: the overwrite pattern, the append-only journal, the
//!   key-destruction backends.
//! - [`record`]: the journal record schema, [`Phase`] and [`Outcome`].
//! - [`state`]: the state machine: one transition per record, replay.
//! - [`error`]: every failure, [`EraseError`].
//! - [`overwrite`], [`verify`]: the overwrite pass and the read-back.
//! - [`layout`]: the state directory (journal, lock, key files, certificates).
//! - [`deps`]: what the engine gets from the agent (signer, host, key backends).
//! - [`progress`]: the views and the snapshot read-only queries read.
//! - `store` (private): the journal and the operations under the engine's one lock.
//! - [`certify`]: the certificate document.
//! - `steps` (private): the steps of an operation, on its worker thread.
//! - [`plan`]: what a `Terminate` would erase.
//! - [`service`]: the API, [`EraseService`].
//! - `testing` (feature `test-util`): the fake key backend and the test signer.
//!
//! # Module dependencies
//!
//! Dependencies point one way: each module uses only modules listed before it (bottom first),
//! test code included (a unit test checks it):
//!
//! ```text
//! names                               no crate dependency
//! config    -> names
//! pattern, journal, keys              no crate dependency
//! record    -> config, keys, names
//! state     -> keys, names, record
//! error     -> config, journal, keys, pattern, record, state
//! overwrite -> error, pattern
//! verify    -> error, pattern
//! layout    -> error, journal, pattern
//! deps      -> config, error, keys
//! progress  -> error, record, state
//! store     -> config, deps, error, journal, layout, progress, record, state
//! certify   -> pattern, record, state, verify
//! steps     -> certify, error, keys, layout, overwrite, pattern, progress, record, state,
//!              store, verify
//! plan      -> config, deps, error
//! service   -> config, deps, error, journal, layout, plan, progress, record, state, steps,
//!              store
//! testing   -> config, deps, keys
//! ```
//!
//! The crate root only declares modules and re-exports; modules never import through it.
//!
//! # Threads and locks
//!
//! An operation runs on its own worker thread. The engine's one lock (`store`) guards the
//! journal and the operations; it is held while a record is journaled (an fsync). After every
//! change the engine publishes one immutable snapshot ([`progress`]: every operation's view and
//! the lifecycle) through a `tokio` `watch` channel; the read-only calls of [`EraseService`]
//! read it and never take the lock.

#![forbid(unsafe_code)]

pub mod attest;
pub mod certify;
pub mod config;
pub mod deps;
mod device_erase;
pub mod error;
pub mod journal;
pub mod keys;
pub mod layout;
mod names;
pub mod overwrite;
pub mod pattern;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod rails;
pub mod record;
pub mod service;
pub mod state;
mod steps;
mod store;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod verify;

#[cfg(test)]
mod tests;

pub use attest::AttestCommand;
pub use certify::AGENT_VERSION;
pub use config::{
    Backend, ConfigError, EraseConfig, InternalSsdConfig, InternalSsdMethod, TargetConfig,
    TargetKeys, TargetShapeError, ToolsConfig,
};
pub use deps::{EraseDeps, KeyDestroyerFactory, production_factory};
pub use error::EraseError;
pub use jex_platform::error_chain;
pub use plan::{PlanCheck, PlannedTarget, plan_offline};
pub use progress::{HostEraseState, Lifecycle, OperationView, OperationWatch, TargetView};
pub use record::{Outcome, Phase};
pub use service::{EraseService, TerminateCommand};
