"""Real server processes: graceful shutdown, and several processes sharing one database and Redis.

These start daphne (and uvicorn) as the deployment would, talk to them over real websockets, and
send real signals. The multi-process test needs Redis; it is skipped where none answers unless
REQUIRE_SERVICES=1 (as in CI), which turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from chat.testing import processes
from chat.testing.processes import Process
from chat.testing.wsclient import MODEL, send_frame, text_of

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
REDIS_URL = os.getenv("TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


class Client:
    """A websocket client of the real protocol."""

    # Every client a test opened, closed after it (`close_clients`) even when the server died
    # under it: an open client keeps a background thread running into the next tests.
    opened: ClassVar[list[Client]] = []

    def __init__(self, app: Process, cookie: str) -> None:
        connection = connect(
            f"ws://127.0.0.1:{app.port}/ws/chat/",
            additional_headers={"Cookie": cookie},
            origin=Origin(f"http://127.0.0.1:{app.port}"),
            open_timeout=10,
            # Browsers send no pings; a ping to a killed server only fails noisily later.
            ping_interval=None,
        )
        self.ws: ClientConnection = connection.__enter__()
        self.frames: list[dict[str, Any]] = []
        Client.opened.append(self)

    def send(self, frame: dict[str, Any]) -> None:
        self.ws.send(json.dumps(frame))

    def until(self, predicate: Any, timeout: float = 20) -> dict[str, Any]:
        while True:
            frame = json.loads(self.ws.recv(timeout=timeout))
            self.frames.append(frame)
            if predicate(frame):
                return frame

    def text(self, message: int) -> str:
        return text_of(self.frames, message)

    def close(self) -> None:
        self.ws.close()


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while Client.opened:
        Client.opened.pop().close()


def send(client: Client, content: str, **extra: Any) -> dict[str, Any]:
    client.send(send_frame(content, model=extra.pop("model", MODEL), **extra))
    return client.until(lambda f: f["type"] in ("accepted", "error"))


def read_json(app: Process, path: str, cookie: str) -> Any:
    request = urllib.request.Request(f"{app.url}{path}", headers={"Cookie": cookie})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@contextmanager
def scratch_database(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A database for the processes: a new PostgreSQL database when the suite runs on
    PostgreSQL, else SQLite in the temporary folder."""
    url = os.getenv("DATABASE_URL", "")
    if not url.startswith("postgres"):
        yield {"DATA_DIR": str(tmp_path)}
        return
    import psycopg

    name = f"chutes_proc_{uuid.uuid4().hex[:10]}"
    parts = urllib.parse.urlsplit(url)
    with closing(psycopg.connect(url, autocommit=True)) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {"DATABASE_URL": urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))}
    finally:
        with closing(psycopg.connect(url, autocommit=True)) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def redis_available() -> bool:
    parts = urllib.parse.urlsplit(REDIS_URL)
    return processes.port_open(parts.port or 6379, parts.hostname or "127.0.0.1")


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Process]:
    process = processes.start_upstream(tmp_path, "--any-model")
    yield process
    process.stop()


@pytest.mark.parametrize(
    ("server", "loop"), [("daphne", "uvloop"), ("daphne", "asyncio"), ("uvicorn", "auto")]
)
def test_sigterm_saves_running_replies_as_interrupted(
    tmp_path: Path, upstream: Process, server: str, loop: str
) -> None:
    with scratch_database(tmp_path) as db:
        env = processes.app_env(
            upstream, tmp_path, SHUTDOWN_GRACE_SECONDS="5", EVENT_LOOP=loop, **db
        )
        processes.migrate(env)
        processes.create_user(env, "sam", PASSWORD)
        app = processes.start_app("app", tmp_path, env, server=server)
        if server == "daphne":
            # Twisted's reactor and its shutdown run on the loop asked for (chutesweb/serve.py).
            assert f"event loop {loop}" in app.log.read_text()
        try:
            cookie = processes.login_cookie(app.url, "sam", PASSWORD)
            client = Client(app, cookie)
            accepted = send(client, '[[fake {"tokens": 400, "interval_ms": 25}]] go on')
            message = accepted["message"]
            client.until(lambda f: f["type"] == "delta" and f["seq"] >= 5)
            app.signal(signal.SIGTERM)
            # The process exits within its shutdown grace; the socket closes with it.
            assert app.proc.wait(15) is not None
            with pytest.raises(ConnectionClosed):
                client.until(lambda f: False, timeout=15)
            seen = client.text(message)
        finally:
            app.stop()
        # Start again: the reply is saved with the text the user saw and its status.
        again = processes.start_app("again", tmp_path, env, server=server)
        try:
            cookie = processes.login_cookie(again.url, "sam", PASSWORD)
            data = read_json(again, f"/api/conversations/{accepted['conversation']}", cookie)
        finally:
            again.stop()
    reply = next(m for m in data["messages"] if m["id"] == message)
    assert reply["status"] == "interrupted"
    # Everything the user saw is kept (and what was received but not yet shown).
    assert reply["content"].startswith(seen)
    assert len(seen) > 0
    assert reply["usage"]["estimated"] is True
    assert reply["cost"] is not None


