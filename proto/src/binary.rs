//! The compact binary form of data messages (`docs/protocol.md`, "Binary data messages"),
//! for connections that ask for it (`/ws?format=binary`): trades, quotes and book updates in
//! WebSocket binary frames, fixed little-endian fields, prices and sizes as the integer
//! mantissas the JSON writes as decimal strings. Everything else stays JSON text.
//!
//! ```text
//! offset  size  field
//!      0     1  type: 1 trade, 2 quote, 3 book update
//!      1     1  flags: bit 0 set when `et` follows `ts`; other bits 0
//!      2     4  symbol: its index in the `symbols` reply's list (u32)
//!      6     8  seq (u64)
//!     14     8  ts, Unix microseconds (u64)
//!    (22     8  et, Unix microseconds (u64), when flags bit 0)
//! then the body:
//!   trade        id u64, px i64, qty i64, side u8 (0 buy, 1 sell)
//!   quote        bid i64, bsz i64, ask i64, asz i64
//!   book update  crc u32, bids u16, asks u16, then bids × (px i64, qty i64),
//!                asks × (px i64, qty i64), best first; qty 0 removes the level
//! ```
//!
//! A price is `mantissa / 10^price_decimals` and a size `mantissa / 10^size_decimals`, both
//! decimals given per instrument by the `symbols` reply.

use crate::tick::{BookDelta, Level, Quote, Side, Tick, TickBody, Trade};

/// `type` of a trade.
pub const TRADE: u8 = 1;
/// `type` of a quote.
pub const QUOTE: u8 = 2;
/// `type` of a book update.
pub const BOOK_UPDATE: u8 = 3;
/// `flags` bit: the exchange's event time follows `ts`.
pub const FLAG_ET: u8 = 1;
/// Bytes before the body (without `et`).
pub const HEAD_LEN: usize = 22;

/// Appends the binary message of `tick` (a book update with `book_crc`, the checksum of the
/// book after it) to `buf`; `false`, nothing written, for a kind without a binary form
/// (instrument status).
pub fn write_tick_binary(buf: &mut Vec<u8>, tick: &Tick, book_crc: Option<u32>) -> bool {
    let kind = match tick.body {
        TickBody::Trade(_) => TRADE,
        TickBody::Quote(_) => QUOTE,
        TickBody::Book(_) => BOOK_UPDATE,
        TickBody::Status(_) => return false,
    };
    buf.push(kind);
    buf.push(if tick.et != 0 { FLAG_ET } else { 0 });
    buf.extend_from_slice(&tick.sym.to_le_bytes());
    buf.extend_from_slice(&tick.seq.to_le_bytes());
    buf.extend_from_slice(&crate::micros(tick.ts).to_le_bytes());
    if tick.et != 0 {
        buf.extend_from_slice(&crate::micros(tick.et).to_le_bytes());
    }
    match &tick.body {
        TickBody::Trade(t) => {
            buf.extend_from_slice(&t.id.to_le_bytes());
            buf.extend_from_slice(&t.px.to_le_bytes());
            buf.extend_from_slice(&t.qty.to_le_bytes());
            buf.push(match t.side {
                Side::Buy => 0,
                Side::Sell => 1,
            });
        }
        TickBody::Quote(q) => {
            for v in [q.bid, q.bsz, q.ask, q.asz] {
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        TickBody::Book(b) => {
            buf.extend_from_slice(&book_crc.unwrap_or(0).to_le_bytes());
            // A side of more than 65,535 changed levels cannot be a book update here (the
            // feed's lines are at most 256 KiB); cut rather than wrap.
            let (bids, asks) =
                (&b.bids[..b.bids.len().min(0xffff)], &b.asks[..b.asks.len().min(0xffff)]);
            buf.extend_from_slice(&(bids.len() as u16).to_le_bytes());
            buf.extend_from_slice(&(asks.len() as u16).to_le_bytes());
            for l in bids.iter().chain(asks) {
                buf.extend_from_slice(&l.px.to_le_bytes());
                buf.extend_from_slice(&l.qty.to_le_bytes());
            }
        }
        TickBody::Status(_) => unreachable!("refused above"),
    }
    true
}

/// A decoded binary message: the tick (timestamps in nanoseconds, from the wire's
/// microseconds) and, for a book update, its `crc`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub tick: Tick,
    pub crc: Option<u32>,
}

/// Why bytes are not a binary message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than its fields say.
    Truncated,
    /// Longer than its fields say.
    TrailingBytes,
    /// An unknown `type`, flag or side.
    Unknown,
}

/// The fields every binary message starts with, as written (`ts` in microseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub kind: u8,
    pub flags: u8,
    pub sym: u32,
    pub seq: u64,
    pub ts_us: u64,
}

