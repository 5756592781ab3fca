//! What `/metrics` shows: the families read from the running agent's parts at each scrape.
//!
//! Agent families come from the parts that already keep the figures (the hub's counters and
//! spool statistics, the erase service's snapshot, the connection tracker, the refusal logs,
//! the call counts, the loaded TLS material, the log writer); host families from the hub's last
//! sample ([`host_families`], pure), with no figure the telemetry stream does not carry. Every
//! label value comes from a fixed set (reasons, methods and codes, states, CPU numbers and
//! kinds) or from the build.

use std::sync::Arc;

use super::encode::{Family, Kind, Value};
use crate::server::calls::CallCounts;
use crate::server::conn::Tracker;
use crate::server::refusals::{Reason, RefusalLog};
use crate::server::{Erase, EraseSlot, Streams};
use crate::telemetry::hub::Hub;
use crate::telemetry::{CoreKind, PressureLevel, Sample};
use crate::tls::ServerTls;

/// The running agent's parts the families are read from.
pub(crate) struct Sources {
    /// When the agent started (Unix ms).
    pub start_unix_ms: u64,
    /// Telemetry.
    pub hub: Arc<Hub>,
    /// The erase service.
    pub erase: Erase,
    /// Open telemetry streams.
    pub streams: Arc<Streams>,
    /// gRPC connections.
    pub tracker: Arc<Tracker>,
    /// The refusal logs of the gRPC edge and of the metrics listener.
    pub refusals: Vec<Arc<RefusalLog>>,
    /// Finished gRPC calls.
    pub calls: Arc<CallCounts>,
    /// The loaded TLS material.
    pub tls: Arc<ServerTls>,
    /// The raised conditions.
    pub health: crate::health::Health,
}

fn int(v: u64) -> Value {
    Value::Int(v)
}

fn gauge(name: &'static str, help: &'static str, v: Value) -> Family {
    Family::single(name, help, Kind::Gauge, v)
}

fn counter(name: &'static str, help: &'static str, v: u64) -> Family {
    Family::single(name, help, Kind::Counter, int(v))
}

impl Sources {
    /// Every family, agent first, then the process, then the host.
    pub fn families(&self) -> Vec<Family> {
        let mut out = self.agent_families();
        out.extend(process_families());
        out.extend(host_families(
            self.hub
                .latest_sample()
                .as_ref()
                .map(|(t, s)| (*t, s.as_ref())),
        ));
        out
    }

