//! `jex-agent diag capture DIR`: writes the raw output of every system tool whose output the
//! agent reads, or will read, on this platform, with a `README.md` of provenance (when, on what
//! machine and OS, which command, its exit status), so that bringing up a fleet produces the
//! test fixtures the parsers are checked against. On a Mac that is the storage inventory of a
//! device erase (`diskutil`, `csrutil`, `fdesetup`, `system_profiler`, the local accounts) and
//! the telemetry sources; on Linux the inventory's `cryptsetup` and block devices.
//!
//! The tools run by fixed absolute path (on a Mac, the sealed system volume's), one at a time,
//! each with a deadline, with a cleared environment. Nothing is sent anywhere. The output holds
//! hardware identifiers (serial numbers, UUIDs): the README says to scrub them before a
//! capture is published, and by which names.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jex_platform::Os;
use jex_reclaim::macos::{CSRUTIL, DISKUTIL, DSCL, DSCL_USERS_ARGS, FDESETUP, SYSTEM_PROFILER};

/// One tool run of a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capture {
    /// The file stem of its output (`<name>.out`, `<name>.err`).
    pub name: &'static str,
    /// The program, by absolute path.
    pub program: &'static str,
    /// Its arguments.
    pub args: &'static [&'static str],
    /// What reads it.
    pub read_by: &'static str,
}

/// How long one tool may run.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// What a Mac captures.
pub const MACOS: &[Capture] = &[
    Capture {
        name: "sw_vers",
        program: "/usr/bin/sw_vers",
        args: &[],
        read_by: "provenance: the macOS version",
    },
    Capture {
        name: "diskutil-apfs-list-plist",
        program: DISKUTIL,
        args: &["apfs", "list", "-plist"],
        read_by: "the device erase's inventory: containers, volume groups, volumes, roles, physical stores",
    },
    Capture {
        name: "diskutil-list-plist",
        program: DISKUTIL,
        args: &["list", "-plist"],
        read_by: "the device erase's inventory: whole disks and partitions",
    },
    Capture {
        name: "diskutil-info-plist-root",
        program: DISKUTIL,
        args: &["info", "-plist", "/"],
        read_by: "the device erase's inventory: the booted System volume (sealed)",
    },
    Capture {
        name: "diskutil-info-plist-data",
        program: DISKUTIL,
        args: &["info", "-plist", "/System/Volumes/Data"],
        read_by: "the device erase's inventory: the booted Data volume",
    },
    Capture {
        name: "diskutil-info-plist-disk0s2",
        program: DISKUTIL,
        args: &["info", "-plist", "disk0s2"],
        read_by: "the device erase's inventory: whether the boot container's physical store is internal",
    },
    Capture {
        name: "csrutil-status",
        program: CSRUTIL,
        args: &["status"],
        read_by: "the attestation's sip_enabled line",
    },
    Capture {
        name: "fdesetup-status",
        program: FDESETUP,
        args: &["status"],
        read_by: "the inventory's FileVault state",
    },
    Capture {
        name: "system_profiler-SPHardwareDataType-json",
        program: SYSTEM_PROFILER,
        args: &["SPHardwareDataType", "-json"],
        read_by: "the attestation's activation_lock_off line",
    },
    Capture {
        name: "system_profiler-SPHardwareDataType-xml",
        program: SYSTEM_PROFILER,
        args: &["SPHardwareDataType", "-xml"],
        read_by: "the same report in XML, for comparison with the JSON the agent reads",
    },
    Capture {
        name: "dscl-users-plist",
        program: DSCL,
        args: DSCL_USERS_ARGS,
        read_by: "the attestation's accounts_allowed line",
    },
    Capture {
        name: "dscl-users-uniqueid",
        program: DSCL,
        args: &[".", "-list", "/Users", "UniqueID"],
        read_by: "the same accounts as text, for comparison",
    },
    Capture {
        name: "ioreg-platform-expert",
        program: "/usr/sbin/ioreg",
        args: &["-rd1", "-c", "IOPlatformExpertDevice"],
        read_by: "the host identity (hardware UUID, serial)",
    },
    Capture {
        name: "sysctl-hw",
        program: "/usr/sbin/sysctl",
        args: &["hw", "kern.osproductversion", "vm.swapusage"],
        read_by: "telemetry: core clusters (hw.perflevel*), memory, swap",
    },
    Capture {
        name: "vm_stat",
        program: "/usr/bin/vm_stat",
        args: &[],
        read_by: "telemetry: the memory classes",
    },
];

/// What a Linux host captures.
pub const LINUX: &[Capture] = &[
    Capture {
        name: "uname",
        program: "/usr/bin/uname",
        args: &["-a"],
        read_by: "provenance: the kernel",
    },
    Capture {
        name: "os-release",
        program: "/usr/bin/cat",
        args: &["/etc/os-release"],
        read_by: "provenance: the distribution",
    },
    Capture {
        name: "lsblk",
        program: "/usr/bin/lsblk",
        args: &[
            "--json",
            "--output",
            "NAME,TYPE,SIZE,FSTYPE,UUID,MOUNTPOINT",
        ],
        read_by: "the device erase's inventory: block devices and their UUIDs",
    },
    Capture {
        name: "cryptsetup-version",
        program: "/usr/sbin/cryptsetup",
        args: &["--version"],
        read_by: "the luks2 backend and the Linux inventory",
    },
];

/// The captures of `os`.
pub fn captures_for(os: Os) -> &'static [Capture] {
    match os {
        Os::MacOs => MACOS,
        Os::Linux | Os::Other => LINUX,
    }
}

