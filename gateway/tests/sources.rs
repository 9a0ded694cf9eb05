//! Tick sources other than the embedded feed, through the real `tickfan` binary: NDJSON on
//! stdin and from a file (`docs/feed-format.md`), malformed lines, upstream gaps, and feed
//! health (`/readyz`, `status` messages).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use feed_sim::{Feed, SimConfig};
use gateway::market::{Market, ResumeWindow};
use serde_json::{json, Value};
use support::{http_get, spawn_tickfan_fed, spawn_tickfan_with, Client, Msg};
use tickfan_proto::encode::{write_book_snapshot_json, write_tick_json};
use tickfan_proto::feed::Announcement;
use tickfan_proto::{BookDelta, L2Book, Level, Side, Symbol, SymbolTable, Tick, TickBody, Trade};
use tokio::io::AsyncWriteExt;

fn announcement(symbols: &SymbolTable, epoch: &str) -> Vec<u8> {
    let ann =
        Announcement { epoch: Some(epoch.into()), symbols: symbols.iter().cloned().collect() };
    let mut line = ann.to_line();
    line.push(b'\n');
    line
}

fn two_symbols() -> SymbolTable {
    SymbolTable::new(vec![
        Symbol { name: "BTC-USD".into(), px_scale: 2, qty_scale: 4 },
        Symbol { name: "ETH-USD".into(), px_scale: 2, qty_scale: 4 },
    ])
}

/// A trade on symbol 0 (`BTC-USD`) as a feed line.
fn trade_line(symbols: &SymbolTable, seq: u64, ts: u64) -> Vec<u8> {
    let body =
        TickBody::Trade(Trade { id: seq, px: 6_400_000 + seq as i64, qty: 15, side: Side::Buy });
    let mut line = Vec::new();
    write_tick_json(&mut line, &Tick { sym: 0, seq, ts, et: 0, body }, symbols.get(0));
    line.push(b'\n');
    line
}

/// The next data message (skipping replies, statuses and book snapshots), raw.
async fn next_data(c: &mut Client) -> (Value, Vec<u8>) {
    loop {
        match c.recv().await {
            Msg::Text(v, raw) if v.get("op").is_none() && v["type"] != "snapshot" => {
                return (v, raw)
            }
            Msg::Text(..) => {}
            Msg::Close(code, reason) => panic!("closed {code} {reason}"),
        }
    }
}

/// The next message with an `op` (a reply, a gap, a status), skipping data.
async fn next_op(c: &mut Client) -> Value {
    c.reply().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticks_on_stdin_give_the_same_bytes_as_the_embedded_feed() {
    let mut feed = Feed::new(SimConfig { symbols: 5, burst_every_s: 0.0, ..SimConfig::default() });
    let symbols = feed.symbols().clone();
    let (_child, mut stdin, addr) =
        spawn_tickfan_fed(&["--workers", "1"], &announcement(&symbols, "feed-epoch-1")).await;
    let mut c = Client::connect(addr, "/ws?streams=trades.*,quotes.*,book.*").await;
    // The feed's epoch, not one of the gateway's own: any gateway on this feed numbers alike.
    assert_eq!(next_op(&mut c).await["epoch"], "feed-epoch-1");

    // What the embedded source makes of the same ticks: the gateway's own encoder.
    let market =
        Market::new(Arc::new(symbols.clone()), ResumeWindow { max_bytes: 0, max_age_ns: 0 }, None);
    let (mut lines, mut expected, mut json) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3000 {
        let tick = feed.next_tick_virtual();
        write_tick_json(&mut lines, &tick, symbols.get(tick.sym));
        lines.push(b'\n');
        expected.push(gateway::frame::payload(&market.publish(&tick, &mut json).bytes).to_vec());
    }
    stdin.write_all(&lines).await.unwrap();
    stdin.flush().await.unwrap();
    for (i, want) in expected.iter().enumerate() {
        let (_, got) = next_data(&mut c).await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want),
            "message {i} differs"
        );
    }
}

