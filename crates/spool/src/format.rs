//! The on-disk format of spool segments, and a buffered frame reader that resynchronises after
//! corruption.
//!
//! A segment file is a 16-byte header followed by frames, all fixed-width integers
//! little-endian:
//!
//! ```text
//! header: magic "JEXSPOOL" (8 bytes) | format version u32 (2; 1 is still read) | reserved u32 (= 0)
//! frame:  magic A5 4A 58 52 (4 bytes) | payload length u32 | CRC-32 u32 | payload
//! ```
//!
//! The CRC-32 (IEEE, `crc32fast`) covers the four length bytes and the payload, so a damaged
//! length is caught as surely as a damaged payload. The payload is one record:
//!
//! ```text
//! format 2: seq varint | time_unix_ms varint | schema varint | the caller's bytes
//! format 1: seq varint | time_unix_ms varint | the caller's payload, postcard-encoded
//! ```
//!
//! Varints are unsigned LEB128 (7 bits a byte, low bits first: postcard's encoding of a `u64`,
//! so the two formats share their first two fields). In format 2 the caller's bytes are opaque
//! to the spool: the schema number says how the caller encoded them (the agent stores the
//! protobuf encoding of its `TelemetryRecord`, whose fields carry numbers, so a later version
//! with more fields reads them whole). Format 1 has no schema number: its payloads were
//! postcard-encoded structs, fields by position, and [`SCHEMA_V1`] stands for them, so that the
//! caller can keep a decoder for them. (Segments written when the spool stored telemetry
//! `Record { seq, time_unix_ms, body }` values directly are format 1 with exactly these bytes.)
//!
//! The spool writes format 2 only; it never appends to a format 1 segment, so a segment holds
//! one format.
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

use serde::Deserialize;

/// The first 8 bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"JEXSPOOL";
/// The segment format this code writes.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The first segment format, still read: postcard payloads, no schema number.
pub(crate) const FORMAT_V1: u32 = 1;
/// The schema number the spool hands to [`crate::Payload::decode`] for the payloads of format 1
/// segments, which carry none: postcard-encoded, fields by position.
pub const SCHEMA_V1: u16 = 0;
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

/// The format version of a segment header this code reads (1 or 2), or `None`.
pub(crate) fn header_version(header: &[u8]) -> Option<u32> {
    if header.len() < SEGMENT_HEADER_LEN as usize || header[..8] != SEGMENT_MAGIC {
        return None;
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    (version == FORMAT_V1 || version == FORMAT_VERSION).then_some(version)
}

/// The CRC stored in a frame: over the little-endian length and the payload.
fn frame_crc(len_le: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len_le);
    hasher.update(payload);
    hasher.finalize()
}

