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
use tickfan_proto::feed::{Announcement, LineError, MAX_ANNOUNCEMENT_BYTES, MAX_LINE_BYTES};
use tickfan_proto::SymbolTable;

use super::intake::Intake;
use super::{Opened, Publisher};
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
            run(Intake::new(table, ann, publisher), lines, speed, stop);
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

/// Reads lines until `stop` or the end, pacing by `ts` at `speed` if given, else publishing
/// whatever is buffered as one batch.
fn run<R: Read>(
    mut intake: Intake,
    mut lines: LineReader<R>,
    speed: Option<f64>,
    stop: &AtomicBool,
) {
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
        let Some(tick) = intake.parse(line) else { continue };
        if let Some(speed) = speed {
            let (ts0, t0) = *origin.get_or_insert((tick.ts, Instant::now()));
            let after = tick.ts.saturating_sub(ts0) as f64 / 1e9 / speed;
            let due = t0 + Duration::from_secs_f64(after.min(1e9));
            if due > Instant::now() {
                intake.flush();
                sleep_until(due, stop);
            }
        }
        intake.push(tick);
        if speed.is_none() && !lines.has_buffered() {
            intake.flush();
        }
    }
    intake.flush();
    tracing::info!(
        "the feed ended; still serving (clients see status \"stale\" after --stale-after)"
    );
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
