//! The `luks2` key-destruction backend: LUKS2 keyslots destroyed with `cryptsetup luksErase`.
//!
//! A LUKS2 device keeps its volume key only inside keyslots: each keyslot's key material
//! (the volume key, anti-forensic split and encrypted with a passphrase-derived key) lives in
//! the binary keyslots area that follows the two copies of the header. `cryptsetup luksErase`
//! overwrites the key material of every active keyslot and removes the keyslots from the JSON
//! metadata. Afterwards no passphrase can recover the volume key, so the ciphertext in the data
//! segment is unreadable: a crypto erase (NIST SP 800-88 Purge), as long as no other copy of the
//! volume key exists. Two copies this backend can see are refused or reported:
//! - an open device-mapper mapping on the device (the key is in kernel memory): `destroy`
//!   refuses with [`KeyError::DeviceInUse`] and `verify_destroyed` fails while one exists;
//! - header backups (`luksHeaderBackup` files) are outside the device and outside this
//!   backend's reach: the operator must not keep any.
//!
//! `luksErase` leaves the JSON metadata (segments, digests, tokens), the UUID and the data
//! segment untouched; the UUID staying is what lets [`Luks2::check_identity`] work after a crash
//! mid-erase.
//!
//! What is observed ([`KeyState`] facts, written by `snapshot` and read back by
//! `verify_destroyed`):
//! - `luks_uuid`: the header UUID;
//! - `keyslots`, `keyslot_ids`: how many keyslots exist and their ids (comma separated), from
//!   `cryptsetup luksDump --dump-json-metadata`;
//! - `keyslot_area_offset`, `keyslot_area_bytes`: the binary keyslots area, from the header's
//!   `config` (it starts after both headers, at `2 × (4096 + json_size)`, and is `keyslots_size`
//!   bytes long; every keyslot's own `area` must lie inside it);
//! - `keyslot_area_sha256`: SHA-256 of that whole area, read from the device. The area holds
//!   only encrypted, anti-forensic-split key material, and a digest of it reveals nothing.
//!
//! The evidence ([`KeyDestruction`]) is `method = "cryptsetup luksErase"`, `tool = "cryptsetup
//! <version>"` and the before/after facts: `keyslots_before`, `keyslots_after` (must be 0),
//! `keyslot_area_sha256_before`, `keyslot_area_sha256_after` (must differ),
//! `keyslot_area_changed`, `keyslot_area_offset`, `keyslot_area_bytes`, `luks_uuid`,
//! `open_mappings` (must be `none`).
//!
//! `destroy` is idempotent: with no keyslot left it does nothing. A device that had no keyslot
//! when the snapshot was taken fails verification: nothing was destroyed by this operation, so
//! there is nothing it can vouch for.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::info;

use super::tool::{self, DESTROY_TIMEOUT, QUERY_TIMEOUT, ToolOutput};
use super::{KeyDestroyer, KeyDestruction, KeyError, KeyState, OutputError};

/// Where Debian's `cryptsetup-bin` (2:2.6.1) installs `cryptsetup`: the package ships
/// `/sbin/cryptsetup`, which is this path on merged-/usr systems (Debian 12+, Ubuntu 20.04+);
/// Fedora and Arch install it here too.
pub const DEFAULT_CRYPTSETUP: &str = "/usr/sbin/cryptsetup";

/// Backend name as written in config.
pub const BACKEND: &str = "luks2";

/// The method recorded in the evidence.
pub const METHOD: &str = "cryptsetup luksErase";

/// sysfs directory listing block devices, for finding device-mapper holders.
const SYSFS_CLASS_BLOCK: &str = "/sys/class/block";

/// Size of the LUKS2 binary header that precedes the JSON area in each header copy.
const LUKS2_BINARY_HEADER_BYTES: u64 = 4096;

/// Read size when hashing the keyslots area.
const HASH_CHUNK_BYTES: usize = 1 << 20;

/// Facts written into [`KeyState`].
mod fact {
    pub const LUKS_UUID: &str = "luks_uuid";
    pub const KEYSLOTS: &str = "keyslots";
    pub const KEYSLOT_IDS: &str = "keyslot_ids";
    pub const AREA_OFFSET: &str = "keyslot_area_offset";
    pub const AREA_BYTES: &str = "keyslot_area_bytes";
    pub const AREA_SHA256: &str = "keyslot_area_sha256";
}

/// One LUKS2 target: a device or image file whose header carries the pinned UUID.
#[derive(Debug, Clone)]
pub struct Luks2 {
    target: String,
    device: PathBuf,
    luks_uuid: String,
    cryptsetup: PathBuf,
    sysfs_class_block: PathBuf,
}

