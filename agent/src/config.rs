//! The agent's configuration: one TOML file, unknown keys refused, every error naming the file,
//! the line and the key, and saying what is expected.
//!
//! The file is read into a private form where every setting that validation can refuse is a
//! `toml::Spanned` (its byte offsets in the file), then validated into [`Config`]. A refused value
//! is reported at its own line; a missing key at the header of the table that should hold it
//! (line 1 for a top-level one). TOML and schema errors (syntax, unknown key, wrong type) carry
//! the parser's byte offset, and their key is the one the parser's own tree of the document
//! holds at that offset.
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
//!
//! [metrics]
//! listen = "127.0.0.1:9469"   # the default; beyond loopback only with tls = true
//!
//! [health]
//! certificate_warning_days = 14   # CERTIFICATE_EXPIRES_SOON this long before notAfter
//! event_hold_secs = 600           # CLOCK_STEPPED, LOG_LINES_DROPPED stay this long
//! ```
//!
//! Relative paths are refused: the daemon never depends on its working directory.
//!
//! Some settings can only be checked against the host: the TLS files load, the erase targets
//! exist and are not the system's own disk, the listen addresses (gRPC and metrics) are free. `jex-agent run` and
//! `jex-agent check-config` check them before anything starts (see `app::preflight`); the
//! [`Source`] kept with the configuration gives their errors the same file, line and key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use jex_erase::EraseConfig;
use jex_erase::config::EraseSection;
use jex_spool::{SpoolConfig, SpoolError};

/// Where the agent keeps things by default on this OS (chosen in the platform crate).
pub use jex_platform::paths as defaults;

/// The whole configuration file, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the agent keeps its state (spool, erase journal, certificates); mode 0700.
    pub state_dir: PathBuf,
    /// The gRPC listener.
    pub server: ServerConfig,
    /// Certificates.
    pub tls: TlsConfig,
    /// Which client identities hold which role.
    pub roles: RolesConfig,
    /// Sampling and spool.
    pub telemetry: TelemetryConfig,
    /// Local logs.
    pub logging: LoggingConfig,
    /// The erase of tenant storage on Terminate.
    pub erase: EraseConfig,
    /// The Prometheus `/metrics` endpoint.
    pub metrics: MetricsConfig,
    /// When the host's conditions are raised and cleared.
    pub health: HealthConfig,
    /// Where it was read from, for errors found after parsing.
    pub source: Source,
}

/// Where a configuration was read from: the file, and the line of each setting that is checked
/// against the host after parsing (`server.listen`, `tls.cert`, `tls.key`, `tls.client_ca`,
/// `metrics.listen`, `erase.targets[N].device`), so that those errors name the file, the line and the key too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// The configuration file.
    pub path: PathBuf,
    /// Line of each recorded key: where it is written, or the header of the table that would
    /// hold it when it is left out to its default.
    lines: BTreeMap<String, usize>,
}

impl Source {
    /// Where `key` is: its line, or line 1 when it was not recorded.
    pub fn place(&self, key: &str) -> Place {
        Place {
            path: self.path.clone(),
            line: self.lines.get(key).copied().unwrap_or(1),
        }
    }

    /// A refusal of `key` found after parsing; `also` is another key the refusal is about,
    /// whose line is added to the message.
    pub fn invalid(&self, key: &str, also: Option<&str>, message: String) -> ConfigError {
        let message = match also {
            Some(other) => format!(
                "{message} (`{other}` is at line {})",
                self.place(other).line
            ),
            None => message,
        };
        let Place { path, line } = self.place(key);
        ConfigError::Invalid {
            path,
            line,
            key: key.to_owned(),
            message,
        }
    }
}

/// A line of the configuration file, shown as `path:line`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The file.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// `[server]`
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address and port of the mTLS gRPC listener.
    pub listen: SocketAddr,
    /// The local status socket (Unix domain, mode 0600, root only).
    pub status_socket: PathBuf,
    /// Connection caps and deadlines.
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
    /// Connections held at once from one client IP address (counted apart for connections
    /// with a verified client certificate and for the others).
    #[serde(default = "default_max_connections_per_peer")]
    pub max_connections_per_peer: NonZeroU32,
    /// The share of `max_connections` for TLS handshakes in progress (at most a third of it);
    /// when it is full, a new connection takes the place of the oldest handshake of the
    /// address holding the most.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: NonZeroU32,
    /// The share of `max_connections` for connections that finished their handshake without a
    /// client certificate (at most a sixth of it), full the same way.
    #[serde(default = "default_max_unverified")]
    pub max_unverified: NonZeroU32,
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
            max_handshakes: default_max_handshakes(),
            max_unverified: default_max_unverified(),
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
fn default_max_handshakes() -> NonZeroU32 {
    NonZeroU32::new(256).unwrap_or(NonZeroU32::MIN)
}
fn default_max_unverified() -> NonZeroU32 {
    NonZeroU32::new(128).unwrap_or(NonZeroU32::MIN)
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

/// `[metrics]`: the Prometheus `/metrics` endpoint, on a listener of its own. It holds host
/// aggregates and agent health only, never anything of the tenant's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Whether the endpoint is served.
    pub enabled: bool,
    /// Its address; one beyond loopback needs `tls`.
    pub listen: SocketAddr,
    /// HTTPS with client certificates from the fleet CA (the `[tls]` material), for the
    /// observer and controller roles; plain HTTP without it.
    pub tls: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_metrics_listen(),
            tls: false,
        }
    }
}

