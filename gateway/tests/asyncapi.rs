//! docs/asyncapi.yaml, the machine-readable form of docs/protocol.md: it is valid AsyncAPI 3,
//! every JSON example of protocol.md validates against its schemas, and so does what the real
//! `tickfan` binary sends: replies, errors, data of every channel kind, notices, and the events
//! of a Server-Sent Events stream. The checks are docs/asyncapi/validate.mjs's (the AsyncAPI
//! parser and Ajv, from the root package.json's devDependencies). Beyond this file, the test
//! client every integration test uses checks what it receives the same way (`support/spec.rs`),
//! so a message anywhere in the suite that the document does not describe fails its test.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use fastwebsockets::{Frame, Payload};
use serde_json::{json, Value};
use support::{spawn_tickfan, spawn_tickfan_fed, Client, Msg};
use tokio::io::AsyncWriteExt;

/// The packages validate.mjs imports (devDependencies of the root package.json).
const VALIDATOR_PACKAGES: [&str; 3] = ["@asyncapi/parser", "ajv", "js-yaml"];

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The repository's node_modules with the validator's packages: `npm ci` when they are
/// missing (a node_modules from before they were added), once per test process.
fn node_modules() -> &'static Path {
    static MODULES: OnceLock<PathBuf> = OnceLock::new();
    MODULES.get_or_init(|| {
        let root = repo_root();
        let modules = bench::compare::ensure_node_modules(root)
            .expect("the validator needs Node.js 20 and `npm ci` at the repository root");
        let complete = || VALIDATOR_PACKAGES.iter().all(|p| modules.join(p).exists());
        if !complete() {
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(root)
                .status()
                .expect("npm runs");
            assert!(status.success() && complete(), "`npm ci` failed ({status})");
        }
        modules
    })
}

