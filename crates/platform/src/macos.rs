//! The macOS implementation: thin shims over `sysctlbyname`, `host_processor_info`,
//! `host_statistics64` and `getloadavg`, plus the one-time `ioreg` runs for identity and CPU
//! cluster types. Everything these return is interpreted by portable code in
//! [`super::darwin`], which is tested on Linux against captured outputs; this file only makes
//! the calls. It is compiled on macOS only.
//!
//! The one sysctl it writes is this process's own `kern.system_version_compat` flag, turned off
//! for the start-up read of `kern.osproductversion` and back on after it
//! ([`darwin::os_product_version`] says why).
//!
//! Per tick: `host_processor_info(PROCESSOR_CPU_LOAD_INFO)` (per-CPU 32-bit tick counters at
//! 100 Hz; the kernel-allocated array is released with `vm_deallocate` every time),
//! `host_statistics64(HOST_VM_INFO64)` (page counts; the returned count is checked to cover the
//! fields used; at most every 900 ms, because the kernel rate-limits it, see
//! [`darwin::VmStatsPacer`]), `sysctlbyname("kern.memorystatus_vm_pressure_level")`,
//! `sysctlbyname("vm.swapusage")` and `getloadavg`. The host port is taken once
//! (`mach_host_self`) and kept; the page size (`vm_kernel_page_size`, 16 KiB on Apple Silicon)
//! and `hw.memsize` are read once. No fork, exec or process listing happens per tick.

use std::ffi::CString;
use std::io;
use std::mem::offset_of;
use std::path::Path;
use std::ptr;
use std::time::Instant;

use super::darwin::{self, SysctlRead};
use super::{
    CounterWidth, Counters, CpuAccounting, CpuReading, HostCounters, HostInfo, MemoryCounters,
    PlatformError, VmCounts,
};
use jex_telemetry::{LoadAverage, MemoryPressure, SwapSample};

/// The `ioreg` tool, run twice at startup only. [`host_info_with_ioreg`] takes another path.
pub const IOREG: &str = "/usr/sbin/ioreg";

/// `cpu_ticks` advance at 100 Hz (`kern.clockrate: hz = 100`).
const TICKS_PER_SECOND: u32 = 100;

/// How much of a failing tool's standard error goes into the error.
const STDERR_LIMIT: usize = 512;

// Declared here rather than taken from `libc`, where these are deprecated in favour of another
// crate; they are plain libSystem symbols.
unsafe extern "C" {
    /// Returns a send right to the host port.
    fn mach_host_self() -> libc::mach_port_t;
    /// The task's own port (what the `mach_task_self()` macro reads).
    static mach_task_self_: libc::mach_port_t;
    /// The kernel's page size, set by libSystem before `main`.
    static vm_kernel_page_size: libc::vm_size_t;
}

/// Reads sysctl values with `sysctlbyname`.
struct Sysctl;

