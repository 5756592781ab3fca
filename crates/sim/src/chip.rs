//! The chip catalogue and each simulated host's profile: model identifier, chip, core
//! clusters, memory, macOS version and identifiers, all drawn from the seed and the host index.
//!
//! Core counts are those of the shipping parts (the M5 Max's six Super and twelve Performance
//! cores and no Efficiency level are from a real `hw.perflevel*` capture; see
//! /work/shared/notes/macos-captures.md in the design notes). Model identifiers are those of a
//! machine that carries the chip. CPUs are numbered as macOS numbers them on Apple Silicon:
//! the slowest cluster first (an M1's CPUs 0–3 are its Efficiency cores).

use jex_platform::HostInfo;
use jex_telemetry::CoreKind;

use crate::rng::SplitMix;

/// One Apple Silicon part and a machine that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chip {
    /// `machdep.cpu.brand_string`, e.g. `Apple M2 Pro`.
    pub name: &'static str,
    /// `hw.model`, e.g. `Mac14,12`.
    pub model: &'static str,
    /// Super cores (the M5 generation's fastest level).
    pub super_cores: u32,
    /// Performance cores.
    pub performance_cores: u32,
    /// Efficiency cores.
    pub efficiency_cores: u32,
    /// The memory sizes it ships with, in GiB.
    pub memory_gib: &'static [u64],
    /// The macOS major version it is simulated with.
    pub macos_major: u32,
}

impl Chip {
    /// Logical CPUs (one per core on Apple Silicon).
    pub fn logical_cpus(&self) -> u32 {
        self.super_cores + self.performance_cores + self.efficiency_cores
    }

    /// The kind of each CPU by number: Efficiency first, then Performance, then Super.
    pub fn cpu_kinds(&self) -> Vec<CoreKind> {
        let mut kinds = Vec::with_capacity(self.logical_cpus() as usize);
        kinds.extend(std::iter::repeat_n(
            CoreKind::Efficiency,
            self.efficiency_cores as usize,
        ));
        kinds.extend(std::iter::repeat_n(
            CoreKind::Performance,
            self.performance_cores as usize,
        ));
        kinds.extend(std::iter::repeat_n(
            CoreKind::Super,
            self.super_cores as usize,
        ));
        kinds
    }
}

/// The parts simulated hosts are drawn from.
pub const CATALOGUE: &[Chip] = &[
    Chip {
        name: "Apple M1",
        model: "Macmini9,1",
        super_cores: 0,
        performance_cores: 4,
        efficiency_cores: 4,
        memory_gib: &[8, 16],
        macos_major: 15,
    },
    Chip {
        name: "Apple M2 Pro",
        model: "Mac14,12",
        super_cores: 0,
        performance_cores: 8,
        efficiency_cores: 4,
        memory_gib: &[16, 32],
        macos_major: 15,
    },
    Chip {
        name: "Apple M3 Max",
        model: "Mac15,9",
        super_cores: 0,
        performance_cores: 12,
        efficiency_cores: 4,
        memory_gib: &[48, 64, 128],
        macos_major: 15,
    },
    Chip {
        name: "Apple M4 Pro",
        model: "Mac16,11",
        super_cores: 0,
        performance_cores: 10,
        efficiency_cores: 4,
        memory_gib: &[24, 48, 64],
        macos_major: 15,
    },
    Chip {
        name: "Apple M5",
        model: "Mac17,2",
        super_cores: 4,
        performance_cores: 0,
        efficiency_cores: 6,
        memory_gib: &[16, 24, 32],
        macos_major: 26,
    },
    Chip {
        name: "Apple M5 Max",
        model: "Mac17,6",
        super_cores: 6,
        performance_cores: 12,
        efficiency_cores: 0,
        memory_gib: &[36, 48, 64, 128],
        macos_major: 26,
    },
];

/// The letters of a modern Apple serial number (no vowels that spell words, no O or I).
const SERIAL_ALPHABET: &[u8] = b"CDFGHJKLMNPQRTVWXY0123456789";

/// One simulated host: who it is and what hardware it pretends to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProfile {
    /// 0-based index in the fleet.
    pub index: u32,
    /// `sim-0001` …
    pub host_id: String,
    /// The part.
    pub chip: Chip,
    /// Physical memory.
    pub memory_bytes: u64,
    /// e.g. `15.4.1`.
    pub os_version: String,
    /// `IOPlatformUUID`-shaped, upper-case.
    pub hardware_uuid: String,
    /// A 10-character serial number.
    pub serial_number: String,
    /// The UUID pinned by the fake erase target's `luks_uuid`.
    pub volume_uuid: String,
}

