//! A telemetry record's wire form, which is also its stored form: the protobuf
//! `jex.agent.v1.TelemetryRecord`. The conversions both ways live here, so the spool stores
//! exactly what the stream sends, and a later agent whose records gained fields still reads
//! every record an earlier one spooled (protobuf fields are numbered; a field an old record
//! lacks reads as its default). [`WireRecord`] is a record encoded once: what the hub spools,
//! what subscribers get and what a replay sends as stored; [`v1`] reads the postcard records
//! of spool segments written before this form.

pub mod v1;

use jex_proto::v1 as pb;
use jex_spool::{Payload, PayloadError, SCHEMA_V1, Spool};
use prost::Message;
use prost::bytes::Bytes;

use crate::telemetry::{
    ClusterBusy, CoreKind, CpuSample, Gap, GapReason, LoadAverage, MemoryPressure, MemorySample,
    PressureLevel, Psi, Record, RecordBody, Sample, SwapSample,
};

/// The schema number of a spooled `TelemetryRecord` protobuf encoding.
pub const SCHEMA_TELEMETRY_RECORD: u16 = 1;

/// One telemetry record as sent.
pub fn to_proto(r: &Record) -> pb::TelemetryRecord {
    let body = match &r.body {
        RecordBody::Sample(s) => pb::telemetry_record::Body::Sample(sample_to_proto(s)),
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

/// One sample as sent.
pub fn sample_to_proto(s: &Sample) -> pb::Sample {
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
                    kind: core_kind_to_proto(c.kind) as i32,
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

/// The proto twin of a core kind.
fn core_kind_to_proto(kind: CoreKind) -> pb::CoreKind {
    match kind {
        CoreKind::Super => pb::CoreKind::Super,
        CoreKind::Performance => pb::CoreKind::Performance,
        CoreKind::Efficiency => pb::CoreKind::Efficiency,
    }
}

/// The core kind of a proto value; `None` for `UNSPECIFIED` and values this agent does not know.
fn core_kind_from_proto(value: i32) -> Option<CoreKind> {
    match pb::CoreKind::try_from(value).ok()? {
        pb::CoreKind::Unspecified => None,
        pb::CoreKind::Super => Some(CoreKind::Super),
        pb::CoreKind::Performance => Some(CoreKind::Performance),
        pb::CoreKind::Efficiency => Some(CoreKind::Efficiency),
    }
}

/// A received or stored record back in the telemetry model. A message a record lacks (an
/// older writer's) reads as its default; an enum value this agent does not know is an error.
pub fn from_proto(r: &pb::TelemetryRecord) -> Result<Record, PayloadError> {
    let body = match &r.body {
        Some(pb::telemetry_record::Body::Sample(s)) => RecordBody::Sample(sample_from_proto(s)?),
        Some(pb::telemetry_record::Body::Gap(g)) => RecordBody::Gap(Gap {
            reason: match pb::GapReason::try_from(g.reason) {
                Ok(pb::GapReason::AgentDown) => GapReason::AgentDown,
                Ok(pb::GapReason::Evicted) => GapReason::Evicted,
                Ok(pb::GapReason::Corrupt) => GapReason::Corrupt,
                Ok(pb::GapReason::SamplerError) => GapReason::SamplerError,
                Ok(pb::GapReason::DiskFull) => GapReason::DiskFull,
                _ => return Err(PayloadError(format!("unknown gap reason {}", g.reason))),
            },
            missing_seqs: (g.last_missing_seq != 0)
                .then_some((g.first_missing_seq, g.last_missing_seq)),
            start_time_unix_ms: g.start_time_unix_ms,
            end_time_unix_ms: g.end_time_unix_ms,
        }),
        None => return Err(PayloadError("a record with neither sample nor gap".into())),
    };
    Ok(Record {
        seq: r.seq,
        time_unix_ms: r.time_unix_ms,
        body,
    })
}

fn sample_from_proto(s: &pb::Sample) -> Result<Sample, PayloadError> {
    let cpu = s.cpu.clone().unwrap_or_default();
    let load = s.load.unwrap_or_default();
    let m = s.memory.unwrap_or_default();
    let swap = s.swap.unwrap_or_default();
    let pressure = s.pressure.unwrap_or_default();
    let clusters = cpu
        .clusters
        .iter()
        .map(|c| {
            let kind = core_kind_from_proto(c.kind)
                .ok_or_else(|| PayloadError(format!("unknown core kind {}", c.kind)))?;
            Ok(ClusterBusy {
                kind,
                busy_bp: c.busy_bp,
                cpus: c.cpus,
            })
        })
        .collect::<Result<_, _>>()?;
    let level = match pb::PressureLevel::try_from(pressure.level) {
        Ok(pb::PressureLevel::Unspecified) => None,
        Ok(pb::PressureLevel::Normal) => Some(PressureLevel::Normal),
        Ok(pb::PressureLevel::Warn) => Some(PressureLevel::Warn),
        Ok(pb::PressureLevel::Critical) => Some(PressureLevel::Critical),
        Err(_) => {
            return Err(PayloadError(format!(
                "unknown pressure level {}",
                pressure.level
            )));
        }
    };
    Ok(Sample {
        window_ms: s.window_ms,
        cpu: CpuSample {
            busy_bp: cpu.busy_bp,
            user_bp: cpu.user_bp,
            system_bp: cpu.system_bp,
            iowait_bp: cpu.iowait_bp,
            core_busy_bp: cpu.core_busy_bp,
            clusters,
            online_cpus: cpu.online_cpus,
        },
        load: LoadAverage {
            one: load.one,
            five: load.five,
            fifteen: load.fifteen,
        },
        memory: MemorySample {
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
        },
        swap: SwapSample {
            total_bytes: swap.total_bytes,
            used_bytes: swap.used_bytes,
        },
        pressure: MemoryPressure {
            level,
            psi: pressure.psi_present.then_some(Psi {
                some_avg10: pressure.some_avg10,
                full_avg10: pressure.full_avg10,
            }),
        },
    })
}

/// A telemetry record in its wire form: the protobuf encoding of the whole `TelemetryRecord`
/// (schema [`SCHEMA_TELEMETRY_RECORD`]), number and time included. It is what the hub spools,
/// what subscribers get and what the server sends, so a record is encoded once, when it is
/// made, and a replay sends the stored bytes as they are (`jex_proto::stored::StoredBatch`).
///
/// Read back from a spool, the bytes are checked to be one whole `TelemetryRecord` filed under
/// its own number and time, so a record a client could not decode never reaches one; fields
/// this agent does not know (a newer agent's) are kept and sent on. A format 1 segment's
/// postcard record is decoded through [`v1`] and encoded once on its way out.
#[derive(Clone, PartialEq)]
pub struct WireRecord {
    seq: u64,
    time_unix_ms: u64,
    bytes: Bytes,
}

impl WireRecord {
    /// `record`, encoded.
    pub fn new(record: &Record) -> Self {
        WireRecord {
            seq: record.seq,
            time_unix_ms: record.time_unix_ms,
            bytes: Bytes::from(to_proto(record).encode_to_vec()),
        }
    }

    /// A record of `body` at `time_unix_ms`, numbered as the next record `spool` appends
    /// (`Spool::append` refuses it under any other number).
    pub fn next_in(spool: &Spool<WireRecord>, time_unix_ms: u64, body: RecordBody) -> Self {
        Self::new(&Record {
            seq: spool.next_seq(),
            time_unix_ms,
            body,
        })
    }

    /// The record's number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The record's time, in milliseconds since the Unix epoch.
    pub fn time_unix_ms(&self) -> u64 {
        self.time_unix_ms
    }

    /// The encoded `TelemetryRecord`.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The encoded `TelemetryRecord`, for a response.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The record back in the telemetry model.
    pub fn record(&self) -> Result<Record, PayloadError> {
        let message = pb::TelemetryRecord::decode(self.bytes.as_ref())
            .map_err(|err| PayloadError(err.to_string()))?;
        from_proto(&message)
    }
}

impl std::fmt::Debug for WireRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireRecord")
            .field("seq", &self.seq)
            .field("time_unix_ms", &self.time_unix_ms)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl Payload for WireRecord {
    fn schema(&self) -> u16 {
        SCHEMA_TELEMETRY_RECORD
    }

    fn encode(&self, seq: u64, time_unix_ms: u64, out: &mut Vec<u8>) -> Result<(), PayloadError> {
        if (self.seq, self.time_unix_ms) != (seq, time_unix_ms) {
            return Err(PayloadError(format!(
                "record {} at {} offered as number {seq} at {time_unix_ms}",
                self.seq, self.time_unix_ms
            )));
        }
        out.extend_from_slice(&self.bytes);
        Ok(())
    }

    fn decode(
        schema: u16,
        seq: u64,
        time_unix_ms: u64,
        bytes: &[u8],
    ) -> Result<Self, PayloadError> {
        match schema {
            SCHEMA_TELEMETRY_RECORD => {
                // Checked, not converted: the bytes go out as stored.
                let message = pb::TelemetryRecord::decode(bytes)
                    .map_err(|err| PayloadError(err.to_string()))?;
                if (message.seq, message.time_unix_ms) != (seq, time_unix_ms) {
                    return Err(PayloadError(format!(
                        "record {} at {} stored under number {seq} at {time_unix_ms}",
                        message.seq, message.time_unix_ms
                    )));
                }
                if message.body.is_none() {
                    return Err(PayloadError("a record with neither sample nor gap".into()));
                }
                Ok(WireRecord {
                    seq,
                    time_unix_ms,
                    bytes: Bytes::copy_from_slice(bytes),
                })
            }
            SCHEMA_V1 => v1::decode(bytes).map(|body| {
                WireRecord::new(&Record {
                    seq,
                    time_unix_ms,
                    body,
                })
            }),
            other => Err(PayloadError(format!(
                "unknown telemetry record schema {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
