//! Opening the spool: listing its directory, scanning every segment once, recovering from a
//! torn tail or damaged frames, and the detached start on a full disk.

use super::*;

impl<T: Payload> Spool<T> {
    /// Opens (creating if needed) the spool in `config.dir`, recovering from crashes and
    /// corruption as the module docs describe.
    ///
    /// Fails only on invalid settings, or when the directory cannot be created or listed.
    pub fn open(config: SpoolConfig) -> Result<(Spool<T>, OpenReport), SpoolError> {
        config.validate()?;
        create_dir(&config.dir)?;
        let (listing, markers, ignored_files) = list_segments(&config.dir)?;
        let mut report = OpenReport {
            ignored_files,
            ..OpenReport::default()
        };

        let mut segments = VecDeque::with_capacity(listing.len());
        let mut last_valid: Option<Head> = None;
        let mut next_seq = 1u64;
        let mut last_tail = None;
        let count = listing.len();
        for (i, (base_seq, path)) in listing.into_iter().enumerate() {
            let scan = scan_segment::<T>(path, base_seq, last_valid.map(|head| head.seq));
            let segment = scan.segment;
            report.corrupt_regions += scan.corrupt_regions;
            if !segment.readable {
                report.unreadable_segments += 1;
            }
            if let Some(last) = segment.last {
                last_valid = Some(last);
                next_seq = next_seq.max(last.seq + 1);
            }
            // A segment is created just before its first record is written: its name is a
            // number that may have been handed out if anything past the header was written.
            let floor = if segment.records == 0 && scan.has_garbage {
                base_seq + 1
            } else {
                base_seq
            };
            next_seq = next_seq.max(floor);
            if i + 1 == count {
                last_tail = scan.tail;
            } else if scan.tail.is_some() {
                report.corrupt_regions += 1;
            }
            segments.push_back(segment);
        }

        let mut spool = Spool {
            segments,
            next_seq,
            last_time_unix_ms: last_valid.map(|head| head.time_unix_ms),
            ..Spool::empty(config)
        };

        if let Some(tail) = &last_tail {
            report.torn_tail_bytes = tail.bytes;
            // Numbers of whole frames in the tail were handed out: never reuse them.
            if let Some(segment) = spool.segments.back() {
                let first_in_tail = segment.last.map_or(segment.base_seq, |head| head.seq + 1);
                spool.next_seq = spool.next_seq.max(first_in_tail + tail.whole_frames);
            }
        }
        // A marker is written before the record after its range: its numbers were handed out.
        if let Some(last) = markers.iter().map(|(_, last, _)| *last).max() {
            spool.next_seq = spool.next_seq.max(last + 1);
        }
        spool.reopen_active(last_tail.map(|tail| tail.valid_end));

        spool.total_bytes = spool.segments.iter().map(|segment| segment.bytes).sum();
        spool.durable_seq = spool.next_seq - 1;
        spool.evicted_through = spool.segments.front().map_or(spool.durable_seq, |segment| {
            segment.base_seq.saturating_sub(1)
        });
        spool.unwritten = merge_ranges(markers.iter().map(|(first, last, _)| (*first, *last)));
        spool.marker_paths_at_open(markers);
        // Unwritten numbers just below the oldest segment are not evicted ones.
        while let Some(&(first, _)) = spool
            .unwritten
            .iter()
            .find(|&&(_, last)| last == spool.evicted_through)
        {
            spool.evicted_through = first - 1;
        }
        report.corrupt_records = spool.missing_records();

        while spool.total_bytes > spool.config.max_bytes && spool.segments.len() > 1 {
            if !spool.evict_oldest("to stay under max_bytes") {
                break;
            }
        }
        spool.drop_evicted_markers();

        report.segments = spool.segments.len();
        report.records = spool.segments.iter().map(|segment| segment.records).sum();
        report.first_seq = spool.first_seq();
        report.last_seq = spool.last_seq();
        report.last_time_unix_ms = spool.last_time_unix_ms;
        report.evicted_records = spool.evicted_records;

        let dir = spool.config.dir.display();
        if report.corrupt_records > 0
            || report.corrupt_regions > 0
            || report.torn_tail_bytes > 0
            || report.unreadable_segments > 0
        {
            warn!(
                dir = %dir,
                corrupt_records = report.corrupt_records,
                corrupt_regions = report.corrupt_regions,
                torn_tail_bytes = report.torn_tail_bytes,
                unreadable_segments = report.unreadable_segments,
                "Spool opened with damage; lost records will be reported as missing ranges."
            );
        }
        info!(
            dir = %dir,
            segments = report.segments,
            records = report.records,
            first_seq = ?report.first_seq,
            last_seq = ?report.last_seq,
            bytes = spool.total_bytes,
            "Spool opened."
        );
        Ok((spool, report))
    }

