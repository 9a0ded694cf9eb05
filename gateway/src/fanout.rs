//! The fan-out worker's shard: the connections one worker owns, who subscribes to what, and
//! delivery of shared frames to them.
//!
//! Cost model (docs/architecture.md): a batch of frames popped from the ring is appended to every
//! subscriber's queue (a reference-count increment and a deque push each: no lock, no
//! allocation, no task wake-up per message per subscriber); then every connection that got
//! something is flushed once, many frames per `sendmsg`. A connection whose socket would block
//! waits for the worker's readiness driver (`readiness`) to see it writable; one the shard ends
//! is put on its woken list for the driver to stop reading it.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use slab::Slab;
use std::task::Waker;
use tickfan_proto::{ChannelId, ChannelSpec, Kind, SymbolTable};

/// The gateway's own statistics channel (`docs/protocol.md`), sent once a second.
pub const SYS_STATS: &str = "sys.stats";

use crate::backpressure::{gap_notice, Budget, Flushed, Offer, Outbound, TryWrite};
use crate::channels::{ConnKey, ConnSubscriptions, SubscriptionIndex};
use crate::close::CloseCode;
use crate::config::{Policies, Policy};
use crate::deadlines::{Deadlines, Due};
use crate::frame::{self, Frame, Opcode};
use crate::market::{Market, Replay};
use crate::metrics::{CloseReason, Stats};
use crate::sse::{Form, LastEvent};

/// One connection as the shard sees it.
#[derive(Debug)]
pub struct Conn {
    /// Frames waiting for the socket.
    out: Outbound,
    /// What it subscribes to (mirrored in the shard's index).
    subs: ConnSubscriptions,
    /// The socket, as far as the fan-out needs it: written directly with vectored writes.
    sock: Rc<dyn TryWrite>,
    /// Queued something this batch and is in the shard's dirty list.
    dirty: bool,
    /// Its socket would block: only the readiness driver flushes it, once writable again.
    blocked: bool,
    /// A write failed: the connection is finished, nothing more is queued or written.
    dead: bool,
    /// The shard ended the connection (write error, server-initiated close): its reader stops.
    stop: bool,
    /// Subscribed to `sys.stats`: the seq its next stats message gets.
    stats_seq: Option<u64>,
    /// Pings sent since the client last showed it is alive (a pong or any frame).
    unanswered_pings: u32,
    /// Since when the connection holds no subscription (for `--idle-timeout`).
    idle_since: Option<Instant>,
    /// Why the shard closed it, when it did (slow consumer, dead peer, idle, shutdown).
    closed_for: Option<CloseReason>,
    /// Tells it from a later connection with the same key (for [`Deadlines`]).
    serial: u32,
}

impl Conn {
    fn new(sock: Rc<dyn TryWrite>, out: Outbound, serial: u32) -> Conn {
        Conn {
            out,
            serial,
            subs: ConnSubscriptions::default(),
            stats_seq: None,
            unanswered_pings: 0,
            idle_since: Some(Instant::now()),
            closed_for: None,
            sock,
            dirty: false,
            blocked: false,
            dead: false,
            stop: false,
        }
    }

    /// Whether the connection receives `ch` (by name or through its kind's wildcard).
    pub fn covers(&self, ch: ChannelId) -> bool {
        self.subs.has_wildcard(ch.kind()) || self.subs.contains(ChannelSpec::Exact(ch))
    }

    /// Puts the connection on the shard's dirty list (once per batch) so `flush_dirty` writes
    /// what it queued.
    fn mark_dirty(&mut self, key: ConnKey, dirty: &mut Vec<ConnKey>) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(key);
        }
    }

    /// Ends the connection from the shard's side: its reader is told to stop.
    fn stop(&mut self, key: ConnKey, woken: &mut Woken) {
        if !self.stop {
            self.stop = true;
            woken.push(key);
        }
    }
}

/// Connections the shard ended since the readiness driver last looked, and the driver's waker.
#[derive(Debug, Default)]
struct Woken {
    keys: Vec<ConnKey>,
    driver: Option<Waker>,
}

impl Woken {
    fn push(&mut self, key: ConnKey) {
        if self.keys.is_empty() {
            if let Some(w) = &self.driver {
                w.wake_by_ref();
            }
        }
        self.keys.push(key);
    }
}

/// What a connection's reader needs to know about it (see [`Shard::view`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// Stop reading: the shard ended the connection.
    pub stop: bool,
    /// The socket is full: wait for writability, then [`Shard::flush`].
    pub blocked: bool,
    /// Nothing is queued (or nothing can be written any more).
    pub drained: bool,
}

/// Outcome of a flush, for the connection's reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushState {
    Drained,
    Blocked,
    Dead,
}

