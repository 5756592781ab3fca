//! Host telemetry: CPU and memory aggregates, sampled once per interval by one sampler whatever
//! the number of subscribers.

pub mod cpu;
pub mod hub;
pub mod memory;
pub mod sample;
pub mod sampler;

pub use sample::*;
