//! tickfan gateway: market data from a tick source to thousands of WebSocket subscribers,
//! each tick encoded once into a complete frame whose bytes every subscriber shares.
//!
//! Data flow (docs/architecture.md), one module per step:
//!
//! ```text
//! source ──Tick──► frame (encode once) ──Frame──► ring (one per worker, lock-free)
//!        ──► fanout (per-worker shard: channels index, backpressure queues, sendmsg)
//!        ──► sockets
//! listener ──accepted TCP──► worker ──► http (/ws upgrade via fastwebsockets, /healthz)
//!                                   └──► conn (client frames, protocol requests)
//! ```
//!
//! Book state, checksums and the resume history live in `market`, written by the producer
//! before a frame enters the rings. Ticks come from a `source`: the embedded simulator, NDJSON
//! on stdin or from a file, or NATS (core or JetStream), where many gateways share one feed
//! (`docs/feed-format.md`, `docs/scaling.md`).

pub mod admin;
pub mod auth;
pub mod backpressure;
pub mod channels;
pub mod close;
pub mod config;
pub mod conn;
pub mod deadlines;
pub mod deflate;
pub mod derived;
pub mod fanout;
pub mod forms;
pub mod frame;
pub mod health;
pub mod http;
pub mod inbound;
pub mod limits;
pub mod listener;
pub mod market;
pub mod memory;
pub mod metrics;
pub mod ops;
pub mod protocol;
pub mod proxy;
pub mod readiness;
pub mod ring;
pub mod source;
pub mod sse;
pub mod tls;
pub mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use tickfan_proto::SymbolTable;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use metrics::Stats;

/// A running gateway: its threads, and how to stop them.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    /// The admin listener's address, when there is one.
    admin_addr: Option<SocketAddr>,
    /// What the open-file limit allows, as a line for the operator.
    capacity: String,
    /// Whether handshakes must present credentials.
    auth_enabled: bool,
    symbols: Arc<SymbolTable>,
    stats: Arc<Stats>,
    /// Stops the listener and the workers.
    cancel: CancellationToken,
    /// Starts the workers' drain (`drain`).
    drain: CancellationToken,
    /// Stops the source's thread.
    stop_feed: Arc<AtomicBool>,
    producer: Option<JoinHandle<()>>,
    /// False for a source that may block in a read `stop_feed` cannot interrupt (stdin).
    wait_for_producer: bool,
    listener: Option<JoinHandle<()>>,
    admin: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    /// The data port's certificate, with TLS on.
    certs: Option<Arc<tls::CertStore>>,
}

