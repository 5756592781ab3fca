//! The Mac inventory: an Apple silicon host's APFS volumes, local accounts, SIP, FileVault and
//! Activation Lock as an [`Inventory`], taken at `Terminate` in the tenant's OS and again at
//! `AttestErase` in the fresh OS.
//!
//! # Sources
//!
//! Every tool is run by its fixed path on the sealed system volume ([`DISKUTIL`], [`CSRUTIL`],
//! [`FDESETUP`], [`SYSTEM_PROFILER`], [`DSCL`]); none is configurable, since a root-writable
//! config must not be able to point the inventory at another program.
//!
//! | fact | command | key |
//! |---|---|---|
//! | volumes: UUID, name, role, container, store, encryption, bytes in use | `diskutil apfs list -plist` | `Containers[].Volumes[]` |
//! | partitions of other formats, unpartitioned disks with a file system | `diskutil list -plist` | `AllDisksAndPartitions[]` |
//! | whether such a disk is internal | `diskutil info -plist <whole disk>` | `Internal` |
//! | internal or external | `diskutil info -plist <physical store>` | `Internal` |
//! | the System volume is sealed | `diskutil info -plist <System volume>` | `Sealed` (`"Yes"`) |
//! | the booted Data volume | `diskutil info -plist /System/Volumes/Data` | `VolumeUUID` |
//! | when the booted Data volume was made | birth time of `/System/Volumes/Data` | — |
//! | SIP | `csrutil status` | first line ([`parse_csrutil_status`]) |
//! | FileVault | `fdesetup status` | first line ([`parse_fdesetup_status`]) |
//! | Activation Lock | `system_profiler SPHardwareDataType -json` | `activation_lock_status` |
//! | local accounts | `dscl -plist . -readall /Users RecordName UniqueID UserShell` | ([`accounts_from_dscl`]) |
//!
//! The host identity (hardware UUID, serial number) is the agent's own, read once at start from
//! `IOPlatformExpertDevice`, and is given to [`MacInventory::new`].
//!
//! # Decisions
//!
//! - **Roles.** A volume with several roles takes the first that is not one of Apple's system
//!   roles, so that a tenant-looking role is never hidden behind a system one; a volume without
//!   roles is [`VolumeRole::None`].
//! - **SIP** is enabled only when `csrutil` says exactly `enabled.`: a "Custom Configuration"
//!   (even one printed as `enabled (Custom Configuration).`, which macOS has shown with every
//!   protection off) is not enabled.
//! - **Activation Lock** comes from the JSON form, not `-xml`: real Apple silicon captures of
//!   `-json` exist (fixtures README); none of `-xml` was found. A missing or unknown value is
//!   `None`, which never passes the `activation_lock_off` check.
//! - **Accounts.** A user record counts as a local login account when its uid is 500 or more
//!   (macOS gives the first user 501 and keeps lower uids for the system) or its shell lets
//!   someone log in (the same shell rule as Linux, [`crate::linux`]); a record without a
//!   readable uid counts too. So `root` (`/bin/sh`) counts and the configured list names it;
//!   `daemon`, `nobody` and the `_` service accounts with `/usr/bin/false` do not.
//! - **Partitions of other formats** (a tenant could shrink the APFS container and make an
//!   ExFAT partition) are recorded as volumes with role `partition <type>` (an unknown role, so
//!   a tenant's), by partition UUID: the device erase must have removed them, or the
//!   attestation fails. The prepare half does not delete them (it deletes APFS volumes only).
//!   APFS partitions (`Apple_APFS`, `Apple_APFS_ISC`, `Apple_APFS_Recovery`) are skipped here:
//!   their volumes are listed by `apfs list`.
//! - **Volume groups** are not recorded (`volume_group_uuid` is `None`): `apfs list -plist`
//!   does not carry them and no rule needs them.
//!
//! The parsers are pure functions tested on Linux against captured real outputs where public
//! ones exist, and against clearly labelled models where none does
//! (`crates/reclaim/tests/fixtures/macos/README.md`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use serde::Deserialize;

use crate::diskutil::{self, ApfsContainer, ApfsList, DiskList};
use crate::inventory::{
    HostIdentity, Inventory, InventoryError, InventorySource, Volume, VolumeRole,
};
use crate::run::{CommandRunner, SystemRunner, run_tool, unexpected_output};

