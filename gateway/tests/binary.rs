//! Binary data messages (`/ws?format=binary`) against a real gateway: trades, quotes and book
//! updates arrive as binary frames in the documented layout (decoded by
//! `tickfan_proto::binary`), carrying exactly what a JSON client of the same channels gets
//! (compared field by field, book checksums included), byte-identical for every binary client
//! (encoded once), with continuous seqs; replies and snapshots stay JSON text; a bad
//! `format` gets 400, on `/ws` and on `/sse`.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use support::{connect_raw, read_server_frame, start_gateway, Client, Msg};
use tickfan_proto::binary::{decode, Decoded};
use tickfan_proto::feed::{parse_line, FeedLine};
use tickfan_proto::SymbolTable;
use tokio::net::TcpStream;

const STREAMS: &str = "trades.*,quotes.*,book.BTC-USD";

/// What a binary client read: its data messages by (channel, seq), decoded and raw, and how
/// many text frames (replies, snapshots) came between.
#[derive(Default)]
struct Read {
    data: HashMap<(String, u64), (Decoded, Vec<u8>)>,
    texts: Vec<Value>,
    bytes: usize,
}

async fn read_binary(s: &mut TcpStream, n: usize, symbols: &SymbolTable) -> Read {
    let mut got = Read::default();
    for _ in 0..n {
        let (b0, payload) = tokio::time::timeout(Duration::from_secs(5), read_server_frame(s))
            .await
            .expect("a frame within 5 s");
        match b0 {
            0x82 => {
                let d = decode(&payload).unwrap_or_else(|e| panic!("{e:?}: {payload:?}"));
                let name =
                    format!("{}.{}", d.tick.body.kind().as_str(), symbols.get(d.tick.sym).name);
                got.bytes += payload.len();
                got.data.insert((name, d.tick.seq), (d, payload));
            }
            0x81 => got.texts.push(serde_json::from_slice(&payload).expect("JSON text")),
            0x89 => {} // a ping
            other => panic!("unexpected frame {other:#x}"),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_clients_get_the_same_messages_in_fewer_bytes_encoded_once() {
    let gw = start_gateway();
    let (addr, symbols) = (gw.local_addr(), gw.symbols().clone());
    let path = format!("/ws?format=binary&streams={STREAMS}");
    let (_, mut a) = connect_raw(addr, &path, "").await;
    let (_, mut b) = connect_raw(addr, &path, "").await;
    let mut json = Client::connect(addr, &format!("/ws?streams={STREAMS}")).await;
    // Counted by what they receive.
    let by_format = |f: &str| format!("tickfan_connections_by_format{{format=\"{f}\"}}");
    support::metric_reaches(addr, &by_format("binary"), 2.0).await;
    support::metric_reaches(addr, &by_format("json"), 1.0).await;
    let (got_a, got_b) =
        tokio::join!(read_binary(&mut a, 2000, &symbols), read_binary(&mut b, 2000, &symbols));

    // Replies and snapshots are JSON text.
    assert_eq!(got_a.texts[0]["op"], "subscribed", "{:?}", got_a.texts[0]);
    assert!(got_a.texts.iter().any(|v| v["type"] == "snapshot" && v["ch"] == "book.BTC-USD"));

    let (mut compared, mut json_bytes, mut binary_bytes) = (0, 0, 0);
    for _ in 0..2000 {
        let Msg::Text(v, raw) = json.recv().await else { panic!("closed") };
        if v.get("op").is_some() || v["type"] == "snapshot" {
            continue;
        }
        let key = (v["ch"].as_str().unwrap().to_owned(), v["seq"].as_u64().unwrap());
        let Some((decoded, payload)) = got_a.data.get(&key) else { continue };
        // The JSON message is a feed line too: parsed, it is the tick the binary one decodes to.
        let Ok(FeedLine::Tick(tick)) = parse_line(&raw, &symbols) else { panic!("{v}") };
        assert_eq!(decoded.tick, tick, "{key:?}");
        assert_eq!(decoded.crc.map(u64::from), v["crc"].as_u64(), "{key:?}");
        json_bytes += raw.len();
        binary_bytes += payload.len();
        compared += 1;
    }
    assert!(compared > 500, "only {compared} messages compared");
    eprintln!(
        "{compared} messages: {binary_bytes} bytes binary, {json_bytes} JSON ({:.0} %)",
        100.0 * binary_bytes as f64 / json_bytes as f64
    );
    assert!(binary_bytes * 2 < json_bytes, "{binary_bytes} vs {json_bytes}");

    // Encoded once: the same bytes for both binary clients; and no seq skipped.
    let mut shared = 0;
    for (key, (_, payload)) in &got_a.data {
        if let Some((_, other)) = got_b.data.get(key) {
            assert_eq!(payload, other, "{key:?}");
            shared += 1;
        }
    }
    assert!(shared > 1000, "{shared}");
    let mut by_channel: HashMap<&str, Vec<u64>> = HashMap::new();
    for (ch, seq) in got_a.data.keys() {
        by_channel.entry(ch).or_default().push(*seq);
    }
    for (ch, mut seqs) in by_channel {
        seqs.sort_unstable();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{ch}: {seqs:?}");
    }
    assert!(got_a.bytes > 0);
}

#[tokio::test]
async fn an_unknown_format_is_refused_on_ws_and_binary_on_sse() {
    let gw = start_gateway();
    let upgrade = "GET /ws?format=xml HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\n\r\n";
    let answer = support::raw_request(gw.local_addr(), upgrade).await;
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("json"), "{answer}");
    let sse = "GET /sse?streams=trades.BTC-USD&format=binary HTTP/1.1\r\nHost: x\r\n\r\n";
    let answer = support::raw_request(gw.local_addr(), sse).await;
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("/ws"), "{answer}");
}
