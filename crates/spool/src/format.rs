//! The on-disk format of spool segments, and a buffered frame reader that resynchronises after
//! corruption.
//!
//! A segment file is a 16-byte header followed by frames, all integers little-endian:
//!
//! ```text
//! header: magic "JEXSPOOL" (8 bytes) | format version u32 (= 1) | reserved u32 (= 0)
//! frame:  magic A5 4A 58 52 (4 bytes) | payload length u32 | CRC-32 u32 | payload
//! ```
//!
//! The CRC-32 (IEEE, `crc32fast`) covers the four length bytes and the payload, so a damaged
//! length is caught as surely as a damaged payload. The payload is one [`Entry`] encoded with
//! `postcard`; because postcard writes struct fields in declaration order, the payload is the
//! entry's `seq` and `time_unix_ms` varints followed by the caller's payload. (Segments written when the
//! spool stored telemetry `Record { seq, time_unix_ms, body }` values directly have exactly
//! these bytes.)
//!
//! Invariants the reader relies on: a frame is never longer than [`FRAME_HEADER_LEN`] +
//! [`MAX_PAYLOAD_LEN`] bytes, and frames are written with one `write_all` each, so a crash can
//! leave at most one incomplete frame at the end of the file being appended to.
//!
//! When a frame fails its checks, [`FrameReader`] scans forward byte by byte for the next frame
//! magic whose frame is complete and passes its CRC, and reports the skipped bytes as one
//! [`Event::Corrupt`] region. A region that runs to the end of the file is a torn or damaged
//! tail.

use std::io::{self, Read};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Entry;

/// The first 8 bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"JEXSPOOL";
/// The segment format this code writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Length of the segment header.
pub(crate) const SEGMENT_HEADER_LEN: u64 = 16;
/// The first 4 bytes of every frame.
pub(crate) const FRAME_MAGIC: [u8; 4] = [0xA5, b'J', b'X', b'R'];
/// Magic, payload length and CRC.
pub(crate) const FRAME_HEADER_LEN: usize = 12;
/// Largest payload accepted on write and on read: a sample of a few hundred cores fits with
/// room to spare, and a damaged length field cannot make the reader buffer more than this.
pub(crate) const MAX_PAYLOAD_LEN: u32 = 64 * 1024;

/// How many bytes the reader asks the OS for at a time.
const READ_CHUNK: usize = 64 * 1024;

/// The segment header this code writes.
pub(crate) fn segment_header() -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    header[..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header
}

/// Whether `header` is a segment header of the format this code reads.
pub(crate) fn is_valid_header(header: &[u8]) -> bool {
    header.len() >= SEGMENT_HEADER_LEN as usize
        && header[..8] == SEGMENT_MAGIC
        && header[8..12] == FORMAT_VERSION.to_le_bytes()
}

/// The CRC stored in a frame: over the little-endian length and the payload.
fn frame_crc(len_le: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len_le);
    hasher.update(payload);
    hasher.finalize()
}

/// Encodes `entry` as one frame appended to `out` (which is cleared first).
///
/// Returns the payload length; the caller checks it against [`MAX_PAYLOAD_LEN`].
pub(crate) fn encode_frame<T: Serialize>(
    entry: &Entry<T>,
    out: &mut Vec<u8>,
) -> Result<usize, postcard::Error> {
    out.clear();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    let mut buf = postcard::to_extend(entry, std::mem::take(out))?;
    let payload_len = buf.len() - FRAME_HEADER_LEN;
    // The caller rejects anything above MAX_PAYLOAD_LEN before writing, so saturating a length
    // above u32::MAX here only affects that rejection.
    let len_le = u32::try_from(payload_len).unwrap_or(u32::MAX).to_le_bytes();
    let crc = frame_crc(len_le, &buf[FRAME_HEADER_LEN..]);
    buf[..4].copy_from_slice(&FRAME_MAGIC);
    buf[4..8].copy_from_slice(&len_le);
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    *out = buf;
    Ok(payload_len)
}

/// The sequence number and time at the start of a frame payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) struct Head {
    /// `Entry::seq`.
    pub seq: u64,
    /// `Entry::time_unix_ms`.
    pub time_unix_ms: u64,
}

