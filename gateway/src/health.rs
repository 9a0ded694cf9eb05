//! Liveness: whether every thread of the gateway is alive and responsive, for `/healthz`.
//!
//! Each worker and the listener beat a heartbeat from their own event loop every
//! [`BEAT`]; a thread that died, or is stuck in a task that never yields, stops beating. A
//! critical task that ends when it should not (a worker's fan-out or readiness driver, which
//! tokio would otherwise let end quietly on a panic) marks the gateway failed for good. The
//! `tickfan` binary goes further: its panic hook aborts the process on any panic (see
//! `main.rs`), so a supervisor restarts it; a gateway embedded as a library reports here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tickfan_proto::unix_now_ns;

/// How often each thread beats.
pub const BEAT: Duration = Duration::from_millis(250);
/// Silence after which a thread counts as not responding.
pub const SILENT_AFTER: Duration = Duration::from_secs(2);

/// The threads' heartbeats, and the failure that ended the gateway's health, if any.
#[derive(Debug)]
pub struct Health {
    /// Last beat, Unix ns, per worker, then the listener (0: not started yet).
    beats: Vec<AtomicU64>,
    failed: OnceLock<String>,
}

/// A thread that beats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beater {
    Worker(usize),
    Listener,
}

impl Default for Health {
    fn default() -> Health {
        Health::new(1)
    }
}

impl Health {
    pub fn new(workers: usize) -> Health {
        Health {
            beats: (0..=workers).map(|_| AtomicU64::new(0)).collect(),
            failed: OnceLock::new(),
        }
    }

    fn slot(&self, who: Beater) -> &AtomicU64 {
        match who {
            Beater::Worker(i) => &self.beats[i.min(self.beats.len() - 2)],
            Beater::Listener => &self.beats[self.beats.len() - 1],
        }
    }

    /// `who` is alive now.
    pub fn beat(&self, who: Beater) {
        self.slot(who).store(unix_now_ns(), Ordering::Relaxed);
    }

    /// Marks the gateway failed (the first failure is kept): `/healthz` answers 503 with `why`
    /// from now on, and the binary shuts down with exit code 3.
    pub fn fail(&self, why: String) {
        tracing::error!("{why}");
        let _ = self.failed.set(why);
    }

    /// The failure, if a part of the gateway failed.
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// `Ok` while every thread beats and nothing failed; else what is wrong.
    pub fn check(&self, now_ns: u64) -> Result<(), String> {
        if let Some(why) = self.failure() {
            return Err(why.to_owned());
        }
        let silent = SILENT_AFTER.as_nanos() as u64;
        let workers = self.beats.len() - 1;
        for (i, beat) in self.beats.iter().enumerate() {
            let last = beat.load(Ordering::Relaxed);
            let quiet = now_ns.saturating_sub(last);
            if last != 0 && quiet > silent {
                let who =
                    if i == workers { "the listener".to_owned() } else { format!("worker {i}") };
                return Err(format!("{who} not responding for {:.1} s", quiet as f64 / 1e9));
            }
        }
        Ok(())
    }
}

/// The message of a caught panic, when it has one.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_thread_or_a_failure_makes_the_gateway_unhealthy() {
        let h = Health::new(2);
        assert_eq!(h.check(unix_now_ns()), Ok(()), "threads not started yet count as alive");
        h.beat(Beater::Worker(0));
        h.beat(Beater::Worker(1));
        h.beat(Beater::Listener);
        let now = unix_now_ns();
        assert_eq!(h.check(now), Ok(()));
        let later = now + 3_000_000_000;
        h.slot(Beater::Worker(0)).store(later, Ordering::Relaxed);
        h.slot(Beater::Listener).store(later, Ordering::Relaxed);
        let err = h.check(later).unwrap_err();
        assert!(err.starts_with("worker 1 not responding for 3"), "{err}");
        h.fail("worker 0's fan-out task ended".into());
        assert_eq!(h.check(now).unwrap_err(), "worker 0's fan-out task ended");
    }
}
