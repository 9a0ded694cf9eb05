//! Server-Sent Events: the same stream for clients that cannot open a WebSocket (a proxy that
//! drops upgrades, a browser page that only needs to read). `GET /sse?streams=…` answers
//! `200 text/event-stream`, then one event per message, its `data:` the very JSON a WebSocket
//! client gets (docs/protocol.md, "Server-Sent Events").
//!
//! The connection is a shard connection like any other: the fan-out writes shared bytes
//! straight to its socket, with the same queue bounds, slow-consumer policies and closes.
//! Only the form differs: a data message is `id: <ch>:<seq>\ndata: <json>\n\n`, encoded once
//! per tick by the producer while some client streams the channel over SSE ([`event`], kept in
//! [`Frame::sse`]); replies, notices and closes are turned into events as they are queued
//! ([`from_ws`]).
//!
//! Resume: a reconnecting `EventSource` sends the last `id` it saw as `Last-Event-ID`; every
//! channel of the stream continues after the last frame published before that one
//! ([`Market::sse_replay`](crate::market::Market::sse_replay)). For that the ids a client sees
//! follow publish order: live frames and replays carry one, snapshots (built for one client,
//! as of a later point) do not.

use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, ORIGIN};
use hyper::{Request, Response, StatusCode};
use tickfan_proto::{ChannelId, ErrorCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::Frame;
use crate::limits::{Refusal, SocketPermit};
use crate::tls::Sock;
use crate::worker::WorkerCtx;

/// The wire form a connection's queue holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// RFC 6455 frames.
    WebSocket,
    /// RFC 6455 frames, data messages compressed where the producer made a compressed form
    /// (permessage-deflate negotiated: `crate::deflate`); everything else plain.
    Deflate,
    /// RFC 6455 frames, trades, quotes and book updates in binary frames where the producer
    /// made them (`?format=binary`: `tickfan_proto::binary`); everything else JSON text.
    Binary,
    /// `text/event-stream` events.
    Sse,
}

impl Form {
    pub const ALL: [Form; 4] = [Form::WebSocket, Form::Deflate, Form::Binary, Form::Sse];

    /// A WebSocket (plain, compressed or binary), which answers pings.
    pub fn is_websocket(self) -> bool {
        self != Form::Sse
    }

    /// The `format` label of `tickfan_connections_by_format`.
    pub fn label(self) -> &'static str {
        match self {
            Form::WebSocket => "json",
            Form::Deflate => "deflate",
            Form::Binary => "binary",
            Form::Sse => "sse",
        }
    }

    /// Index in [`Form::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// How long a browser waits before reconnecting after the stream ends, in ms (the `retry:`
/// field sent first).
pub const RETRY_MS: u32 = 1000;

/// Longest `Last-Event-ID` looked at (a channel name and a seq).
const MAX_EVENT_ID: usize = 256;

/// A data message as an event: `id: <ch>:<seq>\ndata: <json>\n\n`.
pub fn event(ch: &str, seq: u64, json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + ch.len() + 36);
    out.put_slice(b"id: ");
    out.put_slice(ch.as_bytes());
    out.put_u8(b':');
    out.put_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.put_u8(b'\n');
    put_data(&mut out, json);
    out.freeze()
}

