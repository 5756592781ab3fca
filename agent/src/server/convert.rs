//! Domain types to proto messages and back, one to one. Nothing else converts proto types.

use jex_proto::v1 as pb;

use crate::telemetry::{CoreKind, GapReason, PressureLevel, Record, RecordBody, Sample};
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

/// One telemetry record.
pub fn record(r: &Record) -> pb::TelemetryRecord {
    let body = match &r.body {
        RecordBody::Sample(s) => pb::telemetry_record::Body::Sample(sample(s)),
        RecordBody::Gap(g) => {
            let (first, last) = g.missing_seqs.unwrap_or((0, 0));
            pb::telemetry_record::Body::Gap(pb::Gap {
                reason: match g.reason {
                    GapReason::AgentDown => pb::GapReason::AgentDown,
                    GapReason::Evicted => pb::GapReason::Evicted,
                    GapReason::Corrupt => pb::GapReason::Corrupt,
                    GapReason::SamplerError => pb::GapReason::SamplerError,
                    GapReason::DiskFull => pb::GapReason::DiskFull,
                } as i32,
                first_missing_seq: first,
                last_missing_seq: last,
                start_time_unix_ms: g.start_time_unix_ms,
                end_time_unix_ms: g.end_time_unix_ms,
            })
        }
    };
    pb::TelemetryRecord {
        seq: r.seq,
        time_unix_ms: r.time_unix_ms,
        body: Some(body),
    }
}

/// One sample.
pub fn sample(s: &Sample) -> pb::Sample {
    let m = &s.memory;
    pb::Sample {
        window_ms: s.window_ms,
        cpu: Some(pb::CpuSample {
            busy_bp: s.cpu.busy_bp,
            user_bp: s.cpu.user_bp,
            system_bp: s.cpu.system_bp,
            core_busy_bp: s.cpu.core_busy_bp.clone(),
            clusters: s
                .cpu
                .clusters
                .iter()
                .map(|c| pb::ClusterBusy {
                    kind: match c.kind {
                        CoreKind::Performance => pb::CoreKind::Performance,
                        CoreKind::Efficiency => pb::CoreKind::Efficiency,
                    } as i32,
                    busy_bp: c.busy_bp,
                    cpus: c.cpus,
                })
                .collect(),
            online_cpus: s.cpu.online_cpus,
            iowait_bp: s.cpu.iowait_bp,
        }),
        load: Some(pb::LoadAverage {
            one: s.load.one,
            five: s.load.five,
            fifteen: s.load.fifteen,
        }),
        memory: Some(pb::MemorySample {
            formula_version: m.formula_version,
            total_bytes: m.total_bytes,
            used_bytes: m.used_bytes,
            available_bytes: m.available_bytes,
            free_bytes: m.free_bytes,
            active_bytes: m.active_bytes,
            inactive_bytes: m.inactive_bytes,
            wired_bytes: m.wired_bytes,
            compressed_bytes: m.compressed_bytes,
            purgeable_bytes: m.purgeable_bytes,
            speculative_bytes: m.speculative_bytes,
            cached_bytes: m.cached_bytes,
            buffers_bytes: m.buffers_bytes,
            shared_bytes: m.shared_bytes,
            slab_reclaimable_bytes: m.slab_reclaimable_bytes,
        }),
        swap: Some(pb::SwapSample {
            total_bytes: s.swap.total_bytes,
            used_bytes: s.swap.used_bytes,
        }),
        pressure: Some(pb::MemoryPressure {
            level: match s.pressure.level {
                None => pb::PressureLevel::Unspecified,
                Some(PressureLevel::Normal) => pb::PressureLevel::Normal,
                Some(PressureLevel::Warn) => pb::PressureLevel::Warn,
                Some(PressureLevel::Critical) => pb::PressureLevel::Critical,
            } as i32,
            some_avg10: s.pressure.psi.map_or(0.0, |p| p.some_avg10),
            full_avg10: s.pressure.psi.map_or(0.0, |p| p.full_avg10),
            psi_present: s.pressure.psi.is_some(),
        }),
    }
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
