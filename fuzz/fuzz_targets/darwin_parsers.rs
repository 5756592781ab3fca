//! The text and binary parsers of `jex_platform::darwin` (macOS command output and sysctl
//! values) and of `jex_platform::procfs` / `blockdev` (Linux `/proc` files), every one on the
//! same input, with the memory formulas of `jex_telemetry` on what parses. Nothing may panic,
//! and what parses keeps the documented bounds.

#![no_main]

use jex_platform::darwin::{self, SysctlRead, SysctlText};
use jex_platform::{blockdev, procfs};
use jex_telemetry::memory;
use libfuzzer_sys::fuzz_target;

fn darwin_parsers(data: &[u8], text: &str) {
    let _ = darwin::parse_platform_expert(data);
    if let Ok(swap) = darwin::decode_xsw_usage(data.get(..darwin::XSW_USAGE_LEN).unwrap_or(data)) {
        assert!(swap.used_bytes <= swap.total_bytes);
    }
    if let Ok(mut counts) = darwin::parse_vm_stat(text) {
        counts.total_bytes = counts.page_size.saturating_mul(1 << 20);
        let sample = memory::from_vm_counts(&counts);
        assert_eq!(
            sample.used_bytes + sample.available_bytes,
            sample.total_bytes
        );
    }
    let clusters = darwin::parse_ioreg_cluster_types(text).unwrap_or_default();
    let sysctl = SysctlText::parse(text);
    let levels = darwin::perf_levels(&sysctl);
    assert!(levels.len() <= 16);
    // The CPU count comes from the kernel (sysctl), not from outside; the kinds table is sized by
    // it, so an absurd count from fuzzed text is kept to the procfs bound instead of allocated.
    let logical_cpus = sysctl
        .int("hw.logicalcpu_max")
        .or_else(|| sysctl.int("hw.ncpu"))
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    if logical_cpus <= procfs::MAX_CPUS {
        let identity = darwin::parse_platform_expert(data).unwrap_or_default();
        let info = darwin::host_info_from(&sysctl, identity, &clusters);
        assert_eq!(info.cpu_kinds.len(), info.logical_cpus as usize);
    }
}

fn procfs_parsers(text: &str) {
    if let Ok(cpus) = procfs::parse_stat(text) {
        assert!(cpus.len() <= procfs::MAX_CPUS);
    }
    if let Ok(m) = procfs::parse_meminfo(text) {
        let sample = memory::from_meminfo(&m);
        assert_eq!(
            sample.used_bytes + sample.available_bytes,
            sample.total_bytes
        );
        let swap = procfs::swap_from_meminfo(&m);
        assert!(swap.used_bytes <= swap.total_bytes);
    }
    let _ = procfs::parse_swaps(text);
    if let Ok(load) = procfs::parse_loadavg(text) {
        for v in [load.one, load.five, load.fifteen] {
            assert!(v.is_finite() && v >= 0.0);
        }
    }
    if let Ok(psi) = procfs::parse_psi(text) {
        for v in [psi.some_avg10, psi.full_avg10] {
            assert!(v.is_finite() && (0.0..=100.0).contains(&v));
        }
    }
    if let Ok(cpus) = procfs::parse_cpu_list(text, "cpu list") {
        assert!(cpus.iter().all(|c| (*c as usize) < procfs::MAX_CPUS));
    }
    let _ = procfs::parse_cpuinfo_model(text);
    let _ = blockdev::parse_mountinfo(text);
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    darwin_parsers(data, &text);
    procfs_parsers(&text);
});
