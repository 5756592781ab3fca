//! Harness for the end-to-end tests: a development PKI (plus the bad certificates the tests
//! need), real agent processes started from the agent's own entry point, and mTLS clients.
//!
//! An agent here is a child process (`jex-agent-e2e run --config …`) on `127.0.0.1:0`, its
//! `/metrics` on another `127.0.0.1:0` (so that agents run side by side); the harness learns
//! the ports from the agent's own JSON log lines `metrics serving` and `agent serving`, so the
//! tests also read the log the way an SRE would.
//!
//! Every wait on a child process here has a deadline ([`wait_within`], [`output_within`]): a
//! child that hangs (an agent stuck in its drain, a command that never returns) is killed and the
//! test fails saying what did not exit and in how long, instead of holding CI until its budget
//! runs out.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use jex_agent::pki::{DevCa, DevPkiPaths, LeafSpec};
use jex_proto::v1::node_agent_client::NodeAgentClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The trust domain of the test PKI.
pub const TRUST_DOMAIN: &str = "fleet.example";
/// The host id of the test agent.
pub const HOST_ID: &str = "h-e2e";

/// A test PKI in a temporary directory.
pub struct TestPki {
    /// The directory (kept alive with the struct).
    pub dir: tempfile::TempDir,
    /// The standard files.
    pub paths: DevPkiPaths,
    /// The fleet CA, to issue more.
    pub ca: DevCa,
}

/// A client certificate and key written to files.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    /// Certificate PEM file.
    pub cert: PathBuf,
    /// Key PEM file.
    pub key: PathBuf,
}

impl TestPki {
    /// A fresh PKI.
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (paths, ca) =
            jex_agent::pki::write_dev_pki(&dir.path().join("pki"), TRUST_DOMAIN, HOST_ID)?;
        Ok(Self { dir, paths, ca })
    }

    /// The controller's files.
    pub fn controller(&self) -> ClientFiles {
        ClientFiles {
            cert: self.paths.controller_cert.clone(),
            key: self.paths.controller_key.clone(),
        }
    }

    /// The observer's files.
    pub fn observer(&self) -> ClientFiles {
        ClientFiles {
            cert: self.paths.observer_cert.clone(),
            key: self.paths.observer_key.clone(),
        }
    }

    /// Issues a client certificate from `ca` (or the fleet CA) and writes it as `name`.
    pub fn issue(&self, name: &str, ca: Option<&DevCa>, spec: &LeafSpec) -> Result<ClientFiles> {
        let issued = ca.unwrap_or(&self.ca).issue(spec)?;
        let files = ClientFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
        };
        jex_agent::pki::write_file(&files.cert, issued.cert_pem.as_bytes(), 0o644)?;
        jex_agent::pki::write_file(&files.key, issued.key_pem.as_bytes(), 0o600)?;
        Ok(files)
    }
}

/// Options for a test agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Sampling interval.
    pub interval_ms: u64,
    /// The spool's `fsync_interval_ms`; `None`: the sampling interval, as the demo config has.
    pub fsync_interval_ms: Option<u64>,
    /// Extra TOML appended to the generated config (e.g. `[erase]` tables, `[server.limits]`).
    pub extra_toml: String,
    /// The open-file limit (soft, hard) the agent process starts with; `None` inherits ours.
    pub nofile: Option<(u64, u64)>,
    /// The gRPC listen address; `None`: `127.0.0.1:0`, a free port.
    pub listen: Option<std::net::SocketAddr>,
    /// Lines added to the `[metrics]` table (which listens on `127.0.0.1:0`), e.g. `tls = true`.
    pub metrics: String,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            interval_ms: 100,
            fsync_interval_ms: None,
            extra_toml: String::new(),
            nofile: None,
            listen: None,
            metrics: String::new(),
        }
    }
}

/// A running agent process; killed when dropped.
pub struct AgentProcess {
    child: Child,
    /// Its gRPC address.
    pub addr: std::net::SocketAddr,
    /// Its `/metrics` address (from its `metrics serving` log line), when enabled.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Its state/log directory.
    pub dir: PathBuf,
}

