//! The telemetry model's memory formulas on the platform parsers' output: real `/proc/meminfo`
//! text and a real macOS `vm_stat` capture in, host-aggregate memory samples out.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use jex_platform::{darwin, procfs};
use jex_telemetry::MEMORY_FORMULA_VERSION;
use jex_telemetry::memory::{from_meminfo, from_vm_counts};

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

/// The same formula on Apple silicon captures: 16 KiB pages, a busy compressor, and (macOS
/// 26.6) the `Pages tagged…` lines, which are not memory classes of the model and are ignored.
#[test]
fn macos_formula_on_apple_silicon_vm_stat_captures() {
    let parse = |text: &str, total: u64| {
        let mut v = darwin::parse_vm_stat(text).unwrap();
        v.total_bytes = total;
        (v.page_size, from_vm_counts(&v))
    };
    let (page, m4) = parse(
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/macos/vm_stat.m4-mac-mini-16g.macos-26.5.1.txt"
        )),
        16 << 30,
    );
    assert_eq!(page, 16384);
    // (anonymous 363641 - purgeable 4133) + wired 106741 + compressor 110063 pages.
    assert_eq!(m4.used_bytes, 576_312 * 16384);
    assert_eq!(m4.compressed_bytes, 110_063 * 16384);
    assert_eq!(m4.free_bytes, 24_141 * 16384);
    assert_eq!(m4.available_bytes, (16 << 30) - 576_312 * 16384);

    let (page, m5) = parse(
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/macos/vm_stat.m5pro-macbook-48g.macos-26.6.2.txt"
        )),
        48 << 30,
    );
    assert_eq!(page, 16384);
    // (anonymous 768041 - purgeable 23665) + wired 160600 + compressor 120819 pages.
    assert_eq!(m5.used_bytes, 1_025_795 * 16384);
    assert_eq!(m5.wired_bytes, 160_600 * 16384);
    assert_eq!(m5.speculative_bytes, 210_943 * 16384);
}
