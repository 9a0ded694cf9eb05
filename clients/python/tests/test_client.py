"""The client's sequence discipline and book checks, fed messages directly (no network)."""

import json
import unittest
import zlib

import struct

from tickfan_client import Client, Gap, decimal, decode_binary, with_version


def crc(text: str) -> int:
    return zlib.crc32(text.encode())


class Recorder:
    """A client on channels, recording what its callbacks get."""

    def __init__(self, channels=("trades.BTC-USD", "book.BTC-USD")):
        self.messages, self.gaps, self.books = [], [], []
        self.client = Client(
            "ws://127.0.0.1:1/ws",
            list(channels),
            on_message=self.messages.append,
            on_gap=self.gaps.append,
            on_book=lambda ch, book: self.books.append((ch, book.checksum())),
        )

    def feed(self, *msgs):
        for m in msgs:
            self.client.handle_text(m if isinstance(m, str) else json.dumps(m))


def book_msg(seq, kind, bids, asks, crc_of):
    """A book.BTC-USD message whose crc is that of the string ``crc_of``."""
    return {"ch": "book.BTC-USD", "seq": seq, "ts": 1, "type": kind, "bids": bids, "asks": asks,
            "crc": crc(crc_of)}


def trade(seq, ch="trades.BTC-USD"):
    return {"ch": ch, "seq": seq, "ts": 1, "px": "1.00", "qty": "1.0", "side": "buy"}


class SeqTest(unittest.TestCase):
    def test_consecutive_duplicate_and_undeclared(self):
        r = Recorder()
        r.feed({"op": "subscribed", "id": 1, "channels": ["trades.BTC-USD"], "epoch": "e1"})
        with self.assertLogs("tickfan_client", "WARNING"):
            r.feed(trade(5), trade(6), trade(6), trade(4), trade(9))
        c = r.client.counters
        self.assertEqual((c["messages"], c["duplicates"], c["gaps_undeclared"]), (3, 2, 1))
        self.assertEqual(r.gaps, [Gap("trades.BTC-USD", "undeclared", 7, 8)])

    def test_gap_notice_declares_the_jump(self):
        r = Recorder()
        gap = {"op": "gap", "ch": "trades.BTC-USD", "from": 2, "to": 5, "reason": "slow_consumer"}
        r.feed(trade(1), gap, trade(6))
        c = r.client.counters
        self.assertEqual((c["gaps_declared"], c["gaps_undeclared"], c["messages"]), (1, 0, 2))
        self.assertEqual(r.gaps, [Gap("trades.BTC-USD", "slow_consumer", 2, 5)])

    def test_not_resumed_and_new_epoch(self):
        r = Recorder()
        r.feed({"op": "subscribed", "id": 1, "epoch": "e1"}, trade(10), trade(7, "trades.ETH-USD"))
        resumed = {"trades.BTC-USD": False, "trades.ETH-USD": True}
        r.feed({"op": "subscribed", "id": 2, "epoch": "e1", "resumed": resumed})
        r.feed(trade(100), trade(8, "trades.ETH-USD"))
        self.assertEqual(r.gaps, [Gap("trades.BTC-USD", "not_resumed", 11, None)])
        resumed = {"trades.BTC-USD": False, "trades.ETH-USD": False}
        r.feed({"op": "subscribed", "id": 3, "epoch": "e2", "resumed": resumed})
        r.feed(trade(1), trade(1, "trades.ETH-USD"))
        c = r.client.counters
        self.assertEqual((c["resumed_channels"], c["not_resumed_channels"]), (1, 3))
        self.assertEqual((c["gaps_undeclared"], c["duplicates"], c["gaps_declared"]), (0, 0, 3))
        self.assertEqual({g.reason for g in r.gaps[1:]}, {"new_epoch"})
        self.assertEqual(r.client.epoch, "e2")

    def test_garbage_never_raises(self):
        r = Recorder()
        with self.assertLogs("tickfan_client", "WARNING") as logs:
            r.feed("not json", "[1,2]", {"ch": 5, "seq": "x"}, {"op": "gap", "ch": "x"})
            r.feed({"ch": "book.BTC-USD", "seq": 1, "type": "snapshot"})  # no sides
            r.feed({"ch": "book.BTC-USD", "seq": 2, "type": "update", "bids": [["x", "y"]]})
        self.assertEqual(len(logs.records), 5)
        self.assertEqual(r.client.counters["gaps_undeclared"], 0)
        self.assertIsNone(r.client.book("book.BTC-USD"))


