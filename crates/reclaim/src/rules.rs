//! The evidence rules of the attest half: pure functions from the prepare-time inventory, the
//! inventory now and the [`AttestationContext`] to one named [`Evidence`] line per check.
//!
//! Only when every line passes ([`all_passed`]) may the host become reclaimable; otherwise the
//! failed lines ([`failed_checks`]) are what the operation's failure names. Nothing here reads
//! the host, the clock or a file: the same inputs always give the same lines, so a restart in
//! the middle of an attestation gives the same answer.
//!
//! # The checks
//!
//! Their names ([`Check::name`]) are stable: they appear in certificates and in failures.
//!
//! | name | platform | passes when |
//! |---|---|---|
//! | `same_host` | both | hardware UUID and serial number are known and equal to the prepare record's |
//! | `tenant_volumes_gone` | both | every volume of the prepare inventory that could hold tenant data is absent now, by UUID (a Mac's Data volume re-created after the terminate excepted, see below) |
//! | `data_volume_new` | mac | there is a Data volume now, and each one is new (see below) |
//! | `only_system_roles_kept` | both | every volume whose UUID survives had, and has, one of Apple's system roles (the re-created Data volume excepted) |
//! | `system_sealed` | mac | there is a System volume now, and each one is sealed |
//! | `no_extra_volumes` | mac | every volume now has an Apple standard role, with exactly one Data volume |
//! | `accounts_allowed` | both | no local account now beyond the configured list |
//! | `sip_enabled` | mac | SIP is known to be enabled |
//! | `activation_lock_off` | mac | Activation Lock is known to be off |
//! | `signing_key_after_terminate` | both | the signing certificate's `not_before` is strictly after the terminate time |
//!
//! A volume "could hold tenant data" unless it has one of Apple's system roles (System,
//! Preboot, Recovery, Update, xART, Hardware, iSCPreboot): so the Data and VM roles, volumes
//! without a role and unknown roles. On Linux every volume could, since no role is known there.
//! UUIDs are compared case-insensitively ([`uuid_key`]); an unknown state (`None`) never passes.
//!
//! **The Data volume.** Whether EACS gives the new Data volume a new UUID is for a capture on a
//! real Mac to settle; until then a Data volume now is new when either holds, and its line says
//! which:
//! - its UUID is not in the prepare inventory, or
//! - it kept a UUID of the prepare inventory's Data volume but was created after the terminate
//!   time, at a time other than the one the prepare inventory recorded for it.
//!
//! In both cases, a Data volume whose creation time is known and not after the terminate time
//! is not new, whatever its UUID: nothing the device erase made can predate the terminate. The
//! same "re-created" exception is what lets `tenant_volumes_gone` and `only_system_roles_kept`
//! accept such a Data volume; it applies to the Data role on a Mac only (a VM volume that keeps
//! its UUID fails until a capture shows EACS does that).
//!
//! **Linux.** The Mac-only checks are not emitted on Linux: they ask about things Linux does not
//! have (APFS roles, a sealed system volume, SIP, Activation Lock). A line saying "passed" or
//! "not applicable" would put a claim in a certificate that nothing checked; leaving it out
//! keeps every line a real check. The set of lines per platform is fixed ([`Check::ALL`] and
//! [`Check::applies_to`]), so a reader can tell a missing line from a check that was skipped.

use serde::{Deserialize, Serialize};

use crate::inventory::{Inventory, Volume, VolumeRole, uuid_key};

/// The platform an attestation runs on; decides which checks apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// macOS on Apple silicon: the two-halves reclaim with a device erase.
    Mac,
    /// Linux: the host's LUKS2 volumes stand in for the Mac's internal SSD.
    Linux,
}

/// What the rules need besides the two inventories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttestationContext {
    /// When the Terminate of this operation was accepted, Unix milliseconds (the prepare
    /// record's `terminate_unix_ms`).
    pub terminate_unix_ms: u64,
    /// When the key that will sign the certificate, and its certificate, came to be: the signing
    /// certificate's `not_before`, Unix milliseconds (or the later of the key's creation time and
    /// `not_before`, when the key's own time is known).
    pub signer_not_before_unix_ms: u64,
    /// The local accounts a freshly installed host may have.
    pub allowed_accounts: Vec<String>,
    /// The platform, which decides the checks.
    pub platform: Platform,
}

/// One check of the attestation. See the module documentation for what each one means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The prepare record verifies (made by [`crate::prepare::prepare_record_evidence`]).
    PrepareRecordVerifies,
    /// Same hardware UUID and serial number.
    SameHost,
    /// Every tenant volume of the prepare inventory is gone.
    TenantVolumesGone,
    /// The Data volume now is new.
    DataVolumeNew,
    /// Only Apple system roles keep their UUIDs.
    OnlySystemRolesKept,
    /// The System volume is sealed.
    SystemSealed,
    /// No volume beyond Apple's standard roles.
    NoExtraVolumes,
    /// No account beyond the configured list.
    AccountsAllowed,
    /// SIP enabled.
    SipEnabled,
    /// Activation Lock off.
    ActivationLockOff,
    /// The signing key was created after the terminate.
    SigningKeyAfterTerminate,
}

