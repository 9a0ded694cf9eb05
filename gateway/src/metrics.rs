//! Gateway-wide counters. Hot-path code accumulates locally (per worker, per batch) and
//! publishes here with relaxed atomic adds, never per message per subscriber. The Prometheus
//! exporter (issue #5) reads these.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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
