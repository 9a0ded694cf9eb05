//! `ticker.<SYM>` and `candles.<SYM>.<interval>`, derived by the gateway from the feed: a real
//! `tickfan --source stdin` is fed three and a half minutes of simulated feed time (as fast as
//! it reads), and every ticker and candle message a client gets is checked against values
//! recomputed here from the trades and quotes the same client got.

mod support;

use feed_sim::{Feed, SimConfig, VIRTUAL_EPOCH_NS};
use serde_json::{json, Value};
use support::{spawn_tickfan_fed, Client, Msg};
use tickfan_proto::encode::write_tick_json;
use tickfan_proto::feed::Announcement;
use tokio::io::AsyncWriteExt;

const MINUTE_NS: u64 = 60_000_000_000;

/// A decimal string as an integer mantissa (every price, and every size, of a symbol has the
/// same number of decimals).
fn mantissa(v: &Value) -> i64 {
    v.as_str().unwrap_or_else(|| panic!("a decimal string: {v}")).replace('.', "").parse().unwrap()
}

/// A message's `ts` (Unix microseconds) in nanoseconds, the feed's unit.
fn ts_ns(msg: &serde_json::Value) -> u64 {
    msg["ts"].as_u64().unwrap_or_else(|| panic!("an integer ts: {msg}")) * 1000
}

#[derive(Debug)]
struct Trade {
    ts: u64,
    px: i64,
    qty: i64,
}

