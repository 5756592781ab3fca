//! Limits on every request field, checked before a request reaches the domain. A field over
//! its limit is refused with `INVALID_ARGUMENT` naming the field and the limit; the answer
//! quotes at most [`PREFIX_CHARS`] characters of the value, so a caller never gets its own
//! megabytes back.
//!
//! | request | field | limit |
//! |---|---|---|
//! | `TerminateRequest` | `request_id` | [`MAX_ID_BYTES`] |
//! | `TerminateRequest` | `host_id` | [`MAX_ID_BYTES`] |
//! | `TerminateRequest` | `nonce` | [`MAX_NONCE_BYTES`] (at least 32: the erase service checks) |
//! | `WatchEraseRequest`, `GetEraseCertificateRequest` | `operation_id` | [`MAX_OPERATION_ID_BYTES`] |
//! | `AttestEraseRequest` | `operation_id`, `host_id`, `nonce` | as above |
//! | `AttestEraseRequest` | `prepare_record.record_json` | [`MAX_PREPARE_JSON_BYTES`] |
//! | `AttestEraseRequest` | `prepare_record.signature` | [`MAX_SIGNATURE_BYTES`] |
//! | `AttestEraseRequest` | `prepare_record.signer_chain_der` | [`MAX_CHAIN_CERTIFICATES`] of [`MAX_CERTIFICATE_BYTES`] each |
//! | `AttestEraseRequest` | `prepare_record.signature_algorithm` | [`MAX_ID_BYTES`] |
//! | `StreamTelemetryRequest` | `max_batch_records` | clamped to 4096, never refused |
//!
//! Whole messages are capped too ([`MAX_REQUEST_BYTES`], `RESOURCE_EXHAUSTED`).

use jex_proto::v1 as pb;

/// The largest request message any service accepts (every legitimate request is far smaller).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// `request_id` and `host_id`.
pub const MAX_ID_BYTES: usize = 128;

/// `operation_id` (a UUID is 36).
pub const MAX_OPERATION_ID_BYTES: usize = 64;

/// `nonce`.
pub const MAX_NONCE_BYTES: usize = 256;

/// A prepare record's JSON (a Mac's inventory is a few KiB).
pub const MAX_PREPARE_JSON_BYTES: usize = 48 * 1024;

/// A signature (ECDSA P-256 DER is at most 72).
pub const MAX_SIGNATURE_BYTES: usize = 256;

/// Certificates in a signer chain.
pub const MAX_CHAIN_CERTIFICATES: usize = 4;

/// One DER certificate of a chain.
pub const MAX_CERTIFICATE_BYTES: usize = 8 * 1024;

/// How much of a refused value an answer quotes.
pub const PREFIX_CHARS: usize = 16;

/// A request field over its limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {len} bytes, over its limit of {limit} bytes{quoted}")]
pub struct FieldError {
    /// The field.
    pub field: &'static str,
    /// Its length.
    pub len: usize,
    /// The limit.
    pub limit: usize,
    /// ` (starts "…")` for text fields, empty for bytes.
    quoted: String,
}

fn text(field: &'static str, value: &str, limit: usize) -> Result<(), FieldError> {
    if value.len() <= limit {
        return Ok(());
    }
    let prefix: String = value.chars().take(PREFIX_CHARS).collect();
    Err(FieldError {
        field,
        len: value.len(),
        limit,
        quoted: format!(" (starts {prefix:?}…)"),
    })
}

fn bytes(field: &'static str, value: &[u8], limit: usize) -> Result<(), FieldError> {
    if value.len() <= limit {
        return Ok(());
    }
    Err(FieldError {
        field,
        len: value.len(),
        limit,
        quoted: String::new(),
    })
}

/// `Terminate`.
pub fn terminate(r: &pb::TerminateRequest) -> Result<(), FieldError> {
    text("request_id", &r.request_id, MAX_ID_BYTES)?;
    text("host_id", &r.host_id, MAX_ID_BYTES)?;
    bytes("nonce", &r.nonce, MAX_NONCE_BYTES)
}

