//! The simulated fleet: one development CA, an observer and a controller certificate for the
//! relay and controllers, and N hosts, each a real agent started with
//! [`jex_agent::app::start_with`] on the current runtime, on its own loopback address.
//!
//! Faults, by host id: [`Fleet::restart`] (stop the agent, start it again on the same
//! directory: the spool resumes and an `AGENT_DOWN` gap covers the time it was down),
//! [`Fleet::stall`] (the sampler blocks for a while: no records, then one sample whose window
//! covers the stall), [`Fleet::fail`] / [`Fleet::recover`] (the sampler errs: a `SAMPLER_ERROR`
//! gap each interval), [`Fleet::lose_spool`] (stop, delete the spool, start: a new life whose
//! numbers start again at 1, so a resume with an old cursor gets `OUT_OF_RANGE`),
//! [`Fleet::kill`] / [`Fleet::start_host`] (the agent stops and stays down, as after SIGTERM:
//! streams end with `UNAVAILABLE`, then connections are refused).
//!
//! The PKI is made anew each time the fleet starts (the CA's key is not kept); the hosts'
//! spools, erase journals and disks stay in their directories, so a fleet started again on the
//! same directory resumes every host's sequence with an `AGENT_DOWN` gap.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jex_agent::app::{RunningAgent, Seams};
use jex_agent::pki::{DevCa, LeafSpec, PkiError, write_file};
use tokio::sync::Mutex;

use crate::chip::HostProfile;
use crate::config::{self, AgentSettings, HostFiles, RelayConfig, RelayHost, RelayTls};
use crate::keys::FileKeys;
use crate::source::{Faults, SynthSource};

/// What the fleet is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// Where everything is kept (PKI, one directory per host, the control socket). A tmpfs is
    /// best for large fleets: each followed host syncs its spool every interval.
    pub dir: PathBuf,
    /// How many hosts.
    pub hosts: u32,
    /// The index of the first host (0: `sim-0001`). Two simulators with the same seed, disjoint
    /// ranges and one CA ([`Fleet::start_with_ca`]) make one larger fleet.
    pub first_host: u32,
    /// Fixes every host's hardware and telemetry.
    pub seed: u64,
    /// Sampling interval, ms (at least 100).
    pub interval_ms: u64,
    /// The first host's address; host N listens on this plus N.
    pub base_ip: Ipv4Addr,
    /// The port every host listens on (0: any free port, kept across restarts).
    pub port: u16,
    /// Size of each host's erase target file.
    pub disk_bytes: u64,
    /// Each host's spool cap.
    pub spool_max_bytes: u64,
}

impl FleetConfig {
    /// `hosts` hosts in `dir`, every other setting its default (seed 1, 1 s, 127.0.1.1:7443,
    /// 4 MiB disks, 8 MiB spools).
    pub fn new(dir: impl Into<PathBuf>, hosts: u32) -> Self {
        Self {
            dir: dir.into(),
            hosts,
            first_host: 0,
            seed: 1,
            interval_ms: 1000,
            base_ip: Ipv4Addr::new(127, 0, 1, 1),
            port: 7443,
            disk_bytes: 4 << 20,
            spool_max_bytes: 8 << 20,
        }
    }

    /// The address of this simulator's `index`th host (0-based, from [`FleetConfig::first_host`]).
    pub fn addr(&self, index: u32) -> Result<SocketAddr, SimError> {
        let ip = u32::from(self.base_ip)
            .checked_add(index)
            .ok_or(SimError::Setting {
                key: "base-ip",
                message: format!(
                    "{} plus {} hosts runs past 255.255.255.255: pick a lower base address",
                    self.base_ip, self.hosts
                ),
            })?;
        Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), self.port))
    }

    fn validate(&self) -> Result<(), SimError> {
        let bad = |key, message: String| Err(SimError::Setting { key, message });
        if self.hosts == 0 {
            return bad("hosts", "0 hosts: ask for at least 1".into());
        }
        if self.first_host.checked_add(self.hosts).is_none() {
            return bad(
                "first-host",
                format!(
                    "{} hosts from host {} run past the last host number: fewer hosts or a lower first host",
                    self.hosts,
                    u64::from(self.first_host) + 1
                ),
            );
        }
        if self.interval_ms < 100 {
            return bad(
                "interval-ms",
                format!(
                    "{} ms is below the agent's shortest interval, 100 ms",
                    self.interval_ms
                ),
            );
        }
        if self.disk_bytes < 1 << 20 || !self.disk_bytes.is_multiple_of(1 << 20) {
            return bad(
                "disk-bytes",
                format!(
                    "{} is not a whole number of MiB, at least 1 MiB",
                    self.disk_bytes
                ),
            );
        }
        if !self.dir.is_absolute() {
            return bad(
                "dir",
                format!(
                    "{} is relative: give an absolute path (the relay config names files in it)",
                    self.dir.display()
                ),
            );
        }
        self.addr(self.hosts - 1).map(|_| ())
    }
}

