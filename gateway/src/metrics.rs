//! Gateway-wide counters. Hot-path code accumulates locally (per worker, per batch) and
//! publishes here with relaxed atomic adds, never per message per subscriber. `GET /metrics`
//! reads them at scrape time through a `prometheus-client` collector ([`exposition`]).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use hdrhistogram::Histogram;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::NoLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tickfan_proto::{ChannelSpec, ErrorCode, Kind};

use crate::close::CloseCode;
use crate::limits::Refusal;
use crate::ring::Ring;

/// Why connections end: the `reason` label of `tickfan_connections_closed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close frame (echoed).
    ClientClose,
    /// EOF or reset without a close frame.
    PeerGone,
    /// A write failed, or the worker stopped.
    ServerStopped,
    /// 1001: the gateway is shutting down.
    GoingAway,
    /// 1002.
    ProtocolError,
    /// 1007.
    InvalidUtf8,
    /// 1008: request flood.
    PolicyViolation,
    /// 1008: replies left unread beyond the queue's slack.
    UnreadReplies,
    /// 1009.
    MessageTooBig,
    /// 1008: the queue was full and the channel's policy is `disconnect`.
    SlowConsumer,
    /// 1008: pings left unanswered (`--ping-interval`, `--ping-misses`).
    PingTimeout,
    /// 1008: no subscription for `--idle-timeout`.
    Idle,
    /// 1001: `--max-connection-age` reached.
    MaxAge,
    /// 1008: the credentials the connection was opened with expired.
    Expired,
    Other,
}

impl CloseReason {
    pub const ALL: [CloseReason; 15] = [
        CloseReason::ClientClose,
        CloseReason::PeerGone,
        CloseReason::ServerStopped,
        CloseReason::GoingAway,
        CloseReason::ProtocolError,
        CloseReason::InvalidUtf8,
        CloseReason::PolicyViolation,
        CloseReason::UnreadReplies,
        CloseReason::MessageTooBig,
        CloseReason::SlowConsumer,
        CloseReason::PingTimeout,
        CloseReason::Idle,
        CloseReason::MaxAge,
        CloseReason::Expired,
        CloseReason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientClose => "client_close",
            CloseReason::PeerGone => "peer_gone",
            CloseReason::ServerStopped => "server_stopped",
            CloseReason::GoingAway => "going_away",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::PolicyViolation => "policy_violation",
            CloseReason::UnreadReplies => "unread_replies",
            CloseReason::MessageTooBig => "message_too_big",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::Idle => "idle",
            CloseReason::MaxAge => "max_age",
            CloseReason::Expired => "expired",
            CloseReason::Other => "other",
        }
    }

    /// The reason of a close with RFC 6455 `code` sent for a client's fault.
    pub fn for_code(code: CloseCode) -> CloseReason {
        match code {
            CloseCode::GoingAway => CloseReason::GoingAway,
            CloseCode::Protocol => CloseReason::ProtocolError,
            CloseCode::InvalidData => CloseReason::InvalidUtf8,
            CloseCode::Policy => CloseReason::PolicyViolation,
            CloseCode::TooBig => CloseReason::MessageTooBig,
            _ => CloseReason::Other,
        }
    }

    /// The close frame the shard sends for its own reasons.
    pub fn close_frame(self) -> (CloseCode, &'static str) {
        match self {
            CloseReason::GoingAway => (CloseCode::GoingAway, "server shutting down"),
            CloseReason::UnreadReplies => {
                (CloseCode::Policy, "too many unread replies: read your socket")
            }
            CloseReason::SlowConsumer => (CloseCode::Policy, "slow consumer"),
            CloseReason::PingTimeout => {
                (CloseCode::Policy, "no pong to the server's pings: presumed dead")
            }
            CloseReason::Idle => (CloseCode::Policy, "idle: no subscription"),
            CloseReason::MaxAge => (CloseCode::GoingAway, "maximum connection age: reconnect"),
            CloseReason::Expired => (CloseCode::Policy, "credentials expired"),
            _ => (CloseCode::Internal, "server error"),
        }
    }
}

