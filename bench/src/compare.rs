//! `bench compare`: the same workload against tickfan and the baselines in `bench/baselines/`
//! (uWebSockets.js, socket.io, ws, naive Rust), one server at a time, in one run.
//!
//! For every server and every offered rate (ascending) it starts the server fresh — tickfan
//! with its embedded feed, a baseline with `feed-sim` piped into its stdin, both with the same
//! seed, symbols and rate and no bursts — pinned with `taskset` to the server CPUs, then runs
//! `bench run` as a child process pinned to the client CPUs. A rate *holds* when every
//! connection stays up, nothing is lost (no gap of any kind), p99 latency stays under the bound
//! and at least `min_delivery` of the expected messages arrive (a server that cannot keep up
//! with its stdin slows the feed down instead of dropping). The highest rate that holds is the
//! server's saturation point. The sweep of a server stops at its first rate that does not hold.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use feed_sim::{Feed, SimConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tickfan_proto::{ChannelId, ChannelSpec};

use crate::client::{streams_for, Protocol, RandomSymbols};
use crate::plot::{self, Chart, Series};
use crate::report::{rss_bytes, Report};

/// The servers compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Server {
    /// This project's gateway, with its embedded feed.
    Tickfan,
    /// Node socket.io 4, default settings, `io.to(rooms).emit` per tick.
    Socketio,
    /// Node `ws`, `JSON.stringify` once per tick, `send` to each subscriber.
    Ws,
    /// uWebSockets.js: a topic per channel spec, `app.publish` per matching topic.
    Uws,
    /// tokio-tungstenite + `tokio::sync::broadcast`, serialised per client.
    Naive,
}

impl Server {
    pub fn label(self) -> &'static str {
        match self {
            Server::Tickfan => "tickfan",
            Server::Socketio => "socket.io",
            Server::Ws => "ws (Node)",
            Server::Uws => "uWS.js",
            Server::Naive => "naive Rust",
        }
    }

    /// The protocol the bench client speaks to it.
    pub fn protocol(self) -> Protocol {
        match self {
            Server::Socketio => Protocol::Socketio,
            _ => Protocol::Tickfan,
        }
    }

    /// The Node script of a Node baseline, in `bench/baselines`.
    pub fn script(self) -> Option<&'static str> {
        match self {
            Server::Socketio => Some("socketio-server.js"),
            Server::Ws => Some("ws-server.js"),
            Server::Uws => Some("uws-server.js"),
            Server::Tickfan | Server::Naive => None,
        }
    }

    /// The path of its WebSocket endpoint.
    pub fn path(self) -> &'static str {
        match self {
            Server::Socketio => "/",
            _ => "/ws",
        }
    }
}

/// What to compare, and how.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompareConfig {
    pub servers: Vec<Server>,
    /// Offered tick rates (ticks/s over all symbols), swept in ascending order.
    pub rates: Vec<f64>,
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
    /// Sweep every rate even after one failed.
    pub keep_going: bool,
}

impl CompareConfig {
    /// Every server, the default sweep, 100 connections on `trades.*,quotes.*`, unpinned, with
    /// the binaries in `bin_dir` and the Node baselines next to this crate.
    pub fn new(bin_dir: impl Into<PathBuf>) -> CompareConfig {
        CompareConfig {
            servers: vec![
                Server::Tickfan,
                Server::Uws,
                Server::Socketio,
                Server::Ws,
                Server::Naive,
            ],
            rates: vec![500.0, 1000.0, 2000.0, 4000.0, 8000.0, 16000.0, 32000.0, 64000.0, 128000.0],
            conns: 100,
            streams: "trades.*,quotes.*".into(),
            random_symbols: None,
            symbols: 50,
            seed: 1,
            duration: 5.0,
            warmup: 2.0,
            p99_bound_ms: 50.0,
            min_delivery: 0.95,
            server_cpus: None,
            client_cpus: None,
            bin_dir: bin_dir.into(),
            baselines_dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/baselines")),
            out: PathBuf::from("target/bench-compare"),
            keep_going: false,
        }
    }
}

