//! What every external source does with a feed line (`docs/feed-format.md`): parse it against
//! the announced universe, check its seq against the channel's last, keep books in sync with
//! the upstream, batch what passes for the [`Publisher`], and count (and log once per reason)
//! what does not.
//!
//! Books: an update applies only to the book it follows. A book channel is in sync from its
//! seq 1 (the upstream's first update carries the whole book), or from an upstream snapshot
//! (`"type":"snapshot"`, as of the seq of its last update). Until then, and again after the
//! upstream skipped updates, its updates are dropped; the next snapshot brings it back, and
//! subscribers get that snapshot.

use tickfan_proto::feed::{parse_line, Announcement, FeedLine, LineError};
use tickfan_proto::{Kind, SymbolTable, Tick};

use super::Publisher;
use crate::metrics::Stats;

/// Most ticks in one batch.
pub const MAX_BATCH: usize = 1024;

/// Lines in, batches of ticks out.
#[derive(Debug)]
pub struct Intake {
    symbols: SymbolTable,
    announced: Announcement,
    publisher: Publisher,
    /// Last seq taken per channel (0: none yet).
    last_seq: Vec<u64>,
    /// Book channels whose book follows the upstream's.
    in_sync: Vec<bool>,
    /// Reasons already logged once.
    logged: [bool; LineError::ALL.len()],
    /// Whether "waiting for a snapshot" was logged.
    logged_waiting: bool,
    batch: Vec<Tick>,
}

impl Intake {
    pub fn new(symbols: SymbolTable, announced: Announcement, publisher: Publisher) -> Intake {
        let n = symbols.channel_count();
        Intake {
            symbols,
            announced,
            publisher,
            last_seq: vec![0; n],
            in_sync: vec![false; n],
            logged: [false; LineError::ALL.len()],
            logged_waiting: false,
            batch: Vec::with_capacity(MAX_BATCH),
        }
    }

    /// Takes one line (or a line the reader already refused): a tick to publish, or `None`
    /// when it was rejected (counted), an announcement repeated, or a book snapshot (applied).
    pub fn parse(&mut self, line: Result<&[u8], LineError>) -> Option<Tick> {
        let (taken, text) = match line {
            Ok(l) => (self.take(l), l),
            Err(e) => (Err(e), &[][..]),
        };
        match taken {
            Ok(tick) => tick,
            Err(e) => {
                self.publisher.health().reject(e);
                self.log(e, text);
                None
            }
        }
    }

    /// Queues a parsed tick; publishes the batch when full.
    pub fn push(&mut self, tick: Tick) {
        self.batch.push(tick);
        if self.batch.len() >= MAX_BATCH {
            self.flush();
        }
    }

    /// Publishes what is queued.
    pub fn flush(&mut self) {
        self.publisher.publish(&self.batch);
        self.batch.clear();
    }

    fn take(&mut self, line: &[u8]) -> Result<Option<Tick>, LineError> {
        let parsed = match parse_line(line, &self.symbols) {
            Ok(parsed) => parsed,
            // Not a tick: is it the announcement, repeated (fine) or changed (refused)?
            Err(LineError::BadJson) => {
                return match Announcement::parse(line) {
                    Ok(a) if a == self.announced => Ok(None),
                    Ok(_) => Err(LineError::SymbolsChanged),
                    Err(_) => Err(LineError::BadJson),
                }
            }
            Err(e) => return Err(e),
        };
        let tick = match parsed {
            FeedLine::Tick(tick) => tick,
            FeedLine::BookSnapshot(snapshot) => {
                self.snapshot(snapshot);
                return Ok(None);
            }
        };
        let i = tick.channel().index();
        let last = self.last_seq[i];
        if tick.seq <= last {
            return Err(LineError::SeqNotIncreasing);
        }
        self.count_skipped(last, tick.seq);
        self.last_seq[i] = tick.seq;
        if tick.body.kind() == Kind::Book {
            // In sync from the upstream's first update, or while updates follow each other.
            let in_sync = tick.seq == 1 || self.in_sync[i] && tick.seq == last + 1;
            self.in_sync[i] = in_sync;
            if !in_sync {
                // Applied to the wrong book it would be wrong: wait for a snapshot.
                self.waiting(&tick);
                return Ok(None);
            }
        }
        Ok(Some(tick))
    }

    /// A whole book from the upstream: taken if this gateway's book is not in sync, or is
    /// behind it; otherwise (same seq or older) it says nothing new.
    fn snapshot(&mut self, snapshot: Tick) {
        let i = snapshot.channel().index();
        let last = self.last_seq[i];
        // In sync and not behind it: nothing new. Older than updates already seen (and
        // dropped): of no use, as seqs never go back.
        if self.in_sync[i] && snapshot.seq <= last || snapshot.seq < last {
            return;
        }
        self.count_skipped(last, snapshot.seq);
        self.flush(); // what came before it goes first
        self.publisher.resync_book(&snapshot);
        self.last_seq[i] = snapshot.seq;
        self.in_sync[i] = true;
    }

    /// Counts the seqs between a channel's `last` and `seq` as lost upstream.
    fn count_skipped(&self, last: u64, seq: u64) {
        if last != 0 && seq > last + 1 {
            Stats::add(&self.publisher.health().upstream_lost, seq - last - 1);
        }
    }

    fn waiting(&mut self, tick: &Tick) {
        if !std::mem::replace(&mut self.logged_waiting, true) {
            tracing::info!(
                channel = self.symbols.channel_name_str(tick.channel()),
                seq = tick.seq,
                "book updates wait for the upstream's next snapshot (this gateway joined \
                 mid-stream or the upstream skipped updates); logged once"
            );
        }
    }

    fn log(&mut self, e: LineError, line: &[u8]) {
        if !std::mem::replace(&mut self.logged[e.index()], true) {
            let shown = String::from_utf8_lossy(&line[..line.len().min(120)]);
            tracing::warn!(
                reason = e.reason(),
                line = %shown,
                "skipping a feed line; further lines rejected for this reason are only counted \
                 (tickfan_feed_rejected_total)"
            );
        }
    }
}
