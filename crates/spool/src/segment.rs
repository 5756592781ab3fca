//! What the spool keeps in memory per segment file (counts, first and last record heads, a
//! sparse index), the scan result of one segment, and the names of segment and marker files.

use super::*;

/// One index entry: where a record's frame starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexEntry {
    pub(crate) seq: u64,
    pub(crate) offset: u64,
}

/// What the spool remembers about one segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) path: PathBuf,
    /// The number in the file name.
    pub(crate) base_seq: u64,
    pub(crate) bytes: u64,
    pub(crate) records: u64,
    pub(crate) first: Option<Head>,
    pub(crate) last: Option<Head>,
    /// The segment's format (see `format.rs`); records are appended only to the current one.
    pub(crate) version: u32,
    /// The lowest number a record of this segment may carry: its name, or one past the last
    /// record of the segments before it when that is higher. A frame below it, or not above the
    /// record before it, is out of place and read as damage, on open and on every read alike.
    pub(crate) floor: u64,
    /// An entry for record 0, INDEX_STRIDE, 2 * INDEX_STRIDE, ... of the segment.
    pub(crate) index: Vec<IndexEntry>,
    /// The header is valid and the whole file was read on open.
    pub(crate) readable: bool,
}

impl Segment {
    pub(crate) fn new(path: PathBuf, base_seq: u64, bytes: u64) -> Self {
        Self {
            path,
            base_seq,
            bytes,
            records: 0,
            first: None,
            last: None,
            version: format::FORMAT_VERSION,
            floor: base_seq,
            index: Vec::new(),
            readable: true,
        }
    }

    pub(crate) fn push_record(&mut self, head: Head, offset: u64) {
        if self.records.is_multiple_of(INDEX_STRIDE) {
            self.index.push(IndexEntry {
                seq: head.seq,
                offset,
            });
        }
        self.records += 1;
        self.first.get_or_insert(head);
        self.last = Some(head);
    }

    /// Where to start reading for the first record numbered `seq` or more, and the lowest
    /// number a record there may carry (see [`accept_frame`]).
    pub(crate) fn start_for(&self, seq: u64) -> (u64, u64) {
        let after = self.index.partition_point(|entry| entry.seq <= seq);
        match after.checked_sub(1) {
            Some(i) => (self.index[i].offset, self.index[i].seq),
            None => (format::SEGMENT_HEADER_LEN, self.floor),
        }
    }
}

/// The result of scanning one segment on open.
pub(crate) struct Scan {
    pub(crate) segment: Segment,
    pub(crate) corrupt_regions: u64,
    /// A damaged region that runs to the end of the file.
    pub(crate) tail: Option<Tail>,
    /// Bytes that are neither the header nor a valid frame.
    pub(crate) has_garbage: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Tail {
    /// Offset just past the last valid frame (or the header).
    pub(crate) valid_end: u64,
    pub(crate) bytes: u64,
    /// Whole frames with bad CRCs in the tail: numbers that were handed out.
    pub(crate) whole_frames: u64,
}

/// The segment being appended to.
#[derive(Debug)]
pub(crate) struct Active {
    pub(crate) file: File,
    /// The new segment's directory entry has not been synced yet.
    pub(crate) dir_unsynced: bool,
    /// A failed write left bytes that could not be cut: append to a new segment.
    pub(crate) broken: bool,
}

/// The file name of the segment whose first record is `base_seq`.
pub(crate) fn segment_file_name(base_seq: u64) -> String {
    format!("{base_seq:020}.seg")
}

/// The first number of a segment file name, or `None` for other files.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The file name of the marker for the unwritten numbers `first..=last`.
pub(crate) fn marker_file_name(first: u64, last: u64) -> String {
    format!("{first:020}-{last:020}.unwritten")
}

/// The range of an unwritten-range marker file name, or `None` for other files.
pub(crate) fn parse_marker_name(name: &str) -> Option<(u64, u64)> {
    let (first, last) = name.strip_suffix(".unwritten")?.split_once('-')?;
    let number = |digits: &str| {
        (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse().ok())
            .flatten()
    };
    let (first, last) = (number(first)?, number(last)?);
    (first >= 1 && first <= last).then_some((first, last))
}

/// Sorted, overlapping or adjacent ranges merged.
pub(crate) fn merge_ranges(ranges: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = ranges.collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match merged.last_mut() {
            Some(prev) if first <= prev.1 + 1 => prev.1 = prev.1.max(last),
            _ => merged.push((first, last)),
        }
    }
    merged
}
