//! The load client's reading of a server's frames, on the bare socket once the handshake is
//! done: one read per readiness into a buffer of the connection's own, then every complete
//! frame in it parsed in place (no allocation, no copy, no per-frame future), with one clock
//! reading for all of them. The client must cost less per message than the servers it
//! measures; a general-purpose WebSocket reader (`fastwebsockets`, kept for the handshake and
//! the tests) spent about a third of the client's CPU per message on buffer splitting,
//! reference counts, per-frame futures, UTF-8 validation and a clock reading per frame.
//!
//! What it checks is what a measurement needs: framing (RFC 6455 §5.2: no reserved bits, no
//! mask from a server, control frames whole and ≤ 125 bytes) and, in `client`, `seq`
//! continuity. It does not validate UTF-8 (the gateway's tests read it with full clients) and
//! refuses fragmented messages, which no measured server sends, with an error rather than a
//! guess.

use std::io;

use anyhow::{bail, Context};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::client::ClientSocket;

/// Opcodes (RFC 6455 §5.2).
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// Bytes read at most per `read`, and the buffer's size until a larger frame needs more.
const READ_CHUNK: usize = 8192;
/// Largest message accepted (a book snapshot of a big feed is well under it).
const MAX_MESSAGE: usize = 64 << 20;

/// One message from the server, borrowed from the connection's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub opcode: u8,
    pub payload: &'a [u8],
}

/// A client WebSocket after its handshake, read frame by frame from its own buffer.
#[derive(Debug)]
pub struct RawWs {
    stream: TcpStream,
    /// `buf[start..end]`: read and not yet parsed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl RawWs {
    /// Takes the socket of a connection that fastwebsockets' client handshake opened, with
    /// whatever the server sent after its handshake response.
    pub fn from_handshake(ws: ClientSocket) -> anyhow::Result<RawWs> {
        let upgraded = ws.into_inner().into_inner();
        let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
            bail!("the upgraded connection is not a plain TCP stream");
        };
        Ok(RawWs::new(parts.io.into_inner(), &parts.read_buf))
    }

    /// A connection on `stream`, `early` being bytes already read from it.
    pub fn new(stream: TcpStream, early: &[u8]) -> RawWs {
        let mut buf = vec![0; READ_CHUNK.max(early.len())];
        buf[..early.len()].copy_from_slice(early);
        RawWs { stream, buf, start: 0, end: early.len() }
    }

    /// Waits for the socket to be readable and reads what it has, into room after what is
    /// still unparsed. `Ok(0)`: the server closed the connection.
    pub async fn fill(&mut self) -> io::Result<usize> {
        self.make_room();
        loop {
            self.stream.readable().await?;
            match self.stream.try_read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Makes room to read at least half a chunk, and for the whole frame that what is
    /// unparsed starts (growing the buffer for a frame larger than it): what is unparsed moves
    /// to the front when it must.
    fn make_room(&mut self) {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        let frame = match parse_header(&self.buf[self.start..self.end]) {
            Ok(Some((header, len))) => header + len,
            _ => 0,
        };
        if self.buf.len() - self.end >= READ_CHUNK / 2 && self.buf.len() - self.start >= frame {
            return;
        }
        self.buf.copy_within(self.start..self.end, 0);
        (self.start, self.end) = (0, self.end - self.start);
        if self.buf.len() < frame.max(self.end + READ_CHUNK / 2) {
            self.buf.resize(frame.max(self.end + READ_CHUNK), 0);
        }
    }

    /// The next whole message in the buffer; `None` until [`fill`](Self::fill) reads more.
    pub fn next_message(&mut self) -> anyhow::Result<Option<Message<'_>>> {
        let pending = &self.buf[self.start..self.end];
        let Some((header, len)) = parse_header(pending)? else { return Ok(None) };
        if pending.len() < header + len {
            return Ok(None);
        }
        let opcode = pending[0] & 0x0F;
        let from = self.start + header;
        self.start = from + len;
        Ok(Some(Message { opcode, payload: &self.buf[from..from + len] }))
    }

    /// Sends one (masked, unfragmented) client frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let frame = client_frame(opcode, payload, mask_key());
        self.stream.write_all(&frame).await
    }

    /// The next message other than a ping or pong, reading the socket as needed and answering
    /// pings: for handshakes and tests, not for the measuring loop (`client::drive`).
    pub async fn read_message(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        loop {
            if let Some(msg) = self.next_message()? {
                let (opcode, payload) = (msg.opcode, msg.payload.to_vec());
                match opcode {
                    PING => self.send(PONG, &payload).await?,
                    PONG => {}
                    _ => return Ok((opcode, payload)),
                }
            } else if self.fill().await.context("reading a message")? == 0 {
                bail!("the server closed the connection");
            }
        }
    }

    /// Reads until a text message comes (binary ones skipped), for handshakes on top of
    /// WebSocket (socket.io's).
    pub async fn read_text(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            match self.read_message().await.context("during the handshake")? {
                (TEXT, text) => return Ok(text),
                (CLOSE, _) => bail!("the server closed the connection during the handshake"),
                _ => {}
            }
        }
    }
}

