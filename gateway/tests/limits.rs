//! Limits at the door and on client input, against a live gateway: exceeding each one gives
//! its documented HTTP status or close code, is counted in `/metrics`, and leaves other
//! clients unharmed (docs/operations.md, "Limits").

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use support::{
    connect_from, handshake_from, http_get, metric, metric_reaches, start_gateway_with, Client,
    ObserveJson, SeqCheck,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A WebSocket upgrade from `from`, retried (for up to 5 s) until a place freed by a socket
/// just closed is seen free by the gateway.
async fn upgrades_eventually(from: &str, addr: SocketAddr) -> tokio::net::TcpStream {
    let mut last = String::new();
    for _ in 0..50 {
        let (status, s, head) = handshake_from(from, addr, "").await;
        if status == 101 {
            return s;
        }
        last = head;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no upgrade from {from} within 5 s: {last}");
}

/// A client on 127.0.0.1 subscribed to every trade, reading for `secs` in the background.
async fn bystander(addr: SocketAddr, secs: u64) -> tokio::task::JoinHandle<SeqCheck> {
    let mut c = Client::connect(addr, "/ws").await;
    let reply = c.request(json!({"op":"subscribe","id":1,"channels":["trades.*"]})).await;
    assert_eq!(reply["op"], "subscribed");
    tokio::spawn(c.seq_check_for(Duration::from_secs(secs)))
}

fn assert_unharmed(seq: &SeqCheck) {
    assert!(seq.messages > 100, "the bystander received little: {}", seq.messages);
    assert_eq!((seq.undeclared_gaps, seq.declared_gaps), (0, 0), "the bystander was harmed");
}

#[tokio::test]
async fn connections_per_address_are_bounded_and_other_addresses_unaffected() {
    let gw = start_gateway_with(|c| c.max_connections_per_ip = 3);
    let addr = gw.local_addr();
    let watching = bystander(addr, 2).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let (status, s, head) = handshake_from("127.0.0.2", addr, "").await;
        assert_eq!(status, 101, "{head}");
        open.push(s);
    }
    let (status, _, head) = handshake_from("127.0.0.2", addr, "").await;
    assert_eq!(status, 429, "{head}");
    assert!(head.contains("too many connections from your address"), "{head}");
    let (status, _s, head) = handshake_from("127.0.0.3", addr, "").await;
    assert_eq!(status, 101, "another address is not limited: {head}");
    assert_eq!(metric(addr, "tickfan_connections_refused_total{reason=\"per_ip\"}").await, 1.0);
    // A closed socket gives its place back (once the gateway has seen it close).
    drop(open.pop());
    let _s2 = upgrades_eventually("127.0.0.2", addr).await;
    assert_unharmed(&watching.await.unwrap());
}

#[tokio::test]
async fn new_connections_per_address_are_bounded_per_window() {
    let gw = start_gateway_with(|c| {
        c.max_new_connections_per_ip = 4;
        c.new_connections_window = 60.0;
    });
    let addr = gw.local_addr();
    for _ in 0..4 {
        let (status, s, head) = handshake_from("127.0.0.4", addr, "").await;
        assert_eq!(status, 101, "{head}");
        drop(s); // closing does not give the arrival back
    }
    let (status, _, head) = handshake_from("127.0.0.4", addr, "").await;
    assert_eq!(status, 429, "{head}");
    assert!(head.contains("slow down"), "{head}");
    let (status, _, _) = handshake_from("127.0.0.5", addr, "").await;
    assert_eq!(status, 101);
    assert_eq!(
        metric(addr, "tickfan_connections_refused_total{reason=\"per_ip_rate\"}").await,
        1.0
    );
}

#[tokio::test]
async fn sockets_in_all_are_bounded_handshakes_included() {
    let gw = start_gateway_with(|c| c.max_connections = 4);
    let addr = gw.local_addr();
    let (status, _ws, _) = handshake_from("127.0.0.1", addr, "").await;
    assert_eq!(status, 101);
    // Three sockets that never send a request still count.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(connect_from("127.0.0.6", addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, head) = handshake_from("127.0.0.7", addr, "").await;
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("connection limit reached"), "{head}");
    drop(silent);
    let _ws2 = upgrades_eventually("127.0.0.7", addr).await;
}

