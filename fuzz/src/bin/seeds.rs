//! Writes the fixtures (`fuzz/fixtures/`) and seed corpora (`fuzz/corpus/<target>/`) of the fuzz
//! targets from real inputs: `scripts/fuzz.sh seeds`. Every run makes new keys, so the fixtures
//! and the corpora are regenerated and committed together. No private key is written to the
//! repository: keys live in a temporary directory that is removed at the end.
//!
//! - `cert_bundle`: an erase certificate signed by the agent's key through `jex_attest::sign`
//!   (the agent's development PKI of `jex_agent::pki`, host `h-1`) as a bundle, and its document;
//!   `fixtures/erase-ca.pem` is that PKI's fleet CA.
//! - `pkg_verify`: a package built by `jex_packaging::build` and signed by
//!   `jex_packaging::sign` with an RSA PKI made by `openssl` (as the packaging tests do), the
//!   same unsigned, and the signed one as TOC XML, NUL, heap (the target's second input form);
//!   `fixtures/pkg-ca.pem` is that PKI's root.
//! - `darwin_parsers`: the captured macOS outputs of `crates/platform/tests/fixtures/macos/`,
//!   this machine's `/proc` files (the mount table limited to the kernel's own filesystems),
//!   and two constructed inputs for which no capture exists (`*.constructed.*`: the
//!   `IOPlatformExpertDevice` plist and a `struct xsw_usage`).
//! - `diskutil_parsers`: the captured `diskutil` plists of `crates/reclaim/tests/fixtures/diskutil/`,
//!   one of them converted to a binary plist, and `cryptsetup luksDump --dump-json-metadata` and
//!   `cryptsetup --version` from the real `cryptsetup` on a fresh two-keyslot LUKS2 image.
//! - `client_san`: the agent, controller and observer certificates (DER) of the development PKI.
//! - `spool_segments`: a segment written by the agent's `jex_spool::Spool<WireRecord>` with three samples
//!   of this machine (the agent's own sampler) and a gap; the same cut in its last frame (a
//!   torn tail), without its header (the target's frames-only form), and twice in a row (the
//!   target's two-segment form); the golden format 1 segment and the crash input of issue 14
//!   (item 10, behind a format 1 header), from `crates/spool/testdata/`.
//! - `erase_journal`: the journal of a whole erase by `jex_erase::EraseService` (one 1 MiB
//!   image file, the crate's fake key backend and test signer) up to `reclaimable`; the same
//!   cut in its last frame, and without its magic (the target's frames-only form).
//! - `agent_config`: `launchd/agent.toml.example`, and a configuration that writes every key
//!   (two erase targets, one of each backend).
//! - `status_request`: `status` and `plan` requests as the CLI sends them, one in pieces of
//!   one byte, and an over-long line (each prefixed with the target's piece-size byte).
//!
//! `scripts/fuzz.sh seeds TARGET...` regenerates only the named targets (a target's fixture
//! with it): the other corpora and fixtures stay as committed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use jex_attest::{FileSigner, sign};
use jex_packaging::build::{self, BuildInputs};
use jex_packaging::layout;
use jex_packaging::sign::{SigningIdentity, sign_package};
use jex_packaging::xar::XarArchive;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::format_description::well_known::Rfc3339;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let repo = fuzz.parent().ok_or("fuzz/ has a parent")?.to_owned();
    let tmp = tempfile::tempdir()?;
    let out = Out { fuzz: fuzz.clone() };
    fs::create_dir_all(fuzz.join("fixtures"))?;

    let only: Vec<String> = std::env::args().skip(1).collect();
    for target in &only {
        if !TARGETS.contains(&target.as_str()) {
            return Err(format!("unknown target {target}: one of {TARGETS:?}").into());
        }
    }
    let wanted = |target: &str| only.is_empty() || only.iter().any(|t| t == target);
    let pki_dir = tmp.path().join("pki");
    if wanted("cert_bundle") || wanted("client_san") {
        let (paths, _) = jex_agent::pki::write_dev_pki(&pki_dir, "fleet.example", "h-1")?;
        if wanted("cert_bundle") {
            cert_bundle(&out, &paths.agent_key, &paths.agent_cert, &paths.ca_cert)?;
        }
        if wanted("client_san") {
            client_san(&out, &paths)?;
        }
    }
    if wanted("pkg_verify") {
        pkg_verify(&out, &repo, &tmp.path().join("pkg-pki"))?;
    }
    if wanted("darwin_parsers") {
        darwin_parsers(&out, &repo)?;
    }
    if wanted("diskutil_parsers") {
        diskutil_parsers(&out, &repo, tmp.path())?;
    }
    if wanted("spool_segments") {
        spool_segments(&out, tmp.path())?;
    }
    if wanted("erase_journal") {
        erase_journal(&out, tmp.path())?;
    }
    if wanted("agent_config") {
        agent_config(&out, &repo)?;
    }
    if wanted("status_request") {
        status_request(&out)?;
    }
    Ok(())
}

