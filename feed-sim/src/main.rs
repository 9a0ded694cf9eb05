//! `feed-sim`: writes the simulated feed as NDJSON on stdout in tickfan's feed format
//! (`docs/feed-format.md`): first a symbols announcement (`{"op":"symbols",…}`), then one data
//! message per line, exactly as the gateway would send it
//! (`tickfan_proto::encode::write_tick_json`).
//!
//! ```text
//! feed-sim --count 5 --clock virtual --no-pace     # five ticks, the same bytes every time
//! feed-sim --rate 1000 --duration 10 | jq .        # ten seconds in real time
//! feed-sim | tickfan --source stdin                # the gateway fed through a pipe
//! ```

use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use feed_sim::{Clock, Feed, PaceOptions, SimConfig, Sink};
use tickfan_proto::encode::{write_tick_json, write_tick_message};
use tickfan_proto::feed::Announcement;
use tickfan_proto::{SymbolTable, Tick};

/// Writes a deterministic simulated exchange feed (trades, quotes, L2 book deltas) as NDJSON.
///
/// Every line is one data message of the tickfan protocol. The same seed and settings give the
/// same ticks; with `--clock virtual` the output is byte-identical from run to run.
#[derive(Parser, Debug)]
#[command(name = "feed-sim", version)]
struct Args {
    /// Number of symbols (BTC-USD, ETH-USD, … then generated names), 1..=100000.
    #[arg(long, env = "TICKFAN_SYMBOLS", default_value_t = 50)]
    symbols: usize,
    /// Ticks per second over all symbols, outside bursts.
    #[arg(long, env = "TICKFAN_RATE", default_value_t = 20_000.0)]
    rate: f64,
    /// Seed of the simulation.
    #[arg(long, env = "TICKFAN_SEED", default_value_t = 1)]
    seed: u64,
    /// Zipf exponent of symbol activity (0 = all symbols equally busy).
    #[arg(long, env = "TICKFAN_ZIPF_S", default_value_t = 1.1)]
    zipf_s: f64,
    /// Price levels per side of each book.
    #[arg(long, env = "TICKFAN_BOOK_DEPTH", default_value_t = 25)]
    book_depth: usize,
    /// Mean seconds between bursts (0 = no bursts).
    #[arg(long, env = "TICKFAN_BURST_EVERY", value_name = "SECS", default_value_t = 5.0)]
    burst_every: f64,
    /// Length of a burst, in milliseconds.
    #[arg(long, env = "TICKFAN_BURST_LEN_MS", value_name = "MS", default_value_t = 100)]
    burst_len_ms: u64,
    /// Rate multiplier during bursts.
    #[arg(long, env = "TICKFAN_BURST_MULT", default_value_t = 10.0)]
    burst_mult: f64,
    /// Stop after this many ticks.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Stop after this many seconds of real time.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// What stamps `ts`: the system clock, or the schedule's virtual time from
    /// 2025-11-25T00:00:00Z (reproducible output).
    #[arg(long, value_enum, default_value_t = ClockArg::Real)]
    clock: ClockArg,
    /// Emit as fast as possible instead of at `--rate` in real time.
    #[arg(long)]
    no_pace: bool,
    /// Stamp each tick with the simulated exchange's event time too (`et`: when the event was
    /// due in the schedule, up to a batch before `ts`), as feeds from real venues carry it.
    #[arg(long, env = "TICKFAN_EVENT_TIME")]
    event_time: bool,
    /// Write timestamps in microseconds, as gateways send them to clients, instead of
    /// nanoseconds (gateways read both). The bench's baselines forward lines as they are, so
    /// they send the same bytes as tickfan.
    #[arg(long)]
    micros: bool,
    /// Where the feed goes: `stdout` (NDJSON), or `nats://HOST:PORT` (one message per tick on
    /// `md.<kind>.<SYM>`, for gateways started with `--source nats://…`; docs/feed-format.md).
    #[arg(long, env = "TICKFAN_SINK", default_value = "stdout")]
    sink: String,
    /// With a nats:// sink: keep the feed in the JetStream stream `MD` (created, or its limits
    /// updated), for gateways started with `--jetstream`. Needs a server with JetStream on.
    #[arg(long, env = "TICKFAN_JETSTREAM")]
    jetstream: bool,
    /// How long the stream keeps a message, in seconds.
    #[arg(long, env = "TICKFAN_JETSTREAM_MAX_AGE", value_name = "SECS", default_value_t = 60)]
    jetstream_max_age: u64,
    /// Bound on the stream's size, in bytes (the oldest messages go first).
    #[arg(long, env = "TICKFAN_JETSTREAM_MAX_BYTES", default_value_t = 1 << 30)]
    jetstream_max_bytes: i64,
    /// Shortest time between two written batches, in microseconds (the gateway's
    /// `--feed-batch-us`, so that a server fed through a pipe sees the same batching).
    #[arg(long, value_name = "US", default_value_t = 250)]
    batch_us: u64,
}

/// `--clock` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ClockArg {
    /// System time at emission, Unix ns.
    Real,
    /// Virtual schedule time: byte-identical output for a given seed.
    Virtual,
}

impl Args {
    fn sim_config(&self) -> SimConfig {
        SimConfig {
            symbols: self.symbols,
            rate: self.rate,
            seed: self.seed,
            zipf_s: self.zipf_s,
            book_depth: self.book_depth,
            burst_every_s: self.burst_every,
            burst_len_ms: self.burst_len_ms,
            burst_mult: self.burst_mult,
        }
    }