class BookTest(unittest.TestCase):
    def test_checksums_verified_and_a_mismatch_resubscribes(self):
        r = Recorder()
        bids, asks = [["10.00", "1.0"]], [["10.10", "2.0"]]
        snap = book_msg(40, "snapshot", bids, asks, "10.00:1.0:10.10:2.0")
        good = book_msg(41, "update", [["10.00", "0.0"]], [], "10.10:2.0")
        bad = dict(book_msg(42, "update", [], [["10.20", "1.0"]], ""), crc=12345)
        r.feed(snap, good)
        with self.assertLogs("tickfan_client", "WARNING"):
            r.feed(bad)
        c = r.client.counters
        self.assertEqual((c["crc_ok"], c["crc_bad"]), (2, 1))
        self.assertEqual([crc for _, crc in r.books], [snap["crc"], good["crc"]])
        self.assertIsNone(r.client.book("book.BTC-USD"))
        sent = [(m["op"], m["channels"]) for m in r.client._outbox]
        self.assertEqual(sent, [("unsubscribe", ["book.BTC-USD"]), ("subscribe", ["book.BTC-USD"])])
        # Updates before the fresh snapshot are not applied; the snapshot repairs the book.
        r.feed(dict(good, seq=43), dict(snap, seq=50))
        self.assertEqual(r.client.counters["crc_ok"], 3)
        self.assertEqual(r.client.book("book.BTC-USD").checksum(), snap["crc"])
        self.assertEqual(r.client.counters["gaps_undeclared"], 0)

    def test_a_mismatch_under_a_wildcard_reconnects(self):
        r = Recorder(["book.*"])
        r.feed(book_msg(7, "snapshot", [["1.00", "1"]], [], "1.00:1"))
        with self.assertLogs("tickfan_client", "WARNING"):
            r.feed(dict(book_msg(8, "update", [["1.00", "2"]], [], ""), crc=0))
        self.assertEqual(r.client._outbox, [])
        self.assertTrue(r.client._leave)

    def test_resume_carries_every_seq_but_of_books_out_of_step(self):
        r = Recorder()
        r.feed({"op": "subscribed", "id": 1, "epoch": "e1"}, trade(3))
        r.feed(book_msg(7, "snapshot", [], [], ""))  # empty book: crc 0
        request = r.client._subscribe_request()
        self.assertEqual(request["resume"], {"trades.BTC-USD": 3, "book.BTC-USD": 7})
        self.assertEqual(request["epoch"], "e1")
        with self.assertLogs("tickfan_client", "WARNING"):
            r.feed(dict(book_msg(8, "update", [], [], ""), crc=1))
        self.assertEqual(r.client._subscribe_request()["resume"], {"trades.BTC-USD": 3})


class ProtocolVersion(unittest.TestCase):
    def test_version_2_is_named_in_the_url_unless_the_url_names_one(self):
        self.assertEqual(with_version("ws://h:1/ws"), "ws://h:1/ws?v=2")
        self.assertEqual(with_version("ws://h:1/ws?streams=trades.*"), "ws://h:1/ws?streams=trades.*&v=2")
        self.assertEqual(with_version("ws://h:1/ws?v=2&token=x"), "ws://h:1/ws?v=2&token=x")
        self.assertEqual(Client("ws://h:1/ws", ["trades.*"]).url, "ws://h:1/ws?v=2")


class BinaryMessages(unittest.TestCase):
    INSTRUMENTS = [
        {"symbol": "BTC-USD", "price_decimals": 2, "size_decimals": 4},
        {"symbol": "ETH-USD", "price_decimals": 0, "size_decimals": 3},
    ]

    def test_mantissas_are_formatted_as_the_gateway_does(self):
        self.assertEqual(decimal(6412350, 2), "64123.50")
        self.assertEqual(decimal(5, 4), "0.0005")
        self.assertEqual(decimal(-150, 2), "-1.50")
        self.assertEqual(decimal(42, 0), "42")

    def test_a_trade_a_quote_and_a_book_update_decode_to_their_json(self):
        trade = struct.pack("<BBIQQQQqqB", 1, 1, 0, 7, 1764028800123456, 1764028800123000,
                            991, 6412350, 150, 1)
        self.assertEqual(
            json.dumps(decode_binary(trade, self.INSTRUMENTS), separators=(",", ":")),
            '{"ch":"trades.BTC-USD","seq":7,"ts":1764028800123456,"et":1764028800123000,'
            '"id":991,"px":"64123.50","qty":"0.0150","side":"sell"}',
        )
        quote = struct.pack("<BBIQQqqqq", 2, 0, 1, 3, 5, 3201, 1500, 3202, 2)
        self.assertEqual(
            decode_binary(quote, self.INSTRUMENTS),
            {"ch": "quotes.ETH-USD", "seq": 3, "ts": 5, "bid": "3201", "bsz": "1.500",
             "ask": "3202", "asz": "0.002"},
        )
        book = struct.pack("<BBIQQIHHqq", 3, 0, 0, 9, 5, 42, 1, 0, 6412300, 0)
        self.assertEqual(
            decode_binary(book, self.INSTRUMENTS),
            {"ch": "book.BTC-USD", "seq": 9, "ts": 5, "type": "update",
             "bids": [["64123.00", "0.0000"]], "asks": [], "crc": 42},
        )
        self.assertIsNone(decode_binary(book[:-1], self.INSTRUMENTS))
        self.assertIsNone(decode_binary(book + b"\0", self.INSTRUMENTS))
        self.assertIsNone(decode_binary(struct.pack("<BBIQQ", 1, 0, 5, 1, 1), self.INSTRUMENTS))

    def test_binary_asks_for_format_binary(self):
        c = Client("ws://h:1/ws", ["trades.*"], binary=True)
        self.assertEqual(c.url, "ws://h:1/ws?format=binary&v=2")


if __name__ == "__main__":
    unittest.main()
