//! permessage-deflate (RFC 7692) against a real gateway: an offer is answered with
//! `server_no_context_takeover; client_no_context_takeover`; data frames come compressed
//! (RSV1), byte-identical for every compressing client (deflated once) and, inflated, equal to
//! what a plain client gets; Python's `websockets` (a third-party client that compresses what
//! it sends too) reads the stream and gets its compressed requests answered; bad compressed
//! input closes with 1007; without `--permessage-deflate` offers are turned down.

mod support;

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::{python_with_websockets, start_gateway, start_gateway_with, Client};

/// A gateway that takes permessage-deflate offers.
fn deflating_gateway() -> gateway::Gateway {
    start_gateway_with(|c| c.permessage_deflate = true)
}
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const STREAMS: &str = "trades.*,quotes.*,book.BTC-USD";

/// A raw WebSocket client that offers `extensions`; the answer's head and the socket.
async fn connect_offering(addr: SocketAddr, extensions: &str) -> (String, TcpStream) {
    let path = format!("/ws?streams={STREAMS}");
    support::connect_raw(addr, &path, &format!("Sec-WebSocket-Extensions: {extensions}\r\n")).await
}

/// A compressed message's text (RFC 7692 §7.2.2: append 00 00 ff ff, inflate).
fn inflate(payload: &[u8]) -> Vec<u8> {
    let wire = [payload, &[0, 0, 0xff, 0xff]].concat();
    let mut text = Vec::new();
    // The stream has no end marker: reading stops with an error at the end of the input.
    let _ = flate2::read::DeflateDecoder::new(wire.as_slice()).read_to_end(&mut text);
    text
}

