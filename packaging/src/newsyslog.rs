//! newsyslog.d rules: a parser for the `newsyslog.conf(5)` line format and the shipped rule file.
//!
//! Format, one rule per line, `#` starts a comment:
//!
//! ```text
//! logfilename [owner:group] mode count size when [flags] [/pid_file] [sig_num]
//! ```
//!
//! `mode` is octal, `size` is KiB or `*` (no size trigger), `when` is `*` (size only) or a time
//! specification (`$D0`, `@T00`, a number of hours). Flags used here: `N` (no process to signal:
//! required when there is no pid file, otherwise newsyslog signals syslogd), `Z`/`J`/`X`
//! (compress), `C` (create), `G` (glob). macOS reads `/etc/newsyslog.d/*.conf`.

/// The rule file as shipped in the repository and installed at
/// [`crate::layout::NEWSYSLOG_CONF_PATH`].
pub const CONF_BYTES: &[u8] = include_bytes!("../../launchd/com.jexcloud.agent.newsyslog.conf");

/// Flags newsyslog on macOS understands.
const KNOWN_FLAGS: &str = "BCDGJNpRTUXZ-";

/// One rotation rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Absolute path of the rotated log (or glob with the `G` flag).
    pub path: String,
    /// Owner and group given to new log files, when set.
    pub owner: Option<(String, String)>,
    /// Mode of the rotated files.
    pub mode: u32,
    /// Number of archived files kept.
    pub count: u32,
    /// Size trigger in KiB; `None` for `*`.
    pub size_kib: Option<u64>,
    /// Time trigger; `None` for `*`.
    pub when: Option<String>,
    /// Flag letters (`-` alone means none).
    pub flags: String,
    /// Pid file of the process to signal.
    pub pid_file: Option<String>,
    /// Signal number sent to that process.
    pub signal: Option<u32>,
}

impl Rule {
    /// Whether the rule has flag `flag`.
    pub fn has_flag(&self, flag: char) -> bool {
        self.flags.contains(flag)
    }
}

/// A line that is not a valid rule.
#[derive(Debug, thiserror::Error)]
pub enum NewsyslogError {
    /// A field is missing or malformed.
    #[error("newsyslog rule line {line}: {what}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong and how to write it.
        what: String,
    },
}

/// Parses a newsyslog.d file into its rules.
pub fn parse(text: &str) -> Result<Vec<Rule>, NewsyslogError> {
    let mut rules = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = raw.split('#').next().unwrap_or_default().trim();
        if content.is_empty() {
            continue;
        }
        rules.push(parse_line(content).map_err(|what| NewsyslogError::Line { line, what })?);
    }
    Ok(rules)
}

