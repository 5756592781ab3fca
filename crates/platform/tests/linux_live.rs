//! The Linux counter reader and the telemetry model against the live `/proc` of this machine,
//! each checked against an independent parse of the same files read just before and after.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::{Duration, Instant};

use jex_platform::HostCounters;
use jex_platform::linux::LinuxHost;
use jex_telemetry::cpu::CpuState;
use jex_telemetry::memory::memory_sample;
use jex_telemetry::{MemorySample, SwapSample};

/// The memory part of a sample.
struct Sampled {
    memory: MemorySample,
    swap: SwapSample,
}

/// A CPU model primed with one reading of the live host.
fn primed() -> (CpuState, LinuxHost) {
    let mut host = LinuxHost::new();
    let mut cpu = CpuState::new(host.accounting(), Vec::new());
    assert!(
        cpu.update(host.read().unwrap().cpus, Duration::ZERO)
            .is_none()
    );
    (cpu, host)
}

/// Parses `/proc/stat` independently of the code under test: (cpu number, busy ticks).
fn busy_ticks_by_cpu() -> Vec<(usize, u64)> {
    std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let n: usize = f[0][3..].parse().unwrap();
            let v: Vec<u64> = f[1..].iter().map(|x| x.parse().unwrap()).collect();
            // user nice system irq softirq steal
            (n, v[0] + v[1] + v[2] + v[5] + v[6] + v[7])
        })
        .collect()
}

fn meminfo_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == key).then(|| v.split_whitespace().next().unwrap().parse().unwrap())
        })
        .unwrap()
}

#[test]
fn memory_agrees_with_proc_meminfo_read_alongside() {
    let mut host = LinuxHost::new();
    let before = meminfo_kib("MemAvailable") * 1024;
    let counters = host.read().unwrap();
    let after = meminfo_kib("MemAvailable") * 1024;
    let s = Sampled {
        memory: memory_sample(&counters.memory),
        swap: counters.swap,
    };
    let slack = 256 << 20; // memory that other processes may take or free between reads
    assert_eq!(s.memory.total_bytes, meminfo_kib("MemTotal") * 1024);
    assert!(
        s.memory.available_bytes + slack >= before.min(after)
            && s.memory.available_bytes <= before.max(after) + slack,
        "available {} outside {before}..{after}",
        s.memory.available_bytes
    );
    assert_eq!(
        s.memory.used_bytes + s.memory.available_bytes,
        s.memory.total_bytes
    );
    assert_eq!(s.swap.total_bytes, meminfo_kib("SwapTotal") * 1024);
    assert_eq!(s.memory.formula_version, 1);
}

#[test]
fn cpu_ticks_agree_with_proc_stat_read_alongside() {
    let mut host = LinuxHost::new();
    let before = busy_ticks_by_cpu();
    let reading = host.read().unwrap().cpus;
    let after = busy_ticks_by_cpu();
    let present = reading.iter().filter(|c| c.is_some()).count();
    assert_eq!(present, after.len(), "same CPUs as /proc/stat");
    for ((cpu, low), (_, high)) in before.iter().zip(&after) {
        let t = reading[*cpu].unwrap();
        let busy = t.user + t.nice + t.system + t.irq + t.softirq + t.steal;
        assert!(
            *low <= busy && busy <= *high,
            "cpu{cpu}: {busy} outside {low}..={high}"
        );
    }
    // And the CPU model counts every one of them online.
    let (mut cpu, mut host) = primed();
    std::thread::sleep(Duration::from_millis(50));
    let s = cpu
        .update(host.read().unwrap().cpus, Duration::from_millis(50))
        .unwrap();
    assert_eq!(s.online_cpus as usize, present);
    assert_eq!(s.core_busy_bp.len(), reading.len());
}

#[test]
fn busy_stays_in_range_and_a_spinning_thread_raises_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let (mut cpu, mut host) = primed();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let spinner = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            x
        })
    };
    // One thread spins for the whole window: at least its own CPU time is busy.
    std::thread::sleep(Duration::from_millis(500));
    let window = started.elapsed();
    let s = cpu.update(host.read().unwrap().cpus, window).unwrap();
    stop.store(true, Ordering::Relaxed);
    spinner.join().unwrap();

    assert!(s.busy_bp > 0, "{s:?}");
    assert!(s.core_busy_bp.iter().any(|b| *b > 0), "{s:?}");
    for v in [s.busy_bp, s.user_bp, s.system_bp, s.iowait_bp] {
        assert!(v <= 10_000, "{s:?}");
    }
    assert!(s.core_busy_bp.iter().all(|b| *b <= 10_000));
    assert!(s.user_bp > 0, "the spinner runs in user mode");
}
