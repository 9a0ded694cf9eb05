//! A fan-out worker: one thread, one single-threaded tokio runtime, one [`Shard`] of
//! connections. Nothing is shared between workers but the read-only symbol table, the
//! counters and the ring they are fed from, so the shard needs no lock (docs/architecture.md).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tickfan_proto::{unix_now_ns, SymbolTable};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::LocalSet;
use tokio_util::sync::CancellationToken;

use crate::backpressure::Budget;
use crate::config::Config;
use crate::fanout::Shard;
use crate::limits::SocketPermit;
use crate::market::Market;
use crate::metrics::Stats;
use crate::ring::Ring;

/// Frames delivered between two looks at the rest of the worker (client reads, handshakes).
const DRAIN_BATCH: usize = 1024;
/// How long shutdown waits for connections to flush and close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// What every task of one worker shares, on that worker's thread only.
#[derive(Debug)]
pub struct WorkerCtx {
    /// The connections and subscriptions of this worker.
    pub shard: RefCell<Shard>,
    /// Gateway configuration.
    pub cfg: Arc<Config>,
    /// Gateway-wide counters.
    pub stats: Arc<Stats>,
    /// The feed's symbols.
    pub symbols: Arc<SymbolTable>,
    /// Sockets in all and per client address (the handshake may charge a forwarded client).
    pub door: Arc<crate::limits::Door>,
    /// Client input held over all connections.
    pub inbound: Arc<crate::limits::InboundBudget>,
    /// The credentials clients must present; `None`: auth is off.
    pub auth: Option<Arc<crate::auth::Authenticator>>,
    /// TLS on the data port (`--tls-cert`); `None`: plain.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// This worker's open connections as its readiness driver watches them.
    pub io: crate::readiness::Io,
}

/// What a worker thread is started with.
#[derive(Debug)]
pub struct WorkerSetup {
    pub id: usize,
    pub ring: Arc<Ring>,
    /// Accepted sockets handed over by the listener, each with its place at the door.
    pub inbox: UnboundedReceiver<(std::net::TcpStream, SocketPermit)>,
    pub cfg: Arc<Config>,
    pub stats: Arc<Stats>,
    pub market: Arc<Market>,
    pub door: Arc<crate::limits::Door>,
    pub inbound: Arc<crate::limits::InboundBudget>,
    pub auth: Option<Arc<crate::auth::Authenticator>>,
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    pub cancel: CancellationToken,
    /// Starts the shutdown's drain (`Gateway::drain`).
    pub drain: CancellationToken,
}

/// Starts the worker's thread.
pub fn spawn(setup: WorkerSetup) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("tickfan-worker-{}", setup.id)).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return tracing::error!(error = %e, "cannot start worker runtime"),
        };
        LocalSet::new().block_on(&rt, run(setup));
    })
}

async fn run(setup: WorkerSetup) {
    let WorkerSetup {
        id,
        ring,
        mut inbox,
        cfg,
        stats,
        market,
        door,
        inbound,
        auth,
        tls,
        cancel,
        drain,
    } = setup;
    let symbols = market.symbols().clone();
    let budget = Budget::new(cfg.max_queued_bytes / cfg.worker_count());
    let shard = Shard::new(market, stats.clone(), cfg.slow_consumer, budget);
    let (io, poll) = match crate::readiness::Io::new() {
        Ok(io) => io,
        Err(e) => return tracing::error!(error = %e, "cannot create the worker's epoll set"),
    };
    let shard = RefCell::new(shard);
    let ctx = Rc::new(WorkerCtx { shard, cfg, stats, symbols, door, inbound, auth, tls, io });
    let driver = tokio::task::spawn_local(crate::readiness::drive(ctx.clone(), poll));
    let fanout = tokio::task::spawn_local(fan_out(ctx.clone(), id, ring, cancel.clone()));
    let stats_task = tokio::task::spawn_local(publish_stats(ctx.clone(), id, cancel.clone()));
    let liveness_task = tokio::task::spawn_local(liveness(ctx.clone(), cancel.clone()));
    let feed_task = tokio::task::spawn_local(feed_status(ctx.clone(), cancel.clone()));
    let deadlines_task = tokio::task::spawn_local(deadlines(ctx.clone(), cancel.clone()));
    let mut beat = tokio::time::interval(crate::health::BEAT);
    let health = &ctx.stats.health;
    // A critical task that ends before shutdown (a panic, which tokio catches in the task)
    // leaves the worker unable to serve its connections: the gateway is marked failed, not left
    // half alive, and this loop goes on only to answer `/healthz` with why.
    let mut critical = [("fan-out", Some(fanout)), ("readiness driver", Some(driver))];
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = drain.cancelled(), if !draining => {
                draining = true;
                let window = Duration::from_secs_f64(ctx.cfg.drain_secs);
                ctx.shard.borrow_mut().start_drain(Instant::now(), window);
            }
            _ = beat.tick() => health.beat(crate::health::Beater::Worker(id)),
            (task, done) = ended(&mut critical) => {
                let why = match done {
                    Err(e) if e.is_panic() => {
                        let panic = e.into_panic();
                        format!("panicked: {}", crate::health::panic_message(&*panic))
                    }
                    _ => "ended".to_owned(),
                };
                health.fail(format!("worker {id}'s {task} task {why}"));
            }
            accepted = inbox.recv() => match accepted {
                Some((stream, permit)) => {
                    tokio::task::spawn_local(crate::http::serve(ctx.clone(), stream, permit));
                }
                None => break,
            },
        }
    }
    let [(_, fanout), (_, driver)] = critical;
    // Shutdown: deliver what the ring still holds, then close everyone with 1001 after their
    // queued data, and give them a bounded time to flush.
    if let Some(fanout) = fanout {
        let _ = fanout.await;
    }
    stats_task.abort();
    liveness_task.abort();
    feed_task.abort();
    deadlines_task.abort();
    ctx.shard.borrow_mut().close_all(crate::close::CloseCode::GoingAway, "server shutting down");
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while !ctx.shard.borrow().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    if let Some(driver) = driver {
        driver.abort();
    }
    ctx.io.clear();
    tracing::debug!(worker = id, "worker stopped");
}

