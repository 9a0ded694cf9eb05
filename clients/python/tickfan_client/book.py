"""An L2 order book as a client keeps it from ``book.<SYM>`` messages, and its checksum.

Prices and sizes stay the exact decimal strings of the wire (the checksum is computed over
them); levels are ordered numerically through :class:`decimal.Decimal`. See
``docs/protocol.md``, "Order books" and "Book checksum".
"""

from __future__ import annotations

import zlib
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable

#: A level as the wire writes it: ``(price, size)``, both decimal strings.
Level = tuple[str, str]

#: Levels per side that the checksum covers.
CHECKSUM_DEPTH = 10


class BookError(ValueError):
    """A book message that cannot be applied (missing sides, malformed levels or numbers)."""


def _number(text: Any) -> Decimal:
    """``text`` as a finite Decimal, or :class:`BookError`."""
    if not isinstance(text, str):
        raise BookError(f"not a decimal string: {text!r}")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise BookError(f"not a decimal string: {text!r}") from None
    if not value.is_finite():
        raise BookError(f"not a finite decimal: {text!r}")
    return value


def checksum(bids: Iterable[Level], asks: Iterable[Level]) -> int:
    """The protocol's checksum of a book whose sides are given best first.

    The best 10 bids and 10 asks are interleaved (bid 1, ask 1, bid 2, ask 2, ...; a shorter
    side just stops contributing), each written ``price:size`` with the wire's strings, all
    joined with ``:``; the result is zlib's CRC-32 of that ASCII string (0 for an empty book).
    """
    top_bids = list(bids)[:CHECKSUM_DEPTH]
    top_asks = list(asks)[:CHECKSUM_DEPTH]
    parts: list[str] = []
    for i in range(CHECKSUM_DEPTH):
        for side in (top_bids, top_asks):
            if i < len(side):
                parts.extend(side[i])
    # The wire strings are ASCII; UTF-8 only keeps a malformed one from raising here.
    return zlib.crc32(":".join(parts).encode("utf-8"))


class OrderBook:
    """Both sides of one book, keyed by numeric price, keeping the wire strings."""

    def __init__(self) -> None:
        self._bids: dict[Decimal, Level] = {}
        self._asks: dict[Decimal, Level] = {}

    def apply(self, msg: dict[str, Any]) -> None:
        """Applies a ``snapshot`` (replacing everything) or an ``update`` message.

        In an update a level sets its price's size, or removes the price when the size is
        zero. Raises :class:`BookError` on a malformed message; the book is then unchanged.
        """
        changes = [self._parse_side(msg, "bids"), self._parse_side(msg, "asks")]
        if msg.get("type") == "snapshot":
            self._bids.clear()
            self._asks.clear()
        for book, levels in zip((self._bids, self._asks), changes):
            for key, level, remove in levels:
                if remove:
                    book.pop(key, None)
                else:
                    book[key] = level

    @staticmethod
    def _parse_side(msg: dict[str, Any], side: str) -> list[tuple[Decimal, Level, bool]]:
        """The levels of ``msg[side]``, validated: ``(price key, level, is removal)``."""
        levels = msg.get(side)
        if not isinstance(levels, list):
            raise BookError(f"{side!r} is not a list")
        out = []
        for level in levels:
            if not (isinstance(level, list) and len(level) == 2):
                raise BookError(f"bad level in {side!r}: {level!r}")
            px, qty = level
            size = _number(qty)
            out.append((_number(px), (px, qty), size == 0))
        return out

    def bids(self, depth: int | None = None) -> list[Level]:
        """Bids, best (highest) first; the best ``depth`` of them if given."""
        return [self._bids[k] for k in sorted(self._bids, reverse=True)[:depth]]

    def asks(self, depth: int | None = None) -> list[Level]:
        """Asks, best (lowest) first; the best ``depth`` of them if given."""
        return [self._asks[k] for k in sorted(self._asks)[:depth]]

    def best_bid(self) -> Level | None:
        """The highest bid, or ``None`` when there are no bids."""
        return self._bids[max(self._bids)] if self._bids else None

    def best_ask(self) -> Level | None:
        """The lowest ask, or ``None`` when there are no asks."""
        return self._asks[min(self._asks)] if self._asks else None

    def checksum(self) -> int:
        """This book's checksum (see :func:`checksum`), to compare with a message's ``crc``."""
        return checksum(self.bids(CHECKSUM_DEPTH), self.asks(CHECKSUM_DEPTH))

    def __len__(self) -> int:
        return len(self._bids) + len(self._asks)

    def __repr__(self) -> str:
        return f"OrderBook(bids={self.bids(3)}..., asks={self.asks(3)}...)"
