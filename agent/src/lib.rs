//! jex-agent: the node agent that runs on every Apple Silicon host of the fleet.
//!
//! It serves the fleet controller over mTLS gRPC (`server`), samples host CPU and memory
//! aggregates into a resumable spool (`telemetry`, `spool`), runs the verified cryptographic
//! erase on termination (`erase`, `journal`) and signs its certificate (`attest`).
//!
//! Dependencies point one way:
//! `cli -> app (wiring) -> server (gRPC edge) -> {telemetry, spool, erase, attest, journal} -> platform`.
//! Proto types stop at `server` and `telemetry::wire` (a telemetry record is stored in its wire
//! form); `cfg(target_os)` lives only where `platform` modules are declared.

#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod logging;
pub mod pki;
pub mod render;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod tls;

pub use jex_platform::error_chain;

/// The agent's version, as built.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
