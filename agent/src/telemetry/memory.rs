//! Memory samples from the platform's raw counters, by formula version
//! [`MEMORY_FORMULA_VERSION`] (1). Pure code: no OS calls.
//!
//! Linux (`/proc/meminfo`, KiB):
//! - `available = MemAvailable`, `used = MemTotal - MemAvailable`;
//! - `free = MemFree`, `active`, `inactive`, `cached = Cached`, `buffers`, `shared = Shmem`,
//!   `slab_reclaimable = SReclaimable`.
//!
//! macOS (`host_statistics64(HOST_VM_INFO64)` page counts × page size, `hw.memsize`):
//! - `used = (internal - purgeable) + wired + compressor` pages: Activity Monitor's "App
//!   Memory" + "Wired" + "Compressed";
//! - `available = total - used`;
//! - `free = free_count - speculative_count` (`free_count` includes speculative pages, and
//!   reporting it alone makes macOS look full); `speculative`, `active`, `inactive`, `wired`,
//!   `compressed = compressor_page_count` (pages the compressor occupies, not the uncompressed
//!   size), `purgeable`.
//!
//! Invariant: `used + available = total`, and both are clamped to `0..=total`.

use crate::platform::{Meminfo, MemoryCounters, VmCounts};
use crate::telemetry::sample::{MEMORY_FORMULA_VERSION, MemorySample};

/// The memory sample for whichever platform's counters were read.
pub fn memory_sample(counters: &MemoryCounters) -> MemorySample {
    match counters {
        MemoryCounters::Linux(m) => from_meminfo(m),
        MemoryCounters::Darwin(v) => from_vm_counts(v),
    }
}

/// The memory sample from Linux `/proc/meminfo`.
pub fn from_meminfo(m: &Meminfo) -> MemorySample {
    let kib = |v: u64| v.saturating_mul(1024);
    let total = kib(m.mem_total_kib);
    let available = kib(m.mem_available_kib).min(total);
    MemorySample {
        formula_version: MEMORY_FORMULA_VERSION,
        total_bytes: total,
        used_bytes: total - available,
        available_bytes: available,
        free_bytes: kib(m.mem_free_kib),
        active_bytes: kib(m.active_kib),
        inactive_bytes: kib(m.inactive_kib),
        cached_bytes: kib(m.cached_kib),
        buffers_bytes: kib(m.buffers_kib),
        shared_bytes: kib(m.shmem_kib),
        slab_reclaimable_bytes: kib(m.sreclaimable_kib),
        ..MemorySample::default()
    }
}

/// The memory sample from macOS page counts.
pub fn from_vm_counts(v: &VmCounts) -> MemorySample {
    let bytes = |pages: u64| pages.saturating_mul(v.page_size);
    let total = v.total_bytes;
    let used_pages = v
        .internal
        .saturating_sub(v.purgeable)
        .saturating_add(v.wired)
        .saturating_add(v.compressor);
    let used = bytes(used_pages).min(total);
    MemorySample {
        formula_version: MEMORY_FORMULA_VERSION,
        total_bytes: total,
        used_bytes: used,
        available_bytes: total - used,
        free_bytes: bytes(v.free.saturating_sub(v.speculative)),
        active_bytes: bytes(v.active),
        inactive_bytes: bytes(v.inactive),
        wired_bytes: bytes(v.wired),
        compressed_bytes: bytes(v.compressor),
        purgeable_bytes: bytes(v.purgeable),
        speculative_bytes: bytes(v.speculative),
        ..MemorySample::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::platform::{darwin, procfs};

    #[test]
    fn linux_used_is_total_minus_available() {
        let m = procfs::parse_meminfo(
            "MemTotal: 8000 kB\nMemFree: 1000 kB\nMemAvailable: 6000 kB\nBuffers: 100 kB\n\
             Cached: 3000 kB\nActive: 2500 kB\nInactive: 2000 kB\nShmem: 50 kB\n\
             SReclaimable: 400 kB\nSwapTotal: 2048 kB\nSwapFree: 1024 kB\n",
        )
        .unwrap();
        let s = from_meminfo(&m);
        assert_eq!(s.formula_version, 1);
        assert_eq!(s.total_bytes, 8000 * 1024);
        assert_eq!(s.available_bytes, 6000 * 1024);
        assert_eq!(s.used_bytes, 2000 * 1024);
        assert_eq!(s.free_bytes, 1000 * 1024);
        assert_eq!(
            (s.cached_bytes, s.buffers_bytes, s.shared_bytes),
            (3000 * 1024, 100 * 1024, 50 * 1024)
        );
        assert_eq!(s.slab_reclaimable_bytes, 400 * 1024);
        assert_eq!(
            (s.wired_bytes, s.compressed_bytes),
            (0, 0),
            "no macOS classes"
        );
        let swap = procfs::swap_from_meminfo(&m);
        assert_eq!(
            (swap.total_bytes, swap.used_bytes),
            (2048 * 1024, 1024 * 1024)
        );
    }

    #[test]
    fn linux_available_above_total_is_clamped() {
        let m = procfs::parse_meminfo("MemTotal: 10 kB\nMemAvailable: 12 kB\n").unwrap();
        let s = from_meminfo(&m);
        assert_eq!((s.used_bytes, s.available_bytes), (0, 10 * 1024));
    }

    #[test]
    fn macos_formula_on_a_real_vm_stat_capture() {
        let mut v = darwin::parse_vm_stat(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/macos/vm_stat.macos-vm-4k.txt"
        )))
        .unwrap();
        // The capture has no hw.memsize; its page counts (free, active, inactive, throttled,
        // wired, compressor) add up to 8387868 pages, within 0.01 % of 32 GiB.
        v.total_bytes = 32 << 30;
        let s = from_vm_counts(&v);
        // (anonymous 464333 - purgeable 11820) + wired 715958 + compressor 0 pages of 4 KiB.
        assert_eq!(s.used_bytes, 1_168_471 * 4096);
        assert_eq!(s.available_bytes, (32 << 30) - 1_168_471 * 4096);
        assert_eq!(
            s.free_bytes,
            6_127_229 * 4096,
            "vm_stat's Pages free: free - speculative"
        );
        assert_eq!(s.speculative_bytes, 430_715 * 4096);
        assert_eq!(s.wired_bytes, 715_958 * 4096);
        assert_eq!(s.purgeable_bytes, 11_820 * 4096);
        assert_eq!(s.formula_version, MEMORY_FORMULA_VERSION);
    }

    #[test]
    fn macos_counts_use_the_16k_page_and_clamp_used_to_total() {
        let v = VmCounts {
            page_size: 16_384,
            total_bytes: 100 * 16_384,
            free: 30,
            speculative: 10,
            internal: 80,
            purgeable: 10,
            wired: 20,
            compressor: 30,
            ..VmCounts::default()
        };
        let s = from_vm_counts(&v);
        assert_eq!(
            s.used_bytes,
            100 * 16_384,
            "120 pages clamped to the 100 that exist"
        );
        assert_eq!(s.available_bytes, 0);
        assert_eq!(s.free_bytes, 20 * 16_384);
        assert_eq!(s.compressed_bytes, 30 * 16_384);
        let dispatched = memory_sample(&MemoryCounters::Darwin(v));
        assert_eq!(dispatched, s);
    }
}
