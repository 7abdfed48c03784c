"""What accepting and finishing one reply cost in-process: time and statements.

.venv/bin/python -m bench.accept [--sends 300] [--cold]

Runs `replies.accept` (a question in a new conversation, as the load client sends) and
then `progress.finish_generation` for it, one after the other on one thread, against a
migrated SQLite database in a temporary folder (never the development database). Prints the
median and 10th percentile of each, the statements each ran with the database's own time for
them (the rest is Python), and the process's RSS after the first fifth of the sends and at the
end (a leak in the send path would show there, without a server around it). In the server
these run on the ORM's thread between the event loop's work, where the same calls take longer:
`--cold` evicts the CPU caches before each send (outside the timed part) to show how much of
that is the caches (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

MODEL = "deepseek-ai/DeepSeek-V3-0324"


def setup(data_dir: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.update(
        DATA_DIR=data_dir,
        DJANGO_SETTINGS_MODULE="chutesweb.settings",
        DEBUG="false",
        SECRET_KEY="bench-" + uuid.uuid4().hex * 2,
        LAVA_FORWARD_TOKEN="bench-token",
        # Per-user policy, not performance (as in the load benchmark).
        MAX_CONCURRENT_GENERATIONS="100000",
        MESSAGES_PER_MINUTE="1000000",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


class Statements:
    """Each statement's first words and the database's time for it (execute_wrapper)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seen.append((" ".join(sql.split()[:4]), time.perf_counter() - started))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.accept")
    parser.add_argument("--sends", type=int, default=300)
    parser.add_argument(
        "--cold",
        action="store_true",
        help="between sends (untimed), build 20,000 small objects and read 48 MiB, as the "
        "event loop's work does between two sends in the server: the calls then run on cold "
        "CPU caches",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="chutes-accept-") as data_dir:
        setup(data_dir)
        run(args.sends, cold=args.cold)


def _evict_caches(scratch: bytearray) -> None:
    objects = [{"index": i, "text": str(i)} for i in range(20_000)]
    scratch.count(b"x")
    del objects


def run(sends: int, *, cold: bool = False) -> None:
    import json

    from django.contrib.auth import get_user_model
    from django.db import connection

    from chat import protocol
    from chat.actions import progress, replies

    user = get_user_model().objects.create_user("bench", password=uuid.uuid4().hex)
    scratch = bytearray(48 * 1024 * 1024) if cold else bytearray()
    accept_ms: list[float] = []
    finish_ms: list[float] = []
    last: dict[str, Statements] = {}
    warm_rss = 0
    for done in range(sends):
        if done == sends // 5:
            gc.collect()
            warm_rss = rss_kib()
        # A "send" frame parses as protocol.Send.
        frame = cast(
            protocol.Send,
            protocol.parse_client_frame(
                json.dumps(
                    {
                        "type": "send",
                        "request_id": uuid.uuid4().hex,
                        "conversation": None,
                        "model": MODEL,
                        "content": "How far is the moon?",
                    }
                )
            ),
        )
        if cold:
            _evict_caches(scratch)
        last = {"accept": Statements(), "finish_generation": Statements()}
        with connection.execute_wrapper(last["accept"]):
            started = time.perf_counter()
            plan = replies.accept(user, frame)
            accept_ms.append((time.perf_counter() - started) * 1000)
        outcome = progress.Outcome(
            plan=plan,
            status="complete",
            content="The moon is about 384,400 km away. " * 10,
            reasoning="",
            seq=90,
            prompt_tokens=12,
            completion_tokens=90,
            cached_tokens=0,
            finish_reason="stop",
            error_code="",
            error_message="",
            lava_request_id="req_bench",
            chutes_invocation_id="",
            reasoning_ms=None,
        )
        with connection.execute_wrapper(last["finish_generation"]):
            started = time.perf_counter()
            progress.finish_generation(outcome)
            finish_ms.append((time.perf_counter() - started) * 1000)
    gc.collect()
    end_rss = rss_kib()
    for name, times in (("accept", accept_ms), ("finish_generation", finish_ms)):
        ordered = sorted(times)
        statements = last[name].seen
        database_ms = sum(t for _, t in statements) * 1000
        print(
            f"{name}: median {statistics.median(times):.2f} ms, "
            f"p10 {ordered[len(ordered) // 10]:.2f} ms over {sends}; "
            f"{len(statements)} statements (BEGIN included, COMMIT not), "
            f"{database_ms:.2f} ms of them in the database (last call)"
        )
        for text, seconds in statements:
            print(f"    {seconds * 1e6:6.0f} us  {text}")
    print(
        f"RSS {warm_rss} KiB after {sends // 5} sends, {end_rss} KiB after {sends} "
        f"({end_rss - warm_rss:+d} KiB)"
    )


def rss_kib() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


if __name__ == "__main__":
    main()
