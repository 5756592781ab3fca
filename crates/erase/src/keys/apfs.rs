//! The `apfs-volume` key-destruction backend (macOS): an APFS volume, pinned by its volume
//! UUID, deleted with `diskutil apfs deleteVolume <UUID>`.
//!
//! On Apple silicon and T2 Macs every APFS volume is encrypted by the Secure Enclave's inline
//! AES engine with a volume key of its own, wrapped by hardware keys; deleting the volume
//! discards its wrapped key along with its metadata. Apple does not document
//! `deleteVolume` as a crypto erase, so the certificate records exactly what was done
//! (method, volume, its encryption flags) and the overwrite/verification steps of the erase
//! carry the rest of the proof.
//!
//! Safety rails, checked by `check_identity` and again by `destroy` right before deleting:
//! - a volume with a system role ([`PROTECTED_ROLES`]) is never deleted. This is stricter
//!   than "system roles of the boot container": the iSC container (`iSCPreboot`, `xART`,
//!   `Hardware`) and the Recovery container hold role volumes too, and deleting any of them
//!   leaves an Apple-silicon Mac unbootable;
//! - the boot volume is never deleted: the volume whose device identifier is the one mounted
//!   at `/` (`diskutil info -plist /`), or whose snapshot is (`disk1s5s1` is a snapshot of
//!   `disk1s5`), or whose UUID is `/`'s volume UUID. If `/` cannot be examined, nothing is
//!   deleted;
//! - a listed volume without a device identifier is refused (it cannot be shown not to be the
//!   boot volume).
//!
//! Absence: a pinned UUID that is not listed passes `check_identity` and makes `destroy` a
//! no-op (that is what an interrupted operation sees when it resumes after `deleteVolume`
//! finished), but `snapshot` fails with [`KeyError::NotFound`]: a wrong UUID in the config is
//! refused before anything is done, and verification needs a snapshot in which the volume
//! was present.
//!
//! Snapshot facts: `present`, `volume_uuid`, `device_identifier`, `name`, `roles`,
//! `container_uuid`, `container_reference`, `encryption`, `file_vault`, `locked`,
//! `capacity_in_use`. Evidence: the same facts with a `_before` suffix plus
//! `present_after = "false"`. `diskutil` has no version option; `tool` is its path, and the
//! macOS version is in the certificate's host record.
//!
//! `diskutil` failures arrive either as text on stderr or as the plist error form
//! (`{Error=true, ErrorMessage, ExitCode}`); both become [`KeyError::Tool`] with diskutil's
//! own message.

use std::path::PathBuf;
use std::time::Duration;

use tracing::info;

use super::diskutil::{self, ApfsContainer, ApfsList, ApfsVolumeInfo, DiskInfo};
use super::tool::{self, DESTROY_TIMEOUT, QUERY_TIMEOUT, ToolOutput};
use super::{KeyDestroyer, KeyDestruction, KeyError, KeyState, OutputError};

/// Where macOS installs `diskutil`.
pub const DEFAULT_DISKUTIL: &str = "/usr/sbin/diskutil";

/// Backend name as written in config.
pub const BACKEND: &str = "apfs-volume";

/// The method recorded in the evidence.
pub const METHOD: &str = "diskutil apfs deleteVolume";

/// APFS roles whose volumes are never deleted, in whatever container they are.
pub const PROTECTED_ROLES: &[&str] = &[
    "System", "Data", "Preboot", "Recovery", "VM", "Update", "xART", "Hardware",
];

/// One APFS volume target.
#[derive(Debug, Clone)]
pub struct ApfsVolume {
    target: String,
    volume_uuid: String,
    diskutil: PathBuf,
}

/// Where the pinned volume was found.
struct Located {
    container: ApfsContainer,
    volume: ApfsVolumeInfo,
}

