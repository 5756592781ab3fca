//! Portable parsers for macOS `diskutil … -plist` output, tested on Linux against captured real
//! output (`crates/reclaim/tests/fixtures/diskutil/`).
//!
//! Three shapes:
//! - `diskutil apfs list -plist`: `{Containers: [{APFSContainerUUID, ContainerReference,
//!   PhysicalStores: [...], Volumes: [{APFSVolumeUUID, DeviceIdentifier, Name, Roles, ...}]}]}`
//!   ([`ApfsList`]);
//! - `diskutil info -plist <disk|mount point>`: one flat dictionary ([`DiskInfo`]);
//! - `diskutil list -plist`: every whole disk with its partitions
//!   (`{AllDisksAndPartitions: [{DeviceIdentifier, Content, Partitions: [...]}]}`,
//!   [`DiskList`]): what the APFS list does not show, such as a partition of another format;
//! - the error form either command prints instead (with exit status 1):
//!   `{Error: true, ErrorMessage: "Could not find disk: …", ExitCode: 1}` ([`DiskutilError`]).
//!
//! Parsing rules, from real captures:
//! - unknown keys are ignored (every macOS release adds some) and almost every known key is
//!   optional; only the identifiers the backend relies on are required;
//! - `Roles` and `PhysicalStores` can be empty arrays (an Apple-silicon iSC container lists no
//!   physical store);
//! - `Sealed` is the *string* `"Yes"`/`"No"`, not a boolean ([`DiskInfo::sealed`]);
//! - sizes are plist integers, read as `u64`.

use serde::Deserialize;

/// Parse failures.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not a property list, or not of the expected shape.
    #[error("not a diskutil property list of the expected shape")]
    Plist(#[source] plist::Error),
}

/// `diskutil apfs list -plist`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApfsList {
    /// Every APFS container on the machine.
    #[serde(default)]
    pub containers: Vec<ApfsContainer>,
}

/// One APFS container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApfsContainer {
    /// Container UUID.
    #[serde(rename = "APFSContainerUUID")]
    pub container_uuid: String,
    /// Current device reference, e.g. `disk1`.
    #[serde(default)]
    pub container_reference: Option<String>,
    /// The disk shown as the container's backing store.
    #[serde(default)]
    pub designated_physical_store: Option<String>,
    /// Container size in bytes.
    #[serde(default)]
    pub capacity_ceiling: Option<u64>,
    /// Free bytes.
    #[serde(default)]
    pub capacity_free: Option<u64>,
    /// Fusion Drive container.
    #[serde(default)]
    pub fusion: Option<bool>,
    /// Backing stores; can be empty.
    #[serde(default)]
    pub physical_stores: Vec<PhysicalStore>,
    /// Volumes in the container.
    #[serde(default)]
    pub volumes: Vec<ApfsVolumeInfo>,
}

/// One physical store of a container.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PhysicalStore {
    /// E.g. `disk0s2`.
    pub device_identifier: String,
    /// Partition UUID.
    #[serde(rename = "DiskUUID", default)]
    pub disk_uuid: Option<String>,
    /// Bytes.
    #[serde(default)]
    pub size: Option<u64>,
}

/// One volume as listed by `diskutil apfs list -plist`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApfsVolumeInfo {
    /// Volume UUID: the stable identity a target is pinned to.
    #[serde(rename = "APFSVolumeUUID")]
    pub volume_uuid: String,
    /// Current device identifier, e.g. `disk1s5` (changes across boots).
    #[serde(default)]
    pub device_identifier: Option<String>,
    /// Volume name.
    #[serde(default)]
    pub name: Option<String>,
    /// APFS roles (`System`, `Data`, `Preboot`, `Recovery`, `VM`, `xART`, …); often empty.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Bytes in use.
    #[serde(default)]
    pub capacity_in_use: Option<u64>,
    /// Quota bytes (0 = none).
    #[serde(default)]
    pub capacity_quota: Option<u64>,
    /// Reserved bytes.
    #[serde(default)]
    pub capacity_reserve: Option<u64>,
    /// Encryption being turned on or off in the background.
    #[serde(default)]
    pub crypto_migration_on: Option<bool>,
    /// Volume is encrypted with a volume key of its own.
    #[serde(default)]
    pub encryption: Option<bool>,
    /// FileVault is on.
    #[serde(default)]
    pub file_vault: Option<bool>,
    /// Volume is locked.
    #[serde(default)]
    pub locked: Option<bool>,
}

