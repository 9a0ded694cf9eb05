//! The gateway's memory of the market, shared by the producer (which writes it) and the
//! workers (which read it for a client now and then): per channel, the last frames for
//! resume, and, for book channels, the current L2 book for snapshots and checksums.
//!
//! Consistency: the producer updates a channel's state *before* pushing the frame into the
//! rings, so whatever a worker reads here is at or ahead of what it has delivered. What a
//! client gets from here (a snapshot as of seq X, or replayed frames up to X) therefore only
//! ever overlaps the live frames still in the worker's ring; the connection skips those with
//! a floor at X (`backpressure::Outbound::set_floor`), so nothing is duplicated or missed.
//!
//! Locking: one mutex per channel, taken once per tick by the producer and once per
//! subscribe/resume/snapshot by a worker; the fan-out hot path never touches it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use tickfan_proto::book::CHECKSUM_DEPTH;
use tickfan_proto::encode::{write_book_snapshot_json, write_tick_json_with_crc};
use tickfan_proto::{unix_now_ns, ChannelId, Kind, L2Book, SymbolTable, Tick, TickBody};

use crate::frame::{self, Frame, Opcode};

/// How much history each channel keeps for resume.
#[derive(Clone, Copy, Debug)]
pub struct ResumeWindow {
    /// Frames kept per channel (0 disables resume).
    pub frames: usize,
    /// Frames older than this (by their `ts`) are forgotten.
    pub max_age_ns: u64,
}

/// What a resume from a seq can get.
#[derive(Debug)]
pub enum Replay {
    /// Every frame after the requested seq, up to and including `last`.
    Frames { frames: Vec<Frame>, last: u64 },
    /// Out of the window (too old, or a seq this channel never had).
    Unavailable,
}

#[derive(Debug, Default)]
struct ChannelState {
    /// The last frames, seq-contiguous, oldest first.
    history: VecDeque<Frame>,
    /// Seq and ts of the last frame published (0 before any).
    last_seq: u64,
    last_ts: u64,
    /// Book channels: the book after `last_seq`.
    book: L2Book,
    /// The book's top levels when its checksum was last computed, and that checksum: updates
    /// that change only deeper levels reuse it.
    checksummed: L2Book,
    crc: u32,
    /// Scratch for the checksum string.
    text: Vec<u8>,
    /// The last seqs the upstream skipped on this channel (`from..=to`; 0..=0 when none).
    upstream_gap: (u64, u64),
}

impl ChannelState {
    /// Applies a book update and returns the checksum of the book after it.
    fn apply_book(&mut self, delta: &tickfan_proto::BookDelta, sym: &tickfan_proto::Symbol) -> u32 {
        self.book.apply(delta);
        if !self.checksummed.bids.is_empty() && self.book.top_equals(&self.checksummed) {
            return self.crc;
        }
        self.crc = self.book.checksum_with(sym.px_scale, sym.qty_scale, &mut self.text);
        for (kept, side) in [
            (&mut self.checksummed.bids, &self.book.bids),
            (&mut self.checksummed.asks, &self.book.asks),
        ] {
            kept.clear();
            kept.extend_from_slice(&side[..side.len().min(CHECKSUM_DEPTH)]);
        }
        self.crc
    }
}

/// Per-channel state of the whole feed.
#[derive(Debug)]
pub struct Market {
    symbols: Arc<SymbolTable>,
    channels: Vec<Mutex<ChannelState>>,
    window: ResumeWindow,
    /// Identifies this run of the sequence numbers (see `docs/protocol.md`, "Resume"):
    /// a restarted gateway starts its seqs again under a new epoch.
    epoch: String,
}

impl Market {
    /// The market of `symbols`, numbered under the source's `epoch`, or under a new one of its
    /// own when the source has none.
    pub fn new(symbols: Arc<SymbolTable>, window: ResumeWindow, epoch: Option<String>) -> Market {
        let channels = (0..symbols.channel_count()).map(|_| Mutex::default()).collect();
        let epoch = epoch.unwrap_or_else(|| format!("{:016x}", unix_now_ns()));
        Market { symbols, channels, window, epoch }
    }

