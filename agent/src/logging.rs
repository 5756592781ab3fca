//! Local logs an SRE on the host can read and trust.
//!
//! Who writes what where:
//! - **JSON file**: every event the level filter lets through, as one JSON line in
//!   `<log dir>/agent.log`, rotated by size to `agent.log.1` … `agent.log.N` (newest first) by
//!   the agent itself, so no external rotation has to signal it. Events never wait for the disk:
//!   each is formatted into a whole line on the thread that logs it and queued (bounded,
//!   [`QUEUE_LINES`]); one writer thread appends the lines and rotates between lines only. When
//!   the queue is full, or the file does not take it (disk full), the line is dropped and
//!   counted, and the next line that gets into the file is preceded by a WARN line
//!   `log lines dropped` with the count in `dropped`: logging
//!   never slows the agent down, and a gap is never silent. The [`LogGuard`] that [`init`]
//!   returns is kept by the wiring until exit; dropping it writes out the queue and any last
//!   count, and flushes.
//! - **stderr** (launchd sends it to `launchd.stderr.log`): warnings and errors only, as
//!   human-readable lines, written on the logging thread (they are rare); panics, printed by the
//!   standard panic hook, which [`install_panic_hook`] keeps and runs before logging the panic to
//!   the other sinks as an ERROR event (left off stderr, so a panic is printed once); and what
//!   the command line prints before logging starts (configuration and start-up errors). Without
//!   a JSON file (the command-line tools) stderr is the only sink and takes every event the level
//!   filter lets through.
//! - **system log**: whatever [`jex_platform::logsink::system_log_layer`] provides. On macOS
//!   that is the unified log under subsystem `com.jexcloud.agent`
//!   (`log show --predicate 'subsystem == "com.jexcloud.agent"'`), so a macOS host has two
//!   copies of each event (unified log, JSON file), not three; elsewhere there is none. The
//!   system log is told of spans by name only, without their fields (the JSON file has them),
//!   so that its memory stays bounded however many connections the agent serves
//!   ([`jex_platform::logsink`] says why).
//!
//! The level filter keeps the TLS library (`rustls`, whose `log` records arrive through the
//! `log` bridge) at ERROR unless it names it: rustls warns on every refused handshake, and the
//! agent already logs refusals itself, rate-limited.
//!
//! Each JSON line carries the span fields (`rpc`, `peer`, `operation_id`, …), so one
//! `jq 'select(.span.operation_id == "…")'` follows an erase from start to certificate.
//! Nothing that logs goes through here with key material: secret types print `"..."`.
//!
//! # Message convention
//!
//! A message is a short lowercase fragment without a trailing period that says what happened
//! (`"call refused"`, `"target overwritten"`); names and acronyms keep their case
//! (`"TLS handshake refused"`, `"APFS volume deleted"`). A clause after `; ` may say what the
//! agent does about it (`"TLS reload failed; keeping the previous certificate"`). Facts go in
//! fields, not in the text (`peer`, `target`, `bytes`, `seq`, `elapsed_ms`), so that a message is
//! a constant to search for (`jq 'select(.fields.message == "call refused")'`). An error goes in
//! the `error` field with its whole chain (`error = %error_chain(&e)`), never in the message.
//! Levels: ERROR when the agent cannot do something it must, WARN when something is wrong but
//! handled (a refusal, a retry, data reported as a gap), INFO for the lifecycle and operations,
//! DEBUG for detail that helps a diagnosis.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use tracing::Subscriber;
use tracing_subscriber::filter::{FilterFn, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The log file name inside the log directory.
pub const LOG_FILE: &str = "agent.log";

/// Lines the JSON file's queue holds before new lines are dropped (a few MiB of JSON at most).
pub const QUEUE_LINES: usize = 8192;

/// The target of the event a panic is logged as; stderr leaves it out (the panic hook prints
/// the panic there itself).
pub const PANIC_TARGET: &str = "jex_agent::panic";

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
    /// The writer thread of the log file could not be started.
    #[error("starting the log writer thread")]
    Spawn(#[source] std::io::Error),
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

/// Where the writer thread puts lines.
trait LineSink: Send + 'static {
    /// Appends one whole line (ending in `\n`).
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()>;
    /// Makes what was written visible to readers of the file.
    fn flush(&mut self) -> std::io::Result<()>;
}

/// A file that rotates by size: when a line would take `agent.log` past `max_bytes`,
/// `agent.log` becomes `agent.log.1`, older ones shift up, and the oldest beyond `max_files` is
/// removed. Rotation happens between lines only. Owned by the writer thread.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: BufWriter<File>,
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
            path,
            file: BufWriter::new(file),
            size,
            max_bytes,
            max_files,
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = std::fs::remove_file(numbered(self.max_files));
        for n in (1..self.max_files).rev() {
            let from = numbered(n);
            if from.exists() {
                std::fs::rename(&from, numbered(n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = BufWriter::new(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

impl LineSink for RotatingFile {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// Lines dropped since the process started, for the `/metrics` counter
/// `jex_agent_log_lines_dropped_total`. One count for the process, like the global subscriber
/// whose lines it counts ([`init`] installs it once per process); never reset, unlike the
/// per-writer count that the `log lines dropped` line reports and clears.
static LINES_DROPPED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped since the process started: the file's queue was full, or the file did
/// not take them (disk full).
pub fn lines_dropped_total() -> u64 {
    LINES_DROPPED_TOTAL.load(Ordering::Relaxed)
}

/// What the queue carries to the writer thread.
enum Message {
    /// One event's whole line.
    Line(Vec<u8>),
    /// This many lines were dropped here because the queue was full.
    Dropped(u64),
    /// Write out and stop.
    Stop,
}

/// The JSON layer's `MakeWriter`: queues each event's line for the writer thread, never
/// waiting. Lines that do not fit are counted and reported in the file as a gap.
#[derive(Debug, Clone)]
pub struct NonBlocking {
    queue: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
}

impl NonBlocking {
    fn send(&self, line: Vec<u8>) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 && self.queue.try_send(Message::Dropped(dropped)).is_err() {
            self.dropped.fetch_add(dropped + 1, Ordering::Relaxed);
            LINES_DROPPED_TOTAL.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.queue.try_send(Message::Line(line)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            LINES_DROPPED_TOTAL.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One event's bytes, queued as a whole line when the event is written (on drop).
#[derive(Debug)]
pub struct EventLine<'a> {
    writer: &'a NonBlocking,
    buf: Vec<u8>,
}

impl Write for EventLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventLine<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.writer.send(std::mem::take(&mut self.buf));
        }
    }
}

impl<'a> MakeWriter<'a> for NonBlocking {
    type Writer = EventLine<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        EventLine {
            writer: self,
            buf: Vec::with_capacity(256),
        }
    }
}

/// Starts the writer thread over `sink`, with a queue of `capacity` lines.
fn spawn_writer<S: LineSink>(
    sink: S,
    capacity: usize,
) -> std::io::Result<(NonBlocking, JoinHandle<()>)> {
    let (queue, lines) = sync_channel(capacity);
    let thread = std::thread::Builder::new()
        .name("jex-agent-log".to_owned())
        .spawn(move || write_lines(sink, &lines))?;
    let writer = NonBlocking {
        queue,
        dropped: Arc::default(),
    };
    Ok((writer, thread))
}

/// The writer thread: appends lines as they come, flushing whenever the queue is empty. A line
/// the file does not take (disk full, a failed rotation) is lost, counted with the dropped
/// ones, and reported by a `log lines dropped` line before the next line the file takes.
fn write_lines(mut sink: impl LineSink, lines: &Receiver<Message>) {
    // Lines lost here (or reported dropped) whose count is not in the file yet.
    let mut unreported = 0u64;
    while let Ok(first) = lines.recv() {
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Line(line) => {
                    if unreported > 0 && sink.write_line(&dropped_line(unreported)).is_ok() {
                        unreported = 0;
                    }
                    if sink.write_line(&line).is_err() {
                        unreported += 1;
                        LINES_DROPPED_TOTAL.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Counted in the total by the sender already.
                Message::Dropped(count) => {
                    if sink.write_line(&dropped_line(unreported + count)).is_ok() {
                        unreported = 0;
                    } else {
                        unreported += count;
                    }
                }
                Message::Stop => {
                    if unreported > 0 {
                        let _ = sink.write_line(&dropped_line(unreported));
                    }
                    let _ = sink.flush();
                    return;
                }
            }
            next = lines.try_recv().ok();
        }
        let _ = sink.flush();
    }
}

/// The line that reports a gap, in the shape of the JSON layer's lines.
fn dropped_line(count: u64) -> Vec<u8> {
    let timestamp = jex_attest::clock::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let event = serde_json::json!({
        "timestamp": timestamp,
        "level": "WARN",
        "fields": {
            "message": "log lines dropped",
            "dropped": count,
            "queue_lines": QUEUE_LINES,
        },
        "target": module_path!(),
    });
    let mut line = event.to_string().into_bytes();
    line.push(b'\n');
    line
}

/// Keeps the JSON file's writer thread; dropping it writes out every queued line, reports lines
/// still counted as dropped, flushes the file and waits for the thread. Keep it until exit.
#[must_use = "dropping the guard stops the log file's writer"]
#[derive(Debug)]
pub struct LogGuard {
    writer: Option<(NonBlocking, JoinHandle<()>)>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        let Some((writer, thread)) = self.writer.take() else {
            return;
        };
        // Blocking sends: the writer thread is draining the queue, so there will be room.
        let dropped = writer.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = writer.queue.send(Message::Dropped(dropped));
        }
        let _ = writer.queue.send(Message::Stop);
        let _ = thread.join();
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

/// Builds the subscriber for `targets` (see the module documentation), with `stderr` as the
/// human-readable writer, and the guard of its file writer.
pub fn subscriber<W>(
    targets: &LogTargets,
    stderr: W,
) -> Result<(impl Subscriber + Send + Sync + 'static, LogGuard), LoggingError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    subscriber_with(targets, stderr, &PlatformSystemLog)
}

/// Where the system log goes: [`PlatformSystemLog`] in the agent; a test puts a stand-in in its
/// place to watch what the sink is given.
pub trait SystemLog {
    /// The system log layer for a subscriber of type `S`, `None` for no system log.
    fn layer<S>(&self) -> Option<Box<dyn Layer<S> + Send + Sync>>
    where
        S: Subscriber + for<'a> LookupSpan<'a>;
}

/// The platform's system log sink ([`jex_platform::logsink::system_log_layer`]).
#[derive(Debug, Clone, Copy)]
pub struct PlatformSystemLog;

impl SystemLog for PlatformSystemLog {
    fn layer<S>(&self) -> Option<Box<dyn Layer<S> + Send + Sync>>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        jex_platform::logsink::system_log_layer::<S>()
    }
}

/// [`subscriber`] with `system_log` in the place of the platform's system log sink.
pub fn subscriber_with<W>(
    targets: &LogTargets,
    stderr: W,
    system_log: &impl SystemLog,
) -> Result<(impl Subscriber + Send + Sync + 'static, LogGuard), LoggingError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let level = std::env::var("AGENT_LOG").unwrap_or_else(|_| targets.level.clone());
    let filter =
        quiet_tls_library(
            EnvFilter::try_new(&level).map_err(|_| LoggingError::Filter {
                level: level.clone(),
            })?,
        );
    let (json, guard) = match &targets.file {
        Some((dir, max_bytes, max_files)) => {
            let file = RotatingFile::open(dir, *max_bytes, *max_files)?;
            let (writer, thread) = spawn_writer(file, QUEUE_LINES).map_err(LoggingError::Spawn)?;
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(writer.clone());
            let guard = LogGuard {
                writer: Some((writer, thread)),
            };
            (Some(layer), guard)
        }
        None => (None, LogGuard { writer: None }),
    };
    let floor = if targets.file.is_some() {
        LevelFilter::WARN
    } else {
        LevelFilter::TRACE
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(stderr)
        .with_ansi(false)
        .with_target(false)
        .compact()
        .with_filter(FilterFn::new(move |meta| {
            *meta.level() <= floor && meta.target() != PANIC_TARGET
        }));
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(json);
    Ok((with_system_log(subscriber, system_log), guard))
}

/// Keeps the TLS library at ERROR unless the level filter names it: rustls logs a WARN line of
/// its own for every refused handshake, outside the agent's rate-limited refusal log, so a peer
/// failing handshakes in a loop would flood the logs. (Its `log` records reach the subscriber
/// through the `log` bridge that `init` installs, with targets `rustls::…`.) A filter that turns
/// everything off stays off.
fn quiet_tls_library(filter: EnvFilter) -> EnvFilter {
    let names_it = filter.to_string().contains(TLS_LIBRARY_TARGET);
    if names_it || filter.max_level_hint() == Some(LevelFilter::OFF) {
        return filter;
    }
    match format!("{TLS_LIBRARY_TARGET}=error").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

/// The target prefix of the TLS library's log records.
const TLS_LIBRARY_TARGET: &str = "rustls";

/// Adds the system log sink, if there is one.
fn with_system_log<S>(
    subscriber: S,
    system_log: &impl SystemLog,
) -> Layered<Option<Box<dyn Layer<S> + Send + Sync>>, S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    subscriber.with(system_log.layer::<S>())
}

/// Installs the global subscriber once for the process, and the panic hook. Keep the guard
/// until exit.
pub fn init(targets: &LogTargets) -> Result<LogGuard, LoggingError> {
    let (subscriber, guard) = subscriber(targets, std::io::stderr)?;
    subscriber
        .try_init()
        .map_err(|_| LoggingError::AlreadyInitialised)?;
    install_panic_hook();
    Ok(guard)
}

/// Makes panics reach every sink: the hook installed before (the standard one prints the panic
/// and the backtrace hint on stderr) runs first, then the panic is logged as an ERROR event with
/// target [`PANIC_TARGET`], which the JSON file and the system log take and stderr leaves out.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let location = info.location().map(ToString::to_string).unwrap_or_default();
        tracing::error!(
            target: PANIC_TARGET,
            thread = std::thread::current().name().unwrap_or("unnamed"),
            location = %location,
            panic = info.payload_as_str().unwrap_or("(not a string)"),
            "thread panicked"
        );
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::mpsc;

    /// A stderr stand-in that keeps what is written.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
        }
    }

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn file_targets(dir: &Path) -> LogTargets {
        LogTargets {
            level: "info".to_owned(),
            file: Some((dir.to_owned(), 1 << 20, 3)),
        }
    }

    fn json_lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .expect("log file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect()
    }

    fn line(writer: &NonBlocking, text: &str) {
        let mut event = writer.make_writer();
        writeln!(event, "{text}").expect("write");
    }

    #[test]
    fn events_reach_the_file_as_json_lines_once_the_guard_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr = Captured::default();
        let (subscriber, guard) = subscriber(&file_targets(dir.path()), stderr).expect("logging");
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("rpc", operation_id = "op-1");
            let _entered = span.enter();
            for n in 0..1000 {
                tracing::info!(n, "sample taken");
            }
            tracing::debug!("below the level");
        });
        drop(guard);
        let lines = json_lines(&dir.path().join(LOG_FILE));
        assert_eq!(
            lines.len(),
            1000,
            "every line, none dropped, none below the level"
        );
        for (n, line) in lines.iter().enumerate() {
            assert_eq!(line["fields"]["message"], "sample taken");
            assert_eq!(line["fields"]["n"], n);
            assert_eq!(line["level"], "INFO");
            assert_eq!(line["span"]["operation_id"], "op-1");
        }
    }

    #[test]
    fn stderr_takes_warnings_and_errors_only_when_there_is_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr = Captured::default();
        let (subscriber, guard) =
            subscriber(&file_targets(dir.path()), stderr.clone()).expect("logging");
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(peer = "spiffe://a", "call served");
            tracing::warn!(peer = "spiffe://b", "call refused");
            tracing::error!(error = "disk full", "spool write failed");
        });
        drop(guard);
        let text = stderr.text();
        assert!(!text.contains("call served"), "INFO on stderr: {text}");
        assert!(
            text.contains("WARN") && text.contains("call refused"),
            "{text}"
        );
        assert!(text.contains("peer=\"spiffe://b\""), "{text}");
        assert!(
            text.contains("ERROR") && text.contains("spool write failed"),
            "{text}"
        );
        let messages: Vec<_> = json_lines(&dir.path().join(LOG_FILE))
            .iter()
            .map(|l| l["fields"]["message"].as_str().unwrap_or("").to_owned())
            .collect();
        assert_eq!(
            messages,
            ["call served", "call refused", "spool write failed"],
            "the file has every level"
        );
    }

    /// What rustls logs for a refused handshake (through the `log` bridge, under its module's
    /// target), and one of its errors.
    fn tls_library_events() {
        tracing::warn!(target: "rustls::conn", "Sending fatal alert BadCertificate");
        tracing::error!(target: "rustls::server::hs", "unrecoverable TLS state");
        tracing::warn!("TLS handshake refused");
    }

    fn messages(path: &Path) -> Vec<String> {
        json_lines(path)
            .iter()
            .map(|l| l["fields"]["message"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    #[test]
    fn the_tls_library_logs_errors_only_unless_the_level_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr = Captured::default();
        let (default, guard) =
            subscriber(&file_targets(dir.path()), stderr.clone()).expect("logging");
        tracing::subscriber::with_default(default, tls_library_events);
        drop(guard);
        assert_eq!(
            messages(&dir.path().join(LOG_FILE)),
            ["unrecoverable TLS state", "TLS handshake refused"]
        );
        assert!(
            !stderr.text().contains("BadCertificate"),
            "{}",
            stderr.text()
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let targets = LogTargets {
            level: "info,rustls=warn".to_owned(),
            ..file_targets(dir.path())
        };
        let (named, guard) = subscriber(&targets, Captured::default()).expect("logging");
        tracing::subscriber::with_default(named, tls_library_events);
        drop(guard);
        assert_eq!(
            messages(&dir.path().join(LOG_FILE)),
            [
                "Sending fatal alert BadCertificate",
                "unrecoverable TLS state",
                "TLS handshake refused"
            ]
        );
    }

    #[test]
    fn without_a_file_stderr_follows_the_level_filter() {
        let stderr = Captured::default();
        let targets = LogTargets {
            level: "info".to_owned(),
            file: None,
        };
        let (subscriber, _guard) = subscriber(&targets, stderr.clone()).expect("logging");
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("demo started");
            tracing::debug!("below the level");
        });
        let text = stderr.text();
        assert!(text.contains("demo started"), "{text}");
        assert!(!text.contains("below the level"), "{text}");
    }

    #[test]
    fn a_panic_is_logged_to_the_file_and_left_off_the_stderr_layer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr = Captured::default();
        let (subscriber, guard) =
            subscriber(&file_targets(dir.path()), stderr.clone()).expect("logging");
        install_panic_hook();
        let result = tracing::subscriber::with_default(subscriber, || {
            std::panic::catch_unwind(|| panic!("sampler state is inconsistent"))
        });
        assert!(result.is_err());
        drop(guard);
        let lines = json_lines(&dir.path().join(LOG_FILE));
        let panic = lines
            .iter()
            .find(|l| l["target"] == PANIC_TARGET)
            .expect("the panic is in the file");
        assert_eq!(panic["level"], "ERROR");
        assert_eq!(panic["fields"]["message"], "thread panicked");
        assert_eq!(panic["fields"]["panic"], "sampler state is inconsistent");
        assert!(
            panic["fields"]["location"]
                .as_str()
                .is_some_and(|l| l.contains("logging.rs")),
            "{panic}"
        );
        let text = stderr.text();
        assert!(
            !text.contains("sampler state is inconsistent"),
            "the standard hook prints the panic; the layer must not print it again: {text}"
        );
    }

    #[test]
    fn rotates_by_size_and_keeps_whole_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = RotatingFile::open(dir.path(), 1000, 3).expect("open");
        let (writer, thread) = spawn_writer(file, QUEUE_LINES).expect("writer");
        let guard = LogGuard {
            writer: Some((writer.clone(), thread)),
        };
        for i in 0..100 {
            line(
                &writer,
                &format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(40)),
            );
        }
        drop(guard);
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

    /// What a test sink does with a line it takes: hands it to the test, without its newline.
    fn record(written: &mpsc::Sender<String>, line: &[u8]) -> std::io::Result<()> {
        let _ = written.send(String::from_utf8_lossy(line).trim_end().to_owned());
        Ok(())
    }

    /// A sink that holds its first line until released, and says when it has written a line.
    struct Held {
        entered: mpsc::Sender<()>,
        release: mpsc::Receiver<()>,
        written: mpsc::Sender<String>,
        first: bool,
    }

    impl LineSink for Held {
        fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
            if std::mem::take(&mut self.first) {
                let _ = self.entered.send(());
                let _ = self.release.recv();
            }
            record(&self.written, line)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A sink whose writes fail while `full` is set, like a file on a full disk.
    struct Full {
        full: Arc<std::sync::atomic::AtomicBool>,
        written: mpsc::Sender<String>,
    }

    impl LineSink for Full {
        fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
            if self.full.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            record(&self.written, line)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_the_file_does_not_take_are_counted_and_reported_once_it_does() {
        let full = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (written_tx, written) = mpsc::channel();
        let sink = Full {
            full: full.clone(),
            written: written_tx,
        };
        let before = lines_dropped_total();
        let (writer, thread) = spawn_writer(sink, 16).expect("writer");
        let guard = LogGuard {
            writer: Some((writer.clone(), thread)),
        };
        for n in 0..5 {
            line(&writer, &n.to_string());
        }
        // Wait until the writer has tried all five (the total counts each failure).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while lines_dropped_total() < before + 5 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(lines_dropped_total() >= before + 5);
        full.store(false, Ordering::SeqCst);
        line(&writer, "5");
        let gap: serde_json::Value =
            serde_json::from_str(&written.recv().expect("gap")).expect("JSON");
        assert_eq!(gap["fields"]["message"], "log lines dropped");
        assert_eq!(gap["fields"]["dropped"], 5);
        assert_eq!(written.recv().expect("line 5"), "5");
        drop(guard);
        assert!(
            written.try_iter().all(|l| !l.contains("dropped")),
            "reported once"
        );
    }

    #[test]
    fn a_full_queue_drops_lines_and_reports_how_many_where_they_were_lost() {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let (written_tx, written) = mpsc::channel();
        let sink = Held {
            entered: entered_tx,
            release: release_rx,
            written: written_tx,
            first: true,
        };
        let (writer, thread) = spawn_writer(sink, 4).expect("writer");
        let guard = LogGuard {
            writer: Some((writer.clone(), thread)),
        };
        line(&writer, "0");
        entered
            .recv()
            .expect("the writer holds line 0; the queue is empty");
        for n in 1..=7 {
            line(&writer, &n.to_string()); // 1..=4 fill the queue, 5..=7 are dropped
        }
        release.send(()).expect("release");
        let mut lines: Vec<String> = (0..5).map(|_| written.recv().expect("line")).collect();
        assert_eq!(lines, ["0", "1", "2", "3", "4"]);
        line(&writer, "8"); // the queue is empty again: the gap is reported before this line
        lines.push(written.recv().expect("gap"));
        lines.push(written.recv().expect("line 8"));
        let gap: serde_json::Value = serde_json::from_str(&lines[5]).expect("JSON");
        assert_eq!(gap["level"], "WARN");
        assert_eq!(gap["fields"]["message"], "log lines dropped");
        assert_eq!(gap["fields"]["dropped"], 3);
        assert_eq!(lines[6], "8");
        // The process-wide total (other tests may drop lines too) counts them and is not reset.
        assert!(lines_dropped_total() >= 3, "{}", lines_dropped_total());

        for n in 9..=12 {
            line(&writer, &n.to_string());
        }
        // Whatever did not fit is still counted when the guard stops the writer.
        drop(guard);
        let rest: Vec<String> = written.try_iter().collect();
        let kept = rest.iter().filter(|l| !l.starts_with('{')).count() as u64;
        let reported: u64 = rest
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["fields"]["dropped"].as_u64())
            .sum();
        assert_eq!(kept + reported, 4, "{rest:?}");
    }
}
