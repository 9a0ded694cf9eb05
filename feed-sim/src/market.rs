//! The event model: what happens in the market, and the ticks that publish it.
//!
//! Each *event* is on one symbol, drawn from the Zipf activity law, and is one of
//! - **book change** (weight 5/10): 1..=3 level operations on random sides — resize a level,
//!   cancel a level (a new one appears behind the worst), add a level in a price gap, or move
//!   the price: a new level a few ticks better than the side's best, withdrawing the opposite
//!   levels it reaches (this is what makes mid prices random-walk; each op picks its level near
//!   the top, where books are busiest);
//! - **quote refresh** (3/10): a small size change of one side's best level;
//! - **trade** (2/10): a buy lifts the best ask, a sell hits the best bid, for at most that
//!   level's size (a quarter of trades take the whole level, which then disappears).
//!
//! The first event drawn on a symbol *opens* its book instead: one delta listing every level
//! (from an empty book) and a quote. Replaying a symbol's `book` channel from seq 1 therefore
//! rebuilds its book exactly; no separate snapshot is needed.
//!
//! An event is published as a causal sequence of ticks, queued and handed out one per call:
//! the trade (if any), then the book delta of the net level changes (if any), then a quote if
//! the best bid or ask changed in price or size. Seqs are assigned per channel when an event is
//! queued, in queue order, so they are gap-free whatever the consumer does.
//!
//! Per-event randomness uses integer draws only (`random_range`, raw `u64`s). Prices are kept
//! within 1/8..8× the opening price by steering moves back; at these rates that band is never
//! reached in practice.

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tickfan_proto::tick::SymbolIdx;
use tickfan_proto::{ChannelId, Quote, Side, Tick, TickBody, Trade};

use crate::activity::Activity;
use crate::book::{BookSide, Changes, LevelShape, SimBook};
use crate::config::SimConfig;
use crate::symbols::SymbolSpec;

/// Largest gap between neighbouring levels, and largest price move of one order, in steps.
const MAX_STEPS: i64 = 3;
/// A step is one price tick, or 1e-6 of the opening price where a tick is finer than that (BTC:
/// a tick is 1.6e-7 of the price, so a step is 6 ticks). This keeps the book shape and the
/// relative volatility of all symbols alike whatever their precision clamp.
const STEP_FRACTION: i64 = 1_000_000;
/// Prices are kept within `[mid0 / BAND, mid0 × BAND]` by steering price moves back.
const BAND: i64 = 8;

/// Live state of one symbol.
#[derive(Debug)]
struct SymbolState {
    /// How new levels look for this symbol.
    shape: LevelShape,
    /// Opening mid price (mantissa).
    mid0: i64,
    /// Largest price move of one order, in ticks.
    max_move: i64,
    /// The book; `None` until the symbol's first event opens it.
    book: Option<SimBook>,
    /// Id of the symbol's next trade.
    next_trade_id: u64,
}

/// Queued ticks of the current event, with per-channel seq assignment.
#[derive(Debug)]
struct Outbox {
    /// Last seq assigned on each channel (indexed by [`ChannelId::index`]); 0 = none yet.
    last_seq: Vec<u64>,
    /// Ticks generated but not handed out yet, oldest first.
    queue: VecDeque<Tick>,
}

impl Outbox {
    fn push(&mut self, sym: usize, body: TickBody) {
        let sym = sym as SymbolIdx;
        let seq = &mut self.last_seq[ChannelId::new(body.kind(), sym).index()];
        *seq += 1;
        self.queue.push_back(Tick { sym, seq: *seq, ts: 0, et: 0, body });
    }
}

/// The simulated market of a feed: every symbol's book and the event generator.
#[derive(Debug)]
pub(crate) struct Market {
    /// The content stream: every draw that decides what happens.
    rng: ChaCha8Rng,
    /// Which symbol an event is on.
    activity: Activity,
    /// Per-symbol state, by symbol index.
    symbols: Vec<SymbolState>,
    /// Levels per book side.
    depth: usize,
    /// Net level changes of the event being generated (reused buffer).
    changes: Changes,
    /// Ticks waiting to be handed out, and seq counters.
    out: Outbox,
    /// Events generated so far.
    events: u64,
}

