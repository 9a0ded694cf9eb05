//! Scale-out on NATS with real parts: a real `nats-server` on a free loopback port, the
//! `feed-sim --sink nats://…` binary (or its publisher, `feed_sim::nats::NatsSink`, on a
//! thread, where a test sets the epoch), and real `tickfan --source nats://…` processes. Skipped when nats-server is not installed
//! (`apt-get install nats-server`), unless TICKFAN_REQUIRE_TOOLS is set (CI).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use feed_sim::nats::{NatsSink, StreamLimits};
use feed_sim::{Feed, PaceOptions, SimConfig, Sink};
use serde_json::Value;
use support::{http_get, installed, spawn_tickfan_with, Client, Ledger, Msg};

/// A nats-server on a free port of 127.0.0.1, stopped when dropped.
struct NatsServer {
    port: u16,
    child: Option<std::process::Child>,
    /// JetStream's store (removed when dropped), when JetStream is on.
    store: Option<std::path::PathBuf>,
}

impl NatsServer {
    fn start() -> Option<NatsServer> {
        NatsServer::start_with(None)
    }

    /// With JetStream on, its store in a fresh directory that survives restarts.
    fn start_with_jetstream() -> Option<NatsServer> {
        let dir = std::env::temp_dir().join(format!(
            "tickfan-js-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        NatsServer::start_with(Some(dir))
    }

    fn start_with(store: Option<std::path::PathBuf>) -> Option<NatsServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = NatsServer { port, child: None, store };
        server.child = Some(installed("nats-server", "nats-server", server.spawn())?);
        server.wait_ready();
        Some(server)
    }

    fn spawn(&self) -> std::io::Result<std::process::Child> {
        let mut args =
            vec!["-a".to_owned(), "127.0.0.1".into(), "-p".into(), self.port.to_string()];
        if let Some(dir) = &self.store {
            args.extend(["-js".into(), "-sd".into(), dir.display().to_string()]);
        }
        std::process::Command::new("nats-server")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.stop();
        self.child = Some(self.spawn().expect("nats-server starts again"));
        self.wait_ready();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.store {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The simulated feed published to NATS in real time, until dropped.
struct Publisher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    fn start(url: String, epoch: &str, rate: f64) -> Publisher {
        Publisher::start_with(url, epoch, rate, None)
    }

    fn start_with(url: String, epoch: &str, rate: f64, stream: Option<StreamLimits>) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, epoch) = (stop.clone(), epoch.to_owned());
        let thread = std::thread::spawn(move || {
            let cfg = SimConfig { symbols: 5, rate, burst_every_s: 0.0, ..SimConfig::default() };
            let mut feed = Feed::new(cfg);
            let mut sink = NatsSink::connect(&url, feed.symbols().clone(), epoch, stream).unwrap();
            let pace = PaceOptions {
                min_batch_interval: Duration::from_millis(1),
                ..PaceOptions::default()
            };
            feed.run_paced_with(&flag, pace, |batch| {
                for t in batch {
                    sink.write(t).unwrap();
                }
                sink.flush().unwrap();
            });
        });
        Publisher { stop, thread: Some(thread) }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The real `feed-sim` binary (built beside `tickfan` by `cargo test --workspace`; built here
/// if missing), publishing to `nats` until killed.
fn feed_sim_process(nats: &NatsServer, rate: &str) -> tokio::process::Child {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_tickfan")).with_file_name("feed-sim");
    if !bin.exists() {
        let built = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "feed-sim"])
            .status()
            .expect("cargo runs");
        assert!(built.success(), "cargo build -p feed-sim");
    }
    tokio::process::Command::new(bin)
        .args(["--sink", &nats.url(), "--symbols", "5", "--rate", rate, "--burst-every", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("feed-sim starts")
}

async fn gateway(nats: &NatsServer) -> (tokio::process::Child, SocketAddr) {
    gateway_with(nats, &[]).await
}

async fn gateway_with(nats: &NatsServer, extra: &[&str]) -> (tokio::process::Child, SocketAddr) {
    let url = nats.url();
    let args = [&["--listen", "127.0.0.1:0", "--source", &url, "--workers", "1"], extra].concat();
    spawn_tickfan_with(&args).await
}

const ALL: &str = "/ws?streams=trades.*,quotes.*,book.*";

/// Reads for `d`: every data message's raw bytes by (channel, seq), through `ledger`.
async fn read_for(
    c: &mut Client,
    ledger: &mut Ledger,
    d: Duration,
) -> HashMap<(String, u64), Vec<u8>> {
    let mut seen = HashMap::new();
    let until = Instant::now() + d;
    while Instant::now() < until {
        let (v, raw) = match c.recv().await {
            Msg::Text(v, raw) => (v, raw),
            Msg::Close(code, reason) => panic!("closed {code} {reason}"),
        };
        ledger.observe(&v);
        if v.get("op").is_none() && v["type"] != "snapshot" {
            seen.insert((v["ch"].as_str().unwrap().to_owned(), v["seq"].as_u64().unwrap()), raw);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_feed_send_the_same_bytes_under_the_same_seqs() {
    let Some(nats) = NatsServer::start() else { return };
    let _feed = feed_sim_process(&nats, "2000");
    let (_g1, a1) = gateway(&nats).await;
    let (_g2, a2) = gateway(&nats).await;
    let (mut c1, mut c2) = (Client::connect(a1, ALL).await, Client::connect(a2, ALL).await);
    let (mut l1, mut l2) = (Ledger::default(), Ledger::default());
    let (s1, s2) = tokio::join!(
        read_for(&mut c1, &mut l1, Duration::from_secs(3)),
        read_for(&mut c2, &mut l2, Duration::from_secs(3))
    );
    // The publisher's epoch, on both.
    assert!(l1.epoch.is_some());
    assert_eq!(l1.epoch, l2.epoch);
    for l in [&l1, &l2] {
        assert_eq!((l.lost, l.duplicates), (0, 0), "undeclared gaps or duplicates");
        assert!(l.crc_checked > 0, "books are checked");
    }
    let common: Vec<_> = s1.keys().filter(|k| s2.contains_key(*k)).collect();
    assert!(common.len() > 2000, "both saw the same ticks: {} in common", common.len());
    for key in common {
        assert_eq!(s1[key], s2[key], "{key:?} differs between the gateways");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_gateway_resume_on_the_other_and_lose_nothing() {
    let Some(nats) = NatsServer::start() else { return };
    let _feed = Publisher::start(nats.url(), "pub-2", 2000.0);
    let (mut g1, a1) = gateway(&nats).await;
    let (_g2, a2) = gateway(&nats).await;
    let mut ledger = Ledger::default();
    let mut c = Client::connect(a1, ALL).await;
    read_for(&mut c, &mut ledger, Duration::from_secs(1)).await;
    let before = ledger.messages;
    g1.kill().await.unwrap();
    // Whatever was in flight, then the end of the connection (no close frame: it was killed).
    while let Some(Msg::Text(v, _)) = c.try_recv(Duration::from_secs(5)).await {
        ledger.observe(&v);
    }
    let mut c = Client::connect(a2, "/ws").await;
    let resubscribe = ledger.resubscribe(&["trades.*", "quotes.*", "book.*"]);
    c.send_json(resubscribe).await;
    read_for(&mut c, &mut ledger, Duration::from_secs(2)).await;
    assert_eq!(ledger.not_resumed, 0, "every channel resumed on the other gateway");
    assert_eq!((ledger.lost, ledger.duplicates), (0, 0), "nothing lost, nothing twice");
    assert!(ledger.messages > before + 1000, "and the stream went on: {}", ledger.messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_is_declared_to_clients_never_silent() {
    let Some(mut nats) = NatsServer::start() else { return };
    let _feed = Publisher::start(nats.url(), "pub-3", 2000.0);
    let (_g, addr) = gateway(&nats).await;
    let mut ledger = Ledger::default();
    let mut c = Client::connect(addr, ALL).await;
    read_for(&mut c, &mut ledger, Duration::from_millis(500)).await;
    assert!(http_get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));

    nats.stop();
    let mut statuses = Vec::new();
    let stale = wait_for_status(&mut c, &mut ledger, &mut statuses, "stale").await;
    let readyz = http_get(addr, "/readyz").await;
    assert!(readyz.starts_with("HTTP/1.1 503") && readyz.contains("upstream"), "{readyz}");
    assert!(stale < Duration::from_secs(5), "told after {stale:?}");

    nats.restart();
    wait_for_status(&mut c, &mut ledger, &mut statuses, "live").await;
    let messages = ledger.messages;
    read_for(&mut c, &mut ledger, Duration::from_secs(1)).await;
    assert!(ledger.messages > messages + 500, "ticks flow again");
    assert!(http_get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
    // Whatever the outage cost was declared (gap notices, book snapshots), never silent.
    assert_eq!((ledger.lost, ledger.duplicates), (0, 0), "{statuses:?}");
}

/// Reads until `{"op":"status","feed":word}`; how long it took.
async fn wait_for_status(
    c: &mut Client,
    ledger: &mut Ledger,
    statuses: &mut Vec<Value>,
    word: &str,
) -> Duration {
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(20), "no {word} status: {statuses:?}");
        let Some(msg) = c.try_recv(Duration::from_secs(20)).await else { continue };
        let Msg::Text(v, _) = msg else { panic!("closed: {msg:?}") };
        ledger.observe(&v);
        if v["op"] == "status" {
            statuses.push(v.clone());
            if v["feed"] == word {
                return started.elapsed();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_restarted_under_a_new_epoch_stops_the_gateway_with_status_3() {
    let Some(nats) = NatsServer::start() else { return };
    let feed = Publisher::start(nats.url(), "epoch-a", 1000.0);
    let (mut g, addr) = gateway(&nats).await;
    let mut c = Client::connect(addr, ALL).await;
    assert_eq!(c.reply().await["epoch"], "epoch-a");
    drop(feed);
    let _feed = Publisher::start(nats.url(), "epoch-b", 1000.0);
    // The gateway hears the new announcement within about a second, closes its clients with
    // 1001 and exits 3: its supervisor starts it again on the new epoch.
    let (code, _) = c.expect_close().await;
    assert_eq!(code, 1001);
    let status = tokio::time::timeout(Duration::from_secs(10), g.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_jetstream_a_fresh_gateway_serves_resumes_and_a_nats_restart_is_never_silent() {
    let Some(mut nats) = NatsServer::start_with_jetstream() else { return };
    let limits = StreamLimits { max_age: Duration::from_secs(60), max_bytes: 256 << 20 };
    let _feed = Publisher::start_with(nats.url(), "js-1", 2000.0, Some(limits));
    let (mut g1, a1) = gateway_with(&nats, &["--jetstream"]).await;
    let mut ledger = Ledger::default();
    let mut c = Client::connect(a1, ALL).await;
    read_for(&mut c, &mut ledger, Duration::from_secs(1)).await;
    g1.kill().await.unwrap();
    while let Some(Msg::Text(v, _)) = c.try_recv(Duration::from_secs(5)).await {
        ledger.observe(&v);
    }
    // A gateway started only now fills its resume window from the stream, so the client
    // that was on the dead one resumes every channel on it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_g2, a2) = gateway_with(&nats, &["--jetstream"]).await;
    let started = Instant::now();
    while !http_get(a2, "/readyz").await.starts_with("HTTP/1.1 200") {
        assert!(started.elapsed() < Duration::from_secs(15), "the new gateway never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = Client::connect(a2, "/ws").await;
    c.send_json(ledger.resubscribe(&["trades.*", "quotes.*", "book.*"])).await;
    read_for(&mut c, &mut ledger, Duration::from_secs(1)).await;
    assert_eq!(ledger.not_resumed, 0, "every channel resumed on the fresh gateway");
    assert_eq!((ledger.lost, ledger.duplicates), (0, 0));

    // NATS restarts (its stream on disk): the consumer goes on where it stopped. What the
    // publisher sent into the dying server (core publishes, no acknowledgement) may be lost
    // before the stream stored it: that is declared (gap notices, book snapshots), never
    // silent.
    let gaps = ledger.gaps;
    nats.restart();
    let mut statuses = Vec::new();
    let messages = ledger.messages;
    // The consumer notices the restart by two missed heartbeats (1 s each), then recreates
    // itself from the last stream sequence it delivered.
    let restarted = Instant::now();
    while ledger.messages < messages + 2000 {
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "no ticks after the restart: {statuses:?}"
        );
        if let Some(Msg::Text(v, _)) = c.try_recv(Duration::from_secs(1)).await {
            if v["op"] == "status" {
                statuses.push(v.clone());
            }
            ledger.observe(&v);
        }
    }
    assert_eq!((ledger.lost, ledger.duplicates), (0, 0), "{statuses:?}");
    eprintln!(
        "jetstream across a NATS restart: {} gap notices ({} seqs), statuses {statuses:?}",
        ledger.gaps - gaps,
        ledger.gap_seqs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_can_serve_a_subset_of_the_feed_from_core_nats_and_from_jetstream() {
    let Some(nats) = NatsServer::start_with_jetstream() else { return };
    let limits = StreamLimits { max_age: Duration::from_secs(60), max_bytes: 64 << 20 };
    let _feed = Publisher::start_with(nats.url(), "sub-1", 2000.0, Some(limits));
    let only = ["--source-symbols", "BTC-USD,SOL-USD"];
    let (_core, a) = gateway_with(&nats, &only).await;
    let (_js, b) = gateway_with(&nats, &[&only[..], &["--jetstream"]].concat()).await;
    for addr in [a, b] {
        let mut c = Client::connect(addr, "/ws").await;
        let listed = c.request(serde_json::json!({"op":"symbols"})).await;
        assert_eq!(listed["symbols"], serde_json::json!(["BTC-USD", "SOL-USD"]));
        let refused =
            c.request(serde_json::json!({"op":"subscribe","channels":["trades.ETH-USD"]})).await;
        assert_eq!(refused["op"], "error", "{refused}");
        let mut ledger = Ledger::default();
        c.send_json(
            serde_json::json!({"op":"subscribe","channels":["trades.*","quotes.*","book.*"]}),
        )
        .await;
        let seen = read_for(&mut c, &mut ledger, Duration::from_secs(2)).await;
        assert!(seen.len() > 200, "{} messages", seen.len());
        assert!(seen.keys().all(|(ch, _)| ch.ends_with(".BTC-USD") || ch.ends_with(".SOL-USD")));
        assert_eq!((ledger.lost, ledger.duplicates), (0, 0));
        let metrics = http_get(addr, "/metrics").await;
        assert!(
            metrics.contains("tickfan_feed_rejected_total{reason=\"unknown_symbol\"} 0\n"),
            "{metrics}"
        );
    }
    // A symbol the feed does not have is refused at start, with the reason.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tickfan"))
        .args(["--listen", "127.0.0.1:0", "--source", &nats.url(), "--source-symbols", "NOPE-USD"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NOPE-USD is not in the feed"));
}

/// A graceful shutdown behind a load balancer: the draining gateway tells each client first,
/// and a client that moves on that notice, resuming on another gateway of the same JetStream
/// feed, loses nothing and gets nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_told_of_a_shutdown_resume_on_another_gateway_and_lose_nothing() {
    let Some(nats) = NatsServer::start_with_jetstream() else { return };
    let limits = StreamLimits { max_age: Duration::from_secs(60), max_bytes: 256 << 20 };
    let _feed = Publisher::start_with(nats.url(), "js-drain", 2000.0, Some(limits));
    let (g1, a1) = gateway_with(&nats, &["--jetstream", "--drain-secs", "2"]).await;
    let (_g2, a2) = gateway_with(&nats, &["--jetstream"]).await;
    let mut ledgers: Vec<Ledger> = (0..3).map(|_| Ledger::default()).collect();
    let mut clients = Vec::new();
    for ledger in &mut ledgers {
        let mut c = Client::connect(a1, ALL).await;
        read_for(&mut c, ledger, Duration::from_millis(300)).await;
        clients.push(c);
    }
    let pid = g1.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    for (mut c, ledger) in clients.into_iter().zip(&mut ledgers) {
        // Data until the notice; then the client leaves for the other gateway at once.
        loop {
            match c.recv().await {
                Msg::Text(v, _) if v["op"] == "shutdown" => {
                    assert_eq!(v["reason"], "server_shutdown");
                    break;
                }
                Msg::Text(v, _) => ledger.observe(&v),
                Msg::Close(code, reason) => panic!("closed ({code} {reason}) before the notice"),
            }
        }
        drop(c);
        let before = ledger.messages;
        let mut c = Client::connect(a2, "/ws").await;
        c.send_json(ledger.resubscribe(&["trades.*", "quotes.*", "book.*"])).await;
        read_for(&mut c, ledger, Duration::from_millis(700)).await;
        assert_eq!(ledger.not_resumed, 0, "every channel resumed on the other gateway");
        assert_eq!((ledger.lost, ledger.duplicates), (0, 0), "nothing lost, nothing twice");
        assert!(ledger.messages > before + 100, "the stream went on: {}", ledger.messages);
    }
}
