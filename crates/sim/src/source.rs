//! The synthetic telemetry source: per host, tick counters for every CPU and macOS page counts
//! (16 KiB pages) that wander around a host-specific baseline, turned into a sample by the
//! agent's own arithmetic ([`jex_telemetry::cpu::CpuState`] with macOS's 32-bit wrapping
//! counters at 100 ticks per second, [`jex_telemetry::memory::from_vm_counts`] with the macOS
//! memory formula). So the figures are consistent as a real Mac's are: `used + available =
//! total`, every share in `0..=10000` basis points, clusters fastest first.
//!
//! Reproducible: the seed and the host index fix the whole stream; each call advances the
//! model by one nominal interval (not by the wall clock), so two sources of the same seed and
//! index return the same samples call for call.
//!
//! Faults ([`Faults`], shared with the fleet): while *failing*, [`SampleSource::sample`]
//! returns an error (the agent records a `SAMPLER_ERROR` gap each interval); while *stalled*,
//! it blocks (the agent produces nothing until the stall ends, then samples a window that
//! covers the stall).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jex_telemetry::cpu::{CounterWidth, CpuAccounting, CpuState, CpuTicks};
use jex_telemetry::{
    LoadAverage, MemoryPressure, PressureLevel, Sample, SampleError, SampleSource, SwapSample,
    VmCounts,
};

use crate::chip::HostProfile;
use crate::rng::SplitMix;

/// macOS's page size on Apple Silicon.
pub const PAGE_SIZE: u64 = 16 * 1024;

/// macOS reports CPU ticks at 100 Hz in 32-bit counters.
const ACCOUNTING: CpuAccounting = CpuAccounting {
    ticks_per_second: 100,
    width: CounterWidth::Wrapping32,
};

/// The fault switches of one simulated host's source, shared with the fleet.
#[derive(Debug, Default)]
pub struct Faults {
    failing: AtomicBool,
    stalled_until: Mutex<Option<Instant>>,
    wake: Condvar,
}

impl Faults {
    /// New switches, all off.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Makes every sample fail (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Whether samples fail.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }

    /// Blocks the next samples until `duration` from now.
    pub fn stall_for(&self, duration: Duration) {
        let mut until = self
            .stalled_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *until = Some(Instant::now() + duration);
        self.wake.notify_all();
    }

    /// Ends a stall now.
    pub fn unstall(&self) {
        let mut until = self
            .stalled_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *until = None;
        self.wake.notify_all();
    }

