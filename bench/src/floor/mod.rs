//! The loopback floor (`bench floor`): the least CPU that delivering WebSocket frames over
//! loopback TCP can cost, to hold the gateway's CPU per message against.
//!
//! No WebSocket library, no runtime, no serialisation: the frames are built once (real tickfan
//! trade messages: 126 bytes of JSON behind an unmasked 4-byte server frame header), and a
//! writer thread does nothing but hand them to the kernel. For each N of `--conns` it opens N
//! loopback TCP connections; a reader thread drains their receiving ends through epoll so that
//! no send buffer ever fills; then for each k of `--batch` the writer, in a tight loop, writes
//! k frames to each socket in turn with one `writev` (or `sendmsg`, `--submit`) of k iovecs,
//! for `--duration` seconds. The writer's own CPU time (`CLOCK_THREAD_CPUTIME_ID`) over the
//! number of writes gives CPU µs per write and ns per frame: what one write costs, and how
//! much batching k frames into one syscall saves. On loopback the kernel's receive-side TCP
//! work mostly runs in the sender's context, so it is counted, as it is for a real server on
//! loopback.
//!
//! ```text
//! bench floor                                   # N = 100,1000,10000; k = 1,2,4,8,16,64; 1 s each
//! bench floor --conns 1000 --batch 1,16 --duration 2 --json floor.json
//! bench floor --writer-cpu 2 --reader-cpu 3     # default: the first two CPUs this process may use
//! bench floor --submit writev,io-uring          # each point also with io_uring (uring.rs)
//! bench floor --submit writev,sendmsg           # each point also with one sendmsg per write
//! bench floor --conns 9900 --batch 1 --pace 0,20000   # also paced at 20,000 writes/s
//! ```
//!
//! In the tight loop the reader is nearly always busy, so a write seldom has to wake it: that
//! is the cheapest a write gets. A server whose clients each get a message now and then wakes
//! a sleeping reader with most writes, and on loopback the waking is the writer's CPU too.
//! `--pace` measures that floor: the writer writes the writes due every millisecond
//! ([`PACE_TICK`]) at the given rate, one socket after another, and sleeps in between; only
//! the CPU of its bursts counts, so the floor is what the writes cost, waking the reader
//! included, and not the writer's own sleeping.
//!
//! Each connection takes two file descriptors in this process: the soft `RLIMIT_NOFILE` is
//! raised to the hard one first (and the hard one, if privileged, to what the largest N
//! needs); an N the limit cannot hold is reported and skipped. The writer's sockets are
//! blocking: if the reader falls behind, the writer waits instead of spinning, which shows as
//! a writer CPU share (CPU time / wall time) below 100 % and as writer waits (its voluntary
//! context switches). Preemptions (involuntary ones) say that other work shared the writer's
//! CPU: the figures are then noisier, but CPU µs per write stays the figure to compare.
//!
//! The counts are checked, not assumed: bytes read by the reader must equal bytes written,
//! and every write must have written all of its k frames (a short write is completed and
//! counted as one write).

// The workspace denies unsafe code. This module is the exception because its point is the raw
// syscalls: epoll, CPU affinity, the thread's CPU clock and the file-descriptor limit have no
// safe std API. Each call is a plain libc call on values owned here, with a SAFETY comment.
#![allow(unsafe_code)]

use std::fmt::Write as _;
use std::io::{self, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use socket2::SockRef;
use tickfan_proto::encode::write_tick_message;
use tickfan_proto::{Side, Symbol, Tick, TickBody, Trade};

mod uring;

/// What to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct FloorConfig {
    /// Numbers of connections (N); each is set up once and measured for every k.
    pub conns: Vec<usize>,
    /// Frames per `writev` (k).
    pub batches: Vec<usize>,
    /// Measured time per (N, k).
    pub duration: Duration,
    /// CPU to pin the writer thread to (`None`: not pinned).
    pub writer_cpu: Option<usize>,
    /// CPU to pin the reader thread to (`None`: not pinned).
    pub reader_cpu: Option<usize>,
    /// How the writes reach the kernel; each (N, k) is measured once per way.
    pub submit: Vec<Submit>,
    /// Writes per second to pace the writer at, 0 for a tight loop; each (N, k, way) is
    /// measured once per pace. Paced, the writer writes in bursts every [`PACE_TICK`] and
    /// sleeps between them, so the reader sleeps too and each burst has to wake it, as a
    /// server's writes wake its clients when messages come now and then.
    pub paces: Vec<f64>,
}

/// How often a paced writer wakes to write the writes then due.
pub const PACE_TICK: Duration = Duration::from_millis(1);

/// The paces (writes a second) `bench compare` measures its floor at, one frame per write,
/// besides the tight loop: from about what the thinnest scenario's lowest rate makes to where
/// a paced write costs little more than a tight one.
pub const COMPARE_PACES: [f64; 6] = [5e3, 10e3, 20e3, 40e3, 80e3, 160e3];

/// How the floor's writer hands its writes to the kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Submit {
    /// One `writev` system call per write.
    #[default]
    Writev,
    /// One `IORING_OP_WRITEV` per write, a whole round of them (one per socket) submitted with
    /// one `io_uring_enter`.
    IoUring,
    /// One `sendmsg` system call per write: the socket layer's call, without `writev`'s file
    /// layer (tickfan's writes since 2026-12-03).
    Sendmsg,
}

