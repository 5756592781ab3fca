//! The cost of one telemetry sampler tick on this machine: the mean, median and 99th percentile
//! time of `SampleSource::sample()` on the platform sampler (read every counter, compute the
//! CPU window, build the sample).
//!
//! Run: `cargo bench -p jex-agent --bench sampler` (iterations: `SAMPLER_BENCH_ITERATIONS`,
//! default 10000). Calls run back to back, so each window is a few microseconds long; the work
//! per call is the same as at a 1 s interval.

use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use jex_agent::telemetry::SampleSource;
use jex_agent::telemetry::sampler::platform_source;

const DEFAULT_ITERATIONS: usize = 10_000;
const WARMUP: usize = 200;

fn main() -> ExitCode {
    let iterations = std::env::var("SAMPLER_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_ITERATIONS);
    let mut source = match platform_source(Vec::new()) {
        Ok(source) => source,
        Err(e) => {
            eprintln!("cannot make the platform sampler: {e}: {}", e.source);
            return ExitCode::FAILURE;
        }
    };
    let tick = |source: &mut Box<dyn SampleSource>| -> Result<Duration, ExitCode> {
        let start = Instant::now();
        let sample = source.sample();
        let elapsed = start.elapsed();
        match sample {
            Ok(sample) => {
                black_box(sample);
                Ok(elapsed)
            }
            Err(e) => {
                eprintln!("sample failed: {e}: {}", e.source);
                Err(ExitCode::FAILURE)
            }
        }
    };
    for _ in 0..WARMUP {
        if let Err(code) = tick(&mut source) {
            return code;
        }
    }
    let mut times = Vec::with_capacity(iterations);
    let start = Instant::now();
    for _ in 0..iterations {
        match tick(&mut source) {
            Ok(t) => times.push(t),
            Err(code) => return code,
        }
    }
    let total = start.elapsed();
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_nanos();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "sampler tick ({} CPUs): mean {} ns, median {} ns, p99 {} ns, max {} ns over {} calls",
        cpus,
        total.as_nanos() / iterations as u128,
        at(0.5),
        at(0.99),
        at(1.0),
        iterations
    );
    ExitCode::SUCCESS
}
