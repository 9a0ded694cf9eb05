//! The load client: N real WebSocket connections on a multi-threaded runtime, each checking
//! seq continuity per channel and sampling end-to-end latency of every message.
//!
//! Two wire protocols: tickfan's own (also spoken by the `ws` and naive-Rust baselines:
//! `?streams=` in the URL, one JSON object per text frame), and socket.io v5 over the engine.io
//! v4 websocket transport, spoken here directly (open packet `0{…}`, namespace connect `40`,
//! events `42[…]`, ping `2` answered by pong `3`) so that a socket.io server is measured with
//! the same client machinery as everything else.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use hdrhistogram::Histogram;
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use tickfan_proto::unix_now_ns;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::report::{
    cpu_seconds, latency_histogram, rss_bytes, thread_cpu_seconds, threads_named, LatencySummary,
    Report,
};
use crate::scan::{scan, Scanned};
use crate::seq::SeqTracker;
use crate::wire::{self, RawWs};

/// A connected client WebSocket.
pub type ClientSocket = WebSocket<TokioIo<Upgraded>>;

/// Histogram shards: connections record into `shard = conn % SHARDS`, in batches.
const SHARDS: usize = 64;
/// Latency samples buffered per connection before taking a shard's lock.
const SAMPLE_BATCH: usize = 256;
/// Connection attempts in flight at once, so that the server's listen backlog is not overrun.
const CONNECTS_IN_FLIGHT: usize = 256;
/// Connections per source address before the next 127.0.0.x is used: well inside the ~28k
/// ephemeral ports Linux gives each source address by default.
const CONNS_PER_SOURCE: usize = 20_000;
/// Time allowed for a connection's WebSocket and socket.io handshakes.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The wire protocol the client speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// tickfan's protocol (`?streams=`; data messages are bare JSON objects). The `ws` and
    /// naive-Rust baselines speak it too.
    #[default]
    Tickfan,
    /// socket.io v5 over engine.io v4's websocket transport: subscribes by emitting
    /// `subscribe` with the stream list, receives `42["tick",{…}]` events.
    Socketio,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Target, e.g. `ws://127.0.0.1:8080/ws`. For socket.io, `ws://host:port` (the engine.io
    /// path `/socket.io/?EIO=4&transport=websocket` is the default).
    pub target: String,
    pub protocol: Protocol,
    /// Connections to open.
    pub conns: usize,
    /// Channels each connection subscribes to, comma-separated, e.g. `trades.*,quotes.BTC-USD`.
    /// With [`RunConfig::random_symbols`], `{sym}` stands for each symbol drawn for the
    /// connection: `trades.{sym},book.{sym}`.
    pub streams: String,
    /// Draw symbols per connection for the `{sym}` of `streams`.
    pub random_symbols: Option<RandomSymbols>,
    /// Measured time, after warm-up.
    pub duration: Duration,
    /// Time after the last connection is up before measuring starts.
    pub warmup: Duration,
    /// Connections opened per second (`None`: as fast as the server accepts them).
    pub ramp: Option<f64>,
    /// 127.0.0.x source addresses to spread connections over (0: one per 20,000 connections
    /// when the target is a 127.x address; the OS's choice otherwise).
    pub source_ips: usize,
    /// Server processes (e.g. a gateway, or a baseline) whose CPU time and memory are sampled
    /// from `/proc`.
    pub server_pids: Vec<u32>,
    /// Processes that feed the server (e.g. `feed-sim` piped into a baseline): their CPU time
    /// is reported as the feed's, not the server's.
    pub feed_pids: Vec<u32>,
    /// Threads of the server processes with this name (e.g. the gateway's `tickfan-feed`) are
    /// its feed: their CPU time is reported as the feed's, not the server's.
    pub feed_thread: Option<String>,
    /// Count the server's write-family syscalls over the measured window with `perf stat`
    /// (the feed's threads left out); the report says why not where that is impossible.
    pub count_writes: bool,
    /// Draw progress bars on stderr (only when it is a terminal).
    pub progress: bool,
    /// The gateway's Prometheus endpoint (`http://HOST:PORT/metrics`), scraped when measuring
    /// starts and ends to report its internal latency beside the end-to-end latency.
    pub metrics_url: Option<String>,
}

