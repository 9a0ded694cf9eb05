//! `bench compare`: the same workload against tickfan and the baselines in `bench/baselines/`
//! (uWebSockets.js, socket.io, ws, naive Rust), one server at a time, in one run.
//!
//! For every step (one server at one offered rate) it starts the server fresh — tickfan with
//! its embedded feed, a baseline with `feed-sim` piped into its stdin, both with the same seed,
//! symbols and rate and no bursts — pinned with `taskset` to the server CPUs, then runs `bench
//! run` as a child process pinned to the client CPUs. A rate *holds* when every connection
//! stays up, nothing is lost (no gap of any kind), p99 latency stays under the bound and at
//! least `min_delivery` of the expected messages arrive (a server that cannot keep up with its
//! stdin slows the feed down instead of dropping).
//!
//! Each server's limit is searched up a ladder of rates to the first that does not hold, then
//! by bisection; the search is repeated, and every figure reported as a median with its range,
//! saying which side (server or load client) ran out of CPU. Server CPU never includes the
//! feed's; the server's write syscalls are counted with `perf`. [`Scenario`]s name the
//! workloads, each run into its own directory.
//!
//! `servers.rs` starts (and pins) the servers, `sweep.rs` measures steps and searches for each
//! server's limit, `render.rs` writes the markdown, the ratio table and the plots,
//! `scenario.rs` holds the presets and the suite.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context};
use feed_sim::{Feed, SimConfig};
use serde::{Deserialize, Serialize};
use tickfan_proto::{ChannelId, ChannelSpec};

use crate::client::{streams_for, RandomSymbols};
use crate::defaults;
use crate::floor::{self, FloorConfig, FloorResult};

mod render;
mod scenario;
mod servers;
mod sweep;

pub use render::write_results;
pub use scenario::{compare_suite, rewrite_suite, write_suite, Overrides, Scenario, Suite};
use servers::NODE_PACKAGES;
pub use servers::{ensure_node_modules, start, Running, Server, FEED_THREAD};
pub use sweep::Step;

/// What to compare, and how.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompareConfig {
    /// The named workload this is (`None`: the one given by hand).
    #[serde(default)]
    pub scenario: Option<Scenario>,
    pub servers: Vec<Server>,
    /// The ladder of offered tick rates (ticks/s over all symbols), climbed in ascending order
    /// to the first that does not hold; bisection then narrows the limit down.
    pub rates: Vec<f64>,
    /// Bisection stops when the last rate held and the first failed are within this ratio.
    #[serde(default = "default_resolution")]
    pub resolution: f64,
    /// Times the whole search runs per server.
    #[serde(default = "default_repeats")]
    pub repeats: usize,
    pub conns: usize,
    /// Streams per connection; `{sym}` stands for each of the connection's `random_symbols`.
    pub streams: String,
    /// Symbols drawn per connection (seeded by `seed`) for the `{sym}` of `streams`.
    #[serde(default)]
    pub random_symbols: Option<usize>,
    pub symbols: usize,
    pub seed: u64,
    /// Measured seconds per step, after `warmup`.
    pub duration: f64,
    pub warmup: f64,
    /// A step holds only with p99 latency at most this.
    pub p99_bound_ms: f64,
    /// A step holds only if at least this share of the expected messages arrived.
    pub min_delivery: f64,
    /// `taskset -c` lists for the server (and its feed) and for the client; `None`: unpinned.
    pub server_cpus: Option<String>,
    pub client_cpus: Option<String>,
    /// Where `tickfan`, `feed-sim` and `naive-ws` are.
    pub bin_dir: PathBuf,
    /// Where the Node baselines are (`bench/baselines`, with `node_modules` above it).
    pub baselines_dir: PathBuf,
    /// Results directory: `compare.json`, `compare.md`, plots, per-step logs.
    pub out: PathBuf,
    /// Climb the whole ladder even after a rate failed.
    pub keep_going: bool,
    /// Count the server's write-family syscalls per step with `perf stat`.
    #[serde(default)]
    pub count_writes: bool,
    /// Measure the loopback floor (`bench floor`) at this many connections first, to report
    /// each server's CPU beyond what its writes cost there.
    #[serde(default)]
    pub floor: bool,
    /// Feed tickfan exactly as the baselines: `feed-sim` piped into `tickfan --source stdin`
    /// (its CPU then the feed's, and tickfan's parsing of each line its server CPU), instead of
    /// its embedded feed.
    #[serde(default)]
    pub tickfan_stdin: bool,
}

