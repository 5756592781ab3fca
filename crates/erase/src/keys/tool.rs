//! The key backends' view of a tool run: [`jex_platform::process::run`] with failures turned
//! into [`KeyError`]s that name the target and the program.

use std::path::Path;
use std::time::Duration;

pub use jex_platform::process::{
    DESTROY_TIMEOUT, QUERY_TIMEOUT, RunError, TOOL_PATH, ToolOutput, run,
};

use super::KeyError;

/// [`run`] for a backend: failures to start or finish become [`KeyError`]s naming the target
/// and the program. The exit status is left to the caller, which knows what it means.
pub(crate) fn run_for_target(
    target: &str,
    program: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<ToolOutput, KeyError> {
    run(program, args, timeout).map_err(|err| match err {
        RunError::Start(source) | RunError::Wait(source) => KeyError::ToolStart {
            target: target.to_owned(),
            program: program.display().to_string(),
            source,
        },
        RunError::TimedOut(t) => KeyError::ToolTimeout {
            target: target.to_owned(),
            program: program.display().to_string(),
            args: args.join(" "),
            seconds: t.as_secs(),
        },
    })
}

/// The error for a tool that ran and exited unsuccessfully.
pub(crate) fn failed(target: &str, program: &Path, args: &[&str], out: &ToolOutput) -> KeyError {
    KeyError::Tool {
        target: target.to_owned(),
        program: program.display().to_string(),
        detail: format!("{} exited with {}", args.join(" "), out.failure_summary()),
    }
}