impl RunConfig {
    /// A short run of 10 connections on `trades.*` against `target`, tickfan protocol.
    pub fn new(target: impl Into<String>) -> RunConfig {
        RunConfig {
            target: target.into(),
            protocol: Protocol::Tickfan,
            conns: 10,
            streams: "trades.*".to_owned(),
            random_symbols: None,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            ramp: None,
            source_ips: 0,
            server_pids: Vec::new(),
            feed_pids: Vec::new(),
            feed_thread: None,
            count_writes: false,
            progress: false,
            metrics_url: None,
        }
    }
}

/// Each connection subscribes to `per_conn` symbols drawn from `universe`, differently per
/// connection but the same from run to run for a given `seed`.
#[derive(Clone, Debug)]
pub struct RandomSymbols {
    pub per_conn: usize,
    pub universe: Vec<String>,
    pub seed: u64,
}

impl RandomSymbols {
    /// `per_conn` of the `symbols` names the simulated feed (and a gateway started with
    /// `--symbols symbols`) uses.
    pub fn from_feed(per_conn: usize, symbols: usize, seed: u64) -> anyhow::Result<RandomSymbols> {
        let cfg = feed_sim::SimConfig { symbols, ..feed_sim::SimConfig::default() };
        let feed = feed_sim::Feed::try_new(cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
        let universe: Vec<String> = feed.symbols().iter().map(|s| s.name.clone()).collect();
        if per_conn == 0 || per_conn > universe.len() {
            bail!("--random-symbols must be between 1 and --symbols ({})", universe.len());
        }
        Ok(RandomSymbols { per_conn, universe, seed })
    }

    /// The symbols of connection `conn`: a partial Fisher–Yates shuffle driven by splitmix64.
    pub fn pick(&self, conn: usize) -> Vec<&str> {
        let mut state = self.seed ^ (conn as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut idx: Vec<usize> = (0..self.universe.len()).collect();
        for i in 0..self.per_conn {
            let j = i + (next() % (idx.len() - i) as u64) as usize;
            idx.swap(i, j);
        }
        idx[..self.per_conn].iter().map(|&i| self.universe[i].as_str()).collect()
    }
}

/// The streams connection `conn` subscribes to: `template` with every spec that contains
/// `{sym}` repeated for each of the connection's symbols.
pub fn streams_for(template: &str, conn: usize, random: Option<&RandomSymbols>) -> String {
    let Some(random) = random else { return template.to_owned() };
    let picks = random.pick(conn);
    let mut out = Vec::new();
    for spec in template.split(',').filter(|s| !s.is_empty()) {
        if spec.contains("{sym}") {
            out.extend(picks.iter().map(|sym| spec.replace("{sym}", sym)));
        } else {
            out.push(spec.to_owned());
        }
    }
    out.join(",")
}

/// Counters shared by every connection task.
#[derive(Debug)]
struct Shared {
    /// Data messages received so far, warm-up included, published every [`SAMPLE_BATCH`]:
    /// feeds the live progress and the throughput-over-time series.
    live_msgs: AtomicU64,
    /// Set once warm-up is over: only then are messages counted and latencies recorded.
    measuring: AtomicBool,
    totals: Mutex<ConnTotals>,
    hist: Vec<Mutex<Histogram<u64>>>,
    /// With `format=binary` in the target: the channel names binary messages refer to.
    binary_names: Option<crate::scan::BinaryNames>,
}

/// What connections add up at their end.
#[derive(Debug, Default)]
struct ConnTotals {
    msgs: u64,
    payload_bytes: u64,
    wire_bytes: u64,
    declared_gaps: u64,
    undeclared_gaps: u64,
    undeclared_missing: u64,
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
    connect_from(addr, path, recv_buffer, None).await
}

/// [`connect`] from a given local address (`source`), to spread many connections over several
/// 127.0.0.x addresses so that ephemeral ports do not run out.
pub async fn connect_from(
    addr: SocketAddr,
    path: &str,
    recv_buffer: Option<u32>,
    source: Option<IpAddr>,
) -> anyhow::Result<ClientSocket> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("cannot bind to {ip}"))?;
    }
    let stream: TcpStream =
        socket.connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let req = Request::builder()
        .method("GET")
        .uri(path)
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

