//! The simulated market through the public API: activity skew, seqs, book consistency, large
//! universes.

use std::collections::{BTreeMap, HashMap, HashSet};

use feed_sim::{Feed, SimConfig};
use tickfan_proto::{ChannelId, Level, Side, TickBody};

fn feed(symbols: usize, zipf_s: f64, seed: u64) -> Feed {
    Feed::new(SimConfig { symbols, zipf_s, seed, ..SimConfig::default() })
}

/// Events per symbol index. Counts *fresh events* only — the first tick handed out when
/// nothing was pending — because follow-ups (delta after a trade, quote after a delta) make
/// some events publish more ticks than others; the activity law is over events.
fn event_counts(feed: &mut Feed, ticks: usize) -> Vec<u64> {
    let mut counts = vec![0u64; feed.symbols().len()];
    for _ in 0..ticks {
        let fresh = feed.pending() == 0;
        let tick = feed.next_tick(0);
        if fresh {
            counts[tick.sym as usize] += 1;
        }
    }
    counts
}

#[test]
fn symbol_activity_follows_zipf() {
    let (n, s) = (50, 1.1);
    let mut f = feed(n, s, 11);
    let counts = event_counts(&mut f, 300_000);
    let total: u64 = counts.iter().sum();
    assert!(total > 100_000, "{total} events");
    let h: f64 = (1..=n).map(|r| (r as f64).powf(-s)).sum();
    let c = |rank: usize| counts[rank - 1] as f64;
    let within = |got: f64, want: f64, what: &str| {
        assert!((got / want - 1.0).abs() < 0.10, "{what}: got {got:.4}, Zipf says {want:.4}");
    };
    within(c(1) / total as f64, 1.0 / h, "share of rank 1");
    within(c(1) / c(2), 2f64.powf(s), "rank 1 / rank 2");
    within(c(1) / c(10), 10f64.powf(s), "rank 1 / rank 10");
    // Decreasing with rank in aggregate: mean count per block of 5 ranks.
    let blocks: Vec<u64> = counts.chunks(5).map(|b| b.iter().sum()).collect();
    assert!(blocks.windows(2).all(|w| w[0] > w[1]), "{blocks:?}");
}

#[test]
fn zero_exponent_means_equally_busy_symbols() {
    let mut f = feed(50, 0.0, 3);
    let counts = event_counts(&mut f, 200_000);
    let mean = counts.iter().sum::<u64>() as f64 / 50.0;
    for (i, &c) in counts.iter().enumerate() {
        assert!((c as f64 / mean - 1.0).abs() < 0.10, "symbol {i}: {c} vs mean {mean}");
    }
}

#[test]
fn every_channel_counts_from_one_in_steps_of_one() {
    let mut f = feed(50, 1.1, 9);
    let mut last: HashMap<ChannelId, u64> = HashMap::new();
    for i in 0..100_000 {
        let tick = f.next_tick(i);
        let prev = last.insert(tick.channel(), tick.seq).unwrap_or(0);
        assert_eq!(tick.seq, prev + 1, "{:?} after seq {prev}", tick.channel());
    }
    // All 50 × 3 channels show up in 100k ticks at s = 1.1.
    assert_eq!(last.len(), 150);
}

/// A book rebuilt from published deltas only, as a client would.
#[derive(Default)]
struct Replayed {
    bids: BTreeMap<i64, i64>,
    asks: BTreeMap<i64, i64>,
}

impl Replayed {
    fn apply(&mut self, levels: &[Level], bids: bool) {
        let side = if bids { &mut self.bids } else { &mut self.asks };
        for l in levels {
            assert!(l.qty >= 0 && l.px > 0, "{l:?}");
            if l.qty == 0 {
                assert!(side.remove(&l.px).is_some(), "removal of unknown level {l:?}");
            } else {
                side.insert(l.px, l.qty);
            }
        }
    }

    fn best_bid(&self) -> Option<Level> {
        self.bids.iter().next_back().map(|(&px, &qty)| Level { px, qty })
    }

    fn best_ask(&self) -> Option<Level> {
        self.asks.iter().next().map(|(&px, &qty)| Level { px, qty })
    }

    fn levels(&self) -> (Vec<Level>, Vec<Level>) {
        let lv = |(&px, &qty): (&i64, &i64)| Level { px, qty };
        (self.bids.iter().rev().map(lv).collect(), self.asks.iter().map(lv).collect())
    }
}

