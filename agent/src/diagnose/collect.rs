//! One collector per file of the bundle. Each returns the file's bytes, or why it could not
//! be collected (a sentence for README.txt); none of them stops the others, and each is held
//! to its own size cap ([`cap`]).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use super::journal::{is_final, rfc3339_ms, summarize};
use super::redact::redact;
use super::tail::{log_files, tail};
use crate::config::{Config, defaults};
use crate::error_chain;

/// What a collector gives: the file's bytes, or why there are none.
pub type Collected = Result<Vec<u8>, String>;

/// Lines of the agent's log the bundle keeps.
pub const LOG_LINES: usize = 2000;
/// Cap of the log tail.
pub const LOG_CAP: usize = 16 << 20;
/// Cap of the configuration file (and its parsed form).
pub const CONFIG_CAP: usize = 1 << 20;
/// Cap of the status, spool and journal summaries.
pub const SUMMARY_CAP: usize = 4 << 20;
/// Cap of the metrics text.
pub const METRICS_CAP: usize = 4 << 20;
/// Cap of small text parts (version, certificates, system).
pub const TEXT_CAP: usize = 256 << 10;
/// The longest erase journal read.
const JOURNAL_CAP: u64 = 256 << 20;
/// How long the metrics scrape may take, each of connect, write and read.
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

/// `bytes`, or why they are over `max`.
pub fn cap(bytes: Vec<u8>, max: usize) -> Collected {
    if bytes.len() > max {
        return Err(format!(
            "{} bytes, over this part's cap of {max} bytes: left out",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// What the agent said on its status socket.
#[derive(Debug, Clone)]
pub enum AgentState {
    /// It answered with this document.
    Running(Value),
    /// Nothing listens on the socket, or it is missing.
    NotRunning(String),
    /// Something is there but gave no status (why).
    NoAnswer(String),
}

impl AgentState {
    /// The status document of a running agent.
    pub fn status(&self) -> Option<&Value> {
        match self {
            AgentState::Running(v) => Some(v),
            _ => None,
        }
    }
}

/// Asks the agent on `socket` for its status (the raw JSON, whatever fields it has).
pub fn ask_agent(socket: &Path) -> AgentState {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return AgentState::NoAnswer(format!("no async runtime to ask it: {e}")),
    };
    let asked = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            crate::local_socket::ask(socket, crate::local_socket::Query::Status),
        )
        .await
    });
    match asked {
        Ok(Ok(value)) => AgentState::Running(value),
        Ok(Err(e)) if e.no_agent() => AgentState::NotRunning(error_chain(&e)),
        Ok(Err(e)) => AgentState::NoAnswer(error_chain(&e)),
        Err(_) => AgentState::NoAnswer(format!("no answer on {} within 10 s", socket.display())),
    }
}

