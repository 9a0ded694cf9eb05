//! `--source nats://HOST:PORT`: ticks from a NATS server that a publisher (`feed-sim --sink
//! nats://…`, or an exchange adapter writing the same format) sends to. Any number of
//! gateways consume the same subjects, so each tick reaches every gateway with the
//! publisher's seq and under the publisher's epoch: **every gateway emits the same
//! `(ch, seq, epoch)` for the same tick**, and a client may resume on any of them.
//!
//! Subjects (`docs/feed-format.md`, "NATS"): ticks and book snapshots on `md.<kind>.<SYM>`;
//! the announcement is asked on `md.symbols.get` before the gateway starts and repeated by the
//! publisher on `md.symbols`. A different announcement there means the publisher restarted
//! under a new epoch: the gateway then shuts down (see [`FeedHealth::fatal`]) for its
//! supervisor to start it on the new one, since its clients' seqs mean nothing any more.
//!
//! Outages: the client reconnects with backoff (100 ms doubling to 2 s, forever); while it is
//! disconnected the feed is `down` (`/readyz` 503, clients told `stale`). What the gateway
//! missed shows as seq jumps when ticks return, declared to subscribers as `gap` notices with
//! reason `feed` (books wait for the next snapshot) — never silent loss.
//!
//! [`FeedHealth::fatal`]: super::FeedHealth::fatal

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tickfan_proto::feed::Announcement;
use tickfan_proto::SymbolTable;

use super::intake::Intake;
use super::{Opened, Publisher};
use crate::metrics::Stats;

/// Subject the announcement is asked on.
pub const SYMBOLS_GET: &str = "md.symbols.get";
/// Subject the publisher repeats its announcement on.
pub const SYMBOLS: &str = "md.symbols";
/// Every subject of the feed.
const ALL: &str = "md.>";
/// Messages the client may hold for this gateway before NATS counts it a slow consumer (and
/// drops, which shows as declared gaps): a few seconds of a busy feed.
const SUBSCRIPTION_CAPACITY: usize = 1 << 20;
/// How often the run loop looks at `stop`.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// Connects (retrying in the background), asks the publisher for its announcement (waiting
/// for it, as a gateway without its universe cannot start), and returns the loop that
/// consumes the feed.
pub fn open(url: &str, stats: Arc<Stats>) -> anyhow::Result<Opened> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    stats.feed.connected.store(false, Ordering::Relaxed);
    let events = stats.clone();
    let options = async_nats::ConnectOptions::new()
        .name("tickfan")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(backoff)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .event_callback(move |event| {
            let stats = events.clone();
            async move { on_event(&stats, event) }
        });
    let client = rt
        .block_on(options.connect(url))
        .with_context(|| format!("cannot use the NATS server(s) {url}"))?;
    let ann = rt.block_on(ask_announcement(&client, url))?;
    tracing::info!(
        symbols = ann.symbols.len(),
        epoch = ann.epoch.as_deref().unwrap_or("(none: this gateway's own)"),
        "feed announced on NATS"
    );
    let symbols = SymbolTable::new(ann.symbols.clone());
    let table = symbols.clone();
    let epoch = ann.epoch.clone();
    Ok(Opened {
        symbols,
        epoch,
        run: Box::new(move |publisher: Publisher, stop: &AtomicBool| {
            let intake = Intake::new(table, ann.clone(), publisher);
            rt.block_on(consume(client, intake, ann, stats, stop));
        }),
        may_block: false,
    })
}

fn on_event(stats: &Stats, event: async_nats::Event) {
    use async_nats::Event;
    match event {
        Event::Connected => {
            stats.feed.connected.store(true, Ordering::Relaxed);
            tracing::info!("nats: connected");
        }
        Event::Disconnected => {
            stats.feed.connected.store(false, Ordering::Relaxed);
            tracing::warn!("nats: disconnected; reconnecting (the feed is down meanwhile)");
        }
        Event::SlowConsumer(_) => {
            tracing::warn!("nats: this gateway fell behind the feed; NATS dropped messages (declared to clients as gaps)");
        }
        other => tracing::warn!("nats: {other}"),
    }
}

/// Asks `md.symbols.get` until the publisher answers.
async fn ask_announcement(client: &async_nats::Client, url: &str) -> anyhow::Result<Announcement> {
    let started = Instant::now();
    let mut told = Duration::ZERO;
    loop {
        let asked =
            tokio::time::timeout(Duration::from_secs(2), client.request(SYMBOLS_GET, Bytes::new()))
                .await;
        match asked {
            Ok(Ok(reply)) => {
                return Announcement::parse(&reply.payload)
                    .map_err(|e| anyhow::anyhow!("the feed's announcement on {SYMBOLS_GET}: {e}"));
            }
            Ok(Err(e)) if started.elapsed() >= told => {
                tracing::info!(error = %e, "waiting for a publisher on {url} to answer {SYMBOLS_GET}");
                told += Duration::from_secs(5);
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Feeds every message of `md.>` to the intake, a batch per wake-up, until `stop`.
async fn consume(
    client: async_nats::Client,
    mut intake: Intake,
    announced: Announcement,
    stats: Arc<Stats>,
    stop: &AtomicBool,
) {
    let mut messages = match client.subscribe(ALL).await {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("cannot subscribe to {ALL}: {e}");
            tracing::error!("{msg}");
            let _ = stats.feed.fatal.set(msg);
            return;
        }
    };
    let mut check = tokio::time::interval(STOP_CHECK);
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            first = messages.next() => {
                let Some(first) = first else { break };
                let mut next = Some(first);
                // Everything already received is one batch: one wake-up of each worker.
                while let Some(msg) = next {
                    if !take(&mut intake, &msg, &announced, &stats) {
                        return;
                    }
                    next = messages.next().now_or_never().flatten();
                }
                intake.flush();
            }
            _ = check.tick() => {}
        }
    }
}

/// One message: a tick or snapshot for the intake, the announcement again (fine), a different
/// one (fatal: `false`), or another gateway's request (not ours to answer).
fn take(
    intake: &mut Intake,
    msg: &async_nats::Message,
    announced: &Announcement,
    stats: &Stats,
) -> bool {
    let subject = msg.subject.as_str();
    if subject == SYMBOLS_GET {
        return true;
    }
    if subject == SYMBOLS {
        return match Announcement::parse(&msg.payload) {
            Ok(a) if a == *announced => true,
            Ok(a) => {
                let was = announced.epoch.as_deref().unwrap_or("none");
                let now = a.epoch.as_deref().unwrap_or("none");
                let msg = format!(
                    "the publisher restarted under a new epoch ({was} -> {now}) or changed its \
                     symbols: this gateway's seqs mean nothing any more; shutting down to be \
                     started again on the new epoch"
                );
                tracing::error!("{msg}");
                let _ = stats.feed.fatal.set(msg);
                false
            }
            Err(_) => {
                intake.parse(Ok(&msg.payload));
                true
            }
        };
    }
    if let Some(tick) = intake.parse(Ok(&msg.payload)) {
        intake.push(tick);
    }
    true
}

/// Reconnect delays: 100 ms doubling to 2 s.
fn backoff(attempts: usize) -> Duration {
    Duration::from_millis((100u64 << attempts.min(5)).min(2000))
}
