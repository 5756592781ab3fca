//! The agent's configuration: one TOML file, unknown keys refused, every error naming the file,
//! the line and the key, and saying what is expected.
//!
//! ```toml
//! [server]
//! listen = "0.0.0.0:7443"
//!
//! [tls]
//! cert = "/Library/Application Support/JexCloud/tls/agent.pem"       # chain, leaf first
//! key = "/Library/Application Support/JexCloud/tls/agent.key"        # PKCS#8, mode 0600
//! client_ca = "/Library/Application Support/JexCloud/tls/fleet-ca.pem"
//!
//! [roles]
//! controller = ["spiffe://fleet.example/controller"]
//! observer = ["spiffe://fleet.example/observer"]
//!
//! [telemetry]
//! interval_ms = 1000
//!
//! [logging]
//! dir = "/Library/Logs/JexCloud"
//! ```
//!
//! Relative paths are refused: the daemon never depends on its working directory.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use jex_erase::EraseConfig;
use jex_spool::{SpoolConfig, SpoolError};

/// Where the agent keeps things by default on this OS (chosen in the platform crate).
pub use jex_platform::paths as defaults;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the agent keeps its state (spool, erase journal, certificates); mode 0700.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The gRPC listener.
    #[serde(default)]
    pub server: ServerConfig,
    /// Certificates.
    pub tls: TlsConfig,
    /// Which client identities hold which role.
    pub roles: RolesConfig,
    /// Sampling and spool.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Local logs.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// The erase of tenant storage on Terminate.
    #[serde(default)]
    pub erase: EraseConfig,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port of the mTLS gRPC listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The local status socket (Unix domain, mode 0600, root only).
    #[serde(default = "default_status_socket")]
    pub status_socket: PathBuf,
    /// Connection caps and deadlines.
    #[serde(default)]
    pub limits: LimitsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            status_socket: default_status_socket(),
            limits: LimitsConfig::default(),
        }
    }
}

/// `[server.limits]`: what one client, or all of them, can hold. Every key is optional; zero
/// is refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Connections held at once, counted from TCP accept (handshakes in progress count). The
    /// agent lowers it at start when the open-file limit leaves too little headroom.
    #[serde(default = "default_max_connections")]
    pub max_connections: NonZeroU32,
    /// Connections held at once from one client IP address.
    #[serde(default = "default_max_connections_per_peer")]
    pub max_connections_per_peer: NonZeroU32,
    /// From TCP accept to the first request (TLS handshake and HTTP/2 preface included).
    #[serde(default = "default_first_request_timeout_ms")]
    pub first_request_timeout_ms: NonZeroU64,
    /// A connection with no open stream (answering keepalive pings does not count) is closed
    /// after this long.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: NonZeroU64,
    /// Connections held at once on the local status socket.
    #[serde(default = "default_status_max_connections")]
    pub status_max_connections: NonZeroU32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_connections_per_peer: default_max_connections_per_peer(),
            first_request_timeout_ms: default_first_request_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            status_max_connections: default_status_max_connections(),
        }
    }
}

fn default_max_connections() -> NonZeroU32 {
    NonZeroU32::new(1024).unwrap_or(NonZeroU32::MIN)
}
fn default_max_connections_per_peer() -> NonZeroU32 {
    NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN)
}
fn default_first_request_timeout_ms() -> NonZeroU64 {
    NonZeroU64::new(10_000).unwrap_or(NonZeroU64::MIN)
}
fn default_idle_timeout_ms() -> NonZeroU64 {
    NonZeroU64::new(300_000).unwrap_or(NonZeroU64::MIN)
}
fn default_status_max_connections() -> NonZeroU32 {
    NonZeroU32::new(16).unwrap_or(NonZeroU32::MIN)
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(defaults::STATE_DIR)
}

fn default_listen() -> SocketAddr {
    // The constant is a literal socket address; parsing it cannot fail.
    defaults::LISTEN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 7443)))
}

fn default_status_socket() -> PathBuf {
    PathBuf::from(defaults::STATUS_SOCKET)
}

/// `[tls]`: the agent's identity and the CA its clients must chain to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the agent, leaf first. Its SPIFFE URI SAN names the host.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key of the agent (mode 0600). Also signs erase certificates.
    pub key: PathBuf,
    /// PEM fleet CA that client certificates must chain to.
    pub client_ca: PathBuf,
}

/// `[roles]`: client URI SANs (exact match) allowed each role.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolesConfig {
    /// URIs of controllers: every RPC.
    pub controller: Vec<String>,
    /// URIs of observers: read-only RPCs.
    #[serde(default)]
    pub observer: Vec<String>,
}

/// `[telemetry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Sampling interval in milliseconds (at least 100).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// The on-disk spool.
    #[serde(default)]
    pub spool: SpoolSection,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            interval_ms: default_interval_ms(),
            spool: SpoolSection::default(),
        }
    }
}