    /// Like [`Spool::open`], but when the directory cannot be created for lack of space (a
    /// first start on a full disk), returns an empty spool and the error instead of failing:
    /// every append then first tries to create the directory and fails with a storage error
    /// ([`Spool::append_or_skip`] skips it) until there is room again.
    pub fn open_or_detached(
        config: SpoolConfig,
    ) -> Result<(Spool<T>, OpenReport, Option<SpoolError>), SpoolError> {
        match Spool::open(config.clone()) {
            Ok((spool, report)) => Ok((spool, report, None)),
            Err(err @ SpoolError::CreateDir { .. }) if err.is_out_of_space() => {
                warn!(dir = %config.dir.display(), error = %error_chain(&err), "Cannot create the spool directory; telemetry is not durable until there is room.");
                let mut spool = Spool::empty(config);
                spool.dir_missing = true;
                Ok((spool, OpenReport::default(), Some(err)))
            }
            Err(err) => Err(err),
        }
    }

    pub(crate) fn empty(config: SpoolConfig) -> Spool<T> {
        Spool {
            config,
            segments: VecDeque::new(),
            active: None,
            next_seq: 1,
            durable_seq: 0,
            last_time_unix_ms: None,
            last_sync: None,
            total_bytes: 0,
            evicted_through: 0,
            evicted_last_time: None,
            evicted_records: 0,
            sync_failures: 0,
            sync_failing: false,
            syncs: 0,
            sync_slack: Duration::ZERO,
            unwritten: Vec::new(),
            skipping: None,
            unwritten_records: 0,
            dir_missing: false,
            read_errors: AtomicU64::new(0),
            frame: Vec::new(),
            clock: Clock(Box::new(Instant::now)),
            payload: PhantomData,
        }
    }

    /// Creates the directory if a full disk kept [`Spool::open_or_detached`] from it.
    pub(crate) fn ensure_dir(&mut self) -> Result<(), SpoolError> {
        if self.dir_missing {
            create_dir(&self.config.dir)?;
            info!(dir = %self.config.dir.display(), "Created the spool directory.");
            self.dir_missing = false;
        }
        Ok(())
    }

    /// Truncates the newest segment's damaged tail and opens it for appending, when it is
    /// sound; otherwise the next append starts a new segment.
    pub(crate) fn reopen_active(&mut self, truncate_to: Option<u64>) {
        let Some(segment) = self.segments.back_mut() else {
            return;
        };
        if !segment.readable {
            return;
        }
        // Never appended to after an upgrade (its tail is still cut): the next record starts a
        // segment of the current format.
        let current = segment.version == format::FORMAT_VERSION;
        let opened = OpenOptions::new()
            .append(true)
            .open(&segment.path)
            .and_then(|file| {
                if let Some(len) = truncate_to {
                    file.set_len(len)?;
                    segment.bytes = len;
                }
                // Records found on open become visible at once, so make them durable first.
                file.sync_all()?;
                Ok(file)
            });
        match opened {
            Ok(_) if !current => {}
            Ok(file) => {
                self.active = Some(Active {
                    file,
                    dir_unsynced: false,
                    broken: false,
                });
            }
            Err(err) => {
                warn!(
                    segment = %segment.path.display(),
                    error = %err,
                    "Cannot reopen the newest spool segment; appending to a new one."
                );
                // Never append after bytes that may still hold a damaged tail.
                segment.readable = false;
            }
        }
    }

    /// Deletes stale marker files found on open that an already-known range covers.
    pub(crate) fn marker_paths_at_open(&mut self, markers: Vec<(u64, u64, PathBuf)>) {
        for (first, last, path) in markers {
            let kept = self.unwritten.contains(&(first, last));
            if !kept && let Err(err) = fs::remove_file(&path) {
                debug!(file = %path.display(), error = %err, "Cannot remove a merged unwritten-range marker.");
            }
        }
        for &(first, last) in &self.unwritten {
            let path = self.config.dir.join(marker_file_name(first, last));
            if !path.exists() {
                // Merged from several markers: record the union, then the parts are gone.
                let _ = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&path);
            }
        }
    }
}

/// Creates the spool directory `0700`, or tightens an existing one to `0700`.
pub(crate) fn create_dir(dir: &Path) -> Result<(), SpoolError> {
    let wrap = |source| SpoolError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(wrap)?;
    let mode = fs::metadata(dir).map_err(wrap)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(wrap)?;
        info!(dir = %dir.display(), old_mode = format!("{:o}", mode & 0o777), "Restricted the spool directory to 0700.");
    }
    Ok(())
}

/// An unwritten-range marker found on open: its range and file.
pub(crate) type Marker = (u64, u64, PathBuf);

/// What [`list_segments`] finds: segments (number and file) sorted by number, markers, and the
/// count of other entries.
pub(crate) type Listing = (Vec<(u64, PathBuf)>, Vec<Marker>, usize);

