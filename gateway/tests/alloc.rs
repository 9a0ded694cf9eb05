//! The fan-out hot path allocates nothing per delivered message (issue #10), counted with a
//! counting global allocator: a regression fails here, whatever the machine's speed. Also
//! reported, next to timings, by `cargo bench -p gateway --bench alloc`.
//!
//! Queues, per-channel state and notice memory grow to their high-water marks first (rarely
//! reached ones late: the feed is random, if seeded); the counts are taken after that. Should a
//! change move a high-water mark past the warm-up, the count here is a few per subscriber,
//! not one per message.

#[path = "support/alloc.rs"]
mod counting;

use counting::{Fanout, Readers};
use tickfan_proto::Kind;

#[test]
fn a_reader_that_keeps_up_costs_no_allocation() {
    let mut f = Fanout::new(4, 4 << 20, Readers::Fast, &Kind::ALL);
    f.run(100);
    let t = f.run(2000);
    assert_eq!(t.delivered, t.offered, "{t:?}");
    assert_eq!(t.allocations, 0, "allocations over {} delivered messages: {t:?}", t.delivered);
}

#[test]
fn a_lagging_reader_costs_no_allocation_while_behind_nor_when_caught_up() {
    // Queues at the smallest bound allowed fill up within each slow phase; frames are dropped
    // (trades: gap, quotes: conflate), declared, and caught up in each fast phase.
    let lagging = Readers::Lagging { slow: 40, fast: 10 };
    let mut f = Fanout::new(4, 64 << 10, lagging, &[Kind::Trades, Kind::Quotes]);
    f.run(5000); // a hundred cycles
    let t = f.run(2000);
    assert!(t.dropped > t.delivered / 10 && t.notices > 1000, "the readers must lag: {t:?}");
    assert_eq!(t.allocations, 0, "allocations over {} delivered messages: {t:?}", t.delivered);
}
