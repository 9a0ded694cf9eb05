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
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use tickfan_proto::book::CHECKSUM_DEPTH;
use tickfan_proto::encode::{write_book_snapshot_message, write_tick_message};
use tickfan_proto::{
    unix_now_ns, ChannelId, ChannelSpec, Kind, L2Book, SymbolTable, Tick, TickBody,
};

use crate::frame::{self, Frame, Opcode};

/// How much history the market keeps for resume: every channel's frames of the last
/// `max_age_ns`, as long as all of them together fit in `max_bytes`; beyond that the oldest
/// frames go first, whatever their channel. A client that drops for a few seconds resumes on
/// any channel, busy or quiet, however bursty the feed.
#[derive(Clone, Copy, Debug)]
pub struct ResumeWindow {
    /// Frames older than this (by their `ts`, against the newest tick's) are forgotten.
    /// 0 disables resume.
    pub max_age_ns: u64,
    /// Bound on the bytes of all frames kept (each counted with [`FRAME_OVERHEAD`]).
    pub max_bytes: usize,
}

impl ResumeWindow {
    fn enabled(&self) -> bool {
        self.max_age_ns > 0 && self.max_bytes > 0
    }
}

/// What a kept frame costs beyond its bytes: the allocation's header and refcount, its slot
/// in the channel's history and in the eviction queue.
pub const FRAME_OVERHEAD: usize = 96;

/// Every kept frame in publish order, for eviction oldest first over all channels.
#[derive(Debug, Default)]
struct Kept {
    frames: VecDeque<KeptFrame>,
    bytes: usize,
}

#[derive(Clone, Copy, Debug)]
struct KeptFrame {
    ch: ChannelId,
    seq: u64,
    ts: u64,
    size: u32,
}

/// How far past this gateway's last seq of a channel a resume may ask for and still resume (see
/// [`Market::replay`]); further is a seq this feed never had.
pub const MAX_AHEAD: u64 = 100_000;

/// What a resume from a seq can get.
#[derive(Debug)]
pub enum Replay {
    /// Every frame after the requested seq, up to and including `last`.
    Frames { frames: Vec<Frame>, last: u64 },
    /// Out of the window (too old, or a seq this channel is not about to have).
    Unavailable,
}

#[derive(Debug, Default)]
struct ChannelState {
    /// The last frames, seq-contiguous, oldest first, each with its publish position.
    history: VecDeque<(u64, Frame)>,
    /// Publish position of the frame the history restarted at when it was last cleared (a
    /// hole, a resync): nothing of this channel before it can be replayed.
    cleared_at: u64,
    /// State channels (ticker, candles, instrument status): the last message, which a new
    /// subscriber gets first (each is a whole state).
    latest: Option<Box<Frame>>,
    /// A form of the book: kept up to date by the producer (while it has subscribers); its
    /// `book` is then the form's view as of `last_seq`.
    live: bool,
    /// Seq and ts of the last frame published (0 before any).
    last_seq: u64,
    last_ts: u64,
    /// Book channels and forms: the book after `last_seq`; boxed, and only for them, since
    /// most channels are not books (a channel's state is paid for every channel of every
    /// symbol).
    books: Option<Box<BookState>>,
    /// The last seqs the upstream skipped on this channel (`from..=to`; 0..=0 when none).
    upstream_gap: (u64, u64),
}

/// A book channel's book.
#[derive(Debug, Default)]
struct BookState {
    /// The book after the channel's last seq (a form's view, for a form).
    book: L2Book,
    /// The book's top levels when its checksum was last computed, and that checksum: updates
    /// that change only deeper levels reuse it.
    checksummed: L2Book,
    crc: u32,
    /// Scratch for the checksum string.
    text: Vec<u8>,
}

/// The book of a book channel that has none yet.
static NO_BOOK: L2Book = L2Book { bids: Vec::new(), asks: Vec::new() };

impl ChannelState {
    /// The channel's book state, made on first use.
    fn books(&mut self) -> &mut BookState {
        self.books.get_or_insert_with(Box::default)
    }

    /// The channel's book (empty before any).
    fn book(&self) -> &L2Book {
        self.books.as_deref().map_or(&NO_BOOK, |b| &b.book)
    }

