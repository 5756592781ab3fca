//! The host sampler: the platform's counter reader plus the CPU state, behind [`SampleSource`].
//!
//! Use [`platform_source`] once at startup with the CPU kinds from
//! [`jex_platform::host_info`], then call [`SampleSource::sample`] once per interval from a
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

use jex_platform::{HostCounters, PlatformError};
use jex_telemetry::cpu::CpuState;
use jex_telemetry::memory::memory_sample;
use jex_telemetry::{CoreKind, Sample, SampleError, SampleSource};

/// Samples the host from a counter reader.
pub struct HostSampler {
    counters: Box<dyn HostCounters>,
    cpu: CpuState,
    /// When the last successful reading was taken: the start of the next window.
    last_read: Instant,
    /// The monotonic clock windows are measured with: [`Instant::now`] outside tests.
    now: Box<dyn Fn() -> Instant + Send>,
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
        counters: Box<dyn HostCounters>,
        cpu_kinds: Vec<Option<CoreKind>>,
    ) -> Result<Self, SampleError> {
        Self::with_clock(counters, cpu_kinds, Box::new(Instant::now))
    }

    fn with_clock(
        mut counters: Box<dyn HostCounters>,
        cpu_kinds: Vec<Option<CoreKind>>,
        now: Box<dyn Fn() -> Instant + Send>,
    ) -> Result<Self, SampleError> {
        let mut cpu = CpuState::new(counters.accounting(), cpu_kinds);
        let first = counters.read().map_err(sample_error)?;
        let last_read = now();
        let primed = cpu.update(first.cpus, std::time::Duration::ZERO);
        debug_assert!(primed.is_none(), "a fresh state only primes");
        Ok(Self {
            counters,
            cpu,
            last_read,
            now,
        })
    }
}

impl SampleSource for HostSampler {
    fn sample(&mut self) -> Result<Sample, SampleError> {
        let counters = self.counters.read().map_err(sample_error)?;
        let now = (self.now)();
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

/// The sampler for this OS, primed. `cpu_kinds` is [`jex_platform::HostInfo::cpu_kinds`]
/// (pass an empty vector when unknown: no cluster figures are reported then).
pub fn platform_source(
    cpu_kinds: Vec<Option<CoreKind>>,
) -> Result<Box<dyn SampleSource>, SampleError> {
    let counters = jex_platform::host_counters().map_err(sample_error)?;
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
    use jex_platform::{
        CounterWidth, Counters, CpuAccounting, CpuTicks, MemoryCounters, ParseError, VmCounts,
    };
    use jex_telemetry::{LoadAverage, MemoryPressure, PressureLevel, SwapSample};
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
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

    /// A monotonic clock the test sets, in milliseconds from an arbitrary start.
    fn test_clock() -> (Box<dyn Fn() -> Instant + Send>, Arc<AtomicU64>) {
        let start = Instant::now();
        let ms = Arc::new(AtomicU64::new(0));
        let read = Arc::clone(&ms);
        let now = move || start + Duration::from_millis(read.load(Ordering::SeqCst));
        (Box::new(now), ms)
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
        let (now, ms) = test_clock();
        let mut sampler = HostSampler::with_clock(Box::new(Scripted(script)), vec![], now).unwrap();
        ms.store(1000, Ordering::SeqCst);
        let s = sampler.sample().unwrap();
        assert_eq!(s.window_ms, 1000);
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
        let (now, ms) = test_clock();
        let mut sampler = HostSampler::with_clock(Box::new(Scripted(script)), vec![], now).unwrap();
        ms.store(1000, Ordering::SeqCst);
        let err = sampler.sample().unwrap_err();
        assert_eq!(err.what, "/proc/stat");
        assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
        ms.store(2000, Ordering::SeqCst);
        let s = sampler.sample().unwrap();
        assert_eq!(s.window_ms, 2000, "the window since the last good reading");
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
}
