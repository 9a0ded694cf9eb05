//! The results as people read them: the markdown report with its ratio table, the progress
//! line of a step, and the plots.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::sweep::{Figure, Spread, Step, BUSY_SHARE};
use super::{Comparison, Server, FEED_THREAD};
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
            "{:<11} {:>8} ticks/s: {:>10.0} msgs/s, p99 {:>8} ms, server {:.2} + feed {:.2} cores, client {:.2} cores: {}",
            s.server.label(),
            plot::human(s.rate),
            r.msgs_per_sec,
            ms(r.latency_us.p99),
            r.server_cpu_cores.unwrap_or(0.0),
            r.feed_cpu_cores.unwrap_or(0.0),
            r.client_cpu_cores.unwrap_or(0.0),
            s.verdict
        ),
        None => format!("{:<11} {:>8} ticks/s: {}", s.server.label(), plot::human(s.rate), s.verdict),
    }
}

/// One row of the summary table: its label, whether higher is better (`None`: no ratio), the
/// figure per server, and how to print a value.
type Row<'a> = (String, Option<bool>, Box<dyn Fn(Server) -> Figure + 'a>, fn(f64) -> String);

/// One row of the head-to-head table: its label, whether higher is better (`None`: no ratio),
/// the figure of a server at a rate, and how to print a value.
type PairRow<'a> =
    (&'a str, Option<bool>, Box<dyn Fn(Server, f64) -> Option<f64> + 'a>, fn(f64) -> String);

/// `median (min–max)`, or the value alone when the repeats agree or there was one.
fn spread_text(sp: &Spread, fmt: fn(f64) -> String) -> String {
    let (median, min, max) = (fmt(sp.median), fmt(sp.min), fmt(sp.max));
    if sp.n <= 1 || min == max {
        median
    } else {
        format!("{median} ({min}–{max})")
    }
}

/// The markers of a figure: ‡k/n when k of its n steps had the client limited, †k/n when k
/// did not hold.
fn client_mark(f: &Figure) -> String {
    let mut marks = String::new();
    if f.client_limited > 0 {
        marks.push_str(&format!(" ‡{}/{}", f.client_limited, f.steps));
    }
    if f.not_held > 0 {
        marks.push_str(&format!(" †{}/{}", f.not_held, f.steps));
    }
    marks
}

