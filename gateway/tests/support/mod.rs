//! Test support: a real gateway on `127.0.0.1:0` and a real WebSocket client (fastwebsockets'
//! client handshake over a real TCP socket), which checks what it receives against
//! docs/asyncapi.yaml (`spec`). Shared by every integration test file.
#![allow(dead_code)] // each test binary uses a different subset

mod spec;

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

/// A WebSocket upgrade of `/ws` done by hand over a raw TCP socket, for tests that then write
/// bytes no conforming client would.
pub async fn raw_handshake(addr: SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    upgrade_by_hand(&mut s, "x").await;
    s
}

/// Sends the upgrade request of `/ws` on `s` (TCP or TLS) and reads the 101 answer.
pub async fn upgrade_by_hand<S>(s: &mut S, host: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    s.write_all(upgrade_request(host, "").as_bytes()).await.unwrap();
    let head = response_head(s).await;
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
}

/// The upgrade request of `/ws`, with extra header lines (each ending in `\r\n`).
pub fn upgrade_request(host: &str, headers: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    )
}

/// A response's head, up to its blank line (or what came before the server closed), read byte
/// by byte so that nothing after it is consumed; within 5 s.
pub async fn response_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if s.read(&mut b).await.unwrap_or(0) == 0 {
                break;
            }
            head.push(b[0]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read).await.expect("an answer in time");
    head
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

impl Drop for Client {
    /// Messages kept while the spec validator started are checked now (`spec::flush`).
    fn drop(&mut self) {
        spec::flush();
    }
}

impl Client {
    /// Connects to `ws://addr{path}` (path like `/ws` or `/ws?streams=…`).
    pub async fn connect(addr: SocketAddr, path: &str) -> Client {
        spec::warm_up();
        Client { ws: bench::client::connect(addr, path, None).await.expect("websocket connect") }
    }

    /// Connects with a tiny socket receive buffer: a client that cannot absorb a backlog, to
    /// provoke slow-consumer handling without waiting for megabytes of kernel buffers to fill.
    pub async fn connect_with_small_buffer(addr: SocketAddr, path: &str) -> Client {
        spec::warm_up();
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
        let deadline = tokio::time::Instant::now() + timeout;
        let mut frame = tokio::time::timeout_at(deadline, self.ws.read_frame()).await.ok()?.ok()?;
        // Pongs answer the test's own pings: not messages.
        while frame.opcode == OpCode::Pong {
            frame = tokio::time::timeout_at(deadline, self.ws.read_frame()).await.ok()?.ok()?;
        }
        match frame.opcode {
            OpCode::Text => {
                let raw = frame.payload.to_vec();
                let v = serde_json::from_slice(&raw).expect("server sends JSON");
                spec::check(&raw, &v);
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

    /// Reads for `duration`, checking seqs: what a fast reader beside a slow one saw.
    pub async fn seq_check_for(mut self, duration: Duration) -> SeqCheck {
        let mut seq = SeqCheck::default();
        let deadline = tokio::time::Instant::now() + duration;
        while tokio::time::Instant::now() < deadline {
            seq.observe_json(&self.recv_json().await);
        }
        seq
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

/// Starts the real `tickfan` binary on a free port (10 symbols, 5000 ticks/s, plus `extra`
/// flags) and returns it with the address from its banner.
pub async fn spawn_tickfan(extra: &[&str]) -> (tokio::process::Child, SocketAddr) {
    let args = [&["--listen", "127.0.0.1:0", "--symbols", "10", "--rate", "5000"], extra].concat();
    spawn_tickfan_with(&args).await
}

/// Starts the real `tickfan` binary with exactly `args` (`--listen` among them).
pub async fn spawn_tickfan_with(args: &[&str]) -> (tokio::process::Child, SocketAddr) {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tickfan"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tickfan binary starts");
    until_banner(child).await
}

/// Starts `tickfan --source stdin` with `args`, writes `first` (the feed's announcement) to its
/// stdin, and returns it with its stdin, to write the feed to, and its address.
pub async fn spawn_tickfan_fed(
    args: &[&str],
    first: &[u8],
) -> (tokio::process::Child, tokio::process::ChildStdin, SocketAddr) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tickfan"))
        .args([&["--listen", "127.0.0.1:0", "--source", "stdin"], args].concat())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tickfan binary starts");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(first).await.unwrap();
    stdin.flush().await.unwrap();
    let (child, addr) = until_banner(child).await;
    (child, stdin, addr)
}

/// Reads `child`'s banner for its address, then keeps draining its stdout.
async fn until_banner(mut child: tokio::process::Child) -> (tokio::process::Child, SocketAddr) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let banner = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("a banner line");
            if line.contains("listening on http") {
                return line;
            }
        }
    })
    .await
    .expect("banner within 10 s");
    let addr = banner
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("banner names the address: {banner}"))
        .parse()
        .unwrap();
    tokio::spawn(async move {
        // Keep draining stdout so the child never blocks on a full pipe.
        while let Ok(Some(_)) = lines.next_line().await {}
    });
    (child, addr)
}