impl ApfsList {
    /// The volume with `uuid` (case-insensitive) and its container, if listed.
    pub fn find_volume(&self, uuid: &str) -> Option<(&ApfsContainer, &ApfsVolumeInfo)> {
        self.containers.iter().find_map(|container| {
            container
                .volumes
                .iter()
                .find(|v| v.volume_uuid.eq_ignore_ascii_case(uuid))
                .map(|v| (container, v))
        })
    }
}

/// `diskutil info -plist <target>`: the keys the backend uses plus common media facts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiskInfo {
    /// E.g. `disk1s5s1` (a sealed system snapshot) or `disk1s1`.
    pub device_identifier: String,
    /// E.g. `/dev/disk1s5s1`.
    #[serde(default)]
    pub device_node: Option<String>,
    /// The whole disk holding it, e.g. `disk1`.
    #[serde(default)]
    pub parent_whole_disk: Option<String>,
    /// Volume UUID (for a mounted snapshot: the snapshot's UUID).
    #[serde(rename = "VolumeUUID", default)]
    pub volume_uuid: Option<String>,
    /// Disk/partition UUID.
    #[serde(rename = "DiskUUID", default)]
    pub disk_uuid: Option<String>,
    /// Volume name.
    #[serde(default)]
    pub volume_name: Option<String>,
    /// Mount point, e.g. `/`.
    #[serde(default)]
    pub mount_point: Option<String>,
    /// The APFS container, e.g. `disk1`.
    #[serde(rename = "APFSContainerReference", default)]
    pub apfs_container_reference: Option<String>,
    /// The APFS volume group (System + Data pair), if any.
    #[serde(rename = "APFSVolumeGroupID", default)]
    pub apfs_volume_group_id: Option<String>,
    /// This is an APFS snapshot (the sealed system volume is mounted as one).
    #[serde(rename = "APFSSnapshot", default)]
    pub apfs_snapshot: Option<bool>,
    /// `"Yes"`/`"No"`: a string, not a boolean. See [`DiskInfo::sealed`].
    #[serde(rename = "Sealed", default)]
    pub sealed_raw: Option<String>,
    /// The volume is encrypted.
    #[serde(default)]
    pub encryption: Option<bool>,
    /// FileVault is on.
    #[serde(default)]
    pub file_vault: Option<bool>,
    /// Internal device.
    #[serde(default)]
    pub internal: Option<bool>,
    /// Solid-state media.
    #[serde(default)]
    pub solid_state: Option<bool>,
    /// Bus, e.g. `PCI`, `USB`.
    #[serde(default)]
    pub bus_protocol: Option<String>,
    /// Media name (often empty for APFS volumes).
    #[serde(default)]
    pub media_name: Option<String>,
    /// SMART status, e.g. `Verified`.
    #[serde(rename = "SMARTStatus", default)]
    pub smart_status: Option<String>,
    /// Bytes.
    #[serde(default)]
    pub total_size: Option<u64>,
    /// Whole disk rather than a partition or volume.
    #[serde(default)]
    pub whole_disk: Option<bool>,
}

impl DiskInfo {
    /// `Sealed` as a boolean: `Some(true)` for `"Yes"`, `Some(false)` for `"No"`, `None` when
    /// absent or anything else.
    pub fn sealed(&self) -> Option<bool> {
        match self.sealed_raw.as_deref() {
            Some("Yes") => Some(true),
            Some("No") => Some(false),
            _ => None,
        }
    }