/// `data: <json>\n\n` (a line per line of `json`: ours never has one, but a field may not).
fn put_data(out: &mut BytesMut, json: &[u8]) {
    for line in json.split(|&b| b == b'\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// A data frame's event: the one the producer encoded, or, for a frame published before any
/// client streamed its channel over SSE (a replay, a race with the first subscriber), one
/// made now for this client.
pub fn of_frame(frame: &Frame, names: &tickfan_proto::SymbolTable) -> Bytes {
    match frame.sse() {
        Some(sse) => sse.clone(),
        None => {
            event(names.channel_name_str(frame.ch), frame.seq, crate::frame::payload(&frame.bytes))
        }
    }
}

/// A reply, notice or control frame the shard built as a WebSocket frame, as an event for an
/// SSE client: a text message becomes a `data:` event without `id`; a close, the last event
/// `{"op":"close","code":…,"reason":…}` (then the server ends the response); a ping, a
/// comment line that keeps proxies from timing the stream out. Pongs have no SSE form.
pub fn from_ws(ws: &[u8]) -> Option<Bytes> {
    let (opcode, payload) = (ws[0] & 0x0f, crate::frame::payload(ws));
    let mut out = BytesMut::with_capacity(payload.len() + 16);
    match opcode {
        0x1 => put_data(&mut out, payload),
        0x8 => {
            let code = match payload {
                [a, b, ..] => u16::from_be_bytes([*a, *b]),
                _ => 1005,
            };
            let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
            let json = serde_json::json!({ "op": "close", "code": code, "reason": reason });
            put_data(&mut out, json.to_string().as_bytes());
        }
        0x9 => out.put_slice(b": ping\n\n"),
        _ => return None,
    }
    Some(out.freeze())
}

/// The response head and the first event (`retry:`), sent once the stream is admitted.
/// `allow_origin`: the `Access-Control-Allow-Origin` to send, for pages of other origins.
pub fn response_head(allow_origin: Option<&str>) -> Bytes {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\n\
         Content-Type: text/event-stream\r\n\
         Cache-Control: no-cache, no-transform\r\n\
         Connection: close\r\n\
         X-Accel-Buffering: no\r\n",
    );
    if let Some(origin) = allow_origin {
        head.push_str(&format!("Access-Control-Allow-Origin: {origin}\r\nVary: Origin\r\n"));
    }
    head.push_str(&format!("\r\nretry: {RETRY_MS}\n\n"));
    Bytes::from(head)
}

/// Parses a `Last-Event-ID` (`<ch>:<seq>`, as [`event`] writes it) into the channel and seq.
pub fn parse_event_id(id: &str, names: &tickfan_proto::SymbolTable) -> Option<(ChannelId, u64)> {
    if id.len() > MAX_EVENT_ID {
        return None;
    }
    let (name, seq) = id.trim().rsplit_once(':')?;
    let seq = seq.parse().ok()?;
    match names.parse_channel(name).ok()? {
        tickfan_proto::ChannelSpec::Exact(ch) => Some((ch, seq)),
        tickfan_proto::ChannelSpec::Wildcard(_) => None,
    }
}

/// Where a resuming stream continues from: its client's `Last-Event-ID`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastEvent {
    /// None sent: a new stream.
    None,
    /// After this frame.
    At(ChannelId, u64),
    /// Not an id this gateway writes: the stream starts again, and says it did not resume.
    Unknown,
}

/// An admitted stream, for `conn::run_sse`.
#[derive(Debug)]
pub struct Stream {
    /// Its response head and first event.
    pub head: Bytes,
    pub channels: crate::ops::Channels,
    pub last_event: LastEvent,
}

/// The path that asks for an event stream.
const PATH: &[u8] = b"GET /sse";

/// Longest request head read for a stream (its URL lists channels; a token may be in it).
const MAX_HEAD: usize = 16 << 10;

/// What the first bytes of a connection ask for.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// `GET /sse…`: the whole head is read.
    Sse,
    /// Anything else, for hyper (with what was read).
    Other,
    /// An event-stream request head over [`MAX_HEAD`].
    TooLarge,
}

/// Reads the start of a connection's first request into `head`, as far as needed to tell an
/// event-stream request from anything else, and all of its head if it is one. An error when
/// the client went away (or sent nothing at all).
pub async fn sniff<IO: AsyncRead + Unpin>(
    io: &mut IO,
    head: &mut BytesMut,
) -> std::io::Result<Sniffed> {
    loop {
        let n = PATH.len() + 1;
        let prefix = &head[..head.len().min(n)];
        if !PATH.starts_with(&prefix[..prefix.len().min(PATH.len())]) {
            return Ok(Sniffed::Other);
        }
        if head.len() >= n && !matches!(head[PATH.len()], b'?' | b' ') {
            return Ok(Sniffed::Other);
        }
        if head.len() >= n && memchr4(head) {
            return Ok(Sniffed::Sse);
        }
        if head.len() >= MAX_HEAD {
            return Ok(Sniffed::TooLarge);
        }
        head.reserve(1024);
        if io.read_buf(head).await? == 0 {
            return match head.is_empty() {
                true => Err(std::io::ErrorKind::UnexpectedEof.into()),
                false => Ok(Sniffed::Other), // hyper answers what it can of it
            };
        }
    }
}

