//! The fleet end to end: `jex-relay` with the real engines, following real agents and the
//! simulated hosts of `jex-sim`. The first test runs 20 simulated hosts and 2 real agents
//! through one relay; the second, the relay's every path on real agents alone.
//!
//! jex-relay end to end, with the real engines: a real `nats-server -js` (Debian's
//! `nats-server`), a real Prometheus with its remote_write receiver (Debian's `prometheus`),
//! real agent processes, and the relay as a real process (`jex-relay-e2e`). scripts/test.sh
//! installs both packages; a missing one fails the test.
//!
//! One test, in phases: the relay follows two agents (plus a host id that is not the agent's
//! and an agent whose certificate is from a foreign CA); it is SIGKILLed mid-stream and
//! restarted; an agent is SIGKILLed and restarted on another port (a SIGHUP reload points the
//! relay at it; a reload of a broken file keeps the list); `nats-server` is restarted on the
//! same store. Then every message of each subject is read back: every seq from 1 to the last is
//! there exactly once, in order, byte for byte the agent's record, each gap record with its
//! headers; Prometheus holds exactly the samples published. Then a second relay whose
//! remote_write receiver answers 400: the refusals are counted and logged, and JetStream still
//! gets every record; a third relay on the same host at the same time (duplicates acknowledged,
//! each record stored once), SIGKILLed; last, the agent's spool is wiped: a reset marker and the
//! new life's records in epoch 1, each seq of each epoch exactly once.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use jex_agent::pki::LeafSpec;
use jex_e2e::{
    AgentOptions, AgentProcess, HOST_ID, TRUST_DOMAIN, TestPki, client, scrape_plain, start_agent,
    wait_within,
};
use jex_proto::v1 as pb;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NATS_SERVER: &str = "/usr/sbin/nats-server";
const PROMETHEUS: &str = "/usr/bin/prometheus";
const HOST_B: &str = "h-e2e-b";
const REAP: Duration = Duration::from_secs(10);

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A process killed when dropped.
struct Proc {
    child: Option<Child>,
    what: &'static str,
}

impl Proc {
    fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            wait_within(&mut c, REAP, self.what)?;
        }
        Ok(())
    }

    /// SIGTERM and wait; the exit status.
    fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        wait_within(&mut c, REAP, self.what)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        let c = self.child.as_ref().context("not running")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig)?;
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = wait_within(&mut c, REAP, self.what);
        }
    }
}

async fn wait_port(port: u16, what: &str) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        ensure!(
            Instant::now() < end,
            "{what} is not listening on {port} after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// `nats-server -js` on `port` with its store in `store`.
async fn start_nats(port: u16, store: &Path, log: &Path) -> Result<Proc> {
    ensure!(
        Path::new(NATS_SERVER).exists(),
        "{NATS_SERVER} is missing: install Debian's nats-server package (scripts/test.sh does)"
    );
    let child = Command::new(NATS_SERVER)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?,
        )
        .spawn()
        .context("starting nats-server")?;
    let p = Proc {
        child: Some(child),
        what: "nats-server",
    };
    wait_port(port, "nats-server").await?;
    Ok(p)
}

/// Prometheus with its remote_write receiver and an out-of-order window for backfill.
async fn start_prometheus(dir: &Path) -> Result<(Proc, u16)> {
    start_prometheus_with(dir, None).await
}

/// Prometheus serving HTTPS only (TLS 1.3), with `pki`'s agent certificate as its own and
/// client certificates of `pki`'s fleet CA required (its `--web.config.file`).
async fn start_prometheus_tls(dir: &Path, pki: &TestPki) -> Result<(Proc, u16)> {
    start_prometheus_with(dir, Some(pki)).await
}

async fn start_prometheus_with(dir: &Path, tls: Option<&TestPki>) -> Result<(Proc, u16)> {
    ensure!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: install Debian's prometheus package (scripts/test.sh does)"
    );
    std::fs::create_dir_all(dir)?;
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 1h\nstorage:\n  tsdb:\n    out_of_order_time_window: 30m\n",
    )?;
    let port = free_port()?;
    let mut command = Command::new(PROMETHEUS);
    if let Some(pki) = tls {
        let web = dir.join("web.yml");
        std::fs::write(
            &web,
            format!(
                "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n  min_version: TLS13\n",
                pki.paths.agent_cert.display(),
                pki.paths.agent_key.display(),
                pki.paths.ca_cert.display()
            ),
        )?;
        command.arg(format!("--web.config.file={}", web.display()));
    }
    let child = command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--web.enable-remote-write-receiver")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
        .spawn()
        .context("starting prometheus")?;
    let p = Proc {
        child: Some(child),
        what: "prometheus",
    };
    wait_port(port, "prometheus").await?;
    // Ready once its query API answers.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = match tls {
            None => http_get(port, "/-/ready").await,
            Some(pki) => https_get(port, "/-/ready", pki).await,
        };
        if ready.ok().map(|(s, _)| s) == Some(200) {
            break;
        }
        ensure!(Instant::now() < end, "prometheus not ready after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((p, port))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    get_on(conn, path).await
}

/// An HTTP/1.0 GET over TLS 1.3 on loopback, checking the server against `pki`'s fleet CA
/// and presenting its controller certificate: (status, body).
async fn https_get(port: u16, path: &str, pki: &TestPki) -> Result<(u16, String)> {
    let config = jex_relay::tls::client_config(
        &pki.paths.ca_cert,
        Some((&pki.paths.controller_cert, &pki.paths.controller_key)),
        b"http/1.1",
    )?;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    get_on(tls, path).await
}

async fn get_on<S>(mut conn: S, path: &str) -> Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify: what arrived before is the answer.
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut raw)).await?;
    if raw.is_empty() {
        read?;
    }
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no response head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, body.to_owned()))
}

