//! Key destruction: the cryptographic half of the erase (NIST SP 800-88 Purge by crypto
//! erase). One backend per kind of target, behind [`KeyDestroyer`], chosen per target in config:
//! `luks2` (LUKS2 keyslots via `cryptsetup luksErase`) and `apfs-volume` (macOS
//! `diskutil apfs deleteVolume`).
//!
//! Protocol used by the erase engine, each step journaled before the next:
//! 1. `check_identity()` — the target is still the one the config pins (LUKS UUID, APFS volume
//!    UUID); refused otherwise.
//! 2. `snapshot()` — a [`KeyState`] taken before destruction (journaled).
//! 3. `destroy()` — idempotent: calling it again after a crash, when the keys are already gone,
//!    succeeds without doing anything harmful.
//! 4. `verify_destroyed(&before)` — checks that no key is left and that the key material changed,
//!    returning the evidence that goes into the certificate.
//!
//! Backends run their tools by absolute path with a cleared environment (`PATH` fixed, `LC_ALL=C`)
//! and a timeout ([`tool`]). Nothing here ever reads, logs or stores key material: snapshots
//! and evidence hold counts, identifiers and SHA-256 digests of (already encrypted) key areas.
//!
//! Submodules:
//! - [`luks2`]: [`luks2::Luks2`], LUKS2 keyslots destroyed with `cryptsetup luksErase`;
//! - [`apfs`]: [`apfs::ApfsVolume`], an APFS volume deleted with `diskutil apfs deleteVolume`;
//! - [`diskutil`]: portable parsers of `diskutil … -plist` output (tested on Linux against
//!   captured real output);
//! - [`tool`]: running an external program with a timeout.

pub mod apfs;
pub use jex_reclaim::diskutil;
pub mod luks2;
pub mod tool;

use std::collections::BTreeMap;

use crate::config::{TargetConfig, TargetKeys, ToolsConfig};
use apfs::ApfsVolume;
use luks2::Luks2;

/// What a backend observed of the keys before destruction; opaque to the engine, stored in
/// the journal as JSON. Holds hashes and counts, never key material.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyState {
    /// Backend-defined facts, e.g. `keyslots = "1"`, `keyslot_area_sha256 = "…"`.
    pub facts: BTreeMap<String, String>,
}

pub use jex_attest::KeyDestruction;

/// A key-destruction backend for one configured target.
pub trait KeyDestroyer: Send + Sync + std::fmt::Debug {
    /// The backend name as written in config (`luks2`, `apfs-volume`).
    fn backend(&self) -> &'static str;
    /// Checks that the target is still the one pinned in config.
    fn check_identity(&self) -> Result<(), KeyError>;
    /// Observes the keys before destruction.
    fn snapshot(&self) -> Result<KeyState, KeyError>;
    /// Destroys every key; idempotent.
    fn destroy(&self) -> Result<(), KeyError>;
    /// Checks that the keys are gone compared with `before`, returning the evidence.
    fn verify_destroyed(&self, before: &KeyState) -> Result<KeyDestruction, KeyError>;
}

