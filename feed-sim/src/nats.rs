//! `feed-sim --sink nats://…` ([`NatsSink`]): the feed published to NATS, one message per tick, for any
//! number of gateways (`tickfan --source nats://…`) to consume alike.
//!
//! Subjects (`docs/feed-format.md`, "NATS"):
//! - `md.<kind>.<SYM>`: each tick, the same line as on stdout (a protocol data message), with
//!   the publisher's seq and timestamp; every second, each open book's snapshot on
//!   `md.book.<SYM>` (`"type":"snapshot"`, as of its last update) for gateways that joined
//!   mid-stream or lost updates;
//! - `md.symbols.get`: answered with the symbols announcement (universe and epoch), which a
//!   gateway asks for before it starts;
//! - `md.symbols`: the announcement again every second, so that gateways notice a publisher
//!   that restarted under a new epoch.
//!
//! With `--jetstream`, the stream `MD` keeps the ticks and snapshots (not the announcements)
//! for `--jetstream-max-age` within `--jetstream-max-bytes`; gateways started with
//! `--jetstream` read from it.

use std::io;
use std::time::{Duration, Instant};

use async_nats::Subject;
use bytes::Bytes;
use futures_util::StreamExt;
use tickfan_proto::encode::{write_book_snapshot_json, write_tick_json};
use tickfan_proto::feed::nats::{backoff, STREAM, STREAM_SUBJECTS, SYMBOLS, SYMBOLS_GET};
use tickfan_proto::feed::Announcement;
use tickfan_proto::{ChannelId, Kind, L2Book, SymbolTable, Tick, TickBody};

use crate::Sink;

/// Most messages kept before they are handed to the client.
const MAX_PENDING: usize = 4096;
/// How often books' snapshots and the announcement are published.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// Publishes ticks to NATS from the feed's thread (each batch handed to the client's
/// connection task, which runs on a runtime thread of its own).
pub struct NatsSink {
    rt: tokio::runtime::Runtime,
    client: async_nats::Client,
    symbols: SymbolTable,
    announcement: Bytes,
    /// `md.<kind>.<SYM>` per channel.
    subjects: Vec<Subject>,
    /// The books as published so far, with the seq and ts of their last update (0: not open).
    books: Vec<(L2Book, u64, u64)>,
    last_snapshot: Instant,
    /// Messages of the batch being written.
    pending: Vec<(Subject, Bytes)>,
    line: Vec<u8>,
}

impl NatsSink {
    /// Connects (in the background: the feed starts at once and its ticks wait in the
    /// client's buffer until the server is there) and starts answering `md.symbols.get`.
    /// With `stream`, also makes sure the JetStream stream that keeps the ticks exists.
    pub fn connect(
        url: &str,
        symbols: SymbolTable,
        epoch: String,
        stream: Option<StreamLimits>,
    ) -> io::Result<NatsSink> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("feed-sim-nats")
            .enable_all()
            .build()?;
        let options = async_nats::ConnectOptions::new()
            .name("feed-sim")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(backoff)
            .event_callback(|event| async move { eprintln!("feed-sim: nats: {event}") });
        let client = rt.block_on(options.connect(url)).map_err(io::Error::other)?;
        if let Some(limits) = stream {
            rt.block_on(create_stream(&client, limits))?;
        }
        let ann = Announcement { epoch: Some(epoch), symbols: symbols.iter().cloned().collect() };
        let announcement = Bytes::from(ann.to_line());
        let responder = client.clone();
        let answer = announcement.clone();
        rt.spawn(async move {
            let Ok(mut requests) = responder.subscribe(SYMBOLS_GET).await else { return };
            while let Some(req) = requests.next().await {
                if let Some(reply) = req.reply {
                    let _ = responder.publish(reply, answer.clone()).await;
                }
            }
        });
        let subjects = (0..symbols.channel_count() as u32)
            .map(|i| Subject::from(format!("md.{}", symbols.channel_name(ChannelId(i)))))
            .collect();
        let books = vec![(L2Book::default(), 0, 0); symbols.len()];
        Ok(NatsSink {
            rt,
            client,
            symbols,
            announcement,
            subjects,
            books,
            last_snapshot: Instant::now(),
            pending: Vec::new(),
            line: Vec::new(),
        })
    }

    /// Each open book's snapshot, and the announcement.
    fn snapshots(&mut self) {
        for (sym, (book, seq, ts)) in self.books.iter().enumerate() {
            if *seq == 0 {
                continue;
            }
            self.line.clear();
            let symbol = self.symbols.get(sym as u32);
            write_book_snapshot_json(&mut self.line, book, symbol, *seq, *ts);
            let ch = ChannelId::new(Kind::Book, sym as u32);
            self.pending
                .push((self.subjects[ch.index()].clone(), Bytes::copy_from_slice(&self.line)));
        }
        self.pending.push((Subject::from(SYMBOLS), self.announcement.clone()));
    }
}

impl Sink for NatsSink {
    fn write(&mut self, tick: &Tick) -> io::Result<()> {
        self.line.clear();
        write_tick_json(&mut self.line, tick, self.symbols.get(tick.sym));
        let subject = self.subjects[tick.channel().index()].clone();
        self.pending.push((subject, Bytes::copy_from_slice(&self.line)));
        if let TickBody::Book(delta) = &tick.body {
            let (book, seq, ts) = &mut self.books[tick.sym as usize];
            book.apply(delta);
            (*seq, *ts) = (tick.seq, tick.ts);
        }
        if self.pending.len() >= MAX_PENDING {
            self.flush()?; // --no-pace hands over ticks without batches
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.last_snapshot.elapsed() >= SNAPSHOT_EVERY {
            self.last_snapshot = Instant::now();
            self.snapshots();
        }
        let (client, pending) = (&self.client, &mut self.pending);
        self.rt.block_on(async {
            for (subject, payload) in pending.drain(..) {
                client.publish(subject, payload).await.map_err(io::Error::other)?;
            }
            Ok(())
        })
    }
}

impl Drop for NatsSink {
    fn drop(&mut self) {
        // What the client still buffers reaches the server before the process ends.
        let client = self.client.clone();
        let _ = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(2), client.flush()).await });
    }
}

/// How much the stream keeps: the oldest messages go first beyond either bound.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    pub max_age: Duration,
    pub max_bytes: i64,
}

/// Creates the stream, or updates its limits if it exists: the publisher's core-NATS
/// publishes are then stored by the server as they pass (no acknowledgement round trip).
async fn create_stream(client: &async_nats::Client, limits: StreamLimits) -> io::Result<()> {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
    let js = async_nats::jetstream::new(client.clone());
    let config = Config {
        name: STREAM.to_owned(),
        subjects: STREAM_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
        max_age: limits.max_age,
        max_bytes: limits.max_bytes,
        storage: StorageType::File,
        discard: DiscardPolicy::Old,
        ..Config::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Until the server is up (the client connects in the background).
        let made = match js.get_stream(STREAM).await {
            Ok(_) => js.update_stream(config.clone()).await.map(drop).map_err(io::Error::other),
            Err(_) => js.create_stream(config.clone()).await.map(drop).map_err(io::Error::other),
        };
        match made {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(io::Error::other(format!("cannot create the JetStream stream {STREAM}: {e} (is JetStream on? nats-server -js)")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
