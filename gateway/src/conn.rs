//! One WebSocket connection after the upgrade: its reader (frames decoded by `inbound`, limited
//! by `limits`, requests parsed by `protocol` and carried out by `ops`), serviced by the
//! worker's readiness driver (`readiness`) when the socket is readable, and its closing task.
//! Data never passes through here: the fan-out writes shared frames straight into the socket
//! (see `fanout`), plain or through its TLS session (`tls`).

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use fastwebsockets::upgrade::UpgradeFut;
use hyper_util::rt::TokioIo;
use tickfan_proto::{unix_now_ns, ErrorCode};
use tokio::io::unix::AsyncFd;

use crate::channels::ConnKey;
use crate::close::CloseCode;
use crate::fanout::FlushState;
use crate::frame::{self, Opcode};
use crate::http::Rewind;
use crate::inbound::{Decoder, FrameIn, OpIn, Violation};
use crate::limits::{RequestLimiter, SocketPermit, Verdict};
use crate::metrics::{CloseReason, Stats};
use crate::protocol::{self, Op, Rejection, Request};
use crate::sse::Form;
use crate::tls::Sock;
use crate::worker::WorkerCtx;

/// How long a closing connection may take to flush its close frame.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to read (and discard) after our FIN, so the peer sees our close frame rather than
/// a reset caused by unread input.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);

/// Why reading stopped.
#[derive(Debug)]
pub enum End {
    /// Close the connection with this RFC 6455 code and reason.
    Close(CloseCode, String),
    /// A close frame is already queued (echo of the client's).
    CloseQueued,
    /// The peer is gone (EOF, reset).
    Gone,
    /// The shard ended the connection (write error, slow-consumer close, shutdown).
    Stopped,
}

/// A text or binary message being received in fragments (RFC 6455 §5.4).
#[derive(Debug)]
enum Partial {
    /// `compressed`: permessage-deflate, inflated once complete.
    Text {
        buf: Vec<u8>,
        compressed: bool,
    },
    Binary(usize),
}

/// Bytes read from a socket per `read` call; on the stack, not kept per connection.
const READ_CHUNK: usize = 4096;
/// Reads per round before the driver services other connections.
const READS_PER_ROUND: usize = 16;

/// Takes over a connection from the completed upgrade: registers it with the shard (which
/// writes to it) and with the worker's readiness driver (which reads it), then returns. No
/// task stays behind: while the client sends nothing, which is the common case for a
/// market-data subscriber, the connection is its [`Live`] reader state and its shard entry.
pub async fn run(
    ctx: Rc<WorkerCtx>,
    upgrade: UpgradeFut,
    streams: Option<String>,
    permit: SocketPermit,
    admitted: Option<crate::auth::Admitted>,
    form: Form,
) {
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => return tracing::debug!(error = %e, "upgrade did not complete"),
    };
    // Take the raw socket (and its TLS session) back from hyper and tokio: the fan-out writes
    // pre-built frames to it directly, and the worker's own epoll set watches it.
    let Some((sock, read_buf)) = take_socket(ws.into_inner().into_inner()) else { return };
    let sock = Rc::new(sock);
    let _ = sock.tcp().set_nodelay(true);
    let key = ctx.shard.borrow_mut().open(sock.clone(), ctx.cfg.queue_bytes, form);
    opened(&ctx, key, admitted.as_ref(), form);

    let grants = admitted.as_ref().map(|a| a.grants.clone());
    let mut reader = Reader::new(&ctx, key, grants, form);
    if let Some(streams) = streams {
        let channels = streams.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        let subscribe = Request { id: None, op: Op::Subscribe { channels, resume: None } };
        reader.session.apply(&ctx, subscribe);
    }
    // Bytes the client sent right after its handshake, already read by hyper, come first.
    // Copied, so that hyper's read buffer is freed now rather than held for the connection's life.
    // Then what the TLS session decrypted already: the socket will not signal it again.
    let early_end = {
        let mut early = read_buf.to_vec();
        drop(read_buf);
        let mut end = reader.on_bytes(&ctx, &mut early);
        let mut buf = [0u8; READ_CHUNK];
        while end.is_none() {
            let n = sock.take_buffered(&mut buf);
            if n == 0 {
                break;
            }
            end = reader.on_bytes(&ctx, &mut buf[..n]);
        }
        end
    };
    watch(ctx, key, Live { reader, sock, permit: Some(permit) }, early_end);
}

