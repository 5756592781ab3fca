//! Internal consistency of a [`CertificateDocument`]: the rules a document must satisfy to be
//! signed ([`super::sign`] refuses otherwise) and to be accepted ([`super::verify()`]).
//!
//! The rules:
//! - `schema` is [`DOCUMENT_SCHEMA`]; `operation_id` is a UUID;
//! - `outcome` is one of [`OUTCOME_ERASED`], [`OUTCOME_ERASED_WITH_EXCEPTIONS`],
//!   [`OUTCOME_FAILED`]; anything but `ERASED` carries at least one exception;
//! - `ERASED` means: no exception, zero mismatched blocks (in total and on every target), at
//!   least one target, and every target carries key-destruction evidence (method, tool and at
//!   least one evidence entry);
//! - the per-target `verified_blocks` sum to `verification.sampled_blocks`, and the
//!   per-target `mismatched_blocks` to `verification.mismatched_blocks` (no overflow);
//! - `verification.coverage_percent` is a finite number in `[0, 100]`;
//! - `pattern.key_hex` is 64 lowercase hex characters (a 256-bit key);
//! - `controller_nonce_hex` is lowercase hex of at least 32 bytes;
//! - `previous_certificate_sha256`, when present, is 64 lowercase hex characters;
//! - `started_at` and `finished_at` are RFC 3339 timestamps in UTC (`Z` or `+00:00`) and
//!   `started_at <= finished_at`.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{CertificateDocument, DOCUMENT_SCHEMA, TECHNIQUES};

/// Every target erased and verified, no exception.
pub const OUTCOME_ERASED: &str = "ERASED";
/// Erased, with machine-readable exceptions.
pub const OUTCOME_ERASED_WITH_EXCEPTIONS: &str = "ERASED_WITH_EXCEPTIONS";
/// Not erased.
pub const OUTCOME_FAILED: &str = "FAILED";

/// Minimum length of the controller's nonce, in bytes.
pub const MIN_NONCE_BYTES: usize = 32;

