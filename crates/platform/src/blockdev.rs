//! Erase targets opened for direct I/O, their stable identity, and the system-device rails.
//!
//! A target is a regular file (a disk image) or a block device (on macOS also the raw character
//! device `/dev/rdiskN`). [`DirectTarget::open`] bypasses the page cache: `O_DIRECT` on Linux,
//! `F_NOCACHE` on macOS, so writes reach the device and read-back verification reads the media,
//! not memory. Offsets, lengths and buffers are aligned: buffers come from [`AlignedBuf`] (4096-byte
//! alignment), and every size is a multiple of the target's [`DirectTarget::io_align`].
//! [`TargetIo::flush_durable`] makes completed writes durable with the call [`flush_call`] picks:
//! `fdatasync` on Linux; on macOS `F_FULLFSYNC` for a file (plain `fsync` there does not flush
//! the drive's cache) and `DKIOCSYNCHRONIZE` for a device (`F_FULLFSYNC` on a disk node reaches
//! the disk driver's ioctl handler, which has no case for it: ENOTTY).
//!
//! Identity ([`TargetIdentity`]): for a file `(st_dev, st_ino, size)`; for a device
//! `(st_rdev, size, serial where the OS reports one)`. It is journaled when an operation starts
//! and compared before every destructive step and on resume: a replaced file (new inode), a
//! different device behind the path, or a target that shrank or grew is refused.
//!
//! Rails ([`SystemDevices`]): a device target is refused when it is the device of `/`, `/boot` or
//! `/boot/efi`, the whole disk or device-mapper component under one of them, or the device (or
//! the whole disk of the device) of any mounted filesystem (`/proc/self/mountinfo` on Linux,
//! `getfsstat` on macOS). On macOS volumes mount from synthesized disks whose container sits on
//! another disk, so the erase engine adds the APFS map by name ([`SystemDevices::refuse_named`]):
//! physical stores of mounted containers, the internal SSD, the iSC and recoveryOS containers.
//!
//! Open errors say what to do: a device held by the system (`EBUSY`: mounted, or on macOS an
//! APFS container or partition on it still attached) is [`BlockDevError::Busy`]; a refusal by
//! the OS (`EPERM`/`EACCES`) is [`BlockDevError::NotPermitted`], which on macOS names Full Disk
//! Access.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Buffer alignment used for direct I/O: at least any device's logical block size in practice.
pub const BUFFER_ALIGN: usize = 4096;

/// Direct-I/O alignment required of regular files (sizes, offsets, lengths).
pub const FILE_IO_ALIGN: u64 = 4096;

/// Target problems found while opening, probing or checking it.
#[derive(Debug, thiserror::Error)]
pub enum BlockDevError {
    /// `open(2)` failed.
    #[error("opening {path} for direct I/O (check that it exists and that the agent runs as root)")]
    Open {
        /// The target path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The device is held by the system: opening it for writing failed with `EBUSY`.
    #[error(
        "{path} is in use (mounted, or on macOS an APFS container or partition on it is still attached): unmount or eject everything on it first"
    )]
    Busy {
        /// The target path.
        path: PathBuf,
    },
    /// The OS refused the open (`EPERM`/`EACCES`) although the agent asked as itself.
    #[error("opening {path}: not permitted{hint}")]
    NotPermitted {
        /// The target path.
        path: PathBuf,
        /// What to check on this OS (starts with `: `).
        hint: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `stat`/`fstat` failed.
    #[error("reading the metadata of {path}")]
    Stat {
        /// The target path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The device size or block size ioctl failed.
    #[error("reading the size of device {path}")]
    Geometry {
        /// The device path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Neither a regular file nor a supported device.
    #[error(
        "{path} is neither a regular file nor a block device: configure a disk image or a device"
    )]
    Unsupported {
        /// The target path.
        path: PathBuf,
    },
    /// Size zero or not aligned for direct I/O.
    #[error(
        "{path}: size {size} bytes is not a positive multiple of {align} bytes, as direct I/O requires"
    )]
    BadSize {
        /// The target path.
        path: PathBuf,
        /// The size found.
        size: u64,
        /// The alignment required.
        align: u64,
    },
    /// The target refused by the system-device rails.
    #[error("{path} is refused: {reason}")]
    SystemDevice {
        /// The target path.
        path: PathBuf,
        /// Why (root device, mounted filesystem, ...).
        reason: String,
    },
    /// Reading the mount table failed.
    #[error("reading the mount table {path}")]
    MountTable {
        /// The mount table path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The target is no longer the one pinned at the start of the operation.
    #[error("{path}: target identity changed: pinned {pinned}, found {found}")]
    IdentityChanged {
        /// The target path.
        path: PathBuf,
        /// The fingerprint journaled at the start.
        pinned: String,
        /// The fingerprint now.
        found: String,
    },
}

/// What kind of object a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// A regular file (disk image).
    File,
    /// A block device, or a raw disk character device on macOS.
    Device,
}

impl TargetKind {
    /// The NIST "media type" written into certificates.
    pub fn media_type(self) -> &'static str {
        match self {
            TargetKind::File => "file",
            TargetKind::Device => "block device",
        }
    }
}

/// The stable identity of a target, journaled at the start and re-checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetIdentity {
    /// File or device.
    pub kind: TargetKind,
    /// `st_dev` of a file (0 for a device: a device node's own filesystem does not matter).
    pub dev: u64,
    /// `st_ino` of a file (0 for a device).
    pub ino: u64,
    /// `st_rdev` of a device (0 for a file).
    pub rdev: u64,
    /// Size in bytes.
    pub size_bytes: u64,
    /// A stable key of the media where the OS gives one: on Linux the serial or WWID (sysfs);
    /// on macOS [`macos_media_key`] of `diskutil info -plist` (the IOMedia UUID, else the
    /// device-tree path and media name).
    pub serial: Option<String>,
}

impl TargetIdentity {
    /// Whether `self` and `pinned` name the same target. Files: device, inode and size. Devices:
    /// size, and the stable media key when both have one (on macOS BSD disk numbers, and so
    /// `rdev`, are handed out at probe time and change across boots, while the key does not);
    /// without a key on either side, `rdev` and the key must both be equal.
    pub fn same_target(&self, pinned: &TargetIdentity) -> bool {
        if self.kind != pinned.kind || self.size_bytes != pinned.size_bytes {
            return false;
        }
        match self.kind {
            TargetKind::File => self.dev == pinned.dev && self.ino == pinned.ino,
            TargetKind::Device => match (&self.serial, &pinned.serial) {
                (Some(found), Some(pinned)) => found == pinned,
                _ => self.rdev == pinned.rdev && self.serial == pinned.serial,
            },
        }
    }

