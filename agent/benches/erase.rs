//! Erase benchmarks: `cargo bench -p jex-agent --bench erase [-- --sizes 1,8 --dir /work/target-bench]`.
//!
//! On the same files, in one run:
//! - pattern generation rate on one core (AES-256-CTR keystream), and generate+compare rate;
//! - overwrite throughput of the engine (direct I/O, 8 MiB chunks, fdatasync every 256 MiB)
//!   against `dd if=/dev/zero of=F oflag=direct bs=4M` and `shred -n1 F`;
//! - verification time (default sample: 1000 strata x 2 blocks of 1 MiB + first/last; and full);
//! - time from `terminate` to `Reclaimable` through `EraseService` (fake key destruction,
//!   real ECDSA signing), extrapolated to 512 GB at the measured rates.
//!
//! Sizes are GiB; the directory needs twice the largest size free (checked first).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;

use jex_attest::HostIdentity;
use jex_erase::overwrite::{OverwriteSettings, overwrite_target};
use jex_erase::pattern::{Pattern, PatternKey};
use jex_erase::testing::{FakeKeys, load_test_signer, write_test_signer};
use jex_erase::verify::{SampleSeed, SampleSettings, sample_plan, verify_target};
use jex_erase::{
    Backend, EraseConfig, EraseDeps, EraseService, Phase, TargetConfig, TerminateCommand,
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
    println!("pattern generation, 1 core: {fill:.0} MB/s");
    println!("pattern generate+compare, 1 core: {compare:.0} MB/s");
}

fn engine_overwrite(path: &Path, pattern: &Pattern) -> Duration {
    let mut io = DirectTarget::open(path, Access::ReadWrite).unwrap();
    let pinned = io.identity().clone();
    let started = Instant::now();
    overwrite_target(
        "bench",
        &mut io,
        &pinned,
        pattern,
        0,
        &OverwriteSettings {
            chunk_bytes: 8 << 20,
            checkpoint_bytes: 256 << 20,
        },
        &mut |_| {},
        &mut |_| Ok(()),
    )
    .unwrap();
    started.elapsed()
}

fn engine_verify(path: &Path, pattern: &Pattern, coverage: Option<f64>) -> (Duration, u64) {
    let mut io = DirectTarget::open(path, Access::Read).unwrap();
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
    let report = verify_target("bench", &mut io, &pinned, pattern, &plan, &mut |_| {}).unwrap();
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
            backend: Backend::Luks2,
            device: image.to_path_buf(),
            luks_uuid: Some("5b0c7a4e-1d2f-4e3a-9b8c-7d6e5f4a3b2c".into()),
            apfs_volume_uuid: None,
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes: Vec<u64> = arg("--sizes")
        .unwrap_or_else(|| "1,8".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let dir = PathBuf::from(arg("--dir").unwrap_or_else(|| "/work/target-bench".into()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("jex-agent erase benchmark, directory {}", dir.display());
    pattern_rates();

    let mut results = Vec::new();
    for gib in sizes {
        let size = gib * GIB;
        let free = free_bytes(&dir);
        if free < size * 2 + GIB {
            println!(
                "skipping {gib} GiB: {:.1} GiB free in {}",
                free as f64 / GIB as f64,
                dir.display()
            );
            continue;
        }
        let file = dir.join(format!("erase-bench-{gib}g.img"));
        let count = (size / (4 << 20)).to_string();
        let dd = |extra: &[&str]| {
            let mut cmd = Command::new("/usr/bin/dd");
            cmd.arg("if=/dev/zero")
                .arg(format!("of={}", file.display()))
                .args([
                    "oflag=direct",
                    "bs=4M",
                    &format!("count={count}"),
                    "conv=notrunc",
                ])
                .args(extra)
                .stderr(std::process::Stdio::null());
            run(&mut cmd)
        };
        // Allocate the file, then time each writer on the same, allocated file.
        dd(&[]);
        let dd_time = dd(&[]);
        let dd_sync_time = dd(&["conv=fdatasync"]);
        let shred_time = run(Command::new("/usr/bin/shred").arg("-n1").arg(&file));
        let pattern = Pattern::new(PatternKey::generate(&SystemRandom::new()).unwrap());
        let overwrite_time = engine_overwrite(&file, &pattern);
        let (sample_time, sample_bytes) = engine_verify(&file, &pattern, None);
        let (full_time, full_bytes) = engine_verify(&file, &pattern, Some(100.0));
        let (e2e_time, e2e_verify) = terminate_to_reclaimable(&dir, &file);
        std::fs::remove_file(&file).unwrap();

        println!("\n== {gib} GiB file ==");
        println!(
            "dd if=/dev/zero oflag=direct bs=4M:           {:>7.2} s  {:>6.0} MB/s",
            dd_time.as_secs_f64(),
            rate(size, dd_time)
        );
        println!(
            "dd ... oflag=direct bs=4M conv=fdatasync:     {:>7.2} s  {:>6.0} MB/s",
            dd_sync_time.as_secs_f64(),
            rate(size, dd_sync_time)
        );
        println!(
            "shred -n1:                                    {:>7.2} s  {:>6.0} MB/s",
            shred_time.as_secs_f64(),
            rate(size, shred_time)
        );
        println!(
            "engine overwrite (8 MiB chunks, sync/256 MiB):{:>7.2} s  {:>6.0} MB/s  ({:.2}x dd)",
            overwrite_time.as_secs_f64(),
            rate(size, overwrite_time),
            dd_time.as_secs_f64() / overwrite_time.as_secs_f64()
        );
        println!(
            "verify, default sample ({:.1} % = {} MiB):   {:>7.2} s  {:>6.0} MB/s",
            sample_bytes as f64 * 100.0 / size as f64,
            sample_bytes >> 20,
            sample_time.as_secs_f64(),
            rate(sample_bytes, sample_time)
        );
        println!(
            "verify, full:                                 {:>7.2} s  {:>6.0} MB/s",
            full_time.as_secs_f64(),
            rate(full_bytes, full_time)
        );
        println!(
            "terminate -> Reclaimable (service):           {:>7.2} s  (of which verifying {:.2} s)",
            e2e_time.as_secs_f64(),
            e2e_verify.as_secs_f64()
        );
        results.push((
            gib,
            rate(size, overwrite_time),
            sample_bytes,
            sample_time,
            e2e_time,
        ));
    }

    // 512 GB: the overwrite at the measured rate, plus the default sample (2000 strata blocks
    // + first/last, 1 MiB each) at the measured sampled-read rate.
    if let Some((gib, write_rate, sample_bytes, sample_time, _)) = results.last() {
        let target = 512e9;
        let sample_512 = 2002.0 * (1u64 << 20) as f64;
        let sample_rate = *sample_bytes as f64 / sample_time.as_secs_f64();
        let write_s = target / (write_rate * MB);
        let verify_s = sample_512 / sample_rate;
        println!(
            "\n512 GB extrapolated from the {gib} GiB run: overwrite {:.0} s + verify {:.0} s = {:.1} min to Reclaimable (key destruction not included)",
            write_s,
            verify_s,
            (write_s + verify_s) / 60.0
        );
    }
}
