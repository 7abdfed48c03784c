"""`python -m chat.testing.fakeupstream`: run the stand-in until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from typing import Any

from chat.testing.fakeupstream.server import FakeUpstream


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m chat.testing.fakeupstream",
        description="A local stand-in for the Lava forward proxy and the Chutes API.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument(
        "--token",
        action="append",
        dest="tokens",
        help="accepted bearer token or forward-token secret_key (repeatable; default demo-token)",
    )
    parser.add_argument("--tokens-per-reply", type=int, default=40, dest="reply_tokens")
    parser.add_argument("--interval-ms", type=float, default=40.0)
    parser.add_argument("--ttft-ms", type=float, default=300.0)
    parser.add_argument(
        "--no-reasoning",
        action="store_true",
        help="reasoning models answer without a reasoning part",
    )
    parser.add_argument("--any-model", action="store_true", help="serve unknown model ids too")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    script: dict[str, Any] = {
        "tokens": args.reply_tokens,
        "interval_ms": args.interval_ms,
        "ttft_ms": args.ttft_ms,
        "reasoning": None if args.no_reasoning else "auto",
    }
    fake = FakeUpstream(
        host=args.host,
        port=args.port,
        tokens=tuple(args.tokens or ["demo-token"]),
        strict_models=not args.any_model,
        default_script=script,
    )
    try:
        await fake.start()
    except OSError as exc:
        raise SystemExit(f"fakeupstream: cannot listen on {args.host}:{args.port}: {exc}") from None
    print(
        f"fakeupstream listening on {fake.url} "
        f"(LAVA_FORWARD_URL={fake.forward_url} CHUTES_API_BASE={fake.api_base})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
