//! Portable parsers and derivations for macOS outputs.
//!
//! The macOS shims (`platform::macos`) only make OS calls and run `ioreg`; everything that
//! interprets what they return is here, compiles everywhere and is tested on Linux against real
//! captured outputs in `crates/platform/tests/fixtures/macos/` (see its README for provenance).
//!
//! What is interpreted here:
//! - sysctl values, read through the [`SysctlRead`] trait (the shim implements it with
//!   `sysctlbyname`; [`SysctlText`] implements it over `sysctl name …` text for tests):
//!   `hw.memsize`, `hw.logicalcpu_max`, `hw.model`, `machdep.cpu.brand_string`,
//!   `kern.osproductversion` (read with this process's system-version compatibility off, so it
//!   is the real version: [`os_product_version`]), `hw.nperflevels` and
//!   `hw.perflevelN.{name,logicalcpu_max}`.
//!   Performance levels are ordered from the fastest core type down (perflevel0 first).
//! - `ioreg -r -d 1 -k cluster-type` text: each CPU node's `cluster-type` (`<"P">`, `<"E">`)
//!   and its number (`logical-cpu-id`, else `cpu-id`, little-endian data or a plain integer).
//! - `ioreg -rd1 -c IOPlatformExpertDevice -a` XML plist: `IOPlatformUUID`,
//!   `IOPlatformSerialNumber`.
//! - `kern.memorystatus_vm_pressure_level`, which returns dispatch levels 1, 2 and 4 (not the
//!   kernel's internal 0–4 levels).
//! - `vm.swapusage`, a 32-byte `struct xsw_usage { u64 total, avail, used; u32 pagesize;
//!   boolean_t encrypted }` in native byte order.
//! - `vm_stat` text, only to check the memory formula against real page counts (the agent
//!   itself never runs `vm_stat`; it calls `host_statistics64`, paced by [`VmStatsPacer`]
//!   because the kernel rate-limits that call).
//!
//! Invariant: a CPU is labelled with a kind only when the `ioreg` cluster types and the sysctl
//! performance levels agree on how many CPUs of each kind there are; otherwise every CPU is left
//! unlabelled. CPU numbering on large parts is interleaved (E = 0–3 and 12–15 on some), so no
//! order is ever assumed. Kinds are super (M5 generation), performance and efficiency; the
//! `ioreg` letter of super clusters is not known from any capture, so super CPUs are labelled
//! only when the counts single that letter out (see [`cpu_kinds`]); host info counts each kind
//! from the levels alone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{CpuReading, CpuTicks, HostInfo, ParseError, VmCounts};
use jex_telemetry::{CoreKind, PressureLevel, SwapSample};

/// The name used in errors for `ioreg` cluster-type output.
pub const IOREG_CLUSTERS: &str = "ioreg -r -d 1 -k cluster-type";
/// The name used in errors for `ioreg` platform-expert output.
pub const IOREG_PLATFORM: &str = "ioreg -rd1 -c IOPlatformExpertDevice -a";
/// The name used in errors for the `vm.swapusage` sysctl.
pub const SWAPUSAGE: &str = "sysctl vm.swapusage";
/// The name used in errors for `vm_stat` output.
pub const VM_STAT: &str = "vm_stat";

/// The size of `struct xsw_usage` returned by `vm.swapusage`.
pub const XSW_USAGE_LEN: usize = 32;

/// The OS version sysctl: the `ProductVersion` of `SystemVersion.plist`, e.g. `15.5` — unless
/// this task has system-version compatibility on (see [`os_product_version`]).
pub const OS_PRODUCT_VERSION: &str = "kern.osproductversion";

/// This task's system-version compatibility flag (1 on, 0 off), readable and writable by any
/// process for itself.
pub const SYSTEM_VERSION_COMPAT: &str = "kern.system_version_compat";

/// Reads sysctl values by name; `None` when the name does not exist or has another type.
pub trait SysctlRead {
    /// An integer value (any width).
    fn int(&self, name: &str) -> Option<i64>;
    /// A string value.
    fn string(&self, name: &str) -> Option<String>;
    /// Sets an integer value (a C `int`); `false` when it cannot be set. The agent sets one
    /// value only, its own [`SYSTEM_VERSION_COMPAT`] flag. Text captures cannot be written.
    fn set_int(&self, name: &str, value: i32) -> bool {
        let _ = (name, value);
        false
    }
}

/// The real OS version, whatever the system-version compatibility of this process.
///
/// Source: xnu `bsd/kern/kern_sysctl.c`, `sysctl_osproductversion`: on macOS it answers
/// `osproductversioncompat` (the `ProductVersion` of `SystemVersionCompat.plist`, e.g. `16.0`
/// on macOS 26, `10.16` on macOS 11) instead of the real version whenever
/// `task_has_system_version_compat_enabled(current_task())` and that string is set. The task
/// flag (`TF_SYS_VERSION_COMPAT`, `osfmk/kern/task.c`) is set by libSystem at start for
/// processes it runs in compatibility mode (`libsyscall/wrappers/_libkernel_init.c`,
/// `__libkernel_init_late`, through this same `kern.system_version_compat` sysctl), e.g. a
/// binary built against an older SDK or run with `SYSTEM_VERSION_COMPAT=1`; it is read and
/// written by `sysctl_system_version_compat` (`CTLFLAG_ANYBODY`: every task, for itself).
/// `sysctl_osproductversion` is the kernel's only reader of the flag.
///
/// So: when the flag is off, `kern.osproductversion` is the real version. When it is on, the
/// flag is turned off for the one read and turned back on, so the rest of the process keeps
/// the compatibility it was started with. If it cannot be turned off, no version is given
/// rather than the compatibility one.
pub fn os_product_version(sysctl: &dyn SysctlRead) -> Option<String> {
    let compat = sysctl.int(SYSTEM_VERSION_COMPAT).unwrap_or(0) != 0;
    if !compat {
        return sysctl.string(OS_PRODUCT_VERSION);
    }
    if !sysctl.set_int(SYSTEM_VERSION_COMPAT, 0) {
        tracing::warn!(
            "system-version compatibility is on and cannot be turned off; the OS version is not reported"
        );
        return None;
    }
    let version = sysctl.string(OS_PRODUCT_VERSION);
    if !sysctl.set_int(SYSTEM_VERSION_COMPAT, 1) {
        tracing::warn!("system-version compatibility could not be turned back on");
    }
    version
}

/// Sysctl values parsed from `sysctl name …` text (`name: value` lines), for tests and
/// diagnostics.
#[derive(Debug, Clone, Default)]
pub struct SysctlText {
    values: BTreeMap<String, String>,
}

impl SysctlText {
    /// Parses `name: value` lines; lines without a colon are ignored.
    pub fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(':')?;
                Some((name.trim().to_string(), value.trim().to_string()))
            })
            .collect();
        Self { values }
    }
}