/// Key destruction failed or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The target is not the one the config pins.
    #[error("target {target}: identity changed: expected {expected}, found {found}")]
    IdentityMismatch {
        /// Target name.
        target: String,
        /// The pinned identity.
        expected: String,
        /// What is there now.
        found: String,
    },
    /// A tool could not be run or failed.
    #[error("target {target}: running {program}: {detail}")]
    Tool {
        /// Target name.
        target: String,
        /// The program, by absolute path.
        program: String,
        /// What went wrong (exit status, the tool's own error message).
        detail: String,
    },
    /// Keys are still present after destruction.
    #[error("target {target}: keys not destroyed: {detail}")]
    NotDestroyed {
        /// Target name.
        target: String,
        /// What was still found.
        detail: String,
    },
    /// Reading the target failed.
    #[error("target {target}: reading {path}")]
    Io {
        /// Target name.
        target: String,
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The backend configuration is unusable (relative path, malformed UUID).
    #[error("target {target}: invalid {field} {value:?}: {reason}")]
    InvalidConfig {
        /// Target name.
        target: String,
        /// The setting, e.g. `device` or `cryptsetup path`.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is wrong and how to fix it.
        reason: &'static str,
    },
    /// A tool could not be started (missing, not executable).
    #[error("target {target}: starting {program}: install it or fix the configured path")]
    ToolStart {
        /// Target name.
        target: String,
        /// The program, by absolute path.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A tool did not finish in time and was killed.
    #[error("target {target}: {program} {args} did not finish within {seconds} s and was killed")]
    ToolTimeout {
        /// Target name.
        target: String,
        /// The program, by absolute path.
        program: String,
        /// Its arguments, space separated.
        args: String,
        /// The timeout.
        seconds: u64,
    },
    /// A tool's output could not be understood.
    #[error("target {target}: parsing the output of {program} {args}")]
    ToolOutput {
        /// Target name.
        target: String,
        /// The program, by absolute path.
        program: String,
        /// Its arguments, space separated.
        args: String,
        /// The parse failure.
        #[source]
        source: OutputError,
    },
    /// The device is not a LUKS2 device (not LUKS at all, or LUKS1).
    #[error("target {target}: {device} is not a LUKS2 device: check the configured device path")]
    NotLuks2 {
        /// Target name.
        target: String,
        /// The device or image path.
        device: String,
    },
    /// The LUKS2 device is open (a device-mapper mapping sits on it), so its volume key is
    /// still in kernel memory and erasing the keyslots would not destroy every copy of it.
    #[error(
        "target {target}: {device} is in use by {holders}: close the mapping (cryptsetup close) before erasing"
    )]
    DeviceInUse {
        /// Target name.
        target: String,
        /// The device or image path.
        device: String,
        /// The holders (e.g. `dm-0`), comma separated.
        holders: String,
    },
    /// The target is a volume the host needs (system role, boot volume); never destroyed.
    #[error("target {target}: refusing to destroy volume {volume}: {reason}")]
    ProtectedVolume {
        /// Target name.
        target: String,
        /// The volume (UUID and device identifier).
        volume: String,
        /// Why it is protected.
        reason: String,
    },
    /// The target does not exist, so there is nothing to snapshot or destroy.
    #[error("target {target}: {what} not found: check the pinned identity in the configuration")]
    NotFound {
        /// Target name.
        target: String,
        /// What was looked for, e.g. `APFS volume 9AA7…`.
        what: String,
    },
    /// A snapshot given to `verify_destroyed` lacks a fact or holds a malformed one.
    #[error("target {target}: key snapshot fact {fact:?} is missing or malformed")]
    Snapshot {
        /// Target name.
        target: String,
        /// The fact name.
        fact: &'static str,
    },
}

/// Why a tool's output could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Not valid JSON of the expected shape.
    #[error("invalid JSON")]
    Json(#[source] serde_json::Error),
    /// Not a property list of the expected shape.
    #[error("invalid property list")]
    Plist(#[source] diskutil::ParseError),
    /// Well-formed, but inconsistent or missing something.
    #[error("{0}")]
    Inconsistent(String),
}

/// The production backend of one target: `luks2` or `apfs-volume`, with the tools by the
/// absolute paths the config names. `deps::production_factory` wraps it into the engine's
/// factory; tests pass [`crate::testing::FakeKeys`] instead.
pub fn destroyer_for(
    tools: &ToolsConfig,
    target: &TargetConfig,
) -> Result<Box<dyn KeyDestroyer>, KeyError> {
    Ok(match &target.keys {
        TargetKeys::Luks2 { luks_uuid } => Box::new(Luks2::new(
            target.name.clone(),
            target.device.clone(),
            luks_uuid,
            tools.cryptsetup.clone(),
        )?),
        TargetKeys::ApfsVolume { apfs_volume_uuid } => Box::new(ApfsVolume::new(
            target.name.clone(),
            apfs_volume_uuid,
            tools.diskutil.clone(),
        )?),
    })
}
