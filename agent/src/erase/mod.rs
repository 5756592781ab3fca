//! placeholder

pub mod keys;
