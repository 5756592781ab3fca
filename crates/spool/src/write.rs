//! The write path: append, skip, fsync pacing, segment roll, eviction by the size cap and on a
//! full disk, and the markers of unwritten numbers.

use super::*;

impl<T: Payload> Spool<T> {
    /// Replaces the monotonic clock that paces fsyncs ([`Instant::now`] by default), so that a
    /// test can control when `fsync_interval` has passed.
    pub fn set_clock(&mut self, now: impl Fn() -> Instant + Send + 'static) {
        self.clock = Clock(Box::new(now));
    }

    /// Lets an append sync when the last fsync is `fsync_interval - slack` old rather than
    /// `fsync_interval` (default: no slack).
    ///
    /// For a writer that appends every `period` on a schedule that jitters: with a slack of
    /// `period / 2`, the append nearest to the moment a sync is due makes it, where without slack
    /// an append that comes a millisecond early leaves its records unsynced for a whole period.
    /// Syncs then come at most once per `fsync_interval - slack`.
    pub fn set_sync_slack(&mut self, slack: Duration) {
        self.sync_slack = slack;
    }

    /// Appends a record with the next sequence number and returns it.
    ///
    /// The record is written at once and synced when the last fsync is `fsync_interval` old
    /// (less the slack of [`Spool::set_sync_slack`]);
    /// it becomes visible to [`Spool::read_after`] once synced. On error nothing is written and
    /// the number is not consumed. A failed fsync is not an error here: it is logged, counted,
    /// and retried on the next append or [`Spool::flush`].
    pub fn append(&mut self, time_unix_ms: u64, payload: T) -> Result<Entry<T>, SpoolError> {
        let record = Entry {
            seq: self.next_seq,
            time_unix_ms,
            payload,
        };
        self.store(&record)?;
        Ok(record)
    }

    /// Like [`Spool::append`], but a record the disk refuses (an I/O error creating, writing or
    /// marking, see [`SpoolError::is_storage`]) gets its number all the same, as
    /// [`Spool::skip`] hands it out, so the caller can still publish it; the error is returned
    /// beside the record. Other errors (encoding, size) refuse the record as `append` does.
    pub fn append_or_skip(
        &mut self,
        time_unix_ms: u64,
        payload: T,
    ) -> Result<Appended<T>, SpoolError> {
        let record = Entry {
            seq: self.next_seq,
            time_unix_ms,
            payload,
        };
        match self.store(&record) {
            Ok(()) => Ok(Appended {
                entry: record,
                skipped: None,
            }),
            Err(err) if err.is_storage() => Ok(Appended {
                entry: self.skip(record.time_unix_ms, record.payload),
                skipped: Some(err),
            }),
            Err(err) => Err(err),
        }
    }

    /// Writes `record` (numbered `next_seq`), evicting on a full disk, and syncs when due.
    pub(crate) fn store(&mut self, record: &Entry<T>) -> Result<(), SpoolError> {
        let mut frame = std::mem::take(&mut self.frame);
        let written = loop {
            let result = self
                .ensure_dir()
                .and_then(|()| self.mark_unwritten())
                .and_then(|()| self.write_frame(record, &mut frame));
            match result {
                // Give up the oldest records rather than refuse this one (never the segment
                // being written): an `Evicted` range is better than silence.
                Err(err)
                    if err.is_out_of_space()
                        && self.segments.len() > 1
                        && self.evict_oldest("to free disk space") => {}
                result => break result,
            }
        };
        self.frame = frame;
        written?;
        if self.sync_due() {
            self.sync_logged();
        }
        Ok(())
    }

    /// Syncs every written record now, as an append does when a sync is due: for a writer that
    /// publishes its records as soon as they are durable and cannot wait for the interval.
    /// Returns whether every written record is durable. A failed fsync is not an error here:
    /// it is logged (once per run of failures), counted, and retried on the next append or
    /// sync.
    pub fn sync_now(&mut self) -> bool {
        self.sync_logged();
        self.durable_seq + 1 >= self.next_seq
    }

    /// Syncs, logging a failure once per run of failures and the recovery after one.
    pub(crate) fn sync_logged(&mut self) {
        let seq = self.next_seq.saturating_sub(1);
        match self.sync() {
            Ok(()) if self.sync_failing => {
                self.sync_failing = false;
                info!(seq, "Spool fsync works again.");
            }
            Ok(()) => {}
            Err(err) if !self.sync_failing => {
                self.sync_failing = true;
                warn!(error = %error_chain(&err), seq, "Spool fsync failed; records stay unpublished until a retry succeeds.");
            }
            Err(_) => {}
        }
    }