impl Submit {
    pub fn label(self) -> &'static str {
        match self {
            Submit::Writev => "writev",
            Submit::IoUring => "io_uring",
            Submit::Sendmsg => "sendmsg",
        }
    }
}

impl Default for FloorConfig {
    /// The defaults of `bench floor`, pinned as [`default_cpus`] says.
    fn default() -> FloorConfig {
        let (writer_cpu, reader_cpu) = default_cpus();
        FloorConfig {
            conns: vec![100, 1000, 10_000],
            batches: vec![1, 2, 4, 8, 16, 64],
            duration: Duration::from_secs(1),
            writer_cpu,
            reader_cpu,
            submit: vec![Submit::Writev],
            paces: vec![0.0],
        }
    }
}

/// What `bench floor` measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FloorResult {
    /// Bytes of one frame on the wire (header + payload).
    pub frame_bytes: usize,
    /// Bytes of one frame's JSON payload.
    pub payload_bytes: usize,
    /// Measured seconds per point, as configured.
    pub duration_s: f64,
    pub writer_cpu: Option<usize>,
    pub reader_cpu: Option<usize>,
    /// The soft `RLIMIT_NOFILE` the measurement ran with.
    pub nofile_limit: u64,
    /// One per (N, k), in the order measured.
    pub points: Vec<FloorPoint>,
    /// Connection counts not measured, and why.
    pub skipped: Vec<Skipped>,
}

/// One (N, k) point.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FloorPoint {
    /// Connections (N).
    pub conns: usize,
    /// Frames per `writev` (k).
    pub k: usize,
    /// How the writes were submitted (older results: `writev`).
    #[serde(default)]
    pub submit: Submit,
    /// Writes per second the writer was paced at; 0 (and older results): a tight loop.
    #[serde(default)]
    pub pace: f64,
    /// Writes (of k frames to one socket) in the measured window.
    pub writes: u64,
    /// System calls that made them: one per write with `writev`, one per round (or per ring's
    /// worth of sockets) with io_uring; short writes' completions not included.
    #[serde(default)]
    pub syscalls: u64,
    /// Frames in the measured window: `writes × k`.
    pub frames: u64,
    /// Writes of the untimed warm-up pass (one per connection).
    pub warmup_writes: u64,
    /// All bytes written for this point, warm-up included.
    pub bytes_written: u64,
    /// Bytes the reader received for this point: equal to `bytes_written`.
    pub bytes_read: u64,
    /// `writev` calls that wrote less than k frames and had to be completed.
    pub short_writes: u64,
    pub wall_s: f64,
    /// The writer thread's CPU time over the measured window (with io_uring, plus that of the
    /// process's `iou-` kernel threads; paced, only that of its bursts of writes, not of
    /// going to sleep and waking between them).
    pub cpu_s: f64,
    /// Paced, the writer's CPU time going to sleep and waking between its bursts (not in
    /// `cpu_s`): what a writer that waits for work pays for each wake-up; 0 in a tight loop.
    #[serde(default)]
    pub pause_cpu_s: f64,
    pub cpu_us_per_write: f64,
    pub cpu_ns_per_frame: f64,
    pub writes_per_s: f64,
    pub frames_per_s: f64,
    pub frames_per_cpu_s: f64,
    /// `cpu_s / wall_s`: below 1, the writer waited (for the reader, or for a CPU).
    pub writer_cpu_share: f64,
    /// Times the writer blocked (voluntary context switches): a send buffer was full because
    /// the reader fell behind.
    pub writer_waits: u64,
    /// Times the writer was preempted (involuntary context switches): other work wanted its
    /// CPU, and the figures are noisier for it.
    pub writer_preemptions: u64,
}

/// A connection count that was not measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Skipped {
    pub conns: usize,
    pub reason: String,
}

/// File descriptors a measurement of `conns` connections needs: two per connection (both
/// ends live in this process) and some for stdio, the listener and epoll.
fn fds_needed(conns: usize) -> u64 {
    2 * conns as u64 + FDS_SPARE
}

/// Descriptors beyond two per connection: the listener, epoll, stdio, the runtime.
const FDS_SPARE: u64 = 64;

