//! The real `tickfan` binary as a user runs it: startup banner, wscat from npm, and graceful
//! shutdown on SIGTERM.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{spawn_tickfan, without_epoch, Client, Msg};
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

/// SIGTERM with `--drain-secs`: every client is told first (`shutdown`, with when its own close
/// comes), the closes come one after the other over the window, `/readyz` says draining and
/// new connections are turned away meanwhile, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_client_notice_first_then_closes_spread_over_the_window() {
    let (mut child, addr) = spawn_tickfan(&["--drain-secs", "2"]).await;
    let mut clients = Vec::new();
    for i in 0..8 {
        let mut c = Client::connect(addr, "/ws").await;
        let ack = c.request(json!({"op":"subscribe","id":i,"channels":["trades.*"]})).await;
        assert_eq!(ack["op"], "subscribed");
        clients.push(c);
    }
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut readyz = String::new();
    for _ in 0..50 {
        readyz = support::http_get(addr, "/readyz").await;
        if readyz.contains("draining") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        readyz.starts_with("HTTP/1.1 503") && readyz.contains("not ready: draining"),
        "{readyz}"
    );
    let (status, _, head) = support::handshake_from("127.0.0.1", addr, "").await;
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("server shutting down"), "{head}");

    let mut in_ms = Vec::new();
    for c in &mut clients {
        let mut notice = None;
        loop {
            match c.recv().await {
                Msg::Text(v, _) if v["op"] == "shutdown" => notice = Some(v),
                Msg::Text(v, _) => assert!(notice.is_none() || v["ch"].is_string(), "{v}"),
                Msg::Close(code, reason) => {
                    assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
                    break;
                }
            }
        }
        let notice = notice.expect("the notice comes before the close");
        assert_eq!(notice["reason"], "server_shutdown");
        in_ms.push(notice["in_ms"].as_u64().unwrap());
    }
    in_ms.sort_unstable();
    assert!(in_ms[0] >= 200 && in_ms[7] <= 2000, "within the window: {in_ms:?}");
    assert!(in_ms[7] - in_ms[0] >= 1500, "spread over the window, not all at once: {in_ms:?}");
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
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