/// `diskutil`, on the sealed system volume.
pub const DISKUTIL: &str = "/usr/sbin/diskutil";
/// `csrutil`, on the sealed system volume.
pub const CSRUTIL: &str = "/usr/bin/csrutil";
/// `fdesetup`, on the sealed system volume.
pub const FDESETUP: &str = "/usr/bin/fdesetup";
/// `system_profiler`, on the sealed system volume.
pub const SYSTEM_PROFILER: &str = "/usr/sbin/system_profiler";
/// `dscl`, on the sealed system volume.
pub const DSCL: &str = "/usr/bin/dscl";
/// The arguments of the `dscl` query the inventory's accounts come from.
pub const DSCL_USERS_ARGS: &[&str] = &[
    "-plist",
    ".",
    "-readall",
    "/Users",
    "RecordName",
    "UniqueID",
    "UserShell",
];
/// Where the booted Data volume is mounted.
pub const DATA_VOLUME_MOUNT: &str = "/System/Volumes/Data";
/// The first uid macOS gives a user account (the first user gets 501).
pub const FIRST_USER_UID: i64 = 500;

/// What `csrutil status` says about System Integrity Protection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipStatus {
    /// `System Integrity Protection status: enabled.`
    Enabled,
    /// `System Integrity Protection status: disabled.`
    Disabled,
    /// Anything else after the prefix, e.g. `unknown (Custom Configuration).`
    Custom(String),
}

impl SipStatus {
    /// Whether SIP is fully enabled.
    pub fn is_enabled(&self) -> bool {
        matches!(self, Self::Enabled)
    }
}

/// The status on the first non-empty line of `csrutil status`, or `None` when that line is not
/// `System Integrity Protection status: …`.
pub fn parse_csrutil_status(text: &str) -> Option<SipStatus> {
    const PREFIX: &str = "System Integrity Protection status: ";
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let status = line.strip_prefix(PREFIX)?.trim();
    Some(match status {
        "enabled." => SipStatus::Enabled,
        "disabled." => SipStatus::Disabled,
        "" => return None,
        other => SipStatus::Custom(other.to_owned()),
    })
}

/// Whether FileVault is on, from the first non-empty line of `fdesetup status`
/// (`FileVault is On.` or `FileVault is Off.`; later lines, such as the progress of an
/// encryption, are ignored), or `None` when that line is neither.
pub fn parse_fdesetup_status(text: &str) -> Option<bool> {
    match text.lines().map(str::trim).find(|l| !l.is_empty())? {
        "FileVault is On." => Some(true),
        "FileVault is Off." => Some(false),
        _ => None,
    }
}

/// `system_profiler SPHardwareDataType -json`, the part read here.
#[derive(Debug, Deserialize)]
struct HardwareReport {
    #[serde(rename = "SPHardwareDataType")]
    items: Vec<HardwareItem>,
}

#[derive(Debug, Deserialize)]
struct HardwareItem {
    #[serde(default)]
    activation_lock_status: Option<String>,
}

/// Activation Lock from `system_profiler SPHardwareDataType -json`: `Ok(Some(true))` for
/// `activation_lock_enabled`, `Ok(Some(false))` for `activation_lock_disabled`, `Ok(None)` when
/// the key is missing or has another value; an error when the document is not that report
/// (one `SPHardwareDataType` item).
pub fn parse_activation_lock(json: &[u8]) -> Result<Option<bool>, serde_json::Error> {
    let report: HardwareReport = serde_json::from_slice(json)?;
    let [item] = report.items.as_slice() else {
        return Err(serde::de::Error::invalid_length(
            report.items.len(),
            &"one SPHardwareDataType item",
        ));
    };
    Ok(match item.activation_lock_status.as_deref() {
        Some("activation_lock_enabled") => Some(true),
        Some("activation_lock_disabled") => Some(false),
        _ => None,
    })
}

