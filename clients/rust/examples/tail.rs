//! Prints a gateway's messages: `cargo run -p tickfan-client --example tail -- 127.0.0.1:8080
//! trades.BTC-USD book.BTC-USD` (`--binary` first to receive binary data messages, printed as
//! the same JSON). Gaps and checksum-verified books go to stderr.

use tickfan_client::{Client, Event};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    let binary = args.next_if_eq("--binary").is_some();
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let channels: Vec<String> = args.collect();
    let channels = if channels.is_empty() { vec!["trades.BTC-USD".into()] } else { channels };
    let mut client = Client::new(&addr, &channels).binary(binary);
    client
        .run(|event| match event {
            Event::Message(m) => println!("{}", m.json),
            Event::Gap(g) => eprintln!("gap: {g:?}"),
            Event::Book { channel, book } => {
                eprintln!("{channel}: best {:?} / {:?}", book.bids.first(), book.asks.first())
            }
        })
        .await
}