/// Open, high, low, close, volume and count of `trades` (at least one).
fn ohlcv(trades: &[&Trade]) -> (i64, i64, i64, i64, i64, u64) {
    let px = trades.iter().map(|t| t.px);
    (
        trades[0].px,
        px.clone().max().unwrap(),
        px.min().unwrap(),
        trades[trades.len() - 1].px,
        trades.iter().map(|t| t.qty).sum(),
        trades.len() as u64,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticker_and_candles_match_what_the_trades_and_quotes_say() {
    let mut feed = Feed::new(SimConfig {
        symbols: 2,
        rate: 200.0,
        burst_every_s: 0.0,
        ..SimConfig::default()
    });
    let symbols = feed.symbols().clone();
    let ann = Announcement {
        epoch: Some("derived-1".into()),
        symbols: symbols.iter().cloned().collect(),
    };
    let mut first = ann.to_line();
    first.push(b'\n');
    let (_child, mut stdin, addr) =
        spawn_tickfan_fed(&["--workers", "1", "--queue-bytes", "67108864"], &first).await;
    let streams =
        "trades.BTC-USD,quotes.BTC-USD,ticker.BTC-USD,candles.BTC-USD.1m,candles.BTC-USD.5m";
    let mut c = Client::connect(addr, &format!("/ws?streams={streams}")).await;
    assert_eq!(c.reply().await["op"], "subscribed");

    // Three and a half minutes of feed time, aligned on the epoch's minute.
    let end = VIRTUAL_EPOCH_NS + 210 * 1_000_000_000;
    let mut lines = Vec::new();
    loop {
        let tick = feed.next_tick_virtual();
        if tick.ts > end {
            break;
        }
        write_tick_json(&mut lines, &tick, symbols.get(tick.sym));
        lines.push(b'\n');
    }
    stdin.write_all(&lines).await.unwrap();
    stdin.flush().await.unwrap();

    let (mut trades, mut quotes, mut tickers, mut candles) = (vec![], vec![], vec![], vec![]);
    // Everything the gateway sends, until it has nothing more (the feed ended).
    let mut closed_1m = 0;
    while let Some(msg) = c.try_recv(std::time::Duration::from_millis(1500)).await {
        let Msg::Text(v, _) = msg else { panic!("closed: {msg:?}") };
        assert!(v.get("op").is_none(), "no notice expected: {v}");
        let ch = v["ch"].as_str().unwrap().to_owned();
        match ch.split('.').next().unwrap() {
            "trades" => trades.push(Trade {
                ts: ts_ns(&v),
                px: mantissa(&v["px"]),
                qty: mantissa(&v["qty"]),
            }),
            "quotes" => quotes.push(v),
            "ticker" => tickers.push(v),
            _ => {
                closed_1m += usize::from(ch.ends_with(".1m") && v["closed"] == true);
                candles.push(v);
            }
        }
    }
    assert_eq!(closed_1m, 3, "three minutes closed by the feed's clock");
    eprintln!(
        "{} trades, {} quotes, {} tickers, {} candle messages",
        trades.len(),
        quotes.len(),
        tickers.len(),
        candles.len()
    );
    assert!(
        trades.len() > 1000 && tickers.len() > 20,
        "{} trades, {} tickers",
        trades.len(),
        tickers.len()
    );

    // Each ticker: the trades and the last quote up to its time (the feed's clock).
    for t in &tickers {
        let ts = ts_ns(t);
        let upto: Vec<&Trade> = trades.iter().filter(|tr| tr.ts <= ts).collect();
        assert_eq!(t["trades"].as_u64(), Some(upto.len() as u64), "{t}");
        let (open, high, low, last, volume, _) = ohlcv(&upto);
        let got = |f: &str| mantissa(&t[f]);
        assert_eq!(
            (got("open"), got("high"), got("low"), got("last"), got("volume")),
            (open, high, low, last, volume),
            "{t}"
        );
        match quotes.iter().rev().find(|q| ts_ns(q) <= ts) {
            Some(quote) => {
                for f in ["bid", "bsz", "ask", "asz"] {
                    assert_eq!(t[f], quote[f], "{t} vs {quote}");
                }
            }
            None => assert!(t["bid"].is_null() && t["ask"].is_null(), "{t}"),
        }
    }
    // Tickers are conflated: one per second of feed time at most.
    for pair in tickers.windows(2) {
        let gap = ts_ns(&pair[1]) - ts_ns(&pair[0]);
        assert!(gap >= 1_000_000_000, "{} then {}", pair[0], pair[1]);
    }

    // Each candle: the trades of its interval up to its time; finals cover the whole interval.
    let mut finals = Vec::new();
    let mut last_update: std::collections::HashMap<String, u64> = Default::default();
    for k in &candles {
        let len =
            if k["ch"].as_str().unwrap().ends_with(".1m") { MINUTE_NS } else { 5 * MINUTE_NS };
        let start = k["start"].as_u64().unwrap() * 1_000_000;
        assert_eq!(start % len, 0, "aligned: {k}");
        let ts = ts_ns(k);
        assert!(ts >= start && ts < start + len, "{k}");
        let within: Vec<&Trade> = trades
            .iter()
            .filter(|tr| tr.ts >= start && tr.ts < start + len && tr.ts <= ts)
            .collect();
        assert_eq!(k["trades"].as_u64(), Some(within.len() as u64), "{k}");
        if let Some(&first) = within.first() {
            let (open, high, low, close, volume, _) = ohlcv(&within);
            let got = |f: &str| mantissa(&k[f]);
            assert_eq!(
                (got("open"), got("high"), got("low"), got("close"), got("volume")),
                (open, high, low, close, volume),
                "{k}, first trade at {}",
                first.ts
            );
        }
        if k["closed"] == true {
            finals.push(start);
        } else {
            // Open candles are conflated: 250 ms of feed time apart at least.
            let ch = k["ch"].as_str().unwrap().to_owned();
            if let Some(prev) = last_update.insert(ch, ts) {
                assert!(ts >= prev + 250_000_000, "{k}");
            }
        }
    }
    // One final per minute, in order, the first on the epoch's first minute.
    let want: Vec<u64> = (0..3).map(|m| VIRTUAL_EPOCH_NS + m * MINUTE_NS).collect();
    assert_eq!(finals, want);

    // A client that subscribes now gets the ticker's last state at once.
    let mut late = Client::connect(addr, "/ws").await;
    let ack = late.request(json!({"op":"subscribe","id":1,"channels":["ticker.*"]})).await;
    assert_eq!(ack["channels"], json!(["ticker.*"]));
    let states = [late.recv_json().await, late.recv_json().await];
    let btc = states.iter().find(|v| v["ch"] == "ticker.BTC-USD").expect("both symbols' tickers");
    assert_eq!(btc, tickers.last().unwrap(), "the last ticker sent, as it was");
}
