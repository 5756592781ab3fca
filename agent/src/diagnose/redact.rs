//! Keeps key material out of the configuration text the bundle carries.
//!
//! The agent's configuration names its key files by path and holds no key itself, so the text
//! normally passes through unchanged; what this module guarantees is that it stays so even when
//! someone pasted a key into it. Every PEM block (`-----BEGIN …-----` to its `-----END …-----`,
//! or to the end of the text when the end line is missing) is replaced by a one-line marker,
//! and so is every run of 40 or more base64 or hex characters that is not part of a path.

/// The configuration text with key material taken out, and what was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    /// The text to put in the bundle.
    pub text: String,
    /// One line per redaction (`PEM block "PRIVATE KEY" at line 7`), empty when none.
    pub removed: Vec<String>,
}

/// The marker a PEM block is replaced with.
pub const PEM_MARKER: &str = "[PEM block removed by jex-agent diagnose]";
/// The marker a key-like string is replaced with.
pub const KEY_MARKER: &str = "[key-like string removed by jex-agent diagnose]";

/// The shortest run of base64/hex characters taken for key material.
const MIN_KEY_RUN: usize = 40;

/// `text` without PEM blocks or key-like strings; see the module docs.
pub fn redact(text: &str) -> Redacted {
    let mut out = String::with_capacity(text.len());
    let mut removed = Vec::new();
    let mut in_pem: Option<(String, usize)> = None;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let number = index + 1;
        if let Some((label, start)) = &in_pem {
            if line.contains("-----END") {
                removed.push(format!("PEM block {label:?} at lines {start}-{number}"));
                // Whatever follows the end line on it is kept.
                let after = line
                    .find("-----END")
                    .and_then(|at| line[at + 8..].find("-----").map(|e| at + 8 + e + 5))
                    .map_or("", |end| &line[end..]);
                out.push_str(&scrub_line(after, number, &mut removed));
                in_pem = None;
            }
            continue;
        }
        if let Some(at) = line.find("-----BEGIN") {
            let label = line[at + 10..]
                .split("-----")
                .next()
                .unwrap_or("")
                .trim()
                .to_owned();
            out.push_str(&scrub_line(&line[..at], number, &mut removed));
            out.push_str(PEM_MARKER);
            // A block that begins and ends on one line.
            let rest = &line[at + 10..];
            if let Some(end) = rest.find("-----END") {
                removed.push(format!("PEM block {label:?} at line {number}"));
                let after = rest[end + 8..]
                    .find("-----")
                    .map_or("", |e| &rest[end + 8 + e + 5..]);
                out.push_str(&scrub_line(after, number, &mut removed));
            } else {
                // The end line's own newline ends the marker's line.
                in_pem = Some((label, number));
            }
            continue;
        }
        out.push_str(&scrub_line(line, number, &mut removed));
    }
    if let Some((label, start)) = in_pem {
        out.push('\n');
        removed.push(format!(
            "PEM block {label:?} from line {start} to the end (no END line)"
        ));
    }
    Redacted { text: out, removed }
}

/// One line with every key-like run replaced.
fn scrub_line(line: &str, number: usize, removed: &mut Vec<String>) -> String {
    let mut out = String::with_capacity(line.len());
    let mut run = String::new();
    let mut flush = |run: &mut String, out: &mut String, prev: Option<char>| {
        // A run right after a `/` is a path segment: paths are kept.
        if run.chars().count() >= MIN_KEY_RUN && prev != Some('/') && looks_like_key(run) {
            out.push_str(KEY_MARKER);
            removed.push(format!(
                "key-like string of {} characters at line {number}",
                run.len()
            ));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    let mut prev_before_run: Option<char> = None;
    let mut prev: Option<char> = None;
    for c in line.chars() {
        if c.is_ascii_alphanumeric() || c == '+' || c == '=' || (c == '/' && !run.is_empty()) {
            if run.is_empty() {
                prev_before_run = prev;
            }
            run.push(c);
        } else {
            flush(&mut run, &mut out, prev_before_run);
            out.push(c);
        }
        prev = Some(c);
    }
    flush(&mut run, &mut out, prev_before_run);
    out
}

/// Base64 or hex: letters and digits mixed (a long word of letters alone is not a key).
fn looks_like_key(run: &str) -> bool {
    let digits = run.chars().filter(char::is_ascii_digit).count();
    let letters = run.chars().filter(char::is_ascii_alphabetic).count();
    digits >= 4 && letters >= 4
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CONFIG: &str = "state_dir = \"/var/lib/jex-agent\"\n\n[tls]\ncert = \"/etc/jex-agent/tls/agent.pem\"\nkey = \"/etc/jex-agent/tls/agent.key\"\n";

    #[test]
    fn a_config_of_paths_passes_unchanged() {
        let r = redact(CONFIG);
        assert_eq!(r.text, CONFIG);
        assert!(r.removed.is_empty());
        // Long path segments and device ids are paths, not keys.
        let devices = "device = \"/dev/disk/by-id/nvme-SAMSUNG_MZVL21T0HCLR-00B00_S676NF0R900123\"\nluks_uuid = \"9f5d0c8e-3a1b-4c2d-8e7f-0a1b2c3d4e5f\"\ncert = \"/srv/0123456789abcdef0123456789abcdef0123456789abcdef/agent.pem\"\n";
        assert_eq!(redact(devices).text, devices);
    }

    #[test]
    fn an_embedded_pem_block_is_removed_and_reported() {
        let key_body = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgY2sXW0yW2Cz0aaaa";
        let text = format!(
            "{CONFIG}# pasted by mistake\nnote = '''\n-----BEGIN PRIVATE KEY-----\n{key_body}\nhRANCAAQ1234abcd\n-----END PRIVATE KEY-----\n'''\nafter = 1\n"
        );
        let r = redact(&text);
        assert!(!r.text.contains(key_body), "{}", r.text);
        assert!(!r.text.contains("hRANCAAQ1234abcd"));
        assert!(!r.text.contains("PRIVATE KEY"));
        assert!(r.text.contains(PEM_MARKER));
        assert!(r.text.starts_with(CONFIG));
        assert!(r.text.ends_with("'''\nafter = 1\n"), "{}", r.text);
        assert_eq!(r.removed, vec!["PEM block \"PRIVATE KEY\" at lines 8-11"]);

        // One line, and one without its END line.
        let r =
            redact("k = \"-----BEGIN EC PRIVATE KEY-----abc123-----END EC PRIVATE KEY-----\"\n");
        assert_eq!(r.text, format!("k = \"{PEM_MARKER}\"\n"));
        let r = redact("a = 1\n-----BEGIN CERTIFICATE-----\nMIIB\n");
        assert_eq!(r.text, format!("a = 1\n{PEM_MARKER}\n"));
        assert_eq!(
            r.removed,
            vec!["PEM block \"CERTIFICATE\" from line 2 to the end (no END line)"]
        );
    }

    #[test]
    fn a_bare_key_like_string_is_removed() {
        let hex_key = "3f2a9c0d4e5b6a7980112233445566778899aabbccddeeff0011223344556677";
        let r = redact(&format!("pattern_key = \"{hex_key}\"\n"));
        assert_eq!(r.text, format!("pattern_key = \"{KEY_MARKER}\"\n"));
        assert_eq!(
            r.removed,
            vec!["key-like string of 64 characters at line 1"]
        );
        let b64 = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJ+/abcd1234==";
        let r = redact(&format!("secret = \"{b64}\"\n"));
        assert!(!r.text.contains("q83vEjRWeJ"), "{}", r.text);
    }
}
