//! Test support: a real gateway on `127.0.0.1:0` and a real WebSocket client (fastwebsockets'
//! client handshake over a real TCP socket). Shared by every integration test file.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::time::Duration;

use bench::scan::Scanned;
use fastwebsockets::{Frame, OpCode, Payload};
use gateway::{Config, Gateway};
use serde_json::Value;

/// How long a test waits for any one expected message.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// A gateway with a fast feed, few symbols and two workers, on a free port.
/// A spawned external tool, or `None` when it is not installed and TICKFAN_REQUIRE_TOOLS is
/// unset (a developer machine: the test says SKIPPED). With it set (`.ci/run`), a missing
/// tool fails the test. `package` is the Debian package that provides it.
pub fn installed<C>(program: &str, package: &str, spawned: std::io::Result<C>) -> Option<C> {
    match spawned {
        Ok(child) => Some(child),
        Err(_) if std::env::var_os("TICKFAN_REQUIRE_TOOLS").is_none() => {
            eprintln!("SKIPPED: {program} not installed (apt-get install {package})");
            None
        }
        Err(e) => panic!("{program} is required here (TICKFAN_REQUIRE_TOOLS): {e}"),
    }
}

/// `GET path` over a fresh connection; the whole response, head and body, as text.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    http_get_with(addr, path, "").await
}

/// [`http_get`] with extra header lines (each ending in `\r\n`).
pub async fn http_get_with(addr: SocketAddr, path: &str, headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

pub fn start_gateway() -> Gateway {
    start_gateway_with(|_| {})
}

/// Like [`start_gateway`], after `tweak` adjusted the configuration.
pub fn start_gateway_with(tweak: impl FnOnce(&mut Config)) -> Gateway {
    let mut cfg = Config::for_tests();
    cfg.symbols = 20;
    cfg.rate = 20_000.0;
    cfg.workers = 2;
    tweak(&mut cfg);
    Gateway::start(cfg).expect("gateway starts")
}

/// What a client received.
#[derive(Debug, Clone, PartialEq)]
pub enum Msg {
    /// A text message, parsed as JSON, with its raw bytes.
    Text(Value, Vec<u8>),
    /// A close frame: code and reason.
    Close(u16, String),
}

/// A WebSocket client for tests.
pub struct Client {
    ws: bench::client::ClientSocket,
}

impl Client {
    /// Connects to `ws://addr{path}` (path like `/ws` or `/ws?streams=…`).
    pub async fn connect(addr: SocketAddr, path: &str) -> Client {
        Client { ws: bench::client::connect(addr, path, None).await.expect("websocket connect") }
    }

    /// Connects with a tiny socket receive buffer: a client that cannot absorb a backlog, to
    /// provoke slow-consumer handling without waiting for megabytes of kernel buffers to fill.
    pub async fn connect_with_small_buffer(addr: SocketAddr, path: &str) -> Client {
        Client {
            ws: bench::client::connect(addr, path, Some(4096)).await.expect("websocket connect"),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(Frame::text(Payload::Owned(text.as_bytes().to_vec()))).await;
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_frame(&mut self, frame: Frame<'_>) {
        self.ws.write_frame(frame).await.expect("write frame");
    }

    /// Next message, or panics after [`RECV_TIMEOUT`].
    pub async fn recv(&mut self) -> Msg {
        self.try_recv(RECV_TIMEOUT).await.expect("a message within the timeout")
    }

    /// Next message, or `None` on timeout or when the connection ended without a close frame.
    pub async fn try_recv(&mut self, timeout: Duration) -> Option<Msg> {
        let frame = tokio::time::timeout(timeout, self.ws.read_frame()).await.ok()?.ok()?;
        match frame.opcode {
            OpCode::Text => {
                let raw = frame.payload.to_vec();
                let v = serde_json::from_slice(&raw).expect("server sends JSON");
                Some(Msg::Text(v, raw))
            }
            OpCode::Close => {
                let p = frame.payload.to_vec();
                let code = if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1005 };
                Some(Msg::Close(
                    code,
                    String::from_utf8_lossy(p.get(2..).unwrap_or(&[])).into_owned(),
                ))
            }
            other => panic!("unexpected opcode {other:?}"),
        }
    }

    /// Next JSON message, panicking on a close.
    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Msg::Text(v, _) => v,
            Msg::Close(code, reason) => panic!("closed {code} {reason}"),
        }
    }

    /// Reads until a control reply (a message with `op`) arrives, skipping data messages.
    pub async fn reply(&mut self) -> Value {
        loop {
            let v = self.recv_json().await;
            if v.get("op").is_some() {
                return v;
            }
        }
    }

    /// Sends a request and returns its reply (data messages in between are skipped).
    pub async fn request(&mut self, v: Value) -> Value {
        self.send_json(v).await;
        self.reply().await
    }

    /// Reads until a close frame arrives (data and replies skipped).
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.recv().await {
                Msg::Close(code, reason) => return (code, reason),
                Msg::Text(..) => {}
            }
        }
    }
}

/// A `subscribed` reply without its `epoch`, after checking the epoch looks like one (16 hex
/// digits), so replies can be compared whole.
pub fn without_epoch(mut reply: Value) -> Value {
    let epoch = reply.as_object_mut().and_then(|o| o.remove("epoch"));
    let epoch =
        epoch.as_ref().and_then(Value::as_str).unwrap_or_else(|| panic!("no epoch: {reply}"));
    assert!(epoch.len() == 16 && epoch.bytes().all(|b| b.is_ascii_hexdigit()), "epoch {epoch}");
    reply
}

/// Per-channel sequence checker (bench's, the one the load harness uses), fed with parsed JSON.
pub type SeqCheck = bench::seq::SeqTracker;

/// Feeds a parsed message to a [`SeqCheck`].
pub trait ObserveJson {
    fn observe_json(&mut self, v: &Value);
}

impl ObserveJson for SeqCheck {
    fn observe_json(&mut self, v: &Value) {
        let ch = v["ch"].as_str().unwrap_or_default().as_bytes();
        let msg = if v["op"] == "gap" {
            let (from, to) = (v["from"].as_u64(), v["to"].as_u64());
            Scanned::Gap { ch, from: from.expect("gap has from"), to: to.expect("gap has to") }
        } else if let (false, Some(seq), "snapshot") =
            (ch.is_empty(), v["seq"].as_u64(), v["type"].as_str().unwrap_or_default())
        {
            Scanned::Snapshot { ch, seq }
        } else if let (false, Some(seq)) = (ch.is_empty(), v["seq"].as_u64()) {
            Scanned::Data { ch, seq, ts: v["ts"].as_u64().unwrap_or_default() }
        } else {
            Scanned::Other
        };
        self.observe(msg);
    }
}
