//! The simulated L2 order book of one symbol, and the record of what an event changed in it.
//!
//! Both sides are sorted vectors, best level first: depth is small (25 by default, 1000 at
//! most), so inserting by shifting beats a tree and keeps each side one allocation. Every
//! mutation goes through [`SimBook::set`], which records the level's size before and after in a
//! [`Changes`]; an event's published delta is the net of those records.
//!
//! Invariants kept by every operation: sizes > 0, prices > 0, strictly ordered sides, best bid <
//! best ask, at most `depth` levels per side.

use rand::Rng;
use tickfan_proto::{BookDelta, Level};

/// A side of the book.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BookSide {
    Bid,
    Ask,
}

impl BookSide {
    pub(crate) fn opposite(self) -> BookSide {
        match self {
            BookSide::Bid => BookSide::Ask,
            BookSide::Ask => BookSide::Bid,
        }
    }

    /// +1 if prices get worse upwards (asks), -1 if downwards (bids).
    fn dir(self) -> i64 {
        match self {
            BookSide::Bid => -1,
            BookSide::Ask => 1,
        }
    }

    /// The price `ticks` better than `px` on this side (higher for bids, lower for asks).
    pub(crate) fn improve(self, px: i64, ticks: i64) -> i64 {
        px - self.dir() * ticks
    }

    /// The price `ticks` worse than `px` on this side.
    pub(crate) fn worsen(self, px: i64, ticks: i64) -> i64 {
        px + self.dir() * ticks
    }

    /// Whether price `a` is strictly better than price `b` on this side.
    pub(crate) fn better(self, a: i64, b: i64) -> bool {
        a * self.dir() < b * self.dir()
    }
}

/// How new levels of a symbol look: their sizes and the price gaps between them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LevelShape {
    /// Size mantissa worth about 100 USD; level sizes are 1..=100 of these plus noise.
    pub size_unit: i64,
    /// Largest gap, in price ticks, between a new level and its neighbour.
    pub max_gap: i64,
}

impl LevelShape {
    /// A resting size: 1 to 101 size units, not a round number.
    pub(crate) fn size<R: Rng>(&self, rng: &mut R) -> i64 {
        self.size_unit * rng.random_range(1..=100) + rng.random_range(0..self.size_unit)
    }

    /// A gap between neighbouring levels, in ticks.
    pub(crate) fn gap<R: Rng>(&self, rng: &mut R) -> i64 {
        rng.random_range(1..=self.max_gap)
    }
}

/// One level touched by the current event: its size before the event and now.
#[derive(Clone, Copy, Debug)]
struct Change {
    px: i64,
    before: i64,
    after: i64,
}

/// Net level changes of one event. Cleared by [`Changes::take_delta`]; reused across events.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    bids: Vec<Change>,
    asks: Vec<Change>,
}

impl Changes {
    fn side_mut(&mut self, side: BookSide) -> &mut Vec<Change> {
        match side {
            BookSide::Bid => &mut self.bids,
            BookSide::Ask => &mut self.asks,
        }
    }

    fn record(&mut self, side: BookSide, px: i64, before: i64, after: i64) {
        let list = self.side_mut(side);
        match list.iter_mut().find(|c| c.px == px) {
            Some(c) => c.after = after,
            None => list.push(Change { px, before, after }),
        }
    }

    /// Whether some level ends the event with a size other than its size before.
    pub(crate) fn any(&self) -> bool {
        self.bids.iter().chain(&self.asks).any(|c| c.before != c.after)
    }

    /// Forgets every record.
    pub(crate) fn clear(&mut self) {
        self.bids.clear();
        self.asks.clear();
    }

    /// The net changes as a delta (levels best-first, removed levels with qty 0), and clears.
    /// A level that was added and removed again within the event is not listed.
    pub(crate) fn take_delta(&mut self) -> BookDelta {
        fn net(list: &mut Vec<Change>, side: BookSide) -> Vec<Level> {
            let mut out: Vec<Level> = list
                .iter()
                .filter(|c| c.before != c.after)
                .map(|c| Level { px: c.px, qty: c.after })
                .collect();
            list.clear();
            out.sort_unstable_by_key(|l| l.px * side.dir());
            out
        }
        BookDelta {
            bids: net(&mut self.bids, BookSide::Bid),
            asks: net(&mut self.asks, BookSide::Ask),
        }
    }
}

/// The L2 book of one symbol.
#[derive(Clone, Debug, Default)]
pub(crate) struct SimBook {
    /// Bids, highest price first.
    bids: Vec<Level>,
    /// Asks, lowest price first.
    asks: Vec<Level>,
}

impl SimBook {
    /// Levels of a side, best first.
    pub(crate) fn levels(&self, side: BookSide) -> &[Level] {
        match side {
            BookSide::Bid => &self.bids,
            BookSide::Ask => &self.asks,
        }
    }

