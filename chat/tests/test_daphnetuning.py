"""Daphne's per-frame costs removed (chat/daphnetuning.py), on a real reactor and real sockets.

The reactor runs in a child process (installing one in the test process would change it for
every later test). The server there writes small messages, then a body far larger than the
kernel's socket buffers to a client that is not reading yet, then closes; the client checks
every byte and the order, and the server reports how often Twisted's queued path (a writer
registered with the reactor) was taken.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from . import processes

SCRIPT = textwrap.dedent(
    """
    import json, socket, sys, threading, time

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import protocol, reactor

    import click
    from autobahn import util
    from autobahn.websocket import protocol as websocket_protocol

    from chat import daphnetuning

    installed = daphnetuning.install(eager_writes=sys.argv[1] == "on")
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


def run(mode: str) -> dict[str, object]:
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
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


def test_without_it_twisted_queues_every_write() -> None:
    result = run("off")
    assert result["eager"] is False
    assert result["small_ok"] and result["big_ok"] and result["bye_ok"] and result["closed"]
    assert result["queued_after_small"] >= 1
    assert result["same_text"] is True