/// An order book as a client keeps it from `book.<SYM>` messages, written independently of
/// the gateway's: levels keyed by price, the wire strings kept for the checksum.
#[derive(Debug, Default)]
pub struct ClientBook {
    /// Bids keyed by negated price (so iteration is best first), asks by price.
    bids: std::collections::BTreeMap<i64, (String, String)>,
    asks: std::collections::BTreeMap<i64, (String, String)>,
}

/// A level as the wire writes it: price and size strings.
pub type PriceLevel = (String, String);

/// A price string as an integer: every price of a symbol has the same number of decimals.
fn price_key(px: &str) -> i64 {
    px.replace('.', "").parse().unwrap_or_else(|_| panic!("bad price {px:?}"))
}

fn is_zero(qty: &str) -> bool {
    qty.bytes().all(|b| b == b'0' || b == b'.')
}

impl ClientBook {
    /// Applies a snapshot (replacing everything) or an update.
    pub fn apply(&mut self, msg: &Value) {
        if msg["type"] == "snapshot" {
            *self = ClientBook::default();
        }
        for (side, sign) in [("bids", -1), ("asks", 1)] {
            let levels = msg[side].as_array().unwrap_or_else(|| panic!("{side} in {msg}"));
            let book = if sign < 0 { &mut self.bids } else { &mut self.asks };
            for l in levels {
                let (px, qty) = (l[0].as_str().unwrap(), l[1].as_str().unwrap());
                if is_zero(qty) {
                    book.remove(&(sign * price_key(px)));
                } else {
                    book.insert(sign * price_key(px), (px.to_owned(), qty.to_owned()));
                }
            }
        }
    }

    /// docs/protocol.md, "Book checksum": `bid1px:bid1qty:ask1px:ask1qty:…` over the top 10
    /// levels, CRC-32 (zlib's).
    pub fn checksum(&self) -> u32 {
        let bids: Vec<_> = self.bids.values().take(10).collect();
        let asks: Vec<_> = self.asks.values().take(10).collect();
        let mut parts: Vec<&str> = Vec::new();
        for i in 0..10 {
            for level in [bids.get(i), asks.get(i)].into_iter().flatten() {
                parts.push(&level.0);
                parts.push(&level.1);
            }
        }
        crc32fast::hash(parts.join(":").as_bytes())
    }

    pub fn depth(&self) -> (usize, usize) {
        (self.bids.len(), self.asks.len())
    }

    /// The best `depth` levels of each side, best first.
    pub fn top(&self, depth: usize) -> (Vec<PriceLevel>, Vec<PriceLevel>) {
        let side = |m: &std::collections::BTreeMap<i64, (String, String)>| {
            m.values().take(depth).cloned().collect()
        };
        (side(&self.bids), side(&self.asks))
    }
}

/// What a client that reconnects and resumes has seen of every channel, across connections:
/// checks that nothing is lost or duplicated and that every book message's `crc` matches.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Last seq received per channel.
    pub last: std::collections::HashMap<String, u64>,
    pub books: std::collections::HashMap<String, ClientBook>,
    pub epoch: Option<String>,
    /// Data messages checked.
    pub messages: u64,
    /// Seqs skipped without a gap notice.
    pub lost: u64,
    /// Seqs received again.
    pub duplicates: u64,
    /// Gap notices received (with the seqs they declared).
    pub gaps: u64,
    pub gap_seqs: u64,
    pub snapshots: u64,
    /// Book messages whose `crc` matched the client's own book.
    pub crc_checked: u64,
    /// Channels a resume asked for that did not resume (they start afresh).
    pub not_resumed: u64,
}

