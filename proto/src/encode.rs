//! JSON encoding of server → client data messages (`docs/protocol.md`, "Data messages").
//!
//! Hand-written rather than serde: these run once per tick on the producer's hot path, append
//! into a caller-owned buffer and never allocate once the buffer has grown. Field order is fixed
//! (`ch`, `seq`, `ts`, `et` when known, then the body) so that equal ticks encode to equal
//! bytes. The same layout serves the feed format (`feed-sim`'s lines, timestamps in
//! nanoseconds) and clients (timestamps in microseconds, book checksums).

use crate::book::L2Book;
use crate::channel::Kind;
use crate::decimal::write_decimal;
use crate::tick::{Level, Symbol, Tick, TickBody};

/// Appends the feed line of `tick` (published on a channel of symbol `sym`) to `buf`: the
/// feed format (`docs/feed-format.md`), timestamps in nanoseconds, a book update without
/// `crc`. What `feed-sim` writes.
pub fn write_tick_json(buf: &mut Vec<u8>, tick: &Tick, sym: &Symbol) {
    write_tick(buf, tick, sym, None, Clock::Nanos);
}

/// Appends the data message of `tick` as clients get it (`docs/protocol.md`, "Data
/// messages"): timestamps in microseconds, and `"crc":book_crc` last in a book update when
/// given (the checksum of the book after the update, [`L2Book::checksum`]).
pub fn write_tick_message(buf: &mut Vec<u8>, tick: &Tick, sym: &Symbol, book_crc: Option<u32>) {
    write_tick(buf, tick, sym, book_crc, Clock::Micros);
}

/// The unit timestamps are written in: nanoseconds in the feed, microseconds to clients
/// (protocol v2: JavaScript reads integers exactly only up to 2^53).
#[derive(Clone, Copy)]
enum Clock {
    Nanos,
    Micros,
}

impl Clock {
    fn of(self, ns: u64) -> u64 {
        match self {
            Clock::Nanos => ns,
            Clock::Micros => crate::micros(ns),
        }
    }
}

fn write_tick(buf: &mut Vec<u8>, tick: &Tick, sym: &Symbol, book_crc: Option<u32>, clock: Clock) {
    let mut n = itoa::Buffer::new();
    write_head(buf, tick.body.kind().as_str(), &sym.name, tick.seq, clock.of(tick.ts));
    if tick.et != 0 {
        buf.extend_from_slice(b",\"et\":");
        buf.extend_from_slice(n.format(clock.of(tick.et)).as_bytes());
    }
    let (ps, qs) = (sym.px_scale, sym.qty_scale);
    match &tick.body {
        TickBody::Trade(t) => {
            buf.extend_from_slice(b",\"id\":");
            buf.extend_from_slice(n.format(t.id).as_bytes());
            decimal_field(buf, b"px", t.px, ps);
            decimal_field(buf, b"qty", t.qty, qs);
            buf.extend_from_slice(b",\"side\":\"");
            buf.extend_from_slice(t.side.as_str().as_bytes());
            buf.push(b'"');
        }
        TickBody::Quote(q) => {
            decimal_field(buf, b"bid", q.bid, ps);
            decimal_field(buf, b"bsz", q.bsz, qs);
            decimal_field(buf, b"ask", q.ask, ps);
            decimal_field(buf, b"asz", q.asz, qs);
        }
        TickBody::Book(b) => {
            write_book_body(buf, "update", &b.bids, &b.asks, sym, book_crc);
            return;
        }
        TickBody::Status(s) => {
            buf.extend_from_slice(b",\"status\":\"");
            buf.extend_from_slice(s.as_str().as_bytes());
            buf.push(b'"');
        }
    }
    buf.push(b'}');
}

/// Appends the feed line of a book `snapshot` of `sym` (nanoseconds, no `crc`): every level
/// of `book`, as of `seq` (the seq of the last update it includes) and that update's `ts`.
pub fn write_book_snapshot_json(buf: &mut Vec<u8>, book: &L2Book, sym: &Symbol, seq: u64, ts: u64) {
    write_head(buf, Kind::Book.as_str(), &sym.name, seq, ts);
    write_book_body(buf, "snapshot", &book.bids, &book.asks, sym, None);
}