/// Everything one worker owns. Lives in a `RefCell` on the worker's thread: tasks borrow it
/// briefly and never across an `.await`.
#[derive(Debug)]
pub struct Shard {
    /// Connections of this worker.
    conns: Slab<Conn>,
    /// Subscribers per channel.
    index: SubscriptionIndex,
    /// Next seq expected per channel from the ring (0: nothing seen yet). A jump means frames
    /// were dropped in the ring; subscribers get a gap notice for it.
    expected: Vec<u64>,
    /// Connections that queued data in the current batch.
    dirty: Vec<ConnKey>,
    /// Connections ended by the shard, for the readiness driver.
    woken: Woken,
    /// Books, resume history and symbol names.
    market: Arc<Market>,
    /// Slow-consumer policy per channel kind.
    policies: Policies,
    /// Bytes queued over this shard's connections, and their bound.
    budget: Rc<Budget>,
    /// Connections to close with 1008 after the batch (their policy is `disconnect`).
    slow: Vec<ConnKey>,
    /// Gateway-wide counters.
    stats: Arc<Stats>,
    /// Per-batch tallies, published to `stats` by `flush_dirty`.
    tally: Tally,
    /// Whether this shard's connections were last told that the feed is stale.
    feed_stale: bool,
    /// Timed events of connections (maximum age, credentials' expiry).
    deadlines: Deadlines,
    /// The serial of the next connection opened.
    next_serial: u32,
}

