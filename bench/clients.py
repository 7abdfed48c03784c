"""The load client's two kinds of stream, and what each saw.

Every token the stand-in writes is stamped `⟦index:monotonic_ns⟧ ` at the moment it is written.
`time.monotonic_ns()` is one clock for every process on a Linux host, so a token's latency is its
arrival time here minus its stamp, whichever way it came:

- direct: an HTTP client reading the stand-in's `/v1/chat/completions` stream itself;
- relayed: a websocket client of the app, logged in as a real user, sending a real `send` frame
  and reading `delta` frames (the app reads the same stand-in through its forward proxy path).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin

from .stack import MODEL, TOKEN

STAMP = re.compile(r"⟦(\d+):(\d+)⟧")
STAMP_BYTES = re.compile("⟦(\\d+):(\\d+)⟧".encode())
# What a relayed reply's text must be, and nothing else: stamps and their spaces.
STAMPED_TEXT = re.compile(r"(?:⟦\d+:\d+⟧ )*")
# The longest stamp (⟦ + 10 digits + : + 20 digits + ⟧) in UTF-8, for carrying a split one.
_STAMP_TAIL = 40


def script_directive(tokens: int, interval_ms: float, ttft_ms: float) -> str:
    """The message that makes the stand-in stream a stamped reply on a fixed schedule."""
    fields = {"stamp": True, "tokens": tokens, "interval_ms": interval_ms, "ttft_ms": ttft_ms}
    return f"[[fake {json.dumps(fields)}]] benchmark"


@dataclass
class StreamResult:
    cohort: str  # "direct", "relayed" or "direct-b" (the second cohort of an A/A check)
    tokens_expected: int
    sent_ns: int = 0
    first_ns: int | None = None
    # (token index, emit time, arrival time) in arrival order.
    arrivals: list[tuple[int, int, int]] = field(default_factory=list)
    status: str = "pending"
    error: str | None = None
    frames: int = 0
    seq_gaps: int = 0
    corrupt: bool = False

    @property
    def ttft_ns(self) -> int | None:
        return None if self.first_ns is None else self.first_ns - self.sent_ns

    def latencies_ns(self) -> list[int]:
        return [arrival - emit for _, emit, arrival in self.arrivals]

    def integrity(self) -> dict[str, int]:
        """Tokens lost, duplicated and out of order, against the indices the stand-in wrote."""
        seen = [index for index, _, _ in self.arrivals]
        unique = set(seen)
        lost = sum(1 for index in range(self.tokens_expected) if index not in unique)
        out_of_order = 0
        highest = -1
        for index in seen:
            if index < highest:
                out_of_order += 1
            highest = max(highest, index)
        return {
            "lost": lost,
            "duplicated": len(seen) - len(unique),
            "out_of_order": out_of_order,
            "extra": sum(1 for index in unique if not 0 <= index < self.tokens_expected),
        }


class DirectClient:
    """Reads the stand-in's chat completions stream directly (httpx or aiohttp)."""

    def __init__(self, upstream_url: str, kind: str = "httpx") -> None:
        self.url = f"{upstream_url}/v1/chat/completions"
        self.kind = kind
        self.headers = {
            "Authorization": f"Bearer {TOKEN}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "Accept-Encoding": "identity",
        }
        self._httpx: httpx.AsyncClient | None = None
        self._aiohttp: Any = None

    async def __aenter__(self) -> DirectClient:
        if self.kind == "httpx":
            self._httpx = httpx.AsyncClient(
                timeout=httpx.Timeout(120.0),
                limits=httpx.Limits(max_connections=5000, max_keepalive_connections=100),
            )
        else:
            import aiohttp

            self._aiohttp = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=5000, limit_per_host=5000),
                timeout=aiohttp.ClientTimeout(total=120),
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._httpx is not None:
            await self._httpx.aclose()
        if self._aiohttp is not None:
            await self._aiohttp.close()

    def _body(self, content: str) -> bytes:
        return json.dumps(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": content}],
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        ).encode()

    async def stream(self, content: str, result: StreamResult, limit: float = 120.0) -> None:
        try:
            async with asyncio.timeout(limit):
                await self._stream(content, result)
        except TimeoutError:
            result.status, result.error = "timeout", f"not over within {limit:g}s"

    async def _stream(self, content: str, result: StreamResult) -> None:
        body = self._body(content)
        buffer = b""
        try:
            result.sent_ns = time.monotonic_ns()
            if self._httpx is not None:
                async with self._httpx.stream(
                    "POST", self.url, content=body, headers=self.headers
                ) as response:
                    if response.status_code != 200:
                        result.status, result.error = "error", f"HTTP {response.status_code}"
                        return
                    async for chunk in response.aiter_raw():
                        buffer = self._feed(buffer + chunk, time.monotonic_ns(), result)
            else:
                async with self._aiohttp.post(self.url, data=body, headers=self.headers) as resp:
                    if resp.status != 200:
                        result.status, result.error = "error", f"HTTP {resp.status}"
                        return
                    async for chunk in resp.content.iter_any():
                        buffer = self._feed(buffer + chunk, time.monotonic_ns(), result)
            result.status = "complete"
        except Exception as exc:
            result.status, result.error = "error", f"{type(exc).__name__}: {exc}"

    @staticmethod
    def _feed(data: bytes, now: int, result: StreamResult) -> bytes:
        result.frames += 1
        end = 0
        for match in STAMP_BYTES.finditer(data):
            if result.first_ns is None:
                result.first_ns = now
            result.arrivals.append((int(match[1]), int(match[2]), now))
            end = match.end()
        # Keep only what may hold the start of a stamp split across two reads.
        rest = data[end:]
        return rest[-_STAMP_TAIL:]