fn default_resolution() -> f64 {
    1.25
}

fn default_repeats() -> usize {
    1
}

impl CompareConfig {
    /// Every server, the default sweep, 100 connections on `trades.*,quotes.*`, unpinned, with
    /// the binaries in `bin_dir` and the Node baselines next to this crate.
    pub fn new(bin_dir: impl Into<PathBuf>) -> CompareConfig {
        CompareConfig {
            scenario: None,
            servers: vec![
                Server::Tickfan,
                Server::Uws,
                Server::Socketio,
                Server::Ws,
                Server::Naive,
                Server::NaiveStrong,
            ],
            rates: vec![500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0, 32000.0, 64000.0, 128000.0],
            resolution: default_resolution(),
            repeats: 3,
            conns: defaults::CONNS,
            streams: "trades.*,quotes.*".into(),
            random_symbols: None,
            symbols: defaults::SYMBOLS,
            seed: defaults::SEED,
            duration: 5.0,
            warmup: defaults::WARMUP_SECS,
            p99_bound_ms: 50.0,
            min_delivery: 0.95,
            server_cpus: None,
            client_cpus: None,
            bin_dir: bin_dir.into(),
            baselines_dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/baselines")),
            out: PathBuf::from("target/bench-compare"),
            keep_going: false,
            count_writes: true,
            floor: true,
            tickfan_stdin: false,
        }
    }
}

/// A whole comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    pub config: CompareConfig,
    /// CPU model and core count.
    pub machine: String,
    /// Share of the feed's ticks that one connection's streams select.
    pub stream_share: f64,
    pub steps: Vec<Step>,
    /// The loopback floor measured before the steps, if it was.
    #[serde(default)]
    pub floor: Option<FloorResult>,
}

/// Runs the comparison and writes its results under `cfg.out`.
pub fn compare(cfg: CompareConfig) -> anyhow::Result<Comparison> {
    preflight(&cfg)?;
    let stream_share = stream_share(&cfg)?;
    std::fs::create_dir_all(cfg.out.join("logs"))?;
    std::fs::create_dir_all(cfg.out.join("runs"))?;
    let floor = if cfg.floor { measure_floor(&cfg) } else { None };
    let steps = sweep::sweep(&cfg, stream_share);
    let cmp = Comparison { machine: machine(), stream_share, steps, floor, config: cfg };
    write_results(&cmp)?;
    Ok(cmp)
}

/// The loopback floor at the comparison's number of connections (as many as the open-files
/// limit allows: the floor holds both ends), writer on the server's first CPU and reader on the
/// client's: k = 1 to 16 frames per write in a tight loop, then one frame per `sendmsg` paced
/// at [`floor::COMPARE_PACES`]. `None`, said on stderr, if it cannot be measured; without the
/// paced points (said too) if only they cannot.
fn measure_floor(cfg: &CompareConfig) -> Option<FloorResult> {
    let first_cpu = |cpus: &Option<String>| -> Option<usize> {
        cpus.as_deref()?.split([',', '-']).next()?.trim().parse().ok()
    };
    let conns = floor::conns_within_limit(cfg.conns);
    let fc = FloorConfig {
        conns: vec![conns],
        batches: vec![1, 2, 4, 8, 16],
        duration: std::time::Duration::from_secs(1),
        writer_cpu: first_cpu(&cfg.server_cpus),
        reader_cpu: first_cpu(&cfg.client_cpus),
        submit: vec![floor::Submit::Writev, floor::Submit::Sendmsg],
        paces: vec![0.0],
    };
    eprintln!("bench compare: measuring the loopback floor at {conns} connections");
    let mut tight = match floor::measure(&fc) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("bench compare: loopback floor not measured: {e:#}");
            return None;
        }
    };
    let paced = FloorConfig {
        batches: vec![1],
        submit: vec![floor::Submit::Sendmsg],
        paces: floor::COMPARE_PACES.to_vec(),
        ..fc
    };
    match floor::measure(&paced) {
        Ok(f) => tight.points.extend(f.points),
        Err(e) => eprintln!("bench compare: paced loopback floor not measured: {e:#}"),
    }
    Some(tight)
}

