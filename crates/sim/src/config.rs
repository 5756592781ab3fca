//! The files the simulator writes: each agent's configuration (the agent's own TOML, parsed by
//! the agent's own loader, so a simulated agent is configured exactly as a real one), and the
//! relay's host list of the fleet contract (`[tls]`, optionally `[jetstream]`, `[[hosts]]`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The name of each simulated host's one erase target.
pub const ERASE_TARGET: &str = "tenant-disk";

/// Where one simulated agent keeps its files, under its own directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFiles {
    /// `<dir>/hosts/<host_id>`.
    pub dir: PathBuf,
}

impl HostFiles {
    /// The files of `host_id` under the simulator's directory `sim_dir`.
    pub fn new(sim_dir: &Path, host_id: &str) -> Self {
        Self {
            dir: sim_dir.join("hosts").join(host_id),
        }
    }
    /// The agent's state directory (spool and erase journal).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// The telemetry spool.
    pub fn spool_dir(&self) -> PathBuf {
        self.state_dir().join("spool")
    }
    /// The agent's certificate.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("agent.pem")
    }
    /// The agent's key (also signs erase certificates).
    pub fn key(&self) -> PathBuf {
        self.dir.join("agent.key")
    }
    /// The local status socket.
    pub fn status_socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    /// The erase target: a small plain file.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("tenant-disk.img")
    }
    /// The fake keys.
    pub fn keys_dir(&self) -> PathBuf {
        self.dir.join("keys")
    }
    /// The configuration file written for the agent (for people reading the directory; the
    /// simulator parses the same text).
    pub fn config(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }
}

/// What differs between the simulated agents' configurations.
#[derive(Debug, Clone)]
pub struct AgentSettings<'a> {
    /// The host's files.
    pub files: &'a HostFiles,
    /// The gRPC listener.
    pub listen: SocketAddr,
    /// The fleet CA (client certificates must chain to it).
    pub ca: &'a Path,
    /// Sampling interval.
    pub interval_ms: u64,
    /// The spool's size cap.
    pub spool_max_bytes: u64,
    /// The UUID pinned by the erase target.
    pub volume_uuid: &'a str,
}

/// A TOML basic string (quoted and escaped).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn toml_path(p: &Path) -> String {
    toml_str(&p.to_string_lossy())
}

/// The agent's configuration file for one simulated host: loopback listener, its own state,
/// spool and status socket, no `/metrics` listener (one port per host would be a thousand
/// ports; the relay's own metrics cover the fleet), and one erase target, a plain file, with
/// the `luks2` backend's pin (the fake keys stand in for its keyslots).
pub fn agent_toml(s: &AgentSettings<'_>) -> String {
    let td = crate::TRUST_DOMAIN;
    format!(
        r#"# jex-sim: the configuration of one simulated agent (regenerated on every start)
state_dir = {state}

[server]
listen = "{listen}"
status_socket = {socket}

[tls]
cert = {cert}
key = {key}
client_ca = {ca}

[roles]
controller = ["spiffe://{td}/controller"]
observer = ["spiffe://{td}/observer"]

[telemetry]
interval_ms = {interval}

[telemetry.spool]
dir = {spool}
max_bytes = {max_bytes}
fsync_interval_ms = {interval}

[logging]
dir = {logs}

[metrics]
enabled = false

[erase]
chunk_bytes = 1048576
checkpoint_bytes = 2097152

[[erase.targets]]
name = "{target}"
backend = "luks2"
device = {disk}
luks_uuid = "{uuid}"
"#,
        state = toml_path(&s.files.state_dir()),
        listen = s.listen,
        socket = toml_path(&s.files.status_socket()),
        cert = toml_path(&s.files.cert()),
        key = toml_path(&s.files.key()),
        ca = toml_path(s.ca),
        interval = s.interval_ms,
        spool = toml_path(&s.files.spool_dir()),
        max_bytes = s.spool_max_bytes,
        logs = toml_path(&s.files.dir.join("logs")),
        target = ERASE_TARGET,
        disk = toml_path(&s.files.disk()),
        uuid = s.volume_uuid,
    )
}

/// The relay's host list (fleet contract): its client identity and every host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The relay's mTLS client identity.
    pub tls: RelayTls,
    /// Where the relay publishes, when given (`--jetstream-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetstream: Option<Jetstream>,
    /// The hosts to follow.
    pub hosts: Vec<RelayHost>,
}

