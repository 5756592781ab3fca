//! The stored form across versions: the golden format 1 segment read through the kept decoder,
//! records that gained fields since they were written, and the round trip of the wire form.

#![allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected error"
)]

use std::time::Duration;

use jex_spool::{Item, Payload, SCHEMA_V1, Spool, SpoolConfig, Stored};
use prost::Message;

use super::*;

fn config(dir: &std::path::Path) -> SpoolConfig {
    SpoolConfig {
        fsync_interval: Duration::ZERO,
        ..SpoolConfig::new(dir.join("spool"))
    }
}

fn read_all<T: Payload>(spool: &Spool<T>) -> Vec<Item<T>> {
    let mut out = Vec::new();
    let mut cursor = 0;
    loop {
        let batch = spool.read_after(cursor, 100).unwrap();
        let Some(last) = batch.last() else {
            return out;
        };
        cursor = last.last_seq();
        out.extend(batch);
    }
}

fn entries<T: std::fmt::Debug>(items: Vec<Item<T>>) -> Vec<jex_spool::Entry<T>> {
    items
        .into_iter()
        .map(|item| match item {
            Item::Entry(entry) => entry,
            Item::Missing(missing) => panic!("a missing range: {missing:?}"),
        })
        .collect()
}

/// A spool directory holding `segment` as its first segment.
fn spool_with(segment: &[u8]) -> (tempfile::TempDir, SpoolConfig) {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path());
    std::fs::create_dir_all(&config.dir).unwrap();
    std::fs::write(config.dir.join(format!("{:020}.seg", 1)), segment).unwrap();
    (tmp, config)
}

#[test]
fn the_golden_format_1_segment_reads_back_whole_through_the_kept_decoder() {
    let golden = include_bytes!("../../../../crates/spool/testdata/v1-segment.seg");
    let (_tmp, config) = spool_with(golden);
    // The stored bytes, decoded as the telemetry model stood when they were written (the same
    // shape as today's model, which derives the same postcard form).
    let (raw, _) = Spool::<Stored>::open(config.clone()).unwrap();
    let want: Vec<Record> = entries(read_all(&raw))
        .into_iter()
        .map(|entry| {
            assert_eq!(entry.payload.schema, SCHEMA_V1);
            Record {
                seq: entry.seq,
                time_unix_ms: entry.time_unix_ms,
                body: postcard::from_bytes(&entry.payload.bytes).unwrap(),
            }
        })
        .collect();
    drop(raw);
    assert_eq!(want.len(), 9);

    let (spool, report) = Spool::<WireRecord>::open(config).unwrap();
    assert_eq!(report.corrupt_records + report.corrupt_regions, 0);
    let got: Vec<Record> = entries(read_all(&spool))
        .into_iter()
        .map(|entry| {
            let record = entry.payload.record().unwrap();
            assert_eq!(
                (record.seq, record.time_unix_ms),
                (entry.seq, entry.time_unix_ms)
            );
            record
        })
        .collect();
    assert_eq!(got, want);
    // Every kind of record the agent spools is in it.
    let reasons: Vec<_> = got
        .iter()
        .filter_map(|r| match &r.body {
            RecordBody::Gap(g) => Some((g.reason, g.missing_seqs)),
            RecordBody::Sample(_) => None,
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            (GapReason::AgentDown, None),
            (GapReason::SamplerError, None),
            (GapReason::Evicted, Some((1, 2))),
            (GapReason::Corrupt, Some((3, 4))),
            (GapReason::DiskFull, Some((5, 6))),
        ]
    );
}

/// `TelemetryRecord` as an older agent knew it, with fewer fields: its sample had no load,
/// swap or pressure, its CPU no clusters or iowait, its memory only the first four figures.
#[derive(Clone, PartialEq, Message)]
struct OldRecord {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(uint64, tag = "2")]
    time_unix_ms: u64,
    #[prost(message, optional, tag = "3")]
    sample: Option<OldSample>,
}

#[derive(Clone, PartialEq, Message)]
struct OldSample {
    #[prost(uint32, tag = "1")]
    window_ms: u32,
    #[prost(message, optional, tag = "2")]
    cpu: Option<OldCpu>,
    #[prost(message, optional, tag = "4")]
    memory: Option<OldMemory>,
}

#[derive(Clone, PartialEq, Message)]
struct OldCpu {
    #[prost(uint32, tag = "1")]
    busy_bp: u32,
    #[prost(uint32, tag = "2")]
    user_bp: u32,
    #[prost(uint32, tag = "3")]
    system_bp: u32,
    #[prost(uint32, repeated, tag = "4")]
    core_busy_bp: Vec<u32>,
    #[prost(uint32, tag = "6")]
    online_cpus: u32,
}