/// Every target this generator writes seeds for.
const TARGETS: [&str; 9] = [
    "cert_bundle",
    "client_san",
    "pkg_verify",
    "darwin_parsers",
    "diskutil_parsers",
    "spool_segments",
    "erase_journal",
    "agent_config",
    "status_request",
];

struct Out {
    fuzz: PathBuf,
}

impl Out {
    /// Writes `corpus/<target>/<name>` (the directory emptied on first use by `reset`).
    fn seed(&self, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let dir = self.fuzz.join("corpus").join(target);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join(name), bytes)?;
        println!("corpus/{target}/{name}: {} bytes", bytes.len());
        Ok(())
    }

    fn reset(&self, target: &str) -> Result<()> {
        let dir = self.fuzz.join("corpus").join(target);
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        Ok(())
    }

    fn fixture(&self, name: &str, bytes: &[u8]) -> Result<()> {
        fs::write(self.fuzz.join("fixtures").join(name), bytes)?;
        println!("fixtures/{name}: {} bytes", bytes.len());
        Ok(())
    }
}

fn cert_bundle(out: &Out, key: &Path, cert: &Path, ca: &Path) -> Result<()> {
    out.reset("cert_bundle")?;
    let signer = FileSigner::load(key, cert)?;
    // Signed now: the development agent certificate is valid from an hour ago.
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0)?;
    let mut doc = jex_attest::testing::sample_document();
    doc.started_at = (now - time::Duration::minutes(15)).format(&Rfc3339)?;
    doc.finished_at = now.format(&Rfc3339)?;
    let signed = sign(&doc, &signer)?;
    jex_attest::verify(&signed, &fs::read(ca)?, Some(&jex_attest::testing::NONCE))?;
    out.seed("cert_bundle", "bundle-h-1.json", &signed.to_bundle_json())?;
    out.seed("cert_bundle", "document-h-1.json", &signed.document_json)?;
    out.fixture("erase-ca.pem", &fs::read(ca)?)?;
    Ok(())
}

fn client_san(out: &Out, paths: &jex_agent::pki::DevPkiPaths) -> Result<()> {
    out.reset("client_san")?;
    for (name, pem) in [
        ("agent-h-1.der", &paths.agent_cert),
        ("controller.der", &paths.controller_cert),
        ("observer.der", &paths.observer_cert),
        ("fleet-ca.der", &paths.ca_cert),
    ] {
        let der = CertificateDer::from_pem_file(pem)?;
        out.seed("client_san", name, &der)?;
    }
    Ok(())
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("openssl must be installed: {e}"))?;
    if !status.success() {
        return Err(format!("openssl {args:?} failed").into());
    }
    Ok(())
}