/// Whether the head is complete (`\r\n\r\n` seen).
fn memchr4(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n")
}

/// A socket the fan-out can write to once its request is served.
pub trait IntoSock: Unpin + Send + 'static {
    fn into_sock(self) -> Option<Sock>;
}

fn std_tcp(tcp: tokio::net::TcpStream) -> Option<std::net::TcpStream> {
    tcp.into_std().map_err(|e| tracing::warn!(error = %e, "cannot take the socket")).ok()
}

impl IntoSock for tokio::net::TcpStream {
    fn into_sock(self) -> Option<Sock> {
        Some(Sock::Plain(std_tcp(self)?))
    }
}

impl IntoSock for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn into_sock(self) -> Option<Sock> {
        let (tcp, session) = self.into_inner();
        Some(Sock::tls(std_tcp(tcp)?, session))
    }
}

/// Serves an event-stream request whose head is in `head`: admitted as a WebSocket upgrade
/// is (the door's bounds for a forwarded client, Origin, credentials), its channels checked,
/// then the socket goes to the fan-out (`conn::run_sse`). A refusal is an HTTP answer with a
/// short reason; channel errors have the protocol's JSON error as their body.
pub async fn serve<IO>(ctx: Rc<WorkerCtx>, mut io: IO, head: BytesMut, mut permit: SocketPermit)
where
    IO: AsyncRead + AsyncWrite + IntoSock,
{
    match admit(&ctx, &head, &mut permit) {
        Ok((admitted, stream)) => {
            let Some(sock) = io.into_sock() else { return };
            permit.upgraded();
            crate::conn::run_sse(ctx, sock, permit, admitted, stream);
        }
        Err(resp) => respond(&mut io, *resp).await,
    }
}

type Refused = Box<Response<Full<Bytes>>>;

/// The checks of [`serve`]: the client's credentials and its stream, or the answer.
fn admit(
    ctx: &WorkerCtx,
    head: &[u8],
    permit: &mut SocketPermit,
) -> Result<(Option<crate::auth::Admitted>, Stream), Refused> {
    let bad = |msg: &str| Box::new(crate::http::text(StatusCode::BAD_REQUEST, msg));
    let req = parse_head(head).ok_or_else(|| bad("malformed request head\n"))?;
    crate::http::admit_forwarded(ctx, &req, permit)
        .map_err(|why| Box::new(crate::http::refuse(ctx, why, None)))?;
    if ctx.stats.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Box::new(crate::http::refuse(ctx, Refusal::Draining, None)));
    }
    if !crate::http::origin_allowed(&ctx.cfg.allowed_origins, &req) {
        return Err(Box::new(crate::http::refuse(ctx, Refusal::Origin, None)));
    }
    let query = req.uri().query().unwrap_or("");
    if let Some(refused) = crate::http::version_refused(query) {
        return Err(Box::new(refused));
    }
    if crate::http::query_param(query, "format").is_some_and(|f| f != "json") {
        return Err(bad("Server-Sent Events carry JSON text: ?format=binary is for /ws\n"));
    }
    let admitted = match &ctx.auth {
        None => None,
        Some(auth) => {
            let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
            let token = crate::http::query_param(query, "token");
            match auth.admit(crate::auth::credential(header, token.as_deref())) {
                Ok(admitted) => Some(admitted),
                Err(e) => {
                    let detail = e.to_string();
                    return Err(Box::new(crate::http::refuse(
                        ctx,
                        Refusal::Unauthorized,
                        Some(&detail),
                    )));
                }
            }
        }
    };
    let streams = crate::http::query_param(query, "streams").unwrap_or_default();
    let channels: Vec<String> =
        streams.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect();
    if channels.is_empty() {
        return Err(bad("name the channels to stream: /sse?streams=trades.BTC-USD,book.ETH-USD\n"));
    }
    let grants = admitted.as_ref().map(|a| &*a.grants);
    let channels = crate::ops::channels_granted(ctx, grants, &channels, &None)
        .map_err(|rejection| Box::new(rejected(ctx, &rejection)))?;
    // `Last-Event-ID` from a reconnecting EventSource; `lastEventId` in the URL from clients
    // (polyfills) that cannot set headers.
    let id = req.headers().get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let last_event = match id.or_else(|| crate::http::query_param(query, "lastEventId")) {
        None => LastEvent::None,
        Some(id) => match parse_event_id(&id, &ctx.symbols) {
            Some((ch, seq)) => LastEvent::At(ch, seq),
            None => LastEvent::Unknown,
        },
    };
    let allow_origin = req.headers().get(ORIGIN).and_then(|o| o.to_str().ok()).map(|o| {
        if ctx.cfg.allowed_origins.is_empty() {
            "*"
        } else {
            o
        }
    });
    let head = response_head(allow_origin);
    Ok((admitted, Stream { head, channels, last_event }))
}

