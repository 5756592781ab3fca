//! The jex-agent LaunchDaemon plist: a typed model and the checks that tie it to [`crate::layout`].
//!
//! The plist itself is a static file, `launchd/com.jexcloud.agent.plist`, shipped unchanged in the
//! payload. [`LaunchDaemon`] parses it with the `plist` crate (keys in launchd's PascalCase,
//! unknown keys rejected so that a key added by hand is also added here and checked), and
//! [`check`] lists every way it disagrees with the layout: program path, `--config` path,
//! `RunAtLoad` (postinstall's bootstrap is the agent's only start), `ExitTimeOut` above the
//! agent's drain, a `KeepAlive` that relaunches after a crash, a `ProcessType` that is not
//! throttled, and log paths inside the log directory. The package builder refuses to package a
//! plist with any problem.

use serde::{Deserialize, Serialize};

use crate::layout;

/// The plist as shipped in the repository and in the payload.
pub const PLIST_BYTES: &[u8] = include_bytes!("../../launchd/com.jexcloud.agent.plist");

/// A LaunchDaemon definition, limited to the keys jex-agent uses (see `launchd.plist(5)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct LaunchDaemon {
    /// Unique job label.
    pub label: String,
    /// argv of the job; the first element is the absolute program path.
    pub program_arguments: Vec<String>,
    /// Start the job as soon as it is loaded.
    pub run_at_load: bool,
    /// When launchd relaunches the job.
    pub keep_alive: KeepAlive,
    /// Minimum seconds between two launches.
    pub throttle_interval: u64,
    /// Seconds between SIGTERM and SIGKILL when stopping the job.
    pub exit_time_out: u64,
    /// Resource class of the job.
    pub process_type: ProcessType,
    /// User the job runs as.
    pub user_name: String,
    /// Group the job runs as.
    pub group_name: String,
    /// umask of the job, as a decimal integer.
    pub umask: u32,
    /// Working directory of the job (must exist when the job starts).
    pub working_directory: String,
    /// File receiving the job's stdout.
    pub standard_out_path: String,
    /// File receiving the job's stderr.
    pub standard_error_path: String,
    /// Soft resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_resource_limits: Option<ResourceLimits>,
    /// Hard resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_resource_limits: Option<ResourceLimits>,
}

/// The `KeepAlive` key: a boolean or a dictionary of conditions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeepAlive {
    /// `true`: relaunch after any exit; `false`: never relaunch.
    Always(bool),
    /// Relaunch depending on how the job exited.
    Conditions(KeepAliveConditions),
}

/// The conditions of a dictionary `KeepAlive` that jex-agent may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct KeepAliveConditions {
    /// `false`: relaunch after a non-zero exit or a signal; `true`: only after exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successful_exit: Option<bool>,
    /// `true`: relaunch after a signal (crash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crashed: Option<bool>,
}

impl KeepAlive {
    /// Whether launchd relaunches the job after it crashes (killed by a signal or a non-zero exit).
    pub fn relaunches_after_crash(&self) -> bool {
        match self {
            KeepAlive::Always(always) => *always,
            KeepAlive::Conditions(c) => c.successful_exit == Some(false) || c.crashed == Some(true),
        }
    }
}

/// The `ProcessType` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessType {
    /// Throttled CPU and I/O.
    Background,
    /// The default.
    Standard,
    /// Limits follow XPC activity.
    Adaptive,
    /// No resource limits, like an app.
    Interactive,
}

/// `SoftResourceLimits` / `HardResourceLimits`, limited to the limits jex-agent sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ResourceLimits {
    /// Maximum open file descriptors.
    pub number_of_files: u64,
}

/// A plist that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum LaunchdError {
    /// The plist is not a valid property list or has unexpected keys or types.
    #[error("parse launchd plist: fix the XML or the key named in the cause")]
    Parse(#[source] plist::Error),
}

