//! Read-back verification at locations derived from the controller's nonce.
//!
//! Sampling (NIST SP 800-88 r1 §4.7 style), per target of `size` bytes:
//!
//! 1. The target is cut into `N = ceil(size / block_bytes)` verification blocks (the last one may
//!    be shorter; every length stays a multiple of the direct-I/O alignment).
//! 2. If coverage is 100 %, or `N <= strata × locations + 2`, every block is read ("full").
//! 3. Otherwise block `0` and block `N-1` are read, and the blocks are split into `strata` strata
//!    `[s·N/S, (s+1)·N/S)`. In each stratum of `n` blocks, `k = locations` non-overlapping runs of
//!    `L` blocks are drawn uniformly (`L = 1`, or `ceil(coverage% · n / (100·k))` when a coverage
//!    is configured; a stratum that cannot hold `k` runs is read whole). Draw: `k` distinct
//!    values from `[0, n - k·(L-1))` by Floyd's algorithm, sorted, run `j` starting at
//!    `v_j + j·(L-1)`.
//!
//! Randomness is deterministic, so a re-verification (or an auditor holding the certificate)
//! derives the same locations: `seed = SHA-256("jex-erase-sample-v1\0" || len(nonce) as u64 BE ||
//! nonce || operation_id)`; draw `i` of stratum `s` of target `t` is the first 8 bytes (big-endian)
//! of `HMAC-SHA256(seed, t as u32 BE || s as u64 BE || i as u32 BE)`, mapped to `[0, m)` as
//! `(r · m) >> 64`.
//!
//! Each sampled range is read with direct I/O (never the page cache) and compared with the
//! pattern regenerated from the key; the first mismatch fails verification with its byte offset.
//! Reads go through the [`pipeline`](crate::pipeline): ranges are cut into pieces of at most
//! `read_bytes`, `queue_depth` reads are in flight, and each reading thread regenerates and
//! compares its piece (on up to `cpu_threads` cores at once) in cache-sized slices. With several
//! mismatches, the one in the lowest-numbered piece is reported (see the pipeline's ordering).

use ring::hmac;

use crate::error::EraseError;
use crate::pattern::Pattern;
use crate::pipeline::{Parallelism, run_jobs};
use jex_platform::blockdev::{AlignedBuf, TargetIdentity, TargetIo, check_identity};

/// Domain separation for the sample seed.
pub const SAMPLE_DOMAIN: &[u8] = b"jex-erase-sample-v1\0";

/// Expected pattern bytes generated at a time while comparing (fits a core's L2 cache).
const COMPARE_BYTES: usize = 256 << 10;

/// Read sizes and parallelism of one verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadSettings {
    /// Largest single read, bytes (multiple of the direct-I/O alignment).
    pub read_bytes: u64,
    /// Reads in flight and comparing threads.
    pub parallelism: Parallelism,
}

/// How to sample one target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleSettings {
    /// Strata per target.
    pub strata: u64,
    /// Non-overlapping random locations per stratum.
    pub locations_per_stratum: u32,
    /// Optional minimum share of each stratum to read, percent; 100 reads everything.
    pub coverage_percent: Option<f64>,
    /// Verification block size, bytes.
    pub block_bytes: u64,
}

/// The seed every sample of an operation is derived from.
#[derive(Clone)]
pub struct SampleSeed(hmac::Key);

impl std::fmt::Debug for SampleSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SampleSeed(...)")
    }
}