/// The segment files in `dir`, sorted by number, the unwritten-range markers, and the count of
/// other entries.
pub(crate) fn list_segments(dir: &Path) -> Result<Listing, SpoolError> {
    let wrap = |source| SpoolError::ListDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut segments = Vec::new();
    let mut markers = Vec::new();
    let mut ignored = 0;
    for entry in fs::read_dir(dir).map_err(wrap)? {
        let entry = entry.map_err(wrap)?;
        let name = entry.file_name();
        let parsed = name.to_str().and_then(parse_segment_name);
        let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
        let marker = name.to_str().and_then(parse_marker_name);
        match (parsed, marker) {
            (Some(base_seq), _) if is_file => segments.push((base_seq, entry.path())),
            (_, Some((first, last))) if is_file => markers.push((first, last, entry.path())),
            _ => {
                ignored += 1;
                debug!(file = %entry.path().display(), "Ignoring a file that is not a spool segment.");
            }
        }
    }
    segments.sort_unstable_by_key(|(base_seq, _)| *base_seq);
    Ok((segments, markers, ignored))
}

/// Scans one segment: validates every frame ([`accept_frame`]), builds the sparse index, finds
/// damage.
///
/// `prev_seq` is the last valid number of the previous segments; records at or below it, or
/// below the segment's own name, are out of place and skipped as corrupt.
pub(crate) fn scan_segment<T: Payload>(
    path: PathBuf,
    base_seq: u64,
    prev_seq: Option<u64>,
) -> Scan {
    let bytes = fs::metadata(&path).map(|meta| meta.len()).unwrap_or(0);
    let mut scan = Scan {
        segment: Segment::new(path, base_seq, bytes),
        corrupt_regions: 0,
        tail: None,
        has_garbage: false,
    };
    let mut file = match File::open(&scan.segment.path) {
        Ok(file) => file,
        Err(err) => {
            warn!(segment = %scan.segment.path.display(), error = %err, "Cannot open spool segment; skipping it.");
            scan.segment.readable = false;
            scan.has_garbage = bytes > 0;
            return scan;
        }
    };
    let mut header = [0u8; format::SEGMENT_HEADER_LEN as usize];
    let version = file
        .read_exact(&mut header)
        .ok()
        .and_then(|()| format::header_version(&header));
    let Some(version) = version else {
        if bytes > 0 {
            warn!(segment = %scan.segment.path.display(), bytes, "Spool segment has no valid header; skipping it.");
        }
        scan.segment.readable = false;
        scan.has_garbage = bytes > 0;
        return scan;
    };
    scan.segment.version = version;
    let mut floor = prev_seq.map_or(base_seq, |prev| (prev + 1).max(base_seq));
    scan.segment.floor = floor;
    let mut reader = FrameReader::new(file, format::SEGMENT_HEADER_LEN);
    let mut valid_end = format::SEGMENT_HEADER_LEN;
    // Damage seen since the last valid frame: if nothing valid follows, it is the tail.
    let mut pending_regions = 0u64;
    let mut pending_whole_frames = 0u64;
    loop {
        let event = match reader.next_event() {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(err) => {
                warn!(segment = %scan.segment.path.display(), error = %err, "Error reading spool segment; keeping the records read so far.");
                scan.segment.readable = false;
                scan.has_garbage = true;
                break;
            }
        };
        match event {
            Event::Frame {
                offset,
                frame_len,
                payload,
            } => {
                let head = accept_frame::<T>(version, payload, floor).map(|record| Head {
                    seq: record.seq,
                    time_unix_ms: record.time_unix_ms,
                });
                match head {
                    Some(head) => {
                        scan.segment.push_record(head, offset);
                        floor = head.seq + 1;
                        valid_end = offset + frame_len;
                        scan.corrupt_regions += pending_regions;
                        pending_regions = 0;
                        pending_whole_frames = 0;
                    }
                    None => {
                        // Passes its CRC but does not decode or is out of place.
                        debug!(segment = %scan.segment.path.display(), offset, "Rejected a spool frame.");
                        scan.has_garbage = true;
                        pending_regions += 1;
                        pending_whole_frames += 1;
                    }
                }
            }
            Event::Corrupt {
                offset,
                len,
                whole_frames,
                ..
            } => {
                debug!(segment = %scan.segment.path.display(), offset, len, "Damaged bytes in spool segment.");
                scan.has_garbage = true;
                pending_regions += 1;
                pending_whole_frames += whole_frames;
            }
        }
    }
    if pending_regions > 0 {
        if scan.segment.readable {
            scan.tail = Some(Tail {
                valid_end,
                bytes: bytes.saturating_sub(valid_end),
                whole_frames: pending_whole_frames,
            });
        } else {
            scan.corrupt_regions += pending_regions;
        }
    }
    scan
}
