//! Hostile input, generated (issue #4, "Hardening of input"): property tests with a fixed
//! seed and a bounded number of cases, so CI runs the same cases every time.
//!
//! - The control parser gets thousands of byte strings and generated JSON documents: it
//!   always answers with a request or a stable error code, never panics.
//! - A live gateway gets generated frame sequences over raw TCP (valid and invalid requests,
//!   fragmented messages with control frames in between, oversized and fragmented control
//!   frames, stray continuations, invalid UTF-8, unmasked frames, reserved bits, close
//!   frames with valid and invalid codes, raw garbage): every answer is a well-formed reply,
//!   an `error` with a known code, or a close with a code the protocol lists, and a bystander
//!   client on the same gateway keeps receiving a gap-free stream.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use gateway::protocol::parse_request;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::{json, Value};
use support::{http_get, raw_handshake, start_gateway_with, Client, ObserveJson, SeqCheck};
use tickfan_proto::ErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fixed seed: the same cases on every run (change it to explore new ones).
const SEED: u64 = 0x71c_cfa4;

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(SEED),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Channel names, good and bad.
fn channel() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("trades.BTC-USD")),
        Just(json!("book.ETH-USD")),
        Just(json!("quotes.*")),
        Just(json!("sys.stats")),
        Just(json!("trades.NOPE-USD")),
        Just(json!("")),
        Just(json!("trades.")),
        Just(json!(".*")),
        Just(json!("book.*.*")),
        Just(json!(1)),
        Just(json!(null)),
        any::<String>().prop_map(Value::from),
    ]
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::from)),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("op".to_owned()),
                    Just("id".to_owned()),
                    Just("channels".to_owned()),
                    Just("resume".to_owned()),
                    Just("epoch".to_owned()),
                    any::<String>()
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request as text: valid ones, near-misses, and junk.
fn request_text() -> impl Strategy<Value = Vec<u8>> {
    let op = prop_oneof![
        Just("subscribe"),
        Just("unsubscribe"),
        Just("list"),
        Just("symbols"),
        Just("ping"),
        Just("dance"),
    ];
    let id = prop_oneof![
        Just(None),
        any::<i64>().prop_map(|i| Some(json!(i))),
        any::<String>().prop_map(|s| Some(json!(s))),
        Just(Some(json!({"nested": true}))),
        Just(Some(json!(1e300))),
    ];
    let resume = prop_oneof![
        Just(None),
        (channel(), any::<u64>()).prop_map(|(ch, seq)| {
            Some(json!({ ch.as_str().unwrap_or("trades.BTC-USD"): seq }))
        }),
        any_json().prop_map(Some),
    ];
    let structured = (op, id, prop::collection::vec(channel(), 0..5), resume).prop_map(
        |(op, id, channels, resume)| {
            let mut v = json!({"op": op, "channels": channels});
            if let Some(id) = id {
                v["id"] = id;
            }
            if let Some(resume) = resume {
                v["resume"] = resume;
            }
            v.to_string().into_bytes()
        },
    );
    prop_oneof![
        4 => structured,
        2 => any_json().prop_map(|v| v.to_string().into_bytes()),
        // Truncated: a prefix of a valid request.
        1 => (0usize..40).prop_map(|n| br#"{"op":"subscribe","channels":["trades.BTC-USD"]}"#[..n].to_vec()),
        1 => (1usize..3000).prop_map(|depth| "[".repeat(depth).into_bytes()),
        1 => (1usize..400).prop_map(|n| format!(r#"{{"op":"ping","id":{}}}"#, "9".repeat(n)).into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ]
}

#[test]
fn the_parser_answers_everything_with_a_request_or_a_known_code() {
    let codes: HashSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let check = |mut bytes: Vec<u8>| -> Result<(), TestCaseError> {
        if let Err(rejection) = parse_request(&mut bytes, 1000) {
            prop_assert!(codes.contains(rejection.code.as_str()));
            prop_assert!(serde_json::from_slice::<Value>(&rejection.to_json()).is_ok());
        }
        Ok(())
    };
    runner(4_000).run(&request_text(), check).unwrap();
    runner(2_000).run(&prop::collection::vec(any::<u8>(), 0..512), check).unwrap();
}

/// One thing a client can put on the wire.
#[derive(Clone, Debug)]
enum Send {
    /// A complete masked frame: FIN, RSV bits, opcode, payload.
    Frame { fin: bool, rsv: u8, opcode: u8, payload: Vec<u8> },
    /// A frame without the mask bit.
    Unmasked(Vec<u8>),
    /// A header announcing more than the gateway accepts (nothing follows).
    Oversized,
    /// Bytes that are not a frame.
    Garbage(Vec<u8>),
}

fn frame(opcode: u8, payload: Vec<u8>) -> Send {
    Send::Frame { fin: true, rsv: 0, opcode, payload }
}

/// A sequence of sends: mostly plausible, with every kind of fault mixed in.
fn sends() -> impl Strategy<Value = Vec<Send>> {
    let single = prop_oneof![
        6 => request_text().prop_map(|p| frame(0x1, p)),
        1 => prop::collection::vec(any::<u8>(), 0..125).prop_map(|p| frame(0x9, p)),
        1 => prop::collection::vec(any::<u8>(), 0..125).prop_map(|p| frame(0xA, p)),
        1 => prop::collection::vec(any::<u8>(), 126..300).prop_map(|p| frame(0x9, p)),
        1 => prop::collection::vec(any::<u8>(), 0..50).prop_map(|p| frame(0x2, p)),
        1 => prop::collection::vec(any::<u8>(), 0..50).prop_map(|p| frame(0x0, p)),
        1 => Just(frame(0x1, vec![0xff, 0xfe, b'{'])),
        1 => Just(Send::Frame { fin: false, rsv: 0, opcode: 0x9, payload: vec![] }),
        1 => (1u8..8).prop_map(|rsv| Send::Frame { fin: true, rsv, opcode: 0x1, payload: b"{}".to_vec() }),
        1 => (3u8..8).prop_map(|op| frame(op, vec![])),
        1 => request_text().prop_map(Send::Unmasked),
        1 => Just(Send::Oversized),
        1 => prop_oneof![Just(1000u16), Just(3000), Just(999), Just(1005), Just(2000)]
            .prop_map(|code| frame(0x8, code.to_be_bytes().to_vec())),
        1 => Just(frame(0x8, vec![0x03])),
        1 => prop::collection::vec(any::<u8>(), 1..64).prop_map(Send::Garbage),
    ];
    // A request split into fragments, with a ping between the first two sometimes.
    let fragmented = (request_text(), 2usize..5, any::<bool>()).prop_map(|(p, parts, ping)| {
        let size = p.len().div_ceil(parts).max(1);
        let chunks: Vec<Vec<u8>> = p.chunks(size).map(<[u8]>::to_vec).collect();
        let last = chunks.len().saturating_sub(1);
        let mut out = Vec::new();
        for (i, c) in chunks.into_iter().enumerate() {
            let opcode = if i == 0 { 0x1 } else { 0x0 };
            out.push(Send::Frame { fin: i == last, rsv: 0, opcode, payload: c });
            if ping && i == 0 && last > 0 {
                out.push(frame(0x9, b"mid".to_vec()));
            }
        }
        out
    });
    let one = prop_oneof![5 => single.prop_map(|s| vec![s]), 1 => fragmented];
    prop::collection::vec(one, 1..10).prop_map(|v| v.into_iter().flatten().collect())
}

fn encode(send: &Send, out: &mut Vec<u8>) {
    let (first, payload, masked) = match send {
        Send::Frame { fin, rsv, opcode, payload } => {
            (u8::from(*fin) << 7 | (rsv & 7) << 4 | (opcode & 0xF), payload.as_slice(), true)
        }
        Send::Unmasked(p) => (0x81, p.as_slice(), false),
        Send::Oversized => {
            out.extend_from_slice(&[0x81, 0xFF]);
            out.extend_from_slice(&(1u64 << 40).to_be_bytes());
            out.extend_from_slice(&[1, 2, 3, 4]);
            return;
        }
        Send::Garbage(bytes) => return out.extend_from_slice(bytes),
    };
    let mask_bit = if masked { 0x80 } else { 0 };
    out.extend(support::frame_header(first, mask_bit, payload.len() as u64));
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
}

/// The server's frames in `wire` (unmasked, as the protocol says), as (opcode, payload).
fn server_frames(mut wire: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let mut out = Vec::new();
    while wire.len() >= 2 {
        if wire[1] & 0x80 != 0 {
            return Err("a masked server frame".into());
        }
        let (len, hdr) = match wire[1] & 0x7F {
            126 if wire.len() >= 4 => (usize::from(u16::from_be_bytes([wire[2], wire[3]])), 4),
            127 if wire.len() >= 10 => {
                (u64::from_be_bytes(wire[2..10].try_into().unwrap()) as usize, 10)
            }
            126 | 127 => break,
            n => (usize::from(n), 2),
        };
        if wire.len() < hdr + len {
            break; // cut by our read deadline
        }
        out.push((wire[0] & 0x0F, wire[hdr..hdr + len].to_vec()));
        wire = &wire[hdr + len..];
    }
    Ok(out)
}

/// Sends one generated sequence, then a final ping request, and checks everything the
/// gateway answers until that pong, a close, or a quiet second.
async fn one_case(addr: std::net::SocketAddr, seq: &[Send]) -> Result<String, String> {
    let mut s = raw_handshake(addr).await;
    let mut wire = Vec::new();
    for send in seq {
        encode(send, &mut wire);
    }
    encode(&frame(0x1, br#"{"op":"ping","id":"end"}"#.to_vec()), &mut wire);
    // The gateway may close before reading everything: a failed write is an outcome too.
    let _ = s.write_all(&wire).await;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let outcome = loop {
        match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            Err(_) => break "quiet".to_owned(),
            Ok(Ok(0)) | Ok(Err(_)) => break "eof".to_owned(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
        let frames = server_frames(&got)?;
        if let Some((_, p)) = frames.iter().find(|(op, _)| *op == 0x8) {
            let code = if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1005 };
            break format!("close {code}");
        }
        let is_final_pong = |p: &[u8]| {
            serde_json::from_slice::<Value>(p).is_ok_and(|v| v["op"] == "pong" && v["id"] == "end")
        };
        if frames.iter().any(|(op, p)| *op == 0x1 && is_final_pong(p)) {
            break "pong".to_owned();
        }
    };
    let codes: HashSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    for (opcode, payload) in server_frames(&got)? {
        match opcode {
            0x1 => {
                let v: Value = serde_json::from_slice(&payload).map_err(|e| {
                    format!("not JSON ({e}): {}", String::from_utf8_lossy(&payload))
                })?;
                match v["op"].as_str() {
                    None if v["ch"].is_string() => {} // data, after a subscribe
                    Some("subscribed" | "unsubscribed" | "list" | "symbols" | "pong" | "gap") => {}
                    Some("error") if codes.contains(v["code"].as_str().unwrap_or("")) => {}
                    _ => return Err(format!("unexpected message {v}")),
                }
            }
            0x9 | 0xA => {}
            0x8 => {}
            other => return Err(format!("server sent opcode {other}")),
        }
    }
    // A close says why with a code the protocol lists (or echoes the client's valid one).
    if let Some(code) = outcome.strip_prefix("close ") {
        let code: u16 = code.parse().unwrap();
        if ![1000, 1002, 1007, 1008, 1009, 3000].contains(&code) {
            return Err(format!("close code {code}"));
        }
    }
    // A quiet connection must be one that is still waiting for the rest of a frame.
    if outcome == "quiet" && !seq.iter().any(|s| matches!(s, Send::Garbage(_) | Send::Oversized)) {
        return Err("no answer to the final ping and no close".into());
    }
    Ok(outcome)
}

#[test]
fn a_live_gateway_answers_hostile_frame_sequences_with_replies_errors_or_closes() {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let gw = start_gateway_with(|c| {
        c.rate = 2_000.0;
        c.max_requests_per_sec = 1_000;
    });
    let addr = gw.local_addr();
    // A bystander reads all along: nothing the fuzzed connections do may reach it. Once told
    // to stop it reads on to 200 messages at least, however fast the cases ran.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let bystander = rt.spawn(async move {
        let mut c = Client::connect(addr, "/ws?streams=trades.*").await;
        let mut seq = SeqCheck::default();
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = &mut stopped, if !stopping => stopping = true,
                msg = c.try_recv(Duration::from_secs(3)) => match msg {
                    Some(support::Msg::Text(v, _)) => seq.observe_json(&v),
                    other => panic!("bystander lost its stream: {other:?}"),
                },
            }
            if stopping && seq.messages >= 200 {
                return seq;
            }
        }
    });
    let outcomes = std::cell::RefCell::new(std::collections::BTreeMap::<String, u32>::new());
    runner(160)
        .run(&sends(), |seq| {
            let outcome = rt.block_on(one_case(addr, &seq)).map_err(TestCaseError::fail)?;
            *outcomes.borrow_mut().entry(outcome).or_default() += 1;
            Ok(())
        })
        .unwrap();
    let outcomes = outcomes.into_inner();
    eprintln!("fuzz: 160 frame sequences, outcomes {outcomes:?}");
    assert!(outcomes.len() >= 3, "the cases were not varied: {outcomes:?}");
    let health = rt.block_on(http_get(addr, "/healthz"));
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    stop.send(()).unwrap();
    let seq = rt.block_on(bystander).unwrap();
    assert!(seq.messages > 100, "bystander got {} messages", seq.messages);
    assert_eq!((seq.undeclared_gaps, seq.declared_gaps), (0, 0), "the bystander was harmed");
}
