//! Worker-owned readiness: every open WebSocket connection of a worker is registered, edge
//! triggered, with one epoll instance of the worker's own (`mio::Poll`), and one task per worker
//! waits on it and services the connections it names. No task, waker or tokio I/O registration
//! per connection: an idle subscriber costs its reader's state (about a hundred bytes, see
//! `conn::Live`) and its place in the shard, as in uWebSockets, whose sockets are bare structs
//! in an epoll set.
//!
//! The worker's epoll descriptor is itself registered with tokio's reactor (`AsyncFd`), so the
//! driver sleeps inside the worker's runtime beside the fan-out, handshakes and timers.

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use tokio::io::unix::AsyncFd;

use crate::channels::ConnKey;
use crate::conn::{Live, Step};
use crate::worker::WorkerCtx;

/// Readiness events taken from epoll per call.
const EVENTS: usize = 1024;

/// The open connections of one worker, as its readiness driver sees them.
#[derive(Debug)]
pub struct Io {
    /// The worker's epoll set (a second handle on the driver's `Poll`), to add sockets to.
    registry: mio::Registry,
    /// Each open connection's reader, at its shard key; `None` for free keys and while the
    /// driver is servicing it.
    live: RefCell<Vec<Option<Live>>>,
}

impl Io {
    /// A new, empty epoll set: the `Poll` goes to [`drive`], the `Io` to the worker's context.
    pub fn new() -> io::Result<(Io, mio::Poll)> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        Ok((Io { registry, live: RefCell::new(Vec::new()) }, poll))
    }

    /// Starts watching connection `key`: from now on the driver reads it when readable, flushes
    /// it when writable after being full, and ends it when the shard stops it. Edge-triggered
    /// registration reports the socket's present state once, so input that arrived before this
    /// call is read too.
    pub fn adopt(&self, key: ConnKey, live: Live) -> Result<(), Box<(io::Error, Live)>> {
        let fd = live.fd();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.registry.register(&mut SourceFd(&fd), Token(key), interest) {
            return Err(Box::new((e, live)));
        }
        let mut table = self.live.borrow_mut();
        if table.len() <= key {
            table.resize_with(key + 1, || None);
        }
        table[key] = Some(live);
        Ok(())
    }

    fn take(&self, key: ConnKey) -> Option<Live> {
        self.live.borrow_mut().get_mut(key).and_then(Option::take)
    }

    fn put(&self, key: ConnKey, live: Live) {
        self.live.borrow_mut()[key] = Some(live);
    }

    fn forget(&self, fd: RawFd) {
        let _ = self.registry.deregister(&mut SourceFd(&fd));
    }

    /// Lets the connections go (worker shutdown): their sockets close with them.
    pub fn clear(&self) {
        let gone = std::mem::take(&mut *self.live.borrow_mut());
        for live in gone.iter().flatten() {
            self.forget(live.fd());
        }
    }
}

/// Waits for readiness on the worker's epoll set and for connections the shard ended, and
/// services each connection named: reads and applies what its client sent, flushes it if it was
/// full, hands it to its closing task when it ends. Runs until the worker stops.
pub async fn drive(ctx: Rc<WorkerCtx>, poll: mio::Poll) {
    // SAFETY: the `AsyncFd` owns the `Poll`, which owns the epoll descriptor: it stays open and
    // the same for as long as the `AsyncFd` lives.
    #[allow(unsafe_code)]
    let registered =
        unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) };
    let mut poll = match registered {
        Ok(poll) => poll,
        Err(e) => return tracing::error!(error = %e, "cannot watch the worker's epoll set"),
    };
    let mut events = Events::with_capacity(EVENTS);
    // (key, read it): what to service this round, and what asked to go on next round.
    let mut keys: Vec<(ConnKey, bool)> = Vec::new();
    let mut again: Vec<(ConnKey, bool)> = Vec::new();
    let mut woken: Vec<ConnKey> = Vec::new();
    let mut full = false;
    loop {
        if full || !again.is_empty() {
            // More is ready: let the fan-out and handshakes run first.
            tokio::task::yield_now().await;
        } else {
            // Readiness is cleared before epoll is read, so an event arriving after the read
            // sets it again: none is missed.
            std::future::poll_fn(|cx| {
                let mut shard = ctx.shard.borrow_mut();
                shard.set_driver(cx.waker());
                if shard.take_woken(&mut woken) {
                    return std::task::Poll::Ready(());
                }
                drop(shard);
                match poll.poll_read_ready_mut(cx) {
                    std::task::Poll::Ready(Ok(mut guard)) => {
                        guard.clear_ready();
                        std::task::Poll::Ready(())
                    }
                    std::task::Poll::Ready(Err(e)) => {
                        tracing::error!(error = %e, "worker epoll set failed");
                        std::task::Poll::Ready(())
                    }
                    std::task::Poll::Pending => std::task::Poll::Pending,
                }
            })
            .await;
        }
        match poll.get_mut().poll(&mut events, Some(Duration::ZERO)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot read the worker's epoll set");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let mut n = 0;
        for ev in events.iter() {
            n += 1;
            // A write-only edge (the socket has room again) needs no read.
            let read = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            keys.push((ev.token().0, read));
        }
        full = n == EVENTS;
        ctx.shard.borrow_mut().take_woken(&mut woken);
        keys.extend(woken.drain(..).map(|k| (k, false)));
        keys.append(&mut again);
        for (key, read) in keys.drain(..) {
            service(&ctx, key, read, &mut again);
        }
    }
}

/// One round for one connection.
fn service(ctx: &Rc<WorkerCtx>, key: ConnKey, read: bool, again: &mut Vec<(ConnKey, bool)>) {
    let Some(mut live) = ctx.io.take(key) else { return };
    match live.step(ctx, key, read) {
        Step::Wait => ctx.io.put(key, live),
        Step::More => {
            ctx.io.put(key, live);
            again.push((key, true));
        }
        Step::End(end) => {
            ctx.io.forget(live.fd());
            live.end(ctx.clone(), key, end);
        }
    }
}
