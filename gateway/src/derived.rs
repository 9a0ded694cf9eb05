//! Channels the gateway derives from the feed: `ticker.<SYM>` (last trade, best bid and ask,
//! 24 h open/high/low/volume) and `candles.<SYM>.<1m|5m|1h>` (OHLCV). The producer feeds every
//! tick it publishes to [`Derived`], and after each batch publishes what is due like any
//! other message: encoded once, numbered per channel, kept for resume (docs/protocol.md,
//! "Ticker and candles").
//!
//! Time is the feed's (the largest tick `ts` seen), so what is sent and when depends only on
//! the ticks: a ticker at most once per second of feed time and only after a change; an open
//! candle at most every 250 ms after a change, and a final one (`"closed":true`) when its
//! interval ends, by a trade of the next interval or by the feed's clock passing its end.
//! The 24 h window is kept in one-minute bars for the last hour and one-hour bars before it
//! (about 5 KB per traded symbol): it covers the current hour's and the last hour's minutes
//! and the 23 hours before (since the gateway started, if that is less).

use std::collections::VecDeque;
use std::sync::Arc;

use tickfan_proto::decimal::write_decimal;
use tickfan_proto::{ChannelId, Kind, SymbolTable, Tick, TickBody};

const MINUTE_NS: u64 = 60_000_000_000;
/// Minute bars kept before they are folded into hour bars.
const MINUTE_BARS: u64 = 60;
/// Whole hours of the 24 h window before the current one.
const DAY_HOURS: u64 = 23;
/// Shortest feed time between two ticker messages of a symbol.
const TICKER_EVERY_NS: u64 = 1_000_000_000;
/// Shortest feed time between two updates of an open candle.
const CANDLE_EVERY_NS: u64 = 250_000_000;
/// The candle kinds, in the order of [`SymState::candles`].
const CANDLES: [Kind; 3] = [Kind::Candles1m, Kind::Candles5m, Kind::Candles1h];

/// Open, high, low, close and volume of some trades (prices and sizes as mantissas).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bar {
    open: i64,
    high: i64,
    low: i64,
    close: i64,
    volume: i64,
    trades: u64,
}

impl Bar {
    fn new(px: i64, qty: i64) -> Bar {
        Bar { open: px, high: px, low: px, close: px, volume: qty, trades: 1 }
    }

    /// A bar without trades, at a previous close.
    fn empty(px: i64) -> Bar {
        Bar { open: px, high: px, low: px, close: px, volume: 0, trades: 0 }
    }

    /// Folds the later `next` into this bar.
    fn merge(&mut self, next: &Bar) {
        if next.trades == 0 {
            return;
        }
        if self.trades == 0 {
            *self = *next;
            return;
        }
        self.high = self.high.max(next.high);
        self.low = self.low.min(next.low);
        self.close = next.close;
        self.volume = self.volume.saturating_add(next.volume);
        self.trades += next.trades;
    }

    fn add(&mut self, px: i64, qty: i64) {
        if self.trades == 0 {
            *self = Bar::new(px, qty);
            return;
        }
        self.high = self.high.max(px);
        self.low = self.low.min(px);
        self.close = px;
        self.volume = self.volume.saturating_add(qty);
        self.trades += 1;
    }
}

/// A candle being built: its interval's start (feed ns) and what it holds so far.
#[derive(Clone, Copy, Debug, Default)]
struct Candle {
    start: u64,
    /// `None` until the symbol's first trade.
    bar: Option<Bar>,
    /// Changed since it was last sent.
    dirty: bool,
    /// Feed time it was last sent.
    sent_at: Option<u64>,
}

#[derive(Debug, Default)]
struct SymState {
    /// The last trade's price and size.
    last: Option<(i64, i64)>,
    /// Best bid and ask (price, size), from quotes.
    bid: Option<(i64, i64)>,
    ask: Option<(i64, i64)>,
    /// One-minute bars of the last hour, oldest first, by minute number (feed ns / 60 s).
    minutes: VecDeque<(u64, Bar)>,
    /// One-hour bars before them, oldest first, by hour number.
    hours: VecDeque<(u64, Bar)>,
    ticker_dirty: bool,
    ticker_at: Option<u64>,
    candles: [Candle; 3],
}

/// A derived message due: its channel, its `ts` (feed time) and its JSON after the head
/// (`,"last":…}`).
#[derive(Debug)]
pub struct Due {
    pub ch: ChannelId,
    pub ts: u64,
    pub body: Vec<u8>,
}