/// A rule the document breaks.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// Another schema than the document type's.
    #[error("schema is {found:?}, expected {expected:?}")]
    Schema {
        /// The schema found.
        found: String,
        /// The document type's schema.
        expected: &'static str,
    },
    /// `operation_id` is not a UUID.
    #[error("operation_id {found:?} is not a UUID")]
    OperationId {
        /// The value found.
        found: String,
    },
    /// Unknown outcome.
    #[error("outcome is {found:?}, expected ERASED, ERASED_WITH_EXCEPTIONS or FAILED")]
    Outcome {
        /// The outcome found.
        found: String,
    },
    /// `ERASED` with exceptions.
    #[error("outcome ERASED but {count} exception(s) are listed")]
    ErasedWithExceptions {
        /// Number of exceptions.
        count: usize,
    },
    /// `ERASED` with mismatching blocks.
    #[error("outcome ERASED but {mismatched} mismatched block(s) are recorded")]
    ErasedWithMismatches {
        /// Mismatching blocks (total or on one target).
        mismatched: u64,
    },
    /// `ERASED` without any target.
    #[error("outcome ERASED but no target is listed")]
    ErasedWithoutTargets,
    /// `ERASED` with a target lacking key-destruction evidence.
    #[error("outcome ERASED but target {target:?} has no key-destruction evidence")]
    MissingKeyDestruction {
        /// Target name.
        target: String,
    },
    /// A non-`ERASED` outcome without a reason.
    #[error("outcome {outcome} lists no exception")]
    MissingExceptions {
        /// The outcome.
        outcome: String,
    },
    /// Per-target block counts do not add up to the totals.
    #[error("per-target {field} add up to {sum}, but the total says {total}")]
    BlockTotals {
        /// `verified_blocks` or `mismatched_blocks`.
        field: &'static str,
        /// Sum over targets (saturating).
        sum: u64,
        /// The recorded total.
        total: u64,
    },
    /// Coverage is not a percentage.
    #[error("verification.coverage_percent {value} is not within 0..=100")]
    Coverage {
        /// The value found.
        value: f64,
    },
    /// A hex field is malformed.
    #[error("{field} must be {expected}")]
    Hex {
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// A timestamp does not parse.
    #[error("{field} {value:?} is not an RFC 3339 timestamp")]
    Timestamp {
        /// The field.
        field: &'static str,
        /// The value found.
        value: String,
        /// The parse failure.
        #[source]
        source: time::error::Parse,
    },
    /// A timestamp is not in UTC.
    #[error("{field} {value:?} is not in UTC")]
    NotUtc {
        /// The field.
        field: &'static str,
        /// The value found.
        value: String,
    },
    /// Finished before it started.
    #[error("finished_at {finished_at} is before started_at {started_at}")]
    TimeOrder {
        /// Start.
        started_at: String,
        /// End.
        finished_at: String,
    },

    // === Version 2 only (see `consistency_v2`) ===
    /// A target names a technique version 2 does not know.
    #[error("target {target:?} names technique {found:?}, which is not one of {TECHNIQUES:?}")]
    UnknownTechnique {
        /// Target name.
        target: String,
        /// The technique found.
        found: String,
    },
    /// A target's category is not the one its technique belongs to.
    #[error(
        "target {target:?}: technique {technique:?} is NIST {expected}, but the target says {found:?}"
    )]
    CategoryMismatch {
        /// Target name.
        target: String,
        /// The target's technique.
        technique: String,
        /// The category found.
        found: String,
        /// The technique's category.
        expected: &'static str,
    },
    /// A target does not say why its category holds.
    #[error("target {target:?} gives no basis for its sanitization category")]
    MissingBasis {
        /// Target name.
        target: String,
    },
    /// A target claims a device erase (Apple EACS, or a Linux boot disk's), but the document
    /// records none.
    #[error("target {target:?} claims a device erase but the document has no device_erase record")]
    DeviceEraseMissing {
        /// Target name.
        target: String,
    },
    /// A device-erase target carries overwrite facts: it was not overwritten by the agent.
    #[error("target {target:?} was erased by the device erase but carries overwrite facts")]
    DeviceEraseTargetOverwritten {
        /// Target name.
        target: String,
    },
    /// A target whose technique is an overwrite carries no overwrite facts.
    #[error("target {target:?} claims {technique:?} but carries no overwrite facts")]
    MissingOverwrite {
        /// Target name.
        target: String,
        /// The target's technique.
        technique: String,
    },
    /// A target was overwritten but the document has no pattern.
    #[error("target {target:?} was overwritten but the document records no pattern")]
    MissingPattern {
        /// Target name.
        target: String,
    },
    /// A target was overwritten but the document says nothing of the verification.
    #[error("target {target:?} was overwritten but the document records no verification")]
    MissingVerification {
        /// Target name.
        target: String,
    },
    /// A pattern or a verification is recorded though no target was overwritten.
    #[error("the document records a {field} but no target was overwritten")]
    NothingOverwritten {
        /// `pattern` or `verification`.
        field: &'static str,
    },
    /// A device erase without any evidence line.
    #[error("the device_erase record lists no evidence")]
    DeviceEraseWithoutEvidence,
    /// An `ERASED` device erase whose evidence includes a failed check.
    #[error(
        "the outcome is ERASED but device erase evidence line {check:?} did not pass: {detail}"
    )]
    FailedEvidence {
        /// The failed check.
        check: String,
        /// Its detail.
        detail: String,
    },
    /// A device erase that did not attest (an outcome other than `ERASED`) without a failed
    /// evidence line to say why.
    #[error(
        "the outcome is {outcome} but every device erase evidence line passed: a failed attestation names the lines that failed"
    )]
    NoFailedEvidence {
        /// The outcome.
        outcome: String,
    },
    /// A device erase attested by a key whose certificate predates the end of the tenancy.
    #[error(
        "the document records a device erase but its signer certificate was not issued after the Terminate (signer.born_after_tenancy is false)"
    )]
    DeviceEraseSignedByTenancyKey,
    /// `signer.born_after_tenancy` disagrees with the times it summarises.
    #[error(
        "signer.born_after_tenancy is {claimed}, but the signer certificate's notBefore {certificate_not_before} is {} started_at {started_at}",
        if *claimed { "not after" } else { "after" }
    )]
    SignerTenancy {
        /// The claim.
        claimed: bool,
        /// `signer.certificate_not_before`.
        certificate_not_before: String,
        /// `started_at`.
        started_at: String,
    },
    /// The signer certificate was issued after the document was finished (and signed).
    #[error(
        "signer.certificate_not_before {certificate_not_before} is after finished_at {finished_at}"
    )]
    SignerAfterSigning {
        /// `signer.certificate_not_before`.
        certificate_not_before: String,
        /// `finished_at`.
        finished_at: String,
    },
    /// The signer's certificate has no readable `notBefore` (when building a
    /// [`crate::SignerRecord`]).
    #[error("the signer certificate's notBefore cannot be read")]
    SignerCertificateTime,
}

