"""Requests (sends, regenerates, edits) accepted in batches (`batching.py`): the requests that
arrive while one batch is being accepted are accepted together next, in one transaction with a
savepoint each (`replies.accept_many`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chat.actions import replies
from chat.actions.replies import GenerationPlan
from chat.protocol import Edit, Regenerate, Send

from .batching import Batches

if TYPE_CHECKING:
    from django.contrib.auth.models import User

# The most requests accepted in one transaction: a bigger burst goes in several, so that the
# first of it start streaming while the rest are accepted (docs/benchmarks.md: 8 gave the lowest
# time to first token for bursts of 100 and 200 of 4, 8, 16 and 32).
MAX_BATCH = 8

Request = tuple["User", Send | Regenerate | Edit]


class AcceptQueue(Batches[Request, GenerationPlan]):
    def __init__(self) -> None:
        super().__init__("accepting requests", MAX_BATCH)

    def run_many(self, items: list[Request]) -> list[GenerationPlan | Exception]:
        return replies.accept_many(items)

    async def accept(self, user: User, frame: Send | Regenerate | Edit) -> GenerationPlan:
        """The request's plan once its batch has committed; raises what `replies.accept`
        would (`Refused`, a database error)."""
        return await self.submit((user, frame))
