//! The spool's settings (embeddable in the agent's TOML config), their defaults and limits,
//! and their validation.

use super::*;

/// Default `max_bytes`: 24 MiB.
///
/// Measured by the `spool` benchmark, a sample with P/E clusters and every memory class takes
/// 138 bytes on disk with its frame on a 2-core host, 154 on 10 cores and 182 on 24 cores
/// (about 2.3 bytes per extra core), so 24 h at 1 Hz is 11.9 to 15.7 MB, about 17.3 MB for a
/// 32-core host. 24 MiB holds a day of the largest of these plus the segment being written, with
/// about 30 % to spare; 16 MiB would leave no margin for 24 cores once a segment is kept free.
pub const DEFAULT_MAX_BYTES: u64 = 24 * 1024 * 1024;
/// Default `segment_bytes`: 1 MiB, about 1.9 h of samples at 1 Hz, so eviction drops at most
/// about 4 % of a full spool at a time.
pub const DEFAULT_SEGMENT_BYTES: u64 = 1024 * 1024;
/// Default `fsync_interval`: 1 s.
pub const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Smallest accepted `segment_bytes`.
pub const MIN_SEGMENT_BYTES: u64 = 4 * 1024;
/// Largest accepted `segment_bytes`.
pub const MAX_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest accepted `fsync_interval`: records become visible only once synced.
pub const MAX_FSYNC_INTERVAL: Duration = Duration::from_secs(60);
/// One index entry is kept per this many records of a segment.
pub const INDEX_STRIDE: u64 = 64;

/// Spool settings, embeddable in the agent's TOML config (unknown keys are rejected).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the segment files; created `0700` if missing.
    pub dir: PathBuf,
    /// Cap on the bytes of all segments; the oldest whole segments are deleted to stay below.
    /// At least twice `segment_bytes`.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Size at which a new segment is started, between [`MIN_SEGMENT_BYTES`] and
    /// [`MAX_SEGMENT_BYTES`].
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Longest time a written record waits for its fsync (TOML key `fsync_interval_ms`, in
    /// milliseconds); at most [`MAX_FSYNC_INTERVAL`]. Zero syncs every record.
    #[serde(
        rename = "fsync_interval_ms",
        default = "default_fsync_interval",
        serialize_with = "serialize_ms",
        deserialize_with = "deserialize_ms"
    )]
    pub fsync_interval: Duration,
}

fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}

fn default_segment_bytes() -> u64 {
    DEFAULT_SEGMENT_BYTES
}

fn default_fsync_interval() -> Duration {
    DEFAULT_FSYNC_INTERVAL
}

fn serialize_ms<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
}

fn deserialize_ms<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    u64::deserialize(deserializer).map(Duration::from_millis)
}

impl SpoolConfig {
    /// The default settings for a spool in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            fsync_interval: DEFAULT_FSYNC_INTERVAL,
        }
    }

    /// Checks the limits documented on each field.
    pub fn validate(&self) -> Result<(), SpoolError> {
        let invalid =
            |field: &'static str, reason: String| Err(SpoolError::InvalidConfig { field, reason });
        if self.dir.as_os_str().is_empty() {
            return invalid("dir", "set it to the spool directory".into());
        }
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return invalid(
                "segment_bytes",
                format!(
                    "{} is outside {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}",
                    self.segment_bytes
                ),
            );
        }
        if self.max_bytes < 2 * self.segment_bytes {
            return invalid(
                "max_bytes",
                format!(
                    "{} is below twice segment_bytes ({}); raise it or lower segment_bytes",
                    self.max_bytes,
                    2 * self.segment_bytes
                ),
            );
        }
        if self.fsync_interval > MAX_FSYNC_INTERVAL {
            return invalid(
                "fsync_interval_ms",
                format!(
                    "{} ms is above {} ms; records are published only once synced",
                    self.fsync_interval.as_millis(),
                    MAX_FSYNC_INTERVAL.as_millis()
                ),
            );
        }
        Ok(())
    }
}
