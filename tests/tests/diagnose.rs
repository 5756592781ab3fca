//! `jex-agent diagnose` end to end: the real binary writes a bundle of a real agent that has
//! done a real erase (a LUKS2 image made by the real `cryptsetup`), the real `tar` opens it,
//! and every file of it is searched for every private key of the test PKI, the erase's pattern
//! key and its commitment, and the controller's nonce, in hex and base64. Then the agent is
//! stopped and the bundle is made from files. Needs root (the command is root only) and
//! cryptsetup.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use jex_e2e::*;
use jex_proto::v1 as pb;

/// The files every bundle of a running agent holds.
const EXPECTED: [&str; 11] = [
    "README.txt",
    "status.json",
    "config.toml",
    "config-effective.txt",
    "logs/agent.log.tail",
    "version.txt",
    "spool.json",
    "erase-journal.json",
    "certificates.txt",
    "metrics.txt",
    "system.txt",
];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    ensure!(s.len().is_multiple_of(2), "odd hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).with_context(|| format!("hex {s:?}")))
        .collect()
}

/// Standard base64 with padding, and the URL-safe alphabet without it.
fn base64_forms(bytes: &[u8]) -> [String; 2] {
    const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(STD[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    let url = out
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_");
    [out, url]
}

/// Every form a secret of `bytes` could take in a text file.
fn forms(what: &str, bytes: &[u8]) -> Vec<(String, String)> {
    let h = hex(bytes);
    let [b64, url] = base64_forms(bytes);
    vec![
        (format!("{what} (hex)"), h.clone()),
        (format!("{what} (HEX)"), h.to_uppercase()),
        (format!("{what} (base64)"), b64),
        (format!("{what} (base64url)"), url),
    ]
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The secrets the bundle must not hold: each private key's PEM body lines and its label, the
/// nonce, the pattern key and its commitment (hex and base64), read from the PKI and the
/// agent's state directory.
fn secrets(pki: &TestPki, agent_dir: &Path, nonce: &[u8]) -> Result<Vec<(String, String)>> {
    let mut found = vec![(
        "a PEM private key label".to_owned(),
        "PRIVATE KEY".to_owned(),
    )];
    let mut keys = 0;
    for path in files_under(pki.dir.path())?
        .into_iter()
        .chain(files_under(agent_dir)?)
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
    {
        let text = std::fs::read_to_string(&path)?;
        if !text.contains("PRIVATE KEY") {
            continue;
        }
        keys += 1;
        for line in text
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        {
            found.push((format!("a line of {}", path.display()), line.to_owned()));
        }
    }
    ensure!(
        keys >= 3,
        "the test PKI has agent, controller and observer keys; found {keys}"
    );
    found.extend(forms("the controller's nonce", nonce));

    // The certificate reveals the pattern key and repeats the nonce.
    let certs = agent_dir.join("state").join("erase").join("certificates");
    let cert_files = files_under(&certs)?;
    ensure!(
        cert_files.len() == 1,
        "one certificate in {}: {cert_files:?}",
        certs.display()
    );
    let bundle = jex_attest::SignedCertificate::from_bundle_json(&std::fs::read(&cert_files[0])?)?;
    let doc: serde_json::Value = serde_json::from_slice(&bundle.document_json)?;
    let pattern_key = doc["pattern"]["key_hex"]
        .as_str()
        .context("the certificate reveals the pattern key")?;
    let cert_nonce = doc["controller_nonce_hex"]
        .as_str()
        .context("the certificate holds the nonce")?;
    ensure!(cert_nonce == hex(nonce));
    found.extend(forms("the pattern key", &unhex(pattern_key)?));

    // The journal's copy of the nonce and the pattern key's commitment.
    let journal = agent_dir.join("state").join("erase").join("journal.log");
    let replay = jex_erase::journal::Journal::<jex_erase::record::Record>::read(&journal)?;
    let mut requested = 0;
    for record in &replay.records {
        if let jex_erase::record::Record::Requested(r) = record {
            requested += 1;
            ensure!(r.nonce_hex == hex(nonce));
            found.extend(forms(
                "the pattern key's commitment",
                &unhex(&r.pattern_key_sha256)?,
            ));
        }
    }
    ensure!(requested == 1, "one requested record in the journal");
    Ok(found)
}

/// Runs `diagnose` with `args`.
fn diagnose(args: &[&std::ffi::OsStr]) -> Result<std::process::Output> {
    output_within(
        Command::new(agent_bin()?).arg("diagnose").args(args),
        COMMAND_DEADLINE,
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Writes a bundle of the agent configured by `config` to `out` and opens it with the real
/// `tar`: its top directory's name, and every file in it by its path under that directory.
fn bundle(config: &Path, out: &Path) -> Result<(String, BTreeMap<String, Vec<u8>>)> {
    let run = diagnose(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ])?;
    ensure!(
        run.status.code() == Some(0),
        "diagnose exited with {}: {}{}",
        run.status,
        text(&run.stdout),
        text(&run.stderr)
    );
    ensure!(
        text(&run.stdout).contains(&format!("wrote {}", out.display())),
        "{}",
        text(&run.stdout)
    );
    let mode = std::fs::metadata(out)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "the bundle is created 0600, not {mode:o}");
    let into = out.with_extension("d");
    std::fs::create_dir(&into)?;
    let untar = output_within(
        Command::new("tar")
            .arg("-xzf")
            .arg(out)
            .arg("-C")
            .arg(&into),
        COMMAND_DEADLINE,
    )
    .context("tar is needed to open the bundle")?;
    ensure!(untar.status.success(), "tar -xzf: {}", text(&untar.stderr));
    let tops: Vec<_> = std::fs::read_dir(&into)?.collect::<std::io::Result<_>>()?;
    ensure!(
        tops.len() == 1,
        "one top directory in the bundle, not {tops:?}"
    );
    let top = tops[0].file_name().to_string_lossy().into_owned();
    ensure!(
        top.starts_with(&format!("jex-agent-diagnose-{HOST_ID}-")) && top.ends_with('Z'),
        "top directory {top}"
    );
    let root = tops[0].path();
    let mut files = BTreeMap::new();
    for path in files_under(&root)? {
        let name = path.strip_prefix(&root)?.display().to_string();
        files.insert(name, std::fs::read(&path)?);
    }
    Ok((top, files))
}

/// Fails naming the file and the secret when any file holds any secret.
fn assert_no_secret(files: &BTreeMap<String, Vec<u8>>, secrets: &[(String, String)]) -> Result<()> {
    for (name, bytes) in files {
        let body = text(bytes);
        for (what, secret) in secrets {
            if body.contains(secret.as_str()) {
                bail!("{name} holds {what}: {secret}");
            }
        }
    }
    Ok(())
}

fn json(files: &BTreeMap<String, Vec<u8>>, name: &str) -> Result<serde_json::Value> {
    let bytes = files
        .get(name)
        .with_context(|| format!("no {name} in the bundle"))?;
    serde_json::from_slice(bytes).with_context(|| format!("{name} is not JSON: {}", text(bytes)))
}

#[tokio::test]
async fn a_bundle_after_a_real_erase_holds_every_part_and_no_key_nonce_or_pattern_key() -> Result<()>
{
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("tenant.img");
    let cryptsetup = jex_agent::demo::find_cryptsetup()
        .context("cryptsetup is not installed: install cryptsetup-bin (scripts/test.sh does)")?;
    let luks_uuid = jex_agent::demo::make_luks_image(&image, 16 << 20, &cryptsetup)?;
    let mut extra = String::from("\n[erase]\nchunk_bytes = 1048576\ncheckpoint_bytes = 2097152\n");
    extra.push_str(&jex_agent::demo::erase_toml(
        &image,
        &luks_uuid,
        &cryptsetup,
    ));
    let opts = AgentOptions {
        extra_toml: extra,
        ..Default::default()
    };
    let agent_dir = dir.path().join("agent");
    let agent = start_agent(&pki, &agent_dir, &opts)?;
    let config = agent_dir.join("agent.toml");

    // A real erase, to its certificate.
    let nonce: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
    let mut controller = client(&pki, &agent, Some(&pki.controller())).await?;
    let op = controller
        .terminate(pb::TerminateRequest {
            request_id: "req-diagnose".into(),
            host_id: HOST_ID.into(),
            nonce: nonce.clone(),
        })
        .await?
        .into_inner()
        .operation
        .context("no operation")?;
    let last = watch_to_end(
        &mut controller,
        &agent,
        &op.operation_id,
        Duration::from_secs(120),
    )
    .await?
    .operation
    .context("no operation in the last WatchErase message")?;
    ensure!(last.phase == pb::ErasePhase::Reclaimable as i32, "{last:?}");
    drop(controller);
    let secrets = secrets(&pki, &agent_dir, &nonce)?;

    // 1. The agent runs.
    let out_dir = tempfile::tempdir()?;
    let out = out_dir.path().join("b.tar.gz");
    let (_, files) = bundle(&config, &out)?;
    for name in EXPECTED {
        let bytes = files.get(name).with_context(|| {
            format!(
                "no {name} in the bundle; it has {:?}; README:\n{}",
                files.keys(),
                files.get("README.txt").map(|b| text(b)).unwrap_or_default()
            )
        })?;
        ensure!(!bytes.is_empty(), "{name} is empty");
    }
    ensure!(files.len() == EXPECTED.len(), "{:?}", files.keys());
    let readme = text(&files["README.txt"]);
    ensure!(readme.contains("The agent was running"), "{readme}");
    ensure!(readme.contains("Every part was collected."), "{readme}");
    let status = json(&files, "status.json")?;
    ensure!(status["agent_running"] == true, "{status}");
    ensure!(status["pid"] == agent.pid(), "{status}");
    ensure!(status["host_id"] == HOST_ID, "{status}");
    ensure!(status["lifecycle"] == "RECLAIMABLE", "{status}");
    let metrics = text(&files["metrics.txt"]);
    ensure!(metrics.contains("jex_agent_build_info"), "{metrics}");
    let config_text = text(&files["config.toml"]);
    ensure!(
        config_text.contains(&pki.paths.agent_key.display().to_string())
            && config_text.contains("# Checked: no PEM block"),
        "the configuration keeps the key's path and says it was checked:\n{config_text}"
    );
    let journal = json(&files, "erase-journal.json")?;
    let ops = journal["operations"].as_array().context("operations")?;
    ensure!(ops.len() == 1, "{journal}");
    ensure!(
        ops[0]["operation_id"] == op.operation_id.as_str(),
        "{journal}"
    );
    ensure!(ops[0]["request_id"] == "req-diagnose", "{journal}");
    ensure!(
        ops[0]["outcome"] == "ERASED" && ops[0]["reclaimable"] == true,
        "{journal}"
    );
    ensure!(ops[0]["targets"][0]["name"] == "tenant-disk", "{journal}");
    ensure!(
        ops[0]["targets"][0]["device"] == image.display().to_string().as_str(),
        "{journal}"
    );
    ensure!(
        journal["certificates"] == serde_json::json!([format!("{}.json", op.operation_id)]),
        "the certificate is listed by file name: {journal}"
    );
    let spool = json(&files, "spool.json")?;
    ensure!(spool["records"].as_u64().is_some_and(|n| n > 0), "{spool}");
    ensure!(spool["durable"] == true, "{spool}");
    let certs = text(&files["certificates.txt"]);
    let agent_der = &jex_agent::tls::load_certs(&pki.paths.agent_cert)?[0];
    let fingerprint = sha256sum(agent_der)?;
    ensure!(
        certs.contains(&fingerprint) && certs.contains("days left:") && certs.contains(HOST_ID),
        "{certs}"
    );
    let log = text(&files["logs/agent.log.tail"]);
    ensure!(log.lines().count() > 5, "{log}");
    for line in log.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .with_context(|| format!("a log line that is not JSON: {line}"))?;
    }
    ensure!(
        text(&files["version.txt"]).contains(jex_agent::LONG_VERSION),
        "{}",
        text(&files["version.txt"])
    );
    // 2. No private key, nonce or pattern key anywhere in it.
    assert_no_secret(&files, &secrets)?;
    // The same search finds a secret when one is there (the search itself works).
    let mut planted = files.clone();
    planted.insert(
        "planted".into(),
        secrets.last().context("secrets")?.1.clone().into_bytes(),
    );
    ensure!(assert_no_secret(&planted, &secrets).is_err());

    // 3. The agent is stopped: a bundle from files, which says so.
    let (code, _) = tokio::task::spawn_blocking(move || agent.terminate()).await??;
    ensure!(code == Some(0));
    let out = out_dir.path().join("stopped.tar.gz");
    let (_, files) = bundle(&config, &out)?;
    let readme = text(&files["README.txt"]);
    ensure!(
        readme.contains("The agent was not running; everything here was read from files."),
        "README.txt says the agent was not running:\n{readme}"
    );
    ensure!(
        readme.contains("metrics.txt: the agent was not running"),
        "README.txt says why metrics.txt is missing:\n{readme}"
    );
    ensure!(!files.contains_key("metrics.txt"));
    let status = json(&files, "status.json")?;
    ensure!(status["agent_running"] == false, "{status}");
    ensure!(status["host_id"] == HOST_ID, "{status}");
    ensure!(
        status["erase"]["last_operation"]["operation_id"] == op.operation_id.as_str(),
        "{status}"
    );
    let spool = json(&files, "spool.json")?;
    ensure!(spool["segments"].as_u64().is_some_and(|n| n > 0), "{spool}");
    let journal = json(&files, "erase-journal.json")?;
    ensure!(journal["operations"][0]["outcome"] == "ERASED", "{journal}");
    for name in EXPECTED.iter().filter(|n| **n != "metrics.txt") {
        ensure!(
            files.get(*name).is_some_and(|b| !b.is_empty()),
            "{name} is missing or empty without the agent; README:\n{readme}"
        );
    }
    assert_no_secret(&files, &secrets)?;
    Ok(())
}

/// SHA-256 of `bytes`, by the real `sha256sum` (an implementation apart from the agent's).
fn sha256sum(bytes: &[u8]) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("der");
    std::fs::write(&path, bytes)?;
    let out = output_within(Command::new("sha256sum").arg(&path), COMMAND_DEADLINE)
        .context("sha256sum (coreutils) is needed")?;
    ensure!(out.status.success(), "sha256sum: {}", text(&out.stderr));
    let digest = text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    ensure!(
        digest.len() == 64,
        "sha256sum printed {:?}",
        text(&out.stdout)
    );
    Ok(digest)
}

#[test]
fn a_bad_out_is_refused_naming_the_path_and_an_existing_file_is_kept() -> Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let config = write_config(&pki, &dir.path().join("agent"), &AgentOptions::default())?;

    let missing = dir.path().join("no-such-dir").join("b.tar.gz");
    let run = diagnose(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--out".as_ref(),
        missing.as_os_str(),
    ])?;
    let err = text(&run.stderr);
    ensure!(run.status.code() == Some(64), "{}: {err}", run.status);
    ensure!(
        err.contains(&missing.display().to_string()) && err.contains("does not exist"),
        "{err}"
    );
    ensure!(!missing.parent().context("parent")?.exists());

    let existing = dir.path().join("b.tar.gz");
    std::fs::write(&existing, b"an earlier bundle")?;
    let run = diagnose(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--out".as_ref(),
        existing.as_os_str(),
    ])?;
    let err = text(&run.stderr);
    ensure!(run.status.code() == Some(64), "{}: {err}", run.status);
    ensure!(
        err.contains(&format!("{} already exists", existing.display())),
        "{err}"
    );
    ensure!(std::fs::read(&existing)? == b"an earlier bundle");
    // Nothing else was left in the directory (no temporary file).
    let names: Vec<_> = std::fs::read_dir(dir.path())?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    ensure!(names.len() == 2, "{names:?}");
    Ok(())
}

#[test]
fn diagnose_without_root_ask_for_sudo_and_exits_77() -> Result<()> {
    // The binary runs as `nobody`, who may not reach it inside the checkout: a copy in a
    // directory opened to everyone.
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let bin = dir.path().join("jex-agent");
    std::fs::copy(agent_bin()?, &bin)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    let out = dir.path().join("b.tar.gz");
    let run = output_within(
        Command::new(&bin)
            .arg("diagnose")
            .arg("--out")
            .arg(&out)
            .current_dir(dir.path())
            .uid(65534)
            .gid(65534),
        COMMAND_DEADLINE,
    )?;
    let err = text(&run.stderr);
    ensure!(run.status.code() == Some(77), "{}: {err}", run.status);
    ensure!(
        err.contains("diagnose needs root") && err.contains("sudo"),
        "{err}"
    );
    ensure!(!out.exists(), "no bundle is written without root");
    Ok(())
}
