//! The read path: records after a number, in batches, with every missing range reported, and
//! the spool's counters.

use super::*;

impl<T: Payload> Spool<T> {
    /// Up to `max_records` items covering the numbers above `after_seq`, in order: records, and
    /// [`Item::Missing`] where numbers are missing (see the module docs). Returns an empty batch
    /// once the reader has caught up with the durable records. `max_records` of 0 counts as 1.
    ///
    /// A segment that cannot be read is logged and its records reported as a `Corrupt` range,
    /// so a reader always makes progress; the error case is reserved for future use and today
    /// never happens.
    pub fn read_after(
        &self,
        after_seq: u64,
        max_records: usize,
    ) -> Result<Vec<Item<T>>, SpoolError> {
        let end = self.durable_seq;
        let Some(first_wanted) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        if first_wanted > end {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new(first_wanted, end, max_records.max(1));
        batch.unwritten = self.unwritten_ranges().collect();

        if batch.expected <= self.evicted_through {
            let last = self.evicted_through.min(end);
            let next_time = self
                .segments
                .iter()
                .find_map(|segment| segment.first)
                .map(|head| head.time_unix_ms);
            let end_time = next_time.or(self.evicted_last_time).unwrap_or(0);
            let start_time = self.evicted_last_time.unwrap_or(end_time);
            batch.push_missing(Loss::Evicted, last, start_time, end_time);
        }

        let start = self
            .segments
            .partition_point(|segment| segment.base_seq <= batch.expected)
            .saturating_sub(1);
        for segment in self.segments.iter().skip(start) {
            if batch.is_done() {
                break;
            }
            match segment.last {
                Some(last) if last.seq >= batch.expected => {}
                _ => continue,
            }
            if let Err(err) = read_segment(segment, &mut batch) {
                self.read_errors.fetch_add(1, Ordering::Relaxed);
                warn!(
                    segment = %segment.path.display(),
                    error = %err,
                    "Cannot read spool segment; its records are reported as a corrupt range."
                );
            }
        }
        if !batch.is_full() && batch.expected <= end {
            let time = batch.prev_time.unwrap_or(0);
            batch.push_missing(Loss::Corrupt, end, time, time);
        }
        Ok(batch.items)
    }

    /// Numbers between the evicted ones and the next one that no retained record holds and
    /// that were not skipped.
    pub(crate) fn missing_records(&self) -> u64 {
        let retained: u64 = self.segments.iter().map(|segment| segment.records).sum();
        let unwritten: u64 = self
            .unwritten_ranges()
            .map(|(first, last)| last - first.max(self.evicted_through + 1) + 1)
            .sum();
        self.next_seq
            .saturating_sub(self.evicted_through + 1)
            .saturating_sub(retained)
            .saturating_sub(unwritten)
    }

    /// Every range of unwritten numbers above the evicted ones, oldest first.
    pub(crate) fn unwritten_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.unwritten
            .iter()
            .copied()
            .chain(self.skipping)
            .filter(|&(_, last)| last > self.evicted_through)
    }

    /// The number the next [`Spool::append`] hands out, for a payload that holds its own
    /// number (the caller holds the spool, so nothing appends in between).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest number handed out, if any.
    pub fn last_seq(&self) -> Option<u64> {
        (self.next_seq > 1).then(|| self.next_seq - 1)
    }

    /// Records up to this number are synced and visible to readers.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// The oldest retained valid record's number.
    pub fn first_seq(&self) -> Option<u64> {
        self.segments
            .iter()
            .find_map(|segment| segment.first)
            .map(|head| head.seq)
    }

    /// The newest record's time, if the spool holds any record.
    pub fn last_time_unix_ms(&self) -> Option<u64> {
        self.last_time_unix_ms
    }

    /// The settings the spool was opened with.
    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// A snapshot of the spool's counters.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            first_seq: self.first_seq(),
            last_seq: self.last_seq(),
            durable_seq: self.durable_seq,
            last_time_unix_ms: self.last_time_unix_ms,
            records: self.segments.iter().map(|segment| segment.records).sum(),
            bytes: self.total_bytes,
            max_bytes: self.config.max_bytes,
            segments: self.segments.len(),
            corrupt_records: self.missing_records(),
            evicted_records: self.evicted_records,
            evicted_through_seq: self.evicted_through,
            unwritten_records: self.unwritten_records,
            not_durable: self.skipping.is_some(),
            sync_failures: self.sync_failures,
            syncs: self.syncs,
            read_errors: self.read_errors.load(Ordering::Relaxed),
        }
    }
}

