//! The prepare half of a device erase (`[erase.internal_ssd]`, method `device-erase`): once
//! the operation's own targets are certified (or at once when it has none), the host's storage
//! inventory is taken, written into a prepare record with the operation id, the controller's
//! nonce and the Terminate's time, signed by this agent's key, and journaled as
//! `awaiting_device_erase`. The operation ends there on this agent: the controller erases the
//! device (Apple EACS through MDM `EraseDevice`, or a DFU restore) and the agent of the fresh
//! OS attests it against the record. The record is informative, not proof: this key lived
//! where the tenant had root.
//!
//! On a Mac, the prepare first deletes the internal volumes the tenant added (no Apple role:
//! Erase All Content and Settings would leave them), then takes the inventory it records.
//!
//! The inventory comes from [`jex_reclaim`]: on a Mac, every APFS volume, SIP, FileVault,
//! Activation Lock and the local accounts ([`jex_reclaim::macos`]); on Linux, the LUKS2 UUIDs
//! of the configured `inventory_devices` and the accounts of `accounts_file`; other systems
//! have none and the operation fails with a message that says so.

use std::path::Path;

use crate::config::{InternalSsdConfig, ToolsConfig};
use crate::error::EraseError;
use crate::keys::KeyDestroyer;
use crate::keys::apfs::ApfsVolume;
use crate::record::{Record, RequestedRecord, StoredPrepareRecord};
use jex_attest::{HostIdentity, Signer};
use jex_reclaim::{InventorySource, PrepareRecord, sign_prepare};

/// The inventory source of `ssd` on this platform: the Mac's (`diskutil` and the other system
/// tools at their fixed paths) or Linux's (the configured LUKS2 devices and accounts file).
fn inventory_source(
    ssd: &InternalSsdConfig,
    tools: &ToolsConfig,
    host: &HostIdentity,
) -> Result<Box<dyn InventorySource>, EraseError> {
    use jex_reclaim::linux::{LinuxInventory, LuksDevice};
    match jex_platform::OS {
        jex_platform::Os::MacOs => Ok(Box::new(jex_reclaim::macos::MacInventory::new(
            reclaim_host(host),
        ))),
        jex_platform::Os::Linux => {
            let devices = ssd
                .inventory_devices
                .iter()
                .enumerate()
                .map(|(index, device)| LuksDevice {
                    name: format!("internal-ssd-{index}"),
                    device: device.clone(),
                })
                .collect();
            Ok(Box::new(
                LinuxInventory::new(reclaim_host(host), devices)
                    .with_cryptsetup(&tools.cryptsetup)
                    .with_passwd(&ssd.accounts_file),
            ))
        }
        jex_platform::Os::Other => Err(EraseError::DeviceErase {
            detail: "this system has no storage inventory: remove [erase.internal_ssd] from the \
                     config"
                .into(),
        }),
    }
}

/// The host's storage inventory now, stamped `now_unix_ms`.
pub(crate) fn take_inventory(
    ssd: &InternalSsdConfig,
    tools: &ToolsConfig,
    host: &HostIdentity,
    now_unix_ms: u64,
) -> Result<jex_reclaim::Inventory, EraseError> {
    inventory_source(ssd, tools, host)?
        .take(now_unix_ms)
        .map_err(|err| EraseError::DeviceErase {
            detail: format!(
                "taking the storage inventory: {}",
                jex_platform::error_chain(&err)
            ),
        })
}

/// Deletes, with `diskutil apfs deleteVolume`, every volume of a Mac `inventory` the tenant
/// added on internal storage ([`jex_reclaim::macos::tenant_added_volumes`]): Erase All Content
/// and Settings leaves such volumes in place, and deleting one discards its Secure Enclave
/// wrapped key. Each goes through the `apfs-volume` backend's rails, checked again right before
/// its deletion (never a system role, never the volume mounted at `/` or a snapshot of it; one
/// already gone is a no-op, so a resumed prepare repeats this safely). Returns the UUIDs
/// deleted; the first refusal or failure stops and fails the prepare.
pub(crate) fn delete_added_volumes(
    inventory: &jex_reclaim::Inventory,
    diskutil: &Path,
) -> Result<Vec<String>, EraseError> {
    let mut deleted = Vec::new();
    for volume in jex_reclaim::macos::tenant_added_volumes(inventory) {
        let backend = ApfsVolume::new(
            format!("added volume {} ({})", volume.uuid, volume.name),
            &volume.uuid,
            diskutil,
        )
        .and_then(|backend| backend.destroy().map(|()| backend))
        .map_err(|err| EraseError::DeviceErase {
            detail: format!(
                "deleting a volume the tenant added: {}",
                jex_platform::error_chain(&err)
            ),
        })?;
        deleted.push(backend.volume_uuid().to_owned());
    }
    Ok(deleted)
}

/// The host's identity as the inventory names it.
pub(crate) fn reclaim_host(host: &HostIdentity) -> jex_reclaim::HostIdentity {
    jex_reclaim::HostIdentity {
        host_id: host.host_id.clone(),
        hardware_uuid: host.hardware_uuid.clone(),
        serial_number: host.serial_number.clone(),
    }
}

