//! placeholder

pub mod keys;
pub mod service;

/// Erase settings (placeholder).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseConfig {
    /// Targets.
    #[serde(default)]
    pub targets: Vec<toml::Table>,
}
