//! The load client: N real WebSocket connections on a multi-threaded runtime, each checking
//! seq continuity per channel and sampling end-to-end latency of every message.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use fastwebsockets::{OpCode, WebSocket};
use hdrhistogram::Histogram;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tickfan_proto::unix_now_ns;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::report::{cpu_seconds, latency_histogram, LatencySummary, Report};
use crate::scan::{scan, Scanned};
use crate::seq::SeqTracker;

/// A connected client WebSocket.
pub type ClientSocket = WebSocket<TokioIo<Upgraded>>;

/// Histogram shards: connections record into `shard = conn % SHARDS`, in batches.
const SHARDS: usize = 64;
/// Latency samples buffered per connection before taking a shard's lock.
const SAMPLE_BATCH: usize = 256;

/// What to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Target, e.g. `ws://127.0.0.1:8080/ws`.
    pub target: String,
    /// Connections to open.
    pub conns: usize,
    /// Channels each connection subscribes to (the `?streams=` value), e.g. `trades.*`.
    pub streams: String,
    /// Measured time, after warm-up.
    pub duration: Duration,
    /// Time after the last connection is up before measuring starts.
    pub warmup: Duration,
    /// Gateway process to sample CPU time from (`/proc/PID/stat`), if local.
    pub server_pid: Option<u32>,
}

/// Counters shared by every connection task.
#[derive(Debug)]
struct Shared {
    msgs: AtomicU64,
    payload_bytes: AtomicU64,
    declared_gaps: AtomicU64,
    undeclared_gaps: AtomicU64,
    /// Set once warm-up is over: only then are messages counted and latencies recorded.
    measuring: std::sync::atomic::AtomicBool,
    hist: Vec<Mutex<Histogram<u64>>>,
}

/// Splits `ws://host:port/path?query` into an address and a request path.
pub async fn resolve_target(target: &str) -> anyhow::Result<(SocketAddr, String)> {
    let rest = target
        .strip_prefix("ws://")
        .context("the target must be a ws:// URL (wss:// is not supported yet)")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let addr = tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to no address"))?;
    Ok((addr, path))
}

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn(fut);
    }
}

/// Opens one WebSocket connection to `ws://addr{path}` with fastwebsockets' client handshake.
/// `recv_buffer` shrinks the socket's receive buffer (to simulate a client that cannot absorb
/// a backlog).
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    recv_buffer: Option<u32>,
) -> anyhow::Result<ClientSocket> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let stream: TcpStream =
        socket.connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let req = Request::builder()
        .method("GET")
        .uri(format!("http://{addr}{path}"))
        .header("Host", addr.to_string())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", fastwebsockets::handshake::generate_key())
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())?;
    let (mut ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
        .await
        .with_context(|| format!("WebSocket handshake with {addr}{path} failed"))?;
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    Ok(ws)
}

