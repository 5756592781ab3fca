//! Pure parsers of the Linux `/proc` and `/sys` files the agent reads.
//!
//! Every parser takes the file's text and returns a typed value or a [`ParseError`] that names
//! the file and the 1-based line. None of them touches the filesystem, so they are tested on
//! strings. Formats (see proc(5)):
//!
//! - `/proc/stat`: `cpuN user nice system idle iowait irq softirq steal guest guest_nice` in
//!   `USER_HZ` ticks. `guest` and `guest_nice` are already included in `user` and `nice` and are
//!   ignored. Offline CPUs have no line. The aggregate `cpu` line is ignored.
//! - `/proc/meminfo`: `Key:   value kB` lines, values in KiB.
//! - `/proc/swaps`: a header, then `Filename Type Size Used Priority` with sizes in KiB.
//! - `/proc/loadavg`: `1min 5min 15min running/total last_pid`.
//! - `/proc/pressure/memory`: `some avg10=… avg60=… avg300=… total=…` and the same for `full`.
//! - CPU lists (`/sys/devices/system/cpu/present`, `/sys/devices/cpu_core/cpus`): `0-3,8,10-11`.

use super::{CpuReading, CpuTicks, Meminfo, ParseError};
use jex_telemetry::{LoadAverage, Psi, SwapSample};

/// The canonical name of the CPU counters file, used in errors.
pub const PROC_STAT: &str = "/proc/stat";
/// The canonical name of the memory counters file, used in errors.
pub const PROC_MEMINFO: &str = "/proc/meminfo";
/// The canonical name of the swap areas file, used in errors.
pub const PROC_SWAPS: &str = "/proc/swaps";
/// The canonical name of the load averages file, used in errors.
pub const PROC_LOADAVG: &str = "/proc/loadavg";
/// The canonical name of the memory pressure-stall file, used in errors.
pub const PROC_PRESSURE_MEMORY: &str = "/proc/pressure/memory";

/// CPU numbers above this are refused as corrupt input rather than allocated for.
pub const MAX_CPUS: usize = 16_384;

/// Parses `/proc/stat` into per-CPU tick counters indexed by CPU number.
pub fn parse_stat(text: &str) -> Result<CpuReading, ParseError> {
    let mut cpus: CpuReading = Vec::new();
    let mut seen_cpu_lines = false;
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let mut fields = line.split_ascii_whitespace();
        let Some(name) = fields.next() else { continue };
        let Some(number) = name.strip_prefix("cpu") else {
            // The per-CPU lines come first; everything after them (intr, ctxt, ...) is unused.
            if seen_cpu_lines {
                break;
            }
            continue;
        };
        seen_cpu_lines = true;
        if number.is_empty() {
            continue; // the aggregate line
        }
        let index: usize = number
            .parse()
            .map_err(|_| ParseError::new(PROC_STAT, line_no, format!("bad CPU name {name:?}")))?;
        if index >= MAX_CPUS {
            return Err(ParseError::new(
                PROC_STAT,
                line_no,
                format!("CPU number {index} is above the supported maximum {MAX_CPUS}"),
            ));
        }
        let mut values = [0u64; 8];
        let mut count = 0;
        for (slot, field) in values.iter_mut().zip(&mut fields) {
            *slot = field.parse().map_err(|_| {
                ParseError::new(PROC_STAT, line_no, format!("bad tick counter {field:?}"))
            })?;
            count += 1;
        }
        if count < 4 {
            return Err(ParseError::new(
                PROC_STAT,
                line_no,
                format!("{name} has {count} counters, at least 4 expected"),
            ));
        }
        if cpus.len() <= index {
            cpus.resize(index + 1, None);
        }
        cpus[index] = Some(CpuTicks {
            user: values[0],
            nice: values[1],
            system: values[2],
            idle: values[3],
            iowait: values[4],
            irq: values[5],
            softirq: values[6],
            steal: values[7],
        });
    }
    if !seen_cpu_lines {
        return Err(ParseError::new(PROC_STAT, 0, "no cpu lines"));
    }
    Ok(cpus)
}

