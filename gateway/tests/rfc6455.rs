//! RFC 6455 edge cases a server must get right, against a live gateway over a raw TCP socket:
//! fragmentation, control frames between fragments, UTF-8 (also split across fragments),
//! reserved bits and opcodes, control-frame limits, masking, the close handshake and its codes,
//! binary frames and oversized frames.
//!
//! The table below is the specification: each row is sent on a fresh connection and states
//! the server's exact reaction. Every close frame the server sends is checked too: at most 125
//! bytes, a code, a UTF-8 reason, and the TCP connection ends right after it.

mod support;

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gateway::Config;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long to wait for any one server frame, or for the end of the connection.
const WAIT: Duration = Duration::from_secs(3);

// First byte of a frame: FIN, reserved bits, opcode.
const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// One row: what the client sends right after the handshake, and how the server must react.
struct Case {
    name: String,
    send: Vec<u8>,
    expect: Expect,
}

/// The server's reaction to a row.
#[derive(Debug)]
enum Expect {
    /// These arrive, in this order and nothing else (data messages and server pings aside);
    /// then the connection still answers `{"op":"ping","id":99}`.
    Open(Vec<Got>),
    /// A close frame with this code, then the end of the TCP connection.
    Close(u16),
    /// The client's close frame echoed byte for byte, then the end of the TCP connection.
    Echo(Vec<u8>),
    /// A close frame that is empty or holds just code 1000, then the end of the connection.
    EmptyOr1000,
}

