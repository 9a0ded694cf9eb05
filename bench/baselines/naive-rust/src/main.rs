//! `naive-ws`: the benchmark baseline for "what a Rust developer writes first" for market-data
//! fan-out: tokio, tokio-tungstenite, one `tokio::sync::broadcast` channel of parsed ticks, and
//! a task per client that serialises every tick it forwards and sends it as its own message.
//!
//! It is naive on purpose, in the usual ways: serialisation per client instead of once per
//! tick, a flush per message, and `RecvError::Lagged` ignored, so a client that falls more than
//! `--capacity` ticks behind silently loses them (the bench sees undeclared seq gaps). It is not
//! sabotaged: the runtime is multi-threaded, the feed is parsed once, and sockets use NODELAY.
//!
//! Reads NDJSON ticks (`feed-sim`) on stdin; speaks tickfan's protocol subset: `/ws?streams=`,
//! `subscribe` / `unsubscribe` ops, `kind.SYMBOL` and `kind.*` channels.
//!
//! ```text
//! feed-sim --rate 2000 --burst-every 0 | naive-ws --listen 127.0.0.1:9000
//! feed-sim --rate 2000 --burst-every 0 | naive-ws --listen 127.0.0.1:9000 --design strong
//! ```
//!
//! `--design strong` ([`strong`]) is the same server as a competent engineer writes it with the
//! same libraries: a broadcast per channel, each tick serialised once, frames batched into few
//! syscalls, and lag declared by `gap` notices instead of lost silently. It is the fairer
//! baseline for "tickfan vs. plain tokio"; the default, `naive`, is the typical first version.

mod strong;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A naive tokio-tungstenite + broadcast market-data server (benchmark baseline).
#[derive(Debug, Parser)]
#[command(name = "naive-ws", version)]
struct Args {
    /// Address to listen on (port 0: any free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Capacity of the broadcast channel, in ticks (strong: of each channel's broadcast).
    #[arg(long, default_value_t = 1024)]
    capacity: usize,
    /// How the server is written: `naive`, a typical first version, or `strong`, as a
    /// competent engineer writes it with the same libraries.
    #[arg(long, value_enum, default_value_t = Design::Naive)]
    design: Design,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Design {
    /// One broadcast of parsed ticks, serialised per client, a flush per message, lag ignored.
    Naive,
    /// A broadcast per channel, serialised once per tick, batched writes, gaps declared.
    Strong,
}

type Tick = Arc<Value>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    let capacity = args.capacity.max(1);
    let serve_one: Box<dyn Fn(TcpStream)> = match args.design {
        Design::Naive => {
            let (tx, _) = broadcast::channel::<Tick>(capacity);
            let feed = tx.clone();
            // No receivers is not an error: nobody is connected yet.
            tokio::spawn(read_feed(move |tick| drop(feed.send(Arc::new(tick)))));
            Box::new(move |stream| drop(tokio::spawn(serve(stream, tx.subscribe()))))
        }
        Design::Strong => {
            let hub = Arc::new(strong::Hub::new(capacity));
            let feed = hub.clone();
            tokio::spawn(read_feed(move |tick| feed.publish(tick)));
            Box::new(move |stream| drop(tokio::spawn(strong::serve(stream, hub.clone()))))
        }
    };
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("listening on http://{}\n", listener.local_addr()?).as_bytes())
        .await?;
    stdout.flush().await?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => serve_one(stream),
                Err(e) => eprintln!("naive-ws: accept: {e}"),
            },
            // Exit here rather than return: tokio's stdin reads on a blocking thread that cannot
            // be cancelled, so dropping the runtime would wait for the next line of the feed.
            _ = sigterm.recv() => std::process::exit(0),
            _ = tokio::signal::ctrl_c() => std::process::exit(0),
        }
    }
}

/// Parses each stdin line once and hands it to `publish`. At the end of the feed, keeps
/// serving.
async fn read_feed(mut publish: impl FnMut(Value)) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) if line.is_empty() => {}
            Ok(Some(line)) => match serde_json::from_str::<Value>(&line) {
                Ok(tick) => publish(tick),
                Err(e) => eprintln!("naive-ws: skipping a line that is not JSON: {e}"),
            },
            Ok(None) => {
                eprintln!("naive-ws: feed ended; still serving");
                return;
            }
            Err(e) => {
                eprintln!("naive-ws: reading stdin: {e}");
                return;
            }
        }
    }
}

/// A client's subscriptions: exact channels and wildcard kinds.
#[derive(Debug, Default)]
struct Subs {
    exact: HashSet<String>,
    kinds: HashSet<String>,
}

impl Subs {
    fn matches(&self, ch: &str) -> bool {
        self.exact.contains(ch) || self.matches_kind(ch)
    }

    /// Whether a wildcard subscription covers channel `ch`.
    fn matches_kind(&self, ch: &str) -> bool {
        ch.split_once('.').is_some_and(|(kind, _)| self.kinds.contains(kind))
    }

