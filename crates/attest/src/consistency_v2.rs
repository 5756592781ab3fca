//! Internal consistency of a [`CertificateDocumentV2`]: the rules a version 2 document must
//! satisfy to be signed ([`super::sign_v2`] refuses otherwise) and to be accepted
//! ([`super::verify_any`]). Each broken rule is its own [`DocumentError`] variant.
//!
//! The rules, checked in this order:
//! - `schema` is [`DOCUMENT_SCHEMA_V2`]; `operation_id` is a UUID;
//! - `outcome` is `ERASED`, `ERASED_WITH_EXCEPTIONS` or `FAILED`; anything but `ERASED` carries
//!   at least one exception; `ERASED` means no exception, at least one target and no
//!   mismatched block (in total or on any target);
//! - every target's technique is one of [`TECHNIQUES`], its category is that technique's
//!   (Overwrite is Clear, the two cryptographic erases are Purge) and it gives a basis;
//! - a [`TECHNIQUE_APPLE_EACS`] target comes with the document's `device_erase` record and
//!   carries no overwrite facts (the agent did not overwrite it);
//! - a target whose technique overwrites ([`TECHNIQUE_OVERWRITE`],
//!   [`TECHNIQUE_CRYPTO_ERASE_OVERWRITE`]) carries its overwrite facts, and the document then
//!   has a `pattern` and a `verification`; with `ERASED`, a
//!   [`TECHNIQUE_CRYPTO_ERASE_OVERWRITE`] target also carries key-destruction evidence;
//! - `pattern` and `verification` are absent when no target was overwritten;
//! - with a `verification`: the overwritten targets' `verified_blocks` and
//!   `mismatched_blocks` add up to its totals, its coverage is within `[0, 100]`; the pattern
//!   key is 64 lowercase hex characters;
//! - a `device_erase` record names the prepare record's SHA-256 (64 lowercase hex), lists at
//!   least one evidence line, every line passed, and the signer was born after the tenancy;
//! - `controller_nonce_hex` is lowercase hex of at least 32 bytes;
//!   `previous_certificate_sha256`, when present, is 64 lowercase hex characters;
//! - `started_at`, `finished_at` and `signer.certificate_not_before` are RFC 3339 UTC;
//!   `started_at <= finished_at`, `certificate_not_before <= finished_at` (the key existed
//!   when it signed), and `born_after_tenancy` is exactly `certificate_not_before >
//!   started_at`.
//!
//! The verifier adds one check no document can make on its own: `certificate_not_before` is
//! the `notBefore` of the certificate that signed ([`super::VerifyError::SignerRecord`]).

use super::consistency::{
    DocumentError, check_coverage, check_nonce, check_operation_id, check_pattern_key,
    check_previous, check_sha256, check_times, parse_utc,
};
use super::{
    CertificateDocumentV2, DOCUMENT_SCHEMA_V2, OUTCOME_ERASED, OUTCOME_ERASED_WITH_EXCEPTIONS,
    OUTCOME_FAILED, TECHNIQUE_APPLE_EACS, TECHNIQUE_CRYPTO_ERASE_OVERWRITE, TECHNIQUE_OVERWRITE,
    TargetRecordV2, category_of,
};

#[cfg(doc)]
use super::TECHNIQUES;

impl CertificateDocumentV2 {
    /// Checks the rules listed in the module documentation.
    pub fn check_consistency(&self) -> Result<(), DocumentError> {
        if self.schema != DOCUMENT_SCHEMA_V2 {
            return Err(DocumentError::Schema {
                found: self.schema.clone(),
                expected: DOCUMENT_SCHEMA_V2,
            });
        }
        check_operation_id(&self.operation_id)?;
        self.check_outcome()?;
        for target in &self.targets {
            self.check_target(target)?;
        }
        self.check_overwrite_records()?;
        self.check_device_erase()?;
        check_nonce(&self.controller_nonce_hex)?;
        check_previous(self.previous_certificate_sha256.as_deref())?;
        self.check_times()
    }

