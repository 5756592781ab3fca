//! The Linux inventory: a host's LUKS2 volumes and local login accounts as an [`Inventory`],
//! so a Linux host runs the same two halves as a Mac (its LUKS2 disks standing in for the
//! internal SSD, `cryptsetup luksErase` and a new `luksFormat` for the device erase).
//!
//! - Volumes: for each configured device, the UUID `cryptsetup luksUUID <device>` prints
//!   (`/usr/sbin/cryptsetup`, [`CRYPTSETUP`]), with role [`VolumeRole::None`], `encrypted` and
//!   `internal` true, the device as physical store and its size in bytes. A fresh `luksFormat`
//!   writes a new UUID, so a device erase shows up as the old UUID gone.
//! - Accounts: [`accounts_from_passwd`] over `/etc/passwd` ([`PASSWD`]).
//! - SIP, FileVault and Activation Lock: `None` (they do not exist on Linux).
//!
//! The command runner is injectable ([`CommandRunner`], from [`crate::run`]) so the parsing is
//! tested without the tool; [`SystemRunner`] runs the real one with a deadline.
//!
//! # Which accounts count
//!
//! A line of `/etc/passwd` is a local login account when its user could hold or reach data:
//! - its uid is 1000 or more (Debian's and most distributions' first regular user), except
//!   65534 (`nobody`); or
//! - whatever its uid, its shell lets someone log in: anything but a shell whose file name is
//!   `nologin`, `false`, `true`, `sync`, `halt` or `shutdown` (which exit or run one fixed
//!   command). An empty shell counts, since login(1) then runs `/bin/sh`.
//!
//! So `root` (uid 0, `/bin/bash`) counts, and the configured allowed list names it; a system
//! account given a real shell (Debian's `postgres` with `/bin/bash`) counts too.
//!
//! Lines that are not accounts are ignored, each for the reason [`parse_passwd`] reports:
//! blank lines and `#` comments, NIS compat entries (`+…`, `-…`: they refer to accounts of a
//! directory service, not local ones), lines with fewer than seven `:`-separated fields, an
//! empty name, or a uid that is not a decimal number. The last three are the lines glibc's own
//! reader rejects, so no one can log in with them. A line with more than seven fields is still
//! an account (its shell is the seventh field): counting too much fails an attestation, which is
//! the safe side.

use std::ffi::OsString;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::inventory::{
    HostIdentity, Inventory, InventoryError, InventorySource, Volume, VolumeRole,
};
pub use crate::run::{CommandOutput, CommandRunner, SystemRunner, TOOL_DEADLINE};
use crate::run::{run_tool, unexpected_output};

/// The cryptsetup binary.
pub const CRYPTSETUP: &str = "/usr/sbin/cryptsetup";

/// The account database.
pub const PASSWD: &str = "/etc/passwd";

/// The first uid of a regular user.
const FIRST_REGULAR_UID: u32 = 1000;

/// `nobody`.
const NOBODY_UID: u32 = 65534;

/// Shells (by file name) that let no one log in.
const NO_LOGIN_SHELLS: &[&str] = &["nologin", "false", "true", "sync", "halt", "shutdown"];

/// The local login accounts of a passwd file, sorted and without duplicates (see the module
/// documentation for which accounts count and which lines are ignored).
pub fn accounts_from_passwd(text: &str) -> Vec<String> {
    parse_passwd(text).accounts
}

/// A parsed passwd file: the accounts that count and the lines ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    /// The local login accounts, sorted, without duplicates.
    pub accounts: Vec<String>,
    /// Lines that are not accounts, with why.
    pub ignored: Vec<IgnoredLine>,
}

/// A line of a passwd file that is not an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredLine {
    /// The line number, from 1.
    pub line: usize,
    /// Why it is not an account.
    pub reason: &'static str,
}

/// Parses a passwd file: which accounts count as local login accounts, and which lines are not
/// accounts at all (module documentation).
pub fn parse_passwd(text: &str) -> Passwd {
    let mut accounts = Vec::new();
    let mut ignored = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut ignore = |reason| {
            ignored.push(IgnoredLine {
                line: i + 1,
                reason,
            })
        };
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            ignore("blank line");
            continue;
        }
        if trimmed.starts_with('#') {
            ignore("comment");
            continue;
        }
        if line.starts_with('+') || line.starts_with('-') {
            ignore("NIS compat entry, not a local account");
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 {
            ignore("fewer than 7 fields");
            continue;
        }
        let name = fields[0];
        if name.is_empty() {
            ignore("empty account name");
            continue;
        }
        let Ok(uid) = fields[2].trim_start().parse::<u32>() else {
            ignore("uid is not a decimal number");
            continue;
        };
        let shell = fields[6];
        let regular = uid >= FIRST_REGULAR_UID && uid != NOBODY_UID;
        if regular || is_login_shell(shell) {
            accounts.push(name.to_owned());
        }
    }
    accounts.sort();
    accounts.dedup();
    Passwd { accounts, ignored }
}

