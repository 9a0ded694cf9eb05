//! Allocations on the fan-out hot path, counted (issue #10): a counting global allocator, and
//! the steady states whose allocations are counted. Shared by `tests/alloc.rs`, which asserts
//! there are none, and `benches/alloc.rs`, which reports them next to timings.
//!
//! The path exercised is the one `fanout::Shard` drives (`deliver` offers each frame of a batch
//! to every subscriber's [`Outbound`], `flush_dirty` then writes each queue once and, when a
//! queue drained while a channel owed something, catches it up), at the level of its public
//! parts: the `Shard` itself needs real sockets.
#![allow(unsafe_code)] // a global allocator is an `unsafe impl`
#![allow(dead_code)] // the test and the bench use different parts

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, IoSlice};
use std::sync::Arc;

use feed_sim::{Feed, SimConfig};
use gateway::backpressure::{Budget, Flushed, Offer, Outbound, TryWrite};
use gateway::config::Policies;
use gateway::frame::Frame;
use gateway::market::{Market, ResumeWindow};
use gateway::source::Encoder;
use tickfan_proto::Kind;

/// The system allocator, counting the allocations (`alloc`, `alloc_zeroed`, `realloc`) each
/// thread makes: a count taken on one thread is not disturbed by the test harness's others.
pub struct Counting;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    // A const-initialised `Cell` has no destructor: reading it never allocates, and
    // `try_with` only fails while the thread is being torn down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

/// Allocations this thread has made so far.
pub fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; counting only touches a thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller upholds `alloc`'s contract, which is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// A client socket that takes at most `room` bytes until given more, copying nothing: how fast
/// `room` is refilled is how fast the client reads.
pub struct Reader {
    room: Cell<usize>,
}

impl TryWrite for Reader {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = bufs.iter().map(|b| b.len()).sum::<usize>().min(self.room.get());
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.room.set(self.room.get() - n);
        Ok(n)
    }
}

/// What a run delivered, and the allocations it made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Frames offered, summed over subscribers.
    pub offered: u64,
    /// Messages queued for the socket: data frames and gap notices.
    pub delivered: u64,
    /// Of which gap notices.
    pub notices: u64,
    /// Frames dropped (a slow consumer's queue was full), to be declared by a notice.
    pub dropped: u64,
    /// Heap allocations made by this thread during the run.
    pub allocations: u64,
}

impl Tally {
    pub fn allocations_per_delivered(&self) -> f64 {
        self.allocations as f64 / self.delivered.max(1) as f64
    }
}

/// How the subscribers read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readers {
    /// Every flush writes everything queued.
    Fast,
    /// Cycles of `slow` batches during which each flush writes half what a batch brings, so
    /// queues fill up and frames are dropped, then `fast` batches during which queues drain and
    /// the channels that fell behind are caught up (gap notices, newest conflated quote).
    Lagging { slow: usize, fast: usize },
}

/// Frames per batch popped from a worker's ring.
pub const BATCH: usize = 64;

/// `subscribers` connections subscribed to every channel of a simulated feed, each with an
/// [`Outbound`] bounded by `queue_bytes`, and the market state the queues read.
pub struct Fanout {
    market: Arc<Market>,
    policies: Policies,
    /// Frames encoded once; replayed in laps with seqs moved up, so seqs keep increasing.
    frames: Vec<Frame>,
    lap_seq: u64,
    next: usize,
    batch: Vec<Frame>,
    queues: Vec<Outbound>,
    readers: Vec<Reader>,
    mode: Readers,
    batches: usize,
}

impl Fanout {
    /// `kinds`: the channel kinds of the feed that are delivered (the others are left out).
    pub fn new(subscribers: usize, queue_bytes: usize, mode: Readers, kinds: &[Kind]) -> Fanout {
        let mut feed =
            Feed::new(SimConfig { symbols: 20, burst_every_s: 0.0, ..SimConfig::default() });
        let window = ResumeWindow { max_bytes: 64 << 20, max_age_ns: 10_000_000_000 };
        let market = Arc::new(Market::new(Arc::new(feed.symbols().clone()), window, None));
        let mut enc = Encoder::new(market.clone());
        let mut frames = Vec::new();
        while frames.len() < 16_384 {
            let f = enc.encode(&feed.next_tick_virtual());
            if kinds.contains(&f.ch.kind()) {
                frames.push(f);
            }
        }
        let lap_seq = frames.iter().map(|f| f.seq).max().unwrap_or(0);
        let budget = Budget::new(usize::MAX);
        Fanout {
            market,
            policies: Policies::default(),
            frames,
            lap_seq,
            next: 0,
            batch: Vec::with_capacity(BATCH),
            queues: (0..subscribers).map(|_| Outbound::new(queue_bytes, budget.clone())).collect(),
            readers: (0..subscribers).map(|_| Reader { room: Cell::new(0) }).collect(),
            mode,
            batches: 0,
        }
    }

    /// Bytes the feed brings per batch, on average.
    fn batch_bytes(&self) -> usize {
        self.frames.iter().map(|f| f.bytes.len()).sum::<usize>() * BATCH / self.frames.len()
    }

    /// Runs `batches` batches (offer the batch to every queue, then flush every queue) and
    /// returns what they delivered and the allocations they made.
    pub fn run(&mut self, batches: usize) -> Tally {
        let mut t = Tally::default();
        let start = allocations();
        for _ in 0..batches {
            self.one_batch(&mut t);
        }
        t.allocations = allocations() - start;
        t
    }

    fn one_batch(&mut self, t: &mut Tally) {
        // The next frames of the feed, as the ring hands them out (a clone of a frame is a
        // reference-count increment, not an allocation).
        self.batch.clear();
        for _ in 0..BATCH {
            let lap = (self.next / self.frames.len()) as u64;
            let f = &self.frames[self.next % self.frames.len()];
            self.batch.push(Frame { seq: f.seq + lap * self.lap_seq, ..f.clone() });
            self.next += 1;
        }
        // `Shard::deliver`, frame by frame.
        for f in &self.batch {
            let policy = self.policies.get(f.ch.kind());
            for q in &mut self.queues {
                t.offered += 1;
                match q.offer(f, policy, &self.market) {
                    Offer::Queued => t.delivered += 1,
                    Offer::QueuedAfterNotice => {
                        t.delivered += 2;
                        t.notices += 1;
                    }
                    Offer::Dropped => t.dropped += 1,
                    Offer::Skipped | Offer::Closed | Offer::Disconnect => {}
                }
            }
        }
        // `Shard::flush_dirty`: each queue written once, caught up when it drained.
        let room = match self.mode {
            Readers::Fast => usize::MAX,
            Readers::Lagging { slow, fast } if self.batches % (slow + fast) < slow => {
                self.batch_bytes() / 2
            }
            Readers::Lagging { .. } => usize::MAX,
        };
        self.batches += 1;
        for (q, reader) in self.queues.iter_mut().zip(&self.readers) {
            reader.room.set(room);
            loop {
                match q.write_to(reader).expect("the reader never fails") {
                    (_, Flushed::Drained) if q.is_behind() => {
                        let done = q.catch_up(&self.market);
                        t.delivered += (done.notices + done.frames + done.snapshots) as u64;
                        t.notices += done.notices as u64;
                        if !done.any() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        }
    }
}
