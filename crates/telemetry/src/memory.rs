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

use crate::counters::{Meminfo, MemoryCounters, VmCounts};
use crate::sample::{MEMORY_FORMULA_VERSION, MemorySample};

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
