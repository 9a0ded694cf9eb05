//! Authentication and Origin checks against a live gateway: API keys and JWTs (HS256, EdDSA)
//! at the handshake, per-channel grants on subscribe, the close when a token expires
//! (docs/operations.md, "Authentication").

mod support;

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{json, Value};
use support::{handshake_from, metric, metric_reaches, start_gateway_with, Client, Msg};

const KEY: &str = "k3y-0123456789abcdef";
const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!!";

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn hs256(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes()))
        .unwrap()
}

/// Subscribes and returns the reply (`subscribed` or an error).
async fn subscribe(c: &mut Client, channels: &[&str]) -> Value {
    c.request(json!({"op":"subscribe","id":7,"channels":channels})).await
}

#[tokio::test]
async fn api_keys_admit_and_grant_channels() {
    let gw = start_gateway_with(|c| {
        c.api_keys_inline = Some(format!("{KEY} trades.*,quotes.BTC-USD; other-key-0123456789 *"))
    });
    let addr = gw.local_addr();
    let (status, _, head) = handshake_from("127.0.0.1", addr, "").await;
    assert_eq!(status, 401, "{head}");
    assert!(head.contains("www-authenticate: Bearer") && head.contains("credentials required"));
    let (status, _, head) =
        handshake_from("127.0.0.1", addr, "Authorization: Bearer nope\r\n").await;
    assert_eq!(status, 401);
    assert!(head.contains("unknown API key"), "{head}");
    let header = format!("Authorization: Bearer {KEY}\r\n");
    assert_eq!(handshake_from("127.0.0.1", addr, &header).await.0, 101);

    let mut c = Client::connect(addr, &format!("/ws?token={KEY}")).await;
    assert_eq!(subscribe(&mut c, &["trades.BTC-USD", "quotes.BTC-USD"]).await["op"], "subscribed");
    let denied = subscribe(&mut c, &["book.BTC-USD"]).await;
    assert_eq!(denied["code"], "forbidden", "{denied}");
    assert_eq!(denied["id"], 7);
    assert!(denied["msg"].as_str().unwrap().contains("book.BTC-USD"), "{denied}");
    let denied = subscribe(&mut c, &["quotes.*"]).await;
    assert!(denied["msg"].as_str().unwrap().contains("whole kind"), "{denied}");
    assert_eq!(subscribe(&mut c, &["sys.stats"]).await["code"], "forbidden");
    // All or nothing: one channel outside the grants refuses the whole request.
    assert_eq!(subscribe(&mut c, &["trades.ETH-USD", "book.ETH-USD"]).await["code"], "forbidden");
    let list = c.request(json!({"op":"list","id":8})).await;
    assert_eq!(list["channels"], json!(["trades.BTC-USD", "quotes.BTC-USD"]));
    // `*` grants everything, sys.stats included.
    let mut admin = Client::connect(addr, "/ws?token=other-key-0123456789").await;
    assert_eq!(subscribe(&mut admin, &["book.*", "sys.stats"]).await["op"], "subscribed");
    assert_eq!(
        metric(addr, "tickfan_connections_refused_total{reason=\"unauthorized\"}").await,
        2.0
    );
    assert_eq!(metric(addr, "tickfan_requests_rejected_total{code=\"forbidden\"}").await, 4.0);
}

