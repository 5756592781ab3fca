//! Running the inventory's tools: by absolute path, no shell, no `$PATH` lookup, stdin from
//! `/dev/null`, killed after a deadline, behind a trait ([`CommandRunner`]) so every parser is
//! tested on any machine with a runner that answers from captured outputs.

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::inventory::InventoryError;

/// How long one tool run may take before it is killed.
pub const TOOL_DEADLINE: Duration = Duration::from_secs(30);

/// What a command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
}

/// Runs a program by absolute path with arguments, no shell, no `$PATH` lookup.
pub trait CommandRunner: fmt::Debug + Send + Sync {
    /// Runs `program` with `args` and returns its output once it has ended.
    fn run(&self, program: &Path, args: &[OsString]) -> std::io::Result<CommandOutput>;
}

/// The real runner: stdin from /dev/null, stdout and stderr captured, killed after `deadline`.
#[derive(Debug, Clone, Copy)]
pub struct SystemRunner {
    /// How long a run may take.
    pub deadline: Duration,
}

impl Default for SystemRunner {
    fn default() -> Self {
        Self {
            deadline: TOOL_DEADLINE,
        }
    }
}

impl CommandRunner for SystemRunner {
    fn run(&self, program: &Path, args: &[OsString]) -> std::io::Result<CommandOutput> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // Read both pipes on their own threads, so a chatty child never blocks on a full pipe
        // while this thread waits for it to exit.
        let reader = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut pipe) = pipe {
                    // A read error only shortens what is reported; the exit status decides.
                    let _ = pipe.read_to_end(&mut buf);
                }
                buf
            })
        };
        let out = reader(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err = reader(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if started.elapsed() >= self.deadline {
                // Killing may race with a normal exit; either way it is reaped below.
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("killed after {} ms", self.deadline.as_millis()),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let join = |h: std::thread::JoinHandle<Vec<u8>>| h.join().unwrap_or_default();
        Ok(CommandOutput {
            code: status.code(),
            stdout: join(out),
            stderr: join(err),
        })
    }
}

/// Runs `program args` through `runner` and returns its standard output; a run that cannot
/// start, times out or exits unsuccessfully is an [`InventoryError`] naming the command.
pub(crate) fn run_tool(
    runner: &dyn CommandRunner,
    program: &Path,
    args: &[OsString],
) -> Result<Vec<u8>, InventoryError> {
    let output = runner
        .run(program, args)
        .map_err(|source| InventoryError::Run {
            program: program.display().to_string(),
            args: shown(args),
            source,
        })?;
    if output.code != Some(0) {
        return Err(InventoryError::ToolFailed {
            program: program.display().to_string(),
            args: shown(args),
            status: output
                .code
                .map_or("a signal".to_owned(), |c| format!("exit code {c}")),
            stderr: tail(&output.stderr),
        });
    }
    Ok(output.stdout)
}

/// The error for a tool whose output is not `expected`.
pub(crate) fn unexpected_output(
    program: &Path,
    args: &[OsString],
    stdout: &[u8],
    expected: &'static str,
) -> InventoryError {
    InventoryError::ToolOutput {
        program: program.display().to_string(),
        args: shown(args),
        output: tail(stdout),
        expected,
    }
}

/// `program args…` as one line, as the runner's messages and test runners name a command.
pub fn command_line(program: &Path, args: &[OsString]) -> String {
    format!("{} {}", program.display(), shown(args))
}

/// Arguments as one space-separated string, for messages.
fn shown(args: &[OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last 200 characters of a tool's output, trimmed, for an error message.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let start = text.char_indices().rev().nth(199).map_or(0, |(i, _)| i);
    text[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_runner_captures_output_and_kills_at_the_deadline() {
        let runner = SystemRunner::default();
        let out = runner
            .run(
                Path::new("/bin/sh"),
                &["-c".into(), "echo out; echo err >&2; exit 3".into()],
            )
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");

        let quick = SystemRunner {
            deadline: Duration::from_millis(200),
        };
        let started = Instant::now();
        let err = quick
            .run(Path::new("/bin/sleep"), &["30".into()])
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn tail_keeps_the_last_200_characters() {
        let long = "é".repeat(300);
        assert_eq!(tail(long.as_bytes()).chars().count(), 200);
        assert_eq!(tail(b"  short \n"), "short");
    }
}
