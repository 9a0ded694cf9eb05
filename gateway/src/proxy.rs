//! The PROXY protocol (HAProxy's `send-proxy` and `send-proxy-v2`, AWS NLB's proxy protocol
//! v2): with `--proxy-protocol`, a connection from a `--trust-proxy` address starts with a
//! header naming the client it carries, which the per-address bounds then count. Version 1 is a
//! text line (`PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\n`), version 2 a binary header
//! (spec: <https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt>). Exactly the header's
//! bytes are read, so what follows (the TLS handshake or the HTTP request) is untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12 bytes a version 2 header starts with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 line, `\r\n` included (the spec's bound).
const V1_MAX: usize = 107;
/// The longest version 2 address block accepted (addresses and TLVs).
const V2_MAX: usize = 1024;

/// A header that is missing or malformed: the connection is closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// Reads the header at the start of `io`: the client's address, or `None` when the proxy
/// speaks for itself (v1 `UNKNOWN`, v2 `LOCAL`: its own health checks) or carries a protocol
/// other than TCP over IPv4 or IPv6.
pub async fn read_header<R: AsyncRead + Unpin>(io: &mut R) -> Result<Option<IpAddr>, ProxyError> {
    let mut start = [0u8; 12];
    read(io, &mut start[..6]).await?;
    if &start[..6] == b"PROXY " {
        return read_v1(io).await;
    }
    if start[..6] != V2_SIGNATURE[..6] {
        return Err(ProxyError::Missing);
    }
    read(io, &mut start[6..]).await?;
    if start != V2_SIGNATURE {
        return Err(ProxyError::Missing);
    }
    read_v2(io).await
}

async fn read<R: AsyncRead + Unpin>(io: &mut R, buf: &mut [u8]) -> Result<(), ProxyError> {
    io.read_exact(buf).await.map(|_| ()).map_err(|_| ProxyError::Malformed("truncated"))
}

/// The rest of a version 1 line, after `PROXY `.
async fn read_v1<R: AsyncRead + Unpin>(io: &mut R) -> Result<Option<IpAddr>, ProxyError> {
    let mut line = Vec::with_capacity(V1_MAX);
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX - 6 {
            return Err(ProxyError::Malformed("v1 line too long"));
        }
        let mut b = [0u8; 1];
        read(io, &mut b).await?;
        line.push(b[0]);
    }
    let line = std::str::from_utf8(&line[..line.len() - 2])
        .map_err(|_| ProxyError::Malformed("v1 line not ASCII"))?;
    let mut parts = line.split(' ');
    let family = parts.next().unwrap_or_default();
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let source = parts.next().ok_or(ProxyError::Malformed("v1 line without addresses"))?;
    let ip: IpAddr = source.parse().map_err(|_| ProxyError::Malformed("v1 source address"))?;
    match (family, ip) {
        ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(Some(ip)),
        _ => Err(ProxyError::Malformed("v1 family")),
    }
}

/// The rest of a version 2 header, after its signature.
async fn read_v2<R: AsyncRead + Unpin>(io: &mut R) -> Result<Option<IpAddr>, ProxyError> {
    let mut head = [0u8; 4];
    read(io, &mut head).await?;
    let [version_command, family, hi, lo] = head;
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if version_command >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version"));
    }
    if len > V2_MAX {
        return Err(ProxyError::Malformed("v2 address block too long"));
    }
    let mut block = vec![0u8; len];
    read(io, &mut block).await?;
    match version_command & 0x0F {
        0 => return Ok(None), // LOCAL: the proxy itself
        1 => {}               // PROXY
        _ => return Err(ProxyError::Malformed("v2 command")),
    }
    match family {
        0x11 if len >= 12 => {
            Ok(Some(IpAddr::V4(Ipv4Addr::new(block[0], block[1], block[2], block[3]))))
        }
        0x21 if len >= 36 => {
            let octets: [u8; 16] = block[..16].try_into().expect("16 bytes");
            Ok(Some(IpAddr::V6(Ipv6Addr::from(octets))))
        }
        0x11 | 0x21 => Err(ProxyError::Malformed("v2 address block too short")),
        _ => Ok(None), // UNIX sockets or unspecified: no client address to count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<Option<IpAddr>, ProxyError>, Vec<u8>) {
        let mut io = bytes;
        let got = read_header(&mut io).await;
        (got, io.to_vec())
    }

    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend([0x20 | command, family]);
        out.extend((block.len() as u16).to_be_bytes());
        out.extend(block);
        out.extend(b"GET /ws");
        out
    }

    #[tokio::test]
    async fn both_versions_name_the_client_and_leave_the_rest_unread() {
        let (got, rest) = parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\nGET /ws").await;
        assert_eq!(
            (got, rest.as_slice()),
            (Ok(Some("203.0.113.7".parse().unwrap())), &b"GET /ws"[..])
        );
        let (got, _) = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 8080\r\n").await;
        assert_eq!(got, Ok(Some("2001:db8::7".parse().unwrap())));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").await.0, Ok(None));
        let mut block4 = vec![198, 51, 100, 9, 10, 0, 0, 1];
        block4.extend([0xC8, 0x00, 0x1F, 0x90]);
        let (got, rest) = parse(&v2(1, 0x11, &block4)).await;
        assert_eq!(
            (got, rest.as_slice()),
            (Ok(Some("198.51.100.9".parse().unwrap())), &b"GET /ws"[..])
        );
        let mut block6 = "2001:db8::9".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        block6.extend([0; 20]);
        assert_eq!(parse(&v2(1, 0x21, &block6)).await.0, Ok(Some("2001:db8::9".parse().unwrap())));
        assert_eq!(parse(&v2(0, 0x00, &[])).await.0, Ok(None), "LOCAL: the proxy's own check");
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        assert_eq!(parse(b"GET /ws HTTP/1.1\r\n").await.0, Err(ProxyError::Missing));
        assert!(parse(b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n").await.0.is_err());
        assert!(parse(b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n").await.0.is_err());
        assert!(parse(&[b"PROXY ".as_slice(), &[b'x'; 200]].concat()).await.0.is_err());
        assert!(parse(b"PROXY TCP4 1.2.3.4").await.0.is_err(), "truncated");
        assert!(parse(&v2(1, 0x11, &[1, 2, 3])).await.0.is_err(), "short block");
    }
}
