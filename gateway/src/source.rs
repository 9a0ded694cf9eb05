//! The tick source: the embedded simulated feed (scale-out via NATS comes later) running on
//! its own thread, encoding every tick **once** into a complete WebSocket frame and pushing it
//! into every worker's ring.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use feed_sim::{Feed, PaceOptions};
use tickfan_proto::encode::write_tick_json;
use tickfan_proto::SymbolTable;

use crate::frame::{Frame, FrameArena};
use crate::metrics::Stats;
use crate::ring::Ring;

/// Runs the paced feed until `stop` is set. Blocking: call it on a dedicated thread.
pub fn run_embedded(
    mut feed: Feed,
    symbols: Arc<SymbolTable>,
    rings: Vec<Arc<Ring>>,
    stats: Arc<Stats>,
    pace: PaceOptions,
    stop: &AtomicBool,
) {
    let mut encoder = Encoder::new(symbols);
    feed.run_paced_with(stop, pace, |batch| {
        for tick in batch {
            let frame = encoder.encode(tick);
            // One Bytes, N ring slots: each push is a reference-count increment.
            for ring in &rings {
                ring.push(frame.clone());
            }
        }
        // One wake-up per worker per batch, not per frame.
        for ring in &rings {
            ring.wake();
        }
        Stats::add(&stats.ticks_in, batch.len() as u64);
    });
}

/// Turns ticks into shared frames: JSON into a reused scratch buffer, then header + payload
/// into an arena block. No allocation per tick once warm, beyond arena blocks.
#[derive(Debug)]
pub struct Encoder {
    symbols: Arc<SymbolTable>,
    json: Vec<u8>,
    arena: FrameArena,
}

impl Encoder {
    pub fn new(symbols: Arc<SymbolTable>) -> Encoder {
        Encoder { symbols, json: Vec::with_capacity(4096), arena: FrameArena::new(256 << 10) }
    }

    pub fn encode(&mut self, tick: &tickfan_proto::Tick) -> Frame {
        self.json.clear();
        write_tick_json(&mut self.json, tick, self.symbols.get(tick.sym));
        Frame {
            ch: tick.channel(),
            seq: tick.seq,
            ts: tick.ts,
            bytes: self.arena.text_frame(&self.json),
        }
    }
}
