//! Steps (one server at one rate): measuring one with the load client, its verdict, and the
//! sweep over the rates.

use std::fs::File;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::render::{ms, step_line};
use super::servers::{cpu_count, pinned, start, Server};
use super::{CompareConfig, Comparison};
use crate::plot;
use crate::report::{rss_bytes, Report};

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

/// Every server over the rates, in ascending order; a server's sweep stops at its first rate
/// that does not hold (unless `keep_going`). Prints a line per step on stderr.
pub(super) fn sweep(cfg: &CompareConfig, stream_share: f64) -> Vec<Step> {
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
            let step = run_step(cfg, server, rate, stream_share);
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
    steps
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
pub(super) fn verdict(cfg: &CompareConfig, r: &Report, rate: f64, share: f64) -> String {
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

impl Comparison {
    pub(super) fn steps_of(&self, server: Server) -> impl Iterator<Item = &Step> {
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

    pub(super) fn at(&self, server: Server, rate: f64) -> Option<&Step> {
        self.steps_of(server).find(|s| s.rate == rate && s.report.is_some())
    }
}
