//! JSON encoding of server → client data messages (`docs/protocol.md`, "Data messages").
//!
//! Hand-written rather than serde: these run once per tick on the producer's hot path, append
//! into a caller-owned buffer and never allocate once the buffer has grown. Field order is fixed
//! (`ch`, `seq`, `ts`, then the body) so that equal ticks encode to equal bytes.

use crate::decimal::write_decimal;
use crate::tick::{Level, Symbol, Tick, TickBody};

/// Appends the data message of `tick` (published on a channel of symbol `sym`) to `buf`.
pub fn write_tick_json(buf: &mut Vec<u8>, tick: &Tick, sym: &Symbol) {
    let mut n = itoa::Buffer::new();
    buf.extend_from_slice(b"{\"ch\":\"");
    buf.extend_from_slice(tick.body.kind().as_str().as_bytes());
    buf.push(b'.');
    buf.extend_from_slice(sym.name.as_bytes());
    buf.extend_from_slice(b"\",\"seq\":");
    buf.extend_from_slice(n.format(tick.seq).as_bytes());
    buf.extend_from_slice(b",\"ts\":");
    buf.extend_from_slice(n.format(tick.ts).as_bytes());
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
            buf.extend_from_slice(b",\"type\":\"update\",\"bids\":");
            write_levels(buf, &b.bids, ps, qs);
            buf.extend_from_slice(b",\"asks\":");
            write_levels(buf, &b.asks, ps, qs);
        }
    }
    buf.push(b'}');
}

/// Appends a `gap` notice: seqs `from..=to` of channel `ch` will never be delivered on this
/// connection (the client may resubscribe, or resume once that is supported).
pub fn write_gap_json(buf: &mut Vec<u8>, ch: &str, from: u64, to: u64, reason: &str) {
    let mut n = itoa::Buffer::new();
    buf.extend_from_slice(b"{\"op\":\"gap\",\"ch\":\"");
    buf.extend_from_slice(ch.as_bytes());
    buf.extend_from_slice(b"\",\"from\":");
    buf.extend_from_slice(n.format(from).as_bytes());
    buf.extend_from_slice(b",\"to\":");
    buf.extend_from_slice(n.format(to).as_bytes());
    buf.extend_from_slice(b",\"reason\":\"");
    buf.extend_from_slice(reason.as_bytes());
    buf.extend_from_slice(b"\"}");
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
        let tick = Tick { sym: 0, seq: 18235, ts: 1764028800123456789, body };
        let mut buf = Vec::new();
        write_tick_json(&mut buf, &tick, &btc());
        serde_json::from_slice(&buf).expect("encoder writes valid JSON")
    }

    #[test]
    fn trade_matches_protocol_example() {
        let v = enc(TickBody::Trade(Trade { id: 991, px: 6412350, qty: 150, side: Side::Buy }));
        assert_eq!(
            v,
            serde_json::json!({"ch":"trades.BTC-USD","seq":18235,"ts":1764028800123456789u64,
                "id":991,"px":"64123.50","qty":"0.0150","side":"buy"})
        );
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
    fn gap_notice_is_valid_json() {
        let mut buf = Vec::new();
        write_gap_json(&mut buf, "trades.BTC-USD", 18236, 18290, "slow_consumer");
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op":"gap","ch":"trades.BTC-USD","from":18236,"to":18290,"reason":"slow_consumer"})
        );
    }
}
