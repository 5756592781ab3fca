//! The Mac inventory through its real code path ([`MacInventory::take`]) with a runner that
//! answers from captured macOS outputs, or from labelled models where no capture exists
//! (`tests/fixtures/macos/README.md`), then the two halves: the inventory of the tenant's OS
//! against the inventory of the fresh OS, through the evidence rules.

#![allow(clippy::unwrap_used)] // test helpers: a failure is a failed test

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::sync::{Arc, Mutex};

use jex_reclaim::macos::{
    CSRUTIL, DISKUTIL, DSCL, FDESETUP, MacInventory, SYSTEM_PROFILER, parse_activation_lock,
    parse_csrutil_status, parse_fdesetup_status,
};
use jex_reclaim::run::{CommandOutput, CommandRunner, command_line};
use jex_reclaim::{
    AttestationContext, HostIdentity, InventoryError, InventorySource, Platform, VolumeRole,
    all_passed, evaluate, failed_checks,
};
use plist::{Dictionary, Value};

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---- the captures ----

#[test]
fn the_captured_csrutil_custom_configuration_is_not_enabled() {
    let text = fixture("macos/csrutil-status.custom.apple-silicon.macos-12.5.txt");
    let status = parse_csrutil_status(&String::from_utf8(text).unwrap()).unwrap();
    assert!(!status.is_enabled());
    assert_eq!(
        format!("{status:?}"),
        r#"Custom("unknown (Custom Configuration).")"#
    );
    let enabled = fixture("macos/csrutil-status.enabled.documented.txt");
    assert!(
        parse_csrutil_status(&String::from_utf8(enabled).unwrap())
            .unwrap()
            .is_enabled()
    );
}

#[test]
fn the_captured_fdesetup_status_is_on() {
    let text = fixture("macos/fdesetup-status.on.apple-silicon.txt");
    assert_eq!(
        parse_fdesetup_status(&String::from_utf8(text).unwrap()),
        Some(true)
    );
}

#[test]
fn the_captured_hardware_reports_give_activation_lock() {
    assert_eq!(
        parse_activation_lock(&fixture(
            "macos/system_profiler-SPHardwareDataType.m5max.json"
        ))
        .unwrap(),
        Some(true)
    );
    assert_eq!(
        parse_activation_lock(&fixture(
            "macos/system_profiler-SPHardwareDataType.virtual-m1.macos-26.6.2.json"
        ))
        .unwrap(),
        Some(false)
    );
}

// ---- models of what has no public capture (labelled: see the fixtures README) ----

/// Model, not a capture: one APFS volume of `diskutil apfs list -plist`.
fn model_volume(uuid: &str, dev: &str, name: &str, roles: &[&str]) -> Value {
    let mut d = Dictionary::new();
    d.insert("APFSVolumeUUID".into(), uuid.into());
    d.insert("CapacityInUse".into(), Value::Integer(1_000_000.into()));
    d.insert("DeviceIdentifier".into(), dev.into());
    d.insert("Encryption".into(), true.into());
    d.insert("FileVault".into(), false.into());
    d.insert("Locked".into(), false.into());
    d.insert("Name".into(), name.into());
    d.insert(
        "Roles".into(),
        Value::Array(roles.iter().map(|r| Value::from(*r)).collect()),
    );
    Value::Dictionary(d)
}

/// Model, not a capture: one container of `diskutil apfs list -plist`.
fn model_container(uuid: &str, reference: &str, store: &str, volumes: Vec<Value>) -> Value {
    let mut s = Dictionary::new();
    s.insert("DeviceIdentifier".into(), store.into());
    s.insert("DiskUUID".into(), format!("{uuid}-STORE").into());
    s.insert("Size".into(), Value::Integer(494_384_795_648_u64.into()));
    let mut d = Dictionary::new();
    d.insert("APFSContainerUUID".into(), uuid.into());
    d.insert(
        "CapacityCeiling".into(),
        Value::Integer(494_384_795_648_u64.into()),
    );
    d.insert("ContainerReference".into(), reference.into());
    d.insert("DesignatedPhysicalStore".into(), store.into());
    d.insert("Fusion".into(), false.into());
    d.insert(
        "PhysicalStores".into(),
        Value::Array(vec![Value::Dictionary(s)]),
    );
    d.insert("Volumes".into(), Value::Array(volumes));
    Value::Dictionary(d)
}

fn xml(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    value.to_writer_xml(&mut out).unwrap();
    out
}

