//! Host telemetry in the agent: the one sampler thread (whatever the number of subscribers) and
//! the hub that spools its records and fans them out to live subscribers. The model itself (what
//! a sample is, and its arithmetic) is the `jex-telemetry` crate.

pub mod hub;
pub mod sampler;

pub use jex_telemetry::*;