impl ApfsVolume {
    /// An APFS volume target named `target` (from config), pinned to `volume_uuid` (the
    /// `APFSVolumeUUID` of `diskutil apfs list`; compared case-insensitively), using the
    /// `diskutil` at the absolute path `diskutil` (normally [`DEFAULT_DISKUTIL`]).
    pub fn new(
        target: impl Into<String>,
        volume_uuid: &str,
        diskutil: impl Into<PathBuf>,
    ) -> Result<Self, KeyError> {
        let target = target.into();
        let diskutil = diskutil.into();
        if !diskutil.is_absolute() {
            return Err(KeyError::InvalidConfig {
                target,
                field: "diskutil path",
                value: diskutil.display().to_string(),
                reason: "give an absolute path (tools are never looked up in PATH)",
            });
        }
        let parsed = uuid::Uuid::parse_str(volume_uuid).map_err(|_| KeyError::InvalidConfig {
            target: target.clone(),
            field: "APFS volume UUID",
            value: volume_uuid.to_owned(),
            reason: "give the APFSVolumeUUID shown by `diskutil apfs list`",
        })?;
        Ok(Self {
            target,
            // diskutil prints UUIDs in upper case.
            volume_uuid: parsed.hyphenated().to_string().to_ascii_uppercase(),
            diskutil,
        })
    }

    /// The pinned volume UUID (upper case, as diskutil prints it).
    pub fn volume_uuid(&self) -> &str {
        &self.volume_uuid
    }

    fn run(&self, args: &[&str], timeout: Duration) -> Result<ToolOutput, KeyError> {
        tool::run_for_target(&self.target, &self.diskutil, args, timeout)
    }

    /// Runs a `-plist` query and parses its output, turning the error form into an error.
    fn query<T>(
        &self,
        args: &[&str],
        parse: fn(&[u8]) -> Result<T, diskutil::ParseError>,
    ) -> Result<T, KeyError> {
        let out = self.run(args, QUERY_TIMEOUT)?;
        if let Some(reported) = diskutil::parse_error(&out.stdout) {
            return Err(KeyError::Tool {
                target: self.target.clone(),
                program: self.diskutil.display().to_string(),
                detail: format!(
                    "{} reported: {} (exit code {})",
                    args.join(" "),
                    reported.error_message,
                    reported.exit_code
                ),
            });
        }
        if !out.status.success() {
            return Err(tool::failed(&self.target, &self.diskutil, args, &out));
        }
        parse(&out.stdout).map_err(|e| KeyError::ToolOutput {
            target: self.target.clone(),
            program: self.diskutil.display().to_string(),
            args: args.join(" "),
            source: OutputError::Plist(e),
        })
    }

    fn list(&self) -> Result<ApfsList, KeyError> {
        self.query(&["apfs", "list", "-plist"], diskutil::parse_apfs_list)
    }

    fn root_info(&self) -> Result<DiskInfo, KeyError> {
        self.query(&["info", "-plist", "/"], diskutil::parse_info)
    }

    fn locate(&self) -> Result<Option<Located>, KeyError> {
        let list = self.list()?;
        Ok(list
            .find_volume(&self.volume_uuid)
            .map(|(container, volume)| Located {
                container: container.clone(),
                volume: volume.clone(),
            }))
    }

    /// Refuses protected volumes.
    fn ensure_deletable(&self, found: &Located) -> Result<(), KeyError> {
        let root = self.root_info()?;
        match protection_reason(&found.volume, &root) {
            None => Ok(()),
            Some(reason) => Err(KeyError::ProtectedVolume {
                target: self.target.clone(),
                volume: describe(&found.volume),
                reason,
            }),
        }
    }

    fn not_found(&self) -> KeyError {
        KeyError::NotFound {
            target: self.target.clone(),
            what: format!("APFS volume {}", self.volume_uuid),
        }
    }
}

