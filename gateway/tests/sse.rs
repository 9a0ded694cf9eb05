//! Server-Sent Events (`GET /sse?streams=…`) with `curl -N`, as a user would try it: the same
//! JSON as WebSocket clients get, `id: <ch>:<seq>` on every data event, `Last-Event-ID`
//! resuming every channel of the stream without loss (books' checksums hold across the
//! reconnect), and clear HTTP refusals.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use support::{http_get_with, metric_reaches, start_gateway_with, Client, ClientBook, Msg};

/// One event of a stream: its `id` (if any) and its data, parsed, with its raw bytes.
#[derive(Debug)]
struct Event {
    id: Option<String>,
    data: Value,
    raw: Vec<u8>,
}

/// Runs `curl -N` on `url` (with `headers`) for `secs` seconds and returns the response head
/// and the complete events of the body (a last one cut off by the time limit is left out, as
/// an EventSource would). `None` where curl is not installed (SKIPPED, see `installed`).
async fn curl_sse(url: &str, headers: &[&str], secs: f64) -> Option<(String, Vec<Event>)> {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "-N", "-i", "--max-time", &secs.to_string(), url]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = support::installed("curl", "curl", child)?;
    let out = child.wait_with_output().await.unwrap();
    let text = String::from_utf8(out.stdout).expect("an event stream is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Some((head.to_owned(), parse_events(body)))
}

/// The events of an event-stream body (every complete block; comments and `retry:` skipped).
fn parse_events(body: &str) -> Vec<Event> {
    let complete = body.rfind("\n\n").map_or("", |end| &body[..end]);
    let mut events = Vec::new();
    for block in complete.split("\n\n") {
        let (mut id, mut data) = (None, None);
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                assert!(data.is_none(), "one data line per event: {block}");
                data = Some(v.to_owned());
            } else {
                assert!(
                    line.starts_with(':') || line.starts_with("retry: "),
                    "{line:?} in {block}"
                );
            }
        }
        if let Some(data) = data {
            let value = serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {data}"));
            events.push(Event { id, data: value, raw: data.into_bytes() });
        }
    }
    events
}

/// What a client following the stream knows: the last seq per channel, the books.
#[derive(Default)]
struct Follower {
    last: HashMap<String, u64>,
    books: HashMap<String, ClientBook>,
    data_events: usize,
}

impl Follower {
    /// Checks one event: data events carry `id: <ch>:<seq>` (snapshots none) and continue
    /// their channel's seq exactly; book updates keep the book's checksum.
    fn follow(&mut self, e: &Event) {
        let Some(ch) = e.data["ch"].as_str() else {
            assert!(e.id.is_none(), "a reply or notice has no id: {:?}", e.id);
            assert_ne!(e.data["op"], "gap", "no loss expected: {}", e.data);
            return;
        };
        let seq = e.data["seq"].as_u64().unwrap();
        let snapshot = e.data["type"] == "snapshot";
        if snapshot {
            assert!(e.id.is_none(), "a snapshot is built for one client: no id");
        } else {
            assert_eq!(e.id.as_deref(), Some(format!("{ch}:{seq}").as_str()));
            if let Some(&last) = self.last.get(ch) {
                assert_eq!(seq, last + 1, "{ch} continues without loss");
            }
            self.data_events += 1;
        }
        self.last.insert(ch.to_owned(), seq);
        if ch.starts_with("book.") {
            let book = self.books.entry(ch.to_owned()).or_default();
            assert!(snapshot || book.depth() != (0, 0), "{ch}: a snapshot comes first");
            book.apply(&e.data);
            if let Some(crc) = e.data["crc"].as_u64() {
                assert_eq!(u64::from(book.checksum()), crc, "{ch} seq {seq}");
            }
        }
    }
}

const STREAMS: &str = "trades.BTC-USD,quotes.BTC-USD,book.BTC-USD";

