//! The fan-out worker's shard: the connections one worker owns, who subscribes to what, and
//! delivery of shared frames to them.
//!
//! Cost model (DESIGN §1.4): a batch of frames popped from the ring is appended to every
//! subscriber's queue (a reference-count increment and a deque push each: no lock, no
//! allocation, no task wake-up per message per subscriber); then every connection that got
//! something is flushed once, many frames per `writev`. Only a connection whose socket would
//! block has its writer task woken, to wait for writability.

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use slab::Slab;
use tickfan_proto::encode::write_gap_json;
use tickfan_proto::{ChannelId, ChannelSpec, SymbolTable};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

/// The gateway's own statistics channel (`docs/protocol.md`), sent once a second.
pub const SYS_STATS: &str = "sys.stats";

use crate::backpressure::{Flushed, Offer, Outbound};
use crate::channels::{ConnKey, ConnSubscriptions, SubscriptionIndex};
use crate::frame::{self, Frame, Opcode};
use crate::metrics::Stats;

/// Wake-ups of one connection's tasks.
#[derive(Debug, Default)]
pub struct ConnSignals {
    /// The socket would block: the writer task should wait for writability and flush.
    pub writer: Notify,
    /// The connection must end (write error, server-initiated close): the driver stops reading.
    pub driver: Notify,
    /// The queue drained while closing: the driver may shut the socket down.
    pub drained: Notify,
}

/// One connection as the shard sees it.
#[derive(Debug)]
pub struct Conn {
    /// Frames waiting for the socket.
    pub out: Outbound,
    /// What it subscribes to (mirrored in the shard's index).
    pub subs: ConnSubscriptions,
    /// The socket's write half. Written directly by the fan-out with `try_write_vectored`.
    pub sock: Rc<OwnedWriteHalf>,
    /// How to wake this connection's tasks.
    pub signals: Rc<ConnSignals>,
    /// Queued something this batch and is in the shard's dirty list.
    dirty: bool,
    /// Its socket would block: only its writer task flushes until writable again.
    blocked: bool,
    /// A write failed: the connection is finished, nothing more is queued or written.
    dead: bool,
    /// Subscribed to `sys.stats`: the seq its next stats message gets.
    pub stats_seq: Option<u64>,
}

impl Conn {
    pub fn new(sock: Rc<OwnedWriteHalf>, signals: Rc<ConnSignals>, queue_bytes: usize) -> Conn {
        Conn {
            out: Outbound::new(queue_bytes),
            subs: ConnSubscriptions::default(),
            stats_seq: None,
            sock,
            signals,
            dirty: false,
            blocked: false,
            dead: false,
        }
    }

    /// Puts the connection on the shard's dirty list (once per batch) so `flush_dirty` writes
    /// what it queued.
    fn mark_dirty(&mut self, key: ConnKey, dirty: &mut Vec<ConnKey>) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(key);
        }
    }

    pub fn is_dead(&self) -> bool {
        self.dead
    }
}

/// Outcome of a flush, for the writer task.
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
    pub conns: Slab<Conn>,
    /// Subscribers per channel.
    index: SubscriptionIndex,
    /// Next seq expected per channel from the ring (0: nothing seen yet). A jump means frames
    /// were dropped in the ring; subscribers get a gap notice for it.
    expected: Vec<u64>,
    /// Connections that queued data in the current batch.
    dirty: Vec<ConnKey>,
    /// Symbol names, for notices.
    symbols: Arc<SymbolTable>,
    /// Gateway-wide counters.
    stats: Arc<Stats>,
    /// Per-batch tallies, published to `stats` by `flush_dirty`.
    tally: Tally,
}

#[derive(Debug, Default)]
struct Tally {
    frames_out: u64,
    bytes_out: u64,
    drops: u64,
    gaps: u64,
}

impl Shard {
    pub fn new(symbols: Arc<SymbolTable>, stats: Arc<Stats>) -> Shard {
        let n = symbols.channel_count();
        Shard {
            conns: Slab::new(),
            index: SubscriptionIndex::new(n),
            expected: vec![0; n],
            dirty: Vec::new(),
            symbols,
            stats,
            tally: Tally::default(),
        }
    }

    pub fn symbols(&self) -> &Arc<SymbolTable> {
        &self.symbols
    }

    pub fn insert(&mut self, conn: Conn) -> ConnKey {
        self.conns.insert(conn)
    }

    /// Unsubscribes and forgets a connection.
    pub fn remove(&mut self, key: ConnKey) -> Option<Conn> {
        let conn = self.conns.try_remove(key)?;
        for spec in conn.subs.specs() {
            self.index.remove(spec, key);
            self.stats.subscription(spec, -1);
        }
        self.dirty.retain(|&k| k != key);
        Some(conn)
    }

    /// Adds subscriptions (already validated and within limits). Returns how many were new.
    pub fn subscribe(&mut self, key: ConnKey, specs: &[ChannelSpec]) -> usize {
        let Some(conn) = self.conns.get_mut(key) else { return 0 };
        let mut added = 0;
        for &spec in specs {
            if conn.subs.insert(spec) {
                self.index.add(spec, key);
                self.stats.subscription(spec, 1);
                added += 1;
            }
        }
        added
    }

