//! The wall clock: the one place the workspace reads the time of day.
//!
//! Everything that stamps or compares a time of day (telemetry records, the erase journal and
//! certificate, log lines, the development PKI, the verifier's "not from the future" check, TLS
//! refusal messages) reads it here, so every crate rounds the same way.
//! `clippy.toml` forbids `SystemTime::now` and `OffsetDateTime::now_utc` everywhere else;
//! durations are measured with `Instant`, which is not this clock.
//!
//! It lives in `jex-attest` because that is the lowest crate every reader already depends on
//! (the agent, the erase engine and this crate's verifier), and it needs only `std` and `time`.
//!
//! **Rounding**, one rule for every caller: Unix milliseconds and seconds are truncated toward
//! the epoch (a clock at 1.9999 s reads 1999 ms and 1 s; seconds are always milliseconds / 1000),
//! a clock set before 1970 reads 0, and a value past `u64::MAX` milliseconds saturates.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// The system's wall clock, now.
#[allow(
    clippy::disallowed_methods,
    reason = "the workspace's one read of the wall clock"
)]
pub fn now() -> SystemTime {
    SystemTime::now()
}

/// Milliseconds since the Unix epoch, now (see the module's rounding rule).
pub fn now_unix_ms() -> u64 {
    unix_ms(now())
}

/// Seconds since the Unix epoch, now: [`now_unix_ms`] / 1000.
pub fn now_unix_secs() -> u64 {
    now_unix_ms() / 1000
}

/// Now, as a UTC date and time (full precision).
pub fn now_utc() -> OffsetDateTime {
    OffsetDateTime::from(now())
}

/// `t` in milliseconds since the Unix epoch: truncated toward the epoch, 0 before 1970,
/// saturating at `u64::MAX`.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn milliseconds_truncate_toward_the_epoch() {
        let t = UNIX_EPOCH + Duration::from_micros(1_999_900);
        assert_eq!(unix_ms(t), 1999);
        assert_eq!(unix_ms(UNIX_EPOCH), 0);
    }

    #[test]
    fn before_1970_reads_zero() {
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }

    #[test]
    fn past_u64_milliseconds_saturates() {
        // u64::MAX ms is about 584 million years; SystemTime on Linux reaches past it.
        let Some(far) = UNIX_EPOCH.checked_add(Duration::from_secs(u64::MAX / 500)) else {
            panic!("this platform's SystemTime cannot reach past u64::MAX ms");
        };
        assert_eq!(unix_ms(far), u64::MAX);
    }

    #[test]
    fn the_clock_reads_after_this_code_was_written() {
        // 2026-01-01T00:00:00Z: a clock reading 0 or a unit mix-up would fail this.
        let ms = now_unix_ms();
        assert!(ms > 1_767_225_600_000, "{ms}");
        assert!(now_unix_secs() >= ms / 1000);
        assert!(now_utc().unix_timestamp() >= 1_767_225_600);
    }
}