impl Luks2 {
    /// A LUKS2 target named `target` (from config) on `device` (absolute path of a block
    /// device or image file), pinned to `luks_uuid` (the header UUID, as printed by
    /// `cryptsetup luksUUID`; compared case-insensitively), using the `cryptsetup` at the
    /// absolute path `cryptsetup` (normally [`DEFAULT_CRYPTSETUP`]).
    pub fn new(
        target: impl Into<String>,
        device: impl Into<PathBuf>,
        luks_uuid: &str,
        cryptsetup: impl Into<PathBuf>,
    ) -> Result<Self, KeyError> {
        let target = target.into();
        let device = device.into();
        let cryptsetup = cryptsetup.into();
        let invalid = |field, value: &dyn std::fmt::Display, reason| KeyError::InvalidConfig {
            target: target.clone(),
            field,
            value: value.to_string(),
            reason,
        };
        if !device.is_absolute() || device.to_str().is_none() {
            return Err(invalid(
                "device",
                &device.display(),
                "give the absolute, UTF-8 path of the device or image",
            ));
        }
        if !cryptsetup.is_absolute() {
            return Err(invalid(
                "cryptsetup path",
                &cryptsetup.display(),
                "give an absolute path (tools are never looked up in PATH)",
            ));
        }
        let parsed = uuid::Uuid::parse_str(luks_uuid).map_err(|_| {
            invalid(
                "LUKS UUID",
                &luks_uuid,
                "give the UUID printed by `cryptsetup luksUUID DEVICE`",
            )
        })?;
        Ok(Self {
            target,
            device,
            luks_uuid: parsed.hyphenated().to_string(),
            cryptsetup,
            sysfs_class_block: PathBuf::from(SYSFS_CLASS_BLOCK),
        })
    }

    /// The device or image path.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// The pinned LUKS UUID (lowercase, hyphenated).
    pub fn luks_uuid(&self) -> &str {
        &self.luks_uuid
    }

    /// Looks for device-mapper holders under `dir` instead of `/sys/class/block` (tests).
    #[cfg(test)]
    fn with_sysfs_class_block(mut self, dir: impl Into<PathBuf>) -> Self {
        self.sysfs_class_block = dir.into();
        self
    }

    fn device_str(&self) -> &str {
        // Checked to be UTF-8 in `new`.
        self.device.to_str().unwrap_or_default()
    }

    fn run(&self, args: &[&str], timeout: Duration) -> Result<ToolOutput, KeyError> {
        tool::run_for_target(&self.target, &self.cryptsetup, args, timeout)
    }

    fn run_ok(&self, args: &[&str], timeout: Duration) -> Result<ToolOutput, KeyError> {
        let out = self.run(args, timeout)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(tool::failed(&self.target, &self.cryptsetup, args, &out))
        }
    }

    fn output_error(&self, args: &[&str], source: OutputError) -> KeyError {
        KeyError::ToolOutput {
            target: self.target.clone(),
            program: self.cryptsetup.display().to_string(),
            args: args.join(" "),
            source,
        }
    }

    fn io_error(&self, source: io::Error) -> KeyError {
        KeyError::Io {
            target: self.target.clone(),
            path: self.device.display().to_string(),
            source,
        }
    }

    /// Fails unless the device exists and carries a LUKS2 header.
    fn ensure_luks2(&self) -> Result<(), KeyError> {
        // A clear I/O error for a missing path, rather than cryptsetup's exit code 4.
        fs::metadata(&self.device).map_err(|e| self.io_error(e))?;
        let args = ["isLuks", "--type", "luks2", self.device_str()];
        let out = self.run(&args, QUERY_TIMEOUT)?;
        match out.status.code() {
            Some(0) => Ok(()),
            // isLuks: 1 means "not a LUKS device (of this type)".
            Some(1) => Err(KeyError::NotLuks2 {
                target: self.target.clone(),
                device: self.device.display().to_string(),
            }),
            _ => Err(tool::failed(&self.target, &self.cryptsetup, &args, &out)),
        }
    }

    fn current_uuid(&self) -> Result<String, KeyError> {
        let args = ["luksUUID", self.device_str()];
        let out = self.run_ok(&args, QUERY_TIMEOUT)?;
        let text = String::from_utf8_lossy(&out.stdout)
            .trim()
            .to_ascii_lowercase();
        if text.is_empty() {
            return Err(
                self.output_error(&args, OutputError::Inconsistent("empty UUID".to_owned()))
            );
        }
        Ok(text)
    }

    fn metadata(&self) -> Result<Luks2Metadata, KeyError> {
        let args = ["luksDump", "--dump-json-metadata", self.device_str()];
        let out = self.run_ok(&args, QUERY_TIMEOUT)?;
        parse_metadata(&out.stdout).map_err(|e| self.output_error(&args, e))
    }

    fn tool_version(&self) -> Result<String, KeyError> {
        let args = ["--version"];
        let out = self.run_ok(&args, QUERY_TIMEOUT)?;
        parse_version(&out.stdout).ok_or_else(|| {
            self.output_error(
                &args,
                OutputError::Inconsistent("no `cryptsetup X.Y.Z` version line".to_owned()),
            )
        })
    }

    /// Keyslots and the digest of the keyslots area, as they are now.
    fn observe(&self) -> Result<Observation, KeyError> {
        self.ensure_luks2()?;
        let uuid = self.current_uuid()?;
        let args = ["luksDump", "--dump-json-metadata", self.device_str()];
        let metadata = self.metadata()?;
        let area = metadata
            .keyslot_area()
            .map_err(|e| self.output_error(&args, e))?;
        let area_sha256 = hash_area(&self.device, area).map_err(|e| self.io_error(e))?;
        Ok(Observation {
            uuid,
            keyslot_ids: metadata.keyslot_ids(),
            area,
            area_sha256,
        })
    }

    fn open_holders(&self) -> Result<Vec<String>, KeyError> {
        holders(&self.device, &self.sysfs_class_block).map_err(|e| self.io_error(e))
    }
}

