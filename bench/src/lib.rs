//! tickfan's load harness (DESIGN §5): opens many real WebSocket connections, checks every
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

pub use client::{run, RunConfig};
pub use report::Report;
