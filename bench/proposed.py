"""Changes proposed for files the benchmark does not own, applied only when asked, so that their
effect can be measured against the unchanged app in the same harness.

    BENCH_PROPOSED=dispatch,layer,conn python -m daphne bench.launcher:application
    python -m bench.run --proposed dispatch,layer,conn ...

- `dispatch`: the chat consumer delivers `chat.stream` events (deltas, `started`, `done`) without
  Channels' `aclose_old_connections()`, which otherwise hops to the ORM's one thread before every
  event and back: a thread round trip per token per socket, queued behind every database call.
  The handler touches no database. (chat/consumers.py)
- `layer`: an in-memory channel layer whose send, group send and receive cost O(1), not O(every
  channel and group of the process): Channels' `InMemoryChannelLayer` scans all of them for
  expired messages on every call, deep-copies every message, and starts a task per group member.
  (a new chat/layers.py and CHANNEL_LAYERS in chutesweb/settings.py)
- `conn`: keep the SQLite connection of the ORM thread open between calls (`CONN_MAX_AGE`
  None) instead of opening one, running its PRAGMAs and closing it around every database call.
  (chutesweb/settings.py)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from channels import layers
from channels.exceptions import ChannelFull

KNOWN = ("dispatch", "layer", "conn")


class InMemoryChannelLayer(layers.InMemoryChannelLayer):
    """Channels' in-memory layer with O(1) operations (the same name, so that code telling the
    in-memory layer by its name, like ChatConsumer._orphaned, still recognises it).

    Expired messages and group memberships are swept at most once a second rather than on
    every call, and messages are copied shallowly (their values are immutable strings and
    numbers), so the cost of a frame no longer grows with the number of open sockets.
    """

    SWEEP_SECONDS = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._swept = 0.0

    def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._swept >= self.SWEEP_SECONDS:
            self._swept = now
            self._clean_expired()

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "message is not a dict"
        assert "__asgi_channel__" not in message
        self._put(channel, message)

    def _put(self, channel: str, message: dict[str, Any]) -> None:
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = asyncio.Queue(maxsize=self.get_capacity(channel))
        try:
            queue.put_nowait((time.time() + self.expiry, dict(message)))
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    async def receive(self, channel: str) -> dict[str, Any]:
        self._sweep()
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = asyncio.Queue(maxsize=self.get_capacity(channel))
        try:
            _, message = await queue.get()
        finally:
            if queue.empty() and self.channels.get(channel) is queue:
                self.channels.pop(channel, None)
        return message

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "Message is not a dict"
        self._sweep()
        for channel in list(self.groups.get(group, ())):
            # A full channel misses the frame, as with Channels' layer; the consumer resyncs.
            with contextlib.suppress(ChannelFull):
                self._put(channel, message)


def apply(names: list[str]) -> list[str]:
    unknown = sorted(set(names) - set(KNOWN))
    if unknown:
        raise SystemExit(f"unknown proposed change(s): {', '.join(unknown)}")
    if "dispatch" in names:
        from chat.consumers import ChatConsumer

        plain_dispatch = ChatConsumer.dispatch

        async def dispatch(self: ChatConsumer, message: dict[str, Any]) -> None:
            if message["type"] == "chat.stream":
                await self.chat_stream(message)
                return
            await plain_dispatch(self, message)

        ChatConsumer.dispatch = dispatch  # type: ignore[method-assign]
    if "layer" in names:
        from channels.layers import channel_layers
        from django.conf import settings

        layers = dict(settings.CHANNEL_LAYERS)
        default = dict(layers["default"])
        if default["BACKEND"] == "channels.layers.InMemoryChannelLayer":
            default["BACKEND"] = f"{__name__}.InMemoryChannelLayer"
            layers["default"] = default
            settings.CHANNEL_LAYERS = layers
            channel_layers.backends.clear()
    if "conn" in names:
        from django.db import connections

        connections.settings["default"]["CONN_MAX_AGE"] = None
    return names
