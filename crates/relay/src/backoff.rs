//! Jittered exponential backoff between reconnects (and remote_write retries): the delay
//! doubles from `min` up to `max`, and each wait is drawn uniformly from the upper half of the
//! current delay, so that relays and hosts that failed together do not retry in step.

use std::time::Duration;

/// A backoff sequence.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`, never above `max` (`max` is raised to `min` if below it).
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The next wait: in `[d/2, d]` for the current delay `d`, which then doubles (up to max).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        let half = d / 2;
        let jitter = rand::random_range(0..=half.as_micros().min(u128::from(u64::MAX)) as u64);
        half + Duration::from_micros(jitter)
    }

    /// Back to `min` (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_bounds_and_double() {
        let min = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        let mut b = Backoff::new(min, max);
        let mut ceiling = min;
        for _ in 0..50 {
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            assert!(d <= max);
            ceiling = (ceiling * 2).min(max);
        }
        b.reset();
        let d = b.next_delay();
        assert!(d >= min / 2 && d <= min, "{d:?}");
    }

    #[test]
    fn draws_differ() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(10));
            seen.insert(b.next_delay());
        }
        assert!(seen.len() > 1, "no jitter: {seen:?}");
    }

    #[test]
    fn a_max_below_min_is_min() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_millis(10));
        for _ in 0..5 {
            assert!(b.next_delay() <= Duration::from_millis(200));
        }
    }
}
