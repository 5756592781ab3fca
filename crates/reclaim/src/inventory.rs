//! The storage inventory of a host: what could hold a tenant's data, and the state that decides
//! whether the host can be rented again, at one moment.
//!
//! The prepare half records one in the tenant's OS at `Terminate`; the attest half takes another
//! in the fresh OS after the device erase; [`crate::rules`] compares the two. The type is
//! platform-neutral:
//!
//! - on a Mac every APFS volume of the internal SSD and of attached disks is a [`Volume`] with
//!   its APFS [`VolumeRole`], container, physical store and Secure Enclave backing; SIP,
//!   FileVault and Activation Lock are known (`Some`);
//! - on Linux every LUKS2 header (its UUID) or filesystem (its UUID) of a configured disk is a
//!   [`Volume`] with role [`VolumeRole::None`] and `internal` true; SIP and Activation Lock do
//!   not exist there and are `None` (not applicable); FileVault's counterpart is not recorded.
//!
//! # Invariants and format
//!
//! - Deterministic order: [`Inventory::normalized`] sorts volumes by UUID (compared
//!   case-insensitively, then as written) and accounts by name, without duplicates. The
//!   constructors of this crate and [`crate::prepare::sign_prepare`] always normalise, so the
//!   same host state gives the same bytes.
//! - Serde field names are stable snake_case; roles are snake_case strings (`"data"`, `"vm"`,
//!   `"isc_preboot"`, `{"other":"…"}`); unknown members are refused when reading.
//! - UUIDs are kept as the tool printed them; every comparison goes through [`uuid_key`]
//!   (ASCII lowercase), because Apple prints UUIDs in upper case and Linux tools in lower case,
//!   and a case difference must never make a surviving volume look new.
//!
//! ```
//! use jex_reclaim::inventory::{HostIdentity, Inventory, Volume, VolumeRole};
//! let inventory = Inventory::new(
//!     HostIdentity {
//!         host_id: "h-1".into(),
//!         hardware_uuid: "4C4C4544-0042-3510-8048-B4C04F4A4E32".into(),
//!         serial_number: "C02XK0AAJGH5".into(),
//!     },
//!     1_765_000_000_000,
//!     vec![Volume::new("7A1B0E2C-5D1F-4C59-9A0B-0D6E5C3F1A22", "Data", VolumeRole::Data)],
//!     vec!["admin".into()],
//! );
//! assert_eq!(inventory.volumes[0].role, VolumeRole::Data);
//! ```

use serde::{Deserialize, Serialize};

/// Who the host is: the same three facts as the certificate's host identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostIdentity {
    /// The fleet's id of the host (from the agent's certificate).
    pub host_id: String,
    /// The hardware UUID (`IOPlatformUUID` on a Mac, `/sys/class/dmi/id/product_uuid` on Linux).
    pub hardware_uuid: String,
    /// The serial number of the machine.
    pub serial_number: String,
}

/// The role APFS gives a volume (`diskutil apfs list -plist`, key `Roles`), or none.
///
/// Apple's system roles are those Erase All Content and Settings leaves in place with their
/// UUIDs ([`VolumeRole::is_apple_system_role`]); Data and VM are recreated; anything else is the
/// tenant's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeRole {
    /// The sealed, read-only OS volume (`System`).
    System,
    /// The writable volume of the boot volume group, where a tenant's data lives (`Data`).
    Data,
    /// Boot files per OS installation (`Preboot`).
    Preboot,
    /// recoveryOS (`Recovery`).
    Recovery,
    /// Swap and sleep images (`VM`).
    Vm,
    /// Software update staging (`Update`).
    Update,
    /// The Secure Enclave's anti-replay storage (`xART`).
    Xart,
    /// Firmware and hardware data of the iSC container (`Hardware`).
    Hardware,
    /// The iSC container's preboot volume (`iSCPreboot`).
    IscPreboot,
    /// No role: a volume a user made, or any volume on Linux.
    None,
    /// A role this crate does not know, as the tool spelled it. It counts as a tenant volume.
    Other(String),
}

