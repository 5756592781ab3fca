//! The `jex-agent` command line. Each subcommand is a thin call into the library; errors are
//! printed once, with their causes, and mapped to the sysexits codes of [`ExitKind`] (the table
//! is in the README): 64 for a bad command line or configuration, 69 when something the agent
//! needs is held by another process, 77 when the command needs root, 1 when a command fails at
//! run time.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{AppError, ExitKind, ListenCheck};
use crate::config::{Config, defaults};
use crate::ctl;
use crate::error_chain;

/// jex-agent: node agent for Apple Silicon bare-metal hosts.
#[derive(Debug, Parser)]
#[command(name = "jex-agent", version = crate::LONG_VERSION, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (in the foreground, as launchd expects).
    Run {
        /// The configuration file.
        #[arg(long, default_value = defaults::CONFIG_PATH)]
        config: PathBuf,
    },
    /// Check a configuration file and what it names on this host (TLS material, erase
    /// targets, the listen address) without starting; exits with the code `run` would stop
    /// with (64 for a configuration error), and warns about erase targets a `Terminate` would
    /// refuse now.
    CheckConfig {
        /// The configuration file.
        #[arg(long, default_value = defaults::CONFIG_PATH)]
        config: PathBuf,
    },
    /// Certificates (built with the `dev` feature only).
    #[cfg(feature = "dev")]
    Pki {
        /// What to make.
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Act as the controller (or an observer) against an agent.
    Ctl {
        /// How to reach the agent.
        #[command(flatten)]
        conn: ctl::Connection,
        /// The call.
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// Show the running agent's state (root only: reads its local socket; exits 77 without
    /// root, 69 when no agent runs).
    Status {
        /// The agent's status socket.
        #[arg(long, default_value = defaults::STATUS_SOCKET)]
        socket: PathBuf,
        /// Print the raw JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Print what a Terminate would destroy, with every safety check, touching nothing
    /// (asks the running agent through its local socket; root only: exits 77 without root).
    ErasePlan {
        /// The agent's status socket.
        #[arg(long, default_value = defaults::STATUS_SOCKET)]
        socket: PathBuf,
        /// When no agent runs (no socket, or nothing listening on it), plan from this
        /// configuration instead.
        #[arg(long, default_value = defaults::CONFIG_PATH)]
        config: PathBuf,
    },
    /// Write a support bundle (.tar.gz) to attach to a ticket (root only: exits 77 without root).
    ///
    /// It holds status, the configuration (key files by path only), the last 2,000 log lines,
    /// build and OS, spool and erase-journal summaries, certificate subjects and expiries, and the
    /// metrics text; never private keys, erase pattern keys, nonces or tenant data. It works when
    /// the agent is not running (from files, and says so).
    Diagnose {
        /// The configuration file.
        #[arg(long, default_value = defaults::CONFIG_PATH)]
        config: PathBuf,
        /// The agent's status socket (default: the configuration's `server.status_socket`).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The bundle to write, which must not exist (default:
        /// ./jex-agent-diagnose-<host>-<UTC time>.tar.gz).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print exactly which fields telemetry sends.
    Schema,
    /// Diagnostics for bringing up a fleet.
    Diag {
        /// What to do.
        #[command(subcommand)]
        command: DiagCommand,
    },
    /// Check an erase certificate offline: signature, chain to the fleet CA, nonce, consistency.
    VerifyErase {
        /// The certificate bundle (JSON, as written by `ctl certificate` or the demo).
        cert: PathBuf,
        /// The fleet CA (PEM or DER) the signer's chain must lead to.
        #[arg(long)]
        ca: PathBuf,
        /// The nonce the controller sent with Terminate (hex), to check it was signed.
        #[arg(long)]
        nonce: Option<String>,
    },
    /// Run everything on loopback in a temporary directory: a dev PKI, a real agent, a real
    /// controller client over mTLS; shows live telemetry, a disconnect and a gap-free resume.
    /// (Built with the `dev` feature only.)
    #[cfg(feature = "dev")]
    Demo {
        /// Seconds of live telemetry to show before disconnecting.
        #[arg(long, default_value_t = 4)]
        seconds: u64,
        /// Keep the demo's files in this directory instead of a temporary one.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

/// `diag` subcommands.
#[derive(Debug, Subcommand)]
pub enum DiagCommand {
    /// Write the raw output of every system tool the agent reads on this platform (on a Mac:
    /// diskutil, csrutil, fdesetup, system_profiler, the accounts, sysctl, vm_stat) into a new
    /// directory, with a README of provenance: the test fixtures of a real host. Holds hardware
    /// identifiers: scrub them before publishing (the README says how).
    Capture {
        /// A new (or empty) directory; created 0700.
        dir: PathBuf,
    },
}

/// `pki` subcommands.
#[cfg(feature = "dev")]
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Write a development CA and agent, controller and observer certificates (keys 0600).
    Dev {
        /// Output directory (created 0700).
        #[arg(long)]
        out: PathBuf,
        /// SPIFFE trust domain.
        #[arg(long, default_value = "fleet.example")]
        trust_domain: String,
        /// The host id written into the agent certificate.
        #[arg(long, default_value = "h-dev")]
        host_id: String,
    },
}

/// `ctl` subcommands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Show the host's identity and state.
    Host,
    /// Print telemetry records after a sequence number.
    Telemetry {
        /// Resume after this sequence number (0: the whole spooled history).
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
        /// Keep following live samples.
        #[arg(long)]
        follow: bool,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// End the tenancy: start the verified erase of every configured target (controller only).
    Terminate {
        /// The host id the agent must have (refused otherwise).
        #[arg(long)]
        host_id: String,
        /// Idempotency key (default: a new UUID). Reuse it to get the same operation back.
        #[arg(long)]
        request_id: Option<String>,
        /// The nonce, hex, at least 32 bytes (default: 32 fresh random bytes, printed).
        #[arg(long)]
        nonce: Option<String>,
    },
    /// Follow an erase operation until it ends (default: the host's current one).
    Watch {
        /// The operation id.
        #[arg(long, default_value = "")]
        operation_id: String,
    },
    /// Save the signed certificate of a finished erase as a bundle for `verify-erase`.
    Certificate {
        /// The operation id (default: the host's last finished one).
        #[arg(long, default_value = "")]
        operation_id: String,
        /// Where to write the bundle.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap would exit 2; a bad command line is EX_USAGE here like everywhere else.
            let _ = e.print();
            return if e.use_stderr() {
                ExitKind::Usage
            } else {
                ExitKind::Ok // --help, --version
            }
            .into();
        }
    };
    match cli.command {
        Command::Run { config } => crate::app::run(&config),
        Command::CheckConfig { config } => check_config(&config),
        #[cfg(feature = "dev")]
        Command::Pki {
            command:
                PkiCommand::Dev {
                    out,
                    trust_domain,
                    host_id,
                },
        } => match crate::pki::write_dev_pki(&out, &trust_domain, &host_id) {
            Ok((paths, _)) => {
                println!(
                    "wrote a development PKI for host {host_id} in {}",
                    out.display()
                );
                println!("  fleet CA:    {}", paths.ca_cert.display());
                println!(
                    "  agent:       {} (+ .key, 0600)",
                    paths.agent_cert.display()
                );
                println!(
                    "  controller:  {} (+ .key, 0600)",
                    paths.controller_cert.display()
                );
                println!(
                    "  observer:    {} (+ .key, 0600)",
                    paths.observer_cert.display()
                );
                ExitKind::Ok.into()
            }
            Err(e) => fail(&e),
        },
        Command::Schema => match crate::server::schema::telemetry_schema() {
            Ok(s) => {
                print!("{s}");
                ExitKind::Ok.into()
            }
            Err(e) => fail(&e),
        },
        Command::Status { socket, json } => block_on(async move {
            match crate::local_socket::query(&socket).await {
                Ok(snap) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&snap).unwrap_or_default()
                        );
                    } else {
                        let now = jex_attest::clock::now_unix_ms();
                        print!("{}", crate::local_socket::render::render_report(&snap, now));
                    }
                    ExitKind::Ok.into()
                }
                Err(e) => refuse(&status_failure("status", &socket, e)),
            }
        }),
        Command::ErasePlan { socket, config } => block_on(async move {
            match crate::local_socket::ask(&socket, crate::local_socket::Query::Plan).await {
                Ok(plan) => {
                    print!("{}", crate::local_socket::render::render_plan(&plan));
                    report_sip();
                    ExitKind::Ok.into()
                }
                // Only when no agent runs: one that runs knows its journal.
                Err(e) if e.no_agent() => erase_plan_offline(&config),
                Err(e) => refuse(&status_failure("erase-plan", &socket, e)),
            }
        }),
        Command::Diagnose {
            config,
            socket,
            out,
        } => diagnose(crate::diagnose::Options {
            config,
            socket,
            out,
        }),
        Command::VerifyErase { cert, ca, nonce } => verify_erase(&cert, &ca, nonce.as_deref()),
        Command::Diag {
            command: DiagCommand::Capture { dir },
        } => diag_capture(&dir),
        Command::Ctl { conn, command } => block_on(async move { run_ctl(conn, command).await }),
        // The demo sets up the daemon's logging itself, on its own directory.
        #[cfg(feature = "dev")]
        Command::Demo { seconds, keep } => {
            block_on(async move { crate::demo::run(seconds, keep).await })
        }
    }
}

