//! The host sampler: the platform's counter reader plus the CPU state, behind [`SampleSource`].
//!
//! Use [`platform_source`] once at startup with the CPU kinds from
//! [`crate::platform::host_info`], then call [`SampleSource::sample`] once per interval from a
//! blocking thread.
//!
//! Priming: construction reads the counters once and keeps that reading, so the first
//! `sample()` already reports a real window: the time since construction (call it one interval
//! after construction). A since-boot average is never reported.
//!
//! Windows: each sample covers the time between the previous successful read and this one,
//! measured with a monotonic clock and reported as `window_ms`. When a read fails, the sampler
//! returns the error (which the caller records as a `SamplerError` gap) and keeps the last good
//! reading, so the next sample covers the whole period since then.
//!
//! Cost per tick: one pass over the platform counters (Linux: four small `/proc` files; macOS:
//! `host_processor_info`, `host_statistics64`, two sysctls, `getloadavg`). No process is
//! listed, forked or exec'd.

use std::io;
use std::time::Instant;

use crate::platform::{self, HostCounters, PlatformError};
use crate::telemetry::cpu::CpuState;
use crate::telemetry::memory::memory_sample;
use crate::telemetry::sample::{CoreKind, Sample, SampleError, SampleSource};

/// Samples the host from a counter reader.
pub struct HostSampler {
    counters: Box<dyn HostCounters>,
    cpu: CpuState,
    /// When the last successful reading was taken: the start of the next window.
    last_read: Instant,
}

impl std::fmt::Debug for HostSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSampler")
            .field("cpu", &self.cpu)
            .field("last_read", &self.last_read)
            .finish_non_exhaustive()
    }
}

impl HostSampler {
    /// Makes a sampler over `counters` and primes it with one reading. `cpu_kinds` maps CPU
    /// numbers to core kinds for per-cluster figures (empty when unknown).
    pub fn new(
        mut counters: Box<dyn HostCounters>,
        cpu_kinds: Vec<Option<CoreKind>>,
    ) -> Result<Self, SampleError> {
        let mut cpu = CpuState::new(counters.accounting(), cpu_kinds);
        let first = counters.read().map_err(sample_error)?;
        let last_read = Instant::now();
        let primed = cpu.update(first.cpus, std::time::Duration::ZERO);
        debug_assert!(primed.is_none(), "a fresh state only primes");
        Ok(Self {
            counters,
            cpu,
            last_read,
        })
    }
}

impl SampleSource for HostSampler {
    fn sample(&mut self) -> Result<Sample, SampleError> {
        let counters = self.counters.read().map_err(sample_error)?;
        let now = Instant::now();
        let window = now.saturating_duration_since(self.last_read);
        self.last_read = now;
        let cpu = self
            .cpu
            .update(counters.cpus, window)
            .ok_or_else(|| SampleError {
                what: "cpu tick counters".to_string(),
                source: io::Error::other("the sampler was not primed"),
            })?;
        Ok(Sample {
            window_ms: u32::try_from(window.as_millis()).unwrap_or(u32::MAX),
            cpu,
            load: counters.load,
            memory: memory_sample(&counters.memory),
            swap: counters.swap,
            pressure: counters.pressure,
        })
    }
}

/// The sampler for this OS, primed. `cpu_kinds` is [`crate::platform::HostInfo::cpu_kinds`]
/// (pass an empty vector when unknown: no cluster figures are reported then).
pub fn platform_source(
    cpu_kinds: Vec<Option<CoreKind>>,
) -> Result<Box<dyn SampleSource>, SampleError> {
    let counters = platform::host_counters().map_err(sample_error)?;
    Ok(Box::new(HostSampler::new(counters, cpu_kinds)?))
}

