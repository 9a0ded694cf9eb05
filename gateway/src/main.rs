//! `tickfan`: the gateway binary. Parses flags, starts the gateway with its source (by default
//! the embedded simulated feed), prints how to connect, and shuts down gracefully on
//! SIGINT/SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use gateway::{Config, Gateway};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cfg = Config::parse();
    let filter: tracing_subscriber::filter::Targets = match cfg.log.parse() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tickfan: --log {:?} is not a log filter ({e}); try --log info", cfg.log);
            return ExitCode::from(2);
        }
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_target(false).with_writer(std::io::stderr))
        .with(filter)
        .init();

    if let Err(msg) = cfg.validate() {
        eprintln!("tickfan: {msg}");
        return ExitCode::from(2);
    }
    let files = raise_open_files_limit();
    let workers = cfg.worker_count();
    let feed = match &cfg.source {
        gateway::source::SourceSpec::Embedded => format!("embedded feed, {} ticks/s", cfg.rate),
        other => format!("source {other}"),
    };
    let gateway = match Gateway::start(cfg) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("tickfan: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let addr = gateway.local_addr();
    let symbols = gateway.symbols().len();
    println!("tickfan listening on http://{addr}  ({symbols} symbols, {feed}, {workers} workers)");
    println!("  WebSocket  ws://{addr}/ws");
    println!(
        "  try        npx wscat -c ws://{addr}/ws -x '{{\"op\":\"subscribe\",\"id\":1,\"channels\":[\"trades.BTC-USD\"]}}' -w 5"
    );
    println!("  or         npx wscat -c 'ws://{addr}/ws?streams=trades.BTC-USD,quotes.BTC-USD'");
    println!("  dashboard  http://{addr}/dashboard      (open in a browser)");
    println!("  metrics    http://{addr}/metrics        (Prometheus)");
    println!("  health     http://{addr}/healthz  http://{addr}/readyz   stop with Ctrl-C");
    println!("  open files {files}");

    let fatal = match wait_for_signal_or(|| gateway.stats().feed.fatal.get().cloned()) {
        Ok(fatal) => fatal,
        Err(e) => {
            eprintln!("tickfan: cannot wait for signals: {e}");
            None
        }
    };
    tracing::info!("shutting down: closing connections with 1001");
    gateway.shutdown();
    match fatal {
        None => ExitCode::SUCCESS,
        Some(why) => {
            eprintln!("tickfan: {why}");
            ExitCode::from(3)
        }
    }
}

/// Every connection is a file descriptor: raises the soft open-files limit to the hard one
/// (the most an unprivileged process may have), and says what it is.
fn raise_open_files_limit() -> String {
    let before = rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft);
    match (before, rlimit::increase_nofile_limit(u64::MAX)) {
        (Ok(before), Ok(now)) if now > before => {
            format!("up to {now} (soft limit raised from {before}): about that many connections")
        }
        (_, Ok(now)) => format!("up to {now}: about that many connections"),
        (_, Err(e)) => format!("limit unknown ({e})"),
    }
}

/// Blocks until SIGINT or SIGTERM (`None`), or until `fatal` reports why the gateway cannot
/// go on (looked at every 200 ms).
fn wait_for_signal_or(fatal: impl Fn() -> Option<String>) -> std::io::Result<Option<String>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut look = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => return r.map(|()| None),
                _ = term.recv() => return Ok(None),
                _ = look.tick() => if let Some(why) = fatal() { return Ok(Some(why)) },
            }
        }
    })
}
