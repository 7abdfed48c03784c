"""A local stand-in for Lava's forward proxy and the Chutes API, on raw asyncio streams.

It is a small HTTP/1.1 server with keep-alive rather than a framework app because tests need
byte-exact control of the stream (chunk sizes, CRLF, bare error lines, resets, stalls) and
benchmarks need thousands of concurrent streams on one loop.

This module serves the connections and routes them; the chat-completions endpoint is in
`completions.py`, the state the two share in `state.py`, the HTTP reading and writing in
`wire.py` and the error bodies in `errors.py`.

Endpoints:
- `POST /v1/forward?u=<percent-encoded target>`: checks the bearer (one of `tokens` as-is, or a
  base64 JSON forward token whose `secret_key` is one of them), then serves the target's path
  (`.../chat/completions`, or `.../models` by GET or POST) and adds `x-lava-request-id`;
- `POST /v1/chat/completions`: the same chat endpoint reached directly (streaming or not);
- `GET /v1/models`: the catalogue (no auth, like Chutes);
- `GET /v1/requests/{id}`: Lava's billing record of a request served through `/v1/forward`,
  available once its stream ended;
- `GET /_fake/stats[?since=N]`: the stand-in's own load figures (streams, tokens, schedule
  lateness), of the requests after request number N.

With `strict_models` (the default) an unknown model gets Chutes' `404 model not found: X`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

from chat.testing.fakeupstream.catalogue import MILLION, lava_price, price_of
from chat.testing.fakeupstream.completions import ChatCompletions
from chat.testing.fakeupstream.errors import error_body
from chat.testing.fakeupstream.script import expected_text, make_script
from chat.testing.fakeupstream.state import LogEntry, Queued
from chat.testing.fakeupstream.wire import Request, read_request, send_json

__all__ = ["FakeUpstream", "LogEntry", "error_body", "running_in_thread"]

logger = logging.getLogger("chat.testing.fakeupstream")


class FakeUpstream(ChatCompletions):
    # Addresses

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def forward_url(self) -> str:
        return f"{self.url}/v1/forward"

    @property
    def api_base(self) -> str:
        return f"{self.url}/v1"

    # Life cycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(
            self._connection, self.host, self.port, backlog=4096, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> FakeUpstream:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # Control, safe to call from any thread

    def push_script(self, **script: Any) -> None:
        """Queue a script for the next chat request (with fail_times, for the next N+1)."""
        make_script(self._default, **script)  # fail now, in the caller, on a bad field
        with self._lock:
            self._queue.append(Queued(dict(script), int(script.get("fail_times") or 0)))

    def set_default_script(self, **script: Any) -> None:
        new = make_script(**script)
        with self._lock:
            self._default = new

    def clear_scripts(self) -> None:
        with self._lock:
            self._queue.clear()
            self._attempts.clear()

    def set_catalogue(self, models: Sequence[Mapping[str, Any]]) -> None:
        with self._lock:
            self._catalogue = [dict(model) for model in models]

    def set_request_cost(self, request_id: str, cost: Decimal | str) -> None:
        with self._lock:
            self._planted[request_id] = Decimal(str(cost))

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def expected_text(self, messages: Sequence[Any], **script: Any) -> str:
        """The answer this stand-in streams for `messages` under its current default script."""
        with self._lock:
            default = self._default
        return expected_text(script, messages, default=default)

    # Observation

    @property
    def log(self) -> list[LogEntry]:
        with self._lock:
            return list(self._log)

    @property
    def last(self) -> LogEntry | None:
        with self._lock:
            return self._log[-1] if self._log else None

    @property
    def active_streams(self) -> int:
        return self._active

    def stats(self, since: int = 0) -> dict[str, Any]:
        """Load figures for benchmarks: is the stand-in keeping its schedule? Only requests after
        request number `since` count (`last_request` of an earlier answer), so that a benchmark
        can look at one phase of a run."""
        log = self.log
        streams = [
            entry
            for entry in log
            if entry.seq > since and entry.stream and entry.status == HTTPStatus.OK
        ]
        lateness = sorted(entry.max_lateness_ms for entry in streams)

        def pick(fraction: float) -> float:
            return lateness[min(len(lateness) - 1, int(len(lateness) * fraction))]

        return {
            "active_streams": self._active,
            "last_request": log[-1].seq if log else 0,
            "requests": len(log),
            "streams": len(streams),
            "tokens_sent": sum(entry.tokens_sent for entry in streams),
            "outcomes": dict(Counter(entry.outcome for entry in streams)),
            "max_lateness_ms": {
                "p50": pick(0.5) if lateness else 0.0,
                "p99": pick(0.99) if lateness else 0.0,
                "max": lateness[-1] if lateness else 0.0,
            },
        }

    def chat_log(self) -> list[LogEntry]:
        """The chat completion requests, direct or through the forward proxy."""
        return [
            entry
            for entry in self.log
            if urlsplit(entry.target or entry.path).path.rstrip("/").endswith("/chat/completions")
        ]

    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 - a bounded wait is the helper's whole point
    ) -> None:
        """Wait until `predicate()` holds; it is re-checked whenever the stand-in's state moves."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            await asyncio.to_thread(self.wait_for, predicate, timeout)
            return
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout}s")
            if self._event is None:
                self._event = asyncio.Event()
            event = self._event
            try:
                async with asyncio.timeout(remaining):
                    await event.wait()
            except TimeoutError:
                if not predicate():
                    raise TimeoutError(f"condition not met within {timeout}s") from None

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Blocking `wait_until`, for threads other than the stand-in's own."""
        if self._loop is not None and self._loop.is_running() and _on_loop(self._loop):
            raise RuntimeError("wait_for() would block the stand-in's own loop; use wait_until()")
        with self._cond:
            self._sync_waiters += 1
            try:
                met = self._cond.wait_for(predicate, timeout)
            finally:
                self._sync_waiters -= 1
        if not met:
            raise TimeoutError(f"condition not met within {timeout}s")

    # HTTP plumbing

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                request = await read_request(reader)
                if request is None or not await self._respond(request, reader, writer):
                    break
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except ValueError:
            with contextlib.suppress(ConnectionError, OSError):
                await send_json(writer, 400, {"detail": "Malformed HTTP request"})
        except asyncio.CancelledError:
            pass
        except Exception:
            # A bug in the stand-in: make it loud, and hang up rather than hang.
            logger.exception("fake upstream failed on a request")
        finally:
            self._connections.discard(task)
            if not writer.is_closing():
                writer.close()

    async def _respond(
        self, request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        keep_alive = request.headers.get("connection", "").lower() != "close"
        entry = LogEntry(
            seq=next(self._seq), method=request.method, path=request.path, started=time.monotonic()
        )
        with self._lock:
            self._log.append(entry)
        self._changed()
        try:
            keep = await self._route(request, reader, writer, entry)
        finally:
            entry.finished = time.monotonic()
            if entry.outcome in ("pending", "streaming"):
                entry.outcome = "failed" if entry.status >= HTTPStatus.BAD_REQUEST else "complete"
            self._changed()
            logger.debug(
                "%s %s -> %s %s tokens=%d",
                request.method,
                entry.target or request.path,
                entry.status,
                entry.outcome,
                entry.tokens_sent,
            )
        return keep and keep_alive

    async def _route(
        self,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        entry: LogEntry,
    ) -> bool:
        path = request.path.rstrip("/")
        method = request.method
        if path == "/v1/models" and method == "GET":
            return await self._models(writer, entry)
        if path == "/v1/chat/completions" and method == "POST":
            if not self._authorise(request, entry):
                return await self._reply(writer, entry, 401, error_body(401, via_forward=False))
            return await self._chat(request, reader, writer, entry, via_forward=False)
        if path == "/v1/forward" and method in ("POST", "GET"):
            return await self._forward(request, reader, writer, entry)
        if path == "/_fake/stats" and method == "GET":
            since = request.query.get("since", ["0"])[0]
            return await self._reply(
                writer, entry, 200, self.stats(int(since) if since.isdigit() else 0)
            )
        if path.startswith("/v1/requests/") and method == "GET":
            return await self._request_record(request, writer, entry)
        if path in ("/v1/models", "/v1/chat/completions", "/v1/forward"):
            return await self._reply(writer, entry, 405, {"detail": "Method Not Allowed"})
        return await self._reply(writer, entry, 404, {"detail": "Not Found"})

    def _authorise(self, request: Request, entry: LogEntry) -> bool:
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            return False
        if credential in self.tokens:
            entry.auth = "token"
            return True
        try:
            padded = credential + "=" * (-len(credential) % 4)
            claims = json.loads(base64.b64decode(padded, validate=True))
        except (binascii.Error, ValueError):
            return False
        if isinstance(claims, dict) and claims.get("secret_key") in self.tokens:
            entry.auth = "forward_token"
            entry.claims = {k: v for k, v in claims.items() if k != "secret_key"}
            return True
        return False

    async def _models(self, writer: asyncio.StreamWriter, entry: LogEntry) -> bool:
        with self._lock:
            catalogue = list(self._catalogue)
        return await self._reply(writer, entry, 200, {"object": "list", "data": catalogue})

    async def _forward(
        self,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        entry: LogEntry,
    ) -> bool:
        entry.via_forward = True
        targets = request.query.get("u")
        if not targets:
            return await self._reply(writer, entry, 400, {"error": "Missing target URL (u)"})
        entry.target = targets[0]
        if not self._authorise(request, entry):
            return await self._reply(writer, entry, 401, error_body(401, via_forward=True))
        target_path = urlsplit(entry.target).path.rstrip("/")
        if target_path.endswith("/chat/completions") and request.method == "POST":
            return await self._chat(request, reader, writer, entry, via_forward=True)
        if target_path.endswith("/models"):
            if request.method == "GET" and not self.forward_get:
                return await self._reply(writer, entry, 405, {"error": "Method not allowed"})
            return await self._models(writer, entry)
        return await self._reply(writer, entry, 404, {"error": "Unsupported forward target"})

    async def _request_record(
        self, request: Request, writer: asyncio.StreamWriter, entry: LogEntry
    ) -> bool:
        if not self._authorise(request, entry):
            return await self._reply(writer, entry, 401, {"error": "Unauthorized"})
        request_id = unquote(request.path.rstrip("/").rsplit("/", 1)[-1])
        with self._lock:
            served = self._records.get(request_id)
            planted = self._planted.get(request_id)
            model = self._find_model(served.model) if served else None
        if served is None:
            return await self._reply(writer, entry, 404, {"error": "Request not found"})
        # Lava bills Chutes' price plus its markup.
        prompt_price, completion_price = (
            (lava_price(p) for p in price_of(model)) if model else (Decimal(0), Decimal(0))
        )
        input_cost = prompt_price * served.prompt_tokens / MILLION
        output_cost = completion_price * served.completion_tokens / MILLION
        total = planted if planted is not None else input_cost + output_cost
        record = {
            "request_id": request_id,
            "status": "completed",
            "model": served.model,
            "created_at": datetime.fromtimestamp(time.time(), UTC).isoformat(),
            "customer_id": served.claims.get("customer_id"),
            "meter_slug": served.claims.get("meter_slug"),
            "model_usage": {
                "input_tokens": served.prompt_tokens,
                "output_tokens": served.completion_tokens,
                "total_tokens": served.prompt_tokens + served.completion_tokens,
                "input_cost": str(input_cost),
                "output_cost": str(output_cost),
                "total_cost": str(total),
            },
            "total_request_cost": str(total),
        }
        return await self._reply(writer, entry, 200, record)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


@contextlib.contextmanager
def running_in_thread(**kwargs: Any) -> Iterator[FakeUpstream]:
    """A started FakeUpstream on its own event loop in a daemon thread, for sync tests."""
    fake = FakeUpstream(**kwargs)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fakeupstream", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(fake.start(), loop).result(timeout=10)
        yield fake
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
