//! Running external tools (`cryptsetup`, `diskutil`, `ioreg`) with a deadline.
//!
//! Invariants:
//! - the program is given by absolute path (checked by the backends' constructors); nothing is
//!   looked up in `$PATH`;
//! - the environment is cleared and replaced by a fixed `PATH` (for the tool's own helpers) and
//!   `LC_ALL=C` (stable, parseable messages); stdin is `/dev/null`;
//! - a tool that does not finish within its timeout is killed (by its own process id) and
//!   reported, so a hung `diskutil` cannot stall an erase forever;
//! - stdout and stderr are captured completely (read on their own threads, so a chatty tool
//!   cannot deadlock on a full pipe).

use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The `PATH` given to tools: system directories only.
pub const TOOL_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Default timeout for queries (`luksDump`, `apfs list`).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Default timeout for destructive commands (`luksErase`, `apfs deleteVolume`): deleting a
/// large, busy APFS volume can take a while.
pub const DESTROY_TIMEOUT: Duration = Duration::from_secs(600);

/// How often a running tool is polled for completion.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What a finished tool produced.
#[derive(Debug)]
pub struct ToolOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
}

impl ToolOutput {
    /// A short, single-line description of a failure for error messages: the exit status and
    /// the last non-empty line of stderr (or stdout when stderr is empty).
    pub fn failure_summary(&self) -> String {
        let last_line = |bytes: &[u8]| {
            String::from_utf8_lossy(bytes)
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_owned)
        };
        let said = last_line(&self.stderr).or_else(|| last_line(&self.stdout));
        match said {
            Some(line) => format!("{}: {line}", self.status),
            None => self.status.to_string(),
        }
    }
}

/// Why a tool run failed before producing an exit status.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The program could not be started.
    #[error("starting the program")]
    Start(#[source] std::io::Error),
    /// Waiting for the program failed.
    #[error("waiting for the program")]
    Wait(#[source] std::io::Error),
    /// The program ran past its timeout and was killed.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
}

/// Runs `program args…` with a cleared environment, capturing its output, killing it after
/// `timeout`.
pub fn run<S: AsRef<OsStr>>(
    program: &Path,
    args: &[S],
    timeout: Duration,
) -> Result<ToolOutput, RunError> {
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", TOOL_PATH)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RunError::Start)?;

    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                // Kill our own child by its handle; the error is ignored because the child may
                // have exited between try_wait and kill, which is what we want anyway.
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::TimedOut(timeout));
            }
            Ok(None) => thread::sleep(POLL_INTERVAL),
            Err(err) => return Err(RunError::Wait(err)),
        }
    };

    Ok(ToolOutput {
        status,
        stdout: stdout.map(join).unwrap_or_default(),
        stderr: stderr.map(join).unwrap_or_default(),
    })
}

fn drain<R: Read + Send + 'static>(mut pipe: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error (the pipe closed early) leaves what was read so far, which is all the
        // tool managed to say.
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

fn join(handle: thread::JoinHandle<Vec<u8>>) -> Vec<u8> {
    // The reader thread only reads into a Vec and cannot panic short of allocation failure;
    // an empty output is the honest answer if it somehow did.
    handle.join().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_stdout_stderr_and_status() {
        let out = run(
            Path::new("/bin/sh"),
            &["-c", "echo out; echo err >&2; exit 3"],
            QUERY_TIMEOUT,
        )
        .unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.failure_summary(), "exit status: 3: err");
    }

    #[test]
    fn runs_with_a_cleared_environment() {
        let out = run(Path::new("/usr/bin/env"), &[] as &[&str], QUERY_TIMEOUT).unwrap();
        let mut vars: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        vars.sort();
        assert_eq!(
            vars,
            vec!["LC_ALL=C".to_owned(), format!("PATH={TOOL_PATH}")]
        );
    }

    #[test]
    fn kills_a_tool_that_runs_past_its_timeout() {
        let err = run(
            Path::new("/bin/sh"),
            &["-c", "exec sleep 30"],
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(matches!(err, RunError::TimedOut(_)), "{err:?}");
    }

    #[test]
    fn reports_a_missing_program() {
        let err = run(
            Path::new("/nonexistent/tool"),
            &[] as &[&str],
            QUERY_TIMEOUT,
        )
        .unwrap_err();
        assert!(matches!(err, RunError::Start(_)), "{err:?}");
    }

    #[test]
    fn does_not_deadlock_on_large_output() {
        let out = run(
            Path::new("/bin/sh"),
            &[
                "-c",
                "head -c 1000000 /dev/zero; head -c 500000 /dev/zero >&2",
            ],
            QUERY_TIMEOUT,
        )
        .unwrap();
        assert_eq!(out.stdout.len(), 1_000_000);
        assert_eq!(out.stderr.len(), 500_000);
    }
}