/// `check-config`: every check that would stop `run` ([`crate::app::preflight`]: the file
/// parses and validates; the TLS material loads; every erase target exists, is a file or device,
/// is not the system's disk, and no two name one; the listen address can be bound), exiting with
/// the code `run` would stop with. Then the erase plan's own checks (mounted devices, direct I/O,
/// key backend identity): those refuse a `Terminate` now but do not stop the agent (a tenant's
/// volume is mounted during the tenancy), so they are warnings.
pub fn check_config(path: &std::path::Path) -> ExitCode {
    let checked = Config::load(path)
        .map_err(AppError::from)
        .and_then(|config| Ok((crate::app::preflight(&config)?, config)));
    let (found, config) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            let exit = refuse(&e);
            if e.exit_kind() == ExitKind::NoPermission {
                eprintln!(
                    "jex-agent: check-config reads what only root may read: run it with sudo"
                );
            }
            return exit;
        }
    };
    let listen = match found.listen {
        ListenCheck::Free => config.server.listen.to_string(),
        ListenCheck::HeldByAgent { pid } => format!(
            "{} (held by the running agent, pid {pid}, which uses this configuration's address)",
            config.server.listen
        ),
    };
    let metrics = match found.metrics_listen {
        None => "metrics off".to_owned(),
        Some(ListenCheck::Free) => format!(
            "metrics {}{}",
            config.metrics.listen,
            if config.metrics.tls { " (mTLS)" } else { "" }
        ),
        Some(ListenCheck::HeldByAgent { pid }) => format!(
            "metrics {} (held by the running agent, pid {pid})",
            config.metrics.listen
        ),
    };
    println!(
        "{}: ok (host {}, listen {listen}, {metrics}, {} erase target(s))",
        path.display(),
        found.host_id,
        config.erase.targets.len()
    );
    for warning in erase_warnings(&config) {
        eprintln!("jex-agent: warning: {warning}");
    }
    report_sip();
    ExitKind::Ok.into()
}