/// Measures every (N, k) of `cfg`; an N the file-descriptor limit cannot hold is skipped
/// (and said so on stderr).
pub fn measure(cfg: &FloorConfig) -> anyhow::Result<FloorResult> {
    if cfg.conns.is_empty() || cfg.batches.is_empty() || cfg.submit.is_empty() {
        bail!("no connection counts, batch sizes or ways to submit to measure");
    }
    if cfg.paces.is_empty() || cfg.paces.iter().any(|p| !(p.is_finite() && *p >= 0.0)) {
        bail!("paces must be writes per second, at least 0 (0: a tight loop)");
    }
    if cfg.submit.contains(&Submit::IoUring) && cfg.paces.iter().any(|&p| p > 0.0) {
        bail!("only system-call writes (writev, sendmsg) can be paced, not io_uring rounds");
    }
    if cfg.conns.contains(&0) || cfg.batches.contains(&0) {
        bail!("connection counts and batch sizes must be at least 1");
    }
    // writev takes at most IOV_MAX (1024 on Linux) iovecs.
    if let Some(&k) = cfg.batches.iter().find(|&&k| k > 1024) {
        bail!("batch size {k} is more than one writev can take (1024)");
    }
    let max_conns = cfg.conns.iter().copied().max().unwrap_or(0);
    let nofile_limit = raise_nofile(fds_needed(max_conns))?;
    let payloads = trade_payloads(cfg.batches.iter().copied().max().unwrap_or(1));
    let frames: Vec<Vec<u8>> = payloads.iter().map(|p| ws_text_frame(p)).collect();
    let mut result = FloorResult {
        frame_bytes: frames[0].len(),
        payload_bytes: payloads[0].len(),
        duration_s: cfg.duration.as_secs_f64(),
        writer_cpu: cfg.writer_cpu,
        reader_cpu: cfg.reader_cpu,
        nofile_limit,
        points: Vec::new(),
        skipped: Vec::new(),
    };
    for &conns in &cfg.conns {
        if fds_needed(conns) > nofile_limit {
            let reason = format!(
                "needs about {} file descriptors, RLIMIT_NOFILE allows {nofile_limit} \
                 (raise `ulimit -Hn`)",
                fds_needed(conns)
            );
            eprintln!("bench floor: skipping {conns} connections: {reason}");
            result.skipped.push(Skipped { conns, reason });
            continue;
        }
        let (writers, readers) =
            open_pairs(conns).with_context(|| format!("opening {conns} loopback connections"))?;
        let reader = Reader::spawn(readers, cfg.reader_cpu)?;
        let mut written_before = 0;
        for &k in &cfg.batches {
            for &submit in &cfg.submit {
                for &pace in &cfg.paces {
                    let how = How { submit, pace };
                    let point =
                        write_point(&writers, &frames[..k], cfg, how, &reader, written_before);
                    let point = match point {
                        Ok(p) => p,
                        // Stop the reader before reporting, or its thread outlives the error;
                        // if it failed, its error is likely the cause.
                        Err(e) => return Err(reader.stop().err().unwrap_or(e)),
                    };
                    written_before += point.bytes_written;
                    result.points.push(point);
                }
            }
        }
        reader.stop()?;
    }
    Ok(result)
}

