//! The relay process: the configuration, the `/metrics` listener, the JetStream connection,
//! one follower task per host, and the signals: SIGHUP reloads the host list (new hosts are
//! started, removed ones stopped, changed ones restarted, the others' streams untouched; a file
//! that does not load keeps the current list and logs why), SIGTERM and SIGINT stop.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, ConfigError, HostEntry};
use crate::follow::{self, Shared};
use crate::jetstream::Bus;
use crate::metrics::{self, Metrics};
use crate::remote_write::RemoteWriteFactory;
use crate::sink::{SinkFactory, StoreError};

/// The relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The `/metrics` listener could not bind.
    #[error("binding /metrics on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Signals could not be set up.
    #[error("installing signal handlers")]
    Signals(#[source] std::io::Error),
    /// The remote_write receiver's TLS files did not load.
    #[error(transparent)]
    RemoteWriteTls(#[from] crate::remote_write::TlsSetupError),
    /// NATS could not be set up.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Follower {
    entry: HostEntry,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The running followers, by host id.
struct Followers {
    shared: Arc<Shared<Bus>>,
    by_id: BTreeMap<String, Follower>,
}

impl Followers {
    fn start(&mut self, entry: HostEntry) {
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(follow::follow(entry.clone(), self.shared.clone(), rx));
        self.by_id
            .insert(entry.host_id.clone(), Follower { entry, stop, task });
    }

    async fn stop(&mut self, ids: &[String]) {
        let mut tasks = Vec::new();
        for id in ids {
            if let Some(f) = self.by_id.remove(id) {
                let _ = f.stop.send(true);
                tasks.push(f.task);
            }
        }
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }

    /// Makes the running set `hosts`; returns (started, stopped, kept).
    async fn apply(&mut self, hosts: &[HostEntry]) -> (usize, usize, usize) {
        let wanted: BTreeMap<&str, &HostEntry> =
            hosts.iter().map(|h| (h.host_id.as_str(), h)).collect();
        let to_stop: Vec<String> = self
            .by_id
            .iter()
            .filter(|(id, f)| wanted.get(id.as_str()) != Some(&&f.entry))
            .map(|(id, _)| id.clone())
            .collect();
        self.stop(&to_stop).await;
        let mut started = 0;
        for h in hosts {
            if !self.by_id.contains_key(&h.host_id) {
                self.start(h.clone());
                started += 1;
            }
        }
        let kept = hosts.len() - started;
        (started, to_stop.len(), kept)
    }
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(path: &Path) -> Result<(), RunError> {
    let config = Config::load(path)?;
    let metrics = Arc::new(Metrics::default());
    if config.metrics.enabled {
        let listener = metrics::bind(config.metrics.listen)
            .await
            .map_err(|source| RunError::Bind {
                addr: config.metrics.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| RunError::Bind {
            addr: config.metrics.listen,
            source,
        })?;
        tracing::info!(addr = %addr, "metrics serving");
        tokio::spawn(metrics::serve(listener, metrics.clone()));
    }
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let bus = Arc::new(Bus::connect(config.jetstream.clone()).await?);
    tracing::info!(
        config = %path.display(),
        hosts = config.hosts.len(),
        jetstream = %config.jetstream.url,
        stream = %config.jetstream.stream,
        remote_write = config.remote_write.as_ref().map_or("", |r| r.url.as_str()),
        "relay started"
    );
    let mut sinks: Vec<Arc<dyn SinkFactory>> = Vec::new();
    if let Some(rw) = &config.remote_write {
        sinks.push(Arc::new(RemoteWriteFactory::new(rw.clone())?));
    }
    let shared = Arc::new(Shared {
        store: bus,
        sinks,
        metrics,
        tls: config.tls.clone(),
        follow: config.follow.clone(),
    });
    let mut followers = Followers {
        shared,
        by_id: BTreeMap::new(),
    };
    followers.apply(&config.hosts).await;
    let mut current = config;
    loop {
        tokio::select! {
            _ = hup.recv() => reload(path, &mut current, &mut followers).await,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping");
    let all: Vec<String> = followers.by_id.keys().cloned().collect();
    followers.stop(&all).await;
    tracing::info!("stopped");
    Ok(())
}

async fn reload(path: &Path, current: &mut Config, followers: &mut Followers) {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                config = %path.display(),
                "reload refused, the current host list stays: {}",
                jex_agent::error_chain(&e)
            );
            return;
        }
    };
    let mut fixed = Vec::new();
    if new.tls != current.tls {
        fixed.push("tls");
    }
    if new.jetstream != current.jetstream {
        fixed.push("jetstream");
    }
    if new.remote_write != current.remote_write {
        fixed.push("remote_write");
    }
    if new.metrics != current.metrics {
        fixed.push("metrics");
    }
    if new.follow != current.follow {
        fixed.push("follow");
    }
    if !fixed.is_empty() {
        tracing::warn!(
            tables = %fixed.join(", "),
            "a reload changes only [[hosts]]: restart the relay for the other tables"
        );
    }
    let (started, stopped, kept) = followers.apply(&new.hosts).await;
    tracing::info!(
        config = %path.display(),
        hosts = new.hosts.len(),
        started,
        stopped,
        kept,
        "host list reloaded"
    );
    current.hosts = new.hosts;
}

/// `jex-relay check-config`: the summary of a valid file.
pub fn summary(config: &Config, path: &Path) -> String {
    format!(
        "{}: OK: {} host(s); JetStream {} stream {} (duplicate window {} s, max age {} s, {} in flight per host); remote_write {}; /metrics {}",
        path.display(),
        config.hosts.len(),
        config.jetstream.url,
        config.jetstream.stream,
        config.jetstream.duplicate_window.as_secs(),
        config.jetstream.max_age.as_secs(),
        config.jetstream.max_in_flight,
        config.remote_write.as_ref().map_or("off".to_owned(), |r| {
            match &r.tls {
                None => r.url.clone(),
                Some(t) => format!(
                    "{} (TLS 1.3, CA {}{})",
                    r.url,
                    t.ca.display(),
                    if t.identity.is_some() {
                        ", client certificate"
                    } else {
                        ""
                    }
                ),
            }
        }),
        if config.metrics.enabled {
            config.metrics.listen.to_string()
        } else {
            "off".into()
        },
    )
}
