//! Build facts for `jex-agent --version`, `GetHost.agent_build` and the build-info metric: the
//! commit, the target triple, the build date and the compiler, handed to the crate as
//! environment variables (`JEX_BUILD_*`, read with `env!`).
//!
//! Reproducible by construction: the date is `SOURCE_DATE_EPOCH` when set (the packaging sets
//! it), else the HEAD commit's time, never the clock, so the same commit and compiler give the
//! same bytes. `JEX_BUILD_COMMIT` overrides the commit (a build from a source tarball); without
//! git and without it, commit and date are `unknown`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-env-changed=JEX_BUILD_COMMIT");
    // HEAD moves with every commit: watch it, the branch it names and the packed refs.
    for dir in ["--git-dir", "--git-common-dir"]
        .iter()
        .filter_map(|flag| git(&["rev-parse", flag]))
    {
        let dir = PathBuf::from(dir);
        println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("packed-refs").display()
        );
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={}", dir.join(branch).display());
        }
    }

    let commit = std::env::var("JEX_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .or_else(|| git(&["log", "-1", "--format=%ct"]).and_then(|s| s.parse().ok()));
    let date = epoch.map_or_else(|| "unknown".to_owned(), civil_date);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let rustc = Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned());

    println!("cargo:rustc-env=JEX_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=JEX_BUILD_DATE={date}");
    println!("cargo:rustc-env=JEX_BUILD_RUSTC={rustc}");
    println!("cargo:rustc-env=JEX_BUILD_TARGET={target}");
}

/// `git args…` in the crate's directory, trimmed stdout, `None` on any failure.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env_dir())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn env_dir() -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".to_owned()))
}

/// `YYYY-MM-DD` (UTC) of Unix time `secs` (Howard Hinnant's days-to-civil).
fn civil_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}