/// `[telemetry.spool]`: every key optional; see [`SpoolConfig`] for the defaults and limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSection {
    /// Segment directory (default `<state_dir>/spool`).
    pub dir: Option<PathBuf>,
    /// Cap on all segments' bytes (default 24 MiB: a day at 1 Hz with margin).
    pub max_bytes: Option<u64>,
    /// Segment size.
    pub segment_bytes: Option<u64>,
    /// Longest wait for a record's fsync, ms.
    pub fsync_interval_ms: Option<u64>,
}

fn default_interval_ms() -> u64 {
    1000
}

/// `[logging]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// Directory of the JSON-lines log file `agent.log` and its rotations.
    #[serde(default = "default_log_dir")]
    pub dir: PathBuf,
    /// Level filter (`error`, `warn`, `info`, `debug`, `trace`, or a `tracing` filter).
    #[serde(default = "default_level")]
    pub level: String,
    /// Rotate `agent.log` when it reaches this size.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Rotated files kept (`agent.log.1` … `agent.log.N`).
    #[serde(default = "default_max_files")]
    pub max_files: u32,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            dir: default_log_dir(),
            level: default_level(),
            max_file_bytes: default_max_file_bytes(),
            max_files: default_max_files(),
        }
    }
}

fn default_log_dir() -> PathBuf {
    PathBuf::from(defaults::LOG_DIR)
}
fn default_level() -> String {
    "info".to_owned()
}
fn default_max_file_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_max_files() -> u32 {
    5
}

/// The configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TOML did not parse or did not match the schema.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong and what is expected.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("{path}:{line}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the key (0 when the key is absent).
        line: usize,
        /// Dotted key, e.g. `telemetry.interval_ms`.
        key: String,
        /// What is expected.
        message: String,
    },
}

impl Config {
    /// The spool settings, defaults filled in.
    pub fn spool_config(&self) -> SpoolConfig {
        let s = &self.telemetry.spool;
        let mut c = SpoolConfig::new(
            s.dir
                .clone()
                .unwrap_or_else(|| self.state_dir.join("spool")),
        );
        if let Some(v) = s.max_bytes {
            c.max_bytes = v;
        }
        if let Some(v) = s.segment_bytes {
            c.segment_bytes = v;
        }
        if let Some(v) = s.fsync_interval_ms {
            c.fsync_interval = std::time::Duration::from_millis(v);
        }
        c
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates configuration text; `path` is only used in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            let message = match key_at_line(text, line) {
                Some(key) => format!("key `{key}`: {}", e.message().trim()),
                None => e.message().trim().to_owned(),
            };
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message,
            }
        })?;
        let mut config = config;
        // The erase journal lives under the agent's state directory unless set on its own.
        let sets_erase_dir = text
            .parse::<toml::Table>()
            .ok()
            .and_then(|t| t.get("erase").and_then(|e| e.get("state_dir")).map(|_| ()))
            .is_some();
        if !sets_erase_dir {
            config.erase.state_dir = config.state_dir.join("erase");
        }
        config.validate(path, text)?;
        Ok(config)
    }

    fn validate(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: key_line(text, key),
            key: key.to_owned(),
            message,
        };
        if self.telemetry.interval_ms < 100 {
            return Err(invalid(
                "telemetry.interval_ms",
                format!(
                    "{} is too short: use at least 100 (milliseconds)",
                    self.telemetry.interval_ms
                ),
            ));
        }
        for (key, p) in [
            ("state_dir", &self.state_dir),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("tls.client_ca", &self.tls.client_ca),
            ("logging.dir", &self.logging.dir),
            ("server.status_socket", &self.server.status_socket),
        ] {
            if !p.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{} is relative: use an absolute path", p.display()),
                ));
            }
        }
        if self.roles.controller.is_empty() {
            return Err(invalid(
                "roles.controller",
                "no controller identity: list at least one URI SAN, e.g. \"spiffe://fleet.example/controller\"".to_owned(),
            ));
        }
        for (key, uris) in [
            ("roles.controller", &self.roles.controller),
            ("roles.observer", &self.roles.observer),
        ] {
            for uri in uris.iter() {
                if !uri.contains("://") {
                    return Err(invalid(
                        key,
                        format!(
                            "{uri:?} is not a URI: use e.g. \"spiffe://fleet.example/controller\""
                        ),
                    ));
                }
            }
        }
        if let Some(uri) = self
            .roles
            .controller
            .iter()
            .find(|u| self.roles.observer.contains(u))
        {
            return Err(invalid(
                "roles.observer",
                format!("{uri:?} is listed as both controller and observer: keep it in one list"),
            ));
        }
        if self.logging.max_files == 0 || self.logging.max_file_bytes < 64 * 1024 {
            return Err(invalid(
                "logging.max_file_bytes",
                "keep at least one rotated file and at least 65536 bytes per file".to_owned(),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.logging.level).is_err() {
            return Err(invalid(
                "logging.level",
                format!(
                    "{:?} is not a level: use error, warn, info, debug or trace",
                    self.logging.level
                ),
            ));
        }
        if let Err(e) = self.erase.validate() {
            let message = e.to_string();
            let key = message
                .split([' ', '[', ':'])
                .next()
                .filter(|k| k.starts_with("erase."))
                .unwrap_or("erase")
                .to_owned();
            return Err(invalid(&key, message));
        }
        let spool = self.spool_config();
        if !spool.dir.is_absolute() {
            return Err(invalid(
                "telemetry.spool.dir",
                format!("{} is relative: use an absolute path", spool.dir.display()),
            ));
        }
        match spool.validate() {
            Ok(()) => {}
            Err(SpoolError::InvalidConfig { field, reason }) => {
                let key = if field == "fsync_interval" {
                    "fsync_interval_ms"
                } else {
                    field
                };
                return Err(invalid(&format!("telemetry.spool.{key}"), reason));
            }
            Err(other) => return Err(invalid("telemetry.spool", other.to_string())),
        }
        Ok(())
    }
}

