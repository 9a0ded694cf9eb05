//! The protocol's operations, one function each (docs/protocol.md, "Client → server"): what a
//! valid request does to its connection and what it answers. `conn` decodes the frames and
//! hands each parsed request here; a refusal comes back as a [`Rejection`] for it to send.

use serde_json::json;
use tickfan_proto::{
    unix_now_ns, ChannelId, ChannelSpec, ErrorCode, ParseChannelError, SymbolTable,
};

use crate::auth::Grants;
use crate::channels::ConnKey;
use crate::fanout::{Subscribed, SYS_STATS};
use crate::protocol::{self, Op, Rejection, Request, Resume};
use crate::worker::WorkerCtx;

/// What an operation answers: a reply to queue, `None` when it queued its own (`subscribe`,
/// whose reply must precede its first data), or the refusal.
pub type Outcome = Result<Option<Vec<u8>>, Rejection>;

/// Applies `req` for connection `key`, whose credentials grant `grants` (`None`: auth is off).
pub fn apply(ctx: &WorkerCtx, key: ConnKey, grants: Option<&Grants>, req: Request) -> Outcome {
    let Request { id, op } = req;
    match op {
        Op::Subscribe { channels, resume } => subscribe(ctx, key, grants, id, channels, resume),
        Op::Unsubscribe { channels } => unsubscribe(ctx, key, id, channels),
        Op::List => {
            let names = ctx.shard.borrow().subscription_names(key);
            Ok(Some(protocol::reply("list", &id, json!({ "channels": names }))))
        }
        Op::Symbols => {
            let names: Vec<&str> = ctx.symbols.iter().map(|s| s.name.as_str()).collect();
            let market = ctx.shard.borrow().market().clone();
            let instruments: Vec<serde_json::Value> = ctx
                .symbols
                .iter()
                .enumerate()
                .map(|(i, s)| instrument(s, market.is_halted(i as u32)))
                .collect();
            let fields = json!({ "symbols": names, "instruments": instruments });
            Ok(Some(protocol::reply("symbols", &id, fields)))
        }
        Op::Ping => Ok(Some(protocol::pong(&id, unix_now_ns()))),
    }
}

type Id = Option<serde_json::Value>;

/// What `symbols` says of one instrument: its assets (from its name, `BASE-QUOTE`), the
/// decimals of its prices and sizes and the steps they make, and whether it trades.
fn instrument(s: &tickfan_proto::Symbol, halted: bool) -> serde_json::Value {
    let (base, quote) = s.name.split_once('-').unwrap_or((&s.name, ""));
    let step = |scale: u8| {
        let mut out = Vec::new();
        tickfan_proto::decimal::write_decimal(&mut out, 1, scale);
        String::from_utf8(out).unwrap_or_default()
    };
    json!({
        "symbol": s.name,
        "base": base,
        "quote": quote,
        "price_decimals": s.px_scale,
        "size_decimals": s.qty_scale,
        "tick_size": step(s.px_scale),
        "lot_size": step(s.qty_scale),
        "status": if halted { "halted" } else { "trading" },
    })
}

/// `subscribe`: all the channels or none; the reply (with the resume outcomes) is queued before
/// the channels' first messages.
fn subscribe(
    ctx: &WorkerCtx,
    key: ConnKey,
    grants: Option<&Grants>,
    id: Id,
    channels: Vec<String>,
    resume: Option<Resume>,
) -> Outcome {
    let symbols = &ctx.symbols;
    let Channels { specs, stats } = channels_granted(ctx, grants, &channels, &id)?;
    let resume = resolve_resume(symbols, &specs, resume, &id)?;
    let mut shard = ctx.shard.borrow_mut();
    let Some(after) = shard.subscriptions_with(key, &specs) else { return Ok(None) };
    let max = ctx.cfg.max_channels;
    if after > max {
        let msg = format!("at most {max} channels per connection; unsubscribe some first");
        return Err(Rejection::new(id, ErrorCode::TooManyChannels, msg));
    }
    if stats {
        shard.set_stats(key, true);
    }
    let epoch = shard.market().epoch().to_owned();
    let reply = subscribed_reply(symbols, &specs, stats, epoch, id);
    shard.subscribe(key, &specs, &resume.seqs, resume.epoch.as_deref(), reply);
    Ok(None)
}

/// The channels of a request, resolved and checked against the connection's grants.
#[derive(Debug)]
pub struct Channels {
    pub specs: Vec<ChannelSpec>,
    /// `sys.stats` is among them.
    pub stats: bool,
}

/// Resolves `channels` (all or nothing) and checks them against `grants` (`None`: auth is
/// off) and, for a stream opened with them at once (`?streams=` of `/sse`), against
/// `--max-channels`.
pub fn channels_granted(
    ctx: &WorkerCtx,
    grants: Option<&Grants>,
    channels: &[String],
    id: &Id,
) -> Result<Channels, Rejection> {
    let (stats, channels) = take_sys_stats(channels.to_vec());
    let specs = resolve(&ctx.symbols, &channels, id)?;
    if let Some(grants) = grants {
        check_grants(grants, &ctx.symbols, &specs, stats, id)?;
    }
    let max = ctx.cfg.max_channels;
    if specs.len() > max {
        let msg = format!("at most {max} channels per connection");
        return Err(Rejection::new(id.clone(), ErrorCode::TooManyChannels, msg));
    }
    Ok(Channels { specs, stats })
}

