"""Measure the relay against a client that reads the upstream directly, in the same run.

    .venv/bin/python -m bench.run --streams 1,10,100,500,1000

See docs/benchmarks.md for what is measured and how to read the table. Results go to
bench/results/ as JSON and Markdown. Past 500 lines: one run's levels, cohorts, server counters
and growth cycles are read together into one result; the clients, the launcher, the statistics
and the report have their own modules.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from chat.testing import processes

from . import report
from .clients import DirectClient, RelaySocket, StreamResult, loop_lag, script_directive
from .stack import (
    PASSWORD,
    Stack,
    cpu_seconds,
    machine_busy,
    reference_loop_ms,
    rss_bytes,
    wait_quiet,
)
from .stats import difference, summary_ms

RESULTS = Path(__file__).resolve().parent / "results"
# Latency and loss that a level must stay within to count as "held".
HOLD_P99_MS = 20.0


@dataclass
class Options:
    streams: list[int]
    modes: list[str]
    server: str
    tokens: int
    interval_ms: float
    ttft_ms: float
    direct_max: int
    direct_client: str
    users: int
    aa: bool
    idle: int
    cycles: int
    cycle_concurrency: int
    cycle_tokens: int
    server_core: str | None
    client_core: str | None
    fresh: bool
    output: Path | None
    keep: bool
    quiet: bool
    profile: Path | None
    stream_timeout: float
    burst_ms: float = 20.0
    find_limit: int = 0
    watch_loop: bool = False

    @property
    def stream_seconds(self) -> float:
        return (self.ttft_ms + max(0, self.tokens - 1) * self.interval_ms) / 1000


def flush_rate(starts: list[float]) -> float | None:
    """Flushes a second from the first to the last: flushes one second apart read 1.0 (their
    count over a window a little longer than their span would read more)."""
    if len(starts) < 2 or starts[-1] <= starts[0]:
        return None
    return (len(starts) - 1) / (starts[-1] - starts[0])


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--streams", default="1,10,100,500,1000", help="concurrent stream levels")
    parser.add_argument(
        "--mode",
        default="burst,steady",
        help="burst (every stream of a level starts within --burst-ms), steady (arrivals "
        "spread evenly so that about N run at a time), or both, comma-separated",
    )
    parser.add_argument(
        "--burst-ms",
        type=float,
        default=20.0,
        help="a burst's sends arrive evenly spread over this many ms (0: all at once)",
    )
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne")
    parser.add_argument("--tokens", type=int, default=90, help="tokens per reply")
    parser.add_argument("--tps", type=float, default=30.0, help="tokens per second per stream")
    parser.add_argument("--ttft-ms", type=float, default=200.0, help="stand-in time to 1st token")
    parser.add_argument(
        "--direct-max",
        type=int,
        default=100,
        help="direct streams per level: as many as relayed ones, up to this many",
    )
    parser.add_argument(
        "--direct-client",
        choices=["httpx", "aiohttp"],
        default="aiohttp",
        help="the direct cohort's HTTP client (httpx falls behind past ~100 streams: A/A check)",
    )
    parser.add_argument("--users", type=int, default=20, help="users the relayed sockets use")
    parser.add_argument(
        "--aa",
        action="store_true",
        help="A/A check of the load client: both cohorts read the stand-in directly",
    )
    parser.add_argument("--idle", type=int, default=1000, help="idle sockets for the memory check")
    parser.add_argument(
        "--cycles", type=int, default=0, help="connect/stream/disconnect cycles (growth check)"
    )
    parser.add_argument("--cycle-concurrency", type=int, default=50)
    parser.add_argument("--cycle-tokens", type=int, default=10)
    parser.add_argument("--server-core", default="0", help="core for the app ('' to not pin)")
    parser.add_argument(
        "--client-core", default="1", help="core for this client and the stand-in ('' to not pin)"
    )
    parser.add_argument(
        "--same-server",
        action="store_true",
        help="keep one app process for every level instead of a fresh one per level",
    )
    parser.add_argument("--output", type=Path, help="JSON file (default: bench/results/...)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and logs")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--profile",
        type=Path,
        help="record the app with py-spy during each level (collapsed stacks into this folder)",
    )
    parser.add_argument(
        "--stream-timeout",
        type=float,
        default=180.0,
        help="seconds after which a reply that has not ended counts as failed",
    )
    parser.add_argument(
        "--find-limit",
        type=int,
        default=0,
        metavar="STEP",
        help="after the levels, bisect between the largest level held and the next one not "
        "held, per arrival pattern, until they are at most STEP streams apart",
    )
    parser.add_argument(
        "--watch-loop",
        action="store_true",
        help="time a 5 ms timer on the server's loop and report how late it fired (server."
        "loop_late in the JSON); it costs the server some CPU, so CPU figures are off with it",
    )
    args = parser.parse_args(argv)
    return Options(
        streams=[int(s) for s in args.streams.split(",") if s.strip()],
        modes=[m.strip() for m in args.mode.split(",") if m.strip()],
        server=args.server,
        tokens=args.tokens,
        interval_ms=1000.0 / args.tps,
        ttft_ms=args.ttft_ms,
        direct_max=args.direct_max,
        direct_client=args.direct_client,
        users=args.users,
        aa=args.aa,
        idle=args.idle,
        cycles=args.cycles,
        cycle_concurrency=args.cycle_concurrency,
        cycle_tokens=args.cycle_tokens,
        server_core=args.server_core or None,
        client_core=args.client_core or None,
        fresh=not args.same_server,
        output=args.output,
        keep=args.keep,
        quiet=args.quiet,
        profile=args.profile,
        stream_timeout=args.stream_timeout,
        find_limit=args.find_limit,
        watch_loop=args.watch_loop,
        burst_ms=args.burst_ms,
    )


class Bench:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.stack = Stack.create(
            server=options.server,
            server_core=options.server_core,
            client_core=options.client_core,
            app_env_extra={
                **(
                    {"BENCH_CPROFILE": os.environ["BENCH_CPROFILE"]}
                    if "BENCH_CPROFILE" in os.environ
                    else {}
                ),
                **({"BENCH_WATCH_LOOP": "1"} if options.watch_loop else {}),
            },
        )
        self.cookies: list[str] = []
        self.direct: DirectClient | None = None

    def log(self, text: str) -> None:
        if not self.options.quiet:
            print(text, file=sys.stderr, flush=True)

    # Set-up

    def setup(self) -> None:
        stack = self.stack
        stack.start_upstream()
        stack.prepare()
        names = stack.create_users(self.options.users)
        app = stack.start_app()
        started = time.monotonic()
        # Through the real login form; sessions live in the database, so they outlast restarts.
        self.cookies = [processes.login_cookie(app.url, name, PASSWORD) for name in names]
        self.log(f"{len(names)} users logged in ({time.monotonic() - started:.1f}s)")

    def fresh_app(self) -> None:
        if self.options.fresh or self.stack.app is None:
            self.stack.stop_app()
            self.stack.start_app()

    # Streams

    def content(self, tokens: int | None = None, interval_ms: float | None = None) -> str:
        o = self.options
        return script_directive(
            o.tokens if tokens is None else tokens,
            o.interval_ms if interval_ms is None else interval_ms,
            o.ttft_ms,
        )

    async def open_sockets(self, count: int, batch: int = 100) -> list[RelaySocket]:
        assert self.stack.app is not None
        url = self.stack.app.url
        sockets: list[RelaySocket] = []
        for start in range(0, count, batch):
            opened = await asyncio.gather(
                *(
                    RelaySocket.open(url, self.cookies[i % len(self.cookies)])
                    for i in range(start, min(count, start + batch))
                )
            )
            sockets.extend(opened)
        return sockets

    async def close_sockets(self, sockets: list[RelaySocket]) -> None:
        for start in range(0, len(sockets), 200):
            await asyncio.gather(
                *(s.close() for s in sockets[start : start + 200]), return_exceptions=True
            )

    async def warm_up(self) -> None:
        """A few short replies: imports, the upstream connection pool and the database warm."""
        sockets = await self.open_sockets(3)
        content = self.content(tokens=5, interval_ms=5)
        results = [StreamResult("relayed", 5) for _ in sockets]
        await asyncio.gather(*(s.stream(content, r) for s, r in zip(sockets, results, strict=True)))
        assert self.direct is not None
        await self.direct.stream(content, StreamResult("direct", 5))
        await self.close_sockets(sockets)
        failed = [r for r in results if r.status != "complete"]
        if failed:
            raise RuntimeError(f"warm-up reply failed: {failed[0].status} {failed[0].error}")

    # One level

    async def level(self, streams: int, mode: str) -> dict[str, Any]:
        o = self.options
        self.fresh_app()
        app = self.stack.app
        assert app is not None and self.direct is not None
        direct = self.direct
        pid = app.proc.pid
        await self.warm_up()
        await asyncio.to_thread(wait_quiet, pid)
        reference_ms = await asyncio.to_thread(reference_loop_ms, o.server_core)
        rss_start = rss_bytes(pid)
        relayed_cohort = "direct-b" if o.aa else "relayed"
        sockets = [] if o.aa else await self.open_sockets(streams)
        await asyncio.to_thread(wait_quiet, pid)
        rss_idle = rss_bytes(pid)
        rounds = 2 if mode == "steady" else 1
        direct_count = min(streams, o.direct_max)
        span = o.stream_seconds
        # Start order interleaves the cohorts: position i/n of the level for each of them.
        plan: list[tuple[float, str, int]] = []
        for r in range(rounds):
            plan += [(r + i / streams, relayed_cohort, i) for i in range(streams)]
            plan += [(r + (j + 0.5) / direct_count, "direct", j) for j in range(direct_count)]
        plan.sort()
        content = self.content()
        results: list[StreamResult] = []
        rss_samples: list[int] = []
        lag: list[float] = []
        socket_turns: dict[int, asyncio.Event] = {}

        async def one(position: float, cohort: str, index: int) -> None:
            if mode == "steady":
                await asyncio.sleep(max(0.0, t0 + position * span - time.monotonic()))
            elif o.burst_ms > 0:
                await asyncio.sleep(max(0.0, t0 + position * o.burst_ms / 1000 - time.monotonic()))
            result = StreamResult(cohort, o.tokens)
            results.append(result)
            if cohort == "relayed":
                # A socket's second reply waits for its first (one tab, one reply at a time).
                turn = socket_turns.get(index)
                if turn is not None:
                    await turn.wait()
                done = asyncio.Event()
                socket_turns[index] = done
                try:
                    await sockets[index].stream(content, result, o.stream_timeout)
                finally:
                    done.set()
            else:
                await direct.stream(content, result, o.stream_timeout)

        async def sample_rss() -> None:
            while True:
                rss_samples.append(rss_bytes(pid))
                await asyncio.sleep(0.1)

        counters_before = await asyncio.to_thread(lambda: self.stack.counters(record=True))
        counted_from = time.monotonic()
        stand_in_before = await asyncio.to_thread(self.stack.upstream_stats)
        profiler = self.start_profiler(pid, f"{self.options.server}-{streams}-{mode}")
        sampler = asyncio.create_task(sample_rss())
        lagger = asyncio.create_task(loop_lag(lag))
        client_cpu_before = time.process_time()
        assert self.stack.upstream is not None
        stand_in_pid = self.stack.upstream.proc.pid
        stand_in_cpu_before = cpu_seconds(stand_in_pid)
        machine_before = machine_busy()
        cpu_before = cpu_seconds(pid)
        wall_before = time.monotonic()
        t0 = time.monotonic()
        await asyncio.gather(*(one(*entry) for entry in plan))
        wall = time.monotonic() - wall_before
        cpu = cpu_seconds(pid) - cpu_before
        client_cpu = time.process_time() - client_cpu_before
        stand_in_cpu = cpu_seconds(stand_in_pid) - stand_in_cpu_before
        machine_after = machine_busy()
        # CPU that none of the three processes used: anything else on the machine (a noisy
        # neighbour makes every number here worse).
        others = (machine_after[0] - machine_before[0]) - cpu - client_cpu - stand_in_cpu
        # The level's window for the launcher's timed records: from its start to its last reply.
        ended = time.monotonic()
        sampler.cancel()
        lagger.cancel()
        stop_profiler(profiler)
        # The final writes and the last flush may still be running: wait, then count them.
        await asyncio.to_thread(wait_quiet, pid)
        cpu_settled = cpu_seconds(pid) - cpu_before
        counters_after = await asyncio.to_thread(lambda: self.stack.counters(record=False))
        # Flushes run while replies stream: those that started within the window.
        flush_starts = [t for t in counters_after["flush_starts"] if counted_from <= t <= ended]
        stand_in = await asyncio.to_thread(
            self.stack.upstream_stats, stand_in_before["last_request"]
        )
        await self.close_sockets(sockets)
        summary = self.summarise(
            streams=streams,
            mode=mode,
            results=results,
            wall=wall,
            cpu=cpu,
            cpu_settled=cpu_settled,
            client_cpu=client_cpu,
            rss=(rss_start, rss_idle, max(rss_samples, default=rss_idle)),
            socket_count=len(sockets),
            counters=(counters_before["counts"], counters_after["counts"]),
            flush_starts=flush_starts,
            stand_in=(stand_in_before, stand_in),
            lag=lag,
        )
        before_gc, after_gc = counters_before["gc"], counters_after["gc"]
        level_gcs = [e for e in counters_after["gc_events"] if counted_from <= e[0] <= ended]
        # How late the server's own 5 ms timer fired while the level ran (only lateness of 2 ms
        # or more is recorded): a pause of the whole loop shows here.
        late = [ms for t, ms in counters_after["loop_lags"] if counted_from <= t <= ended]
        summary["server"]["loop_late"] = (
            {"max_ms": max(late, default=0.0), "ticks_over_5ms": sum(1 for ms in late if ms >= 5)}
            if self.options.watch_loop
            else None
        )
        # Collections pause the whole process: the longest one of the oldest generation
        # shows up directly in the per-token p99.
        summary["server"]["gc"] = {
            "collections": [
                a - b
                for a, b in zip(after_gc["collections"], before_gc["collections"], strict=True)
            ],
            "total_ms": [
                (a - b) / 1000 for a, b in zip(after_gc["us"], before_gc["us"], strict=True)
            ],
            "longest_ms": [
                max((us for t, g, us in level_gcs if g == generation), default=0) / 1000
                for generation in range(3)
            ],
            "collected": [
                a - b for a, b in zip(after_gc["collected"], before_gc["collected"], strict=True)
            ],
        }
        summary["stand_in"]["cpu_share"] = stand_in_cpu / wall if wall else None
        summary["load_average"] = os.getloadavg()[0]
        summary["others_cpu_share"] = others / wall if wall else None
        summary["reference_loop_ms"] = reference_ms
        return summary

    def summarise(
        self,
        *,
        streams: int,
        mode: str,
        results: list[StreamResult],
        wall: float,
        cpu: float,
        cpu_settled: float,
        client_cpu: float,
        rss: tuple[int, int, int],
        socket_count: int,
        counters: tuple[dict[str, int], dict[str, int]],
        flush_starts: list[float],
        stand_in: tuple[dict[str, Any], dict[str, Any]],
        lag: list[float],
    ) -> dict[str, Any]:
        o = self.options
        cohorts: dict[str, Any] = {}
        relayed_name = "direct-b" if o.aa else "relayed"
        for name in ("direct", relayed_name):
            mine = [r for r in results if r.cohort == name]
            integrity = {"lost": 0, "duplicated": 0, "out_of_order": 0, "extra": 0}
            for r in mine:
                for key, value in r.integrity().items():
                    integrity[key] += value
            statuses: dict[str, int] = {}
            for r in mine:
                statuses[r.status] = statuses.get(r.status, 0) + 1
            cohorts[name] = {
                "streams": len(mine),
                "tokens": sum(len(r.arrivals) for r in mine),
                "frames": sum(r.frames for r in mine),
                "ttft_ms": summary_ms([r.ttft_ns for r in mine if r.ttft_ns is not None]),
                "token_ms": summary_ms([x for r in mine for x in r.latencies_ns()]),
                "integrity": integrity,
                "statuses": statuses,
                "errors": sorted({r.error for r in mine if r.error})[:5],
                "corrupt": sum(1 for r in mine if r.corrupt),
                "seq_gaps": sum(r.seq_gaps for r in mine),
            }
        direct, relayed = cohorts["direct"], cohorts[relayed_name]
        added = {
            "ttft_p50": difference(relayed["ttft_ms"]["p50"], direct["ttft_ms"]["p50"]),
            "ttft_p99": difference(relayed["ttft_ms"]["p99"], direct["ttft_ms"]["p99"]),
            "token_p50": difference(relayed["token_ms"]["p50"], direct["token_ms"]["p50"]),
            "token_p99": difference(relayed["token_ms"]["p99"], direct["token_ms"]["p99"]),
        }
        before, after = counters
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
        replies = max(1, delta.get("finish_generation.calls", 0))
        reply_writes = delta.get("accept.write", 0) + delta.get("finish_generation.write", 0)
        reply_commits = delta.get("accept.commit", 0) + delta.get("finish_generation.commit", 0)
        rss_start, rss_idle, rss_peak = rss
        bad = sum(relayed["integrity"][k] for k in ("lost", "duplicated", "out_of_order", "extra"))
        bad += relayed["corrupt"] + sum(
            n for s, n in relayed["statuses"].items() if s != "complete"
        )
        tokens = relayed["tokens"]
        lag_ms = sorted(x * 1000 for x in lag)
        return {
            "streams": streams,
            "mode": mode,
            "wall_s": wall,
            "cohorts": cohorts,
            "added_ms": added,
            "faults": bad,
            "held": bad == 0
            and added["token_p99"] is not None
            and added["token_p99"] < HOLD_P99_MS,
            "server": {
                "cpu_s": cpu,
                "cpu_s_settled": cpu_settled,
                "cpu_share": cpu / wall if wall else None,
                "cpu_s_per_million_tokens": cpu_settled / tokens * 1e6 if tokens else None,
                "rss_start": rss_start,
                "rss_idle": rss_idle,
                "rss_peak": rss_peak,
                "rss_per_idle_socket": (rss_idle - rss_start) / socket_count
                if socket_count
                else None,
                "rss_per_streaming_socket": (rss_peak - rss_start) / socket_count
                if socket_count
                else None,
            },
            "db": {
                "replies": delta.get("finish_generation.calls", 0),
                "write_statements_per_reply": reply_writes / replies,
                "write_transactions_per_reply": reply_commits / replies,
                "flushes": delta.get("flush_progress.calls", 0),
                # While replies streamed: N flushes span N - 1 gaps (the final flush after the
                # last reply is in `flushes`, not here).
                "flushes_per_s": flush_rate(flush_starts),
                "shortest_flush_gap_s": min(
                    (b - a for a, b in itertools.pairwise(flush_starts)), default=None
                ),
                "flush_statements": delta.get("flush_progress.write", 0),
                "other_writes": delta.get("other.write", 0),
                # Wall time inside the service functions, on the ORM's thread, per call.
                "ms_per_call": {
                    name: delta.get(f"{name}.us", 0) / 1000 / delta[f"{name}.calls"]
                    for name in ("accept", "finish_generation", "flush_progress")
                    if delta.get(f"{name}.calls")
                },
                # The same calls' CPU time on that thread (the wall time less waits: GIL, disk).
                "cpu_ms_per_call": {
                    name: delta.get(f"{name}.cpu_us", 0) / 1000 / delta[f"{name}.calls"]
                    for name in ("accept", "finish_generation", "flush_progress")
                    if delta.get(f"{name}.calls")
                },
                "raw": delta,
            },
            "stand_in": {
                "lateness_ms": stand_in[1]["max_lateness_ms"],
                "active_after": stand_in[1]["active_streams"],
            },
            "client": {
                "kind": o.direct_client,
                "cpu_share": client_cpu / wall if wall else None,
                "loop_lag_p99_ms": lag_ms[int(len(lag_ms) * 0.99)] if lag_ms else None,
                "loop_lag_max_ms": lag_ms[-1] if lag_ms else None,
            },
        }

    def start_profiler(self, pid: int, name: str) -> subprocess.Popen[bytes] | None:
        if self.options.profile is None:
            return None
        self.options.profile.mkdir(parents=True, exist_ok=True)
        output = self.options.profile / f"{name}.txt"
        # Non-blocking: the app is sampled from outside without being paused.
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        # Only the thread holding the GIL: where the CPU goes, not where threads wait for it.
        command = [spy, "record", "--nonblocking", "--gil", "--format", "raw", "--rate", "400"]
        command += ["--output", str(output), "--pid", str(pid)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached before the level starts
        return process

    # Memory

    async def idle_memory(self) -> dict[str, Any]:
        self.fresh_app()
        app = self.stack.app
        assert app is not None
        pid = app.proc.pid
        await self.warm_up()
        await asyncio.to_thread(wait_quiet, pid)
        before = rss_bytes(pid)
        # Objects the collector tracks (not those frozen at start-up): a full collection walks
        # every one of them, pausing every stream.
        objects_before = (await asyncio.to_thread(lambda: self.stack.counters(objects=True)))[
            "gc_objects"
        ]
        sockets = await self.open_sockets(self.options.idle)
        await asyncio.to_thread(wait_quiet, pid)
        after = rss_bytes(pid)
        objects_after = (await asyncio.to_thread(lambda: self.stack.counters(objects=True)))[
            "gc_objects"
        ]
        await self.close_sockets(sockets)
        await asyncio.to_thread(wait_quiet, pid)
        closed = rss_bytes(pid)
        return {
            "sockets": len(sockets),
            "rss_before": before,
            "rss_open": after,
            "rss_after_close": closed,
            "per_socket": (after - before) / max(1, len(sockets)),
            "gc_objects_before": objects_before,
            "gc_objects_per_socket": (objects_after - objects_before) / max(1, len(sockets)),
        }

    async def growth(self) -> dict[str, Any]:
        """Connect, stream a short reply, disconnect, many times; RSS at checkpoints."""
        o = self.options
        self.fresh_app()
        app = self.stack.app
        assert app is not None
        pid = app.proc.pid
        content = self.content(tokens=o.cycle_tokens, interval_ms=2)
        done = 0
        faults = 0
        checkpoints: list[dict[str, Any]] = []
        every = max(o.cycle_concurrency, o.cycles // 10)
        started = time.monotonic()

        errors: dict[str, int] = {}

        async def cycle(i: int) -> None:
            nonlocal done, faults
            result = StreamResult("relayed", o.cycle_tokens)
            try:
                sock = await RelaySocket.open(app.url, self.cookies[i % len(self.cookies)])
            except Exception as exc:
                # A refused or broken handshake is a fault of the cycle, not of the run.
                result.status, result.error = "error", f"connect: {type(exc).__name__}: {exc}"
            else:
                try:
                    await sock.stream(content, result, o.stream_timeout)
                finally:
                    with contextlib.suppress(Exception):
                        await sock.close()
            integrity = result.integrity()
            if result.status != "complete" or any(integrity.values()) or result.corrupt:
                faults += 1
                key = (result.error or result.status)[:120]
                errors[key] = errors.get(key, 0) + 1
            done += 1

        async def checkpoint() -> None:
            await asyncio.to_thread(wait_quiet, pid)
            counters = await asyncio.to_thread(lambda: self.stack.counters(objects=True))
            checkpoints.append(
                {
                    "cycles": done,
                    "seconds": round(time.monotonic() - started, 1),
                    "rss": rss_bytes(pid),
                    "tasks": counters.get("tasks"),
                    "generations": counters.get("generations"),
                    "layer_channels": counters.get("layer_channels"),
                    "layer_groups": counters.get("layer_groups"),
                    "gc_objects": counters.get("gc_objects"),
                }
            )
            self.log(f"  growth: {checkpoints[-1]}")

        await checkpoint()
        # Workers run in waves between checkpoints so every checkpoint sees a quiet server.
        target = 0
        while target < o.cycles:
            target = min(o.cycles, target + every)
            first = done
            await asyncio.gather(
                *(
                    worker_range(cycle, first + w, target, o.cycle_concurrency)
                    for w in range(o.cycle_concurrency)
                )
            )
            await checkpoint()
        warm = checkpoints[1] if len(checkpoints) > 2 else checkpoints[0]
        last = checkpoints[-1]
        span = max(1, last["cycles"] - warm["cycles"])
        return {
            "cycles": done,
            "concurrency": o.cycle_concurrency,
            "tokens_per_reply": o.cycle_tokens,
            "faults": faults,
            "errors": errors,
            "seconds": round(time.monotonic() - started, 1),
            "checkpoints": checkpoints,
            "growth_after_warmup": last["rss"] - warm["rss"],
            "growth_per_cycle": (last["rss"] - warm["rss"]) / span,
        }

    async def find_limit(self, mode: str, levels: list[dict[str, Any]]) -> dict[str, Any]:
        """Bisect between the largest level held and the smallest larger one not held. Each
        probe is one more level (in `levels`, marked `probe`): one run each, so a probe close
        to the limit can go either way on another run."""
        ran = [lv for lv in levels if lv["mode"] == mode]
        held = max((lv["streams"] for lv in ran if lv["held"]), default=0)
        above = [lv["streams"] for lv in ran if not lv["held"] and lv["streams"] > held]
        failed = min(above, default=None)
        probes: list[int] = []
        if held and failed is not None:
            step = self.options.find_limit
            while failed - held > step:
                streams = (held + failed) // 2
                self.log(f"limit probe: {streams} streams, {mode}")
                level = await self.level(streams, mode)
                level["probe"] = True
                levels.append(level)
                self.log("  " + report.one_line(level))
                probes.append(streams)
                if level["held"]:
                    held = streams
                else:
                    failed = streams
        return {"held": held, "failed": failed, "probes": probes}

    # The whole run

    async def run(self) -> dict[str, Any]:
        o = self.options
        results: dict[str, Any] = {"levels": []}
        assert self.stack.upstream is not None
        async with DirectClient(self.stack.upstream.url, o.direct_client) as direct:
            self.direct = direct
            if o.idle:
                self.log(f"idle memory: {o.idle} sockets")
                results["idle"] = await self.idle_memory()
                self.log(f"  {report.kib(results['idle']['per_socket'])} KiB per idle socket")
            for streams in o.streams:
                for mode in o.modes:
                    self.log(f"level: {streams} streams, {mode}")
                    level = await self.level(streams, mode)
                    results["levels"].append(level)
                    self.log("  " + report.one_line(level))
            if o.find_limit:
                results["limits"] = {
                    mode: await self.find_limit(mode, results["levels"]) for mode in o.modes
                }
            if o.cycles:
                self.log(f"growth: {o.cycles} cycles")
                results["growth"] = await self.growth()
        return results


def stop_profiler(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None:
        process.send_signal(signal.SIGINT)
        process.wait(30)


async def worker_range(cycle: Any, start: int, stop: int, step: int) -> None:
    for i in range(start, stop, step):
        await cycle(i)


def environment(options: Options) -> dict[str, Any]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {
            name: version(name)
            for name in (
                "Django",
                "channels",
                "daphne",
                "Twisted",
                "autobahn",
                "uvicorn",
                "httpx",
                "websockets",
                "aiohttp",
            )
        },
        "command": "python -m bench.run " + shlex.join(sys.argv[1:]),
        "options": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in options.__dict__.items()},
            # The app reads this from the environment it inherits (chutesweb/runtime).
            "runtime_patches_off": sorted(
                {name.strip() for name in os.getenv("RUNTIME_PATCHES_OFF", "").split(",")} - {""}
            ),
        },
    }


def execute(options: Options) -> dict[str, Any]:
    """Run the benchmark; write its JSON and Markdown; return the results."""
    if options.client_core is not None and hasattr(os, "sched_setaffinity"):
        # The load client shares its core with the stand-in; the app has the other one.
        os.sched_setaffinity(0, {int(c) for c in options.client_core.split(",")})
    bench = Bench(options)
    try:
        bench.setup()
        results = asyncio.run(bench.run())
    finally:
        bench.stack.close(keep=options.keep)
        if options.keep:
            print(f"kept {bench.stack.root}", file=sys.stderr)
    results["environment"] = environment(options)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    output = options.output or RESULTS / f"{stamp}-{options.server}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2))
    output.with_suffix(".md").write_text(report.markdown(results))
    results["files"] = [str(output), str(output.with_suffix(".md"))]
    return results


def main(argv: list[str] | None = None) -> int:
    results = execute(parse_args(argv))
    print(report.markdown(results))
    print(f"wrote {' and '.join(results['files'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
