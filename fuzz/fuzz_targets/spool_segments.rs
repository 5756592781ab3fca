//! Spool recovery on damaged segment files: the input becomes the segment files of a spool
//! directory (on tmpfs when `/dev/shm` exists), and the agent's `Spool<WireRecord>` opens it
//! the way it does on start (`Spool::open`: scan, resynchronise, truncate a torn tail, number
//! past damaged frames, decode each payload: protobuf `TelemetryRecord`s in format 2 segments,
//! postcard bodies through the kept decoder in format 1), reads everything back, appends one
//! record, and opens it again.
//!
//! Input forms: the bytes of `00000000000000000001.seg`; a segment header of the current
//! format (2) is put in front when the input does not start with one (so frames alone reach
//! the frame reader; the seeds of format 1 segments carry their own header). A second
//! `JEXSPOOL` magic in the input starts a second segment, named `1 + (offset % 64)`, so records
//! below a segment's name and damage in a segment that is not the newest are reached too.
//!
//! Checked besides "no panic": open succeeds; `read_after` covers every number from 1 to the
//! last one handed out, each exactly once, in order, as a record or a missing range; the
//! appended record gets the next number; after reopening, the same items are read back (a
//! missing range at the end now ends at the appended record's time, and starts there when no
//! record before it was read), then the appended record.

#![no_main]

use jex_agent::telemetry::wire::WireRecord;
use jex_spool::{Item, Spool, SpoolConfig};
use jex_telemetry::{Gap, GapReason, RecordBody};
use libfuzzer_sys::fuzz_target;

/// The segment header `jex-spool` writes: magic, format version 2, reserved 0.
const HEADER: [u8; 16] = *b"JEXSPOOL\x02\x00\x00\x00\x00\x00\x00\x00";
const MAGIC: &[u8] = b"JEXSPOOL";

fn segment_name(base_seq: u64) -> String {
    format!("{base_seq:020}.seg")
}

/// Every item after 0, checking that they cover `1..=last` in order.
fn read_all(spool: &Spool<WireRecord>, last: u64) -> Vec<Item<WireRecord>> {
    let mut items = Vec::new();
    let mut cursor = 0;
    loop {
        let batch = spool
            .read_after(cursor, 16)
            .expect("read_after never fails");
        if batch.is_empty() {
            break;
        }
        for item in batch {
            assert_eq!(item.first_seq(), cursor + 1, "every number once, in order");
            assert!(item.last_seq() >= item.first_seq());
            cursor = item.last_seq();
            items.push(item);
        }
    }
    assert_eq!(cursor, last, "read up to the last number handed out");
    items
}

fn config(dir: &std::path::Path) -> SpoolConfig {
    SpoolConfig {
        fsync_interval: std::time::Duration::ZERO,
        ..SpoolConfig::new(dir.join("spool"))
    }
}

fuzz_target!(|data: &[u8]| {
    let tmp = match std::fs::metadata("/dev/shm") {
        Ok(meta) if meta.is_dir() => tempfile::tempdir_in("/dev/shm"),
        _ => tempfile::tempdir(),
    }
    .expect("a temporary directory");
    let dir = tmp.path().join("spool");
    std::fs::create_dir(&dir).expect("the spool directory");

    let mut first = Vec::new();
    if !data.starts_with(MAGIC) {
        first.extend_from_slice(&HEADER);
    }
    let split = data
        .windows(MAGIC.len())
        .skip(1)
        .position(|w| w == MAGIC)
        .map(|p| p + 1);
    let (one, two) = match split {
        Some(at) => (&data[..at], Some(&data[at..])),
        None => (data, None),
    };
    first.extend_from_slice(one);
    std::fs::write(dir.join(segment_name(1)), &first).expect("writing a segment");
    if let (Some(two), Some(at)) = (two, split) {
        let base = 1 + (at as u64 % 64);
        std::fs::write(dir.join(segment_name(base)), two).expect("writing a segment");
    }

    let (mut spool, report) =
        Spool::<WireRecord>::open(config(tmp.path())).expect("open recovers from any damage");
    let last = spool.last_seq().unwrap_or(0);
    assert_eq!(report.last_seq, spool.last_seq());
    let mut before = read_all(&spool, last);

    let time = spool.last_time_unix_ms().unwrap_or(0).saturating_add(1000);
    let body = WireRecord::next_in(
        &spool,
        time,
        RecordBody::Gap(Gap {
            reason: GapReason::AgentDown,
            missing_seqs: None,
            start_time_unix_ms: 1,
            end_time_unix_ms: 2,
        }),
    );
    let entry = spool
        .append(time, body.clone())
        .expect("appending to tmpfs");
    assert_eq!(entry.seq, last + 1, "the next number");
    spool.flush().expect("flushing");
    drop(spool);

    let (spool, _) = Spool::<WireRecord>::open(config(tmp.path())).expect("reopening");
    assert_eq!(spool.last_seq(), Some(entry.seq));
    let mut after = read_all(&spool, entry.seq);
    let appended = after.pop();
    // A missing range at the end had the time of the record before it (0 when none was read)
    // as both times; now the appended record follows it: its end time is the appended record's,
    // and so is its start time when no record before it was read.
    if let (Some(Item::Missing(was)), Some(Item::Missing(now))) = (before.last(), after.last()) {
        assert_eq!(
            (now.first_seq, now.last_seq, now.reason),
            (was.first_seq, was.last_seq, was.reason)
        );
        assert_eq!(was.start_time_unix_ms, was.end_time_unix_ms, "{was:?}");
        assert_eq!(now.end_time_unix_ms, time, "{now:?}");
        assert!(
            now.start_time_unix_ms == was.start_time_unix_ms
                || (was.start_time_unix_ms == 0 && now.start_time_unix_ms == time),
            "{was:?} then {now:?}"
        );
        before.pop();
        after.pop();
    }
    assert_eq!(after, before, "the same items after a reopen");
    match appended {
        Some(Item::Entry(got)) => {
            assert_eq!(
                (got.seq, got.time_unix_ms, got.payload),
                (entry.seq, time, body)
            );
        }
        other => panic!("the appended record reads back, got {other:?}"),
    }
});
