//! End-to-end tests of the `jex-packaging` binary: build, sign and verify, cross-checked with
//! independent readers (`bsdtar`, `gunzip` + `cpio`, `openssl`).

#![allow(clippy::expect_used)] // test code: a failed expectation is a failed test

mod common;

use std::path::Path;
use std::process::Output;

use common::{Pki, run, run_ok};
use jex_packaging::layout;
use jex_packaging::xar::{SignatureStyle, XarArchive};

const EXAMPLE: &str = "# example configuration\n[server]\nlisten = \"0.0.0.0:7443\"\n";

fn cli(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_jex-packaging"))
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .expect("run jex-packaging")
}

fn cli_ok(args: &[&str]) -> Output {
    let out = cli(args);
    assert!(
        out.status.success(),
        "jex-packaging {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

struct Built {
    dir: tempfile::TempDir,
    pki: Pki,
}

impl Built {
    /// Builds `unsigned.pkg` and signs it into `signed.pkg` through the CLI.
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("jex-agent"), b"#!/bin/sh\necho agent\n").expect("binary");
        std::fs::write(d.join("agent.toml.example"), EXAMPLE).expect("example");
        cli_ok(&[
            "build",
            "--binary",
            s(&d.join("jex-agent")),
            "--version",
            "1.2.3",
            "--config-example",
            s(&d.join("agent.toml.example")),
            "--out",
            s(&d.join("unsigned.pkg")),
        ]);
        let pki = Pki::new();
        cli_ok(&[
            "sign",
            "--pkg",
            s(&d.join("unsigned.pkg")),
            "--cert",
            s(&pki.path("signer.pem")),
            "--key",
            s(&pki.path("signer.key")),
            "--chain",
            s(&pki.path("inter.pem")),
            "--out",
            s(&d.join("signed.pkg")),
        ]);
        Self { dir, pki }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("read")
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

#[test]
fn build_is_byte_reproducible() {
    let built = Built::new();
    let d = built.dir.path();
    cli_ok(&[
        "build",
        "--binary",
        s(&d.join("jex-agent")),
        "--version",
        "1.2.3",
        "--config-example",
        s(&d.join("agent.toml.example")),
        "--out",
        s(&d.join("again.pkg")),
    ]);
    assert_eq!(
        sha256(&built.read("unsigned.pkg")),
        sha256(&built.read("again.pkg"))
    );
}

#[test]
fn signed_package_verifies_and_reports_the_chain() {
    let built = Built::new();
    let out = cli_ok(&[
        "verify",
        "--pkg",
        s(&built.path("signed.pkg")),
        "--ca",
        s(&built.pki.path("root.pem")),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("com.jexcloud.agent 1.2.3"), "{stdout}");
    assert!(stdout.contains("Pkg Test Installer Signer"), "{stdout}");
    assert!(stdout.contains("jex-agent.pkg/Payload"), "{stdout}");
}

#[test]
fn verify_fails_with_a_clear_message_for_tampering_a_wrong_ca_or_no_signature() {
    let built = Built::new();
    let mut tampered = built.read("signed.pkg");
    let last = tampered.len() - 10;
    tampered[last] ^= 0x01;
    std::fs::write(built.path("tampered.pkg"), tampered).expect("write");
    for (pkg, ca, needle) in [
        ("tampered.pkg", "root.pem", "archived-checksum mismatch"),
        ("signed.pkg", "other.pem", "certificate chain not trusted"),
        ("unsigned.pkg", "root.pem", "not signed"),
    ] {
        let out = cli(&[
            "verify",
            "--pkg",
            s(&built.path(pkg)),
            "--ca",
            s(&built.pki.path(ca)),
        ]);
        assert!(!out.status.success(), "{pkg} with {ca} verified");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("verification of"), "{stderr}");
        assert!(stderr.contains(needle), "{pkg}/{ca}: {stderr}");
    }
}

#[test]
fn verify_refuses_a_signer_without_code_signing_and_says_what_to_fix() {
    let built = Built::new();
    let pki = &built.pki;
    pki.issue(
        "plain",
        "inter",
        "/CN=Pkg Test Plain Signer",
        "leaf_no_eku",
        "4",
    );
    cli_ok(&[
        "sign",
        "--pkg",
        s(&built.path("unsigned.pkg")),
        "--cert",
        s(&pki.path("plain.pem")),
        "--key",
        s(&pki.path("plain.key")),
        "--chain",
        s(&pki.path("inter.pem")),
        "--out",
        s(&built.path("plain.pkg")),
    ]);
    let out = cli(&[
        "verify",
        "--pkg",
        s(&built.path("plain.pkg")),
        "--ca",
        s(&pki.path("root.pem")),
    ]);
    assert!(
        !out.status.success(),
        "a signer without codeSigning verified"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not allow code signing (extendedKeyUsage lacks codeSigning)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("issue it with extendedKeyUsage = codeSigning"),
        "{stderr}"
    );
}

#[test]
fn bsdtar_lists_the_signed_package() {
    let built = Built::new();
    let out = run_ok(built.dir.path(), "bsdtar", &["-tf", "signed.pkg"]);
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "Distribution",
            "jex-agent.pkg",
            "jex-agent.pkg/Bom",
            "jex-agent.pkg/PackageInfo",
            "jex-agent.pkg/Payload",
            "jex-agent.pkg/Scripts",
        ]
    );
    // bsdtar also extracts it, checking each file against its TOC checksums: a changed byte in
    // the last file (Scripts) is a "Sumcheck error".
    let dest = built.path("x");
    std::fs::create_dir(&dest).expect("dir");
    run_ok(&dest, "bsdtar", &["-xf", s(&built.path("signed.pkg"))]);
    assert!(dest.join("jex-agent.pkg/Payload").is_file());
    let mut tampered = built.read("signed.pkg");
    let last = tampered.len() - 10;
    tampered[last] ^= 0x01;
    std::fs::write(built.path("tampered.pkg"), tampered).expect("write");
    let out = run(&dest, "bsdtar", &["-xf", s(&built.path("tampered.pkg"))]);
    assert!(!out.status.success(), "bsdtar extracted a tampered package");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Sumcheck"));
}

