//! The `/metrics` endpoint of a real agent process: scraped over plain HTTP on loopback and
//! over mTLS, its figures checked against `GetHost` and `jex-agent status`, its output checked
//! by `promtool`, its bounds (a slow-loris client, 10,000 scrapes in a row) and a real
//! Prometheus scraping it. `promtool` and `prometheus` are Debian's (`apt-get install
//! prometheus`, which scripts/test.sh does); a missing one fails the test.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use jex_agent::pki::{DevCa, LeafSpec};
use jex_e2e::*;
use jex_proto::v1 as pb;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const PROMTOOL: &str = "/usr/bin/promtool";
const PROMETHEUS: &str = "/usr/bin/prometheus";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0";

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one HTTP/1.1 request with `Connection: close` and reads the answer to the end.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    accept: Option<&str>,
) -> Result<Answer> {
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut raw))
        .await
        .context("the answer within 20 s")??;
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> Result<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no end of head in {text:?}"))?;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").context("chunk size line")?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(after.get(..size).context("short chunk")?);
        rest = after.get(size + 2..).context("chunk end")?;
    }
}

/// A plain HTTP request to `addr`.
async fn plain(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    accept: Option<&str>,
) -> Result<Answer> {
    exchange(TcpStream::connect(addr).await?, method, path, accept).await
}

/// A TLS client trusting the fleet CA, presenting `who` if given.
fn tls_client(pki: &TestPki, who: Option<&ClientFiles>) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&pki.paths.ca_cert)? {
        roots.add(ca?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match who {
        Some(files) => {
            let chain =
                CertificateDer::pem_file_iter(&files.cert)?.collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&files.key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A request over TLS; `Err` when the handshake fails.
async fn over_tls(
    pki: &TestPki,
    addr: std::net::SocketAddr,
    who: Option<&ClientFiles>,
    path: &str,
) -> Result<Answer> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = tls_client(pki, who)?
        .connect(ServerName::try_from("localhost")?, tcp)
        .await
        .context("TLS handshake")?;
    exchange(tls, "GET", path, None).await
}

/// The value of the series written exactly as `series` (name and labels), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        match rest {
            "NaN" => Some(f64::NAN),
            "+Inf" => Some(f64::INFINITY),
            v => v.parse().ok(),
        }
    })
}

fn must(text: &str, series: &str) -> Result<f64> {
    value(text, series).with_context(|| format!("no series {series} in:\n{text}"))
}

fn metrics_addr(agent: &AgentProcess) -> Result<std::net::SocketAddr> {
    agent
        .metrics_addr
        .context("the agent logged no `metrics serving` line")
}

fn start(pki: &TestPki, dir: &Path, metrics: &str) -> Result<AgentProcess> {
    start_agent(
        pki,
        dir,
        &AgentOptions {
            metrics: metrics.to_owned(),
            ..Default::default()
        },
    )
}

/// Runs `promtool check metrics` on `text`; its output.
fn promtool_check(text: &str) -> Result<String> {
    ensure!(
        Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is missing: install Debian's prometheus package (scripts/test.sh does)"
    );
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("promtool stdin")?;
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{said}",
        out.status
    );
    Ok(said)
}