impl FloorResult {
    /// CPU µs one write system call of `k` frames costs at the floor with `conns` connections
    /// (the measured N nearest to it): the cheaper of `writev` and `sendmsg` where both were
    /// measured in a tight loop (not paced, and not io_uring, whose work partly moves to
    /// kernel threads), interpolated linearly between the measured k; beyond the largest k
    /// measured, that point's cost per frame times k. `None` without a point.
    pub fn us_per_write(&self, conns: usize, k: f64) -> Option<f64> {
        let tight = |p: &&FloorPoint| p.pace == 0.0 && p.submit != Submit::IoUring;
        let n =
            self.points.iter().filter(tight).map(|p| p.conns).min_by_key(|&n| n.abs_diff(conns))?;
        let mut pts: Vec<(f64, f64)> = Vec::new();
        for p in self.points.iter().filter(tight).filter(|p| p.conns == n) {
            match pts.iter_mut().find(|(k, _)| *k == p.k as f64) {
                Some((_, cost)) => *cost = cost.min(p.cpu_us_per_write),
                None => pts.push((p.k as f64, p.cpu_us_per_write)),
            }
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let &(k0, c0) = pts.first()?;
        let &(kn, cn) = pts.last()?;
        if k <= k0 {
            return Some(c0);
        }
        if k >= kn {
            return Some(cn / kn * k);
        }
        along(&pts, k, |k| k)
    }

    /// CPU µs a one-frame write costs beyond the tight loop's when writes come at
    /// `writes_per_s` and so find their reader asleep more or less often: the paced floor
    /// (k = 1, at the paced N nearest `conns`) less the tight one, interpolated in
    /// log(writes/s) between the paces measured; below the slowest, the slowest's; above the
    /// fastest, falling to nothing at the tight loop's own rate. `None` without paced points.
    pub fn wake_us_per_write(&self, conns: usize, writes_per_s: f64) -> Option<f64> {
        let one_frame = |p: &&FloorPoint| p.k == 1 && p.submit != Submit::IoUring;
        let paced = |p: &&FloorPoint| one_frame(p) && p.pace > 0.0;
        let n =
            self.points.iter().filter(paced).map(|p| p.conns).min_by_key(|&n| n.abs_diff(conns))?;
        let tight = self.us_per_write(n, 1.0)?;
        let mut pts: Vec<(f64, f64)> = self
            .points
            .iter()
            .filter(paced)
            .filter(|p| p.conns == n && p.writes_per_s > 0.0)
            .map(|p| (p.writes_per_s, (p.cpu_us_per_write - tight).max(0.0)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let tight_rate = self
            .points
            .iter()
            .filter(|p| one_frame(p) && p.pace == 0.0 && p.conns == n)
            .map(|p| p.writes_per_s)
            .fold(0.0, f64::max);
        if pts.last().is_some_and(|&(w, _)| tight_rate > w) {
            pts.push((tight_rate, 0.0));
        }
        let &(w0, c0) = pts.first()?;
        let &(wn, cn) = pts.last()?;
        if writes_per_s <= w0 {
            return Some(c0);
        }
        if writes_per_s >= wn {
            return Some(cn);
        }
        along(&pts, writes_per_s, f64::ln)
    }

    /// The results as a markdown table, with the setup above it.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let cpu = |c: Option<usize>| c.map_or("not pinned".to_owned(), |c| format!("CPU {c}"));
        let _ = writeln!(
            md,
            "Loopback floor: {}-byte WebSocket frames ({}-byte JSON trade), one write of k \
             frames per socket in turn (by the call the third column names; as fast as it \
             goes, or paced at the fourth column's writes per second in bursts every {} ms, \
             the CPU of its pauses between them apart in the last column), {} s per point; \
             writer {}, reader {}.\n",
            self.frame_bytes,
            self.payload_bytes,
            PACE_TICK.as_millis(),
            self.duration_s,
            cpu(self.writer_cpu),
            cpu(self.reader_cpu)
        );
        md.push_str(
            "| conns | k | submitted by | paced at | writes/s | frames/s | CPU µs/write \
             | CPU ns/frame | frames per CPU-s | writes per syscall | writer CPU share \
             | writer waits | preempted | pausing, CPU µs/write |\n\
             |---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for p in &self.points {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} % | {} | {} | {:.2} |",
                p.conns,
                p.k,
                p.submit.label(),
                if p.pace > 0.0 { format!("{:.0}", p.pace) } else { "tight".to_owned() },
                p.writes_per_s,
                p.frames_per_s,
                p.cpu_us_per_write,
                p.cpu_ns_per_frame,
                p.frames_per_cpu_s,
                p.writes as f64 / p.syscalls.max(1) as f64,
                p.writer_cpu_share * 100.0,
                p.writer_waits,
                p.writer_preemptions,
                p.pause_cpu_s * 1e6 / p.writes.max(1) as f64
            );
        }
        for s in &self.skipped {
            let _ = writeln!(md, "\nSkipped {} connections: {}.", s.conns, s.reason);
        }
        md
    }
}

/// `y` at `x` on the polyline through `pts` (sorted by x, with x within their range), straight
/// between neighbours in `scale(x)`.
fn along(pts: &[(f64, f64)], x: f64, scale: impl Fn(f64) -> f64) -> Option<f64> {
    pts.windows(2).find(|w| x <= w[1].0).map(|w| {
        let ((xa, ya), (xb, yb)) = (w[0], w[1]);
        ya + (yb - ya) * (scale(x) - scale(xa)) / (scale(xb) - scale(xa))
    })
}

/// The largest number of connections the floor can open with this process's open-files limit
/// (two descriptors each), up to `wanted`.
pub fn conns_within_limit(wanted: usize) -> usize {
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
    let fit = usize::try_from(limit.saturating_sub(FDS_SPARE) / 2).unwrap_or(usize::MAX);
    wanted.min(fit).max(1)
}

/// The JSON of `k` distinct trades on `trades.BTC-USD`, all of one length, as
/// `tickfan_proto::encode` writes them.
pub fn trade_payloads(k: usize) -> Vec<Vec<u8>> {
    let sym = Symbol { name: "BTC-USD".into(), px_scale: 2, qty_scale: 8 };
    (0..k as u64)
        .map(|i| {
            let tick = Tick {
                sym: 0,
                seq: 18_236_000 + i,
                ts: 1_760_000_000_000_000_000 + i * 1_000_000,
                et: 0,
                body: TickBody::Trade(Trade {
                    id: 912_345_000 + i,
                    px: 6_412_345 + i as i64,
                    qty: 1_500_000,
                    side: Side::Buy,
                }),
            };
            let mut payload = Vec::with_capacity(128);
            write_tick_message(&mut payload, &tick, &sym, None);
            payload
        })
        .collect()
}

/// An unmasked (server → client) WebSocket text frame with FIN set, as tickfan sends them.
pub fn ws_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x81);
    match payload.len() {
        n @ 0..=125 => frame.push(n as u8),
        n @ 126..=0xffff => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// `conns` connected loopback pairs: (the ends the writer writes, the ends the reader reads).
fn open_pairs(conns: usize) -> io::Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (mut writers, mut readers) = (Vec::with_capacity(conns), Vec::with_capacity(conns));
    for _ in 0..conns {
        let client = TcpStream::connect(addr)?;
        let (server, _) = listener.accept()?;
        // As a server sending ticks would: no Nagle delay on small writes.
        server.set_nodelay(true)?;
        client.set_nonblocking(true)?;
        writers.push(server);
        readers.push(client);
    }
    Ok((writers, readers))
}

/// How one point's writes are made: by which call, and at what pace (0: a tight loop).
#[derive(Clone, Copy)]
struct How {
    submit: Submit,
    pace: f64,
}

