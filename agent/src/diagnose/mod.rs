//! `jex-agent diagnose`: a support bundle an SRE attaches to a ticket.
//!
//! One gzip'd tar with one top directory, `jex-agent-diagnose-<host>-<UTC time>/`, holding:
//!
//! | file | what |
//! |---|---|
//! | `README.txt` | what is here, when it was made, whether the agent was running, and why any part is missing |
//! | `status.json` | the running agent's status from its local socket, or one built from files (`"agent_running": false`) |
//! | `config.toml` | the configuration file; PEM blocks and key-like strings taken out (it names key files by path only) |
//! | `config-effective.txt` | the configuration as parsed, defaults filled in |
//! | `logs/agent.log.tail` | the last 2,000 lines of the JSON log, across its rotations |
//! | `version.txt` | build (version, commit, target, date, rustc), binary path, OS |
//! | `spool.json` | the telemetry spool's numbers and segment files; no record contents |
//! | `erase-journal.json` | each erase operation's ids, targets, steps, times and outcome, from a whitelist of fields |
//! | `certificates.txt` | subject, issuer, serial, validity, days left and SHA-256 of every certificate the configuration names |
//! | `metrics.txt` | the agent's `/metrics` text (plain HTTP on its bound address) |
//! | `system.txt` | uname, uptime, free space of the state and log directories |
//!
//! Never in it: private keys (only certificate files are read), erase pattern keys and their
//! hashes, the controller's nonces, erase certificates' contents (they reveal both; their file
//! names are listed), key-destruction evidence, and telemetry records.
//!
//! Each part is collected by a function of its own (`collect`) that returns the file's bytes or
//! why it could not (written into `README.txt`): one part failing never stops the bundle. Every
//! part has a size cap. When no agent answers on the status socket, everything is read from
//! files, read-only (the spool is listed, never opened: opening it repairs it), and
//! `README.txt` says so.
//!
//! The bundle is written to a temporary file in the destination's directory (mode 0600) and
//! renamed into place only when complete, never over an existing file.

mod collect;
pub mod journal;
pub mod redact;
pub mod tail;

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error_chain;
use collect::AgentState;

/// What `diagnose` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The configuration file.
    pub config: PathBuf,
    /// The status socket; `None`: the configuration's `server.status_socket`, else the default.
    pub socket: Option<PathBuf>,
    /// The bundle to write; `None`: a new name in the current directory.
    pub out: Option<PathBuf>,
}

