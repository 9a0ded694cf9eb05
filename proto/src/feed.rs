//! The feed format: how ticks reach a gateway from outside (`docs/feed-format.md`).
//!
//! One JSON object per line (NDJSON), the same on stdin, in a file and in a NATS message:
//! - first, a **symbols announcement**: `{"op":"symbols","epoch":"…","symbols":[{"name":
//!   "BTC-USD","px_scale":2,"qty_scale":4},…]}`. It fixes the universe, the decimals of each
//!   symbol and the publisher's epoch (the run its sequence numbers belong to);
//! - then **ticks**, each written as the protocol's data message (`ch`, `seq`, `ts`, `et` if
//!   known, then the body; [`write_tick_json`](crate::encode::write_tick_json) writes them)
//!   with timestamps in nanoseconds. Timestamps below 10^17 are read as microseconds, so a
//!   recording of a gateway's output is also a feed.
//!
//! Parsing is strict about what a gateway relies on (known kind and symbol, decimals in the
//! symbol's scale, non-negative sizes) and lenient about the rest (unknown fields are ignored,
//! a book update's `crc` is recomputed by the gateway). Every rejection has a short
//! [`LineError::reason`], which gateways count per reason.

use std::borrow::Cow;

use serde::Deserialize;

use crate::decimal::parse_decimal;
use crate::tick::{BookDelta, Level, Quote, Side, Status, Symbol, Tick, TickBody, Trade};
use crate::{Kind, SymbolTable};

/// Longest line a reader accepts; longer ones are rejected as [`LineError::TooLong`]. A book
/// update of 1,000 levels per side at 20 digits each is about 60 KiB.
pub const MAX_LINE_BYTES: usize = 256 << 10;

/// Most symbols an announcement may list.
pub const MAX_SYMBOLS: usize = 100_000;

/// Longest announcement line: [`MAX_SYMBOLS`] at up to 80 bytes each.
pub const MAX_ANNOUNCEMENT_BYTES: usize = MAX_SYMBOLS * 80;

/// The feed on NATS (`docs/feed-format.md`, "NATS"): what publisher and gateways agree on.
pub mod nats {
    use std::time::Duration;

    /// Subject a gateway asks the announcement on (request/reply).
    pub const SYMBOLS_GET: &str = "md.symbols.get";
    /// Subject the publisher repeats its announcement on.
    pub const SYMBOLS: &str = "md.symbols";
    /// Every subject of the feed; ticks and book snapshots are on `md.<kind>.<SYM>`.
    pub const ALL: &str = "md.>";
    /// The JetStream stream that keeps the feed (`--jetstream` on both sides).
    pub const STREAM: &str = "MD";
    /// The subjects it keeps: ticks and book snapshots, not the announcements.
    pub const STREAM_SUBJECTS: [&str; 3] = ["md.trades.>", "md.quotes.>", "md.book.>"];

    /// Reconnect delays of publisher and gateways: 100 ms doubling to 2 s.
    pub fn backoff(attempts: usize) -> Duration {
        Duration::from_millis((100u64 << attempts.min(5)).min(2000))
    }
}

/// Why a line was not taken. Lines are skipped, never fatal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineError {
    /// Not valid UTF-8.
    NotUtf8,
    /// Longer than [`MAX_LINE_BYTES`].
    TooLong,
    /// Not a JSON object of the expected shape (a field of the wrong type included).
    BadJson,
    /// `ch` is not `<kind>.<symbol>` with a known kind.
    UnknownKind,
    /// The symbol is not in the announcement.
    UnknownSymbol,
    /// A field is missing or out of range: `seq` 0, a price with more decimals than the
    /// symbol's scale, a negative size, a side that is neither `buy` nor `sell`.
    BadField,
    /// `seq` not above the channel's last one: a duplicate or a step back.
    SeqNotIncreasing,
    /// An announcement after the first, different from it: the universe cannot change while
    /// the gateway runs.
    SymbolsChanged,
}

impl LineError {
    pub const ALL: [LineError; 8] = [
        LineError::NotUtf8,
        LineError::TooLong,
        LineError::BadJson,
        LineError::UnknownKind,
        LineError::UnknownSymbol,
        LineError::BadField,
        LineError::SeqNotIncreasing,
        LineError::SymbolsChanged,
    ];