impl Ledger {
    /// Feeds one message. Panics on a checksum mismatch: the client's book is wrong.
    pub fn observe(&mut self, v: &Value) {
        match v["op"].as_str() {
            Some("subscribed") => {
                self.epoch = v["epoch"].as_str().map(str::to_owned);
                // Not resumed: what the client had of the channel is history; start afresh
                // (a book waits for its snapshot).
                for (ch, ok) in v["resumed"].as_object().into_iter().flatten() {
                    if ok != true {
                        self.not_resumed += 1;
                        self.last.remove(ch);
                        self.books.remove(ch);
                    }
                }
                return;
            }
            Some("gap") => {
                let ch = v["ch"].as_str().unwrap().to_owned();
                let (from, to) = (v["from"].as_u64().unwrap(), v["to"].as_u64().unwrap());
                self.gaps += 1;
                self.gap_seqs += to + 1 - from;
                self.last.insert(ch, to);
                return;
            }
            Some(_) => return,
            None => {}
        }
        let (Some(ch), Some(seq)) = (v["ch"].as_str(), v["seq"].as_u64()) else { return };
        if v["type"] == "snapshot" {
            self.snapshots += 1;
            self.last.insert(ch.to_owned(), seq);
        } else {
            self.messages += 1;
            match self.last.get(ch) {
                Some(&last) if seq <= last => self.duplicates += 1,
                Some(&last) => self.lost += seq - last - 1,
                None => {}
            }
            let last = self.last.entry(ch.to_owned()).or_insert(seq);
            *last = (*last).max(seq);
        }
        if ch.starts_with("book.") {
            let book = self.books.entry(ch.to_owned()).or_default();
            book.apply(v);
            let crc = v["crc"].as_u64().unwrap_or_else(|| panic!("book message without crc: {v}"));
            assert_eq!(u64::from(book.checksum()), crc, "{ch} seq {seq}: book differs");
            self.crc_checked += 1;
        }
    }

    /// A subscribe to `channels` that resumes every channel seen so far.
    pub fn resubscribe(&self, channels: &[&str]) -> Value {
        let resume: serde_json::Map<String, Value> =
            self.last.iter().map(|(ch, &seq)| (ch.clone(), seq.into())).collect();
        let mut req = serde_json::json!({"op":"subscribe","channels":channels});
        if !resume.is_empty() {
            req["resume"] = resume.into();
        }
        if let Some(epoch) = &self.epoch {
            req["epoch"] = epoch.clone().into();
        }
        req
    }
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.x).
pub async fn connect_from(from: &str, addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from.parse::<std::net::IpAddr>().unwrap(), 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// A WebSocket handshake on `/ws` from `from` with extra header lines; the status code and,
/// when it upgraded, the open socket.
pub async fn handshake_from(
    from: &str,
    addr: SocketAddr,
    headers: &str,
) -> (u16, tokio::net::TcpStream, String) {
    use tokio::io::AsyncWriteExt;
    let mut s = connect_from(from, addr).await;
    s.write_all(upgrade_request("x", headers).as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, s, head)
}

/// The response head (up to the blank line), and for a refusal its body too; "" if the server
/// closed without answering.
pub async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = response_head(s).await;
    if !head.starts_with(b"HTTP/1.1 101") {
        let mut body = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut body)).await;
        head.extend(body);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// The value of one exact series line of `/metrics`.
