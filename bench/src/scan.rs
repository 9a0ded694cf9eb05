//! Allocation-free extraction of the few fields the load client needs from a message, by
//! scanning bytes instead of parsing JSON: the client must not be the bottleneck it measures.
//! Relies on the fixed field order of tickfan's encoder (`docs/protocol.md`): data messages
//! start with `{"ch":"…","seq":N,"ts":N`, notices with `{"op":"…"`.

/// What one message is, as far as the load client cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scanned<'a> {
    /// A data message of channel `ch`; `ts` as written (microseconds from tickfan,
    /// nanoseconds from baselines that forward the feed's lines: `ns_from_wire` tells).
    Data { ch: &'a [u8], seq: u64, ts: u64 },
    /// A book snapshot of `ch` as of `seq`: the channel's stream (re)starts there.
    Snapshot { ch: &'a [u8], seq: u64 },
    /// A gap notice: seqs `from..=to` of `ch` will not come.
    Gap { ch: &'a [u8], from: u64, to: u64 },
    /// Any other reply (`subscribed`, `error`, …).
    Other,
}

/// Scans one text message.
pub fn scan(msg: &[u8]) -> Scanned<'_> {
    if let Some(rest) = msg.strip_prefix(b"{\"ch\":\"") {
        let Some(end) = rest.iter().position(|&b| b == b'"') else { return Scanned::Other };
        let ch = &rest[..end];
        let rest = &rest[end..];
        // Fast path: tickfan's encoder writes `","seq":N,"ts":N` right after the channel.
        if let Some((seq, after)) = number_at(rest, b"\",\"seq\":") {
            if let Some((ts, after)) = number_at(after, b",\"ts\":") {
                if after.starts_with(b",\"type\":\"snapshot\"") {
                    return Scanned::Snapshot { ch, seq };
                }
                return Scanned::Data { ch, seq, ts };
            }
        }
        let seq = number_after(rest, b"\"seq\":");
        if string_after(rest, b"\"type\":\"") == Some(&b"snapshot"[..]) {
            return seq.map_or(Scanned::Other, |seq| Scanned::Snapshot { ch, seq });
        }
        match (seq, number_after(rest, b"\"ts\":")) {
            (Some(seq), Some(ts)) => Scanned::Data { ch, seq, ts },
            _ => Scanned::Other,
        }
    } else if msg.starts_with(b"{\"op\":\"gap\"") {
        let Some(ch) = string_after(msg, b"\"ch\":\"") else { return Scanned::Other };
        match (number_after(msg, b"\"from\":"), number_after(msg, b"\"to\":")) {
            (Some(from), Some(to)) => Scanned::Gap { ch, from, to },
            _ => Scanned::Other,
        }
    } else {
        Scanned::Other
    }
}

/// The number right after `prefix` at the start of `hay`, and the rest of `hay` after it.
fn number_at<'a>(hay: &'a [u8], prefix: &[u8]) -> Option<(u64, &'a [u8])> {
    let digits = hay.strip_prefix(prefix)?;
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    let n = parse_digits(&digits[..len])?;
    Some((n, &digits[len..]))
}

fn parse_digits(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle).map(|i| i + needle.len())
}

fn number_after(hay: &[u8], key: &[u8]) -> Option<u64> {
    let start = find(hay, key)?;
    let len = hay[start..].iter().take_while(|b| b.is_ascii_digit()).count();
    parse_digits(&hay[start..start + len])
}

fn string_after<'a>(hay: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let start = find(hay, key)?;
    let len = hay[start..].iter().position(|&b| b == b'"')?;
    Some(&hay[start..start + len])
}

/// Channel names by binary `type` (1 trades, 2 quotes, 3 book) and symbol index, for
/// [`scan_binary`]: a binary message names its channel by numbers, the sequence checks by name.
#[derive(Debug, Default)]
pub struct BinaryNames(pub [Vec<Vec<u8>>; 3]);

