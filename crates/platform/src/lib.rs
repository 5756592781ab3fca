//! The operating system, behind one trait per capability.
//!
//! Two capabilities live here:
//! - [`HostCounters`]: the raw counters the telemetry sampler reads once per interval (per-CPU
//!   tick counters, memory counters, swap, load averages, memory pressure). A reader is made
//!   once with [`host_counters`] and then called every tick; it never forks, never enumerates
//!   processes and keeps whatever handles it needs between calls.
//! - [`host_info`]: the host's identity and hardware, read once at startup.
//!
//! It also provides the system log sink ([`logsink`]: the unified log on macOS, none elsewhere).
//!
//! Layout:
//! - [`procfs`]: pure parsers of Linux `/proc` and `/sys` files (portable, tested here).
//! - [`darwin`]: pure parsers and derivations of macOS outputs (`ioreg`, `sysctl` values,
//!   `xsw_usage`, `vm_stat`), portable and tested here against captured real outputs in
//!   `crates/platform/tests/fixtures/macos/`, plus the decoding of Mach and `getfsstat`
//!   results (tick arrays, kernel array sizes, mount-table sizing), so the shims keep only calls.
//! - [`linux`]: the Linux reader over `/proc`, `/sys` and `/etc`, with overridable roots so
//!   tests can point it at a directory of their own. It is portable code; only its selection as
//!   the platform implementation depends on the target.
//! - `macos` (macOS only): thin FFI shims (`sysctlbyname`, `host_processor_info`,
//!   `host_statistics64`, `getloadavg`) and the one-time `ioreg` runs. It is compiled, linted
//!   and linked for `aarch64-apple-darwin` by the test command, and runs only on a Mac.
//!
//! Also here, so that no other crate touches the OS directly: [`blockdev`] (direct I/O, device
//! identity and the system-device rails of the erase), [`process`] (tool runs with a deadline),
//! [`limits`] (the open-file limit, raised at start), [`usage`] (the agent's own CPU time,
//! memory and descriptors, for its `process_*` metrics),
//! [`paths`] (each OS's default layout), and [`error_chain`].
//!
//! This is the only crate with `unsafe` (allowed module by module, each block with its SAFETY
//! argument) and with `cfg(target_os)`. It depends only on the telemetry model (for the plain
//! data types it fills), never on the spool, the erase engine, certificates, an async runtime
//! or gRPC; `scripts/check-architecture.sh` enforces that.

pub mod blockdev;

/// The operating system this build is for. Only this crate may write `cfg(target_os)`; code
/// elsewhere that must choose by platform matches on [`OS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    /// Linux.
    Linux,
    /// macOS.
    MacOs,
    /// Anything else (builds, never a supported host).
    Other,
}

/// This build's operating system.
pub const OS: Os = if cfg!(target_os = "linux") {
    Os::Linux
} else if cfg!(target_os = "macos") {
    Os::MacOs
} else {
    Os::Other
};

pub mod darwin;
pub mod limits;
pub mod linux;
pub mod logsink;
pub mod paths;
pub mod process;
pub mod procfs;
pub mod usage;

#[cfg(target_os = "macos")]
#[allow(unsafe_code)] // FFI shims: every block carries its SAFETY argument
mod macos;
#[cfg(target_os = "macos")]
pub use macos::{IOREG, host_info_with_ioreg};

#[cfg(target_os = "linux")]
use linux as imp;
#[cfg(target_os = "macos")]
use macos as imp;
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod unsupported;
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
use unsupported as imp;

use std::io;
use std::path::PathBuf;

use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use jex_telemetry::CoreKind;
pub use jex_telemetry::counters::{
    CounterWidth, Counters, CpuAccounting, CpuReading, CpuTicks, Meminfo, MemoryCounters, VmCounts,
};

/// Reads the host's raw counters; made once, called once per sampling interval.
///
/// Implementations keep handles and buffers between calls and must not fork, exec or enumerate
/// processes.
pub trait HostCounters: Send {
    /// The units of the CPU counters this reader returns.
    fn accounting(&self) -> CpuAccounting;

    /// Reads every counter once.
    fn read(&mut self) -> Result<Counters, PlatformError>;
}

