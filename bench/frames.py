"""What sending one reply frame costs under daphne: its own path, and the direct one.

.venv/bin/python -m bench.frames [--frames 20000] [--rounds 3]

Starts daphne (`daphne.server.Server`, Twisted's asyncio reactor, the app's runtime patches
installed: `chutesweb.runtime`) in a child process pinned to core 0, with a one-route ASGI app
that accepts a websocket and, when the client says "go", sends `--frames` text frames shaped
like a reply's delta frames, then closes. The client (this process, on core 1) reads every
frame and checks them. The child measures the CPU time of its event loop's thread over the
sending loop only, so the client's reading is not counted; frames go out through daphne's `send`
(the child run with `RUNTIME_PATCHES_OFF=direct_text_frames`) or through
`daphne_frames.text_writer` (the default), alternately, `--rounds` times each. Prints the CPU µs
per frame of each round and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent

SERVER = textwrap.dedent(
    """
    import asyncio, json, os, sys, time

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from daphne.server import Server

    from chutesweb import runtime
    from chutesweb.runtime import daphne_frames

    direct, count = sys.argv[1] == "direct", int(sys.argv[2])
    if not direct:
        off = os.getenv("RUNTIME_PATCHES_OFF", "")
        os.environ["RUNTIME_PATCHES_OFF"] = off + ",direct_text_frames"
    runtime.install()
    result = {}

    def frame(seq):
        return json.dumps(
            {"type": "delta", "conversation": 1234, "message": 56789, "seq": seq,
             "content": " token"}, separators=(",", ":"),
        )

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        await receive()  # "go"
        write = daphne_frames.text_writer(send)
        texts = [frame(seq) for seq in range(count)]
        started = time.thread_time()
        for text in texts:
            if write is None or not write(text):
                await send({"type": "websocket.send", "text": text})
        result["cpu_us_per_frame"] = (time.thread_time() - started) / count * 1e6
        result["writer"] = write is not None
        await send({"type": "websocket.close", "code": 1000})
        await asyncio.sleep(0.2)
        print(json.dumps(result), flush=True)
        server.stop()

    server = Server(
        app,
        endpoints=["tcp:port=0:interface=127.0.0.1"],
        signal_handlers=False,
        ready_callable=lambda: print(server.listening_addresses[0][1], flush=True),
    )
    server.run()
    """
)


def _pinned(core: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core)]
    return []


def one_round(mode: str, frames: int) -> dict[str, Any]:
    child = subprocess.Popen(
        [*_pinned(0), sys.executable, "-c", SERVER, mode, str(frames)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        received = 0
        with connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
            ws.send("go")
            for message in ws:
                assert json.loads(message)["seq"] == received
                received += 1
        result = json.loads(child.stdout.readline())
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    if received != frames:
        raise SystemExit(f"{mode}: {received} of {frames} frames arrived")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    costs: dict[str, list[float]] = {"daphne": [], "direct": []}
    for round_number in range(1, args.rounds + 1):
        for mode in costs:
            result = one_round(mode, args.frames)
            assert result["writer"] is (mode == "direct")
            cost = float(result["cpu_us_per_frame"])
            costs[mode].append(cost)
            print(f"round {round_number} {mode:6}: {cost:6.2f} µs CPU per frame")
    for mode, values in costs.items():
        print(f"median {mode:6}: {statistics.median(values):6.2f} µs CPU per frame")


if __name__ == "__main__":
    main()
