//! The system log sink: where the host's own log tools find the agent's events.
//!
//! On macOS that is the unified log, under subsystem [`SUBSYSTEM`] and category [`CATEGORY`]
//! (`log show --predicate 'subsystem == "com.jexcloud.agent"'`), written through
//! `tracing-oslog`. Other systems have none: Linux hosts read the agent's JSON file.
//!
//! The agent's logging stacks this layer beside its own JSON file layer; which OS gets one is
//! chosen in the crate root, like every other platform implementation.

use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The unified-logging subsystem of the agent.
pub const SUBSYSTEM: &str = "com.jexcloud.agent";

/// The unified-logging category of the agent's events.
pub const CATEGORY: &str = "default";

/// The layer that writes events to the system log, or `None` where the OS has no sink the
/// agent writes to (every OS but macOS).
pub fn system_log_layer<S>() -> Option<Box<dyn Layer<S> + Send + Sync>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    crate::system_log_sink()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_macos_has_a_system_log_sink() {
        let layer = system_log_layer::<tracing_subscriber::Registry>();
        assert_eq!(layer.is_some(), cfg!(target_os = "macos"));
    }
}