/// Model, not a capture: `diskutil info -plist` with the few keys the inventory reads.
fn model_info(
    device: &str,
    internal: bool,
    volume_uuid: Option<&str>,
    sealed: Option<&str>,
) -> Vec<u8> {
    let mut d = Dictionary::new();
    d.insert("DeviceIdentifier".into(), device.into());
    d.insert("Internal".into(), internal.into());
    if let Some(uuid) = volume_uuid {
        d.insert("VolumeUUID".into(), uuid.into());
    }
    if let Some(sealed) = sealed {
        d.insert("Sealed".into(), sealed.into());
    }
    xml(&Value::Dictionary(d))
}

/// Model, not a capture: `dscl -plist . -readall /Users RecordName UniqueID UserShell`.
fn model_users(users: &[(&str, &str, &str)]) -> Vec<u8> {
    let records = users
        .iter()
        .map(|(name, uid, shell)| {
            let one = |v: &str| Value::Array(vec![Value::from(v)]);
            let mut d = Dictionary::new();
            d.insert("dsAttrTypeStandard:RecordName".into(), one(name));
            d.insert("dsAttrTypeStandard:UniqueID".into(), one(uid));
            d.insert("dsAttrTypeStandard:UserShell".into(), one(shell));
            Value::Dictionary(d)
        })
        .collect();
    xml(&Value::Array(records))
}

const STOCK_USERS: &[(&str, &str, &str)] = &[
    ("root", "0", "/bin/sh"),
    ("daemon", "1", "/usr/bin/false"),
    ("nobody", "-2", "/usr/bin/false"),
    ("_spotlight", "89", "/usr/bin/false"),
    ("admin", "501", "/bin/zsh"),
];

/// A model Apple silicon Mac: the boot container on disk0s2 (System, Data, Preboot, Recovery,
/// VM, Update, plus whatever `extra` volumes a tenant added), the recoveryOS container on
/// disk0s3 and the iSC container on disk0s1.
struct ModelMac {
    data_uuid: &'static str,
    vm_uuid: &'static str,
    extra: Vec<(&'static str, &'static str)>,
    /// Partitions of other formats on the internal disk: (partition UUID, type).
    partitions: Vec<(&'static str, &'static str)>,
    users: Vec<(&'static str, &'static str, &'static str)>,
    csrutil: Vec<u8>,
    activation_lock: Vec<u8>,
    /// Stands for `/System/Volumes/Data`: its birth time is the Data volume's.
    data_root: Arc<tempfile::TempDir>,
}

impl ModelMac {
    fn tenant_os() -> Self {
        Self {
            data_uuid: "D1D1D1D1-0000-4000-8000-000000000001",
            vm_uuid: "7E7E7E7E-0000-4000-8000-000000000001",
            extra: vec![("7A7A7A7A-0000-4000-8000-0000000000AA", "Scratch")],
            partitions: vec![],
            users: [STOCK_USERS, &[("tenant", "502", "/bin/zsh")]].concat(),
            csrutil: fixture("macos/csrutil-status.enabled.documented.txt"),
            activation_lock: fixture(
                "macos/system_profiler-SPHardwareDataType.virtual-m1.macos-26.6.2.json",
            ),
            data_root: Arc::new(tempfile::tempdir().unwrap()),
        }
    }

    /// The same Mac after Erase All Content and Settings (as modelled: new Data and VM volumes,
    /// the tenant's added volume deleted by the prepare half, only the stock accounts).
    fn after_eacs() -> Self {
        Self {
            data_uuid: "D2D2D2D2-0000-4000-8000-000000000002",
            vm_uuid: "7E7E7E7E-0000-4000-8000-000000000002",
            extra: vec![],
            users: STOCK_USERS.to_vec(),
            data_root: Arc::new(tempfile::tempdir().unwrap()),
            ..Self::tenant_os()
        }
    }

