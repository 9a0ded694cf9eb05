//! A connection's outbound queue: shared frames waiting for the socket, bounded in bytes, and
//! what the connection owes each channel when it falls behind.
//!
//! When a client reads too slowly and its queue is full, the frame's channel kind decides
//! (`--slow-consumer`, `docs/protocol.md` "Slow consumers"):
//! - `gap`: the frame is dropped and the dropped range remembered; the client gets
//!   `{"op":"gap",…,"reason":"slow_consumer"}` before the next frame of that channel (or as
//!   soon as the queue drains), so loss is always declared;
//! - `conflate`: quotes keep only the newest frame, sent when there is room again after a
//!   `gap` with reason `conflated`; books drop updates and get a fresh snapshot instead;
//! - `disconnect`: the connection is closed with 1008.
//!
//! The same per-channel state also carries *floors*: after a snapshot or a replay as of seq
//! X, live frames up to X (still in the worker's ring) are skipped.
//!
//! Memory: each queue is bounded by `--queue-bytes`; all queues of a worker together by its
//! share of `--max-queued-bytes` ([`Budget`]), beyond which only queues under
//! [`FAIR_SHARE`] take more.
//!
//! Allocation: none per message per subscriber, for a reader that keeps up and for one that
//! falls behind alike (`tests/alloc.rs` counts them). A frame missed while behind is only
//! recorded; whether a gap notice fits is known from its length before it is written; notices
//! are written into chunks of memory each queue reuses once their notices are written.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};
use rustc_hash::FxHashMap;
use tickfan_proto::encode::{gap_json_len, write_gap_json_with};
use tickfan_proto::{ChannelId, SymbolTable};

use crate::config::Policy;
use crate::frame::{self, Frame, Opcode};
use crate::market::Market;
use crate::sse::Form;

/// Frames gathered into one write (`sendmsg`) at most (Linux's IOV_MAX is 1024; 64 already
/// amortises the syscall over many messages).
const MAX_IOV: usize = 64;

/// A queue's first chunk of memory for gap notices (a notice is about a hundred bytes); each
/// further chunk is twice the previous, up to [`NOTICE_CHUNK_MAX`].
const NOTICE_CHUNK: usize = 512;
const NOTICE_CHUNK_MAX: usize = 16 << 10;
/// Chunks a queue keeps for its notices, at most (some 64 KiB in all, for a connection that had
/// that many notices queued at once).
const NOTICE_CHUNKS: usize = 8;

/// Extra room beyond the data bound for replies and control frames, so a client that floods
/// requests without reading is detected instead of growing memory.
pub const CONTROL_SLACK: usize = 256 << 10;

/// Anything frames can be written to without blocking (a TCP write half, or a test sink).
pub trait TryWrite {
    /// Like `TcpStream::try_write_vectored`: `WouldBlock` when the socket buffer is full.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Sends what the writer holds beyond the queue (a TLS session's records): `Ok` when none
    /// is left, `WouldBlock` when the socket is full.
    fn flush_pending(&self) -> io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for dyn TryWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("socket")
    }
}

/// A non-blocking socket (the gateway's are: see `readiness`), written with `sendmsg`, not
/// `writev`: the same TCP send without the file layer's work for a write (docs/performance.md,
/// "sendmsg rather than writev"). A peer gone is EPIPE, not a signal: Rust programs start
/// with SIGPIPE ignored.
impl TryWrite for std::net::TcpStream {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        socket2::SockRef::from(self).send_vectored(bufs)
    }
}

/// Result of offering a data frame to a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Queued.
    Queued,
    /// Queued right after the gap notice its channel was owed.
    QueuedAfterNotice,
    /// Not queued: the queue is full, and the channel's policy declares it later (gap notice,
    /// newer quote, fresh snapshot).
    Dropped,
    /// Not queued because the client already has it (a snapshot or replay covered it).
    Skipped,
    /// Ignored: the connection is closing.
    Closed,
    /// The queue is full and the policy is `disconnect`: the caller closes with 1008.
    Disconnect,
}

/// State of a queue after a write attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    Drained,
    /// The socket would block; wait for writability and try again.
    Blocked,
}

/// A queue under this many bytes always takes a frame that fits its own bound, whatever the
/// worker's total: a reader that keeps up is never punished for the backlogs of others.
pub const FAIR_SHARE: usize = 64 << 10;

/// Bytes queued over all connections of one worker, and their bound.
#[derive(Debug)]
pub struct Budget {
    used: Cell<usize>,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Rc<Budget> {
        Rc::new(Budget { used: Cell::new(0), limit })
    }

    pub fn used(&self) -> usize {
        self.used.get()
    }
}

/// What a connection owes one channel beyond its plain stream.
#[derive(Clone, Debug)]
enum Pending {
    /// The client has this channel up to this seq (snapshot or replay): skip live frames up to it.
    Floor(u64),
    /// Seqs `from..=to` were dropped: declare them before the next frame.
    Gap { from: u64, to: u64 },
    /// Quotes conflated: `frame` is the newest, seqs from `from` up to it were superseded.
    Latest { from: u64, frame: Frame },
    /// Book: updates are dropped until a fresh snapshot goes out.
    Snapshot,
}

impl Pending {
    fn is_behind(&self) -> bool {
        !matches!(self, Pending::Floor(_))
    }
}

