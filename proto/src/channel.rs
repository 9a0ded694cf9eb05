//! Channel names (`trades.BTC-USD`, `book.*`) and their dense numeric ids.

use std::collections::HashMap;
use std::fmt;

use crate::tick::{Symbol, SymbolIdx};

/// What a channel carries. The first three come from the feed; the others the gateway derives
/// from it (`ticker.<SYM>`, `candles.<SYM>.<interval>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Executed trades.
    Trades = 0,
    /// Best bid and offer.
    Quotes = 1,
    /// L2 order book changes.
    Book = 2,
    /// Last price, best bid and ask, 24 h open/high/low/volume: derived from trades and quotes.
    Ticker = 3,
    /// One-minute OHLCV candles, derived from trades.
    Candles1m = 4,
    /// Five-minute candles.
    Candles5m = 5,
    /// One-hour candles.
    Candles1h = 6,
    /// `book.<SYM>@1`, `@5`, `@10`: the book's top levels only, updated with the book.
    BookTop1 = 7,
    BookTop5 = 8,
    BookTop10 = 9,
    /// `book.<SYM>@100ms`, `@1000ms`: the whole book, one update per interval at most.
    Book100ms = 10,
    Book1000ms = 11,
    /// `book.<SYM>@10@100ms` and the like: top levels, one update per interval at most.
    BookTop1At100ms = 12,
    BookTop5At100ms = 13,
    BookTop10At100ms = 14,
    BookTop1At1000ms = 15,
    BookTop5At1000ms = 16,
    BookTop10At1000ms = 17,
    /// `instruments.<SYM>`: the instrument's trading status when it changes (halted,
    /// trading), from the feed.
    Instruments = 18,
}

/// Book depths a subscription may ask for (`book.<SYM>@10`).
pub const BOOK_DEPTHS: [u8; 3] = [1, 5, 10];
/// Book update intervals a subscription may ask for, in ms (`book.<SYM>@100ms`).
pub const BOOK_SPEEDS_MS: [u32; 2] = [100, 1000];

impl Kind {
    /// Every kind, in id order.
    pub const ALL: [Kind; 19] = [
        Kind::Trades,
        Kind::Quotes,
        Kind::Book,
        Kind::Ticker,
        Kind::Candles1m,
        Kind::Candles5m,
        Kind::Candles1h,
        Kind::BookTop1,
        Kind::BookTop5,
        Kind::BookTop10,
        Kind::Book100ms,
        Kind::Book1000ms,
        Kind::BookTop1At100ms,
        Kind::BookTop5At100ms,
        Kind::BookTop10At100ms,
        Kind::BookTop1At1000ms,
        Kind::BookTop5At1000ms,
        Kind::BookTop10At1000ms,
        Kind::Instruments,
    ];
    /// The kinds a feed carries (the others are derived by the gateway).
    pub const FEED: [Kind; 4] = [Kind::Trades, Kind::Quotes, Kind::Book, Kind::Instruments];
    /// Number of kinds: the stride of [`ChannelId`].
    pub const COUNT: u32 = 19;

    /// For the book and its forms: the depth (levels per side; `None`: all the gateway keeps)
    /// and the update interval in ms (`None`: every change). `None` for other kinds.
    pub fn book_form(self) -> Option<(Option<u8>, Option<u32>)> {
        Some(match self {
            Kind::Book => (None, None),
            Kind::BookTop1 => (Some(1), None),
            Kind::BookTop5 => (Some(5), None),
            Kind::BookTop10 => (Some(10), None),
            Kind::Book100ms => (None, Some(100)),
            Kind::Book1000ms => (None, Some(1000)),
            Kind::BookTop1At100ms => (Some(1), Some(100)),
            Kind::BookTop5At100ms => (Some(5), Some(100)),
            Kind::BookTop10At100ms => (Some(10), Some(100)),
            Kind::BookTop1At1000ms => (Some(1), Some(1000)),
            Kind::BookTop5At1000ms => (Some(5), Some(1000)),
            Kind::BookTop10At1000ms => (Some(10), Some(1000)),
            _ => return None,
        })
    }