/// `AttestErase`; a missing prepare record is the erase service's to refuse (as a failed
/// evidence line, it is not a field limit).
pub fn attest_erase(r: &pb::AttestEraseRequest) -> Result<(), FieldError> {
    text("operation_id", &r.operation_id, MAX_OPERATION_ID_BYTES)?;
    text("host_id", &r.host_id, MAX_ID_BYTES)?;
    bytes("nonce", &r.nonce, MAX_NONCE_BYTES)?;
    if let Some(p) = &r.prepare_record {
        bytes(
            "prepare_record.record_json",
            &p.record_json,
            MAX_PREPARE_JSON_BYTES,
        )?;
        bytes(
            "prepare_record.signature",
            &p.signature,
            MAX_SIGNATURE_BYTES,
        )?;
        if p.signer_chain_der.len() > MAX_CHAIN_CERTIFICATES {
            return Err(FieldError {
                field: "prepare_record.signer_chain_der",
                len: p.signer_chain_der.len(),
                limit: MAX_CHAIN_CERTIFICATES,
                quoted: " (certificates, not bytes)".into(),
            });
        }
        for der in &p.signer_chain_der {
            bytes(
                "prepare_record.signer_chain_der",
                der,
                MAX_CERTIFICATE_BYTES,
            )?;
        }
        text(
            "prepare_record.signature_algorithm",
            &p.signature_algorithm,
            MAX_ID_BYTES,
        )?;
    }
    Ok(())
}

/// `WatchErase`.
pub fn watch_erase(r: &pb::WatchEraseRequest) -> Result<(), FieldError> {
    text("operation_id", &r.operation_id, MAX_OPERATION_ID_BYTES)
}

/// `GetEraseCertificate`.
pub fn get_erase_certificate(r: &pb::GetEraseCertificateRequest) -> Result<(), FieldError> {
    text("operation_id", &r.operation_id, MAX_OPERATION_ID_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminate_req(request_id: &str, host_id: &str, nonce: usize) -> pb::TerminateRequest {
        pb::TerminateRequest {
            request_id: request_id.to_owned(),
            host_id: host_id.to_owned(),
            nonce: vec![7; nonce],
        }
    }

    #[test]
    fn fields_at_their_limit_pass() {
        let id = "r".repeat(MAX_ID_BYTES);
        assert_eq!(terminate(&terminate_req(&id, &id, MAX_NONCE_BYTES)), Ok(()));
        let op = "o".repeat(MAX_OPERATION_ID_BYTES);
        assert_eq!(
            watch_erase(&pb::WatchEraseRequest {
                operation_id: op.clone()
            }),
            Ok(())
        );
        assert_eq!(
            get_erase_certificate(&pb::GetEraseCertificateRequest { operation_id: op }),
            Ok(())
        );
    }

    #[test]
    fn an_oversize_field_is_named_with_its_limit_and_a_short_prefix() {
        let huge = "h".repeat(3 << 20);
        let e = terminate(&terminate_req("r1", &huge, 32)).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "host_id is 3145728 bytes, over its limit of 128 bytes (starts \"hhhhhhhhhhhhhhhh\"…)"
        );
        let e = terminate(&terminate_req(&"é".repeat(100), "h", 32)).expect_err("refused");
        assert!(e.to_string().starts_with("request_id is 200 bytes"), "{e}");
        let e = terminate(&terminate_req("r", "h", 4096)).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "nonce is 4096 bytes, over its limit of 256 bytes"
        );
        let e = watch_erase(&pb::WatchEraseRequest {
            operation_id: "x".repeat(65),
        })
        .expect_err("refused");
        assert!(
            e.to_string()
                .starts_with("operation_id is 65 bytes, over its limit of 64")
        );
    }
}
