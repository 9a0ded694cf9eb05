//! Who may connect, and to which channels (docs/operations.md, "Authentication"). Off unless
//! API keys or a JWT key are configured. A client presents one credential at its WebSocket
//! handshake, as `Authorization: Bearer <credential>` or `?token=<credential>`:
//!
//! - an **API key**, listed with its channel grants in `--api-keys FILE` (or
//!   `TICKFAN_API_KEYS`), one per line: `KEY PATTERN[,PATTERN…]`, or `sha256:HEX
//!   PATTERN[,PATTERN…]` with the key's SHA-256 instead of the key. Keys are kept and looked up
//!   by their SHA-256 only, so no comparison ever runs over a key's own bytes (no timing to
//!   learn it from) and the process holds no key;
//! - a **JWT**, signed with `--jwt-secret` (HS256) or the private half of `--jwt-public-key`
//!   (EdDSA or RS256), with an `exp` and a `channels` claim listing its grants.
//!
//! A grant pattern is `*` (everything), `KIND.*`, `*.SYM`, `KIND.SYM` or `sys.stats`. A
//! subscription outside the grants gets `{"op":"error","code":"forbidden"}`; a wildcard
//! subscription (`trades.*`) needs a grant of its whole kind. A JWT's connection is closed with
//! 1008 when the token expires.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tickfan_proto::{ChannelSpec, Kind, SymbolTable};

/// One grant: the channels it covers. `None` is "any".
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    /// `kind` is a channel-name prefix (`candles` grants every candle interval).
    Channels {
        kind: Option<&'static str>,
        symbol: Option<String>,
    },
    SysStats,
}

impl Pattern {
    fn parse(s: &str) -> Result<Pattern, GrantError> {
        let s = s.trim();
        if s == "*" {
            return Ok(Pattern::Channels { kind: None, symbol: None });
        }
        if s == "sys.stats" {
            return Ok(Pattern::SysStats);
        }
        let bad = || GrantError::Pattern(s.to_owned());
        let (kind, symbol) = s.split_once('.').ok_or_else(bad)?;
        let kind = match kind {
            "*" => None,
            k => Some(Kind::ALL.iter().map(|k| k.as_str()).find(|p| *p == k).ok_or_else(bad)?),
        };
        let symbol = match symbol {
            "" => return Err(bad()),
            "*" => None,
            sym => Some(sym.to_owned()),
        };
        Ok(Pattern::Channels { kind, symbol })
    }
}

/// What one credential may subscribe to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grants(Vec<Pattern>);

impl Grants {
    /// Parses comma-separated (or listed) patterns.
    pub fn parse<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<Grants, GrantError> {
        let patterns: Vec<Pattern> = patterns
            .into_iter()
            .filter(|p| !p.trim().is_empty())
            .map(Pattern::parse)
            .collect::<Result<_, _>>()?;
        if patterns.is_empty() {
            return Err(GrantError::Empty);
        }
        Ok(Grants(patterns))
    }

    /// Whether `spec` may be subscribed to.
    pub fn allows(&self, symbols: &SymbolTable, spec: ChannelSpec) -> bool {
        let (want_kind, want_symbol) = match spec {
            ChannelSpec::Exact(ch) => (ch.kind(), Some(symbols.get(ch.sym()).name.as_str())),
            ChannelSpec::Wildcard(kind) => (kind, None),
        };
        self.0.iter().any(|p| match p {
            Pattern::SysStats => false,
            Pattern::Channels { kind, symbol } => {
                kind.is_none_or(|k| k == want_kind.as_str())
                    && match (symbol, want_symbol) {
                        (None, _) => true,
                        (Some(s), Some(want)) => s == want,
                        (Some(_), None) => false, // a wildcard needs its whole kind
                    }
            }
        })
    }

    /// Whether `sys.stats` may be subscribed to.
    pub fn allows_sys_stats(&self) -> bool {
        self.0.iter().any(|p| {
            matches!(p, Pattern::SysStats | Pattern::Channels { kind: None, symbol: None })
        })
    }
}

/// A client the handshake admitted: what it may subscribe to, and until when (Unix seconds).
#[derive(Clone, Debug)]
pub struct Admitted {
    pub grants: Arc<Grants>,
    pub expires: Option<u64>,
    /// Who, for the logs: the key's label or the token's `sub`.
    pub who: String,
}

/// A grant list that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    #[error("grant {0:?}: expected *, KIND.*, *.SYMBOL, KIND.SYMBOL or sys.stats")]
    Pattern(String),
    #[error("no channel is granted")]
    Empty,
}

/// Auth settings that cannot be used (a startup error).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("API keys, line {line}: expected KEY PATTERN[,PATTERN…]")]
    KeyLine { line: usize },
    #[error("API keys, line {line}: a key has at least 16 characters")]
    ShortKey { line: usize },
    #[error("API keys, line {line}: sha256: is followed by 64 hexadecimal digits")]
    BadDigest { line: usize },
    #[error("API keys, line {line}: {source}")]
    Grants { line: usize, source: GrantError },
    #[error("--api-keys: not UTF-8 text")]
    KeysNotText,
    #[error("--jwt-secret must have at least 32 bytes")]
    ShortSecret,
    #[error("--jwt-public-key is neither an Ed25519 nor an RSA public key in PEM")]
    PublicKey,
    #[error("give --jwt-secret (HS256) or --jwt-public-key (EdDSA, RS256), not both")]
    TwoJwtKeys,
    #[error("{flag} {}: {source}", path.display())]
    Read { flag: &'static str, path: std::path::PathBuf, source: std::io::Error },
}

