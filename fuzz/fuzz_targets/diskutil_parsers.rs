//! The parsers of key-destruction tool output in `jex-erase`: `diskutil apfs list -plist`,
//! `diskutil info -plist`, `diskutil list -plist` and diskutil's error form (XML or binary plists), with the APFS
//! backend's protection rule on what parses, and `cryptsetup luksDump --dump-json-metadata`
//! and `cryptsetup --version` for LUKS2. Nothing may panic, and what parses keeps its
//! documented properties.
//!
//! The protection rule needs a volume list and the root volume's info: a fuzzed list is judged
//! against the real root of `info-root-intel-sealed.plist`, and a fuzzed root against the real
//! list of `apfs-list-intel-filevault.plist` (captures in `crates/reclaim/tests/fixtures/diskutil/`).

#![no_main]

use std::sync::OnceLock;

use jex_erase::keys::apfs::protection_reason;
use jex_erase::keys::diskutil::{self, ApfsList, DiskInfo};
use jex_erase::keys::luks2;
use libfuzzer_sys::fuzz_target;

const REAL_LIST: &[u8] =
    include_bytes!("../../crates/reclaim/tests/fixtures/diskutil/apfs-list-intel-filevault.plist");
const REAL_ROOT: &[u8] =
    include_bytes!("../../crates/reclaim/tests/fixtures/diskutil/info-root-intel-sealed.plist");

fn real() -> &'static (ApfsList, DiskInfo) {
    static REAL: OnceLock<(ApfsList, DiskInfo)> = OnceLock::new();
    REAL.get_or_init(|| {
        (
            diskutil::parse_apfs_list(REAL_LIST).expect("the captured list parses"),
            diskutil::parse_info(REAL_ROOT).expect("the captured info parses"),
        )
    })
}

fn judge(list: &ApfsList, root: &DiskInfo) {
    for container in &list.containers {
        for volume in &container.volumes {
            let (_, found) = list
                .find_volume(&volume.volume_uuid)
                .expect("a listed volume is found by its UUID");
            assert!(found.volume_uuid.eq_ignore_ascii_case(&volume.volume_uuid));
            let reason = protection_reason(volume, root);
            if volume.device_identifier.is_none() {
                assert!(reason.is_some(), "a volume without a device is protected");
            }
        }
    }
}

fn diskutil_output(data: &[u8]) {
    let (real_list, real_root) = real();
    if let Ok(list) = diskutil::parse_apfs_list(data) {
        judge(&list, real_root);
    }
    if let Ok(info) = diskutil::parse_info(data) {
        let _ = info.sealed();
        judge(real_list, &info);
    }
    if let Ok(disks) = diskutil::parse_list(data) {
        for disk in &disks.all_disks_and_partitions {
            let whole = diskutil::whole_disk(&disk.device_identifier);
            assert!(disk.device_identifier.starts_with(whole));
        }
    }
    if let Some(error) = diskutil::parse_error(data) {
        assert!(error.error);
    }
}

fn cryptsetup_output(data: &[u8]) {
    if let Ok(meta) = luks2::parse_metadata(data) {
        assert_eq!(meta.keyslot_ids().len(), meta.keyslots.len());
        if let Ok(area) = meta.keyslot_area() {
            let end = area.offset + area.size;
            for slot in meta.keyslots.values() {
                let offset: u64 = slot.area.offset.parse().expect("checked offset");
                let size: u64 = slot.area.size.parse().expect("checked size");
                assert!(offset >= area.offset && offset + size <= end);
            }
        }
    }
    if let Some(version) = luks2::parse_version(data) {
        assert!(version.starts_with("cryptsetup "));
    }
}

fuzz_target!(|data: &[u8]| {
    diskutil_output(data);
    cryptsetup_output(data);
});
