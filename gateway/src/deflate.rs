//! permessage-deflate (RFC 7692), compressed once per message for every client.
//!
//! A client that offers the extension gets it with `server_no_context_takeover` and
//! `client_no_context_takeover`: each message is deflated on its own, so the same compressed
//! frame is valid for every connection that negotiated it, and neither side keeps a 32 KiB
//! window per connection. A data message is deflated once, while some such client
//! subscribes to its channel (`Market::deflate` marks the frame as wanted compressed; the first
//! worker that sends it deflates it, `Frame::deflated`), and every one of them gets the same
//! bytes, as every plain client gets the plain ones. Frames without a compressed form (replies,
//! notices, snapshots built per connection, a message that would not shrink) go out plain,
//! which the extension allows (RSV1 clear).
//!
//! Clients may compress what they send too; each message is inflated on its own, bounded by
//! `--max-frame-bytes`.

use std::cell::RefCell;

use bytes::{Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::close::CloseCode;
use crate::frame::Opcode;
use crate::inbound::Violation;

/// The `Sec-WebSocket-Extensions` answer to an accepted offer.
pub const RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// What the sync flush ends every deflated message with; RFC 7692 §7.2.1 drops it on the wire.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Whether the handshake's `Sec-WebSocket-Extensions` values hold a permessage-deflate offer
/// this server can take: any parameters but a server window under 15 bits (this server
/// deflates with a 32 KiB window; an offer insisting on less is declined).
pub fn offered<'a>(headers: impl IntoIterator<Item = &'a str>) -> bool {
    headers.into_iter().flat_map(|h| h.split(',')).any(|offer| {
        let mut params = offer.split(';').map(str::trim);
        params.next() == Some("permessage-deflate") && params.all(acceptable)
    })
}

fn acceptable(param: &str) -> bool {
    let (name, value) = match param.split_once('=') {
        Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
        None => (param, None),
    };
    match name {
        "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
        // The client's own window: whatever it is, each of its messages is inflated alone.
        "client_max_window_bits" => value.is_none_or(|v| matches!(v.parse(), Ok(8..=15u8))),
        "server_max_window_bits" => value == Some("15"),
        _ => false,
    }
}

thread_local! {
    /// This thread's compressor (reset for every message) and its output buffer.
    static DEFLATER: RefCell<(Compress, Vec<u8>)> =
        RefCell::new((Compress::new(Compression::fast(), false), Vec::new()));
}

/// The final text frame of `json` deflated on its own (RSV1 set), or `None` when deflating
/// does not make it smaller (then the plain frame is sent).
pub fn text_frame(json: &[u8]) -> Option<Bytes> {
    DEFLATER.with_borrow_mut(|(deflater, out)| {
        deflater.reset();
        out.clear();
        out.reserve(json.len() + 64);
        match deflater.compress_vec(json, out, FlushCompress::Sync) {
            Ok(Status::Ok | Status::BufError) => {}
            _ => return None,
        }
        let whole = deflater.total_in() == json.len() as u64 && out.ends_with(&TAIL);
        let body = &out[..out.len().checked_sub(TAIL.len())?];
        if !whole || body.len() >= json.len() {
            return None;
        }
        let mut frame = BytesMut::with_capacity(crate::frame::header_len(body.len()) + body.len());
        crate::frame::put_header(&mut frame, Opcode::Text, body.len());
        frame[0] |= 0x40; // RSV1: compressed
        frame.extend_from_slice(body);
        Some(frame.freeze())
    })
}