/// A connection's outbound queue.
#[derive(Debug)]
pub struct Outbound {
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    /// Bound on data bytes (`--queue-bytes`).
    limit: usize,
    /// Per-channel state, only for channels that have some: the hot path looks at it only
    /// when it is not empty.
    pending: FxHashMap<ChannelId, Pending>,
    /// Entries of `pending` that are not floors: something to send when there is room.
    behind: usize,
    closing: bool,
    /// The front frame is partly written: it must be finished before anything else goes.
    front_started: bool,
    budget: Rc<Budget>,
    /// Where this queue's gap notices are written.
    notices: NoticeMemory,
    /// Scratch for [`catch_up`](Self::catch_up): the channels owed something.
    owed: Vec<ChannelId>,
    /// What the socket speaks: everything queued is in this form.
    form: Form,
}

impl Drop for Outbound {
    fn drop(&mut self) {
        self.budget.used.set(self.budget.used.get() - self.queued_bytes);
    }
}

impl Outbound {
    pub fn new(limit: usize, budget: Rc<Budget>) -> Outbound {
        Outbound {
            queue: VecDeque::new(),
            queued_bytes: 0,
            limit,
            pending: FxHashMap::default(),
            behind: 0,
            closing: false,
            front_started: false,
            budget,
            notices: NoticeMemory::default(),
            owed: Vec::new(),
            form: Form::WebSocket,
        }
    }

    /// A queue for a WebSocket speaking `form` ([`Form::WebSocket`], [`Form::Deflate`] or
    /// [`Form::Binary`]).
    pub fn websocket(limit: usize, budget: Rc<Budget>, form: Form) -> Outbound {
        debug_assert!(form.is_websocket());
        let mut out = Outbound::new(limit, budget);
        out.form = form;
        out
    }

    /// A queue for a Server-Sent Events stream, `head` (the response head) queued first.
    pub fn sse(limit: usize, budget: Rc<Budget>, head: Bytes) -> Outbound {
        let mut out = Outbound::new(limit, budget);
        out.form = Form::Sse;
        out.push(head);
        out
    }

    pub fn form(&self) -> Form {
        self.form
    }

    /// A data frame in this queue's form.
    fn data(&self, frame: &Frame, market: &Market) -> Bytes {
        match self.form {
            Form::WebSocket => frame.bytes.clone(),
            Form::Deflate => frame.deflated().unwrap_or(&frame.bytes).clone(),
            Form::Binary => frame.binary().unwrap_or(&frame.bytes).clone(),
            Form::Sse => crate::sse::of_frame(frame, market.symbols()),
        }
    }

    /// About how long a data frame is in this queue's form (exact but for the rare SSE frame
    /// without its form).
    fn data_len(&self, frame: &Frame) -> usize {
        match (self.form, frame.sse()) {
            (Form::WebSocket, _) => frame.bytes.len(),
            (Form::Deflate, _) => frame.deflated().unwrap_or(&frame.bytes).len(),
            (Form::Binary, _) => frame.binary().unwrap_or(&frame.bytes).len(),
            (Form::Sse, Some(sse)) => sse.len(),
            (Form::Sse, None) => frame.bytes.len() + 48,
        }
    }

