"""Real server processes for tests: the stand-in upstream and app servers (daphne or uvicorn),
each on its own port with its own log, stopped with a signal of the test's choosing."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest

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
            "chat.testing.fakeupstream",
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


def fake_stats(upstream: Process) -> dict[str, Any]:
    with urllib.request.urlopen(f"{upstream.url}/_fake/stats", timeout=5) as response:
        return json.loads(response.read())


# nginx with the shipped configuration (deploy/nginx/chutes-chat.conf), for the tests that go
# through the reverse proxy the way a deployment does.

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_CONF = ROOT / "deploy/nginx/chutes-chat.conf"
SITE_HOST = "chat.example.com"


def require_nginx() -> None:
    """Skip the test without nginx; where REQUIRE_SERVICES=1 (CI), fail it instead."""
    if not os.path.exists(NGINX):
        if os.getenv("REQUIRE_SERVICES") == "1":
            pytest.fail("nginx is required (REQUIRE_SERVICES=1) but not installed")
        pytest.skip("needs nginx (Debian package nginx-light)")


def self_signed(folder: Path, host: str = SITE_HOST) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host}"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def nginx_config(folder: Path, http_port: int, https_port: int, app_ports: Sequence[int]) -> Path:
    """The shipped config with these ports and a self-signed certificate; nothing else changed.

    Its upstream block names two app processes; with one, both lines point at it.
    """
    text = NGINX_CONF.read_text()
    cert, key = self_signed(folder)
    first, second = app_ports[0], app_ports[-1]
    text = re.sub(r"\n\s*listen \[::\]:\d+[^;]*;", "", text)
    text = text.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    text = text.replace("listen 443 ssl", f"listen 127.0.0.1:{https_port} ssl")
    text = text.replace(f"/etc/ssl/certs/{SITE_HOST}.pem", str(cert))
    text = text.replace(f"/etc/ssl/private/{SITE_HOST}.key", str(key))
    text = text.replace("server 127.0.0.1:8001;", f"server 127.0.0.1:{first};")
    text = text.replace("server 127.0.0.1:8002;", f"server 127.0.0.1:{second};")
    site = folder / "site.conf"
    site.write_text(text)
    main = folder / "nginx.conf"
    # Started as root, nginx runs its workers as nobody, who may not write request bodies into
    # the test's private folder: keep them as the user who runs the tests.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    main.write_text(
        f"daemon off;\n{user}worker_processes 1;\npid {folder}/nginx.pid;\n"
        f"error_log {folder}/error.log;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n  access_log {folder}/access.log;\n"
        + "".join(
            f"  {name}_temp_path {folder}/{name};\n"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"  include {site};\n}}\n"
    )
    return main


@dataclass
class Nginx:
    proc: subprocess.Popen[bytes]
    log: Path
    http_port: int
    https_port: int

    @property
    def url(self) -> str:
        """The site as a browser reaches it (the test resolves SITE_HOST to 127.0.0.1)."""
        return f"https://{SITE_HOST}:{self.https_port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def start_nginx(
    folder: Path, app_ports: Sequence[int], *, http_port: int = 0, https_port: int = 0
) -> Nginx:
    """nginx in front of the app processes, with the shipped configuration, on the given ports
    (free ones by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    http_port, https_port = http_port or free_port(), https_port or free_port()
    config = nginx_config(folder, http_port, https_port, app_ports)
    log = folder / "nginx.log"
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [NGINX, "-p", str(folder), "-c", str(config)], stdout=handle, stderr=subprocess.STDOUT
        )
    nginx = Nginx(proc, log, http_port, https_port)
    process = Process("nginx", proc, log, https_port)
    try:
        process.wait_until(lambda: port_open(https_port), "listening port", timeout=15)
    except BaseException:
        nginx.stop()
        raise
    return nginx


def collectstatic(env: dict[str, str]) -> None:
    """Static files as a deployment collects them (STATIC_ROOT and the storage from `env`)."""
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
