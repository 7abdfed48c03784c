"""The conversations one socket watches: in the order it first watched them, at most `limit`,
and which of them it also follows through the channel layer (other processes' replies).

Kept apart from the consumer so that the watch rules read in one place: a conversation already
watched is not watched twice, a `watch` past the limit is refused, and a socket that must watch
one more (it sent a question, asked for a title) lets go of the one it watched longest.
"""

from __future__ import annotations

from collections.abc import Iterator


class WatchList:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._ids: dict[int, None] = {}  # insertion-ordered: the oldest first
        self.remote: set[int] = set()

    def __contains__(self, conversation_id: object) -> bool:
        return conversation_id in self._ids

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._ids))

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def full(self) -> bool:
        return len(self._ids) >= self.limit

    def add(self, conversation_id: int) -> None:
        self._ids[conversation_id] = None

    def discard(self, conversation_id: int) -> None:
        self._ids.pop(conversation_id, None)

    def to_let_go(self, conversation_id: int) -> list[int]:
        """The conversations to stop watching, oldest first, so that `conversation_id` fits:
        none when it is watched already or there is room."""
        if conversation_id in self._ids:
            return []
        surplus = len(self._ids) - self.limit + 1
        return list(self._ids)[: max(0, surplus)]
