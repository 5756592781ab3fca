//! The prepare half of a device erase (`[erase.internal_ssd]`, method `device-erase`): once
//! the operation's own targets are certified (or at once when it has none), the host's storage
//! inventory is taken, written into a prepare record with the operation id, the controller's
//! nonce and the Terminate's time, signed by this agent's key, and journaled as
//! `awaiting_device_erase`. The operation ends there on this agent: the controller erases the
//! device (Apple EACS through MDM `EraseDevice`, or a DFU restore) and the agent of the fresh
//! OS attests it against the record. The record is informative, not proof: this key lived
//! where the tenant had root.
//!
//! The inventory comes from [`jex_reclaim`]: on a Mac, every APFS volume, SIP, FileVault,
//! Activation Lock and the local accounts ([`jex_reclaim::macos`]); on Linux, the LUKS2 UUIDs
//! of the configured `inventory_devices` and the accounts of `accounts_file`; other systems
//! have none and the operation fails with a message that says so.

use crate::config::{InternalSsdConfig, ToolsConfig};
use crate::error::EraseError;
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
    let inventory = take_inventory(ssd, tools, host, now_unix_ms)?;
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
