//! One WebSocket connection after the upgrade: one small task per connection reads client
//! frames (decoded by `inbound`) and applies control messages, and waits for writability when
//! the socket would block. Data never passes through here: the fan-out writes shared frames
//! straight into the socket (see `fanout`).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fastwebsockets::upgrade::UpgradeFut;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tickfan_proto::{
    unix_now_ns, ChannelId, ChannelSpec, ErrorCode, ParseChannelError, SymbolTable,
};
use tokio::net::TcpStream;

use crate::channels::ConnKey;
use crate::fanout::{FlushState, Subscribed, TaskView, SYS_STATS};
use crate::frame::{self, Opcode};
use crate::inbound::{Decoder, FrameIn, OpIn, Violation};
use crate::metrics::{CloseReason, Stats};
use crate::protocol::{self, Op, Rejection, Request, Resume};
use crate::worker::WorkerCtx;

/// How long a closing connection may take to flush its close frame.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to read (and discard) after our FIN, so the peer sees our close frame rather than
/// a reset caused by unread input.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);

/// Gateway-wide connection limit; a permit is held by each open WebSocket connection.
#[derive(Debug)]
pub struct ConnLimit {
    max: usize,
    current: AtomicUsize,
}

/// Holds one unit of [`ConnLimit`] until dropped.
#[derive(Debug)]
pub struct ConnPermit(Arc<ConnLimit>);

impl ConnLimit {
    pub fn new(max: usize) -> Arc<ConnLimit> {
        Arc::new(ConnLimit { max, current: AtomicUsize::new(0) })
    }

    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnPermit> {
        let prev = self.current.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max {
            self.current.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnPermit(self.clone()))
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-connection request rate limit: a token bucket refilled at `rate`/s holding `2 × rate`.
/// Requests beyond it are refused with `rate_limited`; a client that keeps going far beyond
/// (more than `8 × rate` refusals without one accepted request) is closed with 1008.
#[derive(Debug)]
pub struct RequestLimiter {
    rate: f64,
    tokens: f64,
    last: Instant,
    refused_in_a_row: u32,
}

/// Verdict of [`RequestLimiter::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Refuse,
    Flood,
}

impl RequestLimiter {
    pub fn new(rate_per_sec: u32) -> RequestLimiter {
        let rate = f64::from(rate_per_sec);
        RequestLimiter { rate, tokens: 2.0 * rate, last: Instant::now(), refused_in_a_row: 0 }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(2.0 * self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            return Verdict::Allow;
        }
        self.refused_in_a_row += 1;
        if f64::from(self.refused_in_a_row) > 8.0 * self.rate {
            Verdict::Flood
        } else {
            Verdict::Refuse
        }
    }
}

/// Why reading stopped.
#[derive(Debug)]
enum End {
    /// Close the connection with this RFC 6455 code and reason.
    Close(u16, String),
    /// A close frame is already queued (echo of the client's, or fastwebsockets' 1002).
    CloseQueued,
    /// The peer is gone (EOF, reset).
    Gone,
    /// The shard ended the connection (write error, slow-consumer close, shutdown).
    Stopped,
}

/// A text or binary message being received in fragments (RFC 6455 §5.4).
enum Partial {
    Text(Vec<u8>),
    Binary(usize),
}

/// Bytes read from a socket per `read` call; on the stack, not kept per connection.
const READ_CHUNK: usize = 4096;
/// Reads per wake-up before the task lets the worker's other tasks run.
const READS_PER_POLL: usize = 16;

/// Runs a connection from the completed upgrade to its close.
///
/// One task per connection, and a small one: while the client sends nothing (the common case
/// for a market-data subscriber) the task holds no buffer, only its decoder's empty state and
/// the request limiter. It waits for the socket to become readable, reads into a buffer on the
/// stack and decodes what came; it also waits for writability when the fan-out found the
/// socket full. Data frames never pass through here: the fan-out writes them.
pub async fn run(
    ctx: Rc<WorkerCtx>,
    upgrade: UpgradeFut,
    streams: Option<String>,
    permit: ConnPermit,
) {
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => return tracing::debug!(error = %e, "upgrade did not complete"),
    };
    // Take the raw socket back from hyper: the fan-out writes pre-built frames to it directly.
    let parts = match ws.into_inner().into_inner().downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => parts,
        Err(_) => return tracing::error!("upgraded connection is not a TCP stream"),
    };
    let (io, read_buf) = (parts.io, parts.read_buf);
    let sock = Rc::new(io.into_inner());
    let _ = sock.set_nodelay(true);
    let key = ctx.shard.borrow_mut().open(sock.clone(), ctx.cfg.queue_bytes);
    ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
    Stats::add(&ctx.stats.connections_opened, 1);

    let mut reader = Reader {
        decoder: Decoder::new(ctx.cfg.max_frame_bytes),
        session: Session {
            ctx: ctx.clone(),
            key,
            limiter: RequestLimiter::new(ctx.cfg.max_requests_per_sec),
            partial: None,
        },
    };
    if let Some(streams) = streams {
        let channels = streams.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        reader.session.apply(Request { id: None, op: Op::Subscribe { channels, resume: None } });
    }
    // Bytes the client sent right after its handshake, already read by hyper, come first.
    // Copied, so that hyper's read buffer is freed now rather than held for the connection's life.
    let early_end = {
        let mut early = read_buf.to_vec();
        drop(read_buf);
        reader.on_bytes(&mut early)
    };
    let permit = Some(permit);
    match early_end {
        Some(end) => finish(ctx, key, sock, end, permit).await,
        None => drop(tokio::task::spawn_local(Live { reader, sock, permit })),
    }
}

