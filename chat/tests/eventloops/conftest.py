"""Tests here run once on asyncio's own event loop and once on uvloop's: the app runs on either
(`EVENT_LOOP`, chutesweb/serve.py), and uvicorn picks uvloop by itself when it is installed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
