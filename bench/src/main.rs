//! `bench`: tickfan's load harness (docs/benchmarks.md). `bench run` is the load client; `bench compare`
//! runs the same workload against tickfan and the uWebSockets.js / socket.io / ws / naive-Rust
//! baselines.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bench::client::Protocol;
use bench::compare::{CompareConfig, Overrides, Scenario, Server};
use bench::plot::{self, Chart, Series};
use bench::{defaults, Report, RunConfig};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    version,
    about = "Load-test tickfan (and the baselines it is compared with) with real WebSocket clients"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Open N connections, subscribe, verify seq continuity, measure throughput and latency.
    Run(RunArgs),
    /// Sweep tick rates against tickfan, uWebSockets.js, socket.io, ws and naive Rust; print the
    /// ratios.
    Compare(CompareArgs),
    /// The loopback floor: the least CPU that writing WebSocket frames to N TCP sockets costs.
    ///
    /// No WebSocket library, no runtime: pre-built 130-byte tickfan trade frames are written
    /// by one pinned writer thread, k frames per socket in turn with one writev of k iovecs,
    /// while a reader thread on another CPU drains every socket through epoll. For each N of
    /// --conns and each k of --batch, for --duration seconds, it reports the writer thread's
    /// CPU µs per write, CPU ns per frame, writes/s and frames per CPU-second: the floor to
    /// hold the gateway's CPU per message against. Each connection takes two file descriptors;
    /// an N that RLIMIT_NOFILE cannot hold (after raising the soft limit to the hard one) is
    /// skipped. Example: `bench floor --conns 1000 --batch 1,16 --json floor.json`. With
    /// `--pace 0,14000` each point is also measured at 14,000 writes a second, which wake a
    /// sleeping reader as a thin stream's writes do.
    Floor(FloorArgs),
}

/// The settings `bench run` and `bench compare` share: one name, one meaning, one default.
#[derive(Debug, clap::Args)]
struct Workload {
    /// Each connection draws this many random symbols for the `{sym}` in --streams (for
    /// compare: instead of the scenarios' own).
    #[arg(long, value_name = "K")]
    random_symbols: Option<usize>,
    /// Symbols the server has (the gateway's and feed-sim's --symbols), to draw from.
    #[arg(long, default_value_t = defaults::SYMBOLS)]
    symbols: usize,
    /// Seed of the per-connection symbol draw (and, for compare, of the feed).
    #[arg(long, default_value_t = defaults::SEED)]
    seed: u64,
    /// Seconds between the last connect and the start of measuring (per step, for compare).
    #[arg(long, default_value_t = defaults::WARMUP_SECS)]
    warmup: f64,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// WebSocket URL (for socket.io: ws://host:port). Several, comma-separated, spread the
    /// connections over them in turn (gateways scaled out on NATS) and report the aggregate.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    target: String,
    /// Wire protocol of the server.
    #[arg(long, value_enum, default_value_t = Protocol::Tickfan)]
    protocol: Protocol,
    /// Channels per connection, comma-separated, e.g. `trades.*,book.BTC-USD`; with
    /// --random-symbols, `{sym}` stands for each of the connection's symbols:
    /// `trades.{sym},quotes.{sym}`.
    #[arg(long, visible_alias = "channels", default_value = "trades.*")]
    streams: String,
    /// Connections to open.
    #[arg(long, default_value_t = defaults::CONNS)]
    conns: usize,
    #[command(flatten)]
    workload: Workload,
    /// Measured seconds, after warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Connections opened per second (default: as fast as the server accepts).
    #[arg(long)]
    ramp: Option<f64>,
    /// 127.0.0.x source addresses to spread connections over (0: one per 20,000).
    #[arg(long, default_value_t = 0)]
    source_ips: usize,
    /// PID of a local server process, to report its CPU and memory (repeatable).
    #[arg(long)]
    server_pid: Vec<u32>,
    /// PID of a process that feeds the server (e.g. feed-sim piped into it): its CPU is
    /// reported as the feed's, apart from the server's (repeatable).
    #[arg(long)]
    feed_pid: Vec<u32>,
    /// Threads of the --server-pid processes with this name are the feed (the gateway's is
    /// `tickfan-feed`): their CPU is reported as the feed's, apart from the server's.
    #[arg(long, value_name = "NAME")]
    feed_thread: Option<String>,
    /// Count the --server-pid processes' write, writev, sendto and sendmsg calls over the
    /// measured window with `perf stat` (feed threads left out); "n/a" with the reason if perf
    /// is missing or refused.
    #[arg(long)]
    count_writes: bool,
    /// The gateway's Prometheus endpoint, e.g. http://127.0.0.1:8080/metrics: its internal
    /// latency over the measured window goes into the report beside the end-to-end latency.
    #[arg(long)]
    metrics_url: Option<String>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write report.json, report.md and plots (latency percentiles, msgs/s) into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Client threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Debug, clap::Args)]