    /// The label a gateway counts this rejection under.
    pub fn reason(self) -> &'static str {
        match self {
            LineError::NotUtf8 => "not_utf8",
            LineError::TooLong => "too_long",
            LineError::BadJson => "bad_json",
            LineError::UnknownKind => "unknown_kind",
            LineError::UnknownSymbol => "unknown_symbol",
            LineError::BadField => "bad_field",
            LineError::SeqNotIncreasing => "seq_not_increasing",
            LineError::SymbolsChanged => "symbols_changed",
        }
    }

    /// Index in [`LineError::ALL`].
    pub fn index(self) -> usize {
        LineError::ALL.iter().position(|&e| e == self).expect("ALL lists every error")
    }
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// The universe a feed publishes and the run its sequence numbers belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The publisher's epoch: gateways fed by the same publisher run announce it to clients,
    /// so that a client can resume on any of them. `None`: each gateway makes up its own.
    pub epoch: Option<String>,
    pub symbols: Vec<Symbol>,
}

/// Longest epoch accepted (a gateway's own are 16 hex digits).
pub const MAX_EPOCH_LEN: usize = 64;

#[derive(Deserialize)]
struct RawAnnouncement<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow, default)]
    epoch: Option<Cow<'a, str>>,
    symbols: Vec<RawSymbol>,
}

#[derive(Deserialize)]
struct RawSymbol {
    name: String,
    px_scale: u8,
    qty_scale: u8,
}

impl Announcement {
    /// The line announcing `symbols` under `epoch` (no trailing newline).
    pub fn to_line(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.symbols.len() * 48);
        out.extend_from_slice(b"{\"op\":\"symbols\"");
        if let Some(epoch) = &self.epoch {
            out.extend_from_slice(b",\"epoch\":\"");
            out.extend_from_slice(epoch.as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"symbols\":[");
        for (i, s) in self.symbols.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":\"");
            out.extend_from_slice(s.name.as_bytes());
            out.extend_from_slice(b"\",\"px_scale\":");
            out.extend_from_slice(itoa::Buffer::new().format(s.px_scale).as_bytes());
            out.extend_from_slice(b",\"qty_scale\":");
            out.extend_from_slice(itoa::Buffer::new().format(s.qty_scale).as_bytes());
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// Parses an announcement line. `Err` says what is wrong, for a startup error message.
    pub fn parse(line: &[u8]) -> Result<Announcement, String> {
        let raw: RawAnnouncement<'_> = serde_json::from_slice(line).map_err(|e| {
            format!("the first line of a feed must be a symbols announcement ({e})")
        })?;
        if raw.op != "symbols" {
            return Err(format!("expected \"op\":\"symbols\", got {:?}", raw.op));
        }
        if raw.symbols.is_empty() || raw.symbols.len() > MAX_SYMBOLS {
            return Err(format!("an announcement lists 1 to {MAX_SYMBOLS} symbols"));
        }
        let epoch = match raw.epoch {
            Some(e) if e.is_empty() || e.len() > MAX_EPOCH_LEN || !e.bytes().all(is_epoch_byte) => {
                return Err(format!(
                    "epoch {e:?}: 1 to {MAX_EPOCH_LEN} characters of [A-Za-z0-9_-]"
                ))
            }
            e => e.map(Cow::into_owned),
        };
        let mut seen = std::collections::HashSet::new();
        let mut symbols = Vec::with_capacity(raw.symbols.len());
        for s in raw.symbols {
            if !is_symbol_name(&s.name) {
                return Err(format!(
                    "symbol {:?}: upper-case letters and digits, at most one '-', 1 to 32 long",
                    s.name
                ));
            }
            if s.px_scale > 18 || s.qty_scale > 18 {
                return Err(format!("symbol {}: scales are 0 to 18 decimals", s.name));
            }
            if !seen.insert(s.name.clone()) {
                return Err(format!("symbol {} is listed twice", s.name));
            }
            symbols.push(Symbol { name: s.name, px_scale: s.px_scale, qty_scale: s.qty_scale });
        }
        Ok(Announcement { epoch, symbols })
    }
}