fn pretty(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// `status.json`: the running agent's status with `"agent_running": true`, or one built from
/// files with `"agent_running": false`.
pub fn status(agent: &AgentState, config: Result<&Config, &str>) -> Collected {
    let value = match agent {
        AgentState::Running(status) => {
            let mut status = status.clone();
            match status.as_object_mut() {
                Some(object) => {
                    object.insert("agent_running".into(), Value::Bool(true));
                    status
                }
                None => json!({ "agent_running": true, "status": status }),
            }
        }
        AgentState::NotRunning(why) | AgentState::NoAnswer(why) => {
            let mut from_files = json!({
                "agent_running": false,
                "collected_from": "files",
                "why": why,
            });
            match config {
                Ok(config) => {
                    from_files["config"] = json!(config.source.path.display().to_string());
                    from_files["host_id"] = match crate::tls::host_id_from_cert(&config.tls.cert) {
                        Ok(id) => json!(id),
                        Err(e) => json!(format!("unknown: {}", error_chain(&e))),
                    };
                    from_files["spool"] =
                        spool_value(agent, config).unwrap_or_else(|e| json!({ "error": e }));
                    from_files["erase"] = journal_value(config)
                        .map(|j| {
                            let last = j["operations"]
                                .as_array()
                                .and_then(|ops| ops.last())
                                .cloned()
                                .unwrap_or(Value::Null);
                            json!({
                                "last_operation": last,
                                "in_progress": last.get("last_step")
                                    .and_then(Value::as_str)
                                    .is_some_and(|s| !is_final(s)),
                            })
                        })
                        .unwrap_or_else(|e| json!({ "error": e }));
                }
                Err(e) => from_files["config_error"] = json!(e),
            }
            from_files
        }
    };
    cap(pretty(&value), SUMMARY_CAP)
}

/// `config.toml`: the file as it is, with any PEM block or key-like string taken out, under a
/// header that says which.
pub fn config_file(path: &Path) -> Collected {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > CONFIG_CAP as u64 {
        return Err(format!(
            "{} is {} bytes, over the cap of {CONFIG_CAP}: left out",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&text);
    let redacted = redact(&text);
    let mut out = format!(
        "# jex-agent diagnose: {}, as read. Key files are named by path only; their contents are not here.\n",
        path.display()
    );
    if redacted.removed.is_empty() {
        out.push_str("# Checked: no PEM block (-----BEGIN) and no key-like string in this file.\n");
    } else {
        for what in &redacted.removed {
            let _ = writeln!(out, "# REDACTED: {what}");
        }
    }
    out.push('\n');
    out.push_str(&redacted.text);
    cap(out.into_bytes(), CONFIG_CAP)
}

/// How many PEM blocks or key-like strings `config_file` took out of `path` (for README.txt).
pub fn config_redactions(path: &Path) -> Vec<String> {
    std::fs::read(path)
        .map(|t| redact(&String::from_utf8_lossy(&t)).removed)
        .unwrap_or_default()
}

/// `config-effective.txt`: the parsed configuration, defaults filled in. Its `Debug` holds paths,
/// addresses, names and numbers only (the configuration has no secret field); it goes through
/// the same redaction all the same.
pub fn config_effective(config: Result<&Config, &str>) -> Collected {
    let config = config.map_err(|e| format!("the configuration did not load: {e}"))?;
    let text = format!(
        "# jex-agent diagnose: the configuration as the agent reads it ({}), defaults filled in.\n\n{config:#?}\n",
        config.source.path.display()
    );
    cap(redact(&text).text.into_bytes(), CONFIG_CAP)
}

/// The log directory and how many rotated files it keeps: the configuration's, else the default.
pub fn log_dir(config: Result<&Config, &str>) -> (PathBuf, u32) {
    match config {
        Ok(c) => (c.logging.dir.clone(), c.logging.max_files),
        Err(_) => (PathBuf::from(defaults::LOG_DIR), 64),
    }
}

/// `logs/agent.log.tail`: the last [`LOG_LINES`] lines, and a note of where they came from.
pub fn log_tail(config: Result<&Config, &str>) -> (Collected, String) {
    let (dir, max_files) = log_dir(config);
    let files = log_files(&dir, max_files);
    if files.is_empty() {
        return (
            Err(format!(
                "no {} in {}",
                crate::logging::LOG_FILE,
                dir.display()
            )),
            String::new(),
        );
    }
    match tail(&files, LOG_LINES, LOG_CAP) {
        Ok(t) => {
            let names: Vec<String> = t.files.iter().map(|f| f.display().to_string()).collect();
            let note = format!(
                "{} line(s) from {}{}",
                t.lines,
                names.join(", "),
                if t.capped {
                    format!(" (cut at the {LOG_CAP}-byte cap)")
                } else {
                    String::new()
                }
            );
            (Ok(t.text), note)
        }
        Err(e) => (
            Err(format!("reading the logs in {}: {e}", dir.display())),
            String::new(),
        ),
    }
}

/// `version.txt`: this binary's build, the OS, and the running agent's version when it runs.
pub fn version(agent: &AgentState) -> Collected {
    let b = crate::BUILD;
    let mut out = String::new();
    let _ = writeln!(out, "jex-agent {}", crate::LONG_VERSION);
    let _ = writeln!(out, "version:  {}", b.version);
    let _ = writeln!(out, "commit:   {}", b.commit);
    let _ = writeln!(out, "target:   {}", b.target);
    let _ = writeln!(out, "built:    {}", b.date);
    let _ = writeln!(out, "rustc:    {}", b.rustc);
    let _ = writeln!(
        out,
        "binary:   {}",
        std::env::current_exe()
            .map_or_else(|e| format!("unknown: {e}"), |p| p.display().to_string())
    );
    if let Some(status) = agent.status() {
        let field = |k: &str| {
            status
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        };
        let _ = writeln!(
            out,
            "running agent: {} ({}), pid {}",
            field("agent_version"),
            field("agent_build"),
            status.get("pid").and_then(Value::as_u64).unwrap_or(0)
        );
    }
    match jex_platform::host_info() {
        Ok(h) => {
            let _ = writeln!(
                out,
                "os:       {} {}",
                h.os_name,
                h.os_version.as_deref().unwrap_or("?")
            );
            let _ = writeln!(out, "model:    {}", h.model.as_deref().unwrap_or("?"));
            let _ = writeln!(out, "chip:     {}", h.chip.as_deref().unwrap_or("?"));
            let _ = writeln!(out, "cpus:     {}", h.logical_cpus);
            let _ = writeln!(out, "memory:   {} bytes", h.memory_bytes);
        }
        Err(e) => {
            let _ = writeln!(out, "os:       unknown ({})", error_chain(&e));
        }
    }
    if let Ok(u) = nix::sys::utsname::uname() {
        let _ = writeln!(
            out,
            "kernel:   {} {} {}",
            u.sysname().to_string_lossy(),
            u.release().to_string_lossy(),
            u.machine().to_string_lossy()
        );
    }
    cap(out.into_bytes(), TEXT_CAP)
}

/// What a read-only look at the spool directory shows: segment files by name and size.
fn spool_dir_scan(dir: &Path) -> Result<Value, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    let mut segments: Vec<(u64, u64)> = Vec::new();
    let mut unwritten = Vec::new();
    let mut other = 0u64;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let len = entry.metadata().map_or(0, |m| m.len());
        if let Some(seq) = name
            .strip_suffix(".seg")
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
        {
            segments.push((seq, len));
        } else if name.ends_with(".unwritten") {
            unwritten.push(name);
        } else {
            other += 1;
        }
    }
    segments.sort_unstable();
    unwritten.sort();
    Ok(json!({
        "dir": dir.display().to_string(),
        "segments": segments.len(),
        "bytes": segments.iter().map(|s| s.1).sum::<u64>(),
        "first_segment_seq": segments.first().map(|s| s.0),
        "newest_segment_seq": segments.last().map(|s| s.0),
        "unwritten_markers": unwritten,
        "other_files": other,
    }))
}

/// The spool summary: the running agent's counters and a read-only scan of the directory.
fn spool_value(agent: &AgentState, config: &Config) -> Result<Value, String> {
    let spool = config.spool_config();
    let scan = spool_dir_scan(&spool.dir);
    let mut value = json!({ "dir": spool.dir.display().to_string(), "max_bytes": spool.max_bytes });
    match agent.status().and_then(|s| s.get("telemetry")) {
        Some(t) => {
            let n = |k: &str| t.get(k).cloned().unwrap_or(Value::Null);
            value["source"] =
                json!("the running agent's status, and a read-only listing of the directory");
            value["first_seq"] = n("spool_first_seq");
            value["last_seq"] = n("last_seq");
            value["records"] = n("spool_records");
            value["bytes"] = n("spool_bytes");
            value["corrupt_records"] = n("corrupt_records");
            value["evicted_records"] = n("evicted_records");
            value["durable"] = match t.get("not_durable").and_then(Value::as_bool) {
                Some(not) => json!(!not),
                None => Value::Null,
            };
        }
        None => {
            value["source"] = json!(
                "a read-only listing of the directory (no agent answered): records, sequence numbers within segments and durability are known only to a running agent, which scans and repairs the segments when it opens them"
            );
        }
    }
    match scan {
        Ok(scan) => {
            if agent.status().is_none() {
                value["segments"] = scan["segments"].clone();
                value["bytes"] = scan["bytes"].clone();
                value["first_seq"] = scan["first_segment_seq"].clone();
            }
            value["directory"] = scan;
        }
        Err(e) => value["directory"] = json!({ "error": e }),
    }
    Ok(value)
}

/// `spool.json`.
pub fn spool(agent: &AgentState, config: Result<&Config, &str>) -> Collected {
    let config = config.map_err(|e| {
        format!("the configuration did not load, so the spool directory is unknown: {e}")
    })?;
    cap(pretty(&spool_value(agent, config)?), SUMMARY_CAP)
}

/// File names (never contents) of a directory, sorted; empty when it is missing.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The erase journal's summary (read-only), with the certificate and pattern-key file names.
fn journal_value(config: &Config) -> Result<Value, String> {
    let dirs = jex_erase::layout::StateDirs {
        root: config.erase.state_dir.clone(),
    };
    let path = dirs.journal();
    let mut value = json!({
        "journal": path.display().to_string(),
        "omitted": "the controller's nonces, pattern keys and their hashes, key snapshots and key-destruction evidence, signed prepare records, media serial numbers, and the certificates' contents (they reveal the pattern key and the nonce): certificates are listed by file name only",
        "certificates": names_in(&dirs.certificates()),
        "pattern_key_files": names_in(&dirs.keys()).len(),
    });
    match std::fs::metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            value["operations"] = json!([]);
            value["note"] = json!("no journal: no erase was ever requested on this host");
            return Ok(value);
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
        Ok(m) if m.len() > JOURNAL_CAP => {
            return Err(format!(
                "{} is {} bytes, over the cap of {JOURNAL_CAP}: not read",
                path.display(),
                m.len()
            ));
        }
        Ok(m) => value["journal_bytes"] = json!(m.len()),
    }
    let replay = jex_erase::journal::Journal::<jex_erase::record::Record>::read(&path)
        .map_err(|e| error_chain(&e))?;
    value["records"] = json!(replay.records.len());
    value["torn_tail_bytes"] = json!(replay.torn_bytes);
    value["operations"] = serde_json::to_value(summarize(&replay.records))
        .map_err(|e| format!("encoding the summary: {e}"))?;
    Ok(value)
}

