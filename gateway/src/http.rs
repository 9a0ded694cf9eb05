//! The HTTP side of the single port: `/ws` (the WebSocket upgrade, done by fastwebsockets),
//! `/healthz` and a short index at `/`.

use std::cell::Cell;
use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCEPT, AUTHORIZATION, CONNECTION, CONTENT_TYPE, ORIGIN, SEC_WEBSOCKET_EXTENSIONS,
    WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::limits::{Refusal, SocketPermit};
use crate::sse::Form;
use crate::worker::WorkerCtx;

/// Serves one accepted TCP connection (HTTP/1.1, possibly upgraded to WebSocket).
/// The socket's place at the door goes to its WebSocket connection if it upgrades, and is
/// given back when the socket closes otherwise.
/// With TLS on, the TLS handshake comes first, within the same `--handshake-timeout`.
pub async fn serve(ctx: Rc<WorkerCtx>, stream: std::net::TcpStream, mut permit: SocketPermit) {
    let mut stream = match TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => return tracing::warn!(error = %e, "cannot register accepted socket"),
    };
    let timeout = Duration::from_secs_f64(ctx.cfg.handshake_timeout);
    if ctx.cfg.proxy_protocol && permit.is_unattributed() {
        let header = tokio::time::timeout(timeout, crate::proxy::read_header(&mut stream)).await;
        let admitted = match header {
            Ok(Ok(Some(client))) => permit.forwarded_for(client, std::time::Instant::now()),
            Ok(Ok(None)) => Ok(()), // the proxy's own connection (a health check)
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "trusted proxy connection refused");
                Err(Refusal::ProxyHeader)
            }
            Err(_) => Err(Refusal::ProxyHeader),
        };
        if let Err(why) = admitted {
            ctx.stats.refused(why);
            if ctx.tls.is_none() {
                crate::listener::answer(&mut stream, why).await;
            }
            return;
        }
    }
    let Some(config) = ctx.tls.clone() else {
        return http_on(ctx, stream, permit, timeout).await;
    };
    let accepting = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    match tokio::time::timeout(timeout, accepting).await {
        Ok(Ok(tls)) => http_on(ctx, tls, permit, timeout).await,
        Ok(Err(e)) => {
            ctx.stats.refused(Refusal::TlsHandshake);
            tracing::debug!(error = %e, "TLS handshake failed");
        }
        Err(_) => ctx.stats.refused(Refusal::TlsHandshake),
    }
}

/// Serves HTTP/1.1 on `io` (a TCP or TLS stream), upgrades to WebSocket included. The first
/// request is looked at first: a Server-Sent Events request (`GET /sse`) is served by `sse`,
/// which keeps the socket; anything else goes to hyper, the bytes read replayed to it.
/// Keep-alive is off on this port (pages answer `Connection: close`), so `/sse` is always a
/// connection's first request (a browser may otherwise send it on a socket it used for a page).
async fn http_on<IO>(ctx: Rc<WorkerCtx>, mut io: IO, permit: SocketPermit, timeout: Duration)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + crate::sse::IntoSock,
{
    let mut head = bytes::BytesMut::with_capacity(1024);
    match tokio::time::timeout(timeout, crate::sse::sniff(&mut io, &mut head)).await {
        Ok(Ok(crate::sse::Sniffed::Sse)) => return crate::sse::serve(ctx, io, head, permit).await,
        Ok(Ok(crate::sse::Sniffed::Other)) => {}
        Ok(Ok(crate::sse::Sniffed::TooLarge)) => {
            let resp =
                text(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large\n");
            return crate::sse::respond(&mut io, resp).await;
        }
        // Gone, or silent for the whole handshake timeout: nothing to answer.
        Ok(Err(_)) | Err(_) => return,
    }
    let io = Rewind { pre: head.freeze(), io };
    let permit = Rc::new(Cell::new(Some(permit)));
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        let permit = permit.clone();
        async move { Ok::<_, Infallible>(route(ctx, req, &permit)) }
    });
    // Without a timer hyper applies no header timeout at all: a silent or trickling client
    // would hold its socket forever.
    let serving = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = serving.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

