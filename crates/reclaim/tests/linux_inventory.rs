//! The Linux inventory against real inputs: a real Debian `/etc/passwd`, and the real
//! cryptsetup on LUKS2 images this test formats (a plain file is enough for `luksFormat` and
//! `luksUUID`: no loop device, no root needed beyond file access).

#![allow(clippy::unwrap_used)] // test helpers: a failure is a failed test

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jex_reclaim::linux::{
    CRYPTSETUP, CommandRunner, LinuxInventory, LuksDevice, SystemRunner, accounts_from_passwd,
    parse_passwd,
};
use jex_reclaim::{
    AttestationContext, HostIdentity, InventoryError, InventorySource, Platform, all_passed,
    evaluate, failed_checks,
};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/passwd.debian-12-bookworm"
);

#[test]
fn a_real_debian_passwd_gives_root_the_regular_user_and_the_system_account_with_a_shell() {
    let text = std::fs::read_to_string(FIXTURE).unwrap();
    // root (/bin/bash), cloudsdk (uid 1000), postgres (uid 101 with /bin/bash). Not sync
    // (/bin/sync), not nobody (65534), not the nologin system accounts.
    assert_eq!(
        accounts_from_passwd(&text),
        ["cloudsdk", "postgres", "root"]
    );
    assert!(parse_passwd(&text).ignored.is_empty());
}

fn cryptsetup() -> &'static Path {
    let path = Path::new(CRYPTSETUP);
    assert!(
        path.is_file(),
        "{CRYPTSETUP} is missing: this test needs the real cryptsetup; install it with \
         `apt-get install -y cryptsetup-bin`"
    );
    path
}

/// Formats `image` (created, 32 MiB) as LUKS2 with UUID `uuid`, quickly (PBKDF2, 1000
/// iterations: the key's strength does not matter here).
fn luks_format(dir: &Path, image: &Path, uuid: &str) {
    let file = std::fs::File::create(image).unwrap();
    file.set_len(32 << 20).unwrap();
    let key = dir.join("key");
    std::fs::write(&key, b"not a secret: a test key file").unwrap();
    let args: Vec<OsString> = [
        "luksFormat",
        "--type",
        "luks2",
        "--batch-mode",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--uuid",
        uuid,
        "--key-file",
    ]
    .iter()
    .map(OsString::from)
    .chain([key.into_os_string(), image.as_os_str().to_owned()])
    .collect();
    let out = SystemRunner {
        deadline: Duration::from_secs(120),
    }
    .run(cryptsetup(), &args)
    .unwrap();
    assert_eq!(
        out.code,
        Some(0),
        "cryptsetup luksFormat failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn host() -> HostIdentity {
    HostIdentity {
        host_id: "h-1".into(),
        hardware_uuid: "4c4c4544-0042-3510-8048-b4c04f4a4e32".into(),
        serial_number: "J7XK2Q4M1N".into(),
    }
}

fn source(device: PathBuf) -> LinuxInventory {
    LinuxInventory::new(
        host(),
        vec![LuksDevice {
            name: "tenant-disk".into(),
            device,
        }],
    )
    .with_passwd(FIXTURE)
}

#[test]
fn the_real_cryptsetup_reads_the_luks2_uuid_and_a_new_format_passes_the_linux_rules() {
    cryptsetup();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("internal.img");
    let before_uuid = "6a0d6c4e-7b1f-4c3e-9a55-0f6f1b2c3d4e";
    luks_format(dir.path(), &image, before_uuid);

    let before = source(image.clone()).take(1_000).unwrap();
    assert_eq!(before.volumes.len(), 1);
    let v = &before.volumes[0];
    assert_eq!(v.uuid, before_uuid);
    assert_eq!(v.size_bytes, Some(32 << 20));
    assert_eq!(
        v.physical_store.as_deref(),
        Some(image.display().to_string().as_str())
    );
    assert_eq!(before.accounts, ["cloudsdk", "postgres", "root"]);

    let ctx = AttestationContext {
        terminate_unix_ms: 1_000,
        signer_not_before_unix_ms: 2_000,
        allowed_accounts: vec!["cloudsdk".into(), "postgres".into(), "root".into()],
        platform: Platform::Linux,
    };

    // No device erase: the same header, the same UUID.
    let unchanged = source(image.clone()).take(3_000).unwrap();
    let lines = evaluate(&before, &unchanged, &ctx);
    assert_eq!(
        failed_checks(&lines),
        ["tenant_volumes_gone", "only_system_roles_kept"]
    );

    // The device erase as simulated on Linux: a new luksFormat writes a new UUID.
    luks_format(dir.path(), &image, "0e9a3f7b-2c4d-4e8f-8a1b-5c6d7e8f9a0b");
    let after = source(image).take(3_000).unwrap();
    assert_eq!(
        after.volumes[0].uuid,
        "0e9a3f7b-2c4d-4e8f-8a1b-5c6d7e8f9a0b"
    );
    let lines = evaluate(&before, &after, &ctx);
    assert!(all_passed(&lines), "{lines:#?}");
}

#[test]
fn the_real_cryptsetup_refuses_a_device_without_a_luks_header() {
    cryptsetup();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("plain.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let err = source(image).take(1).unwrap_err();
    match &err {
        InventoryError::ToolFailed {
            program, status, ..
        } => {
            assert_eq!(program, CRYPTSETUP);
            assert_ne!(status, "exit code 0");
        }
        other => panic!("expected ToolFailed, got {other:?}"),
    }
}
