"""chutesweb/serve.py: the event loop daphne runs on, and its websocket size limits.

That the server really runs, stops and saves replies on each loop is tested with real processes
in test_processes.py; the frame limits are tested here against real daphne and uvicorn.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import uvloop
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, CloseCode
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from chat.testing import processes
from chat.testing.processes import Process
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


# Websocket frames over the size limit, against real servers.

# In four-byte characters, more than daphne's own default limit (1 MiB): the limit must follow.
FRAME_CHARS = 300_000
PASSWORD = "correct horse battery staple"
# uvicorn's own limit (--ws-max-size), which the app does not set.
UVICORN_WS_MAX_SIZE = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def small_frames_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A database with a user, for servers whose frames are limited to FRAME_CHARS."""
    data_dir = tmp_path_factory.mktemp("frames")
    env = processes.base_env(DATA_DIR=str(data_dir), MAX_FRAME_CHARS=str(FRAME_CHARS))
    processes.migrate(env)
    processes.create_user(env, "sam", PASSWORD)
    return env


@pytest.fixture(scope="module")
def server(request: pytest.FixtureRequest, small_frames_env: dict[str, str]) -> Iterator[Process]:
    log_dir = Path(small_frames_env["DATA_DIR"])
    app = processes.start_app(request.param, log_dir, small_frames_env, server=request.param)
    yield app
    app.stop()


@contextmanager
def socket_to(app: Process) -> Iterator[ClientConnection]:
    cookie = processes.login_cookie(app.url, "sam", PASSWORD)
    with connect(
        f"ws://127.0.0.1:{app.port}/ws/chat/",
        additional_headers={"Cookie": cookie},
        origin=Origin(f"http://127.0.0.1:{app.port}"),
        open_timeout=10,
        ping_interval=None,
    ) as ws:
        yield ws


def refused_with(ws: ClientConnection, frame: str) -> Close | None:
    """Send `frame`; the close frame the server answered with (None if it dropped the
    connection without one), or fail if it answered with anything else."""
    with suppress(ConnectionClosed):
        ws.send(frame)
    try:
        while True:
            answer = ws.recv(timeout=20)
            assert json.loads(answer)["type"] != "error", answer
    except ConnectionClosed as closed:
        return closed.rcvd


def error_code(ws: ClientConnection, frame: str) -> str:
    """Send `frame`; the code of the error frame the app answers with."""
    ws.send(frame)
    while True:
        answer = json.loads(ws.recv(timeout=20))
        if answer["type"] == "error":
            return str(answer["code"])


@pytest.mark.slow
@pytest.mark.parametrize("server", ["daphne"], indirect=True)
def test_daphne_closes_on_a_frame_over_the_limit_with_1009_and_a_reason(server: Process) -> None:
    # One character more than the limit, each four bytes in UTF-8: over the byte limit too.
    with socket_to(server) as ws:
        close = refused_with(ws, "😀" * (FRAME_CHARS + 1))

    assert close is not None, "the connection was dropped without a close frame"
    assert close.code == CloseCode.MESSAGE_TOO_BIG
    assert close.reason


@pytest.mark.slow
@pytest.mark.parametrize("server", ["daphne"], indirect=True)
def test_daphne_never_refuses_a_frame_within_the_character_limit_for_its_bytes(
    server: Process,
) -> None:
    with socket_to(server) as ws:
        # FRAME_CHARS characters of four bytes each reach the app, which reads them (not JSON).
        assert error_code(ws, "😀" * FRAME_CHARS) == "invalid_frame"
        # Longer in characters but not in bytes: the app's own answer, and the socket stays.
        assert error_code(ws, "x" * (FRAME_CHARS + 1)) == "content_too_long"
        assert error_code(ws, "{}") == "invalid_frame"


@pytest.mark.slow
@pytest.mark.parametrize("server", ["uvicorn"], indirect=True)
def test_uvicorn_closes_on_a_frame_over_its_limit_with_1009(server: Process) -> None:
    with socket_to(server) as ws:
        close = refused_with(ws, "x" * (UVICORN_WS_MAX_SIZE + 1))

    assert close is not None, "the connection was dropped without a close frame"
    assert close.code == CloseCode.MESSAGE_TOO_BIG


def test_the_byte_limit_lets_through_any_frame_within_the_character_limit() -> None:
    assert serve.websocket_byte_limit(1000) == len(("\U0010ffff" * 1000).encode())


def test_an_autobahn_without_the_close_option_stops_the_server_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from daphne.ws_protocol import WebSocketFactory

    def options(self: object, *, maxMessagePayloadSize: int = 0) -> None:
        pass

    monkeypatch.setattr(WebSocketFactory, "setProtocolOptions", options)
    with pytest.raises(RuntimeError, match="failByDrop"):
        serve.server_class()