/// Takes over an admitted Server-Sent Events request (`sse::serve`): registers the stream
/// with the shard, which writes `head` (the response head) and then its events, and with the
/// readiness driver, which only watches for the client going away.
pub fn run_sse(
    ctx: Rc<WorkerCtx>,
    sock: Sock,
    permit: SocketPermit,
    admitted: Option<crate::auth::Admitted>,
    stream: crate::sse::Stream,
) {
    let sock = Rc::new(sock);
    let _ = sock.tcp().set_nodelay(true);
    let key = ctx.shard.borrow_mut().open_sse(sock.clone(), ctx.cfg.queue_bytes, stream.head);
    opened(&ctx, key, admitted.as_ref(), Form::Sse);
    {
        let mut shard = ctx.shard.borrow_mut();
        let crate::ops::Channels { specs, stats } = stream.channels;
        if stats {
            shard.set_stats(key, true);
        }
        let epoch = shard.market().epoch().to_owned();
        let reply = crate::ops::subscribed_reply(&ctx.symbols, &specs, stats, epoch, None);
        shard.subscribe_sse(key, &specs, stream.last_event, reply);
    }
    let reader = Reader::new(&ctx, key, None, Form::Sse);
    // Input the TLS session decrypted already: the socket will not signal it again.
    let early_end = (sock.take_buffered(&mut [0u8; 1]) > 0).then(sse_input_end);
    watch(ctx, key, Live { reader, sock, permit: Some(permit) }, early_end);
}

/// Why an event stream that sent something ends: it takes no input after its request.
fn sse_input_end() -> End {
    End::Close(CloseCode::Policy, "an event stream takes no input".into())
}

/// Counts a connection just registered with the shard and schedules its timed events: the
/// expiry of its credentials, the notice and close at `--max-connection-age`.
fn opened(ctx: &WorkerCtx, key: ConnKey, admitted: Option<&crate::auth::Admitted>, form: Form) {
    if let Some(admitted) = admitted {
        tracing::debug!(conn = key, who = %admitted.who, "authenticated");
        if let Some(exp) = admitted.expires {
            let left = Duration::from_secs(exp).saturating_sub(Duration::from_nanos(unix_now_ns()));
            // An `exp` too far ahead to be an instant here never comes: nothing to schedule.
            if let Some(at) = Instant::now().checked_add(left) {
                ctx.shard.borrow_mut().schedule(key, at, crate::deadlines::Due::Expired);
            }
        }
    }
    if ctx.cfg.max_connection_age > 0.0 {
        let max_age = Duration::from_secs_f64(ctx.cfg.max_connection_age);
        let spread = (unix_now_ns() % 1_000_003) as f64 / 1_000_003.0;
        let mut shard = ctx.shard.borrow_mut();
        for (at, due) in crate::deadlines::age_deadlines(Instant::now(), max_age, spread) {
            shard.schedule(key, at, due);
        }
    }
    ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
    ctx.stats.connections_by_format[form.index()].fetch_add(1, Ordering::Relaxed);
    Stats::add(&ctx.stats.connections_opened, 1);
}

/// Hands a registered connection to the readiness driver, or ends it (`early_end`).
fn watch(ctx: Rc<WorkerCtx>, key: ConnKey, live: Live, early_end: Option<End>) {
    match early_end {
        Some(end) => live.end(ctx, key, end),
        None => {
            if let Err(failed) = ctx.io.adopt(key, live) {
                let (e, live) = *failed;
                tracing::warn!(error = %e, "cannot watch the connection");
                live.end(
                    ctx,
                    key,
                    End::Close(CloseCode::Internal, "server cannot watch the socket".into()),
                );
            }
        }
    }
}

