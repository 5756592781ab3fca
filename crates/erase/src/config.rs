//! Erase configuration: where state lives, I/O sizes, verification sampling and the targets.
//!
//! Deserialised from the `[erase]` table of the agent's TOML config (unknown keys rejected),
//! then checked by [`EraseConfig::validate`], whose errors say what to fix. Example:
//!
//! ```toml
//! [erase]
//! state_dir = "/var/lib/jex-agent/erase"
//! chunk_bytes = 8388608            # 8 MiB direct-I/O writes
//! checkpoint_bytes = 268435456     # durable flush + journal every 256 MiB
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

use std::path::{Path, PathBuf};

/// Default chunk size of overwrite writes.
pub const DEFAULT_CHUNK_BYTES: u64 = 8 << 20;
/// Default distance between durable checkpoints.
pub const DEFAULT_CHECKPOINT_BYTES: u64 = 256 << 20;
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
    /// Size of each direct-I/O write, bytes (multiple of 4096).
    #[serde(default = "default_chunk_bytes")]
    pub chunk_bytes: u64,
    /// Bytes between durable flush + journaled checkpoint (multiple of `chunk_bytes`): a crash
    /// redoes at most this much.
    #[serde(default = "default_checkpoint_bytes")]
    pub checkpoint_bytes: u64,
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

/// The key-destruction backend of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Backend {
    /// LUKS2 keyslots destroyed with `cryptsetup luksErase`.
    #[serde(rename = "luks2")]
    Luks2,
    /// An APFS volume deleted with `diskutil apfs deleteVolume`.
    #[serde(rename = "apfs-volume")]
    ApfsVolume,
}

impl Backend {
    /// The name as written in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Luks2 => "luks2",
            Backend::ApfsVolume => "apfs-volume",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tenant target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// A unique name (used in logs, progress and the certificate).
    pub name: String,
    /// How its keys are destroyed.
    pub backend: Backend,
    /// What is overwritten: a block device (by a stable path such as `/dev/disk/by-id/…`),
    /// a raw disk on macOS (`/dev/rdiskN`), or a disk image file. Absolute.
    pub device: PathBuf,
    /// The LUKS2 UUID pinned for a `luks2` target.
    #[serde(default)]
    pub luks_uuid: Option<String>,
    /// The APFS volume UUID pinned for an `apfs-volume` target.
    #[serde(default)]
    pub apfs_volume_uuid: Option<String>,
}

impl TargetConfig {
    /// The pinned key identity, e.g. `luks-uuid:9f5d…`; empty if missing (caught by validation).
    pub fn pin(&self) -> String {
        match self.backend {
            Backend::Luks2 => format!("luks-uuid:{}", self.luks_uuid.as_deref().unwrap_or("")),
            Backend::ApfsVolume => format!(
                "apfs-volume-uuid:{}",
                self.apfs_volume_uuid.as_deref().unwrap_or("")
            ),
        }
    }
}

/// An invalid `[erase]` setting; the message says what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A path that must be absolute is not.
    #[error("erase.{key} = {path:?} must be an absolute path")]
    RelativePath {
        /// The setting.
        key: String,
        /// Its value.
        path: PathBuf,
    },
    /// A size setting out of range or misaligned.
    #[error("erase.{key} = {value} must be a multiple of {multiple_of} between {min} and {max}")]
    BadSize {
        /// The setting.
        key: &'static str,
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
    #[error("erase.{key} = {value} is out of range: use {expected}")]
    OutOfRange {
        /// The setting.
        key: &'static str,
        /// Its value, as written.
        value: String,
        /// The accepted range.
        expected: &'static str,
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
        /// The name.
        name: String,
    },
    /// Two targets with one device.
    #[error("erase.targets: device {device:?} is listed twice (targets {first:?} and {second:?})")]
    DuplicateDevice {
        /// The device.
        device: PathBuf,
        /// First target's name.
        first: String,
        /// Second target's name.
        second: String,
    },
    /// A target's backend has no identity pin.
    #[error(
        "erase.targets {name:?}: backend {backend} needs {key} = \"<uuid>\" to pin the volume it destroys"
    )]
    MissingPin {
        /// Target name.
        name: String,
        /// Its backend.
        backend: Backend,
        /// The missing key.
        key: &'static str,
    },
    /// A pin that does not belong to the backend.
    #[error("erase.targets {name:?}: {key} does not apply to backend {backend}: remove it")]
    ForeignPin {
        /// Target name.
        name: String,
        /// Its backend.
        backend: Backend,
        /// The stray key.
        key: &'static str,
    },
    /// A pin that is not a UUID.
    #[error("erase.targets {name:?}: {key} = {value:?} is not a UUID (8-4-4-4-12 hex digits)")]
    BadPin {
        /// Target name.
        name: String,
        /// The key.
        key: &'static str,
        /// Its value.
        value: String,
    },
}

