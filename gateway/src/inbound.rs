//! Client frames (RFC 6455 §5), decoded incrementally from whatever the socket had to give.
//!
//! A connection reads only when its socket is readable, into a buffer on the stack, and hands
//! the bytes to its [`Decoder`]. Complete frames are unmasked in place and handed on; only the
//! bytes of an unfinished frame are copied into the decoder's own buffer, which is freed as soon
//! as that frame completes. An idle connection therefore holds no read buffer at all: with
//! thousands of connections that mostly send nothing, this is most of what a connection would
//! otherwise cost (a reader such as fastwebsockets' keeps 8 KiB per connection for its life).
//!
//! The checks are fastwebsockets' own (reserved bits, opcodes, fragmented or oversized control
//! frames, close codes and close reasons), plus the mask bit a server must insist on (§5.1).
//! What the frames *mean* (requests, fragments, pongs, closes) is `conn`'s business.

use crate::close::CloseCode;

/// RFC 6455 §5.2 opcodes a client may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpIn {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpIn {
    fn from_bits(bits: u8) -> Option<OpIn> {
        Some(match bits {
            0x0 => OpIn::Continuation,
            0x1 => OpIn::Text,
            0x2 => OpIn::Binary,
            0x8 => OpIn::Close,
            0x9 => OpIn::Ping,
            0xA => OpIn::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        matches!(self, OpIn::Close | OpIn::Ping | OpIn::Pong)
    }
}

/// One complete, unmasked client frame. A close frame's payload is checked already (a valid
/// code and a UTF-8 reason, or empty).
#[derive(Debug)]
pub struct FrameIn<'a> {
    pub fin: bool,
    pub op: OpIn,
    /// RSV1 set: the first frame of a compressed message (permessage-deflate negotiated).
    pub compressed: bool,
    pub payload: &'a mut [u8],
}

/// Why a client's input ends its connection: the close code and reason to send (RFC 6455 §7.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub code: CloseCode,
    pub reason: String,
}

impl Violation {
    pub fn protocol(reason: &str) -> Violation {
        Violation { code: CloseCode::Protocol, reason: reason.to_owned() }
    }

    pub fn too_big(max: usize) -> Violation {
        Violation { code: CloseCode::TooBig, reason: format!("message larger than {max} bytes") }
    }

    pub fn bad_utf8() -> Violation {
        Violation {
            code: CloseCode::InvalidData,
            reason: "text message is not valid UTF-8".to_owned(),
        }
    }
}

/// Incremental decoder of one connection's client frames.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The start of an unfinished frame, when the last read ended inside one. Empty (and
    /// without an allocation) the rest of the time.
    held: Vec<u8>,
}

/// A parsed frame header.
struct Header {
    fin: bool,
    op: OpIn,
    compressed: bool,
    mask: [u8; 4],
    /// Header length in bytes (2 to 14).
    len: usize,
    payload_len: usize,
}

impl Decoder {
    /// Bytes held for an unfinished frame (its allocation).
    pub fn held_bytes(&self) -> usize {
        self.held.capacity()
    }