impl SysctlRead for SysctlText {
    fn int(&self, name: &str) -> Option<i64> {
        self.values.get(name)?.parse().ok()
    }

    fn string(&self, name: &str) -> Option<String> {
        self.values.get(name).filter(|v| !v.is_empty()).cloned()
    }
}

/// One performance level (`hw.perflevelN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerfLevel {
    /// N: 0 is the fastest core type.
    pub index: u32,
    /// `hw.perflevelN.name` (macOS 13 and later), e.g. `Performance`, `Efficiency`, `Super`.
    pub name: Option<String>,
    /// `hw.perflevelN.logicalcpu_max`, else `hw.perflevelN.logicalcpu`.
    pub logical_cpus: u32,
    /// The kind this level maps to, `None` when it cannot be said for certain.
    pub kind: Option<CoreKind>,
}

/// Reads the performance levels. Kinds: a level named `Super`, `Performance` or `Efficiency`
/// is that kind; any other name is left unlabelled; without names (macOS 12) and with exactly
/// two levels, perflevel0 is performance and perflevel1 efficiency (no chip without level
/// names has super cores: the name arrived with macOS 13, the super cores with M5).
pub fn perf_levels(sysctl: &dyn SysctlRead) -> Vec<PerfLevel> {
    let count = match sysctl.int("hw.nperflevels") {
        Some(n) if (1..=16).contains(&n) => n as u32,
        _ => (0..16)
            .take_while(|i| level_logical(sysctl, *i).is_some())
            .count() as u32,
    };
    (0..count)
        .filter_map(|index| {
            let logical_cpus = level_logical(sysctl, index)?;
            let name = sysctl.string(&format!("hw.perflevel{index}.name"));
            let kind = match name.as_deref() {
                Some("Super") => Some(CoreKind::Super),
                Some("Performance") => Some(CoreKind::Performance),
                Some("Efficiency") => Some(CoreKind::Efficiency),
                Some(_) => None,
                None if count == 2 && index == 0 => Some(CoreKind::Performance),
                None if count == 2 && index == 1 => Some(CoreKind::Efficiency),
                None => None,
            };
            Some(PerfLevel {
                index,
                name,
                logical_cpus,
                kind,
            })
        })
        .collect()
}

fn level_logical(sysctl: &dyn SysctlRead, index: u32) -> Option<u32> {
    sysctl
        .int(&format!("hw.perflevel{index}.logicalcpu_max"))
        .or_else(|| sysctl.int(&format!("hw.perflevel{index}.logicalcpu")))
        .and_then(|n| u32::try_from(n).ok())
}

/// One CPU node from `ioreg -r -d 1 -k cluster-type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterCpu {
    /// The CPU number (`logical-cpu-id`, else `cpu-id`).
    pub cpu: u32,
    /// The cluster type letter(s), e.g. `P`, `E`.
    pub cluster_type: String,
}

/// Parses the text output of `ioreg -r -d 1 -k cluster-type` into its CPU nodes. Nodes without
/// a CPU number, or whose `device_type` is not `cpu`, are skipped (cluster nodes carry a
/// `cluster-type` too).
pub fn parse_ioreg_cluster_types(text: &str) -> Result<Vec<ClusterCpu>, ParseError> {
    type Props = BTreeMap<String, (usize, String)>;
    let mut nodes: Vec<Props> = Vec::new();
    let mut current: Option<Props> = None;
    for (n, line) in text.lines().enumerate() {
        let body = line.trim_start_matches([' ', '|', '\t']);
        if body.starts_with("+-o ") {
            nodes.extend(current.replace(Props::new()));
            continue;
        }
        let Some(rest) = body.strip_prefix('"') else {
            continue;
        };
        let Some((key, value)) = rest.split_once("\" = ") else {
            continue;
        };
        // Output filtered without node headers starts a node at the first property, and at
        // every repeated key.
        let node = current.get_or_insert_with(Props::new);
        if node.contains_key(key) {
            nodes.push(std::mem::take(node));
        }
        node.insert(key.to_string(), (n + 1, value.trim().to_string()));
    }
    nodes.extend(current);

    let mut cpus = Vec::new();
    for node in &nodes {
        let Some((type_line, raw_type)) = node.get("cluster-type") else {
            continue;
        };
        if let Some((_, device_type)) = node.get("device_type")
            && first_string(device_type).as_deref() != Some("cpu")
        {
            continue;
        }
        let Some((id_line, raw_id)) = node.get("logical-cpu-id").or_else(|| node.get("cpu-id"))
        else {
            continue;
        };
        let cpu = ioreg_number(raw_id).ok_or_else(|| {
            ParseError::new(IOREG_CLUSTERS, *id_line, format!("bad CPU number {raw_id}"))
        })?;
        let cluster_type = first_string(raw_type).ok_or_else(|| {
            ParseError::new(
                IOREG_CLUSTERS,
                *type_line,
                format!("bad cluster-type {raw_type}"),
            )
        })?;
        cpus.push(ClusterCpu { cpu, cluster_type });
    }
    Ok(cpus)
}

/// The first quoted string of an ioreg data value such as `<"apple,icestorm","ARM,v8">`.
fn first_string(raw: &str) -> Option<String> {
    let inner = raw.strip_prefix("<\"")?;
    let end = inner.find('"')?;
    Some(inner[..end].to_string())
}

/// An ioreg number: a plain decimal integer, or little-endian hex data such as `<04000000>`.
fn ioreg_number(raw: &str) -> Option<u32> {
    if let Some(hex) = raw.strip_prefix('<').and_then(|r| r.strip_suffix('>')) {
        let bytes = hex::decode(hex).ok()?;
        if bytes.is_empty() || bytes.len() > 8 {
            return None;
        }
        let mut le = [0u8; 8];
        le[..bytes.len()].copy_from_slice(&bytes);
        return u32::try_from(u64::from_le_bytes(le)).ok();
    }
    raw.parse().ok()
}

