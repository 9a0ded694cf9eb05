//! Every resource a client can make the gateway spend is bounded here (docs/operations.md,
//! "Limits"):
//!
//! - at the door ([`Door`]): sockets in all (WebSocket, plain HTTP and those still in their
//!   handshake), sockets not yet upgraded, sockets per client address and new sockets per
//!   client address per time window; each socket holds a [`SocketPermit`] for its whole life;
//! - the open-file limit the socket bound needs ([`raise_open_files`]);
//! - client input held in memory, over all connections ([`InboundBudget`]);
//! - frames a connection may send per second ([`RequestLimiter`]).
//!
//! Each refusal is counted in `tickfan_connections_refused_total{reason}` ([`Refusal`]).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

/// Why a socket or a handshake was turned away: the `reason` label of
/// `tickfan_connections_refused_total`, and the HTTP answer the client gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` sockets are open.
    Capacity,
    /// `--max-handshakes` sockets are open and not upgraded to WebSocket.
    Handshakes,
    /// The client's address has `--max-connections-per-ip` sockets open.
    PerIp,
    /// The client's address opened `--max-new-connections-per-ip` sockets in this window.
    PerIpRate,
    /// The handshake's `Origin` is not in `--allowed-origins`.
    Origin,
    /// No valid credentials (auth is on).
    Unauthorized,
    /// The TLS handshake failed or took longer than `--handshake-timeout` (no HTTP answer).
    TlsHandshake,
    /// `--proxy-protocol`: a trusted proxy's connection without a valid PROXY header.
    ProxyHeader,
    /// The gateway is shutting down (draining its connections).
    Draining,
}

impl Refusal {
    pub const ALL: [Refusal; 9] = [
        Refusal::Capacity,
        Refusal::Handshakes,
        Refusal::PerIp,
        Refusal::PerIpRate,
        Refusal::Origin,
        Refusal::Unauthorized,
        Refusal::TlsHandshake,
        Refusal::ProxyHeader,
        Refusal::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Capacity => "max_connections",
            Refusal::Handshakes => "max_handshakes",
            Refusal::PerIp => "per_ip",
            Refusal::PerIpRate => "per_ip_rate",
            Refusal::Origin => "origin",
            Refusal::Unauthorized => "unauthorized",
            Refusal::TlsHandshake => "tls_handshake",
            Refusal::ProxyHeader => "proxy_header",
            Refusal::Draining => "draining",
        }
    }

    /// The whole HTTP response a socket refused before any HTTP was read gets (then it is
    /// closed).
    pub fn http_response(self) -> String {
        let (status, text) = self.answer();
        let reason = match status {
            429 => "Too Many Requests",
            400 => "Bad Request",
            _ => "Service Unavailable",
        };
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\nretry-after: 5\r\nconnection: close\r\n\r\n{text}\n",
            text.len() + 1
        )
    }

    /// The HTTP status and the short text the refused client gets.
    pub fn answer(self) -> (u16, &'static str) {
        match self {
            Refusal::Capacity => (503, "connection limit reached; try again later"),
            Refusal::Handshakes => (503, "too many handshakes in progress; try again later"),
            Refusal::PerIp => (429, "too many connections from your address"),
            Refusal::PerIpRate => (429, "too many new connections from your address; slow down"),
            Refusal::Origin => (403, "this Origin may not connect"),
            Refusal::Unauthorized => (401, "credentials required"),
            Refusal::TlsHandshake => (400, "TLS handshake failed"),
            Refusal::ProxyHeader => (400, "PROXY protocol header expected"),
            Refusal::Draining => (503, "server shutting down; connect again shortly"),
        }
    }
}

/// The bounds [`Door`] applies; 0 disables a per-address bound.
#[derive(Clone, Debug, Default)]
pub struct DoorLimits {
    pub max_sockets: usize,
    pub max_handshakes: usize,
    pub max_per_ip: u32,
    pub max_new_per_ip: u32,
    pub new_window: Duration,
    /// Proxies whose sockets are not limited per address: the client they forward for is, at
    /// the handshake (`X-Forwarded-For`).
    pub trusted_proxies: Vec<IpAddr>,
}

/// The count of sockets, gateway-wide and per client address. Shared by the listener (which
/// admits) and the workers (whose sockets release their permits when they close).
#[derive(Debug)]
pub struct Door {
    limits: DoorLimits,
    sockets: AtomicUsize,
    handshakes: AtomicUsize,
    /// Only used when a per-address bound is set.
    addresses: Mutex<Addresses>,
}

