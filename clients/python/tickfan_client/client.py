"""The tickfan WebSocket client: subscribe, check sequences, keep books, reconnect and resume.

The wire protocol is ``docs/protocol.md`` (v1). In short: every data message carries its
channel's ``seq``, which goes up by exactly one per message; a jump is only allowed when the
gateway declared it (a ``gap`` notice, a book ``snapshot``, ``resumed: false`` after a
reconnect, or a new ``epoch``). Anything else is counted as an undeclared gap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import websockets

from .binary import decode as decode_binary
from .book import BookError, OrderBook

log = logging.getLogger("tickfan_client")

#: Reconnect backoff: the first delay, and the most it doubles up to (seconds).
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0

#: Error codes of a subscribe that retrying cannot fix.
FATAL_ERRORS = frozenset({"unknown_channel", "bad_request", "forbidden", "too_many_channels"})

#: The counters :attr:`Client.counters` exposes, all starting at zero.
COUNTER_NAMES = (
    "messages",  # data messages accepted (duplicates excluded), snapshots included
    "reconnects",  # connections after the first that got their subscription confirmed
    "resumed_channels",  # channels a reconnect resumed exactly (`resumed: true`)
    "not_resumed_channels",  # channels a reconnect could not resume (`resumed: false`)
    "gaps_declared",  # discontinuities the gateway declared (reported to on_gap)
    "gaps_undeclared",  # seq jumps nothing explained (reported to on_gap as "undeclared")
    "duplicates",  # data messages dropped because their seq was not above the last one
    "crc_ok",  # book messages whose crc matched the book after applying them
    "crc_bad",  # book messages whose crc did not match (the channel is resubscribed)
)


@dataclass(frozen=True)
class Gap:
    """A discontinuity in a channel's sequence.

    ``reason`` is the gateway's (``slow_consumer``, ``conflated``, ``feed``,
    ``ring_overflow``), ``not_resumed`` or ``new_epoch`` after a reconnect, or ``undeclared``
    when the client saw a jump nothing explained. ``from_seq``..``to_seq`` (inclusive) are the
    missing seqs when known.
    """

    channel: str
    reason: str
    from_seq: int | None = None
    to_seq: int | None = None


class SubscribeError(Exception):
    """The gateway refused the subscription for a reason a retry cannot fix."""


PROTOCOL_VERSION = 2
"""The protocol version this client speaks, named in the URL (``?v=2``): a gateway that
serves another answers 400 instead of messages this client would misread."""


def with_version(url: str) -> str:
    """``url`` with ``v=PROTOCOL_VERSION`` in its query unless it names a version already."""
    if re.search(r"[?&]v=", url):
        return url
    return f"{url}{'&' if '?' in url else '?'}v={PROTOCOL_VERSION}"


class _Reconnect(Exception):
    """Internal: leave the current connection and reconnect at once."""


MessageHandler = Callable[[dict[str, Any]], None]
GapHandler = Callable[[Gap], None]
BookHandler = Callable[[str, OrderBook], None]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _wildcard_of(channel: str) -> str:
    """The wildcard covering ``channel``: ``book.BTC-USD@5`` -> ``book.*@5``."""
    return re.sub(r"^([^.]+)\.[^.@]+", r"\1.*", channel, count=1)


class Client:
    """A tickfan client subscribed to ``channels`` (exact names or wildcards such as ``trades.*``).

    Callbacks are plain functions called on the event loop, so keep them quick:

    - ``on_message(msg)``: every data message (a dict as parsed from the wire), in order,
      duplicates dropped;
    - ``on_gap(gap)``: every discontinuity, declared or not (a :class:`Gap`);
    - ``on_book(channel, book)``: after each ``book.*`` message applied and verified (the
      :class:`~tickfan_client.book.OrderBook` is the client's own: read it, don't keep it).

    ``await run()`` connects and keeps going, reconnecting (and resuming) on any disconnect,
    until ``await close()``; it raises :class:`SubscribeError` if the gateway refuses the
    channels themselves.
    """

    def __init__(
        self,
        url: str,
        channels: Sequence[str],
        *,
        on_message: MessageHandler | None = None,
        on_gap: GapHandler | None = None,
        on_book: BookHandler | None = None,
        binary: bool = False,
    ) -> None:
        if not channels:
            raise ValueError("at least one channel is needed")
        #: Trades, quotes and book updates come as binary messages (``?format=binary``).
        self.binary = binary
        if binary and not re.search(r"[?&]format=", url):
            url = f"{url}{'&' if '?' in url else '?'}format=binary"
        self.url = with_version(url)
        self.channels = list(channels)
        self.on_message = on_message
        self.on_gap = on_gap
        self.on_book = on_book
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)
        self._epoch: str | None = None
        self._last: dict[str, int] = {}  # last seq per exact channel
        self._books: dict[str, OrderBook] = {}  # books in step with the gateway
        self._outbox: list[dict[str, Any]] = []  # requests to send on the current connection
        self._next_id = 0
        self._subscribe_id: int | None = None  # id of the current connection's subscribe
        self._connections = 0  # connections whose subscription was confirmed
        self._instruments: list[dict[str, Any]] = []  # the `symbols` reply's, for binary
        self._saw_binary = False
        self._reconnect_now = False  # after a `shutdown` notice: no backoff
        self._leave = False  # leave this connection (for a snapshot a wildcard cannot give)
        self._closing = asyncio.Event()
        self._ws: Any = None
        self.feed_status: str | None = None  # last `status` notice: "live" or "stale"

    @property
    def counters(self) -> dict[str, int]:
        """A copy of the counters (see ``COUNTER_NAMES``)."""
        return dict(self._counters)

    @property
    def epoch(self) -> str | None:
        """The epoch of the last ``subscribed`` reply."""
        return self._epoch

    def book(self, channel: str) -> OrderBook | None:
        """The book of ``channel``, or ``None`` while there is none in step (no snapshot yet)."""
        return self._books.get(channel)

    # -- connection loop ----------------------------------------------------------------

    async def run(self) -> None:
        """Connects, subscribes and reads until :meth:`close`, reconnecting on any disconnect.

        Backoff between attempts: 0.1 s doubling up to 5 s, with jitter; none after a
        ``shutdown`` notice. Every reconnect resumes with the epoch and the last seqs.
        """
        delay = BACKOFF_FIRST
        while not self._closing.is_set():
            confirmed_before = self._connections
            try:
                async with websockets.connect(
                    self.url, open_timeout=10, close_timeout=1, max_size=2**22
                ) as ws:
                    self._ws = ws
                    if self._closing.is_set():
                        break
                    await self._session(ws)
            except (SubscribeError, websockets.exceptions.InvalidURI):
                raise
            except _Reconnect:
                pass
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as e:
                log.info("connection to %s ended: %s", self.url, e or type(e).__name__)
            finally:
                self._ws = None
            if self._closing.is_set():
                break
            if self._reconnect_now:
                self._reconnect_now = False
                delay = BACKOFF_FIRST
                continue
            if self._connections > confirmed_before:  # that connection worked: start over
                delay = BACKOFF_FIRST
            await self._sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, BACKOFF_MAX)

    async def close(self) -> None:
        """Stops :meth:`run`: closes the connection, and no reconnect follows."""
        self._closing.set()
        ws = self._ws
        if ws is not None:
            await ws.close()

    async def _sleep(self, seconds: float) -> None:
        """Sleeps ``seconds``, or less if :meth:`close` is called meanwhile."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _session(self, ws: Any) -> None:
        """One connection: subscribe (resuming what we have), then read until it ends."""
        self._outbox.clear()
        self._leave = False
        if self.binary:
            # Binary messages name their symbol by its index in this reply (which comes first).
            await ws.send(json.dumps({"op": "symbols", "id": "instruments"}))
        request = self._subscribe_request()
        self._subscribe_id = request["id"]
        await ws.send(json.dumps(request))
        async for raw in ws:
            if isinstance(raw, bytes):
                self.handle_binary(raw)
            else:
                self.handle_text(raw)
            while self._outbox:
                await ws.send(json.dumps(self._outbox.pop(0)))
            if self._reconnect_now or self._leave:
                self._leave = False
                raise _Reconnect()

    def _request_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _subscribe_request(self) -> dict[str, Any]:
        """The subscribe of a new connection: every channel, resuming every seq we hold.

        A book is resumed only while it is in step; one waiting for a snapshot is left out,
        so the gateway starts it again with one.
        """
        request: dict[str, Any] = {
            "op": "subscribe",
            "id": self._request_id(),
            "channels": self.channels,
        }
        resume = {
            ch: seq
            for ch, seq in self._last.items()
            if not ch.startswith("book.") or ch in self._books
        }
        if resume and self._epoch is not None:
            request["epoch"] = self._epoch
            request["resume"] = resume
        return request

    # -- message handling (no I/O: requests go to the outbox) ---------------------------

    def handle_text(self, text: str) -> None:
        """Handles one text frame from the gateway. Bad input is logged, never raised."""
        try:
            msg = json.loads(text)
        except ValueError:
            log.warning("ignoring a frame that is not JSON: %.200s", text)
            return
        if not isinstance(msg, dict):
            log.warning("ignoring a frame that is not a JSON object: %.200s", text)
            return
        self._handle_logged(msg, text)

    def handle_binary(self, data: bytes) -> None:
        """Handles one binary frame: decoded into the JSON message it stands for, then as that."""
        msg = decode_binary(data, self._instruments) if self.binary else None
        if msg is None:
            log.warning("ignoring a binary frame that is not a data message (%d bytes)", len(data))
            return
        if not self._saw_binary:
            self._saw_binary = True
            log.info("receiving binary data messages")
        self._handle_logged(msg, msg)

    def _handle_logged(self, msg: dict[str, Any], shown: Any) -> None:
        """:meth:`handle`, logging (as ``shown``) what it cannot handle; only a refused
        subscription is raised."""
        try:
            self.handle(msg)
        except SubscribeError:
            raise
        except Exception:  # a bug or a message of an unexpected shape: log, keep going
            log.exception("could not handle %.200s", shown)

    def handle(self, msg: dict[str, Any]) -> None:
        """Handles one parsed message: a reply or notice (``op``) or a data message (``ch``)."""
        op = msg.get("op")
        if op is None:
            self._on_data(msg)
        elif op == "subscribed":
            self._on_subscribed(msg)
        elif op == "gap":
            self._on_gap_notice(msg)
        elif op == "shutdown":
            log.info("gateway shutting down (%s): reconnecting now", msg.get("reason"))
            self._reconnect_now = True
        elif op == "status":
            self.feed_status = msg.get("feed")
            log.info("feed is %s", self.feed_status)
        elif op == "error":
            self._on_error(msg)
        elif op == "symbols" and isinstance(msg.get("instruments"), list):
            self._instruments = msg["instruments"]
        # pong, unsubscribed, list and unknown ops need nothing.

    def _on_subscribed(self, msg: dict[str, Any]) -> None:
        epoch = msg.get("epoch")
        if self._subscribe_id is not None and msg.get("id") == self._subscribe_id:
            self._subscribe_id = None
            self._connections += 1
            if self._connections > 1:
                self._counters["reconnects"] += 1
        new_epoch = self._epoch is not None and epoch != self._epoch
        if new_epoch:
            # Another run of the seqs: nothing we hold means anything any more.
            for ch in sorted(set(self._last) | set(self._books)):
                self._declare(Gap(ch, "new_epoch"))
            self._last.clear()
            self._books.clear()
        if isinstance(epoch, str):
            self._epoch = epoch
        resumed = msg.get("resumed")
        if not isinstance(resumed, dict):
            return
        for ch, ok in resumed.items():
            if ok is True:
                self._counters["resumed_channels"] += 1
                continue
            self._counters["not_resumed_channels"] += 1
            if not new_epoch and ch in self._last:
                self._declare(Gap(ch, "not_resumed", self._last[ch] + 1, None))
            self._last.pop(ch, None)
            self._books.pop(ch, None)

    def _on_gap_notice(self, msg: dict[str, Any]) -> None:
        ch, start, end = msg.get("ch"), msg.get("from"), msg.get("to")
        if not (isinstance(ch, str) and _is_int(start) and _is_int(end)):
            log.warning("ignoring a malformed gap notice: %s", msg)
            return
        last = self._last.get(ch)
        if last is not None and start > last + 1:
            self._undeclared(ch, last + 1, start - 1)
        if last is None or end > last:
            self._last[ch] = end
        self._declare(Gap(ch, str(msg.get("reason", "unknown")), start, end))
        if ch.startswith("book."):
            self._resync(ch)  # a book with a hole is wrong until a snapshot

    def _on_error(self, msg: dict[str, Any]) -> None:
        code = msg.get("code")
        log.warning("gateway error %s: %s", code, msg.get("msg"))
        if msg.get("id") == self._subscribe_id and code in FATAL_ERRORS:
            raise SubscribeError(f"{code}: {msg.get('msg')}")

    def _on_data(self, msg: dict[str, Any]) -> None:
        ch, seq = msg.get("ch"), msg.get("seq")
        if not (isinstance(ch, str) and _is_int(seq)):
            log.warning("ignoring a message without ch and seq: %.200s", msg)
            return
        is_book = ch.startswith("book.")
        snapshot = is_book and msg.get("type") == "snapshot"
        last = self._last.get(ch)
        if last is not None and not snapshot:  # a snapshot always starts the channel again
            if seq <= last:
                self._counters["duplicates"] += 1
                return
            if seq != last + 1:
                self._undeclared(ch, last + 1, seq - 1)
        self._last[ch] = seq
        self._counters["messages"] += 1
        self._call(self.on_message, msg)
        if is_book:
            self._on_book_message(ch, msg, snapshot)

    def _on_book_message(self, ch: str, msg: dict[str, Any], snapshot: bool) -> None:
        if snapshot:
            self._books[ch] = OrderBook()
        book = self._books.get(ch)
        if book is None:
            return  # out of step: waiting for the snapshot a resubscribe brings
        try:
            book.apply(msg)
        except BookError as e:
            log.warning("%s seq %s: cannot apply (%s): resubscribing", ch, msg.get("seq"), e)
            self._resync(ch)
            return
        if book.checksum() != msg.get("crc"):
            self._counters["crc_bad"] += 1
            log.warning("%s seq %s: checksum mismatch: resubscribing", ch, msg.get("seq"))
            self._resync(ch)
            return
        self._counters["crc_ok"] += 1
        self._call(self.on_book, ch, book)

    def _resync(self, ch: str) -> None:
        """Drops the book of ``ch`` and asks for a fresh snapshot.

        A channel subscribed by name is unsubscribed and subscribed again on this connection.
        One covered by a wildcard cannot be (the wildcard keeps it streaming), so the
        client reconnects instead, leaving that book out of the resume.
        """
        if self._books.pop(ch, None) is None:
            return  # already waiting for a snapshot
        if ch in self.channels and _wildcard_of(ch) not in self.channels:
            self._outbox.append({"op": "unsubscribe", "id": self._request_id(), "channels": [ch]})
            self._outbox.append({"op": "subscribe", "id": self._request_id(), "channels": [ch]})
        else:
            self._leave = True  # with the usual backoff, in case the books never agree

    def _undeclared(self, ch: str, start: int, end: int) -> None:
        self._counters["gaps_undeclared"] += 1
        log.warning("%s: seqs %d..%d missing without a gap notice", ch, start, end)
        self._call(self.on_gap, Gap(ch, "undeclared", start, end))

    def _declare(self, gap: Gap) -> None:
        self._counters["gaps_declared"] += 1
        self._call(self.on_gap, gap)

    @staticmethod
    def _call(callback: Callable[..., None] | None, *args: Any) -> None:
        """Calls a user callback; an exception in it is logged, not propagated."""
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("callback %r failed", callback)
