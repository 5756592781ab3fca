//! Host telemetry: CPU and memory aggregates, sampled once per interval by one sampler whatever
//! the number of subscribers.

pub mod hub;
pub mod sample;

pub use sample::*;
