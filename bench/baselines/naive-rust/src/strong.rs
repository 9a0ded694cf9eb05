//! `--design strong`: the same server as a competent engineer writes it with the same libraries
//! (tokio, tokio-tungstenite, `tokio::sync::broadcast`), to be a fair "plain tokio" baseline.
//!
//! - **A broadcast per channel spec**, created on first subscription and removed with its last
//!   receiver: one per exact channel (`trades.BTC-USD`) and one per wildcard (`trades.*`). A
//!   connection holds receivers only for what it subscribed to, so it never wakes up for, or
//!   filters, ticks it does not want.
//! - **Serialised once per tick**, into a `Utf8Bytes` that every receiver clones by reference
//!   count: tungstenite's `Message::Text` holds it without copying.
//! - **Batched writes**: a connection task `feed`s every frame that is already waiting in its
//!   receivers (`try_recv`) into the sink and `flush`es once when they are empty, so many
//!   frames go out in one syscall under load.
//! - **Lag is declared, not silent**: a receiver that falls more than `--capacity` ticks behind
//!   gets `RecvError::Lagged`; the connection counts it, and before the next message of each
//!   channel that lost ticks it sends `{"op":"gap","ch":…,"from":…,"to":…,"reason":"slow_consumer"}`.
//!   To know `from` and `to`, each connection remembers the last seq it sent per channel (the
//!   feed's seqs grow by 1 per channel, as the protocol says); a jump is a gap.
//!
//! A tick on a channel subscribed both exactly and by wildcard is sent once: a connection holds
//! a receiver for the wildcard only. When a subscription change swaps receivers (`trades.*`
//! added over `trades.BTC-USD`, or removed from under it), the new receivers are created and
//! the old ones' backlog measured under the lock the feed publishes under, and that backlog is
//! sent before the reply and before anything from the new receivers: no tick is lost or
//! repeated across the change.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::{accept, request, subscribe_streams, Subs};

/// Frames a connection sends from its receivers before it flushes and reads requests again.
const MAX_BATCH: usize = 1024;

/// One tick as every subscriber of its channel gets it: serialised once.
#[derive(Clone, Debug)]
struct Frame {
    /// The channel's index in [`Routes::names`].
    ch: u32,
    seq: u64,
    text: Utf8Bytes,
}

/// The broadcasts of every subscribed channel spec, and the names of the feed's channels.
#[derive(Debug)]
pub struct Hub {
    capacity: usize,
    routes: Mutex<Routes>,
    /// Ticks lost by lagging receivers, all connections together.
    lagged: AtomicU64,
}

#[derive(Debug, Default)]
struct Routes {
    /// Channel name → index, for every channel the feed has published on.
    ids: HashMap<String, u32>,
    names: Vec<Arc<str>>,
    /// Exact channel (`trades.BTC-USD`) → its broadcast.
    exact: HashMap<String, broadcast::Sender<Frame>>,
    /// Kind of a wildcard (`trades` for `trades.*`) → its broadcast.
    kinds: HashMap<String, broadcast::Sender<Frame>>,
}

