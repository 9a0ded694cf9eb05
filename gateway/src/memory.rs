//! Giving memory back after a burst.
//!
//! A storm of connections (handshakes: hyper's buffers, HTTP tasks) leaves pages that are free
//! again once the storm is over. mimalloc purges such pages lazily, from inside later calls into
//! the allocator on the same thread, and a worker whose connections are idle makes almost none:
//! its freed pages then stay resident for good. Measured with 10,000 idle subscribed
//! connections on one worker: about 580 bytes per connection of RSS that nothing used
//! (`docs/performance.md`). Each worker therefore asks mimalloc to finish pending frees and
//! purges on its thread once its connections have settled after coming or going. Not every
//! second regardless: purged pages fault in again when the fan-out reuses them, which showed
//! as a doubled p99 with 1,000 busy connections. Nor after every trim of the outbound queues,
//! only after one that freed at least [`RELEASE_AFTER_TRIM`]: a burst that made thousands of
//! queues grow (10,000 idle subscribers through one of the simulator's bursts kept about
//! 500 bytes per connection resident without it).
//!
//! mimalloc is also built without transparent huge pages (`libmimalloc-sys`'s `no_thp`
//! feature): it would otherwise `madvise` its arenas for them, and the resident size of a
//! gateway holding many small long-lived objects then grew in 2 MiB steps as they were touched.
//! 10,000 idle subscribers on one worker measured about 1,050 bytes each just after connecting
//! and 1,350–1,800 a few seconds later; without huge pages, 680–720 throughout
//! (`docs/performance.md`).

/// Queue memory freed in one trim (`Shard::trim_queues`) worth asking mimalloc to give back.
pub const RELEASE_AFTER_TRIM: usize = 1 << 20;

/// Finishes the calling thread's deferred frees and lets mimalloc return pages whose purge
/// delay has passed. Cheap (no forced return of memory); meant for a periodic task.
pub fn release_freed() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time; with
    // `force == false` it only does what mimalloc would do lazily. If the process uses another
    // global allocator, mimalloc's heap on this thread is empty and the call does nothing.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(false)
    };
}

/// Tells when a worker's connection count has settled after a change (connections came or
/// went), which is when memory freed by their handshakes or teardown is worth giving back.
#[derive(Debug, Default)]
pub struct Churn {
    last: usize,
    changed: bool,
}

impl Churn {
    /// Called once per period with the current number of connections: `true` on the first
    /// period without change after periods with changes.
    pub fn settled(&mut self, connections: usize) -> bool {
        if connections != self.last {
            self.last = connections;
            self.changed = true;
            return false;
        }
        std::mem::take(&mut self.changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settles_once_after_a_change() {
        let mut c = Churn::default();
        assert!(!c.settled(0), "nothing happened");
        assert!(!c.settled(500), "still coming");
        assert!(!c.settled(1000));
        assert!(c.settled(1000), "settled");
        assert!(!c.settled(1000), "once");
        assert!(!c.settled(10));
        assert!(c.settled(10));
    }
}
