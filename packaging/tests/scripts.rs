//! Runs preinstall, postinstall and the uninstaller, as extracted from a built package, against a
//! temporary root with fake `launchctl`, `pkgutil`, `chown` and `jex-agent` that record their
//! calls. Also runs `shellcheck` on the scripts.

#![allow(clippy::expect_used)] // test code: a failed expectation is a failed test

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use jex_packaging::build;
use jex_packaging::layout;

const EXAMPLE_V1: &str = "# example v1\n";
const EXAMPLE_V2: &str = "# example v2\n";

/// Fake launchctl: `loaded` file = job loaded, `running` file = agent process alive. bootstrap of
/// a loaded job fails like launchd (5), and the first `$FAKE_BOOTSTRAP_FAILURES` bootstraps fail.
///
/// It also does to the agent process what launchd would, and appends each event to
/// `$FAKE_STATE/agent.events`: `start` when a bootstrap loads a plist whose `RunAtLoad` is true
/// (read with Python's plistlib) and on `kickstart` of a job that is not running; `kill` then
/// `start` on `kickstart -k` of a running job; `stop` on `bootout` of a running job.
const FAKE_LAUNCHCTL: &str = r#"#!/bin/bash
echo "launchctl $*" >>"$FAKE_LOG"
loaded="$FAKE_STATE/loaded"
running="$FAKE_STATE/running"
event() { echo "$1" >>"$FAKE_STATE/agent.events"; }
start() { touch "$running"; event start; }
case "$1" in
    print) [ -e "$loaded" ] || { echo "Could not find service" >&2; exit 113; } ;;
    bootout)
        [ -e "$loaded" ] || { echo "Boot-out failed: 3: No such process" >&2; exit 3; }
        if [ -e "$running" ]; then rm -f "$running"; event stop; fi
        rm -f "$loaded" ;;
    bootstrap)
        [ ! -e "$loaded" ] || { echo "Bootstrap failed: 5: Input/output error" >&2; exit 5; }
        failures=$(cat "$FAKE_STATE/bootstrap_failures" 2>/dev/null || echo 0)
        if [ "$failures" -lt "${FAKE_BOOTSTRAP_FAILURES:-0}" ]; then
            echo $((failures + 1)) >"$FAKE_STATE/bootstrap_failures"
            echo "Bootstrap failed: 5: Input/output error" >&2
            exit 5
        fi
        [ -f "$3" ] || { echo "no plist $3" >&2; exit 2; }
        touch "$loaded"
        if python3 -c 'import plistlib,sys; sys.exit(0 if plistlib.load(open(sys.argv[1],"rb")).get("RunAtLoad") is True else 1)' "$3"; then
            start
        fi ;;
    kickstart)
        [ -e "$loaded" ] || { echo "Could not find service" >&2; exit 113; }
        if [ "$2" = -k ] && [ -e "$running" ]; then event kill; start
        elif [ ! -e "$running" ]; then start
        fi ;;
    enable) ;;
    *) echo "unexpected launchctl $*" >&2; exit 64 ;;
esac
"#;

/// Fake pkgutil: the receipt is `$FAKE_STATE/receipt` (one relative path per line).
const FAKE_PKGUTIL: &str = r#"#!/bin/bash
echo "pkgutil $*" >>"$FAKE_LOG"
receipt="$FAKE_STATE/receipt"
case "$*" in
    "--only-files --files com.jexcloud.agent")
        [ -e "$receipt" ] || { echo "No receipt for 'com.jexcloud.agent' found at '/'." >&2; exit 1; }
        cat "$receipt" ;;
    "--forget com.jexcloud.agent")
        [ -e "$receipt" ] || { echo "No receipt for 'com.jexcloud.agent' found at '/'." >&2; exit 1; }
        rm -f "$receipt"; echo "Forgot package 'com.jexcloud.agent' on '/'." ;;
    *) echo "unexpected pkgutil $*" >&2; exit 64 ;;
esac
"#;

const FAKE_CHOWN: &str = "#!/bin/bash\necho \"chown $*\" >>\"$FAKE_LOG\"\n";

