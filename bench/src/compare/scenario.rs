//! The workloads `bench compare` runs by name (`--scenario`), each into its own directory,
//! and the suite of them with one combined report.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::{compare, preflight, write_results, CompareConfig, Comparison};

/// A named workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// 1,000 connections all on `trades.BTC-USD`: every one of its ticks goes to everyone.
    Hot,
    /// 100 connections on `trades.*,quotes.*`: about half of all ticks to each.
    Fat,
    /// 1,000 connections, each on trades and quotes of its own 3 random symbols.
    #[value(name = "thin1k")]
    #[serde(rename = "thin1k")]
    Thin1k,
    /// 10,000 connections, each on trades and quotes of its own 3 random symbols.
    #[value(name = "thin10k")]
    #[serde(rename = "thin10k")]
    Thin10k,
    /// 10,000 subscribed connections at a trickle of ticks: memory per idle connection.
    Idle,
}

/// The tick rate of the idle scenario (ticks/s over all symbols).
pub const IDLE_RATE: f64 = 10.0;
/// Seconds at rest before the idle scenario reads the servers' memory (at least).
const IDLE_SECONDS: f64 = 15.0;

/// `start`, doubled up to `max`.
fn doubling(start: f64, max: f64) -> Vec<f64> {
    std::iter::successors(Some(start), |r| Some(r * 2.0)).take_while(|&r| r <= max).collect()
}

impl Scenario {
    /// Every scenario, in the order a suite runs them.
    pub const ALL: [Scenario; 5] =
        [Scenario::Hot, Scenario::Fat, Scenario::Thin1k, Scenario::Thin10k, Scenario::Idle];

    /// The name on the command line and of its results directory.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Hot => "hot",
            Scenario::Fat => "fat",
            Scenario::Thin1k => "thin1k",
            Scenario::Thin10k => "thin10k",
            Scenario::Idle => "idle",
        }
    }

    /// What it stands for, in a sentence.
    pub fn about(self) -> &'static str {
        match self {
            Scenario::Hot => {
                "one hot channel: 1,000 connections all on `trades.BTC-USD`, every tick of it \
                 to every connection"
            }
            Scenario::Fat => {
                "few fat subscribers: 100 connections on `trades.*,quotes.*`, about half of \
                 all ticks to each"
            }
            Scenario::Thin1k => {
                "many thin subscribers: 1,000 connections, each on trades and quotes of its \
                 own 3 random symbols"
            }
            Scenario::Thin10k => {
                "very many thin subscribers: 10,000 connections, each on trades and quotes of \
                 its own 3 random symbols"
            }
            Scenario::Idle => {
                "memory at rest: 10,000 subscribed connections (trades and quotes of 3 random \
                 symbols each) at 10 ticks/s; the figure is RSS per idle connection after \
                 15 s at rest"
            }
        }
    }

    pub fn conns(self) -> usize {
        match self {
            Scenario::Fat => 100,
            Scenario::Hot | Scenario::Thin1k => 1_000,
            Scenario::Thin10k | Scenario::Idle => 10_000,
        }
    }

    pub fn streams(self) -> &'static str {
        match self {
            Scenario::Hot => "trades.BTC-USD",
            Scenario::Fat => "trades.*,quotes.*",
            Scenario::Thin1k | Scenario::Thin10k | Scenario::Idle => "trades.{sym},quotes.{sym}",
        }
    }

    pub fn random_symbols(self) -> Option<usize> {
        match self {
            Scenario::Hot | Scenario::Fat => None,
            Scenario::Thin1k | Scenario::Thin10k | Scenario::Idle => Some(3),
        }
    }

    /// The ladder of rates its search climbs (one rate for idle: nothing to search).
    pub fn rates(self) -> Vec<f64> {
        match self {
            Scenario::Hot => doubling(250.0, 64_000.0),
            // 10,000 connections each getting a message now and then cost a write per message:
            // one core saturates below 250 ticks/s (every server did in the run of 2026-12-02).
            Scenario::Thin10k => doubling(50.0, 12_800.0),
            Scenario::Fat | Scenario::Thin1k => doubling(500.0, 128_000.0),
            Scenario::Idle => vec![IDLE_RATE],
        }
    }

    /// `base` with this scenario's workload, results under `base.out/NAME`. `overrides`, where
    /// set, replace the scenario's connections, streams, random symbols and (except for idle)
    /// rates.
    pub fn config(self, base: &CompareConfig, overrides: &Overrides) -> CompareConfig {
        let random_symbols = match (&overrides.streams, overrides.random_symbols) {
            (_, Some(k)) => Some(k),
            // Other streams without `{sym}` draw no symbols.
            (Some(streams), None) if !streams.contains("{sym}") => None,
            _ => self.random_symbols(),
        };
        CompareConfig {
            scenario: Some(self),
            conns: overrides.conns.unwrap_or(self.conns()),
            streams: overrides.streams.clone().unwrap_or_else(|| self.streams().to_owned()),
            random_symbols,
            rates: match (&overrides.rates, self) {
                (Some(rates), s) if s != Scenario::Idle => rates.clone(),
                _ => self.rates(),
            },
            out: base.out.join(self.name()),
            // Memory is read at the end of the run: long enough at rest to include what the
            // feed's bursts and the servers' pings leave behind, not only the state just after
            // connecting.
            duration: match self {
                Scenario::Idle => base.duration.max(IDLE_SECONDS),
                _ => base.duration,
            },
            ..base.clone()
        }
    }
}