fn route(
    ctx: Rc<WorkerCtx>,
    mut req: Request<Incoming>,
    permit: &Cell<Option<SocketPermit>>,
) -> Response<Full<Bytes>> {
    let mut resp = match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") => return upgrade(ctx, &mut req, permit),
        // Only reached by a request pipelined behind another: `sse::sniff` takes first ones.
        (&Method::GET, "/sse") => {
            text(StatusCode::BAD_REQUEST, "/sse must be the first request of its connection\n")
        }
        _ => page(&ctx.stats, ctx.symbols.len(), &req, &Side::Data(ctx.cfg.admin_listen)),
    };
    // No keep-alive on this port (see `http_on`). Set here rather than with hyper's
    // `keep_alive(false)`, which would also mark the upgrade's 101 `Connection: close`.
    resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Which listener serves a page.
#[derive(Debug)]
pub enum Side {
    /// The data port; the admin listener's address when `--admin-listen` moved the operator
    /// pages there.
    Data(Option<std::net::SocketAddr>),
    /// The admin listener, with its dashboard page (which connects to the data port).
    Admin { dashboard: Bytes },
}

/// Everything but the WebSocket upgrade: probes, metrics, the dashboard and the index. On the
/// data port, with an admin listener, only the probes and the index.
pub fn page(
    stats: &std::sync::Arc<crate::metrics::Stats>,
    symbols: usize,
    req: &Request<Incoming>,
    side: &Side,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let operator_page = path == "/metrics" || path.starts_with("/dashboard");
    if let (Side::Data(Some(admin)), true) = (side, operator_page) {
        let msg = format!("{path} is served on the admin listener ({admin}), not here\n");
        return text(StatusCode::NOT_FOUND, &msg);
    }
    match (req.method(), path) {
        (&Method::GET, "/healthz") => healthz(stats),
        (&Method::GET, "/readyz") => ready(stats),
        (&Method::GET, "/dashboard" | "/dashboard/") => match side {
            Side::Admin { dashboard } => {
                let mut resp = Response::new(Full::new(dashboard.clone()));
                let html = HeaderValue::from_static("text/html; charset=utf-8");
                resp.headers_mut().insert(CONTENT_TYPE, html);
                resp
            }
            Side::Data(_) => asset(DASHBOARD, "text/html; charset=utf-8"),
        },
        (&Method::GET, "/dashboard/uPlot.iife.min.js") => {
            asset(UPLOT_JS, "text/javascript; charset=utf-8")
        }
        (&Method::GET, "/dashboard/uPlot.min.css") => asset(UPLOT_CSS, "text/css; charset=utf-8"),
        (&Method::GET, "/dashboard/uPlot.LICENSE") => {
            asset(UPLOT_LICENSE, "text/plain; charset=utf-8")
        }
        (&Method::GET, "/metrics") => {
            let accept = req.headers().get(ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
            let (body, content_type) = crate::metrics::exposition(stats, accept);
            let mut resp = text(StatusCode::OK, &body);
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            resp
        }
        (&Method::GET, "/") => index(symbols, side),
        (_, "/ws" | "/healthz" | "/readyz" | "/metrics" | "/") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        _ => text(StatusCode::NOT_FOUND, "not found; see / for what this server offers\n"),
    }
}

/// Liveness, for supervisors: 200 while every thread of the gateway is alive and responsive,
/// 503 with what failed otherwise (restart the process).
fn healthz(stats: &crate::metrics::Stats) -> Response<Full<Bytes>> {
    match stats.health.check(tickfan_proto::unix_now_ns()) {
        Ok(()) => text(StatusCode::OK, "ok\n"),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, &format!("unhealthy: {why}\n")),
    }
}

/// Readiness, for load balancers: 200 while the gateway is healthy (its accept loop and
/// workers beat) and the feed is live, 503 with the reason otherwise (unhealthy, no tick yet,
/// no tick for `--stale-after`, upstream disconnected).
fn ready(stats: &crate::metrics::Stats) -> Response<Full<Bytes>> {
    use crate::source::FeedState;
    let now = tickfan_proto::unix_now_ns();
    if let Err(why) = stats.health.check(now) {
        return text(StatusCode::SERVICE_UNAVAILABLE, &format!("not ready: unhealthy: {why}\n"));
    }
    if stats.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining, shutting down\n");
    }
    let feed = &stats.feed;
    match feed.state(now) {
        FeedState::Live => text(StatusCode::OK, "ready\n"),
        FeedState::Starting => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no tick yet\n"),
        FeedState::CatchingUp => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "not ready: catching up on the stream, {} messages behind\n",
                feed.backlog.load(std::sync::atomic::Ordering::Relaxed)
            ),
        ),
        FeedState::Stale => text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("not ready: feed stale, no tick for {:.1} s\n", feed.quiet_secs(now)),
        ),
        FeedState::Down => {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready: the source lost its upstream\n")
        }
    }
}