fn default_state_dir() -> PathBuf {
    if cfg!(target_os = "macos") {
        PathBuf::from("/Library/Application Support/JexCloud/erase")
    } else {
        PathBuf::from("/var/lib/jex-agent/erase")
    }
}
fn default_chunk_bytes() -> u64 {
    DEFAULT_CHUNK_BYTES
}
fn default_checkpoint_bytes() -> u64 {
    DEFAULT_CHECKPOINT_BYTES
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
    PathBuf::from("/usr/sbin/diskutil")
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
            verify_strata: DEFAULT_VERIFY_STRATA,
            verify_locations_per_stratum: DEFAULT_VERIFY_LOCATIONS_PER_STRATUM,
            verify_coverage_percent: None,
            verify_block_bytes: DEFAULT_VERIFY_BLOCK_BYTES,
            tools: ToolsConfig::default(),
            targets: Vec::new(),
        }
    }
}

fn check_size(key: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
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

fn check_absolute(key: String, path: &Path) -> Result<(), ConfigError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(ConfigError::RelativePath {
            key,
            path: path.to_path_buf(),
        })
    }
}

fn check_uuid(name: &str, key: &'static str, value: &str) -> Result<(), ConfigError> {
    let hyphenated = value.len() == 36 && value.matches('-').count() == 4;
    if hyphenated && uuid::Uuid::parse_str(value).is_ok() {
        Ok(())
    } else {
        Err(ConfigError::BadPin {
            name: name.to_owned(),
            key,
            value: value.to_owned(),
        })
    }
}

impl EraseConfig {
    /// Checks every setting; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_absolute("state_dir".into(), &self.state_dir)?;
        check_size("chunk_bytes", self.chunk_bytes, IO_GRANULE, 256 << 20)?;
        if self.checkpoint_bytes < self.chunk_bytes
            || !self.checkpoint_bytes.is_multiple_of(self.chunk_bytes)
        {
            return Err(ConfigError::BadSize {
                key: "checkpoint_bytes",
                value: self.checkpoint_bytes,
                multiple_of: self.chunk_bytes,
                min: self.chunk_bytes,
                max: u64::MAX - u64::MAX % self.chunk_bytes,
            });
        }
        check_size(
            "verify_block_bytes",
            self.verify_block_bytes,
            IO_GRANULE,
            64 << 20,
        )?;
        if !(1..=1_000_000).contains(&self.verify_strata) {
            return Err(ConfigError::OutOfRange {
                key: "verify_strata",
                value: self.verify_strata.to_string(),
                expected: "1 to 1000000 (NIST SP 800-88 asks for at least 1000)",
            });
        }
        if !(1..=1000).contains(&self.verify_locations_per_stratum) {
            return Err(ConfigError::OutOfRange {
                key: "verify_locations_per_stratum",
                value: self.verify_locations_per_stratum.to_string(),
                expected: "1 to 1000 (NIST SP 800-88 asks for at least 2)",
            });
        }
        if let Some(percent) = self.verify_coverage_percent
            && !(percent > 0.0 && percent <= 100.0)
        {
            return Err(ConfigError::OutOfRange {
                key: "verify_coverage_percent",
                value: percent.to_string(),
                expected: "a percentage above 0 and at most 100",
            });
        }
        check_absolute("tools.cryptsetup".into(), &self.tools.cryptsetup)?;
        check_absolute("tools.diskutil".into(), &self.tools.diskutil)?;
        for (index, target) in self.targets.iter().enumerate() {
            if target.name.trim().is_empty() {
                return Err(ConfigError::EmptyName { index });
            }
            check_absolute(format!("targets.{}.device", target.name), &target.device)?;
            let (needed, needed_key, stray, stray_key) = match target.backend {
                Backend::Luks2 => (
                    &target.luks_uuid,
                    "luks_uuid",
                    &target.apfs_volume_uuid,
                    "apfs_volume_uuid",
                ),
                Backend::ApfsVolume => (
                    &target.apfs_volume_uuid,
                    "apfs_volume_uuid",
                    &target.luks_uuid,
                    "luks_uuid",
                ),
            };
            let Some(pin) = needed else {
                return Err(ConfigError::MissingPin {
                    name: target.name.clone(),
                    backend: target.backend,
                    key: needed_key,
                });
            };
            check_uuid(&target.name, needed_key, pin)?;
            if stray.is_some() {
                return Err(ConfigError::ForeignPin {
                    name: target.name.clone(),
                    backend: target.backend,
                    key: stray_key,
                });
            }
            for earlier in &self.targets[..index] {
                if earlier.name == target.name {
                    return Err(ConfigError::DuplicateName {
                        name: target.name.clone(),
                    });
                }
                if earlier.device == target.device {
                    return Err(ConfigError::DuplicateDevice {
                        device: target.device.clone(),
                        first: earlier.name.clone(),
                        second: target.name.clone(),
                    });
                }
            }
        }
        Ok(())
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
        assert_eq!(config.targets[0].backend.as_str(), "luks2");
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
            ("verify_coverage_percent = 150.0".to_owned(), "at most 100"),
            ("verify_strata = 0".to_owned(), "at least 1000"),
            ("state_dir = \"state\"".to_owned(), "erase.state_dir"),
        ];
        for (text, expected) in cases {
            let err = parse(&text)
                .unwrap()
                .validate()
                .expect_err(&text)
                .to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
