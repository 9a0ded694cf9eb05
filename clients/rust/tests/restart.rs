//! The Rust client against a real gateway (in-process, on 127.0.0.1): subscribed to trades,
//! quotes and two books, it goes through a gateway restart on the same port (a new epoch:
//! nothing resumes), starts its books again from fresh snapshots, and sees every seq and
//! checksum right throughout; trades arrive typed. Once with JSON, once with binary data
//! messages.

use std::time::Duration;

use gateway::{Config, Gateway};
use tickfan_client::{Client, Event};
use tickfan_proto::TickBody;

fn config() -> Config {
    let mut cfg = Config::for_tests();
    cfg.symbols = 10;
    cfg.rate = 5000.0;
    cfg.workers = 2;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_goes_through_a_gateway_restart_with_books_and_seqs_right() {
    through_a_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_client_goes_through_a_gateway_restart_with_books_and_seqs_right() {
    through_a_restart(true).await;
}

async fn through_a_restart(binary: bool) {
    let first = Gateway::start(config()).expect("gateway starts");
    let addr = first.local_addr();
    // The restart, on a thread of its own (stopping a gateway joins its threads).
    let restart = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(2));
        first.shutdown();
        std::thread::sleep(Duration::from_millis(300));
        let mut cfg = config();
        cfg.listen = addr;
        Gateway::start(cfg).expect("a new gateway on the same port")
    });
    let channels = ["trades.BTC-USD", "quotes.BTC-USD", "book.BTC-USD", "book.ETH-USD"];
    let mut client = Client::new(&addr.to_string(), channels).binary(binary);
    let (mut typed_trades, mut books) = (0, 0);
    let ran = tokio::time::timeout(
        Duration::from_secs(6),
        client.run(|event| match event {
            Event::Message(m) => {
                typed_trades += usize::from(matches!(
                    m.tick.as_ref().map(|t| &t.body),
                    Some(TickBody::Trade(_))
                ));
            }
            Event::Book { .. } => books += 1,
            Event::Gap(_) => {}
        }),
    )
    .await;
    assert!(ran.is_err(), "runs until stopped: {ran:?}");
    let _second = restart.await.unwrap();
    let n = client.counters();
    eprintln!("{n:?}, {typed_trades} typed trades, {books} books verified");
    assert!(n.reconnects >= 1, "{n:?}");
    assert!(n.not_resumed_channels >= 1 || n.gaps_declared >= 1, "a new epoch: {n:?}");
    assert_eq!((n.crc_bad, n.gaps_undeclared), (0, 0), "{n:?}");
    assert!(n.crc_ok > 100 && books as u64 == n.crc_ok, "{n:?}");
    assert!(n.messages > 1000 && typed_trades > 100, "{n:?}, {typed_trades} typed trades");
    match binary {
        true => assert!(n.binary * 2 > n.messages, "mostly binary: {n:?}"),
        false => assert_eq!(n.binary, 0),
    }
}