/// `{"op":"status","feed":"stale"}` or `…"live"}`: the feed's state, as exchanges announce it
/// on their status channels.
fn status_frame(stale: bool) -> Bytes {
    let word = if stale { "stale" } else { "live" };
    frame::build(Opcode::Text, format!(r#"{{"op":"status","feed":"{word}"}}"#).as_bytes())
}

#[derive(Debug, Default)]
struct Tally {
    frames_out: u64,
    bytes_out: u64,
    /// Frames dropped for slow consumers, by policy (gap, conflate).
    drops: [u64; 2],
    gaps: u64,
    snapshots: u64,
}

/// What a `subscribe` did, for its reply.
#[derive(Debug, Default)]
pub struct Subscribed {
    /// The outcome of each requested resume: `true` if the channel continues from the seq
    /// given (replayed from the window), `false` if it starts again (with a snapshot, for books).
    pub resumed: Vec<(ChannelId, bool)>,
}

impl Shard {
    pub fn new(
        market: Arc<Market>,
        stats: Arc<Stats>,
        policies: Policies,
        budget: Rc<Budget>,
    ) -> Shard {
        let n = market.symbols().channel_count();
        Shard {
            conns: Slab::new(),
            index: SubscriptionIndex::new(n),
            expected: vec![0; n],
            dirty: Vec::new(),
            woken: Woken::default(),
            market,
            policies,
            budget,
            slow: Vec::new(),
            stats,
            tally: Tally::default(),
            feed_stale: false,
            deadlines: Deadlines::default(),
            next_serial: 0,
        }
    }

    pub fn symbols(&self) -> &Arc<SymbolTable> {
        self.market.symbols()
    }

    pub fn market(&self) -> &Arc<Market> {
        &self.market
    }

    /// Adds a WebSocket speaking `form` (plain, compressed or binary data) writing to `sock`,
    /// its queue bounded by `queue_limit` bytes and this shard's budget.
    pub fn open(&mut self, sock: Rc<dyn TryWrite>, queue_limit: usize, form: Form) -> ConnKey {
        let out = Outbound::websocket(queue_limit, self.budget.clone(), form);
        self.insert(sock, out)
    }

    /// Adds a Server-Sent Events stream writing to `sock`, its response `head` first
    /// (`crate::sse`); its channels come with [`subscribe_sse`](Self::subscribe_sse).
    pub fn open_sse(&mut self, sock: Rc<dyn TryWrite>, queue_limit: usize, head: Bytes) -> ConnKey {
        let out = Outbound::sse(queue_limit, self.budget.clone(), head);
        self.insert(sock, out)
    }

    fn insert(&mut self, sock: Rc<dyn TryWrite>, out: Outbound) -> ConnKey {
        self.next_serial = self.next_serial.wrapping_add(1);
        self.conns.insert(Conn::new(sock, out, self.next_serial))
    }

    /// Schedules `due` for connection `key` at `at`.
    pub fn schedule(&mut self, key: ConnKey, at: Instant, due: Due) {
        let Some(conn) = self.conns.get(key) else { return };
        self.deadlines.schedule(at, key, conn.serial, due);
        // Events of closed connections stay until due; purge them once they are the most
        // (each open connection has at most three events): amortized O(1) per event.
        if self.deadlines.len() > 6 * self.conns.len() + 1024 {
            let conns = &self.conns;
            self.deadlines.forget_unless(|k, s| conns.get(k).is_some_and(|c| c.serial == s));
        }
    }

    /// Carries out the events due by `now`: the age notice, the closes at the maximum age and
    /// at the credentials' expiry.
    pub fn run_deadlines(&mut self, now: Instant) {
        while let Some((key, serial, due)) = self.deadlines.pop_due(now) {
            let Some(conn) = self.conns.get_mut(key).filter(|c| c.serial == serial) else {
                continue;
            };
            if conn.out.is_closing() || conn.dead {
                continue;
            }
            match due {
                Due::AgeNotice { in_ms } => {
                    let notice =
                        format!(r#"{{"op":"shutdown","in_ms":{in_ms},"reason":"max_age"}}"#);
                    self.send_json(key, notice.as_bytes());
                }
                Due::MaxAge => self.close_for(key, CloseReason::MaxAge),
                Due::Expired => self.close_for(key, CloseReason::Expired),
                Due::Drained => self.close_for(key, CloseReason::GoingAway),
            }
        }
    }

    /// Unsubscribes and forgets a connection; what it received, if it was here.
    pub fn remove(&mut self, key: ConnKey) -> Option<Form> {
        let conn = self.conns.try_remove(key)?;
        let form = conn.out.form();
        for spec in conn.subs.specs() {
            self.index.remove(spec, key);
            counted(&self.stats, &self.market, spec, -1, form);
        }
        self.dirty.retain(|&k| k != key);
        Some(form)
    }

    /// Number of connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The connection's state for its reader; `None` once the connection is gone.
    pub fn view(&self, key: ConnKey) -> Option<View> {
        let conn = self.conns.get(key)?;
        Some(View {
            stop: conn.stop || conn.dead,
            blocked: conn.blocked && !conn.dead,
            drained: conn.dead || conn.out.is_empty(),
        })
    }

    /// Moves the connections ended since the last call into `keys`; whether there were any.
    pub fn take_woken(&mut self, keys: &mut Vec<ConnKey>) -> bool {
        let any = !self.woken.keys.is_empty();
        keys.append(&mut self.woken.keys);
        any
    }

    /// Notes the readiness driver's waker, woken when the shard ends a connection.
    pub fn set_driver(&mut self, driver: &Waker) {
        if !self.woken.driver.as_ref().is_some_and(|w| w.will_wake(driver)) {
            self.woken.driver = Some(driver.clone());
        }
    }

    /// The client showed it is alive (it sent a frame): its ping count starts again.
    pub fn alive(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.unanswered_pings = 0;
        }
    }

    /// Why the shard ended the connection, if it did.
    pub fn closed_for(&self, key: ConnKey) -> Option<CloseReason> {
        self.conns.get(key).and_then(|c| c.closed_for)
    }

    /// How many subscriptions the connection would hold with `specs` added (`None`: gone).
    pub fn subscriptions_with(&self, key: ConnKey, specs: &[ChannelSpec]) -> Option<usize> {
        let conn = self.conns.get(key)?;
        Some(conn.subs.len() + specs.iter().filter(|s| !conn.subs.contains(**s)).count())
    }

    /// Starts or stops the connection's `sys.stats` stream.
    pub fn set_stats(&mut self, key: ConnKey, on: bool) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        match (on, conn.stats_seq) {
            (true, None) => {
                conn.stats_seq = Some(1);
                conn.idle_since = None;
            }
            (false, Some(_)) => conn.stats_seq = None,
            _ => {}
        }
    }

    /// The names of the connection's subscriptions, as `list` reports them.
    pub fn subscription_names(&self, key: ConnKey) -> Vec<String> {
        self.conns.get(key).map_or_else(Vec::new, |c| {
            let mut names = c.subs.names(self.market.symbols());
            if c.stats_seq.is_some() {
                names.push(SYS_STATS.to_owned());
            }
            names
        })
    }

    /// Answers the client's close frame with `echo` (RFC 6455 §5.5.1), after what is queued.
    pub fn echo_close(&mut self, key: ConnKey, echo: Bytes) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.out.push_close(echo);
        if !conn.blocked {
            self.flush(key);
        }
    }

    /// Adds subscriptions (already validated and within limits) and starts their streams:
    /// `reply` (given the resume outcomes) is queued first, then frames replayed for the
    /// `resume` requests (channel, last seq the client has) that the window still covers, then
    /// a snapshot of every book channel newly covered and not resumed. Live frames follow.
    /// Replays are bounded in total by the connection's queue bound and the worker's budget
    /// of queued bytes; channels beyond them are not resumed. Seqs of another `epoch` than the market's mean nothing here: none of them
    /// resumes.
    pub fn subscribe(
        &mut self,
        key: ConnKey,
        specs: &[ChannelSpec],
        resume: &[(ChannelId, u64)],
        epoch: Option<&str>,
        reply: impl FnOnce(&Subscribed) -> Vec<u8>,
    ) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let same_epoch = epoch.is_none_or(|e| e == self.market.epoch());
        // Channels of states (books, ticker, candles) that start streaming with this request:
        // each starts with the whole state.
        let mut new_books: Vec<ChannelId> = Vec::new();
        for &spec in specs {
            match spec {
                ChannelSpec::Exact(ch) if has_state(ch.kind()) && !conn.covers(ch) => {
                    new_books.push(ch);
                }
                ChannelSpec::Wildcard(kind) if has_state(kind) && !conn.subs.has_wildcard(kind) => {
                    let n = self.market.symbols().len() as u32;
                    new_books.extend(
                        (0..n)
                            .map(|sym| ChannelId::new(kind, sym))
                            .filter(|&ch| !conn.subs.contains(ChannelSpec::Exact(ch))),
                    );
                }
                _ => {}
            }
        }
        let mut outcome = Subscribed::default();
        let mut replays = Vec::new();
        let mut replay_bytes = 0;
        for &(ch, seq) in resume {
            let replay = if !same_epoch || conn.covers(ch) {
                None // another run's seqs, or already streaming: nothing to resume
            } else {
                match self.market.replay(ch, seq) {
                    Replay::Frames { frames, last } => {
                        replay_bytes += frames.iter().map(|f| f.bytes.len()).sum::<usize>();
                        conn.out.replay_fits(replay_bytes).then_some((ch, frames, last))
                    }
                    Replay::Unavailable => None,
                }
            };
            outcome.resumed.push((ch, replay.is_some()));
            replays.extend(replay);
        }
        for &spec in specs {
            if conn.subs.insert(spec) {
                self.index.add(spec, key);
                counted(&self.stats, &self.market, spec, 1, conn.out.form());
            }
        }
        if !conn.subs.is_empty() {
            conn.idle_since = None;
        }
        self.stats.resumes(&outcome.resumed);
        let reply = reply(&outcome);
        if !conn.out.push_control(frame::build(Opcode::Text, &reply)) {
            return self.close_for(key, CloseReason::UnreadReplies);
        }
        for (ch, frames, last) in replays {
            new_books.retain(|&b| b != ch);
            conn.out.replay(ch, frames, last, &self.market);
        }
        self.start_streams(key, new_books);
    }

    /// The end of a subscribe, after its reply and replays: the feed's state if it is stale,
    /// the whole state of each of `new_states` (a book's snapshot, a derived channel's last
    /// message), then a flush.
    fn start_streams(&mut self, key: ConnKey, new_states: Vec<ChannelId>) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if self.feed_stale {
            // Told now, as every connection was when the feed went stale.
            conn.out.push_control(status_frame(true));
        }
        for ch in new_states {
            if ch.kind().is_book() {
                conn.out.want_snapshot(ch);
            } else if let Some(latest) = self.market.latest(ch) {
                conn.out.push_state(&latest);
            }
        }
        if !conn.blocked {
            self.flush(key);
        }
    }

    /// Starts a Server-Sent Events stream of `specs` (validated, within limits) on connection
    /// `key`, opened with [`open_sse`](Self::open_sse). With `last_event` (the client's
    /// `Last-Event-ID`: a channel and seq), every channel resumes after the last frame
    /// published before that one, if the window still holds it, in publish order
    /// ([`Market::sse_replay`]); else the stream starts live, books with a snapshot. `reply`
    /// (given the resume outcomes) goes first.
    pub fn subscribe_sse(
        &mut self,
        key: ConnKey,
        specs: &[ChannelSpec],
        last_event: LastEvent,
        reply: impl FnOnce(&Subscribed) -> Vec<u8>,
    ) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        for &spec in specs {
            if conn.subs.insert(spec) {
                // Frames published from now on carry their SSE form.
                self.index.add(spec, key);
                counted(&self.stats, &self.market, spec, 1, Form::Sse);
            }
        }
        conn.idle_since = None;
        let n = self.market.symbols().len() as u32;
        let channels: Vec<ChannelId> = specs
            .iter()
            .flat_map(|&spec| match spec {
                ChannelSpec::Exact(ch) => vec![ch],
                ChannelSpec::Wildcard(kind) => (0..n).map(|s| ChannelId::new(kind, s)).collect(),
            })
            .collect();
        let replay = match last_event {
            LastEvent::At(ch, seq) => self.market.sse_replay(ch, seq, &channels),
            LastEvent::None | LastEvent::Unknown => None,
        };
        let replay =
            replay.filter(|r| conn.out.replay_fits(r.frames.iter().map(|f| f.bytes.len()).sum()));
        let mut outcome = Subscribed::default();
        if last_event != LastEvent::None {
            outcome.resumed = channels.iter().map(|&ch| (ch, replay.is_some())).collect();
            self.stats.resumes(&outcome.resumed);
        }
        if !conn.out.push_control(frame::build(Opcode::Text, &reply(&outcome))) {
            return self.close_for(key, CloseReason::UnreadReplies);
        }
        let new_books = match replay {
            Some(replay) => {
                conn.out.replay_all(&replay.frames, &replay.floors, &self.market);
                Vec::new()
            }
            None => channels.into_iter().filter(|ch| has_state(ch.kind())).collect(),
        };
        self.start_streams(key, new_books);
    }

    pub fn unsubscribe(&mut self, key: ConnKey, specs: &[ChannelSpec]) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        for &spec in specs {
            if conn.subs.remove(spec) {
                self.index.remove(spec, key);
                counted(&self.stats, &self.market, spec, -1, conn.out.form());
            }
        }
        let Conn { out, subs, .. } = conn;
        out.forget(|ch| subs.has_wildcard(ch.kind()) || subs.contains(ChannelSpec::Exact(ch)));
        if conn.subs.is_empty() && conn.stats_seq.is_none() && conn.idle_since.is_none() {
            conn.idle_since = Some(Instant::now());
        }
    }

    /// Routes one frame to this shard's subscribers of its channel.
    pub fn deliver(&mut self, frame: &Frame) {
        let ch = frame.ch;
        let expected = std::mem::replace(&mut self.expected[ch.index()], frame.seq + 1);
        if expected != 0 && frame.seq > expected {
            self.declare_ring_loss(ch, expected, frame.seq - 1);
        }
        let kind = ch.kind();
        let mut d = Delivery {
            frame,
            policy: self.policies.get(kind),
            market: &self.market,
            dirty: &mut self.dirty,
            tally: &mut self.tally,
            slow: &mut self.slow,
        };
        let (wild, exact) = self.index.subscribers(ch);
        for &key in wild {
            d.offer(&mut self.conns[key], key);
        }
        for &key in exact {
            let conn = &mut self.conns[key];
            // A connection holding `kind.*` too was served through the wildcard list.
            if !conn.subs.has_wildcard(kind) {
                d.offer(conn, key);
            }
        }
    }

    /// Frames of `ch` numbered `from..=to` never came out of this worker's ring: the upstream
    /// skipped them (reason `feed`) or the ring dropped them because the producer outran the
    /// worker (reason `ring_overflow`). Subscribers get a gap notice, or, for books, a fresh
    /// snapshot; not for what a snapshot or replay already covered.
    fn declare_ring_loss(&mut self, ch: ChannelId, from: u64, to: u64) {
        if !self.index.has_subscribers(ch) {
            return;
        }
        let reason = if self.market.lost_upstream(ch, from, to) { "feed" } else { "ring_overflow" };
        let (wild, exact) = self.index.subscribers(ch);
        let keys: Vec<ConnKey> = wild.iter().chain(exact).copied().collect();
        for key in keys {
            let conn = &mut self.conns[key];
            if let Some((from, to)) = conn.out.lost(ch, from, to) {
                let notice = gap_notice(self.market.symbols(), ch, from, to, reason);
                if conn.out.push_control(notice) {
                    self.tally.gaps += 1;
                }
            }
            conn.mark_dirty(key, &mut self.dirty);
        }
    }

    /// Flushes every connection that queued something since the last call, then publishes
    /// the batch's counters.
    pub fn flush_dirty(&mut self) {
        self.flush_dirty_holding(false);
    }

    /// [`flush_dirty`](Self::flush_dirty), except that with `hold` nothing is written: the
    /// queued connections wait, without being visited, for the worker to flush them with their
    /// next frames after its hold (`worker::Hold`). Slow consumers under `disconnect` are
    /// closed either way. Returns whether anything is left queued.
    pub fn flush_dirty_holding(&mut self, hold: bool) -> bool {
        for key in std::mem::take(&mut self.slow) {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.out.is_closing() {
                continue;
            }
            // Its backlog is of no use to it any more: the close goes right after the frame
            // being written, and the memory is freed now.
            let reason =
                format!("slow consumer: more than {} bytes queued", conn.out.queued_bytes());
            conn.out.close_now(frame::close(CloseCode::Policy, &reason));
            conn.closed_for.get_or_insert(CloseReason::SlowConsumer);
            conn.stop(key, &mut self.woken);
            if !conn.blocked {
                self.flush(key);
            }
            Stats::add(&self.stats.slow_consumer_actions[2], 1);
        }
        if !hold {
            let mut dirty = std::mem::take(&mut self.dirty);
            for key in dirty.drain(..) {
                let Some(conn) = self.conns.get_mut(key) else { continue };
                conn.dirty = false;
                if !conn.blocked {
                    self.flush(key);
                }
            }
            // Flushing marks nothing dirty: keep the allocation.
            self.dirty = dirty;
        }
        self.publish_tally();
        !self.dirty.is_empty()
    }

    /// Publishes the counters of what was written since the last call.
    fn publish_tally(&mut self) {
        let t = std::mem::take(&mut self.tally);
        Stats::add(&self.stats.frames_out, t.frames_out);
        Stats::add(&self.stats.bytes_out, t.bytes_out);
        Stats::add(&self.stats.slow_consumer_drops, t.drops[0] + t.drops[1]);
        Stats::add(&self.stats.slow_consumer_actions[0], t.drops[0]);
        Stats::add(&self.stats.slow_consumer_actions[1], t.drops[1]);
        Stats::add(&self.stats.gaps_sent, t.gaps);
        Stats::add(&self.stats.snapshots_sent, t.snapshots);
    }

    /// Writes what the socket takes now. On `WouldBlock` the connection is marked blocked (the
    /// readiness driver flushes it once writable); on error it is marked dead and its reader
    /// told to stop.
    pub fn flush(&mut self, key: ConnKey) -> FlushState {
        let Some(conn) = self.conns.get_mut(key) else { return FlushState::Dead };
        if conn.dead {
            return FlushState::Dead;
        }
        loop {
            match conn.out.write_to(&*conn.sock) {
                Ok((n, Flushed::Drained)) => {
                    self.tally.bytes_out += n as u64;
                    conn.blocked = false;
                    // Room again: send what channels that fell behind are owed.
                    if conn.out.is_behind() {
                        let done = conn.out.catch_up(&self.market);
                        self.tally.gaps += done.notices as u64;
                        self.tally.frames_out += done.frames as u64;
                        self.tally.snapshots += done.snapshots as u64;
                        if done.any() {
                            continue;
                        }
                    }
                    return FlushState::Drained;
                }
                Ok((n, Flushed::Blocked)) => {
                    self.tally.bytes_out += n as u64;
                    conn.blocked = true;
                    return FlushState::Blocked;
                }
                Err(e) => {
                    tracing::debug!(conn = key, error = %e, "write failed; dropping connection");
                    conn.dead = true;
                    conn.stop(key, &mut self.woken);
                    return FlushState::Dead;
                }
            }
        }
    }

    /// Frees the queue memory of connections that have nothing queued (see [`Outbound::trim`]);
    /// returns about how many bytes that freed.
    pub fn trim_queues(&mut self) -> usize {
        self.conns.iter_mut().map(|(_, conn)| conn.out.trim()).sum()
    }

    /// Bytes queued over all connections, the largest queue, and how many sockets are blocked.
    pub fn queue_sample(&self) -> (u64, u64, u64) {
        self.conns.iter().fold((0, 0, 0), |(total, max, blocked), (_, c)| {
            let q = c.out.queued_bytes() as u64;
            (total + q, max.max(q), blocked + u64::from(c.blocked))
        })
    }

    /// Whether any connection of this shard subscribes to `sys.stats`.
    pub fn has_stats_subscribers(&self) -> bool {
        self.conns.iter().any(|(_, c)| c.stats_seq.is_some())
    }

    /// Sends a `sys.stats` message (`{"ch":"sys.stats","seq":N,"ts":ts,` + `body`, `ts` given
    /// in Unix nanoseconds and written in microseconds) to every subscriber whose queue has
    /// room, then flushes them.
    pub fn publish_stats(&mut self, ts_ns: u64, body: &str) {
        let ts = tickfan_proto::micros(ts_ns);
        let Shard { conns, dirty, .. } = self;
        for (key, conn) in conns.iter_mut() {
            let Some(seq) = conn.stats_seq else { continue };
            let json = format!("{{\"ch\":\"{SYS_STATS}\",\"seq\":{seq},\"ts\":{ts},{body}}}");
            if conn.out.offer_ephemeral(frame::build(Opcode::Text, json.as_bytes())) {
                conn.stats_seq = Some(seq + 1);
                conn.mark_dirty(key, dirty);
            }
        }
        self.flush_dirty();
    }

    /// Queues a reply or control frame and flushes it at once (unless the socket is blocked).
    /// A client whose unread replies exceed the queue's slack is closed with 1008.
    pub fn send_control(&mut self, key: ConnKey, bytes: Bytes) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if !conn.out.push_control(bytes) {
            return self.close_for(key, CloseReason::UnreadReplies);
        }
        if !conn.blocked {
            self.flush(key);
        }
    }

    /// Queues a JSON reply as a text frame.
    pub fn send_json(&mut self, key: ConnKey, json: &[u8]) {
        self.send_control(key, frame::build(Opcode::Text, json));
    }

    /// Closes for one of the shard's own reasons, with its code and text.
    pub fn close_for(&mut self, key: ConnKey, why: CloseReason) {
        let (code, text) = why.close_frame();
        self.close_with(key, code, text, why);
    }

    /// [`close`](Self::close), recording why for the metrics (the driver counts it).
    pub fn close_with(&mut self, key: ConnKey, code: CloseCode, reason: &str, why: CloseReason) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.closed_for.get_or_insert(why);
        }
        self.close(key, code, reason);
    }

    /// Starts a server-initiated close: what is queued is still sent, then the close frame;
    /// the connection's driver is woken to stop reading and wait for the queue to drain.
    pub fn close(&mut self, key: ConnKey, code: CloseCode, reason: &str) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.out.push_close(frame::close(code, reason));
        conn.stop(key, &mut self.woken);
        if !conn.blocked {
            self.flush(key);
        }
    }

    /// Tells every connection that the feed went stale or is live again (once per change),
    /// after what is already queued for it.
    pub fn set_feed_stale(&mut self, stale: bool) {
        if std::mem::replace(&mut self.feed_stale, stale) == stale {
            return;
        }
        let notice = status_frame(stale);
        for (key, conn) in self.conns.iter_mut() {
            if !conn.out.is_closing() && conn.out.push_control(notice.clone()) {
                conn.mark_dirty(key, &mut self.dirty);
            }
        }
        self.flush_dirty();
    }

    /// Starts the shutdown's drain (`--drain-secs`): every open connection gets
    /// `{"op":"shutdown","in_ms":…,"reason":"server_shutdown"}` now, `in_ms` being when its
    /// own close (1001) comes, the closes spread over `window` one after the other.
    pub fn start_drain(&mut self, now: Instant, window: std::time::Duration) {
        let keys: Vec<(ConnKey, u32)> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.out.is_closing() && !c.dead)
            .map(|(k, c)| (k, c.serial))
            .collect();
        for ((key, serial), delay) in
            keys.iter().zip(crate::deadlines::drain_delays(keys.len(), window))
        {
            let notice = format!(
                r#"{{"op":"shutdown","in_ms":{},"reason":"server_shutdown"}}"#,
                delay.as_millis()
            );
            self.send_json(*key, notice.as_bytes());
            self.deadlines.schedule(now + delay, *key, *serial, Due::Drained);
        }
    }

    /// Closes every connection (shutdown: 1001 going away).
    pub fn close_all(&mut self, code: CloseCode, reason: &str) {
        let keys: Vec<ConnKey> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close_with(key, code, reason, CloseReason::GoingAway);
        }
    }

    /// Liveness round over slice `part` of `slices` (the connections whose key is `part`
    /// modulo `slices`): with pings on (`ping_misses` given), closes connections that left that
    /// many pings in a row unanswered and pings the others; closes connections that held no
    /// subscription for longer than `idle` (if set). The worker goes through the slices one
    /// after the other over a ping interval, so that pinging 10,000 connections (a write each,
    /// ~100 ms of CPU here) does not stall the fan-out all at once.
    pub fn check_liveness(
        &mut self,
        ping_misses: Option<u32>,
        idle: Option<std::time::Duration>,
        now: Instant,
        (part, slices): (usize, usize),
    ) {
        let ping = ping_misses.map(|_| frame::build(Opcode::Ping, &crate::conn::ping_payload()));
        let misses = ping_misses.unwrap_or(u32::MAX);
        let slices = slices.max(1);
        let keys: Vec<ConnKey> =
            self.conns.iter().map(|(k, _)| k).filter(|k| k % slices == part).collect();
        for key in keys {
            let conn = &mut self.conns[key];
            if conn.out.is_closing() || conn.dead {
                continue;
            }
            if conn.unanswered_pings >= misses {
                self.close_for(key, CloseReason::PingTimeout);
                continue;
            }
            if let (Some(limit), Some(since)) = (idle, conn.idle_since) {
                if now.saturating_duration_since(since) >= limit {
                    self.close_for(key, CloseReason::Idle);
                    continue;
                }
            }
            if let Some(ping) = &ping {
                // An SSE client cannot answer (its ping is a comment that keeps proxies from
                // timing the stream out): a dead one shows as a failed write.
                if conn.out.form().is_websocket() {
                    conn.unanswered_pings += 1;
                }
                conn.out.push_urgent(ping.clone());
                if !conn.blocked {
                    self.flush(key);
                }
            }
        }
    }
}