/// The kind of each CPU, by number, from the `ioreg` cluster types checked against the sysctl
/// performance levels. All `None` unless the CPU numbers cover `0..logical_cpus` exactly once
/// and, for each kind, the number of CPUs given that kind equals the logical CPUs of the
/// performance level of that kind.
///
/// Letters: `P` is performance and `E` efficiency, the two letters xnu itself reads from the
/// device tree (`osfmk/arm64/machine_routines.c`, `ml_parse_cpu_topology`; any other letter is
/// its "Standard" type). The letter of M5's super clusters is not in any source or capture we
/// have, so a super CPU is labelled only when that is unambiguous: a `Super` level exists, the
/// CPUs carry exactly one letter other than `P` and `E`, and the `Super` level's CPU count
/// differs from every other level's, so that if the letters meant something else (super
/// clusters tagged `P`, say) the counts would disagree and every CPU would stay unlabelled. Any
/// other letter leaves its CPUs unlabelled, which then fails the count of their level.
pub fn cpu_kinds(
    levels: &[PerfLevel],
    clusters: &[ClusterCpu],
    logical_cpus: u32,
) -> Vec<Option<CoreKind>> {
    let unlabelled = vec![None; logical_cpus as usize];
    let mut kinds = unlabelled.clone();
    let mut seen = vec![false; logical_cpus as usize];
    let super_letter = super_cluster_letter(levels, clusters);
    for c in clusters {
        let Some(slot) = seen.get_mut(c.cpu as usize) else {
            tracing::warn!(
                cpu = c.cpu,
                logical_cpus,
                "a CPU number from ioreg is out of range; leaving every CPU unlabelled"
            );
            return unlabelled;
        };
        if std::mem::replace(slot, true) {
            tracing::warn!(
                cpu = c.cpu,
                "a CPU number appears twice in ioreg; leaving every CPU unlabelled"
            );
            return unlabelled;
        }
        kinds[c.cpu as usize] = match c.cluster_type.as_str() {
            "P" => Some(CoreKind::Performance),
            "E" => Some(CoreKind::Efficiency),
            other if Some(other) == super_letter => Some(CoreKind::Super),
            _ => None,
        };
    }
    if seen.iter().any(|s| !s) {
        if !clusters.is_empty() {
            tracing::warn!(
                found = clusters.len(),
                logical_cpus,
                "ioreg does not list every CPU; leaving every CPU unlabelled"
            );
        }
        return unlabelled;
    }
    for kind in CoreKind::ALL {
        let by_letter = kinds.iter().filter(|k| **k == Some(kind)).count() as u32;
        let by_level = level_cpus(levels, kind);
        if by_letter != by_level {
            tracing::warn!(
                ?kind,
                by_letter,
                by_level,
                "ioreg cluster types and sysctl performance levels disagree; leaving every CPU unlabelled"
            );
            return unlabelled;
        }
    }
    kinds
}

/// The cluster letter of the super CPUs, when it can be told without guessing (see
/// [`cpu_kinds`]): the one letter other than `P` and `E` that the CPUs carry, provided a
/// `Super` level exists and no other level has as many CPUs.
fn super_cluster_letter<'a>(levels: &[PerfLevel], clusters: &'a [ClusterCpu]) -> Option<&'a str> {
    let supers = level_cpus(levels, CoreKind::Super);
    let alike = levels
        .iter()
        .any(|l| l.kind != Some(CoreKind::Super) && l.logical_cpus == supers);
    if supers == 0 || alike {
        return None;
    }
    let mut others = clusters
        .iter()
        .map(|c| c.cluster_type.as_str())
        .filter(|letter| !matches!(*letter, "P" | "E"));
    let letter = others.next()?;
    others.all(|l| l == letter).then_some(letter)
}

/// The logical CPUs of the levels of `kind`.
fn level_cpus(levels: &[PerfLevel], kind: CoreKind) -> u32 {
    levels
        .iter()
        .filter(|l| l.kind == Some(kind))
        .map(|l| l.logical_cpus)
        .sum()
}

/// The platform identity from `ioreg -rd1 -c IOPlatformExpertDevice -a`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlatformIdentity {
    /// `IOPlatformUUID`.
    pub uuid: Option<String>,
    /// `IOPlatformSerialNumber`.
    pub serial: Option<String>,
}

/// Parses the XML plist of `ioreg -rd1 -c IOPlatformExpertDevice -a`: an array of registry
/// entries (or one entry, or a root with `IORegistryEntryChildren`), of which the first holding
/// `IOPlatformUUID` is used.
pub fn parse_platform_expert(plist_xml: &[u8]) -> Result<PlatformIdentity, ParseError> {
    let value = plist::Value::from_reader_xml(plist_xml)
        .map_err(|e| ParseError::new(IOREG_PLATFORM, 0, format!("not an XML plist: {e}")))?;
    let entry = find_entry(&value)
        .ok_or_else(|| ParseError::new(IOREG_PLATFORM, 0, "no entry with IOPlatformUUID"))?;
    let text = |key: &str| {
        entry
            .get(key)
            .and_then(plist::Value::as_string)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    Ok(PlatformIdentity {
        uuid: text("IOPlatformUUID"),
        serial: text("IOPlatformSerialNumber"),
    })
}

fn find_entry(value: &plist::Value) -> Option<&plist::Dictionary> {
    match value {
        plist::Value::Dictionary(d) if d.contains_key("IOPlatformUUID") => Some(d),
        plist::Value::Dictionary(d) => d.get("IORegistryEntryChildren").and_then(find_entry),
        plist::Value::Array(items) => items.iter().find_map(find_entry),
        _ => None,
    }
}

/// Maps `kern.memorystatus_vm_pressure_level` (1 normal, 2 warn, 4 critical) to a level;
/// `None` for any other value.
pub fn pressure_level(raw: i64) -> Option<PressureLevel> {
    match raw {
        1 => Some(PressureLevel::Normal),
        2 => Some(PressureLevel::Warn),
        4 => Some(PressureLevel::Critical),
        _ => None,
    }
}

/// Decodes the `vm.swapusage` value (`struct xsw_usage`, native byte order).
pub fn decode_xsw_usage(bytes: &[u8]) -> Result<SwapSample, ParseError> {
    if bytes.len() != XSW_USAGE_LEN {
        return Err(ParseError::new(
            SWAPUSAGE,
            0,
            format!("{} bytes, {XSW_USAGE_LEN} expected", bytes.len()),
        ));
    }
    let u64_at = |offset: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[offset..offset + 8]);
        u64::from_ne_bytes(b)
    };
    let (total, used) = (u64_at(0), u64_at(16));
    if used > total {
        return Err(ParseError::new(
            SWAPUSAGE,
            0,
            format!("used {used} exceeds total {total}"),
        ));
    }
    Ok(SwapSample {
        total_bytes: total,
        used_bytes: used,
    })
}

/// Parses `vm_stat` output into page counts (`total_bytes` is left 0: `vm_stat` does not print
/// it). `vm_stat` prints `free_count - speculative_count` as "Pages free"; the result holds
/// `free_count` like `host_statistics64` does. Used to check the memory formula against real
/// captures.
pub fn parse_vm_stat(text: &str) -> Result<VmCounts, ParseError> {
    let mut lines = text.lines();
    let header = lines
        .next()
        .ok_or_else(|| ParseError::new(VM_STAT, 1, "empty output"))?;
    let page_size = header
        .split("page size of ")
        .nth(1)
        .and_then(|r| r.split_ascii_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ParseError::new(VM_STAT, 1, "no `page size of N bytes` header"))?;
    let mut v = VmCounts {
        page_size,
        ..VmCounts::default()
    };
    for (n, line) in lines.enumerate() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let slot = match key.trim() {
            "Pages free" => &mut v.free,
            "Pages active" => &mut v.active,
            "Pages inactive" => &mut v.inactive,
            "Pages speculative" => &mut v.speculative,
            "Pages throttled" => &mut v.throttled,
            "Pages wired down" => &mut v.wired,
            "Pages purgeable" => &mut v.purgeable,
            "File-backed pages" => &mut v.external,
            "Anonymous pages" => &mut v.internal,
            "Pages occupied by compressor" => &mut v.compressor,
            _ => continue,
        };
        *slot = value.trim().trim_end_matches('.').parse().map_err(|_| {
            ParseError::new(VM_STAT, n + 2, format!("bad count {:?}", value.trim()))
        })?;
    }
    // vm_stat prints `free_count - speculative_count` as "Pages free"; restore free_count.
    v.free = v.free.saturating_add(v.speculative);
    Ok(v)
}

