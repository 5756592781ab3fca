//! Preflight and exit codes, on real files, devices and sockets.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use super::*;
use std::io::ErrorKind;
use std::path::PathBuf;

use crate::config::{ConfigError, Place};
use crate::tls::TlsError;
use jex_erase::EraseError;
use jex_platform::blockdev::BlockDevError;

/// A valid configuration in a temporary directory (a development PKI, loopback port 0),
/// with `extra` appended.
struct Setup {
    dir: tempfile::TempDir,
    pki: crate::pki::DevPkiPaths,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (pki, _) =
            crate::pki::write_dev_pki(&dir.path().join("pki"), "fleet.example", "h-1").unwrap();
        Setup { dir, pki }
    }

    fn text(&self) -> String {
        crate::demo::demo_config(self.dir.path(), &self.pki, 1000)
    }

    fn config(&self, text: &str) -> Config {
        Config::parse(&self.dir.path().join("agent.toml"), text).expect("valid")
    }

    fn target(&self, name: &str, device: &Path) -> String {
        format!(
            "\n[[erase.targets]]\nname = \"{name}\"\nbackend = \"luks2\"\ndevice = \"{}\"\nluks_uuid = \"9f5d0c8e-3a1b-4c2d-8e7f-0a1b2c3d4e5f\"\n",
            device.display()
        )
    }
}

/// The line of `needle` in `text`, 1-based.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect(needle) + 1
}

#[test]
fn a_valid_configuration_passes_and_names_its_host() {
    let s = Setup::new();
    let image = s.dir.path().join("tenant.img");
    std::fs::write(&image, vec![0u8; 1 << 16]).unwrap();
    let found = preflight(&s.config(&(s.text() + &s.target("a", &image)))).unwrap();
    assert_eq!(found.host_id, "h-1");
    assert_eq!(found.listen, ListenCheck::Free);
}

#[test]
fn tls_errors_name_the_file_the_line_and_the_key() {
    let s = Setup::new();
    let text = s.text();
    std::fs::remove_file(&s.pki.agent_key).unwrap();
    let err = preflight(&s.config(&text)).unwrap_err();
    assert_eq!(err.exit_kind(), ExitKind::Usage);
    let message = error_chain(&err);
    assert!(
        message.starts_with(&format!(
            "{}:{}: key `tls.key`: reading {}",
            s.dir.path().join("agent.toml").display(),
            line_of(&text, "key = "),
            s.pki.agent_key.display()
        )),
        "{message}"
    );

    let s = Setup::new();
    std::fs::write(&s.pki.ca_cert, "not a certificate").unwrap();
    let err = preflight(&s.config(&s.text())).unwrap_err();
    assert!(
        error_chain(&err).contains("key `tls.client_ca`: "),
        "{err:?}"
    );

    let s = Setup::new();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&s.pki.agent_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = preflight(&s.config(&s.text())).unwrap_err();
    assert!(error_chain(&err).contains("key `tls.key`: "), "{err:?}");
    assert_eq!(err.exit_kind(), ExitKind::Usage);
}

#[test]
fn erase_targets_are_checked_on_the_host() {
    let s = Setup::new();
    let image = s.dir.path().join("tenant.img");
    std::fs::write(&image, vec![0u8; 1 << 16]).unwrap();

    // Missing.
    let text = s.text() + &s.target("a", &image) + &s.target("b", &s.dir.path().join("nope"));
    let err = check_targets(&s.config(&text)).unwrap_err();
    assert_eq!(err.exit_kind(), ExitKind::Usage);
    let message = error_chain(&err);
    assert!(
        message.ends_with(&format!(
            ":{}: key `erase.targets[1].device`: {} does not exist",
            line_of(&text, "/nope\""),
            s.dir.path().join("nope").display()
        )),
        "{message}"
    );

    // Not a file or a device.
    let text = s.text() + &s.target("a", s.dir.path());
    let err = check_targets(&s.config(&text)).unwrap_err();
    assert_eq!(err.exit_kind(), ExitKind::Usage);
    assert!(
        error_chain(&err).contains("is neither a regular file nor a block device"),
        "{err:?}"
    );

    // The same file through a symlink: both keys and both lines.
    let link = s.dir.path().join("by-id");
    std::os::unix::fs::symlink(&image, &link).unwrap();
    let text = s.text() + &s.target("a", &image) + &s.target("b", &link);
    let err = check_targets(&s.config(&text)).unwrap_err();
    assert_eq!(err.exit_kind(), ExitKind::Usage);
    let message = error_chain(&err);
    assert!(
        message.contains(&format!(
            ":{}: key `erase.targets[1].device`: ",
            line_of(&text, "/by-id\"")
        )) && message.ends_with(&format!(
            "(`erase.targets[0].device` is at line {})",
            line_of(&text, "/tenant.img\"")
        )),
        "{message}"
    );
}

