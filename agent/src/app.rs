//! Wiring: the one place that builds every part of the agent from the configuration and
//! connects them. Nothing else constructs platform services, so tests can run a real agent
//! in-process ([`start`]) or as a process (`jex-agent run`).
//!
//! - `exit`: the one map from failures to exit codes ([`AppError::exit_kind`], [`ExitKind`]);
//! - `preflight`: what the configuration names, checked on this host before
//!   anything starts (TLS material, erase targets, the listen addresses); `jex-agent check-config`
//!   runs the same checks, so both stop on the same problem with the same message and code;
//! - `start`: every part built and started, and the [`RunningAgent`] that stops
//!   them;
//! - this file: `jex-agent run` (configuration, logs, runtime, signals).
//!
//! Signals: SIGHUP reloads the TLS certificate and key (open streams keep running); SIGTERM
//! and SIGINT stop telemetry (its last record synced and sent on live streams), stop accepting,
//! end open streams (clients resume from their last `seq`) and exit within [`SHUTDOWN_GRACE`].
//! An erase in progress is not waited for: its journal resumes it at the next start.
//!
//! A first start on a full disk (`ENOSPC`, `EDQUOT`) does not exit: the spool starts detached
//! (telemetry live only, not durable) and, when the erase state directory cannot be created,
//! the erase service is unavailable ([`EraseSlot::Unavailable`](crate::server::EraseSlot)):
//! `GetHost` and the status socket are served, erase calls are refused with the directory and
//! the OS error, a WARN line says so, and the conditions `SPOOL_NOT_DURABLE` and
//! `ERASE_UNAVAILABLE` are raised. Both recover without a restart once there is room: the spool
//! takes records again, and the erase service is opened again every few seconds until it opens.

pub(crate) mod exit;
pub(crate) mod preflight;
pub(crate) mod start;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

pub use exit::{AppError, ExitKind, TargetProblem};
pub use preflight::{ListenCheck, Preflight, check_targets, preflight};
pub use start::{RunningAgent, start};
#[cfg(feature = "dev")]
pub use start::{Seams, start_with};

use crate::config::Config;
use crate::error_chain;

/// How long the agent drains on SIGTERM before it exits anyway. The launchd plist's
/// `ExitTimeOut` is larger than this.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// How often the TLS files are checked for replacement (besides SIGHUP).
pub const TLS_FILE_POLL: Duration = Duration::from_secs(5);

/// `jex-agent run`: configuration, logs, [`preflight`], runtime, signals; returns the process
/// exit code ([`AppError::exit_kind`] when it cannot start).
pub fn run(config_path: &Path) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => return refused_before_logging(&e.into()),
    };
    let targets = crate::logging::LogTargets {
        level: config.logging.level.clone(),
        file: Some((
            config.logging.dir.clone(),
            config.logging.max_file_bytes,
            config.logging.max_files,
        )),
    };
    // Declared before the runtime, so dropped after it: the last lines are written out.
    let _log = match crate::logging::init(&targets) {
        Ok(guard) => guard,
        Err(e) => return refused_before_logging(&e.into()),
    };
    let checked = preflight(&config).and_then(|found| {
        let held = [
            ("server.listen", config.server.listen, Some(found.listen)),
            (
                "metrics.listen",
                config.metrics.listen,
                found.metrics_listen,
            ),
        ];
        for (key, addr, check) in held {
            if let Some(ListenCheck::HeldByAgent { pid }) = check {
                return Err(AppError::AgentRunning {
                    place: config.source.place(key),
                    key,
                    addr,
                    pid,
                });
            }
        }
        Ok(())
    });
    if let Err(e) = checked {
        return refused(&e);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .thread_name("jex-agent")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return refused(&AppError::Runtime(e)),
    };
    runtime.block_on(async move {
        let agent = match start(config).await {
            Ok(a) => a,
            Err(e) => return refused(&e),
        };
        wait_for_signals(&agent).await;
        tracing::info!("stopping");
        agent.shutdown().await;
        tracing::info!("stopped");
        ExitKind::Ok.into()
    })
}

/// Prints why the agent cannot start when there is no log yet, and returns its exit code.
fn refused_before_logging(e: &AppError) -> ExitCode {
    eprintln!("jex-agent: {}", error_chain(e));
    e.exit_kind().into()
}

/// Logs why the agent cannot start (the JSON log, and stderr for launchd's log file), and
/// returns its exit code.
fn refused(e: &AppError) -> ExitCode {
    let exit = e.exit_kind();
    tracing::error!(error = %error_chain(e), exit_code = exit as u8, "agent failed to start");
    exit.into()
}

async fn wait_for_signals(agent: &RunningAgent) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => match agent.reload_tls() {
                Ok(()) => tracing::info!("TLS certificate and key reloaded"),
                Err(e) => tracing::error!(error = %error_chain(&e), "TLS reload failed; keeping the previous certificate"),
            },
        }
    }
}

#[cfg(test)]
mod tests;