/// One user record of `dscl -plist . -readall /Users RecordName UniqueID UserShell`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DsclUser {
    /// The record's names: the short name first, then aliases.
    #[serde(rename = "dsAttrTypeStandard:RecordName", default)]
    pub names: Vec<String>,
    /// The uid, as text.
    #[serde(rename = "dsAttrTypeStandard:UniqueID", default)]
    pub unique_id: Vec<String>,
    /// The login shell.
    #[serde(rename = "dsAttrTypeStandard:UserShell", default)]
    pub shell: Vec<String>,
}

/// Parses the plist `dscl -plist . -readall /Users …` prints: an array of records, each a
/// dictionary of attribute name to an array of strings.
pub fn parse_dscl_users(plist_xml: &[u8]) -> Result<Vec<DsclUser>, plist::Error> {
    plist::from_bytes(plist_xml)
}

/// The local login accounts among `users`, sorted, without duplicates (module documentation,
/// "Accounts"). A record without a name is skipped: nothing can log in to it.
pub fn accounts_from_dscl(users: &[DsclUser]) -> Vec<String> {
    let mut accounts: Vec<String> = users
        .iter()
        .filter_map(|user| {
            let name = user.names.first()?;
            let uid = user
                .unique_id
                .first()
                .and_then(|u| u.trim().parse::<i64>().ok());
            let shell = user.shell.first().map_or("", String::as_str);
            let counts = match uid {
                Some(uid) => uid >= FIRST_USER_UID || crate::linux::is_login_shell(shell),
                None => true,
            };
            counts.then(|| name.clone())
        })
        .collect();
    accounts.sort();
    accounts.dedup();
    accounts
}

/// The role of a volume with `roles` (module documentation, "Roles").
pub fn role_of(roles: &[String]) -> VolumeRole {
    let parsed: Vec<VolumeRole> = roles.iter().map(|r| VolumeRole::from_apple(r)).collect();
    parsed
        .iter()
        .find(|r| !r.is_apple_system_role())
        .or_else(|| parsed.first())
        .cloned()
        .unwrap_or(VolumeRole::None)
}

/// The physical store a container sits on: its designated store, else its first listed one.
pub fn physical_store_of(container: &ApfsContainer) -> Option<&str> {
    container.designated_physical_store.as_deref().or_else(|| {
        container
            .physical_stores
            .first()
            .map(|s| s.device_identifier.as_str())
    })
}

/// Partition types whose contents `diskutil apfs list` already shows.
pub const APFS_PARTITION_TYPES: &[&str] = &["Apple_APFS", "Apple_APFS_ISC", "Apple_APFS_Recovery"];

/// The `Content` of a synthesized APFS container disk (the APFS container type GUID).
pub const APFS_CONTAINER_CONTENT: &str = "EF57347C-0000-11AA-AA11-00306543ECAC";

/// Partition-map `Content` values of a whole disk (not a file system).
const PARTITION_SCHEMES: &[&str] = &[
    "GUID_partition_scheme",
    "FDisk_partition_scheme",
    "Apple_partition_scheme",
];

/// A partition or unpartitioned disk of `diskutil list -plist` that `apfs list` does not show:
/// `(whole disk, device, uuid, name, content, size)`.
type ForeignPartition<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
    Option<u64>,
);

fn foreign_partitions(list: &DiskList) -> Vec<ForeignPartition<'_>> {
    let mut found = Vec::new();
    for disk in &list.all_disks_and_partitions {
        let content = disk.content.as_deref().unwrap_or("");
        if !disk.apfs_volumes.is_empty() || content == APFS_CONTAINER_CONTENT {
            continue;
        }
        for p in &disk.partitions {
            let kind = p.content.as_deref().unwrap_or("");
            if APFS_PARTITION_TYPES.contains(&kind) {
                continue;
            }
            found.push((
                disk.device_identifier.as_str(),
                p.device_identifier.as_str(),
                p.disk_uuid.as_deref().or(p.volume_uuid.as_deref()),
                p.volume_name.as_deref(),
                kind,
                p.size,
            ));
        }
        if disk.partitions.is_empty()
            && !content.is_empty()
            && !PARTITION_SCHEMES.contains(&content)
        {
            found.push((
                disk.device_identifier.as_str(),
                disk.device_identifier.as_str(),
                disk.volume_uuid.as_deref(),
                disk.volume_name.as_deref(),
                content,
                disk.size,
            ));
        }
    }
    found
}

