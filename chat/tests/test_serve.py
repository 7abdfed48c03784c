"""Choosing the event loop daphne runs on (chutesweb/serve.py).

That the server really runs, stops and saves replies on each loop is tested with real processes
in test_processes.py; these cover the choice itself.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import pytest
import uvloop

from chutesweb import serve


@pytest.fixture(autouse=True)
def restore_policy() -> Iterator[None]:
    yield
    asyncio.set_event_loop_policy(None)


def loop_type() -> type:
    loop = asyncio.new_event_loop()
    try:
        return type(loop)
    finally:
        loop.close()


@pytest.mark.parametrize("choice", [None, "", "auto", "uvloop", " UVLoop "])
def test_uvloop_when_installed_or_asked_for(choice: str | None) -> None:
    assert serve.choose_loop(choice) == "uvloop"
    assert loop_type() is uvloop.Loop


def test_asyncio_when_asked_for() -> None:
    serve.choose_loop("uvloop")
    assert serve.choose_loop("asyncio") == "asyncio"
    assert issubclass(loop_type(), asyncio.BaseEventLoop)


def test_auto_without_uvloop_keeps_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve.importlib.util, "find_spec", lambda name: None)
    assert serve.choose_loop("auto") == "asyncio"
    assert issubclass(loop_type(), asyncio.BaseEventLoop)


def test_uvloop_asked_for_but_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` fail
    with pytest.raises(serve.EventLoopError, match="uvloop is not installed"):
        serve.choose_loop("uvloop")


def test_unknown_choice_stops_the_server_with_the_choices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EVENT_LOOP", "trio")
    with pytest.raises(SystemExit) as stopped:
        serve.main(["--help"])
    assert "auto, uvloop, asyncio" in str(stopped.value.code)
    assert "'trio'" in str(stopped.value.code)
