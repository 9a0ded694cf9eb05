//! Steps (one server at one rate): measuring one with the load client and its verdict; the
//! search for each server's limit (doubling, then bisection), repeated; and the figures drawn
//! from the repeats (median and range, and which side limited each).

use std::fs::File;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::render::{ms, step_line};
use super::servers::{cpu_count, pinned, start, Server, FEED_THREAD};
use super::{CompareConfig, Comparison};
use crate::floor::FloorResult;
use crate::plot;
use crate::report::{rss_bytes, Report};

/// A side is *limiting* a step when it used at least this share of its CPUs.
pub const BUSY_SHARE: f64 = 0.8;

/// One server at one rate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Step {
    pub server: Server,
    pub rate: f64,
    /// Which repetition of the whole search (0-based).
    #[serde(default)]
    pub repeat: usize,
    /// Measured while bisecting between the last rate held and the first that failed.
    #[serde(default)]
    pub bisect: bool,
    /// Messages per second all connections together should receive at this rate.
    pub expected_msgs_per_sec: f64,
    pub holds: bool,
    /// Why the step does not hold.
    pub verdict: String,
    /// The load client used ≥ 80% of its CPUs: what was measured here may be the client's
    /// limit, not the server's (a failure then makes the server's limit a lower bound).
    #[serde(default, alias = "client_bound")]
    pub client_limited: bool,
    /// The server and its feed (on the same CPUs) used ≥ 80% of them.
    #[serde(default)]
    pub server_busy: bool,
    /// Server resident memory before any client connected (a feed process's not included).
    pub idle_rss_bytes: Option<u64>,
    pub report: Option<Report>,
}

/// Which side ran out of CPU in a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Server,
    Client,
    /// Both used ≥ 80% of their CPUs.
    Both,
    /// Neither did (a latency bound or a loss with CPU to spare, or an error).
    Neither,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
            Side::Both => "both",
            Side::Neither => "neither",
        }
    }
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

    /// Which side ran out of CPU.
    pub fn side(&self) -> Side {
        match (self.server_busy, self.client_limited) {
            (true, true) => Side::Both,
            (true, false) => Side::Server,
            (false, true) => Side::Client,
            (false, false) => Side::Neither,
        }
    }
}

