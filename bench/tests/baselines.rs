//! The baselines `bench compare` measures, started exactly as it starts them (feed-sim piped
//! into each), and read by the same client: the engine.io/socket.io client against the real
//! socket.io server from `npm ci`, the tickfan-protocol client against the Node `ws` server,
//! the uWebSockets.js server and the naive Rust server (both of its designs). Then one tiny
//! `bench compare` through the real binary.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bench::client::{connect, socketio_handshake, Protocol};
use bench::compare::{self, CompareConfig, Server};
use bench::scan::{scan, Scanned};
use bench::wire::RawWs;
use bench::RunConfig;
use fastwebsockets::{Frame, OpCode, Payload};

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The directory of this build's binaries, with `tickfan`, `feed-sim` and `naive-ws` in it
/// (`cargo test --workspace` builds them; `cargo test -p bench` alone may not have).
fn bin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_bench")).parent().unwrap().to_path_buf();
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !["tickfan", "feed-sim", "naive-ws"].iter().all(|b| dir.join(b).is_file()) {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "-p", "gateway", "-p", "feed-sim", "-p", "naive-ws"]);
        if dir.ends_with("release") {
            cargo.arg("--release");
        }
        assert!(cargo.status().unwrap().success(), "cannot build the servers");
    }
    dir
}

