//! Giving memory back after a burst.
//!
//! A storm of connections (handshakes: hyper's buffers, HTTP tasks) leaves pages that are free
//! again once the storm is over. mimalloc purges such pages lazily, from inside later calls into
//! the allocator on the same thread, and a worker whose connections are idle makes almost none:
//! its freed pages then stay resident for good. Measured with 10,000 idle subscribed
//! connections on one worker: about 580 bytes per connection of RSS that nothing used
//! (`docs/performance.md`). Each worker therefore asks mimalloc once a second to finish
//! pending frees and purges on its thread.

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
