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
//! - a device-erase target ([`super::TECHNIQUE_APPLE_EACS`],
//!   [`super::TECHNIQUE_DEVICE_CRYPTO_ERASE`]) comes with the document's `device_erase` record and
//!   carries no overwrite facts (the agent did not overwrite it);
//! - a target whose technique overwrites ([`TECHNIQUE_OVERWRITE`],
//!   [`TECHNIQUE_CRYPTO_ERASE_OVERWRITE`]) carries its overwrite facts, and the document then
//!   has a `pattern` and a `verification`; with `ERASED`, a
//!   [`TECHNIQUE_CRYPTO_ERASE_OVERWRITE`] target also carries key-destruction evidence;
//! - `pattern` and `verification` are absent when no target was overwritten;
//! - with a `verification`: the overwritten targets' `verified_blocks` and
//!   `mismatched_blocks` add up to its totals, its coverage is within `[0, 100]`; the pattern
//!   key is 64 lowercase hex characters;
//! - a `device_erase` record names the prepare record's SHA-256 (64 lowercase hex) and lists at
//!   least one evidence line; with `ERASED` every line passed and the signer was born after
//!   the tenancy; with any other outcome at least one line failed (a failed attestation is
//!   signed too, naming what failed);
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
    OUTCOME_FAILED, TECHNIQUE_CRYPTO_ERASE_OVERWRITE, TECHNIQUE_OVERWRITE, TargetRecordV2,
    category_of, is_device_erase,
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
            technique if is_device_erase(technique) => {
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
        let failed = de.evidence.iter().find(|l| !l.passed);
        if self.outcome != OUTCOME_ERASED {
            // A failed attestation is signed too, and says which lines failed.
            return match failed {
                Some(_) => Ok(()),
                None => Err(DocumentError::NoFailedEvidence {
                    outcome: self.outcome.clone(),
                }),
            };
        }
        if let Some(line) = failed {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{LEAF_NOT_BEFORE, sample_document_v2, sample_document_v2_device_erase};
    use crate::{CATEGORY_CLEAR, CATEGORY_PURGE};

    /// The error of the single-phase sample after `edit`.
    fn broken(edit: impl FnOnce(&mut CertificateDocumentV2)) -> DocumentError {
        let mut doc = sample_document_v2();
        edit(&mut doc);
        doc.check_consistency().unwrap_err()
    }

    /// The error of the device-erase sample after `edit`.
    fn broken_de(edit: impl FnOnce(&mut CertificateDocumentV2)) -> DocumentError {
        let mut doc = sample_document_v2_device_erase();
        edit(&mut doc);
        doc.check_consistency().unwrap_err()
    }

    /// The device-erase sample with the internal SSD alone: nothing overwritten.
    fn ssd_only() -> CertificateDocumentV2 {
        let mut doc = sample_document_v2_device_erase();
        doc.targets.truncate(1);
        doc.pattern = None;
        doc.verification = None;
        doc
    }

    #[test]
    fn the_samples_are_consistent() {
        sample_document_v2().check_consistency().unwrap();
        sample_document_v2_device_erase()
            .check_consistency()
            .unwrap();
        ssd_only().check_consistency().unwrap();
    }

    #[test]
    fn schema_and_operation_id_are_checked() {
        match broken(|d| d.schema = crate::DOCUMENT_SCHEMA.into()) {
            DocumentError::Schema { found, expected } => {
                assert_eq!(found, "jex.erase-certificate/v1");
                assert_eq!(expected, "jex.erase-certificate/v2");
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            broken(|d| d.operation_id = "op-1".into()),
            DocumentError::OperationId { .. }
        ));
    }

    #[test]
    fn erased_requires_no_exception_a_target_and_no_mismatch() {
        assert!(matches!(
            broken_de(|d| d.exceptions.push("hpa-present".into())),
            DocumentError::ErasedWithExceptions { count: 1 }
        ));
        assert!(matches!(
            broken(|d| {
                d.targets.clear();
                d.pattern = None;
                d.verification = None;
            }),
            DocumentError::ErasedWithoutTargets
        ));
        assert!(matches!(
            broken(|d| {
                d.targets[1].overwrite.as_mut().unwrap().mismatched_blocks = 3;
                d.verification.as_mut().unwrap().mismatched_blocks = 3;
            }),
            DocumentError::ErasedWithMismatches { mismatched: 3 }
        ));
        assert!(matches!(
            broken(|d| d.outcome = "erased".into()),
            DocumentError::Outcome { .. }
        ));
        assert!(matches!(
            broken(|d| d.outcome = crate::OUTCOME_FAILED.into()),
            DocumentError::MissingExceptions { .. }
        ));
        let mut failed = sample_document_v2();
        failed.outcome = crate::OUTCOME_ERASED_WITH_EXCEPTIONS.into();
        failed.exceptions.push("verification-mismatch".into());
        failed.targets[1]
            .overwrite
            .as_mut()
            .unwrap()
            .mismatched_blocks = 1;
        failed.verification.as_mut().unwrap().mismatched_blocks = 1;
        failed.check_consistency().unwrap();
    }

    #[test]
    fn techniques_must_be_known_and_in_their_category() {
        match broken(|d| d.targets[0].sanitization.technique = "Crypto Erase + Overwrite".into()) {
            DocumentError::UnknownTechnique { target, found } => {
                assert_eq!(target, "tenant-disk");
                assert_eq!(found, "Crypto Erase + Overwrite");
            }
            e => panic!("{e:?}"),
        }
        // Overwrite is Clear: a file overwrite claimed as Purge is refused.
        match broken(|d| d.targets[1].sanitization.category = CATEGORY_PURGE.into()) {
            DocumentError::CategoryMismatch {
                target,
                found,
                expected,
                ..
            } => {
                assert_eq!(target, "scratch");
                assert_eq!(found, "Purge");
                assert_eq!(expected, "Clear");
            }
            e => panic!("{e:?}"),
        }
        // The cryptographic ones are Purge.
        assert!(matches!(
            broken(|d| d.targets[0].sanitization.category = CATEGORY_CLEAR.into()),
            DocumentError::CategoryMismatch {
                expected: "Purge",
                ..
            }
        ));
        assert!(matches!(
            broken_de(|d| d.targets[0].sanitization.category = CATEGORY_CLEAR.into()),
            DocumentError::CategoryMismatch {
                expected: "Purge",
                ..
            }
        ));
        assert!(matches!(
            broken(|d| d.targets[1].sanitization.basis = " ".into()),
            DocumentError::MissingBasis { target } if target == "scratch"
        ));
    }

    #[test]
    fn an_eacs_target_needs_a_device_erase_and_was_not_overwritten() {
        match broken_de(|d| d.device_erase = None) {
            DocumentError::DeviceEraseMissing { target } => assert_eq!(target, "internal"),
            e => panic!("{e:?}"),
        }
        // Claiming EACS for a target on a host without a device erase.
        assert!(matches!(
            broken(|d| {
                d.targets[1].sanitization =
                    crate::Sanitization::of(crate::TECHNIQUE_APPLE_EACS, "keys gone").unwrap();
                d.targets[1].overwrite = None;
                d.verification.as_mut().unwrap().sampled_blocks = 2002;
            }),
            DocumentError::DeviceEraseMissing { target } if target == "scratch"
        ));
        assert!(matches!(
            broken_de(|d| {
                d.targets[0].overwrite = d.targets[1].overwrite.clone();
            }),
            DocumentError::DeviceEraseTargetOverwritten { target } if target == "internal"
        ));
    }

    #[test]
    fn an_overwrite_target_needs_its_facts_a_pattern_and_a_verification() {
        match broken_de(|d| d.targets[1].overwrite = None) {
            DocumentError::MissingOverwrite { target, technique } => {
                assert_eq!(target, "archive");
                assert_eq!(technique, "Overwrite");
            }
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            broken(|d| d.targets[0].overwrite = None),
            DocumentError::MissingOverwrite { target, .. } if target == "tenant-disk"
        ));
        assert!(matches!(
            broken_de(|d| d.pattern = None),
            DocumentError::MissingPattern { target } if target == "archive"
        ));
        assert!(matches!(
            broken_de(|d| d.verification = None),
            DocumentError::MissingVerification { target } if target == "archive"
        ));
        assert!(matches!(
            broken(|d| d.targets[0].key_destruction = None),
            DocumentError::MissingKeyDestruction { target } if target == "tenant-disk"
        ));
        assert!(matches!(
            broken(|d| d.targets[0]
                .key_destruction
                .as_mut()
                .unwrap()
                .evidence
                .clear()),
            DocumentError::MissingKeyDestruction { .. }
        ));
    }

    #[test]
    fn pattern_and_verification_are_absent_when_nothing_was_overwritten() {
        let mut doc = ssd_only();
        doc.pattern = sample_document_v2().pattern;
        assert!(matches!(
            doc.check_consistency().unwrap_err(),
            DocumentError::NothingOverwritten { field: "pattern" }
        ));
        let mut doc = ssd_only();
        doc.verification = sample_document_v2().verification;
        assert!(matches!(
            doc.check_consistency().unwrap_err(),
            DocumentError::NothingOverwritten {
                field: "verification"
            }
        ));
    }

    #[test]
    fn block_totals_coverage_and_hex_fields_are_checked() {
        assert!(matches!(
            broken(|d| d.verification.as_mut().unwrap().sampled_blocks += 1),
            DocumentError::BlockTotals {
                field: "verified_blocks",
                ..
            }
        ));
        assert!(matches!(
            broken(|d| d.verification.as_mut().unwrap().mismatched_blocks = 1),
            DocumentError::ErasedWithMismatches { .. }
        ));
        assert!(matches!(
            broken(|d| {
                d.outcome = crate::OUTCOME_FAILED.into();
                d.exceptions.push("verification-mismatch".into());
                d.verification.as_mut().unwrap().mismatched_blocks = 1;
            }),
            DocumentError::BlockTotals {
                field: "mismatched_blocks",
                ..
            }
        ));
        assert!(matches!(
            broken(|d| d.verification.as_mut().unwrap().coverage_percent = f64::NAN),
            DocumentError::Coverage { .. }
        ));
        type Edit = fn(&mut CertificateDocumentV2);
        let cases: [(Edit, &str); 4] = [
            (
                |d| d.pattern.as_mut().unwrap().key_hex.truncate(10),
                "pattern.key_hex",
            ),
            (
                |d| d.controller_nonce_hex.truncate(62),
                "controller_nonce_hex",
            ),
            (
                |d| d.previous_certificate_sha256 = Some("ABC".into()),
                "previous_certificate_sha256",
            ),
            (
                |d| {
                    d.device_erase.as_mut().unwrap().prepare_record_sha256 = "a1".repeat(31);
                },
                "device_erase.prepare_record_sha256",
            ),
        ];
        for (edit, field) in cases {
            match broken_de(edit) {
                DocumentError::Hex { field: f, .. } => assert_eq!(f, field),
                other => panic!("expected Hex for {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_failed_attestation_is_consistent_only_when_it_names_a_failed_line() {
        let mut failed = sample_document_v2_device_erase();
        failed.outcome = OUTCOME_FAILED.into();
        failed.exceptions = vec!["tenant_volumes_gone".into()];
        // Every line passed: a FAILED outcome with nothing that failed is refused.
        match failed.check_consistency().unwrap_err() {
            DocumentError::NoFailedEvidence { outcome } => assert_eq!(outcome, OUTCOME_FAILED),
            e => panic!("{e:?}"),
        }
        let line = &mut failed.device_erase.as_mut().unwrap().evidence[2];
        line.passed = false;
        line.detail = "volume 7A3C… of the prepare inventory is still present".into();
        failed.check_consistency().unwrap();
        // Also when the key is the tenancy's: that is one of the reasons it failed.
        failed.signer.certificate_not_before = LEAF_NOT_BEFORE.into();
        failed.signer.born_after_tenancy = false;
        failed.check_consistency().unwrap();
    }

    #[test]
    fn a_device_erase_needs_passing_evidence_and_a_key_born_after_the_tenancy() {
        assert!(matches!(
            broken_de(|d| d.device_erase.as_mut().unwrap().evidence.clear()),
            DocumentError::DeviceEraseWithoutEvidence
        ));
        match broken_de(|d| {
            let line = &mut d.device_erase.as_mut().unwrap().evidence[2];
            line.passed = false;
            line.detail = "volume 7A3C… of the prepare inventory is still present".into();
        }) {
            DocumentError::FailedEvidence { check, detail } => {
                assert_eq!(check, "tenant_volumes_gone");
                assert!(detail.contains("7A3C"), "{detail}");
            }
            e => panic!("{e:?}"),
        }
        // Signed by a key of the tenancy (consistently recorded as such).
        assert!(matches!(
            broken_de(|d| {
                d.signer.certificate_not_before = LEAF_NOT_BEFORE.into();
                d.signer.born_after_tenancy = false;
            }),
            DocumentError::DeviceEraseSignedByTenancyKey
        ));
    }

    #[test]
    fn times_must_parse_be_ordered_and_agree_with_the_signer_record() {
        assert!(matches!(
            broken(|d| d.started_at = "yesterday".into()),
            DocumentError::Timestamp {
                field: "started_at",
                ..
            }
        ));
        assert!(matches!(
            broken(|d| d.finished_at = "2025-06-01T12:00:00+01:00".into()),
            DocumentError::NotUtc {
                field: "finished_at",
                ..
            }
        ));
        assert!(matches!(
            broken(|d| std::mem::swap(&mut d.started_at, &mut d.finished_at)),
            DocumentError::TimeOrder { .. }
        ));
        assert!(matches!(
            broken(|d| d.signer.certificate_not_before = "2020-01-01".into()),
            DocumentError::Timestamp {
                field: "signer.certificate_not_before",
                ..
            }
        ));
        assert!(matches!(
            broken_de(|d| d.signer.certificate_not_before = "2025-06-01T11:30:01Z".into()),
            DocumentError::SignerAfterSigning { .. }
        ));
        // A key of the tenancy claimed as born after it, and the other way round.
        match broken(|d| d.signer.born_after_tenancy = true) {
            DocumentError::SignerTenancy { claimed, .. } => assert!(claimed),
            e => panic!("{e:?}"),
        }
        let e = broken(|d| d.signer.certificate_not_before = "2025-06-01T10:00:01Z".into());
        assert!(
            matches!(e, DocumentError::SignerTenancy { claimed: false, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("is after started_at"), "{e}");
        // Issued in the very second the Terminate was accepted is not after it.
        assert!(matches!(
            broken_de(|d| d.signer.certificate_not_before = d.started_at.clone()),
            DocumentError::SignerTenancy { claimed: true, .. }
        ));
    }
}