fn upgrade(
    ctx: Rc<WorkerCtx>,
    req: &mut Request<Incoming>,
    permit: &Cell<Option<SocketPermit>>,
) -> Response<Full<Bytes>> {
    if !fastwebsockets::upgrade::is_upgrade_request(req) {
        return text(
            StatusCode::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket: connect with a WebSocket client, e.g. npx wscat -c ws://HOST:PORT/ws\n",
        );
    }
    let Some(mut taken) = permit.take() else {
        return text(StatusCode::BAD_REQUEST, "this socket was upgraded already\n");
    };
    if let Err(why) = admit_forwarded(&ctx, req, &mut taken) {
        permit.set(Some(taken)); // held until the socket closes (right after the answer)
        return refuse(&ctx, why, None);
    }
    // Kept by the socket unless it upgrades, so that a refused socket stays counted.
    permit.set(Some(taken));
    if ctx.stats.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return refuse(&ctx, Refusal::Draining, None);
    }
    if !origin_allowed(&ctx.cfg.allowed_origins, req) {
        return refuse(&ctx, Refusal::Origin, None);
    }
    let query = req.uri().query().unwrap_or("");
    if let Some(refused) = version_refused(query) {
        return refused;
    }
    let admitted = match &ctx.auth {
        None => None,
        Some(auth) => {
            let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
            let token = query_param(query, "token");
            match auth.admit(crate::auth::credential(header, token.as_deref())) {
                Ok(admitted) => Some(admitted),
                Err(e) => return refuse(&ctx, Refusal::Unauthorized, Some(&e.to_string())),
            }
        }
    };
    let streams = query_param(query, "streams");
    let binary = match query_param(query, "format").as_deref() {
        None | Some("json") => false,
        Some("binary") => true,
        Some(_) => {
            return refused_request(
                "?format= is json (the default) or binary (docs/protocol.md, \"Binary data messages\")\n",
            )
        }
    };
    let offers = req.headers().get_all(SEC_WEBSOCKET_EXTENSIONS).iter();
    // Binary messages gain little from deflating: a binary connection is never compressed.
    let deflate = !binary
        && ctx.cfg.permessage_deflate
        && crate::deflate::offered(offers.filter_map(|v| v.to_str().ok()));
    let form = match (binary, deflate) {
        (true, _) => Form::Binary,
        (false, true) => Form::Deflate,
        (false, false) => Form::WebSocket,
    };
    match fastwebsockets::upgrade::upgrade(req) {
        Ok((response, fut)) => {
            let Some(mut permit) = permit.take() else {
                return text(StatusCode::BAD_REQUEST, "this socket was upgraded already\n");
            };
            permit.upgraded();
            let run = crate::conn::run(ctx, fut, streams, permit, admitted, form);
            tokio::task::spawn_local(run);
            let mut response = response.map(|_| Full::new(Bytes::new()));
            if deflate {
                let accepted = HeaderValue::from_static(crate::deflate::RESPONSE);
                response.headers_mut().insert(SEC_WEBSOCKET_EXTENSIONS, accepted);
            }
            response
        }
        Err(e) => text(StatusCode::BAD_REQUEST, &format!("bad WebSocket handshake: {e}\n")),
    }
}

/// Behind a trusted proxy (`--trust-proxy`), counts the client the handshake is forwarded for
/// against its address's bounds. A trusted proxy's handshake that names no client is let
/// through: the proxy itself is the client.
pub(crate) fn admit_forwarded<B>(
    ctx: &WorkerCtx,
    req: &Request<B>,
    permit: &mut SocketPermit,
) -> Result<(), Refusal> {
    if ctx.cfg.trust_proxy.is_empty() {
        return Ok(());
    }
    let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
    let client = forwarded
        .and_then(|h| crate::limits::forwarded_client(h, |ip| ctx.door.is_trusted_proxy(ip)));
    match client {
        Some(ip) => permit.forwarded_for(ip, std::time::Instant::now()),
        None => Ok(()),
    }
}

