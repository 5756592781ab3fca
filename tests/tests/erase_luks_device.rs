//! The erase in its production shape on Linux, end to end: a LUKS2 volume made by the real
//! `cryptsetup` on a real loop block device, erased by a real agent process through a real
//! controller client over mTLS; and the proof that no key material of a full erase (the pattern
//! key, the agent's TLS and signing key, the LUKS passphrase and volume key) reaches the agent's
//! log file or its stderr.
//!
//! Device-mapper does not work in this environment, so the LUKS volume is never opened: the
//! passphrase is checked with `cryptsetup open --test-passphrase`, which needs no mapping.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use jex_e2e::*;
use jex_proto::v1 as pb;

/// Size of the tenant volume.
const VOLUME_BYTES: u64 = 24 << 20;

fn cryptsetup() -> Result<PathBuf> {
    jex_agent::demo::find_cryptsetup()
        .context("cryptsetup is not installed: install cryptsetup-bin (scripts/test.sh does)")
}

/// Runs `program args`; its stdout, or an error with its stderr.
fn run(program: &Path, args: &[&std::ffi::OsStr]) -> Result<String> {
    let out = output_within(Command::new(program).args(args), COMMAND_DEADLINE)
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {:?} exited with {}: {}",
            program.display(),
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A loop device over an image file, detached when dropped.
struct LoopDevice {
    path: PathBuf,
}

impl LoopDevice {
    fn attach(image: &Path) -> Result<Self> {
        let out = run(
            Path::new("/usr/sbin/losetup"),
            &["--find".as_ref(), "--show".as_ref(), image.as_os_str()],
        )
        .context("attaching a loop device (losetup is in util-mount; root is needed)")?;
        let path = PathBuf::from(out.trim());
        ensure!(
            path.starts_with("/dev") && path.exists(),
            "losetup printed {out:?}, not a device"
        );
        Ok(LoopDevice { path })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = output_within(
            Command::new("/usr/sbin/losetup").arg("-d").arg(&self.path),
            COMMAND_DEADLINE,
        );
    }
}

/// A LUKS2 volume on `device` whose passphrase is kept (in `key_file`) so the test can check
/// that it no longer opens the volume and that it never reached a log.
struct LuksVolume {
    device: PathBuf,
    key_file: PathBuf,
    passphrase: Vec<u8>,
    uuid: String,
    /// The volume key, as `luksDump --dump-volume-key` prints it, hex.
    volume_key_hex: String,
}

impl LuksVolume {
    fn format(device: &Path, dir: &Path) -> Result<Self> {
        let cs = cryptsetup()?;
        let passphrase: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        let key_file = dir.join("luks.key");
        std::fs::write(&key_file, &passphrase)?;
        run(&cs, &jex_agent::demo::luks_format_args(&key_file, device))?;
        let uuid = run(&cs, &["luksUUID".as_ref(), device.as_os_str()])?
            .trim()
            .to_owned();
        let dump = run(
            &cs,
            &[
                "luksDump".as_ref(),
                "--dump-volume-key".as_ref(),
                "--batch-mode".as_ref(),
                "--key-file".as_ref(),
                key_file.as_os_str(),
                device.as_os_str(),
            ],
        )?;
        let volume_key_hex = volume_key_from_dump(&dump)?;
        Ok(LuksVolume {
            device: device.to_owned(),
            key_file,
            passphrase,
            uuid,
            volume_key_hex,
        })
    }

    /// Whether the passphrase still unlocks a keyslot (no mapping is made).
    fn passphrase_opens(&self) -> Result<bool> {
        Ok(output_within(
            Command::new(cryptsetup()?)
                .args(["open", "--test-passphrase", "--key-file"])
                .arg(&self.key_file)
                .arg(&self.device),
            COMMAND_DEADLINE,
        )?
        .status
        .success())
    }

    /// `luksDump` of the device: `None` when cryptsetup finds no LUKS header.
    fn dump(&self) -> Result<Option<String>> {
        let out = output_within(
            Command::new(cryptsetup()?)
                .arg("luksDump")
                .arg(&self.device),
            COMMAND_DEADLINE,
        )?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    }
}

/// The keyslots `luksDump` lists (`  0: luks2` lines under `Keyslots:`).
fn keyslots(dump: &str) -> usize {
    dump.lines()
        .skip_while(|l| !l.starts_with("Keyslots:"))
        .skip(1)
        .take_while(|l| l.starts_with([' ', '\t']))
        .filter(|l| {
            let l = l.trim_start();
            l.split_once(':')
                .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
        .count()
}

/// The hex digits after `MK dump:` (cryptsetup 2.x prints 16 bytes a line, spaced).
fn volume_key_from_dump(dump: &str) -> Result<String> {
    let start = dump
        .find("MK dump:")
        .context("no `MK dump:` in luksDump --dump-volume-key")?;
    let mut hex = String::new();
    for (i, line) in dump[start + "MK dump:".len()..].lines().enumerate() {
        let digits: String = line.split_whitespace().collect();
        let is_hex = !digits.is_empty() && digits.chars().all(|c| c.is_ascii_hexdigit());
        if !is_hex {
            if i == 0 {
                continue;
            }
            break;
        }
        hex.push_str(&digits);
    }
    ensure!(
        hex.len() >= 64,
        "volume key too short ({} hex digits) in the dump",
        hex.len()
    );
    Ok(hex.to_ascii_lowercase())
}

/// The `[erase]` tables for one LUKS2 target on `device`.
fn erase_toml(device: &Path, luks_uuid: &str) -> Result<String> {
    Ok(format!(
        "\n[erase]\nchunk_bytes = 1048576\ncheckpoint_bytes = 4194304\n{}",
        jex_agent::demo::erase_toml(device, luks_uuid, &cryptsetup()?)
    ))
}

fn nonce() -> Vec<u8> {
    (0..32).map(|_| rand::random::<u8>()).collect()
}

/// What a finished erase left: WatchErase's last message, the verified certificate document,
/// the host's lifecycle right after.
struct Erased {
    last: pb::EraseOperation,
    document: jex_attest::CertificateDocumentV2,
    lifecycle: i32,
}

/// Terminate as the controller, WatchErase to the end, GetHost, and the certificate verified
/// against the fleet CA and the nonce.
async fn erase(pki: &TestPki, agent: &AgentProcess) -> Result<Erased> {
    let nonce = nonce();
    let mut c = client(pki, agent, Some(&pki.controller())).await?;
    let op = c
        .terminate(pb::TerminateRequest {
            request_id: "req-device".into(),
            host_id: HOST_ID.into(),
            nonce: nonce.clone(),
        })
        .await?
        .into_inner()
        .operation
        .context("Terminate answered no operation")?;
    let last = watch_to_end(&mut c, agent, &op.operation_id, Duration::from_secs(120)).await?;
    let lifecycle = c
        .get_host(pb::GetHostRequest {})
        .await?
        .into_inner()
        .host
        .context("GetHost answered no host")?
        .lifecycle_state;
    let operation = last.operation.context("last message has no operation")?;
    let certificate = last.certificate.with_context(|| {
        format!(
            "the last message carries no certificate: {operation:?}; log:\n{}",
            agent.log()
        )
    })?;
    let certificate = jex_agent::server::convert::certificate_from_proto(certificate);
    let document = verify_v2(
        &certificate,
        &std::fs::read(&pki.paths.ca_cert)?,
        Some(&nonce),
    )?;
    Ok(Erased {
        last: operation,
        document,
        lifecycle,
    })
}

#[tokio::test]
async fn a_luks2_volume_on_a_loop_block_device_is_erased_with_the_real_cryptsetup() -> Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)?.set_len(VOLUME_BYTES)?;
    let device = LoopDevice::attach(&image)?;
    let volume = LuksVolume::format(&device.path, dir.path())?;
    // The checks below can fail: before the erase the header and the passphrase work.
    ensure!(volume.passphrase_opens()?, "the fresh volume does not open");
    let dump = volume.dump()?.context("the fresh volume has no header")?;
    ensure!(keyslots(&dump) == 1, "one keyslot expected:\n{dump}");

    let opts = AgentOptions {
        extra_toml: erase_toml(&device.path, &volume.uuid)?,
        ..Default::default()
    };
    let agent = start_agent(&pki, &dir.path().join("agent"), &opts)?;
    let erased = erase(&pki, &agent).await?;

    assert_eq!(
        erased.last.phase,
        pb::ErasePhase::Reclaimable as i32,
        "{:?}",
        erased.last
    );
    assert_eq!(erased.last.outcome, pb::EraseOutcome::Erased as i32);
    assert_eq!(erased.lifecycle, pb::LifecycleState::Reclaimable as i32);
    let doc = &erased.document;
    assert_eq!(doc.outcome, "ERASED");
    assert_eq!(doc.targets.len(), 1);
    let target = &doc.targets[0];
    assert_eq!(target.kind, "luks2");
    assert_eq!(target.media_type, "block device");
    // The keys destroyed, then the overwrite: Purge, stated for this target.
    assert_eq!(
        (
            target.sanitization.category.as_str(),
            target.sanitization.technique.as_str()
        ),
        ("Purge", jex_attest::TECHNIQUE_CRYPTO_ERASE_OVERWRITE)
    );
    assert!(
        target
            .identity
            .starts_with(&format!("luks-uuid:{};", volume.uuid)),
        "{}",
        target.identity
    );
    assert_eq!(target.size_bytes, VOLUME_BYTES, "the whole block device");
    let evidence = &target
        .key_destruction
        .as_ref()
        .context("no key destruction")?
        .evidence;
    assert_eq!(
        evidence.get("keyslots_before").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        evidence.get("keyslots_after").map(String::as_str),
        Some("0")
    );
    // The overwrite read-back passed.
    let verification = doc.verification.as_ref().context("no verification")?;
    assert!(verification.sampled_blocks > 0, "{verification:?}");
    let overwrite = target.overwrite.as_ref().context("no overwrite")?;
    assert!(overwrite.verified_blocks > 0, "{target:?}");
    assert_eq!(verification.mismatched_blocks, 0);
    assert_eq!(overwrite.mismatched_blocks, 0);

    // The keyslots are gone: no header (overwritten), and the passphrase opens nothing.
    let after = volume.dump()?;
    assert_eq!(
        after.as_deref().map_or(0, keyslots),
        0,
        "luksDump still shows keyslots: {after:?}"
    );
    assert!(
        !volume.passphrase_opens()?,
        "the passphrase still unlocks the volume"
    );
    // Every byte of the device is the pattern the certificate reveals.
    let key =
        jex_erase::pattern::PatternKey::from_hex(doc.pattern_key_hex().context("no pattern")?)?;
    let bytes = std::fs::read(&device.path)?;
    assert_eq!(bytes.len() as u64, VOLUME_BYTES);
    let mut expected = vec![0u8; bytes.len()];
    jex_erase::pattern::Pattern::new(key).fill(0, &mut expected);
    assert!(bytes == expected, "the device holds exactly the pattern");

    let (code, _) = tokio::task::spawn_blocking(move || agent.terminate()).await??;
    assert_eq!(code, Some(0));
    drop(device);
    Ok(())
}

/// Every form in which `bytes` could be written into a log line: lowercase and uppercase hex,
/// standard and URL-safe base64 (with and without padding).
fn encodings(bytes: &[u8]) -> Vec<String> {
    use base64_forms::*;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        hex.clone(),
        hex.to_ascii_uppercase(),
        standard(bytes),
        standard(bytes).trim_end_matches('=').to_owned(),
        url_safe(bytes).trim_end_matches('=').to_owned(),
    ]
}