class RelaySocket:
    """One browser tab: a logged-in websocket to the app, speaking the chat protocol."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, app_url: str, cookie: str) -> RelaySocket:
        ws_url = app_url.replace("http://", "ws://", 1) + "/ws/chat/"
        ws = await connect(
            ws_url,
            additional_headers={"Cookie": cookie},
            origin=Origin(app_url),
            open_timeout=120,
            # Browsers send no pings; a ping lost under load would only add noise.
            ping_interval=None,
            close_timeout=5,
            max_size=2**22,
        )
        return cls(ws)

    async def close(self) -> None:
        await self.ws.close()

    async def stream(self, content: str, result: StreamResult, limit: float = 120.0) -> None:
        """One reply, read until its `done`. A reply that has not ended after `limit` seconds
        counts as failed (status "timeout"): a relay that drops a frame must not hang the run."""
        try:
            async with asyncio.timeout(limit):
                await self._stream(content, result)
        except TimeoutError:
            result.status, result.error = "timeout", f"no done within {limit:g}s"

    async def _stream(self, content: str, result: StreamResult) -> None:
        frame = json.dumps(
            {
                "type": "send",
                "request_id": uuid.uuid4().hex,
                "conversation": None,
                "model": MODEL,
                "content": content,
            }
        )
        text: list[str] = []
        last_seq = 0
        reply: int | None = None
        try:
            result.sent_ns = time.monotonic_ns()
            await self.ws.send(frame)
            while True:
                raw = await self.ws.recv()
                now = time.monotonic_ns()
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "accepted":
                    reply = message["message"]
                    continue
                if message.get("message") != reply and kind != "error":
                    # A late frame of an earlier reply on this socket (one that timed out).
                    continue
                if kind == "delta":
                    result.frames += 1
                    seq = message["seq"]
                    if seq != last_seq + 1:
                        result.seq_gaps += 1
                    last_seq = seq
                    content_part = message.get("content") or ""
                    text.append(content_part)
                    for match in STAMP.finditer(content_part):
                        if result.first_ns is None:
                            result.first_ns = now
                        result.arrivals.append((int(match[1]), int(match[2]), now))
                elif kind == "snapshot":
                    # Only sent to a socket that missed frames; its text replaces what came before.
                    result.seq_gaps += 1
                    last_seq = message["seq"]
                elif kind == "done":
                    result.status = message.get("status", "?")
                    if message.get("error"):
                        result.error = message["error"].get("code")
                    break
                elif kind == "error":
                    result.status, result.error = "refused", message.get("code")
                    break
        except Exception as exc:
            result.status, result.error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            result.corrupt = STAMPED_TEXT.fullmatch("".join(text)) is None


async def loop_lag(samples: list[float], period: float = 0.01) -> None:
    """How late this process's own event loop runs a timer: a busy load client shows here."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(period)
        samples.append(max(0.0, loop.time() - started - period))
