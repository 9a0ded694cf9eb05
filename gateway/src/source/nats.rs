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
use tickfan_proto::feed::nats::{backoff, ALL, STREAM, SYMBOLS, SYMBOLS_GET};
use tickfan_proto::feed::Announcement;
use tickfan_proto::SymbolTable;

use super::intake::Intake;
use super::{Opened, Publisher, CATCH_UP_AGE_NS, CATCH_UP_SLACK};
use crate::metrics::Stats;

/// Longest pull of the JetStream consumer (heartbeats every half of it).
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// Messages the client may hold for this gateway before NATS counts it a slow consumer (and
/// drops, which shows as declared gaps): a few seconds of a busy feed.
const SUBSCRIPTION_CAPACITY: usize = 1 << 20;
/// How often the run loop looks at `stop`.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// Connects (retrying in the background), asks the publisher for its announcement (waiting
/// for it, as a gateway without its universe cannot start), and returns the loop that
/// consumes the feed.
pub fn open(
    url: &str,
    stats: Arc<Stats>,
    jetstream: Option<Duration>,
    only: &[String],
) -> anyhow::Result<Opened> {
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
    let served = subset(&ann, only)?;
    let only = (!only.is_empty()).then(|| served.iter().map(|s| s.name.clone()).collect());
    let symbols = SymbolTable::new(served);
    let table = symbols.clone();
    let epoch = ann.epoch.clone();
    Ok(Opened {
        symbols,
        epoch,
        run: Box::new(move |publisher: Publisher, stop: &AtomicBool| {
            let intake = Intake::new(table, ann.clone(), publisher);
            let feed = Feed { client, announced: ann, stats, only };
            match jetstream {
                None => rt.block_on(feed.consume(intake, stop)),
                Some(back) => rt.block_on(feed.consume_stream(intake, back, stop)),
            }
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

/// The symbols of `ann` this gateway serves: all, or those of `only` (each must be announced).
fn subset(ann: &Announcement, only: &[String]) -> anyhow::Result<Vec<tickfan_proto::Symbol>> {
    if only.is_empty() {
        return Ok(ann.symbols.clone());
    }
    only.iter()
        .map(|name| {
            ann.symbols.iter().find(|s| s.name == *name).cloned().ok_or_else(|| {
                let some: Vec<&str> = ann.symbols.iter().take(5).map(|s| s.name.as_str()).collect();
                anyhow::anyhow!(
                    "--source-symbols: {name} is not in the feed ({} symbols: {}, …)",
                    ann.symbols.len(),
                    some.join(", ")
                )
            })
        })
        .collect()
}

/// What the consuming loop works with.
struct Feed {
    client: async_nats::Client,
    /// The publisher's whole announcement (what `md.symbols` must keep saying).
    announced: Announcement,
    stats: Arc<Stats>,
    /// The symbols served, when a subset (`--source-symbols`).
    only: Option<std::collections::HashSet<String>>,
}

impl Feed {
    /// Whether a message of `subject` (`md.<kind>.<SYM>`) is for a symbol this gateway serves.
    fn serves(&self, subject: &str) -> bool {
        match &self.only {
            None => true,
            Some(only) => subject.rsplit('.').next().is_some_and(|sym| only.contains(sym)),
        }
    }

    fn fail(&self, msg: String) {
        tracing::error!("{msg}");
        let _ = self.stats.feed.fatal.set(msg);
    }

    /// Feeds every message of the served subjects to the intake, a batch per wake-up, until
    /// `stop`.
    async fn consume(self, mut intake: Intake, stop: &AtomicBool) {
        // Everything (`md.>` carries the announcements too), or each served symbol's
        // `md.*.<SYM>` and the announcements apart.
        let subjects: Vec<String> = match &self.only {
            None => vec![ALL.to_owned()],
            Some(names) => {
                names.iter().map(|n| format!("md.*.{n}")).chain([SYMBOLS.to_owned()]).collect()
            }
        };
        let mut subscriptions = Vec::new();
        for subject in subjects {
            match self.client.subscribe(subject.clone()).await {
                Ok(s) => subscriptions.push(s),
                Err(e) => return self.fail(format!("cannot subscribe to {subject}: {e}")),
            }
        }
        // Each channel's subject is in exactly one subscription: its order is kept.
        let mut messages = futures_util::stream::select_all(subscriptions);
        let mut check = tokio::time::interval(STOP_CHECK);
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                first = messages.next() => {
                    let Some(first) = first else { break };
                    for msg in with_ready(first, &mut messages) {
                        if !take(&mut intake, &msg, &self.announced, &self.stats) {
                            return;
                        }
                    }
                    intake.flush();
                }
                _ = check.tick() => {}
            }
        }
    }

    /// [`consume`](Self::consume), from the JetStream stream `MD` through an ordered consumer
    /// that starts `back` ago (the resume window) and, across reconnects, goes on from the
    /// last message it delivered: nothing the stream holds is missed. Announcements (not in
    /// the stream) still come from core NATS.
    async fn consume_stream(self, mut intake: Intake, back: Duration, stop: &AtomicBool) {
        let stats = &self.stats;
        let mut announcements = match self.client.subscribe(SYMBOLS).await {
            Ok(s) => s,
            Err(e) => return self.fail(format!("cannot subscribe to {SYMBOLS}: {e}")),
        };
        // The whole stream, a subset's symbols picked out here: consumers filtering on several
        // subjects need nats-server 2.10.
        let mut messages = match stream_messages(&self.client, back).await {
            Ok(m) => m,
            Err(e) => return self.fail(e),
        };
        stats.feed.backlog.store(u64::MAX, Ordering::Relaxed); // until the first message says
        let mut check = tokio::time::interval(STOP_CHECK);
        let mut errors_logged = false;
        let mut caught_up = false;
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                first = messages.next() => {
                    let Some(first) = first else { break };
                    for item in with_ready(first, &mut messages) {
                        match item {
                            Ok(msg) => {
                                // Catching up is the start's backlog only: a burst that puts
                                // the consumer briefly behind later must not make the gateway
                                // flap out of its load balancer's rotation.
                                if !caught_up {
                                    let (pending, age_ns) = msg.info().map_or((0, 0), |i| {
                                        let at = i.published.unix_timestamp_nanos();
                                        let age = i128::from(tickfan_proto::unix_now_ns()) - at;
                                        (i.pending, u64::try_from(age).unwrap_or(0))
                                    });
                                    caught_up = pending == 0
                                        || (pending <= CATCH_UP_SLACK && age_ns <= CATCH_UP_AGE_NS);
                                    let backlog = if caught_up { 0 } else { pending.max(1) };
                                    stats.feed.backlog.store(backlog, Ordering::Relaxed);
                                }
                                if self.serves(&msg.subject) {
                                    take(&mut intake, &msg, &self.announced, stats);
                                }
                            }
                            // The ordered consumer recreates itself after these (a missed
                            // heartbeat, a reconnect); what it delivers next follows on.
                            Err(e) if !std::mem::replace(&mut errors_logged, true) => {
                                tracing::warn!(error = %e, "jetstream: consumer interrupted; it resumes where it stopped (logged once)");
                            }
                            Err(_) => {}
                        }
                    }
                    intake.flush();
                }
                Some(msg) = announcements.next() => {
                    if !take(&mut intake, &msg, &self.announced, stats) {
                        return;
                    }
                }
                _ = check.tick() => {}
            }
        }
    }
}

/// `first`, then every item of `stream` already received: one batch, one wake-up of each
/// worker.
fn with_ready<S: futures_util::Stream + Unpin>(
    first: S::Item,
    stream: &mut S,
) -> impl Iterator<Item = S::Item> + '_ {
    std::iter::once(first).chain(std::iter::from_fn(move || stream.next().now_or_never().flatten()))
}

