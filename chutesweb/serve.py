"""Run the app under daphne on the event loop the environment asks for.

    python -m chutesweb.serve -b 127.0.0.1 -p 8000 chutesweb.asgi:application

takes daphne's own arguments. `EVENT_LOOP` picks the loop: `auto` (the default) runs on uvloop
when it is installed and on asyncio's own loop otherwise; `uvloop` insists on uvloop; `asyncio`
keeps asyncio's. The choice has to be made here, before daphne is imported: daphne creates its
loop and installs Twisted's reactor on it at import time, before Django's settings are read.

uvloop runs the loop, the timers and the upstream connections' sockets in C; every relayed token
passes through them (docs/benchmarks.md measures what it saves).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys

CHOICES = ("auto", "uvloop", "asyncio")


class EventLoopError(RuntimeError):
    pass


def choose_loop(choice: str | None) -> str:
    """Set the event loop policy for `choice`; returns the loop it gives, "uvloop" or "asyncio"."""
    wanted = (choice or "auto").strip().lower()
    if wanted not in CHOICES:
        raise EventLoopError(f"EVENT_LOOP must be one of {', '.join(CHOICES)}; got {choice!r}.")
    if wanted == "asyncio" or (wanted == "auto" and importlib.util.find_spec("uvloop") is None):
        asyncio.set_event_loop_policy(None)
        return "asyncio"
    try:
        import uvloop
    except ImportError as exc:
        raise EventLoopError(
            "EVENT_LOOP=uvloop but uvloop is not installed (pip install -r requirements.txt)."
        ) from exc
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def main(argv: list[str] | None = None) -> None:
    try:
        loop = choose_loop(os.environ.get("EVENT_LOOP"))
    except EventLoopError as exc:
        sys.exit(f"chutesweb.serve: {exc}")
    print(f"chutesweb.serve: event loop {loop}", file=sys.stderr, flush=True)
    from daphne.cli import CommandLineInterface

    CommandLineInterface().run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