/// The partitions of other formats (and unpartitioned disks with a file system) of `list` as
/// inventory volumes, role `partition <type>`; `internal_disks` are the whole disks known to be
/// internal. A partition without a UUID is named `partition:<device>`.
pub fn partition_volumes(list: &DiskList, internal_disks: &BTreeMap<String, bool>) -> Vec<Volume> {
    foreign_partitions(list)
        .into_iter()
        .map(|(disk, device, uuid, name, kind, size)| {
            let uuid = uuid.map_or_else(|| format!("partition:{device}"), str::to_owned);
            let mut v = Volume::new(
                uuid,
                name.filter(|n| !n.is_empty()).unwrap_or(device),
                VolumeRole::Other(format!("partition {kind}")),
            );
            v.physical_store = Some(device.to_owned());
            v.size_bytes = size;
            v.internal = internal_disks.get(disk).copied().unwrap_or(false);
            v
        })
        .collect()
}

/// What `diskutil info` and the file system said beyond the volume list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeFacts {
    /// `Internal` of each physical store, by device identifier (`disk0s2`).
    pub store_internal: BTreeMap<String, bool>,
    /// `Sealed` of each System volume, by device identifier (`None`: diskutil did not say).
    pub sealed: BTreeMap<String, Option<bool>>,
    /// The booted Data volume: its UUID and when it was made (Unix ms), if known.
    pub booted_data: Option<(String, Option<u64>)>,
}

/// Every volume of `list` as an inventory [`Volume`], completed with `facts`. A volume on a
/// store whose `Internal` is unknown is recorded as not internal.
pub fn volumes_from(list: &ApfsList, facts: &VolumeFacts) -> Vec<Volume> {
    let mut volumes = Vec::new();
    for container in &list.containers {
        let store = physical_store_of(container);
        let internal = store
            .and_then(|s| facts.store_internal.get(s))
            .copied()
            .unwrap_or(false);
        for v in &container.volumes {
            let role = role_of(&v.roles);
            let mut volume = Volume::new(
                v.volume_uuid.clone(),
                v.name.clone().unwrap_or_default(),
                role.clone(),
            );
            volume.container_uuid = Some(container.container_uuid.clone());
            volume.physical_store = store.map(str::to_owned);
            volume.size_bytes = v.capacity_in_use;
            volume.encrypted = v.encryption == Some(true) || v.file_vault == Some(true);
            volume.internal = internal;
            if role == VolumeRole::System {
                volume.sealed = v
                    .device_identifier
                    .as_ref()
                    .and_then(|d| facts.sealed.get(d))
                    .copied()
                    .flatten();
            }
            if let Some((uuid, created)) = &facts.booted_data
                && uuid.eq_ignore_ascii_case(&v.volume_uuid)
            {
                volume.created_unix_ms = *created;
            }
            volumes.push(volume);
        }
    }
    volumes
}

/// The volumes of a Mac inventory that the prepare half deletes itself: APFS volumes on
/// internal storage, without one of Apple's standard roles (a volume the tenant added, which Erase All Content
/// and Settings leaves in place). Data and VM volumes are left to the device erase; system
/// roles are never touched. Only meaningful for a Mac inventory: on Linux every volume is
/// internal and roleless.
pub fn tenant_added_volumes(inventory: &Inventory) -> Vec<&Volume> {
    inventory
        .volumes
        .iter()
        .filter(|v| v.internal && v.container_uuid.is_some() && !v.role.is_apple_standard_role())
        .collect()
}

/// The Mac [`InventorySource`]. See the module documentation.
#[derive(Debug, Clone)]
pub struct MacInventory {
    host: HostIdentity,
    runner: Arc<dyn CommandRunner>,
    data_mount: PathBuf,
}

impl MacInventory {
    /// The inventory of `host`, running the system tools at their fixed paths.
    pub fn new(host: HostIdentity) -> Self {
        Self {
            host,
            runner: Arc::new(SystemRunner::default()),
            data_mount: PathBuf::from(DATA_VOLUME_MOUNT),
        }
    }