/// Why a handshake's credential was not accepted (answered 401 with this text).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("credentials required: send Authorization: Bearer <API key or JWT>, or ?token=")]
    Missing,
    #[error("unknown API key")]
    UnknownKey,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    InvalidToken(String),
}

/// The configured credentials. `None` of both: auth is off.
pub struct Authenticator {
    /// An API key's SHA-256 → its grants.
    keys: HashMap<[u8; 32], Arc<Grants>>,
    jwt: Option<(DecodingKey, Validation)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("api_keys", &self.keys.len())
            .field("jwt", &self.jwt.as_ref().map(|(_, v)| &v.algorithms))
            .finish()
    }
}

/// The claims tickfan reads from a JWT (others are ignored).
#[derive(Debug, Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    sub: Option<String>,
    channels: Vec<String>,
}

/// Where the JWT verification key comes from.
#[derive(Debug)]
pub enum JwtKey {
    /// HS256 with this shared secret.
    Secret(Vec<u8>),
    /// EdDSA or RS256 with this PEM public key.
    PublicPem(Vec<u8>),
}

impl Authenticator {
    /// Reads the API keys (`KEY PATTERN[,PATTERN…]` per line; `#` comments) and the JWT key.
    /// `Ok(None)` when neither is given: auth is off.
    pub fn new(
        api_keys: Option<&str>,
        jwt: Option<JwtKey>,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Option<Authenticator>, ConfigError> {
        if api_keys.is_none() && jwt.is_none() {
            return Ok(None);
        }
        let mut keys = HashMap::new();
        for (n, line_text) in api_keys.unwrap_or_default().lines().enumerate() {
            let line_text = line_text.trim();
            if line_text.is_empty() || line_text.starts_with('#') {
                continue;
            }
            let line = n + 1;
            let (key, patterns) =
                line_text.split_once(char::is_whitespace).ok_or(ConfigError::KeyLine { line })?;
            let digest = match key.strip_prefix("sha256:") {
                Some(hex) => parse_digest(hex).ok_or(ConfigError::BadDigest { line })?,
                None if key.len() < 16 => return Err(ConfigError::ShortKey { line }),
                None => sha256(key),
            };
            let grants = Grants::parse(patterns.split(','))
                .map_err(|source| ConfigError::Grants { line, source })?;
            keys.insert(digest, Arc::new(grants));
        }
        let jwt = match jwt {
            None => None,
            Some(JwtKey::Secret(secret)) => {
                if secret.len() < 32 {
                    return Err(ConfigError::ShortSecret);
                }
                Some((DecodingKey::from_secret(&secret), Validation::new(Algorithm::HS256)))
            }
            Some(JwtKey::PublicPem(pem)) => {
                let (key, alg) = DecodingKey::from_ed_pem(&pem)
                    .map(|k| (k, Algorithm::EdDSA))
                    .or_else(|_| DecodingKey::from_rsa_pem(&pem).map(|k| (k, Algorithm::RS256)))
                    .map_err(|_| ConfigError::PublicKey)?;
                Some((key, Validation::new(alg)))
            }
        };
        let jwt = jwt.map(|(key, mut validation)| {
            // Valid until `exp` by this gateway's clock, which also closes the connection then.
            validation.leeway = 0;
            validation.set_required_spec_claims(&["exp"]);
            if let Some(iss) = issuer {
                validation.set_issuer(&[iss]);
            }
            match audience {
                Some(aud) => validation.set_audience(&[aud]),
                None => validation.validate_aud = false,
            }
            (key, validation)
        });
        Ok(Some(Authenticator { keys, jwt }))
    }

    /// Checks a handshake's credential (`None`: the client sent none).
    pub fn admit(&self, credential: Option<&str>) -> Result<Admitted, AuthError> {
        let credential = credential.map(str::trim).filter(|c| !c.is_empty());
        let credential = credential.ok_or(AuthError::Missing)?;
        if let Some(grants) = self.keys.get(&sha256(credential)) {
            let who = format!("key {}…", credential.chars().take(4).collect::<String>());
            return Ok(Admitted { grants: grants.clone(), expires: None, who });
        }
        let looks_like_jwt = credential.split('.').count() == 3;
        let Some((key, validation)) = self.jwt.as_ref().filter(|_| looks_like_jwt) else {
            return Err(AuthError::UnknownKey);
        };
        let claims = jsonwebtoken::decode::<Claims>(credential, key, validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::InvalidToken(e.to_string()),
            })?
            .claims;
        let grants = Grants::parse(claims.channels.iter().map(String::as_str))
            .map_err(|e| AuthError::InvalidToken(format!("channels claim: {e}")))?;
        let who = claims.sub.unwrap_or_else(|| "token".to_owned());
        Ok(Admitted { grants: Arc::new(grants), expires: Some(claims.exp), who })
    }
}