/// Checks that everything `cfg` needs is there before anything runs.
fn preflight(cfg: &CompareConfig) -> anyhow::Result<()> {
    if cfg.servers.is_empty() || cfg.rates.is_empty() {
        bail!("--servers and --rates must not be empty");
    }
    if cfg.rates.iter().any(|r| r.is_nan() || *r <= 0.0) {
        bail!("every rate must be positive");
    }
    if cfg.resolution.is_nan() || cfg.resolution <= 1.0 || cfg.repeats == 0 {
        bail!("--resolution must be above 1 and --repeats at least 1");
    }
    // Every connection is a file descriptor of the client and of the server, which inherit
    // this process's limit (raised to the hard one by `bench`).
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        if cfg.conns as u64 + 64 > soft {
            bail!(
                "{} connections need about {} open files, but processes started here may open \
                 {soft}; raise the hard limit (e.g. `ulimit -Hn {}` as root)",
                cfg.conns,
                cfg.conns + 64,
                cfg.conns + 1024
            );
        }
    }
    let build_hint = "build them with `cargo build --release -p gateway -p feed-sim -p naive-ws`";
    let needed = [
        ("tickfan", cfg.servers.contains(&Server::Tickfan)),
        ("naive-ws", cfg.servers.iter().any(|s| matches!(s, Server::Naive | Server::NaiveStrong))),
        // Every baseline is fed by feed-sim through a pipe.
        ("feed-sim", cfg.servers.iter().any(|s| *s != Server::Tickfan)),
    ];
    for (bin, needed) in needed {
        if needed && !cfg.bin_dir.join(bin).is_file() {
            bail!(
                "{} not found; {build_hint} (or pass --bin-dir)",
                cfg.bin_dir.join(bin).display()
            );
        }
    }
    if cfg.servers.iter().any(|s| s.script().is_some()) {
        let modules = cfg.baselines_dir.join("../../node_modules");
        if !NODE_PACKAGES.iter().all(|p| modules.join(p).is_dir()) {
            bail!("the Node baselines need their packages: run `npm ci` at the repository root");
        }
        let node = Command::new("node").arg("--version").output();
        if !node.is_ok_and(|o| o.status.success()) {
            bail!("`node` (Node.js 20) is needed for the socket.io, ws and uWS.js baselines");
        }
    }
    for cpus in [&cfg.server_cpus, &cfg.client_cpus].into_iter().flatten() {
        let ok = Command::new("taskset").args(["-c", cpus, "true"]).status();
        if !ok.is_ok_and(|s| s.success()) {
            bail!("`taskset -c {cpus}` does not work here; pass other CPUs or --no-pin");
        }
    }
    Ok(())
}

