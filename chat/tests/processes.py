"""Real server processes for tests: the stand-in upstream and app servers (daphne or uvicorn),
each on its own port with its own log, stopped with a signal of the test's choosing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
        return True
    return False


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_until(
        self, check: Callable[[], bool], what: str, timeout: float = START_TIMEOUT
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before {what}:\n"
                    f"{tail(self.log)}"
                )
            if check():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no {what} within {timeout:.0f}s:\n{tail(self.log)}")

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def base_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "PYTEST_")) and k not in {"DATABASE_URL", "REDIS_URL"}
    }
    env.update({"PYTHONUNBUFFERED": "1", "DEBUG": "true", **extra})
    return env


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path, port: int) -> Process:
    log = log_dir / f"{name}.log"
    handle = log.open("wb")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    handle.close()
    return Process(name, proc, log, port)


def start_upstream(
    log_dir: Path, *extra_args: str, token: str = "proc-token", prefix: Sequence[str] = ()
) -> Process:
    """The stand-in upstream in its own process; `prefix` wraps its command (e.g. taskset)."""
    port = free_port()
    process = spawn(
        "upstream",
        [
            *prefix,
            sys.executable,
            "-m",
            "chat.fakeupstream",
            "--port",
            str(port),
            "--token",
            token,
            *extra_args,
        ],
        base_env(),
        log_dir,
        port,
    )
    process.wait_until(lambda: port_open(port), "listening port")
    return process


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
    )


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def start_app(
    name: str, log_dir: Path, env: dict[str, str], *, server: str = "daphne", port: int = 0
) -> Process:
    port = port or free_port()
    if server == "daphne":
        args = [sys.executable, "-m", "chutesweb.serve", "-b", "127.0.0.1", "-p", str(port)]
    else:
        args = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port)]
        args += ["--lifespan", "on", "--no-access-log"]
    process = spawn(name, [*args, "chutesweb.asgi:application"], env, log_dir, port)
    process.wait_until(lambda: healthy(process.url), "healthy /healthz")
    return process


def app_env(
    upstream: Process, data_dir: Path, token: str = "proc-token", **extra: str
) -> dict[str, str]:
    settings = {
        "DATA_DIR": str(data_dir),
        "LAVA_FORWARD_URL": f"{upstream.url}/v1/forward",
        "CHUTES_API_BASE": f"{upstream.url}/v1",
        "LAVA_FORWARD_TOKEN": token,
        "AUTO_TITLES": "false",
    }
    return base_env(**{**settings, **extra})


def create_user(env: dict[str, str], username: str, password: str) -> None:
    code = (
        "import django; django.setup(); from django.contrib.auth import get_user_model; "
        f"get_user_model().objects.create_user({username!r}, password={password!r})"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "chutesweb.settings"},
        check=True,
    )


def login_cookie(url: str, username: str, password: str) -> str:
    """Log in through the real login form; returns the Cookie header for a websocket."""
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(f"{url}/accounts/login/", timeout=10).read()  # sets csrftoken
    csrf = next(c.value for c in jar if c.name == "csrftoken")
    body = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": csrf}
    ).encode()
    request = urllib.request.Request(
        f"{url}/accounts/login/", data=body, headers={"Referer": f"{url}/accounts/login/"}
    )
    opener.open(request, timeout=10).read()
    cookies = {c.name: c.value for c in jar}
    if "sessionid" not in cookies:
        raise RuntimeError("login failed")
    return "; ".join(f"{k}={v}" for k, v in cookies.items())


def fake_stats(upstream: Process) -> dict[str, object]:
    with urllib.request.urlopen(f"{upstream.url}/_fake/stats", timeout=5) as response:
        return json.loads(response.read())
