//! Gateway-wide counters. Hot-path code accumulates locally (per worker, per batch) and
//! publishes here with relaxed atomic adds, never per message per subscriber. `GET /metrics`
//! reads them at scrape time through a `prometheus-client` collector ([`render`]).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Counters shared by the producer, the workers and the HTTP side.
#[derive(Debug, Default)]
pub struct Stats {
    /// Ticks encoded by the producer.
    pub ticks_in: AtomicU64,
    /// Data frames handed to connection queues (one per subscriber per tick).
    pub frames_out: AtomicU64,
    /// Bytes written to sockets (data, replies and control frames).
    pub bytes_out: AtomicU64,
    /// WebSocket connections currently open.
    pub connections: AtomicI64,
    /// WebSocket connections accepted since start.
    pub connections_opened: AtomicU64,
    /// Frames dropped because a connection's queue was full (declared by `gap` notices).
    pub slow_consumer_drops: AtomicU64,
    /// `gap` notices sent.
    pub gaps_sent: AtomicU64,
    /// Client requests refused with an error reply.
    pub requests_rejected: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Content type of the OpenMetrics text format ([`render`]).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format ([`render_prometheus`]).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition a scraper asked for with its `Accept` header, and its content type:
/// OpenMetrics when asked (Prometheus itself asks), else the classic text format, which every
/// other consumer (promtool, curl, older agents) reads.
pub fn exposition(stats: &Arc<Stats>, accept: &str) -> (String, &'static str) {
    if accept.contains("application/openmetrics-text") {
        (render(stats), OPENMETRICS)
    } else {
        (render_prometheus(stats), PROMETHEUS_TEXT)
    }
}

/// The metrics in the classic Prometheus text format (0.0.4). `prometheus-client` writes
/// OpenMetrics only; the two differ in three ways that matter here: a counter's HELP and TYPE
/// name the `_total` sample itself, there is no `# UNIT`, and no `# EOF`.
pub fn render_prometheus(stats: &Arc<Stats>) -> String {
    let open = render(stats);
    let counters: Vec<&str> =
        open.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta =
            ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(&name) { "_total" } else { "" };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// The metrics in the OpenMetrics text format, read from `stats` now.
pub fn render(stats: &Arc<Stats>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StatsCollector(stats.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("encoding into a String cannot fail");
    out
}

/// Reads [`Stats`] at scrape time: the hot path never touches the exporter.
#[derive(Debug)]
struct StatsCollector(Arc<Stats>);

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let counters: [(&str, &str, &AtomicU64); 7] = [
            ("tickfan_ticks_in", "Ticks encoded by the feed into frames.", &s.ticks_in),
            (
                "tickfan_frames_out",
                "Data frames queued to connections (one per subscriber per tick).",
                &s.frames_out,
            ),
            ("tickfan_bytes_out", "Bytes written to client sockets.", &s.bytes_out),
            (
                "tickfan_connections_opened",
                "WebSocket connections accepted since start.",
                &s.connections_opened,
            ),
            (
                "tickfan_slow_consumer_drops",
                "Frames dropped because a connection's queue was full (declared by gap notices).",
                &s.slow_consumer_drops,
            ),
            ("tickfan_gaps_sent", "Gap notices sent to clients.", &s.gaps_sent),
            (
                "tickfan_requests_rejected",
                "Client requests answered with an error.",
                &s.requests_rejected,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(Stats::get(value));
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let open = ConstGauge::new(s.connections.load(Ordering::Relaxed));
        open.encode(encoder.encode_descriptor(
            "tickfan_connections",
            "WebSocket connections open now.",
            None,
            open.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_current_values_in_openmetrics_text() {
        let stats = Arc::new(Stats::default());
        Stats::add(&stats.frames_out, 42);
        stats.connections.store(3, Ordering::Relaxed);
        let text = render(&stats);
        assert!(text.contains("# TYPE tickfan_frames_out counter\n"), "{text}");
        assert!(text.contains("\ntickfan_frames_out_total 42\n"), "{text}");
        assert!(text.contains("\ntickfan_connections 3\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        let classic = render_prometheus(&stats);
        assert!(classic.contains("# TYPE tickfan_frames_out_total counter\n"), "{classic}");
        assert!(classic.contains("# HELP tickfan_frames_out_total Data frames"), "{classic}");
        assert!(classic.contains("# TYPE tickfan_connections gauge\n"), "{classic}");
        assert!(classic.contains("\ntickfan_frames_out_total 42\n"), "{classic}");
        assert!(!classic.contains("# EOF"), "{classic}");
        assert_eq!(exposition(&stats, "application/openmetrics-text;version=1.0.0").1, OPENMETRICS);
        assert_eq!(exposition(&stats, "*/*").1, PROMETHEUS_TEXT);
    }
}
