//! The real `tickfan` binary as a user runs it: startup banner, wscat from npm, and graceful
//! shutdown on SIGTERM.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{spawn_tickfan, without_epoch, Client};
use tokio::process::Command;

#[tokio::test]
async fn sigterm_closes_every_client_with_1001_and_exits_zero() {
    let (mut child, addr) = spawn_tickfan(&[]).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = Client::connect(addr, "/ws").await;
        let ack =
            c.request(json!({"op":"subscribe","id":i,"channels":["trades.*","quotes.*"]})).await;
        assert_eq!(ack["op"], "subscribed");
        c.recv_json().await; // data is flowing
        clients.push(c);
    }
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    for c in &mut clients {
        let (code, reason) = c.expect_close().await;
        assert_eq!(code, 1001, "{reason}");
    }
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within 10 s")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let mut stderr = String::new();
    use tokio::io::AsyncReadExt;
    child.stderr.take().unwrap().read_to_string(&mut stderr).await.unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn invalid_flags_fail_with_a_clear_message() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_tickfan")).args(["--rate=0"]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--rate"), "{err}");
}

#[tokio::test]
async fn wscat_subscribes_and_prints_ticks() {
    let (_child, addr) = spawn_tickfan(&[]).await;
    let subscribe = r#"{"op":"subscribe","id":1,"channels":["trades.*","quotes.BTC-USD"]}"#;
    let out = support::run_wscat(&format!("ws://{addr}/ws"), &["-x", subscribe, "-w", "2"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let messages: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| l.trim_start_matches("< ").trim().strip_prefix('{').map(|_| l))
        .map(|l| {
            serde_json::from_str(l.trim_start_matches("< ").trim()).expect("wscat prints JSON")
        })
        .collect();
    assert!(
        messages.iter().any(|m| m["op"] == "subscribed"
            && without_epoch(m.clone())
                == json!({"op":"subscribed","id":1,"channels":["trades.*","quotes.BTC-USD"]})),
        "{stdout}"
    );
    let data: Vec<_> = messages.iter().filter(|m| m.get("ch").is_some()).collect();
    assert!(data.len() > 50, "wscat printed only {} data messages:\n{stdout}", data.len());
    assert!(data
        .iter()
        .all(|m| m["ch"].as_str().unwrap().starts_with("trades.") || m["ch"] == "quotes.BTC-USD"));
    assert!(data.iter().any(|m| m["ch"] == "quotes.BTC-USD"));
}

/// The configuration reference of docs/operations.md lists every flag `tickfan --help` shows.
#[tokio::test]
async fn every_flag_is_in_the_configuration_reference() {
    let out = Command::new(env!("CARGO_BIN_EXE_tickfan")).arg("--help").output().await.unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
    let docs = std::fs::read_to_string(docs).unwrap();
    let reference = docs.split("## Configuration reference").nth(1).expect("the section");
    let flags: Vec<&str> = help
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("--"))
        .map(|l| l.split([' ', '=']).next().unwrap_or_default())
        .filter(|f| !matches!(*f, "help" | "version"))
        .collect();
    assert!(flags.len() > 40, "{help}");
    let missing: Vec<&&str> =
        flags.iter().filter(|f| !reference.contains(&format!("| `--{f}` |"))).collect();
    assert!(missing.is_empty(), "flags missing from the reference: {missing:?}");
}