    /// Moves the channel to `seq` (published at `ts`), remembering the seqs skipped on the way
    /// as the upstream's (a worker's ring cannot skip anything here).
    fn advance(&mut self, seq: u64, ts: u64) {
        if self.last_seq != 0 && seq > self.last_seq + 1 {
            self.upstream_gap = (self.last_seq + 1, seq - 1);
        }
        self.last_seq = seq;
        self.last_ts = ts;
    }

    /// Applies a book update and returns the checksum of the book after it.
    fn apply_book(&mut self, delta: &tickfan_proto::BookDelta, sym: &tickfan_proto::Symbol) -> u32 {
        let b = self.books();
        b.book.apply(delta);
        if !b.checksummed.bids.is_empty() && b.book.top_equals(&b.checksummed) {
            return b.crc;
        }
        b.crc = b.book.checksum_with(sym.px_scale, sym.qty_scale, &mut b.text);
        for (kept, side) in
            [(&mut b.checksummed.bids, &b.book.bids), (&mut b.checksummed.asks, &b.book.asks)]
        {
            kept.clear();
            kept.extend_from_slice(&side[..side.len().min(CHECKSUM_DEPTH)]);
        }
        b.crc
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
    /// The resume window's frames in publish order, for eviction.
    kept: Mutex<Kept>,
    /// Position of the next frame published, over all channels (1 for the first): orders the
    /// frames for a Server-Sent Events resume (`sse_replay`).
    next_pos: AtomicU64,
    /// Clients streaming each channel over Server-Sent Events: while a channel has any, its
    /// frames carry their SSE form (`Frame::sse`).
    pub sse: Interest,
    /// Subscribers that negotiated permessage-deflate, per channel: while a channel has any,
    /// its frames carry their compressed form too (`Frame::deflated`).
    pub deflate: Interest,
    /// Subscribers that asked for binary data messages (`?format=binary`), per channel: while
    /// a channel has any, its trades, quotes and book updates carry it (`Frame::binary`).
    pub binary: Interest,
    /// Subscribers of the book's forms (`book.<SYM>@10`…): the producer makes a form only
    /// while it has some (`forms`).
    pub forms: Interest,
    /// Per symbol: halted by the feed's last `instruments` message.
    halted: Vec<std::sync::atomic::AtomicBool>,
}

/// How many subscriptions cover each channel, exactly or through its kind's wildcard, counted
/// by the workers as clients come and go, read by the producer.
#[derive(Debug)]
pub struct Interest {
    channels: Vec<AtomicU32>,
    kinds: [AtomicU32; Kind::COUNT as usize],
    /// Bumped on every change.
    generation: AtomicU64,
}

impl Interest {
    fn new(channels: usize) -> Interest {
        Interest {
            channels: (0..channels).map(|_| AtomicU32::new(0)).collect(),
            kinds: Default::default(),
            generation: AtomicU64::new(0),
        }
    }