/// Root, intermediate and code-signing leaf (RSA 2048, 100 years), as the packaging tests make
/// them.
fn package_pki(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(
        dir.join("ext.cnf"),
        "[ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
         subjectKeyIdentifier = hash\n\
         [leaf]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
         extendedKeyUsage = codeSigning\nsubjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n",
    )?;
    let days = "36500";
    for name in ["root", "inter", "signer"] {
        openssl(dir, &["genrsa", "-out", &format!("{name}.key"), "2048"])?;
    }
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "root.key",
            "-sha256",
            "-days",
            days,
            "-subj",
            "/O=JexCloud Fuzz/CN=Fuzz Root CA",
            "-config",
            "ext.cnf",
            "-extensions",
            "ca",
            "-out",
            "root.pem",
        ],
    )?;
    for (name, issuer, subject, ext) in [
        (
            "inter",
            "root",
            "/O=JexCloud Fuzz/CN=Fuzz Installer CA",
            "ca",
        ),
        (
            "signer",
            "inter",
            "/O=JexCloud Fuzz/CN=Fuzz Installer Signer",
            "leaf",
        ),
    ] {
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                subject,
                "-out",
                &format!("{name}.csr"),
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{issuer}.pem"),
                "-CAkey",
                &format!("{issuer}.key"),
                "-sha256",
                "-days",
                days,
                "-extfile",
                "ext.cnf",
                "-extensions",
                ext,
                "-out",
                &format!("{name}.pem"),
            ],
        )?;
    }
    Ok(())
}