fn sse_url(addr: SocketAddr, query: &str) -> String {
    format!("http://{addr}/sse?{query}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_gets_the_websocket_json_and_last_event_id_resumes_every_channel_without_loss() {
    let gw = start_gateway_with(|c| c.symbols = 4);
    let addr = gw.local_addr();
    // A WebSocket client on the same channels, to compare bytes with.
    let mut ws = Client::connect(addr, &format!("/ws?streams={STREAMS}")).await;
    let url = sse_url(addr, &format!("streams={STREAMS}"));
    let Some((head, first)) = curl_sse(&url, &[], 1.5).await else { return };
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Content-Type: text/event-stream"), "{head}");
    assert_eq!(first[0].data["op"], "subscribed", "{:?}", first[0]);
    assert_eq!(first[0].data["channels"], json!(STREAMS.split(',').collect::<Vec<_>>()));
    let mut follower = Follower::default();
    for e in &first {
        follower.follow(e);
    }
    assert!(follower.data_events > 100, "only {} data events", follower.data_events);
    assert_eq!(follower.last.len(), 3, "every channel streamed: {:?}", follower.last);

    // The same messages, byte for byte, as the WebSocket client's.
    let sse: HashMap<(String, u64), &[u8]> = first
        .iter()
        .filter(|e| e.id.is_some())
        .map(|e| {
            (
                (e.data["ch"].as_str().unwrap().to_owned(), e.data["seq"].as_u64().unwrap()),
                &e.raw[..],
            )
        })
        .collect();
    let mut compared = 0;
    while let Some(Msg::Text(v, raw)) = ws.try_recv(Duration::from_millis(200)).await {
        if let (Some(ch), Some(seq)) = (v["ch"].as_str(), v["seq"].as_u64()) {
            if let Some(bytes) = sse.get(&(ch.to_owned(), seq)) {
                assert_eq!(*bytes, &raw[..], "{ch} {seq}");
                compared += 1;
            }
        }
        if compared >= 200 {
            break;
        }
    }
    assert!(compared >= 100, "only {compared} messages compared");

    // Gone for a moment, then back with the last id seen, as an EventSource reconnects.
    let last_id = first.iter().rev().find_map(|e| e.id.clone()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let header = format!("Last-Event-ID: {last_id}");
    let (_, second) = curl_sse(&url, &[&header], 1.0).await.unwrap();
    let resumed = &second[0].data;
    assert_eq!(resumed["op"], "subscribed");
    for ch in STREAMS.split(',') {
        assert_eq!(resumed["resumed"][ch], true, "{resumed}");
    }
    let before = follower.last.clone();
    for e in &second[1..] {
        assert!(e.data["type"] != "snapshot", "a resumed book needs no snapshot");
        follower.follow(e);
    }
    for (ch, last) in &before {
        assert!(follower.last[ch] > *last, "{ch} went on after the resume");
    }

    // The stream's connections are counted like WebSocket ones, and gone once curl is.
    metric_reaches(addr, "tickfan_connections", 1.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_last_event_id_starts_again_and_says_so() {
    let gw = start_gateway_with(|c| c.symbols = 4);
    let url = sse_url(gw.local_addr(), "streams=book.BTC-USD");
    for id in ["book.BTC-USD:999999999999", "nonsense"] {
        let header = format!("Last-Event-ID: {id}");
        let Some((_, events)) = curl_sse(&url, &[&header], 0.7).await else { return };
        assert_eq!(events[0].data["resumed"]["book.BTC-USD"], false, "{}", events[0].data);
        assert_eq!(events[1].data["type"], "snapshot", "starts again from a snapshot");
        let mut follower = Follower::default();
        events.iter().for_each(|e| follower.follow(e));
    }
}

#[tokio::test]
async fn bad_requests_get_clear_http_answers() {
    const KEY: &str = "sse-key-0123456789abcdef";
    let gw = start_gateway_with(|c| {
        c.symbols = 4;
        c.api_keys_inline = Some(format!("{KEY} trades.*"));
        c.allowed_origins = vec!["https://app.example".into()];
    });
    let addr = gw.local_addr();
    let get = |path: String, headers: &'static str| async move {
        let resp = http_get_with(addr, &path, headers).await;
        let status: u16 = resp[9..12].parse().unwrap();
        (status, resp)
    };
    let (status, resp) = get("/sse?streams=trades.BTC-USD".into(), "").await;
    assert_eq!(status, 401, "{resp}");
    assert!(resp.contains("credentials required"), "{resp}");
    let (status, resp) = get(format!("/sse?token={KEY}"), "").await;
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("name the channels"), "{resp}");
    let (status, resp) = get(format!("/sse?token={KEY}&streams=trades.NOPE-USD"), "").await;
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains(r#""code":"unknown_channel""#), "{resp}");
    let (status, resp) = get(format!("/sse?token={KEY}&streams=book.BTC-USD"), "").await;
    assert_eq!(status, 403, "{resp}");
    assert!(resp.contains(r#""code":"forbidden""#), "{resp}");
    let (status, resp) =
        get(format!("/sse?token={KEY}&streams=trades.BTC-USD"), "Origin: https://evil.example\r\n")
            .await;
    assert_eq!(status, 403, "{resp}");
    // Allowed: the stream starts, for the page's origin.
    let url = sse_url(addr, &format!("token={KEY}&streams=trades.*"));
    let origin = "Origin: https://app.example";
    let Some((head, events)) = curl_sse(&url, &[origin], 0.5).await else { return };
    assert!(head.contains("Access-Control-Allow-Origin: https://app.example"), "{head}");
    assert_eq!(events[0].data["op"], "subscribed");
    assert!(events.iter().skip(1).all(|e| e.data["ch"].as_str().unwrap().starts_with("trades.")));
    // A stream takes no input after its request: a client that sends some is closed, with a
    // last event saying why.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET /sse?token={KEY}&streams=trades.BTC-USD HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let out = String::from_utf8_lossy(&out);
    let body = out.split_once("\r\n\r\n").unwrap().1;
    let last = parse_events(body).pop().unwrap();
    assert_eq!(
        last.data,
        json!({"op":"close","code":1008,"reason":"an event stream takes no input"})
    );
}