/// One server at one rate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    pub server: Server,
    pub rate: f64,
    /// Messages per second all connections together should receive at this rate.
    pub expected_msgs_per_sec: f64,
    pub holds: bool,
    /// Why the step does not hold.
    pub verdict: String,
    /// The client used ≥ 90% of its CPUs: a failure here may be the client's, not the
    /// server's, so the server's saturation point is a lower bound.
    #[serde(default)]
    pub client_bound: bool,
    /// Server (+ feed) resident memory before any client connected.
    pub idle_rss_bytes: Option<u64>,
    pub report: Option<Report>,
}

impl Step {
    /// Server CPU-seconds per million delivered messages.
    pub fn cpu_per_million(&self) -> Option<f64> {
        self.report.as_ref()?.msgs_per_server_cpu_sec.filter(|&m| m > 0.0).map(|m| 1e6 / m)
    }

    /// Resident memory the connections added, per connection.
    pub fn rss_per_conn(&self) -> Option<f64> {
        let r = self.report.as_ref()?;
        let (loaded, idle) = (r.server_rss_bytes?, self.idle_rss_bytes?);
        Some(loaded.saturating_sub(idle) as f64 / r.connected.max(1) as f64)
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
}

/// Runs the comparison and writes its results under `cfg.out`.
pub fn compare(cfg: CompareConfig) -> anyhow::Result<Comparison> {
    preflight(&cfg)?;
    let stream_share = stream_share(&cfg)?;
    std::fs::create_dir_all(cfg.out.join("logs"))?;
    std::fs::create_dir_all(cfg.out.join("runs"))?;
    let total = (cfg.servers.len() * cfg.rates.len()) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps, {elapsed} {wide_msg}")
            .expect("constant template"),
    );
    let mut steps = Vec::new();
    for &server in &cfg.servers {
        for &rate in &cfg.rates {
            bar.set_message(format!("{} at {} ticks/s", server.label(), plot::human(rate)));
            let step = run_step(&cfg, server, rate, stream_share);
            bar.inc(1);
            // Step lines go to stderr whether or not the bar is drawn (stderr not a terminal).
            bar.suspend(|| eprintln!("{}", step_line(&step)));
            let holds = step.holds;
            steps.push(step);
            if !holds && !cfg.keep_going {
                bar.inc((cfg.rates.iter().filter(|&&r| r > rate).count()) as u64);
                break;
            }
        }
    }
    bar.finish_and_clear();
    let cmp = Comparison { machine: machine(), stream_share, steps, config: cfg };
    write_results(&cmp)?;
    Ok(cmp)
}

