"""The app as the benchmark runs it: `chutesweb.asgi:application`, plus database counters.

    python -m chutesweb.serve bench.launcher:application
    python -m uvicorn bench.launcher:application

Nothing in the app changes. This module counts every SQL statement and every commit, labelled
with the service function that ran it (accepting a question, flushing partial replies,
finishing a reply, anything else), and answers `GET /_bench/counters` with the totals so the
harness can read them between phases. The counters live only in this module; the app never
imports it.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

# The app first: importing it sets Django up, which the imports after it need.
from chutesweb.asgi import application as app  # isort: skip

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper

from bench import COUNTERS_PATH
from chat.actions import progress, replies
from chat.realtime import engine

# The action functions whose statements are told apart; everything else is "other" (sessions,
# authentication, page views).
LABELLED = (
    (replies, "accept"),
    (progress, "flush_progress"),
    (progress, "finish_generation"),
    (progress, "interrupt"),
)
WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "REPLACE")

_lock = threading.Lock()
_counts: Counter[str] = Counter()
# When each flush of partial replies started (time.monotonic(), one clock for every process on
# the machine): the harness reads the spacing between them, not only how many there were.
_flush_starts: collections.deque[float] = collections.deque(maxlen=100_000)
_where = threading.local()

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _label() -> str:
    return getattr(_where, "label", "other")


def _count(key: str) -> None:
    with _lock:
        _counts[key] += 1


def _verb(sql: str) -> str:
    word = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
    return "write" if word in WRITE_VERBS else "read"


def _install() -> None:
    execute = CursorWrapper.execute
    executemany = CursorWrapper.executemany
    commit = BaseDatabaseWrapper.commit

    def counted_execute(self: CursorWrapper, sql: str, params: Any = None) -> Any:
        _count(f"{_label()}.{_verb(sql)}")
        return execute(self, sql, params)

    def counted_executemany(self: CursorWrapper, sql: str, param_list: Any) -> Any:
        _count(f"{_label()}.{_verb(sql)}")
        return executemany(self, sql, param_list)

    def counted_commit(self: BaseDatabaseWrapper) -> None:
        _count(f"{_label()}.commit")
        commit(self)

    # Django's cursor and connection, patched on purpose to count statements (the benchmark's
    # SQL is text, never a psycopg Composable).
    CursorWrapper.execute = counted_execute  # type: ignore[method-assign, assignment]  # patch
    CursorWrapper.executemany = counted_executemany  # type: ignore[method-assign, assignment]  # patch
    BaseDatabaseWrapper.commit = counted_commit  # type: ignore[method-assign]  # patch

    for module, name in LABELLED:
        original = getattr(module, name)

        def labelled(*args: Any, __original: Any = original, __name: str = name, **kw: Any) -> Any:
            _count(f"{__name}.calls")
            if __name == "flush_progress":
                _flush_starts.append(time.monotonic())
            _where.label = __name
            started, cpu_started = time.perf_counter_ns(), time.thread_time_ns()
            try:
                return __original(*args, **kw)
            finally:
                _where.label = "other"
                with _lock:
                    _counts[f"{__name}.us"] += (time.perf_counter_ns() - started) // 1000
                    _counts[f"{__name}.cpu_us"] += (time.thread_time_ns() - cpu_started) // 1000

        # The consumer and the generation engine look these up on the module at call time.
        setattr(module, name, wraps(original)(labelled))


# Garbage collections per generation: how many, their total time in µs and the objects they freed
# (cyclic garbage the app made). Kept apart from `_counts` and its lock: a collection can start
# in any thread at any allocation, including one made while that lock is held.
_gc: dict[str, list[int]] = {
    "collections": [0, 0, 0],
    "us": [0, 0, 0],
    "collected": [0, 0, 0],
}
_gc_started = [0]
_recording = [False]
_gc_started_at = [0.0]
# Every collection as (time.monotonic() at its start, generation, µs), while a level records
# (`?record=1` starts and clears, `?record=0` stops): a collection pauses every stream at once,
# so the harness can find the longest in a level and line them up with slow tokens. Only while
# recording: kept through a 20,000-cycle growth check, the records themselves would grow RSS.
_gc_events: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=100_000)


def _time_collections(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter_ns()
        _gc_started_at[0] = time.monotonic()
        return
    generation = info["generation"]
    took = (time.perf_counter_ns() - _gc_started[0]) // 1000
    _gc["collections"][generation] += 1
    _gc["collected"][generation] += info["collected"]
    _gc["us"][generation] += took
    if _recording[0]:
        _gc_events.append((_gc_started_at[0], generation, took))


def snapshot(*, objects: bool = False) -> dict[str, Any]:
    with _lock:
        counts = dict(_counts)
        flush_starts = list(_flush_starts)
    state: dict[str, Any] = {
        "counts": counts,
        "flush_starts": flush_starts,
        "loop_lags": list(_loop_lags),
    }
    state["gc"] = {key: list(values) for key, values in _gc.items()}
    state["gc_events"] = list(_gc_events)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        state["tasks"] = len(asyncio.all_tasks(loop))
        manager = engine._managers.get(loop)
        state["generations"] = len(manager.generations) if manager else 0
        layer = manager.layer if manager else None
        state["layer_channels"] = len(getattr(layer, "channels", {}) or {})
        state["layer_groups"] = len(getattr(layer, "groups", {}) or {})
    if objects:
        # Costs tens of milliseconds: only asked for at the checkpoints of the growth check.
        state["gc_objects"] = len(gc.get_objects())
    return state


# With BENCH_WATCH_LOOP set (`bench.run --watch-loop`): how late a 5 ms timer on the server's
# event loop fired, as (time.monotonic(), ms late), when it was 2 ms late or more. When every
# stream stalls at once, this says whether the loop did. Off by default: its 200 wake-ups a
# second doubled the CPU per token measured at one stream.
LAG_TICK = 0.005
_loop_lags: collections.deque[tuple[float, float]] = collections.deque(maxlen=100_000)
_lag_task: list[asyncio.Task[None]] = []


async def _watch_loop_lag() -> None:
    while True:
        due = time.monotonic() + LAG_TICK
        await asyncio.sleep(LAG_TICK)
        late = (time.monotonic() - due) * 1000
        if late >= 2:
            _loop_lags.append((due, late))


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    if not _lag_task and os.getenv("BENCH_WATCH_LOOP"):
        _lag_task.append(asyncio.get_running_loop().create_task(_watch_loop_lag()))
    if scope["type"] == "http" and scope["path"] == COUNTERS_PATH:
        query = scope.get("query_string", b"")
        body = json.dumps(snapshot(objects=b"objects=1" in query)).encode()
        if b"record=1" in query:
            _gc_events.clear()
            _recording[0] = True
        elif b"record=0" in query:
            _recording[0] = False
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    await app(scope, receive, send)  # type: ignore[arg-type]  # stub: asgiref's TypedDicts


_install()
gc.callbacks.append(_time_collections)
if os.getenv("BENCH_CPROFILE"):
    # A deterministic profile of the event loop's thread (where every token is relayed), written
    # when the server exits: call counts per token show where the work is.
    import atexit
    import cProfile

    _profiler = cProfile.Profile()
    _profiler.enable()

    def _write_profile() -> None:
        _profiler.disable()
        _profiler.dump_stats(os.environ["BENCH_CPROFILE"])

    atexit.register(_write_profile)
