//! `bench`: tickfan's load harness (DESIGN §5). `bench run` is the load client; the comparison
//! against socket.io / ws / naive Rust (`bench compare`) is issue #3.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bench::RunConfig;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bench",
    version,
    about = "Load-test a tickfan gateway with real WebSocket clients"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Open N connections, subscribe, verify seq continuity, measure throughput and latency.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Gateway WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    target: String,
    /// Connections to open.
    #[arg(long, default_value_t = 100)]
    conns: usize,
    /// Channels per connection, comma-separated (sent as `?streams=`).
    #[arg(long, default_value = "trades.*")]
    streams: String,
    /// Measured seconds, after warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds between the last connect and the start of measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// PID of a local gateway, to report its CPU use and messages per server CPU-second.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Client threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> ExitCode {
    let Cmd::Run(args) = Cli::parse().cmd;
    if !(args.duration > 0.0 && args.warmup >= 0.0) {
        eprintln!("bench: --duration must be > 0 and --warmup >= 0 (seconds)");
        return ExitCode::from(2);
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        rt.worker_threads(args.threads);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = RunConfig {
        target: args.target,
        conns: args.conns,
        streams: args.streams,
        duration: Duration::from_secs_f64(args.duration),
        warmup: Duration::from_secs_f64(args.warmup),
        server_pid: args.server_pid,
    };
    let report = match rt.block_on(bench::run(cfg)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.markdown());
    if let Some(path) = args.json {
        let json = serde_json::to_string_pretty(&report).expect("report serialises");
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!("bench: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if report.failed() {
        eprintln!(
            "bench: FAILED: {} undeclared gaps, {} messages delivered",
            report.undeclared_gaps, report.msgs
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