    /// A one-line form for journals, certificates and error messages, e.g.
    /// `file:dev=2049,ino=131,size=67108864` or `device:rdev=259:0,size=…,serial=S4EW…`.
    pub fn fingerprint(&self) -> String {
        match self.kind {
            TargetKind::File => {
                format!(
                    "file:dev={},ino={},size={}",
                    self.dev, self.ino, self.size_bytes
                )
            }
            TargetKind::Device => {
                let (major, minor) = os::split_dev(self.rdev);
                let mut text = format!("device:rdev={major}:{minor},size={}", self.size_bytes);
                if let Some(serial) = &self.serial {
                    text.push_str(",serial=");
                    text.push_str(serial);
                }
                text
            }
        }
    }
}

/// Facts about a target for the certificate (NIST "media information"); empty when unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaInfo {
    /// Manufacturer.
    pub make: String,
    /// Model, or `disk image` for a file.
    pub model: String,
    /// Serial number.
    pub serial: String,
}

/// A heap buffer whose usable region starts on a [`BUFFER_ALIGN`] boundary.
///
/// Built from a `Vec<u8>` over-allocated by one alignment unit, with the usable window starting
/// at the first aligned address: the same guarantee as an aligned `Layout`, without `unsafe`.
/// The heap block never moves while the `Vec` is alive, so the window stays aligned.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn new(len: usize) -> Self {
        let storage = vec![0u8; len + BUFFER_ALIGN];
        // `align_offset` on a `u8` pointer with a power-of-two alignment always succeeds and is
        // < BUFFER_ALIGN, so the window fits in the over-allocation.
        let start = storage.as_ptr().align_offset(BUFFER_ALIGN);
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    /// The buffer's length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

/// Positioned, direct I/O on one target: what the overwrite and the verification use.
///
/// [`DirectTarget`] is the real implementation; tests wrap it to inject faults. Positioned I/O
/// takes `&self`: several threads read or write disjoint ranges of one target at once
/// (`pread`/`pwrite` on one descriptor are safe to call concurrently).
pub trait TargetIo: Send + Sync {
    /// The path (for messages).
    fn path(&self) -> &Path;
    /// The target's size in bytes, as found when it was opened.
    fn size(&self) -> u64;
    /// Alignment of offsets and lengths for direct I/O.
    fn io_align(&self) -> u64;
    /// Writes all of `buf` at `offset` (aligned).
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `offset` (aligned); a short read is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Makes every completed write durable (`fdatasync` / `F_FULLFSYNC`).
    fn flush_durable(&self) -> io::Result<()>;
    /// The identity of the open descriptor now (cheap: `fstat`, plus the size ioctl on devices).
    fn open_identity(&self) -> Result<TargetIdentity, BlockDevError>;
    /// The identity of what the path names now (detects a replaced file or device node).
    fn path_identity(&self) -> Result<TargetIdentity, BlockDevError>;
    /// Media facts for the certificate.
    fn media_info(&self) -> MediaInfo;
    /// For a file on a copy-on-write filesystem, that filesystem's name: overwriting the file
    /// then may not reach the blocks that held the old data.
    fn copy_on_write_fs(&self) -> Option<String>;
}

/// Whether a target is opened for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only (planning, verification).
    Read,
    /// Read and write (overwrite).
    ReadWrite,
}

/// The call that makes a target's completed writes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushCall {
    /// `fdatasync(2)` (Linux, files and devices).
    Fdatasync,
    /// `fcntl(F_FULLFSYNC)` (macOS files: flushes the drive's cache too).
    FullFsync,
    /// `ioctl(DKIOCSYNCHRONIZE)` (macOS devices: `dk_synchronize_t` with offset and length 0,
    /// the whole device).
    DkSynchronize,
}

/// The flush for a target of `kind` on `os`. A device on macOS never takes `F_FULLFSYNC`: on a
/// disk node it goes to the disk driver's `dkioctl`, which has no case for it and returns
/// ENOTTY (xnu `bsd/dev/dkioctl`/IOStorageFamily `IOMediaBSDClient::ioctl`); the disk's own
/// `DKIOCSYNCHRONIZE` flushes it.
pub fn flush_call(os: crate::Os, kind: TargetKind) -> FlushCall {
    match (os, kind) {
        (crate::Os::MacOs, TargetKind::File) => FlushCall::FullFsync,
        (crate::Os::MacOs, TargetKind::Device) => FlushCall::DkSynchronize,
        (crate::Os::Linux | crate::Os::Other, _) => FlushCall::Fdatasync,
    }
}

/// The error for a failed open of `path` (a `kind`) on `os`: `EBUSY` on a device is
/// [`BlockDevError::Busy`], `EPERM`/`EACCES` is [`BlockDevError::NotPermitted`] with what to
/// check on that OS, anything else [`BlockDevError::Open`].
pub fn open_error(
    os: crate::Os,
    path: &Path,
    kind: TargetKind,
    source: io::Error,
) -> BlockDevError {
    let path = path.to_path_buf();
    match source.raw_os_error() {
        Some(libc::EBUSY) if kind == TargetKind::Device => BlockDevError::Busy { path },
        Some(libc::EPERM | libc::EACCES) => BlockDevError::NotPermitted {
            path,
            hint: match os {
                crate::Os::MacOs => {
                    ": give the agent Full Disk Access (the MDM privacy profile in mdm/), and check that it runs as root"
                }
                crate::Os::Linux | crate::Os::Other => {
                    ": check that the agent runs as root and that no security module (AppArmor, SELinux) denies it"
                }
            },
            source,
        },
        _ => BlockDevError::Open { path, source },
    }
}

/// A target opened for direct I/O.
#[derive(Debug)]
pub struct DirectTarget {
    file: File,
    path: PathBuf,
    identity: TargetIdentity,
    io_align: u64,
}

impl DirectTarget {
    /// Opens `path` for direct I/O. A device opened for writing is opened exclusively on Linux
    /// (`O_EXCL`: fails with `EBUSY` while mounted or held by another exclusive user).
    pub fn open(path: &Path, access: Access) -> Result<Self, BlockDevError> {
        let kind = kind_of(path)?;
        let mut options = OpenOptions::new();
        options.read(true).write(access == Access::ReadWrite);
        os::direct_open_flags(&mut options, kind, access);
        let file = options
            .open(path)
            .map_err(|source| open_error(crate::OS, path, kind, source))?;
        os::after_open(&file).map_err(|source| BlockDevError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let identity = identity_of_open(&file, path)?;
        let io_align = match kind {
            TargetKind::File => FILE_IO_ALIGN,
            TargetKind::Device => os::logical_block_size(&file)
                .map_err(|source| BlockDevError::Geometry {
                    path: path.to_path_buf(),
                    source,
                })?
                .max(512),
        };
        let size = identity.size_bytes;
        if size == 0 || size % io_align != 0 {
            return Err(BlockDevError::BadSize {
                path: path.to_path_buf(),
                size,
                align: io_align,
            });
        }
        Ok(DirectTarget {
            file,
            path: path.to_path_buf(),
            identity,
            io_align,
        })
    }

    /// The identity found when the target was opened.
    pub fn identity(&self) -> &TargetIdentity {
        &self.identity
    }
}

impl TargetIo for DirectTarget {
    fn path(&self) -> &Path {
        &self.path
    }