/// Appends the message of a book `snapshot` of channel `book.<sym>` as clients get it: every
/// level of `book`, as of `seq` (the seq of the last update applied, 0 before any) and that
/// update's `ts` (nanoseconds, written in microseconds), with the book's `crc`.
pub fn write_book_snapshot_message(
    buf: &mut Vec<u8>,
    book: &L2Book,
    sym: &Symbol,
    seq: u64,
    ts: u64,
) {
    write_head(buf, Kind::Book.as_str(), &sym.name, seq, crate::micros(ts));
    let crc = book.checksum(sym.px_scale, sym.qty_scale);
    write_book_body(buf, "snapshot", &book.bids, &book.asks, sym, Some(crc));
}

/// A book message to clients (`snapshot` or `update` of `bids` and `asks`, with `crc`) on
/// channel `channel` (a form of the book: `book.BTC-USD@10`); `ts` in nanoseconds.
#[allow(clippy::too_many_arguments)]
pub fn write_book_json_on(
    buf: &mut Vec<u8>,
    channel: &str,
    kind: &str,
    bids: &[Level],
    asks: &[Level],
    sym: &Symbol,
    seq: u64,
    ts: u64,
    crc: u32,
) {
    write_message_head(buf, channel, seq, ts);
    write_book_body(buf, kind, bids, asks, sym, Some(crc));
}

/// `{"ch":"<channel>","seq":N,"ts":N`: the head of a data message to clients, for messages
/// built elsewhere (the gateway's derived channels); `ts` in nanoseconds, written in
/// microseconds.
pub fn write_message_head(buf: &mut Vec<u8>, channel: &str, seq: u64, ts: u64) {
    buf.extend_from_slice(b"{\"ch\":\"");
    buf.extend_from_slice(channel.as_bytes());
    write_seq_ts(buf, seq, crate::micros(ts));
}

/// `{"ch":"<kind>.<sym>","seq":N,"ts":N`: the fixed head of every data message, `ts` as
/// written.
fn write_head(buf: &mut Vec<u8>, kind: &str, sym: &str, seq: u64, ts: u64) {
    buf.extend_from_slice(b"{\"ch\":\"");
    buf.extend_from_slice(kind.as_bytes());
    buf.push(b'.');
    buf.extend_from_slice(sym.as_bytes());
    write_seq_ts(buf, seq, ts);
}

/// `","seq":N,"ts":N`: the end of a head, after the channel's name.
#[inline]
fn write_seq_ts(buf: &mut Vec<u8>, seq: u64, ts: u64) {
    let mut n = itoa::Buffer::new();
    buf.extend_from_slice(b"\",\"seq\":");
    buf.extend_from_slice(n.format(seq).as_bytes());
    buf.extend_from_slice(b",\"ts\":");
    buf.extend_from_slice(n.format(ts).as_bytes());
}

/// `,"type":…,"bids":[…],"asks":[…]` and, when given, `,"crc":N`, then the closing brace.
fn write_book_body(
    buf: &mut Vec<u8>,
    kind: &str,
    bids: &[Level],
    asks: &[Level],
    sym: &Symbol,
    crc: Option<u32>,
) {
    let (ps, qs) = (sym.px_scale, sym.qty_scale);
    buf.extend_from_slice(b",\"type\":\"");
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(b"\",\"bids\":");
    write_levels(buf, bids, ps, qs);
    buf.extend_from_slice(b",\"asks\":");
    write_levels(buf, asks, ps, qs);
    if let Some(crc) = crc {
        buf.extend_from_slice(b",\"crc\":");
        buf.extend_from_slice(itoa::Buffer::new().format(crc).as_bytes());
    }
    buf.push(b'}');
}