/// Share of the feed's ticks that one connection's streams select, on average over the
/// connections (they differ with `random_symbols`), from 200,000 simulated ticks (the mix of
/// symbols and kinds does not depend on the rate).
pub fn stream_share(cfg: &CompareConfig) -> anyhow::Result<f64> {
    let sim = SimConfig {
        symbols: cfg.symbols,
        seed: cfg.seed,
        burst_every_s: 0.0,
        ..SimConfig::default()
    };
    let mut feed = Feed::try_new(sim).map_err(|e| anyhow!("feed settings: {e}"))?;
    let table = feed.symbols().clone();
    const N: u32 = 200_000;
    let mut per_channel = vec![0u32; table.channel_count()];
    for _ in 0..N {
        per_channel[feed.next_tick_virtual().channel().index()] += 1;
    }
    let random = cfg
        .random_symbols
        .map(|k| RandomSymbols::from_feed(k, cfg.symbols, cfg.seed))
        .transpose()?;
    let mut total = 0.0;
    for conn in 0..cfg.conns.max(1) {
        let streams = streams_for(&cfg.streams, conn, random.as_ref());
        let specs = streams
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| table.parse_channel(s).map_err(|e| anyhow!("stream {s:?}: {e:?}")))
            .collect::<anyhow::Result<Vec<ChannelSpec>>>()?;
        let matching: u32 = per_channel
            .iter()
            .enumerate()
            .filter(|&(i, _)| {
                let ch = ChannelId(i as u32);
                specs.iter().any(|spec| match *spec {
                    ChannelSpec::Exact(id) => id == ch,
                    ChannelSpec::Wildcard(kind) => kind == ch.kind(),
                })
            })
            .map(|(_, &n)| n)
            .sum();
        total += f64::from(matching) / f64::from(N);
        if random.is_none() {
            return Ok(total);
        }
    }
    Ok(total / cfg.conns.max(1) as f64)
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split(':').nth(1)))
        .map_or("unknown CPU".to_owned(), |m| m.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores visible")
}

/// Raises this process's soft limit on open files to its hard limit, for itself and for the
/// servers and clients it starts (they inherit it): 10,000 connections need 10,000 files on
/// each side. Returns the new soft limit.
pub fn raise_open_files_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// Reads a comparison written by [`compare`] (to re-render its markdown and plots).
pub fn load(path: &Path) -> anyhow::Result<Comparison> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a comparison", path.display()))
}

/// Reads what `bench compare` wrote at the top of its results: a suite of scenarios, or (from
/// a scenario's directory, or an older run) one comparison, as a suite of one.
pub fn load_suite(path: &Path) -> anyhow::Result<Suite> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Ok(suite) = serde_json::from_str::<Suite>(&text) {
        return Ok(suite);
    }
    let one = serde_json::from_str(&text)
        .with_context(|| format!("{} is neither a suite nor a comparison", path.display()))?;
    Ok(Suite { scenarios: vec![one] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_defaults_are_the_feeds() {
        let sim = SimConfig::default();
        assert_eq!((defaults::SYMBOLS, defaults::SEED), (sim.symbols, sim.seed));
    }

    #[test]
    fn stream_share_follows_the_specs() {
        let share = |streams: &str, random: Option<usize>| {
            let cfg = CompareConfig {
                symbols: 20,
                conns: 10,
                streams: streams.into(),
                random_symbols: random,
                ..CompareConfig::new("/nonexistent")
            };
            stream_share(&cfg)
        };
        assert_eq!(share("trades.*,quotes.*,book.*", None).unwrap(), 1.0);
        let trades = share("trades.*", None).unwrap();
        let one = share("trades.BTC-USD", None).unwrap();
        assert!(0.0 < one && one < trades && trades < 1.0, "{one} {trades}");
        // Overlapping specs count a tick once.
        assert_eq!(share("trades.*,trades.BTC-USD", None).unwrap(), trades);
        assert!(share("nope.*", None).is_err());
        // All 20 symbols drawn: every connection sees every trade.
        assert!((share("trades.{sym}", Some(20)).unwrap() - trades).abs() < 1e-12);
        let some = share("trades.{sym}", Some(3)).unwrap();
        assert!(0.0 < some && some < trades, "{some}");
    }
}
