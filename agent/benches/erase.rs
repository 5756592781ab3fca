//! Erase benchmarks against the device's limit:
//! `cargo bench -p jex-agent --bench erase [-- --sizes 1,8 --dir /work/target-bench --sweep
//! --rounds 3 --seed N --no-loop]`.
//!
//! On the same target, in one run, for a file on the directory's disk and for a loop device
//! (`losetup --direct-io=on`) over a file on that disk (root needed; `--no-loop` skips it):
//! - `fio --direct=1 --ioengine=libaio --rw=write --bs=1M --iodepth=32` and `--rw=read`: what
//!   the device gives with 32 I/Os in flight, the limit to measure the engine against;
//! - `dd if=/dev/zero oflag=direct bs=4M` and `shred -n1` (files only): the usual tools;
//! - the engine's overwrite (direct I/O, checkpoints every 256 MiB) at the default queue depth
//!   and chunk;
//! - the engine's full read-back verification (100 %) and the default sample;
//! - time from `terminate` to `Reclaimable` through `EraseService` (fake key destruction, real
//!   ECDSA signing) at the defaults, extrapolated to 512 GB at the measured rates.
//!
//! With `--sweep`, to choose the defaults: every overwrite setting (queue depths 1..32 x chunk
//! sizes 1, 4, 8 MiB) and `fio write`, then every full-verification read setting and `fio read`,
//! each measured once per round in a new shuffled order (SplitMix64 from `--seed`, or a random
//! seed, printed), over `--rounds` rounds (default and minimum 3). Each candidate gets its median,
//! min-max and per-round rates; the winner by median is named, and whether it is the default.
//!
//! Also the pattern generation rate on one core and on all cores. Sizes are GiB; the directory
//! needs the largest size plus 1 GiB free (checked first). `fio` must be installed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;

use jex_attest::HostIdentity;
use jex_erase::config::{DEFAULT_CHECKPOINT_BYTES, DEFAULT_CHUNK_BYTES, DEFAULT_QUEUE_DEPTH};
use jex_erase::overwrite::{OverwriteSettings, buffer_bytes, overwrite_target};
use jex_erase::pattern::{Pattern, PatternKey};
use jex_erase::pipeline::Parallelism;
use jex_erase::testing::{FakeKeys, load_test_signer, write_test_signer};
use jex_erase::verify::{ReadSettings, SampleSeed, SampleSettings, sample_plan, verify_target};
use jex_erase::{
    EraseConfig, EraseDeps, EraseService, Phase, TargetConfig, TargetKeys, TerminateCommand,
};
use jex_platform::blockdev::{Access, DirectTarget, TargetIo};

const GIB: u64 = 1 << 30;
const MB: f64 = 1e6;

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / MB
}

fn free_bytes(dir: &Path) -> u64 {
    let stat = nix::sys::statvfs::statvfs(dir).unwrap();
    stat.blocks_available() as u64 * stat.fragment_size() as u64
}

fn run(cmd: &mut Command) -> Duration {
    let started = Instant::now();
    let status = cmd.status().unwrap();
    assert!(status.success(), "{cmd:?} failed: {status}");
    started.elapsed()
}