/// SHA-256 of an API key: how keys are kept and looked up.
fn sha256(key: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    digest.as_ref().try_into().expect("SHA-256 has 32 bytes")
}

/// 64 hexadecimal digits (either case) as 32 bytes.
fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// The credential of a handshake: `Authorization: Bearer …`, else `?token=…`.
pub fn credential<'a>(
    authorization: Option<&'a str>,
    token_param: Option<&'a str>,
) -> Option<&'a str> {
    authorization
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .or(token_param)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tickfan_proto::{ChannelId, Symbol};

    fn table() -> SymbolTable {
        let sym = |n: &str| Symbol { name: n.to_owned(), px_scale: 2, qty_scale: 4 };
        SymbolTable::new(vec![sym("BTC-USD"), sym("ETH-USD")])
    }

    #[test]
    fn grants_cover_exact_channels_and_whole_kinds_only() {
        let t = table();
        let g = Grants::parse(["trades.*", "book.BTC-USD", "*.ETH-USD"]).unwrap();
        let exact = |k, s| ChannelSpec::Exact(ChannelId::new(k, s));
        assert!(g.allows(&t, exact(Kind::Trades, 0)));
        assert!(g.allows(&t, ChannelSpec::Wildcard(Kind::Trades)));
        assert!(g.allows(&t, exact(Kind::Book, 0)));
        assert!(!g.allows(&t, exact(Kind::Quotes, 0)));
        assert!(g.allows(&t, exact(Kind::Quotes, 1)));
        assert!(!g.allows(&t, ChannelSpec::Wildcard(Kind::Book)), "book.* is not all granted");
        assert!(!g.allows_sys_stats());
        assert!(Grants::parse(["*"]).unwrap().allows_sys_stats());
        assert!(Grants::parse(["sys.stats"]).unwrap().allows_sys_stats());
        assert_eq!(Grants::parse(["tickers.*"]), Err(GrantError::Pattern("tickers.*".into())));
        let candles = Grants::parse(["candles.BTC-USD"]).unwrap();
        assert!(candles.allows(&t, exact(Kind::Candles1h, 0)), "every interval");
        assert!(!candles.allows(&t, exact(Kind::Ticker, 0)));
        assert_eq!(Grants::parse([" "]), Err(GrantError::Empty));
    }

    #[test]
    fn api_keys_are_read_with_clear_errors() {
        let keys = "# comment\n0123456789abcdef trades.*,quotes.BTC-USD\n\n";
        let auth = Authenticator::new(Some(keys), None, None, None).unwrap().unwrap();
        let ok = auth.admit(Some("0123456789abcdef")).unwrap();
        assert_eq!(ok.expires, None);
        assert_eq!(auth.admit(Some("nope")).unwrap_err(), AuthError::UnknownKey);
        assert_eq!(auth.admit(None).unwrap_err(), AuthError::Missing);
        let err = Authenticator::new(Some("short trades.*"), None, None, None).unwrap_err();
        assert!(matches!(err, ConfigError::ShortKey { line: 1 }), "{err}");
        let err = Authenticator::new(Some("0123456789abcdef"), None, None, None).unwrap_err();
        assert!(err.to_string().contains("expected KEY PATTERN"), "{err}");
        assert!(Authenticator::new(None, None, None, None).unwrap().is_none());
    }

    #[test]
    fn a_key_may_be_listed_by_its_sha256() {
        // printf %s 0123456789abcdef | sha256sum
        let digest = "9f9f5111f7b27a781f1f1ddde5ebc2dd2b796bfc7365c9c28b548e564176929f";
        assert_eq!(sha256("0123456789abcdef"), parse_digest(digest).unwrap());
        let keys = format!(
            "sha256:{} trades.*\nsha256:{} quotes.*",
            digest.to_uppercase(),
            "ab".repeat(32)
        );
        let auth = Authenticator::new(Some(&keys), None, None, None).unwrap().unwrap();
        let ok = auth.admit(Some("0123456789abcdef")).unwrap();
        assert!(ok.grants.allows(&SymbolTable::new(vec![]), ChannelSpec::Wildcard(Kind::Trades)));
        assert_eq!(auth.admit(Some(digest)).unwrap_err(), AuthError::UnknownKey, "not the key");
        for bad in ["sha256:abc trades.*", &format!("sha256:{}zz trades.*", "a".repeat(62))] {
            let err = Authenticator::new(Some(bad), None, None, None).unwrap_err();
            assert!(matches!(err, ConfigError::BadDigest { line: 1 }), "{err}");
        }
    }

    #[test]
    fn the_credential_comes_from_the_header_before_the_query() {
        assert_eq!(credential(Some("Bearer abc"), Some("def")), Some("abc"));
        assert_eq!(credential(None, Some("def")), Some("def"));
        assert_eq!(credential(Some("Basic xyz"), None), None);
    }
}