/// Measures one k on the connections of `writers`, written as `how` says: a warm-up pass,
/// then writes for `cfg.duration`, then waits until the reader has received every byte.
fn write_point(
    writers: &[TcpStream],
    frames: &[Vec<u8>],
    cfg: &FloorConfig,
    how: How,
    reader: &Reader,
    written_before: u64,
) -> anyhow::Result<FloorPoint> {
    let How { submit, pace } = how;
    let k = frames.len();
    let iov: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
    let per_write: u64 = frames.iter().map(|f| f.len() as u64).sum();
    let read_before = reader.bytes.load(Ordering::Acquire);
    let w = std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<WriterStats> {
            if let Some(cpu) = cfg.writer_cpu {
                pin_current_thread(cpu).context("pinning the writer")?;
            }
            let mut ring = match submit {
                Submit::Writev | Submit::Sendmsg => None,
                Submit::IoUring => Some(uring::ring().context("setting up io_uring")?),
            };
            // (system calls, short writes) of one round over every socket.
            let mut round = || -> io::Result<(u64, u64)> {
                match &mut ring {
                    None => {
                        let mut short = 0;
                        for w in writers {
                            short += write_all(submit, w, &iov, per_write)?;
                        }
                        Ok((writers.len() as u64, short))
                    }
                    Some(ring) => uring::write_round(ring, writers, &iov, per_write),
                }
            };
            let (_, mut short_writes) = round()?;
            let start = Instant::now();
            let cpu_start = thread_cpu_time()? + helpers_cpu(submit)?;
            let switches_start = thread_context_switches()?;
            let deadline = start + cfg.duration;
            let (mut writes, mut syscalls) = (0u64, 0u64);
            // Paced, only the bursts' CPU counts: what the writes cost, not the sleeping.
            let mut sleeping = Duration::ZERO;
            if pace > 0.0 {
                // The writes due by now, one socket after another, then sleep to the next tick.
                let mut next = 0;
                while Instant::now() < deadline {
                    let due = (start.elapsed().min(cfg.duration).as_secs_f64() * pace) as u64;
                    while writes < due {
                        short_writes += write_all(submit, &writers[next], &iov, per_write)?;
                        next = (next + 1) % writers.len();
                        (writes, syscalls) = (writes + 1, syscalls + 1);
                    }
                    let tick = start.elapsed().as_nanos() / PACE_TICK.as_nanos();
                    let wake = start + PACE_TICK * (tick as u32 + 1);
                    if let Some(d) = wake.checked_duration_since(Instant::now()) {
                        let before = thread_cpu_time()?;
                        std::thread::sleep(d);
                        sleeping += thread_cpu_time()? - before;
                    }
                }
            } else {
                loop {
                    let (calls, short) = round()?;
                    (syscalls, short_writes) = (syscalls + calls, short_writes + short);
                    writes += writers.len() as u64;
                    if Instant::now() >= deadline {
                        break;
                    }
                }
            }
            let cpu = thread_cpu_time()? + helpers_cpu(submit)? - cpu_start - sleeping;
            let switches = thread_context_switches()?;
            Ok(WriterStats {
                writes,
                syscalls,
                short_writes,
                wall: start.elapsed(),
                cpu,
                pause_cpu: sleeping,
                waits: switches.0 - switches_start.0,
                preemptions: switches.1 - switches_start.1,
            })
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })?;
    let warmup_writes = writers.len() as u64;
    let bytes_written = (w.writes + warmup_writes) * per_write;
    let bytes_read = reader.wait_for(read_before, written_before + bytes_written)?;
    if bytes_read != bytes_written {
        bail!(
            "(N={}, k={k}, {}): wrote {bytes_written} bytes, read {bytes_read}",
            writers.len(),
            submit.label()
        );
    }
    let (wall_s, cpu_s) = (w.wall.as_secs_f64(), w.cpu.as_secs_f64());
    let frames = w.writes * k as u64;
    Ok(FloorPoint {
        conns: writers.len(),
        k,
        submit,
        pace,
        writes: w.writes,
        syscalls: w.syscalls,
        frames,
        warmup_writes,
        bytes_written,
        bytes_read,
        short_writes: w.short_writes,
        wall_s,
        cpu_s,
        pause_cpu_s: w.pause_cpu.as_secs_f64(),
        cpu_us_per_write: cpu_s * 1e6 / w.writes as f64,
        cpu_ns_per_frame: cpu_s * 1e9 / frames as f64,
        writes_per_s: w.writes as f64 / wall_s,
        frames_per_s: frames as f64 / wall_s,
        frames_per_cpu_s: frames as f64 / cpu_s,
        writer_cpu_share: cpu_s / wall_s,
        writer_waits: w.waits,
        writer_preemptions: w.preemptions,
    })
}

/// CPU time of the helper threads `submit` may move work to (io_uring's), else zero.
fn helpers_cpu(submit: Submit) -> io::Result<Duration> {
    match submit {
        Submit::Writev | Submit::Sendmsg => Ok(Duration::ZERO),
        Submit::IoUring => uring::helper_threads_cpu(),
    }
}

struct WriterStats {
    writes: u64,
    syscalls: u64,
    short_writes: u64,
    wall: Duration,
    cpu: Duration,
    pause_cpu: Duration,
    waits: u64,
    preemptions: u64,
}

