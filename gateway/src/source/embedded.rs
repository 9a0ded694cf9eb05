//! The embedded simulated feed (`--source embedded`, the default): `feed-sim`'s generator on
//! the source thread, paced in real time, nothing else to run.

use std::sync::atomic::AtomicBool;

use feed_sim::{Feed, PaceOptions, SimConfig};

use super::{Opened, Publisher};
use crate::config::Config;

/// Builds the simulator from `--symbols`, `--rate`, `--seed`, `--burst-every`, `--book-depth`,
/// `--feed-batch-us` and `--event-time`.
pub fn open(cfg: &Config) -> anyhow::Result<Opened> {
    let sim = SimConfig {
        symbols: cfg.symbols,
        rate: cfg.rate,
        seed: cfg.seed,
        burst_every_s: cfg.burst_every,
        book_depth: cfg.book_depth,
        ..SimConfig::default()
    };
    sim.validate().map_err(anyhow::Error::msg)?;
    let mut feed = Feed::new(sim);
    let pace = PaceOptions {
        min_batch_interval: std::time::Duration::from_micros(cfg.feed_batch_us),
        event_time: cfg.event_time,
        ..PaceOptions::default()
    };
    Ok(Opened {
        symbols: feed.symbols().clone(),
        epoch: None,
        run: Box::new(move |mut publisher: Publisher, stop: &AtomicBool| {
            feed.run_paced_with(stop, pace, |batch| publisher.publish(batch));
        }),
        may_block: false,
    })
}
