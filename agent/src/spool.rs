//! placeholder: the telemetry spool.

/// Spool settings (placeholder).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory.
    pub dir: Option<std::path::PathBuf>,
}