/// `erase-journal.json`.
pub fn erase_journal(config: Result<&Config, &str>) -> Collected {
    let config = config.map_err(|e| {
        format!("the configuration did not load, so the erase state directory is unknown: {e}")
    })?;
    cap(pretty(&journal_value(config)?), SUMMARY_CAP)
}

/// One certificate's facts.
fn describe_certificate(out: &mut String, der: &[u8], now: i64) {
    use x509_parser::prelude::*;
    let fingerprint = hex::encode(ring::digest::digest(&ring::digest::SHA256, der));
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => {
            let validity = cert.validity();
            let not_after = validity.not_after.timestamp();
            let _ = writeln!(out, "  subject:     {}", cert.subject());
            let _ = writeln!(out, "  issuer:      {}", cert.issuer());
            let _ = writeln!(out, "  serial:      {}", cert.raw_serial_as_string());
            let _ = writeln!(out, "  not_before:  {}", validity.not_before);
            let _ = writeln!(out, "  not_after:   {}", validity.not_after);
            let _ = writeln!(
                out,
                "  days left:   {}{}",
                (not_after - now).div_euclid(86_400),
                if not_after < now { " (EXPIRED)" } else { "" }
            );
            if let Ok(Some(san)) = cert.subject_alternative_name() {
                for name in &san.value.general_names {
                    let _ = writeln!(out, "  san:         {name}");
                }
            }
        }
        Err(e) => {
            let _ = writeln!(out, "  does not parse as X.509: {e}");
        }
    }
    let _ = writeln!(out, "  sha256:      {fingerprint}");
}

