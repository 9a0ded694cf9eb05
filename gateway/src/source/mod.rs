//! Tick sources: where ticks come from, and the one path they all take into the gateway.
//!
//! A source (the embedded simulator, an NDJSON stream on stdin or in a file, NATS) runs on a
//! thread of its own. It first tells the gateway its universe (symbols and their decimals) and
//! its epoch ([`Opened`]), then hands batches of ticks to a [`Publisher`], which encodes every
//! tick **once** into a complete WebSocket frame and pushes it into every worker's ring. How
//! healthy the source is (last tick, connected, lines rejected) is kept in [`FeedHealth`],
//! which `/readyz`, `/metrics` and the workers' `status` messages read.

pub mod embedded;
pub mod intake;
pub mod nats;
pub mod ndjson;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tickfan_proto::feed::LineError;
use tickfan_proto::{unix_now_ns, SymbolTable, Tick};

use crate::config::Config;
use crate::frame::Frame;
use crate::market::Market;
use crate::metrics::Stats;
use crate::ring::Ring;

/// Where ticks come from: `--source`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    /// The built-in simulator (`--symbols`, `--rate`, …): nothing else to run.
    Embedded,
    /// NDJSON on standard input (`feed-sim | tickfan --source stdin`).
    Stdin,
    /// NDJSON from a file, paced by its timestamps (`--replay-speed`).
    File(PathBuf),
    /// A NATS server the publisher (`feed-sim --sink nats://…`) sends to: many gateways,
    /// one feed, the same seqs and epoch on all.
    Nats(String),
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::Embedded => f.write_str("embedded"),
            SourceSpec::Stdin => f.write_str("stdin"),
            SourceSpec::File(p) => write!(f, "file:{}", p.display()),
            SourceSpec::Nats(url) => f.write_str(url),
        }
    }
}

/// Parses `embedded`, `stdin`, `file:PATH` or `nats://HOST:PORT` (several servers separated by
/// commas; `tls://` for TLS).
pub fn parse_source(s: &str) -> Result<SourceSpec, String> {
    match s {
        "embedded" => Ok(SourceSpec::Embedded),
        "stdin" | "-" => Ok(SourceSpec::Stdin),
        _ if s.starts_with("nats://") || s.starts_with("tls://") => {
            Ok(SourceSpec::Nats(s.to_owned()))
        }
        _ => match s.strip_prefix("file:") {
            Some("") => Err("file: needs a path, e.g. file:ticks.ndjson".into()),
            Some(path) => Ok(SourceSpec::File(PathBuf::from(path))),
            None => {
                Err(format!("unknown source {s:?}: embedded, stdin, file:PATH or nats://HOST:PORT"))
            }
        },
    }
}

/// A source's loop: publishes until the flag is set or the source ends.
pub type RunSource = Box<dyn FnOnce(Publisher, &AtomicBool) + Send>;

/// A source ready to run: its universe, its epoch, and the loop that feeds the publisher.
pub struct Opened {
    pub symbols: SymbolTable,
    /// The publisher's epoch, when the source has one (every gateway fed by it then numbers
    /// alike); otherwise the gateway makes up its own.
    pub epoch: Option<String>,
    /// Runs until `stop` is set or the source ends. Blocking: called on the source's thread.
    pub run: RunSource,
    /// Whether [`run`](Self::run) may block in a read that `stop` cannot interrupt (stdin):
    /// the gateway then does not wait for the thread when it stops.
    pub may_block: bool,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("symbols", &self.symbols.len())
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// Opens the configured source: for NDJSON, reads its announcement (which may wait for the
/// upstream to write it).
pub fn open(cfg: &Config, stats: &Arc<Stats>) -> anyhow::Result<Opened> {
    match &cfg.source {
        SourceSpec::Embedded => embedded::open(cfg),
        SourceSpec::Stdin => ndjson::open_stdin(),
        SourceSpec::File(path) => ndjson::open_file(path, cfg.replay_speed),
        SourceSpec::Nats(url) => {
            let replay = cfg.jetstream.then(|| std::time::Duration::from_secs_f64(cfg.resume_secs));
            nats::open(url, stats.clone(), replay, &cfg.source_symbols)
        }
    }
}

/// Hands ticks to the workers: encodes each once (through the [`Market`], which keeps books
/// and the resume history), pushes the frame into every ring, wakes each worker once per
/// batch, and keeps the feed's health up to date.
#[derive(Debug)]
pub struct Publisher {
    encoder: Encoder,
    rings: Vec<Arc<Ring>>,
    stats: Arc<Stats>,
    /// Ticker and candles, derived from the ticks published.
    derived: crate::derived::Derived,
    /// The forms of the book clients subscribe to (`book.<SYM>@10`…).
    forms: crate::forms::Forms,
    /// Scratch: the frames of the forms one tick made.
    form_frames: Vec<Frame>,
}

impl Publisher {
    pub fn new(market: Arc<Market>, rings: Vec<Arc<Ring>>, stats: Arc<Stats>) -> Publisher {
        let derived = crate::derived::Derived::new(market.symbols().clone());
        let forms = crate::forms::Forms::new(market.clone());
        let encoder = Encoder::new(market);
        Publisher { encoder, rings, stats, derived, forms, form_frames: Vec::new() }
    }

