//! NDJSON sources: `--source stdin` and `--source file:PATH` (`docs/feed-format.md`).
//!
//! The first line is the symbols announcement; every later line is a tick, or is counted under
//! its reason in `tickfan_feed_rejected_total`, logged the first time that reason occurs, and
//! skipped. Nothing a line contains can stop the gateway or reach a client.
//!
//! Batching: stdin publishes whatever lines are already buffered as one batch (a writer such
//! as `feed-sim` writes one batch per write); a file is paced by its ticks' `ts`, divided by
//! `--replay-speed` (0: as fast as the workers take it).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tickfan_proto::feed::{
    parse_tick, Announcement, LineError, MAX_ANNOUNCEMENT_BYTES, MAX_LINE_BYTES,
};
use tickfan_proto::{SymbolTable, Tick};

use super::{Opened, Publisher};
use crate::metrics::Stats;

/// Most ticks in one batch.
const MAX_BATCH: usize = 1024;
/// Longest sleep of a paced replay, so that `stop` is noticed.
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// Reads the announcement from standard input (waiting for it), then ticks until EOF.
pub fn open_stdin() -> anyhow::Result<Opened> {
    let mut lines = LineReader::new(Box::new(io::stdin()) as Box<dyn Read + Send>);
    let ann = announcement(&mut lines).context("reading the feed on stdin")?;
    Ok(opened(lines, ann, None, true))
}

/// Opens `path`, reads its announcement, then replays it at `speed` × its own pace (0: as
/// fast as possible).
pub fn open_file(path: &Path, speed: f64) -> anyhow::Result<Opened> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut lines = LineReader::new(Box::new(file) as Box<dyn Read + Send>);
    let ann = announcement(&mut lines).with_context(|| format!("reading {}", path.display()))?;
    Ok(opened(lines, ann, (speed > 0.0).then_some(speed), false))
}

fn opened(
    lines: LineReader<Box<dyn Read + Send>>,
    ann: Announcement,
    speed: Option<f64>,
    may_block: bool,
) -> Opened {
    let symbols = SymbolTable::new(ann.symbols.clone());
    let epoch = ann.epoch.clone();
    let table = symbols.clone();
    Opened {
        symbols,
        epoch,
        run: Box::new(move |publisher: Publisher, stop: &AtomicBool| {
            let mut feed = Reader::new(table, ann, publisher);
            feed.run(lines, speed, stop);
        }),
        may_block,
    }
}

/// The first line, which must announce the symbols (and may be longer than a tick's).
fn announcement<R: Read>(lines: &mut LineReader<R>) -> anyhow::Result<Announcement> {
    lines.max = MAX_ANNOUNCEMENT_BYTES;
    let parsed = match lines.next_line()? {
        None => Err("the feed ended before its first line (the symbols announcement)".into()),
        Some(Err(e)) => Err(format!("the first line is not a symbols announcement ({e})")),
        Some(Ok(line)) => Announcement::parse(line),
    };
    lines.max = MAX_LINE_BYTES;
    parsed.map_err(anyhow::Error::msg)
}

/// Turns lines into published ticks, with per-channel seq checks and rejection counting.
struct Reader {
    symbols: SymbolTable,
    announced: Announcement,
    publisher: Publisher,
    /// Last seq taken per channel (0: none yet).
    last_seq: Vec<u64>,
    /// Reasons already logged once.
    logged: [bool; LineError::ALL.len()],
    batch: Vec<Tick>,
}

impl Reader {
    fn new(symbols: SymbolTable, announced: Announcement, publisher: Publisher) -> Reader {
        let last_seq = vec![0; symbols.channel_count()];
        let logged = [false; LineError::ALL.len()];
        Reader { symbols, announced, publisher, last_seq, logged, batch: Vec::new() }
    }

