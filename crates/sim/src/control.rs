//! The control socket, `<dir>/sim.sock` (mode 0600, and only root or the simulator's own user
//! may talk to it): one command per line, one reply per command whose last line starts with
//! `ok` or `error:`.
//!
//! ```text
//! status [HOST]          one line per host: address, running/down, part, faults
//! restart HOST           stop and start again (spool resumes; AGENT_DOWN gap)
//! stall HOST DURATION    the sampler blocks for DURATION (500ms, 10s, 2m, 1h)
//! fail HOST              the sampler errs: SAMPLER_ERROR gaps until `recover`
//! recover HOST           ends `fail` and `stall`
//! lose-spool HOST        stop, delete the spool, start: old cursors get OUT_OF_RANGE
//! kill HOST              stop and stay down (streams end UNAVAILABLE, then refused)
//! start HOST             start a host that was killed
//! help                   this list
//! ```
//!
//! [`parse`] is a pure function; [`serve`] answers on the socket; [`ask`] is the client
//! (`jex-sim ctl`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::fleet::Fleet;

/// The control socket's file name in the simulator's directory.
pub const SOCKET: &str = "sim.sock";

/// The longest command line accepted.
const MAX_LINE: usize = 1024;

/// The command list, as `help` prints it.
pub const HELP: &str = "\
status [HOST]          one line per host: address, running/down, part, faults
restart HOST           stop and start again (spool resumes; AGENT_DOWN gap)
stall HOST DURATION    the sampler blocks for DURATION (500ms, 10s, 2m, 1h)
fail HOST              the sampler errs: SAMPLER_ERROR gaps until `recover`
recover HOST           ends `fail` and `stall`
lose-spool HOST        stop, delete the spool, start: old cursors get OUT_OF_RANGE
kill HOST              stop and stay down (streams end UNAVAILABLE, then refused)
start HOST             start a host that was killed
help                   this list";

/// One control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `status [HOST]`.
    Status(Option<String>),
    /// `restart HOST`.
    Restart(String),
    /// `stall HOST DURATION`.
    Stall(String, Duration),
    /// `fail HOST`.
    Fail(String),
    /// `recover HOST`.
    Recover(String),
    /// `lose-spool HOST` (also `lose_spool`).
    LoseSpool(String),
    /// `kill HOST`.
    Kill(String),
    /// `start HOST`.
    Start(String),
    /// `help`.
    Help,
}

/// A command line that does not parse; the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

/// Parses one command line.
pub fn parse(line: &str) -> Result<Command, ParseError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let err = |m: String| Err(ParseError(m));
    let Some((&verb, args)) = words.split_first() else {
        return err("empty command: try `help`".into());
    };
    let host = |args: &[&str]| -> Result<String, ParseError> {
        match args {
            [host] => check_host(host),
            [] => Err(ParseError(format!(
                "`{verb}` needs a host id, e.g. `{verb} sim-0003`"
            ))),
            [_, extra @ ..] => Err(ParseError(format!(
                "`{verb}` takes one host id; unexpected {:?}",
                extra.join(" ")
            ))),
        }
    };
    match verb {
        "help" if args.is_empty() => Ok(Command::Help),
        "status" => match args {
            [] => Ok(Command::Status(None)),
            _ => Ok(Command::Status(Some(host(args)?))),
        },
        "restart" => Ok(Command::Restart(host(args)?)),
        "fail" => Ok(Command::Fail(host(args)?)),
        "recover" => Ok(Command::Recover(host(args)?)),
        "lose-spool" | "lose_spool" => Ok(Command::LoseSpool(host(args)?)),
        "kill" => Ok(Command::Kill(host(args)?)),
        "start" => Ok(Command::Start(host(args)?)),
        "stall" => match args {
            [h, d] => Ok(Command::Stall(check_host(h)?, parse_duration(d)?)),
            _ => err("`stall` needs a host id and a duration, e.g. `stall sim-0003 10s`".into()),
        },
        other => err(format!(
            "unknown command {other:?}: one of status, restart, stall, fail, recover, lose-spool, kill, start, help"
        )),
    }
}

fn check_host(word: &str) -> Result<String, ParseError> {
    if crate::host_index(word).is_some() {
        Ok(word.to_owned())
    } else {
        Err(ParseError(format!(
            "{word:?} is not a simulated host id: they are sim-0001, sim-0002, …"
        )))
    }
}

/// A duration: a whole number followed by `ms`, `s`, `m` or `h` (`500ms`, `10s`, `2m`), at
/// most a day.
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let bad = || {
        ParseError(format!(
            "{text:?} is not a duration: write a whole number and a unit, e.g. 500ms, 10s, 2m or 1h"
        ))
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    if ms == 0 || ms > 86_400_000 {
        return Err(ParseError(format!(
            "{text:?}: a stall lasts from 1 ms to 24 h"
        )));
    }
    Ok(Duration::from_millis(ms))
}

