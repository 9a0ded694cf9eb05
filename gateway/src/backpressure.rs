//! A connection's outbound queue: shared frames waiting for the socket, bounded in bytes.
//!
//! When a client reads too slowly and its queue is full, data frames are dropped and the
//! dropped range is remembered per channel; the client then gets an explicit
//! `{"op":"gap","ch":…,"from":…,"to":…,"reason":"slow_consumer"}` before the next frame of that
//! channel (or as soon as the queue drains), so loss is always declared. The fuller policies
//! (`conflate`, `disconnect`) are issue #4.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, Bytes};
use tickfan_proto::encode::write_gap_json;
use tickfan_proto::{ChannelId, SymbolTable};

use crate::frame::{self, Frame, Opcode};

/// Frames gathered into one `writev` at most (Linux's IOV_MAX is 1024; 64 already amortises
/// the syscall over many messages).
const MAX_IOV: usize = 64;

/// Extra room beyond the data bound for replies and control frames, so a client that floods
/// requests without reading is detected instead of growing memory.
pub const CONTROL_SLACK: usize = 256 << 10;

/// Anything frames can be written to without blocking (a TCP write half, or a test sink).
pub trait TryWrite {
    /// Like `TcpStream::try_write_vectored`: `WouldBlock` when the socket buffer is full.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

impl TryWrite for tokio::net::tcp::OwnedWriteHalf {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        tokio::net::tcp::OwnedWriteHalf::try_write_vectored(self, bufs)
    }
}

/// Result of offering a data frame to a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Queued (possibly after a pending gap notice for its channel).
    Queued,
    /// Dropped: the queue is full; the range will be declared by a gap notice.
    Dropped,
    /// Ignored: the connection is closing.
    Closed,
}

/// State of a queue after a write attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    Drained,
    /// The socket would block; wait for writability and try again.
    Blocked,
}

/// A range of seqs dropped on one channel, not yet declared to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingGap {
    ch: ChannelId,
    from: u64,
    to: u64,
}

/// Bounded queue of frames for one connection.
#[derive(Debug)]
pub struct Outbound {
    /// Frames in send order; the front one may be partly written already.
    queue: VecDeque<Bytes>,
    /// Sum of the lengths of `queue`.
    queued_bytes: usize,
    /// Bound on `queued_bytes` for data frames.
    limit: usize,
    /// Dropped ranges still to be declared, at most one per channel.
    gaps: Vec<PendingGap>,
    /// A close frame is queued: nothing may follow it.
    closing: bool,
}

