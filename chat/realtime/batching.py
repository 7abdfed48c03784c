"""Work for the database thread taken in batches: the items that arrive while one batch is on
the database thread go together in the next, in one trip to the thread and one transaction.
A lone item goes at once; a burst pays the thread hop and the transaction once per batch
instead of once per item. Used for accepting requests (`replies.accept_many`) and for writing
the ends of replies (`progress.finish_many`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from channels.db import database_sync_to_async

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batches(Generic[Item, Result]):
    """`submit(item)` answers with what `run_many` gave for the item, or raises what it gave
    instead; `run_many` runs on the database thread, takes a list and returns one result or
    exception per item, in order."""

    def __init__(self, what: str, max_batch: int) -> None:
        self.what = what
        self.max_batch = max_batch
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._draining: asyncio.Task[None] | None = None

    def run_many(self, items: list[Item]) -> list[Result | Exception]:
        raise NotImplementedError

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._draining is None:
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                size = self.max_batch
                batch, self._waiting = self._waiting[:size], self._waiting[size:]
                await self._run(batch)
        finally:
            self._draining = None
            # Cancelled (the process is stopping) with items still waiting: they fail rather
            # than wait for ever.
            for _, future in self._waiting:
                if not future.done():
                    future.set_exception(RuntimeError("the server is shutting down"))
            self._waiting = []

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        run_many: Callable[[list[Item]], list[Any]] = self.run_many
        try:
            results = await database_sync_to_async(run_many)([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            # The batch as a whole failed (its commit, the database away): every item in it
            # fails alike, and nothing of it was written.
            logger.warning("%s: a batch of %d failed", self.what, len(batch), exc_info=True)
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # its waiter went away meanwhile
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