/// Parses an RFC 3339 UTC timestamp field.
pub fn parse_utc(field: &'static str, value: &str) -> Result<OffsetDateTime, DocumentError> {
    let t = OffsetDateTime::parse(value, &Rfc3339).map_err(|source| DocumentError::Timestamp {
        field,
        value: value.to_owned(),
        source,
    })?;
    if !t.offset().is_utc() {
        return Err(DocumentError::NotUtc {
            field,
            value: value.to_owned(),
        });
    }
    Ok(t)
}

pub(crate) fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `operation_id` is a UUID.
pub(crate) fn check_operation_id(operation_id: &str) -> Result<(), DocumentError> {
    if uuid::Uuid::parse_str(operation_id).is_err() {
        return Err(DocumentError::OperationId {
            found: operation_id.to_owned(),
        });
    }
    Ok(())
}

/// Coverage is a finite percentage.
pub(crate) fn check_coverage(coverage: f64) -> Result<(), DocumentError> {
    if !(coverage.is_finite() && (0.0..=100.0).contains(&coverage)) {
        return Err(DocumentError::Coverage { value: coverage });
    }
    Ok(())
}

/// The pattern key is 256 bits of lowercase hex.
pub(crate) fn check_pattern_key(key_hex: &str) -> Result<(), DocumentError> {
    if key_hex.len() != 64 || !is_lower_hex(key_hex) {
        return Err(DocumentError::Hex {
            field: "pattern.key_hex",
            expected: "64 lowercase hex characters (a 256-bit key)",
        });
    }
    Ok(())
}

/// The controller's nonce is lowercase hex of at least [`MIN_NONCE_BYTES`].
pub(crate) fn check_nonce(nonce: &str) -> Result<(), DocumentError> {
    if !nonce.len().is_multiple_of(2) || nonce.len() < 2 * MIN_NONCE_BYTES || !is_lower_hex(nonce) {
        return Err(DocumentError::Hex {
            field: "controller_nonce_hex",
            expected: "lowercase hex of at least 32 bytes",
        });
    }
    Ok(())
}

/// `field` is a SHA-256 in lowercase hex.
pub(crate) fn check_sha256(field: &'static str, value: &str) -> Result<(), DocumentError> {
    if value.len() != 64 || !is_lower_hex(value) {
        return Err(DocumentError::Hex {
            field,
            expected: "64 lowercase hex characters (a SHA-256)",
        });
    }
    Ok(())
}

/// The previous certificate's hash, when present, is a SHA-256 in lowercase hex.
pub(crate) fn check_previous(previous: Option<&str>) -> Result<(), DocumentError> {
    previous.map_or(Ok(()), |prev| {
        check_sha256("previous_certificate_sha256", prev)
    })
}

/// Both times parse as RFC 3339 UTC and `started_at <= finished_at`; returns them parsed.
pub(crate) fn check_times(
    started_at: &str,
    finished_at: &str,
) -> Result<(OffsetDateTime, OffsetDateTime), DocumentError> {
    let started = parse_utc("started_at", started_at)?;
    let finished = parse_utc("finished_at", finished_at)?;
    if finished < started {
        return Err(DocumentError::TimeOrder {
            started_at: started_at.to_owned(),
            finished_at: finished_at.to_owned(),
        });
    }
    Ok((started, finished))
}