/// Per-address state, and when it was last pruned of addresses with nothing to remember.
#[derive(Debug, Default)]
struct Addresses {
    by_ip: FxHashMap<IpAddr, PerIp>,
    pruned_at_len: usize,
}

#[derive(Debug)]
struct PerIp {
    open: u32,
    window_start: Instant,
    arrivals: u32,
}

impl Door {
    pub fn new(limits: DoorLimits) -> Arc<Door> {
        Arc::new(Door {
            limits,
            sockets: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
            addresses: Mutex::new(Addresses::default()),
        })
    }

    /// Sockets open now (permits held).
    pub fn sockets(&self) -> usize {
        self.sockets.load(Ordering::Relaxed)
    }

    /// Sockets open now and not upgraded to WebSocket.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::Relaxed)
    }

    pub fn limits(&self) -> &DoorLimits {
        &self.limits
    }

    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.limits.trusted_proxies.contains(&ip)
    }

    /// Admits a socket just accepted from `peer`, or says why not. Only the listener thread
    /// admits, so the gateway-wide counts cannot be overshot by a race between two admissions.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, now: Instant) -> Result<SocketPermit, Refusal> {
        if self.sockets.load(Ordering::Acquire) >= self.limits.max_sockets {
            return Err(Refusal::Capacity);
        }
        if self.handshakes.load(Ordering::Acquire) >= self.limits.max_handshakes {
            return Err(Refusal::Handshakes);
        }
        let ip = if self.is_trusted_proxy(peer) {
            None
        } else {
            self.charge(peer, now)?;
            Some(peer)
        };
        self.sockets.fetch_add(1, Ordering::AcqRel);
        self.handshakes.fetch_add(1, Ordering::AcqRel);
        Ok(SocketPermit { door: self.clone(), ip, handshaking: true })
    }

    fn per_ip_limited(&self) -> bool {
        self.limits.max_per_ip > 0 || self.limits.max_new_per_ip > 0
    }

    /// Counts one more socket of `ip`, if its bounds allow.
    fn charge(&self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        if !self.per_ip_limited() {
            return Ok(());
        }
        let window = self.limits.new_window;
        let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        if addresses.by_ip.len() >= 2 * addresses.pruned_at_len.max(1024) {
            addresses
                .by_ip
                .retain(|_, s| s.open > 0 || now.duration_since(s.window_start) < window);
            addresses.pruned_at_len = addresses.by_ip.len();
        }
        let state =
            addresses.by_ip.entry(ip).or_insert(PerIp { open: 0, window_start: now, arrivals: 0 });
        if now.duration_since(state.window_start) >= window {
            state.window_start = now;
            state.arrivals = 0;
        }
        if self.limits.max_new_per_ip > 0 && state.arrivals >= self.limits.max_new_per_ip {
            return Err(Refusal::PerIpRate);
        }
        if self.limits.max_per_ip > 0 && state.open >= self.limits.max_per_ip {
            return Err(Refusal::PerIp);
        }
        state.arrivals += 1;
        state.open += 1;
        Ok(())
    }

    fn release(&self, ip: IpAddr) {
        if !self.per_ip_limited() {
            return;
        }
        let mut addresses = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = addresses.by_ip.get_mut(&ip) {
            state.open = state.open.saturating_sub(1);
        }
    }
}

/// One socket's place at the [`Door`], held from its accept until it closes.
#[derive(Debug)]
pub struct SocketPermit {
    door: Arc<Door>,
    /// The client address it counts against; `None` for a trusted proxy's socket until the
    /// handshake names the client.
    ip: Option<IpAddr>,
    handshaking: bool,
}

impl SocketPermit {
    /// A trusted proxy's socket whose client is not known yet.
    pub fn is_unattributed(&self) -> bool {
        self.ip.is_none()
    }

    /// The socket is a WebSocket connection now: it no longer counts as a handshake.
    pub fn upgraded(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.door.handshakes.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// A trusted proxy's socket carries `client`'s connection: counts it against that
    /// address, if its bounds allow. Does nothing for a socket already counted.
    pub fn forwarded_for(&mut self, client: IpAddr, now: Instant) -> Result<(), Refusal> {
        if self.ip.is_none() {
            self.door.charge(client, now)?;
            self.ip = Some(client);
        }
        Ok(())
    }
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        self.upgraded();
        self.door.sockets.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            self.door.release(ip);
        }
    }
}