/// Assembles the host info from sysctl values, the platform identity and the CPU cluster
/// types. `os_version` is the real `kern.osproductversion` ([`os_product_version`]).
pub fn host_info_from(
    sysctl: &dyn SysctlRead,
    identity: PlatformIdentity,
    clusters: &[ClusterCpu],
) -> HostInfo {
    let logical_cpus = sysctl
        .int("hw.logicalcpu_max")
        .or_else(|| sysctl.int("hw.ncpu"))
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0);
    let levels = perf_levels(sysctl);
    let cores_of = |kind| level_cpus(&levels, kind);
    HostInfo {
        hardware_uuid: identity.uuid,
        serial_number: identity.serial,
        model: sysctl.string("hw.model"),
        chip: sysctl.string("machdep.cpu.brand_string"),
        logical_cpus,
        super_cores: cores_of(CoreKind::Super),
        performance_cores: cores_of(CoreKind::Performance),
        efficiency_cores: cores_of(CoreKind::Efficiency),
        memory_bytes: sysctl
            .int("hw.memsize")
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0),
        os_name: "macOS".to_string(),
        os_version: os_product_version(sysctl),
        cpu_kinds: cpu_kinds(&levels, clusters, logical_cpus),
    }
}

// --- Mach and BSD call results, decoded here so the shims keep only the calls ---

/// `CPU_STATE_USER` of `<mach/machine.h>`: index of user ticks in one CPU's load-info record.
pub const CPU_STATE_USER: usize = 0;
/// `CPU_STATE_SYSTEM`: index of system ticks.
pub const CPU_STATE_SYSTEM: usize = 1;
/// `CPU_STATE_IDLE`: index of idle ticks.
pub const CPU_STATE_IDLE: usize = 2;
/// `CPU_STATE_NICE`: index of nice ticks.
pub const CPU_STATE_NICE: usize = 3;
/// `CPU_STATE_MAX`: the number of `integer_t` values per CPU in `PROCESSOR_CPU_LOAD_INFO`.
pub const CPU_STATE_MAX: usize = 4;
/// `sizeof(integer_t)` (and of `natural_t`): the unit of Mach array counts.
pub const MACH_WORD_BYTES: usize = 4;

/// Decodes the `PROCESSOR_CPU_LOAD_INFO` array that `host_processor_info` returns: `values`
/// holds `CPU_STATE_MAX` `integer_t` slots per CPU, each a `natural_t` (u32) tick counter that
/// wraps. Refuses an array too short for `cpu_count` CPUs rather than inventing CPUs; extra
/// values past the last CPU are ignored.
pub fn cpu_ticks_from_load_info(values: &[i32], cpu_count: usize) -> Result<CpuReading, String> {
    let needed = cpu_count
        .checked_mul(CPU_STATE_MAX)
        .ok_or("CPU count overflows")?;
    if values.len() < needed {
        return Err(format!(
            "{} values for {cpu_count} CPUs ({needed} needed)",
            values.len()
        ));
    }
    Ok(values[..needed]
        .chunks_exact(CPU_STATE_MAX)
        .map(|cpu| {
            // The counters are natural_t stored in integer_t slots: reinterpret the bits.
            let tick = |state: usize| u64::from(u32::from_ne_bytes(cpu[state].to_ne_bytes()));
            Some(CpuTicks {
                user: tick(CPU_STATE_USER),
                system: tick(CPU_STATE_SYSTEM),
                idle: tick(CPU_STATE_IDLE),
                nice: tick(CPU_STATE_NICE),
                ..CpuTicks::default()
            })
        })
        .collect())
}

/// The size in bytes of a kernel-allocated array of `count` Mach words, as `vm_deallocate`
/// must be given it (the array `host_processor_info` maps into the task).
pub fn mach_array_bytes(count: usize) -> Option<usize> {
    count.checked_mul(MACH_WORD_BYTES)
}

/// How many Mach words of `host_statistics64(HOST_VM_INFO64)` must be filled for the fields up
/// to `end_offset` bytes into `vm_statistics64` to be valid (the struct grows across macOS
/// releases, and an older kernel fills fewer words).
pub fn mach_words_covering(end_offset: usize) -> usize {
    end_offset.div_ceil(MACH_WORD_BYTES)
}

/// The shortest time between two `host_statistics64(HOST_VM_INFO64)` calls ([`VmStatsPacer`]).
pub const VM_STATS_MIN_SPACING: Duration = Duration::from_millis(900);

/// Paces `host_statistics64(HOST_VM_INFO64)`: a call at most every [`VM_STATS_MIN_SPACING`];
/// a tick in between is given the counts of the last call.
///
/// Why: xnu rate-limits the call for every process that is not a platform binary, the agent
/// included (`osfmk/kern/host.c`: `host_statistics64_from_user` → `rate_limit_host_statistics`,
/// which returns at once for `task_get_platform_binary`). Each flavor has one budget shared by
/// all such processes: a window of `HOST_STATISTICS_TIME_WINDOW` (1 s) opens at the first call
/// after the last window ended, and allows a number of calls drawn at random between
/// `HOST_STATISTICS_MIN_REQUESTS` (2) and `HOST_STATISTICS_MAX_REQUESTS` (10); a call over it
/// gets a copy of the last answer (`get_cached_info`), which is at most one window old, since
/// the first call of a window is always answered and cached (`cache_host_statistics`).
///
/// The `vm.page_*` sysctls are not rate-limited but cannot stand in for the call: the wired
/// count, which the memory formula needs, has a sysctl only in DEVELOPMENT and DEBUG kernels
/// (`vm.page_wire_count`, `bsd/kern/kern_sysctl.c`), there is none for active or inactive
/// pages, and `vm.page_pageable_internal_count` and `…_external_count` leave out the per-CPU
/// local queues that `vm_stats` adds into `internal_page_count` and `external_page_count`
/// (same file as the limit). Separate sysctls would also be read at separate moments.
///
/// So the agent keeps the call, paced. Calls at least 900 ms apart put at most 2 of them in
/// any 1 s window, within the smallest budget the kernel draws, so the agent alone never gets
/// a cached copy, and at the 1 Hz default every tick still calls (a tick that comes a little
/// early is not skipped). At shorter intervals (down to 100 ms) the counts are refreshed at the
/// first tick at least 900 ms after the last call (every 900 ms at 100 ms ticks, every 1.4 s
/// at 700 ms), close to as often as the kernel would answer anyway, and the rest of the shared
/// budget is left to the host's other processes. Another process spending the budget can
/// still make a call return the cached copy: its figures are then at most 1 s old.
#[derive(Debug, Default)]
pub struct VmStatsPacer {
    last: Option<(Instant, VmCounts)>,
}