/// On macOS, prints System Integrity Protection's state (`csrutil status`, by its fixed path):
/// the system tools the erase runs (`diskutil`, `csrutil`, …) are trusted because SIP seals
/// them, and a device erase's attestation fails without it. Elsewhere, nothing.
fn report_sip() {
    if jex_platform::OS != jex_platform::Os::MacOs {
        return;
    }
    match sip_state() {
        Ok(status) if status.is_enabled() => println!("System Integrity Protection: enabled"),
        Ok(status) => eprintln!(
            "jex-agent: warning: System Integrity Protection is not enabled ({status:?}): the system tools the erase runs are not sealed, and a device erase's attestation fails its sip_enabled check"
        ),
        Err(e) => eprintln!("jex-agent: warning: System Integrity Protection unknown: {e}"),
    }
}

/// `csrutil status`, parsed.
fn sip_state() -> Result<jex_reclaim::macos::SipStatus, String> {
    let csrutil = std::path::Path::new(jex_reclaim::macos::CSRUTIL);
    let out = jex_platform::process::run(csrutil, &["status"], std::time::Duration::from_secs(30))
        .map_err(|e| format!("running {}: {}", csrutil.display(), error_chain(&e)))?;
    let text = String::from_utf8_lossy(&out.stdout);
    jex_reclaim::macos::parse_csrutil_status(&text).ok_or_else(|| {
        format!(
            "{} status printed {:?}, not `System Integrity Protection status: …`",
            csrutil.display(),
            text.trim()
        )
    })
}