/// The simulator could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A setting is unusable.
    #[error("--{key}: {message}")]
    Setting {
        /// The command-line option.
        key: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// A file or directory could not be made.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate could not be made.
    #[error("development PKI")]
    Pki(#[from] PkiError),
    /// The agent refused the configuration written for it.
    #[error("{host_id}: the agent refused its configuration")]
    Config {
        /// The host.
        host_id: String,
        /// The cause.
        #[source]
        source: jex_agent::config::ConfigError,
    },
    /// The agent did not start.
    #[error("{host_id}: the agent did not start")]
    Start {
        /// The host.
        host_id: String,
        /// The cause.
        #[source]
        source: Box<jex_agent::app::AppError>,
    },
    /// No such host in this fleet.
    #[error("no host {host_id} in this fleet (it has {first} to {last})")]
    UnknownHost {
        /// What was asked for.
        host_id: String,
        /// The first host id.
        first: String,
        /// The last host id.
        last: String,
    },
    /// The host is not in a state for this.
    #[error("{host_id} is {state}: {hint}")]
    State {
        /// The host.
        host_id: String,
        /// `running` or `down`.
        state: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
}

/// The common name of a simulated fleet's CA.
fn ca_name() -> String {
    format!("{} simulated fleet CA (jex-sim)", crate::TRUST_DOMAIN)
}

/// The CA of the simulator whose directory is `sim_dir` (its `pki/ca.pem` and `pki/ca.key`),
/// to start another part of the same fleet with [`Fleet::start_with_ca`].
pub fn load_ca(sim_dir: &Path) -> Result<DevCa, SimError> {
    let pki = FleetPki::in_dir(&sim_dir.join("pki"));
    let cert =
        std::fs::read_to_string(&pki.ca).map_err(io("reading the CA certificate", &pki.ca))?;
    let key = zeroize::Zeroizing::new(
        std::fs::read_to_string(&pki.ca_key).map_err(io("reading the CA key", &pki.ca_key))?,
    );
    Ok(DevCa::from_pem(&ca_name(), &cert, &key)?)
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SimError {
    let path = path.to_owned();
    move |source| SimError::Io { what, path, source }
}

fn private_dir(path: &Path) -> Result<(), SimError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(io("creating directory", path))
}

/// The files of the fleet's PKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetPki {
    /// The fleet CA certificate.
    pub ca: PathBuf,
    /// Its private key (a development CA: kept so that another simulator can issue from it).
    pub ca_key: PathBuf,
    /// The observer certificate (the relay's identity).
    pub observer_cert: PathBuf,
    /// Its key.
    pub observer_key: PathBuf,
    /// The controller certificate (Terminate and every other call).
    pub controller_cert: PathBuf,
    /// Its key.
    pub controller_key: PathBuf,
}

impl FleetPki {
    fn in_dir(dir: &Path) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            observer_cert: dir.join("observer.pem"),
            observer_key: dir.join("observer.key"),
            controller_cert: dir.join("controller.pem"),
            controller_key: dir.join("controller.key"),
        }
    }
}

/// One simulated host.
struct Host {
    profile: HostProfile,
    files: HostFiles,
    faults: Arc<Faults>,
    keys: FileKeys,
    state: Mutex<HostState>,
}

struct HostState {
    agent: Option<RunningAgent>,
    /// Where it listens (the bound port once started, when any port was asked).
    addr: SocketAddr,
    starts: u64,
}

/// A running simulated fleet.
pub struct Fleet {
    config: FleetConfig,
    pki: FleetPki,
    hosts: Vec<Host>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("config", &self.config)
            .field("hosts", &self.hosts.len())
            .finish_non_exhaustive()
    }
}

