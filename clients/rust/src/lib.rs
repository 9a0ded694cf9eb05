//! A tickfan client in Rust, on tokio and fastwebsockets: subscribe, check every channel's
//! `seq`, keep order books and verify their checksums, reconnect with backoff and resume (the
//! wire protocol: docs/protocol.md in the tickfan repository).
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let mut client = tickfan_client::Client::new("127.0.0.1:8080", ["trades.BTC-USD", "book.BTC-USD"]);
//! client.run(|event| println!("{event:?}")).await
//! # }
//! ```
//!
//! Messages are typed where the protocol's encoder has a type for them: trades, quotes and book
//! messages also come as a [`Tick`] (prices and sizes as integer mantissas in the instrument's
//! decimals, which the client asks for with `symbols` on connecting; `ts` and `et` in
//! nanoseconds, the wire's microseconds × 1000).
//!
//! Every data message must have its channel's last seq + 1, unless the gateway declared the
//! discontinuity (a `gap` notice, a book snapshot, `resumed: false` after a reconnect, a new
//! `epoch`): anything else is reported as an undeclared [`Gap`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use http_body_util::Empty;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tickfan_proto::decimal::parse_decimal;
use tickfan_proto::feed::{parse_line, FeedLine};
use tickfan_proto::{BookDelta, L2Book, Level, Symbol, SymbolTable, Tick};
use tokio::net::TcpStream;

/// Reconnect backoff: the first delay, doubled up to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the client saw and did (see [`Client::counters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Data messages accepted (duplicates excluded), snapshots included.
    pub messages: u64,
    /// Connections after the first whose subscription was confirmed.
    pub reconnects: u64,
    /// Channels a reconnect resumed exactly, and those it could not.
    pub resumed_channels: u64,
    pub not_resumed_channels: u64,
    /// Discontinuities the gateway declared, and seq jumps nothing explained.
    pub gaps_declared: u64,
    pub gaps_undeclared: u64,
    /// Data messages dropped because their seq was not above the last one.
    pub duplicates: u64,
    /// Book messages whose checksum matched the book after them, and those that did not
    /// (the book is then subscribed again for a fresh snapshot).
    pub crc_ok: u64,
    pub crc_bad: u64,
    /// Data messages that came binary ([`Client::binary`]), within `messages`.
    pub binary: u64,
}

/// A discontinuity in a channel's sequence: the gateway's reason (`slow_consumer`,
/// `conflated`, `feed`, `ring_overflow`), `not_resumed` or `new_epoch` after a reconnect, or
/// `undeclared`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    pub channel: String,
    pub reason: String,
    /// The missing seqs, when known.
    pub seqs: Option<(u64, u64)>,
}

/// One data message.
#[derive(Clone, Debug)]
pub struct Message {
    pub channel: String,
    pub seq: u64,
    /// The message as parsed.
    pub json: Value,
    /// Trades, quotes and book messages, typed.
    pub tick: Option<Tick>,
}

/// What [`Client::run`] hands to its callback.
#[derive(Debug)]
pub enum Event<'a> {
    Message(&'a Message),
    Gap(Gap),
    /// A book after a message was applied and its checksum verified.
    Book {
        channel: &'a str,
        book: &'a L2Book,
    },
}

/// Why a connection ends.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gateway refused the channels themselves: retrying cannot help.
    #[error("the gateway refused the subscription: {0}")]
    Refused(String),
}

/// A client of one gateway, subscribed to `channels` (names or wildcards).
#[derive(Debug)]
pub struct Client {
    addr: String,
    channels: Vec<String>,
    counters: Counters,
    epoch: Option<String>,
    last: HashMap<String, u64>,
    books: HashMap<String, L2Book>,
    symbols: Option<SymbolTable>,
    next_id: u64,
    subscribe_id: u64,
    confirmed: u64,
    /// Requests to send on the current connection.
    outbox: Vec<Value>,
    /// Leave this connection now (a `shutdown` notice, or a book a wildcard cannot repair).
    leave: bool,
    /// Ask for binary data messages (`?format=binary`).
    binary: bool,
}