/// Base64 by hand (the test package has no base64 dependency; the forms are few and fixed).
mod base64_forms {
    const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn standard(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(STANDARD[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn url_safe(bytes: &[u8]) -> String {
        standard(bytes).replace('+', "-").replace('/', "_")
    }
}

fn hex_to_bytes(hex: &str) -> Result<Vec<u8>> {
    ensure!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).context("not hex"))
        .collect()
}

/// The secrets of a PEM private key file: every base64 line of its body, the DER in its
/// encodings, and the private scalar (from `openssl pkey -text`) in its encodings.
fn private_key_needles(name: &str, key_pem: &Path) -> Result<Vec<(String, String)>> {
    let pem = std::fs::read_to_string(key_pem)?;
    let body: Vec<&str> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
        .collect();
    ensure!(!body.is_empty(), "{} holds no PEM body", key_pem.display());
    let mut needles: Vec<(String, String)> = body
        .iter()
        .map(|line| (format!("{name}: PEM line"), (*line).to_owned()))
        .collect();
    let out = output_within(
        Command::new("/usr/bin/openssl")
            .args(["pkey", "-outform", "DER", "-in"])
            .arg(key_pem),
        COMMAND_DEADLINE,
    )
    .context("running openssl (install openssl)")?;
    ensure!(
        out.status.success(),
        "openssl pkey -outform DER: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let der = out.stdout;
    for e in encodings(&der) {
        needles.push((format!("{name}: DER"), e));
    }
    let text = run(
        Path::new("/usr/bin/openssl"),
        &[
            "pkey".as_ref(),
            "-in".as_ref(),
            key_pem.as_os_str(),
            "-noout".as_ref(),
            "-text".as_ref(),
        ],
    )?;
    // `priv:` followed by indented `aa:bb:…` lines.
    let scalar: String = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("priv:"))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .flat_map(|l| l.trim().split(':'))
        .collect();
    ensure!(
        scalar.len() >= 64,
        "no private scalar in `openssl pkey -text`:\n{text}"
    );
    let scalar = hex_to_bytes(&scalar)?;
    // A leading zero byte may be printed; the 32 low bytes are the scalar either way.
    let scalar = &scalar[scalar.len() - 32..];
    ensure!(
        encodings(&der)[0].contains(&encodings(scalar)[0]),
        "the scalar read from `openssl pkey -text` is not inside the key's DER"
    );
    for e in encodings(scalar) {
        needles.push((format!("{name}: private scalar"), e));
    }
    Ok(needles)
}

#[tokio::test]
async fn no_key_material_of_a_full_erase_reaches_the_log_or_stderr() -> Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("tenant.img");
    std::fs::File::create(&image)?.set_len(VOLUME_BYTES)?;
    let volume = LuksVolume::format(&image, dir.path())?;
    let opts = AgentOptions {
        extra_toml: erase_toml(&image, &volume.uuid)?,
        ..Default::default()
    };
    let agent_dir = dir.path().join("agent");
    let agent = start_agent(&pki, &agent_dir, &opts)?;
    let erased = erase(&pki, &agent).await?;
    assert_eq!(
        erased.last.phase,
        pb::ErasePhase::Reclaimable as i32,
        "{:?}",
        erased.last
    );
    agent.wait_for_log(&["host reclaimable"], Duration::from_secs(10))?;
    let (code, _) = tokio::task::spawn_blocking(move || agent.terminate()).await??;
    assert_eq!(code, Some(0));