impl AgentProcess {
    /// The agent's JSON log, as text.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs").join("agent.log")).unwrap_or_default()
    }

    /// Waits until the log holds a line containing every needle, or fails after `timeout`.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Result<String> {
        let end = Instant::now() + timeout;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return Ok(line.to_owned());
            }
            if Instant::now() > end {
                bail!("no log line with {needles:?} in:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The local status socket.
    pub fn status_socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// Bytes the agent has logged so far: `agent.log` and its rotations, and stderr.
    pub fn log_bytes(&self) -> u64 {
        let logs = self.dir.join("logs");
        let rotated = std::fs::read_dir(&logs)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("agent.log"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum::<u64>()
            })
            .unwrap_or(0);
        let stderr = std::fs::metadata(self.dir.join("stderr.log")).map_or(0, |m| m.len());
        rotated + stderr
    }

    /// The agent's (soft, hard) open-file limit, from `/proc/<pid>/limits`.
    pub fn nofile_limit(&self) -> Result<(u64, u64)> {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid()))?;
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .ok_or_else(|| anyhow::anyhow!("no open-file line in {limits}"))?;
        let nums: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        match nums.as_slice() {
            [soft, hard, ..] => Ok((*soft, *hard)),
            _ => bail!("cannot read {line:?}"),
        }
    }

    /// The agent's resident set size in KiB, from `/proc/<pid>/status`.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{}/status", self.pid()))
    }

    /// Runs `jex-agent status` (the real command line) against this agent; its output, or why
    /// it failed (also when it has not answered within [`COMMAND_DEADLINE`]).
    pub fn status_cli(&self) -> Result<String> {
        let mut command = Command::new(agent_bin()?);
        command
            .arg("status")
            .arg("--socket")
            .arg(self.status_socket());
        let out = output_within(&mut command, COMMAND_DEADLINE)?;
        if !out.status.success() {
            bail!(
                "jex-agent status exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)?;
        Ok(())
    }

    /// SIGKILL and reap (failing if the process is not gone within [`REAP_DEADLINE`]).
    pub fn kill9(mut self) -> Result<()> {
        self.child.kill()?;
        wait_within(&mut self.child, REAP_DEADLINE, "the agent after SIGKILL")?;
        Ok(())
    }

    /// SIGTERM and wait for a clean exit; returns the exit code and how long it took. An agent
    /// that has not exited within [`DRAIN_DEADLINE`] is killed and the call fails, with the end
    /// of its log.
    pub fn terminate(mut self) -> Result<(Option<i32>, Duration)> {
        let start = Instant::now();
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        let status = wait_within(&mut self.child, DRAIN_DEADLINE, "the agent after SIGTERM")
            .with_context(|| format!("the end of its log:\n{}", tail(&self.log(), 40)))?;
        Ok((status.code(), start.elapsed()))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = self.child.kill();
        if let Err(e) = wait_within(&mut self.child, REAP_DEADLINE, "the agent being dropped") {
            // Nothing to fail from a drop: say so, the test's own result stands.
            eprintln!("jex-e2e: {e:#}");
        }
    }
}

/// How long an agent may take to exit after SIGTERM: its drain (20 s by default) and margin.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(60);
/// How long a killed process may take to be reaped.
pub const REAP_DEADLINE: Duration = Duration::from_secs(10);
/// How long a one-shot command (`jex-agent status`, `check-config`, …) may run.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// Waits for `child` to exit, for at most `timeout`. When it has not, it is killed (SIGKILL),
/// reaped (a few more seconds at most) and the wait fails naming `what` and the deadline.
pub fn wait_within(child: &mut Child, timeout: Duration, what: &str) -> Result<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= end {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let reap_end = Instant::now() + Duration::from_secs(5);
    let reaped = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < reap_end => std::thread::sleep(Duration::from_millis(20)),
            _ => break None,
        }
    };
    bail!(
        "{what} (pid {}) did not exit within {timeout:?}: killed{}",
        child.id(),
        if reaped.is_some() {
            ""
        } else {
            ", and still not reaped 5 s later"
        }
    )
}

