"""A local stand-in for Lava's forward proxy and the Chutes API, on raw asyncio streams.

It is a small HTTP/1.1 server with keep-alive rather than a framework app because tests need
byte-exact control of the stream (chunk sizes, CRLF, bare error lines, resets, stalls) and
benchmarks need thousands of concurrent streams on one loop.

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
import hashlib
import itertools
import json
import logging
import socket
import struct
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from chat.testing.fakeupstream.catalogue import MILLION, default_catalogue, lava_price, price_of
from chat.testing.fakeupstream.script import (
    Plan,
    Script,
    ScriptError,
    Token,
    count_prompt_tokens,
    directive,
    effective_script,
    expected_text,
    make_script,
    plan_reply,
)

logger = logging.getLogger("chat.testing.fakeupstream")

ERROR_LINE = {"error": "Unhandled exception during response stream: fake failure"}
_CHUTES_DETAILS: dict[int, Any] = {
    400: "Invalid request: refused by the fake upstream",
    401: "Invalid token.",
    402: {
        "message": "Quota exceeded and account balance is $0.0, please pay with fiat or send "
        "tao to 5FakeWalletAddress",
        "quota_reset_timestamp": "2030-01-01T00:00:00Z",
    },
    403: "Forbidden",
    413: "Request entity too large",
    422: [{"loc": ["body", "messages"], "msg": "field required", "type": "value_error.missing"}],
    429: "Infrastructure is at maximum capacity, try again later",
    500: "Internal server error",
    502: "Bad gateway",
    503: "No instances available (yet) for chute_id='00000000-0000-0000-0000-fake'",
}
_LAVA_ERRORS = {
    401: {"error": "Unauthorized: invalid secret key or forward token"},
    402: {"error": "Insufficient wallet balance"},
}


def error_body(status: int, *, via_forward: bool, model: str = "", detail: Any = None) -> Any:
    """An error body shaped like the real service that would have sent it."""
    if detail is not None:
        return {"detail": detail}
    if via_forward and status in _LAVA_ERRORS:
        return _LAVA_ERRORS[status]
    if status == HTTPStatus.NOT_FOUND:
        return {"detail": f"model not found: {model}"}
    return {"detail": _CHUTES_DETAILS.get(status, HTTPStatus(status).phrase)}


@dataclass
class LogEntry:
    seq: int
    method: str
    path: str
    target: str | None = None
    via_forward: bool = False
    auth: str | None = None  # "token", "forward_token" or None
    claims: dict[str, Any] = field(default_factory=dict)  # forward token fields but the secret
    model: str | None = None
    body: Any = None
    stream: bool = False
    status: int = 0
    # pending, streaming, complete, failed, cancelled, stopped, or the mid fault's name
    outcome: str = "pending"
    request_id: str | None = None
    invocation_id: str | None = None
    tokens_sent: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_lateness_ms: float = 0.0
    client_gone: bool = False
    started: float = 0.0
    finished: float | None = None
    script: Script | None = None


@dataclass
class _Request:
    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class _Queued:
    fields: dict[str, Any]
    failures_left: int


class FakeUpstream:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        tokens: Sequence[str] = ("test-token",),
        *,
        strict_models: bool = True,
        forward_get: bool = True,
        default_script: Mapping[str, Any] | None = None,
        catalogue: Sequence[Mapping[str, Any]] | None = None,
        log_limit: int = 10_000,
    ) -> None:
        self.host = host
        self.port = port
        self.tokens = tuple(tokens)
        self.strict_models = strict_models
        self.forward_get = forward_get
        self.log_limit = log_limit
        self._lock = threading.Lock()
        self._default = make_script(**dict(default_script or {}))
        self._queue: deque[_Queued] = deque()
        self._catalogue = (
            [dict(model) for model in catalogue] if catalogue is not None else default_catalogue()
        )
        self._log: deque[LogEntry] = deque(maxlen=log_limit)
        self._records: dict[str, LogEntry] = {}
        self._planted: dict[str, Decimal] = {}
        self._attempts: dict[str, int] = {}
        self._seq = itertools.count(1)
        self._active = 0
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._event: asyncio.Event | None = None
        self._cond = threading.Condition()
        self._sync_waiters = 0

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
            self._queue.append(_Queued(dict(script), int(script.get("fail_times") or 0)))

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

    def _changed(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()
        if self._sync_waiters:
            with self._cond:
                self._cond.notify_all()

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
                request = await _read_request(reader)
                if request is None or not await self._respond(request, reader, writer):
                    break
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except ValueError:
            with contextlib.suppress(ConnectionError, OSError):
                await _send_json(writer, 400, {"detail": "Malformed HTTP request"})
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
        self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
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
        request: _Request,
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

    def _authorise(self, request: _Request, entry: LogEntry) -> bool:
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

    async def _reply(
        self,
        writer: asyncio.StreamWriter,
        entry: LogEntry,
        status: int,
        body: Any,
        headers: Mapping[str, str] | None = None,
    ) -> bool:
        entry.status = status
        if status >= HTTPStatus.BAD_REQUEST:
            entry.outcome = "failed"
        await _send_json(writer, status, body, headers)
        return True

    async def _models(self, writer: asyncio.StreamWriter, entry: LogEntry) -> bool:
        with self._lock:
            catalogue = list(self._catalogue)
        return await self._reply(writer, entry, 200, {"object": "list", "data": catalogue})

    async def _forward(
        self,
        request: _Request,
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
        self, request: _Request, writer: asyncio.StreamWriter, entry: LogEntry
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

    def _find_model(self, model: str | None) -> dict[str, Any] | None:
        for entry in self._catalogue:
            if entry.get("id") == model:
                return entry
        return None

    def _take_script(self, messages: list[Any], raw_body: bytes) -> tuple[Script, int | None]:
        """The script for this request, and the status to fail with (None to serve it)."""
        with self._lock:
            default = self._default
            if self._queue:
                queued = self._queue[0]
                base = make_script(default, **(directive(messages) or {}))
                script = make_script(base, **queued.fields)
                if queued.failures_left > 0:
                    queued.failures_left -= 1
                    return script, script.error_status
                self._queue.popleft()
                return script, None if script.fail_times else script.error_status
            script = effective_script(None, messages, default=default)
            status = script.error_status
            if status is not None and script.fail_times:
                # Retries resend the same body: count attempts per body.
                key = hashlib.sha256(raw_body).hexdigest()
                seen = self._attempts.get(key, 0)
                self._attempts[key] = seen + 1
                if seen >= script.fail_times:
                    status = None
            return script, status

    async def _chat(
        self,
        request: _Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        entry: LogEntry,
        *,
        via_forward: bool,
    ) -> bool:
        try:
            body = json.loads(request.body)
        except ValueError:
            return await self._reply(writer, entry, 400, {"detail": "Invalid JSON body"})
        if not isinstance(body, dict):
            return await self._reply(writer, entry, 400, {"detail": "Body must be an object"})
        entry.body = body
        model = body.get("model")
        if not isinstance(model, str):
            model = ""
        entry.model = model
        entry.stream = bool(body.get("stream"))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return await self._reply(writer, entry, 400, {"detail": "messages must not be empty"})
        try:
            script, status = self._take_script(messages, request.body)
        except ScriptError as exc:
            return await self._reply(writer, entry, 400, {"detail": f"fake directive: {exc}"})
        entry.script = script
        if status is not None:
            headers = {}
            if script.retry_after is not None:
                headers["retry-after"] = f"{script.retry_after:g}"
            body_out = error_body(
                status, via_forward=via_forward, model=model, detail=script.detail
            )
            return await self._reply(writer, entry, status, body_out, headers)
        with self._lock:
            known = self._find_model(model)
        if self.strict_models and known is None:
            return await self._reply(
                writer, entry, 404, error_body(404, via_forward=False, model=model)
            )
        features = known.get("supported_features") if known else None
        reasoning_model = isinstance(features, list) and "reasoning" in features
        plan = plan_reply(script, messages, reasoning_model=reasoning_model)
        entry.prompt_tokens = count_prompt_tokens(messages)
        entry.invocation_id = str(uuid.uuid4())
        headers = {"x-chutes-invocationid": entry.invocation_id}
        if via_forward:
            entry.request_id = f"req_{uuid.uuid4().hex}"
            headers["x-lava-request-id"] = entry.request_id
        try:
            if entry.stream:
                return await self._stream(reader, writer, entry, script, plan, headers)
            return await self._complete(writer, entry, script, plan, headers)
        finally:
            if via_forward and entry.status == HTTPStatus.OK:
                self._record(entry)

    def _record(self, entry: LogEntry) -> None:
        assert entry.request_id is not None
        with self._lock:
            self._records[entry.request_id] = entry
            while len(self._records) > self.log_limit:
                del self._records[next(iter(self._records))]

    def _usage(self, entry: LogEntry, script: Script, completion: int) -> dict[str, Any]:
        numbers = script.usage if isinstance(script.usage, dict) else {}
        prompt = int(numbers.get("prompt_tokens", entry.prompt_tokens))
        completion = int(numbers.get("completion_tokens", completion))
        cached = int(numbers.get("cached_tokens", 0))
        entry.prompt_tokens, entry.completion_tokens = prompt, completion
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    async def _complete(
        self,
        writer: asyncio.StreamWriter,
        entry: LogEntry,
        script: Script,
        plan: Plan,
        headers: dict[str, str],
    ) -> bool:
        await asyncio.sleep(script.ttft_ms / 1000 + max(0, len(plan.tokens) - 1) * script.interval)
        if script.raw is not None:
            entry.status = 200
            entry.outcome = "complete"
            await _send_bytes(writer, 200, b"".join(script.raw), headers)
            return True
        message: dict[str, Any] = {"role": "assistant", "content": plan.text}
        mode = script.reasoning_mode
        if plan.reasoning:
            if mode in ("reasoning_content", "reasoning"):
                message[mode] = plan.reasoning
            else:
                opening = "<think>\n" if mode == "think" else ""
                message["content"] = f"{opening}{plan.reasoning}\n</think>\n\n{plan.text}"
        entry.tokens_sent = len(plan.tokens)
        body = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": entry.model,
            "choices": [{"index": 0, "message": message, "finish_reason": script.finish_reason}],
            "usage": self._usage(entry, script, len(plan.tokens)),
        }
        if script.usage is False:
            del body["usage"]
        entry.outcome = "complete"
        return await self._reply(writer, entry, 200, body, headers)

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        entry: LogEntry,
        script: Script,
        plan: Plan,
        headers: dict[str, str],
    ) -> bool:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        watcher = loop.create_task(_watch(reader, task, entry))
        eol = "\r\n" if script.crlf else "\n"
        self._active += 1
        entry.outcome = "streaming"
        self._changed()
        chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        fault = script.fault_at(len(plan.tokens))
        # Only the delta changes from chunk to chunk; benchmarks stream thousands at once.
        marker = f"delta-{uuid.uuid4().hex}"
        head_json, _, tail_json = json.dumps(
            {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": entry.model,
                "choices": [{"index": 0, "delta": marker, "logprobs": None, "finish_reason": None}],
                "usage": None,
            },
            ensure_ascii=False,
        ).partition(f'"{marker}"')
        try:
            # Like Chutes, headers leave only when the first token is ready.
            first_due = loop.time() + script.ttft_ms / 1000
            await _sleep_until(loop, first_due)
            entry.status = 200
            head = [
                "HTTP/1.1 200 OK",
                "content-type: text/event-stream; charset=utf-8",
                "cache-control: no-cache",
                "transfer-encoding: chunked",
                *(f"{name}: {value}" for name, value in headers.items()),
            ]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            if script.raw is not None:
                return await self._send_raw(writer, entry, script, eol, watcher, first_due)
            lateness = 0.0
            for index, token in enumerate(plan.tokens):
                if index == fault:
                    return await self._fault(writer, entry, script, eol, watcher)
                # Open loop: token i is due at a fixed time, however slowly the client reads.
                due = first_due + index * script.interval
                now = loop.time()
                if due > now:
                    await asyncio.sleep(due - now)
                    now = loop.time()
                lateness = max(lateness, now - due)
                entry.max_lateness_ms = lateness * 1000
                text = token.text
                if script.stamp and token.kind == "answer":
                    text = f"⟦{index}:{time.monotonic_ns()}⟧ "
                data = ""
                if script.ping_every and index and index % script.ping_every == 0:
                    data = f": ping{eol}{eol}"
                delta = json.dumps(_delta(plan, script, index, token, text), ensure_ascii=False)
                data += f"data: {head_json}{delta}{tail_json}{eol}{eol}"
                await _send_chunk(writer, data.encode(), script.chunk_bytes)
                entry.tokens_sent += 1
                self._changed()
            if fault is not None:
                return await self._fault(writer, entry, script, eol, watcher)
            finish = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": entry.model,
                "choices": [
                    {
                        "index": 0,
                        "delta": {},
                        "logprobs": None,
                        "finish_reason": script.finish_reason,
                    }
                ],
                "usage": None,
            }
            data = f"data: {json.dumps(finish)}{eol}{eol}"
            usage = self._usage(entry, script, entry.tokens_sent)
            if script.usage is not False:
                usage_chunk = {
                    "id": chunk_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": entry.model,
                    "choices": [],
                    "usage": usage,
                }
                data += f"data: {json.dumps(usage_chunk)}{eol}{eol}"
            if script.mid != "no_done":
                data += f"data: [DONE]{eol}{eol}"
            # The client may reuse the connection as soon as it sees the end of the body.
            await _stop_watching(watcher)
            await _send_chunk(writer, data.encode(), script.chunk_bytes)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            entry.outcome = script.mid or "complete"
            return True
        except asyncio.CancelledError:
            if not entry.client_gone:
                entry.outcome = "stopped"
                raise
            task.uncancel()
            entry.outcome = "cancelled"
            return False
        except (ConnectionError, OSError):
            entry.client_gone = True
            entry.outcome = "cancelled"
            return False
        finally:
            watcher.cancel()
            self._active -= 1
            if not entry.completion_tokens:
                entry.completion_tokens = entry.tokens_sent
            self._changed()

    async def _send_raw(
        self,
        writer: asyncio.StreamWriter,
        entry: LogEntry,
        script: Script,
        eol: str,
        watcher: asyncio.Task[None],
        first_due: float,
    ) -> bool:
        """The script's raw items as the body, each its own HTTP chunk, then the end or the
        fault."""
        assert script.raw is not None
        loop = asyncio.get_running_loop()
        fault = script.fault_at(len(script.raw))
        for index, item in enumerate(script.raw):
            if index == fault:
                return await self._fault(writer, entry, script, eol, watcher)
            await _sleep_until(loop, first_due + index * script.interval)
            # An empty chunk would be read as the end of the body.
            if item:
                await _send_chunk(writer, item, script.chunk_bytes)
            entry.tokens_sent += 1
            self._changed()
        if fault is not None:
            return await self._fault(writer, entry, script, eol, watcher)
        await _stop_watching(watcher)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        entry.outcome = script.mid or "complete"
        return True

    async def _fault(
        self,
        writer: asyncio.StreamWriter,
        entry: LogEntry,
        script: Script,
        eol: str,
        watcher: asyncio.Task[None],
    ) -> bool:
        mid = script.mid
        assert mid is not None
        entry.outcome = mid
        entry.completion_tokens = entry.tokens_sent
        self._changed()
        if mid == "error_line":
            # Chutes writes this without `data: ` and then ends the stream without [DONE].
            line = (json.dumps(ERROR_LINE) + eol).encode()
            await _stop_watching(watcher)
            await _send_chunk(writer, line, script.chunk_bytes)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        if mid == "cut":
            await _stop_watching(watcher)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        if mid == "drop":
            await writer.drain()
            return False
        if mid == "torn":
            # The size line promises more than follows: the body ends inside a chunk, and
            # inside a `data:` line.
            piece = b'data: {"choices": [{"index": 0, "delta": {"content": "tor'
            writer.write(b"%x\r\n%b" % (len(piece) + 64, piece))
            await writer.drain()
            return False
        if mid == "stall":
            await asyncio.Future()  # until the client hangs up or the server stops
        transport = writer.transport
        # With a zero high-water mark, drain() returns only once every byte reached the socket.
        transport.set_write_buffer_limits(high=0)
        await writer.drain()
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Linger 0: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return False


def _delta(plan: Plan, script: Script, index: int, token: Token, text: str) -> dict[str, Any]:
    mode = script.reasoning_mode
    tags = mode in ("think", "close_only") and bool(plan.reasoning)
    if token.kind == "reasoning":
        if not tags:
            delta: dict[str, Any] = {mode: text}
        else:
            opening = "<think>\n" if index == 0 and mode == "think" else ""
            # With no answer to follow, the last thought carries the closing tag itself.
            closing = "\n</think>\n\n" if index + 1 == len(plan.tokens) else ""
            delta = {"content": opening + text + closing}
    else:
        closing = ""
        if tags and index > 0 and plan.tokens[index - 1].kind == "reasoning":
            closing = "\n</think>\n\n"
        delta = {"content": closing + text}
    if index == 0:
        delta = {"role": "assistant", **delta}
    return delta


async def _watch(reader: asyncio.StreamReader, task: asyncio.Task[Any], entry: LogEntry) -> None:
    """Cancel the streaming task as soon as the client hangs up."""
    try:
        data = await reader.read(1)
    except (ConnectionError, OSError):
        data = b""
    if data:
        return  # httpx never pipelines; a stray byte is not a hang-up
    entry.client_gone = True
    task.cancel()


async def _stop_watching(watcher: asyncio.Task[None]) -> None:
    """Stop the hang-up watcher and wait until it let go of the reader.

    A cancelled task only lets go on its next turn; reading the next request before that
    would find the reader still claimed.
    """
    if not watcher.done():
        watcher.cancel()
        await asyncio.wait([watcher])


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    delay = when - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _send_chunk(writer: asyncio.StreamWriter, data: bytes, piece_size: int) -> None:
    if writer.is_closing():
        raise ConnectionResetError("client went away")
    if not piece_size:
        writer.write(b"%x\r\n%b\r\n" % (len(data), data))
        await writer.drain()
        return
    for start in range(0, len(data), piece_size):
        piece = data[start : start + piece_size]
        writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        await writer.drain()
        # Give each piece its own turn of the loop, so that it leaves as its own segment.
        await asyncio.sleep(0)


async def _send_json(
    writer: asyncio.StreamWriter,
    status: int,
    body: Any,
    headers: Mapping[str, str] | None = None,
) -> None:
    await _send_bytes(writer, status, json.dumps(body, ensure_ascii=False).encode(), headers)


async def _send_bytes(
    writer: asyncio.StreamWriter,
    status: int,
    payload: bytes,
    headers: Mapping[str, str] | None = None,
) -> None:
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(payload)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)
    await writer.drain()


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head[:-4].decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        length = int(headers.get("content-length") or 0)
        body = await reader.readexactly(length) if length else b""
    parts = urlsplit(target)
    return _Request(method.upper(), target, parts.path, parse_qs(parts.query), headers, body)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


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
