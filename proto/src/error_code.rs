//! Stable error codes of `{"op":"error","code":…}` replies. Clients match on these strings;
//! renaming one is a breaking change (protocol v2).

/// Why a client request was refused. The connection stays open after every one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The text message is not valid JSON, or not a JSON object.
    MalformedJson,
    /// A field is missing or has the wrong type (e.g. `channels` not an array of strings).
    BadRequest,
    /// `op` names no operation of this protocol version.
    UnknownOp,
    /// A channel name is malformed or names a symbol that is not traded here.
    UnknownChannel,
    /// The subscription would exceed the per-connection channel limit.
    TooManyChannels,
    /// The message exceeds the maximum inbound message size.
    MessageTooLarge,
    /// Too many requests per second from this connection.
    RateLimited,
    /// A binary frame was sent; this protocol speaks JSON text frames only.
    BinaryFrame,
    /// The connection's credentials do not grant this channel (auth is on).
    Forbidden,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::MalformedJson,
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::UnknownChannel,
        ErrorCode::TooManyChannels,
        ErrorCode::MessageTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::BinaryFrame,
        ErrorCode::Forbidden,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::UnknownChannel => "unknown_channel",
            ErrorCode::TooManyChannels => "too_many_channels",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BinaryFrame => "binary_frame",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}
