//! When ticks are due, in virtual time: a steady base rate with bursts of a higher rate.
//!
//! Virtual time is nanoseconds since the feed's start; the first tick is due at 0. Outside
//! bursts ticks are `1 / rate` apart, inside `1 / (rate × burst_mult)`. Burst starts follow a
//! Poisson process: the quiet time from the end of one burst to the start of the next is
//! exponential with mean `burst_every_s`. A tick straddling a rate change is paid for at both
//! rates pro rata, so the schedule is exactly the integral of the rate.
//!
//! Due times are computed as `anchor + k × period` within a run of constant rate (not by adding
//! up periods), so no rounding error accumulates over long runs. The burst draws come from
//! their own RNG stream: the schedule never perturbs tick content.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp1};

use crate::config::SimConfig;

/// Salt of the burst RNG stream (distinct from the content stream of the same seed).
const BURST_SALT: u64 = 0x9E37_79B9_7F4A_7C15;

/// The tick schedule of a feed.
#[derive(Clone, Debug)]
pub(crate) struct Schedule {
    /// Tick spacing outside bursts, ns.
    base_period: f64,
    /// Tick spacing inside bursts, ns.
    burst_period: f64,
    /// Length of a burst, ns.
    burst_len: f64,
    /// Mean quiet time between bursts, ns; `None` when bursts are disabled.
    mean_quiet: Option<f64>,
    /// Draws the quiet times.
    rng: ChaCha8Rng,
    /// Virtual time of tick 0 of the current constant-rate run.
    anchor: f64,
    /// Index, within the current run, of the next due tick.
    k: u64,
    /// Tick spacing of the current run.
    period: f64,
    /// Whether the current run is a burst.
    in_burst: bool,
    /// Virtual time of the next rate change (infinite without bursts).
    boundary: f64,
    /// Bursts started so far.
    bursts: u64,
}

