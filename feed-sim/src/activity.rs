//! Which symbol the next market event is on: a Zipf law over symbol ranks.
//!
//! The law is tabulated once (cumulative shares as 64-bit thresholds) and sampled with one
//! `u64` draw and a binary search. Compared with rejection sampling (`rand_distr::Zipf`) this
//! is exact for a finite universe, costs one random draw per event, and keeps per-event
//! sampling free of floating-point maths, so a seed gives the same symbol sequence on every
//! platform.

use rand::RngCore;

/// Cumulative Zipf table over `n` symbols: symbol index `i` has rank `i + 1`.
#[derive(Clone, Debug)]
pub(crate) struct Activity {
    /// `thresholds[i]` = P(index <= i) scaled to 2^64, non-decreasing; the last is `u64::MAX`.
    thresholds: Vec<u64>,
}

impl Activity {
    /// Tabulates Zipf(`n`, `s`): P(rank r) = r^-s / Σ_{k=1..n} k^-s. Needs `n >= 1`, `s >= 0`.
    pub(crate) fn new(n: usize, s: f64) -> Activity {
        assert!(n >= 1 && s >= 0.0, "Zipf needs n >= 1 and s >= 0");
        let weights: Vec<f64> = (1..=n).map(|r| (r as f64).powf(-s)).collect();
        let total: f64 = weights.iter().sum();
        let scale = 2f64.powi(64);
        let mut cum = 0.0;
        let mut thresholds: Vec<u64> = weights
            .iter()
            .map(|w| {
                cum += w;
                // `as` saturates: a share that rounds to 1.0 becomes u64::MAX.
                (cum / total * scale) as u64
            })
            .collect();
        *thresholds.last_mut().expect("n >= 1") = u64::MAX;
        Activity { thresholds }
    }

    /// Draws a symbol index (0-based; rank - 1).
    pub(crate) fn sample<R: RngCore>(&self, rng: &mut R) -> usize {
        let u = rng.next_u64();
        // First index whose cumulative threshold lies above the draw.
        self.thresholds.partition_point(|&t| t <= u).min(self.thresholds.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn shares(n: usize, s: f64, draws: usize) -> Vec<f64> {
        let a = Activity::new(n, s);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut counts = vec![0usize; n];
        for _ in 0..draws {
            counts[a.sample(&mut rng)] += 1;
        }
        counts.iter().map(|&c| c as f64 / draws as f64).collect()
    }

    #[test]
    fn one_symbol_always_wins() {
        assert_eq!(shares(1, 1.1, 1000), vec![1.0]);
    }

    #[test]
    fn follows_the_zipf_law() {
        let (n, s) = (20, 1.1);
        let h: f64 = (1..=n).map(|r| (r as f64).powf(-s)).sum();
        for (i, got) in shares(n, s, 200_000).into_iter().enumerate() {
            let want = ((i + 1) as f64).powf(-s) / h;
            assert!((got - want).abs() < 0.005 + want * 0.05, "rank {}: {got} vs {want}", i + 1);
        }
    }

    #[test]
    fn zero_exponent_is_uniform() {
        for got in shares(10, 0.0, 100_000) {
            assert!((got - 0.1).abs() < 0.01, "{got}");
        }
    }

    #[test]
    fn steep_law_puts_everything_on_the_first_ranks() {
        let sh = shares(100_000, 10.0, 10_000);
        assert!(sh[0] > 0.99, "{}", sh[0]);
    }
}
