"""The documented nginx configuration (deploy/nginx/chutes-chat.conf), run for real: TLS,
websocket upgrades, unbuffered streaming, in front of two production-mode app processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from . import processes
from .processes import ROOT, Process

pytestmark = pytest.mark.slow

HOST = "chat.example.com"
PASSWORD = "correct horse battery staple"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            f"/CN={HOST}",
            "-addext",
            f"subjectAltName=DNS:{HOST}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def site_config(tmp: Path, http_port: int, https_port: int, apps: list[Process]) -> Path:
    """The shipped config with this test's ports and certificate; nothing else changed."""
    text = (ROOT / "deploy/nginx/chutes-chat.conf").read_text()
    cert, key = self_signed(tmp)
    text = re.sub(r"\n\s*listen \[::\]:\d+[^;]*;", "", text)
    text = text.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    text = text.replace("listen 443 ssl", f"listen 127.0.0.1:{https_port} ssl")
    text = text.replace("/etc/ssl/certs/chat.example.com.pem", str(cert))
    text = text.replace("/etc/ssl/private/chat.example.com.key", str(key))
    text = text.replace("server 127.0.0.1:8001;", f"server 127.0.0.1:{apps[0].port};")
    text = text.replace("server 127.0.0.1:8002;", f"server 127.0.0.1:{apps[1].port};")
    site = tmp / "site.conf"
    site.write_text(text)
    main = tmp / "nginx.conf"
    main.write_text(
        f"daemon off;\nworker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n  access_log {tmp}/access.log;\n"
        + "".join(
            f"  {name}_temp_path {tmp}/{name};\n"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"  include {site};\n}}\n"
    )
    return main


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[int, int]]:
    if not os.path.exists(NGINX):
        if os.getenv("REQUIRE_SERVICES") == "1":
            pytest.fail("nginx is required (REQUIRE_SERVICES=1) but not installed")
        pytest.skip("needs nginx (Debian package nginx-light)")
    started: list[Process] = []
    nginx: subprocess.Popen[bytes] | None = None
    try:
        upstream = processes.start_upstream(tmp_path, "--any-model")
        started.append(upstream)
        env = processes.app_env(
            upstream,
            tmp_path,
            DEBUG="false",
            SECRET_KEY="k" * 50,
            ALLOWED_HOSTS=f"{HOST},127.0.0.1",
            CSRF_TRUSTED_ORIGINS=f"https://{HOST}",
            BEHIND_TLS_PROXY="true",
            STATIC_ROOT=str(tmp_path / "static"),
        )
        subprocess.run(
            [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
            cwd=ROOT,
            env=env,
            check=True,
        )
        processes.migrate(env)
        processes.create_user(env, "sam", PASSWORD)
        apps = [processes.start_app(f"app{i}", tmp_path, env) for i in (1, 2)]
        started += apps
        http_port, https_port = processes.free_port(), processes.free_port()
        config = site_config(tmp_path, http_port, https_port, apps)
        nginx = subprocess.Popen(
            [NGINX, "-p", str(tmp_path), "-c", str(config)], stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 15
        while not processes.port_open(https_port):
            assert nginx.poll() is None, nginx.stderr.read().decode() if nginx.stderr else ""
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.05)
        yield http_port, https_port
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        for process in started:
            process.stop()


def test_a_reply_streams_through_nginx_over_tls(stack: tuple[int, int]) -> None:
    http_port, https_port = stack
    # Plain HTTP: users are sent to HTTPS; health checks are answered.
    plain = httpx.get(f"http://127.0.0.1:{http_port}/", headers={"Host": HOST})
    assert plain.status_code == 301
    assert plain.headers["location"] == f"https://{HOST}/"
    assert (
        httpx.get(f"http://127.0.0.1:{http_port}/healthz", headers={"Host": HOST}).json()["status"]
        == "ok"
    )

    base = f"https://127.0.0.1:{https_port}"
    with httpx.Client(base_url=base, verify=False, headers={"Host": HOST}) as client:
        client.get("/accounts/login/")
        response = client.post(
            "/accounts/login/",
            data={
                "username": "sam",
                "password": PASSWORD,
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
            },
            headers={"Referer": f"https://{HOST}/accounts/login/"},
        )
        assert response.status_code == 302, response.text[:500]
        assert response.headers.get("strict-transport-security")
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sock = socket.create_connection(("127.0.0.1", https_port))
    with connect(
        f"wss://{HOST}:{https_port}/ws/chat/",
        sock=sock,
        ssl=context,
        server_hostname=HOST,
        origin=f"https://{HOST}",
        additional_headers={"Cookie": cookie},
        open_timeout=10,
    ) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "send",
                    "request_id": uuid.uuid4().hex,
                    "conversation": None,
                    "model": "deepseek-ai/DeepSeek-V3-0324",
                    "content": '[[fake {"tokens": 20, "interval_ms": 50}]] through the proxy',
                }
            )
        )
        arrivals: list[float] = []
        while True:
            frame = json.loads(ws.recv(timeout=20))
            if frame["type"] == "delta":
                arrivals.append(time.monotonic())
            if frame["type"] in ("done", "error"):
                break
    assert frame["type"] == "done" and frame["status"] == "complete", frame
    # Unbuffered: the deltas arrived spread over the reply's ~1 s, not in one burst at the end.
    assert len(arrivals) >= 10
    assert arrivals[-1] - arrivals[0] > 0.5
