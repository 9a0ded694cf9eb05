//! A deterministic simulated exchange feed: the tick source of tickfan.
//!
//! [`Feed`] produces a stream of [`Tick`]s — trades, top-of-book quotes and L2 book deltas —
//! for a universe of `S` symbols whose activity follows a Zipf law, at a configured rate with
//! random bursts. The gateway embeds it (its default mode needs nothing else running); the
//! `feed-sim` binary writes the same stream as NDJSON on stdout.
//!
//! What you can rely on:
//! - **Determinism.** Tick content (symbol, seq, body) depends only on the [`SimConfig`] and on
//!   how many ticks were drawn, never on wall-clock time: two feeds with the same config agree
//!   tick for tick. Timestamps are the caller's (or the virtual clock's, see
//!   [`VIRTUAL_EPOCH_NS`]).
//! - **Protocol rules.** `seq` starts at 1 on every channel and increases by exactly 1, even
//!   when pacing drops schedule slots. Prices and sizes are integer mantissas in each symbol's
//!   scale.
//! - **A consistent market.** Books are never crossed and hold only positive sizes; a trade is
//!   at the best opposite price for at most its size; its book delta follows it; every delta
//!   that changes the best bid or ask is followed by the quote of the new top. A symbol's first
//!   book delta lists its whole book, so replaying `book.<SYM>` from seq 1 rebuilds it.
//!
//! What this crate is not: a matching engine (there are no orders or queue priorities; trades
//! are drawn from the book, not matched), a replay of real market data, or a transport (it
//! hands out ticks; the gateway encodes and fans them out; [`nats::NatsSink`] publishes them to
//! NATS for gateways that scale out).
//!
//! ```
//! use feed_sim::{Feed, SimConfig};
//!
//! let mut feed = Feed::new(SimConfig { symbols: 3, ..SimConfig::default() });
//! let tick = feed.next_tick_virtual();
//! assert_eq!(tick.seq, 1);
//! assert_eq!(feed.symbols().get(tick.sym).name, "BTC-USD");
//! ```

mod activity;
mod book;
mod config;
mod market;
pub mod nats;
mod schedule;
mod symbols;

/// Where a publisher writes ticks, batch by batch: stdout as NDJSON (the `feed-sim` binary)
/// or NATS ([`nats::NatsSink`]).
pub trait Sink {
    fn write(&mut self, tick: &Tick) -> std::io::Result<()>;
    /// Ends a batch.
    fn flush(&mut self) -> std::io::Result<()>;
}

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tickfan_proto::tick::SymbolIdx;
use tickfan_proto::{unix_now_ns, Level, SymbolTable, Tick};

pub use config::SimConfig;

use book::BookSide;
use market::Market;
use schedule::Schedule;

/// Unix time (ns) that the virtual clock calls zero: 2025-11-25T00:00:00Z.
pub const VIRTUAL_EPOCH_NS: u64 = 1_764_028_800_000_000_000;

/// Longest single sleep of the paced loop, so that `stop` is noticed within about this long.
const MAX_SLEEP: Duration = Duration::from_millis(50);
/// A paced feed further behind its schedule than this skips ahead instead of catching up.
const MAX_LAG_NS: u64 = 1_000_000_000;
/// Most ticks handed to one `on_batch` call; a larger backlog is handed out in several.
const MAX_BATCH: usize = 4096;

/// What stamps the `ts` of ticks in a paced run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Clock {
    /// The system clock at emission, Unix ns: what latency is measured from.
    #[default]
    Real,
    /// [`VIRTUAL_EPOCH_NS`] + the tick's due time in the schedule: reproducible bytes.
    Virtual,
}

/// How [`Feed::run_paced_with`] paces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PaceOptions {
    /// Clock that stamps the ticks.
    pub clock: Clock,
    /// Shortest time between two batches. 0 (the default) wakes up exactly when the next tick
    /// is due; a millisecond or so trades that much added delay for far fewer wake-ups of the
    /// feed thread and of whatever each batch wakes downstream.
    pub min_batch_interval: Duration,
    /// Stamp each tick with the simulated exchange's event time (`et`) too: when its event was
    /// due in the schedule, mapped onto the same clock as `ts`. With the real clock `et` is up
    /// to a batch interval before `ts` (the time the batch was made), as a venue's matching
    /// time is before its gateway's publish time.
    pub event_time: bool,
}