/// The ordered consumer of stream `MD` from `back` ago; an error says what to check.
async fn stream_messages(
    client: &async_nats::Client,
    back: Duration,
) -> Result<async_nats::jetstream::consumer::pull::Ordered, String> {
    use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(STREAM).await.map_err(|e| {
        format!("no JetStream stream {STREAM} ({e}): start the publisher with --jetstream")
    })?;
    let since = tickfan_proto::unix_now_ns().saturating_sub(back.as_nanos() as u64);
    let start_time = async_nats::datetime::from_nanos(i128::from(since))
        .map_err(|e| format!("start time: {e}"))?;
    let config = OrderedConfig {
        deliver_policy: DeliverPolicy::ByStartTime { start_time },
        // Short pulls: their expiry sets the idle heartbeat (half of it), and two missed
        // heartbeats make the consumer recreate itself after the server restarted. With the
        // client's defaults (30 s, 15 s) a NATS restart stopped the feed for half a minute.
        max_expires: PULL_EXPIRES,
        ..OrderedConfig::default()
    };
    let consumer = stream
        .create_consumer(config)
        .await
        .map_err(|e| format!("cannot read stream {STREAM}: {e}"))?;
    consumer.messages().await.map_err(|e| format!("cannot read stream {STREAM}: {e}"))
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