impl Sysctl {
    /// Reads `name` into `buf`; returns the number of bytes written.
    fn raw(name: &str, buf: &mut [u8]) -> io::Result<usize> {
        let c_name =
            CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut len: libc::size_t = buf.len();
        // SAFETY: `c_name` is NUL-terminated and outlives the call; `buf` is valid for writes of
        // `len` bytes, `len` is exactly its size and is updated by the kernel to the bytes
        // written; no new value is set (null pointer, length 0).
        let rc = unsafe {
            libc::sysctlbyname(
                c_name.as_ptr(),
                buf.as_mut_ptr().cast(),
                &mut len,
                ptr::null_mut(),
                0,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(len)
    }

    /// The size of `name`'s value.
    fn size(name: &str) -> io::Result<usize> {
        let c_name =
            CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut len: libc::size_t = 0;
        // SAFETY: a null old-value pointer asks only for the size, written to `len`, a live
        // local; `c_name` is NUL-terminated and outlives the call.
        let rc = unsafe {
            libc::sysctlbyname(
                c_name.as_ptr(),
                ptr::null_mut(),
                &mut len,
                ptr::null_mut(),
                0,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(len)
    }

    fn int_or_error(&self, name: &str) -> Result<i64, PlatformError> {
        let mut buf = [0u8; 8];
        let len = Self::raw(name, &mut buf)
            .map_err(|source| os(format!("sysctlbyname({name})"), source))?;
        decode_int(&buf, len).ok_or_else(|| {
            os(
                format!("sysctlbyname({name})"),
                io::Error::other(format!("{len}-byte value, 4 or 8 expected")),
            )
        })
    }
}

fn decode_int(buf: &[u8; 8], len: usize) -> Option<i64> {
    match len {
        4 => {
            let mut b = [0u8; 4];
            b.copy_from_slice(&buf[..4]);
            Some(i64::from(i32::from_ne_bytes(b)))
        }
        8 => Some(i64::from_ne_bytes(*buf)),
        _ => None,
    }
}

impl SysctlRead for Sysctl {
    fn set_int(&self, name: &str, value: i32) -> bool {
        let Ok(c_name) = CString::new(name) else {
            return false;
        };
        let mut new = value;
        // SAFETY: `c_name` is NUL-terminated and outlives the call; no old value is asked for
        // (null pointers); the new value points to `new`, a live C int of the size passed.
        let rc = unsafe {
            libc::sysctlbyname(
                c_name.as_ptr(),
                ptr::null_mut(),
                ptr::null_mut(),
                (&raw mut new).cast(),
                size_of::<libc::c_int>(),
            )
        };
        rc == 0
    }

    fn int(&self, name: &str) -> Option<i64> {
        let mut buf = [0u8; 8];
        let len = Self::raw(name, &mut buf).ok()?;
        decode_int(&buf, len)
    }

    fn string(&self, name: &str) -> Option<String> {
        let size = Self::size(name).ok()?;
        if size == 0 || size > 4096 {
            return None;
        }
        let mut buf = vec![0u8; size];
        let len = Self::raw(name, &mut buf).ok()?;
        buf.truncate(len);
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        let text = String::from_utf8(buf[..end].to_vec()).ok()?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_string())
    }
}

// The portable decoders in `darwin` restate these `<mach/machine.h>` values so they can be
// tested anywhere; the build for macOS checks that they agree with the SDK's.
const _: () = {
    assert!(libc::CPU_STATE_USER as usize == darwin::CPU_STATE_USER);
    assert!(libc::CPU_STATE_SYSTEM as usize == darwin::CPU_STATE_SYSTEM);
    assert!(libc::CPU_STATE_IDLE as usize == darwin::CPU_STATE_IDLE);
    assert!(libc::CPU_STATE_NICE as usize == darwin::CPU_STATE_NICE);
    assert!(libc::CPU_STATE_MAX as usize == darwin::CPU_STATE_MAX);
    assert!(size_of::<libc::integer_t>() == darwin::MACH_WORD_BYTES);
    assert!(size_of::<libc::natural_t>() == darwin::MACH_WORD_BYTES);
};

/// An array the kernel mapped into this task (`host_processor_info`), released with
/// `vm_deallocate` when dropped, whatever path the caller takes.
struct KernelArray {
    ptr: *mut libc::integer_t,
    len: usize,
}

impl Drop for KernelArray {
    fn drop(&mut self) {
        let Some(bytes) = darwin::mach_array_bytes(self.len) else {
            tracing::error!(len = self.len, "kernel array size overflows; not released");
            return;
        };
        // SAFETY: `ptr` was mapped by the kernel into this task for `len` integer_t values
        // (`bytes` bytes) and nothing refers to it after this drop; `mach_task_self_` is the
        // task port libSystem set up before `main`.
        let kr =
            unsafe { libc::vm_deallocate(mach_task_self_, self.ptr as libc::vm_address_t, bytes) };
        if kr != libc::KERN_SUCCESS {
            tracing::error!(kr, "vm_deallocate of the processor info array failed");
        }
    }
}

/// Reads this Mac's counters.
struct MacCounters {
    host: libc::mach_port_t,
    page_size: u64,
    total_bytes: u64,
    /// Set after one warning about an unreadable or unknown pressure level, so a broken sysctl
    /// does not log every tick.
    pressure_warned: bool,
    /// Paces `host_statistics64`, which the kernel rate-limits.
    vm_pacer: darwin::VmStatsPacer,
}

impl MacCounters {
    fn new() -> Result<Self, PlatformError> {
        // SAFETY: no preconditions; returns a send right to the host port, kept for the life of
        // the reader (taken once so send-right references do not pile up per tick).
        let host = unsafe { mach_host_self() };
        // SAFETY: a plain integer global that libSystem initialises before `main` and never
        // changes afterwards.
        let page_size = unsafe { vm_kernel_page_size } as u64;
        if page_size == 0 {
            return Err(os(
                "vm_kernel_page_size".to_string(),
                io::Error::other("page size is 0"),
            ));
        }
        let total_bytes = u64::try_from(Sysctl.int_or_error("hw.memsize")?).map_err(|_| {
            os(
                "sysctlbyname(hw.memsize)".to_string(),
                io::Error::other("negative memory size"),
            )
        })?;
        Ok(Self {
            host,
            page_size,
            total_bytes,
            pressure_warned: false,
            vm_pacer: darwin::VmStatsPacer::default(),
        })
    }

    fn cpu_ticks(&self) -> Result<CpuReading, PlatformError> {
        const CALL: &str = "host_processor_info(PROCESSOR_CPU_LOAD_INFO)";
        let mut cpu_count: libc::natural_t = 0;
        let mut info: libc::processor_info_array_t = ptr::null_mut();
        let mut info_count: libc::mach_msg_type_number_t = 0;
        // SAFETY: every out-pointer points to a live local of the declared type. On success the
        // kernel maps an array of `info_count` integer_t values into this task at `info`; the
        // guard below releases it with vm_deallocate on every path.
        let kr = unsafe {
            libc::host_processor_info(
                self.host,
                libc::PROCESSOR_CPU_LOAD_INFO,
                &mut cpu_count,
                &mut info,
                &mut info_count,
            )
        };
        if kr != libc::KERN_SUCCESS {
            return Err(kern(CALL, kr));
        }
        if info.is_null() {
            return Err(os(CALL.to_string(), io::Error::other("no array returned")));
        }
        let array = KernelArray {
            ptr: info,
            len: info_count as usize,
        };
        // SAFETY: `array.ptr` points to `array.len` initialised integer_t values mapped by the
        // kernel (checked non-null above); the slice does not outlive `array`, whose drop
        // releases the memory.
        let values = unsafe { std::slice::from_raw_parts(array.ptr, array.len) };
        let reading = darwin::cpu_ticks_from_load_info(values, cpu_count as usize)
            .map_err(|message| os(CALL.to_string(), io::Error::other(message)));
        drop(array);
        reading
    }

    /// One `host_statistics64(HOST_VM_INFO64)` call. Made through the `vm_pacer` only: the
    /// kernel rate-limits it.
    fn vm_counts(
        host: libc::mach_port_t,
        page_size: u64,
        total_bytes: u64,
    ) -> Result<VmCounts, PlatformError> {
        const CALL: &str = "host_statistics64(HOST_VM_INFO64)";
        // SAFETY: vm_statistics64 is plain integers; all-zero is a valid value.
        let mut stats: libc::vm_statistics64 = unsafe { std::mem::zeroed() };
        let mut count = libc::HOST_VM_INFO64_COUNT;
        // SAFETY: `stats` is a vm_statistics64 of exactly HOST_VM_INFO64_COUNT integer_t words,
        // the count passed in; the kernel writes at most that many words and stores the number
        // written in `count`.
        let kr = unsafe {
            libc::host_statistics64(
                host,
                libc::HOST_VM_INFO64,
                (&raw mut stats).cast(),
                &mut count,
            )
        };
        if kr != libc::KERN_SUCCESS {
            return Err(kern(CALL, kr));
        }
        // The struct grows across macOS releases; the fields used end at internal_page_count.
        let needed = darwin::mach_words_covering(
            offset_of!(libc::vm_statistics64, internal_page_count) + size_of::<libc::natural_t>(),
        );
        if (count as usize) < needed {
            return Err(os(
                CALL.to_string(),
                io::Error::other(format!("{count} words returned, {needed} needed")),
            ));
        }
        // Fields are copied out by value (the struct is packed; no references are taken).
        let (free, active, inactive, speculative, throttled, wired) = (
            stats.free_count,
            stats.active_count,
            stats.inactive_count,
            stats.speculative_count,
            stats.throttled_count,
            stats.wire_count,
        );
        let (purgeable, compressor, internal, external) = (
            stats.purgeable_count,
            stats.compressor_page_count,
            stats.internal_page_count,
            stats.external_page_count,
        );
        Ok(VmCounts {
            page_size,
            total_bytes,
            free: u64::from(free),
            active: u64::from(active),
            inactive: u64::from(inactive),
            speculative: u64::from(speculative),
            throttled: u64::from(throttled),
            wired: u64::from(wired),
            purgeable: u64::from(purgeable),
            compressor: u64::from(compressor),
            internal: u64::from(internal),
            external: u64::from(external),
        })
    }

    fn swap(&self) -> Result<SwapSample, PlatformError> {
        let mut buf = [0u8; darwin::XSW_USAGE_LEN];
        let len = Sysctl::raw("vm.swapusage", &mut buf)
            .map_err(|source| os("sysctlbyname(vm.swapusage)".to_string(), source))?;
        Ok(darwin::decode_xsw_usage(&buf[..len])?)
    }

    fn load(&self) -> Result<LoadAverage, PlatformError> {
        let mut averages = [0f64; 3];
        // SAFETY: `averages` has room for the 3 values requested.
        let n = unsafe { libc::getloadavg(averages.as_mut_ptr(), 3) };
        if n != 3 {
            return Err(os(
                "getloadavg".to_string(),
                io::Error::other(format!("returned {n} averages, 3 expected")),
            ));
        }
        Ok(LoadAverage {
            one: averages[0],
            five: averages[1],
            fifteen: averages[2],
        })
    }

    fn pressure(&mut self) -> MemoryPressure {
        let raw = Sysctl.int("kern.memorystatus_vm_pressure_level");
        let level = raw.and_then(darwin::pressure_level);
        if level.is_none() && !self.pressure_warned {
            self.pressure_warned = true;
            tracing::warn!(raw = ?raw, "memory pressure level unreadable or unknown; none reported");
        }
        MemoryPressure { level, psi: None }
    }
}

impl HostCounters for MacCounters {
    fn accounting(&self) -> CpuAccounting {
        CpuAccounting {
            ticks_per_second: TICKS_PER_SECOND,
            width: CounterWidth::Wrapping32,
        }
    }

    fn read(&mut self) -> Result<Counters, PlatformError> {
        Ok(Counters {
            cpus: self.cpu_ticks()?,
            memory: MemoryCounters::Darwin(self.vm_pacer.counts(Instant::now(), || {
                Self::vm_counts(self.host, self.page_size, self.total_bytes)
            })?),
            swap: self.swap()?,
            load: self.load()?,
            pressure: self.pressure(),
        })
    }
}

pub(super) fn host_counters() -> Result<Box<dyn HostCounters>, PlatformError> {
    let mut counters = MacCounters::new()?;
    // Fail at startup rather than at the first tick if a call does not work on this Mac.
    counters.read()?;
    Ok(Box::new(counters))
}

pub(super) fn host_info() -> Result<HostInfo, PlatformError> {
    host_info_with_ioreg(Path::new(IOREG))
}

/// Reads the host info, running the given `ioreg` (an absolute path) twice: once for the
/// platform identity (required), once for the CPU cluster types (optional: on failure every
/// CPU is left unlabelled).
pub fn host_info_with_ioreg(ioreg: &Path) -> Result<HostInfo, PlatformError> {
    let platform = run(ioreg, &["-rd1", "-c", "IOPlatformExpertDevice", "-a"])?;
    let identity = darwin::parse_platform_expert(&platform)?;
    let clusters = match run(ioreg, &["-r", "-d", "1", "-k", "cluster-type"]) {
        Ok(out) => match darwin::parse_ioreg_cluster_types(&String::from_utf8_lossy(&out)) {
            Ok(clusters) => clusters,
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "CPU cluster types unreadable; CPUs stay unlabelled");
                Vec::new()
            }
        },
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "CPU cluster types unreadable; CPUs stay unlabelled");
            Vec::new()
        }
    };
    Ok(darwin::host_info_from(&Sysctl, identity, &clusters))
}