/// An open connection as the readiness driver keeps it, from the upgrade until it ends: its
/// reader's state, its socket and its place in the connection limit.
#[derive(Debug)]
pub struct Live {
    reader: Reader,
    sock: Rc<Sock>,
    /// Held until the connection is forgotten (then by `finish`).
    permit: Option<SocketPermit>,
}

/// What one round of [`Live::step`] came to.
#[derive(Debug)]
pub enum Step {
    /// Nothing more to read until the next readiness edge.
    Wait,
    /// Input is left (a client that keeps sending): service again after the others.
    More,
    /// The connection is ending.
    End(End),
}

impl Live {
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// One round: flushes the socket if it was full, stops if the shard ended the connection,
    /// and (when `read`) reads and applies what the client sent, until the socket has no more.
    pub fn step(&mut self, ctx: &WorkerCtx, key: ConnKey, read: bool) -> Step {
        for _ in 0..READS_PER_ROUND {
            {
                let mut shard = ctx.shard.borrow_mut();
                let Some(view) = shard.view(key) else { return Step::End(End::Stopped) };
                // A full socket may have room again; a write that fails ends the connection.
                if view.stop || (view.blocked && shard.flush(key) == FlushState::Dead) {
                    return Step::End(End::Stopped);
                }
            }
            if !read {
                return Step::Wait;
            }
            let mut buf = [0u8; READ_CHUNK];
            match self.sock.read(&mut buf) {
                Ok(0) => return Step::End(End::Gone),
                Ok(n) => {
                    if let Some(end) = self.reader.on_bytes(ctx, &mut buf[..n]) {
                        return Step::End(end);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Step::End(End::Gone),
            }
        }
        Step::More
    }

    /// Hands the ending connection to a closing task of its own (see [`finish`]).
    pub fn end(self, ctx: Rc<WorkerCtx>, key: ConnKey, end: End) {
        ctx.inbound.recharge(self.reader.charged as usize, 0);
        drop(tokio::task::spawn_local(finish(ctx, key, self.sock, end, self.permit)));
    }
}

/// The upgraded connection's socket, plain or TLS, and the bytes read past the request (by
/// hyper, then what is left of those read ahead).
fn take_socket(upgraded: hyper::upgrade::Upgraded) -> Option<(Sock, bytes::Bytes)> {
    use crate::sse::IntoSock;
    type Tls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    let early = |read_buf: bytes::Bytes, pre: bytes::Bytes| match (read_buf.len(), pre.len()) {
        (_, 0) => read_buf,
        (0, _) => pre,
        _ => [read_buf, pre].concat().into(),
    };
    match upgraded.downcast::<TokioIo<Rewind<tokio::net::TcpStream>>>() {
        Ok(parts) => {
            let Rewind { pre, io } = parts.io.into_inner();
            Some((io.into_sock()?, early(parts.read_buf, pre)))
        }
        Err(upgraded) => match upgraded.downcast::<TokioIo<Rewind<Tls>>>() {
            Ok(parts) => {
                let Rewind { pre, io } = parts.io.into_inner();
                Some((io.into_sock()?, early(parts.read_buf, pre)))
            }
            Err(_) => {
                tracing::error!("upgraded connection is neither TCP nor TLS over TCP");
                None
            }
        },
    }
}

/// The socket as tokio's reactor sees it while the connection closes.
struct Fd(Rc<Sock>);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Ends a connection: counts why, sends the close frame after what is queued, then FIN, then
/// reads out the peer's input for a moment, and forgets the connection.
async fn finish(
    ctx: Rc<WorkerCtx>,
    key: ConnKey,
    sock: Rc<Sock>,
    end: End,
    permit: Option<SocketPermit>,
) {
    let _permit = permit;
    tracing::debug!(conn = key, ?end, "connection ending");
    let closed_for = ctx.shard.borrow().closed_for(key);
    ctx.stats.closed(match &end {
        End::CloseQueued => CloseReason::ClientClose,
        End::Gone => CloseReason::PeerGone,
        End::Stopped => closed_for.unwrap_or(CloseReason::ServerStopped),
        End::Close(code, _) => CloseReason::for_code(*code),
    });
    if let End::Close(code, reason) = &end {
        ctx.shard.borrow_mut().close(key, *code, reason);
    }
    // A dead peer reads nothing: waiting for its queue to drain would only hold the socket.
    let dead_peer = closed_for == Some(CloseReason::PingTimeout);
    let interest = tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE;
    if !matches!(end, End::Gone) && !dead_peer {
        // SAFETY: `Fd` holds the socket (an `Rc<Sock>`), so its descriptor stays open and
        // the same for as long as the `AsyncFd` lives.
        #[allow(unsafe_code)]
        let registered = unsafe { AsyncFd::register_with_interest(Fd(sock.clone()), interest) };
        if let Ok(fd) = registered {
            // Let the queue, close frame last, reach the peer; then FIN and drain its input.
            let drained = std::future::poll_fn(|cx| drain(&ctx, key, &fd, cx));
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, drained).await;
            sock.shutdown_write();
            let _ = tokio::time::timeout(LINGER_TIMEOUT, linger(&fd)).await;
        }
    }
    if let Some(form) = ctx.shard.borrow_mut().remove(key) {
        ctx.stats.connections_by_format[form.index()].fetch_sub(1, Ordering::Relaxed);
    }
    ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Flushes a closing connection whenever its socket has room, until its queue is empty (or it
/// cannot be written any more).
fn drain(
    ctx: &WorkerCtx,
    key: ConnKey,
    fd: &AsyncFd<Fd>,
    cx: &mut std::task::Context<'_>,
) -> Poll<()> {
    loop {
        {
            let mut shard = ctx.shard.borrow_mut();
            let Some(view) = shard.view(key) else { return Poll::Ready(()) };
            if view.drained {
                return Poll::Ready(());
            }
            if !view.blocked && shard.flush(key) != FlushState::Blocked {
                continue;
            }
        }
        match fd.poll_write_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(mut guard)) => {
                // Cleared before writing: the edge after a `WouldBlock` sets it again.
                guard.clear_ready();
                ctx.shard.borrow_mut().flush(key);
            }
        }
    }
}

/// Reads and discards the peer's input until it closes.
async fn linger(fd: &AsyncFd<Fd>) {
    let mut sink = [0u8; 1024];
    loop {
        let Ok(mut guard) = fd.readable().await else { return };
        match guard.try_io(|fd| fd.get_ref().0.tcp().read(&mut sink)) {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) | Err(_) => {}
        }
    }
}

