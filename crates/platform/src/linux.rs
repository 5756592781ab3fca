//! The Linux implementation: counters from `/proc`, identity from `/sys`, `/proc` and `/etc`.
//!
//! [`LinuxHost`] holds the three root directories (`/proc`, `/sys`, `/etc` by default) so tests
//! can point it at a tree of their own. Per tick it reads `/proc/stat`, `/proc/meminfo`,
//! `/proc/loadavg` and, when the kernel has PSI, `/proc/pressure/memory`, into one reused
//! buffer; swap comes from `SwapTotal`/`SwapFree` in `/proc/meminfo`, so `/proc/swaps` is not
//! read per tick. PSI is optional: when it is missing or unreadable the sample carries no PSI
//! rather than failing. Nothing here forks or lists processes.
//!
//! Identity sources, in order: DMI `product_uuid` when readable (root only on most systems),
//! else `/etc/machine-id`; DMI `product_serial` and `product_name`; `/proc/cpuinfo` for the CPU
//! brand; `/proc/sys/kernel/osrelease` for the version. CPU kinds come from the hybrid-CPU PMU
//! lists `/sys/devices/cpu_core/cpus` (performance) and `/sys/devices/cpu_atom/cpus`
//! (efficiency) when both exist; otherwise every CPU is unlabelled.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::{
    CounterWidth, Counters, CpuAccounting, HostCounters, HostInfo, MemoryCounters, PlatformError,
    procfs,
};
use jex_telemetry::{CoreKind, MemoryPressure};

/// `USER_HZ` when `sysconf(_SC_CLK_TCK)` cannot be read: 100 on every architecture the agent
/// builds for.
const DEFAULT_USER_HZ: u32 = 100;

/// Reads a Linux host's counters and identity from its `/proc`, `/sys` and `/etc` trees.
#[derive(Debug)]
pub struct LinuxHost {
    proc_root: PathBuf,
    sys_root: PathBuf,
    etc_root: PathBuf,
    ticks_per_second: u32,
    /// Whether `/proc/pressure/memory` is worth opening; set to false once it is found missing
    /// (kernel without PSI, or booted with `psi=0`), so a tick does not retry a failing open.
    psi_available: bool,
    buf: String,
}

impl LinuxHost {
    /// Reads the real `/proc`, `/sys` and `/etc`.
    pub fn new() -> Self {
        Self::with_roots("/proc", "/sys", "/etc")
    }

    /// Reads the given trees instead of `/proc`, `/sys` and `/etc` (for tests).
    pub fn with_roots(
        proc_root: impl Into<PathBuf>,
        sys_root: impl Into<PathBuf>,
        etc_root: impl Into<PathBuf>,
    ) -> Self {
        Self {
            proc_root: proc_root.into(),
            sys_root: sys_root.into(),
            etc_root: etc_root.into(),
            ticks_per_second: user_hz(),
            psi_available: true,
            buf: String::with_capacity(16 * 1024),
        }
    }

    /// Reads the host's identity and hardware.
    pub fn host_info(&self) -> Result<HostInfo, PlatformError> {
        let meminfo_path = self.proc_root.join("meminfo");
        let meminfo = procfs::parse_meminfo(&read_file(&meminfo_path)?)?;

        let dmi = self.sys_root.join("class/dmi/id");
        let hardware_uuid = read_optional(&dmi.join("product_uuid"))?
            .or(read_optional(&self.etc_root.join("machine-id"))?);
        let serial_number = read_optional(&dmi.join("product_serial"))?;
        let model = read_optional(&dmi.join("product_name"))?;
        let chip = read_optional(&self.proc_root.join("cpuinfo"))?
            .and_then(|text| procfs::parse_cpuinfo_model(&text));
        let os_version = read_optional(&self.proc_root.join("sys/kernel/osrelease"))?;

        let present_path = self.sys_root.join("devices/system/cpu/present");
        let present = match read_optional(&present_path)? {
            Some(text) => procfs::parse_cpu_list(&text, &present_path.display().to_string())?,
            None => Vec::new(),
        };
        let cpu_count = match present.iter().max() {
            Some(max) => *max as usize + 1,
            // No sysfs: count the CPUs /proc/stat reports.
            None => procfs::parse_stat(&read_file(&self.proc_root.join("stat"))?)?.len(),
        };
        let cpu_kinds = self.cpu_kinds(cpu_count)?;
        let count_of = |kind| cpu_kinds.iter().filter(|k| **k == Some(kind)).count() as u32;

        Ok(HostInfo {
            hardware_uuid,
            serial_number,
            model,
            chip,
            logical_cpus: if present.is_empty() {
                cpu_count as u32
            } else {
                present.len() as u32
            },
            super_cores: count_of(CoreKind::Super),
            performance_cores: count_of(CoreKind::Performance),
            efficiency_cores: count_of(CoreKind::Efficiency),
            memory_bytes: meminfo.mem_total_kib.saturating_mul(1024),
            os_name: "Linux".to_string(),
            os_version,
            cpu_kinds,
        })
    }

