"""Several app processes on one host: does the relay's throughput grow with them?

.venv/bin/python -m bench.scale --processes 0,1,2 --streams 200 --tps 50 --tokens 60

The deployment of docs/deployment.md in miniature: N daphne processes sharing one PostgreSQL
database and one Redis channel layer, each with its own WORKER_NAME; and, as the reference, one
process on the embedded defaults (SQLite, the in-memory layer: `--processes 0`). Logged-in
sockets are spread over the processes in turn (as a load balancer would), and each socket asks
for replies back to back for `--seconds`, so the offered load is `--streams` replies at a time.
Reported per run: replies and tokens relayed per second, the stand-in-to-browser latency of each
token (p50 / p99, absolute: it includes the load client's own delay), replies lost, and each
process's CPU.

Needs PostgreSQL and Redis (`--database-url`, `--redis-url`); it creates and drops its own
database. Processes are pinned one per core from core 0; the stand-in and the load client are
not pinned, so with as many processes as cores they share the cores with the servers: read the
CPU columns before crediting a process count with a gain (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from chat.testing import processes

from .clients import RelaySocket, StreamResult, script_directive
from .stack import PASSWORD, Stack, cpu_seconds, pinned
from .stats import percentile


@dataclass
class Options:
    processes: list[int]
    streams: int
    tokens: int
    tps: float
    ttft_ms: float
    seconds: float
    database_url: str
    redis_url: str


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument(
        "--processes",
        default="0,1,2",
        help="process counts to run, in turn; 0 is one process on the embedded defaults "
        "(SQLite, in-memory layer), the reference",
    )
    parser.add_argument("--streams", type=int, default=400, help="replies at a time")
    parser.add_argument("--tokens", type=int, default=60, help="tokens per reply")
    parser.add_argument("--tps", type=float, default=50.0, help="tokens per second per reply")
    parser.add_argument("--ttft-ms", type=float, default=200.0, help="stand-in time to 1st token")
    parser.add_argument("--seconds", type=float, default=15.0, help="how long each run sends")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    return Options(
        processes=[int(n) for n in args.processes.split(",") if n.strip()],
        streams=args.streams,
        tokens=args.tokens,
        tps=args.tps,
        ttft_ms=args.ttft_ms,
        seconds=args.seconds,
        database_url=args.database_url,
        redis_url=args.redis_url,
    )


def fresh_database(admin_url: str) -> str:
    """A new, empty database on the server of `admin_url`; its URL."""
    name = f"chutes_scale_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def drop_database(admin_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run_level(options: Options, count: int) -> dict[str, Any]:
    embedded = count == 0
    database = "" if embedded else fresh_database(options.database_url)
    stack = Stack.create(
        server_core=None,
        client_core=None,
        app_env_extra=(
            {}
            if embedded
            else {
                "DATABASE_URL": database,
                "REDIS_URL": options.redis_url,
                "CHANNEL_PREFIX": f"scale{uuid.uuid4().hex[:6]}",
            }
        ),
    )
    count = max(count, 1)
    apps: list[processes.Process] = []
    sockets: list[RelaySocket] = []
    try:
        stack.start_upstream()
        stack.prepare()
        names = stack.create_users(options.streams)
        cores = os.cpu_count() or 1
        for i in range(count):
            port = processes.free_port()
            serve = [sys.executable, "-m", "chutesweb.serve", "-b", "127.0.0.1", "-p", str(port)]
            args = pinned(str(i % cores), [*serve, "chutesweb.asgi:application"])
            env = {**stack.env, "WORKER_NAME": f"scale-{i}"}
            app = processes.spawn(f"app-{i}", args, env, stack.root, port)
            apps.append(app)
        for app in apps:
            app.wait_until(functools.partial(processes.healthy, app.url), "healthy /healthz")
        cookies = [processes.login_cookie(apps[0].url, name, PASSWORD) for name in names]
        for start in range(0, options.streams, 100):
            sockets += await asyncio.gather(
                *(
                    RelaySocket.open(apps[i % count].url, cookies[i])
                    for i in range(start, min(options.streams, start + 100))
                )
            )
        content = script_directive(options.tokens, 1000 / options.tps, options.ttft_ms)
        # Warm each process: imports, pools, the database connection.
        await asyncio.gather(
            *(
                sockets[i].stream(script_directive(3, 5, 0), StreamResult("w", 3))
                for i in range(count)
            )
        )
        results: list[StreamResult] = []
        deadline = time.monotonic() + options.seconds

        async def tab(socket: RelaySocket, offset: float) -> None:
            await asyncio.sleep(offset)
            while time.monotonic() < deadline:
                result = StreamResult("relayed", options.tokens)
                results.append(result)
                await socket.stream(content, result)

        spread = (options.ttft_ms / 1000 + options.tokens / options.tps) / options.streams
        cpu_before = [cpu_seconds(app.proc.pid) for app in apps]
        started = time.monotonic()
        await asyncio.gather(*(tab(s, i * spread) for i, s in enumerate(sockets)))
        wall = time.monotonic() - started
        cpu = [
            cpu_seconds(app.proc.pid) - before for app, before in zip(apps, cpu_before, strict=True)
        ]
        complete = [r for r in results if r.status == "complete"]
        tokens = sum(len(r.arrivals) for r in complete)
        latencies = [ns / 1e6 for r in complete for ns in r.latencies_ns()]
        lost = sum(
            r.integrity()["lost"] + r.integrity()["duplicated"] + r.integrity()["out_of_order"]
            for r in complete
        )
        return {
            "processes": f"{count} (SQLite, in-memory layer)" if embedded else str(count),
            "replies": len(complete),
            "failed": len(results) - len(complete),
            "replies_per_s": len(complete) / wall,
            "tokens_per_s": tokens / wall,
            "token_p50_ms": percentile(latencies, 0.5),
            "token_p99_ms": percentile(latencies, 0.99),
            "lost": lost,
            "cpu_share": [c / wall for c in cpu],
            "wall": wall,
        }
    finally:
        for socket in sockets:
            await socket.close()
        for app in apps:
            app.stop()
        stack.close()
        if database:
            drop_database(options.database_url, database)


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    print(
        f"{options.streams} replies at a time, {options.tokens} tokens at {options.tps:g}/s, "
        f"{options.ttft_ms:g} ms to the first token, {options.seconds:g} s a run; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        "| processes | replies/s | tokens/s | token p50 / p99 ms | failed | lost "
        "| CPU per process |"
    )
    print("|---:|---:|---:|---|---:|---:|---|")
    for count in options.processes:
        level = asyncio.run(run_level(options, count))
        shares = " / ".join(f"{share:.0%}" for share in level["cpu_share"])
        print(
            f"| {level['processes']} | {level['replies_per_s']:.1f} | {level['tokens_per_s']:.0f} "
            f"| {level['token_p50_ms']:.1f} / {level['token_p99_ms']:.1f} | {level['failed']} "
            f"| {level['lost']} | {shares} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