/// The request path for `protocol`: tickfan subscribes in the URL; socket.io needs the
/// engine.io path and subscribes with an event after connecting.
fn request_path(protocol: Protocol, target_path: &str, streams: &str) -> String {
    match protocol {
        Protocol::Tickfan => {
            let sep = if target_path.contains('?') { '&' } else { '?' };
            format!("{target_path}{sep}streams={streams}")
        }
        Protocol::Socketio if target_path == "/" => "/socket.io/?EIO=4&transport=websocket".into(),
        Protocol::Socketio => target_path.to_owned(),
    }
}

/// Connects and, for socket.io, goes through the engine.io open packet, the namespace connect
/// and the `subscribe` event.
async fn open(
    addr: SocketAddr,
    path: &str,
    protocol: Protocol,
    streams: &str,
    source: Option<IpAddr>,
) -> anyhow::Result<RawWs> {
    let handshake = async {
        let mut ws = RawWs::from_handshake(connect_from(addr, path, None, source).await?)?;
        if protocol == Protocol::Socketio {
            socketio_handshake(&mut ws, streams).await?;
        }
        Ok(ws)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .with_context(|| format!("no complete handshake within {HANDSHAKE_TIMEOUT:?}"))?
}

/// engine.io v4 open (`0{"sid":…}`), socket.io v5 connect to the main namespace (`40` →
/// `40{"sid":…}`), then `42["subscribe",[streams…]]`.
pub async fn socketio_handshake(ws: &mut RawWs, streams: &str) -> anyhow::Result<()> {
    let open = ws.read_text().await?;
    if !open.starts_with(b"0{") {
        bail!("expected an engine.io open packet, got {:?}", String::from_utf8_lossy(&open));
    }
    ws.send(wire::TEXT, b"40").await?;
    loop {
        let reply = ws.read_text().await?;
        if reply.starts_with(b"40") {
            break;
        }
        if reply.starts_with(b"44") {
            bail!("socket.io refused the connection: {}", String::from_utf8_lossy(&reply));
        }
        if reply.as_slice() == b"2" {
            ws.send(wire::TEXT, b"3").await?;
        }
    }
    let channels: Vec<&str> = streams.split(',').filter(|s| !s.is_empty()).collect();
    let event = format!("42{}", serde_json::json!(["subscribe", channels]));
    Ok(ws.send(wire::TEXT, event.as_bytes()).await?)
}

/// The gateway's symbols, asked once on a connection of its own (`{"op":"symbols"}`), as the
/// channel names of binary messages.
async fn binary_names(addr: SocketAddr, path: &str) -> anyhow::Result<crate::scan::BinaryNames> {
    let ask = async {
        let mut ws = connect(addr, path, None).await?;
        send_text(&mut ws, br#"{"op":"symbols","id":"bench"}"#).await?;
        loop {
            let reply: serde_json::Value = serde_json::from_slice(&read_text(&mut ws).await?)?;
            if reply["op"] == "symbols" {
                let names: Vec<String> = serde_json::from_value(reply["symbols"].clone())?;
                return Ok(crate::scan::BinaryNames::new(&names));
            }
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, ask)
        .await
        .context("no symbols reply for the binary format's channel names")?
}

async fn read_text(ws: &mut ClientSocket) -> anyhow::Result<Vec<u8>> {
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Text => return Ok(frame.payload.to_vec()),
            OpCode::Close => bail!("the server closed the connection during the handshake"),
            _ => {}
        }
    }
}

async fn send_text(ws: &mut ClientSocket, text: &[u8]) -> anyhow::Result<()> {
    ws.write_frame(Frame::text(Payload::Borrowed(text))).await?;
    Ok(())
}

/// Source addresses to spread `conns` connections to `target` over.
fn source_addresses(target: SocketAddr, conns: usize, wanted: usize) -> Vec<Option<IpAddr>> {
    let loopback_v4 = matches!(target.ip(), IpAddr::V4(ip) if ip.is_loopback());
    let n = match wanted {
        0 if loopback_v4 => conns.div_ceil(CONNS_PER_SOURCE),
        0 => 0,
        n => n.min(254),
    };
    if n <= 1 || !loopback_v4 {
        return vec![None];
    }
    (1..=n as u8).map(|last| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))).collect()
}