impl Market {
    pub(crate) fn new(cfg: &SimConfig, specs: &[SymbolSpec]) -> Market {
        let symbols = specs
            .iter()
            .map(|spec| SymbolState {
                shape: LevelShape { size_unit: spec.size_unit, max_gap: max_steps(spec.mid0) },
                mid0: spec.mid0,
                max_move: max_steps(spec.mid0),
                book: None,
                next_trade_id: 1,
            })
            .collect();
        Market {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            activity: Activity::new(cfg.symbols, cfg.zipf_s),
            symbols,
            depth: cfg.book_depth,
            changes: Changes::default(),
            out: Outbox {
                last_seq: vec![0; specs.len() * tickfan_proto::Kind::COUNT as usize],
                queue: VecDeque::with_capacity(8),
            },
            events: 0,
        }
    }

    /// The next tick (with `ts` 0): a queued follow-up if any, else the first tick of a new
    /// event.
    pub(crate) fn next_tick(&mut self) -> Tick {
        loop {
            if let Some(tick) = self.out.queue.pop_front() {
                return tick;
            }
            // An event can net out to nothing (a level added, then pushed beyond the depth);
            // it publishes no tick and the next event is drawn.
            self.event();
        }
    }

    /// Ticks already generated and not handed out yet.
    pub(crate) fn pending(&self) -> usize {
        self.out.queue.len()
    }

    /// Events generated so far.
    pub(crate) fn events(&self) -> u64 {
        self.events
    }

    /// The book of `sym`, if its first event has opened it.
    pub(crate) fn book(&self, sym: usize) -> Option<&SimBook> {
        self.symbols.get(sym)?.book.as_ref()
    }

    /// Generates one event and queues its ticks.
    fn event(&mut self) {
        let sym = self.activity.sample(&mut self.rng);
        self.events += 1;
        let state = &mut self.symbols[sym];
        let mut ev = Event {
            rng: &mut self.rng,
            changes: &mut self.changes,
            shape: state.shape,
            depth: self.depth,
            max_move: state.max_move,
            band: (state.mid0 / BAND, state.mid0.saturating_mul(BAND)),
        };
        let opening = state.book.is_none();
        let book = state.book.get_or_insert_with(SimBook::default);
        let top_before = book.top();
        let mut trade = None;
        if opening {
            ev.open(book, state.mid0);
        } else {
            match ev.rng.random_range(0..10u32) {
                0..=4 => ev.book_change(book),
                5..=7 => ev.refresh_top(book),
                _ => {
                    trade = ev.trade(book).map(|(side, px, qty)| {
                        let id = state.next_trade_id;
                        state.next_trade_id += 1;
                        Trade { id, px, qty, side }
                    })
                }
            }
        }
        let top_after = book.top();

        debug_assert!(self.out.queue.is_empty(), "events are generated only when none is queued");
        if let Some(trade) = trade {
            self.out.push(sym, TickBody::Trade(trade));
        }
        if !self.changes.any() {
            self.changes.clear();
            return;
        }
        self.out.push(sym, TickBody::Book(self.changes.take_delta()));
        if top_after != top_before {
            if let Some((b, a)) = top_after {
                let quote = Quote { bid: b.px, bsz: b.qty, ask: a.px, asz: a.qty };
                self.out.push(sym, TickBody::Quote(quote));
            }
        }
    }
}

/// `MAX_STEPS` steps of a symbol opening at `mid0`, in ticks.
fn max_steps(mid0: i64) -> i64 {
    MAX_STEPS * (mid0 / STEP_FRACTION).max(1)
}

/// The randomness and parameters one event works with.
struct Event<'a> {
    rng: &'a mut ChaCha8Rng,
    changes: &'a mut Changes,
    shape: LevelShape,
    depth: usize,
    /// Largest price move of one order, in ticks.
    max_move: i64,
    /// Lowest and highest price a price move may reach.
    band: (i64, i64),
}