/// A connection's reading side: the frame decoder and what the frames mean.
#[derive(Debug)]
struct Reader {
    decoder: Decoder,
    session: Session,
    /// Bytes of client input this connection holds (an unfinished frame, a fragmented
    /// message), as charged to the gateway-wide inbound budget (at most --max-frame-bytes and
    /// a read's worth).
    charged: u32,
    /// A Server-Sent Events stream: no input is expected after its request.
    sse: bool,
}

impl Reader {
    /// The reader of connection `key` speaking `form`, its credentials granting `grants`
    /// (`None`: auth is off, or nothing is asked of it after its request).
    fn new(
        ctx: &WorkerCtx,
        key: ConnKey,
        grants: Option<std::sync::Arc<crate::auth::Grants>>,
        form: Form,
    ) -> Reader {
        Reader {
            decoder: Decoder::default(),
            charged: 0,
            sse: form == Form::Sse,
            session: Session {
                key,
                limiter: RequestLimiter::new(ctx.cfg.max_requests_per_sec, Instant::now()),
                partial: None,
                grants,
                deflate: form == Form::Deflate,
            },
        }
    }

    /// Decodes and applies the frames in `bytes`; `Some` when the connection must end.
    fn on_bytes(&mut self, ctx: &WorkerCtx, bytes: &mut [u8]) -> Option<End> {
        if self.sse {
            return (!bytes.is_empty()).then(sse_input_end);
        }
        let Reader { decoder, session, charged, .. } = self;
        let mut end = None;
        let decoded = decoder.feed(bytes, ctx.cfg.max_frame_bytes, session.deflate, |frame| {
            end = session.on_frame(ctx, frame);
            end.is_none()
        });
        let end = match decoded {
            Err(v) => Some(v.into()),
            Ok(()) => end,
        };
        // Both are bounded by --max-frame-bytes (at most 1 GiB) and a read: a u32.
        let held = (decoder.held_bytes() + session.partial_bytes()) as u32;
        if held != *charged {
            if !ctx.inbound.recharge(*charged as usize, held as usize) {
                return Some(End::Close(
                    CloseCode::TryAgainLater,
                    "the server holds too much client input: try again later".into(),
                ));
            }
            *charged = held;
        }
        end
    }
}