/// Runs a command on the fleet; the reply's lines, the last one `ok: …` or `error: …`.
pub async fn execute(fleet: &Fleet, line: &str) -> String {
    let command = match parse(line) {
        Ok(c) => c,
        Err(e) => return format!("error: {e}"),
    };
    tracing::info!(command = line.trim(), "control command");
    let result = match command {
        Command::Help => Ok(format!("{HELP}\nok")),
        Command::Status(host) => fleet.status(host.as_deref()).await.map(|lines| {
            let n = lines.len();
            format!("{}\nok: {n} hosts", lines.join("\n"))
        }),
        Command::Restart(h) => fleet.restart(&h).await.map(ok),
        Command::Stall(h, d) => fleet.stall(&h, d).map(ok),
        Command::Fail(h) => fleet.fail(&h).map(ok),
        Command::Recover(h) => fleet.recover(&h).map(ok),
        Command::LoseSpool(h) => fleet.lose_spool(&h).await.map(ok),
        Command::Kill(h) => fleet.kill(&h).await.map(ok),
        Command::Start(h) => fleet.start_host(&h).await.map(ok),
    };
    result.unwrap_or_else(|e| format!("error: {}", jex_platform::error_chain(&e)))
}

fn ok(detail: String) -> String {
    format!("ok: {detail}")
}

/// The control socket could not be served or reached.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Binding the socket failed.
    #[error("binding the control socket {}", path.display())]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The simulator is not answering.
    #[error("cannot reach the simulator at {} (is `jex-sim run --dir` running on this directory?)", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The exchange broke off.
    #[error("talking to the simulator at {}", path.display())]
    Exchange {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Binds `path` (mode 0600, replacing a stale socket) and answers commands until `stop`.
pub async fn serve(
    path: &Path,
    fleet: Arc<Fleet>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ControlError> {
    use std::os::unix::fs::PermissionsExt;
    let bind = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    if UnixStream::connect(path).await.is_err() {
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(bind)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind)?;
    tracing::info!(socket = %path.display(), "control socket ready");
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let conn = tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        match conn.peer_cred() {
            Ok(cred) if cred.uid() == 0 || cred.uid() == me => {}
            Ok(cred) => {
                tracing::warn!(
                    uid = cred.uid(),
                    "control socket: refused a client that is neither root nor the simulator's user"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket: cannot read the client's credentials; refused");
                continue;
            }
        }
        let fleet = fleet.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(conn, &fleet).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

async fn answer(conn: UnixStream, fleet: &Fleet) -> std::io::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut lines = BufReader::new(read.take(64 * MAX_LINE as u64)).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let reply = if line.len() > MAX_LINE {
            format!("error: a command line is at most {MAX_LINE} bytes")
        } else {
            execute(fleet, &line).await
        };
        write.write_all(reply.as_bytes()).await?;
        write.write_all(b"\n").await?;
    }
    write.shutdown().await
}

/// Sends one command line to the simulator at `path` and returns its reply.
pub async fn ask(path: &Path, line: &str) -> Result<String, ControlError> {
    let exchange = |source| ControlError::Exchange {
        path: path.to_owned(),
        source,
    };
    let mut conn = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::Connect {
            path: path.to_owned(),
            source,
        })?;
    conn.write_all(line.as_bytes()).await.map_err(exchange)?;
    conn.write_all(b"\n").await.map_err(exchange)?;
    conn.shutdown().await.map_err(exchange)?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.map_err(exchange)?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        let h = || "sim-0003".to_owned();
        assert_eq!(parse("status"), Ok(Command::Status(None)));
        assert_eq!(
            parse("  status   sim-0003 "),
            Ok(Command::Status(Some(h())))
        );
        assert_eq!(parse("restart sim-0003"), Ok(Command::Restart(h())));
        assert_eq!(
            parse("stall sim-0003 10s"),
            Ok(Command::Stall(h(), Duration::from_secs(10)))
        );
        assert_eq!(
            parse("stall sim-0003 250ms"),
            Ok(Command::Stall(h(), Duration::from_millis(250)))
        );
        assert_eq!(parse("fail sim-0003"), Ok(Command::Fail(h())));
        assert_eq!(parse("recover sim-0003"), Ok(Command::Recover(h())));
        assert_eq!(parse("lose-spool sim-0003"), Ok(Command::LoseSpool(h())));
        assert_eq!(parse("lose_spool sim-0003"), Ok(Command::LoseSpool(h())));
        assert_eq!(parse("kill sim-0003"), Ok(Command::Kill(h())));
        assert_eq!(parse("start sim-0003"), Ok(Command::Start(h())));
        assert_eq!(parse("help"), Ok(Command::Help));
    }

    #[test]
    fn bad_commands_say_what_to_write() {
        let says = |line: &str, needle: &str| {
            let e = parse(line).expect_err(line).to_string();
            assert!(e.contains(needle), "{line:?}: {e}");
        };
        says("", "empty command");
        says("reboot sim-0001", "unknown command \"reboot\"");
        says("restart", "needs a host id, e.g. `restart sim-0003`");
        says("restart sim-0001 sim-0002", "takes one host id");
        says("kill host-1", "not a simulated host id");
        says("stall sim-0001", "needs a host id and a duration");
        says("stall sim-0001 10", "not a duration");
        says("stall sim-0001 10d", "not a duration");
        says("stall sim-0001 s", "not a duration");
        says("stall sim-0001 0s", "from 1 ms to 24 h");
        says("stall sim-0001 25h", "from 1 ms to 24 h");
        says("stall sim-0001 99999999999999999999h", "not a duration");
        says("help me", "unknown command");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("1ms"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1.5s").is_err());
    }
}
