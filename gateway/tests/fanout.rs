//! Encode-once fan-out against a real gateway: many clients, seq continuity, identical bytes,
//! wildcards, and declared loss for a client that does not read.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use gateway::config::parse_policies;
use serde_json::json;
use support::{start_gateway, start_gateway_with, Client, Msg, ObserveJson, SeqCheck};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_get_gap_free_byte_identical_streams() {
    let gw = start_gateway();
    let addr = gw.local_addr();
    let channels = json!([
        "trades.BTC-USD",
        "quotes.BTC-USD",
        "book.BTC-USD",
        "trades.ETH-USD",
        "book.ETH-USD"
    ]);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let channels = channels.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr, "/ws").await;
            let ack = c.request(json!({"op":"subscribe","id":i,"channels":channels})).await;
            assert_eq!(ack["op"], "subscribed");
            let mut seq = SeqCheck::default();
            let mut frames: HashMap<(String, u64), Vec<u8>> = HashMap::new();
            while seq.messages < 3000 {
                match c.recv().await {
                    Msg::Text(v, raw) => {
                        seq.observe_json(&v);
                        // Snapshots are built per subscriber; updates are shared frames.
                        if let (Some(ch), Some(s), false) =
                            (v["ch"].as_str(), v["seq"].as_u64(), v["type"] == "snapshot")
                        {
                            frames.insert((ch.to_owned(), s), raw);
                        }
                    }
                    Msg::Close(code, reason) => panic!("closed {code} {reason}"),
                }
            }
            (seq, frames)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    for (i, (seq, _)) in results.iter().enumerate() {
        assert_eq!(seq.undeclared_gaps, 0, "client {i}");
        assert_eq!(seq.declared_gaps, 0, "client {i}: nobody is slow here");
    }
    // Same (ch, seq) ⇒ same bytes on every client: the frame was encoded once.
    let (_, reference) = &results[0];
    let mut compared = 0;
    for (_, frames) in &results[1..] {
        for (key, raw) in frames {
            if let Some(expected) = reference.get(key) {
                assert_eq!(raw, expected, "{key:?} differs between clients");
                compared += 1;
            }
        }
    }
    assert!(
        compared > 19 * 1000,
        "only {compared} (ch, seq) pairs overlapped: the comparison proved little"
    );
}

#[tokio::test]
async fn wildcard_delivers_many_symbols_once_each() {
    let gw = start_gateway();
    let mut c = Client::connect(gw.local_addr(), "/ws").await;
    // Holding both the wildcard and one of its channels must not duplicate that channel.
    let ack =
        c.request(json!({"op":"subscribe","id":1,"channels":["trades.*","trades.BTC-USD"]})).await;
    assert_eq!(ack["channels"], json!(["trades.*", "trades.BTC-USD"]));
    let mut symbols = HashSet::new();
    let mut seq = SeqCheck::default();
    while seq.messages < 2000 {
        let v = c.recv_json().await;
        let ch = v["ch"].as_str().unwrap();
        assert!(ch.starts_with("trades."), "{ch}");
        symbols.insert(ch.to_owned());
        seq.observe_json(&v);
    }
    assert!(symbols.len() >= 5, "trades.* covered only {symbols:?}");
    assert_eq!(seq.undeclared_gaps, 0, "a duplicate or a loss shows up as a seq jump");
}

#[tokio::test]
async fn a_client_that_does_not_read_gets_declared_gaps_not_silent_loss() {
    let gw = start_gateway_with(|c| {
        c.burst_every = 0.0;
        c.queue_bytes = 64 << 10;
        c.slow_consumer = parse_policies("trades=gap,quotes=gap,book=gap").unwrap();
    });
    let addr = gw.local_addr();
    let mut slow =
        Client::connect_with_small_buffer(addr, "/ws?streams=trades.*,quotes.*,book.*").await;
    let fast = Client::connect(addr, "/ws?streams=trades.*").await;
    let reader = tokio::spawn(fast.seq_check_for(Duration::from_secs(4)));
    // The slow client reads nothing while socket buffers and its queue fill up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let fast = reader.await.unwrap();
    assert_eq!((fast.undeclared_gaps, fast.declared_gaps), (0, 0), "the fast client was harmed");
    assert!(fast.messages > 4_000, "fast client starved: {}", fast.messages);

    let mut seq = SeqCheck::default();
    let mut gap_reasons = HashSet::new();
    while seq.declared_gaps == 0 || seq.messages < 20_000 {
        let v = slow.recv_json().await;
        if v["op"] == "gap" {
            gap_reasons.insert(v["reason"].as_str().unwrap().to_owned());
            assert!(v["from"].as_u64() <= v["to"].as_u64(), "{v}");
        }
        seq.observe_json(&v);
    }
    assert_eq!(seq.undeclared_gaps, 0, "every loss must be declared by a gap notice");
    assert_eq!(gap_reasons, HashSet::from(["slow_consumer".to_owned()]));
    assert!(gw.stats().slow_consumer_drops.load(std::sync::atomic::Ordering::Relaxed) > 0);
}