impl KeyDestroyer for Luks2 {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn check_identity(&self) -> Result<(), KeyError> {
        self.ensure_luks2()?;
        let found = self.current_uuid()?;
        if found != self.luks_uuid {
            return Err(KeyError::IdentityMismatch {
                target: self.target.clone(),
                expected: format!("luks-uuid:{}", self.luks_uuid),
                found: format!("luks-uuid:{found}"),
            });
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<KeyState, KeyError> {
        let now = self.observe()?;
        let mut state = KeyState {
            facts: Default::default(),
        };
        let facts = &mut state.facts;
        facts.insert(fact::LUKS_UUID.to_owned(), now.uuid);
        facts.insert(fact::KEYSLOTS.to_owned(), now.keyslot_ids.len().to_string());
        facts.insert(fact::KEYSLOT_IDS.to_owned(), now.keyslot_ids.join(","));
        facts.insert(fact::AREA_OFFSET.to_owned(), now.area.offset.to_string());
        facts.insert(fact::AREA_BYTES.to_owned(), now.area.size.to_string());
        facts.insert(fact::AREA_SHA256.to_owned(), now.area_sha256);
        Ok(state)
    }

    fn destroy(&self) -> Result<(), KeyError> {
        // Re-checked here, right before the destructive step, even though the engine checked
        // it too: the device path could have been re-pointed in between.
        self.check_identity()?;
        let holders = self.open_holders()?;
        if !holders.is_empty() {
            return Err(KeyError::DeviceInUse {
                target: self.target.clone(),
                device: self.device.display().to_string(),
                holders: holders.join(","),
            });
        }
        let keyslots = self.metadata()?.keyslots.len();
        if keyslots == 0 {
            info!(target_name = %self.target, device = %self.device.display(),
                "no LUKS2 keyslot left; nothing to erase");
            return Ok(());
        }
        self.run_ok(
            &["luksErase", "--batch-mode", self.device_str()],
            DESTROY_TIMEOUT,
        )?;
        info!(target_name = %self.target, device = %self.device.display(), keyslots,
            "LUKS2 keyslots erased");
        Ok(())
    }

    fn verify_destroyed(&self, before: &KeyState) -> Result<KeyDestruction, KeyError> {
        let before = SnapshotFacts::read(&self.target, before)?;
        let now = self.observe()?;
        let not_destroyed = |detail: String| KeyError::NotDestroyed {
            target: self.target.clone(),
            detail,
        };
        if now.uuid != self.luks_uuid {
            return Err(KeyError::IdentityMismatch {
                target: self.target.clone(),
                expected: format!("luks-uuid:{}", self.luks_uuid),
                found: format!("luks-uuid:{}", now.uuid),
            });
        }
        if before.keyslots == 0 {
            return Err(not_destroyed(
                "the device had no keyslot when the snapshot was taken, so this operation \
                 destroyed nothing it can vouch for"
                    .to_owned(),
            ));
        }
        if !now.keyslot_ids.is_empty() {
            return Err(not_destroyed(format!(
                "keyslots still present: {}",
                now.keyslot_ids.join(",")
            )));
        }
        if now.area_sha256 == before.area_sha256 {
            return Err(not_destroyed(
                "the keyslots area is unchanged since the snapshot".to_owned(),
            ));
        }
        let holders = self.open_holders()?;
        if !holders.is_empty() {
            return Err(not_destroyed(format!(
                "the device is open ({}): the volume key is still in kernel memory",
                holders.join(",")
            )));
        }
        let tool = self.tool_version()?;
        let evidence = [
            ("luks_uuid", now.uuid),
            ("keyslots_before", before.keyslots.to_string()),
            ("keyslots_after", "0".to_owned()),
            ("keyslot_area_offset", now.area.offset.to_string()),
            ("keyslot_area_bytes", now.area.size.to_string()),
            ("keyslot_area_sha256_before", before.area_sha256),
            ("keyslot_area_sha256_after", now.area_sha256),
            ("keyslot_area_changed", "true".to_owned()),
            ("open_mappings", "none".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Ok(KeyDestruction {
            method: METHOD.to_owned(),
            tool,
            evidence,
        })
    }
}

/// What `observe` saw.
#[derive(Debug)]
struct Observation {
    uuid: String,
    keyslot_ids: Vec<String>,
    area: KeyslotArea,
    area_sha256: String,
}

/// The facts of a snapshot that verification needs.
struct SnapshotFacts {
    keyslots: u64,
    area_sha256: String,
}

impl SnapshotFacts {
    fn read(target: &str, state: &KeyState) -> Result<Self, KeyError> {
        let missing = |fact| KeyError::Snapshot {
            target: target.to_owned(),
            fact,
        };
        let keyslots = state
            .facts
            .get(fact::KEYSLOTS)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| missing(fact::KEYSLOTS))?;
        let area_sha256 = state
            .facts
            .get(fact::AREA_SHA256)
            .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
            .cloned()
            .ok_or_else(|| missing(fact::AREA_SHA256))?;
        Ok(Self {
            keyslots,
            area_sha256,
        })
    }
}

/// The binary keyslots area of a LUKS2 device, in bytes from the start of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyslotArea {
    /// First byte.
    pub offset: u64,
    /// Length.
    pub size: u64,
}

/// The parts of the LUKS2 JSON metadata (`cryptsetup luksDump --dump-json-metadata`) this
/// backend reads; everything else is ignored.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Luks2Metadata {
    /// Keyslots by id.
    pub keyslots: std::collections::BTreeMap<String, Luks2Keyslot>,
    /// Header layout.
    pub config: Luks2Config,
}

/// One keyslot (only where its key material lives).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Luks2Keyslot {
    /// The keyslot's key-material area.
    pub area: Luks2Area,
}