fn preflight(cfg: &CompareConfig) -> anyhow::Result<()> {
    if cfg.servers.is_empty() || cfg.rates.is_empty() {
        bail!("--servers and --rates must not be empty");
    }
    if cfg.rates.iter().any(|r| r.is_nan() || *r <= 0.0) {
        bail!("every rate must be positive");
    }
    let build_hint = "build them with `cargo build --release -p gateway -p feed-sim -p naive-ws`";
    let needed = [
        ("tickfan", cfg.servers.contains(&Server::Tickfan)),
        ("naive-ws", cfg.servers.contains(&Server::Naive)),
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

/// The npm packages of the Node baselines (in the root `package.json`).
const NODE_PACKAGES: [&str; 3] = ["socket.io", "ws", "@trufflesuite/uws-js-unofficial"];

/// The repository's `node_modules`, after `npm ci` if a package the tests and baselines need
/// (wscat, socket.io, ws, uWS.js) is missing. Runs `npm ci` at most once per process.
pub fn ensure_node_modules(repo_root: &Path) -> anyhow::Result<PathBuf> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let modules = repo_root.join("node_modules");
    let complete = || NODE_PACKAGES.iter().chain([&".bin/wscat"]).all(|p| modules.join(p).exists());
    if !complete() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(repo_root)
            .status()
            .context("cannot run npm (Node.js 20 is needed)")?;
        if !status.success() || !complete() {
            bail!("`npm ci` at {} failed ({status})", repo_root.display());
        }
    }
    Ok(modules)
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

/// A server started by [`start`] (and the feed piped into it); killed when dropped.
#[derive(Debug)]
pub struct Running {
    children: Vec<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Running {
    /// The server's PID, then its feed's.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `program` under `taskset -c cpus`, or bare.
fn pinned(cpus: &Option<String>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(cpus).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn cpu_count(cpus: &Option<String>) -> usize {
    // "0", "0,1", "2-3": count the CPUs in a taskset list.
    cpus.as_deref().map_or(0, |list| {
        list.split(',')
            .map(|part| match part.split_once('-') {
                Some((a, b)) => {
                    b.trim()
                        .parse::<usize>()
                        .unwrap_or(0)
                        .saturating_sub(a.trim().parse().unwrap_or(0))
                        + 1
                }
                None => 1,
            })
            .sum()
    })
}

/// Starts `server` fed at `rate` ticks/s (pinned to `cfg.server_cpus`), its stderr to `log`,
/// and waits until it says where it listens.
pub fn start(
    cfg: &CompareConfig,
    server: Server,
    rate: f64,
    log: &File,
) -> anyhow::Result<Running> {
    let feed_args = |cmd: &mut Command| {
        cmd.args(["--symbols", &cfg.symbols.to_string(), "--rate", &rate.to_string()]).args([
            "--seed",
            &cfg.seed.to_string(),
            "--burst-every",
            "0",
        ]);
    };
    let mut children = Vec::new();
    let mut cmd = match server {
        Server::Tickfan => {
            let mut cmd = pinned(&cfg.server_cpus, cfg.bin_dir.join("tickfan"));
            feed_args(&mut cmd);
            cmd.args(["--listen", "127.0.0.1:0", "--log", "warn"]);
            let workers = cpu_count(&cfg.server_cpus);
            if workers > 0 {
                cmd.args(["--workers", &workers.to_string()]);
            }
            cmd.stdin(Stdio::null());
            cmd
        }
        _ => {
            let mut feed = pinned(&cfg.server_cpus, cfg.bin_dir.join("feed-sim"));
            feed_args(&mut feed);
            let mut feed = feed
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log.try_clone()?)
                .spawn()
                .context("cannot start feed-sim")?;
            let pipe = feed.stdout.take().expect("piped");
            children.push(feed);
            let mut cmd = match server.script() {
                None => {
                    let mut cmd = pinned(&cfg.server_cpus, cfg.bin_dir.join("naive-ws"));
                    cmd.args(["--listen", "127.0.0.1:0"]);
                    cmd
                }
                Some(script) => {
                    let mut cmd = pinned(&cfg.server_cpus, "node");
                    cmd.arg(cfg.baselines_dir.join(script)).args(["--port", "0"]);
                    cmd
                }
            };
            cmd.stdin(pipe);
            cmd
        }
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(log.try_clone()?)
        .spawn()
        .with_context(|| format!("cannot start the {} server", server.label()))?;
    let stdout = child.stdout.take().expect("piped");
    children.insert(0, child);
    let mut running = Running { children, addr: "0.0.0.0:0".parse().expect("constant") };
    // The server says where it listens on stdout; keep draining it afterwards.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("").parse::<SocketAddr>();
                let _ = tx.send(addr);
            }
        }
    });
    running.addr = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| anyhow!("the {} server did not say where it listens", server.label()))?
        .context("unreadable listening address")?;
    Ok(running)
}

fn run_step(cfg: &CompareConfig, server: Server, rate: f64, share: f64) -> Step {
    let expected = rate * share * cfg.conns as f64;
    let name = format!("{}-{}", format!("{server:?}").to_lowercase(), rate);
    let mut step = Step {
        server,
        rate,
        expected_msgs_per_sec: expected,
        holds: false,
        verdict: String::new(),
        client_bound: false,
        idle_rss_bytes: None,
        report: None,
    };
    match measure(cfg, server, rate, &name, &mut step) {
        Ok(report) => {
            step.verdict = verdict(cfg, &report, rate, share);
            step.holds = step.verdict == "holds";
            let client_cpus = cpu_count(&cfg.client_cpus).max(1) as f64;
            step.client_bound = report.client_cpu_cores.is_some_and(|c| c >= 0.9 * client_cpus);
            if step.client_bound && !step.holds {
                step.verdict.push_str(" (client saturated)");
            }
            step.report = Some(report);
        }
        Err(e) => {
            step.verdict = format!("error: {e:#} (see {}/logs/{name}.log)", cfg.out.display())
        }
    }
    step
}