/// The `awaiting_device_erase` record of `requested`: the inventory now, in a prepare record
/// signed by `signer`.
pub(crate) fn prepare(
    requested: &RequestedRecord,
    ssd: &InternalSsdConfig,
    tools: &ToolsConfig,
    host: &HostIdentity,
    signer: &dyn Signer,
    now_unix_ms: u64,
) -> Result<Record, EraseError> {
    let mut inventory = take_inventory(ssd, tools, host, now_unix_ms)?;
    if jex_platform::OS == jex_platform::Os::MacOs
        && !delete_added_volumes(&inventory, Path::new(crate::config::DISKUTIL))?.is_empty()
    {
        // The record shows the host as the device erase will find it.
        inventory = take_inventory(ssd, tools, host, now_unix_ms)?;
    }
    let nonce = hex::decode(&requested.nonce_hex).map_err(|_| EraseError::DeviceErase {
        detail: "the journaled nonce is not hex".into(),
    })?;
    let record = PrepareRecord::new(
        requested.operation_id.clone(),
        requested.host_id.clone(),
        &nonce,
        requested.started_unix_ms,
        inventory,
        now_unix_ms,
    )
    .with_request_id(requested.request_id.clone());
    let signed = sign_prepare(&record, signer).map_err(|err| EraseError::DeviceErase {
        detail: format!(
            "signing the prepare record: {}",
            jex_platform::error_chain(&err)
        ),
    })?;
    Ok(Record::AwaitingDeviceErase {
        operation_id: requested.operation_id.clone(),
        prepare: StoredPrepareRecord::from_signed(&signed),
        finished_unix_ms: now_unix_ms,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    use jex_reclaim::{HostIdentity, Inventory, Volume, VolumeRole};

    use super::*;

    /// Volumes of the captured Intel list the fake diskutil replays.
    const EDEN_FBCODE: &str = "0DAB1407-0283-408E-88EE-CD41CE9E7BCA"; // disk1s6, deletable
    const EDEN_BUCK_OUT: &str = "6C7EEDAD-385B-49AB-857B-AD15D98D13ED"; // disk1s5, `/` there
    const PREBOOT: &str = "A91FD4EA-684D-4122-9ACD-27E1465E99F6"; // disk1s2

    /// The fake diskutil of `tests/fixtures/diskutil/`, replaying the captured Intel list.
    fn fake_diskutil() -> (tempfile::TempDir, PathBuf) {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let captures = manifest.join("../reclaim/tests/fixtures/diskutil");
        let dir = tempfile::tempdir().unwrap();
        symlink(
            manifest.join("tests/fixtures/diskutil/diskutil"),
            dir.path().join("diskutil"),
        )
        .unwrap();
        for (link, capture) in [
            ("list.plist", "apfs-list-intel-filevault.plist"),
            (
                "list-after.plist",
                "apfs-list-intel-filevault-after-delete-disk1s6.plist",
            ),
            ("info-root.plist", "info-root-intel-sealed.plist"),
        ] {
            symlink(captures.join(capture), dir.path().join(link)).unwrap();
        }
        std::fs::write(dir.path().join("deletable-uuid"), EDEN_FBCODE).unwrap();
        let program = dir.path().join("diskutil");
        (dir, program)
    }

    fn inventory(volumes: &[(&str, VolumeRole, bool)]) -> Inventory {
        let volumes = volumes
            .iter()
            .map(|(uuid, role, internal)| {
                let mut v = Volume::new(*uuid, "v", role.clone());
                v.internal = *internal;
                // Listed by `diskutil apfs list` (the Intel capture's container disk1).
                v.container_uuid = Some("container-of-disk1".into());
                v
            })
            .collect();
        let host = HostIdentity {
            host_id: "h".into(),
            hardware_uuid: "hw".into(),
            serial_number: "sn".into(),
        };
        Inventory::new(host, 1, volumes, vec![])
    }

    fn calls(dir: &tempfile::TempDir) -> String {
        std::fs::read_to_string(dir.path().join("calls.log")).unwrap_or_default()
    }

    #[test]
    fn deletes_the_tenants_added_internal_volume_and_nothing_else() {
        let (dir, diskutil) = fake_diskutil();
        let inv = inventory(&[
            (EDEN_FBCODE, VolumeRole::None, true),
            (PREBOOT, VolumeRole::Preboot, true),
            (EDEN_BUCK_OUT, VolumeRole::None, false),
        ]);
        let deleted = delete_added_volumes(&inv, &diskutil).unwrap();
        assert_eq!(deleted, [EDEN_FBCODE]);
        let log = calls(&dir);
        assert_eq!(log.matches("apfs deleteVolume").count(), 1, "{log}");
        assert!(
            log.contains(&format!("apfs deleteVolume {EDEN_FBCODE}")),
            "{log}"
        );
        // Again (a resumed prepare): the volume is gone, nothing more is deleted.
        assert_eq!(
            delete_added_volumes(&inv, &diskutil).unwrap(),
            [EDEN_FBCODE]
        );
        assert_eq!(calls(&dir).matches("apfs deleteVolume").count(), 1);
    }

    #[test]
    fn the_booted_volume_is_refused_even_without_a_role() {
        let (dir, diskutil) = fake_diskutil();
        let inv = inventory(&[(EDEN_BUCK_OUT, VolumeRole::None, true)]);
        let err = delete_added_volumes(&inv, &diskutil).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(EDEN_BUCK_OUT), "{text}");
        assert!(!calls(&dir).contains("deleteVolume"), "{}", calls(&dir));
    }
}
