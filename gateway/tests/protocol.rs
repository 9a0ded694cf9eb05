//! Protocol v2 against a real gateway: requests, replies, id echo, and every kind of bad input.

mod support;

use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::json;
use support::{
    start_gateway, start_gateway_with, without_epoch, Client, Msg, ObserveJson, SeqCheck,
};

/// `--event-time`: the embedded feed stamps the simulated exchange's time, and every data
/// message of a feed event carries it as `et`, at or before `ts` (the batch's publish time).
#[tokio::test]
async fn the_embedded_feed_can_stamp_the_exchange_event_time() {
    let gw = start_gateway_with(|c| c.event_time = true);
    let mut c = Client::connect(gw.local_addr(), "/ws?streams=trades.*,quotes.*,book.*").await;
    assert_eq!(c.reply().await["op"], "subscribed");
    let (mut updates, mut behind) = (0, 0);
    while updates < 300 {
        let v = c.recv_json().await;
        if v["type"] == "snapshot" {
            assert!(v.get("et").is_none(), "a snapshot is a state, not an event: {v}");
            continue;
        }
        let (ts, et) = (v["ts"].as_u64().unwrap(), v["et"].as_u64().unwrap_or_default());
        assert!(et > 0 && et <= ts && ts - et < 2_000_000, "et at or before ts: {v}");
        updates += 1;
        behind += usize::from(et < ts);
    }
    // Events fall due between batches (250 µs apart): most are published after their time.
    assert!(behind > 100, "only {behind} of {updates} events before their batch");
    // Without the flag, no `et`.
    let gw = start_gateway();
    let mut c = Client::connect(gw.local_addr(), "/ws?streams=trades.*").await;
    c.reply().await;
    for _ in 0..20 {
        let v = c.recv_json().await;
        assert!(v.get("et").is_none(), "{v}");
    }
}

#[tokio::test]
async fn subscribe_receive_unsubscribe_with_id_echo() {
    let gw = start_gateway();
    let mut c = Client::connect(gw.local_addr(), "/ws").await;

    let ack = c
        .request(json!({"op":"subscribe","id":1,"channels":["trades.BTC-USD","quotes.BTC-USD"]}))
        .await;
    assert_eq!(
        without_epoch(ack),
        json!({"op":"subscribed","id":1,"channels":["trades.BTC-USD","quotes.BTC-USD"]})
    );

    let mut seq = SeqCheck::default();
    let now = tickfan_proto::unix_now_ns() / 1000;
    while seq.messages < 200 {
        let v = c.recv_json().await;
        let ch = v["ch"].as_str().expect("data message has ch");
        assert!(ch == "trades.BTC-USD" || ch == "quotes.BTC-USD", "{v}");
        let ts = v["ts"].as_u64().unwrap();
        // Unix microseconds of now (protocol v2): exact in JavaScript, below 2^53.
        assert!(ts.abs_diff(now) < 30_000_000 && ts < 1 << 53, "ts is Unix µs of now: {ts}");
        let price = if ch.starts_with("trades") { &v["px"] } else { &v["bid"] };
        let price = price.as_str().expect("prices are strings");
        assert!(price.parse::<f64>().unwrap() > 0.0 && price.contains('.'), "{price}");
        seq.observe_json(&v);
    }
    assert_eq!(seq.undeclared_gaps, 0);

    let list = c.request(json!({"op":"list","id":"L"})).await;
    assert_eq!(list, json!({"op":"list","id":"L","channels":["trades.BTC-USD","quotes.BTC-USD"]}));

    let ack = c
        .request(json!({"op":"unsubscribe","id":2,"channels":["trades.BTC-USD","quotes.BTC-USD"]}))
        .await;
    assert_eq!(
        ack,
        json!({"op":"unsubscribed","id":2,"channels":["trades.BTC-USD","quotes.BTC-USD"]})
    );
    // Nothing may follow the unsubscribe ack: it was queued after the last frame.
    assert_eq!(c.try_recv(Duration::from_millis(700)).await, None, "data after unsubscribe");

    let pong = c.request(json!({"op":"ping","id":3})).await;
    assert_eq!((pong["op"].as_str(), pong["id"].as_u64()), (Some("pong"), Some(3)));
    assert!(pong["ts"].as_u64().unwrap() >= now && pong["ts"].as_u64().unwrap() < 1 << 53);

    let syms = c.request(json!({"op":"symbols","id":4})).await;
    let names = syms["symbols"].as_array().unwrap();
    assert_eq!(names.len(), 20);
    assert!(names.iter().any(|n| n == "BTC-USD"));
    assert_eq!(c.request(json!({"op":"list"})).await, json!({"op":"list","channels":[]}));
}