/// The reading side of one connection.
#[derive(Debug)]
struct Session {
    key: ConnKey,
    limiter: RequestLimiter,
    /// A fragmented message being received (boxed: rare, and every idle connection would pay for it).
    partial: Option<Box<Partial>>,
    /// What the connection's credentials grant; `None`: auth is off, everything is.
    grants: Option<std::sync::Arc<crate::auth::Grants>>,
    /// permessage-deflate was negotiated: the client may send compressed messages.
    deflate: bool,
}

impl Session {
    /// One complete client frame (RFC 6455 §5.4–5.6); `Some` when the connection must end.
    fn on_frame(&mut self, ctx: &WorkerCtx, frame: FrameIn<'_>) -> Option<End> {
        // Any frame (a pong above all) shows the peer is alive.
        ctx.shard.borrow_mut().alive(self.key);
        let max_frame = ctx.cfg.max_frame_bytes;
        // Every frame but a close takes a token; one beyond the rate is refused (a request)
        // or ignored (any other frame), and a flood ends the connection.
        if frame.op != OpIn::Close {
            match self.limiter.check(ctx.cfg.max_requests_per_sec, Instant::now()) {
                Verdict::Allow => {}
                Verdict::Flood => {
                    return Some(End::Close(CloseCode::Policy, "frame flood".into()));
                }
                Verdict::Refuse if frame.op == OpIn::Text && frame.fin => {
                    self.refuse(
                        ctx,
                        Rejection::new(
                            None,
                            ErrorCode::RateLimited,
                            format!("at most {} requests per second", ctx.cfg.max_requests_per_sec),
                        ),
                    );
                    return None;
                }
                // Data may not be dropped from the middle of a fragmented message: it ends.
                Verdict::Refuse
                    if matches!(frame.op, OpIn::Text | OpIn::Binary | OpIn::Continuation) =>
                {
                    return Some(End::Close(
                        CloseCode::Policy,
                        "frame rate exceeded while fragmenting".into(),
                    ));
                }
                Verdict::Refuse => return None,
            }
        }
        match frame.op {
            OpIn::Close => {
                let echo = frame::build(Opcode::Close, frame.payload);
                ctx.shard.borrow_mut().echo_close(self.key, echo);
                Some(End::CloseQueued)
            }
            OpIn::Ping => {
                let pong = frame::build(Opcode::Pong, frame.payload);
                ctx.shard.borrow_mut().send_control(self.key, pong);
                None
            }
            OpIn::Pong => None,
            OpIn::Text | OpIn::Binary if self.partial.is_some() => {
                Some(protocol_error("a new message began before the fragmented one was finished"))
            }
            OpIn::Text if frame.fin => {
                self.on_message(ctx, frame.payload, frame.compressed, max_frame)
            }
            OpIn::Text => {
                let (buf, compressed) = (frame.payload.to_vec(), frame.compressed);
                self.partial = Some(Box::new(Partial::Text { buf, compressed }));
                None
            }
            OpIn::Binary if frame.fin => self.refuse_binary(ctx),
            OpIn::Binary => {
                self.partial = Some(Box::new(Partial::Binary(frame.payload.len())));
                None
            }
            OpIn::Continuation => match self.partial.take().map(|p| *p) {
                None => Some(protocol_error("continuation frame without a message to continue")),
                Some(Partial::Text { mut buf, compressed }) => {
                    buf.extend_from_slice(frame.payload);
                    if buf.len() > max_frame {
                        Some(Violation::too_big(max_frame).into())
                    } else if !frame.fin {
                        self.partial = Some(Box::new(Partial::Text { buf, compressed }));
                        None
                    } else {
                        self.on_message(ctx, &mut buf, compressed, max_frame)
                    }
                }
                Some(Partial::Binary(n)) => {
                    let n = n + frame.payload.len();
                    if n > max_frame {
                        Some(Violation::too_big(max_frame).into())
                    } else if frame.fin {
                        self.refuse_binary(ctx)
                    } else {
                        self.partial = Some(Box::new(Partial::Binary(n)));
                        None
                    }
                }
            },
        }
    }

