"""Requests (sends, regenerates, edits) accepted in batches: the requests that arrive while one
batch is being accepted are accepted together next, in one trip to the database thread and one
transaction (`replies.accept_many`). A lone request goes at once, as before; a burst of them
pays the thread hop and the transaction once instead of once a request."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from channels.db import database_sync_to_async

from chat.actions import replies
from chat.actions.replies import GenerationPlan
from chat.protocol import Edit, Regenerate, Send

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

# The most requests accepted in one transaction: a bigger burst goes in several, so that the
# first of it start streaming while the rest are accepted (docs/benchmarks.md: 8 gave the lowest
# time to first token for bursts of 100 and 200 of 4, 8, 16 and 32).
MAX_BATCH = 8

Request = tuple["User", Send | Regenerate | Edit, "asyncio.Future[GenerationPlan]"]


class AcceptQueue:
    def __init__(self) -> None:
        self._waiting: list[Request] = []
        self._draining: asyncio.Task[None] | None = None

    async def accept(self, user: User, frame: Send | Regenerate | Edit) -> GenerationPlan:
        """The request's plan once its batch has committed; raises what `replies.accept`
        would (`Refused`, a database error)."""
        future: asyncio.Future[GenerationPlan] = asyncio.get_running_loop().create_future()
        self._waiting.append((user, frame, future))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                # A request whose socket went away while it waited is not accepted: nobody
                # would start its reply.
                waiting = [request for request in self._waiting if not request[2].done()]
                batch, self._waiting = waiting[:MAX_BATCH], waiting[MAX_BATCH:]
                if batch:
                    await self._accept_batch(batch)
        finally:
            self._draining = None
            # Cancelled (the process is stopping) with requests still waiting: they fail
            # rather than wait for ever.
            for _, _, future in self._waiting:
                if not future.done():
                    future.set_exception(RuntimeError("the server is shutting down"))
            self._waiting = []

    @staticmethod
    async def _accept_batch(batch: list[Request]) -> None:
        try:
            results = await database_sync_to_async(replies.accept_many)(
                [(user, frame) for user, frame, _ in batch]
            )
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            # The batch as a whole failed (its commit, the database away): every request in
            # it fails alike, and nothing of it was written.
            logger.warning("accepting %d requests together failed", len(batch), exc_info=True)
            results = [exc] * len(batch)
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # its socket went away meanwhile
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
