//! Erase configuration: where state lives, I/O sizes, verification sampling and the targets.
//!
//! Deserialised from the `[erase]` table of the agent's TOML config (unknown keys rejected),
//! then checked by [`EraseConfig::validate`], whose errors say what to fix and name the
//! [`Setting`] at fault. The agent reads the table as an [`EraseSection`], which keeps where each
//! setting was written (`toml::Spanned`), so that its errors also give the line. Two targets that
//! name one file or device through different paths (a symlink, another device node) are refused
//! by [`EraseConfig::check_distinct_targets`], which looks at what the paths name on this host;
//! the agent runs it before it starts. Example:
//!
//! ```toml
//! [erase]
//! state_dir = "/var/lib/jex-agent/erase"
//! chunk_bytes = 1048576            # 1 MiB direct-I/O writes and reads
//! checkpoint_bytes = 268435456     # durable flush + journal every 256 MiB
//! queue_depth = 4                  # direct-I/O writes and reads in flight
//! cpu_threads = 0                  # threads generating/comparing the pattern; 0 = every core
//! verify_strata = 1000
//! verify_locations_per_stratum = 2
//! # verify_coverage_percent = 10   # NIST SP 800-88 r1 sampling: >= 10 % of the media
//!
//! [erase.tools]
//! cryptsetup = "/usr/sbin/cryptsetup"
//!
//! [[erase.targets]]
//! name = "tenant-data"
//! backend = "luks2"
//! device = "/dev/disk/by-id/nvme-SAMSUNG_MZVL21T0HCLR-00B00_S676NF0R900123"
//! luks_uuid = "9f5d0c8e-3a1b-4c2d-8e7f-0a1b2c3d4e5f"
//! ```

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::names::named_enum;
use jex_platform::blockdev::{TargetIdentity, TargetKind};
use toml::Spanned;

/// Default chunk size of overwrite writes and verification reads: 1 MiB.
pub const DEFAULT_CHUNK_BYTES: u64 = 1 << 20;
/// Default distance between durable checkpoints.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 256 << 20;
/// Default number of direct-I/O writes (and reads) in flight: 4. Chosen by the shuffled
/// three-round sweep of 2026-12-06 (BENCHMARKS.md, "Choosing the defaults"): 4 × 1 MiB had the
/// best median of every overwrite and every read setting on both targets, the file and the
/// loop device, with min–max ranges apart from the previous default's (16 × 1 MiB, 0.84–0.95×
/// the winner). Measured on a virtio disk; an NVMe SSD may want more in flight, which
/// `queue_depth` sets.
pub const DEFAULT_QUEUE_DEPTH: u32 = 4;
/// Largest `queue_depth`.
pub const MAX_QUEUE_DEPTH: u32 = 256;
/// Largest `cpu_threads`.
pub const MAX_CPU_THREADS: u32 = 1024;
/// Largest buffer memory of an erase, `queue_depth × chunk_bytes`.
pub const MAX_BUFFER_BYTES: u64 = 1 << 30;
/// Default number of verification strata (NIST SP 800-88: at least 1000 subsections).
pub const DEFAULT_VERIFY_STRATA: u64 = 1000;
/// Default random locations per stratum (NIST SP 800-88: at least 2).
pub const DEFAULT_VERIFY_LOCATIONS_PER_STRATUM: u32 = 2;
/// Default verification block size.
pub const DEFAULT_VERIFY_BLOCK_BYTES: u64 = 1 << 20;
/// Direct-I/O granularity every size setting is a multiple of.
pub const IO_GRANULE: u64 = 4096;

/// The `[erase]` configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseConfig {
    /// Directory for the journal, pattern keys and certificates (created 0700).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Size of each direct-I/O write (and verification read), bytes (multiple of 4096).
    #[serde(default = "default_chunk_bytes")]
    pub chunk_bytes: u64,
    /// Bytes between durable flush + journaled checkpoint (multiple of `chunk_bytes`): a crash
    /// redoes at most this much.
    #[serde(default = "default_checkpoint_bytes")]
    pub checkpoint_bytes: u64,
    /// Direct-I/O writes (overwrite) and reads (verification) in flight, 1 to 256; the buffer
    /// memory is `queue_depth × chunk_bytes` (at most 1 GiB).
    #[serde(default = "default_queue_depth")]
    pub queue_depth: u32,
    /// Threads that generate and compare the pattern at once; 0 means one per core.
    #[serde(default)]
    pub cpu_threads: u32,
    /// Verification strata per target.
    #[serde(default = "default_verify_strata")]
    pub verify_strata: u64,
    /// Non-overlapping random locations read back per stratum.
    #[serde(default = "default_verify_locations_per_stratum")]
    pub verify_locations_per_stratum: u32,
    /// When set, each location grows so that at least this share of every stratum is read
    /// back (NIST SP 800-88 r1: 10); 100 reads every block. Unset: one block per location.
    #[serde(default)]
    pub verify_coverage_percent: Option<f64>,
    /// Size of a verification block, bytes (multiple of 4096).
    #[serde(default = "default_verify_block_bytes")]
    pub verify_block_bytes: u64,
    /// Absolute paths of the tools the key backends run.
    #[serde(default)]
    pub tools: ToolsConfig,
    /// The tenant targets, erased in this order.
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// The internal SSD, erased by the device itself (`[erase.internal_ssd]`): when set, an
    /// operation never ends reclaimable on this agent; it stops awaiting the device erase.
    #[serde(default)]
    pub internal_ssd: Option<InternalSsdConfig>,
}

named_enum! {
    /// How the internal SSD is erased: by the device, outside the tenant's OS.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum InternalSsdMethod: serde {
        /// Apple's Erase All Content and Settings (MDM `EraseDevice`) or a DFU restore, started
        /// by the controller; the agent prepares it and the fresh OS's agent attests it.
        DeviceErase => "device-erase",
    }
}

/// The `internal-ssd` target (`[erase.internal_ssd]`, method `device-erase`): the disk the
/// host boots from, which the agent cannot erase itself. At `Terminate`, after the other
/// targets, the agent records the host's storage inventory, signs it (the prepare record) and
/// stops in `awaiting_device_erase`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InternalSsdConfig {
    /// Always `device-erase`.
    pub method: InternalSsdMethod,
    /// Linux: the LUKS2 devices (or images) whose UUIDs stand for the internal SSD's volumes in
    /// the inventory, absolute. macOS reads its volumes from `diskutil` instead.
    #[serde(default)]
    pub inventory_devices: Vec<PathBuf>,
    /// The local accounts a freshly erased host may have (the attest half refuses others).
    #[serde(default)]
    pub allowed_accounts: Vec<String>,
    /// Linux: the accounts file read for the inventory's local accounts.
    #[serde(default = "default_accounts_file")]
    pub accounts_file: PathBuf,
}

fn default_accounts_file() -> PathBuf {
    PathBuf::from("/etc/passwd")
}

/// Absolute paths of external tools (never looked up in `$PATH`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// `cryptsetup`, for `luks2` targets.
    #[serde(default = "default_cryptsetup")]
    pub cryptsetup: PathBuf,
    /// `diskutil`, for `apfs-volume` targets.
    #[serde(default = "default_diskutil")]
    pub diskutil: PathBuf,
}

