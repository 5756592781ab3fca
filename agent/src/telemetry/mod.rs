//! Host telemetry in the agent: the one sampler thread (whatever the number of subscribers) and
//! the hub that spools its records and fans them out to live subscribers. The model itself (what
//! a sample is, and its arithmetic) is the `jex-telemetry` crate; a record's wire form, which is
//! also what the spool stores, is `wire`.

pub mod hub;
pub mod sampler;
pub mod wire;

pub use jex_telemetry::*;