impl Client {
    /// A client of the gateway at `addr` (`host:port`; the WebSocket is `/ws`).
    pub fn new<S: AsRef<str>>(addr: &str, channels: impl IntoIterator<Item = S>) -> Client {
        Client {
            addr: addr.to_owned(),
            channels: channels.into_iter().map(|c| c.as_ref().to_owned()).collect(),
            counters: Counters::default(),
            epoch: None,
            last: HashMap::new(),
            books: HashMap::new(),
            symbols: None,
            next_id: 0,
            subscribe_id: 0,
            confirmed: 0,
            outbox: Vec::new(),
            leave: false,
            binary: false,
        }
    }

    /// Asks for trades, quotes and book updates as binary messages (`?format=binary`: less
    /// than half the bytes on the wire). They reach the callback exactly as JSON ones do: each
    /// is decoded, and its [`Message::json`] is the JSON the gateway would have sent.
    pub fn binary(mut self, on: bool) -> Client {
        self.binary = on;
        self
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The book of `channel`, while it is in step (after its snapshot).
    pub fn book(&self, channel: &str) -> Option<&L2Book> {
        self.books.get(channel)
    }

    /// Connects, subscribes and reads for ever, reconnecting (with backoff, and resuming) on
    /// any disconnect; `on_event` gets every message, gap and verified book. Ends only with
    /// [`Error::Refused`]: drop the future (or wrap it in a timeout) to stop.
    pub async fn run(&mut self, mut on_event: impl FnMut(Event<'_>)) -> anyhow::Result<()> {
        let mut delay = BACKOFF_FIRST;
        loop {
            let before = self.confirmed;
            match self.session(&mut on_event).await {
                Ok(()) => {}
                Err(e) if e.downcast_ref::<Error>().is_some() => return Err(e),
                Err(e) => eprintln!("tickfan-client: connection ended: {e:#}"),
            }
            if std::mem::take(&mut self.leave) {
                delay = BACKOFF_FIRST;
                continue;
            }
            if self.confirmed > before {
                delay = BACKOFF_FIRST;
            }
            tokio::time::sleep(jitter(delay)).await;
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection: the instruments' decimals, the subscription (resuming what we have),
    /// then messages until it ends.
    async fn session(&mut self, on_event: &mut impl FnMut(Event<'_>)) -> anyhow::Result<()> {
        let mut ws = connect(&self.addr, self.binary).await?;
        let id = self.request_id();
        send(&mut ws, &json!({"op":"symbols","id":id})).await?;
        let request = self.subscribe_request();
        self.subscribe_id = request["id"].as_u64().unwrap_or(0);
        send(&mut ws, &request).await?;
        loop {
            let frame = ws.read_frame().await?;
            let msg = match frame.opcode {
                OpCode::Text => serde_json::from_slice::<Value>(&frame.payload).ok(),
                OpCode::Binary => {
                    self.counters.binary += 1;
                    self.json_of_binary(&frame.payload)
                }
                OpCode::Close => return Ok(()),
                _ => continue,
            };
            let Some(msg) = msg else { continue };
            self.handle(msg, on_event)?;
            for request in std::mem::take(&mut self.outbox) {
                send(&mut ws, &request).await?;
            }
            if self.leave {
                return Ok(());
            }
        }
    }

    /// A binary data message as the JSON message it stands for (`None`, and a warning, if it
    /// does not decode or names an unknown symbol).
    fn json_of_binary(&self, payload: &[u8]) -> Option<Value> {
        let decoded = tickfan_proto::binary::decode(payload)
            .map_err(|e| eprintln!("tickfan-client: a binary message does not decode: {e:?}"))
            .ok()?;
        let symbol = self.symbols.as_ref()?.iter().nth(decoded.tick.sym as usize)?;
        let mut json = Vec::with_capacity(payload.len() * 3);
        tickfan_proto::encode::write_tick_message(&mut json, &decoded.tick, symbol, decoded.crc);
        serde_json::from_slice(&json).ok()
    }

    fn request_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Every channel, resuming every seq held (a book only while it is in step).
    fn subscribe_request(&mut self) -> Value {
        let mut request = json!({"op":"subscribe","id":self.request_id(),"channels":self.channels});
        let resume: serde_json::Map<String, Value> = self
            .last
            .iter()
            .filter(|(ch, _)| !ch.starts_with("book.") || self.books.contains_key(*ch))
            .map(|(ch, seq)| (ch.clone(), (*seq).into()))
            .collect();
        if let (Some(epoch), false) = (&self.epoch, resume.is_empty()) {
            request["epoch"] = epoch.clone().into();
            request["resume"] = resume.into();
        }
        request
    }

    /// One message from the gateway.
    fn handle(&mut self, msg: Value, on_event: &mut impl FnMut(Event<'_>)) -> anyhow::Result<()> {
        match msg["op"].as_str() {
            None => self.on_data(msg, on_event),
            Some("subscribed") => self.on_subscribed(&msg, on_event),
            Some("symbols") => self.symbols = instruments(&msg),
            Some("gap") => self.on_gap_notice(&msg, on_event),
            Some("shutdown") => self.leave = true,
            Some("error") if msg["id"].as_u64() == Some(self.subscribe_id) => {
                return Err(Error::Refused(msg["msg"].as_str().unwrap_or("").to_owned()).into())
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn on_subscribed(&mut self, msg: &Value, on_event: &mut impl FnMut(Event<'_>)) {
        if msg["id"].as_u64() == Some(self.subscribe_id) {
            self.confirmed += 1;
            if self.confirmed > 1 {
                self.counters.reconnects += 1;
            }
        }
        let epoch = msg["epoch"].as_str().map(str::to_owned);
        let new_epoch = self.epoch.is_some() && epoch != self.epoch;
        if new_epoch {
            let mut held: Vec<String> = self.last.keys().cloned().collect();
            held.sort();
            for ch in held {
                self.declare(Gap { channel: ch, reason: "new_epoch".into(), seqs: None }, on_event);
            }
            self.last.clear();
            self.books.clear();
        }
        if epoch.is_some() {
            self.epoch = epoch;
        }
        let Some(resumed) = msg["resumed"].as_object() else { return };
        for (ch, ok) in resumed {
            if ok.as_bool() == Some(true) {
                self.counters.resumed_channels += 1;
                continue;
            }
            self.counters.not_resumed_channels += 1;
            if self.last.remove(ch).is_some() && !new_epoch {
                let gap = Gap { channel: ch.clone(), reason: "not_resumed".into(), seqs: None };
                self.declare(gap, on_event);
            }
            self.books.remove(ch);
        }
    }

    fn on_gap_notice(&mut self, msg: &Value, on_event: &mut impl FnMut(Event<'_>)) {
        let (Some(ch), Some(from), Some(to)) =
            (msg["ch"].as_str(), msg["from"].as_u64(), msg["to"].as_u64())
        else {
            return;
        };
        if let Some(&last) = self.last.get(ch) {
            if from > last + 1 {
                self.undeclared(ch, last + 1, from - 1, on_event);
            }
        }
        let last = self.last.entry(ch.to_owned()).or_insert(0);
        *last = (*last).max(to);
        let reason = msg["reason"].as_str().unwrap_or("unknown").to_owned();
        self.declare(Gap { channel: ch.to_owned(), reason, seqs: Some((from, to)) }, on_event);
        if ch.starts_with("book.") {
            self.resync(ch);
        }
    }

    fn on_data(&mut self, json: Value, on_event: &mut impl FnMut(Event<'_>)) {
        let (Some(ch), Some(seq)) = (json["ch"].as_str(), json["seq"].as_u64()) else { return };
        let channel = ch.to_owned();
        let is_book = channel.starts_with("book.");
        let snapshot = is_book && json["type"] == "snapshot";
        if let Some(&last) = self.last.get(&channel) {
            if !snapshot && seq <= last {
                self.counters.duplicates += 1;
                return;
            }
            if !snapshot && seq != last + 1 {
                self.undeclared(&channel, last + 1, seq - 1, on_event);
            }
        }
        self.last.insert(channel.clone(), seq);
        self.counters.messages += 1;
        let tick = self.symbols.as_ref().and_then(|s| typed(&json, s));
        let message = Message { channel, seq, json, tick };
        on_event(Event::Message(&message));
        if is_book {
            self.on_book(&message, snapshot, on_event);
        }
    }

    fn on_book(&mut self, msg: &Message, snapshot: bool, on_event: &mut impl FnMut(Event<'_>)) {
        let Some(symbols) = &self.symbols else { return };
        let Some(sym) = book_symbol(&msg.channel).and_then(|s| symbols.lookup(s)) else { return };
        let sym = symbols.get(sym);
        if snapshot {
            self.books.insert(msg.channel.clone(), L2Book::default());
        }
        let Some(book) = self.books.get_mut(&msg.channel) else { return };
        let Some(delta) = levels(&msg.json, sym) else {
            return self.resync(&msg.channel);
        };
        book.apply(&delta);
        if msg.json["crc"].as_u64() != Some(u64::from(book.checksum(sym.px_scale, sym.qty_scale))) {
            self.counters.crc_bad += 1;
            return self.resync(&msg.channel);
        }
        self.counters.crc_ok += 1;
        on_event(Event::Book { channel: &msg.channel, book });
    }

    /// Drops the book of `ch` and asks for a fresh snapshot: unsubscribe and subscribe again
    /// when it was subscribed by name, else (a wildcard keeps it streaming) reconnect, leaving
    /// it out of the resume.
    fn resync(&mut self, ch: &str) {
        if self.books.remove(ch).is_none() {
            return;
        }
        let by_name = self.channels.iter().any(|c| c == ch);
        if by_name && !self.channels.contains(&wildcard_of(ch)) {
            let (a, b) = (self.request_id(), self.request_id());
            self.outbox.push(json!({"op":"unsubscribe","id":a,"channels":[ch]}));
            self.outbox.push(json!({"op":"subscribe","id":b,"channels":[ch]}));
        } else {
            self.leave = true;
        }
    }

    fn undeclared(&mut self, ch: &str, from: u64, to: u64, on_event: &mut impl FnMut(Event<'_>)) {
        self.counters.gaps_undeclared += 1;
        let gap =
            Gap { channel: ch.to_owned(), reason: "undeclared".into(), seqs: Some((from, to)) };
        on_event(Event::Gap(gap));
    }

    fn declare(&mut self, gap: Gap, on_event: &mut impl FnMut(Event<'_>)) {
        self.counters.gaps_declared += 1;
        on_event(Event::Gap(gap));
    }
}

/// The wildcard that covers channel `ch`: `book.*@5` for `book.BTC-USD@5`, `candles.*.1m`
/// for `candles.BTC-USD.1m`.
fn wildcard_of(ch: &str) -> String {
    let Some((kind, rest)) = ch.split_once('.') else { return ch.to_owned() };
    let end = rest.find(['@', '.']).unwrap_or(rest.len());
    format!("{kind}.*{}", &rest[end..])
}

/// `BTC-USD` of `book.BTC-USD` or `book.BTC-USD@5@100ms`.
fn book_symbol(ch: &str) -> Option<&str> {
    let rest = ch.strip_prefix("book.")?;
    Some(rest.split('@').next().unwrap_or(rest))
}

/// A book message's levels as a delta.
fn levels(json: &Value, sym: &Symbol) -> Option<BookDelta> {
    let side = |v: &Value| -> Option<Vec<Level>> {
        v.as_array()?
            .iter()
            .map(|l| {
                let px = parse_decimal(l.get(0)?.as_str()?, sym.px_scale)?;
                let qty = parse_decimal(l.get(1)?.as_str()?, sym.qty_scale)?;
                Some(Level { px, qty })
            })
            .collect()
    };
    Some(BookDelta { bids: side(&json["bids"])?, asks: side(&json["asks"])? })
}

/// A trade, quote or (full) book message as the protocol's typed tick.
fn typed(json: &Value, symbols: &SymbolTable) -> Option<Tick> {
    let line = serde_json::to_vec(json).ok()?;
    let (FeedLine::Tick(t) | FeedLine::BookSnapshot(t)) = parse_line(&line, symbols).ok()?;
    Some(t)
}

/// The instruments of a `symbols` reply, with their decimals.
fn instruments(msg: &Value) -> Option<SymbolTable> {
    let list = msg["instruments"].as_array()?;
    let symbols = list
        .iter()
        .map(|i| {
            Some(Symbol {
                name: i["symbol"].as_str()?.to_owned(),
                px_scale: u8::try_from(i["price_decimals"].as_u64()?).ok()?,
                qty_scale: u8::try_from(i["size_decimals"].as_u64()?).ok()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(SymbolTable::new(symbols))
}

/// Between half of `d` and `d`, from the clock's nanoseconds (good enough to spread clients).
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d / 2 + d.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

type Socket = WebSocket<TokioIo<hyper::upgrade::Upgraded>>;

async fn send(ws: &mut Socket, v: &Value) -> anyhow::Result<()> {
    let text = serde_json::to_vec(v)?;
    ws.write_frame(Frame::text(Payload::Owned(text))).await?;
    Ok(())
}

/// Opens `ws://addr/ws?v=2` (and `&format=binary` with `binary`) with fastwebsockets' client
/// handshake: the URL names the protocol version this client speaks, so that a gateway
/// serving another refuses (400) instead of sending messages it would misread.
async fn connect(addr: &str, binary: bool) -> anyhow::Result<Socket> {
    let sock: SocketAddr = tokio::net::lookup_host(addr)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{addr}: no address"))?;
    let stream = TcpStream::connect(sock).await?;
    stream.set_nodelay(true)?;
    let req = Request::builder()
        .method("GET")
        .uri(format!(
            "/ws?v={}{}",
            tickfan_proto::PROTOCOL_VERSION,
            if binary { "&format=binary" } else { "" }
        ))
        .header("Host", addr)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", fastwebsockets::handshake::generate_key())
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())?;
    let (mut ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream).await?;
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    Ok(ws)
}

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn(fut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_of_channels() {
        assert_eq!(wildcard_of("book.BTC-USD"), "book.*");
        assert_eq!(wildcard_of("book.BTC-USD@5@100ms"), "book.*@5@100ms");
        assert_eq!(wildcard_of("candles.BTC-USD.1m"), "candles.*.1m");
        assert_eq!(book_symbol("book.ETH-USD@10@100ms"), Some("ETH-USD"));
    }

    #[test]
    fn seqs_gaps_and_epochs_are_tracked() {
        let mut c = Client::new("x", ["trades.BTC-USD"]);
        let mut gaps = Vec::new();
        let mut feed = |c: &mut Client, v: Value| {
            c.handle(v, &mut |e| {
                if let Event::Gap(g) = e {
                    gaps.push(g);
                }
            })
            .unwrap();
        };
        c.subscribe_id = 1;
        feed(&mut c, json!({"op":"subscribed","id":1,"channels":["trades.BTC-USD"],"epoch":"e1"}));
        for seq in [1, 2, 2, 4] {
            feed(&mut c, json!({"ch":"trades.BTC-USD","seq":seq,"ts":1}));
        }
        feed(
            &mut c,
            json!({"op":"gap","ch":"trades.BTC-USD","from":5,"to":9,"reason":"slow_consumer"}),
        );
        feed(&mut c, json!({"ch":"trades.BTC-USD","seq":10,"ts":1}));
        feed(&mut c, json!({"op":"subscribed","id":7,"channels":[],"epoch":"e2"}));
        let n = c.counters();
        assert_eq!((n.messages, n.duplicates, n.gaps_undeclared, n.gaps_declared), (4, 1, 1, 2));
        let reasons: Vec<&str> = gaps.iter().map(|g| g.reason.as_str()).collect();
        assert_eq!(reasons, ["undeclared", "slow_consumer", "new_epoch"]);
        assert!(c.last.is_empty(), "a new epoch forgets every seq");
    }
}