    /// CPU kinds from the hybrid-CPU PMU lists; all `None` unless both lists exist.
    fn cpu_kinds(&self, cpu_count: usize) -> Result<Vec<Option<CoreKind>>, PlatformError> {
        let mut kinds = vec![None; cpu_count];
        let core_path = self.sys_root.join("devices/cpu_core/cpus");
        let atom_path = self.sys_root.join("devices/cpu_atom/cpus");
        let (Some(core), Some(atom)) = (read_optional(&core_path)?, read_optional(&atom_path)?)
        else {
            return Ok(kinds);
        };
        let lists = [
            (core_path, core, CoreKind::Performance),
            (atom_path, atom, CoreKind::Efficiency),
        ];
        for (path, text, kind) in lists {
            for cpu in procfs::parse_cpu_list(&text, &path.display().to_string())? {
                let cpu = cpu as usize;
                if cpu >= kinds.len() {
                    kinds.resize(cpu + 1, None);
                }
                kinds[cpu] = Some(kind);
            }
        }
        Ok(kinds)
    }

    fn read_into_buf(&mut self, relative: &str) -> Result<(), PlatformError> {
        let path = self.proc_root.join(relative);
        self.buf.clear();
        File::open(&path)
            .and_then(|mut f| f.read_to_string(&mut self.buf))
            .map_err(|source| PlatformError::Read { path, source })?;
        Ok(())
    }
}

impl Default for LinuxHost {
    fn default() -> Self {
        Self::new()
    }
}

impl HostCounters for LinuxHost {
    fn accounting(&self) -> CpuAccounting {
        CpuAccounting {
            ticks_per_second: self.ticks_per_second,
            width: CounterWidth::Monotonic64,
        }
    }

    fn read(&mut self) -> Result<Counters, PlatformError> {
        self.read_into_buf("stat")?;
        let cpus = procfs::parse_stat(&self.buf)?;

        self.read_into_buf("meminfo")?;
        let meminfo = procfs::parse_meminfo(&self.buf)?;

        self.read_into_buf("loadavg")?;
        let load = procfs::parse_loadavg(&self.buf)?;

        // PSI is optional: a kernel without it, or a file that cannot be read, degrades the
        // sample to no PSI instead of failing it.
        let psi = if self.psi_available {
            match self.read_into_buf("pressure/memory") {
                Ok(()) => match procfs::parse_psi(&self.buf) {
                    Ok(psi) => Some(psi),
                    Err(error) => {
                        tracing::warn!(error = %crate::error_chain(&error), "memory pressure-stall information unparseable; none reported for this sample");
                        None
                    }
                },
                Err(PlatformError::Read { source, .. }) if psi_absent(&source) => {
                    tracing::debug!(error = %source, "memory pressure-stall information not available; not read again");
                    self.psi_available = false;
                    None
                }
                Err(error) => {
                    tracing::warn!(error = %crate::error_chain(&error), "memory pressure-stall information unreadable; not read again");
                    self.psi_available = false;
                    None
                }
            }
        } else {
            None
        };

        Ok(Counters {
            cpus,
            swap: procfs::swap_from_meminfo(&meminfo),
            memory: MemoryCounters::Linux(meminfo),
            load,
            pressure: MemoryPressure { level: None, psi },
        })
    }
}

/// Whether an error opening `/proc/pressure/memory` means the kernel has no PSI: the file is
/// missing without `CONFIG_PSI`, and opening it fails with `EOPNOTSUPP` when booted with `psi=0`.
fn psi_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// Opens the real `/proc` and checks that it can be read.
pub fn host_counters() -> Result<Box<dyn HostCounters>, PlatformError> {
    let mut host = LinuxHost::new();
    // Fail at startup rather than at the first tick if /proc is unusable.
    host.read()?;
    Ok(Box::new(host))
}

/// Reads the identity of this Linux host from the real trees.
pub fn host_info() -> Result<HostInfo, PlatformError> {
    LinuxHost::new().host_info()
}