/// Reads the first two fields of a frame payload without decoding the caller's payload (for
/// tests: the spool itself accepts a frame only once all of it decodes).
#[cfg(test)]
pub(crate) fn decode_head(payload: &[u8]) -> Option<Head> {
    postcard::take_from_bytes::<Head>(payload)
        .ok()
        .map(|(head, _)| head)
}

/// Decodes a whole frame payload.
pub(crate) fn decode_entry<T: DeserializeOwned>(payload: &[u8]) -> Option<Entry<T>> {
    postcard::from_bytes::<Entry<T>>(payload).ok()
}

/// What the reader found next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// A frame that passed its checks.
    Frame {
        /// File offset of the frame's first byte.
        offset: u64,
        /// Header plus payload.
        frame_len: u64,
        /// The frame's payload: one encoded entry.
        payload: &'a [u8],
    },
    /// Bytes that hold no valid frame.
    Corrupt {
        /// File offset of the first skipped byte.
        offset: u64,
        /// Number of bytes skipped.
        len: u64,
        /// The region runs to the end of the file.
        to_eof: bool,
        /// Frames in the region that are structurally whole (magic, length, all their bytes
        /// present) but fail their CRC, counted from the region's start by their lengths: each
        /// stands for one record whose sequence number was handed out.
        whole_frames: u64,
    },
}

/// The outcome of checking the bytes at the read position.
enum Check {
    /// A frame of this total length passes its checks.
    Valid(usize),
    /// Magic and length are fine and all bytes are present, but the CRC fails.
    BadCrc(usize),
    /// No frame starts here.
    Bad,
    /// The file ends before the frame does.
    Incomplete,
}

/// A buffered reader of frames from a segment, starting at a frame boundary.
pub(crate) struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Index in `buf` of the next unread byte.
    pos: usize,
    /// File offset of `buf[0]`.
    base: u64,
    eof: bool,
}