impl Schedule {
    pub(crate) fn new(cfg: &SimConfig) -> Schedule {
        let base_period = 1e9 / cfg.rate;
        let mean_quiet = cfg.bursts_enabled().then_some(cfg.burst_every_s * 1e9);
        let mut s = Schedule {
            base_period,
            burst_period: base_period / cfg.burst_mult,
            burst_len: cfg.burst_len_ms as f64 * 1e6,
            mean_quiet,
            rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ BURST_SALT),
            anchor: 0.0,
            k: 0,
            period: base_period,
            in_burst: false,
            boundary: f64::INFINITY,
            bursts: 0,
        };
        s.boundary = s.quiet_time();
        s
    }

    /// A quiet time between bursts, ns (infinite without bursts).
    fn quiet_time(&mut self) -> f64 {
        match self.mean_quiet {
            Some(mean) => {
                let x: f64 = Exp1.sample(&mut self.rng);
                x * mean
            }
            None => f64::INFINITY,
        }
    }

    fn due(&self) -> f64 {
        self.anchor + self.k as f64 * self.period
    }

    /// Virtual time at which the next tick is due, ns.
    pub(crate) fn next_due_ns(&self) -> u64 {
        self.due().round() as u64
    }

    /// Whether the next tick falls inside a burst.
    pub(crate) fn in_burst(&self) -> bool {
        self.in_burst
    }

    /// Bursts started so far (including the current one).
    pub(crate) fn bursts(&self) -> u64 {
        self.bursts
    }

    /// Moves on by one tick.
    pub(crate) fn advance(&mut self) {
        let mut last = self.due();
        // Fraction of one tick's spacing still to cover, at the current rate.
        let mut need = 1.0;
        let mut crossed = false;
        loop {
            let cand = last + need * self.period;
            if cand < self.boundary {
                if crossed {
                    self.anchor = cand;
                    self.k = 0;
                } else {
                    self.k += 1;
                }
                return;
            }
            need = (need - (self.boundary - last) / self.period).max(0.0);
            last = self.boundary;
            crossed = true;
            self.toggle_burst();
        }
    }

    /// Switches between quiet and burst at `self.boundary`.
    fn toggle_burst(&mut self) {
        if self.in_burst {
            self.in_burst = false;
            self.period = self.base_period;
            self.boundary += self.quiet_time();
        } else {
            self.in_burst = true;
            self.bursts += 1;
            self.period = self.burst_period;
            self.boundary += self.burst_len;
        }
    }

    /// Drops every tick due before `t` (ns), as if they had been emitted, and returns how many.
    /// Cost is per rate change crossed, not per tick.
    pub(crate) fn skip_until(&mut self, t: u64) -> u64 {
        // `next_due_ns()` rounds: it is below `t` exactly when the unrounded due time is below
        // `t - 0.5`.
        let t = t as f64 - 0.5;
        let mut skipped = 0;
        while self.due() < t {
            // Jump to the last tick of this run before `t` (or before the rate change, if that
            // comes first), then step over it so that `advance` handles any rate change.
            let limit = t.min(self.boundary);
            let mut last = (((limit - self.anchor) / self.period).ceil() as u64).saturating_sub(1);
            while last > self.k && self.anchor + last as f64 * self.period >= limit {
                last -= 1;
            }
            if last > self.k {
                skipped += last - self.k;
                self.k = last;
            }
            self.advance();
            skipped += 1;
        }
        skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate: f64, burst_every_s: f64) -> SimConfig {
        SimConfig { rate, burst_every_s, ..SimConfig::default() }
    }

    #[test]
    fn steady_rate_without_bursts() {
        let mut s = Schedule::new(&cfg(1000.0, 0.0));
        assert_eq!(s.next_due_ns(), 0);
        for k in 1..=100_000u64 {
            s.advance();
            assert_eq!(s.next_due_ns(), k * 1_000_000, "tick {k}");
        }
        assert_eq!(s.bursts(), 0);
    }

    #[test]
    fn odd_rates_do_not_drift() {
        let mut s = Schedule::new(&cfg(3.0, 0.0));
        for _ in 0..3_000_000 {
            s.advance();
        }
        assert_eq!(s.next_due_ns(), 1_000_000_000_000_000);
    }

    /// Ticks in the first `secs` of virtual time.
    fn ticks_in(s: &mut Schedule, secs: u64) -> u64 {
        let mut n = 0;
        while s.next_due_ns() < secs * 1_000_000_000 {
            s.advance();
            n += 1;
        }
        n
    }

    #[test]
    fn bursts_raise_the_average_rate_within_bounds() {
        let c = cfg(1000.0, 5.0);
        let mut s = Schedule::new(&c);
        let n = ticks_in(&mut s, 60);
        let rate = n as f64 / 60.0;
        assert!(rate > 1000.0 && rate < 10_000.0, "{rate}");
        assert!(s.bursts() >= 3, "{} bursts in 60 s at one per ~5 s", s.bursts());
        // Each burst adds (mult - 1) × rate × len ticks: 900 at these settings.
        let extra = n as f64 - 60_000.0;
        let per_burst = extra / s.bursts() as f64;
        assert!((700.0..=1000.0).contains(&per_burst), "{per_burst} extra ticks per burst");
    }

    #[test]
    fn burst_schedule_depends_on_the_seed_only() {
        let c = cfg(1000.0, 1.0);
        let (mut a, mut b) = (Schedule::new(&c), Schedule::new(&c));
        let mut other = Schedule::new(&SimConfig { seed: 2, ..c.clone() });
        let mut differ = false;
        for _ in 0..100_000 {
            a.advance();
            b.advance();
            other.advance();
            assert_eq!(a.next_due_ns(), b.next_due_ns());
            differ |= a.next_due_ns() != other.next_due_ns();
        }
        assert!(differ);
    }

    #[test]
    fn due_times_never_go_backwards() {
        let c =
            SimConfig { rate: 7.0, burst_every_s: 0.3, burst_len_ms: 50, ..SimConfig::default() };
        let mut s = Schedule::new(&c);
        let mut last = s.next_due_ns();
        for _ in 0..100_000 {
            s.advance();
            assert!(s.next_due_ns() >= last);
            last = s.next_due_ns();
        }
        assert!(s.bursts() > 100);
    }

    #[test]
    fn skipping_equals_stepping() {
        for every in [0.0, 0.05, 2.0] {
            let c = SimConfig { rate: 500.0, burst_every_s: every, ..SimConfig::default() };
            let (mut stepped, mut skipped) = (Schedule::new(&c), Schedule::new(&c));
            for t in [1u64, 999_999_999, 3_000_000_000, 3_000_000_001, 60_000_000_000] {
                let mut n = 0;
                while stepped.next_due_ns() < t {
                    stepped.advance();
                    n += 1;
                }
                let m = skipped.skip_until(t);
                assert_eq!(m, n, "every {every}, until {t}");
                assert_eq!(skipped.next_due_ns(), stepped.next_due_ns());
                assert_eq!(skipped.bursts(), stepped.bursts());
            }
            assert_eq!(skipped.skip_until(0), 0);
        }
    }
}