/// Slow-consumer actions, the `policy` label of `tickfan_slow_consumer_actions_total`.
pub const POLICY_ACTIONS: [&str; 3] = ["gap", "conflate", "disconnect"];

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
    /// The same (and Server-Sent Events streams), by what they receive (index in
    /// [`Form::ALL`](crate::sse::Form::ALL)).
    pub connections_by_format: [AtomicI64; 4],
    /// WebSocket connections accepted since start.
    pub connections_opened: AtomicU64,
    /// Frames dropped because a connection's queue was full (declared by `gap` notices).
    pub slow_consumer_drops: AtomicU64,
    /// `gap` notices sent.
    pub gaps_sent: AtomicU64,
    /// Client requests refused with an error reply, by code (index in [`ErrorCode::ALL`]).
    pub requests_rejected: [AtomicU64; ErrorCode::ALL.len()],
    /// Connections ended, by reason (index in [`CloseReason::ALL`]).
    pub connections_closed: [AtomicU64; CloseReason::ALL.len()],
    /// Slow-consumer actions by policy (index in [`POLICY_ACTIONS`]): frames dropped and
    /// declared by a gap, frames superseded by conflation, connections closed.
    pub slow_consumer_actions: [AtomicU64; 3],
    /// Book snapshots sent (on subscribe, after conflation or a failed resume).
    pub snapshots_sent: AtomicU64,
    /// Channels asked to resume: 0 resumed from the window, 1 not.
    pub resumes: [AtomicU64; 2],
    /// Subscriptions held now, by kind (index of [`Kind::ALL`]) and type (0 exact, 1 wildcard).
    pub subscriptions: [[AtomicI64; 2]; Kind::ALL.len()],
    /// Per worker, sampled once a second: bytes queued over its connections, the largest
    /// queue, and connections whose socket would block.
    pub queues: Vec<QueueSample>,
    /// The workers' rings, for occupancy and drops at scrape time (set once at start).
    pub rings: OnceLock<Vec<Arc<Ring>>>,
    /// Internal latency, one histogram per worker (each locked once per batch by its worker,
    /// and by scrapes), merged when scraped.
    pub internal_latency: Vec<Mutex<Histogram<u64>>>,
    /// The tick source's health: last tick, connection, lines rejected.
    pub feed: crate::source::FeedHealth,
    /// The market, for the size of its resume window at scrape time (set once at start).
    pub market: OnceLock<Arc<crate::market::Market>>,
    /// Sockets turned away, by reason (index in [`Refusal::ALL`]).
    pub connections_refused: [AtomicU64; Refusal::ALL.len()],
    /// The socket counts, for gauges at scrape time (set once at start).
    pub door: OnceLock<Arc<crate::limits::Door>>,
    /// Client input held over all connections (set once at start).
    pub inbound: OnceLock<Arc<crate::limits::InboundBudget>>,
    /// Whether every thread is alive (`/healthz`).
    pub health: crate::health::Health,
    /// The gateway is draining its connections before it stops (`--drain-secs`): not ready,
    /// and new connections are turned away.
    pub draining: std::sync::atomic::AtomicBool,
}

/// One worker's per-connection queues, as last sampled.
#[derive(Debug, Default)]
pub struct QueueSample {
    pub total_bytes: AtomicU64,
    pub max_bytes: AtomicU64,
    pub blocked: AtomicU64,
}

/// Picks one gauge of a [`QueueSample`].
type QueueField = fn(&QueueSample) -> &AtomicU64;

/// Bucket bounds of the exported internal-latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 16] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3,
    1.0, 2.5, 5.0,
];

/// An empty internal-latency histogram: 1 µs to 60 s in microseconds, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

impl Stats {
    /// Counters at zero, with one internal-latency histogram per worker.
    pub fn new(workers: usize) -> Stats {
        Stats {
            internal_latency: (0..workers.max(1))
                .map(|_| Mutex::new(latency_histogram()))
                .collect(),
            queues: (0..workers.max(1)).map(|_| QueueSample::default()).collect(),
            health: crate::health::Health::new(workers.max(1)),
            ..Stats::default()
        }
    }

    /// Records a batch's latencies (µs) into worker `worker`'s histogram: one lock per batch.
    pub fn record_latency(&self, worker: usize, micros: &[u64]) {
        if micros.is_empty() || self.internal_latency.is_empty() {
            return;
        }
        let shard = &self.internal_latency[worker % self.internal_latency.len()];
        let mut h = shard.lock().unwrap_or_else(|e| e.into_inner());
        for &us in micros {
            h.saturating_record(us.max(1));
        }
    }

    /// The workers' internal-latency histograms merged.
    pub fn merged_latency(&self) -> Histogram<u64> {
        let mut all = latency_histogram();
        for shard in &self.internal_latency {
            let h = shard.lock().unwrap_or_else(|e| e.into_inner());
            all.add(&*h).expect("same bounds");
        }
        all
    }