#[derive(Clone, PartialEq, Message)]
struct OldMemory {
    #[prost(uint32, tag = "1")]
    formula_version: u32,
    #[prost(uint64, tag = "2")]
    total_bytes: u64,
    #[prost(uint64, tag = "3")]
    used_bytes: u64,
    #[prost(uint64, tag = "4")]
    available_bytes: u64,
}

#[test]
fn records_spooled_before_fields_were_added_read_back_whole_with_the_new_fields_defaulted() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config(tmp.path());
    // An older agent spools three records of its shape.
    let (mut old, _) = Spool::<Stored>::open(config.clone()).unwrap();
    let old_records: Vec<OldRecord> = (1..=3)
        .map(|seq| OldRecord {
            seq,
            time_unix_ms: 1_760_000_000_000 + seq * 1000,
            sample: Some(OldSample {
                window_ms: 1000,
                cpu: Some(OldCpu {
                    busy_bp: 100 * seq as u32,
                    user_bp: 60,
                    system_bp: 40,
                    core_busy_bp: vec![10, 20, 30, 40],
                    online_cpus: 4,
                }),
                memory: Some(OldMemory {
                    formula_version: 1,
                    total_bytes: 16 << 30,
                    used_bytes: (9 << 30) + seq,
                    available_bytes: 7 << 30,
                }),
            }),
        })
        .collect();
    for record in &old_records {
        let stored = Stored {
            schema: SCHEMA_TELEMETRY_RECORD,
            bytes: record.encode_to_vec(),
        };
        assert_eq!(
            old.append(record.time_unix_ms, stored).unwrap().seq,
            record.seq
        );
    }
    old.flush().unwrap();
    drop(old);

    // This agent reads them all, whole, and appends its own after them.
    let (mut spool, report) = Spool::<WireRecord>::open(config.clone()).unwrap();
    assert_eq!(report.corrupt_records, 0);
    let got = entries(read_all(&spool));
    assert_eq!(got.len(), 3);
    for (entry, old) in got.iter().zip(&old_records) {
        // Sent as they were stored: the older shape's bytes, unchanged.
        assert_eq!(
            entry.payload.bytes().as_ref(),
            old.encode_to_vec().as_slice()
        );
        let RecordBody::Sample(s) = &entry.payload.record().unwrap().body else {
            panic!("{entry:?}")
        };
        let (cpu, memory) = (
            old.sample.as_ref().unwrap().cpu.as_ref().unwrap(),
            old.sample.as_ref().unwrap().memory.as_ref().unwrap(),
        );
        assert_eq!((entry.seq, entry.time_unix_ms), (old.seq, old.time_unix_ms));
        assert_eq!(
            s.cpu,
            CpuSample {
                busy_bp: cpu.busy_bp,
                user_bp: cpu.user_bp,
                system_bp: cpu.system_bp,
                iowait_bp: 0,
                core_busy_bp: cpu.core_busy_bp.clone(),
                clusters: Vec::new(),
                online_cpus: cpu.online_cpus,
            }
        );
        assert_eq!(
            s.memory,
            MemorySample {
                formula_version: memory.formula_version,
                total_bytes: memory.total_bytes,
                used_bytes: memory.used_bytes,
                available_bytes: memory.available_bytes,
                ..MemorySample::default()
            }
        );
        assert_eq!(
            (s.load, s.swap, s.pressure),
            Default::default(),
            "fields the old record lacks read as their defaults"
        );
    }
    let next = WireRecord::next_in(
        &spool,
        1_760_000_010_000,
        RecordBody::Sample(Sample::default()),
    );
    let mine = spool.append(1_760_000_010_000, next).unwrap();
    spool.flush().unwrap();
    assert_eq!(mine.seq, 4);
    assert_eq!(entries(read_all(&spool)).len(), 4);
}

#[test]
fn the_stored_bytes_are_the_record_as_sent() {
    let record = Record {
        seq: 42,
        time_unix_ms: 1_760_000_042_000,
        body: RecordBody::Gap(Gap {
            reason: GapReason::DiskFull,
            missing_seqs: Some((40, 41)),
            start_time_unix_ms: 1_760_000_040_000,
            end_time_unix_ms: 1_760_000_042_000,
        }),
    };
    let wire = WireRecord::new(&record);
    assert_eq!(
        wire.bytes().as_ref(),
        to_proto(&record).encode_to_vec().as_slice()
    );
    let mut stored = Vec::new();
    wire.encode(record.seq, record.time_unix_ms, &mut stored)
        .unwrap();
    assert_eq!(stored, wire.bytes().as_ref());
    // Offered under another number or time, the spool is refused it.
    assert!(
        wire.encode(43, record.time_unix_ms, &mut Vec::new())
            .is_err()
    );
    assert!(
        wire.encode(42, record.time_unix_ms + 1, &mut Vec::new())
            .is_err()
    );
    let back = WireRecord::decode(SCHEMA_TELEMETRY_RECORD, 42, record.time_unix_ms, &stored);
    assert_eq!(back.as_ref(), Ok(&wire));
    assert_eq!(back.unwrap().record(), Ok(record.clone()));
    // Bytes filed under another number are not this record.
    assert!(WireRecord::decode(SCHEMA_TELEMETRY_RECORD, 43, record.time_unix_ms, &stored).is_err());
    assert!(WireRecord::decode(9, 42, record.time_unix_ms, &stored).is_err());
    // Bytes that are no whole record never reach a client.
    assert!(
        WireRecord::decode(
            SCHEMA_TELEMETRY_RECORD,
            42,
            record.time_unix_ms,
            &stored[..stored.len() - 1]
        )
        .is_err()
    );
}

