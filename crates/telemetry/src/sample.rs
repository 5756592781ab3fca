//! The telemetry record types: what one sample holds, and the numbered records (samples and
//! gaps) that the spool stores and the server streams.
//!
//! This is the privacy boundary of the agent: a fixed schema of host aggregates. There is no
//! field for a process, user, hostname, path or network address, and none may be added.
//! `jex-agent schema` prints these fields; the server converts them one to one into the proto.

use serde::{Deserialize, Serialize};

/// How `used` and `available` memory are derived. Bump when a formula changes.
///
/// Version 1:
/// - Linux: `available = MemAvailable`, `used = MemTotal - MemAvailable`.
/// - macOS: `used = (internal - purgeable) + wired + compressor` pages ("App Memory" + wired +
///   compressed, as Activity Monitor shows it); `available = total - used`.
pub const MEMORY_FORMULA_VERSION: u32 = 1;

/// One sample of host aggregates over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Sample {
    /// The length of the window the CPU figures cover, in milliseconds.
    pub window_ms: u32,
    /// CPU busy figures over the window.
    pub cpu: CpuSample,
    /// Load averages.
    pub load: LoadAverage,
    /// Memory classes.
    pub memory: MemorySample,
    /// Swap space.
    pub swap: SwapSample,
    /// Memory pressure.
    pub pressure: MemoryPressure,
}

/// CPU busy over a window, in basis points (10000 = 100 %).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CpuSample {
    /// Host busy: busy ticks of all cores over the ticks all online cores could have run.
    pub busy_bp: u32,
    /// User share (including nice).
    pub user_bp: u32,
    /// System share (including interrupts).
    pub system_bp: u32,
    /// I/O wait share (Linux), 0 elsewhere.
    pub iowait_bp: u32,
    /// Busy per logical CPU, by CPU index.
    pub core_busy_bp: Vec<u32>,
    /// Busy per cluster (one per core kind, fastest first), where the topology is known.
    pub clusters: Vec<ClusterBusy>,
    /// Logical CPUs that reported ticks in this window.
    pub online_cpus: u32,
}

/// Busy of one kind of core, as a share of that cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterBusy {
    /// The kind of core.
    pub kind: CoreKind,
    /// Busy over the cluster's CPUs, in basis points.
    pub busy_bp: u32,
    /// The number of logical CPUs in the cluster.
    pub cpus: u32,
}

/// The kind of a CPU core. On Apple Silicon each kind is one performance level
/// (`hw.perflevelN`), named by `hw.perflevelN.name`: `Super` (M5 generation: the fastest
/// cores, perflevel0 where present), `Performance` and `Efficiency`. Which levels a chip has
/// varies: M1 to M4 report Performance and Efficiency; the M5 Max reports Super and
/// Performance and no Efficiency level. Linux hybrid CPUs map their big cores to `Performance`
/// and their small ones to `Efficiency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CoreKind {
    /// Performance core (the level named `Performance`).
    Performance,
    /// Efficiency core (the level named `Efficiency`).
    Efficiency,
    /// Super core (the level named `Super`, faster than performance cores).
    Super,
}

impl CoreKind {
    /// Every kind, fastest first: the order clusters are reported in.
    pub const ALL: [CoreKind; 3] = [CoreKind::Super, CoreKind::Performance, CoreKind::Efficiency];
}

/// Load averages (run-queue length, not utilisation).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct LoadAverage {
    /// 1 minute.
    pub one: f64,
    /// 5 minutes.
    pub five: f64,
    /// 15 minutes.
    pub fifteen: f64,
}

/// Physical memory in bytes; platform classes are 0 where the platform has no such class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MemorySample {
    /// See [`MEMORY_FORMULA_VERSION`].
    pub formula_version: u32,
    /// Physical memory.
    pub total_bytes: u64,
    /// In use, by the versioned formula.
    pub used_bytes: u64,
    /// Available without swapping, by the versioned formula.
    pub available_bytes: u64,
    /// Free (macOS: free minus speculative; Linux: MemFree).
    pub free_bytes: u64,
    /// Active pages.
    pub active_bytes: u64,
    /// Inactive pages.
    pub inactive_bytes: u64,
    /// Wired (macOS).
    pub wired_bytes: u64,
    /// Occupied by the compressor (macOS).
    pub compressed_bytes: u64,
    /// Purgeable (macOS).
    pub purgeable_bytes: u64,
    /// Speculative (macOS).
    pub speculative_bytes: u64,
    /// Page cache (Linux Cached).
    pub cached_bytes: u64,
    /// Buffers (Linux).
    pub buffers_bytes: u64,
    /// Shmem (Linux).
    pub shared_bytes: u64,
    /// SReclaimable (Linux).
    pub slab_reclaimable_bytes: u64,
}

/// Swap space in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SwapSample {
    /// Total swap.
    pub total_bytes: u64,
    /// Swap in use.
    pub used_bytes: u64,
}

/// The OS's view of memory shortage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct MemoryPressure {
    /// macOS pressure level; `None` where the OS has none.
    pub level: Option<PressureLevel>,
    /// Linux PSI memory figures, where `/proc/pressure/memory` exists.
    pub psi: Option<Psi>,
}

/// The macOS memory-pressure level (`kern.memorystatus_vm_pressure_level` returns 1/2/4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PressureLevel {
    /// Dispatch level 1.
    Normal,
    /// Dispatch level 2.
    Warn,
    /// Dispatch level 4.
    Critical,
}

/// Linux pressure-stall information for memory, 10 s averages in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Psi {
    /// Some tasks stalled.
    pub some_avg10: f64,
    /// All tasks stalled.
    pub full_avg10: f64,
}

/// One numbered entry of the telemetry sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Strictly increasing across restarts.
    pub seq: u64,
    /// When the record was made, in milliseconds since the Unix epoch.
    pub time_unix_ms: u64,
    /// A sample or a gap.
    pub body: RecordBody,
}

/// What a record holds.
// Samples are the common case and move through Vecs and channels by value; boxing them would add
// an allocation per record on the hot path to save space only for the rare gap.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecordBody {
    /// A sample.
    Sample(Sample),
    /// Missing samples.
    Gap(Gap),
}

/// Samples that are missing, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// Why.
    pub reason: GapReason,
    /// Inclusive range of lost sequence numbers; `None` when no number was lost (agent down).
    pub missing_seqs: Option<(u64, u64)>,
    /// Start of the period without samples (Unix ms).
    pub start_time_unix_ms: u64,
    /// End of the period without samples (Unix ms).
    pub end_time_unix_ms: u64,
}

/// Why samples are missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GapReason {
    /// The agent was not running.
    AgentDown,
    /// Removed from the spool by its size cap.
    Evicted,
    /// Stored, but failed the checksum on read.
    Corrupt,
    /// The sampler could not read the counters.
    SamplerError,
    /// Sent live, but the spool could not store them (the disk was full): they cannot be
    /// replayed. Stays last: the spool stores this enum by position.
    DiskFull,
}

/// Something that takes samples: the platform sampler in production, a scripted source in tests.
///
/// `sample` is called once per interval from a blocking thread; it keeps whatever state it needs
/// between calls (previous tick counters) and returns the aggregates over the window since the
/// previous call.
pub trait SampleSource: Send + 'static {
    /// Takes one sample; an error becomes a `SamplerError` gap.
    fn sample(&mut self) -> Result<Sample, SampleError>;
}

/// A sample could not be taken.
#[derive(Debug, thiserror::Error)]
#[error("reading {what}")]
pub struct SampleError {
    /// What could not be read, e.g. `/proc/stat`.
    pub what: String,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}