    fn apfs_list(&self) -> Vec<u8> {
        let mut boot = vec![
            model_volume(
                "5157E000-0000-4000-8000-000000000001",
                "disk3s1",
                "Macintosh HD",
                &["System"],
            ),
            model_volume(self.data_uuid, "disk3s5", "Data", &["Data"]),
            model_volume(
                "9BE00000-0000-4000-8000-000000000001",
                "disk3s2",
                "Preboot",
                &["Preboot"],
            ),
            model_volume(
                "8EC00000-0000-4000-8000-000000000001",
                "disk3s3",
                "Recovery",
                &["Recovery"],
            ),
            model_volume(self.vm_uuid, "disk3s6", "VM", &["VM"]),
            model_volume(
                "0BDA7E00-0000-4000-8000-000000000001",
                "disk3s4",
                "Update",
                &["Update"],
            ),
        ];
        for (i, (uuid, name)) in self.extra.iter().enumerate() {
            boot.push(model_volume(uuid, &format!("disk3s{}", 7 + i), name, &[]));
        }
        let list = Dictionary::from_iter([(
            "Containers".to_owned(),
            Value::Array(vec![
                model_container(
                    "C15C0000-0000-4000-8000-000000000001",
                    "disk1",
                    "disk0s1",
                    vec![
                        model_volume(
                            "15C9B000-0000-4000-8000-000000000001",
                            "disk1s1",
                            "iSCPreboot",
                            &["Preboot"],
                        ),
                        model_volume(
                            "A47A0000-0000-4000-8000-000000000001",
                            "disk1s2",
                            "xART",
                            &["xART"],
                        ),
                        model_volume(
                            "4A4D0000-0000-4000-8000-000000000001",
                            "disk1s3",
                            "Hardware",
                            &["Hardware"],
                        ),
                    ],
                ),
                model_container(
                    "C3EC0000-0000-4000-8000-000000000001",
                    "disk2",
                    "disk0s3",
                    vec![
                        model_volume(
                            "8EC20000-0000-4000-8000-000000000001",
                            "disk2s1",
                            "Recovery",
                            &["Recovery"],
                        ),
                        model_volume(
                            "0BDA7E20-0000-4000-8000-000000000001",
                            "disk2s2",
                            "Update",
                            &["Update"],
                        ),
                    ],
                ),
                model_container(
                    "C0B00000-0000-4000-8000-000000000001",
                    "disk3",
                    "disk0s2",
                    boot,
                ),
            ]),
        )]);
        xml(&Value::Dictionary(list))
    }

    /// Model, not a capture: `diskutil list -plist` of the same Mac (the internal disk0 with the
    /// iSC, APFS and recoveryOS partitions, plus the tenant's `partitions`; the synthesized
    /// container disks).
    fn disk_list(&self) -> Vec<u8> {
        let part = |dev: &str, content: &str, uuid: &str| {
            let mut d = Dictionary::new();
            d.insert("Content".into(), content.into());
            d.insert("DeviceIdentifier".into(), dev.into());
            d.insert("DiskUUID".into(), uuid.into());
            d.insert("Size".into(), Value::Integer(1_000_000.into()));
            Value::Dictionary(d)
        };
        let mut partitions = vec![
            part(
                "disk0s1",
                "Apple_APFS_ISC",
                "15C00000-0000-4000-8000-0000000000D1",
            ),
            part(
                "disk0s2",
                "Apple_APFS",
                "C0B00000-0000-4000-8000-0000000000D2",
            ),
            part(
                "disk0s3",
                "Apple_APFS_Recovery",
                "3EC00000-0000-4000-8000-0000000000D3",
            ),
        ];
        for (i, (uuid, content)) in self.partitions.iter().enumerate() {
            partitions.push(part(&format!("disk0s{}", 4 + i), content, uuid));
        }
        let mut disk0 = Dictionary::new();
        disk0.insert("Content".into(), "GUID_partition_scheme".into());
        disk0.insert("DeviceIdentifier".into(), "disk0".into());
        disk0.insert("Partitions".into(), Value::Array(partitions));
        let mut disks = vec![Value::Dictionary(disk0)];
        for synthesized in ["disk1", "disk2", "disk3"] {
            let mut d = Dictionary::new();
            d.insert(
                "Content".into(),
                "EF57347C-0000-11AA-AA11-00306543ECAC".into(),
            );
            d.insert("DeviceIdentifier".into(), synthesized.into());
            d.insert(
                "APFSVolumes".into(),
                Value::Array(vec![Value::Dictionary(Dictionary::new())]),
            );
            d.insert("Partitions".into(), Value::Array(vec![]));
            disks.push(Value::Dictionary(d));
        }
        xml(&Value::Dictionary(Dictionary::from_iter([(
            "AllDisksAndPartitions".to_owned(),
            Value::Array(disks),
        )])))
    }

