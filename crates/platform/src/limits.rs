//! The process's open-file limit: raised at start so that the agent, not a conservative default
//! soft limit, decides how many connections it can hold.
//!
//! [`raised_soft_limit`] is the arithmetic (pure, tested here on every OS); [`raise_nofile`] is
//! the thin shim that reads the limit, asks the OS for its per-process ceiling and calls
//! `setrlimit`.
//!
//! Why a ceiling: `setrlimit(RLIMIT_NOFILE)` does not accept every value up to the hard limit.
//! On macOS the hard limit is often `RLIM_INFINITY`, and a soft limit above
//! `kern.maxfilesperproc` (or `OPEN_MAX`, 10240, when that cannot be read) fails with `EINVAL`;
//! on Linux a value above `/proc/sys/fs/nr_open` fails with `EPERM`.

use std::io;

/// The soft limit is never lowered; `RLIM_INFINITY` as a hard limit means "no hard limit".
pub const INFINITY: u64 = u64::MAX;

/// macOS's `OPEN_MAX` (`<sys/syslimits.h>`): what `setrlimit` accepts when the hard limit is
/// infinite and `kern.maxfilesperproc` cannot be read.
pub const MACOS_OPEN_MAX: u64 = 10240;

/// The soft `RLIMIT_NOFILE` to ask for: the hard limit, clamped to what the OS accepts for one
/// process (`os_ceiling`, when known; `fallback_ceiling` stands in for it when the hard limit
/// is infinite and the OS did not say), and never below the current soft limit.
pub fn raised_soft_limit(
    soft: u64,
    hard: u64,
    os_ceiling: Option<u64>,
    fallback_ceiling: u64,
) -> u64 {
    let ceiling = match (hard, os_ceiling) {
        (INFINITY, Some(os)) => os,
        (INFINITY, None) => fallback_ceiling,
        (hard, Some(os)) => hard.min(os),
        (hard, None) => hard,
    };
    soft.max(ceiling)
}

/// The open-file limit before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit ([`INFINITY`] when unlimited).
    pub hard: u64,
}

/// What [`raise_nofile`] did.
#[derive(Debug)]
pub struct Raised {
    /// The limits now in force.
    pub limit: NofileLimit,
    /// Why `setrlimit` refused to raise the soft limit (it then stays as it was).
    pub refused: Option<io::Error>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (clamped to what the OS accepts) and
/// returns the limits in force. When `setrlimit` refuses, the limit stays as it was and the
/// refusal is returned with it, so the caller can log it and size itself to what it has; only
/// a failing `getrlimit` is an error.
pub fn raise_nofile() -> io::Result<Raised> {
    let (soft, hard) = sys::get()?;
    let target = raised_soft_limit(soft, hard, sys::os_ceiling(), sys::FALLBACK_CEILING);
    let current = NofileLimit {
        before: soft,
        soft,
        hard,
    };
    if target == soft {
        return Ok(Raised {
            limit: current,
            refused: None,
        });
    }
    Ok(match sys::set(target, hard) {
        Ok(()) => Raised {
            limit: NofileLimit {
                soft: target,
                ..current
            },
            refused: None,
        },
        Err(e) => Raised {
            limit: current,
            refused: Some(e),
        },
    })
}

#[allow(unsafe_code)] // getrlimit and setrlimit: every block carries its SAFETY argument
mod sys {
    //! `getrlimit`/`setrlimit(RLIMIT_NOFILE)` and the OS's per-process ceiling.

    use std::io;

    // `rlim_t` is `u64` on the supported targets but not on every libc.
    #[allow(clippy::useless_conversion)]
    fn to_u64(v: libc::rlim_t) -> u64 {
        if v == libc::RLIM_INFINITY {
            super::INFINITY
        } else {
            u64::try_from(v).unwrap_or(super::INFINITY)
        }
    }