    /// Adds or removes `channels`; on a bad one, changes nothing and says which.
    fn apply(&mut self, channels: &[String], add: bool) -> Result<(), String> {
        if let Some(bad) = channels.iter().find(|c| !valid_spec(c)) {
            return Err(format!("unknown channel {bad:?}"));
        }
        for c in channels {
            let (set, key) = match c.split_once('.') {
                Some((kind, "*")) => (&mut self.kinds, kind.to_owned()),
                _ => (&mut self.exact, c.clone()),
            };
            if add {
                set.insert(key);
            } else {
                set.remove(&key);
            }
        }
        Ok(())
    }
}

fn valid_spec(spec: &str) -> bool {
    spec.split_once('.')
        .is_some_and(|(kind, sym)| matches!(kind, "trades" | "quotes" | "book") && !sym.is_empty())
}

/// The `streams` of a query string, comma-separated, with `%2A` and `%2C` decoded.
fn streams_param(query: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("streams="))
        .flat_map(|v| {
            let v =
                v.replace("%2A", "*").replace("%2a", "*").replace("%2C", ",").replace("%2c", ",");
            v.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>()
        })
        .collect()
}

/// The WebSocket handshake, on `/ws` only: the socket and the channels of its `streams`
/// parameter.
async fn accept(stream: TcpStream) -> Option<(WebSocketStream<TcpStream>, Vec<String>)> {
    let _ = stream.set_nodelay(true);
    let mut streams = Vec::new();
    // The callback's signature is tungstenite's, large error type included.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != "/ws" {
            let mut not_found = ErrorResponse::new(Some("not found".into()));
            *not_found.status_mut() = StatusCode::NOT_FOUND;
            return Err(not_found);
        }
        streams = streams_param(req.uri().query().unwrap_or(""));
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(stream, check).await.ok()?;
    Some((ws, streams))
}

/// Subscribes to the `streams` of the handshake; the reply to send.
fn subscribe_streams(subs: &mut Subs, streams: &[String]) -> Value {
    match subs.apply(streams, true) {
        Ok(()) => json!({"op": "subscribed", "channels": streams}),
        Err(msg) => json!({"op": "error", "code": "unknown_channel", "msg": msg}),
    }
}

async fn serve(stream: TcpStream, mut rx: broadcast::Receiver<Tick>) {
    let Some((mut ws, streams)) = accept(stream).await else { return };
    let mut subs = Subs::default();
    if !streams.is_empty() {
        let reply = subscribe_streams(&mut subs, &streams);
        if ws.send(Message::text(reply.to_string())).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            tick = rx.recv() => match tick {
                Ok(tick) => {
                    let ch = tick.get("ch").and_then(Value::as_str).unwrap_or("");
                    if subs.matches(ch) {
                        let text = serde_json::to_string(&*tick).expect("a Value serialises");
                        if ws.send(Message::text(text)).await.is_err() {
                            return;
                        }
                    }
                }
                // What typical code does: carry on. The skipped ticks are lost, silently.
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let reply = request(&mut subs, text.as_str());
                    if ws.send(Message::text(reply.to_string())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) => {
                    // Sends the close reply tungstenite queued. (The inherent `ws.close(None)`
                    // would fail here with SendAfterClosing instead.)
                    let _ = SinkExt::close(&mut ws).await;
                    return;
                }
                Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Handles one client request and returns the reply.
fn request(subs: &mut Subs, text: &str) -> Value {
    let req: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => return json!({"op": "error", "code": "bad_request", "msg": "not JSON"}),
    };
    let op = req.get("op").and_then(Value::as_str);
    let channels: Option<Vec<String>> =
        req.get("channels").and_then(|c| serde_json::from_value(c.clone()).ok());
    let mut reply = match (op, channels) {
        (Some(op @ ("subscribe" | "unsubscribe")), Some(channels)) => {
            match subs.apply(&channels, op == "subscribe") {
                Ok(()) => json!({"op": format!("{op}d"), "channels": channels}),
                Err(msg) => json!({"op": "error", "code": "unknown_channel", "msg": msg}),
            }
        }
        _ => json!({"op": "error", "code": "bad_request",
                    "msg": "expected subscribe or unsubscribe with channels"}),
    };
    // Echo the request's id, if it had one, right after "op" (as tickfan does).
    if let (Some(id), Some(obj)) = (req.get("id"), reply.as_object_mut()) {
        obj.shift_insert(1, "id".to_owned(), id.clone());
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_matching() {
        let s = streams_param("x=1&streams=trades.%2A,quotes.BTC-USD");
        assert_eq!(s, ["trades.*", "quotes.BTC-USD"]);
        let mut subs = Subs::default();
        subs.apply(&s, true).unwrap();
        assert!(subs.matches("trades.ETH-USD") && subs.matches("quotes.BTC-USD"));
        assert!(!subs.matches("quotes.ETH-USD") && !subs.matches("book.BTC-USD"));
        assert!(subs.apply(&["nope.X".to_owned()], true).is_err());
        let reply = request(&mut subs, r#"{"op":"unsubscribe","id":4,"channels":["trades.*"]}"#);
        assert_eq!(reply.to_string(), r#"{"op":"unsubscribed","id":4,"channels":["trades.*"]}"#);
        assert!(!subs.matches("trades.ETH-USD"));
        assert_eq!(request(&mut subs, "{")["code"], "bad_request");
        let reply = request(&mut subs, r#"{"op":"subscribe","channels":["x.Y"]}"#);
        assert!(reply.get("id").is_none() && reply["code"] == "unknown_channel");
    }
}