    /// The run-time limit, or an error saying what to change.
    fn duration(&self) -> Result<Option<Duration>, String> {
        match self.duration {
            None => Ok(None),
            Some(s) if (0.0..1e9).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
            Some(s) => Err(format!("--duration must be a non-negative number of seconds, got {s}")),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let limit = match args.duration() {
        Ok(limit) => limit,
        Err(msg) => return usage_error(&msg),
    };
    let feed = match Feed::try_new(args.sim_config()) {
        Ok(feed) => feed,
        Err(msg) => return usage_error(&msg),
    };
    let clock = match args.clock {
        ClockArg::Real => Clock::Real,
        ClockArg::Virtual => Clock::Virtual,
    };
    let epoch = epoch(clock, args.seed);
    let symbols = feed.symbols().clone();
    let done = match args.sink.as_str() {
        "stdout" | "-" => NdjsonWriter::new(io::stdout().lock(), symbols, epoch, args.micros)
            .and_then(|out| run(feed, out, &args, clock, limit)),
        url if url.starts_with("nats://") || url.starts_with("tls://") => {
            let stream = args.jetstream.then_some(feed_sim::nats::StreamLimits {
                max_age: Duration::from_secs(args.jetstream_max_age),
                max_bytes: args.jetstream_max_bytes,
            });
            match feed_sim::nats::NatsSink::connect(url, symbols, epoch, stream) {
                Ok(out) => run(feed, out, &args, clock, limit),
                Err(e) => {
                    eprintln!("feed-sim: cannot publish to {url}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        other => return usage_error(&format!("--sink {other:?}: stdout or nats://HOST:PORT")),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`feed-sim | head`): that is how a pipe ends, not a failure.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("feed-sim: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reports a bad setting on one line and exits with status 2, like clap does for bad flags.
fn usage_error(msg: &str) -> ExitCode {
    eprintln!("feed-sim: invalid configuration: {msg} (see --help)");
    ExitCode::from(2)
}

fn run(
    mut feed: Feed,
    mut out: impl Sink,
    args: &Args,
    clock: Clock,
    limit: Option<Duration>,
) -> io::Result<()> {
    let count = args.count.unwrap_or(u64::MAX);
    if args.no_pace {
        let started = Instant::now();
        for i in 0..count {
            // Checking the clock every tick would cost more than encoding one.
            if i % 1024 == 0 && limit.is_some_and(|l| started.elapsed() >= l) {
                break;
            }
            let mut tick = match clock {
                Clock::Virtual => feed.next_tick_virtual(),
                Clock::Real => feed.next_tick(tickfan_proto::unix_now_ns()),
            };
            if args.event_time {
                tick.et = tick.ts;
            }
            out.write(&tick)?;
        }
        return out.flush();
    }

    let stop = AtomicBool::new(count == 0);
    let mut written = 0u64;
    let mut result = Ok(());
    std::thread::scope(|s| {
        if let Some(limit) = limit {
            let stop = &stop;
            s.spawn(move || {
                let deadline = Instant::now() + limit;
                // Sleep in slices so that the scope can end soon after `stop` is set elsewhere.
                while !stop.load(Ordering::Relaxed) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    std::thread::sleep(left.min(Duration::from_millis(50)));
                }
            });
        }
        let opts = PaceOptions {
            clock,
            min_batch_interval: Duration::from_micros(args.batch_us),
            event_time: args.event_time,
        };
        feed.run_paced_with(&stop, opts, |batch| {
            if result.is_err() {
                return;
            }
            let take = batch.len().min(usize::try_from(count - written).unwrap_or(usize::MAX));
            result = batch[..take].iter().try_for_each(|t| out.write(t)).and_then(|()| out.flush());
            written += take as u64;
            if result.is_err() || written >= count {
                stop.store(true, Ordering::Relaxed);
            }
        });
        // Let the timer thread end.
        stop.store(true, Ordering::Relaxed);
    });
    result?;
    out.flush()
}

/// The epoch this run announces: the start time (as gateways make theirs), or, on the virtual
/// clock, one fixed per seed (the output is byte-identical from run to run, and so are its
/// seqs).
fn epoch(clock: Clock, seed: u64) -> String {
    match clock {
        Clock::Real => format!("{:016x}", tickfan_proto::unix_now_ns()),
        Clock::Virtual => format!("{:016x}-{seed}", feed_sim::VIRTUAL_EPOCH_NS),
    }
}

/// Encodes ticks as NDJSON lines into a buffered writer, reusing one line buffer.
struct NdjsonWriter<W: Write> {
    /// Where the lines go.
    out: BufWriter<W>,
    /// Symbol names and scales, for the encoder.
    symbols: SymbolTable,
    /// The line being encoded.
    line: Vec<u8>,
    /// Timestamps in microseconds (`--micros`).
    micros: bool,
}

impl<W: Write> NdjsonWriter<W> {
    /// A writer that has written the feed's first line: the symbols announcement.
    fn new(out: W, symbols: SymbolTable, epoch: String, micros: bool) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(64 << 10, out);
        let mut line =
            Announcement { epoch: Some(epoch), symbols: symbols.iter().cloned().collect() }
                .to_line();
        line.push(b'\n');
        out.write_all(&line)?;
        Ok(NdjsonWriter { out, symbols, line: Vec::new(), micros })
    }
}

impl<W: Write> Sink for NdjsonWriter<W> {
    fn write(&mut self, tick: &Tick) -> io::Result<()> {
        self.line.clear();
        let symbol = self.symbols.get(tick.sym);
        if self.micros {
            write_tick_message(&mut self.line, tick, symbol, None);
        } else {
            write_tick_json(&mut self.line, tick, symbol);
        }
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