/// How long a restart waits for the previous life's status socket to close.
const SOCKET_RELEASE: Duration = Duration::from_secs(5);

impl Fleet {
    /// Makes the PKI and every host's files, then starts every agent.
    pub async fn start(config: FleetConfig) -> Result<Fleet, SimError> {
        let ca = DevCa::generate(&ca_name())?;
        Self::start_with_ca(config, &ca).await
    }

    /// [`Fleet::start`] with hosts, observer and controller certificates issued by `ca`, so
    /// that simulated hosts and real agents of the same fleet CA can be followed by one relay.
    pub async fn start_with_ca(config: FleetConfig, ca: &DevCa) -> Result<Fleet, SimError> {
        config.validate()?;
        private_dir(&config.dir)?;
        let pki_dir = config.dir.join("pki");
        private_dir(&pki_dir)?;
        let pki = FleetPki::in_dir(&pki_dir);
        let td = crate::TRUST_DOMAIN;
        write_file(&pki.ca, ca.cert_pem.as_bytes(), 0o644)?;
        // The development CA's key, so that another simulator can join this fleet (`--ca`).
        write_file(&pki.ca_key, ca.key_pem().as_bytes(), 0o600)?;
        for (role, cert, key) in [
            ("observer", &pki.observer_cert, &pki.observer_key),
            ("controller", &pki.controller_cert, &pki.controller_key),
        ] {
            let issued = ca.issue(&LeafSpec::client(
                role,
                vec![format!("spiffe://{td}/{role}")],
                365,
            ))?;
            write_file(cert, issued.cert_pem.as_bytes(), 0o644)?;
            write_file(key, issued.key_pem.as_bytes(), 0o600)?;
        }
        let mut hosts = Vec::with_capacity(config.hosts as usize);
        for position in 0..config.hosts {
            hosts.push(Self::prepare(&config, ca, position)?);
        }
        let fleet = Fleet { config, pki, hosts };
        for host in &fleet.hosts {
            let mut state = host.state.lock().await;
            fleet.start_agent(host, &mut state).await?;
        }
        tracing::info!(
            hosts = fleet.hosts.len(),
            dir = %fleet.config.dir.display(),
            "simulated fleet running"
        );
        Ok(fleet)
    }

    /// The directory, certificate, disk and fake key of this simulator's `position`th host.
    fn prepare(config: &FleetConfig, ca: &DevCa, position: u32) -> Result<Host, SimError> {
        let index = config.first_host + position;
        let profile = HostProfile::new(config.seed, index);
        let files = HostFiles::new(&config.dir, &profile.host_id);
        private_dir(&files.dir)?;
        let addr = config.addr(position)?;
        let issued = ca.issue(&LeafSpec {
            common_name: format!("jex-agent {}", profile.host_id),
            names: vec![
                "localhost".into(),
                "127.0.0.1".into(),
                addr.ip().to_string(),
            ],
            uris: vec![format!(
                "spiffe://{}/host/{}",
                crate::TRUST_DOMAIN,
                profile.host_id
            )],
            server: true,
            not_before: time::Duration::hours(-1),
            not_after: time::Duration::days(365),
        })?;
        write_file(&files.cert(), issued.cert_pem.as_bytes(), 0o644)?;
        write_file(&files.key(), issued.key_pem.as_bytes(), 0o600)?;
        let keys = FileKeys::new(&files.keys_dir());
        let disk = files.disk();
        if !disk.exists() {
            // A new host: its disk and the key that "encrypts" it. A host erased in an earlier
            // run keeps its erased disk and no key.
            std::fs::File::create(&disk)
                .and_then(|f| f.set_len(config.disk_bytes))
                .map_err(io("creating the erase target", &disk))?;
            keys.create(config::ERASE_TARGET, config.seed ^ u64::from(index))
                .map_err(io("creating the fake key in", &files.keys_dir()))?;
        }
        Ok(Host {
            profile,
            files,
            faults: Faults::new(),
            keys,
            state: Mutex::new(HostState {
                agent: None,
                addr,
                starts: 0,
            }),
        })
    }

