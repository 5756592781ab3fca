//! Helpers shared by the integration tests: a throwaway PKI made with the `openssl` CLI, package
//! builds through the library, and extraction with the system's `gunzip` and `cpio`.
//!
//! A missing tool fails the test that needs it (CI installs `libarchive-tools cpio openssl
//! shellcheck`).

#![allow(clippy::expect_used)] // test code: a failed expectation is a failed test
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use jex_packaging::build::{self, BuildInputs};
use jex_packaging::xar::XarArchive;

/// Runs `program` with `args` in `dir`; panics naming the tool when it is not installed.
pub fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed to run this test: {e}"))
}

/// Like [`run`], and asserts success.
pub fn run_ok(dir: &Path, program: &str, args: &[&str]) -> Output {
    let out = run(dir, program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A root CA, an intermediate CA and an RSA-2048 signer (extendedKeyUsage codeSigning), plus an
/// unrelated root CA with the same name (`other.pem`), valid for 30 days.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

const EXTENSIONS: &str = "\
[ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
subjectKeyIdentifier = hash\n\
[leaf]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
extendedKeyUsage = codeSigning\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n\
[leaf_no_eku]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n";

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("ext.cnf"), EXTENSIONS).expect("ext");
        for (name, subject) in [
            ("root", "/CN=Pkg Test Root CA"),
            ("other", "/CN=Pkg Test Root CA"),
        ] {
            run_ok(
                d,
                "openssl",
                &["genrsa", "-out", &format!("{name}.key"), "2048"],
            );
            run_ok(
                d,
                "openssl",
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-key",
                    &format!("{name}.key"),
                    "-sha256",
                    "-days",
                    "30",
                    "-subj",
                    subject,
                    "-config",
                    "ext.cnf",
                    "-extensions",
                    "ca",
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        }
        let pki = Self { dir };
        pki.issue("inter", "root", "/CN=Pkg Test Installer CA", "ca", "2");
        pki.issue(
            "signer",
            "inter",
            "/CN=Pkg Test Installer Signer",
            "leaf",
            "3",
        );
        pki
    }

    /// Makes `<name>.key` and `<name>.pem`, issued by `<issuer>.pem` with the extension section
    /// `ext` (`ca`, `leaf` with codeSigning, or `leaf_no_eku`), valid for 30 days.
    pub fn issue(&self, name: &str, issuer: &str, subject: &str, ext: &str, serial: &str) {
        let d = self.dir.path();
        run_ok(
            d,
            "openssl",
            &["genrsa", "-out", &format!("{name}.key"), "2048"],
        );
        run_ok(
            d,
            "openssl",
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
        );
        run_ok(
            d,
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{issuer}.pem"),
                "-CAkey",
                &format!("{issuer}.key"),
                "-set_serial",
                serial,
                "-sha256",
                "-days",
                "30",
                "-extfile",
                "ext.cnf",
                "-extensions",
                ext,
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Inputs with a fake agent (a bash script logging its arguments to `$FAKE_LOG` and exiting with
/// `$FAKE_CHECK_CONFIG_STATUS`) and a small configuration example.
pub fn fake_inputs(example: &str) -> BuildInputs {
    BuildInputs {
        binary: b"#!/bin/bash\necho \"jex-agent $*\" >>\"${FAKE_LOG:?}\"\nexit \"${FAKE_CHECK_CONFIG_STATUS:-0}\"\n"
            .to_vec(),
        config_example: example.as_bytes().to_vec(),
        version: "1.2.3".to_owned(),
        identifier: "com.jexcloud.agent".to_owned(),
        source_date_epoch: build::DEFAULT_SOURCE_DATE_EPOCH,
    }
}

/// The archived bytes of `path` inside the package.
pub fn member(pkg: &[u8], path: &str) -> Vec<u8> {
    let archive = XarArchive::parse(pkg).expect("parse package");
    let entry = archive
        .entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} not in package"));
    archive.archived_data(entry).expect("data").to_vec()
}

/// Extracts a gzip'd cpio member of the package into `dest` with `gunzip` and `cpio -i`,
/// replacing existing files as Installer does.
pub fn extract_cpio_gz(pkg: &[u8], member_path: &str, dest: &Path) {
    std::fs::create_dir_all(dest).expect("dest");
    let work = tempfile::tempdir().expect("tempdir");
    let gz = work.path().join("member.gz");
    std::fs::write(&gz, member(pkg, member_path)).expect("write");
    run_ok(work.path(), "gunzip", &[gz.to_str().expect("utf-8")]);
    let cpio = work.path().join("member");
    run_ok(
        dest,
        "cpio",
        &[
            "-i",
            "-d",
            "-m",
            "-u",
            "--quiet",
            "-F",
            cpio.to_str().expect("utf-8"),
        ],
    );
}
