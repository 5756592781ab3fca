//! Text for a person: the erase plan and the progress bar that `jex-agent erase-plan`,
//! `jex-agent ctl watch` and the demo print. Pure functions of their input, shared by the
//! command line and the demo so that neither depends on the other.

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
