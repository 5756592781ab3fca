//! The JetStream sink: one NATS connection for the whole relay (async-nats on rustls/ring), the
//! stream created or updated at start and again after a publish failure, the resume cursor read
//! from the last message of a host's subject, and publishes whose acks the follower awaits in a
//! bounded window (see [`crate::follow`]).
//!
//! The stream: `JEX_TELEMETRY` (configurable), subjects `jex.telemetry.>`, file storage, the
//! configured duplicate window (default 2 min: a record re-sent within it is acknowledged as a
//! duplicate and not stored again) and max age (default 7 days). The message layout is in
//! [`crate::layout`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use async_nats::{HeaderMap, connection::State};
use jex_proto::v1 as pb;
use prost::Message;

use crate::config::JetStreamConfig;
use crate::layout::{self, Cursor};
pub use crate::sink::StoreError;
use crate::sink::{Ack, BoxFuture, Store, Stored};

/// The relay's JetStream connection.
pub struct Bus {
    cfg: JetStreamConfig,
    client: async_nats::Client,
    ctx: jetstream::Context,
    stream_ready: AtomicBool,
    /// One stream check at a time: a relay (re)starting with a thousand hosts asks once, not a
    /// thousand times at once (which the JetStream API answers with errors).
    stream_check: tokio::sync::Mutex<()>,
}

/// How long a session waits for the NATS connection before it fails.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// The NATS client's cap on unacknowledged publishes: above any fleet's hosts × `max_in_flight`
/// (see [`Bus::connect`]), so that only the relay's per-host windows bound them.
const CLIENT_ACK_CAP: usize = 1 << 26;