/// One write system call of `iov` (`total` bytes) to the blocking socket `w`, `sendmsg` or
/// else `writev` as `submit` says; if the kernel took less, writes the rest. Returns 1 if the
/// write was short, else 0.
fn write_all(
    submit: Submit,
    mut w: &TcpStream,
    iov: &[IoSlice<'_>],
    total: u64,
) -> io::Result<u64> {
    let n = match submit {
        Submit::Sendmsg => SockRef::from(w).send_vectored_with_flags(iov, libc::MSG_NOSIGNAL)?,
        Submit::Writev | Submit::IoUring => w.write_vectored(iov)?,
    };
    if n as u64 == total {
        return Ok(0);
    }
    finish_write(w, iov, n)?;
    Ok(1)
}

/// Writes what is left of `iov` after its first `done` bytes to the blocking socket `w`.
fn finish_write(mut w: &TcpStream, iov: &[IoSlice<'_>], done: usize) -> io::Result<()> {
    let mut rest: Vec<IoSlice<'_>> = iov.to_vec();
    let mut rest = &mut rest[..];
    IoSlice::advance_slices(&mut rest, done);
    while !rest.is_empty() {
        match w.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The reader thread: drains every receiving end through epoll and counts the bytes.
struct Reader {
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    thread: JoinHandle<io::Result<()>>,
}

impl Reader {
    fn spawn(socks: Vec<TcpStream>, cpu: Option<usize>) -> anyhow::Result<Reader> {
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let epoll = Epoll::new(&socks).context("setting up epoll")?;
        let (stop2, bytes2) = (stop.clone(), bytes.clone());
        let thread = std::thread::Builder::new().name("floor-reader".into()).spawn(move || {
            if let Some(cpu) = cpu {
                pin_current_thread(cpu)?;
            }
            read_loop(&epoll, &socks, &stop2, &bytes2)
        })?;
        Ok(Reader { stop, bytes, thread })
    }

    /// Waits until the reader's total reaches `target` (or 30 s pass); returns what it read
    /// since the total was `since`.
    fn wait_for(&self, since: u64, target: u64) -> anyhow::Result<u64> {
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.bytes.load(Ordering::Acquire);
            if now >= target || self.thread.is_finished() || Instant::now() > give_up {
                return Ok(now - since);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Release);
        match self.thread.join() {
            Ok(result) => result.context("the reader thread"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

fn read_loop(
    epoll: &Epoll,
    socks: &[TcpStream],
    stop: &AtomicBool,
    bytes: &AtomicU64,
) -> io::Result<()> {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Acquire) {
        let ready = epoll.wait(&mut events, 20)?;
        for event in &events[..ready] {
            // Level-triggered: one large read per event; what is left is reported again.
            let mut sock = &socks[event.u64 as usize];
            match sock.read(&mut buf) {
                Ok(0) => return Err(io::Error::other("a writer closed its connection early")),
                Ok(n) => {
                    bytes.fetch_add(n as u64, Ordering::Release);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// An epoll instance watching sockets for input, each registered with its index.
struct Epoll(OwnedFd);

impl Epoll {
    fn new(socks: &[TcpStream]) -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new fd that
        // nothing else owns, so OwnedFd may take (and later close) it.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above.
        let epoll = Epoll(unsafe { OwnedFd::from_raw_fd(fd) });
        for (i, sock) in socks.iter().enumerate() {
            let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
            // SAFETY: both fds are open (owned by `epoll` and `socks`), and `event` is a valid
            // epoll_event that the kernel only reads during the call.
            let rc = unsafe {
                libc::epoll_ctl(
                    epoll.0.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    sock.as_raw_fd(),
                    &mut event,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(epoll)
    }

    /// Waits up to `timeout_ms` for events; returns how many of `events` were filled.
    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: `events` is a valid, writable buffer of at least `max` epoll_events, and
        // the epoll fd is open for as long as `self` lives.
        let n =
            unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(e) };
        }
        Ok(n as usize)
    }
}

/// CPU time consumed by the calling thread so far.
fn thread_cpu_time() -> io::Result<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the kernel to write into.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// (voluntary, involuntary) context switches of the calling thread so far.
fn thread_context_switches() -> io::Result<(u64, u64)> {
    // SAFETY: rusage is plain integers and timevals, for which all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage for the kernel to write into.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((usage.ru_nvcsw as u64, usage.ru_nivcsw as u64))
}

/// Pins the calling thread to `cpu`.
fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::other(format!("CPU {cpu} is out of range")));
    }
    // SAFETY: cpu_set_t is a plain bit array, for which all zeroes is a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so CPU_SET stays inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("cannot pin to CPU {cpu}: {e}")));
    }
    Ok(())
}

/// The CPUs this process may run on, ascending.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: as in `pin_current_thread`, all zeroes is an empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the kernel writes at most size_of(set) bytes.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: every cpu tested is below CPU_SETSIZE, inside `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// (writer, reader) CPUs by default: the first two this process may use; with only one, the
/// writer is pinned to it and the reader is not pinned.
pub fn default_cpus() -> (Option<usize>, Option<usize>) {
    let cpus = allowed_cpus();
    (cpus.first().copied(), cpus.get(1).copied())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, and both to `wanted` if the hard limit
/// is lower and the process may raise it (CAP_SYS_RESOURCE). Returns the soft limit now.
fn raise_nofile(wanted: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for the kernel to write into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_max < wanted {
        let more = libc::rlimit { rlim_cur: wanted, rlim_max: wanted };
        // SAFETY: `more` is a valid rlimit the kernel only reads. Failure (EPERM without the
        // capability) leaves the limits as they were.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &more) } == 0 {
            return Ok(wanted);
        }
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
    }
    Ok(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_tickfan_trades_in_unmasked_text_frames() {
        let frames: Vec<_> = trade_payloads(3).iter().map(|p| ws_text_frame(p)).collect();
        for f in &frames {
            // Payloads of 126 bytes and more carry their length in 2 more bytes.
            let (len, payload) = match f[1] {
                126 => (usize::from(u16::from_be_bytes([f[2], f[3]])), &f[4..]),
                n => (usize::from(n), &f[2..]),
            };
            assert_eq!((f[0], len), (0x81, payload.len()));
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(v["ch"], "trades.BTC-USD");
        }
        assert_ne!(frames[0], frames[1]);
        assert!(frames.iter().all(|f| f.len() == frames[0].len()));
        assert!((110..=140).contains(&frames[0].len()), "{}", frames[0].len());
        let long = ws_text_frame(&[b'x'; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
    }

    /// A floor point with only what the cost lookups read set.
    fn synthetic_point(
        conns: usize,
        k: usize,
        submit: Submit,
        pace: f64,
        writes_per_s: f64,
        us: f64,
    ) -> FloorPoint {
        FloorPoint {
            conns,
            k,
            submit,
            pace,
            writes: 0,
            syscalls: 0,
            frames: 0,
            warmup_writes: 0,
            bytes_written: 0,
            bytes_read: 0,
            short_writes: 0,
            wall_s: 1.0,
            cpu_s: 1.0,
            pause_cpu_s: 0.0,
            cpu_us_per_write: us,
            cpu_ns_per_frame: 0.0,
            writes_per_s,
            frames_per_s: 0.0,
            frames_per_cpu_s: 0.0,
            writer_cpu_share: 1.0,
            writer_waits: 0,
            writer_preemptions: 0,
        }
    }

    fn synthetic_floor(points: Vec<FloorPoint>) -> FloorResult {
        FloorResult {
            frame_bytes: 130,
            payload_bytes: 126,
            duration_s: 1.0,
            writer_cpu: None,
            reader_cpu: None,
            nofile_limit: 20_000,
            points,
            skipped: vec![],
        }
    }

    #[test]
    fn cost_per_write_interpolates_between_measured_batches() {
        let point = |conns, k, us| synthetic_point(conns, k, Submit::Writev, 0.0, 0.0, us);
        let floor =
            synthetic_floor(vec![point(100, 1, 5.0), point(100, 4, 8.0), point(1000, 1, 7.0)]);
        assert_eq!(floor.us_per_write(100, 1.0), Some(5.0));
        assert_eq!(floor.us_per_write(100, 0.5), Some(5.0), "never below one frame's write");
        assert_eq!(floor.us_per_write(100, 2.5), Some(6.5));
        assert_eq!(floor.us_per_write(100, 8.0), Some(16.0), "per frame beyond the largest k");
        assert_eq!(floor.us_per_write(900, 1.0), Some(7.0), "the nearest N measured");
        let empty = FloorResult { points: vec![], ..floor };
        assert_eq!(empty.us_per_write(100, 1.0), None);
    }

    #[test]
    fn the_wake_up_surcharge_interpolates_by_rate_and_fades_at_the_tight_rate() {
        let point = |k, pace, writes_per_s, us| {
            synthetic_point(1000, k, Submit::Sendmsg, pace, writes_per_s, us)
        };
        let floor = synthetic_floor(vec![
            point(1, 0.0, 300_000.0, 3.0),
            point(4, 0.0, 250_000.0, 4.0),
            point(1, 10_000.0, 10_000.0, 9.0),
            point(1, 100_000.0, 100_000.0, 5.0),
        ]);
        let wake = |w| floor.wake_us_per_write(1000, w).unwrap();
        assert_eq!(wake(10_000.0), 6.0, "paced less tight");
        assert_eq!(wake(1_000.0), 6.0, "below the slowest pace, the slowest's");
        assert!((wake(31_622.776_601_683_792) - 4.0).abs() < 1e-9, "halfway in log(rate)");
        assert_eq!(wake(100_000.0), 2.0);
        assert_eq!(wake(300_000.0), 0.0, "nothing at the tight loop's own rate");
        assert_eq!(wake(1e6), 0.0);
        // The tight floor is untouched by the paced points.
        assert_eq!(floor.us_per_write(1000, 1.0), Some(3.0));
        let tight_only = FloorResult { points: floor.points[..2].to_vec(), ..floor };
        assert_eq!(tight_only.wake_us_per_write(1000, 10_000.0), None);
    }

    #[test]
    fn a_tiny_floor_counts_consistently() {
        let cfg = FloorConfig {
            conns: vec![4],
            batches: vec![1, 4],
            duration: Duration::from_millis(100),
            writer_cpu: None,
            reader_cpu: None,
            submit: vec![Submit::Writev, Submit::Sendmsg],
            paces: vec![0.0],
        };
        let r = measure(&cfg).unwrap();
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        let (w, s) = (Submit::Writev, Submit::Sendmsg);
        let points: Vec<_> = r.points.iter().map(|p| (p.conns, p.k, p.submit)).collect();
        assert_eq!(points, [(4, 1, w), (4, 1, s), (4, 4, w), (4, 4, s)]);
        for p in &r.points {
            assert!(p.writes > 0 && p.writes % 4 == 0, "{p:?}");
            assert_eq!(p.syscalls, p.writes, "one system call per write");
            assert_eq!(p.frames, p.writes * p.k as u64);
            assert_eq!(p.warmup_writes, 4);
            let per_write = r.frame_bytes as u64 * p.k as u64;
            assert_eq!(p.bytes_written, (p.writes + p.warmup_writes) * per_write);
            assert_eq!(p.bytes_read, p.bytes_written);
            assert!(p.cpu_s > 0.0 && p.wall_s >= 0.1, "{p:?}");
        }
        let md = r.markdown();
        assert!(md.contains("| 4 | 4 |"), "{md}");
        let json: FloorResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(json.points.len(), 4);
        assert_eq!((json.points[1].writes, json.frame_bytes), (r.points[1].writes, r.frame_bytes));
    }

    #[test]
    fn a_tiny_io_uring_floor_counts_consistently_and_submits_rounds() {
        if let Err(e) = uring::ring() {
            // Containers often forbid io_uring (seccomp, kernel.io_uring_disabled).
            eprintln!("skipped: this process may not use io_uring: {e}");
            return;
        }
        let cfg = FloorConfig {
            conns: vec![8],
            batches: vec![1, 3],
            duration: Duration::from_millis(100),
            writer_cpu: None,
            reader_cpu: None,
            submit: vec![Submit::IoUring, Submit::Writev],
            paces: vec![0.0],
        };
        let r = measure(&cfg).unwrap();
        let ways: Vec<_> = r.points.iter().map(|p| (p.k, p.submit)).collect();
        assert_eq!(
            ways,
            [(1, Submit::IoUring), (1, Submit::Writev), (3, Submit::IoUring), (3, Submit::Writev)]
        );
        for p in r.points.iter().filter(|p| p.submit == Submit::IoUring) {
            let per_write = r.frame_bytes as u64 * p.k as u64;
            assert_eq!(p.bytes_read, (p.writes + p.warmup_writes) * per_write, "{p:?}");
            // One enter per round of 8 writes, more only if completions came in pieces.
            assert!(p.syscalls >= p.writes / 8 && p.syscalls < p.writes, "{p:?}");
        }
        // The floor a server is held against is a system call's, never io_uring's.
        let writev = r.points.iter().find(|p| p.k == 1 && p.submit == Submit::Writev).unwrap();
        assert_eq!(r.us_per_write(8, 1.0), Some(writev.cpu_us_per_write));
        assert!(r.markdown().contains("| 8 | 3 | io_uring |"), "{}", r.markdown());
    }

    #[test]
    fn a_paced_floor_writes_at_its_pace_and_is_not_the_tight_floor() {
        let cfg = FloorConfig {
            conns: vec![4],
            batches: vec![1],
            duration: Duration::from_millis(300),
            writer_cpu: None,
            reader_cpu: None,
            submit: vec![Submit::Sendmsg],
            paces: vec![0.0, 2000.0],
        };
        let r = measure(&cfg).unwrap();
        let paces: Vec<_> = r.points.iter().map(|p| p.pace).collect();
        assert_eq!(paces, [0.0, 2000.0]);
        let (tight, paced) = (&r.points[0], &r.points[1]);
        // 2,000 writes/s for 0.3 s: 600 writes at most; fewer if the last ticks woke late
        // (a busy test machine), never more.
        assert!((300..=600).contains(&paced.writes), "{paced:?}");
        assert_eq!(paced.bytes_read, paced.bytes_written, "{paced:?}");
        assert!(paced.writer_waits >= 100, "a paced writer sleeps between ticks: {paced:?}");
        assert!(paced.pause_cpu_s > 0.0 && tight.pause_cpu_s == 0.0, "{paced:?} {tight:?}");
        assert!(tight.writes > paced.writes, "{tight:?}");
        // A server is held against the tight loop's cost, never a paced one.
        assert_eq!(r.us_per_write(4, 1.0), Some(tight.cpu_us_per_write));
        assert!(r.markdown().contains("| 4 | 1 | sendmsg | 2000 |"), "{}", r.markdown());
        assert!(r.markdown().contains("| 4 | 1 | sendmsg | tight |"), "{}", r.markdown());
    }

    #[test]
    fn rejects_paces_that_are_not_rates_and_paced_io_uring() {
        let paced = |submit, pace| FloorConfig {
            conns: vec![2],
            batches: vec![1],
            submit: vec![submit],
            paces: vec![pace],
            ..FloorConfig::default()
        };
        for bad in [paced(Submit::Writev, -1.0), paced(Submit::Writev, f64::NAN)] {
            let e = measure(&bad).unwrap_err().to_string();
            assert!(e.contains("paces must be writes per second"), "{e}");
        }
        let e = measure(&paced(Submit::IoUring, 100.0)).unwrap_err().to_string();
        assert!(e.contains("not io_uring"), "{e}");
        let e = measure(&FloorConfig { paces: vec![], ..paced(Submit::Writev, 0.0) });
        assert!(e.is_err());
    }

    #[test]
    fn rejects_empty_and_zero_lists() {
        let cfg = FloorConfig { batches: vec![0], ..FloorConfig::default() };
        assert!(measure(&cfg).is_err());
        let cfg = FloorConfig { conns: vec![], ..FloorConfig::default() };
        assert!(measure(&cfg).is_err());
    }
}
