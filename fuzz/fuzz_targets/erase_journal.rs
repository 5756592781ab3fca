//! The erase journal as the engine reads it on start: the input is a journal file (on tmpfs
//! when `/dev/shm` exists) read by `Journal::<Record>::read` (observers), opened by
//! `Journal::<Record>::open` (the engine: a torn tail is truncated), and its records replayed
//! through the state machine (`jex_erase::state::replay`). Input without the journal magic gets
//! it put in front, so frames alone reach the decoder.
//!
//! Checked besides "no panic": `read` and `open` agree on the records, and refuse the same
//! files; every replayed operation comes from a `requested` record and a refused record is
//! within the journal; after `open`, an appended record reads back after the others.

#![no_main]

use jex_erase::journal::{Journal, MAGIC};
use jex_erase::record::Record;
use jex_erase::state::replay;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tmp = match std::fs::metadata("/dev/shm") {
        Ok(meta) if meta.is_dir() => tempfile::tempdir_in("/dev/shm"),
        _ => tempfile::tempdir(),
    }
    .expect("a temporary directory");
    let path = tmp.path().join("journal");
    let mut bytes = Vec::with_capacity(MAGIC.len() + data.len());
    if !data.starts_with(&MAGIC[..data.len().min(MAGIC.len())]) {
        bytes.extend_from_slice(MAGIC);
    }
    bytes.extend_from_slice(data);
    std::fs::write(&path, &bytes).expect("writing the journal");

    let read = Journal::<Record>::read(&path);
    let opened = Journal::<Record>::open(&path);
    let (mut journal, records) = match (read, opened) {
        (Ok(read), Ok((journal, records))) => {
            assert_eq!(read.records, records, "read and open agree");
            assert!(read.valid_len + read.torn_bytes == bytes.len() as u64);
            (journal, records)
        }
        (Err(_), Err(_)) => return,
        (read, opened) => panic!(
            "read and open disagree: {:?} / {:?}",
            read.map(|r| r.records.len()),
            opened.map(|(_, records)| records.len())
        ),
    };

    let replayed = replay(&records);
    for op in &replayed.operations {
        assert!(records.iter().any(
            |r| matches!(r, Record::Requested(requested) if requested.operation_id == op.id())
        ));
    }
    for refused in &replayed.refused {
        assert!(refused.index < records.len());
    }

    let Some(last) = records.last().cloned() else {
        return;
    };
    journal.append(&last).expect("appending to tmpfs");
    drop(journal);
    let (_, again) = Journal::<Record>::open(&path).expect("reopening");
    assert_eq!(again.len(), records.len() + 1);
    assert_eq!(again[..records.len()], records[..]);
    assert_eq!(again.last(), Some(&last));
});
