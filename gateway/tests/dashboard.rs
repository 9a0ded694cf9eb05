//! The built-in dashboard in a real browser: headless Chromium (Debian's `chromium`; `.ci/run`
//! installs it) opens `/dashboard` on a real `tickfan` process and is driven over the Chrome
//! DevTools Protocol by our own WebSocket client. The page must show live figures and draw its
//! charts, a screenshot is saved, and after the gateway is stopped (its clients get 1001) and
//! started again on the same port the page must reconnect by itself and keep updating.
//! The browser's own `EventSource` reads `/sse` too, and resumes by itself with `Last-Event-ID`
//! each time the gateway ends its stream.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// Starts the gateway binary on `port` (with `extra` flags), waiting until it answers.
async fn tickfan(port: u16, extra: &[&str]) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_tickfan"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--symbols", "10", "--rate", "5000"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("tickfan starts");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("tickfan did not listen on {addr}");
}

/// A Chrome DevTools Protocol session with one page.
struct Cdp {
    ws: bench::client::ClientSocket,
    next_id: u64,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.write_frame(Frame::text(Payload::Owned(msg.into_bytes()))).await.unwrap();
        loop {
            let mut text = Vec::new();
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(20), self.ws.read_frame())
                    .await
                    .expect("DevTools answers")
                    .expect("DevTools connection open");
                match frame.opcode {
                    OpCode::Text | OpCode::Continuation => text.extend_from_slice(&frame.payload),
                    _ => continue,
                }
                if frame.fin {
                    break;
                }
            }
            let v: Value = serde_json::from_slice(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its JSON value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true}));
        r.await["result"]["value"].clone()
    }
}

/// What the page shows now.
const READ_PAGE: &str = "JSON.stringify({status: document.getElementById('status').textContent, \
    connections: document.getElementById('connections').textContent, \
    frames: document.getElementById('frames-out').textContent, \
    seq: Number(document.getElementById('stats-seq').textContent) || 0, \
    reconnects: Number(document.getElementById('reconnects').textContent), \
    resumed: document.getElementById('resumed').textContent, \
    lost: Number(document.getElementById('lost').textContent), \
    crc_ok: Number(document.getElementById('crc-ok').textContent), \
    crc_bad: Number(document.getElementById('crc-bad').textContent), \
    canvases: document.querySelectorAll('#chart-throughput canvas, #chart-latency canvas').length, \
    trades: document.querySelectorAll('#trades tr').length})";

async fn read_page(cdp: &mut Cdp) -> Value {
    serde_json::from_str(cdp.eval(READ_PAGE).await.as_str().unwrap_or("{}")).unwrap()
}

/// Polls the page until `ok` holds, for up to 20 s.
async fn wait_for(cdp: &mut Cdp, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut page = Value::Null;
    for _ in 0..80 {
        page = read_page(cdp).await;
        if ok(&page) {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the dashboard never showed {what}; it shows {page}");
}

/// GET on Chromium's DevTools HTTP endpoint, which answers HTTP/1.1 only and keeps the
/// connection open: the body is read by its Content-Length.
async fn devtools_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("DevTools HTTP did not answer {path}"))
            .unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(str::to_owned)
                })
                .and_then(|v| v.trim().parse::<usize>().ok());
            if n == 0 || len.is_some_and(|len| body.len() >= len) {
                return body.to_owned();
            }
        } else if n == 0 {
            return String::new();
        }
    }
}

/// Finds the dashboard page among Chromium's targets and attaches to it over DevTools.
async fn attach(devtools: u16) -> Cdp {
    attach_to(devtools, "/dashboard").await
}