/// Runs the load and returns the report. Must be called inside a multi-threaded runtime.
pub async fn run(cfg: RunConfig) -> anyhow::Result<Report> {
    if cfg.conns == 0 {
        bail!("--conns must be at least 1");
    }
    if cfg.ramp.is_some_and(|r| r.is_nan() || r <= 0.0) {
        bail!("--ramp must be a positive number of connections per second");
    }
    // Several gateways at once (`ws://a/ws,ws://b/ws`): connection i goes to target i mod n,
    // and the report is their aggregate.
    let mut targets = Vec::new();
    for target in cfg.target.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        targets.push(resolve_target(target).await?);
    }
    let Some(&(addr, _)) = targets.first() else { bail!("--target names no URL") };
    if let Some(limit) = open_files_limit() {
        // Each connection is a file descriptor; the runtime needs a few more.
        if cfg.conns as u64 + 64 > limit {
            bail!(
                "--conns {} needs about {} open files but this process may open {limit}; \
                 raise the limit (e.g. `ulimit -n {}`) for the client and the server",
                cfg.conns,
                cfg.conns + 64,
                cfg.conns + 1024
            );
        }
    }
    if cfg.streams.contains("{sym}") != cfg.random_symbols.is_some() {
        bail!("`{{sym}}` in --streams and --random-symbols go together");
    }
    let sources = source_addresses(addr, cfg.conns, cfg.source_ips);
    let progress =
        || if cfg.progress { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };

    let binary = cfg.protocol == Protocol::Tickfan && targets[0].1.contains("format=binary");
    let binary_names = match binary {
        true => Some(binary_names(targets[0].0, &targets[0].1).await?),
        false => None,
    };
    let shared = Arc::new(Shared {
        live_msgs: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        totals: Mutex::new(ConnTotals::default()),
        hist: (0..SHARDS).map(|_| Mutex::new(latency_histogram())).collect(),
        binary_names,
    });

    // Connect everyone first (at most CONNECTS_IN_FLIGHT at a time, paced by --ramp), then
    // warm up. Each connection starts reading as soon as it is up, so early ones do not
    // build a backlog while the rest connect.
    let bar = ProgressBar::with_draw_target(Some(cfg.conns as u64), progress());
    bar.set_style(
        ProgressStyle::with_template("{spinner} connecting {pos}/{len} ({per_sec}) {wide_msg}")
            .expect("constant template"),
    );
    let connect_started = Instant::now();
    let in_flight = Arc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
    let far_future = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let (end_tx, end_rx) = tokio::sync::watch::channel(far_future);
    let mut attempts = Vec::with_capacity(cfg.conns);
    for i in 0..cfg.conns {
        if let Some(rate) = cfg.ramp {
            tokio::time::sleep_until(connect_started + Duration::from_secs_f64(i as f64 / rate))
                .await;
        }
        let permit = in_flight.clone().acquire_owned().await.expect("never closed");
        let (shared, bar, mut end) = (shared.clone(), bar.clone(), end_rx.clone());
        let streams = streams_for(&cfg.streams, i, cfg.random_symbols.as_ref());
        let (addr, target_path) = &targets[i % targets.len()];
        let (addr, path) = (*addr, request_path(cfg.protocol, target_path, &streams));
        let (protocol, source) = (cfg.protocol, sources[i % sources.len()]);
        attempts.push(tokio::spawn(async move {
            let ws = open(addr, &path, protocol, &streams, source).await;
            drop(permit);
            bar.inc(1);
            let ws = ws?;
            // The end is set once everyone is connected.
            let until = *end.wait_for(|e| *e != far_future).await.expect("sender lives");
            Ok::<_, anyhow::Error>(drive(ws, protocol, i % SHARDS, shared, until).await)
        }));
    }
    // Wait for every handshake to finish: the bar counts them.
    while (bar.position() as usize) < cfg.conns {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_time = connect_started.elapsed();
    bar.finish_and_clear();

    let end = Instant::now() + cfg.warmup + cfg.duration;
    end_tx.send(end).expect("receivers live");
    // perf attaches during the warm-up, its counters off until the measured window.
    let mut cpu = CpuSources::find(&cfg);
    let writes = cfg.count_writes.then(|| {
        let pids = cfg.server_pids.clone();
        let feed: Vec<(u32, u32)> = cpu.feed_threads.iter().map(|&(p, t, _)| (p, t)).collect();
        tokio::task::spawn_blocking(move || crate::writes::start(&pids, &feed))
    });
    let bar = ProgressBar::with_draw_target(None, progress());
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("constant template"));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar.set_message("warming up");
    tokio::time::sleep(cfg.warmup).await;

    let pids = &cfg.server_pids;
    let metrics0 = match &cfg.metrics_url {
        Some(url) => Some(crate::scrape::internal_latency(url).await?),
        None => None,
    };
    let mut writes = match writes {
        None => None,
        Some(task) => Some(task.await.unwrap_or_else(|e| Err(format!("perf: {e}")))),
    };
    let (client_cpu0, cpu0) = (cpu_seconds(None), cpu.sample());
    shared.measuring.store(true, Ordering::Release);
    let measured_from = Instant::now();
    if let Some(Ok(counter)) = &mut writes {
        // A write to perf's FIFO and its ack: well under a millisecond.
        if let Err(why) = tokio::task::block_in_place(|| counter.enable()) {
            writes = Some(Err(why));
        }
    }
    // Sample throughput once a second while measuring: the series for the plot, and the bar.
    let mut series = Vec::new();
    let mut last = shared.live_msgs.load(Ordering::Relaxed);
    let mut next = measured_from + Duration::from_secs(1);
    // The connections stop reading at `end`; a second that ends after it is not sampled.
    while next <= end + Duration::from_millis(50) {
        tokio::time::sleep_until(next).await;
        next += Duration::from_secs(1);
        let now = shared.live_msgs.load(Ordering::Relaxed);
        series.push((now - last) as f64);
        last = now;
        bar.set_message(format!(
            "measuring {:>3.0}s of {:.0}s: {:.0} msgs/s",
            measured_from.elapsed().as_secs_f64(),
            cfg.duration.as_secs_f64(),
            series.last().copied().unwrap_or(0.0)
        ));
    }
    let server_rss = rss_total(pids);
    // The connections stop reading at `end`: the count stops with them, and so do the window
    // and the CPU readings. (Taken later, after perf and the metrics scrape, they would count
    // time in which nothing is counted, and the servers' work on unread sockets.)
    tokio::time::sleep_until(end).await;
    let measured = measured_from.elapsed();
    let client_cpu = cpu_seconds(None).zip(client_cpu0).map(|(b, a)| b - a);
    let cpu1 = cpu.sample();
    let writes = match writes {
        None => None,
        Some(Err(why)) => Some(Err(why)),
        Some(Ok(counter)) => Some(
            tokio::task::spawn_blocking(move || counter.finish())
                .await
                .unwrap_or_else(|e| Err(format!("perf: {e}"))),
        ),
    };
    let server_latency = match (&cfg.metrics_url, &metrics0) {
        (Some(url), Some(start)) => {
            let end = crate::scrape::internal_latency(url).await?;
            crate::scrape::ServerLatency::from_window(start, &end)
        }
        _ => None,
    };

    let (mut failed, mut ended_early, mut first_error) = (0usize, 0usize, None);
    for a in attempts {
        match a.await? {
            Ok(true) => {}
            Ok(false) => ended_early += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    bar.finish_and_clear();
    if failed == cfg.conns {
        bail!("no connection succeeded: {}", first_error.unwrap_or_default());
    }
    let server_cpu = cpu1.server.zip(cpu0.server).map(|(b, a)| b - a);
    let feed_cpu = cpu1.feed.zip(cpu0.feed).map(|(b, a)| b - a);

    let mut hist = latency_histogram();
    for shard in &shared.hist {
        hist.add(&*shard.lock().expect("no panics while recording")).expect("same bounds");
    }
    let t = shared.totals.lock().expect("no panics while adding up");
    let secs = measured.as_secs_f64();
    Ok(Report {
        target: cfg.target.clone(),
        protocol: cfg.protocol,
        streams: cfg.streams.clone(),
        conns: cfg.conns,
        connected: cfg.conns - failed,
        failed_connects: failed,
        first_connect_error: first_error,
        ended_early,
        connect_seconds: connect_time.as_secs_f64(),
        measured_seconds: secs,
        msgs: t.msgs,
        msgs_per_sec: t.msgs as f64 / secs,
        payload_bytes: t.payload_bytes,
        payload_bytes_per_sec: t.payload_bytes as f64 / secs,
        wire_bytes: t.wire_bytes,
        wire_bytes_per_sec: t.wire_bytes as f64 / secs,
        wire_bytes_per_msg: if t.msgs > 0 { t.wire_bytes as f64 / t.msgs as f64 } else { 0.0 },
        declared_gaps: t.declared_gaps,
        undeclared_gaps: t.undeclared_gaps,
        undeclared_missing: t.undeclared_missing,
        latency_us: LatencySummary::from(&hist),
        latency_percentiles_us: LatencySummary::curve(&hist),
        msgs_per_sec_series: series,
        client_cpu_cores: client_cpu.map(|c| c / secs),
        server_cpu_cores: server_cpu.map(|c| c / secs),
        feed_cpu_cores: feed_cpu.map(|c| c / secs),
        msgs_per_server_cpu_sec: server_cpu.filter(|&c| c > 0.0).map(|c| t.msgs as f64 / c),
        server_rss_bytes: server_rss,
        server_writes: writes.as_ref().and_then(|w| w.as_ref().ok().copied()),
        writes_note: writes.and_then(Result::err),
        server_internal_latency: server_latency,
    })
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Where the server's and the feed's CPU time are read: whole processes, and the feed's
/// threads inside the server's.
#[derive(Debug)]
struct CpuSources {
    server_pids: Vec<u32>,
    feed_pids: Vec<u32>,
    /// `(pid, tid, CPU seconds last read)` of the server's threads named `feed_thread`. A
    /// thread that ended keeps its last reading (its time stays in its process's total).
    feed_threads: Vec<(u32, u32, f64)>,
    /// A feed was named (by pid or thread name) and found.
    has_feed: bool,
}

/// CPU seconds so far of the server (its feed excluded) and of the feed.
#[derive(Clone, Copy, Debug)]
struct CpuSample {
    server: Option<f64>,
    feed: Option<f64>,
}

impl CpuSources {
    fn find(cfg: &RunConfig) -> CpuSources {
        let feed_threads: Vec<(u32, u32, f64)> = match &cfg.feed_thread {
            Some(name) => cfg
                .server_pids
                .iter()
                .flat_map(|&pid| {
                    threads_named(pid, name).into_iter().map(move |tid| (pid, tid, 0.0))
                })
                .collect(),
            None => Vec::new(),
        };
        CpuSources {
            server_pids: cfg.server_pids.clone(),
            feed_pids: cfg.feed_pids.clone(),
            has_feed: !cfg.feed_pids.is_empty() || !feed_threads.is_empty(),
            feed_threads,
        }
    }

    /// `None` where nothing is named or a process is unreadable.
    fn sample(&mut self) -> CpuSample {
        let mut threads = 0.0;
        for (pid, tid, last) in &mut self.feed_threads {
            if let Some(now) = thread_cpu_seconds(*pid, *tid) {
                *last = now;
            }
            threads += *last;
        }
        let sum =
            |pids: &[u32]| -> Option<f64> { pids.iter().map(|&p| cpu_seconds(Some(p))).sum() };
        let server = if self.server_pids.is_empty() { None } else { sum(&self.server_pids) };
        CpuSample {
            server: server.map(|s| s - threads),
            feed: if self.has_feed { sum(&self.feed_pids).map(|p| p + threads) } else { None },
        }
    }
}

/// Sum of the resident memory of `pids`.
fn rss_total(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| rss_bytes(p)).sum()
}

/// Size on the wire of a server-to-client (unmasked) frame with `payload` bytes.
pub fn wire_size(payload: usize) -> u64 {
    let header = match payload {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    (header + payload) as u64
}

/// Reads one connection until `end`. Returns `false` if the connection ended before that.
/// Every message of one read is taken as received when the read returned: one clock reading
/// per read, not per message.
async fn drive(
    mut ws: RawWs,
    protocol: Protocol,
    shard: usize,
    shared: Arc<Shared>,
    end: Instant,
) -> bool {
    let mut seqs = SeqTracker::default();
    let mut samples: Vec<u64> = Vec::with_capacity(SAMPLE_BATCH);
    let mut t = ConnTotals::default();
    let mut unpublished = 0u64;
    // Pongs (and socket.io's `3`) owed for what one read brought, sent after it.
    let mut replies: Vec<(u8, Vec<u8>)> = Vec::new();
    // One timer for the whole run: a fresh `sleep_until` per read would register and cancel
    // a timer entry each time.
    let deadline = tokio::time::sleep_until(end);
    tokio::pin!(deadline);
    let survived = 'conn: loop {
        let read = tokio::select! {
            biased;
            _ = &mut deadline => break true,
            read = ws.fill() => read,
        };
        if !matches!(read, Ok(n) if n > 0) {
            break false;
        }
        let received_ns = unix_now_ns();
        let measuring = shared.measuring.load(Ordering::Relaxed);
        let mut closed = false;
        loop {
            let msg = match ws.next_message() {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(_) => break 'conn false,
            };
            match msg.opcode {
                wire::TEXT => {}
                wire::BINARY if shared.binary_names.is_some() => {}
                wire::PING => {
                    replies.push((wire::PONG, msg.payload.to_vec()));
                    continue;
                }
                wire::CLOSE => {
                    closed = true;
                    break;
                }
                _ => continue,
            }
            let payload = msg.payload;
            if measuring {
                t.wire_bytes += wire_size(payload.len());
            }
            let scanned = match (protocol, &shared.binary_names) {
                (_, Some(names)) if msg.opcode == wire::BINARY => {
                    crate::scan::scan_binary(payload, names)
                }
                (Protocol::Tickfan, _) => scan(payload),
                (Protocol::Socketio, _) => match payload.strip_prefix(b"42[\"tick\",") {
                    Some(event) => scan(event),
                    None if payload == b"2" => {
                        replies.push((wire::TEXT, b"3".to_vec()));
                        continue;
                    }
                    None => Scanned::Other,
                },
            };
            seqs.observe(scanned);
            if let Scanned::Data { ts, .. } = scanned {
                unpublished += 1;
                if measuring {
                    t.msgs += 1;
                    t.payload_bytes += payload.len() as u64;
                    // tickfan sends microseconds; baselines forward the feed's nanoseconds.
                    let ts = tickfan_proto::ns_from_wire(ts);
                    samples.push(received_ns.saturating_sub(ts) / 1000);
                }
                if unpublished == SAMPLE_BATCH as u64 {
                    shared.live_msgs.fetch_add(unpublished, Ordering::Relaxed);
                    unpublished = 0;
                    record(&shared, shard, &mut samples);
                }
            }
        }
        for (opcode, payload) in replies.drain(..) {
            if ws.send(opcode, &payload).await.is_err() {
                break 'conn false;
            }
        }
        if closed {
            // The close handshake's answer (RFC 6455 §5.5.1), best effort: the run is over
            // for this connection either way.
            let _ = ws.send(wire::CLOSE, &[]).await;
            break false;
        }
    };
    record(&shared, shard, &mut samples);
    let mut totals = shared.totals.lock().expect("no panics while adding up");
    totals.msgs += t.msgs;
    totals.payload_bytes += t.payload_bytes;
    totals.wire_bytes += t.wire_bytes;
    totals.declared_gaps += seqs.declared_gaps;
    totals.undeclared_gaps += seqs.undeclared_gaps;
    totals.undeclared_missing += seqs.undeclared_missing;
    survived
}

fn record(shared: &Shared, shard: usize, samples: &mut Vec<u64>) {
    if samples.is_empty() {
        return;
    }
    let mut h = shared.hist[shard].lock().expect("no panics while recording");
    for &us in samples.iter() {
        h.saturating_record(us.max(1));
    }
    samples.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_per_protocol() {
        assert_eq!(request_path(Protocol::Tickfan, "/ws", "trades.*"), "/ws?streams=trades.*");
        assert_eq!(request_path(Protocol::Tickfan, "/ws?x=1", "a"), "/ws?x=1&streams=a");
        assert_eq!(
            request_path(Protocol::Socketio, "/", "trades.*"),
            "/socket.io/?EIO=4&transport=websocket"
        );
    }

    #[test]
    fn random_symbols_per_connection() {
        let r = RandomSymbols::from_feed(3, 20, 7).unwrap();
        let a = streams_for("trades.{sym},book.{sym},quotes.*", 0, Some(&r));
        assert_eq!(a.split(',').count(), 7, "{a}");
        assert!(a.ends_with(",quotes.*"));
        // Deterministic per connection, different across connections, distinct symbols.
        assert_eq!(a, streams_for("trades.{sym},book.{sym},quotes.*", 0, Some(&r)));
        let picks: Vec<Vec<&str>> = (0..50).map(|c| r.pick(c)).collect();
        assert!(picks.iter().any(|p| p != &picks[0]));
        for p in &picks {
            let mut d = p.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), 3, "{p:?}");
        }
        assert!(RandomSymbols::from_feed(21, 20, 7).is_err());
        assert_eq!(streams_for("trades.*", 3, None), "trades.*");
    }

    #[test]
    fn spreads_only_large_loopback_runs() {
        let lo: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(source_addresses(lo, 1000, 0), vec![None]);
        let many = source_addresses(lo, 100_000, 0);
        assert_eq!(many.len(), 5);
        assert_eq!(many[4], Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5))));
        let remote: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert_eq!(source_addresses(remote, 100_000, 3), vec![None]);
    }

    #[test]
    fn reads_the_open_files_limit() {
        assert!(open_files_limit().is_some_and(|n| n >= 64));
    }

    #[test]
    fn frame_header_sizes() {
        assert_eq!((wire_size(0), wire_size(125), wire_size(126)), (2, 127, 130));
        assert_eq!((wire_size(65535), wire_size(65536)), (65539, 65546));
    }
}
