//! Same seed, same stream — in the library and through the `feed-sim` binary — and the binary's
//! output is valid protocol NDJSON.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use feed_sim::{Feed, SimConfig, VIRTUAL_EPOCH_NS};
use tickfan_proto::encode::write_tick_json;
use tickfan_proto::Tick;

fn cfg(seed: u64) -> SimConfig {
    SimConfig { seed, ..SimConfig::default() }
}

/// The first `n` ticks of `cfg`, encoded with `ts` fixed at 0.
fn encoded(cfg: SimConfig, n: usize) -> Vec<u8> {
    let mut feed = Feed::new(cfg);
    let symbols = feed.symbols().clone();
    let mut buf = Vec::with_capacity(n * 200);
    for _ in 0..n {
        let tick = feed.next_tick(0);
        write_tick_json(&mut buf, &tick, symbols.get(tick.sym));
        buf.push(b'\n');
    }
    buf
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y).or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

#[test]
fn same_seed_gives_the_same_first_50k_ticks() {
    let a = encoded(cfg(42), 50_000);
    let b = encoded(cfg(42), 50_000);
    assert_eq!(first_difference(&a, &b), None, "streams of the same seed differ");
}

#[test]
fn different_seeds_give_different_streams() {
    let a = encoded(cfg(42), 5_000);
    let b = encoded(cfg(43), 5_000);
    let at = first_difference(&a, &b).expect("seeds 42 and 43 gave the same stream");
    // Not just a late divergence: the very first events already differ.
    assert!(at < 10_000, "streams share their first {at} bytes");
}

/// Everything of a tick but its timestamp.
fn content(t: &Tick) -> (u32, u64, tickfan_proto::TickBody) {
    (t.sym, t.seq, t.body.clone())
}

#[test]
fn content_does_not_depend_on_rate_bursts_clock_or_pacing() {
    let n = 3_000;
    let mut reference = Feed::new(cfg(5));
    let want: Vec<_> = (0..n).map(|_| content(&reference.next_tick(0))).collect();

    // Another rate and burst schedule, stamped by the virtual clock.
    let mut other =
        Feed::new(SimConfig { rate: 123.0, burst_every_s: 0.01, burst_mult: 50.0, ..cfg(5) });
    let got: Vec<_> = (0..n).map(|_| content(&other.next_tick_virtual())).collect();
    assert!(got == want, "rate or bursts changed tick content");

    // Paced in real time, wall-clock stamps.
    let mut paced = Feed::new(SimConfig { rate: 100_000.0, ..cfg(5) });
    let stop = AtomicBool::new(false);
    let mut got = Vec::new();
    paced.run_paced(&stop, |batch| {
        got.extend(batch.iter().map(content));
        if got.len() >= n {
            stop.store(true, Ordering::Relaxed);
        }
    });
    got.truncate(n);
    assert!(got == want, "real-time pacing changed tick content");
}