/// Settings given on the command line that replace every scenario's own.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub conns: Option<usize>,
    pub streams: Option<String>,
    pub random_symbols: Option<usize>,
    pub rates: Option<Vec<f64>>,
}

/// The comparisons of a suite of scenarios.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Suite {
    pub scenarios: Vec<Comparison>,
}

/// Runs `scenarios` one after the other (each checked before any runs), each into
/// `base.out/NAME`, and writes the combined `compare.md` and `compare.json` into `base.out`.
pub fn compare_suite(
    base: &CompareConfig,
    scenarios: &[Scenario],
    overrides: &Overrides,
) -> anyhow::Result<Suite> {
    let configs: Vec<CompareConfig> = scenarios.iter().map(|s| s.config(base, overrides)).collect();
    for cfg in &configs {
        preflight(cfg).with_context(|| format!("scenario {}", scenario_name(cfg)))?;
    }
    let mut suite = Suite { scenarios: Vec::new() };
    for cfg in configs {
        eprintln!(
            "bench: scenario {}: {} connections on {}",
            scenario_name(&cfg),
            cfg.conns,
            cfg.streams
        );
        suite.scenarios.push(compare(cfg)?);
        // Whatever is finished is on disk, should a later scenario fail.
        write_suite(&suite, &base.out)?;
    }
    Ok(suite)
}

fn scenario_name(cfg: &CompareConfig) -> &'static str {
    cfg.scenario.map_or("custom", Scenario::name)
}

impl Suite {
    /// The combined report: each scenario's summary table, with a link to its full report.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# bench compare\n");
        if let Some(first) = self.scenarios.first() {
            let _ = writeln!(s, "Machine: {}.\n", first.machine);
        }
        for cmp in &self.scenarios {
            let name = scenario_name(&cmp.config);
            let about = cmp.config.scenario.map_or("the workload given", Scenario::about);
            let _ = writeln!(s, "## {name}: {about}\n");
            let _ = writeln!(
                s,
                "{} connections on `{}`{}, {} repeat(s). Every step, the setup and the plots: \
                 [{name}/compare.md]({name}/compare.md).\n",
                cmp.config.conns,
                cmp.config.streams,
                cmp.config
                    .random_symbols
                    .map_or(String::new(), |k| format!(" ({k} random symbols each)")),
                cmp.repeats()
            );
            s.push_str(&cmp.ratio_table());
            s.push('\n');
        }
        s
    }

    /// The scenario directories, as `write_results` would place them under `out`.
    fn dir(out: &Path, cmp: &Comparison) -> PathBuf {
        out.join(scenario_name(&cmp.config))
    }
}

/// Writes `compare.json` and `compare.md` of the whole suite into `out`.
pub fn write_suite(suite: &Suite, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("compare.json"), serde_json::to_string_pretty(suite)?)?;
    std::fs::write(out.join("compare.md"), suite.markdown())?;
    Ok(())
}

/// Re-renders a suite into `out`: every scenario's report and plots, and the combined one.
pub fn rewrite_suite(suite: &mut Suite, out: &Path) -> anyhow::Result<()> {
    for cmp in &mut suite.scenarios {
        cmp.config.out = Suite::dir(out, cmp);
        std::fs::create_dir_all(&cmp.config.out)?;
        write_results(cmp)?;
    }
    write_suite(suite, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_overrides() {
        let base = CompareConfig { out: "out".into(), ..CompareConfig::new("/x") };
        let none = Overrides::default();
        let thin = Scenario::Thin10k.config(&base, &none);
        assert_eq!((thin.conns, thin.random_symbols), (10_000, Some(3)));
        assert_eq!(thin.streams, "trades.{sym},quotes.{sym}");
        assert_eq!(thin.out, PathBuf::from("out/thin10k"));
        assert_eq!(thin.rates.first(), Some(&50.0));
        assert!(thin.rates.windows(2).all(|w| w[1] == 2.0 * w[0]));
        assert_eq!(Scenario::Idle.config(&base, &none).rates, vec![IDLE_RATE]);
        assert!(Scenario::Idle.config(&base, &none).duration >= IDLE_SECONDS);
        let o = Overrides {
            conns: Some(4),
            streams: Some("trades.*".into()),
            rates: Some(vec![1000.0]),
            ..Overrides::default()
        };
        let hot = Scenario::Thin1k.config(&base, &o);
        assert_eq!((hot.conns, hot.random_symbols, hot.rates), (4, None, vec![1000.0]));
        // Idle keeps its trickle.
        assert_eq!(Scenario::Idle.config(&base, &o).rates, vec![IDLE_RATE]);
        for s in Scenario::ALL {
            let cfg = s.config(&base, &none);
            assert!(super::super::stream_share(&cfg).unwrap() > 0.0, "{s:?}");
            assert_eq!(<Scenario as clap::ValueEnum>::from_str(s.name(), false), Ok(s), "{s:?}");
        }
    }
}
