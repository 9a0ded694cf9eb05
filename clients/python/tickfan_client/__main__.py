"""Command line: ``python -m tickfan_client [--url URL] [--binary] [--duration S] [--quiet]
CHANNEL...``.

Prints each data message as one JSON line (unless ``--quiet``) and, when it stops (after
``--duration`` seconds, on Ctrl-C or SIGTERM), the counters as one JSON line prefixed with
``summary: ``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any

from .client import Client, Gap, SubscribeError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tickfan_client",
        description="Subscribe to tickfan channels and print their messages as JSON lines.",
    )
    parser.add_argument("--url", default="ws://127.0.0.1:8080/ws", help="the gateway's /ws URL")
    parser.add_argument(
        "--binary",
        action="store_true",
        help="receive trades, quotes and book updates as binary messages (printed as JSON)",
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="stop after this many seconds"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print only the summary, not each message"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log reconnects and such")
    parser.add_argument("channels", nargs="+", metavar="CHANNEL", help="e.g. trades.BTC-USD")
    return parser.parse_args(argv)


def _print_line(line: str) -> None:
    try:
        print(line, flush=True)
    except BrokenPipeError:  # `| head`: keep counting, stop printing
        sys.stdout = None  # type: ignore[assignment]


async def _main(args: argparse.Namespace) -> int:
    def on_message(msg: dict[str, Any]) -> None:
        if not args.quiet and sys.stdout is not None:
            _print_line(json.dumps(msg, separators=(",", ":")))

    def on_gap(gap: Gap) -> None:
        logging.getLogger("tickfan_client").info("gap: %s", gap)

    client = Client(
        args.url, args.channels, on_message=on_message, on_gap=on_gap, binary=args.binary
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(client.close()))
        except (NotImplementedError, RuntimeError):  # not on this platform
            pass
    if args.duration is not None:
        loop.call_later(args.duration, lambda: asyncio.ensure_future(client.close()))
    status = 0
    try:
        await client.run()
    except SubscribeError as e:
        print(f"tickfan_client: subscription refused: {e}", file=sys.stderr)
        status = 1
    except OSError as e:
        print(f"tickfan_client: {e}", file=sys.stderr)
        status = 1
    if sys.stdout is not None:
        _print_line("summary: " + json.dumps(client.counters, separators=(",", ":")))
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:  # a second Ctrl-C, or one before the handler was set
        return 130


if __name__ == "__main__":
    sys.exit(main())