    #[allow(clippy::useless_conversion)]
    fn from_u64(v: u64) -> libc::rlim_t {
        if v == super::INFINITY {
            libc::RLIM_INFINITY
        } else {
            libc::rlim_t::try_from(v).unwrap_or(libc::RLIM_INFINITY)
        }
    }

    /// (soft, hard).
    pub(super) fn get() -> io::Result<(u64, u64)> {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a live, writable `rlimit` for the duration of the call.
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((to_u64(lim.rlim_cur), to_u64(lim.rlim_max)))
    }

    pub(super) fn set(soft: u64, hard: u64) -> io::Result<()> {
        let lim = libc::rlimit {
            rlim_cur: from_u64(soft),
            rlim_max: from_u64(hard),
        };
        // SAFETY: `lim` is a live, initialised `rlimit` read by the call.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    #[cfg(target_os = "macos")]
    pub(super) const FALLBACK_CEILING: u64 = super::MACOS_OPEN_MAX;
    #[cfg(not(target_os = "macos"))]
    pub(super) const FALLBACK_CEILING: u64 = 1024 * 1024;

    /// `kern.maxfilesperproc`.
    #[cfg(target_os = "macos")]
    pub(super) fn os_ceiling() -> Option<u64> {
        let name = c"kern.maxfilesperproc";
        let mut value: libc::c_int = 0;
        let mut len: libc::size_t = std::mem::size_of::<libc::c_int>();
        // SAFETY: `name` is a NUL-terminated static string; `value` is a live `c_int` and `len`
        // is exactly its size, updated by the kernel; no new value is set (null, 0).
        let rc = unsafe {
            libc::sysctlbyname(
                name.as_ptr(),
                (&raw mut value).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        (rc == 0 && len == std::mem::size_of::<libc::c_int>() && value > 0)
            .then(|| u64::try_from(value).ok())
            .flatten()
    }

    /// `/proc/sys/fs/nr_open`.
    #[cfg(not(target_os = "macos"))]
    pub(super) fn os_ceiling() -> Option<u64> {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_goes_up_to_the_hard_limit() {
        assert_eq!(raised_soft_limit(256, 8192, None, MACOS_OPEN_MAX), 8192);
        assert_eq!(raised_soft_limit(1024, 1024, None, MACOS_OPEN_MAX), 1024);
    }

    #[test]
    fn an_infinite_hard_limit_is_clamped_to_the_os_ceiling() {
        // macOS: hard unlimited, kern.maxfilesperproc 245760.
        assert_eq!(
            raised_soft_limit(256, INFINITY, Some(245_760), MACOS_OPEN_MAX),
            245_760
        );
        // ... and OPEN_MAX when the sysctl could not be read.
        assert_eq!(
            raised_soft_limit(256, INFINITY, None, MACOS_OPEN_MAX),
            MACOS_OPEN_MAX
        );
    }

    #[test]
    fn a_finite_hard_limit_above_the_os_ceiling_is_clamped() {
        assert_eq!(
            raised_soft_limit(256, 1_000_000, Some(24_576), MACOS_OPEN_MAX),
            24_576
        );
        assert_eq!(
            raised_soft_limit(1024, 2_000_000, Some(1_048_576), 1 << 20),
            1_048_576
        );
    }

    #[test]
    fn the_soft_limit_is_never_lowered() {
        assert_eq!(
            raised_soft_limit(65_536, INFINITY, Some(10_240), MACOS_OPEN_MAX),
            65_536
        );
    }

    #[test]
    fn raising_here_leaves_a_soft_limit_at_least_as_high_as_before() {
        let (soft, hard) = sys::get().expect("getrlimit");
        let got = raise_nofile().expect("getrlimit").limit;
        assert_eq!(got.before, soft);
        assert_eq!(got.hard, hard);
        assert!(got.soft >= soft);
        assert_eq!(sys::get().expect("getrlimit").0, got.soft);
    }
}