impl VmStatsPacer {
    /// The counts at `now`: `call()`'s when the last call is at least
    /// [`VM_STATS_MIN_SPACING`] old (or there was none), else the last call's. A failed call
    /// is not kept: the next tick calls again.
    pub fn counts<E>(
        &mut self,
        now: Instant,
        call: impl FnOnce() -> Result<VmCounts, E>,
    ) -> Result<VmCounts, E> {
        if let Some((at, counts)) = self.last
            && now.saturating_duration_since(at) < VM_STATS_MIN_SPACING
        {
            return Ok(counts);
        }
        let counts = call()?;
        self.last = Some((now, counts));
        Ok(counts)
    }
}

/// What to do after a `getfsstat` call into a buffer of `capacity` entries returned `filled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsstatNext {
    /// The table is complete: `filled` entries.
    Done(usize),
    /// The buffer came back exactly full, so a filesystem mounted in between may be missing:
    /// call again with this many entries.
    Retry(usize),
    /// Still full after the last attempt: give up rather than miss a mounted device.
    GiveUp,
}

/// How many times the mount table is read before [`FsstatNext::GiveUp`].
pub const FSSTAT_ATTEMPTS: u32 = 8;

/// The `getfsstat` sizing rule: a buffer that comes back exactly full may have been truncated
/// (`getfsstat` fills at most what fits and says nothing of the rest), so the table is read
/// again with room for more, up to [`FSSTAT_ATTEMPTS`] times. `attempt` counts from 1.
pub fn fsstat_next(filled: usize, capacity: usize, attempt: u32) -> FsstatNext {
    if filled < capacity {
        FsstatNext::Done(filled)
    } else if attempt >= FSSTAT_ATTEMPTS {
        FsstatNext::GiveUp
    } else {
        FsstatNext::Retry(capacity.saturating_mul(2).max(capacity + 8))
    }
}

/// The buffer size for the first `getfsstat` read, from the count a sizing call returned: room
/// for a few filesystems mounted between the two calls.
pub fn fsstat_first_capacity(count: usize) -> usize {
    count.saturating_add(8)
}

/// A C `char` array (`f_mntonname`, `f_mntfromname`) up to its first NUL, as text.
pub fn c_chars_text(chars: &[u8]) -> String {
    let end = chars.iter().position(|c| *c == 0).unwrap_or(chars.len());
    String::from_utf8_lossy(&chars[..end]).into_owned()
}

/// Splits a macOS `dev_t` (major in the top 8 of 32 bits, minor in the low 24).
pub fn split_dev(dev: u64) -> (u64, u64) {
    ((dev >> 24) & 0xff, dev & 0xff_ffff)
}

