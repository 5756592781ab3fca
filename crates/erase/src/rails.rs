//! The system-device rails with the APFS map: what no erase may ever open for writing.
//!
//! [`system_devices`] is what the plan and the erase use. It starts from
//! [`SystemDevices::probe`] (the devices of `/`, `/boot`, `/boot/efi` and every mounted
//! filesystem). On macOS that is not enough: volumes mount from synthesized disks (`disk3s1s1`)
//! whose APFS container sits on a physical store of another disk (`disk0s2`), so comparing
//! names would let `/dev/rdisk0` — the internal SSD, with the iSC and recoveryOS containers —
//! pass. There it adds, by name, from `diskutil apfs list -plist` and `diskutil info -plist
//! <store>` ([`apfs_refusals`]):
//!
//! - every physical store beneath a container with a mounted volume, and so its whole disk
//!   (the booted volume group's ancestry among them);
//! - the physical stores of the iSC container (roles `xART`, `Hardware`, `iSCPreboot`), of the
//!   recoveryOS container (a `Recovery` role without a `System` one), and of any container
//!   holding a macOS volume group (`System` or `Data`), mounted or not;
//! - the whole disk of every internal physical store: the internal SSD.
//!
//! A refused whole disk refuses each of its partitions, and a refused store its whole disk
//! ([`SystemDevices::refuse_named`]). Each refusal names its reason.
//!
//! [`container_on_device`] is the other APFS check: an `apfs-volume` target's container must sit
//! on the disk its `device` overwrites, or the config pairs a volume with another disk.
//!
//! [`detach_for_overwrite`] frees a macOS disk before it is opened for writing, once its keys
//! are destroyed: an attached APFS container keeps a raw disk busy (`EBUSY`) even after its
//! volume is deleted, so the containers on it are deleted and whatever is mounted on it is
//! unmounted ([`detach_plan`]), then the disk is checked free.

use std::collections::BTreeMap;
use std::path::Path;

use jex_platform::blockdev::SystemDevices;
use jex_reclaim::diskutil::{self, ApfsContainer, ApfsList, DiskInfo};

use crate::error::EraseError;

pub use jex_reclaim::diskutil::{bsd_name, whole_disk};

/// Every physical store of `container` (designated first), without duplicates.
fn stores_of(container: &ApfsContainer) -> Vec<&str> {
    let mut stores: Vec<&str> = container
        .designated_physical_store
        .iter()
        .map(String::as_str)
        .collect();
    for store in &container.physical_stores {
        if !stores.contains(&store.device_identifier.as_str()) {
            stores.push(&store.device_identifier);
        }
    }
    stores
}

/// Why the stores of `container` must never be overwritten, if they must not: `mounted` are
/// the BSD names of mounted devices (`disk3s1s1`, `disk3s5`).
fn container_reason(container: &ApfsContainer, mounted: &[String]) -> Option<String> {
    let reference = container
        .container_reference
        .as_deref()
        .unwrap_or(&container.container_uuid);
    let is_inside = |volume: &str, device: &str| {
        device == volume
            || device
                .strip_prefix(volume)
                .is_some_and(|rest| rest.starts_with('s'))
    };
    for volume in &container.volumes {
        if let Some(device) = &volume.device_identifier
            && let Some(m) = mounted.iter().find(|m| is_inside(device, m))
        {
            return Some(format!(
                "it holds APFS container {reference}, whose volume {device} is mounted ({m})"
            ));
        }
    }
    let has = |role: &str| {
        container
            .volumes
            .iter()
            .any(|v| v.roles.iter().any(|r| r == role))
    };
    if has("xART") || has("Hardware") || has("iSCPreboot") {
        return Some(format!(
            "it holds the iSC container {reference} (Secure Enclave anti-replay and firmware data: an Apple silicon Mac does not boot without it)"
        ));
    }
    if has("System") || has("Data") {
        return Some(format!(
            "it holds APFS container {reference} with a macOS volume group (System and Data volumes)"
        ));
    }
    if has("Recovery") {
        return Some(format!("it holds the recoveryOS container {reference}"));
    }
    None
}