/// What a paced run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacedStats {
    /// Ticks handed to `on_batch`.
    pub ticks: u64,
    /// Calls of `on_batch` (never with an empty batch).
    pub batches: u64,
    /// Schedule slots dropped because the consumer fell more than 1 s behind. No tick content
    /// was generated for them, so seqs stay continuous.
    pub skipped: u64,
}

/// A simulated feed: the market, its tick schedule and the per-channel seqs.
///
/// ```
/// use feed_sim::{Feed, SimConfig};
///
/// let cfg = SimConfig { symbols: 10, rate: 1000.0, burst_every_s: 0.0, ..SimConfig::default() };
/// let mut feed = Feed::new(cfg);
/// for _ in 0..5 {
///     let due = feed.next_due_ns();
///     let tick = feed.next_tick(feed_sim::VIRTUAL_EPOCH_NS + due);
///     assert!(tick.seq >= 1);
/// }
/// assert_eq!(feed.next_due_ns(), 5_000_000); // 5 ticks at 1000/s
/// ```
#[derive(Debug)]
pub struct Feed {
    /// The configuration the feed was built from.
    cfg: SimConfig,
    /// Names and precisions of the symbols, by index.
    symbols: SymbolTable,
    /// Books, event generator and seq counters: everything that decides tick content.
    market: Market,
    /// When each tick is due, in virtual time.
    schedule: Schedule,
    /// Schedule slots dropped by paced runs so far.
    skipped: u64,
}

impl Feed {
    /// Builds the feed of `cfg`.
    ///
    /// # Panics
    /// If `cfg.validate()` fails. Use [`Feed::try_new`] to get the message instead.
    pub fn new(cfg: SimConfig) -> Feed {
        Feed::try_new(cfg).unwrap_or_else(|e| panic!("invalid feed-sim configuration: {e}"))
    }

    /// Builds the feed of `cfg`, or says which setting is out of range.
    pub fn try_new(cfg: SimConfig) -> Result<Feed, String> {
        cfg.validate()?;
        let (symbols, specs) = symbols::universe(cfg.symbols, cfg.seed);
        let market = Market::new(&cfg, &specs);
        let schedule = Schedule::new(&cfg);
        Ok(Feed { cfg, symbols, market, schedule, skipped: 0 })
    }

    /// The configuration the feed was built from.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// The symbols of the feed (index = [`Tick::sym`]); rank 1 of the activity law is index 0.
    pub fn symbols(&self) -> &SymbolTable {
        &self.symbols
    }

    /// Virtual time, in ns since the feed's start, at which the next tick is due: ticks are
    /// `1/rate` apart, `1/(rate × burst_mult)` inside bursts. The first tick is due at 0.
    pub fn next_due_ns(&self) -> u64 {
        self.schedule.next_due_ns()
    }

    /// Whether the next tick is due inside a burst.
    pub fn in_burst(&self) -> bool {
        self.schedule.in_burst()
    }

    /// Produces the next tick, stamped with `ts` (Unix ns), and advances the schedule by one
    /// tick. Follow-ups of an earlier event (its book delta, its quote) come first.
    pub fn next_tick(&mut self, ts: u64) -> Tick {
        let mut tick = self.market.next_tick();
        tick.ts = ts;
        self.schedule.advance();
        tick
    }

    /// [`Feed::next_tick`] stamped by the virtual clock: `VIRTUAL_EPOCH_NS + next_due_ns()`.
    pub fn next_tick_virtual(&mut self) -> Tick {
        let ts = VIRTUAL_EPOCH_NS + self.next_due_ns();
        self.next_tick(ts)
    }

    /// Ticks already generated (follow-ups of the last event) that the next calls of
    /// [`Feed::next_tick`] will return before drawing a new event.
    pub fn pending(&self) -> usize {
        self.market.pending()
    }

