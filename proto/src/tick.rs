//! The tick model: what an exchange publishes about one symbol at one instant.
//!
//! Prices and sizes are fixed-point integers (`mantissa × 10^-scale`, the scale being the
//! symbol's), never floats: they are written on the wire as decimal strings.

use crate::channel::Kind;

/// Index of a symbol in the [`SymbolTable`](crate::SymbolTable) of a feed.
pub type SymbolIdx = u32;

/// A tradable instrument and the precision its prices and sizes are quoted in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// Exchange name, e.g. `BTC-USD`: upper-case letters and digits, one `-`.
    pub name: String,
    /// Decimal places of prices: `px = mantissa / 10^px_scale`.
    pub px_scale: u8,
    /// Decimal places of sizes.
    pub qty_scale: u8,
}

/// Aggressor side of a trade.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

/// One price level of an order book side. A `qty` of 0 in an update removes the level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    /// Price mantissa in the symbol's `px_scale`.
    pub px: i64,
    /// Size mantissa in the symbol's `qty_scale`.
    pub qty: i64,
}

/// An executed trade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trade {
    /// Trade id, unique and increasing per symbol.
    pub id: u64,
    pub px: i64,
    pub qty: i64,
    pub side: Side,
}

/// Best bid and offer after a change at the top of the book.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    pub bid: i64,
    pub bsz: i64,
    pub ask: i64,
    pub asz: i64,
}

/// Changed L2 levels; a level with `qty == 0` is removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BookDelta {
    pub bids: Vec<Level>,
    pub asks: Vec<Level>,
}

/// Whether an instrument can be traded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Trading,
    Halted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Trading => "trading",
            Status::Halted => "halted",
        }
    }
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TickBody {
    Trade(Trade),
    Quote(Quote),
    Book(BookDelta),
    /// The instrument's trading status changed.
    Status(Status),
}

impl TickBody {
    /// The channel kind this body is published on.
    pub fn kind(&self) -> Kind {
        match self {
            TickBody::Trade(_) => Kind::Trades,
            TickBody::Quote(_) => Kind::Quotes,
            TickBody::Book(_) => Kind::Book,
            TickBody::Status(_) => Kind::Instruments,
        }
    }
}

/// The system clock in Unix nanoseconds (0 if the clock is set before 1970, saturating far in
/// the future): what publishers stamp ticks with (`ts`). Clients see it in microseconds
/// ([`micros`]) and subtract it from their own clock to measure end-to-end latency.
pub fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A timestamp as clients get it (protocol v2): Unix **microseconds**, from Unix nanoseconds.
/// Microseconds stay below 2^53 until the year 2255, so JavaScript's `JSON.parse` reads them
/// exactly; nanoseconds have been beyond 2^53 since 1970 + 104 days.
pub fn micros(ns: u64) -> u64 {
    ns / 1000
}

/// Integers below this, read as a timestamp (a feed line's `ts` or `et`, a client message's
/// `ts`), are microseconds; from it up, nanoseconds. 10^17 ns is March 1973, 10^17 µs the
/// year 5138: no date a feed carries is ambiguous.
pub const MICROS_BELOW: u64 = 100_000_000_000_000_000;

/// A timestamp read from the wire in Unix nanoseconds, whichever of nanoseconds or
/// microseconds it was written in (see [`MICROS_BELOW`]).
pub fn ns_from_wire(v: u64) -> u64 {
    if v < MICROS_BELOW {
        v.saturating_mul(1000)
    } else {
        v
    }
}

/// One published event on one channel (`<kind>.<symbol>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tick {
    /// Symbol index in the feed's symbol table.
    pub sym: SymbolIdx,
    /// Per-channel sequence number assigned by the publisher: starts at 1, +1 per message.
    /// It comes from upstream so that any gateway fed by the same publisher numbers alike.
    pub seq: u64,
    /// Publisher's timestamp, Unix nanoseconds. End-to-end latency is measured from it.
    pub ts: u64,
    /// The exchange's own time of the event (its matching engine's), Unix nanoseconds, when
    /// the source gives it; 0 when it does not.
    pub et: u64,
    pub body: TickBody,
}

impl Tick {
    /// The channel this tick belongs to.
    pub fn channel(&self) -> crate::ChannelId {
        crate::ChannelId::new(self.body.kind(), self.sym)
    }
}