impl SampleSeed {
    /// `SHA-256("jex-erase-sample-v1\0" || len(nonce) || nonce || operation_id)` as an HMAC key.
    pub fn new(nonce: &[u8], operation_id: &str) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(SAMPLE_DOMAIN);
        ctx.update(&(nonce.len() as u64).to_be_bytes());
        ctx.update(nonce);
        ctx.update(operation_id.as_bytes());
        SampleSeed(hmac::Key::new(hmac::HMAC_SHA256, ctx.finish().as_ref()))
    }

    fn draw(&self, target: u32, stratum: u64, index: u32, bound: u64) -> u64 {
        let mut msg = [0u8; 16];
        msg[..4].copy_from_slice(&target.to_be_bytes());
        msg[4..12].copy_from_slice(&stratum.to_be_bytes());
        msg[12..].copy_from_slice(&index.to_be_bytes());
        let tag = hmac::sign(&self.0, &msg);
        let mut first = [0u8; 8];
        first.copy_from_slice(&tag.as_ref()[..8]);
        ((u128::from(u64::from_be_bytes(first)) * u128::from(bound)) >> 64) as u64
    }
}

/// A contiguous byte range to read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// Start offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The blocks of one target to read back.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplePlan {
    /// Sorted, non-overlapping, merged ranges.
    pub ranges: Vec<ByteRange>,
    /// Verification blocks covered.
    pub blocks: u64,
    /// Bytes covered.
    pub bytes: u64,
    /// Every block of the target is covered.
    pub full: bool,
}

/// Computes the sample of target number `target` (position in the operation) of `size` bytes.
/// `align` is the target's direct-I/O alignment; `settings.block_bytes` is rounded up to it.
pub fn sample_plan(
    seed: &SampleSeed,
    target: u32,
    size: u64,
    align: u64,
    settings: &SampleSettings,
) -> SamplePlan {
    let align = align.max(1);
    let block = settings.block_bytes.max(align).div_ceil(align) * align;
    let n = size.div_ceil(block);
    let strata = settings.strata.max(1);
    let k = u64::from(settings.locations_per_stratum.max(1));
    let coverage = settings.coverage_percent.unwrap_or(0.0);
    let mut blocks: Vec<(u64, u64)> = Vec::new(); // (first block, count)
    let full = coverage >= 100.0 || n <= strata.saturating_mul(k).saturating_add(2);
    if full {
        blocks.push((0, n));
    } else {
        blocks.push((0, 1));
        blocks.push((n - 1, 1));
        for s in 0..strata {
            let lo = s * n / strata;
            let hi = (s + 1) * n / strata;
            let width = hi - lo;
            let run = if coverage > 0.0 {
                ((coverage / 100.0) * width as f64 / k as f64)
                    .ceil()
                    .max(1.0) as u64
            } else {
                1
            };
            if k * run >= width {
                blocks.push((lo, width));
                continue;
            }
            let m = width - k * (run - 1);
            let mut chosen = floyd(seed, target, s, k, m);
            chosen.sort_unstable();
            for (j, v) in chosen.into_iter().enumerate() {
                blocks.push((lo + v + j as u64 * (run - 1), run));
            }
        }
    }
    // Merge block runs, then convert to byte ranges (the last block may be short).
    blocks.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(blocks.len());
    for (start, count) in blocks {
        match merged.last_mut() {
            Some((s, c)) if start <= *s + *c => *c = (*c).max(start + count - *s),
            _ => merged.push((start, count)),
        }
    }
    let ranges: Vec<ByteRange> = merged
        .iter()
        .map(|(start, count)| {
            let offset = start * block;
            let end = ((start + count) * block).min(size);
            ByteRange {
                offset,
                len: end - offset,
            }
        })
        .collect();
    SamplePlan {
        blocks: merged.iter().map(|(_, c)| c).sum(),
        bytes: ranges.iter().map(|r| r.len).sum(),
        ranges,
        full,
    }
}

/// Floyd's algorithm: `k` distinct values from `[0, m)`, `k <= m`.
fn floyd(seed: &SampleSeed, target: u32, stratum: u64, k: u64, m: u64) -> Vec<u64> {
    let mut chosen: Vec<u64> = Vec::with_capacity(k as usize);
    for (i, j) in (m - k..m).enumerate() {
        let t = seed.draw(target, stratum, i as u32, j + 1);
        let pick = if chosen.contains(&t) { j } else { t };
        chosen.push(pick);
    }
    chosen
}

/// What a verification read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyReport {
    /// Bytes read and compared.
    pub bytes: u64,
}