/// The disks the APFS map refuses, as `(/dev/diskN…, reason)`: see the module documentation.
/// `stores` is `diskutil info -plist` of each physical store, by BSD name; a store without one
/// is still refused when its container is, and its whole disk is then taken from its name.
pub fn apfs_refusals(
    list: &ApfsList,
    stores: &BTreeMap<String, DiskInfo>,
    mounted: &[String],
) -> Vec<(String, String)> {
    let mut refused: Vec<(String, String)> = Vec::new();
    let mut push = |device: String, reason: String| {
        if !refused.iter().any(|(d, _)| *d == device) {
            refused.push((device, reason));
        }
    };
    for container in &list.containers {
        let reason = container_reason(container, mounted);
        for store in stores_of(container) {
            let info = stores.get(store);
            if info.and_then(|i| i.internal) == Some(true) {
                let whole = info
                    .and_then(|i| i.parent_whole_disk.as_deref())
                    .unwrap_or_else(|| whole_disk(store));
                push(
                    format!("/dev/{whole}"),
                    format!(
                        "it is the internal SSD ({whole}, holding physical store {store}): the device erase, not the agent, erases it"
                    ),
                );
            }
            if let Some(reason) = &reason {
                push(
                    format!("/dev/{store}"),
                    format!("{reason}; {store} is its physical store"),
                );
            }
        }
    }
    refused
}

/// Checks that the container of the APFS volume `volume_uuid` sits on the disk of `device`
/// (same whole disk as one of its physical stores); the error says which disks it does sit on.
pub fn container_on_device(
    list: &ApfsList,
    volume_uuid: &str,
    device: &Path,
) -> Result<(), String> {
    let device_text = device.to_string_lossy();
    let Some(target) = bsd_name(&device_text) else {
        return Err(format!(
            "{} is not a macOS disk (/dev/diskN or /dev/rdiskN)",
            device.display()
        ));
    };
    let Some((container, _)) = list.find_volume(volume_uuid) else {
        return Err(format!(
            "APFS volume {volume_uuid} is not listed by diskutil"
        ));
    };
    let disks: Vec<&str> = stores_of(container).into_iter().map(whole_disk).collect();
    if disks.contains(&whole_disk(target)) {
        Ok(())
    } else {
        Err(format!(
            "APFS volume {volume_uuid} is in container {} on {}, not on {}: the target's device must be the disk its volume is on",
            container
                .container_reference
                .as_deref()
                .unwrap_or(&container.container_uuid),
            if disks.is_empty() {
                "no listed disk".to_owned()
            } else {
                disks.join(", ")
            },
            device.display()
        ))
    }
}

/// [`container_on_device`] for `target` if it is an `apfs-volume` target and the APFS `map`
/// was read (on macOS, by [`system_devices_and_map`]); `None` otherwise.
pub fn check_target_container(
    map: Option<&ApfsList>,
    target: &crate::config::TargetConfig,
) -> Option<Result<String, String>> {
    let crate::config::TargetKeys::ApfsVolume { apfs_volume_uuid } = &target.keys else {
        return None;
    };
    let map = map?;
    Some(
        container_on_device(map, apfs_volume_uuid, &target.device).map(|()| {
            format!(
                "APFS volume {apfs_volume_uuid} is on the disk of {}",
                target.device.display()
            )
        }),
    )
}

/// The rails for this host: [`SystemDevices::probe`], and on macOS the APFS map read with the
/// `diskutil` at `diskutil` (a failure to read it fails the rails: nothing is opened blind).
pub fn system_devices(diskutil_path: &Path) -> Result<SystemDevices, EraseError> {
    system_devices_and_map(diskutil_path).map(|(system, _)| system)
}

