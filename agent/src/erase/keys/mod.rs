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

use std::collections::BTreeMap;

/// What a backend observed of the keys before destruction; opaque to the engine, stored in
/// the journal as JSON. Holds hashes and counts, never key material.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyState {
    /// Backend-defined facts, e.g. `keyslots = "1"`, `keyslot_area_sha256 = "…"`.
    pub facts: BTreeMap<String, String>,
}

/// Proof that the keys are gone, for the certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyDestruction {
    /// The method, e.g. `cryptsetup luksErase` or `diskutil apfs deleteVolume`.
    pub method: String,
    /// The tool and its version, e.g. `cryptsetup 2.6.1`.
    pub tool: String,
    /// Before/after facts that show the destruction, e.g. `keyslots_before = "1"`,
    /// `keyslots_after = "0"`, `keyslot_area_changed = "true"`.
    pub evidence: BTreeMap<String, String>,
}

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
}