/// The derived channels' state for every symbol of the feed.
///
/// Cost: a tick updates its symbol's state; after a batch only the symbols touched since are
/// looked at (`touched`), and all symbols only when the feed's clock passes an interval's end
/// (all intervals of a kind end together: they are aligned on the epoch).
#[derive(Debug)]
pub struct Derived {
    symbols: Arc<SymbolTable>,
    syms: Vec<SymState>,
    /// The feed's clock: the largest tick `ts` seen.
    now: u64,
    due: Vec<Due>,
    /// Symbols with a ticker or candle to send (now or once its conflation allows), each once.
    touched: Vec<u32>,
    is_touched: Vec<bool>,
    /// Per candle kind: when the current intervals end (feed time; 0 before any trade).
    closes_at: [u64; 3],
}

impl Derived {
    pub fn new(symbols: Arc<SymbolTable>) -> Derived {
        let syms = (0..symbols.len()).map(|_| SymState::default()).collect();
        let is_touched = vec![false; symbols.len()];
        Derived {
            symbols,
            syms,
            now: 0,
            due: Vec::new(),
            touched: Vec::new(),
            is_touched,
            closes_at: [0; 3],
        }
    }

    fn touch(&mut self, sym: usize) {
        if !self.is_touched[sym] {
            self.is_touched[sym] = true;
            self.touched.push(sym as u32);
        }
    }

    /// The feed's clock: the largest tick `ts` seen.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Takes a tick the producer just published into account.
    pub fn observe(&mut self, tick: &Tick) {
        self.now = self.now.max(tick.ts);
        let sym = tick.sym as usize;
        match &tick.body {
            TickBody::Trade(t) => self.on_trade(sym, tick.ts, t.px, t.qty),
            TickBody::Quote(q) => {
                let s = &mut self.syms[sym];
                s.bid = Some((q.bid, q.bsz));
                s.ask = Some((q.ask, q.asz));
                s.ticker_dirty = true;
                self.touch(sym);
            }
            TickBody::Book(_) | TickBody::Status(_) => {}
        }
    }

    fn on_trade(&mut self, sym: usize, ts: u64, px: i64, qty: i64) {
        self.touch(sym);
        let s = &mut self.syms[sym];
        s.last = Some((px, qty));
        s.ticker_dirty = true;
        let minute = ts / MINUTE_NS;
        match s.minutes.back_mut() {
            // A trade stamped before the last minute's (feeds may interleave symbols' clocks
            // a little) counts in the last minute.
            Some((m, bar)) if *m >= minute => bar.add(px, qty),
            _ => s.minutes.push_back((minute, Bar::new(px, qty))),
        }
        for (i, kind) in CANDLES.into_iter().enumerate() {
            let start = interval_start(kind, ts);
            let candle = self.syms[sym].candles[i];
            if candle.bar.is_some() && start > candle.start {
                self.close_candle(sym, i, start);
            }
            let c = &mut self.syms[sym].candles[i];
            if c.bar.is_none() {
                c.start = start;
            }
            if self.closes_at[i] == 0 {
                self.closes_at[i] = start + kind.interval().map_or(0, |(_, len)| len);
            }
            match &mut c.bar {
                Some(bar) => bar.add(px, qty),
                None => c.bar = Some(Bar::new(px, qty)),
            }
            c.dirty = true;
        }
    }

    /// Sends candle `i` of `sym` as final (`"closed":true`) and starts the interval at
    /// `next`, empty at its close.
    fn close_candle(&mut self, sym: usize, i: usize, next: u64) {
        let c = &mut self.syms[sym].candles[i];
        let Some(bar) = c.bar else { return };
        let (start, end) = (c.start, c.start + CANDLES[i].interval().map_or(0, |(_, len)| len));
        *c = Candle { start: next, bar: Some(Bar::empty(bar.close)), dirty: false, sent_at: None };
        let ch = ChannelId::new(CANDLES[i], sym as u32);
        // Stamped with the interval's last instant when the feed's clock is past it.
        let ts = self.now.min(end.saturating_sub(1)).max(start);
        let body = self.candle_body(sym, start, &bar, true);
        self.due.push(Due { ch, ts, body });
    }

