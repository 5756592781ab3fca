//! Property tests of the evidence rules over generated pairs of inventories:
//!
//! - a pair where some tenant-data UUID of the prepare inventory is still there now (and the
//!   volume was not re-created after the terminate) never passes as a whole;
//! - a pair built as "fresh after the device erase" (every tenant UUID new, system roles kept,
//!   accounts allowed, flags good, a key born after the terminate) always passes;
//! - a signing key not younger than the terminate never passes.

use proptest::prelude::*;

use jex_reclaim::inventory::uuid_key;
use jex_reclaim::{
    AttestationContext, Check, HostIdentity, Inventory, Platform, Volume, VolumeRole, all_passed,
    evaluate,
};

const TERMINATE: u64 = 1_765_000_000_000;

fn host() -> HostIdentity {
    HostIdentity {
        host_id: "h-1".into(),
        hardware_uuid: "4C4C4544-0042-3510-8048-B4C04F4A4E32".into(),
        serial_number: "J7XK2Q4M1N".into(),
    }
}

fn system_role() -> BoxedStrategy<VolumeRole> {
    prop_oneof![
        Just(VolumeRole::System),
        Just(VolumeRole::Preboot),
        Just(VolumeRole::Recovery),
        Just(VolumeRole::Update),
        Just(VolumeRole::Xart),
        Just(VolumeRole::Hardware),
        Just(VolumeRole::IscPreboot),
    ]
    .boxed()
}

fn tenant_role() -> BoxedStrategy<VolumeRole> {
    prop_oneof![
        Just(VolumeRole::Data),
        Just(VolumeRole::Vm),
        Just(VolumeRole::None),
        // Roles this crate does not know (never one of Apple's system roles).
        "[A-Za-z]{1,8}".prop_map(|r| VolumeRole::Other(format!("Tenant{r}"))),
    ]
    .boxed()
}

fn any_role() -> BoxedStrategy<VolumeRole> {
    prop_oneof![system_role(), tenant_role()].boxed()
}

fn created() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        Just(None),
        (0..=TERMINATE * 2).prop_map(Some),
        Just(Some(TERMINATE)),
    ]
}