/// Runs a tool through [`crate::process::run`] (cleared environment, deadline, output drained on
/// its own threads) and returns its standard output.
fn run(program: &Path, args: &[&str]) -> Result<Vec<u8>, PlatformError> {
    let out = crate::process::run(program, args, crate::process::QUERY_TIMEOUT).map_err(|err| {
        PlatformError::Spawn {
            program: program.to_path_buf(),
            source: match err {
                crate::process::RunError::Start(source)
                | crate::process::RunError::Wait(source) => source,
                crate::process::RunError::TimedOut(after) => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {after:?}; killed"),
                ),
            },
        }
    })?;
    if !out.status.success() {
        let stderr = &out.stderr[..out.stderr.len().min(STDERR_LIMIT)];
        return Err(PlatformError::Tool {
            program: program.to_path_buf(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(stderr).trim().to_string(),
        });
    }
    Ok(out.stdout)
}

fn os(call: String, source: io::Error) -> PlatformError {
    PlatformError::Os { call, source }
}

fn kern(call: &str, kr: libc::kern_return_t) -> PlatformError {
    os(
        call.to_string(),
        io::Error::other(format!("kern_return_t {kr}")),
    )
}

/// This process's usage: CPU time from `getrusage(RUSAGE_SELF)`; resident size, start time and
/// open descriptors from `proc_pidinfo` (`PROC_PIDTASKINFO`, `PROC_PIDTBSDINFO`,
/// `PROC_PIDLISTFDS`) on its own pid.
pub(super) fn process_usage() -> Result<crate::usage::ProcessUsage, PlatformError> {
    let pid = std::process::id() as libc::c_int;
    // SAFETY: `rusage` is plain old data; all-zero is a valid value that getrusage overwrites.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable `rusage` for the duration of the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Err(os(
            "getrusage(RUSAGE_SELF)".into(),
            io::Error::last_os_error(),
        ));
    }
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    // SAFETY: plain old data, overwritten by proc_pidinfo.
    let mut task: libc::proc_taskinfo = unsafe { std::mem::zeroed() };
    pid_info(
        pid,
        libc::PROC_PIDTASKINFO,
        &mut task,
        "proc_pidinfo(PROC_PIDTASKINFO)",
    )?;
    // SAFETY: plain old data, overwritten by proc_pidinfo.
    let mut bsd: libc::proc_bsdinfo = unsafe { std::mem::zeroed() };
    pid_info(
        pid,
        libc::PROC_PIDTBSDINFO,
        &mut bsd,
        "proc_pidinfo(PROC_PIDTBSDINFO)",
    )?;
    Ok(crate::usage::ProcessUsage {
        cpu_seconds: seconds(ru.ru_utime) + seconds(ru.ru_stime),
        resident_bytes: task.pti_resident_size,
        start_time_seconds: bsd.pbi_start_tvsec as f64 + bsd.pbi_start_tvusec as f64 / 1e6,
        open_fds: open_fds(pid)?,
    })
}

