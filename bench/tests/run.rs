//! `bench run` against a real in-process gateway.

use std::time::Duration;

use bench::RunConfig;
use gateway::{Config, Gateway};

#[test]
fn run_against_a_live_gateway_delivers_without_undeclared_gaps() {
    let mut cfg = Config::for_tests();
    cfg.symbols = 20;
    cfg.rate = 10_000.0;
    cfg.workers = 2;
    let gw = Gateway::start(cfg).unwrap();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let report = rt
        .block_on(bench::run(RunConfig {
            conns: 8,
            streams: "trades.*,quotes.BTC-USD,book.ETH-USD".into(),
            duration: Duration::from_secs(2),
            warmup: Duration::from_millis(300),
            server_pids: vec![std::process::id()],
            // The gateway runs in this process: its feed is a thread of ours.
            feed_thread: Some(bench::compare::FEED_THREAD.into()),
            metrics_url: Some(format!("http://{}/metrics", gw.local_addr())),
            ..RunConfig::new(format!("ws://{}/ws", gw.local_addr()))
        }))
        .unwrap();
    assert_eq!((report.connected, report.failed_connects, report.ended_early), (8, 0, 0));
    assert!(report.msgs > 8 * 1000, "{}", report.markdown());
    assert_eq!(report.undeclared_gaps, 0);
    assert_eq!(report.latency_us.samples, report.msgs);
    assert!(report.latency_us.p50 > 0 && report.latency_us.p50 <= report.latency_us.max);
    assert!(report.server_cpu_cores.is_some_and(|c| c > 0.0));
    // The feed at 10,000 ticks/s is busy, and its CPU is not counted as the server's.
    let feed = report.feed_cpu_cores.expect("the feed thread was found");
    assert!(feed > 0.0, "{}", report.markdown());
    assert!(!report.failed());
    let json: serde_json::Value =
        serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(json["msgs"], report.msgs);
    assert!(report.markdown().contains("msgs/s"));
    // Every tickfan data frame is at least `{"ch":"…","seq":N,"ts":N}` plus a 2-byte header.
    assert!(report.wire_bytes_per_msg > 40.0, "{}", report.wire_bytes_per_msg);
    assert!(report.server_rss_bytes.is_some_and(|b| b > 1 << 20));
    assert!(!report.msgs_per_sec_series.is_empty());
    // The gateway's own latency over the same window, scraped from /metrics.
    let sl = report.server_internal_latency.as_ref().expect("--metrics-url was given");
    assert!(sl.samples > 1000, "{sl:?}");
    assert!(0.0 < sl.p50_us && sl.p50_us <= sl.p99_us && sl.p99_us <= sl.p999_us, "{sl:?}");
    assert!(report.markdown().contains("gateway internal latency"));
}

#[test]
fn random_symbols_per_connection_and_a_paced_ramp() {
    let mut cfg = Config::for_tests();
    cfg.symbols = 20;
    cfg.rate = 5_000.0;
    let gw = Gateway::start(cfg).unwrap();
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let random = bench::client::RandomSymbols::from_feed(2, 20, 9).unwrap();
    let report = rt
        .block_on(bench::run(RunConfig {
            conns: 8,
            streams: "trades.{sym},quotes.{sym}".into(),
            random_symbols: Some(random),
            ramp: Some(20.0),
            duration: Duration::from_secs(1),
            warmup: Duration::from_millis(200),
            ..RunConfig::new(format!("ws://{}/ws", gw.local_addr()))
        }))
        .unwrap();
    // A drawn symbol the gateway did not know would make it refuse the whole `?streams=`
    // subscription, and nothing would flow.
    assert_eq!((report.connected, report.ended_early), (8, 0), "{}", report.markdown());
    assert!(report.msgs > 0 && report.undeclared_gaps == 0, "{}", report.markdown());
    // 8 connections at 20 per second: the last one starts 7/20 s after the first.
    assert!(report.connect_seconds >= 0.35, "ramp not applied: {}", report.connect_seconds);
}

/// Gateways scaled out: `--target` lists several, connections go to each in turn, and the
/// report is their aggregate.
#[test]
fn several_targets_share_the_connections_and_report_the_aggregate() {
    let start = || {
        let mut cfg = Config::for_tests();
        cfg.symbols = 5;
        cfg.rate = 2_000.0;
        cfg.workers = 1;
        Gateway::start(cfg).unwrap()
    };
    let (a, b) = (start(), start());
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let opened =
        |gw: &Gateway| gw.stats().connections_opened.load(std::sync::atomic::Ordering::Relaxed);
    let target = format!("ws://{}/ws, ws://{}/ws", a.local_addr(), b.local_addr());
    let report = rt
        .block_on(bench::run(RunConfig {
            conns: 6,
            streams: "trades.*".into(),
            duration: Duration::from_secs(1),
            warmup: Duration::from_millis(300),
            ..RunConfig::new(target)
        }))
        .unwrap();
    assert_eq!((report.connected, report.ended_early), (6, 0), "{}", report.markdown());
    assert_eq!((opened(&a), opened(&b)), (3, 3), "connections alternate between the targets");
    assert!(report.msgs > 6 * 100, "{}", report.markdown());
    assert_eq!(report.undeclared_gaps, 0);
}
