//! Timed events of a worker's connections: the `shutdown` notice and the close at the maximum
//! connection age (`--max-connection-age`), the close when a client's credentials expire. One
//! heap per worker, looked at every [`TICK`]; connections without a deadline cost nothing.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use crate::channels::ConnKey;

/// How often a worker looks for deadlines that passed: the precision of the events.
pub const TICK: Duration = Duration::from_millis(50);

/// What happens to a connection at its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Due {
    /// `{"op":"shutdown","in_ms":…,"reason":"max_age"}`: the close follows in `in_ms`.
    AgeNotice { in_ms: u64 },
    /// Close with 1001: the connection reached its maximum age.
    MaxAge,
    /// Close with 1008: the credentials the connection was opened with expired.
    Expired,
    /// Close with 1001: its turn in the shutdown's drain (`--drain-secs`).
    Drained,
}

/// A worker's pending deadlines. A connection is named by its key and its serial, so an event
/// of a connection gone meanwhile (whose key was reused) is recognised and dropped.
#[derive(Debug, Default)]
pub struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, ConnKey, u32, Due)>>,
}

impl Deadlines {
    pub fn schedule(&mut self, at: Instant, key: ConnKey, serial: u32, due: Due) {
        self.heap.push(Reverse((at, key, serial, due)));
    }

    /// The next event due by `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<(ConnKey, u32, Due)> {
        let Reverse((at, ..)) = self.heap.peek()?;
        if *at > now {
            return None;
        }
        let Reverse((_, key, serial, due)) = self.heap.pop()?;
        Some((key, serial, due))
    }

    /// Forgets the events of connections gone (`live` says which are not), so that the heap
    /// holds about the events of open connections rather than those of every connection opened
    /// within the longest deadline (a day of churn, with `--max-connection-age 86400`).
    pub fn forget_unless(&mut self, live: impl Fn(ConnKey, u32) -> bool) {
        self.heap.retain(|Reverse((_, key, serial, _))| live(*key, *serial));
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// When a connection opened now reaches `max_age`, shortened by up to 5 % (by `spread`, 0 to 1)
/// so that connections opened together do not all reconnect together; and its notice, a tenth
/// of the age (at most 30 s) before.
pub fn age_deadlines(opened: Instant, max_age: Duration, spread: f64) -> [(Instant, Due); 2] {
    let age = max_age.mul_f64(1.0 - 0.05 * spread.clamp(0.0, 1.0));
    let lead = (age / 10).min(Duration::from_secs(30));
    let notice = Due::AgeNotice { in_ms: lead.as_millis() as u64 };
    [(opened + age - lead, notice), (opened + age, Due::MaxAge)]
}

/// When each of `n` connections closes in a drain of `window` started at `now`: one after
/// the other, evenly spread over the window, the first after a tenth of it (at most 1 s), so
/// that every client has its notice first and they do not all reconnect at once.
pub fn drain_delays(n: usize, window: Duration) -> impl Iterator<Item = Duration> {
    let lead = (window / 10).min(Duration::from_secs(1));
    let rest = window.saturating_sub(lead);
    (0..n).map(move |i| lead + rest.mul_f64(if n > 1 { i as f64 / (n - 1) as f64 } else { 1.0 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_in_time_order_once_due() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        for (at, due) in age_deadlines(t0, Duration::from_secs(100), 0.0) {
            d.schedule(at, 7, 1, due);
        }
        d.schedule(t0 + Duration::from_secs(5), 3, 9, Due::Expired);
        assert_eq!(d.pop_due(t0), None);
        assert_eq!(d.pop_due(t0 + Duration::from_secs(5)), Some((3, 9, Due::Expired)));
        assert_eq!(d.pop_due(t0 + Duration::from_secs(89)), None);
        let at = t0 + Duration::from_secs(90);
        assert_eq!(d.pop_due(at), Some((7, 1, Due::AgeNotice { in_ms: 10_000 })));
        assert_eq!(d.pop_due(t0 + Duration::from_secs(100)), Some((7, 1, Due::MaxAge)));
        assert!(d.is_empty());
        // Spread shortens the age by up to 5 %; the notice is at most 30 s ahead.
        // Events of connections gone can be forgotten before they are due.
        d.schedule(t0, 1, 1, Due::MaxAge);
        d.schedule(t0, 2, 1, Due::MaxAge);
        d.forget_unless(|key, _| key == 2);
        assert_eq!(d.pop_due(t0), Some((2, 1, Due::MaxAge)));
        assert!(d.is_empty());
        let [(notice, _), (close, _)] = age_deadlines(t0, Duration::from_secs(3600), 1.0);
        assert_eq!(close - t0, Duration::from_secs(3420));
        assert_eq!(close - notice, Duration::from_secs(30));
    }

    #[test]
    fn a_drain_spreads_the_closes_over_its_window() {
        let ms = |n, w| drain_delays(n, Duration::from_millis(w)).map(|d| d.as_millis()).collect();
        let ms: fn(usize, u64) -> Vec<u128> = ms;
        assert_eq!(ms(5, 2000), vec![200, 650, 1100, 1550, 2000]);
        assert_eq!(ms(1, 2000), vec![2000]);
        assert_eq!(ms(3, 30_000), vec![1000, 15_500, 30_000]);
        assert!(ms(0, 1000).is_empty());
    }
}