/// Why `volume` must never be deleted on a host whose `/` is described by `root`, or `None`
/// if it may be.
pub fn protection_reason(volume: &ApfsVolumeInfo, root: &DiskInfo) -> Option<String> {
    if let Some(role) = volume
        .roles
        .iter()
        .find(|r| PROTECTED_ROLES.contains(&r.as_str()))
    {
        return Some(format!(
            "it has the {role} role (volumes with system roles are never destroyed)"
        ));
    }
    if root
        .volume_uuid
        .as_deref()
        .is_some_and(|uuid| uuid.eq_ignore_ascii_case(&volume.volume_uuid))
    {
        return Some("it is the boot volume (mounted at /)".to_owned());
    }
    match volume.device_identifier.as_deref() {
        None => Some(
            "diskutil lists no device identifier for it, so it cannot be shown not to be the \
             boot volume"
                .to_owned(),
        ),
        Some(device) if root.is_on_volume(device) => Some(format!(
            "it is the boot volume ({} is mounted at /)",
            root.device_identifier
        )),
        Some(_) => None,
    }
}

fn describe(volume: &ApfsVolumeInfo) -> String {
    match (&volume.device_identifier, &volume.name) {
        (Some(dev), Some(name)) => format!("{} ({dev}, {name:?})", volume.volume_uuid),
        (Some(dev), None) => format!("{} ({dev})", volume.volume_uuid),
        (None, _) => volume.volume_uuid.clone(),
    }
}

fn opt_bool(v: Option<bool>) -> String {
    v.map_or_else(|| "unknown".to_owned(), |b| b.to_string())
}

mod fact {
    pub const PRESENT: &str = "present";
    pub const VOLUME_UUID: &str = "volume_uuid";
    pub const FACTS: &[&str] = &[
        "device_identifier",
        "name",
        "roles",
        "container_uuid",
        "container_reference",
        "encryption",
        "file_vault",
        "locked",
        "capacity_in_use",
    ];
}

impl KeyDestroyer for ApfsVolume {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn check_identity(&self) -> Result<(), KeyError> {
        match self.locate()? {
            Some(found) => self.ensure_deletable(&found),
            None => {
                info!(target_name = %self.target, volume_uuid = %self.volume_uuid,
                    "APFS volume not listed; nothing left to destroy");
                Ok(())
            }
        }
    }