/// [`system_devices`], also returning the APFS map it read (macOS only), so that the callers
/// check `apfs-volume` targets against the same `diskutil apfs list` rather than a second one.
pub fn system_devices_and_map(
    diskutil_path: &Path,
) -> Result<(SystemDevices, Option<ApfsList>), EraseError> {
    let mut system = SystemDevices::probe().map_err(|source| EraseError::Target {
        target: "(mount table)".into(),
        source,
    })?;
    if jex_platform::OS != jex_platform::Os::MacOs {
        return Ok((system, None));
    }
    let list = read_apfs_list(diskutil_path)?;
    let mounted: Vec<String> = system
        .mounted_devices()
        .filter_map(|p| bsd_name(&p.to_string_lossy()).map(str::to_owned))
        .collect();
    let mut stores = BTreeMap::new();
    for container in &list.containers {
        for store in stores_of(container) {
            if !stores.contains_key(store) {
                let out = run_diskutil(diskutil_path, &["info", "-plist", store])?;
                let info = diskutil::parse_info(&out).map_err(|err| rails_error(&err))?;
                stores.insert(store.to_owned(), info);
            }
        }
    }
    for (device, reason) in apfs_refusals(&list, &stores, &mounted) {
        system.refuse_named(&device, &reason);
    }
    Ok((system, Some(list)))
}

/// One step that frees a macOS disk before it is opened for writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetachStep {
    /// `diskutil apfs deleteContainer <container>`: an attached APFS container on the disk
    /// keeps it busy (`EBUSY`) even with no volume mounted; its keys are destroyed by then.
    DeleteContainer {
        /// The container reference (`disk5`), or its UUID when unreferenced.
        container: String,
        /// Its physical store on the target (`disk4s2`).
        store: String,
    },
    /// `diskutil unmountDisk force /dev/<disk>`: something on the disk is mounted.
    UnmountDisk {
        /// The whole disk (`disk4`).
        disk: String,
    },
}

/// What must be done so that nothing on `device` (`/dev/rdisk4`, `/dev/disk4s2`) is attached:
/// unmount its whole disk when a mounted device lies on it, and delete every APFS container
/// with a physical store on it. Empty when the disk is free. `mounted` are the BSD names of
/// mounted devices.
pub fn detach_plan(list: &ApfsList, mounted: &[String], device: &Path) -> Vec<DetachStep> {
    let device_text = device.to_string_lossy();
    let Some(target) = bsd_name(&device_text) else {
        return Vec::new();
    };
    let on_target = |name: &str| {
        jex_platform::blockdev::macos_same_disk(&format!("/dev/{target}"), &format!("/dev/{name}"))
    };
    let mut steps = Vec::new();
    let mut containers = Vec::new();
    for container in &list.containers {
        if let Some(store) = stores_of(container).into_iter().find(|s| on_target(s)) {
            let reference = container
                .container_reference
                .clone()
                .unwrap_or_else(|| container.container_uuid.clone());
            containers.push((reference, store.to_owned()));
        }
    }
    let container_refs: Vec<&str> = containers.iter().map(|(r, _)| r.as_str()).collect();
    let mounted_here = mounted.iter().any(|m| {
        on_target(m)
            || container_refs
                .iter()
                .any(|r| m == r || m.strip_prefix(r).is_some_and(|rest| rest.starts_with('s')))
    });
    if mounted_here {
        steps.push(DetachStep::UnmountDisk {
            disk: whole_disk(target).to_owned(),
        });
    }
    steps.extend(
        containers
            .into_iter()
            .map(|(container, store)| DetachStep::DeleteContainer { container, store }),
    );
    steps
}

