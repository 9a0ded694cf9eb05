//! The servers compared: which they are, and starting each (pinned, with its feed) so that
//! it says where it listens.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use super::CompareConfig;
use crate::client::Protocol;

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
    /// The same libraries as a competent engineer uses them (`naive-ws --design strong`): one
    /// broadcast per channel, each tick serialised once, many frames fed per flush.
    #[value(name = "naive-strong")]
    #[serde(rename = "naive-strong")]
    NaiveStrong,
}

impl Server {
    pub fn label(self) -> &'static str {
        match self {
            Server::Tickfan => "tickfan",
            Server::Socketio => "socket.io",
            Server::Ws => "ws (Node)",
            Server::Uws => "uWS.js",
            Server::Naive => "naive Rust",
            Server::NaiveStrong => "strong Rust",
        }
    }

    /// Its colour in every plot (an index into the plots' palette): the same whichever
    /// servers a run compares.
    pub fn colour(self) -> usize {
        match self {
            Server::Tickfan => 0,
            Server::Uws => 1,
            Server::Ws => 2,
            Server::NaiveStrong => 3,
            Server::Socketio => 4,
            Server::Naive => 5,
        }
    }

    /// The first palette index after the servers': reference lines (expected, bounds).
    pub const REFERENCE_COLOUR: usize = 6;

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
            Server::Tickfan | Server::Naive | Server::NaiveStrong => None,
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

/// The name of the gateway's feed thread: the simulated feed, and the encoding of every tick
/// into its frame.
pub const FEED_THREAD: &str = "tickfan-feed";

/// The npm packages of the Node baselines (in the root `package.json`).
pub(super) const NODE_PACKAGES: [&str; 3] = ["socket.io", "ws", "@trufflesuite/uws-js-unofficial"];

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

/// A server started by [`start`] (and the feed piped into it); killed when dropped.
#[derive(Debug)]
pub struct Running {
    children: Vec<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Running {
    /// The server's PID, then its feed's if the feed is a process of its own.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The server's PID.
    pub fn server_pid(&self) -> u32 {
        self.children[0].id()
    }

    /// The PID of the feed process piped into the server (`None` for tickfan on its embedded
    /// feed, which is its thread [`FEED_THREAD`]).
    pub fn feed_pid(&self) -> Option<u32> {
        self.children.get(1).map(Child::id)
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
pub(super) fn pinned(cpus: &Option<String>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(cpus).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

pub(super) fn cpu_count(cpus: &Option<String>) -> usize {
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
    // feed-sim piped into the server: every baseline, and tickfan with `tickfan_stdin`.
    let mut piped_feed = || -> anyhow::Result<std::process::ChildStdout> {
        let mut feed = pinned(&cfg.server_cpus, cfg.bin_dir.join("feed-sim"));
        feed_args(&mut feed);
        // Timestamps as tickfan sends them, so that every server forwards the same bytes.
        feed.arg("--micros");
        let mut feed = feed
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?)
            .spawn()
            .context("cannot start feed-sim")?;
        let pipe = feed.stdout.take().expect("piped");
        children.push(feed);
        Ok(pipe)
    };
    let mut cmd = match server {
        Server::Tickfan => {
            let mut cmd = pinned(&cfg.server_cpus, cfg.bin_dir.join("tickfan"));
            cmd.args(["--listen", "127.0.0.1:0", "--log", "warn"]);
            let workers = cpu_count(&cfg.server_cpus);
            if workers > 0 {
                cmd.args(["--workers", &workers.to_string()]);
            }
            if cfg.tickfan_stdin {
                cmd.args(["--source", "stdin"]).stdin(piped_feed()?);
            } else {
                feed_args(&mut cmd);
                cmd.stdin(Stdio::null());
            }
            cmd
        }
        _ => {
            let pipe = piped_feed()?;
            let mut cmd = match server.script() {
                None => {
                    let mut cmd = pinned(&cfg.server_cpus, cfg.bin_dir.join("naive-ws"));
                    cmd.args(["--listen", "127.0.0.1:0"]);
                    if server == Server::NaiveStrong {
                        cmd.args(["--design", "strong"]);
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taskset_lists() {
        assert_eq!(cpu_count(&None), 0);
        assert_eq!(cpu_count(&Some("0".into())), 1);
        assert_eq!(cpu_count(&Some("0,2-3".into())), 3);
    }
}