/// The bundle could not be written. (A part that could not be collected is not an error: the
/// bundle's README says why it is missing.)
#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    /// The destination exists.
    #[error(
        "{path} already exists: diagnose never overwrites a file; move it away or pass another --out"
    )]
    Exists {
        /// The destination.
        path: PathBuf,
    },
    /// The destination's directory is missing or not a directory.
    #[error(
        "cannot write {path}: its directory {dir} does not exist or is not a directory; create it or pass another --out"
    )]
    NoDirectory {
        /// The destination.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// Writing failed.
    #[error("writing the bundle {path}")]
    Write {
        /// The destination.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    /// The bundle.
    pub path: PathBuf,
    /// Whether an agent answered on its socket.
    pub agent_running: bool,
    /// Files in the bundle.
    pub files: Vec<String>,
    /// Parts left out, with why.
    pub missing: Vec<(String, String)>,
}

/// One part of the bundle: its file name, what it is, and its bytes or why there are none.
struct Part {
    name: &'static str,
    about: &'static str,
    bytes: Result<Vec<u8>, String>,
    note: String,
}

/// Characters kept in the host part of the bundle's name.
fn file_safe(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if safe.is_empty() {
        "unknown-host".to_owned()
    } else {
        safe
    }
}

/// `jex-agent-diagnose-<host>-<yyyymmddThhmmssZ>`.
pub fn bundle_name(host: &str, at: time::OffsetDateTime) -> String {
    let stamp = at
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_else(|_| "unknown-time".to_owned());
    format!("jex-agent-diagnose-{}-{stamp}", file_safe(host))
}

/// The host id of the agent's certificate, else the host name.
fn host_name(agent: &AgentState, config: Result<&Config, &str>) -> String {
    if let Some(id) = agent
        .status()
        .and_then(|s| s.get("host_id"))
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
    {
        return id.to_owned();
    }
    if let Ok(c) = config
        && let Ok(id) = crate::tls::host_id_from_cert(&c.tls.cert)
    {
        return id;
    }
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Where the bundle goes, checked: its directory exists and it does not.
fn destination(out: Option<&Path>, name: &str) -> Result<PathBuf, DiagnoseError> {
    let path = match out {
        Some(p) => p.to_owned(),
        None => PathBuf::from(format!("{name}.tar.gz")),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(DiagnoseError::NoDirectory { path, dir });
    }
    if std::fs::symlink_metadata(&path).is_ok() {
        return Err(DiagnoseError::Exists { path });
    }
    Ok(path)
}

/// Collects every part and writes the bundle.
pub fn run(opts: &Options) -> Result<Written, DiagnoseError> {
    let now = jex_attest::clock::now_utc();
    let made_at = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let loaded = Config::load(&opts.config).map_err(|e| error_chain(&e));
    let config: Result<&Config, &str> = loaded.as_ref().map_err(String::as_str);
    let socket = opts.socket.clone().unwrap_or_else(|| match config {
        Ok(c) => c.server.status_socket.clone(),
        Err(_) => PathBuf::from(crate::config::defaults::STATUS_SOCKET),
    });
    let agent = collect::ask_agent(&socket);
    let name = bundle_name(&host_name(&agent, config), now);
    // Checked before anything is collected, so that a bad --out fails at once.
    let path = destination(opts.out.as_deref(), &name)?;

    let (log, log_note) = collect::log_tail(config);
    let redactions = collect::config_redactions(&opts.config);
    let parts = vec![
        Part {
            name: "status.json",
            about: "the agent's status (from its socket when it runs, else built from files)",
            bytes: collect::status(&agent, config),
            note: String::new(),
        },
        Part {
            name: "config.toml",
            about: "the configuration file; key files are named by path, never copied",
            bytes: collect::config_file(&opts.config),
            note: if redactions.is_empty() {
                "checked: no PEM block and no key-like string in it".to_owned()
            } else {
                format!("REDACTED from it: {}", redactions.join("; "))
            },
        },
        Part {
            name: "config-effective.txt",
            about: "the configuration as parsed, defaults filled in",
            bytes: collect::config_effective(config),
            note: String::new(),
        },
        Part {
            name: "logs/agent.log.tail",
            about: "the last 2,000 lines of the agent's JSON log, across its rotated files",
            bytes: log,
            note: log_note,
        },
        Part {
            name: "version.txt",
            about: "this binary's build (version, commit, target, date, rustc), its path, the OS",
            bytes: collect::version(&agent),
            note: String::new(),
        },
        Part {
            name: "spool.json",
            about: "the telemetry spool's numbers and segment files (no record contents)",
            bytes: collect::spool(&agent, config),
            note: String::new(),
        },
        Part {
            name: "erase-journal.json",
            about: "each erase operation's ids, targets, steps, times and outcome (no nonce, no pattern key, no key evidence; certificates by file name only)",
            bytes: collect::erase_journal(config),
            note: String::new(),
        },
        Part {
            name: "certificates.txt",
            about: "subject, issuer, serial, validity, days left and SHA-256 of the agent's certificate chain and the fleet CA",
            bytes: collect::certificates(config, now.unix_timestamp()),
            note: String::new(),
        },
        Part {
            name: "metrics.txt",
            about: "the agent's /metrics text",
            bytes: collect::metrics(&agent, config),
            note: String::new(),
        },
        Part {
            name: "system.txt",
            about: "uname, uptime, free space of the state and log directories",
            bytes: collect::system(config, &made_at),
            note: String::new(),
        },
    ];
    let readme = readme(&ReadmeFacts {
        made_at: &made_at,
        config_path: &opts.config,
        config_error: config.err(),
        socket: &socket,
        agent: &agent,
        parts: &parts,
    });
    let mut files = vec![("README.txt".to_owned(), readme.into_bytes())];
    let mut missing = Vec::new();
    for part in parts {
        match part.bytes {
            Ok(bytes) => files.push((part.name.to_owned(), bytes)),
            Err(why) => missing.push((part.name.to_owned(), why)),
        }
    }
    write_bundle(&path, &name, &files, now.unix_timestamp()).map_err(|source| {
        DiagnoseError::Write {
            path: path.clone(),
            source,
        }
    })?;
    Ok(Written {
        path,
        agent_running: agent.status().is_some(),
        files: files.into_iter().map(|(n, _)| n).collect(),
        missing,
    })
}

/// What README.txt is written from.
struct ReadmeFacts<'a> {
    made_at: &'a str,
    config_path: &'a Path,
    config_error: Option<&'a str>,
    socket: &'a Path,
    agent: &'a AgentState,
    parts: &'a [Part],
}

/// The sentence README.txt says when no agent answered.
pub const NOT_RUNNING: &str = "The agent was not running; everything here was read from files";

fn readme(f: &ReadmeFacts<'_>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "jex-agent support bundle (jex-agent diagnose)");
    let _ = writeln!(o, "=============================================\n");
    let _ = writeln!(o, "made:    {} (UTC)", f.made_at);
    let _ = writeln!(o, "by:      jex-agent {}", crate::LONG_VERSION);
    let _ = writeln!(o, "config:  {}", f.config_path.display());
    if let Some(e) = f.config_error {
        let _ = writeln!(o, "         (it did not load: {e})");
    }
    let _ = writeln!(o, "socket:  {}\n", f.socket.display());
    match f.agent {
        AgentState::Running(status) => {
            let _ = writeln!(
                o,
                "The agent was running (pid {}): status.json, spool.json's counters and metrics.txt come from it.",
                status.get("pid").and_then(|p| p.as_u64()).unwrap_or(0)
            );
        }
        AgentState::NotRunning(why) => {
            let _ = writeln!(o, "{NOT_RUNNING}.");
            let _ = writeln!(o, "(No agent answered on its socket: {why}.)");
        }
        AgentState::NoAnswer(why) => {
            let _ = writeln!(
                o,
                "An agent may be running, but it gave no status on its socket ({why})."
            );
            let _ = writeln!(
                o,
                "The agent did not answer; everything here was read from files."
            );
        }
    }
    let _ = writeln!(o, "\nFiles:");
    let _ = writeln!(o, "  README.txt: this file");
    for part in f.parts {
        if let Ok(bytes) = &part.bytes {
            let _ = writeln!(o, "  {}: {} ({} bytes)", part.name, part.about, bytes.len());
            if !part.note.is_empty() {
                let _ = writeln!(o, "      {}", part.note);
            }
        }
    }
    let missing: Vec<&Part> = f.parts.iter().filter(|p| p.bytes.is_err()).collect();
    if missing.is_empty() {
        let _ = writeln!(o, "\nEvery part was collected.");
    } else {
        let _ = writeln!(o, "\nNot collected:");
        for part in missing {
            if let Err(why) = &part.bytes {
                let _ = writeln!(o, "  {}: {why}", part.name);
            }
        }
    }
    let _ = writeln!(
        o,
        "\nNever in this bundle: private keys (only certificate files are read), erase pattern keys\n\
         and their hashes, the controller's nonces, erase certificates' contents (they reveal the\n\
         pattern key and the nonce; their file names are listed in erase-journal.json), key-\n\
         destruction evidence, and telemetry records. It holds no tenant data."
    );
    o
}

/// Writes `files` under `top/` as a gzip'd tar at `path`: a temporary file (0600) in the same
/// directory, synced, then linked into place only if `path` still does not exist.
fn write_bundle(
    path: &Path,
    top: &str,
    files: &[(String, Vec<u8>)],
    mtime: i64,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".jex-agent-diagnose-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    {
        let gz = flate2::write::GzEncoder::new(tmp.as_file(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mtime = u64::try_from(mtime).unwrap_or(0);
        let mut dir_header = tar::Header::new_gnu();
        dir_header.set_entry_type(tar::EntryType::Directory);
        dir_header.set_mode(0o700);
        dir_header.set_size(0);
        dir_header.set_mtime(mtime);
        dir_header.set_uid(0);
        dir_header.set_gid(0);
        tar.append_data(&mut dir_header, format!("{top}/"), std::io::empty())?;
        let mut made_dirs: Vec<String> = Vec::new();
        for (name, bytes) in files {
            if let Some((sub, _)) = name.rsplit_once('/')
                && !made_dirs.iter().any(|d| d == sub)
            {
                let mut h = dir_header.clone();
                tar.append_data(&mut h, format!("{top}/{sub}/"), std::io::empty())?;
                made_dirs.push(sub.to_owned());
            }
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o600);
            h.set_size(bytes.len() as u64);
            h.set_mtime(mtime);
            h.set_uid(0);
            h.set_gid(0);
            tar.append_data(&mut h, format!("{top}/{name}"), bytes.as_slice())?;
        }
        let mut gz = tar.into_inner()?;
        gz.flush()?;
        gz.finish()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} appeared while the bundle was written: left alone",
                    path.display()
                ),
            )
        } else {
            e.error
        }
    })?;
    // The rename is durable once the directory is.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_name_has_the_host_and_utc_time() {
        let at = time::macros::datetime!(2026-12-06 21:05:09 UTC);
        assert_eq!(
            bundle_name("h-e2e", at),
            "jex-agent-diagnose-h-e2e-20261206T210509Z"
        );
        assert_eq!(
            bundle_name("a b/c", at),
            "jex-agent-diagnose-a_b_c-20261206T210509Z"
        );
    }

    #[test]
    fn the_destination_must_be_new_in_a_directory_that_exists() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope").join("b.tar.gz");
        let err = destination(Some(&missing), "x").unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(err.contains("does not exist"), "{err}");
        let existing = dir.path().join("b.tar.gz");
        std::fs::write(&existing, b"keep").unwrap();
        let err = destination(Some(&existing), "x").unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(std::fs::read(&existing).unwrap(), b"keep");
        assert_eq!(
            destination(None, "jex-agent-diagnose-h-1").unwrap(),
            PathBuf::from("jex-agent-diagnose-h-1.tar.gz")
        );
    }

    #[test]
    fn the_bundle_is_a_gzipped_tar_under_one_directory_created_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.tar.gz");
        let files = vec![
            ("README.txt".to_owned(), b"hello\n".to_vec()),
            ("logs/agent.log.tail".to_owned(), b"{}\n".to_vec()),
        ];
        write_bundle(&path, "top", &files, 1_700_000_000).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap());
        let mut archive = tar::Archive::new(gz);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            let mut body = String::new();
            std::io::Read::read_to_string(&mut entry, &mut body).unwrap();
            seen.push((name, body));
        }
        assert_eq!(
            seen,
            vec![
                ("top/".to_owned(), String::new()),
                ("top/README.txt".to_owned(), "hello\n".to_owned()),
                ("top/logs/".to_owned(), String::new()),
                ("top/logs/agent.log.tail".to_owned(), "{}\n".to_owned()),
            ]
        );
        // No temporary file is left beside it, and a second write refuses to replace it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let err = write_bundle(&path, "top", &files, 0).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
