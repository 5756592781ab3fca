//! Domain types to proto messages and back, one to one. Nothing else converts proto types but
//! `telemetry::wire`, which owns the telemetry record's wire form (the spool stores it too).
//! The erase's enums map to the proto's by name ([`by_name`]), from one table each.

use jex_proto::v1 as pb;

use jex_attest::SignedCertificate;
use jex_erase::{Lifecycle, OperationView, Outcome, Phase};

use super::HostFacts;

/// `GetHost`'s answer.
pub fn host(
    f: &HostFacts,
    lifecycle: Lifecycle,
    operation_id: Option<String>,
    conditions: &[crate::health::Condition],
) -> pb::Host {
    pb::Host {
        host_id: f.host_id.clone(),
        hardware_uuid: f.hardware_uuid.clone(),
        serial_number: f.serial_number.clone(),
        model: f.model.clone(),
        chip: f.chip.clone(),
        logical_cpus: f.logical_cpus,
        super_cores: f.super_cores,
        performance_cores: f.performance_cores,
        efficiency_cores: f.efficiency_cores,
        memory_bytes: f.memory_bytes,
        os_name: f.os_name.clone(),
        os_version: f.os_version.clone(),
        agent_version: crate::AGENT_VERSION.to_owned(),
        lifecycle_state: lifecycle_state(lifecycle) as i32,
        erase_operation_id: operation_id.unwrap_or_default(),
        agent_start_time_unix_ms: f.agent_start_unix_ms,
        telemetry_interval_ms: f.telemetry_interval_ms,
        agent_build: Some(agent_build()),
        conditions: conditions.iter().map(condition).collect(),
    }
}

/// A raised condition, as the proto carries it.
pub fn condition(c: &crate::health::Condition) -> pb::HostCondition {
    pb::HostCondition {
        kind: by_name(
            pb::HostConditionKind::from_str_name,
            "HOST_CONDITION_KIND_",
            c.kind.as_str(),
        ) as i32,
        since_unix_ms: c.since_unix_ms,
        message: c.message.clone(),
    }
}

/// This binary's build, as the proto carries it.
pub fn agent_build() -> pb::AgentBuild {
    let b = crate::BUILD;
    pb::AgentBuild {
        version: b.version.to_owned(),
        commit: b.commit.to_owned(),
        target: b.target.to_owned(),
        build_date: b.date.to_owned(),
        rustc: b.rustc.to_owned(),
    }
}

/// The proto lifecycle state.
pub fn lifecycle_state(l: Lifecycle) -> pb::LifecycleState {
    by_name(
        pb::LifecycleState::from_str_name,
        "LIFECYCLE_STATE_",
        l.as_str(),
    )
}

/// The proto value named `<prefix><NAME>` for the domain value named `name`
/// (`keys_destroyed` → `ERASE_PHASE_KEYS_DESTROYED`). The domain enums name their values in
/// one table each (`jex_erase`'s `named_enum!`), and the proto's names follow them, so no
/// hand-written table maps one to the other; the tests below check that every domain value
/// has its proto twin and every proto value but `UNSPECIFIED` its domain one.
fn by_name<E: Default>(from_str_name: fn(&str) -> Option<E>, prefix: &str, name: &str) -> E {
    from_str_name(&format!("{prefix}{}", name.to_ascii_uppercase())).unwrap_or_default()
}

fn phase(p: Phase) -> pb::ErasePhase {
    by_name(pb::ErasePhase::from_str_name, "ERASE_PHASE_", p.as_str())
}

fn outcome(o: Option<Outcome>) -> pb::EraseOutcome {
    o.map_or(pb::EraseOutcome::Unspecified, |o| {
        by_name(
            pb::EraseOutcome::from_str_name,
            "ERASE_OUTCOME_",
            o.as_str(),
        )
    })
}

