//! Faults are loud: a panic anywhere in the `tickfan` binary takes the process down (for its
//! supervisor to restart), and an embedded gateway whose part failed says so on `/healthz`
//! instead of serving half alive. Panics are injected with the hidden `--inject-panic` flag.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{http_get, spawn_tickfan, start_gateway_with, Client};
use tokio::io::AsyncReadExt;

/// Waits for `child` to exit, and returns its exit status and what it wrote to stderr.
async fn exit_of(mut child: tokio::process::Child) -> (std::process::ExitStatus, String) {
    let mut stderr = child.stderr.take().unwrap();
    let mut err = String::new();
    let waited = tokio::time::timeout(Duration::from_secs(15), async {
        stderr.read_to_string(&mut err).await.unwrap();
        child.wait().await.unwrap()
    })
    .await;
    let status = waited.unwrap_or_else(|_| panic!("still running 15 s after the panic: {err}"));
    (status, err)
}

#[tokio::test]
async fn a_panic_anywhere_in_the_binary_takes_the_process_down() {
    for site in ["listener", "request", "fanout", "feed"] {
        let (child, addr) = spawn_tickfan(&["--inject-panic", site]).await;
        match site {
            // Triggered by a client: a TCP connection, a request.
            "listener" => drop(tokio::net::TcpStream::connect(addr).await),
            "request" => {
                let mut c = Client::connect(addr, "/ws").await;
                c.send_json(json!({"op":"ping","id":1})).await;
            }
            _ => {}
        }
        let (status, stderr) = exit_of(child).await;
        assert!(!status.success(), "{site}: exited with {status}");
        assert!(
            stderr.contains(&format!(
                "injected panic in {}",
                match site {
                    "listener" => "the listener",
                    "request" => "a client request",
                    "fanout" => "worker",
                    _ => "the feed thread",
                }
            )),
            "{site}: {stderr}"
        );
        assert!(
            stderr.contains("aborting the process so that it is restarted"),
            "{site}: {stderr}"
        );
    }
}

#[tokio::test]
async fn an_embedded_gateway_whose_worker_failed_is_unhealthy_and_says_why() {
    let gw = start_gateway_with(|c| c.inject_panic = Some(gateway::config::PanicSite::Request));
    let addr = gw.local_addr();
    let before = http_get(addr, "/healthz").await;
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");
    let mut c = Client::connect(addr, "/ws").await;
    c.send_json(json!({"op":"ping","id":1})).await;
    let mut failure = None;
    for _ in 0..50 {
        failure = gw.stats().health.failure().map(str::to_owned);
        if failure.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failure = failure.expect("the failure is recorded");
    assert!(failure.contains("readiness driver task panicked"), "{failure}");
    assert!(failure.contains("injected panic in a client request"), "{failure}");
    // Either worker may answer: both say the gateway is unhealthy, and not ready.
    for _ in 0..4 {
        let health = http_get(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        assert!(health.contains("unhealthy: worker"), "{health}");
        let ready = http_get(addr, "/readyz").await;
        assert!(ready.contains("503") && ready.contains("not ready: unhealthy: worker"), "{ready}");
    }
}

#[tokio::test]
async fn an_embedded_gateway_whose_feed_thread_panicked_is_unhealthy() {
    let gw = start_gateway_with(|c| c.inject_panic = Some(gateway::config::PanicSite::Feed));
    // The feed thread panics 0.3 s after start.
    let mut health = String::new();
    for _ in 0..50 {
        health = http_get(gw.local_addr(), "/healthz").await;
        if !health.starts_with("HTTP/1.1 200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(health.contains("the feed thread panicked: injected panic"), "{health}");
}
