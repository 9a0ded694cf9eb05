//! TLS (`--tls-cert`, `--tls-key`): `wss://` and `https://` on the data port, by rustls; the
//! certificate is read again on SIGHUP ([`CertStore`]).
//!
//! The handshake and the HTTP upgrade run through tokio-rustls like any other HTTP service.
//! After the upgrade the connection is taken apart into its TCP socket and its rustls session
//! ([`Sock::Tls`]), driven without tasks like a plain socket: the fan-out hands the session the
//! shared frames of a batch in one vectored write, rustls encrypts them into its buffer, and
//! the records go out in as few `write`s as the socket takes. Encryption is per connection (the
//! frames are shared, their records cannot be): TLS costs CPU per subscriber, which is why a
//! large fan-out usually terminates TLS at its load balancer (docs/operations.md, "TLS").

use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ServerConfig, ServerConnection};

use crate::backpressure::TryWrite;

/// Ciphertext rustls may hold for one connection before a write counts as blocked.
const TLS_BUFFER: usize = 64 << 10;

/// TLS settings that cannot be used (a startup error).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--tls-cert {}: {source}", path.display())]
    Cert { path: std::path::PathBuf, source: tokio_rustls::rustls::pki_types::pem::Error },
    #[error("--tls-cert {}: no certificate in it", path.display())]
    NoCert { path: std::path::PathBuf },
    #[error("--tls-key {}: {source}", path.display())]
    Key { path: std::path::PathBuf, source: tokio_rustls::rustls::pki_types::pem::Error },
    #[error("--tls-cert/--tls-key: {0}")]
    Rustls(#[from] tokio_rustls::rustls::Error),
}

/// The server's TLS configuration, presenting the certificate of `certs` (which SIGHUP
/// reloads: [`CertStore::reload`]).
pub fn server_config(certs: Arc<CertStore>) -> Result<Arc<ServerConfig>, ConfigError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// The certificate chain and key the data port presents, read from `--tls-cert` and
/// `--tls-key`, and read again on [`reload`](Self::reload) (SIGHUP): a renewed certificate is
/// taken without a restart. Handshakes after a reload present the new one; established
/// connections keep their session.
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Reads the certificate chain (PEM) and its private key (PEM); they must match.
    pub fn open(cert: &Path, key: &Path) -> Result<CertStore, ConfigError> {
        let current = RwLock::new(Arc::new(load(cert, key)?));
        Ok(CertStore { cert: cert.to_owned(), key: key.to_owned(), current })
    }

    /// Reads the files again; on any error the current certificate stays.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let fresh = Arc::new(load(&self.cert, &self.key)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The files read, for messages.
    pub fn paths(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// A certificate chain and its private key from PEM files, checked to belong together.
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, ConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|source| ConfigError::Cert { path: cert.to_owned(), source })?;
    if certs.is_empty() {
        return Err(ConfigError::NoCert { path: cert.to_owned() });
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|source| ConfigError::Key { path: key.to_owned(), source })?;
    Ok(CertifiedKey::from_der(certs, key, &provider())?)
}

/// A client connection's socket after the upgrade: plain TCP, or TCP with its TLS session.
#[derive(Debug)]
pub enum Sock {
    Plain(TcpStream),
    /// Boxed: a rustls session is over a kilobyte, and a plain connection must not pay for it.
    Tls(Box<TlsSock>),
}

/// A TCP socket and the rustls session on it.
pub struct TlsSock {
    tcp: TcpStream,
    tls: RefCell<ServerConnection>,
}

impl std::fmt::Debug for TlsSock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSock").field("tcp", &self.tcp).finish_non_exhaustive()
    }
}

impl Sock {
    pub fn tls(tcp: TcpStream, mut session: ServerConnection) -> Sock {
        session.set_buffer_limit(Some(TLS_BUFFER));
        Sock::Tls(Box::new(TlsSock { tcp, tls: RefCell::new(session) }))
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Sock::Plain(tcp) => tcp,
            Sock::Tls(s) => &s.tcp,
        }
    }

    /// Reads what the client sent (decrypted): `Ok(0)` at its end, `WouldBlock` when nothing
    /// more is there for now.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let s = match self {
            Sock::Plain(tcp) => return (&*tcp).read(buf),
            Sock::Tls(s) => s,
        };
        let mut tls = s.tls.borrow_mut();
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if tls.read_tls(&mut &s.tcp)? == 0 {
                return Ok(0);
            }
            if let Err(e) = tls.process_new_packets() {
                // rustls queued an alert for the peer: best effort.
                let _ = tls.write_tls(&mut &s.tcp);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            if tls.wants_write() {
                // A key update or alert to answer; the rest waits for the next flush.
                let _ = write_records(&mut tls, &s.tcp);
            }
        }
    }

    /// Plaintext the session decrypted already (read by the handshake's reader before the
    /// connection was taken over), without reading the socket: `Ok(0)` when there is none.
    pub fn take_buffered(&self, buf: &mut [u8]) -> usize {
        match self {
            Sock::Plain(_) => 0,
            Sock::Tls(s) => s.tls.borrow_mut().reader().read(buf).unwrap_or(0),
        }
    }

    /// Ends the sending side after what is queued: a TLS close_notify (best effort), then FIN.
    pub fn shutdown_write(&self) {
        if let Sock::Tls(s) = self {
            let mut tls = s.tls.borrow_mut();
            tls.send_close_notify();
            let _ = write_records(&mut tls, &s.tcp);
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Write);
    }
}

impl AsRawFd for Sock {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }
}

/// Writes the session's pending records to the socket until none are left (`Ok`) or the
/// socket is full (`WouldBlock`).
fn write_records(tls: &mut ServerConnection, tcp: &TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(&mut &*tcp) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl TryWrite for Sock {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let s = match self {
            Sock::Plain(tcp) => return tcp.try_write_vectored(bufs),
            Sock::Tls(s) => s,
        };
        let mut tls = s.tls.borrow_mut();
        // Older records first: nothing new is taken while they wait for room.
        write_records(&mut tls, &s.tcp)?;
        let taken = tls.writer().write_vectored(bufs)?;
        // Sent now if the socket has room; else `flush_pending` sends them when it has.
        match write_records(&mut tls, &s.tcp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(taken)
    }

    fn flush_pending(&self) -> io::Result<()> {
        match self {
            Sock::Plain(_) => Ok(()),
            Sock::Tls(s) => write_records(&mut s.tls.borrow_mut(), &s.tcp),
        }
    }
}