    /// A subscription to `spec` starts (`+1`) or ends (`-1`).
    pub fn add(&self, spec: ChannelSpec, delta: i32) {
        let counter = match spec {
            ChannelSpec::Exact(ch) => &self.channels[ch.index()],
            ChannelSpec::Wildcard(kind) => &self.kinds[kind as usize],
        };
        if delta >= 0 {
            counter.fetch_add(delta as u32, Ordering::Relaxed);
        } else {
            counter.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Whether some subscription covers `ch`.
    pub fn any(&self, ch: ChannelId) -> bool {
        self.channels[ch.index()].load(Ordering::Relaxed) > 0
            || self.kinds[ch.kind() as usize].load(Ordering::Relaxed) > 0
    }

    /// Whether some subscription covers some channel of `kind`, for a quick look first.
    fn kind_has_any(&self, kind: Kind, symbols: usize) -> bool {
        self.kinds[kind as usize].load(Ordering::Relaxed) > 0
            || (0..symbols as u32).any(|s| self.any(ChannelId::new(kind, s)))
    }

    /// Changes so far: a reader looks again when it moved.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// What a Server-Sent Events resume gets ([`Market::sse_replay`]).
#[derive(Debug)]
pub struct SseReplay {
    /// Every frame of the stream's channels published after the client's last event, in
    /// publish order.
    pub frames: Vec<Frame>,
    /// For each channel of the stream, the seq the client has once the replay is through:
    /// live frames up to it are skipped.
    pub floors: Vec<(ChannelId, u64)>,
}

impl Market {
    /// The market of `symbols`, numbered under the source's `epoch`, or under a new one of its
    /// own when the source has none.
    pub fn new(symbols: Arc<SymbolTable>, window: ResumeWindow, epoch: Option<String>) -> Market {
        let channels = (0..symbols.channel_count()).map(|_| Mutex::default()).collect();
        let epoch = epoch.unwrap_or_else(|| format!("{:016x}", unix_now_ns()));
        let n = symbols.channel_count();
        let halted = (0..symbols.len()).map(|_| Default::default()).collect();
        Market {
            symbols,
            channels,
            window,
            epoch,
            kept: Mutex::default(),
            next_pos: AtomicU64::new(1),
            sse: Interest::new(n),
            deflate: Interest::new(n),
            binary: Interest::new(n),
            forms: Interest::new(n),
            halted,
        }
    }

    /// Whether the feed said symbol `sym` is halted (its last status message).
    pub fn is_halted(&self, sym: u32) -> bool {
        self.halted[sym as usize].load(Ordering::Relaxed)
    }

    /// The form channels some subscription covers now (the producer's list, rebuilt when
    /// [`Interest::generation`] moves).
    pub fn wanted_forms(&self) -> Vec<ChannelId> {
        let n = self.symbols.len();
        let mut wanted = Vec::new();
        for kind in Kind::ALL.into_iter().filter(|k| k.is_book_form()) {
            if self.forms.kind_has_any(kind, n) {
                let chans = (0..n as u32).map(|s| ChannelId::new(kind, s));
                wanted.extend(chans.filter(|&ch| self.forms.any(ch)));
            }
        }
        wanted
    }

    /// The view form channel `ch` of the book carries now: its symbol's book cut to the form's
    /// depth, copied under the book's lock (only the levels the form carries).
    pub fn form_view(&self, ch: ChannelId) -> L2Book {
        let st = self.state(ChannelId::new(Kind::Book, ch.sym()));
        let book = st.book();
        match ch.kind().book_form().and_then(|(depth, _)| depth) {
            None => book.clone(),
            Some(d) => {
                let d = usize::from(d);
                L2Book {
                    bids: book.bids[..book.bids.len().min(d)].to_vec(),
                    asks: book.asks[..book.asks.len().min(d)].to_vec(),
                }
            }
        }
    }

    /// Producer: publishes form channel `ch` of the book as `view` (the book cut to the form's
    /// depth) at `ts`: its snapshot when the form starts, then an update of the levels that
    /// changed since its last message (none when nothing did). The checksum covers the top 10
    /// levels of the view: every level a form of 1, 5 or 10 carries.
    pub fn publish_form(
        &self,
        ch: ChannelId,
        ts: u64,
        view: L2Book,
        json: &mut Vec<u8>,
    ) -> Option<Frame> {
        let sym = self.symbols.get(ch.sym());
        let mut st = self.state(ch);
        let kind = if st.live { "update" } else { "snapshot" };
        let (bids, asks) = if st.live {
            let bids = tickfan_proto::book::changed_levels(&st.book().bids, &view.bids, true);
            let asks = tickfan_proto::book::changed_levels(&st.book().asks, &view.asks, false);
            if bids.is_empty() && asks.is_empty() {
                return None;
            }
            (bids, asks)
        } else {
            (view.bids.clone(), view.asks.clone())
        };
        let b = st.books();
        let crc = view.checksum_with(sym.px_scale, sym.qty_scale, &mut b.text);
        b.book = view;
        st.live = true;
        let seq = st.last_seq + 1;
        json.clear();
        let name = self.symbols.channel_name_str(ch);
        tickfan_proto::encode::write_book_json_on(
            json, name, kind, &bids, &asks, sym, seq, ts, crc,
        );
        Some(self.record(st, ch, seq, ts, json, None))
    }

    /// Producer: form channel `ch` lost its last subscriber; it is no longer kept up to date,
    /// and starts again with a snapshot.
    pub fn stop_form(&self, ch: ChannelId) {
        self.state(ch).live = false;
    }

    /// Whether some client streams `ch` over Server-Sent Events.
    fn sse_wanted(&self, ch: ChannelId) -> bool {
        self.sse.any(ch)
    }

    /// The frame of `json` (the tick's message), with its SSE and compressed forms while
    /// they are wanted.
    fn frame(&self, ch: ChannelId, seq: u64, ts: u64, json: &[u8], binary: Option<Bytes>) -> Frame {
        let bytes = frame::build(Opcode::Text, json);
        let sse = self
            .sse_wanted(ch)
            .then(|| crate::sse::event(self.symbols.channel_name_str(ch), seq, json));
        // Deflated later, by the first worker that sends it (`Frame::deflated`).
        let deflated = self.deflate.any(ch).then(std::sync::OnceLock::new);
        let alt = frame::Alternates::of(frame::Alternates { sse, deflated, binary });
        Frame { ch, seq, ts, bytes, alt }
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
            TickBody::Status(status) => {
                let halted = *status == tickfan_proto::Status::Halted;
                self.halted[tick.sym as usize].store(halted, Ordering::Relaxed);
                None
            }
            _ => None,
        };
        json.clear();
        write_tick_message(json, tick, sym, crc);
        let binary = self.binary.any(ch).then(|| {
            let mut payload = Vec::with_capacity(json.len() / 2);
            tickfan_proto::binary::write_tick_binary(&mut payload, tick, crc)
                .then(|| frame::build(Opcode::Binary, &payload))
        });
        self.record(st, ch, tick.seq, tick.ts, json, binary.flatten())
    }

    /// Producer: publishes a message of a derived channel (ticker, candles) whose JSON after
    /// the head is `body`, under the channel's next seq.
    pub fn publish_derived(
        &self,
        ch: ChannelId,
        ts: u64,
        body: &[u8],
        json: &mut Vec<u8>,
    ) -> Frame {
        debug_assert!(ch.kind().is_derived());
        let st = self.state(ch);
        let seq = st.last_seq + 1;
        json.clear();
        tickfan_proto::encode::write_message_head(json, self.symbols.channel_name_str(ch), seq, ts);
        json.extend_from_slice(body);
        self.record(st, ch, seq, ts, json, None)
    }

    /// The last message of derived channel `ch`, if it has had one.
    pub fn latest(&self, ch: ChannelId) -> Option<Frame> {
        self.state(ch).latest.as_deref().cloned()
    }

    /// Encodes message `json` of `ch` once, advances the channel to `seq` and keeps the frame
    /// for resume. Takes the channel's lock, held by the caller.
    fn record(
        &self,
        mut st: MutexGuard<'_, ChannelState>,
        ch: ChannelId,
        seq: u64,
        ts: u64,
        json: &[u8],
        binary: Option<Bytes>,
    ) -> Frame {
        let frame = self.frame(ch, seq, ts, json, binary);
        st.advance(seq, ts);
        if ch.kind().is_state() {
            st.latest = Some(Box::new(frame.clone()));
        }
        // Taken under the channel's lock, so that a frame whose position a reader has seen is
        // in its channel's history by the time the reader locks it (`sse_replay`).
        let pos = self.next_pos.fetch_add(1, Ordering::SeqCst);
        if self.window.enabled() {
            let history = &mut st.history;
            if history.back().is_some_and(|(_, f)| f.seq + 1 != seq) {
                history.clear(); // never keep a history with a hole in it
                st.cleared_at = pos;
            }
            st.history.push_back((pos, frame.clone()));
            drop(st); // eviction locks channels one at a time, this one included
            let forms = frame.alt.as_ref().map_or(0, |alt| alt.bytes(frame.bytes.len()));
            let size = (frame.bytes.len() + forms + FRAME_OVERHEAD) as u32;
            self.keep(KeptFrame { ch, seq, ts, size });
        }
        frame
    }

    /// Accounts for a frame just kept, then forgets the oldest frames (of any channel) while
    /// they are older than the window or all kept frames exceed its bytes. Producer only.
    fn keep(&self, new: KeptFrame) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.bytes += new.size as usize;
        kept.frames.push_back(new);
        let oldest_kept = new.ts.saturating_sub(self.window.max_age_ns);
        while let Some(&old) = kept.frames.front() {
            if kept.bytes <= self.window.max_bytes && old.ts >= oldest_kept {
                break;
            }
            kept.frames.pop_front();
            kept.bytes -= old.size as usize;
            let mut st = self.state(old.ch);
            // Gone already if the history was cleared (a hole, a resync).
            if st.history.front().is_some_and(|(_, f)| f.seq == old.seq) {
                st.history.pop_front();
            }
        }
    }

    /// Bytes the resume window holds now (frames with their overhead).
    pub fn window_bytes(&self) -> u64 {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).bytes as u64
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
        *st.books() = BookState::default();
        if let TickBody::Book(levels) = &snapshot.body {
            st.apply_book(levels, sym);
        }
        st.advance(snapshot.seq, snapshot.ts);
        st.history.clear();
        st.cleared_at = self.next_pos.fetch_add(1, Ordering::SeqCst);
        json.clear();
        write_book_snapshot_message(json, st.book(), sym, snapshot.seq, snapshot.ts);
        self.frame(ch, snapshot.seq, snapshot.ts, json, None)
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
            // A little ahead: another gateway of the same feed (same epoch, same seqs) got
            // further than this one before the client moved here. The client has everything up
            // to `after`; what follows comes live, as this gateway reads it.
            if after - st.last_seq <= MAX_AHEAD {
                return Replay::Frames { frames: Vec::new(), last: after };
            }
            return Replay::Unavailable;
        }
        if after == st.last_seq {
            return Replay::Frames { frames: Vec::new(), last: after };
        }
        match st.history.front() {
            Some((_, first)) if first.seq <= after + 1 => {
                let skip = (after + 1 - first.seq) as usize;
                let frames = st.history.iter().skip(skip).map(|(_, f)| f.clone()).collect();
                Replay::Frames { frames, last: st.last_seq }
            }
            _ => Replay::Unavailable,
        }
    }

