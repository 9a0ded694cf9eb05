//! What a simulated feed looks like: universe size, activity skew, book depth, rate and bursts.

/// Knobs of the simulated market and of its tick schedule.
///
/// Two feeds built from equal configs produce equal tick content (symbol, seq, body), tick for
/// tick; only the timestamps depend on the clock they are stamped with.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Number of symbols traded (1 ..= 100 000). The first ~50 are real-looking pairs
    /// (`BTC-USD`, `ETH-USD`, …) in order of activity; the rest get generated names.
    pub symbols: usize,
    /// Total ticks per second over all symbols outside bursts (follow-up ticks included).
    pub rate: f64,
    /// Seed of every random draw: same seed and config, same stream.
    pub seed: u64,
    /// Zipf exponent of symbol activity: the symbol of rank `r` (index `r - 1`) gets a share
    /// proportional to `r^-zipf_s` of the events. 0 makes every symbol equally busy.
    pub zipf_s: f64,
    /// Price levels kept per side of each simulated book (1 ..= 1000).
    pub book_depth: usize,
    /// Mean seconds from the end of one burst to the start of the next (exponentially
    /// distributed). 0 disables bursts.
    pub burst_every_s: f64,
    /// Length of one burst, in milliseconds. 0 disables bursts.
    pub burst_len_ms: u64,
    /// Rate multiplier during a burst (>= 1).
    pub burst_mult: f64,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            symbols: 50,
            rate: 20_000.0,
            seed: 1,
            zipf_s: 1.1,
            book_depth: 25,
            burst_every_s: 5.0,
            burst_len_ms: 100,
            burst_mult: 10.0,
        }
    }
}

impl SimConfig {
    /// Largest universe a feed accepts.
    pub const MAX_SYMBOLS: usize = 100_000;
    /// Largest number of levels per book side.
    pub const MAX_BOOK_DEPTH: usize = 1000;
    /// Cap on `symbols × book_depth`, which bounds the memory of the simulated books
    /// (16 bytes per level, two sides: 10 M levels per side ≈ 320 MB at worst).
    pub const MAX_TOTAL_LEVELS: usize = 10_000_000;
    /// Fastest schedule, bursts included: one tick per nanosecond of virtual time.
    pub const MAX_PEAK_RATE: f64 = 1e9;
    /// Largest accepted Zipf exponent (beyond it every event is on symbol 0 anyway).
    pub const MAX_ZIPF_S: f64 = 10.0;
    /// Longest accepted burst.
    pub const MAX_BURST_LEN_MS: u64 = 3_600_000;
    /// Largest accepted burst multiplier.
    pub const MAX_BURST_MULT: f64 = 1000.0;