/// `certificates.txt`: every certificate of the agent's chain and of the fleet CA file. Only
/// the certificate files are read, and only their CERTIFICATE blocks; never the private key.
pub fn certificates(config: Result<&Config, &str>, now: i64) -> Collected {
    let config = config.map_err(|e| {
        format!("the configuration did not load, so the certificate files are unknown: {e}")
    })?;
    let mut out = String::new();
    for (what, path) in [
        ("agent certificate chain (tls.cert)", &config.tls.cert),
        ("fleet CA (tls.client_ca)", &config.tls.client_ca),
    ] {
        let _ = writeln!(out, "{what}: {}", path.display());
        match crate::tls::load_certs(path) {
            Ok(certs) => {
                for (i, der) in certs.iter().enumerate() {
                    let _ = writeln!(out, " [{i}]");
                    describe_certificate(&mut out, der, now);
                }
            }
            Err(e) => {
                let _ = writeln!(out, "  could not be read: {}", error_chain(&e));
            }
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "private key (tls.key): {} (not read; it never goes in a bundle)",
        config.tls.key.display()
    );
    cap(out.into_bytes(), TEXT_CAP)
}

/// `metrics.txt`: a plain-HTTP scrape of the running agent's `/metrics` on its bound address.
/// With `[metrics] tls = true` it is skipped: the endpoint then wants a client certificate of
/// the observer or controller role, which this host does not hold (the agent's own certificate
/// has neither role).
pub fn metrics(agent: &AgentState, config: Result<&Config, &str>) -> Collected {
    let Some(status) = agent.status() else {
        return Err("the agent was not running: there was no /metrics endpoint to scrape".into());
    };
    if status.get("metrics_tls").and_then(Value::as_bool) == Some(true) {
        return Err("skipped: [metrics] tls = true, and the endpoint then needs a client certificate of the observer or controller role, which this host does not hold; scrape it from a fleet observer instead".into());
    }
    let addr = match status.get("metrics_listen").and_then(Value::as_str) {
        Some(a) => a.to_owned(),
        None if config.is_ok_and(|c| !c.metrics.enabled) => {
            return Err("the metrics endpoint is disabled ([metrics] enabled = false)".into());
        }
        None => {
            return Err(
                "the running agent reported no metrics address: the endpoint is off".into(),
            );
        }
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("the agent's metrics address {addr:?} does not parse: {e}"))?;
    scrape(addr)
}

/// One `GET /metrics` over plain HTTP/1.1, bounded in time and size; the body of a 200.
fn scrape(addr: SocketAddr) -> Collected {
    let io = |e: std::io::Error| format!("scraping http://{addr}/metrics: {e}");
    let mut conn = TcpStream::connect_timeout(&addr, METRICS_TIMEOUT).map_err(io)?;
    conn.set_read_timeout(Some(METRICS_TIMEOUT)).map_err(io)?;
    conn.set_write_timeout(Some(METRICS_TIMEOUT)).map_err(io)?;
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nUser-Agent: jex-agent-diagnose\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut answer = Vec::new();
    conn.take(METRICS_CAP as u64 + 64 * 1024)
        .read_to_end(&mut answer)
        .map_err(io)?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("http://{addr}/metrics answered without an HTTP header"))?;
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status_line = head.lines().next().unwrap_or("");
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(format!("http://{addr}/metrics answered {status_line:?}"));
    }
    let mut body = answer[split + 4..].to_vec();
    if head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    }) {
        body = dechunk(&body)
            .ok_or_else(|| format!("http://{addr}/metrics: a broken chunked body"))?;
    }
    cap(body, METRICS_CAP)
}

