//! The Prometheus remote_write sink (protocol 1.0): a `WriteRequest` protobuf, compressed with
//! snappy's block format (not the framed one), POSTed with `Content-Encoding: snappy`,
//! `Content-Type: application/x-protobuf` and `X-Prometheus-Remote-Write-Version: 0.1.0`.
//!
//! Series: a sample record becomes the agent's `/metrics` host families
//! (`jex_agent::metrics::host_families`: the same names, labels and values a scrape of the
//! agent shows) at the record's own time, each with a `host_id` label; a gap record becomes
//! one `jex_telemetry_gap{host_id, reason}` sample whose value is the number of seqs lost (1
//! when only time was lost). Labels are sorted by name with `__name__` first, as the spec
//! requires.
//!
//! Backfilled records are older than the receiver's newest sample of the series, so the
//! receiver must accept out-of-order samples: Prometheus ≥ 2.39 with
//! `storage.tsdb.out_of_order_time_window` (e.g. `30m`, or as long as the longest relay
//! downtime to be backfilled) in prometheus.yml, and `--web.enable-remote-write-receiver`.
//! `http://`, or `https://` with TLS 1.3: the receiver's certificate checked against the
//! configured CA only (`remote_write.ca`), and a client certificate when one is configured
//! (`remote_write.cert`, `remote_write.key`), as a receiver behind mTLS asks. The TLS files are
//! read when the relay starts: a file that does not load stops the start with its path.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use jex_proto::v1 as pb;
use prost::Message;
use rustls::pki_types::ServerName;

use crate::config::RemoteWriteConfig;
use crate::layout::gap_reason_name;
use crate::sink::{BoxFuture, Sink, SinkError, SinkFactory, Written};

/// `prometheus.WriteRequest` (only the fields the relay writes).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    /// The series.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// Sorted by name, `__name__` first.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// In time order.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    /// Its name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// The value.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Unix milliseconds.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// The series name of a gap record.
pub const GAP_SERIES: &str = "jex_telemetry_gap";

/// A record the relay cannot turn into series (an enum value it does not know).
#[derive(Debug, thiserror::Error)]
#[error("record {seq}: {message}")]
pub struct RecordError {
    /// The record's seq.
    pub seq: u64,
    /// What is wrong.
    pub message: String,
}

/// A series from a name and labels (sorted here, `__name__` first) and one sample.
pub fn series(name: &str, labels: Vec<(String, String)>, value: f64, time_ms: u64) -> TimeSeries {
    let mut labels: Vec<Label> = labels
        .into_iter()
        .map(|(name, value)| Label { name, value })
        .collect();
    labels.push(Label {
        name: "__name__".into(),
        value: name.to_owned(),
    });
    // `__name__` sorts before any lower-case or `_x` name but not before upper-case letters: put
    // it first explicitly, then the rest by name.
    labels.sort_by(|a, b| {
        (a.name != "__name__", a.name.as_str()).cmp(&(b.name != "__name__", b.name.as_str()))
    });
    TimeSeries {
        labels,
        samples: vec![Sample {
            value,
            timestamp: i64::try_from(time_ms).unwrap_or(i64::MAX),
        }],
    }
}

/// The series of one record of `host_id`.
pub fn record_series(
    host_id: &str,
    record: &pb::TelemetryRecord,
) -> Result<Vec<TimeSeries>, RecordError> {
    let host = || ("host_id".to_owned(), host_id.to_owned());
    if let Some(pb::telemetry_record::Body::Gap(g)) = &record.body {
        let lost = if g.last_missing_seq == 0 {
            1
        } else {
            g.last_missing_seq.saturating_sub(g.first_missing_seq) + 1
        };
        return Ok(vec![series(
            GAP_SERIES,
            vec![host(), ("reason".into(), gap_reason_name(g.reason))],
            lost as f64,
            record.time_unix_ms,
        )]);
    }
    let model = jex_agent::telemetry::wire::from_proto(record).map_err(|e| RecordError {
        seq: record.seq,
        message: e.0,
    })?;
    let jex_agent::telemetry::RecordBody::Sample(sample) = &model.body else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for family in jex_agent::metrics::host_families(Some((model.time_unix_ms, sample))) {
        let name = family.sample_name();
        for s in &family.samples {
            let value = match s.value {
                jex_agent::metrics::Value::Int(v) => v as f64,
                jex_agent::metrics::Value::Float(v) => v,
            };
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect();
            labels.push(host());
            out.push(series(&name, labels, value, model.time_unix_ms));
        }
    }
    Ok(out)
}