    /// What is due now (after a batch): finals of the intervals the feed's clock has passed,
    /// open candles and tickers whose time has come. Drained by the caller.
    pub fn due(&mut self) -> std::vec::Drain<'_, Due> {
        let now = self.now;
        // Intervals that ended: every symbol's candle of that kind closes.
        for (i, kind) in CANDLES.into_iter().enumerate() {
            if self.closes_at[i] == 0 || now < self.closes_at[i] {
                continue;
            }
            let len = kind.interval().map_or(1, |(_, len)| len);
            for sym in 0..self.syms.len() {
                let c = self.syms[sym].candles[i];
                if c.bar.is_some() && now >= c.start + len {
                    self.close_candle(sym, i, interval_start(kind, now));
                }
            }
            self.closes_at[i] = interval_start(kind, now) + len;
        }
        // Updates of the symbols touched, as far as their conflation allows.
        let mut touched = std::mem::take(&mut self.touched);
        touched.retain(|&sym| {
            let waiting = self.send_updates(sym as usize, now);
            self.is_touched[sym as usize] = waiting;
            waiting
        });
        self.touched = touched;
        self.due.drain(..)
    }

    /// Queues the open candles and the ticker of `sym` that changed, if their conflation
    /// allows; whether some change still waits.
    fn send_updates(&mut self, sym: usize, now: u64) -> bool {
        let mut waiting = false;
        for (i, kind) in CANDLES.into_iter().enumerate() {
            let c = self.syms[sym].candles[i];
            let Some(bar) = c.bar.filter(|_| c.dirty) else { continue };
            if c.sent_at.is_some_and(|t| now < t + CANDLE_EVERY_NS) {
                waiting = true;
                continue;
            }
            let body = self.candle_body(sym, c.start, &bar, false);
            self.due.push(Due { ch: ChannelId::new(kind, sym as u32), ts: now, body });
            let c = &mut self.syms[sym].candles[i];
            c.dirty = false;
            c.sent_at = Some(now);
        }
        let s = &mut self.syms[sym];
        if !s.ticker_dirty {
            return waiting;
        }
        if s.ticker_at.is_some_and(|t| now < t + TICKER_EVERY_NS) {
            return true;
        }
        let minute = now / MINUTE_NS;
        while let Some(&(m, bar)) = s.minutes.front().filter(|(m, _)| *m + MINUTE_BARS <= minute) {
            s.minutes.pop_front();
            match s.hours.back_mut() {
                Some((h, hour)) if *h == m / 60 => hour.merge(&bar),
                _ => s.hours.push_back((m / 60, bar)),
            }
        }
        let oldest_hour = (minute / 60).saturating_sub(DAY_HOURS);
        while s.hours.front().is_some_and(|(h, _)| *h < oldest_hour) {
            s.hours.pop_front();
        }
        s.ticker_dirty = false;
        s.ticker_at = Some(now);
        let body = self.ticker_body(sym);
        self.due.push(Due { ch: ChannelId::new(Kind::Ticker, sym as u32), ts: now, body });
        waiting
    }

    /// `,"last":…,"trades":N}`: see docs/protocol.md for the fields.
    fn ticker_body(&self, sym: usize) -> Vec<u8> {
        let s = &self.syms[sym];
        let (px, qty) = self.scales(sym);
        let mut day: Option<Bar> = None;
        for (_, bar) in s.hours.iter().chain(&s.minutes) {
            match &mut day {
                None => day = Some(*bar),
                Some(d) => d.merge(bar),
            }
        }
        let mut b = Vec::with_capacity(256);
        field(&mut b, "last", s.last.map(|l| l.0), px);
        field(&mut b, "last_qty", s.last.map(|l| l.1), qty);
        field(&mut b, "bid", s.bid.map(|l| l.0), px);
        field(&mut b, "bsz", s.bid.map(|l| l.1), qty);
        field(&mut b, "ask", s.ask.map(|l| l.0), px);
        field(&mut b, "asz", s.ask.map(|l| l.1), qty);
        field(&mut b, "open", day.map(|d| d.open), px);
        field(&mut b, "high", day.map(|d| d.high), px);
        field(&mut b, "low", day.map(|d| d.low), px);
        field(&mut b, "volume", Some(day.map_or(0, |d| d.volume)), qty);
        b.extend_from_slice(b",\"trades\":");
        b.extend_from_slice(itoa::Buffer::new().format(day.map_or(0, |d| d.trades)).as_bytes());
        b.push(b'}');
        b
    }

    /// `,"start":MS,"open":…,"closed":B}`.
    fn candle_body(&self, sym: usize, start: u64, bar: &Bar, closed: bool) -> Vec<u8> {
        let (px, qty) = self.scales(sym);
        let mut b = Vec::with_capacity(192);
        b.extend_from_slice(b",\"start\":");
        b.extend_from_slice(itoa::Buffer::new().format(start / 1_000_000).as_bytes());
        field(&mut b, "open", Some(bar.open), px);
        field(&mut b, "high", Some(bar.high), px);
        field(&mut b, "low", Some(bar.low), px);
        field(&mut b, "close", Some(bar.close), px);
        field(&mut b, "volume", Some(bar.volume), qty);
        b.extend_from_slice(b",\"trades\":");
        b.extend_from_slice(itoa::Buffer::new().format(bar.trades).as_bytes());
        b.extend_from_slice(if closed { b",\"closed\":true}" } else { b",\"closed\":false}" });
        b
    }

    fn scales(&self, sym: usize) -> (u8, u8) {
        let s = self.symbols.get(sym as u32);
        (s.px_scale, s.qty_scale)
    }
}

