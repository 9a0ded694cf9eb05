//! Criterion micro-benches of the hot path (docs/benchmarks.md): tick → frame encoding, ring push/pop,
//! control-message parsing (simd-json vs serde_json), fan-out of one frame to K queues, an
//! offer to a queue whose channel fell behind, deflating a message once (permessage-deflate;
//! its size ratio per kind is printed first), and the binary form (encoding, sizes, and a
//! client's decoding against JSON parsing).
//! Run: `cargo bench -p gateway --bench hot_path`.

use std::hint::black_box;
use std::io::{self, IoSlice};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use feed_sim::{Feed, SimConfig};
use gateway::backpressure::{Budget, Offer, Outbound, TryWrite};
use gateway::config::Policy;
use gateway::frame::Frame;
use gateway::market::{Market, ResumeWindow};
use gateway::ring::Ring;
use gateway::source::Encoder;
use simd_json::prelude::*;

fn feed() -> Feed {
    Feed::new(SimConfig { symbols: 50, burst_every_s: 0.0, ..SimConfig::default() })
}

/// The gateway's market state for `feed`'s symbols, with the default resume window.
fn market(feed: &Feed) -> Arc<Market> {
    let window = ResumeWindow { max_bytes: 64 << 20, max_age_ns: 10_000_000_000 };
    Arc::new(Market::new(Arc::new(feed.symbols().clone()), window, None))
}

fn encode(c: &mut Criterion) {
    let mut feed = feed();
    let ticks: Vec<_> = (0..4096).map(|_| feed.next_tick_virtual()).collect();
    // Includes what the producer does besides encoding: book upkeep, checksum, resume history.
    let mut enc = Encoder::new(market(&feed));
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(ticks.len() as u64));
    g.bench_function("tick_to_frame_x4096", |b| {
        b.iter(|| {
            for t in &ticks {
                black_box(enc.encode(t));
            }
        })
    });
    g.finish();
}

fn frames(n: usize) -> Vec<Frame> {
    let mut feed = feed();
    let mut enc = Encoder::new(market(&feed));
    (0..n).map(|_| enc.encode(&feed.next_tick_virtual())).collect()
}

fn ring(c: &mut Criterion) {
    let batch = frames(1024);
    let ring = Ring::new(4096);
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(batch.len() as u64));
    g.bench_function("push_pop_1024", |b| {
        b.iter(|| {
            for f in &batch {
                ring.push(f.clone());
            }
            while let Some(f) = ring.pop() {
                black_box(f);
            }
        })
    });
    g.finish();
}

