//! `check-config` and `run` agree, through the real binary: every problem that stops `run` is
//! found by `check-config` first, with the same message (file, line, key) and the same exit code;
//! `erase-plan` and `status` run without root say so instead of guessing. Configurations are
//! written by the tests, into temporary directories.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use jex_e2e::*;

/// The codes of the agent's exit table (README, "Exit codes").
const EX_USAGE: i32 = 64;
const EX_UNAVAILABLE: i32 = 69;
const EX_NOPERM: i32 = 77;

/// The uid and gid of `nobody`, for the commands run without root.
const NOBODY: u32 = 65534;

/// An agent configuration with `extra` TOML appended, in its own directory.
struct Setup {
    pki: TestPki,
    /// Holds the configuration (removed when dropped).
    _dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new(extra: &str) -> Result<Self> {
        Self::with(AgentOptions {
            extra_toml: extra.to_owned(),
            ..Default::default()
        })
    }

    fn with(opts: AgentOptions) -> Result<Self> {
        let pki = TestPki::new()?;
        let dir = tempfile::tempdir()?;
        let config = write_config(&pki, &dir.path().join("agent"), &opts)?;
        Ok(Self {
            pki,
            _dir: dir,
            config,
        })
    }

    /// The line of the configuration that contains `needle`, 1-based.
    fn line_of(&self, needle: &str) -> Result<usize> {
        let text = std::fs::read_to_string(&self.config)?;
        text.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .with_context(|| format!("no line with {needle:?} in\n{text}"))
    }

    /// `<config>:<line>: key `<key>`: ` as every configuration error starts.
    fn place(&self, needle: &str, key: &str) -> Result<String> {
        Ok(format!(
            "{}:{}: key `{key}`: ",
            self.config.display(),
            self.line_of(needle)?
        ))
    }
}

