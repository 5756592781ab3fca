//! Bytes per telemetry sample on the wire: the protobuf `TelemetryRecord` exactly as the server
//! converts it, for a real sample of this machine and for an Apple Silicon-sized sample (12
//! cores in two clusters, every macOS memory class set), alone and in a one-second batch, with
//! the gRPC message prefix (5 bytes) and the HTTP/2 DATA frame header (9 bytes) that carry it.
//!
//! Run: `cargo bench -p jex-agent --bench wire`.

use std::process::ExitCode;
use std::time::Duration;

use jex_agent::telemetry::{
    ClusterBusy, CoreKind, CpuSample, LoadAverage, MemoryPressure, MemorySample, PressureLevel,
    Record, RecordBody, Sample, SwapSample,
};
use jex_proto::v1 as pb;
use prost::Message;

const GRPC_PREFIX: usize = 5;
const H2_FRAME_HEADER: usize = 9;

fn apple_sample() -> Sample {
    const GIB: u64 = 1 << 30;
    Sample {
        window_ms: 1000,
        cpu: CpuSample {
            busy_bp: 2345,
            user_bp: 1700,
            system_bp: 645,
            iowait_bp: 0,
            core_busy_bp: vec![812, 77, 0, 15, 9912, 4410, 3021, 120, 0, 0, 7, 1999],
            clusters: vec![
                ClusterBusy {
                    kind: CoreKind::Performance,
                    busy_bp: 3101,
                    cpus: 8,
                },
                ClusterBusy {
                    kind: CoreKind::Efficiency,
                    busy_bp: 226,
                    cpus: 4,
                },
            ],
            online_cpus: 12,
        },
        load: LoadAverage {
            one: 3.41,
            five: 2.9,
            fifteen: 2.2,
        },
        memory: MemorySample {
            formula_version: 1,
            total_bytes: 32 * GIB,
            used_bytes: 21 * GIB + 123_456_789,
            available_bytes: 10 * GIB + 987_654_321,
            free_bytes: 412_345_678,
            active_bytes: 9 * GIB + 1_234_567,
            inactive_bytes: 8 * GIB + 7_654_321,
            wired_bytes: 3 * GIB + 55_555_555,
            compressed_bytes: 2 * GIB + 44_444_444,
            purgeable_bytes: 123_456_789,
            speculative_bytes: 98_765_432,
            ..MemorySample::default()
        },
        swap: SwapSample {
            total_bytes: 4 * GIB,
            used_bytes: 1_234_567_890,
        },
        pressure: MemoryPressure {
            level: Some(PressureLevel::Normal),
            psi: None,
        },
    }
}

fn record(seq: u64, sample: &Sample) -> pb::TelemetryRecord {
    jex_agent::telemetry::wire::to_proto(&Record {
        seq,
        time_unix_ms: 1_795_000_000_000 + seq * 1000,
        body: RecordBody::Sample(sample.clone()),
    })
}

fn report(name: &str, sample: &Sample) {
    let rec = record(1_000_000, sample);
    let one = pb::StreamTelemetryResponse {
        records: vec![rec.clone()],
    };
    let batch10 = pb::StreamTelemetryResponse {
        records: (0..10).map(|i| record(1_000_000 + i, sample)).collect(),
    };
    let raw = rec.encoded_len();
    let framed = one.encoded_len() + GRPC_PREFIX + H2_FRAME_HEADER;
    let per_in_batch = (batch10.encoded_len() + GRPC_PREFIX + H2_FRAME_HEADER) as f64 / 10.0;
    println!(
        "{name:<44} record {raw:>4} B | alone on the wire {framed:>4} B | in a batch of 10 {per_in_batch:>6.1} B/sample | {:.1} KiB/min at 1 Hz",
        framed as f64 * 60.0 / 1024.0
    );
}

fn main() -> ExitCode {
    let mut source = match jex_agent::telemetry::sampler::platform_source(Vec::new()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot make the platform sampler: {e}");
            return ExitCode::FAILURE;
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    let here = match source.sample() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sampling failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    report(
        &format!(
            "this machine ({} CPUs, Linux classes)",
            here.cpu.core_busy_bp.len()
        ),
        &here,
    );
    report(
        "Apple Silicon, 12 cores (8P+4E), macOS classes",
        &apple_sample(),
    );
    ExitCode::SUCCESS
}