/// Runs `command` to the end like [`Command::output`] (stdin closed, stdout and stderr
/// captured), for at most `timeout` (see [`wait_within`]).
pub fn output_within(command: &mut Command, timeout: Duration) -> Result<Output> {
    use std::io::Read;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {command:?}"))?;
    // Read both pipes while waiting, so a chatty child never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = wait_within(&mut child, timeout, &format!("{command:?}"))?;
    // The child has exited: its pipes close unless it left a descendant holding them.
    let join = |reader: std::thread::JoinHandle<Vec<u8>>| {
        let end = Instant::now() + REAP_DEADLINE;
        while !reader.is_finished() {
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        reader.join().ok()
    };
    let (Some(stdout), Some(stderr)) = (join(stdout), join(stderr)) else {
        bail!("{command:?} exited but its output pipes stayed open (a child of it still runs?)");
    };
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Writes the agent config for `dir` and returns its path.
pub fn write_config(pki: &TestPki, dir: &Path, opts: &AgentOptions) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut text = jex_agent::demo::demo_config(dir, &pki.paths, opts.interval_ms);
    if let Some(ms) = opts.fsync_interval_ms {
        let demo = format!("\nfsync_interval_ms = {}\n", opts.interval_ms);
        if !text.contains(&demo) {
            bail!("the demo config has no `{}` line to replace", demo.trim());
        }
        text = text.replace(&demo, &format!("\nfsync_interval_ms = {ms}\n"));
    }
    if let Some(addr) = opts.listen {
        // The first `listen` is `[server]`'s; `[metrics]` has one too.
        text = text.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{addr}\""),
            1,
        );
    }
    if !opts.metrics.is_empty() {
        if !text.contains("\n[metrics]\n") {
            bail!("the demo config has no [metrics] table to add to");
        }
        text = text.replace(
            "\n[metrics]\n",
            &format!("\n[metrics]\n{}\n", opts.metrics.trim_end()),
        );
    }
    text.push_str(&opts.extra_toml);
    let path = dir.join("agent.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Starts an agent process on `dir` (state, spool and logs live there; reuse `dir` to restart).
pub fn start_agent(pki: &TestPki, dir: &Path, opts: &AgentOptions) -> Result<AgentProcess> {
    let config = write_config(pki, dir, opts)?;
    let log_path = dir.join("logs").join("agent.log");
    // Lines from a previous run on the same dir must not be mistaken for this one's.
    let previous = std::fs::read_to_string(&log_path)
        .map(|s| s.len())
        .unwrap_or(0);
    let stderr = std::fs::File::create(dir.join("stderr.log"))?;
    let mut command = match opts.nofile {
        // The shell sets the limits and then becomes the agent.
        Some((soft, hard)) => {
            let mut c = Command::new("bash");
            c.arg("-c")
                .arg(format!(
                    "ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\" \"$@\""
                ))
                .arg(agent_bin()?);
            c
        }
        None => Command::new(agent_bin()?),
    };
    let child = command
        .args(["run", "--config"])
        .arg(&config)
        .env("AGENT_LOG", "info,jex_agent=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .context("spawning the agent")?;
    let mut agent = AgentProcess {
        child,
        addr: "127.0.0.1:1".parse()?,
        metrics_addr: None,
        dir: dir.to_owned(),
    };
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(addr) = log
            .get(previous..)
            .and_then(|l| logged_addr(l, "agent serving"))
        {
            agent.addr = addr;
            agent.metrics_addr = log
                .get(previous..)
                .and_then(|l| logged_addr(l, "metrics serving"));
            return Ok(agent);
        }
        if let Some(status) = agent.child.try_wait()? {
            let err = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            bail!("agent exited with {status} before serving:\n{err}");
        }
        if Instant::now() > end {
            bail!("agent did not log `agent serving` within 20 s:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The agent binary cargo built for this package's integration tests (`target/<profile>/`,
/// next to the `deps/` directory the test binary runs from).
pub fn agent_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("test binary {} has no profile directory", exe.display()))?;
    let bin = profile_dir.join("jex-agent-e2e");
    if !bin.exists() {
        bail!(
            "{} is missing: run the tests with cargo, which builds it",
            bin.display()
        );
    }
    Ok(bin)
}

/// The `addr` field of the first log line whose message is `message`.
fn logged_addr(log: &str, message: &str) -> Option<std::net::SocketAddr> {
    log.lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let fields = v.get("fields")?;
        (fields.get("message")?.as_str()? == message).then_some(())?;
        fields.get("addr")?.as_str()?.parse().ok()
    })
}

/// A TLS client configuration: trusts the fleet CA, presents `client` if given.
pub fn tls_config(pki: &TestPki, client: Option<&ClientFiles>) -> Result<ClientTlsConfig> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&pki.paths.ca_cert)?))
        .domain_name("localhost");
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&c.cert)?,
            std::fs::read(&c.key)?,
        ));
    }
    Ok(tls)
}

/// A NodeAgent client over mTLS (the connection itself may succeed even when the agent will
/// refuse the certificate: under TLS 1.3 the refusal surfaces on the first RPC).
pub async fn client(
    pki: &TestPki,
    agent: &AgentProcess,
    who: Option<&ClientFiles>,
) -> Result<NodeAgentClient<Channel>> {
    let channel = Channel::from_shared(format!("https://{}", agent.addr))?
        .tls_config(tls_config(pki, who)?)?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    Ok(NodeAgentClient::new(channel))
}

/// A channel over mTLS for other services (health, reflection).
pub async fn channel(pki: &TestPki, agent: &AgentProcess, who: &ClientFiles) -> Result<Channel> {
    Ok(Channel::from_shared(format!("https://{}", agent.addr))?
        .tls_config(tls_config(pki, Some(who))?)?
        .connect()
        .await?)
}