impl<R: Read> FrameReader<R> {
    /// A reader whose first byte is at file offset `offset`.
    pub(crate) fn new(inner: R, offset: u64) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(READ_CHUNK),
            pos: 0,
            base: offset,
            eof: false,
        }
    }

    /// The file offset of the next unread byte.
    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Makes `buf[pos..]` hold at least `want` bytes unless the file ends first; returns
    /// whether it does.
    fn fill(&mut self, want: usize) -> io::Result<bool> {
        while self.buf.len() - self.pos < want && !self.eof {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.base += self.pos as u64;
                self.pos = 0;
            }
            let have = self.buf.len();
            let need = (want - have).max(READ_CHUNK);
            self.buf.resize(have + need, 0);
            let read = loop {
                match self.inner.read(&mut self.buf[have..]) {
                    Ok(n) => break n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => {
                        self.buf.truncate(have);
                        return Err(err);
                    }
                }
            };
            self.buf.truncate(have + read);
            if read == 0 {
                self.eof = true;
            }
        }
        Ok(self.buf.len() - self.pos >= want)
    }

    /// Checks whether a frame starts at `pos`.
    fn check(&mut self) -> io::Result<Check> {
        if !self.fill(FRAME_HEADER_LEN)? {
            return Ok(Check::Incomplete);
        }
        let header = &self.buf[self.pos..self.pos + FRAME_HEADER_LEN];
        if header[..4] != FRAME_MAGIC {
            return Ok(Check::Bad);
        }
        let len_le: [u8; 4] = [header[4], header[5], header[6], header[7]];
        let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        let len = u32::from_le_bytes(len_le);
        if len > MAX_PAYLOAD_LEN {
            return Ok(Check::Bad);
        }
        let total = FRAME_HEADER_LEN + len as usize;
        if !self.fill(total)? {
            return Ok(Check::Incomplete);
        }
        let payload = &self.buf[self.pos + FRAME_HEADER_LEN..self.pos + total];
        if frame_crc(len_le, payload) == crc {
            Ok(Check::Valid(total))
        } else {
            Ok(Check::BadCrc(total))
        }
    }

    /// Returns the next valid frame or corrupt region, or `None` at the end of the file.
    pub(crate) fn next_event(&mut self) -> io::Result<Option<Event<'_>>> {
        if !self.fill(1)? {
            return Ok(None);
        }
        let start = self.offset();
        let mut whole_frames = 0u64;
        let mut chain_next = None;
        match self.check()? {
            Check::Valid(total) => {
                let payload_at = self.pos + FRAME_HEADER_LEN;
                self.pos += total;
                return Ok(Some(Event::Frame {
                    offset: start,
                    frame_len: total as u64,
                    payload: &self.buf[payload_at..self.pos],
                }));
            }
            Check::BadCrc(total) => {
                whole_frames = 1;
                chain_next = Some(start + total as u64);
            }
            Check::Bad | Check::Incomplete => {}
        }
        // Resynchronise: look for the next magic that starts a valid frame.
        self.pos += 1;
        loop {
            if !self.fill(FRAME_MAGIC.len())? {
                // Fewer bytes than a magic are left: the region runs to the end.
                self.pos = self.buf.len();
                return Ok(Some(Event::Corrupt {
                    offset: start,
                    len: self.offset() - start,
                    to_eof: true,
                    whole_frames,
                }));
            }
            let window = &self.buf[self.pos..];
            match window
                .windows(FRAME_MAGIC.len())
                .position(|w| w == FRAME_MAGIC)
            {
                Some(found) => {
                    self.pos += found;
                    let here = self.offset();
                    match self.check()? {
                        Check::Valid(_) => {
                            return Ok(Some(Event::Corrupt {
                                offset: start,
                                len: here - start,
                                to_eof: false,
                                whole_frames,
                            }));
                        }
                        Check::BadCrc(total) if chain_next == Some(here) => {
                            whole_frames += 1;
                            chain_next = Some(here + total as u64);
                        }
                        Check::BadCrc(_) | Check::Bad | Check::Incomplete => {}
                    }
                    self.pos += 1;
                }
                None => {
                    // Keep the last bytes: they may be the start of a magic split across reads.
                    let keep = FRAME_MAGIC.len() - 1;
                    self.pos = self.buf.len() - keep;
                    if self.eof {
                        self.pos = self.buf.len();
                        return Ok(Some(Event::Corrupt {
                            offset: start,
                            len: self.offset() - start,
                            to_eof: true,
                            whole_frames,
                        }));
                    }
                    // Ask for more than what is buffered so `fill` reads.
                    self.fill(keep + 1)?;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "a test fails loudly on an unexpected error"
)]
mod tests {
    use super::*;

    /// A payload of the tests' own: a name and some numbers.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Reading {
        name: String,
        values: Vec<u32>,
    }

    fn record(seq: u64) -> Entry<Reading> {
        Entry {
            seq,
            time_unix_ms: 1_700_000_000_000 + seq * 1000,
            payload: Reading {
                name: "cpu".into(),
                values: vec![1000; 8],
            },
        }
    }

    fn frames(seqs: impl IntoIterator<Item = u64>) -> (Vec<u8>, Vec<u64>) {
        let mut file = Vec::new();
        let mut offsets = Vec::new();
        let mut frame = Vec::new();
        for seq in seqs {
            offsets.push(file.len() as u64);
            encode_frame(&record(seq), &mut frame).unwrap();
            file.extend_from_slice(&frame);
        }
        (file, offsets)
    }

    /// Reads every event; frames become `Ok(seq)`, corrupt regions `Err((offset, len, to_eof, whole))`.
    fn events(bytes: &[u8]) -> Vec<Result<u64, (u64, u64, bool, u64)>> {
        let mut reader = FrameReader::new(bytes, 0);
        let mut out = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            out.push(match event {
                Event::Frame { payload, .. } => Ok(decode_entry::<Reading>(payload).unwrap().seq),
                Event::Corrupt {
                    offset,
                    len,
                    to_eof,
                    whole_frames,
                } => Err((offset, len, to_eof, whole_frames)),
            });
        }
        out
    }

    #[test]
    fn head_decodes_seq_and_time_from_the_payload_prefix() {
        let rec = Entry {
            seq: 300_000,
            time_unix_ms: 1_750_000_000_123,
            payload: Reading {
                name: "memory".into(),
                values: vec![u32::MAX, 0, 7],
            },
        };
        let mut frame = Vec::new();
        encode_frame(&rec, &mut frame).unwrap();
        let head = decode_head(&frame[FRAME_HEADER_LEN..]).unwrap();
        assert_eq!(
            head,
            Head {
                seq: 300_000,
                time_unix_ms: 1_750_000_000_123
            }
        );
        assert_eq!(decode_entry(&frame[FRAME_HEADER_LEN..]), Some(rec));
    }

    #[test]
    fn reads_back_every_frame_in_order() {
        let (file, _) = frames(1..=500);
        let got = events(&file);
        assert_eq!(got, (1..=500).map(Ok).collect::<Vec<_>>());
    }

    #[test]
    fn skips_a_flipped_payload_byte_and_resyncs_on_the_next_frame() {
        let (mut file, offsets) = frames(1..=10);
        let victim = offsets[4] as usize + FRAME_HEADER_LEN + 2;
        file[victim] ^= 0xFF;
        let got = events(&file);
        let region = offsets[5] - offsets[4];
        let mut want: Vec<_> = (1..=4).map(Ok).collect();
        want.push(Err((offsets[4], region, false, 1)));
        want.extend((6..=10).map(Ok));
        assert_eq!(got, want);
    }

    #[test]
    fn a_damaged_length_field_is_caught_by_the_crc() {
        let (mut file, offsets) = frames(1..=5);
        // Flip the low bit of frame 3's length: the frame still fits, the CRC fails.
        file[offsets[2] as usize + 4] ^= 1;
        let got = events(&file);
        assert_eq!(got[..2], [Ok(1), Ok(2)]);
        assert!(matches!(got[2], Err((off, _, false, _)) if off == offsets[2]));
        assert_eq!(got[3..], [Ok(4), Ok(5)]);
    }

    #[test]
    fn a_torn_last_frame_is_a_corrupt_tail_with_no_whole_frame() {
        let (file, offsets) = frames(1..=6);
        let cut = offsets[5] as usize + 7;
        let got = events(&file[..cut]);
        let mut want: Vec<_> = (1..=5).map(Ok).collect();
        want.push(Err((offsets[5], 7, true, 0)));
        assert_eq!(got, want);
    }

    #[test]
    fn whole_frames_with_bad_crcs_at_the_tail_are_counted() {
        let (mut file, offsets) = frames(1..=8);
        for &i in &[5usize, 6, 7] {
            file[offsets[i] as usize + FRAME_HEADER_LEN + 1] ^= 0x55;
        }
        let got = events(&file);
        let tail_len = file.len() as u64 - offsets[5];
        let mut want: Vec<_> = (1..=5).map(Ok).collect();
        want.push(Err((offsets[5], tail_len, true, 3)));
        assert_eq!(got, want);
    }

    #[test]
    fn a_zero_filled_region_is_skipped_until_the_next_frame() {
        let (mut file, offsets) = frames(1..=4);
        let (tail, _) = frames(5..=6);
        file.extend(std::iter::repeat_n(0u8, 200_000));
        file.extend_from_slice(&tail);
        let got = events(&file);
        let end_of_4 = offsets[3] + (offsets[3] - offsets[2]);
        assert_eq!(
            got,
            vec![
                Ok(1),
                Ok(2),
                Ok(3),
                Ok(4),
                Err((end_of_4, 200_000, false, 0)),
                Ok(5),
                Ok(6)
            ]
        );
    }

    #[test]
    fn a_magic_split_across_reads_is_still_found() {
        // Garbage of exactly READ_CHUNK - 2 bytes puts the next magic across a read boundary.
        let mut file = vec![0x11u8; READ_CHUNK - 2];
        let (good, _) = frames(7..=8);
        file.extend_from_slice(&good);
        let got = events(&file);
        assert_eq!(
            got,
            vec![Err((0, (READ_CHUNK - 2) as u64, false, 0)), Ok(7), Ok(8)]
        );
    }

    #[test]
    fn an_oversized_length_is_not_buffered() {
        let (mut file, offsets) = frames(1..=3);
        file[offsets[1] as usize + 4..offsets[1] as usize + 8]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        let got = events(&file);
        assert_eq!(got[0], Ok(1));
        assert!(matches!(got[1], Err((off, _, false, 0)) if off == offsets[1]));
        assert_eq!(got[2], Ok(3));
    }

    #[test]
    fn header_check_rejects_other_magic_and_versions() {
        let good = segment_header();
        assert!(is_valid_header(&good));
        let mut newer = good;
        newer[8] = 2;
        assert!(!is_valid_header(&newer));
        let mut other = good;
        other[0] = b'X';
        assert!(!is_valid_header(&other));
        assert!(!is_valid_header(&good[..10]));
    }
}
