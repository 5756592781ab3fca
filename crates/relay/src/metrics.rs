//! The relay's own `/metrics` (plain HTTP; keep it on loopback, default 127.0.0.1:9470), in the
//! agent's exposition formats (`jex_agent::metrics::{encode, negotiate}`):
//!
//! - `jex_relay_hosts_followed`, `jex_relay_host_connected{host_id}`,
//!   `jex_relay_host_last_seq{host_id}` (the last seq JetStream acknowledged),
//!   `jex_relay_host_lag_seconds{host_id}` (now minus the time of the newest record published);
//! - `jex_relay_records_published_total{sink}`, `jex_relay_duplicates_total` (records JetStream
//!   already had: a resend after a restart), `jex_relay_gaps_total` (gap records published);
//! - `jex_relay_publish_errors_total{sink,reason}`, `jex_relay_connect_errors_total{reason}`
//!   (reasons from [`CONNECT_REASONS`]), `jex_relay_resets_total` (spool-lost reset markers);
//! - `jex_relay_build_info{version}`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jex_agent::metrics::{Family, Kind, Value, encode, negotiate};

/// The reasons of `jex_relay_connect_errors_total`.
pub const CONNECT_REASONS: [&str; 8] = [
    "tls",
    "host_id_mismatch",
    "unavailable",
    "out_of_range",
    "stream",
    "jetstream",
    "remote_write",
    "other",
];
/// The sinks.
pub const SINKS: [&str; 2] = ["jetstream", "remote_write"];

#[derive(Debug, Default, Clone)]
struct HostStats {
    connected: bool,
    last_seq: u64,
    newest_time_ms: Option<u64>,
}

/// The relay's counters and per-host state.
#[derive(Debug, Default)]
pub struct Metrics {
    hosts: Mutex<BTreeMap<String, HostStats>>,
    published: [AtomicU64; 2],
    duplicates: AtomicU64,
    gaps: AtomicU64,
    resets: AtomicU64,
    publish_errors: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    connect_errors: [AtomicU64; CONNECT_REASONS.len()],
}

fn sink_index(sink: &str) -> usize {
    usize::from(sink != SINKS[0])
}

impl Metrics {
    fn with_host(&self, host_id: &str, f: impl FnOnce(&mut HostStats)) {
        if let Ok(mut hosts) = self.hosts.lock() {
            f(hosts.entry(host_id.to_owned()).or_default());
        }
    }

    /// A host is followed from now on.
    pub fn add_host(&self, host_id: &str) {
        self.with_host(host_id, |_| {});
    }

    /// A host is no longer followed.
    pub fn remove_host(&self, host_id: &str) {
        if let Ok(mut hosts) = self.hosts.lock() {
            hosts.remove(host_id);
        }
    }

    /// Whether the host's stream is open.
    pub fn set_connected(&self, host_id: &str, connected: bool) {
        self.with_host(host_id, |h| h.connected = connected);
    }

