//! The results as people read them: the markdown report with its ratio table, the progress
//! line of a step, and the plots.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::sweep::Step;
use super::{Comparison, Server};
use crate::plot::{self, Chart, Series};

pub(super) fn ms(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.0}", us as f64 / 1000.0)
    } else {
        format!("{:.2}", us as f64 / 1000.0)
    }
}

pub(super) fn step_line(s: &Step) -> String {
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

impl Comparison {
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
