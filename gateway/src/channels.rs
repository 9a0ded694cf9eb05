//! Who is subscribed to what, inside one worker's shard.
//!
//! The index maps every concrete channel to the connections of this shard subscribed to it,
//! and every kind to the connections holding its wildcard (`trades.*`), in flat vectors indexed
//! by [`ChannelId`]: the fan-out looks subscribers up without hashing or locking.

use tickfan_proto::{ChannelId, ChannelSpec, Kind, SymbolTable};

/// Key of a connection in its worker's slab.
pub type ConnKey = usize;

/// Per-shard subscriber lists.
#[derive(Debug)]
pub struct SubscriptionIndex {
    /// `exact[ch]`: connections subscribed to channel `ch` by name.
    exact: Vec<Vec<ConnKey>>,
    /// `wildcard[kind]`: connections subscribed to `<kind>.*`.
    wildcard: [Vec<ConnKey>; Kind::COUNT as usize],
}

impl SubscriptionIndex {
    pub fn new(channel_count: usize) -> SubscriptionIndex {
        SubscriptionIndex { exact: vec![Vec::new(); channel_count], wildcard: Default::default() }
    }

    fn list(&mut self, spec: ChannelSpec) -> &mut Vec<ConnKey> {
        match spec {
            ChannelSpec::Exact(ch) => &mut self.exact[ch.index()],
            ChannelSpec::Wildcard(kind) => &mut self.wildcard[kind as usize],
        }
    }

    pub fn add(&mut self, spec: ChannelSpec, key: ConnKey) {
        self.list(spec).push(key);
    }

    pub fn remove(&mut self, spec: ChannelSpec, key: ConnKey) {
        let list = self.list(spec);
        if let Some(pos) = list.iter().position(|&k| k == key) {
            list.swap_remove(pos);
        }
    }

    /// Wildcard subscribers of `ch`'s kind, then exact subscribers of `ch`. A connection in
    /// both lists must be served once: callers skip exact entries whose connection holds the
    /// wildcard (see [`ConnSubscriptions::has_wildcard`]).
    pub fn subscribers(&self, ch: ChannelId) -> (&[ConnKey], &[ConnKey]) {
        (&self.wildcard[ch.kind() as usize], &self.exact[ch.index()])
    }

    /// Whether anyone in this shard listens to `ch`.
    pub fn has_subscribers(&self, ch: ChannelId) -> bool {
        let (w, e) = self.subscribers(ch);
        !w.is_empty() || !e.is_empty()
    }
}

/// The subscriptions of one connection.
#[derive(Debug, Default)]
pub struct ConnSubscriptions {
    /// Channels subscribed by name, sorted (a few per connection: a small vector costs less
    /// memory than a tree, and thousands of connections each hold one).
    exact: Vec<ChannelId>,
    /// Bit `kind`: subscribed to `<kind>.*` (a bit per kind: every connection holds this).
    wildcard: u32,
}

const _: () = assert!(Kind::COUNT <= u32::BITS, "a wildcard bit per kind");

impl ConnSubscriptions {
    pub fn contains(&self, spec: ChannelSpec) -> bool {
        match spec {
            ChannelSpec::Exact(ch) => self.exact.binary_search(&ch).is_ok(),
            ChannelSpec::Wildcard(kind) => self.has_wildcard(kind),
        }
    }

    /// Adds `spec`; `false` if it was already there.
    pub fn insert(&mut self, spec: ChannelSpec) -> bool {
        match spec {
            ChannelSpec::Exact(ch) => match self.exact.binary_search(&ch) {
                Ok(_) => false,
                Err(at) => {
                    self.exact.insert(at, ch);
                    true
                }
            },
            ChannelSpec::Wildcard(kind) => {
                let had = self.has_wildcard(kind);
                self.wildcard |= 1 << kind as u32;
                !had
            }
        }
    }

    /// Removes `spec`; `false` if it was not there.
    pub fn remove(&mut self, spec: ChannelSpec) -> bool {
        match spec {
            ChannelSpec::Exact(ch) => match self.exact.binary_search(&ch) {
                Ok(at) => {
                    self.exact.remove(at);
                    true
                }
                Err(_) => false,
            },
            ChannelSpec::Wildcard(kind) => {
                let had = self.has_wildcard(kind);
                self.wildcard &= !(1 << kind as u32);
                had
            }
        }
    }

    pub fn has_wildcard(&self, kind: Kind) -> bool {
        self.wildcard & (1 << kind as u32) != 0
    }

    /// Number of subscriptions, a wildcard counting as one.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.count_ones() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every subscription: wildcards first, then channels in id order.
    pub fn specs(&self) -> impl Iterator<Item = ChannelSpec> + '_ {
        Kind::ALL
            .into_iter()
            .filter(|&k| self.has_wildcard(k))
            .map(ChannelSpec::Wildcard)
            .chain(self.exact.iter().map(|&ch| ChannelSpec::Exact(ch)))
    }

    /// Names of every subscription, as `list` reports them.
    pub fn names(&self, symbols: &SymbolTable) -> Vec<String> {
        self.specs().map(|s| symbols.spec_name(s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_adds_and_removes_per_spec() {
        let mut idx = SubscriptionIndex::new(2 * Kind::COUNT as usize);
        let ch = ChannelId::new(Kind::Quotes, 1);
        idx.add(ChannelSpec::Exact(ch), 7);
        idx.add(ChannelSpec::Exact(ch), 9);
        idx.add(ChannelSpec::Wildcard(Kind::Quotes), 3);
        assert_eq!(idx.subscribers(ch), (&[3][..], &[7, 9][..]));
        assert!(!idx.has_subscribers(ChannelId::new(Kind::Trades, 1)));
        idx.remove(ChannelSpec::Exact(ch), 7);
        idx.remove(ChannelSpec::Exact(ch), 42); // absent: no-op
        assert_eq!(idx.subscribers(ch).1, &[9]);
    }

    #[test]
    fn conn_subscriptions_count_wildcards_once() {
        let mut s = ConnSubscriptions::default();
        assert!(s.insert(ChannelSpec::Wildcard(Kind::Book)));
        assert!(!s.insert(ChannelSpec::Wildcard(Kind::Book)));
        assert!(s.insert(ChannelSpec::Exact(ChannelId::new(Kind::Book, 0))));
        assert_eq!(s.len(), 2);
        assert!(s.has_wildcard(Kind::Book));
        assert!(s.remove(ChannelSpec::Wildcard(Kind::Book)));
        assert!(!s.remove(ChannelSpec::Wildcard(Kind::Book)));
        assert_eq!(
            s.specs().collect::<Vec<_>>(),
            vec![ChannelSpec::Exact(ChannelId::new(Kind::Book, 0))]
        );
    }
}
