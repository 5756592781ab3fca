//! Benchmarks of key destruction and erase certificates (plain `main`, no harness):
//! - `luks2`: snapshot, `destroy` (`cryptsetup luksErase`) and `verify_destroyed` on a 20 MiB
//!   LUKS2 image made with the real `cryptsetup` (required: `apt-get install cryptsetup-bin`);
//! - `attest`: `canonical_json`, `sign` with a `FileSigner` (P-256), `verify` against the CA,
//!   and a bundle round trip, on a two-target document.
//!
//! Run: `cargo bench -p jex-agent --bench keys`. Each line prints the median and the mean
//! over the iterations.

// A benchmark has no caller to report to: any setup failure aborts it, loudly.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use jex_attest::{FileSigner, SignedCertificate};
use jex_erase::keys::KeyDestroyer;
use jex_erase::keys::luks2::{DEFAULT_CRYPTSETUP, Luks2};
use jex_erase::testing::{TestCa, write_signer_files};

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let median = samples[samples.len() / 2];
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{name:<44} n={:<5} median {:>10.3} ms  mean {:>10.3} ms",
        samples.len(),
        median.as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3
    );
}

fn time<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn bench_luks2(dir: &Path, iterations: usize) {
    assert!(
        Path::new(DEFAULT_CRYPTSETUP).is_file(),
        "{DEFAULT_CRYPTSETUP} is missing: apt-get install cryptsetup-bin"
    );
    let (mut snap, mut destroy, mut verify, mut again) = (vec![], vec![], vec![], vec![]);
    for i in 0..iterations {
        let image = dir.join(format!("luks-{i}.img"));
        let uuid =
            jex_agent::demo::make_luks_image(&image, 20 << 20, Path::new(DEFAULT_CRYPTSETUP))
                .unwrap();
        let luks = Luks2::new("bench", &image, uuid.trim(), DEFAULT_CRYPTSETUP).unwrap();
        let (before, t) = time(|| luks.snapshot().unwrap());
        snap.push(t);
        destroy.push(time(|| luks.destroy().unwrap()).1);
        verify.push(time(|| luks.verify_destroyed(&before).unwrap()).1);
        again.push(time(|| luks.destroy().unwrap()).1);
        fs::remove_file(&image).unwrap();
    }
    report("luks2 snapshot (20 MiB image)", snap);
    report("luks2 destroy (luksErase)", destroy);
    report("luks2 verify_destroyed", verify);
    report("luks2 destroy again (no-op)", again);
}

fn bench_attest(dir: &Path, iterations: usize) {
    // The test PKI: a fleet CA and an agent certificate for host h-1 (the document's host).
    let ca = TestCa::new("bench fleet CA");
    let (key_path, chain_path) = write_signer_files(dir, &ca.leaf(), &[]);
    let ca_pem = ca.cert_pem;

    let signer = FileSigner::load(&key_path, &chain_path).unwrap();
    // The same consistent two-target ERASED document the certificate tests use.
    let doc = jex_attest::testing::sample_document();
    let nonce = jex_attest::testing::NONCE.to_vec();
    let (mut canon, mut sign, mut verify, mut bundle) = (vec![], vec![], vec![], vec![]);
    let mut size = 0;
    for _ in 0..iterations {
        let (json, t) = time(|| jex_attest::canonical_json(&doc));
        size = json.len();
        canon.push(t);
        let (cert, t) = time(|| jex_attest::sign(&doc, &signer).unwrap());
        sign.push(t);
        verify.push(time(|| jex_attest::verify(&cert, ca_pem.as_bytes(), Some(&nonce)).unwrap()).1);
        bundle
            .push(time(|| SignedCertificate::from_bundle_json(&cert.to_bundle_json()).unwrap()).1);
    }
    println!("certificate document: {size} bytes of canonical JSON, 2 targets");
    report("attest canonical_json", canon);
    report("attest sign (FileSigner, P-256)", sign);
    report("attest verify (chain + signature + checks)", verify);
    report("attest bundle write + read", bundle);
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let dir = tempfile::tempdir().unwrap();
    bench_luks2(dir.path(), 20);
    bench_attest(dir.path(), 500);
}