/// The default metrics address: loopback only, port 9469.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9469);

fn default_metrics_listen() -> SocketAddr {
    DEFAULT_METRICS_LISTEN
}

/// `[health]`: when the conditions `GetHost`, `jex-agent status`, `/metrics` and
/// `grpc.health.v1` report are raised and cleared (see `crate::health`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// `CERTIFICATE_EXPIRES_SOON` is raised this many days before the agent's certificate or
    /// the fleet CA expires.
    pub certificate_warning_days: u32,
    /// How long an event condition (`CLOCK_STEPPED`, `LOG_LINES_DROPPED`) stays raised after
    /// its last event, in seconds.
    pub event_hold_secs: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            certificate_warning_days: DEFAULT_CERTIFICATE_WARNING_DAYS,
            event_hold_secs: DEFAULT_EVENT_HOLD_SECS,
        }
    }
}

/// Two weeks: time for a certificate manager, or a person, to renew.
pub const DEFAULT_CERTIFICATE_WARNING_DAYS: u32 = 14;

/// Ten minutes: longer than a scrape interval and an alert's `for:`, so a one-off event is seen.
pub const DEFAULT_EVENT_HOLD_SECS: u32 = 600;

/// `[tls]`: the agent's identity and the CA its clients must chain to.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain of the agent, leaf first. Its SPIFFE URI SAN names the host.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key of the agent (mode 0600). Also signs erase certificates.
    pub key: PathBuf,
    /// PEM fleet CA that client certificates must chain to.
    pub client_ca: PathBuf,
}

/// `[roles]`: client URI SANs (exact match) allowed each role.
#[derive(Debug, Clone)]
pub struct RolesConfig {
    /// URIs of controllers: every RPC.
    pub controller: Vec<String>,
    /// URIs of observers: read-only RPCs.
    pub observer: Vec<String>,
}

/// `[telemetry]`
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Sampling interval in milliseconds (at least 100).
    pub interval_ms: u64,
    /// The on-disk spool.
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
#[derive(Debug, Clone, Default)]
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
#[derive(Debug, Clone)]
pub struct LoggingConfig {
    /// Directory of the JSON-lines log file `agent.log` and its rotations.
    pub dir: PathBuf,
    /// Level filter (`error`, `warn`, `info`, `debug`, `trace`, or a `tracing` filter).
    pub level: String,
    /// Rotate `agent.log` when it reaches this size.
    pub max_file_bytes: u64,
    /// Rotated files kept (`agent.log.1` … `agent.log.N`).
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
    #[error("{}:{line}:{column}: {}{message}", path.display(), KeyPrefix(key.as_deref()))]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// Dotted key at that place (`telemetry.interval_ms`, `erase.targets[0].device`);
        /// `None` when no key is there (a syntax error such as a broken table header).
        key: Option<String>,
        /// What is wrong and what is expected.
        message: String,
    },
    /// A value parsed but is not acceptable, or a required key is missing.
    #[error("{path}:{line}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the value, or of the header of the table that should hold a missing
        /// key (1 for a top-level one).
        line: usize,
        /// Dotted key, e.g. `telemetry.interval_ms`.
        key: String,
        /// What is expected.
        message: String,
    },
}

/// `key `…`: ` when there is a key.
struct KeyPrefix<'a>(Option<&'a str>);

impl std::fmt::Display for KeyPrefix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(key) => write!(f, "key `{key}`: "),
            None => Ok(()),
        }
    }
}

impl ConfigError {
    /// The TOML of `text` (the file at `path`) did not parse or did not match the schema: the
    /// line, column and dotted key of the place (also for the relay's configuration).
    pub fn from_toml(path: &Path, text: &str, e: &toml::de::Error) -> Self {
        let offset = e.span().map_or(0, |s| s.start);
        let (line, column) = line_col(text, offset);
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            column,
            key: key_at(text, offset),
            message: e.message().trim().to_owned(),
        }
    }

    /// A setting of `text` (the file at `path`) was refused: its line, and the line of the
    /// other setting the refusal is about (also for the relay's configuration).
    pub fn from_invalid(path: &Path, text: &str, e: Invalid) -> Self {
        let line = |span: &Range<usize>| line_col(text, span.start).0;
        ConfigError::Invalid {
            path: path.to_owned(),
            line: line(&e.span),
            message: match e.also {
                Some((other, span)) => {
                    format!("{} (`{other}` is at line {})", e.message, line(&span))
                }
                None => e.message,
            },
            key: e.key,
        }
    }
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
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))?;
        let line = |span: &Range<usize>| line_col(text, span.start).0;
        let (mut config, places) = raw
            .validate()
            .map_err(|e| ConfigError::from_invalid(path, text, e))?;
        config.source = Source {
            path: path.to_owned(),
            lines: places
                .into_iter()
                .map(|(key, span)| (key, line(&span)))
                .collect(),
        };
        Ok(config)
    }
}