    /// Resumes a Server-Sent Events stream of `channels` whose last event was frame `seq` of
    /// `ch`: every frame of those channels published after that one, in publish order (the
    /// order the client got them in), up to a common point, and the seq each channel is at
    /// there. All or nothing: `None` when the window no longer holds that frame, or some
    /// channel's history restarted since (a hole upstream, a resync).
    ///
    /// Eviction goes oldest first over all channels, so while that frame is kept every frame
    /// published after it is too.
    pub fn sse_replay(&self, ch: ChannelId, seq: u64, channels: &[ChannelId]) -> Option<SseReplay> {
        let from = {
            let st = self.state(ch);
            let first = st.history.front()?.1.seq;
            let (pos, f) = st.history.get(usize::try_from(seq.checked_sub(first)?).ok()?)?;
            debug_assert_eq!(f.seq, seq);
            *pos
        };
        // Everything up to `until` is in the histories once each channel is locked in turn.
        let until = self.next_pos.load(Ordering::SeqCst) - 1;
        let mut frames: Vec<(u64, Frame)> = Vec::new();
        let mut floors = Vec::with_capacity(channels.len());
        for &c in channels {
            let st = self.state(c);
            if st.cleared_at > from {
                return None;
            }
            let start = st.history.partition_point(|(p, _)| *p <= from);
            let end = st.history.partition_point(|(p, _)| *p <= until);
            frames.extend(st.history.range(start..end).cloned());
            // The channel's last seq as of `until`. Without a frame kept up to then, it was
            // quiet since `from` (every later frame is kept): its seq precedes what it kept.
            let floor = match end {
                0 => st.history.front().map_or(st.last_seq, |(_, f)| f.seq - 1),
                _ => st.history[end - 1].1.seq,
            };
            floors.push((c, floor));
        }
        frames.sort_unstable_by_key(|(p, _)| *p);
        Some(SseReplay { frames: frames.into_iter().map(|(_, f)| f).collect(), floors })
    }