impl Check {
    /// Every check, in the order lines are written.
    pub const ALL: [Check; 11] = [
        Check::PrepareRecordVerifies,
        Check::SameHost,
        Check::TenantVolumesGone,
        Check::DataVolumeNew,
        Check::OnlySystemRolesKept,
        Check::SystemSealed,
        Check::NoExtraVolumes,
        Check::AccountsAllowed,
        Check::SipEnabled,
        Check::ActivationLockOff,
        Check::SigningKeyAfterTerminate,
    ];

    /// The stable snake_case name, as serialised.
    pub fn name(self) -> &'static str {
        match self {
            Check::PrepareRecordVerifies => "prepare_record_verifies",
            Check::SameHost => "same_host",
            Check::TenantVolumesGone => "tenant_volumes_gone",
            Check::DataVolumeNew => "data_volume_new",
            Check::OnlySystemRolesKept => "only_system_roles_kept",
            Check::SystemSealed => "system_sealed",
            Check::NoExtraVolumes => "no_extra_volumes",
            Check::AccountsAllowed => "accounts_allowed",
            Check::SipEnabled => "sip_enabled",
            Check::ActivationLockOff => "activation_lock_off",
            Check::SigningKeyAfterTerminate => "signing_key_after_terminate",
        }
    }

    /// Whether the check is made on `platform` (the Mac-only ones are not made on Linux).
    pub fn applies_to(self, platform: Platform) -> bool {
        let mac_only = matches!(
            self,
            Check::DataVolumeNew
                | Check::SystemSealed
                | Check::NoExtraVolumes
                | Check::SipEnabled
                | Check::ActivationLockOff
        );
        platform == Platform::Mac || !mac_only
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One evidence line: a check, whether it passed, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Which check.
    pub check: Check,
    /// Whether it passed.
    pub passed: bool,
    /// What was seen, in words, naming the volumes, accounts or times involved.
    pub detail: String,
}

impl Evidence {
    fn new(check: Check, passed: bool, detail: String) -> Self {
        Self {
            check,
            passed,
            detail,
        }
    }
}

/// Whether there is at least one line and every line passed.
pub fn all_passed(lines: &[Evidence]) -> bool {
    !lines.is_empty() && lines.iter().all(|l| l.passed)
}

/// The names of the lines that failed, in order.
pub fn failed_checks(lines: &[Evidence]) -> Vec<&'static str> {
    lines
        .iter()
        .filter(|l| !l.passed)
        .map(|l| l.check.name())
        .collect()
}

/// Every check that applies to `ctx.platform`, other than `prepare_record_verifies`, in the
/// order of [`Check::ALL`], comparing `before` (the prepare record's inventory) with `now`.
pub fn evaluate(before: &Inventory, now: &Inventory, ctx: &AttestationContext) -> Vec<Evidence> {
    let rules = Rules { before, now, ctx };
    Check::ALL
        .into_iter()
        .filter(|c| c.applies_to(ctx.platform))
        .filter_map(|check| rules.line(check))
        .collect()
}

struct Rules<'a> {
    before: &'a Inventory,
    now: &'a Inventory,
    ctx: &'a AttestationContext,
}