    fn runner(&self) -> Arc<Answers> {
        let mut a = BTreeMap::new();
        let mut put = |program: &str, args: &str, out: Vec<u8>| {
            a.insert(format!("{program} {args}"), out);
        };
        put(DISKUTIL, "apfs list -plist", self.apfs_list());
        put(DISKUTIL, "list -plist", self.disk_list());
        if !self.partitions.is_empty() {
            put(
                DISKUTIL,
                "info -plist disk0",
                model_info("disk0", true, None, None),
            );
        }
        for store in ["disk0s1", "disk0s2", "disk0s3"] {
            put(
                DISKUTIL,
                &format!("info -plist {store}"),
                model_info(store, true, None, None),
            );
        }
        put(
            DISKUTIL,
            "info -plist disk3s1",
            model_info("disk3s1", true, None, Some("Yes")),
        );
        put(
            DISKUTIL,
            "info -plist /System/Volumes/Data",
            model_info("disk3s5", true, Some(self.data_uuid), None),
        );
        put(CSRUTIL, "status", self.csrutil.clone());
        put(
            FDESETUP,
            "status",
            fixture("macos/fdesetup-status.on.apple-silicon.txt"),
        );
        put(
            SYSTEM_PROFILER,
            "SPHardwareDataType -json",
            self.activation_lock.clone(),
        );
        put(
            DSCL,
            "-plist . -readall /Users RecordName UniqueID UserShell",
            model_users(&self.users),
        );
        Arc::new(Answers {
            answers: a,
            calls: Mutex::default(),
        })
    }