fn is_epoch_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// `BTC-USD`, `SYM0042`: what channel names can carry unambiguously.
fn is_symbol_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().filter(|&b| b == b'-').count() <= 1
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[derive(Deserialize)]
struct RawTick<'a> {
    #[serde(borrow)]
    ch: Cow<'a, str>,
    seq: u64,
    ts: u64,
    #[serde(default)]
    et: Option<u64>,
    // Trades.
    id: Option<u64>,
    #[serde(borrow, default)]
    px: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    qty: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    side: Option<Cow<'a, str>>,
    // Quotes.
    #[serde(borrow, default)]
    bid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    bsz: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    ask: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    asz: Option<Cow<'a, str>>,
    // Instrument status.
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    // Book updates.
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    bids: Option<Vec<[Cow<'a, str>; 2]>>,
    #[serde(borrow, default)]
    asks: Option<Vec<[Cow<'a, str>; 2]>>,
}

/// A parsed feed line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedLine {
    /// A tick to publish.
    Tick(Tick),
    /// A whole book as of `seq` (the seq of the last update it includes, not a new one):
    /// what a consumer that joined mid-stream, or lost updates, starts the book from. The
    /// tick's body lists every level.
    BookSnapshot(Tick),
}

/// Parses one tick line against `symbols`; a book snapshot is [`LineError::BadField`] here.
pub fn parse_tick(line: &[u8], symbols: &SymbolTable) -> Result<Tick, LineError> {
    match parse_line(line, symbols)? {
        FeedLine::Tick(t) => Ok(t),
        FeedLine::BookSnapshot(_) => Err(LineError::BadField),
    }
}

/// Parses one line after the announcement against `symbols`. Does not check `seq` against
/// earlier lines: that needs per-channel state, which the reader keeps.
pub fn parse_line(line: &[u8], symbols: &SymbolTable) -> Result<FeedLine, LineError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(LineError::TooLong);
    }
    let text = std::str::from_utf8(line).map_err(|_| LineError::NotUtf8)?;
    let raw: RawTick<'_> = serde_json::from_str(text).map_err(|_| LineError::BadJson)?;
    let (kind, name) = raw.ch.split_once('.').ok_or(LineError::UnknownKind)?;
    // Ticker, candles and book forms are derived by the gateway, never fed.
    let kind = Kind::FEED.into_iter().find(|k| k.as_str() == kind).ok_or(LineError::UnknownKind)?;
    let sym = symbols.lookup(name).ok_or(LineError::UnknownSymbol)?;
    if raw.seq == 0 {
        return Err(LineError::BadField);
    }
    // Nanoseconds, or microseconds (a recording of a gateway's messages) below 10^17.
    let (ts, et) = (crate::ns_from_wire(raw.ts), raw.et.map_or(0, crate::ns_from_wire));
    let s = symbols.get(sym);
    let px = |v: &Option<Cow<'_, str>>| decimal(v, s.px_scale, i64::MIN);
    let qty = |v: &Option<Cow<'_, str>>| decimal(v, s.qty_scale, 0);
    let body = match kind {
        Kind::Trades => TickBody::Trade(Trade {
            id: raw.id.ok_or(LineError::BadField)?,
            px: px(&raw.px)?,
            qty: qty(&raw.qty)?,
            side: match raw.side.as_deref() {
                Some("buy") => Side::Buy,
                Some("sell") => Side::Sell,
                _ => return Err(LineError::BadField),
            },
        }),
        Kind::Quotes => TickBody::Quote(Quote {
            bid: px(&raw.bid)?,
            bsz: qty(&raw.bsz)?,
            ask: px(&raw.ask)?,
            asz: qty(&raw.asz)?,
        }),
        Kind::Book => {
            let snapshot = match raw.kind.as_deref() {
                Some("update") => false,
                Some("snapshot") => true,
                _ => return Err(LineError::BadField),
            };
            let levels = |side: &Option<Vec<[Cow<'_, str>; 2]>>| -> Result<Vec<Level>, LineError> {
                let side = side.as_deref().ok_or(LineError::BadField)?;
                side.iter()
                    .map(|[p, q]| {
                        Ok(Level {
                            px: parse_decimal(p, s.px_scale).ok_or(LineError::BadField)?,
                            qty: parse_nonnegative(q, s.qty_scale)?,
                        })
                    })
                    .collect()
            };
            let body = BookDelta { bids: levels(&raw.bids)?, asks: levels(&raw.asks)? };
            let tick = Tick { sym, seq: raw.seq, ts, et, body: TickBody::Book(body) };
            return Ok(if snapshot { FeedLine::BookSnapshot(tick) } else { FeedLine::Tick(tick) });
        }
        Kind::Instruments => TickBody::Status(match raw.status.as_deref() {
            Some("trading") => Status::Trading,
            Some("halted") => Status::Halted,
            _ => return Err(LineError::BadField),
        }),
        // Derived by the gateway (and refused above).
        _ => return Err(LineError::UnknownKind),
    };
    Ok(FeedLine::Tick(Tick { sym, seq: raw.seq, ts, et, body }))
}

