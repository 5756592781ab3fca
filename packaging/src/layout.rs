//! Where jex-agent lives on a macOS host, and the service facts the launchd job must agree with.
//!
//! These constants are the single source of truth for the package: the payload builder places
//! files at these paths, the tests check `launchd/com.jexcloud.agent.plist` and the newsyslog
//! configuration against them, and the install scripts in `packaging/scripts/` use the same
//! literal paths (a test runs the scripts against the payload built from this table).
//!
//! # Binary location
//!
//! The binary is installed at `/Library/Application Support/JexCloud/bin/jex-agent`, not under
//! `/usr/local` (writable by the first admin user on many Macs, and by Homebrew on Intel: a
//! root daemon whose program an unprivileged user can replace is a privilege escalation) and not
//! under `/opt` (absent on a stock macOS, and created with varying owners by third-party
//! installers such as Homebrew and MacPorts). Every ancestor of the chosen path is root-owned
//! and not group- or world-writable on a stock install, and all of the agent's files then sit in
//! one vendor tree, which keeps the uninstaller simple.
//!
//! # Ownership and modes
//!
//! | path | owner | mode | created by |
//! |---|---|---|---|
//! | `/Library/Application Support/JexCloud/` | root:wheel | 0755 | payload |
//! | `.../JexCloud/bin/jex-agent` | root:wheel | 0755 | payload |
//! | `.../JexCloud/agent.toml.example` | root:wheel | 0644 | payload |
//! | `.../JexCloud/agent.toml` | root:wheel | 0600 | postinstall, from the example, only if absent |
//! | `.../JexCloud/state/` | root:wheel | 0700 | postinstall |
//! | `/Library/Logs/JexCloud/` | root:wheel | 0750 | postinstall (launchd does not create it) |
//! | `/Library/LaunchDaemons/com.jexcloud.agent.plist` | root:wheel | 0644 | payload |
//! | `/private/etc/newsyslog.d/com.jexcloud.agent.conf` | root:wheel | 0644 | payload |

/// launchd label of the daemon; also the name of its plist file.
pub const LABEL: &str = "com.jexcloud.agent";

/// Default package identifier (what `pkgutil --pkgs` shows and the receipts are named after).
pub const PKG_IDENTIFIER: &str = "com.jexcloud.agent";

/// Name of the component package inside the product archive.
pub const COMPONENT_PKG_NAME: &str = "jex-agent.pkg";

/// Oldest macOS the package installs on (the Distribution's `allowed-os-versions`).
pub const MIN_MACOS_VERSION: &str = "13.0";

/// Vendor directory holding the binary, the configuration and the state.
pub const VENDOR_DIR: &str = "/Library/Application Support/JexCloud";

/// Directory holding the agent's executables.
pub const BIN_DIR: &str = "/Library/Application Support/JexCloud/bin";

/// The agent binary, as launchd starts it.
pub const AGENT_BINARY: &str = "/Library/Application Support/JexCloud/bin/jex-agent";

/// The uninstall script, shipped next to the binary.
pub const UNINSTALL_SCRIPT: &str = "/Library/Application Support/JexCloud/bin/jex-agent-uninstall";

/// The agent configuration passed with `--config`.
pub const CONFIG_PATH: &str = "/Library/Application Support/JexCloud/agent.toml";

/// The configuration example shipped in the payload; postinstall copies it to [`CONFIG_PATH`]
/// when no configuration exists.
pub const CONFIG_EXAMPLE_PATH: &str = "/Library/Application Support/JexCloud/agent.toml.example";

/// The agent's state (journal, spool, keys); also the daemon's working directory.
pub const STATE_DIR: &str = "/Library/Application Support/JexCloud/state";

/// Mode of [`STATE_DIR`]: root only.
pub const STATE_DIR_MODE: u32 = 0o700;

/// Mode of [`CONFIG_PATH`] when postinstall creates it.
pub const CONFIG_MODE: u32 = 0o600;

/// Directory of the agent's own rotated JSON logs and of launchd's stdout/stderr files.
pub const LOG_DIR: &str = "/Library/Logs/JexCloud";