    fn levels_mut(&mut self, side: BookSide) -> &mut Vec<Level> {
        match side {
            BookSide::Bid => &mut self.bids,
            BookSide::Ask => &mut self.asks,
        }
    }

    pub(crate) fn best(&self, side: BookSide) -> Option<Level> {
        self.levels(side).first().copied()
    }

    pub(crate) fn worst(&self, side: BookSide) -> Option<Level> {
        self.levels(side).last().copied()
    }

    /// Best bid and best ask, when both sides have a level.
    pub(crate) fn top(&self) -> Option<(Level, Level)> {
        Some((self.best(BookSide::Bid)?, self.best(BookSide::Ask)?))
    }

    /// Sets the size of the level at `px` (0 removes it, a new price inserts it) and records
    /// the change. The caller keeps the book uncrossed.
    pub(crate) fn set(&mut self, side: BookSide, px: i64, qty: i64, changes: &mut Changes) {
        debug_assert!(px > 0 && qty >= 0, "level {px} × {qty}");
        let dir = side.dir();
        let levels = self.levels_mut(side);
        let before = match levels.binary_search_by_key(&(px * dir), |l| l.px * dir) {
            Ok(i) if qty == 0 => levels.remove(i).qty,
            Ok(i) => std::mem::replace(&mut levels[i].qty, qty),
            Err(_) if qty == 0 => return,
            Err(i) => {
                levels.insert(i, Level { px, qty });
                0
            }
        };
        changes.record(side, px, before, qty);
    }

    /// Removes the worst levels of `side` beyond `depth`.
    pub(crate) fn truncate(&mut self, side: BookSide, depth: usize, changes: &mut Changes) {
        while self.levels(side).len() > depth {
            let worst = self.worst(side).expect("longer than depth");
            self.set(side, worst.px, 0, changes);
        }
    }

    /// Adds levels behind the worst of `side` until it has `depth` levels. An empty side grows
    /// from the opposite best price. Stops early rather than quote a bid at or below zero.
    pub(crate) fn backfill<R: Rng>(
        &mut self,
        side: BookSide,
        depth: usize,
        shape: &LevelShape,
        rng: &mut R,
        changes: &mut Changes,
    ) {
        while self.levels(side).len() < depth {
            let anchor = match (self.worst(side), self.best(side.opposite())) {
                (Some(worst), _) => worst.px,
                (None, Some(opp)) => opp.px,
                (None, None) => return,
            };
            let px = side.worsen(anchor, shape.gap(rng));
            if px <= 0 {
                return;
            }
            let qty = shape.size(rng);
            self.set(side, px, qty, changes);
        }
    }

