//! Forms of the book a subscription asks for: `book.<SYM>@5` (top levels, every change),
//! `book.<SYM>@10@100ms` and `book.<SYM>@100ms` (one update per interval at most). Against a
//! real gateway and real clients: every form message keeps the form's checksum, the form's
//! book is the full book's top levels at that point of the stream, subscribers of one form get
//! the same bytes, interval forms come at most ten times a second, and a form given up and
//! asked for again starts with a snapshot.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{start_gateway_with, Client, ClientBook, Msg};

/// Reads for `d`: every message, raw, in order.
async fn read_for(c: &mut Client, d: Duration) -> Vec<(Value, Vec<u8>)> {
    let until = Instant::now() + d;
    let mut got = Vec::new();
    while Instant::now() < until {
        match c.try_recv(Duration::from_millis(500)).await {
            Some(Msg::Text(v, raw)) => got.push((v, raw)),
            Some(Msg::Close(code, reason)) => panic!("closed {code} {reason}"),
            None => {}
        }
    }
    got
}

/// Follows the full book and its forms through `msgs`: after every form message, its book has
/// the checksum it carries, at most `depth` levels a side, and is the full book's top levels
/// (once both streams are past their first snapshots, which are taken one after the other, each
/// as of its own moment). Returns the form messages (updates) per channel.
fn check_forms(
    msgs: &[(Value, Vec<u8>)],
    depths: &HashMap<&str, Option<usize>>,
) -> HashMap<String, Vec<Value>> {
    let mut books: HashMap<String, ClientBook> = HashMap::new();
    let mut seqs: HashMap<String, u64> = HashMap::new();
    let mut updates: HashMap<String, Vec<Value>> = HashMap::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut compared = 0;
    for (v, _) in msgs {
        if v.get("op").is_some() {
            assert_ne!(v["op"], "gap", "no loss expected: {v}");
            continue;
        }
        let ch = v["ch"].as_str().unwrap();
        let seq = v["seq"].as_u64().unwrap();
        let snapshot = v["type"] == "snapshot";
        if let Some(last) = seqs.insert(ch.to_owned(), seq) {
            assert!(snapshot || seq == last + 1, "{ch}: {last} then {seq}");
        }
        let book = books.entry(ch.to_owned()).or_default();
        book.apply(v);
        assert_eq!(u64::from(book.checksum()), v["crc"].as_u64().unwrap(), "{ch} seq {seq}");
        *seen.entry(ch.to_owned()).or_default() += 1;
        if let Some(depth) = depths.get(ch).copied().flatten() {
            let (b, a) = book.depth();
            assert!(b <= depth && a <= depth, "{ch}: {b}/{a} levels");
            let settled = seen.get("book.BTC-USD").is_some_and(|&n| n > 50) && seen[ch] > 3;
            if settled {
                let full = &books["book.BTC-USD"];
                assert_eq!(
                    books[ch].top(depth),
                    full.top(depth),
                    "{ch} seq {seq}: the top {depth}"
                );
                compared += 1;
            }
        }
        if ch != "book.BTC-USD" && !snapshot {
            updates.entry(ch.to_owned()).or_default().push(v.clone());
        }
    }
    let with_full = depths.values().any(Option::is_some);
    assert!(!with_full || compared > 100, "only {compared} forms compared with the full book");
    updates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_keep_their_checksum_and_are_the_top_of_the_book() {
    let gw = start_gateway_with(|c| c.symbols = 4);
    let addr = gw.local_addr();
    let forms = ["book.BTC-USD@5", "book.BTC-USD@10@100ms", "book.BTC-USD@100ms"];
    let mut a = Client::connect(addr, "/ws").await;
    let ack = a.request(json!({"op":"subscribe","id":1,"channels":["book.BTC-USD", forms[0], forms[1], forms[2]]})).await;
    assert_eq!(ack["op"], "subscribed", "{ack}");
    let mut b = Client::connect(addr, &format!("/ws?streams={}", forms[0])).await;
    let (got_a, got_b) = tokio::join!(
        read_for(&mut a, Duration::from_secs(3)),
        read_for(&mut b, Duration::from_secs(3))
    );

    let depths: HashMap<&str, Option<usize>> =
        [(forms[0], Some(5)), (forms[1], Some(10)), (forms[2], None)].into_iter().collect();
    let updates = check_forms(&got_a, &depths);
    let top5 = &updates[forms[0]];
    assert!(top5.len() > 100, "only {} updates of {}", top5.len(), forms[0]);
    for interval in &forms[1..] {
        let u = &updates[*interval];
        assert!(u.len() >= 5, "{interval}: {} updates", u.len());
        // At most one update per 100 ms of feed time; over 3 s, about 30 at most.
        for pair in u.windows(2) {
            let gap = pair[1]["ts"].as_u64().unwrap() - pair[0]["ts"].as_u64().unwrap();
            assert!(gap >= 100_000, "{interval}: updates {gap} µs apart");
        }
        assert!(u.len() <= 35, "{interval}: {} updates in 3 s", u.len());
    }
    // The same form, the same bytes for every subscriber.
    let of_a: HashMap<u64, &[u8]> = got_a
        .iter()
        .filter(|(v, _)| v["ch"] == forms[0] && v["type"] == "update")
        .map(|(v, raw)| (v["seq"].as_u64().unwrap(), &raw[..]))
        .collect();
    let mut same = 0;
    for (v, raw) in got_b.iter().filter(|(v, _)| v["ch"] == forms[0] && v["type"] == "update") {
        if let Some(bytes) = of_a.get(&v["seq"].as_u64().unwrap()) {
            assert_eq!(*bytes, &raw[..]);
            same += 1;
        }
    }
    assert!(same > 100, "only {same} updates compared");
    let mut depths_b = HashMap::new();
    depths_b.insert(forms[0], None);
    check_forms(&got_b, &depths_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_given_up_and_asked_for_again_starts_with_a_snapshot() {
    let gw = start_gateway_with(|c| c.symbols = 4);
    let addr = gw.local_addr();
    let mut c = Client::connect(addr, "/ws?streams=book.ETH-USD@1").await;
    let first = read_for(&mut c, Duration::from_millis(500)).await;
    assert_eq!(first[1].0["type"], "snapshot", "{:?}", first[1].0);
    let ack = c.request(json!({"op":"unsubscribe","id":2,"channels":["book.ETH-USD@1"]})).await;
    assert_eq!(ack["op"], "unsubscribed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ack = c.request(json!({"op":"subscribe","id":3,"channels":["book.ETH-USD@1"]})).await;
    assert_eq!(ack["op"], "subscribed");
    let again = read_for(&mut c, Duration::from_millis(800)).await;
    let form: Vec<&Value> =
        again.iter().map(|(v, _)| v).filter(|v| v["ch"] == "book.ETH-USD@1").collect();
    assert_eq!(form[0]["type"], "snapshot", "{:?}", form[0]);
    let mut depths = HashMap::new();
    depths.insert("book.ETH-USD@1", None);
    check_forms(&again, &depths);
    assert!(form.len() > 5, "updates flow again: {}", form.len());

    let bad = c.request(json!({"op":"subscribe","id":4,"channels":["book.ETH-USD@7"]})).await;
    assert_eq!(bad["code"], "unknown_channel", "{bad}");
    assert!(bad["msg"].as_str().unwrap().contains("1, 5 or 10"), "{bad}");
}