def test_two_processes_share_replies_stops_and_the_reaper(
    tmp_path: Path, upstream: Process
) -> None:
    if not redis_available():
        if os.getenv("REQUIRE_SERVICES") == "1":
            pytest.fail(f"Redis is required (REQUIRE_SERVICES=1) but {REDIS_URL} does not answer")
        pytest.skip(f"needs Redis at {REDIS_URL}")
    timing = {
        "STREAM_FLUSH_SECONDS": "0.3",
        "STREAM_HEARTBEAT_SECONDS": "0.3",
        "STREAM_STALE_SECONDS": "2",
        "REAPER_INTERVAL_SECONDS": "0.5",
    }
    with scratch_database(tmp_path) as db:
        env = processes.app_env(
            upstream,
            tmp_path,
            REDIS_URL=REDIS_URL,
            CHANNEL_PREFIX=f"test-{uuid.uuid4().hex[:8]}",
            **timing,
            **db,
        )
        processes.migrate(env)
        processes.create_user(env, "sam", PASSWORD)
        a = processes.start_app("a", tmp_path, env)
        b = processes.start_app("b", tmp_path, env)
        try:
            cookie_a = processes.login_cookie(a.url, "sam", PASSWORD)
            cookie_b = processes.login_cookie(b.url, "sam", PASSWORD)
            on_a = Client(a, cookie_a)
            on_b = Client(b, cookie_b)

            # 1. A reply started through A is watched live from B, without gap or duplicate.
            first = send(on_a, '[[fake {"tokens": 60, "interval_ms": 20}]] first')
            on_a.until(lambda f: f["type"] == "delta" and f["seq"] >= 3)
            on_b.send({"type": "watch", "conversation": first["conversation"]})
            on_b.until(lambda f: f["type"] == "watching")
            done_b = on_b.until(lambda f: f["type"] == "done" and f["message"] == first["message"])
            done_a = on_a.until(lambda f: f["type"] == "done" and f["message"] == first["message"])
            assert done_a["status"] == done_b["status"] == "complete"
            assert on_b.text(first["message"]) == on_a.text(first["message"])
            assert any(f["type"] == "snapshot" for f in on_b.frames)

            # 1b. B watches a conversation with nothing streaming (no snapshot to ask A for)
            # when a reply starts in A: B sees the start and every delta, the same text as A.
            quiet = send(on_a, '[[fake {"tokens": 2, "interval_ms": 1}]] quiet')
            on_a.until(lambda f: f["type"] == "done" and f["message"] == quiet["message"])
            on_b.send({"type": "watch", "conversation": quiet["conversation"]})
            on_b.until(
                lambda f: f["type"] == "watching" and f["conversation"] == quiet["conversation"]
            )
            again = send(
                on_a,
                '[[fake {"tokens": 40, "interval_ms": 10}]] again',
                conversation=quiet["conversation"],
            )
            done_b = on_b.until(lambda f: f["type"] == "done" and f["message"] == again["message"])
            on_a.until(lambda f: f["type"] == "done" and f["message"] == again["message"])
            seen_b = [f for f in on_b.frames if f.get("message") == again["message"]]
            assert seen_b[0]["type"] == "started"
            assert not any(f["type"] == "snapshot" for f in seen_b)
            assert [f["seq"] for f in seen_b if f["type"] == "delta"] == list(
                range(1, done_b["seq"] + 1)
            )
            assert on_b.text(again["message"]) == on_a.text(again["message"]) != ""

            # 2. Stop sent through B stops the generation running in A.
            second = send(
                on_a,
                '[[fake {"tokens": 500, "interval_ms": 20}]] second',
                conversation=first["conversation"],
            )
            on_b.until(lambda f: f["type"] == "delta" and f["message"] == second["message"])
            on_b.send({"type": "stop", "message": second["message"]})
            stopped = on_b.until(
                lambda f: f["type"] == "done" and f["message"] == second["message"]
            )
            assert stopped["status"] == "stopped"
            stats = processes.fake_stats(upstream)
            assert stats["outcomes"].get("cancelled", 0) >= 1

            # 3. A dies mid-reply; B's reaper marks the reply interrupted with a prefix saved.
            third = send(
                on_a,
                '[[fake {"tokens": 500, "interval_ms": 20}]] third',
                conversation=first["conversation"],
            )
            on_b.until(lambda f: f["type"] == "delta" and f["message"] == third["message"])
            on_b.until(lambda f: f["type"] == "delta" and f["seq"] >= 30)
            a.signal(signal.SIGKILL)
            a.proc.wait(10)
            reaped = on_b.until(
                lambda f: f["type"] == "done" and f["message"] == third["message"], timeout=30
            )
            assert reaped["status"] == "interrupted"
            streamed = on_b.text(third["message"])
            data = read_json(b, f"/api/conversations/{first['conversation']}", cookie_b)
            saved = next(m for m in data["messages"] if m["id"] == third["message"])
            assert saved["status"] == "interrupted"
            assert saved["content"]
            assert streamed.startswith(saved["content"])
            on_b.close()
        finally:
            a.stop()
            b.stop()