impl Hub {
    pub fn new(capacity: usize) -> Hub {
        Hub { capacity, routes: Mutex::default(), lagged: AtomicU64::new(0) }
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Serialises a tick of the feed once and sends it to its channel's broadcast and its
    /// kind's. Ticks without `ch` and `seq` are skipped (the naive design never matches them
    /// either).
    pub fn publish(&self, tick: Value) {
        let (Some(ch), Some(seq)) =
            (tick.get("ch").and_then(Value::as_str), tick.get("seq").and_then(Value::as_u64))
        else {
            return;
        };
        let text = Utf8Bytes::from(serde_json::to_string(&tick).expect("a Value serialises"));
        let kind = ch.split_once('.').map_or(ch, |(kind, _)| kind);
        // Under the lock that subscription changes take too: see `swap`.
        let mut routes = self.routes();
        let frame = Frame { ch: routes.intern(ch), seq, text };
        // A send without receivers is not an error: its last subscriber may be leaving.
        match (routes.exact.get(ch), routes.kinds.get(kind)) {
            (Some(exact), Some(wildcard)) => {
                let _ = exact.send(frame.clone());
                let _ = wildcard.send(frame);
            }
            (Some(tx), None) | (None, Some(tx)) => {
                let _ = tx.send(frame);
            }
            (None, None) => {}
        }
    }

    /// Creates receivers for `add` and measures the backlog of `removed`, atomically with
    /// respect to `publish`: every tick is then either in the backlog or in the new receivers.
    fn swap(&self, add: Vec<String>, removed: &[Sub]) -> (Vec<Sub>, Vec<usize>) {
        let mut routes = self.routes();
        let capacity = self.capacity;
        let added = add
            .into_iter()
            .map(|spec| {
                let map = match spec.strip_suffix(".*") {
                    Some(kind) => routes.kinds.entry(kind.to_owned()),
                    None => routes.exact.entry(spec.clone()),
                };
                let rx = map.or_insert_with(|| broadcast::channel(capacity).0).subscribe();
                Sub { spec, rx }
            })
            .collect();
        (added, removed.iter().map(|s| s.rx.len()).collect())
    }

    /// Drops receivers, and the broadcasts nobody receives any more.
    fn release(&self, subs: Vec<Sub>) {
        if subs.is_empty() {
            return;
        }
        let mut routes = self.routes();
        for Sub { spec, rx } in subs {
            drop(rx);
            let map = match spec.strip_suffix(".*") {
                Some(kind) => (&mut routes.kinds, kind),
                None => (&mut routes.exact, spec.as_str()),
            };
            if map.0.get(map.1).is_some_and(|tx| tx.receiver_count() == 0) {
                map.0.remove(map.1);
            }
        }
    }

    fn name(&self, ch: u32) -> Arc<str> {
        self.routes().names[ch as usize].clone()
    }
}

impl Routes {
    fn intern(&mut self, ch: &str) -> u32 {
        if let Some(&id) = self.ids.get(ch) {
            return id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 channels");
        self.ids.insert(ch.to_owned(), id);
        self.names.push(ch.into());
        id
    }
}

/// One of a connection's receivers, and the spec it receives (`trades.*`, `quotes.ETH-USD`).
#[derive(Debug)]
struct Sub {
    spec: String,
    rx: broadcast::Receiver<Frame>,
}

/// The specs a connection needs receivers for: its wildcards, and its exact channels that no
/// wildcard covers.
fn receiver_specs(subs: &Subs) -> HashSet<String> {
    let wildcards = subs.kinds.iter().map(|kind| format!("{kind}.*"));
    let exact = subs.exact.iter().filter(|ch| !subs.matches_kind(ch)).cloned();
    wildcards.chain(exact).collect()
}

struct Conn {
    hub: Arc<Hub>,
    ws: WebSocketStream<TcpStream>,
    subs: Subs,
    rxs: Vec<Sub>,
    /// Per channel index: the seq last sent on this connection (0: none since subscribing).
    last: Vec<u64>,
    /// Frames fed into the sink since the last flush.
    unflushed: bool,
    lag_logged: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.hub.release(std::mem::take(&mut self.rxs));
    }
}

pub async fn serve(stream: TcpStream, hub: Arc<Hub>) {
    let Some((ws, streams)) = accept(stream).await else { return };
    let mut conn = Conn {
        hub,
        ws,
        subs: Subs::default(),
        rxs: Vec::new(),
        last: Vec::new(),
        unflushed: false,
        lag_logged: false,
    };
    // Errors end the connection; there is nobody to report them to.
    let _ = conn.run(&streams).await;
}

impl Conn {
    async fn run(&mut self, streams: &[String]) -> Result<(), tungstenite::Error> {
        if !streams.is_empty() {
            let reply = subscribe_streams(&mut self.subs, streams);
            self.resubscribe().await?;
            self.ws.send(Message::text(reply.to_string())).await?;
        }
        loop {
            // Send what is waiting, a bounded batch, then flush once.
            let mut sent = 0;
            while sent < MAX_BATCH {
                let before = sent;
                for i in 0..self.rxs.len() {
                    loop {
                        match self.rxs[i].rx.try_recv() {
                            Ok(frame) => {
                                self.deliver(frame).await?;
                                sent += 1;
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Lagged(n)) => self.lagged(i, n),
                            Err(TryRecvError::Closed) => return Ok(()),
                        }
                        if sent >= MAX_BATCH {
                            break;
                        }
                    }
                }
                if sent == before {
                    break;
                }
            }
            if self.unflushed {
                self.ws.flush().await?;
                self.unflushed = false;
            }
            tokio::select! {
                (i, frame) = recv_any(&mut self.rxs) => match frame {
                    Ok(frame) => self.deliver(frame).await?,
                    Err(RecvError::Lagged(n)) => self.lagged(i, n),
                    Err(RecvError::Closed) => return Ok(()),
                },
                msg = self.ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        let reply = request(&mut self.subs, text.as_str());
                        self.resubscribe().await?;
                        self.ws.send(Message::text(reply.to_string())).await?;
                        self.unflushed = false;
                    }
                    Some(Ok(Message::Close(_))) => {
                        // Sends the close reply tungstenite queued (as the naive design does).
                        let _ = SinkExt::close(&mut self.ws).await;
                        return Ok(());
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    /// Feeds one frame into the sink, after a gap notice if its channel skipped seqs.
    async fn deliver(&mut self, frame: Frame) -> Result<(), tungstenite::Error> {
        let ch = frame.ch as usize;
        if ch >= self.last.len() {
            self.last.resize(ch + 1, 0);
        }
        let last = self.last[ch];
        if last != 0 {
            if frame.seq <= last {
                // Already sent: only possible after a lag during a subscription change.
                return Ok(());
            }
            if frame.seq > last + 1 {
                let gap = json!({"op": "gap", "ch": &*self.hub.name(frame.ch), "from": last + 1,
                                 "to": frame.seq - 1, "reason": "slow_consumer"});
                self.ws.feed(Message::text(gap.to_string())).await?;
            }
        }
        self.last[ch] = frame.seq;
        self.unflushed = true;
        self.ws.feed(Message::Text(frame.text)).await
    }

    fn lagged(&mut self, i: usize, n: u64) {
        self.hub.lagged.fetch_add(n, Ordering::Relaxed);
        if !self.lag_logged {
            self.lag_logged = true;
            eprintln!(
                "naive-ws: a client fell {n} ticks behind on {}; gap notices tell it which \
                 (further lags of this connection are not logged; {} ticks lost in all so far)",
                self.rxs[i].spec,
                self.hub.lagged.load(Ordering::Relaxed)
            );
        }
    }

    /// Makes the receivers match the subscriptions after a change: new receivers for new
    /// specs; for the ones no longer needed, their backlog from before the change is sent
    /// first, then they are dropped.
    async fn resubscribe(&mut self) -> Result<(), tungstenite::Error> {
        let want = receiver_specs(&self.subs);
        let add: Vec<String> =
            want.iter().filter(|s| !self.rxs.iter().any(|r| &r.spec == *s)).cloned().collect();
        let (removed, kept): (Vec<Sub>, Vec<Sub>) =
            std::mem::take(&mut self.rxs).into_iter().partition(|r| !want.contains(&r.spec));
        self.rxs = kept;
        if add.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let (added, backlogs) = self.hub.swap(add, &removed);
        self.rxs.extend(added);
        let mut removed = removed;
        for (sub, backlog) in removed.iter_mut().zip(backlogs) {
            for _ in 0..backlog {
                match sub.rx.try_recv() {
                    Ok(frame) => self.deliver(frame).await?,
                    Err(TryRecvError::Lagged(n)) => {
                        // Part of the backlog is lost; what is left of it may include ticks
                        // from after the change, so stop here. The next frames declare the gap.
                        self.hub.lagged.fetch_add(n, Ordering::Relaxed);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        self.hub.release(removed);
        // A channel no longer subscribed starts afresh if subscribed again: no gap notice for
        // the time it was not wanted.
        let routes = self.hub.routes();
        for (ch, last) in self.last.iter_mut().enumerate() {
            if *last != 0 && !self.subs.matches(&routes.names[ch]) {
                *last = 0;
            }
        }
        Ok(())
    }
}

/// The next frame of any of `rxs`, and the index of the receiver it came from. Cancel-safe,
/// as `broadcast::Receiver::recv` is.
async fn recv_any(rxs: &mut [Sub]) -> (usize, Result<Frame, RecvError>) {
    match rxs {
        [] => std::future::pending().await,
        [one] => (0, one.rx.recv().await),
        _ => {
            let all = rxs.iter_mut().map(|s| Box::pin(s.rx.recv()));
            let (frame, i, _) = futures_util::future::select_all(all).await;
            (i, frame)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(hub: &Hub, ch: &str, seq: u64) {
        hub.publish(json!({"ch": ch, "seq": seq, "ts": 1}));
    }

    #[test]
    fn a_receiver_per_spec_and_none_for_covered_channels() {
        let mut subs = Subs::default();
        let specs = ["trades.BTC-USD", "trades.*", "quotes.BTC-USD"].map(str::to_owned);
        subs.apply(&specs, true).unwrap();
        let mut want: Vec<_> = receiver_specs(&subs).into_iter().collect();
        want.sort();
        assert_eq!(want, ["quotes.BTC-USD", "trades.*"]);
        subs.apply(&["trades.*".to_owned()], false).unwrap();
        let mut want: Vec<_> = receiver_specs(&subs).into_iter().collect();
        want.sort();
        assert_eq!(want, ["quotes.BTC-USD", "trades.BTC-USD"]);
    }

    #[test]
    fn publish_reaches_exact_and_wildcard_once_serialised_and_release_cleans_up() {
        let hub = Hub::new(4);
        let (subs, _) =
            hub.swap(vec!["trades.*".into(), "trades.ETH-USD".into(), "quotes.X".into()], &[]);
        frame_of(&hub, "trades.ETH-USD", 7);
        frame_of(&hub, "trades.BTC-USD", 3);
        let mut subs = subs;
        let a = subs[0].rx.try_recv().unwrap();
        let b = subs[1].rx.try_recv().unwrap();
        // One serialisation, shared: the same bytes, not equal copies.
        assert_eq!(a.text.as_ptr(), b.text.as_ptr());
        assert_eq!((a.seq, &*hub.name(a.ch)), (7, "trades.ETH-USD"));
        assert_eq!(subs[0].rx.try_recv().unwrap().seq, 3);
        assert!(subs[1].rx.try_recv().is_err() && subs[2].rx.try_recv().is_err());
        let backlog = hub.swap(vec![], &subs).1;
        assert_eq!(backlog, [0, 0, 0]);
        hub.release(subs);
        let routes = hub.routes();
        assert!(routes.exact.is_empty() && routes.kinds.is_empty());
    }
}