    /// Pushes `frame` into every ring.
    fn push(&self, frame: &Frame) {
        push_all(&self.rings, frame);
    }

    /// Pushes the frames the forms made (see [`Forms`](crate::forms::Forms)).
    fn push_forms(&mut self) {
        let mut frames = std::mem::take(&mut self.form_frames);
        for frame in frames.drain(..) {
            self.push(&frame);
        }
        self.form_frames = frames; // keeps the allocation
    }

    /// Publishes one batch (no-op when empty), then the derived messages it made due.
    pub fn publish(&mut self, batch: &[Tick]) {
        if batch.is_empty() {
            return;
        }
        for tick in batch {
            let frame = self.encoder.encode(tick);
            self.derived.observe(tick);
            self.push(&frame);
            if let tickfan_proto::TickBody::Book(_) = tick.body {
                // Right behind the update they follow.
                let json = &mut self.encoder.json;
                self.forms.book_changed(tick.sym, tick.ts, json, &mut self.form_frames);
                self.push_forms();
            }
        }
        let now = self.derived.now();
        let Encoder { market, json } = &mut self.encoder;
        for due in self.derived.due() {
            push_all(&self.rings, &market.publish_derived(due.ch, due.ts, &due.body, json));
        }
        self.forms.due(now, &mut self.encoder.json, &mut self.form_frames);
        self.push_forms();
        // One wake-up per worker per batch, not per frame.
        for ring in &self.rings {
            ring.wake();
        }
        Stats::add(&self.stats.ticks_in, batch.len() as u64);
        self.stats.feed.last_tick_ns.store(unix_now_ns(), Ordering::Relaxed);
    }

    /// Replaces a book by the upstream's snapshot and sends subscribers that snapshot.
    pub fn resync_book(&mut self, snapshot: &Tick) {
        let frame = self.encoder.market.resync_book(snapshot, &mut self.encoder.json);
        self.push(&frame);
        let json = &mut self.encoder.json;
        self.forms.book_changed(snapshot.sym, snapshot.ts, json, &mut self.form_frames);
        self.push_forms();
        for ring in &self.rings {
            ring.wake();
        }
    }

    /// The feed's health, for sources to report rejections and their connection state.
    pub fn health(&self) -> &FeedHealth {
        &self.stats.feed
    }
}

/// Pushes `frame` into every ring: one Bytes, N ring slots, each push a reference-count
/// increment.
fn push_all(rings: &[Arc<Ring>], frame: &Frame) {
    for ring in rings {
        ring.push(frame.clone());
    }
}

/// Turns ticks into shared frames through the [`Market`] (which keeps books and resume
/// history): JSON into a reused scratch buffer, then header + payload into one allocation per
/// frame. Frames are allocated one by one rather than cut from a shared arena so that a frame
/// held by a slow client or the resume window keeps only its own bytes alive.
#[derive(Debug)]
pub struct Encoder {
    market: Arc<Market>,
    json: Vec<u8>,
}

impl Encoder {
    pub fn new(market: Arc<Market>) -> Encoder {
        Encoder { market, json: Vec::with_capacity(4096) }
    }