/// A temporary host: root directory, fake tools, call log.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in [
            ("launchctl", FAKE_LAUNCHCTL),
            ("pkgutil", FAKE_PKGUTIL),
            ("chown", FAKE_CHOWN),
        ] {
            let path = dir.path().join("bin").join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("bin");
            std::fs::write(&path, text).expect("fake");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        std::fs::create_dir_all(dir.path().join("root")).expect("root");
        std::fs::create_dir_all(dir.path().join("state")).expect("state");
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Path of an absolute install path inside the test root.
    fn at(&self, absolute: &str) -> PathBuf {
        self.root().join(absolute.trim_start_matches('/'))
    }

    /// What Installer does before preinstall: extract the package's Scripts aside.
    fn stage_scripts(&self, example: &str) {
        let pkg = build::build_package(&common::fake_inputs(example)).expect("build");
        let scripts = self.dir.path().join("scripts");
        let _ = std::fs::remove_dir_all(&scripts);
        common::extract_cpio_gz(&pkg, "jex-agent.pkg/Scripts", &scripts);
    }

    /// What Installer does between preinstall and postinstall: extract the Payload over the root
    /// and write the receipt (the payload's files, relative to the volume, as `pkgutil --files`
    /// lists them).
    fn install_payload(&self, example: &str) {
        let pkg = build::build_package(&common::fake_inputs(example)).expect("build");
        common::extract_cpio_gz(&pkg, "jex-agent.pkg/Payload", &self.root());
        self.stage_scripts(example);
        let receipt: Vec<String> = build::payload_entries(&common::fake_inputs(example))
            .iter()
            .filter(|e| matches!(e.kind, jex_packaging::cpio::EntryKind::File(_)))
            .map(|e| e.path.trim_start_matches("./").to_owned())
            .collect();
        std::fs::write(
            self.dir.path().join("state/receipt"),
            receipt.join("\n") + "\n",
        )
        .expect("receipt");
    }

    fn command(&self, script: &Path) -> Command {
        let bin = self.dir.path().join("bin");
        let mut cmd = Command::new(script);
        cmd.env("JEX_ROOT", self.root())
            .env("JEX_LAUNCHCTL", bin.join("launchctl"))
            .env("JEX_PKGUTIL", bin.join("pkgutil"))
            .env("JEX_CHOWN", bin.join("chown"))
            .env("JEX_RETRY_DELAY", "0")
            .env("JEX_WAIT_SECS", "0")
            .env("FAKE_LOG", self.dir.path().join("calls.log"))
            .env("FAKE_STATE", self.dir.path().join("state"));
        cmd
    }

    /// Runs an installer script from the extracted Scripts with Installer's arguments.
    fn installer_script(&self, name: &str, volume: &str, extra_env: &[(&str, &str)]) -> Output {
        let script = self.dir.path().join("scripts").join(name);
        let mut cmd = self.command(&script);
        cmd.args(["/tmp/jex-agent.pkg", "/", volume]);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.output().expect("run script")
    }

    /// Runs the uninstaller as installed by the payload.
    fn uninstall(&self, args: &[&str]) -> Output {
        self.command(&self.at(layout::UNINSTALL_SCRIPT))
            .args(args)
            .output()
            .expect("run uninstall")
    }

    /// Runs a copy of the uninstaller (the installed one removes itself on its first run).
    fn uninstall_copy(&self, args: &[&str]) -> Output {
        let copy = self.dir.path().join("uninstall.copy");
        std::fs::write(&copy, build::UNINSTALL).expect("copy");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        self.command(&copy)
            .args(args)
            .output()
            .expect("run uninstall copy")
    }

    /// Calls recorded since the last call to this function.
    fn take_calls(&self) -> Vec<String> {
        let path = self.dir.path().join("calls.log");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        text.lines().map(str::to_owned).collect()
    }

    /// What launchd did to the agent process since the last call to this function (`start`,
    /// `kill`, `stop`; see [`FAKE_LAUNCHCTL`]).
    fn take_agent_events(&self) -> Vec<String> {
        let path = self.dir.path().join("state/agent.events");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        text.lines().map(str::to_owned).collect()
    }

    fn loaded(&self) -> bool {
        self.dir.path().join("state/loaded").exists()
    }

    /// A job loaded and running, as launchd leaves it after a bootstrap.
    fn set_loaded(&self) {
        std::fs::write(self.dir.path().join("state/loaded"), "").expect("loaded");
        std::fs::write(self.dir.path().join("state/running"), "").expect("running");
    }

    /// Runs the fake launchctl directly.
    fn launchctl(&self, args: &[&str]) -> Output {
        self.command(&self.dir.path().join("bin/launchctl"))
            .args(args)
            .output()
            .expect("run fake launchctl")
    }
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

fn install(host: &Host, example: &str) {
    host.stage_scripts(example);
    assert_ok(&host.installer_script("preinstall", "/", &[]), "preinstall");
    host.install_payload(example);
    assert_ok(
        &host.installer_script("postinstall", "/", &[]),
        "postinstall",
    );
}

#[test]
fn shellcheck_passes_on_every_script() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let out = common::run(
        &dir,
        "shellcheck",
        &["-s", "bash", "preinstall", "postinstall", "uninstall"],
    );
    assert!(
        out.status.success(),
        "shellcheck: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn fresh_install_creates_directories_and_config_then_starts_the_agent() {
    let host = Host::new();
    host.stage_scripts(EXAMPLE_V1);
    assert_ok(&host.installer_script("preinstall", "/", &[]), "preinstall");
    assert_eq!(
        host.take_calls(),
        ["launchctl print system/com.jexcloud.agent"],
        "preinstall only looks when nothing is loaded"
    );
    host.install_payload(EXAMPLE_V1);
    assert_ok(
        &host.installer_script("postinstall", "/", &[]),
        "postinstall",
    );

    assert_eq!(mode(&host.at(layout::STATE_DIR)), layout::STATE_DIR_MODE);
    assert_eq!(mode(&host.at(layout::LOG_DIR)), layout::LOG_DIR_MODE);
    assert_eq!(mode(&host.at(layout::CONFIG_PATH)), layout::CONFIG_MODE);
    assert_eq!(
        std::fs::read_to_string(host.at(layout::CONFIG_PATH)).expect("config"),
        EXAMPLE_V1
    );
    let config = host.at(layout::CONFIG_PATH).display().to_string();
    let plist = host.at(layout::PLIST_PATH).display().to_string();
    let calls = host.take_calls();
    let expected_tail = [
        format!("jex-agent check-config --config {config}"),
        "launchctl print system/com.jexcloud.agent".to_owned(),
        "launchctl enable system/com.jexcloud.agent".to_owned(),
        format!("launchctl bootstrap system {plist}"),
    ];
    assert!(calls.ends_with(&expected_tail), "{calls:#?}");
    assert_eq!(host.take_agent_events(), ["start"]);
    let chowned: BTreeSet<&str> = calls
        .iter()
        .filter_map(|c| c.strip_prefix("chown 0:0 "))
        .collect();
    assert!(chowned.contains(plist.as_str()), "{calls:#?}");
    assert!(
        calls.iter().any(|c| c.starts_with("chown 0:0 ")
            && c.contains(&host.at(layout::STATE_DIR).display().to_string())),
        "{calls:#?}"
    );
    assert!(host.loaded());
    // No temporary config file left behind.
    let vendor = std::fs::read_dir(host.at(layout::VENDOR_DIR)).expect("vendor");
    assert!(
        vendor
            .filter_map(Result::ok)
            .all(|e| !e.file_name().to_string_lossy().contains(".tmp"))
    );
}

#[test]
fn reinstall_stops_the_agent_keeps_the_config_and_starts_again() {
    let host = Host::new();
    install(&host, EXAMPLE_V1);
    std::fs::write(host.at(layout::CONFIG_PATH), "# operator's config\n").expect("edit");
    std::fs::write(host.at(layout::STATE_DIR).join("journal"), "state").expect("state");
    host.stage_scripts(EXAMPLE_V2);
    host.take_calls();
    assert_eq!(host.take_agent_events(), ["start"], "the first install");

    assert_ok(&host.installer_script("preinstall", "/", &[]), "preinstall");
    assert_eq!(
        host.take_calls(),
        [
            "launchctl print system/com.jexcloud.agent",
            "launchctl bootout system/com.jexcloud.agent",
            "launchctl print system/com.jexcloud.agent",
        ]
    );
    assert_eq!(
        host.take_agent_events(),
        ["stop"],
        "preinstall stops the old agent"
    );
    assert!(!host.loaded());
    host.install_payload(EXAMPLE_V2);
    assert_ok(
        &host.installer_script("postinstall", "/", &[]),
        "postinstall",
    );
    assert_eq!(
        host.take_agent_events(),
        ["start"],
        "the new agent starts once"
    );
    assert_eq!(
        std::fs::read_to_string(host.at(layout::CONFIG_PATH)).expect("config"),
        "# operator's config\n"
    );
    assert_eq!(
        std::fs::read_to_string(host.at(layout::CONFIG_EXAMPLE_PATH)).expect("example"),
        EXAMPLE_V2
    );
    assert_eq!(
        std::fs::read_to_string(host.at(layout::STATE_DIR).join("journal")).expect("state"),
        "state"
    );
    assert!(host.loaded());

    // postinstall run again on its own (job loaded): it boots the job out before bootstrapping.
    host.take_calls();
    assert_ok(
        &host.installer_script("postinstall", "/", &[]),
        "postinstall again",
    );
    let calls = host.take_calls();
    assert!(
        calls.contains(&"launchctl bootout system/com.jexcloud.agent".to_owned()),
        "{calls:#?}"
    );
    assert_eq!(
        host.take_agent_events(),
        ["stop", "start"],
        "the old instance is stopped by bootout, the new one started once"
    );
    assert!(host.loaded());
}

#[test]
fn bootstrap_is_retried_until_launchd_accepts_it() {
    let host = Host::new();
    host.install_payload(EXAMPLE_V1);
    let out = host.installer_script("postinstall", "/", &[("FAKE_BOOTSTRAP_FAILURES", "2")]);
    assert_ok(&out, "postinstall");
    let bootstraps = host
        .take_calls()
        .iter()
        .filter(|c| c.starts_with("launchctl bootstrap"))
        .count();
    assert_eq!(bootstraps, 3);
    assert_eq!(
        host.take_agent_events(),
        ["start"],
        "only the accepted bootstrap starts it"
    );
    assert!(host.loaded());

    let host = Host::new();
    host.install_payload(EXAMPLE_V1);
    let out = host.installer_script("postinstall", "/", &[("FAKE_BOOTSTRAP_FAILURES", "99")]);
    assert_eq!(out.status.code(), Some(1), "gives up after 5 attempts");
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed 5 times"));
}

#[test]
fn invalid_configuration_is_never_started() {
    // Fresh install with the unedited example: install succeeds, agent not started.
    let host = Host::new();
    host.install_payload(EXAMPLE_V1);
    let out = host.installer_script("postinstall", "/", &[("FAKE_CHECK_CONFIG_STATUS", "64")]);
    assert_ok(&out, "postinstall with the example config");
    assert!(String::from_utf8_lossy(&out.stdout).contains("launchctl bootstrap system"));
    assert!(host.take_calls().iter().all(|c| !c.contains("bootstrap")));
    assert!(host.take_agent_events().is_empty());
    assert!(!host.loaded());

    // An operator's configuration rejected by the new version fails the install.
    std::fs::write(host.at(layout::CONFIG_PATH), "# operator's config\n").expect("edit");
    let out = host.installer_script("postinstall", "/", &[("FAKE_CHECK_CONFIG_STATUS", "64")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rejected"));
    assert!(!host.loaded());
}

/// The agent may be resuming an erase from its journal as soon as it starts: the install must
/// start it once and never kill the instance it started.
#[test]
fn postinstall_starts_the_agent_exactly_once_and_never_kills_it() {
    let host = Host::new();
    install(&host, EXAMPLE_V1);
    let calls = host.take_calls();
    assert_eq!(host.take_agent_events(), ["start"], "{calls:#?}");
    let bootstrap_at = calls
        .iter()
        .position(|c| c.starts_with("launchctl bootstrap system "))
        .expect("a bootstrap");
    let after: Vec<&String> = calls[bootstrap_at + 1..]
        .iter()
        .filter(|c| c.starts_with("launchctl "))
        .collect();
    assert!(
        after.is_empty(),
        "no launchctl call after the bootstrap that started the agent: {after:#?}"
    );
    assert!(calls.iter().all(|c| !c.contains("kickstart")), "{calls:#?}");
    assert!(host.loaded());
}

/// The assertions above rely on the fake doing what launchd does: a bootstrap starts a job only
/// because the installed plist says RunAtLoad, and `kickstart -k` kills a running agent.
#[test]
fn fake_launchctl_starts_on_run_at_load_and_kills_on_kickstart_k() {
    let host = Host::new();
    install(&host, EXAMPLE_V1);
    host.take_agent_events();
    let plist = host.at(layout::PLIST_PATH).display().to_string();

    assert_ok(
        &host.launchctl(&["kickstart", "system/com.jexcloud.agent"]),
        "kickstart",
    );
    assert!(
        host.take_agent_events().is_empty(),
        "a plain kickstart of a running job does nothing"
    );
    assert_ok(
        &host.launchctl(&["kickstart", "-k", "system/com.jexcloud.agent"]),
        "kickstart -k",
    );
    assert_eq!(host.take_agent_events(), ["kill", "start"]);

    // The same plist with RunAtLoad false: bootstrap loads the job without starting it.
    assert_ok(
        &host.launchctl(&["bootout", "system/com.jexcloud.agent"]),
        "bootout",
    );
    assert_eq!(host.take_agent_events(), ["stop"]);
    let text = std::fs::read_to_string(&plist).expect("plist");
    let off = text.replace(
        "<key>RunAtLoad</key>\n\t<true/>",
        "<key>RunAtLoad</key>\n\t<false/>",
    );
    assert_ne!(off, text, "the installed plist says RunAtLoad true");
    std::fs::write(&plist, off).expect("plist");
    assert_ok(
        &host.launchctl(&["bootstrap", "system", &plist]),
        "bootstrap",
    );
    assert!(host.loaded());
    assert!(host.take_agent_events().is_empty());
}

#[test]
fn installer_scripts_do_nothing_for_another_volume() {
    let host = Host::new();
    host.set_loaded();
    host.install_payload(EXAMPLE_V1);
    for script in ["preinstall", "postinstall"] {
        assert_ok(
            &host.installer_script(script, "/Volumes/Other", &[]),
            script,
        );
    }
    assert!(host.take_calls().is_empty());
    assert!(!host.at(layout::CONFIG_PATH).exists());
    assert!(host.loaded());
}

fn package_files() -> Vec<&'static str> {
    vec![
        layout::AGENT_BINARY,
        layout::UNINSTALL_SCRIPT,
        layout::CONFIG_EXAMPLE_PATH,
        layout::PLIST_PATH,
        layout::NEWSYSLOG_CONF_PATH,
    ]
}

#[test]
fn uninstall_removes_package_files_and_keeps_config_state_and_logs() {
    let host = Host::new();
    install(&host, EXAMPLE_V1);
    std::fs::write(host.at(layout::LAUNCHD_STDERR_LOG), "panic").expect("log");
    host.take_calls();

    let out = host.uninstall(&[]);
    assert_ok(&out, "uninstall");
    for file in package_files() {
        assert!(!host.at(file).exists(), "{file} left behind");
    }
    assert!(!host.at(layout::BIN_DIR).exists());
    assert!(host.at(layout::CONFIG_PATH).is_file());
    assert!(host.at(layout::STATE_DIR).is_dir());
    assert!(host.at(layout::LAUNCHD_STDERR_LOG).is_file());
    assert!(!host.loaded());
    let calls = host.take_calls();
    assert!(calls.contains(&"launchctl bootout system/com.jexcloud.agent".to_owned()));
    assert!(
        calls.contains(&"pkgutil --forget com.jexcloud.agent".to_owned()),
        "{calls:#?}"
    );

    // Idempotent: nothing loaded, no receipt, no files.
    assert_ok(&host.uninstall_copy(&[]), "second uninstall");
    assert!(host.at(layout::CONFIG_PATH).is_file());
}

#[test]
fn uninstall_purge_removes_config_state_and_logs() {
    let host = Host::new();
    install(&host, EXAMPLE_V1);
    std::fs::write(host.at(layout::LAUNCHD_STDERR_LOG), "panic").expect("log");
    assert_ok(&host.uninstall(&["--purge"]), "uninstall --purge");
    assert!(!host.at(layout::VENDOR_DIR).exists());
    assert!(!host.at(layout::LOG_DIR).exists());
    // Shared system directories stay.
    assert!(host.at("/Library/LaunchDaemons").is_dir());
    assert!(host.at("/private/etc/newsyslog.d").is_dir());
}

#[test]
fn uninstall_never_removes_the_config_and_works_without_a_receipt() {
    let host = Host::new();
    install(&host, EXAMPLE_V1);
    // A receipt naming the config and a foreign file: neither is removed.
    let receipt = host.dir.path().join("state/receipt");
    let mut text = std::fs::read_to_string(&receipt).expect("receipt");
    text.push_str("Library/Application Support/JexCloud/agent.toml\nusr/bin/true\n");
    std::fs::write(&receipt, text).expect("receipt");
    std::fs::create_dir_all(host.at("/usr/bin")).expect("usr");
    std::fs::write(host.at("/usr/bin/true"), "").expect("true");
    assert_ok(&host.uninstall(&[]), "uninstall");
    assert!(host.at(layout::CONFIG_PATH).is_file());
    assert!(host.at("/usr/bin/true").is_file());

    // No receipt at all: the known list still removes every package file.
    let host = Host::new();
    install(&host, EXAMPLE_V1);
    std::fs::remove_file(host.dir.path().join("state/receipt")).expect("rm receipt");
    let out = host.uninstall(&[]);
    assert_ok(&out, "uninstall without receipt");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no receipt"));
    for file in package_files() {
        assert!(!host.at(file).exists(), "{file} left behind");
    }
}

#[test]
fn uninstall_rejects_unknown_arguments() {
    let host = Host::new();
    install(&host, EXAMPLE_V1);
    let out = host.uninstall(&["--everything"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(host.at(layout::AGENT_BINARY).exists());
}