/// Reads the fixed head of a binary message (what a reader needs to route it and check its
/// seq, without decoding the body).
pub fn head(msg: &[u8]) -> Result<Head, DecodeError> {
    let mut r = Reader(msg);
    let (kind, flags) = (r.u8()?, r.u8()?);
    if !matches!(kind, TRADE | QUOTE | BOOK_UPDATE) || flags & !FLAG_ET != 0 {
        return Err(DecodeError::Unknown);
    }
    Ok(Head { kind, flags, sym: r.u32()?, seq: r.u64()?, ts_us: r.u64()? })
}

/// Decodes one binary message (a whole binary frame's payload).
pub fn decode(msg: &[u8]) -> Result<Decoded, DecodeError> {
    let Head { kind, flags, sym, seq, ts_us } = head(msg)?;
    let mut r = Reader(&msg[HEAD_LEN..]);
    let ts = ts_us.saturating_mul(1000);
    let et = if flags & FLAG_ET != 0 { r.u64()?.saturating_mul(1000) } else { 0 };
    let (body, crc) = match kind {
        TRADE => {
            let (id, px, qty) = (r.u64()?, r.i64()?, r.i64()?);
            let side = match r.u8()? {
                0 => Side::Buy,
                1 => Side::Sell,
                _ => return Err(DecodeError::Unknown),
            };
            (TickBody::Trade(Trade { id, px, qty, side }), None)
        }
        QUOTE => {
            let (bid, bsz, ask, asz) = (r.i64()?, r.i64()?, r.i64()?, r.i64()?);
            (TickBody::Quote(Quote { bid, bsz, ask, asz }), None)
        }
        BOOK_UPDATE => {
            let crc = r.u32()?;
            let (nb, na) = (r.u16()?, r.u16()?);
            let mut side = |n: u16| -> Result<Vec<Level>, DecodeError> {
                (0..n).map(|_| Ok(Level { px: r.i64()?, qty: r.i64()? })).collect()
            };
            let bids = side(nb)?;
            let asks = side(na)?;
            (TickBody::Book(BookDelta { bids, asks }), Some(crc))
        }
        _ => return Err(DecodeError::Unknown),
    };
    if !r.0.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(Decoded { tick: Tick { sym, seq, ts, et, body }, crc })
}

/// Little-endian fields from the front of a slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(DecodeError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.take().map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.take().map(i64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(body: TickBody, et: u64, crc: Option<u32>) -> usize {
        let tick = Tick { sym: 7, seq: 18235, ts: 1_764_028_800_123_456_000, et, body };
        let mut buf = Vec::new();
        assert!(write_tick_binary(&mut buf, &tick, crc));
        assert_eq!(decode(&buf), Ok(Decoded { tick, crc }));
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut]), Err(DecodeError::Truncated), "cut at {cut}");
        }
        buf.push(0);
        assert_eq!(decode(&buf), Err(DecodeError::TrailingBytes));
        buf.len() - 1
    }

    #[test]
    fn every_kind_round_trips_at_its_documented_size() {
        let trade = TickBody::Trade(Trade { id: 991, px: 6_412_350, qty: 150, side: Side::Sell });
        assert_eq!(round_trip(trade.clone(), 0, None), HEAD_LEN + 25);
        assert_eq!(round_trip(trade, 1_764_028_800_123_000_000, None), HEAD_LEN + 8 + 25);
        let quote = TickBody::Quote(Quote { bid: -1, bsz: 2, ask: i64::MAX, asz: 0 });
        assert_eq!(round_trip(quote, 0, None), HEAD_LEN + 32);
        let levels = |n: i64| (0..n).map(|i| Level { px: 100 - i, qty: i }).collect();
        let book = TickBody::Book(BookDelta { bids: levels(3), asks: levels(2) });
        assert_eq!(round_trip(book, 0, Some(0xdead_beef)), HEAD_LEN + 8 + 5 * 16);
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let trade = TickBody::Trade(Trade { id: 2, px: 3, qty: 4, side: Side::Buy });
        let tick = Tick { sym: 1, seq: 5, ts: 6_000, et: 0, body: trade };
        let mut buf = Vec::new();
        write_tick_binary(&mut buf, &tick, None);
        #[rustfmt::skip]
        let want = [
            1, 0, 1, 0, 0, 0, // trade, no et, symbol 1
            5, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, // seq 5, ts 6 µs
            2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, // id, px, qty, buy
        ];
        assert_eq!(buf, want);
        let status = Tick { body: TickBody::Status(crate::Status::Halted), ..tick };
        assert!(!write_tick_binary(&mut buf, &status, None));
        assert_eq!(decode(&[9, 0, 0, 0, 0, 0]), Err(DecodeError::Unknown));
    }
}