#[test]
fn replayed_deltas_rebuild_consistent_books_and_explain_every_quote_and_trade() {
    let depth = 10;
    let mut f =
        Feed::new(SimConfig { symbols: 8, book_depth: depth, seed: 21, ..SimConfig::default() });
    let mut books: HashMap<u32, Replayed> = HashMap::new();
    let mut prev_kind: Option<(u32, &str)> = None;
    let mut open_trade: Option<(u32, Side, i64, i64, i64)> = None; // sym, side, px, qty, level before
    let (mut trades, mut quotes, mut deltas) = (0, 0, 0);
    let mut quote_due = false;
    for _ in 0..100_000 {
        let tick = f.next_tick(0);
        let sym = tick.sym;
        let book = books.entry(sym).or_default();
        // A delta that moved the top is followed by a quote, and only such a delta is.
        let is_quote = matches!(tick.body, TickBody::Quote(_));
        let due = std::mem::take(&mut quote_due);
        assert_eq!(due, is_quote, "quote expected: {due}, got {tick:?}");
        match &tick.body {
            TickBody::Book(d) => {
                deltas += 1;
                assert!(!d.bids.is_empty() || !d.asks.is_empty(), "empty delta");
                assert!(d.bids.windows(2).all(|w| w[0].px > w[1].px), "bids best-first: {d:?}");
                assert!(d.asks.windows(2).all(|w| w[0].px < w[1].px), "asks best-first: {d:?}");
                if let Some((tsym, side, px, qty, before)) = open_trade.take() {
                    // The delta after a trade shows what the trade took from the level.
                    assert_eq!(tsym, sym);
                    let taken = if side == Side::Buy { &d.asks } else { &d.bids };
                    assert!(taken.contains(&Level { px, qty: before - qty }), "{d:?}");
                }
                let top_before = (book.best_bid(), book.best_ask());
                book.apply(&d.bids, true);
                book.apply(&d.asks, false);
                quote_due = top_before != (book.best_bid(), book.best_ask());
                assert!(book.bids.len() <= depth && book.asks.len() <= depth);
                if let (Some(b), Some(a)) = (book.best_bid(), book.best_ask()) {
                    assert!(b.px < a.px, "crossed book: {b:?} / {a:?}");
                }
            }
            TickBody::Quote(q) => {
                quotes += 1;
                assert_eq!(prev_kind, Some((sym, "book")), "a quote follows its delta");
                let (b, a) = (book.best_bid().unwrap(), book.best_ask().unwrap());
                assert_eq!((q.bid, q.bsz, q.ask, q.asz), (b.px, b.qty, a.px, a.qty));
                assert_eq!(f.book_top(sym), Some((b, a)));
                assert!(q.bsz > 0 && q.asz > 0 && q.bid < q.ask);
            }
            TickBody::Status(s) => panic!("the simulator never changes a status: {s:?}"),
            TickBody::Trade(t) => {
                trades += 1;
                assert!(open_trade.is_none(), "a trade is followed by its delta");
                let level = match t.side {
                    Side::Buy => book.best_ask(),
                    Side::Sell => book.best_bid(),
                }
                .expect("trade on an open book");
                assert_eq!(t.px, level.px, "trade at the best opposite price");
                assert!(t.qty > 0 && t.qty <= level.qty, "{t:?} against {level:?}");
                open_trade = Some((sym, t.side, t.px, t.qty, level.qty));
            }
        }
        prev_kind = Some((sym, tick.body.kind().as_str()));
        if f.pending() == 0 {
            // Between events the generator's book is exactly what the deltas say.
            let (bids, asks) = f.book(sym).expect("published symbols have open books");
            let (want_bids, want_asks) = book.levels();
            assert_eq!((bids, asks), (&want_bids[..], &want_asks[..]));
        }
    }
    assert!(trades > 5_000 && quotes > 20_000 && deltas > 40_000, "{trades} {quotes} {deltas}");
}

#[test]
fn books_are_not_open_before_their_first_tick() {
    let mut f = feed(5_000, 1.1, 1);
    assert_eq!(f.book_top(0), None);
    assert_eq!(f.book_top(99_999), None, "no such symbol");
    let t = f.next_tick(0);
    assert_eq!(t.seq, 1);
    let TickBody::Book(d) = &t.body else { panic!("first tick opens a book: {t:?}") };
    assert_eq!((d.bids.len(), d.asks.len()), (25, 25));
    assert!(f.book_top(t.sym).is_some());
    assert_eq!(f.book_top(4_999), None, "the last symbol is still untouched");
}

/// `^[A-Z0-9]{2,8}-USD$`, by hand.
fn well_formed(name: &str) -> bool {
    name.strip_suffix("-USD").is_some_and(|base| {
        (2..=8).contains(&base.len())
            && base.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    })
}

#[test]
fn ten_thousand_symbols() {
    let mut f = feed(10_000, 1.1, 17);
    let names: HashSet<&str> = f.symbols().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), 10_000, "names are unique");
    for name in &names {
        assert!(well_formed(name), "{name}");
    }
    assert_eq!(f.symbols().lookup("BTC-USD"), Some(0));
    let mut seen = HashSet::new();
    for _ in 0..100_000 {
        let t = f.next_tick(0);
        seen.insert(t.sym);
        if let Some((b, a)) = f.book_top(t.sym) {
            assert!(b.px < a.px);
        }
    }
    // The long tail is sparse, but it is traded.
    assert!(seen.len() > 3_000, "{} symbols seen", seen.len());
    assert!(seen.iter().any(|&s| s > 9_000));
}

#[test]
fn one_symbol_works() {
    let mut f = feed(1, 1.1, 2);
    for _ in 0..10_000 {
        assert_eq!(f.next_tick(0).sym, 0);
    }
    let (b, a) = f.book_top(0).unwrap();
    assert!(b.px < a.px);
}