/// Waits until the agent has taken a sample (the host families appear).
async fn scrape_with_sample(addr: std::net::SocketAddr) -> Result<Answer> {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = plain(addr, "GET", "/metrics", None).await?;
        if answer.body.contains("jex_host_memory_total_bytes ") {
            return Ok(answer);
        }
        if Instant::now() > end {
            bail!("no host sample within 20 s:\n{}", answer.body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn plain_scrape_matches_get_host_and_status_and_passes_promtool() -> Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let agent = start(&pki, dir.path(), "")?;
    let addr = metrics_addr(&agent)?;
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    // `jex-agent status` shows the bound address.
    let status = agent.status_cli()?;
    assert!(
        status.contains(&format!("metrics:    http://{addr}/metrics")),
        "{status}"
    );

    // A call counted by method and code, and a refusal counted by reason.
    let host = client(&pki, &agent, Some(&pki.observer()))
        .await?
        .get_host(pb::GetHostRequest {})
        .await?
        .into_inner()
        .host
        .unwrap_or_default();
    let refused = client(&pki, &agent, None)
        .await?
        .get_host(pb::GetHostRequest {})
        .await
        .expect_err("no certificate");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let before = jex_agent::local_socket::query_blocking(&agent.status_socket())?;
    let answer = scrape_with_sample(addr).await?;
    let after = jex_agent::local_socket::query_blocking(&agent.status_socket())?;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = &answer.body;
    let build = host.agent_build.clone().unwrap_or_default();
    let build_series = format!(
        "jex_agent_build_info{{version=\"{}\",commit=\"{}\",target=\"{}\",rustc=\"{}\"}}",
        build.version, build.commit, build.target, build.rustc
    );
    assert_eq!(must(text, &build_series)?, 1.0);
    assert_eq!(
        must(text, "jex_agent_start_time_seconds")?,
        host.agent_start_time_unix_ms as f64 / 1000.0
    );
    assert_eq!(
        must(text, "jex_host_memory_total_bytes")?,
        host.memory_bytes as f64,
        "the sample's total memory is GetHost's"
    );
    assert_eq!(
        must(text, "jex_agent_lifecycle{jex_agent_lifecycle=\"serving\"}")?,
        1.0
    );
    assert_eq!(
        must(
            text,
            "jex_agent_lifecycle{jex_agent_lifecycle=\"erase_failed\"}"
        )?,
        0.0
    );
    assert_eq!(host.lifecycle_state, pb::LifecycleState::Serving as i32);
    assert_eq!(must(text, "jex_agent_spool_durable")?, 1.0);
    assert_eq!(must(text, "jex_agent_erase_available")?, 1.0);
    assert_eq!(
        must(
            text,
            "jex_agent_rpcs_total{method=\"/jex.agent.v1.NodeAgent/GetHost\",code=\"OK\"}"
        )?,
        1.0
    );
    assert_eq!(
        must(
            text,
            "jex_agent_rpcs_total{method=\"/jex.agent.v1.NodeAgent/GetHost\",code=\"UNAUTHENTICATED\"}"
        )?,
        1.0
    );
    assert!(
        must(
            text,
            "jex_agent_refusals_total{listener=\"grpc\",reason=\"no_certificate\"}"
        )? >= 1.0
    );
    assert_eq!(
        must(
            text,
            "jex_agent_refusals_total{listener=\"metrics\",reason=\"no_request\"}"
        )?,
        0.0
    );
    // The spool and sampler figures lie between the status read before and the one after.
    let last_seq = must(text, "jex_agent_telemetry_last_seq")?;
    let seq_before = before.telemetry.last_seq as f64;
    assert!(
        seq_before <= last_seq && last_seq <= after.telemetry.last_seq as f64,
        "{seq_before} <= {last_seq} <= {}",
        after.telemetry.last_seq
    );
    assert!(must(text, "jex_agent_spool_records")? <= after.telemetry.spool_records as f64);
    assert!(must(text, "jex_agent_sampler_ticks_total")? >= 1.0);
    assert_eq!(must(text, "jex_agent_sampler_errors_total")?, 0.0);
    assert_eq!(must(text, "jex_agent_telemetry_subscribers")?, 0.0);
    // The certificates' notAfter: the dev PKI's agent certificate is valid for days ahead.
    let now = jex_attest::clock::now_unix_ms() as f64 / 1000.0;
    let cert = must(
        text,
        "jex_agent_tls_not_after_seconds{certificate=\"agent\"}",
    )?;
    let ca = must(
        text,
        "jex_agent_tls_not_after_seconds{certificate=\"fleet_ca\"}",
    )?;
    assert!(
        cert > now + 86_400.0 && ca >= cert,
        "agent {cert}, CA {ca}, now {now}"
    );
    // The process's own figures, against /proc.
    let rss = must(text, "process_resident_memory_bytes")?;
    assert!(rss > 1e6 && rss < 1e9, "{rss}");
    let fds = must(text, "process_open_fds")?;
    let fd_count = std::fs::read_dir(format!("/proc/{}/fd", agent.pid()))?.count() as f64;
    assert!((fds - fd_count).abs() < 16.0, "{fds} vs {fd_count}");
    assert!(must(text, "process_cpu_seconds_total")? > 0.0);
    let started = must(text, "process_start_time_seconds")?;
    assert!((started - host.agent_start_time_unix_ms as f64 / 1000.0).abs() < 5.0);
    assert!(must(text, "jex_agent_log_lines_dropped_total")? >= 0.0);
    for family in [
        "jex_agent_connections_open",
        "jex_agent_spool_bytes",
        "jex_agent_spool_first_seq",
        "jex_agent_telemetry_subscriber_lag_records",
        "jex_host_cpu_busy_ratio",
        "jex_host_memory_available_bytes",
        "jex_host_load1",
    ] {
        must(text, family)?;
    }
    assert!(text.contains("jex_agent_erase_phase{jex_agent_erase_phase=\"requested\"} 0\n"));
    // Nothing from a client reaches a label: no peer addresses, no identities.
    assert!(!text.contains("spiffe://"), "{text}");
    assert!(!text.contains("127.0.0.1"), "{text}");

    let said = promtool_check(text)?;
    eprintln!("promtool check metrics: {said:?}");

    // OpenMetrics when asked for, ending with # EOF.
    let om = plain(addr, "GET", "/metrics", Some(OPENMETRICS)).await?;
    assert_eq!(om.status, 200);
    assert_eq!(
        om.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    assert!(om.body.contains("# TYPE jex_agent_build info\n"));
    assert!(om.body.contains("# TYPE jex_agent_refusals counter\n"));
    assert!(om.body.contains("# TYPE jex_agent_lifecycle stateset\n"));
    assert!(om.body.contains("# UNIT jex_agent_spool_bytes bytes\n"));

    // HEAD: the headers, no body; other methods and paths refused.
    let head = plain(addr, "HEAD", "/metrics", None).await?;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "{:?}", head.body);
    let length: usize = head.header("content-length").unwrap_or("0").parse()?;
    assert!(length > 1000, "{length}");
    let post = plain(addr, "POST", "/metrics", None).await?;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    assert_eq!(plain(addr, "GET", "/", None).await?.status, 404);
    assert_eq!(plain(addr, "GET", "/metricsx", None).await?.status, 404);
    // A request head over the size limit.
    let big = format!("/metrics?{}", "a".repeat(9000));
    assert_eq!(plain(addr, "GET", &big, None).await?.status, 431);
    Ok(())
}

#[tokio::test]
async fn mtls_scrape_needs_a_fleet_certificate_with_a_role() -> Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let agent = start(&pki, dir.path(), "tls = true")?;
    let addr = metrics_addr(&agent)?;
    let status = agent.status_cli()?;
    assert!(
        status.contains(&format!("metrics:    https://{addr}/metrics")),
        "{status}"
    );
    // Plain HTTP on the TLS listener gets no metrics.
    let plain_try = plain(addr, "GET", "/metrics", None).await;
    assert!(
        plain_try.as_ref().map_or(true, |a| a.status != 200),
        "{plain_try:?}"
    );

    // The observer and the controller may scrape.
    for who in [pki.observer(), pki.controller()] {
        let ok = over_tls(&pki, addr, Some(&who), "/metrics").await?;
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert!(ok.body.contains("jex_agent_build_info{"), "{}", ok.body);
    }
    // No certificate: 403, saying what to fix.
    let none = over_tls(&pki, addr, None, "/metrics").await?;
    assert_eq!(none.status, 403);
    assert!(none.body.contains("no client certificate"), "{}", none.body);
    // A fleet certificate without a role: 403.
    let nobody = pki.issue(
        "nobody",
        None,
        &LeafSpec::client(
            "nobody",
            vec![format!("spiffe://{TRUST_DOMAIN}/nobody")],
            30,
        ),
    )?;
    let norole = over_tls(&pki, addr, Some(&nobody), "/metrics").await?;
    assert_eq!(norole.status, 403);
    assert!(norole.body.contains("holds no role"), "{}", norole.body);
    // A certificate from another CA: the handshake fails.
    let rogue_ca = DevCa::generate("rogue CA")?;
    let rogue = pki.issue(
        "rogue",
        Some(&rogue_ca),
        &LeafSpec::client(
            "rogue",
            vec![jex_agent::pki::observer_uri(TRUST_DOMAIN)],
            30,
        ),
    )?;
    let refused = over_tls(&pki, addr, Some(&rogue), "/metrics").await;
    assert!(refused.is_err(), "{refused:?}");
    // Each refusal is counted by reason on the metrics listener.
    let line = agent.wait_for_log(
        &[
            "TLS handshake refused",
            "\"listener\":\"metrics\"",
            "unknown issuer",
        ],
        Duration::from_secs(10),
    )?;
    assert!(!line.contains("BEGIN"), "no PEM in logs: {line}");
    let text = over_tls(&pki, addr, Some(&pki.observer()), "/metrics")
        .await?
        .body;
    for (reason, at_least) in [
        ("not_tls", 1.0),
        ("no_certificate", 1.0),
        ("no_role", 1.0),
        ("certificate_unknown_issuer", 1.0),
    ] {
        let series =
            format!("jex_agent_refusals_total{{listener=\"metrics\",reason=\"{reason}\"}}");
        assert!(must(&text, &series)? >= at_least, "{series}");
    }
    Ok(())
}

#[tokio::test]
async fn a_slow_loris_is_cut_off_within_the_header_timeout() -> Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let agent = start(&pki, dir.path(), "")?;
    let addr = metrics_addr(&agent)?;
    let mut tcp = TcpStream::connect(addr).await?;
    let started = Instant::now();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await?;
    // One more header byte every 300 ms, never the end of the head.
    let mut buf = [0u8; 512];
    let cut = loop {
        tokio::select! {
            read = tcp.read(&mut buf) => break read,
            () = tokio::time::sleep(Duration::from_millis(300)) => {
                if tcp.write_all(b"X").await.is_err() {
                    break Ok(0);
                }
            }
        }
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "still connected after 30 s"
        );
    };
    let took = started.elapsed();
    // The header-read timeout (5 s) cut it, well before the whole-request deadline (10 s).
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(9),
        "cut after {took:?} ({cut:?})"
    );
    // Whatever was sent back (hyper may answer 408) is not metrics.
    let sent = match cut {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(_) => String::new(),
    };
    assert!(!sent.contains("jex_agent"), "{sent}");
    // The endpoint still answers, and counted the cut.
    let text = plain(addr, "GET", "/metrics", None).await?.body;
    assert_eq!(
        must(
            &text,
            "jex_agent_refusals_total{listener=\"metrics\",reason=\"no_request\"}"
        )?,
        1.0
    );
    Ok(())
}

