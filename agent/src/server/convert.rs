//! Domain types to proto messages and back, one to one. Nothing else converts proto types but
//! `telemetry::wire`, which owns the telemetry record's wire form (the spool stores it too).

use jex_proto::v1 as pb;

use crate::telemetry::{Record, Sample};
use jex_attest::SignedCertificate;
use jex_erase::{Lifecycle, OperationView, Outcome, Phase};

use super::HostFacts;

/// `GetHost`'s answer.
pub fn host(f: &HostFacts, lifecycle: Lifecycle, operation_id: Option<String>) -> pb::Host {
    pb::Host {
        host_id: f.host_id.clone(),
        hardware_uuid: f.hardware_uuid.clone(),
        serial_number: f.serial_number.clone(),
        model: f.model.clone(),
        chip: f.chip.clone(),
        logical_cpus: f.logical_cpus,
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
    }
}

/// The proto lifecycle state.
pub fn lifecycle_state(l: Lifecycle) -> pb::LifecycleState {
    match l {
        Lifecycle::Serving => pb::LifecycleState::Serving,
        Lifecycle::Erasing => pb::LifecycleState::Erasing,
        Lifecycle::Reclaimable => pb::LifecycleState::Reclaimable,
        Lifecycle::EraseFailed => pb::LifecycleState::EraseFailed,
    }
}

/// One telemetry record (its wire form is also what the spool stores: `telemetry::wire`).
pub fn record(r: &Record) -> pb::TelemetryRecord {
    crate::telemetry::wire::to_proto(r)
}

/// One sample.
pub fn sample(s: &Sample) -> pb::Sample {
    crate::telemetry::wire::sample_to_proto(s)
}

fn phase(p: Phase) -> pb::ErasePhase {
    match p {
        Phase::Requested => pb::ErasePhase::Requested,
        Phase::KeysDestroyed => pb::ErasePhase::KeysDestroyed,
        Phase::Overwriting => pb::ErasePhase::Overwriting,
        Phase::Verifying => pb::ErasePhase::Verifying,
        Phase::Certified => pb::ErasePhase::Certified,
        Phase::Reclaimable => pb::ErasePhase::Reclaimable,
        Phase::Failed => pb::ErasePhase::Failed,
    }
}

/// An erase operation's state.
pub fn operation(op: &OperationView) -> pb::EraseOperation {
    pb::EraseOperation {
        operation_id: op.operation_id.clone(),
        request_id: op.request_id.clone(),
        phase: phase(op.phase) as i32,
        outcome: match op.outcome {
            None => pb::EraseOutcome::Unspecified,
            Some(Outcome::Erased) => pb::EraseOutcome::Erased,
            Some(Outcome::ErasedWithExceptions) => pb::EraseOutcome::ErasedWithExceptions,
            Some(Outcome::Failed) => pb::EraseOutcome::Failed,
        } as i32,
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