/// A volume with the UUID `uuid` and arbitrary other facts.
fn volume(uuid: String, role: BoxedStrategy<VolumeRole>) -> impl Strategy<Value = Volume> {
    (
        role,
        "[a-zA-Z -]{0,12}",
        created(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(move |(role, name, created, encrypted, internal, sealed)| {
            let mut v = Volume::new(uuid.clone(), name, role);
            v.created_unix_ms = created;
            v.encrypted = encrypted;
            v.internal = internal;
            v.sealed = sealed;
            v
        })
}

fn uuid_with(prefix: &'static str) -> impl Strategy<Value = String> {
    "[0-9a-f]{8}".prop_map(move |s| format!("{prefix}{s}"))
}

/// Distinct-by-key volumes of roles `role`, UUIDs starting with `prefix`.
fn volumes(
    prefix: &'static str,
    role: BoxedStrategy<VolumeRole>,
    size: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<Volume>> {
    proptest::collection::btree_set(uuid_with(prefix), size).prop_flat_map(move |uuids| {
        uuids
            .into_iter()
            .map(|u| volume(u, role.clone()))
            .collect::<Vec<_>>()
    })
}

fn platform() -> impl Strategy<Value = Platform> {
    prop_oneof![Just(Platform::Mac), Just(Platform::Linux)]
}

fn flags() -> impl Strategy<Value = (Option<bool>, Option<bool>, Option<bool>)> {
    (
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
    )
}

fn inventory(taken: u64, volumes: Vec<Volume>, accounts: Vec<String>) -> Inventory {
    Inventory::new(host(), taken, volumes, accounts)
}

fn accounts() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec("[a-z]{1,6}", 0..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever else the inventories say, a tenant UUID of the prepare inventory that is still
    /// present now (under any role, in any case) and was not re-created after the terminate
    /// fails the attestation.
    #[test]
    fn a_surviving_tenant_uuid_never_passes(
        platform in platform(),
        system in volumes("5", system_role(), 0..6),
        tenant in volumes("7", tenant_role(), 1..5),
        others_now in volumes("9", any_role(), 0..6),
        pick in any::<prop::sample::Index>(),
        role_now in any_role(),
        created_now in prop_oneof![Just(None), (0..=TERMINATE).prop_map(Some), Just(Some(u64::MAX))],
        upper in any::<bool>(),
        accounts in accounts(),
        (sip, fv, al) in flags(),
        signer_after in any::<bool>(),
    ) {
        // On Linux every volume is a tenant volume; on a Mac, those without a system role.
        let mut before_volumes = tenant.clone();
        before_volumes.extend(system.clone());
        let before = inventory(TERMINATE, before_volumes, accounts.clone());

        let survivor_before = pick.get(&tenant).clone();
        let mut survivor = survivor_before.clone();
        survivor.role = role_now;
        survivor.created_unix_ms = match created_now {
            // "Same time as at prepare" stands for a volume untouched since.
            Some(u64::MAX) => survivor_before.created_unix_ms,
            other => other,
        };
        if upper {
            survivor.uuid = survivor.uuid.to_ascii_uppercase();
        }
        let mut now_volumes = others_now;
        now_volumes.extend(system);
        now_volumes.push(survivor);
        let mut now = inventory(TERMINATE + 1, now_volumes, accounts.clone());
        now.sip_enabled = sip;
        now.filevault_on = fv;
        now.activation_lock_enabled = al;

        let ctx = AttestationContext {
            terminate_unix_ms: TERMINATE,
            signer_not_before_unix_ms: if signer_after { TERMINATE + 1 } else { TERMINATE },
            allowed_accounts: accounts,
            platform,
        };
        let lines = evaluate(&before, &now, &ctx);
        prop_assert!(!all_passed(&lines), "{:#?}", lines);
        let gone = lines.iter().find(|l| l.check == Check::TenantVolumesGone).unwrap();
        prop_assert!(!gone.passed, "{:#?}", gone);
        prop_assert!(
            gone.detail.contains(&survivor_before.uuid),
            "{} not named in {}", survivor_before.uuid, gone.detail
        );
    }

    /// A pair built as "fresh after the device erase" always passes.
    #[test]
    fn a_fresh_host_after_the_device_erase_always_passes(
        platform in platform(),
        system in volumes("5", system_role(), 1..7),
        tenant in volumes("7", tenant_role(), 0..6),
        data_created in prop_oneof![Just(None), (TERMINATE + 1..=TERMINATE * 2).prop_map(Some)],
        keep_data_uuid in any::<bool>(),
        with_vm in any::<bool>(),
        allowed in proptest::collection::btree_set("[a-z]{1,6}", 1..5),
        take in 0usize..5,
        born_after in 1..=u64::MAX - TERMINATE,
        filevault in proptest::option::of(any::<bool>()),
    ) {
        let allowed: Vec<String> = allowed.into_iter().collect();
        let mut before_volumes = tenant.clone();
        before_volumes.extend(system.clone());
        let before = inventory(TERMINATE, before_volumes, vec!["tenant".into()]);

        let (now_volumes, sip, al) = match platform {
            Platform::Mac => {
                // System roles keep their volumes; System sealed; one new Data, maybe a new VM.
                let mut now_volumes: Vec<Volume> = system
                    .iter()
                    .cloned()
                    .map(|mut v| {
                        if v.role == VolumeRole::System {
                            v.sealed = Some(true);
                        }
                        v
                    })
                    .collect();
                if !now_volumes.iter().any(|v| v.role == VolumeRole::System) {
                    let mut s = Volume::new("5-system", "Macintosh HD", VolumeRole::System);
                    s.sealed = Some(true);
                    now_volumes.push(s);
                }
                // Keep the old Data UUID only if EACS could have: re-created after the
                // terminate (a known creation time other than the recorded one).
                let old_data = tenant
                    .iter()
                    .find(|v| v.role == VolumeRole::Data && data_created.is_some()
                        && v.created_unix_ms != data_created);
                let data_uuid = match (keep_data_uuid, old_data) {
                    (true, Some(old)) => old.uuid.clone(),
                    _ => "3-new-data".to_owned(),
                };
                let mut data = Volume::new(data_uuid, "Macintosh HD - Data", VolumeRole::Data);
                data.created_unix_ms = data_created;
                now_volumes.push(data);
                if with_vm {
                    now_volumes.push(Volume::new("3-new-vm", "VM", VolumeRole::Vm));
                }
                (now_volumes, Some(true), Some(false))
            }
            Platform::Linux => {
                // Every volume reformatted with a new UUID.
                let now_volumes = before
                    .volumes
                    .iter()
                    .map(|v| {
                        let mut n = v.clone();
                        n.uuid = format!("3-{}", v.uuid);
                        n
                    })
                    .collect();
                (now_volumes, None, None)
            }
        };
        let accounts_now: Vec<String> = allowed.iter().take(take).cloned().collect();
        let mut now = inventory(TERMINATE + 10, now_volumes, accounts_now);
        now.sip_enabled = sip;
        now.activation_lock_enabled = al;
        now.filevault_on = filevault;
        // No surviving tenant UUID, unless it is the re-created Data volume.
        for v in &before.volumes {
            if (!v.role.is_apple_system_role() || platform == Platform::Linux)
                && let Some(n) = now.volume(&v.uuid)
            {
                prop_assert_eq!(&n.role, &VolumeRole::Data);
                prop_assert_eq!(uuid_key(&n.uuid), uuid_key(&v.uuid));
            }
        }

        let ctx = AttestationContext {
            terminate_unix_ms: TERMINATE,
            signer_not_before_unix_ms: TERMINATE + born_after,
            allowed_accounts: allowed,
            platform,
        };
        let lines = evaluate(&before, &now, &ctx);
        prop_assert!(all_passed(&lines), "{:#?}", lines);
    }

    /// A signing key (certificate) born at or before the terminate never passes, whatever the
    /// inventories.
    #[test]
    fn a_key_not_younger_than_the_terminate_never_passes(
        platform in platform(),
        before in volumes("7", any_role(), 0..4),
        now in volumes("7", any_role(), 0..4),
        terminate in any::<u64>(),
        back in any::<u64>(),
        sip in proptest::option::of(any::<bool>()),
    ) {
        let born = terminate.saturating_sub(back);
        let before = inventory(terminate, before, vec![]);
        let mut now = inventory(terminate, now, vec![]);
        now.sip_enabled = sip;
        now.activation_lock_enabled = Some(false);
        let lines = evaluate(&before, &now, &AttestationContext {
            terminate_unix_ms: terminate,
            signer_not_before_unix_ms: born,
            allowed_accounts: vec![],
            platform,
        });
        prop_assert!(!all_passed(&lines));
        let line = lines
            .iter()
            .find(|l| l.check == Check::SigningKeyAfterTerminate)
            .unwrap();
        prop_assert!(!line.passed);
    }
}