    /// The book kind of a form.
    pub fn of_book_form(depth: Option<u8>, speed_ms: Option<u32>) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.book_form() == Some((depth, speed_ms)))
    }

    /// The book or one of its forms.
    pub fn is_book(self) -> bool {
        self.book_form().is_some()
    }

    /// A form of the book (`book.<SYM>@…`): made by the gateway from the book.
    pub fn is_book_form(self) -> bool {
        self.is_book() && self != Kind::Book
    }

    /// The form's suffix in channel names: `@10`, `@100ms`, `@10@100ms`.
    fn form_suffix(self) -> String {
        let Some((depth, speed)) = self.book_form() else { return String::new() };
        let depth = depth.map(|d| format!("@{d}")).unwrap_or_default();
        let speed = speed.map(|s| format!("@{s}ms")).unwrap_or_default();
        depth + &speed
    }

    /// The channel-name prefix of this kind (`candles` for every candle interval).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Trades => "trades",
            Kind::Quotes => "quotes",
            Kind::Book => "book",
            Kind::Ticker => "ticker",
            Kind::Candles1m | Kind::Candles5m | Kind::Candles1h => "candles",
            Kind::Instruments => "instruments",
            _ => "book",
        }
    }

    /// A name of its own for each kind, for metrics labels: `candles_1m`, `book@10@100ms`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Candles1m => "candles_1m",
            Kind::Candles5m => "candles_5m",
            Kind::Candles1h => "candles_1h",
            Kind::BookTop1 => "book@1",
            Kind::BookTop5 => "book@5",
            Kind::BookTop10 => "book@10",
            Kind::Book100ms => "book@100ms",
            Kind::Book1000ms => "book@1000ms",
            Kind::BookTop1At100ms => "book@1@100ms",
            Kind::BookTop5At100ms => "book@5@100ms",
            Kind::BookTop10At100ms => "book@10@100ms",
            Kind::BookTop1At1000ms => "book@1@1000ms",
            Kind::BookTop5At1000ms => "book@5@1000ms",
            Kind::BookTop10At1000ms => "book@10@1000ms",
            other => other.as_str(),
        }
    }

    /// A candle kind's interval as written in channel names (`1m`), and its length in ns.
    pub fn interval(self) -> Option<(&'static str, u64)> {
        const MIN: u64 = 60_000_000_000;
        match self {
            Kind::Candles1m => Some(("1m", MIN)),
            Kind::Candles5m => Some(("5m", 5 * MIN)),
            Kind::Candles1h => Some(("1h", 60 * MIN)),
            _ => None,
        }
    }

    /// Whether each message of this kind is a whole state, which a new subscriber gets first
    /// (ticker, candles, instrument status).
    pub fn is_state(self) -> bool {
        self.is_derived() || self == Kind::Instruments
    }

    /// Whether the gateway derives this kind from trades and quotes (ticker, candles: their
    /// messages are whole states).
    pub fn is_derived(self) -> bool {
        matches!(self, Kind::Ticker | Kind::Candles1m | Kind::Candles5m | Kind::Candles1h)
    }

    /// The kind of a prefix alone (`trades`, `book`, `ticker`; not `candles`, nor a book form).
    pub fn from_prefix(s: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.interval().is_none() && !k.is_book_form() && k.as_str() == s)
    }

    /// The candle kind of an interval (`1m`, `5m`, `1h`).
    pub fn candles(interval: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.interval().is_some_and(|(i, _)| i == interval))
    }

    /// The name of one of its channels (`trades.BTC-USD`, `candles.BTC-USD.1m`), or with `*`
    /// for the symbol, of its wildcard.
    pub fn channel_name(self, sym: &str) -> String {
        match self.interval() {
            Some((interval, _)) => format!("candles.{sym}.{interval}"),
            None => format!("{}.{sym}{}", self.as_str(), self.form_suffix()),
        }
    }

    fn from_index(i: u32) -> Kind {
        Kind::ALL[i as usize]
    }
}

/// Dense id of one concrete channel: `symbol × Kind::COUNT + kind`, so per-channel state can
/// live in flat vectors indexed without hashing on the hot path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u32);

impl ChannelId {
    pub fn new(kind: Kind, sym: SymbolIdx) -> ChannelId {
        ChannelId(sym * Kind::COUNT + kind as u32)
    }

    pub fn kind(self) -> Kind {
        Kind::from_index(self.0 % Kind::COUNT)
    }