impl Bus {
    /// Connects (in the background: a NATS server that is not up yet is retried for ever).
    pub async fn connect(cfg: JetStreamConfig) -> Result<Self, StoreError> {
        let client = async_nats::ConnectOptions::new()
            .name(concat!("jex-relay/", env!("CARGO_PKG_VERSION")))
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    async_nats::Event::Disconnected => tracing::warn!("NATS disconnected"),
                    other => tracing::info!(event = %other, "NATS event"),
                }
            })
            .connect(cfg.url.as_str())
            .await
            .map_err(|e| StoreError::Disconnected {
                url: format!("{} ({e})", cfg.url),
            })?;
        // The client's own cap on unacknowledged publishes is shared by every host of the
        // connection, and a publish waits for a free place under it. Each host holds its acks in
        // its own window and polls them only between its publishes, so a host waiting there holds
        // places no one frees: with enough hosts (1,000 × 256 against the default 5,000) every
        // host waits at once and the relay stalls. The relay's per-host window
        // (`max_in_flight`) is the bound; the client's cap is set beyond any fleet's total.
        let ctx = jetstream::ContextBuilder::new()
            .max_ack_inflight(CLIENT_ACK_CAP)
            .build(client.clone());
        Ok(Self {
            cfg,
            client,
            ctx,
            stream_ready: AtomicBool::new(false),
            stream_check: tokio::sync::Mutex::new(()),
        })
    }

    /// The settings.
    pub fn config(&self) -> &JetStreamConfig {
        &self.cfg
    }

    /// Whether the client is connected now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Connected now, or within [`CONNECT_WAIT`]: a relay started beside its NATS server, or
    /// a server restarting, holds a session that long instead of failing it at once (each
    /// failure backs the host off, doubling).
    async fn wait_connected(&self) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
        while !self.connected() {
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Disconnected {
                    url: self.cfg.url.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn check_connected(&self) -> Result<(), StoreError> {
        if self.connected() {
            Ok(())
        } else {
            Err(StoreError::Disconnected {
                url: self.cfg.url.clone(),
            })
        }
    }

    /// Creates or updates the stream, once (again after [`Bus::stream_lost`]).
    pub async fn ensure_stream(&self) -> Result<(), StoreError> {
        if self.stream_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one_at_a_time = self.stream_check.lock().await;
        if self.stream_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        self.wait_connected().await?;
        let stream_err = |message: String| StoreError::Stream {
            stream: self.cfg.stream.clone(),
            message,
        };
        // An existing stream keeps what an operator chose (replicas, placement, limits): only the
        // duplicate window, the max age and the relay's subject are set.
        let existing = match self.ctx.get_stream(&self.cfg.stream).await {
            Ok(mut s) => Some(
                s.info()
                    .await
                    .map_err(|e| stream_err(e.to_string()))?
                    .config
                    .clone(),
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                ) =>
            {
                None
            }
            Err(e) => return Err(stream_err(e.to_string())),
        };
        let config = match existing {
            Some(mut c) => {
                if !c.subjects.contains(&layout::stream_subjects()) {
                    c.subjects.push(layout::stream_subjects());
                }
                c.duplicate_window = self.cfg.duplicate_window;
                c.max_age = self.cfg.max_age;
                c
            }
            None => stream::Config {
                name: self.cfg.stream.clone(),
                subjects: vec![layout::stream_subjects()],
                storage: stream::StorageType::File,
                duplicate_window: self.cfg.duplicate_window,
                max_age: self.cfg.max_age,
                ..Default::default()
            },
        };
        self.ctx
            .create_or_update_stream(config)
            .await
            .map_err(|e| stream_err(e.to_string()))?;
        tracing::info!(
            stream = %self.cfg.stream,
            subjects = %layout::stream_subjects(),
            duplicate_window_secs = self.cfg.duplicate_window.as_secs(),
            max_age_secs = self.cfg.max_age.as_secs(),
            "JetStream stream ready"
        );
        self.stream_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// A publish failed: check the stream again before the next session.
    pub fn stream_lost(&self) {
        self.stream_ready.store(false, Ordering::Release);
    }

    /// The resume cursor of `host_id`: the last message on its subject (none: seq 0, epoch 0).
    pub async fn cursor(&self, host_id: &str) -> Result<Cursor, StoreError> {
        self.wait_connected().await?;
        let subject = layout::subject(host_id);
        let err = |message: String| StoreError::Cursor {
            subject: subject.clone(),
            message,
        };
        let stream = self
            .ctx
            .get_stream_no_info(&self.cfg.stream)
            .await
            .map_err(|e| err(e.to_string()))?;
        match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(msg) => Ok(layout::cursor_from(&subject, |name| {
                msg.headers.get(name).map(|v| v.as_str())
            })?),
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                ) =>
            {
                Ok(Cursor::default())
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    fn headers(pairs: Vec<(&'static str, String)>) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k, v.as_str());
        }
        h
    }

    /// Sends one record; the returned future resolves to its ack.
    pub async fn publish_record(
        &self,
        host_id: &str,
        epoch: u64,
        record: &pb::TelemetryRecord,
    ) -> Result<PublishAckFuture, StoreError> {
        let subject = layout::subject(host_id);
        self.check_connected()?;
        let headers = Self::headers(layout::record_headers(host_id, epoch, record));
        self.ctx
            .publish_with_headers(subject.clone(), headers, record.encode_to_vec().into())
            .await
            .map_err(|e| StoreError::Publish {
                subject,
                what: format!("seq {}", record.seq),
                message: e.to_string(),
            })
    }

    /// Publishes the reset marker that opens `epoch` and waits for its ack.
    pub async fn publish_reset(&self, host_id: &str, epoch: u64) -> Result<(), StoreError> {
        let subject = layout::subject(host_id);
        self.check_connected()?;
        let err = |message: String| StoreError::Publish {
            subject: subject.clone(),
            what: format!("the reset marker of epoch {epoch}"),
            message,
        };
        let headers = Self::headers(layout::reset_headers(host_id, epoch));
        self.ctx
            .publish_with_headers(subject.clone(), headers, bytes::Bytes::new())
            .await
            .map_err(|e| err(e.to_string()))?
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}

impl Store for Bus {
    fn name(&self) -> &'static str {
        "jetstream"
    }

    fn max_in_flight(&self) -> usize {
        self.cfg.max_in_flight
    }

    fn ensure(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.ensure_stream())
    }

    fn lost(&self) {
        self.stream_lost();
    }

    fn cursor<'a>(&'a self, host_id: &'a str) -> BoxFuture<'a, Result<Cursor, StoreError>> {
        Box::pin(Bus::cursor(self, host_id))
    }

    fn publish<'a>(
        &'a self,
        host_id: &'a str,
        epoch: u64,
        record: &'a pb::TelemetryRecord,
    ) -> BoxFuture<'a, Result<Ack, StoreError>> {
        Box::pin(async move {
            let pending = self.publish_record(host_id, epoch, record).await?;
            let ack: Ack = Box::pin(async move {
                pending
                    .await
                    .map(|a| Stored {
                        duplicate: a.duplicate,
                    })
                    .map_err(|e| e.to_string())
            });
            Ok(ack)
        })
    }

    fn publish_reset<'a>(
        &'a self,
        host_id: &'a str,
        epoch: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Bus::publish_reset(self, host_id, epoch))
    }
}