/// Turns a platform error into the sampler's error, keeping the OS error where there is one.
fn sample_error(e: PlatformError) -> SampleError {
    match e {
        PlatformError::Read { path, source } => SampleError {
            what: path.display().to_string(),
            source,
        },
        PlatformError::Os { call, source } => SampleError { what: call, source },
        PlatformError::Parse(p) => SampleError {
            what: p.file.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, p),
        },
        other => SampleError {
            what: other.object(),
            source: io::Error::other(other),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::platform::{
        CounterWidth, Counters, CpuAccounting, CpuTicks, MemoryCounters, ParseError, VmCounts,
    };
    use crate::telemetry::sample::{LoadAverage, MemoryPressure, PressureLevel, SwapSample};
    use std::collections::VecDeque;
    use std::time::Duration;

    /// Counters that replay a script of readings.
    struct Scripted(VecDeque<Result<Counters, PlatformError>>);

    impl HostCounters for Scripted {
        fn accounting(&self) -> CpuAccounting {
            CpuAccounting {
                ticks_per_second: 100,
                width: CounterWidth::Wrapping32,
            }
        }

        fn read(&mut self) -> Result<Counters, PlatformError> {
            self.0
                .pop_front()
                .unwrap_or(Err(PlatformError::Unsupported))
        }
    }

    fn counters(user: u64, idle: u64) -> Counters {
        Counters {
            cpus: vec![Some(CpuTicks {
                user,
                idle,
                ..CpuTicks::default()
            })],
            memory: MemoryCounters::Darwin(VmCounts {
                page_size: 16_384,
                total_bytes: 1 << 30,
                internal: 100,
                wired: 50,
                ..VmCounts::default()
            }),
            swap: SwapSample {
                total_bytes: 10,
                used_bytes: 5,
            },
            load: LoadAverage {
                one: 1.0,
                five: 2.0,
                fifteen: 3.0,
            },
            pressure: MemoryPressure {
                level: Some(PressureLevel::Warn),
                psi: None,
            },
        }
    }

    #[test]
    fn the_first_sample_covers_the_time_since_priming() {
        let script = VecDeque::from([Ok(counters(1000, 5000)), Ok(counters(1040, 5060))]);
        let mut sampler = HostSampler::new(Box::new(Scripted(script)), vec![]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let s = sampler.sample().unwrap();
        assert!(s.window_ms >= 20, "window {} ms", s.window_ms);
        assert_eq!(
            s.cpu.busy_bp, 4000,
            "40 of 100 ticks, not the since-boot 17 %"
        );
        assert_eq!(s.memory.used_bytes, 150 * 16_384);
        assert_eq!(s.pressure.level, Some(PressureLevel::Warn));
        assert_eq!((s.swap.used_bytes, s.load.fifteen), (5, 3.0));
    }

    #[test]
    fn a_failed_read_is_an_error_and_the_next_window_spans_it() {
        let script = VecDeque::from([
            Ok(counters(0, 0)),
            Err(PlatformError::Read {
                path: "/proc/stat".into(),
                source: io::Error::from(io::ErrorKind::NotFound),
            }),
            Ok(counters(100, 100)),
        ]);
        let mut sampler = HostSampler::new(Box::new(Scripted(script)), vec![]).unwrap();
        let err = sampler.sample().unwrap_err();
        assert_eq!(err.what, "/proc/stat");
        assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
        let s = sampler.sample().unwrap();
        assert_eq!(s.cpu.busy_bp, 5000, "the delta since the last good reading");
    }

    #[test]
    fn parse_errors_name_the_file() {
        let e = sample_error(PlatformError::Parse(ParseError::new(
            "/proc/meminfo",
            3,
            "bad",
        )));
        assert_eq!(e.what, "/proc/meminfo");
        assert_eq!(e.source.kind(), io::ErrorKind::InvalidData);
        assert!(e.source.to_string().contains("line 3"), "{}", e.source);
    }

    #[test]
    fn priming_fails_when_the_counters_cannot_be_read() {
        let err = HostSampler::new(Box::new(Scripted(VecDeque::new())), vec![]).unwrap_err();
        assert!(err.to_string().contains("host counters"), "{err}");
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

    #[cfg(target_os = "linux")]
    #[test]
    fn memory_agrees_with_proc_meminfo_read_alongside() {
        let mut source = platform_source(vec![]).unwrap();
        let before = meminfo_kib("MemAvailable") * 1024;
        let s = source.sample().unwrap();
        let after = meminfo_kib("MemAvailable") * 1024;
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

    #[cfg(target_os = "linux")]
    #[test]
    fn cpu_ticks_agree_with_proc_stat_read_alongside() {
        let mut host = platform::linux::LinuxHost::new();
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
        // And the sampler counts every one of them online.
        let mut source = platform_source(vec![]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let s = source.sample().unwrap();
        assert_eq!(s.cpu.online_cpus as usize, present);
        assert_eq!(s.cpu.core_busy_bp.len(), reading.len());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn busy_stays_in_range_and_a_spinning_thread_raises_it() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};

        let mut source = platform_source(vec![]).unwrap();
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
        let s = source.sample().unwrap();
        stop.store(true, Ordering::Relaxed);
        spinner.join().unwrap();

        assert!(s.window_ms >= 500);
        assert!(s.cpu.busy_bp > 0, "{:?}", s.cpu);
        assert!(s.cpu.core_busy_bp.iter().any(|b| *b > 0), "{:?}", s.cpu);
        for v in [
            s.cpu.busy_bp,
            s.cpu.user_bp,
            s.cpu.system_bp,
            s.cpu.iowait_bp,
        ] {
            assert!(v <= 10_000, "{:?}", s.cpu);
        }
        assert!(s.cpu.core_busy_bp.iter().all(|b| *b <= 10_000));
        assert!(s.cpu.user_bp > 0, "the spinner runs in user mode");
    }
}
