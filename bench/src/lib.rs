//! tickfan's load harness (docs/benchmarks.md): opens many real WebSocket connections, checks every
//! channel's `seq` continuity on every connection, records end-to-end latency (receive time −
//! `ts`) in HDR histograms, and reports delivered messages per second and per server
//! CPU-second ([`client`], `bench run`). [`compare`] (`bench compare`) runs the same workload
//! against tickfan and the baselines in `bench/baselines/` and reports the ratios; [`plot`]
//! draws the results.

pub mod client;
pub mod compare;
pub mod floor;
pub mod plot;
pub mod report;
pub mod scan;
pub mod scrape;
pub mod seq;
pub mod wire;
pub mod writes;

pub use client::{run, RunConfig};

/// Defaults that `bench run` and `bench compare` share where a setting means the same to both.
pub mod defaults {
    /// Connections (per step, for `bench compare`).
    pub const CONNS: usize = 100;
    /// Symbols of the feed (the gateway's and `feed-sim`'s default), to draw from.
    pub const SYMBOLS: usize = 50;
    /// Seed of the feed and of the per-connection symbol draw.
    pub const SEED: u64 = 1;
    /// Seconds between the last connect and the start of measuring.
    pub const WARMUP_SECS: f64 = 2.0;
}
pub use report::Report;
