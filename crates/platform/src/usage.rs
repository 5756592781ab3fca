//! The agent's own process: CPU time, resident memory, start time and open descriptors, for
//! the `process_*` families of its `/metrics` endpoint (the names every Prometheus client
//! library uses).
//!
//! [`parse_proc_self_stat`] and [`parse_btime`] are pure parsers of Linux `/proc/self/stat`
//! and `/proc/stat` (portable, tested here); [`process_usage`] is the thin shim that reads
//! them on Linux, and calls `getrusage` and `proc_pidinfo` on macOS. Nothing here forks or
//! lists other processes.
//!
//! `/proc/self/stat` (proc(5)): `pid (comm) state ppid …`, where `comm` may hold spaces and
//! parentheses, so the fields are counted after its last `)`. Field 14 `utime` and 15 `stime`
//! are in `USER_HZ` ticks, 22 `starttime` in ticks since boot, 24 `rss` in pages. The boot
//! time is the `btime` line of `/proc/stat`, in seconds since the Unix epoch.

use super::{ParseError, PlatformError};

/// The process's own figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessUsage {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: u64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
}

/// The figures of `/proc/self/stat` the usage needs, in the kernel's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfStat {
    /// User time, ticks.
    pub utime_ticks: u64,
    /// System time, ticks.
    pub stime_ticks: u64,
    /// Start, ticks after boot.
    pub start_ticks: u64,
    /// Resident pages.
    pub rss_pages: u64,
}

const PROC_SELF_STAT: &str = "/proc/self/stat";

/// Parses `/proc/self/stat` (see the module docs).
pub fn parse_proc_self_stat(text: &str) -> Result<SelfStat, ParseError> {
    let after_comm = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| ParseError::new(PROC_SELF_STAT, 1, "no `(comm)` field"))?;
    // Field 3 (`state`) is the first after the command name.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |n: usize| -> Result<u64, ParseError> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ParseError::new(PROC_SELF_STAT, 1, format!("no number in field {n}")))
    };
    Ok(SelfStat {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        start_ticks: field(22)?,
        rss_pages: field(24)?,
    })
}

/// The boot time (`btime`, seconds since the Unix epoch) from `/proc/stat`.
pub fn parse_btime(text: &str) -> Result<u64, ParseError> {
    text.lines()
        .enumerate()
        .find_map(|(i, line)| {
            line.strip_prefix("btime ")
                .map(|v| (i + 1, v.trim().parse::<u64>()))
        })
        .ok_or_else(|| ParseError::new("/proc/stat", 0, "no `btime` line"))
        .and_then(|(line, v)| {
            v.map_err(|_| ParseError::new("/proc/stat", line, "`btime` is not a number"))
        })
}

/// The usage from the parsed Linux files, the tick rate and the page size.
pub fn usage_from_proc(
    stat: SelfStat,
    btime: u64,
    user_hz: u32,
    page_size: u64,
    open_fds: u64,
) -> ProcessUsage {
    let hz = f64::from(user_hz.max(1));
    ProcessUsage {
        cpu_seconds: (stat.utime_ticks + stat.stime_ticks) as f64 / hz,
        resident_bytes: stat.rss_pages.saturating_mul(page_size),
        start_time_seconds: btime as f64 + stat.start_ticks as f64 / hz,
        open_fds,
    }
}

/// This process's usage, read from the OS now.
pub fn process_usage() -> Result<ProcessUsage, PlatformError> {
    super::imp::process_usage()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn self_stat_counts_fields_after_the_last_parenthesis() {
        // A command name with a space and a parenthesis in it, as a process may choose.
        let text = "4242 (jex (agent) x) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    150 75 0 0 20 0 6 0 98765 123456789 3072 18446744073709551615 \
                    0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        let s = parse_proc_self_stat(text).unwrap();
        assert_eq!(
            s,
            SelfStat {
                utime_ticks: 150,
                stime_ticks: 75,
                start_ticks: 98765,
                rss_pages: 3072
            }
        );
        let u = usage_from_proc(s, 1_700_000_000, 100, 4096, 9);
        assert_eq!(u.cpu_seconds, 2.25);
        assert_eq!(u.resident_bytes, 3072 * 4096);
        assert_eq!(u.start_time_seconds, 1_700_000_987.65);
        assert_eq!(u.open_fds, 9);
    }

    #[test]
    fn a_short_or_garbled_stat_is_refused() {
        assert!(parse_proc_self_stat("4242 jex-agent S 1").is_err());
        assert!(parse_proc_self_stat("4242 (jex) S 1 2 3").is_err());
    }

    #[test]
    fn btime_is_read_from_its_line() {
        let text = "cpu  1 2 3 4\nintr 5\nbtime 1700000000\nprocesses 77\n";
        assert_eq!(parse_btime(text).unwrap(), 1_700_000_000);
        assert!(parse_btime("cpu 1 2 3\n").is_err());
        assert_eq!(parse_btime("btime soon\n").unwrap_err().line, 1);
    }
}
