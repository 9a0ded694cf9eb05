//! `GET /metrics` on a live gateway: the classic text format checked by Prometheus's own
//! `promtool` (where it is installed; `.ci/run` installs it and sets TICKFAN_REQUIRE_TOOLS=1
//! so that CI cannot skip the check), OpenMetrics for scrapers that ask for it, and counters
//! that move as clients connect and receive.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{http_get, http_get_with, installed, start_gateway, Client};

/// The samples of a scrape: name (with labels) → value.
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(addr: std::net::SocketAddr) -> (String, HashMap<String, f64>) {
    let resp = http_get(addr, "/metrics").await;
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"));
    (body.to_owned(), samples(body))
}

#[tokio::test]
async fn prometheus_gets_openmetrics_when_it_asks() {
    let gw = start_gateway();
    // The Accept header Prometheus 2.x sends.
    let accept = "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                  version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n";
    let resp = http_get_with(gw.local_addr(), "/metrics", accept).await;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"));
    assert!(body.contains("# TYPE tickfan_frames_out counter\n"), "{body}");
    assert!(body.ends_with("# EOF\n"), "{body}");
}

#[tokio::test]
async fn counters_move_as_clients_subscribe_and_receive() {
    let gw = start_gateway();
    let addr = gw.local_addr();
    let (_, before) = scrape(addr).await;
    assert_eq!(before["tickfan_connections"], 0.0);
    assert_eq!(before["tickfan_frames_out_total"], 0.0);

    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(addr, "/ws?streams=trades.*").await;
        assert_eq!(c.reply().await["op"], "subscribed");
        clients.push(c);
    }
    for c in &mut clients {
        for _ in 0..20 {
            c.recv_json().await;
        }
    }
    let mut bad = Client::connect(addr, "/ws").await;
    assert_eq!(bad.request(serde_json::json!({"op": "nope"})).await["code"], "unknown_op");

    let (body, after) = scrape(addr).await;
    assert_eq!(after["tickfan_connections"], 3.0, "{body}");
    assert!(after["tickfan_connections_opened_total"] >= 3.0, "{body}");
    assert!(after["tickfan_frames_out_total"] >= 40.0, "{body}");
    assert!(after["tickfan_bytes_out_total"] > after["tickfan_frames_out_total"] * 40.0);
    assert!(after["tickfan_ticks_in_total"] > before["tickfan_ticks_in_total"]);
    assert_eq!(after["tickfan_requests_rejected_total{code=\"unknown_op\"}"], 1.0, "{body}");
    assert_eq!(after["tickfan_requests_rejected_total{code=\"malformed_json\"}"], 0.0);
    assert!(after["tickfan_ring_capacity"] > 0.0, "{body}");
    let trades_wild = "tickfan_subscriptions{kind=\"trades\",type=\"wildcard\"}";
    assert_eq!(after[trades_wild], 2.0, "{body}");
    assert_eq!(after["tickfan_subscriptions{kind=\"book\",type=\"exact\"}"], 0.0, "{body}");
    assert!(after.contains_key("tickfan_ring_frames{worker=\"0\"}"), "{body}");
    assert_eq!(after["tickfan_ring_dropped_total{worker=\"0\"}"], 0.0, "{body}");
    // Internal latency: every fanned-out tick is a sample, and the values are in seconds (a
    // unit slip, µs or ns recorded as s, would put them all beyond the 1 s bucket).
    let count = after["tickfan_internal_latency_seconds_count"];
    assert!(count >= 20.0, "{body}");
    assert!(after["tickfan_internal_latency_seconds_sum"] > 0.0, "{body}");
    assert!(after["tickfan_internal_latency_seconds_bucket{le=\"1\"}"] >= 0.9 * count, "{body}");
    assert_eq!(after["tickfan_internal_latency_seconds_bucket{le=\"+Inf\"}"], count);

    // One client closes with a close frame; two just disappear. The polite one stays open
    // until the gateway has counted its close: dropping a socket with unread data resets it,
    // and a reset may overtake the close frame.
    let mut polite = clients.pop().unwrap();
    polite.send_frame(fastwebsockets::Frame::close(1000, b"bye")).await;
    let client_close = "tickfan_connections_closed_total{reason=\"client_close\"}";
    for _ in 0..100 {
        if scrape(addr).await.1[client_close] == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(polite);
    drop(clients);
    drop(bad);
    let mut open = f64::MAX;
    for _ in 0..50 {
        open = scrape(addr).await.1["tickfan_connections"];
        if open == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open, 0.0, "closed connections still counted as open");
    let (body, closed) = scrape(addr).await;
    let reason = |r: &str| closed[&format!("tickfan_connections_closed_total{{reason=\"{r}\"}}")];
    // A vanished client is seen as EOF/reset when reading (peer_gone) or as a failed write
    // (server_stopped), whichever comes first.
    let vanished = reason("peer_gone") + reason("server_stopped");
    assert_eq!((reason("client_close"), vanished), (1.0, 2.0), "{body}");
    assert_eq!(closed[trades_wild], 0.0, "subscriptions of closed connections still counted");
}

