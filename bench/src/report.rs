//! What a run measured: JSON for machines, a markdown table for people.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::client::Protocol;

/// An empty latency histogram: microseconds from 1 µs to 60 s, 3 significant digits. Every
/// histogram of a run uses these bounds so they can be merged.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// End-to-end latency percentiles, in microseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// Quantiles of the percentile curve: 0 to 99.999 % with more points in the tail, where
/// latency outliers live.
const CURVE_QUANTILES: [f64; 13] =
    [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 1.0];

impl LatencySummary {
    /// `(quantile, µs)` points of the latency distribution, for plots.
    pub fn curve(h: &Histogram<u64>) -> Vec<(f64, u64)> {
        if h.is_empty() {
            return Vec::new();
        }
        CURVE_QUANTILES.iter().map(|&q| (q, h.value_at_quantile(q))).collect()
    }
}

impl From<&Histogram<u64>> for LatencySummary {
    fn from(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            samples: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Result of one `bench run`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    pub protocol: Protocol,
    pub streams: String,
    /// Connections asked for.
    pub conns: usize,
    /// Connections that completed the handshake.
    pub connected: usize,
    pub failed_connects: usize,
    pub first_connect_error: Option<String>,
    /// Connections the server ended before the run did.
    pub ended_early: usize,
    pub connect_seconds: f64,
    /// Length of the measured window (after warm-up).
    pub measured_seconds: f64,
    /// Data messages received in the measured window, all connections together.
    pub msgs: u64,
    pub msgs_per_sec: f64,
    pub payload_bytes: u64,
    pub payload_bytes_per_sec: f64,
    /// Bytes of every frame received in the measured window, WebSocket headers included
    /// (TCP/IP headers are not counted).
    pub wire_bytes: u64,
    pub wire_bytes_per_sec: f64,
    /// Wire bytes per data message: what one tick costs on the wire in this protocol.
    pub wire_bytes_per_msg: f64,
    /// Gap notices received (loss the server declared).
    pub declared_gaps: u64,
    /// Seq jumps without a notice: always a server bug. Non-zero fails the run.
    pub undeclared_gaps: u64,
    /// Messages skipped by those undeclared jumps: data silently lost.
    pub undeclared_missing: u64,
    /// Receive time − `ts`, over the measured window.
    pub latency_us: LatencySummary,
    /// `(quantile, µs)` points of the latency distribution.
    pub latency_percentiles_us: Vec<(f64, u64)>,
    /// Delivered messages in each second of the measured window (warm-up excluded).
    pub msgs_per_sec_series: Vec<f64>,
    /// CPU cores the load client used on average (a saturated client shows here).
    pub client_cpu_cores: Option<f64>,
    /// CPU cores the server used on average, with `--server-pid`, its feed excluded (the
    /// `--feed-thread` threads in it; a `--feed-pid` process is never counted here).
    pub server_cpu_cores: Option<f64>,
    /// CPU cores the feed used on average: `--feed-pid` processes and `--feed-thread`
    /// threads of the server. `None` when no feed was named (or none found).
    #[serde(default)]
    pub feed_cpu_cores: Option<f64>,
    /// Delivered messages per server CPU-second, the feed excluded: comparable even when the
    /// client is the limit.
    pub msgs_per_server_cpu_sec: Option<f64>,
    /// Resident memory of the server processes (not of a `--feed-pid`) at the end of the
    /// measured window.
    pub server_rss_bytes: Option<u64>,
    /// Write-family syscalls (`write`, `writev`, `sendto`, `sendmsg`) of the server (its
    /// feed's threads left out) over the measured window, counted by `perf stat`.
    #[serde(default)]
    pub server_writes: Option<u64>,
    /// Why `server_writes` is missing although it was asked for.
    #[serde(default)]
    pub writes_note: Option<String>,
    /// The gateway's internal latency over the measured window, from `--metrics-url`.
    #[serde(default)]
    pub server_internal_latency: Option<crate::scrape::ServerLatency>,
}

impl Report {
    /// Server write-family syscalls per delivered message.
    pub fn writes_per_msg(&self) -> Option<f64> {
        let w = self.server_writes?;
        (self.msgs > 0).then(|| w as f64 / self.msgs as f64)
    }

    /// Delivered messages per server write-family syscall.
    pub fn msgs_per_write(&self) -> Option<f64> {
        let w = self.server_writes?;
        (w > 0).then(|| self.msgs as f64 / w as f64)
    }

    /// Whether the run shows a correctness failure.
    pub fn failed(&self) -> bool {
        self.undeclared_gaps > 0 || self.msgs == 0
    }

