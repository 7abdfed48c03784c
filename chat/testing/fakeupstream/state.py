"""What the stand-in holds: its scripts, catalogue, request log and billing records, behind one
lock, and how it tells waiters that something moved. `FakeUpstream` (server.py) builds on it."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from http import HTTPStatus
from typing import Any

from chat.testing.fakeupstream.catalogue import default_catalogue
from chat.testing.fakeupstream.script import Script, make_script
from chat.testing.fakeupstream.wire import send_json


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
class Queued:
    fields: dict[str, Any]
    failures_left: int


class State:
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
        self._queue: deque[Queued] = deque()
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

    def _changed(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()
        if self._sync_waiters:
            with self._cond:
                self._cond.notify_all()

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
        await send_json(writer, status, body, headers)
        return True

    def _find_model(self, model: str | None) -> dict[str, Any] | None:
        for entry in self._catalogue:
            if entry.get("id") == model:
                return entry
        return None

    def _record(self, entry: LogEntry) -> None:
        assert entry.request_id is not None
        with self._lock:
            self._records[entry.request_id] = entry
            while len(self._records) > self.log_limit:
                del self._records[next(iter(self._records))]