/// Parses `/proc/meminfo`. `MemTotal` and `MemAvailable` are required; other fields read 0
/// when absent.
pub fn parse_meminfo(text: &str) -> Result<Meminfo, ParseError> {
    let mut m = Meminfo::default();
    let mut have_total = false;
    let mut have_available = false;
    for (n, line) in text.lines().enumerate() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => {
                have_total = true;
                &mut m.mem_total_kib
            }
            "MemFree" => &mut m.mem_free_kib,
            "MemAvailable" => {
                have_available = true;
                &mut m.mem_available_kib
            }
            "Buffers" => &mut m.buffers_kib,
            "Cached" => &mut m.cached_kib,
            "Active" => &mut m.active_kib,
            "Inactive" => &mut m.inactive_kib,
            "Shmem" => &mut m.shmem_kib,
            "SReclaimable" => &mut m.sreclaimable_kib,
            "SwapTotal" => &mut m.swap_total_kib,
            "SwapFree" => &mut m.swap_free_kib,
            _ => continue,
        };
        *slot = parse_kib(rest).ok_or_else(|| {
            ParseError::new(
                PROC_MEMINFO,
                n + 1,
                format!("{key} value {:?} is not `<number> kB`", rest.trim()),
            )
        })?;
    }
    if !have_total {
        return Err(ParseError::new(PROC_MEMINFO, 0, "no MemTotal line"));
    }
    if !have_available {
        return Err(ParseError::new(
            PROC_MEMINFO,
            0,
            "no MemAvailable line (the kernel is older than 3.14, which the agent does not support)",
        ));
    }
    Ok(m)
}

fn parse_kib(rest: &str) -> Option<u64> {
    let mut parts = rest.split_ascii_whitespace();
    let value = parts.next()?.parse().ok()?;
    match parts.next() {
        None | Some("kB") => {}
        Some(_) => return None,
    }
    parts.next().is_none().then_some(value)
}

/// Swap from `/proc/meminfo`: `SwapTotal`, and `SwapTotal - SwapFree` in use.
pub fn swap_from_meminfo(m: &Meminfo) -> SwapSample {
    SwapSample {
        total_bytes: m.swap_total_kib.saturating_mul(1024),
        used_bytes: m
            .swap_total_kib
            .saturating_sub(m.swap_free_kib)
            .saturating_mul(1024),
    }
}

/// Parses `/proc/swaps` into the total size and use of all swap areas.
pub fn parse_swaps(text: &str) -> Result<SwapSample, ParseError> {
    let mut swap = SwapSample::default();
    for (n, line) in text.lines().enumerate() {
        if n == 0 {
            if !line.starts_with("Filename") {
                return Err(ParseError::new(
                    PROC_SWAPS,
                    1,
                    "missing the Filename header",
                ));
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        // File names may contain escaped spaces; the numeric columns are the last three.
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.len() < 5 {
            return Err(ParseError::new(
                PROC_SWAPS,
                n + 1,
                format!("{} columns, 5 expected", fields.len()),
            ));
        }
        let number = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| ParseError::new(PROC_SWAPS, n + 1, format!("bad size {s:?}")))
        };
        let size = number(fields[fields.len() - 3])?;
        let used = number(fields[fields.len() - 2])?;
        swap.total_bytes = swap.total_bytes.saturating_add(size.saturating_mul(1024));
        swap.used_bytes = swap.used_bytes.saturating_add(used.saturating_mul(1024));
    }
    Ok(swap)
}

/// Parses `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Result<LoadAverage, ParseError> {
    let mut fields = text.split_ascii_whitespace();
    let mut next = |what: &str| -> Result<f64, ParseError> {
        let field = fields
            .next()
            .ok_or_else(|| ParseError::new(PROC_LOADAVG, 1, format!("missing the {what} load")))?;
        let value: f64 = field
            .parse()
            .map_err(|_| ParseError::new(PROC_LOADAVG, 1, format!("bad {what} load {field:?}")))?;
        if value.is_finite() && value >= 0.0 {
            Ok(value)
        } else {
            Err(ParseError::new(
                PROC_LOADAVG,
                1,
                format!("bad {what} load {field:?}"),
            ))
        }
    };
    Ok(LoadAverage {
        one: next("1-minute")?,
        five: next("5-minute")?,
        fifteen: next("15-minute")?,
    })
}

