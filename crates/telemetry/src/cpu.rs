//! CPU busy over a window, from raw per-CPU tick counters. Pure code: no OS calls.
//!
//! [`CpuState`] keeps the previous reading; each [`CpuState::update`] with a new reading and
//! the wall-clock window between the two returns a [`CpuSample`] in basis points
//! (10000 = 100 %). The math:
//!
//! - Per CPU, the tick differences of every mode. `busy = user + nice + system + irq + softirq
//!   + steal`; `total = busy + idle + iowait`.
//! - Per CPU, the denominator is `max(Δtotal, window_ticks)` where `window_ticks = window ×
//!   ticks_per_second`. Apple Silicon stops accruing idle ticks on parked cores, so their
//!   `Δtotal` is a few ticks, nearly all busy; flooring the denominator at the wall-clock window
//!   makes such a core read idle instead of 90–100 % busy.
//! - Host busy is `Σ Δbusy / Σ denominator` over the CPUs present in both readings: busy ticks
//!   over the ticks the online CPUs could have run. It is not a mean of per-CPU percentages.
//!   `user_bp` (user + nice), `system_bp` (system + irq + softirq) and `iowait_bp` use the same
//!   denominator, so `user_bp + system_bp` equals `busy_bp` up to rounding and steal.
//! - Per cluster (one per core kind: super, performance, efficiency, in that order), the same
//!   ratio over that cluster's CPUs, when the CPU-number → kind map says which CPUs belong to
//!   it; unlabelled CPUs are in no cluster.
//!
//! Counters: macOS `cpu_ticks` are 32-bit and wrap, so differences use `wrapping_sub` on `u32`.
//! Linux counters are 64-bit: a busy counter that goes backwards means the CPU's accounting was
//! reset, and that CPU is left out of the window (reads 0, not counted online). `idle` and
//! `iowait` are exempt: the kernel documents that `iowait` can decrease, and NO_HZ idle
//! accounting has stepped back on some kernels, so a decrease there counts as 0 ticks.
//!
//! Hot-plug: a CPU counts in a window only when it is in both readings. A CPU that appears has
//! no window yet; one that disappears is simply absent. `core_busy_bp` is indexed by CPU number
//! over the new reading, with 0 for CPUs that did not count.
//!
//! The first reading only primes the state: a since-boot average is never reported.

use std::time::Duration;

pub use crate::counters::{CounterWidth, CpuAccounting, CpuReading, CpuTicks};
use crate::sample::{ClusterBusy, CoreKind, CpuSample};

/// Basis points in 100 %.
pub const FULL_BP: u32 = 10_000;

/// Keeps the previous CPU reading and turns each new one into busy figures over the window.
#[derive(Debug, Clone)]
pub struct CpuState {
    accounting: CpuAccounting,
    kinds: Vec<Option<CoreKind>>,
    previous: Option<CpuReading>,
}

/// Tick differences of one CPU over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Delta {
    busy: u64,
    user: u64,
    system: u64,
    iowait: u64,
    total: u64,
}

/// Sums over a set of CPUs.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    busy: u64,
    user: u64,
    system: u64,
    iowait: u64,
    denominator: u64,
    cpus: u32,
}

impl Totals {
    fn add(&mut self, d: &Delta, denominator: u64) {
        self.busy = self.busy.saturating_add(d.busy);
        self.user = self.user.saturating_add(d.user);
        self.system = self.system.saturating_add(d.system);
        self.iowait = self.iowait.saturating_add(d.iowait);
        self.denominator = self.denominator.saturating_add(denominator);
        self.cpus += 1;
    }
}

impl CpuState {
    /// A state with no reading yet. `kinds` maps CPU numbers to core kinds (may be empty or
    /// shorter than the number of CPUs: missing entries are unlabelled).
    pub fn new(accounting: CpuAccounting, kinds: Vec<Option<CoreKind>>) -> Self {
        Self {
            accounting,
            kinds,
            previous: None,
        }
    }