    async fn start_agent(&self, host: &Host, state: &mut HostState) -> Result<(), SimError> {
        let host_id = &host.profile.host_id;
        // The previous life's status socket thread is stopped after the server; bind only once
        // it no longer answers.
        let socket = host.files.status_socket();
        let deadline = tokio::time::Instant::now() + SOCKET_RELEASE;
        while tokio::net::UnixStream::connect(&socket).await.is_ok()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let text = config::agent_toml(&AgentSettings {
            files: &host.files,
            listen: state.addr,
            ca: &self.pki.ca,
            interval_ms: self.config.interval_ms,
            spool_max_bytes: self.config.spool_max_bytes,
            volume_uuid: &host.profile.volume_uuid,
        });
        let path = host.files.config();
        std::fs::write(&path, &text).map_err(io("writing", &path))?;
        let agent_config =
            jex_agent::config::Config::parse(&path, &text).map_err(|source| SimError::Config {
                host_id: host_id.clone(),
                source,
            })?;
        let seams = Seams {
            host: Some(host.profile.host_info()),
            source: Some(Box::new(SynthSource::new(
                self.config.seed,
                &host.profile,
                Duration::from_millis(self.config.interval_ms),
                host.faults.clone(),
            ))),
            key_destroyer_factory: Some(host.keys.factory()),
        };
        let agent = jex_agent::app::start_with(agent_config, seams)
            .await
            .map_err(|source| SimError::Start {
                host_id: host_id.clone(),
                source: Box::new(source),
            })?;
        state.addr = agent.local_addr();
        state.starts += 1;
        tracing::info!(host_id = %host_id, addr = %state.addr, starts = state.starts, "simulated host serving");
        state.agent = Some(agent);
        Ok(())
    }

    async fn stop_agent(host: &Host, state: &mut HostState) -> bool {
        // A stalled sampler would hold the hub's stop until the stall ends.
        host.faults.unstall();
        match state.agent.take() {
            Some(agent) => {
                agent.shutdown().await;
                tracing::info!(host_id = %host.profile.host_id, "simulated host stopped");
                true
            }
            None => false,
        }
    }

    fn host(&self, host_id: &str) -> Result<&Host, SimError> {
        crate::host_index(host_id)
            .and_then(|i| i.checked_sub(self.config.first_host))
            .and_then(|i| self.hosts.get(i as usize))
            .ok_or_else(|| SimError::UnknownHost {
                host_id: host_id.to_owned(),
                first: crate::host_id(self.config.first_host),
                last: crate::host_id(
                    (self.config.first_host + self.config.hosts).saturating_sub(1),
                ),
            })
    }

    /// The fleet's settings.
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// The PKI files.
    pub fn pki(&self) -> &FleetPki {
        &self.pki
    }