    /// A reply, notice or control frame (built as a WebSocket frame) in this queue's form;
    /// `None` if it has none (a pong, for SSE).
    fn control(&self, ws: Bytes) -> Option<Bytes> {
        match self.form {
            Form::WebSocket | Form::Deflate | Form::Binary => Some(ws),
            Form::Sse => crate::sse::from_ws(&ws),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Frames queued (replies and notices included).
    pub fn frames(&self) -> usize {
        self.queue.len()
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Whether some channel waits for room (a notice, a newer quote, a snapshot).
    pub fn is_behind(&self) -> bool {
        self.behind > 0
    }

    fn push(&mut self, bytes: Bytes) {
        self.queued_bytes += bytes.len();
        self.budget.used.set(self.budget.used.get() + bytes.len());
        self.queue.push_back(bytes);
    }

    /// Whether `len` more data bytes may be queued: under this queue's bound, and under the
    /// worker's budget unless this queue is small.
    fn fits(&self, len: usize) -> bool {
        let after = self.queued_bytes + len;
        after <= self.limit
            && (after <= FAIR_SHARE || self.budget.used.get() + len <= self.budget.limit)
    }

    /// Whether there is room to catch up: half the bound free, and the budget not exceeded.
    fn has_room_to_catch_up(&self) -> bool {
        self.queued_bytes <= self.limit / 2
            && (self.queued_bytes <= FAIR_SHARE / 2 || self.budget.used.get() <= self.budget.limit)
    }

    fn set_pending(&mut self, ch: ChannelId, p: Pending) {
        let behind = p.is_behind();
        if let Some(old) = self.pending.insert(ch, p) {
            self.behind -= usize::from(old.is_behind());
        }
        self.behind += usize::from(behind);
    }

    fn take_pending(&mut self, ch: ChannelId) -> Option<Pending> {
        let old = self.pending.remove(&ch)?;
        self.behind -= usize::from(old.is_behind());
        Some(old)
    }

    /// Offers a shared data frame, applying `policy` (that of the frame's kind) if the queue is
    /// full. Hot path: a reference-count increment and a deque push; the per-channel state is
    /// only looked at when some channel has one. No allocation, also while a channel is behind.
    pub fn offer(&mut self, frame: &Frame, policy: Policy, market: &Market) -> Offer {
        if self.closing {
            return Offer::Closed;
        }
        if !self.pending.is_empty() {
            match self.pending.get(&frame.ch) {
                None => {}
                Some(Pending::Floor(floor)) => {
                    if frame.seq <= *floor {
                        return Offer::Skipped;
                    }
                    self.take_pending(frame.ch);
                }
                Some(Pending::Snapshot) => return Offer::Dropped,
                Some(Pending::Gap { .. } | Pending::Latest { .. }) => {
                    return self.offer_behind(frame, market)
                }
            }
        }
        if self.fits(self.data_len(frame)) {
            self.push(self.data(frame, market));
            return Offer::Queued;
        }
        let pending = match policy {
            Policy::Disconnect => return Offer::Disconnect,
            Policy::Gap => Pending::Gap { from: frame.seq, to: frame.seq },
            Policy::Conflate if frame.ch.kind().is_book() => Pending::Snapshot,
            Policy::Conflate => Pending::Latest { from: frame.seq, frame: frame.clone() },
        };
        self.set_pending(frame.ch, pending);
        Offer::Dropped
    }

    /// A frame of a channel that fell behind: catch the channel up now if the notice and the
    /// frame fit, else record the frame as dropped (or as the newest, when conflating).
    /// The notice is only written if it is queued: until then its length is enough.
    fn offer_behind(&mut self, frame: &Frame, market: &Market) -> Offer {
        let (from, reason) = match self.pending.get(&frame.ch) {
            Some(Pending::Gap { from, .. }) => (*from, "slow_consumer"),
            Some(Pending::Latest { from, .. }) => (*from, "conflated"),
            _ => unreachable!("offer_behind is only called for gaps and conflated quotes"),
        };
        let notice =
            GapNotice::new(market.symbols(), frame.ch, from, frame.seq - 1, reason, self.form);
        if self.fits(notice.len() + self.data_len(frame)) {
            self.take_pending(frame.ch);
            let notice = self.notices.write(&notice);
            self.push(notice);
            self.push(self.data(frame, market));
            return Offer::QueuedAfterNotice;
        }
        match self.pending.get_mut(&frame.ch) {
            Some(Pending::Gap { to, .. }) => *to = frame.seq,
            Some(Pending::Latest { frame: newest, .. }) => *newest = frame.clone(),
            _ => {}
        }
        Offer::Dropped
    }

    /// Sends what channels that fell behind are owed, while there is room: gap notices, the
    /// newest conflated quote, fresh book snapshots (each then followed by a floor at its seq).
    pub fn catch_up(&mut self, market: &Market) -> CaughtUp {
        let mut done = CaughtUp::default();
        if self.behind == 0 || self.closing || !self.has_room_to_catch_up() {
            return done;
        }
        let symbols = market.symbols();
        let mut owed = std::mem::take(&mut self.owed);
        owed.clear();
        owed.extend(self.pending.iter().filter(|(_, p)| p.is_behind()).map(|(ch, _)| *ch));
        for &ch in &owed {
            if !self.has_room_to_catch_up() {
                break;
            }
            match self.take_pending(ch) {
                Some(Pending::Gap { from, to }) => {
                    let notice = GapNotice::new(symbols, ch, from, to, "slow_consumer", self.form);
                    let notice = self.notices.write(&notice);
                    self.push(notice);
                    done.notices += 1;
                }
                Some(Pending::Latest { from, frame }) => {
                    if frame.seq > from {
                        let (to, form) = (frame.seq - 1, self.form);
                        let notice = GapNotice::new(symbols, ch, from, to, "conflated", form);
                        let notice = self.notices.write(&notice);
                        self.push(notice);
                        done.notices += 1;
                    }
                    self.push(self.data(&frame, market));
                    done.frames += 1;
                }
                Some(Pending::Snapshot) => {
                    // A form not kept now starts with a snapshot in its stream: take it all.
                    let Some((snapshot, seq)) = market.snapshot(ch) else {
                        self.set_pending(ch, Pending::Floor(0));
                        continue;
                    };
                    // Built for this client as of now: for SSE an event without `id`, as its
                    // place in publish order is not the client's (crate::sse).
                    if let Some(snapshot) = self.control(snapshot) {
                        self.push(snapshot);
                    }
                    self.set_pending(ch, Pending::Floor(seq));
                    done.snapshots += 1;
                }
                Some(floor @ Pending::Floor(_)) => self.set_pending(ch, floor),
                None => {}
            }
        }
        self.owed = owed; // keep the allocation
        done
    }

    /// Book channel `ch` needs a (fresh) snapshot: updates are dropped until it is sent.
    pub fn want_snapshot(&mut self, ch: ChannelId) {
        if !self.closing {
            self.set_pending(ch, Pending::Snapshot);
        }
    }

    /// Whether `bytes` of replayed frames may be queued on top of what is queued: within this
    /// queue's bound and the worker's budget, so a storm of resumes cannot queue more than the
    /// budget.
    pub fn replay_fits(&self, bytes: usize) -> bool {
        self.queued_bytes + bytes <= self.limit
            && self.budget.used.get() + bytes <= self.budget.limit
    }

    /// Queues frames replayed for a resume, then skips live frames up to `last`. The caller
    /// checks first that they fit ([`replay_fits`](Self::replay_fits)).
    pub fn replay(&mut self, ch: ChannelId, frames: Vec<Frame>, last: u64, market: &Market) {
        self.replay_all(&frames, &[(ch, last)], market);
    }

    /// Queues replayed frames (of several channels, in the order given), then skips live
    /// frames of each channel up to its floor.
    pub fn replay_all(&mut self, frames: &[Frame], floors: &[(ChannelId, u64)], market: &Market) {
        if self.closing {
            return;
        }
        for f in frames {
            self.push(self.data(f, market));
        }
        for &(ch, last) in floors {
            self.set_pending(ch, Pending::Floor(last));
        }
    }

    /// Queues the last message of a derived channel (a whole state) for a new subscriber, then
    /// skips live frames up to it. For SSE without its `id`: it is sent out of publish order
    /// (crate::sse).
    pub fn push_state(&mut self, latest: &Frame) {
        if self.closing {
            return;
        }
        if let Some(bytes) = self.control(latest.bytes.clone()) {
            self.push(bytes);
        }
        self.set_pending(latest.ch, Pending::Floor(latest.seq));
    }

    /// Frames `from..=to` of `ch` were lost before reaching this connection (the worker's ring
    /// overflowed). Returns a notice to queue, if one is due: none when a floor, a pending
    /// snapshot or a pending gap already covers them; book channels get a fresh snapshot
    /// rather than a notice.
    pub fn lost(&mut self, ch: ChannelId, from: u64, to: u64) -> Option<(u64, u64)> {
        if self.closing {
            return None;
        }
        let from = match self.pending.get_mut(&ch) {
            Some(Pending::Floor(floor)) if *floor >= to => return None,
            Some(Pending::Floor(floor)) => from.max(*floor + 1),
            Some(Pending::Snapshot | Pending::Latest { .. }) => return None,
            Some(Pending::Gap { from: f, to: t }) => {
                *f = (*f).min(from);
                *t = (*t).max(to);
                return None;
            }
            None => from,
        };
        if ch.kind().is_book() {
            self.set_pending(ch, Pending::Snapshot);
            return None;
        }
        if matches!(self.pending.get(&ch), Some(Pending::Floor(_))) {
            self.take_pending(ch);
        }
        Some((from, to))
    }

    /// Forgets the state of channels the connection no longer subscribes to.
    pub fn forget(&mut self, still_subscribed: impl Fn(ChannelId) -> bool) {
        let gone: Vec<ChannelId> =
            self.pending.keys().copied().filter(|&ch| !still_subscribed(ch)).collect();
        for ch in gone {
            self.take_pending(ch);
        }
    }

    /// Queues a frame of an ephemeral channel (`sys.stats`) if it fits under the limit:
    /// `false` means it was not queued, and the caller does not advance that channel's seq,
    /// so nothing is lost from the client's point of view (the next message supersedes it).
    pub fn offer_ephemeral(&mut self, bytes: Bytes) -> bool {
        if self.closing || !self.fits(bytes.len()) {
            return false;
        }
        if let Some(bytes) = self.control(bytes) {
            self.push(bytes);
        }
        true
    }

    /// Queues a reply or control frame. `false` when even the control slack is exhausted:
    /// the client sends requests but does not read replies, and must be disconnected.
    pub fn push_control(&mut self, bytes: Bytes) -> bool {
        if self.closing {
            return true;
        }
        if self.queued_bytes + bytes.len() > self.limit + CONTROL_SLACK {
            return false;
        }
        if let Some(bytes) = self.control(bytes) {
            self.push(bytes);
        }
        true
    }

    /// Queues a control frame (a ping) ahead of queued data: right behind the frame being
    /// written, so that a client with a backlog still sees it soon. Control frames may be
    /// interleaved between data frames (RFC 6455 §5.4).
    pub fn push_urgent(&mut self, bytes: Bytes) {
        if self.closing {
            return;
        }
        let Some(bytes) = self.control(bytes) else { return };
        self.queued_bytes += bytes.len();
        self.budget.used.set(self.budget.used.get() + bytes.len());
        let at = self.queue.len().min(1);
        self.queue.insert(at, bytes);
    }

    /// Frees the deque's memory if nothing is queued: run now and then, so that a connection
    /// that only gets a message once in a while holds no queue memory in between (the next
    /// message allocates it again: one allocation per connection per trim, not per message).
    /// Notice memory and scratch go too once the connection owes nothing: a lag episode costs
    /// a few allocations when it starts, and nothing is held after it. Returns about how many
    /// bytes it freed.
    pub fn trim(&mut self) -> usize {
        if !self.queue.is_empty() {
            return 0;
        }
        let mut freed = self.queue.capacity() * std::mem::size_of::<Bytes>();
        if freed > 0 {
            self.queue = VecDeque::new();
        }
        if self.behind == 0 {
            freed += self.owed.capacity() * std::mem::size_of::<ChannelId>();
            freed += self.notices.chunks.iter().map(|c| c.capacity()).sum::<usize>();
            self.notices = NoticeMemory::default();
            self.owed = Vec::new();
        }
        freed
    }

    /// Queues a close frame; nothing is queued after it. Pending state is dropped with it.
    pub fn push_close(&mut self, close: Bytes) {
        if !self.closing {
            self.closing = true;
            self.pending.clear();
            self.behind = 0;
            if let Some(close) = self.control(close) {
                self.push(close);
            }
        }
    }

    /// Drops every queued frame that has not started going out, then queues `close`: for a
    /// client disconnected for being slow, whose backlog is of no use to it any more.
    pub fn close_now(&mut self, close: Bytes) {
        let keep = usize::from(self.front_started);
        let dropped: usize = self.queue.iter().skip(keep).map(Bytes::len).sum();
        self.queue.truncate(keep);
        self.queued_bytes -= dropped;
        self.budget.used.set(self.budget.used.get() - dropped);
        self.push_close(close);
    }

    /// Writes as much as the socket takes, many frames per syscall. Returns the bytes written
    /// and whether the queue drained or the socket would block.
    pub fn write_to(&mut self, sock: &(impl TryWrite + ?Sized)) -> io::Result<(usize, Flushed)> {
        let mut total = 0;
        loop {
            if self.queue.is_empty() {
                // A backlog once grew the deque; give the memory back.
                if self.queue.capacity() > 4096 {
                    self.queue.shrink_to(256);
                }
                return match sock.flush_pending() {
                    Ok(()) => Ok((total, Flushed::Drained)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        Ok((total, Flushed::Blocked))
                    }
                    Err(e) => Err(e),
                };
            }
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let n = self.queue.len().min(MAX_IOV);
            for (slot, bytes) in iov.iter_mut().zip(self.queue.iter()) {
                *slot = IoSlice::new(bytes);
            }
            match sock.try_write_vectored(&iov[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    total += written;
                    self.consume(written);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((total, Flushed::Blocked))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn consume(&mut self, mut written: usize) {
        self.queued_bytes -= written;
        self.budget.used.set(self.budget.used.get() - written);
        while written > 0 {
            let front = self.queue.front_mut().expect("wrote more than was queued");
            if written >= front.len() {
                written -= front.len();
                self.queue.pop_front();
                self.front_started = false;
            } else {
                front.advance(written);
                written = 0;
                self.front_started = true;
            }
        }
    }
}

/// What [`Outbound::catch_up`] queued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaughtUp {
    pub notices: usize,
    pub frames: usize,
    pub snapshots: usize,
}

impl CaughtUp {
    pub fn any(&self) -> bool {
        self.notices + self.frames + self.snapshots > 0
    }
}

/// A `gap` notice for seqs `from..=to` of `ch`, as a frame in an allocation of its own, of
/// exactly its size (a queue writes the notices it owes into its own reused memory instead).
pub fn gap_notice(symbols: &SymbolTable, ch: ChannelId, from: u64, to: u64, reason: &str) -> Bytes {
    let notice = GapNotice::new(symbols, ch, from, to, reason, Form::WebSocket);
    let mut out = BytesMut::with_capacity(notice.len());
    notice.write(&mut out);
    out.freeze()
}

/// A gap notice to be written: its length is known before it is.
struct GapNotice<'a> {
    /// The channel's name, written once in the symbol table.
    ch: &'a str,
    from: u64,
    to: u64,
    reason: &'a str,
    /// Length of the JSON payload.
    payload: usize,
    /// A WebSocket frame, or an SSE event (`data: …\n\n`).
    form: Form,
}

impl<'a> GapNotice<'a> {
    fn new(
        symbols: &'a SymbolTable,
        ch: ChannelId,
        from: u64,
        to: u64,
        reason: &'a str,
        form: Form,
    ) -> Self {
        let ch = symbols.channel_name_str(ch);
        GapNotice { ch, from, to, reason, payload: gap_json_len(ch, from, to, reason), form }
    }

    /// Length of the whole frame or event.
    fn len(&self) -> usize {
        match self.form {
            Form::Sse => SSE_DATA.len() + self.payload + 2,
            _ => frame::header_len(self.payload) + self.payload,
        }
    }

    /// Appends the whole frame or event.
    fn write(&self, out: &mut BytesMut) {
        match self.form {
            Form::Sse => out.extend_from_slice(SSE_DATA),
            _ => frame::put_header(out, Opcode::Text, self.payload),
        }
        write_gap_json_with(
            |part| out.extend_from_slice(part),
            self.ch,
            self.from,
            self.to,
            self.reason,
        );
        if self.form == Form::Sse {
            out.extend_from_slice(b"\n\n");
        }
    }
}

/// How an SSE event's data line begins.
const SSE_DATA: &[u8] = b"data: ";

/// Memory a queue writes its gap notices into: chunks cut into notices, a chunk being reused
/// once every notice cut from it has been written (and dropped). A connection that keeps
/// falling behind thus allocates for notices only until it has chunks enough for the notices
/// it has queued at once; at most [`NOTICE_CHUNKS`] are kept (older ones are let go, freed
/// when their last notice is written).
#[derive(Debug, Default)]
struct NoticeMemory {
    /// The last one is being cut.
    chunks: Vec<BytesMut>,
}

impl NoticeMemory {
    /// Writes `notice` and returns it, sharing a chunk.
    fn write(&mut self, notice: &GapNotice<'_>) -> Bytes {
        let len = notice.len();
        // `try_reclaim` never allocates: true if the chunk has room left after its last
        // notice, or if all its notices are gone (then the whole chunk is free again).
        if !self.chunks.last_mut().is_some_and(|c| c.try_reclaim(len)) {
            self.next_chunk(len);
        }
        let chunk = self.chunks.last_mut().expect("next_chunk leaves a chunk last");
        notice.write(chunk);
        debug_assert_eq!(chunk.len(), len, "a notice is as long as computed");
        chunk.split().freeze()
    }

    /// Makes the last chunk one with room for `len` bytes: a free one if any, else a new one.
    fn next_chunk(&mut self, len: usize) {
        if let Some(i) = self.chunks.iter_mut().position(|c| c.try_reclaim(len)) {
            let chunk = self.chunks.remove(i);
            self.chunks.push(chunk);
            return;
        }
        if self.chunks.len() == NOTICE_CHUNKS {
            self.chunks.remove(0); // its notices keep it alive until they are written
        }
        let size = (NOTICE_CHUNK << self.chunks.len()).min(NOTICE_CHUNK_MAX).max(len);
        self.chunks.push(BytesMut::with_capacity(size));
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::sync::Arc;

    use super::*;
    use crate::close::CloseCode;
    use crate::market::ResumeWindow;
    use tickfan_proto::encode::write_gap_json;
    use tickfan_proto::{BookDelta, Kind, Level, Symbol, SymbolTable, Tick, TickBody};

    /// A socket that accepts at most `room` bytes, then would block.
    struct Sink {
        room: Cell<usize>,
        got: RefCell<Vec<u8>>,
    }

    impl Sink {
        fn new(room: usize) -> Sink {
            Sink { room: Cell::new(room), got: RefCell::new(Vec::new()) }
        }

        /// What was written so far, as JSON values (everything we send here is JSON text).
        fn json(&self) -> Vec<serde_json::Value> {
            payloads(&self.got.borrow())
                .iter()
                .map(|p| serde_json::from_slice(p).unwrap_or(serde_json::Value::Null))
                .collect()
        }
    }

    impl TryWrite for Sink {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.room.get() - n);
                self.got.borrow_mut().extend_from_slice(&b[..take]);
                n += take;
            }
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.room.set(self.room.get() - n);
            Ok(n)
        }
    }

    fn market() -> Market {
        let syms =
            SymbolTable::new(vec![Symbol { name: "BTC-USD".into(), px_scale: 2, qty_scale: 4 }]);
        Market::new(Arc::new(syms), ResumeWindow { max_bytes: 1 << 30, max_age_ns: u64::MAX }, None)
    }

    fn queue(limit: usize) -> Outbound {
        Outbound::new(limit, Budget::new(usize::MAX))
    }

    /// A data frame of `kind` whose JSON payload is exactly `len` bytes (at least 20).
    fn on(kind: Kind, seq: u64, len: usize) -> Frame {
        let head = format!("{{\"seq\":{seq},\"pad\":\"");
        let json = format!("{head}{}\"}}", "x".repeat(len - head.len() - 2));
        let bytes = frame::build(Opcode::Text, json.as_bytes());
        Frame { ch: ChannelId::new(kind, 0), seq, ts: 0, bytes, alt: None }
    }

    fn data(seq: u64, len: usize) -> Frame {
        on(Kind::Trades, seq, len)
    }

    /// Splits what a sink received into payloads.
    fn payloads(mut wire: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            let (len, hdr) = match wire[1] {
                126 => (usize::from(u16::from_be_bytes([wire[2], wire[3]])), 4),
                n => (usize::from(n), 2),
            };
            out.push(wire[hdr..hdr + len].to_vec());
            wire = &wire[hdr + len..];
        }
        out
    }

    fn seqs(values: &[serde_json::Value]) -> Vec<u64> {
        values.iter().filter_map(|v| v["seq"].as_u64()).collect()
    }

    #[test]
    fn full_queue_drops_then_declares_the_exact_gap() {
        let m = market();
        let mut q = queue(1000);
        let offers: Vec<Offer> =
            (1..=20).map(|seq| q.offer(&data(seq, 98), Policy::Gap, &m)).collect();
        assert_eq!(offers.iter().filter(|o| **o == Offer::Queued).count(), 10);
        assert_eq!(q.queued_bytes(), 1000);
        let sink = Sink::new(usize::MAX);
        assert_eq!(q.write_to(&sink).unwrap(), (1000, Flushed::Drained));
        assert_eq!(q.offer(&data(21, 98), Policy::Gap, &m), Offer::QueuedAfterNotice);
        q.write_to(&sink).unwrap();
        let got = sink.json();
        assert_eq!(got.len(), 12, "10 frames, one gap notice, frame 21");
        assert_eq!(
            got[10],
            serde_json::json!({"op":"gap","ch":"trades.BTC-USD","from":11,"to":20,"reason":"slow_consumer"})
        );
        assert_eq!(got[11]["seq"], 21);
    }

    #[test]
    fn an_event_stream_queue_holds_events_and_declares_gaps_as_events() {
        let m = market();
        let head = Bytes::from_static(b"HTTP/1.1 200 OK\r\n\r\n");
        let mut q = Outbound::sse(1000, Budget::new(usize::MAX), head.clone());
        let queued =
            (1..=20).filter(|&seq| q.offer(&data(seq, 80), Policy::Gap, &m) == Offer::Queued);
        assert_eq!(queued.count(), 8, "each event is its id line, data line and blank line");
        let sink = Sink::new(usize::MAX);
        q.write_to(&sink).unwrap();
        assert_eq!(q.offer(&data(21, 80), Policy::Gap, &m), Offer::QueuedAfterNotice);
        q.push_urgent(frame::build(Opcode::Ping, b"12345678"));
        q.push_close(frame::close(CloseCode::GoingAway, "bye"));
        q.write_to(&sink).unwrap();
        let got = sink.got.borrow();
        let body = got.strip_prefix(&head[..]).expect("the head first");
        let text = String::from_utf8(body.to_vec()).unwrap();
        let blocks: Vec<&str> = text.trim_end().split("\n\n").collect();
        assert_eq!(
            blocks.len(),
            8 + 4,
            "8 events, the gap, the ping (urgent), 21, the close: {text}"
        );
        assert_eq!(
            blocks[0],
            format!(
                "id: trades.BTC-USD:1\ndata: {}",
                std::str::from_utf8(&data(1, 80).bytes[2..]).unwrap()
            )
        );
        let gap =
            r#"data: {"op":"gap","ch":"trades.BTC-USD","from":9,"to":20,"reason":"slow_consumer"}"#;
        assert_eq!(blocks[8], gap);
        assert_eq!(blocks[9], ": ping");
        assert!(blocks[10].starts_with("id: trades.BTC-USD:21\n"), "{}", blocks[10]);
        assert_eq!(blocks[11], r#"data: {"op":"close","code":1001,"reason":"bye"}"#);
    }

    #[test]
    fn catch_up_declares_a_gap_as_soon_as_there_is_room() {
        let m = market();
        let mut q = queue(1000);
        for seq in 1..=15 {
            q.offer(&data(seq, 98), Policy::Gap, &m);
        }
        let sink = Sink::new(usize::MAX);
        q.write_to(&sink).unwrap();
        assert!(q.is_behind());
        assert_eq!(q.catch_up(&m), CaughtUp { notices: 1, frames: 0, snapshots: 0 });
        q.write_to(&sink).unwrap();
        assert_eq!(sink.json()[10]["to"], 15);
        assert!(!q.is_behind());
    }

    #[test]
    fn conflated_quotes_deliver_only_the_newest_after_a_notice() {
        let m = market();
        let mut q = queue(1000);
        for seq in 1..=30 {
            q.offer(&on(Kind::Quotes, seq, 98), Policy::Conflate, &m);
        }
        let sink = Sink::new(usize::MAX);
        q.write_to(&sink).unwrap();
        assert_eq!(q.catch_up(&m), CaughtUp { notices: 1, frames: 1, snapshots: 0 });
        q.write_to(&sink).unwrap();
        let got = sink.json();
        assert_eq!(seqs(&got), [(1..=10).collect::<Vec<_>>(), vec![30]].concat());
        assert_eq!(got[10]["reason"], "conflated");
        assert_eq!((got[10]["from"].as_u64(), got[10]["to"].as_u64()), (Some(11), Some(29)));
    }

    #[test]
    fn a_conflated_book_gets_a_snapshot_and_skips_what_it_covers() {
        let m = market();
        let mut json = Vec::new();
        let book = |seq, px| Tick {
            sym: 0,
            seq,
            ts: seq,
            et: 0,
            body: TickBody::Book(BookDelta { bids: vec![Level { px, qty: 1 }], asks: vec![] }),
        };
        let frames: Vec<Frame> =
            (1..=40).map(|seq| m.publish(&book(seq, 1000 + seq as i64), &mut json)).collect();
        let mut q = queue(64 << 10);
        // The worker is at seq 20 while the producer already published 40.
        for f in &frames[..20] {
            assert_eq!(q.offer(f, Policy::Conflate, &m), Offer::Queued);
        }
        q.want_snapshot(frames[0].ch);
        assert_eq!(q.offer(&frames[20], Policy::Conflate, &m), Offer::Dropped);
        assert_eq!(q.catch_up(&m).snapshots, 1);
        for f in &frames[21..] {
            assert_eq!(q.offer(f, Policy::Conflate, &m), Offer::Skipped, "seq {} <= 40", f.seq);
        }
        let next = m.publish(&book(41, 5000), &mut json);
        assert_eq!(q.offer(&next, Policy::Conflate, &m), Offer::Queued);
        let sink = Sink::new(usize::MAX);
        q.write_to(&sink).unwrap();
        let got = sink.json();
        assert_eq!(got[20]["type"], "snapshot");
        assert_eq!(got[20]["seq"], 40);
        assert_eq!(got[20]["bids"].as_array().unwrap().len(), 40);
        assert_eq!(got[21]["seq"], 41);
    }

    #[test]
    fn disconnect_policy_asks_the_caller_to_close() {
        let m = market();
        let mut q = queue(1000);
        for seq in 1..=10 {
            assert_eq!(q.offer(&data(seq, 98), Policy::Disconnect, &m), Offer::Queued);
        }
        assert_eq!(q.offer(&data(11, 98), Policy::Disconnect, &m), Offer::Disconnect);
    }

    #[test]
    fn the_budget_stops_big_backlogs_but_not_small_queues() {
        let m = market();
        let budget = Budget::new(200 << 10);
        let mut big = Outbound::new(4 << 20, budget.clone());
        let mut small = Outbound::new(4 << 20, budget.clone());
        let mut seq = 0;
        while big.offer(&data(seq + 1, 1000), Policy::Gap, &m) == Offer::Queued {
            seq += 1;
        }
        assert!(big.queued_bytes() <= 200 << 10 && big.queued_bytes() > 190 << 10);
        // Over budget now, but a queue under the fair share still takes frames.
        for s in 1..=10 {
            assert_eq!(small.offer(&data(s, 1000), Policy::Gap, &m), Offer::Queued);
        }
        assert_eq!(budget.used(), big.queued_bytes() + small.queued_bytes());
        drop(big);
        assert_eq!(budget.used(), small.queued_bytes(), "a closed queue gives its bytes back");
    }

    #[test]
    fn partial_writes_resume_mid_frame_and_keep_order_with_urgent_pings() {
        let m = market();
        let mut q = queue(10_000);
        for seq in 0..10 {
            q.offer(&data(seq, 50), Policy::Gap, &m);
        }
        let sink = Sink::new(130);
        assert_eq!(q.write_to(&sink).unwrap(), (130, Flushed::Blocked));
        // A ping goes right behind the partly written frame, ahead of the backlog.
        q.push_urgent(frame::build(Opcode::Ping, b"p"));
        sink.room.set(usize::MAX);
        q.write_to(&sink).unwrap();
        let got = payloads(&sink.got.borrow());
        assert_eq!(got.len(), 11);
        assert_eq!(got[3], b"p");
        let data_seqs: Vec<u64> = got
            .iter()
            .filter_map(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
            .filter_map(|v| v["seq"].as_u64())
            .collect();
        assert_eq!(data_seqs, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn close_now_keeps_only_the_frame_being_written() {
        let m = market();
        let mut q = queue(10_000);
        for seq in 0..10 {
            q.offer(&data(seq, 50), Policy::Gap, &m);
        }
        let sink = Sink::new(60); // frame 0 whole, frame 1 started
        q.write_to(&sink).unwrap();
        q.close_now(frame::close(CloseCode::Policy, "slow consumer"));
        sink.room.set(usize::MAX);
        q.write_to(&sink).unwrap();
        let got = payloads(&sink.got.borrow());
        assert_eq!(got.len(), 3, "frames 0 and 1, then the close");
        assert_eq!(&got[2][..2], &1008u16.to_be_bytes());
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn gap_notices_are_the_frames_they_always_were_and_as_long_as_computed() {
        let m = market();
        let ch = ChannelId::new(Kind::Trades, 0);
        for (from, to) in [(1, 1), (9, 10), (11, 20), (99_999, 123_456_789), (1, u64::MAX)] {
            for reason in ["slow_consumer", "conflated", "ring_overflow"] {
                let mut json = Vec::new();
                write_gap_json(&mut json, "trades.BTC-USD", from, to, reason);
                let expected = frame::build(Opcode::Text, &json);
                let notice = GapNotice::new(m.symbols(), ch, from, to, reason, Form::WebSocket);
                assert_eq!(notice.len(), expected.len());
                assert_eq!(gap_notice(m.symbols(), ch, from, to, reason), expected);
                assert_eq!(NoticeMemory::default().write(&notice), expected);
            }
        }
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            assert_eq!(
                frame::header_len(len) + len,
                frame::build(Opcode::Text, &vec![b'x'; len]).len()
            );
        }
    }

    #[test]
    fn notice_memory_is_reused_once_its_notices_are_written() {
        let m = market();
        let ch = ChannelId::new(Kind::Quotes, 0);
        let notice =
            |seq: u64| GapNotice::new(m.symbols(), ch, seq, seq + 1, "conflated", Form::WebSocket);
        // Each notice written before the next: all of them in one chunk, reused from its start.
        let mut mem = NoticeMemory::default();
        let first = mem.write(&notice(1));
        let start = first.as_ptr();
        drop(first);
        for seq in 0..100 {
            let n = mem.write(&notice(seq));
            assert!(n.as_ptr() >= start && n.as_ptr() < start.wrapping_add(NOTICE_CHUNK));
        }
        assert_eq!(mem.chunks.len(), 1);
        // Up to 21 notices queued at once: a few chunks, no more once there are enough, and a
        // queued notice never changes.
        let kept = mem.write(&notice(7));
        let copy = kept.to_vec();
        let mut queued = Vec::new();
        let mut chunks = 0;
        for seq in 0..10_000 {
            queued.push(mem.write(&notice(seq)));
            if queued.len() == 20 {
                queued.clear();
            }
            if seq == 1000 {
                chunks = mem.chunks.len();
            }
        }
        assert_eq!(kept.to_vec(), copy);
        assert_eq!(mem.chunks.len(), chunks, "no new chunk in the steady state");
        assert!(chunks < NOTICE_CHUNKS, "{chunks} chunks");
    }

    #[test]
    fn control_frames_have_bounded_slack_and_close_is_last() {
        let m = market();
        let mut q = queue(1000);
        let reply = frame::build(Opcode::Text, &[b'r'; 1000]);
        let mut accepted = 0;
        while q.push_control(reply.clone()) {
            accepted += 1;
        }
        assert_eq!(accepted, (1000 + CONTROL_SLACK) / 1002);
        q.push_close(frame::close(CloseCode::GoingAway, "bye"));
        assert!(q.is_closing());
        assert_eq!(q.offer(&data(1, 30), Policy::Gap, &m), Offer::Closed);
    }
}
