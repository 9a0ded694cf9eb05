//! Allocations per delivered message on the fan-out hot path (issue #10), counted by a counting
//! global allocator in a steady state, then timed by criterion: K subscribers of every channel,
//! batches of 64 frames offered to every queue and flushed, for readers that keep up and for
//! readers that lag (queues full, frames dropped, gap notices and conflated quotes on
//! catch-up). `tests/alloc.rs` asserts the counts are zero.
//! Run: `cargo bench -p gateway --bench alloc`.

#[path = "../tests/support/alloc.rs"]
mod counting;

use counting::{Fanout, Readers, BATCH};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tickfan_proto::Kind;

/// Readers that lag: 40 batches reading half of what comes, then 10 reading everything.
const LAGGING: Readers = Readers::Lagging { slow: 40, fast: 10 };

fn scenarios(k: usize) -> [(&'static str, Fanout); 2] {
    [
        ("fast_reader", Fanout::new(k, 4 << 20, Readers::Fast, &Kind::ALL)),
        ("lagging_reader", Fanout::new(k, 64 << 10, LAGGING, &[Kind::Trades, Kind::Quotes])),
    ]
}

fn steady_state(c: &mut Criterion) {
    let mut g = c.benchmark_group("steady_state_batch");
    for k in [10usize, 100] {
        for (name, mut f) in scenarios(k) {
            // Queues, notice memory and per-channel state reach their high-water marks (some
            // only after a thousand batches: the feed is random, if seeded).
            f.run(1500);
            let t = f.run(1000);
            println!(
                "allocations {name} K={k}: {} over {} delivered messages ({} notices, {} \
                 dropped) = {:.6} per delivered message",
                t.allocations,
                t.delivered,
                t.notices,
                t.dropped,
                t.allocations_per_delivered()
            );
            g.throughput(Throughput::Elements((k * BATCH) as u64));
            g.bench_with_input(BenchmarkId::new(name, k), &k, |b, _| b.iter(|| f.run(1)));
        }
    }
    g.finish();
}

criterion_group!(benches, steady_state);
criterion_main!(benches);