/// Protocol v2's timestamps: the feed's nanoseconds reach clients as microseconds (exact in
/// JavaScript), the exchange's event time `et` right after `ts` when the feed gives it, and a
/// recording of a gateway's messages (microseconds) reads as the same instants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_reach_clients_in_microseconds_with_the_exchange_time_when_given() {
    let symbols = two_symbols();
    let (_child, mut stdin, addr) = spawn_tickfan_fed(&[], &announcement(&symbols, "e1")).await;
    let mut c = Client::connect(addr, "/ws?streams=trades.BTC-USD,quotes.BTC-USD").await;
    next_op(&mut c).await;
    let trade = |seq: u64, ts: u64, et: u64| {
        let body = TickBody::Trade(Trade { id: seq, px: 6_400_000, qty: 15, side: Side::Sell });
        let mut line = Vec::new();
        write_tick_json(&mut line, &Tick { sym: 0, seq, ts, et, body }, symbols.get(0));
        line.push(b'\n');
        line
    };
    let mut feed = trade(1, 1_764_028_800_123_456_789, 1_764_028_800_123_000_999);
    feed.extend(trade(2, 1_764_028_800_124_000_000, 0));
    // As a client got them (a recording): microseconds.
    feed.extend(
        br#"{"ch":"trades.BTC-USD","seq":3,"ts":1764028800125001,"et":1764028800124999,"id":3,"px":"64000.00","qty":"0.0015","side":"sell"}"#,
    );
    feed.extend(b"\n");
    feed.extend(br#"{"ch":"quotes.BTC-USD","seq":1,"ts":1764028800126000123,"et":1764028800125999000,"bid":"1.00","bsz":"1","ask":"2.00","asz":"1"}"#);
    feed.extend(b"\n");
    stdin.write_all(&feed).await.unwrap();
    stdin.flush().await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(String::from_utf8(next_data(&mut c).await.1).unwrap());
    }
    assert_eq!(
        got,
        [
            r#"{"ch":"trades.BTC-USD","seq":1,"ts":1764028800123456,"et":1764028800123000,"id":1,"px":"64000.00","qty":"0.0015","side":"sell"}"#,
            r#"{"ch":"trades.BTC-USD","seq":2,"ts":1764028800124000,"id":2,"px":"64000.00","qty":"0.0015","side":"sell"}"#,
            r#"{"ch":"trades.BTC-USD","seq":3,"ts":1764028800125001,"et":1764028800124999,"id":3,"px":"64000.00","qty":"0.0015","side":"sell"}"#,
            r#"{"ch":"quotes.BTC-USD","seq":1,"ts":1764028800126000,"et":1764028800125999,"bid":"1.00","bsz":"1.0000","ask":"2.00","asz":"1.0000"}"#,
        ]
    );
    // A pong's ts is microseconds too.
    let pong = c.request(json!({"op": "ping", "id": 1})).await;
    let now = tickfan_proto::unix_now_ns() / 1000;
    assert!(pong["ts"].as_u64().unwrap().abs_diff(now) < 10_000_000, "{pong}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_are_counted_and_skipped_while_good_ticks_flow() {
    let symbols = two_symbols();
    let (mut child, mut stdin, addr) = spawn_tickfan_fed(&[], &announcement(&symbols, "e1")).await;
    let mut a = Client::connect(addr, "/ws?streams=trades.BTC-USD").await;
    let mut b = Client::connect(addr, "/ws?streams=trades.*").await;
    next_op(&mut a).await;
    next_op(&mut b).await;

    let other =
        SymbolTable::new(vec![Symbol { name: "SOL-USD".into(), px_scale: 3, qty_scale: 2 }]);
    let mut feed: Vec<u8> = Vec::new();
    feed.extend(trade_line(&symbols, 1, 1));
    feed.extend(b"{\"ch\":\n"); // bad JSON
    feed.extend(b"{\"ch\":\"ticker.BTC-USD\",\"seq\":1,\"ts\":1}\n"); // unknown kind
    feed.extend(b"{\"ch\":\"trades.\xff\xfe\",\"seq\":1,\"ts\":1}\n"); // invalid UTF-8
    feed.extend(vec![b'x'; 300 << 10]); // a huge line
    feed.push(b'\n');
    feed.extend(trade_line(&symbols, 2, 2));
    feed.extend(trade_line(&symbols, 1, 3)); // seq going backwards
    feed.extend(trade_line(&symbols, 2, 3)); // and a duplicate
    feed.extend(
        br#"{"ch":"trades.DOGE-USD","seq":1,"ts":1,"id":1,"px":"1","qty":"1","side":"buy"}"#,
    );
    feed.push(b'\n'); // unknown symbol
    feed.extend(
        br#"{"ch":"trades.BTC-USD","seq":3,"ts":1,"id":1,"px":"1.001","qty":"1","side":"buy"}"#,
    );
    feed.push(b'\n'); // more decimals than the symbol has
    feed.extend(announcement(&other, "e2")); // the universe cannot change
    feed.extend(announcement(&symbols, "e1")); // the same announcement again is fine
    feed.extend(trade_line(&symbols, 3, 4));
    stdin.write_all(&feed).await.unwrap();
    stdin.flush().await.unwrap();

    for c in [&mut a, &mut b] {
        for seq in 1..=3 {
            let (v, _) = next_data(c).await;
            assert_eq!((v["ch"].as_str(), v["seq"].as_u64()), (Some("trades.BTC-USD"), Some(seq)));
        }
        assert!(c.try_recv(Duration::from_millis(300)).await.is_none(), "nothing else arrives");
    }
    let metrics = http_get(addr, "/metrics").await;
    for (reason, n) in [
        ("bad_json", 1),
        ("unknown_kind", 1),
        ("not_utf8", 1),
        ("too_long", 1),
        ("seq_not_increasing", 2),
        ("unknown_symbol", 1),
        ("bad_field", 1),
        ("symbols_changed", 1),
    ] {
        let line = format!("tickfan_feed_rejected_total{{reason=\"{reason}\"}} {n}\n");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains("tickfan_ticks_in_total 3\n"), "{metrics}");
    assert!(child.try_wait().unwrap().is_none(), "the gateway is still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_the_upstream_skipped_are_declared_as_a_feed_gap() {
    let symbols = two_symbols();
    let (_child, mut stdin, addr) = spawn_tickfan_fed(&[], &announcement(&symbols, "e1")).await;
    let mut c = Client::connect(addr, "/ws?streams=trades.BTC-USD").await;
    next_op(&mut c).await;
    for seq in [1, 2, 5] {
        stdin.write_all(&trade_line(&symbols, seq, seq)).await.unwrap();
    }
    stdin.flush().await.unwrap();
    assert_eq!(next_data(&mut c).await.0["seq"], 1);
    assert_eq!(next_data(&mut c).await.0["seq"], 2);
    let gap = next_op(&mut c).await;
    assert_eq!(gap, json!({"op":"gap","ch":"trades.BTC-USD","from":3,"to":4,"reason":"feed"}));
    assert_eq!(next_data(&mut c).await.0["seq"], 5);
    let metrics = http_get(addr, "/metrics").await;
    assert!(metrics.contains("tickfan_feed_upstream_lost_total 2\n"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_source_is_stale_for_clients_and_readyz_until_ticks_return() {
    let symbols = two_symbols();
    let (_child, mut stdin, addr) =
        spawn_tickfan_fed(&["--stale-after", "0.5"], &announcement(&symbols, "e1")).await;
    let readyz = http_get(addr, "/readyz").await;
    assert!(readyz.starts_with("HTTP/1.1 503") && readyz.contains("no tick yet"), "{readyz}");
    let mut c = Client::connect(addr, "/ws?streams=trades.BTC-USD").await;
    next_op(&mut c).await;
    stdin.write_all(&trade_line(&symbols, 1, 1)).await.unwrap();
    stdin.flush().await.unwrap();
    assert_eq!(next_data(&mut c).await.0["seq"], 1);
    assert!(http_get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));

    // The source goes quiet: within --stale-after (plus the workers' 100 ms look), clients hear.
    let quiet = Instant::now();
    assert_eq!(next_op(&mut c).await, json!({"op":"status","feed":"stale"}));
    assert!(quiet.elapsed() < Duration::from_secs(3), "told after {:?}", quiet.elapsed());
    let readyz = http_get(addr, "/readyz").await;
    assert!(readyz.starts_with("HTTP/1.1 503") && readyz.contains("feed stale"), "{readyz}");
    let metrics = http_get(addr, "/metrics").await;
    assert!(metrics.contains("tickfan_feed_state{state=\"stale\"} 1\n"), "{metrics}");
    // A client arriving now is told too, right after its reply.
    let mut late = Client::connect(addr, "/ws?streams=trades.BTC-USD").await;
    assert_eq!(next_op(&mut late).await["op"], "subscribed");
    assert_eq!(next_op(&mut late).await, json!({"op":"status","feed":"stale"}));

    // Ticks return: `live`, and the data (in whichever order the worker sent them).
    stdin.write_all(&trade_line(&symbols, 2, 2)).await.unwrap();
    stdin.flush().await.unwrap();
    for c in [&mut c, &mut late] {
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match c.recv().await {
                Msg::Text(v, _) => seen.push(v),
                Msg::Close(code, reason) => panic!("closed {code} {reason}"),
            }
        }
        assert!(seen.contains(&json!({"op":"status","feed":"live"})), "{seen:?}");
        assert!(seen.iter().any(|v| v["seq"] == 2), "{seen:?}");
    }
    assert!(http_get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_replays_at_its_own_pace_times_the_speed() {
    let symbols = two_symbols();
    let dir = std::env::temp_dir().join(format!("tickfan-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ticks.ndjson");
    // 21 trades 100 ms apart by their ts: 2 s of market, 1 s at --replay-speed 2.
    let mut file = announcement(&symbols, "rec-1");
    for seq in 1..=21u64 {
        file.extend(trade_line(&symbols, seq, 1_700_000_000_000_000_000 + (seq - 1) * 100_000_000));
    }
    std::fs::write(&path, &file).unwrap();
    let source = format!("file:{}", path.display());
    let started = Instant::now();
    let (_child, addr) = spawn_tickfan_with(&[
        "--listen",
        "127.0.0.1:0",
        "--source",
        &source,
        "--replay-speed",
        "2",
    ])
    .await;
    // The replay began at startup: resume from seq 0 to get what was already published.
    let mut c = Client::connect(addr, "/ws").await;
    let reply = c
        .request(json!({"op":"subscribe","channels":["trades.BTC-USD"],"epoch":"rec-1",
                        "resume":{"trades.BTC-USD":0}}))
        .await;
    assert_eq!(reply["resumed"]["trades.BTC-USD"], true, "{reply}");
    for seq in 1..=21 {
        assert_eq!(next_data(&mut c).await.0["seq"], seq);
    }
    // Paced, not dumped: 2 s of recording at speed 2 take about 1 s.
    assert!(started.elapsed() >= Duration::from_millis(800), "{:?}", started.elapsed());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_feed_without_an_announcement_is_refused_at_start_with_the_reason() {
    let dir = std::env::temp_dir().join(format!("tickfan-noann-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ticks.ndjson");
    std::fs::write(&path, trade_line(&two_symbols(), 1, 1)).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tickfan"))
        .args(["--listen", "127.0.0.1:0", "--source", &format!("file:{}", path.display())])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("symbols announcement"), "{err}");
    let bad = tokio::process::Command::new(env!("CARGO_BIN_EXE_tickfan"))
        .args(["--source", "kafka://x"])
        .output()
        .await
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown source"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A book line of `BTC-USD`: an update with `delta`, or (`snapshot`) the whole `book`.
fn book_line(symbols: &SymbolTable, seq: u64, book: &L2Book, delta: Option<&BookDelta>) -> Vec<u8> {
    let mut line = Vec::new();
    match delta {
        Some(d) => {
            let t = Tick { sym: 0, seq, ts: seq, et: 0, body: TickBody::Book(d.clone()) };
            write_tick_json(&mut line, &t, symbols.get(0));
        }
        None => write_book_snapshot_json(&mut line, book, symbols.get(0), seq, seq),
    }
    line.push(b'\n');
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn books_joined_mid_stream_or_after_lost_updates_wait_for_the_upstream_snapshot() {
    let symbols = two_symbols();
    let (_child, mut stdin, addr) = spawn_tickfan_fed(&[], &announcement(&symbols, "e1")).await;
    let mut c = Client::connect(addr, "/ws?streams=book.BTC-USD").await;
    let mut ledger = support::Ledger::default();
    ledger.observe(&next_op(&mut c).await);
    // The upstream's book, as it changes: one level moves per update.
    let mut book = L2Book::default();
    let update = |seq: u64, book: &mut L2Book| {
        let delta = BookDelta {
            bids: vec![Level { px: 6_400_000 - seq as i64, qty: 10_000 + seq as i64 }],
            asks: vec![Level { px: 6_400_100 + (seq % 3) as i64, qty: seq as i64 }],
        };
        book.apply(&delta);
        book_line(&symbols, seq, book, Some(&delta))
    };
    let mut feed = Vec::new();
    // Joined mid-stream: updates 5 and 6 cannot be applied to any book this gateway has.
    for seq in 1..=6 {
        let line = update(seq, &mut book);
        if seq >= 5 {
            feed.extend(line);
        }
    }
    feed.extend(book_line(&symbols, 6, &book, None)); // the upstream's snapshot as of 6
    feed.extend(update(7, &mut book));
    let _lost = update(8, &mut book); // the upstream skips 8
    feed.extend(update(9, &mut book)); // cannot apply: waits
    feed.extend(update(10, &mut book));
    feed.extend(book_line(&symbols, 10, &book, None));
    feed.extend(update(11, &mut book));
    stdin.write_all(&feed).await.unwrap();
    stdin.flush().await.unwrap();

    // Every message the client gets keeps its own book equal to the upstream's (crc checked
    // by the ledger), and it ends on seq 11.
    let mut seen = Vec::new();
    while ledger.last.get("book.BTC-USD") != Some(&11) {
        let v = match c.recv().await {
            Msg::Text(v, _) => v,
            Msg::Close(code, reason) => panic!("closed {code} {reason}"),
        };
        ledger.observe(&v);
        seen.push((
            v["type"].as_str().or(v["op"].as_str()).unwrap_or("").to_owned(),
            v["seq"].as_u64(),
        ));
    }
    assert_eq!(ledger.lost, 0, "{seen:?}");
    assert!(ledger.crc_checked >= 4, "{seen:?}");
    assert!(seen.contains(&("snapshot".into(), Some(6))), "{seen:?}");
    assert!(seen.contains(&("update".into(), Some(7))), "{seen:?}");
    assert!(!seen.iter().any(|(_, s)| *s == Some(9)), "9 was applied to a stale book: {seen:?}");
    let client_book = ledger.books.remove("book.BTC-USD").unwrap();
    assert_eq!(client_book.checksum(), book.checksum(2, 4), "{seen:?}");
}

/// Instrument details and status: `symbols` describes every instrument (assets, decimals,
/// steps, status); the feed's `instruments.<SYM>` lines become messages on that channel, the
/// status in `symbols` follows them, and a new subscriber gets the last status first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instrument_status_from_the_feed_reaches_symbols_and_the_instruments_channel() {
    let symbols = two_symbols();
    let (_child, mut stdin, addr) = spawn_tickfan_fed(&[], &announcement(&symbols, "e1")).await;
    let mut c = Client::connect(addr, "/ws?streams=instruments.*,trades.BTC-USD").await;
    next_op(&mut c).await;
    let listed = c.request(json!({"op":"symbols","id":1})).await;
    assert_eq!(
        listed["instruments"][0],
        json!({"symbol":"BTC-USD","base":"BTC","quote":"USD","price_decimals":2,"size_decimals":4,
               "tick_size":"0.01","lot_size":"0.0001","status":"trading"})
    );
    assert_eq!(listed["symbols"], json!(["BTC-USD", "ETH-USD"]));

    let status = |seq: u64, what: &str| {
        format!(
            "{{\"ch\":\"instruments.BTC-USD\",\"seq\":{seq},\"ts\":{seq},\"status\":\"{what}\"}}\n"
        )
    };
    let mut feed = trade_line(&symbols, 1, 1);
    feed.extend(status(1, "halted").as_bytes());
    stdin.write_all(&feed).await.unwrap();
    stdin.flush().await.unwrap();
    assert_eq!(next_data(&mut c).await.0["ch"], "trades.BTC-USD");
    let (halted, raw) = next_data(&mut c).await;
    assert_eq!(
        std::str::from_utf8(&raw).unwrap(),
        r#"{"ch":"instruments.BTC-USD","seq":1,"ts":1,"status":"halted"}"#
    );
    assert_eq!(halted["status"], "halted");
    let listed = c.request(json!({"op":"symbols","id":2})).await;
    assert_eq!(listed["instruments"][0]["status"], "halted");
    assert_eq!(listed["instruments"][1]["status"], "trading");
    // A late subscriber learns the status at once.
    let mut late = Client::connect(addr, "/ws?streams=instruments.BTC-USD").await;
    next_op(&mut late).await;
    assert_eq!(next_data(&mut late).await.0, halted);

    stdin.write_all(status(2, "trading").as_bytes()).await.unwrap();
    stdin.flush().await.unwrap();
    for c in [&mut c, &mut late] {
        let (v, _) = next_data(c).await;
        assert_eq!((v["seq"].as_u64(), v["status"].as_str()), (Some(2), Some("trading")));
    }
    let listed = c.request(json!({"op":"symbols","id":3})).await;
    assert_eq!(listed["instruments"][0]["status"], "trading");
}