    pub fn symbols(&self) -> &Arc<SymbolTable> {
        &self.symbols
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn state(&self, ch: ChannelId) -> MutexGuard<'_, ChannelState> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than losing the channel; keep serving.
        self.channels[ch.index()].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Producer: records `tick` (book channels: applies it to the book), encodes it once into
    /// a frame (book updates with the book's checksum) and keeps it for resume. `json` is the
    /// caller's scratch buffer.
    pub fn publish(&self, tick: &Tick, json: &mut Vec<u8>) -> Frame {
        let ch = tick.channel();
        let sym = self.symbols.get(tick.sym);
        let mut st = self.state(ch);
        let crc = match &tick.body {
            TickBody::Book(delta) => Some(st.apply_book(delta, sym)),
            _ => None,
        };
        json.clear();
        write_tick_json_with_crc(json, tick, sym, crc);
        let frame =
            Frame { ch, seq: tick.seq, ts: tick.ts, bytes: frame::build(Opcode::Text, json) };
        if st.last_seq != 0 && tick.seq > st.last_seq + 1 {
            st.upstream_gap = (st.last_seq + 1, tick.seq - 1);
        }
        st.last_seq = tick.seq;
        st.last_ts = tick.ts;
        if self.window.frames > 0 {
            let oldest_kept = tick.ts.saturating_sub(self.window.max_age_ns);
            let history = &mut st.history;
            if history.back().is_some_and(|f| f.seq + 1 != tick.seq) {
                history.clear(); // never keep a history with a hole in it
            }
            history.push_back(frame.clone());
            while history.len() > self.window.frames
                || history.front().is_some_and(|f| f.ts < oldest_kept)
            {
                history.pop_front();
            }
        }
        frame
    }

    /// Producer: replaces book channel `snapshot.channel()`'s book by the whole book the
    /// upstream sent as of `snapshot.seq` (after this gateway joined mid-stream or lost
    /// updates), and returns the `snapshot` frame that tells subscribers so. The resume
    /// history restarts after it: nothing before it can be replayed contiguously.
    pub fn resync_book(&self, snapshot: &Tick, json: &mut Vec<u8>) -> Frame {
        let ch = snapshot.channel();
        debug_assert_eq!(ch.kind(), Kind::Book);
        let sym = self.symbols.get(snapshot.sym);
        let mut st = self.state(ch);
        st.book = L2Book::default();
        st.checksummed = L2Book::default();
        if let TickBody::Book(levels) = &snapshot.body {
            st.apply_book(levels, sym);
        }
        if st.last_seq != 0 && snapshot.seq > st.last_seq + 1 {
            st.upstream_gap = (st.last_seq + 1, snapshot.seq - 1);
        }
        st.last_seq = snapshot.seq;
        st.last_ts = snapshot.ts;
        st.history.clear();
        json.clear();
        write_book_snapshot_json(json, &st.book, sym, snapshot.seq, snapshot.ts);
        let bytes = frame::build(Opcode::Text, json);
        Frame { ch, seq: snapshot.seq, ts: snapshot.ts, bytes }
    }

    /// Seq of the last frame published on `ch` (0 before any).
    pub fn last_seq(&self, ch: ChannelId) -> u64 {
        self.state(ch).last_seq
    }

    /// Whether seqs `from..=to` of `ch` are the last ones its upstream skipped (they never
    /// reached this gateway), rather than frames a worker's ring dropped.
    pub fn lost_upstream(&self, ch: ChannelId, from: u64, to: u64) -> bool {
        let (a, b) = self.state(ch).upstream_gap;
        a != 0 && a <= from && to <= b
    }

    /// The frames of `ch` after seq `after`, if the window still holds all of them.
    pub fn replay(&self, ch: ChannelId, after: u64) -> Replay {
        let st = self.state(ch);
        if after > st.last_seq {
            return Replay::Unavailable;
        }
        if after == st.last_seq {
            return Replay::Frames { frames: Vec::new(), last: after };
        }
        match st.history.front() {
            Some(first) if first.seq <= after + 1 => {
                let skip = (after + 1 - first.seq) as usize;
                let frames = st.history.iter().skip(skip).cloned().collect();
                Replay::Frames { frames, last: st.last_seq }
            }
            _ => Replay::Unavailable,
        }
    }

    /// A `snapshot` frame of book channel `ch`, and the seq it is as of.
    pub fn snapshot(&self, ch: ChannelId) -> (Bytes, u64) {
        debug_assert_eq!(ch.kind(), Kind::Book);
        let sym = self.symbols.get(ch.sym());
        let mut json = Vec::with_capacity(4096);
        let seq = {
            let st = self.state(ch);
            write_book_snapshot_json(&mut json, &st.book, sym, st.last_seq, st.last_ts);
            st.last_seq
        };
        (frame::build(Opcode::Text, &json), seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feed_sim::{Feed, SimConfig};

    fn market(frames: usize, age_s: u64) -> (Market, Feed) {
        let feed = Feed::new(SimConfig { symbols: 3, burst_every_s: 0.0, ..SimConfig::default() });
        let symbols = Arc::new(feed.symbols().clone());
        let window = ResumeWindow { frames, max_age_ns: age_s * 1_000_000_000 };
        (Market::new(symbols, window, None), feed)
    }

    #[test]
    fn books_follow_the_feed_and_replay_is_exact() {
        let (m, mut feed) = market(100_000, 3600);
        let mut json = Vec::new();
        for _ in 0..20_000 {
            m.publish(&feed.next_tick_virtual(), &mut json);
        }
        while feed.pending() > 0 {
            m.publish(&feed.next_tick_virtual(), &mut json);
        }
        let ch = ChannelId::new(Kind::Book, 0);
        let (bids, asks) = feed.book(0).unwrap();
        let (snap, seq) = m.snapshot(ch);
        let v: serde_json::Value = serde_json::from_slice(&snap[4..]).unwrap();
        assert_eq!(v["seq"], seq);
        assert_eq!(v["bids"].as_array().unwrap().len(), bids.len());
        assert_eq!(v["asks"].as_array().unwrap().len(), asks.len());
        let book = L2Book { bids: bids.to_vec(), asks: asks.to_vec() };
        let sym = m.symbols().get(0);
        assert_eq!(v["crc"], book.checksum(sym.px_scale, sym.qty_scale));

        let Replay::Frames { frames, last } = m.replay(ch, seq - 10) else { panic!() };
        assert_eq!(last, seq);
        assert_eq!(
            frames.iter().map(|f| f.seq).collect::<Vec<_>>(),
            (seq - 9..=seq).collect::<Vec<_>>()
        );
        assert!(matches!(m.replay(ch, seq + 1), Replay::Unavailable));
        assert!(
            matches!(m.replay(ch, seq), Replay::Frames { ref frames, .. } if frames.is_empty())
        );
    }

    #[test]
    fn the_cached_checksum_equals_the_reference_one_over_a_long_feed() {
        let (m, mut feed) = market(10, 1);
        let mut json = Vec::new();
        for _ in 0..30_000 {
            let tick = feed.next_tick_virtual();
            let frame = m.publish(&tick, &mut json);
            if let TickBody::Book(_) = tick.body {
                let st = m.state(frame.ch);
                let sym = m.symbols().get(tick.sym);
                let crc = format!(",\"crc\":{}}}", st.book.checksum(sym.px_scale, sym.qty_scale));
                assert!(json.ends_with(crc.as_bytes()), "seq {}", tick.seq);
            }
        }
    }

    #[test]
    fn the_window_is_bounded_by_count() {
        let (m, mut feed) = market(5, 3600);
        let mut json = Vec::new();
        for _ in 0..2_000 {
            m.publish(&feed.next_tick_virtual(), &mut json);
        }
        let ch = ChannelId::new(Kind::Trades, 0);
        let last = m.last_seq(ch);
        assert!(last > 10);
        assert!(
            matches!(m.replay(ch, last - 5), Replay::Frames { ref frames, .. } if frames.len() == 5)
        );
        assert!(matches!(m.replay(ch, last - 6), Replay::Unavailable));
    }
}
