//! The overwrite pass: the whole target written with the pattern, in large aligned direct-I/O
//! chunks, with durable checkpoints.
//!
//! From `start` (a checkpoint offset) to the end of the target, in segments of
//! `checkpoint_bytes`:
//!
//! 1. full identity check (open descriptor and path) against the pinned identity;
//! 2. chunks of `chunk_bytes` written at increasing offsets, each after a cheap check of the
//!    descriptor's identity (so a target that shrinks mid-pass is caught at the next chunk);
//! 3. a durable flush (`fdatasync` / `F_FULLFSYNC`);
//! 4. `on_checkpoint(end_of_segment)`: the caller journals the offset. Only flushed data is ever
//!    journaled, so resuming from the last journaled offset redoes at most one segment.
//!
//! The pattern for the next chunks is generated on a helper thread while the calling thread
//! writes (two chunks in flight, three buffers in rotation).

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use crate::error::EraseError;
use crate::pattern::Pattern;
use jex_platform::blockdev::{
    AlignedBuf, TargetIdentity, TargetIo, check_identity, check_open_identity,
};

/// Chunks generated ahead of the writer.
const DEPTH: usize = 2;

/// Write sizes of one overwrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverwriteSettings {
    /// Bytes per write (multiple of the direct-I/O alignment).
    pub chunk_bytes: u64,
    /// Bytes between durable checkpoints (multiple of `chunk_bytes`).
    pub checkpoint_bytes: u64,
}

/// Writes the pattern over `[start, size)` of `io`. `start` must be aligned (it is always a
/// journaled checkpoint or 0). `progress` receives the bytes of the target written so far
/// (including everything before `start`); `on_checkpoint` the offset up to which data is durable.
#[allow(clippy::too_many_arguments)] // one flat call from the engine; a struct would only rename them
pub fn overwrite_target(
    target_name: &str,
    io: &mut dyn TargetIo,
    pinned: &TargetIdentity,
    pattern: &Pattern,
    start: u64,
    settings: &OverwriteSettings,
    progress: &mut dyn FnMut(u64),
    on_checkpoint: &mut dyn FnMut(u64) -> Result<(), EraseError>,
) -> Result<(), EraseError> {
    let identity_err = |source| EraseError::Identity {
        target: target_name.to_owned(),
        source,
    };
    check_identity(io, pinned).map_err(identity_err)?;
    let size = io.size();
    if start >= size {
        return Ok(());
    }
    let chunk = settings.chunk_bytes.max(io.io_align()) as usize;
    let generator_pattern = pattern.clone();
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = sync_channel::<(u64, usize, AlignedBuf)>(DEPTH);
        let (empty_tx, empty_rx) = sync_channel::<AlignedBuf>(DEPTH + 1);
        for _ in 0..=DEPTH {
            // The channel holds DEPTH + 1 buffers and nothing else was sent yet.
            let _ = empty_tx.send(AlignedBuf::new(chunk));
        }
        let generator = scope.spawn(move || {
            generate_loop(&generator_pattern, start, size, chunk, empty_rx, full_tx)
        });
        let result = write_loop(
            target_name,
            io,
            pinned,
            start,
            settings,
            full_rx,
            empty_tx,
            progress,
            on_checkpoint,
        );
        // `write_loop` consumed its channel ends, so the generator stops at its next send/recv.
        let _ = generator.join();
        result
    })
}

fn generate_loop(
    pattern: &Pattern,
    start: u64,
    size: u64,
    chunk: usize,
    empty_rx: Receiver<AlignedBuf>,
    full_tx: SyncSender<(u64, usize, AlignedBuf)>,
) {
    let mut offset = start;
    while offset < size {
        let Ok(mut buf) = empty_rx.recv() else {
            return;
        };
        let len = (size - offset).min(chunk as u64) as usize;
        pattern.fill(offset, &mut buf[..len]);
        if full_tx.send((offset, len, buf)).is_err() {
            return;
        }
        offset += len as u64;
    }
}