/// What would refuse a `Terminate` now without stopping the agent, from the erase plan.
fn erase_warnings(config: &Config) -> Vec<String> {
    if config.erase.targets.is_empty() {
        return vec![
            "no erase targets configured: a Terminate would be refused (add [[erase.targets]])"
                .to_owned(),
        ];
    }
    let factory = jex_erase::production_factory(&config.erase);
    match jex_erase::plan_offline(&config.erase, &factory) {
        Ok(plan) => plan
            .iter()
            .enumerate()
            .flat_map(|(index, target)| {
                let place = config
                    .source
                    .place(&format!("erase.targets[{index}].device"));
                target.checks.iter().filter(|c| !c.passed).map(move |c| {
                    format!(
                        "{place}: erase target {:?} is not ready now: {}: {}",
                        target.name, c.check, c.detail
                    )
                })
            })
            .collect(),
        Err(e) => vec![format!(
            "the erase plan could not be made: {}",
            error_chain(&e)
        )],
    }
}

/// `diag capture`: exits 0 when every tool ran (whatever its own exit status, which the README
/// records), 1 when one could not be started, 74 when the directory cannot be written.
fn diag_capture(dir: &std::path::Path) -> ExitCode {
    let captures = crate::diag::captures_for(jex_platform::OS);
    match crate::diag::capture(dir, captures) {
        Ok(done) => {
            let missing: Vec<&str> = done
                .iter()
                .filter(|c| c.result.is_err())
                .map(|c| c.capture.program)
                .collect();
            println!(
                "captured {} tool output(s) into {} (README.md says what each is; scrub hardware identifiers before publishing)",
                done.len() - missing.len(),
                dir.display()
            );
            if missing.is_empty() {
                ExitKind::Ok.into()
            } else {
                eprintln!(
                    "jex-agent diag capture: could not run {}",
                    missing.join(", ")
                );
                ExitKind::Failure.into()
            }
        }
        Err(e) => {
            eprintln!("jex-agent diag capture: {}", error_chain(&e));
            match e {
                crate::diag::DiagError::NotEmpty(_) => ExitKind::Usage.into(),
                crate::diag::DiagError::Write { .. } => ExitKind::IoError.into(),
            }
        }
    }
}

/// `diagnose`: writes the support bundle; exits 0 when it is written (whatever parts are
/// missing: its README says why), 77 without root, 64 for a bad `--out`, 74 when it cannot be
/// written.
fn diagnose(opts: crate::diagnose::Options) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        return refuse(&AppError::NeedsRoot {
            command: "diagnose",
        });
    }
    match crate::diagnose::run(&opts) {
        Ok(written) => {
            println!(
                "wrote {} ({} file(s); the agent was {}running)",
                written.path.display(),
                written.files.len(),
                if written.agent_running { "" } else { "not " }
            );
            for (part, why) in &written.missing {
                eprintln!("jex-agent diagnose: {part} not collected: {why}");
            }
            ExitKind::Ok.into()
        }
        Err(e) => {
            eprintln!("jex-agent diagnose: {}", error_chain(&e));
            match e {
                crate::diagnose::DiagnoseError::Write { .. } => ExitKind::IoError.into(),
                _ => ExitKind::Usage.into(),
            }
        }
    }
}

/// `verify-erase`: prints what the certificate proves, or why it does not verify. Both
/// certificate versions are accepted ([`jex_attest::verify_any`]); a version 2 certificate is
/// shown with each target's NIST category and technique, the key that signed and every
/// evidence line of a device erase.
pub fn verify_erase(
    cert: &std::path::Path,
    ca: &std::path::Path,
    nonce_hex: Option<&str>,
) -> ExitCode {
    let read =
        |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let result = read(cert).and_then(|bundle| {
        let ca = read(ca)?;
        verify_erase_report(&cert.display().to_string(), &bundle, &ca, nonce_hex)
    });
    match result {
        Ok(summary) => {
            print!("{summary}");
            ExitKind::Ok.into()
        }
        Err(e) => {
            eprintln!("jex-agent verify-erase: certificate does NOT verify: {e}");
            ExitKind::Failure.into()
        }
    }
}

