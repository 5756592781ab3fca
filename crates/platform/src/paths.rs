//! Where the agent keeps things by default on each OS: the macOS layout the `.pkg` installs
//! (`packaging/src/layout.rs`) and the Linux layout. The layout of the running OS is re-exported
//! at the top of this module.

/// The macOS layout (what the `.pkg` installs; see `packaging/src/layout.rs`).
pub mod macos {
    /// Configuration file.
    pub const CONFIG_PATH: &str = "/Library/Application Support/JexCloud/agent.toml";
    /// State directory (spool, erase journal, certificates).
    pub const STATE_DIR: &str = "/Library/Application Support/JexCloud/state";
    /// Erase journal, lock and certificates, when `[erase] state_dir` is not set.
    pub const ERASE_STATE_DIR: &str = "/Library/Application Support/JexCloud/erase";
    /// Log directory.
    pub const LOG_DIR: &str = "/Library/Logs/JexCloud";
    /// Local status socket (root only).
    pub const STATUS_SOCKET: &str = "/var/run/jex-agent.sock";
}

/// The Linux layout.
pub mod linux {
    /// Configuration file.
    pub const CONFIG_PATH: &str = "/etc/jex-agent/agent.toml";
    /// State directory (spool, erase journal, certificates).
    pub const STATE_DIR: &str = "/var/lib/jex-agent";
    /// Erase journal, lock and certificates, when `[erase] state_dir` is not set.
    pub const ERASE_STATE_DIR: &str = "/var/lib/jex-agent/erase";
    /// Log directory.
    pub const LOG_DIR: &str = "/var/log/jex-agent";
    /// Local status socket (root only).
    pub const STATUS_SOCKET: &str = "/run/jex-agent.sock";
}

#[cfg(not(target_os = "macos"))]
pub use linux::*;
#[cfg(target_os = "macos")]
pub use macos::*;

/// Default gRPC listen address.
pub const LISTEN: &str = "0.0.0.0:7443";