impl HostProfile {
    /// The profile of host `index` of the fleet of `seed`.
    pub fn new(seed: u64, index: u32) -> Self {
        let mut rng = SplitMix::new(seed, u64::from(index));
        let chip = *rng.pick(CATALOGUE).unwrap_or(&CATALOGUE[0]);
        let gib = *rng.pick(chip.memory_gib).unwrap_or(&16);
        let os_version = match chip.macos_major {
            15 => format!("15.{}.{}", 3 + rng.below(5), rng.below(2)),
            major => format!("{major}.{}", rng.below(3)),
        };
        let hardware_uuid = uuid_text(&mut rng).to_uppercase();
        let serial_number = (0..10)
            .map(|_| char::from(*rng.pick(SERIAL_ALPHABET).unwrap_or(&SERIAL_ALPHABET[0])))
            .collect();
        let volume_uuid = uuid_text(&mut rng);
        Self {
            index,
            host_id: crate::host_id(index),
            chip,
            memory_bytes: gib << 30,
            os_version,
            hardware_uuid,
            serial_number,
            volume_uuid,
        }
    }

    /// The host description the agent reports in `GetHost` and signs into erase certificates.
    pub fn host_info(&self) -> HostInfo {
        HostInfo {
            hardware_uuid: Some(self.hardware_uuid.clone()),
            serial_number: Some(self.serial_number.clone()),
            model: Some(self.chip.model.to_owned()),
            chip: Some(self.chip.name.to_owned()),
            logical_cpus: self.chip.logical_cpus(),
            super_cores: self.chip.super_cores,
            performance_cores: self.chip.performance_cores,
            efficiency_cores: self.chip.efficiency_cores,
            memory_bytes: self.memory_bytes,
            os_name: "macOS".to_owned(),
            os_version: Some(self.os_version.clone()),
            cpu_kinds: self.chip.cpu_kinds().into_iter().map(Some).collect(),
        }
    }
}

/// A version-4-shaped UUID, lower-case, from the generator.
fn uuid_text(rng: &mut SplitMix) -> String {
    let (a, b) = (rng.next_u64(), rng.next_u64());
    let a = (a & 0xFFFF_FFFF_FFFF_0FFF) | 0x4000;
    let b = (b & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xFFFF,
        a & 0xFFFF,
        b >> 48,
        b & 0xFFFF_FFFF_FFFF
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_reproducible_and_differ_between_hosts_and_seeds() {
        assert_eq!(HostProfile::new(1, 5), HostProfile::new(1, 5));
        assert_ne!(
            HostProfile::new(1, 5).hardware_uuid,
            HostProfile::new(1, 6).hardware_uuid
        );
        assert_ne!(
            HostProfile::new(1, 5).hardware_uuid,
            HostProfile::new(2, 5).hardware_uuid
        );
    }

    #[test]
    fn profiles_are_apple_shaped() {
        let mut chips = std::collections::BTreeSet::new();
        for i in 0..200 {
            let p = HostProfile::new(42, i);
            let info = p.host_info();
            chips.insert(p.chip.name);
            assert!(
                info.chip
                    .as_deref()
                    .is_some_and(|c| c.starts_with("Apple M"))
            );
            assert!(info.model.as_deref().is_some_and(|m| m.starts_with("Mac")));
            assert_eq!(info.os_name, "macOS");
            assert_eq!(
                info.logical_cpus,
                info.super_cores + info.performance_cores + info.efficiency_cores
            );
            assert_eq!(info.cpu_kinds.len(), info.logical_cpus as usize);
            assert!(info.memory_bytes >= 8 << 30 && info.memory_bytes.is_multiple_of(16 << 10));
            let uuid = info.hardware_uuid.unwrap_or_default();
            assert_eq!(uuid.len(), 36, "{uuid}");
            assert_eq!(uuid, uuid.to_uppercase());
            assert_eq!(p.serial_number.len(), 10);
            assert_eq!(p.volume_uuid.len(), 36);
            let v = info.os_version.unwrap_or_default();
            assert!(v.starts_with("15.") || v.starts_with("26."), "{v}");
        }
        assert!(chips.len() >= 5, "200 hosts draw most parts: {chips:?}");
    }

    #[test]
    fn every_part_has_two_core_kinds_fastest_last_in_cpu_order() {
        for chip in CATALOGUE {
            let kinds = chip.cpu_kinds();
            let distinct: std::collections::BTreeSet<_> =
                kinds.iter().map(|k| format!("{k:?}")).collect();
            assert_eq!(distinct.len(), 2, "{}", chip.name);
            assert_eq!(kinds.len() as u32, chip.logical_cpus());
        }
    }
}