/// The file as written: every setting optional, and [`Spanned`] where validation can refuse
/// it, so that a refusal names its line. Tables are spanned too: a missing key is reported at
/// the header of its table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<Spanned<PathBuf>>,
    server: Option<Spanned<RawServer>>,
    tls: Option<Spanned<RawTls>>,
    roles: Option<Spanned<RawRoles>>,
    telemetry: Option<Spanned<RawTelemetry>>,
    logging: Option<Spanned<RawLogging>>,
    erase: Option<Spanned<EraseSection>>,
    metrics: Option<Spanned<RawMetrics>>,
    health: Option<Spanned<RawHealth>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    certificate_warning_days: Option<Spanned<u32>>,
    event_hold_secs: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    enabled: Option<Spanned<bool>>,
    listen: Option<Spanned<SocketAddr>>,
    tls: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<SocketAddr>>,
    status_socket: Option<Spanned<PathBuf>>,
    limits: Option<LimitsConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    client_ca: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoles {
    controller: Option<Spanned<Vec<Spanned<String>>>>,
    observer: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    interval_ms: Option<Spanned<u64>>,
    spool: Option<Spanned<RawSpool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    dir: Option<Spanned<PathBuf>>,
    max_bytes: Option<Spanned<u64>>,
    segment_bytes: Option<Spanned<u64>>,
    fsync_interval_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    dir: Option<Spanned<PathBuf>>,
    level: Option<Spanned<String>>,
    max_file_bytes: Option<Spanned<u64>>,
    max_files: Option<Spanned<u32>>,
}

/// The top-level table has no header: its missing keys are reported at line 1.
const ROOT: Range<usize> = 0..0;

/// A refused setting, before its line is worked out ([`ConfigError::from_invalid`]); also for
/// the relay's configuration.
#[derive(Debug)]
pub struct Invalid {
    /// Where the value is (or the header of the table that should hold a missing key).
    pub span: Range<usize>,
    /// Dotted key.
    pub key: String,
    /// What is expected.
    pub message: String,
    /// Another setting the refusal is about, and where it is.
    pub also: Option<(String, Range<usize>)>,
}

/// A refusal of `key` at `span`.
pub fn invalid(span: Range<usize>, key: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        span,
        key: key.into(),
        message: message.into(),
        also: None,
    }
}

/// Settings checked against the host after parsing, and where each is (see [`Source`]).
type Places = Vec<(String, Range<usize>)>;

/// A setting, or its default placed at the header of its table when it is left out.
fn or_default<T>(
    written: Option<Spanned<T>>,
    table: &Range<usize>,
    default: impl FnOnce() -> T,
) -> Spanned<T> {
    written.unwrap_or_else(|| Spanned::new(table.clone(), default()))
}

/// A setting that must be written.
fn required<T>(
    written: Option<Spanned<T>>,
    table: &Range<usize>,
    key: &str,
    expected: &str,
) -> Result<Spanned<T>, Invalid> {
    written.ok_or_else(|| invalid(table.clone(), key, format!("missing: set it to {expected}")))
}

/// A table that may be left out, and where it is (its parent when left out).
fn table<T: Default>(written: Option<Spanned<T>>, parent: &Range<usize>) -> (T, Range<usize>) {
    match written {
        Some(t) => {
            let span = t.span();
            (t.into_inner(), span)
        }
        None => (T::default(), parent.clone()),
    }
}

/// A table that must be written, and where it is.
fn required_table<T>(
    written: Option<Spanned<T>>,
    key: &str,
    message: &str,
) -> Result<(T, Range<usize>), Invalid> {
    let t = written.ok_or_else(|| invalid(ROOT, key, message))?;
    let span = t.span();
    Ok((t.into_inner(), span))
}

fn span_of<T>(written: &Option<Spanned<T>>) -> Option<Range<usize>> {
    written.as_ref().map(Spanned::span)
}

fn value<T: Clone>(written: &Option<Spanned<T>>) -> Option<T> {
    written.as_ref().map(|s| s.get_ref().clone())
}