    /// Places a new level at `px` on `side` that may be better than the opposite best: the
    /// opposite levels it reaches are withdrawn first (their quotes went stale as the price
    /// moved), then both sides are brought back to `depth`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn place_through<R: Rng>(
        &mut self,
        side: BookSide,
        px: i64,
        qty: i64,
        depth: usize,
        shape: &LevelShape,
        rng: &mut R,
        changes: &mut Changes,
    ) {
        let opp = side.opposite();
        while let Some(o) = self.best(opp) {
            if opp.better(o.px, px) || o.px == px {
                self.set(opp, o.px, 0, changes);
            } else {
                break;
            }
        }
        self.set(side, px, qty, changes);
        self.truncate(side, depth, changes);
        // After the placement, so that an emptied opposite side regrows behind `px`.
        self.backfill(opp, depth, shape, rng, changes);
    }

    /// Checks the invariants listed in the module docs.
    #[cfg(test)]
    pub(crate) fn check(&self, depth: usize) -> Result<(), String> {
        for (side, levels) in [(BookSide::Bid, &self.bids), (BookSide::Ask, &self.asks)] {
            if levels.len() > depth {
                return Err(format!("{side:?}: {} levels > depth {depth}", levels.len()));
            }
            if let Some(l) = levels.iter().find(|l| l.qty <= 0 || l.px <= 0) {
                return Err(format!("{side:?}: bad level {l:?}"));
            }
            if let Some(w) = levels.windows(2).find(|w| !side.better(w[0].px, w[1].px)) {
                return Err(format!("{side:?}: out of order {w:?}"));
            }
        }
        if let Some((b, a)) = self.top() {
            if b.px >= a.px {
                return Err(format!("crossed: bid {} >= ask {}", b.px, a.px));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn lv(px: i64, qty: i64) -> Level {
        Level { px, qty }
    }

    fn book(bids: &[(i64, i64)], asks: &[(i64, i64)]) -> SimBook {
        let mut b = SimBook::default();
        let mut ch = Changes::default();
        for &(px, q) in bids {
            b.set(BookSide::Bid, px, q, &mut ch);
        }
        for &(px, q) in asks {
            b.set(BookSide::Ask, px, q, &mut ch);
        }
        b
    }

    #[test]
    fn sides_stay_sorted_best_first() {
        let b = book(&[(98, 1), (100, 2), (99, 3)], &[(103, 1), (101, 2), (102, 3)]);
        assert_eq!(b.levels(BookSide::Bid), &[lv(100, 2), lv(99, 3), lv(98, 1)]);
        assert_eq!(b.levels(BookSide::Ask), &[lv(101, 2), lv(102, 3), lv(103, 1)]);
        assert_eq!(b.top(), Some((lv(100, 2), lv(101, 2))));
        b.check(3).unwrap();
        assert!(b.check(2).is_err());
    }

    #[test]
    fn delta_is_net_and_best_first() {
        let mut b = book(&[(100, 5), (99, 5)], &[(101, 5)]);
        let mut ch = Changes::default();
        b.set(BookSide::Bid, 99, 7, &mut ch); // changed
        b.set(BookSide::Bid, 100, 9, &mut ch);
        b.set(BookSide::Bid, 100, 5, &mut ch); // back to where it was: not listed
        b.set(BookSide::Ask, 105, 1, &mut ch); // added then removed: not listed
        b.set(BookSide::Ask, 105, 0, &mut ch);
        b.set(BookSide::Ask, 102, 3, &mut ch); // added
        b.set(BookSide::Ask, 101, 0, &mut ch); // removed
        b.set(BookSide::Bid, 98, 0, &mut ch); // absent: no-op
        b.set(BookSide::Bid, 97, 2, &mut ch);
        assert!(ch.any());
        let d = ch.take_delta();
        assert_eq!(d.bids, vec![lv(99, 7), lv(97, 2)]);
        assert_eq!(d.asks, vec![lv(101, 0), lv(102, 3)]);
        assert!(!ch.any());
        assert_eq!(ch.take_delta(), BookDelta::default());
    }

    #[test]
    fn placing_through_withdraws_crossed_levels_and_refills() {
        let shape = LevelShape { size_unit: 10, max_gap: 2 };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut b = book(&[(100, 5), (99, 5), (98, 5)], &[(101, 5), (102, 5), (104, 5)]);
        let mut ch = Changes::default();
        b.place_through(BookSide::Bid, 102, 4, 3, &shape, &mut rng, &mut ch);
        b.check(3).unwrap();
        assert_eq!(b.best(BookSide::Bid), Some(lv(102, 4)));
        assert_eq!(b.levels(BookSide::Bid).len(), 3);
        assert_eq!(b.best(BookSide::Ask), Some(lv(104, 5)));
        assert_eq!(b.levels(BookSide::Ask).len(), 3);
        let d = ch.take_delta();
        assert_eq!(d.bids[0], lv(102, 4));
        assert!(d.bids.contains(&lv(98, 0)), "worst bid pushed out: {d:?}");
        assert_eq!(&d.asks[..2], &[lv(101, 0), lv(102, 0)]);
        assert_eq!(d.asks.len(), 4, "two withdrawn, two added behind: {d:?}");
    }

    #[test]
    fn placing_through_an_entire_side_regrows_it_behind() {
        let shape = LevelShape { size_unit: 10, max_gap: 3 };
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut b = book(&[(100, 5)], &[(101, 5), (102, 5)]);
        let mut ch = Changes::default();
        b.place_through(BookSide::Ask, 95, 4, 2, &shape, &mut rng, &mut ch);
        b.check(2).unwrap();
        assert_eq!(b.best(BookSide::Ask), Some(lv(95, 4)));
        assert_eq!(b.levels(BookSide::Bid).len(), 2);
        assert!(b.best(BookSide::Bid).unwrap().px < 95);
    }

    #[test]
    fn backfill_never_quotes_non_positive_bids() {
        let shape = LevelShape { size_unit: 10, max_gap: 1 };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut b = book(&[(3, 5)], &[(4, 5)]);
        let mut ch = Changes::default();
        b.backfill(BookSide::Bid, 10, &shape, &mut rng, &mut ch);
        assert_eq!(b.levels(BookSide::Bid).len(), 3);
        b.check(10).unwrap();
    }

    #[test]
    fn side_directions() {
        assert_eq!(BookSide::Bid.improve(100, 2), 102);
        assert_eq!(BookSide::Ask.improve(100, 2), 98);
        assert_eq!(BookSide::Bid.worsen(100, 2), 98);
        assert!(BookSide::Bid.better(101, 100) && BookSide::Ask.better(100, 101));
        assert!(!BookSide::Ask.better(100, 100));
    }
}