impl VolumeRole {
    /// The role for one of the strings `diskutil` writes under `Roles` (`"Data"`, `"VM"`,
    /// `"xART"`, `"iSCPreboot"`, …); an empty string is [`VolumeRole::None`], an unknown one
    /// [`VolumeRole::Other`]. Matching is exact: Apple's spelling is the contract.
    pub fn from_apple(role: &str) -> Self {
        match role {
            "System" => Self::System,
            "Data" => Self::Data,
            "Preboot" => Self::Preboot,
            "Recovery" => Self::Recovery,
            "VM" => Self::Vm,
            "Update" => Self::Update,
            "xART" => Self::Xart,
            "Hardware" => Self::Hardware,
            "iSCPreboot" => Self::IscPreboot,
            "" => Self::None,
            other => Self::Other(other.to_owned()),
        }
    }

    /// Apple's spelling of the role, as `diskutil` writes it (`"none"` and the tool's own text
    /// for the last two).
    pub fn as_apple(&self) -> &str {
        match self {
            Self::System => "System",
            Self::Data => "Data",
            Self::Preboot => "Preboot",
            Self::Recovery => "Recovery",
            Self::Vm => "VM",
            Self::Update => "Update",
            Self::Xart => "xART",
            Self::Hardware => "Hardware",
            Self::IscPreboot => "iSCPreboot",
            Self::None => "none",
            Self::Other(other) => other,
        }
    }

    /// Whether this is one of Apple's system roles, which keep their volume (and UUID) through
    /// Erase All Content and Settings and never hold a tenant's data: System, Preboot, Recovery,
    /// Update, xART, Hardware, iSCPreboot.
    pub fn is_apple_system_role(&self) -> bool {
        matches!(
            self,
            Self::System
                | Self::Preboot
                | Self::Recovery
                | Self::Update
                | Self::Xart
                | Self::Hardware
                | Self::IscPreboot
        )
    }

    /// Whether a freshly erased Mac has volumes of this role: the system roles, Data and VM.
    pub fn is_apple_standard_role(&self) -> bool {
        self.is_apple_system_role() || matches!(self, Self::Data | Self::Vm)
    }
}

impl std::fmt::Display for VolumeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_apple())
    }
}

/// One volume: an APFS volume on a Mac, a LUKS2 header or a filesystem on Linux.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// The volume's UUID (APFS volume UUID, LUKS2 UUID, filesystem UUID), as the tool printed it.
    pub uuid: String,
    /// The volume's name (APFS name; on Linux the configured target name).
    pub name: String,
    /// The APFS role; [`VolumeRole::None`] on Linux.
    pub role: VolumeRole,
    /// The UUID of the APFS container holding it; `None` on Linux.
    pub container_uuid: Option<String>,
    /// The UUID of the APFS volume group it belongs to (System and Data of one OS), if any.
    pub volume_group_uuid: Option<String>,
    /// The physical store or device it sits on (`disk0s2`, `/dev/sdb`, an image file).
    pub physical_store: Option<String>,
    /// Its size in bytes, when the source says (APFS volumes share their container's space and
    /// may report none).
    pub size_bytes: Option<u64>,
    /// Whether its content is encrypted (APFS `Encryption`, always true for LUKS2).
    pub encrypted: bool,
    /// Whether it is on internal storage: on a Mac, the internal SSD, whose volume keys the
    /// Secure Enclave holds (so deleting the volume or EACS destroys them); on Linux, a disk
    /// built into the host.
    pub internal: bool,
    /// When the volume was created, Unix milliseconds, if the source says.
    pub created_unix_ms: Option<u64>,
    /// For a System volume, whether it is sealed (signed system volume); `None` otherwise or
    /// when unknown.
    pub sealed: Option<bool>,
}

impl Volume {
    /// A volume with only its UUID, name and role known: no container, store, size or creation
    /// time, unencrypted, not internal, seal unknown. Set the other fields directly.
    pub fn new(uuid: impl Into<String>, name: impl Into<String>, role: VolumeRole) -> Self {
        Self {
            uuid: uuid.into(),
            name: name.into(),
            role,
            container_uuid: None,
            volume_group_uuid: None,
            physical_store: None,
            size_bytes: None,
            encrypted: false,
            internal: false,
            created_unix_ms: None,
            sealed: None,
        }
    }
}