named_enum! {
    /// The key-destruction backend of a target, by its name in config and in the journal.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Backend: serde {
        /// LUKS2 keyslots destroyed with `cryptsetup luksErase`.
        Luks2 => "luks2",
        /// An APFS volume deleted with `diskutil apfs deleteVolume`.
        ApfsVolume => "apfs-volume",
    }
}

/// One tenant target: what is overwritten and the key backend that destroys its keys, with
/// exactly the pin that backend needs ([`TargetKeys`]). Written in config and in the journal
/// flat, as `backend` plus the pin's key (`luks_uuid`, `apfs_volume_uuid`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "FlatTarget", into = "FlatTarget")]
pub struct TargetConfig {
    /// A unique name (used in logs, progress and the certificate).
    pub name: String,
    /// What is overwritten: a block device (by a stable path such as `/dev/disk/by-id/…`),
    /// a raw disk on macOS (`/dev/rdiskN`), or a disk image file. Absolute.
    pub device: PathBuf,
    /// How its keys are destroyed, and what pins the volume they belong to.
    pub keys: TargetKeys,
}

/// A target's key backend with the identity it pins: one variant per [`Backend`], each with the
/// fields that backend needs and no other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKeys {
    /// LUKS2 keyslots destroyed with `cryptsetup luksErase`.
    Luks2 {
        /// The LUKS2 header UUID pinned.
        luks_uuid: String,
    },
    /// An APFS volume deleted with `diskutil apfs deleteVolume`.
    ApfsVolume {
        /// The APFS volume UUID pinned.
        apfs_volume_uuid: String,
    },
}

impl TargetKeys {
    /// The backend.
    pub fn backend(&self) -> Backend {
        match self {
            TargetKeys::Luks2 { .. } => Backend::Luks2,
            TargetKeys::ApfsVolume { .. } => Backend::ApfsVolume,
        }
    }

    /// The pinned UUID and the key it is written under.
    pub fn pin_uuid(&self) -> (&str, TargetField) {
        match self {
            TargetKeys::Luks2 { luks_uuid } => (luks_uuid, TargetField::LuksUuid),
            TargetKeys::ApfsVolume { apfs_volume_uuid } => {
                (apfs_volume_uuid, TargetField::ApfsVolumeUuid)
            }
        }
    }

    /// The keys of `backend` from the pins as written: the one it needs, no other.
    fn from_pins(
        backend: Backend,
        luks_uuid: Option<String>,
        apfs_volume_uuid: Option<String>,
    ) -> Result<Self, PinProblem> {
        match (backend, luks_uuid, apfs_volume_uuid) {
            (Backend::Luks2, Some(luks_uuid), None) => Ok(TargetKeys::Luks2 { luks_uuid }),
            (Backend::ApfsVolume, None, Some(apfs_volume_uuid)) => {
                Ok(TargetKeys::ApfsVolume { apfs_volume_uuid })
            }
            (Backend::Luks2, None, _) => Err(PinProblem::Missing(TargetField::LuksUuid)),
            (Backend::ApfsVolume, _, None) => Err(PinProblem::Missing(TargetField::ApfsVolumeUuid)),
            (Backend::Luks2, Some(_), Some(_)) => {
                Err(PinProblem::Foreign(TargetField::ApfsVolumeUuid))
            }
            (Backend::ApfsVolume, Some(_), Some(_)) => {
                Err(PinProblem::Foreign(TargetField::LuksUuid))
            }
        }
    }
}

/// What is wrong with a target's pins as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PinProblem {
    /// The backend's pin is missing.
    Missing(TargetField),
    /// A pin of another backend is present.
    Foreign(TargetField),
}

impl PinProblem {
    /// The [`ConfigError`] of target `index` named `name` with backend `backend`.
    fn at(self, index: usize, name: &str, backend: Backend) -> ConfigError {
        let name = name.to_owned();
        match self {
            PinProblem::Missing(key) => ConfigError::MissingPin {
                index,
                name,
                backend,
                key,
            },
            PinProblem::Foreign(key) => ConfigError::ForeignPin {
                index,
                name,
                backend,
                key,
            },
        }
    }
}

/// [`TargetConfig`] as written in config and in the journal: `backend` and every pin key
/// optional (a pin left out is written `null` in the journal, as it always was).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FlatTarget {
    name: String,
    backend: Backend,
    device: PathBuf,
    #[serde(default)]
    luks_uuid: Option<String>,
    #[serde(default)]
    apfs_volume_uuid: Option<String>,
}

/// A target whose pins do not fit its backend, read without its position (from the journal or
/// a bare [`EraseConfig`]); the agent's config file reports [`ConfigError::MissingPin`] and
/// [`ConfigError::ForeignPin`] with the position and line instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("erase target {name:?}: {}", self.describe())]
pub struct TargetShapeError {
    name: String,
    backend: Backend,
    problem: PinProblem,
}

impl TargetShapeError {
    fn describe(&self) -> String {
        match self.problem {
            PinProblem::Missing(key) => format!(
                "backend {} needs {key} = \"<uuid>\" to pin the volume it destroys",
                self.backend
            ),
            PinProblem::Foreign(key) => {
                format!(
                    "{key} does not apply to backend {}: remove it",
                    self.backend
                )
            }
        }
    }
}

impl TryFrom<FlatTarget> for TargetConfig {
    type Error = TargetShapeError;

    fn try_from(flat: FlatTarget) -> Result<Self, TargetShapeError> {
        let keys = TargetKeys::from_pins(flat.backend, flat.luks_uuid, flat.apfs_volume_uuid)
            .map_err(|problem| TargetShapeError {
                name: flat.name.clone(),
                backend: flat.backend,
                problem,
            })?;
        Ok(TargetConfig {
            name: flat.name,
            device: flat.device,
            keys,
        })
    }
}

impl From<TargetConfig> for FlatTarget {
    fn from(target: TargetConfig) -> Self {
        let backend = target.backend();
        let (luks_uuid, apfs_volume_uuid) = match target.keys {
            TargetKeys::Luks2 { luks_uuid } => (Some(luks_uuid), None),
            TargetKeys::ApfsVolume { apfs_volume_uuid } => (None, Some(apfs_volume_uuid)),
        };
        FlatTarget {
            name: target.name,
            backend,
            device: target.device,
            luks_uuid,
            apfs_volume_uuid,
        }
    }
}

impl TargetConfig {
    /// How its keys are destroyed.
    pub fn backend(&self) -> Backend {
        self.keys.backend()
    }

    /// The pinned key identity, e.g. `luks-uuid:9f5d…`.
    pub fn pin(&self) -> String {
        match &self.keys {
            TargetKeys::Luks2 { luks_uuid } => format!("luks-uuid:{luks_uuid}"),
            TargetKeys::ApfsVolume { apfs_volume_uuid } => {
                format!("apfs-volume-uuid:{apfs_volume_uuid}")
            }
        }
    }
}