impl RawConfig {
    /// Fills in the defaults and checks every setting; the first problem found is returned.
    /// Also returns where the settings checked against the host later are.
    fn validate(self) -> Result<(Config, Places), Invalid> {
        let state_dir = or_default(self.state_dir, &ROOT, default_state_dir);
        let (server, server_at) = table(self.server, &ROOT);
        let status_socket = or_default(server.status_socket, &server_at, default_status_socket);
        let (tls, tls_at) = required_table(
            self.tls,
            "tls",
            "missing: add a [tls] table with cert, key and client_ca",
        )?;
        let cert = required(
            tls.cert,
            &tls_at,
            "tls.cert",
            "the agent's PEM certificate chain, leaf first",
        )?;
        let key = required(
            tls.key,
            &tls_at,
            "tls.key",
            "the agent's PEM PKCS#8 private key",
        )?;
        let client_ca = required(
            tls.client_ca,
            &tls_at,
            "tls.client_ca",
            "the PEM fleet CA client certificates chain to",
        )?;
        let (roles, roles_at) = required_table(
            self.roles,
            "roles",
            "missing: add a [roles] table with controller = [\"spiffe://fleet.example/controller\"]",
        )?;
        let controller = required(
            roles.controller,
            &roles_at,
            "roles.controller",
            "the controllers' URI SANs, e.g. [\"spiffe://fleet.example/controller\"]",
        )?;
        let observer = or_default(roles.observer, &roles_at, Vec::new);
        let (telemetry, telemetry_at) = table(self.telemetry, &ROOT);
        let interval_ms = or_default(telemetry.interval_ms, &telemetry_at, default_interval_ms);
        let (spool, spool_at) = table(telemetry.spool, &telemetry_at);
        let (logging, logging_at) = table(self.logging, &ROOT);
        let log_dir = or_default(logging.dir, &logging_at, default_log_dir);
        let level = or_default(logging.level, &logging_at, default_level);
        let max_file_bytes =
            or_default(logging.max_file_bytes, &logging_at, default_max_file_bytes);
        let max_files = or_default(logging.max_files, &logging_at, default_max_files);

        if *interval_ms.get_ref() < 100 {
            return Err(invalid(
                interval_ms.span(),
                "telemetry.interval_ms",
                format!(
                    "{} is too short: use at least 100 (milliseconds)",
                    interval_ms.get_ref()
                ),
            ));
        }
        for (key, p) in [
            ("state_dir", &state_dir),
            ("tls.cert", &cert),
            ("tls.key", &key),
            ("tls.client_ca", &client_ca),
            ("logging.dir", &log_dir),
            ("server.status_socket", &status_socket),
        ] {
            if !p.get_ref().is_absolute() {
                return Err(invalid(
                    p.span(),
                    key,
                    format!(
                        "{} is relative: use an absolute path",
                        p.get_ref().display()
                    ),
                ));
            }
        }
        if controller.get_ref().is_empty() {
            return Err(invalid(
                controller.span(),
                "roles.controller",
                "no controller identity: list at least one URI SAN, e.g. \"spiffe://fleet.example/controller\"",
            ));
        }
        for (key, uris) in [
            ("roles.controller", &controller),
            ("roles.observer", &observer),
        ] {
            if let Some(uri) = uris.get_ref().iter().find(|u| !u.get_ref().contains("://")) {
                return Err(invalid(
                    uri.span(),
                    key,
                    format!(
                        "{:?} is not a URI: use e.g. \"spiffe://fleet.example/controller\"",
                        uri.get_ref()
                    ),
                ));
            }
        }
        if let Some(uri) = observer
            .get_ref()
            .iter()
            .find(|o| controller.get_ref().contains(o))
        {
            return Err(invalid(
                uri.span(),
                "roles.observer",
                format!(
                    "{:?} is listed as both controller and observer: keep it in one list",
                    uri.get_ref()
                ),
            ));
        }
        if *max_files.get_ref() == 0 {
            return Err(invalid(
                max_files.span(),
                "logging.max_files",
                "0 keeps no rotated file: use at least 1",
            ));
        }
        if *max_file_bytes.get_ref() < 64 * 1024 {
            return Err(invalid(
                max_file_bytes.span(),
                "logging.max_file_bytes",
                format!(
                    "{} is too small: use at least 65536 (bytes)",
                    max_file_bytes.get_ref()
                ),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(level.get_ref()).is_err() {
            return Err(invalid(
                level.span(),
                "logging.level",
                format!(
                    "{:?} is not a level: use error, warn, info, debug or trace",
                    level.get_ref()
                ),
            ));
        }
        let (metrics, metrics_at) = table(self.metrics, &ROOT);
        let metrics_listen = or_default(metrics.listen, &metrics_at, default_metrics_listen);
        let metrics_enabled = or_default(metrics.enabled, &metrics_at, || true);
        let metrics_tls = or_default(metrics.tls, &metrics_at, || false);
        if *metrics_enabled.get_ref()
            && !*metrics_tls.get_ref()
            && !metrics_listen.get_ref().ip().is_loopback()
        {
            return Err(Invalid {
                also: Some(("metrics.tls".to_owned(), metrics_tls.span())),
                ..invalid(
                    metrics_listen.span(),
                    "metrics.listen",
                    format!(
                        "{} is not a loopback address: serving metrics beyond this host needs `tls = true` (HTTPS with client certificates from the fleet CA), or listen on 127.0.0.1 or [::1]",
                        metrics_listen.get_ref()
                    ),
                )
            });
        }
        let (health, health_at) = table(self.health, &ROOT);
        let warning_days = or_default(health.certificate_warning_days, &health_at, || {
            DEFAULT_CERTIFICATE_WARNING_DAYS
        });
        let event_hold = or_default(health.event_hold_secs, &health_at, || {
            DEFAULT_EVENT_HOLD_SECS
        });
        if !(1..=365).contains(warning_days.get_ref()) {
            return Err(invalid(
                warning_days.span(),
                "health.certificate_warning_days",
                format!(
                    "{} is out of range: use 1 to 365 (days before expiry)",
                    warning_days.get_ref()
                ),
            ));
        }
        if !(1..=86_400).contains(event_hold.get_ref()) {
            return Err(invalid(
                event_hold.span(),
                "health.event_hold_secs",
                format!(
                    "{} is out of range: use 1 to 86400 (seconds)",
                    event_hold.get_ref()
                ),
            ));
        }
        let mut places: Places = vec![
            (
                "server.listen".to_owned(),
                span_of(&server.listen).unwrap_or_else(|| server_at.clone()),
            ),
            ("tls.cert".to_owned(), cert.span()),
            ("tls.key".to_owned(), key.span()),
            ("tls.client_ca".to_owned(), client_ca.span()),
            ("metrics.listen".to_owned(), metrics_listen.span()),
        ];
        // The erase journal lives under the agent's state directory unless set on its own.
        let (erase, erase_at) = table(self.erase, &ROOT);
        let device_places: Places = erase
            .targets
            .iter()
            .enumerate()
            .map(|(index, target)| {
                let span = span_of(&target.get_ref().device).unwrap_or_else(|| target.span());
                (format!("erase.targets[{index}].device"), span)
            })
            .collect();
        let erase = erase
            .into_config(erase_at, state_dir.get_ref().join("erase"))
            .map_err(|e| {
                let also = e.error.other_setting().and_then(|other| {
                    let other = other.to_string();
                    let span = device_places.iter().find(|(k, _)| *k == other)?.1.clone();
                    Some((other, span))
                });
                Invalid {
                    also,
                    ..invalid(e.span, e.error.setting().to_string(), e.error.to_string())
                }
            })?;
        places.extend(device_places);

        let spool_place = |field: &str| {
            match field {
                "dir" => span_of(&spool.dir),
                "max_bytes" => span_of(&spool.max_bytes),
                "segment_bytes" => span_of(&spool.segment_bytes),
                "fsync_interval" | "fsync_interval_ms" => span_of(&spool.fsync_interval_ms),
                _ => None,
            }
            .unwrap_or_else(|| spool_at.clone())
        };
        let config = Config {
            state_dir: state_dir.get_ref().clone(),
            server: ServerConfig {
                listen: server
                    .listen
                    .map_or_else(default_listen, Spanned::into_inner),
                status_socket: status_socket.into_inner(),
                limits: server.limits.clone().unwrap_or_default(),
            },
            tls: TlsConfig {
                cert: cert.into_inner(),
                key: key.into_inner(),
                client_ca: client_ca.into_inner(),
            },
            roles: RolesConfig {
                controller: controller
                    .into_inner()
                    .into_iter()
                    .map(Spanned::into_inner)
                    .collect(),
                observer: observer
                    .into_inner()
                    .into_iter()
                    .map(Spanned::into_inner)
                    .collect(),
            },
            telemetry: TelemetryConfig {
                interval_ms: interval_ms.into_inner(),
                spool: SpoolSection {
                    dir: value(&spool.dir),
                    max_bytes: value(&spool.max_bytes),
                    segment_bytes: value(&spool.segment_bytes),
                    fsync_interval_ms: value(&spool.fsync_interval_ms),
                },
            },
            logging: LoggingConfig {
                dir: log_dir.into_inner(),
                level: level.into_inner(),
                max_file_bytes: max_file_bytes.into_inner(),
                max_files: max_files.into_inner(),
            },
            erase,
            metrics: MetricsConfig {
                enabled: metrics_enabled.into_inner(),
                listen: metrics_listen.into_inner(),
                tls: metrics_tls.into_inner(),
            },
            health: HealthConfig {
                certificate_warning_days: warning_days.into_inner(),
                event_hold_secs: event_hold.into_inner(),
            },
            source: Source::default(),
        };
        let spool_config = config.spool_config();
        if !spool_config.dir.is_absolute() {
            return Err(invalid(
                spool_place("dir"),
                "telemetry.spool.dir",
                format!(
                    "{} is relative: use an absolute path",
                    spool_config.dir.display()
                ),
            ));
        }
        match spool_config.validate() {
            Ok(()) => Ok((config, places)),
            Err(SpoolError::InvalidConfig { field, reason }) => {
                let key = field
                    .strip_suffix("_interval")
                    .map_or(field.to_owned(), |f| format!("{f}_interval_ms"));
                Err(invalid(
                    spool_place(field),
                    format!("telemetry.spool.{key}"),
                    reason,
                ))
            }
            Err(other) => Err(invalid(spool_at, "telemetry.spool", other.to_string())),
        }
    }
}

/// 1-based (line, column) of a byte offset (also for the relay's configuration).
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// The dotted key (`telemetry.interval_ms`, `erase.targets[1].device`) whose key or value holds
/// byte `offset`, found in the TOML parser's own tree of the document. The parser builds the
/// tree even when the document has a syntax error; only keys that start before the error are
/// trusted then. `None` when no key holds the offset (e.g. a broken table header). Also for the
/// relay's configuration.
pub fn key_at(text: &str, offset: usize) -> Option<String> {
    let (root, _errors) = toml::de::DeTable::parse_recoverable(text);
    let mut found = None;
    for (k, v) in root.get_ref().iter() {
        visit_key(k, v, "", offset, &mut found);
    }
    found
}

/// Visits a key and its value; a child found later replaces its parent, so the deepest key wins.
fn visit_key(
    key: &Spanned<toml::de::DeString<'_>>,
    value: &Spanned<toml::de::DeValue<'_>>,
    parent: &str,
    offset: usize,
    found: &mut Option<String>,
) {
    if key.span().start > offset {
        return;
    }
    let path = if parent.is_empty() {
        key.get_ref().to_string()
    } else {
        format!("{parent}.{}", key.get_ref())
    };
    if holds(&key.span(), offset) {
        *found = Some(path.clone());
    }
    visit_value(value, &path, offset, found);
}

fn visit_value(
    value: &Spanned<toml::de::DeValue<'_>>,
    path: &str,
    offset: usize,
    found: &mut Option<String>,
) {
    if holds(&value.span(), offset) {
        *found = Some(path.to_owned());
    }
    match value.get_ref() {
        toml::de::DeValue::Table(table) => {
            for (k, v) in table.iter() {
                visit_key(k, v, path, offset, found);
            }
        }
        toml::de::DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                visit_value(item, &format!("{path}[{i}]"), offset, found);
            }
        }
        _ => {}
    }
}

/// Whether a span holds a byte offset (an empty span holds its own position).
fn holds(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || span.start == offset
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

    /// The line and key an error names, after checking it names the file.
    fn place(text: &str) -> (usize, String) {
        let err = parse(text).expect_err("refused");
        assert!(
            err.to_string().starts_with("/etc/jex-agent/agent.toml:"),
            "{err}"
        );
        match err {
            ConfigError::Invalid { line, key, .. } => (line, key),
            ConfigError::Parse { line, key, .. } => (line, key.expect("a key is named")),
            other => panic!("unexpected {other}"),
        }
    }

    /// GOOD with `extra` appended, and the 1-based line where `extra` starts.
    fn with_extra(extra: &str) -> (String, usize) {
        (format!("{GOOD}{extra}"), GOOD.lines().count() + 1)
    }

    #[test]
    fn a_missing_tls_table_is_named_not_the_first_key() {
        let text = "state_dir = \"/var/lib/jex-agent\"\n\n[roles]\ncontroller = [\"spiffe://fleet.example/controller\"]\n";
        let err = parse(text).expect_err("missing [tls] refused").to_string();
        assert_eq!(
            err,
            "/etc/jex-agent/agent.toml:1: key `tls`: missing: add a [tls] table with cert, key and client_ca"
        );
    }

    #[test]
    fn a_missing_key_is_placed_at_its_table_header() {
        let text = GOOD.replace("key = \"/etc/jex-agent/agent.key\"", "");
        assert_eq!(place(&text), (5, "tls.key".to_owned()));
        let text = GOOD.replace("controller = [\"spiffe://fleet.example/controller\"]", "");
        assert_eq!(place(&text), (10, "roles.controller".to_owned()));
    }

    #[test]
    fn parse_errors_name_line_and_key() {
        // A syntax error inside a value.
        let text = GOOD.replace("interval_ms = 500", "interval_ms = 5 00");
        assert_eq!(place(&text), (15, "telemetry.interval_ms".to_owned()));
        // A syntax error outside any key: line and column, and no key made up.
        let text = GOOD.replace("[telemetry]", "[telemetry");
        let err = parse(&text).expect_err("broken header").to_string();
        assert_eq!(
            err,
            "/etc/jex-agent/agent.toml:14:11: unclosed table, expected `]`"
        );
        // A value of the wrong form.
        let text = GOOD.replace("127.0.0.1:7443", "localhost");
        assert_eq!(place(&text), (3, "server.listen".to_owned()));
        // A wrong type inside an array.
        let text = GOOD.replace("[\"spiffe://fleet.example/observer\"]", "[7]");
        assert_eq!(place(&text), (12, "roles.observer[0]".to_owned()));
    }

    #[test]
    fn validation_errors_name_the_line_of_the_value() {
        let text = GOOD.replace("fleet.example/observer", "fleet.example/controller");
        assert_eq!(place(&text), (12, "roles.observer".to_owned()));
        let text = GOOD.replace("\"spiffe://fleet.example/observer\"", "\"observer\"");
        assert_eq!(place(&text), (12, "roles.observer".to_owned()));
        let text = GOOD.replace(
            "controller = [\"spiffe://fleet.example/controller\"]",
            "controller = []",
        );
        assert_eq!(place(&text), (11, "roles.controller".to_owned()));
        for (extra, key) in [
            ("[logging]\nmax_files = 0\n", "logging.max_files"),
            (
                "[logging]\nmax_file_bytes = 1024\n",
                "logging.max_file_bytes",
            ),
            ("[logging]\nlevel = \"loud=[\"\n", "logging.level"),
            ("[logging]\ndir = \"logs\"\n", "logging.dir"),
            (
                "[telemetry.spool]\nsegment_bytes = 1\n",
                "telemetry.spool.segment_bytes",
            ),
            (
                "[telemetry.spool]\nfsync_interval_ms = 3600000\n",
                "telemetry.spool.fsync_interval_ms",
            ),
            (
                "[telemetry.spool]\ndir = \"spool\"\n",
                "telemetry.spool.dir",
            ),
        ] {
            let (text, at) = with_extra(extra);
            assert_eq!(place(&text), (at + 1, key.to_owned()), "{extra}");
        }
    }

    #[test]
    fn erase_errors_name_the_line_and_key_of_the_target() {
        let uuid = "9f5d0c8e-3a1b-4c2d-8e7f-0a1b2c3d4e5f";
        let target = |name: &str, device: &str| {
            format!(
                "[[erase.targets]]\nname = \"{name}\"\nbackend = \"luks2\"\ndevice = \"{device}\"\nluks_uuid = \"{uuid}\"\n"
            )
        };
        // A setting of [erase] itself, on its line.
        let (text, at) = with_extra("[erase]\nchunk_bytes = 1000\n");
        assert_eq!(place(&text), (at + 1, "erase.chunk_bytes".to_owned()));
        // A relative device, on its line.
        let (text, at) = with_extra(&target("data", "dev/x"));
        assert_eq!(place(&text), (at + 3, "erase.targets[0].device".to_owned()));
        // A name used twice: the second target's name.
        let (text, at) = with_extra(&format!(
            "{}{}",
            target("data", "/dev/x"),
            target("data", "/dev/y")
        ));
        assert_eq!(place(&text), (at + 6, "erase.targets[1].name".to_owned()));
        // A missing pin: the header of its target.
        let (text, at) = with_extra(&format!(
            "{}{}",
            target("a", "/dev/x"),
            target("b", "/dev/y").replace(&format!("luks_uuid = \"{uuid}\"\n"), "")
        ));
        assert_eq!(
            place(&text),
            (at + 5, "erase.targets[1].luks_uuid".to_owned())
        );
        // A missing device: the header of its target.
        let (text, at) = with_extra(&target("a", "/dev/x").replace("device = \"/dev/x\"\n", ""));
        assert_eq!(place(&text), (at, "erase.targets[0].device".to_owned()));
        // An unknown backend is a schema error, on its line.
        let (text, at) = with_extra(&target("a", "/dev/x").replace("luks2", "zfs"));
        assert_eq!(
            place(&text),
            (at + 2, "erase.targets[0].backend".to_owned())
        );
        let err = parse(&text).expect_err("unknown backend").to_string();
        assert!(err.contains("unknown variant `zfs`"), "{err}");
    }

    #[test]
    fn health_defaults_and_ranges() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.health, HealthConfig::default());
        assert_eq!(c.health.certificate_warning_days, 14);
        let (text, _) =
            with_extra("[health]\ncertificate_warning_days = 30\nevent_hold_secs = 5\n");
        let c = parse(&text).expect("valid");
        assert_eq!(
            (c.health.certificate_warning_days, c.health.event_hold_secs),
            (30, 5)
        );
        let (text, at) = with_extra("[health]\ncertificate_warning_days = 0\n");
        let err = parse(&text).expect_err("zero days").to_string();
        assert!(err.contains("use 1 to 365"), "{err}");
        assert_eq!(
            place(&text),
            (at + 1, "health.certificate_warning_days".to_owned())
        );
        let (text, at) = with_extra("[health]\nevent_hold_secs = 100000\n");
        assert_eq!(place(&text), (at + 1, "health.event_hold_secs".to_owned()));
        let (text, at) = with_extra("[health]\nhold = 1\n");
        assert_eq!(place(&text), (at + 1, "health.hold".to_owned()));
    }

    #[test]
    fn the_erase_state_dir_defaults_under_the_agent_state_dir() {
        let c = parse(&format!("state_dir = \"/srv/agent\"\n{GOOD}")).expect("valid");
        assert_eq!(c.erase.state_dir, PathBuf::from("/srv/agent/erase"));
        let (text, _) = with_extra("[erase]\nstate_dir = \"/srv/erase\"\n");
        assert_eq!(
            parse(&text).expect("valid").erase.state_dir,
            PathBuf::from("/srv/erase")
        );
    }

    #[test]
    fn settings_checked_against_the_host_keep_their_lines() {
        let uuid = "9f5d0c8e-3a1b-4c2d-8e7f-0a1b2c3d4e5f";
        let (text, at) = with_extra(&format!(
            "[[erase.targets]]\nname = \"a\"\nbackend = \"luks2\"\ndevice = \"/dev/x\"\nluks_uuid = \"{uuid}\"\n"
        ));
        let c = parse(&text).expect("valid");
        for (key, line) in [
            ("server.listen", 3),
            ("tls.cert", 6),
            ("tls.key", 7),
            ("tls.client_ca", 8),
            ("erase.targets[0].device", at + 3),
        ] {
            assert_eq!(c.source.place(key).line, line, "{key}");
        }
        assert_eq!(
            c.source.place("tls.key").to_string(),
            "/etc/jex-agent/agent.toml:7"
        );
        // A listen address left out is placed at its table's header, or line 1 without one.
        let c = parse(&GOOD.replace("listen = \"127.0.0.1:7443\"\n", "")).expect("valid");
        assert_eq!(c.source.place("server.listen").line, 2);
        let c = parse(&GOOD.replace("[server]\nlisten = \"127.0.0.1:7443\"\n", "")).expect("valid");
        assert_eq!(c.source.place("server.listen").line, 1);
        assert_eq!(c.server.listen, default_listen());
        // A refusal found later names the file, the line and the key, and the other key's line.
        let err = c
            .source
            .invalid("tls.key", Some("tls.cert"), "refused".to_owned())
            .to_string();
        assert_eq!(
            err,
            "/etc/jex-agent/agent.toml:5: key `tls.key`: refused (`tls.cert` is at line 4)"
        );
    }

    #[test]
    fn one_device_path_twice_names_both_targets_and_lines() {
        let uuid = "9f5d0c8e-3a1b-4c2d-8e7f-0a1b2c3d4e5f";
        let target = |name: &str| {
            format!(
                "[[erase.targets]]\nname = \"{name}\"\nbackend = \"luks2\"\ndevice = \"/dev/x\"\nluks_uuid = \"{uuid}\"\n"
            )
        };
        let (text, at) = with_extra(&format!("{}{}", target("a"), target("b")));
        let err = parse(&text).expect_err("one device twice").to_string();
        assert!(
            err.starts_with(&format!(
                "/etc/jex-agent/agent.toml:{}: key `erase.targets[1].device`:",
                at + 8
            )),
            "{err}"
        );
        assert!(
            err.ends_with(&format!(
                "(`erase.targets[0].device` is at line {})",
                at + 3
            )),
            "{err}"
        );
    }

    #[test]
    fn metrics_default_to_loopback_and_refuse_other_addresses_without_tls() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.metrics, MetricsConfig::default());
        assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:9469");
        assert!(c.metrics.enabled && !c.metrics.tls);
        let (text, at) = with_extra("[metrics]\nlisten = \"0.0.0.0:9469\"\n");
        let err = parse(&text)
            .expect_err("non-loopback without tls")
            .to_string();
        assert!(
            err.starts_with(&format!(
                "/etc/jex-agent/agent.toml:{}: key `metrics.listen`: 0.0.0.0:9469 is not a loopback address: serving metrics beyond this host needs `tls = true`",
                at + 1
            )),
            "{err}"
        );
        assert_eq!(place(&text), (at + 1, "metrics.listen".to_owned()));
        let (text, _) = with_extra("[metrics]\nlisten = \"0.0.0.0:9469\"\ntls = true\n");
        let c = parse(&text).expect("tls beyond loopback");
        assert!(c.metrics.tls);
        let (text, _) = with_extra("[metrics]\nlisten = \"[::1]:9469\"\n");
        assert!(parse(&text).is_ok(), "IPv6 loopback");
        let (text, _) = with_extra("[metrics]\nenabled = false\nlisten = \"0.0.0.0:9469\"\n");
        assert!(!parse(&text).expect("disabled").metrics.enabled);
        let (text, at) = with_extra("[metrics]\nlisten = \"localhost\"\n");
        assert_eq!(place(&text), (at + 1, "metrics.listen".to_owned()));
        let (text, at) = with_extra("[metrics]\nport = 1\n");
        assert_eq!(place(&text), (at + 1, "metrics.port".to_owned()));
        let (text, at) = with_extra("[metrics]\ntls = \"yes\"\n");
        assert_eq!(place(&text), (at + 1, "metrics.tls".to_owned()));
        let (text, at) = with_extra("[metrics]\nlisten = \"127.0.0.1:0\"\n");
        assert_eq!(
            parse(&text)
                .expect("valid")
                .source
                .place("metrics.listen")
                .line,
            at + 1
        );
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