/// Parses a pressure-stall file (`/proc/pressure/memory`): the 10 s averages of the `some` and
/// `full` lines. `some` is required; `full` reads 0 when absent.
pub fn parse_psi(text: &str) -> Result<Psi, ParseError> {
    let mut some = None;
    let mut full = None;
    for (n, line) in text.lines().enumerate() {
        let mut fields = line.split_ascii_whitespace();
        let slot = match fields.next() {
            Some("some") => &mut some,
            Some("full") => &mut full,
            _ => continue,
        };
        let avg10 = fields
            .find_map(|f| f.strip_prefix("avg10="))
            .ok_or_else(|| ParseError::new(PROC_PRESSURE_MEMORY, n + 1, "no avg10= field"))?;
        let value: f64 = avg10.parse().map_err(|_| {
            ParseError::new(PROC_PRESSURE_MEMORY, n + 1, format!("bad avg10 {avg10:?}"))
        })?;
        if !(value.is_finite() && (0.0..=100.0).contains(&value)) {
            return Err(ParseError::new(
                PROC_PRESSURE_MEMORY,
                n + 1,
                format!("avg10 {avg10:?} is outside 0..=100"),
            ));
        }
        *slot = Some(value);
    }
    let some_avg10 =
        some.ok_or_else(|| ParseError::new(PROC_PRESSURE_MEMORY, 0, "no `some` line"))?;
    Ok(Psi {
        some_avg10,
        full_avg10: full.unwrap_or(0.0),
    })
}

/// Parses a kernel CPU list such as `0-3,8,10-11` into CPU numbers, in order. `file` names the
/// file in errors.
pub fn parse_cpu_list(text: &str, file: &str) -> Result<Vec<u32>, ParseError> {
    let mut cpus = Vec::new();
    let text = text.trim();
    if text.is_empty() {
        return Ok(cpus);
    }
    for part in text.split(',') {
        let bad = || ParseError::new(file, 1, format!("bad CPU list entry {part:?}"));
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (
                a.parse::<u32>().map_err(|_| bad())?,
                b.parse::<u32>().map_err(|_| bad())?,
            ),
            None => {
                let a = part.parse::<u32>().map_err(|_| bad())?;
                (a, a)
            }
        };
        if first > last || last as usize >= MAX_CPUS {
            return Err(bad());
        }
        cpus.extend(first..=last);
    }
    Ok(cpus)
}