/// Sends `raw` and expects an error reply with `code`, then checks the connection still answers.
async fn expect_error(c: &mut Client, raw: &str, code: &str, id: Option<serde_json::Value>) {
    c.send_text(raw).await;
    let reply = c.reply().await;
    assert_eq!(reply["op"], "error", "for {raw:.80}: {reply}");
    assert_eq!(reply["code"], code, "for {raw:.80}: {reply}");
    assert!(reply["msg"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(reply.get("id").cloned(), id, "id echo for {raw:.80}");
    still_alive(c).await;
}

async fn still_alive(c: &mut Client) {
    let pong = c.request(json!({"op":"ping","id":"alive"})).await;
    assert_eq!(pong["op"], "pong", "{pong}");
    assert_eq!(pong["id"], "alive");
}

#[tokio::test]
async fn bad_requests_get_stable_codes_and_the_connection_keeps_working() {
    let gw = start_gateway_with(|c| {
        c.max_channels = 4;
        c.max_message_bytes = 1024;
    });
    let addr = gw.local_addr();
    // A bystander on every trade channel: must see no gap while the other client misbehaves.
    let mut bystander = Client::connect(addr, "/ws?streams=trades.*").await;
    assert_eq!(bystander.reply().await["op"], "subscribed");

    let mut c = Client::connect(addr, "/ws").await;
    // (request, expected code, expected id echo)
    let cases = [
        ("{not json", "malformed_json", None),
        ("[1,2,3]", "malformed_json", None),
        (r#"{"id":9}"#, "bad_request", Some(json!(9))),
        (r#"{"op":"dance","id":5}"#, "unknown_op", Some(json!(5))),
        (
            r#"{"op":"subscribe","id":6,"channels":["trades.FOO-BAR"]}"#,
            "unknown_channel",
            Some(json!(6)),
        ),
        (
            r#"{"op":"subscribe","id":7,"channels":["candles.BTC-USD"]}"#,
            "unknown_channel",
            Some(json!(7)),
        ),
        (r#"{"op":"subscribe","id":8,"channels":"trades.BTC-USD"}"#, "bad_request", Some(json!(8))),
        (r#"{"op":"subscribe","id":10,"channels":[42]}"#, "bad_request", Some(json!(10))),
        (r#"{"op":"ping","id":{"nested":true}}"#, "bad_request", None),
    ];
    for (raw, code, id) in cases {
        expect_error(&mut c, raw, code, id).await;
    }
    let five = r#"{"op":"subscribe","id":11,"channels":["trades.BTC-USD","trades.ETH-USD","book.BTC-USD","quotes.*","book.*"]}"#;
    expect_error(&mut c, five, "too_many_channels", Some(json!(11))).await;
    // Limits count what the connection already holds, and nothing of a refused request sticks.
    let ack = c
        .request(
            json!({"op":"subscribe","id":12,"channels":["quotes.*","book.*","trades.BTC-USD"]}),
        )
        .await;
    assert_eq!(ack["op"], "subscribed");
    let two_more = r#"{"op":"subscribe","id":13,"channels":["trades.ETH-USD","trades.SOL-USD"]}"#;
    expect_error(&mut c, two_more, "too_many_channels", Some(json!(13))).await;
    let list = c.request(json!({"op":"list","id":14})).await;
    assert_eq!(list["channels"], json!(["quotes.*", "book.*", "trades.BTC-USD"]));
    c.request(json!({"op":"unsubscribe","channels":["quotes.*","book.*","trades.BTC-USD"]})).await;

    let big = format!(r#"{{"op":"ping","id":1,"pad":"{}"}}"#, "x".repeat(2000));
    expect_error(&mut c, &big, "message_too_large", None).await;
    c.send_frame(Frame::binary(Payload::Owned(b"{\"op\":\"ping\"}".to_vec()))).await;
    let reply = c.reply().await;
    assert_eq!(reply["code"], "binary_frame", "{reply}");
    still_alive(&mut c).await;
    // A request fragmented over three frames (RFC 6455 §5.4) is reassembled.
    c.send_frame(Frame::new(false, OpCode::Text, None, Payload::Owned(b"{\"op\":\"pi".to_vec())))
        .await;
    c.send_frame(Frame::new(
        false,
        OpCode::Continuation,
        None,
        Payload::Owned(b"ng\",\"id\"".to_vec()),
    ))
    .await;
    c.send_frame(Frame::new(true, OpCode::Continuation, None, Payload::Owned(b":77}".to_vec())))
        .await;
    let pong = c.reply().await;
    assert_eq!((pong["op"].as_str(), pong["id"].as_u64()), (Some("pong"), Some(77)), "{pong}");

    let mut seq = SeqCheck::default();
    while seq.messages < 500 {
        let v = bystander.recv_json().await;
        seq.observe_json(&v);
    }
    assert_eq!(seq.undeclared_gaps, 0, "bystander lost data while another client misbehaved");
}

async fn expect_closed_with(frame: Frame<'_>, code: u16) -> String {
    let gw = start_gateway_with(|c| c.max_frame_bytes = 64 << 10);
    let mut c = Client::connect(gw.local_addr(), "/ws").await;
    c.send_frame(frame).await;
    let (got, reason) = c.expect_close().await;
    assert_eq!(got, code, "close reason: {reason}");
    assert!(!reason.is_empty(), "a close says why");
    reason
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    expect_closed_with(Frame::text(Payload::Owned(vec![b'{', 0xff, 0xfe, b'}'])), 1007).await;
}

#[tokio::test]
async fn oversized_frame_closes_with_1009() {
    let reason = expect_closed_with(Frame::text(Payload::Owned(vec![b' '; 200 << 10])), 1009).await;
    assert!(reason.contains("65536"), "{reason}");
}

#[tokio::test]
async fn stray_continuation_closes_with_1002() {
    expect_closed_with(
        Frame::new(true, OpCode::Continuation, None, Payload::Owned(b"x".to_vec())),
        1002,
    )
    .await;
}

#[tokio::test]
async fn request_flood_is_rate_limited_then_closed_with_1008() {
    let gw = start_gateway_with(|c| c.max_requests_per_sec = 5);
    let mut c = Client::connect(gw.local_addr(), "/ws").await;
    for i in 0..200 {
        c.send_json(json!({"op":"ping","id":i})).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    let close = loop {
        match c.recv().await {
            Msg::Text(v, _) if v["op"] == "pong" => pongs += 1,
            Msg::Text(v, _) if v["code"] == "rate_limited" => limited += 1,
            Msg::Text(v, _) => panic!("unexpected {v}"),
            Msg::Close(code, reason) => break (code, reason),
        }
    };
    assert!((10..=12).contains(&pongs), "burst of 2 x rate allowed, got {pongs}");
    assert!((8..=11).contains(&limited), "refusals before the close (2 x rate): {limited}");
    assert_eq!(close, (1008, "frame flood".to_owned()));
}

#[tokio::test]
async fn control_frames_count_against_the_rate_too() {
    let gw = start_gateway_with(|c| c.max_requests_per_sec = 5);
    let mut c = Client::connect(gw.local_addr(), "/ws").await;
    for _ in 0..100 {
        c.send_frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"hi"))).await;
    }
    // A burst of 2 x rate pings is answered, the next 2 x rate are ignored, then the flood
    // ends the connection.
    assert_eq!(c.recv().await, Msg::Close(1008, "frame flood".to_owned()));
    let closed = "tickfan_connections_closed_total{reason=\"policy_violation\"}";
    support::metric_reaches(gw.local_addr(), closed, 1.0).await;
}

#[tokio::test]
async fn streams_query_subscribes_on_connect_and_reports_bad_names() {
    let gw = start_gateway();
    let mut c = Client::connect(gw.local_addr(), "/ws?streams=trades.BTC-USD,quotes.ETH-USD").await;
    assert_eq!(
        without_epoch(c.reply().await),
        json!({"op":"subscribed","channels":["trades.BTC-USD","quotes.ETH-USD"]})
    );
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        let v = c.recv_json().await;
        seen.insert(v["ch"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["trades.BTC-USD", "quotes.ETH-USD"].map(String::from).into());

    let mut bad = Client::connect(gw.local_addr(), "/ws?streams=trades.NOPE-USD").await;
    let reply = bad.reply().await;
    assert_eq!(
        (reply["op"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("unknown_channel"))
    );
    still_alive(&mut bad).await;
}

#[tokio::test]
async fn http_endpoints_answer_on_the_same_port() {
    let gw = start_gateway();
    let addr = gw.local_addr();
    let get = |path: &'static str| support::http_get(addr, path);
    let health = get("/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"), "{health}");
    assert!(get("/ws").await.starts_with("HTTP/1.1 426"), "plain GET /ws asks for an upgrade");
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    assert!(get("/").await.contains("trades.<SYM>"));
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_request_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = start_gateway_with(|c| c.handshake_timeout = 0.5);
    for partial in ["", "GET /ws HTTP/1.1\r\nHost: x\r\n"] {
        let mut s = tokio::net::TcpStream::connect(gw.local_addr()).await.unwrap();
        s.write_all(partial.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(closed.is_ok(), "a stalled request ({partial:?}) was still open after 5 s");
    }
}

#[tokio::test]
async fn sys_stats_reports_the_gateway_once_a_second() {
    let gw = start_gateway();
    let addr = gw.local_addr();
    let mut c = Client::connect(addr, "/ws?streams=sys.stats,trades.*").await;
    let reply = c.reply().await;
    assert_eq!(reply["channels"], json!(["trades.*", "sys.stats"]), "{reply}");
    let list = c.request(json!({"op": "list", "id": 1})).await;
    assert!(list["channels"].as_array().unwrap().contains(&json!("sys.stats")), "{list}");
    let mut stats = Vec::new();
    while stats.len() < 3 {
        let m = c.recv_json().await;
        if m["ch"] == "sys.stats" {
            stats.push(m);
        }
    }
    for (i, s) in stats.iter().enumerate() {
        assert_eq!(s["seq"], json!(i as u64 + 1), "{s}");
        let ts = s["ts"].as_u64().unwrap();
        assert!(ts > 1_700_000_000_000_000 && ts < 1 << 53, "Unix µs: {s}");
        assert_eq!(s["connections"], 1, "{s}");
        assert!((900..=1500).contains(&s["interval_ms"].as_u64().unwrap()), "{s}");
    }
    // By the second report the trades fan-out has been running for a whole interval.
    let last = &stats[2];
    assert!(last["ticks_in_per_s"].as_f64().unwrap() > 0.0, "{last}");
    assert!(last["frames_out_per_s"].as_f64().unwrap() > 0.0, "{last}");
    let lat = &last["latency_us"];
    assert!(lat["samples"].as_u64().unwrap() > 0, "{last}");
    let (p50, p99, max) = (lat["p50"].as_u64(), lat["p99"].as_u64(), lat["max"].as_u64());
    assert!(p50 <= p99 && p99 <= max && p50 > Some(0), "{last}");

    let reply = c.request(json!({"op": "unsubscribe", "id": 2, "channels": ["sys.stats"]})).await;
    assert_eq!(reply["op"], "unsubscribed", "{reply}");
    // Nothing of sys.stats after the reply, though trades keep coming.
    let until = tokio::time::Instant::now() + Duration::from_millis(2500);
    let mut trades = 0;
    while tokio::time::Instant::now() < until {
        if let Some(Msg::Text(m, _)) = c.try_recv(Duration::from_millis(200)).await {
            assert_ne!(m["ch"], "sys.stats", "stats after unsubscribing: {m}");
            trades += 1;
        }
    }
    assert!(trades > 0);
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = start_gateway();
    let mut s = support::raw_handshake(gw.local_addr()).await;
    // A text frame without the mask bit: what no browser or conforming client sends.
    let ping = br#"{"op":"ping"}"#;
    s.write_all(&[0x81, ping.len() as u8]).await.unwrap();
    s.write_all(ping).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the connection stayed open");
    // The server's frames: no pong, and a close frame (opcode 8) with code 1002.
    assert!(!String::from_utf8_lossy(&rest).contains("pong"), "answered an unmasked frame");
    let close = rest.windows(4).position(|w| w[0] == 0x88 && w[2..4] == [0x03, 0xEA]);
    assert!(close.is_some(), "no 1002 close in {rest:?}");
}

/// `?v=`: a client may name the protocol version it speaks. The gateway's own (2) or none
/// connects; any other gets 400 saying which version is served, on `/ws` and on `/sse`.
#[tokio::test]
async fn a_client_naming_another_protocol_version_is_told_which_one_is_served() {
    let gw = start_gateway();
    let addr = gw.local_addr();
    let mut c = Client::connect(addr, "/ws?v=2&streams=trades.BTC-USD").await;
    assert_eq!(c.reply().await["op"], "subscribed");
    assert!(c.recv_json().await["ts"].as_u64().unwrap() < 1 << 53);
    let answer = |request: String| async move { support::raw_request(addr, &request).await };
    for v in ["1", "3", "2.0", "%00x"] {
        let upgrade = format!(
            "GET /ws?v={v} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let sse = format!("GET /sse?streams=trades.BTC-USD&v={v} HTTP/1.1\r\nHost: x\r\n\r\n");
        for out in [answer(upgrade).await, answer(sse).await] {
            assert!(out.starts_with("HTTP/1.1 400"), "v={v}: {out}");
            assert!(out.contains("this gateway speaks protocol v2"), "v={v}: {out}");
        }
    }
}