#[tokio::test]
async fn handshakes_are_bounded_apart_from_upgraded_connections() {
    let gw = start_gateway_with(|c| c.max_handshakes = 2);
    let addr = gw.local_addr();
    // Upgraded connections do not count as handshakes.
    let mut upgraded = Vec::new();
    for _ in 0..3 {
        let (status, s, _) = handshake_from("127.0.0.1", addr, "").await;
        assert_eq!(status, 101);
        upgraded.push(s);
    }
    let silent = [connect_from("127.0.0.8", addr).await, connect_from("127.0.0.8", addr).await];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, head) = handshake_from("127.0.0.9", addr, "").await;
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("too many handshakes"), "{head}");
    drop(silent);
    // Scrapes are refused too until the gateway has seen the silent sockets close.
    let mut refused_scrapes = 0;
    let metrics = loop {
        let got = http_get(addr, "/metrics").await;
        if got.starts_with("HTTP/1.1 200") {
            break got;
        }
        refused_scrapes += 1;
        assert!(refused_scrapes < 50, "{got}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let refused = format!(
        "tickfan_connections_refused_total{{reason=\"max_handshakes\"}} {}",
        1 + refused_scrapes
    );
    assert!(metrics.contains(&refused), "{refused} in {metrics}");
    // Three upgraded connections are open: the one socket handshaking is the scrape itself
    // (once the sockets of earlier scrapes are closed).
    metric_reaches(addr, "tickfan_handshaking_sockets", 1.0).await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_bounded() {
    let gw = start_gateway_with(|c| {
        c.max_connections_per_ip = 2;
        c.trust_proxy = vec!["127.0.0.10".parse().unwrap()];
    });
    let addr = gw.local_addr();
    let forwarded = "X-Forwarded-For: 6.6.6.6, 203.0.113.7\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let (status, s, head) = handshake_from("127.0.0.10", addr, forwarded).await;
        assert_eq!(status, 101, "{head}");
        open.push(s);
    }
    let (status, _, head) = handshake_from("127.0.0.10", addr, forwarded).await;
    assert_eq!(status, 429, "the same forwarded client: {head}");
    let other = "X-Forwarded-For: 6.6.6.6, 203.0.113.8\r\n";
    let (status, _s, head) = handshake_from("127.0.0.10", addr, other).await;
    assert_eq!(status, 101, "another forwarded client: {head}");
    // An untrusted peer's X-Forwarded-For is ignored: its own address counts.
    for _ in 0..2 {
        let (status, s, _) = handshake_from("127.0.0.11", addr, other).await;
        assert_eq!(status, 101);
        open.push(s);
    }
    let (status, _, _) = handshake_from("127.0.0.11", addr, "X-Forwarded-For: 1.1.1.1\r\n").await;
    assert_eq!(status, 429);
}

/// A flood of half-open sockets from one address: refused beyond its bound, while `/healthz`
/// answers, other addresses connect and subscribers keep their data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_open_sockets_leaves_the_gateway_serving_others() {
    const FLOOD: usize = 5_000;
    let gw = start_gateway_with(|c| {
        c.max_connections_per_ip = 100;
        c.handshake_timeout = 30.0;
    });
    let addr = gw.local_addr();
    let watching = bystander(addr, 4).await;
    let started = std::time::Instant::now();
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(connect_from("127.0.0.12", addr).await);
    }
    let connected = started.elapsed();
    let health = http_get(addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"), "{health}");
    let (status, _s, head) = handshake_from("127.0.0.13", addr, "").await;
    assert_eq!(status, 101, "another address during the flood: {head}");
    assert_unharmed(&watching.await.unwrap());
    let refused = metric(addr, "tickfan_connections_refused_total{reason=\"per_ip\"}").await;
    assert!(refused >= (FLOOD - 100) as f64, "refused {refused}");
    println!("{FLOOD} half-open sockets in {connected:?}; {refused} refused per address");
    drop(flood);
}

#[tokio::test]
async fn client_input_held_over_all_connections_is_bounded() {
    let gw = start_gateway_with(|c| c.max_inbound_bytes = 100_000);
    let addr = gw.local_addr();
    // Two clients each start a 60,000-byte frame and send 50,000 bytes of it: the second
    // would take the input held beyond the bound.
    let header = |len: u64| {
        let mut h = vec![0x81, 0x80 | 127];
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]); // mask key 0: the payload goes as it is
        h
    };
    let mut first = support::raw_handshake(addr).await;
    first.write_all(&header(60_000)).await.unwrap();
    first.write_all(&[b' '; 50_000]).await.unwrap();
    // The first's input is held before the second sends.
    for _ in 0..50 {
        if metric(addr, "tickfan_inbound_bytes").await >= 50_000.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut second = support::raw_handshake(addr).await;
    second.write_all(&header(60_000)).await.unwrap();
    second.write_all(&[b' '; 50_000]).await.unwrap();
    let mut wire = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut wire)).await;
    assert!(wire.len() >= 4 && wire[0] == 0x88, "a close frame: {wire:?}");
    assert_eq!(u16::from_be_bytes([wire[2], wire[3]]), 1013);
    // The first finishes its frame and is answered (its message is too large to be a request).
    first.write_all(&[b' '; 10_000]).await.unwrap();
    // (A server ping may come first: read until the reply.)
    let mut got = Vec::new();
    let reply = async {
        while !String::from_utf8_lossy(&got).contains("message_too_large") {
            let mut buf = [0u8; 512];
            let n = first.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {got:x?}");
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), reply).await.expect("the first is answered");
    metric_reaches(addr, "tickfan_inbound_bytes", 0.0).await;
}