/// What `verify-erase` prints for the bundle file `cert_name` holding `bundle`, checked against
/// the fleet CA `ca` (and the nonce, hex, if given), or why it does not verify.
fn verify_erase_report(
    cert_name: &str,
    bundle: &[u8],
    ca: &[u8],
    nonce_hex: Option<&str>,
) -> Result<String, String> {
    let nonce = match nonce_hex {
        Some(h) => Some(hex::decode(h.trim()).map_err(|e| format!("--nonce is not hex: {e}"))?),
        None => None,
    };
    let signed = jex_attest::SignedCertificate::from_bundle_json(bundle)
        .map_err(|e| format!("{cert_name}: {}", error_chain(&e)))?;
    let doc = jex_attest::verify_any(&signed, ca, nonce.as_deref()).map_err(|e| error_chain(&e))?;
    Ok(doc.summary(nonce.is_some()))
}

/// `erase-plan` with no agent running: plans from the configuration file, touching nothing
/// (the journal is not read, so an unfinished erase is neither resumed nor shown). A target the
/// agent would refuse to start with is refused here too, with the same exit code.
fn erase_plan_offline(path: &std::path::Path) -> ExitCode {
    let planned = Config::load(path)
        .map_err(AppError::from)
        .and_then(|config| {
            crate::app::check_targets(&config)?;
            let factory = jex_erase::production_factory(&config.erase);
            Ok(jex_erase::plan_offline(&config.erase, &factory)?)
        });
    match planned {
        Ok(plan) => {
            println!(
                "(no agent answered on its socket: planned from {})",
                path.display()
            );
            print!(
                "{}",
                crate::local_socket::render::render_plan(&crate::local_socket::view::plan_json(
                    &plan
                ))
            );
            report_sip();
            ExitKind::Ok.into()
        }
        Err(e) => refuse(&e),
    }
}

/// A failed question to the status socket: root-only, nobody there, or another failure.
fn status_failure(
    command: &'static str,
    socket: &std::path::Path,
    e: crate::local_socket::LocalSocketError,
) -> AppError {
    if e.not_permitted() {
        AppError::NeedsRoot { command }
    } else if e.no_agent() {
        AppError::NoAgent {
            socket: socket.to_owned(),
            source: e,
        }
    } else {
        AppError::Status(e)
    }
}

/// Prints a failure of `run`, `check-config`, `erase-plan` or `status` with its causes and
/// returns its exit code.
fn refuse(e: &AppError) -> ExitCode {
    eprintln!("jex-agent: {}", error_chain(e));
    e.exit_kind().into()
}

fn fail(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("jex-agent: {}", error_chain(e));
    ExitKind::Failure.into()
}

fn block_on<F: std::future::Future<Output = ExitCode>>(f: F) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => fail(&e),
    }
}