fn pattern_rates() {
    let pattern = Pattern::new(PatternKey::from_bytes([7u8; 32]));
    let mut buf = vec![0u8; 8 << 20];
    let mut scratch = vec![0u8; 8 << 20];
    pattern.fill(0, &mut buf); // warm up
    let mut bytes = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        pattern.fill(bytes, &mut buf);
        bytes += buf.len() as u64;
    }
    let fill = rate(bytes, started.elapsed());
    pattern.fill(0, &mut buf);
    let mut bytes = 0u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert_eq!(pattern.first_mismatch(0, &buf, &mut scratch), None);
        bytes += buf.len() as u64;
    }
    let compare = rate(bytes, started.elapsed());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let all: u64 = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..cores)
            .map(|core| {
                let pattern = pattern.clone();
                scope.spawn(move || {
                    let mut buf = vec![0u8; 1 << 20];
                    let mut bytes = 0u64;
                    let started = Instant::now();
                    while started.elapsed() < Duration::from_secs(3) {
                        pattern.fill(((core as u64) << 40) + bytes, &mut buf);
                        bytes += buf.len() as u64;
                    }
                    bytes
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    println!("pattern generation, 1 core: {fill:.0} MB/s");
    println!("pattern generate+compare, 1 core: {compare:.0} MB/s");
    println!(
        "pattern generation, {cores} cores: {:.0} MB/s",
        rate(all, Duration::from_secs(3))
    );
}

/// Peak resident memory of this process so far, MiB.
fn max_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn parallelism(queue_depth: usize) -> Parallelism {
    Parallelism {
        queue_depth,
        cpu_threads: std::thread::available_parallelism().map_or(1, usize::from),
    }
}

fn engine_overwrite(path: &Path, pattern: &Pattern, settings: &OverwriteSettings) -> Duration {
    let io = DirectTarget::open(path, Access::ReadWrite).unwrap();
    let pinned = io.identity().clone();
    let started = Instant::now();
    overwrite_target(
        "bench",
        &io,
        &pinned,
        pattern,
        0,
        settings,
        &mut |_| {},
        &mut |_| Ok(()),
    )
    .unwrap();
    started.elapsed()
}

fn engine_verify(
    path: &Path,
    pattern: &Pattern,
    coverage: Option<f64>,
    read: &ReadSettings,
) -> (Duration, u64) {
    let io = DirectTarget::open(path, Access::Read).unwrap();
    let pinned = io.identity().clone();
    let plan = sample_plan(
        &SampleSeed::new(&[1u8; 32], "bench"),
        0,
        io.size(),
        io.io_align(),
        &SampleSettings {
            strata: 1000,
            locations_per_stratum: 2,
            coverage_percent: coverage,
            block_bytes: 1 << 20,
        },
    );
    let started = Instant::now();
    let report = verify_target("bench", &io, &pinned, pattern, &plan, read, &mut |_| {}).unwrap();
    (started.elapsed(), report.bytes)
}

fn terminate_to_reclaimable(dir: &Path, image: &Path) -> (Duration, Duration) {
    let state = dir.join("state");
    let _ = std::fs::remove_dir_all(&state);
    // The file signer the agent uses, with the test PKI.
    let signer_dir = dir.join("signer");
    std::fs::create_dir_all(&signer_dir).unwrap();
    write_test_signer(&signer_dir, "bench-host");
    let signer = load_test_signer(&signer_dir);
    let config = EraseConfig {
        state_dir: state,
        targets: vec![TargetConfig {
            name: "bench".into(),
            device: image.to_path_buf(),
            keys: TargetKeys::Luks2 {
                luks_uuid: "5b0c7a4e-1d2f-4e3a-9b8c-7d6e5f4a3b2c".into(),
            },
        }],
        ..EraseConfig::default()
    };
    let deps = EraseDeps {
        signer: Arc::new(signer),
        host: HostIdentity {
            host_id: "bench-host".into(),
            hardware_uuid: String::new(),
            serial_number: String::new(),
            model: String::new(),
            os: String::new(),
            agent_version: jex_agent::AGENT_VERSION.into(),
        },
        key_destroyer_factory: FakeKeys::new().factory(),
        fleet_ca: None,
    };
    let service = EraseService::open(config, deps).unwrap();
    let started = Instant::now();
    let view = service
        .terminate(TerminateCommand {
            request_id: "bench".into(),
            host_id: "bench-host".into(),
            nonce: vec![9u8; 32],
        })
        .unwrap();
    let rx = service.watch(Some(&view.operation_id)).unwrap();
    let mut verify_started = None;
    loop {
        let view = rx.borrow().clone();
        if view.phase == Phase::Verifying && verify_started.is_none() {
            verify_started = Some(Instant::now());
        }
        match view.phase {
            Phase::Reclaimable => break,
            Phase::Failed => panic!("erase failed: {:?}", view.failure_reason),
            _ => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    let total = started.elapsed();
    let verify = verify_started.map(|t| t.elapsed()).unwrap_or_default();
    (total, verify)
}

/// Runs `fio` on `path` (`rw` = write or read, 1 MiB blocks, 32 in flight) and returns MB/s.
fn fio(path: &Path, rw: &str, size: u64) -> f64 {
    let output = Command::new("fio")
        .args([
            "--name=limit",
            &format!("--filename={}", path.display()),
            &format!("--rw={rw}"),
            "--bs=1M",
            "--iodepth=32",
            "--direct=1",
            "--ioengine=libaio",
            &format!("--size={size}"),
            "--output-format=json",
        ])
        .output()
        .expect("fio is installed (apt-get install fio)");
    assert!(
        output.status.success(),
        "fio failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let job = &json["jobs"][0][rw];
    job["bw_bytes"].as_f64().unwrap() / MB
}

/// A loop device over `backing`, with direct I/O to the backing file; detached on drop.
struct LoopDevice(PathBuf);

impl LoopDevice {
    fn attach(backing: &Path) -> Option<Self> {
        let output = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(backing)
            .output()
            .ok()?;
        if !output.status.success() {
            println!(
                "no loop device ({}): the loop-device rows are left out",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return None;
        }
        Some(LoopDevice(PathBuf::from(
            String::from_utf8_lossy(&output.stdout).trim(),
        )))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

struct Row {
    name: String,
    seconds: f64,
    mb_s: f64,
    note: String,
}

fn row(rows: &mut Vec<Row>, name: impl Into<String>, bytes: u64, took: Duration, note: String) {
    rows.push(Row {
        name: name.into(),
        seconds: took.as_secs_f64(),
        mb_s: rate(bytes, took),
        note,
    });
}

fn print_rows(title: &str, rows: &[Row]) {
    println!("\n== {title} ==");
    for r in rows {
        println!(
            "{:<52} {:>7.2} s {:>7.0} MB/s  {}",
            r.name, r.seconds, r.mb_s, r.note
        );
    }
}

fn fio_row(rows: &mut Vec<Row>, target: &Path, rw: &str, size: u64, when: &str) -> f64 {
    let mb_s = fio(target, rw, size);
    rows.push(Row {
        name: format!("fio {rw}, bs=1M iodepth=32 libaio direct ({when})"),
        seconds: size as f64 / (mb_s * MB),
        mb_s,
        note: "the limit".into(),
    });
    mb_s
}

fn overwrite_row(
    rows: &mut Vec<Row>,
    target: &Path,
    size: u64,
    pattern: &Pattern,
    (qd, chunk): (usize, u64),
    fio_write: f64,
) -> f64 {
    let settings = OverwriteSettings {
        chunk_bytes: chunk,
        checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
        parallelism: parallelism(qd),
    };
    let took = engine_overwrite(target, pattern, &settings);
    let mb_s = rate(size, took);
    let default = (qd, chunk) == (DEFAULT_QUEUE_DEPTH as usize, DEFAULT_CHUNK_BYTES);
    row(
        rows,
        format!(
            "engine overwrite qd={qd} chunk={}M{}",
            chunk >> 20,
            if default { " (default)" } else { "" }
        ),
        size,
        took,
        format!(
            "{:.2}x fio write, buffers {} MiB",
            mb_s / fio_write,
            buffer_bytes(&settings) >> 20
        ),
    );
    mb_s
}

/// Times every writer and reader on `target` (a file or a loop device) of `size` bytes.
///
/// The device's rate drifts over minutes, so the engine's default overwrite and full
/// verification are each measured between two `fio` runs of the same kind, and compared with
/// their mean: fio write, overwrite, fio read, verification, fio read, fio write. The other
/// writers (dd, shred) come after. The sweep ([`sweep_target`]) is separate.
fn measure_target(target: &Path, size: u64, is_file: bool) -> (f64, f64, f64) {
    let mut rows = Vec::new();
    let pattern = Pattern::new(PatternKey::generate(&SystemRandom::new()).unwrap());
    let default = (DEFAULT_QUEUE_DEPTH as usize, DEFAULT_CHUNK_BYTES);
    let write_before = fio_row(&mut rows, target, "write", size, "before");
    let overwrite_at = rows.len();
    let write = overwrite_row(&mut rows, target, size, &pattern, default, write_before);
    let read_before = fio_row(&mut rows, target, "read", size, "before");
    let read = ReadSettings {
        read_bytes: DEFAULT_CHUNK_BYTES,
        parallelism: parallelism(DEFAULT_QUEUE_DEPTH as usize),
    };
    let (verify_took, verify_bytes) = engine_verify(target, &pattern, Some(100.0), &read);
    let verify_at = rows.len();
    row(
        &mut rows,
        "engine verify, full (100 %), default qd",
        verify_bytes,
        verify_took,
        String::new(),
    );
    let (sample_took, sample_bytes) = engine_verify(target, &pattern, None, &read);
    let read_after = fio_row(&mut rows, target, "read", size, "after");
    let write_after = fio_row(&mut rows, target, "write", size, "after");
    let fio_write = (write_before + write_after) / 2.0;
    let fio_read = (read_before + read_after) / 2.0;
    rows[overwrite_at].note = format!(
        "{:.2}x fio write (mean {fio_write:.0}), buffers {} MiB",
        write / fio_write,
        (DEFAULT_CHUNK_BYTES * u64::from(DEFAULT_QUEUE_DEPTH)) >> 20
    );
    let full_read = rate(verify_bytes, verify_took);
    rows[verify_at].note = format!("{:.2}x fio read (mean {fio_read:.0})", full_read / fio_read);
    row(
        &mut rows,
        format!(
            "engine verify, default sample ({:.1} %)",
            sample_bytes as f64 * 100.0 / size as f64
        ),
        sample_bytes,
        sample_took,
        format!("{} MiB read", sample_bytes >> 20),
    );
    let count = (size / (4 << 20)).to_string();
    let mut dd = Command::new("/usr/bin/dd");
    dd.arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .args([
            "oflag=direct",
            "bs=4M",
            &format!("count={count}"),
            "conv=fdatasync,notrunc",
        ])
        .stderr(std::process::Stdio::null());
    let took = run(&mut dd);
    row(
        &mut rows,
        "dd if=/dev/zero oflag=direct bs=4M conv=fdatasync",
        size,
        took,
        format!("{:.2}x fio write", rate(size, took) / fio_write),
    );
    if is_file {
        let took = run(Command::new("/usr/bin/shred").arg("-n1").arg(target));
        row(&mut rows, "shred -n1", size, took, String::new());
    }
    let kind = if is_file { "file" } else { "loop device" };
    print_rows(
        &format!("{} GiB {kind} {}", size / GIB, target.display()),
        &rows,
    );
    (write, fio_write, full_read)
}

/// A small deterministic generator (SplitMix64) for the sweep's order: the same seed gives the
/// same order, so a run can be repeated exactly.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fisher–Yates.
    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// One thing the sweep measures: `fio` (the device's limit) or the engine at one setting.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Candidate {
    Fio,
    Engine { qd: usize, chunk: u64 },
}

impl Candidate {
    fn is_default(self) -> bool {
        self == Candidate::Engine {
            qd: DEFAULT_QUEUE_DEPTH as usize,
            chunk: DEFAULT_CHUNK_BYTES,
        }
    }

    fn label(self, fio_label: &str) -> String {
        match self {
            Candidate::Fio => fio_label.to_owned(),
            Candidate::Engine { qd, chunk } => format!(
                "qd={qd} chunk={}M{}",
                chunk >> 20,
                if self.is_default() { " (default)" } else { "" }
            ),
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// Measures every candidate once per round, in a new shuffled order each round, then prints
/// each candidate's median and min–max (MB/s), its median over fio's median, and which engine
/// setting wins by median, and whether that is the default.
fn sweep_rounds(
    title: &str,
    fio_label: &str,
    candidates: &[Candidate],
    rounds: usize,
    rng: &mut SplitMix,
    mut measure: impl FnMut(Candidate) -> f64,
) {
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); candidates.len()];
    for round in 1..=rounds {
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        rng.shuffle(&mut order);
        let names: Vec<String> = order
            .iter()
            .map(|&i| match candidates[i] {
                Candidate::Fio => "fio".to_owned(),
                Candidate::Engine { qd, chunk } => format!("{qd}x{}M", chunk >> 20),
            })
            .collect();
        println!("{title}: round {round}/{rounds}: {}", names.join(" "));
        for i in order {
            rates[i].push(measure(candidates[i]));
        }
    }
    let fio_at = candidates
        .iter()
        .position(|&c| c == Candidate::Fio)
        .unwrap();
    let fio_median = median(&rates[fio_at]);
    println!("\n== {title}: {rounds} rounds, shuffled, MB/s ==");
    println!(
        "{:<34} {:>7} {:>13} {:>8}  per round",
        "candidate", "median", "min-max", "x fio"
    );
    for (candidate, values) in candidates.iter().zip(&rates) {
        let (lo, hi) = min_max(values);
        let each: Vec<String> = values.iter().map(|v| format!("{v:.0}")).collect();
        println!(
            "{:<34} {:>7.0} {:>13} {:>8.2}  {}",
            candidate.label(fio_label),
            median(values),
            format!("{lo:.0}-{hi:.0}"),
            median(values) / fio_median,
            each.join(" ")
        );
    }
    let engine: Vec<(Candidate, f64, (f64, f64))> = candidates
        .iter()
        .zip(&rates)
        .filter(|(c, _)| **c != Candidate::Fio)
        .map(|(c, v)| (*c, median(v), min_max(v)))
        .collect();
    let (winner, win_median, win_spread) =
        *engine.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    println!(
        "winner by median: {} at {win_median:.0} MB/s ({:.2}x fio)",
        winner.label(fio_label),
        win_median / fio_median
    );
    match engine.iter().find(|(c, ..)| c.is_default()) {
        Some(_) if winner.is_default() => println!("the default is the winner by median"),
        Some(&(default, default_median, default_spread)) => {
            let rank = 1 + engine.iter().filter(|e| e.1 > default_median).count();
            let overlap = default_spread.1 >= win_spread.0 && win_spread.1 >= default_spread.0;
            println!(
                "the default {} is NOT the winner by median: rank {rank} of {}, {default_median:.0} MB/s = {:.2}x the winner; their min-max ranges {}",
                default.label(fio_label),
                engine.len(),
                default_median / win_median,
                if overlap { "overlap" } else { "do not overlap" }
            );
        }
        None => println!("the default is not among the candidates"),
    }
}

/// The queue depth x chunk size sweep on `target`: every overwrite setting and `fio write`,
/// then every read setting of the full verification and `fio read`, each in shuffled rounds.
fn sweep_target(target: &Path, size: u64, kind: &str, rounds: usize, rng: &mut SplitMix) {
    let title = format!("{} GiB {kind} {}", size / GIB, target.display());
    let pattern = &Pattern::new(PatternKey::generate(&SystemRandom::new()).unwrap());
    let mut writes = vec![Candidate::Fio];
    for qd in [1usize, 2, 4, 8, 16, 32] {
        for chunk in [1u64 << 20, 4 << 20, 8 << 20] {
            writes.push(Candidate::Engine { qd, chunk });
        }
    }
    sweep_rounds(
        &format!("overwrite sweep, {title}"),
        "fio write, bs=1M iodepth=32",
        &writes,
        rounds,
        rng,
        |candidate| match candidate {
            Candidate::Fio => fio(target, "write", size),
            Candidate::Engine { qd, chunk } => {
                let settings = OverwriteSettings {
                    chunk_bytes: chunk,
                    checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
                    parallelism: parallelism(qd),
                };
                rate(size, engine_overwrite(target, pattern, &settings))
            }
        },
    );
    let mut reads = vec![Candidate::Fio];
    for qd in [4usize, 8, 16, 32] {
        for chunk in [1u64 << 20, 4 << 20] {
            reads.push(Candidate::Engine { qd, chunk });
        }
    }
    // The overwrite sweep may have ended with fio's data: write the pattern once (not
    // measured). fio read writes nothing, so every verification below reads the pattern.
    engine_overwrite(
        target,
        pattern,
        &OverwriteSettings {
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
            parallelism: parallelism(DEFAULT_QUEUE_DEPTH as usize),
        },
    );
    sweep_rounds(
        &format!("full verification sweep, {title}"),
        "fio read, bs=1M iodepth=32",
        &reads,
        rounds,
        rng,
        |candidate| match candidate {
            Candidate::Fio => fio(target, "read", size),
            Candidate::Engine { qd, chunk } => {
                let read = ReadSettings {
                    read_bytes: chunk,
                    parallelism: parallelism(qd),
                };
                let (took, bytes) = engine_verify(target, pattern, Some(100.0), &read);
                rate(bytes, took)
            }
        },
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sweep = args.iter().any(|a| a == "--sweep");
    let rounds: usize = arg("--rounds").map_or(3, |r| {
        r.parse()
            .expect("--rounds takes a whole number of rounds, e.g. --rounds 5")
    });
    assert!(
        rounds >= 3,
        "--rounds {rounds}: the sweep needs at least 3 rounds, or a median is one run"
    );
    let seed: u64 = arg("--seed").map_or_else(
        || {
            let mut bytes = [0u8; 8];
            ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes).unwrap();
            u64::from_le_bytes(bytes)
        },
        |s| {
            s.parse()
                .expect("--seed takes the number a previous run printed, e.g. --seed 42")
        },
    );
    let mut rng = SplitMix(seed);
    let with_loop = !args.iter().any(|a| a == "--no-loop");
    let sizes: Vec<u64> = arg("--sizes")
        .unwrap_or_else(|| "1,8".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    // Made absolute, because the erase service refuses a relative state directory. Cargo runs
    // a bench from its package's directory: a relative --dir is under agent/.
    let dir = std::path::absolute(arg("--dir").unwrap_or_else(|| "/work/target-bench".into()))
        .expect("--dir names a directory");
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "jex-agent erase benchmark, directory {}, {} cores",
        dir.display(),
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    if sweep {
        println!(
            "sweep: {rounds} rounds, order shuffled with seed {seed} (repeat it with --seed {seed})"
        );
    }
    pattern_rates();

    let mut last = None;
    for gib in sizes {
        let size = gib * GIB;
        let free = free_bytes(&dir);
        if free < size + GIB {
            println!(
                "skipping {gib} GiB: {:.1} GiB free in {}",
                free as f64 / GIB as f64,
                dir.display()
            );
            continue;
        }
        let file = dir.join(format!("erase-bench-{gib}g.img"));
        // Allocate the file, so that every writer below overwrites allocated blocks.
        let mut alloc = Command::new("/usr/bin/dd");
        alloc
            .arg("if=/dev/zero")
            .arg(format!("of={}", file.display()))
            .args([
                "oflag=direct",
                "bs=4M",
                &format!("count={}", size / (4 << 20)),
            ])
            .stderr(std::process::Stdio::null());
        run(&mut alloc);
        let (write, fio_write, full_read) = measure_target(&file, size, true);
        if sweep {
            sweep_target(&file, size, "file", rounds, &mut rng);
        }
        if with_loop && let Some(device) = LoopDevice::attach(&file) {
            measure_target(&device.0, size, false);
            if sweep {
                sweep_target(&device.0, size, "loop device", rounds, &mut rng);
            }
        }
        let (e2e, e2e_verify) = terminate_to_reclaimable(&dir, &file);
        println!(
            "terminate -> Reclaimable, {gib} GiB file, defaults (service): {:.2} s (of which verifying {:.2} s)",
            e2e.as_secs_f64(),
            e2e_verify.as_secs_f64()
        );
        std::fs::remove_file(&file).unwrap();
        last = Some((gib, write, fio_write, full_read, e2e));
    }
    println!(
        "\npeak RSS of the benchmark process: {:.0} MiB",
        max_rss_mib()
    );

    // 512 GB: the overwrite at the measured rate, plus the default sample (2000 strata blocks
    // + first/last, 1 MiB each) read at the full-verification rate.
    if let Some((gib, write, fio_write, full_read, _)) = last {
        let target = 512e9;
        let sample_512 = 2002.0 * (1u64 << 20) as f64;
        let write_s = target / (write * MB);
        let verify_s = sample_512 / (full_read * MB);
        println!(
            "512 GB extrapolated from the {gib} GiB file: overwrite {:.0} s + sampled verify {:.0} s = {:.1} min to Reclaimable (key destruction not included; fio's write limit would give {:.1} min)",
            write_s,
            verify_s,
            (write_s + verify_s) / 60.0,
            (target / (fio_write * MB) + verify_s) / 60.0
        );
    }
}
