"""A hostile client against a real server: it acknowledges everything, asks again and again
for the snapshot of a long reply, and never reads. What the server buffers for it is bounded by
what its connection really holds, not by what it claims to have read."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.typing import Origin

from chat.testing import processes
from chat.testing.wsclient import MODEL, send_frame

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
BUFFER_LIMIT = 256 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_client_that_claims_to_read_everything_and_reads_nothing_is_closed(
    tmp_path: Path,
) -> None:
    upstream = processes.start_upstream(tmp_path, "--any-model")
    env = processes.app_env(
        upstream,
        tmp_path,
        MAX_SOCKET_BUFFER_BYTES=str(BUFFER_LIMIT),
        MAX_MESSAGE_CHARS="1000000",
        DEFAULT_MAX_TOKENS="500000",
    )
    processes.migrate(env)
    # Room for a prompt and a reply of several hundred thousand tokens, as an admin can give.
    code = (
        "import django; django.setup(); from chat.models import ChatModel; "
        f"ChatModel.objects.filter(model_id={MODEL!r})"
        ".update(context_length=2_000_000, max_output_tokens=500_000)"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=processes.ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "chutesweb.settings"},
        check=True,
    )
    processes.create_user(env, "kim", PASSWORD)
    app = processes.start_app("app", tmp_path, env)
    try:
        cookie = processes.login_cookie(app.url, "kim", PASSWORD)
        origin = Origin(app.url)
        url = f"ws://127.0.0.1:{app.port}/ws/chat/"
        # A reply of 900 KB that takes about forty seconds: still streaming, so still sending
        # snapshots, however long a busy machine takes to fill the hostile client's buffers.
        text = "abcdefghij" * 90_000
        directive = json.dumps({"text": text, "tokens": 400, "interval_ms": 100})
        with connect(url, additional_headers={"Cookie": cookie}, origin=origin) as sender:
            sender.send(json.dumps(send_frame(f"[[fake {directive}]] long", model=MODEL)))
            accepted = next(
                frame
                for frame in (json.loads(sender.recv(timeout=20)) for _ in range(10))
                if frame["type"] == "accepted"
            )
            conversation = accepted["conversation"]
            # The hostile client reads as little as its kernel lets it.
            raw = socket.create_connection(("127.0.0.1", app.port))
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            before = rss_bytes(app.proc.pid)
            with connect(
                url,
                sock=raw,
                additional_headers={"Cookie": cookie},
                origin=origin,
                max_size=None,
                ping_interval=None,
            ) as hostile:
                deadline = time.monotonic() + 30
                closed: ConnectionClosed | None = None
                try:
                    while time.monotonic() < deadline:
                        for frame in (
                            {"type": "ack", "received": 10**15},
                            {"type": "watch", "conversation": conversation},
                            {"type": "resync", "conversation": conversation},
                        ):
                            hostile.send(json.dumps(frame))
                        # Within the per-socket frame rate, so only the buffer can stop it.
                        time.sleep(0.2)
                except ConnectionClosed as exc:
                    closed = exc
                grown = rss_bytes(app.proc.pid) - before
                if closed is None:
                    # Read what it was sent, up to the end of the connection.
                    try:
                        while True:
                            hostile.recv(timeout=20)
                    except ConnectionClosed as exc:
                        closed = exc
            # Closed by the server, with 4408 when the client read far enough to see the close
            # frame (else the close handshake timed out and the connection was dropped).
            assert closed is not None
            assert closed.rcvd is None or closed.rcvd.code == 4408, closed
            assert "its connection holds" in app.log.read_text()
            assert grown < 64 * 1024 * 1024, grown
            # The reply and its sender carried on.
            done = None
            while done is None:
                frame = json.loads(sender.recv(timeout=60))
                if frame["type"] == "done":
                    done = frame
            assert done["status"] == "complete"
    finally:
        app.stop()
        upstream.stop()
