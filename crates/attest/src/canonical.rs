//! Canonical JSON of a [`CertificateDocument`] (and of a [`CertificateDocumentV2`]): the exact
//! bytes that are signed. The same rules
//! serve any other signed JSON value through [`canonical_json_value`].
//!
//! Rules (RFC 8785 for everything but numbers, see below):
//! - object members sorted by key, comparing keys as UTF-16 code units (RFC 8785 §3.2.3);
//! - no insignificant whitespace;
//! - strings: UTF-8, escaping only `"`, `\` and control characters: `\b \t \n \f \r` in their
//!   short form, other controls as `\u00xx` (lowercase hex); everything else literal;
//! - `null`, `true`, `false` as is; `Option::None` is written `null` (the member is kept);
//! - integers: plain decimal digits;
//! - floats (today only `verification.coverage_percent`): **exactly six decimal places**
//!   (`12.500000`, `100.000000`). This is where the format departs from RFC 8785, which
//!   would print ECMAScript's shortest form (`12.5`, `100`). Fixed precision is simpler to make
//!   deterministic and round-trips exactly: reading `12.345678` back as an `f64` and writing it
//!   again gives the same six decimals, so `canonical_json(parse(bytes)) == bytes` holds for
//!   every document this function produces. The price is that coverage is recorded to
//!   10⁻⁶ percent, and that a generic JCS tool re-serialising a document produces other
//!   bytes; verification therefore always works on the bytes that were signed
//!   (`SignedCertificate::document_json`), never on a re-serialisation. A non-finite float
//!   cannot be represented and is written as `null`, which no document accepts on parsing
//!   (and `sign` refuses such a document before it gets here).

use serde_json::Value;

use super::{CertificateDocument, CertificateDocumentV2};

/// Digits after the decimal point of every float.
pub const FLOAT_DECIMALS: usize = 6;

/// The canonical JSON bytes of `doc` (see the module documentation for the rules).
pub fn canonical_json(doc: &CertificateDocument) -> Vec<u8> {
    // Serialising the document to a `Value` cannot fail: every map in it has string keys
    // (`BTreeMap<String, String>`), and serde_json only fails on non-string keys or a failing
    // custom `Serialize` impl, of which there are none. A non-finite f64 becomes `null`.
    #[allow(clippy::expect_used)]
    let value = serde_json::to_value(doc).expect("a certificate document always converts to JSON");
    canonical_json_value(&value)
}

/// The canonical JSON bytes of the version 2 document `doc`, by the same rules as
/// [`canonical_json`].
pub fn canonical_json_v2(doc: &CertificateDocumentV2) -> Vec<u8> {
    // As for version 1: every map in the document has string keys and no `Serialize` impl of
    // it can fail, so the conversion cannot fail.
    #[allow(clippy::expect_used)]
    let value = serde_json::to_value(doc).expect("a certificate document always converts to JSON");
    canonical_json_value(&value)
}

/// The canonical JSON bytes of any JSON value, by the same rules as [`canonical_json`]: for
/// other documents of the fleet (the prepare record of a two-halves reclaim) that are signed
/// the same way. `canonical_json(doc)` is exactly `canonical_json_value(&to_value(doc))`.
pub fn canonical_json_value(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(2048);
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                out.extend_from_slice(u.to_string().as_bytes());
            } else if let Some(i) = n.as_i64() {
                out.extend_from_slice(i.to_string().as_bytes());
            } else {
                match n.as_f64().filter(|f| f.is_finite()) {
                    Some(f) => out.extend_from_slice(format!("{f:.FLOAT_DECIMALS$}").as_bytes()),
                    None => out.extend_from_slice(b"null"),
                }
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            out.push(b'{');
            for (i, (key, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_value(item, out);
            }
            out.push(b'}');
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testing::sample_document;

    fn canonical_value(v: &Value) -> String {
        let mut out = Vec::new();
        write_value(v, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn sorts_keys_at_every_level_and_writes_no_whitespace() {
        let v =
            serde_json::json!({"b": 1, "a": {"z": [1, {"y": 2, "x": 3}], "é": null, "A": true}});
        assert_eq!(
            canonical_value(&v),
            r#"{"a":{"A":true,"z":[1,{"x":3,"y":2}],"é":null},"b":1}"#
        );
    }

    #[test]
    fn sorts_keys_by_utf16_code_units() {
        // U+FF61 sorts after U+1F600 in UTF-8 byte order but before it in UTF-16 (the emoji is
        // a surrogate pair starting 0xD83D).
        let v = serde_json::json!({"\u{ff61}": 1, "\u{1f600}": 2});
        assert_eq!(canonical_value(&v), "{\"\u{1f600}\":2,\"\u{ff61}\":1}");
    }

    #[test]
    fn escapes_only_what_rfc_8785_escapes() {
        let v = Value::String("q\"b\\ \u{8}\t\n\u{c}\r \u{1} \u{1f} \u{7f} / é 😀".into());
        assert_eq!(
            canonical_value(&v),
            "\"q\\\"b\\\\ \\b\\t\\n\\f\\r \\u0001 \\u001f \u{7f} / é 😀\""
        );
    }

    #[test]
    fn writes_floats_with_six_decimals_and_integers_plainly() {
        let v = serde_json::json!([
            100.0,
            12.5,
            0.0,
            1.0 / 3.0,
            99.9999996,
            18446744073709551615u64,
            -3
        ]);
        assert_eq!(
            canonical_value(&v),
            "[100.000000,12.500000,0.000000,0.333333,100.000000,18446744073709551615,-3]"
        );
    }

    #[test]
    fn a_document_round_trips_to_the_same_bytes() {
        let doc = sample_document();
        let bytes = canonical_json(&doc);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.starts_with(r#"{"controller_nonce_hex":""#), "{text}");
        assert!(text.contains(r#""coverage_percent":12.345600,"#), "{text}");
        assert!(
            text.contains(r#""previous_certificate_sha256":null"#),
            "{text}"
        );
        let parsed: CertificateDocument = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(parsed, doc);
        assert_eq!(canonical_json(&parsed), bytes);
    }

    #[test]
    fn the_value_form_gives_the_documents_bytes() {
        let doc = sample_document();
        let value = serde_json::to_value(&doc).unwrap();
        assert_eq!(canonical_json_value(&value), canonical_json(&doc));
    }

    proptest! {
        #[test]
        fn any_document_reparses_to_identical_canonical_bytes(
            text in any::<String>(),
            key in "[a-z_\u{80}-\u{10ffff}]{0,12}",
            coverage in 0.0f64..=100.0,
            blocks in any::<u64>(),
        ) {
            let mut doc = sample_document();
            doc.request_id = text.clone();
            doc.host.model = text;
            doc.targets[0].key_destruction.evidence.insert(key, "v\u{0}\"".into());
            doc.verification.coverage_percent = coverage;
            doc.targets[0].size_bytes = blocks;
            let bytes = canonical_json(&doc);
            let parsed: CertificateDocument = serde_json::from_slice(&bytes).unwrap();
            prop_assert_eq!(canonical_json(&parsed), bytes);
            prop_assert!((parsed.verification.coverage_percent - coverage).abs() <= 5e-7);
        }
    }
}