    /// JetStream acknowledged `seq` (a record of `time_ms`).
    pub fn acked(&self, host_id: &str, seq: u64, time_ms: u64, duplicate: bool, gap: bool) {
        self.with_host(host_id, |h| {
            h.last_seq = seq;
            h.newest_time_ms = Some(h.newest_time_ms.map_or(time_ms, |t| t.max(time_ms)));
        });
        if duplicate {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            self.published[0].fetch_add(1, Ordering::Relaxed);
            if gap {
                self.gaps.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A further sink (one of [`SINKS`] other than the store's) took `n` records.
    pub fn sink_written(&self, sink: &str, n: u64) {
        self.published[sink_index(sink)].fetch_add(n, Ordering::Relaxed);
    }

    /// A reset marker was published.
    pub fn reset(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }

    /// A publish failed.
    pub fn publish_error(&self, sink: &'static str, reason: &'static str, n: u64) {
        if let Ok(mut m) = self.publish_errors.lock() {
            *m.entry((sink, reason)).or_default() += n;
        }
    }

    /// A connection attempt or a session failed for `reason` (one of [`CONNECT_REASONS`]).
    pub fn connect_error(&self, reason: &str) {
        let i = CONNECT_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(CONNECT_REASONS.len() - 1);
        self.connect_errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A counter's value, for tests and logs.
    pub fn published(&self, sink: &str) -> u64 {
        self.published[sink_index(sink)].load(Ordering::Relaxed)
    }

    /// `jex_relay_publish_errors_total{sink, reason}`, for tests and logs.
    pub fn publish_errors(&self, sink: &str, reason: &str) -> u64 {
        self.publish_errors
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|((s, r), _)| *s == sink && *r == reason)
                    .map(|(_, n)| n)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// The families, at `now_ms`.
    pub fn families(&self, now_ms: u64) -> Vec<Family> {
        let hosts = self.hosts.lock().map(|h| h.clone()).unwrap_or_default();
        let mut connected = Family::new(
            "jex_relay_host_connected",
            "1 while the host's telemetry stream is open.",
            Kind::Gauge,
        );
        let mut last_seq = Family::new(
            "jex_relay_host_last_seq",
            "The last seq of the host that JetStream acknowledged.",
            Kind::Gauge,
        );
        let mut lag = Family::new(
            "jex_relay_host_lag_seconds",
            "Now minus the time of the newest record of the host published to JetStream.",
            Kind::Gauge,
        )
        .unit("seconds");
        for (id, h) in &hosts {
            connected = connected.sample(
                vec![("host_id", id.clone())],
                Value::Int(h.connected.into()),
            );
            last_seq = last_seq.sample(vec![("host_id", id.clone())], Value::Int(h.last_seq));
            if let Some(t) = h.newest_time_ms {
                lag = lag.sample(
                    vec![("host_id", id.clone())],
                    Value::Float(now_ms.saturating_sub(t) as f64 / 1000.0),
                );
            }
        }
        let mut published = Family::new(
            "jex_relay_records_published",
            "Records a sink took (JetStream: newly stored, duplicates not counted).",
            Kind::Counter,
        );
        for (i, sink) in SINKS.iter().enumerate() {
            published = published.sample(
                vec![("sink", (*sink).to_owned())],
                Value::Int(self.published[i].load(Ordering::Relaxed)),
            );
        }
        let mut publish_errors = Family::new(
            "jex_relay_publish_errors",
            "Records a sink did not take, by sink and reason (never dropped silently: each is logged).",
            Kind::Counter,
        );
        if let Ok(m) = self.publish_errors.lock() {
            for ((sink, reason), n) in m.iter() {
                publish_errors = publish_errors.sample(
                    vec![
                        ("sink", (*sink).to_owned()),
                        ("reason", (*reason).to_owned()),
                    ],
                    Value::Int(*n),
                );
            }
        }
        let mut connect_errors = Family::new(
            "jex_relay_connect_errors",
            "Failed connections and ended sessions, by reason.",
            Kind::Counter,
        );
        for (i, reason) in CONNECT_REASONS.iter().enumerate() {
            connect_errors = connect_errors.sample(
                vec![("reason", (*reason).to_owned())],
                Value::Int(self.connect_errors[i].load(Ordering::Relaxed)),
            );
        }
        vec![
            Family::new("jex_relay_build", "How the relay was built.", Kind::Info).sample(
                vec![("version", env!("CARGO_PKG_VERSION").to_owned())],
                Value::Int(1),
            ),
            Family::single(
                "jex_relay_hosts_followed",
                "Hosts in the relay's host list.",
                Kind::Gauge,
                Value::Int(hosts.len() as u64),
            ),
            connected,
            last_seq,
            lag,
            published,
            Family::single(
                "jex_relay_duplicates",
                "Records JetStream already had (a resend after a restart or a reconnect).",
                Kind::Counter,
                Value::Int(self.duplicates.load(Ordering::Relaxed)),
            ),
            Family::single(
                "jex_relay_gaps",
                "Gap records published to JetStream.",
                Kind::Counter,
                Value::Int(self.gaps.load(Ordering::Relaxed)),
            ),
            Family::single(
                "jex_relay_resets",
                "Reset markers published (an agent's spool was a new life).",
                Kind::Counter,
                Value::Int(self.resets.load(Ordering::Relaxed)),
            ),
            publish_errors,
            connect_errors,
        ]
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    jex_attest::clock::now_unix_ms()
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: std::sync::Arc<Metrics>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    if req.uri().path() != "/metrics" {
                        http::Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"only /metrics here\n")))
                    } else {
                        let accept = req
                            .headers()
                            .get(http::header::ACCEPT)
                            .and_then(|v| v.to_str().ok());
                        let format = negotiate(accept);
                        let text = encode(&metrics.families(now_ms()), format);
                        http::Response::builder()
                            .header(http::header::CONTENT_TYPE, format.content_type())
                            .body(Full::new(Bytes::from(text)))
                    }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = tokio::time::timeout(std::time::Duration::from_secs(30), conn).await {
                tracing::debug!(error = %e, "metrics connection timed out");
            }
        });
    }
}

/// Binds `addr` (plain HTTP).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_name_every_host_and_count_by_sink_and_reason() {
        let m = Metrics::default();
        m.add_host("a");
        m.add_host("b");
        m.set_connected("a", true);
        m.acked("a", 5, 1_000, false, false);
        m.acked("a", 6, 2_000, true, false);
        m.acked("a", 7, 2_500, false, true);
        m.sink_written("remote_write", 3);
        m.publish_error("remote_write", "http_400", 2);
        m.connect_error("tls");
        m.connect_error("nonsense");
        let text = encode(&m.families(4_000), jex_agent::metrics::Format::Prometheus);
        for line in [
            "jex_relay_hosts_followed 2",
            "jex_relay_host_connected{host_id=\"a\"} 1",
            "jex_relay_host_connected{host_id=\"b\"} 0",
            "jex_relay_host_last_seq{host_id=\"a\"} 7",
            "jex_relay_host_lag_seconds{host_id=\"a\"} 1.5",
            "jex_relay_records_published_total{sink=\"jetstream\"} 2",
            "jex_relay_records_published_total{sink=\"remote_write\"} 3",
            "jex_relay_duplicates_total 1",
            "jex_relay_gaps_total 1",
            "jex_relay_publish_errors_total{sink=\"remote_write\",reason=\"http_400\"} 2",
            "jex_relay_connect_errors_total{reason=\"tls\"} 1",
            "jex_relay_connect_errors_total{reason=\"other\"} 1",
            "jex_relay_build_info{version=\"",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains("jex_relay_host_lag_seconds{host_id=\"b\"}"));
        m.remove_host("b");
        let text = encode(&m.families(4_000), jex_agent::metrics::Format::Prometheus);
        assert!(text.contains("jex_relay_hosts_followed 1"));
    }
}
