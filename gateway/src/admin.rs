//! The admin listener (`--admin-listen`): the operator's pages — `/metrics`, `/dashboard`,
//! `/healthz`, `/readyz` — on an address of their own, served by a thread of their own, so
//! that scrapes and dashboards never run on the fan-out workers and can be kept off the
//! public network. Its dashboard page connects to the data port for its WebSocket.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;

use crate::http::{page, Side};
use crate::metrics::Stats;

/// Admin connections served at once; more are closed at once (operators and scrapers need few).
const MAX_CONNECTIONS: usize = 64;
/// Time a request's head may take.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the admin thread on the bound `socket`. `data_port` is where the dashboard page opens
/// its WebSocket.
pub fn spawn(
    socket: std::net::TcpListener,
    stats: Arc<Stats>,
    symbols: usize,
    data_port: u16,
    cancel: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    let dashboard = dashboard_for(data_port);
    std::thread::Builder::new().name("tickfan-admin".into()).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => return tracing::error!(error = %e, "cannot start the admin runtime"),
        };
        rt.block_on(serve(socket, stats, symbols, dashboard, cancel));
    })
}

/// The dashboard page, told which port the WebSocket is on.
fn dashboard_for(data_port: u16) -> Bytes {
    let meta = format!("<head>\n<meta name=\"tickfan-ws-port\" content=\"{data_port}\">");
    Bytes::from(crate::http::DASHBOARD.replacen("<head>", &meta, 1))
}

async fn serve(
    socket: std::net::TcpListener,
    stats: Arc<Stats>,
    symbols: usize,
    dashboard: Bytes,
    cancel: CancellationToken,
) {
    let listener =
        match socket.set_nonblocking(true).and_then(|()| tokio::net::TcpListener::from_std(socket))
        {
            Ok(l) => l,
            Err(e) => return tracing::error!(error = %e, "cannot register the admin socket"),
        };
    let side = Arc::new(Side::Admin { dashboard });
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::AcqRel);
            continue; // dropped: closed
        }
        let (stats, side, open) = (stats.clone(), side.clone(), open.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let resp = page(&stats, symbols, &req, &side);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}
