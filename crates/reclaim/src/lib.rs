//! The pure core of reclaiming a host in two halves: what the agent records before the device
//! erase, how that record is signed and checked, and the rules that decide, after the erase,
//! whether the host may be rented again.
//!
//! # Why two halves
//!
//! On an Apple silicon Mac a tenant's data is on the internal SSD: the Data volume of the booted
//! volume group, its snapshots, the VM volume, volumes the tenant made. Every internal volume is
//! encrypted with keys the Secure Enclave holds, and Erase All Content and Settings (EACS)
//! destroys them all. The agent cannot run EACS on its own host and does not survive it; the
//! controller triggers it (MDM `EraseDevice`, or a DFU restore). So one erase operation, with
//! one operation id and one controller nonce, has two halves:
//!
//! 1. **Prepare** (`Terminate`, in the tenant's OS): the agent erases what it can itself, takes
//!    the host's storage [`Inventory`] and returns it as a [`SignedPrepareRecord`]
//!    ([`sign_prepare`]). Its key lived where the tenant had root, so the record is
//!    informative, not proof.
//! 2. The **device erase**, by the controller (not code of this crate).
//! 3. **Attest** (`AttestErase`, in the fresh OS, with a key born after the tenancy): the agent
//!    checks the prepare record ([`verify_prepare`], written as the `prepare_record_verifies`
//!    line by [`prepare_record_evidence`]), takes the inventory now, and compares the two with
//!    [`evaluate`]: one named [`Evidence`] line per check. Only when [`all_passed`] does the
//!    host become reclaimable; otherwise the failure names [`failed_checks`].
//!
//! On Linux the same flow runs with the host's LUKS2 volumes standing in for the internal SSD
//! ([`linux::LinuxInventory`]).
//!
//! # What is here, and what is not
//!
//! - [`inventory`]: the platform-neutral [`Inventory`] and the [`InventorySource`] trait;
//! - [`rules`]: the evidence rules, pure functions (no I/O, no clock);
//! - [`prepare`]: the prepare record, its canonical JSON, signing and verification, built on
//!   `jex-attest`'s [`jex_attest::Signer`] and signer-chain checks with its own signing domain;
//! - [`linux`]: the Linux inventory (cryptsetup and `/etc/passwd`), with an injectable runner;
//! - [`macos`]: the Mac inventory (`diskutil`, `csrutil`, `fdesetup`, `system_profiler`, `dscl`
//!   at their fixed paths on the sealed system volume): portable parsers tested on Linux against
//!   captured Apple silicon outputs, and the same injectable runner;
//! - [`diskutil`]: the parsers of `diskutil … -plist` output, shared with the erase engine's
//!   `apfs-volume` backend.
//!
//! This crate knows no async runtime, gRPC or platform crate: the agent wires it in, and a
//! controller can use it alone to read a prepare record.
//!
//! ```
//! use jex_reclaim::{AttestationContext, HostIdentity, Inventory, Platform, Volume, VolumeRole};
//!
//! let host = HostIdentity {
//!     host_id: "h-1".into(),
//!     hardware_uuid: "4C4C4544-0042-3510-8048-B4C04F4A4E32".into(),
//!     serial_number: "J7XK2Q4M1N".into(),
//! };
//! let luks = |uuid: &str| Volume::new(uuid, "tenant-disk", VolumeRole::None);
//! let before = Inventory::new(host.clone(), 1_000, vec![luks("1111")], vec!["root".into()]);
//! let now = Inventory::new(host, 9_000, vec![luks("2222")], vec!["root".into()]);
//! let lines = jex_reclaim::evaluate(&before, &now, &AttestationContext {
//!     terminate_unix_ms: 1_000,
//!     signer_not_before_unix_ms: 5_000,
//!     allowed_accounts: vec!["root".into()],
//!     platform: Platform::Linux,
//! });
//! assert!(jex_reclaim::all_passed(&lines));
//! ```

#![forbid(unsafe_code)]

pub mod diskutil;
pub mod inventory;
pub mod linux;
pub mod macos;
pub mod prepare;
pub mod rules;
pub mod run;

pub use inventory::{HostIdentity, Inventory, InventoryError, InventorySource, Volume, VolumeRole};
pub use prepare::{
    PREPARE_RECORD_FORMAT, PREPARE_SIGNING_DOMAIN, PrepareRecord, PrepareSignError,
    PrepareVerifyError, SignedPrepareRecord, prepare_record_evidence, sign_prepare, verify_prepare,
};
pub use rules::{
    AttestationContext, Check, Evidence, Platform, all_passed, evaluate, failed_checks,
};