/// Runs a Prometheus tool, or says it is not installed (`None`), which fails the test when
/// TICKFAN_REQUIRE_TOOLS is set (CI).
fn tool(program: &str, args: &[&str], stdin: &str) -> Option<std::process::Output> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = installed(program, "prometheus", child)?;
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    Some(child.wait_with_output().unwrap())
}

fn output_text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let gw = start_gateway();
    let _c = Client::connect(gw.local_addr(), "/ws?streams=quotes.*").await;
    let (body, _) = scrape(gw.local_addr()).await;
    let Some(out) = tool("promtool", &["check", "metrics"], &body) else { return };
    let report = output_text(&out);
    assert!(out.status.success(), "promtool check metrics failed:\n{report}\n{body}");
    // promtool also lints (naming, units); it must have nothing to say.
    assert!(report.trim().is_empty(), "promtool lint:\n{report}");
}

/// The PromQL of every panel of the shipped Grafana dashboard.
fn dashboard_queries() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/grafana/dashboards/tickfan.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6);
    let mut queries = Vec::new();
    for p in panels {
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("no targets: {p}"));
        assert!(!targets.is_empty(), "panel {} queries nothing", p["title"]);
        assert_eq!(p["datasource"]["uid"], "tickfan-prometheus", "panel {}", p["title"]);
        for t in targets {
            queries.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    queries
}

/// The `tickfan_…` metric names a PromQL expression uses.
fn metric_names(expr: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("tickfan_") {
        let tail = &rest[i..];
        let end =
            tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(&tail[..end]);
        rest = &tail[end..];
    }
    names
}

#[tokio::test]
async fn every_grafana_panel_queries_metrics_the_gateway_exports() {
    let gw = start_gateway();
    let (body, samples) = scrape(gw.local_addr()).await;
    let exported: std::collections::HashSet<&str> =
        samples.keys().map(|k| k.split('{').next().unwrap()).collect();
    let queries = dashboard_queries();
    let mut used = 0;
    for q in &queries {
        for name in metric_names(q) {
            assert!(exported.contains(name), "panel query {q:?} uses {name}, not in:\n{body}");
            used += 1;
        }
    }
    assert!(used >= queries.len(), "every query names a tickfan metric");
    let provisioned = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/provisioning/datasources/prometheus.yml"
    ))
    .unwrap();
    assert!(provisioned.contains("uid: tickfan-prometheus"), "datasource uid the panels use");
}

/// Percent-encodes a query-string value.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn the_shipped_prometheus_config_is_valid() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/prometheus.yml");
    let Some(out) = tool("promtool", &["check", "config", config], "") else { return };
    assert!(out.status.success(), "{}", output_text(&out));
}

/// A real Prometheus server scrapes a real gateway, and its query API returns tickfan's series.
#[tokio::test]
async fn a_real_prometheus_scrapes_the_gateway() {
    let gw = start_gateway();
    let mut c = Client::connect(gw.local_addr(), "/ws?streams=trades.*").await;
    c.reply().await;
    let dir = std::env::temp_dir().join(format!("tickfan-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: tickfan\n    \
             static_configs: [{{targets: ['{}']}}]\n",
            gw.local_addr()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Some(mut prometheus) = installed("prometheus", "prometheus", prometheus) else { return };
    let api: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut last = String::new();
    let mut found = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.try_recv(Duration::from_millis(1)).await; // keep the client's socket drained
        if tokio::net::TcpStream::connect(api).await.is_err() {
            continue;
        }
        last = http_get(api, "/api/v1/query?query=tickfan_frames_out_total").await;
        // A sample with a value above zero: the scrape worked and frames went out.
        if let Some(v) = last.split("\"value\":[").nth(1) {
            let value = v.split('"').nth(1).and_then(|n| n.parse::<f64>().ok());
            if value.is_some_and(|n| n > 0.0) {
                found = true;
                break;
            }
        }
    }
    // Every query of the shipped Grafana dashboard is valid PromQL for this Prometheus.
    let mut failures = Vec::new();
    if found {
        for q in dashboard_queries() {
            let answer = http_get(api, &format!("/api/v1/query?query={}", url_encode(&q))).await;
            if !answer.contains("\"status\":\"success\"") {
                failures.push(format!("{q}\n{answer}"));
            }
        }
    }
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(found, "Prometheus never returned tickfan_frames_out_total > 0; last answer:\n{last}");
    assert!(failures.is_empty(), "dashboard queries Prometheus refused:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn queue_depth_shows_a_client_that_does_not_read() {
    let gw = start_gateway();
    let addr = gw.local_addr();
    let streams = "/ws?streams=trades.*,quotes.*,book.*";
    let _stalled = Client::connect_with_small_buffer(addr, streams).await; // never read
    let sum = |m: &HashMap<String, f64>, name: &str| -> f64 {
        m.iter().filter(|(k, _)| k.starts_with(&format!("{name}{{"))).map(|(_, v)| v).sum()
    };
    let mut last = String::new();
    for _ in 0..50 {
        let (body, m) = scrape(addr).await;
        if sum(&m, "tickfan_blocked_connections") >= 1.0 && sum(&m, "tickfan_queue_max_bytes") > 0.0
        {
            assert!(sum(&m, "tickfan_queued_bytes") >= sum(&m, "tickfan_queue_max_bytes"));
            return;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("a stalled client never showed in the queue gauges:\n{last}");
}