async fn run_ctl(conn: ctl::Connection, command: CtlCommand) -> ExitCode {
    let result: Result<(), ctl::CtlError> = async {
        let mut client = ctl::connect(&conn).await?;
        match command {
            CtlCommand::Host => {
                let h = ctl::host(&mut client).await?;
                println!("{h:#?}");
            }
            CtlCommand::Telemetry {
                after_seq,
                follow,
                limit,
            } => {
                let req = jex_proto::v1::StreamTelemetryRequest {
                    after_seq,
                    max_batch_records: 0,
                    history_only: !follow,
                };
                let mut stream = client
                    .stream_telemetry(req)
                    .await
                    .map_err(|s| ctl::CtlError::rpc("StreamTelemetry", s))?
                    .into_inner();
                let mut n = 0u64;
                while let Some(batch) = stream
                    .message()
                    .await
                    .map_err(|s| ctl::CtlError::rpc("StreamTelemetry", s))?
                {
                    for r in &batch.records {
                        println!("{}", ctl::format_record(r));
                        n += 1;
                        if limit.is_some_and(|l| n >= l) {
                            return Ok(());
                        }
                    }
                }
            }
            CtlCommand::Terminate {
                host_id,
                request_id,
                nonce,
            } => {
                let nonce = match nonce {
                    Some(h) => hex::decode(h.trim()).map_err(|e| ctl::CtlError::Usage {
                        what: format!("--nonce is not hex: {e}"),
                    })?,
                    None => {
                        let mut n = [0u8; 32];
                        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut n)
                            .map_err(|_| ctl::CtlError::Usage {
                                what: "no system randomness for the nonce".into(),
                            })?;
                        n.to_vec()
                    }
                };
                let request_id = request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let op = client
                    .terminate(jex_proto::v1::TerminateRequest {
                        request_id: request_id.clone(),
                        host_id,
                        nonce: nonce.clone(),
                    })
                    .await
                    .map_err(|s| ctl::CtlError::rpc("Terminate", s))?
                    .into_inner()
                    .operation
                    .unwrap_or_default();
                println!(
                    "operation_id={} request_id={request_id} nonce={}",
                    op.operation_id,
                    hex::encode(&nonce)
                );
            }
            CtlCommand::Watch { operation_id } => {
                let mut stream = client
                    .watch_erase(jex_proto::v1::WatchEraseRequest { operation_id })
                    .await
                    .map_err(|s| ctl::CtlError::rpc("WatchErase", s))?
                    .into_inner();
                while let Some(m) = stream
                    .message()
                    .await
                    .map_err(|s| ctl::CtlError::rpc("WatchErase", s))?
                {
                    let Some(op) = m.operation else { continue };
                    let phase = jex_proto::v1::ErasePhase::try_from(op.phase)
                        .map_or("?", |p| p.as_str_name().trim_start_matches("ERASE_PHASE_"));
                    println!(
                        "{} {} eta={}s{}",
                        op.operation_id,
                        crate::local_socket::render::progress_line(
                            phase,
                            op.bytes_done,
                            op.bytes_total,
                            op.rate_bytes_per_second
                        ),
                        op.eta_seconds,
                        if op.failure_reason.is_empty() {
                            String::new()
                        } else {
                            format!(" FAILED: {}", op.failure_reason)
                        }
                    );
                }
            }
            CtlCommand::Certificate { operation_id, out } => {
                let cert = client
                    .get_erase_certificate(jex_proto::v1::GetEraseCertificateRequest {
                        operation_id,
                    })
                    .await
                    .map_err(|s| ctl::CtlError::rpc("GetEraseCertificate", s))?
                    .into_inner()
                    .certificate
                    .unwrap_or_default();
                let bundle = crate::server::convert::certificate_from_proto(cert).to_bundle_json();
                std::fs::write(&out, bundle).map_err(|source| ctl::CtlError::Read {
                    path: out.clone(),
                    source,
                })?;
                println!(
                    "wrote {}; check it with: jex-agent verify-erase {} --ca <fleet CA>",
                    out.display(),
                    out.display()
                );
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitKind::Ok.into(),
        Err(e) => fail(&e),
    }
}

#[cfg(test)]
mod tests {
    use jex_attest::testing::{
        NONCE, TestCa, sample_document, sample_document_v2_device_erase, write_signer_files,
    };
    use jex_attest::{FileSigner, SignedCertificate};

    use super::*;

    /// A fleet CA (PEM) and the bundle of `sign` applied with a key of host h-1: for a v2
    /// document one born after the sample tenancy, for a v1 document the tenancy's.
    fn bundle(
        v2: bool,
        sign: impl FnOnce(&FileSigner) -> SignedCertificate,
    ) -> (String, Vec<u8>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("fleet CA");
        let leaf = if v2 {
            ca.leaf_after_tenancy()
        } else {
            ca.leaf()
        };
        let (key, chain) = write_signer_files(dir.path(), &leaf, &[]);
        let signer = FileSigner::load(&key, &chain).unwrap();
        (ca.cert_pem, sign(&signer).to_bundle_json(), dir)
    }

    #[test]
    fn verify_erase_shows_a_v2_certificate_per_target_with_signer_and_evidence() {
        let (ca, bundle, _dir) = bundle(true, |signer| {
            jex_attest::sign_v2(&sample_document_v2_device_erase(), signer).unwrap()
        });
        let nonce = hex::encode(NONCE);
        let report =
            verify_erase_report("cert.json", &bundle, ca.as_bytes(), Some(&nonce)).unwrap();
        for expected in [
            "certificate verifies: signature, chain to the fleet CA, internal consistency, signer record, controller nonce\n",
            "  schema:       jex.erase-certificate/v2\n",
            "  outcome:      ERASED\n",
            "  target \"internal\": internal-ssd disk0, 500277792768 bytes: Purge / Cryptographic Erase (Apple EACS: Secure Enclave keys destroyed)\n",
            "  target \"archive\": external-disk /dev/rdisk4, 67108864 bytes: Clear / Overwrite\n",
            "  signer:       key source file, certificate issued 2025-06-01T11:00:00Z, after the Terminate was accepted (born after the tenancy)\n",
            "  device erase: Apple Erase All Content and Settings via MDM EraseDevice, or DFU restore\n",
            "    PASS prepare_record_verifies: ",
            "    PASS same_host: ",
            "    PASS tenant_volumes_gone: ",
            "    PASS data_volume_new: ",
            "    PASS signing_key_after_terminate: ",
        ] {
            assert!(
                report.contains(expected),
                "missing {expected:?} in\n{report}"
            );
        }
    }

    #[test]
    fn verify_erase_shows_a_v1_certificate_as_before() {
        let (ca, bundle, _dir) = bundle(false, |signer| {
            jex_attest::sign(&sample_document(), signer).unwrap()
        });
        let report = verify_erase_report("cert.json", &bundle, ca.as_bytes(), None).unwrap();
        assert_eq!(report, jex_attest::summary(&sample_document(), false));
        assert!(report.contains("  method:       Purge / Crypto Erase + Overwrite ("));
    }

    #[test]
    fn verify_erase_says_why_a_certificate_does_not_verify() {
        let (ca, bundle, _dir) = bundle(true, |signer| {
            jex_attest::sign_v2(&sample_document_v2_device_erase(), signer).unwrap()
        });
        let wrong_nonce = hex::encode([7u8; 32]);
        let err = verify_erase_report("cert.json", &bundle, ca.as_bytes(), Some(&wrong_nonce))
            .unwrap_err();
        assert!(err.contains("controller nonce"), "{err}");
        let err =
            verify_erase_report("cert.json", &bundle, ca.as_bytes(), Some("xyz")).unwrap_err();
        assert!(err.starts_with("--nonce is not hex"), "{err}");
        let err = verify_erase_report("cert.json", b"{}", ca.as_bytes(), None).unwrap_err();
        assert!(
            err.starts_with("cert.json: not an erase-certificate bundle"),
            "{err}"
        );
        let other_ca = TestCa::new("other CA").cert_pem;
        let err = verify_erase_report("cert.json", &bundle, other_ca.as_bytes(), None).unwrap_err();
        assert!(err.contains("does not chain to the given CA"), "{err}");
    }

    #[test]
    fn verify_erase_exits_0_when_the_certificate_verifies_and_1_when_not() {
        let (ca, bundle, dir) = bundle(true, |signer| {
            jex_attest::sign_v2(&sample_document_v2_device_erase(), signer).unwrap()
        });
        let cert = dir.path().join("erase-certificate.json");
        let ca_path = dir.path().join("fleet-ca.pem");
        std::fs::write(&cert, &bundle).unwrap();
        std::fs::write(&ca_path, ca).unwrap();
        let nonce = hex::encode(NONCE);
        assert_eq!(
            verify_erase(&cert, &ca_path, Some(&nonce)),
            ExitCode::from(ExitKind::Ok)
        );
        let mut tampered = bundle.clone();
        let at = tampered.len() / 2;
        tampered[at] ^= 1;
        std::fs::write(&cert, &tampered).unwrap();
        assert_eq!(
            verify_erase(&cert, &ca_path, None),
            ExitCode::from(ExitKind::Failure)
        );
        assert_eq!(
            verify_erase(&dir.path().join("missing.json"), &ca_path, None),
            ExitCode::from(ExitKind::Failure)
        );
    }
}
