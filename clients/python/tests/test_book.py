"""The order book and its checksum (docs/protocol.md, "Order books", "Book checksum")."""

import unittest
import zlib

from tickfan_client.book import BookError, OrderBook, checksum


def snapshot(bids, asks):
    return {"ch": "book.BTC-USD", "seq": 1, "type": "snapshot", "bids": bids, "asks": asks}


def update(bids, asks):
    return {"ch": "book.BTC-USD", "seq": 2, "type": "update", "bids": bids, "asks": asks}


class ChecksumTest(unittest.TestCase):
    def test_the_protocols_worked_example(self):
        book = OrderBook()
        bids = [["64123.00", "1.2000"], ["64122.50", "0.5000"]]
        book.apply(snapshot(bids, [["64123.50", "0.4000"]]))
        expected = zlib.crc32(b"64123.00:1.2000:64123.50:0.4000:64122.50:0.5000")
        self.assertEqual(book.checksum(), expected)
        self.assertEqual(expected, 1666075937)  # the value docs/protocol.md gives
        book.apply(update([["64122.50", "0.0000"]], []))
        self.assertEqual(book.checksum(), zlib.crc32(b"64123.00:1.2000:64123.50:0.4000"))
        self.assertEqual(book.checksum(), 2079246967)

    def test_empty_book_is_zero(self):
        self.assertEqual(OrderBook().checksum(), 0)
        self.assertEqual(checksum([], []), 0)

    def test_only_the_top_ten_of_each_side_interleaved_shorter_side_stops(self):
        bids = [[f"{100 - i}.00", f"{i + 1}.0"] for i in range(12)]  # 100.00 .. 89.00
        asks = [["101.00", "7.5"], ["102.00", "8.5"]]
        book = OrderBook()
        # The order of the levels on the wire does not matter.
        book.apply(snapshot(list(reversed(bids)), list(reversed(asks))))
        parts = ["100.00", "1.0", "101.00", "7.5", "99.00", "2.0", "102.00", "8.5"]
        for i in range(2, 10):
            parts += [f"{100 - i}.00", f"{i + 1}.0"]
        self.assertEqual(book.checksum(), zlib.crc32(":".join(parts).encode()))
        self.assertEqual(len(book.bids()), 12)
        self.assertEqual(len(book.bids(10)), 10)

    def test_prices_sort_numerically_not_as_strings(self):
        book = OrderBook()
        bids = [["9.50", "1"], ["10.25", "2"], ["100.00", "3"]]
        asks = [["200.00", "1"], ["1000.00", "2"], ["99.99", "3"]]
        book.apply(snapshot(bids, asks))
        self.assertEqual(book.bids(), [("100.00", "3"), ("10.25", "2"), ("9.50", "1")])
        self.assertEqual(book.asks(), [("99.99", "3"), ("200.00", "1"), ("1000.00", "2")])
        self.assertEqual(book.best_bid(), ("100.00", "3"))
        self.assertEqual(book.best_ask(), ("99.99", "3"))
        expected = zlib.crc32(b"100.00:3:99.99:3:10.25:2:200.00:1:9.50:1:1000.00:2")
        self.assertEqual(book.checksum(), expected)


class ApplyTest(unittest.TestCase):
    def setUp(self):
        self.book = OrderBook()
        self.book.apply(snapshot([["10.00", "1.0000"], ["9.90", "2.0000"]], [["10.10", "3.0000"]]))

    def test_update_sets_adds_and_removes_by_zero_size(self):
        bids = [["10.00", "1.5000"], ["9.95", "0.2500"], ["9.90", "0.0000"]]
        self.book.apply(update(bids, [["10.20", "4.0000"]]))
        self.assertEqual(self.book.bids(), [("10.00", "1.5000"), ("9.95", "0.2500")])
        self.assertEqual(self.book.asks(), [("10.10", "3.0000"), ("10.20", "4.0000")])
        expected = zlib.crc32(b"10.00:1.5000:10.10:3.0000:9.95:0.2500:10.20:4.0000")
        self.assertEqual(self.book.checksum(), expected)

    def test_removing_an_absent_level_is_harmless(self):
        before = self.book.checksum()
        self.book.apply(update([["5.00", "0.0000"]], []))
        self.assertEqual(self.book.checksum(), before)

    def test_a_snapshot_replaces_everything(self):
        self.book.apply(snapshot([["8.00", "1.0000"]], []))
        self.assertEqual(self.book.bids(), [("8.00", "1.0000")])
        self.assertEqual(self.book.asks(), [])
        self.assertEqual(self.book.checksum(), zlib.crc32(b"8.00:1.0000"))

    def test_malformed_messages_raise_and_leave_the_book_unchanged(self):
        before = (self.book.bids(), self.book.asks())
        for bad in (
            update([["10.00", "abc"]], []),
            update([["10.00"]], []),
            update([[10.0, "1.0"]], []),
            update([["NaN", "1.0"]], []),
            update([["9.00", "1.0"]], None),
            {"type": "update", "bids": [["9.00", "1.0"]]},
        ):
            with self.subTest(bad=bad), self.assertRaises(BookError):
                self.book.apply(bad)
            self.assertEqual((self.book.bids(), self.book.asks()), before)


if __name__ == "__main__":
    unittest.main()
