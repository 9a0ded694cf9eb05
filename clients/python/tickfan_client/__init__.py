"""tickfan_client: an asyncio client for the tickfan market-data gateway (protocol v1).

    from tickfan_client import Client
    client = Client("ws://127.0.0.1:8080/ws", ["trades.BTC-USD", "book.BTC-USD"],
                    on_message=print)
    await client.run()   # until `await client.close()`
"""

from .book import BookError, OrderBook, checksum
from .client import COUNTER_NAMES, Client, Gap, SubscribeError

__all__ = [
    "COUNTER_NAMES",
    "BookError",
    "Client",
    "Gap",
    "OrderBook",
    "SubscribeError",
    "checksum",
]
__version__ = "0.1.0"