/// Mode of [`LOG_DIR`].
pub const LOG_DIR_MODE: u32 = 0o750;

/// The agent's own JSON log (rotated by the agent itself, not by newsyslog).
pub const AGENT_LOG: &str = "/Library/Logs/JexCloud/agent.log";

/// launchd's `StandardOutPath`: early-boot output only.
pub const LAUNCHD_STDOUT_LOG: &str = "/Library/Logs/JexCloud/launchd.stdout.log";

/// launchd's `StandardErrorPath`: panics and early-boot errors.
pub const LAUNCHD_STDERR_LOG: &str = "/Library/Logs/JexCloud/launchd.stderr.log";

/// Installed location of the LaunchDaemon plist.
pub const PLIST_PATH: &str = "/Library/LaunchDaemons/com.jexcloud.agent.plist";

/// Installed location of the newsyslog rule for the launchd stdout/stderr files. Payload paths
/// use `private/etc` because `/etc` is a symlink to it on macOS.
pub const NEWSYSLOG_CONF_PATH: &str = "/private/etc/newsyslog.d/com.jexcloud.agent.conf";

/// Subcommand that runs the daemon: `jex-agent run --config <path>`.
pub const RUN_SUBCOMMAND: &str = "run";

/// Subcommand that validates a configuration: `jex-agent check-config --config <path>`.
pub const CHECK_CONFIG_SUBCOMMAND: &str = "check-config";

/// Flag naming the configuration file.
pub const CONFIG_FLAG: &str = "--config";

/// Exit status of `check-config` (and of `run`) for an invalid configuration (`EX_USAGE`).
pub const EXIT_CONFIG_INVALID: i32 = 64;

/// Seconds the agent takes at most to drain after SIGTERM (the agent's `SHUTDOWN_GRACE_SECS`).
pub const SHUTDOWN_GRACE_SECS: u64 = 20;

/// The plist's `ExitTimeOut`: seconds launchd waits after SIGTERM before SIGKILL. Must exceed
/// [`SHUTDOWN_GRACE_SECS`] with margin for the process to exit after draining.
pub const EXIT_TIMEOUT_SECS: u64 = 30;

// launchd must not SIGKILL an agent that is still within its drain.
const _: () = assert!(EXIT_TIMEOUT_SECS >= SHUTDOWN_GRACE_SECS + 5);

/// The plist's `ThrottleInterval`: minimum seconds between two launches.
pub const THROTTLE_INTERVAL_SECS: u64 = 10;

/// The plist's `Umask` (launchd reads it as a decimal integer: 63).
pub const UMASK: u32 = 0o077;

/// The daemon's user.
pub const USER_NAME: &str = "root";

/// The daemon's group.
pub const GROUP_NAME: &str = "wheel";

/// Soft and hard limit on open files for the daemon.
pub const NUMBER_OF_FILES: u64 = 8192;

/// Payload path (relative to the volume root, as in the Payload cpio and the Bom) of an
/// absolute install path.
pub fn payload_path(absolute: &str) -> String {
    format!(".{absolute}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_installed_file_lives_in_a_root_owned_tree_not_usr_local() {
        for path in [
            AGENT_BINARY,
            UNINSTALL_SCRIPT,
            CONFIG_PATH,
            CONFIG_EXAMPLE_PATH,
            STATE_DIR,
        ] {
            assert!(path.starts_with(VENDOR_DIR), "{path}");
            assert!(!path.starts_with("/usr/local"), "{path}");
        }
        for path in [AGENT_LOG, LAUNCHD_STDOUT_LOG, LAUNCHD_STDERR_LOG] {
            assert!(path.starts_with(&format!("{LOG_DIR}/")), "{path}");
        }
        assert!(AGENT_BINARY.starts_with(&format!("{BIN_DIR}/")));
        assert_eq!(PLIST_PATH, format!("/Library/LaunchDaemons/{LABEL}.plist"));
    }

    #[test]
    fn payload_paths_are_dot_relative() {
        assert_eq!(
            payload_path(PLIST_PATH),
            "./Library/LaunchDaemons/com.jexcloud.agent.plist"
        );
    }
}