/// The output of one `read_after` call under construction.
pub(crate) struct Batch<T> {
    pub(crate) items: Vec<Item<T>>,
    /// The next number the reader wants.
    pub(crate) expected: u64,
    /// The last visible number.
    pub(crate) end: u64,
    pub(crate) max: usize,
    /// The time of the record just before `expected`, once seen.
    pub(crate) prev_time: Option<u64>,
    /// Ranges of numbers the spool skipped: reported as `Unwritten`, not `Corrupt`.
    pub(crate) unwritten: Vec<(u64, u64)>,
}

impl<T> Batch<T> {
    pub(crate) fn new(expected: u64, end: u64, max: usize) -> Self {
        Self {
            items: Vec::with_capacity(max.min(1024)),
            expected,
            end,
            max,
            prev_time: None,
            unwritten: Vec::new(),
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.items.len() >= self.max
    }

    pub(crate) fn is_done(&self) -> bool {
        self.is_full() || self.expected > self.end
    }

    /// Missing ranges for numbers `expected..=last`: a `Corrupt` range is split where numbers
    /// in it were skipped (`Unwritten`). Stops early when the batch fills up.
    pub(crate) fn push_missing(&mut self, reason: Loss, last: u64, start_time: u64, end_time: u64) {
        if reason != Loss::Corrupt {
            return self.push_range(reason, last, start_time, end_time);
        }
        while self.expected <= last && !self.is_full() {
            let at = self.expected;
            let inside = self
                .unwritten
                .iter()
                .find(|&&(first, end)| first <= at && at <= end);
            if let Some(&(_, end)) = inside {
                self.push_range(Loss::Unwritten, end.min(last), start_time, end_time);
            } else {
                let next = self
                    .unwritten
                    .iter()
                    .map(|&(first, _)| first)
                    .filter(|&first| first > at && first <= last)
                    .min();
                self.push_range(
                    Loss::Corrupt,
                    next.map_or(last, |first| first - 1),
                    start_time,
                    end_time,
                );
            }
        }
    }

    pub(crate) fn push_range(&mut self, reason: Loss, last: u64, start_time: u64, end_time: u64) {
        self.items.push(Item::Missing(Missing {
            first_seq: self.expected,
            last_seq: last,
            reason,
            start_time_unix_ms: start_time,
            end_time_unix_ms: end_time,
        }));
        self.expected = last + 1;
    }

    pub(crate) fn push(&mut self, entry: Entry<T>) {
        self.expected = entry.seq + 1;
        self.prev_time = Some(entry.time_unix_ms);
        self.items.push(Item::Entry(entry));
    }
}

/// The record a frame that passed its CRC holds, if the spool accepts it: its fields decode
/// (for a segment of format `version`), its number is at least `floor` (the segment's floor,
/// then one past the record accepted before it), and its payload decodes. Opening and reading
/// apply this one rule from the same starting points, so a frame rejected on open can never
/// hide or reorder records on a later read.
pub(crate) fn accept_frame<T: Payload>(
    version: u32,
    payload: &[u8],
    floor: u64,
) -> Option<Entry<T>> {
    let fields = format::decode_fields(version, payload)?;
    let Head { seq, time_unix_ms } = fields.head;
    if seq < floor {
        return None;
    }
    let payload = T::decode(fields.schema, seq, time_unix_ms, fields.body).ok()?;
    Some(Entry {
        seq,
        time_unix_ms,
        payload,
    })
}

/// Reads one segment's records into `batch`, from the index entry before `batch.expected`.
pub(crate) fn read_segment<T: Payload>(segment: &Segment, batch: &mut Batch<T>) -> io::Result<()> {
    let (offset, mut floor) = segment.start_for(batch.expected);
    let mut file = File::open(&segment.path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut reader = FrameReader::new(file, offset);
    while !batch.is_done() {
        let Some(event) = reader.next_event()? else {
            break;
        };
        let Event::Frame { payload, .. } = event else {
            continue;
        };
        let Some(record) = accept_frame::<T>(segment.version, payload, floor) else {
            continue;
        };
        floor = record.seq + 1;
        if record.seq < batch.expected {
            batch.prev_time = Some(record.time_unix_ms);
            continue;
        }
        if record.seq > batch.end {
            break;
        }
        if record.seq > batch.expected {
            let start_time = batch.prev_time.unwrap_or(record.time_unix_ms);
            batch.push_missing(
                Loss::Corrupt,
                record.seq - 1,
                start_time,
                record.time_unix_ms,
            );
            if batch.is_full() {
                break;
            }
        }
        batch.push(record);
    }
    Ok(())
}