impl Comparison {
    /// The markdown report: settings, the summary table, every step.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        if let Some(sc) = c.scenario {
            let _ = writeln!(s, "## Scenario {}: {}\n", sc.name(), sc.about());
        }
        let _ = writeln!(s, "### Setup\n");
        let _ = writeln!(
            s,
            "{} connections, each on `{}`{} ({:.1}% of the ticks); {} symbols, seed {}, no bursts; \
             {} s measured after {} s warm-up per step. Server (and its feed) on CPUs `{}`, \
             client on CPUs `{}`. A rate holds with every connection up, no gap of any kind, \
             p99 ≤ {} ms and ≥ {:.0}% of the expected messages delivered. Each server's limit is \
             searched {} time(s): up the ladder {} ticks/s to the first rate that does not hold, \
             then by bisection until the last rate held and the first failed are within {}× of \
             each other; repeat r runs every server before repeat r + 1. Machine: {}.\n",
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
            self.repeats(),
            c.rates.iter().map(|&r| plot::human(r)).collect::<Vec<_>>().join(", "),
            c.resolution,
            self.machine
        );
        s.push_str(&self.ratio_table());
        let _ = writeln!(s, "\n### Every step\n");
        let _ = writeln!(
            s,
            "| server | repeat | offered ticks/s | expected msgs/s | delivered msgs/s | p50 ms | \
             p99 ms | max ms | lost (declared / silent) | server cores (no feed) | feed cores | \
             client cores | out of CPU | writes per msg | wire B/msg | verdict |"
        );
        let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|---|");
        for st in &self.steps {
            let rate =
                format!("{}{}", plot::human(st.rate), if st.bisect { " (bisect)" } else { "" });
            match &st.report {
                Some(r) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} / {} | {:.2} | {} | {:.2} | {} | {} | {:.1} | {} |",
                        st.server.label(),
                        st.repeat + 1,
                        rate,
                        st.expected_msgs_per_sec,
                        r.msgs_per_sec,
                        ms(r.latency_us.p50),
                        ms(r.latency_us.p99),
                        ms(r.latency_us.max),
                        r.declared_gaps,
                        r.undeclared_missing,
                        r.server_cpu_cores.unwrap_or(0.0),
                        r.feed_cpu_cores.map_or("n/a".to_owned(), |c| format!("{c:.2}")),
                        r.client_cpu_cores.unwrap_or(0.0),
                        st.side().label(),
                        r.writes_per_msg().map_or("n/a".to_owned(), |w| format!("{w:.3}")),
                        r.wire_bytes_per_msg,
                        st.verdict
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {:.0} | | | | | | | | | | | | {} |",
                        st.server.label(),
                        st.repeat + 1,
                        rate,
                        st.expected_msgs_per_sec,
                        st.verdict
                    );
                }
            }
        }
        s
    }

    /// tickfan against each baseline: the limit and, at the reference rate, throughput per
    /// CPU, latency, CPU, memory and bytes on the wire; the median over the repeats with its
    /// range, each with its ratio to the first server's median.
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
        let at_reference = |label: &str| format!("{label} at {} ticks/s", plot::human(reference));
        let report =
            |f: fn(&crate::Report) -> Option<f64>| move |st: &Step| st.report.as_ref().and_then(f);
        let rows: Vec<Row<'_>> = vec![
            (
                "highest rate held (ticks/s)".to_owned(),
                Some(true),
                Box::new(|sv| self.saturation(sv)),
                plot::human,
            ),
            (
                "delivered msgs/s at that rate".to_owned(),
                Some(true),
                Box::new(move |sv| self.at_saturation(sv, report(|r| Some(r.msgs_per_sec)))),
                plot::human,
            ),
            (
                at_reference("delivered msgs per server CPU-second"),
                Some(true),
                Box::new(move |sv| self.at_reference(sv, report(|r| r.msgs_per_server_cpu_sec))),
                plot::human,
            ),
            (
                at_reference("p99 latency (ms)"),
                Some(false),
                Box::new(move |sv| {
                    self.at_reference(sv, report(|r| Some(r.latency_us.p99 as f64 / 1000.0)))
                }),
                |v| format!("{v:.2}"),
            ),
            (
                at_reference("server CPU-s per million msgs"),
                Some(false),
                Box::new(|sv| self.at_reference(sv, Step::cpu_per_million)),
                |v| format!("{v:.3}"),
            ),
            (
                at_reference("feed CPU cores (not in the server's)"),
                None,
                Box::new(move |sv| self.at_reference(sv, report(|r| r.feed_cpu_cores))),
                |v| format!("{v:.2}"),
            ),
            (
                at_reference("server RSS per connection (KiB)"),
                Some(false),
                Box::new(|sv| self.at_reference(sv, |st| st.rss_per_conn().map(|b| b / 1024.0))),
                |v| format!("{v:.1}"),
            ),
            (
                at_reference("server writes per delivered message"),
                Some(false),
                Box::new(move |sv| self.at_reference(sv, report(crate::Report::writes_per_msg))),
                |v| format!("{v:.3}"),
            ),
            (
                at_reference("delivered messages per server write"),
                Some(true),
                Box::new(move |sv| self.at_reference(sv, report(crate::Report::msgs_per_write))),
                |v| format!("{v:.1}"),
            ),
            (
                at_reference("server CPU beyond its writes at the loopback floor (%)"),
                None,
                Box::new(|sv| self.at_reference(sv, |st| self.beyond_floor(st))),
                |v| format!("{v:.0}"),
            ),
            (
                at_reference("server CPU beyond its writes at the paced floor (%)"),
                None,
                Box::new(|sv| self.at_reference(sv, |st| self.beyond_paced_floor(st))),
                |v| format!("{v:.0}"),
            ),
            (
                at_reference("wire bytes per tick"),
                Some(false),
                Box::new(move |sv| self.at_reference(sv, report(|r| Some(r.wire_bytes_per_msg)))),
                |v| format!("{v:.1}"),
            ),
        ];
        for (row, (name, higher_is_better, figure, fmt)) in rows.iter().enumerate() {
            let _ = write!(s, "| {name} |");
            let ours = figure(base).spread.map(|sp| sp.median);
            for &sv in servers {
                let f = figure(sv);
                let Some(sp) = f.spread else {
                    // No rate held in any repeat: the limit is below the lowest that failed.
                    let lowest_failed = (0..self.repeats())
                        .filter_map(|r| Some(self.limit(sv, r).failed?.rate))
                        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.min(r))));
                    let text = match lowest_failed {
                        Some(r) if row == 0 => format!("< {}", fmt(r)),
                        _ => "–".to_owned(),
                    };
                    let _ = write!(s, " {text}{} |", client_mark(&f));
                    continue;
                };
                let shown = spread_text(&sp, *fmt);
                let v = sp.median;
                let cell = match (higher_is_better, ours) {
                    (Some(higher), Some(o)) if sv != base && v > 0.0 && o > 0.0 => {
                        let ratio = if *higher { o / v } else { v / o };
                        let word = if *higher { "lower" } else { "higher" };
                        if (ratio - 1.0).abs() < 0.05 {
                            format!("{shown} (≈ same)")
                        } else if ratio >= 1.0 {
                            format!("{shown} ({ratio:.1}× {word})")
                        } else {
                            format!("{shown} (better: {ratio:.1}× {base_label}'s)")
                        }
                    }
                    _ if sv == base => format!("**{shown}**"),
                    _ => shown,
                };
                let _ = write!(s, " {cell}{} |", client_mark(&f));
            }
            s.push('\n');
        }
        let _ = write!(s, "| out of CPU where the limit was found |");
        for &sv in servers {
            let sides = self.limited_by(sv);
            let text = if sides.is_empty() {
                "– (no rate failed)".to_owned()
            } else {
                let repeats = self.repeats();
                sides
                    .iter()
                    .map(|(side, n)| format!("{} {n}/{repeats}", side.label()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = write!(s, " {text} |");
        }
        s.push('\n');
        let _ = writeln!(
            s,
            "\nEach cell is the median over the repeats, with the range (min–max) when they \
             differ. Server CPU never includes the feed: for the baselines that is the \
             `feed-sim` process piped into them (generating and encoding NDJSON; the server \
             parses and re-encodes each tick), for tickfan its `{FEED_THREAD}` thread \
             (generating each tick and encoding its frame once, which the baselines' servers \
             do in their server CPU){}. Ratios compare medians and are {}'s advantage: how many times lower the \
             baseline's throughput, or higher its latency, CPU, memory or bytes. The rows below \
             the first two are measured at {} ticks/s, the highest rate of the ladder every \
             server held in every repeat (or the lowest of the ladder). ‡k/n: in k of the n \
             steps behind the figure the load client used ≥ {:.0}% of its CPUs, so the client, \
             not the server, may have limited it; on the first row, the step where the limit \
             was found: the server's real limit may be higher. †k/n: k of the n steps did \
             not hold (the server could not keep up at that rate in that repeat): the figure \
             describes an overloaded server. \"Out of CPU\" says which side \
             used ≥ {:.0}% of its CPUs at the rate that failed (\"neither\": the latency bound \
             or a loss failed it with CPU to spare).",
            if self.config.tickfan_stdin {
                "; in this run tickfan was fed as the baselines are (`feed-sim | tickfan \
                 --source stdin`): its feed is the `feed-sim` process, and its parsing of each \
                 line is its server CPU"
            } else {
                ""
            },
            base.label(),
            plot::human(reference),
            100.0 * BUSY_SHARE,
            100.0 * BUSY_SHARE,
        );
        if self.config.count_writes {
            let _ = writeln!(
                s,
                "\nWrites are the server's `write`, `writev`, `sendto` and `sendmsg` calls in the \
                 measured window (`perf stat` on the syscall tracepoints; the feed's threads and \
                 process left out)."
            );
            let mut reasons: Vec<&str> = self
                .steps
                .iter()
                .filter_map(|st| st.report.as_ref()?.writes_note.as_deref())
                .collect();
            reasons.sort_unstable();
            reasons.dedup();
            for why in reasons {
                let _ = writeln!(s, "Writes not counted (n/a) in some steps: {why}.");
            }
        }
        s.push_str(&self.floor_note());
        s.push_str(&self.head_to_head());
        s
    }
}

impl Comparison {
    /// What the loopback floor measured, and how the "beyond the floor" row uses it.
    fn floor_note(&self) -> String {
        let Some(floor) = &self.floor else { return String::new() };
        let points: Vec<String> = floor
            .points
            .iter()
            .filter(|p| p.pace == 0.0)
            .map(|p| {
                format!(
                    "k = {} by {}: {:.2} µs per write",
                    p.k,
                    p.submit.label(),
                    p.cpu_us_per_write
                )
            })
            .collect();
        let n = floor.points.first().map_or(0, |p| p.conns);
        let mut note = format!(
            "\nLoopback floor (`bench floor`, measured before the steps, writer on the server's \
             CPU, reader on the client's): one write system call of k {}-byte frames to each of \
             {n} sockets in turn costs {}. \"Beyond the floor\" is the share of a server's CPU \
             left after taking away what its writes, with as many frames each as it put in \
             them on average, would cost at that floor (the cheaper call's, for each k): its \
             own work (event loop, encoding, bookkeeping) and what makes its writes dearer than \
             a tight loop's.\n",
            floor.frame_bytes,
            points.join(", ")
        );
        let paced: Vec<String> = floor
            .points
            .iter()
            .filter(|p| p.pace > 0.0)
            .map(|p| format!("{:.0}k writes/s: {:.2} µs", p.writes_per_s / 1e3, p.cpu_us_per_write))
            .collect();
        if !paced.is_empty() {
            let _ = write!(
                note,
                "\nIn the tight loop the reader is always busy and a write seldom has to wake it; \
                 a thin stream's client is asleep when its message comes, and on loopback waking \
                 it is the writer's CPU. Paced, one frame per write in a burst every millisecond \
                 and sleeping in between, a write cost {} (the bursts' CPU only). \"Beyond the \
                 paced floor\" adds to each write what waking its reader cost at the step's own \
                 rate of writes (interpolated between those paces in log scale, falling to \
                 nothing at the tight loop's rate).\n",
                paced.join(", ")
            );
        }
        note
    }

    /// The first server against each other one at the highest rate of the ladder both held
    /// in every repeat: head to head above the rate the weakest server caps the main table at.
    fn head_to_head(&self) -> String {
        let servers = &self.config.servers;
        let Some((&base, others)) = servers.split_first() else { return String::new() };
        if others.is_empty() {
            return String::new();
        }
        let median = |f: Figure| f.spread.map(|sp| sp.median);
        let report =
            |f: fn(&crate::Report) -> Option<f64>| move |st: &Step| st.report.as_ref().and_then(f);
        let rows: Vec<PairRow<'_>> = vec![
            (
                "delivered msgs per server CPU-second",
                Some(true),
                Box::new(|sv, rate| {
                    median(self.at_rate(sv, rate, report(|r| r.msgs_per_server_cpu_sec)))
                }),
                plot::human,
            ),
            (
                "p99 latency (ms)",
                Some(false),
                Box::new(|sv, rate| {
                    median(self.at_rate(sv, rate, report(|r| Some(r.latency_us.p99 as f64 / 1e3))))
                }),
                |v| format!("{v:.2}"),
            ),
            (
                "server writes per delivered message",
                Some(false),
                Box::new(|sv, rate| {
                    median(self.at_rate(sv, rate, report(crate::Report::writes_per_msg)))
                }),
                |v| format!("{v:.3}"),
            ),
            (
                "server CPU beyond its writes at the floor (%)",
                None,
                Box::new(|sv, rate| median(self.at_rate(sv, rate, |st| self.beyond_floor(st)))),
                |v| format!("{v:.0}"),
            ),
            (
                "server CPU beyond its writes at the paced floor (%)",
                None,
                Box::new(|sv, rate| {
                    median(self.at_rate(sv, rate, |st| self.beyond_paced_floor(st)))
                }),
                |v| format!("{v:.0}"),
            ),
        ];
        let mut s = format!(
            "\n{} head to head with each server, at the highest rate of the ladder both held in \
             every repeat (medians; ratio = {}'s advantage):\n\n| | ",
            base.label(),
            base.label()
        );
        s.push_str(&others.iter().map(|sv| sv.label()).collect::<Vec<_>>().join(" | "));
        s.push_str(" |\n|---|");
        s.push_str(&"--:|".repeat(others.len()));
        s.push('\n');
        let rates: Vec<Option<f64>> = others.iter().map(|&sv| self.common_rate(base, sv)).collect();
        s.push_str("| rate both held (ticks/s) |");
        for rate in &rates {
            let text = rate.map_or("– (none)".to_owned(), plot::human);
            let _ = write!(s, " {text} |");
        }
        s.push('\n');
        for (label, higher, cell, fmt) in &rows {
            let _ = write!(s, "| {label}: {} / other |", base.label());
            for (&sv, rate) in others.iter().zip(&rates) {
                let pair = rate.map(|r| (cell(base, r), cell(sv, r)));
                let text = match pair {
                    Some((Some(ours), Some(theirs))) => {
                        let ratio = match higher {
                            Some(true) if theirs > 0.0 => Some(ours / theirs),
                            Some(false) if ours > 0.0 => Some(theirs / ours),
                            _ => None,
                        };
                        match ratio {
                            Some(x) => format!("{} / {} ({x:.2}×)", fmt(ours), fmt(theirs)),
                            None => format!("{} / {}", fmt(ours), fmt(theirs)),
                        }
                    }
                    _ => "–".to_owned(),
                };
                let _ = write!(s, " {text} |");
            }
            s.push('\n');
        }
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

/// `(rate, median of f over the steps at that rate)`, by rate.
fn medians_by_rate<'a>(
    steps: impl Iterator<Item = &'a Step>,
    f: impl Fn(&Step) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let mut by_rate: Vec<(f64, Vec<f64>)> = Vec::new();
    for st in steps {
        let Some(v) = f(st) else { continue };
        match by_rate.iter_mut().find(|(r, _)| *r == st.rate) {
            Some((_, vs)) => vs.push(v),
            None => by_rate.push((st.rate, vec![v])),
        }
    }
    by_rate.sort_by(|a, b| a.0.total_cmp(&b.0));
    by_rate.into_iter().filter_map(|(r, vs)| Some((r, Spread::of(vs)?.median))).collect()
}

fn write_plots(cmp: &Comparison) -> anyhow::Result<Vec<PathBuf>> {
    let out = &cmp.config.out;
    let per_server = |f: &dyn Fn(&Step) -> Option<f64>| -> Vec<Series> {
        cmp.config
            .servers
            .iter()
            .map(|&sv| Series {
                name: sv.label().to_owned(),
                points: medians_by_rate(cmp.steps_of(sv), f),
                colour: Some(sv.colour()),
            })
            .collect()
    };
    let mut throughput = per_server(&|s| Some(s.report.as_ref()?.msgs_per_sec));
    throughput.push(Series {
        name: "expected (no loss)".into(),
        points: cmp
            .config
            .rates
            .iter()
            .map(|&r| (r, r * cmp.stream_share * cmp.config.conns as f64))
            .collect(),
        colour: Some(Server::REFERENCE_COLOUR),
    });
    let mut p99 = per_server(&|s| Some(s.report.as_ref()?.latency_us.p99 as f64 / 1000.0));
    let rates = &cmp.config.rates;
    p99.push(Series {
        name: format!("bound ({} ms)", cmp.config.p99_bound_ms),
        points: [rates.first(), rates.last()]
            .into_iter()
            .flatten()
            .map(|&r| (r, cmp.config.p99_bound_ms))
            .collect(),
        colour: Some(Server::REFERENCE_COLOUR + 1),
    });
    let reference = cmp.reference_rate();
    // Per server, the repeat whose p99 at the reference rate is the median one.
    let curves: Vec<Series> = cmp
        .config
        .servers
        .iter()
        .filter_map(|&sv| {
            let mut at: Vec<&crate::Report> =
                cmp.all_at(sv, reference).filter_map(|st| st.report.as_ref()).collect();
            at.sort_by_key(|r| r.latency_us.p99);
            let r = at.get(at.len() / 2)?;
            Some(Series { colour: Some(sv.colour()), ..Series::latency_curve(sv.label(), r) })
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