/// A subscription to `spec` by a connection speaking `form` starts (`+1`) or ends (`-1`):
/// counted in the metrics, and where the producer looks to know what to make: a form of the
/// book, the SSE or the compressed form of a channel's frames.
fn counted(stats: &Stats, market: &Market, spec: ChannelSpec, delta: i64, form: Form) {
    stats.subscription(spec, delta);
    let kind = match spec {
        ChannelSpec::Exact(ch) => ch.kind(),
        ChannelSpec::Wildcard(kind) => kind,
    };
    if kind.is_book_form() {
        market.forms.add(spec, delta as i32);
    }
    match form {
        Form::WebSocket => {}
        Form::Deflate => market.deflate.add(spec, delta as i32),
        Form::Binary => market.binary.add(spec, delta as i32),
        Form::Sse => market.sse.add(spec, delta as i32),
    }
}

/// Whether a channel of `kind` is a state a new subscriber gets whole first: a book (its
/// snapshot), a ticker or a candle (its last message).
fn has_state(kind: Kind) -> bool {
    kind.is_book() || kind.is_state()
}

/// One frame on its way to this shard's subscribers of its channel.
struct Delivery<'a> {
    frame: &'a Frame,
    policy: Policy,
    market: &'a Market,
    dirty: &'a mut Vec<ConnKey>,
    tally: &'a mut Tally,
    slow: &'a mut Vec<ConnKey>,
}