#[test]
fn a_listen_address_in_use_names_its_key_and_exits_69() {
    let s = Setup::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let text = s.text().replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{addr}\""),
        1,
    );
    let err = preflight(&s.config(&text)).unwrap_err();
    assert_eq!(err.exit_kind(), ExitKind::Unavailable);
    let message = error_chain(&err);
    assert!(
        message.contains(&format!(
            ":{}: key `server.listen`: cannot listen on {addr}: ",
            line_of(&text, "listen = ")
        )),
        "{message}"
    );
    drop(taken);
    assert_eq!(
        preflight(&s.config(&text)).unwrap().listen,
        ListenCheck::Free
    );
}

#[test]
fn each_failure_has_its_exit_code() {
    use std::io::Error;
    let place = Place {
        path: PathBuf::from("/etc/jex-agent/agent.toml"),
        line: 3,
    };
    let io = |kind: ErrorKind| Error::from(kind);
    let read = |kind| {
        AppError::Config(ConfigError::Read {
            path: PathBuf::from("/etc/jex-agent/agent.toml"),
            source: io(kind),
        })
    };
    let tls = |kind| AppError::Tls {
        place: place.clone(),
        key: "tls.key",
        source: Box::new(TlsError::Read {
            path: PathBuf::from("/k"),
            source: io(kind),
        }),
    };
    let listen = |kind| AppError::Listen {
        place: place.clone(),
        key: "server.listen",
        addr: "127.0.0.1:7443".parse().unwrap(),
        source: io(kind),
    };
    let target = |problem| AppError::Target {
        place: place.clone(),
        key: "erase.targets[0].device".into(),
        problem: Box::new(problem),
    };
    let cases = [
        (read(ErrorKind::NotFound), ExitKind::Usage),
        (read(ErrorKind::PermissionDenied), ExitKind::NoPermission),
        (tls(ErrorKind::NotFound), ExitKind::Usage),
        (tls(ErrorKind::PermissionDenied), ExitKind::NoPermission),
        (
            target(TargetProblem::Missing { path: "/x".into() }),
            ExitKind::Usage,
        ),
        (
            target(TargetProblem::System {
                path: "/x".into(),
                reason: "it holds /".into(),
            }),
            ExitKind::Usage,
        ),
        (
            target(TargetProblem::Unusable(BlockDevError::Open {
                path: "/x".into(),
                source: io(ErrorKind::PermissionDenied),
            })),
            ExitKind::NoPermission,
        ),
        (listen(ErrorKind::AddrInUse), ExitKind::Unavailable),
        (listen(ErrorKind::PermissionDenied), ExitKind::NoPermission),
        (listen(ErrorKind::AddrNotAvailable), ExitKind::Usage),
        (
            AppError::AgentRunning {
                place: place.clone(),
                key: "metrics.listen",
                addr: "127.0.0.1:7443".parse().unwrap(),
                pid: 1,
            },
            ExitKind::Unavailable,
        ),
        (
            AppError::NeedsRoot {
                command: "erase-plan",
            },
            ExitKind::NoPermission,
        ),
        (
            AppError::Erase(EraseError::Locked { path: "/l".into() }),
            ExitKind::Unavailable,
        ),
        (AppError::Runtime(io(ErrorKind::Other)), ExitKind::OsError),
    ];
    for (err, kind) in cases {
        assert_eq!(err.exit_kind(), kind, "{err:?}");
    }
    assert_eq!(
        [0, 1, 64, 69, 70, 71, 74, 77],
        [
            ExitKind::Ok,
            ExitKind::Failure,
            ExitKind::Usage,
            ExitKind::Unavailable,
            ExitKind::Software,
            ExitKind::OsError,
            ExitKind::IoError,
            ExitKind::NoPermission
        ]
        .map(|k| k as u8)
    );
}