/// The CPU brand from `/proc/cpuinfo`: the first `model name` (x86), else the first `Hardware`
/// line (some ARM kernels). `None` when neither is present.
pub fn parse_cpuinfo_model(text: &str) -> Option<String> {
    let value_of = |wanted: &str| {
        text.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == wanted && !value.trim().is_empty()).then(|| value.trim().to_string())
        })
    };
    value_of("model name").or_else(|| value_of("Hardware"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    // The first lines of this machine's /proc/stat at the time of writing (2 vCPUs, kernel 6.x),
    // followed by a synthetic `intr` line.
    const STAT: &str = "cpu  23847 0 4813 96586 344 0 41 14 0 0\n\
                        cpu0 11688 0 2246 48805 67 0 4 6 0 0\n\
                        cpu1 12158 0 2566 47780 276 0 36 8 0 0\n\
                        intr 1 2 3\n\
                        ctxt 42\n";

    #[test]
    fn stat_reads_every_cpu_line_and_ignores_the_aggregate() {
        let cpus = parse_stat(STAT).unwrap();
        assert_eq!(cpus.len(), 2);
        assert_eq!(
            cpus[1],
            Some(CpuTicks {
                user: 12158,
                nice: 0,
                system: 2566,
                idle: 47780,
                iowait: 276,
                irq: 0,
                softirq: 36,
                steal: 8,
            })
        );
    }

    #[test]
    fn stat_leaves_offline_cpus_as_gaps() {
        let text = "cpu 1 2 3 4\ncpu0 1 0 1 10\ncpu3 2 0 2 20\n";
        let cpus = parse_stat(text).unwrap();
        assert_eq!(cpus.len(), 4);
        assert!(cpus[0].is_some() && cpus[3].is_some());
        assert_eq!((cpus[1], cpus[2]), (None, None));
    }

    #[test]
    fn stat_accepts_old_kernels_with_four_counters() {
        let cpus = parse_stat("cpu0 1 2 3 4\n").unwrap();
        let t = cpus[0].unwrap();
        assert_eq!((t.user, t.nice, t.system, t.idle, t.steal), (1, 2, 3, 4, 0));
    }

    #[test]
    fn stat_errors_name_the_file_and_line() {
        let err = parse_stat("cpu 1 2 3 4\ncpu0 1 2 x 4\n").unwrap_err();
        assert_eq!((err.file.as_str(), err.line), (PROC_STAT, 2));
        assert!(err.to_string().contains("/proc/stat line 2"), "{err}");
        assert!(parse_stat("cpu0 1 2 3\n").is_err());
        assert!(parse_stat("cpuX 1 2 3 4\n").is_err());
        assert!(parse_stat("cpu99999 1 2 3 4\n").is_err());
        assert!(parse_stat("intr 1\n").is_err());
    }

    // Synthetic values in the kernel's layout (trailing HugePages line has no unit).
    const MEMINFO: &str = "MemTotal:        8131244 kB\n\
                           MemFree:          391240 kB\n\
                           MemAvailable:    6201780 kB\n\
                           Buffers:          209580 kB\n\
                           Cached:          5526020 kB\n\
                           SwapCached:            0 kB\n\
                           Active:          3007388 kB\n\
                           Inactive:        3985676 kB\n\
                           Shmem:              4068 kB\n\
                           SReclaimable:     432120 kB\n\
                           SwapTotal:        1048572 kB\n\
                           SwapFree:          1048000 kB\n\
                           HugePages_Total:       0\n";

    #[test]
    fn meminfo_reads_the_fields_in_kib() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.mem_total_kib, 8_131_244);
        assert_eq!(m.mem_available_kib, 6_201_780);
        assert_eq!(m.mem_free_kib, 391_240);
        assert_eq!(m.cached_kib, 5_526_020);
        assert_eq!(m.sreclaimable_kib, 432_120);
        assert_eq!((m.swap_total_kib, m.swap_free_kib), (1_048_572, 1_048_000));
    }

    #[test]
    fn meminfo_requires_mem_available() {
        let err = parse_meminfo("MemTotal: 10 kB\nMemFree: 5 kB\n").unwrap_err();
        assert!(err.message.contains("MemAvailable"), "{err}");
        assert!(parse_meminfo("MemAvailable: 10 kB\n").is_err());
    }

    #[test]
    fn meminfo_rejects_a_malformed_value_with_its_line() {
        let err =
            parse_meminfo("MemTotal: 10 kB\nMemFree: lots kB\nMemAvailable: 1 kB\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(parse_meminfo("MemTotal: 10 MB\nMemAvailable: 1 kB\n").is_err());
    }

    #[test]
    fn swaps_sums_every_area_in_bytes() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                    /swapfile                               file\t\t1048572\t\t512\t\t-2\n\
                    /dev/sdb2\\040x                          partition\t2048\t\t0\t\t-3\n";
        let swap = parse_swaps(text).unwrap();
        assert_eq!(swap.total_bytes, (1_048_572 + 2048) * 1024);
        assert_eq!(swap.used_bytes, 512 * 1024);
        let none = parse_swaps("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n").unwrap();
        assert_eq!(none, SwapSample::default());
        assert!(parse_swaps("garbage\n").is_err());
        assert_eq!(
            parse_swaps("Filename\n/x file 1 y -2\n").unwrap_err().line,
            2
        );
    }

    #[test]
    fn loadavg_reads_three_averages() {
        let load = parse_loadavg("0.10 0.38 0.25 2/94 11588\n").unwrap();
        assert_eq!((load.one, load.five, load.fifteen), (0.10, 0.38, 0.25));
        assert!(parse_loadavg("0.10 0.38\n").is_err());
        assert!(parse_loadavg("0.10 x 0.25 1/1 1\n").is_err());
        assert!(parse_loadavg("-1 0 0 1/1 1\n").is_err());
    }

    #[test]
    fn psi_reads_the_ten_second_averages() {
        let psi = parse_psi(
            "some avg10=1.25 avg60=0.50 avg300=0.10 total=12345\n\
             full avg10=0.75 avg60=0.00 avg300=0.00 total=100\n",
        )
        .unwrap();
        assert_eq!((psi.some_avg10, psi.full_avg10), (1.25, 0.75));
        let only_some = parse_psi("some avg10=2.00 avg60=0 avg300=0 total=0\n").unwrap();
        assert_eq!(only_some.full_avg10, 0.0);
        assert!(parse_psi("full avg10=1.00\n").is_err());
        assert_eq!(parse_psi("some avg10=abc\n").unwrap_err().line, 1);
        assert!(parse_psi("some avg10=150.0\n").is_err());
    }

    #[test]
    fn cpu_lists_expand_ranges() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n", "x").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("\n", "x").unwrap(), Vec::<u32>::new());
        assert!(parse_cpu_list("3-1", "x").is_err());
        assert!(parse_cpu_list("a", "x").is_err());
    }

    #[test]
    fn cpuinfo_model_prefers_model_name() {
        let x86 = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU\n";
        assert_eq!(
            parse_cpuinfo_model(x86).as_deref(),
            Some("Intel(R) Xeon(R) CPU")
        );
        let arm = "processor\t: 0\nBogoMIPS\t: 48.00\nHardware\t: BCM2835\n";
        assert_eq!(parse_cpuinfo_model(arm).as_deref(), Some("BCM2835"));
        assert_eq!(parse_cpuinfo_model("processor\t: 0\n"), None);
    }
}