fn measure(
    cfg: &CompareConfig,
    server: Server,
    rate: f64,
    name: &str,
    step: &mut Step,
) -> anyhow::Result<Report> {
    let log = File::create(cfg.out.join("logs").join(format!("{name}.log")))?;
    let running = start(cfg, server, rate, &log)?;
    // Let the server and its feed settle before reading their idle memory.
    std::thread::sleep(Duration::from_millis(500));
    let pids = running.pids();
    step.idle_rss_bytes = pids.iter().map(|&p| rss_bytes(p)).sum();
    let json = cfg.out.join("runs").join(format!("{name}.json"));
    let _ = std::fs::remove_file(&json);
    let mut client = pinned(&cfg.client_cpus, std::env::current_exe().context("own executable")?);
    client
        .arg("run")
        .args(["--target", &format!("ws://{}{}", running.addr, server.path())])
        .args(["--protocol", &format!("{:?}", server.protocol()).to_lowercase()])
        .args(["--conns", &cfg.conns.to_string(), "--streams", &cfg.streams])
        .args(["--symbols", &cfg.symbols.to_string(), "--seed", &cfg.seed.to_string()])
        .args(["--duration", &cfg.duration.to_string(), "--warmup", &cfg.warmup.to_string()])
        .arg("--json")
        .arg(&json);
    if server == Server::Tickfan {
        client.args(["--metrics-url", &format!("http://{}/metrics", running.addr)]);
    }
    if let Some(k) = cfg.random_symbols {
        client.args(["--random-symbols", &k.to_string()]);
    }
    let threads = cpu_count(&cfg.client_cpus);
    if threads > 0 {
        client.args(["--threads", &threads.to_string()]);
    }
    for pid in &pids {
        client.args(["--server-pid", &pid.to_string()]);
    }
    let status = client
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .status()
        .context("cannot start the bench client")?;
    drop(running);
    let text = std::fs::read_to_string(&json)
        .with_context(|| format!("the client wrote no report (exit status {status})"))?;
    serde_json::from_str(&text).context("unreadable client report")
}

/// Whether a step holds, or why not. `share` is the share of the feed's ticks one connection's
/// streams select.
fn verdict(cfg: &CompareConfig, r: &Report, rate: f64, share: f64) -> String {
    let mut why = Vec::new();
    if r.connected < r.conns || r.ended_early > 0 {
        why.push(format!("{} of {} connected, {} dropped", r.connected, r.conns, r.ended_early));
    }
    if r.undeclared_gaps > 0 {
        why.push(format!("{} messages silently lost", r.undeclared_missing.max(r.undeclared_gaps)));
    }
    if r.declared_gaps > 0 {
        why.push(format!("{} declared gaps", r.declared_gaps));
    }
    if r.latency_us.p99 as f64 > cfg.p99_bound_ms * 1000.0 {
        why.push(format!("p99 {} > {} ms", ms(r.latency_us.p99), cfg.p99_bound_ms));
    }
    // Which ticks fall in a few seconds is a sample: at low rates the count a connection
    // should see varies by several percent from rate × share. Allow 5 standard deviations
    // of that binomial count on top of `min_delivery`.
    let ticks = rate * r.measured_seconds;
    let expected = ticks * share;
    let sigma = (ticks * share * (1.0 - share)).sqrt();
    let per_conn = r.msgs as f64 / r.connected.max(1) as f64;
    if per_conn < cfg.min_delivery * expected - 5.0 * sigma {
        why.push(format!("delivered {:.0}% of expected", 100.0 * per_conn / expected.max(1.0)));
    }
    if why.is_empty() {
        "holds".into()
    } else {
        why.join("; ")
    }
}