/// Runs `node docs/asyncapi/validate.mjs ARGS` at the repository root, `input` on its stdin.
fn validator(args: &[&str], input: &[u8]) -> Output {
    node_modules();
    let mut child = Command::new("node")
        .arg("docs/asyncapi/validate.mjs")
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs (Node.js 20)");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        // The validator stops reading at the first invalid message: a broken pipe is fine.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// What the validator printed, for assertion messages.
fn printed(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The validator's last line, `SUMMARY {…}`.
fn summary(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("SUMMARY "))
        .unwrap_or_else(|| panic!("no SUMMARY line\n{}", printed(out)));
    serde_json::from_str(line).unwrap()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

#[test]
fn the_document_is_valid_asyncapi_3() {
    let out = validator(&["--doc"], b"");
    assert!(out.status.success(), "{}", printed(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("AsyncAPI 3.0.0"), "{stdout}");
    assert!(
        stdout.contains("client sends: list, ping, subscribe, symbols, unsubscribe\n"),
        "{stdout}"
    );
}

#[test]
fn every_json_example_of_protocol_md_validates() {
    let out = validator(&["--examples", "docs/protocol.md"], b"");
    assert!(out.status.success(), "{}", printed(&out));
    let s = summary(&out);
    assert!(s["messages"].as_u64().unwrap() >= 25, "{s}");
    // Requests, replies, data and notices are all among them.
    for kind in ["subscribe", "subscribed", "error", "trade", "bookSnapshot", "gap", "sysStats"] {
        assert!(s["kinds"][kind].as_u64().unwrap_or(0) > 0, "no {kind} example: {s}");
    }
}

/// The schemas are strict enough to matter: a renamed field, a float price, an unknown book
/// form, a seq of 0, a timestamp in nanoseconds (protocol v1's, beyond JavaScript's exact
/// integers), an unknown error code and a request sent back as a reply are refused.
#[test]
fn the_validator_refuses_what_the_protocol_does_not_allow() {
    let good =
        r#"{"ch":"trades.BTC-USD","seq":1,"ts":1,"id":9,"px":"1.50","qty":"0.1000","side":"buy"}"#;
    let out = validator(&["--stdin"], format!("{good}\n").as_bytes());
    assert!(out.status.success(), "{}", printed(&out));
    for bad in [
        r#"{"ch":"trades.BTC-USD","seq":1,"ts":1,"id":9,"price":"1.50","qty":"0.1000","side":"buy"}"#,
        r#"{"ch":"trades.BTC-USD","seq":1,"ts":1,"id":9,"px":1.5,"qty":"0.1000","side":"buy"}"#,
        r#"{"ch":"trades.BTC-USD","seq":0,"ts":1,"id":9,"px":"1.50","qty":"0.1000","side":"buy"}"#,
        r#"{"ch":"trades.BTC-USD","seq":1,"ts":1764028800123456789,"id":9,"px":"1.50","qty":"0.1000","side":"buy"}"#,
        r#"{"ch":"trades.BTC-USD","seq":1,"ts":1,"et":"1","id":9,"px":"1.50","qty":"0.1000","side":"buy"}"#,
        r#"{"ch":"book.BTC-USD@7","seq":1,"ts":1,"type":"update","bids":[],"asks":[],"crc":1}"#,
        r#"{"ch":"book.BTC-USD","seq":1,"ts":1,"type":"update","bids":[["1.00"]],"asks":[],"crc":1}"#,
        r#"{"op":"error","code":"oops","msg":"x"}"#,
        r#"{"op":"list","id":3}"#,
        r#"{"op":"gap","ch":"trades.BTC-USD","from":1,"to":2,"reason":"lag"}"#,
    ] {
        let out = validator(&["--stdin"], format!("{good}\n{bad}\n").as_bytes());
        assert!(!out.status.success(), "accepted {bad}\n{}", printed(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("stdin:2: INVALID"), "{stdout}");
    }
}

/// Collects the raw text frames a client receives.
#[derive(Default)]
struct Collected {
    lines: Vec<Vec<u8>>,
    values: Vec<Value>,
}

impl Collected {
    fn push(&mut self, v: Value, raw: Vec<u8>) {
        self.lines.push(raw);
        self.values.push(v);
    }

    /// Reads `c` until `done` holds for what was collected or `timeout` passes; returns
    /// whether it held (the close frame, if one comes, ends the read).
    async fn read_until(
        &mut self,
        c: &mut Client,
        timeout: Duration,
        done: impl Fn(&Collected) -> bool,
    ) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(self) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match c.try_recv(left).await {
                Some(Msg::Text(v, raw)) => self.push(v, raw),
                Some(Msg::Close(code, reason)) => return Some((code, reason)),
                None => break,
            }
        }
        None
    }

    fn has(&self, pred: impl Fn(&Value) -> bool) -> bool {
        self.values.iter().any(pred)
    }
}

fn is_ch(v: &Value, ch: &str) -> bool {
    v["ch"] == ch
}

/// Everything a first client of a gateway on the embedded feed can provoke: replies to every
/// op, errors, data of every channel kind and form, `sys.stats`; then a resume on a second
/// connection, and the `server_shutdown` notice of a SIGTERM.
async fn embedded_feed_traffic(all: &mut Collected) {
    let (mut child, addr) = spawn_tickfan(&["--drain-secs", "1"]).await;
    let mut c = Client::connect(addr, "/ws?streams=trades.BTC-USD,quotes.BTC-USD").await;
    let mut got = Collected::default();
    got.read_until(&mut c, Duration::from_secs(5), |g| g.has(|v| v["op"] == "subscribed")).await;

    // `book.BTC-USD` comes later, once the book has had an update (a form's first message
    // says so): see `a_snapshot_of_a_book_without_updates_validates`.
    let channels = [
        "trades.*",
        "book.BTC-USD@5",
        "book.BTC-USD@5@100ms",
        "book.ETH-USD@1000ms",
        "ticker.BTC-USD",
        "candles.BTC-USD.1m",
        "candles.*.5m",
        "instruments.BTC-USD",
        "sys.stats",
    ];
    c.send_json(json!({"op":"subscribe","id":1,"channels":channels})).await;
    c.send_json(json!({"op":"list","id":"two"})).await;
    c.send_json(json!({"op":"symbols","id":3})).await;
    c.send_json(json!({"op":"ping","id":4})).await;
    c.send_json(json!({"op":"ping"})).await;
    c.send_text("{not json").await;
    c.send_text("[1,2]").await;
    c.send_json(json!({"op":"frobnicate","id":5})).await;
    c.send_json(json!({"op":"subscribe","id":6,"channels":["trades.FOO-BAR"]})).await;
    c.send_json(json!({"op":"subscribe","id":7,"channels":["book.BTC-USD@7"]})).await;
    c.send_json(json!({"op":"subscribe","id":8})).await;
    c.send_frame(Frame::binary(Payload::Owned(vec![1, 2, 3]))).await;
    c.send_json(json!({"op":"unsubscribe","id":9,"channels":["candles.*.5m"]})).await;
    let form = |g: &Collected| g.has(|v| is_ch(v, "book.BTC-USD@5"));
    got.read_until(&mut c, Duration::from_secs(5), form).await;
    assert!(form(&got), "no book.BTC-USD@5 within 5 s");
    c.send_json(json!({"op":"subscribe","id":10,"channels":["book.BTC-USD"]})).await;

    let everything = |g: &Collected| {
        g.has(|v| v["op"] == "unsubscribed")
            && g.has(|v| is_ch(v, "sys.stats"))
            && g.has(|v| is_ch(v, "ticker.BTC-USD"))
            && g.has(|v| is_ch(v, "candles.BTC-USD.1m"))
            && ["book.BTC-USD", "book.BTC-USD@5", "book.BTC-USD@5@100ms", "book.ETH-USD@1000ms"]
                .iter()
                .all(|ch| g.has(|v| is_ch(v, ch) && v["type"] == "update"))
    };
    let closed = got.read_until(&mut c, Duration::from_secs(8), everything).await;
    assert!(closed.is_none(), "closed: {closed:?}");
    assert!(everything(&got), "not every kind came within 8 s");
    let codes: BTreeSet<&str> = got
        .values
        .iter()
        .filter(|v| v["op"] == "error")
        .filter_map(|v| v["code"].as_str())
        .collect();
    let want = ["bad_request", "binary_frame", "malformed_json", "unknown_channel", "unknown_op"];
    assert_eq!(codes, want.into_iter().collect(), "error codes");

    // A second connection resumes the trades the first had (and a book from a seq it never
    // had: not resumed, a snapshot instead).
    let epoch = got.values.iter().find_map(|v| v["epoch"].as_str()).unwrap().to_owned();
    let last = got
        .values
        .iter()
        .filter(|v| is_ch(v, "trades.BTC-USD"))
        .filter_map(|v| v["seq"].as_u64())
        .max()
        .expect("trades.BTC-USD came");
    let mut c2 = Client::connect(addr, "/ws").await;
    c2.send_json(
        json!({"op":"subscribe","id":"resume","channels":["trades.BTC-USD","book.ETH-USD"],
        "epoch":epoch,"resume":{"trades.BTC-USD":last,"book.ETH-USD":1_000_000_000_u64}}),
    )
    .await;
    let mut resumed = Collected::default();
    let replayed = |g: &Collected| g.has(|v| is_ch(v, "trades.BTC-USD") && v["seq"] == last + 1);
    resumed.read_until(&mut c2, Duration::from_secs(5), replayed).await;
    let reply = resumed.values.iter().find(|v| v["op"] == "subscribed").expect("a reply");
    assert_eq!(reply["resumed"], json!({"trades.BTC-USD":true,"book.ETH-USD":false}), "{reply}");
    assert!(replayed(&resumed), "seq {} was not replayed", last + 1);

    // SIGTERM: every client is told (`server_shutdown`), then closed with 1001.
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let close = got.read_until(&mut c, Duration::from_secs(5), |_| false).await;
    assert_eq!(close.map(|c| c.0), Some(1001));
    assert!(got.has(|v| v["op"] == "shutdown" && v["reason"] == "server_shutdown"));
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;

    for g in [got, resumed] {
        all.lines.extend(g.lines);
        all.values.extend(g.values);
    }
}

/// `--max-connection-age 1`: the `max_age` shutdown notice over WebSocket, and a Server-Sent
/// Events stream to its end (its `close` event).
async fn max_age_traffic(all: &mut Collected) {
    let (_child, addr) = spawn_tickfan(&["--max-connection-age", "1"]).await;
    let sse = tokio::spawn(async move {
        tokio::time::timeout(
            Duration::from_secs(10),
            support::http_get(addr, "/sse?streams=trades.BTC-USD,book.BTC-USD@10"),
        )
        .await
        .expect("the stream ends at its maximum age")
    });
    let mut c = Client::connect(addr, "/ws?streams=quotes.ETH-USD").await;
    let close = all.read_until(&mut c, Duration::from_secs(5), |_| false).await;
    assert_eq!(close.map(|c| c.0), Some(1001));
    assert!(all.has(|v| v["op"] == "shutdown" && v["reason"] == "max_age"));

    let stream = sse.await.unwrap();
    assert!(stream.starts_with("HTTP/1.1 200"), "{stream}");
    let mut events = 0;
    for data in stream.lines().filter_map(|l| l.strip_prefix("data: ")) {
        all.push(serde_json::from_str(data).expect("an event's data is JSON"), data.into());
        events += 1;
    }
    assert!(events > 2, "{stream}");
    assert!(all.has(|v| v["op"] == "close" && v["code"] == 1001), "{stream}");
}

/// A gateway fed on stdin: an instrument's status, seqs the upstream skipped (a `feed` gap),
/// and a source that goes quiet (`stale`) and comes back (`live`).
async fn fed_traffic(all: &mut Collected) {
    let announcement = concat!(
        r#"{"op":"symbols","epoch":"asyncapi-1","symbols":[{"name":"BTC-USD","px_scale":2,"#,
        r#""qty_scale":4},{"name":"ETH-USD","px_scale":2,"qty_scale":4}]}"#,
        "\n"
    );
    let (_child, mut stdin, addr) =
        spawn_tickfan_fed(&["--stale-after", "0.5"], announcement.as_bytes()).await;
    // (`book.BTC-USD` is subscribed once the book has had an update: see
    // `a_snapshot_of_a_book_without_updates_validates`.)
    let streams = "trades.BTC-USD,instruments.*,quotes.BTC-USD";
    let mut c = Client::connect(addr, &format!("/ws?streams={streams}")).await;
    all.read_until(&mut c, Duration::from_secs(5), |g| g.has(|v| v["op"] == "subscribed")).await;
    let trade = |seq: u64| {
        format!(
            r#"{{"ch":"trades.BTC-USD","seq":{seq},"ts":{seq},"id":{seq},"px":"64123.50","qty":"0.0150","side":"sell"}}"#
        )
    };
    let lines = [
        trade(1),
        r#"{"ch":"quotes.BTC-USD","seq":1,"ts":1764028800123456789,"et":1764028800123000000,"bid":"64123.00","bsz":"1.2000","ask":"64123.50","asz":"0.4000"}"#.into(),
        r#"{"ch":"book.BTC-USD","seq":1,"ts":3,"et":2,"type":"update","bids":[["64123.00","1.2000"],["64122.50","0.5000"]],"asks":[["64123.50","0.4000"]]}"#.into(),
        r#"{"ch":"book.BTC-USD","seq":2,"ts":4,"type":"update","bids":[["64122.50","0"]],"asks":[]}"#.into(),
        r#"{"ch":"instruments.ETH-USD","seq":1,"ts":5,"et":5,"status":"halted"}"#.into(),
        trade(4),
    ];
    stdin.write_all((lines.join("\n") + "\n").as_bytes()).await.unwrap();
    stdin.flush().await.unwrap();
    // Then quiet: `stale` comes within about --stale-after.
    let stale = |g: &Collected| g.has(|v| v["op"] == "status" && v["feed"] == "stale");
    all.read_until(&mut c, Duration::from_secs(5), stale).await;
    assert!(stale(all), "no stale status");
    stdin.write_all(format!("{}\n", trade(5)).as_bytes()).await.unwrap();
    stdin.flush().await.unwrap();
    let live = |g: &Collected| {
        g.has(|v| v["op"] == "status" && v["feed"] == "live")
            && g.has(|v| is_ch(v, "trades.BTC-USD") && v["seq"] == 5)
    };
    all.read_until(&mut c, Duration::from_secs(5), live).await;
    assert!(live(all), "no live status and trade after it");
    assert!(all.has(|v| v["op"] == "gap" && v["reason"] == "feed"), "no feed gap");
    assert!(all.has(|v| is_ch(v, "instruments.ETH-USD")), "no instrument status");
    let mut c2 = Client::connect(addr, "/ws?streams=book.BTC-USD").await;
    c2.send_json(json!({"op":"symbols","id":1})).await;
    all.read_until(&mut c2, Duration::from_secs(5), |g| {
        g.has(|v| v["op"] == "symbols" && v["instruments"][1]["status"] == "halted")
            && g.has(|v| is_ch(v, "book.BTC-USD") && v["seq"] == 2)
    })
    .await;
}

/// A client that subscribes to a book before the feed sent any update of it gets an empty
/// snapshot as of seq 0 (docs/protocol.md, "Order books"), and the schema says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_a_book_without_updates_validates() {
    let announcement = concat!(
        r#"{"op":"symbols","epoch":"asyncapi-2","symbols":[{"name":"BTC-USD","px_scale":2,"#,
        r#""qty_scale":4}]}"#,
        "\n"
    );
    let (_child, _stdin, addr) = spawn_tickfan_fed(&[], announcement.as_bytes()).await;
    let mut c = Client::connect(addr, "/ws?streams=book.BTC-USD").await;
    let mut got = Collected::default();
    got.read_until(&mut c, Duration::from_secs(5), |g| g.has(|v| v["type"] == "snapshot")).await;
    let mut input = got.lines.join(&b'\n');
    input.push(b'\n');
    let out = tokio::task::spawn_blocking(move || validator(&["--stdin"], &input)).await.unwrap();
    assert!(out.status.success(), "{}", printed(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_gateway_sends_validates() {
    let mut all = Collected::default();
    embedded_feed_traffic(&mut all).await;
    max_age_traffic(&mut all).await;
    fed_traffic(&mut all).await;

    let mut input = Vec::new();
    for line in &all.lines {
        assert!(!line.contains(&b'\n'), "one message per line");
        input.extend_from_slice(line);
        input.push(b'\n');
    }
    let out = tokio::task::spawn_blocking(move || validator(&["--stdin"], &input)).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!(
        "{}",
        stdout.lines().filter(|l| !l.starts_with("SUMMARY")).collect::<Vec<_>>().join("\n")
    );
    assert!(out.status.success(), "{}", printed(&out));
    let s = summary(&out);
    assert_eq!(s["messages"].as_u64(), Some(all.lines.len() as u64), "{s}");
    let kinds = keys(&s["kinds"]);
    let want = [
        "bookSnapshot",
        "bookUpdate",
        "candle",
        "error",
        "feedStatus",
        "gap",
        "instrumentStatus",
        "listReply",
        "pong",
        "quote",
        "shutdown",
        "sseClose",
        "subscribed",
        "symbolsReply",
        "sysStats",
        "ticker",
        "trade",
        "unsubscribed",
    ];
    let missing: Vec<_> = want.iter().filter(|k| !kinds.contains(**k)).collect();
    assert!(missing.is_empty(), "kinds not seen: {missing:?} ({s})");
    let shapes = keys(&s["shapes"]);
    for shape in [
        "book.<SYM>",
        "book.<SYM>@5",
        "book.<SYM>@5@100ms",
        "book.<SYM>@1000ms",
        "book.<SYM>@10",
        "candles.<SYM>.1m",
        "instruments.<SYM>",
        "ticker.<SYM>",
        "sys.stats",
    ] {
        assert!(shapes.contains(shape), "no {shape}: {s}");
    }
}