struct CompareArgs {
    /// Servers to compare; the first is the one ratios are computed for.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tickfan,uws,ws,socketio,naive-strong,naive"
    )]
    servers: Vec<Server>,
    /// Scenarios to run, each into its own directory under --out (repeatable; default: all):
    /// hot (1,000 conns on trades.BTC-USD), fat (100 on trades.*,quotes.*), thin1k / thin10k
    /// (1,000 / 10,000 conns, each on trades and quotes of 3 random symbols), idle (10,000
    /// conns at 10 ticks/s: memory per idle connection).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,
    /// The ladder of offered tick rates (ticks/s), climbed in ascending order to the first
    /// that does not hold, then bisection between it and the last rate held (default: each
    /// scenario's own doubling ladder; idle keeps its 10 ticks/s).
    #[arg(long, value_delimiter = ',')]
    rates: Option<Vec<f64>>,
    /// Connections per step, instead of each scenario's.
    #[arg(long)]
    conns: Option<usize>,
    /// Channels per connection (`{sym}`: each of the connection's --random-symbols), instead
    /// of each scenario's.
    #[arg(long, visible_alias = "channels")]
    streams: Option<String>,
    #[command(flatten)]
    workload: Workload,
    /// Bisect until the last rate held and the first failed are within this ratio.
    #[arg(long, default_value_t = 1.25)]
    resolution: f64,
    /// Run the whole search this many times per server (repeat r runs every server before
    /// repeat r + 1) and report medians and ranges.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Measured seconds per step.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// A rate holds only with p99 latency under this.
    #[arg(long, default_value_t = 50.0)]
    p99_bound_ms: f64,
    /// A rate holds only if this share of the expected messages arrived.
    #[arg(long, default_value_t = 0.95)]
    min_delivery: f64,
    /// CPUs for the server and its feed (taskset list).
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// CPUs for the client (taskset list).
    #[arg(long, default_value = "1")]
    client_cpus: String,
    /// Do not pin anything (machines without taskset, or with one core).
    #[arg(long)]
    no_pin: bool,
    /// Directory of the `tickfan`, `feed-sim` and `naive-ws` binaries (default: this one's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Directory of the Node baselines.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/baselines"))]
    baselines_dir: PathBuf,
    /// Results directory.
    #[arg(long, default_value = "target/bench-compare")]
    out: PathBuf,
    /// Climb the whole ladder even after a rate that did not hold.
    #[arg(long)]
    keep_going: bool,
    /// Do not count the servers' write syscalls with `perf stat` (its tracepoints cost the
    /// server a little CPU per syscall).
    #[arg(long)]
    no_perf: bool,
    /// Do not measure the loopback floor (`bench floor`) before the steps.
    #[arg(long)]
    no_floor: bool,
    /// Feed tickfan as the baselines are fed: `feed-sim | tickfan --source stdin` (its parsing
    /// of each line counts as server CPU, as theirs does), not its embedded feed.
    #[arg(long)]
    tickfan_stdin: bool,
    /// Measure nothing: re-render compare.md and the plots of an earlier run's compare.json
    /// into --out.
    #[arg(long, value_name = "COMPARE_JSON")]
    from: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct FloorArgs {
    /// Connection counts (N), each set up once and measured for every k.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    conns: Vec<usize>,
    /// Frames per writev (k).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,64")]
    batch: Vec<usize>,
    /// Measured seconds per (N, k).
    #[arg(long, default_value_t = 1.0)]
    duration: f64,
    /// CPU for the writer thread (default: the first this process may use).
    #[arg(long)]
    writer_cpu: Option<usize>,
    /// CPU for the reader thread (default: the second this process may use, if any).
    #[arg(long)]
    reader_cpu: Option<usize>,
    /// Pin neither thread.
    #[arg(long, conflicts_with_all = ["writer_cpu", "reader_cpu"])]
    no_pin: bool,
    /// How the writes reach the kernel: one writev system call each, one sendmsg each, or a
    /// round of writes (one per socket) submitted through io_uring with one io_uring_enter;
    /// several: each point once per way.
    #[arg(long, value_delimiter = ',', default_value = "writev")]
    submit: Vec<bench::floor::Submit>,
    /// Writes per second to pace the writer at, 0 for as fast as it goes; several: each point
    /// once per pace. Paced, the writer writes in bursts every millisecond and sleeps between
    /// them, so its reader sleeps too and is woken as a server's clients are when messages come
    /// now and then (a tight loop keeps the reader busy and rarely wakes it). Not with
    /// io_uring.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pace: Vec<f64>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Every connection is a file descriptor, here and in the servers compare starts (they
    // inherit the limit): the soft limit goes up to the hard one.
    bench::compare::raise_open_files_limit();
    let result = match cli.cmd {
        Cmd::Run(args) => run(args),
        Cmd::Compare(args) => compare(args),
        Cmd::Floor(args) => floor(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let w = args.workload;
    if !(args.duration > 0.0 && w.warmup >= 0.0) {
        eprintln!("bench: --duration must be > 0 and --warmup >= 0 (seconds)");
        return Ok(ExitCode::from(2));
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        rt.worker_threads(args.threads);
    }
    let rt = rt.enable_all().build()?;
    let random_symbols = w
        .random_symbols
        .map(|k| bench::client::RandomSymbols::from_feed(k, w.symbols, w.seed))
        .transpose()?;
    let cfg = RunConfig {
        target: args.target,
        protocol: args.protocol,
        conns: args.conns,
        streams: args.streams,
        random_symbols,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(w.warmup),
        ramp: args.ramp,
        source_ips: args.source_ips,
        server_pids: args.server_pid,
        feed_pids: args.feed_pid,
        feed_thread: args.feed_thread,
        count_writes: args.count_writes,
        progress: true,
        metrics_url: args.metrics_url,
    };
    let report = rt.block_on(bench::run(cfg))?;
    print!("{}", report.markdown());
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &json)?;
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), &json)?;
        std::fs::write(dir.join("report.md"), report.markdown())?;
        match run_plots(&report, dir) {
            Ok(files) => eprintln!("bench: wrote {} and plots {files:?}", dir.display()),
            Err(e) => eprintln!("bench: {e:#}"),
        }
    }
    if report.failed() {
        eprintln!(
            "bench: FAILED: {} undeclared gaps, {} messages delivered",
            report.undeclared_gaps, report.msgs
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn run_plots(report: &Report, dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    let curve =
        [Series::latency_curve(format!("{} conns, {}", report.conns, report.streams), report)];
    let mut files = plot::write(
        &dir.join("latency"),
        &Chart::latency("End-to-end latency (receive time − ts)", &curve),
    )?;
    let rate = [Series {
        name: "delivered msgs/s".into(),
        points: (1..).zip(&report.msgs_per_sec_series).map(|(t, &v)| (f64::from(t), v)).collect(),
        colour: None,
    }];
    files.extend(plot::write(
        &dir.join("throughput"),
        &Chart {
            title: "Delivered messages per second",
            x_desc: "second of the measured window",
            y_desc: "msgs/s (all connections)",
            series: &rate,
            log_x: false,
            log_y: false,
            legend_lower_right: true,
            percentile_x: false,
        },
    )?);
    Ok(files)
}

fn compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    if let Some(from) = &args.from {
        let mut suite = bench::compare::load_suite(from)?;
        bench::compare::rewrite_suite(&mut suite, &args.out)?;
        for cmp in &suite.scenarios {
            println!("{}", cmp.ratio_table());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    let pin = |cpus: String| (!args.no_pin).then_some(cpus);
    let base = CompareConfig {
        servers: args.servers,
        resolution: args.resolution,
        repeats: args.repeats,
        symbols: args.workload.symbols,
        seed: args.workload.seed,
        duration: args.duration,
        warmup: args.workload.warmup,
        p99_bound_ms: args.p99_bound_ms,
        min_delivery: args.min_delivery,
        server_cpus: pin(args.server_cpus),
        client_cpus: pin(args.client_cpus),
        baselines_dir: args.baselines_dir,
        out: args.out,
        keep_going: args.keep_going,
        count_writes: !args.no_perf,
        floor: !args.no_floor,
        tickfan_stdin: args.tickfan_stdin,
        ..CompareConfig::new(bin_dir)
    };
    let overrides = Overrides {
        conns: args.conns,
        streams: args.streams,
        random_symbols: args.workload.random_symbols,
        rates: args.rates.map(|mut r| {
            r.sort_by(f64::total_cmp);
            r.dedup();
            r
        }),
    };
    let mut scenarios =
        if args.scenario.is_empty() { Scenario::ALL.to_vec() } else { args.scenario };
    let mut seen = Vec::new();
    scenarios.retain(|s| {
        !seen.contains(s) && {
            seen.push(*s);
            true
        }
    });
    let suite = bench::compare::compare_suite(&base, &scenarios, &overrides)?;
    for cmp in &suite.scenarios {
        if let Some(sc) = cmp.config.scenario {
            println!("\n## {}: {}\n", sc.name(), sc.about());
        }
        println!("{}", cmp.ratio_table());
    }
    println!(
        "Full results: {}/compare.md (every scenario's in its directory, with compare.json, \
         plots and logs/)",
        base.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn floor(args: FloorArgs) -> anyhow::Result<ExitCode> {
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        eprintln!("bench: --duration must be > 0 (seconds)");
        return Ok(ExitCode::from(2));
    }
    let (writer_cpu, reader_cpu) =
        if args.no_pin { (None, None) } else { bench::floor::default_cpus() };
    let cfg = bench::floor::FloorConfig {
        conns: args.conns,
        batches: args.batch,
        duration: Duration::from_secs_f64(args.duration),
        writer_cpu: if args.no_pin { None } else { args.writer_cpu.or(writer_cpu) },
        reader_cpu: if args.no_pin { None } else { args.reader_cpu.or(reader_cpu) },
        submit: args.submit,
        paces: args.pace,
    };
    let result = bench::floor::measure(&cfg)?;
    print!("{}", result.markdown());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)?;
    }
    Ok(ExitCode::SUCCESS)
}
