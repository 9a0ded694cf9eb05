//! Protocol v1 control messages (`docs/protocol.md`): parsing client requests with simd-json
//! and encoding the server's replies. Every way a request can be wrong maps to one stable
//! [`ErrorCode`] here, in one place.

use serde_json::{json, Map, Value};
use simd_json::prelude::*;
use tickfan_proto::ErrorCode;

/// Longest string `id` echoed back; longer ones are refused rather than reflected.
const MAX_ID_LEN: usize = 128;

/// A client operation.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Subscribe { channels: Vec<String>, resume: Option<Resume> },
    Unsubscribe { channels: Vec<String> },
    List,
    Symbols,
    Ping,
}

/// The `resume` part of a subscribe: the last seq the client has of some channels, and the
/// epoch those seqs belong to (`docs/protocol.md`, "Resume").
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resume {
    pub epoch: Option<String>,
    pub seqs: Vec<(String, u64)>,
}

/// Longest `epoch` accepted (the gateway's are 16 hex digits; a feed's may be longer).
use tickfan_proto::feed::MAX_EPOCH_LEN;

/// A parsed client request: an operation and the `id` to echo in its reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Client-chosen correlation id (number or string), echoed verbatim.
    pub id: Option<Value>,
    pub op: Op,
}

/// A refused request: becomes `{"op":"error","id":…,"code":…,"msg":…}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub id: Option<Value>,
    pub code: ErrorCode,
    pub msg: String,
}

impl Rejection {
    pub fn new(id: Option<Value>, code: ErrorCode, msg: impl Into<String>) -> Rejection {
        Rejection { id, code, msg: msg.into() }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut m = Map::new();
        m.insert("op".into(), "error".into());
        if let Some(id) = &self.id {
            m.insert("id".into(), id.clone());
        }
        m.insert("code".into(), self.code.as_str().into());
        m.insert("msg".into(), self.msg.clone().into());
        serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
    }
}

/// Parses one text message. `buf` is parsed in place (simd-json rewrites it).
/// `max_channels` bounds the length of a `channels` array before any of it is looked at.
pub fn parse_request(buf: &mut [u8], max_channels: usize) -> Result<Request, Rejection> {
    let value = simd_json::to_borrowed_value(buf).map_err(|e| {
        Rejection::new(None, ErrorCode::MalformedJson, format!("not valid JSON: {e}"))
    })?;
    if !value.is_object() {
        return Err(Rejection::new(
            None,
            ErrorCode::MalformedJson,
            "a request is a JSON object like {\"op\":\"ping\",\"id\":1}",
        ));
    }
    let id = match value.get("id") {
        None => None,
        Some(v) => Some(parse_id(v)?),
    };
    let op = match value.get("op") {
        None => return Err(Rejection::new(id, ErrorCode::BadRequest, "missing field \"op\"")),
        Some(op) => match op.as_str() {
            Some(s) => s,
            None => {
                return Err(Rejection::new(id, ErrorCode::BadRequest, "\"op\" must be a string"))
            }
        },
    };
    let op = match op {
        "subscribe" => Op::Subscribe {
            channels: parse_channels(&value, &id, max_channels)?,
            resume: parse_resume(&value, &id, max_channels)?,
        },
        "unsubscribe" => Op::Unsubscribe { channels: parse_channels(&value, &id, max_channels)? },
        "list" => Op::List,
        "symbols" => Op::Symbols,
        "ping" => Op::Ping,
        other => {
            let shown: String = other.chars().take(40).collect();
            return Err(Rejection::new(
                id,
                ErrorCode::UnknownOp,
                format!(
                    "unknown op {shown:?}; ops are subscribe, unsubscribe, list, symbols, ping"
                ),
            ));
        }
    };
    Ok(Request { id, op })
}

fn parse_id(v: &simd_json::BorrowedValue<'_>) -> Result<Value, Rejection> {
    let bad = || {
        Rejection::new(
            None,
            ErrorCode::BadRequest,
            "\"id\" must be a number or a string of at most 128 bytes",
        )
    };
    if let Some(n) = v.as_u64() {
        Ok(n.into())
    } else if let Some(n) = v.as_i64() {
        Ok(n.into())
    } else if let Some(f) = v.as_f64() {
        serde_json::Number::from_f64(f).map(Value::Number).ok_or_else(bad)
    } else if let Some(s) = v.as_str() {
        if s.len() <= MAX_ID_LEN {
            Ok(s.into())
        } else {
            Err(bad())
        }
    } else {
        Err(bad())
    }
}

fn parse_channels(
    value: &simd_json::BorrowedValue<'_>,
    id: &Option<Value>,
    max_channels: usize,
) -> Result<Vec<String>, Rejection> {
    let bad = |msg: &str| Rejection::new(id.clone(), ErrorCode::BadRequest, msg);
    let Some(field) = value.get("channels") else {
        return Err(bad("missing field \"channels\" (an array of channel names)"));
    };
    let Some(arr) = field.as_array() else {
        return Err(bad("\"channels\" must be an array of channel names"));
    };
    if arr.is_empty() {
        return Err(bad("\"channels\" must not be empty"));
    }
    if arr.len() > max_channels {
        return Err(too_many_channels(id, max_channels));
    }
    arr.iter()
        .map(|c| {
            c.as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad("every entry of \"channels\" must be a string"))
        })
        .collect()
}

fn too_many_channels(id: &Option<Value>, max_channels: usize) -> Rejection {
    Rejection::new(
        id.clone(),
        ErrorCode::TooManyChannels,
        format!("at most {max_channels} channels per connection"),
    )
}

