"""Real server processes for the browser tests: the stand-in upstream and daphne, on a fresh
SQLite database in a temporary folder (never the development database).

Also usable by hand, to look at the page against the stand-in:

    .venv/bin/python -m chat.tests.browser.live
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
UPSTREAM_TOKEN = "browser-test-token"
START_TIMEOUT = 60.0
# The stand-in's defaults for a reply no directive scripts: short and quick, but still in steps.
DEFAULT_REPLY = ("--tokens-per-reply", "12", "--interval-ms", "25", "--ttft-ms", "50")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_until(
    check: Callable[[], bool], what: str, log: Path, proc: subprocess.Popen[bytes]
) -> None:
    """Poll `check()` until it is true; fail with the process log if it dies or times out."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {START_TIMEOUT:.0f}s:\n{_tail(log)}")


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


@dataclass
class LiveServer:
    """The app on `url`, backed by the stand-in; `stop()` ends both processes."""

    url: str
    upstream_url: str
    data_dir: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.processes.clear()


def start_live_server(
    data_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    create_admin: bool = False,
    upstream_url: str | None = None,
) -> LiveServer:
    """Migrate a database in `data_dir`, then start the stand-in and daphne against it.

    With `create_admin`, DJANGO_SUPERUSER_USERNAME/PASSWORD (in `extra_env`) become an admin.
    With `upstream_url`, daphne uses that stand-in (one the caller runs and scripts, accepting
    UPSTREAM_TOKEN) instead of starting one.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        # The tests' own server must not reach a real database, Redis or Lava.
        if key not in {"DATABASE_URL", "REDIS_URL", "LAVA_SECRET_KEY", "CHUTES_API_KEY"}
    }
    start_upstream = upstream_url is None
    upstream_port = free_port()
    upstream_url = upstream_url or f"http://127.0.0.1:{upstream_port}"
    app_port = free_port()
    env.update(
        DJANGO_SETTINGS_MODULE="chat.tests.browser.server_settings",
        DATA_DIR=str(data_dir),
        DEBUG="true",
        DEMO_MODE="false",
        ALLOW_SIGNUP="true",
        LAVA_FORWARD_URL=f"{upstream_url}/v1/forward",
        CHUTES_API_BASE=f"{upstream_url}/v1",
        LAVA_FORWARD_TOKEN=UPSTREAM_TOKEN,
        AUTO_TITLES="true",
        UPSTREAM_MAX_RETRIES="1",
        # Tests send many messages quickly; the limits have their own tests.
        MESSAGES_PER_MINUTE="1000",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra_env or {})
    python = sys.executable
    setup = [["migrate", "--noinput"]] + ([["firstadmin"]] if create_admin else [])
    for command in setup:
        log = data_dir / f"{command[0]}.log"
        with log.open("wb") as out:
            result = subprocess.run(
                [python, "manage.py", *command],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {command[0]} failed:\n{_tail(log)}")

    server = LiveServer(
        url=f"http://127.0.0.1:{app_port}", upstream_url=upstream_url, data_dir=data_dir
    )
    try:
        if start_upstream:
            upstream_log = data_dir / "upstream.log"
            command = [python, "-m", "chat.testing.fakeupstream", "--port", str(upstream_port)]
            upstream = subprocess.Popen(
                [*command, "--token", UPSTREAM_TOKEN, *DEFAULT_REPLY],
                cwd=ROOT,
                env=env,
                stdout=upstream_log.open("wb"),
                stderr=subprocess.STDOUT,
            )
            server.processes.append(upstream)
            _wait_until(lambda: _port_open(upstream_port), "the stand-in", upstream_log, upstream)

        app_log = data_dir / "daphne.log"
        app = subprocess.Popen(
            [
                python,
                "-m",
                "chutesweb.serve",
                *("-b", "127.0.0.1", "-p", str(app_port)),
                "chutesweb.asgi:application",
            ],
            cwd=ROOT,
            env=env,
            stdout=app_log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        server.processes.append(app)
        _wait_until(lambda: _healthy(server.url), "daphne", app_log, app)
    except BaseException:
        server.stop()
        raise
    return server


class HitRecorder(ThreadingHTTPServer):
    """A tiny HTTP server that records every request it gets: "another host" for images."""

    daemon_threads = True
    server_address: tuple[str, int]  # an IPv4 host and port

    def __init__(self, host: str) -> None:
        self.hits: list[str] = []
        super().__init__((host, 0), _RecordingHandler)

    @property
    def origin(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _RecordingHandler(BaseHTTPRequestHandler):
    server: HitRecorder

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/gif")
        self.end_headers()
        # A 1x1 transparent GIF, so a fetched image would really render.
        self.wfile.write(
            b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00"
            b"\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
        )

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def hit_recorder(host: str = "127.0.0.2") -> Iterator[HitRecorder]:
    recorder = HitRecorder(host)
    thread = threading.Thread(target=recorder.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        recorder.shutdown()
        recorder.server_close()
        thread.join(timeout=5)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # `kill <pid>` ends the children too, not only this process.
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="chutes-live-") as folder:
        server = start_live_server(Path(folder))
        print(f"Chutes Chat on {server.url} (stand-in on {server.upstream_url}); Ctrl+C stops.")
        try:
            while all(proc.poll() is None for proc in server.processes):
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()


if __name__ == "__main__":
    main()