/// `proc_pidinfo(pid, flavor, 0, out, size_of::<T>())`, which must fill all of `out`.
fn pid_info<T>(
    pid: libc::c_int,
    flavor: libc::c_int,
    out: &mut T,
    call: &str,
) -> Result<(), PlatformError> {
    let size = std::mem::size_of::<T>() as libc::c_int;
    // SAFETY: `out` is valid and writable for `size` bytes for the duration of the call; the
    // kernel writes at most `size` bytes.
    let n = unsafe { libc::proc_pidinfo(pid, flavor, 0, (out as *mut T).cast(), size) };
    if n != size {
        return Err(os(call.into(), io::Error::last_os_error()));
    }
    Ok(())
}

/// Open descriptors: `PROC_PIDLISTFDS` first sized (a null buffer returns the bytes needed),
/// then filled; the second call returns the bytes it wrote, one `proc_fdinfo` per descriptor.
fn open_fds(pid: libc::c_int) -> Result<u64, PlatformError> {
    let call = "proc_pidinfo(PROC_PIDLISTFDS)";
    // SAFETY: a null buffer of size 0 only asks for the size.
    let needed = unsafe { libc::proc_pidinfo(pid, libc::PROC_PIDLISTFDS, 0, ptr::null_mut(), 0) };
    if needed <= 0 {
        return Err(os(call.into(), io::Error::last_os_error()));
    }
    let entry = std::mem::size_of::<libc::proc_fdinfo>();
    let mut buf: Vec<libc::proc_fdinfo> = Vec::with_capacity(needed as usize / entry + 1);
    let bytes = (buf.capacity() * entry) as libc::c_int;
    // SAFETY: `buf` has room for `bytes` bytes; the kernel writes at most that many and returns
    // how many it wrote. The vector's length stays 0: the entries are only counted, never read.
    let wrote = unsafe {
        libc::proc_pidinfo(
            pid,
            libc::PROC_PIDLISTFDS,
            0,
            buf.as_mut_ptr().cast(),
            bytes,
        )
    };
    if wrote < 0 {
        return Err(os(call.into(), io::Error::last_os_error()));
    }
    Ok(wrote as u64 / entry as u64)
}