    /// Decodes the frames in `fresh` (just read; the decoder may unmask it in place), preceded
    /// by any unfinished frame from before, and calls `each` for every complete frame in order.
    /// `each` returns `false` to stop (the connection is ending); then the rest is dropped.
    /// A frame whose payload would exceed `max_payload` (`--max-frame-bytes`; given per call,
    /// not kept per connection) is refused from its header. `deflate`: permessage-deflate was
    /// negotiated, so RSV1 may mark a message's first frame as compressed.
    pub fn feed(
        &mut self,
        fresh: &mut [u8],
        max_payload: usize,
        deflate: bool,
        mut each: impl FnMut(FrameIn<'_>) -> bool,
    ) -> Result<(), Violation> {
        let limits = Limits { max_payload, deflate };
        if self.held.is_empty() {
            let used = frames(fresh, limits, &mut each)?;
            if used < fresh.len() {
                self.held.extend_from_slice(&fresh[used..]);
            }
            return Ok(());
        }
        self.held.extend_from_slice(fresh);
        let mut held = std::mem::take(&mut self.held);
        let used = frames(&mut held, limits, &mut each)?;
        if used < held.len() {
            held.drain(..used);
            self.held = held; // keep the allocation: the frame is still coming
        }
        // else: `held` is dropped with its allocation.
        Ok(())
    }
}

/// What a connection's frames may be: at most this long, compressed or not.
#[derive(Clone, Copy)]
struct Limits {
    max_payload: usize,
    deflate: bool,
}

/// Decodes complete frames from the front of `buf`; returns how many bytes they took.
fn frames(
    buf: &mut [u8],
    limits: Limits,
    each: &mut impl FnMut(FrameIn<'_>) -> bool,
) -> Result<usize, Violation> {
    let mut at = 0;
    while let Some(h) = header(&buf[at..], limits)? {
        let end = at + h.len + h.payload_len;
        if end > buf.len() {
            break;
        }
        let payload = &mut buf[at + h.len..end];
        fastwebsockets::unmask(payload, h.mask);
        if h.op == OpIn::Close {
            check_close(payload)?;
        }
        at = end;
        if !each(FrameIn { fin: h.fin, op: h.op, compressed: h.compressed, payload }) {
            return Ok(buf.len());
        }
    }
    Ok(at)
}

/// Parses the header at the front of `buf`, if it is all there (RFC 6455 §5.2).
fn header(buf: &[u8], limits: Limits) -> Result<Option<Header>, Violation> {
    let max_payload = limits.max_payload;
    let [b0, b1, ..] = *buf else { return Ok(None) };
    let op = OpIn::from_bits(b0 & 0x0F).ok_or_else(|| Violation::protocol("unknown opcode"))?;
    let compressed = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (compressed && !limits.deflate) {
        return Err(Violation::protocol(
            "reserved bits are not zero (no extension was negotiated)",
        ));
    }
    if compressed && !matches!(op, OpIn::Text | OpIn::Binary) {
        return Err(Violation::protocol(
            "RSV1 (compressed) is set only on the first frame of a data message",
        ));
    }
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(Violation::protocol("client frames must be masked (RFC 6455 section 5.1)"));
    }
    let (extra, short) = match b1 & 0x7F {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(usize::from(n))),
    };
    let len = 2 + extra + 4;
    if op.is_control() {
        if !fin {
            return Err(Violation::protocol("control frames must not be fragmented"));
        }
        if short.is_none_or(|n| n > 125) {
            return Err(Violation::protocol("control frames carry at most 125 bytes"));
        }
    }
    if buf.len() < 2 + extra {
        return Ok(None);
    }
    let payload_len = match short {
        Some(n) => n,
        None if extra == 2 => usize::from(u16::from_be_bytes([buf[2], buf[3]])),
        None => {
            let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            usize::try_from(n).unwrap_or(usize::MAX)
        }
    };
    if payload_len > max_payload {
        return Err(Violation::too_big(max_payload));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mask = buf[len - 4..len].try_into().expect("4 bytes");
    Ok(Some(Header { fin, op, compressed, mask, len, payload_len }))
}

/// A close frame's body (RFC 6455 §5.5.1, §7.4): empty, or a code that may be sent followed
/// by a UTF-8 reason.
fn check_close(payload: &[u8]) -> Result<(), Violation> {
    match payload {
        [] => Ok(()),
        [_] => Err(Violation::protocol("a close frame's body starts with a 2-byte code")),
        [hi, lo, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(Violation::bad_utf8());
            }
            let code = u16::from_be_bytes([*hi, *lo]);
            if !fastwebsockets::CloseCode::from(code).is_allowed() {
                return Err(Violation::protocol(&format!("close code {code} may not be sent")));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let key = [0x11, 0x22, 0x33, 0x44];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    fn decode_all(d: &mut Decoder, wire: &[u8]) -> Result<Vec<(bool, OpIn, Vec<u8>)>, Violation> {
        decode_with(d, 1024, wire)
    }

    fn decode_with(
        d: &mut Decoder,
        max: usize,
        wire: &[u8],
    ) -> Result<Vec<(bool, OpIn, Vec<u8>)>, Violation> {
        let mut got = Vec::new();
        let mut buf = wire.to_vec();
        d.feed(&mut buf, max, false, |f| {
            got.push((f.fin, f.op, f.payload.to_vec()));
            true
        })?;
        Ok(got)
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_the_buffer_is_freed() {
        let mut wire = frame(0x81, br#"{"op":"ping"}"#);
        wire.extend(frame(0x89, b"hi"));
        wire.extend(frame(0x81, &[b'x'; 300]));
        for cut in 0..wire.len() {
            let mut d = Decoder::default();
            let mut got = decode_all(&mut d, &wire[..cut]).unwrap();
            got.extend(decode_all(&mut d, &wire[cut..]).unwrap());
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(got[0], (true, OpIn::Text, br#"{"op":"ping"}"#.to_vec()));
            assert_eq!(got[1], (true, OpIn::Ping, b"hi".to_vec()));
            assert_eq!(got[2].2.len(), 300);
            assert!(d.held.is_empty());
            assert_eq!(d.held.capacity(), 0, "cut at {cut}: the buffer outlived the frame");
        }
    }

    #[test]
    fn bad_frames_get_their_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (frame(0xC1, b"x"), 1002),                // RSV1
            (frame(0x83, b"x"), 1002),                // reserved opcode
            (vec![0x81, 0x01, b'x'], 1002),           // unmasked
            (frame(0x09, b"x"), 1002),                // fragmented ping
            (frame(0x89, &[0; 126]), 1002),           // control frame too long
            (frame(0x81, &[b' '; 2000]), 1009),       // over the limit
            (frame(0x88, &[3]), 1002),                // 1-byte close body
            (frame(0x88, &[0x03, 0xED]), 1002),       // close code 1005
            (frame(0x88, &[0x03, 0xE8, 0xFF]), 1007), // close reason not UTF-8
        ];
        for (wire, code) in cases {
            let got = decode_all(&mut Decoder::default(), &wire);
            assert_eq!(got.map_err(|v| v.code.code()), Err(code), "{wire:x?}");
        }
    }

    #[test]
    fn with_permessage_deflate_rsv1_marks_a_message_first_frame_only() {
        let decode = |wire: Vec<u8>| {
            let (mut wire, mut got) = (wire, Vec::new());
            Decoder::default()
                .feed(&mut wire, 1024, true, |f| {
                    got.push((f.op, f.compressed));
                    true
                })
                .map(|()| got)
                .map_err(|v| v.code.code())
        };
        assert_eq!(decode(frame(0xC1, b"x")), Ok(vec![(OpIn::Text, true)]));
        assert_eq!(decode(frame(0x41, b"x")), Ok(vec![(OpIn::Text, true)]), "fragmented");
        assert_eq!(decode(frame(0x81, b"x")), Ok(vec![(OpIn::Text, false)]), "plain");
        assert_eq!(decode(frame(0xC0, b"x")), Err(1002), "RSV1 on a continuation");
        assert_eq!(decode(frame(0xC9, b"x")), Err(1002), "RSV1 on a ping");
        assert_eq!(decode(frame(0xA1, b"x")), Err(1002), "RSV2");
    }

    #[test]
    fn a_too_large_frame_is_refused_from_its_header_alone() {
        let wire = frame(0x81, &[b' '; 70_000]);
        let got = decode_with(&mut Decoder::default(), 65_536, &wire[..10]);
        assert_eq!(got.map_err(|v| v.code), Err(CloseCode::TooBig));
    }

    #[test]
    fn stopping_drops_the_rest() {
        let mut wire = frame(0x88, &[0x03, 0xE8]);
        wire.extend(frame(0x81, b"after the close"));
        let mut d = Decoder::default();
        let mut n = 0;
        d.feed(&mut wire, 1024, false, |_| {
            n += 1;
            false
        })
        .unwrap();
        assert_eq!(n, 1);
        assert!(d.held.is_empty());
    }
}