/// The host's identity and hardware, read once at startup.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostInfo {
    /// The hardware UUID: macOS `IOPlatformUUID`; Linux DMI `product_uuid` when readable, else
    /// `/etc/machine-id`.
    pub hardware_uuid: Option<String>,
    /// The hardware serial number (macOS `IOPlatformSerialNumber`, Linux DMI `product_serial`).
    pub serial_number: Option<String>,
    /// The model identifier (macOS `hw.model`, e.g. `Mac14,3`; Linux DMI `product_name`).
    pub model: Option<String>,
    /// The CPU brand (macOS `machdep.cpu.brand_string`, e.g. `Apple M2 Pro`; Linux
    /// `/proc/cpuinfo` `model name`).
    pub chip: Option<String>,
    /// The number of logical CPUs.
    pub logical_cpus: u32,
    /// Logical CPUs of the super kind (Apple Silicon's level named `Super`, M5 generation), 0
    /// where there is none or it is unknown. The three counts are apart: a super core is not
    /// also counted as a performance core.
    pub super_cores: u32,
    /// Logical CPUs of the performance kind, 0 where unknown.
    pub performance_cores: u32,
    /// Logical CPUs of the efficiency kind, 0 where unknown.
    pub efficiency_cores: u32,
    /// Physical memory in bytes.
    pub memory_bytes: u64,
    /// `macOS` or `Linux`.
    pub os_name: String,
    /// The OS version (macOS `kern.osproductversion`, the real version even in a process with
    /// system-version compatibility on; Linux kernel release).
    pub os_version: Option<String>,
    /// The kind of each logical CPU, by CPU number; `None` where it is not known for certain.
    /// Feed this to the sampler so it can report per-cluster busy.
    pub cpu_kinds: Vec<Option<CoreKind>>,
}

/// Makes the counter reader for this OS.
pub fn host_counters() -> Result<Box<dyn HostCounters>, PlatformError> {
    imp::host_counters()
}

/// Reads the host's identity and hardware. Call it once at startup: on macOS it runs `ioreg`
/// (twice: platform identity, then CPU cluster types).
pub fn host_info() -> Result<HostInfo, PlatformError> {
    imp::host_info()
}

/// The unified log, the system log sink of macOS (see [`logsink`]).
#[cfg(target_os = "macos")]
fn system_log_sink<S>() -> Option<Box<dyn Layer<S> + Send + Sync>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    Some(Box::new(tracing_oslog::OsLogger::new(
        logsink::SUBSYSTEM,
        logsink::CATEGORY,
    )))
}

/// No system log sink: the JSON file is the host's log (see [`logsink`]).
#[cfg(not(target_os = "macos"))]
fn system_log_sink<S>() -> Option<Box<dyn Layer<S> + Send + Sync>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    None
}

/// A line of an OS file or tool output that could not be understood.
#[derive(Debug, thiserror::Error)]
#[error("parsing {file} line {line}: {message}")]
pub struct ParseError {
    /// The file or command whose output was parsed, e.g. `/proc/stat`.
    pub file: String,
    /// The 1-based line number (0 when the problem is not tied to a line).
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

impl ParseError {
    /// Makes a parse error.
    pub fn new(file: impl Into<String>, line: usize, message: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            line,
            message: message.into(),
        }
    }
}

/// The OS could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// A file could not be read.
    #[error("reading {path} (check that it exists and is readable by the agent)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file or tool output did not have the expected format.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A tool could not be started.
    #[error("running {program} (check that it exists at this absolute path)")]
    Spawn {
        /// The tool's absolute path.
        program: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A tool ran but failed.
    #[error("{program} failed with {status}: {stderr}")]
    Tool {
        /// The tool's absolute path.
        program: PathBuf,
        /// Its exit status.
        status: String,
        /// The start of its standard error.
        stderr: String,
    },
    /// An OS call failed.
    #[error("calling {call}")]
    Os {
        /// The call, e.g. `sysctlbyname(hw.memsize)`.
        call: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// This OS has no implementation.
    #[error("host counters are not implemented for this operating system (only Linux and macOS)")]
    Unsupported,
}

impl PlatformError {
    /// A short name of the object that could not be read, for a telemetry gap's reason.
    pub fn object(&self) -> String {
        match self {
            PlatformError::Read { path, .. } => path.display().to_string(),
            PlatformError::Parse(e) => e.file.clone(),
            PlatformError::Spawn { program, .. } | PlatformError::Tool { program, .. } => {
                program.display().to_string()
            }
            PlatformError::Os { call, .. } => call.clone(),
            PlatformError::Unsupported => "host counters".to_string(),
        }
    }
}

/// An error and its sources, joined with `: `: how an error is reported, once, where it is
/// handled (logs, failure reasons, the command line).
///
/// It lives in this, the lowest runtime crate, because every crate above reports errors the
/// same way; it touches no OS interface.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