    fn agent_families(&self) -> Vec<Family> {
        let build = crate::BUILD;
        let stats = self.hub.stats();
        let last_seq = stats.last_seq.unwrap_or(0);
        let streams = self.streams.list();
        let slowest = streams.iter().map(|s| s.last_seq_sent).min();
        let lag = slowest.map_or(0, |sent| last_seq.saturating_sub(sent));
        let expiry = self.tls.expiry();
        let (lifecycle, phase, available) = match &*self.erase.current() {
            EraseSlot::Ready(erase) => {
                let phase = erase.watch(None).ok().map(|rx| rx.borrow().phase.as_str());
                (erase.lifecycle(), phase, true)
            }
            EraseSlot::Unavailable(_) => (jex_erase::Lifecycle::Serving, None, false),
        };
        let mut refusals = Family::new(
            "jex_agent_refusals",
            "Connections and calls refused or cut off, by listener and reason.",
            Kind::Counter,
        );
        for log in &self.refusals {
            for (reason, n) in log.totals() {
                refusals = refusals.sample(
                    vec![
                        ("listener", log.listener().to_owned()),
                        ("reason", Reason::label(reason).to_owned()),
                    ],
                    int(n),
                );
            }
        }
        let mut rpcs = Family::new(
            "jex_agent_rpcs",
            "Finished gRPC calls, by method and status code (a call cut off before its status counts as CANCELLED).",
            Kind::Counter,
        );
        for (method, code, n) in self.calls.snapshot() {
            rpcs = rpcs.sample(
                vec![("method", method.to_owned()), ("code", code.to_owned())],
                int(n),
            );
        }
        vec![
            Family::new(
                "jex_agent_build",
                "How this agent binary was built.",
                Kind::Info,
            )
            .sample(
                vec![
                    ("version", build.version.to_owned()),
                    ("commit", build.commit.to_owned()),
                    ("target", build.target.to_owned()),
                    ("rustc", build.rustc.to_owned()),
                ],
                int(1),
            ),
            gauge(
                "jex_agent_start_time_seconds",
                "When the agent started, in seconds since the Unix epoch.",
                Value::Float(self.start_unix_ms as f64 / 1000.0),
            )
            .unit("seconds"),
            gauge(
                "jex_agent_connections_open",
                "gRPC connections held now, from TCP accept (handshakes included).",
                int(u64::from(self.tracker.open())),
            ),
            gauge(
                "jex_agent_connections_max",
                "The cap on gRPC connections held at once.",
                int(u64::from(self.tracker.caps().total)),
            ),
            refusals,
            rpcs,
            gauge(
                "jex_agent_telemetry_last_seq",
                "The newest telemetry record's seq visible to subscribers.",
                int(last_seq),
            ),
            gauge(
                "jex_agent_spool_records",
                "Telemetry records in the spool.",
                int(stats.spool.records),
            ),
            gauge(
                "jex_agent_spool_bytes",
                "Bytes of the spool's segments on disk.",
                int(stats.spool.bytes),
            )
            .unit("bytes"),
            gauge(
                "jex_agent_spool_first_seq",
                "The oldest seq still in the spool (0 when it is empty).",
                int(stats.spool.first_seq.unwrap_or(0)),
            ),
            gauge(
                "jex_agent_spool_durable",
                "1 when the spool stores records, 0 when it cannot (disk full) and records are sent live only.",
                int(u64::from(!stats.spool.not_durable)),
            ),
            counter(
                "jex_agent_spool_corrupt_records",
                "Corrupt spool records skipped since start (reported to subscribers as a gap).",
                stats.spool.corrupt_records,
            ),
            counter(
                "jex_agent_spool_evicted_records",
                "Spool records evicted by its size cap since start.",
                stats.spool.evicted_records,
            ),
            counter(
                "jex_agent_spool_write_errors",
                "Records the spool could not take since start.",
                stats.spool_errors,
            ),
            gauge(
                "jex_agent_telemetry_subscribers",
                "Open telemetry subscriptions.",
                int(stats.subscribers as u64),
            ),
            gauge(
                "jex_agent_telemetry_subscriber_lag_records",
                "Records between the newest seq and the last one sent to the slowest open stream (0 without streams).",
                int(lag),
            ),
            counter(
                "jex_agent_sampler_ticks",
                "Sampler ticks since start, successful or not.",
                stats.samples + stats.sampler_errors,
            ),
            counter(
                "jex_agent_sampler_errors",
                "Sampler ticks that failed since start (each recorded as a gap).",
                stats.sampler_errors,
            ),
            Family::state_set(
                "jex_agent_lifecycle",
                "The host's lifecycle: 1 for the current state.",
                jex_erase::Lifecycle::ALL.map(|l| l.as_str()),
                Some(lifecycle.as_str()),
            ),
            Family::state_set(
                "jex_agent_erase_phase",
                "The phase of the current or last erase operation: 1 for it, all 0 when none ever ran.",
                jex_erase::Phase::ALL.map(|p| p.as_str()),
                phase,
            ),
            gauge(
                "jex_agent_erase_available",
                "1 when the erase service runs, 0 when it could not open its state directory (disk full).",
                int(u64::from(available)),
            ),
            Family::new(
                "jex_agent_tls_not_after_seconds",
                "When a loaded certificate expires (notAfter), in seconds since the Unix epoch: the agent's own, and the earliest of the fleet CA file.",
                Kind::Gauge,
            )
            .unit("seconds")
            .sample(
                vec![("certificate", "agent".to_owned())],
                Value::Float(expiry.cert_not_after as f64),
            )
            .sample(
                vec![("certificate", "fleet_ca".to_owned())],
                Value::Float(expiry.ca_not_after as f64),
            ),
            counter(
                "jex_agent_log_lines_dropped",
                "Log lines dropped because the log file's queue was full.",
                crate::logging::lines_dropped_total(),
            ),
            condition_family(&self.health.conditions()),
        ]
    }
}

/// `jex_agent_condition`: 1 for each raised condition, 0 for the others (the same list as
/// `GetHost.conditions`).
fn condition_family(raised: &[crate::health::Condition]) -> Family {
    let mut family = Family::new(
        "jex_agent_condition",
        "1 while the condition is raised (what GetHost.conditions and jex-agent status list), else 0.",
        Kind::Gauge,
    );
    for kind in crate::health::ConditionKind::ALL {
        let on = raised.iter().any(|c| c.kind == kind);
        family = family.sample(
            vec![("condition", kind.as_str().to_owned())],
            int(u64::from(on)),
        );
    }
    family
}

/// The `process_*` families; none when the OS cannot be read (a scrape still answers).
fn process_families() -> Vec<Family> {
    let usage = match jex_platform::usage::process_usage() {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %crate::error_chain(&e), "process usage unreadable");
            return Vec::new();
        }
    };
    vec![
        Family::single(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            Kind::Counter,
            Value::Float(usage.cpu_seconds),
        )
        .unit("seconds"),
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            int(usage.resident_bytes),
        )
        .unit("bytes"),
        gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            Value::Float(usage.start_time_seconds),
        )
        .unit("seconds"),
        gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            int(usage.open_fds),
        ),
    ]
}