#[test]
fn cpio_extracts_the_payload_with_the_input_files() {
    let built = Built::new();
    let pkg = built.read("signed.pkg");
    let root = built.path("root");
    common::extract_cpio_gz(&pkg, "jex-agent.pkg/Payload", &root);
    let installed = |abs: &str| root.join(abs.trim_start_matches('/'));
    assert_eq!(
        std::fs::read(installed(layout::AGENT_BINARY)).expect("binary"),
        built.read("jex-agent")
    );
    assert_eq!(
        std::fs::read(installed(layout::CONFIG_EXAMPLE_PATH)).expect("example"),
        EXAMPLE.as_bytes()
    );
    assert_eq!(
        std::fs::read(installed(layout::PLIST_PATH)).expect("plist"),
        jex_packaging::launchd::PLIST_BYTES
    );
    assert_eq!(
        std::fs::read(installed(layout::NEWSYSLOG_CONF_PATH)).expect("conf"),
        jex_packaging::newsyslog::CONF_BYTES
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |abs: &str| {
        std::fs::metadata(installed(abs))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode(layout::AGENT_BINARY), 0o755);
    assert_eq!(mode(layout::UNINSTALL_SCRIPT), 0o755);
    assert_eq!(mode(layout::PLIST_PATH), 0o644);
    let scripts = built.path("scripts");
    common::extract_cpio_gz(&pkg, "jex-agent.pkg/Scripts", &scripts);
    assert_eq!(
        std::fs::read(scripts.join("postinstall")).expect("postinstall"),
        jex_packaging::build::POSTINSTALL
    );
    assert_eq!(mode_of(&scripts.join("preinstall")), 0o755);
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn openssl_verifies_both_signatures_over_the_toc_checksum() {
    let built = Built::new();
    let pkg = built.read("signed.pkg");
    let archive = XarArchive::parse(&pkg).expect("parse");
    let d = built.dir.path();
    std::fs::write(
        d.join("checksum.bin"),
        archive.stored_checksum().expect("checksum"),
    )
    .expect("checksum");
    let cms = archive.signature(SignatureStyle::Cms).expect("cms");
    std::fs::write(
        d.join("cms.der"),
        archive.heap(cms.offset, cms.size, "cms").expect("cms"),
    )
    .expect("cms");
    let rsa = archive.signature(SignatureStyle::Rsa).expect("rsa");
    std::fs::write(
        d.join("rsa.sig"),
        archive.heap(rsa.offset, rsa.size, "rsa").expect("rsa"),
    )
    .expect("rsa");
    std::fs::write(d.join("wrong.bin"), [0u8; 20]).expect("wrong");

    let cms_verify = |content: &str| {
        run(
            d,
            "openssl",
            &[
                "cms",
                "-verify",
                "-binary",
                "-inform",
                "DER",
                "-in",
                "cms.der",
                "-content",
                content,
                "-CAfile",
                s(&built.pki.path("root.pem")),
                "-purpose",
                "any",
                "-out",
                "/dev/null",
            ],
        )
    };
    let ok = cms_verify("checksum.bin");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        !cms_verify("wrong.bin").status.success(),
        "openssl accepted a wrong checksum"
    );

    run_ok(
        d,
        "openssl",
        &[
            "x509",
            "-in",
            s(&built.pki.path("signer.pem")),
            "-pubkey",
            "-noout",
            "-out",
            "pub.pem",
        ],
    );
    let rsa_verify = |content: &str| {
        run(
            d,
            "openssl",
            &[
                "dgst",
                "-sha256",
                "-verify",
                "pub.pem",
                "-signature",
                "rsa.sig",
                content,
            ],
        )
    };
    let ok = rsa_verify("checksum.bin");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(!rsa_verify("wrong.bin").status.success());
}

#[test]
fn sign_refuses_a_key_that_is_not_the_certificates() {
    let built = Built::new();
    let out = cli(&[
        "sign",
        "--pkg",
        s(&built.path("unsigned.pkg")),
        "--cert",
        s(&built.pki.path("signer.pem")),
        "--key",
        s(&built.pki.path("inter.key")),
        "--chain",
        s(&built.pki.path("inter.pem")),
        "--out",
        s(&built.path("bad.pkg")),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not match"), "{stderr}");
    assert!(!built.path("bad.pkg").exists());
}