    fn snapshot(&self) -> Result<KeyState, KeyError> {
        let found = self.locate()?.ok_or_else(|| self.not_found())?;
        self.ensure_deletable(&found)?;
        let Located { container, volume } = found;
        let facts = [
            (fact::PRESENT, "true".to_owned()),
            (fact::VOLUME_UUID, volume.volume_uuid.to_ascii_uppercase()),
            (
                "device_identifier",
                volume.device_identifier.unwrap_or_default(),
            ),
            ("name", volume.name.unwrap_or_default()),
            ("roles", volume.roles.join(",")),
            ("container_uuid", container.container_uuid),
            (
                "container_reference",
                container.container_reference.unwrap_or_default(),
            ),
            ("encryption", opt_bool(volume.encryption)),
            ("file_vault", opt_bool(volume.file_vault)),
            ("locked", opt_bool(volume.locked)),
            (
                "capacity_in_use",
                volume
                    .capacity_in_use
                    .map_or_else(|| "unknown".to_owned(), |n| n.to_string()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Ok(KeyState { facts })
    }

    fn destroy(&self) -> Result<(), KeyError> {
        let Some(found) = self.locate()? else {
            info!(target_name = %self.target, volume_uuid = %self.volume_uuid,
                "APFS volume already deleted; nothing to do");
            return Ok(());
        };
        self.ensure_deletable(&found)?;
        let args = ["apfs", "deleteVolume", self.volume_uuid.as_str()];
        let out = self.run(&args, DESTROY_TIMEOUT)?;
        if !out.status.success() {
            return Err(tool::failed(&self.target, &self.diskutil, &args, &out));
        }
        info!(target_name = %self.target, volume_uuid = %self.volume_uuid,
            device = found.volume.device_identifier.as_deref().unwrap_or(""),
            "APFS volume deleted");
        Ok(())
    }

    fn verify_destroyed(&self, before: &KeyState) -> Result<KeyDestruction, KeyError> {
        let snapshot_fact = |fact: &'static str| {
            before.facts.get(fact).ok_or_else(|| KeyError::Snapshot {
                target: self.target.clone(),
                fact,
            })
        };
        if snapshot_fact(fact::PRESENT)? != "true" {
            return Err(KeyError::Snapshot {
                target: self.target.clone(),
                fact: fact::PRESENT,
            });
        }
        if !snapshot_fact(fact::VOLUME_UUID)?.eq_ignore_ascii_case(&self.volume_uuid) {
            return Err(KeyError::Snapshot {
                target: self.target.clone(),
                fact: fact::VOLUME_UUID,
            });
        }
        if let Some(still) = self.locate()? {
            return Err(KeyError::NotDestroyed {
                target: self.target.clone(),
                detail: format!("APFS volume {} is still listed", describe(&still.volume)),
            });
        }
        let mut evidence: std::collections::BTreeMap<String, String> = fact::FACTS
            .iter()
            .map(|&f| {
                let value = before.facts.get(f).cloned().unwrap_or_default();
                (format!("{f}_before"), value)
            })
            .collect();
        evidence.insert("volume_uuid".to_owned(), self.volume_uuid.clone());
        evidence.insert("present_after".to_owned(), "false".to_owned());
        Ok(KeyDestruction {
            method: METHOD.to_owned(),
            tool: self.diskutil.display().to_string(),
            evidence,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    use super::*;

    /// The fake `diskutil` (a shell script replaying captured output).
    fn fake_diskutil_script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diskutil/diskutil")
    }

    /// The captured `diskutil -plist` outputs it replays (kept next to their parsers).
    fn captures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../reclaim/tests/fixtures/diskutil")
    }

    /// Volumes of the captured Intel list (`apfs-list-intel-filevault.plist`).
    const MACINTOSH_HD: &str = "9AA7F3A4-A615-4F8D-91E3-F5C86D988D71"; // disk1s1, no role
    const PREBOOT: &str = "A91FD4EA-684D-4122-9ACD-27E1465E99F6"; // disk1s2
    const RECOVERY: &str = "1C94FFC8-7649-470E-952D-16672E135C43"; // disk1s3
    const VM: &str = "6BC72964-0CA0-48AE-AAE1-7E9BFA8B2005"; // disk1s4
    const EDEN_BUCK_OUT: &str = "6C7EEDAD-385B-49AB-857B-AD15D98D13ED"; // disk1s5
    const EDEN_FBCODE: &str = "0DAB1407-0283-408E-88EE-CD41CE9E7BCA"; // disk1s6
    /// Volume of the captured Apple-silicon iSC list.
    const XART: &str = "AD45A111-EF76-4A09-9D8D-CFB0162952F8";

    /// A temporary directory holding a link to the fake diskutil and the outputs it replays.
    struct FakeDiskutil {
        dir: tempfile::TempDir,
    }

    impl FakeDiskutil {
        /// Replays `list` (then the after-deletion list once EDEN_FBCODE is deleted) and the
        /// sealed-snapshot `info -plist /`, in which `/` is disk1s5s1 (see the fixtures README:
        /// the two captures come from different Macs, so here disk1s5 is the boot volume).
        fn new(list: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let fixtures = captures();
            symlink(fake_diskutil_script(), dir.path().join("diskutil")).unwrap();
            for (link, fixture) in [
                ("list.plist", list),
                (
                    "list-after.plist",
                    "apfs-list-intel-filevault-after-delete-disk1s6.plist",
                ),
                ("info-root.plist", "info-root-intel-sealed.plist"),
            ] {
                symlink(fixtures.join(fixture), dir.path().join(link)).unwrap();
            }
            fs::write(dir.path().join("deletable-uuid"), EDEN_FBCODE).unwrap();
            Self { dir }
        }

        fn intel() -> Self {
            Self::new("apfs-list-intel-filevault.plist")
        }

        fn program(&self) -> PathBuf {
            self.dir.path().join("diskutil")
        }

        fn backend(&self, uuid: &str) -> ApfsVolume {
            ApfsVolume::new("tenant-volume", uuid, self.program()).unwrap()
        }

        fn put(&self, name: &str, fixture: &str) {
            symlink(captures().join(fixture), self.dir.path().join(name)).unwrap();
        }

        fn calls(&self) -> Vec<String> {
            fs::read_to_string(self.dir.path().join("calls.log"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        }

        fn delete_calls(&self) -> usize {
            self.calls()
                .iter()
                .filter(|c| c.starts_with("apfs deleteVolume"))
                .count()
        }

        fn deleted(&self) -> bool {
            self.dir.path().join("deleted").exists()
        }
    }

    #[test]
    fn deletes_an_unprotected_volume_and_verifies_it_is_gone() {
        let fake = FakeDiskutil::intel();
        let vol = fake.backend(&EDEN_FBCODE.to_lowercase());
        assert_eq!(vol.backend(), "apfs-volume");

        vol.check_identity().unwrap();
        let before = vol.snapshot().unwrap();
        assert_eq!(before.facts["present"], "true");
        assert_eq!(before.facts["volume_uuid"], EDEN_FBCODE);
        assert_eq!(before.facts["device_identifier"], "disk1s6");
        assert_eq!(
            before.facts["name"],
            "edenfs:/Users/wez/fbsource/fbcode/buck-out"
        );
        assert_eq!(before.facts["roles"], "");
        assert_eq!(
            before.facts["container_uuid"],
            "C4AC89F6-8658-4857-972C-D485C213523A"
        );
        assert_eq!(before.facts["container_reference"], "disk1");
        assert_eq!(before.facts["encryption"], "true");
        assert_eq!(before.facts["file_vault"], "false");
        assert_eq!(before.facts["capacity_in_use"], "781156352");

        vol.destroy().unwrap();
        assert!(fake.deleted());
        assert!(
            fake.calls()
                .contains(&format!("apfs deleteVolume {EDEN_FBCODE}")),
            "{:?}",
            fake.calls()
        );

        let proof = vol.verify_destroyed(&before).unwrap();
        assert_eq!(proof.method, "diskutil apfs deleteVolume");
        assert_eq!(proof.tool, fake.program().display().to_string());
        let e = &proof.evidence;
        assert_eq!(e["volume_uuid"], EDEN_FBCODE);
        assert_eq!(e["present_after"], "false");
        assert_eq!(e["device_identifier_before"], "disk1s6");
        assert_eq!(e["encryption_before"], "true");
        assert_eq!(
            e["container_uuid_before"],
            "C4AC89F6-8658-4857-972C-D485C213523A"
        );
    }

    #[test]
    fn an_already_deleted_volume_is_not_deleted_again() {
        let fake = FakeDiskutil::intel();
        let vol = fake.backend(EDEN_FBCODE);
        let before = vol.snapshot().unwrap();
        vol.destroy().unwrap();
        assert_eq!(fake.delete_calls(), 1);

        // A resumed operation re-checks identity, destroys again and verifies.
        vol.check_identity().unwrap();
        vol.destroy().unwrap();
        assert_eq!(
            fake.delete_calls(),
            1,
            "deleteVolume ran twice: {:?}",
            fake.calls()
        );
        let proof = vol.verify_destroyed(&before).unwrap();
        assert_eq!(proof.evidence["present_after"], "false");
    }

    #[test]
    fn a_wrong_uuid_is_refused_before_anything_is_deleted() {
        let fake = FakeDiskutil::intel();
        let vol = fake.backend("00000000-1111-2222-3333-444444444444");
        match vol.snapshot().unwrap_err() {
            KeyError::NotFound { target, what } => {
                assert_eq!(target, "tenant-volume");
                assert_eq!(what, "APFS volume 00000000-1111-2222-3333-444444444444");
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
        vol.destroy().unwrap();
        assert_eq!(fake.delete_calls(), 0);
        assert!(!fake.deleted());
        // A snapshot claiming presence cannot be turned into evidence either: there is no
        // volume to have deleted, but verification only vouches for the pinned UUID.
        let forged = KeyState {
            facts: [("present", "true"), ("volume_uuid", EDEN_FBCODE)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        };
        assert!(matches!(
            vol.verify_destroyed(&forged).unwrap_err(),
            KeyError::Snapshot {
                fact: "volume_uuid",
                ..
            }
        ));
    }

    #[test]
    fn system_role_volumes_are_refused() {
        let fake = FakeDiskutil::intel();
        for (uuid, role) in [(PREBOOT, "Preboot"), (RECOVERY, "Recovery"), (VM, "VM")] {
            let vol = fake.backend(uuid);
            for err in [
                vol.check_identity().unwrap_err(),
                vol.snapshot().unwrap_err(),
                vol.destroy().unwrap_err(),
            ] {
                match err {
                    KeyError::ProtectedVolume { volume, reason, .. } => {
                        assert!(volume.starts_with(uuid), "{volume}");
                        assert!(reason.contains(&format!("the {role} role")), "{reason}");
                    }
                    other => panic!("expected ProtectedVolume, got {other:?}"),
                }
            }
        }
        assert_eq!(fake.delete_calls(), 0);
    }

    #[test]
    fn isc_container_volumes_are_refused() {
        let fake = FakeDiskutil::new("apfs-list-apple-silicon-isc.plist");
        let err = fake.backend(XART).destroy().unwrap_err();
        assert!(
            matches!(&err, KeyError::ProtectedVolume { reason, .. } if reason.contains("xART")),
            "{err:?}"
        );
        assert_eq!(fake.delete_calls(), 0);
    }

    #[test]
    fn the_boot_volume_is_refused() {
        let fake = FakeDiskutil::intel();
        // `/` is disk1s5s1, a sealed snapshot of disk1s5.
        let vol = fake.backend(EDEN_BUCK_OUT);
        match vol.destroy().unwrap_err() {
            KeyError::ProtectedVolume { reason, .. } => {
                assert_eq!(reason, "it is the boot volume (disk1s5s1 is mounted at /)")
            }
            other => panic!("expected ProtectedVolume, got {other:?}"),
        }
        assert_eq!(fake.delete_calls(), 0);
        // Macintosh HD has no role and is not `/` here, so it is not protected by role alone.
        fake.backend(MACINTOSH_HD).check_identity().unwrap();
    }

    #[test]
    fn the_error_plist_is_reported_with_diskutils_message() {
        let fake = FakeDiskutil::intel();
        fake.put("list-error.plist", "error-could-not-find-disk.plist");
        let vol = fake.backend(EDEN_FBCODE);
        for err in [
            vol.check_identity().unwrap_err(),
            vol.snapshot().unwrap_err(),
            vol.destroy().unwrap_err(),
        ] {
            match &err {
                KeyError::Tool {
                    program, detail, ..
                } => {
                    assert_eq!(program, &fake.program().display().to_string());
                    assert_eq!(
                        detail,
                        "apfs list -plist reported: Could not find disk: /Volumes/SMB (exit code 1)"
                    );
                }
                other => panic!("expected Tool, got {other:?}"),
            }
        }
        assert_eq!(fake.delete_calls(), 0);
    }

    #[test]
    fn nothing_is_deleted_when_the_root_volume_cannot_be_examined() {
        let fake = FakeDiskutil::intel();
        fake.put("info-error.plist", "error-could-not-find-disk.plist");
        let err = fake.backend(EDEN_FBCODE).destroy().unwrap_err();
        assert!(
            matches!(&err, KeyError::Tool { detail, .. } if detail.starts_with("info -plist / reported")),
            "{err:?}"
        );
        assert_eq!(fake.delete_calls(), 0);
    }

    #[test]
    fn a_failed_delete_is_an_error_and_verification_then_fails() {
        let fake = FakeDiskutil::intel();
        fs::write(
            fake.dir.path().join("delete-error.txt"),
            "Error: -69888: Couldn't unmount disk\n",
        )
        .unwrap();
        let vol = fake.backend(EDEN_FBCODE);
        let before = vol.snapshot().unwrap();
        match vol.destroy().unwrap_err() {
            KeyError::Tool { detail, .. } => assert_eq!(
                detail,
                format!(
                    "apfs deleteVolume {EDEN_FBCODE} exited with exit status: 1: \
                     Error: -69888: Couldn't unmount disk"
                )
            ),
            other => panic!("expected Tool, got {other:?}"),
        }
        match vol.verify_destroyed(&before).unwrap_err() {
            KeyError::NotDestroyed { detail, .. } => {
                assert!(
                    detail.contains("disk1s6") && detail.contains("still listed"),
                    "{detail}"
                )
            }
            other => panic!("expected NotDestroyed, got {other:?}"),
        }
    }

    #[test]
    fn verification_fails_when_destroy_was_not_run() {
        let fake = FakeDiskutil::intel();
        let vol = fake.backend(EDEN_FBCODE);
        let before = vol.snapshot().unwrap();
        assert!(matches!(
            vol.verify_destroyed(&before).unwrap_err(),
            KeyError::NotDestroyed { .. }
        ));
    }

    #[test]
    fn a_missing_diskutil_is_a_start_failure() {
        let vol = ApfsVolume::new("t", EDEN_FBCODE, "/nonexistent/diskutil").unwrap();
        assert!(matches!(
            vol.check_identity().unwrap_err(),
            KeyError::ToolStart { .. }
        ));
    }

    #[test]
    fn new_rejects_a_relative_diskutil_and_a_malformed_uuid() {
        assert!(matches!(
            ApfsVolume::new("t", EDEN_FBCODE, "diskutil").unwrap_err(),
            KeyError::InvalidConfig {
                field: "diskutil path",
                ..
            }
        ));
        assert!(matches!(
            ApfsVolume::new("t", "disk1s6", DEFAULT_DISKUTIL).unwrap_err(),
            KeyError::InvalidConfig {
                field: "APFS volume UUID",
                ..
            }
        ));
        assert_eq!(
            ApfsVolume::new("t", &EDEN_FBCODE.to_lowercase(), DEFAULT_DISKUTIL)
                .unwrap()
                .volume_uuid(),
            EDEN_FBCODE
        );
    }

    fn volume(roles: &[&str], device: Option<&str>) -> ApfsVolumeInfo {
        ApfsVolumeInfo {
            volume_uuid: "11111111-2222-3333-4444-555555555555".into(),
            device_identifier: device.map(str::to_owned),
            name: Some("v".into()),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            capacity_in_use: None,
            capacity_quota: None,
            capacity_reserve: None,
            crypto_migration_on: None,
            encryption: Some(true),
            file_vault: None,
            locked: None,
        }
    }

    fn root() -> DiskInfo {
        diskutil::parse_info(&fs::read(captures().join("info-root-intel-sealed.plist")).unwrap())
            .unwrap()
    }

    #[test]
    fn system_and_data_roles_of_an_apple_silicon_boot_container_are_protected() {
        // No capture of an Apple-silicon boot container is available, so the policy is
        // checked on volumes built with the roles such a container uses.
        for role in ["System", "Data", "Update", "Hardware"] {
            let reason = protection_reason(&volume(&[role], Some("disk3s9")), &root()).unwrap();
            assert!(reason.contains(role), "{reason}");
        }
        assert_eq!(
            protection_reason(&volume(&[], Some("disk3s9")), &root()),
            None
        );
        assert_eq!(
            protection_reason(&volume(&["User"], Some("disk3s9")), &root()),
            None
        );
    }

    #[test]
    fn a_volume_matching_roots_uuid_or_lacking_a_device_is_protected() {
        let mut v = volume(&[], Some("disk3s9"));
        v.volume_uuid = "ca15e030-dbdd-4ff4-847d-50d5ee26b798".into();
        assert_eq!(
            protection_reason(&v, &root()).as_deref(),
            Some("it is the boot volume (mounted at /)")
        );
        assert!(
            protection_reason(&volume(&[], None), &root())
                .unwrap()
                .contains("no device identifier")
        );
    }
}