/// Parses a LaunchDaemon plist (XML or binary).
pub fn parse(bytes: &[u8]) -> Result<LaunchDaemon, LaunchdError> {
    plist::from_bytes(bytes).map_err(LaunchdError::Parse)
}

/// Lists every way `daemon` disagrees with [`crate::layout`]; empty when it is correct.
pub fn check(daemon: &LaunchDaemon) -> Vec<String> {
    let mut problems = Vec::new();
    let mut require = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    require(
        daemon.label == layout::LABEL,
        format!("Label is {:?}, expected {:?}", daemon.label, layout::LABEL),
    );
    let expected_args = [
        layout::AGENT_BINARY,
        layout::RUN_SUBCOMMAND,
        layout::CONFIG_FLAG,
        layout::CONFIG_PATH,
    ];
    require(
        daemon.program_arguments == expected_args,
        format!(
            "ProgramArguments are {:?}, expected {:?}",
            daemon.program_arguments, expected_args
        ),
    );
    require(daemon.run_at_load, "RunAtLoad must be true".to_owned());
    require(
        daemon.keep_alive.relaunches_after_crash(),
        format!(
            "KeepAlive {:?} does not relaunch the agent after a crash",
            daemon.keep_alive
        ),
    );
    require(
        daemon.throttle_interval == layout::THROTTLE_INTERVAL_SECS,
        format!(
            "ThrottleInterval is {}, expected {}",
            daemon.throttle_interval,
            layout::THROTTLE_INTERVAL_SECS
        ),
    );
    require(
        daemon.exit_time_out > layout::SHUTDOWN_GRACE_SECS
            && daemon.exit_time_out == layout::EXIT_TIMEOUT_SECS,
        format!(
            "ExitTimeOut is {}, expected {} (above the {} s drain)",
            daemon.exit_time_out,
            layout::EXIT_TIMEOUT_SECS,
            layout::SHUTDOWN_GRACE_SECS
        ),
    );
    require(
        matches!(
            daemon.process_type,
            ProcessType::Interactive | ProcessType::Standard
        ),
        format!(
            "ProcessType {:?} throttles the erase; use Interactive or Standard",
            daemon.process_type
        ),
    );
    require(
        daemon.user_name == layout::USER_NAME && daemon.group_name == layout::GROUP_NAME,
        format!(
            "UserName/GroupName are {}/{}, expected {}/{}",
            daemon.user_name,
            daemon.group_name,
            layout::USER_NAME,
            layout::GROUP_NAME
        ),
    );
    require(
        daemon.umask == layout::UMASK,
        format!(
            "Umask is {:#o}, expected {:#o}",
            daemon.umask,
            layout::UMASK
        ),
    );
    require(
        daemon.working_directory == layout::STATE_DIR,
        format!(
            "WorkingDirectory is {:?}, expected {:?}",
            daemon.working_directory,
            layout::STATE_DIR
        ),
    );
    for (key, path, expected) in [
        (
            "StandardOutPath",
            &daemon.standard_out_path,
            layout::LAUNCHD_STDOUT_LOG,
        ),
        (
            "StandardErrorPath",
            &daemon.standard_error_path,
            layout::LAUNCHD_STDERR_LOG,
        ),
    ] {
        require(
            path == expected && path.starts_with(&format!("{}/", layout::LOG_DIR)),
            format!(
                "{key} is {path:?}, expected {expected:?} inside {}",
                layout::LOG_DIR
            ),
        );
    }
    for (key, limits) in [
        ("SoftResourceLimits", &daemon.soft_resource_limits),
        ("HardResourceLimits", &daemon.hard_resource_limits),
    ] {
        require(
            limits.as_ref().map(|l| l.number_of_files) == Some(layout::NUMBER_OF_FILES),
            format!(
                "{key} NumberOfFiles is {:?}, expected {}",
                limits.as_ref().map(|l| l.number_of_files),
                layout::NUMBER_OF_FILES
            ),
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> LaunchDaemon {
        parse(PLIST_BYTES).expect("shipped plist parses")
    }

    #[test]
    fn shipped_plist_matches_the_layout() {
        let daemon = shipped();
        assert_eq!(check(&daemon), Vec::<String>::new());
        // The individual facts, spelled out against the constants.
        assert_eq!(daemon.program_arguments[0], layout::AGENT_BINARY);
        let config_at = daemon
            .program_arguments
            .iter()
            .position(|a| a == "--config")
            .expect("--config present");
        assert_eq!(daemon.program_arguments[config_at + 1], layout::CONFIG_PATH);
        assert!(daemon.exit_time_out > layout::SHUTDOWN_GRACE_SECS);
        assert_ne!(daemon.process_type, ProcessType::Background);
        assert!(daemon.keep_alive.relaunches_after_crash());
        assert!(
            daemon
                .standard_error_path
                .starts_with(&format!("{}/", layout::LOG_DIR))
        );
        assert!(
            daemon
                .standard_out_path
                .starts_with(&format!("{}/", layout::LOG_DIR))
        );
        assert_eq!(daemon.user_name, "root");
        // postinstall starts the agent with the bootstrap alone, which starts a job only when
        // RunAtLoad is true (packaging/scripts/postinstall).
        assert!(daemon.run_at_load);
    }

    #[test]
    fn shipped_plist_round_trips_through_the_typed_model() {
        let daemon = shipped();
        let mut xml = Vec::new();
        plist::to_writer_xml(&mut xml, &daemon).expect("serialize");
        assert_eq!(parse(&xml).expect("reparse"), daemon);
    }

    #[test]
    fn shipped_plist_is_accepted_by_python_plistlib() {
        // An independent reader of the same file (python3 is on every CI image we use).
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../launchd/com.jexcloud.agent.plist"
        );
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                "import plistlib,sys; d=plistlib.load(open(sys.argv[1],'rb')); print(d['Label'], d['ExitTimeOut'])",
                path,
            ])
            .output()
            .expect("python3 must be installed to run this test");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{} {}", layout::LABEL, layout::EXIT_TIMEOUT_SECS)
        );
    }

    #[test]
    fn check_reports_each_wrong_key() {
        let mut daemon = shipped();
        daemon.exit_time_out = layout::SHUTDOWN_GRACE_SECS;
        daemon.process_type = ProcessType::Background;
        daemon.keep_alive = KeepAlive::Conditions(KeepAliveConditions {
            successful_exit: Some(true),
            crashed: None,
        });
        daemon.program_arguments[0] = "/usr/local/libexec/jex-agent".to_owned();
        daemon.standard_error_path = "/tmp/err.log".to_owned();
        daemon.run_at_load = false;
        let problems = check(&daemon);
        for key in [
            "ExitTimeOut",
            "ProcessType",
            "KeepAlive",
            "ProgramArguments",
            "StandardErrorPath",
            "RunAtLoad",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(key)),
                "{key} not reported in {problems:?}"
            );
        }
        assert_eq!(problems.len(), 6, "{problems:?}");
    }

    #[test]
    fn keep_alive_conditions_that_relaunch_after_a_crash() {
        let on_failure = KeepAlive::Conditions(KeepAliveConditions {
            successful_exit: Some(false),
            crashed: None,
        });
        assert!(on_failure.relaunches_after_crash());
        assert!(KeepAlive::Always(true).relaunches_after_crash());
        assert!(!KeepAlive::Always(false).relaunches_after_crash());
        let parsed = parse(
            br#"<?xml version="1.0"?><plist version="1.0"><dict><key>SuccessfulExit</key><false/></dict></plist>"#,
        );
        // A bare KeepAlive dictionary is not a daemon: the typed parse must reject it.
        assert!(parsed.is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = String::from_utf8(PLIST_BYTES.to_vec()).expect("utf-8");
        let extra = text.replace(
            "<key>RunAtLoad</key>",
            "<key>Disabled</key><true/><key>RunAtLoad</key>",
        );
        assert!(parse(extra.as_bytes()).is_err());
    }
}
