//! The platform implementation for operating systems other than Linux and macOS: every call
//! fails with [`PlatformError::Unsupported`].

use super::{HostCounters, HostInfo, PlatformError};

pub(super) fn host_counters() -> Result<Box<dyn HostCounters>, PlatformError> {
    Err(PlatformError::Unsupported)
}

pub(super) fn host_info() -> Result<HostInfo, PlatformError> {
    Err(PlatformError::Unsupported)
}

pub(super) fn process_usage() -> Result<crate::usage::ProcessUsage, PlatformError> {
    Err(PlatformError::Unsupported)
}