/// The first of `tasks` to end, with its name; that one is taken out (never again awaited).
async fn ended(
    tasks: &mut [(&'static str, Option<tokio::task::JoinHandle<()>>)],
) -> (&'static str, Result<(), tokio::task::JoinError>) {
    use std::future::Future;
    std::future::poll_fn(|cx| {
        for (name, task) in tasks.iter_mut() {
            if let Some(handle) = task {
                if let std::task::Poll::Ready(done) = std::pin::Pin::new(handle).poll(cx) {
                    *task = None;
                    return std::task::Poll::Ready((*name, done));
                }
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Pings every connection each `--ping-interval`, closing those that stopped answering, and
/// closes connections idle (without subscriptions) for `--idle-timeout`.
async fn liveness(ctx: Rc<WorkerCtx>, cancel: CancellationToken) {
    let secs = |s: f64| (s > 0.0).then(|| Duration::from_secs_f64(s));
    let (ping, idle) = (secs(ctx.cfg.ping_interval), secs(ctx.cfg.idle_timeout));
    // Without pings, idle connections are still looked for, a few times per timeout.
    let Some(period) = ping.or(idle.map(|i| (i / 4).max(Duration::from_millis(100)))) else {
        return;
    };
    let misses = ping.map(|_| ctx.cfg.ping_misses);
    // One slice of the connections every ~100 ms, each connection once per period: a round
    // over all of them at once stalled the fan-out for the time of one write per connection
    // (~100 ms for 10,000 here), which showed as a p99 of 50–85 ms at 10 ticks/s.
    let slices = (period.as_millis() / LIVENESS_SLICE.as_millis()).clamp(1, 1000) as usize;
    let mut part = 0;
    every(period / slices as u32, &cancel, || {
        let now = std::time::Instant::now();
        ctx.shard.borrow_mut().check_liveness(misses, idle, now, (part, slices));
        part = (part + 1) % slices;
    })
    .await;
}

/// Tells this worker's clients when the feed goes stale (no tick for `--stale-after`, or the
/// upstream lost) and when it is live again: `{"op":"status","feed":…}`.
async fn feed_status(ctx: Rc<WorkerCtx>, cancel: CancellationToken) {
    every(FEED_CHECK, &cancel, || {
        let stale = ctx.stats.feed.state(unix_now_ns()).is_stale();
        ctx.shard.borrow_mut().set_feed_stale(stale);
    })
    .await;
}

/// Carries out the connections' timed events (`deadlines`) as they fall due.
async fn deadlines(ctx: Rc<WorkerCtx>, cancel: CancellationToken) {
    every(crate::deadlines::TICK, &cancel, || {
        ctx.shard.borrow_mut().run_deadlines(Instant::now());
    })
    .await;
}

/// How often a worker looks at the feed's state.
const FEED_CHECK: Duration = Duration::from_millis(100);

/// How often the liveness check looks at one slice of the connections.
const LIVENESS_SLICE: Duration = Duration::from_millis(100);

/// Runs `step` every `period` (first after one period; late ticks delay the next ones) until
/// `cancel` fires.
async fn every(period: Duration, cancel: &CancellationToken, mut step: impl FnMut()) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => step(),
        }
    }
}

/// How often `sys.stats` is published.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// The gateway-wide counters at one instant, to turn into rates.
struct Snapshot {
    at: std::time::Instant,
    ticks_in: u64,
    frames_out: u64,
    bytes_out: u64,
    slow_drops: u64,
    gaps: u64,
    latency: hdrhistogram::Histogram<u64>,
}

impl Snapshot {
    fn take(stats: &Stats) -> Snapshot {
        Snapshot {
            at: std::time::Instant::now(),
            ticks_in: Stats::get(&stats.ticks_in),
            frames_out: Stats::get(&stats.frames_out),
            bytes_out: Stats::get(&stats.bytes_out),
            slow_drops: Stats::get(&stats.slow_consumer_drops),
            gaps: Stats::get(&stats.gaps_sent),
            latency: stats.merged_latency(),
        }
    }

    /// The body of a `sys.stats` message for the interval from `prev` to `self` (everything
    /// after `"ch","seq","ts"`; see docs/protocol.md).
    fn body(&self, prev: &Snapshot, stats: &Stats) -> String {
        let secs = (self.at - prev.at).as_secs_f64().max(1e-3);
        let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
        let mut window = self.latency.clone();
        if window.subtract(&prev.latency).is_err() {
            window = self.latency.clone();
        }
        let q = |q: f64| if window.is_empty() { 0 } else { window.value_at_quantile(q) };
        format!(
            "\"interval_ms\":{},\"connections\":{},\"ticks_in_per_s\":{:.1},\
             \"frames_out_per_s\":{:.1},\"bytes_out_per_s\":{:.1},\
             \"slow_consumer_drops_per_s\":{:.1},\"gaps_sent_per_s\":{:.1},\
             \"latency_us\":{{\"samples\":{},\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
            (secs * 1000.0).round(),
            stats.connections.load(std::sync::atomic::Ordering::Relaxed),
            rate(self.ticks_in, prev.ticks_in),
            rate(self.frames_out, prev.frames_out),
            rate(self.bytes_out, prev.bytes_out),
            rate(self.slow_drops, prev.slow_drops),
            rate(self.gaps, prev.gaps),
            window.len(),
            q(0.5),
            q(0.99),
            q(0.999),
            if window.is_empty() { 0 } else { window.max() },
        )
    }
}

/// Publishes `sys.stats` to this worker's subscribers once a second: rates over the last
/// interval and the internal latency of the ticks fanned out in it (all workers together).
async fn publish_stats(ctx: Rc<WorkerCtx>, id: usize, cancel: CancellationToken) {
    let mut prev = Snapshot::take(&ctx.stats);
    let mut churn = crate::memory::Churn::default();
    every(STATS_INTERVAL, &cancel, || {
        let trimmed = ctx.shard.borrow_mut().trim_queues();
        let settled = churn.settled(ctx.shard.borrow().len());
        if settled || trimmed >= crate::memory::RELEASE_AFTER_TRIM {
            crate::memory::release_freed();
        }
        // The queue-depth gauges of /metrics, sampled here rather than on the fan-out path.
        if let Some(q) = ctx.stats.queues.get(id) {
            let (total, max, blocked) = ctx.shard.borrow().queue_sample();
            q.total_bytes.store(total, std::sync::atomic::Ordering::Relaxed);
            q.max_bytes.store(max, std::sync::atomic::Ordering::Relaxed);
            q.blocked.store(blocked, std::sync::atomic::Ordering::Relaxed);
        }
        if !ctx.shard.borrow().has_stats_subscribers() {
            prev = Snapshot::take(&ctx.stats);
            return;
        }
        let now = Snapshot::take(&ctx.stats);
        let body = now.body(&prev, &ctx.stats);
        ctx.shard.borrow_mut().publish_stats(unix_now_ns(), &body);
        prev = now;
    })
    .await;
}

/// Drains the ring into the shard in batches and flushes the connections they touched: at once
/// while the worker has time to spare; when it is busy (see [`Hold`]), after a hold of up to
/// `--flush-window-us`, all connections under one deadline, so that a busy worker writes more
/// frames per syscall.
/// Latency is recorded when a batch's frames are all written.
async fn fan_out(ctx: Rc<WorkerCtx>, id: usize, ring: Arc<Ring>, cancel: CancellationToken) {
    // Producer timestamps of the frames delivered since the last flush, then their latencies
    // in µs once flushed.
    let mut batch_ts: Vec<u64> = Vec::with_capacity(DRAIN_BATCH);
    let mut hold = Hold::new(Duration::from_micros(ctx.cfg.flush_window_us));
    // When the frames held now must be written at the latest.
    let mut deadline: Option<Instant> = None;
    loop {
        let stopping = tokio::select! {
            biased;
            _ = cancel.cancelled() => true,
            _ = ring.woken() => false,
            _ = sleep_until_some(deadline) => false,
        };
        loop {
            let started = Instant::now();
            {
                let mut shard = ctx.shard.borrow_mut();
                for _ in 0..DRAIN_BATCH {
                    let Some(frame) = ring.pop() else { break };
                    batch_ts.push(frame.ts);
                    shard.deliver(&frame);
                }
                if ctx.cfg.inject_panic == Some(crate::config::PanicSite::Fanout) {
                    panic!("injected panic in worker {id}'s fan-out (--inject-panic fanout)");
                }
                let window = hold.current();
                let due = deadline.is_some_and(|d| started >= d);
                let holding = !(stopping || window.is_zero() || due);
                let held = shard.flush_dirty_holding(holding);
                deadline = held.then(|| deadline.unwrap_or(started + window));
            }
            if deadline.is_none() && !batch_ts.is_empty() {
                let now = unix_now_ns();
                for ts in &mut batch_ts {
                    *ts = now.saturating_sub(*ts) / 1000;
                }
                ctx.stats.record_latency(id, &batch_ts);
                batch_ts.clear();
            }
            hold.worked(started.elapsed());
            if ring.is_empty() {
                break;
            }
            // Let this worker's connections read and handshake between batches.
            tokio::task::yield_now().await;
        }
        if stopping {
            return;
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// How long a worker holds delivered frames before writing them, from how busy it has been.
///
/// A write costs several µs of kernel CPU whether it carries one frame or ten
/// (`docs/performance.md`), so a worker that keeps up writes every batch at once (lowest
/// latency), and one that runs out of time holds every connection's frames for up to `max`,
/// writing more of them per syscall exactly when CPU is short (see
/// `Shard::flush_dirty_holding`). Busy is the share of wall time spent delivering and
/// writing, averaged over ~100 ms windows: under [`HOLD_FROM`] (25 %) no hold, then linearly
/// up to `max` at [`HOLD_FULL`] (75 %). The hold itself lowers the busy share, so a loaded
/// worker settles a little above a quarter busy, holding what keeps it there.
#[derive(Debug)]
pub struct Hold {
    max: Duration,
    /// Start of the current measuring window, and the work done in it.
    window_start: Instant,
    busy_in_window: Duration,
    /// Smoothed busy share, 0.0 to 1.0.
    busy: f64,
}

/// Busy share under which a worker holds nothing ([`Hold`]).
pub const HOLD_FROM: f64 = 0.25;
/// Busy share from which a worker holds for the whole `--flush-window-us`.
pub const HOLD_FULL: f64 = 0.75;

/// Length of one measuring window of [`Hold`].
const HOLD_WINDOW: Duration = Duration::from_millis(100);

impl Hold {
    pub fn new(max: Duration) -> Hold {
        Hold { max, window_start: Instant::now(), busy_in_window: Duration::ZERO, busy: 0.0 }
    }

    /// Notes `work` of delivering and writing just done.
    pub fn worked(&mut self, work: Duration) {
        self.worked_at(work, Instant::now());
    }

    fn worked_at(&mut self, work: Duration, now: Instant) {
        self.busy_in_window += work;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= HOLD_WINDOW {
            let share = (self.busy_in_window.as_secs_f64() / elapsed.as_secs_f64()).min(1.0);
            // A long quiet gap counts as one window: the worker was idle through it.
            self.busy = 0.5 * self.busy + 0.5 * share;
            self.window_start = now;
            self.busy_in_window = Duration::ZERO;
        }
    }

    /// The hold to apply now.
    pub fn current(&self) -> Duration {
        let scale = ((self.busy - HOLD_FROM) / (HOLD_FULL - HOLD_FROM)).clamp(0.0, 1.0);
        self.max.mul_f64(scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_with_time_to_spare_holds_nothing_a_busy_one_up_to_the_window() {
        let max = Duration::from_micros(1000);
        let mut hold = Hold::new(max);
        let t0 = Instant::now();
        // 20 % busy for a second: no hold.
        for i in 1..=10 {
            hold.worked_at(Duration::from_millis(20), t0 + HOLD_WINDOW * i);
        }
        assert_eq!(hold.current(), Duration::ZERO);
        // Saturated for a second: the whole window.
        for i in 11..=20 {
            hold.worked_at(HOLD_WINDOW, t0 + HOLD_WINDOW * i);
        }
        assert!(hold.current() >= max.mul_f64(0.99), "{:?}", hold.current());
        // Half busy for a while: about half of it.
        for i in 21..=40 {
            hold.worked_at(Duration::from_millis(50), t0 + HOLD_WINDOW * i);
        }
        let half = hold.current().as_secs_f64() / max.as_secs_f64();
        assert!((0.45..0.55).contains(&half), "{half}");
        // Disabled: never.
        let mut off = Hold::new(Duration::ZERO);
        off.worked_at(HOLD_WINDOW, t0 + HOLD_WINDOW);
        assert_eq!(off.current(), Duration::ZERO);
    }
}
