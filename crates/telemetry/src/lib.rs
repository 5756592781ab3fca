//! The telemetry model of jex-agent: what a host-aggregate sample is, and the arithmetic that
//! turns raw OS counters into one.
//!
//! - [`counters`]: raw counters as the OS reports them (per-CPU ticks, memory counters).
//! - [`cpu`]: busy fractions from tick deltas, correct with parked Apple Silicon cores.
//! - [`memory`]: used/available memory from Linux `/proc/meminfo` or macOS page counts.
//! - [`sample`]: the sample, record and gap types the agent spools and sends.
//!
//! Privacy by construction: only host aggregates exist here; there is no type that could carry
//! a process, user, file or address.
//!
//! This crate is pure code: it must not depend on the platform crate, an async runtime, the
//! network stack or the gRPC types (the agent converts to those at its edge).

#![forbid(unsafe_code)]

pub mod counters;
pub mod cpu;
pub mod memory;
pub mod sample;

pub use counters::*;
pub use sample::*;
