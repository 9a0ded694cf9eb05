//! Producer → fan-out worker rings: bounded, lock-free (crossbeam `ArrayQueue`), one per
//! worker. The producer never blocks on them: a full ring drops the frame for that worker,
//! counts it, and the worker turns the resulting seq jump into `gap` notices for its
//! subscribers (see `fanout`), so loss is always declared, never silent.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;
use tokio::sync::Notify;

use crate::frame::Frame;

/// A single-producer, single-consumer ring of frames with a wake-up for its consumer.
#[derive(Debug)]
pub struct Ring {
    queue: ArrayQueue<Frame>,
    /// Woken by the producer after a batch; stores a permit if the worker is busy, so a
    /// batch pushed between the worker's last pop and its next wait is never missed.
    notify: Notify,
    /// Frames dropped because the ring was full.
    dropped: AtomicU64,
}

impl Ring {
    pub fn new(capacity: usize) -> Ring {
        Ring { queue: ArrayQueue::new(capacity), notify: Notify::new(), dropped: AtomicU64::new(0) }
    }

    /// Pushes without blocking. Returns `false` (and counts it) when the ring is full.
    pub fn push(&self, frame: Frame) -> bool {
        match self.queue.push(frame) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    pub fn pop(&self) -> Option<Frame> {
        self.queue.pop()
    }

    /// Wakes the consumer: once per producer batch, not per frame.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Resolves after the next [`wake`](Self::wake) (or at once if one is pending).
    pub async fn woken(&self) {
        self.notify.notified().await;
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// The counter behind [`dropped`](Self::dropped), for the metrics exporter.
    pub fn dropped_counter(&self) -> &AtomicU64 {
        &self.dropped
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
