//! One WebSocket connection after the upgrade: its driver task reads client frames with
//! fastwebsockets and applies control messages; its writer task only waits for writability
//! when the socket would block. Data never passes through here: the fan-out writes shared
//! frames straight into the socket (see `fanout`).

use std::convert::Infallible;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fastwebsockets::upgrade::UpgradeFut;
use fastwebsockets::{OpCode, Role, WebSocketError};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tickfan_proto::{
    unix_now_ns, ChannelId, ChannelSpec, ErrorCode, ParseChannelError, SymbolTable,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use crate::channels::ConnKey;
use crate::fanout::{Conn, ConnSignals, FlushState, Subscribed, SYS_STATS};
use crate::frame::{self, Opcode};
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

/// Runs a connection from the completed upgrade to its close.
pub async fn run(
    ctx: Rc<WorkerCtx>,
    upgrade: UpgradeFut,
    streams: Option<String>,
    permit: ConnPermit,
) {
    let _permit = permit;
    let ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => return tracing::debug!(error = %e, "upgrade did not complete"),
    };
    // Take the raw socket back from hyper: the fan-out writes pre-built frames to it directly.
    let parts = match ws.into_inner().into_inner().downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => parts,
        Err(_) => return tracing::error!("upgraded connection is not a TCP stream"),
    };
    let tcp = parts.io.into_inner();
    let _ = tcp.set_nodelay(true);
    let (rd, wr) = tcp.into_split();
    // Bytes the client sent right after its handshake, already read by hyper, come first.
    let mut reader = std::io::Cursor::new(parts.read_buf).chain(rd);
    let sock = Rc::new(wr);
    let signals = Rc::new(ConnSignals::default());
    let key = {
        let mut shard = ctx.shard.borrow_mut();
        let out = shard.outbound(ctx.cfg.queue_bytes);
        shard.insert(Conn::new(sock.clone(), signals.clone(), out))
    };
    ctx.stats.connections.fetch_add(1, Ordering::Relaxed);
    Stats::add(&ctx.stats.connections_opened, 1);
    let writer =
        tokio::task::spawn_local(write_when_ready(ctx.clone(), key, sock.clone(), signals.clone()));

    let mut session = Session {
        ctx: ctx.clone(),
        key,
        limiter: RequestLimiter::new(ctx.cfg.max_requests_per_sec),
        partial: None,
    };
    if let Some(streams) = streams {
        let channels = streams.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        session.apply(Request { id: None, op: Op::Subscribe { channels, resume: None } });
    }
    let end = session.read_loop(&mut reader, &signals).await;
    tracing::debug!(conn = key, ?end, "connection ending");
    let closed_for = ctx.shard.borrow().conns.get(key).and_then(|c| c.closed_for);
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
        let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, async {
            while !ctx.shard.borrow().is_drained(key) {
                signals.drained.notified().await;
            }
        })
        .await;
        let _ = socket2::SockRef::from((*sock).as_ref()).shutdown(std::net::Shutdown::Write);
        let _ = tokio::time::timeout(LINGER_TIMEOUT, async {
            let mut sink = [0u8; 4096];
            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
    writer.abort();
    ctx.shard.borrow_mut().remove(key);
    ctx.stats.connections.fetch_sub(1, Ordering::Relaxed);
}

/// Waits for writability whenever the fan-out found the socket full, then flushes.
async fn write_when_ready(
    ctx: Rc<WorkerCtx>,
    key: ConnKey,
    sock: Rc<OwnedWriteHalf>,
    signals: Rc<ConnSignals>,
) {
    loop {
        signals.writer.notified().await;
        loop {
            if sock.writable().await.is_err() {
                return;
            }
            match ctx.shard.borrow_mut().flush(key) {
                FlushState::Blocked => continue,
                FlushState::Drained => break,
                FlushState::Dead => return,
            }
        }
    }
}

/// The reading side of one connection.
struct Session {
    ctx: Rc<WorkerCtx>,
    key: ConnKey,
    limiter: RequestLimiter,
    partial: Option<Partial>,
}

impl Session {
    async fn read_loop<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        signals: &ConnSignals,
    ) -> End {
        let (mut ws, _) =
            fastwebsockets::after_handshake_split(reader, tokio::io::sink(), Role::Server);
        ws.set_auto_close(true);
        ws.set_auto_pong(true);
        // fastwebsockets refuses frames of this size or more.
        ws.set_max_message_size(self.ctx.cfg.max_frame_bytes + 1);
        let (ctx, key) = (self.ctx.clone(), self.key);
        // Pongs and close echoes fastwebsockets owes the peer go through our queue, in order.
        let mut obligated = move |f: fastwebsockets::Frame<'_>| {
            let mut shard = ctx.shard.borrow_mut();
            match f.opcode {
                OpCode::Close => {
                    if let Some(conn) = shard.conns.get_mut(key) {
                        conn.out.push_close(frame::build(Opcode::Close, &f.payload));
                    }
                    shard.flush(key);
                }
                _ => shard.send_control(key, frame::build(Opcode::Pong, &f.payload)),
            }
            std::future::ready(Ok::<(), Infallible>(()))
        };
        loop {
            let read = tokio::select! {
                biased;
                _ = signals.driver.notified() => return End::Stopped,
                read = ws.read_frame(&mut obligated) => read,
            };
            let mut frame = match read {
                Ok(frame) => frame,
                Err(e) => return self.classify(e),
            };
            // RFC 6455 §5.1: a server must close the connection on an unmasked client frame.
            if !is_masked(&mut frame) {
                return protocol_error("client frames must be masked (RFC 6455 section 5.1)");
            }
            // Any frame (a pong above all) shows the peer is alive.
            if let Some(conn) = self.ctx.shard.borrow_mut().conns.get_mut(self.key) {
                conn.unanswered_pings = 0;
            }
            let max_frame = self.ctx.cfg.max_frame_bytes;
            let end = match frame.opcode {
                OpCode::Close => return End::CloseQueued,
                OpCode::Ping | OpCode::Pong => None,
                OpCode::Text | OpCode::Binary if self.partial.is_some() => Some(protocol_error(
                    "a new message began before the fragmented one was finished",
                )),
                OpCode::Text if frame.fin => self.on_text(frame.payload.to_mut()),
                OpCode::Text => {
                    self.partial = Some(Partial::Text(frame.payload.to_vec()));
                    None
                }
                OpCode::Binary if frame.fin => self.refuse_binary(),
                OpCode::Binary => {
                    self.partial = Some(Partial::Binary(frame.payload.len()));
                    None
                }
                OpCode::Continuation => match self.partial.take() {
                    None => {
                        Some(protocol_error("continuation frame without a message to continue"))
                    }
                    Some(Partial::Text(mut buf)) => {
                        buf.extend_from_slice(&frame.payload);
                        if buf.len() > max_frame {
                            Some(too_big(max_frame))
                        } else if !frame.fin {
                            self.partial = Some(Partial::Text(buf));
                            None
                        } else if std::str::from_utf8(&buf).is_err() {
                            Some(End::Close(1007, "text message is not valid UTF-8".into()))
                        } else {
                            self.on_text(&mut buf)
                        }
                    }
                    Some(Partial::Binary(n)) => {
                        let n = n + frame.payload.len();
                        if n > max_frame {
                            Some(too_big(max_frame))
                        } else if frame.fin {
                            self.refuse_binary()
                        } else {
                            self.partial = Some(Partial::Binary(n));
                            None
                        }
                    }
                },
            };
            if let Some(end) = end {
                return end;
            }
        }
    }

    fn classify(&self, e: WebSocketError) -> End {
        match e {
            WebSocketError::UnexpectedEOF
            | WebSocketError::IoError(_)
            | WebSocketError::SendError(_) => End::Gone,
            WebSocketError::FrameTooLarge => too_big(self.ctx.cfg.max_frame_bytes),
            WebSocketError::InvalidUTF8 => {
                End::Close(1007, "text message is not valid UTF-8".into())
            }
            // fastwebsockets has already queued a 1002 close for an invalid close code.
            WebSocketError::InvalidCloseCode => End::CloseQueued,
            other => protocol_error(&other.to_string()),
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
                let Some(conn) = shard.conns.get(self.key) else { return };
                let new = specs.iter().filter(|s| !conn.subs.contains(**s)).count();
                let max = self.ctx.cfg.max_channels;
                if conn.subs.len() + new > max {
                    drop(shard);
                    return self.refuse(Rejection::new(
                        id,
                        ErrorCode::TooManyChannels,
                        format!("at most {max} channels per connection; unsubscribe some first"),
                    ));
                }
                if let Some(conn) = shard.conns.get_mut(self.key) {
                    if stats && conn.stats_seq.is_none() {
                        conn.stats_seq = Some(1);
                        conn.idle_since = None;
                    }
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
                if let Some(conn) = shard.conns.get_mut(self.key).filter(|_| stats) {
                    conn.stats_seq = None;
                }
                drop(shard);
                let mut names: Vec<String> = specs.iter().map(|&s| symbols.spec_name(s)).collect();
                if stats {
                    names.push(SYS_STATS.to_owned());
                }
                protocol::reply("unsubscribed", &id, json!({ "channels": names }))
            }
            Op::List => {
                let shard = self.ctx.shard.borrow();
                let names = shard.conns.get(self.key).map_or_else(Vec::new, |c| {
                    let mut names = c.subs.names(&symbols);
                    if c.stats_seq.is_some() {
                        names.push(SYS_STATS.to_owned());
                    }
                    names
                });
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

/// Whether a received frame carried a mask. fastwebsockets keeps the mask but has no getter;
/// formatting the frame's header (what it would send) shows the mask bit without touching the
/// payload. Client frames are few (requests), so the 14-byte format costs nothing that matters.
fn is_masked(frame: &mut fastwebsockets::Frame<'_>) -> bool {
    let mut head = [0u8; 14];
    frame.fmt_head(&mut head);
    head[1] & 0x80 != 0
}

fn protocol_error(reason: &str) -> End {
    End::Close(1002, reason.to_owned())
}

fn too_big(max: usize) -> End {
    End::Close(1009, format!("message larger than {max} bytes"))
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