    /// Best bid and best ask of `sym`, or `None` while its book is not open (no tick published
    /// on it yet) or if there is no such symbol.
    ///
    /// This is the generator's book: it already includes the changes of ticks still
    /// [`pending`](Feed::pending). When `pending() == 0` it is exactly the book a client gets by
    /// replaying every delta published so far.
    pub fn book_top(&self, sym: SymbolIdx) -> Option<(Level, Level)> {
        self.market.book(sym as usize)?.top()
    }

    /// Every level of `sym`'s book as `(bids, asks)`, each best first; same caveats as
    /// [`Feed::book_top`].
    pub fn book(&self, sym: SymbolIdx) -> Option<(&[Level], &[Level])> {
        let book = self.market.book(sym as usize)?;
        Some((book.levels(BookSide::Bid), book.levels(BookSide::Ask)))
    }

    /// Market events generated so far (each publishes one to three ticks).
    pub fn events(&self) -> u64 {
        self.market.events()
    }

    /// Bursts started so far in the schedule.
    pub fn bursts(&self) -> u64 {
        self.schedule.bursts()
    }

    /// Schedule slots dropped so far by paced runs (see [`PacedStats::skipped`]).
    pub fn skipped_ticks(&self) -> u64 {
        self.skipped
    }

    /// Real-time paced loop with the real clock; see [`Feed::run_paced_with`].
    pub fn run_paced(&mut self, stop: &AtomicBool, on_batch: impl FnMut(&[Tick])) -> PacedStats {
        self.run_paced_with(stop, PaceOptions::default(), on_batch)
    }