fn parse_line(content: &str) -> Result<Rule, String> {
    let mut fields = content.split_whitespace().peekable();
    let path = fields.next().ok_or("missing log file name")?.to_owned();
    if !path.starts_with('/') {
        return Err(format!("log file {path:?} must be an absolute path"));
    }
    let owner = match fields.peek() {
        Some(f) if f.contains(':') => {
            let (user, group) = f.split_once(':').unwrap_or_default();
            let owner = (user.to_owned(), group.to_owned());
            fields.next();
            Some(owner)
        }
        _ => None,
    };
    let mode_text = fields.next().ok_or("missing mode")?;
    let mode = u32::from_str_radix(mode_text, 8)
        .map_err(|_| format!("mode {mode_text:?} must be octal, e.g. 640"))?;
    let count_text = fields.next().ok_or("missing count")?;
    let count = count_text
        .parse()
        .map_err(|_| format!("count {count_text:?} must be a number"))?;
    let size_text = fields.next().ok_or("missing size")?;
    let size_kib = match size_text {
        "*" => None,
        s => Some(
            s.parse()
                .map_err(|_| format!("size {s:?} must be KiB or *"))?,
        ),
    };
    let when_text = fields.next().ok_or("missing when (use * for size-only)")?;
    let when = (when_text != "*").then(|| when_text.to_owned());
    let mut flags = String::new();
    let mut pid_file = None;
    let mut signal = None;
    if let Some(f) = fields.next() {
        if f.starts_with('/') {
            pid_file = Some(f.to_owned());
        } else {
            if let Some(bad) = f.chars().find(|c| !KNOWN_FLAGS.contains(*c)) {
                return Err(format!("unknown flag {bad:?} in {f:?}"));
            }
            flags = f.to_owned();
        }
    }
    if pid_file.is_none()
        && let Some(f) = fields.next()
    {
        if !f.starts_with('/') {
            return Err(format!("pid file {f:?} must be an absolute path"));
        }
        pid_file = Some(f.to_owned());
    }
    if let Some(f) = fields.next() {
        signal = Some(
            f.parse()
                .map_err(|_| format!("signal {f:?} must be a number"))?,
        );
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected field {extra:?}"));
    }
    if pid_file.is_none() && !flags.contains('N') {
        return Err("no pid file: add the N flag, or newsyslog signals syslogd".to_owned());
    }
    Ok(Rule {
        path,
        owner,
        mode,
        count,
        size_kib,
        when,
        flags,
        pid_file,
        signal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout;

    #[test]
    fn shipped_rules_rotate_both_launchd_files_and_signal_nothing() {
        let text = std::str::from_utf8(CONF_BYTES).expect("utf-8");
        let rules = parse(text).expect("shipped rules parse");
        let paths: Vec<&str> = rules.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(
            paths,
            [layout::LAUNCHD_STDOUT_LOG, layout::LAUNCHD_STDERR_LOG]
        );
        for rule in &rules {
            assert!(rule.has_flag('N'), "{rule:?}");
            assert!(rule.pid_file.is_none());
            assert_eq!(rule.owner, Some(("root".to_owned(), "wheel".to_owned())));
            assert_eq!(rule.mode, 0o640);
            assert!(rule.count >= 1);
            assert!(rule.size_kib.is_some(), "a size trigger bounds the files");
            // The agent's own log rotates itself.
            assert_ne!(rule.path, layout::AGENT_LOG);
        }
    }

    #[test]
    fn parses_all_fields_of_a_rule_with_a_pid_file() {
        let rules = parse("/var/log/x.log  root:wheel 600 2 10000 $D0 JC /var/run/x.pid 30\n")
            .expect("parse");
        assert_eq!(
            rules,
            [Rule {
                path: "/var/log/x.log".to_owned(),
                owner: Some(("root".to_owned(), "wheel".to_owned())),
                mode: 0o600,
                count: 2,
                size_kib: Some(10000),
                when: Some("$D0".to_owned()),
                flags: "JC".to_owned(),
                pid_file: Some("/var/run/x.pid".to_owned()),
                signal: Some(30),
            }]
        );
    }

    #[test]
    fn owner_is_optional_and_comments_are_skipped() {
        let rules =
            parse("# comment\n\n/var/log/y.log 644 3 * @T00 NZ # trailing\n").expect("parse");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].owner, None);
        assert_eq!(rules[0].size_kib, None);
        assert_eq!(rules[0].when.as_deref(), Some("@T00"));
    }

    #[test]
    fn rejects_malformed_rules_naming_the_line() {
        for (text, needle) in [
            ("/a 64x 1 1 * N", "octal"),
            ("relative.log 640 1 1 * N", "absolute"),
            ("/a 640 1 1 * Q", "unknown flag"),
            ("/a 640 1 1 * Z", "N flag"),
            ("/a 640 1", "missing size"),
        ] {
            let err = parse(&format!("# header\n{text}\n")).expect_err(text);
            let message = err.to_string();
            assert!(message.contains("line 2"), "{message}");
            assert!(message.contains(needle), "{message}");
        }
    }
}