pub(crate) fn is_login_shell(shell: &str) -> bool {
    let name = shell.rsplit('/').next().unwrap_or(shell);
    shell.is_empty() || !NO_LOGIN_SHELLS.contains(&name)
}

/// A LUKS2 device of the host, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuksDevice {
    /// The configured target name (becomes the volume's name).
    pub name: String,
    /// The block device or image file holding the LUKS2 header.
    pub device: PathBuf,
}

/// The Linux [`InventorySource`]. See the module documentation.
#[derive(Debug, Clone)]
pub struct LinuxInventory {
    host: HostIdentity,
    devices: Vec<LuksDevice>,
    passwd: PathBuf,
    cryptsetup: PathBuf,
    runner: Arc<dyn CommandRunner>,
}

impl LinuxInventory {
    /// The inventory of `devices` on `host`, with the real cryptsetup ([`CRYPTSETUP`]) and
    /// `/etc/passwd`.
    pub fn new(host: HostIdentity, devices: Vec<LuksDevice>) -> Self {
        Self {
            host,
            devices,
            passwd: PathBuf::from(PASSWD),
            cryptsetup: PathBuf::from(CRYPTSETUP),
            runner: Arc::new(SystemRunner::default()),
        }
    }

    /// Runs cryptsetup through `runner` instead.
    pub fn with_runner(mut self, runner: Arc<dyn CommandRunner>) -> Self {
        self.runner = runner;
        self
    }

    /// Reads the accounts from `path` instead of `/etc/passwd`.
    pub fn with_passwd(mut self, path: impl Into<PathBuf>) -> Self {
        self.passwd = path.into();
        self
    }

    /// Uses the cryptsetup at `path` instead of [`CRYPTSETUP`].
    pub fn with_cryptsetup(mut self, path: impl Into<PathBuf>) -> Self {
        self.cryptsetup = path.into();
        self
    }

    fn volume(&self, dev: &LuksDevice) -> Result<Volume, InventoryError> {
        let args = [
            OsString::from("luksUUID"),
            dev.device.clone().into_os_string(),
        ];
        let output = run_tool(self.runner.as_ref(), &self.cryptsetup, &args)?;
        let uuid = parse_luks_uuid(&output).ok_or_else(|| {
            unexpected_output(
                &self.cryptsetup,
                &args,
                &output,
                "one UUID (8-4-4-4-12 hexadecimal digits)",
            )
        })?;
        let mut volume = Volume::new(uuid, dev.name.clone(), VolumeRole::None);
        volume.physical_store = Some(dev.device.display().to_string());
        volume.size_bytes = Some(device_size(&dev.device)?);
        volume.encrypted = true;
        volume.internal = true;
        Ok(volume)
    }
}

impl InventorySource for LinuxInventory {
    fn take(&self, taken_unix_ms: u64) -> Result<Inventory, InventoryError> {
        let volumes = self
            .devices
            .iter()
            .map(|d| self.volume(d))
            .collect::<Result<Vec<_>, _>>()?;
        let passwd =
            std::fs::read_to_string(&self.passwd).map_err(|source| InventoryError::Read {
                path: self.passwd.display().to_string(),
                source,
            })?;
        Ok(Inventory::new(
            self.host.clone(),
            taken_unix_ms,
            volumes,
            accounts_from_passwd(&passwd),
        ))
    }
}