/// Opens a live telemetry stream as the controller, after `after_seq`, `max_batch` records per
/// message (0: the agent's default).
pub async fn open_telemetry(
    pki: &TestPki,
    agent: &AgentProcess,
    after_seq: u64,
    max_batch: u32,
) -> Result<tonic::Streaming<jex_proto::v1::StreamTelemetryResponse>> {
    let mut c = client(pki, agent, Some(&pki.controller())).await?;
    let req = jex_proto::v1::StreamTelemetryRequest {
        after_seq,
        max_batch_records: max_batch,
        history_only: false,
    };
    Ok(c.stream_telemetry(req).await?.into_inner())
}

/// Follows `WatchErase` of `operation_id` until the stream ends, within `deadline` per message;
/// its last message. On a deadline the error carries the last message and the agent's log.
pub async fn watch_to_end(
    c: &mut NodeAgentClient<Channel>,
    agent: &AgentProcess,
    operation_id: &str,
    deadline: Duration,
) -> Result<jex_proto::v1::WatchEraseResponse> {
    let mut stream = c
        .watch_erase(jex_proto::v1::WatchEraseRequest {
            operation_id: operation_id.to_owned(),
        })
        .await?
        .into_inner();
    let mut last = None;
    loop {
        match tokio::time::timeout(deadline, stream.message()).await {
            Ok(message) => match message? {
                Some(m) => last = Some(m),
                None => break,
            },
            Err(_) => bail!(
                "WatchErase did not end within {deadline:?}; last {last:?}; log:\n{}",
                agent.log()
            ),
        }
    }
    last.context("no WatchErase message")
}

/// A certificate verified against the fleet CA `ca` (PEM) and `nonce`, as the version 2
/// document every certificate of this agent is.
pub fn verify_v2(
    certificate: &jex_attest::SignedCertificate,
    ca: &[u8],
    nonce: Option<&[u8]>,
) -> Result<jex_attest::CertificateDocumentV2> {
    match jex_attest::verify_any(certificate, ca, nonce)? {
        jex_attest::VerifiedDocument::V2(document) => Ok(document),
        other => bail!("a version 2 certificate expected, got {other:?}"),
    }
}

/// A tmpfs mounted on a directory, unmounted on drop.
pub struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    /// Mounts a tmpfs of `bytes` (and 200 inodes) on `dir` (needs root; failing fails the test).
    pub fn mount(dir: &Path, bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let out = output_within(
            std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={bytes},nr_inodes=200,mode=0700"))
                .arg("tmpfs")
                .arg(dir),
            COMMAND_DEADLINE,
        )?;
        ensure!(
            out.status.success(),
            "mounting a tmpfs (needs root): {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Fills every block and inode.
    pub fn fill(&self) -> Result<()> {
        use std::io::Write as _;
        let mut file = std::fs::File::create(self.dir.join("filler"))?;
        let block = vec![0xa5u8; 4096];
        while let Ok(n) = file.write(&block) {
            if n == 0 {
                break;
            }
        }
        for i in 0.. {
            if std::fs::File::create(self.dir.join(format!("inode-{i}"))).is_err() {
                break;
            }
        }
        Ok(())
    }

    /// Removes what [`SmallFs::fill`] wrote.
    pub fn free(&self) -> Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name == "filler" || name.starts_with("inode-") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = output_within(
            std::process::Command::new("umount").arg(&self.dir),
            COMMAND_DEADLINE,
        );
    }
}

/// The conditions `GetHost` reports now: (kind name without its prefix, since, message).
pub async fn host_conditions(
    c: &mut NodeAgentClient<Channel>,
) -> Result<Vec<(String, u64, String)>> {
    use jex_proto::v1 as pb;
    let host = c
        .get_host(pb::GetHostRequest {})
        .await?
        .into_inner()
        .host
        .context("GetHost without a host")?;
    Ok(host
        .conditions
        .into_iter()
        .map(|h| {
            let kind = pb::HostConditionKind::try_from(h.kind)
                .map(|k| {
                    k.as_str_name()
                        .trim_start_matches("HOST_CONDITION_KIND_")
                        .to_owned()
                })
                .unwrap_or_else(|_| format!("unknown {}", h.kind));
            (kind, h.since_unix_ms, h.message)
        })
        .collect())
}