    fn size(&self) -> u64 {
        self.identity.size_bytes
    }

    fn io_align(&self) -> u64 {
        self.io_align
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn flush_durable(&self) -> io::Result<()> {
        os::flush_durable(&self.file, flush_call(crate::OS, self.identity.kind))
    }

    fn open_identity(&self) -> Result<TargetIdentity, BlockDevError> {
        // An open descriptor keeps naming the device it was opened on, so its media key is the
        // one read at open; only the path can come to name another device (`path_identity`).
        let mut found = identity_without_serial(&self.file, &self.path)?;
        if found.kind == TargetKind::Device {
            found.serial.clone_from(&self.identity.serial);
        }
        Ok(found)
    }

    fn path_identity(&self) -> Result<TargetIdentity, BlockDevError> {
        probe(&self.path)
    }

    fn media_info(&self) -> MediaInfo {
        match self.identity.kind {
            TargetKind::File => MediaInfo {
                make: String::new(),
                model: "disk image".to_owned(),
                serial: String::new(),
            },
            TargetKind::Device => os::media_info(self.identity.rdev, &self.identity),
        }
    }

    fn copy_on_write_fs(&self) -> Option<String> {
        match self.identity.kind {
            TargetKind::File => os::copy_on_write_fs(&self.file),
            TargetKind::Device => None,
        }
    }
}

/// Compares a target's current identity (both the open descriptor and what the path names)
/// with the pinned one.
pub fn check_identity(io: &dyn TargetIo, pinned: &TargetIdentity) -> Result<(), BlockDevError> {
    for found in [io.open_identity()?, io.path_identity()?] {
        if !found.same_target(pinned) {
            return Err(BlockDevError::IdentityChanged {
                path: io.path().to_path_buf(),
                pinned: pinned.fingerprint(),
                found: found.fingerprint(),
            });
        }
    }
    Ok(())
}

/// Compares only the open descriptor's identity (cheap enough for every chunk).
pub fn check_open_identity(
    io: &dyn TargetIo,
    pinned: &TargetIdentity,
) -> Result<(), BlockDevError> {
    let found = io.open_identity()?;
    if !found.same_target(pinned) {
        return Err(BlockDevError::IdentityChanged {
            path: io.path().to_path_buf(),
            pinned: pinned.fingerprint(),
            found: found.fingerprint(),
        });
    }
    Ok(())
}

/// The identity of what `path` names now, without writing anything (devices are opened
/// read-only to read their size).
pub fn probe(path: &Path) -> Result<TargetIdentity, BlockDevError> {
    let kind = kind_of(path)?;
    match kind {
        TargetKind::File => {
            let meta = std::fs::metadata(path).map_err(|source| BlockDevError::Stat {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(file_identity(&meta))
        }
        TargetKind::Device => {
            let file = File::open(path).map_err(|source| BlockDevError::Open {
                path: path.to_path_buf(),
                source,
            })?;
            identity_of_open(&file, path)
        }
    }
}

fn kind_of(path: &Path) -> Result<TargetKind, BlockDevError> {
    let meta = std::fs::metadata(path).map_err(|source| BlockDevError::Stat {
        path: path.to_path_buf(),
        source,
    })?;
    let file_type = meta.file_type();
    if file_type.is_file() {
        Ok(TargetKind::File)
    } else if file_type.is_block_device() || (os::RAW_CHAR_DEVICES && file_type.is_char_device()) {
        Ok(TargetKind::Device)
    } else {
        Err(BlockDevError::Unsupported {
            path: path.to_path_buf(),
        })
    }
}

fn file_identity(meta: &std::fs::Metadata) -> TargetIdentity {
    TargetIdentity {
        kind: TargetKind::File,
        dev: meta.dev(),
        ino: meta.ino(),
        rdev: 0,
        size_bytes: meta.len(),
        serial: None,
    }
}

fn identity_of_open(file: &File, path: &Path) -> Result<TargetIdentity, BlockDevError> {
    let mut identity = identity_without_serial(file, path)?;
    if identity.kind == TargetKind::Device {
        identity.serial = os::device_serial(identity.rdev, path);
    }
    Ok(identity)
}

/// [`identity_of_open`] without the stable media key (cheap: `fstat` and the size ioctl).
fn identity_without_serial(file: &File, path: &Path) -> Result<TargetIdentity, BlockDevError> {
    let meta = file.metadata().map_err(|source| BlockDevError::Stat {
        path: path.to_path_buf(),
        source,
    })?;
    let file_type = meta.file_type();
    if file_type.is_file() {
        return Ok(file_identity(&meta));
    }
    if !(file_type.is_block_device() || (os::RAW_CHAR_DEVICES && file_type.is_char_device())) {
        return Err(BlockDevError::Unsupported {
            path: path.to_path_buf(),
        });
    }
    let size = os::device_size(file).map_err(|source| BlockDevError::Geometry {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(TargetIdentity {
        kind: TargetKind::Device,
        dev: 0,
        ino: 0,
        rdev: meta.rdev(),
        size_bytes: size,
        serial: None,
    })
}

// === System-device rails ===

/// One mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The device number the kernel reports for the mount (may be anonymous, e.g. btrfs);
    /// `None` where the OS does not report one (macOS: the source name is used).
    pub dev: Option<u64>,
    /// Where it is mounted.
    pub mount_point: String,
    /// The mount source (e.g. `/dev/nvme0n1p2`).
    pub source: String,
}

/// The devices an erase must never touch, with the reason for each.
#[derive(Debug, Clone, Default)]
pub struct SystemDevices {
    refused: Vec<(u64, String)>,
    mount_sources: Vec<(PathBuf, String)>,
    named: Vec<(String, String)>,
}

impl SystemDevices {
    /// Reads the running system: the devices of `/`, `/boot`, `/boot/efi`, every mounted
    /// filesystem, and the whole disks and device-mapper components under them.
    pub fn probe() -> Result<Self, BlockDevError> {
        let mounts = os::mounts()?;
        let mut system = SystemDevices::default();
        for critical in ["/", "/boot", "/boot/efi"] {
            if let Ok(meta) = std::fs::metadata(critical) {
                let reason = format!("it holds the system filesystem mounted at {critical}");
                system.refuse_with_parents(meta.dev(), &reason);
            }
        }
        system.add_mounts(&mounts);
        Ok(system)
    }

    /// Builds the rails from a known mount list (tests, and `probe`).
    pub fn from_parts(critical_devs: &[(u64, String)], mounts: &[MountEntry]) -> Self {
        let mut system = SystemDevices::default();
        for (dev, reason) in critical_devs {
            system.refuse_with_parents(*dev, reason);
        }
        system.add_mounts(mounts);
        system
    }

    fn add_mounts(&mut self, mounts: &[MountEntry]) {
        for mount in mounts {
            let reason = format!("it holds the filesystem mounted at {}", mount.mount_point);
            if let Some(dev) = mount.dev {
                self.refuse_with_parents(dev, &reason);
            }
            if mount.source.starts_with("/dev/") {
                if let Ok(meta) = std::fs::metadata(&mount.source)
                    && meta.file_type().is_block_device()
                {
                    self.refuse_with_parents(meta.rdev(), &reason);
                }
                self.mount_sources
                    .push((PathBuf::from(&mount.source), reason.clone()));
            }
        }
    }

    /// Refuses the macOS disk `device` (`/dev/disk0s2`, `/dev/disk0`) by name, for `reason`:
    /// any target that is it, contains it (its whole disk) or lies inside it (a partition of a
    /// refused whole disk) is refused. The erase engine adds the APFS map this way.
    pub fn refuse_named(&mut self, device: &str, reason: &str) {
        if !self.named.iter().any(|(d, _)| d == device) {
            self.named.push((device.to_owned(), reason.to_owned()));
        }
    }

    /// The mount sources under `/dev/` (mounted devices), as read when the rails were built.
    pub fn mounted_devices(&self) -> impl Iterator<Item = &Path> {
        self.mount_sources
            .iter()
            .map(|(source, _)| source.as_path())
    }

    fn refuse_with_parents(&mut self, dev: u64, reason: &str) {
        for related in os::related_devices(dev) {
            if !self.refused.iter().any(|(d, _)| *d == related) {
                self.refused.push((related, reason.to_owned()));
            }
        }
    }

    /// Why the target at `path` must not be erased, or `None` when it may be. Only `stat`s the
    /// path: a refused device is never opened.
    pub fn refusal_for_path(&self, path: &Path) -> Result<Option<String>, BlockDevError> {
        let meta = std::fs::metadata(path).map_err(|source| BlockDevError::Stat {
            path: path.to_path_buf(),
            source,
        })?;
        let file_type = meta.file_type();
        if !(file_type.is_block_device() || file_type.is_char_device()) {
            return Ok(None);
        }
        let identity = TargetIdentity {
            kind: TargetKind::Device,
            dev: 0,
            ino: 0,
            rdev: meta.rdev(),
            size_bytes: 0,
            serial: None,
        };
        Ok(self.refusal(path, &identity))
    }

    /// Why the target must not be erased, or `None` when it may be.
    pub fn refusal(&self, path: &Path, identity: &TargetIdentity) -> Option<String> {
        if identity.kind != TargetKind::Device {
            return None;
        }
        if let Some((_, reason)) = self.refused.iter().find(|(dev, _)| *dev == identity.rdev) {
            return Some(reason.clone());
        }
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some((_, reason)) = self
            .named
            .iter()
            .find(|(device, _)| macos_same_disk(&canonical.to_string_lossy(), device))
        {
            return Some(reason.clone());
        }
        self.mount_sources
            .iter()
            .find(|(source, _)| os::same_disk_name(&canonical, source))
            .map(|(_, reason)| reason.clone())
    }
}

/// Parses Linux `/proc/self/mountinfo` (proc(5)): `id parent major:minor root mount-point
/// options [optional fields...] - fstype source super-options`. Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let (major, minor) = fields.get(2)?.split_once(':')?;
            let dev = os::make_dev(major.parse().ok()?, minor.parse().ok()?);
            let mount_point = unescape_mountinfo(fields.get(4)?);
            let separator = fields.iter().position(|f| *f == "-")?;
            let source = unescape_mountinfo(fields.get(separator + 2)?);
            Some(MountEntry {
                dev: Some(dev),
                mount_point,
                source,
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let value = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok());
            if let Some(value) = value {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // ioctls and fcntl: every block carries its SAFETY argument
mod os {
    //! Linux: `O_DIRECT`, `fdatasync`, `BLKGETSIZE64`/`BLKSSZGET`, sysfs and mountinfo.

    use super::{Access, BlockDevError, MediaInfo, MountEntry, TargetIdentity, TargetKind};
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::{Path, PathBuf};

    pub(super) const RAW_CHAR_DEVICES: bool = false;

    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_read_bad!(blksszget, libc::BLKSSZGET, libc::c_int);

    pub(super) fn direct_open_flags(options: &mut OpenOptions, kind: TargetKind, access: Access) {
        let mut flags = libc::O_DIRECT;
        if kind == TargetKind::Device && access == Access::ReadWrite {
            // Exclusive open of a block device: EBUSY while mounted or claimed by another user.
            flags |= libc::O_EXCL;
        }
        options.custom_flags(flags);
    }

    pub(super) fn after_open(_file: &File) -> io::Result<()> {
        Ok(())
    }

    pub(super) fn flush_durable(file: &File, call: super::FlushCall) -> io::Result<()> {
        match call {
            super::FlushCall::Fdatasync => file.sync_data(),
            other => Err(io::Error::other(format!(
                "{other:?} does not exist on Linux"
            ))),
        }
    }

    pub(super) fn device_size(file: &File) -> io::Result<u64> {
        let mut size: u64 = 0;
        // SAFETY: the descriptor is open for the duration of the call, and BLKGETSIZE64 writes
        // exactly one u64 through the pointer, which points at a live local.
        unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
        Ok(size)
    }

    pub(super) fn logical_block_size(file: &File) -> io::Result<u64> {
        let mut size: libc::c_int = 0;
        // SAFETY: the descriptor is open for the duration of the call, and BLKSSZGET writes
        // exactly one int through the pointer, which points at a live local.
        unsafe { blksszget(file.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
        u64::try_from(size).map_err(|_| io::Error::other("negative logical block size"))
    }

    pub(super) fn split_dev(dev: u64) -> (u64, u64) {
        (nix::sys::stat::major(dev), nix::sys::stat::minor(dev))
    }

    pub(super) fn make_dev(major: u64, minor: u64) -> u64 {
        nix::sys::stat::makedev(major, minor)
    }

    fn sysfs_dir(dev: u64) -> Option<PathBuf> {
        let (major, minor) = split_dev(dev);
        std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()
    }

    /// The whole disk of a partition, or the device itself.
    fn whole_disk_dir(dev: u64) -> Option<PathBuf> {
        let dir = sysfs_dir(dev)?;
        if dir.join("partition").exists() {
            dir.parent().map(Path::to_path_buf)
        } else {
            Some(dir)
        }
    }

    fn read_trimmed(path: &Path) -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_owned())
    }

    fn dev_of_dir(dir: &Path) -> Option<u64> {
        let text = read_trimmed(&dir.join("dev"))?;
        let (major, minor) = text.split_once(':')?;
        Some(make_dev(major.parse().ok()?, minor.parse().ok()?))
    }

    /// `dev`, its whole disk, and (recursively) the devices under a device-mapper/md device.
    pub(super) fn related_devices(dev: u64) -> Vec<u64> {
        let mut out = vec![dev];
        let mut queue = vec![dev];
        while let Some(current) = queue.pop() {
            if out.len() > 64 {
                break;
            }
            let Some(dir) = sysfs_dir(current) else {
                continue;
            };
            let mut found = Vec::new();
            if dir.join("partition").exists()
                && let Some(parent) = dir.parent().and_then(dev_of_dir)
            {
                found.push(parent);
            }
            if let Ok(entries) = std::fs::read_dir(dir.join("slaves")) {
                for entry in entries.flatten() {
                    if let Some(slave) = std::fs::canonicalize(entry.path())
                        .ok()
                        .and_then(|p| dev_of_dir(&p))
                    {
                        found.push(slave);
                    }
                }
            }
            for dev in found {
                if !out.contains(&dev) {
                    out.push(dev);
                    queue.push(dev);
                }
            }
        }
        out
    }

    pub(super) fn device_serial(rdev: u64, _path: &Path) -> Option<String> {
        let dir = whole_disk_dir(rdev)?;
        ["serial", "device/serial", "wwid", "device/wwid"]
            .iter()
            .find_map(|name| read_trimmed(&dir.join(name)))
    }

    pub(super) fn media_info(rdev: u64, identity: &TargetIdentity) -> MediaInfo {
        let dir = whole_disk_dir(rdev);
        let read = |name: &str| {
            dir.as_ref()
                .and_then(|d| read_trimmed(&d.join(name)))
                .unwrap_or_default()
        };
        MediaInfo {
            make: read("device/vendor"),
            model: read("device/model"),
            serial: identity.serial.clone().unwrap_or_default(),
        }
    }

    pub(super) fn copy_on_write_fs(file: &File) -> Option<String> {
        use nix::sys::statfs::{BTRFS_SUPER_MAGIC, FsType, fstatfs};
        const ZFS_SUPER_MAGIC: FsType = FsType(0x2fc1_2fc1);
        const BCACHEFS_SUPER_MAGIC: FsType = FsType(0xca45_1a4e);
        let kind = fstatfs(file).ok()?.filesystem_type();
        if kind == BTRFS_SUPER_MAGIC {
            Some("btrfs".into())
        } else if kind == ZFS_SUPER_MAGIC {
            Some("zfs".into())
        } else if kind == BCACHEFS_SUPER_MAGIC {
            Some("bcachefs".into())
        } else {
            None
        }
    }

    pub(super) fn mounts() -> Result<Vec<MountEntry>, BlockDevError> {
        let path = "/proc/self/mountinfo";
        let text = std::fs::read_to_string(path).map_err(|source| BlockDevError::MountTable {
            path: PathBuf::from(path),
            source,
        })?;
        Ok(super::parse_mountinfo(&text))
    }

    /// Same device node name (after canonicalisation); partitions are covered by
    /// [`related_devices`] through sysfs.
    pub(super) fn same_disk_name(target: &Path, mount_source: &Path) -> bool {
        let source = std::fs::canonicalize(mount_source).unwrap_or_else(|_| mount_source.into());
        target == source
    }
}

#[cfg(target_os = "macos")]
#[allow(unsafe_code)] // ioctls, fcntl and getfsstat: every block carries its SAFETY argument
mod os {
    //! macOS: `F_NOCACHE`, `F_FULLFSYNC` (files), `DKIOCSYNCHRONIZE` (devices),
    //! `DKIOCGETBLOCKSIZE`/`DKIOCGETBLOCKCOUNT`, `getfsstat`.

    use super::{Access, BlockDevError, MediaInfo, MountEntry, TargetIdentity, TargetKind};
    use std::fs::{File, OpenOptions};
    use std::io;
    use std::os::fd::AsRawFd;
    use std::path::Path;

    pub(super) const RAW_CHAR_DEVICES: bool = true;

    nix::ioctl_read!(dkiocgetblocksize, b'd', 24, u32);
    nix::ioctl_read!(dkiocgetblockcount, b'd', 25, u64);

    pub(super) fn direct_open_flags(_options: &mut OpenOptions, _kind: TargetKind, _a: Access) {}

    pub(super) fn after_open(file: &File) -> io::Result<()> {
        // SAFETY: F_NOCACHE takes an int argument and only changes the descriptor's caching
        // mode; the descriptor is open for the duration of the call.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_NOCACHE, 1) };
        if rc == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `dk_synchronize_t` of `<sys/disk.h>`: offset and length 0 flush the whole device.
    #[repr(C)]
    #[derive(Default)]
    pub(super) struct DkSynchronize {
        offset: u64,
        length: u64,
        options: u32,
        reserved: [u8; 4],
    }

    nix::ioctl_write_ptr!(dkiocsynchronize, b'd', 22, DkSynchronize);

    pub(super) fn flush_durable(file: &File, call: super::FlushCall) -> io::Result<()> {
        match call {
            super::FlushCall::FullFsync => {
                nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_FULLFSYNC)
                    .map(|_| ())
                    .map_err(io::Error::from)
            }
            super::FlushCall::DkSynchronize => {
                let whole = DkSynchronize::default();
                // SAFETY: the descriptor is open; DKIOCSYNCHRONIZE reads one dk_synchronize_t
                // from a live local of that layout (repr(C), 24 bytes).
                unsafe { dkiocsynchronize(file.as_raw_fd(), &whole) }
                    .map(|_| ())
                    .map_err(io::Error::from)
            }
            super::FlushCall::Fdatasync => file.sync_data(),
        }
    }

    pub(super) fn logical_block_size(file: &File) -> io::Result<u64> {
        let mut size: u32 = 0;
        // SAFETY: the descriptor is open; DKIOCGETBLOCKSIZE writes one u32 to a live local.
        unsafe { dkiocgetblocksize(file.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
        Ok(u64::from(size))
    }

    pub(super) fn device_size(file: &File) -> io::Result<u64> {
        let block = logical_block_size(file)?;
        let mut count: u64 = 0;
        // SAFETY: the descriptor is open; DKIOCGETBLOCKCOUNT writes one u64 to a live local.
        unsafe { dkiocgetblockcount(file.as_raw_fd(), &mut count) }.map_err(io::Error::from)?;
        count
            .checked_mul(block)
            .ok_or_else(|| io::Error::other("device size overflows u64"))
    }

    pub(super) use crate::darwin::{make_dev, split_dev};

    pub(super) fn related_devices(dev: u64) -> Vec<u64> {
        vec![dev]
    }

    /// The media key from `diskutil info -plist <path>` ([`super::macos_media_key`]); `None`
    /// when diskutil fails or says nothing stable (the identity then falls back to `rdev`).
    pub(super) fn device_serial(_rdev: u64, path: &Path) -> Option<String> {
        let out = crate::process::run(
            Path::new(super::MACOS_DISKUTIL),
            &[
                std::ffi::OsStr::new("info"),
                "-plist".as_ref(),
                path.as_os_str(),
            ],
            std::time::Duration::from_secs(30),
        )
        .ok()?;
        out.status
            .success()
            .then(|| super::macos_media_key(&out.stdout))
            .flatten()
    }

    pub(super) fn media_info(_rdev: u64, identity: &TargetIdentity) -> MediaInfo {
        MediaInfo {
            serial: identity.serial.clone().unwrap_or_default(),
            ..MediaInfo::default()
        }
    }

    pub(super) fn copy_on_write_fs(file: &File) -> Option<String> {
        let stat = nix::sys::statfs::fstatfs(file).ok()?;
        let name = stat.filesystem_type_name();
        (name == "apfs" || name == "zfs").then(|| name.to_owned())
    }

    pub(super) fn mounts() -> Result<Vec<MountEntry>, BlockDevError> {
        use crate::darwin::{FsstatNext, c_chars_text, fsstat_first_capacity, fsstat_next};
        let failed = || BlockDevError::MountTable {
            path: "getfsstat".into(),
            source: io::Error::last_os_error(),
        };
        // SAFETY: a null buffer asks getfsstat only for the number of mounted filesystems.
        let count = unsafe { libc::getfsstat(std::ptr::null_mut(), 0, libc::MNT_NOWAIT) };
        let mut capacity = fsstat_first_capacity(usize::try_from(count).map_err(|_| failed())?);
        let mut attempt = 1;
        let buf = loop {
            // SAFETY: `statfs` is plain old data; all-zero is a valid value.
            let mut buf: Vec<libc::statfs> = vec![unsafe { std::mem::zeroed() }; capacity];
            let bytes = libc::c_int::try_from(capacity * std::mem::size_of::<libc::statfs>())
                .map_err(|_| BlockDevError::MountTable {
                    path: "getfsstat".into(),
                    source: io::Error::other("mount table too large"),
                })?;
            // SAFETY: the buffer holds `capacity` entries and its byte size is passed.
            let filled = unsafe { libc::getfsstat(buf.as_mut_ptr(), bytes, libc::MNT_NOWAIT) };
            let filled = usize::try_from(filled).map_err(|_| failed())?;
            match fsstat_next(filled, capacity, attempt) {
                FsstatNext::Done(n) => {
                    buf.truncate(n);
                    break buf;
                }
                FsstatNext::Retry(more) => {
                    capacity = more;
                    attempt += 1;
                }
                FsstatNext::GiveUp => {
                    return Err(BlockDevError::MountTable {
                        path: "getfsstat".into(),
                        source: io::Error::other("the mount table kept growing while it was read"),
                    });
                }
            }
        };
        let text = |chars: &[libc::c_char]| {
            let bytes: Vec<u8> = chars.iter().map(|c| *c as u8).collect();
            c_chars_text(&bytes)
        };
        Ok(buf
            .iter()
            .map(|fs| MountEntry {
                dev: None,
                mount_point: text(&fs.f_mntonname),
                source: text(&fs.f_mntfromname),
            })
            .collect())
    }

    /// `/dev/rdisk4` and `/dev/disk4s2` name the same disk: refuse a whole disk holding a
    /// mounted slice, and the slice itself.
    pub(super) fn same_disk_name(target: &Path, mount_source: &Path) -> bool {
        super::macos_same_disk(&target.to_string_lossy(), &mount_source.to_string_lossy())
    }
}

/// Makes a block-device node at `path` (mode 0600) for the device number `dev`, as `st_dev` or
/// `st_rdev` report it. For tests that need a node of a real device (the root filesystem's) to
/// check the rails; needs root.
pub fn make_block_device_node(path: &Path, dev: u64) -> io::Result<()> {
    // `dev_t` is u64 on Linux and i32 on macOS; a number read from `st_dev`/`st_rdev` came from
    // a `dev_t`, so converting it back with `as` restores the same bits.
    let dev = dev as libc::dev_t;
    nix::sys::stat::mknod(
        path,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        dev,
    )
    .map_err(io::Error::from)
}

/// `diskutil`, on macOS's sealed system volume.
pub const MACOS_DISKUTIL: &str = "/usr/sbin/diskutil";

/// The stable key of a macOS disk from its `diskutil info -plist`: `uuid=<DiskUUID>` (the
/// IOMedia UUID, which GPT partitions and APFS volumes have), else
/// `path=<DeviceTreePath>,media=<MediaName>` when the device-tree path is known; `None`
/// otherwise. Portable, for testing.
pub fn macos_media_key(info_plist: &[u8]) -> Option<String> {
    let value = plist::Value::from_reader(std::io::Cursor::new(info_plist)).ok()?;
    let dict = value.as_dictionary()?;
    let text = |key: &str| {
        dict.get(key)
            .and_then(plist::Value::as_string)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    if let Some(uuid) = text("DiskUUID") {
        return Some(format!("uuid={}", uuid.to_ascii_uppercase()));
    }
    let path = text("DeviceTreePath")?;
    Some(format!(
        "path={path},media={}",
        text("MediaName").unwrap_or("")
    ))
}

/// True when the macOS device `target` (e.g. `/dev/rdisk4`, `/dev/disk4s2`) is, contains, or
/// lies inside the mounted device `mounted` (e.g. `/dev/disk4s2s1`). Portable for testing.
pub fn macos_same_disk(target: &str, mounted: &str) -> bool {
    fn disk_name(path: &str) -> Option<&str> {
        let name = path.strip_prefix("/dev/")?;
        let name = name.strip_prefix('r').unwrap_or(name);
        name.starts_with("disk").then_some(name)
    }
    let (Some(target), Some(mounted)) = (disk_name(target), disk_name(mounted)) else {
        return false;
    };
    let nested = |outer: &str, inner: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('s'))
    };
    nested(target, mounted) || nested(mounted, target)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    fn image(dir: &Path, name: &str, len: usize) -> PathBuf {
        let path = dir.join(name);
        let mut file = File::create(&path).unwrap();
        file.write_all(&vec![0x5a; len]).unwrap();
        path
    }

    #[test]
    fn aligned_buffers_start_on_a_4096_byte_boundary() {
        for len in [4096usize, 8192, 1 << 20, 3 * 4096] {
            let mut buf = AlignedBuf::new(len);
            assert_eq!(buf.as_ptr() as usize % BUFFER_ALIGN, 0);
            assert_eq!(buf.len(), len);
            buf[len - 1] = 7;
            assert!(buf[..len - 1].iter().all(|b| *b == 0));
        }
    }

    #[test]
    fn direct_io_round_trips_on_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), "disk.img", 1 << 20);
        let target = DirectTarget::open(&path, Access::ReadWrite).unwrap();
        assert_eq!(target.size(), 1 << 20);
        assert_eq!(target.identity().kind, TargetKind::File);
        let mut buf = AlignedBuf::new(8192);
        buf.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8);
        target.write_at(65536, &buf).unwrap();
        target.flush_durable().unwrap();
        let mut back = AlignedBuf::new(8192);
        target.read_at(65536, &mut back).unwrap();
        assert_eq!(&back[..], &buf[..]);
    }

    /// Linux's `O_DIRECT` refuses a misaligned length. macOS's `F_NOCACHE` does not (it only
    /// bypasses the cache when it can), so this expectation is Linux's alone; the engine aligns
    /// every I/O itself on both.
    #[cfg(target_os = "linux")]
    #[test]
    fn linux_direct_io_refuses_a_misaligned_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), "disk.img", 1 << 20);
        let target = DirectTarget::open(&path, Access::ReadWrite).unwrap();
        let mut odd = AlignedBuf::new(100);
        assert!(target.read_at(0, &mut odd).is_err());
    }