fn parse(c: &mut Criterion) {
    let msg = br#"{"op":"subscribe","id":42,"channels":["trades.BTC-USD","quotes.BTC-USD","book.ETH-USD","trades.*"]}"#;
    let mut g = c.benchmark_group("parse_subscribe");
    // Like for like: both parsers produce a generic JSON value.
    g.bench_function("simd_json_value", |b| {
        b.iter_batched_ref(
            || msg.to_vec(),
            |buf| black_box(simd_json::to_borrowed_value(buf).unwrap().is_object()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("serde_json_value", |b| {
        b.iter(|| black_box(serde_json::from_slice::<serde_json::Value>(msg).unwrap()))
    });
    // What the gateway does per request: parse, validate, build the typed request.
    g.bench_function("gateway_parse_request", |b| {
        b.iter_batched_ref(
            || msg.to_vec(),
            |buf| black_box(gateway::protocol::parse_request(buf, 1000).unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A socket that takes everything: isolates queueing and writev gathering from the kernel.
struct NullSink;

impl TryWrite for NullSink {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Ok(bufs.iter().map(|b| b.len()).sum())
    }
}

fn fanout(c: &mut Criterion) {
    let market = market(&feed());
    let batch = frames(64);
    let mut g = c.benchmark_group("fanout_64_frames");
    for k in [10usize, 100, 1000] {
        let budget = Budget::new(usize::MAX);
        let mut queues: Vec<Outbound> =
            (0..k).map(|_| Outbound::new(4 << 20, budget.clone())).collect();
        g.throughput(Throughput::Elements((k * batch.len()) as u64));
        g.bench_with_input(BenchmarkId::new("to_k_queues_then_flush", k), &k, |b, _| {
            b.iter(|| {
                for f in &batch {
                    for q in queues.iter_mut() {
                        q.offer(f, Policy::Gap, &market);
                    }
                }
                for q in queues.iter_mut() {
                    black_box(q.write_to(&NullSink).unwrap());
                }
            })
        });
    }
    g.finish();
}

/// Offering a frame of a channel that fell behind to a queue that is still full: what a slow
/// consumer costs the worker for every frame it misses.
fn offer_behind(c: &mut Criterion) {
    let market = market(&feed());
    let mut batch = frames(4096);
    let ch = batch[0].ch;
    batch.retain(|f| f.ch == ch);
    let mut frame = batch.pop().expect("the first channel has frames");
    let mut q = Outbound::new(64 << 10, Budget::new(usize::MAX));
    while q.offer(&frame, Policy::Gap, &market) == Offer::Queued {
        frame.seq += 1;
    }
    assert!(q.is_behind());
    let mut g = c.benchmark_group("offer");
    g.throughput(Throughput::Elements(1));
    g.bench_function("while_behind_queue_full", |b| {
        b.iter(|| {
            frame.seq += 1;
            black_box(q.offer(&frame, Policy::Gap, &market))
        })
    });
    g.finish();
}

/// permessage-deflate: the producer's cost of deflating one message (only while a compressing
/// client subscribes to its channel), and what it saves per kind.
fn deflate(c: &mut Criterion) {
    let frames = frames(4096);
    let payloads: Vec<&[u8]> = frames.iter().map(|f| gateway::frame::payload(&f.bytes)).collect();
    print_sizes(
        "deflated frame",
        frames.iter().zip(&payloads).map(|(f, p)| {
            let deflated = gateway::deflate::text_frame(p).map_or(f.bytes.len(), |d| d.len());
            (f.ch.kind().label(), f.bytes.len(), deflated)
        }),
    );
    let mut g = c.benchmark_group("deflate");
    g.throughput(Throughput::Elements(payloads.len() as u64));
    g.bench_function("message_x4096", |b| {
        b.iter(|| {
            for p in &payloads {
                black_box(gateway::deflate::text_frame(p));
            }
        })
    });
    g.finish();
}

/// Binary data messages (`?format=binary`): the producer's cost of the extra encoding (only
/// while a binary client subscribes), the bytes per kind against JSON, and what a client
/// spends reading each form (the reference binary decoder, serde_json into a `Value`).
fn binary(c: &mut Criterion) {
    use tickfan_proto::binary::{decode, write_tick_binary};
    let mut feed = feed();
    let ticks: Vec<_> = (0..4096).map(|_| feed.next_tick_virtual()).collect();
    let frames = {
        let mut enc = Encoder::new(market(&feed));
        ticks.iter().map(|t| enc.encode(t)).collect::<Vec<_>>()
    };
    let json: Vec<Vec<u8>> =
        frames.iter().map(|f| gateway::frame::payload(&f.bytes).to_vec()).collect();
    let bin: Vec<Vec<u8>> = ticks
        .iter()
        .map(|t| {
            let mut b = Vec::new();
            write_tick_binary(&mut b, t, Some(0));
            b
        })
        .collect();
    print_sizes(
        "binary message",
        ticks
            .iter()
            .zip(&json)
            .zip(&bin)
            .map(|((t, j), b)| (t.body.kind().label(), j.len(), b.len())),
    );
    let mut g = c.benchmark_group("binary");
    g.throughput(Throughput::Elements(ticks.len() as u64));
    let mut buf = Vec::with_capacity(4096);
    g.bench_function("encode_x4096", |b| {
        b.iter(|| {
            for t in &ticks {
                buf.clear();
                black_box(write_tick_binary(&mut buf, t, Some(0)));
            }
        })
    });
    g.bench_function("client_decode_binary_x4096", |b| {
        b.iter(|| {
            for m in &bin {
                black_box(decode(m).unwrap());
            }
        })
    });
    g.bench_function("client_parse_json_x4096", |b| {
        b.iter(|| {
            for m in &json {
                black_box(serde_json::from_slice::<serde_json::Value>(m).unwrap());
            }
        })
    });
    g.finish();
}

/// Prints, per kind, the average size of `rows`' plain form (the JSON message or frame) and of
/// their `form`, and the ratio.
fn print_sizes<'a>(form: &str, rows: impl IntoIterator<Item = (&'a str, usize, usize)>) {
    let mut sizes: std::collections::BTreeMap<&str, (usize, usize, usize)> = Default::default();
    for (kind, plain, other) in rows {
        let e = sizes.entry(kind).or_default();
        *e = (e.0 + 1, e.1 + plain, e.2 + other);
    }
    for (kind, (n, plain, other)) in sizes {
        eprintln!(
            "{kind}: {n} messages, {:.0} bytes plain, {:.0} bytes as a {form} ({:.0} %)",
            plain as f64 / n as f64,
            other as f64 / n as f64,
            100.0 * other as f64 / plain as f64
        );
    }
}

criterion_group!(benches, encode, ring, parse, fanout, offer_behind, deflate, binary);
criterion_main!(benches);