/// The UUID in `cryptsetup luksUUID` output: one line holding an 8-4-4-4-12 hexadecimal UUID
/// (surrounding whitespace allowed), lowercased as cryptsetup writes it.
pub fn parse_luks_uuid(stdout: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(stdout).ok()?.trim();
    is_uuid(text).then(|| text.to_ascii_lowercase())
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The size in bytes of a block device or file: the end offset of a read-only open (for a block
/// device the file metadata says 0).
fn device_size(path: &Path) -> Result<u64, InventoryError> {
    let read_err = |source| InventoryError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    file.seek(SeekFrom::End(0)).map_err(read_err)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn counts_regular_uids_and_login_shells_only() {
        let text = "\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
sync:x:4:65534:sync:/bin:/bin/sync
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
svc:x:998:998::/:/bin/false
db:x:101:104::/var/lib/db:/bin/bash
empty-shell:x:500:500:::
alice:x:1000:1000::/home/alice:/bin/bash
locked:x:1001:1001::/home/locked:/usr/sbin/nologin
alice:x:1000:1000::/home/alice:/bin/zsh
extra:x:1002:1002::/home/extra:/bin/sh:more
";
        assert_eq!(
            accounts_from_passwd(text),
            ["alice", "db", "empty-shell", "extra", "locked", "root"]
        );
        assert!(parse_passwd(text).ignored.is_empty());
    }

    #[test]
    fn ignores_lines_that_are_not_accounts_and_says_why() {
        let text = "\
# a comment
   
+::::::
-bob::::::
short:x:1000:1000
:x:1003:1003::/home/x:/bin/bash
mallory:x:abc:1000::/home/m:/bin/bash
mallory2:x::1000::/home/m:/bin/bash
carol:x: 1004:1004::/home/c:/bin/bash
";
        let parsed = parse_passwd(text);
        assert_eq!(parsed.accounts, ["carol"]);
        let reasons: Vec<(usize, &str)> =
            parsed.ignored.iter().map(|i| (i.line, i.reason)).collect();
        assert_eq!(
            reasons,
            [
                (1, "comment"),
                (2, "blank line"),
                (3, "NIS compat entry, not a local account"),
                (4, "NIS compat entry, not a local account"),
                (5, "fewer than 7 fields"),
                (6, "empty account name"),
                (7, "uid is not a decimal number"),
                (8, "uid is not a decimal number"),
            ]
        );
    }

    #[test]
    fn parses_the_uuid_luksuuid_prints_and_nothing_else() {
        assert_eq!(
            parse_luks_uuid(b"111374da-f7d5-40df-9097-26f7f1ed2a29\n").as_deref(),
            Some("111374da-f7d5-40df-9097-26f7f1ed2a29")
        );
        assert_eq!(
            parse_luks_uuid(b"  111374DA-F7D5-40DF-9097-26F7F1ED2A29  ").as_deref(),
            Some("111374da-f7d5-40df-9097-26f7f1ed2a29")
        );
        for bad in [
            &b""[..],
            b"\n",
            b"111374da-f7d5-40df-9097-26f7f1ed2a2",
            b"111374da-f7d5-40df-9097-26f7f1ed2a29\n111374da-f7d5-40df-9097-26f7f1ed2a29",
            b"111374daxf7d5-40df-9097-26f7f1ed2a29",
            b"g11374da-f7d5-40df-9097-26f7f1ed2a29",
            b"\xff11374da-f7d5-40df-9097-26f7f1ed2a29",
        ] {
            assert_eq!(parse_luks_uuid(bad), None, "{bad:?}");
        }
    }

    /// A runner that answers from a table and records what it was asked.
    #[derive(Debug, Default)]
    struct Fake {
        answers: Vec<(String, std::io::Result<CommandOutput>)>,
        calls: Mutex<Vec<String>>,
    }

    impl Fake {
        fn answer(mut self, device: &str, code: Option<i32>, out: &str, err: &str) -> Self {
            self.answers.push((
                device.to_owned(),
                Ok(CommandOutput {
                    code,
                    stdout: out.as_bytes().to_vec(),
                    stderr: err.as_bytes().to_vec(),
                }),
            ));
            self
        }
    }

    impl CommandRunner for Fake {
        fn run(&self, program: &Path, args: &[OsString]) -> std::io::Result<CommandOutput> {
            let line = crate::run::command_line(program, args);
            self.calls.lock().unwrap().push(line.clone());
            for (device, answer) in &self.answers {
                if line.ends_with(device.as_str()) {
                    return match answer {
                        Ok(o) => Ok(o.clone()),
                        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                    };
                }
            }
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no answer",
            ))
        }
    }

    fn host() -> HostIdentity {
        HostIdentity {
            host_id: "h-1".into(),
            hardware_uuid: "hw".into(),
            serial_number: "sn".into(),
        }
    }

    #[test]
    fn builds_the_inventory_from_cryptsetup_output_and_passwd() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        std::fs::write(&a, vec![0u8; 4096]).unwrap();
        std::fs::write(&b, vec![0u8; 8192]).unwrap();
        let passwd = dir.path().join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0::/root:/bin/bash\nu:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        let fake = Arc::new(
            Fake::default()
                .answer(
                    &b.display().to_string(),
                    Some(0),
                    "0aaaaaaa-f7d5-40df-9097-26f7f1ed2a29\n",
                    "",
                )
                .answer(
                    &a.display().to_string(),
                    Some(0),
                    "ffffffff-f7d5-40df-9097-26f7f1ed2a29\n",
                    "",
                ),
        );
        let source = LinuxInventory::new(
            host(),
            vec![
                LuksDevice {
                    name: "tenant-a".into(),
                    device: a.clone(),
                },
                LuksDevice {
                    name: "tenant-b".into(),
                    device: b.clone(),
                },
            ],
        )
        .with_runner(fake.clone())
        .with_passwd(&passwd);
        let inv = source.take(42).unwrap();
        assert_eq!(
            *fake.calls.lock().unwrap(),
            [
                format!("/usr/sbin/cryptsetup luksUUID {}", a.display()),
                format!("/usr/sbin/cryptsetup luksUUID {}", b.display()),
            ]
        );
        assert_eq!(inv.taken_unix_ms, 42);
        assert_eq!(inv.accounts, ["root", "u"]);
        assert_eq!(
            (
                inv.sip_enabled,
                inv.filevault_on,
                inv.activation_lock_enabled
            ),
            (None, None, None)
        );
        // Sorted by UUID, not by config order.
        let got: Vec<_> = inv
            .volumes
            .iter()
            .map(|v| (v.uuid.as_str(), v.name.as_str(), v.size_bytes))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "0aaaaaaa-f7d5-40df-9097-26f7f1ed2a29",
                    "tenant-b",
                    Some(8192)
                ),
                (
                    "ffffffff-f7d5-40df-9097-26f7f1ed2a29",
                    "tenant-a",
                    Some(4096)
                ),
            ]
        );
        let v = &inv.volumes[0];
        assert_eq!(v.role, VolumeRole::None);
        assert!(v.encrypted && v.internal);
        assert_eq!(
            v.physical_store.as_deref(),
            Some(b.display().to_string().as_str())
        );
        assert_eq!(
            (v.container_uuid.as_ref(), v.sealed, v.created_unix_ms),
            (None, None, None)
        );
    }

    #[test]
    fn reports_a_failing_tool_a_bad_output_and_a_missing_passwd() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("d.img");
        std::fs::write(&dev, b"x").unwrap();
        let shown = dev.display().to_string();
        let device = vec![LuksDevice {
            name: "t".into(),
            device: dev.clone(),
        }];
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "").unwrap();

        let failing = Arc::new(Fake::default().answer(
            &shown,
            Some(1),
            "",
            &format!("Device {shown} is not a valid LUKS device.\n"),
        ));
        let err = LinuxInventory::new(host(), device.clone())
            .with_runner(failing)
            .with_passwd(&passwd)
            .take(1)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "/usr/sbin/cryptsetup luksUUID {shown} exited with exit code 1: Device {shown} is not a valid LUKS device."
            )
        );

        let garbage = Arc::new(Fake::default().answer(&shown, Some(0), "hello\n", ""));
        let err = LinuxInventory::new(host(), device.clone())
            .with_runner(garbage)
            .with_passwd(&passwd)
            .take(1)
            .unwrap_err();
        assert!(
            matches!(&err, InventoryError::ToolOutput { output, .. } if output == "hello"),
            "{err:?}"
        );

        let err = LinuxInventory::new(host(), device.clone())
            .with_runner(Arc::new(Fake::default()))
            .with_cryptsetup("/nonexistent/cryptsetup")
            .take(1)
            .unwrap_err();
        assert!(
            matches!(&err, InventoryError::Run { program, .. } if program == "/nonexistent/cryptsetup"),
            "{err:?}"
        );

        let ok = Arc::new(Fake::default().answer(
            &shown,
            Some(0),
            "0aaaaaaa-f7d5-40df-9097-26f7f1ed2a29",
            "",
        ));
        let err = LinuxInventory::new(host(), device)
            .with_runner(ok)
            .with_passwd(dir.path().join("missing"))
            .take(1)
            .unwrap_err();
        assert!(matches!(err, InventoryError::Read { .. }), "{err:?}");
    }
}
