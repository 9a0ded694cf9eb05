//! TLS on the data port (`--tls-cert`, `--tls-key`) with a certificate made here by rcgen:
//! `https://` pages, `wss://` subscriptions (our client and wscat from npm), and a plain client
//! turned away.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use serde_json::{json, Value};
use support::{start_gateway_with, ObserveJson, SeqCheck};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM files.
struct Cert {
    dir: PathBuf,
    der: CertificateDer<'static>,
}

impl Cert {
    fn new() -> Cert {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(names).unwrap();
        // One directory per certificate: the tests of this file run in parallel.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tickfan-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key_pair.serialize_pem()).unwrap();
        Cert { dir, der: cert.der().clone() }
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let config = ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(cert: &Cert, addr: SocketAddr) -> Tls {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    cert.connector().connect(name, tcp).await.expect("TLS handshake")
}

/// `GET path` over TLS: the whole response.
async fn https_get(cert: &Cert, addr: SocketAddr, path: &str) -> String {
    let mut s = tls_connect(cert, addr).await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn wss_and_https_serve_the_same_protocol_over_tls() {
    let cert = Cert::new();
    let gw = start_gateway_with(|c| {
        c.tls_cert = Some(cert.dir.join("cert.pem"));
        c.tls_key = Some(cert.dir.join("key.pem"));
    });
    let addr = gw.local_addr();
    let health = https_get(&cert, addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"), "{health}");

    // wss: the upgrade over TLS, then a subscription read for a while without a gap.
    let mut s = tls_connect(&cert, addr).await;
    support::upgrade_by_hand(&mut s, "localhost").await;
    let mut ws = WebSocket::after_handshake(s, Role::Client);
    ws.set_auto_pong(true);
    let subscribe = json!({"op":"subscribe","id":1,"channels":["trades.*","book.BTC-USD"]});
    let text = subscribe.to_string().into_bytes();
    ws.write_frame(Frame::text(Payload::Owned(text))).await.unwrap();
    let mut seq = SeqCheck::default();
    let mut replied = false;
    while seq.messages < 2000 {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.read_frame())
            .await
            .expect("data within 5 s")
            .unwrap();
        if frame.opcode != OpCode::Text {
            continue;
        }
        let v: Value = serde_json::from_slice(&frame.payload).unwrap();
        replied |= v["op"] == "subscribed";
        seq.observe_json(&v);
    }
    assert!(replied);
    assert_eq!((seq.undeclared_gaps, seq.declared_gaps), (0, 0), "{seq:?}");
    assert!(seq.snapshots >= 1, "the book starts with a snapshot");

    // A plain client gets no HTTP answer from a TLS port, and is counted.
    let plain = support::http_get(addr, "/healthz").await;
    assert!(!plain.contains("200"), "{plain}");
    let counted = "tickfan_connections_refused_total{reason=\"tls_handshake\"} 1";
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = https_get(&cert, addr, "/metrics").await;
        if metrics.contains(counted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metrics.contains(counted), "{metrics}");
}

#[tokio::test]
async fn wscat_subscribes_over_wss() {
    let cert = Cert::new();
    let (cert_pem, key_pem) = (cert.dir.join("cert.pem"), cert.dir.join("key.pem"));
    let (_gw, addr) = support::spawn_tickfan(&[
        "--tls-cert",
        cert_pem.to_str().unwrap(),
        "--tls-key",
        key_pem.to_str().unwrap(),
    ])
    .await;
    let url = format!("wss://localhost:{}/ws", addr.port());
    let subscribe = r#"{"op":"subscribe","id":1,"channels":["trades.*"]}"#;
    let out =
        support::run_wscat(&url, &["--ca", cert_pem.to_str().unwrap(), "-x", subscribe, "-w", "2"])
            .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let trades = stdout.lines().filter(|l| l.contains(r#""ch":"trades."#)).count();
    assert!(
        stdout.contains(r#""op":"subscribed""#),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(trades > 50, "wscat printed only {trades} trades over wss:\n{stdout}");
}

#[tokio::test]
async fn curl_streams_server_sent_events_over_https() {
    let cert = Cert::new();
    let gw = start_gateway_with(|c| {
        c.tls_cert = Some(cert.dir.join("cert.pem"));
        c.tls_key = Some(cert.dir.join("key.pem"));
    });
    let url = format!("https://localhost:{}/sse?streams=trades.*", gw.local_addr().port());
    let cacert = cert.dir.join("cert.pem");
    let curl = tokio::process::Command::new("curl")
        .args(["-sS", "-N", "--max-time", "1.5", "--cacert", cacert.to_str().unwrap(), &url])
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", gw.local_addr().port())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Some(curl) = support::installed("curl", "curl", curl) else { return };
    let out = curl.wait_with_output().await.unwrap();
    let body = String::from_utf8_lossy(&out.stdout);
    let mut seq = SeqCheck::default();
    for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        seq.observe_json(&serde_json::from_str::<Value>(data).unwrap());
    }
    assert!(
        body.contains(r#""op":"subscribed""#),
        "{body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(seq.messages > 100, "only {} trades over https: {seq:?}", seq.messages);
    assert_eq!((seq.undeclared_gaps, seq.declared_gaps), (0, 0), "{seq:?}");
}

/// A renewed certificate is taken on SIGHUP, by the real binary: handshakes from then on
/// present the new one, the connections already open go on, and a bad file on a later SIGHUP
/// leaves the current certificate in place (the process stays up).
#[tokio::test]
async fn sighup_takes_a_renewed_certificate_and_open_connections_go_on() {
    let (old, new) = (Cert::new(), Cert::new());
    let (cert_path, key_path) = (old.dir.join("cert.pem"), old.dir.join("key.pem"));
    let (child, addr) = support::spawn_tickfan(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ])
    .await;
    let pid = child.id().expect("running").to_string();
    let handshake = |cert: &Cert| {
        let connector = cert.connector();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            connector.connect(name, tcp).await.is_ok()
        }
    };
    // A subscriber from before the renewal.
    let mut s = tls_connect(&old, addr).await;
    support::upgrade_by_hand(&mut s, "localhost").await;
    let mut ws = WebSocket::after_handshake(s, Role::Client);
    ws.set_auto_pong(true);
    let subscribe = json!({"op":"subscribe","id":1,"channels":["trades.*"]}).to_string();
    ws.write_frame(Frame::text(Payload::Owned(subscribe.into_bytes()))).await.unwrap();
    let mut seq = SeqCheck::default();
    read_n(&mut ws, &mut seq, 100).await;
    assert!(handshake(&old).await && !handshake(&new).await, "the old certificate first");

    // Renewal: new files in place, then SIGHUP.
    std::fs::copy(new.dir.join("cert.pem"), &cert_path).unwrap();
    std::fs::copy(new.dir.join("key.pem"), &key_path).unwrap();
    let hup = || std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(hup().success());
    let mut renewed = false;
    for _ in 0..50 {
        if handshake(&new).await {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(renewed && !handshake(&old).await, "the new certificate after SIGHUP");
    read_n(&mut ws, &mut seq, 200).await;

    // A broken file: the reload fails, the current certificate stays, the process goes on.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    assert!(hup().success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(handshake(&new).await, "still the renewed certificate");
    read_n(&mut ws, &mut seq, 100).await;
    assert_eq!((seq.undeclared_gaps, seq.declared_gaps), (0, 0), "{seq:?}");
    drop(child);
}

/// Reads `n` more data messages into `seq`, each within 5 s.
async fn read_n(ws: &mut WebSocket<Tls>, seq: &mut SeqCheck, n: u64) {
    let until = seq.messages + n;
    while seq.messages < until {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.read_frame())
            .await
            .expect("data within 5 s")
            .expect("the connection goes on");
        if frame.opcode == OpCode::Text {
            seq.observe_json(&serde_json::from_slice(&frame.payload).unwrap());
        }
    }
}