/// A keyslot's key-material area. LUKS2 writes 64-bit numbers as JSON strings.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Luks2Area {
    /// Offset from the start of the device, decimal string.
    pub offset: String,
    /// Length, decimal string.
    pub size: String,
}

/// The header's `config` object.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Luks2Config {
    /// Size of the JSON area of each header copy, decimal string.
    pub json_size: String,
    /// Size of the binary keyslots area, decimal string.
    pub keyslots_size: String,
}

impl Luks2Metadata {
    /// Keyslot ids in numeric order.
    pub fn keyslot_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.keyslots.keys().cloned().collect();
        ids.sort_by_key(|id| (id.len(), id.clone()));
        ids
    }

    /// The binary keyslots area, checked to contain every keyslot's own area.
    pub fn keyslot_area(&self) -> Result<KeyslotArea, OutputError> {
        let json_size = parse_u64("config.json_size", &self.config.json_size)?;
        let size = parse_u64("config.keyslots_size", &self.config.keyslots_size)?;
        let offset = json_size
            .checked_add(LUKS2_BINARY_HEADER_BYTES)
            .and_then(|hdr| hdr.checked_mul(2))
            .ok_or_else(|| OutputError::Inconsistent("config.json_size too large".to_owned()))?;
        let end = offset
            .checked_add(size)
            .ok_or_else(|| OutputError::Inconsistent("keyslots area too large".to_owned()))?;
        for (id, slot) in &self.keyslots {
            let slot_offset = parse_u64("keyslot area offset", &slot.area.offset)?;
            let slot_size = parse_u64("keyslot area size", &slot.area.size)?;
            let inside = slot_offset >= offset
                && slot_offset
                    .checked_add(slot_size)
                    .is_some_and(|slot_end| slot_end <= end);
            if !inside {
                return Err(OutputError::Inconsistent(format!(
                    "keyslot {id} area {slot_offset}+{slot_size} lies outside the keyslots area \
                     {offset}+{size}"
                )));
            }
        }
        Ok(KeyslotArea { offset, size })
    }
}

fn parse_u64(what: &str, value: &str) -> Result<u64, OutputError> {
    value
        .parse()
        .map_err(|_| OutputError::Inconsistent(format!("{what} {value:?} is not a number")))
}