/// Every data message read within `n` frames, by (channel, seq): (first byte, raw payload,
/// text).
async fn data_frames(
    s: &mut TcpStream,
    n: usize,
) -> HashMap<(String, u64), (u8, Vec<u8>, Vec<u8>)> {
    let mut got = HashMap::new();
    for _ in 0..n {
        let (b0, payload) =
            tokio::time::timeout(Duration::from_secs(5), support::read_server_frame(s))
                .await
                .expect("a frame within 5 s");
        if b0 & 0x0f != 0x1 {
            continue; // a ping
        }
        let text = if b0 & 0x40 != 0 { inflate(&payload) } else { payload.clone() };
        let v: Value = serde_json::from_slice(&text).expect("JSON once inflated");
        if let (Some(ch), Some(seq)) = (v["ch"].as_str(), v["seq"].as_u64()) {
            if v["type"] != "snapshot" {
                got.insert((ch.to_owned(), seq), (b0, payload, text));
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_frames_are_deflated_once_and_inflate_to_the_plain_bytes() {
    let gw = deflating_gateway();
    let addr = gw.local_addr();
    let offer = "permessage-deflate; client_max_window_bits";
    let (head, mut a) = connect_offering(addr, offer).await;
    let accepted = "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; \
                    client_no_context_takeover\r\n";
    assert!(head.to_ascii_lowercase().contains(accepted), "{head}");
    let (_, mut b) = connect_offering(addr, "permessage-deflate").await;
    let mut plain = Client::connect(addr, &format!("/ws?streams={STREAMS}")).await;
    let deflating = "tickfan_connections_by_format{format=\"deflate\"}";
    support::metric_reaches(addr, deflating, 2.0).await;

    let (got_a, got_b) = tokio::join!(data_frames(&mut a, 1500), data_frames(&mut b, 1500));
    let mut plain_text = HashMap::new();
    for _ in 0..1500 {
        let v = plain.recv().await;
        if let support::Msg::Text(v, raw) = v {
            if let (Some(ch), Some(seq), false) =
                (v["ch"].as_str(), v["seq"].as_u64(), v["type"] == "snapshot")
            {
                plain_text.insert((ch.to_owned(), seq), raw);
            }
        }
    }
    let (mut compressed, mut shared, mut compared, mut saved) = (0, 0, 0, 0i64);
    for (key, (b0, payload, text)) in &got_a {
        assert!(*b0 == 0xC1 || *b0 == 0x81, "FIN text, RSV1 or not: {b0:#x}");
        if *b0 == 0xC1 {
            compressed += 1;
            saved += text.len() as i64 - payload.len() as i64;
            assert!(payload.len() < text.len(), "compressed only when smaller");
        }
        if let Some((b0_b, payload_b, _)) = got_b.get(key) {
            // Encode once: the same compressed bytes for every compressing client.
            assert_eq!((b0, payload), (b0_b, payload_b), "{key:?}");
            shared += 1;
        }
        if let Some(raw) = plain_text.get(key) {
            assert_eq!(text, raw, "{key:?}: inflated, the plain client's bytes");
            compared += 1;
        }
    }
    eprintln!(
        "{} data frames, {compressed} compressed ({saved} bytes saved), {shared} shared, \
         {compared} compared with the plain client's",
        got_a.len()
    );
    assert!(compressed > got_a.len() / 2, "{compressed} of {} compressed", got_a.len());
    assert!(shared > 500 && compared > 500, "{shared} shared, {compared} compared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_compressed_input_closes_1007_and_offers_are_taken_only_when_asked() {
    let gw = deflating_gateway();
    let (_, mut s) = connect_offering(gw.local_addr(), "permessage-deflate").await;
    // A compressed request in two fragments (RSV1 on the first only), masked with zeros: the
    // pong comes.
    let mut deflater = flate2::Compress::new(flate2::Compression::default(), false);
    let mut body = Vec::with_capacity(256);
    let request = br#"{"op":"ping","id":"fragmented and compressed"}"#;
    deflater.compress_vec(request, &mut body, flate2::FlushCompress::Sync).unwrap();
    body.truncate(body.len() - 4); // the 00 00 ff ff tail
    let (first, second) = body.split_at(body.len() / 2);
    let mut frames = vec![0x41, 0x80 | first.len() as u8, 0, 0, 0, 0];
    frames.extend_from_slice(first);
    frames.extend_from_slice(&[0x80, 0x80 | second.len() as u8, 0, 0, 0, 0]);
    frames.extend_from_slice(second);
    s.write_all(&frames).await.unwrap();
    let pong = loop {
        let (b0, payload) = support::read_server_frame(&mut s).await;
        let text = if b0 & 0x40 != 0 { inflate(&payload) } else { payload };
        let v: Value = serde_json::from_slice(&text).unwrap_or_default();
        if v["op"] == "pong" {
            break v;
        }
    };
    assert_eq!(pong["id"], "fragmented and compressed");
    // A masked text frame with RSV1 whose payload is not deflate data (mask of zeros).
    s.write_all(&[0xC1, 0x84, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
    let close = loop {
        let (b0, payload) = support::read_server_frame(&mut s).await;
        if b0 & 0x0f == 0x8 {
            break payload;
        }
    };
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1007, "{close:?}");

    let gw = start_gateway();
    let (head, mut s) = connect_offering(gw.local_addr(), "permessage-deflate").await;
    assert!(!head.to_ascii_lowercase().contains("sec-websocket-extensions"), "{head}");
    let frames = data_frames(&mut s, 50).await;
    assert!(frames.values().all(|(b0, ..)| *b0 == 0x81), "all plain");
    // Without the extension, RSV1 is a protocol error.
    s.write_all(&[0xC1, 0x80, 0, 0, 0, 0]).await.unwrap();
    let close = loop {
        let (b0, payload) = support::read_server_frame(&mut s).await;
        if b0 & 0x0f == 0x8 {
            break payload;
        }
    };
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1002);
}

/// Python's `websockets` offers permessage-deflate by default and compresses what it sends.
const PYTHON: &str = r#"
import asyncio, json, sys, websockets

async def main(url):
    async with websockets.connect(url) as ws:
        # websockets >= 13: ws.response.headers; before: ws.response_headers.
        headers = ws.response.headers if hasattr(ws, "response") else ws.response_headers
        print("EXT", headers.get("Sec-WebSocket-Extensions"), flush=True)
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "channels": ["trades.*", "book.BTC-USD"]}))
        await ws.send(json.dumps({"op": "ping", "id": "p" * 120}))  # compresses well
        for _ in range(400):
            print(await ws.recv(), flush=True)

asyncio.run(main(sys.argv[1]))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_reads_the_compressed_stream_and_is_answered() {
    let Some(()) = python_with_websockets() else { return };
    let gw = deflating_gateway();
    let url = format!("ws://{}/ws", gw.local_addr());
    let out = tokio::process::Command::new("python3")
        .args(["-c", PYTHON, &url])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", support::show(&out));
    let mut lines = stdout.lines();
    let ext = lines.next().unwrap_or_default();
    assert!(ext.starts_with("EXT permessage-deflate; server_no_context_takeover"), "{ext}");
    let msgs: Vec<Value> = lines.map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(msgs.len(), 400);
    assert!(msgs.iter().any(|m| m["op"] == "subscribed" && m["id"] == 1), "subscribed");
    assert!(msgs.iter().any(|m| m["op"] == "pong" && m["id"] == "p".repeat(120)), "pong");
    let mut seq = support::SeqCheck::default();
    for m in msgs.iter().filter(|m| m.get("ch").is_some()) {
        support::ObserveJson::observe_json(&mut seq, m);
    }
    assert!(seq.messages > 300 && seq.undeclared_gaps == 0, "{seq:?}");
}
