//! Wire types of the tickfan protocol, v2: the one place where the tick model, channel names,
//! decimal prices and the JSON encoding of data messages are defined, so that `feed-sim`, the
//! `gateway` and the `bench` client never drift apart.
//!
//! What this crate is not: a transport. It knows nothing of WebSocket framing, sockets or NATS;
//! it turns ticks into the bytes of one JSON text message and back into names.
//!
//! The contract for client authors is `docs/protocol.md`; the encoders here are its reference
//! implementation.

pub mod binary;
pub mod book;
pub mod channel;
pub mod decimal;
pub mod encode;
pub mod error_code;
pub mod feed;
pub mod tick;

pub use book::L2Book;
pub use channel::{ChannelId, ChannelSpec, Kind, ParseChannelError, SymbolTable};
pub use error_code::ErrorCode;
pub use tick::{
    micros, ns_from_wire, unix_now_ns, BookDelta, Level, Quote, Side, Status, Symbol, Tick,
    TickBody, Trade,
};

/// Protocol version spoken by this crate. A breaking change to the wire format is a new version.
pub const PROTOCOL_VERSION: u32 = 2;