/// Parses `cryptsetup luksDump --dump-json-metadata` output.
pub fn parse_metadata(json: &[u8]) -> Result<Luks2Metadata, OutputError> {
    serde_json::from_slice(json).map_err(OutputError::Json)
}

/// Parses `cryptsetup --version` output (`cryptsetup 2.6.1 flags: …`) into `cryptsetup 2.6.1`.
pub fn parse_version(stdout: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stdout);
    let mut words = text.split_whitespace();
    let name = words.next()?;
    let version = words.next()?;
    let looks_like_version = version
        .split('.')
        .next()
        .is_some_and(|major| !major.is_empty() && major.bytes().all(|b| b.is_ascii_digit()));
    (name == "cryptsetup" && looks_like_version).then(|| format!("{name} {version}"))
}

/// SHA-256 (lowercase hex) of `area` of the file or device at `path`.
fn hash_area(path: &Path, area: KeyslotArea) -> io::Result<String> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(area.offset))?;
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut remaining = area.size;
    let mut buf = vec![0u8; HASH_CHUNK_BYTES];
    while remaining > 0 {
        let want =
            usize::try_from(remaining.min(HASH_CHUNK_BYTES as u64)).unwrap_or(HASH_CHUNK_BYTES);
        let chunk = &mut buf[..want];
        file.read_exact(chunk)?;
        hasher.update(&*chunk);
        remaining -= want as u64;
    }
    Ok(hex::encode(hasher.finish()))
}

