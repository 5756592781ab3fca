//! The controller side, for operators, demos and tests: connects to an agent over mTLS with a
//! controller (or observer) certificate and calls its RPCs.

use std::path::PathBuf;
use std::time::Duration;

use jex_proto::v1 as pb;
use jex_proto::v1::node_agent_client::NodeAgentClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// How to reach and authenticate to an agent.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The agent's address.
    #[arg(long, default_value = "https://127.0.0.1:7443", env = "JEX_AGENT_URL")]
    pub agent: String,
    /// The fleet CA (PEM) that the agent's certificate chains to.
    #[arg(long)]
    pub ca: PathBuf,
    /// The client certificate (PEM).
    #[arg(long)]
    pub cert: PathBuf,
    /// The client private key (PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// The name to check in the agent's certificate (defaults to the URL's host).
    #[arg(long)]
    pub server_name: Option<String>,
}

/// The client could not connect or call.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The URL or TLS settings are unusable.
    #[error("connecting to {url}")]
    Connect {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The URL does not parse.
    #[error("agent URL {url:?} is not valid: use e.g. https://127.0.0.1:7443")]
    Url {
        /// The URL.
        url: String,
    },
    /// A command-line value is unusable.
    #[error("{what}")]
    Usage {
        /// What to fix.
        what: String,
    },
    /// The agent answered with an error.
    #[error("{rpc}: {code:?}: {message}")]
    Rpc {
        /// The RPC.
        rpc: &'static str,
        /// The gRPC code.
        code: tonic::Code,
        /// The agent's message.
        message: String,
    },
}

impl CtlError {
    /// Wraps a status from `rpc`.
    pub fn rpc(rpc: &'static str, s: tonic::Status) -> Self {
        CtlError::Rpc {
            rpc,
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, CtlError> {
    std::fs::read(path).map_err(|source| CtlError::Read {
        path: path.clone(),
        source,
    })
}

/// Connects over mTLS.
pub async fn connect(c: &Connection) -> Result<NodeAgentClient<Channel>, CtlError> {
    let ca = read(&c.ca)?;
    let cert = read(&c.cert)?;
    let key = zeroize::Zeroizing::new(read(&c.key)?);
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, &*key));
    if let Some(name) = &c.server_name {
        tls = tls.domain_name(name.clone());
    }
    let conn_err = |source| CtlError::Connect {
        url: c.agent.clone(),
        source,
    };
    let channel = Channel::from_shared(c.agent.clone())
        .map_err(|_| CtlError::Url {
            url: c.agent.clone(),
        })?
        .tls_config(tls)
        .map_err(conn_err)?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(conn_err)?;
    Ok(NodeAgentClient::new(channel))
}

/// `GetHost`.
pub async fn host(client: &mut NodeAgentClient<Channel>) -> Result<pb::Host, CtlError> {
    let r = client
        .get_host(pb::GetHostRequest {})
        .await
        .map_err(|s| CtlError::rpc("GetHost", s))?;
    Ok(r.into_inner().host.unwrap_or_default())
}

/// Percent with two decimals from basis points.
pub fn pct(bp: u32) -> String {
    format!("{}.{:02}%", bp / 100, bp % 100)
}

/// One telemetry record as a single human-readable line.
pub fn format_record(r: &pb::TelemetryRecord) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    match &r.body {
        Some(pb::telemetry_record::Body::Sample(s)) => {
            let cpu = s.cpu.clone().unwrap_or_default();
            let mem = s.memory.unwrap_or_default();
            let load = s.load.unwrap_or_default();
            let swap = s.swap.unwrap_or_default();
            let cores: Vec<String> = cpu
                .core_busy_bp
                .iter()
                .map(|b| format!("{:>3}", b / 100))
                .collect();
            format!(
                "seq={:<6} cpu={:>7} [{}] load={:.2} mem used={:.2}/{:.2} GiB avail={:.2} GiB swap={:.2} GiB",
                r.seq,
                pct(cpu.busy_bp),
                cores.join(" "),
                load.one,
                mem.used_bytes as f64 / GIB,
                mem.total_bytes as f64 / GIB,
                mem.available_bytes as f64 / GIB,
                swap.used_bytes as f64 / GIB,
            )
        }
        Some(pb::telemetry_record::Body::Gap(g)) => {
            let reason = pb::GapReason::try_from(g.reason).map_or("unknown", |r| r.as_str_name());
            let secs = g.end_time_unix_ms.saturating_sub(g.start_time_unix_ms) as f64 / 1000.0;
            if g.first_missing_seq == 0 {
                format!("seq={:<6} GAP {reason}: no samples for {secs:.1} s", r.seq)
            } else {
                format!(
                    "seq={:<6} GAP {reason}: seqs {}..={} lost ({secs:.1} s)",
                    r.seq, g.first_missing_seq, g.last_missing_seq
                )
            }
        }
        None => format!("seq={:<6} (empty record)", r.seq),
    }
}
