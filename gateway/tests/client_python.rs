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
use std::process::{Command as StdCommand, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

/// The repository's root (the gateway crate's parent).
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The Python package's directory, to put on `PYTHONPATH`.
fn client_dir() -> PathBuf {
    repo_root().join("clients/python")
}

/// `Some(())` when `python3` can import `websockets`; `None` (SKIPPED) when it cannot and
/// TICKFAN_REQUIRE_TOOLS is unset; a panic when it cannot and the variable is set.
fn python_with_websockets() -> Option<()> {
    let probe = StdCommand::new("python3")
        .args(["-c", "import websockets"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .and_then(|status| {
            if status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other("cannot import websockets"))
            }
        });
    support::installed(
        "python3 with websockets",
        "python3-pip; python3 -m pip install -r clients/python/requirements.txt",
        probe,
    )
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
async fn python_client_reconnects_to_a_restarted_gateway_with_books_and_seqs_right() {
    let Some(()) = python_with_websockets() else { return };
    let port = free_port();
    let mut first = start_gateway(port).await;

    let client = Command::new("python3")
        .args(["-m", "tickfan_client", "--url", &format!("ws://127.0.0.1:{port}/ws")])
        .args(["--duration", "7", "--quiet", "--verbose"])
        .args(["trades.BTC-USD", "quotes.BTC-USD", "book.BTC-USD", "book.ETH-USD"])
        .env("PYTHONPATH", client_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");

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
    assert!(!String::from_utf8_lossy(&out.stderr).contains("Traceback"), "{shown}");
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