fn ratio(bp: u32) -> Value {
    Value::Float(f64::from(bp) / 10_000.0)
}

/// The host families from the last sample (when it was taken, Unix ms, and the sample): the
/// figures of the telemetry stream, ratios for its basis points. None before the first sample.
pub fn host_families(latest: Option<(u64, &Sample)>) -> Vec<Family> {
    let Some((time_ms, s)) = latest else {
        return Vec::new();
    };
    let cpu = &s.cpu;
    let mem = &s.memory;
    let mut cores = Family::new(
        "jex_host_cpu_core_busy_ratio",
        "Busy share of each logical CPU over the last sample's window.",
        Kind::Gauge,
    );
    for (i, bp) in cpu.core_busy_bp.iter().enumerate() {
        cores = cores.sample(vec![("cpu", i.to_string())], ratio(*bp));
    }
    let mut clusters = Family::new(
        "jex_host_cpu_cluster_busy_ratio",
        "Busy share of each kind of core (super, performance, efficiency) where the topology is known.",
        Kind::Gauge,
    );
    for c in &cpu.clusters {
        let kind = match c.kind {
            CoreKind::Super => "super",
            CoreKind::Performance => "performance",
            CoreKind::Efficiency => "efficiency",
        };
        clusters = clusters.sample(vec![("kind", kind.to_owned())], ratio(c.busy_bp));
    }
    let bytes = |name, help, v: u64| gauge(name, help, int(v)).unit("bytes");
    let mut out = vec![
        gauge(
            "jex_host_sample_time_seconds",
            "When the last host sample was taken, in seconds since the Unix epoch.",
            Value::Float(time_ms as f64 / 1000.0),
        )
        .unit("seconds"),
        gauge(
            "jex_host_sample_window_seconds",
            "The window the last sample's CPU shares cover.",
            Value::Float(f64::from(s.window_ms) / 1000.0),
        )
        .unit("seconds"),
        gauge(
            "jex_host_cpu_busy_ratio",
            "Host busy: busy time of all cores over the time all online cores could have run.",
            ratio(cpu.busy_bp),
        ),
        gauge(
            "jex_host_cpu_user_ratio",
            "User time (nice included), on the basis of jex_host_cpu_busy_ratio.",
            ratio(cpu.user_bp),
        ),
        gauge(
            "jex_host_cpu_system_ratio",
            "System time (interrupts included), on the basis of jex_host_cpu_busy_ratio.",
            ratio(cpu.system_bp),
        ),
        gauge(
            "jex_host_cpu_iowait_ratio",
            "Time waiting for I/O (Linux iowait; 0 where the OS has no such figure), not part of busy.",
            ratio(cpu.iowait_bp),
        ),
        cores,
        clusters,
        gauge(
            "jex_host_cpus_online",
            "Logical CPUs that reported ticks in the last sample's window.",
            int(u64::from(cpu.online_cpus)),
        ),
        gauge(
            "jex_host_load1",
            "1-minute load average.",
            Value::Float(s.load.one),
        ),
        gauge(
            "jex_host_load5",
            "5-minute load average.",
            Value::Float(s.load.five),
        ),
        gauge(
            "jex_host_load15",
            "15-minute load average.",
            Value::Float(s.load.fifteen),
        ),
        bytes(
            "jex_host_memory_total_bytes",
            "Physical memory.",
            mem.total_bytes,
        ),
        bytes(
            "jex_host_memory_used_bytes",
            "Memory in use (formula by jex_host_memory_formula_version).",
            mem.used_bytes,
        ),
        bytes(
            "jex_host_memory_available_bytes",
            "Memory that can be given to new work without swapping.",
            mem.available_bytes,
        ),
        bytes(
            "jex_host_memory_free_bytes",
            "Free pages (macOS: free minus speculative; Linux: MemFree).",
            mem.free_bytes,
        ),
        bytes(
            "jex_host_memory_active_bytes",
            "Active pages.",
            mem.active_bytes,
        ),
        bytes(
            "jex_host_memory_inactive_bytes",
            "Inactive pages.",
            mem.inactive_bytes,
        ),
        bytes(
            "jex_host_memory_wired_bytes",
            "Wired pages (macOS; 0 elsewhere).",
            mem.wired_bytes,
        ),
        bytes(
            "jex_host_memory_compressed_bytes",
            "Pages held by the memory compressor (macOS; 0 elsewhere).",
            mem.compressed_bytes,
        ),
        bytes(
            "jex_host_memory_purgeable_bytes",
            "Purgeable pages (macOS; 0 elsewhere).",
            mem.purgeable_bytes,
        ),
        bytes(
            "jex_host_memory_speculative_bytes",
            "Speculative pages (macOS; 0 elsewhere).",
            mem.speculative_bytes,
        ),
        bytes(
            "jex_host_memory_cached_bytes",
            "Page cache (Linux: Cached; 0 elsewhere).",
            mem.cached_bytes,
        ),
        bytes(
            "jex_host_memory_buffers_bytes",
            "Block-device buffers (Linux: Buffers; 0 elsewhere).",
            mem.buffers_bytes,
        ),
        bytes(
            "jex_host_memory_shared_bytes",
            "Shared memory (Linux: Shmem; 0 elsewhere).",
            mem.shared_bytes,
        ),
        bytes(
            "jex_host_memory_slab_reclaimable_bytes",
            "Reclaimable kernel slab (Linux: SReclaimable; 0 elsewhere).",
            mem.slab_reclaimable_bytes,
        ),
        gauge(
            "jex_host_memory_formula_version",
            "How used and available memory are derived (see `jex-agent schema`).",
            int(u64::from(mem.formula_version)),
        ),
        bytes(
            "jex_host_swap_total_bytes",
            "Swap space.",
            s.swap.total_bytes,
        ),
        bytes(
            "jex_host_swap_used_bytes",
            "Swap in use.",
            s.swap.used_bytes,
        ),
    ];
    if let Some(psi) = &s.pressure.psi {
        out.push(gauge(
            "jex_host_memory_psi_some_avg10_ratio",
            "Linux PSI: share of time some tasks stalled on memory, 10 s average.",
            Value::Float(psi.some_avg10 / 100.0),
        ));
        out.push(gauge(
            "jex_host_memory_psi_full_avg10_ratio",
            "Linux PSI: share of time all tasks stalled on memory, 10 s average.",
            Value::Float(psi.full_avg10 / 100.0),
        ));
    }
    if let Some(level) = s.pressure.level {
        let current = match level {
            PressureLevel::Normal => "normal",
            PressureLevel::Warn => "warn",
            PressureLevel::Critical => "critical",
        };
        out.push(Family::state_set(
            "jex_host_memory_pressure_level",
            "The macOS memory-pressure level: 1 for the current one.",
            ["normal", "warn", "critical"],
            Some(current),
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::metrics::{Format, encode};
    use crate::telemetry::{ClusterBusy, CpuSample, MemorySample, Psi};

    fn sample() -> Sample {
        Sample {
            window_ms: 1000,
            cpu: CpuSample {
                busy_bp: 2500,
                user_bp: 2000,
                system_bp: 500,
                iowait_bp: 10,
                core_busy_bp: vec![10_000, 0],
                clusters: vec![ClusterBusy {
                    kind: CoreKind::Performance,
                    busy_bp: 5000,
                    cpus: 2,
                }],
                online_cpus: 2,
            },
            memory: MemorySample {
                total_bytes: 16 << 30,
                used_bytes: 4 << 30,
                available_bytes: 12 << 30,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn no_sample_yet_means_no_host_family() {
        assert!(host_families(None).is_empty());
    }

    #[test]
    fn host_families_carry_the_sample_as_ratios_and_bytes() {
        let mut s = sample();
        s.pressure.psi = Some(Psi {
            some_avg10: 1.5,
            full_avg10: 0.5,
        });
        let text = encode(
            &host_families(Some((1_700_000_000_500, &s))),
            Format::Prometheus,
        );
        for line in [
            "jex_host_sample_time_seconds 1700000000.5\n",
            "jex_host_cpu_busy_ratio 0.25\n",
            "jex_host_cpu_user_ratio 0.2\n",
            "jex_host_cpu_iowait_ratio 0.001\n",
            "jex_host_cpu_core_busy_ratio{cpu=\"0\"} 1\n",
            "jex_host_cpu_core_busy_ratio{cpu=\"1\"} 0\n",
            "jex_host_cpu_cluster_busy_ratio{kind=\"performance\"} 0.5\n",
            "jex_host_cpus_online 2\n",
            "jex_host_memory_total_bytes 17179869184\n",
            "jex_host_memory_available_bytes 12884901888\n",
            "jex_host_memory_psi_some_avg10_ratio 0.015\n",
            "# TYPE jex_host_load1 gauge\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        // No macOS pressure level on a sample without one.
        assert!(!text.contains("jex_host_memory_pressure_level"));
        s.pressure.level = Some(PressureLevel::Warn);
        let text = encode(&host_families(Some((0, &s))), Format::OpenMetrics);
        assert!(text.contains("# TYPE jex_host_memory_pressure_level stateset\n"));
        assert!(text.contains(
            "jex_host_memory_pressure_level{jex_host_memory_pressure_level=\"warn\"} 1\n"
        ));
        assert!(text.contains("# UNIT jex_host_memory_total_bytes bytes\n"));
    }
}
