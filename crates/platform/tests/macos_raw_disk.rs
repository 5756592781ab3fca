//! The raw-device contract of a real Mac, on disk images this test makes with `hdiutil create`
//! and attaches with `hdiutil attach`: what no captured fixture can show, because it is the
//! kernel's and `diskutil`'s behaviour, checked through the project's own code.
//!
//! - An idle raw disk (`/dev/rdiskN` of an image without a partition map) opens for writing with
//!   [`DirectTarget::open`], takes aligned writes at both ends, and
//!   [`TargetIo::flush_durable`] succeeds: on a device that is `DKIOCSYNCHRONIZE`
//!   ([`flush_call`]), where `F_FULLFSYNC` would fail with ENOTTY. What was written reads back
//!   through a new descriptor, and the device keeps its identity between the two opens.
//! - A disk holding an attached APFS container (`hdiutil create -fs APFS`) is busy for writing,
//!   its volume mounted or not: the write open fails with [`BlockDevError::Busy`] (EBUSY), on
//!   the whole disk and on the container's physical store, while a read open still succeeds.
//! - With a tenant volume added (`diskutil apfs addVolume`) and mounted, the rails
//!   (`jex_erase::rails::system_devices`) refuse the image's disk and its physical store,
//!   naming the container and its mounted volume; `jex_erase::rails::detach_for_overwrite`
//!   then frees the disk: no container is left on it, the rails let it pass, and the write open
//!   and the flush succeed.
//!
//! Each image lives in a temporary directory and is detached (forced) when its guard drops,
//! so a failed assertion leaves nothing attached. The tests take turns: the rails and the
//! detach read the whole system's disks and mounts. The macOS CI runs them as root, like every
//! test binary there (`.github/workflows/macos.yml`), as the agent runs.
//!
//! The file compiles everywhere; its tests exist on macOS only. It lives in the platform crate
//! because only this crate may write `cfg(target_os)` (`scripts/check-architecture.sh`), and
//! takes the rails from jex-erase as a dev-dependency.

#![cfg(target_os = "macos")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a failure is a failed test

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use jex_erase::rails::{self, bsd_name, whole_disk};
use jex_platform::blockdev::{
    Access, AlignedBuf, BlockDevError, DirectTarget, FlushCall, MACOS_DISKUTIL, SystemDevices,
    TargetIo, TargetKind, check_identity, flush_call,
};
use jex_platform::{Os, error_chain, process};

/// `hdiutil`, on the sealed system volume.
const HDIUTIL: &str = "/usr/bin/hdiutil";

/// How long one `hdiutil` or `diskutil` run may take (creating and attaching an image takes a
/// few seconds on a runner).
const TOOL_TIMEOUT: Duration = Duration::from_secs(180);

/// The size of the writes and read-backs: one page, a multiple of any disk's block size.
const IO_BYTES: usize = 4096;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Takes this file's turn (a test that failed while holding it does not stop the others).
fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner)
}

fn diskutil() -> &'static Path {
    Path::new(MACOS_DISKUTIL)
}