fn pkg_verify(out: &Out, repo: &Path, dir: &Path) -> Result<()> {
    out.reset("pkg_verify")?;
    package_pki(dir)?;
    let read = |name: &str| fs::read(dir.join(name));
    let identity = SigningIdentity::from_pem(
        &read("signer.pem")?,
        &read("signer.key")?,
        &read("inter.pem")?,
    )?;
    let unsigned = build::build_package(&BuildInputs {
        // A stand-in for the agent executable keeps the seed small; the package is otherwise
        // the real one (launchd plist, newsyslog rules, scripts, Bom, Distribution).
        binary: b"#!/bin/sh\necho jex-agent\n".to_vec(),
        config_example: fs::read(repo.join("launchd/agent.toml.example"))?,
        version: "1.2.3".to_owned(),
        identifier: layout::PKG_IDENTIFIER.to_owned(),
        source_date_epoch: build::DEFAULT_SOURCE_DATE_EPOCH,
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let signed = sign_package(&unsigned, &identity, now)?;
    let anchors = jex_packaging::x509::Certificate::from_pem_bundle(&read("root.pem")?, "root")?;
    jex_packaging::verify::verify_package(&signed, &anchors, now)?;
    out.seed("pkg_verify", "signed.pkg", &signed)?;
    out.seed("pkg_verify", "unsigned.pkg", &unsigned)?;
    let archive = XarArchive::parse(&signed)?;
    let mut toc_and_heap = archive.toc_xml.clone().into_bytes();
    toc_and_heap.push(0);
    toc_and_heap.extend_from_slice(&signed[archive.heap_start..]);
    out.seed("pkg_verify", "signed.toc-nul-heap", &toc_and_heap)?;
    out.fixture("pkg-ca.pem", &read("root.pem")?)?;
    Ok(())
}

fn copy_dir(out: &Out, target: &str, dir: &Path, keep: impl Fn(&str) -> bool) -> Result<()> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::result::Result<_, _>>()?;
    names.sort();
    for name in names.into_iter().filter(|n| keep(n)) {
        out.seed(target, &name, &fs::read(dir.join(&name))?)?;
    }
    Ok(())
}

fn darwin_parsers(out: &Out, repo: &Path) -> Result<()> {
    let target = "darwin_parsers";
    out.reset(target)?;
    copy_dir(
        out,
        target,
        &repo.join("crates/platform/tests/fixtures/macos"),
        |n| n != "README.md",
    )?;
    for (name, path) in [
        ("proc-stat", "/proc/stat"),
        ("proc-meminfo", "/proc/meminfo"),
        ("proc-swaps", "/proc/swaps"),
        ("proc-loadavg", "/proc/loadavg"),
        ("proc-pressure-memory", "/proc/pressure/memory"),
        ("sys-cpu-present", "/sys/devices/system/cpu/present"),
    ] {
        out.seed(target, name, &fs::read(path)?)?;
    }
    // The mount table, kept to the kernel's own filesystems (nothing of this machine's layout).
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let kept: String = mountinfo
        .lines()
        .filter(|l| {
            let mount_point = l.split(' ').nth(4).unwrap_or_default();
            ["/", "/proc", "/sys", "/dev", "/dev/shm", "/dev/pts"].contains(&mount_point)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    out.seed(target, "proc-self-mountinfo", kept.as_bytes())?;
    // The first processor of /proc/cpuinfo.
    let cpuinfo = fs::read_to_string("/proc/cpuinfo")?;
    let first = cpuinfo.split("\n\n").next().unwrap_or_default();
    out.seed(target, "proc-cpuinfo", format!("{first}\n").as_bytes())?;

    // No capture of `ioreg -rd1 -c IOPlatformExpertDevice -a` exists (see the fixtures'
    // README): the shape the parser reads, with made-up values.
    let mut entry = plist::Dictionary::new();
    entry.insert(
        "IOPlatformUUID".into(),
        "00000000-0000-0000-0000-000000000000".into(),
    );
    entry.insert("IOPlatformSerialNumber".into(), "FUZZSERIAL0".into());
    entry.insert("IOObjectClass".into(), "IOPlatformExpertDevice".into());
    let mut expert = Vec::new();
    plist::Value::Array(vec![plist::Value::Dictionary(entry)]).to_writer_xml(&mut expert)?;
    out.seed(target, "ioreg-platform-expert.constructed.plist", &expert)?;
    // `struct xsw_usage` (total, avail, used, pagesize, encrypted) with the swap figures of
    // sysctl-memory.loaded-18cpu.txt (total 3072 MiB, used 2233.06 MiB).
    let mut xsw = Vec::new();
    let (total, used) = (3072u64 << 20, 2_341_535_498u64);
    for value in [total, total - used, used] {
        xsw.extend_from_slice(&value.to_ne_bytes());
    }
    xsw.extend_from_slice(&16384u32.to_ne_bytes());
    xsw.extend_from_slice(&1u32.to_ne_bytes());
    out.seed(target, "xsw_usage.constructed.bin", &xsw)?;
    Ok(())
}

fn cryptsetup(args: &[&str]) -> Result<Vec<u8>> {
    let output = Command::new(jex_erase::keys::luks2::DEFAULT_CRYPTSETUP)
        .args(args)
        .output()
        .map_err(|e| format!("cryptsetup must be installed (cryptsetup-bin): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cryptsetup {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(output.stdout)
}

fn diskutil_parsers(out: &Out, repo: &Path, tmp: &Path) -> Result<()> {
    let target = "diskutil_parsers";
    out.reset(target)?;
    let fixtures = repo.join("crates/reclaim/tests/fixtures/diskutil");
    copy_dir(out, target, &fixtures, |n| n.ends_with(".plist"))?;
    let list = plist::Value::from_file(fixtures.join("apfs-list-intel-filevault.plist"))?;
    let mut binary = Vec::new();
    list.to_writer_binary(&mut binary)?;
    out.seed(target, "apfs-list-intel-filevault.binary.plist", &binary)?;

    let image = tmp.join("luks2.img");
    fs::File::create(&image)?.set_len(20 << 20)?;
    let (first, second) = (tmp.join("first.key"), tmp.join("second.key"));
    fs::write(&first, b"fuzz seed passphrase one")?;
    fs::write(&second, b"fuzz seed passphrase two")?;
    let image_arg = image.to_str().ok_or("temporary path is UTF-8")?;
    let (first_arg, second_arg) = (
        first.to_str().ok_or("UTF-8")?,
        second.to_str().ok_or("UTF-8")?,
    );
    let fast = [
        "--batch-mode",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
    ];
    cryptsetup(
        &[
            &["luksFormat", "--type", "luks2"][..],
            &fast,
            &["--key-file", first_arg, image_arg],
        ]
        .concat(),
    )?;
    cryptsetup(
        &[
            &["luksAddKey"][..],
            &fast,
            &["--key-file", first_arg, image_arg, second_arg],
        ]
        .concat(),
    )?;
    out.seed(
        target,
        "luksdump-two-keyslots.json",
        &cryptsetup(&["luksDump", "--dump-json-metadata", image_arg])?,
    )?;
    out.seed(
        target,
        "cryptsetup-version.txt",
        &cryptsetup(&["--version"])?,
    )?;
    Ok(())
}

fn spool_segments(out: &Out, tmp: &Path) -> Result<()> {
    use jex_agent::telemetry::wire::WireRecord;
    use jex_spool::{Spool, SpoolConfig};
    use jex_telemetry::{Gap, GapReason, RecordBody};
    let target = "spool_segments";
    out.reset(target)?;
    let dir = tmp.join("spool");
    let mut source = jex_agent::telemetry::sampler::platform_source(Vec::new())?;
    let (mut spool, _) = Spool::<WireRecord>::open(SpoolConfig::new(&dir))?;
    let t0 = 1_750_000_000_000u64;
    for i in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let record =
            WireRecord::next_in(&spool, t0 + i * 1000, RecordBody::Sample(source.sample()?));
        spool.append(t0 + i * 1000, record)?;
    }
    let gap = WireRecord::next_in(
        &spool,
        t0 + 10_000,
        RecordBody::Gap(Gap {
            reason: GapReason::AgentDown,
            missing_seqs: None,
            start_time_unix_ms: t0 + 3000,
            end_time_unix_ms: t0 + 10_000,
        }),
    );
    spool.append(t0 + 10_000, gap)?;
    spool.flush()?;
    drop(spool);
    let segment = fs::read(dir.join(format!("{:020}.seg", 1)))?;
    out.seed(target, "samples-and-gap.seg", &segment)?;
    out.seed(target, "torn-tail.seg", &segment[..segment.len() - 7])?;
    // The target puts a header in front of input that does not start with one.
    out.seed(target, "frames-only", &segment[16..])?;
    // The target starts a second segment at the second header.
    out.seed(
        target,
        "two-segments",
        &[&segment[..], &segment[..]].concat(),
    )?;
    // The golden format 1 segment (postcard bodies, read through the kept decoder).
    let v1 = include_bytes!("../../../crates/spool/testdata/v1-segment.seg");
    out.seed(target, "v1-segment.seg", v1)?;
    // A crash the target found (issue 14, item 10) behind the format 1 header it was found
    // with, kept as a regression seed.
    out.seed(
        target,
        "fuzz-crash-103b02e0",
        &[
            &v1[..16],
            include_bytes!("../../../crates/spool/testdata/fuzz-crash-103b02e0.bin"),
        ]
        .concat(),
    )?;
    Ok(())
}

fn erase_journal(out: &Out, tmp: &Path) -> Result<()> {
    use jex_erase::testing::{FakeKeys, load_test_signer, write_test_signer};
    use jex_erase::{
        EraseConfig, EraseDeps, EraseService, Phase, TargetConfig, TargetKeys, TerminateCommand,
    };
    let target = "erase_journal";
    out.reset(target)?;
    let dir = tmp.join("erase");
    fs::create_dir_all(&dir)?;
    let image = dir.join("tenant0.img");
    fs::File::create(&image)?.set_len(1 << 20)?;
    write_test_signer(&dir, "h-1");
    let keys = FakeKeys::new();
    let deps = EraseDeps {
        signer: std::sync::Arc::new(load_test_signer(&dir)),
        host: jex_attest::HostIdentity {
            host_id: "h-1".to_owned(),
            hardware_uuid: "00000000-0000-4000-8000-000000000000".to_owned(),
            serial_number: "FUZZSERIAL0".to_owned(),
            model: "Mac15,12".to_owned(),
            os: "Linux seed".to_owned(),
            agent_version: jex_erase::AGENT_VERSION.to_owned(),
        },
        key_destroyer_factory: keys.factory(),
        fleet_ca: None,
    };
    let config = EraseConfig {
        state_dir: dir.join("state"),
        chunk_bytes: 64 * 1024,
        checkpoint_bytes: 256 * 1024,
        verify_block_bytes: 64 * 1024,
        targets: vec![TargetConfig {
            name: "tenant0".to_owned(),
            device: image,
            keys: TargetKeys::Luks2 {
                luks_uuid: "0d7c6b5a-4e3f-4a2b-9c1d-0e9f8a7b6c5d".to_owned(),
            },
        }],
        ..EraseConfig::default()
    };
    let journal_path = config.state_dir.join(jex_erase::layout::JOURNAL_FILE);
    let service = EraseService::open(config, deps)?;
    let view = service.terminate(TerminateCommand {
        request_id: "seed-request".to_owned(),
        host_id: "h-1".to_owned(),
        nonce: (0u8..40).collect(),
    })?;
    let rx = service.watch(Some(&view.operation_id))?;
    loop {
        let view = rx.borrow().clone();
        match view.phase {
            Phase::Reclaimable => break,
            Phase::Failed => return Err(format!("seed erase failed: {view:?}").into()),
            _ => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    drop(service);
    let journal = fs::read(&journal_path)?;
    out.seed(target, "reclaimable.journal", &journal)?;
    out.seed(target, "torn-tail.journal", &journal[..journal.len() - 5])?;
    // The target puts the magic in front of input that does not start with it.
    let magic = jex_erase::journal::MAGIC.len();
    out.seed(target, "frames-only", &journal[magic..])?;
    Ok(())
}

fn agent_config(out: &Out, repo: &Path) -> Result<()> {
    let target = "agent_config";
    out.reset(target)?;
    out.seed(
        target,
        "agent.toml.example",
        &fs::read(repo.join("launchd/agent.toml.example"))?,
    )?;
    let every_key = r#"state_dir = "/var/lib/jex-agent"

[server]
listen = "[::]:7443"
status_socket = "/run/jex-agent.sock"

[server.limits]
max_connections = 64
max_connections_per_peer = 8
first_request_timeout_ms = 10000
idle_timeout_ms = 300000
status_max_connections = 4

[tls]
cert = "/etc/jex/agent.pem"
key = "/etc/jex/agent.key"
client_ca = "/etc/jex/fleet-ca.pem"

[roles]
controller = ["spiffe://fleet.example/controller"]
observer = ["spiffe://fleet.example/observer", "spiffe://fleet.example/dashboard"]

[telemetry]
interval_ms = 500

[telemetry.spool]
dir = "/var/lib/jex-agent/spool"
max_bytes = 25165824
segment_bytes = 1048576
fsync_interval_ms = 1000

[logging]
dir = "/var/log/jex-agent"
level = "info,jex_agent=debug"
max_file_bytes = 10485760
max_files = 5

[erase]
state_dir = "/var/lib/jex-agent/erase"
chunk_bytes = 8388608
checkpoint_bytes = 268435456
verify_strata = 64
verify_locations_per_stratum = 4
verify_coverage_percent = 10.0
verify_block_bytes = 1048576

[erase.tools]
cryptsetup = "/usr/sbin/cryptsetup"
diskutil = "/usr/sbin/diskutil"

[[erase.targets]]
name = "tenant-luks"
backend = "luks2"
device = "/dev/vdb"
luks_uuid = "9f5d0c8e-3a1b-4c2d-8e7f-0a1b2c3d4e5f"

[[erase.targets]]
name = "tenant-apfs"
backend = "apfs-volume"
device = "/dev/rdisk4"
apfs_volume_uuid = "00000000-0000-0000-0000-000000000000"
"#;
    jex_agent::config::Config::parse(Path::new("every-key.toml"), every_key)?;
    out.seed(target, "every-key.toml", every_key.as_bytes())?;
    Ok(())
}

fn status_request(out: &Out) -> Result<()> {
    let target = "status_request";
    out.reset(target)?;
    // The first byte sets the size of the pieces the reader gets (0: all at once, 1..=8).
    out.seed(target, "status", b"\x00status\n")?;
    out.seed(target, "plan", b"\x00plan\n")?;
    out.seed(target, "status-in-one-byte-pieces", b"\x01status\n")?;
    let long = [&b"\x04"[..], &[b's'; 70], b"\n"].concat();
    out.seed(target, "too-long", &long)?;
    Ok(())
}