    /// Every host id, in order.
    pub fn host_ids(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| h.profile.host_id.clone())
            .collect()
    }

    /// The profile of a host.
    pub fn profile(&self, host_id: &str) -> Result<&HostProfile, SimError> {
        Ok(&self.host(host_id)?.profile)
    }

    /// The directory of a host.
    pub fn host_dir(&self, host_id: &str) -> Result<PathBuf, SimError> {
        Ok(self.host(host_id)?.files.dir.clone())
    }

    /// Where a host listens.
    pub async fn addr(&self, host_id: &str) -> Result<SocketAddr, SimError> {
        Ok(self.host(host_id)?.state.lock().await.addr)
    }

    /// The relay's host list for this fleet; `jetstream_url` adds a `[jetstream]` table.
    pub async fn relay_config(&self, jetstream_url: Option<&str>) -> RelayConfig {
        let mut hosts = Vec::with_capacity(self.hosts.len());
        for host in &self.hosts {
            let addr = host.state.lock().await.addr;
            hosts.push(RelayHost {
                host_id: host.profile.host_id.clone(),
                addr: format!("https://{addr}"),
                server_name: Some("localhost".to_owned()),
            });
        }
        RelayConfig {
            tls: RelayTls {
                cert: self.pki.observer_cert.clone(),
                key: self.pki.observer_key.clone(),
                ca: self.pki.ca.clone(),
            },
            jetstream: jetstream_url.map(|url| config::Jetstream {
                url: url.to_owned(),
            }),
            hosts,
        }
    }

    /// Stops a host's agent and starts it again on the same directory.
    pub async fn restart(&self, host_id: &str) -> Result<String, SimError> {
        let host = self.host(host_id)?;
        let mut state = host.state.lock().await;
        let was_running = Self::stop_agent(host, &mut state).await;
        self.start_agent(host, &mut state).await?;
        Ok(if was_running {
            format!("{host_id} restarted on {}", state.addr)
        } else {
            format!("{host_id} was down; started on {}", state.addr)
        })
    }

    /// Stops a host's agent (as SIGTERM does) and leaves it down.
    pub async fn kill(&self, host_id: &str) -> Result<String, SimError> {
        let host = self.host(host_id)?;
        let mut state = host.state.lock().await;
        if !Self::stop_agent(host, &mut state).await {
            return Err(SimError::State {
                host_id: host_id.to_owned(),
                state: "down",
                hint: "it is already stopped; `start` it",
            });
        }
        Ok(format!(
            "{host_id} stopped; `start {host_id}` brings it back"
        ))
    }

    /// Starts a host that was stopped.
    pub async fn start_host(&self, host_id: &str) -> Result<String, SimError> {
        let host = self.host(host_id)?;
        let mut state = host.state.lock().await;
        if state.agent.is_some() {
            return Err(SimError::State {
                host_id: host_id.to_owned(),
                state: "running",
                hint: "use `restart` to stop and start it",
            });
        }
        self.start_agent(host, &mut state).await?;
        Ok(format!("{host_id} started on {}", state.addr))
    }

    /// Stops a host, deletes its spool and starts it again: a new telemetry life.
    pub async fn lose_spool(&self, host_id: &str) -> Result<String, SimError> {
        let host = self.host(host_id)?;
        let mut state = host.state.lock().await;
        Self::stop_agent(host, &mut state).await;
        let spool = host.files.spool_dir();
        match std::fs::remove_dir_all(&spool) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("deleting the spool", &spool)(e)),
        }
        self.start_agent(host, &mut state).await?;
        Ok(format!(
            "{host_id} lost its spool and started again on {}: its numbers start over",
            state.addr
        ))
    }

    /// Blocks a host's sampler for `duration`.
    pub fn stall(&self, host_id: &str, duration: Duration) -> Result<String, SimError> {
        self.host(host_id)?.faults.stall_for(duration);
        Ok(format!(
            "{host_id} sampler stalled for {} ms",
            duration.as_millis()
        ))
    }

    /// Makes a host's sampler fail until [`Fleet::recover`].
    pub fn fail(&self, host_id: &str) -> Result<String, SimError> {
        self.host(host_id)?.faults.set_failing(true);
        Ok(format!(
            "{host_id} sampler failing: a SAMPLER_ERROR gap each interval until `recover`"
        ))
    }

    /// Ends a host's failure and stall.
    pub fn recover(&self, host_id: &str) -> Result<String, SimError> {
        let host = self.host(host_id)?;
        host.faults.set_failing(false);
        host.faults.unstall();
        Ok(format!("{host_id} sampler healthy"))
    }

    /// One line per host (or for one host): id, address, state, part, faults.
    pub async fn status(&self, host_id: Option<&str>) -> Result<Vec<String>, SimError> {
        let hosts: Vec<&Host> = match host_id {
            Some(id) => vec![self.host(id)?],
            None => self.hosts.iter().collect(),
        };
        let mut lines = Vec::with_capacity(hosts.len());
        for host in hosts {
            let state = host.state.lock().await;
            let mut line = format!(
                "{} https://{} {} starts={} chip={:?} model={}",
                host.profile.host_id,
                state.addr,
                if state.agent.is_some() {
                    "running"
                } else {
                    "down"
                },
                state.starts,
                host.profile.chip.name,
                host.profile.chip.model,
            );
            if host.faults.is_failing() {
                line.push_str(" failing");
            }
            if let Some(left) = host.faults.stall_left() {
                line.push_str(&format!(" stalled_ms={}", left.as_millis()));
            }
            lines.push(line);
        }
        Ok(lines)
    }

    /// Stops every agent.
    pub async fn shutdown(&self) {
        for host in &self.hosts {
            let mut state = host.state.lock().await;
            Self::stop_agent(host, &mut state).await;
        }
        tracing::info!(hosts = self.hosts.len(), "simulated fleet stopped");
    }
}