/// Appends a `gap` notice: seqs `from..=to` of channel `ch` will never be delivered on this
/// connection (the client may resume from `from - 1` on a new one while the window holds it).
pub fn write_gap_json(buf: &mut Vec<u8>, ch: &str, from: u64, to: u64, reason: &str) {
    write_gap_json_with(|part| buf.extend_from_slice(part), ch, from, to, reason);
}

/// [`write_gap_json`] into any byte sink: `put` is called with the notice's pieces, in order.
/// For buffers that are not a `Vec<u8>` (the gateway writes notices straight into its frames).
pub fn write_gap_json_with(mut put: impl FnMut(&[u8]), ch: &str, from: u64, to: u64, reason: &str) {
    let mut n = itoa::Buffer::new();
    put(GAP_PARTS[0]);
    put(ch.as_bytes());
    put(GAP_PARTS[1]);
    put(n.format(from).as_bytes());
    put(GAP_PARTS[2]);
    put(n.format(to).as_bytes());
    put(GAP_PARTS[3]);
    put(reason.as_bytes());
    put(GAP_PARTS[4]);
}

/// The fixed text of a gap notice, around its channel, seqs and reason.
const GAP_PARTS: [&[u8]; 5] =
    [b"{\"op\":\"gap\",\"ch\":\"", b"\",\"from\":", b",\"to\":", b",\"reason\":\"", b"\"}"];

/// Length in bytes of what [`write_gap_json`] writes for these arguments, computed without
/// writing it (to know whether a notice fits in a queue before building it).
pub fn gap_json_len(ch: &str, from: u64, to: u64, reason: &str) -> usize {
    GAP_PARTS.iter().map(|p| p.len()).sum::<usize>()
        + ch.len()
        + decimal_digits(from)
        + decimal_digits(to)
        + reason.len()
}

/// Number of decimal digits of `n` (1 for 0).
fn decimal_digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

fn decimal_field(buf: &mut Vec<u8>, name: &[u8], mantissa: i64, scale: u8) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(name);
    buf.extend_from_slice(b"\":\"");
    write_decimal(buf, mantissa, scale);
    buf.push(b'"');
}

