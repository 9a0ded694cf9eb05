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
}

impl Kind {
    /// Every kind, in id order.
    pub const ALL: [Kind; 7] = [
        Kind::Trades,
        Kind::Quotes,
        Kind::Book,
        Kind::Ticker,
        Kind::Candles1m,
        Kind::Candles5m,
        Kind::Candles1h,
    ];
    /// The kinds a feed carries (the others are derived by the gateway).
    pub const FEED: [Kind; 3] = [Kind::Trades, Kind::Quotes, Kind::Book];
    /// Number of kinds: the stride of [`ChannelId`].
    pub const COUNT: u32 = 7;

    /// The channel-name prefix of this kind (`candles` for every candle interval).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Trades => "trades",
            Kind::Quotes => "quotes",
            Kind::Book => "book",
            Kind::Ticker => "ticker",
            Kind::Candles1m | Kind::Candles5m | Kind::Candles1h => "candles",
        }
    }

    /// A name of its own for each kind, for metrics labels: `candles_1m`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Candles1m => "candles_1m",
            Kind::Candles5m => "candles_5m",
            Kind::Candles1h => "candles_1h",
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

    /// Whether the gateway derives this kind (its messages are states, not feed events).
    pub fn is_derived(self) -> bool {
        self as u32 >= Kind::Ticker as u32
    }

    /// The kind of a prefix with no interval (`trades`, `ticker`, …; not `candles`).
    pub fn from_prefix(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.interval().is_none() && k.as_str() == s)
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
            None => format!("{}.{sym}", self.as_str()),
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
}

impl fmt::Display for ParseChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseChannelError::Malformed => {
                "channel names look like trades.BTC-USD, quotes.*, book.ETH-USD"
            }
            ParseChannelError::UnknownSymbol => "no such symbol",
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
