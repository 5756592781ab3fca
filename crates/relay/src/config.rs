//! The relay's configuration file (TOML): its mTLS client identity (`[tls]`), the hosts it
//! follows (`[[hosts]]`), and its own tables (`[jetstream]`, `[remote_write]`, `[metrics]`,
//! `[follow]`), parsed and validated as a pure function so that a refusal names the line and
//! the key to fix (`relay.toml:7: key `hosts[1].host_id`: ...`).
//!
//! ```toml
//! [tls]
//! cert = "/etc/jex-relay/observer.pem"   # an observer certificate of the fleet CA
//! key = "/etc/jex-relay/observer.key"
//! ca = "/etc/jex-relay/ca.pem"           # the fleet CA the agents' certificates chain to
//!
//! [[hosts]]
//! host_id = "mac-0001"
//! addr = "https://10.0.0.11:7443"
//! server_name = "localhost"              # optional; default: the URL's host
//!
//! [jetstream]
//! url = "nats://127.0.0.1:4222"          # default
//! stream = "JEX_TELEMETRY"               # default
//! duplicate_window_secs = 120            # default: 2 min
//! max_age_secs = 604800                  # default: 7 days
//! max_in_flight = 256                    # publish acks awaited per host, default 256
//!
//! [remote_write]                         # optional
//! url = "http://127.0.0.1:9090/api/v1/write"   # or https://
//! # ca = "/etc/jex-relay/receiver-ca.pem"  # https: the receiver's CA (the only root for it)
//! # cert = "/etc/jex-relay/rw.pem"         # https: a client certificate, when asked for
//! # key = "/etc/jex-relay/rw.key"
//! # server_name = "prom.example"          # https: default the URL's host
//! # timeout_ms = 10000
//!
//! [metrics]
//! listen = "127.0.0.1:9470"              # default; enabled = false turns it off
//!
//! [follow]
//! backoff_min_ms = 500                   # reconnect backoff, jittered, doubling
//! backoff_max_ms = 30000
//! max_batch_records = 0                  # records per stream message; 0: the agent's default
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// The longest host id (it becomes a NATS subject token and a label value).
pub const MAX_HOST_ID_LEN: usize = 64;

/// The whole configuration, validated, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The relay's client identity and the fleet CA.
    pub tls: TlsFiles,
    /// The hosts to follow, in file order, ids unique.
    pub hosts: Vec<HostEntry>,
    /// The JetStream sink.
    pub jetstream: JetStreamConfig,
    /// The Prometheus remote_write sink, when configured.
    pub remote_write: Option<RemoteWriteConfig>,
    /// The relay's own `/metrics`.
    pub metrics: MetricsConfig,
    /// How each host is followed.
    pub follow: FollowConfig,
}

/// The relay's mTLS client files (read at each connection, so a renewed certificate is used
/// from the next reconnect on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Client certificate (PEM): an observer certificate of the fleet CA.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The fleet CA (PEM): the only trust anchor for the agents' certificates.
    pub ca: PathBuf,
}

/// One host to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// The host id its certificate must carry (checked with `GetHost` at each connection).
    pub host_id: String,
    /// The agent's gRPC URL (`https://...`).
    pub addr: String,
    /// The name checked in the agent's certificate; `None`: the URL's host.
    pub server_name: Option<String>,
}

/// The JetStream sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamConfig {
    /// The NATS server URL (`nats://host:port`).
    pub url: String,
    /// The stream's name.
    pub stream: String,
    /// The stream's duplicate window (message ids remembered this long).
    pub duplicate_window: Duration,
    /// The stream's max age (older messages are removed).
    pub max_age: Duration,
    /// Publishes awaiting their ack, per host, before the relay stops reading that host's stream.
    pub max_in_flight: usize,
}

/// The Prometheus remote_write sink's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWriteConfig {
    /// The receiver's URL (`http://` or `https://host:port/api/v1/write`).
    pub url: String,
    /// The deadline of one POST.
    pub timeout: Duration,
    /// For an `https://` URL: how the receiver is checked and the relay identifies itself.
    pub tls: Option<RemoteWriteTls>,
}

