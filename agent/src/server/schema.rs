//! `jex-agent schema`: exactly what telemetry sends, read from the compiled API descriptor
//! (the same bytes server reflection serves), so the printout cannot drift from the wire.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;

use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorSet, field_descriptor_proto::Type};

const PACKAGE: &str = "jex.agent.v1";

/// Renders the telemetry schema: every message reachable from `StreamTelemetryResponse`,
/// with each field's number, type and documentation.
pub fn telemetry_schema() -> Result<String, prost::DecodeError> {
    let fds = FileDescriptorSet::decode(jex_proto::FILE_DESCRIPTOR_SET)?;
    let file = fds.file.iter().find(|f| f.package() == PACKAGE);
    let Some(file) = file else {
        return Ok(String::from("descriptor holds no jex.agent.v1 file\n"));
    };
    // Comments by path: messages are [4, i], fields [4, i, 2, j], enums [5, i], values [5, i, 2, j].
    let mut comments: HashMap<Vec<i32>, String> = HashMap::new();
    if let Some(info) = &file.source_code_info {
        for loc in &info.location {
            if let Some(c) = &loc.leading_comments {
                comments.insert(
                    loc.path.clone(),
                    c.split_whitespace().collect::<Vec<_>>().join(" "),
                );
            }
        }
    }
    let messages: HashMap<&str, (usize, &DescriptorProto)> = file
        .message_type
        .iter()
        .enumerate()
        .map(|(i, m)| (m.name(), (i, m)))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Telemetry sent by jex-agent (package {PACKAGE}), from the compiled API descriptor.\n\
         Host aggregates only: no process, user, hostname, path or network address is ever sent.\n"
    );
    let mut seen = BTreeSet::new();
    let mut queue = vec!["StreamTelemetryResponse".to_owned()];
    let mut enums = BTreeSet::new();
    while let Some(name) = queue.pop() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let Some((i, m)) = messages.get(name.as_str()) else {
            continue;
        };
        let doc = comments
            .get(&vec![4, *i as i32])
            .cloned()
            .unwrap_or_default();
        let _ = writeln!(out, "message {name}\n  {doc}");
        for (j, f) in m.field.iter().enumerate() {
            let ty = match f.r#type() {
                Type::Message | Type::Enum => {
                    let short = f
                        .type_name()
                        .rsplit('.')
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    if f.r#type() == Type::Message {
                        queue.push(short.clone());
                    } else {
                        enums.insert(short.clone());
                    }
                    short
                }
                other => other
                    .as_str_name()
                    .trim_start_matches("TYPE_")
                    .to_lowercase(),
            };
            let repeated = if f.label() == prost_types::field_descriptor_proto::Label::Repeated {
                "repeated "
            } else {
                ""
            };
            let fdoc = comments
                .get(&vec![4, *i as i32, 2, j as i32])
                .cloned()
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:>2} {:<24} {repeated}{ty}\n       {fdoc}",
                f.number(),
                f.name()
            );
        }
        out.push('\n');
    }
    for (i, e) in file.enum_type.iter().enumerate() {
        if !enums.contains(e.name()) {
            continue;
        }
        let _ = writeln!(out, "enum {}", e.name());
        for (j, v) in e.value.iter().enumerate() {
            let vdoc = comments
                .get(&vec![5, i as i32, 2, j as i32])
                .cloned()
                .unwrap_or_default();
            let _ = writeln!(out, "  {:>2} {:<32} {vdoc}", v.number(), v.name());
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_lists_sample_fields_and_nothing_identifying() {
        let s = telemetry_schema().expect("descriptor decodes");
        for field in [
            "busy_bp",
            "core_busy_bp",
            "available_bytes",
            "compressed_bytes",
            "first_missing_seq",
            "some_avg10",
        ] {
            assert!(s.contains(field), "schema lacks {field}");
        }
        assert!(s.contains("message Sample"));
        assert!(s.contains("enum GapReason"));
        // Erase and host messages are not telemetry.
        assert!(!s.contains("message Host\n"));
        assert!(!s.contains("serial_number"));
        for forbidden in [
            "hostname",
            "process",
            "user_name",
            "path",
            "address",
            "pid",
            "command",
        ] {
            assert!(
                !s.lines().any(|l| l
                    .split_whitespace()
                    .nth(1)
                    .is_some_and(|f| f.contains(forbidden))),
                "a field named like {forbidden} is sent"
            );
        }
    }
}