    // Everything the agent wrote: the JSON log (and any rotation) and stderr.
    let mut logged = Vec::new();
    for entry in std::fs::read_dir(agent_dir.join("logs"))? {
        let path = entry?.path();
        logged.push((path.clone(), std::fs::read_to_string(&path)?));
    }
    let stderr_path = agent_dir.join("stderr.log");
    logged.push((stderr_path.clone(), std::fs::read_to_string(&stderr_path)?));
    let lines: usize = logged.iter().map(|(_, text)| text.lines().count()).sum();
    // The erase itself was logged, step by step: the grep below reads real lines.
    let all: String = logged.iter().map(|(_, t)| t.as_str()).collect();
    for step in [
        "erase operation requested",
        "host reclaimable",
        &erased.last.operation_id,
    ] {
        ensure!(all.contains(step), "no `{step}` in the logs:\n{all}");
    }

    let mut needles = Vec::new();
    let pattern_key = hex_to_bytes(
        erased
            .document
            .pattern_key_hex()
            .context("no pattern key")?,
    )?;
    ensure!(
        pattern_key.len() == 32,
        "pattern key of {} bytes",
        pattern_key.len()
    );
    for e in encodings(&pattern_key) {
        needles.push(("pattern key".to_owned(), e));
    }
    // The agent's TLS key is also the certificate signing key (FileSigner loads tls.key).
    needles.extend(private_key_needles(
        "agent TLS and signing key",
        &pki.paths.agent_key,
    )?);
    for e in encodings(&volume.passphrase) {
        needles.push(("LUKS passphrase".to_owned(), e));
    }
    for e in encodings(&hex_to_bytes(&volume.volume_key_hex)?) {
        needles.push(("LUKS volume key".to_owned(), e));
    }
    // Every needle is long enough not to match by chance (at least 16 bytes of secret).
    assert!(needles.iter().all(|(_, n)| n.len() >= 20), "{needles:?}");

