//! The JavaScript client library (`clients/js`, package `tickfan-client`) against the real
//! `tickfan` binary: its CLI (Node, with the `ws` package of the repository's node_modules)
//! subscribes to trades, quotes and two books, the gateway is killed (SIGKILL) and started
//! again on the same port, and the client must reconnect by itself, learn that nothing resumes
//! (the new gateway has a new epoch), start its books again from fresh snapshots and see every
//! sequence and checksum right throughout. The package's own unit tests (books and checksums,
//! sequence discipline; `node --test`) run here too. Once more with `--binary`.
//!
//! Needs Node.js 20 and `npm ci` at the repository root (done here when node_modules is
//! missing, as for wscat).

mod support;

use std::time::Duration;

use support::{repo_root, show};
use tokio::process::Command;

/// Makes sure the root's node_modules (with `ws`) is installed, running `npm ci` if not.
fn ensure_ws() {
    bench::compare::ensure_node_modules(&repo_root())
        .expect("the ws package is needed: run `npm ci` at the repository root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_reconnects_to_a_restarted_gateway_with_books_and_seqs_right() {
    through_a_restart(&[]).await;
}

/// The same with `--binary`: trades, quotes and book updates come as binary messages, which
/// the client decodes into their JSON (the book checksums, computed from the decoded levels,
/// must match).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_in_binary_goes_through_a_restart_with_books_and_seqs_right() {
    let out = through_a_restart(&["--binary"]).await;
    support::assert_binary_received(&out);
}

/// The CLI (with `extra` flags) through `support::client_through_a_restart`, and no uncaught
/// exception on its stderr.
async fn through_a_restart(extra: &[&str]) -> std::process::Output {
    ensure_ws();
    let out = support::client_through_a_restart(|url| {
        let mut cmd = Command::new("node");
        cmd.arg("clients/js/bin/tickfan-client.js").args(["--url", url]).args(extra);
        cmd.args(["--duration", "7", "--quiet", "--verbose"]);
        cmd
    })
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    for uncaught in ["Uncaught", "TypeError", "ReferenceError", "    at "] {
        assert!(!stderr.contains(uncaught), "{uncaught:?} in stderr: {}", show(&out));
    }
    out
}

#[tokio::test]
async fn js_client_stops_with_an_error_when_the_gateway_refuses_its_channels() {
    ensure_ws();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _gateway = support::tickfan_on(port).await;
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