    /// The time left of the current stall, if any.
    pub fn stall_left(&self) -> Option<Duration> {
        let until = *self
            .stalled_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        until
            .map(|u| u.saturating_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// Blocks while stalled; returns how long it blocked (zero, not measured, when no stall
    /// was set, so windows stay reproducible).
    fn wait_out_stall(&self) -> Duration {
        let mut until = self
            .stalled_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if until.is_none() {
            return Duration::ZERO;
        }
        let start = Instant::now();
        while let Some(end) = *until {
            let now = Instant::now();
            if now >= end {
                *until = None;
                break;
            }
            until = self
                .wake
                .wait_timeout(until, end - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        start.elapsed()
    }
}

/// The busy level of one cluster: a mean-reverting walk with occasional bursts.
#[derive(Debug, Clone)]
struct Level {
    base: f64,
    now: f64,
}

impl Level {
    fn step(&mut self, rng: &mut SplitMix, burst_chance: f64) {
        let target = if rng.unit() < burst_chance {
            0.7 + 0.3 * rng.unit()
        } else {
            self.base
        };
        self.now += (target - self.now) * 0.15 + 0.05 * rng.signed();
        self.now = self.now.clamp(0.0, 1.0);
    }
}

/// Synthetic Apple Silicon telemetry for one host.
#[derive(Debug)]
pub struct SynthSource {
    rng: SplitMix,
    interval: Duration,
    kinds: Vec<jex_telemetry::CoreKind>,
    /// One level per kind present, in `CoreKind::ALL` order.
    levels: Vec<(jex_telemetry::CoreKind, Level)>,
    ticks: Vec<CpuTicks>,
    cpu: CpuState,
    total_pages: u64,
    /// Share of memory used (`app + wired + compressed`), wandering.
    used: Level,
    wired_share: f64,
    load: LoadAverage,
    faults: Arc<Faults>,
}

impl SynthSource {
    /// The source of host `profile` (its index and the fleet's `seed` fix the stream), one
    /// sample per `interval`, with the fault switches `faults`.
    pub fn new(seed: u64, profile: &HostProfile, interval: Duration, faults: Arc<Faults>) -> Self {
        // A stream apart from the profile's (which uses the plain index).
        let mut rng = SplitMix::new(seed ^ 0x5A5A_5A5A, u64::from(profile.index));
        let kinds = profile.chip.cpu_kinds();
        let levels = jex_telemetry::CoreKind::ALL
            .into_iter()
            .filter(|k| kinds.contains(k))
            .map(|k| {
                let base = match k {
                    jex_telemetry::CoreKind::Efficiency => 0.15 + 0.35 * rng.unit(),
                    _ => 0.05 + 0.5 * rng.unit(),
                };
                (k, Level { base, now: base })
            })
            .collect();
        let used_base = 0.35 + 0.45 * rng.unit();
        let ticks = (0..kinds.len())
            .map(|_| CpuTicks {
                // Since boot: some hours of ticks, wrapped as macOS's u32 counters do.
                idle: rng.below(1 << 31),
                user: rng.below(1 << 29),
                system: rng.below(1 << 28),
                ..CpuTicks::default()
            })
            .collect::<Vec<_>>();
        let mut cpu = CpuState::new(ACCOUNTING, kinds.iter().copied().map(Some).collect());
        let _ = cpu.update(ticks.iter().copied().map(Some).collect(), Duration::ZERO);
        let wired_share = 0.08 + 0.06 * rng.unit();
        Self {
            rng,
            interval,
            kinds,
            levels,
            ticks,
            cpu,
            total_pages: profile.memory_bytes / PAGE_SIZE,
            used: Level {
                base: used_base,
                now: used_base,
            },
            wired_share,
            load: LoadAverage::default(),
            faults,
        }
    }

    /// One step of the model over `window`.
    fn step(&mut self, window: Duration) -> Sample {
        for (_, level) in &mut self.levels {
            level.step(&mut self.rng, 0.02);
        }
        let window_ticks =
            (window.as_millis() as u64 * u64::from(ACCOUNTING.ticks_per_second) / 1000).max(1);
        let mut running = 0.0;
        for (cpu, kind) in self.kinds.iter().enumerate() {
            let level = self
                .levels
                .iter()
                .find(|(k, _)| k == kind)
                .map_or(0.0, |(_, l)| l.now);
            let busy = (level + 0.15 * self.rng.signed()).clamp(0.0, 1.0);
            running += busy;
            let busy_ticks = (busy * window_ticks as f64).round() as u64;
            let system = busy_ticks / 4 + self.rng.below(busy_ticks / 8 + 1);
            let system = system.min(busy_ticks);
            let t = &mut self.ticks[cpu];
            t.user = t.user.wrapping_add(busy_ticks - system) & 0xFFFF_FFFF;
            t.system = t.system.wrapping_add(system) & 0xFFFF_FFFF;
            t.idle = t.idle.wrapping_add(window_ticks - busy_ticks) & 0xFFFF_FFFF;
        }
        let cpu = self
            .cpu
            .update(self.ticks.iter().copied().map(Some).collect(), window)
            .unwrap_or_default();

        // Load averages: exponentially damped run-queue length, as the kernel keeps them.
        let dt = window.as_secs_f64();
        for (avg, period) in [
            (&mut self.load.one, 60.0),
            (&mut self.load.five, 300.0),
            (&mut self.load.fifteen, 900.0),
        ] {
            let decay = (-dt / period).exp();
            *avg = *avg * decay + running * (1.0 - decay);
        }

        self.used.step(&mut self.rng, 0.005);
        let (vm, swap) = self.pages();
        let memory = jex_telemetry::memory::from_vm_counts(&vm);
        let share = memory.used_bytes as f64 / memory.total_bytes.max(1) as f64;
        let level = if share >= 0.92 {
            PressureLevel::Critical
        } else if share >= 0.80 {
            PressureLevel::Warn
        } else {
            PressureLevel::Normal
        };
        Sample {
            window_ms: u32::try_from(window.as_millis()).unwrap_or(u32::MAX),
            cpu,
            load: LoadAverage {
                one: round2(self.load.one),
                five: round2(self.load.five),
                fifteen: round2(self.load.fifteen),
            },
            memory,
            swap,
            pressure: MemoryPressure {
                level: Some(level),
                psi: None,
            },
        }
    }

    /// The page counts for the current used share: wired, then the compressor (which grows
    /// once more than 60 % is used), app memory, purgeable and file-backed pages, the rest free
    /// (some of it speculative).
    fn pages(&mut self) -> (VmCounts, SwapSample) {
        let total = self.total_pages;
        let pages = |share: f64| (share.clamp(0.0, 1.0) * total as f64) as u64;
        let used_share = self.used.now.clamp(0.05, 0.99);
        let wired = pages(self.wired_share + 0.005 * self.rng.signed());
        let compressor = pages((used_share - 0.6).max(0.0) * 0.5);
        let used = pages(used_share).max(wired + compressor);
        let app = used - wired - compressor;
        let purgeable = pages(0.005 + 0.01 * self.rng.unit());
        let rest = total.saturating_sub(used + purgeable);
        let external = (rest as f64 * (0.3 + 0.2 * self.rng.unit())) as u64;
        let free = rest - external;
        let speculative = (free as f64 * 0.2 * self.rng.unit()) as u64;
        let internal = app + purgeable;
        let active = (internal + external) * 11 / 20;
        let vm = VmCounts {
            page_size: PAGE_SIZE,
            total_bytes: total * PAGE_SIZE,
            free,
            active,
            inactive: internal + external - active,
            speculative,
            throttled: 0,
            wired,
            purgeable,
            compressor,
            internal,
            external,
        };
        let gib = 1u64 << 30;
        let swap_used = ((used_share - 0.85).max(0.0) * (total * PAGE_SIZE) as f64 * 0.3) as u64;
        let swap = SwapSample {
            total_bytes: swap_used.div_ceil(gib) * gib,
            used_bytes: swap_used,
        };
        (vm, swap)
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

impl SampleSource for SynthSource {
    fn sample(&mut self) -> Result<Sample, SampleError> {
        let stalled = self.faults.wait_out_stall();
        if self.faults.is_failing() {
            return Err(SampleError {
                what: "host counters (simulated fault: jex-sim fail)".to_owned(),
                source: std::io::Error::other("the simulated sampler is failing"),
            });
        }
        // Reproducible windows: the nominal interval, plus the time a stall held the sampler.
        let window = self.interval + stalled;
        Ok(self.step(window))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jex_telemetry::CoreKind;

    fn source(seed: u64, index: u32) -> SynthSource {
        let profile = HostProfile::new(seed, index);
        SynthSource::new(seed, &profile, Duration::from_secs(1), Faults::new())
    }

    #[test]
    fn same_seed_and_host_same_samples() {
        let (mut a, mut b) = (source(9, 3), source(9, 3));
        for _ in 0..200 {
            assert_eq!(a.sample().ok(), b.sample().ok());
        }
        let (mut c, mut d) = (source(9, 3), source(9, 4));
        let differ = (0..20).any(|_| c.sample().ok() != d.sample().ok());
        assert!(differ);
    }

    #[test]
    fn figures_are_plausible_and_consistent() {
        let mut levels = std::collections::BTreeSet::new();
        for index in 0..60 {
            let profile = HostProfile::new(5, index);
            let mut s = SynthSource::new(5, &profile, Duration::from_secs(1), Faults::new());
            for _ in 0..300 {
                let x = s.sample().expect("sample");
                assert_eq!(x.window_ms, 1000);
                let c = &x.cpu;
                assert_eq!(c.online_cpus, profile.chip.logical_cpus());
                assert_eq!(c.core_busy_bp.len(), profile.chip.logical_cpus() as usize);
                for bp in c
                    .core_busy_bp
                    .iter()
                    .chain([&c.busy_bp, &c.user_bp, &c.system_bp])
                {
                    assert!(*bp <= 10_000);
                }
                assert!(c.user_bp + c.system_bp <= c.busy_bp + 2);
                assert_eq!(c.iowait_bp, 0, "macOS has no iowait");
                let kinds: Vec<CoreKind> = c.clusters.iter().map(|k| k.kind).collect();
                let fastest_first: Vec<CoreKind> = CoreKind::ALL
                    .into_iter()
                    .filter(|k| kinds.contains(k))
                    .collect();
                assert_eq!(kinds, fastest_first);
                assert_eq!(
                    c.clusters.iter().map(|k| k.cpus).sum::<u32>(),
                    profile.chip.logical_cpus()
                );
                let m = &x.memory;
                assert_eq!(m.total_bytes, profile.memory_bytes);
                assert_eq!(m.used_bytes + m.available_bytes, m.total_bytes);
                for class in [
                    m.free_bytes,
                    m.active_bytes,
                    m.inactive_bytes,
                    m.wired_bytes,
                    m.compressed_bytes,
                    m.purgeable_bytes,
                    m.speculative_bytes,
                ] {
                    assert_eq!(class % PAGE_SIZE, 0, "whole 16 KiB pages");
                    assert!(class <= m.total_bytes);
                }
                assert!(
                    m.free_bytes
                        + m.speculative_bytes
                        + m.active_bytes
                        + m.inactive_bytes
                        + m.wired_bytes
                        + m.compressed_bytes
                        <= m.total_bytes
                );
                assert!(m.wired_bytes + m.compressed_bytes <= m.used_bytes);
                assert_eq!(m.cached_bytes + m.buffers_bytes, 0, "no Linux classes");
                assert!(x.swap.used_bytes <= x.swap.total_bytes);
                let share = m.used_bytes as f64 / m.total_bytes as f64;
                let level = x.pressure.level.expect("macOS has a pressure level");
                let expected = if share >= 0.92 {
                    PressureLevel::Critical
                } else if share >= 0.80 {
                    PressureLevel::Warn
                } else {
                    PressureLevel::Normal
                };
                assert_eq!(level, expected);
                levels.insert(format!("{level:?}"));
                assert!(x.load.one >= 0.0 && x.load.one <= f64::from(c.online_cpus));
            }
        }
        assert!(
            levels.len() >= 2,
            "60 hosts for 5 minutes reach more than one pressure level: {levels:?}"
        );
    }

    #[test]
    fn a_failing_source_errs_until_recovered() {
        let faults = Faults::new();
        let profile = HostProfile::new(1, 0);
        let mut s = SynthSource::new(1, &profile, Duration::from_secs(1), faults.clone());
        assert!(s.sample().is_ok());
        faults.set_failing(true);
        let err = s.sample().expect_err("failing");
        assert!(err.what.contains("simulated fault"), "{err}");
        faults.set_failing(false);
        assert!(s.sample().is_ok());
    }

    #[test]
    fn a_stall_blocks_the_sample_and_widens_its_window() {
        let faults = Faults::new();
        let profile = HostProfile::new(1, 0);
        let mut s = SynthSource::new(1, &profile, Duration::from_secs(1), faults.clone());
        faults.stall_for(Duration::from_millis(300));
        assert!(faults.stall_left().is_some());
        let x = s.sample().expect("sample");
        assert!(x.window_ms >= 1300, "{}", x.window_ms);
        assert!(faults.stall_left().is_none());
        // unstall wakes a blocked sampler at once
        faults.stall_for(Duration::from_secs(3600));
        let f = faults.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            f.unstall();
        });
        assert!(s.sample().is_ok());
        t.join().expect("join");
    }
}