/// An `[[erase.targets]]` table (a `luks2` target: only its device matters here).
fn target(name: &str, device: &Path) -> String {
    format!(
        "\n[[erase.targets]]\nname = \"{name}\"\nbackend = \"luks2\"\ndevice = \"{}\"\nluks_uuid = \"9f5d0c8e-3a1b-4c2d-8e7f-0a1b2c3d4e5f\"\n",
        device.display()
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `jex-agent check-config --config <config>`.
fn check_config(config: &Path) -> Result<Output> {
    output_within(
        Command::new(agent_bin()?)
            .arg("check-config")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null()),
        COMMAND_DEADLINE,
    )
}

/// `jex-agent run --config <config>`, expected to refuse to start: its exit code and stderr.
/// An agent that starts serving instead is killed and reported.
fn run_refused(config: &Path) -> Result<(Option<i32>, String)> {
    let mut child = Command::new(agent_bin()?)
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait()?.is_some() {
            let out = child.wait_with_output()?;
            return Ok((out.status.code(), text(&out.stderr)));
        }
        if Instant::now() > end {
            child.kill()?;
            let out = child.wait_with_output()?;
            bail!(
                "`run` did not stop on the configuration; it was serving:\n{}",
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Checks that `check-config` refuses the configuration with `code` and a message holding
/// every one of `needles`, and that `run` stops on it with the same code and message.
fn both_refuse(config: &Path, code: i32, needles: &[&str]) -> Result<()> {
    let out = check_config(config)?;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "check-config: {err}");
    assert!(
        !text(&out.stdout).contains(": ok"),
        "check-config said ok: {}",
        text(&out.stdout)
    );
    for needle in needles {
        assert!(
            err.contains(needle),
            "check-config does not say {needle:?}: {err}"
        );
    }
    let (status, err) = run_refused(config)?;
    assert_eq!(status, Some(code), "run: {err}");
    assert!(err.contains("agent failed to start"), "run: {err}");
    for needle in needles {
        assert!(err.contains(needle), "run does not say {needle:?}: {err}");
    }
    Ok(())
}

#[test]
fn a_listen_address_in_use_is_refused_by_check_config_and_run_alike() -> Result<()> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let s = Setup::with(AgentOptions {
        listen: Some(addr),
        ..Default::default()
    })?;
    both_refuse(
        &s.config,
        EX_UNAVAILABLE,
        &[
            &s.place("listen = ", "server.listen")?,
            &format!("cannot listen on {addr}"),
            "in use",
        ],
    )?;
    // Once the address is free, the same file is accepted.
    drop(taken);
    let out = check_config(&s.config)?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    Ok(())
}

#[test]
fn a_missing_erase_target_is_refused_by_check_config_and_run_alike() -> Result<()> {
    let images = tempfile::tempdir()?;
    let missing = images.path().join("never-made.img");
    let s = Setup::new(&target("tenant", &missing))?;
    both_refuse(
        &s.config,
        EX_USAGE,
        &[
            &s.place("never-made.img", "erase.targets[0].device")?,
            &format!("{} does not exist", missing.display()),
        ],
    )
}

#[test]
fn a_target_that_is_the_root_device_is_refused_by_check_config_and_run_alike() -> Result<()> {
    // A device node of the root filesystem's own device, under a name of the test's choosing:
    // the rails look at the device number, never at the name. Making it needs root.
    let nodes = tempfile::tempdir()?;
    let node = nodes.path().join("tenant-disk");
    let root_dev = std::fs::metadata("/")?.dev();
    jex_platform::blockdev::make_block_device_node(&node, root_dev)
        .context("making a device node needs root (the CI runs these tests as root)")?;
    let s = Setup::new(&target("tenant", &node))?;
    both_refuse(
        &s.config,
        EX_USAGE,
        &[
            &s.place("tenant-disk", "erase.targets[0].device")?,
            "it holds the system filesystem mounted at /",
        ],
    )
}

#[test]
fn two_targets_naming_one_file_through_a_symlink_are_refused_with_both_keys_and_lines() -> Result<()>
{
    let images = tempfile::tempdir()?;
    let image = images.path().join("tenant.img");
    std::fs::write(&image, vec![0u8; 1 << 20])?;
    let link = images.path().join("by-id-tenant");
    std::os::unix::fs::symlink(&image, &link)?;
    let s = Setup::new(&format!(
        "{}{}",
        target("tenant", &image),
        target("tenant-again", &link)
    ))?;
    both_refuse(
        &s.config,
        EX_USAGE,
        &[
            &s.place("by-id-tenant", "erase.targets[1].device")?,
            &format!(
                "(`erase.targets[0].device` is at line {})",
                s.line_of("tenant.img")?
            ),
            "are the same file:",
        ],
    )
}

#[test]
fn a_missing_tls_file_names_its_key_its_line_and_the_file() -> Result<()> {
    let s = Setup::new("")?;
    std::fs::remove_file(&s.pki.paths.agent_key)?;
    both_refuse(
        &s.config,
        EX_USAGE,
        &[
            &s.place("key = ", "tls.key")?,
            &format!("reading {}", s.pki.paths.agent_key.display()),
        ],
    )
}

#[test]
fn check_config_says_the_running_agent_holds_the_address_and_run_refuses_a_second_one() -> Result<()>
{
    let free = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = free.local_addr()?;
    drop(free);
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let agent_dir = dir.path().join("agent");
    let agent = start_agent(
        &pki,
        &agent_dir,
        &AgentOptions {
            listen: Some(addr),
            ..Default::default()
        },
    )?;
    assert_eq!(agent.addr, addr);
    let config = agent_dir.join("agent.toml");

    let out = check_config(&config)?;
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        said.contains(&format!(
            "listen {addr} (held by the running agent, pid {}",
            agent.pid()
        )),
        "{said}"
    );

    let (status, err) = run_refused(&config)?;
    assert_eq!(status, Some(EX_UNAVAILABLE), "{err}");
    assert!(
        err.contains(&format!(
            "key `server.listen`: {addr} is held by the running agent (pid {}): stop it first",
            agent.pid()
        )),
        "{err}"
    );
    // The running agent is untouched.
    assert!(agent.status_cli()?.contains("SERVING"));
    Ok(())
}

#[test]
fn check_config_warns_about_a_target_a_terminate_would_refuse_now() -> Result<()> {
    // A plain file where a LUKS2 volume should be: the agent starts (the file is there and is
    // not the system's disk), but the key backend cannot confirm the pinned volume.
    let images = tempfile::tempdir()?;
    let image = images.path().join("tenant.img");
    std::fs::write(&image, vec![0u8; 1 << 20])?;
    let s = Setup::new(&target("tenant", &image))?;
    let out = check_config(&s.config)?;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(text(&out.stdout).contains(": ok (host h-e2e"));
    assert!(
        err.contains(&format!(
            "warning: {}:{}: erase target \"tenant\" is not ready now: key backend identity: ",
            s.config.display(),
            s.line_of("tenant.img")?
        )),
        "{err}"
    );
    Ok(())
}

/// Lets `nobody` reach every directory down to `path`, so that only the file's own mode
/// decides (tempfile makes its directories 0700).
fn open_directories_to(path: &Path, top: &Path) -> Result<()> {
    let mut dir = path.parent();
    while let Some(d) = dir {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        if d == top {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

#[test]
fn erase_plan_and_status_without_root_ask_for_sudo_and_exit_77() -> Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let agent_dir = dir.path().join("agent");
    let agent = start_agent(&pki, &agent_dir, &AgentOptions::default())?;
    let socket = agent.status_socket();
    open_directories_to(&socket, dir.path())?;
    let mode = std::fs::metadata(&socket)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the status socket is root-only");
    // The binary runs as `nobody`, who may not be able to reach it inside the checkout (a clone
    // in a 0700 directory): run a copy from the test's own directory, opened to `nobody`.
    let bin = dir.path().join("jex-agent");
    std::fs::copy(agent_bin()?, &bin)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;

    for (command, extra) in [
        (
            "erase-plan",
            vec![
                "--config".to_owned(),
                agent_dir.join("agent.toml").display().to_string(),
            ],
        ),
        ("status", vec![]),
    ] {
        let out = output_within(
            Command::new(&bin)
                .arg(command)
                .arg("--socket")
                .arg(&socket)
                .args(&extra)
                .uid(NOBODY)
                .gid(NOBODY)
                .stdin(Stdio::null()),
            COMMAND_DEADLINE,
        )?;
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(EX_NOPERM), "{command}: {err}");
        assert!(
            err.contains(&format!(
                "{command} needs root (the agent's status socket is root-only): run it with sudo"
            )),
            "{command}: {err}"
        );
        assert!(
            text(&out.stdout).is_empty(),
            "{command} printed a plan or a status anyway: {}",
            text(&out.stdout)
        );
    }
    // As root the same commands answer from the running agent.
    assert!(agent.status_cli()?.contains("SERVING"));
    Ok(())
}

#[test]
fn a_bad_command_line_exits_64_and_help_exits_0() -> Result<()> {
    let out = output_within(
        Command::new(agent_bin()?).args(["check-config", "--no-such-flag"]),
        COMMAND_DEADLINE,
    )?;
    assert_eq!(out.status.code(), Some(EX_USAGE), "{}", text(&out.stderr));
    let out = output_within(Command::new(agent_bin()?).arg("--help"), COMMAND_DEADLINE)?;
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("check-config"));
    Ok(())
}