    fn overwrites(&self) -> impl Iterator<Item = &super::OverwriteRecord> {
        self.targets.iter().filter_map(|t| t.overwrite.as_ref())
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
                let mismatched = self
                    .verification
                    .iter()
                    .map(|v| v.mismatched_blocks)
                    .chain(self.overwrites().map(|o| o.mismatched_blocks))
                    .find(|&m| m != 0);
                match mismatched {
                    Some(mismatched) => Err(DocumentError::ErasedWithMismatches { mismatched }),
                    None => Ok(()),
                }
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

    fn check_target(&self, t: &TargetRecordV2) -> Result<(), DocumentError> {
        let s = &t.sanitization;
        let expected =
            category_of(&s.technique).ok_or_else(|| DocumentError::UnknownTechnique {
                target: t.name.clone(),
                found: s.technique.clone(),
            })?;
        if s.category != expected {
            return Err(DocumentError::CategoryMismatch {
                target: t.name.clone(),
                technique: s.technique.clone(),
                found: s.category.clone(),
                expected,
            });
        }
        if s.basis.trim().is_empty() {
            return Err(DocumentError::MissingBasis {
                target: t.name.clone(),
            });
        }
        match s.technique.as_str() {
            TECHNIQUE_APPLE_EACS => {
                if self.device_erase.is_none() {
                    return Err(DocumentError::DeviceEraseMissing {
                        target: t.name.clone(),
                    });
                }
                if t.overwrite.is_some() {
                    return Err(DocumentError::DeviceEraseTargetOverwritten {
                        target: t.name.clone(),
                    });
                }
            }
            technique @ (TECHNIQUE_OVERWRITE | TECHNIQUE_CRYPTO_ERASE_OVERWRITE) => {
                if t.overwrite.is_none() {
                    return Err(DocumentError::MissingOverwrite {
                        target: t.name.clone(),
                        technique: technique.to_owned(),
                    });
                }
                if self.pattern.is_none() {
                    return Err(DocumentError::MissingPattern {
                        target: t.name.clone(),
                    });
                }
                if self.verification.is_none() {
                    return Err(DocumentError::MissingVerification {
                        target: t.name.clone(),
                    });
                }
                let keys_destroyed = t.key_destruction.as_ref().is_some_and(|kd| {
                    !kd.method.trim().is_empty()
                        && !kd.tool.trim().is_empty()
                        && !kd.evidence.is_empty()
                });
                if technique == TECHNIQUE_CRYPTO_ERASE_OVERWRITE
                    && self.outcome == OUTCOME_ERASED
                    && !keys_destroyed
                {
                    return Err(DocumentError::MissingKeyDestruction {
                        target: t.name.clone(),
                    });
                }
            }
            // `category_of` knows exactly the three techniques above.
            _ => {}
        }
        Ok(())
    }

    fn check_overwrite_records(&self) -> Result<(), DocumentError> {
        // Which target needs a pattern and a verification was checked per target; here the
        // other way round: none without an overwritten target.
        if self.overwrites().next().is_none() {
            if self.pattern.is_some() {
                return Err(DocumentError::NothingOverwritten { field: "pattern" });
            }
            if self.verification.is_some() {
                return Err(DocumentError::NothingOverwritten {
                    field: "verification",
                });
            }
        }
        if let Some(v) = &self.verification {
            let sum = |f: fn(&super::OverwriteRecord) -> u64| {
                self.overwrites()
                    .try_fold(0u64, |acc, o| acc.checked_add(f(o)))
            };
            for (field, total, sum) in [
                (
                    "verified_blocks",
                    v.sampled_blocks,
                    sum(|o| o.verified_blocks),
                ),
                (
                    "mismatched_blocks",
                    v.mismatched_blocks,
                    sum(|o| o.mismatched_blocks),
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
            check_coverage(v.coverage_percent)?;
        }
        if let Some(p) = &self.pattern {
            check_pattern_key(&p.key_hex)?;
        }
        Ok(())
    }

    fn check_device_erase(&self) -> Result<(), DocumentError> {
        let Some(de) = &self.device_erase else {
            return Ok(());
        };
        check_sha256(
            "device_erase.prepare_record_sha256",
            &de.prepare_record_sha256,
        )?;
        if de.evidence.is_empty() {
            return Err(DocumentError::DeviceEraseWithoutEvidence);
        }
        if let Some(line) = de.evidence.iter().find(|l| !l.passed) {
            return Err(DocumentError::FailedEvidence {
                check: line.check.clone(),
                detail: line.detail.clone(),
            });
        }
        if !self.signer.born_after_tenancy {
            return Err(DocumentError::DeviceEraseSignedByTenancyKey);
        }
        Ok(())
    }

    fn check_times(&self) -> Result<(), DocumentError> {
        let (started, finished) = check_times(&self.started_at, &self.finished_at)?;
        let not_before = parse_utc(
            "signer.certificate_not_before",
            &self.signer.certificate_not_before,
        )?;
        if not_before > finished {
            return Err(DocumentError::SignerAfterSigning {
                certificate_not_before: self.signer.certificate_not_before.clone(),
                finished_at: self.finished_at.clone(),
            });
        }
        if self.signer.born_after_tenancy != (not_before > started) {
            return Err(DocumentError::SignerTenancy {
                claimed: self.signer.born_after_tenancy,
                certificate_not_before: self.signer.certificate_not_before.clone(),
                started_at: self.started_at.clone(),
            });
        }
        Ok(())
    }
}