/// The body of a chunked HTTP/1.1 answer.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// Free and total bytes of the file system holding `path`.
#[allow(
    clippy::useless_conversion,
    reason = "the statvfs counts are u64 on Linux but u32 (fsblkcnt_t) on macOS"
)]
fn disk_free(out: &mut String, what: &str, path: &Path) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(s) => {
            let block = u64::from(s.fragment_size());
            let free = u64::from(s.blocks_available()).saturating_mul(block);
            let total = u64::from(s.blocks()).saturating_mul(block);
            let _ = writeln!(
                out,
                "{what:<12} {}: {free} bytes free of {total} ({:.1} % free)",
                path.display(),
                if total == 0 {
                    0.0
                } else {
                    free as f64 * 100.0 / total as f64
                }
            );
        }
        Err(e) => {
            let _ = writeln!(out, "{what:<12} {}: {e}", path.display());
        }
    }
}

/// `system.txt`: the kernel, the host name, uptime where the OS shows it, and the free space
/// of the state and log directories.
pub fn system(config: Result<&Config, &str>, made_at: &str) -> Collected {
    let mut out = String::new();
    let _ = writeln!(out, "collected:   {made_at}");
    match nix::sys::utsname::uname() {
        Ok(u) => {
            let _ = writeln!(
                out,
                "uname:       {} {} {} {} {}",
                u.sysname().to_string_lossy(),
                u.nodename().to_string_lossy(),
                u.release().to_string_lossy(),
                u.version().to_string_lossy(),
                u.machine().to_string_lossy()
            );
        }
        Err(e) => {
            let _ = writeln!(out, "uname:       {e}");
        }
    }
    match std::fs::read_to_string("/proc/uptime") {
        Ok(text) => {
            let secs = text
                .split_whitespace()
                .next()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0);
            let _ = writeln!(
                out,
                "uptime:      {secs:.0} s ({:.1} days)",
                secs / 86_400.0
            );
        }
        Err(_) => {
            let _ = writeln!(
                out,
                "uptime:      not shown by this OS without a tool (see the agent's uptime_secs in status.json)"
            );
        }
    }
    let _ = writeln!(out, "now (unix ms): {}", jex_attest::clock::now_unix_ms());
    if let Some(t) = rfc3339_ms(jex_attest::clock::now_unix_ms()) {
        let _ = writeln!(out, "now (UTC):     {t}");
    }
    out.push('\n');
    match config {
        Ok(c) => {
            disk_free(&mut out, "state_dir", &c.state_dir);
            disk_free(&mut out, "spool", &c.spool_config().dir);
            disk_free(&mut out, "erase state", &c.erase.state_dir);
            disk_free(&mut out, "log dir", &c.logging.dir);
        }
        Err(_) => {
            disk_free(&mut out, "log dir", Path::new(defaults::LOG_DIR));
        }
    }
    cap(out.into_bytes(), TEXT_CAP)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_chunked_body_is_joined() {
        assert_eq!(
            dechunk(b"5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n").unwrap(),
            b"hello world"
        );
        assert_eq!(dechunk(b"5\r\nhel"), None);
    }

    #[test]
    fn a_part_over_its_cap_is_refused_with_its_size() {
        assert_eq!(cap(vec![1; 3], 3).unwrap(), vec![1; 3]);
        assert_eq!(
            cap(vec![1; 4], 3).unwrap_err(),
            "4 bytes, over this part's cap of 3 bytes: left out"
        );
    }

    #[test]
    fn the_spool_directory_is_listed_without_opening_segments() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000000000000000001.seg"), [0u8; 10]).unwrap();
        std::fs::write(dir.path().join("00000000000000000100.seg"), [0u8; 5]).unwrap();
        std::fs::write(
            dir.path()
                .join("00000000000000000050-00000000000000000052.unwritten"),
            b"",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let v = spool_dir_scan(dir.path()).unwrap();
        assert_eq!(v["segments"], 2);
        assert_eq!(v["bytes"], 15);
        assert_eq!(v["first_segment_seq"], 1);
        assert_eq!(v["newest_segment_seq"], 100);
        assert_eq!(v["other_files"], 1);
        assert!(spool_dir_scan(&dir.path().join("missing")).is_err());
    }
}