/// A compressed client message (the payloads of its frames, joined), inflated on its own; more
/// than `max` bytes inflated ends the connection (1009), as an uncompressed one would.
pub fn inflate(payload: &[u8], max: usize) -> Result<Vec<u8>, Violation> {
    let mut input = Vec::with_capacity(payload.len() + TAIL.len());
    input.extend_from_slice(payload);
    input.extend_from_slice(&TAIL);
    let mut inflater = Decompress::new(false);
    let mut out = Vec::with_capacity((payload.len() * 4).max(64).min(max.saturating_add(1)));
    let bad = || Violation {
        code: CloseCode::InvalidData,
        reason: "a compressed message does not inflate (permessage-deflate)".to_owned(),
    };
    loop {
        let consumed = inflater.total_in() as usize;
        let before = (consumed, out.len());
        inflater
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|_| bad())?;
        if out.len() > max {
            return Err(Violation::too_big(max));
        }
        if inflater.total_in() as usize == input.len() && out.len() < out.capacity() {
            return Ok(out);
        }
        if out.len() == out.capacity() {
            out.reserve((out.capacity()).min(max + 1 - out.len()).max(64));
        } else if (inflater.total_in() as usize, out.len()) == before {
            return Err(bad()); // no progress: truncated or malformed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_taken_unless_they_ask_for_a_smaller_server_window() {
        assert!(offered(["permessage-deflate"]));
        assert!(offered(["permessage-deflate; client_max_window_bits"]));
        assert!(offered(["x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=10"]));
        assert!(offered([
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=15"
        ]));
        assert!(offered(["permessage-deflate; server_max_window_bits=10", "permessage-deflate"]));
        assert!(!offered(["permessage-deflate; server_max_window_bits=10"]));
        assert!(!offered(["permessage-deflate; unknown_param"]));
        assert!(!offered(["x-webkit-deflate-frame"]));
        assert!(!offered([]));
    }

    #[test]
    fn a_message_deflates_alone_and_inflates_back() {
        let json = br#"{"ch":"book.BTC-USD","seq":9,"ts":1764028800123456,"type":"update","bids":[["64123.00","1.2000"],["64122.50","0.5000"],["64122.00","0.5000"]],"asks":[["64123.50","0.4000"]],"crc":42}"#;
        let frame = text_frame(json).expect("a book update shrinks");
        assert_eq!(frame[0], 0xC1, "FIN, RSV1, text");
        let (len, body) = match frame[1] {
            126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), &frame[4..]),
            n => (usize::from(n), &frame[2..]),
        };
        assert!(len < json.len() && len == body.len(), "{len} of {}", json.len());
        // The same bytes every time: nothing carries over from one message to the next.
        assert_eq!(text_frame(json), Some(frame.clone()));
        assert_eq!(inflate(body, 1 << 16).unwrap(), json);
        // What a peer's inflater (zlib's, in flate2's reader) makes of it.
        let wire = [body, &TAIL[..]].concat();
        let mut peer = flate2::read::DeflateDecoder::new(wire.as_slice());
        let mut text = Vec::new();
        let _ = std::io::Read::read_to_end(&mut peer, &mut text);
        assert_eq!(text, json);
        assert_eq!(text_frame(b"{}"), None, "nothing to gain: sent plain");
    }

    #[test]
    fn inflating_is_bounded_and_refuses_garbage() {
        let big = vec![b'a'; 100_000];
        let frame = text_frame(&big).unwrap();
        let body = &frame[4..]; // 126-form header: the payload is under 64 KiB
        assert!(body.len() < 1000);
        assert_eq!(inflate(body, 100_000).unwrap().len(), 100_000);
        assert_eq!(inflate(body, 99_999).unwrap_err().code, CloseCode::TooBig);
        assert_eq!(inflate(b"\xff\xff\xff\xff", 1000).unwrap_err().code, CloseCode::InvalidData);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Whatever a client sends as compressed, inflating ends in a message or a close code,
        /// never more than `max` bytes, never a panic.
        #[test]
        fn any_input_inflates_or_is_refused(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            max in 0usize..5000,
        ) {
            match inflate(&data, max) {
                Ok(text) => proptest::prop_assert!(text.len() <= max),
                Err(v) => proptest::prop_assert!(
                    matches!(v.code, CloseCode::InvalidData | CloseCode::TooBig)
                ),
            }
        }

        /// Every message deflated here inflates back to itself (when it shrinks at all).
        #[test]
        fn deflated_messages_inflate_back(text in "[ -~]{0,600}") {
            if let Some(frame) = text_frame(text.as_bytes()) {
                let body = crate::frame::payload(&frame);
                proptest::prop_assert_eq!(inflate(body, 1000).unwrap(), text.as_bytes());
            }
        }
    }
}
