//! Gateway configuration: CLI flags with `TICKFAN_*` environment fallbacks.

use std::net::SocketAddr;

use clap::Parser;
use tickfan_proto::Kind;

/// What to do with a client that cannot keep up, for one channel kind (`docs/protocol.md`,
/// "Slow consumers").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Drop, and declare the dropped seqs with a `gap` notice.
    Gap,
    /// Keep only the newest state: quotes send the latest quote, books a fresh snapshot.
    Conflate,
    /// Close the connection with 1008.
    Disconnect,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Gap => "gap",
            Policy::Conflate => "conflate",
            Policy::Disconnect => "disconnect",
        }
    }
}

/// The slow-consumer policy of each channel kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policies([Policy; Kind::COUNT as usize]);

impl Policies {
    pub fn get(&self, kind: Kind) -> Policy {
        self.0[kind as usize]
    }
}

impl Default for Policies {
    /// Trades declare what a slow client missed; quotes, books and the derived states (ticker,
    /// candles) catch up on the newest.
    fn default() -> Policies {
        let mut p = [Policy::Conflate; Kind::COUNT as usize];
        p[Kind::Trades as usize] = Policy::Gap;
        Policies(p)
    }
}

/// Parses `trades=gap,quotes=conflate,book=disconnect` (any subset, any order).
pub fn parse_policies(s: &str) -> Result<Policies, String> {
    let mut p = Policies::default();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (kind, policy) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: expected KIND=POLICY, e.g. quotes=conflate"))?;
        let kinds: Vec<Kind> = match kind.trim() {
            "candles" => Kind::ALL.into_iter().filter(|k| k.interval().is_some()).collect(),
            "book" => Kind::ALL.into_iter().filter(|k| k.is_book()).collect(),
            name => vec![Kind::from_prefix(name).ok_or_else(|| {
                format!("unknown channel kind {kind:?}: trades, quotes, book, ticker or candles")
            })?],
        };
        let kind = kinds[0];
        let policy = match policy.trim() {
            "gap" => Policy::Gap,
            "conflate" if kind == Kind::Trades => {
                return Err("trades cannot be conflated (every trade matters): use gap or \
                            disconnect"
                    .into())
            }
            "conflate" => Policy::Conflate,
            "disconnect" => Policy::Disconnect,
            other => return Err(format!("unknown policy {other:?}: gap, conflate or disconnect")),
        };
        for kind in kinds {
            p.0[kind as usize] = policy;
        }
    }
    Ok(p)
}

/// The largest number of seconds any time flag takes (about 31 years).
const MAX_SECONDS: f64 = 1e9;