/// Appends `value` as an unsigned LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads an unsigned LEB128 varint of at most 64 bits from the front of `bytes`; returns it
/// and the rest.
fn take_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7F);
        let shift = 7 * i as u32;
        if (i == 9 && byte > 1) || (bits << shift) >> shift != bits {
            return None;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// Encodes one format 2 frame into `out` (cleared first): the record's number, time and schema
/// followed by the caller's bytes, which `body` appends.
///
/// Returns the payload length; the caller checks it against [`MAX_PAYLOAD_LEN`].
pub(crate) fn encode_frame<E>(
    seq: u64,
    time_unix_ms: u64,
    schema: u16,
    out: &mut Vec<u8>,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<usize, E> {
    out.clear();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    put_varint(out, seq);
    put_varint(out, time_unix_ms);
    put_varint(out, u64::from(schema));
    body(out)?;
    let payload_len = out.len() - FRAME_HEADER_LEN;
    // The caller rejects anything above MAX_PAYLOAD_LEN before writing, so saturating a length
    // above u32::MAX here only affects that rejection.
    let len_le = u32::try_from(payload_len).unwrap_or(u32::MAX).to_le_bytes();
    let crc = frame_crc(len_le, &out[FRAME_HEADER_LEN..]);
    out[..4].copy_from_slice(&FRAME_MAGIC);
    out[4..8].copy_from_slice(&len_le);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
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

/// A frame payload split into its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fields<'a> {
    /// The record's number and time.
    pub head: Head,
    /// How `body` is encoded: the stored schema number, or [`SCHEMA_V1`] in a format 1 segment.
    pub schema: u16,
    /// The caller's bytes.
    pub body: &'a [u8],
}

/// Splits a frame payload of a segment of format `version` into its fields.
pub(crate) fn decode_fields(version: u32, payload: &[u8]) -> Option<Fields<'_>> {
    if version == FORMAT_V1 {
        let (head, body) = postcard::take_from_bytes::<Head>(payload).ok()?;
        return Some(Fields {
            head,
            schema: SCHEMA_V1,
            body,
        });
    }
    let (seq, rest) = take_varint(payload)?;
    let (time_unix_ms, rest) = take_varint(rest)?;
    let (schema, body) = take_varint(rest)?;
    Some(Fields {
        head: Head { seq, time_unix_ms },
        schema: u16::try_from(schema).ok()?,
        body,
    })
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

    /// A frame of record `seq` (schema 7, some bytes of its own).
    fn frame(seq: u64, out: &mut Vec<u8>) {
        let body = format!("cpu {seq} 1000 1000 1000 1000 1000 1000 1000 1000");
        encode_frame(seq, 1_700_000_000_000 + seq * 1000, 7, out, |out| {
            out.extend_from_slice(body.as_bytes());
            Ok::<(), ()>(())
        })
        .unwrap();
    }

    fn frames(seqs: impl IntoIterator<Item = u64>) -> (Vec<u8>, Vec<u64>) {
        let mut file = Vec::new();
        let mut offsets = Vec::new();
        let mut out = Vec::new();
        for seq in seqs {
            offsets.push(file.len() as u64);
            frame(seq, &mut out);
            file.extend_from_slice(&out);
        }
        (file, offsets)
    }

    /// Reads every event; frames become `Ok(seq)`, corrupt regions `Err((offset, len, to_eof, whole))`.
    fn events(bytes: &[u8]) -> Vec<Result<u64, (u64, u64, bool, u64)>> {
        let mut reader = FrameReader::new(bytes, 0);
        let mut out = Vec::new();
        while let Some(event) = reader.next_event().unwrap() {
            out.push(match event {
                Event::Frame { payload, .. } => {
                    Ok(decode_fields(FORMAT_VERSION, payload).unwrap().head.seq)
                }
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
    fn fields_decode_from_both_formats() {
        let mut out = Vec::new();
        encode_frame(300_000, 1_750_000_000_123, 513, &mut out, |out| {
            out.extend_from_slice(b"opaque");
            Ok::<(), ()>(())
        })
        .unwrap();
        let head = Head {
            seq: 300_000,
            time_unix_ms: 1_750_000_000_123,
        };
        assert_eq!(
            decode_fields(FORMAT_VERSION, &out[FRAME_HEADER_LEN..]),
            Some(Fields {
                head,
                schema: 513,
                body: b"opaque"
            })
        );
        // Format 1: postcard varints, then the postcard payload, no schema.
        let mut v1 = postcard::to_allocvec(&(300_000u64, 1_750_000_000_123u64)).unwrap();
        v1.extend_from_slice(b"\x03abc");
        assert_eq!(
            decode_fields(FORMAT_V1, &v1),
            Some(Fields {
                head,
                schema: SCHEMA_V1,
                body: b"\x03abc"
            })
        );
        // The format 2 head is the same varints as format 1's.
        assert_eq!(out[FRAME_HEADER_LEN..FRAME_HEADER_LEN + 9], v1[..9]);
        assert_eq!(decode_fields(FORMAT_VERSION, &[0x80, 0x80]), None);
        assert_eq!(
            decode_fields(FORMAT_VERSION, &[1, 2, 0x80, 0x80, 0x04]),
            None
        );
    }

    #[test]
    fn varints_round_trip_and_reject_overlong_input() {
        for value in [
            0,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            out.push(0xEE);
            assert_eq!(take_varint(&out), Some((value, &[0xEE][..])), "{value}");
        }
        assert_eq!(take_varint(&[0xFF; 10]), None);
        assert_eq!(
            take_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x02]),
            None
        );
        assert_eq!(take_varint(&[0x80]), None);
        assert_eq!(take_varint(&[]), None);
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
    fn header_check_reads_formats_1_and_2_and_rejects_others() {
        let good = segment_header();
        assert_eq!(header_version(&good), Some(FORMAT_VERSION));
        let mut older = good;
        older[8] = 1;
        assert_eq!(header_version(&older), Some(FORMAT_V1));
        let mut newer = good;
        newer[8] = 3;
        assert_eq!(header_version(&newer), None);
        let mut other = good;
        other[0] = b'X';
        assert_eq!(header_version(&other), None);
        assert_eq!(header_version(&good[..10]), None);
    }
}
