//! Pre-built server WebSocket frames (RFC 6455 §5.2), encoded once and shared by every
//! subscriber as a reference-counted [`Bytes`].

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use tickfan_proto::ChannelId;

use crate::close::CloseCode;

/// Largest header of an unmasked server frame: 2 bytes + 8 bytes of extended length.
pub const MAX_HEADER_LEN: usize = 10;

/// RFC 6455 §5.2 opcodes the server sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// One data message on its way to subscribers: the complete wire bytes of a text frame
/// (header + JSON payload) plus what the fan-out needs to route it without parsing it.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Channel the message belongs to.
    pub ch: ChannelId,
    /// Per-channel sequence number (also inside the JSON).
    pub seq: u64,
    /// Producer timestamp, Unix ns (also inside the JSON).
    pub ts: u64,
    /// The whole frame, ready for `write`. Cloning it is a reference-count increment.
    pub bytes: Bytes,
    /// The message's other wire forms, made by the producer only while some subscriber of the
    /// channel speaks one of them (`None` the rest of the time: a frame stays small, and
    /// cloning it stays a reference-count increment).
    pub alt: Option<Arc<Alternates>>,
}

/// A data message's wire forms besides its plain text frame.
#[derive(Debug, Default)]
pub struct Alternates {
    /// As a Server-Sent Event (`crate::sse`).
    pub sse: Option<Bytes>,
    /// The text frame compressed (permessage-deflate, `crate::deflate`), when it is smaller:
    /// `Some` when a compressing client subscribed to the channel as the frame was made;
    /// deflated by the first worker that sends it ([`Frame::deflated`]), once for all.
    pub deflated: Option<OnceLock<Option<Bytes>>>,
    /// The compact binary frame (`tickfan_proto::binary`), for trades, quotes and book updates.
    pub binary: Option<Bytes>,
}

impl Alternates {
    /// `None` when no form is wanted.
    pub fn of(forms: Alternates) -> Option<Arc<Alternates>> {
        let wanted = forms.sse.is_some() || forms.deflated.is_some() || forms.binary.is_some();
        wanted.then(|| Arc::new(forms))
    }

    /// Bytes the forms hold or may come to hold, for a frame of `plain` bytes: a compressed
    /// form not made yet counts as the plain frame, which it is smaller than.
    pub fn bytes(&self, plain: usize) -> usize {
        let made = |f: &Option<Bytes>| f.as_ref().map_or(0, Bytes::len);
        made(&self.sse) + made(&self.binary) + self.deflated.as_ref().map_or(0, |_| plain)
    }
}

impl Frame {
    /// The message as a Server-Sent Event, if the producer made it.
    pub fn sse(&self) -> Option<&Bytes> {
        self.alt.as_ref()?.sse.as_ref()
    }

    /// The compressed frame, if one was wanted when the frame was made and it is smaller:
    /// deflated here by the first caller (a worker), then shared.
    pub fn deflated(&self) -> Option<&Bytes> {
        let once = self.alt.as_ref()?.deflated.as_ref()?;
        once.get_or_init(|| crate::deflate::text_frame(payload(&self.bytes))).as_ref()
    }

    /// The binary frame, if the producer made it.
    pub fn binary(&self) -> Option<&Bytes> {
        self.alt.as_ref()?.binary.as_ref()
    }
}

/// The payload of a server frame built here (after its 2-, 4- or 10-byte header).
pub fn payload(frame: &[u8]) -> &[u8] {
    let start = match frame[1] & 0x7f {
        126 => 4,
        127 => MAX_HEADER_LEN,
        _ => 2,
    };
    &frame[start.min(frame.len())..]
}

/// Appends the header of a final, unmasked server frame carrying `payload_len` bytes.
pub fn put_header(out: &mut BytesMut, opcode: Opcode, payload_len: usize) {
    out.put_u8(0x80 | opcode as u8); // FIN + opcode
    if payload_len < 126 {
        out.put_u8(payload_len as u8);
    } else if payload_len <= usize::from(u16::MAX) {
        out.put_u8(126);
        out.put_u16(payload_len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(payload_len as u64);
    }
}

/// Length of the header [`put_header`] writes for a payload of `payload_len` bytes.
pub fn header_len(payload_len: usize) -> usize {
    match payload_len {
        0..126 => 2,
        126..=0xffff => 4,
        _ => MAX_HEADER_LEN,
    }
}

/// Builds a complete unmasked server frame in its own allocation (control replies, notices).
pub fn build(opcode: Opcode, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(MAX_HEADER_LEN + payload.len());
    put_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    out.freeze()
}

/// A close frame (RFC 6455 §5.5.1) with a status code and a reason, truncated so the payload
/// stays within the 125 bytes a control frame may carry.
pub fn close(code: CloseCode, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len().min(123));
    payload.extend_from_slice(&code.code().to_be_bytes());
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    build(Opcode::Close, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths_follow_rfc6455() {
        for (len, hdr) in [(0usize, 2usize), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let f = build(Opcode::Text, &vec![b'x'; len]);
            assert_eq!(f.len(), hdr + len, "payload {len}");
            assert_eq!(f[0], 0x81);
            match hdr {
                2 => assert_eq!(usize::from(f[1]), len),
                4 => assert_eq!((f[1], usize::from(u16::from_be_bytes([f[2], f[3]]))), (126, len)),
                _ => assert_eq!(f[1], 127),
            }
        }
    }

    #[test]
    fn close_reason_is_truncated_on_a_char_boundary() {
        let f = close(CloseCode::Policy, &"é".repeat(100));
        assert_eq!(f[0], 0x88);
        let len = usize::from(f[1]);
        assert!(len <= 125);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 1008);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}
