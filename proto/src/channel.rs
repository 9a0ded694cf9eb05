//! Channel names (`trades.BTC-USD`, `book.*`) and their dense numeric ids.

use std::collections::HashMap;
use std::fmt;

use crate::tick::{Symbol, SymbolIdx};

/// What a channel carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Executed trades.
    Trades = 0,
    /// Best bid and offer.
    Quotes = 1,
    /// L2 order book changes.
    Book = 2,
}

impl Kind {
    /// Every kind, in id order.
    pub const ALL: [Kind; 3] = [Kind::Trades, Kind::Quotes, Kind::Book];
    /// Number of kinds: the stride of [`ChannelId`].
    pub const COUNT: u32 = 3;

    /// The channel-name prefix of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Trades => "trades",
            Kind::Quotes => "quotes",
            Kind::Book => "book",
        }
    }

    pub fn from_prefix(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
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
            .map(|ch| format!("{}.{}", ch.kind().as_str(), symbols[ch.sym() as usize].name).into())
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

    /// Parses `trades.BTC-USD` or `trades.*`.
    pub fn parse_channel(&self, name: &str) -> Result<ChannelSpec, ParseChannelError> {
        let (prefix, sym) = name.split_once('.').ok_or(ParseChannelError::Malformed)?;
        let kind = Kind::from_prefix(prefix).ok_or(ParseChannelError::Malformed)?;
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
            ChannelSpec::Wildcard(kind) => format!("{}.*", kind.as_str()),
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
        for bad in ["", "trades", "trades.", "candles.BTC-USD", ".BTC-USD", "*"] {
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
                assert_eq!(name, format!("{}.{}", kind.as_str(), t.get(sym).name));
                assert_eq!(t.channel_name(ch), name);
                assert_eq!(t.parse_channel(name), Ok(ChannelSpec::Exact(ch)));
            }
        }
        assert_eq!(t.channel_name_str(ChannelId::new(Kind::Book, 1)), "book.ETH-USD");
    }
}
