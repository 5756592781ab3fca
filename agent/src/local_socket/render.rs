//! Text for a person: the agent report of `jex-agent status`, the erase plan of
//! `jex-agent erase-plan`, and the progress line that `jex-agent ctl watch` and the demo print.
//! Pure functions of their input, shared by the command line and the demo so that neither
//! depends on the other.

use super::protocol::AgentReport;

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `3d4h`, `5h2m`, `40s`: how long ago, roughly.
fn age(ms: u64) -> String {
    let secs = ms / 1000;
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{}s", secs % 60)
    } else {
        format!("{secs}s")
    }
}

/// Renders a snapshot for a person.
pub fn render_report(s: &AgentReport, now_unix_ms: u64) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "jex-agent {} (pid {}) host {}",
        s.agent_version, s.pid, s.host_id
    );
    if !s.agent_build.is_empty() {
        let _ = writeln!(o, "build:      {}", s.agent_build);
    }
    let _ = writeln!(o, "state:      {}", s.lifecycle);
    if s.conditions.is_empty() {
        let _ = writeln!(o, "health:     OK (no condition raised)");
    } else {
        let _ = writeln!(o, "health:     {} condition(s) raised", s.conditions.len());
        for c in &s.conditions {
            let _ = writeln!(
                o,
                "  - {} for {}: {}",
                c.kind.as_str(),
                age(now_unix_ms.saturating_sub(c.since_unix_ms)),
                c.message
            );
        }
    }
    let _ = writeln!(
        o,
        "uptime:     {}s, listening on {}",
        s.uptime_secs, s.listen
    );
    let _ = writeln!(
        o,
        "metrics:    {}",
        s.metrics_listen.as_deref().map_or_else(
            || "off".to_owned(),
            |a| format!("http{}://{a}/metrics", if s.metrics_tls { "s" } else { "" })
        )
    );
    let t = &s.telemetry;
    let age = if t.last_sample_unix_ms == 0 {
        "no sample yet".to_owned()
    } else {
        format!(
            "{:.1}s ago",
            now_unix_ms.saturating_sub(t.last_sample_unix_ms) as f64 / 1000.0
        )
    };
    let _ = writeln!(
        o,
        "telemetry:  every {} ms, last seq {} ({age})",
        t.interval_ms, t.last_seq
    );
    let _ = writeln!(
        o,
        "spool:      {} records (seq {}..={}), {}, corrupt skipped {}, evicted {}",
        t.spool_records,
        t.spool_first_seq,
        t.last_seq,
        bytes(t.spool_bytes),
        t.corrupt_records,
        t.evicted_records
    );
    if t.not_durable {
        let _ = writeln!(
            o,
            "            NOT DURABLE: the spool cannot store records (disk full); they are sent live only"
        );
    }
    let c = &s.connections;
    let _ = writeln!(
        o,
        "conns:      {} open (cap {}, {} per peer)",
        c.open, c.max, c.max_per_peer
    );
    let _ = writeln!(o, "streams:    {}", s.streams.len());
    for st in &s.streams {
        let _ = writeln!(
            o,
            "  - {} ({}) from {}, open {}s, last seq sent {}",
            st.peer, st.role, st.addr, st.open_secs, st.last_seq_sent
        );
    }
    match &s.erase {
        None if s.erase_unavailable.is_some() => {
            let reason = s.erase_unavailable.as_deref().unwrap_or_default();
            let _ = writeln!(o, "erase:      UNAVAILABLE: {reason}");
        }
        None => {
            let _ = writeln!(o, "erase:      none requested");
        }
        Some(e) => {
            let pct = if e.bytes_total > 0 {
                e.bytes_done as f64 * 100.0 / e.bytes_total as f64
            } else {
                0.0
            };
            let _ = writeln!(
                o,
                "erase:      {} phase {} {}/{} ({pct:.1}%) at {}/s, eta {}s{}{}",
                e.operation_id,
                e.phase,
                bytes(e.bytes_done),
                bytes(e.bytes_total),
                bytes(e.rate_bytes_per_second as u64),
                e.eta_seconds,
                e.outcome
                    .as_ref()
                    .map(|x| format!(", outcome {x}"))
                    .unwrap_or_default(),
                e.failure_reason
                    .as_ref()
                    .map(|x| format!(", FAILED: {x}"))
                    .unwrap_or_default(),
            );
        }
    }
    o
}

/// The erase plan for a person.
pub fn render_plan(plan: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    if let Some(err) = plan.get("error").and_then(|e| e.as_str()) {
        let _ = writeln!(o, "cannot plan: {err}");
        return o;
    }
    let targets = plan
        .get("targets")
        .and_then(|t| t.as_array())
        .cloned()
        .unwrap_or_default();
    if targets.is_empty() {
        let _ = writeln!(
            o,
            "no erase targets configured: a Terminate would be refused (add [[erase.targets]])"
        );
    }
    for t in &targets {
        let s = |k: &str| {
            t.get(k)
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                .unwrap_or_default()
        };
        let ready = t.get("ready").and_then(|v| v.as_bool()).unwrap_or(false);
        let _ = writeln!(
            o,
            "target {} ({}): {} — {}",
            s("name"),
            s("backend"),
            s("device"),
            if ready {
                "WOULD BE DESTROYED"
            } else {
                "NOT READY: Terminate would fail"
            }
        );
        let _ = writeln!(
            o,
            "  size: {} bytes; identity: {}",
            s("size_bytes"),
            s("identity")
        );
        for c in t
            .get("checks")
            .and_then(|c| c.as_array())
            .cloned()
            .unwrap_or_default()
        {
            let passed = c.get("passed").and_then(|v| v.as_bool()).unwrap_or(false);
            let _ = writeln!(
                o,
                "  [{}] {}: {}",
                if passed { "ok" } else { "FAIL" },
                c.get("check").and_then(|v| v.as_str()).unwrap_or(""),
                c.get("detail").and_then(|v| v.as_str()).unwrap_or("")
            );
        }
    }
    o
}

/// `PHASE [#####.....]  42.0%  123.4 MiB/s`
pub fn progress_line(phase: &str, done: u64, total: u64, rate: f64) -> String {
    const WIDTH: usize = 30;
    let frac = if total > 0 {
        (done as f64 / total as f64).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let filled = (frac * WIDTH as f64).round() as usize;
    format!(
        "{phase:<15} [{}{}] {:>5.1}%  {:>8.1} MiB/s",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        frac * 100.0,
        rate / (1024.0 * 1024.0)
    )
}
