//! Per-channel sequence checking (`docs/protocol.md`, "Sequence numbers and gaps"): within a
//! channel `seq` must grow by exactly 1, except across a `gap` notice, which moves the
//! expectation to `to + 1`. A jump without a notice is an undeclared gap: a server bug.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::scan::Scanned;

/// Checks the messages of one connection. The first message of a channel sets its baseline.
#[derive(Debug, Default)]
pub struct SeqTracker {
    /// Next expected seq per channel name, in a list while the connection has few channels
    /// (comparing a handful of short names beats hashing one), in `many` beyond [`FEW`].
    few: Vec<(Box<[u8]>, u64)>,
    many: HashMap<Box<[u8]>, u64, BuildHasherDefault<Fnv1a>>,
    /// Data messages seen.
    pub messages: u64,
    /// Gap notices seen.
    pub declared_gaps: u64,
    /// Book snapshots seen (each restarts its channel's sequence).
    pub snapshots: u64,
    /// Seq jumps (or repeats) without a gap notice.
    pub undeclared_gaps: u64,
    /// Messages skipped by undeclared forward jumps: data silently lost.
    pub undeclared_missing: u64,
}

/// Channels a connection's list holds before they move to a map.
const FEW: usize = 16;

impl SeqTracker {
    /// Feeds one message; replies other than gap notices are ignored. Allocates only the
    /// first time a channel is seen.
    pub fn observe(&mut self, msg: Scanned<'_>) {
        match msg {
            Scanned::Data { ch, seq, .. } => {
                self.messages += 1;
                match self.expected(ch) {
                    Some(expected) => {
                        let jump = (seq != *expected).then(|| seq.saturating_sub(*expected));
                        *expected = seq + 1;
                        if let Some(missing) = jump {
                            self.undeclared_gaps += 1;
                            self.undeclared_missing += missing;
                        }
                    }
                    None => self.set(ch, seq + 1),
                }
            }
            Scanned::Gap { ch, to, .. } => {
                self.declared_gaps += 1;
                self.set(ch, to + 1);
            }
            Scanned::Snapshot { ch, seq } => {
                self.snapshots += 1;
                self.set(ch, seq + 1);
            }
            Scanned::Other => {}
        }
    }

    /// The next seq expected on `ch`, once it was seen.
    fn expected(&mut self, ch: &[u8]) -> Option<&mut u64> {
        if self.many.is_empty() {
            self.few.iter_mut().find(|(name, _)| **name == *ch).map(|(_, next)| next)
        } else {
            self.many.get_mut(ch)
        }
    }

    fn set(&mut self, ch: &[u8], next: u64) {
        if let Some(expected) = self.expected(ch) {
            *expected = next;
        } else if self.many.is_empty() && self.few.len() < FEW {
            self.few.push((ch.into(), next));
        } else {
            self.many.extend(self.few.drain(..));
            self.many.insert(ch.into(), next);
        }
    }
}

/// FNV-1a: channel names are short, trusted and looked up once per message, where SipHash's
/// DoS resistance only costs the load client time.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Fnv1a {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(ch: &[u8], seq: u64) -> Scanned<'_> {
        Scanned::Data { ch, seq, ts: 0 }
    }

    #[test]
    fn catches_an_injected_gap_and_honours_a_declared_one() {
        let mut t = SeqTracker::default();
        for seq in [7, 8, 10] {
            t.observe(data(b"trades.BTC-USD", seq)); // 9 is missing, undeclared
        }
        t.observe(data(b"quotes.BTC-USD", 1)); // channels are independent
        t.observe(Scanned::Gap { ch: b"trades.BTC-USD", from: 11, to: 20 });
        t.observe(data(b"trades.BTC-USD", 21));
        t.observe(data(b"quotes.BTC-USD", 2));
        assert_eq!((t.messages, t.declared_gaps, t.undeclared_gaps), (6, 1, 1));
        assert_eq!(t.undeclared_missing, 1);
        t.observe(data(b"quotes.BTC-USD", 2)); // a duplicate is a jump too
        assert_eq!((t.undeclared_gaps, t.undeclared_missing), (2, 1));
    }

    #[test]
    fn keeps_every_channel_apart_beyond_the_short_list() {
        let names: Vec<String> = (0..3 * FEW).map(|i| format!("trades.S{i}")).collect();
        let mut t = SeqTracker::default();
        for seq in 1..=3 {
            for name in &names {
                t.observe(data(name.as_bytes(), seq));
            }
        }
        assert_eq!((t.messages, t.undeclared_gaps), (9 * FEW as u64, 0));
        // One channel from the list's time, one from the map's: each still checked.
        t.observe(data(names[0].as_bytes(), 5));
        t.observe(data(names[2 * FEW].as_bytes(), 3));
        assert_eq!((t.undeclared_gaps, t.undeclared_missing), (2, 1));
    }
}