    /// Checks every knob; the error names the field, the accepted range and the value given.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=Self::MAX_SYMBOLS).contains(&self.symbols) {
            return Err(format!(
                "symbols must be between 1 and {}, got {}",
                Self::MAX_SYMBOLS,
                self.symbols
            ));
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(format!(
                "rate must be a positive number of ticks per second, got {}",
                self.rate
            ));
        }
        if !(self.zipf_s.is_finite() && (0.0..=Self::MAX_ZIPF_S).contains(&self.zipf_s)) {
            return Err(format!(
                "zipf_s must be between 0 (all symbols equally busy) and {}, got {}",
                Self::MAX_ZIPF_S,
                self.zipf_s
            ));
        }
        if !(1..=Self::MAX_BOOK_DEPTH).contains(&self.book_depth) {
            return Err(format!(
                "book_depth must be between 1 and {}, got {}",
                Self::MAX_BOOK_DEPTH,
                self.book_depth
            ));
        }
        if self.symbols.saturating_mul(self.book_depth) > Self::MAX_TOTAL_LEVELS {
            return Err(format!(
                "symbols × book_depth must be at most {} (memory of the simulated books), \
                 got {} × {}: lower one of them",
                Self::MAX_TOTAL_LEVELS,
                self.symbols,
                self.book_depth
            ));
        }
        if !(self.burst_every_s.is_finite() && self.burst_every_s >= 0.0) {
            return Err(format!(
                "burst_every_s must be 0 (no bursts) or a positive number of seconds, got {}",
                self.burst_every_s
            ));
        }
        if self.burst_len_ms > Self::MAX_BURST_LEN_MS {
            return Err(format!(
                "burst_len_ms must be at most {}, got {}",
                Self::MAX_BURST_LEN_MS,
                self.burst_len_ms
            ));
        }
        if !(self.burst_mult.is_finite() && (1.0..=Self::MAX_BURST_MULT).contains(&self.burst_mult))
        {
            return Err(format!(
                "burst_mult must be between 1 and {}, got {}",
                Self::MAX_BURST_MULT,
                self.burst_mult
            ));
        }
        if self.peak_rate() > Self::MAX_PEAK_RATE {
            return Err(format!(
                "rate × burst_mult must be at most {} ticks per second, got {}",
                Self::MAX_PEAK_RATE,
                self.peak_rate()
            ));
        }
        Ok(())
    }

    /// Whether the schedule has bursts at all.
    pub fn bursts_enabled(&self) -> bool {
        self.burst_every_s > 0.0 && self.burst_len_ms > 0 && self.burst_mult > 1.0
    }

    /// Ticks per second during a burst (the base rate when bursts are disabled).
    pub fn peak_rate(&self) -> f64 {
        if self.bursts_enabled() {
            self.rate * self.burst_mult
        } else {
            self.rate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(SimConfig::default().validate(), Ok(()));
    }

    #[test]
    fn bad_values_are_refused_with_the_field_named() {
        let d = SimConfig::default;
        let cases: Vec<(SimConfig, &str)> = vec![
            (SimConfig { symbols: 0, ..d() }, "symbols"),
            (SimConfig { symbols: 100_001, ..d() }, "symbols"),
            (SimConfig { rate: 0.0, ..d() }, "rate"),
            (SimConfig { rate: -5.0, ..d() }, "rate"),
            (SimConfig { rate: f64::NAN, ..d() }, "rate"),
            (SimConfig { rate: f64::INFINITY, ..d() }, "rate"),
            (SimConfig { zipf_s: -0.1, ..d() }, "zipf_s"),
            (SimConfig { zipf_s: f64::NAN, ..d() }, "zipf_s"),
            (SimConfig { zipf_s: 11.0, ..d() }, "zipf_s"),
            (SimConfig { book_depth: 0, ..d() }, "book_depth"),
            (SimConfig { book_depth: 1001, ..d() }, "book_depth"),
            (SimConfig { symbols: 100_000, book_depth: 1000, ..d() }, "symbols × book_depth"),
            (SimConfig { burst_every_s: -1.0, ..d() }, "burst_every_s"),
            (SimConfig { burst_len_ms: 3_600_001, ..d() }, "burst_len_ms"),
            (SimConfig { burst_mult: 0.5, ..d() }, "burst_mult"),
            (SimConfig { rate: 5e8, burst_mult: 10.0, ..d() }, "rate × burst_mult"),
        ];
        for (cfg, field) in cases {
            let err = cfg.validate().expect_err(field);
            assert!(err.starts_with(field), "{err:?} should name {field}");
        }
    }

    #[test]
    fn edges_are_accepted() {
        let d = SimConfig::default;
        for cfg in [
            SimConfig { symbols: 1, ..d() },
            SimConfig { symbols: 100_000, ..d() },
            SimConfig { zipf_s: 0.0, ..d() },
            SimConfig { book_depth: 1, ..d() },
            SimConfig { book_depth: 1000, ..d() },
            SimConfig { burst_every_s: 0.0, ..d() },
            SimConfig { burst_mult: 1.0, ..d() },
            SimConfig { rate: 5e8, burst_every_s: 0.0, ..d() },
        ] {
            assert_eq!(cfg.validate(), Ok(()), "{cfg:?}");
        }
        assert!(!SimConfig { burst_every_s: 0.0, ..d() }.bursts_enabled());
        assert!(!SimConfig { burst_len_ms: 0, ..d() }.bursts_enabled());
        assert!(SimConfig::default().bursts_enabled());
    }
}