impl CertificateDocument {
    /// Checks the rules listed in the module documentation.
    pub fn check_consistency(&self) -> Result<(), DocumentError> {
        if self.schema != DOCUMENT_SCHEMA {
            return Err(DocumentError::Schema {
                found: self.schema.clone(),
                expected: DOCUMENT_SCHEMA,
            });
        }
        check_operation_id(&self.operation_id)?;
        self.check_outcome()?;
        self.check_totals()?;
        check_coverage(self.verification.coverage_percent)?;
        check_pattern_key(&self.pattern.key_hex)?;
        check_nonce(&self.controller_nonce_hex)?;
        check_previous(self.previous_certificate_sha256.as_deref())?;
        check_times(&self.started_at, &self.finished_at)?;
        Ok(())
    }

    fn check_outcome(&self) -> Result<(), DocumentError> {
        match self.outcome.as_str() {
            OUTCOME_ERASED => {
                if !self.exceptions.is_empty() {
                    return Err(DocumentError::ErasedWithExceptions {
                        count: self.exceptions.len(),
                    });
                }
                if self.targets.is_empty() {
                    return Err(DocumentError::ErasedWithoutTargets);
                }
                let mismatched = std::iter::once(self.verification.mismatched_blocks)
                    .chain(self.targets.iter().map(|t| t.mismatched_blocks))
                    .find(|&m| m != 0);
                if let Some(mismatched) = mismatched {
                    return Err(DocumentError::ErasedWithMismatches { mismatched });
                }
                for t in &self.targets {
                    let kd = &t.key_destruction;
                    if kd.method.trim().is_empty()
                        || kd.tool.trim().is_empty()
                        || kd.evidence.is_empty()
                    {
                        return Err(DocumentError::MissingKeyDestruction {
                            target: t.name.clone(),
                        });
                    }
                }
                Ok(())
            }
            OUTCOME_ERASED_WITH_EXCEPTIONS | OUTCOME_FAILED => {
                if self.exceptions.is_empty() {
                    return Err(DocumentError::MissingExceptions {
                        outcome: self.outcome.clone(),
                    });
                }
                Ok(())
            }
            other => Err(DocumentError::Outcome {
                found: other.to_owned(),
            }),
        }
    }