/// TLS to an `https://` remote_write receiver (TLS 1.3, [`crate::tls::client_config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteWriteTls {
    /// The CA that signed the receiver's certificate: the only root trusted for it.
    pub ca: PathBuf,
    /// A client certificate and key, for a receiver that asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name checked in the receiver's certificate; `None`: the URL's host.
    pub server_name: Option<String>,
}

/// The relay's own `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Serve it at all.
    pub enabled: bool,
    /// Where (plain HTTP: keep it on loopback).
    pub listen: SocketAddr,
}

/// How each host is followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowConfig {
    /// The first reconnect delay (before jitter).
    pub backoff_min: Duration,
    /// The longest reconnect delay.
    pub backoff_max: Duration,
    /// Records per stream message asked of the agent; 0: the agent's default.
    pub max_batch_records: u32,
}

/// The default `/metrics` address.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9470";

/// The configuration could not be used: the agent's error type, so that both name the file,
/// line, column and dotted key the same way.
pub use jex_agent::config::ConfigError;
use jex_agent::config::{Invalid, invalid};

/// Why a host id is refused, or `None` when it is valid: 1 to [`MAX_HOST_ID_LEN`] characters of
/// `[A-Za-z0-9_-]` (a NATS subject token, a label value, a message id part).
pub fn host_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("a host id cannot be empty".into());
    }
    if id.len() > MAX_HOST_ID_LEN {
        return Some(format!(
            "a host id has at most {MAX_HOST_ID_LEN} characters, this one has {}",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Some(format!(
            "{c:?} is not allowed in a host id: use letters, digits, `-` and `_` (it becomes a NATS subject token)"
        ));
    }
    None
}

impl Config {
    /// Reads and validates the file at `path`.
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
        raw.validate()
            .map_err(|e| ConfigError::from_invalid(path, text, e))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tls: Option<Spanned<RawTls>>,
    #[serde(default)]
    hosts: Vec<Spanned<RawHost>>,
    jetstream: Option<Spanned<RawJetStream>>,
    remote_write: Option<Spanned<RawRemoteWrite>>,
    metrics: Option<Spanned<RawMetrics>>,
    follow: Option<Spanned<RawFollow>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    ca: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    host_id: Option<Spanned<String>>,
    addr: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJetStream {
    url: Option<Spanned<String>>,
    stream: Option<Spanned<String>>,
    duplicate_window_secs: Option<Spanned<u64>>,
    max_age_secs: Option<Spanned<u64>>,
    max_in_flight: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemoteWrite {
    url: Option<Spanned<String>>,
    timeout_ms: Option<Spanned<u64>>,
    ca: Option<Spanned<PathBuf>>,
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    server_name: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    enabled: Option<Spanned<bool>>,
    listen: Option<Spanned<SocketAddr>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFollow {
    backoff_min_ms: Option<Spanned<u64>>,
    backoff_max_ms: Option<Spanned<u64>>,
    max_batch_records: Option<Spanned<u32>>,
}

/// The top-level table has no header: its missing keys are reported at line 1.
const ROOT: Range<usize> = 0..0;

fn required<T>(
    value: Option<Spanned<T>>,
    table: &Range<usize>,
    key: &str,
    what: &str,
) -> Result<(T, Range<usize>), Invalid> {
    match value {
        Some(v) => {
            let span = v.span();
            Ok((v.into_inner(), span))
        }
        None => Err(invalid(table.clone(), key, format!("missing: {what}"))),
    }
}

fn url_with(
    url: &str,
    span: Range<usize>,
    key: &str,
    schemes: &[&str],
    example: &str,
) -> Result<(), Invalid> {
    let ok = schemes.iter().any(|s| {
        url.strip_prefix(s)
            .and_then(|rest| rest.strip_prefix("://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            span,
            key,
            format!(
                "{url:?} is not a {} URL: use e.g. {example}",
                schemes.join(" or ")
            ),
        ))
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl RawConfig {
    fn validate(self) -> Result<Config, Invalid> {
        let (tls, tls_span) = required(
            self.tls,
            &ROOT,
            "tls",
            "a [tls] table with cert, key and ca (the relay's observer certificate and the fleet CA)",
        )?;
        let (cert, _) = required(
            tls.cert,
            &tls_span,
            "tls.cert",
            "the client certificate (PEM)",
        )?;
        let (key, _) = required(
            tls.key,
            &tls_span,
            "tls.key",
            "the client private key (PEM)",
        )?;
        let (ca, _) = required(
            tls.ca,
            &tls_span,
            "tls.ca",
            "the fleet CA certificate (PEM)",
        )?;
        let tls = TlsFiles { cert, key, ca };

        let mut hosts = Vec::with_capacity(self.hosts.len());
        let mut seen: BTreeMap<String, Range<usize>> = BTreeMap::new();
        for (i, h) in self.hosts.into_iter().enumerate() {
            let span = h.span();
            let h = h.into_inner();
            let (host_id, id_span) = required(
                h.host_id,
                &span,
                &format!("hosts[{i}].host_id"),
                "the host id the agent's certificate carries",
            )?;
            if let Some(problem) = host_id_problem(&host_id) {
                return Err(invalid(id_span, format!("hosts[{i}].host_id"), problem));
            }
            if let Some(first) = seen.get(&host_id) {
                return Err(Invalid {
                    also: Some(("host_id".into(), first.clone())),
                    ..invalid(
                        id_span,
                        format!("hosts[{i}].host_id"),
                        format!(
                            "host id {host_id:?} is listed twice: one relay follows a host once"
                        ),
                    )
                });
            }
            seen.insert(host_id.clone(), id_span);
            let (addr, addr_span) = required(
                h.addr,
                &span,
                &format!("hosts[{i}].addr"),
                "the agent's gRPC URL, e.g. https://10.0.0.11:7443",
            )?;
            url_with(
                &addr,
                addr_span,
                &format!("hosts[{i}].addr"),
                &["https"],
                "https://10.0.0.11:7443 (the agent speaks mTLS only)",
            )?;
            let server_name = match h.server_name {
                Some(n) if n.get_ref().is_empty() => {
                    return Err(invalid(
                        n.span(),
                        format!("hosts[{i}].server_name"),
                        "empty: leave it out to check the URL's host",
                    ));
                }
                other => other.map(Spanned::into_inner),
            };
            hosts.push(HostEntry {
                host_id,
                addr,
                server_name,
            });
        }

        let js = self.jetstream.map(Spanned::into_inner).unwrap_or_default();
        let url = match js.url {
            Some(u) => {
                url_with(
                    u.get_ref(),
                    u.span(),
                    "jetstream.url",
                    &["nats"],
                    "nats://127.0.0.1:4222",
                )?;
                u.into_inner()
            }
            None => "nats://127.0.0.1:4222".to_owned(),
        };
        let stream = match js.stream {
            Some(s) => {
                let ok = !s.get_ref().is_empty()
                    && s.get_ref()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !ok {
                    return Err(invalid(
                        s.span(),
                        "jetstream.stream",
                        "a stream name is letters, digits, `-` and `_`",
                    ));
                }
                s.into_inner()
            }
            None => "JEX_TELEMETRY".to_owned(),
        };
        let secs = |v: Option<Spanned<u64>>, key: &str, default: u64| match v {
            Some(v) if *v.get_ref() == 0 => Err(invalid(v.span(), key, "must be at least 1")),
            Some(v) => Ok(Duration::from_secs(v.into_inner())),
            None => Ok(Duration::from_secs(default)),
        };
        let duplicate_window = secs(
            js.duplicate_window_secs,
            "jetstream.duplicate_window_secs",
            120,
        )?;
        let max_age = secs(js.max_age_secs, "jetstream.max_age_secs", 7 * 24 * 3600)?;
        if max_age < duplicate_window {
            return Err(invalid(
                ROOT,
                "jetstream.max_age_secs",
                "must be at least jetstream.duplicate_window_secs",
            ));
        }
        let max_in_flight = match js.max_in_flight {
            Some(v) if !(1..=65_536).contains(v.get_ref()) => {
                return Err(invalid(
                    v.span(),
                    "jetstream.max_in_flight",
                    "must be 1 to 65536 (publishes awaiting their ack, per host)",
                ));
            }
            Some(v) => v.into_inner() as usize,
            None => 256,
        };
        let jetstream = JetStreamConfig {
            url,
            stream,
            duplicate_window,
            max_age,
            max_in_flight,
        };

        let remote_write = match self.remote_write {
            None => None,
            Some(rw) => {
                let span = rw.span();
                let rw = rw.into_inner();
                let (url, url_span) = required(
                    rw.url,
                    &span,
                    "remote_write.url",
                    "the receiver's URL, e.g. http://127.0.0.1:9090/api/v1/write",
                )?;
                url_with(
                    &url,
                    url_span.clone(),
                    "remote_write.url",
                    &["http", "https"],
                    "http://127.0.0.1:9090/api/v1/write",
                )?;
                let tls = if url.starts_with("https://") {
                    let (ca, _) = required(
                        rw.ca,
                        &span,
                        "remote_write.ca",
                        "for an https:// receiver, the CA certificate (PEM) that signed its certificate: the relay trusts no other root for it",
                    )?;
                    let identity = match (rw.cert, rw.key) {
                        (None, None) => None,
                        (Some(c), Some(k)) => Some((c.into_inner(), k.into_inner())),
                        (Some(c), None) => {
                            return Err(invalid(
                                c.span(),
                                "remote_write.key",
                                "remote_write.cert needs its private key (PEM) in remote_write.key",
                            ));
                        }
                        (None, Some(k)) => {
                            return Err(invalid(
                                k.span(),
                                "remote_write.cert",
                                "remote_write.key needs its certificate (PEM) in remote_write.cert",
                            ));
                        }
                    };
                    Some(RemoteWriteTls {
                        ca,
                        identity,
                        server_name: rw.server_name.map(Spanned::into_inner),
                    })
                } else {
                    let tls_key = [
                        rw.ca.map(|v| ("remote_write.ca", v.span())),
                        rw.cert.map(|v| ("remote_write.cert", v.span())),
                        rw.key.map(|v| ("remote_write.key", v.span())),
                        rw.server_name
                            .map(|v| ("remote_write.server_name", v.span())),
                    ]
                    .into_iter()
                    .flatten()
                    .next();
                    if let Some((key, at)) = tls_key {
                        return Err(invalid(
                            at,
                            key,
                            "TLS settings apply to an https:// receiver: make remote_write.url https:// or remove this key",
                        ));
                    }
                    None
                };
                let timeout = match rw.timeout_ms {
                    Some(v) if *v.get_ref() == 0 => {
                        return Err(invalid(
                            v.span(),
                            "remote_write.timeout_ms",
                            "must be at least 1",
                        ));
                    }
                    Some(v) => ms(v.into_inner()),
                    None => Duration::from_secs(10),
                };
                Some(RemoteWriteConfig { url, timeout, tls })
            }
        };

        let m = self.metrics.map(Spanned::into_inner).unwrap_or_default();
        let metrics = MetricsConfig {
            enabled: m.enabled.is_none_or(Spanned::into_inner),
            listen: match m.listen {
                Some(l) => l.into_inner(),
                None => DEFAULT_METRICS_LISTEN
                    .parse()
                    .map_err(|_| invalid(ROOT, "metrics.listen", "bad built-in default"))?,
            },
        };

        let f = self.follow.map(Spanned::into_inner).unwrap_or_default();
        let min_span = f.backoff_min_ms.as_ref().map(Spanned::span);
        let backoff_min = f.backoff_min_ms.map_or(500, Spanned::into_inner);
        let backoff_max = match f.backoff_max_ms {
            Some(v) if *v.get_ref() < backoff_min => {
                return Err(Invalid {
                    also: min_span.map(|s| ("follow.backoff_min_ms".to_owned(), s)),
                    ..invalid(
                        v.span(),
                        "follow.backoff_max_ms",
                        format!("must be at least follow.backoff_min_ms ({backoff_min})"),
                    )
                });
            }
            Some(v) => v.into_inner(),
            None => 30_000.max(backoff_min),
        };
        if backoff_min == 0 {
            return Err(invalid(
                min_span.unwrap_or(ROOT),
                "follow.backoff_min_ms",
                "must be at least 1",
            ));
        }
        let follow = FollowConfig {
            backoff_min: ms(backoff_min),
            backoff_max: ms(backoff_max),
            max_batch_records: f.max_batch_records.map_or(0, Spanned::into_inner),
        };

        Ok(Config {
            tls,
            hosts,
            jetstream,
            remote_write,
            metrics,
            follow,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[tls]
cert = "/abs/observer.pem"
key = "/abs/observer.key"
ca = "/abs/ca.pem"

[[hosts]]
host_id = "sim-0001"
addr = "https://127.0.1.1:7443"
server_name = "localhost"

[[hosts]]
host_id = "sim-0002"
addr = "https://127.0.1.2:7443"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("relay.toml"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_simulators_file_parses_with_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.hosts.len(), 2);
        assert_eq!(c.hosts[0].server_name.as_deref(), Some("localhost"));
        assert_eq!(c.hosts[1].server_name, None);
        assert_eq!(c.jetstream.url, "nats://127.0.0.1:4222");
        assert_eq!(c.jetstream.stream, "JEX_TELEMETRY");
        assert_eq!(c.jetstream.duplicate_window, Duration::from_secs(120));
        assert_eq!(c.jetstream.max_age, Duration::from_secs(604_800));
        assert_eq!(c.jetstream.max_in_flight, 256);
        assert_eq!(c.remote_write, None);
        assert!(c.metrics.enabled);
        assert_eq!(c.metrics.listen.to_string(), "127.0.0.1:9470");
        assert_eq!(c.follow.backoff_min, Duration::from_millis(500));
        assert_eq!(c.follow.backoff_max, Duration::from_secs(30));
    }

    #[test]
    fn every_table_is_read() {
        let text = format!(
            "{MINIMAL}
[jetstream]
url = \"nats://10.0.0.2:4222\"
stream = \"FLEET\"
duplicate_window_secs = 300
max_age_secs = 3600
max_in_flight = 16

[remote_write]
url = \"http://127.0.0.1:9090/api/v1/write\"
timeout_ms = 2500

[metrics]
listen = \"127.0.0.1:19470\"

[follow]
backoff_min_ms = 50
backoff_max_ms = 2000
max_batch_records = 64
"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.jetstream.url, "nats://10.0.0.2:4222");
        assert_eq!(c.jetstream.stream, "FLEET");
        assert_eq!(c.jetstream.duplicate_window, Duration::from_secs(300));
        assert_eq!(c.jetstream.max_in_flight, 16);
        let rw = c.remote_write.unwrap();
        assert_eq!(rw.timeout, Duration::from_millis(2500));
        assert_eq!(c.metrics.listen.port(), 19470);
        assert_eq!(c.follow.backoff_max, Duration::from_secs(2));
        assert_eq!(c.follow.max_batch_records, 64);
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let bad_id = MINIMAL.replace("\"sim-0002\"", "\"sim 0002\"");
        assert_eq!(
            err(&bad_id),
            "relay.toml:13: key `hosts[1].host_id`: ' ' is not allowed in a host id: use letters, digits, `-` and `_` (it becomes a NATS subject token)"
        );
        let dup = MINIMAL.replace("\"sim-0002\"", "\"sim-0001\"");
        assert_eq!(
            err(&dup),
            "relay.toml:13: key `hosts[1].host_id`: host id \"sim-0001\" is listed twice: one relay follows a host once (`host_id` is at line 8)"
        );
        let plain = MINIMAL.replace("https://127.0.1.2", "http://127.0.1.2");
        assert!(
            err(&plain).starts_with(
                "relay.toml:14: key `hosts[1].addr`: \"http://127.0.1.2:7443\" is not a https URL"
            ),
            "{}",
            err(&plain)
        );
        let unknown = format!("{MINIMAL}\n[jetstream]\nurll = \"x\"\n");
        let e = err(&unknown);
        assert!(
            e.starts_with("relay.toml:17:1: key `jetstream.urll`: unknown field `urll`"),
            "{e}"
        );
        let wrong_type = format!("{MINIMAL}\n[jetstream]\nmax_in_flight = \"many\"\n");
        let e = err(&wrong_type);
        assert!(
            e.starts_with("relay.toml:17:17: key `jetstream.max_in_flight`: invalid type"),
            "{e}"
        );
        let no_tls = MINIMAL.replace("[tls]\ncert = \"/abs/observer.pem\"\n", "[tls]\n");
        assert_eq!(
            err(&no_tls),
            "relay.toml:2: key `tls.cert`: missing: the client certificate (PEM)"
        );
        let no_addr = MINIMAL.replace("addr = \"https://127.0.1.2:7443\"\n", "");
        assert_eq!(
            err(&no_addr),
            "relay.toml:12: key `hosts[1].addr`: missing: the agent's gRPC URL, e.g. https://10.0.0.11:7443"
        );
        let https_rw =
            format!("{MINIMAL}\n[remote_write]\nurl = \"https://m:9090/api/v1/write\"\n");
        assert!(
            err(&https_rw).contains("key `remote_write.ca`: missing: for an https:// receiver")
        );
        let half = format!(
            "{MINIMAL}\n[remote_write]\nurl = \"https://m:9090/api/v1/write\"\nca = \"/ca.pem\"\ncert = \"/c.pem\"\n"
        );
        assert!(
            err(&half).contains("key `remote_write.key`: remote_write.cert needs its private key")
        );
        let plain_ca = format!(
            "{MINIMAL}\n[remote_write]\nurl = \"http://m:9090/api/v1/write\"\nca = \"/ca.pem\"\n"
        );
        assert!(
            err(&plain_ca)
                .contains("key `remote_write.ca`: TLS settings apply to an https:// receiver")
        );
        let https_ok = format!(
            "{MINIMAL}\n[remote_write]\nurl = \"https://m:9090/api/v1/write\"\nca = \"/ca.pem\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nserver_name = \"prom\"\n"
        );
        let tls = Config::parse(Path::new("relay.toml"), &https_ok)
            .unwrap()
            .remote_write
            .unwrap()
            .tls
            .unwrap();
        assert_eq!(tls.ca, PathBuf::from("/ca.pem"));
        assert_eq!(
            tls.identity,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
        assert_eq!(tls.server_name.as_deref(), Some("prom"));
        let backoff = format!("{MINIMAL}\n[follow]\nbackoff_min_ms = 900\nbackoff_max_ms = 100\n");
        assert_eq!(
            err(&backoff),
            "relay.toml:18: key `follow.backoff_max_ms`: must be at least follow.backoff_min_ms (900) (`follow.backoff_min_ms` is at line 17)"
        );
        let window = format!("{MINIMAL}\n[jetstream]\nmax_in_flight = 0\n");
        assert!(err(&window).contains("key `jetstream.max_in_flight`: must be 1 to 65536"));
        let nats = format!("{MINIMAL}\n[jetstream]\nurl = \"127.0.0.1:4222\"\n");
        assert!(err(&nats).contains("key `jetstream.url`: \"127.0.0.1:4222\" is not a nats URL"));
    }

    #[test]
    fn host_ids_are_subject_tokens() {
        assert_eq!(host_id_problem("sim-0001"), None);
        assert_eq!(host_id_problem("Mac_mini-42"), None);
        assert_eq!(host_id_problem(&"a".repeat(64)), None);
        assert!(host_id_problem("").is_some());
        assert!(
            host_id_problem(&"a".repeat(65))
                .unwrap()
                .contains("at most 64")
        );
        for bad in ["a.b", "a*", "a>", "a b", "é", "a/b", "a:b"] {
            assert!(host_id_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../../relay/relay.toml.example");
        let c = parse(text).unwrap();
        assert_eq!(c.hosts.len(), 1);
        assert_eq!(c.jetstream.max_in_flight, 256);
        assert_eq!(c.remote_write, None);
    }

    #[test]
    fn an_empty_host_list_is_valid() {
        let text = "[tls]\ncert = \"c\"\nkey = \"k\"\nca = \"a\"\n";
        assert!(parse(text).unwrap().hosts.is_empty());
    }
}