/// Makes a macOS `dev_t` from major and minor.
pub fn make_dev(major: u64, minor: u64) -> u64 {
    ((major & 0xff) << 24) | (minor & 0xff_ffff)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/macos/",
                $name
            ))
        };
    }

    const P: Option<CoreKind> = Some(CoreKind::Performance);
    const E: Option<CoreKind> = Some(CoreKind::Efficiency);

    #[test]
    fn m1_without_level_names_maps_perflevel0_to_performance() {
        let sysctl = SysctlText::parse(fixture!("sysctl-hw.m1.J313.txt"));
        let levels = perf_levels(&sysctl);
        assert_eq!(levels.len(), 2);
        assert_eq!((levels[0].name.as_deref(), levels[0].kind), (None, P));
        assert_eq!((levels[1].logical_cpus, levels[1].kind), (4, E));
    }

    #[test]
    fn m3_max_level_names_give_twelve_performance_and_four_efficiency() {
        let sysctl = SysctlText::parse(fixture!("sysctl-hw.m3max.J516c.txt"));
        let info = host_info_from(&sysctl, PlatformIdentity::default(), &[]);
        assert_eq!(
            (
                info.super_cores,
                info.performance_cores,
                info.efficiency_cores
            ),
            (0, 12, 4)
        );
        assert_eq!(info.logical_cpus, 16);
        assert_eq!(info.memory_bytes, 137_438_953_472);
        assert_eq!(
            info.cpu_kinds,
            vec![None; 16],
            "no cluster types, no labels"
        );
        assert_eq!(info.os_name, "macOS");
    }

    const S: Option<CoreKind> = Some(CoreKind::Super);

    #[test]
    fn m5_max_levels_give_six_super_and_twelve_performance_cores() {
        let sysctl = SysctlText::parse(fixture!("sysctl-perflevels.m5max.txt"));
        let levels = perf_levels(&sysctl);
        assert_eq!(levels.len(), 2);
        assert_eq!(levels[0].name.as_deref(), Some("Super"));
        assert_eq!((levels[0].logical_cpus, levels[0].kind), (6, S));
        assert_eq!((levels[1].logical_cpus, levels[1].kind), (12, P));
        let info = host_info_from(&sysctl, PlatformIdentity::default(), &[]);
        assert_eq!(
            (
                info.super_cores,
                info.performance_cores,
                info.efficiency_cores
            ),
            (6, 12, 0),
            "super cores are not counted as performance cores"
        );
    }

    /// A model of `ioreg -r -d 1 -k cluster-type` CPU nodes, not a capture: `(letter, count)`
    /// runs numbered from CPU 0 in the order given. No `ioreg` output from an M5 has been
    /// captured, so the letters of its clusters are unknown; `X` and `Y` stand for letters other
    /// than `P` and `E`.
    fn model_clusters(runs: &[(&str, u32)]) -> Vec<ClusterCpu> {
        let mut cpu = 0;
        let mut out = Vec::new();
        for (letter, count) in runs {
            for _ in 0..*count {
                out.push(ClusterCpu {
                    cpu,
                    cluster_type: (*letter).to_string(),
                });
                cpu += 1;
            }
        }
        out
    }

    #[test]
    fn m5_max_super_cpus_are_labelled_when_one_other_letter_has_the_super_count() {
        let levels = perf_levels(&SysctlText::parse(fixture!("sysctl-perflevels.m5max.txt")));
        // Interleaved numbering, as on large parts: nothing depends on the order.
        let clusters = model_clusters(&[("P", 6), ("X", 6), ("P", 6)]);
        let kinds = cpu_kinds(&levels, &clusters, 18);
        let expected: Vec<_> = [vec![P; 6], vec![S; 6], vec![P; 6]].concat();
        assert_eq!(kinds, expected);
    }

    #[test]
    fn m5_max_letters_that_could_mean_something_else_leave_every_cpu_unlabelled() {
        let levels = perf_levels(&SysctlText::parse(fixture!("sysctl-perflevels.m5max.txt")));
        // Super clusters tagged `P` and performance clusters another letter: the `P` count (6)
        // is not the performance level's (12).
        let p_for_super = model_clusters(&[("P", 6), ("X", 12)]);
        assert_eq!(cpu_kinds(&levels, &p_for_super, 18), vec![None; 18]);
        // Two letters besides P and E: which one is super cannot be told.
        let two_letters = model_clusters(&[("X", 3), ("Y", 3), ("P", 12)]);
        assert_eq!(cpu_kinds(&levels, &two_letters, 18), vec![None; 18]);
    }

    #[test]
    fn super_and_performance_levels_of_equal_size_leave_super_cpus_unlabelled() {
        // A model, not a capture: two levels of 6 CPUs each. Were the super clusters tagged
        // `P` and the others `X`, the counts would agree all the same, so `X` is not taken for
        // super and the counts then disagree.
        let levels = perf_levels(&SysctlText::parse(
            "hw.nperflevels: 2\nhw.perflevel0.logicalcpu_max: 6\nhw.perflevel0.name: Super\n\
             hw.perflevel1.logicalcpu_max: 6\nhw.perflevel1.name: Performance\n",
        ));
        assert_eq!((levels[0].kind, levels[1].kind), (S, P));
        let clusters = model_clusters(&[("X", 6), ("P", 6)]);
        assert_eq!(cpu_kinds(&levels, &clusters, 12), vec![None; 12]);
    }

    #[test]
    fn m1_pro_cluster_types_label_each_cpu_by_number() {
        let clusters = parse_ioreg_cluster_types(fixture!("ioreg-cluster-type.m1pro.txt")).unwrap();
        assert_eq!(clusters.len(), 10);
        assert_eq!(
            clusters[1],
            ClusterCpu {
                cpu: 1,
                cluster_type: "E".into()
            }
        );
        let sysctl = SysctlText::parse(fixture!("sysctl-a-excerpt.m1pro.txt"));
        let levels = perf_levels(&sysctl);
        assert_eq!(levels.len(), 2, "no hw.nperflevels in the excerpt: counted");
        let kinds = cpu_kinds(&levels, &clusters, 10);
        assert_eq!(kinds, vec![E, E, P, P, P, P, P, P, P, P]);
    }

    #[test]
    fn cluster_types_that_disagree_with_the_levels_leave_every_cpu_unlabelled() {
        let clusters = parse_ioreg_cluster_types(fixture!("ioreg-cluster-type.m1pro.txt")).unwrap();
        // The M1's levels (4 + 4) do not match the M1 Pro's 8 P + 2 E.
        let m1 = perf_levels(&SysctlText::parse(fixture!("sysctl-hw.m1.J313.txt")));
        assert_eq!(cpu_kinds(&m1, &clusters, 10), vec![None; 10]);
        // A missing CPU, or a wrong count, also leaves them unlabelled.
        let m1_pro = perf_levels(&SysctlText::parse(fixture!("sysctl-a-excerpt.m1pro.txt")));
        assert_eq!(cpu_kinds(&m1_pro, &clusters[..9], 10), vec![None; 10]);
        assert_eq!(cpu_kinds(&m1_pro, &clusters, 12), vec![None; 12]);
        let mut twice = clusters.clone();
        twice[9].cpu = 8;
        assert_eq!(cpu_kinds(&m1_pro, &twice, 10), vec![None; 10]);
    }

    #[test]
    fn cluster_parser_reads_integer_ids_and_skips_non_cpu_nodes() {
        let text = "+-o cluster0  <class IOPlatformDevice>\n    {\n      \"cluster-type\" = <\"P\">\n    }\n\
                    +-o cpu0@0  <class IOPlatformDevice>\n    | {\n    |   \"logical-cpu-id\" = 3\n    |   \"cpu-id\" = <00000000>\n    |   \"cluster-type\" = <\"M\">\n    | }\n\
                    +-o pmgr  <class IOPlatformDevice>\n    {\n      \"device_type\" = <\"pmgr\">\n      \"cpu-id\" = <01000000>\n      \"cluster-type\" = <\"E\">\n    }\n";
        let cpus = parse_ioreg_cluster_types(text).unwrap();
        assert_eq!(
            cpus,
            vec![ClusterCpu {
                cpu: 3,
                cluster_type: "M".into()
            }]
        );
        let bad = "+-o cpu0@0  <class IOPlatformDevice>\n  \"cpu-id\" = <zz>\n  \"cluster-type\" = <\"E\">\n";
        assert_eq!(parse_ioreg_cluster_types(bad).unwrap_err().line, 2);
    }

    #[test]
    fn pressure_levels_from_a_loaded_mac() {
        let sysctl = SysctlText::parse(fixture!("sysctl-memory.loaded-18cpu.txt"));
        let raw = sysctl.int("kern.memorystatus_vm_pressure_level").unwrap();
        assert_eq!(pressure_level(raw), Some(PressureLevel::Warn));
        assert_eq!(pressure_level(1), Some(PressureLevel::Normal));
        assert_eq!(pressure_level(4), Some(PressureLevel::Critical));
        // Internal kernel levels (0, 3) are not dispatch levels.
        assert_eq!(pressure_level(0), None);
        assert_eq!(pressure_level(3), None);
    }

    /// Builds the `xsw_usage` bytes the kernel would return, in the SDK layout.
    fn xsw_usage(total: u64, avail: u64, used: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&total.to_ne_bytes());
        b.extend_from_slice(&avail.to_ne_bytes());
        b.extend_from_slice(&used.to_ne_bytes());
        b.extend_from_slice(&(16384u32).to_ne_bytes());
        b.extend_from_slice(&(1u32).to_ne_bytes());
        b
    }

    #[test]
    fn swapusage_decodes_total_and_used() {
        // The captured `vm.swapusage: total = 13312.00M used = 11625.69M free = 1686.31M`;
        // sysctl(8) prints bytes / 2^20 with two decimals, so the byte values are within
        // 0.005 MiB of these.
        let mib = 1024 * 1024;
        let total = 13_312 * mib;
        let used = 11_625 * mib + 69 * mib / 100;
        let swap = decode_xsw_usage(&xsw_usage(total, total - used, used)).unwrap();
        assert_eq!((swap.total_bytes, swap.used_bytes), (total, used));
        assert!(decode_xsw_usage(&xsw_usage(1, 0, 2)).is_err());
        assert!(decode_xsw_usage(&[0u8; 24]).is_err());
    }

    #[test]
    fn vm_stat_capture_parses_page_counts() {
        let v = parse_vm_stat(fixture!("vm_stat.macos-vm-4k.txt")).unwrap();
        assert_eq!(v.page_size, 4096);
        assert_eq!(
            v.free,
            6_127_229 + 430_715,
            "free_count includes speculative"
        );
        assert_eq!(v.speculative, 430_715);
        assert_eq!(v.wired, 715_958);
        assert_eq!(v.purgeable, 11_820);
        assert_eq!(v.internal, 464_333);
        assert_eq!(v.external, 1_080_348);
        assert_eq!(v.compressor, 0);
        assert!(parse_vm_stat("nonsense\n").is_err());
        assert_eq!(
            parse_vm_stat(
                "Mach Virtual Memory Statistics: (page size of 4096 bytes)\nPages free: x.\n"
            )
            .unwrap_err()
            .line,
            2
        );
    }

    // No real capture of `ioreg -rd1 -c IOPlatformExpertDevice -a` was found (see the fixtures
    // README). This document is built here, with the keys and value types that real text-format
    // dumps of that entry show (UUID and serial are <string>, model is <data>), and with made-up
    // identifiers.
    const PLATFORM_EXPERT_CONSTRUCTED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<array>
	<dict>
		<key>IOBusyInterest</key>
		<string>IOCommand is not serializable</string>
		<key>IOObjectClass</key>
		<string>IOPlatformExpertDevice</string>
		<key>IOPlatformSerialNumber</key>
		<string>TESTSERIAL01</string>
		<key>IOPlatformUUID</key>
		<string>00000000-0000-4000-8000-000000000001</string>
		<key>model</key>
		<data>
		TWFjMTQsNwA=
		</data>
	</dict>
