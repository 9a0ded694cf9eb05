//! Forms of the book a subscription may ask for: `book.<SYM>@1`, `@5`, `@10` (the top levels
//! only, updated with the book), `book.<SYM>@100ms`, `@1000ms` (the whole book, one update
//! per interval at most) and both (`book.<SYM>@10@100ms`). Each form is a channel of its own,
//! made by the producer from the book only while some client subscribes to it, and encoded once
//! for all of them: an update carries the levels of the form that changed, and its checksum
//! covers the form's levels (docs/protocol.md, "Book depth and speed").
//!
//! The market keeps each form's view (its levels as of its last message) under the form
//! channel's lock, so a new subscriber's snapshot matches the stream. A form that loses its
//! last subscriber is no longer kept; when one comes back, the form starts again with a
//! snapshot in its stream.

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use tickfan_proto::ChannelId;

use crate::frame::Frame;
use crate::market::Market;

/// The producer's side of the forms: which are wanted, which it keeps, when each interval
/// form is due.
#[derive(Debug)]
pub struct Forms {
    market: Arc<Market>,
    /// The subscribers' count generation the lists below were made at.
    generation: Option<u64>,
    /// Every form channel some client subscribes to.
    wanted: Vec<ChannelId>,
    /// By symbol: its wanted forms that follow every change (no interval).
    every_change: Vec<Vec<ChannelId>>,
    /// Forms the producer keeps now (their first message went out).
    live: FxHashSet<ChannelId>,
    /// Interval forms: the feed time of their next update.
    next_due: FxHashMap<ChannelId, u64>,
}

impl Forms {
    pub fn new(market: Arc<Market>) -> Forms {
        let symbols = market.symbols().len();
        Forms {
            market,
            generation: None,
            wanted: Vec::new(),
            every_change: vec![Vec::new(); symbols],
            live: FxHashSet::default(),
            next_due: FxHashMap::default(),
        }
    }

    /// The book of `sym` changed (an update or a resync published at `ts`): its wanted forms
    /// without an interval follow it now, into `out`.
    pub fn book_changed(&mut self, sym: u32, ts: u64, json: &mut Vec<u8>, out: &mut Vec<Frame>) {
        let forms = &self.every_change[sym as usize];
        if forms.is_empty() {
            return;
        }
        for &ch in forms {
            let view = self.market.form_view(ch);
            if let Some(frame) = self.market.publish_form(ch, ts, view, json) {
                out.push(frame);
                self.live.insert(ch);
            }
        }
    }

    /// After a batch, at feed time `now`: starts the forms newly wanted (their snapshot),
    /// stops those no longer wanted, and sends the interval forms whose interval has passed
    /// (an update if their levels changed).
    pub fn due(&mut self, now: u64, json: &mut Vec<u8>, out: &mut Vec<Frame>) {
        self.refresh();
        for &ch in &self.wanted {
            let Some((_, speed)) = ch.kind().book_form() else { continue };
            let live = self.live.contains(&ch);
            let due = match speed {
                None => !live,
                Some(_) => !live || self.next_due.get(&ch).is_none_or(|&at| now >= at),
            };
            if !due {
                continue;
            }
            if let Some(ms) = speed {
                self.next_due.insert(ch, now + u64::from(ms) * 1_000_000);
            }
            let view = self.market.form_view(ch);
            if let Some(frame) = self.market.publish_form(ch, now, view, json) {
                out.push(frame);
                self.live.insert(ch);
            }
        }
    }

    /// Looks again at which forms are wanted when the subscriptions changed.
    fn refresh(&mut self) {
        let generation = self.market.forms.generation();
        if self.generation == Some(generation) {
            return;
        }
        self.generation = Some(generation);
        self.wanted = self.market.wanted_forms();
        let wanted: FxHashSet<ChannelId> = self.wanted.iter().copied().collect();
        for ch in self.live.iter().filter(|ch| !wanted.contains(ch)) {
            self.market.stop_form(*ch);
        }
        self.live.retain(|ch| wanted.contains(ch));
        self.next_due.retain(|ch, _| wanted.contains(ch));
        self.every_change.iter_mut().for_each(Vec::clear);
        for &ch in &self.wanted {
            if ch.kind().book_form().is_some_and(|(_, speed)| speed.is_none()) {
                self.every_change[ch.sym() as usize].push(ch);
            }
        }
    }
}