    /// A complete text message, `compressed` (then inflated first, to at most `max` bytes) or
    /// not: UTF-8 checked, then one request.
    fn on_message(
        &mut self,
        ctx: &WorkerCtx,
        payload: &mut [u8],
        compressed: bool,
        max: usize,
    ) -> Option<End> {
        let mut inflated;
        let text = match compressed {
            false => payload,
            true => match crate::deflate::inflate(payload, max) {
                Ok(text) => {
                    inflated = text;
                    &mut inflated[..]
                }
                Err(violation) => return Some(violation.into()),
            },
        };
        match std::str::from_utf8(text) {
            Ok(_) => self.on_text(ctx, text),
            Err(_) => Some(Violation::bad_utf8().into()),
        }
    }

    /// A complete text message: one control request.
    fn on_text(&mut self, ctx: &WorkerCtx, buf: &mut [u8]) -> Option<End> {
        if ctx.cfg.inject_panic == Some(crate::config::PanicSite::Request) {
            panic!("injected panic in a client request (--inject-panic request)");
        }
        let max = ctx.cfg.max_message_bytes;
        if buf.len() > max {
            self.refuse(
                ctx,
                Rejection::new(
                    None,
                    ErrorCode::MessageTooLarge,
                    format!("requests are limited to {max} bytes; this one has {}", buf.len()),
                ),
            );
            return None;
        }
        match protocol::parse_request(buf, ctx.cfg.max_channels) {
            Ok(req) => self.apply(ctx, req),
            Err(rejection) => self.refuse(ctx, rejection),
        }
        None
    }

    /// Bytes held for a fragmented message being received.
    fn partial_bytes(&self) -> usize {
        match self.partial.as_deref() {
            Some(Partial::Text { buf, .. }) => buf.capacity(),
            Some(Partial::Binary(_)) | None => 0,
        }
    }

    fn refuse_binary(&mut self, ctx: &WorkerCtx) -> Option<End> {
        self.refuse(
            ctx,
            Rejection::new(
                None,
                ErrorCode::BinaryFrame,
                "binary frames are not supported: send JSON requests as text frames",
            ),
        );
        None
    }

    fn refuse(&self, ctx: &WorkerCtx, rejection: Rejection) {
        ctx.stats.reject(rejection.code);
        ctx.shard.borrow_mut().send_json(self.key, &rejection.to_json());
    }

    /// Applies one valid request: its operation answers, or it is refused.
    fn apply(&mut self, ctx: &WorkerCtx, req: Request) {
        match crate::ops::apply(ctx, self.key, self.grants.as_deref(), req) {
            Ok(Some(reply)) => ctx.shard.borrow_mut().send_json(self.key, &reply),
            Ok(None) => {}
            Err(rejection) => self.refuse(ctx, rejection),
        }
    }
}

/// The payload of the server's pings: the send time, Unix ns, big-endian (clients echo it
/// in their pong, which makes a round-trip time measurable).
pub fn ping_payload() -> [u8; 8] {
    unix_now_ns().to_be_bytes()
}

impl From<Violation> for End {
    fn from(v: Violation) -> End {
        End::Close(v.code, v.reason)
    }
}

fn protocol_error(reason: &str) -> End {
    Violation::protocol(reason).into()
}
#[cfg(test)]
mod tests {
    /// Every open connection has one of these in its worker's table, idle or not
    /// (docs/architecture.md, "Memory per connection"): growing it is a decision, not an
    /// accident.
    #[test]
    fn an_idle_connection_reader_stays_small() {
        assert!(
            std::mem::size_of::<super::Live>() <= 112,
            "{}",
            std::mem::size_of::<super::Live>()
        );
    }
}