    /// A `snapshot` frame of book channel `ch` (the book or one of its forms), and the seq it
    /// is as of. `None` for a form the producer does not keep now: its next message will be
    /// its snapshot.
    pub fn snapshot(&self, ch: ChannelId) -> Option<(Bytes, u64)> {
        debug_assert!(ch.kind().is_book());
        let sym = self.symbols.get(ch.sym());
        let mut json = Vec::with_capacity(4096);
        let seq = {
            let mut st = self.state(ch);
            if ch.kind().is_book_form() {
                if !st.live {
                    return None;
                }
                let crc = st.book().checksum(sym.px_scale, sym.qty_scale);
                let name = self.symbols.channel_name_str(ch);
                let (seq, ts) = (st.last_seq, st.last_ts);
                let st = &mut *st;
                tickfan_proto::encode::write_book_json_on(
                    &mut json,
                    name,
                    "snapshot",
                    &st.book().bids,
                    &st.book().asks,
                    sym,
                    seq,
                    ts,
                    crc,
                );
            } else {
                write_book_snapshot_message(&mut json, st.book(), sym, st.last_seq, st.last_ts);
            }
            st.last_seq
        };
        Some((frame::build(Opcode::Text, &json), seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use feed_sim::{Feed, SimConfig};

    fn market(max_bytes: usize, age_s: u64) -> (Market, Feed) {
        let feed = Feed::new(SimConfig { symbols: 3, burst_every_s: 0.0, ..SimConfig::default() });
        let symbols = Arc::new(feed.symbols().clone());
        let window = ResumeWindow { max_bytes, max_age_ns: age_s * 1_000_000_000 };
        (Market::new(symbols, window, None), feed)
    }

    #[test]
    fn books_follow_the_feed_and_replay_is_exact() {
        let (m, mut feed) = market(1 << 30, 3600);
        let mut json = Vec::new();
        for _ in 0..20_000 {
            m.publish(&feed.next_tick_virtual(), &mut json);
        }
        while feed.pending() > 0 {
            m.publish(&feed.next_tick_virtual(), &mut json);
        }
        let ch = ChannelId::new(Kind::Book, 0);
        let (bids, asks) = feed.book(0).unwrap();
        let (snap, seq) = m.snapshot(ch).unwrap();
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
        assert!(
            matches!(m.replay(ch, seq), Replay::Frames { ref frames, .. } if frames.is_empty())
        );
        // A little ahead (another gateway of the feed got further): nothing to replay, and
        // live frames up to that seq are skipped. Far ahead: a seq the feed never had.
        let Replay::Frames { frames, last } = m.replay(ch, seq + 3) else { panic!() };
        assert_eq!((frames.len(), last), (0, seq + 3));
        assert!(matches!(m.replay(ch, seq + MAX_AHEAD + 1), Replay::Unavailable));
    }

    #[test]
    fn the_sse_form_is_encoded_once_per_tick_and_only_while_wanted() {
        let (m, mut feed) = market(1 << 30, 3600);
        let mut json = Vec::new();
        let trades = |f: &Frame| f.ch.kind() == Kind::Trades;
        let mut next_trade = |m: &Market| loop {
            let f = m.publish(&feed.next_tick_virtual(), &mut json);
            if trades(&f) {
                return f;
            }
        };
        assert!(next_trade(&m).alt.is_none(), "nobody streams over SSE");
        m.sse.add(ChannelSpec::Wildcard(Kind::Trades), 1);
        let f = next_trade(&m);
        let name = m.symbols().channel_name(f.ch);
        let sse = f.sse().cloned().expect("encoded while wanted");
        assert_eq!(sse, crate::sse::event(&name, f.seq, &f.bytes[2..]));
        // Kept with the frame: a replay to an SSE client shares the very same bytes.
        let Replay::Frames { frames, .. } = m.replay(f.ch, f.seq - 1) else { panic!() };
        assert_eq!(frames[0].sse().unwrap().as_ptr(), sse.as_ptr());
        m.sse.add(ChannelSpec::Wildcard(Kind::Trades), -1);
        assert!(next_trade(&m).alt.is_none(), "no longer wanted");
    }

    #[test]
    fn a_wanted_compressed_form_is_deflated_once_by_its_first_user_and_shared() {
        let (m, mut feed) = market(1 << 30, 3600);
        let mut json = Vec::new();
        m.deflate.add(ChannelSpec::Wildcard(Kind::Book), 1);
        let f = loop {
            let f = m.publish(&feed.next_tick_virtual(), &mut json);
            if f.ch.kind() == Kind::Book {
                break f;
            }
        };
        let copy = f.clone(); // as each worker's ring gets one
        let on_other_thread = std::thread::spawn(move || copy.deflated().cloned()).join().unwrap();
        let deflated = on_other_thread.expect("a book update shrinks");
        assert_eq!(deflated[0], 0xC1, "FIN, RSV1, text");
        // The same allocation for every copy: deflated once.
        assert_eq!(f.deflated().unwrap().as_ptr(), deflated.as_ptr());
        let inflated = crate::deflate::inflate(frame::payload(&deflated), 1 << 16).unwrap();
        assert_eq!(inflated, frame::payload(&f.bytes));
    }

    #[test]
    fn an_sse_resume_replays_every_channel_after_the_last_event_in_publish_order() {
        let (m, mut feed) = market(1 << 30, 3600);
        let mut json = Vec::new();
        let mut published = Vec::new();
        for _ in 0..3000 {
            published.push(m.publish(&feed.next_tick_virtual(), &mut json));
        }
        let channels: Vec<ChannelId> =
            [Kind::Trades, Kind::Book].iter().map(|&k| ChannelId::new(k, 1)).collect();
        let ours: Vec<&Frame> = published.iter().filter(|f| channels.contains(&f.ch)).collect();
        // The client's last event: a trade somewhere in the middle.
        let at = ours.iter().position(|f| f.ch == channels[0] && f.seq > 20).unwrap();
        let last = ours[at];
        let r = m.sse_replay(last.ch, last.seq, &channels).expect("in the window");
        let want: Vec<(ChannelId, u64)> = ours[at + 1..].iter().map(|f| (f.ch, f.seq)).collect();
        assert_eq!(r.frames.iter().map(|f| (f.ch, f.seq)).collect::<Vec<_>>(), want);
        for &(ch, floor) in &r.floors {
            assert_eq!(floor, m.last_seq(ch), "{ch:?} is at its last seq after the replay");
        }
        // Not a frame the window holds: nothing resumes.
        assert!(m.sse_replay(last.ch, 1 << 40, &channels).is_none());
    }

    #[test]
    fn the_cached_checksum_equals_the_reference_one_over_a_long_feed() {
        let (m, mut feed) = market(10_000, 1);
        let mut json = Vec::new();
        for _ in 0..30_000 {
            let tick = feed.next_tick_virtual();
            let frame = m.publish(&tick, &mut json);
            if let TickBody::Book(_) = tick.body {
                let st = m.state(frame.ch);
                let sym = m.symbols().get(tick.sym);
                let crc = format!(",\"crc\":{}}}", st.book().checksum(sym.px_scale, sym.qty_scale));
                assert!(json.ends_with(crc.as_bytes()), "seq {}", tick.seq);
            }
        }
    }

    #[test]
    fn the_window_is_bounded_by_bytes_oldest_first_over_all_channels() {
        let (m, mut feed) = market(200_000, 3600);
        let mut json = Vec::new();
        for _ in 0..20_000 {
            m.publish(&feed.next_tick_virtual(), &mut json);
        }
        assert!(m.window_bytes() <= 200_000 && m.window_bytes() > 190_000, "{}", m.window_bytes());
        // Every channel keeps a suffix of its frames, and the oldest kept frame of any channel
        // is about as old as that of any other: the busiest did not crowd out the quiet ones.
        let oldest: Vec<u64> = (0..m.symbols().channel_count() as u32)
            .filter_map(|i| m.state(ChannelId(i)).history.front().map(|(_, f)| f.ts))
            .collect();
        assert_eq!(oldest.len(), m.symbols().len() * 3, "trades, quotes and book of each");
        let (min, max) = (oldest.iter().min().unwrap(), oldest.iter().max().unwrap());
        assert!(max - min < 20_000_000, "oldest kept frames {min}..{max} ns apart");
        let ch = ChannelId::new(Kind::Trades, 0);
        let first = m.state(ch).history.front().unwrap().1.seq;
        assert!(matches!(m.replay(ch, first - 1), Replay::Frames { .. }));
        assert!(matches!(m.replay(ch, first - 2), Replay::Unavailable));
    }

    #[test]
    fn frames_older_than_the_window_go_even_on_a_channel_that_went_quiet() {
        // 20,000 ticks/s of virtual time: 2,000 ticks are 0.1 s. A 1 s window.
        let (m, mut feed) = market(1 << 30, 1);
        let mut json = Vec::new();
        let mut last_ts = 0;
        for _ in 0..40_000 {
            let t = feed.next_tick_virtual();
            last_ts = t.ts;
            m.publish(&t, &mut json);
        }
        for i in 0..m.symbols().channel_count() as u32 {
            if let Some((_, f)) = m.state(ChannelId(i)).history.front() {
                assert!(
                    f.ts + 1_000_000_000 >= last_ts,
                    "channel {i} keeps a frame older than 1 s"
                );
            }
        }
        // Disabled: nothing kept.
        let (m, mut feed) = market(0, 10);
        m.publish(&feed.next_tick_virtual(), &mut json);
        assert_eq!(m.window_bytes(), 0);
    }
}