    #[test]
    fn devices_on_macos_never_take_the_full_fsync_path() {
        use crate::Os;
        assert_eq!(
            flush_call(Os::MacOs, TargetKind::Device),
            FlushCall::DkSynchronize
        );
        assert_eq!(
            flush_call(Os::MacOs, TargetKind::File),
            FlushCall::FullFsync
        );
        for kind in [TargetKind::File, TargetKind::Device] {
            assert_eq!(flush_call(Os::Linux, kind), FlushCall::Fdatasync);
        }
        // The seam the open target uses, on this machine: a file flushes with this OS's call.
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), "disk.img", 64 * 1024);
        let target = DirectTarget::open(&path, Access::ReadWrite).unwrap();
        assert_eq!(
            flush_call(crate::OS, target.identity().kind),
            if crate::OS == Os::MacOs {
                FlushCall::FullFsync
            } else {
                FlushCall::Fdatasync
            }
        );
        target.flush_durable().unwrap();
    }

    #[test]
    fn macos_media_keys_from_the_captured_diskutil_info() {
        let capture = |name: &str| {
            std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../reclaim/tests/fixtures/diskutil")
                    .join(name),
            )
            .unwrap()
        };
        assert_eq!(
            macos_media_key(&capture("info-external-hfs-usb.plist")).as_deref(),
            Some("uuid=4118AB4C-B7C9-462C-B849-BBAE385E0100")
        );
        assert_eq!(
            macos_media_key(&capture("info-root-intel-sealed.plist")).as_deref(),
            Some("uuid=CA15E030-DBDD-4FF4-847D-50D5EE26B798")
        );
        // Without a UUID (a whole disk): the device-tree path and media name.
        let whole = br#"<plist version="1.0"><dict>