fn write_levels(buf: &mut Vec<u8>, levels: &[Level], ps: u8, qs: u8) {
    buf.push(b'[');
    for (i, l) in levels.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(b"[\"");
        write_decimal(buf, l.px, ps);
        buf.extend_from_slice(b"\",\"");
        write_decimal(buf, l.qty, qs);
        buf.extend_from_slice(b"\"]");
    }
    buf.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tick::{BookDelta, Quote, Side, Trade};

    fn btc() -> Symbol {
        Symbol { name: "BTC-USD".into(), px_scale: 2, qty_scale: 4 }
    }

    fn enc(body: TickBody) -> serde_json::Value {
        let tick = Tick { sym: 0, seq: 18235, ts: 1764028800123456789, et: 0, body };
        let mut buf = Vec::new();
        write_tick_message(&mut buf, &tick, &btc(), None);
        serde_json::from_slice(&buf).expect("encoder writes valid JSON")
    }

    #[test]
    fn trade_matches_protocol_example() {
        let v = enc(TickBody::Trade(Trade { id: 991, px: 6412350, qty: 150, side: Side::Buy }));
        assert_eq!(
            v,
            serde_json::json!({"ch":"trades.BTC-USD","seq":18235,"ts":1764028800123456u64,
                "id":991,"px":"64123.50","qty":"0.0150","side":"buy"})
        );
    }

    #[test]
    fn clients_get_microseconds_and_the_feed_nanoseconds_with_the_event_time_after_ts() {
        let trade = TickBody::Trade(Trade { id: 991, px: 6412350, qty: 150, side: Side::Buy });
        let tick =
            Tick { sym: 0, seq: 7, ts: 1764028800123456789, et: 1764028800123000999, body: trade };
        let mut buf = Vec::new();
        write_tick_message(&mut buf, &tick, &btc(), None);
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            r#"{"ch":"trades.BTC-USD","seq":7,"ts":1764028800123456,"et":1764028800123000,"id":991,"px":"64123.50","qty":"0.0150","side":"buy"}"#
        );
        // JavaScript reads every integer up to 2^53 exactly: microseconds stay below it.
        assert!(crate::micros(tick.ts) < 1 << 53 && tick.ts > 1 << 53);
        buf.clear();
        write_tick_json(&mut buf, &tick, &btc());
        assert!(std::str::from_utf8(&buf)
            .unwrap()
            .starts_with(r#"{"ch":"trades.BTC-USD","seq":7,"ts":1764028800123456789,"et":1764028800123000999,"id""#));
    }

    #[test]
    fn quote_and_book_are_valid_json_with_decimal_strings() {
        let q = enc(TickBody::Quote(Quote { bid: 6412300, bsz: 12000, ask: 6412350, asz: 4000 }));
        assert_eq!(q["ch"], "quotes.BTC-USD");
        assert_eq!((q["bid"].as_str(), q["asz"].as_str()), (Some("64123.00"), Some("0.4000")));
        let b = enc(TickBody::Book(BookDelta {
            bids: vec![Level { px: 320110, qty: 0 }],
            asks: vec![Level { px: 320120, qty: 15000 }, Level { px: 320130, qty: 1 }],
        }));
        assert_eq!(b["type"], "update");
        assert_eq!(b["bids"], serde_json::json!([["3201.10", "0.0000"]]));
        assert_eq!(b["asks"][1], serde_json::json!(["3201.30", "0.0001"]));
    }

    #[test]
    fn book_update_with_crc_and_snapshot_share_one_layout() {
        let tick = Tick {
            sym: 0,
            seq: 9,
            ts: 5_000,
            et: 0,
            body: TickBody::Book(BookDelta {
                bids: vec![Level { px: 6412300, qty: 12000 }],
                asks: vec![],
            }),
        };
        let mut buf = Vec::new();
        write_tick_message(&mut buf, &tick, &btc(), Some(42));
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            r#"{"ch":"book.BTC-USD","seq":9,"ts":5,"type":"update","bids":[["64123.00","1.2000"]],"asks":[],"crc":42}"#
        );
        let book = L2Book { bids: vec![Level { px: 6412300, qty: 12000 }], asks: vec![] };
        buf.clear();
        write_book_snapshot_message(&mut buf, &book, &btc(), 9, 5_000);
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["type"], "snapshot");
        assert_eq!((&v["seq"], &v["ts"]), (&9.into(), &5.into()));
        assert_eq!(v["crc"], book.checksum(2, 4));
        buf.clear();
        write_book_snapshot_json(&mut buf, &book, &btc(), 9, 5_000);
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            r#"{"ch":"book.BTC-USD","seq":9,"ts":5000,"type":"snapshot","bids":[["64123.00","1.2000"]],"asks":[]}"#
        );
    }

    #[test]
    fn gap_notice_is_valid_json() {
        let mut buf = Vec::new();
        write_gap_json(&mut buf, "trades.BTC-USD", 18236, 18290, "slow_consumer");
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op":"gap","ch":"trades.BTC-USD","from":18236,"to":18290,"reason":"slow_consumer"})
        );
    }

    #[test]
    fn gap_json_len_is_the_length_written() {
        let seqs =
            [0, 1, 9, 10, 99, 100, 12_345, 999_999_999, 1_000_000_000, u64::MAX - 1, u64::MAX];
        for ch in ["trades.BTC-USD", "book.X", ""] {
            for reason in ["slow_consumer", "conflated", "ring_overflow"] {
                for (&from, &to) in seqs.iter().zip(seqs.iter().rev()) {
                    let mut buf = Vec::new();
                    write_gap_json(&mut buf, ch, from, to, reason);
                    assert_eq!(gap_json_len(ch, from, to, reason), buf.len(), "{buf:?}");
                    let mut pieces = Vec::new();
                    write_gap_json_with(|p| pieces.extend_from_slice(p), ch, from, to, reason);
                    assert_eq!(pieces, buf);
                }
            }
        }
    }
}
