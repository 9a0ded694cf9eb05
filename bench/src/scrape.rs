//! `bench run --metrics-url`: scrapes the gateway's Prometheus endpoint when measuring starts
//! and when it ends, and turns the difference of its internal-latency histogram into
//! percentiles, to put beside the end-to-end latency the client measured.

use std::net::SocketAddr;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The gateway's histogram of tick `ts` → frame handed to the sockets.
pub const INTERNAL_LATENCY: &str = "tickfan_internal_latency_seconds";

/// One scrape of a Prometheus histogram: cumulative `(upper bound in seconds, count)` pairs
/// in ascending order (the last one is `+Inf`), and the sum of the samples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets {
    pub cumulative: Vec<(f64, u64)>,
    pub sum: f64,
}

impl Buckets {
    /// Finds histogram `name` in a scrape in the Prometheus text format.
    pub fn parse(text: &str, name: &str) -> Option<Buckets> {
        let bucket = format!("{name}_bucket{{le=\"");
        let sum = format!("{name}_sum ");
        let mut b = Buckets::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(&bucket) {
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                b.cumulative.push((le, count.trim().parse::<f64>().ok()? as u64));
            } else if let Some(v) = line.strip_prefix(&sum) {
                b.sum = v.trim().parse().ok()?;
            }
        }
        b.cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
        (!b.cumulative.is_empty()).then_some(b)
    }

    /// What happened between `earlier` and `self` (a later scrape of the same histogram).
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        let cumulative = self
            .cumulative
            .iter()
            .map(|&(le, n)| {
                let before = earlier.cumulative.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
                (le, n.saturating_sub(before))
            })
            .collect();
        Buckets { cumulative, sum: self.sum - earlier.sum }
    }

    pub fn count(&self) -> u64 {
        self.cumulative.last().map_or(0, |b| b.1)
    }

    /// Quantile `q` in seconds, interpolated linearly inside its bucket as PromQL's
    /// `histogram_quantile` does (a quantile in the `+Inf` bucket reads as the highest bound).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let (mut lower, mut below) = (0.0, 0u64);
        for &(le, n) in &self.cumulative {
            if n as f64 >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let inside = (n - below) as f64;
                let fraction = if inside > 0.0 { (rank - below as f64) / inside } else { 1.0 };
                return Some(lower + (le - lower) * fraction);
            }
            (lower, below) = (le, n);
        }
        Some(lower)
    }
}

/// The gateway's own view of latency over the measured window.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServerLatency {
    /// Ticks fanned out in the window (one sample per tick per worker).
    pub samples: u64,
    /// Percentiles in µs, interpolated within Prometheus buckets (coarse: 50 µs … 5 s).
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub mean_us: f64,
}

impl ServerLatency {
    pub fn from_window(start: &Buckets, end: &Buckets) -> Option<ServerLatency> {
        let d = end.since(start);
        let n = d.count();
        let us = |q: f64| d.quantile(q).map(|s| s * 1e6);
        Some(ServerLatency {
            samples: n,
            p50_us: us(0.5)?,
            p99_us: us(0.99)?,
            p999_us: us(0.999)?,
            mean_us: d.sum / n as f64 * 1e6,
        })
    }
}

/// GETs an `http://host:port/path` URL (plain HTTP/1.0, the classic text format) and returns
/// the body.
pub async fn get(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("http://").context("--metrics-url must be an http:// URL")?;
    let (authority, path) =
        rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let addr: SocketAddr = tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to no address"))?;
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr} for metrics"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes()).await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    let (head, body) = resp.split_once("\r\n\r\n").context("not an HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("{url} answered {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// Scrapes `url` and returns its internal-latency histogram.
pub async fn internal_latency(url: &str) -> anyhow::Result<Buckets> {
    let body = get(url).await?;
    Buckets::parse(&body, INTERNAL_LATENCY)
        .with_context(|| format!("{url} has no {INTERNAL_LATENCY} histogram"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# TYPE tickfan_internal_latency_seconds histogram\n\
        tickfan_internal_latency_seconds_bucket{le=\"0.0001\"} 10\n\
        tickfan_internal_latency_seconds_bucket{le=\"0.001\"} 100\n\
        tickfan_internal_latency_seconds_bucket{le=\"+Inf\"} 101\n\
        tickfan_internal_latency_seconds_sum 0.05\n\
        tickfan_internal_latency_seconds_count 101\n";

    #[test]
    fn parses_and_interpolates_like_histogram_quantile() {
        let b = Buckets::parse(SCRAPE, INTERNAL_LATENCY).unwrap();
        assert_eq!(b.count(), 101);
        assert_eq!(b.cumulative[0], (0.0001, 10));
        // rank 50.5 is 40.5 of the 90 samples into (100 µs, 1 ms].
        let p50 = b.quantile(0.5).unwrap();
        assert!((p50 - (0.0001 + 0.0009 * 40.5 / 90.0)).abs() < 1e-12, "{p50}");
        // In the +Inf bucket: the highest finite bound.
        assert_eq!(b.quantile(1.0), Some(0.001));
        assert!(Buckets::parse("nothing here", INTERNAL_LATENCY).is_none());
    }

    #[test]
    fn a_window_is_the_difference_of_two_scrapes() {
        let start = Buckets::parse(SCRAPE, INTERNAL_LATENCY).unwrap();
        let later = SCRAPE.replace("} 10\n", "} 30\n").replace("} 100\n", "} 120\n");
        let later = later.replace("} 101\n", "} 121\n").replace("sum 0.05", "sum 0.06");
        let end = Buckets::parse(&later, INTERNAL_LATENCY).unwrap();
        let w = ServerLatency::from_window(&start, &end).unwrap();
        assert_eq!(w.samples, 20);
        assert!(w.p50_us <= 100.0 && (w.mean_us - 500.0).abs() < 1e-6, "{w:?}");
    }
}