    fn inventory(&self, at: u64) -> Result<jex_reclaim::Inventory, InventoryError> {
        MacInventory::new(host())
            .with_runner(self.runner())
            .with_data_mount(self.data_root.path())
            .take(at)
    }
}

/// A runner answering `program args` from a table, exit code 0; anything else fails.
#[derive(Debug)]
struct Answers {
    answers: BTreeMap<String, Vec<u8>>,
    calls: Mutex<Vec<String>>,
}

impl CommandRunner for Answers {
    fn run(&self, program: &Path, args: &[OsString]) -> std::io::Result<CommandOutput> {
        let line = command_line(program, args);
        self.calls.lock().unwrap().push(line.clone());
        match self.answers.get(&line) {
            Some(out) => Ok(CommandOutput {
                code: Some(0),
                stdout: out.clone(),
                stderr: Vec::new(),
            }),
            None => Ok(CommandOutput {
                code: Some(1),
                stdout: Vec::new(),
                stderr: format!("no answer for {line}").into_bytes(),
            }),
        }
    }
}

fn host() -> HostIdentity {
    HostIdentity {
        host_id: "mac-1".into(),
        hardware_uuid: "81895B8D-9EF9-4EBB-B5DE-B00069CF53F0".into(),
        serial_number: "J316SAPSERIAL".into(),
    }
}

const TERMINATE: u64 = 1_765_000_000_000;

fn context() -> AttestationContext {
    AttestationContext {
        terminate_unix_ms: TERMINATE,
        signer_not_before_unix_ms: TERMINATE + 60_000,
        allowed_accounts: vec!["admin".into(), "root".into()],
        platform: Platform::Mac,
    }
}

#[test]
fn the_inventory_records_every_volume_with_its_role_store_and_seal() {
    let mac = ModelMac::tenant_os();
    let inv = mac.inventory(TERMINATE).unwrap();
    assert_eq!(inv.volumes.len(), 12);
    let data = inv.volume(mac.data_uuid).unwrap();
    assert_eq!(data.role, VolumeRole::Data);
    assert_eq!(data.physical_store.as_deref(), Some("disk0s2"));
    assert_eq!(
        data.container_uuid.as_deref(),
        Some("C0B00000-0000-4000-8000-000000000001")
    );
    assert!(data.internal && data.encrypted);
    let system = inv.volume("5157E000-0000-4000-8000-000000000001").unwrap();
    assert_eq!(
        (system.role.clone(), system.sealed),
        (VolumeRole::System, Some(true))
    );
    let scratch = inv.volume("7a7a7a7a-0000-4000-8000-0000000000aa").unwrap();
    assert_eq!(scratch.role, VolumeRole::None);
    assert_eq!(inv.accounts, ["admin", "root", "tenant"]);
    assert_eq!(inv.sip_enabled, Some(true));
    assert_eq!(inv.filevault_on, Some(true));
    assert_eq!(inv.activation_lock_enabled, Some(false));
}

#[test]
fn every_tool_is_run_by_its_fixed_path_and_nothing_else_is_run() {
    let mac = ModelMac::tenant_os();
    let runner = mac.runner();
    let dir = tempfile::tempdir().unwrap();
    MacInventory::new(host())
        .with_runner(runner.clone())
        .with_data_mount(dir.path())
        .take(TERMINATE)
        .unwrap();
    let calls = runner.calls.lock().unwrap().clone();
    for call in &calls {
        assert!(runner.answers.contains_key(call), "unexpected call {call}");
        let program = call.split(' ').next().unwrap();
        assert!(
            [DISKUTIL, CSRUTIL, FDESETUP, SYSTEM_PROFILER, DSCL].contains(&program),
            "{program}"
        );
    }
    assert_eq!(calls.len(), runner.answers.len(), "{calls:#?}");
}

#[test]
fn the_two_halves_pass_when_the_device_erase_made_a_new_data_volume() {
    let before = ModelMac::tenant_os().inventory(TERMINATE).unwrap();
    let now = ModelMac::after_eacs()
        .inventory(TERMINATE + 3_600_000)
        .unwrap();
    let lines = evaluate(&before, &now, &context());
    assert!(all_passed(&lines), "{lines:#?}");
}

#[test]
fn a_tenant_volume_left_behind_fails_naming_it() {
    let before = ModelMac::tenant_os().inventory(TERMINATE).unwrap();
    let mut after = ModelMac::after_eacs();
    after.extra = ModelMac::tenant_os().extra;
    let now = after.inventory(TERMINATE + 3_600_000).unwrap();
    let lines = evaluate(&before, &now, &context());
    assert_eq!(
        failed_checks(&lines),
        [
            "tenant_volumes_gone",
            "only_system_roles_kept",
            "no_extra_volumes"
        ]
    );
}

#[test]
fn a_partition_of_another_format_left_on_the_internal_disk_fails() {
    let mut tenant = ModelMac::tenant_os();
    tenant.partitions = vec![(
        "EXFA0000-0000-4000-8000-000000000001",
        "Microsoft Basic Data",
    )];
    let before = tenant.inventory(TERMINATE).unwrap();
    let stash = before
        .volume("exfa0000-0000-4000-8000-000000000001")
        .unwrap();
    assert!(stash.internal);
    assert_eq!(stash.role.as_apple(), "partition Microsoft Basic Data");
    let mut after = ModelMac::after_eacs();
    after.partitions = tenant.partitions.clone();
    let now = after.inventory(TERMINATE + 3_600_000).unwrap();
    assert_eq!(
        failed_checks(&evaluate(&before, &now, &context())),
        [
            "tenant_volumes_gone",
            "only_system_roles_kept",
            "no_extra_volumes"
        ]
    );
    // Gone after the device erase: passes.
    let now = ModelMac::after_eacs()
        .inventory(TERMINATE + 3_600_000)
        .unwrap();
    assert!(all_passed(&evaluate(&before, &now, &context())));
}

#[test]
fn the_captured_custom_sip_and_activation_lock_fail_their_lines() {
    let before = ModelMac::tenant_os().inventory(TERMINATE).unwrap();
    let mut after = ModelMac::after_eacs();
    after.csrutil = fixture("macos/csrutil-status.custom.apple-silicon.macos-12.5.txt");
    after.activation_lock = fixture("macos/system_profiler-SPHardwareDataType.m5max.json");
    let now = after.inventory(TERMINATE + 3_600_000).unwrap();
    let lines = evaluate(&before, &now, &context());
    assert_eq!(
        failed_checks(&lines),
        ["sip_enabled", "activation_lock_off"]
    );
}

#[test]
fn the_device_erase_skipped_fails() {
    // The same Mac, the same Data volume (same UUID, same birth time), an hour later.
    let mac = ModelMac::tenant_os();
    let before = mac.inventory(TERMINATE).unwrap();
    let now = mac.inventory(TERMINATE + 3_600_000).unwrap();
    let failed = failed_checks(&evaluate(&before, &now, &context()));
    assert!(failed.contains(&"tenant_volumes_gone"), "{failed:?}");
    assert!(failed.contains(&"data_volume_new"), "{failed:?}");
    assert!(failed.contains(&"accounts_allowed"), "{failed:?}");
}

#[test]
fn a_tool_that_fails_or_prints_garbage_is_an_error_naming_it() {
    let mac = ModelMac::tenant_os();
    let runner = mac.runner();
    let mut answers = Arc::try_unwrap(runner).unwrap();
    answers.answers.insert(
        format!("{FDESETUP} status"),
        b"Error: unexpected\n".to_vec(),
    );
    let err = MacInventory::new(host())
        .with_runner(Arc::new(answers))
        .take(TERMINATE)
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/usr/bin/fdesetup status"), "{text}");
    assert!(text.contains("FileVault is On."), "{text}");

    let mut answers = Arc::try_unwrap(mac.runner()).unwrap();
    answers.answers.remove(&format!("{CSRUTIL} status"));
    let err = MacInventory::new(host())
        .with_runner(Arc::new(answers))
        .take(TERMINATE)
        .unwrap_err();
    assert!(
        matches!(&err, InventoryError::ToolFailed { program, .. } if program == CSRUTIL),
        "{err:?}"
    );
}