/// The POST body: the protobuf, snappy block-compressed.
pub fn encode(request: &WriteRequest) -> Result<Vec<u8>, snap::Error> {
    snap::raw::Encoder::new().compress_vec(&request.encode_to_vec())
}

/// A POST did not land.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection, a broken one, a timeout or a 5xx: retry later (the host's stream waits).
    #[error("remote_write {url}: {message} (will retry)")]
    Retry {
        /// The receiver.
        url: String,
        /// What happened.
        message: String,
    },
    /// A 4xx: the receiver refuses these samples (too old, out of bounds, malformed); sending
    /// them again would not help.
    #[error("remote_write {url}: refused with HTTP {status}: {body}")]
    Refused {
        /// The receiver.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the receiver's answer.
        body: String,
    },
}

impl SendError {
    /// The reason label of `jex_relay_publish_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            SendError::Retry { .. } => "unavailable",
            SendError::Refused { status: 400, .. } => "http_400",
            SendError::Refused { .. } => "http_4xx",
        }
    }
}

/// How a connection to an `https://` receiver is secured.
#[derive(Clone)]
pub struct Tls {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl Tls {
    /// The TLS of `config` (`None` for an `http://` receiver), its files read now.
    pub fn load(config: &RemoteWriteConfig) -> Result<Option<Tls>, TlsSetupError> {
        let Some(tls) = &config.tls else {
            return Ok(None);
        };
        let identity = tls
            .identity
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()));
        let client = crate::tls::client_config(&tls.ca, identity, b"http/1.1")?;
        let (authority, _) = split_url(&config.url);
        let host = match tls.server_name.as_deref() {
            Some(n) => n.to_owned(),
            None => url_host(authority).to_owned(),
        };
        let name =
            ServerName::try_from(host.clone()).map_err(|_| TlsSetupError::Name { name: host })?;
        Ok(Some(Tls {
            config: client,
            name,
        }))
    }
}

/// The TLS of an `https://` receiver could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A file of `remote_write.ca`, `.cert` or `.key` did not load.
    #[error("remote_write TLS: {0}")]
    File(#[from] crate::tls::TlsFileError),
    /// The name to check is not a DNS name or an IP address.
    #[error(
        "remote_write TLS: {name:?} is not a DNS name or an IP address to check the receiver's certificate against (set remote_write.server_name)"
    )]
    Name {
        /// The name.
        name: String,
    },
}

/// (`host:port`, `/path`) of an `http://` or `https://` URL.
fn split_url(url: &str) -> (&str, &str) {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    }
}

