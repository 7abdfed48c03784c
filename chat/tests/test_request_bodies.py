"""Oversized request bodies are refused before they are read (chat/bodylimit.py), against real
daphne and uvicorn processes: from the declared length before any of the body arrives, and for
chunked bodies once they pass the limit. The server's memory does not grow by the body's size.
Also the rule itself, and the ASGI wrapper in-process."""

from __future__ import annotations

import asyncio
import io
import re
import socket
import uuid
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from chat import bodylimit
from chat.testing import processes
from chat.testing.processes import Process

MB = 1024 * 1024
IMAGE_LIMIT = MB
PASSWORD = "correct horse battery staple"
HUGE = 100 * MB


# Real servers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bodies_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    data_dir = tmp_path_factory.mktemp("bodies")
    env = processes.base_env(DATA_DIR=str(data_dir), MAX_IMAGE_BYTES=str(IMAGE_LIMIT))
    processes.migrate(env)
    processes.create_user(env, "sam", PASSWORD)
    return env


@pytest.fixture(scope="module", params=["daphne", "uvicorn"])
def server(request: pytest.FixtureRequest, bodies_env: dict[str, str]) -> Iterator[Process]:
    log_dir = Path(bodies_env["DATA_DIR"])
    app = processes.start_app(request.param, log_dir, bodies_env, server=request.param)
    yield app
    app.stop()


@pytest.fixture(scope="module")
def cookie(server: Process) -> str:
    return processes.login_cookie(server.url, "sam", PASSWORD)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response: status, headers (lower-case names) and its Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.split(": ", 1) for line in lines[1:])
    headers = {name.lower(): value for name, value in headers.items()}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def exchange(app: Process, head: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send a request head and (part of) a body; read the answer."""
    with socket.create_connection(("127.0.0.1", app.port), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        return read_response(sock)


def head_of(method: str, path: str, *headers: str) -> str:
    return "\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, ""])


def chunked(body: bytes, size: int = 16 * 1024) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


@pytest.mark.slow
def test_an_anonymous_post_declaring_a_huge_body_is_answered_413_unread(server: Process) -> None:
    # Only the head and a few bytes of a 100 MB body are sent: the answer cannot have waited
    # for the rest.
    head = head_of(
        "POST",
        "/accounts/login/",
        "Content-Type: application/x-www-form-urlencoded",
        f"Content-Length: {HUGE}",
    )
    status, headers, body = exchange(server, head, b"username=x&password=")
    assert status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert headers["connection"] == "close"
    assert body.decode() == "Log in first: requests without a session carry at most 64 KB.\n"


@pytest.mark.slow
def test_a_client_waiting_for_100_continue_gets_the_413_instead(server: Process) -> None:
    head = head_of(
        "POST",
        "/api/import",
        "Expect: 100-continue",
        "Content-Type: multipart/form-data; boundary=x",
        f"Content-Length: {HUGE}",
    )
    status, headers, body = exchange(server, head)
    assert status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert headers["content-type"] == "application/json"
    assert b'"code": "too_large"' in body


@pytest.mark.slow
def test_an_anonymous_chunked_body_is_refused_once_it_passes_the_limit(server: Process) -> None:
    head = head_of(
        "POST",
        "/accounts/login/",
        "Content-Type: application/x-www-form-urlencoded",
        "Transfer-Encoding: chunked",
    )
    status, _, body = exchange(server, head, chunked(b"x" * (256 * 1024)))
    assert status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert b"Log in first" in body


def rss_peak_growth(app: Process, request: Any) -> int:
    """How far the process's peak resident memory rose above its size before `request` ran."""
    status = Path(f"/proc/{app.proc.pid}/status")

    def field(name: str) -> int:
        match = re.search(rf"^{name}:\s+(\d+) kB", status.read_text(), re.MULTILINE)
        assert match, name
        return int(match[1]) * 1024

    # Start the peak from here (Linux: "5" resets VmHWM to the current size).
    Path(f"/proc/{app.proc.pid}/clear_refs").write_text("5")
    before = field("VmRSS")
    request()
    return field("VmHWM") - before


def send_huge_body(app: Process) -> None:
    head = head_of(
        "POST",
        "/accounts/login/",
        "Content-Type: application/x-www-form-urlencoded",
        f"Content-Length: {HUGE}",
    )
    piece = b"x" * MB
    with socket.create_connection(("127.0.0.1", app.port), timeout=60) as sock:
        try:
            sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
            for _ in range(HUGE // MB):
                sock.sendall(piece)
            read_response(sock)
        except OSError:
            pass  # cut off while still sending: what a server that will not read does


@pytest.mark.slow
def test_a_huge_anonymous_body_does_not_grow_the_servers_memory(server: Process) -> None:
    growth = rss_peak_growth(server, lambda: send_huge_body(server))
    # The body is 100 MB; what the server holds while refusing it is a few buffers.
    assert growth < 30 * MB, f"peak memory grew by {growth / MB:.0f} MB"
    assert processes.healthy(server.url)


def png_of(size: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), "blue").save(out, format="PNG")
    picture = out.getvalue()
    return picture + b"\0" * (size - len(picture))


def upload(app: Process, cookie: str, image: bytes, *, chunk: bool = False) -> tuple[int, bytes]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\n"
    ).encode()
    body += image + f"\r\n--{boundary}--\r\n".encode()
    csrf = re.search(r"csrftoken=([^;]+)", cookie)
    assert csrf
    framing = "Transfer-Encoding: chunked" if chunk else f"Content-Length: {len(body)}"
    head = head_of(
        "POST",
        "/api/images",
        f"Cookie: {cookie}",
        f"X-CSRFToken: {csrf[1]}",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        framing,
    )
    status, _, answer = exchange(app, head, chunked(body) if chunk else body)
    return status, answer