#[test]
fn a_connection_bound_beyond_the_open_file_limit_is_a_startup_error_saying_how() {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    if hard == rlimit::INFINITY {
        return eprintln!("SKIPPED: no hard open-file limit here");
    }
    let mut cfg = gateway::Config::for_tests();
    cfg.max_connections = hard as usize;
    let err = gateway::Gateway::start(cfg).unwrap_err().to_string();
    assert!(err.contains("ulimit -Hn") && err.contains("lower --max-connections"), "{err}");
}

#[tokio::test]
async fn a_connection_at_its_maximum_age_is_told_then_closed_with_1001() {
    let gw = start_gateway_with(|c| c.max_connection_age = 2.0);
    let addr = gw.local_addr();
    let opened = std::time::Instant::now();
    let mut c = Client::connect(addr, "/ws").await;
    let reply = c.request(json!({"op":"subscribe","id":1,"channels":["trades.*"]})).await;
    assert_eq!(reply["op"], "subscribed");
    let mut seq = SeqCheck::default();
    let notice = loop {
        let v = c.recv_json().await;
        if v["op"] == "shutdown" {
            break v;
        }
        seq.observe_json(&v);
    };
    let told = opened.elapsed();
    assert_eq!(notice["reason"], "max_age");
    let in_ms = notice["in_ms"].as_u64().expect("in_ms");
    // A tenth of the age, which is 2 s shortened by up to 5 %.
    assert!((190..=200).contains(&in_ms), "{notice}");
    let (code, reason) = c.expect_close().await;
    let closed = opened.elapsed();
    assert_eq!((code, reason.as_str()), (1001, "maximum connection age: reconnect"));
    assert!(told < closed && closed >= Duration::from_millis(1800), "{told:?} {closed:?}");
    assert!(seq.messages > 100 && seq.undeclared_gaps == 0, "{seq:?}");
    metric_reaches(addr, "tickfan_connections_closed_total{reason=\"max_age\"}", 1.0).await;
}

/// A WebSocket handshake from `from` that starts with `prefix` (a PROXY protocol header), and
/// its status.
async fn handshake_after(
    from: &str,
    addr: SocketAddr,
    prefix: &[u8],
) -> (u16, tokio::net::TcpStream) {
    let mut s = connect_from(from, addr).await;
    s.write_all(prefix).await.unwrap();
    s.write_all(support::upgrade_request("x", "").as_bytes()).await.unwrap();
    let head = support::read_head(&mut s).await;
    (head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0), s)
}

#[tokio::test]
async fn behind_a_proxy_protocol_proxy_the_client_it_names_is_bounded() {
    let gw = start_gateway_with(|c| {
        c.max_connections_per_ip = 2;
        c.trust_proxy = vec!["127.0.0.21".parse().unwrap()];
        c.proxy_protocol = true;
    });
    let addr = gw.local_addr();
    let v1 = b"PROXY TCP4 203.0.113.9 10.0.0.1 51234 8080\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let (status, s) = handshake_after("127.0.0.21", addr, v1).await;
        assert_eq!(status, 101);
        open.push(s);
    }
    assert_eq!(
        handshake_after("127.0.0.21", addr, v1).await.0,
        429,
        "the same client, a third time"
    );
    // Version 2 (binary), another client.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend([0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0xC8, 0, 0x1F, 0x90]);
    let (status, _v2) = handshake_after("127.0.0.21", addr, &v2).await;
    assert_eq!(status, 101);
    // The trusted proxy must send the header; other peers are not asked for one.
    assert_eq!(handshake_after("127.0.0.21", addr, b"").await.0, 400, "no header: refused");
    let (status, _plain) = handshake_after("127.0.0.22", addr, b"").await;
    assert_eq!(status, 101);
    metric_reaches(addr, "tickfan_connections_refused_total{reason=\"per_ip\"}", 1.0).await;
    metric_reaches(addr, "tickfan_connections_refused_total{reason=\"proxy_header\"}", 1.0).await;
}

#[tokio::test]
async fn a_socket_whose_handshake_failed_still_counts_while_it_stays_open() {
    let gw = start_gateway_with(|c| c.max_connections = 2);
    let addr = gw.local_addr();
    // No Sec-WebSocket-Key: 400, and the socket stays open (keep-alive).
    let mut bad = connect_from("127.0.0.30", addr).await;
    let without_key = support::upgrade_request("x", "")
        .replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    bad.write_all(without_key.as_bytes()).await.unwrap();
    let head = support::response_head(&mut bad).await;
    assert!(head.starts_with(b"HTTP/1.1 400"), "{}", String::from_utf8_lossy(&head));
    let (status, _ok, _) = handshake_from("127.0.0.31", addr, "").await;
    assert_eq!(status, 101);
    let (status, _, head) = handshake_from("127.0.0.32", addr, "").await;
    assert_eq!(status, 503, "the failed handshake's socket is still open and counted: {head}");
}