    /// Counts a request refused with `code`.
    pub fn reject(&self, code: ErrorCode) {
        let i = ErrorCode::ALL.iter().position(|&c| c == code).expect("ALL lists every code");
        Stats::add(&self.requests_rejected[i], 1);
    }

    /// Counts a subscription taken (`delta` 1) or dropped (−1).
    pub fn subscription(&self, spec: ChannelSpec, delta: i64) {
        let (kind, wildcard) = match spec {
            ChannelSpec::Exact(ch) => (ch.kind(), 0),
            ChannelSpec::Wildcard(kind) => (kind, 1),
        };
        self.subscriptions[kind as usize][wildcard].fetch_add(delta, Ordering::Relaxed);
    }

    /// Counts resume outcomes.
    pub fn resumes(&self, outcomes: &[(tickfan_proto::ChannelId, bool)]) {
        for &(_, ok) in outcomes {
            Stats::add(&self.resumes[usize::from(!ok)], 1);
        }
    }

    /// Counts a socket or handshake turned away for `why`.
    pub fn refused(&self, why: Refusal) {
        let i = Refusal::ALL.iter().position(|&r| r == why).expect("ALL lists every refusal");
        Stats::add(&self.connections_refused[i], 1);
    }

    /// Counts a connection ended for `reason`.
    pub fn closed(&self, reason: CloseReason) {
        let i = CloseReason::ALL.iter().position(|&r| r == reason).expect("ALL lists every reason");
        Stats::add(&self.connections_closed[i], 1);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The exposition a scraper asked for with its `Accept` header, and its content type:
/// OpenMetrics when asked (Prometheus itself asks), else the classic text format 0.0.4, which
/// every other consumer (promtool, curl, older agents) reads. Both come from the same
/// registry through prometheus-client's own encoders.
pub fn exposition(stats: &Arc<Stats>, accept: &str) -> (String, &'static str) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StatsCollector(stats.clone())));
    let mut out = String::new();
    let content_type = if accept.contains("application/openmetrics-text") {
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("encoding into a String cannot fail");
        OPENMETRICS
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("encoding into a String cannot fail");
        PROMETHEUS_TEXT
    };
    (out, content_type)
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
                "tickfan_snapshots_sent",
                "Book snapshots sent (subscribe, conflation, failed resume, ring overflow).",
                &s.snapshots_sent,
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
        labelled_counters(
            &mut encoder,
            "tickfan_requests_rejected",
            "Client requests answered with an error, by error code.",
            "code",
            ErrorCode::ALL.iter().map(|c| c.as_str()).zip(&s.requests_rejected),
        )?;
        labelled_counters(
            &mut encoder,
            "tickfan_connections_closed",
            "WebSocket connections ended, by reason.",
            "reason",
            CloseReason::ALL.iter().map(|r| r.as_str()).zip(&s.connections_closed),
        )?;
        labelled_counters(
            &mut encoder,
            "tickfan_connections_refused",
            "Sockets and WebSocket handshakes turned away at the door, by reason.",
            "reason",
            Refusal::ALL.iter().map(|r| r.as_str()).zip(&s.connections_refused),
        )?;
        labelled_counters(
            &mut encoder,
            "tickfan_slow_consumer_actions",
            "Slow-consumer actions by policy: frames dropped and declared by a gap notice, \
             frames superseded by conflation, connections closed.",
            "policy",
            POLICY_ACTIONS.iter().copied().zip(&s.slow_consumer_actions),
        )?;
        labelled_counters(
            &mut encoder,
            "tickfan_resumes",
            "Channels whose subscribe asked to resume, by result.",
            "result",
            ["resumed", "not_resumed"].into_iter().zip(&s.resumes),
        )?;
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "tickfan_subscriptions",
            "Subscriptions held now, by channel kind and type (exact channel or kind.* wildcard).",
            None,
            gauge.metric_type(),
        )?;
        for kind in Kind::ALL {
            for (i, kind_of_spec) in ["exact", "wildcard"].into_iter().enumerate() {
                let n = s.subscriptions[kind as usize][i].load(Ordering::Relaxed);
                let labels = [("kind", kind.label()), ("type", kind_of_spec)];
                ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let queue_gauges: [(&str, &str, QueueField); 3] = [
            (
                "tickfan_queued_bytes",
                "Bytes waiting in a worker's per-connection queues (sampled every second).",
                |q| &q.total_bytes,
            ),
            (
                "tickfan_queue_max_bytes",
                "The largest per-connection queue of a worker, in bytes (limit: --queue-bytes).",
                |q| &q.max_bytes,
            ),
            (
                "tickfan_blocked_connections",
                "Connections of a worker whose socket is full (the client reads slower than sent).",
                |q| &q.blocked,
            ),
        ];
        for (name, help, field) in queue_gauges {
            let mut family = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            for (i, q) in s.queues.iter().enumerate() {
                let worker = i.to_string();
                let labels = [("worker", worker.as_str())];
                let v = i64::try_from(Stats::get(field(q))).unwrap_or(i64::MAX);
                ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        if let Some(rings) = s.rings.get() {
            let mut family = encoder.encode_descriptor(
                "tickfan_ring_frames",
                "Frames waiting in a worker's ring (its capacity is tickfan_ring_capacity).",
                None,
                gauge.metric_type(),
            )?;
            for (i, ring) in rings.iter().enumerate() {
                let worker = i.to_string();
                let labels = [("worker", worker.as_str())];
                ConstGauge::new(ring.len() as i64).encode(family.encode_family(&labels)?)?;
            }
            let capacity = ConstGauge::new(rings.first().map_or(0, |r| r.capacity()) as i64);
            capacity.encode(encoder.encode_descriptor(
                "tickfan_ring_capacity",
                "Capacity of each worker's ring, in frames.",
                None,
                capacity.metric_type(),
            )?)?;
            let workers: Vec<String> = (0..rings.len()).map(|i| i.to_string()).collect();
            labelled_counters(
                &mut encoder,
                "tickfan_ring_dropped",
                "Frames dropped because a worker's ring was full (declared to its subscribers as \
                 ring_overflow gaps).",
                "worker",
                workers.iter().map(String::as_str).zip(rings.iter().map(|r| r.dropped_counter())),
            )?;
        }
        let latency = s.merged_latency();
        // prometheus-client takes each bucket's own count and makes them cumulative itself.
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
        let mut below = 0;
        for bound in LATENCY_BUCKETS {
            // Samples are µs; a bucket holds everything at or below its bound.
            let upto = latency.count_between(0, (bound * 1e6).round() as u64);
            buckets.push((bound, upto - below));
            below = upto;
        }
        buckets.push((f64::INFINITY, latency.len() - below));
        let sum_seconds = latency.mean() * latency.len() as f64 / 1e6;
        encoder
            .encode_descriptor(
                "tickfan_internal_latency_seconds",
                "Time from a tick's ts (stamped when the feed publishes it) to the end of the \
                 fan-out pass that handed its frame to every ready subscriber's socket.",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(sum_seconds, latency.len(), &buckets, None)?;
        let open = ConstGauge::new(s.connections.load(Ordering::Relaxed));
        open.encode(encoder.encode_descriptor(
            "tickfan_connections",
            "WebSocket connections open now.",
            None,
            open.metric_type(),
        )?)?;
        let kind = ConstGauge::new(0i64).metric_type();
        let mut family = encoder.encode_descriptor(
            "tickfan_connections_by_format",
            "Connections open now by what they receive: json, deflate (permessage-deflate), \
             binary (?format=binary) or sse (Server-Sent Events).",
            None,
            kind,
        )?;
        for form in crate::sse::Form::ALL {
            let n = s.connections_by_format[form.index()].load(Ordering::Relaxed);
            ConstGauge::new(n).encode(family.encode_family(&[("format", form.label())])?)?;
        }
        if let Some(market) = s.market.get() {
            let kept = ConstGauge::new(i64::try_from(market.window_bytes()).unwrap_or(i64::MAX));
            kept.encode(encoder.encode_descriptor(
                "tickfan_resume_window_bytes",
                "Bytes of the frames kept for resume, all channels (bound: --resume-bytes).",
                None,
                kept.metric_type(),
            )?)?;
        }
        let door = s.door.get().map(|d| [d.sockets(), d.handshakes()]).unwrap_or_default();
        let inbound = s.inbound.get().map_or(0, |b| b.used());
        let door_gauges = [
            (
                "tickfan_sockets",
                "Client sockets open: WebSocket, plain HTTP and handshaking (bound: \
                 --max-connections).",
                door[0],
            ),
            (
                "tickfan_handshaking_sockets",
                "Client sockets not upgraded to WebSocket (bound: --max-handshakes).",
                door[1],
            ),
            (
                "tickfan_inbound_bytes",
                "Client input held in memory over all connections (bound: --max-inbound-bytes).",
                inbound,
            ),
        ];
        for (name, help, value) in door_gauges {
            let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        encode_feed(&mut encoder, &s.feed)
    }
}

/// The tick source's health: its state, how long it has been quiet, what it rejected and
/// what its upstream lost.
fn encode_feed(
    encoder: &mut DescriptorEncoder,
    feed: &crate::source::FeedHealth,
) -> Result<(), std::fmt::Error> {
    use crate::source::FeedState;
    let now = tickfan_proto::unix_now_ns();
    let state = feed.state(now);
    let gauge = ConstGauge::new(0i64);
    let mut family = encoder.encode_descriptor(
        "tickfan_feed_state",
        "1 for the tick source's current state (starting, catching_up: reading a JetStream backlog, live, stale: no tick for \
         --stale-after, down: upstream disconnected), 0 for the others.",
        None,
        gauge.metric_type(),
    )?;
    for st in FeedState::ALL {
        ConstGauge::new(i64::from(st == state))
            .encode(family.encode_family(&[("state", st.as_str())])?)?;
    }
    let quiet = ConstGauge::new(feed.quiet_secs(now));
    quiet.encode(encoder.encode_descriptor(
        "tickfan_feed_quiet_seconds",
        "Seconds since the source published its last tick (since start before the first).",
        None,
        quiet.metric_type(),
    )?)?;
    labelled_counters(
        encoder,
        "tickfan_feed_rejected",
        "Feed lines skipped (NDJSON and NATS sources), by reason (docs/feed-format.md).",
        "reason",
        tickfan_proto::feed::LineError::ALL.iter().map(|e| e.reason()).zip(&feed.rejected),
    )?;
    let lost = ConstCounter::new(Stats::get(&feed.upstream_lost));
    lost.encode(encoder.encode_descriptor(
        "tickfan_feed_upstream_lost",
        "Seqs skipped by the upstream before they reached this gateway (declared to \
         subscribers by gap notices with reason feed).",
        None,
        lost.metric_type(),
    )?)
}

/// One counter family with one label, a sample per `(label value, counter)`.
fn labelled_counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl Iterator<Item = (&'a str, &'a AtomicU64)>,
) -> Result<(), std::fmt::Error> {
    let kind = ConstCounter::new(0u64).metric_type();
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (value, counter) in values {
        let labels = [(label, value)];
        ConstCounter::new(Stats::get(counter)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_current_values_in_both_formats() {
        let stats = Arc::new(Stats::default());
        Stats::add(&stats.frames_out, 42);
        stats.connections.store(3, Ordering::Relaxed);
        stats.connections_by_format[crate::sse::Form::Binary.index()].store(2, Ordering::Relaxed);
        let (open, ct) = exposition(&stats, "application/openmetrics-text;version=1.0.0");
        assert_eq!(ct, OPENMETRICS);
        assert!(open.contains("# TYPE tickfan_frames_out counter\n"), "{open}");
        assert!(open.contains("\ntickfan_frames_out_total 42\n"), "{open}");
        assert!(open.ends_with("# EOF\n"), "{open}");
        let (classic, ct) = exposition(&stats, "*/*");
        assert_eq!(ct, PROMETHEUS_TEXT);
        assert!(classic.contains("# TYPE tickfan_frames_out_total counter\n"), "{classic}");
        assert!(classic.contains("\ntickfan_frames_out_total 42\n"), "{classic}");
        assert!(classic.contains("\ntickfan_connections 3\n"), "{classic}");
        let binary = "\ntickfan_connections_by_format{format=\"binary\"} 2\n";
        assert!(classic.contains(binary), "{classic}");
        for (i, form) in crate::sse::Form::ALL.into_iter().enumerate() {
            assert_eq!(form.index(), i);
        }
    }

    #[test]
    fn latency_histogram_buckets_are_cumulative() {
        let stats = Arc::new(Stats::new(2));
        stats.record_latency(0, &[80, 90]); // ≤ 100 µs
        stats.record_latency(1, &[3_000]); // ≤ 5 ms
        let (text, _) = exposition(&stats, "");
        for line in [
            "tickfan_internal_latency_seconds_bucket{le=\"5e-05\"} 0",
            "tickfan_internal_latency_seconds_bucket{le=\"0.0001\"} 2",
            "tickfan_internal_latency_seconds_bucket{le=\"0.0025\"} 2",
            "tickfan_internal_latency_seconds_bucket{le=\"0.005\"} 3",
            "tickfan_internal_latency_seconds_bucket{le=\"+Inf\"} 3",
            "tickfan_internal_latency_seconds_count 3",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