#[tokio::test]
async fn hs256_tokens_are_checked_and_close_the_connection_when_they_expire() {
    let gw = start_gateway_with(|c| c.jwt_secret = Some(SECRET.into()));
    let addr = gw.local_addr();
    let now = unix_now();
    let good = hs256(json!({"sub":"alice","exp":now + 600,"channels":["trades.*"]}), SECRET);
    let header = |t: &str| format!("Authorization: Bearer {t}\r\n");
    assert_eq!(handshake_from("127.0.0.1", addr, &header(&good)).await.0, 101);
    let cases = [
        (
            hs256(
                json!({"exp":now + 600,"channels":["*"]}),
                "another-secret-of-32-bytes-or-more!!",
            ),
            "invalid token",
        ),
        (hs256(json!({"exp":now - 60,"channels":["*"]}), SECRET), "token expired"),
        (hs256(json!({"exp":now + 600}), SECRET), "invalid token"),
        (hs256(json!({"exp":now + 600,"channels":["tickers.*"]}), SECRET), "channels claim"),
        (hs256(json!({"channels":["*"]}), SECRET), "invalid token"),
        ("not.a.token".to_owned(), "invalid token"),
    ];
    for (token, why) in cases {
        let (status, _, head) = handshake_from("127.0.0.1", addr, &header(&token)).await;
        assert_eq!(status, 401, "{why}: {head}");
        assert!(head.contains(why), "{why}: {head}");
    }

    let mut c = Client::connect(addr, &format!("/ws?token={good}")).await;
    assert_eq!(subscribe(&mut c, &["trades.*"]).await["op"], "subscribed");
    assert_eq!(subscribe(&mut c, &["quotes.BTC-USD"]).await["code"], "forbidden");

    // A token that expires in 2 s: data until then, then 1008.
    let exp = unix_now() + 2;
    let short = hs256(json!({"exp":exp,"channels":["trades.*"]}), SECRET);
    let mut c = Client::connect(addr, &format!("/ws?token={short}")).await;
    assert_eq!(subscribe(&mut c, &["trades.*"]).await["op"], "subscribed");
    let mut data = 0;
    let close = loop {
        match c.recv().await {
            Msg::Text(..) => data += 1,
            Msg::Close(code, reason) => break (code, reason),
        }
    };
    assert_eq!(close, (1008, "credentials expired".to_owned()));
    assert!(data > 100, "data before the expiry: {data}");
    // Not before `exp` (the deadline heap is looked at every 50 ms).
    let closed_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    assert!(closed_at >= Duration::from_secs(exp), "closed at {closed_at:?}, exp {exp}");
    metric_reaches(addr, "tickfan_connections_closed_total{reason=\"expired\"}", 1.0).await;
}

#[tokio::test]
async fn eddsa_tokens_are_verified_with_the_public_key() {
    use ring::signature::KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    // SubjectPublicKeyInfo of an Ed25519 key: a fixed prefix, then the 32 key bytes.
    let mut spki = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    spki.extend_from_slice(pair.public_key().as_ref());
    use base64::Engine;
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&spki)
    );
    let dir = std::env::temp_dir().join(format!("tickfan-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jwt.pub.pem");
    std::fs::write(&path, pem).unwrap();
    let gw = start_gateway_with(|c| c.jwt_public_key = Some(path.clone()));
    let addr = gw.local_addr();
    let claims = json!({"exp":unix_now() + 600,"channels":["book.BTC-USD"]});
    let key = EncodingKey::from_ed_der(pkcs8.as_ref());
    let token =
        jsonwebtoken::encode(&Header::new(jsonwebtoken::Algorithm::EdDSA), &claims, &key).unwrap();
    let mut c = Client::connect(addr, &format!("/ws?token={token}")).await;
    assert_eq!(subscribe(&mut c, &["book.BTC-USD"]).await["op"], "subscribed");
    assert_eq!(subscribe(&mut c, &["book.ETH-USD"]).await["code"], "forbidden");
    // An HS256 token is refused by a gateway that verifies EdDSA.
    let hs = hs256(claims, SECRET);
    let (status, _, head) =
        handshake_from("127.0.0.1", addr, &format!("Authorization: Bearer {hs}\r\n")).await;
    assert_eq!(status, 401, "{head}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn foreign_origins_are_refused_and_programs_without_one_are_not() {
    let gw = start_gateway_with(|c| c.allowed_origins = vec!["https://app.example".into()]);
    let addr = gw.local_addr();
    let (status, _, _) = handshake_from("127.0.0.1", addr, "Origin: https://app.example\r\n").await;
    assert_eq!(status, 101);
    let (status, _, head) =
        handshake_from("127.0.0.1", addr, "Origin: https://evil.example\r\n").await;
    assert_eq!(status, 403, "{head}");
    assert!(head.contains("this Origin may not connect"), "{head}");
    assert_eq!(handshake_from("127.0.0.1", addr, "").await.0, 101);
    assert_eq!(metric(addr, "tickfan_connections_refused_total{reason=\"origin\"}").await, 1.0);
}

#[test]
fn bad_auth_configuration_is_a_startup_error() {
    let mut cfg = gateway::Config::for_tests();
    cfg.jwt_secret = Some("short".into());
    let err = gateway::Gateway::start(cfg).unwrap_err().to_string();
    assert!(err.contains("at least 32 bytes"), "{err}");
    let mut cfg = gateway::Config::for_tests();
    cfg.api_keys_inline = Some(format!("{KEY} trades.*,nonsense"));
    let err = gateway::Gateway::start(cfg).unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("nonsense"), "{err}");
}