    /// True if `volume` (a device identifier such as `disk1s5`) is this device or the volume
    /// this snapshot was taken of (`disk1s5s1` is a snapshot of `disk1s5`).
    pub fn is_on_volume(&self, volume: &str) -> bool {
        self.device_identifier == volume
            || self
                .device_identifier
                .strip_prefix(volume)
                .and_then(|rest| rest.strip_prefix('s'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// `diskutil list -plist`: the whole disks and their partitions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiskList {
    /// Every whole disk (physical and synthesized), each with its partitions.
    #[serde(default)]
    pub all_disks_and_partitions: Vec<ListedDisk>,
}

/// A whole disk of `diskutil list -plist`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListedDisk {
    /// E.g. `disk0`.
    pub device_identifier: String,
    /// The partition scheme (`GUID_partition_scheme`), the APFS container type GUID for a
    /// synthesized container, or a file system on an unpartitioned disk.
    #[serde(default)]
    pub content: Option<String>,
    /// Bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// Its partitions, in order.
    #[serde(default)]
    pub partitions: Vec<ListedPartition>,
    /// For a synthesized APFS container: its volumes.
    #[serde(rename = "APFSVolumes", default)]
    pub apfs_volumes: Vec<ListedApfsVolume>,
    /// On an unpartitioned disk with a file system: its volume name.
    #[serde(default)]
    pub volume_name: Option<String>,
    /// On an unpartitioned disk with a file system: its volume UUID.
    #[serde(rename = "VolumeUUID", default)]
    pub volume_uuid: Option<String>,
}

/// A volume of a synthesized APFS container in `diskutil list -plist` (only its presence is
/// used: `apfs list` gives the details).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListedApfsVolume {
    /// E.g. `disk3s1`.
    #[serde(default)]
    pub device_identifier: Option<String>,
}

/// A partition of `diskutil list -plist`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListedPartition {
    /// E.g. `disk0s2`.
    pub device_identifier: String,
    /// The partition type (`Apple_APFS`, `Apple_APFS_ISC`, `Apple_APFS_Recovery`, `EFI`,
    /// `Microsoft Basic Data`, …).
    #[serde(default)]
    pub content: Option<String>,
    /// The partition's UUID.
    #[serde(rename = "DiskUUID", default)]
    pub disk_uuid: Option<String>,
    /// Bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// The file system's name, if it has one.
    #[serde(default)]
    pub volume_name: Option<String>,
    /// The file system's UUID, if it has one.
    #[serde(rename = "VolumeUUID", default)]
    pub volume_uuid: Option<String>,
}

/// The BSD name of a macOS device path: `/dev/rdisk4s2` → `disk4s2`, `disk0` → `disk0`;
/// `None` for anything else.
pub fn bsd_name(device: &str) -> Option<&str> {
    let name = device.strip_prefix("/dev/").unwrap_or(device);
    let name = name.strip_prefix('r').unwrap_or(name);
    let digits = name.strip_prefix("disk")?;
    digits
        .starts_with(|c: char| c.is_ascii_digit())
        .then_some(name)
}

/// The whole disk of a BSD name: `disk0s2` → `disk0`, `disk3s1s1` → `disk3`, `disk0` itself.
pub fn whole_disk(name: &str) -> &str {
    let digits = name.strip_prefix("disk").unwrap_or(name);
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    &name[..name.len() - digits.len() + end]
}

/// Parses `diskutil list -plist` output.
pub fn parse_list(bytes: &[u8]) -> Result<DiskList, ParseError> {
    plist::from_bytes(bytes).map_err(ParseError::Plist)
}

/// The error form of `diskutil … -plist` output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DiskutilError {
    /// Always true in this form.
    pub error: bool,
    /// What diskutil said, e.g. `Could not find disk: /Volumes/SMB`.
    #[serde(default)]
    pub error_message: String,
    /// diskutil's exit code.
    #[serde(default)]
    pub exit_code: i64,
}

/// Parses `diskutil apfs list -plist` output.
pub fn parse_apfs_list(bytes: &[u8]) -> Result<ApfsList, ParseError> {
    plist::from_bytes(bytes).map_err(ParseError::Plist)
}

/// Parses `diskutil info -plist` output.
pub fn parse_info(bytes: &[u8]) -> Result<DiskInfo, ParseError> {
    plist::from_bytes(bytes).map_err(ParseError::Plist)
}