@pytest.mark.slow
def test_a_logged_in_image_of_the_largest_size_is_accepted(server: Process, cookie: str) -> None:
    # (Sent with its length: Django reads no multipart body without one.)
    status, answer = upload(server, cookie, png_of(IMAGE_LIMIT))
    assert status == HTTPStatus.CREATED, answer


@pytest.mark.slow
@pytest.mark.parametrize("chunk", [False, True])
def test_a_logged_in_upload_just_over_the_limit_is_answered_413(
    server: Process, cookie: str, chunk: bool
) -> None:
    over = IMAGE_LIMIT + bodylimit.MULTIPART_OVERHEAD_BYTES + 1
    status, answer = upload(server, cookie, png_of(over), chunk=chunk)
    assert status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert b'"message": "Images are limited to 1 MB."' in answer


# The rule ---------------------------------------------------------------------------------


def headers(cookie: str | None = None, **extra: str) -> list[tuple[bytes, bytes]]:
    found = [(k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()]
    return found + ([(b"cookie", cookie.encode())] if cookie is not None else [])


@pytest.mark.parametrize(
    ("method", "path", "cookie", "limit"),
    [
        ("POST", "/accounts/login/", None, bodylimit.ANONYMOUS_BODY_BYTES),
        ("POST", "/api/import", None, bodylimit.ANONYMOUS_BODY_BYTES),
        ("POST", "/api/import", "csrftoken=x", bodylimit.ANONYMOUS_BODY_BYTES),
        ("POST", "/api/import", "sessionid=", bodylimit.ANONYMOUS_BODY_BYTES),
        ("POST", "/api/images", "a=1; sessionid=abc", 5 * MB + bodylimit.MULTIPART_OVERHEAD_BYTES),
        ("POST", "/api/import", "sessionid=abc", 50 * MB + bodylimit.MULTIPART_OVERHEAD_BYTES),
        ("PATCH", "/api/import", "sessionid=abc", 2_621_440),
        ("POST", "/api/conversations/1", "sessionid=abc", 2_621_440),
    ],
)
def test_the_rule_depends_on_the_session_the_method_and_the_path(
    settings: Any, method: str, path: str, cookie: str | None, limit: int
) -> None:
    settings.MAX_IMAGE_BYTES = 5 * MB
    settings.MAX_IMPORT_BYTES = 50 * MB
    assert bodylimit.rule_for(method, path, headers(cookie)).limit == limit


def test_a_target_is_read_as_daphne_routes_it() -> None:
    assert bodylimit.target_path(b"/api/%69mport?x=1") == "/api/import"
    assert bodylimit.target_path(b"/chat/api/images", "/chat") == "/api/images"


# The ASGI wrapper, in-process ---------------------------------------------------------------


class Inner:
    """An application that reads the whole body, like Django, and answers 200."""

    def __init__(self) -> None:
        self.read = 0
        self.disconnected = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                return
            self.read += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def run_wrapper(
    request_headers: list[tuple[bytes, bytes]], chunks: int, size: int = 10_000
) -> tuple[Inner, list[Mapping[str, Any]], int]:
    inner = Inner()
    sent: list[Mapping[str, Any]] = []
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * size, "more_body": pulled < chunks}

    async def send(message: Mapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/accounts/login/",
        "root_path": "",
        "headers": request_headers,
    }
    asyncio.run(bodylimit.BodyLimit(inner)(scope, receive, send))
    return inner, sent, pulled


def test_the_wrapper_refuses_a_declared_length_without_reading() -> None:
    inner, sent, pulled = run_wrapper(headers(content_length=str(HUGE)), chunks=10_000)
    assert pulled == 0 and inner.read == 0
    assert sent[0]["status"] == HTTPStatus.REQUEST_ENTITY_TOO_LARGE


def test_the_wrapper_stops_reading_a_chunked_body_at_the_limit() -> None:
    inner, sent, pulled = run_wrapper(headers(transfer_encoding="chunked"), chunks=10_000)
    # 64 KB in 10 kB pieces: the seventh passes the limit, and nothing is read after it.
    assert pulled == 7
    assert inner.disconnected and inner.read == 60_000
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    assert sent[1]["body"] == b"Log in first: requests without a session carry at most 64 KB.\n"


def test_the_wrapper_passes_a_body_within_the_limit() -> None:
    inner, sent, pulled = run_wrapper(headers(content_length="60000"), chunks=6)
    assert (pulled, inner.read, sent[0]["status"]) == (6, 60_000, HTTPStatus.OK)
