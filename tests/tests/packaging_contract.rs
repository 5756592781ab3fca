//! The agent and the package agree: the launchd plist starts the agent the way the agent
//! expects, gives it more time to drain than it takes, and points at the agent's own default
//! paths; `check-config` answers postinstall with the exit codes it relies on.

use anyhow::Result;
use jex_agent::config::defaults::macos;
use jex_packaging::layout;

#[test]
fn drain_time_paths_and_exit_codes_match_the_package_layout() {
    assert_eq!(
        jex_agent::app::SHUTDOWN_GRACE.as_secs(),
        layout::SHUTDOWN_GRACE_SECS
    );
    assert!(layout::EXIT_TIMEOUT_SECS > jex_agent::app::SHUTDOWN_GRACE.as_secs());
    assert_eq!(macos::CONFIG_PATH, layout::CONFIG_PATH);
    assert_eq!(macos::STATE_DIR, layout::STATE_DIR);
    assert_eq!(macos::LOG_DIR, layout::LOG_DIR);
    assert_eq!(
        format!("{}/{}", macos::LOG_DIR, jex_agent::logging::LOG_FILE),
        layout::AGENT_LOG
    );
    assert_eq!(
        jex_agent::app::ExitKind::Usage as i32,
        layout::EXIT_CONFIG_INVALID
    );
}

#[test]
fn the_plist_runs_the_agent_with_its_own_subcommand_and_config_flag() -> Result<()> {
    let plist = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../launchd/com.jexcloud.agent.plist"
    ))?;
    let daemon = jex_packaging::launchd::parse(&plist)?;
    assert_eq!(daemon.exit_time_out, layout::EXIT_TIMEOUT_SECS);
    assert_eq!(
        daemon.program_arguments,
        vec![
            layout::AGENT_BINARY.to_owned(),
            "run".into(),
            "--config".into(),
            layout::CONFIG_PATH.to_owned()
        ]
    );
    // The same arguments parse with the agent's own command line.
    use clap::Parser;
    let cli = jex_agent::cli::Cli::try_parse_from(&daemon.program_arguments)?;
    match cli.command {
        jex_agent::cli::Command::Run { config } => {
            assert_eq!(config.to_str(), Some(layout::CONFIG_PATH))
        }
        other => panic!("the plist starts {other:?}"),
    }
    Ok(())
}

#[test]
fn check_config_exits_64_on_the_unedited_example_and_0_on_a_complete_config() -> Result<()> {
    let bin = jex_e2e::agent_bin()?;
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../launchd/agent.toml.example");
    let out = jex_e2e::output_within(
        std::process::Command::new(&bin).args(["check-config", "--config", example]),
        jex_e2e::COMMAND_DEADLINE,
    )?;
    assert_eq!(out.status.code(), Some(layout::EXIT_CONFIG_INVALID));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("key `tls.cert`") && err.contains("agent.pem"),
        "says which certificate is missing: {err}"
    );

    let pki = jex_e2e::TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let config = jex_e2e::write_config(&pki, dir.path(), &jex_e2e::AgentOptions::default())?;
    let out = jex_e2e::output_within(
        std::process::Command::new(&bin)
            .arg("check-config")
            .arg("--config")
            .arg(&config),
        jex_e2e::COMMAND_DEADLINE,
    )?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("host h-e2e"));

    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&config)?.replace("interval_ms = 100", "interval_ms = 5"),
    )?;
    let out = jex_e2e::output_within(
        std::process::Command::new(&bin)
            .arg("check-config")
            .arg("--config")
            .arg(&broken),
        jex_e2e::COMMAND_DEADLINE,
    )?;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key `telemetry.interval_ms`"));
    Ok(())
}