#[tokio::test]
async fn ten_thousand_scrapes_all_succeed_and_keep_memory_bounded() -> Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let agent = start(&pki, dir.path(), "")?;
    let addr = metrics_addr(&agent)?;
    scrape_with_sample(addr).await?;
    // Warm up (allocator arenas, the blocking pool), then measure.
    for _ in 0..200 {
        plain(addr, "GET", "/metrics", None).await?;
    }
    let before = agent.rss_kib()?;
    let started = Instant::now();
    for i in 0..10_000 {
        let answer = plain(addr, "GET", "/metrics", None).await?;
        ensure!(
            answer.status == 200 && answer.body.contains("jex_agent_build_info{"),
            "scrape {i}: {} {}",
            answer.status,
            answer.body
        );
    }
    let after = agent.rss_kib()?;
    let growth = after.saturating_sub(before);
    eprintln!(
        "10000 scrapes in {:?}; VmRSS {before} KiB -> {after} KiB (+{growth} KiB)",
        started.elapsed()
    );
    assert!(growth < 8 * 1024, "RSS grew by {growth} KiB");
    Ok(())
}

/// A Prometheus server run by a test; killed when dropped.
struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = wait_within(&mut self.child, REAP_DEADLINE, "prometheus");
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_prometheus(config: &str) -> Result<Prometheus> {
    ensure!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing: install Debian's prometheus package (scripts/test.sh does)"
    );
    let dir = tempfile::tempdir()?;
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config)?;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting prometheus")?;
    Ok(Prometheus {
        child,
        addr,
        _dir: dir,
    })
}

