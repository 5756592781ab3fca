//! The last lines of the agent's JSON log, across `agent.log` and its rotations
//! (`agent.log.1` … `agent.log.N`, newest first: see [`crate::logging`]), read from the end of
//! each file in chunks so that a large log is never loaded whole.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::logging::LOG_FILE;

/// How much is read from a file at a time, from its end backwards.
const CHUNK: u64 = 64 * 1024;

/// What [`tail`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// The lines, oldest first, each ended by a newline.
    pub text: Vec<u8>,
    /// How many lines `text` holds.
    pub lines: usize,
    /// The files they came from, newest first.
    pub files: Vec<PathBuf>,
    /// The byte cap cut the tail short of the lines asked for.
    pub capped: bool,
}

/// The log files of `dir`, newest first: `agent.log`, then `agent.log.1`, `agent.log.2`, … as
/// long as they exist (at most `max_rotated` of them).
pub fn log_files(dir: &Path, max_rotated: u32) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let current = dir.join(LOG_FILE);
    if current.is_file() {
        files.push(current);
    }
    for n in 1..=max_rotated {
        let rotated = dir.join(format!("{LOG_FILE}.{n}"));
        if !rotated.is_file() {
            break;
        }
        files.push(rotated);
    }
    files
}

/// The last `max_lines` lines of `files` (newest file first), at most `max_bytes` of them: the
/// newest file is read from its end, then the one before it, until enough lines are found.
pub fn tail(files: &[PathBuf], max_lines: usize, max_bytes: usize) -> std::io::Result<Tail> {
    // Newest first; each entry is whole lines of one file, oldest first.
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut used = Vec::new();
    let mut lines = 0;
    let mut bytes = 0;
    let mut capped = false;
    for path in files {
        if lines >= max_lines || capped {
            break;
        }
        let (part, n, cut) = last_lines(path, max_lines - lines, max_bytes - bytes)?;
        if n > 0 {
            used.push(path.clone());
            lines += n;
            bytes += part.len();
            parts.push(part);
        }
        capped = cut;
    }
    let mut text = Vec::with_capacity(bytes);
    for part in parts.iter().rev() {
        text.extend_from_slice(part);
    }
    Ok(Tail {
        text,
        lines,
        files: used,
        capped,
    })
}

/// The last (at most) `want` lines of one file and at most `max_bytes`, each ended by a newline
/// (a last line still being written gets one); how many; and whether the byte cap stopped it.
fn last_lines(
    path: &Path,
    want: usize,
    max_bytes: usize,
) -> std::io::Result<(Vec<u8>, usize, bool)> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut pos = len;
    // Chunks read, last chunk of the file first.
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut read = 0usize;
    let mut newlines = 0usize;
    let mut capped = false;
    // One more newline than lines wanted: the one that ends the line before the first kept.
    while pos > 0 && newlines <= want {
        if read >= max_bytes.saturating_add(1) {
            capped = true;
            break;
        }
        let step = CHUNK.min(pos);
        pos -= step;
        file.seek(SeekFrom::Start(pos))?;
        let mut chunk = vec![0; usize::try_from(step).unwrap_or(usize::MAX)];
        file.read_exact(&mut chunk)?;
        newlines += chunk.iter().filter(|b| **b == b'\n').count();
        read += chunk.len();
        chunks.push(chunk);
    }
    let mut data = Vec::with_capacity(read + 1);
    for chunk in chunks.iter().rev() {
        data.extend_from_slice(chunk);
    }
    if data.last().is_some_and(|b| *b != b'\n') {
        data.push(b'\n');
    }
    // `data` ends with a newline; line starts are after every other newline (and at 0 when the
    // file was read from its start).
    let mut starts: Vec<usize> = data[..data.len().saturating_sub(1)]
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .collect();
    if pos == 0 && !data.is_empty() {
        starts.insert(0, 0);
    }
    // Keep the last `want` line starts, then drop whole lines from the front until under the cap.
    let mut first = starts.len().saturating_sub(want);
    while first < starts.len() && data.len() - starts[first] > max_bytes {
        first += 1;
        capped = true;
    }
    let Some(&start) = starts.get(first) else {
        return Ok((Vec::new(), 0, capped));
    };
    Ok((data[start..].to_vec(), starts.len() - first, capped))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn numbered(from: usize, to: usize) -> String {
        (from..to).map(|i| format!("{{\"line\":{i}}}\n")).collect()
    }

    #[test]
    fn takes_the_newest_lines_across_the_current_and_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        // agent.log.2 oldest, then .1, then the current file.
        std::fs::write(dir.path().join("agent.log.2"), numbered(0, 3000)).unwrap();
        std::fs::write(dir.path().join("agent.log.1"), numbered(3000, 4500)).unwrap();
        std::fs::write(dir.path().join("agent.log"), numbered(4500, 5000)).unwrap();
        // A gap in the rotation numbers ends the list.
        std::fs::write(dir.path().join("agent.log.4"), "stray\n").unwrap();
        let files = log_files(dir.path(), 5);
        assert_eq!(
            files,
            ["agent.log", "agent.log.1", "agent.log.2"].map(|f| dir.path().join(f))
        );
        let t = tail(&files, 2000, 16 << 20).unwrap();
        assert_eq!(t.lines, 2000);
        assert!(!t.capped);
        assert_eq!(String::from_utf8(t.text).unwrap(), numbered(3000, 5000));
        assert_eq!(t.files, files[..2]);

        // Reaching into the third file, with a line longer than one read chunk.
        let long = format!("{{\"long\":\"{}\"}}\n", "x".repeat(200_000));
        std::fs::write(
            dir.path().join("agent.log.1"),
            format!("{}{long}", numbered(3000, 3010)),
        )
        .unwrap();
        let t = tail(&files, 2000, 16 << 20).unwrap();
        assert_eq!(t.lines, 2000);
        let expected = format!(
            "{}{}{long}{}",
            numbered(1511, 3000),
            numbered(3000, 3010),
            numbered(4500, 5000)
        );
        assert_eq!(String::from_utf8(t.text).unwrap(), expected);
        assert_eq!(t.files, files);
    }

    #[test]
    fn a_short_log_is_taken_whole_and_a_last_partial_line_is_ended() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.log"), "a\nb\nc-partial").unwrap();
        let files = log_files(dir.path(), 5);
        let t = tail(&files, 2000, 1 << 20).unwrap();
        assert_eq!(t.text, b"a\nb\nc-partial\n");
        assert_eq!(t.lines, 3);
        let none = tail(&log_files(&dir.path().join("missing"), 5), 2000, 1 << 20).unwrap();
        assert_eq!((none.lines, none.text.len()), (0, 0));
    }

    #[test]
    fn the_byte_cap_keeps_whole_newest_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.log"), numbered(0, 1000)).unwrap();
        let files = log_files(dir.path(), 5);
        let line = "{\"line\":999}\n".len();
        let t = tail(&files, 2000, 3 * line + 5).unwrap();
        assert!(t.capped);
        assert_eq!(String::from_utf8(t.text).unwrap(), numbered(997, 1000));
        assert_eq!(t.lines, 3);
    }
}