/// The client a trusted proxy forwards for: the rightmost address of `X-Forwarded-For` that is
/// not itself a trusted proxy (addresses left of it could be forged by the client).
pub fn forwarded_client(header: &str, trusted: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
    header
        .rsplit(',')
        .map(|part| part.trim().parse::<IpAddr>())
        .find(|ip| ip.as_ref().map_or(true, |&ip| !trusted(ip)))?
        .ok()
}

/// Open files the gateway keeps besides its client sockets: its listening sockets, epoll sets,
/// eventfds, the feed, log and NATS connections, with room to spare.
pub const RESERVED_FILES: u64 = 256;

/// Why the open-file limit cannot give `--max-connections` what it needs (a startup error).
#[derive(Debug, thiserror::Error)]
pub enum OpenFilesError {
    #[error("cannot read the open-file limit: {0}")]
    Read(std::io::Error),
    #[error(
        "--max-connections {max_connections} needs {needed} open files, but this process may \
         open at most {hard} (its hard limit, `ulimit -Hn`): raise it (systemd LimitNOFILE=, \
         docker --ulimit nofile=, /etc/security/limits.conf) or lower --max-connections to {}",
        hard.saturating_sub(RESERVED_FILES)
    )]
    TooFew { max_connections: usize, needed: u64, hard: u64 },
    #[error("cannot raise the open-file limit to {wanted}: {source}")]
    Raise { wanted: u64, source: std::io::Error },
}

/// Raises the soft open-file limit to what `max_connections` sockets need (0: as many as the
/// hard limit allows). Returns the effective connection bound and a line saying what was done.
pub fn raise_open_files(max_connections: usize) -> Result<(usize, String), OpenFilesError> {
    use rlimit::Resource;
    let (soft, hard) = rlimit::getrlimit(Resource::NOFILE).map_err(OpenFilesError::Read)?;
    let wanted = match max_connections {
        0 => hard,
        n => n as u64 + RESERVED_FILES,
    };
    if wanted > hard {
        return Err(OpenFilesError::TooFew { max_connections, needed: wanted, hard });
    }
    let now = if wanted > soft {
        rlimit::setrlimit(Resource::NOFILE, wanted, hard)
            .map_err(|source| OpenFilesError::Raise { wanted, source })?;
        wanted
    } else {
        soft
    };
    let max = match max_connections {
        0 => now.saturating_sub(RESERVED_FILES).max(1) as usize,
        n => n,
    };
    let raised = if now > soft { format!(", raised from {soft}") } else { String::new() };
    Ok((max, format!("{max} connections (open-file limit {now}{raised})")))
}

/// Client input held in memory over all connections (unfinished frames and fragmented
/// messages), and its bound `--max-inbound-bytes`.
#[derive(Debug)]
pub struct InboundBudget {
    used: AtomicUsize,
    limit: usize,
}