/// One setting of `[erase]`: what a [`ConfigError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// `state_dir`.
    StateDir,
    /// `chunk_bytes`.
    ChunkBytes,
    /// `checkpoint_bytes`.
    CheckpointBytes,
    /// `queue_depth`.
    QueueDepth,
    /// `cpu_threads`.
    CpuThreads,
    /// `verify_strata`.
    VerifyStrata,
    /// `verify_locations_per_stratum`.
    VerifyLocationsPerStratum,
    /// `verify_coverage_percent`.
    VerifyCoveragePercent,
    /// `verify_block_bytes`.
    VerifyBlockBytes,
    /// `tools.cryptsetup`.
    Cryptsetup,
    /// `tools.diskutil`.
    Diskutil,
    /// `internal_ssd`: a key of the `[erase.internal_ssd]` table.
    InternalSsd,
    /// A key of the `index`th (0-based) `[[erase.targets]]` entry.
    Target {
        /// Position in the list.
        index: usize,
        /// The key.
        field: TargetField,
    },
}

named_enum! {
    /// A key of a `[[erase.targets]]` entry, by its name in config.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum TargetField {
        /// `name`.
        Name => "name",
        /// `backend`.
        Backend => "backend",
        /// `device`.
        Device => "device",
        /// `luks_uuid`.
        LuksUuid => "luks_uuid",
        /// `apfs_volume_uuid`.
        ApfsVolumeUuid => "apfs_volume_uuid",
    }
}

/// The dotted key in the agent's config file, e.g. `erase.chunk_bytes`,
/// `erase.targets[1].luks_uuid`.
impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = match self {
            Setting::StateDir => "state_dir",
            Setting::ChunkBytes => "chunk_bytes",
            Setting::CheckpointBytes => "checkpoint_bytes",
            Setting::QueueDepth => "queue_depth",
            Setting::CpuThreads => "cpu_threads",
            Setting::VerifyStrata => "verify_strata",
            Setting::VerifyLocationsPerStratum => "verify_locations_per_stratum",
            Setting::VerifyCoveragePercent => "verify_coverage_percent",
            Setting::VerifyBlockBytes => "verify_block_bytes",
            Setting::Cryptsetup => "tools.cryptsetup",
            Setting::Diskutil => "tools.diskutil",
            Setting::InternalSsd => "internal_ssd",
            Setting::Target { index, field } => {
                return write!(f, "erase.targets[{index}].{field}");
            }
        };
        write!(f, "erase.{key}")
    }
}

/// An invalid `[erase]` setting; the message says what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A path that must be absolute is not.
    #[error("{key} = {path:?} must be an absolute path")]
    RelativePath {
        /// The setting.
        key: Setting,
        /// Its value.
        path: PathBuf,
    },
    /// A size setting out of range or misaligned.
    #[error("{key} = {value} must be a multiple of {multiple_of} between {min} and {max}")]
    BadSize {
        /// The setting.
        key: Setting,
        /// Its value.
        value: u64,
        /// Required granularity.
        multiple_of: u64,
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// A count or percentage out of range.
    #[error("{key} = {value} is out of range: use {expected}")]
    OutOfRange {
        /// The setting.
        key: Setting,
        /// Its value, as written.
        value: String,
        /// The accepted range.
        expected: &'static str,
    },
    /// A target entry without one of the keys every target needs.
    #[error(
        "erase.targets[{index}]: {field} is missing: every target needs name, backend and device"
    )]
    MissingKey {
        /// Position in the list.
        index: usize,
        /// The missing key.
        field: TargetField,
    },
    /// A target without a name.
    #[error("erase.targets[{index}]: name is empty: give every target a unique name")]
    EmptyName {
        /// Position in the list.
        index: usize,
    },
    /// Two targets with one name.
    #[error("erase.targets: name {name:?} is used twice: target names must be unique")]
    DuplicateName {
        /// Position of the second one in the list.
        index: usize,
        /// The name.
        name: String,
    },
    /// Two targets with one device path.
    #[error(
        "erase.targets[{index}].device: {device:?} is already erase.targets[{first_index}].device (targets {first:?} and {second:?}): list each target once"
    )]
    DuplicateDevice {
        /// Position of the second one in the list.
        index: usize,
        /// Position of the first one.
        first_index: usize,
        /// The device.
        device: PathBuf,
        /// First target's name.
        first: String,
        /// Second target's name.
        second: String,
    },
    /// Two targets whose device paths differ but name the same file or device (a symlink and
    /// what it points to, two device nodes of one disk).
    #[error(
        "erase.targets[{index}].device {device:?} and erase.targets[{first_index}].device {first_device:?} are the same {identity}: list each target once"
    )]
    SameTarget {
        /// Position of the second one in the list.
        index: usize,
        /// Position of the first one.
        first_index: usize,
        /// The second one's device path.
        device: PathBuf,
        /// The first one's device path.
        first_device: PathBuf,
        /// What both paths name ([`TargetIdentity::fingerprint`]).
        identity: String,
    },
    /// A target's backend has no identity pin.
    #[error(
        "erase.targets {name:?}: backend {backend} needs {key} = \"<uuid>\" to pin the volume it destroys"
    )]
    MissingPin {
        /// Position in the list.
        index: usize,
        /// Target name.
        name: String,
        /// Its backend.
        backend: Backend,
        /// The missing key.
        key: TargetField,
    },
    /// A pin that does not belong to the backend.
    #[error("erase.targets {name:?}: {key} does not apply to backend {backend}: remove it")]
    ForeignPin {
        /// Position in the list.
        index: usize,
        /// Target name.
        name: String,
        /// Its backend.
        backend: Backend,
        /// The stray key.
        key: TargetField,
    },
    /// A pin that is not a UUID.
    #[error("erase.targets {name:?}: {key} = {value:?} is not a UUID (8-4-4-4-12 hex digits)")]
    BadPin {
        /// Position in the list.
        index: usize,
        /// Target name.
        name: String,
        /// The key.
        key: TargetField,
        /// Its value.
        value: String,
    },
}

impl ConfigError {
    /// The setting at fault.
    pub fn setting(&self) -> Setting {
        let target = |index: usize, field: TargetField| Setting::Target { index, field };
        match self {
            ConfigError::RelativePath { key, .. }
            | ConfigError::BadSize { key, .. }
            | ConfigError::OutOfRange { key, .. } => *key,
            ConfigError::MissingKey { index, field } => target(*index, *field),
            ConfigError::EmptyName { index } | ConfigError::DuplicateName { index, .. } => {
                target(*index, TargetField::Name)
            }
            ConfigError::DuplicateDevice { index, .. } | ConfigError::SameTarget { index, .. } => {
                target(*index, TargetField::Device)
            }
            ConfigError::MissingPin { index, key, .. }
            | ConfigError::ForeignPin { index, key, .. }
            | ConfigError::BadPin { index, key, .. } => target(*index, *key),
        }
    }