    // Controls: the same matching finds each kind of secret where it is meant to be.
    ensure!(
        base64_forms::standard(b"foobar") == "Zm9vYmFy" && base64_forms::standard(b"fo") == "Zm8=",
        "the base64 forms are wrong"
    );
    let found_in = |text: &str| -> std::collections::BTreeSet<String> {
        needles
            .iter()
            .filter(|(_, n)| text.contains(n.as_str()))
            .map(|(what, _)| what.clone())
            .collect()
    };
    // The certificate's document reveals the pattern key, as it must once the erase is done.
    let certificate = serde_json::to_string(&erased.document)?;
    ensure!(
        found_in(&certificate).contains("pattern key"),
        "the control failed: the pattern key is not found in its own certificate"
    );
    let key_pem = std::fs::read_to_string(&pki.paths.agent_key)?;
    ensure!(
        found_in(&key_pem).contains("agent TLS and signing key: PEM line"),
        "the control failed: the agent key is not found in its own file"
    );

    let mut found = Vec::new();
    for (path, text) in &logged {
        for (number, line) in text.lines().enumerate() {
            for (what, needle) in &needles {
                if line.contains(needle.as_str()) {
                    found.push(format!("{}:{}: {what}", path.display(), number + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "key material in {lines} logged lines: {found:#?}"
    );
    eprintln!(
        "{lines} lines in {} files checked against {} encodings of key material",
        logged.len(),
        needles.len()
    );
    Ok(())
}