/// An open connection's task, from the upgrade until it ends: nothing but what it needs while
/// it waits (an async fn would keep its arguments and the handshake's state beside them). It
/// hands over to [`finish`] in a task of its own.
struct Live {
    reader: Reader,
    sock: Rc<TcpStream>,
    /// Held until the connection is forgotten (then by `finish`).
    permit: Option<ConnPermit>,
}

impl Future for Live {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Poll::Ready(end) = this.reader.poll(cx, &this.sock) else { return Poll::Pending };
        let Session { ctx, key, .. } = &this.reader.session;
        let ending = finish(ctx.clone(), *key, this.sock.clone(), end, this.permit.take());
        drop(tokio::task::spawn_local(ending));
        Poll::Ready(())
    }
}

/// Ends a connection: counts why, sends the close frame after what is queued, then FIN, then
/// reads out the peer's input for a moment, and forgets the connection.
async fn finish(
    ctx: Rc<WorkerCtx>,
    key: ConnKey,
    sock: Rc<TcpStream>,
    end: End,
    permit: Option<ConnPermit>,
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
    if !matches!(end, End::Gone) && !dead_peer {
        // Let the queue, close frame last, reach the peer; then FIN and drain its input.
        let drained = std::future::poll_fn(|cx| match service_writes(&ctx, key, &sock, cx) {
            Some(view) if !view.drained => Poll::Pending,
            _ => Poll::Ready(()),
        });
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, drained).await;
        let _ = socket2::SockRef::from(&*sock).shutdown(std::net::Shutdown::Write);
        let _ = tokio::time::timeout(LINGER_TIMEOUT, async {
            let mut sink = [0u8; 1024];
            loop {
                if sock.readable().await.is_err() {
                    return;
                }
                match sock.try_read(&mut sink) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }
    ctx.shard.borrow_mut().remove(key);
    ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

/// The shard's side of a connection's task: notes the task's waker with the shard and, while
/// the socket is full, waits for writability and flushes. `None` once the connection is gone.
fn service_writes(
    ctx: &WorkerCtx,
    key: ConnKey,
    sock: &TcpStream,
    cx: &mut Context<'_>,
) -> Option<TaskView> {
    let mut shard = ctx.shard.borrow_mut();
    loop {
        let view = shard.task_view(key, cx.waker())?;
        if !view.blocked {
            return Some(view);
        }
        match sock.poll_write_ready(cx) {
            Poll::Pending => return Some(view),
            // An error shows in the next write, which marks the connection dead.
            Poll::Ready(_) => {
                if shard.flush(key) == FlushState::Blocked {
                    // `try_write` saw `WouldBlock` and cleared the readiness: the next
                    // `poll_write_ready` registers for the next edge.
                    continue;
                }
            }
        }
    }
}

/// A connection's reading side: the frame decoder and what the frames mean.
struct Reader {
    decoder: Decoder,
    session: Session,
}

impl Reader {
    /// Waits for input (and, meanwhile, for writability when needed) until the connection ends.
    fn poll(&mut self, cx: &mut Context<'_>, sock: &TcpStream) -> Poll<End> {
        for _ in 0..READS_PER_POLL {
            match service_writes(&self.session.ctx, self.session.key, sock, cx) {
                None => return Poll::Ready(End::Stopped),
                Some(view) if view.stop => return Poll::Ready(End::Stopped),
                Some(_) => {}
            }
            match sock.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(End::Gone),
                Poll::Ready(Ok(())) => {}
            }
            let mut buf = [0u8; READ_CHUNK];
            match sock.try_read(&mut buf) {
                Ok(0) => return Poll::Ready(End::Gone),
                Ok(n) => {
                    if let Some(end) = self.on_bytes(&mut buf[..n]) {
                        return Poll::Ready(end);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Poll::Ready(End::Gone),
            }
        }
        // A client that keeps sending: let the worker's other tasks run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Decodes and applies the frames in `bytes`; `Some` when the connection must end.
    fn on_bytes(&mut self, bytes: &mut [u8]) -> Option<End> {
        let Reader { decoder, session } = self;
        let mut end = None;
        let decoded = decoder.feed(bytes, |frame| {
            end = session.on_frame(frame);
            end.is_none()
        });
        match decoded {
            Err(v) => Some(v.into()),
            Ok(()) => end,
        }
    }
}

/// The reading side of one connection.
struct Session {
    ctx: Rc<WorkerCtx>,
    key: ConnKey,
    limiter: RequestLimiter,
    /// A fragmented message being received (boxed: rare, and every idle task would pay for it).
    partial: Option<Box<Partial>>,
}

impl Session {
    /// One complete client frame (RFC 6455 §5.4–5.6); `Some` when the connection must end.
    fn on_frame(&mut self, frame: FrameIn<'_>) -> Option<End> {
        // Any frame (a pong above all) shows the peer is alive.
        self.ctx.shard.borrow_mut().alive(self.key);
        let max_frame = self.ctx.cfg.max_frame_bytes;
        match frame.op {
            OpIn::Close => {
                let echo = frame::build(Opcode::Close, frame.payload);
                self.ctx.shard.borrow_mut().echo_close(self.key, echo);
                Some(End::CloseQueued)
            }
            OpIn::Ping => {
                let pong = frame::build(Opcode::Pong, frame.payload);
                self.ctx.shard.borrow_mut().send_control(self.key, pong);
                None
            }
            OpIn::Pong => None,
            OpIn::Text | OpIn::Binary if self.partial.is_some() => {
                Some(protocol_error("a new message began before the fragmented one was finished"))
            }
            OpIn::Text if frame.fin => match std::str::from_utf8(frame.payload) {
                Ok(_) => self.on_text(frame.payload),
                Err(_) => Some(Violation::bad_utf8().into()),
            },
            OpIn::Text => {
                self.partial = Some(Box::new(Partial::Text(frame.payload.to_vec())));
                None
            }
            OpIn::Binary if frame.fin => self.refuse_binary(),
            OpIn::Binary => {
                self.partial = Some(Box::new(Partial::Binary(frame.payload.len())));
                None
            }
            OpIn::Continuation => match self.partial.take().map(|p| *p) {
                None => Some(protocol_error("continuation frame without a message to continue")),
                Some(Partial::Text(mut buf)) => {
                    buf.extend_from_slice(frame.payload);
                    if buf.len() > max_frame {
                        Some(Violation::too_big(max_frame).into())
                    } else if !frame.fin {
                        self.partial = Some(Box::new(Partial::Text(buf)));
                        None
                    } else if std::str::from_utf8(&buf).is_err() {
                        Some(Violation::bad_utf8().into())
                    } else {
                        self.on_text(&mut buf)
                    }
                }
                Some(Partial::Binary(n)) => {
                    let n = n + frame.payload.len();
                    if n > max_frame {
                        Some(Violation::too_big(max_frame).into())
                    } else if frame.fin {
                        self.refuse_binary()
                    } else {
                        self.partial = Some(Box::new(Partial::Binary(n)));
                        None
                    }
                }
            },
        }
    }

    /// A complete text message: one control request.
    fn on_text(&mut self, buf: &mut [u8]) -> Option<End> {
        let max = self.ctx.cfg.max_message_bytes;
        if buf.len() > max {
            self.refuse(Rejection::new(
                None,
                ErrorCode::MessageTooLarge,
                format!("requests are limited to {max} bytes; this one has {}", buf.len()),
            ));
            return None;
        }
        match self.limiter.check(Instant::now()) {
            Verdict::Allow => {}
            Verdict::Refuse => {
                self.refuse(Rejection::new(
                    None,
                    ErrorCode::RateLimited,
                    format!("at most {} requests per second", self.ctx.cfg.max_requests_per_sec),
                ));
                return None;
            }
            Verdict::Flood => return Some(End::Close(1008, "request flood".into())),
        }
        match protocol::parse_request(buf, self.ctx.cfg.max_channels) {
            Ok(req) => self.apply(req),
            Err(rejection) => self.refuse(rejection),
        }
        None
    }

    fn refuse_binary(&mut self) -> Option<End> {
        self.refuse(Rejection::new(
            None,
            ErrorCode::BinaryFrame,
            "binary frames are not supported: send JSON requests as text frames",
        ));
        None
    }

    fn refuse(&self, rejection: Rejection) {
        self.ctx.stats.reject(rejection.code);
        self.ctx.shard.borrow_mut().send_json(self.key, &rejection.to_json());
    }

    /// Applies one valid request and sends its reply.
    fn apply(&mut self, req: Request) {
        let symbols = self.ctx.symbols.clone();
        let Request { id, op } = req;
        let reply = match op {
            Op::Subscribe { channels, resume } => {
                let (stats, channels) = take_sys_stats(channels);
                let specs = match resolve(&symbols, &channels, &id) {
                    Ok(specs) => specs,
                    Err(rejection) => return self.refuse(rejection),
                };
                let resume = match resolve_resume(&symbols, &specs, resume, &id) {
                    Ok(resume) => resume,
                    Err(rejection) => return self.refuse(rejection),
                };
                let mut shard = self.ctx.shard.borrow_mut();
                let Some(after) = shard.subscriptions_with(self.key, &specs) else { return };
                let max = self.ctx.cfg.max_channels;
                if after > max {
                    drop(shard);
                    return self.refuse(Rejection::new(
                        id,
                        ErrorCode::TooManyChannels,
                        format!("at most {max} channels per connection; unsubscribe some first"),
                    ));
                }
                if stats {
                    shard.set_stats(self.key, true);
                }
                let mut names: Vec<String> = specs.iter().map(|&s| symbols.spec_name(s)).collect();
                if stats {
                    names.push(SYS_STATS.to_owned());
                }
                let epoch = shard.market().epoch().to_owned();
                let reply = |done: &Subscribed| {
                    let mut fields = json!({ "channels": names, "epoch": epoch });
                    if !done.resumed.is_empty() {
                        let resumed: serde_json::Map<String, serde_json::Value> = done
                            .resumed
                            .iter()
                            .map(|&(ch, ok)| (symbols.channel_name(ch), ok.into()))
                            .collect();
                        fields["resumed"] = resumed.into();
                    }
                    protocol::reply("subscribed", &id, fields)
                };
                let limit = self.ctx.cfg.queue_bytes;
                let client_epoch = resume.epoch.as_deref();
                shard.subscribe(self.key, &specs, &resume.seqs, client_epoch, reply, limit);
                return;
            }
            Op::Unsubscribe { channels } => {
                let (stats, channels) = take_sys_stats(channels);
                let specs = match resolve(&symbols, &channels, &id) {
                    Ok(specs) => specs,
                    Err(rejection) => return self.refuse(rejection),
                };
                let mut shard = self.ctx.shard.borrow_mut();
                shard.unsubscribe(self.key, &specs);
                if stats {
                    shard.set_stats(self.key, false);
                }
                drop(shard);
                let mut names: Vec<String> = specs.iter().map(|&s| symbols.spec_name(s)).collect();
                if stats {
                    names.push(SYS_STATS.to_owned());
                }
                protocol::reply("unsubscribed", &id, json!({ "channels": names }))
            }
            Op::List => {
                let names = self.ctx.shard.borrow().subscription_names(self.key);
                protocol::reply("list", &id, json!({ "channels": names }))
            }
            Op::Symbols => {
                let names: Vec<&str> = symbols.iter().map(|s| s.name.as_str()).collect();
                protocol::reply("symbols", &id, json!({ "symbols": names }))
            }
            Op::Ping => protocol::pong(&id, unix_now_ns()),
        };
        self.ctx.shard.borrow_mut().send_json(self.key, &reply);
    }
}

/// Splits `sys.stats` (which is not a market channel) out of a request's channel list.
fn take_sys_stats(channels: Vec<String>) -> (bool, Vec<String>) {
    let before = channels.len();
    let rest: Vec<String> = channels.into_iter().filter(|c| c != SYS_STATS).collect();
    (rest.len() < before, rest)
}

/// A subscribe's resume request, resolved: the channels and their last seqs.
#[derive(Debug, Default)]
struct ResolvedResume {
    epoch: Option<String>,
    seqs: Vec<(ChannelId, u64)>,
}

/// Checks that every channel of `resume` is a concrete channel the request subscribes to.
fn resolve_resume(
    symbols: &SymbolTable,
    specs: &[ChannelSpec],
    resume: Option<Resume>,
    id: &Option<serde_json::Value>,
) -> Result<ResolvedResume, Rejection> {
    let Some(resume) = resume else { return Ok(ResolvedResume::default()) };
    let mut seqs = Vec::with_capacity(resume.seqs.len());
    for (name, seq) in resume.seqs {
        let shown: String = name.chars().take(64).collect();
        let ch = match symbols.parse_channel(&name) {
            Ok(ChannelSpec::Exact(ch)) => ch,
            Ok(ChannelSpec::Wildcard(_)) => {
                return Err(Rejection::new(
                    id.clone(),
                    ErrorCode::BadRequest,
                    format!("resume names channels, not wildcards: {shown}"),
                ))
            }
            Err(_) => {
                return Err(Rejection::new(
                    id.clone(),
                    ErrorCode::UnknownChannel,
                    format!("no such channel in resume: {shown}"),
                ))
            }
        };
        let requested = specs.iter().any(|s| match *s {
            ChannelSpec::Exact(c) => c == ch,
            ChannelSpec::Wildcard(kind) => kind == ch.kind(),
        });
        if !requested {
            return Err(Rejection::new(
                id.clone(),
                ErrorCode::BadRequest,
                format!("{shown} is in resume but not in channels"),
            ));
        }
        seqs.push((ch, seq));
    }
    Ok(ResolvedResume { epoch: resume.epoch, seqs })
}

/// The payload of the server's pings: the send time, Unix ns, big-endian (clients echo it
/// in their pong, which makes a round-trip time measurable).
pub fn ping_payload() -> [u8; 8] {
    unix_now_ns().to_be_bytes()
}

/// Resolves channel names (all or nothing), dropping duplicates but keeping order.
fn resolve(
    symbols: &SymbolTable,
    names: &[String],
    id: &Option<serde_json::Value>,
) -> Result<Vec<ChannelSpec>, Rejection> {
    let mut specs: Vec<ChannelSpec> = Vec::with_capacity(names.len());
    for name in names {
        let spec = symbols.parse_channel(name).map_err(|e| {
            let shown: String = name.chars().take(64).collect();
            let msg = match e {
                ParseChannelError::UnknownSymbol => format!("no such channel: {shown}"),
                ParseChannelError::Malformed => format!("malformed channel name {shown:?}: {e}"),
            };
            Rejection::new(id.clone(), ErrorCode::UnknownChannel, msg)
        })?;
        if !specs.contains(&spec) {
            specs.push(spec);
        }
    }
    Ok(specs)
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
    use super::*;

    #[test]
    fn limiter_allows_a_burst_then_refuses_then_floods() {
        let t0 = Instant::now();
        let mut l = RequestLimiter::new(10);
        assert!((0..20).all(|_| l.check(t0) == Verdict::Allow));
        assert_eq!(l.check(t0), Verdict::Refuse);
        let verdicts: Vec<Verdict> = (0..80).map(|_| l.check(t0)).collect();
        assert_eq!(verdicts.last(), Some(&Verdict::Flood));
        // Tokens come back with time.
        assert_eq!(l.check(t0 + Duration::from_millis(200)), Verdict::Allow);
    }

    #[test]
    fn conn_limit_is_released_on_drop() {
        let limit = ConnLimit::new(2);
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        drop(a);
        assert!(limit.try_acquire().is_some());
    }
}
