"""tickfan_client: an asyncio client for the tickfan market-data gateway (protocol v2).

    from tickfan_client import Client
    client = Client("ws://127.0.0.1:8080/ws", ["trades.BTC-USD", "book.BTC-USD"],
                    on_message=print)
    await client.run()   # until `await client.close()`
"""

from .binary import decimal
from .binary import decode as decode_binary
from .book import BookError, OrderBook, checksum
from .client import COUNTER_NAMES, PROTOCOL_VERSION, Client, Gap, SubscribeError, with_version

__all__ = [
    "COUNTER_NAMES",
    "BookError",
    "Client",
    "Gap",
    "OrderBook",
    "PROTOCOL_VERSION",
    "SubscribeError",
    "checksum",
    "decimal",
    "decode_binary",
    "with_version",
]
__version__ = "0.1.0"