/// The storage inventory of a host at one moment. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// Whose inventory it is.
    pub host: HostIdentity,
    /// When it was taken, Unix milliseconds.
    pub taken_unix_ms: u64,
    /// Every volume, sorted by UUID.
    pub volumes: Vec<Volume>,
    /// The local login accounts, sorted by name (on Linux: [`crate::linux::accounts_from_passwd`]).
    pub accounts: Vec<String>,
    /// System Integrity Protection on (`csrutil status`); `None` where it does not exist
    /// (Linux) or could not be learnt.
    pub sip_enabled: Option<bool>,
    /// FileVault on (`fdesetup status`); `None` where it does not exist or is unknown.
    pub filevault_on: Option<bool>,
    /// Activation Lock enabled (`system_profiler SPHardwareDataType`); `None` where it does not
    /// exist (Linux) or could not be learnt.
    pub activation_lock_enabled: Option<bool>,
}

impl Inventory {
    /// An inventory of `volumes` and `accounts` (normalised: sorted, without duplicates) with
    /// SIP, FileVault and Activation Lock unknown; set those directly on a Mac.
    pub fn new(
        host: HostIdentity,
        taken_unix_ms: u64,
        volumes: Vec<Volume>,
        accounts: Vec<String>,
    ) -> Self {
        Self {
            host,
            taken_unix_ms,
            volumes,
            accounts,
            sip_enabled: None,
            filevault_on: None,
            activation_lock_enabled: None,
        }
        .normalized()
    }

    /// The same inventory in the deterministic order: volumes sorted by [`uuid_key`] (then by
    /// the whole record, so equal keys still sort the same way every time) and exact duplicates
    /// removed; accounts sorted and deduplicated.
    pub fn normalized(mut self) -> Self {
        self.volumes.sort_by(|a, b| {
            uuid_key(&a.uuid)
                .cmp(&uuid_key(&b.uuid))
                .then_with(|| volume_order(a).cmp(&volume_order(b)))
        });
        self.volumes.dedup();
        self.accounts.sort();
        self.accounts.dedup();
        self
    }

    /// The (first) volume with UUID `uuid` (compared by [`uuid_key`]), if any.
    pub fn volume(&self, uuid: &str) -> Option<&Volume> {
        self.volumes_with_uuid(uuid).next()
    }

    /// Every volume with UUID `uuid` (compared by [`uuid_key`]). A sane source reports a UUID
    /// once; the rules still look at every record, so that a duplicate can never hide one.
    pub fn volumes_with_uuid<'a>(&'a self, uuid: &str) -> impl Iterator<Item = &'a Volume> + 'a {
        let key = uuid_key(uuid);
        self.volumes
            .iter()
            .filter(move |v| uuid_key(&v.uuid) == key)
    }
}

/// A total order over the rest of a volume record, for [`Inventory::normalized`].
fn volume_order(v: &Volume) -> impl Ord + '_ {
    (
        &v.uuid,
        &v.name,
        &v.role,
        &v.container_uuid,
        &v.volume_group_uuid,
        &v.physical_store,
        v.size_bytes,
        v.encrypted,
        v.internal,
        v.created_unix_ms,
        v.sealed,
    )
}

/// The form of a UUID every comparison uses: trimmed, ASCII lowercase.
pub fn uuid_key(uuid: &str) -> String {
    uuid.trim().to_ascii_lowercase()
}

/// A source of inventories: the Mac's (diskutil and friends) or Linux's
/// ([`crate::linux::LinuxInventory`]). The agent takes one at Terminate and one at AttestErase.
pub trait InventorySource: std::fmt::Debug + Send + Sync {
    /// The inventory now, stamped `taken_unix_ms`.
    fn take(&self, taken_unix_ms: u64) -> Result<Inventory, InventoryError>;
}

