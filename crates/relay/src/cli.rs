//! The command line: `jex-relay run --config FILE` and `jex-relay check-config --config FILE`.
//! Logs are JSON lines on stderr (journald and launchd keep them), filtered by `RELAY_LOG`
//! (default `info`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// Follows every agent's telemetry stream and lands it in NATS JetStream (and Prometheus
/// remote_write), exactly once and with every gap marked.
#[derive(Debug, Parser)]
#[command(name = "jex-relay", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Follow the hosts of the configuration until SIGTERM (SIGHUP reloads the host list).
    Run {
        /// The configuration file (TOML).
        #[arg(long, env = "JEX_RELAY_CONFIG")]
        config: PathBuf,
    },
    /// Check a configuration file and print what it sets.
    CheckConfig {
        /// The configuration file (TOML).
        #[arg(long, env = "JEX_RELAY_CONFIG")]
        config: PathBuf,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                println!("{}", crate::run::summary(&c, &config));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("jex-relay: {}", jex_agent::error_chain(&e));
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            init_logging();
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("jex-relay: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(crate::run::run(&config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let message = jex_agent::error_chain(&e);
                    tracing::error!("jex-relay cannot run: {message}");
                    eprintln!("jex-relay: {message}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
