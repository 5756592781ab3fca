//! The seeded generator every synthetic figure comes from: splitmix64, a few lines whose
//! output is fixed forever (unlike a library generator's, which may change between versions),
//! so a seed and a host index name the same fleet and the same telemetry on every build.

/// A splitmix64 generator.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator for `stream` of `seed` (e.g. the host index): streams of one seed are
    /// independent.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut mix = SplitMix(seed ^ 0x6A09_E667_F3BC_C908);
        let a = mix.next_u64();
        SplitMix(a ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0.0..1.0`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A number in `-1.0..1.0`.
    pub fn signed(&mut self) -> f64 {
        self.unit() * 2.0 - 1.0
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len() as u64) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_and_stream_same_numbers_other_stream_other_numbers() {
        let a: Vec<u64> = (0..8)
            .scan(SplitMix::new(7, 3), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..8)
            .scan(SplitMix::new(7, 3), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..8)
            .scan(SplitMix::new(7, 4), |r, _| Some(r.next_u64()))
            .collect();
        let d: Vec<u64> = (0..8)
            .scan(SplitMix::new(8, 3), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn ranges_hold() {
        let mut r = SplitMix::new(1, 1);
        for _ in 0..10_000 {
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            let s = r.signed();
            assert!((-1.0..1.0).contains(&s));
            assert!(r.below(7) < 7);
        }
        assert_eq!(r.below(0), 0);
    }
}
