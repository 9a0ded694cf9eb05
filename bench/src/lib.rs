//! tickfan's load harness (DESIGN §5): opens many real WebSocket connections, checks every
//! channel's `seq` continuity on every connection, records end-to-end latency (receive time −
//! `ts`) in HDR histograms, and reports delivered messages per second and per server
//! CPU-second.
//!
//! What it is not (yet): the comparison runner against socket.io / ws / naive Rust baselines,
//! plots and progress bars — issue #3 builds those on this client.

pub mod client;
pub mod report;
pub mod scan;
pub mod seq;

pub use client::{run, RunConfig};
pub use report::Report;