/// On macOS, frees the disk of a device target before it is opened for writing
/// ([`detach_plan`], run with the `diskutil` at `diskutil_path`), then checks that nothing on
/// it is still attached; elsewhere (and for files) nothing to do. Repeating it after a crash
/// finds the disk already free.
pub fn detach_for_overwrite(diskutil_path: &Path, device: &Path) -> Result<(), EraseError> {
    if jex_platform::OS != jex_platform::Os::MacOs || bsd_name(&device.to_string_lossy()).is_none()
    {
        return Ok(());
    }
    let now = || -> Result<Vec<DetachStep>, EraseError> {
        let list = read_apfs_list(diskutil_path)?;
        let system = SystemDevices::probe().map_err(|source| EraseError::Target {
            target: "(mount table)".into(),
            source,
        })?;
        let mounted: Vec<String> = system
            .mounted_devices()
            .filter_map(|p| bsd_name(&p.to_string_lossy()).map(str::to_owned))
            .collect();
        Ok(detach_plan(&list, &mounted, device))
    };
    for step in now()? {
        let args: Vec<String> = match &step {
            DetachStep::DeleteContainer { container, .. } => {
                vec!["apfs".into(), "deleteContainer".into(), container.clone()]
            }
            DetachStep::UnmountDisk { disk } => {
                vec!["unmountDisk".into(), "force".into(), format!("/dev/{disk}")]
            }
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_diskutil(diskutil_path, &args)?;
        tracing::info!(device = %device.display(), step = ?step, "detached before the overwrite");
    }
    let left = now()?;
    if left.is_empty() {
        Ok(())
    } else {
        Err(EraseError::Rails {
            detail: format!(
                "{} is still attached after detaching it ({left:?}): eject everything on it, then resume",
                device.display()
            ),
        })
    }
}

/// `diskutil apfs list -plist`, parsed.
pub fn read_apfs_list(diskutil_path: &Path) -> Result<ApfsList, EraseError> {
    let out = run_diskutil(diskutil_path, &["apfs", "list", "-plist"])?;
    diskutil::parse_apfs_list(&out).map_err(|err| rails_error(&err))
}

/// How long one `diskutil` query of the rails may take.
const DISKUTIL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn run_diskutil(diskutil_path: &Path, args: &[&str]) -> Result<Vec<u8>, EraseError> {
    let shown = || format!("{} {}", diskutil_path.display(), args.join(" "));
    let out = jex_platform::process::run(diskutil_path, args, DISKUTIL_TIMEOUT).map_err(|err| {
        EraseError::Rails {
            detail: format!("running {}: {}", shown(), jex_platform::error_chain(&err)),
        }
    })?;
    if !out.status.success() {
        return Err(EraseError::Rails {
            detail: format!("{}: {}", shown(), out.failure_summary()),
        });
    }
    Ok(out.stdout)
}

fn rails_error(err: &diskutil::ParseError) -> EraseError {
    EraseError::Rails {
        detail: format!("the APFS map: {}", jex_platform::error_chain(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(name: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../reclaim/tests/fixtures/diskutil")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn bsd_names_and_whole_disks() {
        assert_eq!(bsd_name("/dev/rdisk4"), Some("disk4"));
        assert_eq!(bsd_name("/dev/disk3s1s1"), Some("disk3s1s1"));
        assert_eq!(bsd_name("disk0s2"), Some("disk0s2"));
        for other in ["/dev/sda", "/dev/diskette", "/dev/rdisk", "/tmp/disk.img"] {
            assert_eq!(bsd_name(other), None, "{other}");
        }
        assert_eq!(whole_disk("disk0s2"), "disk0");
        assert_eq!(whole_disk("disk12s3s1"), "disk12");
        assert_eq!(whole_disk("disk7"), "disk7");
    }

    #[test]
    fn the_captured_intel_list_refuses_the_mounted_containers_store_and_the_internal_disk() {
        let list = diskutil::parse_apfs_list(&capture("apfs-list-intel-filevault.plist")).unwrap();
        let internal = diskutil::parse_info(&capture("info-root-intel-sealed.plist")).unwrap();
        // The captured container disk1 sits on disk0s2; its volume disk1s5 is mounted (as the
        // sealed snapshot disk1s5s1 of the info capture).
        let stores = BTreeMap::from([(
            "disk0s2".to_owned(),
            DiskInfo {
                parent_whole_disk: Some("disk0".into()),
                ..internal
            },
        )]);
        let refused = apfs_refusals(&list, &stores, &["disk1s5s1".into()]);
        let devices: Vec<&str> = refused.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(devices, ["/dev/disk0", "/dev/disk0s2"]);
        assert!(refused[0].1.contains("internal SSD"), "{}", refused[0].1);
        assert!(
            refused[1].1.contains("disk1s5 is mounted (disk1s5s1)"),
            "{}",
            refused[1].1
        );

        let mut system = SystemDevices::from_parts(&[], &[]);
        for (device, reason) in &refused {
            system.refuse_named(device, reason);
        }
        let identity = jex_platform::blockdev::TargetIdentity {
            kind: jex_platform::blockdev::TargetKind::Device,
            dev: 0,
            ino: 0,
            rdev: 1,
            size_bytes: 0,
            serial: None,
        };
        for path in ["/dev/rdisk0", "/dev/rdisk0s2", "/dev/rdisk0s1"] {
            assert!(
                system.refusal(Path::new(path), &identity).is_some(),
                "{path}"
            );
        }
        assert_eq!(system.refusal(Path::new("/dev/rdisk4"), &identity), None);
    }

    #[test]
    fn the_captured_isc_container_is_refused_even_when_nothing_on_it_is_mounted() {
        let list =
            diskutil::parse_apfs_list(&capture("apfs-list-apple-silicon-isc.plist")).unwrap();
        let refused = apfs_refusals(&list, &BTreeMap::new(), &[]);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].0, "/dev/disk0s1");
        assert!(refused[0].1.contains("iSC container"), "{}", refused[0].1);
    }

    #[test]
    fn detaching_deletes_the_containers_on_the_target_and_unmounts_what_is_mounted() {
        let list = diskutil::parse_apfs_list(&capture("apfs-list-intel-filevault.plist")).unwrap();
        // The captured container disk1 sits on disk0s2.
        assert_eq!(
            detach_plan(&list, &[], Path::new("/dev/rdisk0")),
            [DetachStep::DeleteContainer {
                container: "disk1".into(),
                store: "disk0s2".into()
            }]
        );
        assert_eq!(
            detach_plan(&list, &["disk1s5s1".into()], Path::new("/dev/rdisk0s2")),
            [
                DetachStep::UnmountDisk {
                    disk: "disk0".into()
                },
                DetachStep::DeleteContainer {
                    container: "disk1".into(),
                    store: "disk0s2".into()
                }
            ]
        );
        // Another disk, or another partition of the same disk: nothing to do.
        assert!(detach_plan(&list, &["disk1s5s1".into()], Path::new("/dev/rdisk4")).is_empty());
        assert!(detach_plan(&list, &[], Path::new("/dev/rdisk0s3")).is_empty());
        assert!(detach_plan(&list, &[], Path::new("/tmp/disk.img")).is_empty());
        // Off macOS the engine never runs it.
        if jex_platform::OS != jex_platform::Os::MacOs {
            detach_for_overwrite(Path::new("/nonexistent/diskutil"), Path::new("/dev/rdisk0"))
                .unwrap();
        }
    }

    #[test]
    fn an_external_data_only_container_that_is_not_mounted_is_allowed() {
        // Model (not a capture): one external container with one roleless volume, unmounted.
        let list = diskutil::parse_apfs_list(
            br#"<?xml version="1.0" encoding="UTF-8"?>
<plist version="1.0"><dict><key>Containers</key><array><dict>
<key>APFSContainerUUID</key><string>C0</string>
<key>ContainerReference</key><string>disk5</string>
<key>DesignatedPhysicalStore</key><string>disk4s2</string>
<key>PhysicalStores</key><array><dict><key>DeviceIdentifier</key><string>disk4s2</string></dict></array>
<key>Volumes</key><array><dict>
<key>APFSVolumeUUID</key><string>V0</string><key>DeviceIdentifier</key><string>disk5s1</string>
<key>Roles</key><array/></dict></array>
</dict></array></dict></plist>"#,
        )
        .unwrap();
        let external = DiskInfo {
            internal: Some(false),
            ..diskutil::parse_info(&capture("info-external-hfs-usb.plist")).unwrap()
        };
        let stores = BTreeMap::from([("disk4s2".to_owned(), external)]);
        assert!(apfs_refusals(&list, &stores, &["disk3s1s1".into()]).is_empty());
        // Mounted, it is refused.
        let refused = apfs_refusals(&list, &stores, &["disk5s1".into()]);
        assert_eq!(refused[0].0, "/dev/disk4s2");

        container_on_device(&list, "V0", Path::new("/dev/rdisk4")).unwrap();
        container_on_device(&list, "v0", Path::new("/dev/disk4s2")).unwrap();
        let err = container_on_device(&list, "V0", Path::new("/dev/rdisk6")).unwrap_err();
        assert!(err.contains("on disk4, not on /dev/rdisk6"), "{err}");
        let err = container_on_device(&list, "V9", Path::new("/dev/rdisk4")).unwrap_err();
        assert!(err.contains("not listed"), "{err}");
        let err = container_on_device(&list, "V0", Path::new("/tmp/x.img")).unwrap_err();
        assert!(err.contains("not a macOS disk"), "{err}");
    }
}
