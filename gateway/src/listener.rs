//! Accepts TCP connections and hands them to the fan-out workers, round-robin. The listener
//! does no I/O on the sockets: handshakes happen on the worker that will own the connection.

use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

/// The accept loop and where accepted sockets go.
#[derive(Debug)]
pub struct Listener {
    /// Bound listening socket (bound before the thread starts so the address is known).
    socket: std::net::TcpListener,
    /// One inbox per worker.
    workers: Vec<UnboundedSender<std::net::TcpStream>>,
    cancel: CancellationToken,
}

impl Listener {
    pub fn new(
        socket: std::net::TcpListener,
        workers: Vec<UnboundedSender<std::net::TcpStream>>,
        cancel: CancellationToken,
    ) -> Listener {
        Listener { socket, workers, cancel }
    }

    /// Runs the accept loop on its own thread until cancelled.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new().name("tickfan-listener".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return tracing::error!(error = %e, "cannot start listener runtime"),
            };
            rt.block_on(self.run());
        })
    }

    async fn run(self) {
        let listener = match self
            .socket
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(self.socket))
        {
            Ok(l) => l,
            Err(e) => return tracing::error!(error = %e, "cannot register listening socket"),
        };
        let mut next = 0;
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted.and_then(|(stream, _)| stream.into_std()) {
                Ok(stream) => {
                    backoff = Duration::from_millis(5);
                    if self.workers[next].send(stream).is_err() {
                        return; // workers are gone: shutting down
                    }
                    next = (next + 1) % self.workers.len();
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, like mini-redis.
                    tracing::warn!(error = %e, ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}