    /// Runs the tools through `runner` instead (tests answer from captured outputs).
    pub fn with_runner(mut self, runner: Arc<dyn CommandRunner>) -> Self {
        self.runner = runner;
        self
    }

    /// Reads the Data volume's birth time from `path` instead of [`DATA_VOLUME_MOUNT`] (the
    /// `diskutil info` query still names the real mount point).
    pub fn with_data_mount(mut self, path: impl Into<PathBuf>) -> Self {
        self.data_mount = path.into();
        self
    }

    fn run(
        &self,
        program: &str,
        args: &[&str],
    ) -> Result<(Vec<OsString>, Vec<u8>), InventoryError> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let out = run_tool(self.runner.as_ref(), Path::new(program), &args)?;
        Ok((args, out))
    }

    fn diskutil_info(&self, target: &str) -> Result<diskutil::DiskInfo, InventoryError> {
        let (args, out) = self.run(DISKUTIL, &["info", "-plist", target])?;
        diskutil::parse_info(&out).map_err(|_| {
            unexpected_output(
                Path::new(DISKUTIL),
                &args,
                &out,
                "a diskutil info property list",
            )
        })
    }

    fn facts(&self, list: &ApfsList) -> Result<VolumeFacts, InventoryError> {
        let mut facts = VolumeFacts::default();
        for container in &list.containers {
            if let Some(store) = physical_store_of(container)
                && !facts.store_internal.contains_key(store)
            {
                let info = self.diskutil_info(store)?;
                facts
                    .store_internal
                    .insert(store.to_owned(), info.internal.unwrap_or(false));
            }
            for v in &container.volumes {
                if role_of(&v.roles) != VolumeRole::System {
                    continue;
                }
                if let Some(device) = &v.device_identifier {
                    let info = self.diskutil_info(device)?;
                    facts.sealed.insert(device.clone(), info.sealed());
                }
            }
        }
        let data = self.diskutil_info(DATA_VOLUME_MOUNT)?;
        if let Some(uuid) = data.volume_uuid {
            let created = std::fs::metadata(&self.data_mount)
                .and_then(|m| m.created())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .and_then(|d| u64::try_from(d.as_millis()).ok());
            facts.booted_data = Some((uuid, created));
        }
        Ok(facts)
    }
}

