"""Events sent from synchronous code leave only once the change behind them is committed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import transaction

from chat import events

pytestmark = pytest.mark.django_db(transaction=True)


class RolledBack(Exception):
    pass


async def _received(layer: Any, channel: str) -> list[dict]:
    found = []
    while True:
        try:
            found.append(await asyncio.wait_for(layer.receive(channel), 0.3))
        except TimeoutError:
            return found


async def test_an_event_leaves_after_the_commit_and_never_after_a_rollback() -> None:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(events.control_group(7), channel)
    sent_inside: list[int] = []

    @database_sync_to_async
    def rolled_back() -> None:
        with pytest.raises(RolledBack), transaction.atomic():
            events.send_on_commit(events.control_group(7), events.stop_event(7))
            raise RolledBack

    @database_sync_to_async
    def committed() -> None:
        with transaction.atomic():
            events.send_on_commit(events.control_group(7), events.stop_event(7))
            sent_inside.append(len(transaction.get_connection().run_on_commit))

    @database_sync_to_async
    def outside_a_transaction() -> None:
        events.send_on_commit(events.control_group(7), events.stop_event(7))

    await rolled_back()
    assert await _received(layer, channel) == []
    await committed()
    assert sent_inside == [1]  # held until the commit
    assert await _received(layer, channel) == [{"type": "gen.stop", "message": 7}]
    await outside_a_transaction()
    assert await _received(layer, channel) == [{"type": "gen.stop", "message": 7}]
    await layer.group_discard(events.control_group(7), channel)