/// The query API's JSON for `query`.
async fn query(prometheus: &Prometheus, query: &str) -> Result<serde_json::Value> {
    let answer = plain(
        prometheus.addr,
        "GET",
        &format!("/api/v1/query?query={query}"),
        None,
    )
    .await?;
    ensure!(answer.status == 200, "{answer:?}");
    Ok(serde_json::from_str(&answer.body)?)
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_agent_over_plain_http_and_over_mtls() -> Result<()> {
    let pki = TestPki::new()?;
    let plain_dir = tempfile::tempdir()?;
    let plain_agent = start(&pki, plain_dir.path(), "")?;
    let tls_dir = tempfile::tempdir()?;
    let tls_agent = start(&pki, tls_dir.path(), "tls = true")?;
    let observer = pki.observer();
    let config = format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: plain
    static_configs:
      - targets: ["{plain}"]
  - job_name: mtls
    scheme: https
    tls_config:
      ca_file: {ca}
      cert_file: {cert}
      key_file: {key}
      server_name: localhost
    static_configs:
      - targets: ["{tls}"]
"#,
        plain = metrics_addr(&plain_agent)?,
        tls = metrics_addr(&tls_agent)?,
        ca = pki.paths.ca_cert.display(),
        cert = observer.cert.display(),
        key = observer.key.display(),
    );
    let prometheus = start_prometheus(&config)?;
    let end = Instant::now() + Duration::from_secs(60);
    let mut last = serde_json::Value::Null;
    loop {
        if let Ok(v) = query(&prometheus, "jex_agent_build_info").await {
            let jobs: Vec<&str> = v["data"]["result"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|s| s["metric"]["job"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            if jobs.contains(&"plain") && jobs.contains(&"mtls") {
                let series = &v["data"]["result"][0];
                assert_eq!(series["metric"]["version"], env!("CARGO_PKG_VERSION"));
                assert_eq!(series["value"][1], "1");
                break;
            }
            last = v;
        }
        if Instant::now() > end {
            let targets = plain(prometheus.addr, "GET", "/api/v1/targets", None)
                .await
                .map(|a| a.body)
                .unwrap_or_default();
            bail!("prometheus has not both series after 60 s: {last}\ntargets: {targets}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Both targets are up, and the host figures came through as numbers.
    let up = query(&prometheus, "up").await?;
    for series in up["data"]["result"].as_array().into_iter().flatten() {
        assert_eq!(series["value"][1], "1", "{series}");
    }
    let memory = query(&prometheus, "jex_host_memory_total_bytes").await?;
    assert!(
        memory["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{memory}"
    );
    Ok(())
}