/// Why an inventory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// A tool could not be started or did not finish in time.
    #[error("running {program} {args}")]
    Run {
        /// The program's path.
        program: String,
        /// Its arguments, space-separated.
        args: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A tool exited unsuccessfully.
    #[error("{program} {args} exited with {status}: {stderr}")]
    ToolFailed {
        /// The program's path.
        program: String,
        /// Its arguments, space-separated.
        args: String,
        /// The exit status as text.
        status: String,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
    /// A tool's output is not what it should be.
    #[error("{program} {args} printed {output:?}, which is not {expected}")]
    ToolOutput {
        /// The program's path.
        program: String,
        /// Its arguments, space-separated.
        args: String,
        /// What it printed (trimmed, at most 200 characters).
        output: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostIdentity {
        HostIdentity {
            host_id: "h-1".into(),
            hardware_uuid: "hw".into(),
            serial_number: "sn".into(),
        }
    }

    #[test]
    fn apple_role_names_round_trip_and_unknown_ones_are_kept() {
        for name in [
            "System",
            "Data",
            "Preboot",
            "Recovery",
            "VM",
            "Update",
            "xART",
            "Hardware",
            "iSCPreboot",
        ] {
            let role = VolumeRole::from_apple(name);
            assert!(!matches!(role, VolumeRole::Other(_)), "{name}");
            assert_eq!(role.as_apple(), name);
        }
        assert_eq!(VolumeRole::from_apple(""), VolumeRole::None);
        assert_eq!(
            VolumeRole::from_apple("Backup"),
            VolumeRole::Other("Backup".into())
        );
        // Apple's spelling is exact: a differently cased role is not a system role.
        assert!(!VolumeRole::from_apple("system").is_apple_system_role());
    }

    #[test]
    fn system_and_standard_roles_are_apples_lists() {
        let system: Vec<_> = [
            VolumeRole::System,
            VolumeRole::Preboot,
            VolumeRole::Recovery,
            VolumeRole::Update,
            VolumeRole::Xart,
            VolumeRole::Hardware,
            VolumeRole::IscPreboot,
        ]
        .into_iter()
        .collect();
        for role in &system {
            assert!(role.is_apple_system_role() && role.is_apple_standard_role());
        }
        for role in [VolumeRole::Data, VolumeRole::Vm] {
            assert!(!role.is_apple_system_role() && role.is_apple_standard_role());
        }
        for role in [VolumeRole::None, VolumeRole::Other("Backup".into())] {
            assert!(!role.is_apple_system_role() && !role.is_apple_standard_role());
        }
    }

    #[test]
    fn serialises_with_stable_snake_case_names() {
        let mut v = Volume::new("AB", "Data", VolumeRole::IscPreboot);
        v.sealed = Some(true);
        let inv = Inventory::new(host(), 7, vec![v], vec!["b".into(), "a".into(), "a".into()]);
        let json = serde_json::to_value(&inv).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "host": {"host_id": "h-1", "hardware_uuid": "hw", "serial_number": "sn"},
                "taken_unix_ms": 7,
                "volumes": [{
                    "uuid": "AB", "name": "Data", "role": "isc_preboot",
                    "container_uuid": null, "volume_group_uuid": null, "physical_store": null,
                    "size_bytes": null, "encrypted": false, "internal": false,
                    "created_unix_ms": null, "sealed": true
                }],
                "accounts": ["a", "b"],
                "sip_enabled": null,
                "filevault_on": null,
                "activation_lock_enabled": null
            })
        );
        let other = serde_json::to_value(VolumeRole::Other("Backup".into())).unwrap();
        assert_eq!(other, serde_json::json!({"other": "Backup"}));
        let back: Inventory = serde_json::from_value(json).unwrap();
        assert_eq!(back, inv);
    }

    #[test]
    fn unknown_members_are_refused() {
        let mut json = serde_json::to_value(Inventory::new(host(), 1, vec![], vec![])).unwrap();
        json["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<Inventory>(json).is_err());
    }

    #[test]
    fn normalising_sorts_by_uuid_whatever_the_case_and_is_idempotent() {
        let vols = vec![
            Volume::new("c", "3", VolumeRole::None),
            Volume::new("B", "2", VolumeRole::None),
            Volume::new("a", "1", VolumeRole::None),
            Volume::new("a", "1", VolumeRole::None),
        ];
        let inv = Inventory::new(host(), 1, vols, vec![]);
        let uuids: Vec<_> = inv.volumes.iter().map(|v| v.uuid.as_str()).collect();
        assert_eq!(uuids, ["a", "B", "c"]);
        assert_eq!(inv.clone().normalized(), inv);
        assert_eq!(inv.volume("b").map(|v| v.name.as_str()), Some("2"));
        assert_eq!(inv.volume(" C ").map(|v| v.name.as_str()), Some("3"));
        assert!(inv.volume("d").is_none());
    }
}
