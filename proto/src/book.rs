//! The L2 order book as a client keeps it, and its checksum (`docs/protocol.md`, "Order books").
//!
//! A client applies a `snapshot`, then every `update` (a level with size 0 is removed), and after
//! each message compares [`L2Book::checksum`] of its book with the message's `crc`: equal means
//! its top 10 levels are exactly the gateway's.
//!
//! The checksum string interleaves the top levels, best first, as the decimal strings that are
//! on the wire: `bid1px:bid1qty:ask1px:ask1qty:bid2px:…`, a missing level contributing nothing,
//! and is hashed with CRC-32 (ISO-HDLC, the one of zlib, gzip and PNG) into an unsigned 32-bit
//! integer. It is the layout OKX uses for its books, so existing client code ports over.

use crate::decimal::write_decimal;
use crate::tick::{BookDelta, Level};

/// Levels per side covered by the checksum.
pub const CHECKSUM_DEPTH: usize = 10;

/// Both sides of one symbol's book, best level first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L2Book {
    /// Bids, highest price first.
    pub bids: Vec<Level>,
    /// Asks, lowest price first.
    pub asks: Vec<Level>,
}

impl L2Book {
    /// Applies the changed levels of an update: a size of 0 removes the level, any other size
    /// sets it (inserting a new price in order).
    pub fn apply(&mut self, delta: &BookDelta) {
        for l in &delta.bids {
            set_level(&mut self.bids, *l, |px| -px);
        }
        for l in &delta.asks {
            set_level(&mut self.asks, *l, |px| px);
        }
    }

    /// The checksum of the top [`CHECKSUM_DEPTH`] levels, prices and sizes written with the
    /// symbol's decimals (`px_scale`, `qty_scale`) exactly as the wire carries them.
    pub fn checksum(&self, px_scale: u8, qty_scale: u8) -> u32 {
        self.checksum_with(px_scale, qty_scale, &mut Vec::with_capacity(CHECKSUM_DEPTH * 48))
    }

    /// [`checksum`](Self::checksum) writing the string into `text` (cleared first), for
    /// callers that compute many and keep one buffer.
    pub fn checksum_with(&self, px_scale: u8, qty_scale: u8, text: &mut Vec<u8>) -> u32 {
        text.clear();
        for i in 0..CHECKSUM_DEPTH {
            for level in [self.bids.get(i), self.asks.get(i)].into_iter().flatten() {
                if !text.is_empty() {
                    text.push(b':');
                }
                write_decimal(text, level.px, px_scale);
                text.push(b':');
                write_decimal(text, level.qty, qty_scale);
            }
        }
        crc32fast::hash(text)
    }
}

impl L2Book {
    /// Whether the levels the checksum covers are the same in `other`: then so is the checksum.
    pub fn top_equals(&self, other: &L2Book) -> bool {
        let top = |side: &[Level]| side.len().min(CHECKSUM_DEPTH);
        self.bids[..top(&self.bids)] == other.bids[..top(&other.bids)]
            && self.asks[..top(&self.asks)] == other.asks[..top(&other.asks)]
    }
}

/// Sets one level of a side sorted by `key(px)` ascending (best first).
fn set_level(side: &mut Vec<Level>, level: Level, key: impl Fn(i64) -> i64) {
    match side.binary_search_by_key(&key(level.px), |l| key(l.px)) {
        Ok(i) if level.qty == 0 => {
            side.remove(i);
        }
        Ok(i) => side[i].qty = level.qty,
        Err(_) if level.qty == 0 => {}
        Err(i) => side.insert(i, level),
    }
}

/// The levels of one side that differ between `old` and `new` (both best first; `bids` for
/// the bid side): each new or changed level of `new`, and each price of `old` that `new` no
/// longer has with size 0 (removed). Applying them to `old` gives `new`. Best first.
pub fn changed_levels(old: &[Level], new: &[Level], bids: bool) -> Vec<Level> {
    let mut out: Vec<Level> = new.iter().filter(|l| !old.contains(l)).copied().collect();
    out.extend(
        old.iter()
            .filter(|o| !new.iter().any(|n| n.px == o.px))
            .map(|o| Level { px: o.px, qty: 0 }),
    );
    if bids {
        out.sort_unstable_by_key(|l| std::cmp::Reverse(l.px));
    } else {
        out.sort_unstable_by_key(|l| l.px);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lv(px: i64, qty: i64) -> Level {
        Level { px, qty }
    }

    #[test]
    fn apply_inserts_resizes_and_removes_in_order() {
        let mut b = L2Book::default();
        b.apply(&BookDelta {
            bids: vec![lv(100, 5), lv(102, 1), lv(101, 2)],
            asks: vec![lv(105, 1), lv(103, 4)],
        });
        assert_eq!(b.bids, vec![lv(102, 1), lv(101, 2), lv(100, 5)]);
        assert_eq!(b.asks, vec![lv(103, 4), lv(105, 1)]);
        b.apply(&BookDelta { bids: vec![lv(101, 0), lv(100, 7), lv(99, 0)], asks: vec![] });
        assert_eq!(b.bids, vec![lv(102, 1), lv(100, 7)]);
    }

    /// The worked example of docs/protocol.md, "Book checksum".
    #[test]
    fn checksum_matches_the_documented_example() {
        let b = L2Book {
            bids: vec![lv(6412300, 12000), lv(6412250, 5000)],
            asks: vec![lv(6412350, 4000)],
        };
        let text = "64123.00:1.2000:64123.50:0.4000:64122.50:0.5000";
        assert_eq!(b.checksum(2, 4), crc32fast::hash(text.as_bytes()));
        assert_eq!(b.checksum(2, 4), 1_666_075_937);
        let mut after = b.clone();
        after.apply(&BookDelta { bids: vec![lv(6412250, 0)], asks: vec![] });
        assert_eq!(after.checksum(2, 4), 2_079_246_967);
        assert_eq!(L2Book::default().checksum(2, 4), 0, "empty book: CRC of the empty string");
    }

    #[test]
    fn checksum_covers_ten_levels_only() {
        let mut b = L2Book::default();
        for i in 0..12 {
            b.bids.push(lv(1000 - i, 1));
            b.asks.push(lv(2000 + i, 1));
        }
        let before = b.checksum(0, 0);
        b.bids[11].qty = 99; // 12th level: outside the checksum
        assert_eq!(b.checksum(0, 0), before);
        b.asks[9].qty = 99; // 10th level: inside
        assert_ne!(b.checksum(0, 0), before);
        assert!(b.top_equals(&b.clone()));
        let mut deeper = b.clone();
        deeper.bids[11].qty = 7;
        assert!(b.top_equals(&deeper), "levels beyond the checksum's do not count");
        deeper.bids[0].qty = 7;
        assert!(!b.top_equals(&deeper));
    }

    #[test]
    fn changed_levels_turn_one_side_into_the_other() {
        let l = |px, qty| Level { px, qty };
        let old = [l(105, 1), l(104, 2), l(103, 3)];
        let new = [l(106, 5), l(105, 1), l(104, 9)];
        let delta = changed_levels(&old, &new, true);
        assert_eq!(delta, vec![l(106, 5), l(104, 9), l(103, 0)]);
        let mut book = L2Book { bids: old.to_vec(), asks: vec![] };
        book.apply(&crate::BookDelta { bids: delta, asks: vec![] });
        assert_eq!(book.bids, new.to_vec());
        assert!(changed_levels(&new, &new, false).is_empty());
    }
}