</array>
</plist>
"#;

    #[test]
    fn platform_expert_plist_gives_uuid_and_serial() {
        let id = parse_platform_expert(PLATFORM_EXPERT_CONSTRUCTED.as_bytes()).unwrap();
        assert_eq!(
            id.uuid.as_deref(),
            Some("00000000-0000-4000-8000-000000000001")
        );
        assert_eq!(id.serial.as_deref(), Some("TESTSERIAL01"));
        let err = parse_platform_expert(b"<plist version=\"1.0\"><array/></plist>").unwrap_err();
        assert!(err.message.contains("IOPlatformUUID"), "{err}");
        assert!(parse_platform_expert(b"not xml").is_err());
    }

    #[test]
    fn host_info_combines_all_sources() {
        let mut text = fixture!("sysctl-a-excerpt.m1pro.txt").to_string();
        text.push_str("hw.memsize: 17179869184\nhw.model: MacBookPro18,3\nmachdep.cpu.brand_string: Apple M1 Pro\n");
        let clusters = parse_ioreg_cluster_types(fixture!("ioreg-cluster-type.m1pro.txt")).unwrap();
        let identity = parse_platform_expert(PLATFORM_EXPERT_CONSTRUCTED.as_bytes()).unwrap();
        let info = host_info_from(&SysctlText::parse(&text), identity, &clusters);
        assert_eq!(info.logical_cpus, 10, "from hw.ncpu");
        assert_eq!((info.performance_cores, info.efficiency_cores), (8, 2));
        assert_eq!(info.chip.as_deref(), Some("Apple M1 Pro"));
        assert_eq!(info.model.as_deref(), Some("MacBookPro18,3"));
        assert_eq!(info.serial_number.as_deref(), Some("TESTSERIAL01"));
        assert_eq!(info.cpu_kinds[0], E);
        assert_eq!(info.cpu_kinds[9], P);
        assert_eq!(info.os_version, None, "kern.osproductversion absent");
    }

    /// A model of xnu's two handlers (`sysctl_osproductversion` and
    /// `sysctl_system_version_compat` in `bsd/kern/kern_sysctl.c`), not a capture: the version
    /// sysctl answers the compatibility version while the task's flag is on.
    struct XnuVersionModel {
        real: &'static str,
        compat: &'static str,
        flag: std::cell::Cell<bool>,
        writable: bool,
        writes: std::cell::RefCell<Vec<i32>>,
    }

    impl XnuVersionModel {
        fn new(flag: bool, writable: bool) -> Self {
            Self {
                real: "26.0.1",
                compat: "16.0",
                flag: flag.into(),
                writable,
                writes: Vec::new().into(),
            }
        }
    }

    impl SysctlRead for XnuVersionModel {
        fn int(&self, name: &str) -> Option<i64> {
            (name == SYSTEM_VERSION_COMPAT).then(|| i64::from(self.flag.get()))
        }

        fn string(&self, name: &str) -> Option<String> {
            (name == OS_PRODUCT_VERSION).then(|| {
                if self.flag.get() && !self.compat.is_empty() {
                    self.compat.to_string()
                } else {
                    self.real.to_string()
                }
            })
        }

        fn set_int(&self, name: &str, value: i32) -> bool {
            if name != SYSTEM_VERSION_COMPAT || !self.writable {
                return false;
            }
            self.writes.borrow_mut().push(value);
            self.flag.set(value != 0);
            true
        }
    }

    #[test]
    fn the_os_version_is_the_real_one_whatever_the_compatibility_mode() {
        let plain = XnuVersionModel::new(false, true);
        assert_eq!(os_product_version(&plain).as_deref(), Some("26.0.1"));
        assert!(plain.writes.borrow().is_empty(), "nothing written when off");

        let compat = XnuVersionModel::new(true, true);
        assert_eq!(compat.string(OS_PRODUCT_VERSION).as_deref(), Some("16.0"));
        assert_eq!(os_product_version(&compat).as_deref(), Some("26.0.1"));
        assert_eq!(*compat.writes.borrow(), vec![0, 1]);
        assert!(compat.flag.get(), "the process keeps its compatibility");

        let stuck = XnuVersionModel::new(true, false);
        assert_eq!(
            os_product_version(&stuck),
            None,
            "no version rather than the compatibility one"
        );
    }

    #[test]
    fn a_text_capture_without_the_compat_flag_reads_the_version_as_is() {
        let text = SysctlText::parse("kern.osproductversion: 15.5\n");
        assert_eq!(os_product_version(&text).as_deref(), Some("15.5"));
        let flagged =
            SysctlText::parse("kern.osproductversion: 16.0\nkern.system_version_compat: 1\n");
        assert_eq!(os_product_version(&flagged), None, "text cannot be written");
    }

    #[test]
    fn load_info_decodes_four_wrapping_counters_per_cpu() {
        // Two CPUs: user, system, idle, nice; the second CPU's user counter has its top bit
        // set, as a natural_t past 2^31 reads through an integer_t slot.
        let values = [10, 20, 30, 40, i32::MIN, 2, 3, 4, 99];
        let reading = cpu_ticks_from_load_info(&values, 2).unwrap();
        assert_eq!(reading.len(), 2);
        let first = reading[0].unwrap();
        assert_eq!(
            (first.user, first.system, first.idle, first.nice),
            (10, 20, 30, 40)
        );
        let second = reading[1].unwrap();
        assert_eq!(
            second.user,
            1 << 31,
            "reinterpreted as u32, not sign-extended"
        );
        assert_eq!(
            (second.iowait, second.irq),
            (0, 0),
            "macOS has no such counters"
        );
    }

    #[test]
    fn load_info_too_short_for_the_cpu_count_is_refused() {
        let err = cpu_ticks_from_load_info(&[1, 2, 3, 4, 5, 6, 7], 2).unwrap_err();
        assert!(err.contains("7 values for 2 CPUs"), "{err}");
        assert!(cpu_ticks_from_load_info(&[], 0).unwrap().is_empty());
        assert!(cpu_ticks_from_load_info(&[1], usize::MAX).is_err());
    }

    #[test]
    fn kernel_array_sizes_are_in_mach_words() {
        assert_eq!(
            mach_array_bytes(48),
            Some(192),
            "12 CPUs x 4 states x 4 bytes"
        );
        assert_eq!(mach_array_bytes(usize::MAX), None);
        // A field ending at byte 150 needs 38 words (152 bytes), not 37.
        assert_eq!(mach_words_covering(150), 38);
        assert_eq!(mach_words_covering(152), 38);
    }

    /// A model of xnu's `rate_limit_host_statistics` (`osfmk/kern/host.c`) for one flavor, not
    /// a capture: a window of 1 s opens at the first call after the last one ended and answers
    /// `budget` calls; later calls in it get the cached copy.
    struct KernelRateLimit {
        budget: u32,
        window_start: Option<Duration>,
        calls_in_window: u32,
        limited: u32,
    }

    impl KernelRateLimit {
        fn new(budget: u32) -> Self {
            Self {
                budget,
                window_start: None,
                calls_in_window: 0,
                limited: 0,
            }
        }

        fn call(&mut self, at: Duration) {
            match self.window_start {
                Some(start) if at < start + Duration::from_secs(1) => {
                    self.calls_in_window += 1;
                    if self.calls_in_window > self.budget {
                        self.limited += 1;
                    }
                }
                _ => {
                    self.window_start = Some(at);
                    self.calls_in_window = 1;
                }
            }
        }
    }

    /// Ticks `every` apart, each `jitter` early or late in turn, for a minute: the times of the
    /// pacer's `host_statistics64` calls, and how many the kernel model (at its smallest
    /// budget, 2) answered with a cached copy.
    fn paced(every: Duration, jitter: Duration) -> (Vec<Duration>, u32) {
        let start = Instant::now();
        let mut pacer = VmStatsPacer::default();
        let mut kernel = KernelRateLimit::new(2);
        let mut calls = Vec::new();
        let mut tick = Duration::from_secs(1);
        let mut n = 0u32;
        while tick <= Duration::from_secs(61) {
            let at = if n.is_multiple_of(2) {
                tick - jitter
            } else {
                tick + jitter
            };
            let counts = pacer.counts(start + at, || {
                kernel.call(at);
                calls.push(at);
                Ok::<_, ()>(VmCounts {
                    free: calls.len() as u64,
                    ..VmCounts::default()
                })
            });
            assert_eq!(
                counts.unwrap().free,
                calls.len() as u64,
                "the last call's counts"
            );
            tick += every;
            n += 1;
        }
        (calls, kernel.limited)
    }

    #[test]
    fn host_statistics64_is_called_every_tick_at_1_hz_even_with_jitter() {
        let (calls, limited) = paced(Duration::from_secs(1), Duration::from_millis(40));
        assert_eq!(calls.len(), 61, "no tick skipped");
        assert_eq!(limited, 0);
    }

    #[test]
    fn short_intervals_call_at_most_every_900_ms_and_never_exceed_the_smallest_budget() {
        for ms in [100, 250, 500, 700] {
            let every = Duration::from_millis(ms);
            let jitter = every / 10;
            let (calls, limited) = paced(every, jitter);
            let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
            let (shortest, longest) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
            assert!(*shortest >= VM_STATS_MIN_SPACING, "{ms} ms: {shortest:?}");
            assert!(
                *longest <= VM_STATS_MIN_SPACING + every + 2 * jitter,
                "{ms} ms: {longest:?}, refreshed at the first tick after the spacing"
            );
            assert_eq!(limited, 0, "{ms} ms");
        }
        // Called on every 100 ms tick instead, the agent would exhaust the budget by itself.
        let mut kernel = KernelRateLimit::new(2);
        for n in 0..600 {
            kernel.call(Duration::from_millis(100 * n));
        }
        assert!(kernel.limited > 400, "{}", kernel.limited);
    }

    #[test]
    fn a_failed_host_statistics64_call_is_tried_again_at_the_next_tick() {
        let start = Instant::now();
        let mut pacer = VmStatsPacer::default();
        assert_eq!(
            pacer.counts(start, || Err("KERN_FAILURE")),
            Err("KERN_FAILURE")
        );
        let counts = VmCounts {
            free: 7,
            ..VmCounts::default()
        };
        let at = start + Duration::from_millis(100);
        assert_eq!(pacer.counts(at, || Ok::<_, &str>(counts)), Ok(counts));
        let soon = at + Duration::from_millis(100);
        assert_eq!(
            pacer.counts(soon, || Err("not called")),
            Ok(counts),
            "a success is kept for the spacing"
        );
    }

    #[test]
    fn a_full_getfsstat_buffer_is_read_again_until_it_has_room() {
        assert_eq!(fsstat_first_capacity(10), 18);
        assert_eq!(fsstat_next(10, 18, 1), FsstatNext::Done(10));
        // Exactly full: a filesystem may have been mounted between the calls.
        assert_eq!(fsstat_next(18, 18, 1), FsstatNext::Retry(36));
        assert_eq!(fsstat_next(36, 36, 2), FsstatNext::Retry(72));
        assert_eq!(fsstat_next(5, 5, FSSTAT_ATTEMPTS), FsstatNext::GiveUp);
        assert_eq!(fsstat_next(0, 8, 1), FsstatNext::Done(0));
    }

    #[test]
    fn mount_names_stop_at_the_first_nul() {
        let mut raw = [0u8; 16];
        raw[..11].copy_from_slice(b"/dev/disk3s");
        assert_eq!(c_chars_text(&raw), "/dev/disk3s");
        assert_eq!(c_chars_text(b"/no/nul"), "/no/nul");
    }

    #[test]
    fn dev_numbers_split_and_join_the_macos_way() {
        let dev = make_dev(1, 0x0a_0003);
        assert_eq!(dev, 0x010a_0003);
        assert_eq!(split_dev(dev), (1, 0x0a_0003));
        assert_eq!(split_dev(make_dev(0x1ff, 0x1ff_ffff)), (0xff, 0xff_ffff));
    }
}