/// Where the interval of candle `kind` that holds `ts` starts (intervals are aligned on the
/// Unix epoch: minutes, five minutes, hours of UTC).
fn interval_start(kind: Kind, ts: u64) -> u64 {
    let len = kind.interval().map_or(1, |(_, len)| len);
    ts / len * len
}

/// `,"name":"12.34"`, or `,"name":null` without a value.
fn field(b: &mut Vec<u8>, name: &str, value: Option<i64>, scale: u8) {
    b.extend_from_slice(b",\"");
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(b"\":");
    match value {
        Some(v) => {
            b.push(b'"');
            write_decimal(b, v, scale);
            b.push(b'"');
        }
        None => b.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickfan_proto::{Quote, Side, Symbol, Trade};

    fn derived() -> Derived {
        let syms = vec![Symbol { name: "BTC-USD".into(), px_scale: 2, qty_scale: 4 }];
        Derived::new(Arc::new(SymbolTable::new(syms)))
    }

    fn trade(ts: u64, px: i64, qty: i64) -> Tick {
        let body = TickBody::Trade(Trade { id: ts, px, qty, side: Side::Buy });
        Tick { sym: 0, seq: ts, et: 0, ts, body }
    }

    fn json(d: &Due) -> serde_json::Value {
        let mut text = br#"{"x":0"#.to_vec();
        text.extend_from_slice(&d.body);
        serde_json::from_slice(&text).unwrap()
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn tickers_are_conflated_to_one_per_second_after_a_change() {
        let mut d = derived();
        let t0 = 1_700_000_000 * S;
        d.observe(&trade(t0, 10_000, 5));
        let quote = TickBody::Quote(Quote { bid: 9_990, bsz: 1, ask: 10_010, asz: 2 });
        d.observe(&Tick { sym: 0, seq: 1, ts: t0, et: 0, body: quote });
        let due: Vec<Due> = d.due().collect();
        let ticker: Vec<&Due> = due.iter().filter(|x| x.ch.kind() == Kind::Ticker).collect();
        assert_eq!(ticker.len(), 1);
        let v = json(ticker[0]);
        assert_eq!(v["last"], "100.00");
        assert_eq!(v["bid"], "99.90");
        assert_eq!(v["asz"], "0.0002");
        assert_eq!(
            (v["open"].as_str(), v["volume"].as_str(), v["trades"].as_u64()),
            (Some("100.00"), Some("0.0005"), Some(1))
        );
        // A change half a second later waits; at one second it goes, with both trades.
        d.observe(&trade(t0 + S / 2, 10_100, 5));
        assert!(d.due().all(|x| x.ch.kind() != Kind::Ticker));
        d.observe(&trade(t0 + S, 9_900, 10));
        let v = d.due().find(|x| x.ch.kind() == Kind::Ticker).map(|x| json(&x)).unwrap();
        assert_eq!(
            (v["high"].as_str(), v["low"].as_str(), v["last"].as_str()),
            (Some("101.00"), Some("99.00"), Some("99.00"))
        );
        assert_eq!(v["trades"], 3);
        // No change: nothing, however long.
        d.observe(&Tick {
            sym: 0,
            seq: 9,
            ts: t0 + 5 * S,
            et: 0,
            body: TickBody::Book(Default::default()),
        });
        assert!(d.due().all(|x| x.ch.kind() != Kind::Ticker));
    }

    #[test]
    fn candles_update_at_most_every_250_ms_and_close_with_their_interval() {
        let mut d = derived();
        let t0 = 1_700_000_080 * S; // 20 s before a minute boundary (1_700_000_100 s)
        d.observe(&trade(t0, 10_000, 1));
        let one_minute = |due: Vec<Due>| -> Vec<serde_json::Value> {
            due.iter().filter(|x| x.ch.kind() == Kind::Candles1m).map(json).collect()
        };
        let first = one_minute(d.due().collect());
        assert_eq!(first.len(), 1);
        assert_eq!(first[0]["closed"], false);
        assert_eq!(first[0]["start"], 1_700_000_040_000u64, "the minute's start, in ms");
        d.observe(&trade(t0 + S / 10, 10_500, 2));
        assert!(one_minute(d.due().collect()).is_empty(), "within 250 ms of the last update");
        d.observe(&trade(t0 + S / 2, 9_500, 3));
        let v = &one_minute(d.due().collect())[0];
        assert_eq!(
            (v["open"].as_str(), v["high"].as_str(), v["low"].as_str(), v["close"].as_str()),
            (Some("100.00"), Some("105.00"), Some("95.00"), Some("95.00"))
        );
        assert_eq!((v["volume"].as_str(), v["trades"].as_u64()), (Some("0.0006"), Some(3)));
        // A trade of the next minute closes this one first.
        d.observe(&trade(t0 + 25 * S, 9_800, 1));
        let got = one_minute(d.due().collect());
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!((got[0]["closed"].as_bool(), got[0]["trades"].as_u64()), (Some(true), Some(3)));
        assert_eq!(
            (got[1]["closed"].as_bool(), got[1]["open"].as_str(), got[1]["trades"].as_u64()),
            (Some(false), Some("98.00"), Some(1))
        );
        // The feed's clock passing the end closes a candle without a trade; the next one is
        // empty at its close.
        d.observe(&Tick {
            sym: 0,
            seq: 99,
            ts: t0 + 90 * S,
            et: 0,
            body: TickBody::Book(Default::default()),
        });
        let got = one_minute(d.due().collect());
        assert_eq!(
            (got.len(), got[0]["closed"].as_bool(), got[0]["close"].as_str()),
            (1, Some(true), Some("98.00"))
        );
        d.observe(&Tick {
            sym: 0,
            seq: 100,
            ts: t0 + 150 * S,
            et: 0,
            body: TickBody::Book(Default::default()),
        });
        let got = one_minute(d.due().collect());
        assert_eq!(
            (got[0]["trades"].as_u64(), got[0]["open"].as_str(), got[0]["volume"].as_str()),
            (Some(0), Some("98.00"), Some("0.0000"))
        );
    }

    #[test]
    fn the_24_hour_window_keeps_an_hour_of_minutes_and_23_hours_before() {
        let mut d = derived();
        let t0 = 1_700_000_000 / 3600 * 3600 * S; // on an hour
        let step = 20 * 60 * S; // a trade every 20 minutes, 30 hours long
        let trades: Vec<(u64, i64)> = (0..90).map(|k| (t0 + k * step, 10_000 + k as i64)).collect();
        for &(ts, px) in &trades {
            d.observe(&trade(ts, px, 1));
            d.due().for_each(drop);
        }
        // One more, a second later than the ticker allows: the window as of the last trade.
        let (now, _) = *trades.last().unwrap();
        d.observe(&trade(now + 2 * S, 20_000, 1));
        let v = d.due().find(|x| x.ch.kind() == Kind::Ticker).map(|x| json(&x)).unwrap();
        let (minute, hour) = ((now + 2 * S) / MINUTE_NS, (now + 2 * S) / MINUTE_NS / 60);
        let kept: Vec<i64> = trades
            .iter()
            .filter(|(ts, _)| {
                ts / MINUTE_NS + MINUTE_BARS > minute || ts / MINUTE_NS / 60 + DAY_HOURS >= hour
            })
            .map(|&(_, px)| px)
            .chain([20_000])
            .collect();
        assert!(kept.len() > 60 && kept.len() < 80, "{}", kept.len());
        assert_eq!(v["trades"].as_u64(), Some(kept.len() as u64), "{v}");
        assert_eq!(v["open"], format!("{}.{:02}", kept[0] / 100, kept[0] % 100), "{v}");
        assert_eq!(v["volume"], format!("0.{:04}", kept.len()));
    }
}
