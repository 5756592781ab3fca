//! The agent's configuration file as `jex-agent run` and `check-config` read it:
//! `Config::parse` (TOML, the schema with unknown keys refused, every default, validation and
//! the lines errors are placed on), and the `[erase]` table alone through
//! `jex_erase::config::EraseSection::into_config`. Pure parsing: nothing touches the file system.
//! Input that is not UTF-8 is left out (reading the file refuses it before parsing).
//!
//! Checked besides "no panic": an error names a line of the text (1-based, at most one past
//! the last); a configuration that parses passes the spool's and the erase's own validation,
//! and the lines it records for the settings checked later are lines of the text; an erase
//! error's span lies within the text.

#![no_main]

use std::path::{Path, PathBuf};

use jex_agent::config::{Config, ConfigError};
use jex_erase::config::EraseSection;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // toml counts `\n` as the line break (a `\r` before it belongs to the line).
    let lines = text.matches('\n').count() + 1;
    match Config::parse(Path::new("agent.toml"), text) {
        Ok(config) => {
            config
                .spool_config()
                .validate()
                .expect("a parsed config holds a valid spool config");
            config
                .erase
                .validate()
                .expect("a parsed config holds a valid erase config");
            let targets = config.erase.targets.len();
            let keys = ["server.listen", "tls.cert", "tls.key", "tls.client_ca"]
                .map(str::to_owned)
                .into_iter()
                .chain((0..targets).map(|i| format!("erase.targets[{i}].device")));
            for key in keys {
                let line = config.source.place(&key).line;
                assert!(
                    (1..=lines).contains(&line),
                    "{key} at line {line} of {lines}"
                );
            }
        }
        Err(ConfigError::Parse { line, column, .. }) => {
            assert!((1..=lines).contains(&line), "line {line} of {lines}");
            assert!(column >= 1);
        }
        Err(ConfigError::Invalid { line, .. }) => {
            assert!((1..=lines).contains(&line), "line {line} of {lines}");
        }
        Err(ConfigError::Read { .. }) => panic!("parse reads no file"),
    }

    if let Ok(section) = toml::from_str::<EraseSection>(text) {
        match section.into_config(0..0, PathBuf::from("/var/db/jex/erase")) {
            Ok(erase) => erase.validate().expect("into_config validates"),
            Err(located) => {
                assert!(located.span.start <= located.span.end);
                assert!(located.span.end <= text.len(), "{:?}", located.span);
            }
        }
    }
});
