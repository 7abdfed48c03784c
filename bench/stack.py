"""The processes a benchmark runs against: the stand-in upstream and the app, each pinned to a
core, with a database of their own in a temporary folder (never the development database)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chat.testing import processes
from chat.testing.processes import Process

from . import COUNTERS_PATH

TOKEN = "bench-token"
PASSWORD = "correct horse battery staple"
MODEL = "deepseek-ai/DeepSeek-V3-0324"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def pinned(core: str | None, args: list[str]) -> list[str]:
    """`args` run on one core (taskset), or as they are when no core is given."""
    if core is None or shutil.which("taskset") is None:
        return args
    return ["taskset", "-c", core, *args]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3, utime field 14 and stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    total = sum(fields[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


# A fixed piece of pure Python (dict reads and writes in a loop), run on the server's core while
# the level's app sits idle there: this machine's speed drifts by tens of percent between runs,
# and every CPU figure moves with it. The best of five runs, in ms of CPU time (like the
# server's CPU figures: time the core was given to something else is not counted).
REFERENCE_LOOP = """
import time

def work():
    counts = {}
    for i in range(300_000):
        key = i & 1023
        counts[key] = counts.get(key, 0) + i
    return counts

best = float("inf")
for _ in range(5):
    started = time.process_time()
    work()
    best = min(best, time.process_time() - started)
print(best * 1000)
"""


def reference_loop_ms(core: str | None) -> float:
    done = subprocess.run(
        pinned(core, [sys.executable, "-c", REFERENCE_LOOP]),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return float(done.stdout)


def rss_bytes(pid: int) -> int:
    resident = Path(f"/proc/{pid}/statm").read_text().split()[1]
    return int(resident) * PAGE_SIZE


@dataclass
class Stack:
    """A temporary folder with a migrated database, a stand-in, and (re)startable apps."""

    root: Path
    server: str = "daphne"
    server_core: str | None = "0"
    client_core: str | None = "1"
    app_env_extra: dict[str, str] = field(default_factory=dict)
    upstream: Process | None = None
    app: Process | None = None
    env: dict[str, str] = field(default_factory=dict)
    _starts: int = 0

    @classmethod
    def create(cls, **kwargs: Any) -> Stack:
        root = Path(tempfile.mkdtemp(prefix="chutes-bench-"))
        return cls(root=root, **kwargs)

    def start_upstream(self) -> Process:
        self.upstream = processes.start_upstream(
            self.root, "--no-reasoning", token=TOKEN, prefix=pinned(self.client_core, [])
        )
        return self.upstream

    def prepare(self) -> None:
        """The app's environment, database and static files, before any server starts."""
        assert self.upstream is not None
        settings = {
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(50),
            # Plain http on loopback: no redirect to https, cookies without the Secure flag.
            "SECURE_SSL_REDIRECT": "false",
            "SECURE_COOKIES": "false",
            "STATIC_ROOT": str(self.root / "static"),
            # Per-user policy, not performance: the benchmark's users hold many streams each.
            "MAX_CONCURRENT_GENERATIONS": "100000",
            "MESSAGES_PER_MINUTE": "1000000",
            **self.app_env_extra,
        }
        self.env = processes.app_env(self.upstream, self.root / "data", TOKEN, **settings)
        processes.migrate(self.env)
        subprocess.run(
            [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
            cwd=processes.ROOT,
            env=self.env,
            check=True,
        )

    def create_users(self, count: int, prefix: str = "bench") -> list[str]:
        """`count` users sharing one password hash (hashing once keeps setup short). Created one
        by one, as sign-up does, so that their profiles are made too."""
        names = [f"{prefix}{i:05d}" for i in range(count)]
        code = (
            "import django, json, sys; django.setup()\n"
            "from django.contrib.auth import get_user_model\n"
            "from django.contrib.auth.hashers import make_password\n"
            "names = json.loads(sys.argv[1]); hashed = make_password(sys.argv[2])\n"
            "User = get_user_model()\n"
            "for n in names: User.objects.create(username=n, password=hashed)\n"
        )
        subprocess.run(
            [sys.executable, "-c", code, json.dumps(names), PASSWORD],
            cwd=processes.ROOT,
            env={**self.env, "DJANGO_SETTINGS_MODULE": "chutesweb.settings"},
            check=True,
        )
        return names

    def start_app(self) -> Process:
        self._starts += 1
        port = processes.free_port()
        if self.server == "daphne":
            args = [sys.executable, "-m", "chutesweb.serve", "-b", "127.0.0.1", "-p", str(port)]
        else:
            args = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port)]
            args += ["--lifespan", "on", "--no-access-log", "--log-level", "warning"]
        args.append("bench.launcher:application")
        name = f"app-{self.server}-{self._starts}"
        app = processes.spawn(name, pinned(self.server_core, args), self.env, self.root, port)
        self.app = app
        app.wait_until(lambda: processes.healthy(app.url), "healthy /healthz")
        return app

    def stop_app(self) -> None:
        if self.app is not None:
            self.app.stop()
            self.app = None

    def counters(self, *, objects: bool = False, record: bool | None = None) -> dict[str, Any]:
        """The launcher's counters; `record` starts (True) or stops (False) its record of each
        garbage collection, after reading them."""
        assert self.app is not None
        query = ["objects=1"] if objects else []
        if record is not None:
            query.append(f"record={int(record)}")
        url = f"{self.app.url}{COUNTERS_PATH}{'?' + '&'.join(query) if query else ''}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())

    def upstream_stats(self, since: int = 0) -> dict[str, Any]:
        """The stand-in's figures for the requests after request number `since`."""
        assert self.upstream is not None
        url = f"{self.upstream.url}/_fake/stats?since={since}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())

    def close(self, keep: bool = False) -> None:
        self.stop_app()
        if self.upstream is not None:
            self.upstream.stop()
            self.upstream = None
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)


def wait_quiet(pid: int, *, seconds: float = 0.3, timeout: float = 10.0) -> None:
    """Wait until a process has used almost no CPU for `seconds` (its work settled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(seconds)
        if cpu_seconds(pid) - before <= 0.02:
            return