impl Delivery<'_> {
    /// Offers the frame to one connection and marks it dirty if it queued.
    #[inline]
    fn offer(&mut self, conn: &mut Conn, key: ConnKey) {
        match conn.out.offer(self.frame, self.policy, self.market) {
            Offer::Queued => {
                self.tally.frames_out += 1;
                conn.mark_dirty(key, self.dirty);
            }
            Offer::QueuedAfterNotice => {
                self.tally.frames_out += 1;
                self.tally.gaps += 1;
                conn.mark_dirty(key, self.dirty);
            }
            Offer::Dropped => {
                self.tally.drops[usize::from(self.policy == Policy::Conflate)] += 1;
                // A book channel now owes a snapshot: have the flush look at it.
                conn.mark_dirty(key, self.dirty);
            }
            Offer::Disconnect => self.slow.push(key),
            Offer::Skipped | Offer::Closed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::io::{self, IoSlice};

    use feed_sim::{Feed, SimConfig};
    use tickfan_proto::Kind;

    use super::*;
    use crate::market::ResumeWindow;
    use crate::source::Encoder;

    /// A socket that takes everything and notes how many frames (iovecs) each write carried.
    #[derive(Default)]
    struct Counting {
        writes: RefCell<Vec<usize>>,
    }

    impl TryWrite for Counting {
        fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.writes.borrow_mut().push(bufs.len());
            Ok(bufs.iter().map(|b| b.len()).sum())
        }
    }

    /// A shard, the frames of a feed, a connection on `trades.*` and one on `thin_ch`, a single
    /// quotes channel.
    struct Setup {
        shard: Shard,
        frames: Vec<Frame>,
        fat: Rc<Counting>,
        thin: Rc<Counting>,
        thin_ch: ChannelId,
    }

    fn setup() -> Setup {
        let mut feed =
            Feed::new(SimConfig { symbols: 20, burst_every_s: 0.0, ..SimConfig::default() });
        let window = ResumeWindow { max_bytes: 64 * 300, max_age_ns: 10_000_000_000 };
        let market = Arc::new(Market::new(Arc::new(feed.symbols().clone()), window, None));
        let mut enc = Encoder::new(market.clone());
        let frames: Vec<Frame> = (0..4000).map(|_| enc.encode(&feed.next_tick_virtual())).collect();
        let stats = Arc::new(Stats::new(1));
        let mut shard = Shard::new(market, stats, Policies::default(), Budget::new(1 << 30));
        let thin_ch = frames.iter().find(|f| f.ch.kind() == Kind::Quotes).expect("quotes").ch;
        let conns = [(); 2].map(|_| {
            let sock = Rc::new(Counting::default());
            (shard.open(sock.clone(), 1 << 20, Form::WebSocket), sock)
        });
        let none = |_: &Subscribed| Vec::new();
        shard.subscribe(conns[0].0, &[ChannelSpec::Wildcard(Kind::Trades)], &[], None, none);
        shard.subscribe(conns[1].0, &[ChannelSpec::Exact(thin_ch)], &[], None, none);
        shard.flush_dirty();
        let [(_, fat), (_, thin)] = conns;
        fat.writes.borrow_mut().clear();
        thin.writes.borrow_mut().clear();
        Setup { shard, frames, fat, thin, thin_ch }
    }

    /// A socket whose peer reads nothing: every write would block.
    struct Stuck;

    impl TryWrite for Stuck {
        fn try_write_vectored(&self, _: &[IoSlice<'_>]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    #[test]
    fn a_connection_over_its_queue_under_disconnect_is_closed_even_while_everything_is_held() {
        let Setup { shard, frames, .. } = setup();
        let policies = crate::config::parse_policies("trades=disconnect").unwrap();
        let stats = shard.stats.clone();
        let mut shard =
            Shard::new(shard.market.clone(), stats.clone(), policies, Budget::new(1 << 30));
        let key = shard.open(Rc::new(Stuck), 4096, Form::WebSocket);
        let none = |_: &Subscribed| Vec::new();
        shard.subscribe(key, &[ChannelSpec::Wildcard(Kind::Trades)], &[], None, none);
        shard.flush_dirty();
        for f in frames.iter().filter(|f| f.ch.kind() == Kind::Trades).take(200) {
            shard.deliver(f);
        }
        // The worker is busy and holds everyone: the slow consumer is still closed now.
        assert!(shard.flush_dirty_holding(true));
        let closed = &stats.slow_consumer_actions[2];
        assert_eq!(closed.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(shard.conns[key].out.is_closing());
    }

    #[test]
    fn a_busy_worker_holds_every_connection_until_its_hold_ends() {
        let Setup { mut shard, frames, fat, thin, thin_ch } = setup();
        let mut thin_frames = frames.iter().filter(|f| f.ch == thin_ch);
        let trades: Vec<&Frame> =
            frames.iter().filter(|f| f.ch.kind() == Kind::Trades).take(12).collect();
        let writes = || (fat.writes.borrow().clone(), thin.writes.borrow().clone());
        // Not busy: everything is written at once, whatever it carries.
        for f in &trades[..3] {
            shard.deliver(f);
        }
        shard.deliver(thin_frames.next().unwrap());
        assert!(!shard.flush_dirty_holding(false));
        assert_eq!(writes(), (vec![3], vec![1]));
        // Busy: everyone waits, fat stream and lone frame alike, batch after batch.
        shard.deliver(trades[3]);
        shard.deliver(thin_frames.next().unwrap());
        assert!(shard.flush_dirty_holding(true));
        shard.deliver(trades[4]);
        shard.deliver(thin_frames.next().unwrap());
        assert!(shard.flush_dirty_holding(true));
        assert_eq!(writes(), (vec![3], vec![1]));
        // The hold ends: one write each for all they queued meanwhile.
        assert!(!shard.flush_dirty_holding(false));
        assert_eq!(writes(), (vec![3, 2], vec![1, 2]));
        assert!(shard.dirty.is_empty());
        // Nothing queued: holding holds nothing.
        assert!(!shard.flush_dirty_holding(true));
    }
}