/// Polls `GetHost` until its conditions satisfy `pred` (bounded by `timeout`, not a timing
/// assertion), and returns them.
pub async fn wait_conditions(
    c: &mut NodeAgentClient<Channel>,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&[(String, u64, String)]) -> bool,
) -> Result<Vec<(String, u64, String)>> {
    let end = Instant::now() + timeout;
    loop {
        let now = host_conditions(c).await?;
        if pred(&now) {
            return Ok(now);
        }
        if Instant::now() > end {
            bail!("{what}: not within {timeout:?}; conditions now: {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Options whose event conditions (`CLOCK_STEPPED`, `LOG_LINES_DROPPED`) are held 3 s: long
/// enough to be seen, short enough to watch them clear.
pub fn short_hold() -> AgentOptions {
    AgentOptions {
        extra_toml: "\n[health]\nevent_hold_secs = 3\n".into(),
        ..AgentOptions::default()
    }
}

/// Whether `kind` is among the conditions.
pub fn has_condition(conditions: &[(String, u64, String)], kind: &str) -> bool {
    conditions.iter().any(|(k, _, _)| k == kind)
}

/// `grpc.health.v1` Check of `service`: the status's name (`SERVING`, `NOT_SERVING`, …).
pub async fn health_check(channel: Channel, service: &str) -> Result<String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let status = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?
        .into_inner()
        .status;
    Ok(ServingStatus::try_from(status)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("unknown {status}")))
}

/// One plain-HTTP `GET /metrics` on loopback (the agent answers with `Connection: close`),
/// returning the body.
pub async fn scrape_plain(addr: std::net::SocketAddr) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut raw)).await??;
    let text = String::from_utf8(raw)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no end of the response head")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "a chunked answer: {head}"
    );
    Ok(body.to_owned())
}

/// A day of samples at 1 Hz.
pub const DAY_SECS: u64 = 86_400;

/// The `i`th synthetic sample of the spool benchmarks: a 10-core host at 1 s, every value
/// moving with `i`.
pub fn synthetic_sample(i: u64) -> jex_agent::telemetry::Sample {
    use jex_agent::telemetry::{CpuSample, MemorySample, Sample};
    Sample {
        window_ms: 1000,
        cpu: CpuSample {
            busy_bp: (i % 10_000) as u32,
            user_bp: 1000,
            system_bp: 300,
            core_busy_bp: (0..10).map(|c| ((i + c * 977) % 10_000) as u32).collect(),
            online_cpus: 10,
            ..CpuSample::default()
        },
        memory: MemorySample {
            formula_version: 1,
            total_bytes: 32 << 30,
            used_bytes: (20 << 30) + i * 4096,
            available_bytes: (12 << 30) - i * 4096,
            ..MemorySample::default()
        },
        ..Sample::default()
    }
}

/// Writes `n` synthetic samples, one a second from `start_ms`, to a new spool in `spool_dir`
/// (the history an agent started on that directory serves).
pub fn write_spool(spool_dir: &Path, start_ms: u64, n: u64) -> Result<()> {
    use jex_agent::telemetry::RecordBody;
    use jex_agent::telemetry::wire::WireRecord;
    let (mut spool, _) = jex_spool::Spool::open(jex_spool::SpoolConfig::new(spool_dir))?;
    for i in 0..n {
        let time = start_ms + i * 1000;
        let record = WireRecord::next_in(&spool, time, RecordBody::Sample(synthetic_sample(i)));
        spool.append(time, record)?;
    }
    spool.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_past_its_deadline_is_killed_and_the_wait_fails() -> Result<()> {
        let mut child = Command::new("sleep").arg("30").spawn()?;
        let start = Instant::now();
        let err = match wait_within(&mut child, Duration::from_millis(200), "sleep 30") {
            Ok(status) => bail!("sleep 30 returned {status} within 200 ms"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("sleep 30") && err.contains("did not exit within 200ms: killed"),
            "{err}"
        );
        assert!(!err.contains("not reaped"), "{err}");
        // Killed and reaped: nothing is left to wait for.
        assert!(child.try_wait()?.is_some());
        assert!(start.elapsed() < Duration::from_secs(25));
        Ok(())
    }

    #[test]
    fn output_within_captures_both_pipes_and_the_status() -> Result<()> {
        let out = output_within(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            COMMAND_DEADLINE,
        )?;
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        Ok(())
    }

    #[test]
    fn output_within_fails_on_a_command_that_hangs() -> Result<()> {
        match output_within(
            Command::new("sh").args(["-c", "echo started; exec sleep 30"]),
            Duration::from_millis(300),
        ) {
            Ok(out) => bail!("a hung command returned {:?}", out.status),
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("did not exit within 300ms: killed"), "{e}");
            }
        }
        Ok(())
    }
}