/// Runs a system tool through the agent's own runner; its stdout, or a panic with what it said.
fn tool(program: &str, args: &[&str]) -> Vec<u8> {
    let shown = || format!("{program} {}", args.join(" "));
    let out = process::run(Path::new(program), args, TOOL_TIMEOUT)
        .unwrap_or_else(|e| panic!("{}: {}", shown(), error_chain(&e)));
    assert!(
        out.status.success(),
        "{}: {}\nstdout: {}\nstderr: {}",
        shown(),
        out.failure_summary(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Whether `hdiutil attach` mounts the image's volumes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mount {
    No,
    Yes,
}

/// An APFS container with a physical store on an attached image.
#[derive(Debug)]
struct Container {
    /// The container's reference (`disk5`), or its UUID when it has none.
    reference: String,
    /// Its physical store on the image (`disk4s1`).
    store: String,
}

/// A disk image made and attached by the test, detached (forced) on drop.
struct Attached {
    /// Every device `hdiutil attach` reported (`/dev/disk4`, `/dev/disk4s1`, `/dev/disk5`, …).
    devices: Vec<String>,
    /// The image's own whole disk (`disk4`), not a container synthesized from it; empty until
    /// it is known (a guard that does not know it detaches every whole disk it was given).
    disk: String,
    _dir: tempfile::TempDir,
}

impl Attached {
    /// `hdiutil create <create_args> <dir>/<name>`, then `hdiutil attach`, mounting or not.
    fn new(create_args: &[&str], name: &str, mount: Mount) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join(name);
        let image = image.to_str().expect("a UTF-8 temporary path");
        let mut create = vec!["create"];
        create.extend_from_slice(create_args);
        create.push(image);
        tool(HDIUTIL, &create);

        let how = match mount {
            Mount::No => "-nomount",
            Mount::Yes => "-nobrowse",
        };
        let out = tool(HDIUTIL, &["attach", "-plist", "-noverify", how, image]);
        let plist = plist::Value::from_reader(std::io::Cursor::new(&out)).unwrap_or_else(|e| {
            panic!(
                "hdiutil attach -plist printed no property list ({e}): {}",
                String::from_utf8_lossy(&out)
            )
        });
        let devices: Vec<String> = plist
            .as_dictionary()
            .and_then(|d| d.get("system-entities"))
            .and_then(plist::Value::as_array)
            .map(|entities| {
                entities
                    .iter()
                    .filter_map(|e| e.as_dictionary()?.get("dev-entry")?.as_string())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let mut attached = Attached {
            devices,
            disk: String::new(),
            _dir: dir,
        };
        attached.disk = attached.own_disk();
        attached
    }

    /// The whole disk among the attached devices that is not an APFS container's synthesized
    /// disk: the image's own.
    fn own_disk(&self) -> String {
        let list =
            rails::read_apfs_list(diskutil()).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        let references: Vec<&str> = list
            .containers
            .iter()
            .filter_map(|c| c.container_reference.as_deref())
            .collect();
        let disks: Vec<&str> = self
            .devices
            .iter()
            .filter_map(|d| bsd_name(d))
            .filter(|name| whole_disk(name) == *name && !references.contains(name))
            .collect();
        assert_eq!(
            disks.len(),
            1,
            "one whole disk of the image expected among {:?} (APFS containers: {references:?})",
            self.devices
        );
        disks[0].to_owned()
    }

    /// The raw device of the image's whole disk (`/dev/rdisk4`).
    fn raw_disk(&self) -> PathBuf {
        PathBuf::from(format!("/dev/r{}", self.disk))
    }

    /// The APFS containers with a physical store on the image, as `diskutil apfs list` says now.
    fn containers(&self) -> Vec<Container> {
        let list =
            rails::read_apfs_list(diskutil()).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        list.containers
            .iter()
            .filter_map(|c| {
                let store = c
                    .designated_physical_store
                    .iter()
                    .chain(c.physical_stores.iter().map(|s| &s.device_identifier))
                    .find(|store| whole_disk(store) == self.disk)?;
                Some(Container {
                    reference: c
                        .container_reference
                        .clone()
                        .unwrap_or_else(|| c.container_uuid.clone()),
                    store: store.clone(),
                })
            })
            .collect()
    }

    /// The one APFS container on the image.
    fn container(&self) -> Container {
        let mut containers = self.containers();
        assert_eq!(
            containers.len(),
            1,
            "one APFS container expected on {}: {containers:?}",
            self.disk
        );
        containers.remove(0)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut disks: Vec<String> = Vec::new();
        if !self.disk.is_empty() {
            disks.push(format!("/dev/{}", self.disk));
        }
        disks.extend(
            self.devices
                .iter()
                .filter(|d| bsd_name(d).is_some_and(|name| whole_disk(name) == name))
                .cloned(),
        );
        // Detaching the image's disk takes every container and volume on it along; the others
        // are only tried when it is not known, and are gone by then otherwise.
        for disk in disks {
            let _ = process::run(
                Path::new(HDIUTIL),
                &["detach", "-force", disk.as_str()],
                TOOL_TIMEOUT,
            );
            if !self.disk.is_empty() {
                break;
            }
        }
    }
}

/// The BSD names of every mounted device (`disk5s1`), from the rails' own mount table.
fn mounted_names() -> Vec<String> {
    let system = SystemDevices::probe().unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    system
        .mounted_devices()
        .filter_map(|p| bsd_name(&p.to_string_lossy()).map(str::to_owned))
        .collect()
}

fn mounted_from(container: &Container) -> Vec<String> {
    let volume_prefix = format!("{}s", container.reference);
    mounted_names()
        .into_iter()
        .filter(|m| m.starts_with(&volume_prefix))
        .collect()
}

/// A page of `seed`-dependent bytes.
fn pattern(seed: u8) -> AlignedBuf {
    let mut buf = AlignedBuf::new(IO_BYTES);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8 ^ seed;
    }
    buf
}

/// Writes a page at each end of `target`, flushes (the device's own call), and returns the
/// offsets with what was written there.
fn write_both_ends_and_flush(target: &DirectTarget) -> [(u64, AlignedBuf); 2] {
    let last = target.size() - IO_BYTES as u64;
    let written = [(0, pattern(0x11)), (last, pattern(0x5e))];
    for (offset, page) in &written {
        target
            .write_at(*offset, page)
            .unwrap_or_else(|e| panic!("writing {} at {offset}: {e}", target.path().display()));
    }
    target.flush_durable().unwrap_or_else(|e| {
        panic!(
            "flush_durable ({:?}) on {}: {e}",
            flush_call(jex_platform::OS, TargetKind::Device),
            target.path().display()
        )
    });
    written
}

/// Opening `device` for writing fails with `Busy`, because of what `while` says is on it.
fn assert_busy(device: &Path, while_: &str) {
    match DirectTarget::open(device, Access::ReadWrite) {
        Err(BlockDevError::Busy { path }) => assert_eq!(path, device),
        Err(other) => panic!(
            "{} ({while_}): expected Busy (EBUSY), got: {}",
            device.display(),
            error_chain(&other)
        ),
        Ok(_) => panic!(
            "{} ({while_}) opened for writing: an attached APFS container should keep it busy",
            device.display()
        ),
    }
}

#[test]
fn an_idle_raw_disk_opens_for_writing_takes_writes_and_flushes_with_dkiocsynchronize() {
    let _turn = one_at_a_time();
    assert_eq!(jex_platform::OS, Os::MacOs);
    assert_eq!(
        flush_call(jex_platform::OS, TargetKind::Device),
        FlushCall::DkSynchronize
    );
    // 32768 sectors of 512 bytes and no partition map: nothing is attached above the disk.
    let image = Attached::new(
        &["-sectors", "32768", "-layout", "NONE"],
        "raw.dmg",
        Mount::No,
    );
    let raw = image.raw_disk();

    let target = DirectTarget::open(&raw, Access::ReadWrite).unwrap_or_else(|e| {
        panic!(
            "opening the idle {} for writing: {}",
            raw.display(),
            error_chain(&e)
        )
    });
    assert_eq!(target.identity().kind, TargetKind::Device);
    assert_eq!(
        target.size(),
        32768 * 512,
        "DKIOCGETBLOCKCOUNT x DKIOCGETBLOCKSIZE of {}",
        raw.display()
    );
    let pinned = target.identity().clone();
    let written = write_both_ends_and_flush(&target);
    drop(target);

    // A new descriptor (F_NOCACHE) reads the device, and the device is the one pinned.
    let reader =
        DirectTarget::open(&raw, Access::Read).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    check_identity(&reader, &pinned).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    for (offset, page) in &written {
        let mut back = AlignedBuf::new(IO_BYTES);
        reader.read_at(*offset, &mut back).unwrap();
        assert!(
            back[..] == page[..],
            "the page at {offset} did not read back"
        );
    }
}

#[test]
fn a_disk_holding_an_attached_apfs_container_is_busy_for_writing_mounted_or_not() {
    let _turn = one_at_a_time();
    let image = Attached::new(
        &["-size", "64m", "-fs", "APFS", "-volname", "jex-busy"],
        "apfs.dmg",
        Mount::No,
    );
    let container = image.container();
    let store = PathBuf::from(format!("/dev/r{}", container.store));
    assert!(
        mounted_from(&container).is_empty(),
        "attached with -nomount, yet mounted: {:?}",
        mounted_from(&container)
    );

    for device in [image.raw_disk(), store.clone()] {
        assert_busy(&device, "its APFS container attached, nothing mounted");
    }
    // Reading is shared: planning and verification open a busy disk all the same.
    DirectTarget::open(&image.raw_disk(), Access::Read)
        .unwrap_or_else(|e| panic!("a read open of a busy disk: {}", error_chain(&e)));

    tool(MACOS_DISKUTIL, &["mountDisk", &container.reference]);
    assert!(
        !mounted_from(&container).is_empty(),
        "diskutil mountDisk {} mounted nothing",
        container.reference
    );
    for device in [image.raw_disk(), store] {
        assert_busy(&device, "its APFS volume mounted");
    }
}

#[test]
fn the_rails_refuse_a_disk_whose_container_has_a_mounted_volume_and_detaching_frees_it() {
    let _turn = one_at_a_time();
    let image = Attached::new(
        &["-size", "64m", "-fs", "APFS", "-volname", "jex-rails"],
        "rails.dmg",
        Mount::Yes,
    );
    let container = image.container();
    // The tenant's volume, added beside the first and mounted (addVolume mounts it).
    tool(
        MACOS_DISKUTIL,
        &[
            "apfs",
            "addVolume",
            &container.reference,
            "APFS",
            "jex-tenant",
        ],
    );
    let mounted = mounted_from(&container);
    assert!(
        mounted.len() >= 2,
        "both volumes of {} should be mounted: {mounted:?}",
        container.reference
    );

    let raw = image.raw_disk();
    let system =
        rails::system_devices(diskutil()).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    for device in [
        raw.clone(),
        PathBuf::from(format!("/dev/{}", image.disk)),
        PathBuf::from(format!("/dev/r{}", container.store)),
    ] {
        let reason = system
            .refusal_for_path(&device)
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)))
            .unwrap_or_else(|| {
                panic!(
                    "{} passed the rails while volumes of its container {} are mounted ({mounted:?})",
                    device.display(),
                    container.reference
                )
            });
        // A disk image is not the internal SSD: the reason is the mounted container.
        assert!(
            reason.contains(&format!("APFS container {}", container.reference))
                && reason.contains("is mounted"),
            "{}: {reason}",
            device.display()
        );
    }
    assert_busy(&raw, "its APFS volumes mounted");

    rails::detach_for_overwrite(diskutil(), &raw).unwrap_or_else(|e| {
        panic!(
            "detach_for_overwrite({}): {}",
            raw.display(),
            error_chain(&e)
        )
    });
    let left = image.containers();
    assert!(
        left.is_empty(),
        "containers left on {}: {left:?}",
        image.disk
    );
    assert!(
        mounted_names().iter().all(|m| whole_disk(m) != image.disk),
        "still mounted from {}: {:?}",
        image.disk,
        mounted_names()
    );
    let system =
        rails::system_devices(diskutil()).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    assert_eq!(
        system
            .refusal_for_path(&raw)
            .unwrap_or_else(|e| panic!("{}", error_chain(&e))),
        None,
        "{} is still refused after detach_for_overwrite",
        raw.display()
    );

    let target = DirectTarget::open(&raw, Access::ReadWrite).unwrap_or_else(|e| {
        panic!(
            "opening {} for writing after detach_for_overwrite: {}",
            raw.display(),
            error_chain(&e)
        )
    });
    write_both_ends_and_flush(&target);
}