/// This process's usage from `/proc/self/stat`, `/proc/stat` (`btime`) and `/proc/self/fd`.
pub fn process_usage() -> Result<crate::usage::ProcessUsage, PlatformError> {
    use crate::usage::{parse_btime, parse_proc_self_stat, usage_from_proc};
    let stat = parse_proc_self_stat(&read_file(Path::new("/proc/self/stat"))?)?;
    let btime = parse_btime(&read_file(Path::new("/proc/stat"))?)?;
    let fd_dir = Path::new("/proc/self/fd");
    // The directory's own descriptor is counted too, as every Prometheus client library does.
    let open_fds = std::fs::read_dir(fd_dir)
        .map_err(|source| PlatformError::Read {
            path: fd_dir.to_path_buf(),
            source,
        })?
        .count() as u64;
    let page_size = match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(size)) if size > 0 => size as u64,
        _ => 4096,
    };
    Ok(usage_from_proc(stat, btime, user_hz(), page_size, open_fds))
}

fn user_hz() -> u32 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 && hz <= 10_000 => hz as u32,
        _ => DEFAULT_USER_HZ,
    }
}

fn read_file(path: &Path) -> Result<String, PlatformError> {
    std::fs::read_to_string(path).map_err(|source| PlatformError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a small identity file; `None` when it is missing, unreadable by this user (DMI serials
/// are root-only) or blank.
fn read_optional(path: &Path) -> Result<Option<String>, PlatformError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let value = text.trim();
            Ok((!value.is_empty()).then(|| value.to_string()))
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(PlatformError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::fs;

    struct Tree {
        _dir: tempfile::TempDir,
        proc_root: PathBuf,
        sys_root: PathBuf,
        etc_root: PathBuf,
    }

    impl Tree {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let proc_root = dir.path().join("proc");
            let sys_root = dir.path().join("sys");
            let etc_root = dir.path().join("etc");
            for d in [&proc_root, &sys_root, &etc_root] {
                fs::create_dir_all(d).unwrap();
            }
            let tree = Self {
                _dir: dir,
                proc_root,
                sys_root,
                etc_root,
            };
            tree.write_proc(
                "stat",
                "cpu  3 0 3 20 0 0 0 0\ncpu0 1 0 1 10 0 0 0 0\ncpu1 2 0 2 10 0 0 0 0\nintr 0\n",
            );
            tree.write_proc(
                "meminfo",
                "MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 600 kB\nSwapTotal: 50 kB\nSwapFree: 20 kB\n",
            );
            tree.write_proc("loadavg", "1.50 0.75 0.25 1/100 42\n");
            tree
        }

        fn write(root: &Path, rel: &str, text: &str) {
            let path = root.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }

        fn write_proc(&self, rel: &str, text: &str) {
            Self::write(&self.proc_root, rel, text);
        }

        fn write_sys(&self, rel: &str, text: &str) {
            Self::write(&self.sys_root, rel, text);
        }

        fn host(&self) -> LinuxHost {
            LinuxHost::with_roots(&self.proc_root, &self.sys_root, &self.etc_root)
        }
    }

    #[test]
    fn reads_counters_from_the_given_proc_tree() {
        let tree = Tree::new();
        let mut host = tree.host();
        let c = host.read().unwrap();
        assert_eq!(c.cpus.len(), 2);
        assert_eq!(c.cpus[1].unwrap().user, 2);
        assert_eq!(c.swap.total_bytes, 50 * 1024);
        assert_eq!(c.swap.used_bytes, 30 * 1024);
        assert_eq!(c.load.one, 1.5);
        assert_eq!(c.pressure.psi, None, "no pressure file in the tree");
        assert!(!host.psi_available);
        match c.memory {
            MemoryCounters::Linux(m) => assert_eq!(m.mem_available_kib, 600),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(host.accounting().width, CounterWidth::Monotonic64);
    }

    #[test]
    fn reads_psi_when_the_kernel_has_it() {
        let tree = Tree::new();
        tree.write_proc(
            "pressure/memory",
            "some avg10=3.00 avg60=1.00 avg300=0.50 total=9\nfull avg10=1.00 avg60=0 avg300=0 total=1\n",
        );
        let c = tree.host().read().unwrap();
        let psi = c.pressure.psi.unwrap();
        assert_eq!((psi.some_avg10, psi.full_avg10), (3.0, 1.0));
    }

    #[test]
    fn an_unparsable_psi_file_degrades_to_no_psi() {
        let tree = Tree::new();
        tree.write_proc("pressure/memory", "some avg10=garbage\n");
        let mut host = tree.host();
        let c = host.read().unwrap();
        assert_eq!(c.pressure.psi, None);
        assert_eq!(c.load.one, 1.5, "the rest of the sample is read");
        tree.write_proc(
            "pressure/memory",
            "some avg10=2.00 avg60=0 avg300=0 total=0\n",
        );
        let psi = host.read().unwrap().pressure.psi.unwrap();
        assert_eq!(psi.some_avg10, 2.0, "read again on the next tick");
    }

    #[test]
    fn a_missing_stat_file_is_an_error_naming_the_path() {
        let tree = Tree::new();
        fs::remove_file(tree.proc_root.join("stat")).unwrap();
        let err = tree.host().read().unwrap_err();
        assert!(matches!(err, PlatformError::Read { .. }));
        assert!(err.to_string().contains("proc/stat"), "{err}");
    }

    #[test]
    fn a_corrupt_meminfo_is_a_parse_error() {
        let tree = Tree::new();
        tree.write_proc("meminfo", "MemTotal: 1000 kB\n");
        let err = tree.host().read().unwrap_err();
        assert!(matches!(err, PlatformError::Parse(_)), "{err}");
    }

    #[test]
    fn host_info_prefers_dmi_uuid_and_labels_hybrid_cpus() {
        let tree = Tree::new();
        Tree::write(
            &tree.etc_root,
            "machine-id",
            "3d1219c7c4c5404aaa1f6d2a48adfda4\n",
        );
        tree.write_sys(
            "class/dmi/id/product_uuid",
            "4c4c4544-0042-3510-8051-b4c04f4e4e32\n",
        );
        tree.write_sys("class/dmi/id/product_name", "Example Box 9000\n");
        tree.write_sys("devices/system/cpu/present", "0-3\n");
        tree.write_sys("devices/cpu_core/cpus", "0-1\n");
        tree.write_sys("devices/cpu_atom/cpus", "2-3\n");
        tree.write_proc("cpuinfo", "processor\t: 0\nmodel name\t: Test CPU @ 3GHz\n");
        tree.write_proc("sys/kernel/osrelease", "6.12.0-test\n");
        let info = tree.host().host_info().unwrap();
        assert_eq!(
            info.hardware_uuid.as_deref(),
            Some("4c4c4544-0042-3510-8051-b4c04f4e4e32")
        );
        assert_eq!(info.model.as_deref(), Some("Example Box 9000"));
        assert_eq!(info.serial_number, None);
        assert_eq!(info.chip.as_deref(), Some("Test CPU @ 3GHz"));
        assert_eq!(info.os_version.as_deref(), Some("6.12.0-test"));
        assert_eq!(info.logical_cpus, 4);
        assert_eq!((info.performance_cores, info.efficiency_cores), (2, 2));
        assert_eq!(
            info.cpu_kinds,
            vec![
                Some(CoreKind::Performance),
                Some(CoreKind::Performance),
                Some(CoreKind::Efficiency),
                Some(CoreKind::Efficiency)
            ]
        );
        assert_eq!(info.memory_bytes, 1000 * 1024);
    }

    #[test]
    fn host_info_falls_back_to_machine_id_and_unlabelled_cpus() {
        let tree = Tree::new();
        Tree::write(
            &tree.etc_root,
            "machine-id",
            "3d1219c7c4c5404aaa1f6d2a48adfda4\n",
        );
        let info = tree.host().host_info().unwrap();
        assert_eq!(
            info.hardware_uuid.as_deref(),
            Some("3d1219c7c4c5404aaa1f6d2a48adfda4")
        );
        assert_eq!(info.logical_cpus, 2, "counted from /proc/stat");
        assert_eq!(info.cpu_kinds, vec![None, None]);
        assert_eq!((info.performance_cores, info.efficiency_cores), (0, 0));
        assert_eq!(info.os_name, "Linux");
    }

    #[test]
    fn host_info_of_this_machine_has_its_memory_and_cpus() {
        let info = host_info().unwrap();
        let meminfo = procfs::parse_meminfo(&fs::read_to_string("/proc/meminfo").unwrap()).unwrap();
        assert_eq!(info.memory_bytes, meminfo.mem_total_kib * 1024);
        let online = std::thread::available_parallelism().unwrap().get() as u32;
        assert!(
            info.logical_cpus >= online,
            "{} < {online}",
            info.logical_cpus
        );
        assert_eq!(info.cpu_kinds.len() as u32, info.logical_cpus);
        assert!(info.hardware_uuid.is_some(), "machine-id or DMI uuid");
    }
}