/// Recognises the error form (`Error` is true); `None` for any other output.
pub fn parse_error(bytes: &[u8]) -> Option<DiskutilError> {
    plist::from_bytes::<DiskutilError>(bytes)
        .ok()
        .filter(|e| e.error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/diskutil")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    #[test]
    fn parses_the_intel_filevault_apfs_list() {
        let list = parse_apfs_list(&fixture("apfs-list-intel-filevault.plist")).unwrap();
        assert_eq!(list.containers.len(), 1);
        let c = &list.containers[0];
        assert_eq!(c.container_uuid, "C4AC89F6-8658-4857-972C-D485C213523A");
        assert_eq!(c.container_reference.as_deref(), Some("disk1"));
        assert_eq!(c.designated_physical_store.as_deref(), Some("disk0s2"));
        assert_eq!(c.capacity_ceiling, Some(499_963_174_912));
        assert_eq!(c.capacity_free, Some(30_714_478_592));
        assert_eq!(c.fusion, Some(false));
        assert_eq!(
            c.physical_stores,
            vec![PhysicalStore {
                device_identifier: "disk0s2".into(),
                disk_uuid: Some("2F978E12-5A2C-4EEB-BAE2-0E09CAEADC06".into()),
                size: Some(499_963_174_912),
            }]
        );
        let names: Vec<_> = c
            .volumes
            .iter()
            .map(|v| v.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Macintosh HD",
                "Preboot",
                "Recovery",
                "VM",
                "edenfs:/Users/wez/fbsource/buck-out",
                "edenfs:/Users/wez/fbsource/fbcode/buck-out",
                "edenfs:/Users/wez/fbsource/fbobjc/buck-out",
            ]
        );
        let hd = &c.volumes[0];
        assert_eq!(hd.volume_uuid, "9AA7F3A4-A615-4F8D-91E3-F5C86D988D71");
        assert!(hd.roles.is_empty());
        assert_eq!(hd.capacity_in_use, Some(461_308_219_392));
        assert_eq!(
            (hd.encryption, hd.file_vault, hd.locked),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(c.volumes[1].roles, ["Preboot"]);
        assert_eq!(c.volumes[1].encryption, Some(false));
        assert_eq!(c.volumes[3].roles, ["VM"]);
        assert_eq!(
            (c.volumes[3].encryption, c.volumes[3].file_vault),
            (Some(true), Some(false))
        );
    }

    #[test]
    fn parses_the_apple_silicon_isc_container_with_no_physical_store() {
        let list = parse_apfs_list(&fixture("apfs-list-apple-silicon-isc.plist")).unwrap();
        let c = &list.containers[0];
        assert_eq!(c.container_uuid, "57770A0F-0637-44E3-94BE-52D37EAFB88E");
        assert_eq!(c.capacity_ceiling, Some(524_288_000));
        assert!(c.physical_stores.is_empty());
        assert_eq!(c.volumes.len(), 2);
        assert_eq!(c.volumes[0].name.as_deref(), Some("iSCPreboot"));
        assert_eq!(c.volumes[0].roles, ["Preboot"]);
        assert_eq!(c.volumes[1].name.as_deref(), Some("xART"));
        assert_eq!(c.volumes[1].roles, ["xART"]);
        assert_eq!(c.volumes[1].file_vault, Some(true));
    }

    #[test]
    fn finds_volumes_by_uuid_case_insensitively() {
        let list = parse_apfs_list(&fixture("apfs-list-intel-filevault.plist")).unwrap();
        let (container, volume) = list
            .find_volume("0dab1407-0283-408e-88ee-cd41ce9e7bca")
            .unwrap();
        assert_eq!(container.container_reference.as_deref(), Some("disk1"));
        assert_eq!(volume.device_identifier.as_deref(), Some("disk1s6"));
        assert!(
            list.find_volume("00000000-0000-0000-0000-000000000000")
                .is_none()
        );
    }

    #[test]
    fn the_after_deletion_list_lacks_exactly_the_deleted_volume() {
        let before = parse_apfs_list(&fixture("apfs-list-intel-filevault.plist")).unwrap();
        let after = parse_apfs_list(&fixture(
            "apfs-list-intel-filevault-after-delete-disk1s6.plist",
        ))
        .unwrap();
        let mut expected = before.clone();
        expected.containers[0]
            .volumes
            .retain(|v| v.device_identifier.as_deref() != Some("disk1s6"));
        assert_eq!(after, expected);
    }

    #[test]
    fn parses_info_of_a_sealed_system_snapshot() {
        let info = parse_info(&fixture("info-root-intel-sealed.plist")).unwrap();
        assert_eq!(info.device_identifier, "disk1s5s1");
        assert_eq!(info.device_node.as_deref(), Some("/dev/disk1s5s1"));
        assert_eq!(info.mount_point.as_deref(), Some("/"));
        assert_eq!(info.apfs_container_reference.as_deref(), Some("disk1"));
        assert_eq!(info.apfs_snapshot, Some(true));
        assert_eq!(info.sealed_raw.as_deref(), Some("Yes"));
        assert_eq!(info.sealed(), Some(true));
        assert_eq!(info.solid_state, Some(true));
        assert_eq!(info.smart_status.as_deref(), Some("Verified"));
        assert_eq!(info.total_size, Some(500_068_036_608));
        assert_eq!(
            info.apfs_volume_group_id.as_deref(),
            Some("B41463C7-EA58-399D-A1E0-B032C963DC2E")
        );
        assert!(info.is_on_volume("disk1s5s1"));
        assert!(info.is_on_volume("disk1s5"));
        assert!(!info.is_on_volume("disk1s5s"));
        assert!(!info.is_on_volume("disk1s"));
        assert!(!info.is_on_volume("disk1s6"));
        assert!(!info.is_on_volume("disk1"));
    }

    #[test]
    fn parses_info_of_an_external_hfs_disk_without_apfs_keys() {
        let info = parse_info(&fixture("info-external-hfs-usb.plist")).unwrap();
        assert_eq!(info.device_identifier, "disk11s2");
        assert_eq!(info.apfs_container_reference, None);
        assert_eq!(info.sealed(), None);
        assert_eq!(info.bus_protocol.as_deref(), Some("USB"));
        assert_eq!(info.internal, Some(false));
    }

    #[test]
    fn recognises_the_error_form() {
        let bytes = fixture("error-could-not-find-disk.plist");
        assert_eq!(
            parse_error(&bytes),
            Some(DiskutilError {
                error: true,
                error_message: "Could not find disk: /Volumes/SMB".into(),
                exit_code: 1,
            })
        );
        // The error form is not mistaken for either regular output...
        assert!(parse_info(&bytes).is_err());
        // ...and regular output is not mistaken for an error.
        assert_eq!(parse_error(&fixture("info-root-intel-sealed.plist")), None);
        assert_eq!(
            parse_error(&fixture("apfs-list-intel-filevault.plist")),
            None
        );
    }

    #[test]
    fn sealed_is_a_string_and_other_values_are_unknown() {
        let doc = |sealed: &str| {
            format!(
                r#"<?xml version="1.0" encoding="UTF-8"?><plist version="1.0"><dict>
                <key>DeviceIdentifier</key><string>disk3s1s1</string>
                <key>Sealed</key>{sealed}</dict></plist>"#
            )
        };
        assert_eq!(
            parse_info(doc("<string>No</string>").as_bytes())
                .unwrap()
                .sealed(),
            Some(false)
        );
        assert_eq!(
            parse_info(doc("<string>Broken</string>").as_bytes())
                .unwrap()
                .sealed(),
            None
        );
        // A boolean where the string belongs is a shape error, not silently "sealed".
        assert!(parse_info(doc("<true/>").as_bytes()).is_err());
    }

    #[test]
    fn unknown_keys_are_ignored_and_missing_optional_keys_are_none() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?><plist version="1.0"><dict>
            <key>Containers</key><array><dict>
              <key>APFSContainerUUID</key><string>AAAA</string>
              <key>SomeFutureKey</key><dict><key>X</key><integer>1</integer></dict>
              <key>Volumes</key><array><dict>
                <key>APFSVolumeUUID</key><string>BBBB</string>
                <key>AnotherNewKey</key><true/>
              </dict></array>
            </dict></array></dict></plist>"#;
        let list = parse_apfs_list(xml).unwrap();
        let v = &list.containers[0].volumes[0];
        assert_eq!(v.volume_uuid, "BBBB");
        assert_eq!(v.device_identifier, None);
        assert!(v.roles.is_empty());
        assert!(list.containers[0].physical_stores.is_empty());
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(parse_apfs_list(b"Started APFS operation\n").is_err());
        assert!(parse_info(b"").is_err());
        assert_eq!(parse_error(b"not a plist"), None);
    }
}
