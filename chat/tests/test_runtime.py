"""The server's runtime patches (chutesweb/runtime), on a real reactor and real sockets.

The reactor runs in a child process (installing one in the test process would change it for
every later test). The server there writes small messages, then a body far larger than the
kernel's socket buffers to a client that is not reading yet, then closes; the client checks
every byte and the order, and the server reports how often Twisted's queued path (a writer
registered with the reactor) was taken.
"""

from __future__ import annotations

import collections
import functools
import json
import subprocess
import sys
import textwrap
import types
from typing import Any

import pytest
from autobahn.websocket.protocol import WebSocketProtocol

from chat.testing import processes
from chutesweb import runtime
from chutesweb.runtime import daphne_bodies, daphne_frames

SCRIPT = textwrap.dedent(
    """
    import json, os, socket, sys, threading, time

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import protocol, reactor

    import click
    from autobahn import util
    from autobahn.websocket import protocol as websocket_protocol

    from chutesweb import runtime

    if sys.argv[1] == "off":
        os.environ["RUNTIME_PATCHES_OFF"] = "eager_writes"
    installed = runtime.install()
    eager = "eager_writes" in installed
    queued = []
    add_writer = reactor.addWriter
    reactor.addWriter = lambda writer: (queued.append(writer), add_writer(writer))

    SMALL = [b"%05d" % i for i in range(200)]
    BIG = bytes(range(256)) * (16 * 1024)  # 4 MiB

    class Talker(protocol.Protocol):
        def dataReceived(self, data):
            for command in data.split():
                if command == b"small":
                    for piece in SMALL:
                        self.transport.write(piece)
                elif command == b"big":
                    self.transport.write(BIG)
                    self.transport.write(b"END")
                elif command == b"bye":
                    self.transport.write(b"BYE")
                    self.transport.loseConnection()

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Talker), interface="127.0.0.1")
    result = {"eager": eager}

    # Frame log arguments: no terminal styling until a log line is written, then the same text.
    styled = []
    style = click.style
    click.style = lambda *args, **kwargs: (styled.append(1), style(*args, **kwargs))[1]
    argument = websocket_protocol.hltype(Talker.dataReceived)
    result["styled_before_format"] = len(styled)
    result["same_text"] = f"{argument}" == util.hltype(Talker.dataReceived)
    click.style = style
    # The settings dump of every new connection: formatted only when written, the same text.
    import pprint
    attrs = [("autoPingInterval", 0, "Factory")] * 40
    dump = websocket_protocol.pformat(attrs)
    result["pformat_deferred"] = not isinstance(dump, str)
    result["pformat_same"] = f"{dump}" == pprint.pformat(attrs)
    result["timings_text"] = str(websocket_protocol.Timings()) == "{}"

    def read_exactly(sock, size):
        data = bytearray()
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                break
            data += chunk
        return bytes(data)

    def client():
        try:
            sock = socket.create_connection(("127.0.0.1", port.getHost().port))
            sock.settimeout(20)
            sock.sendall(b"small ")
            result["small_ok"] = read_exactly(sock, 1000) == b"".join(SMALL)
            result["queued_after_small"] = len(queued)
            sock.sendall(b"big ")
            # Not reading: the kernel's buffers fill and the rest must queue with the reactor.
            deadline = time.monotonic() + 10
            while not queued and time.monotonic() < deadline:
                time.sleep(0.01)
            result["big_ok"] = read_exactly(sock, len(BIG) + 3) == BIG + b"END"
            result["queued_after_big"] = len(queued)
            sock.sendall(b"bye ")
            result["bye_ok"] = read_exactly(sock, 3) == b"BYE"
            result["closed"] = sock.recv(10) == b""
        finally:
            reactor.callFromThread(reactor.stop)

    reactor.callWhenRunning(lambda: threading.Thread(target=client, daemon=True).start())
    reactor.run()
    print(json.dumps(result))
    """
)


