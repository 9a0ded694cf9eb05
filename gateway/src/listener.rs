//! Accepts TCP connections, admits them at the [`Door`] and hands them to the fan-out
//! workers, round-robin. The listener does no I/O on admitted sockets: handshakes happen on the
//! worker that will own the connection. A socket turned away gets its short HTTP answer (503 or
//! 429) from here, without reaching a worker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::limits::{Door, Refusal, SocketPermit};
use crate::metrics::Stats;

/// Refused sockets being answered at once, at most; beyond, a refused socket is just closed
/// (a flood gets no more of the listener's time than this).
const MAX_ANSWERING: usize = 256;
/// How long a refused socket is given to send its request before it is answered anyway.
const ANSWER_WAIT: Duration = Duration::from_millis(500);

/// Connections the kernel keeps waiting for `accept`: room for thousands of clients reconnecting
/// at once after a restart (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// Binds the listening socket (address reuse on, so a restarted gateway binds at once).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// The accept loop and where accepted sockets go.
#[derive(Debug)]
pub struct Listener {
    /// Bound listening socket (bound before the thread starts so the address is known).
    socket: std::net::TcpListener,
    /// One inbox per worker.
    workers: Vec<UnboundedSender<(std::net::TcpStream, SocketPermit)>>,
    door: Arc<Door>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
    /// `--inject-panic listener`.
    pub inject_panic: bool,
}

impl Listener {
    pub fn new(
        socket: std::net::TcpListener,
        workers: Vec<UnboundedSender<(std::net::TcpStream, SocketPermit)>>,
        door: Arc<Door>,
        stats: Arc<Stats>,
        cancel: CancellationToken,
    ) -> Listener {
        Listener { socket, workers, door, stats, cancel, inject_panic: false }
    }

    /// Runs the accept loop on its own thread until cancelled.
    pub fn spawn(self) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new().name("tickfan-listener".into()).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return tracing::error!(error = %e, "cannot start listener runtime"),
            };
            let health = self.stats.clone();
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rt.block_on(self.run());
            }));
            if let Err(panic) = ran {
                let msg = crate::health::panic_message(&*panic);
                health.health.fail(format!("the listener panicked: {msg}"));
            }
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
        let answering = Arc::new(AtomicUsize::new(0));
        let mut beat = tokio::time::interval(crate::health::BEAT);
        loop {
            let accepted = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return,
                _ = beat.tick() => {
                    self.stats.health.beat(crate::health::Beater::Listener);
                    continue;
                }
                accepted = listener.accept() => accepted,
            };
            if self.inject_panic {
                panic!("injected panic in the listener (--inject-panic listener)");
            }
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    let permit = match self.door.admit(peer.ip(), Instant::now()) {
                        Ok(permit) => permit,
                        Err(why) => {
                            self.stats.refused(why);
                            turn_away(stream, why, &answering);
                            continue;
                        }
                    };
                    let Ok(stream) = stream.into_std() else { continue };
                    if self.workers[next].send((stream, permit)).is_err() {
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

/// Answers a refused socket ([`answer`]) on a task of its own and closes it; with
/// [`MAX_ANSWERING`] refusals already being answered, closes at once.
fn turn_away(stream: TcpStream, why: Refusal, answering: &Arc<AtomicUsize>) {
    if answering.fetch_add(1, Ordering::AcqRel) >= MAX_ANSWERING {
        answering.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let answering = answering.clone();
    tokio::spawn(async move {
        let mut stream = stream;
        answer(&mut stream, why).await;
        answering.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Answers a socket refused before any HTTP was read with the refusal's HTTP response, after
/// its request arrived (read and discarded, so that the close is a FIN the client reads the
/// answer before, not a reset) or after [`ANSWER_WAIT`], then shuts down the sending side.
pub async fn answer(stream: &mut TcpStream, why: Refusal) {
    let mut request = [0u8; 2048];
    let _ = tokio::time::timeout(ANSWER_WAIT, stream.read(&mut request)).await;
    let answer = why.http_response();
    let _ = tokio::time::timeout(ANSWER_WAIT, stream.write_all(answer.as_bytes())).await;
    let _ = stream.shutdown().await;
}