fn config(out: &Path) -> CompareConfig {
    compare::ensure_node_modules(repo_root()).expect("npm ci");
    CompareConfig { symbols: 20, out: out.to_path_buf(), ..CompareConfig::new(bin_dir()) }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `server` fed at 2,000 ticks/s and runs 3 connections on `trades.*,quotes.BTC-USD`
/// for 1.5 s.
fn load(server: Server) -> bench::Report {
    load_on(server, "trades.*,quotes.BTC-USD")
}

fn load_on(server: Server, streams: &str) -> bench::Report {
    load_with(server, streams, false)
}

fn load_with(server: Server, streams: &str, tickfan_stdin: bool) -> bench::Report {
    let dir = temp_dir(&format!("{server:?}-{tickfan_stdin}"));
    let cfg = CompareConfig { tickfan_stdin, ..config(&dir) };
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let running = compare::start(&cfg, server, 2000.0, &log).unwrap();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let report = rt
        .block_on(bench::run(RunConfig {
            protocol: server.protocol(),
            conns: 3,
            streams: streams.into(),
            duration: Duration::from_millis(1500),
            warmup: Duration::from_millis(500),
            server_pids: vec![running.server_pid()],
            feed_pids: running.feed_pid().into_iter().collect(),
            ..RunConfig::new(format!("ws://{}{}", running.addr, server.path()))
        }))
        .unwrap();
    drop(running);
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap();
    assert!(report.msgs > 100, "{server:?}: {}\nserver log:\n{log}", report.markdown());
    assert_eq!((report.connected, report.ended_early), (3, 0), "{}", report.markdown());
    assert_eq!(report.undeclared_gaps, 0, "{server:?} lost data at a trivial rate");
    assert!(report.server_cpu_cores.is_some_and(|c| c > 0.0));
    // feed-sim is a process of its own: its CPU is the feed's.
    assert!(report.feed_cpu_cores.is_some_and(|c| c > 0.0), "{}", report.markdown());
    std::fs::remove_dir_all(&dir).unwrap();
    report
}

#[test]
fn engine_io_client_reads_ticks_from_the_real_socket_io_server() {
    let dir = temp_dir("sio-raw");
    let cfg = config(&dir);
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let running = compare::start(&cfg, Server::Socketio, 2000.0, &log).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let ws =
            connect(running.addr, "/socket.io/?EIO=4&transport=websocket", None).await.unwrap();
        let mut ws = RawWs::from_handshake(ws).unwrap();
        socketio_handshake(&mut ws, "trades.BTC-USD").await.unwrap();
        let mut seqs = Vec::new();
        while seqs.len() < 5 {
            let (opcode, text) = tokio::time::timeout(Duration::from_secs(10), ws.read_message())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(opcode, bench::wire::TEXT);
            let event = text
                .strip_prefix(br#"42["tick","#)
                .unwrap_or_else(|| panic!("not a tick event: {}", String::from_utf8_lossy(&text)));
            match scan(event) {
                Scanned::Data { ch, seq, ts } => {
                    assert_eq!(ch, b"trades.BTC-USD");
                    // feed-sim --micros: the baselines forward the bytes tickfan would send.
                    assert!(ts > 1_700_000_000_000_000 && ts < 1 << 53, "ts {ts} is not Unix µs");
                    seqs.push(seq);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    });
    drop(running);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn socket_io_baseline_under_the_load_client() {
    let r = load(Server::Socketio);
    assert_eq!(r.protocol, Protocol::Socketio);
    // socket.io wraps each tick in `42["tick",…]`: at least 10 bytes more than the JSON.
    assert!(r.wire_bytes_per_msg > r.payload_bytes as f64 / r.msgs as f64);
}

#[test]
fn ws_baseline_under_the_load_client() {
    load(Server::Ws);
}

#[test]
fn uws_baseline_under_the_load_client() {
    // Overlapping specs: a tick delivered twice would be a repeated seq, an undeclared gap.
    let r = load_on(Server::Uws, "trades.*,trades.BTC-USD,quotes.BTC-USD");
    assert_eq!(r.declared_gaps, 0);
}

/// Reads text frames until `want` data messages arrived; returns their `(channel, seq)` and
/// the replies (non-data frames) seen on the way.
async fn read_data(
    ws: &mut bench::client::ClientSocket,
    want: usize,
) -> (Vec<(String, u64)>, Vec<String>) {
    let (mut data, mut replies) = (Vec::new(), Vec::new());
    while data.len() < want {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.read_frame())
            .await
            .expect("a frame within 10 s")
            .unwrap();
        assert_eq!(frame.opcode, OpCode::Text);
        match scan(&frame.payload) {
            Scanned::Data { ch, seq, .. } => {
                data.push((String::from_utf8(ch.to_vec()).unwrap(), seq))
            }
            _ => replies.push(String::from_utf8(frame.payload.to_vec()).unwrap()),
        }
    }
    (data, replies)
}

#[test]
fn uws_baseline_speaks_the_protocol_subset_and_sends_each_tick_once() {
    let dir = temp_dir("uws-raw");
    let cfg = config(&dir);
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let running = compare::start(&cfg, Server::Uws, 2000.0, &log).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // `%2A` is `*`: the query is URL-decoded.
        let path = "/ws?streams=trades.%2A,trades.BTC-USD";
        let mut ws = connect(running.addr, path, None).await.unwrap();
        let (data, replies) = read_data(&mut ws, 300).await;
        assert_eq!(
            replies.first().map(String::as_str),
            Some(r#"{"op":"subscribed","channels":["trades.*","trades.BTC-USD"]}"#)
        );
        assert!(data.iter().all(|(ch, _)| ch.starts_with("trades.")), "{data:?}");
        // Each channel's seqs go up by one: nothing twice (BTC-USD is in both specs), no loss.
        let mut next = std::collections::HashMap::new();
        for (ch, seq) in &data {
            if let Some(expected) = next.insert(ch.clone(), seq + 1) {
                assert_eq!(*seq, expected, "{ch}: {data:?}");
            }
        }
        assert!(next.contains_key("trades.BTC-USD") && next.len() > 3, "{next:?}");

        // Without the wildcard, the exact channel alone goes on.
        let req = br#"{"op":"unsubscribe","id":7,"channels":["trades.*"]}"#;
        ws.write_frame(fastwebsockets::Frame::text(fastwebsockets::Payload::Borrowed(req)))
            .await
            .unwrap();
        let (data, replies) = read_data(&mut ws, 400).await;
        assert!(replies.iter().any(|r| r.contains(r#""op":"unsubscribed","id":7"#)), "{replies:?}");
        let after = data.iter().position(|(ch, _)| ch != "trades.BTC-USD").map_or(0, |i| i + 1);
        let tail = &data[after..];
        assert!(tail.len() > 20, "trades.BTC-USD stopped: {data:?}");
        assert!(tail.iter().all(|(ch, _)| ch == "trades.BTC-USD"), "{tail:?}");
        assert!(tail.windows(2).all(|w| w[1].1 == w[0].1 + 1), "{tail:?}");

        let req = br#"{"op":"subscribe","id":8,"channels":["nope.X"]}"#;
        ws.write_frame(fastwebsockets::Frame::text(fastwebsockets::Payload::Borrowed(req)))
            .await
            .unwrap();
        let (_, replies) = read_data(&mut ws, 30).await;
        assert!(
            replies.iter().any(|r| r.contains(r#""op":"error","id":8,"code":"unknown_channel""#)),
            "{replies:?}"
        );
    });
    drop(running);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn naive_rust_baseline_under_the_load_client() {
    load(Server::Naive);
}

/// `naive-ws --design strong` fed by feed-sim at 2,000 ticks/s, started as `compare` starts
/// the naive design (which has no switch for the design).
struct StrongServer {
    children: Vec<Child>,
    addr: SocketAddr,
}

impl StrongServer {
    fn start() -> StrongServer {
        let dir = bin_dir();
        let mut feed = Command::new(dir.join("feed-sim"))
            .args(["--symbols", "20", "--rate", "2000", "--seed", "1", "--burst-every", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pipe = feed.stdout.take().unwrap();
        let mut server = Command::new(dir.join("naive-ws"))
            .args(["--listen", "127.0.0.1:0", "--design", "strong"])
            .stdin(pipe)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(server.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on http://").unwrap_or_else(|| {
            panic!("naive-ws --design strong said {line:?}, not where it listens")
        });
        StrongServer { addr: addr.parse().unwrap(), children: vec![server, feed] }
    }
}

impl Drop for StrongServer {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn strong_naive_rust_baseline_under_the_load_client() {
    let server = StrongServer::start();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // trades.BTC-USD is covered by trades.*: a tick sent twice would be a repeated seq.
    let report = rt
        .block_on(bench::run(RunConfig {
            conns: 3,
            streams: "trades.*,trades.BTC-USD,quotes.BTC-USD".into(),
            duration: Duration::from_millis(1500),
            warmup: Duration::from_millis(500),
            server_pids: vec![server.children[0].id()],
            ..RunConfig::new(format!("ws://{}/ws", server.addr))
        }))
        .unwrap();
    assert!(report.msgs > 100, "{}", report.markdown());
    assert_eq!((report.connected, report.ended_early), (3, 0), "{}", report.markdown());
    assert_eq!(report.undeclared_gaps, 0, "{}", report.markdown());
    assert!(report.server_cpu_cores.is_some_and(|c| c > 0.0));
}

/// Subscribing `trades.*` over `trades.BTC-USD` and unsubscribing it again swaps the
/// connection's receivers: BTC-USD's seqs go on without a gap or a repeat across both changes,
/// the other trades channels arrive in between, continuous too, and not after the unsubscribe.
#[test]
fn strong_naive_rust_baseline_keeps_seqs_across_subscription_changes() {
    let server = StrongServer::start();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut ws = connect(server.addr, "/ws?streams=trades.BTC-USD", None).await.unwrap();
        let mut last: HashMap<String, u64> = HashMap::new();
        let mut btc_seen = 0;
        let mut others_in_phase = [0; 3];
        for (phase, others) in others_in_phase.iter_mut().enumerate() {
            if phase > 0 {
                let op = if phase == 1 { "subscribe" } else { "unsubscribe" };
                let req = format!(r#"{{"op":"{op}","channels":["trades.*"]}}"#);
                ws.write_frame(Frame::text(Payload::Owned(req.into_bytes()))).await.unwrap();
            }
            let (mut replied, mut btc_in_phase) = (phase == 0, 0);
            while !(replied && btc_in_phase >= 20) {
                let frame =
                    tokio::time::timeout(Duration::from_secs(10), ws.read_frame()).await.unwrap();
                let frame = frame.unwrap();
                assert_eq!(frame.opcode, OpCode::Text);
                match scan(&frame.payload) {
                    Scanned::Data { ch, seq, .. } => {
                        let ch = String::from_utf8(ch.to_vec()).unwrap();
                        if let Some(prev) = last.insert(ch.clone(), seq) {
                            assert_eq!(seq, prev + 1, "{ch} in phase {phase}");
                        }
                        if ch == "trades.BTC-USD" {
                            btc_in_phase += u32::from(replied);
                            btc_seen += 1;
                        } else {
                            assert!(ch.starts_with("trades."), "{ch}");
                            // Before the reply to the unsubscribe, ticks already on their way.
                            if replied {
                                *others += 1;
                            }
                        }
                    }
                    Scanned::Other => {
                        let reply = String::from_utf8_lossy(&frame.payload).into_owned();
                        assert!(reply.contains("subscribed"), "{reply}");
                        replied = true;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert!(btc_seen >= 60);
        assert_eq!(others_in_phase[0], 0);
        assert!(others_in_phase[1] > 0, "trades.* brought no other channel");
        assert_eq!(others_in_phase[2], 0, "other channels after unsubscribing trades.*");
    });
}

#[test]
fn compare_runs_every_server_and_writes_its_report() {
    let out = temp_dir("compare");
    bin_dir();
    compare::ensure_node_modules(repo_root()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["compare", "--scenario", "fat", "--rates", "1000", "--repeats", "1"])
        .args(["--conns", "4", "--symbols", "20"])
        .args(["--duration", "1", "--warmup", "0.5", "--no-pin", "--p99-bound-ms", "1000"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    // The suite at the top, the scenario in its own directory.
    let suite = compare::load_suite(&out.join("compare.json")).unwrap();
    assert_eq!(suite.scenarios.len(), 1);
    let cmp = compare::load(&out.join("fat/compare.json")).unwrap();
    assert_eq!(cmp.config.scenario, Some(compare::Scenario::Fat));
    assert_eq!((cmp.config.conns, cmp.config.streams.as_str()), (4, "trades.*,quotes.*"));
    // With no --servers, every one: tickfan and all five baselines, once each.
    assert_eq!(cmp.steps.len(), 6, "{stdout}");
    for server in <Server as clap::ValueEnum>::value_variants() {
        assert!(cmp.steps.iter().any(|s| s.server == *server), "{server:?} missing: {stdout}");
    }
    for step in &cmp.steps {
        let r = step.report.as_ref().unwrap_or_else(|| panic!("{step:?}"));
        assert!(r.msgs > 0 && r.undeclared_gaps == 0, "{:?}: {}", step.server, r.markdown());
        // Every server's feed is found: tickfan's thread, the baselines' feed-sim.
        assert!(r.feed_cpu_cores.is_some_and(|c| c > 0.0), "{:?}: {}", step.server, r.markdown());
        // Writes counted by perf, or the reason why not (perf is part of the CI image).
        match (r.server_writes, &r.writes_note) {
            (Some(w), _) => assert!(w > 0, "{:?}: {}", step.server, r.markdown()),
            (None, Some(_)) if std::env::var_os("TICKFAN_REQUIRE_TOOLS").is_none() => {}
            _ => panic!("{:?}: writes not counted: {}", step.server, r.markdown()),
        }
    }
    assert!(stdout.contains("wire bytes per tick"), "{stdout}");
    assert!(stdout.contains("server writes per delivered message"), "{stdout}");
    // The floor, tight and paced, and both rows held against it.
    let floor = cmp.floor.as_ref().expect("the loopback floor");
    let paces: Vec<f64> = floor.points.iter().filter(|p| p.pace > 0.0).map(|p| p.pace).collect();
    assert_eq!(paces, bench::floor::COMPARE_PACES, "{stdout}");
    assert!(floor.points.iter().any(|p| p.pace == 0.0 && p.k == 16), "{stdout}");
    assert!(stdout.contains("beyond its writes at the paced floor"), "{stdout}");
    let tickfan = cmp.steps.iter().find(|s| s.server == Server::Tickfan).unwrap();
    if tickfan.report.as_ref().is_some_and(|r| r.server_writes.is_some()) {
        let (tight, paced) = (cmp.beyond_floor(tickfan), cmp.beyond_paced_floor(tickfan));
        assert!(paced.unwrap() <= tight.unwrap(), "a paced write costs no less: {stdout}");
    }
    let md = std::fs::read_to_string(out.join("fat/compare.md")).unwrap();
    assert!(md.contains("| socket.io |") && md.contains("| uWS.js |"), "{md}");
    assert!(md.contains("| strong Rust |") && md.contains("| naive Rust |"), "{md}");
    assert!(md.contains("Every step") && md.contains("Scenario fat"), "{md}");
    let top = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(top.contains("## fat:") && top.contains("(fat/compare.md)"), "{top}");
    if bench::plot::available() {
        for plot in ["throughput.png", "p99.svg", "latency.png"] {
            assert!(out.join("fat").join(plot).is_file(), "{plot} missing");
        }
    }
    // Re-rendered from the suite into another directory.
    let again = temp_dir("compare-again");
    let status = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["compare", "--from"])
        .arg(out.join("compare.json"))
        .arg("--out")
        .arg(&again)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(again.join("compare.md").is_file() && again.join("fat/compare.md").is_file());
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_dir_all(&again).unwrap();
}

/// `bench compare --tickfan-stdin`: tickfan fed exactly as the baselines are, feed-sim piped
/// into `tickfan --source stdin`, its CPU reported as the feed's.
#[test]
fn tickfan_fed_through_a_pipe_like_the_baselines() {
    let dir = temp_dir("tickfan-stdin");
    let cfg = CompareConfig { tickfan_stdin: true, ..config(&dir) };
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let running = compare::start(&cfg, Server::Tickfan, 2000.0, &log).unwrap();
    // feed-sim is a process of its own, piped into tickfan --source stdin.
    let feed = running.feed_pid().expect("a feed process");
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", running.server_pid()))
        .unwrap()
        .replace('\0', " ");
    assert!(cmdline.contains("--source stdin"), "{cmdline}");
    assert!(std::fs::read_to_string(format!("/proc/{feed}/cmdline")).unwrap().contains("feed-sim"));
    drop(running);
    // Then the same short load as every baseline gets, through that pipe.
    let report = load_with(Server::Tickfan, "trades.*,quotes.BTC-USD", true);
    assert!(report.msgs_per_server_cpu_sec.is_some(), "{}", report.markdown());
    std::fs::remove_dir_all(&dir).unwrap();
}