def test_a_server_killed_mid_reply_leaves_an_interrupted_reply_that_can_be_retried(
    tmp_path: Path,
) -> None:
    upstream = processes.start_upstream(tmp_path, "--any-model")
    env = processes.app_env(upstream, tmp_path)
    processes.migrate(env)
    processes.create_user(env, "kim", "correct horse battery staple")
    app = processes.start_app("app", tmp_path, env)
    try:
        cookie = processes.login_cookie(app.url, "kim", "correct horse battery staple")
        client = Client(app, cookie)
        accepted = send(client, '[[fake {"tokens": 400, "interval_ms": 20}]] long answer')
        # Wait for at least one flush of the partial text (once a second).
        client.until(lambda f: f["type"] == "delta" and f["seq"] >= 70, timeout=30)
        seen = client.text(accepted["message"])
        app.signal(signal.SIGKILL)
        app.proc.wait(10)
    finally:
        app.stop()
    app = processes.start_app("restarted", tmp_path, env)
    try:
        cookie = processes.login_cookie(app.url, "kim", "correct horse battery staple")
        # Settled as the process starts, before any websocket asks: the API, the admin and
        # exports never show the reply streaming, and its reservation is released.
        path = f"/api/conversations/{accepted['conversation']}"
        deadline = time.monotonic() + 30
        while True:
            data = read_json(app, path, cookie)
            status = next(m for m in data["messages"] if m["id"] == accepted["message"])["status"]
            if status != "streaming" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == "interrupted"
        assert read_json(app, "/api/me", cookie)["budget"]["reserved"] == "0.000000000000"
        client = Client(app, cookie)
        client.send({"type": "watch", "conversation": accepted["conversation"]})
        watching = client.until(lambda f: f["type"] == "watching")
        assert watching["streaming"] == []  # no spinner forever
        data = read_json(app, f"/api/conversations/{accepted['conversation']}", cookie)
        saved = next(m for m in data["messages"] if m["id"] == accepted["message"])
        assert saved["status"] == "interrupted"
        assert saved["content"] and seen.startswith(saved["content"])
        # Retry writes a new reply in its place.
        client.send(
            {"type": "regenerate", "request_id": uuid.uuid4().hex, "message": accepted["message"]}
        )
        retried = client.until(lambda f: f["type"] == "accepted")
        final = client.until(lambda f: f["type"] == "done" and f["message"] == retried["message"])
        assert final["status"] == "complete"
        client.close()
    finally:
        app.stop()
        upstream.stop()