    fn check_totals(&self) -> Result<(), DocumentError> {
        let sum = |f: fn(&super::TargetRecord) -> u64| {
            self.targets
                .iter()
                .try_fold(0u64, |acc, t| acc.checked_add(f(t)))
        };
        for (field, total, sum) in [
            (
                "verified_blocks",
                self.verification.sampled_blocks,
                sum(|t| t.verified_blocks),
            ),
            (
                "mismatched_blocks",
                self.verification.mismatched_blocks,
                sum(|t| t.mismatched_blocks),
            ),
        ] {
            if sum != Some(total) {
                return Err(DocumentError::BlockTotals {
                    field,
                    sum: sum.unwrap_or(u64::MAX),
                    total,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample_document;

    fn broken(edit: impl FnOnce(&mut CertificateDocument)) -> DocumentError {
        let mut doc = sample_document();
        edit(&mut doc);
        doc.check_consistency().unwrap_err()
    }

    #[test]
    fn the_sample_document_is_consistent() {
        sample_document().check_consistency().unwrap();
    }

    #[test]
    fn erased_requires_no_exception_no_mismatch_and_key_evidence_everywhere() {
        assert!(matches!(
            broken(|d| d.exceptions.push("hpa-present".into())),
            DocumentError::ErasedWithExceptions { count: 1 }
        ));
        assert!(matches!(
            broken(|d| {
                d.verification.mismatched_blocks = 2;
                d.targets[1].mismatched_blocks = 2;
            }),
            DocumentError::ErasedWithMismatches { mismatched: 2 }
        ));
        assert!(matches!(
            broken(|d| d.targets[1].key_destruction.evidence.clear()),
            DocumentError::MissingKeyDestruction { target } if target == "scratch"
        ));
        assert!(matches!(
            broken(|d| d.targets[0].key_destruction.method = " ".into()),
            DocumentError::MissingKeyDestruction { .. }
        ));
        assert!(matches!(
            broken(|d| {
                d.targets.clear();
                d.verification.sampled_blocks = 0;
            }),
            DocumentError::ErasedWithoutTargets
        ));
    }

    #[test]
    fn other_outcomes_need_reasons_and_unknown_outcomes_are_refused() {
        let mut doc = sample_document();
        doc.outcome = OUTCOME_ERASED_WITH_EXCEPTIONS.into();
        assert!(matches!(
            doc.check_consistency().unwrap_err(),
            DocumentError::MissingExceptions { .. }
        ));
        doc.exceptions.push("verification-mismatch".into());
        doc.verification.mismatched_blocks = 1;
        doc.targets[0].mismatched_blocks = 1;
        doc.check_consistency().unwrap();
        doc.outcome = "erased".into();
        assert!(matches!(
            doc.check_consistency().unwrap_err(),
            DocumentError::Outcome { .. }
        ));
    }

    #[test]
    fn block_totals_must_match_the_per_target_sums() {
        assert!(matches!(
            broken(|d| d.verification.sampled_blocks += 1),
            DocumentError::BlockTotals {
                field: "verified_blocks",
                ..
            }
        ));
        assert!(matches!(
            broken(|d| {
                d.targets[0].verified_blocks = u64::MAX;
                d.verification.sampled_blocks = u64::MAX;
            }),
            DocumentError::BlockTotals {
                field: "verified_blocks",
                sum: u64::MAX,
                ..
            }
        ));
    }

    #[test]
    fn hex_fields_and_coverage_are_checked() {
        type Edit = fn(&mut CertificateDocument);
        let cases: [(Edit, &str); 5] = [
            (
                |d| {
                    d.pattern.key_hex.pop();
                },
                "pattern.key_hex",
            ),
            (
                |d| d.pattern.key_hex = d.pattern.key_hex.to_uppercase(),
                "pattern.key_hex",
            ),
            (
                |d| d.controller_nonce_hex.truncate(62),
                "controller_nonce_hex",
            ),
            (|d| d.controller_nonce_hex.push('0'), "controller_nonce_hex"),
            (
                |d| d.previous_certificate_sha256 = Some("xyz".into()),
                "previous_certificate_sha256",
            ),
        ];
        for (edit, field) in cases {
            match broken(edit) {
                DocumentError::Hex { field: f, .. } => assert_eq!(f, field),
                other => panic!("expected Hex for {field}, got {other:?}"),
            }
        }
        for bad in [f64::NAN, f64::INFINITY, -0.5, 100.5] {
            assert!(matches!(
                broken(|d| d.verification.coverage_percent = bad),
                DocumentError::Coverage { .. }
            ));
        }
    }

    #[test]
    fn timestamps_must_parse_be_utc_and_in_order() {
        assert!(matches!(
            broken(|d| d.started_at = "yesterday".into()),
            DocumentError::Timestamp {
                field: "started_at",
                ..
            }
        ));
        assert!(matches!(
            broken(|d| d.finished_at = "2026-11-26T06:00:00+01:00".into()),
            DocumentError::NotUtc {
                field: "finished_at",
                ..
            }
        ));
        assert!(matches!(
            broken(|d| std::mem::swap(&mut d.started_at, &mut d.finished_at)),
            DocumentError::TimeOrder { .. }
        ));
        let mut doc = sample_document();
        doc.finished_at = doc.started_at.clone();
        doc.check_consistency().unwrap();
    }

    #[test]
    fn schema_and_operation_id_are_checked() {
        assert!(matches!(
            broken(|d| d.schema = "jex.erase-certificate/v2".into()),
            DocumentError::Schema { .. }
        ));
        assert!(matches!(
            broken(|d| d.operation_id = "op-1".into()),
            DocumentError::OperationId { .. }
        ));
    }
}