/// A handshake turned away: counted, and answered with the refusal's status and its text (or
/// `detail`).
pub(crate) fn refuse(ctx: &WorkerCtx, why: Refusal, detail: Option<&str>) -> Response<Full<Bytes>> {
    ctx.stats.refused(why);
    let (status, reason) = why.answer();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut resp = text(status, &format!("{}\n", detail.unwrap_or(reason)));
    // A refused client does not keep its socket.
    resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    if why == Refusal::Unauthorized {
        resp.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// `?v=N`: a client may name the protocol version it speaks; a gateway serves only its own
/// (`docs/protocol.md`, "Versions"), and answers any other with 400 rather than messages the
/// client would misread.
pub(crate) fn version_refused(query: &str) -> Option<Response<Full<Bytes>>> {
    let asked = query_param(query, "v")?;
    let ours = tickfan_proto::PROTOCOL_VERSION;
    if asked == ours.to_string() {
        return None;
    }
    let asked: String = asked.chars().filter(|c| c.is_ascii_graphic()).take(16).collect();
    Some(refused_request(&format!(
        "protocol version {asked:?} is not served here: this gateway speaks protocol v{ours} \
         (docs/protocol.md, \"Versions\"); connect with ?v={ours} or without v\n"
    )))
}

/// 400 with `why`, and the socket closed after it (the client asked for what is not served).
fn refused_request(why: &str) -> Response<Full<Bytes>> {
    let mut resp = text(StatusCode::BAD_REQUEST, why);
    resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Whether the handshake's `Origin` may connect: any when no list is configured, and always
/// for clients that send none (programs; browsers always send it).
pub(crate) fn origin_allowed<B>(allowed: &[String], req: &Request<B>) -> bool {
    let Some(origin) = req.headers().get(ORIGIN) else { return true };
    allowed.is_empty()
        || origin.to_str().is_ok_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)))
}

fn index(symbols: usize, side: &Side) -> Response<Full<Bytes>> {
    let ws = match side {
        Side::Admin { .. } => "(WebSocket, /ws, is on the data port)\n".to_owned(),
        Side::Data(_) => "GET /ws       WebSocket: {\"op\":\"subscribe\",\"id\":1,\"channels\":[\"trades.BTC-USD\"]}\n".to_owned(),
    };
    let pages = match side {
        Side::Data(Some(admin)) => {
            format!("/dashboard and /metrics: on the admin listener, {admin}\n")
        }
        _ => "GET /dashboard  live dashboard (open it in a browser)\n\
              GET /metrics  Prometheus metrics (OpenMetrics when asked for, else text 0.0.4)\n"
            .to_owned(),
    };
    let body = format!(
        "tickfan market-data gateway (protocol v{})\n\n{ws}\
         GET /healthz  liveness: 200 while every thread is alive, 503 with what failed\n\
         GET /readyz   readiness: 200 while the feed is live, 503 with the reason otherwise\n\
         {pages}\n\
         {symbols} symbols; channels trades.<SYM>, quotes.<SYM>, book.<SYM>, and <kind>.*\n",
        tickfan_proto::PROTOCOL_VERSION,
    );
    text(StatusCode::OK, &body)
}

/// A stream whose first bytes were read already (by `sse::sniff`): they are read again first.
#[derive(Debug)]
pub struct Rewind<IO> {
    /// What is left of the bytes read ahead.
    pub pre: Bytes,
    pub io: IO,
}

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The live dashboard: one page, its script inline, uPlot vendored (MIT, licence served beside
/// it), all compiled into the binary so it works offline.
pub const DASHBOARD: &str = include_str!("../assets/dashboard.html");
const UPLOT_JS: &str = include_str!("../assets/vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../assets/vendor/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("../assets/vendor/uPlot.LICENSE");

fn asset(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub(crate) fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Value of `name` in a query string, percent-decoded (`%2C` → `,`, `%2A` → `*`).
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_parameter_is_found_and_decoded() {
        assert_eq!(
            query_param("streams=trades.BTC-USD,book.*", "streams").as_deref(),
            Some("trades.BTC-USD,book.*")
        );
        assert_eq!(
            query_param("a=1&streams=trades.%2A%2Cquotes.ETH-USD", "streams").as_deref(),
            Some("trades.*,quotes.ETH-USD")
        );
        assert_eq!(query_param("a=1", "streams"), None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
