//! The RFC 6455 §7.4.1 close codes the gateway sends, as one type: every close the gateway
//! initiates names one of these, never a bare number (docs/protocol.md, "Close codes").

/// A close code the gateway sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: a normal close (echoing a client's close without a code).
    Normal,
    /// 1001: the server is going away (shutdown, maximum connection age).
    GoingAway,
    /// 1002: the client broke the WebSocket protocol.
    Protocol,
    /// 1007: a text message that is not UTF-8.
    InvalidData,
    /// 1008: the client broke a rule of this server (flood, slow consumer, expired credentials).
    Policy,
    /// 1009: a message larger than the server takes.
    TooBig,
    /// 1011: the server failed.
    Internal,
    /// 1013: the server is short of a shared resource (inbound memory): try again later.
    TryAgainLater,
}

impl CloseCode {
    /// The number on the wire.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::Protocol => 1002,
            CloseCode::InvalidData => 1007,
            CloseCode::Policy => 1008,
            CloseCode::TooBig => 1009,
            CloseCode::Internal => 1011,
            CloseCode::TryAgainLater => 1013,
        }
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.code())
    }
}