/// Reads back `plan` from `io` and compares it with `pattern`. Calls `progress` with the bytes
/// verified so far. Fails on the first mismatch (with its offset), any read error, or an
/// identity change (checked before and after the reads).
pub fn verify_target(
    target_name: &str,
    io: &dyn TargetIo,
    pinned: &TargetIdentity,
    pattern: &Pattern,
    plan: &SamplePlan,
    settings: &ReadSettings,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport, EraseError> {
    let identity_err = |source| EraseError::Identity {
        target: target_name.to_owned(),
        source,
    };
    check_identity(io, pinned).map_err(identity_err)?;
    let align = io.io_align().max(1);
    let step = settings.read_bytes.max(align).div_ceil(align) * align;
    let buf_len = plan
        .ranges
        .iter()
        .map(|r| r.len)
        .max()
        .unwrap_or(0)
        .min(step);
    if buf_len == 0 {
        return Ok(VerifyReport { bytes: 0 });
    }
    // first_piece[i]: number of pieces in ranges before range i.
    let mut first_piece = Vec::with_capacity(plan.ranges.len());
    let mut pieces = 0u64;
    for range in &plan.ranges {
        first_piece.push(pieces);
        pieces += range.len.div_ceil(step);
    }
    let piece = |job: u64| {
        let index = first_piece.partition_point(|first| *first <= job) - 1;
        let range = plan.ranges[index];
        let offset = range.offset + (job - first_piece[index]) * step;
        (
            offset,
            (range.offset + range.len - offset).min(step) as usize,
        )
    };
    let mut done = 0u64;
    run_jobs(
        pieces,
        settings.parallelism,
        // Nothing is journaled during verification: the prefix only bounds the bookkeeping.
        4 * settings.parallelism.queue_depth.max(1) as u64,
        || {
            (
                AlignedBuf::new(buf_len as usize),
                vec![0u8; COMPARE_BYTES.min(buf_len as usize)],
            )
        },
        |(buf, expected), permits, job| {
            let (offset, len) = piece(job);
            io.read_at(offset, &mut buf[..len])
                .map_err(|source| EraseError::Read {
                    target: target_name.to_owned(),
                    path: io.path().to_path_buf(),
                    offset,
                    source,
                })?;
            let slice = expected.len();
            let mismatch = permits.run(|| {
                buf[..len]
                    .chunks(slice)
                    .enumerate()
                    .find_map(|(i, actual)| {
                        pattern.first_mismatch(offset + (i * slice) as u64, actual, expected)
                    })
            });
            match mismatch {
                Some(offset) => Err(EraseError::Mismatch {
                    target: target_name.to_owned(),
                    path: io.path().to_path_buf(),
                    offset,
                }),
                None => Ok(len as u64),
            }
        },
        &mut |bytes| {
            done += bytes;
            progress(done);
        },
        &mut |_| Ok(()),
    )?;
    // What was read must still be the pinned target.
    check_identity(io, pinned).map_err(identity_err)?;
    Ok(VerifyReport { bytes: done })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settings(strata: u64, k: u32, coverage: Option<f64>, block: u64) -> SampleSettings {
        SampleSettings {
            strata,
            locations_per_stratum: k,
            coverage_percent: coverage,
            block_bytes: block,
        }
    }

    fn block_starts(plan: &SamplePlan, block: u64) -> Vec<u64> {
        plan.ranges
            .iter()
            .flat_map(|r| (0..r.len.div_ceil(block)).map(move |i| r.offset / block + i))
            .collect()
    }

    #[test]
    fn default_sample_has_two_distinct_blocks_per_stratum_plus_first_and_last() {
        let seed = SampleSeed::new(&[7u8; 32], "op-1");
        let block = 1 << 20;
        let size = 10_000 * block; // 10 000 blocks, 1000 strata of 10
        let plan = sample_plan(&seed, 0, size, 4096, &settings(1000, 2, None, block));
        assert!(!plan.full);
        let starts = block_starts(&plan, block);
        assert!(starts.contains(&0) && starts.contains(&9_999));
        for s in 0..1000u64 {
            let in_stratum = starts
                .iter()
                .filter(|b| **b >= s * 10 && **b < (s + 1) * 10)
                .count();
            // Two sampled blocks, plus block 0 / 9999 in the first / last stratum.
            let extra = usize::from(s == 0 && !starts[1..].contains(&0)) + usize::from(s == 999);
            assert!(
                in_stratum >= 2 && in_stratum <= 2 + extra + 1,
                "stratum {s}: {in_stratum}"
            );
        }
        assert_eq!(plan.bytes, plan.blocks * block);
        assert!(plan.blocks >= 2000 && plan.blocks <= 2002);
    }

    #[test]
    fn the_sample_is_deterministic_in_the_nonce_and_operation() {
        let s = settings(100, 2, None, 4096);
        let size = 4096 * 100_000;
        let a = sample_plan(&SampleSeed::new(&[1u8; 32], "op"), 0, size, 4096, &s);
        let b = sample_plan(&SampleSeed::new(&[1u8; 32], "op"), 0, size, 4096, &s);
        let c = sample_plan(&SampleSeed::new(&[2u8; 32], "op"), 0, size, 4096, &s);
        let d = sample_plan(&SampleSeed::new(&[1u8; 32], "op2"), 0, size, 4096, &s);
        let e = sample_plan(&SampleSeed::new(&[1u8; 32], "op"), 1, size, 4096, &s);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_ne!(a, e);
    }

    #[test]
    fn small_targets_and_full_coverage_read_every_block() {
        let seed = SampleSeed::new(&[0u8; 32], "op");
        let small = sample_plan(&seed, 0, 2002 * 4096, 4096, &settings(1000, 2, None, 4096));
        assert!(small.full);
        assert_eq!(
            small.ranges,
            vec![ByteRange {
                offset: 0,
                len: 2002 * 4096
            }]
        );
        let big = 1 << 34;
        let all = sample_plan(
            &seed,
            0,
            big,
            4096,
            &settings(1000, 2, Some(100.0), 1 << 20),
        );
        assert!(all.full);
        assert_eq!(all.bytes, big);
    }

    #[test]
    fn coverage_percent_sets_the_share_read_back_and_runs_do_not_overlap() {
        let seed = SampleSeed::new(&[3u8; 32], "op");
        let block = 64 * 1024;
        let size = 200_000 * block;
        let plan = sample_plan(&seed, 0, size, 4096, &settings(1000, 2, Some(10.0), block));
        let share = plan.bytes as f64 / size as f64 * 100.0;
        assert!((10.0..10.5).contains(&share), "coverage {share}");
        for pair in plan.ranges.windows(2) {
            assert!(
                pair[0].offset + pair[0].len < pair[1].offset,
                "ranges merged and disjoint"
            );
        }
        assert!(plan.ranges.iter().all(|r| r.offset % block == 0));
    }

    #[test]
    fn a_short_last_block_stays_inside_the_target() {
        let seed = SampleSeed::new(&[9u8; 32], "op");
        let block = 1 << 20;
        let size = 5000 * block + 8192;
        let plan = sample_plan(&seed, 0, size, 4096, &settings(1000, 2, None, block));
        let last = plan.ranges.last().unwrap();
        assert_eq!(last.offset + last.len, size);
        assert_eq!(last.len % 4096, 0);
    }

    #[test]
    fn floyd_draws_distinct_values_in_range() {
        let seed = SampleSeed::new(&[5u8; 32], "op");
        for (k, m) in [(1, 1), (2, 2), (2, 3), (5, 9), (20, 1000)] {
            for s in 0..50 {
                let mut v = floyd(&seed, 0, s, k, m);
                assert!(v.iter().all(|x| *x < m));
                v.sort_unstable();
                v.dedup();
                assert_eq!(v.len() as u64, k);
            }
        }
    }
}
