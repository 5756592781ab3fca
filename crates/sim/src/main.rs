//! `jex-sim`: N simulated Apple Silicon hosts in one process, each a real jex-agent (see the
//! library's docs).
//!
//! ```text
//! jex-sim run --hosts N --dir DIR [--seed S] [--interval-ms 1000] [--base-ip 127.0.1.1]
//!             [--port 7443] [--print-relay-config FILE] [--jetstream-url URL]
//! jex-sim ctl --dir DIR COMMAND...      (restart sim-0003, stall sim-0003 10s, help, …)
//! ```
//!
//! `run` starts the fleet, prints the relay's host list (or writes it to FILE), serves the
//! control socket `DIR/sim.sock` and runs until SIGTERM or SIGINT, then stops every agent.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use jex_sim::{Fleet, FleetConfig, control};

#[derive(Debug, Parser)]
#[command(
    name = "jex-sim",
    version,
    about = "N simulated Apple Silicon hosts in one process, each a real jex-agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Starts the fleet and runs until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Sends a command to a running simulator (`help` lists them).
    Ctl {
        /// The simulator's directory (its control socket is DIR/sim.sock).
        #[arg(long)]
        dir: PathBuf,
        /// The command and its arguments, e.g. `restart sim-0003` or `stall sim-0003 10s`.
        #[arg(required = true, trailing_var_arg = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// How many hosts.
    #[arg(long)]
    hosts: u32,
    /// Where the PKI, the hosts' spools, journals and disks and the control socket go. Use a
    /// tmpfs for large fleets: every followed host syncs its spool each interval.
    #[arg(long)]
    dir: PathBuf,
    /// The number of the first host: 1 makes sim-0001 onwards. With `--ca`, simulators with
    /// disjoint ranges make one fleet (each process holds about 1,500 hosts under a 20,000
    /// open-file limit).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    first_host: u32,
    /// Issue every certificate from the CA of another simulator's directory (its `pki/ca.pem`
    /// and `pki/ca.key`) instead of a new CA, so that one relay follows both.
    #[arg(long, value_name = "SIM_DIR")]
    ca: Option<PathBuf>,
    /// Fixes every host's hardware and telemetry.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sampling interval of every host, ms.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// The first host's address; host N listens on this plus N-1.
    #[arg(long, default_value = "127.0.1.1")]
    base_ip: Ipv4Addr,
    /// The port every host listens on (0: any free port).
    #[arg(long, default_value_t = 7443)]
    port: u16,
    /// Size of each host's erase target file, MiB.
    #[arg(long, default_value_t = 4)]
    disk_mib: u64,
    /// Each host's spool cap, MiB.
    #[arg(long, default_value_t = 8)]
    spool_mib: u64,
    /// Write the relay config here instead of printing it.
    #[arg(long)]
    print_relay_config: Option<PathBuf>,
    /// Add `[jetstream] url = URL` to the relay config.
    #[arg(long)]
    jetstream_url: Option<String>,
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("jex-sim")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("jex-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    runtime.block_on(async move {
        match cli.command {
            Cmd::Run(args) => run(args).await,
            Cmd::Ctl { dir, command } => ctl(dir, command.join(" ")).await,
        }
    })
}

async fn ctl(dir: PathBuf, line: String) -> ExitCode {
    match control::ask(&dir.join(control::SOCKET), &line).await {
        Ok(reply) => {
            print!("{reply}");
            let last = reply.lines().last().unwrap_or_default();
            if last.starts_with("ok") {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("jex-sim ctl: {}", jex_platform::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,jex_sim=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let dir = match std::path::absolute(&args.dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("jex-sim: --dir {}: {e}", args.dir.display());
            return ExitCode::FAILURE;
        }
    };
    let config = FleetConfig {
        dir: dir.clone(),
        hosts: args.hosts,
        first_host: args.first_host - 1,
        seed: args.seed,
        interval_ms: args.interval_ms,
        base_ip: args.base_ip,
        port: args.port,
        disk_bytes: args.disk_mib.saturating_mul(1 << 20),
        spool_max_bytes: args.spool_mib.saturating_mul(1 << 20),
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("jex-sim: cannot handle SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = match &args.ca {
        None => Fleet::start(config).await,
        Some(other) => match jex_sim::load_ca(other) {
            Ok(ca) => Fleet::start_with_ca(config, &ca).await,
            Err(e) => Err(e),
        },
    };
    let fleet = match started {
        Ok(f) => Arc::new(f),
        Err(e) => {
            eprintln!("jex-sim: {}", jex_platform::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let code = serve(&fleet, &args, &dir, &mut term).await;
    fleet.shutdown().await;
    code
}

async fn serve(
    fleet: &Arc<Fleet>,
    args: &RunArgs,
    dir: &std::path::Path,
    term: &mut tokio::signal::unix::Signal,
) -> ExitCode {
    let relay = fleet.relay_config(args.jetstream_url.as_deref()).await;
    let text = match relay.to_toml() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("jex-sim: {}", jex_platform::error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    match &args.print_relay_config {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &text) {
                eprintln!("jex-sim: writing the relay config {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            tracing::info!(file = %path.display(), "relay config written");
        }
        None => print!("{text}"),
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let socket = dir.join(control::SOCKET);
    let control = tokio::spawn({
        let fleet = fleet.clone();
        async move { control::serve(&socket, fleet, stop_rx).await }
    });
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping the fleet"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping the fleet"),
        ended = &mut Box::pin(wait_control(control)) => {
            eprintln!("jex-sim: {ended}");
            return ExitCode::FAILURE;
        }
    }
    let _ = stop_tx.send(true);
    ExitCode::SUCCESS
}

/// Waits for the control server, which ends only on an error before the stop.
async fn wait_control(
    control: tokio::task::JoinHandle<Result<(), control::ControlError>>,
) -> String {
    match control.await {
        Ok(Ok(())) => "the control socket stopped".to_owned(),
        Ok(Err(e)) => jex_platform::error_chain(&e),
        Err(e) => format!("the control socket task failed: {e}"),
    }
}