#[allow(clippy::too_many_arguments)]
fn write_loop(
    target_name: &str,
    io: &mut dyn TargetIo,
    pinned: &TargetIdentity,
    start: u64,
    settings: &OverwriteSettings,
    full_rx: Receiver<(u64, usize, AlignedBuf)>,
    empty_tx: SyncSender<AlignedBuf>,
    progress: &mut dyn FnMut(u64),
    on_checkpoint: &mut dyn FnMut(u64) -> Result<(), EraseError>,
) -> Result<(), EraseError> {
    let size = io.size();
    let checkpoint = settings.checkpoint_bytes.max(settings.chunk_bytes).max(1);
    let identity_err = |source| EraseError::Identity {
        target: target_name.to_owned(),
        source,
    };
    let mut offset = start;
    // The next checkpoint boundary strictly after `start`.
    let mut next_checkpoint = ((start / checkpoint) + 1) * checkpoint;
    let mut segment_checked = true; // checked by the caller just before the first segment
    while offset < size {
        if !segment_checked {
            check_identity(io, pinned).map_err(identity_err)?;
            segment_checked = true;
        }
        let (chunk_offset, len, buf) = full_rx.recv().map_err(|_| EraseError::Internal {
            detail: "the pattern generator thread stopped".into(),
        })?;
        debug_assert_eq!(chunk_offset, offset);
        check_open_identity(io, pinned).map_err(identity_err)?;
        io.write_at(offset, &buf[..len])
            .map_err(|source| EraseError::Write {
                target: target_name.to_owned(),
                path: io.path().to_path_buf(),
                offset,
                source,
            })?;
        offset += len as u64;
        progress(offset);
        // The generator may already have finished; a closed channel only means no more chunks.
        let _ = empty_tx.send(buf);
        if offset >= next_checkpoint || offset == size {
            io.flush_durable().map_err(|source| EraseError::Flush {
                target: target_name.to_owned(),
                path: io.path().to_path_buf(),
                offset,
                source,
            })?;
            // What was just flushed must still be the pinned target before it is journaled.
            check_identity(io, pinned).map_err(identity_err)?;
            on_checkpoint(offset)?;
            next_checkpoint = offset + checkpoint;
            segment_checked = false;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pattern::PatternKey;
    use jex_platform::blockdev::{Access, DirectTarget};
    use std::io::Write;

    fn image(dir: &std::path::Path, len: usize) -> std::path::PathBuf {
        let path = dir.join("disk.img");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&vec![0xee; len])
            .unwrap();
        path
    }

    #[test]
    fn every_byte_equals_the_pattern_and_checkpoints_are_flushed_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let size = 5 * 64 * 1024 + 3 * 4096;
        let path = image(dir.path(), size);
        let pattern = Pattern::new(PatternKey::from_bytes([42u8; 32]));
        let mut io = DirectTarget::open(&path, Access::ReadWrite).unwrap();
        let pinned = io.identity().clone();
        let mut checkpoints = Vec::new();
        let mut last_progress = 0;
        overwrite_target(
            "t",
            &mut io,
            &pinned,
            &pattern,
            0,
            &OverwriteSettings {
                chunk_bytes: 64 * 1024,
                checkpoint_bytes: 128 * 1024,
            },
            &mut |done| last_progress = done,
            &mut |offset| {
                checkpoints.push(offset);
                Ok(())
            },
        )
        .unwrap();
        let size = size as u64;
        assert_eq!(checkpoints, vec![128 * 1024, 256 * 1024, size]);
        assert_eq!(last_progress, size);
        let written = std::fs::read(&path).unwrap();
        let mut expected = vec![0u8; written.len()];
        pattern.fill(0, &mut expected);
        assert!(
            written == expected,
            "target content differs from the pattern"
        );
    }

    #[test]
    fn resuming_from_a_checkpoint_writes_only_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let size = 8 * 4096;
        let path = image(dir.path(), size);
        let pattern = Pattern::new(PatternKey::from_bytes([1u8; 32]));
        let mut io = DirectTarget::open(&path, Access::ReadWrite).unwrap();
        let pinned = io.identity().clone();
        overwrite_target(
            "t",
            &mut io,
            &pinned,
            &pattern,
            4 * 4096,
            &OverwriteSettings {
                chunk_bytes: 4096,
                checkpoint_bytes: 8192,
            },
            &mut |_| {},
            &mut |_| Ok(()),
        )
        .unwrap();
        let written = std::fs::read(&path).unwrap();
        assert!(written[..4 * 4096].iter().all(|b| *b == 0xee));
        let mut expected = vec![0u8; 4 * 4096];
        pattern.fill(4 * 4096, &mut expected);
        assert_eq!(&written[4 * 4096..], &expected[..]);
    }

    #[test]
    fn a_failing_checkpoint_stops_the_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = image(dir.path(), 16 * 4096);
        let pattern = Pattern::new(PatternKey::from_bytes([2u8; 32]));
        let mut io = DirectTarget::open(&path, Access::ReadWrite).unwrap();
        let pinned = io.identity().clone();
        let mut progress = 0;
        let err = overwrite_target(
            "t",
            &mut io,
            &pinned,
            &pattern,
            0,
            &OverwriteSettings {
                chunk_bytes: 4096,
                checkpoint_bytes: 4 * 4096,
            },
            &mut |done| progress = done,
            &mut |_| {
                Err(EraseError::Internal {
                    detail: "journal full".into(),
                })
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("journal full"));
        assert_eq!(progress, 4 * 4096);
    }
}
