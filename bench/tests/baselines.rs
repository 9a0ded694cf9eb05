//! The baselines `bench compare` measures, started exactly as it starts them (feed-sim piped
//! into each), and read by the same client: the engine.io/socket.io client against the real
//! socket.io server from `npm ci`, the tickfan-protocol client against the Node `ws` server and
//! the naive Rust server (both of its designs). Then one tiny `bench compare` through the real
//! binary.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bench::client::{connect, socketio_handshake, Protocol};
use bench::compare::{self, CompareConfig, Server};
use bench::scan::{scan, Scanned};
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

/// Starts `server` fed at 2,000 ticks/s and runs 3 connections on `trades.*` for 1.5 s.
fn load(server: Server) -> bench::Report {
    let dir = temp_dir(&format!("{server:?}"));
    let cfg = config(&dir);
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let running = compare::start(&cfg, server, 2000.0, &log).unwrap();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let report = rt
        .block_on(bench::run(RunConfig {
            protocol: server.protocol(),
            conns: 3,
            streams: "trades.*,quotes.BTC-USD".into(),
            duration: Duration::from_millis(1500),
            warmup: Duration::from_millis(500),
            server_pids: running.pids(),
            ..RunConfig::new(format!("ws://{}{}", running.addr, server.path()))
        }))
        .unwrap();
    drop(running);
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap();
    assert!(report.msgs > 100, "{server:?}: {}\nserver log:\n{log}", report.markdown());
    assert_eq!((report.connected, report.ended_early), (3, 0), "{}", report.markdown());
    assert_eq!(report.undeclared_gaps, 0, "{server:?} lost data at a trivial rate");
    assert!(report.server_cpu_cores.is_some_and(|c| c > 0.0));
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
        let mut ws =
            connect(running.addr, "/socket.io/?EIO=4&transport=websocket", None).await.unwrap();
        socketio_handshake(&mut ws, "trades.BTC-USD").await.unwrap();
        let mut seqs = Vec::new();
        while seqs.len() < 5 {
            let frame =
                tokio::time::timeout(Duration::from_secs(10), ws.read_frame()).await.unwrap();
            let frame = frame.unwrap();
            assert_eq!(frame.opcode, OpCode::Text);
            let event = frame.payload.strip_prefix(br#"42["tick","#).unwrap_or_else(|| {
                panic!("not a tick event: {}", String::from_utf8_lossy(&frame.payload))
            });
            match scan(event) {
                Scanned::Data { ch, seq, ts } => {
                    assert_eq!(ch, b"trades.BTC-USD");
                    assert!(ts > 1_700_000_000_000_000_000, "ts {ts} is not Unix ns");
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
        .args(["compare", "--rates", "1000", "--conns", "4", "--symbols", "20"])
        .args(["--duration", "1", "--warmup", "0.5", "--no-pin", "--p99-bound-ms", "1000"])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let cmp = compare::load(&out.join("compare.json")).unwrap();
    assert_eq!(cmp.steps.len(), 4, "{stdout}");
    for step in &cmp.steps {
        let r = step.report.as_ref().unwrap_or_else(|| panic!("{step:?}"));
        assert!(r.msgs > 0 && r.undeclared_gaps == 0, "{:?}: {}", step.server, r.markdown());
    }
    assert!(stdout.contains("wire bytes per tick"), "{stdout}");
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("| socket.io |") && md.contains("Every step"), "{md}");
    if bench::plot::available() {
        for plot in ["throughput.png", "p99.svg", "latency.png"] {
            assert!(out.join(plot).is_file(), "{plot} missing");
        }
    }
    std::fs::remove_dir_all(&out).unwrap();
}
