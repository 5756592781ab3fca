//! Raw host counters, as the operating system reports them: the input of the telemetry model.
//!
//! These are plain data. The platform crate fills them (from `/proc` on Linux, from mach and
//! `sysctl` on macOS); [`crate::cpu`] and [`crate::memory`] turn two readings into a sample.
//! Nothing here is a rate.

use crate::sample::{LoadAverage, MemoryPressure, SwapSample};

/// Raw tick counters of one logical CPU since boot.
///
/// Linux fills every field from `/proc/stat` (64-bit counters in `USER_HZ`). macOS fills `user`,
/// `nice`, `system` and `idle` from the 32-bit `cpu_ticks` of `PROCESSOR_CPU_LOAD_INFO` (100 Hz)
/// and leaves the rest 0. Nothing here is a rate: the sampler works on differences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    /// Time in user mode (Linux: includes guest time).
    pub user: u64,
    /// Time in user mode at low priority.
    pub nice: u64,
    /// Time in kernel mode.
    pub system: u64,
    /// Idle time.
    pub idle: u64,
    /// Idle while waiting for I/O (Linux).
    pub iowait: u64,
    /// Servicing hardware interrupts (Linux).
    pub irq: u64,
    /// Servicing softirqs (Linux).
    pub softirq: u64,
    /// Stolen by the hypervisor (Linux guests).
    pub steal: u64,
}

/// One reading of every CPU's counters, indexed by logical CPU number; `None` where a CPU is
/// absent from the reading (offline, or not reported).
pub type CpuReading = Vec<Option<CpuTicks>>;

/// How a platform's CPU tick counters behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterWidth {
    /// 32-bit counters that wrap around (macOS `cpu_ticks`): differences use `wrapping_sub`.
    Wrapping32,
    /// 64-bit counters that only go up (Linux `/proc/stat`): a counter that goes backwards means
    /// the CPU's accounting was reset, and that CPU is left out of the window.
    Monotonic64,
}

/// The units of a platform's CPU tick counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuAccounting {
    /// Ticks per second per CPU (100 on macOS; `USER_HZ` on Linux, 100 on common architectures).
    pub ticks_per_second: u32,
    /// Whether counters wrap.
    pub width: CounterWidth,
}

/// Memory counters as the platform reports them; `telemetry::memory` turns them into a sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryCounters {
    /// Linux `/proc/meminfo`.
    Linux(Meminfo),
    /// macOS `host_statistics64(HOST_VM_INFO64)` page counts plus `hw.memsize`.
    Darwin(VmCounts),
}

/// Everything the sampler reads in one tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    /// Per-CPU tick counters.
    pub cpus: CpuReading,
    /// Memory counters.
    pub memory: MemoryCounters,
    /// Swap space.
    pub swap: SwapSample,
    /// Load averages.
    pub load: LoadAverage,
    /// Memory pressure, where the OS exposes it.
    pub pressure: MemoryPressure,
}

/// The `/proc/meminfo` fields the agent uses, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meminfo {
    /// `MemTotal`.
    pub mem_total_kib: u64,
    /// `MemFree`.
    pub mem_free_kib: u64,
    /// `MemAvailable` (Linux 3.14 and later).
    pub mem_available_kib: u64,
    /// `Buffers`.
    pub buffers_kib: u64,
    /// `Cached`.
    pub cached_kib: u64,
    /// `Active`.
    pub active_kib: u64,
    /// `Inactive`.
    pub inactive_kib: u64,
    /// `Shmem`.
    pub shmem_kib: u64,
    /// `SReclaimable`.
    pub sreclaimable_kib: u64,
    /// `SwapTotal`.
    pub swap_total_kib: u64,
    /// `SwapFree`.
    pub swap_free_kib: u64,
}

/// Page counts from `host_statistics64(HOST_VM_INFO64)`, the page size and physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmCounts {
    /// Bytes per page (`vm_kernel_page_size`: 16384 on Apple Silicon).
    pub page_size: u64,
    /// Physical memory in bytes (`hw.memsize`).
    pub total_bytes: u64,
    /// `free_count` (includes speculative pages).
    pub free: u64,
    /// `active_count`.
    pub active: u64,
    /// `inactive_count`.
    pub inactive: u64,
    /// `speculative_count`.
    pub speculative: u64,
    /// `throttled_count`.
    pub throttled: u64,
    /// `wire_count`.
    pub wired: u64,
    /// `purgeable_count`.
    pub purgeable: u64,
    /// `compressor_page_count`: pages the compressor occupies.
    pub compressor: u64,
    /// `internal_page_count`: anonymous pages.
    pub internal: u64,
    /// `external_page_count`: file-backed pages.
    pub external: u64,
}
