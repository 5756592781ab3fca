//! `jex-packaging`: builds, signs and verifies the jex-agent macOS package, on Linux or macOS.
//!
//! ```text
//! jex-packaging build  --binary target/aarch64-apple-darwin/release/jex-agent --version 1.2.3 \
//!                      --config-example launchd/agent.toml.example --out jex-agent-1.2.3.pkg
//! jex-packaging sign   --pkg jex-agent-1.2.3.pkg --cert signer.pem --key signer.key \
//!                      --chain ca.pem --out jex-agent-1.2.3-signed.pkg
//! jex-packaging verify --pkg jex-agent-1.2.3-signed.pkg --ca ca.pem
//! ```
//!
//! Exit status: 0 on success, 1 when a step fails (the message names what failed), 2 for a usage
//! error. Progress goes to stderr as `tracing` events (`JEX_PACKAGING_LOG` sets the filter);
//! `verify` prints its findings on stdout.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use jex_packaging::build::{self, BuildInputs};
use jex_packaging::layout;
use jex_packaging::sign::{self, SigningIdentity};
use jex_packaging::verify::{self, RsaSignatureForm};
use jex_packaging::x509::Certificate;
use tracing::{info, warn};
use zeroize::Zeroizing;

#[derive(Debug, Parser)]
#[command(
    name = "jex-packaging",
    version,
    about = "Build, sign and verify the jex-agent macOS package"
)]
enum Command {
    /// Build the unsigned package (byte-reproducible from the same inputs).
    Build(BuildArgs),
    /// Sign a package with an RSA signature and a CMS signature over its TOC checksum.
    Sign(SignArgs),
    /// Verify a signed package's checksums, signatures and certificate chain.
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// The jex-agent executable (arm64 Mach-O).
    #[arg(long)]
    binary: PathBuf,
    /// Package version, e.g. 1.2.3.
    #[arg(long = "version")]
    pkg_version: String,
    /// Configuration example, installed as agent.toml.example (and as agent.toml when absent).
    #[arg(long)]
    config_example: PathBuf,
    /// Output package.
    #[arg(long)]
    out: PathBuf,
    /// Package identifier.
    #[arg(long, default_value = layout::PKG_IDENTIFIER)]
    identifier: String,
    /// Timestamp of every file in the package, unix seconds.
    #[arg(long, env = "SOURCE_DATE_EPOCH", default_value_t = build::DEFAULT_SOURCE_DATE_EPOCH)]
    source_date_epoch: u32,
}

#[derive(Debug, clap::Args)]
struct SignArgs {
    /// Package to sign.
    #[arg(long)]
    pkg: PathBuf,
    /// Signing certificate (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Its RSA private key (PEM, PKCS#8 or PKCS#1).
    #[arg(long)]
    key: PathBuf,
    /// Intermediate (and optionally root) certificates embedded after the signer (PEM).
    #[arg(long)]
    chain: PathBuf,
    /// Output package.
    #[arg(long)]
    out: PathBuf,
    /// CMS signing time, unix seconds (default: now).
    #[arg(long)]
    signing_time: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// Signed package.
    #[arg(long)]
    pkg: PathBuf,
    /// Trusted CA certificate(s) (PEM) the signer must chain to.
    #[arg(long)]
    ca: PathBuf,
    /// Verification time, unix seconds (default: now).
    #[arg(long)]
    at: Option<u64>,
}

#[allow(
    clippy::disallowed_methods,
    reason = "jex-packaging is a build tool outside the agent's crates: its one clock, the default of --at"
)]
fn now() -> anyhow::Result<u64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("system clock is before 1970")?
        .as_secs())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file in the same directory, then renames it.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

fn run_build(args: &BuildArgs) -> anyhow::Result<()> {
    let binary = read(&args.binary)?;
    if !build::is_mach_o(&binary) {
        warn!(
            binary = %args.binary.display(),
            "the binary is not a Mach-O executable: this package cannot run on a Mac"
        );
    }
    let inputs = BuildInputs {
        binary,
        config_example: read(&args.config_example)?,
        version: args.pkg_version.clone(),
        identifier: args.identifier.clone(),
        source_date_epoch: args.source_date_epoch,
    };
    let pkg = build::build_package(&inputs)?;
    write_atomically(&args.out, &pkg)?;
    info!(
        out = %args.out.display(),
        bytes = pkg.len(),
        sha256 = %sha256_hex(&pkg),
        identifier = %args.identifier,
        version = %args.pkg_version,
        "unsigned package written"
    );
    Ok(())
}

fn run_sign(args: &SignArgs) -> anyhow::Result<()> {
    let pkg = read(&args.pkg)?;
    let key_pem = Zeroizing::new(read(&args.key)?);
    let identity = SigningIdentity::from_pem(&read(&args.cert)?, &key_pem, &read(&args.chain)?)?;
    let signing_time = match args.signing_time {
        Some(t) => t,
        None => now()?,
    };
    let signed = sign::sign_package(&pkg, &identity, signing_time)?;
    write_atomically(&args.out, &signed)?;
    info!(
        out = %args.out.display(),
        bytes = signed.len(),
        sha256 = %sha256_hex(&signed),
        signer = %identity.certificate().subject(),
        signing_time,
        "signed package written"
    );
    Ok(())
}

fn run_verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let pkg = read(&args.pkg)?;
    let anchors = Certificate::from_pem_bundle(&read(&args.ca)?, &args.ca.display().to_string())?;
    let at = match args.at {
        Some(t) => t,
        None => now()?,
    };
    let report = verify::verify_package(&pkg, &anchors, at)
        .with_context(|| format!("verification of {} failed", args.pkg.display()))?;
    println!("verified: {}", args.pkg.display());
    if let Some((identifier, version)) = &report.package {
        println!("  package:       {identifier} {version}");
    }
    println!("  chain:         {}", report.chain.join("  <-  "));
    let form = match report.rsa_form {
        RsaSignatureForm::Sha256OverChecksum => "PKCS#1 v1.5 SHA-256 over the TOC checksum",
        RsaSignatureForm::Sha1DigestInfo => "PKCS#1 v1.5 SHA-1 DigestInfo (classic xar)",
    };
    println!("  rsa signature: {form}");
    if let Some(t) = report.signing_time {
        println!("  signing time:  {} (unix {t})", build::creation_time(t));
    }
    for (path, size) in &report.files {
        println!("  ok {size:>10}  {path}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let command = Command::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JEX_PACKAGING_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match &command {
        Command::Build(args) => run_build(args),
        Command::Sign(args) => run_sign(args),
        Command::Verify(args) => run_verify(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
