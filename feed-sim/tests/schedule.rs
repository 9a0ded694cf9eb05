//! The tick schedule seen through `Feed`: steady spacing, bursts.

use feed_sim::{Feed, SimConfig};

#[test]
fn steady_rate_spaces_ticks_exactly() {
    let mut f = Feed::new(SimConfig { rate: 1000.0, burst_every_s: 0.0, ..SimConfig::default() });
    assert_eq!(f.next_due_ns(), 0);
    for k in 1..=10_000u64 {
        f.next_tick(0);
        assert_eq!(f.next_due_ns(), k * 1_000_000, "after {k} ticks");
        assert!(!f.in_burst());
    }
}

#[test]
fn bursts_lift_the_average_rate_between_base_and_peak() {
    let (rate, mult) = (200.0, 10.0);
    let mut f = Feed::new(SimConfig { rate, burst_mult: mult, ..SimConfig::default() });
    let horizon = 60_000_000_000;
    let (mut n, mut burst_ticks) = (0u64, 0u64);
    let (mut min_gap, mut max_gap) = (u64::MAX, 0);
    let mut last = f.next_due_ns();
    while f.next_due_ns() < horizon {
        burst_ticks += u64::from(f.in_burst());
        f.next_tick(0);
        n += 1;
        let gap = f.next_due_ns() - last;
        (min_gap, max_gap) = (min_gap.min(gap), max_gap.max(gap));
        last = f.next_due_ns();
    }
    let avg = n as f64 / 60.0;
    assert!(avg > rate && avg < rate * mult, "{avg} ticks/s");
    assert!(f.bursts() > 0 && burst_ticks > 0);
    // Spacing is 5 ms outside bursts, 0.5 ms inside (a tick straddling an edge is in between).
    assert!(max_gap.abs_diff(5_000_000) <= 2, "{max_gap}");
    assert!(min_gap.abs_diff(500_000) <= 2, "{min_gap}");
}
