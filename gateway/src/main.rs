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

    abort_on_panic();
    if let Err(msg) = cfg.validate() {
        eprintln!("tickfan: {msg}");
        return ExitCode::from(2);
    }

    let workers = cfg.worker_count();
    let (ws, http) = if cfg.tls_cert.is_some() { ("wss", "https") } else { ("ws", "http") };
    let feed = match &cfg.source {
        gateway::source::SourceSpec::Embedded => format!("embedded feed, {} ticks/s", cfg.rate),
        other => format!("source {other}"),
    };
    let gateway_drain_secs = cfg.drain_secs;
    let gateway = match Gateway::start(cfg) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("tickfan: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let addr = gateway.local_addr();
    let symbols = gateway.symbols().len();
    println!(
        "tickfan listening on {http}://{addr}  ({symbols} symbols, {feed}, {workers} workers)"
    );
    println!("  WebSocket  {ws}://{addr}/ws");
    println!(
        "  try        npx wscat -c {ws}://{addr}/ws -x '{{\"op\":\"subscribe\",\"id\":1,\"channels\":[\"trades.BTC-USD\"]}}' -w 5"
    );
    println!("  or         npx wscat -c '{ws}://{addr}/ws?streams=trades.BTC-USD,quotes.BTC-USD'");
    if gateway.auth_enabled() {
        println!("  auth       on: add ?token=<API key or JWT> to the URL, or send Authorization: Bearer");
    }
    // The admin listener speaks plain HTTP; the data port, TLS when it is on.
    let pages = match gateway.admin_addr() {
        Some(admin) => format!("http://{admin}"),
        None => format!("{http}://{addr}"),
    };
    println!("  dashboard  {pages}/dashboard      (open in a browser)");
    println!("  metrics    {pages}/metrics        (Prometheus)");
    println!("  health     {pages}/healthz  {pages}/readyz   stop with Ctrl-C");
    println!("  capacity   {}", gateway.capacity());

    let stats = gateway.stats().clone();
    let fatal =
        || stats.feed.fatal.get().cloned().or_else(|| stats.health.failure().map(str::to_owned));
    let reload = || match gateway.reload_tls() {
        Ok(true) => tracing::info!("SIGHUP: TLS certificate and key read again"),
        Ok(false) => tracing::info!("SIGHUP: nothing to reload (no TLS)"),
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: TLS not reloaded, the current certificate stays")
        }
    };
    let fatal = match wait_for_signal_or(fatal, reload) {
        Ok(fatal) => fatal,
        Err(e) => {
            eprintln!("tickfan: cannot wait for signals: {e}");
            None
        }
    };
    let drain = std::time::Duration::from_secs_f64(gateway_drain_secs);
    if fatal.is_none() && !drain.is_zero() && gateway.connections() > 0 {
        tracing::info!(
            connections = gateway.connections(),
            "draining: every client is told, then closed over {:.1} s (a second Ctrl-C stops now)",
            drain.as_secs_f64()
        );
        gateway.drain();
        let _ = wait_for_drain(&gateway, drain);
    }
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

/// A panic anywhere takes the process down at once (after the usual message, and a log line),
/// rather than leave a gateway half alive: tokio would catch a panic in a task and let the rest
/// run, a connection's socket and slot leaked, or a worker's clients left without data while
/// pings keep them connected. The supervisor (systemd, Kubernetes, Docker) restarts it, and
/// clients resume on the new process.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!("{info}; aborting");
        eprintln!("tickfan: a panic is a bug; aborting the process so that it is restarted");
        std::process::abort();
    }));
}

/// Blocks while the gateway drains: until `window` has passed (and a moment for the last
/// closes), every connection is gone, or a second SIGINT or SIGTERM.
fn wait_for_drain(gateway: &gateway::Gateway, window: std::time::Duration) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let deadline = tokio::time::Instant::now() + window + std::time::Duration::from_millis(200);
        let mut look = tokio::time::interval(std::time::Duration::from_millis(50));
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => return r,
                _ = term.recv() => return Ok(()),
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
                _ = look.tick() => if gateway.connections() == 0 { return Ok(()) },
            }
        }
    })
}

/// Blocks until SIGINT or SIGTERM (`None`), or until `fatal` reports why the gateway cannot
/// go on (looked at every 200 ms); calls `reload` on every SIGHUP.
fn wait_for_signal_or(
    fatal: impl Fn() -> Option<String>,
    reload: impl Fn(),
) -> std::io::Result<Option<String>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut look = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => return r.map(|()| None),
                _ = term.recv() => return Ok(None),
                _ = hup.recv() => reload(),
                _ = look.tick() => if let Some(why) = fatal() { return Ok(Some(why)) },
            }
        }
    })
}