/// `"resume":{"trades.BTC-USD":41,…}` and `"epoch":"…"`, both optional.
fn parse_resume(
    value: &simd_json::BorrowedValue<'_>,
    id: &Option<Value>,
    max_channels: usize,
) -> Result<Option<Resume>, Rejection> {
    let bad = |msg: &str| Rejection::new(id.clone(), ErrorCode::BadRequest, msg);
    let epoch = match value.get("epoch") {
        None => None,
        Some(e) => match e.as_str() {
            Some(e) if e.len() <= MAX_EPOCH_LEN => Some(e.to_owned()),
            _ => return Err(bad("\"epoch\" must be the string a subscribed reply gave")),
        },
    };
    let Some(field) = value.get("resume") else {
        return Ok(epoch.map(|epoch| Resume { epoch: Some(epoch), seqs: Vec::new() }));
    };
    let Some(obj) = field.as_object() else {
        return Err(bad("\"resume\" must be an object like {\"trades.BTC-USD\":41}"));
    };
    if obj.len() > max_channels {
        return Err(too_many_channels(id, max_channels));
    }
    let seqs = obj
        .iter()
        .map(|(ch, seq)| {
            seq.as_u64().map(|seq| (ch.to_string(), seq)).ok_or_else(|| {
                bad("every value of \"resume\" must be the last seq received (an integer >= 0)")
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(Resume { epoch, seqs }))
}

/// Encodes a successful reply `{"op":op,"id":id, …fields}` (id omitted when the request had none).
pub fn reply(op: &str, id: &Option<Value>, fields: Value) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("op".into(), op.into());
    if let Some(id) = id {
        m.insert("id".into(), id.clone());
    }
    if let Value::Object(extra) = fields {
        m.extend(extra);
    }
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

/// `{"op":"pong","id":…,"ts":now}`, `ts` in Unix microseconds like every `ts` clients get.
pub fn pong(id: &Option<Value>, now_ns: u64) -> Vec<u8> {
    reply("pong", id, json!({ "ts": tickfan_proto::micros(now_ns) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Request, Rejection> {
        parse_request(&mut s.as_bytes().to_vec(), 3)
    }

    fn code(s: &str) -> ErrorCode {
        parse(s).expect_err(s).code
    }

    #[test]
    fn parses_every_op_with_ids() {
        assert_eq!(
            parse(r#"{"op":"subscribe","id":1,"channels":["trades.BTC-USD","book.*"]}"#).unwrap(),
            Request {
                id: Some(1.into()),
                op: Op::Subscribe {
                    channels: vec!["trades.BTC-USD".into(), "book.*".into()],
                    resume: None
                }
            }
        );
        let r = parse(r#"{"op":"subscribe","channels":["x"],"resume":{"x":41},"epoch":"ab"}"#);
        assert!(
            matches!(r.unwrap().op, Op::Subscribe { resume: Some(Resume { epoch: Some(e), seqs }), .. }
            if e == "ab" && seqs == vec![("x".to_owned(), 41)])
        );
        assert_eq!(parse(r#"{"op":"ping","id":"abc"}"#).unwrap().id, Some("abc".into()));
        assert_eq!(parse(r#"{"op":"list"}"#).unwrap(), Request { id: None, op: Op::List });
        assert_eq!(parse(r#"{"op":"symbols","id":-5}"#).unwrap().id, Some((-5).into()));
        assert!(matches!(
            parse(r#"{"op":"unsubscribe","channels":["x"]}"#).unwrap().op,
            Op::Unsubscribe { .. }
        ));
    }

    #[test]
    fn every_bad_input_has_its_code() {
        assert_eq!(code("{not json"), ErrorCode::MalformedJson);
        assert_eq!(code("[1,2]"), ErrorCode::MalformedJson);
        assert_eq!(code("\"ping\""), ErrorCode::MalformedJson);
        assert_eq!(code(r#"{"id":1}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"op":5}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"op":"dance"}"#), ErrorCode::UnknownOp);
        assert_eq!(code(r#"{"op":"subscribe"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"op":"subscribe","channels":"trades.BTC-USD"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code(r#"{"op":"subscribe","channels":[]}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"op":"subscribe","channels":[1]}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"op":"subscribe","channels":["a","b","c","d"]}"#),
            ErrorCode::TooManyChannels
        );
        assert_eq!(code(r#"{"op":"ping","id":{"a":1}}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"op":"subscribe","channels":["a"],"resume":[1]}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"op":"subscribe","channels":["a"],"resume":{"a":-1}}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"op":"subscribe","channels":["a"],"resume":{"a":"7"}}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"op":"subscribe","channels":["a"],"resume":{"a":1,"b":2,"c":3,"d":4}}"#),
            ErrorCode::TooManyChannels
        );
        assert_eq!(code(r#"{"op":"subscribe","channels":["a"],"epoch":7}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(&format!(r#"{{"op":"ping","id":"{}"}}"#, "x".repeat(200))),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn rejections_echo_the_id_when_it_was_readable() {
        let r = parse(r#"{"op":"dance","id":7}"#).unwrap_err();
        let v: Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(v["op"], "error");
        assert_eq!(v["id"], 7);
        assert_eq!(v["code"], "unknown_op");
        assert!(v["msg"].as_str().unwrap().contains("dance"));
    }

    #[test]
    fn hostile_json_is_refused_not_panicked_on() {
        let deep = "[".repeat(5000);
        assert_eq!(code(&deep), ErrorCode::MalformedJson);
        assert_eq!(code(r#"{"op":"ping","id":1e999}"#), ErrorCode::MalformedJson);
        assert_eq!(
            code("{\"op\":\"ping\",\"id\":123456789012345678901234567890}"),
            ErrorCode::MalformedJson
        );
        assert_eq!(code(""), ErrorCode::MalformedJson);
    }
}