    pub(crate) fn write_frame(
        &mut self,
        record: &Entry<T>,
        frame: &mut Vec<u8>,
    ) -> Result<(), SpoolError> {
        let seq = record.seq;
        let time = record.time_unix_ms;
        let payload = &record.payload;
        let payload_len = format::encode_frame(seq, time, payload.schema(), frame, |out| {
            payload.encode(seq, time, out)
        })
        .map_err(|source| SpoolError::Encode { seq, source })?;
        if payload_len > format::MAX_PAYLOAD_LEN as usize {
            return Err(SpoolError::RecordTooLarge {
                seq,
                bytes: payload_len,
                max: format::MAX_PAYLOAD_LEN,
            });
        }
        let frame_len = frame.len() as u64;
        let fits = match (&self.active, self.segments.back()) {
            (Some(active), Some(segment)) if !active.broken => {
                segment.records == 0 || segment.bytes + frame_len <= self.config.segment_bytes
            }
            _ => false,
        };
        if !fits {
            self.roll()?;
        }
        let (Some(active), Some(segment)) = (self.active.as_mut(), self.segments.back_mut()) else {
            // roll() either fails or leaves an active segment at the back.
            return Err(SpoolError::CreateSegment {
                path: self.config.dir.clone(),
                source: io::Error::other("no active segment after roll"),
            });
        };
        let offset = segment.bytes;
        if let Err(source) = active.file.write_all(frame) {
            // Cut a partial frame so the segment stays a clean run of frames; if even that
            // fails, move on to a new segment (the partial frame is skipped as corrupt on read;
            // the records before it are still synced when the segment is closed).
            if active.file.set_len(offset).is_err() {
                active.broken = true;
            }
            return Err(SpoolError::Write {
                seq,
                path: segment.path.clone(),
                source,
            });
        }
        segment.push_record(
            Head {
                seq,
                time_unix_ms: record.time_unix_ms,
            },
            offset,
        );
        segment.bytes += frame_len;
        self.total_bytes += frame_len;
        self.next_seq += 1;
        self.last_time_unix_ms = Some(record.time_unix_ms);
        Ok(())
    }

    /// Closes the current segment (synced) and starts a new one named by the next number,
    /// evicting the oldest segments first so that the new one fits under `max_bytes`.
    pub(crate) fn roll(&mut self) -> Result<(), SpoolError> {
        // An older segment must never lose records that a newer one kept: sync before moving on.
        if self.active.is_some() {
            self.sync()?;
        }
        self.active = None;
        while self.total_bytes + self.config.segment_bytes > self.config.max_bytes
            && self.segments.len() > 1
        {
            if !self.evict_oldest("to stay under max_bytes") {
                break;
            }
        }
        let base_seq = self.next_seq;
        // A header-only segment left by a crash right after a roll may carry this very name.
        if self
            .segments
            .back()
            .is_some_and(|segment| segment.base_seq == base_seq && segment.records == 0)
            && let Some(stale) = self.segments.pop_back()
        {
            self.total_bytes -= stale.bytes;
            if let Err(err) = fs::remove_file(&stale.path) {
                warn!(segment = %stale.path.display(), error = %err, "Cannot remove an empty spool segment.");
            }
        }
        let path = self.config.dir.join(segment_file_name(base_seq));
        let create = || -> io::Result<File> {
            let mut file = OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(&format::segment_header())?;
            Ok(file)
        };
        let file = match create() {
            Ok(file) => file,
            Err(source) => {
                if source.kind() != io::ErrorKind::AlreadyExists {
                    let _ = fs::remove_file(&path);
                }
                return Err(SpoolError::CreateSegment { path, source });
            }
        };
        debug!(segment = %path.display(), "Started spool segment.");
        self.segments
            .push_back(Segment::new(path, base_seq, format::SEGMENT_HEADER_LEN));
        self.total_bytes += format::SEGMENT_HEADER_LEN;
        self.active = Some(Active {
            file,
            dir_unsynced: true,
            broken: false,
        });
        Ok(())
    }