fn decimal(v: &Option<Cow<'_, str>>, scale: u8, min: i64) -> Result<i64, LineError> {
    let m = parse_decimal(v.as_deref().ok_or(LineError::BadField)?, scale)
        .ok_or(LineError::BadField)?;
    if m < min {
        return Err(LineError::BadField);
    }
    Ok(m)
}

fn parse_nonnegative(s: &str, scale: u8) -> Result<i64, LineError> {
    match parse_decimal(s, scale) {
        Some(m) if m >= 0 => Ok(m),
        _ => Err(LineError::BadField),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::write_tick_json;

    fn table() -> SymbolTable {
        SymbolTable::new(vec![
            Symbol { name: "BTC-USD".into(), px_scale: 2, qty_scale: 4 },
            Symbol { name: "ETH-USD".into(), px_scale: 2, qty_scale: 3 },
        ])
    }

    fn round_trip(body: TickBody) {
        let t = table();
        let tick = Tick { sym: 1, seq: 42, ts: 1_764_028_800_123_456_789, et: 0, body };
        let mut line = Vec::new();
        write_tick_json(&mut line, &tick, t.get(1));
        assert_eq!(parse_tick(&line, &t), Ok(tick.clone()));
        let tick = Tick { et: 1_764_028_800_123_400_000, ..tick };
        line.clear();
        write_tick_json(&mut line, &tick, t.get(1));
        assert_eq!(parse_tick(&line, &t), Ok(tick));
    }

    #[test]
    fn timestamps_in_microseconds_are_read_as_such() {
        let t = table();
        let line = |ts: &str| {
            let l = format!(
                r#"{{"ch":"trades.BTC-USD","seq":1,{ts},"id":1,"px":"1.00","qty":"1","side":"buy"}}"#
            );
            let tick = parse_tick(l.as_bytes(), &t).unwrap();
            (tick.ts, tick.et)
        };
        // A gateway's message (µs) and a feed line (ns) of the same instant read alike.
        let ns = 1_764_028_800_123_456_000;
        assert_eq!(line(r#""ts":1764028800123456"#), (ns, 0));
        assert_eq!(line(r#""ts":1764028800123456000"#), (ns, 0));
        assert_eq!(line(r#""ts":1764028800123456,"et":1764028800123000"#), (ns, ns - 456_000));
        assert_eq!(line(r#""ts":0"#), (0, 0));
        let bad = r#"{"ch":"trades.BTC-USD","seq":1,"ts":1,"et":"soon","id":1,"px":"1.00","qty":"1","side":"buy"}"#;
        assert_eq!(parse_tick(bad.as_bytes(), &t), Err(LineError::BadJson));
    }

    #[test]
    fn every_kind_round_trips_through_the_data_message_encoder() {
        round_trip(TickBody::Trade(Trade { id: 7, px: 312_550, qty: 1_500, side: Side::Sell }));
        round_trip(TickBody::Quote(Quote { bid: 312_500, bsz: 2, ask: 312_600, asz: 0 }));
        round_trip(TickBody::Book(BookDelta {
            bids: vec![Level { px: 312_500, qty: 0 }, Level { px: 312_400, qty: 1_000 }],
            asks: vec![],
        }));
        round_trip(TickBody::Status(Status::Halted));
        round_trip(TickBody::Status(Status::Trading));
    }

    #[test]
    fn each_kind_of_bad_line_has_its_reason() {
        let t = table();
        let bad = |line: &[u8]| parse_tick(line, &t).unwrap_err();
        assert_eq!(bad(b"\xff\xfe"), LineError::NotUtf8);
        assert_eq!(bad(b"{\"ch\":"), LineError::BadJson);
        assert_eq!(bad(b"[1,2]"), LineError::BadJson);
        assert_eq!(bad(br#"{"ch":"trades.BTC-USD","seq":"1","ts":1}"#), LineError::BadJson);
        assert_eq!(bad(br#"{"ch":"ticker.BTC-USD","seq":1,"ts":1}"#), LineError::UnknownKind);
        let paused = br#"{"ch":"instruments.BTC-USD","seq":1,"ts":1,"status":"paused"}"#;
        assert_eq!(bad(paused), LineError::BadField);
        assert_eq!(bad(br#"{"ch":"BTC-USD","seq":1,"ts":1}"#), LineError::UnknownKind);
        assert_eq!(bad(br#"{"ch":"trades.DOGE-USD","seq":1,"ts":1}"#), LineError::UnknownSymbol);
        let trade = |fields: &str| {
            format!(r#"{{"ch":"trades.BTC-USD","seq":1,"ts":1,"id":1,{fields}}}"#).into_bytes()
        };
        assert_eq!(bad(&trade(r#""px":"1.001","qty":"1","side":"buy""#)), LineError::BadField);
        assert_eq!(bad(&trade(r#""px":"1.00","qty":"-1","side":"buy""#)), LineError::BadField);
        assert_eq!(bad(&trade(r#""px":"1.00","qty":"1","side":"up""#)), LineError::BadField);
        assert_eq!(bad(&trade(r#""px":"1.00","side":"buy""#)), LineError::BadField);
        assert!(parse_tick(&trade(r#""px":"1.00","qty":"1","side":"buy","x":[]"#), &t).is_ok());
        let zero_seq =
            br#"{"ch":"quotes.BTC-USD","seq":0,"ts":1,"bid":"1","bsz":"1","ask":"2","asz":"1"}"#;
        assert_eq!(bad(zero_seq), LineError::BadField);
        let snapshot = br#"{"ch":"book.BTC-USD","seq":9,"ts":1,"type":"snapshot","bids":[["1.00","2"]],"asks":[]}"#;
        assert_eq!(bad(snapshot), LineError::BadField);
        let Ok(FeedLine::BookSnapshot(tick)) = parse_line(snapshot, &t) else {
            panic!("a snapshot")
        };
        let levels = BookDelta { bids: vec![Level { px: 100, qty: 20_000 }], asks: vec![] };
        assert_eq!((tick.seq, tick.body), (9, TickBody::Book(levels)));
        let other = br#"{"ch":"book.BTC-USD","seq":9,"ts":1,"type":"delta","bids":[],"asks":[]}"#;
        assert_eq!(bad(other), LineError::BadField);
        assert_eq!(bad(&vec![b' '; MAX_LINE_BYTES + 1]), LineError::TooLong);
    }

    #[test]
    fn announcements_round_trip_and_bad_ones_say_why() {
        let a = Announcement {
            epoch: Some("18c0ffee".into()),
            symbols: table().iter().cloned().collect(),
        };
        let line = a.to_line();
        assert_eq!(Announcement::parse(&line), Ok(a));
        let err = |s: &str| Announcement::parse(s.as_bytes()).unwrap_err();
        assert!(err(r#"{"ch":"trades.BTC-USD"}"#).contains("symbols announcement"));
        assert!(err(r#"{"op":"symbols","symbols":[]}"#).contains("1 to"));
        let lower = r#"{"op":"symbols","symbols":[{"name":"btc","px_scale":2,"qty_scale":2}]}"#;
        assert!(err(lower).contains("upper-case"));
        let twice = r#"{"op":"symbols","symbols":[{"name":"A","px_scale":2,"qty_scale":2},{"name":"A","px_scale":2,"qty_scale":2}]}"#;
        assert!(err(twice).contains("twice"));
        let epoch =
            r#"{"op":"symbols","epoch":"a b","symbols":[{"name":"A","px_scale":2,"qty_scale":2}]}"#;
        assert!(err(epoch).contains("epoch"));
        let no_epoch = r#"{"op":"symbols","symbols":[{"name":"A","px_scale":2,"qty_scale":2}]}"#;
        assert_eq!(Announcement::parse(no_epoch.as_bytes()).unwrap().epoch, None);
    }
}