    /// Runs the schedule in real time until `stop` is set: sleeps until ticks are due, then
    /// calls `on_batch` with every tick due by now, in order (at most 4096 per call).
    ///
    /// Virtual time is mapped onto real time from the moment of the call. Ticks are stamped by
    /// `opts.clock`; with [`Clock::Real`] all ticks of a batch carry the system time at which
    /// the batch was made. The loop never busy-waits: it sleeps until the next due time, at most
    /// 50 ms at a time so that `stop` is noticed promptly (it is checked before every batch).
    /// Batches reuse one vector.
    ///
    /// A consumer more than 1 s behind the schedule does not get the backlog in one giant
    /// burst: the schedule skips forward to now, without generating the skipped ticks, so seqs
    /// stay continuous. The number skipped is in the returned stats.
    pub fn run_paced_with(
        &mut self,
        stop: &AtomicBool,
        opts: PaceOptions,
        mut on_batch: impl FnMut(&[Tick]),
    ) -> PacedStats {
        let start = Instant::now();
        let wall0 = unix_now_ns();
        let v0 = self.next_due_ns();
        let mut stats = PacedStats::default();
        let mut batch: Vec<Tick> = Vec::with_capacity(256);
        let mut last_batch: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let now_v =
                v0.saturating_add(u64::try_from((now - start).as_nanos()).unwrap_or(u64::MAX));
            let due = self.next_due_ns();
            let mut wait = Duration::from_nanos(due.saturating_sub(now_v));
            if let Some(last) = last_batch {
                wait = wait.max(opts.min_batch_interval.saturating_sub(now - last));
            }
            if !wait.is_zero() {
                std::thread::sleep(wait.min(MAX_SLEEP));
                continue;
            }
            if now_v - due > MAX_LAG_NS {
                let n = self.schedule.skip_until(now_v);
                stats.skipped += n;
                self.skipped += n;
            }
            batch.clear();
            let wall = unix_now_ns();
            while batch.len() < MAX_BATCH && self.next_due_ns() <= now_v {
                let due = self.next_due_ns();
                let (ts, et) = match opts.clock {
                    Clock::Real => (wall, (wall0 + (due - v0)).min(wall)),
                    Clock::Virtual => (VIRTUAL_EPOCH_NS + due, VIRTUAL_EPOCH_NS + due),
                };
                let mut tick = self.next_tick(ts);
                if opts.event_time {
                    tick.et = et;
                }
                batch.push(tick);
            }
            if batch.is_empty() {
                continue;
            }
            last_batch = Some(now);
            on_batch(&batch);
            stats.ticks += batch.len() as u64;
            stats.batches += 1;
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    use super::*;

    fn quick(rate: f64) -> Feed {
        Feed::new(SimConfig { symbols: 20, rate, burst_every_s: 0.0, ..SimConfig::default() })
    }

    #[test]
    #[should_panic(expected = "symbols must be between")]
    fn new_panics_on_invalid_config() {
        Feed::new(SimConfig { symbols: 0, ..SimConfig::default() });
    }

    #[test]
    fn try_new_reports_invalid_config() {
        let err = Feed::try_new(SimConfig { rate: -1.0, ..SimConfig::default() }).unwrap_err();
        assert!(err.contains("rate"), "{err}");
    }

    #[test]
    fn paced_run_delivers_in_order_on_time_and_stops_promptly() {
        let mut feed = quick(20_000.0);
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let t0 = unix_now_ns();
        let mut seen = 0u64;
        let mut last_ts = 0;
        let stats = feed.run_paced(&stop, |batch| {
            assert!(!batch.is_empty());
            for t in batch {
                assert!(t.ts >= last_ts);
                last_ts = t.ts;
            }
            seen += batch.len() as u64;
            if started.elapsed() >= Duration::from_millis(300) {
                stop.store(true, Ordering::Relaxed);
            }
        });
        let elapsed = started.elapsed();
        assert_eq!(stats.ticks, seen);
        assert_eq!(stats.skipped, 0);
        assert!(last_ts >= t0 && last_ts <= unix_now_ns());
        // ~6000 ticks are due in 300 ms; allow for a slow, loaded test machine.
        let expected = elapsed.as_secs_f64() * 20_000.0;
        assert!(
            seen as f64 > expected * 0.5 && seen as f64 <= expected * 1.05 + 10.0,
            "{seen} ticks in {elapsed:?}"
        );
        assert!(stats.batches > 10, "{stats:?}");
    }

    #[test]
    fn paced_run_notices_stop_while_idle() {
        let mut feed = quick(0.5); // one tick every two seconds
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                stop.store(true, Ordering::Relaxed);
            });
            let stats = feed.run_paced(&stop, |_| {});
            assert_eq!(stats.ticks, 1, "only the tick due at 0");
        });
        assert!(started.elapsed() < Duration::from_millis(600), "{:?}", started.elapsed());
    }

    #[test]
    fn a_stalled_consumer_makes_the_schedule_skip_not_the_seqs() {
        let mut feed = quick(2_000.0);
        let stop = AtomicBool::new(false);
        let mut batches = 0;
        let mut ticks = Vec::new();
        let stats = feed.run_paced_with(
            &stop,
            PaceOptions { clock: Clock::Virtual, ..PaceOptions::default() },
            |batch| {
                batches += 1;
                ticks.extend_from_slice(batch);
                match batches {
                    1 => std::thread::sleep(Duration::from_millis(1300)),
                    _ if batch.len() < 100 => stop.store(true, Ordering::Relaxed),
                    _ => {}
                }
            },
        );
        assert!(stats.skipped > 1_000, "{stats:?}");
        assert_eq!(feed.skipped_ticks(), stats.skipped);
        // No batch was a catch-up of the whole stall.
        assert!(ticks.len() < 1000, "{} ticks", ticks.len());
        // The virtual stamps show the jump; the seqs do not.
        let jump = ticks.windows(2).map(|w| w[1].ts - w[0].ts).max().unwrap();
        assert!(jump > 1_000_000_000, "{jump}");
        let mut last = std::collections::HashMap::new();
        for t in &ticks {
            let prev = last.insert(t.channel(), t.seq).unwrap_or(0);
            assert_eq!(t.seq, prev + 1);
        }
    }

    #[test]
    fn coalescing_bounds_the_batch_rate() {
        let mut feed = quick(20_000.0);
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let opts =
            PaceOptions { min_batch_interval: Duration::from_millis(10), ..PaceOptions::default() };
        let stats = feed.run_paced_with(&stop, opts, |_| {
            if started.elapsed() >= Duration::from_millis(200) {
                stop.store(true, Ordering::Relaxed);
            }
        });
        assert!(stats.batches <= 25, "{stats:?}");
        assert!(stats.ticks as f64 / stats.batches as f64 > 50.0, "{stats:?}");
    }
}
