"""The documented nginx configuration (deploy/nginx/chutes-chat.conf), run for real: TLS,
websocket upgrades, unbuffered streaming and uploads as large as the app accepts, in front of
two production-mode app processes."""

from __future__ import annotations

import io
import json
import math
import random
import re
import socket
import ssl
import time
from collections.abc import Iterator
from http import HTTPStatus

import httpx
import pytest
from django.conf import settings
from PIL import Image
from websockets.sync.client import connect
from websockets.typing import Origin

from chat import bodylimit
from chat.testing import processes
from chat.testing.processes import NGINX_CONF, SITE_HOST, Nginx, Process
from chat.testing.wsclient import MODEL, send_frame

HOST = SITE_HOST
UPLOAD_PATHS = ("/api/import", "/api/images")
PASSWORD = "correct horse battery staple"
MIB = 1024 * 1024


def largest_accepted_body() -> int:
    """The most a logged-in request may send to the app (chat/bodylimit.py, from MAX_IMPORT_BYTES
    and MAX_IMAGE_BYTES): an import or an image upload with its multipart wrapping."""
    cookie = [(b"cookie", f"{settings.SESSION_COOKIE_NAME}=anything".encode())]
    return max(bodylimit.rule_for("POST", path, cookie).limit for path in UPLOAD_PATHS)


def configured_body_size() -> int:
    match = re.search(r"^\s*client_max_body_size\s+(\d+)([km]?);", NGINX_CONF.read_text(), re.M)
    assert match, "client_max_body_size is not set in the shipped configuration"
    return int(match.group(1)) * {"": 1, "k": 1024, "m": MIB}[match.group(2)]


def test_the_proxy_s_body_limit_is_the_app_s_largest_accepted_body() -> None:
    # Rounded up to whole megabytes, as the configuration writes it: never less than the app
    # accepts, and not more than it would read.
    assert configured_body_size() == math.ceil(largest_accepted_body() / MIB) * MIB


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    processes.require_nginx()
    tmp_path = tmp_path_factory.mktemp("nginx-stack")
    started: list[Process] = []
    nginx: Nginx | None = None
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
        processes.collectstatic(env)
        processes.migrate(env)
        processes.create_user(env, "sam", PASSWORD)
        apps = [processes.start_app(f"app{i}", tmp_path, env) for i in (1, 2)]
        started += apps
        nginx = processes.start_nginx(tmp_path / "nginx", [app.port for app in apps])
        yield nginx
    finally:
        if nginx is not None:
            nginx.stop()
        for process in started:
            process.stop()


@pytest.fixture
def client(stack: Nginx) -> Iterator[httpx.Client]:
    """Logged in as sam, over TLS through nginx."""
    base = f"https://127.0.0.1:{stack.https_port}"
    with httpx.Client(base_url=base, verify=False, headers={"Host": HOST}, timeout=60) as client:
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
        assert response.status_code == HTTPStatus.FOUND, response.text[:500]
        assert response.headers.get("strict-transport-security")
        yield client


@pytest.mark.slow
def test_a_reply_streams_through_nginx_over_tls(stack: Nginx, client: httpx.Client) -> None:
    # Plain HTTP: users are sent to HTTPS; health checks are answered.
    plain = httpx.get(f"http://127.0.0.1:{stack.http_port}/", headers={"Host": HOST})
    assert plain.status_code == HTTPStatus.MOVED_PERMANENTLY
    assert plain.headers["location"] == f"https://{HOST}/"
    health = httpx.get(f"http://127.0.0.1:{stack.http_port}/healthz", headers={"Host": HOST})
    assert health.json()["status"] == "ok"
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sock = socket.create_connection(("127.0.0.1", stack.https_port))
    with connect(
        f"wss://{HOST}:{stack.https_port}/ws/chat/",
        sock=sock,
        ssl=context,
        server_hostname=HOST,
        origin=Origin(f"https://{HOST}"),
        additional_headers={"Cookie": cookie},
        open_timeout=10,
    ) as ws:
        content = '[[fake {"tokens": 20, "interval_ms": 50}]] through the proxy'
        ws.send(json.dumps(send_frame(content, model=MODEL)))
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


def post_file(
    client: httpx.Client, path: str, field: str, name: str, data: bytes
) -> httpx.Response:
    """A multipart upload as the page sends it: the CSRF token from the cookie, same origin."""
    return client.post(
        path,
        files={field: (name, data)},
        headers={
            "X-CSRFToken": client.cookies["csrftoken"],
            "Origin": f"https://{HOST}",
            "Referer": f"https://{HOST}/",
        },
    )


def random_png(size: int) -> bytes:
    """A PNG of random pixels (which do not compress) of about `size` bytes."""
    side = int(math.sqrt(size / 3))
    pixels = random.Random(size).randbytes(side * side * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(out, format="PNG", compress_level=1)
    return out.getvalue()


@pytest.mark.slow
def test_an_image_just_under_the_app_s_limit_uploads_through_nginx(client: httpx.Client) -> None:
    image = random_png(4_900_000)
    assert 4_800_000 < len(image) <= settings.MAX_IMAGE_BYTES

    response = post_file(client, "/api/images", "image", "photo.png", image)

    assert response.status_code == HTTPStatus.CREATED, response.text[:500]
    uploaded = response.json()
    assert client.get(f"/api/images/{uploaded['id']}").content == image


def export_file(size: int) -> bytes:
    """A valid export (chat/actions/transfer.py) of about `size` bytes: one long conversation."""
    content_chars = settings.MAX_MESSAGE_CHARS  # well under the import's per-message limit
    count = math.ceil(size / content_chars)
    messages = [
        {
            "id": index,
            "parent": index - 1 if index else None,
            "role": "user" if index % 2 == 0 else "assistant",
            "content": f"{index:06d} " + "lorem ipsum " * (content_chars // 12 - 1),
        }
        for index in range(count)
    ]
    payload = {
        "format": "chutes-chat/1",
        "conversations": [{"title": "A long one", "messages": messages}],
    }
    return json.dumps(payload).encode()


@pytest.mark.slow
def test_a_ten_megabyte_import_goes_through_nginx(client: httpx.Client) -> None:
    export = export_file(10 * 1_000_000)
    assert len(export) >= 10 * 1_000_000

    response = post_file(client, "/api/import", "file", "chats.json", export)

    assert response.status_code == HTTPStatus.CREATED, response.text[:500]
    assert response.json()["imported"] == 1