/// The `subscribed` reply of a subscribe to `specs` (and `sys.stats`), given its resume
/// outcomes.
pub fn subscribed_reply<'a>(
    symbols: &'a SymbolTable,
    specs: &[ChannelSpec],
    stats: bool,
    epoch: String,
    id: Id,
) -> impl FnOnce(&Subscribed) -> Vec<u8> + 'a {
    let names = names(symbols, specs, stats);
    move |done: &Subscribed| {
        let mut fields = json!({ "channels": names, "epoch": epoch });
        if !done.resumed.is_empty() {
            let resumed: serde_json::Map<String, serde_json::Value> = done
                .resumed
                .iter()
                .map(|&(ch, ok)| (symbols.channel_name(ch), ok.into()))
                .collect();
            fields["resumed"] = resumed.into();
        }
        protocol::reply("subscribed", &id, fields)
    }
}

/// `unsubscribe`: channels not subscribed are ignored; the reply names what was asked.
fn unsubscribe(ctx: &WorkerCtx, key: ConnKey, id: Id, channels: Vec<String>) -> Outcome {
    let (stats, channels) = take_sys_stats(channels);
    let specs = resolve(&ctx.symbols, &channels, &id)?;
    let mut shard = ctx.shard.borrow_mut();
    shard.unsubscribe(key, &specs);
    if stats {
        shard.set_stats(key, false);
    }
    let names = names(&ctx.symbols, &specs, stats);
    Ok(Some(protocol::reply("unsubscribed", &id, json!({ "channels": names }))))
}

/// The names of a request's channels as the client wrote them, `sys.stats` last.
fn names(symbols: &SymbolTable, specs: &[ChannelSpec], stats: bool) -> Vec<String> {
    let mut names: Vec<String> = specs.iter().map(|&s| symbols.spec_name(s)).collect();
    if stats {
        names.push(SYS_STATS.to_owned());
    }
    names
}

/// Refuses a subscription outside the connection's grants (all or nothing).
fn check_grants(
    grants: &Grants,
    symbols: &SymbolTable,
    specs: &[ChannelSpec],
    sys_stats: bool,
    id: &Id,
) -> Result<(), Rejection> {
    let mut denied =
        specs.iter().filter(|&&s| !grants.allows(symbols, s)).map(|&s| symbols.spec_name(s));
    let first = denied
        .next()
        .or_else(|| (sys_stats && !grants.allows_sys_stats()).then(|| SYS_STATS.to_owned()));
    match first {
        None => Ok(()),
        Some(name) => {
            let shown: String = name.chars().take(64).collect();
            let hint = if name.ends_with(".*") {
                " (a wildcard needs a grant of its whole kind)"
            } else {
                ""
            };
            Err(Rejection::new(
                id.clone(),
                ErrorCode::Forbidden,
                format!("your credentials do not grant {shown}{hint}"),
            ))
        }
    }
}

/// Splits `sys.stats` (which is not a market channel) out of a request's channel list.
fn take_sys_stats(channels: Vec<String>) -> (bool, Vec<String>) {
    let before = channels.len();
    let rest: Vec<String> = channels.into_iter().filter(|c| c != SYS_STATS).collect();
    (rest.len() < before, rest)
}

/// A subscribe's resume request, resolved: the channels and their last seqs.
#[derive(Debug, Default)]
struct ResolvedResume {
    epoch: Option<String>,
    seqs: Vec<(ChannelId, u64)>,
}

/// Checks that every channel of `resume` is a concrete channel the request subscribes to.
fn resolve_resume(
    symbols: &SymbolTable,
    specs: &[ChannelSpec],
    resume: Option<Resume>,
    id: &Option<serde_json::Value>,
) -> Result<ResolvedResume, Rejection> {
    let Some(resume) = resume else { return Ok(ResolvedResume::default()) };
    let mut seqs = Vec::with_capacity(resume.seqs.len());
    for (name, seq) in resume.seqs {
        let shown: String = name.chars().take(64).collect();
        let ch = match symbols.parse_channel(&name) {
            Ok(ChannelSpec::Exact(ch)) => ch,
            Ok(ChannelSpec::Wildcard(_)) => {
                return Err(Rejection::new(
                    id.clone(),
                    ErrorCode::BadRequest,
                    format!("resume names channels, not wildcards: {shown}"),
                ))
            }
            Err(_) => {
                return Err(Rejection::new(
                    id.clone(),
                    ErrorCode::UnknownChannel,
                    format!("no such channel in resume: {shown}"),
                ))
            }
        };
        let requested = specs.iter().any(|s| match *s {
            ChannelSpec::Exact(c) => c == ch,
            ChannelSpec::Wildcard(kind) => kind == ch.kind(),
        });
        if !requested {
            return Err(Rejection::new(
                id.clone(),
                ErrorCode::BadRequest,
                format!("{shown} is in resume but not in channels"),
            ));
        }
        seqs.push((ch, seq));
    }
    Ok(ResolvedResume { epoch: resume.epoch, seqs })
}

/// Resolves channel names (all or nothing), dropping duplicates but keeping order.
fn resolve(
    symbols: &SymbolTable,
    names: &[String],
    id: &Option<serde_json::Value>,
) -> Result<Vec<ChannelSpec>, Rejection> {
    let mut specs: Vec<ChannelSpec> = Vec::with_capacity(names.len());
    for name in names {
        let spec = symbols.parse_channel(name).map_err(|e| {
            let shown: String = name.chars().take(64).collect();
            let msg = match e {
                ParseChannelError::UnknownSymbol => format!("no such channel: {shown}"),
                ParseChannelError::Malformed => format!("malformed channel name {shown:?}: {e}"),
                ParseChannelError::BadBookForm => format!("no such book form: {shown}: {e}"),
            };
            Rejection::new(id.clone(), ErrorCode::UnknownChannel, msg)
        })?;
        if !specs.contains(&spec) {
            specs.push(spec);
        }
    }
    Ok(specs)
}
