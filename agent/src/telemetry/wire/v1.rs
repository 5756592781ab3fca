//! The decoder kept for spool segments of format 1: their record bodies are postcard-encoded
//! `RecordBody` values as the telemetry model stood when those segments were written (up to
//! commit aa2e22f). Postcard writes fields by position with no tags, so these types are a
//! frozen copy of that model, field for field and in order: change them never, only what they
//! convert into. `crates/spool/testdata/v1-segment.seg` is a golden segment of this format.

use serde::Deserialize;

use crate::telemetry as model;
use jex_spool::PayloadError;

// Decoded once per record and converted at once, as the model's own `RecordBody` is.
#[allow(clippy::large_enum_variant)]
#[derive(Deserialize)]
enum RecordBody {
    Sample(Sample),
    Gap(Gap),
}

#[derive(Deserialize)]
struct Sample {
    window_ms: u32,
    cpu: CpuSample,
    load: LoadAverage,
    memory: MemorySample,
    swap: SwapSample,
    pressure: MemoryPressure,
}

#[derive(Deserialize)]
struct CpuSample {
    busy_bp: u32,
    user_bp: u32,
    system_bp: u32,
    iowait_bp: u32,
    core_busy_bp: Vec<u32>,
    clusters: Vec<ClusterBusy>,
    online_cpus: u32,
}

#[derive(Deserialize)]
struct ClusterBusy {
    kind: CoreKind,
    busy_bp: u32,
    cpus: u32,
}

#[derive(Deserialize)]
enum CoreKind {
    Performance,
    Efficiency,
}

#[derive(Deserialize)]
struct LoadAverage {
    one: f64,
    five: f64,
    fifteen: f64,
}

#[derive(Deserialize)]
struct MemorySample {
    formula_version: u32,
    total_bytes: u64,
    used_bytes: u64,
    available_bytes: u64,
    free_bytes: u64,
    active_bytes: u64,
    inactive_bytes: u64,
    wired_bytes: u64,
    compressed_bytes: u64,
    purgeable_bytes: u64,
    speculative_bytes: u64,
    cached_bytes: u64,
    buffers_bytes: u64,
    shared_bytes: u64,
    slab_reclaimable_bytes: u64,
}

#[derive(Deserialize)]
struct SwapSample {
    total_bytes: u64,
    used_bytes: u64,
}

#[derive(Deserialize)]
struct MemoryPressure {
    level: Option<PressureLevel>,
    psi: Option<Psi>,
}

#[derive(Deserialize)]
enum PressureLevel {
    Normal,
    Warn,
    Critical,
}

#[derive(Deserialize)]
struct Psi {
    some_avg10: f64,
    full_avg10: f64,
}

#[derive(Deserialize)]
struct Gap {
    reason: GapReason,
    missing_seqs: Option<(u64, u64)>,
    start_time_unix_ms: u64,
    end_time_unix_ms: u64,
}

#[derive(Deserialize)]
enum GapReason {
    AgentDown,
    Evicted,
    Corrupt,
    SamplerError,
    DiskFull,
}

/// A format 1 record body, in today's telemetry model.
pub fn decode(bytes: &[u8]) -> Result<model::RecordBody, PayloadError> {
    let body: RecordBody = postcard::from_bytes(bytes)
        .map_err(|err| PayloadError(format!("format 1 record body: {err}")))?;
    Ok(match body {
        RecordBody::Sample(s) => model::RecordBody::Sample(model::Sample {
            window_ms: s.window_ms,
            cpu: model::CpuSample {
                busy_bp: s.cpu.busy_bp,
                user_bp: s.cpu.user_bp,
                system_bp: s.cpu.system_bp,
                iowait_bp: s.cpu.iowait_bp,
                core_busy_bp: s.cpu.core_busy_bp,
                clusters: s
                    .cpu
                    .clusters
                    .into_iter()
                    .map(|c| model::ClusterBusy {
                        kind: match c.kind {
                            CoreKind::Performance => model::CoreKind::Performance,
                            CoreKind::Efficiency => model::CoreKind::Efficiency,
                        },
                        busy_bp: c.busy_bp,
                        cpus: c.cpus,
                    })
                    .collect(),
                online_cpus: s.cpu.online_cpus,
            },
            load: model::LoadAverage {
                one: s.load.one,
                five: s.load.five,
                fifteen: s.load.fifteen,
            },
            memory: model::MemorySample {
                formula_version: s.memory.formula_version,
                total_bytes: s.memory.total_bytes,
                used_bytes: s.memory.used_bytes,
                available_bytes: s.memory.available_bytes,
                free_bytes: s.memory.free_bytes,
                active_bytes: s.memory.active_bytes,
                inactive_bytes: s.memory.inactive_bytes,
                wired_bytes: s.memory.wired_bytes,
                compressed_bytes: s.memory.compressed_bytes,
                purgeable_bytes: s.memory.purgeable_bytes,
                speculative_bytes: s.memory.speculative_bytes,
                cached_bytes: s.memory.cached_bytes,
                buffers_bytes: s.memory.buffers_bytes,
                shared_bytes: s.memory.shared_bytes,
                slab_reclaimable_bytes: s.memory.slab_reclaimable_bytes,
            },
            swap: model::SwapSample {
                total_bytes: s.swap.total_bytes,
                used_bytes: s.swap.used_bytes,
            },
            pressure: model::MemoryPressure {
                level: s.pressure.level.map(|level| match level {
                    PressureLevel::Normal => model::PressureLevel::Normal,
                    PressureLevel::Warn => model::PressureLevel::Warn,
                    PressureLevel::Critical => model::PressureLevel::Critical,
                }),
                psi: s.pressure.psi.map(|p| model::Psi {
                    some_avg10: p.some_avg10,
                    full_avg10: p.full_avg10,
                }),
            },
        }),
        RecordBody::Gap(g) => model::RecordBody::Gap(model::Gap {
            reason: match g.reason {
                GapReason::AgentDown => model::GapReason::AgentDown,
                GapReason::Evicted => model::GapReason::Evicted,
                GapReason::Corrupt => model::GapReason::Corrupt,
                GapReason::SamplerError => model::GapReason::SamplerError,
                GapReason::DiskFull => model::GapReason::DiskFull,
            },
            missing_seqs: g.missing_seqs,
            start_time_unix_ms: g.start_time_unix_ms,
            end_time_unix_ms: g.end_time_unix_ms,
        }),
    })
}