/// Attaches over DevTools to the page whose URL contains `url_part`.
async fn attach_to(devtools: u16, url_part: &str) -> Cdp {
    let devtools_addr: SocketAddr = format!("127.0.0.1:{devtools}").parse().unwrap();
    let mut page_ws = None;
    let mut seen = Value::Null;
    for _ in 0..50 {
        let body = devtools_get(devtools_addr, "/json/list").await;
        let targets: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        page_ws = targets.as_array().and_then(|t| {
            let page = |t: &&Value| {
                t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.contains(url_part))
            };
            t.iter().find(page).and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_owned))
        });
        seen = targets;
        if page_ws.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page_ws = page_ws.unwrap_or_else(|| panic!("no {url_part} page among {seen}"));
    let path = &page_ws[page_ws.find("/devtools").unwrap()..];
    let ws = bench::client::connect(devtools_addr, path, None).await.unwrap();
    Cdp { ws, next_id: 0 }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts headless Chromium on `url` with DevTools on a port it picks (written to
/// DevToolsActivePort in its profile). `None` if Chromium is not installed.
async fn chromium(url: &str, profile: &Path) -> Option<(Child, u16)> {
    let spawned = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .args(["--window-size=1400,1000", "--remote-debugging-port=0"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let child = support::installed("chromium", "chromium", spawned)?;
    let port_file = profile.join("DevToolsActivePort");
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(&port_file) {
            if let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
                return Some((child, port));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromium did not open its DevTools port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_figures_and_reconnects_after_a_restart() {
    let port = free_port();
    let mut gateway = tickfan(port, &[]).await;
    // Some load beside the page: three clients on every trade, read as fast as they come.
    let gw_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut load = Vec::new();
    for _ in 0..3 {
        let mut ws = bench::client::connect(gw_addr, "/ws?streams=trades.*", None).await.unwrap();
        load.push(tokio::spawn(async move { while ws.read_frame().await.is_ok() {} }));
    }
    let profile = std::env::temp_dir().join(format!("tickfan-chromium-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let url = format!("http://127.0.0.1:{port}/dashboard");
    let Some((mut browser, devtools)) = chromium(&url, &profile).await else { return };

    let mut cdp = attach(devtools).await;

    // Live figures from sys.stats, both charts drawn, trades of BTC-USD listed.
    let live = wait_for(&mut cdp, "live figures", |p| {
        p["status"] == "connected"
            && p["connections"].as_str().and_then(|c| c.parse::<u64>().ok()).is_some_and(|c| c >= 4)
            && p["frames"].as_str().is_some_and(|f| f != "–" && f != "0")
            && p["seq"].as_u64().is_some_and(|s| s >= 3)
            && p["canvases"].as_u64().is_some_and(|c| c >= 2)
            && p["trades"].as_u64().is_some_and(|t| t > 0)
            && p["crc_ok"].as_u64().is_some_and(|n| n > 10)
    })
    .await;
    eprintln!("dashboard: {live}");
    assert_eq!(live["crc_bad"], 0, "the page's book differs from the gateway's");

    let shot = cdp.call("Page.captureScreenshot", json!({"format": "png"})).await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("screenshot data"))
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&out, &png).unwrap();
    eprintln!("screenshot: {}", out.display());

    // Drop the page's connection: it reconnects and resumes all three market channels, losing
    // nothing (its own seq check counts what it would have lost).
    cdp.eval("ws.close(4000, 'test: dropped'); 'closed'").await;
    let resumed = wait_for(&mut cdp, "a resumed reconnection", |p| {
        p["status"] == "connected" && p["reconnects"] == 1 && p["resumed"] == "3/3"
    })
    .await;
    let crc_before = resumed["crc_ok"].as_u64().unwrap();
    let after = wait_for(&mut cdp, "book updates after resuming", |p| {
        p["crc_ok"].as_u64().is_some_and(|n| n > crc_before + 10)
    })
    .await;
    eprintln!("after a drop: {after}");
    assert_eq!((after["lost"].as_u64(), after["crc_bad"].as_u64()), (Some(0), Some(0)));

    // Stop the gateway (its clients get 1001), start a new one on the same port: the page must
    // notice, reconnect by itself and keep updating, its old seqs refused (a new epoch).
    let pid = gateway.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let _ = gateway.wait().await;
    wait_for(&mut cdp, "the disconnection", |p| {
        p["status"].as_str().is_some_and(|s| s.starts_with("disconnected"))
    })
    .await;
    let _gateway = tickfan(port, &[]).await;
    wait_for(&mut cdp, "a reconnection", |p| {
        p["status"] == "connected" && p["reconnects"].as_u64() >= Some(2)
    })
    .await;
    // The page clears the stats seq on reconnecting and a new connection's sys.stats starts at
    // seq 1: seeing 2 means reports flow on the new connection.
    let back = wait_for(&mut cdp, "updates after reconnecting", |p| {
        p["status"] == "connected"
            && p["seq"].as_u64().is_some_and(|s| s >= 2)
            && p["resumed"] == "0/3 (new epoch)"
    })
    .await;
    eprintln!("after restart: {back}");
    assert_eq!((back["lost"].as_u64(), back["crc_bad"].as_u64()), (Some(0), Some(0)));

    let _ = browser.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
}

/// With an admin listener and auth on: the page, served on the admin port and given a token,
/// opens its WebSocket on the data port with that token and shows live figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_on_the_admin_listener_reaches_the_data_port_with_its_token() {
    let (port, admin) = (free_port(), free_port());
    let admin_at = format!("127.0.0.1:{admin}");
    let keys = "dash-key-0123456789 *";
    let _gateway = tickfan(port, &["--admin-listen", &admin_at, "--api-keys-inline", keys]).await;
    let profile =
        std::env::temp_dir().join(format!("tickfan-chromium-admin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let url = format!("http://{admin_at}/dashboard?token=dash-key-0123456789");
    let Some((mut browser, devtools)) = chromium(&url, &profile).await else { return };
    let mut cdp = attach(devtools).await;
    let live = wait_for(&mut cdp, "live figures", |p| {
        p["status"] == "connected"
            && p["seq"].as_u64().is_some_and(|s| s >= 2)
            && p["crc_ok"].as_u64().is_some_and(|n| n > 10)
    })
    .await;
    eprintln!("dashboard on the admin listener: {live}");
    assert_eq!(live["crc_bad"], 0);
    let _ = browser.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
}

/// Follows `/sse` with the browser's EventSource, checking in the page that every channel's
/// seqs continue across reconnects, and that each data event's id is its `ch:seq`.
const FOLLOW_SSE: &str = r#"
window.sse = {opens: 0, events: 0, breaks: [], closes: [], resumed: [], badIds: 0, last: {}};
const es = new EventSource('/sse?streams=trades.*,quotes.BTC-USD');
es.onopen = () => { sse.opens++; };
es.onmessage = (e) => {
  const m = JSON.parse(e.data);
  if (m.op === 'close') { sse.closes.push(m.code); return; }
  if (m.op === 'subscribed') { if (m.resumed) sse.resumed.push(Object.values(m.resumed).every(Boolean)); return; }
  if (m.op) return;
  if (e.lastEventId !== m.ch + ':' + m.seq) sse.badIds++;
  const last = sse.last[m.ch];
  if (last !== undefined && m.seq !== last + 1) sse.breaks.push([m.ch, last, m.seq]);
  sse.last[m.ch] = m.seq;
  sse.events++;
};
'ok'"#;

/// The browser's EventSource on a gateway that ends every stream after about 2 s
/// (`--max-connection-age`): it reconnects by itself with `Last-Event-ID`, and every channel
/// goes on without a lost or repeated seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_eventsource_resumes_every_channel_by_itself() {
    let port = free_port();
    let _gateway = tickfan(port, &["--max-connection-age", "2"]).await;
    let profile = std::env::temp_dir().join(format!("tickfan-chromium-sse-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    // Any page of the gateway's origin: the index.
    let url = format!("http://127.0.0.1:{port}/?sse");
    let Some((mut browser, devtools)) = chromium(&url, &profile).await else { return };
    let mut cdp = attach_to(devtools, "/?sse").await;
    // Once the page has loaded (a script evaluated before would go with the blank page).
    for _ in 0..80 {
        if cdp.eval("location.search === '?sse' && document.readyState").await == "complete" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = cdp
        .call("Runtime.evaluate", json!({"expression": FOLLOW_SSE, "returnByValue": true}))
        .await;
    assert_eq!(started["result"]["value"], "ok", "{started}");
    let mut state = Value::Null;
    for _ in 0..80 {
        state = cdp.eval("JSON.stringify(window.sse)").await;
        state = serde_json::from_str(state.as_str().unwrap_or("null")).unwrap();
        if state["opens"].as_u64().is_some_and(|n| n >= 3) && state["events"].as_u64() > Some(500) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "EventSource after reconnects: opens {}, events {}, closes {}, resumed {}",
        state["opens"], state["events"], state["closes"], state["resumed"]
    );
    assert!(state["opens"].as_u64() >= Some(3), "the stream reopened twice: {state}");
    assert_eq!(state["breaks"], json!([]), "no channel lost or repeated a seq: {state}");
    assert_eq!(state["badIds"], 0);
    assert!(state["closes"].as_array().unwrap().iter().all(|c| c == 1001), "{state}");
    let resumed = state["resumed"].as_array().unwrap();
    assert!(resumed.len() >= 2 && resumed.iter().all(|r| r == true), "{state}");
    let _ = browser.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
}
