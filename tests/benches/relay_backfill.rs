//! jex-relay backfill into a real JetStream: a day of one host's spooled telemetry (86,400
//! samples at 1 Hz, 10-core samples) is written to a spool, a real agent is started on it, a
//! real `nats-server -js` and the relay (a real process) are started, and the relay is timed
//! from its start until JetStream has acknowledged the last record (`jex_relay_host_last_seq`,
//! polled every 50 ms). Also: the relay's CPU time and peak RSS, and the stream's bytes per
//! message. With `--remote-write` a real Prometheus receives the samples too.
//!
//! Run: `cargo bench -p jex-e2e --bench relay_backfill [-- --remote-write]` (needs Debian's
//! nats-server, and prometheus for `--remote-write`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use jex_e2e::*;

const DAY: u64 = DAY_SECS;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_port(port: u16) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(Instant::now() < end, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// utime + stime of `pid`, in seconds (clock ticks at 100 Hz).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok((f[11].parse::<u64>()? + f[12].parse::<u64>()?) as f64 / 100.0)
}

fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no such line")
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|r| r.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

fn logged_metrics_addr(log: &Path) -> Result<std::net::SocketAddr> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(a) = text.lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["fields"]["message"].as_str()? == "metrics serving").then_some(())?;
            v["fields"]["addr"].as_str()?.parse().ok()
        }) {
            return Ok(a);
        }
        if Instant::now() > end {
            bail!("the relay did not serve /metrics:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let remote_write = std::env::args().any(|a| a == "--remote-write");
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let spool_dir = dir.path().join("state").join("spool");
    // Recent times, inside Prometheus's out-of-order window when --remote-write.
    write_spool(
        &spool_dir,
        jex_attest::clock::now_unix_ms() - DAY * 1000,
        DAY,
    )?;
    let agent = start_agent(
        &pki,
        dir.path(),
        &AgentOptions {
            interval_ms: 1000,
            ..Default::default()
        },
    )?;

    let nats_port = free_port()?;
    let _nats = Killed(
        Command::new("/usr/sbin/nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &nats_port.to_string(),
                "-sd",
            ])
            .arg(dir.path().join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("nats-server (apt-get install nats-server)")?,
    );
    wait_port(nats_port)?;
    let mut _prometheus = None;
    let mut rw = String::new();
    if remote_write {
        let port = free_port()?;
        let pdir = dir.path().join("prometheus");
        std::fs::create_dir_all(&pdir)?;
        std::fs::write(
            pdir.join("prometheus.yml"),
            "storage:\n  tsdb:\n    out_of_order_time_window: 2d\n",
        )?;
        _prometheus = Some(Killed(
            Command::new("/usr/bin/prometheus")
                .arg(format!(
                    "--config.file={}",
                    pdir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    pdir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--web.enable-remote-write-receiver")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("prometheus (apt-get install prometheus)")?,
        ));
        wait_port(port)?;
        rw = format!("\n[remote_write]\nurl = \"http://127.0.0.1:{port}/api/v1/write\"\n");
    }
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n\n[[hosts]]\nhost_id = \"{HOST_ID}\"\naddr = \"https://{}\"\nserver_name = \"localhost\"\n\n[jetstream]\nurl = \"nats://127.0.0.1:{nats_port}\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n{rw}",
            pki.paths.observer_cert.display(),
            pki.paths.observer_key.display(),
            pki.paths.ca_cert.display(),
            agent.addr,
        ),
    )?;
    let log = dir.path().join("relay.log");
    let t = Instant::now();
    let relay = Killed(
        Command::new(env!("CARGO_BIN_EXE_jex-relay-e2e"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
    );
    let pid = relay.0.id();
    let metrics = logged_metrics_addr(&log)?;
    let series = format!("jex_relay_host_last_seq{{host_id=\"{HOST_ID}\"}}");
    loop {
        let text = scrape_plain(metrics).await?;
        if metric(&text, &series).unwrap_or(0.0) >= DAY as f64 {
            break;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(600),
            "no backfill in 10 min:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let el = t.elapsed();
    let cpu = cpu_seconds(pid)?;
    let hwm = status_kib(pid, "VmHWM:")?;
    let client = async_nats::connect(format!("nats://127.0.0.1:{nats_port}")).await?;
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("JEX_TELEMETRY")
        .await?;
    let state = stream.info().await?.state.clone();
    println!(
        "backfill of {DAY} records (one host, 10-core samples){}: {:.2} s from relay start ({:.0} records/s), relay CPU {cpu:.2} s, peak RSS {hwm} KiB; stream {} messages, {:.1} B/message",
        if remote_write {
            " to JetStream and remote_write"
        } else {
            " to JetStream"
        },
        el.as_secs_f64(),
        DAY as f64 / el.as_secs_f64(),
        state.messages,
        state.bytes as f64 / state.messages as f64,
    );
    Ok(())
}