impl Outbound {
    pub fn new(limit: usize) -> Outbound {
        Outbound {
            queue: VecDeque::new(),
            queued_bytes: 0,
            limit,
            gaps: Vec::new(),
            closing: false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    fn push(&mut self, bytes: Bytes) {
        self.queued_bytes += bytes.len();
        self.queue.push_back(bytes);
    }

    /// Offers a shared data frame. Hot path: a reference-count increment and a deque push;
    /// the gap bookkeeping is only looked at when some gap is pending.
    pub fn offer(&mut self, frame: &Frame, symbols: &SymbolTable) -> Offer {
        if self.closing {
            return Offer::Closed;
        }
        if !self.gaps.is_empty() {
            if let Some(i) = self.gaps.iter().position(|g| g.ch == frame.ch) {
                let notice = gap_notice(&self.gaps[i], symbols);
                if self.queued_bytes + notice.len() + frame.bytes.len() <= self.limit {
                    self.gaps.swap_remove(i);
                    self.push(notice);
                    self.push(frame.bytes.clone());
                    return Offer::Queued;
                }
                self.gaps[i].to = frame.seq;
                return Offer::Dropped;
            }
        }
        if self.queued_bytes + frame.bytes.len() <= self.limit {
            self.push(frame.bytes.clone());
            Offer::Queued
        } else {
            self.gaps.push(PendingGap { ch: frame.ch, from: frame.seq, to: frame.seq });
            Offer::Dropped
        }
    }

    /// Queues a frame of an ephemeral channel (`sys.stats`) if it fits under the limit:
    /// `false` means it was not queued, and the caller does not advance that channel's seq,
    /// so nothing is lost from the client's point of view (the next message supersedes it).
    pub fn offer_ephemeral(&mut self, bytes: Bytes) -> bool {
        if self.closing || self.queued_bytes + bytes.len() > self.limit {
            return false;
        }
        self.push(bytes);
        true
    }

    /// Queues a gap notice that applies to everything already queued (e.g. frames lost in the
    /// ring before reaching this connection). Counts against the control slack.
    pub fn push_notice(&mut self, notice: Bytes) -> bool {
        self.push_control(notice)
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
        self.push(bytes);
        true
    }

    /// Queues a close frame; nothing is queued after it. Pending gaps are dropped with it.
    pub fn push_close(&mut self, close: Bytes) {
        if !self.closing {
            self.closing = true;
            self.gaps.clear();
            self.push(close);
        }
    }

    /// Declares pending gaps once the queue has room again. Returns how many were declared.
    pub fn declare_gaps(&mut self, symbols: &SymbolTable) -> usize {
        let mut n = 0;
        while let Some(g) = self.gaps.last().copied() {
            let notice = gap_notice(&g, symbols);
            if self.queued_bytes + notice.len() > self.limit / 2 {
                break;
            }
            self.gaps.pop();
            self.push(notice);
            n += 1;
        }
        n
    }

    /// Writes as much as the socket takes, many frames per syscall. Returns the bytes written
    /// and whether the queue drained or the socket would block.
    pub fn write_to(&mut self, sock: &impl TryWrite) -> io::Result<(usize, Flushed)> {
        let mut total = 0;
        loop {
            if self.queue.is_empty() {
                return Ok((total, Flushed::Drained));
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
        while written > 0 {
            let front = self.queue.front_mut().expect("wrote more than was queued");
            if written >= front.len() {
                written -= front.len();
                self.queue.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
}

fn gap_notice(g: &PendingGap, symbols: &SymbolTable) -> Bytes {
    let mut json = Vec::with_capacity(128);
    write_gap_json(&mut json, &symbols.channel_name(g.ch), g.from, g.to, "slow_consumer");
    frame::build(Opcode::Text, &json)
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;
    use tickfan_proto::{Kind, Symbol};

    /// A socket that accepts at most `room` bytes, then would block.
    struct Sink {
        room: Cell<usize>,
        got: RefCell<Vec<u8>>,
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

    fn symbols() -> SymbolTable {
        SymbolTable::new(vec![Symbol { name: "BTC-USD".into(), px_scale: 2, qty_scale: 4 }])
    }

    fn data(seq: u64, len: usize) -> Frame {
        Frame {
            ch: ChannelId::new(Kind::Trades, 0),
            seq,
            ts: 0,
            bytes: frame::build(Opcode::Text, &vec![b'x'; len]),
        }
    }

    /// Splits what a sink received into text payloads.
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

    #[test]
    fn full_queue_drops_then_declares_the_exact_gap() {
        let syms = symbols();
        let mut q = Outbound::new(1000);
        let mut offers = Vec::new();
        for seq in 1..=20 {
            offers.push(q.offer(&data(seq, 98), &syms)); // 100 bytes each
        }
        assert_eq!(offers.iter().filter(|o| **o == Offer::Queued).count(), 10);
        assert_eq!(q.queued_bytes(), 1000);
        let sink = Sink { room: Cell::new(usize::MAX), got: RefCell::new(Vec::new()) };
        assert_eq!(q.write_to(&sink).unwrap(), (1000, Flushed::Drained));
        assert_eq!(q.offer(&data(21, 98), &syms), Offer::Queued);
        q.write_to(&sink).unwrap();
        let got = payloads(&sink.got.borrow());
        assert_eq!(got.len(), 12, "10 frames, one gap notice, frame 21");
        let gap: serde_json::Value = serde_json::from_slice(&got[10]).unwrap();
        assert_eq!(
            gap,
            serde_json::json!({"op":"gap","ch":"trades.BTC-USD","from":11,"to":20,"reason":"slow_consumer"})
        );
    }

    #[test]
    fn partial_writes_resume_mid_frame_and_keep_order() {
        let syms = symbols();
        let mut q = Outbound::new(10_000);
        for seq in 0..10u8 {
            let mut f = data(u64::from(seq), 0);
            f.bytes = frame::build(Opcode::Text, &[seq; 50]);
            q.offer(&f, &syms);
        }
        let sink = Sink { room: Cell::new(130), got: RefCell::new(Vec::new()) };
        assert_eq!(q.write_to(&sink).unwrap(), (130, Flushed::Blocked));
        sink.room.set(usize::MAX);
        assert_eq!(q.write_to(&sink).unwrap(), (390, Flushed::Drained));
        let got = payloads(&sink.got.borrow());
        assert_eq!(got, (0..10u8).map(|s| vec![s; 50]).collect::<Vec<_>>());
    }

    #[test]
    fn control_frames_have_bounded_slack_and_close_is_last() {
        let mut q = Outbound::new(1000);
        let reply = frame::build(Opcode::Text, &[b'r'; 1000]);
        let mut accepted = 0;
        while q.push_control(reply.clone()) {
            accepted += 1;
        }
        assert_eq!(accepted, (1000 + CONTROL_SLACK) / 1002);
        q.push_close(frame::close(1001, "bye"));
        assert!(q.is_closing());
        assert_eq!(q.offer(&data(1, 10), &symbols()), Offer::Closed);
    }
}
