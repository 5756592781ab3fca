//! Local logs an SRE on the host can read and trust.
//!
//! - JSON lines to `<log dir>/agent.log`, rotated by size to `agent.log.1` … `agent.log.N`
//!   (newest first) by the agent itself, so no external rotation has to signal it;
//! - human-readable lines to stderr (launchd sends them to its `StandardErrorPath`);
//! - on macOS, unified logging under subsystem `com.jexcloud.agent`
//!   (`log show --predicate 'subsystem == "com.jexcloud.agent"'`).
//!
//! Each JSON line carries the span fields (`rpc`, `peer`, `operation_id`, …), so one
//! `jq 'select(.span.operation_id == "…")'` follows an erase from start to certificate.
//! Nothing that logs goes through here with key material: secret types print `"..."`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The unified-logging subsystem.
pub const OSLOG_SUBSYSTEM: &str = "com.jexcloud.agent";

/// The log file name inside the log directory.
pub const LOG_FILE: &str = "agent.log";

/// Logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// The log directory or file could not be opened.
    #[error("opening log file {path}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The level filter did not parse.
    #[error("log level {level:?} is not valid: use error, warn, info, debug or trace")]
    Filter {
        /// What was given.
        level: String,
    },
    /// A global subscriber was already installed.
    #[error("logging was already initialised")]
    AlreadyInitialised,
}

/// A file writer that rotates by size: when a write would pass `max_bytes`, `agent.log` becomes
/// `agent.log.1`, older ones shift up, and the oldest beyond `max_files` is removed.
#[derive(Debug)]
pub struct RotatingFile {
    inner: Mutex<RotState>,
}

#[derive(Debug)]
struct RotState {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    max_files: u32,
}

impl RotatingFile {
    /// Opens (creating the directory 0750 and the file 0640) `dir/agent.log`.
    pub fn open(dir: &Path, max_bytes: u64, max_files: u32) -> Result<Self, LoggingError> {
        use std::os::unix::fs::DirBuilderExt;
        let open_err = |path: &Path| {
            let path = path.to_owned();
            move |source| LoggingError::Open { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(open_err(dir))?;
        let path = dir.join(LOG_FILE);
        let file = open_append(&path).map_err(open_err(&path))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            inner: Mutex::new(RotState {
                path,
                file,
                size,
                max_bytes,
                max_files,
            }),
        })
    }

    fn write_line(&self, buf: &[u8]) -> std::io::Result<()> {
        let mut st = self
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if st.size > 0 && st.size + buf.len() as u64 > st.max_bytes {
            st.rotate()?;
        }
        st.file.write_all(buf)?;
        st.size += buf.len() as u64;
        Ok(())
    }
}

impl RotState {
    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = std::fs::remove_file(numbered(self.max_files));
        for n in (1..self.max_files).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// A `MakeWriter` handle on a shared rotating file.
#[derive(Debug, Clone)]
pub struct RotatingWriter(Arc<RotatingFile>);

/// One event's bytes, written as a whole line on drop so rotation never splits a line.
#[derive(Debug)]
pub struct LineWriter {
    file: Arc<RotatingFile>,
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            // A failed log write has nowhere better to be reported; dropping it keeps the agent up.
            let _ = self.file.write_line(&self.buf);
        }
    }
}

impl<'a> MakeWriter<'a> for RotatingWriter {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            file: self.0.clone(),
            buf: Vec::with_capacity(256),
        }
    }
}

/// Where logs go.
#[derive(Debug, Clone)]
pub struct LogTargets {
    /// Level filter; `AGENT_LOG` in the environment overrides it.
    pub level: String,
    /// The JSON file's directory, size cap and rotations; `None` for stderr only (CLI tools).
    pub file: Option<(PathBuf, u64, u32)>,
}

/// Installs the global subscriber once for the process.
pub fn init(targets: &LogTargets) -> Result<(), LoggingError> {
    let level = std::env::var("AGENT_LOG").unwrap_or_else(|_| targets.level.clone());
    let filter = EnvFilter::try_new(&level).map_err(|_| LoggingError::Filter {
        level: level.clone(),
    })?;
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .compact();
    let json = match &targets.file {
        Some((dir, max_bytes, max_files)) => {
            let file = RotatingFile::open(dir, *max_bytes, *max_files)?;
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(RotatingWriter(Arc::new(file))),
            )
        }
        None => None,
    };
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(json);
    #[cfg(target_os = "macos")]
    let registry = registry.with(tracing_oslog::OsLogger::new(OSLOG_SUBSYSTEM, "default"));
    registry
        .try_init()
        .map_err(|_| LoggingError::AlreadyInitialised)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_whole_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = Arc::new(RotatingFile::open(dir.path(), 1000, 3).expect("open"));
        let w = RotatingWriter(f);
        for i in 0..100 {
            let mut line = w.make_writer();
            writeln!(line, "{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(40)).expect("write");
        }
        let main = std::fs::read_to_string(dir.path().join(LOG_FILE)).expect("read");
        assert!(
            main.len() <= 1000,
            "current file over its cap: {}",
            main.len()
        );
        assert!(main.ends_with("}\n"));
        assert!(
            main.contains("\"n\":99,"),
            "newest line in the current file"
        );
        for n in 1..=3 {
            let p = dir.path().join(format!("{LOG_FILE}.{n}"));
            let text = std::fs::read_to_string(&p).expect("rotated file exists");
            assert!(
                text.lines()
                    .all(|l| l.starts_with("{\"n\":") && l.ends_with('}')),
                "whole lines only"
            );
        }
        assert!(
            !dir.path().join(format!("{LOG_FILE}.4")).exists(),
            "no more than max_files rotations"
        );
    }
}