/// How one capture went.
#[derive(Debug)]
pub struct Captured {
    /// The capture.
    pub capture: Capture,
    /// Its exit status, or why it did not run.
    pub result: Result<String, String>,
    /// Bytes of stdout written.
    pub stdout_bytes: usize,
}

/// Why a capture could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    /// The directory exists and is not empty: a capture never overwrites another.
    #[error("{} exists and is not empty: name a new directory", .0.display())]
    NotEmpty(PathBuf),
    /// Writing failed.
    #[error("writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs every capture of `captures` into `dir` (created 0700; it must not exist or be empty)
/// and writes its `README.md`. A tool that cannot run is recorded, not fatal.
pub fn capture(dir: &Path, captures: &[Capture]) -> Result<Vec<Captured>, DiagError> {
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| DiagError::Write { path, source }
    };
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(DiagError::NotEmpty(dir.to_owned()));
    }
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write_err(dir))?;
    }
    let mut done = Vec::with_capacity(captures.len());
    for capture in captures {
        let ran = jex_platform::process::run(Path::new(capture.program), capture.args, DEADLINE);
        let (result, stdout_bytes) = match ran {
            Ok(output) => {
                for (ext, bytes) in [("out", &output.stdout), ("err", &output.stderr)] {
                    let path = dir.join(format!("{}.{ext}", capture.name));
                    write_private(&path, bytes).map_err(write_err(&path))?;
                }
                (Ok(output.status.to_string()), output.stdout.len())
            }
            Err(err) => (Err(jex_platform::error_chain(&err)), 0),
        };
        done.push(Captured {
            capture: *capture,
            result,
            stdout_bytes,
        });
    }
    let readme = dir.join("README.md");
    write_private(&readme, readme_text(&done).as_bytes()).map_err(write_err(&readme))?;
    Ok(done)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The provenance of a capture, as the fixture folders' READMEs want it.
pub fn readme_text(done: &[Captured]) -> String {
    let now = jex_attest::clock::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "# Tool outputs captured by jex-agent {}",
        crate::AGENT_VERSION
    );
    let _ = writeln!(text);
    let _ = writeln!(text, "- captured: {now} (UTC), by `jex-agent diag capture`");
    let _ = writeln!(
        text,
        "- machine and OS: see `sw_vers.out`, `sysctl-hw.out` and `ioreg-platform-expert.out` on a Mac, `uname.out` and `os-release.out` on Linux"
    );
    let _ = writeln!(
        text,
        "- each file is the tool's whole output, unedited: `<name>.out` its stdout, `<name>.err` its stderr"
    );
    let _ = writeln!(
        text,
        "- **before publishing**: these files hold hardware identifiers (serial numbers, hardware and volume UUIDs) and account names; replace them consistently (the same stand-in for the same value) and say so here, so the capture stays a real one, marked *edited*"
    );
    let _ = writeln!(text);
    let _ = writeln!(text, "| file | command | result | stdout bytes | read by |");
    let _ = writeln!(text, "|---|---|---|---:|---|");
    for c in done {
        let command = std::iter::once(c.capture.program)
            .chain(c.capture.args.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let result = match &c.result {
            Ok(status) => status.clone(),
            Err(why) => format!("did not run: {why}"),
        };
        let _ = writeln!(
            text,
            "| `{}.out` | `{command}` | {result} | {} | {} |",
            c.capture.name, c.stdout_bytes, c.capture.read_by
        );
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_capture_writes_every_output_and_its_provenance_privately() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("capture");
        let captures = [
            Capture {
                name: "echo",
                program: "/bin/echo",
                args: &["diskutil", "says", "hello"],
                read_by: "this test",
            },
            Capture {
                name: "fails",
                program: "/bin/sh",
                args: &["-c", "echo oops >&2; exit 3"],
                read_by: "this test",
            },
            Capture {
                name: "missing",
                program: "/nonexistent/tool",
                args: &[],
                read_by: "this test",
            },
        ];
        let done = capture(&dir, &captures).unwrap();
        assert_eq!(done.len(), 3);
        assert_eq!(
            std::fs::read_to_string(dir.join("echo.out")).unwrap(),
            "diskutil says hello\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("fails.err")).unwrap(),
            "oops\n"
        );
        assert!(!dir.join("missing.out").exists());
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        assert!(
            readme
                .contains("| `echo.out` | `/bin/echo diskutil says hello` | exit status: 0 | 20 |"),
            "{readme}"
        );
        assert!(readme.contains("exit status: 3"), "{readme}");
        assert!(
            readme.contains("did not run: starting the program"),
            "{readme}"
        );
        assert!(readme.contains("before publishing"), "{readme}");
        for file in ["echo.out", "README.md"] {
            let mode = std::fs::metadata(dir.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Never over another capture.
        assert!(matches!(
            capture(&dir, &captures),
            Err(DiagError::NotEmpty(_))
        ));
    }

    #[test]
    fn every_tool_is_named_by_absolute_path_once() {
        for list in [MACOS, LINUX] {
            let mut names = std::collections::BTreeSet::new();
            for c in list {
                assert!(Path::new(c.program).is_absolute(), "{c:?}");
                assert!(names.insert(c.name), "{} twice", c.name);
            }
        }
        assert!(MACOS.iter().any(|c| c.args == ["apfs", "list", "-plist"]));
        assert_eq!(captures_for(Os::MacOs), MACOS);
        assert_eq!(captures_for(Os::Linux), LINUX);
    }
}