/// Runs the binary with `args` and none of the `TICKFAN_*` settings of the environment.
fn feed_sim(args: &[&str]) -> Output {
    command(args).output().expect("feed-sim runs")
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_feed-sim"));
    cmd.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("TICKFAN_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// `-?digits.digits` or `digits`: a decimal string as the protocol writes prices and sizes.
fn is_decimal(v: &serde_json::Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let (int, frac) = s.split_once('.').unwrap_or((s, "0"));
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    digits(int) && digits(frac)
}

#[test]
fn binary_virtual_clock_output_is_byte_identical_and_valid() {
    let args = ["--clock", "virtual", "--no-pace", "--count", "20000", "--seed", "7"];
    let first = feed_sim(&args);
    let second = feed_sim(&args);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(first.stderr.is_empty(), "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(first_difference(&first.stdout, &second.stdout), None, "two runs differ");

    let text = String::from_utf8(first.stdout).expect("UTF-8 output");
    let mut text_lines = text.lines();
    // First the symbols announcement, with the epoch fixed by the virtual clock and the seed.
    let ann = tickfan_proto::feed::Announcement::parse(text_lines.next().unwrap().as_bytes())
        .expect("an announcement first");
    assert_eq!(ann.epoch.as_deref(), Some("187b16d8ed8f0000-7"));
    assert_eq!(ann.symbols.len(), 50);
    assert_eq!(ann.symbols[0].name, "BTC-USD");
    let mut lines = 0;
    let mut last_ts = 0;
    let mut seqs: HashMap<String, u64> = HashMap::new();
    for line in text_lines {
        lines += 1;
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let ch = v["ch"].as_str().unwrap_or_else(|| panic!("no ch: {line}"));
        let (kind, sym) = ch.split_once('.').unwrap();
        assert!(sym.ends_with("-USD"), "{line}");
        let seq = v["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {line}"));
        let prev = seqs.insert(ch.to_string(), seq).unwrap_or(0);
        assert_eq!(seq, prev + 1, "{line}");
        let ts = v["ts"].as_u64().unwrap_or_else(|| panic!("no ts: {line}"));
        assert!(ts >= VIRTUAL_EPOCH_NS && ts >= last_ts, "{line}");
        last_ts = ts;
        match kind {
            "trades" => {
                assert!(v["id"].as_u64().is_some(), "{line}");
                assert!(is_decimal(&v["px"]) && is_decimal(&v["qty"]), "{line}");
                assert!(v["side"] == "buy" || v["side"] == "sell", "{line}");
            }
            "quotes" => {
                for f in ["bid", "bsz", "ask", "asz"] {
                    assert!(is_decimal(&v[f]), "{f} in {line}");
                }
            }
            "book" => {
                assert_eq!(v["type"], "update", "{line}");
                for side in ["bids", "asks"] {
                    let levels = v[side].as_array().unwrap_or_else(|| panic!("{side}: {line}"));
                    for l in levels {
                        let l = l.as_array().unwrap();
                        assert!(l.len() == 2 && is_decimal(&l[0]) && is_decimal(&l[1]), "{line}");
                    }
                }
            }
            other => panic!("unknown kind {other}: {line}"),
        }
    }
    assert_eq!(lines, 20_000);
    // 20 000 ticks at 20 000/s, plus bursts: a little over one virtual second.
    assert!(last_ts - VIRTUAL_EPOCH_NS < 2_000_000_000);
}

#[test]
fn binary_refuses_a_bad_config_with_status_2_and_one_line() {
    let out = feed_sim(&["--symbols", "0", "--no-pace", "--count", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("symbols must be between 1 and 100000, got 0"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    for args in [&["--duration", "-1"][..], &["--zipf-s", "-2"], &["--rate", "0"]] {
        let out = feed_sim(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    // Unparsable flags are clap's: same status.
    assert_eq!(feed_sim(&["--rate", "fast"]).status.code(), Some(2));
    let out = feed_sim(&["--sink", "kafka://x", "--count", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nats://"));
}

#[test]
fn binary_exits_quietly_when_the_reader_goes_away() {
    let mut child = command(&["--no-pace"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("feed-sim starts");
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("{\"op\":\"symbols\""), "{line}");
    line.clear();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("{\"ch\":"), "{line}");
    drop(reader); // like `| head -1`
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn binary_paces_in_real_time() {
    let started = Instant::now();
    let before =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64;
    let out = feed_sim(&["--rate", "2000", "--burst-every", "0", "--duration", "0.5"]);
    let elapsed = started.elapsed();
    assert!(out.status.success());
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let n = text.lines().count() - 1; // the announcement
    assert!((300..=1100).contains(&n), "{n} ticks in 0.5 s at 2000/s");
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let ts = last["ts"].as_u64().unwrap();
    assert!(ts > before && ts < before + 10_000_000_000, "real-clock ts {ts}");

    // --count stops a paced run exactly.
    let out = feed_sim(&["--rate", "10000", "--count", "50"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 1 + 50);
}