    fn run<R: Read>(&mut self, mut lines: LineReader<R>, speed: Option<f64>, stop: &AtomicBool) {
        // Pacing: (first tick's ts, when it was due here).
        let mut origin: Option<(u64, Instant)> = None;
        while !stop.load(Ordering::Relaxed) {
            let line = match lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "the feed cannot be read any more");
                    break;
                }
            };
            let taken = match line {
                Ok(line) => self.take(line).map_err(|e| (e, line)),
                Err(e) => Err((e, &[][..])),
            };
            let tick = match taken {
                Ok(Some(tick)) => tick,
                Ok(None) => continue,
                Err((e, text)) => {
                    self.reject(e, text);
                    continue;
                }
            };
            if let Some(speed) = speed {
                let (ts0, t0) = *origin.get_or_insert((tick.ts, Instant::now()));
                let due =
                    t0 + Duration::from_secs_f64(tick.ts.saturating_sub(ts0) as f64 / 1e9 / speed);
                if due > Instant::now() {
                    self.flush();
                    sleep_until(due, stop);
                }
            }
            self.batch.push(tick);
            if self.batch.len() >= MAX_BATCH || (speed.is_none() && !lines.has_buffered()) {
                self.flush();
            }
        }
        self.flush();
        tracing::info!(
            "the feed ended; still serving (clients see status \"stale\" after --stale-after)"
        );
    }

    /// Parses a line and checks its seq against the channel's last one. `None`: the
    /// announcement again, which is fine and skipped.
    fn take(&mut self, line: &[u8]) -> Result<Option<Tick>, LineError> {
        let tick = match parse_tick(line, &self.symbols) {
            Ok(tick) => tick,
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
        let last = &mut self.last_seq[tick.channel().index()];
        if tick.seq <= *last {
            return Err(LineError::SeqNotIncreasing);
        }
        if *last != 0 && tick.seq > *last + 1 {
            Stats::add(&self.publisher.health().upstream_lost, tick.seq - *last - 1);
        }
        *last = tick.seq;
        Ok(Some(tick))
    }

    fn reject(&mut self, e: LineError, line: &[u8]) {
        self.publisher.health().reject(e);
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

    fn flush(&mut self) {
        self.publisher.publish(&self.batch);
        self.batch.clear();
    }
}

fn sleep_until(due: Instant, stop: &AtomicBool) {
    loop {
        let left = due.saturating_duration_since(Instant::now());
        if left.is_zero() || stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(left.min(MAX_SLEEP));
    }
}

/// Splits a byte stream into lines of at most `max` bytes ([`MAX_LINE_BYTES`] unless set):
/// a longer line is reported as [`LineError::TooLong`] without ever being held whole in memory.
pub struct LineReader<R> {
    inner: BufReader<R>,
    line: Vec<u8>,
    pub max: usize,
}

impl<R: Read> LineReader<R> {
    pub fn new(inner: R) -> LineReader<R> {
        let inner = BufReader::with_capacity(256 << 10, inner);
        LineReader { inner, line: Vec::new(), max: MAX_LINE_BYTES }
    }

    /// Whether bytes are buffered already (the next line may not need a read).
    pub fn has_buffered(&self) -> bool {
        !self.inner.buffer().is_empty()
    }

    /// The next line without its `\n` (and `\r`), `Err(TooLong)` for an over-long one, `None`
    /// at the end of the stream. An empty line is skipped.
    pub fn next_line(&mut self) -> io::Result<Option<Result<&[u8], LineError>>> {
        loop {
            self.line.clear();
            let mut too_long = false;
            let ended = loop {
                let available = match self.inner.fill_buf() {
                    Ok(b) => b,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if available.is_empty() {
                    break true;
                }
                let (chunk, used, done) = match available.iter().position(|&b| b == b'\n') {
                    Some(i) => (&available[..i], i + 1, true),
                    None => (available, available.len(), false),
                };
                if !too_long && self.line.len() + chunk.len() > self.max {
                    too_long = true;
                    self.line = Vec::new();
                }
                if !too_long {
                    self.line.extend_from_slice(chunk);
                }
                self.inner.consume(used);
                if done {
                    break false;
                }
            };
            if too_long {
                return Ok(Some(Err(LineError::TooLong)));
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            if self.line.is_empty() {
                if ended {
                    return Ok(None);
                }
                continue;
            }
            return Ok(Some(Ok(&self.line)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<Result<Vec<u8>, LineError>> {
        let mut r = LineReader::new(input);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            out.push(l.map(<[u8]>::to_vec));
        }
        out
    }

    #[test]
    fn lines_are_split_bounded_and_trimmed() {
        assert_eq!(
            lines(b"a\nbc\r\n\n\nd"),
            vec![Ok(b"a".to_vec()), Ok(b"bc".to_vec()), Ok(b"d".to_vec())]
        );
        let mut long = vec![b'x'; MAX_LINE_BYTES + 10];
        long.extend_from_slice(b"\nok\n");
        assert_eq!(lines(&long), vec![Err(LineError::TooLong), Ok(b"ok".to_vec())]);
        let exact = vec![b'y'; MAX_LINE_BYTES];
        assert_eq!(lines(&exact), vec![Ok(exact.clone())]);
    }
}