    /// Whether a reading has been taken, so the next update returns a sample.
    pub fn is_primed(&self) -> bool {
        self.previous.is_some()
    }

    /// Takes a new reading made `window` after the previous one. Returns `None` for the first
    /// reading (which only primes the state), otherwise the busy figures over the window.
    pub fn update(&mut self, reading: CpuReading, window: Duration) -> Option<CpuSample> {
        let previous = self.previous.replace(reading)?;
        let current = self.previous.as_ref()?;
        Some(self.compute(&previous, current, window))
    }

    fn compute(&self, previous: &CpuReading, current: &CpuReading, window: Duration) -> CpuSample {
        let window_ticks = u64::try_from(
            window.as_micros() * u128::from(self.accounting.ticks_per_second) / 1_000_000,
        )
        .unwrap_or(u64::MAX);

        let mut host = Totals::default();
        // One per kind, in the order of `CoreKind::ALL`.
        let mut by_kind = [Totals::default(); CoreKind::ALL.len()];
        let mut core_busy_bp = vec![0u32; current.len()];

        for (cpu, (old, new)) in previous.iter().zip(current).enumerate() {
            let (Some(old), Some(new)) = (old, new) else {
                continue; // hot-plugged in or out: no window for this CPU
            };
            let Some(d) = delta(old, new, self.accounting.width) else {
                tracing::debug!(
                    cpu,
                    "CPU tick counters went backwards; CPU left out of this window"
                );
                continue;
            };
            let denominator = d.total.max(window_ticks);
            core_busy_bp[cpu] = bp(d.busy, denominator);
            host.add(&d, denominator);
            if let Some(kind) = self.kinds.get(cpu).copied().flatten()
                && let Some(i) = CoreKind::ALL.iter().position(|k| *k == kind)
            {
                by_kind[i].add(&d, denominator);
            }
        }

        let clusters = CoreKind::ALL
            .into_iter()
            .zip(by_kind)
            .filter(|(_, t)| t.cpus > 0)
            .map(|(kind, t)| ClusterBusy {
                kind,
                busy_bp: bp(t.busy, t.denominator),
                cpus: t.cpus,
            })
            .collect();

        CpuSample {
            busy_bp: bp(host.busy, host.denominator),
            user_bp: bp(host.user, host.denominator),
            system_bp: bp(host.system, host.denominator),
            iowait_bp: bp(host.iowait, host.denominator),
            core_busy_bp,
            clusters,
            online_cpus: host.cpus,
        }
    }
}

/// The tick differences of one CPU, or `None` when a busy counter went backwards (reset).
fn delta(old: &CpuTicks, new: &CpuTicks, width: CounterWidth) -> Option<Delta> {
    let (user, nice, system, irq, softirq, steal, idle, iowait) = match width {
        CounterWidth::Wrapping32 => {
            // The counters are u32 on this platform; truncation keeps exactly their value.
            let d = |o: u64, n: u64| u64::from((n as u32).wrapping_sub(o as u32));
            (
                d(old.user, new.user),
                d(old.nice, new.nice),
                d(old.system, new.system),
                d(old.irq, new.irq),
                d(old.softirq, new.softirq),
                d(old.steal, new.steal),
                d(old.idle, new.idle),
                d(old.iowait, new.iowait),
            )
        }
        CounterWidth::Monotonic64 => (
            new.user.checked_sub(old.user)?,
            new.nice.checked_sub(old.nice)?,
            new.system.checked_sub(old.system)?,
            new.irq.checked_sub(old.irq)?,
            new.softirq.checked_sub(old.softirq)?,
            new.steal.checked_sub(old.steal)?,
            new.idle.saturating_sub(old.idle),
            new.iowait.saturating_sub(old.iowait),
        ),
    };
    let user = user.saturating_add(nice);
    let system = system.saturating_add(irq).saturating_add(softirq);
    let busy = user.saturating_add(system).saturating_add(steal);
    Some(Delta {
        busy,
        user,
        system,
        iowait,
        total: busy.saturating_add(idle).saturating_add(iowait),
    })
}