fn ms(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0}", us as f64 / 1000.0)
    } else {
        format!("{:.2}", us as f64 / 1000.0)
    }
}

fn step_line(s: &Step) -> String {
    match &s.report {
        Some(r) => format!(
            "{:<11} {:>8} ticks/s: {:>10.0} msgs/s, p99 {:>8} ms, server {:.2} cores, client {:.2} cores: {}",
            s.server.label(),
            plot::human(s.rate),
            r.msgs_per_sec,
            ms(r.latency_us.p99),
            r.server_cpu_cores.unwrap_or(0.0),
            r.client_cpu_cores.unwrap_or(0.0),
            s.verdict
        ),
        None => format!("{:<11} {:>8} ticks/s: {}", s.server.label(), plot::human(s.rate), s.verdict),
    }
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

impl Comparison {
    fn steps_of(&self, server: Server) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(move |s| s.server == server)
    }

    /// The highest rate the server held.
    pub fn saturation(&self, server: Server) -> Option<&Step> {
        self.steps_of(server).filter(|s| s.holds).last()
    }

    /// Whether the server's first failed rate had a saturated client: its saturation point is
    /// then only a lower bound.
    pub fn limited_by_client(&self, server: Server) -> bool {
        self.steps_of(server).find(|s| !s.holds).is_some_and(|s| s.client_bound)
    }

    /// The rate where servers are compared on latency, CPU and memory: the highest that all of
    /// them held, else the lowest swept.
    pub fn reference_rate(&self) -> f64 {
        let lowest = self.config.rates.iter().copied().fold(f64::INFINITY, f64::min);
        self.config
            .rates
            .iter()
            .copied()
            .filter(|&rate| {
                self.config
                    .servers
                    .iter()
                    .all(|&sv| self.steps_of(sv).any(|s| s.rate == rate && s.holds))
            })
            .fold(None, |best: Option<f64>, r| Some(best.map_or(r, |b| b.max(r))))
            .unwrap_or(lowest)
    }

    fn at(&self, server: Server, rate: f64) -> Option<&Step> {
        self.steps_of(server).find(|s| s.rate == rate && s.report.is_some())
    }

    /// The markdown report: settings, the ratio table, every step.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        let _ = writeln!(s, "### Setup\n");
        let _ = writeln!(
            s,
            "{} connections, each on `{}`{} ({:.1}% of the ticks); {} symbols, seed {}, no bursts; \
             {} s measured after {} s warm-up per step. Server (and its feed) on CPUs `{}`, \
             client on CPUs `{}`. A rate holds with every connection up, no gap of any kind, \
             p99 ≤ {} ms and ≥ {:.0}% of the expected messages delivered. Machine: {}.\n",
            c.conns,
            c.streams,
            c.random_symbols.map_or(String::new(), |k| format!(
                " with `{{sym}}` = {k} random symbols per connection"
            )),
            100.0 * self.stream_share,
            c.symbols,
            c.seed,
            c.duration,
            c.warmup,
            c.server_cpus.as_deref().unwrap_or("any"),
            c.client_cpus.as_deref().unwrap_or("any"),
            c.p99_bound_ms,
            100.0 * c.min_delivery,
            self.machine
        );
        s.push_str(&self.ratio_table());
        let _ = writeln!(s, "\n### Every step\n");
        let _ = writeln!(
            s,
            "| server | offered ticks/s | expected msgs/s | delivered msgs/s | p50 ms | p99 ms | \
             max ms | lost (declared / silent) | server cores | client cores | wire B/msg | verdict |"
        );
        let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|");
        for st in &self.steps {
            match &st.report {
                Some(r) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} / {} | {:.2} | {:.2} | {:.1} | {} |",
                        st.server.label(),
                        plot::human(st.rate),
                        st.expected_msgs_per_sec,
                        r.msgs_per_sec,
                        ms(r.latency_us.p50),
                        ms(r.latency_us.p99),
                        ms(r.latency_us.max),
                        r.declared_gaps,
                        r.undeclared_missing,
                        r.server_cpu_cores.unwrap_or(0.0),
                        r.client_cpu_cores.unwrap_or(0.0),
                        r.wire_bytes_per_msg,
                        st.verdict
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {:.0} | | | | | | | | | {} |",
                        st.server.label(),
                        plot::human(st.rate),
                        st.expected_msgs_per_sec,
                        st.verdict
                    );
                }
            }
        }
        s
    }

    /// tickfan against each baseline: the saturation point and, at the reference rate,
    /// latency, CPU, memory and bytes on the wire, each with its ratio.
    pub fn ratio_table(&self) -> String {
        let servers = &self.config.servers;
        let reference = self.reference_rate();
        let mut s = String::new();
        let _ = write!(s, "| metric |");
        for sv in servers {
            let _ = write!(s, " {} |", sv.label());
        }
        let _ = write!(s, "\n|---|");
        for _ in servers {
            let _ = write!(s, "--:|");
        }
        s.push('\n');
        let base = servers.first().copied().unwrap_or(Server::Tickfan);
        let base_label = base.label();
        // (row label, higher is better, value per server, format). The first three rows are
        // at each server's own limit; the rest at the reference rate, which their label says.
        type Metric<'a> =
            (String, bool, Box<dyn Fn(Server) -> Option<f64> + 'a>, fn(f64) -> String);
        let at_reference = |label: &str| format!("{label} at {} ticks/s", plot::human(reference));
        let metrics: Vec<Metric<'_>> = vec![
            (
                "highest rate held (ticks/s)".to_owned(),
                true,
                Box::new(|sv| self.saturation(sv).map(|st| st.rate)),
                plot::human,
            ),
            (
                "delivered msgs/s at that rate".to_owned(),
                true,
                Box::new(|sv| self.saturation(sv)?.report.as_ref().map(|r| r.msgs_per_sec)),
                plot::human,
            ),
            (
                "server CPU-s per million msgs at that rate".to_owned(),
                false,
                Box::new(|sv| self.saturation(sv)?.cpu_per_million()),
                |v| format!("{v:.3}"),
            ),
            (
                at_reference("p99 latency (ms)"),
                false,
                Box::new(|sv| {
                    Some(self.at(sv, reference)?.report.as_ref()?.latency_us.p99 as f64 / 1000.0)
                }),
                |v| format!("{v:.2}"),
            ),
            (
                at_reference("server CPU-s per million msgs"),
                false,
                Box::new(|sv| self.at(sv, reference)?.cpu_per_million()),
                |v| format!("{v:.3}"),
            ),
            (
                at_reference("server RSS per connection (KiB)"),
                false,
                Box::new(|sv| self.at(sv, reference)?.rss_per_conn().map(|b| b / 1024.0)),
                |v| format!("{v:.1}"),
            ),
            (
                at_reference("wire bytes per tick"),
                false,
                Box::new(|sv| Some(self.at(sv, reference)?.report.as_ref()?.wire_bytes_per_msg)),
                |v| format!("{v:.1}"),
            ),
        ];
        for (row, (name, higher_is_better, value, fmt)) in metrics.iter().enumerate() {
            let _ = write!(s, "| {name} |");
            let ours = value(base);
            for &sv in servers {
                // The highest rate held is a lower bound when the client saturated first.
                let limited = row == 0 && self.limited_by_client(sv);
                let show = |v: f64| {
                    if limited {
                        format!("≥ {} (client-bound)", fmt(v))
                    } else {
                        fmt(v)
                    }
                };
                let cell = match (value(sv), ours) {
                    (None, _) => "–".to_owned(),
                    (Some(v), Some(o)) if sv != base && v > 0.0 && o > 0.0 => {
                        let ratio = if *higher_is_better { o / v } else { v / o };
                        let word = if *higher_is_better { "lower" } else { "higher" };
                        if (ratio - 1.0).abs() < 0.05 {
                            format!("{} (≈ same)", show(v))
                        } else if ratio >= 1.0 {
                            format!("{} ({ratio:.1}× {word})", show(v))
                        } else {
                            format!("{} (better: {:.1}× {base_label}'s)", show(v), ratio)
                        }
                    }
                    (Some(v), _) => format!("**{}**", show(v)),
                };
                let _ = write!(s, " {cell} |");
            }
            s.push('\n');
        }
        let _ = writeln!(
            s,
            "\nRatios are {}'s advantage: how many times lower the baseline's throughput, or \
             higher its latency, CPU, memory or bytes. Latency, CPU, memory and bytes are \
             compared at {} ticks/s, the highest rate every server held (or the lowest swept). \
             \"client-bound\": the load client, not the server, ran out of CPU at the next rate, \
             so the server's true limit is higher.",
            base.label(),
            plot::human(reference)
        );
        s
    }
}

