"""Binary data messages (``/ws?format=binary``; docs/protocol.md, "Binary data messages").

Trades, quotes and book updates as fixed little-endian fields, decoded here into the very
dict the gateway's JSON message would have parsed to, so that everything after (sequence
checks, books and their checksums, callbacks) is the same for both formats.
"""

from __future__ import annotations

import struct
from typing import Any, Sequence

TRADE, QUOTE, BOOK_UPDATE = 1, 2, 3
FLAG_ET = 1
_HEAD = struct.Struct("<BBIQQ")  # type, flags, symbol index, seq, ts (µs)
_U64 = struct.Struct("<Q")
_TRADE = struct.Struct("<QqqB")  # id, px, qty, side
_QUOTE = struct.Struct("<qqqq")  # bid, bsz, ask, asz
_BOOK = struct.Struct("<IHH")  # crc, bids, asks
_LEVEL = struct.Struct("<qq")  # px, qty


def decimal(mantissa: int, scale: int) -> str:
    """A mantissa as the gateway writes it: ``scale`` digits after the point (none for 0)."""
    digits = str(abs(mantissa))
    if scale == 0:
        out = digits
    elif len(digits) > scale:
        out = f"{digits[:-scale]}.{digits[-scale:]}"
    else:
        out = "0." + "0" * (scale - len(digits)) + digits
    return "-" + out if mantissa < 0 else out


def decode(data: bytes, instruments: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """One binary message as its JSON dict, or ``None`` when it is not one (too short or
    long, an unknown type, or a symbol ``instruments`` -- the ``symbols`` reply's list --
    does not have)."""
    try:
        kind, flags, sym, seq, ts = _HEAD.unpack_from(data, 0)
        if kind not in (TRADE, QUOTE, BOOK_UPDATE) or sym >= len(instruments):
            return None
        at = _HEAD.size
        inst = instruments[sym]
        ps, qs = inst["price_decimals"], inst["size_decimals"]
        name = {TRADE: "trades", QUOTE: "quotes", BOOK_UPDATE: "book"}[kind]
        # Keys in the JSON message's order: ch, seq, ts, et, then the body.
        msg: dict[str, Any] = {"ch": f"{name}.{inst['symbol']}", "seq": seq, "ts": ts}
        if flags & FLAG_ET:
            (msg["et"],) = _U64.unpack_from(data, at)
            at += _U64.size
        if kind == TRADE:
            trade_id, px, qty, side = _TRADE.unpack_from(data, at)
            at += _TRADE.size
            msg.update(id=trade_id, px=decimal(px, ps), qty=decimal(qty, qs))
            msg["side"] = "buy" if side == 0 else "sell"
        elif kind == QUOTE:
            bid, bsz, ask, asz = _QUOTE.unpack_from(data, at)
            at += _QUOTE.size
            msg.update(bid=decimal(bid, ps), bsz=decimal(bsz, qs))
            msg.update(ask=decimal(ask, ps), asz=decimal(asz, qs))
        else:
            crc, n_bids, n_asks = _BOOK.unpack_from(data, at)
            at += _BOOK.size
            levels = []
            for _ in range(n_bids + n_asks):
                px, qty = _LEVEL.unpack_from(data, at)
                at += _LEVEL.size
                levels.append([decimal(px, ps), decimal(qty, qs)])
            msg.update(type="update", bids=levels[:n_bids], asks=levels[n_bids:], crc=crc)
        return msg if at == len(data) else None
    except (struct.error, KeyError, TypeError):
        return None