    pub fn sym(self) -> SymbolIdx {
        self.0 / Kind::COUNT
    }

    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// What a channel name in a subscribe request designates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChannelSpec {
    /// One channel, e.g. `trades.BTC-USD`.
    Exact(ChannelId),
    /// Every symbol of one kind, e.g. `trades.*`.
    Wildcard(Kind),
}

/// Why a channel name was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseChannelError {
    /// Not of the form `<kind>.<symbol>` with a known kind.
    Malformed,
    /// Well-formed, but the symbol is not traded here.
    UnknownSymbol,
    /// A book form (`@…`) that is not offered.
    BadBookForm,
}

impl fmt::Display for ParseChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseChannelError::Malformed => {
                "channel names look like trades.BTC-USD, quotes.*, book.ETH-USD"
            }
            ParseChannelError::UnknownSymbol => "no such symbol",
            ParseChannelError::BadBookForm => {
                "book forms are book.SYM@DEPTH (1, 5 or 10 levels), book.SYM@SPEED (100ms or \
                 1000ms) and book.SYM@DEPTH@SPEED"
            }
        })
    }
}

/// The symbols of a feed, by index and by name, and the names of their channels.
#[derive(Clone, Debug, Default)]
pub struct SymbolTable {
    symbols: Vec<Symbol>,
    by_name: HashMap<String, SymbolIdx>,
    /// `trades.BTC-USD` for every channel, by [`ChannelId::index`]: written once here so that
    /// messages naming a channel (gap notices) need not format it again.
    channel_names: Vec<Box<str>>,
}