/// Writes `compare.json`, `compare.md` and the plots into `cmp.config.out`.
pub fn write_results(cmp: &Comparison) -> anyhow::Result<()> {
    let out = &cmp.config.out;
    std::fs::write(out.join("compare.json"), serde_json::to_string_pretty(cmp)?)?;
    let mut md = cmp.markdown();
    match write_plots(cmp) {
        Ok(files) => {
            let _ = writeln!(md, "\n### Plots\n");
            for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "svg")) {
                let name =
                    f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let _ = writeln!(md, "![{name}]({name})");
            }
        }
        Err(e) => eprintln!("bench: {e:#}"),
    }
    std::fs::write(out.join("compare.md"), md)?;
    Ok(())
}

fn write_plots(cmp: &Comparison) -> anyhow::Result<Vec<PathBuf>> {
    let out = &cmp.config.out;
    let per_server = |f: &dyn Fn(&Step) -> Option<(f64, f64)>| -> Vec<Series> {
        cmp.config
            .servers
            .iter()
            .map(|&sv| Series {
                name: sv.label().to_owned(),
                points: cmp.steps_of(sv).filter_map(f).collect(),
            })
            .collect()
    };
    let mut throughput = per_server(&|s| Some((s.rate, s.report.as_ref()?.msgs_per_sec)));
    throughput.push(Series {
        name: "expected (no loss)".into(),
        points: cmp
            .config
            .rates
            .iter()
            .map(|&r| (r, r * cmp.stream_share * cmp.config.conns as f64))
            .collect(),
    });
    let mut p99 =
        per_server(&|s| Some((s.rate, s.report.as_ref()?.latency_us.p99 as f64 / 1000.0)));
    let rates = &cmp.config.rates;
    p99.push(Series {
        name: format!("bound ({} ms)", cmp.config.p99_bound_ms),
        points: [rates.first(), rates.last()]
            .into_iter()
            .flatten()
            .map(|&r| (r, cmp.config.p99_bound_ms))
            .collect(),
    });
    let reference = cmp.reference_rate();
    let curves: Vec<Series> = cmp
        .config
        .servers
        .iter()
        .filter_map(|&sv| {
            let r = cmp.at(sv, reference)?.report.as_ref()?;
            Some(Series::latency_curve(sv.label(), r))
        })
        .collect();
    let title = format!("End-to-end latency at {} ticks/s", plot::human(reference));
    let mut files = plot::write(
        &out.join("throughput"),
        &Chart::rate_sweep(
            "Delivered messages vs offered tick rate",
            "delivered msgs/s (all connections, log)",
            &throughput,
        ),
    )?;
    files.extend(plot::write(
        &out.join("p99"),
        &Chart::rate_sweep(
            "p99 end-to-end latency vs offered tick rate",
            "p99 latency (ms, log)",
            &p99,
        ),
    )?);
    files.extend(plot::write(&out.join("latency"), &Chart::latency(&title, &curves))?);
    Ok(files)
}

/// Reads a comparison written by [`compare`] (to re-render its markdown and plots).
pub fn load(path: &Path) -> anyhow::Result<Comparison> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a comparison", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taskset_lists() {
        assert_eq!(cpu_count(&None), 0);
        assert_eq!(cpu_count(&Some("0".into())), 1);
        assert_eq!(cpu_count(&Some("0,2-3".into())), 3);
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