    /// The other setting the error is about, when it concerns two (the first of two targets
    /// that name one device), so that a message can point at both.
    pub fn other_setting(&self) -> Option<Setting> {
        match self {
            ConfigError::DuplicateDevice { first_index, .. }
            | ConfigError::SameTarget { first_index, .. } => Some(Setting::Target {
                index: *first_index,
                field: TargetField::Device,
            }),
            ConfigError::RelativePath { .. }
            | ConfigError::BadSize { .. }
            | ConfigError::OutOfRange { .. }
            | ConfigError::MissingKey { .. }
            | ConfigError::EmptyName { .. }
            | ConfigError::DuplicateName { .. }
            | ConfigError::MissingPin { .. }
            | ConfigError::ForeignPin { .. }
            | ConfigError::BadPin { .. } => None,
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(jex_platform::paths::ERASE_STATE_DIR)
}
fn default_chunk_bytes() -> u64 {
    DEFAULT_CHUNK_BYTES
}
fn default_checkpoint_bytes() -> u64 {
    DEFAULT_CHECKPOINT_BYTES
}
fn default_queue_depth() -> u32 {
    DEFAULT_QUEUE_DEPTH
}
fn default_verify_strata() -> u64 {
    DEFAULT_VERIFY_STRATA
}
fn default_verify_locations_per_stratum() -> u32 {
    DEFAULT_VERIFY_LOCATIONS_PER_STRATUM
}
fn default_verify_block_bytes() -> u64 {
    DEFAULT_VERIFY_BLOCK_BYTES
}
fn default_cryptsetup() -> PathBuf {
    PathBuf::from("/usr/sbin/cryptsetup")
}
fn default_diskutil() -> PathBuf {
    PathBuf::from(DISKUTIL)
}

/// `diskutil`'s path on macOS: on the sealed system volume, so fixed, never configured.
pub const DISKUTIL: &str = jex_reclaim::macos::DISKUTIL;

/// On macOS the system tools live on the sealed, signed system volume (SIP): a root-writable
/// config must not point the erase at another binary. Elsewhere the path is the operator's.
fn check_fixed_tool(
    os: jex_platform::Os,
    key: Setting,
    path: &Path,
    fixed: &str,
) -> Result<(), ConfigError> {
    if os == jex_platform::Os::MacOs && path != Path::new(fixed) {
        return Err(ConfigError::OutOfRange {
            key,
            value: path.display().to_string(),
            expected: "the system's own tool on macOS, which is fixed (the sealed system volume): remove the setting",
        });
    }
    Ok(())
}

/// `[erase.internal_ssd]` on `os`: Linux names its LUKS2 devices and accounts file (absolute);
/// macOS reads its volumes from `diskutil` and its accounts from `dscl`, so it refuses both
/// settings rather than ignore them; other systems have no storage inventory.
fn check_internal_ssd(os: jex_platform::Os, ssd: &InternalSsdConfig) -> Result<(), ConfigError> {
    match os {
        jex_platform::Os::Linux => {
            check_absolute(Setting::InternalSsd, &ssd.accounts_file)?;
            for device in &ssd.inventory_devices {
                check_absolute(Setting::InternalSsd, device)?;
            }
            Ok(())
        }
        jex_platform::Os::MacOs => {
            if let Some(device) = ssd.inventory_devices.first() {
                return Err(ConfigError::OutOfRange {
                    key: Setting::InternalSsd,
                    value: device.display().to_string(),
                    expected: "no inventory_devices on macOS, which lists its volumes with diskutil: remove the setting",
                });
            }
            if ssd.accounts_file != default_accounts_file() {
                return Err(ConfigError::OutOfRange {
                    key: Setting::InternalSsd,
                    value: ssd.accounts_file.display().to_string(),
                    expected: "no accounts_file on macOS, which reads its accounts with dscl: remove the setting",
                });
            }
            Ok(())
        }
        jex_platform::Os::Other => Err(ConfigError::OutOfRange {
            key: Setting::InternalSsd,
            value: ssd.method.to_string(),
            expected: "Linux or macOS (this system has no storage inventory): remove [erase.internal_ssd]",
        }),
    }
}

impl Default for ToolsConfig {
    fn default() -> Self {
        ToolsConfig {
            cryptsetup: default_cryptsetup(),
            diskutil: default_diskutil(),
        }
    }
}

impl Default for EraseConfig {
    fn default() -> Self {
        EraseConfig {
            state_dir: default_state_dir(),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            checkpoint_bytes: DEFAULT_CHECKPOINT_BYTES,
            queue_depth: DEFAULT_QUEUE_DEPTH,
            cpu_threads: 0,
            verify_strata: DEFAULT_VERIFY_STRATA,
            verify_locations_per_stratum: DEFAULT_VERIFY_LOCATIONS_PER_STRATUM,
            verify_coverage_percent: None,
            verify_block_bytes: DEFAULT_VERIFY_BLOCK_BYTES,
            tools: ToolsConfig::default(),
            targets: Vec::new(),
            internal_ssd: None,
        }
    }
}

fn check_size(key: Setting, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max || !value.is_multiple_of(IO_GRANULE) {
        return Err(ConfigError::BadSize {
            key,
            value,
            multiple_of: IO_GRANULE,
            min,
            max,
        });
    }
    Ok(())
}

fn check_absolute(key: Setting, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(ConfigError::RelativePath {
            key,
            path: path.to_path_buf(),
        })
    }
}

fn check_uuid(index: usize, name: &str, key: TargetField, value: &str) -> Result<(), ConfigError> {
    let hyphenated = value.len() == 36 && value.matches('-').count() == 4;
    if hyphenated && uuid::Uuid::parse_str(value).is_ok() {
        Ok(())
    } else {
        Err(ConfigError::BadPin {
            index,
            name: name.to_owned(),
            key,
            value: value.to_owned(),
        })
    }
}

impl EraseConfig {
    /// Checks every setting; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_absolute(Setting::StateDir, &self.state_dir)?;
        check_size(Setting::ChunkBytes, self.chunk_bytes, IO_GRANULE, 256 << 20)?;
        if self.checkpoint_bytes < self.chunk_bytes
            || !self.checkpoint_bytes.is_multiple_of(self.chunk_bytes)
        {
            return Err(ConfigError::BadSize {
                key: Setting::CheckpointBytes,
                value: self.checkpoint_bytes,
                multiple_of: self.chunk_bytes,
                min: self.chunk_bytes,
                max: u64::MAX - u64::MAX % self.chunk_bytes,
            });
        }
        if !(1..=MAX_QUEUE_DEPTH).contains(&self.queue_depth) {
            return Err(ConfigError::OutOfRange {
                key: Setting::QueueDepth,
                value: self.queue_depth.to_string(),
                expected: "1 to 256 I/Os in flight",
            });
        }
        if u64::from(self.queue_depth) * self.chunk_bytes > MAX_BUFFER_BYTES {
            return Err(ConfigError::OutOfRange {
                key: Setting::QueueDepth,
                value: self.queue_depth.to_string(),
                expected: "a depth with queue_depth × chunk_bytes at most 1 GiB of buffers: lower it or chunk_bytes",
            });
        }
        if self.cpu_threads > MAX_CPU_THREADS {
            return Err(ConfigError::OutOfRange {
                key: Setting::CpuThreads,
                value: self.cpu_threads.to_string(),
                expected: "0 (one per core) to 1024",
            });
        }
        check_size(
            Setting::VerifyBlockBytes,
            self.verify_block_bytes,
            IO_GRANULE,
            64 << 20,
        )?;
        if !(1..=1_000_000).contains(&self.verify_strata) {
            return Err(ConfigError::OutOfRange {
                key: Setting::VerifyStrata,
                value: self.verify_strata.to_string(),
                expected: "1 to 1000000 (NIST SP 800-88 asks for at least 1000)",
            });
        }
        if !(1..=1000).contains(&self.verify_locations_per_stratum) {
            return Err(ConfigError::OutOfRange {
                key: Setting::VerifyLocationsPerStratum,
                value: self.verify_locations_per_stratum.to_string(),
                expected: "1 to 1000 (NIST SP 800-88 asks for at least 2)",
            });
        }
        if let Some(percent) = self.verify_coverage_percent
            && !(percent > 0.0 && percent <= 100.0)
        {
            return Err(ConfigError::OutOfRange {
                key: Setting::VerifyCoveragePercent,
                value: percent.to_string(),
                expected: "a percentage above 0 and at most 100",
            });
        }
        check_absolute(Setting::Cryptsetup, &self.tools.cryptsetup)?;
        check_absolute(Setting::Diskutil, &self.tools.diskutil)?;
        check_fixed_tool(
            jex_platform::OS,
            Setting::Diskutil,
            &self.tools.diskutil,
            DISKUTIL,
        )?;
        if let Some(ssd) = &self.internal_ssd {
            check_internal_ssd(jex_platform::OS, ssd)?;
        }
        for (index, target) in self.targets.iter().enumerate() {
            if target.name.trim().is_empty() {
                return Err(ConfigError::EmptyName { index });
            }
            check_absolute(
                Setting::Target {
                    index,
                    field: TargetField::Device,
                },
                &target.device,
            )?;
            let (pin, key) = target.keys.pin_uuid();
            check_uuid(index, &target.name, key, pin)?;
            for (first_index, earlier) in self.targets[..index].iter().enumerate() {
                if earlier.name == target.name {
                    return Err(ConfigError::DuplicateName {
                        index,
                        name: target.name.clone(),
                    });
                }
                if earlier.device == target.device {
                    return Err(ConfigError::DuplicateDevice {
                        index,
                        first_index,
                        device: target.device.clone(),
                        first: earlier.name.clone(),
                        second: target.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Refuses two targets whose device paths differ but name the same file or device: a
    /// symlink and what it points to, `/dev/disk/by-id/…` and `/dev/sdb`. [`Self::validate`]
    /// only compares the paths as written; this compares what they name now, as `identify`
    /// reports it (the erase's own [`jex_platform::blockdev::probe`]): files by `(st_dev,
    /// st_ino)`, devices by `st_rdev`. A target `identify` cannot name (missing, unreadable) is
    /// left out here: the checks of the target itself report it.
    pub fn check_distinct_targets(
        &self,
        identify: impl Fn(&Path) -> Option<TargetIdentity>,
    ) -> Result<(), ConfigError> {
        let identities: Vec<Option<TargetIdentity>> =
            self.targets.iter().map(|t| identify(&t.device)).collect();
        for (index, (target, identity)) in self.targets.iter().zip(&identities).enumerate() {
            let Some(identity) = identity else { continue };
            let first = identities[..index]
                .iter()
                .position(|earlier| earlier.as_ref().is_some_and(|e| same_object(e, identity)));
            if let Some(first_index) = first {
                let earlier = &self.targets[first_index];
                return Err(ConfigError::SameTarget {
                    index,
                    first_index,
                    device: target.device.clone(),
                    first_device: earlier.device.clone(),
                    identity: identity.fingerprint(),
                });
            }
        }
        Ok(())
    }
}

/// Whether two identities name the same object: a file by `(st_dev, st_ino)`, a device by
/// `st_rdev` (size and serial follow from those).
fn same_object(a: &TargetIdentity, b: &TargetIdentity) -> bool {
    match (a.kind, b.kind) {
        (TargetKind::File, TargetKind::File) => a.dev == b.dev && a.ino == b.ino,
        (TargetKind::Device, TargetKind::Device) => a.rdev == b.rdev,
        (TargetKind::File, TargetKind::Device) | (TargetKind::Device, TargetKind::File) => false,
    }
}

/// The `[erase]` table as the agent's config file writes it: every setting optional and
/// [`Spanned`] (byte offsets into the file), so that a validation error lands on the setting at
/// fault, or on the header of the table that should hold it when it was left out. Turned into an
/// [`EraseConfig`] by [`EraseSection::into_config`]; the same keys, unknown keys rejected.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EraseSection {
    /// [`EraseConfig::state_dir`].
    pub state_dir: Option<Spanned<PathBuf>>,
    /// [`EraseConfig::chunk_bytes`].
    pub chunk_bytes: Option<Spanned<u64>>,
    /// [`EraseConfig::checkpoint_bytes`].
    pub checkpoint_bytes: Option<Spanned<u64>>,
    /// [`EraseConfig::queue_depth`].
    pub queue_depth: Option<Spanned<u32>>,
    /// [`EraseConfig::cpu_threads`].
    pub cpu_threads: Option<Spanned<u32>>,
    /// [`EraseConfig::verify_strata`].
    pub verify_strata: Option<Spanned<u64>>,
    /// [`EraseConfig::verify_locations_per_stratum`].
    pub verify_locations_per_stratum: Option<Spanned<u32>>,
    /// [`EraseConfig::verify_coverage_percent`].
    pub verify_coverage_percent: Option<Spanned<f64>>,
    /// [`EraseConfig::verify_block_bytes`].
    pub verify_block_bytes: Option<Spanned<u64>>,
    /// `[erase.tools]`.
    pub tools: Option<Spanned<ToolsSection>>,
    /// `[[erase.targets]]`, in order.
    #[serde(default)]
    pub targets: Vec<Spanned<TargetSection>>,
    /// `[erase.internal_ssd]`: checked as a whole, errors placed on the table.
    pub internal_ssd: Option<Spanned<InternalSsdConfig>>,
}

/// `[erase.tools]` as written; see [`ToolsConfig`].
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsSection {
    /// [`ToolsConfig::cryptsetup`].
    pub cryptsetup: Option<Spanned<PathBuf>>,
    /// [`ToolsConfig::diskutil`].
    pub diskutil: Option<Spanned<PathBuf>>,
}

/// One `[[erase.targets]]` entry as written; see [`TargetConfig`]. `name`, `backend` and
/// `device` are required: their absence is a [`ConfigError::MissingKey`] placed on the entry.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// [`TargetConfig::name`].
    pub name: Option<Spanned<String>>,
    /// [`TargetConfig::backend`].
    pub backend: Option<Spanned<Backend>>,
    /// [`TargetConfig::device`].
    pub device: Option<Spanned<PathBuf>>,
    /// [`TargetKeys::Luks2`]'s pin.
    pub luks_uuid: Option<Spanned<String>>,
    /// [`TargetKeys::ApfsVolume`]'s pin.
    pub apfs_volume_uuid: Option<Spanned<String>>,
}

/// A [`ConfigError`] and where it is in the config file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{error}")]
pub struct Located {
    /// What is wrong.
    pub error: ConfigError,
    /// Byte offsets of the setting's value, or of the header of the table that should hold it
    /// when the setting was left out.
    pub span: Range<usize>,
}

fn written<T: Clone>(setting: &Option<Spanned<T>>) -> Option<T> {
    setting.as_ref().map(|s| s.get_ref().clone())
}

fn span_of<T>(setting: &Option<Spanned<T>>) -> Option<Range<usize>> {
    setting.as_ref().map(Spanned::span)
}

impl EraseSection {
    /// Fills in the defaults (`default_state_dir` for an unwritten `state_dir`), validates with
    /// [`EraseConfig::validate`] and places any error. `table` is the span of the `[erase]` table
    /// itself, where settings it does not write are reported.
    pub fn into_config(
        self,
        table: Range<usize>,
        default_state_dir: PathBuf,
    ) -> Result<EraseConfig, Located> {
        let config = self.to_config(default_state_dir).and_then(|config| {
            config.validate()?;
            Ok(config)
        });
        config.map_err(|error| Located {
            span: self.span(error.setting()).unwrap_or(table),
            error,
        })
    }

    fn to_config(&self, default_state_dir: PathBuf) -> Result<EraseConfig, ConfigError> {
        let tools = self.tools.as_ref().map(Spanned::get_ref);
        let targets = self
            .targets
            .iter()
            .enumerate()
            .map(|(index, target)| target.get_ref().to_config(index))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EraseConfig {
            state_dir: written(&self.state_dir).unwrap_or(default_state_dir),
            chunk_bytes: written(&self.chunk_bytes).unwrap_or(DEFAULT_CHUNK_BYTES),
            checkpoint_bytes: written(&self.checkpoint_bytes).unwrap_or(DEFAULT_CHECKPOINT_BYTES),
            queue_depth: written(&self.queue_depth).unwrap_or(DEFAULT_QUEUE_DEPTH),
            cpu_threads: written(&self.cpu_threads).unwrap_or(0),
            verify_strata: written(&self.verify_strata).unwrap_or(DEFAULT_VERIFY_STRATA),
            verify_locations_per_stratum: written(&self.verify_locations_per_stratum)
                .unwrap_or(DEFAULT_VERIFY_LOCATIONS_PER_STRATUM),
            verify_coverage_percent: written(&self.verify_coverage_percent),
            verify_block_bytes: written(&self.verify_block_bytes)
                .unwrap_or(DEFAULT_VERIFY_BLOCK_BYTES),
            tools: ToolsConfig {
                cryptsetup: tools
                    .and_then(|t| written(&t.cryptsetup))
                    .unwrap_or_else(default_cryptsetup),
                diskutil: tools
                    .and_then(|t| written(&t.diskutil))
                    .unwrap_or_else(default_diskutil),
            },
            targets,
            internal_ssd: written(&self.internal_ssd),
        })
    }

    /// Where `setting` is written, else where the table that should hold it is; `None` when
    /// neither is in the file.
    fn span(&self, setting: Setting) -> Option<Range<usize>> {
        let tool = |pick: fn(&ToolsSection) -> &Option<Spanned<PathBuf>>| {
            let tools = self.tools.as_ref()?;
            span_of(pick(tools.get_ref())).or_else(|| Some(tools.span()))
        };
        match setting {
            Setting::StateDir => span_of(&self.state_dir),
            Setting::ChunkBytes => span_of(&self.chunk_bytes),
            Setting::CheckpointBytes => span_of(&self.checkpoint_bytes),
            Setting::QueueDepth => span_of(&self.queue_depth),
            Setting::CpuThreads => span_of(&self.cpu_threads),
            Setting::VerifyStrata => span_of(&self.verify_strata),
            Setting::VerifyLocationsPerStratum => span_of(&self.verify_locations_per_stratum),
            Setting::VerifyCoveragePercent => span_of(&self.verify_coverage_percent),
            Setting::VerifyBlockBytes => span_of(&self.verify_block_bytes),
            Setting::Cryptsetup => tool(|t| &t.cryptsetup),
            Setting::Diskutil => tool(|t| &t.diskutil),
            Setting::InternalSsd => span_of(&self.internal_ssd),
            Setting::Target { index, field } => {
                let entry = self.targets.get(index)?;
                let t = entry.get_ref();
                match field {
                    TargetField::Name => span_of(&t.name),
                    TargetField::Backend => span_of(&t.backend),
                    TargetField::Device => span_of(&t.device),
                    TargetField::LuksUuid => span_of(&t.luks_uuid),
                    TargetField::ApfsVolumeUuid => span_of(&t.apfs_volume_uuid),
                }
                .or_else(|| Some(entry.span()))
            }
        }
    }
}

impl TargetSection {
    fn to_config(&self, index: usize) -> Result<TargetConfig, ConfigError> {
        let missing = |field| ConfigError::MissingKey { index, field };
        let name = written(&self.name).ok_or(missing(TargetField::Name))?;
        let backend = written(&self.backend).ok_or(missing(TargetField::Backend))?;
        let device = written(&self.device).ok_or(missing(TargetField::Device))?;
        let keys = TargetKeys::from_pins(
            backend,
            written(&self.luks_uuid),
            written(&self.apfs_volume_uuid),
        )
        .map_err(|problem| problem.at(index, &name, backend))?;
        Ok(TargetConfig { name, device, keys })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const UUID: &str = "9f5d0c8e-3a1b-4c2d-8e7f-0a1b2c3d4e5f";

    fn parse(text: &str) -> Result<EraseConfig, toml::de::Error> {
        toml::from_str(text)
    }

    fn with_target(extra: &str) -> String {
        format!("state_dir = \"/var/lib/jex-agent/erase\"\n[[targets]]\nname = \"data\"\n{extra}\n")
    }

    #[test]
    fn defaults_fill_everything_but_targets() {
        let config = parse("").unwrap();
        assert_eq!(config, EraseConfig::default());
        assert_eq!(config.verify_strata, 1000);
        assert_eq!(config.verify_locations_per_stratum, 2);
        assert!(config.state_dir.is_absolute());
        config.validate().unwrap();
    }

    #[test]
    fn a_complete_luks2_target_validates() {
        let config = parse(&with_target(&format!(
            "backend = \"luks2\"\ndevice = \"/dev/loop7\"\nluks_uuid = \"{UUID}\""
        )))
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.targets[0].pin(), format!("luks-uuid:{UUID}"));
        assert_eq!(config.targets[0].backend().as_str(), "luks2");
    }

    #[test]
    fn unknown_keys_and_unknown_backends_are_rejected_by_the_parser() {
        let err = parse("chunk_size = 4096").unwrap_err().to_string();
        assert!(err.contains("unknown field `chunk_size`"), "{err}");
        let err = parse(&with_target("backend = \"zfs\"\ndevice = \"/dev/x\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown variant `zfs`") && err.contains("luks2"),
            "{err}"
        );
    }

    #[test]
    fn validation_errors_name_the_setting_and_the_fix() {
        let cases: Vec<(String, &str)> = vec![
            (
                with_target("backend = \"luks2\"\ndevice = \"/dev/x\""),
                "needs luks_uuid",
            ),
            (
                with_target(&format!(
                    "backend = \"luks2\"\ndevice = \"dev/x\"\nluks_uuid = \"{UUID}\""
                )),
                "must be an absolute path",
            ),
            (
                with_target(
                    "backend = \"apfs-volume\"\ndevice = \"/dev/rdisk4\"\napfs_volume_uuid = \"nope\"",
                ),
                "is not a UUID",
            ),
            (
                with_target(&format!(
                    "backend = \"apfs-volume\"\ndevice = \"/dev/rdisk4\"\napfs_volume_uuid = \"{UUID}\"\nluks_uuid = \"{UUID}\""
                )),
                "does not apply to backend apfs-volume",
            ),
            (
                format!(
                    "{}[[targets]]\nname = \"data\"\nbackend = \"luks2\"\ndevice = \"/dev/y\"\nluks_uuid = \"{UUID}\"\n",
                    with_target(&format!(
                        "backend = \"luks2\"\ndevice = \"/dev/x\"\nluks_uuid = \"{UUID}\""
                    ))
                ),
                "is used twice",
            ),
            (
                "chunk_bytes = 1000".to_owned(),
                "erase.chunk_bytes = 1000 must be a multiple of 4096",
            ),
            (
                "chunk_bytes = 8192\ncheckpoint_bytes = 12288".to_owned(),
                "erase.checkpoint_bytes",
            ),
            ("queue_depth = 0".to_owned(), "erase.queue_depth = 0"),
            ("queue_depth = 300".to_owned(), "1 to 256"),
            (
                "chunk_bytes = 268435456\nqueue_depth = 8".to_owned(),
                "queue_depth × chunk_bytes at most 1 GiB",
            ),
            ("cpu_threads = 5000".to_owned(), "erase.cpu_threads = 5000"),
            ("verify_coverage_percent = 150.0".to_owned(), "at most 100"),
            ("verify_strata = 0".to_owned(), "at least 1000"),
            ("state_dir = \"state\"".to_owned(), "erase.state_dir"),
        ];
        for (text, expected) in cases {
            // A target whose pins do not fit its backend cannot be built: the parser says so.
            let err = match parse(&text) {
                Ok(config) => config.validate().expect_err(&text).to_string(),
                Err(err) => err.to_string(),
            };
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    /// The error of a `[erase]` table (written at the top level here) and the text it points at.
    fn located(text: &str) -> (ConfigError, String) {
        let section: EraseSection = toml::from_str(text).unwrap();
        let err = section
            .into_config(0..0, PathBuf::from("/var/lib/jex-agent/erase"))
            .expect_err(text);
        let at = text[err.span.clone()].to_owned();
        (err.error, at)
    }

    #[test]
    fn the_section_fills_in_the_defaults() {
        let section: EraseSection = toml::from_str("").unwrap();
        let config = section
            .into_config(0..0, PathBuf::from("/srv/agent/erase"))
            .unwrap();
        assert_eq!(
            config,
            EraseConfig {
                state_dir: PathBuf::from("/srv/agent/erase"),
                ..EraseConfig::default()
            }
        );
        let text = with_target(&format!(
            "backend = \"luks2\"\ndevice = \"/dev/loop7\"\nluks_uuid = \"{UUID}\""
        ));
        let section: EraseSection = toml::from_str(&text).unwrap();
        assert_eq!(
            section.into_config(0..0, PathBuf::from("/x")).unwrap(),
            parse(&text).unwrap()
        );
    }

    #[test]
    fn section_errors_point_at_the_setting_or_its_table() {
        let luks = |device: &str| {
            format!("backend = \"luks2\"\ndevice = \"{device}\"\nluks_uuid = \"{UUID}\"")
        };
        let cases: Vec<(String, &str, &str)> = vec![
            ("chunk_bytes = 1000".to_owned(), "erase.chunk_bytes", "1000"),
            // Left out, and wrong only against another setting: the table (the root here).
            (
                "chunk_bytes = 12288".to_owned(),
                "erase.checkpoint_bytes",
                "",
            ),
            (
                "[tools]\ncryptsetup = \"cryptsetup\"".to_owned(),
                "erase.tools.cryptsetup",
                "\"cryptsetup\"",
            ),
            (
                with_target(&luks("dev/x")),
                "erase.targets[0].device",
                "\"dev/x\"",
            ),
            (
                with_target("backend = \"luks2\"\ndevice = \"/dev/x\""),
                "erase.targets[0].luks_uuid",
                "[[targets]]",
            ),
            (
                with_target(
                    "backend = \"apfs-volume\"\ndevice = \"/dev/x\"\napfs_volume_uuid = \"nope\"",
                ),
                "erase.targets[0].apfs_volume_uuid",
                "\"nope\"",
            ),
            (
                with_target("device = \"/dev/x\""),
                "erase.targets[0].backend",
                "[[targets]]",
            ),
            (
                format!(
                    "{}[[targets]]\nname = \"data\"\n{}\n",
                    with_target(&luks("/dev/x")),
                    luks("/dev/y")
                ),
                "erase.targets[1].name",
                "\"data\"",
            ),
        ];
        for (text, key, at) in cases {
            let (error, found) = located(&text);
            assert_eq!(error.setting().to_string(), key, "{text:?}: {error}");
            assert_eq!(found, at, "{text:?}: {error}");
        }
    }

    #[test]
    fn a_target_without_a_required_key_says_which() {
        let (error, _) = located(&with_target("backend = \"luks2\""));
        assert_eq!(
            error.to_string(),
            "erase.targets[0]: device is missing: every target needs name, backend and device"
        );
    }
    #[test]
    fn targets_read_and_write_the_flat_form_the_journal_has_always_held() {
        // As journals written before the typed targets hold them.
        let luks = format!(
            r#"{{"name":"a","backend":"luks2","device":"/dev/x","luks_uuid":"{UUID}","apfs_volume_uuid":null}}"#
        );
        let apfs = format!(
            r#"{{"name":"b","backend":"apfs-volume","device":"/dev/rdisk4","luks_uuid":null,"apfs_volume_uuid":"{UUID}"}}"#
        );
        let target: TargetConfig = serde_json::from_str(&luks).unwrap();
        assert_eq!(
            target.keys,
            TargetKeys::Luks2 {
                luks_uuid: UUID.to_owned()
            }
        );
        assert_eq!(serde_json::to_string(&target).unwrap(), luks);
        let target: TargetConfig = serde_json::from_str(&apfs).unwrap();
        assert_eq!(target.backend(), Backend::ApfsVolume);
        assert_eq!(target.pin(), format!("apfs-volume-uuid:{UUID}"));
        assert_eq!(serde_json::to_string(&target).unwrap(), apfs);
        // A pin left out entirely reads as absent.
        let short =
            format!(r#"{{"name":"a","backend":"luks2","device":"/dev/x","luks_uuid":"{UUID}"}}"#);
        assert!(serde_json::from_str::<TargetConfig>(&short).is_ok());
    }

    #[test]
    fn a_target_whose_pins_do_not_fit_its_backend_cannot_be_read() {
        let cases = [
            (
                r#"{"name":"a","backend":"luks2","device":"/dev/x"}"#.to_owned(),
                "erase target \"a\": backend luks2 needs luks_uuid",
            ),
            (
                format!(
                    r#"{{"name":"a","backend":"luks2","device":"/dev/x","luks_uuid":"{UUID}","apfs_volume_uuid":"{UUID}"}}"#
                ),
                "apfs_volume_uuid does not apply to backend luks2",
            ),
            (
                format!(
                    r#"{{"name":"b","backend":"apfs-volume","device":"/dev/x","luks_uuid":"{UUID}"}}"#
                ),
                "backend apfs-volume needs apfs_volume_uuid",
            ),
        ];
        for (json, expected) in cases {
            let err = serde_json::from_str::<TargetConfig>(&json)
                .expect_err(&json)
                .to_string();
            assert!(err.contains(expected), "{json}: {err}");
        }
    }

    fn luks_target(name: &str, device: &Path) -> TargetConfig {
        TargetConfig {
            name: name.to_owned(),
            device: device.to_owned(),
            keys: TargetKeys::Luks2 {
                luks_uuid: UUID.to_owned(),
            },
        }
    }

    fn with_targets(targets: Vec<TargetConfig>) -> EraseConfig {
        EraseConfig {
            targets,
            ..EraseConfig::default()
        }
    }

    #[test]
    fn a_symlink_and_the_file_it_names_are_one_target() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("tenant.img");
        std::fs::write(&image, vec![0u8; 8192]).unwrap();
        let link = dir.path().join("by-id-tenant");
        std::os::unix::fs::symlink(&image, &link).unwrap();
        let other = dir.path().join("other.img");
        std::fs::write(&other, vec![0u8; 8192]).unwrap();
        let probe = |p: &Path| jex_platform::blockdev::probe(p).ok();

        let config = with_targets(vec![
            luks_target("a", &image),
            luks_target("b", &other),
            luks_target("c", &link),
        ]);
        // Different paths: the path comparison of `validate` lets them through.
        config.validate().unwrap();
        let err = config.check_distinct_targets(probe).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::SameTarget {
                    index: 2,
                    first_index: 0,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.setting().to_string(), "erase.targets[2].device");
        assert_eq!(
            err.other_setting().map(|s| s.to_string()).as_deref(),
            Some("erase.targets[0].device")
        );
        let text = err.to_string();
        assert!(
            text.contains("erase.targets[2].device")
                && text.contains("erase.targets[0].device")
                && text.contains("same file:dev="),
            "{text}"
        );

        // Distinct files, and a target that is missing (reported by its own check), pass.
        let config = with_targets(vec![
            luks_target("a", &image),
            luks_target("b", &other),
            luks_target("c", &dir.path().join("missing.img")),
        ]);
        config.check_distinct_targets(probe).unwrap();
    }

    #[test]
    fn devices_are_the_same_by_rdev_and_never_the_same_as_a_file() {
        let identity = |kind, dev, ino, rdev, serial: Option<&str>| TargetIdentity {
            kind,
            dev,
            ino,
            rdev,
            size_bytes: 1 << 30,
            serial: serial.map(str::to_owned),
        };
        let config = with_targets(vec![
            luks_target("a", Path::new("/dev/disk/by-id/nvme-X")),
            luks_target("b", Path::new("/img/b")),
            luks_target("c", Path::new("/dev/nvme1n1")),
        ]);
        let err = config
            .check_distinct_targets(|p| {
                Some(match p.to_str() {
                    Some("/img/b") => identity(TargetKind::File, 259, 7, 0, None),
                    // One disk through two nodes: the serial is read once and may be missing.
                    Some("/dev/nvme1n1") => identity(TargetKind::Device, 0, 0, 259 << 8, None),
                    _ => identity(TargetKind::Device, 0, 0, 259 << 8, Some("S4EW")),
                })
            })
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::SameTarget {
                    index: 2,
                    first_index: 0,
                    ..
                }
            ),
            "{err:?}"
        );
        // A file whose st_dev equals a device's st_rdev is another object.
        let config = with_targets(vec![
            luks_target("a", Path::new("/img/a")),
            luks_target("b", Path::new("/dev/b")),
        ]);
        config
            .check_distinct_targets(|p| {
                Some(if p.starts_with("/img") {
                    identity(TargetKind::File, 2049, 12, 0, None)
                } else {
                    identity(TargetKind::Device, 0, 0, 2049, None)
                })
            })
            .unwrap();
    }

    #[test]
    fn the_same_path_twice_names_both_targets() {
        let config = with_targets(vec![
            luks_target("a", Path::new("/dev/x")),
            luks_target("b", Path::new("/dev/x")),
        ]);
        let err = config.validate().unwrap_err();
        assert_eq!(err.setting().to_string(), "erase.targets[1].device");
        assert_eq!(
            err.other_setting().map(|s| s.to_string()).as_deref(),
            Some("erase.targets[0].device")
        );
    }

    #[test]
    fn diskutil_is_fixed_on_macos_and_the_operators_elsewhere() {
        use jex_platform::Os;
        let moved = Path::new("/usr/local/bin/diskutil");
        let err = check_fixed_tool(Os::MacOs, Setting::Diskutil, moved, DISKUTIL).unwrap_err();
        assert_eq!(err.setting(), Setting::Diskutil);
        let message = err.to_string();
        assert!(
            message.contains("erase.tools.diskutil")
                && message.contains("/usr/local/bin/diskutil")
                && message.contains("remove the setting"),
            "{message}"
        );
        check_fixed_tool(Os::MacOs, Setting::Diskutil, Path::new(DISKUTIL), DISKUTIL).unwrap();
        check_fixed_tool(Os::Linux, Setting::Diskutil, moved, DISKUTIL).unwrap();
    }

    #[test]
    fn the_internal_ssd_table_is_checked_per_platform() {
        use jex_platform::Os;
        let ssd = |devices: &[&str], accounts: &str| InternalSsdConfig {
            method: InternalSsdMethod::DeviceErase,
            inventory_devices: devices.iter().map(PathBuf::from).collect(),
            allowed_accounts: vec!["root".into()],
            accounts_file: PathBuf::from(accounts),
        };
        check_internal_ssd(Os::Linux, &ssd(&["/dev/sdb"], "/etc/passwd")).unwrap();
        check_internal_ssd(Os::MacOs, &ssd(&[], "/etc/passwd")).unwrap();
        for (os, config, says) in [
            (Os::Linux, ssd(&["sdb"], "/etc/passwd"), "absolute"),
            (
                Os::MacOs,
                ssd(&["/dev/disk4"], "/etc/passwd"),
                "no inventory_devices on macOS",
            ),
            (
                Os::MacOs,
                ssd(&[], "/etc/shadow"),
                "no accounts_file on macOS",
            ),
            (Os::Other, ssd(&[], "/etc/passwd"), "Linux or macOS"),
        ] {
            let err = check_internal_ssd(os, &config).unwrap_err();
            assert_eq!(err.setting(), Setting::InternalSsd);
            assert!(err.to_string().contains(says), "{os:?}: {err}");
        }
    }
}