/// A record of a newer agent, with a field this one does not know, is sent on whole.
#[test]
fn a_newer_agents_fields_are_kept_in_the_stored_bytes() {
    let record = Record {
        seq: 5,
        time_unix_ms: 1_760_000_005_000,
        body: RecordBody::Sample(Sample::default()),
    };
    let mut bytes = to_proto(&record).encode_to_vec();
    // Field 15, varint 7: unknown to this agent's `TelemetryRecord`.
    bytes.extend_from_slice(&[15 << 3, 7]);
    let wire = WireRecord::decode(SCHEMA_TELEMETRY_RECORD, 5, record.time_unix_ms, &bytes).unwrap();
    assert_eq!(wire.bytes().as_ref(), bytes.as_slice());
    assert_eq!(wire.record(), Ok(record));
}

#[test]
fn every_sample_field_survives_the_wire_form() {
    let sample = Sample {
        window_ms: 1000,
        cpu: CpuSample {
            busy_bp: 1,
            user_bp: 2,
            system_bp: 3,
            iowait_bp: 4,
            core_busy_bp: vec![5, 6],
            clusters: vec![
                ClusterBusy {
                    kind: CoreKind::Efficiency,
                    busy_bp: 7,
                    cpus: 2,
                },
                ClusterBusy {
                    kind: CoreKind::Performance,
                    busy_bp: 8,
                    cpus: 4,
                },
                ClusterBusy {
                    kind: CoreKind::Super,
                    busy_bp: 9,
                    cpus: 2,
                },
            ],
            online_cpus: 8,
        },
        load: LoadAverage {
            one: 1.5,
            five: 2.5,
            fifteen: 3.5,
        },
        memory: MemorySample {
            formula_version: 1,
            total_bytes: 10,
            used_bytes: 11,
            available_bytes: 12,
            free_bytes: 13,
            active_bytes: 14,
            inactive_bytes: 15,
            wired_bytes: 16,
            compressed_bytes: 17,
            purgeable_bytes: 18,
            speculative_bytes: 19,
            cached_bytes: 20,
            buffers_bytes: 21,
            shared_bytes: 22,
            slab_reclaimable_bytes: 23,
        },
        swap: SwapSample {
            total_bytes: 24,
            used_bytes: 25,
        },
        pressure: MemoryPressure {
            level: Some(PressureLevel::Warn),
            psi: Some(Psi {
                some_avg10: 0.5,
                full_avg10: 0.25,
            }),
        },
    };
    let record = Record {
        seq: 1,
        time_unix_ms: 2,
        body: RecordBody::Sample(sample),
    };
    assert_eq!(from_proto(&to_proto(&record)), Ok(record));
}

#[test]
fn every_core_kind_has_its_proto_twin_both_ways() {
    let mapped: Vec<pb::CoreKind> = CoreKind::ALL
        .iter()
        .map(|k| core_kind_to_proto(*k))
        .collect();
    for (kind, value) in CoreKind::ALL.iter().zip(&mapped) {
        assert_ne!(*value, pb::CoreKind::Unspecified, "{kind:?}");
        assert_eq!(core_kind_from_proto(*value as i32), Some(*kind));
    }
    let known: std::collections::BTreeSet<i32> = (1..256)
        .filter(|v| pb::CoreKind::try_from(*v).is_ok())
        .collect();
    let reached: std::collections::BTreeSet<i32> = mapped.iter().map(|v| *v as i32).collect();
    assert_eq!(
        reached, known,
        "each proto value but UNSPECIFIED has one core kind"
    );
    assert_eq!(core_kind_from_proto(0), None);
    assert_eq!(core_kind_from_proto(99), None);
    assert_eq!(
        (
            pb::CoreKind::Super as i32,
            pb::CoreKind::Super.as_str_name()
        ),
        (3, "CORE_KIND_SUPER")
    );
}