/// The device-mapper (or other) holders of `device`, found in sysfs under `class_block`
/// (normally `/sys/class/block`). A block device's holders are listed in
/// `<class_block>/<name>/holders/`; an image file counts as held when a loop device backed by
/// it (`<class_block>/loopN/loop/backing_file`) has holders.
fn holders(device: &Path, class_block: &Path) -> io::Result<Vec<String>> {
    let canonical = fs::canonicalize(device)?;
    let file_type = fs::metadata(&canonical)?.file_type();
    let mut devices = Vec::new();
    if file_type.is_block_device() {
        if let Some(name) = canonical.file_name() {
            devices.push(name.to_owned());
        }
    } else if class_block.is_dir() {
        for entry in fs::read_dir(class_block)? {
            let entry = entry?;
            let name = entry.file_name();
            if !name.to_string_lossy().starts_with("loop") {
                continue;
            }
            let backing = match fs::read_to_string(entry.path().join("loop/backing_file")) {
                Ok(text) => text,
                // Unattached loop devices have no backing_file.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if Path::new(backing.trim_end()) == canonical {
                devices.push(name);
            }
        }
    }
    let mut found = Vec::new();
    for name in devices {
        let dir = class_block.join(&name).join("holders");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            found.push(entry?.file_name().to_string_lossy().into_owned());
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use super::*;

    const PASSPHRASE: &[u8] = b"correct horse battery staple";
    const SECOND_PASSPHRASE: &[u8] = b"a second, independent keyslot";

    /// The real cryptsetup; a missing one fails the test (install `cryptsetup-bin`).
    fn cryptsetup() -> PathBuf {
        let path = PathBuf::from(DEFAULT_CRYPTSETUP);
        assert!(
            path.is_file(),
            "{DEFAULT_CRYPTSETUP} is missing: install it (apt-get install cryptsetup-bin)"
        );
        path
    }

    fn key_file(dir: &Path, name: &str, passphrase: &[u8]) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, passphrase).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    fn cryptsetup_cmd(args: &[&str]) -> std::process::Output {
        Command::new(cryptsetup()).args(args).output().unwrap()
    }

    fn must(args: &[&str]) -> String {
        let out = cryptsetup_cmd(args);
        assert!(
            out.status.success(),
            "cryptsetup {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A 20 MiB image formatted as LUKS2 (fast PBKDF2) with one keyslot; returns its path and
    /// UUID.
    fn luks2_image(dir: &Path, name: &str) -> (PathBuf, String) {
        let image = dir.join(name);
        File::create(&image).unwrap().set_len(20 << 20).unwrap();
        let key = key_file(dir, &format!("{name}.key"), PASSPHRASE);
        must(&[
            "luksFormat",
            "--type",
            "luks2",
            "--batch-mode",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            key.to_str().unwrap(),
            image.to_str().unwrap(),
        ]);
        let uuid = must(&["luksUUID", image.to_str().unwrap()])
            .trim()
            .to_owned();
        (image, uuid)
    }

    fn add_keyslot(dir: &Path, image: &Path) {
        let old = key_file(dir, "old.key", PASSPHRASE);
        let new = key_file(dir, "new.key", SECOND_PASSPHRASE);
        must(&[
            "luksAddKey",
            "--batch-mode",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            old.to_str().unwrap(),
            image.to_str().unwrap(),
            new.to_str().unwrap(),
        ]);
    }

    fn passphrase_opens(dir: &Path, image: &Path, passphrase: &[u8]) -> bool {
        let key = key_file(dir, "probe.key", passphrase);
        cryptsetup_cmd(&[
            "open",
            "--test-passphrase",
            "--key-file",
            key.to_str().unwrap(),
            image.to_str().unwrap(),
        ])
        .status
        .success()
    }

    fn backend(image: &Path, uuid: &str) -> Luks2 {
        Luks2::new("tenant-disk", image, uuid, cryptsetup()).unwrap()
    }

    fn sha256_file(path: &Path) -> String {
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &fs::read(path).unwrap(),
        ))
    }

    #[test]
    fn destroy_then_verify_removes_every_keyslot_and_changes_the_keyslot_area() {
        let dir = tempfile::tempdir().unwrap();
        let (image, uuid) = luks2_image(dir.path(), "disk.img");
        add_keyslot(dir.path(), &image);
        assert!(passphrase_opens(dir.path(), &image, PASSPHRASE));
        assert!(passphrase_opens(dir.path(), &image, SECOND_PASSPHRASE));

        let luks = backend(&image, &uuid);
        luks.check_identity().unwrap();
        let before = luks.snapshot().unwrap();
        assert_eq!(before.facts["keyslots"], "2");
        assert_eq!(before.facts["keyslot_ids"], "0,1");
        assert_eq!(before.facts["luks_uuid"], uuid);

        luks.destroy().unwrap();
        let evidence = luks.verify_destroyed(&before).unwrap();

        assert!(!passphrase_opens(dir.path(), &image, PASSPHRASE));
        assert!(!passphrase_opens(dir.path(), &image, SECOND_PASSPHRASE));
        assert_eq!(evidence.method, "cryptsetup luksErase");
        let version = must(&["--version"]);
        let expected_tool = version
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(evidence.tool, expected_tool);
        let e = &evidence.evidence;
        assert_eq!(e["keyslots_before"], "2");
        assert_eq!(e["keyslots_after"], "0");
        assert_eq!(e["keyslot_area_changed"], "true");
        assert_eq!(e["open_mappings"], "none");
        assert_eq!(e["luks_uuid"], uuid);
        assert_eq!(
            e["keyslot_area_sha256_before"],
            before.facts["keyslot_area_sha256"]
        );
        assert_ne!(
            e["keyslot_area_sha256_before"],
            e["keyslot_area_sha256_after"]
        );

        // The recorded "after" digest is the digest of the bytes actually on disk.
        let offset: usize = e["keyslot_area_offset"].parse().unwrap();
        let bytes: usize = e["keyslot_area_bytes"].parse().unwrap();
        let on_disk = fs::read(&image).unwrap();
        assert_eq!(
            hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                &on_disk[offset..offset + bytes]
            )),
            e["keyslot_area_sha256_after"]
        );
        // The dump confirms: no keyslot left.
        let dump: serde_json::Value = serde_json::from_str(&must(&[
            "luksDump",
            "--dump-json-metadata",
            image.to_str().unwrap(),
        ]))
        .unwrap();
        assert_eq!(dump["keyslots"], serde_json::json!({}));
    }

    #[test]
    fn destroying_twice_succeeds_and_the_second_time_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (image, uuid) = luks2_image(dir.path(), "disk.img");
        let luks = backend(&image, &uuid);
        let before = luks.snapshot().unwrap();

        luks.destroy().unwrap();
        let after_first = sha256_file(&image);
        luks.destroy().unwrap();
        assert_eq!(
            sha256_file(&image),
            after_first,
            "second destroy wrote to the image"
        );

        let evidence = luks.verify_destroyed(&before).unwrap();
        assert_eq!(evidence.evidence["keyslots_after"], "0");
        // Identity still holds after the erase (the UUID stays in the header), so a resumed
        // operation can re-check it.
        luks.check_identity().unwrap();
    }

    #[test]
    fn check_identity_refuses_an_image_with_another_uuid() {
        let dir = tempfile::tempdir().unwrap();
        let (pinned_image, pinned_uuid) = luks2_image(dir.path(), "pinned.img");
        let (other_image, other_uuid) = luks2_image(dir.path(), "other.img");
        assert_ne!(pinned_uuid, other_uuid);

        // The config pins the first image's UUID, but the path now holds the other image.
        let luks = backend(&other_image, &pinned_uuid);
        match luks.check_identity().unwrap_err() {
            KeyError::IdentityMismatch {
                target,
                expected,
                found,
            } => {
                assert_eq!(target, "tenant-disk");
                assert_eq!(expected, format!("luks-uuid:{pinned_uuid}"));
                assert_eq!(found, format!("luks-uuid:{other_uuid}"));
            }
            other => panic!("expected IdentityMismatch, got {other:?}"),
        }
        // destroy re-checks identity and leaves the other image alone.
        let before = sha256_file(&other_image);
        assert!(matches!(
            luks.destroy().unwrap_err(),
            KeyError::IdentityMismatch { .. }
        ));
        assert_eq!(sha256_file(&other_image), before);
        assert!(passphrase_opens(dir.path(), &other_image, PASSPHRASE));
        // The pinned image, at its own path, passes.
        backend(&pinned_image, &pinned_uuid)
            .check_identity()
            .unwrap();
    }

    #[test]
    fn pinned_uuid_is_compared_case_insensitively() {
        let dir = tempfile::tempdir().unwrap();
        let (image, uuid) = luks2_image(dir.path(), "disk.img");
        backend(&image, &uuid.to_uppercase())
            .check_identity()
            .unwrap();
    }

    #[test]
    fn a_file_that_is_not_luks_gives_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.img");
        fs::write(&plain, vec![0x5a; 1 << 20]).unwrap();
        let luks = backend(&plain, "111374da-f7d5-40df-9097-26f7f1ed2a29");

        for err in [
            luks.check_identity().unwrap_err(),
            luks.snapshot().unwrap_err(),
            luks.destroy().unwrap_err(),
        ] {
            match &err {
                KeyError::NotLuks2 { target, device } => {
                    assert_eq!(target, "tenant-disk");
                    assert_eq!(device, plain.to_str().unwrap());
                }
                other => panic!("expected NotLuks2, got {other:?}"),
            }
            assert_eq!(
                err.to_string(),
                format!(
                    "target tenant-disk: {} is not a LUKS2 device: check the configured device path",
                    plain.display()
                )
            );
        }
        assert_eq!(fs::read(&plain).unwrap(), vec![0x5a; 1 << 20]);
    }

    #[test]
    fn a_luks1_image_is_refused_as_not_luks2() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("luks1.img");
        File::create(&image).unwrap().set_len(8 << 20).unwrap();
        let key = key_file(dir.path(), "k", PASSPHRASE);
        must(&[
            "luksFormat",
            "--type",
            "luks1",
            "--batch-mode",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
            key.to_str().unwrap(),
            image.to_str().unwrap(),
        ]);
        let uuid = must(&["luksUUID", image.to_str().unwrap()])
            .trim()
            .to_owned();
        let err = backend(&image, &uuid).check_identity().unwrap_err();
        assert!(matches!(err, KeyError::NotLuks2 { .. }), "{err:?}");
    }

    #[test]
    fn a_missing_device_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.img");
        let err = backend(&missing, "111374da-f7d5-40df-9097-26f7f1ed2a29")
            .check_identity()
            .unwrap_err();
        match err {
            KeyError::Io { path, source, .. } => {
                assert_eq!(path, missing.to_str().unwrap());
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected Io, got {other:?}"),
        }
    }

    #[test]
    fn verification_fails_when_destroy_was_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let (image, uuid) = luks2_image(dir.path(), "disk.img");
        let luks = backend(&image, &uuid);
        let before = luks.snapshot().unwrap();
        let err = luks.verify_destroyed(&before).unwrap_err();
        match err {
            KeyError::NotDestroyed { detail, .. } => {
                assert!(detail.contains("keyslots still present: 0"), "{detail}")
            }
            other => panic!("expected NotDestroyed, got {other:?}"),
        }
    }

    #[test]
    fn verification_fails_when_the_snapshot_already_had_no_keyslot() {
        let dir = tempfile::tempdir().unwrap();
        let (image, uuid) = luks2_image(dir.path(), "disk.img");
        let luks = backend(&image, &uuid);
        luks.destroy().unwrap();
        let before = luks.snapshot().unwrap();
        assert_eq!(before.facts["keyslots"], "0");
        luks.destroy().unwrap();
        let err = luks.verify_destroyed(&before).unwrap_err();
        assert!(matches!(err, KeyError::NotDestroyed { .. }), "{err:?}");
    }

    #[test]
    fn verification_rejects_a_snapshot_missing_its_facts() {
        let dir = tempfile::tempdir().unwrap();
        let (image, uuid) = luks2_image(dir.path(), "disk.img");
        let luks = backend(&image, &uuid);
        let mut before = luks.snapshot().unwrap();
        before.facts.remove("keyslot_area_sha256");
        let err = luks.verify_destroyed(&before).unwrap_err();
        assert!(
            matches!(
                err,
                KeyError::Snapshot {
                    fact: "keyslot_area_sha256",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn destroy_refuses_an_image_held_open_through_a_loop_device() {
        let dir = tempfile::tempdir().unwrap();
        let (image, uuid) = luks2_image(dir.path(), "disk.img");
        // A sysfs tree in which loop7 is backed by the image and dm-3 (an open dm-crypt
        // mapping) holds loop7.
        let sysfs = dir.path().join("sys-class-block");
        fs::create_dir_all(sysfs.join("loop7/loop")).unwrap();
        fs::create_dir_all(sysfs.join("loop7/holders/dm-3")).unwrap();
        fs::create_dir_all(sysfs.join("loop6")).unwrap();
        fs::write(
            sysfs.join("loop7/loop/backing_file"),
            format!("{}\n", fs::canonicalize(&image).unwrap().display()),
        )
        .unwrap();
        let luks = backend(&image, &uuid).with_sysfs_class_block(&sysfs);

        let before = luks.snapshot().unwrap();
        let bytes_before = sha256_file(&image);
        match luks.destroy().unwrap_err() {
            KeyError::DeviceInUse { holders, .. } => assert_eq!(holders, "dm-3"),
            other => panic!("expected DeviceInUse, got {other:?}"),
        }
        assert_eq!(sha256_file(&image), bytes_before);

        // Erased behind our back while still open: verification still refuses.
        backend(&image, &uuid).destroy().unwrap();
        match luks.verify_destroyed(&before).unwrap_err() {
            KeyError::NotDestroyed { detail, .. } => assert!(detail.contains("dm-3"), "{detail}"),
            other => panic!("expected NotDestroyed, got {other:?}"),
        }
    }

    #[test]
    fn an_unattached_image_has_no_holders_in_the_real_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img");
        fs::write(&image, b"x").unwrap();
        assert_eq!(
            holders(&image, Path::new(SYSFS_CLASS_BLOCK)).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_missing_cryptsetup_is_reported_as_a_start_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (image, uuid) = luks2_image(dir.path(), "disk.img");
        let luks = Luks2::new("t", &image, &uuid, "/nonexistent/cryptsetup").unwrap();
        let err = luks.check_identity().unwrap_err();
        assert!(
            matches!(&err, KeyError::ToolStart { program, .. } if program == "/nonexistent/cryptsetup"),
            "{err:?}"
        );
    }

    #[test]
    fn new_rejects_relative_paths_and_malformed_uuids() {
        let uuid = "111374da-f7d5-40df-9097-26f7f1ed2a29";
        for (device, uuid, program, field) in [
            ("disk.img", uuid, DEFAULT_CRYPTSETUP, "device"),
            ("/disk.img", uuid, "cryptsetup", "cryptsetup path"),
            ("/disk.img", "not-a-uuid", DEFAULT_CRYPTSETUP, "LUKS UUID"),
        ] {
            match Luks2::new("t", device, uuid, program).unwrap_err() {
                KeyError::InvalidConfig { field: f, .. } => assert_eq!(f, field),
                other => panic!("expected InvalidConfig, got {other:?}"),
            }
        }
    }

    #[test]
    fn keyslot_area_must_contain_every_keyslot() {
        let json = br#"{"keyslots":{"0":{"area":{"offset":"32768","size":"258048"}},
            "1":{"area":{"offset":"16773120","size":"258048"}}},
            "config":{"json_size":"12288","keyslots_size":"16744448"}}"#;
        let err = parse_metadata(json).unwrap().keyslot_area().unwrap_err();
        assert!(err.to_string().contains("keyslot 1 area"), "{err}");

        let ok = br#"{"keyslots":{"10":{"area":{"offset":"32768","size":"4096"}},
            "2":{"area":{"offset":"36864","size":"4096"}}},
            "config":{"json_size":"12288","keyslots_size":"16744448"}}"#;
        let meta = parse_metadata(ok).unwrap();
        assert_eq!(
            meta.keyslot_area().unwrap(),
            KeyslotArea {
                offset: 32768,
                size: 16744448
            }
        );
        assert_eq!(meta.keyslot_ids(), vec!["2", "10"]);
    }

    #[test]
    fn parses_the_version_line() {
        assert_eq!(
            parse_version(b"cryptsetup 2.6.1 flags: UDEV BLKID KEYRING KERNEL_CAPI \n").as_deref(),
            Some("cryptsetup 2.6.1")
        );
        assert_eq!(parse_version(b"something else 1.0"), None);
        assert_eq!(parse_version(b"cryptsetup"), None);
    }
}
