//! jex-agent: the node agent that runs on every Apple Silicon host of the fleet.
//!
//! It serves the fleet controller over mTLS gRPC (`server`), samples host CPU and memory
//! aggregates into a resumable spool (`telemetry`, with the `jex-spool` crate), runs the verified
//! cryptographic erase on termination and signs its certificate (the `jex-erase` and
//! `jex-attest` crates), answers `jex-agent status` on a root-only socket (`local_socket`),
//! serves Prometheus `/metrics` on a listener of its own (`metrics`) and writes its own logs
//! (`logging`); `jex-agent diagnose` writes a support bundle of all of these (`diagnose`, which
//! `cli` calls and which reads `config`, `local_socket`, `tls` and `logging`).
//!
//! Dependencies point one way:
//! `main -> cli -> app (wiring) -> {metrics, server, local_socket, telemetry, tls, logging} -> the
//! crates` (`metrics` reads the parts of `server` and `telemetry`).
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
pub mod diagnose;
pub mod health;
pub mod local_socket;
pub mod logging;
pub mod metrics;
pub mod pki;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use jex_platform::error_chain;

/// The agent's version, as built.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How this binary was built (`build.rs`): the version, the commit, the target triple, the
/// build date (`SOURCE_DATE_EPOCH`, else the commit's time) and the compiler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildInfo {
    /// The crate version.
    pub version: &'static str,
    /// The commit, 12 hex digits, or `unknown`.
    pub commit: &'static str,
    /// The target triple, e.g. `aarch64-apple-darwin`.
    pub target: &'static str,
    /// `YYYY-MM-DD` (UTC), or `unknown`.
    pub date: &'static str,
    /// `rustc -V` of the compiler that built it.
    pub rustc: &'static str,
}

/// This binary's build.
pub const BUILD: BuildInfo = BuildInfo {
    version: AGENT_VERSION,
    commit: env!("JEX_BUILD_COMMIT"),
    target: env!("JEX_BUILD_TARGET"),
    date: env!("JEX_BUILD_DATE"),
    rustc: env!("JEX_BUILD_RUSTC"),
};

/// The one line `jex-agent --version` prints after the program name.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("JEX_BUILD_COMMIT"),
    ", ",
    env!("JEX_BUILD_TARGET"),
    ", built ",
    env!("JEX_BUILD_DATE"),
    ", ",
    env!("JEX_BUILD_RUSTC"),
    ")"
);
