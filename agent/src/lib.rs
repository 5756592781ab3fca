//! jex-agent: the node agent that runs on every Apple Silicon host of the fleet.
//!
//! It serves the fleet controller over mTLS gRPC (`server`), samples host CPU and memory
//! aggregates into a resumable spool (`telemetry`, with the `jex-spool` crate), runs the verified
//! cryptographic erase on termination and signs its certificate (the `jex-erase` and
//! `jex-attest` crates), answers `jex-agent status` on a root-only socket (`local_socket`) and
//! writes its own logs (`logging`).
//!
//! Dependencies point one way:
//! `main -> cli -> app (wiring) -> {server, local_socket, telemetry, tls, logging} -> the crates`.
//! Proto types stop at `server`, the controller client (`ctl`) and `telemetry::wire` (a
//! telemetry record is stored in its wire form); `cfg(target_os)` lives only in the
//! `jex-platform` crate.

#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub(crate) mod ctl;
pub mod demo;
pub mod diag;
pub mod local_socket;
pub mod logging;
pub mod pki;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use jex_platform::error_chain;

/// The agent's version, as built.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