/// CPUs of a `taskset` list, or every CPU when unpinned.
fn cores(cpus: &Option<String>) -> usize {
    match cpu_count(cpus) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// `rate` rounded to 3 significant digits: bisected rates stay readable.
fn round_rate(rate: f64) -> f64 {
    if rate <= 0.0 || !rate.is_finite() {
        return rate;
    }
    let scale = 10f64.powi(rate.log10().floor() as i32 - 2);
    (rate / scale).round() * scale
}

/// Runs the search for every server, `cfg.repeats` times. Repeat r runs every server before
/// repeat r + 1, starting one server later each time, so that slow drifts of the machine (other
/// load, heat) spread over all servers instead of landing on one. Prints a line per step on
/// stderr.
pub(super) fn sweep(cfg: &CompareConfig, stream_share: f64) -> Vec<Step> {
    let n = cfg.servers.len();
    let bar = ProgressBar::new((cfg.repeats.max(1) * n * cfg.rates.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps, {elapsed} {wide_msg}")
            .expect("constant template"),
    );
    let mut steps = Vec::new();
    for repeat in 0..cfg.repeats.max(1) {
        for i in 0..n {
            let server = cfg.servers[(i + repeat) % n];
            search(cfg, server, repeat, stream_share, &bar, &mut steps);
        }
    }
    bar.finish_and_clear();
    steps
}

/// One search for `server`'s limit (see [`climb_and_bisect`]), its steps pushed to `steps`.
fn search(
    cfg: &CompareConfig,
    server: Server,
    repeat: usize,
    share: f64,
    bar: &ProgressBar,
    steps: &mut Vec<Step>,
) {
    climb_and_bisect(cfg, |rate, bisect| {
        if bisect {
            bar.inc_length(1);
        }
        bar.set_message(format!(
            "{} at {} ticks/s (repeat {} of {})",
            server.label(),
            plot::human(rate),
            repeat + 1,
            cfg.repeats.max(1)
        ));
        let step = run_step(cfg, server, rate, repeat, bisect, share);
        bar.inc(1);
        // Step lines go to stderr whether or not the bar is drawn (stderr not a terminal).
        bar.suspend(|| eprintln!("{}", step_line(&step)));
        let holds = step.holds;
        steps.push(step);
        holds
    });
    // Ladder rates skipped after the failure still count in the bar's length.
    let run = steps.iter().filter(|s| s.server == server && s.repeat == repeat && !s.bisect);
    bar.inc((cfg.rates.len() - run.count()) as u64);
}

/// Climbs the ladder `cfg.rates` to the first rate that does not hold (`step(rate, false)`
/// says whether it held), then bisects (`step(rate, true)`, geometric midpoints rounded to 3
/// digits) between the last rate held before it and that one until their ratio is at most
/// `cfg.resolution`. Returns the last rate held and the first failed, as far as known.
fn climb_and_bisect(
    cfg: &CompareConfig,
    mut step: impl FnMut(f64, bool) -> bool,
) -> (Option<f64>, Option<f64>) {
    let (mut held, mut failed) = (None, None);
    for &rate in &cfg.rates {
        match (step(rate, false), failed) {
            (true, None) => held = Some(rate),
            (false, None) => failed = Some(rate),
            _ => {}
        }
        if failed.is_some() && !cfg.keep_going {
            break;
        }
    }
    let (Some(mut lo), Some(mut hi)) = (held, failed) else { return (held, failed) };
    while hi / lo > cfg.resolution {
        let mid = round_rate((lo * hi).sqrt());
        if mid <= lo || mid >= hi {
            break;
        }
        if step(mid, true) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (Some(lo), Some(hi))
}

fn run_step(
    cfg: &CompareConfig,
    server: Server,
    rate: f64,
    repeat: usize,
    bisect: bool,
    share: f64,
) -> Step {
    let expected = rate * share * cfg.conns as f64;
    let name = format!("{}-{}-r{}", format!("{server:?}").to_lowercase(), rate, repeat + 1);
    let mut step = Step {
        server,
        rate,
        repeat,
        bisect,
        expected_msgs_per_sec: expected,
        holds: false,
        verdict: String::new(),
        client_limited: false,
        server_busy: false,
        idle_rss_bytes: None,
        report: None,
    };
    match measure(cfg, server, rate, &name, &mut step) {
        Ok(report) => {
            step.verdict = verdict(cfg, &report, rate, share);
            step.holds = step.verdict == "holds";
            let busy = |used: Option<f64>, cpus: &Option<String>| {
                used.is_some_and(|c| c >= BUSY_SHARE * cores(cpus) as f64)
            };
            step.client_limited = busy(report.client_cpu_cores, &cfg.client_cpus);
            // The feed runs on the server's CPUs too.
            let server_side =
                report.server_cpu_cores.map(|c| c + report.feed_cpu_cores.unwrap_or(0.0));
            step.server_busy = busy(server_side, &cfg.server_cpus);
            if step.client_limited && !step.holds {
                step.verdict.push_str(" (client-limited)");
            }
            if let Some(why) = &report.writes_note {
                // Said once per run: the reason is the same for every step.
                static SAID: std::sync::Once = std::sync::Once::new();
                SAID.call_once(|| eprintln!("bench: server writes not counted (n/a): {why}"));
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
    // The server's own memory: a feed process's is neither the server's nor per connection.
    step.idle_rss_bytes = rss_bytes(running.server_pid());
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
    client.args(["--server-pid", &running.server_pid().to_string()]);
    match running.feed_pid() {
        Some(feed) => client.args(["--feed-pid", &feed.to_string()]),
        None => client.args(["--feed-thread", FEED_THREAD]),
    };
    if cfg.count_writes {
        client.arg("--count-writes");
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

/// Median and range of one figure over the repeats.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Repeats the figure was measured in.
    pub n: usize,
}

impl Spread {
    /// `None` for no values. The median of an even count is the mean of the middle two.
    pub fn of(mut values: Vec<f64>) -> Option<Spread> {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median =
            if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 };
        Some(Spread { median, min: values[0], max: values[n - 1], n })
    }
}

/// A figure of one server over the repeats, and how many of the steps it comes from had the
/// client limited.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    pub spread: Option<Spread>,
    /// Steps behind the figure whose client was limited.
    pub client_limited: usize,
    /// Steps behind the figure that did not hold (at the reference rate: this server could
    /// not keep up there in that repeat).
    pub not_held: usize,
    /// Steps behind the figure.
    pub steps: usize,
}

impl Figure {
    fn from_steps<'a>(
        steps: impl Iterator<Item = &'a Step>,
        value: impl Fn(&Step) -> Option<f64>,
    ) -> Figure {
        let (mut values, mut limited, mut not_held, mut n) = (Vec::new(), 0, 0, 0);
        for st in steps {
            n += 1;
            limited += usize::from(st.client_limited);
            not_held += usize::from(!st.holds);
            values.extend(value(st));
        }
        Figure { spread: Spread::of(values), client_limited: limited, not_held, steps: n }
    }
}

/// What one search found.
#[derive(Clone, Debug)]
pub struct Limit<'a> {
    /// The highest rate held below the first failure.
    pub held: Option<&'a Step>,
    /// The lowest rate that did not hold: where the limit was found.
    pub failed: Option<&'a Step>,
}

impl Comparison {
    pub(super) fn steps_of(&self, server: Server) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(move |s| s.server == server)
    }

    /// The repeats that ran.
    pub fn repeats(&self) -> usize {
        self.steps.iter().map(|s| s.repeat + 1).max().unwrap_or(0)
    }

    /// What the search of `server` in `repeat` found.
    pub fn limit(&self, server: Server, repeat: usize) -> Limit<'_> {
        let of_run = || self.steps_of(server).filter(move |s| s.repeat == repeat);
        let failed = of_run().filter(|s| !s.holds).min_by(|a, b| a.rate.total_cmp(&b.rate));
        let below = |s: &&Step| failed.is_none_or(|f| s.rate < f.rate);
        let held =
            of_run().filter(|s| s.holds).filter(below).max_by(|a, b| a.rate.total_cmp(&b.rate));
        Limit { held, failed }
    }

    /// The highest rate held, over the repeats; client-limited counts the repeats whose
    /// failing step had the client limited (the server's limit is then a lower bound).
    pub fn saturation(&self, server: Server) -> Figure {
        let limits: Vec<Limit<'_>> = (0..self.repeats()).map(|r| self.limit(server, r)).collect();
        Figure {
            spread: Spread::of(limits.iter().filter_map(|l| Some(l.held?.rate)).collect()),
            client_limited: limits
                .iter()
                .filter(|l| l.failed.is_some_and(|f| f.client_limited))
                .count(),
            not_held: 0,
            steps: limits.len(),
        }
    }

    /// A figure of the step at each repeat's saturation rate.
    pub fn at_saturation(&self, server: Server, value: impl Fn(&Step) -> Option<f64>) -> Figure {
        let held: Vec<&Step> =
            (0..self.repeats()).filter_map(|r| self.limit(server, r).held).collect();
        Figure::from_steps(held.into_iter(), value)
    }

    /// Which side ran out of CPU where each repeat's search found the limit, as
    /// `(side, repeats)`, most frequent first.
    pub fn limited_by(&self, server: Server) -> Vec<(Side, usize)> {
        let mut counts: Vec<(Side, usize)> = Vec::new();
        for r in 0..self.repeats() {
            if let Some(f) = self.limit(server, r).failed {
                match counts.iter_mut().find(|(side, _)| *side == f.side()) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((f.side(), 1)),
                }
            }
        }
        counts.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
        counts
    }

    /// The rate where servers are compared on latency, CPU and memory: the highest rate of the
    /// ladder that every server held in every repeat, else the lowest of the ladder.
    pub fn reference_rate(&self) -> f64 {
        let lowest = self.config.rates.iter().copied().fold(f64::INFINITY, f64::min);
        self.held_by_all(&self.config.servers).unwrap_or(lowest)
    }

    /// The highest rate of the ladder that `a` and `b` both held in every repeat: where the
    /// two are compared head to head, above what the weakest server holds.
    pub fn common_rate(&self, a: Server, b: Server) -> Option<f64> {
        self.held_by_all(&[a, b])
    }

    fn held_by_all(&self, servers: &[Server]) -> Option<f64> {
        let repeats = self.repeats();
        self.config
            .rates
            .iter()
            .copied()
            .filter(|&rate| {
                servers.iter().all(|&sv| {
                    (0..repeats).all(|r| {
                        self.steps_of(sv).any(|s| s.repeat == r && s.rate == rate && s.holds)
                    })
                })
            })
            .fold(None, |best: Option<f64>, r| Some(best.map_or(r, |b| b.max(r))))
    }

    /// Share (%) of a step's server CPU beyond what its writes would cost at the loopback
    /// floor: writes × the floor's CPU per write of as many frames as the server put in one.
    /// Needs the floor and the write count.
    pub fn beyond_floor(&self, st: &Step) -> Option<f64> {
        self.beyond(st, |_, _| Some(0.0))
    }

    /// The same against the paced floor: each write also costs what waking a sleeping reader
    /// adds at the step's own rate of writes ([`FloorResult::wake_us_per_write`]), as a thin
    /// stream's writes do. Needs paced points in the floor (runs before 2026-12-03 have none).
    pub fn beyond_paced_floor(&self, st: &Step) -> Option<f64> {
        self.beyond(st, |floor, writes_per_s| {
            floor.wake_us_per_write(self.config.conns, writes_per_s)
        })
    }

    /// Share (%) of a step's server CPU beyond its writes at the floor's tight cost per write
    /// plus `extra(floor, writes per second)` µs each.
    fn beyond(&self, st: &Step, extra: impl Fn(&FloorResult, f64) -> Option<f64>) -> Option<f64> {
        let floor = self.floor.as_ref()?;
        let r = st.report.as_ref()?;
        let writes = r.server_writes.filter(|&w| w > 0)? as f64;
        let cpu_us = r.server_cpu_cores? * r.measured_seconds * 1e6;
        let frames_per_write = r.msgs as f64 / writes;
        let per_write = floor.us_per_write(self.config.conns, frames_per_write)?
            + extra(floor, writes / r.measured_seconds)?;
        (cpu_us > 0.0 && r.msgs > 0).then(|| 100.0 * (1.0 - writes * per_write / cpu_us))
    }

    /// The steps of `server` at `rate` that have a report, one per repeat at most.
    pub(super) fn all_at(&self, server: Server, rate: f64) -> impl Iterator<Item = &Step> {
        self.steps_of(server).filter(move |s| s.rate == rate && s.report.is_some() && !s.bisect)
    }

    /// A figure of `server`'s steps at the reference rate.
    pub fn at_reference(&self, server: Server, value: impl Fn(&Step) -> Option<f64>) -> Figure {
        self.at_rate(server, self.reference_rate(), value)
    }

    /// A figure of `server`'s steps at `rate` (of the ladder).
    pub fn at_rate(
        &self,
        server: Server,
        rate: f64,
        value: impl Fn(&Step) -> Option<f64>,
    ) -> Figure {
        Figure::from_steps(self.all_at(server, rate), value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_rounding() {
        assert_eq!(Spread::of(vec![]), None);
        let s = Spread::of(vec![3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Spread::of(vec![4.0, 1.0]).unwrap().median, 2.5);
        assert_eq!(round_rate(22627.417), 22600.0);
        assert_eq!(round_rate(707.1), 707.0);
        assert_eq!(round_rate(1414.2), 1410.0);
    }

    fn cfg() -> CompareConfig {
        CompareConfig { rates: vec![500.0, 1000.0, 2000.0, 4000.0], ..CompareConfig::new("/x") }
    }

    #[test]
    fn climbs_then_bisects_to_the_resolution() {
        let mut tried = Vec::new();
        let limit = 2900.0;
        let found = climb_and_bisect(&cfg(), |rate, bisect| {
            tried.push((rate, bisect));
            rate <= limit
        });
        // The ladder up to 4000, the first failure, then midpoints between 2000 and 4000
        // until the bracket is within 1.25×.
        let (lo, hi) = (found.0.unwrap(), found.1.unwrap());
        assert!(lo <= limit && limit < hi && hi / lo <= 1.25, "{found:?} {tried:?}");
        assert_eq!(
            &tried[..4],
            &[(500.0, false), (1000.0, false), (2000.0, false), (4000.0, false)]
        );
        assert!(tried[4..].iter().all(|&(r, b)| b && 2000.0 < r && r < 4000.0), "{tried:?}");
        // Nothing held, or nothing failed: no bisection.
        let mut n = 0;
        assert_eq!(
            climb_and_bisect(&cfg(), |_, _| {
                n += 1;
                false
            }),
            (None, Some(500.0))
        );
        assert_eq!(n, 1);
        assert_eq!(climb_and_bisect(&cfg(), |_, _| true), (Some(4000.0), None));
        // keep_going climbs on, but the bracket is still at the first failure.
        let mut rates = Vec::new();
        let keep = CompareConfig { keep_going: true, resolution: 3.0, ..cfg() };
        let found = climb_and_bisect(&keep, |r, _| {
            rates.push(r);
            r != 1000.0
        });
        assert_eq!((found, rates.len()), ((Some(500.0), Some(1000.0)), 4));
    }

    fn step(server: Server, repeat: usize, rate: f64, holds: bool, client: bool) -> Step {
        Step {
            server,
            rate,
            repeat,
            bisect: false,
            expected_msgs_per_sec: 0.0,
            holds,
            verdict: String::new(),
            client_limited: client,
            server_busy: !client,
            idle_rss_bytes: None,
            report: None,
        }
    }

    #[test]
    fn figures_over_repeats() {
        use Server::{Tickfan as T, Ws as W};
        let steps = vec![
            step(T, 0, 500.0, true, false),
            step(T, 0, 1000.0, true, false),
            step(T, 0, 2000.0, false, true),
            step(W, 0, 500.0, true, false),
            step(W, 0, 1000.0, false, false),
            step(W, 1, 500.0, true, false),
            step(W, 1, 1000.0, true, false),
            step(W, 1, 2000.0, false, false),
            step(T, 1, 500.0, true, false),
            step(T, 1, 1000.0, true, false),
            step(T, 1, 2000.0, true, false),
            step(T, 1, 4000.0, false, false),
        ];
        let cmp = Comparison {
            config: CompareConfig { servers: vec![T, W], ..cfg() },
            machine: String::new(),
            stream_share: 1.0,
            steps,
            floor: None,
        };
        assert_eq!(cmp.repeats(), 2);
        let t = cmp.saturation(T);
        assert_eq!(t.spread.map(|s| (s.median, s.min, s.max)), Some((1500.0, 1000.0, 2000.0)));
        // The failure of repeat 1 had the client limited.
        assert_eq!((t.client_limited, t.steps), (1, 2));
        assert_eq!(cmp.saturation(W).spread.map(|s| s.median), Some(750.0));
        // W failed 1000 in repeat 0: 500 is the highest every server held every time.
        assert_eq!(cmp.reference_rate(), 500.0);
        // Head to head: W caps the pair at 500; T alone held 1000 in every repeat (2000 once).
        assert_eq!(cmp.common_rate(T, W), Some(500.0));
        assert_eq!(cmp.common_rate(T, T), Some(1000.0));
        assert_eq!(cmp.limited_by(T), vec![(Side::Client, 1), (Side::Server, 1)]);
        assert_eq!(cmp.limited_by(W), vec![(Side::Server, 2)]);
        let at =
            Figure::from_steps(cmp.steps.iter().filter(|s| s.rate == 1000.0), |s| Some(s.rate));
        assert_eq!((at.not_held, at.client_limited, at.steps), (1, 0, 4));
    }
}