/// `[tls]`: an observer certificate of the fleet CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayTls {
    /// Observer certificate, PEM.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The fleet CA the agents' certificates chain to.
    pub ca: PathBuf,
}

/// `[jetstream]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jetstream {
    /// e.g. `nats://127.0.0.1:4222`.
    pub url: String,
}

/// One `[[hosts]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayHost {
    /// `sim-0001` …
    pub host_id: String,
    /// `https://<ip>:<port>`.
    pub addr: String,
    /// The name checked in the agent's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// The relay config could not be written.
#[derive(Debug, thiserror::Error)]
#[error("rendering the relay config as TOML")]
pub struct RenderError(#[from] toml::ser::Error);

impl RelayConfig {
    /// The TOML text, with a header saying where it came from.
    pub fn to_toml(&self) -> Result<String, RenderError> {
        let body = toml::to_string(self)?;
        Ok(format!(
            "# jex-relay host list written by jex-sim: {} simulated hosts\n{body}",
            self.hosts.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_config_parses_as_toml_with_the_contract_fields() {
        let config = RelayConfig {
            tls: RelayTls {
                cert: "/sim/pki/observer.pem".into(),
                key: "/sim/pki/observer.key".into(),
                ca: "/sim/pki/ca.pem".into(),
            },
            jetstream: Some(Jetstream {
                url: "nats://127.0.0.1:4222".into(),
            }),
            hosts: (0..3)
                .map(|i| RelayHost {
                    host_id: crate::host_id(i),
                    addr: format!("https://127.0.1.{}:7443", i + 1),
                    server_name: Some("localhost".into()),
                })
                .collect(),
        };
        let text = config.to_toml().expect("render");
        let value: toml::Table = text.parse().expect("parses as TOML");
        let tls = value["tls"].as_table().expect("[tls]");
        assert_eq!(tls["cert"].as_str(), Some("/sim/pki/observer.pem"));
        assert_eq!(tls["key"].as_str(), Some("/sim/pki/observer.key"));
        assert_eq!(tls["ca"].as_str(), Some("/sim/pki/ca.pem"));
        assert_eq!(
            value["jetstream"]["url"].as_str(),
            Some("nats://127.0.0.1:4222")
        );
        let hosts = value["hosts"].as_array().expect("[[hosts]]");
        assert_eq!(hosts.len(), 3);
        assert_eq!(hosts[1]["host_id"].as_str(), Some("sim-0002"));
        assert_eq!(hosts[1]["addr"].as_str(), Some("https://127.0.1.2:7443"));
        assert_eq!(hosts[1]["server_name"].as_str(), Some("localhost"));
        assert!(text.contains("[[hosts]]"), "{text}");
        let back: RelayConfig = toml::from_str(&text).expect("round trip");
        assert_eq!(back, config);

        let bare = RelayConfig {
            jetstream: None,
            ..config
        };
        let text = bare.to_toml().expect("render");
        assert!(!text.contains("jetstream"), "{text}");
    }

    #[test]
    fn the_agent_config_is_accepted_by_the_agents_loader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = HostFiles::new(&dir.path().join("a \"quoted\" dir"), "sim-0001");
        let text = agent_toml(&AgentSettings {
            files: &files,
            listen: "127.0.1.1:7443".parse().expect("addr"),
            ca: &dir.path().join("ca.pem"),
            interval_ms: 250,
            spool_max_bytes: 8 << 20,
            volume_uuid: "6c3a9b1e-2f4d-4c8a-9e1b-3d5f7a9c1e2b",
        });
        let config = jex_agent::config::Config::parse(&files.config(), &text).expect("parses");
        assert_eq!(config.server.listen.to_string(), "127.0.1.1:7443");
        assert!(!config.metrics.enabled);
        assert_eq!(config.telemetry.interval_ms, 250);
        assert_eq!(config.spool_config().dir, files.spool_dir());
        assert_eq!(config.spool_config().max_bytes, 8 << 20);
        assert_eq!(config.server.status_socket, files.status_socket());
        assert_eq!(config.erase.targets.len(), 1);
        assert_eq!(config.erase.targets[0].device, files.disk());
        assert_eq!(config.tls.cert, files.cert());
    }
}