/// An erase operation's state.
pub fn operation(op: &OperationView) -> pb::EraseOperation {
    pb::EraseOperation {
        operation_id: op.operation_id.clone(),
        request_id: op.request_id.clone(),
        phase: phase(op.phase) as i32,
        outcome: outcome(op.outcome) as i32,
        bytes_total: op.bytes_total,
        bytes_done: op.bytes_done,
        rate_bytes_per_second: op.rate_bytes_per_second,
        eta_seconds: op.eta_seconds,
        started_time_unix_ms: op.started_unix_ms,
        finished_time_unix_ms: op.finished_unix_ms.unwrap_or(0),
        failure_reason: op.failure_reason.clone().unwrap_or_default(),
        exceptions: op.exceptions.clone(),
        targets: op
            .targets
            .iter()
            .map(|t| pb::EraseTarget {
                name: t.name.clone(),
                backend: t.backend.clone(),
                size_bytes: t.size_bytes,
                phase: phase(t.phase) as i32,
                bytes_done: t.bytes_done,
            })
            .collect(),
        prepare_record: op.prepare_record.as_ref().map(prepare_record),
    }
}

/// A signed prepare record.
pub fn prepare_record(r: &jex_reclaim::SignedPrepareRecord) -> pb::PrepareRecord {
    pb::PrepareRecord {
        record_json: r.record_json.clone(),
        signature: r.signature.clone(),
        signer_chain_der: r.signer_chain_der.clone(),
        signature_algorithm: r.signature_algorithm.clone(),
    }
}

/// Back from the wire (for the controller client and the tests).
pub fn prepare_record_from_proto(r: pb::PrepareRecord) -> jex_reclaim::SignedPrepareRecord {
    jex_reclaim::SignedPrepareRecord {
        record_json: r.record_json,
        signature: r.signature,
        signer_chain_der: r.signer_chain_der,
        signature_algorithm: r.signature_algorithm,
    }
}

/// A signed certificate.
pub fn certificate(c: &SignedCertificate) -> pb::EraseCertificate {
    pb::EraseCertificate {
        document_json: c.document_json.clone(),
        signature: c.signature.clone(),
        signer_chain_der: c.signer_chain_der.clone(),
        signature_algorithm: c.signature_algorithm.clone(),
    }
}

/// Back from the wire (for the controller client and `verify-erase`).
pub fn certificate_from_proto(c: pb::EraseCertificate) -> SignedCertificate {
    SignedCertificate {
        document_json: c.document_json,
        signature: c.signature,
        signer_chain_der: c.signer_chain_der,
        signature_algorithm: c.signature_algorithm,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every value of a proto enum but `UNSPECIFIED` (0), by number.
    fn proto_values<E: TryFrom<i32>>() -> BTreeSet<i32> {
        (1..256).filter(|v| E::try_from(*v).is_ok()).collect()
    }

    /// `domain` maps each value to a distinct proto value, never `UNSPECIFIED`, and reaches
    /// every proto value: a value added on one side without its twin on the other fails here.
    fn one_to_one<D: std::fmt::Debug + Copy>(
        domain: &[D],
        map: impl Fn(D) -> i32,
        all: BTreeSet<i32>,
    ) {
        let mapped: Vec<i32> = domain.iter().map(|d| map(*d)).collect();
        for (d, v) in domain.iter().zip(&mapped) {
            assert_ne!(*v, 0, "{d:?} has no proto value of its name");
        }
        let distinct: BTreeSet<i32> = mapped.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            domain.len(),
            "two values share a proto value"
        );
        assert_eq!(distinct, all, "a proto value has no domain value");
    }

    #[test]
    fn every_phase_lifecycle_and_outcome_has_its_proto_twin_by_name() {
        one_to_one(
            &Phase::ALL,
            |p| phase(p) as i32,
            proto_values::<pb::ErasePhase>(),
        );
        one_to_one(
            &Lifecycle::ALL,
            |l| lifecycle_state(l) as i32,
            proto_values::<pb::LifecycleState>(),
        );
        one_to_one(
            &Outcome::ALL,
            |o| outcome(Some(o)) as i32,
            proto_values::<pb::EraseOutcome>(),
        );
        one_to_one(
            &crate::health::ConditionKind::ALL,
            |kind| {
                condition(&crate::health::Condition {
                    kind,
                    since_unix_ms: 0,
                    message: String::new(),
                })
                .kind
            },
            proto_values::<pb::HostConditionKind>(),
        );
        assert_eq!(outcome(None), pb::EraseOutcome::Unspecified);
        assert_eq!(phase(Phase::KeysDestroyed), pb::ErasePhase::KeysDestroyed);
        assert_eq!(
            lifecycle_state(Lifecycle::EraseFailed),
            pb::LifecycleState::EraseFailed
        );
    }
}