    pub fn unsubscribe(&mut self, key: ConnKey, specs: &[ChannelSpec]) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        for &spec in specs {
            if conn.subs.remove(spec) {
                self.index.remove(spec, key);
                self.stats.subscription(spec, -1);
            }
        }
    }

    /// Routes one frame to this shard's subscribers of its channel.
    pub fn deliver(&mut self, frame: &Frame) {
        let ch = frame.ch;
        let expected = std::mem::replace(&mut self.expected[ch.index()], frame.seq + 1);
        if expected != 0 && frame.seq > expected {
            self.declare_ring_loss(ch, expected, frame.seq - 1);
        }
        let Shard { conns, index, dirty, symbols, tally, .. } = self;
        let (wild, exact) = index.subscribers(ch);
        let kind = ch.kind();
        for &key in wild {
            offer(&mut conns[key], key, frame, symbols, dirty, tally);
        }
        for &key in exact {
            let conn = &mut conns[key];
            // A connection holding `kind.*` too was served through the wildcard list.
            if !conn.subs.has_wildcard(kind) {
                offer(conn, key, frame, symbols, dirty, tally);
            }
        }
    }

    /// Frames of `ch` numbered `from..=to` were dropped in this worker's ring (the producer
    /// outran the worker): one notice, encoded once, goes to every subscriber of `ch` here.
    fn declare_ring_loss(&mut self, ch: ChannelId, from: u64, to: u64) {
        if !self.index.has_subscribers(ch) {
            return;
        }
        let mut json = Vec::with_capacity(128);
        write_gap_json(&mut json, &self.symbols.channel_name(ch), from, to, "ring_overflow");
        let notice = frame::build(Opcode::Text, &json);
        let (wild, exact) = self.index.subscribers(ch);
        let keys: Vec<ConnKey> = wild.iter().chain(exact).copied().collect();
        for key in keys {
            let conn = &mut self.conns[key];
            if conn.out.push_notice(notice.clone()) {
                self.tally.gaps += 1;
                conn.mark_dirty(key, &mut self.dirty);
            }
        }
    }

    /// Flushes every connection that queued something since the last call, then publishes
    /// the batch's counters.
    pub fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for key in dirty.drain(..) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.dirty = false;
                if !conn.blocked {
                    self.flush(key);
                }
            }
        }
        self.dirty = dirty; // keep the allocation
        let t = std::mem::take(&mut self.tally);
        Stats::add(&self.stats.frames_out, t.frames_out);
        Stats::add(&self.stats.bytes_out, t.bytes_out);
        Stats::add(&self.stats.slow_consumer_drops, t.drops);
        Stats::add(&self.stats.gaps_sent, t.gaps);
    }

    /// Writes what the socket takes now. On `WouldBlock` the connection's writer task is woken
    /// to wait for writability; on error the connection is marked dead and its driver woken.
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
                    // Room again: declare what was dropped while the client lagged.
                    let declared = conn.out.declare_gaps(&self.symbols);
                    self.tally.gaps += declared as u64;
                    if declared > 0 {
                        continue;
                    }
                    if conn.out.is_closing() {
                        conn.signals.drained.notify_one();
                    }
                    return FlushState::Drained;
                }
                Ok((n, Flushed::Blocked)) => {
                    self.tally.bytes_out += n as u64;
                    if !conn.blocked {
                        conn.blocked = true;
                        conn.signals.writer.notify_one();
                    }
                    return FlushState::Blocked;
                }
                Err(e) => {
                    tracing::debug!(conn = key, error = %e, "write failed; dropping connection");
                    conn.dead = true;
                    conn.signals.driver.notify_one();
                    conn.signals.drained.notify_one();
                    return FlushState::Dead;
                }
            }
        }
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

    /// Sends a `sys.stats` message (`{"ch":"sys.stats","seq":N,"ts":ts,` + `body`) to every
    /// subscriber whose queue has room, then flushes them.
    pub fn publish_stats(&mut self, ts: u64, body: &str) {
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
            self.close(key, 1008, "too many unread replies: read your socket");
            return;
        }
        if !conn.blocked {
            self.flush(key);
        }
    }

    /// Queues a JSON reply as a text frame.
    pub fn send_json(&mut self, key: ConnKey, json: &[u8]) {
        self.send_control(key, frame::build(Opcode::Text, json));
    }

    /// Starts a server-initiated close: what is queued is still sent, then the close frame;
    /// the connection's driver is woken to stop reading and wait for the queue to drain.
    pub fn close(&mut self, key: ConnKey, code: u16, reason: &str) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.out.push_close(frame::close(code, reason));
        conn.signals.driver.notify_one();
        if !conn.blocked {
            self.flush(key);
        }
    }

    /// Closes every connection (shutdown: 1001 going away).
    pub fn close_all(&mut self, code: u16, reason: &str) {
        let keys: Vec<ConnKey> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key, code, reason);
        }
    }

    /// Whether the connection's queue is empty (or the connection is gone or dead).
    pub fn is_drained(&self, key: ConnKey) -> bool {
        self.conns.get(key).is_none_or(|c| c.dead || c.out.is_empty())
    }
}

/// Offers `frame` to one connection and marks it dirty if it queued.
#[inline]
fn offer(
    conn: &mut Conn,
    key: ConnKey,
    frame: &Frame,
    symbols: &SymbolTable,
    dirty: &mut Vec<ConnKey>,
    tally: &mut Tally,
) {
    match conn.out.offer(frame, symbols) {
        Offer::Queued => {
            tally.frames_out += 1;
            conn.mark_dirty(key, dirty);
        }
        Offer::Dropped => tally.drops += 1,
        Offer::Closed => {}
    }
}