pub async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let body = http_get(addr, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// Waits (up to 5 s) for a series of `/metrics` to reach `want`: counters of a connection's
/// end are updated by its closing task, a moment after the client saw the close frame.
pub async fn metric_reaches(addr: SocketAddr, series: &str, want: f64) {
    let mut last = f64::NAN;
    for _ in 0..50 {
        last = metric(addr, series).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{series} is {last}, not {want}");
}

/// The first 2, 4 or 10 bytes of a WebSocket frame (RFC 6455 §5.2): `b0` (FIN, RSV, opcode),
/// then the mask bit (0x80 or 0) and the payload length.
pub fn frame_header(b0: u8, mask_bit: u8, len: u64) -> Vec<u8> {
    let mut out = vec![b0];
    match len {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    out
}

/// Runs wscat from `npm ci` (pinned in the root package.json; installed on first use if
/// missing) on `url` with `args`, waits for it to exit (it quits after `-w SECS`), and returns
/// what it printed.
pub async fn run_wscat(url: &str, args: &[&str]) -> std::process::Output {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let modules = bench::compare::ensure_node_modules(root)
        .expect("wscat is needed: run `npm ci` at the repository root");
    let mut child = tokio::process::Command::new(modules.join(".bin/wscat"))
        .args(["-c", url])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("wscat runs");
    // wscat quits when its stdin closes, as it does for a user typing Ctrl-D: keep it open.
    let _stdin = child.stdin.take();
    tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("wscat exits after -w")
        .unwrap()
}

/// The repository's root (the gateway crate's parent).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A process's exit status and output, for assertion messages.
pub fn show(out: &std::process::Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Starts the gateway binary on `port` (10 symbols, 5000 ticks/s, no drain), returning once
/// its banner says it listens.
pub async fn tickfan_on(port: u16) -> tokio::process::Child {
    let listen = format!("127.0.0.1:{port}");
    let args = ["--listen", &listen, "--symbols", "10", "--rate", "5000", "--drain-secs", "0"];
    let (child, addr) = spawn_tickfan_with(&args).await;
    assert_eq!(addr.port(), port);
    child
}

/// A client library's CLI through a gateway restart: `client(url)` is its command, subscribed
/// to trades, quotes and two books for 7 s and printing `summary: {counters}` when it stops.
/// The gateway is killed (SIGKILL) after 2 s and a new one started on the same port. Checks
/// what every client must show (a reconnect, nothing resumed across the new epoch, every
/// checksum right, no undeclared gap, data flowing) and returns the output for more.
pub async fn client_through_a_restart(
    client: impl FnOnce(&str) -> tokio::process::Command,
) -> std::process::Output {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut first = tickfan_on(port).await;
    let mut cmd = client(&format!("ws://127.0.0.1:{port}/ws"));
    let child = cmd
        .args(["trades.BTC-USD", "quotes.BTC-USD", "book.BTC-USD", "book.ETH-USD"])
        .current_dir(repo_root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the client runs");
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.kill().await.expect("SIGKILL the first gateway");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _second = tickfan_on(port).await;
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the client stops after --duration")
        .unwrap();
    let shown = show(&out);
    eprintln!("{shown}");
    assert!(out.status.success(), "{shown}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("summary: "))
        .map(|s| serde_json::from_str(s).expect("the summary is JSON"))
        .unwrap_or_else(|| panic!("no summary line:\n{shown}"));
    let count = |name: &str| {
        summary[name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {summary}"))
    };
    assert!(count("reconnects") >= 1, "{summary}");
    assert!(count("not_resumed_channels") >= 1, "a new epoch resumes nothing: {summary}");
    assert_eq!(count("crc_bad"), 0, "{summary}");
    assert!(count("crc_ok") > 100, "{summary}");
    assert_eq!(count("gaps_undeclared"), 0, "{summary}");
    assert!(count("messages") > 1000, "{summary}");
    out
}

/// A client CLI run with `--binary --verbose` received binary data messages and decoded
/// every one (its log says so, and never that it ignored one).
pub fn assert_binary_received(out: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("receiving binary data messages"), "{}", show(out));
    assert!(!stderr.contains("ignoring a binary frame"), "{}", show(out));
}

/// `Some(())` when `python3` can import `websockets`; `None` (SKIPPED) when it cannot and
/// TICKFAN_REQUIRE_TOOLS is unset; a panic when it cannot and the variable is set.
pub fn python_with_websockets() -> Option<()> {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import websockets"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .and_then(|status| {
            if status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other("cannot import websockets"))
            }
        });
    installed(
        "python3 with websockets",
        "python3-pip; python3 -m pip install -r clients/python/requirements.txt",
        probe,
    )
}

/// A raw WebSocket handshake of `path` with extra header lines (each ending in `\r\n`):
/// the 101 answer's head and the socket, for tests that read frames byte by byte.
pub async fn connect_raw(
    addr: SocketAddr,
    path: &str,
    headers: &str,
) -> (String, tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let head = String::from_utf8(response_head(&mut s).await).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    (head, s)
}

/// One server frame read from a raw socket: (first byte, payload).
pub async fn read_server_frame(s: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.unwrap();
    assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
    let len = match h[1] & 0x7f {
        126 => usize::from(s.read_u16().await.unwrap()),
        127 => s.read_u64().await.unwrap() as usize,
        n => usize::from(n),
    };
    let mut payload = vec![0; len];
    s.read_exact(&mut payload).await.unwrap();
    (h[0], payload)
}

/// Sends `request` (a whole HTTP request) on a fresh connection; the whole answer, read until
/// the server closes (within 5 s).
pub async fn raw_request(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    let read = s.read_to_string(&mut out);
    tokio::time::timeout(Duration::from_secs(5), read).await.expect("closed within 5 s").unwrap();
    out
}
