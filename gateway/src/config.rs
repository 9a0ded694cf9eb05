//! Gateway configuration: CLI flags with `TICKFAN_*` environment fallbacks.

use std::net::SocketAddr;

use clap::Parser;

/// Every tunable of the gateway. Defaults run a complete demo on `127.0.0.1:8080`.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "tickfan",
    version,
    about = "tickfan: encode-once, zero-copy WebSocket fan-out of market data"
)]
pub struct Config {
    /// Address to listen on (HTTP and WebSocket share it). Port 0 picks a free port.
    #[arg(long, env = "TICKFAN_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Number of symbols of the embedded simulated feed.
    #[arg(long, env = "TICKFAN_SYMBOLS", default_value_t = 50)]
    pub symbols: usize,

    /// Ticks per second of the embedded feed (outside bursts).
    #[arg(long, env = "TICKFAN_RATE", default_value_t = 20_000.0)]
    pub rate: f64,

    /// Seed of the embedded feed: same seed, same ticks.
    #[arg(long, env = "TICKFAN_SEED", default_value_t = 1)]
    pub seed: u64,

    /// Mean seconds between 10x bursts of the embedded feed (0 disables bursts).
    #[arg(long, env = "TICKFAN_BURST_EVERY", default_value_t = 5.0)]
    pub burst_every: f64,

    /// Minimum interval, in microseconds, between two producer batches. Batching bounds the
    /// workers' wake-ups (one per batch) at the cost of up to this much added delay; ticks are
    /// stamped when their batch is published. 0 publishes every tick as soon as it is due.
    #[arg(long, env = "TICKFAN_FEED_BATCH_US", default_value_t = 250)]
    pub feed_batch_us: u64,

    /// Fan-out workers (threads owning a shard of connections). 0 = one per core.
    #[arg(long, env = "TICKFAN_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Capacity, in frames, of each producer → worker ring.
    #[arg(long, env = "TICKFAN_RING_CAPACITY", default_value_t = 65_536)]
    pub ring_capacity: usize,

    /// Bound, in bytes, of each connection's outbound queue. Beyond it data is dropped and
    /// the client gets a `gap` notice.
    #[arg(long, env = "TICKFAN_QUEUE_BYTES", default_value_t = 4 << 20)]
    pub queue_bytes: usize,

    /// Maximum channels one connection may subscribe to (a wildcard counts as one).
    #[arg(long, env = "TICKFAN_MAX_CHANNELS", default_value_t = 1_000)]
    pub max_channels: usize,

    /// Maximum size of one client message, in bytes; larger ones get `message_too_large`.
    #[arg(long, env = "TICKFAN_MAX_MESSAGE_BYTES", default_value_t = 16 << 10)]
    pub max_message_bytes: usize,

    /// Maximum size of one client frame (or fragmented message); larger ones close the
    /// connection with 1009.
    #[arg(long, env = "TICKFAN_MAX_FRAME_BYTES", default_value_t = 1 << 20)]
    pub max_frame_bytes: usize,

    /// Client requests per second allowed per connection (token bucket, burst of twice this).
    #[arg(long, env = "TICKFAN_MAX_REQUESTS_PER_SEC", default_value_t = 50)]
    pub max_requests_per_sec: u32,

    /// Maximum concurrent WebSocket connections; more get HTTP 503.
    #[arg(long, env = "TICKFAN_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Seconds a new connection may take to send its complete HTTP request (upgrade or not)
    /// before it is closed, so idle or trickling sockets cannot pile up.
    #[arg(long, env = "TICKFAN_HANDSHAKE_TIMEOUT", default_value_t = 10.0)]
    pub handshake_timeout: f64,

    /// Log filter, e.g. `info` or `info,gateway=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    /// Fan-out workers to start: the configured count, or one per available core.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Checks what clap cannot; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(format!("--rate must be a positive number of ticks/s, got {}", self.rate));
        }
        if self.symbols == 0 || self.symbols > 100_000 {
            return Err(format!("--symbols must be 1..=100000, got {}", self.symbols));
        }
        if self.ring_capacity < 16 {
            return Err("--ring-capacity must be at least 16 frames".into());
        }
        if self.queue_bytes < 64 << 10 {
            return Err("--queue-bytes must be at least 65536".into());
        }
        if self.max_message_bytes < 256 || self.max_message_bytes > self.max_frame_bytes {
            return Err("--max-message-bytes must be >= 256 and <= --max-frame-bytes".into());
        }
        if !(self.handshake_timeout.is_finite() && self.handshake_timeout > 0.0) {
            return Err("--handshake-timeout must be a positive number of seconds".into());
        }
        if self.max_channels == 0 || self.max_requests_per_sec == 0 || self.max_connections == 0 {
            return Err(
                "--max-channels, --max-requests-per-sec and --max-connections must be > 0".into()
            );
        }
        Ok(())
    }

    /// A configuration for tests and embedding: listens on `127.0.0.1:0`, defaults otherwise.
    pub fn for_tests() -> Config {
        Config::parse_from(["tickfan", "--listen", "127.0.0.1:0"])
    }
}