/// The host of `host:port` (an IPv6 address without its brackets).
fn url_host(authority: &str) -> &str {
    let host = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => &authority[..i],
        _ => authority,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// One receiver, one HTTP/1.1 connection kept between POSTs (one client per followed host).
pub struct Client {
    url: String,
    authority: String,
    path: String,
    timeout: Duration,
    tls: Option<Tls>,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    /// A client of `url` (`http://` or `https://host:port/path`, checked by the configuration);
    /// `tls` for an `https://` one.
    pub fn new(url: &str, timeout: Duration, tls: Option<Tls>) -> Self {
        let (authority, path) = split_url(url);
        Self {
            url: url.to_owned(),
            authority: authority.to_owned(),
            path: path.to_owned(),
            timeout,
            tls,
            conn: None,
        }
    }

    /// HTTP/1.1 over `io`; its connection task runs until the connection ends.
    async fn handshake<T>(&self, io: T) -> Result<SendRequest<Full<Bytes>>, SendError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.retry(format!("HTTP handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "remote_write connection ended");
            }
        });
        Ok(sender)
    }

    fn retry(&self, message: impl Into<String>) -> SendError {
        SendError::Retry {
            url: self.url.clone(),
            message: message.into(),
        }
    }

    /// POSTs one encoded `WriteRequest`.
    pub async fn send(&mut self, body: Vec<u8>) -> Result<(), SendError> {
        match tokio::time::timeout(self.timeout, self.send_inner(body)).await {
            Ok(r) => r,
            Err(_) => {
                self.conn = None;
                Err(self.retry(format!("no answer within {:?}", self.timeout)))
            }
        }
    }

    async fn send_inner(&mut self, body: Vec<u8>) -> Result<(), SendError> {
        let mut sender = match self.conn.take() {
            Some(s) if !s.is_closed() => s,
            _ => {
                let tcp = tokio::net::TcpStream::connect(&self.authority)
                    .await
                    .map_err(|e| self.retry(format!("connecting: {e}")))?;
                match &self.tls {
                    None => self.handshake(tcp).await?,
                    Some(tls) => {
                        let stream = tokio_rustls::TlsConnector::from(tls.config.clone())
                            .connect(tls.name.clone(), tcp)
                            .await
                            .map_err(|e| self.retry(format!("TLS handshake: {e}")))?;
                        self.handshake(stream).await?
                    }
                }
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| self.retry(format!("connection: {e}")))?;
        let request = http::Request::post(&self.path)
            .header(http::header::HOST, &self.authority)
            .header(http::header::CONTENT_ENCODING, "snappy")
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .header(
                http::header::USER_AGENT,
                concat!("jex-relay/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.retry(format!("building the request: {e}")))?;
        let answer = sender
            .send_request(request)
            .await
            .map_err(|e| self.retry(format!("sending: {e}")))?;
        let status = answer.status();
        let text = answer
            .into_body()
            .collect()
            .await
            .map(|b| {
                String::from_utf8_lossy(&b.to_bytes())
                    .chars()
                    .take(300)
                    .collect::<String>()
            })
            .unwrap_or_default();
        self.conn = Some(sender);
        if status.is_success() {
            Ok(())
        } else if status.is_client_error() {
            Err(SendError::Refused {
                url: self.url.clone(),
                status: status.as_u16(),
                body: text.trim().to_owned(),
            })
        } else {
            Err(self.retry(format!("HTTP {status}: {}", text.trim())))
        }
    }
}

/// The remote_write [`Sink`] of one host: its records as series, one POST per batch, on the
/// host's own connection.
pub struct RemoteWrite {
    client: Client,
}

/// Opens a [`RemoteWrite`] per host.
pub struct RemoteWriteFactory {
    config: RemoteWriteConfig,
    tls: Option<Tls>,
}

impl RemoteWriteFactory {
    /// The factory of `config`'s receiver; an `https://` one's TLS files are read now.
    pub fn new(config: RemoteWriteConfig) -> Result<Self, TlsSetupError> {
        let tls = Tls::load(&config)?;
        Ok(Self { config, tls })
    }
}

impl SinkFactory for RemoteWriteFactory {
    fn open(&self, _host_id: &str) -> Box<dyn Sink> {
        Box::new(RemoteWrite {
            client: Client::new(&self.config.url, self.config.timeout, self.tls.clone()),
        })
    }
}

impl Sink for RemoteWrite {
    fn name(&self) -> &'static str {
        "remote_write"
    }

    fn write<'a>(
        &'a mut self,
        host_id: &'a str,
        records: &'a [pb::TelemetryRecord],
    ) -> BoxFuture<'a, Result<Written, SinkError>> {
        Box::pin(async move {
            let mut request = WriteRequest::default();
            let mut skipped = 0;
            for r in records {
                match record_series(host_id, r) {
                    Ok(series) => request.timeseries.extend(series),
                    Err(e) => {
                        skipped += 1;
                        tracing::error!(host_id = %host_id, seq = r.seq, "record not written to remote_write: {e}");
                    }
                }
            }
            let written = Written {
                records: records.len() as u64 - skipped,
                skipped,
            };
            if request.timeseries.is_empty() {
                return Ok(written);
            }
            let body = encode(&request).map_err(|e| SinkError::Refused {
                reason: "encode",
                message: format!("encoding {} series: {e}", request.timeseries.len()),
            })?;
            match self.client.send(body).await {
                Ok(()) => Ok(written),
                Err(e @ SendError::Refused { .. }) => Err(SinkError::Refused {
                    reason: e.reason(),
                    message: format!("{e} ({} series)", request.timeseries.len()),
                }),
                Err(e @ SendError::Retry { .. }) => Err(SinkError::Retry {
                    message: e.to_string(),
                }),
            }
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample_record() -> pb::TelemetryRecord {
        pb::TelemetryRecord {
            seq: 3,
            time_unix_ms: 1_700_000_000_123,
            body: Some(pb::telemetry_record::Body::Sample(pb::Sample {
                window_ms: 1000,
                cpu: Some(pb::CpuSample {
                    busy_bp: 2500,
                    core_busy_bp: vec![1000, 4000],
                    online_cpus: 2,
                    ..Default::default()
                }),
                memory: Some(pb::MemorySample {
                    total_bytes: 16 << 30,
                    ..Default::default()
                }),
                ..Default::default()
            })),
        }
    }

    fn name(s: &TimeSeries) -> &str {
        &s.labels[0].value
    }

    #[test]
    fn labels_are_sorted_with_name_first() {
        let s = series(
            "m",
            vec![
                ("host_id".into(), "h".into()),
                ("Zeta".into(), "z".into()),
                ("cpu".into(), "1".into()),
                ("_a".into(), "a".into()),
            ],
            1.0,
            5,
        );
        let names: Vec<&str> = s.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "Zeta", "_a", "cpu", "host_id"]);
        assert_eq!(s.labels[0].value, "m");
        assert_eq!(
            s.samples,
            vec![Sample {
                value: 1.0,
                timestamp: 5
            }]
        );
    }

    #[test]
    fn a_sample_record_is_the_agents_host_families_with_a_host_label() {
        let out = record_series("sim-0001", &sample_record()).unwrap();
        let busy = out
            .iter()
            .find(|s| name(s) == "jex_host_cpu_busy_ratio")
            .unwrap();
        assert_eq!(busy.samples[0].value, 0.25);
        assert_eq!(busy.samples[0].timestamp, 1_700_000_000_123);
        assert_eq!(
            busy.labels[1],
            Label {
                name: "host_id".into(),
                value: "sim-0001".into()
            }
        );
        let cores: Vec<_> = out
            .iter()
            .filter(|s| name(s) == "jex_host_cpu_core_busy_ratio")
            .collect();
        assert_eq!(cores.len(), 2);
        assert_eq!(
            cores[1].labels[1],
            Label {
                name: "cpu".into(),
                value: "1".into()
            }
        );
        assert_eq!(cores[1].samples[0].value, 0.4);
        let total = out
            .iter()
            .find(|s| name(s) == "jex_host_memory_total_bytes")
            .unwrap();
        assert_eq!(total.samples[0].value, (16u64 << 30) as f64);
        // Every series has exactly one sample and a host label; names are the agent's.
        for s in &out {
            assert!(name(s).starts_with("jex_host_"), "{s:?}");
            assert!(
                s.labels
                    .iter()
                    .any(|l| l.name == "host_id" && l.value == "sim-0001")
            );
            let names: Vec<_> = s.labels.iter().skip(1).map(|l| l.name.clone()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted);
        }
    }

    #[test]
    fn a_gap_record_is_one_gap_sample_counting_lost_seqs() {
        let gap = |first, last| pb::TelemetryRecord {
            seq: 20,
            time_unix_ms: 9_000,
            body: Some(pb::telemetry_record::Body::Gap(pb::Gap {
                reason: pb::GapReason::Evicted as i32,
                first_missing_seq: first,
                last_missing_seq: last,
                ..Default::default()
            })),
        };
        let out = record_series("h", &gap(5, 19)).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(name(&out[0]), GAP_SERIES);
        assert_eq!(out[0].samples[0].value, 15.0);
        assert_eq!(
            out[0].labels[2],
            Label {
                name: "reason".into(),
                value: "GAP_REASON_EVICTED".into()
            }
        );
        let only_time = record_series("h", &gap(0, 0)).unwrap();
        assert_eq!(only_time[0].samples[0].value, 1.0);
    }

    #[test]
    fn the_body_is_snappy_block_format_of_the_protobuf() {
        let request = WriteRequest {
            timeseries: record_series("h", &sample_record()).unwrap(),
        };
        let body = encode(&request).unwrap();
        // Block format: no stream identifier chunk (the framed format starts with 0xff "sNaPpY").
        assert_ne!(body.first(), Some(&0xff));
        let raw = snap::raw::Decoder::new().decompress_vec(&body).unwrap();
        assert_eq!(WriteRequest::decode(raw.as_slice()).unwrap(), request);
    }

    /// A one-connection-per-answer HTTP server answering `status`; returns its URL.
    async fn answering(status: &'static str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut buf = vec![0u8; 65536];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp
                    .write_all(
                        format!("HTTP/1.1 {status}\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope")
                            .as_bytes(),
                    )
                    .await;
            }
        });
        format!("http://{addr}/api/v1/write")
    }

    #[tokio::test]
    async fn answers_are_success_refusal_or_retry() {
        let body = encode(&WriteRequest::default()).unwrap();
        let mut ok = Client::new(
            &answering("204 No Content").await,
            Duration::from_secs(5),
            None,
        );
        ok.send(body.clone()).await.unwrap();
        let mut refused = Client::new(
            &answering("400 Bad Request").await,
            Duration::from_secs(5),
            None,
        );
        let e = refused.send(body.clone()).await.unwrap_err();
        assert!(matches!(e, SendError::Refused { status: 400, .. }), "{e}");
        assert_eq!(e.reason(), "http_400");
        assert!(
            e.to_string().ends_with("refused with HTTP 400: nope"),
            "{e}"
        );
        let mut too_large = Client::new(
            &answering("413 Payload Too Large").await,
            Duration::from_secs(5),
            None,
        );
        assert_eq!(
            too_large.send(body.clone()).await.unwrap_err().reason(),
            "http_4xx"
        );
        let mut down = Client::new(
            &answering("503 Service Unavailable").await,
            Duration::from_secs(5),
            None,
        );
        let e = down.send(body.clone()).await.unwrap_err();
        assert!(matches!(e, SendError::Retry { .. }), "{e}");
        assert!(e.to_string().contains("HTTP 503"), "{e}");
        // Nobody listening: retry too.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nobody = Client::new(
            &format!("http://127.0.0.1:{port}/w"),
            Duration::from_secs(5),
            None,
        );
        assert!(matches!(
            nobody.send(body).await.unwrap_err(),
            SendError::Retry { .. }
        ));
    }

    #[test]
    fn urls_split_into_authority_and_path() {
        let c = Client::new(
            "http://127.0.0.1:9090/api/v1/write",
            Duration::from_secs(1),
            None,
        );
        assert_eq!(c.authority, "127.0.0.1:9090");
        assert_eq!(c.path, "/api/v1/write");
        let c = Client::new("http://m:1", Duration::from_secs(1), None);
        assert_eq!(c.path, "/");
        let c = Client::new("https://prom:9443/w", Duration::from_secs(1), None);
        assert_eq!((c.authority.as_str(), c.path.as_str()), ("prom:9443", "/w"));
        assert_eq!(url_host("prom:9443"), "prom");
        assert_eq!(url_host("[::1]:9443"), "::1");
        assert_eq!(url_host("[::1]"), "::1");
        assert_eq!(url_host("prom"), "prom");
    }
}