    /// A markdown table of the figures.
    pub fn markdown(&self) -> String {
        let l = &self.latency_us;
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v:.2}{unit}"));
        let mut s = String::new();
        let _ = writeln!(s, "| metric | value |\n|---|---|");
        let _ = writeln!(
            s,
            "| target | `{}` ({:?} protocol), streams `{}` |",
            self.target, self.protocol, self.streams
        );
        let _ = writeln!(
            s,
            "| connections | {} of {} ({} failed, {} ended early), connected in {:.2} s |",
            self.connected,
            self.conns,
            self.failed_connects,
            self.ended_early,
            self.connect_seconds
        );
        let _ = writeln!(s, "| measured | {:.1} s |", self.measured_seconds);
        let _ =
            writeln!(s, "| delivered | {} msgs, **{:.0} msgs/s** |", self.msgs, self.msgs_per_sec);
        let _ = writeln!(
            s,
            "| bytes | payload {:.2} MB/s, wire {:.2} MB/s, **{:.1} wire bytes per message** |",
            self.payload_bytes_per_sec / 1e6,
            self.wire_bytes_per_sec / 1e6,
            self.wire_bytes_per_msg
        );
        let _ = writeln!(
            s,
            "| e2e latency | p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs |",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        if let Some(sl) = &self.server_internal_latency {
            let _ = writeln!(
                s,
                "| gateway internal latency (from /metrics) | p50 {:.0} µs, p99 {:.0} µs, \
                 p99.9 {:.0} µs, mean {:.0} µs over {} ticks |",
                sl.p50_us, sl.p99_us, sl.p999_us, sl.mean_us, sl.samples
            );
        }
        let _ = writeln!(
            s,
            "| gaps | {} declared, {} undeclared ({} messages silently lost) |",
            self.declared_gaps, self.undeclared_gaps, self.undeclared_missing
        );
        let _ = writeln!(
            s,
            "| CPU | client {} cores, server {} cores (feed excluded), feed {} cores |",
            opt(self.client_cpu_cores, ""),
            opt(self.server_cpu_cores, ""),
            opt(self.feed_cpu_cores, "")
        );
        let _ = writeln!(
            s,
            "| msgs per server CPU-second | {} |",
            opt(self.msgs_per_server_cpu_sec, "")
        );
        match (self.server_writes, &self.writes_note) {
            (Some(w), _) => {
                let _ = writeln!(
                    s,
                    "| server writes (write, writev, sendto, sendmsg) | {w}: {} per delivered \
                     message, {} messages per write |",
                    opt(self.writes_per_msg(), ""),
                    opt(self.msgs_per_write(), "")
                );
            }
            (None, Some(why)) => {
                let _ = writeln!(s, "| server writes | n/a: {why} |");
            }
            (None, None) => {}
        }
        if let Some(rss) = self.server_rss_bytes {
            let _ = writeln!(s, "| server RSS | {:.1} MiB |", rss as f64 / (1 << 20) as f64);
        }
        s
    }
}

/// CPU time (user + system) of a process so far, in seconds, from `/proc/PID/stat`
/// (`None` = this process). `None` where /proc is not readable.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    match pid {
        Some(p) => stat_cpu_seconds(&format!("/proc/{p}/stat")),
        None => stat_cpu_seconds("/proc/self/stat"),
    }
}

/// CPU time (user + system) of one thread of a process so far, in seconds, from
/// `/proc/PID/task/TID/stat`.
pub fn thread_cpu_seconds(pid: u32, tid: u32) -> Option<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/task/{tid}/stat"))
}

fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')')? + 2..];
    let mut fields = after.split_whitespace();
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    // /proc reports in USER_HZ clock ticks, 100 per second on Linux.
    Some((utime + stime) / 100.0)
}

/// The threads of process `pid` named `name` (their `/proc/PID/task/TID/comm`, which the
/// kernel cuts to 15 bytes).
pub fn threads_named(pid: u32, name: &str) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut tids: Vec<u32> = tasks
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok())
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect();
    tids.sort_unstable();
    tids
}

/// Resident memory of a process, from `/proc/PID/status` (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable_and_grows() {
        let a = cpu_seconds(None).expect("/proc/self/stat");
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed().as_millis() < 60 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let b = cpu_seconds(None).unwrap();
        assert!(b > a, "{a} -> {b}");
    }

    #[test]
    fn latency_summary_reads_the_histogram() {
        let mut h = latency_histogram();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let s = LatencySummary::from(&h);
        assert_eq!((s.samples, s.max), (1000, 1000));
        assert!((495..=505).contains(&s.p50) && (985..=995).contains(&s.p99), "{s:?}");
        let curve = LatencySummary::curve(&h);
        assert_eq!(curve.first(), Some(&(0.0, 1)));
        assert_eq!(curve.last(), Some(&(1.0, 1000)));
        assert!(curve.windows(2).all(|w| w[0].1 <= w[1].1), "{curve:?}");
    }

    #[test]
    fn a_named_thread_and_its_cpu_time() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let spinner = std::thread::Builder::new()
            .name("bench-test-spin".into())
            .spawn(move || {
                let t = std::time::Instant::now();
                let mut x = 0u64;
                while t.elapsed().as_millis() < 60 {
                    x = x.wrapping_mul(31).wrapping_add(7);
                }
                std::hint::black_box(x);
                let _ = rx.recv();
            })
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(80));
        let pid = std::process::id();
        let tids = threads_named(pid, "bench-test-spin");
        assert_eq!(tids.len(), 1, "{tids:?}");
        let cpu = thread_cpu_seconds(pid, tids[0]).unwrap();
        assert!(cpu > 0.0 && cpu <= cpu_seconds(None).unwrap(), "{cpu}");
        assert!(threads_named(pid, "no-such-thread").is_empty());
        tx.send(()).unwrap();
        spinner.join().unwrap();
    }

    #[test]
    fn own_rss_is_readable() {
        let rss = rss_bytes(std::process::id()).expect("/proc/PID/status");
        assert!(rss > 1 << 20, "{rss}");
    }
}