impl Rules<'_> {
    fn line(&self, check: Check) -> Option<Evidence> {
        Some(match check {
            Check::PrepareRecordVerifies => return None,
            Check::SameHost => self.same_host(),
            Check::TenantVolumesGone => self.tenant_volumes_gone(),
            Check::DataVolumeNew => self.data_volume_new(),
            Check::OnlySystemRolesKept => self.only_system_roles_kept(),
            Check::SystemSealed => self.system_sealed(),
            Check::NoExtraVolumes => self.no_extra_volumes(),
            Check::AccountsAllowed => self.accounts_allowed(),
            Check::SipEnabled => self.sip_enabled(),
            Check::ActivationLockOff => self.activation_lock_off(),
            Check::SigningKeyAfterTerminate => self.signing_key_after_terminate(),
        })
    }

    fn is_mac(&self) -> bool {
        self.ctx.platform == Platform::Mac
    }

    /// Whether `v` (of the prepare inventory) could hold a tenant's data.
    fn could_hold_tenant_data(&self, v: &Volume) -> bool {
        !self.is_mac() || !v.role.is_apple_system_role()
    }

    /// Whether `now` is the prepare inventory's Data volume `before` re-created after the
    /// terminate, keeping its UUID.
    fn recreated_data_volume(&self, before: &Volume, now: &Volume) -> bool {
        self.is_mac()
            && before.role == VolumeRole::Data
            && now.role == VolumeRole::Data
            && now
                .created_unix_ms
                .is_some_and(|t| t > self.ctx.terminate_unix_ms)
            && now.created_unix_ms != before.created_unix_ms
    }

    fn same_host(&self) -> Evidence {
        let (b, n) = (&self.before.host, &self.now.host);
        let mut problems = Vec::new();
        if b.hardware_uuid.trim().is_empty() || n.hardware_uuid.trim().is_empty() {
            problems.push(format!(
                "hardware UUID unknown (prepare {:?}, now {:?})",
                b.hardware_uuid, n.hardware_uuid
            ));
        } else if uuid_key(&b.hardware_uuid) != uuid_key(&n.hardware_uuid) {
            problems.push(format!(
                "hardware UUID {} is not the prepare record's {}",
                n.hardware_uuid, b.hardware_uuid
            ));
        }
        let (b_serial, n_serial) = (b.serial_number.trim(), n.serial_number.trim());
        // A Mac always has a serial number. A Linux host (a VM, or hardware whose DMI serial is
        // blank) may expose none: both sides empty there leaves the hardware UUID alone to
        // match; one side empty never passes.
        let none_exposed =
            b_serial.is_empty() && n_serial.is_empty() && self.ctx.platform == Platform::Linux;
        if none_exposed {
            // The hardware UUID above decides.
        } else if b_serial.is_empty() || n_serial.is_empty() {
            problems.push(format!(
                "serial number unknown (prepare {:?}, now {:?})",
                b.serial_number, n.serial_number
            ));
        } else if b_serial != n_serial {
            problems.push(format!(
                "serial number {} is not the prepare record's {}",
                n.serial_number, b.serial_number
            ));
        }
        if problems.is_empty() {
            Evidence::new(
                Check::SameHost,
                true,
                if n_serial.is_empty() {
                    format!(
                        "hardware UUID {} is the prepare record's (this host exposes no serial number)",
                        n.hardware_uuid
                    )
                } else {
                    format!(
                        "hardware UUID {} and serial number {} are the prepare record's",
                        n.hardware_uuid, n.serial_number
                    )
                },
            )
        } else {
            Evidence::new(Check::SameHost, false, problems.join("; "))
        }
    }

    fn tenant_volumes_gone(&self) -> Evidence {
        let mut tenant = 0usize;
        let mut recreated = Vec::new();
        let mut present = Vec::new();
        for b in self.before.volumes.iter() {
            if !self.could_hold_tenant_data(b) {
                continue;
            }
            tenant += 1;
            let mut now = self.now.volumes_with_uuid(&b.uuid).peekable();
            if now.peek().is_none() {
                continue;
            }
            match now.find(|n| !self.recreated_data_volume(b, n)) {
                Some(n) => present.push(format!("{} (now role {})", describe(b), n.role)),
                None => recreated.push(describe(b)),
            }
        }
        if !present.is_empty() {
            return Evidence::new(
                Check::TenantVolumesGone,
                false,
                format!(
                    "{} of {tenant} tenant volume(s) of the prepare inventory still present: {}",
                    present.len(),
                    present.join(", ")
                ),
            );
        }
        let mut detail = format!("all {tenant} tenant volume(s) of the prepare inventory are gone");
        if !recreated.is_empty() {
            detail.push_str(&format!(
                " (kept the UUID but re-created after the terminate: {})",
                recreated.join(", ")
            ));
        }
        Evidence::new(Check::TenantVolumesGone, true, detail)
    }

    fn data_volume_new(&self) -> Evidence {
        let terminate = self.ctx.terminate_unix_ms;
        let data: Vec<&Volume> = self
            .now
            .volumes
            .iter()
            .filter(|v| v.role == VolumeRole::Data)
            .collect();
        if data.is_empty() {
            return Evidence::new(Check::DataVolumeNew, false, "no Data volume now".to_owned());
        }
        let mut passed = true;
        let mut parts = Vec::new();
        for n in data {
            let created = n.created_unix_ms;
            let before: Vec<&Volume> = self.before.volumes_with_uuid(&n.uuid).collect();
            let not_recreated = before
                .iter()
                .find(|b| !self.recreated_data_volume(b, n))
                .copied();
            let (ok, why) = match (before.is_empty(), not_recreated, created) {
                (_, _, Some(t)) if t <= terminate => (
                    false,
                    format!("was created at {t} ms, not after the terminate at {terminate} ms"),
                ),
                (true, _, Some(t)) => (
                    true,
                    format!(
                        "is new: its UUID is not in the prepare inventory (created at {t} ms, after the terminate at {terminate} ms)"
                    ),
                ),
                (true, _, None) => (
                    true,
                    "is new: its UUID is not in the prepare inventory (creation time unknown)"
                        .to_owned(),
                ),
                (false, None, _) => (
                    true,
                    format!(
                        "is new: it kept its UUID but was created at {} ms, after the terminate at {terminate} ms",
                        created.unwrap_or_default()
                    ),
                ),
                (false, Some(b), _) => (
                    false,
                    format!(
                        "is not new: its UUID is in the prepare inventory ({}) and it was not re-created after the terminate at {terminate} ms (created {})",
                        describe(b),
                        created.map_or("at an unknown time".to_owned(), |t| format!("at {t} ms")),
                    ),
                ),
            };
            passed &= ok;
            parts.push(format!("Data volume {} ({}) {why}", n.uuid, n.name));
        }
        Evidence::new(Check::DataVolumeNew, passed, parts.join("; "))
    }

    fn only_system_roles_kept(&self) -> Evidence {
        let mut kept = Vec::new();
        let mut wrong = Vec::new();
        for n in self.now.volumes.iter() {
            let mut before = self.before.volumes_with_uuid(&n.uuid).peekable();
            if before.peek().is_none() {
                continue;
            }
            let allowed = |b: &Volume| {
                let system =
                    self.is_mac() && b.role.is_apple_system_role() && n.role.is_apple_system_role();
                system || self.recreated_data_volume(b, n)
            };
            match before.find(|b| !allowed(b)) {
                None => kept.push(format!("{} ({})", n.uuid, n.role)),
                Some(b) => wrong.push(format!(
                    "{} ({}, role {} at prepare, {} now)",
                    n.uuid, n.name, b.role, n.role
                )),
            }
        }
        if wrong.is_empty() {
            let detail = if kept.is_empty() {
                "no volume kept its UUID".to_owned()
            } else {
                format!(
                    "{} volume(s) kept their UUIDs, all with Apple system roles or re-created: {}",
                    kept.len(),
                    kept.join(", ")
                )
            };
            Evidence::new(Check::OnlySystemRolesKept, true, detail)
        } else {
            Evidence::new(
                Check::OnlySystemRolesKept,
                false,
                format!(
                    "volume(s) outside Apple's system roles kept their UUIDs: {}",
                    wrong.join(", ")
                ),
            )
        }
    }

    fn system_sealed(&self) -> Evidence {
        let system: Vec<&Volume> = self
            .now
            .volumes
            .iter()
            .filter(|v| v.role == VolumeRole::System)
            .collect();
        if system.is_empty() {
            return Evidence::new(
                Check::SystemSealed,
                false,
                "no System volume now".to_owned(),
            );
        }
        let not_sealed: Vec<String> = system
            .iter()
            .filter(|v| v.sealed != Some(true))
            .map(|v| {
                let state = match v.sealed {
                    Some(_) => "not sealed",
                    None => "seal unknown",
                };
                format!("{} ({}): {state}", v.uuid, v.name)
            })
            .collect();
        if not_sealed.is_empty() {
            let names: Vec<String> = system
                .iter()
                .map(|v| format!("{} ({})", v.uuid, v.name))
                .collect();
            Evidence::new(
                Check::SystemSealed,
                true,
                format!("System volume sealed: {}", names.join(", ")),
            )
        } else {
            Evidence::new(
                Check::SystemSealed,
                false,
                format!("System volume not proven sealed: {}", not_sealed.join(", ")),
            )
        }
    }

    fn no_extra_volumes(&self) -> Evidence {
        let extra: Vec<String> = self
            .now
            .volumes
            .iter()
            .filter(|v| !v.role.is_apple_standard_role())
            .map(|v| format!("{} ({}, role {})", v.uuid, v.name, v.role))
            .collect();
        let data = self
            .now
            .volumes
            .iter()
            .filter(|v| v.role == VolumeRole::Data)
            .count();
        let mut problems = Vec::new();
        if !extra.is_empty() {
            problems.push(format!(
                "volume(s) beyond Apple's standard roles: {}",
                extra.join(", ")
            ));
        }
        if data != 1 {
            problems.push(format!("{data} Data volumes, expected exactly one"));
        }
        if problems.is_empty() {
            Evidence::new(
                Check::NoExtraVolumes,
                true,
                format!(
                    "all {} volume(s) have Apple standard roles, with one Data volume",
                    self.now.volumes.len()
                ),
            )
        } else {
            Evidence::new(Check::NoExtraVolumes, false, problems.join("; "))
        }
    }

    fn accounts_allowed(&self) -> Evidence {
        let extra: Vec<&str> = self
            .now
            .accounts
            .iter()
            .filter(|a| !self.ctx.allowed_accounts.contains(a))
            .map(String::as_str)
            .collect();
        if extra.is_empty() {
            Evidence::new(
                Check::AccountsAllowed,
                true,
                format!(
                    "local accounts [{}] are all in the allowed list",
                    self.now.accounts.join(", ")
                ),
            )
        } else {
            Evidence::new(
                Check::AccountsAllowed,
                false,
                format!(
                    "local accounts not in the allowed list: {}",
                    extra.join(", ")
                ),
            )
        }
    }

    fn sip_enabled(&self) -> Evidence {
        let (passed, detail) = match self.now.sip_enabled {
            Some(true) => (true, "System Integrity Protection is enabled"),
            Some(false) => (false, "System Integrity Protection is disabled"),
            None => (false, "System Integrity Protection state is unknown"),
        };
        Evidence::new(Check::SipEnabled, passed, detail.to_owned())
    }

    fn activation_lock_off(&self) -> Evidence {
        let (passed, detail) = match self.now.activation_lock_enabled {
            Some(false) => (true, "Activation Lock is off"),
            Some(true) => (false, "Activation Lock is enabled"),
            None => (false, "Activation Lock state is unknown"),
        };
        Evidence::new(Check::ActivationLockOff, passed, detail.to_owned())
    }

    fn signing_key_after_terminate(&self) -> Evidence {
        let (born, terminate) = (
            self.ctx.signer_not_before_unix_ms,
            self.ctx.terminate_unix_ms,
        );
        let passed = born > terminate;
        let relation = if passed { "after" } else { "not after" };
        Evidence::new(
            Check::SigningKeyAfterTerminate,
            passed,
            format!(
                "the signing certificate's not_before {born} ms is {relation} the terminate at {terminate} ms"
            ),
        )
    }
}