    pub fn encode(&mut self, tick: &Tick) -> Frame {
        self.market.publish(tick, &mut self.json)
    }
}

/// The source's health as the rest of the gateway sees it.
#[derive(Debug)]
pub struct FeedHealth {
    /// Unix ns of the last batch published (0 before the first).
    pub last_tick_ns: AtomicU64,
    /// Unix ns the source started: before the first tick, staleness counts from here.
    pub started_ns: AtomicU64,
    /// False while the source has lost its upstream (NATS disconnected).
    pub connected: AtomicBool,
    /// Lines rejected, by [`LineError::index`].
    pub rejected: [AtomicU64; LineError::ALL.len()],
    /// Set when the source cannot go on (its publisher restarted under a new epoch): the
    /// gateway shuts down gracefully, and the binary exits with status 3, for its supervisor to
    /// start it again on the new epoch.
    pub fatal: std::sync::OnceLock<String>,
    /// Messages the JetStream consumer still had to deliver at start, until it first came
    /// within [`CATCH_UP_SLACK`] (then and without JetStream 0): the gateway is catching up,
    /// not ready, while this is above the slack.
    pub backlog: AtomicU64,
    /// Seqs the upstream skipped: lost before they reached this gateway, and declared to
    /// subscribers by `gap` notices (reason `feed`).
    pub upstream_lost: AtomicU64,
    /// `--stale-after` in nanoseconds (0: never stale); set at start.
    pub stale_after_ns: AtomicU64,
}

impl Default for FeedHealth {
    fn default() -> FeedHealth {
        FeedHealth {
            last_tick_ns: AtomicU64::new(0),
            started_ns: AtomicU64::new(unix_now_ns()),
            connected: AtomicBool::new(true),
            fatal: std::sync::OnceLock::new(),
            backlog: AtomicU64::new(0),
            rejected: Default::default(),
            upstream_lost: AtomicU64::new(0),
            stale_after_ns: AtomicU64::new(0),
        }
    }
}

/// A JetStream consumer counts as caught up at start when it has nothing left to deliver, or
/// when it is at most this many messages behind and the message it reads was published at
/// most [`CATCH_UP_AGE_NS`] ago: within a tenth of a second of the live edge, whatever the
/// feed's rate, so that a client resuming from another gateway finds its seqs here. After
/// that, lag in a burst does not make it catching up again.
pub const CATCH_UP_SLACK: u64 = 2_000;
/// See [`CATCH_UP_SLACK`].
pub const CATCH_UP_AGE_NS: u64 = 100_000_000;

/// What a client or a load balancer is told of the feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedState {
    /// No tick yet, and not for long.
    Starting,
    /// Reading a backlog (JetStream) faster than real time: not ready yet.
    CatchingUp,
    /// Ticks arrive.
    Live,
    /// No tick for longer than `--stale-after`.
    Stale,
    /// The source lost its upstream.
    Down,
}

impl FeedState {
    pub const ALL: [FeedState; 5] = [
        FeedState::Starting,
        FeedState::CatchingUp,
        FeedState::Live,
        FeedState::Stale,
        FeedState::Down,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FeedState::Starting => "starting",
            FeedState::CatchingUp => "catching_up",
            FeedState::Live => "live",
            FeedState::Stale => "stale",
            FeedState::Down => "down",
        }
    }

    /// What clients are told (`status` messages): only whether data flows.
    pub fn is_stale(self) -> bool {
        matches!(self, FeedState::Stale | FeedState::Down)
    }
}

impl FeedHealth {
    /// The state at `now_ns`.
    pub fn state(&self, now_ns: u64) -> FeedState {
        if !self.connected.load(Ordering::Relaxed) {
            return FeedState::Down;
        }
        let stale_after = self.stale_after_ns.load(Ordering::Relaxed);
        if stale_after > 0 && self.quiet_ns(now_ns) > stale_after {
            FeedState::Stale
        } else if self.last_tick_ns.load(Ordering::Relaxed) == 0 {
            FeedState::Starting
        } else if self.backlog.load(Ordering::Relaxed) > CATCH_UP_SLACK {
            FeedState::CatchingUp
        } else {
            FeedState::Live
        }
    }

    /// Seconds since the last tick (since the start before the first).
    pub fn quiet_secs(&self, now_ns: u64) -> f64 {
        self.quiet_ns(now_ns) as f64 / 1e9
    }

    fn quiet_ns(&self, now_ns: u64) -> u64 {
        let last = self.last_tick_ns.load(Ordering::Relaxed);
        let since = if last == 0 { self.started_ns.load(Ordering::Relaxed) } else { last };
        now_ns.saturating_sub(since)
    }

    /// Counts a rejected line.
    pub fn reject(&self, e: LineError) {
        Stats::add(&self.rejected[e.index()], 1);
    }
}