/// One thing the server sends on a connection that stays open.
enum Got {
    /// A text reply `{"op": op, "id": id, …}`.
    Reply(&'static str, Value),
    /// An error reply with this `code`.
    Error(&'static str),
    /// A pong frame with this payload.
    Pong(Vec<u8>),
}

fn cases() -> Vec<Case> {
    let ping_req = |id: u64| format!(r#"{{"op":"ping","id":{id}}}"#).into_bytes();
    let pong_reply = |id: u64| Got::Reply("pong", json!(id));
    // A ping request whose id is a string ending in `bytes` (split points land inside them).
    let ping_with = |bytes: &[u8]| [br#"{"op":"ping","id":""#, bytes, br#""}"#].concat();
    let max_frame = Config::for_tests().max_frame_bytes;

    let r1 = ping_req(1);
    let sub = br#"{"op":"subscribe","id":2,"channels":["trades.BTC-USD"]}"#;
    let r3 = ping_req(3);
    let r4 = ping_req(4);
    let r5 = ping_req(5);
    // "€" is E2 82 AC: fragments end after E2 and after 82 (`at` is where 82 is).
    let euro = ping_with("€".as_bytes());
    let at = euro.len() - 4;
    // "𝄞" is F0 9D 84 9E: fragments end after F0 and after 9D 84 (`at4` is where 9D is).
    let clef = ping_with("𝄞".as_bytes());
    let at4 = clef.len() - 5;
    // E2 82 ending the first fragment, `"` starting the next: a character cut short.
    let cut_char = ping_with(&[0xE2, 0x82]);
    let split_at = cut_char.len() - 2;
    let r6 = ping_req(6);

    let mut cases = vec![
        // 1. Fragmentation.
        case(
            "text in 3 fragments",
            [masked(TEXT, &r1[..5]), masked(CONT, &r1[5..12]), masked(FIN | CONT, &r1[12..])]
                .concat(),
            Expect::Open(vec![pong_reply(1)]),
        ),
        case(
            "subscribe in 2 fragments",
            [masked(TEXT, &sub[..20]), masked(FIN | CONT, &sub[20..])].concat(),
            Expect::Open(vec![Got::Reply("subscribed", json!(2))]),
        ),
        case(
            "fragments with empty payloads around the message",
            [masked(TEXT, b""), masked(CONT, &r6), masked(FIN | CONT, b"")].concat(),
            Expect::Open(vec![pong_reply(6)]),
        ),
        // 2, 3. Control frames between fragments.
        case(
            "ping between fragments",
            [masked(TEXT, &r3[..7]), masked(FIN | PING, b"between"), masked(FIN | CONT, &r3[7..])]
                .concat(),
            Expect::Open(vec![Got::Pong(b"between".to_vec()), pong_reply(3)]),
        ),
        case(
            "pong between fragments",
            [masked(TEXT, &r4[..7]), masked(FIN | PONG, b"unasked"), masked(FIN | CONT, &r4[7..])]
                .concat(),
            Expect::Open(vec![pong_reply(4)]),
        ),
        case("unsolicited pong", masked(FIN | PONG, b"x"), Expect::Open(vec![])),
        case(
            "ping with an empty payload",
            masked(FIN | PING, b""),
            Expect::Open(vec![Got::Pong(Vec::new())]),
        ),
        // 18. The largest control payload.
        case(
            "ping with 125 bytes",
            masked(FIN | PING, &[0xA5; 125]),
            Expect::Open(vec![Got::Pong(vec![0xA5; 125])]),
        ),
        // 4. UTF-8 across fragments.
        case(
            "3-byte character split across 3 fragments",
            [
                masked(TEXT, &euro[..at]),
                masked(CONT, &euro[at..at + 1]),
                masked(FIN | CONT, &euro[at + 1..]),
            ]
            .concat(),
            Expect::Open(vec![Got::Reply("pong", json!("€"))]),
        ),
        case(
            "4-byte character split across 3 fragments",
            [
                masked(TEXT, &clef[..at4]),
                masked(CONT, &clef[at4..at4 + 2]),
                masked(FIN | CONT, &clef[at4 + 2..]),
            ]
            .concat(),
            Expect::Open(vec![Got::Reply("pong", json!("𝄞"))]),
        ),
        case(
            "invalid sequence across fragments",
            [masked(TEXT, &cut_char[..split_at]), masked(FIN | CONT, &cut_char[split_at..])]
                .concat(),
            Expect::Close(1007),
        ),
        case(
            "invalid middle fragment between valid ones",
            [masked(TEXT, &r5[..7]), masked(CONT, &[0xFF]), masked(FIN | CONT, &r5[7..])].concat(),
            Expect::Close(1007),
        ),
        case(
            "message ends inside a character",
            [masked(TEXT, br#"{"op":"ping","id":"x"} "#), masked(FIN | CONT, &[0xE2, 0x82])]
                .concat(),
            Expect::Close(1007),
        ),
        // 16. Binary frames are refused, not fatal.
        case(
            "binary frame",
            masked(FIN | BINARY, br#"{"op":"ping","id":7}"#),
            Expect::Open(vec![Got::Error("binary_frame")]),
        ),
        case(
            "fragmented binary message",
            [masked(BINARY, b"ab"), masked(CONT, b"cd"), masked(FIN | CONT, b"ef")].concat(),
            Expect::Open(vec![Got::Error("binary_frame")]),
        ),
        case(
            "empty binary frame",
            masked(FIN | BINARY, b""),
            Expect::Open(vec![Got::Error("binary_frame")]),
        ),
        // 6. Reserved bits.
        case("RSV1 on a text frame", masked(FIN | RSV1 | TEXT, &r1), Expect::Close(1002)),
        case("RSV2 on a text frame", masked(FIN | RSV2 | TEXT, &r1), Expect::Close(1002)),
        case("RSV3 on a text frame", masked(FIN | RSV3 | TEXT, &r1), Expect::Close(1002)),
        case("RSV1 on a ping", masked(FIN | RSV1 | PING, b"x"), Expect::Close(1002)),
        // 8. Control frames carry at most 125 bytes.
        case("ping with 126 bytes", masked(FIN | PING, &[b'p'; 126]), Expect::Close(1002)),
        case("pong with 126 bytes", masked(FIN | PONG, &[b'p'; 126]), Expect::Close(1002)),
        case(
            "close with 126 bytes",
            masked(FIN | CLOSE, &close_body(1000, &[b'r'; 124])),
            Expect::Close(1002),
        ),
        // 9. Control frames are never fragmented.
        case("fragmented ping", masked(PING, b"x"), Expect::Close(1002)),
        case("fragmented close", masked(CLOSE, &close_body(1000, b"")), Expect::Close(1002)),
        // 10, 11. Continuations only continue, messages do not nest.
        case("continuation without a message", masked(FIN | CONT, &r1), Expect::Close(1002)),
        case("unfinished continuation without a message", masked(CONT, b"x"), Expect::Close(1002)),
        case(
            "text frame inside a fragmented message",
            [masked(TEXT, &r1[..5]), masked(FIN | TEXT, &r1)].concat(),
            Expect::Close(1002),
        ),
        case(
            "binary frame inside a fragmented text message",
            [masked(TEXT, &r1[..5]), masked(FIN | BINARY, b"x")].concat(),
            Expect::Close(1002),
        ),
        // 12. Clients must mask.
        case("unmasked text frame", unmasked(FIN | TEXT, &r1), Expect::Close(1002)),
        case("unmasked ping", unmasked(FIN | PING, b"x"), Expect::Close(1002)),
        // 13, 14. The close handshake.
        case("close with an empty body", masked(FIN | CLOSE, b""), Expect::EmptyOr1000),
        case(
            "close 1000 with a reason",
            masked(FIN | CLOSE, &close_body(1000, b"bye")),
            Expect::Echo(close_body(1000, b"bye")),
        ),
        case(
            "close 1000 with the longest reason (123 bytes)",
            masked(FIN | CLOSE, &close_body(1000, &[b'r'; 123])),
            Expect::Echo(close_body(1000, &[b'r'; 123])),
        ),
        case(
            "close inside a fragmented message",
            [masked(TEXT, &r1[..5]), masked(FIN | CLOSE, &close_body(1000, b""))].concat(),
            Expect::Echo(close_body(1000, b"")),
        ),
        case(
            "nothing after a close is answered",
            [masked(FIN | CLOSE, &close_body(1000, b"")), masked(FIN | TEXT, &r1)].concat(),
            Expect::Echo(close_body(1000, b"")),
        ),
        // 15. Invalid close bodies.
        case("close with a 1-byte body", masked(FIN | CLOSE, &[0x03]), Expect::Close(1002)),
        case(
            "close reason not UTF-8",
            masked(FIN | CLOSE, &close_body(1000, &[b'o', 0xFF, b'k'])),
            Expect::Close(1007),
        ),
        // 17. Oversized frames are refused from their header alone; a fragmented message is
        // held to the same limit as a whole.
        case(
            "frame header claiming more than the frame limit",
            oversized_header(FIN | TEXT, (2 << 20).max(2 * max_frame) as u64),
            Expect::Close(1009),
        ),
        case(
            "fragmented message over the frame limit",
            [
                masked(TEXT, &vec![b' '; max_frame / 2 + 1]),
                masked(FIN | CONT, &vec![b' '; max_frame / 2 + 1]),
            ]
            .concat(),
            Expect::Close(1009),
        ),
    ];

    // 5. Invalid UTF-8 in a single text frame.
    for (what, bytes) in [
        ("0xFF", &[0xFF][..]),
        ("an overlong '/'", &[0xC0, 0xAF]),
        ("a surrogate", &[0xED, 0xA0, 0x80]),
        ("a code point above U+10FFFF", &[0xF4, 0x90, 0x80, 0x80]),
    ] {
        let name = format!("text frame with {what}");
        cases.push(case(&name, masked(FIN | TEXT, &ping_with(bytes)), Expect::Close(1007)));
    }
    // 7. Reserved opcodes.
    for op in (0x3..=0x7).chain(0xB..=0xF) {
        let name = format!("reserved opcode {op:#X}");
        cases.push(case(&name, masked(FIN | op, b"x"), Expect::Close(1002)));
    }
    // 14, 15. Close codes: exactly those fastwebsockets' `CloseCode::is_allowed` accepts are
    // echoed (1000–1003, 1007–1013, 3000–4999); the others are a protocol error.
    for code in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 4999] {
        let body = close_body(code, b"why");
        let name = format!("close code {code}");
        cases.push(case(&name, masked(FIN | CLOSE, &body), Expect::Echo(body)));
    }
    for code in [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000, 65535] {
        let name = format!("close code {code} (may not be sent)");
        cases.push(case(&name, masked(FIN | CLOSE, &close_body(code, b"")), Expect::Close(1002)));
    }
    cases
}

#[tokio::test]
async fn rfc6455_edge_cases() {
    let gw = support::start_gateway();
    let addr = gw.local_addr();
    let started = Instant::now();
    let cases = cases();
    let mut failed = Vec::new();
    for case in &cases {
        if let Err(e) = run(addr, case).await {
            eprintln!("FAILED {}: {e}", case.name);
            failed.push(format!("{}: {e}", case.name));
        }
    }
    eprintln!("{} rows in {:.2?}", cases.len(), started.elapsed());
    let report = failed.join("\n");
    assert!(failed.is_empty(), "{} of {} rows failed:\n{report}", failed.len(), cases.len());
}

/// Runs one row on a fresh connection.
async fn run(addr: SocketAddr, case: &Case) -> Result<(), String> {
    let mut s = support::raw_handshake(addr).await;
    s.write_all(&case.send).await.map_err(|e| format!("writing the row: {e}"))?;
    match &case.expect {
        Expect::Open(expected) => {
            for want in expected {
                expect_got(&mut s, want).await?;
            }
            s.write_all(&masked(FIN | TEXT, br#"{"op":"ping","id":99}"#))
                .await
                .map_err(|e| format!("writing the final ping request: {e}"))?;
            expect_got(&mut s, &Got::Reply("pong", json!(99)))
                .await
                .map_err(|e| format!("connection not usable afterwards: {e}"))
        }
        Expect::Close(code) => {
            let body = expect_close(&mut s).await?;
            match close_code(&body) {
                Some(got) if got == *code => Ok(()),
                got => Err(format!("close code {got:?}, expected {code}: {}", show(&body))),
            }
        }
        Expect::Echo(echo) => {
            let body = expect_close(&mut s).await?;
            match body == *echo {
                true => Ok(()),
                false => Err(format!("close {} is not the echo of {}", show(&body), show(echo))),
            }
        }
        Expect::EmptyOr1000 => {
            let body = expect_close(&mut s).await?;
            match body.is_empty() || body == close_body(1000, b"") {
                true => Ok(()),
                false => Err(format!("close {}, expected an empty one or 1000", show(&body))),
            }
        }
    }
}

/// Reads until `want` arrives; data messages and server pings are skipped, anything else is
/// an error.
async fn expect_got(s: &mut TcpStream, want: &Got) -> Result<(), String> {
    let got = loop {
        match read_frame(s).await? {
            None => return Err(format!("connection ended, expected {want:?}")),
            Some(ServerFrame::Ping) => {}
            Some(ServerFrame::Text(v)) if v.get("op").is_none() => {} // data
            Some(frame) => break frame,
        }
    };
    let matches = match (want, &got) {
        (Got::Reply(op, id), ServerFrame::Text(v)) => v["op"] == *op && v["id"] == *id,
        (Got::Error(code), ServerFrame::Text(v)) => v["op"] == "error" && v["code"] == *code,
        (Got::Pong(p), ServerFrame::Pong(got)) => p == got,
        _ => false,
    };
    match matches {
        true => Ok(()),
        false => Err(format!("expected {want:?}, got {got:?}")),
    }
}

/// Reads until the server's close frame, which must come before any reply or pong; then the
/// server must end the TCP connection with nothing more. Returns the close frame's payload.
async fn expect_close(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    let body = loop {
        match read_frame(s).await? {
            None => return Err("connection ended without a close frame".into()),
            Some(ServerFrame::Close(body)) => break body,
            Some(ServerFrame::Ping) => {}
            Some(other) => return Err(format!("expected a close frame, got {other:?}")),
        }
    };
    let mut rest = Vec::new();
    match tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await {
        Err(_) => Err(format!("close {} arrived but the TCP connection stayed open", show(&body))),
        Ok(Err(e)) => Err(format!("close {}, then {e} instead of a clean end", show(&body))),
        Ok(Ok(_)) if !rest.is_empty() => Err(format!("{} bytes after the close frame", rest.len())),
        Ok(Ok(_)) => Ok(body),
    }
}

/// A frame from the server.
enum ServerFrame {
    /// A text message, parsed as JSON.
    Text(Value),
    /// A server ping (its payload is not needed: pings are skipped).
    Ping,
    Pong(Vec<u8>),
    /// A close frame's payload (checked: empty, or a code and a UTF-8 reason; ≤ 125 bytes).
    Close(Vec<u8>),
}

/// Reads one server frame (RFC 6455 §5.2), checking what a server must do: no mask, no reserved
/// bits, messages in one frame, control frames unfragmented and ≤ 125 bytes, close bodies
/// well formed. `None` when the connection ended cleanly before a frame began.
async fn read_frame(s: &mut TcpStream) -> Result<Option<ServerFrame>, String> {
    let mut b0 = [0u8; 1];
    match tokio::time::timeout(WAIT, s.read(&mut b0)).await {
        Err(_) => return Err(format!("nothing from the server within {WAIT:?}")),
        Ok(Err(e)) => return Err(format!("reading: {e}")),
        Ok(Ok(0)) => return Ok(None),
        Ok(Ok(_)) => {}
    }
    let b0 = b0[0];
    let b1 = read_n(s, 1).await?[0];
    if b0 & (RSV1 | RSV2 | RSV3) != 0 {
        return Err(format!("server frame with reserved bits: {b0:#04x}"));
    }
    if b1 & 0x80 != 0 {
        return Err("server frame is masked (RFC 6455 §5.1)".into());
    }
    let len = match b1 & 0x7F {
        126 => u16::from_be_bytes(read_n(s, 2).await?.try_into().expect("2 bytes")) as usize,
        127 => u64::from_be_bytes(read_n(s, 8).await?.try_into().expect("8 bytes")) as usize,
        n => usize::from(n),
    };
    let (fin, op) = (b0 & FIN != 0, b0 & 0x0F);
    if op >= CLOSE && (!fin || len > 125) {
        return Err(format!("server control frame {op:#x}: fin {fin}, {len} bytes"));
    }
    if !fin {
        return Err(format!("server fragmented a message (opcode {op:#x})"));
    }
    let payload = read_n(s, len).await?;
    match op {
        TEXT => serde_json::from_slice(&payload).map(|v| Some(ServerFrame::Text(v))).map_err(|e| {
            format!("server text is not JSON ({e}): {:?}", String::from_utf8_lossy(&payload))
        }),
        PING => Ok(Some(ServerFrame::Ping)),
        PONG => Ok(Some(ServerFrame::Pong(payload))),
        CLOSE if payload.len() == 1 => Err("server close frame with a 1-byte body".into()),
        CLOSE if std::str::from_utf8(payload.get(2..).unwrap_or_default()).is_err() => {
            Err(format!("server close reason is not UTF-8: {}", show(&payload)))
        }
        CLOSE => Ok(Some(ServerFrame::Close(payload))),
        other => Err(format!("unexpected server opcode {other:#x}")),
    }
}

async fn read_n(s: &mut TcpStream, n: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; n];
    match tokio::time::timeout(WAIT, s.read_exact(&mut buf)).await {
        Err(_) => Err(format!("a frame stalled: {n} bytes did not arrive within {WAIT:?}")),
        Ok(Err(e)) => Err(format!("connection ended inside a frame: {e}")),
        Ok(Ok(_)) => Ok(buf),
    }
}

fn case(name: &str, send: Vec<u8>, expect: Expect) -> Case {
    Case { name: name.to_owned(), send, expect }
}

/// A masked client frame with first byte `b0` (FIN, reserved bits, opcode), with the 7-bit,
/// 16-bit or 64-bit length form its payload needs.
fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xFA, 0x21, 0x3D];
    let mut out = support::frame_header(b0, 0x80, payload.len() as u64);
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// A client frame without the mask bit, which a server must refuse.
fn unmasked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = support::frame_header(b0, 0, payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

/// Only the header (and masking key) of a masked frame claiming `len` payload bytes.
fn oversized_header(b0: u8, len: u64) -> Vec<u8> {
    let mut out = support::frame_header(b0, 0x80, len);
    out.extend_from_slice(&[1, 2, 3, 4]);
    out
}

/// A close frame's body: the code, big-endian, then the reason.
fn close_body(code: u16, reason: &[u8]) -> Vec<u8> {
    [&code.to_be_bytes()[..], reason].concat()
}

fn close_code(body: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*body.first()?, *body.get(1)?]))
}

/// A close frame's body for messages: its code and reason, or its bytes when shorter than a code.
fn show(payload: &[u8]) -> String {
    match close_code(payload) {
        Some(code) => format!("[{code} {:?}]", String::from_utf8_lossy(&payload[2..])),
        None => format!("{payload:02x?}"),
    }
}

/// A pong payload for messages: its length and its first bytes.
fn show_bytes(p: &[u8]) -> String {
    let more = if p.len() > 12 { " …" } else { "" };
    format!("{} bytes {:02x?}{more}", p.len(), &p[..p.len().min(12)])
}

impl fmt::Debug for Got {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Got::Reply(op, id) => write!(f, "reply {op} id {id}"),
            Got::Error(code) => write!(f, "error {code}"),
            Got::Pong(p) => write!(f, "pong of {}", show_bytes(p)),
        }
    }
}

impl fmt::Debug for ServerFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerFrame::Text(v) => write!(f, "text {v}"),
            ServerFrame::Ping => write!(f, "ping"),
            ServerFrame::Pong(p) => write!(f, "pong of {}", show_bytes(p)),
            ServerFrame::Close(body) => write!(f, "close {}", show(body)),
        }
    }
}