/// 1-based (line, column) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// The dotted key assigned on a 1-based line (`table.key`), if the line is an assignment.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.starts_with('[') {
            table = l.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
        }
        if i + 1 == line {
            let (k, _) = l.split_once('=')?;
            let k = k.trim();
            return Some(if table.is_empty() {
                k.to_owned()
            } else {
                format!("{table}.{k}")
            });
        }
    }
    None
}

/// 1-based line where the last segment of a dotted key is assigned (0 when absent), looking
/// inside its table when the file has one.
fn key_line(text: &str, dotted: &str) -> usize {
    let (table, leaf) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut in_table = table.is_empty();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            let name = line.trim_matches(|c| c == '[' || c == ']').trim();
            in_table = name == table || table.is_empty();
            continue;
        }
        if in_table
            && let Some((k, _)) = line.split_once('=')
            && k.trim() == leaf
        {
            return i + 1;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:7443"

[tls]
cert = "/etc/jex-agent/agent.pem"
key = "/etc/jex-agent/agent.key"
client_ca = "/etc/jex-agent/ca.pem"

[roles]
controller = ["spiffe://fleet.example/controller"]
observer = ["spiffe://fleet.example/observer"]

[telemetry]
interval_ms = 500
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/jex-agent/agent.toml"), text)
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../launchd/agent.toml.example");
        let c = parse(text).expect("the example in launchd/ is valid");
        assert_eq!(c.state_dir, PathBuf::from(defaults::macos::STATE_DIR));
        assert_eq!(c.logging.dir, PathBuf::from(defaults::macos::LOG_DIR));
        assert_eq!(
            c.erase.state_dir,
            PathBuf::from(defaults::macos::STATE_DIR).join("erase")
        );
        assert_eq!(
            c.spool_config().dir,
            PathBuf::from(defaults::macos::STATE_DIR).join("spool")
        );
    }

    #[test]
    fn parses_a_minimal_config_with_defaults() {
        let c = parse(GOOD).expect("valid config");
        assert_eq!(c.server.listen.port(), 7443);
        assert_eq!(c.telemetry.interval_ms, 500);
        assert_eq!(c.logging.dir, PathBuf::from(defaults::LOG_DIR));
        assert_eq!(
            c.roles.observer,
            vec!["spiffe://fleet.example/observer".to_owned()]
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = GOOD.replace("interval_ms = 500", "interval_ms = 500\nintervall = 3");
        let err = parse(&text).expect_err("unknown key refused").to_string();
        assert!(
            err.starts_with(
                "/etc/jex-agent/agent.toml:16:1: key `telemetry.intervall`: unknown field"
            ),
            "{err}"
        );
        assert!(err.contains("expected `interval_ms`"), "{err}");
    }

    #[test]
    fn wrong_type_says_what_is_expected() {
        let text = GOOD.replace("interval_ms = 500", "interval_ms = \"fast\"");
        let err = parse(&text).expect_err("wrong type refused").to_string();
        assert!(
            err.starts_with("/etc/jex-agent/agent.toml:15:15: key `telemetry.interval_ms`:"),
            "{err}"
        );
        assert!(err.contains("expected u64"), "{err}");
    }

    #[test]
    fn too_short_interval_is_refused_with_its_line() {
        let text = GOOD.replace("interval_ms = 500", "interval_ms = 10");
        let err = parse(&text)
            .expect_err("short interval refused")
            .to_string();
        assert_eq!(
            err,
            "/etc/jex-agent/agent.toml:15: key `telemetry.interval_ms`: 10 is too short: use at least 100 (milliseconds)"
        );
    }

    #[test]
    fn relative_paths_are_refused() {
        let text = GOOD.replace("/etc/jex-agent/agent.key", "agent.key");
        let err = parse(&text)
            .expect_err("relative key path refused")
            .to_string();
        assert!(err.contains(":7: key `tls.key`"), "{err}");
        assert!(err.contains("absolute"), "{err}");
    }

    #[test]
    fn missing_table_is_named() {
        let text = GOOD.replace("[roles]", "[rolez]");
        let err = parse(&text).expect_err("missing roles refused").to_string();
        assert!(err.contains("rolez") || err.contains("roles"), "{err}");
    }

    #[test]
    fn a_uri_in_both_roles_is_refused() {
        let text = GOOD.replace("fleet.example/observer", "fleet.example/controller");
        let err = parse(&text)
            .expect_err("duplicate role refused")
            .to_string();
        assert!(err.contains("both controller and observer"), "{err}");
    }
}