<key>DeviceTreePath</key><string>IODeviceTree:/arm-io/ans@47400000/iop-ans-nub/AppleANS3NVMeController</string>
<key>MediaName</key><string>APPLE SSD AP0512Z</string></dict></plist>"#;
        assert_eq!(
            macos_media_key(whole).as_deref(),
            Some(
                "path=IODeviceTree:/arm-io/ans@47400000/iop-ans-nub/AppleANS3NVMeController,media=APPLE SSD AP0512Z"
            )
        );
        assert_eq!(
            macos_media_key(b"<plist version=\"1.0\"><dict/></plist>"),
            None
        );
        assert_eq!(macos_media_key(b"garbage"), None);
    }

    #[test]
    fn a_device_is_the_same_target_by_media_key_whatever_its_number() {
        let device = |rdev: u64, serial: Option<&str>| TargetIdentity {
            kind: TargetKind::Device,
            dev: 0,
            ino: 0,
            rdev,
            size_bytes: 1 << 30,
            serial: serial.map(str::to_owned),
        };
        let pinned = device(0x0100_0004, Some("uuid=A"));
        // After a reboot the same disk is another BSD number: still the same target.
        assert!(device(0x0100_0005, Some("uuid=A")).same_target(&pinned));
        // Another disk of the same size behind the same number: refused.
        assert!(!device(0x0100_0004, Some("uuid=B")).same_target(&pinned));
        // Without a key on one side, the number must match and so must the (missing) key.
        assert!(device(7, None).same_target(&device(7, None)));
        assert!(!device(8, None).same_target(&device(7, None)));
        assert!(!device(7, None).same_target(&device(7, Some("uuid=A"))));
        // A size change is always refused.
        let mut grown = device(0x0100_0004, Some("uuid=A"));
        grown.size_bytes += 4096;
        assert!(!grown.same_target(&pinned));
    }

    #[test]
    fn open_errors_say_what_to_do() {
        use crate::Os;
        let path = Path::new("/dev/rdisk4");
        let errno = io::Error::from_raw_os_error;
        let busy = open_error(Os::MacOs, path, TargetKind::Device, errno(libc::EBUSY));
        assert!(matches!(busy, BlockDevError::Busy { .. }));
        assert!(
            busy.to_string().contains("eject everything on it first"),
            "{busy}"
        );
        // A busy file is not a held device: the plain error, with its cause.
        let file = open_error(Os::MacOs, path, TargetKind::File, errno(libc::EBUSY));
        assert!(matches!(file, BlockDevError::Open { .. }));
        let denied = open_error(Os::MacOs, path, TargetKind::Device, errno(libc::EPERM));
        assert!(denied.to_string().contains("Full Disk Access"), "{denied}");
        let denied = open_error(Os::Linux, path, TargetKind::Device, errno(libc::EACCES));
        assert!(!denied.to_string().contains("Full Disk Access"), "{denied}");
        assert!(denied.to_string().contains("runs as root"), "{denied}");
    }

    #[test]
    fn named_disks_refuse_themselves_their_whole_disk_and_their_partitions() {
        let mut system = SystemDevices::from_parts(&[], &[]);
        system.refuse_named("/dev/disk0s2", "physical store of the booted container");
        system.refuse_named("/dev/disk5", "the internal SSD");
        let device = |path: &str| {
            let identity = TargetIdentity {
                kind: TargetKind::Device,
                dev: 0,
                ino: 0,
                rdev: 0xdead,
                size_bytes: 0,
                serial: None,
            };
            system.refusal(Path::new(path), &identity)
        };
        for refused in [
            "/dev/rdisk0",
            "/dev/disk0",
            "/dev/rdisk0s2",
            "/dev/disk0s2s1",
        ] {
            assert_eq!(
                device(refused).as_deref(),
                Some("physical store of the booted container"),
                "{refused}"
            );
        }
        assert_eq!(device("/dev/rdisk5s3").as_deref(), Some("the internal SSD"));
        for allowed in [
            "/dev/rdisk0s3",
            "/dev/rdisk4",
            "/dev/disk02",
            "/dev/rdisk50",
        ] {
            assert_eq!(device(allowed), None, "{allowed}");
        }
    }

    #[test]
    fn reading_past_the_end_is_an_error_not_a_short_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), "disk.img", 64 * 1024);
        let target = DirectTarget::open(&path, Access::Read).unwrap();
        let mut buf = AlignedBuf::new(8192);
        assert!(target.read_at(60 * 1024, &mut buf).is_err());
    }

    #[test]
    fn unaligned_or_empty_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let odd = image(dir.path(), "odd.img", 5000);
        assert!(matches!(
            DirectTarget::open(&odd, Access::Read),
            Err(BlockDevError::BadSize { size: 5000, .. })
        ));
        let empty = image(dir.path(), "empty.img", 0);
        assert!(matches!(
            DirectTarget::open(&empty, Access::Read),
            Err(BlockDevError::BadSize { size: 0, .. })
        ));
        assert!(matches!(
            DirectTarget::open(dir.path(), Access::Read),
            Err(BlockDevError::Unsupported { .. })
        ));
    }

    #[test]
    fn identity_detects_a_replaced_file_and_a_truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), "disk.img", 1 << 20);
        let target = DirectTarget::open(&path, Access::ReadWrite).unwrap();
        let pinned = target.identity().clone();
        check_identity(&target, &pinned).unwrap();

        // Replace the path with another file of the same size (new inode).
        let other = image(dir.path(), "other.img", 1 << 20);
        std::fs::rename(&other, &path).unwrap();
        let err = check_identity(&target, &pinned).unwrap_err();
        assert!(
            matches!(err, BlockDevError::IdentityChanged { .. }),
            "{err}"
        );
        // The open descriptor alone still matches: the replacement is only visible by path.
        check_open_identity(&target, &pinned).unwrap();

        // Truncating the open file changes the descriptor's identity.
        target.file.set_len(1 << 19).unwrap();
        let err = check_open_identity(&target, &pinned).unwrap_err();
        assert!(err.to_string().contains("size=524288"), "{err}");
    }

    #[test]
    fn mountinfo_parser_reads_device_numbers_mount_points_and_sources() {
        let text = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard\n\
                    36 27 0:38 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw\n\
                    40 27 259:3 / /mnt/with\\040space rw master:1 - xfs /dev/nvme0n1p3 rw\n\
                    garbage line\n";
        let mounts = parse_mountinfo(text);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].mount_point, "/");
        assert_eq!(mounts[0].source, "/dev/vda");
        assert_eq!(mounts[0].dev.map(os::split_dev), Some((254, 0)));
        assert_eq!(mounts[1].source, "cgroup2");
        assert_eq!(mounts[2].mount_point, "/mnt/with space");
        assert_eq!(mounts[2].dev.map(os::split_dev), Some((259, 3)));
    }

    #[test]
    fn root_device_node_is_refused_and_files_are_not() {
        // A device node with the root filesystem's device number, made here with mknod.
        let dir = tempfile::tempdir().unwrap();
        let root_dev = std::fs::metadata("/").unwrap().dev();
        let node = dir.path().join("rootdisk");
        make_block_device_node(&node, root_dev).unwrap();
        let system = SystemDevices::probe().unwrap();
        let identity = TargetIdentity {
            kind: TargetKind::Device,
            dev: 0,
            ino: 0,
            rdev: std::fs::metadata(&node).unwrap().rdev(),
            size_bytes: 0,
            serial: None,
        };
        let reason = system
            .refusal(&node, &identity)
            .expect("root device refused");
        assert!(reason.contains("mounted at /"), "{reason}");

        let file = image(dir.path(), "disk.img", 4096);
        let file_identity = probe(&file).unwrap();
        assert_eq!(system.refusal(&file, &file_identity), None);
    }

    #[test]
    fn mounted_device_and_unrelated_device_are_told_apart() {
        let mounted = os::make_dev(259, 3);
        let system = SystemDevices::from_parts(
            &[],
            &[MountEntry {
                dev: Some(mounted),
                mount_point: "/data".into(),
                source: "/dev/nonexistent-test-device".into(),
            }],
        );
        let device = |rdev| TargetIdentity {
            kind: TargetKind::Device,
            dev: 0,
            ino: 0,
            rdev,
            size_bytes: 1 << 30,
            serial: None,
        };
        let reason = system
            .refusal(Path::new("/dev/whatever"), &device(mounted))
            .unwrap();
        assert!(reason.contains("/data"));
        assert_eq!(
            system.refusal(Path::new("/dev/other"), &device(os::make_dev(259, 9))),
            None
        );
        let by_name = system.refusal(
            Path::new("/dev/nonexistent-test-device"),
            &device(os::make_dev(1, 1)),
        );
        assert!(by_name.is_some());
    }

    #[test]
    fn macos_disk_names_match_whole_disks_and_slices() {
        assert!(macos_same_disk("/dev/rdisk4", "/dev/disk4s2"));
        assert!(macos_same_disk("/dev/disk4s2", "/dev/disk4s2s1"));
        assert!(macos_same_disk("/dev/rdisk4s2", "/dev/disk4"));
        assert!(!macos_same_disk("/dev/rdisk4", "/dev/disk40s1"));
        assert!(!macos_same_disk("/dev/rdisk5", "/dev/disk4s2"));
        assert!(!macos_same_disk("/dev/rdisk4", "map auto_home"));
    }
}