/// `uuid (name, role R)` for detail lines.
fn describe(v: &Volume) -> String {
    format!("{} ({}, role {})", v.uuid, v.name, v.role)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::HostIdentity;

    const TERMINATE: u64 = 1_765_000_000_000;
    const LATER: u64 = TERMINATE + 3_600_000;

    fn host() -> HostIdentity {
        HostIdentity {
            host_id: "h-1".into(),
            hardware_uuid: "4C4C4544-0042-3510-8048-B4C04F4A4E32".into(),
            serial_number: "C02XK0AAJGH5".into(),
        }
    }

    fn vol(uuid: &str, name: &str, role: VolumeRole) -> Volume {
        let mut v = Volume::new(uuid, name, role);
        v.internal = true;
        v.encrypted = true;
        v
    }

    fn system_volumes() -> Vec<Volume> {
        let mut system = vol("SYS-1", "Macintosh HD", VolumeRole::System);
        system.sealed = Some(true);
        vec![
            system,
            vol("PRE-1", "Preboot", VolumeRole::Preboot),
            vol("REC-1", "Recovery", VolumeRole::Recovery),
            vol("UPD-1", "Update", VolumeRole::Update),
            vol("XART-1", "xART", VolumeRole::Xart),
            vol("HW-1", "Hardware", VolumeRole::Hardware),
            vol("ISC-1", "iSCPreboot", VolumeRole::IscPreboot),
        ]
    }

    fn mac_inventory(extra: Vec<Volume>, accounts: &[&str], taken: u64) -> Inventory {
        let mut volumes = system_volumes();
        volumes.extend(extra);
        let mut inv = Inventory::new(
            host(),
            taken,
            volumes,
            accounts.iter().map(|a| (*a).to_owned()).collect(),
        );
        inv.sip_enabled = Some(true);
        inv.filevault_on = Some(false);
        inv.activation_lock_enabled = Some(false);
        inv
    }

    /// The prepare inventory: a tenant's Data volume, VM, an added volume, a tenant account.
    fn before() -> Inventory {
        let mut data = vol("DATA-OLD", "Macintosh HD - Data", VolumeRole::Data);
        data.created_unix_ms = Some(TERMINATE - 86_400_000);
        mac_inventory(
            vec![
                data,
                vol("VM-OLD", "VM", VolumeRole::Vm),
                vol("ADDED", "scratch", VolumeRole::None),
            ],
            &["admin", "tenant"],
            TERMINATE,
        )
    }

    /// The inventory after a good EACS: new Data and VM, system volumes kept.
    fn after() -> Inventory {
        let mut data = vol("DATA-NEW", "Macintosh HD - Data", VolumeRole::Data);
        data.created_unix_ms = Some(LATER);
        mac_inventory(
            vec![data, vol("VM-NEW", "VM", VolumeRole::Vm)],
            &["admin"],
            LATER,
        )
    }

    fn ctx() -> AttestationContext {
        AttestationContext {
            terminate_unix_ms: TERMINATE,
            signer_not_before_unix_ms: LATER,
            allowed_accounts: vec!["admin".into()],
            platform: Platform::Mac,
        }
    }

    /// The one line of `check`, asserting that every other line passed.
    fn only_failure(before: &Inventory, now: &Inventory, ctx: &AttestationContext) -> Evidence {
        let lines = evaluate(before, now, ctx);
        let failed: Vec<_> = lines.iter().filter(|l| !l.passed).collect();
        assert_eq!(failed.len(), 1, "{lines:#?}");
        failed[0].clone()
    }

    fn line(lines: &[Evidence], check: Check) -> &Evidence {
        lines.iter().find(|l| l.check == check).unwrap()
    }

    #[test]
    fn a_good_device_erase_passes_every_mac_check_in_order() {
        let lines = evaluate(&before(), &after(), &ctx());
        let names: Vec<_> = lines.iter().map(|l| l.check.name()).collect();
        assert_eq!(
            names,
            [
                "same_host",
                "tenant_volumes_gone",
                "data_volume_new",
                "only_system_roles_kept",
                "system_sealed",
                "no_extra_volumes",
                "accounts_allowed",
                "sip_enabled",
                "activation_lock_off",
                "signing_key_after_terminate",
            ]
        );
        assert!(all_passed(&lines), "{lines:#?}");
        assert!(failed_checks(&lines).is_empty());
        assert_eq!(
            line(&lines, Check::DataVolumeNew).detail,
            format!(
                "Data volume DATA-NEW (Macintosh HD - Data) is new: its UUID is not in the prepare inventory (created at {LATER} ms, after the terminate at {TERMINATE} ms)"
            )
        );
        assert_eq!(
            line(&lines, Check::OnlySystemRolesKept).detail,
            "7 volume(s) kept their UUIDs, all with Apple system roles or re-created: \
             HW-1 (Hardware), ISC-1 (iSCPreboot), PRE-1 (Preboot), REC-1 (Recovery), \
             SYS-1 (System), UPD-1 (Update), XART-1 (xART)"
        );
        assert_eq!(
            line(&lines, Check::TenantVolumesGone).detail,
            "all 3 tenant volume(s) of the prepare inventory are gone"
        );
    }

    #[test]
    fn no_lines_do_not_pass() {
        assert!(!all_passed(&[]));
    }

    #[test]
    fn same_host_fails_alone_on_another_serial_and_on_unknown_identity() {
        let mut now = after();
        now.host.serial_number = "OTHER".into();
        let l = only_failure(&before(), &now, &ctx());
        assert_eq!(l.check, Check::SameHost);
        assert_eq!(
            l.detail,
            "serial number OTHER is not the prepare record's C02XK0AAJGH5"
        );

        let mut now = after();
        now.host.hardware_uuid = "4c4c4544-0042-3510-8048-b4c04f4a4e33".into();
        let l = only_failure(&before(), &now, &ctx());
        assert_eq!(
            l.detail,
            "hardware UUID 4c4c4544-0042-3510-8048-b4c04f4a4e33 is not the prepare record's 4C4C4544-0042-3510-8048-B4C04F4A4E32"
        );

        // Empty on both sides is not "the same".
        let mut b = before();
        let mut now = after();
        b.host.hardware_uuid.clear();
        now.host.hardware_uuid.clear();
        let l = only_failure(&b, &now, &ctx());
        assert_eq!(l.detail, r#"hardware UUID unknown (prepare "", now "")"#);

        // A serial number blank on both sides: never on a Mac; on Linux the hardware UUID
        // alone then decides.
        let mut b = before();
        let mut now = after();
        b.host.serial_number.clear();
        now.host.serial_number.clear();
        let l = only_failure(&b, &now, &ctx());
        assert_eq!(l.detail, r#"serial number unknown (prepare "", now "")"#);
        let linux = AttestationContext {
            platform: Platform::Linux,
            ..ctx()
        };
        let lines = evaluate(&b, &now, &linux);
        let same = lines.iter().find(|l| l.check == Check::SameHost).unwrap();
        assert!(same.passed, "{same:?}");
        assert!(same.detail.contains("exposes no serial number"), "{same:?}");
        b.host.serial_number = "C02XK0AAJGH5".into();
        let lines = evaluate(&b, &now, &linux);
        assert!(
            !lines
                .iter()
                .find(|l| l.check == Check::SameHost)
                .unwrap()
                .passed
        );

        // Case does not matter for the hardware UUID.
        let mut now = after();
        now.host.hardware_uuid = now.host.hardware_uuid.to_lowercase();
        assert!(all_passed(&evaluate(&before(), &now, &ctx())));
    }

    #[test]
    fn a_surviving_added_volume_fails_tenant_volumes_gone_and_the_role_and_extra_lines() {
        let mut now = after();
        now.volumes.push(vol("ADDED", "scratch", VolumeRole::None));
        let now = now.normalized();
        let lines = evaluate(&before(), &now, &ctx());
        // The survivor also breaks only_system_roles_kept and no_extra_volumes: three lines.
        assert_eq!(
            failed_checks(&lines),
            [
                "tenant_volumes_gone",
                "only_system_roles_kept",
                "no_extra_volumes"
            ]
        );
        assert_eq!(
            line(&lines, Check::TenantVolumesGone).detail,
            "1 of 3 tenant volume(s) of the prepare inventory still present: ADDED (scratch, role none) (now role none)"
        );
    }

    #[test]
    fn a_surviving_vm_volume_fails_tenant_volumes_gone_and_only_system_roles_kept_whatever_the_uuid_case()
     {
        let mut now = after();
        now.volumes.retain(|v| v.uuid != "VM-NEW");
        now.volumes.push(vol("vm-old", "VM", VolumeRole::Vm));
        let now = now.normalized();
        let lines = evaluate(&before(), &now, &ctx());
        assert_eq!(
            failed_checks(&lines),
            ["tenant_volumes_gone", "only_system_roles_kept"]
        );
        // Found although the case of the UUID differs.
        assert_eq!(
            line(&lines, Check::TenantVolumesGone).detail,
            "1 of 3 tenant volume(s) of the prepare inventory still present: VM-OLD (VM, role VM) (now role VM)"
        );
        assert_eq!(
            line(&lines, Check::OnlySystemRolesKept).detail,
            "volume(s) outside Apple's system roles kept their UUIDs: vm-old (VM, role VM at prepare, VM now)"
        );
    }

    #[test]
    fn a_data_volume_that_keeps_its_uuid_passes_only_when_re_created_after_the_terminate() {
        let mut now = after();
        for v in &mut now.volumes {
            if v.role == VolumeRole::Data {
                v.uuid = "DATA-OLD".into();
            }
        }
        let now = now.normalized();
        let lines = evaluate(&before(), &now, &ctx());
        assert!(all_passed(&lines), "{lines:#?}");
        assert_eq!(
            line(&lines, Check::DataVolumeNew).detail,
            format!(
                "Data volume DATA-OLD (Macintosh HD - Data) is new: it kept its UUID but was created at {LATER} ms, after the terminate at {TERMINATE} ms"
            )
        );
        assert_eq!(
            line(&lines, Check::TenantVolumesGone).detail,
            "all 3 tenant volume(s) of the prepare inventory are gone (kept the UUID but re-created after the terminate: DATA-OLD (Macintosh HD - Data, role Data))"
        );

        // Same UUID, creation time unknown: the tenant's volume, untouched.
        let mut kept = now.clone();
        for v in &mut kept.volumes {
            if v.role == VolumeRole::Data {
                v.created_unix_ms = None;
            }
        }
        let lines = evaluate(&before(), &kept, &ctx());
        assert_eq!(
            failed_checks(&lines),
            [
                "tenant_volumes_gone",
                "data_volume_new",
                "only_system_roles_kept"
            ]
        );
        assert_eq!(
            line(&lines, Check::DataVolumeNew).detail,
            format!(
                "Data volume DATA-OLD (Macintosh HD - Data) is not new: its UUID is in the prepare inventory (DATA-OLD (Macintosh HD - Data, role Data)) and it was not re-created after the terminate at {TERMINATE} ms (created at an unknown time)"
            )
        );

        // Same UUID and the same (future-dated) creation time as recorded at prepare: untouched.
        let mut b = before();
        let mut same = now.clone();
        for v in b.volumes.iter_mut().chain(same.volumes.iter_mut()) {
            if v.role == VolumeRole::Data {
                v.created_unix_ms = Some(LATER + 5);
            }
        }
        let lines = evaluate(&b, &same, &ctx());
        assert!(!line(&lines, Check::DataVolumeNew).passed);
        assert!(!line(&lines, Check::TenantVolumesGone).passed);
    }

    #[test]
    fn a_duplicate_uuid_record_cannot_hide_a_surviving_volume() {
        // The re-created Data volume and, under the same UUID, a record that was not re-created.
        let mut now = after();
        for v in &mut now.volumes {
            if v.role == VolumeRole::Data {
                v.uuid = "DATA-OLD".into();
            }
        }
        let mut stale = vol("data-old", "Macintosh HD - Data", VolumeRole::Data);
        stale.created_unix_ms = Some(TERMINATE - 86_400_000);
        now.volumes.push(stale);
        let now = now.normalized();
        let lines = evaluate(&before(), &now, &ctx());
        assert_eq!(
            failed_checks(&lines),
            [
                "tenant_volumes_gone",
                "data_volume_new",
                "only_system_roles_kept",
                "no_extra_volumes"
            ]
        );

        // A prepare inventory listing one UUID twice, once as a tenant volume: still a tenant's.
        let mut b = before();
        b.volumes
            .push(vol("pre-1", "Preboot copy", VolumeRole::None));
        let b = b.normalized();
        let lines = evaluate(&b, &after(), &ctx());
        assert_eq!(
            failed_checks(&lines),
            ["tenant_volumes_gone", "only_system_roles_kept"]
        );
    }

    #[test]
    fn data_volume_new_fails_alone_for_a_new_uuid_created_before_the_terminate() {
        let mut now = after();
        for v in &mut now.volumes {
            if v.role == VolumeRole::Data {
                v.created_unix_ms = Some(TERMINATE);
            }
        }
        let l = only_failure(&before(), &now, &ctx());
        assert_eq!(l.check, Check::DataVolumeNew);
        assert_eq!(
            l.detail,
            format!(
                "Data volume DATA-NEW (Macintosh HD - Data) was created at {TERMINATE} ms, not after the terminate at {TERMINATE} ms"
            )
        );
    }

    #[test]
    fn data_volume_new_with_unknown_creation_time_says_so() {
        let mut now = after();
        for v in &mut now.volumes {
            v.created_unix_ms = None;
        }
        let lines = evaluate(&before(), &now, &ctx());
        assert!(all_passed(&lines));
        assert_eq!(
            line(&lines, Check::DataVolumeNew).detail,
            "Data volume DATA-NEW (Macintosh HD - Data) is new: its UUID is not in the prepare inventory (creation time unknown)"
        );
    }

    #[test]
    fn without_a_data_volume_data_volume_new_and_no_extra_volumes_fail() {
        let mut now = after();
        now.volumes.retain(|v| v.role != VolumeRole::Data);
        let lines = evaluate(&before(), &now, &ctx());
        assert_eq!(
            failed_checks(&lines),
            ["data_volume_new", "no_extra_volumes"]
        );
        assert_eq!(
            line(&lines, Check::DataVolumeNew).detail,
            "no Data volume now"
        );
        assert_eq!(
            line(&lines, Check::NoExtraVolumes).detail,
            "0 Data volumes, expected exactly one"
        );
    }

    #[test]
    fn only_system_roles_kept_fails_alone_when_a_system_role_volume_keeps_its_uuid_under_another_role()
     {
        // At prepare the volume claimed a system role, so it was not counted as a tenant
        // volume; now it has the same UUID and the VM role (a standard role, so no extra
        // volume): only this check sees it.
        let mut b = before();
        b.volumes
            .push(vol("ODD-1", "Update copy", VolumeRole::Update));
        let b = b.normalized();
        let mut now = after();
        now.volumes.retain(|v| v.role != VolumeRole::Vm);
        now.volumes
            .push(vol("ODD-1", "Update copy", VolumeRole::Vm));
        let now = now.normalized();
        let l = only_failure(&b, &now, &ctx());
        assert_eq!(l.check, Check::OnlySystemRolesKept);
        assert_eq!(
            l.detail,
            "volume(s) outside Apple's system roles kept their UUIDs: ODD-1 (Update copy, role Update at prepare, VM now)"
        );

        // A system role at prepare and another system role now is fine.
        let mut now = after();
        now.volumes
            .push(vol("ODD-1", "Update copy", VolumeRole::Hardware));
        assert!(all_passed(&evaluate(&b, &now.normalized(), &ctx())));
    }

    #[test]
    fn system_sealed_fails_alone_for_an_unsealed_or_unknown_system_volume() {
        for (sealed, state) in [(Some(false), "not sealed"), (None, "seal unknown")] {
            let mut now = after();
            for v in &mut now.volumes {
                if v.role == VolumeRole::System {
                    v.sealed = sealed;
                }
            }
            let l = only_failure(&before(), &now, &ctx());
            assert_eq!(l.check, Check::SystemSealed);
            assert_eq!(
                l.detail,
                format!("System volume not proven sealed: SYS-1 (Macintosh HD): {state}")
            );
        }
        let mut now = after();
        now.volumes.retain(|v| v.role != VolumeRole::System);
        let l = only_failure(&before(), &now, &ctx());
        assert_eq!(l.detail, "no System volume now");
    }

    #[test]
    fn no_extra_volumes_fails_alone_for_a_new_volume_without_a_standard_role() {
        let mut now = after();
        now.volumes.push(vol(
            "NEW-EXT",
            "External",
            VolumeRole::Other("Backup".into()),
        ));
        let now = now.normalized();
        let l = only_failure(&before(), &now, &ctx());
        assert_eq!(l.check, Check::NoExtraVolumes);
        assert_eq!(
            l.detail,
            "volume(s) beyond Apple's standard roles: NEW-EXT (External, role Backup)"
        );

        let mut now = after();
        let mut second = vol("DATA-2", "Second Data", VolumeRole::Data);
        second.created_unix_ms = Some(LATER);
        now.volumes.push(second);
        let now = now.normalized();
        let l = only_failure(&before(), &now, &ctx());
        assert_eq!(l.detail, "2 Data volumes, expected exactly one");
    }

    #[test]
    fn accounts_allowed_fails_alone_for_an_extra_account() {
        let mut now = after();
        now.accounts = vec!["admin".into(), "tenant".into()];
        let l = only_failure(&before(), &now, &ctx());
        assert_eq!(l.check, Check::AccountsAllowed);
        assert_eq!(l.detail, "local accounts not in the allowed list: tenant");
        let lines = evaluate(&before(), &after(), &ctx());
        assert_eq!(
            line(&lines, Check::AccountsAllowed).detail,
            "local accounts [admin] are all in the allowed list"
        );
    }

    #[test]
    fn sip_enabled_fails_alone_when_disabled_or_unknown() {
        for (state, detail) in [
            (Some(false), "System Integrity Protection is disabled"),
            (None, "System Integrity Protection state is unknown"),
        ] {
            let mut now = after();
            now.sip_enabled = state;
            let l = only_failure(&before(), &now, &ctx());
            assert_eq!((l.check, l.detail.as_str()), (Check::SipEnabled, detail));
        }
    }

    #[test]
    fn activation_lock_off_fails_alone_when_enabled_or_unknown() {
        for (state, detail) in [
            (Some(true), "Activation Lock is enabled"),
            (None, "Activation Lock state is unknown"),
        ] {
            let mut now = after();
            now.activation_lock_enabled = state;
            let l = only_failure(&before(), &now, &ctx());
            assert_eq!(
                (l.check, l.detail.as_str()),
                (Check::ActivationLockOff, detail)
            );
        }
    }

    #[test]
    fn signing_key_after_terminate_fails_alone_for_a_key_not_younger_than_the_terminate() {
        for born in [TERMINATE, TERMINATE - 1, 0] {
            let mut c = ctx();
            c.signer_not_before_unix_ms = born;
            let l = only_failure(&before(), &after(), &c);
            assert_eq!(l.check, Check::SigningKeyAfterTerminate);
            assert_eq!(
                l.detail,
                format!(
                    "the signing certificate's not_before {born} ms is not after the terminate at {TERMINATE} ms"
                )
            );
        }
    }

    #[test]
    fn linux_emits_no_mac_only_line_and_needs_every_volume_gone() {
        let luks = |uuid: &str| {
            let mut v = vol(uuid, "tenant-disk", VolumeRole::None);
            v.physical_store = Some("/dev/sdb".into());
            v
        };
        let mut c = ctx();
        c.platform = Platform::Linux;
        let b = Inventory::new(host(), TERMINATE, vec![luks("1111")], vec!["root".into()]);
        let now = Inventory::new(host(), LATER, vec![luks("2222")], vec!["root".into()]);
        c.allowed_accounts = vec!["root".into()];
        let lines = evaluate(&b, &now, &c);
        let names: Vec<_> = lines.iter().map(|l| l.check.name()).collect();
        assert_eq!(
            names,
            [
                "same_host",
                "tenant_volumes_gone",
                "only_system_roles_kept",
                "accounts_allowed",
                "signing_key_after_terminate"
            ]
        );
        assert!(all_passed(&lines), "{lines:#?}");
        assert!(
            Check::ALL
                .iter()
                .filter(|c| !c.applies_to(Platform::Linux))
                .all(|c| !names.contains(&c.name()))
        );

        // On Linux even a volume with a system role is a tenant volume: roles mean nothing there.
        let mut odd = luks("1111");
        odd.role = VolumeRole::System;
        let b = Inventory::new(host(), TERMINATE, vec![odd.clone()], vec![]);
        let now = Inventory::new(host(), LATER, vec![odd], vec![]);
        let lines = evaluate(&b, &now, &c);
        assert_eq!(
            failed_checks(&lines),
            ["tenant_volumes_gone", "only_system_roles_kept"]
        );
        assert_eq!(
            line(&lines, Check::TenantVolumesGone).detail,
            "1 of 1 tenant volume(s) of the prepare inventory still present: 1111 (tenant-disk, role System) (now role System)"
        );
    }

    #[test]
    fn check_names_serialise_as_their_stable_names() {
        for check in Check::ALL {
            assert_eq!(
                serde_json::to_value(check).unwrap(),
                serde_json::Value::String(check.name().to_owned())
            );
            assert_eq!(check.to_string(), check.name());
        }
        let e = Evidence::new(Check::SipEnabled, true, "x".into());
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"check":"sip_enabled","passed":true,"detail":"x"}"#
        );
    }
}