def run(mode: str, script: str = SCRIPT) -> dict[str, Any]:
    """Run a reactor script in a child process; its last line of output is its JSON result."""
    completed = subprocess.run(
        [sys.executable, "-c", script, mode],
        cwd=processes.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_frames_go_out_at_once_and_a_full_socket_still_gets_every_byte_in_order() -> None:
    result = run("on")
    assert result["eager"] is True
    assert result["small_ok"] and result["big_ok"] and result["bye_ok"] and result["closed"]
    # 200 small writes to a reading client: not one went through the reactor's writer queue.
    assert result["queued_after_small"] == 0
    # The big body did not fit: what the kernel refused was queued and sent in order after it.
    assert result["queued_after_big"] >= 1
    # autobahn's per-frame debug log styles nothing unless the line is written, and reads the same.
    assert result["styled_before_format"] == 0
    assert result["same_text"] is True
    assert result["pformat_deferred"] is True
    assert result["pformat_same"] is True
    assert result["timings_text"] is True


def test_without_it_twisted_queues_every_write() -> None:
    result = run("off")
    assert result["eager"] is False
    assert result["small_ok"] and result["big_ok"] and result["bye_ok"] and result["closed"]
    assert result["queued_after_small"] >= 1
    assert result["same_text"] is True


# The end of a script that serves `app` under daphne with a `client` function in a thread and
# prints `result`.
SERVE = textwrap.dedent(
    """
    server = Server(
        app,
        endpoints=["tcp:port=0:interface=127.0.0.1"],
        signal_handlers=False,
        ready_callable=lambda: threading.Thread(target=client, daemon=True).start(),
        **SERVER_OPTIONS,
    )
    server.run()
    print(json.dumps(result))
    """
)

DIRECT_SCRIPT = (
    textwrap.dedent(
        """
    import json, os, sys, threading

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor

    from daphne.server import Server
    from websockets.sync.client import connect

    from chutesweb import runtime
    from chutesweb.runtime import daphne_frames

    if sys.argv[1] == "off":
        os.environ["RUNTIME_PATCHES_OFF"] = "direct_text_frames"
    installed = runtime.install()
    LIMIT = 100_000
    TEXTS = [
        "a",
        "\\u00fc" * 62,  # 124 bytes
        "x" * 125,
        "x" * 126,
        "",  # daphne sends nothing for an empty text
        "x" * 65535,
        "x" * 65536,
        "\\u00e9\\u4e2d\\U0001f600" * 9000,  # 81000 bytes of two-, three- and four-byte characters
        "y" * (LIMIT + 1),  # over the message size limit: refused
    ]
    result = {"installed": sorted(installed), "direct": [], "refused": []}

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        write = daphne_frames.text_writer(send)
        result["writer"] = write is not None
        for index, text in enumerate(TEXTS):
            if write is not None and write(text):
                result["direct"].append(index)
            else:
                try:
                    await send({"type": "websocket.send", "text": text})
                except Exception as exc:
                    result["refused"].append([index, type(exc).__name__])
            # Binary frames always take daphne's path; order must hold across both.
            await send({"type": "websocket.send", "bytes": b"%d" % index})
        await send({"type": "websocket.close", "code": 1000})

    def client():
        try:
            port = server.listening_addresses[0][1]
            received = []
            with connect(f"ws://127.0.0.1:{port}/", max_size=None, open_timeout=10) as ws:
                try:
                    while True:
                        received.append(ws.recv(timeout=10))
                except Exception as exc:
                    result["ended"] = type(exc).__name__
            expected = []
            for index, text in enumerate(TEXTS):
                if text and len(text.encode()) <= LIMIT:
                    expected.append(text)
                expected.append(b"%d" % index)
            result["same"] = received == expected
            result["received"] = len(received)
        finally:
            reactor.callFromThread(reactor.stop)

    SERVER_OPTIONS = {"websocket_max_message_size": LIMIT}
    """
    )
    + SERVE
)


def test_direct_text_frames_reach_a_real_client_intact_and_in_order() -> None:
    result = run("on", DIRECT_SCRIPT)
    assert "direct_text_frames" in result["installed"]
    assert result["writer"] is True
    # Every non-empty text within the limit went directly; the others took daphne's path,
    # which drops an empty text and refuses one over the limit, as it does without this.
    assert result["direct"] == [0, 1, 2, 3, 5, 6, 7]
    assert result["refused"] == [[8, "PayloadExceededError"]]
    assert result["same"] is True, result
    assert result["ended"] == "ConnectionClosedOK"


def test_with_direct_frames_off_daphne_sends_the_same() -> None:
    result = run("off", DIRECT_SCRIPT)
    assert "direct_text_frames" not in result["installed"]
    assert result["writer"] is False
    assert result["direct"] == []
    assert result["refused"] == [[8, "PayloadExceededError"]]
    assert result["same"] is True, result


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_a_text_frame_is_the_bytes_autobahn_writes(size: int) -> None:
    written: list[bytes] = []
    # A stand-in for the protocol, with only what sendFrame reads.
    sender: Any = types.SimpleNamespace(
        factory=types.SimpleNamespace(isServer=True),
        maskServerFrames=False,
        trafficStats=types.SimpleNamespace(outgoingWebSocketFrames=0),
        logFrames=False,
        sendData=lambda raw, sync=False, chopsize=None: written.append(raw),
    )
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    WebSocketProtocol.sendFrame(sender, opcode=1, payload=payload)
    assert daphne_frames.text_frame(payload) == written[0]


class _Connection:
    """The attributes of daphne's websocket protocol that the direct writer reads."""

    def __init__(self) -> None:
        self.state = WebSocketProtocol.STATE_OPEN
        self.send_state = WebSocketProtocol.SEND_STATE_GROUND
        self.send_queue: collections.deque[tuple[bytes, bool]] = collections.deque()
        self._perMessageCompress: object | None = None
        self.maskServerFrames = False
        self.autoFragmentSize = 0
        self.logFrames = False
        self.logOctets = False
        self.trackedTimings: object | None = None
        self.maxMessagePayloadSize = 0
        self.client_addr = ("127.0.0.1", 5000)
        self.trafficStats = types.SimpleNamespace(
            outgoingWebSocketMessages=0,
            outgoingWebSocketFrames=0,
            outgoingOctetsAppLevel=0,
            outgoingOctetsWebSocketLevel=0,
            outgoingOctetsWireLevel=0,
        )
        self.written: list[bytes] = []
        self.transport = types.SimpleNamespace(write=self.written.append)


def _writer(
    monkeypatch: pytest.MonkeyPatch, connection: _Connection, details: dict[str, object] | None
) -> Any:
    from daphne.server import Server

    monkeypatch.setattr(runtime, "_installed", {"direct_text_frames"})
    server = types.SimpleNamespace(connections={} if details is None else {connection: details})
    send = functools.partial(types.MethodType(Server.handle_reply, server), connection)
    return daphne_frames.text_writer(send)


def test_the_direct_writer_writes_the_frame_and_counts_it(monkeypatch: pytest.MonkeyPatch) -> None:
    connection = _Connection()
    write = _writer(monkeypatch, connection, {})
    assert write("h\u00e9llo") is True
    assert connection.written == [daphne_frames.text_frame("h\u00e9llo".encode())]
    stats = connection.trafficStats
    assert (stats.outgoingWebSocketMessages, stats.outgoingOctetsAppLevel) == (1, 6)
    assert stats.outgoingOctetsWireLevel == 8


@pytest.mark.parametrize(
    ("change", "details"),
    [
        ({"state": WebSocketProtocol.STATE_CONNECTING}, {}),
        ({"state": WebSocketProtocol.STATE_CLOSING}, {}),
        ({"state": WebSocketProtocol.STATE_CLOSED}, {}),
        ({"send_state": WebSocketProtocol.SEND_STATE_MESSAGE_BEGIN}, {}),
        ({"send_state": WebSocketProtocol.SEND_STATE_INSIDE_MESSAGE_FRAME}, {}),
        ({"send_queue": collections.deque([(b"queued", False)])}, {}),
        ({"_perMessageCompress": object()}, {}),
        ({"maskServerFrames": True}, {}),
        ({"autoFragmentSize": 4}, {}),
        ({"logFrames": True}, {}),
        ({"logOctets": True}, {}),
        ({"trackedTimings": object()}, {}),
        ({"maxMessagePayloadSize": 4}, {}),  # "hello" is over it
        ({}, {"disconnected": True}),
        ({}, None),  # no longer one of daphne's connections
    ],
)
def test_the_direct_writer_leaves_every_other_case_to_daphne(
    monkeypatch: pytest.MonkeyPatch, change: dict[str, object], details: dict[str, object] | None
) -> None:
    connection = _Connection()
    for name, value in change.items():
        setattr(connection, name, value)
    write = _writer(monkeypatch, connection, details)
    assert write("hello") is False
    assert connection.written == []
    assert connection.trafficStats.outgoingWebSocketMessages == 0


def test_the_direct_writer_leaves_an_empty_text_to_daphne(monkeypatch: pytest.MonkeyPatch) -> None:
    connection = _Connection()
    assert _writer(monkeypatch, connection, {})("") is False
    assert connection.written == []


def test_no_direct_writer_for_another_send_or_when_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection = _Connection()
    assert _writer(monkeypatch, connection, {}) is not None

    async def other_send(message: dict[str, object]) -> None:
        pass

    assert daphne_frames.text_writer(other_send) is None
    monkeypatch.setattr(runtime, "_installed", set())
    assert daphne_frames.text_writer(functools.partial(other_send)) is None


FREED_SCRIPT = (
    textwrap.dedent(
        """
    import collections, gc, json, sys, threading, time

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor

    from daphne.server import Server
    from websockets.sync.client import connect

    from chutesweb import runtime

    installed = sorted(runtime.install()) if sys.argv[1] == "on" else []
    CONNECTIONS = 20
    result = {"installed": installed}

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        while (await receive())["type"] != "websocket.disconnect":
            await send({"type": "websocket.send", "text": "pong"})

    def collect():
        # Whatever is garbage now is only reachable through reference cycles.
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        result["garbage"] = len(gc.garbage)
        kinds = collections.Counter(type(o).__qualname__ for o in gc.garbage)
        result["protocols"] = kinds["WebSocketProtocol"] + kinds["WebRequest"]
        gc.set_debug(0)
        reactor.stop()

    def client():
        try:
            port = server.listening_addresses[0][1]
            gc.collect()  # what start-up left; collections stay off from here on
            for _ in range(CONNECTIONS):
                with connect(f"ws://127.0.0.1:{port}/", open_timeout=10) as ws:
                    ws.send("ping")
                    result.setdefault("pongs", 0)
                    result["pongs"] += ws.recv(timeout=10) == "pong"
            # daphne lets go of a closed connection on its next check, once a second; the
            # collection below runs on the reactor after that check has finished.
            deadline = time.monotonic() + 20
            while server.connections and time.monotonic() < deadline:
                time.sleep(0.05)
            result["released"] = not server.connections
        finally:
            reactor.callFromThread(collect)

    SERVER_OPTIONS = {}
    gc.disable()
    """
    )
    + SERVE
)


def test_closed_websocket_connections_are_freed_without_the_collector() -> None:
    result = run("on", FREED_SCRIPT)
    assert "free_closed_connections" in result["installed"]
    assert result["pongs"] == 20
    assert result["released"] is True
    assert result["garbage"] == 0


def test_without_it_each_closed_connection_waits_for_a_full_collection() -> None:
    result = run("off", FREED_SCRIPT)
    assert result["pongs"] == 20
    assert result["released"] is True
    # The protocol objects of every connection are left in reference cycles.
    assert result["protocols"] == 40
    assert result["garbage"] >= 20 * 40


# Body limits: the shape checks that keep a changed daphne or Twisted on its stock path.


@pytest.fixture
def stock_web_request(monkeypatch: pytest.MonkeyPatch) -> Any:
    """daphne's WebRequest as shipped, even when this process imported the app with a reactor
    loaded (and so ran install()): the wrapped methods removed for the test."""
    from daphne.http_protocol import WebRequest

    for name in ("gotLength", "handleContentChunk", "requestReceived"):
        if name in vars(WebRequest):
            monkeypatch.delattr(WebRequest, name)
    return WebRequest


def test_body_limits_leave_a_changed_daphne_request_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, stock_web_request: Any
) -> None:
    WebRequest = stock_web_request

    def own_got_length(self: Any, length: int | None) -> None:
        pass

    monkeypatch.setattr(WebRequest, "gotLength", own_got_length, raising=False)
    chunk = WebRequest.handleContentChunk
    assert daphne_bodies.apply() is False
    assert WebRequest.gotLength is own_got_length
    assert WebRequest.handleContentChunk is chunk
    assert "WebRequest.gotLength is not Twisted's" in caplog.text


def test_body_limits_leave_a_changed_twisted_request_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, stock_web_request: Any
) -> None:
    from twisted.web import http

    WebRequest = stock_web_request

    def received(self: Any, command: bytes, path: bytes, version: bytes, extra: Any) -> None:
        pass

    monkeypatch.setattr(http.Request, "requestReceived", received)
    got_length = WebRequest.gotLength
    assert daphne_bodies.apply() is False
    assert WebRequest.gotLength is got_length
    assert "Request.requestReceived takes" in caplog.text