impl InboundBudget {
    pub fn new(limit: usize) -> InboundBudget {
        InboundBudget { used: AtomicUsize::new(0), limit }
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Moves one connection's charge from `from` to `to` bytes. `false`, with the charge left
    /// at `from`, when growing to `to` would exceed the bound.
    pub fn recharge(&self, from: usize, to: usize) -> bool {
        if to <= from {
            self.used.fetch_sub(from - to, Ordering::Relaxed);
            return true;
        }
        let grow = to - from;
        let before = self.used.fetch_add(grow, Ordering::Relaxed);
        if before + grow > self.limit {
            self.used.fetch_sub(grow, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// Per-connection rate limit on client frames of every kind: a token bucket refilled at `rate`
/// per second holding `2 × rate`. A text request beyond it is refused with `rate_limited`;
/// another frame beyond it is ignored (a ping gets no pong). A client that goes on sending
/// through `2 × rate` refusals in a row is closed with 1008.
///
/// Twelve bytes per connection: the rate is the gateway's (`--max-requests-per-sec`, given to
/// [`check`](Self::check)), and the last look is in milliseconds since the process began
/// (wrapping after 49 days, which at worst refuses one frame of a client silent that long).
#[derive(Debug)]
pub struct RequestLimiter {
    tokens: f32,
    last_ms: u32,
    refused_in_a_row: u32,
}

/// Verdict of [`RequestLimiter::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Refuse,
    Flood,
}

/// `now` in milliseconds since the first call, truncated to 32 bits.
fn millis(now: Instant) -> u32 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    now.saturating_duration_since(start).as_millis() as u32
}

impl RequestLimiter {
    pub fn new(rate_per_sec: u32, now: Instant) -> RequestLimiter {
        RequestLimiter {
            tokens: 2.0 * rate_per_sec as f32,
            last_ms: millis(now),
            refused_in_a_row: 0,
        }
    }

    pub fn check(&mut self, rate_per_sec: u32, now: Instant) -> Verdict {
        let rate = rate_per_sec as f32;
        let now_ms = millis(now);
        let elapsed = now_ms.wrapping_sub(self.last_ms) as f32 / 1000.0;
        self.last_ms = now_ms;
        self.tokens = (self.tokens + elapsed * rate).min(2.0 * rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            return Verdict::Allow;
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row as f32 > 2.0 * rate {
            Verdict::Flood
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn door(limits: DoorLimits) -> Arc<Door> {
        Door::new(DoorLimits { new_window: Duration::from_secs(300), ..limits })
    }

    #[test]
    fn limiter_allows_a_burst_then_refuses_then_floods() {
        let t0 = Instant::now();
        let mut l = RequestLimiter::new(10, t0);
        assert!((0..20).all(|_| l.check(10, t0) == Verdict::Allow));
        let verdicts: Vec<Verdict> = (0..21).map(|_| l.check(10, t0)).collect();
        assert!(verdicts[..20].iter().all(|&v| v == Verdict::Refuse), "{verdicts:?}");
        assert_eq!(verdicts[20], Verdict::Flood);
        // Tokens come back with time.
        assert_eq!(l.check(10, t0 + Duration::from_millis(200)), Verdict::Allow);
        assert_eq!(std::mem::size_of::<RequestLimiter>(), 12);
    }

    #[test]
    fn sockets_and_handshakes_are_released_with_their_permits() {
        let d = door(DoorLimits { max_sockets: 2, max_handshakes: 1, ..Default::default() });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        let mut a = d.admit(ip, now).unwrap();
        assert_eq!(d.admit(ip, now).unwrap_err(), Refusal::Handshakes);
        a.upgraded();
        let b = d.admit(ip, now).unwrap();
        assert_eq!(d.admit(ip, now).unwrap_err(), Refusal::Capacity);
        drop(b);
        assert_eq!((d.sockets(), d.handshakes()), (1, 0));
        drop(a);
        assert_eq!((d.sockets(), d.handshakes()), (0, 0));
    }

    #[test]
    fn addresses_are_bounded_apart_and_trusted_proxies_count_their_clients() {
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let d = door(DoorLimits {
            max_sockets: 100,
            max_handshakes: 100,
            max_per_ip: 2,
            max_new_per_ip: 3,
            trusted_proxies: vec![proxy],
            ..Default::default()
        });
        let (x, y): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        let x1 = d.admit(x, t0).unwrap();
        let _x2 = d.admit(x, t0).unwrap();
        assert_eq!(d.admit(x, t0).unwrap_err(), Refusal::PerIp);
        let _y1 = d.admit(y, t0).unwrap();
        drop(x1);
        let x3 = d.admit(x, t0).unwrap();
        // Three arrivals in this window already.
        assert_eq!(d.admit(x, t0).unwrap_err(), Refusal::PerIpRate);
        let later = t0 + Duration::from_secs(300);
        assert_eq!(d.admit(x, later).unwrap_err(), Refusal::PerIp);
        drop(x3);
        assert!(d.admit(x, later).is_ok());
        // The proxy's sockets are free; the client it names is counted.
        let mut via = d.admit(proxy, t0).unwrap();
        let _via2 = d.admit(proxy, t0).unwrap();
        assert_eq!(via.forwarded_for(y, t0), Ok(()));
        let mut again = d.admit(proxy, t0).unwrap();
        assert_eq!(again.forwarded_for(y, t0), Err(Refusal::PerIp));
    }

    #[test]
    fn the_forwarded_client_is_the_last_address_not_a_proxy() {
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let trusted = |ip: IpAddr| ip == proxy;
        let got = |h: &str| forwarded_client(h, trusted).map(|ip| ip.to_string());
        assert_eq!(got("1.2.3.4").as_deref(), Some("1.2.3.4"));
        assert_eq!(got("6.6.6.6, 1.2.3.4, 10.0.0.9").as_deref(), Some("1.2.3.4"));
        assert_eq!(got("2001:db8::1").as_deref(), Some("2001:db8::1"));
        assert_eq!(got("garbage, 10.0.0.9"), None);
        assert_eq!(got(""), None);
    }

    #[test]
    fn the_inbound_budget_refuses_growth_beyond_its_bound() {
        let b = InboundBudget::new(100);
        assert!(b.recharge(0, 60));
        assert!(!b.recharge(0, 50));
        assert!(b.recharge(60, 90));
        assert!(b.recharge(90, 0));
        assert_eq!(b.used(), 0);
    }
}
