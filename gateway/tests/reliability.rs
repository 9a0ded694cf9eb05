//! Exchange-grade guarantees under faults (issue #4), against real gateways and sockets: book
//! checksums, resume across random drops and a reconnect storm, slow-consumer policies with
//! bounded memory, dead peers, and a restart.
//!
//! Each test prints its figures (drops injected, messages checked, lost, duplicated) with
//! `eprintln!`; `cargo test --test reliability -- --nocapture` shows them.

mod support;

use std::time::{Duration, Instant};

use gateway::config::parse_policies;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::{
    http_get, spawn_tickfan_with, start_gateway_with, Client, Ledger, Msg, ObserveJson, SeqCheck,
};

/// Reads until `n` more data messages have gone through `ledger`.
async fn read_into(c: &mut Client, ledger: &mut Ledger, n: u64) {
    let target = ledger.messages + n;
    while ledger.messages < target {
        match c.recv().await {
            Msg::Text(v, _) => ledger.observe(&v),
            Msg::Close(code, reason) => panic!("closed {code} {reason}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn book_checksums_match_over_thousands_of_updates() {
    let gw = start_gateway_with(|c| c.book_depth = 25);
    let mut c = Client::connect(gw.local_addr(), "/ws").await;
    let mut ledger = Ledger::default();
    let ack = c.request(json!({"op":"subscribe","channels":["book.*"]})).await;
    ledger.observe(&ack);
    // The first message of each book is its snapshot, then updates; every one carries a crc.
    let first = c.recv_json().await;
    assert_eq!(first["type"], "snapshot", "{first}");
    ledger.observe(&first);
    read_into(&mut c, &mut ledger, 5_000).await;
    assert_eq!((ledger.lost, ledger.duplicates, ledger.gaps), (0, 0, 0));
    assert_eq!(ledger.snapshots, 20, "one snapshot per symbol");
    assert!(ledger.crc_checked >= 5_020);
    let (bids, asks) = ledger.books["book.BTC-USD"].depth();
    assert_eq!((bids, asks), (25, 25), "the configured depth");
    eprintln!("book: {} messages checked against their crc, 0 mismatches", ledger.crc_checked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflated_books_stay_correct_for_a_slow_reader() {
    let gw = start_gateway_with(|c| {
        c.burst_every = 0.0;
        c.queue_bytes = 64 << 10;
    });
    let mut slow = Client::connect_with_small_buffer(gw.local_addr(), "/ws").await;
    let mut ledger = Ledger::default();
    ledger.observe(&slow.request(json!({"op":"subscribe","channels":["book.*","quotes.*"]})).await);
    tokio::time::sleep(Duration::from_secs(3)).await; // read nothing: the queue overflows
                                                      // What the kernel buffered before the queue overflowed comes first (megabytes where TCP
                                                      // autotuning grants a large send buffer); the snapshots conflation owes come after it.
    let started = std::time::Instant::now();
    while ledger.snapshots <= 20 && started.elapsed() < Duration::from_secs(20) {
        read_into(&mut slow, &mut ledger, 2_000).await;
    }
    assert!(ledger.snapshots > 20, "conflation sent fresh snapshots: {}", ledger.snapshots);
    assert_eq!(ledger.lost, 0, "every skipped seq is declared (conflated quotes) or covered");
    assert_eq!(ledger.duplicates, 0);
    let actions = &gw.stats().slow_consumer_actions[1];
    assert!(actions.load(std::sync::atomic::Ordering::Relaxed) > 0);
    eprintln!(
        "conflation: {} book messages checked, {} snapshots, {} conflated-quote notices",
        ledger.crc_checked, ledger.snapshots, ledger.gaps
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_across_random_drops_loses_and_duplicates_nothing() {
    let gw = start_gateway_with(|c| {
        c.resume_secs = 30.0;
        // Replays of one request are bounded by the queue bound (all channels of `trades.*`
        // together): on a loaded machine a reconnect can take long enough to pass 4 MiB. This
        // test is about the window, so that bound is set out of the way.
        c.queue_bytes = 64 << 20;
    });
    let addr = gw.local_addr();
    let channels = ["trades.BTC-USD", "quotes.BTC-USD", "book.BTC-USD", "trades.*"];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let mut ledger = Ledger::default();
    let (drops, mut resumed, mut not_resumed) = (60, 0, 0);
    for round in 0..=drops {
        let mut c = Client::connect(addr, "/ws").await;
        let ack = c.request(ledger.resubscribe(&channels)).await;
        assert_eq!(ack["op"], "subscribed", "{ack}");
        if round > 0 {
            for (ch, ok) in ack["resumed"].as_object().expect("resumed in the reply") {
                if ok == true {
                    resumed += 1;
                } else {
                    not_resumed += 1;
                    eprintln!("round {round}: {ch} not resumed");
                }
            }
        }
        ledger.observe(&ack);
        // Drop at a random point: after 1..400 messages, without a close frame.
        read_into(&mut c, &mut ledger, rng.random_range(1..400)).await;
        drop(c);
        if rng.random_bool(0.3) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(1..200))).await;
        }
    }
    eprintln!(
        "resume: {drops} drops, {} messages checked ({} book crcs), {resumed} channels resumed, \
         {not_resumed} not, lost {}, duplicated {}",
        ledger.messages, ledger.crc_checked, ledger.lost, ledger.duplicates
    );
    assert_eq!(not_resumed, 0, "every drop was short enough for the window");
    let counted = gw.stats().resumes[0].load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(counted, resumed, "tickfan_resumes_total{{result=\"resumed\"}}");
    assert_eq!((ledger.lost, ledger.duplicates, ledger.gaps), (0, 0, 0));
    assert_eq!(ledger.snapshots, 1, "only the first subscribe needed a book snapshot");
    assert!(ledger.last.len() >= 10, "trades.* covered many channels: {:?}", ledger.last.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_of_2000_clients_resumes_every_one() {
    let _ = rlimit::increase_nofile_limit(16_384);
    const CLIENTS: usize = 2_000;
    let gw = start_gateway_with(|c| {
        c.rate = 400.0;
        c.burst_every = 0.0;
        c.resume_secs = 60.0;
        // All 2,000 come back at once: more handshakes in flight than the default bound (1024,
        // answered 503 beyond it, as tests/limits.rs checks). This test is about the resumes.
        c.max_handshakes = 4096;
    });
    let addr = gw.local_addr();
    let channels = ["trades.BTC-USD", "quotes.BTC-USD"];
    // Phase 1: everyone connects and receives a few messages.
    let mut clients = Vec::with_capacity(CLIENTS);
    for chunk in 0..CLIENTS / 100 {
        let mut tasks = Vec::new();
        for _ in 0..100 {
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect(addr, "/ws").await;
                let mut ledger = Ledger::default();
                ledger.observe(&c.request(ledger.resubscribe(&channels)).await);
                read_into(&mut c, &mut ledger, 2).await;
                (c, ledger)
            }));
        }
        for t in tasks {
            clients.push(t.await.unwrap_or_else(|e| panic!("chunk {chunk}: {e}")));
        }
    }
    // Phase 2: all drop at once, then all come back resuming, concurrently.
    let ledgers: Vec<Ledger> = clients
        .into_iter()
        .map(|(c, l)| {
            drop(c);
            l
        })
        .collect();
    let started = Instant::now();
    let tasks: Vec<_> = ledgers
        .into_iter()
        .map(|mut ledger| {
            tokio::spawn(async move {
                let mut c = Client::connect(addr, "/ws").await;
                let ack = c.request(ledger.resubscribe(&channels)).await;
                let all_resumed = ack["resumed"]
                    .as_object()
                    .is_some_and(|m| !m.is_empty() && m.values().all(|v| *v == true));
                ledger.observe(&ack);
                read_into(&mut c, &mut ledger, 3).await;
                (all_resumed, ledger)
            })
        })
        .collect();
    let (mut ok, mut lost, mut dups, mut messages) = (0, 0, 0, 0);
    for t in tasks {
        let (all_resumed, l) = t.await.unwrap();
        ok += usize::from(all_resumed);
        lost += l.lost;
        dups += l.duplicates;
        messages += l.messages;
    }
    let took = started.elapsed();
    eprintln!(
        "storm: {CLIENTS} clients dropped at once, {ok} resumed all channels in {:.1} s, \
         {messages} messages checked, lost {lost}, duplicated {dups}",
        took.as_secs_f64()
    );
    assert_eq!(ok, CLIENTS);
    assert_eq!((lost, dups), (0, 0));
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

/// The `gap` policy next to fast readers is `fanout.rs`'s slow-client test; conflation is
/// above. This is `disconnect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_disconnected_under_that_policy_and_fast_ones_are_untouched() {
    let gw = start_gateway_with(|c| {
        c.burst_every = 0.0;
        c.queue_bytes = 64 << 10;
        c.slow_consumer =
            parse_policies("trades=disconnect,quotes=disconnect,book=disconnect").unwrap();
    });
    let addr = gw.local_addr();
    let mut slow =
        Client::connect_with_small_buffer(addr, "/ws?streams=trades.*,quotes.*,book.*").await;
    let mut readers = Vec::new();
    for _ in 0..5 {
        let c = Client::connect(addr, "/ws?streams=trades.*").await;
        readers.push(tokio::spawn(c.seq_check_for(Duration::from_secs(4))));
    }
    // The slow client reads nothing until the gateway has disconnected it, then finds the
    // close frame right behind what its socket buffers held. (Waiting on the counter, not a
    // fixed sleep: the close frame is kept for the peer only so long, and a loaded CI machine
    // may wake a sleeper late.)
    let disconnects = &gw.stats().slow_consumer_actions[2];
    let deadline = Instant::now() + Duration::from_secs(10);
    while disconnects.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the slow client was never disconnected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (code, reason) = slow.expect_close().await;
    for r in readers {
        let seq = r.await.unwrap();
        assert_eq!((seq.undeclared_gaps, seq.declared_gaps), (0, 0), "a fast client was harmed");
        assert!(seq.messages > 4_000, "fast client starved: {}", seq.messages);
    }
    assert_eq!(code, 1008);
    assert!(reason.starts_with("slow consumer"), "{reason}");
    assert_eq!(disconnects.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_is_closed_and_a_live_one_is_not() {
    let gw = start_gateway_with(|c| {
        c.ping_interval = 0.3;
        c.ping_misses = 2;
        c.rate = 1000.0;
    });
    let addr = gw.local_addr();
    // Both subscribe; the dead one then never reads again (so never answers a ping). Its
    // pings are counted from its connection on.
    let started = Instant::now();
    let mut dead = Client::connect_with_small_buffer(addr, "/ws?streams=trades.*").await;
    dead.reply().await;
    let mut live = Client::connect(addr, "/ws?streams=trades.*").await;
    let closed = || {
        let i = gateway::metrics::CloseReason::ALL
            .iter()
            .position(|&r| r == gateway::metrics::CloseReason::PingTimeout)
            .unwrap();
        gw.stats().connections_closed[i].load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut seq = SeqCheck::default();
    while closed() == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "dead peer still open");
        seq.observe_json(&live.recv_json().await);
    }
    let took = started.elapsed();
    // 2 missed pings at 0.3 s: closed after about 0.9 s, however full its socket is.
    assert!(took >= Duration::from_millis(600), "closed too early: {took:?}");
    // The live client (it answers pings as it reads) keeps receiving for a while longer.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        seq.observe_json(&live.recv_json().await);
    }
    assert_eq!(closed(), 1, "only the dead peer");
    assert_eq!(seq.undeclared_gaps, 0);
    let connections = gw.stats().connections.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(connections, 1, "the dead peer's connection is gone");
    eprintln!("dead peer closed after {:.2} s (ping every 0.3 s, 2 misses)", took.as_secs_f64());
    drop(dead);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let gw = start_gateway_with(|c| {
        c.ping_interval = 0.0;
        c.idle_timeout = 0.5;
    });
    let mut c = Client::connect(gw.local_addr(), "/ws").await;
    let started = Instant::now();
    let (code, reason) = c.expect_close().await;
    assert_eq!((code, reason.as_str()), (1008, "idle: no subscription"));
    assert!(started.elapsed() >= Duration::from_millis(450), "{:?}", started.elapsed());
}

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

/// 100 clients that read nothing next to fast ones: the gateway's memory stays bounded by
/// `--max-queued-bytes` (without it, their queues alone could hold 100 × 4 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_whatever_slow_clients_do() {
    const SLOW: usize = 100;
    const BUDGET: u64 = 32 << 20;
    let budget = BUDGET.to_string();
    let (child, addr) = spawn_tickfan_with(&[
        "--listen",
        "127.0.0.1:0",
        "--symbols",
        "20",
        "--rate",
        "20000",
        "--burst-every",
        "0",
        "--max-queued-bytes",
        &budget,
        "--slow-consumer",
        "trades=gap,quotes=gap,book=gap",
    ])
    .await;
    let pid = child.id().unwrap();
    let fast = Client::connect(addr, "/ws?streams=trades.*").await;
    let reader = tokio::spawn(fast.seq_check_for(Duration::from_secs(8)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = rss_bytes(pid);
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        slow.push(
            Client::connect_with_small_buffer(addr, "/ws?streams=trades.*,quotes.*,book.*").await,
        );
    }
    let mut peak = 0;
    let mut queued_peak = 0.0f64;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(rss_bytes(pid));
        let metrics = http_get(addr, "/metrics").await;
        let queued: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("tickfan_queued_bytes{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        queued_peak = queued_peak.max(queued);
    }
    let seq = reader.await.unwrap();
    let mib = |b: f64| b / f64::from(1 << 20);
    eprintln!(
        "memory: {SLOW} stalled clients, RSS {:.0} MiB before, peak {:.0} MiB (+{:.0} MiB); \
         queued peak {:.1} MiB (budget {} MiB); fast client {} msgs, 0 gaps",
        mib(baseline as f64),
        mib(peak as f64),
        mib(peak.saturating_sub(baseline) as f64),
        mib(queued_peak),
        BUDGET >> 20,
        seq.messages,
    );
    assert_eq!((seq.undeclared_gaps, seq.declared_gaps), (0, 0), "the fast client was harmed");
    // Queues together stay within the budget plus each worker's fair-share allowance.
    assert!(queued_peak <= (BUDGET + 2 * (64 << 10) * SLOW as u64) as f64, "{queued_peak}");
    // The stated bound (docs/operations.md): growth under 2 x the budget plus 32 MiB.
    assert!(peak - baseline < 2 * BUDGET + (32 << 20), "RSS grew by {}", peak - baseline);
    drop(slow);
}

/// SIGTERM: every client gets 1001; after a restart on the same port, a client resuming with
/// the old epoch gets `resumed:false` for everything and a fresh book snapshot, never seqs
/// of the old run taken for new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_resume_says_false_and_books_start_from_a_snapshot() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let args = ["--listen", &listen, "--symbols", "10", "--rate", "5000"];
    let (mut child, addr) = spawn_tickfan_with(&args).await;
    let channels = ["trades.BTC-USD", "book.BTC-USD"];
    let mut ledger = Ledger::default();
    let mut c = Client::connect(addr, "/ws").await;
    ledger.observe(&c.request(ledger.resubscribe(&channels)).await);
    read_into(&mut c, &mut ledger, 200).await;
    let old_epoch = ledger.epoch.clone();
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(kill.success());
    loop {
        match c.recv().await {
            Msg::Text(v, _) => ledger.observe(&v),
            Msg::Close(code, _) => {
                assert_eq!(code, 1001);
                break;
            }
        }
    }
    assert!(child.wait().await.unwrap().success());
    let (_child, addr) = spawn_tickfan_with(&args).await;
    let mut c = Client::connect(addr, "/ws").await;
    let ack = c.request(ledger.resubscribe(&channels)).await;
    assert_ne!(ack["epoch"].as_str(), old_epoch.as_deref(), "a new run, a new epoch");
    assert_eq!(ack["resumed"], json!({"trades.BTC-USD": false, "book.BTC-USD": false}));
    ledger.observe(&ack);
    read_into(&mut c, &mut ledger, 200).await;
    assert_eq!(ledger.snapshots, 2, "one snapshot per run");
    assert_eq!((ledger.lost, ledger.duplicates), (0, 0));
    let metrics = http_get(addr, "/metrics").await;
    let value = |line: &str| {
        let found = metrics.lines().find(|l| l.starts_with(line));
        found.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(value("tickfan_resumes_total{result=\"not_resumed\"}"), Some(2.0), "{metrics}");
    assert_eq!(value("tickfan_snapshots_sent_total"), Some(1.0));
}

/// The resume window is bounded by time and one memory budget, not by a count per channel:
/// under the default feed's 10x bursts, a client away for two seconds resumes every channel
/// it had, the busiest included (a window of 10,000 frames per channel held about 0.25 s of
/// BTC-USD in a burst).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_two_seconds_away_through_bursts_every_channel_resumes() {
    let gw = start_gateway_with(|c| {
        c.rate = 20_000.0;
        c.burst_every = 0.3; // bursts all the time
        c.queue_bytes = 64 << 20; // replays are bounded by the queue bound: out of the way
    });
    let addr = gw.local_addr();
    let channels = ["trades.*", "quotes.*"];
    let mut ledger = Ledger::default();
    let mut c = Client::connect(addr, "/ws").await;
    c.send_json(ledger.resubscribe(&channels)).await;
    read_into(&mut c, &mut ledger, 5_000).await;
    drop(c);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut c = Client::connect(addr, "/ws").await;
    let ack = c.request(ledger.resubscribe(&channels)).await;
    let resumed = ack["resumed"].as_object().expect("resumed in the reply");
    assert!(resumed.len() >= 40, "{ack}");
    assert!(resumed.values().all(|ok| ok == true), "not every channel resumed: {ack}");
    read_into(&mut c, &mut ledger, 20_000).await;
    assert_eq!((ledger.lost, ledger.duplicates), (0, 0));
}
