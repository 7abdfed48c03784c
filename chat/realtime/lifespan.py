"""The ASGI lifespan protocol (uvicorn, hypercorn): interrupt running replies cleanly on exit.

Daphne does not speak lifespan; under daphne the same happens through a Twisted shutdown trigger
(see `chutesweb/runtime/server_lifecycle.py`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings

from .engine import get_manager

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def lifespan(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            # The background work starts with the process, not at the first websocket.
            await get_manager().ensure_started()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await get_manager().shutdown(grace=settings.SHUTDOWN_GRACE_SECONDS)
            await send({"type": "lifespan.shutdown.complete"})
            return