impl SymbolTable {
    pub fn new(symbols: Vec<Symbol>) -> SymbolTable {
        let by_name =
            symbols.iter().enumerate().map(|(i, s)| (s.name.clone(), i as SymbolIdx)).collect();
        let channel_names = (0..symbols.len() as u32 * Kind::COUNT)
            .map(ChannelId)
            .map(|ch| ch.kind().channel_name(&symbols[ch.sym() as usize].name).into())
            .collect();
        SymbolTable { symbols, by_name, channel_names }
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    pub fn get(&self, idx: SymbolIdx) -> &Symbol {
        &self.symbols[idx as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Symbol> {
        self.symbols.iter()
    }

    pub fn lookup(&self, name: &str) -> Option<SymbolIdx> {
        self.by_name.get(name).copied()
    }

    /// Number of concrete channels (every kind of every symbol): the length of per-channel tables.
    pub fn channel_count(&self) -> usize {
        self.symbols.len() * Kind::COUNT as usize
    }

    /// `trades.BTC-USD` for a channel id, as an owned string (see [`Self::channel_name_str`]).
    pub fn channel_name(&self, ch: ChannelId) -> String {
        self.channel_name_str(ch).to_owned()
    }

    /// `trades.BTC-USD` for a channel id, computed once when the table was built: no
    /// formatting, no allocation.
    pub fn channel_name_str(&self, ch: ChannelId) -> &str {
        &self.channel_names[ch.index()]
    }

    /// Parses `trades.BTC-USD`, `candles.BTC-USD.1m` or a wildcard (`trades.*`,
    /// `candles.*.1m`).
    pub fn parse_channel(&self, name: &str) -> Result<ChannelSpec, ParseChannelError> {
        let (prefix, rest) = name.split_once('.').ok_or(ParseChannelError::Malformed)?;
        let (kind, sym) = match prefix {
            "candles" => {
                let (sym, interval) = rest.rsplit_once('.').ok_or(ParseChannelError::Malformed)?;
                (Kind::candles(interval).ok_or(ParseChannelError::Malformed)?, sym)
            }
            "book" if rest.contains('@') => {
                let mut parts = rest.split('@');
                let sym = parts.next().unwrap_or_default();
                let (mut depth, mut speed) = (None, None);
                for part in parts {
                    match (part.strip_suffix("ms"), depth, speed) {
                        (Some(ms), _, None) => {
                            speed = Some(ms.parse().map_err(|_| ParseChannelError::BadBookForm)?)
                        }
                        // The depth comes first.
                        (None, None, None) => {
                            depth = Some(part.parse().map_err(|_| ParseChannelError::BadBookForm)?)
                        }
                        _ => return Err(ParseChannelError::BadBookForm),
                    }
                }
                (Kind::of_book_form(depth, speed).ok_or(ParseChannelError::BadBookForm)?, sym)
            }
            _ => (Kind::from_prefix(prefix).ok_or(ParseChannelError::Malformed)?, rest),
        };
        if sym == "*" {
            return Ok(ChannelSpec::Wildcard(kind));
        }
        if sym.is_empty() {
            return Err(ParseChannelError::Malformed);
        }
        let idx = self.lookup(sym).ok_or(ParseChannelError::UnknownSymbol)?;
        Ok(ChannelSpec::Exact(ChannelId::new(kind, idx)))
    }

    /// Name of a spec as the client wrote it (`trades.*` or `trades.BTC-USD`).
    pub fn spec_name(&self, spec: ChannelSpec) -> String {
        match spec {
            ChannelSpec::Exact(ch) => self.channel_name(ch),
            ChannelSpec::Wildcard(kind) => kind.channel_name("*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> SymbolTable {
        SymbolTable::new(
            ["BTC-USD", "ETH-USD"]
                .iter()
                .map(|n| Symbol { name: n.to_string(), px_scale: 2, qty_scale: 4 })
                .collect(),
        )
    }

    #[test]
    fn channel_ids_round_trip() {
        for sym in 0..5 {
            for kind in Kind::ALL {
                let ch = ChannelId::new(kind, sym);
                assert_eq!((ch.kind(), ch.sym()), (kind, sym));
            }
        }
    }

    #[test]
    fn parses_names_and_wildcards() {
        let t = table();
        assert_eq!(
            t.parse_channel("book.ETH-USD"),
            Ok(ChannelSpec::Exact(ChannelId::new(Kind::Book, 1)))
        );
        assert_eq!(t.parse_channel("trades.*"), Ok(ChannelSpec::Wildcard(Kind::Trades)));
        assert_eq!(t.parse_channel("trades.FOO-BAR"), Err(ParseChannelError::UnknownSymbol));
        assert_eq!(
            t.parse_channel("candles.ETH-USD.5m"),
            Ok(ChannelSpec::Exact(ChannelId::new(Kind::Candles5m, 1)))
        );
        assert_eq!(t.parse_channel("candles.*.1h"), Ok(ChannelSpec::Wildcard(Kind::Candles1h)));
        assert_eq!(t.parse_channel("ticker.*"), Ok(ChannelSpec::Wildcard(Kind::Ticker)));
        assert_eq!(t.spec_name(ChannelSpec::Wildcard(Kind::Candles1m)), "candles.*.1m");
        assert_eq!(
            t.parse_channel("book.BTC-USD@10@100ms"),
            Ok(ChannelSpec::Exact(ChannelId::new(Kind::BookTop10At100ms, 0)))
        );
        assert_eq!(t.parse_channel("book.*@1000ms"), Ok(ChannelSpec::Wildcard(Kind::Book1000ms)));
        assert_eq!(t.spec_name(ChannelSpec::Wildcard(Kind::BookTop5)), "book.*@5");
        for bad in [
            "book.BTC-USD@7",
            "book.BTC-USD@100ms@10",
            "book.BTC-USD@",
            "book.BTC-USD@10@10",
            "book.BTC-USD@50ms",
        ] {
            assert_eq!(t.parse_channel(bad), Err(ParseChannelError::BadBookForm), "{bad:?}");
        }
        for bad in [
            "",
            "trades",
            "trades.",
            "candles.BTC-USD",
            "candles.BTC-USD.2m",
            "candles.*",
            ".BTC-USD",
            "*",
        ] {
            assert_eq!(t.parse_channel(bad), Err(ParseChannelError::Malformed), "{bad:?}");
        }
        assert_eq!(t.channel_name(ChannelId::new(Kind::Quotes, 0)), "quotes.BTC-USD");
    }

    #[test]
    fn cached_channel_names_are_kind_dot_symbol_and_parse_back() {
        let t = table();
        assert_eq!(t.channel_names.len(), t.channel_count());
        for sym in 0..t.len() as SymbolIdx {
            for kind in Kind::ALL {
                let ch = ChannelId::new(kind, sym);
                let name = t.channel_name_str(ch);
                assert!(name.starts_with(&format!("{}.{}", kind.as_str(), t.get(sym).name)));
                assert_eq!(t.channel_name(ch), name);
                assert_eq!(t.parse_channel(name), Ok(ChannelSpec::Exact(ch)));
            }
        }
        assert_eq!(t.channel_name_str(ChannelId::new(Kind::Book, 1)), "book.ETH-USD");
    }
}