impl BinaryNames {
    /// The names of `symbols` (the `symbols` reply's list, in its order).
    pub fn new(symbols: &[String]) -> BinaryNames {
        let of = |kind: &str| symbols.iter().map(|s| format!("{kind}.{s}").into_bytes()).collect();
        BinaryNames([of("trades"), of("quotes"), of("book")])
    }
}

/// Scans one binary data message (`/ws?format=binary`): its channel (named from `names`),
/// `seq` and `ts` (µs), from its head (`tickfan_proto::binary::head`), the body left alone.
pub fn scan_binary<'a>(msg: &[u8], names: &'a BinaryNames) -> Scanned<'a> {
    let Ok(head) = tickfan_proto::binary::head(msg) else { return Scanned::Other };
    let by_kind = names.0.get(usize::from(head.kind).wrapping_sub(1));
    match by_kind.and_then(|n| n.get(head.sym as usize)) {
        Some(ch) => Scanned::Data { ch, seq: head.seq, ts: head.ts_us },
        None => Scanned::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_data_gap_and_other() {
        let m = br#"{"ch":"trades.BTC-USD","seq":18235,"ts":1764028800123456789,"id":991,"px":"64123.50"}"#;
        assert_eq!(
            scan(m),
            Scanned::Data { ch: b"trades.BTC-USD", seq: 18235, ts: 1764028800123456789 }
        );
        let g = br#"{"op":"gap","ch":"book.ETH-USD","from":5,"to":9,"reason":"slow_consumer"}"#;
        assert_eq!(scan(g), Scanned::Gap { ch: b"book.ETH-USD", from: 5, to: 9 });
        assert_eq!(scan(br#"{"op":"subscribed","channels":[]}"#), Scanned::Other);
        let snap =
            br#"{"ch":"book.X","seq":7,"ts":5,"type":"snapshot","bids":[],"asks":[],"crc":0}"#;
        assert_eq!(scan(snap), Scanned::Snapshot { ch: b"book.X", seq: 7 });
        let reordered = br#"{"type":"snapshot","ch":"book.X","seq":7,"ts":5}"#;
        assert_eq!(scan(reordered), Scanned::Other, "not a data message: no leading ch");
        let slow = br#"{"ch":"book.X","ts":5,"seq":7,"type":"snapshot"}"#;
        assert_eq!(scan(slow), Scanned::Snapshot { ch: b"book.X", seq: 7 });
        assert_eq!(scan(br#"{"ch":"x","seq":"nope"}"#), Scanned::Other);
        assert_eq!(scan(b""), Scanned::Other);
        // Another field order (a baseline's JSON.stringify may differ) takes the slow path.
        let m = br#"{"ch":"quotes.X","ts":5,"seq":7}"#;
        assert_eq!(scan(m), Scanned::Data { ch: b"quotes.X", seq: 7, ts: 5 });
        // An overflowing number is not a number.
        assert_eq!(scan(br#"{"ch":"x","seq":99999999999999999999,"ts":1}"#), Scanned::Other);
    }

    #[test]
    fn binary_messages_scan_to_their_channel_seq_and_ts() {
        let names = BinaryNames::new(&["BTC-USD".to_owned(), "ETH-USD".to_owned()]);
        let tick = tickfan_proto::Tick {
            sym: 1,
            seq: 77,
            ts: 5_000,
            et: 0,
            body: tickfan_proto::TickBody::Quote(tickfan_proto::Quote {
                bid: 1,
                bsz: 1,
                ask: 2,
                asz: 1,
            }),
        };
        let mut msg = Vec::new();
        tickfan_proto::binary::write_tick_binary(&mut msg, &tick, None);
        assert_eq!(
            scan_binary(&msg, &names),
            Scanned::Data { ch: b"quotes.ETH-USD", seq: 77, ts: 5 }
        );
        msg[2] = 9; // no symbol 9
        assert_eq!(scan_binary(&msg, &names), Scanned::Other);
        assert_eq!(scan_binary(&msg[..10], &names), Scanned::Other);
    }
}