/// `numerator / denominator` in basis points, rounded to nearest, clamped to `0..=10000`;
/// 0 when the denominator is 0.
pub fn bp(numerator: u64, denominator: u64) -> u32 {
    if denominator == 0 {
        return 0;
    }
    let value = (u128::from(numerator) * u128::from(FULL_BP) + u128::from(denominator) / 2)
        / u128::from(denominator);
    value.min(u128::from(FULL_BP)) as u32
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC: CpuAccounting = CpuAccounting {
        ticks_per_second: 100,
        width: CounterWidth::Wrapping32,
    };
    const LINUX: CpuAccounting = CpuAccounting {
        ticks_per_second: 100,
        width: CounterWidth::Monotonic64,
    };
    const SECOND: Duration = Duration::from_secs(1);

    fn mac(user: u64, system: u64, idle: u64) -> Option<CpuTicks> {
        Some(CpuTicks {
            user,
            system,
            idle,
            ..CpuTicks::default()
        })
    }

    fn linux(user: u64, system: u64, idle: u64, iowait: u64) -> Option<CpuTicks> {
        Some(CpuTicks {
            user,
            system,
            idle,
            iowait,
            ..CpuTicks::default()
        })
    }

    #[test]
    fn first_reading_only_primes_and_never_reports_since_boot() {
        let mut state = CpuState::new(MAC, vec![]);
        assert!(!state.is_primed());
        assert_eq!(state.update(vec![mac(5000, 3000, 100_000)], SECOND), None);
        assert!(state.is_primed());
        let s = state
            .update(vec![mac(5010, 3000, 100_090)], SECOND)
            .unwrap();
        assert_eq!(
            s.busy_bp, 1000,
            "10 busy ticks of 100, not the since-boot 7 %"
        );
    }

    #[test]
    fn parked_core_reads_idle_not_busy() {
        let mut state = CpuState::new(MAC, vec![]);
        state.update(vec![mac(1000, 500, 9000), mac(2000, 100, 50)], SECOND);
        // Core 0 works 30 of 100 ticks. Core 1 is parked: 1 busy tick, no idle ticks at all,
        // which a raw busy / (busy + idle) ratio would read as 100 %.
        let s = state
            .update(vec![mac(1020, 510, 9070), mac(2001, 100, 50)], SECOND)
            .unwrap();
        assert_eq!(s.core_busy_bp, vec![3000, 100]);
        assert_eq!(s.busy_bp, 1550, "31 busy ticks over 2 × 100");
        assert_eq!(s.online_cpus, 2);
    }

    #[test]
    fn host_busy_is_tick_weighted_not_a_mean_of_core_percentages() {
        let mut state = CpuState::new(LINUX, vec![]);
        state.update(vec![linux(0, 0, 0, 0), linux(0, 0, 0, 0)], SECOND);
        // Core 0 reports 200 busy ticks in a 100-tick window (its denominator is 200); core 1
        // is idle for the whole window.
        let s = state
            .update(vec![linux(200, 0, 0, 0), linux(0, 0, 100, 0)], SECOND)
            .unwrap();
        assert_eq!(s.core_busy_bp, vec![10_000, 0]);
        let mean = s.core_busy_bp.iter().sum::<u32>() / 2;
        assert_eq!(mean, 5000);
        assert_eq!(s.busy_bp, 6667, "200 of 300 ticks");
    }

    #[test]
    fn u32_counters_wrap_around() {
        let mut state = CpuState::new(MAC, vec![]);
        let near_max = u64::from(u32::MAX) - 9;
        state.update(vec![mac(near_max, 0, near_max)], SECOND);
        // user went from 2^32 - 10 to 20 (30 ticks); idle from 2^32 - 10 to 60 (70 ticks).
        let s = state.update(vec![mac(20, 0, 60)], SECOND).unwrap();
        assert_eq!(s.busy_bp, 3000);
        assert_eq!(s.user_bp, 3000);
    }

    #[test]
    fn linux_counter_going_backwards_leaves_that_core_out() {
        let mut state = CpuState::new(LINUX, vec![]);
        state.update(vec![linux(100, 0, 1000, 0), linux(500, 0, 1000, 0)], SECOND);
        let s = state
            .update(vec![linux(150, 0, 1050, 0), linux(10, 0, 1100, 0)], SECOND)
            .unwrap();
        assert_eq!(s.online_cpus, 1);
        assert_eq!(s.core_busy_bp, vec![5000, 0]);
        assert_eq!(s.busy_bp, 5000, "only core 0 counts");
    }

    #[test]
    fn iowait_stepping_back_is_not_a_reset() {
        let mut state = CpuState::new(LINUX, vec![]);
        state.update(vec![linux(100, 0, 1000, 50)], SECOND);
        let s = state.update(vec![linux(140, 0, 1060, 40)], SECOND).unwrap();
        assert_eq!(s.online_cpus, 1);
        assert_eq!((s.busy_bp, s.iowait_bp), (4000, 0));
    }

    #[test]
    fn hot_plugged_cpus_count_only_when_in_both_readings() {
        let mut state = CpuState::new(LINUX, vec![]);
        state.update(vec![linux(0, 0, 0, 0), linux(0, 0, 0, 0)], SECOND);
        // CPU 2 comes online: it has no window yet.
        let s = state
            .update(
                vec![
                    linux(50, 0, 50, 0),
                    linux(0, 0, 100, 0),
                    linux(9999, 0, 0, 0),
                ],
                SECOND,
            )
            .unwrap();
        assert_eq!(s.online_cpus, 2);
        assert_eq!(s.core_busy_bp, vec![5000, 0, 0]);
        assert_eq!(s.busy_bp, 2500);
        // CPU 1 goes offline and CPU 2 now has a window.
        let s = state
            .update(
                vec![linux(100, 0, 100, 0), None, linux(10_099, 0, 0, 0)],
                SECOND,
            )
            .unwrap();
        assert_eq!(s.online_cpus, 2);
        assert_eq!(s.core_busy_bp, vec![5000, 0, 10_000]);
        assert_eq!(s.busy_bp, 7500);
        // The reading shrinks to one CPU.
        let s = state.update(vec![linux(150, 0, 150, 0)], SECOND).unwrap();
        assert_eq!((s.online_cpus, s.core_busy_bp.len()), (1, 1));
    }

    #[test]
    fn shares_split_busy_into_user_system_and_iowait() {
        let mut state = CpuState::new(LINUX, vec![]);
        state.update(vec![Some(CpuTicks::default())], SECOND);
        let s = state
            .update(
                vec![Some(CpuTicks {
                    user: 20,
                    nice: 5,
                    system: 10,
                    irq: 3,
                    softirq: 2,
                    steal: 0,
                    idle: 50,
                    iowait: 10,
                })],
                SECOND,
            )
            .unwrap();
        assert_eq!(
            (s.busy_bp, s.user_bp, s.system_bp, s.iowait_bp),
            (4000, 2500, 1500, 1000)
        );
    }

    #[test]
    fn clusters_are_shares_of_their_own_cpus() {
        let e = Some(CoreKind::Efficiency);
        let p = Some(CoreKind::Performance);
        let mut state = CpuState::new(MAC, vec![e, e, p, p, None]);
        let zero = mac(0, 0, 0);
        state.update(vec![zero; 5], SECOND);
        let s = state
            .update(
                vec![
                    mac(0, 0, 100),
                    mac(10, 0, 90),
                    mac(80, 20, 0),
                    mac(60, 0, 40),
                    mac(100, 0, 0),
                ],
                SECOND,
            )
            .unwrap();
        assert_eq!(
            s.clusters,
            vec![
                ClusterBusy {
                    kind: CoreKind::Performance,
                    busy_bp: 8000,
                    cpus: 2
                },
                ClusterBusy {
                    kind: CoreKind::Efficiency,
                    busy_bp: 500,
                    cpus: 2
                },
            ]
        );
        assert_eq!(s.busy_bp, 5400, "the unlabelled CPU counts for the host");
    }

    #[test]
    fn super_cores_are_a_cluster_of_their_own_reported_first() {
        // The M5 Max's shape: super cores and performance cores, no efficiency level.
        let sup = Some(CoreKind::Super);
        let p = Some(CoreKind::Performance);
        let mut state = CpuState::new(MAC, vec![p, p, sup, sup]);
        state.update(vec![mac(0, 0, 0); 4], SECOND);
        let s = state
            .update(
                vec![
                    mac(10, 0, 90),
                    mac(30, 0, 70),
                    mac(100, 0, 0),
                    mac(50, 0, 50),
                ],
                SECOND,
            )
            .unwrap();
        assert_eq!(
            s.clusters,
            vec![
                ClusterBusy {
                    kind: CoreKind::Super,
                    busy_bp: 7500,
                    cpus: 2
                },
                ClusterBusy {
                    kind: CoreKind::Performance,
                    busy_bp: 2000,
                    cpus: 2
                },
            ]
        );
    }

    #[test]
    fn no_kinds_means_no_clusters() {
        let mut state = CpuState::new(MAC, vec![]);
        state.update(vec![mac(0, 0, 0)], SECOND);
        assert!(
            state
                .update(vec![mac(1, 0, 99)], SECOND)
                .unwrap()
                .clusters
                .is_empty()
        );
    }

    #[test]
    fn an_empty_window_gives_zero_not_a_division_by_zero() {
        let mut state = CpuState::new(MAC, vec![]);
        state.update(vec![mac(1, 1, 1)], Duration::ZERO);
        let s = state.update(vec![mac(1, 1, 1)], Duration::ZERO).unwrap();
        assert_eq!((s.busy_bp, s.core_busy_bp[0], s.online_cpus), (0, 0, 1));
    }

    #[test]
    fn basis_points_round_and_clamp() {
        assert_eq!(bp(1, 3), 3333);
        assert_eq!(bp(2, 3), 6667);
        assert_eq!(bp(5, 0), 0);
        assert_eq!(bp(u64::MAX, 1), FULL_BP);
    }

    fn ticks() -> impl Strategy<Value = CpuTicks> {
        let field = 0u64..(1 << 34);
        (
            field.clone(),
            field.clone(),
            field.clone(),
            field.clone(),
            field.clone(),
            field.clone(),
            field.clone(),
            field,
        )
            .prop_map(
                |(user, nice, system, idle, iowait, irq, softirq, steal)| CpuTicks {
                    user,
                    nice,
                    system,
                    idle,
                    iowait,
                    irq,
                    softirq,
                    steal,
                },
            )
    }

    proptest! {
        #[test]
        fn every_figure_stays_within_zero_and_full(
            old in prop::collection::vec(prop::option::of(ticks()), 0..8),
            new in prop::collection::vec(prop::option::of(ticks()), 0..8),
            window_ms in 0u64..5_000,
            wrapping in any::<bool>(),
        ) {
            let accounting = if wrapping { MAC } else { LINUX };
            let kinds = vec![
                Some(CoreKind::Super),
                Some(CoreKind::Performance),
                Some(CoreKind::Efficiency),
                None,
            ];
            let mut state = CpuState::new(accounting, kinds);
            state.update(old, Duration::ZERO);
            let s = state.update(new.clone(), Duration::from_millis(window_ms)).unwrap();
            prop_assert_eq!(s.core_busy_bp.len(), new.len());
            for v in [s.busy_bp, s.user_bp, s.system_bp, s.iowait_bp] {
                prop_assert!(v <= FULL_BP);
            }
            prop_assert!(s.core_busy_bp.iter().all(|v| *v <= FULL_BP));
            prop_assert!(s.clusters.iter().all(|c| c.busy_bp <= FULL_BP && c.cpus >= 1));
            prop_assert!(s.user_bp + s.system_bp <= s.busy_bp + 2, "shares are parts of busy");
            prop_assert!(s.online_cpus as usize <= new.len());
        }
    }
}