    /// Deletes the oldest segment; returns false (and logs) if it cannot be deleted.
    pub(crate) fn evict_oldest(&mut self, why: &str) -> bool {
        let Some(oldest) = self.segments.front() else {
            return false;
        };
        match fs::remove_file(&oldest.path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                warn!(segment = %oldest.path.display(), error = %err, "Cannot evict the oldest spool segment; the spool may exceed max_bytes.");
                return false;
            }
        }
        let Some(oldest) = self.segments.pop_front() else {
            return false;
        };
        self.total_bytes -= oldest.bytes;
        self.evicted_records += oldest.records;
        let below_next = self
            .segments
            .front()
            .map_or(self.next_seq - 1, |next| next.base_seq.saturating_sub(1));
        let last = oldest.last.map_or(0, |head| head.seq);
        self.evicted_through = self.evicted_through.max(below_next).max(last);
        if let Some(head) = oldest.last {
            self.evicted_last_time = Some(head.time_unix_ms);
        }
        info!(
            segment = %oldest.path.display(),
            records = oldest.records,
            evicted_through_seq = self.evicted_through,
            "Evicted the oldest spool segment {why}."
        );
        self.drop_evicted_markers();
        true
    }

    /// Forgets (and deletes the markers of) unwritten ranges wholly evicted.
    pub(crate) fn drop_evicted_markers(&mut self) {
        let through = self.evicted_through;
        let dir = self.config.dir.clone();
        self.unwritten.retain(|&(first, last)| {
            if last > through {
                return true;
            }
            let path = dir.join(marker_file_name(first, last));
            if let Err(err) = fs::remove_file(&path)
                && err.kind() != io::ErrorKind::NotFound
            {
                warn!(file = %path.display(), error = %err, "Cannot remove an evicted unwritten-range marker.");
            }
            false
        });
    }

    /// Hands out the next number without storing anything, for a record the caller could not
    /// [`Spool::append`] (typically because the disk is full) and publishes anyway.
    ///
    /// The number counts as visible at once if every record before it is durable (the spool
    /// tries a sync first), else with the next successful sync. Readers get it inside an
    /// [`Item::Missing`] range with [`Loss::Unwritten`]. The next successful append first
    /// records the range in a marker file (an empty file named
    /// `<first>-<last>.unwritten`), so it is still reported as `Unwritten`, and its numbers
    /// are not handed out again, after a restart. A crash before that may hand its numbers out
    /// again; a reader whose cursor is past them then gets a cursor-ahead error or, once the
    /// numbers are reached again, new records under numbers it saw live.
    pub fn skip(&mut self, time_unix_ms: u64, payload: T) -> Entry<T> {
        if self.durable_seq + 1 < self.next_seq {
            match self.sync() {
                Ok(()) => self.sync_failing = false,
                Err(err) if !self.sync_failing => {
                    self.sync_failing = true;
                    warn!(error = %error_chain(&err), "Spool fsync failed; records stay unpublished until a retry succeeds.");
                }
                Err(_) => {}
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unwritten_records += 1;
        self.skipping = match (self.skipping, self.unwritten.last()) {
            (Some((first, _)), _) => Some((first, seq)),
            // The marker was made but the record after it failed: continue that run.
            (None, Some(&(first, last))) if last + 1 == seq => Some((first, seq)),
            (None, _) => Some((seq, seq)),
        };
        self.last_time_unix_ms = Some(time_unix_ms);
        if self.durable_seq + 1 == seq {
            self.durable_seq = seq;
        }
        Entry {
            seq,
            time_unix_ms,
            payload,
        }
    }

    /// Records the range being skipped in a marker file, before the record after it is
    /// written.
    pub(crate) fn mark_unwritten(&mut self) -> Result<(), SpoolError> {
        let Some((first_seq, last_seq)) = self.skipping else {
            return Ok(());
        };
        let path = self.config.dir.join(marker_file_name(first_seq, last_seq));
        let made = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|_| File::open(&self.config.dir))
            .and_then(|dir| nix::unistd::fsync(&dir).map_err(io::Error::from));
        if let Err(source) = made {
            let _ = fs::remove_file(&path);
            return Err(SpoolError::MarkUnwritten {
                first_seq,
                last_seq,
                path,
                source,
            });
        }
        // A shorter marker of the same run, made before a write that then failed.
        if let Some(&(first, last)) = self.unwritten.last()
            && first == first_seq
        {
            let _ = fs::remove_file(self.config.dir.join(marker_file_name(first, last)));
            self.unwritten.pop();
        }
        self.unwritten.push((first_seq, last_seq));
        self.skipping = None;
        Ok(())
    }

    pub(crate) fn sync_due(&self) -> bool {
        self.durable_seq + 1 < self.next_seq
            && self.last_sync.is_none_or(|at| {
                (self.clock.0)().saturating_duration_since(at) + self.sync_slack
                    >= self.config.fsync_interval
            })
    }

    /// Syncs the segment being written (and its directory entry when new).
    pub(crate) fn sync(&mut self) -> Result<(), SpoolError> {
        if self.durable_seq + 1 >= self.next_seq {
            return Ok(());
        }
        self.last_sync = Some((self.clock.0)());
        if let (Some(active), Some(segment)) = (self.active.as_mut(), self.segments.back()) {
            if let Err(source) = active.file.sync_data() {
                self.sync_failures += 1;
                return Err(SpoolError::Sync {
                    path: segment.path.clone(),
                    source,
                });
            }
            if active.dir_unsynced {
                let synced = File::open(&self.config.dir)
                    .and_then(|dir| nix::unistd::fsync(&dir).map_err(io::Error::from));
                if let Err(source) = synced {
                    self.sync_failures += 1;
                    return Err(SpoolError::Sync {
                        path: self.config.dir.clone(),
                        source,
                    });
                }
                active.dir_unsynced = false;
            }
            self.syncs += 1;
        }
        self.durable_seq = self.next_seq - 1;
        Ok(())
    }

    /// Syncs every written record now, making it visible to readers.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        self.sync()
    }
}