/// The header length and payload length of the server frame `bytes` starts with, once its
/// header is all there; an error for what RFC 6455 forbids a server to send and for
/// fragments.
fn parse_header(bytes: &[u8]) -> anyhow::Result<Option<(usize, usize)>> {
    let [b0, b1, ..] = *bytes else { return Ok(None) };
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
    if b0 & 0x70 != 0 {
        bail!("a frame with reserved bits set (no extension was negotiated)");
    }
    if b1 & 0x80 != 0 {
        bail!("a masked frame from the server");
    }
    if !matches!(opcode, TEXT | BINARY | CLOSE | PING | PONG) {
        bail!("opcode {opcode:#x}: a continuation or an unknown frame");
    }
    if !fin {
        bail!("a fragmented message (the load client reads whole messages only)");
    }
    let (header, len) = match b1 & 0x7F {
        126 => match bytes.get(2..4) {
            Some(b) => (4, usize::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(b) => (10, u64::from_be_bytes(b.try_into().expect("8 bytes")) as usize),
            None => return Ok(None),
        },
        n => (2, usize::from(n)),
    };
    if opcode >= CLOSE && len > 125 {
        bail!("a control frame of {len} bytes (at most 125)");
    }
    if len > MAX_MESSAGE {
        bail!("a message of {len} bytes (the load client takes at most {MAX_MESSAGE})");
    }
    Ok(Some((header, len)))
}

/// A whole client frame: FIN, `opcode`, masked with `key` (RFC 6455 §5.3).
fn client_frame(opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
    frame
}

/// A masking key that changes from frame to frame (the clock's low bits: the client's frames
/// carry nothing to protect, the mask only has to be there).
fn mask_key() -> [u8; 4] {
    (tickfan_proto::unix_now_ns() as u32).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame: FIN, `opcode`, unmasked.
    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = client_frame(opcode, payload, [0; 4]);
        // Unmasked: clear the mask bit, drop the (zero) key.
        f[1] &= 0x7F;
        let key_at = match f[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        f.drain(key_at..key_at + 4);
        f
    }

    /// A connected pair: the client's side as a `RawWs` with `early` already read, and the
    /// server's socket.
    async fn pair(early: &[u8]) -> (RawWs, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (RawWs::new(client, early), server)
    }

    /// Every message the client can read before `n` have come.
    async fn read(ws: &mut RawWs, n: usize) -> Vec<(u8, Vec<u8>)> {
        let mut got = Vec::new();
        while got.len() < n {
            while let Some(m) = ws.next_message().unwrap() {
                got.push((m.opcode, m.payload.to_vec()));
            }
            if got.len() < n {
                assert!(ws.fill().await.unwrap() > 0, "the server closed early");
            }
        }
        got
    }

    #[tokio::test]
    async fn reads_frames_split_anywhere_and_larger_than_its_buffer() {
        let big = vec![b'x'; 3 * READ_CHUNK + 17];
        let mut wire = server_frame(TEXT, b"early");
        let early_len = wire.len() + 3; // the next frame's first bytes came with the handshake
        wire.extend(server_frame(BINARY, &[1, 2, 3]));
        wire.extend(server_frame(TEXT, &big));
        wire.extend(server_frame(PING, b"p"));
        wire.extend(server_frame(TEXT, &vec![b'y'; 70_000])); // 64-bit length
        let (mut ws, mut server) = pair(&wire[..early_len]).await;
        let rest = wire[early_len..].to_vec();
        let writer = tokio::spawn(async move {
            // In odd pieces, so that headers and payloads straddle reads.
            for chunk in rest.chunks(1000) {
                server.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            server
        });
        let got = read(&mut ws, 5).await;
        assert_eq!(got[0], (TEXT, b"early".to_vec()));
        assert_eq!(got[1], (BINARY, vec![1, 2, 3]));
        assert_eq!(got[2], (TEXT, big));
        assert_eq!(got[3], (PING, b"p".to_vec()));
        assert_eq!(got[4], (TEXT, vec![b'y'; 70_000]));
        drop(writer.await.unwrap());
        assert_eq!(ws.fill().await.unwrap(), 0, "the server's close reads as 0");
    }

    #[tokio::test]
    async fn sends_masked_frames_a_server_reads() {
        let (mut ws, server) = pair(&[]).await;
        let long = vec![7u8; 300];
        ws.send(PONG, b"abc").await.unwrap();
        ws.send(TEXT, &long).await.unwrap();
        let mut server =
            fastwebsockets::WebSocket::after_handshake(server, fastwebsockets::Role::Server);
        let f = server.read_frame().await.unwrap();
        assert_eq!((f.opcode, &f.payload[..]), (fastwebsockets::OpCode::Pong, &b"abc"[..]));
        let f = server.read_frame().await.unwrap();
        assert_eq!((f.opcode, f.payload.to_vec()), (fastwebsockets::OpCode::Text, long));
    }

    #[test]
    fn refuses_what_a_server_must_not_send() {
        let err = |bytes: &[u8]| parse_header(bytes).unwrap_err().to_string();
        assert!(err(&[0x81 | 0x40, 0]).contains("reserved"));
        assert!(err(&[0x81, 0x80]).contains("masked"));
        assert!(err(&[0x01, 0]).contains("fragmented"));
        assert!(err(&[0x80, 0]).contains("continuation"));
        assert!(err(&[0x89, 126, 0, 200]).contains("control frame"));
        assert!(err(&[0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0]).contains("at most"));
        // Incomplete headers wait for more.
        assert_eq!(parse_header(&[0x81]).unwrap(), None);
        assert_eq!(parse_header(&[0x81, 126, 1]).unwrap(), None);
        assert_eq!(parse_header(&[0x81, 5]).unwrap(), Some((2, 5)));
    }
}