impl Event<'_> {
    fn side(&mut self) -> BookSide {
        if self.rng.random_range(0..2u32) == 0 {
            BookSide::Bid
        } else {
            BookSide::Ask
        }
    }

    /// An index in `0..len`, skewed towards 0 (the best levels are the busiest).
    fn near_top(&mut self, len: usize) -> usize {
        let a = self.rng.random_range(0..len);
        let b = self.rng.random_range(0..len);
        a.min(b)
    }

    /// Fills an empty book around `mid`: a spread of 1..=4 ticks, `depth` levels a side.
    fn open(&mut self, book: &mut SimBook, mid: i64) {
        let spread = self.rng.random_range(1..=4i64);
        let bid = mid - spread / 2;
        let (bq, aq) = (self.shape.size(self.rng), self.shape.size(self.rng));
        book.set(BookSide::Bid, bid, bq, self.changes);
        book.set(BookSide::Ask, bid + spread, aq, self.changes);
        for side in [BookSide::Bid, BookSide::Ask] {
            book.backfill(side, self.depth, &self.shape, self.rng, self.changes);
        }
    }

    /// 1..=3 level operations.
    fn book_change(&mut self, book: &mut SimBook) {
        for _ in 0..self.rng.random_range(1..=3u32) {
            let side = self.side();
            match self.rng.random_range(0..10u32) {
                0..=3 => self.resize(book, side),
                4..=5 => self.cancel(book, side),
                6..=7 => self.add(book, side),
                _ => self.move_price(book, side),
            }
        }
    }

    /// A level near the top gets a new size.
    fn resize(&mut self, book: &mut SimBook, side: BookSide) {
        let levels = book.levels(side);
        if levels.is_empty() {
            return;
        }
        let level = levels[self.near_top(levels.len())];
        let mut qty = self.shape.size(self.rng);
        if qty == level.qty {
            qty += 1;
        }
        book.set(side, level.px, qty, self.changes);
    }

    /// A level near the top disappears; a new one appears behind the worst.
    fn cancel(&mut self, book: &mut SimBook, side: BookSide) {
        let levels = book.levels(side);
        if levels.is_empty() {
            return;
        }
        let level = levels[self.near_top(levels.len())];
        book.set(side, level.px, 0, self.changes);
        book.backfill(side, self.depth, &self.shape, self.rng, self.changes);
    }

    /// A new level in a free price between existing ones (or inside the spread, or behind the
    /// worst while the side is short of `depth`). Falls back to a resize when there is no room.
    fn add(&mut self, book: &mut SimBook, side: BookSide) {
        let levels = book.levels(side);
        let len = levels.len();
        if len == 0 {
            return;
        }
        // Gap number `i` lies just before level `i`; gap `len` is behind the worst.
        let i = self.near_top(len + 1);
        let (better, worse) = if i == 0 {
            match book.best(side.opposite()) {
                Some(opp) => (opp.px, levels[0].px),
                None => return self.resize(book, side),
            }
        } else if i < len {
            (levels[i - 1].px, levels[i].px)
        } else if len < self.depth {
            (levels[len - 1].px, side.worsen(levels[len - 1].px, self.shape.max_gap + 1))
        } else {
            return self.resize(book, side);
        };
        let room = (worse - better).abs() - 1;
        if room < 1 {
            return self.resize(book, side);
        }
        let px = side.worsen(better, self.rng.random_range(1..=room));
        if px <= 0 {
            return self.resize(book, side);
        }
        let qty = self.shape.size(self.rng);
        book.set(side, px, qty, self.changes);
        book.truncate(side, self.depth, self.changes);
    }

    /// A new level 1..=`max_move` ticks better than the side's best: the price moves. Moves that would
    /// leave the band are made on the other side instead (which moves the price back).
    fn move_price(&mut self, book: &mut SimBook, side: BookSide) {
        let ticks = self.rng.random_range(1..=self.max_move);
        let qty = self.shape.size(self.rng);
        let (lo, hi) = self.band;
        let target = |side: BookSide| {
            book.best(side).map(|l| side.improve(l.px, ticks)).filter(|px| (lo..=hi).contains(px))
        };
        let placed = match target(side) {
            Some(px) => Some((side, px)),
            None => target(side.opposite()).map(|px| (side.opposite(), px)),
        };
        if let Some((side, px)) = placed {
            book.place_through(side, px, qty, self.depth, &self.shape, self.rng, self.changes);
        }
    }

    /// One side's best level changes size a little (up to ±25 %).
    fn refresh_top(&mut self, book: &mut SimBook) {
        let side = self.side();
        let Some(best) = book.best(side) else { return };
        let step = self.rng.random_range(1..=(best.qty / 4).max(1));
        let qty = if self.rng.random_range(0..2u32) == 0 && best.qty > step {
            best.qty - step
        } else {
            best.qty + step
        };
        book.set(side, best.px, qty, self.changes);
    }

    /// An aggressor takes liquidity from the opposite best level. Returns (aggressor side,
    /// price, size); the level shrinks or, if taken whole, is replaced behind the worst.
    fn trade(&mut self, book: &mut SimBook) -> Option<(Side, i64, i64)> {
        let aggressor = if self.rng.random_range(0..2u32) == 0 { Side::Buy } else { Side::Sell };
        let resting = match aggressor {
            Side::Buy => BookSide::Ask,
            Side::Sell => BookSide::Bid,
        };
        let best = book.best(resting)?;
        let qty = if self.rng.random_range(0..4u32) == 0 {
            best.qty
        } else {
            self.rng.random_range(1..=best.qty)
        };
        book.set(resting, best.px, best.qty - qty, self.changes);
        if qty == best.qty {
            book.backfill(resting, self.depth, &self.shape, self.rng, self.changes);
        }
        Some((aggressor, best.px, qty))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tickfan_proto::Kind;

    use super::*;
    use crate::symbols::universe;

    fn market(symbols: usize, depth: usize, seed: u64) -> Market {
        let cfg = SimConfig { symbols, book_depth: depth, seed, ..SimConfig::default() };
        let (_, specs) = universe(symbols, seed);
        Market::new(&cfg, &specs)
    }

    #[test]
    fn books_keep_their_invariants_after_every_event() {
        for depth in [1, 2, 5, 25] {
            let mut m = market(6, depth, depth as u64);
            for _ in 0..20_000 {
                let t = m.next_tick();
                m.book(t.sym as usize).unwrap().check(depth).unwrap_or_else(|e| {
                    panic!("depth {depth}, after {t:?}: {e}");
                });
            }
            let full = (0..6).filter_map(|s| m.book(s)).all(|b| {
                b.levels(BookSide::Bid).len() == depth && b.levels(BookSide::Ask).len() == depth
            });
            assert!(full, "books stay at full depth (prices are far from zero)");
        }
    }

    #[test]
    fn ticks_of_an_event_come_in_causal_order() {
        let mut m = market(4, 10, 5);
        let mut prev: Option<Tick> = None;
        for _ in 0..30_000 {
            let fresh = m.pending() == 0;
            let t = m.next_tick();
            match (&t.body, &prev) {
                (TickBody::Trade(_), _) => assert!(fresh, "a trade starts its event"),
                (TickBody::Book(_), Some(p)) if !fresh => {
                    assert!(matches!(p.body, TickBody::Trade(_)) && p.sym == t.sym, "{p:?} {t:?}");
                }
                (TickBody::Quote(_), Some(p)) => {
                    assert!(!fresh && matches!(p.body, TickBody::Book(_)) && p.sym == t.sym);
                }
                (TickBody::Book(_), _) => assert!(fresh),
                (TickBody::Quote(_), None) => panic!("quote first"),
                (TickBody::Status(_), _) => panic!("the simulator never halts an instrument"),
            }
            prev = Some(t);
        }
    }

    #[test]
    fn event_mix_matches_the_weights() {
        let mut m = market(10, 25, 8);
        let mut kinds: HashMap<Kind, u64> = HashMap::new();
        let n = 60_000;
        for _ in 0..n {
            *kinds.entry(m.next_tick().body.kind()).or_default() += 1;
        }
        let events = m.events() as f64;
        // Every trade event publishes exactly one trade tick: trades are 2/10 of events.
        let trade_share = kinds[&Kind::Trades] as f64 / events;
        assert!((trade_share - 0.2).abs() < 0.01, "{trade_share}");
        // Quote refreshes and trades always move the top; book changes sometimes.
        let quote_share = kinds[&Kind::Quotes] as f64 / events;
        assert!(quote_share > 0.5 && quote_share < 0.95, "{quote_share}");
        let per_event = n as f64 / events;
        assert!((1.5..2.5).contains(&per_event), "{per_event} ticks per event");
    }

    #[test]
    fn trade_ids_increase_per_symbol() {
        let mut m = market(5, 25, 2);
        let mut last: HashMap<u32, u64> = HashMap::new();
        for _ in 0..20_000 {
            let t = m.next_tick();
            if let TickBody::Trade(tr) = &t.body {
                let prev = last.insert(t.sym, tr.id).unwrap_or(0);
                assert_eq!(tr.id, prev + 1);
                assert!(tr.qty > 0 && tr.px > 0);
            }
        }
        assert_eq!(last.len(), 5);
    }

    #[test]
    fn prices_wander_both_ways() {
        let mut m = market(1, 25, 4);
        let mid0 = universe(1, 4).1[0].mid0;
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for _ in 0..50_000 {
            m.next_tick();
            let (b, a) = m.book(0).unwrap().top().unwrap();
            lo = lo.min(b.px);
            hi = hi.max(a.px);
        }
        assert!(lo < mid0 - 20 && hi > mid0 + 20, "range {lo}..{hi} around {mid0}");
        assert!(hi - lo < mid0 / 100, "moves of a tick at a time stay small: {lo}..{hi}");
    }
}