/// Runs the load and returns the report. Must be called inside a multi-threaded runtime.
pub async fn run(cfg: RunConfig) -> anyhow::Result<Report> {
    if cfg.conns == 0 {
        bail!("--conns must be at least 1");
    }
    let (addr, mut path) = resolve_target(&cfg.target).await?;
    path.push(if path.contains('?') { '&' } else { '?' });
    path.push_str("streams=");
    path.push_str(&cfg.streams);

    let shared = Arc::new(Shared {
        msgs: AtomicU64::new(0),
        payload_bytes: AtomicU64::new(0),
        declared_gaps: AtomicU64::new(0),
        undeclared_gaps: AtomicU64::new(0),
        measuring: std::sync::atomic::AtomicBool::new(false),
        hist: (0..SHARDS).map(|_| Mutex::new(latency_histogram())).collect(),
    });

    // Connect everyone first (in waves, so the listen backlog is not overrun), then warm up.
    let connect_started = Instant::now();
    let mut sockets = Vec::with_capacity(cfg.conns);
    let mut failed = 0usize;
    let mut first_error = None;
    let mut remaining = cfg.conns;
    while remaining > 0 {
        let wave = remaining.min(256);
        remaining -= wave;
        let attempts: Vec<_> = (0..wave)
            .map(|_| {
                let path = path.clone();
                tokio::spawn(async move { connect(addr, &path, None).await })
            })
            .collect();
        for a in attempts {
            match a.await? {
                Ok(ws) => sockets.push(ws),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(format!("{e:#}"));
                }
            }
        }
    }
    let connect_time = connect_started.elapsed();
    if sockets.is_empty() {
        bail!("no connection succeeded: {}", first_error.unwrap_or_default());
    }

    let end = Instant::now() + cfg.warmup + cfg.duration;
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| tokio::spawn(drive(ws, i % SHARDS, shared.clone(), end)))
        .collect();
    tokio::time::sleep(cfg.warmup).await;
    let (client_cpu0, server_cpu0) =
        (cpu_seconds(None), cfg.server_pid.and_then(|p| cpu_seconds(Some(p))));
    shared.measuring.store(true, Ordering::Release);
    let measured_from = Instant::now();
    let mut ended_early = 0;
    for t in tasks {
        if !t.await? {
            ended_early += 1;
        }
    }
    let measured = measured_from.elapsed();
    let client_cpu = cpu_seconds(None).zip(client_cpu0).map(|(b, a)| b - a);
    let server_cpu =
        cfg.server_pid.and_then(|p| cpu_seconds(Some(p))).zip(server_cpu0).map(|(b, a)| b - a);

    let mut hist = latency_histogram();
    for shard in &shared.hist {
        hist.add(&*shard.lock().expect("no panics while recording")).expect("same bounds");
    }
    let secs = measured.as_secs_f64();
    let msgs = shared.msgs.load(Ordering::Relaxed);
    let payload_bytes = shared.payload_bytes.load(Ordering::Relaxed);
    Ok(Report {
        target: cfg.target.clone(),
        streams: cfg.streams.clone(),
        conns: cfg.conns,
        connected: cfg.conns - failed,
        failed_connects: failed,
        first_connect_error: first_error,
        ended_early,
        connect_seconds: connect_time.as_secs_f64(),
        measured_seconds: secs,
        msgs,
        msgs_per_sec: msgs as f64 / secs,
        payload_bytes,
        payload_bytes_per_sec: payload_bytes as f64 / secs,
        declared_gaps: shared.declared_gaps.load(Ordering::Relaxed),
        undeclared_gaps: shared.undeclared_gaps.load(Ordering::Relaxed),
        latency_us: LatencySummary::from(&hist),
        client_cpu_cores: client_cpu.map(|c| c / secs),
        server_cpu_cores: server_cpu.map(|c| c / secs),
        msgs_per_server_cpu_sec: server_cpu.filter(|&c| c > 0.0).map(|c| msgs as f64 / c),
    })
}

/// Reads one connection until `end`. Returns `false` if the connection ended before that.
async fn drive(mut ws: ClientSocket, shard: usize, shared: Arc<Shared>, end: Instant) -> bool {
    let mut seqs = SeqTracker::default();
    let mut samples: Vec<u64> = Vec::with_capacity(SAMPLE_BATCH);
    let (mut msgs, mut bytes) = (0u64, 0u64);
    let survived = loop {
        let frame = tokio::select! {
            _ = tokio::time::sleep_until(end) => break true,
            frame = ws.read_frame() => match frame {
                Ok(f) => f,
                Err(_) => break false,
            },
        };
        match frame.opcode {
            OpCode::Text => {}
            OpCode::Close => break false,
            _ => continue,
        }
        let msg = scan(&frame.payload);
        seqs.observe(msg);
        if let Scanned::Data { ts, .. } = msg {
            if shared.measuring.load(Ordering::Relaxed) {
                msgs += 1;
                bytes += frame.payload.len() as u64;
                samples.push(unix_now_ns().saturating_sub(ts) / 1000);
                if samples.len() == SAMPLE_BATCH {
                    record(&shared, shard, &mut samples);
                }
            }
        }
    };
    record(&shared, shard, &mut samples);
    shared.msgs.fetch_add(msgs, Ordering::Relaxed);
    shared.payload_bytes.fetch_add(bytes, Ordering::Relaxed);
    shared.declared_gaps.fetch_add(seqs.declared_gaps, Ordering::Relaxed);
    shared.undeclared_gaps.fetch_add(seqs.undeclared_gaps, Ordering::Relaxed);
    survived
}

fn record(shared: &Shared, shard: usize, samples: &mut Vec<u64>) {
    let mut h = shared.hist[shard].lock().expect("no panics while recording");
    for &us in samples.iter() {
        h.saturating_record(us.max(1));
    }
    samples.clear();
}