/// Where `--inject-panic` panics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PanicSite {
    Fanout,
    Feed,
    Listener,
    Request,
}

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

    /// A second address for the operator's pages: `/metrics`, `/dashboard`, `/healthz` and
    /// `/readyz`, served by a thread of their own, off the fan-out workers. With it, the data
    /// port (--listen) no longer serves `/metrics` and `/dashboard`. Keep it private (e.g.
    /// 127.0.0.1 or an internal network).
    #[arg(long, env = "TICKFAN_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Where ticks come from: `embedded` (the built-in simulator, configured by the flags
    /// below), `stdin` (NDJSON, e.g. `feed-sim | tickfan --source stdin`), `file:PATH` (an
    /// NDJSON recording, replayed at --replay-speed) or `nats://HOST:PORT` (a feed many
    /// gateways share: `feed-sim --sink nats://…`). The feed format is docs/feed-format.md.
    #[arg(long, env = "TICKFAN_SOURCE", default_value = "embedded", value_parser = crate::source::parse_source)]
    pub source: crate::source::SourceSpec,

    /// `--source nats://…`: read the feed from the JetStream stream `MD` (kept by `feed-sim
    /// --sink nats://… --jetstream`) instead of core NATS: at start the gateway fills its
    /// resume window with the last --resume-secs from the stream, and an outage of NATS or of
    /// the gateway's connection loses nothing the stream still holds.
    #[arg(long, env = "TICKFAN_JETSTREAM")]
    pub jetstream: bool,

    /// `--source nats://…`: serve only these symbols (comma-separated) of the feed, and take
    /// only their subjects from NATS; every other channel is unknown to this gateway. Empty:
    /// every symbol the publisher announces.
    #[arg(long, env = "TICKFAN_SOURCE_SYMBOLS", value_delimiter = ',', value_name = "SYM,…")]
    pub source_symbols: Vec<String>,

    /// `--source file:…`: replay at this multiple of the recording's own pace (by its `ts`);
    /// 0 replays as fast as the gateway takes it.
    #[arg(long, env = "TICKFAN_REPLAY_SPEED", default_value_t = 1.0)]
    pub replay_speed: f64,

    /// Seconds without any tick after which the feed counts as stale: `/readyz` answers 503 and
    /// clients get `{"op":"status","feed":"stale"}` (then `"live"` when ticks return). 0: never.
    #[arg(long, env = "TICKFAN_STALE_AFTER", default_value_t = 5.0)]
    pub stale_after: f64,

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

    /// The embedded feed stamps each tick with the simulated exchange's event time too: data
    /// messages then carry `et` (when the event was due, up to a batch before `ts`) beside
    /// `ts`, as they do from a source that gives it.
    #[arg(long, env = "TICKFAN_EVENT_TIME")]
    pub event_time: bool,

    /// Longest time, in microseconds, a busy worker holds its connections' queued frames, to
    /// write more in one syscall: each write costs several µs of kernel CPU whatever it
    /// carries. The hold grows from 0 (worker busy under a quarter of the time: every batch is
    /// written at once) to this (worker busy 75 % of the time or more). 0 disables holding
    /// (docs/performance.md).
    #[arg(long, env = "TICKFAN_FLUSH_WINDOW_US", default_value_t = 5000)]
    pub flush_window_us: u64,

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
    /// connection with 1009, as soon as a frame's header announces it.
    #[arg(long, env = "TICKFAN_MAX_FRAME_BYTES", default_value_t = 64 << 10)]
    pub max_frame_bytes: usize,

    /// Take permessage-deflate (RFC 7692) offers: a client that offers it gets data messages
    /// compressed, each deflated once for every such client (docs/protocol.md, "Compression").
    /// Off by default: deflating costs the workers several µs per message of every channel a
    /// compressing client subscribes to (docs/performance.md, "Compression").
    #[arg(long, env = "TICKFAN_PERMESSAGE_DEFLATE")]
    pub permessage_deflate: bool,

    /// Bound, in bytes, on client input held in memory over all connections (frames still
    /// arriving, fragmented messages). A connection whose input would exceed it is closed with
    /// 1013 (try again later).
    #[arg(long, env = "TICKFAN_MAX_INBOUND_BYTES", default_value_t = 64 << 20)]
    pub max_inbound_bytes: usize,

    /// Client frames per second allowed per connection, of every kind (token bucket, burst of
    /// twice this): a request beyond it gets `rate_limited`, a ping or other frame is ignored,
    /// and a client that keeps sending through twice this many refusals is closed with 1008.
    #[arg(long, env = "TICKFAN_MAX_REQUESTS_PER_SEC", default_value_t = 50)]
    pub max_requests_per_sec: u32,

    /// Maximum concurrent client sockets: WebSocket connections, plain HTTP connections and
    /// those still in their handshake. More are answered 503 and closed. 0: as many as the
    /// open-file limit allows (its hard limit, which the gateway raises its soft limit to, less
    /// 256). A bound beyond the hard limit is a startup error that says how to raise it.
    #[arg(long, env = "TICKFAN_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Maximum concurrent sockets not (yet) upgraded to WebSocket: handshakes in progress and
    /// plain HTTP connections. More are answered 503 and closed.
    #[arg(long, env = "TICKFAN_MAX_HANDSHAKES", default_value_t = 1024)]
    pub max_handshakes: usize,

    /// Maximum concurrent sockets from one client address; more are answered 429. 0: no bound
    /// (the default, since behind a proxy every client has the proxy's address: name it with
    /// --trust-proxy, then the forwarded address counts).
    #[arg(long, env = "TICKFAN_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: u32,

    /// Maximum new sockets from one client address per --new-connections-window; more are
    /// answered 429 (Binance allows 300 per 5 minutes). 0: no bound.
    #[arg(long, env = "TICKFAN_MAX_NEW_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_new_connections_per_ip: u32,

    /// Seconds of the window --max-new-connections-per-ip counts in.
    #[arg(long, env = "TICKFAN_NEW_CONNECTIONS_WINDOW", default_value_t = 300.0)]
    pub new_connections_window: f64,

    /// Addresses of proxies (load balancers) in front of the gateway, comma-separated. Their
    /// sockets are not bounded per address; the client each WebSocket handshake is forwarded
    /// for (the last address of `X-Forwarded-For` that is not one of them) is.
    #[arg(long, env = "TICKFAN_TRUST_PROXY", value_delimiter = ',', value_name = "IP,…")]
    pub trust_proxy: Vec<std::net::IpAddr>,

    /// Connections from --trust-proxy addresses start with a PROXY protocol header (v1 or v2:
    /// HAProxy's `send-proxy`/`send-proxy-v2`, AWS NLB): the client it names is what the
    /// per-address bounds count. A trusted connection without one is closed.
    #[arg(long, env = "TICKFAN_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,

    /// Seconds a WebSocket connection may stay open; then it gets a `shutdown` notice and,
    /// some seconds later (a tenth of this, at most 30), a close with 1001, so clients
    /// reconnect and resume before it. Each connection's age is shortened by up to 5 % so
    /// that reconnections spread out. 0: no maximum.
    #[arg(long, env = "TICKFAN_MAX_CONNECTION_AGE", default_value_t = 0.0)]
    pub max_connection_age: f64,

    /// Seconds a graceful shutdown (SIGTERM, Ctrl-C) takes to close the connections: each
    /// client gets `{"op":"shutdown","in_ms":…,"reason":"server_shutdown"}` at once, then its
    /// close (1001) at its turn, spread over this window, so clients reconnect elsewhere and
    /// resume before it; meanwhile `/readyz` says draining and new connections get 503. A second
    /// signal stops at once. 0: close every connection at once.
    #[arg(long, env = "TICKFAN_DRAIN_SECS", default_value_t = 5.0)]
    pub drain_secs: f64,

    /// Seconds a new connection may take to send its complete HTTP request (upgrade or not)
    /// before it is closed, so idle or trickling sockets cannot pile up.
    #[arg(long, env = "TICKFAN_HANDSHAKE_TIMEOUT", default_value_t = 10.0)]
    pub handshake_timeout: f64,

    /// Price levels per side of each order book (`book.<SYM>` snapshots carry them all).
    #[arg(long, env = "TICKFAN_BOOK_DEPTH", default_value_t = 25)]
    pub book_depth: usize,

    /// Seconds of history kept for `resume`, on every channel (0 disables resume).
    #[arg(long, env = "TICKFAN_RESUME_SECS", default_value_t = 10.0)]
    pub resume_secs: f64,

    /// Bound, in bytes, on the resume history of all channels together; beyond it the oldest
    /// frames go first, whatever their channel (each frame counts its bytes + 96).
    #[arg(long, env = "TICKFAN_RESUME_BYTES", default_value_t = 128 << 20)]
    pub resume_bytes: usize,

    /// What happens to a client whose queue is full, per channel kind (trades, quotes, book
    /// with its forms, ticker, candles): `gap` (drop and send a gap notice), `conflate`
    /// (quotes, ticker, candles: only the newest; book: a fresh snapshot when it catches up)
    /// or `disconnect` (close 1008). Unlisted kinds keep their default.
    #[arg(
        long,
        env = "TICKFAN_SLOW_CONSUMER",
        default_value = "trades=gap,quotes=conflate,book=conflate,ticker=conflate,candles=conflate",
        value_parser = parse_policies
    )]
    pub slow_consumer: Policies,

    /// Bound, in bytes, on all connections' queues together. Beyond it, only connections with
    /// less than 64 KiB queued get more; the others get their slow-consumer policy.
    #[arg(long, env = "TICKFAN_MAX_QUEUED_BYTES", default_value_t = 256 << 20)]
    pub max_queued_bytes: usize,

    /// Seconds between WebSocket pings to each client (0 disables pings).
    #[arg(long, env = "TICKFAN_PING_INTERVAL", default_value_t = 15.0)]
    pub ping_interval: f64,

    /// Pings in a row a client may leave unanswered (no pong, no frame at all) before it is
    /// considered dead and disconnected.
    #[arg(long, env = "TICKFAN_PING_MISSES", default_value_t = 2)]
    pub ping_misses: u32,

    /// Seconds a connection may stay without any subscription before it is closed (0: never).
    #[arg(long, env = "TICKFAN_IDLE_TIMEOUT", default_value_t = 120.0)]
    pub idle_timeout: f64,

    /// A file of API keys that may connect, one per line: `KEY PATTERN[,PATTERN…]`, where a
    /// pattern is `*`, `KIND.*`, `*.SYMBOL`, `KIND.SYMBOL` or `sys.stats` (`#` starts a
    /// comment). With API keys or a JWT key configured, every WebSocket handshake must present
    /// a credential (`Authorization: Bearer …` or `?token=…`).
    #[arg(long, env = "TICKFAN_API_KEYS_FILE", value_name = "FILE")]
    pub api_keys: Option<std::path::PathBuf>,

    /// API keys given inline, in the format of --api-keys, lines separated by newlines or `;`
    /// (usually through the environment, to keep them out of `ps`).
    #[arg(long, env = "TICKFAN_API_KEYS", hide_env_values = true, value_name = "KEYS")]
    pub api_keys_inline: Option<String>,

    /// Accept JWTs signed with HS256 and this secret (at least 32 bytes). The token carries
    /// `exp` and `channels` (a list of patterns as for --api-keys); the connection is closed
    /// with 1008 when it expires.
    #[arg(long, env = "TICKFAN_JWT_SECRET", hide_env_values = true, value_name = "SECRET")]
    pub jwt_secret: Option<String>,

    /// Accept JWTs signed with the private half of this public key (PEM: Ed25519 for EdDSA,
    /// RSA for RS256).
    #[arg(long, env = "TICKFAN_JWT_PUBLIC_KEY", value_name = "PEM_FILE")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// Require this `iss` in JWTs.
    #[arg(long, env = "TICKFAN_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Require this `aud` in JWTs.
    #[arg(long, env = "TICKFAN_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// PEM certificate chain for TLS on the data port (`wss://`, `https://`), with --tls-key.
    #[arg(long, env = "TICKFAN_TLS_CERT", value_name = "PEM_FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "TICKFAN_TLS_KEY", value_name = "PEM_FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Browser origins allowed to open WebSocket connections, comma-separated (e.g.
    /// `https://app.example.com`); a handshake with another `Origin` header gets 403. Clients
    /// that send no `Origin` (programs, not browsers) are not affected. Empty: any origin.
    #[arg(long, env = "TICKFAN_ALLOWED_ORIGINS", value_delimiter = ',', value_name = "ORIGIN,…")]
    pub allowed_origins: Vec<String>,

    /// For tests of the gateway's fault handling: panic at this place (`fanout`: a worker's
    /// fan-out, at its first batch; `feed`: the feed thread, 0.3 s after start; `listener`: at
    /// the first accept; `request`: at the first client request).
    #[arg(long, hide = true, value_enum)]
    pub inject_panic: Option<PanicSite>,

    /// Log filter, e.g. `info` or `info,gateway=debug` (logs go to stderr). The NATS client's
    /// own messages are quiet below `warn` unless asked for (`async_nats=info`).
    #[arg(long, env = "RUST_LOG", default_value = "info,async_nats=warn")]
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
        if self.flush_window_us > 100_000 {
            return Err("--flush-window-us must be at most 100000 (0.1 s)".into());
        }
        if self.queue_bytes < 64 << 10 {
            return Err("--queue-bytes must be at least 65536".into());
        }
        if self.max_message_bytes < 256 || self.max_message_bytes > self.max_frame_bytes {
            return Err("--max-message-bytes must be >= 256 and <= --max-frame-bytes".into());
        }
        if self.max_frame_bytes > 1 << 30 {
            return Err("--max-frame-bytes must be at most 1 GiB".into());
        }
        if !(self.handshake_timeout.is_finite() && self.handshake_timeout > 0.0)
            || self.handshake_timeout > MAX_SECONDS
        {
            return Err(
                "--handshake-timeout must be a positive number of seconds, at most 1e9".into()
            );
        }
        if self.book_depth == 0 || self.book_depth > 1000 {
            return Err(format!("--book-depth must be 1..=1000, got {}", self.book_depth));
        }
        if !(self.resume_secs.is_finite() && self.resume_secs >= 0.0)
            || self.resume_secs > MAX_SECONDS
        {
            return Err("--resume-secs must be a number of seconds >= 0".into());
        }
        // Bounded, so that every duration made of them fits (a larger one would panic).
        let seconds = |x: f64| x.is_finite() && (0.0..=MAX_SECONDS).contains(&x);
        let nats = matches!(self.source, crate::source::SourceSpec::Nats(_));
        if (self.jetstream || !self.source_symbols.is_empty()) && !nats {
            return Err("--jetstream and --source-symbols read from NATS: use them with --source \
                 nats://HOST:PORT"
                .into());
        }
        if !seconds(self.replay_speed) || !seconds(self.stale_after) {
            return Err("--replay-speed and --stale-after must be numbers from 0 to 1e9".into());
        }
        if !seconds(self.ping_interval) || !seconds(self.idle_timeout) {
            return Err("--ping-interval and --idle-timeout must be seconds from 0 to 1e9".into());
        }
        if self.ping_misses == 0 {
            return Err("--ping-misses must be at least 1".into());
        }
        if self.max_queued_bytes < self.queue_bytes {
            return Err("--max-queued-bytes must be at least --queue-bytes".into());
        }
        if self.max_channels == 0 || self.max_requests_per_sec == 0 || self.max_handshakes == 0 {
            return Err(
                "--max-channels, --max-requests-per-sec and --max-handshakes must be > 0".into()
            );
        }
        if !(seconds(self.new_connections_window) && self.new_connections_window > 0.0) {
            return Err(
                "--new-connections-window must be a positive number of seconds, at most 1e9".into(),
            );
        }
        if !seconds(self.max_connection_age)
            || (self.max_connection_age > 0.0 && self.max_connection_age < 1.0)
        {
            return Err("--max-connection-age must be 0 (no maximum) or 1 to 1e9 seconds".into());
        }
        if !seconds(self.drain_secs) {
            return Err("--drain-secs must be 0 to 1e9 seconds".into());
        }
        if self.proxy_protocol && self.trust_proxy.is_empty() {
            return Err("--proxy-protocol reads the header of the proxies --trust-proxy names: \
                        name them"
                .into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("--tls-cert and --tls-key go together".into());
        }
        if self.jwt_secret.is_some() && self.jwt_public_key.is_some() {
            return Err(
                "give --jwt-secret (HS256) or --jwt-public-key (EdDSA, RS256), not both".into()
            );
        }
        Ok(())
    }

    /// The credentials clients must present, read from the files and values configured;
    /// `None` when auth is off.
    pub fn authenticator(
        &self,
    ) -> Result<Option<crate::auth::Authenticator>, crate::auth::ConfigError> {
        use crate::auth::ConfigError;
        let read = |flag: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| ConfigError::Read {
                flag,
                path: path.to_owned(),
                source,
            })
        };
        let mut keys = None;
        if let Some(path) = &self.api_keys {
            let text = read("--api-keys", path)?;
            keys = Some(String::from_utf8(text).map_err(|_| ConfigError::KeysNotText)?);
        }
        if let Some(inline) = &self.api_keys_inline {
            let inline = inline.replace(';', "\n");
            keys = Some(keys.map_or(inline.clone(), |k| k + "\n" + &inline));
        }
        let jwt = match (&self.jwt_secret, &self.jwt_public_key) {
            (Some(_), Some(_)) => return Err(ConfigError::TwoJwtKeys),
            (Some(secret), None) => Some(crate::auth::JwtKey::Secret(secret.clone().into_bytes())),
            (None, Some(path)) => {
                Some(crate::auth::JwtKey::PublicPem(read("--jwt-public-key", path)?))
            }
            (None, None) => None,
        };
        crate::auth::Authenticator::new(
            keys.as_deref(),
            jwt,
            self.jwt_issuer.as_deref(),
            self.jwt_audience.as_deref(),
        )
    }

    /// A configuration for tests and embedding: listens on `127.0.0.1:0`, defaults otherwise.
    pub fn for_tests() -> Config {
        Config::parse_from(["tickfan", "--listen", "127.0.0.1:0"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_flags_are_bounded_so_that_no_duration_overflows() {
        let err = |args: &[&str]| {
            let cfg = Config::parse_from([&["tickfan"], args].concat());
            cfg.validate().unwrap_err()
        };
        assert!(err(&["--max-connection-age", "1e30"]).contains("--max-connection-age"));
        assert!(err(&["--ping-interval", "1e12"]).contains("--ping-interval"));
        assert!(err(&["--handshake-timeout", "inf"]).contains("--handshake-timeout"));
        assert!(err(&["--new-connections-window", "0"]).contains("--new-connections-window"));
        assert!(Config::parse_from(["tickfan", "--max-connection-age", "86400"])
            .validate()
            .is_ok());
    }

    #[test]
    fn policies_parse_with_defaults_and_clear_errors() {
        let p = parse_policies("book=disconnect").unwrap();
        assert_eq!(p.get(Kind::Book), Policy::Disconnect);
        assert_eq!(p.get(Kind::Quotes), Policy::Conflate);
        assert_eq!(p.get(Kind::Trades), Policy::Gap);
        assert!(parse_policies("trades=conflate").unwrap_err().contains("cannot be conflated"));
        assert!(parse_policies("tickers=gap").unwrap_err().contains("unknown channel kind"));
        let p = parse_policies("candles=disconnect").unwrap();
        assert_eq!(p.get(Kind::Candles5m), Policy::Disconnect);
        assert_eq!(p.get(Kind::Ticker), Policy::Conflate);
        assert!(parse_policies("quotes=drop").unwrap_err().contains("unknown policy"));
        assert!(parse_policies("quotes").unwrap_err().contains("KIND=POLICY"));
    }
}
