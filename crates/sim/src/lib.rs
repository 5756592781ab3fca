//! `jex-sim`: N simulated Apple Silicon hosts in one process, for controller teams and for the
//! relay's tests.
//!
//! Each simulated host **is** the real agent: [`jex_agent::app::start_with`] starts the whole
//! agent (the tonic server with mTLS and the role check, the telemetry hub and its on-disk
//! spool, the erase state machine and its journal, health) on the current tokio runtime, with
//! three parts put in place of the host's own:
//!
//! - the host description ([`chip::HostProfile::host_info`]): an Apple Silicon model, chip,
//!   core counts, memory and macOS version drawn from the seed;
//! - the telemetry source ([`source::SynthSource`]): synthetic tick counters and 16 KiB page
//!   counts, turned into samples by the agent's own arithmetic (`jex_telemetry::cpu`,
//!   `jex_telemetry::memory`), seeded and reproducible;
//! - the erase key destroyers ([`keys::FileKeys`]): a fake key file per target, "destroyed" by
//!   overwriting and removing it; the overwrite, read-back and signed certificate are real.
//!
//! Everything else is the agent's: resume, gaps (`AGENT_DOWN` after a restart, `SAMPLER_ERROR`
//! while failing), `OUT_OF_RANGE` after a lost spool, `Terminate`, `WatchErase` and
//! `GetEraseCertificate`.
//!
//! Modules:
//! - [`rng`]: the tiny seeded generator (splitmix64) every synthetic figure comes from;
//! - [`chip`]: the chip catalogue and each host's profile;
//! - [`source`]: the synthetic telemetry source and its fault switches;
//! - [`keys`]: the fake key backend of the erase;
//! - [`config`]: each agent's configuration file and the relay's host list;
//! - [`fleet`]: the PKI, the hosts, and the faults (restart, stall, fail, lose the spool, kill);
//! - [`control`]: the line protocol of the control socket, its server and its client.

#![forbid(unsafe_code)]

pub mod chip;
pub mod config;
pub mod control;
pub mod fleet;
pub mod keys;
pub mod rng;
pub mod source;

pub use fleet::{Fleet, FleetConfig, SimError, load_ca};

/// The trust domain of the simulated fleet's SPIFFE IDs.
pub const TRUST_DOMAIN: &str = "fleet.example";

/// The host id of the host at `index` (0-based): `sim-0001`, `sim-0002`, …; five digits and
/// more past 9,999.
pub fn host_id(index: u32) -> String {
    format!("sim-{:04}", u64::from(index) + 1)
}

/// The index of a host id made by [`host_id`], or `None` for any other string.
pub fn host_index(host_id: &str) -> Option<u32> {
    let digits = host_id.strip_prefix("sim-")?;
    if digits.len() < 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 4 && digits.starts_with('0') {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    n.checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_are_one_based_four_digits_and_round_trip() {
        assert_eq!(host_id(0), "sim-0001");
        assert_eq!(host_id(41), "sim-0042");
        assert_eq!(host_id(9_998), "sim-9999");
        assert_eq!(host_id(9_999), "sim-10000");
        for i in [0, 1, 41, 999, 9_998, 9_999, 123_456] {
            assert_eq!(host_index(&host_id(i)), Some(i));
        }
        for bad in [
            "sim-0000",
            "sim-1",
            "sim-001",
            "sim-01000",
            "host-0001",
            "sim-00a1",
            "sim-",
            "",
        ] {
            assert_eq!(host_index(bad), None, "{bad}");
        }
    }

    #[test]
    fn host_ids_fit_the_relay_contract() {
        for i in [0, 9_999, u32::MAX - 1] {
            let id = host_id(i);
            assert!((1..=64).contains(&id.len()), "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{id}"
            );
        }
    }
}
