//! The tick source: the embedded simulated feed (scale-out via NATS comes later) running on
//! its own thread, encoding every tick **once** into a complete WebSocket frame and pushing it
//! into every worker's ring.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use feed_sim::{Feed, PaceOptions};

use crate::frame::Frame;
use crate::market::Market;
use crate::metrics::Stats;
use crate::ring::Ring;

/// Runs the paced feed until `stop` is set. Blocking: call it on a dedicated thread.
pub fn run_embedded(
    mut feed: Feed,
    market: Arc<Market>,
    rings: Vec<Arc<Ring>>,
    stats: Arc<Stats>,
    pace: PaceOptions,
    stop: &AtomicBool,
) {
    let mut encoder = Encoder::new(market);
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

/// Turns ticks into shared frames through the [`Market`] (which keeps books and resume
/// history): JSON into a reused scratch buffer, then header + payload into one allocation per
/// frame. Frames are allocated one by one rather than cut from a shared arena so that a frame
/// held by a slow client or the resume window keeps only its own bytes alive.
#[derive(Debug)]
pub struct Encoder {
    market: Arc<Market>,
    json: Vec<u8>,
}

impl Encoder {
    pub fn new(market: Arc<Market>) -> Encoder {
        Encoder { market, json: Vec::with_capacity(4096) }
    }

    pub fn encode(&mut self, tick: &tickfan_proto::Tick) -> Frame {
        self.market.publish(tick, &mut self.json)
    }
}