/// A request refused for its channels: 403 for channels outside the credentials' grants,
/// 400 otherwise, the protocol's JSON error as the body.
fn rejected(ctx: &WorkerCtx, rejection: &crate::protocol::Rejection) -> Response<Full<Bytes>> {
    ctx.stats.reject(rejection.code);
    let status = match rejection.code {
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut resp = Response::new(Full::new(Bytes::from(rejection.to_json())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The request in `head` (checked complete by [`sniff`]) as an `http` request.
fn parse_head(head: &[u8]) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    if !parsed.parse(head).ok()?.is_complete() {
        return None;
    }
    let mut req = Request::builder().method(parsed.method?).uri(parsed.path?);
    for h in parsed.headers.iter() {
        req = req.header(h.name, h.value);
    }
    req.body(()).ok()
}

/// Writes `resp` (a refusal) and closes: `Connection: close`, with its length.
pub async fn respond<IO: AsyncWrite + Unpin>(io: &mut IO, resp: Response<Full<Bytes>>) {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or("")
    );
    for (name, value) in &parts.headers {
        if name != hyper::header::CONNECTION {
            out.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("")));
        }
    }
    out.push_str(&format!("content-length: {}\r\nconnection: close\r\n\r\n", body.len()));
    let answer = [out.as_bytes(), &body].concat();
    let wait = std::time::Duration::from_secs(1);
    let _ = tokio::time::timeout(wait, io.write_all(&answer)).await;
    let _ = tokio::time::timeout(wait, io.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::close::CloseCode;
    use crate::frame::{self, Opcode};

    #[test]
    fn messages_become_events_with_the_same_json() {
        let json = br#"{"ch":"trades.BTC-USD","seq":7}"#;
        assert_eq!(
            &event("trades.BTC-USD", 7, json)[..],
            &b"id: trades.BTC-USD:7\ndata: {\"ch\":\"trades.BTC-USD\",\"seq\":7}\n\n"[..]
        );
        let long = format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000));
        let ws = frame::build(Opcode::Text, long.as_bytes());
        assert_eq!(from_ws(&ws).unwrap(), format!("data: {long}\n\n"));
        let two_lines = frame::build(Opcode::Text, b"a\nb");
        assert_eq!(&from_ws(&two_lines).unwrap()[..], b"data: a\ndata: b\n\n");
    }

    #[test]
    fn control_frames_become_a_close_event_a_comment_or_nothing() {
        let close = frame::close(CloseCode::Policy, "slow consumer");
        let ev = from_ws(&close).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(ev.strip_prefix(b"data: ").unwrap().trim_ascii()).unwrap();
        assert_eq!(json, serde_json::json!({"op":"close","code":1008,"reason":"slow consumer"}));
        assert_eq!(&from_ws(&frame::build(Opcode::Ping, b"12345678")).unwrap()[..], b": ping\n\n");
        assert!(from_ws(&frame::build(Opcode::Pong, b"")).is_none());
    }

    #[test]
    fn event_ids_parse_back_and_nonsense_does_not() {
        let names = tickfan_proto::SymbolTable::new(vec![tickfan_proto::Symbol {
            name: "BTC-USD".into(),
            px_scale: 2,
            qty_scale: 4,
        }]);
        let ch = ChannelId::new(tickfan_proto::Kind::Book, 0);
        assert_eq!(parse_event_id("book.BTC-USD:42", &names), Some((ch, 42)));
        for bad in ["", "book.BTC-USD", "book.BTC-USD:x", "book.*:3", "nope.BTC-USD:1", ":1"] {
            assert_eq!(parse_event_id(bad, &names), None, "{bad}");
        }
        assert_eq!(parse_event_id(&"x".repeat(300), &names), None);
    }
}