impl Gateway {
    /// Binds the listening socket and starts the producer, the workers and the listener.
    pub fn start(cfg: Config) -> anyhow::Result<Gateway> {
        cfg.validate().map_err(anyhow::Error::msg)?;
        let mut cfg = cfg;
        let admin_socket = match cfg.admin_listen {
            None => None,
            Some(at) => Some(listener::bind(at).with_context(|| {
                format!("cannot listen on {at} (--admin-listen): choose another address")
            })?),
        };
        // The address bound (port 0 picks one), for the data port's pages to point to.
        let admin_addr = admin_socket.as_ref().map(|s| s.local_addr()).transpose()?;
        cfg.admin_listen = admin_addr;
        let cfg = Arc::new(cfg);
        let stats = Arc::new(Stats::new(cfg.worker_count()));
        stats.feed.stale_after_ns.store((cfg.stale_after * 1e9) as u64, Ordering::Relaxed);
        let opened = source::open(&cfg, &stats)?;
        let symbols = Arc::new(opened.symbols);
        let window = market::ResumeWindow {
            max_age_ns: (cfg.resume_secs * 1e9) as u64,
            max_bytes: cfg.resume_bytes,
        };
        let market = Arc::new(market::Market::new(symbols.clone(), window, opened.epoch));
        stats.market.set(market.clone()).expect("set once, here");
        let socket = listener::bind(cfg.listen).with_context(|| {
            format!("cannot listen on {}: is another tickfan running? choose another address with --listen", cfg.listen)
        })?;
        let addr = socket.local_addr()?;

        let cancel = CancellationToken::new();
        let drain = CancellationToken::new();
        let (max_sockets, capacity) = limits::raise_open_files(cfg.max_connections)?;
        let door = limits::Door::new(limits::DoorLimits {
            max_sockets,
            max_handshakes: cfg.max_handshakes,
            max_per_ip: cfg.max_connections_per_ip,
            max_new_per_ip: cfg.max_new_connections_per_ip,
            new_window: std::time::Duration::from_secs_f64(cfg.new_connections_window),
            trusted_proxies: cfg.trust_proxy.clone(),
        });
        let inbound = Arc::new(limits::InboundBudget::new(cfg.max_inbound_bytes));
        let auth = cfg.authenticator().map_err(anyhow::Error::msg)?.map(Arc::new);
        let certs = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(tls::CertStore::open(cert, key)?)),
            _ => None,
        };
        let tls = certs.clone().map(tls::server_config).transpose()?;
        stats.door.set(door.clone()).expect("set once, here");
        stats.inbound.set(inbound.clone()).expect("set once, here");

        let mut rings = Vec::new();
        let mut inboxes = Vec::new();
        let mut workers = Vec::new();
        for id in 0..cfg.worker_count() {
            let ring = Arc::new(ring::Ring::new(cfg.ring_capacity));
            let (tx, inbox) = tokio::sync::mpsc::unbounded_channel();
            workers.push(worker::spawn(worker::WorkerSetup {
                id,
                ring: ring.clone(),
                inbox,
                cfg: cfg.clone(),
                stats: stats.clone(),
                market: market.clone(),
                door: door.clone(),
                inbound: inbound.clone(),
                auth: auth.clone(),
                tls: tls.clone(),
                cancel: cancel.clone(),
                drain: drain.clone(),
            })?);
            rings.push(ring);
            inboxes.push(tx);
        }
        stats.rings.set(rings.clone()).expect("set once, here");
        let mut listener =
            listener::Listener::new(socket, inboxes, door, stats.clone(), cancel.clone());
        listener.inject_panic = cfg.inject_panic == Some(config::PanicSite::Listener);
        let listener = listener.spawn()?;
        let admin = match admin_socket {
            None => None,
            Some(socket) => Some(admin::spawn(
                socket,
                stats.clone(),
                symbols.len(),
                addr.port(),
                cancel.clone(),
            )?),
        };
        let stop_feed = Arc::new(AtomicBool::new(false));
        let producer = {
            let publisher = source::Publisher::new(market.clone(), rings, stats.clone());
            let (run, stop) = (opened.run, stop_feed.clone());
            let (stats, inject) = (stats.clone(), cfg.inject_panic);
            std::thread::Builder::new().name("tickfan-feed".into()).spawn(move || {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if inject == Some(config::PanicSite::Feed) {
                        std::thread::sleep(std::time::Duration::from_millis(300));
                        panic!("injected panic in the feed thread (--inject-panic feed)");
                    }
                    run(publisher, &stop)
                }));
                if let Err(panic) = ran {
                    let msg = health::panic_message(&*panic);
                    stats.health.fail(format!("the feed thread panicked: {msg}"));
                }
            })?
        };
        Ok(Gateway {
            addr,
            admin_addr,
            capacity,
            auth_enabled: auth.is_some(),
            symbols,
            stats,
            cancel,
            drain,
            stop_feed,
            producer: Some(producer),
            wait_for_producer: !opened.may_block,
            listener: Some(listener),
            admin,
            workers,
            certs,
        })
    }

    /// Reads the TLS certificate and key files again (SIGHUP), for handshakes from now on:
    /// `Ok(false)` without TLS; on an error the current certificate stays.
    pub fn reload_tls(&self) -> Result<bool, tls::ConfigError> {
        match &self.certs {
            None => Ok(false),
            Some(certs) => certs.reload().map(|()| true),
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address (`--admin-listen`), if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Whether WebSocket handshakes must present an API key or a JWT.
    pub fn auth_enabled(&self) -> bool {
        self.auth_enabled
    }

    /// How many connections the gateway takes, and the open-file limit behind that.
    pub fn capacity(&self) -> &str {
        &self.capacity
    }

    pub fn symbols(&self) -> &Arc<SymbolTable> {
        &self.symbols
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Starts draining before a shutdown (`--drain-secs`): every client gets its `shutdown`
    /// notice now and its close (1001) at its turn within the window; `/readyz` answers 503
    /// and new connections are turned away meanwhile. Data flows to the others until then.
    /// Returns at once: wait for the window (or for [`connections`](Self::connections) to
    /// reach 0), then [`shutdown`](Self::shutdown).
    pub fn drain(&self) {
        self.stats.draining.store(true, Ordering::Relaxed);
        self.drain.cancel();
    }

    /// Open connections (WebSocket and Server-Sent Events).
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed).max(0) as u64
    }

    /// Graceful shutdown: stop accepting and producing, flush every connection's queue, send
    /// close 1001 to every client, and join all threads (bounded by the workers' grace time).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stop_feed.store(true, Ordering::Relaxed);
        if let Some(p) = self.producer.take().filter(|_| self.wait_for_producer) {
            let _ = p.join();
        }
        self.cancel.cancel();
        if let Some(l) = self.listener.take() {
            if l.join().is_err() {
                tracing::error!("the listener thread panicked");
            }
        }
        if let Some(a) = self.admin.take() {
            let _ = a.join();
        }
        for (i, w) in self.workers.drain(..).enumerate() {
            if w.join().is_err() {
                tracing::error!("worker {i}'s thread panicked");
            }
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}