impl InventorySource for MacInventory {
    fn take(&self, taken_unix_ms: u64) -> Result<Inventory, InventoryError> {
        let (args, out) = self.run(DISKUTIL, &["apfs", "list", "-plist"])?;
        let list = diskutil::parse_apfs_list(&out).map_err(|_| {
            unexpected_output(
                Path::new(DISKUTIL),
                &args,
                &out,
                "an APFS list property list",
            )
        })?;
        let mut volumes = volumes_from(&list, &self.facts(&list)?);

        let (args, out) = self.run(DISKUTIL, &["list", "-plist"])?;
        let disks = diskutil::parse_list(&out).map_err(|_| {
            unexpected_output(
                Path::new(DISKUTIL),
                &args,
                &out,
                "a disk list property list",
            )
        })?;
        let mut internal_disks = BTreeMap::new();
        for (disk, ..) in foreign_partitions(&disks) {
            if !internal_disks.contains_key(disk) {
                let info = self.diskutil_info(disk)?;
                internal_disks.insert(disk.to_owned(), info.internal.unwrap_or(false));
            }
        }
        volumes.extend(partition_volumes(&disks, &internal_disks));

        let (args, out) = self.run(CSRUTIL, &["status"])?;
        let sip = parse_csrutil_status(&String::from_utf8_lossy(&out)).ok_or_else(|| {
            unexpected_output(
                Path::new(CSRUTIL),
                &args,
                &out,
                "a first line `System Integrity Protection status: …`",
            )
        })?;

        let (args, out) = self.run(FDESETUP, &["status"])?;
        let filevault = parse_fdesetup_status(&String::from_utf8_lossy(&out)).ok_or_else(|| {
            unexpected_output(
                Path::new(FDESETUP),
                &args,
                &out,
                "a first line `FileVault is On.` or `FileVault is Off.`",
            )
        })?;

        let (args, out) = self.run(SYSTEM_PROFILER, &["SPHardwareDataType", "-json"])?;
        let activation_lock = parse_activation_lock(&out).map_err(|_| {
            unexpected_output(
                Path::new(SYSTEM_PROFILER),
                &args,
                &out,
                "a JSON report with one SPHardwareDataType item",
            )
        })?;

        let (args, out) = self.run(DSCL, DSCL_USERS_ARGS)?;
        let users = parse_dscl_users(&out).map_err(|_| {
            unexpected_output(
                Path::new(DSCL),
                &args,
                &out,
                "a property list of user records",
            )
        })?;

        let mut inventory = Inventory::new(
            self.host.clone(),
            taken_unix_ms,
            volumes,
            accounts_from_dscl(&users),
        );
        inventory.sip_enabled = Some(sip.is_enabled());
        inventory.filevault_on = Some(filevault);
        inventory.activation_lock_enabled = activation_lock;
        Ok(inventory)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_is_enabled_only_when_csrutil_says_exactly_enabled() {
        let status = |t| parse_csrutil_status(t);
        assert_eq!(
            status("System Integrity Protection status: enabled.\n"),
            Some(SipStatus::Enabled)
        );
        assert_eq!(
            status("\nSystem Integrity Protection status: disabled.\n"),
            Some(SipStatus::Disabled)
        );
        let custom =
            status("System Integrity Protection status: enabled (Custom Configuration).\n")
                .unwrap();
        assert!(!custom.is_enabled());
        assert_eq!(
            custom,
            SipStatus::Custom("enabled (Custom Configuration).".into())
        );
        for bad in [
            "",
            "\n\n",
            "SIP: enabled.",
            "System Integrity Protection status: ",
        ] {
            assert_eq!(status(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn filevault_is_read_from_the_first_line_only() {
        assert_eq!(parse_fdesetup_status("FileVault is On.\n"), Some(true));
        assert_eq!(parse_fdesetup_status("FileVault is Off.\n"), Some(false));
        assert_eq!(
            parse_fdesetup_status(
                "FileVault is On.\nEncryption in progress: Percent completed = 12\n"
            ),
            Some(true)
        );
        for bad in ["", "FileVault is on", "Error: unknown"] {
            assert_eq!(parse_fdesetup_status(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn activation_lock_values_and_shapes() {
        let doc =
            |v: &str| format!(r#"{{"SPHardwareDataType":[{{"_name":"hardware_overview"{v}}}]}}"#);
        let lock = |v: &str| parse_activation_lock(doc(v).as_bytes()).unwrap();
        assert_eq!(
            lock(r#","activation_lock_status":"activation_lock_enabled""#),
            Some(true)
        );
        assert_eq!(
            lock(r#","activation_lock_status":"activation_lock_disabled""#),
            Some(false)
        );
        assert_eq!(lock(r#","activation_lock_status":"something_new""#), None);
        assert_eq!(lock(""), None);
        assert!(parse_activation_lock(br#"{"SPHardwareDataType":[]}"#).is_err());
        assert!(parse_activation_lock(b"{}").is_err());
        assert!(parse_activation_lock(b"not json").is_err());
    }

    #[test]
    fn a_volume_with_several_roles_takes_the_first_non_system_one() {
        let roles = |r: &[&str]| role_of(&r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(roles(&[]), VolumeRole::None);
        assert_eq!(roles(&["System"]), VolumeRole::System);
        assert_eq!(roles(&["Preboot", "Data"]), VolumeRole::Data);
        assert_eq!(
            roles(&["Preboot", "Backup"]),
            VolumeRole::Other("Backup".into())
        );
        assert_eq!(roles(&["Preboot", "Recovery"]), VolumeRole::Preboot);
    }

    #[test]
    fn only_internal_volumes_without_a_standard_role_are_the_tenants_additions() {
        let volume = |uuid: &str, role: VolumeRole, internal: bool| {
            let mut v = Volume::new(uuid, uuid, role);
            v.internal = internal;
            v.container_uuid = Some("C".into());
            v
        };
        let mut partition = volume(
            "h-partition",
            VolumeRole::Other("partition ExFAT".into()),
            true,
        );
        partition.container_uuid = None;
        let inventory = Inventory::new(
            HostIdentity {
                host_id: "h".into(),
                hardware_uuid: "hw".into(),
                serial_number: "sn".into(),
            },
            1,
            vec![
                volume("a-system", VolumeRole::System, true),
                volume("b-data", VolumeRole::Data, true),
                volume("c-vm", VolumeRole::Vm, true),
                volume("d-xart", VolumeRole::Xart, true),
                volume("e-added", VolumeRole::None, true),
                volume("f-backup", VolumeRole::Other("Backup".into()), true),
                volume("g-external", VolumeRole::None, false),
                partition,
            ],
            vec![],
        );
        let uuids: Vec<&str> = tenant_added_volumes(&inventory)
            .iter()
            .map(|v| v.uuid.as_str())
            .collect();
        assert_eq!(uuids, ["e-added", "f-backup"]);
    }

    #[test]
    fn partitions_apfs_does_not_show_are_recorded_as_tenant_volumes() {
        // Model (not a capture) of `diskutil list -plist`, with the keys real captures show.
        let list = diskutil::parse_list(
            br#"<plist version="1.0"><dict><key>AllDisksAndPartitions</key><array>
<dict><key>Content</key><string>GUID_partition_scheme</string>
<key>DeviceIdentifier</key><string>disk0</string><key>Partitions</key><array>
<dict><key>Content</key><string>Apple_APFS_ISC</string><key>DeviceIdentifier</key><string>disk0s1</string>
<key>DiskUUID</key><string>8983BD96-FCEF-4899-9ABC-D2659B95475F</string><key>Size</key><integer>524288000</integer></dict>
<dict><key>Content</key><string>Apple_APFS</string><key>DeviceIdentifier</key><string>disk0s2</string></dict>
<dict><key>Content</key><string>Microsoft Basic Data</string><key>DeviceIdentifier</key><string>disk0s4</string>
<key>DiskUUID</key><string>EXFA0000-0000-4000-8000-000000000001</string><key>Size</key><integer>1000000</integer>
<key>VolumeName</key><string>STASH</string></dict>
</array></dict>
<dict><key>Content</key><string>EF57347C-0000-11AA-AA11-00306543ECAC</string>
<key>DeviceIdentifier</key><string>disk3</string><key>APFSVolumes</key><array><dict/></array>
<key>Partitions</key><array/></dict>
<dict><key>Content</key><string>DOS_FAT_32</string><key>DeviceIdentifier</key><string>disk6</string>
<key>Partitions</key><array/><key>VolumeName</key><string>USB</string></dict>
</array></dict></plist>"#,
        )
        .unwrap();
        let internal = BTreeMap::from([("disk0".to_owned(), true), ("disk6".to_owned(), false)]);
        let volumes = partition_volumes(&list, &internal);
        let seen: Vec<(&str, &str, bool)> = volumes
            .iter()
            .map(|v| (v.uuid.as_str(), v.role.as_apple(), v.internal))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "EXFA0000-0000-4000-8000-000000000001",
                    "partition Microsoft Basic Data",
                    true
                ),
                ("partition:disk6", "partition DOS_FAT_32", false),
            ]
        );
        assert!(volumes.iter().all(|v| !v.role.is_apple_standard_role()));
    }

    #[test]
    fn accounts_count_by_uid_or_login_shell() {
        let user = |name: &str, uid: &str, shell: &str| DsclUser {
            names: vec![name.into()],
            unique_id: if uid.is_empty() {
                vec![]
            } else {
                vec![uid.into()]
            },
            shell: vec![shell.into()],
        };
        let users = vec![
            user("root", "0", "/bin/sh"),
            user("daemon", "1", "/usr/bin/false"),
            user("nobody", "-2", "/usr/bin/false"),
            user("_spotlight", "89", "/usr/bin/false"),
            user("admin", "501", "/bin/zsh"),
            user("tenant", "502", "/usr/bin/false"),
            user("hidden", "400", "/bin/bash"),
            user("nouid", "", "/usr/bin/false"),
            user("admin", "501", "/bin/zsh"),
            DsclUser {
                names: vec![],
                unique_id: vec!["600".into()],
                shell: vec![],
            },
        ];
        assert_eq!(
            accounts_from_dscl(&users),
            ["admin", "hidden", "nouid", "root", "tenant"]
        );
    }
}