/// The single value of an instant query (`None` when it has no result).
async fn prom_value(port: u16, query: &str) -> Result<Option<f64>> {
    prom_value_with(port, query, None).await
}

/// [`prom_value`], over TLS with `pki`'s controller certificate when given.
async fn prom_value_with(port: u16, query: &str, tls: Option<&TestPki>) -> Result<Option<f64>> {
    let path = format!("/api/v1/query?query={}", percent_encode(query));
    let (status, body) = match tls {
        None => http_get(port, &path).await?,
        Some(pki) => https_get(port, &path, pki).await?,
    };
    ensure!(status == 200, "{query}: HTTP {status}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let result = v["data"]["result"].as_array().context("no result")?;
    match result.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(
            one["value"][1]
                .as_str()
                .context("no value")?
                .parse::<f64>()?,
        )),
        _ => bail!("{query}: more than one series: {body}"),
    }
}

/// A relay process.
struct Relay {
    proc: Proc,
    log: PathBuf,
    metrics: std::net::SocketAddr,
}

impl Relay {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn relay_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jex-relay-e2e"))
}

/// Starts a relay on `config`; its log goes to `log` (appended) and its /metrics address is
/// read from its `metrics serving` line.
fn start_relay(config: &Path, log: &Path) -> Result<Relay> {
    let previous = std::fs::read_to_string(log).map(|s| s.len()).unwrap_or(0);
    let child = Command::new(relay_bin())
        .args(["run", "--config"])
        .arg(config)
        .env("RELAY_LOG", "info,jex_relay=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?,
        )
        .spawn()
        .context("starting the relay")?;
    let mut proc = Proc {
        child: Some(child),
        what: "jex-relay",
    };
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = text.get(previous..).and_then(|t| {
            t.lines().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["fields"]["message"].as_str()? == "metrics serving").then_some(())?;
                v["fields"]["addr"].as_str()?.parse().ok()
            })
        }) {
            return Ok(Relay {
                proc,
                log: log.to_owned(),
                metrics: addr,
            });
        }
        if let Some(status) = proc.child.as_mut().context("gone")?.try_wait()? {
            bail!("the relay exited with {status} before serving:\n{text}");
        }
        ensure!(
            Instant::now() < end,
            "the relay did not serve /metrics in 20 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The value of the sample line `series` (name and labels exactly as exposed).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

async fn relay_metric(relay: &Relay, series: &str) -> Result<f64> {
    let text = scrape_plain(relay.metrics).await?;
    Ok(metric(&text, series).unwrap_or(0.0))
}

/// Waits until the relay's `series` is at least `at_least`.
async fn wait_metric(relay: &Relay, series: &str, at_least: f64, within: Duration) -> Result<f64> {
    let end = Instant::now() + within;
    loop {
        let v = relay_metric(relay, series).await?;
        if v >= at_least {
            return Ok(v);
        }
        if Instant::now() > end {
            let text = scrape_plain(relay.metrics).await.unwrap_or_default();
            bail!(
                "{series} is {v}, not >= {at_least}, after {within:?}\n{text}\nrelay log tail:\n{}",
                tail(&relay.log_text(), 30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// kill -9 the relay mid-stream, start it again on the same files, and wait until `host` has
/// moved `by` seqs past where it was at the kill.
async fn kill9_and_restart_relay(
    relay: &mut Relay,
    config: &Path,
    log: &Path,
    host: &str,
    by: f64,
    within: Duration,
) -> Result<()> {
    let before = relay_metric(relay, &last_seq(host)).await?;
    relay.proc.kill9()?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    *relay = start_relay(config, log)?;
    wait_metric(relay, &last_seq(host), before + by, within).await?;
    Ok(())
}

/// Restarts nats-server on the same store, and waits until each of `hosts` has moved `by`
/// seqs past where it was before.
#[allow(clippy::too_many_arguments)]
async fn restart_nats(
    nats: &mut Proc,
    port: u16,
    store: &Path,
    log: &Path,
    relay: &Relay,
    hosts: &[&str],
    by: f64,
    within: Duration,
) -> Result<()> {
    let mut before = Vec::new();
    for h in hosts {
        before.push(relay_metric(relay, &last_seq(h)).await?);
    }
    // (nats-server exits 1 on SIGTERM.)
    nats.terminate()?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    *nats = start_nats(port, store, log).await?;
    for (h, b) in hosts.iter().zip(before) {
        wait_metric(relay, &last_seq(h), b + by, within).await?;
    }
    Ok(())
}

/// Waits until the relay has stored each host's last seq of its history.
async fn catch_up(
    relay: &Relay,
    histories: &[(String, Vec<pb::TelemetryRecord>)],
    within: Duration,
) -> Result<()> {
    for (id, history) in histories {
        let last = history.last().map_or(0, |r| r.seq) as f64;
        wait_metric(relay, &last_seq(id), last, within).await?;
    }
    Ok(())
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn last_seq(host: &str) -> String {
    format!("jex_relay_host_last_seq{{host_id=\"{host}\"}}")
}

fn write_relay_config(
    path: &Path,
    pki: &TestPki,
    nats_port: u16,
    entries: &[(&str, std::net::SocketAddr)],
    remote_write: Option<&str>,
) -> Result<()> {
    let mut text = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n\n",
        pki.paths.observer_cert.display(),
        pki.paths.observer_key.display(),
        pki.paths.ca_cert.display()
    );
    for (id, addr) in entries {
        text.push_str(&format!(
            "[[hosts]]\nhost_id = \"{id}\"\naddr = \"https://{addr}\"\nserver_name = \"localhost\"\n\n"
        ));
    }
    text.push_str(&format!(
        "[jetstream]\nurl = \"nats://127.0.0.1:{nats_port}\"\nmax_in_flight = 64\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n[follow]\nbackoff_min_ms = 100\nbackoff_max_ms = 1000\n"
    ));
    if let Some(url) = remote_write {
        text.push_str(&format!("\n[remote_write]\nurl = \"{url}\"\n"));
    }
    std::fs::write(path, text)?;
    Ok(())
}

/// A second PKI whose agent certificate (host `host_id`) is issued by `issuer`'s CA (`None`:
/// its own CA, foreign to the relay) and which trusts `issuer`'s CA for clients.
fn agent_pki(issuer: &TestPki, host_id: &str, same_ca: bool) -> Result<TestPki> {
    let other = TestPki::new()?;
    let spec = LeafSpec {
        common_name: format!("jex-agent {host_id}"),
        names: vec!["localhost".into(), "127.0.0.1".into()],
        uris: vec![format!("spiffe://{TRUST_DOMAIN}/host/{host_id}")],
        server: true,
        not_before: time::Duration::hours(-1),
        not_after: time::Duration::days(30),
    };
    let issued = if same_ca {
        issuer.ca.issue(&spec)?
    } else {
        other.ca.issue(&spec)?
    };
    jex_agent::pki::write_file(&other.paths.agent_cert, issued.cert_pem.as_bytes(), 0o644)?;
    jex_agent::pki::write_file(&other.paths.agent_key, issued.key_pem.as_bytes(), 0o600)?;
    // The agent checks the relay's observer certificate against the relay's fleet CA.
    std::fs::copy(&issuer.paths.ca_cert, &other.paths.ca_cert)?;
    Ok(other)
}

/// One message read back from the stream.
#[derive(Debug)]
struct Stored {
    headers: BTreeMap<String, String>,
    payload: Vec<u8>,
}

/// Every message of the stream, by subject, in stream order.
async fn read_back(nats_port: u16) -> Result<BTreeMap<String, Vec<Stored>>> {
    let client = async_nats::connect(format!("nats://127.0.0.1:{nats_port}")).await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("JEX_TELEMETRY").await?;
    let state = stream.info().await?.state.clone();
    let mut out: BTreeMap<String, Vec<Stored>> = BTreeMap::new();
    for seq in state.first_sequence..=state.last_sequence {
        let m = stream
            .get_raw_message(seq)
            .await
            .with_context(|| format!("stream message {seq}"))?;
        let headers = m
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(","),
                )
            })
            .collect();
        out.entry(m.subject.to_string()).or_default().push(Stored {
            headers,
            payload: m.payload.to_vec(),
        });
    }
    Ok(out)
}

/// The stream's (bytes, messages).
async fn stream_size(nats_port: u16) -> Result<(u64, u64)> {
    let client = async_nats::connect(format!("nats://127.0.0.1:{nats_port}")).await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("JEX_TELEMETRY").await?;
    let state = stream.info().await?.state.clone();
    Ok((state.bytes, state.messages))
}

/// The agent's whole history now (observer, history only).
async fn agent_history(
    pki: &TestPki,
    observer: &TestPki,
    agent: &AgentProcess,
) -> Result<Vec<pb::TelemetryRecord>> {
    let mut c = client(pki, agent, Some(&observer.observer())).await?;
    let mut s = c
        .stream_telemetry(pb::StreamTelemetryRequest {
            after_seq: 0,
            max_batch_records: 0,
            history_only: true,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.extend(m.records);
    }
    Ok(out)
}

/// The exactly-once check of one host's subject against the agent's history; returns
/// (messages, gap records, sample records).
fn check_subject(
    host: &str,
    messages: &[Stored],
    history: &[pb::TelemetryRecord],
) -> Result<(usize, usize, usize)> {
    check_epoch(host, 0, messages, history)
}

/// [`check_subject`] for the messages of one epoch (after its reset marker).
fn check_epoch(
    host: &str,
    epoch: u64,
    messages: &[Stored],
    history: &[pb::TelemetryRecord],
) -> Result<(usize, usize, usize)> {
    ensure!(!messages.is_empty(), "nothing stored for {host}");
    let by_seq: BTreeMap<u64, &pb::TelemetryRecord> = history.iter().map(|r| (r.seq, r)).collect();
    let mut gaps = 0;
    let mut samples = 0;
    for (i, m) in messages.iter().enumerate() {
        let want = i as u64 + 1;
        let seq: u64 = m.headers.get("Jex-Seq").context("no Jex-Seq")?.parse()?;
        ensure!(
            seq == want,
            "{host}: message {i} has seq {seq}, expected {want} (every seq exactly once, in order)"
        );
        let id = if epoch == 0 {
            format!("{host}:{seq}")
        } else {
            format!("{host}:e{epoch}:{seq}")
        };
        ensure!(
            m.headers.get("Nats-Msg-Id") == Some(&id),
            "{host} message {i}: {:?}",
            m.headers
        );
        ensure!(
            m.headers.get("Jex-Epoch").cloned() == (epoch > 0).then(|| epoch.to_string()),
            "{host} message {i}: {:?}",
            m.headers
        );
        ensure!(m.headers.get("Jex-Host").map(String::as_str) == Some(host));
        let record = pb::TelemetryRecord::decode(m.payload.as_slice())?;
        ensure!(
            record.seq == seq,
            "{host}: payload seq {} under header {seq}",
            record.seq
        );
        if let Some(agent) = by_seq.get(&seq) {
            ensure!(
                **agent == record,
                "{host} seq {seq}: stored record differs from the agent's"
            );
        }
        match &record.body {
            Some(pb::telemetry_record::Body::Gap(g)) => {
                gaps += 1;
                ensure!(
                    m.headers.get("Jex-Gap").map(String::as_str)
                        == Some(pb::GapReason::try_from(g.reason)?.as_str_name()),
                    "{host} seq {seq}: gap headers {:?}",
                    m.headers
                );
                ensure!(
                    m.headers.get("Jex-Gap-First-Seq") == Some(&g.first_missing_seq.to_string())
                );
                ensure!(m.headers.get("Jex-Gap-Last-Seq") == Some(&g.last_missing_seq.to_string()));
            }
            _ => {
                samples += 1;
                ensure!(!m.headers.contains_key("Jex-Gap"), "{:?}", m.headers);
            }
        }
    }
    // Everything the agent had when the history was taken is there.
    let agent_last = history.last().map_or(0, |r| r.seq);
    ensure!(
        messages.len() as u64 >= agent_last,
        "{host}: {} stored, the agent had {agent_last}",
        messages.len()
    );
    Ok((messages.len(), gaps, samples))
}

/// A remote_write receiver that refuses everything with 400; counts the requests.
async fn refusing_receiver() -> Result<(u16, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Read the head, then the body by its Content-Length.
                loop {
                    let Ok(n) = tcp.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let body = "out of bounds: sample too old";
                let _ = tcp
                    .write_all(
                        format!(
                            "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    Ok((port, count))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_lands_every_seq_exactly_once_in_a_real_jetstream_and_prometheus() -> Result<()> {
    let work = tempfile::tempdir()?;
    let w = work.path();
    // The fleet: agent A (host h-e2e) and agent B (h-e2e-b), both from the fleet CA; agent C's
    // certificate is from a foreign CA.
    let pki = TestPki::new()?;
    let pki_b = agent_pki(&pki, HOST_B, true)?;
    let pki_c = agent_pki(&pki, "h-foreign", false)?;
    let opts = AgentOptions::default();
    let mut agent_a = start_agent(&pki, &w.join("a"), &opts)?;
    let agent_b = start_agent(&pki_b, &w.join("b"), &opts)?;
    let agent_c = start_agent(&pki_c, &w.join("c"), &opts)?;

    let nats_port = free_port()?;
    let store = w.join("nats-store");
    let nats_log = w.join("nats.log");
    let mut nats = start_nats(nats_port, &store, &nats_log).await?;
    let (_prometheus, prom_port) = start_prometheus(&w.join("prometheus")).await?;

    let config = w.join("relay.toml");
    let rw_url = format!("http://127.0.0.1:{prom_port}/api/v1/write");
    let entries = |a: std::net::SocketAddr, b: std::net::SocketAddr| {
        vec![
            (HOST_ID, a),
            (HOST_B, b),
            ("h-wrong", a),
            ("h-foreign", agent_c.addr),
        ]
    };
    write_relay_config(
        &config,
        &pki,
        nats_port,
        &entries(agent_a.addr, agent_b.addr),
        Some(&rw_url),
    )?;
    let log = w.join("relay.log");
    let mut relay = start_relay(&config, &log)?;

    // Both followed.
    wait_metric(&relay, &last_seq(HOST_ID), 20.0, Duration::from_secs(30)).await?;
    wait_metric(&relay, &last_seq(HOST_B), 20.0, Duration::from_secs(30)).await?;
    // The bad hosts: a clear error, a metric, nothing published.
    wait_metric(
        &relay,
        "jex_relay_connect_errors_total{reason=\"host_id_mismatch\"}",
        1.0,
        Duration::from_secs(20),
    )
    .await?;
    wait_metric(
        &relay,
        "jex_relay_connect_errors_total{reason=\"tls\"}",
        1.0,
        Duration::from_secs(20),
    )
    .await?;
    let text = relay.log_text();
    ensure!(
        text.lines().any(|l| l.contains("\"level\":\"ERROR\"")
            && l.contains("host id mismatch")
            && l.contains("\\\"h-wrong\\\"")
            && l.contains("\\\"h-e2e\\\"")),
        "no ERROR line naming both host ids:\n{}",
        tail(&text, 40)
    );
    ensure!(
        text.lines().any(|l| l.contains("\"level\":\"ERROR\"")
            && l.contains("h-foreign")
            && l.contains("TLS connection to the agent failed")
            && (l.contains("UnknownIssuer") || l.contains("certificate"))),
        "no TLS ERROR for the foreign CA:\n{}",
        tail(&text, 40)
    );
    // The relay's own /metrics.
    let exposition = scrape_plain(relay.metrics).await?;
    for line in [
        "jex_relay_hosts_followed 4",
        "jex_relay_host_connected{host_id=\"h-e2e\"} 1",
        "jex_relay_host_connected{host_id=\"h-wrong\"} 0",
        "jex_relay_build_info{version=",
    ] {
        ensure!(exposition.contains(line), "{line} missing:\n{exposition}");
    }

    // kill -9 the relay mid-stream and restart it.
    kill9_and_restart_relay(
        &mut relay,
        &config,
        &log,
        HOST_ID,
        25.0,
        Duration::from_secs(30),
    )
    .await?;
    // A resend after the kill was acknowledged as a duplicate or not needed; never stored twice
    // (checked at the end).

    // Kill and restart agent A (an AGENT_DOWN gap record follows).
    let a_seq = relay_metric(&relay, &last_seq(HOST_ID)).await?;
    let a_dir = agent_a.dir.clone();
    agent_a.kill9()?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    agent_a = start_agent(&pki, &a_dir, &opts)?;
    // It comes back on another port: point the relay at it with a reload (SIGHUP), which
    // restarts the two entries of that address and leaves agent B's stream alone.
    write_relay_config(
        &config,
        &pki,
        nats_port,
        &entries(agent_a.addr, agent_b.addr),
        Some(&rw_url),
    )?;
    relay.proc.signal(nix::sys::signal::Signal::SIGHUP)?;
    let end = Instant::now() + Duration::from_secs(10);
    while !relay.log_text().lines().any(|l| {
        l.contains("host list reloaded")
            && l.contains("\"started\":2")
            && l.contains("\"stopped\":2")
            && l.contains("\"kept\":2")
    }) {
        ensure!(
            Instant::now() < end,
            "no reload logged:\n{}",
            tail(&relay.log_text(), 20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_metric(
        &relay,
        &last_seq(HOST_ID),
        a_seq + 20.0,
        Duration::from_secs(30),
    )
    .await?;

    // A bad file on reload keeps the list.
    let good = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        good.replace("host_id = \"h-e2e-b\"", "host_id = \"h e2e b\""),
    )?;
    relay.proc.signal(nix::sys::signal::Signal::SIGHUP)?;
    let end = Instant::now() + Duration::from_secs(10);
    while !relay
        .log_text()
        .contains("reload refused, the current host list stays")
    {
        ensure!(
            Instant::now() < end,
            "no reload refusal logged:\n{}",
            tail(&relay.log_text(), 20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        relay.log_text().contains("relay.toml:"),
        "the refusal names the file and line"
    );
    std::fs::write(&config, &good)?;
    ensure!(relay_metric(&relay, "jex_relay_hosts_followed").await? == 4.0);

    // Restart nats-server on the same store.
    restart_nats(
        &mut nats,
        nats_port,
        &store,
        &nats_log,
        &relay,
        &[HOST_ID, HOST_B],
        30.0,
        Duration::from_secs(40),
    )
    .await?;

    // The agents' histories now; the relay catches up past them, then stops.
    let history_a = agent_history(&pki, &pki, &agent_a).await?;
    let history_b = agent_history(&pki_b, &pki, &agent_b).await?;
    catch_up(
        &relay,
        &[
            (HOST_ID.to_owned(), history_a.clone()),
            (HOST_B.to_owned(), history_b.clone()),
        ],
        Duration::from_secs(30),
    )
    .await?;
    let duplicates = relay_metric(&relay, "jex_relay_duplicates_total").await?;
    let status = relay.proc.terminate()?;
    ensure!(
        status.success(),
        "the relay exited with {status} on SIGTERM"
    );

    // Every seq exactly once, in order, as the agent sent it, gaps marked.
    let stored = read_back(nats_port).await?;
    ensure!(
        !stored.contains_key("jex.telemetry.h-wrong"),
        "published under the wrong id"
    );
    ensure!(
        !stored.contains_key("jex.telemetry.h-foreign"),
        "published for the foreign CA"
    );
    let (n_a, gaps_a, samples_a) =
        check_subject(HOST_ID, &stored["jex.telemetry.h-e2e"], &history_a)?;
    let (n_b, gaps_b, samples_b) =
        check_subject(HOST_B, &stored["jex.telemetry.h-e2e-b"], &history_b)?;
    ensure!(gaps_a >= 1, "agent A's restart left no gap record");
    // Bytes per record (for BENCHMARKS.md): the payload, the NATS header block as sent
    // (`NATS/1.0\r\n`, `K: V\r\n` each, `\r\n`), and the stream's own bytes per message.
    let all: Vec<&Stored> = stored.values().flatten().collect();
    let payload: usize = all.iter().map(|m| m.payload.len()).sum();
    let headers: usize = all
        .iter()
        .map(|m| {
            12 + m
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>()
        })
        .sum();
    let (stream_bytes, stream_messages) = stream_size(nats_port).await?;
    eprintln!(
        "bytes per record: payload {:.1}, headers {:.1}, subject {:.1}; stream {stream_bytes} B for {stream_messages} messages = {:.1} B/message",
        payload as f64 / all.len() as f64,
        headers as f64 / all.len() as f64,
        stored.iter().map(|(k, v)| k.len() * v.len()).sum::<usize>() as f64 / all.len() as f64,
        stream_bytes as f64 / stream_messages as f64,
    );
    eprintln!(
        "exactly once: {HOST_ID} {n_a} messages ({gaps_a} gaps), {HOST_B} {n_b} messages ({gaps_b} gaps); {duplicates} duplicates acknowledged after the restarts (counted by the last relay)"
    );

    // Prometheus holds exactly the samples published.
    for (host, samples, gaps) in [(HOST_ID, samples_a, gaps_a), (HOST_B, samples_b, gaps_b)] {
        let q = format!("count_over_time(jex_host_cpu_busy_ratio{{host_id=\"{host}\"}}[10m])");
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            let got = prom_value(prom_port, &q).await?;
            if got == Some(samples as f64) {
                break;
            }
            ensure!(Instant::now() < end, "{q} = {got:?}, published {samples}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if gaps > 0 {
            let q = format!("count_over_time(jex_telemetry_gap{{host_id=\"{host}\"}}[10m])");
            ensure!(prom_value(prom_port, &q).await? == Some(gaps as f64), "{q}");
        }
    }

    // A receiver that refuses: counted and logged, JetStream unaffected.
    let (refusing, refused) = refusing_receiver().await?;
    let config2 = w.join("relay2.toml");
    write_relay_config(
        &config2,
        &pki,
        nats_port,
        &[(HOST_B, agent_b.addr)],
        Some(&format!("http://127.0.0.1:{refusing}/api/v1/write")),
    )?;
    let log2 = w.join("relay2.log");
    let mut relay2 = start_relay(&config2, &log2)?;
    wait_metric(
        &relay2,
        "jex_relay_publish_errors_total{sink=\"remote_write\",reason=\"http_400\"}",
        5.0,
        Duration::from_secs(20),
    )
    .await?;
    wait_metric(
        &relay2,
        "jex_relay_records_published_total{sink=\"jetstream\"}",
        5.0,
        Duration::from_secs(20),
    )
    .await?;
    ensure!(
        refused.load(Ordering::SeqCst) >= 2,
        "the receiver saw {} POSTs",
        refused.load(Ordering::SeqCst)
    );
    ensure!(
        relay2
            .log_text()
            .lines()
            .any(|l| l.contains("\"level\":\"ERROR\"")
                && l.contains("remote_write refused these records")
                && l.contains("\"records\":")),
        "no ERROR for the refusals:\n{}",
        tail(&relay2.log_text(), 20)
    );
    let history_b = agent_history(&pki_b, &pki, &agent_b).await?;
    let last_b = history_b.last().map_or(0, |r| r.seq) as f64;
    wait_metric(&relay2, &last_seq(HOST_B), last_b, Duration::from_secs(30)).await?;
    let n_b2 = history_b.len();

    // A second relay on the same host at the same time: each record is published twice and
    // stored once; one of each pair is acknowledged as a duplicate.
    let log3 = w.join("relay3.log");
    let mut relay3 = start_relay(&config2, &log3)?;
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let dups = relay_metric(&relay2, "jex_relay_duplicates_total").await?
            + relay_metric(&relay3, "jex_relay_duplicates_total").await?;
        if dups >= 5.0 {
            eprintln!("two relays on {HOST_B}: {dups} duplicates acknowledged");
            break;
        }
        ensure!(
            Instant::now() < end,
            "two relays on one host: {dups} duplicates after 20 s\n{}",
            tail(&relay3.log_text(), 20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay3.proc.kill9()?;
    ensure!(n_b2 > n_b, "the second relay published nothing new");

    // Agent B loses its spool (a new life): OUT_OF_RANGE past the stored cursor, a reset
    // marker, and the new life's records in epoch 1.
    let b_dir = agent_b.dir.clone();
    agent_b.kill9()?;
    std::fs::remove_dir_all(b_dir.join("state"))?;
    let agent_b = start_agent(&pki_b, &b_dir, &opts)?;
    write_relay_config(
        &config2,
        &pki,
        nats_port,
        &[(HOST_B, agent_b.addr)],
        Some(&format!("http://127.0.0.1:{refusing}/api/v1/write")),
    )?;
    relay2.proc.signal(nix::sys::signal::Signal::SIGHUP)?;
    wait_metric(
        &relay2,
        "jex_relay_resets_total",
        1.0,
        Duration::from_secs(20),
    )
    .await?;
    wait_metric(
        &relay2,
        "jex_relay_connect_errors_total{reason=\"out_of_range\"}",
        1.0,
        Duration::from_secs(5),
    )
    .await?;
    ensure!(
        relay2
            .log_text()
            .lines()
            .any(|l| l.contains("\"level\":\"ERROR\"")
                && l.contains("the agent's spool is a new life")
                && l.contains("\"epoch\":1")),
        "no ERROR for the spool reset:\n{}",
        tail(&relay2.log_text(), 20)
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let new_life = agent_history(&pki_b, &pki, &agent_b).await?;
    let new_last = new_life.last().map_or(0, |r| r.seq) as f64;
    ensure!(new_last >= 5.0, "agent B's new life has {new_last} records");
    wait_metric(
        &relay2,
        &last_seq(HOST_B),
        new_last,
        Duration::from_secs(30),
    )
    .await?;
    let status = relay2.proc.terminate()?;
    ensure!(
        status.success(),
        "the second relay exited with {status} on SIGTERM"
    );

    let stored = read_back(nats_port).await?;
    let messages = &stored["jex.telemetry.h-e2e-b"];
    let resets: Vec<usize> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.headers.contains_key("Jex-Reset"))
        .map(|(i, _)| i)
        .collect();
    let [reset] = resets[..] else {
        bail!(
            "expected one reset marker on {HOST_B}, found {}",
            resets.len()
        );
    };
    let marker = &messages[reset];
    ensure!(marker.headers.get("Jex-Reset").map(String::as_str) == Some("spool-lost"));
    ensure!(marker.headers.get("Jex-Epoch").map(String::as_str) == Some("1"));
    ensure!(marker.headers.get("Nats-Msg-Id").map(String::as_str) == Some("h-e2e-b:e1:reset"));
    ensure!(marker.payload.is_empty());
    let (old, _, _) = check_subject(HOST_B, &messages[..reset], &history_b)?;
    ensure!(old >= n_b2, "the old life lost records: {old} < {n_b2}");
    let (new, _, _) = check_epoch(HOST_B, 1, &messages[reset + 1..], &new_life)?;
    eprintln!("spool reset: {HOST_B} {old} records in epoch 0, a reset marker, {new} in epoch 1");
    drop(nats);
    Ok(())
}

#[test]
fn check_config_prints_what_it_will_do_or_the_line_and_key_to_fix() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/a\"\n\n[[hosts]]\nhost_id = \"sim-0001\"\naddr = \"https://127.0.1.1:7443\"\n",
    )?;
    let out = jex_e2e::output_within(
        Command::new(relay_bin())
            .args(["check-config", "--config"])
            .arg(&good),
        REAP,
    )?;
    let stdout = String::from_utf8(out.stdout)?;
    ensure!(out.status.success(), "{stdout}");
    ensure!(
        stdout.contains(": OK: 1 host(s); JetStream nats://127.0.0.1:4222 stream JEX_TELEMETRY"),
        "{stdout}"
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[tls]\ncert = \"/c\"\nkey = \"/k\"\nca = \"/a\"\n\n[[hosts]]\nhost_id = \"sim.0001\"\naddr = \"https://127.0.1.1:7443\"\n",
    )?;
    let out = jex_e2e::output_within(
        Command::new(relay_bin())
            .args(["check-config", "--config"])
            .arg(&bad),
        REAP,
    )?;
    let stderr = String::from_utf8(out.stderr)?;
    ensure!(out.status.code() == Some(2), "{:?}: {stderr}", out.status);
    ensure!(
        stderr.contains("bad.toml:7: key `hosts[0].host_id`: '.' is not allowed in a host id"),
        "{stderr}"
    );
    Ok(())
}

/// The whole history of the agent at `addr` now (observer, history only).
async fn history_at(pki: &TestPki, addr: std::net::SocketAddr) -> Result<Vec<pb::TelemetryRecord>> {
    let channel = tonic::transport::Channel::from_shared(format!("https://{addr}"))?
        .tls_config(jex_e2e::tls_config(pki, Some(&pki.observer()))?)?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    let mut s = pb::node_agent_client::NodeAgentClient::new(channel)
        .stream_telemetry(pb::StreamTelemetryRequest {
            after_seq: 0,
            max_batch_records: 0,
            history_only: true,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await? {
        out.extend(m.records);
    }
    Ok(out)
}

/// 20 simulated hosts (`jex-sim`, in this process, issued by the test's fleet CA) and 2 real
/// agents, followed by one relay into a real JetStream and a real Prometheus. The relay is
/// SIGKILLed and restarted, a simulated host and a real agent are restarted, `nats-server` is
/// restarted; then every seq of every host is in JetStream exactly once, in order, with every
/// gap marked, and Prometheus holds every sample.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_simulated_hosts_and_two_agents_land_exactly_once_in_a_real_jetstream() -> Result<()>
{
    let work = tempfile::tempdir()?;
    let w = work.path();
    let pki = TestPki::new()?;
    let pki_b = agent_pki(&pki, HOST_B, true)?;
    let opts = AgentOptions::default();
    let mut agent_a = start_agent(&pki, &w.join("a"), &opts)?;
    let agent_b = start_agent(&pki_b, &w.join("b"), &opts)?;
    let mut sim_config = jex_sim::FleetConfig::new(w.join("sim"), 20);
    sim_config.base_ip = std::net::Ipv4Addr::new(127, 0, 6, 1);
    sim_config.port = 0;
    sim_config.interval_ms = 200;
    let fleet = jex_sim::Fleet::start_with_ca(sim_config, &pki.ca).await?;
    let sims = fleet.host_ids();
    ensure!(sims.len() == 20, "{sims:?}");

    let nats_port = free_port()?;
    let store = w.join("nats-store");
    let nats_log = w.join("nats.log");
    let mut nats = start_nats(nats_port, &store, &nats_log).await?;
    let (_prometheus, prom_port) = start_prometheus(&w.join("prometheus")).await?;
    let rw_url = format!("http://127.0.0.1:{prom_port}/api/v1/write");

    let config = w.join("relay.toml");
    let mut sim_addrs = Vec::new();
    for id in &sims {
        sim_addrs.push((id.clone(), fleet.addr(id).await?));
    }
    let write = |a: std::net::SocketAddr| -> Result<()> {
        let mut entries: Vec<(&str, std::net::SocketAddr)> =
            vec![(HOST_ID, a), (HOST_B, agent_b.addr)];
        entries.extend(sim_addrs.iter().map(|(id, addr)| (id.as_str(), *addr)));
        write_relay_config(&config, &pki, nats_port, &entries, Some(&rw_url))
    };
    write(agent_a.addr)?;
    let log = w.join("relay.log");
    let mut relay = start_relay(&config, &log)?;
    for id in sims.iter().map(String::as_str).chain([HOST_ID, HOST_B]) {
        wait_metric(&relay, &last_seq(id), 10.0, Duration::from_secs(60)).await?;
    }
    ensure!(relay_metric(&relay, "jex_relay_hosts_followed").await? == 22.0);

    // kill -9 the relay mid-stream, and restart it.
    kill9_and_restart_relay(
        &mut relay,
        &config,
        &log,
        &sims[0],
        10.0,
        Duration::from_secs(60),
    )
    .await?;

    // Restart a simulated host (same address: the relay reconnects by itself) and a real agent
    // (a new port: a SIGHUP reload points the relay at it).
    let sim_before = relay_metric(&relay, &last_seq(&sims[2])).await?;
    fleet.restart(&sims[2]).await?;
    let a_before = relay_metric(&relay, &last_seq(HOST_ID)).await?;
    let a_dir = agent_a.dir.clone();
    agent_a.kill9()?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    agent_a = start_agent(&pki, &a_dir, &opts)?;
    write(agent_a.addr)?;
    relay.proc.signal(nix::sys::signal::Signal::SIGHUP)?;
    wait_metric(
        &relay,
        &last_seq(&sims[2]),
        sim_before + 10.0,
        Duration::from_secs(60),
    )
    .await?;
    wait_metric(
        &relay,
        &last_seq(HOST_ID),
        a_before + 20.0,
        Duration::from_secs(60),
    )
    .await?;

    // Restart nats-server on the same store.
    restart_nats(
        &mut nats,
        nats_port,
        &store,
        &nats_log,
        &relay,
        &[HOST_B],
        20.0,
        Duration::from_secs(60),
    )
    .await?;

    // Every host's history now; the relay catches up past each, then stops.
    let mut histories: Vec<(String, Vec<pb::TelemetryRecord>)> = vec![
        (
            HOST_ID.to_owned(),
            agent_history(&pki, &pki, &agent_a).await?,
        ),
        (
            HOST_B.to_owned(),
            agent_history(&pki_b, &pki, &agent_b).await?,
        ),
    ];
    for (id, addr) in &sim_addrs {
        histories.push((id.clone(), history_at(&pki, *addr).await?));
    }
    catch_up(&relay, &histories, Duration::from_secs(60)).await?;
    let duplicates = relay_metric(&relay, "jex_relay_duplicates_total").await?;
    let status = relay.proc.terminate()?;
    ensure!(
        status.success(),
        "the relay exited with {status} on SIGTERM"
    );
    fleet.shutdown().await;

    // Every seq of every host exactly once, in order, as its agent sent it, gaps marked; the
    // restarted ones have their AGENT_DOWN gap.
    let stored = read_back(nats_port).await?;
    ensure!(stored.len() == 22, "subjects: {:?}", stored.keys());
    let (mut messages, mut gap_records) = (0, 0);
    let mut samples_by_host = Vec::new();
    for (id, history) in &histories {
        let subject = format!("jex.telemetry.{id}");
        let got = stored
            .get(&subject)
            .with_context(|| format!("nothing stored for {id}"))?;
        let (n, gaps, samples) = check_subject(id, got, history)?;
        if id == HOST_ID || id == &sims[2] {
            ensure!(gaps >= 1, "{id} was restarted but has no gap record");
        }
        messages += n;
        gap_records += gaps;
        samples_by_host.push((id.clone(), samples));
    }
    eprintln!(
        "fleet exactly once: 22 hosts (20 simulated, 2 agents), {messages} messages, {gap_records} gap records, {duplicates} duplicates acknowledged by the last relay"
    );

    // Prometheus holds every sample published.
    for (id, samples) in &samples_by_host {
        let q = format!("count_over_time(jex_host_cpu_busy_ratio{{host_id=\"{id}\"}}[30m])");
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let got = prom_value(prom_port, &q).await?;
            if got == Some(*samples as f64) {
                break;
            }
            ensure!(Instant::now() < end, "{q} = {got:?}, published {samples}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    drop(nats);
    Ok(())
}

/// remote_write over TLS 1.3 to a real Prometheus that serves HTTPS only and requires client
/// certificates: every sample the relay stored in JetStream is in Prometheus, queried over
/// mTLS. Then the refusals: a receiver CA that did not sign Prometheus's certificate leaves the
/// relay waiting and saying why (nothing skipped), and a CA file that is missing stops the
/// start with its path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_over_mtls_to_prometheus_beside_a_real_jetstream() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let w = dir.path();
    let pki = TestPki::new()?;
    let agent = start_agent(&pki, &w.join("agent"), &AgentOptions::default())?;
    let nats_port = free_port()?;
    let _nats = start_nats(nats_port, &w.join("nats-store"), &w.join("nats.log")).await?;
    let (_prometheus, prom_port) = start_prometheus_tls(&w.join("prometheus"), &pki).await?;
    // Plain HTTP to it is refused by Prometheus itself.
    ensure!(
        http_get(prom_port, "/-/ready").await.map(|(s, _)| s).ok() != Some(200),
        "Prometheus answered plain HTTP"
    );

    let config = w.join("relay.toml");
    let rw_url = format!("https://127.0.0.1:{prom_port}/api/v1/write");
    let write = |ca: &Path| -> Result<()> {
        write_relay_config(
            &config,
            &pki,
            nats_port,
            &[(HOST_ID, agent.addr)],
            Some(&rw_url),
        )?;
        let mut text = std::fs::read_to_string(&config)?;
        text.push_str(&format!(
            "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            ca.display(),
            pki.paths.observer_cert.display(),
            pki.paths.observer_key.display()
        ));
        std::fs::write(&config, text)?;
        Ok(())
    };
    write(&pki.paths.ca_cert)?;
    let log = w.join("relay.log");
    let mut relay = start_relay(&config, &log)?;
    wait_metric(&relay, &last_seq(HOST_ID), 15.0, Duration::from_secs(60)).await?;
    let history = agent_history(&pki, &pki, &agent).await?;
    catch_up(
        &relay,
        &[(HOST_ID.to_owned(), history.clone())],
        Duration::from_secs(30),
    )
    .await?;
    let status = relay.proc.terminate()?;
    ensure!(status.success(), "the relay exited with {status}");
    ensure!(
        !relay.log_text().contains("remote_write unavailable"),
        "remote_write over TLS failed:\n{}",
        tail(&relay.log_text(), 20)
    );
    let stored = read_back(nats_port).await?;
    let messages = stored
        .get(&format!("jex.telemetry.{HOST_ID}"))
        .context("nothing stored")?;
    let (n, _gaps, samples) = check_subject(HOST_ID, messages, &history)?;
    let q = format!("count_over_time(jex_host_cpu_busy_ratio{{host_id=\"{HOST_ID}\"}}[30m])");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let got = prom_value_with(prom_port, &q, Some(&pki)).await?;
        if got == Some(samples as f64) {
            break;
        }
        ensure!(
            Instant::now() < end,
            "{q} = {got:?} over mTLS, {samples} samples stored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("remote_write over mTLS: {n} messages in JetStream, {samples} samples in Prometheus");

    // A CA that did not sign Prometheus's certificate: the relay says why and waits; the
    // host's stream does not move on without remote_write.
    let other = TestPki::new()?;
    write(&other.paths.ca_cert)?;
    let relay = start_relay(&config, &log)?;
    let end = Instant::now() + Duration::from_secs(20);
    while !relay.log_text().lines().any(|l| {
        l.contains("remote_write unavailable, the host's stream waits")
            && l.contains("TLS handshake")
            && l.contains("invalid peer certificate")
    }) {
        ensure!(
            Instant::now() < end,
            "no TLS refusal logged:\n{}",
            tail(&relay.log_text(), 20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = read_back(nats_port).await?;
    let held = held
        .get(&format!("jex.telemetry.{HOST_ID}"))
        .map_or(0, Vec::len);
    ensure!(
        held == n,
        "the stream moved on without remote_write: {held} messages stored, {n} before"
    );
    drop(relay);

    // A CA file that does not exist: the start stops and names it.
    write(&w.join("absent-ca.pem"))?;
    let out = jex_e2e::output_within(
        Command::new(relay_bin())
            .args(["run", "--config"])
            .arg(&config),
        REAP,
    )?;
    let stderr = String::from_utf8(out.stderr)?;
    ensure!(out.status.code() == Some(2), "{:?}: {stderr}", out.status);
    ensure!(
        stderr.contains("remote_write TLS: reading") && stderr.contains("absent-ca.pem"),
        "{stderr}"
    );
    Ok(())
}
