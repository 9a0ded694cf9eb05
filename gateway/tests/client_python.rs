//! The Python client library (`clients/python`, package `tickfan_client`) against the real
//! `tickfan` binary: its CLI subscribes to trades, quotes and two books, the gateway is killed
//! (SIGKILL) and started again on the same port, and the client must reconnect by itself,
//! learn that nothing resumes (the new gateway has a new epoch), start its books again from
//! fresh snapshots and see every sequence and checksum right throughout. The package's own
//! unit tests (books and checksums, sequence discipline) run here too.
//!
//! Needs `python3` with `websockets` (`python3 -m pip install -r clients/python/requirements.txt`,
//! as `.ci/run` does); skipped without it unless TICKFAN_REQUIRE_TOOLS is set.

mod support;

use std::path::PathBuf;

use support::{python_with_websockets, repo_root, show};
use tokio::process::Command;

/// The Python package's directory, to put on `PYTHONPATH`.
fn client_dir() -> PathBuf {
    repo_root().join("clients/python")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_reconnects_to_a_restarted_gateway_with_books_and_seqs_right() {
    through_a_restart(&[]).await;
}

/// The same with `--binary`: trades, quotes and book updates come as binary messages, which
/// the client decodes into their JSON (the book checksums, computed from the decoded levels,
/// must match).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_in_binary_goes_through_a_restart_with_books_and_seqs_right() {
    if let Some(out) = through_a_restart(&["--binary"]).await {
        support::assert_binary_received(&out);
    }
}

/// The CLI (with `extra` flags) through `support::client_through_a_restart`, and no traceback
/// on its stderr; `None` when Python cannot run the client here (SKIPPED).
async fn through_a_restart(extra: &[&str]) -> Option<std::process::Output> {
    python_with_websockets()?;
    let out = support::client_through_a_restart(|url| {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "tickfan_client", "--url", url]).args(extra);
        cmd.args(["--duration", "7", "--quiet", "--verbose"]);
        cmd.env("PYTHONPATH", client_dir()).env("PYTHONDONTWRITEBYTECODE", "1");
        cmd
    })
    .await;
    assert!(!String::from_utf8_lossy(&out.stderr).contains("Traceback"), "{}", show(&out));
    Some(out)
}

#[tokio::test]
async fn python_unit_tests_pass() {
    let Some(()) = python_with_websockets() else { return };
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "clients/python/tests"])
        .current_dir(repo_root())
        .env("PYTHONPATH", client_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .await
        .expect("python3 runs");
    let shown = show(&out);
    eprintln!("{shown}");
    assert!(out.status.success(), "{shown}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("\nOK"), "{shown}");
}
