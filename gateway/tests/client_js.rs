//! The JavaScript client library (`clients/js`, package `tickfan-client`) against the real
//! `tickfan` binary: its CLI (Node, with the `ws` package of the repository's node_modules)
//! subscribes to trades, quotes and two books, the gateway is killed (SIGKILL) and started
//! again on the same port, and the client must reconnect by itself, learn that nothing resumes
//! (the new gateway has a new epoch), start its books again from fresh snapshots and see every
//! sequence and checksum right throughout. The package's own unit tests (books and checksums,
//! sequence discipline; `node --test`) run here too.
//!
//! Needs Node.js 20 and `npm ci` at the repository root (done here when node_modules is
//! missing, as for wscat).

mod support;

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

/// The repository's root (the gateway crate's parent).
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Makes sure the root's node_modules (with `ws`) is installed, running `npm ci` if not.
fn ensure_ws() {
    bench::compare::ensure_node_modules(&repo_root())
        .expect("the ws package is needed: run `npm ci` at the repository root");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts the gateway binary on `port`, returning once its banner says it listens.
async fn start_gateway(port: u16) -> tokio::process::Child {
    let listen = format!("127.0.0.1:{port}");
    let args = ["--listen", &listen, "--symbols", "10", "--rate", "5000", "--drain-secs", "0"];
    let (child, addr) = support::spawn_tickfan_with(&args).await;
    assert_eq!(addr.port(), port);
    child
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_reconnects_to_a_restarted_gateway_with_books_and_seqs_right() {
    ensure_ws();
    let port = free_port();
    let mut first = start_gateway(port).await;

    let client = Command::new("node")
        .arg("clients/js/bin/tickfan-client.js")
        .args(["--url", &format!("ws://127.0.0.1:{port}/ws")])
        .args(["--duration", "7", "--quiet", "--verbose"])
        .args(["trades.BTC-USD", "quotes.BTC-USD", "book.BTC-USD", "book.ETH-USD"])
        .current_dir(repo_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");

    tokio::time::sleep(Duration::from_secs(2)).await;
    first.kill().await.expect("SIGKILL the first gateway");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _second = start_gateway(port).await;

    let out = tokio::time::timeout(Duration::from_secs(30), client.wait_with_output())
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
    let stderr = String::from_utf8_lossy(&out.stderr);
    for uncaught in ["Uncaught", "TypeError", "ReferenceError", "    at "] {
        assert!(!stderr.contains(uncaught), "{uncaught:?} in stderr: {shown}");
    }
}

#[tokio::test]
async fn js_client_stops_with_an_error_when_the_gateway_refuses_its_channels() {
    ensure_ws();
    let port = free_port();
    let _gateway = start_gateway(port).await;
    let out = Command::new("node")
        .arg("clients/js/bin/tickfan-client.js")
        .args(["--url", &format!("ws://127.0.0.1:{port}/ws"), "--duration", "10"])
        .args(["trades.BTC-USD", "trades.NOPE-USD"])
        .current_dir(repo_root())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .expect("a refused subscription ends the client at once")
        .unwrap();
    let shown = show(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("subscription refused: unknown_channel"), "{shown}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("summary: "), "{shown}");
}

#[tokio::test]
async fn js_unit_tests_pass() {
    let out = Command::new("node")
        .args(["--test", "clients/js/test/"])
        .current_dir(repo_root())
        .output()
        .await
        .expect("node runs");
    let shown = show(&out);
    eprintln!("{shown}");
    assert!(out.status.success(), "{shown}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("# fail 0"), "{shown}");
}
